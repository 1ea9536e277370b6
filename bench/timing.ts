/** Timing shared by the benchmarks: mean milliseconds per call, the GPU drained before and after. */
import { profilerAvailable, startProfiler, stopProfiler, synchronize } from '../lib';

export async function timeMs(fn: () => Promise<unknown>, warmup: number, iters: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  synchronize();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) await fn();
  synchronize();
  return Number(process.hrtime.bigint() - t0) / 1e6 / iters;
}

/** `n` more calls under the Kineto profiler, written to `file` (LibTorch ≥ 2 only; otherwise nothing). */
export async function profileCalls(file: string | undefined, fn: () => Promise<unknown>, n = 5): Promise<void> {
  if (!file || !profilerAvailable()) return;
  synchronize();
  startProfiler();
  for (let i = 0; i < n; i++) await fn();
  synchronize();
  stopProfiler(file);
  console.error(`profile of ${n} calls written to ${file}`);
}
