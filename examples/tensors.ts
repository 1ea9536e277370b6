/**
 * The README's "API by example", runnable: `npx ts-node examples/tensors.ts`.
 */
import { buildInfo, liveTensors, manualSeed, setNumThreads, Tensor } from '../lib';

async function main(): Promise<void> {
  console.log(buildInfo());
  const a = Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2]);
  const m = Tensor.from([1, 0, 1], [3], { dtype: 'bool' });
  console.log(a.shape, a.dtype, a.device, String(m));
  const aa = a.matmul(a);
  const b = aa.softmax(-1);
  console.log(b.toArray());
  const c = await a.matmulAsync(a);
  console.log(c.toArray());
  if (buildInfo().cudaAvailable) a.to('cuda').dispose();
  for (const t of [a, m, aa, b, c]) t.dispose();
  console.log('live tensors:', liveTensors());
  manualSeed(0);
  setNumThreads(2);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
