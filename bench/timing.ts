/** Timing shared by the benchmarks: mean milliseconds per call, the GPU drained before and after. */
import { synchronize } from '../lib';

export async function timeMs(fn: () => Promise<unknown>, warmup: number, iters: number): Promise<number> {
  for (let i = 0; i < warmup; i++) await fn();
  synchronize();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) await fn();
  synchronize();
  return Number(process.hrtime.bigint() - t0) / 1e6 / iters;
}
