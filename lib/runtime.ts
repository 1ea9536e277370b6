/** What this build is and process-wide LibTorch settings. */
import { CpuMemory, native } from './binding';
import { checkInteger, invalid } from './validate';

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
  /**
   * libjpeg-turbo version of the JPEG decoder the DataLoader uses (`'2.1.5'`), `''` when the addon was
   * built without libjpeg (JPEGs are then decoded by sharp).
   */
  jpegDecoder: string;
}

/** @example buildInfo() // { version: '0.1.0', torchVersion: '1.13.0', cudaCompiled: false, ... } */
export function buildInfo(): BuildInfo {
  return native().buildInfo();
}

/**
 * Sets LibTorch's intra-op thread count: the threads one CPU operation (a convolution, a matrix product)
 * is split over. Default: one per physical core this process may use (counted from /proc/cpuinfo, the
 * affinity mask and the cgroup quota) — or what OMP_NUM_THREADS / MKL_NUM_THREADS say when set.
 */
export function setNumThreads(threads: number): void {
  native().setNumThreads(checkInteger('threads', threads, 1, 1024));
}

/** LibTorch's intra-op thread count now (see setNumThreads). */
export function getNumThreads(): number {
  return native().getNumThreads();
}

/** Seeds LibTorch's generators (CPU and CUDA): weight initialisation and random ops become reproducible. */
export function manualSeed(seed: number): void {
  native().manualSeed(checkInteger('seed', seed, 0, Number.MAX_SAFE_INTEGER));
}

/**
 * TF32 tensor cores for float32 matrix products and convolutions on CUDA (Ampere and newer):
 * faster, with about 1e-3 relative precision. LibTorch's default keeps cuDNN convolutions in TF32.
 * Turn it off for bit-for-bit-close parity with float32 references. No effect on CPU.
 */
export function setTf32(enabled: boolean): void {
  if (typeof enabled !== 'boolean') throw invalid('enabled', 'a boolean', enabled);
  native().setTf32(enabled);
}

/**
 * cuDNN's benchmark mode (`torch.backends.cudnn.benchmark`), process-wide: the first convolution of
 * each new shape times cuDNN's algorithms and keeps the fastest. The Trainer turns it on for CUDA
 * models (option `cudnnBenchmark`). No effect on CPU.
 */
export function setCudnnBenchmark(enabled: boolean): void {
  if (typeof enabled !== 'boolean') throw invalid('enabled', 'a boolean', enabled);
  native().setCudnnBenchmark(enabled);
}

/**
 * LibTorch's Kineto profiler (CUDA kernels, copies and the CUDA runtime calls of every thread) from
 * `startProfiler()` to `stopProfiler(path)`, which writes a Chrome trace (chrome://tracing, Perfetto;
 * `bench/profile_summary.py` tabulates it). Needs an addon built against LibTorch ≥ 2 with Kineto
 * (`profilerAvailable()`); Debian's LibTorch 1.13 has none.
 */
export function profilerAvailable(): boolean {
  return native().profilerAvailable();
}

export function startProfiler(): void {
  native().profilerStart();
}

export function stopProfiler(path: string): void {
  if (typeof path !== 'string' || path === '') throw invalid('path', 'a file path', path);
  native().profilerStop(path);
}

/**
 * Bytes of the CUDA caching allocator on device `index` (of `cuda:index`): in use now, the most in use
 * since the last `resetPeak`, and reserved from the driver (torch.cuda.memory_allocated,
 * max_memory_allocated, memory_reserved). Zeros without CUDA.
 */
export function cudaMemory(index = 0, options: { resetPeak?: boolean } = {}): { allocated: number; peak: number; reserved: number } {
  return native().cudaMemory(checkInteger('index', index, 0, 1024), options.resetPeak ?? false);
}

/**
 * Counters of onestage's CPU caching allocator. Large CPU tensors (64 KiB and more) that LibTorch frees
 * are kept and handed to the next tensor of about the same size, instead of going back to the system:
 * fresh memory costs a page fault per 4 KiB page on first touch, which on a small virtual machine cost
 * more than the arithmetic (README: CPU memory). `resetPeak` restarts `peak` from what is live now.
 */
export function cpuMemory(options: { resetPeak?: boolean } = {}): CpuMemory {
  if (options.resetPeak !== undefined && typeof options.resetPeak !== 'boolean') throw invalid('options.resetPeak', 'a boolean', options.resetPeak);
  return native().cpuMemory(options.resetPeak ?? false);
}

/** Returns the CPU tensor memory the caching allocator keeps for reuse to the system (`cpuMemory().cached` becomes 0). */
export function emptyCpuCache(): void {
  native().emptyCpuCache();
}

/**
 * Waits until every queued CUDA kernel has finished (no-op without CUDA). Promises of onestage
 * resolve when their work is queued on the GPU; call this before reading a clock.
 */
export function synchronize(): void {
  native().synchronize();
}
