/**
 * The ResNet stem's max pooling: on channels-last CUDA tensors onestage's kernels (one-byte window codes
 * instead of 8-byte indices) give LibTorch's max_pool2d output and input gradient bitwise — ties (the
 * first maximum), NaNs (the last one), windows of −∞ only, odd sizes, float32, bf16 and float16; elsewhere
 * LibTorch's max_pool2d runs.
 */
import test from 'ava';
import { buildInfo, Device, Tensor } from '../lib';
import { native } from '../lib/binding';

type Options = Parameters<ReturnType<typeof native>['maxPool2dWithGradient']>[2];

/** Small integers (many ties), NaNs and −∞ runs sprinkled in; seeded. */
function input(shape: number[], seed: number, specials: boolean): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  let s = seed >>> 0;
  const next = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (let i = 0; i < n; i++) out[i] = Math.floor(next() * 5) - 2;
  if (specials) {
    for (let i = 0; i < n; i += 97) out[i] = NaN;
    // a whole 3×3 corner region of the first image and channel at −∞: its windows have no maximum above −∞
    const [, , , W] = shape;
    for (let y = 0; y < 3; y++) for (let x = 0; x < 3; x++) out[y * W + x] = -Infinity;
  }
  return out;
}

function pool(device: Device, shape: number[], seed: number, o: Options, specials = true) {
  const [N, C, H, W] = shape;
  const k = o.kernel ?? 3, s = o.stride ?? 2, p = o.padding ?? 1;
  const outShape = [N, C, Math.floor((H + 2 * p - k) / s) + 1, Math.floor((W + 2 * p - k) / s) + 1];
  const x = Tensor.from(input(shape, seed, specials), shape, { device });
  const g = Tensor.from(input(outShape, seed + 7, false).map((v, i) => v + (i % 13) * 0.25), outShape, { device });
  const run = (aten: boolean) => {
    const r = native().maxPool2dWithGradient(x.handle, g.handle, { ...o, aten });
    const [y, gx] = [new Tensor(r.output), new Tensor(r.gradInput)];
    const out = { implementation: r.implementation, y: Array.from(y.toArray() as Float32Array), gx: Array.from(gx.toArray() as Float32Array) };
    y.dispose();
    gx.dispose();
    return out;
  };
  const ours = run(false);
  const aten = run(true);
  x.dispose();
  g.dispose();
  return { ours, aten };
}

const same = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

test('max pool: off channels-last CUDA storage LibTorch\'s max_pool2d runs; bad settings are RangeErrors (cpu)', (t) => {
  const { ours, aten } = pool('cpu', [2, 8, 9, 7], 1, { channelsLast: true });
  t.is(ours.implementation, 'aten');
  t.true(same(ours.y, aten.y) && same(ours.gx, aten.gx));
  const x = Tensor.from(new Float32Array(16), [1, 1, 4, 4]);
  t.throws(() => native().maxPool2dWithGradient(x.handle, x.handle, { kernel: 16 }), { instanceOf: RangeError, message: /kernel ≤ 15/ });
  t.throws(() => native().maxPool2dWithGradient(x.handle, x.handle, { kernel: 3, padding: 2 }), { instanceOf: RangeError, message: /padding/ });
  t.throws(() => native().maxPool2dWithGradient(x.handle, x.handle, { type: 'int8' as 'float32' }), { instanceOf: RangeError, message: /options\.type/ });
  x.dispose();
});

const cuda = buildInfo().cudaAvailable ? test : test.skip;

cuda('max pool: onestage\'s kernels give LibTorch\'s output and gradient bitwise — ties, NaNs, windows of −∞ only, odd sizes, three types, three geometries (cuda)', (t) => {
  const cases: Array<[number[], Options]> = [
    [[2, 64, 33, 31], { kernel: 3, stride: 2, padding: 1 }],
    [[1, 8, 7, 9], { kernel: 3, stride: 2, padding: 1 }],
    [[2, 24, 16, 17], { kernel: 3, stride: 1, padding: 1 }],
    [[2, 16, 10, 12], { kernel: 2, stride: 2, padding: 0 }],
  ];
  let checked = 0;
  for (const [shape, o] of cases)
    for (const type of ['float32', 'bfloat16', 'float16'] as const) {
      const { ours, aten } = pool('cuda', shape, shape[1] + shape[2], { ...o, type, channelsLast: true });
      const name = `${JSON.stringify(shape)} ${JSON.stringify(o)} ${type}`;
      t.is(ours.implementation, 'onestage', name);
      t.is(aten.implementation, 'aten', name);
      t.true(same(ours.y, aten.y), `${name}: output`);
      t.true(same(ours.gx, aten.gx), `${name}: gradient`);
      t.true(ours.y.some(Number.isNaN) && ours.y.some((v) => v === -Infinity), `${name}: NaN and −∞ windows present`);
      checked++;
    }
  t.is(checked, 12);
  // NCHW storage, or channels not a multiple of the 16-byte vector: LibTorch's
  t.is(pool('cuda', [1, 8, 8, 8], 3, { channelsLast: false }).ours.implementation, 'aten');
  t.is(pool('cuda', [1, 6, 8, 8], 3, { channelsLast: true, type: 'float32' }).ours.implementation, 'aten');
});
