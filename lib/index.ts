/**
 * onestage: one-stage object detectors with imbalance-aware losses, on LibTorch, for Node.js.
 * @packageDocumentation
 */
export { buildInfo, setNumThreads, manualSeed } from './runtime';
export type { BuildInfo } from './runtime';
export { Tensor, liveTensors, DTYPES } from './tensor';
export type { DType, Device, TensorOptions, TensorData, TypedArrayOf } from './tensor';
