/** What this build is and process-wide LibTorch settings. */
import { native } from './binding';
import { checkInteger } from './validate';

export interface BuildInfo {
  /** onestage version the addon was compiled as. */
  version: string;
  /** LibTorch version the addon was compiled against, e.g. `'1.13.0'`. */
  torchVersion: string;
  /** The LibTorch has CUDA support. */
  cudaCompiled: boolean;
  /** ...and at least one CUDA device is usable now. */
  cudaAvailable: boolean;
  /** Number of visible CUDA devices (0 without CUDA). */
  deviceCount: number;
}

/** @example buildInfo() // { version: '0.1.0', torchVersion: '1.13.0', cudaCompiled: false, ... } */
export function buildInfo(): BuildInfo {
  return native().buildInfo();
}

/** LibTorch's intra-op thread count (default: the number of cores). */
export function setNumThreads(threads: number): void {
  native().setNumThreads(checkInteger('threads', threads, 1, 1024));
}

/** Seeds LibTorch's generators (CPU and CUDA): weight initialisation and random ops become reproducible. */
export function manualSeed(seed: number): void {
  native().manualSeed(checkInteger('seed', seed, 0, Number.MAX_SAFE_INTEGER));
}
