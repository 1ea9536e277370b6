/**
 * Fixed costs of the binding: an async round trip (thread pool → promise), a synchronous call, and
 * a tiny backward, on CPU and (if present) CUDA tensors. Helps tell launch and hand-off overhead from
 * kernel time in the other benchmarks.   npx ts-node --transpile-only bench/overhead.ts
 */
import { buildInfo, synchronize, Tensor } from '../lib';

async function per(label: string, n: number, fn: () => Promise<void> | void): Promise<void> {
  for (let i = 0; i < Math.min(50, n); i++) await fn();
  synchronize();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await fn();
  synchronize();
  console.log(`| ${label} | ${(Number(process.hrtime.bigint() - t0) / 1e3 / n).toFixed(1)} |`);
}

async function main(): Promise<void> {
  console.log('| call | µs per call |\n| --- | --- |');
  for (const device of ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])] as const) {
    const a = Tensor.from([1], [1, 1], { device });
    await per(`async matmul 1×1 (${device})`, 2000, async () => (await a.matmulAsync(a)).dispose());
    await per(`sync matmul 1×1 (${device})`, 2000, () => a.matmul(a).dispose());
    const x = Tensor.from(new Float32Array(64), [64], { device }).setRequiresGrad();
    await per(`sum + async backward (${device})`, 1000, async () => {
      const s = x.sum();
      await s.backward();
      s.dispose();
    });
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
