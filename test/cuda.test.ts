/** CUDA behaviour; skipped where no CUDA device is available (CI), run on the GPU host. */
import test from 'ava';
import { buildInfo, Tensor } from '../lib';

const info = buildInfo();
const cuda = info.cudaAvailable ? test : test.skip;

cuda('cuda: buildInfo reports the compiled CUDA build and its devices', (t) => {
  t.true(info.cudaCompiled);
  t.true(info.deviceCount >= 1);
});

cuda('cuda: tensors move to and from the GPU unchanged for every dtype', (t) => {
  const data = { float32: new Float32Array([1, -2.5]), float64: new Float64Array([3, 4]), int64: new BigInt64Array([5n, -6n]), int32: new Int32Array([7, 8]), uint8: new Uint8Array([9, 255]) };
  for (const [dtype, arr] of Object.entries(data)) {
    const x = Tensor.from(arr, [2], { device: 'cuda' });
    t.is(x.device, 'cuda:0');
    t.is(x.dtype, dtype as never);
    t.deepEqual(Array.from(x.toArray() as ArrayLike<unknown>), Array.from(arr as ArrayLike<unknown>));
    const back = x.to('cpu');
    t.is(back.device, 'cpu');
    t.deepEqual(Array.from(back.toArray() as ArrayLike<unknown>), Array.from(arr as ArrayLike<unknown>));
    x.dispose();
    back.dispose();
  }
});

cuda('cuda: async matmul on the GPU equals the CPU result', async (t) => {
  const n = 64;
  const a = Tensor.from(Float32Array.from({ length: n * n }, (_, i) => Math.sin(i)), [n, n]);
  const ag = a.to('cuda');
  const cpu = a.matmul(a).toArray() as Float32Array;
  const gpu = (await ag.matmulAsync(ag)).toArray() as Float32Array;
  let worst = 0;
  for (let i = 0; i < cpu.length; i++) worst = Math.max(worst, Math.abs(cpu[i] - gpu[i]) / (1 + Math.abs(cpu[i])));
  t.true(worst < 1e-4, `worst relative difference ${worst}`);
  a.dispose();
  ag.dispose();
});

cuda('cuda: mixing devices and unknown device indices give clear errors', (t) => {
  const a = Tensor.from([1, 2, 3, 4], [2, 2], { device: 'cuda' });
  const b = Tensor.from([1, 2, 3, 4], [2, 2]);
  t.throws(() => a.matmul(b), { instanceOf: TypeError, message: /different devices \(cuda:0 and cpu\)/ });
  t.throws(() => b.to('cuda:99'), { instanceOf: RangeError, message: /cuda:99 does not exist/ });
  a.dispose();
  b.dispose();
});
