/**
 * onestage: one-stage object detectors with imbalance-aware losses, on LibTorch, for Node.js.
 * @packageDocumentation
 */
export { buildInfo, setNumThreads, manualSeed, setTf32, synchronize } from './runtime';
export type { BuildInfo } from './runtime';
export { Tensor, liveTensors, DTYPES } from './tensor';
export type { DType, Device, TensorOptions, TensorData, TypedArrayOf } from './tensor';
export { Model } from './model';
export type { RetinaNetOptions, DetectOptions, DetectBatch, Detection, ForwardOutput, LoadWeightsOptions, LoadReport, ModelInfo, ResNetDepth } from './model';
export { generateAnchors, encodeBoxes, decodeBoxes, boxIou, clipBoxes, nms, batchedNms } from './geometry';
export type { AnchorOptions, BoxCoderOptions } from './geometry';
export { MaxIoUAssigner, FocalLoss, GHMC, GHMR, RetinaNetLoss, sigmoidFocalLoss } from './losses';
export type { AssignerOptions, Assignment, FocalLossOptions, GhmOptions, GhmrOptions, RetinaNetLossOptions, DetectionLossInput, LossValue } from './losses';
