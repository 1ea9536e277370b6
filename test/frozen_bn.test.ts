/**
 * The fused frozen-BatchNorm kernels of the ResNet blocks (core/models/frozen_bn): y = act(x·s + t [+ r]) forward, and a
 * backward that recomputes the ReLU's mask from x where no residual was added (one tensor fewer read) and sums the two
 * gradients of an output with two uses as it reads them (one tensor fewer written and read). On CUDA: the mask from x is the
 * mask from y bitwise, the two gradients summed inside give autograd's sum bitwise — float32, bf16 and float16, with values
 * on the ReLU's edge (x at the running mean: x·s + t is the rounding error of mean·s) and NaNs; the kernels agree with their
 * ATen replicas (what the CPU runs under the test hook ONESTAGE_TEST_FROZEN_BN=emulate), which agree with a float64 reference.
 */
import test from 'ava';
import { buildInfo, Device, Tensor } from '../lib';
import { native } from '../lib/binding';
import { assertClose } from './helpers/close';

type Options = Parameters<ReturnType<typeof native>['frozenBatchNormWithGradient']>[5];
const [N, C, H, W] = [2, 16, 5, 7];
const shape = [N, C, H, W];
const count = N * C * H * W;

function rng(seed: number) {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

/** Channel parameters: weights of both signs, running means that x takes (the ReLU's edge), variances over 3 decades. */
function params(seed: number, C = 16): Float32Array {
  const next = rng(seed);
  const p = new Float32Array(4 * C);
  for (let c = 0; c < C; c++) {
    p[c] = (next() - 0.3) * 2;
    p[C + c] = c % 3 === 0 ? 0 : (next() - 0.5) * 0.5;
    p[2 * C + c] = Math.floor(next() * 9 - 4) * 0.25;
    p[3 * C + c] = 10 ** (next() * 3 - 1.5);
  }
  return p;
}

/** Steps of `scale` in −8…8 steps, shifted by `offset` (x: quarter steps, many at the running mean — the ReLU's edge where the
 * bias is 0 — unless shifted off it), a NaN every 89 elements when asked. */
function values(seed: number, nans: boolean, scale = 0.25, offset = 0, n = count): Float32Array {
  const next = rng(seed);
  const v = new Float32Array(n);
  for (let i = 0; i < n; i++) v[i] = Math.floor(next() * 17 - 8) * scale + offset;
  if (nans) for (let i = 5; i < n; i += 89) v[i] = NaN;
  return v;
}

interface Result { implementation: string; output: number[]; gradInput: number[]; gradResidual: number[] | null; gradWeight: number[]; gradBias: number[] }

/** `edge`: x on the running means (else 0.1 off them: where the kernel's fused multiply-add and the replicas' product and sum
 * may round x·s + t to opposite signs, the ReLU's mask with them). */
function run(device: Device, o: Options, residual: boolean, second: boolean, edge = true, dims = shape): Result {
  const n = dims.reduce((a, b) => a * b, 1);
  const t = (v: Float32Array, s = dims) => Tensor.from(v, s, { device });
  const x = t(values(1, dims === shape, 0.25, edge ? 0 : 0.1, n)); // NaNs in the small shape (in the big one they would make every ∂weight NaN)
  const r = residual ? t(values(2, false, 0.25, 0, n)) : null;
  const g = t(values(3, false, 0.37, 0, n));
  const g2 = second ? t(values(4, false, 0.29, 0, n)) : null;
  const p = t(params(5, dims[1]), [4, dims[1]]);
  const raw = native().frozenBatchNormWithGradient(x.handle, r?.handle ?? null, g.handle, g2?.handle ?? null, p.handle, o);
  const read = (h: typeof raw.output | null) => {
    if (h === null) return null;
    const w = new Tensor(h);
    const a = Array.from(w.toArray() as Float32Array);
    w.dispose();
    return a;
  };
  const out = { implementation: raw.implementation, output: read(raw.output)!, gradInput: read(raw.gradInput)!, gradResidual: read(raw.gradResidual), gradWeight: read(raw.gradWeight)!, gradBias: read(raw.gradBias)! };
  for (const v of [x, r, g, g2, p]) v?.dispose();
  return out;
}

/** The float64 reference of one configuration (the gradients summed, the mask from the output). */
function reference(residual: boolean, second: boolean, relu: boolean, eps: number) {
  const x = values(1, true), r = values(2, false), g = values(3, false, 0.37), g2 = values(4, false, 0.29), p = params(5);
  const y = new Float64Array(count), gx = new Float64Array(count), gr = new Float64Array(count), gw = new Float64Array(C), gb = new Float64Array(C);
  for (let i = 0; i < count; i++) {
    const c = Math.floor(i / (H * W)) % C;
    const invstd = 1 / Math.sqrt(p[3 * C + c] + eps);
    const xhat = (x[i] - p[2 * C + c]) * invstd;
    let v = xhat * p[c] + p[C + c] + (residual ? r[i] : 0);
    if (relu) v = v > 0 ? v : 0;
    y[i] = v;
    let gi = g[i] + (second ? g2[i] : 0);
    if (relu && !(v > 0)) gi = 0;
    gx[i] = gi * p[c] * invstd;
    gr[i] = gi;
    gb[c] += gi;
    gw[c] += gi * xhat; // NaN for a channel with a NaN input, as the kernels and LibTorch's BatchNorm
  }
  return { output: y, gradInput: gx, gradResidual: gr, gradWeight: gw, gradBias: gb };
}

const same = (a: number[] | null, b: number[] | null) => a !== null && b !== null && a.length === b.length && a.every((v, i) => Object.is(v, b[i]));
const vec = (a: ArrayLike<number>) => ({ shape: [a.length], data: a });

test('frozen BatchNorm kernels: the ATen replicas (CPU) agree with a float64 reference — mask from x or from the output, two gradients summed inside or first; bad arguments are RangeErrors (cpu)', (t) => {
  for (const residual of [false, true])
    for (const relu of [true, false]) {
      const o = { relu, eps: 1e-5 };
      const inside = run('cpu', o, residual, true);
      t.is(inside.implementation, 'emulation');
      const first = run('cpu', { ...o, sumFirst: true, maskFromOutput: true }, residual, true);
      for (const k of ['output', 'gradInput', 'gradResidual'] as const) t.true(same(inside[k], first[k]) || (k === 'gradResidual' && !residual), `${k} (residual ${residual}, relu ${relu})`);
      const ref = reference(residual, true, relu, 1e-5);
      const name = `residual ${residual}, relu ${relu}`;
      assertClose(t, vec(inside.output), vec(ref.output), { atol: 1e-6, rtol: 1e-5, name: `${name}: output` });
      assertClose(t, vec(inside.gradInput), vec(ref.gradInput), { atol: 1e-6, rtol: 1e-5, name: `${name}: ∂x` });
      if (residual) assertClose(t, vec(inside.gradResidual!), vec(ref.gradResidual), { atol: 1e-6, rtol: 1e-5, name: `${name}: ∂r` });
      assertClose(t, vec(inside.gradBias), vec(ref.gradBias), { atol: 1e-5, rtol: 1e-5, name: `${name}: ∂bias` });
      assertClose(t, vec(inside.gradWeight), vec(ref.gradWeight), { atol: 1e-4, rtol: 1e-4, name: `${name}: ∂weight` });
    }
  const b = native();
  const x = Tensor.from(new Float32Array(count), shape);
  const p = Tensor.from(new Float32Array(4 * C).fill(1), [4, C]);
  const wrong = Tensor.from(new Float32Array(4 * 8), [4, 8]);
  t.throws(() => b.frozenBatchNormWithGradient(x.handle, null, x.handle, null, wrong.handle, {}), { instanceOf: RangeError, message: /params of shape \[4, 16\]/ });
  t.throws(() => b.frozenBatchNormWithGradient(x.handle, null, wrong.handle, null, p.handle, {}), { instanceOf: RangeError, message: /gradOutput must have the input's shape/ });
  t.throws(() => b.frozenBatchNormWithGradient(x.handle, null, x.handle, null, p.handle, { type: 'int8' as 'float32' }), { instanceOf: RangeError, message: /options\.type/ });
  t.throws(() => b.frozenBatchNormWithGradient(x.handle, null, x.handle, null, p.handle, { eps: 0 }), { instanceOf: RangeError, message: /eps must be positive/ });
  for (const v of [x, p, wrong]) v.dispose();
});

if (buildInfo().cudaAvailable)
  test('frozen BatchNorm kernels: the mask recomputed from x is the output\'s bitwise, two gradients summed inside are autograd\'s sum bitwise, and the kernels agree with their replicas — float32, bf16, float16, the ReLU\'s edge and NaNs (cuda)', (t) => {
    for (const type of ['float32', 'bfloat16', 'float16'] as const) {
      const tol = type === 'float32' ? 1e-5 : type === 'bfloat16' ? 2e-2 : 3e-3;
      for (const residual of [false, true])
        for (const relu of [true, false]) {
          const name = `${type}, residual ${residual}, relu ${relu}`;
          const o = { type, relu };
          const ours = run('cuda', o, residual, true);
          t.is(ours.implementation, 'kernels');
          // one gradient handed in, already summed (in the storage type, as autograd sums), the mask from the output
          const plain = run('cuda', { ...o, sumFirst: true, maskFromOutput: true }, residual, true);
          for (const k of ['output', 'gradInput', 'gradResidual'] as const)
            if (k !== 'gradResidual' || residual) t.true(same(ours[k], plain[k]), `${name}: ${k} bitwise`);
          // the per-channel sums: float atomics in any order
          assertClose(t, vec(ours.gradBias), vec(plain.gradBias), { atol: 1e-5, rtol: 1e-5, name: `${name}: ∂bias` });
          assertClose(t, vec(ours.gradWeight), vec(plain.gradWeight), { atol: 1e-4, rtol: 1e-5, equalNan: true, name: `${name}: ∂weight` });
          // against the replicas (CPU, float32 arithmetic) off the ReLU's edge
          const off = run('cuda', o, residual, true, false);
          const cpu = run('cpu', o, residual, true, false);
          assertClose(t, vec(off.output), vec(cpu.output), { atol: tol, rtol: tol, name: `${name}: output vs replica` });
          assertClose(t, vec(off.gradInput), vec(cpu.gradInput), { atol: tol, rtol: tol, name: `${name}: ∂x vs replica` });
          if (residual) assertClose(t, vec(off.gradResidual!), vec(cpu.gradResidual!), { atol: tol, rtol: tol, name: `${name}: ∂r vs replica` });
          assertClose(t, vec(off.gradBias), vec(cpu.gradBias), { atol: 50 * tol, rtol: tol, name: `${name}: ∂bias vs replica` });
          assertClose(t, vec(off.gradWeight), vec(cpu.gradWeight), { atol: 50 * tol, rtol: tol, name: `${name}: ∂weight vs replica` });
        }
      // the backward's grid as 2 or 8 waves of resident blocks (ONESTAGE_FROZEN_BN_WAVES) instead of one: the elementwise
      // results bitwise, the per-channel sums to float atomics' order — on 40 960 rows of 64 channels, where the grids
      // differ (blocks of 32 rows)
      const big = [8, 64, 64, 80];
      for (const waves of ['2', '8']) {
        process.env.ONESTAGE_FROZEN_BN_WAVES = waves;
        try {
          for (const residual of [false, true]) {
            const base = run('cuda', { type }, residual, true, true, big);
            delete process.env.ONESTAGE_FROZEN_BN_WAVES;
            const one = run('cuda', { type }, residual, true, true, big);
            process.env.ONESTAGE_FROZEN_BN_WAVES = waves;
            const name = `${type}, ${waves} wave(s), residual ${residual}`;
            for (const k of ['gradInput', 'gradResidual'] as const) if (k !== 'gradResidual' || residual) t.true(same(base[k], one[k]), `${name}: ${k} bitwise`);
            assertClose(t, vec(base.gradBias), vec(one.gradBias), { atol: 1e-3, rtol: 1e-5, name: `${name}: ∂bias` });
            assertClose(t, vec(base.gradWeight), vec(one.gradWeight), { atol: 1e-3, rtol: 1e-5, name: `${name}: ∂weight` });
          }
        } finally {
          delete process.env.ONESTAGE_FROZEN_BN_WAVES;
        }
      }
      // a second gradient absent: the kernel reads one
      const one = run('cuda', { type }, false, false, false);
      const oneCpu = run('cpu', { type }, false, false, false);
      assertClose(t, vec(one.gradInput), vec(oneCpu.gradInput), { atol: tol, rtol: tol, name: `${type}: one gradient` });
    }
  });
