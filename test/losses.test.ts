/**
 * Losses I parity: Focal loss (pytorch-retinanet and torchvision variants), GHM-C/GHM-R with
 * momentum, max-IoU assignment — against the reference projects' own outputs (fixtures) and against
 * the references in test/reference/losses_ref.py on random batches and hand-built cases; forward
 * values and gradients.
 */
import test from 'ava';
import * as path from 'node:path';
import { buildInfo, encodeBoxes, FocalLoss, GHMC, GHMR, MaxIoUAssigner, RetinaNetLoss, setTf32, sigmoidFocalLoss, Tensor } from '../lib';
import { Bundle, fromTensor, readBundle, toTensor, writeBundle } from './helpers/bundle';
import { assertClose } from './helpers/close';
import { runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

const PEERS = path.join(__dirname, 'fixtures', 'peers');
const devices = ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])] as const;
if (buildInfo().cudaAvailable) setTf32(false);
/** float32 forward and gradient tolerance (DESIGN.md: 1e-5 relative). */
const TOL = { rtol: 1e-5, atol: 1e-6 };
const GRAD = { rtol: 1e-5, atol: 1e-7 };

/** Loss, then gradients of `sum of parts` w.r.t. the inputs that require them. */
async function withGrads(parts: Tensor[], inputs: Tensor[]): Promise<Tensor[]> {
  let total = parts[0];
  for (const p of parts.slice(1)) total = total.add(p);
  await total.backward();
  return inputs.map((x) => {
    const g = x.grad;
    if (g === null) throw new Error('no gradient reached an input');
    return g;
  });
}

for (const device of devices) {
  test(`focal: pytorch-retinanet's own FocalLoss outputs and gradients are reproduced (${device})`, async (t) => {
    const { tensors: fx } = readBundle(path.join(PEERS, 'focal-yhenon'));
    const logits = toTensor(fx.logits, device).setRequiresGrad();
    const regressions = toTensor(fx.regressions, device).setRequiresGrad();
    const loss = await new FocalLoss().forward({ classifications: logits, regressions, anchors: toTensor(fx.anchors, device), annotations: toTensor(fx.annotations, device) });
    assertClose(t, fromTensor(loss.cls), fx.cls, { name: 'cls', ...TOL });
    assertClose(t, fromTensor(loss.reg), fx.reg, { name: 'reg', ...TOL });
    const [gl, gr] = await withGrads([loss.cls, loss.reg], [logits, regressions]);
    assertClose(t, fromTensor(gl), fx.grad_logits, { name: 'grad logits', ...GRAD });
    assertClose(t, fromTensor(gr), fx.grad_regressions, { name: 'grad regressions', ...GRAD });
    // the same from probabilities (pytorch-retinanet's model output)
    const probs = toTensor(fx.probabilities, device);
    const fromProbs = await new FocalLoss({ probabilities: true }).forward({ classifications: probs, regressions: toTensor(fx.regressions, device), anchors: toTensor(fx.anchors, device), annotations: toTensor(fx.annotations, device) });
    assertClose(t, fromTensor(fromProbs.cls), fx.cls, { name: 'cls from probabilities', ...TOL });
  });

  test(`focal: torchvision.ops.sigmoid_focal_loss values and gradients are reproduced (${device})`, async (t) => {
    const { tensors: fx } = readBundle(path.join(PEERS, 'focal-torchvision'));
    const logits = toTensor(fx.logits, device).setRequiresGrad();
    const loss = await sigmoidFocalLoss(logits, toTensor(fx.targets, device));
    assertClose(t, fromTensor(loss), fx.loss, { name: 'loss', ...TOL });
    const [g] = await withGrads([loss.sum()], [logits]);
    assertClose(t, fromTensor(g), fx.grad_logits, { name: 'grad', ...GRAD });
  });

  test(`ghm: the GHM authors' GHMC and GHMR with momentum over successive calls are reproduced (${device})`, async (t) => {
    for (const [name, make] of [
      ['ghmc-momentum', () => new GHMC({ bins: 10, momentum: 0.75 })],
      ['ghmc-bins30', () => new GHMC({ bins: 30, momentum: 0 })],
      ['ghmr-momentum', () => new GHMR({ mu: 0.02, bins: 10, momentum: 0.7 })],
    ] as const) {
      const { tensors: fx } = readBundle(path.join(PEERS, name));
      const loss = make();
      const calls = fx.pred0 ? [0, 1, 2].filter((k) => fx[`pred${k}`]) : [-1];
      for (const k of calls) {
        const s = k < 0 ? '' : String(k);
        const pred = toTensor(fx[`pred${s}`], device).setRequiresGrad();
        const value = await loss.forward(pred, toTensor(fx[`target${s}`], device), toTensor(fx[`label_weight${s}`], device));
        assertClose(t, fromTensor(value), fx[`loss${s}`], { name: `${name} loss${s}`, ...TOL });
        const [g] = await withGrads([value], [pred]);
        assertClose(t, fromTensor(g), fx[`grad_pred${s}`], { name: `${name} grad${s}`, ...GRAD });
      }
      if (fx.acc_sum_after) assertClose(t, { shape: [loss.accSum!.length], data: loss.accSum! }, fx.acc_sum_after, { name: `${name} acc_sum`, ...TOL });
      loss.dispose();
    }
  });
}

/** Random batch: B images, `gts[b]` boxes each (padded to the max with −1 rows), 128×160 anchors. */
function randomBatch(seed: number, gts: number[], classes = 4): Bundle {
  const rng = new Rng(seed);
  const { tensors } = readBundle(path.join(PEERS, 'focal-yhenon'));
  const anchors = tensors.anchors;
  const N = anchors.shape[0];
  const B = gts.length;
  const M = Math.max(1, ...gts) + 1; // always one padding row at least
  const ann = new Float32Array(B * M * 5).fill(-1);
  gts.forEach((n, b) => {
    for (let k = 0; k < n; k++) {
      const [w, h] = [8 + rng.next() * 90, 8 + rng.next() * 70];
      const [x, y] = [rng.next() * (160 - w), rng.next() * (128 - h)];
      ann.set([x, y, x + w, y + h, Math.floor(rng.next() * classes)], (b * M + k) * 5);
    }
  });
  return {
    logits: { shape: [B, N, classes], dtype: 'float32', data: rng.normal(B * N * classes, 2) },
    regressions: { shape: [B, N, 4], dtype: 'float32', data: rng.normal(B * N * 4, 0.5) },
    anchors,
    annotations: { shape: [B, M, 5], dtype: 'float32', data: ann },
  };
}

async function focalParity(t: import('ava').ExecutionContext, input: Bundle, options: ConstructorParameters<typeof FocalLoss>[0], refArgs: string[], label: string) {
  const dir = tempDir();
  writeBundle(path.join(dir, 'in'), input);
  runReference('losses_ref.py', [...refArgs.slice(0, 1), path.join(dir, 'in'), path.join(dir, 'out'), ...refArgs.slice(1)]);
  const { tensors: ref } = readBundle(path.join(dir, 'out'));
  const logits = toTensor(input.logits).setRequiresGrad();
  const regressions = toTensor(input.regressions).setRequiresGrad();
  const loss = await new FocalLoss(options).forward({ classifications: logits, regressions, anchors: toTensor(input.anchors), annotations: toTensor(input.annotations) });
  assertClose(t, fromTensor(loss.cls), ref.cls, { name: `${label} cls`, ...TOL });
  assertClose(t, fromTensor(loss.reg), ref.reg, { name: `${label} reg`, ...TOL });
  const [gl, gr] = await withGrads([loss.cls, loss.reg], [logits, regressions]);
  assertClose(t, fromTensor(gl), ref.grad_logits, { name: `${label} grad logits`, ...GRAD });
  assertClose(t, fromTensor(gr), ref.grad_regressions, { name: `${label} grad regressions`, ...GRAD });
}

test('focal (retinanet): random batches B = 1, 2, 4 with 0, 1 and 20 boxes and padding rows equal the per-image reference', async (t) => {
  for (const [seed, gts] of [[1, [1]], [2, [0, 20]], [3, [20, 1, 0, 5]]] as const) {
    await focalParity(t, randomBatch(seed, [...gts]), {}, ['focal'], `B=${gts.length} gts=${gts.join(',')}`);
  }
});

test('focal (logits): torchvision element formula with image/batch normalisation and l1/smoothL1/giou regression equals the reference', async (t) => {
  for (const [normalize, regression] of [['image', 'l1'], ['batch', 'smoothL1'], ['image', 'giou']] as const) {
    await focalParity(t, randomBatch(7, [3, 0, 12]), { variant: 'logits', normalize, regression }, ['focal_logits', normalize, regression], `${normalize}/${regression}`);
  }
});

test('ghm: random inputs over three momentum calls equal the authors\' per-bin loop, GHM-C and GHM-R', async (t) => {
  const rng = new Rng(11);
  for (const kind of ['ghmc', 'ghmr'] as const) {
    const input: Bundle = {};
    for (let k = 0; k < 3; k++) {
      const n = 500 * 4;
      input[`pred${k}`] = { shape: [500, 4], dtype: 'float32', data: rng.normal(n, kind === 'ghmc' ? 3 : 0.3) };
      input[`target${k}`] = { shape: [500, 4], dtype: 'float32', data: kind === 'ghmc' ? Float32Array.from(rng.uniform(n), (v) => (v < 0.1 ? 1 : 0)) : rng.normal(n, 0.3) };
      input[`label_weight${k}`] = { shape: [500, 4], dtype: 'float32', data: Float32Array.from(rng.uniform(n), (v) => (v < 0.8 ? 1 : 0)) };
    }
    const dir = tempDir();
    writeBundle(path.join(dir, 'in'), input);
    runReference('losses_ref.py', ['ghm', path.join(dir, 'in'), path.join(dir, 'out'), kind, '10', '0.75', '0.02']);
    const { tensors: ref } = readBundle(path.join(dir, 'out'));
    const loss = kind === 'ghmc' ? new GHMC({ momentum: 0.75 }) : new GHMR({ momentum: 0.75, mu: 0.02 });
    for (let k = 0; k < 3; k++) {
      const pred = toTensor(input[`pred${k}`]).setRequiresGrad();
      const v = await loss.forward(pred, toTensor(input[`target${k}`]), toTensor(input[`label_weight${k}`]));
      assertClose(t, fromTensor(v), ref[`loss${k}`], { name: `${kind} loss${k}`, ...TOL });
      const [g] = await withGrads([v], [pred]);
      assertClose(t, fromTensor(g), ref[`grad_pred${k}`], { name: `${kind} grad${k}`, ...GRAD });
    }
    assertClose(t, { shape: [10], data: loss.accSum! }, ref.acc_sum_after, { name: `${kind} acc_sum`, rtol: 1e-12, atol: 1e-9 });
  }
});

for (const device of devices) test(`ghmc: the labels form (fused on CUDA) equals the one-hot form, values, gradients and momentum state, for several bin counts and row widths (${device})`, async (t) => {
  const rng = new Rng(21);
  // C = 7: one element per step; C = 8: four per step; bins ≤ 16 / ≤ 32: the one-pass forward with 256 /
  // 128 threads; 40 bins: the histogram pass and the terms pass; 60 000 rows: many blocks
  for (const { R, C, bins, momentum } of [
    { R: 3000, C: 7, bins: 10, momentum: 0.75 },
    { R: 3000, C: 8, bins: 10, momentum: 0.75 },
    { R: 2000, C: 8, bins: 30, momentum: 0 },
    { R: 2000, C: 5, bins: 40, momentum: 0.5 },
    { R: 60000, C: 12, bins: 10, momentum: 0.75 },
  ]) {
    const what = `R ${R} C ${C} bins ${bins} momentum ${momentum}`;
    const dense = new GHMC({ bins, momentum });
    const fused = new GHMC({ bins, momentum });
    for (let call = 0; call < 3; call++) {
      const x = rng.normal(R * C, 3);
      const labels = Int32Array.from(rng.int(R, -1, C));
      const rowWeight = Float32Array.from(rng.uniform(R), (v) => (v < 0.85 ? 1 : 0));
      const onehot = Float32Array.from({ length: R * C }, (_, i) => (labels[Math.floor(i / C)] === i % C ? 1 : 0));
      const weight = Float32Array.from({ length: R * C }, (_, i) => rowWeight[Math.floor(i / C)]);
      const a = Tensor.from(x, [R, C], { device }).setRequiresGrad();
      const b = Tensor.from(x, [R, C], { device }).setRequiresGrad();
      const la = await dense.forward(a, Tensor.from(onehot, [R, C], { device }), Tensor.from(weight, [R, C], { device }));
      const lb = await fused.forward(b, Tensor.from(BigInt64Array.from(labels, BigInt), [R], { device }), Tensor.from(rowWeight, [R], { device }));
      assertClose(t, fromTensor(lb), fromTensor(la), { name: `${what}: loss ${call}`, rtol: 1e-5, atol: 1e-7 });
      const [ga] = await withGrads([la], [a]);
      const [gb] = await withGrads([lb], [b]);
      assertClose(t, fromTensor(gb), fromTensor(ga), { name: `${what}: grad ${call}`, rtol: 1e-5, atol: 1e-9 });
    }
    if (momentum > 0) assertClose(t, { shape: [bins], data: fused.accSum! }, { shape: [bins], data: dense.accSum! }, { name: `${what}: accSum`, rtol: 1e-12, atol: 0 });
    dense.dispose();
    fused.dispose();
  }
});

test('ghmc: all gradients in one bin reduce to the mean binary cross-entropy; the first momentum step uses (1 − m)·count', async (t) => {
  // every |σ(x) − y| is the same, so every element falls in one bin: weight = tot / count / 1 = 1
  const x = Tensor.from([0.3, -0.3, 0.3, -0.3], [2, 2]);
  const y = Tensor.from([0, 1, 0, 1], [2, 2]);
  const w = Tensor.from([1, 1, 1, 1], [2, 2]);
  const plain = await new GHMC().forward(x, y, w);
  const bce = Math.log(1 + Math.exp(0.3)); // −log(1 − σ(0.3)) = −log σ(−0.3)
  t.true(Math.abs(plain.toNumbers()[0] - bce) < 1e-6, `${plain.toNumbers()[0]} vs ${bce}`);
  // with momentum m the first call's acc = (1 − m)·count, so weights = tot / ((1 − m)·count) = 1 / (1 − m)
  const ghm = new GHMC({ momentum: 0.75 });
  const first = await ghm.forward(x, y, w);
  t.true(Math.abs(first.toNumbers()[0] - bce / 0.25) < 1e-5);
  t.deepEqual(Array.from(ghm.accSum!).filter((v) => v > 0), [1]);
  // ignored elements (label weight 0) change nothing
  const half = await new GHMC().forward(x, y, Tensor.from([1, 1, 0, 0], [2, 2]));
  t.true(Math.abs(half.toNumbers()[0] - bce) < 1e-6);
  // the state round-trips
  const copy = new GHMC({ momentum: 0.75 });
  copy.accSum = ghm.accSum;
  t.deepEqual(copy.accSum, ghm.accSum);
  t.throws(() => { copy.accSum = new Float64Array(3); }, { instanceOf: RangeError, message: /accSum/ });
});

test('assigner: IoU exactly 0.5 is positive and exactly 0.4 ignored; no GT gives all negatives; padding rows are skipped', async (t) => {
  // anchor [0,0,10,10]; a GT [0,0,10,5] has IoU 0.5, a GT [0,0,10,4] IoU 0.4, [0,0,10,3.9] < 0.4
  const anchors = Tensor.from([0, 0, 10, 10, 100, 100, 110, 110], [2, 4]);
  const ann = Tensor.from([0, 0, 10, 5, 2, -1, -1, -1, -1, -1, /* image 2 */ 0, 0, 10, 4, 1, -1, -1, -1, -1, -1, /* image 3 */ 0, 0, 10, 3.9, 0, -1, -1, -1, -1, -1, /* image 4: none */ -1, -1, -1, -1, -1, -1, -1, -1, -1, -1], [4, 2, 5]);
  const a = await new MaxIoUAssigner().assign(anchors, ann);
  t.deepEqual(a.labels.toNumbers(), [2, -1, -2, -1, -1, -1, -1, -1]);
  t.deepEqual(a.numPositives.toNumbers(), [1, 0, 0, 0]);
  t.deepEqual(a.assignedGt.toNumbers(), [0, -1, -1, -1, -1, -1, -1, -1]);
  t.deepEqual(a.maxIou.toNumbers().slice(6), [-1, -1]);
});

test('assigner: low-quality matches give every GT its best anchors (last GT wins ties); crowd regions make anchors ignored', async (t) => {
  const anchors = Tensor.from([0, 0, 10, 10, 20, 0, 30, 10, 40, 0, 50, 10], [3, 4]);
  // GT 0 overlaps anchor 0 with IoU 0.25 only; GT 1 overlaps anchor 1 with IoU 0.3
  const ann = Tensor.from([0, 0, 5, 5, 1, 20, 0, 30, 3, 2], [1, 2, 5]);
  t.deepEqual((await new MaxIoUAssigner().assign(anchors, ann)).labels.toNumbers(), [-1, -1, -1]);
  const low = await new MaxIoUAssigner({ lowQualityMatches: true }).assign(anchors, ann);
  t.deepEqual(low.labels.toNumbers(), [1, 2, -1]);
  t.deepEqual(low.assignedGt.toNumbers(), [0, 1, -1]);
  // a crowd region (label −2) covering anchor 2 makes it ignored instead of negative
  const crowd = Tensor.from([0, 0, 10, 10, 1, 38, -2, 60, 12, -2], [1, 2, 5]);
  t.deepEqual((await new MaxIoUAssigner().assign(anchors, crowd)).labels.toNumbers(), [1, -1, -2]);
  t.deepEqual((await new MaxIoUAssigner({ ignoreIof: 0 }).assign(anchors, crowd)).labels.toNumbers(), [1, -1, -1]);
});

test('focal: an image without boxes contributes its un-normalised negative sum and no regression loss', async (t) => {
  const input = randomBatch(5, [0]);
  const loss = await new FocalLoss().forward({ classifications: toTensor(input.logits), regressions: toTensor(input.regressions), anchors: toTensor(input.anchors), annotations: toTensor(input.annotations) });
  const p = Array.from(input.logits.data as Float32Array, (x) => Math.min(Math.max(1 / (1 + Math.exp(-x)), 1e-4), 1 - 1e-4));
  const expected = p.reduce((s, v) => s + 0.75 * v * v * -Math.log(1 - v), 0);
  t.true(Math.abs(loss.cls.toNumbers()[0] - expected) / expected < 1e-5);
  t.is(loss.reg.toNumbers()[0], 0);
});

test('retinanet loss: focal + smoothL1 equals FocalLoss; ghmc + ghmr equals GHMC/GHMR on the assigned targets; per-level GHM is one module called per level (one shared state)', async (t) => {
  const input = randomBatch(9, [4, 2]);
  const args = { classifications: toTensor(input.logits), regressions: toTensor(input.regressions), anchors: toTensor(input.anchors), annotations: toTensor(input.annotations) };
  const plain = await new FocalLoss().forward(args);
  const composed = await new RetinaNetLoss({ clsWeight: 2 }).forward(args);
  t.true(Math.abs(composed.cls.toNumbers()[0] - 2 * plain.cls.toNumbers()[0]) < 1e-6);
  t.is(composed.reg.toNumbers()[0], plain.reg.toNumbers()[0]);

  const ghmLoss = new RetinaNetLoss({ classification: 'ghmc', regression: 'ghmr', ghmc: { momentum: 0 }, ghmr: { momentum: 0 } });
  const ghm = await ghmLoss.forward(args);
  // the same through the standalone classes with the assigner's targets
  const a = await new MaxIoUAssigner().assign(args.anchors, args.annotations);
  const labels = a.labels.toNumbers();
  const C = 4;
  const target = new Float32Array(labels.length * C);
  const weight = new Float32Array(labels.length * C);
  labels.forEach((l, i) => {
    if (l >= 0) target[i * C + l] = 1;
    if (l !== -2) weight.fill(1, i * C, i * C + C);
  });
  const shape = args.classifications.shape;
  const ghmc = await new GHMC({ momentum: 0 }).forward(args.classifications, Tensor.from(target, shape), Tensor.from(weight, shape));
  t.true(Math.abs(ghm.cls.toNumbers()[0] - ghmc.toNumbers()[0]) < 1e-6);
  const deltas = encodeBoxes(args.anchors, a.boxes);
  const regWeight = Float32Array.from({ length: labels.length * 4 }, (_, i) => (labels[Math.floor(i / 4)] >= 0 ? 1 : 0));
  const ghmr = await new GHMR({ momentum: 0 }).forward(args.regressions, deltas, Tensor.from(regWeight, args.regressions.shape));
  t.true(Math.abs(ghm.reg.toNumbers()[0] - ghmr.toNumbers()[0]) < 1e-6);

  const perLevel = new RetinaNetLoss({ classification: 'ghmc', regression: 'ghmr', ghmPerLevel: true });
  await t.throwsAsync(perLevel.forward(args), { instanceOf: RangeError, message: /levelSizes/ });
  const levelSizes = [320, 80, 20, 6, 2].map((n) => n * 9);
  // mmdetection's head: ONE GHMC module called once per level (level order, one acc_sum), the losses
  // summed — the same as one standalone GHMC with momentum over the levels' slices, twice (two steps)
  const reference = new GHMC({ momentum: 0.75 });
  const [B, N] = args.classifications.shape;
  const logits = input.logits.data as Float32Array;
  const slice = (data: Float32Array, start: number, n: number) => {
    const out = new Float32Array(B * n * C);
    for (let b = 0; b < B; b++) out.set(data.subarray((b * N + start) * C, (b * N + start + n) * C), b * n * C);
    return out;
  };
  for (let call = 0; call < 2; call++) {
    const v = await perLevel.forward({ ...args, levelSizes });
    let expected = 0;
    let start = 0;
    for (const n of levelSizes) {
      const part = await reference.forward(Tensor.from(slice(logits, start, n), [B, n, C]), Tensor.from(slice(target, start, n), [B, n, C]), Tensor.from(slice(weight, start, n), [B, n, C]));
      expected += part.toNumbers()[0];
      start += n;
    }
    t.true(Math.abs(v.cls.toNumbers()[0] - expected) / expected < 1e-5, `call ${call}: per-level ${v.cls.toNumbers()[0]} vs one module over the levels ${expected}`);
    t.true(Number.isFinite(v.reg.toNumbers()[0]));
  }
  const state = perLevel.state();
  t.is(state.ghmc.length, 1);
  t.is(state.ghmr.length, 1);
  t.true(state.ghmc.every((s) => s !== null && s.length === 10));
  t.deepEqual(Array.from(state.ghmc[0]!), Array.from(reference.accSum!));
});

test('losses: bad inputs and options give errors naming the argument', async (t) => {
  const input = randomBatch(1, [1]);
  const args = { classifications: toTensor(input.logits), regressions: toTensor(input.regressions), anchors: toTensor(input.anchors), annotations: toTensor(input.annotations) };
  await t.throwsAsync(new FocalLoss().forward({ ...args, anchors: Tensor.from(new Float32Array(8), [2, 4]) }), { instanceOf: RangeError, message: /anchors: 2 anchors but the outputs have 3852/ });
  await t.throwsAsync(new FocalLoss().forward({ ...args, annotations: Tensor.from(new Float32Array(8), [1, 2, 4]) }), { instanceOf: RangeError, message: /annotations: expected a float tensor of shape \[B, M, 5\]/ });
  await t.throwsAsync(new FocalLoss().forward({ ...args, regressions: 5 as never }), { instanceOf: TypeError, message: /input\.regressions/ });
  t.throws(() => new FocalLoss({ variant: 'mmdet' as never }), { instanceOf: RangeError, message: /options\.variant/ });
  t.throws(() => new GHMC({ momentum: 1 }), { instanceOf: RangeError, message: /options\.momentum/ });
  t.throws(() => new RetinaNetLoss({ regression: 'iou' as never }), { instanceOf: RangeError, message: /options\.regression/ });
  const ghm = new GHMC();
  await t.throwsAsync(ghm.forward(Tensor.from([1, 2]), Tensor.from([1]), Tensor.from([1])), { instanceOf: RangeError, message: /GHMC: pred \[2\], target \[1\]/ });
  const x = Tensor.from([1, 2]);
  await t.throwsAsync(x.backward(), { instanceOf: RangeError, message: /backward: expected a tensor with one element/ });
  await t.throwsAsync(x.sum().backward(), { instanceOf: TypeError, message: /does not require gradients/ });
  t.throws(() => Tensor.from([1], [1], { dtype: 'int64' }).setRequiresGrad(), { instanceOf: TypeError, message: /only float tensors/ });
});
