/**
 * ContrastiveLoss: loss and gradients with respect to the FPN features of both views equal the loop
 * reference (test/reference/contrastive_ref.py, torchvision's roi_align) for B = 1, 2, 4 with 0, 1
 * and many boxes in every negatives mode; hand cases with an analytic value; view symmetry.
 */
import test from 'ava';
import * as path from 'node:path';
import { buildInfo, ContrastiveLoss, ContrastiveLossOptions, Tensor } from '../lib';
import { Bundle, readBundle, toTensor, writeBundle } from './helpers/bundle';
import { assertClose } from './helpers/close';
import { pythonWithTorch, runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

const devices: Array<'cpu' | 'cuda'> = ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])];
const SIZE = 64;
const SHAPES = [[8, 8], [4, 4], [2, 2]] as const;
const C = 6;

function makeCase(seed: number, B: number, boxesPerImage: number[]): Bundle {
  const rng = new Rng(seed);
  const M = Math.max(1, ...boxesPerImage) + 2;
  const ann = new Float32Array(B * M * 5).fill(-1);
  for (let b = 0; b < B; b++) {
    let r = 0;
    for (let k = 0; k < boxesPerImage[b]; k++, r++) {
      const w = rng.between(6, 40);
      const h = rng.between(6, 40);
      const x = rng.between(0, SIZE - w);
      const y = rng.between(0, SIZE - h);
      ann.set([x, y, x + w, y + h, rng.integer(0, 2)], (b * M + r) * 5);
    }
    if (boxesPerImage[b] > 1) ann.set([2, 2, 30, 30, -2], (b * M + r) * 5); // a crowd row: left out
  }
  const out: Bundle = { annotations: { shape: [B, M, 5], dtype: 'float32', data: ann } };
  SHAPES.forEach(([h, w], l) => {
    out[`f1_${l}`] = { shape: [B, C, h, w], dtype: 'float32', data: rng.normal(B * C * h * w) };
    out[`f2_${l}`] = { shape: [B, C, h, w], dtype: 'float32', data: rng.normal(B * C * h * w) };
  });
  return out;
}

const CASES: Array<{ B: number; boxes: number[]; options: ContrastiveLossOptions }> = [
  { B: 1, boxes: [0], options: {} },
  { B: 1, boxes: [1], options: {} },
  { B: 1, boxes: [5], options: { negatives: 'all-other' } },
  { B: 2, boxes: [4, 0], options: { negatives: 'other-class', levels: 'assigned' } },
  { B: 2, boxes: [3, 3], options: { negatives: 'same-region-other-images', pooling: 'flatten', outputSize: 3 } },
  { B: 4, boxes: [6, 1, 0, 4], options: { negatives: 'other-class', temperature: 0.2 } },
  { B: 4, boxes: [2, 5, 3, 1], options: { negatives: 'all-other', levels: 'assigned', samplingRatio: 1 } },
  { B: 4, boxes: [1, 1, 1, 1], options: { negatives: 'same-region-other-images' } },
];

for (const device of devices)
  for (const [n, c] of CASES.entries())
    test(`contrastive: loss and gradients equal the loop reference (B ${c.B}, boxes ${c.boxes.join('/')}, ${JSON.stringify(c.options)}, ${device})`, async (t) => {
      if (pythonWithTorch() === null) return t.fail('no python3 with torch: install python3-torch');
      const input = makeCase(100 + n, c.B, c.boxes);
      const o = { temperature: 0.5, levels: 'all', negatives: 'other-class', pooling: 'average', outputSize: 7, samplingRatio: 2, ...c.options };
      const dir = tempDir();
      writeBundle(path.join(dir, 'in'), input, { temperature: o.temperature, levels: o.levels, negatives: o.negatives, pooling: o.pooling, output_size: o.outputSize, sampling_ratio: o.samplingRatio, first_level: 3, grid: 4, height: SIZE, width: SIZE });
      runReference('contrastive_ref.py', [path.join(dir, 'in'), path.join(dir, 'out'), device]);
      const expected = readBundle(path.join(dir, 'out')).tensors;
      const f1 = SHAPES.map((_, l) => toTensor(input[`f1_${l}`], device).setRequiresGrad(true));
      const f2 = SHAPES.map((_, l) => toTensor(input[`f2_${l}`], device).setRequiresGrad(true));
      const r = await new ContrastiveLoss(c.options).forward({ features1: f1, features2: f2, annotations: toTensor(input.annotations, device), inputSize: [SIZE, SIZE] });
      assertClose(t, { shape: [1], data: r.loss.toArray() as Float32Array }, expected.loss, { atol: 1e-6, rtol: 1e-5 });
      const counts = Array.from(expected.counts.data as Float32Array);
      t.deepEqual([r.embeddings, r.withBackground], counts);
      await r.loss.backward();
      SHAPES.forEach((_, l) => {
        assertClose(t, f1[l].grad!, expected[`grad1_${l}`], { atol: 1e-6, rtol: 1e-5 });
        assertClose(t, f2[l].grad!, expected[`grad2_${l}`], { atol: 1e-6, rtol: 1e-5 });
      });
      if (c.boxes.every((k) => k === 0)) t.is((r.loss.toArray() as Float32Array)[0], 0);
    });

test('contrastive: identical views and orthogonal negatives give the analytic minimum; swapping the views leaves the loss unchanged', async (t) => {
  // one 8×8 map (stride 8): channel 0 on the left half, channel 1 on the right half
  const data = new Float32Array(2 * 8 * 8);
  for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) data[(x < 4 ? 0 : 1) * 64 + y * 8 + x] = 1;
  const f = Tensor.from(data, [1, 2, 8, 8]);
  const ann = Tensor.from(Float32Array.from([0, 0, 24, 64, 0, 40, 0, 64, 64, 1]), [1, 2, 5]);
  const tau = 0.5;
  const r = await new ContrastiveLoss({ temperature: tau }).forward({ features1: [f], features2: [f], annotations: ann, inputSize: [64, 64] });
  // each of the 4 embeddings: positive similarity 1, two orthogonal negatives (the other box in both views)
  const expected = Math.log(1 + 2 * Math.exp(-1 / tau));
  t.true(Math.abs((r.loss.toArray() as Float32Array)[0] - expected) < 1e-6, `${(r.loss.toArray() as Float32Array)[0]} vs ${expected}`);
  t.is(r.withBackground, 0);
  const rng = new Rng(3);
  const a = [Tensor.from(rng.normal(2 * 4 * 8 * 8), [2, 4, 8, 8]), Tensor.from(rng.normal(2 * 4 * 4 * 4), [2, 4, 4, 4])];
  const b = [Tensor.from(rng.normal(2 * 4 * 8 * 8), [2, 4, 8, 8]), Tensor.from(rng.normal(2 * 4 * 4 * 4), [2, 4, 4, 4])];
  const boxes = Tensor.from(Float32Array.from([3, 4, 30, 40, 0, 20, 20, 60, 50, 1, 10, 30, 25, 60, 2, 0, 0, 50, 50, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]), [2, 3, 5]);
  const loss = new ContrastiveLoss({ negatives: 'all-other' });
  const ab = (await loss.forward({ features1: a, features2: b, annotations: boxes, inputSize: [64, 64] })).loss.toArray() as Float32Array;
  const ba = (await loss.forward({ features1: b, features2: a, annotations: boxes, inputSize: [64, 64] })).loss.toArray() as Float32Array;
  t.true(Math.abs(ab[0] - ba[0]) < 1e-6 * Math.abs(ab[0]), `${ab[0]} vs ${ba[0]}`);
  // one box: no negative under any mode → its image's background region
  const one = await new ContrastiveLoss().forward({ features1: a, features2: b, annotations: Tensor.from(Float32Array.from([3, 4, 30, 40, 0, -1, -1, -1, -1, -1]), [2, 1, 5]), inputSize: [64, 64] });
  t.is(one.withBackground, one.embeddings);
  t.true(Number.isFinite((one.loss.toArray() as Float32Array)[0]));
  await t.throwsAsync(loss.forward({ features1: a, features2: [b[0]], annotations: boxes, inputSize: [64, 64] }), { message: /same non-empty list/ });
  t.throws(() => new ContrastiveLoss({ negatives: 'nearest' as never }), { instanceOf: RangeError, message: /options\.negatives/ });
});

if (buildInfo().cudaAvailable)
  test('contrastive: on CUDA the fused kernels give the LibTorch-ops path (ONESTAGE_CONTRASTIVE=ops): loss, counts and gradients, every mode', async (t) => {
    const rng = new Rng(77);
    const B = 4;
    const M = 14;
    const side = 128;
    const sizes = [16, 8, 4, 2, 1];
    const ann = new Float32Array(B * M * 5).fill(-1);
    for (let b = 0; b < B; b++)
      for (let k = 0; k < (b === 2 ? 1 : 12); k++) {
        const w = rng.between(4, 120);
        const h = rng.between(4, 120);
        const x = rng.between(0, side - w);
        const y = rng.between(0, side - h);
        ann.set([x, y, x + w, y + h, k === 11 ? -2 : rng.integer(0, 3)], (b * M + k) * 5);
      }
    const [a, b] = [0, 1].map(() => sizes.map((s) => rng.normal(B * 16 * s * s)));
    const annotations = Tensor.from(ann, [B, M, 5], { device: 'cuda' });
    // one class for every box: no 'other-class' negatives anywhere, every row takes the backgrounds
    const oneClass = Tensor.from(ann.map((v, i) => (i % 5 === 4 && v >= 0 ? 1 : v)), [B, M, 5], { device: 'cuda' });
    const variants: Array<[ContrastiveLossOptions, Tensor]> = [
      [{}, annotations],
      [{ negatives: 'all-other', levels: 'assigned' }, annotations],
      [{ negatives: 'same-region-other-images', pooling: 'flatten', outputSize: 3, temperature: 0.1 }, annotations],
      [{ negatives: 'other-class', levels: 'assigned', samplingRatio: 1, backgroundGrid: 7 }, annotations],
      [{ negatives: 'other-class' }, oneClass],
    ];
    const run = async (options: ContrastiveLossOptions, annotations: Tensor, ops: boolean) => {
      if (ops) process.env.ONESTAGE_CONTRASTIVE = 'ops';
      else delete process.env.ONESTAGE_CONTRASTIVE;
      const f1 = a.map((data, l) => Tensor.from(data, [B, 16, sizes[l], sizes[l]], { device: 'cuda' }).setRequiresGrad(true));
      const f2 = b.map((data, l) => Tensor.from(data, [B, 16, sizes[l], sizes[l]], { device: 'cuda' }).channelsLast().setRequiresGrad(true));
      const r = await new ContrastiveLoss(options).forward({ features1: f1, features2: f2, annotations, inputSize: [side, side] });
      await r.loss.backward();
      const out = { loss: (r.loss.toArray() as Float32Array)[0], counts: [r.embeddings, r.withBackground], grads: [...f1, ...f2].map((f) => f.grad!) };
      for (const f of [...f1, ...f2, r.loss]) f.dispose();
      return out;
    };
    let lonely = 0;
    try {
      for (const [options, boxes] of variants) {
        const ops = await run(options, boxes, true);
        const fused = await run(options, boxes, false);
        const what = JSON.stringify(options);
        t.true(Math.abs(fused.loss - ops.loss) <= 1e-5 * Math.abs(ops.loss) + 1e-6, `${what}: ${fused.loss} vs ${ops.loss}`);
        t.deepEqual(fused.counts, ops.counts, what);
        lonely += ops.counts[1] as number;
        fused.grads.forEach((g, i) => assertClose(t, g, ops.grads[i], { atol: 1e-6, rtol: 1e-5 }));
      }
    } finally {
      delete process.env.ONESTAGE_CONTRASTIVE;
    }
    t.true(lonely > 0, 'some rows fall back to the background regions');
  });
