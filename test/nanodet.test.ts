/**
 * NanoDet-Plus parity: QFL, DFL, GIoU and the DSL assigner against NanoDet's own outputs (fixtures),
 * and priors, Integral, distance coding, the batched assigner and the whole head loss (with and
 * without the AGM) against the per-image reference test/reference/nanodet_ref.py — forward values
 * and gradients to 1e-5, assignments exactly; hand cases; the model, its AGM detaching and training.
 */
import test from 'ava';
import * as path from 'node:path';
import { boxIou, boxToDistance, buildInfo, centrePriors, distanceToBox, DistributionFocalLoss, DSLAssigner, GIoULoss, integralDistances, Model, NanoDetPlusLoss, QualityFocalLoss, setTf32, Tensor, Trainer } from '../lib';
import { Bundle, BundleEntry, fromTensor, readBundle, toTensor, writeBundle } from './helpers/bundle';
import { assertClose } from './helpers/close';
import { pythonWithTorch, runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

const PEERS = path.join(__dirname, 'fixtures', 'peers');
const devices = ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])] as const;
if (buildInfo().cudaAvailable) setTf32(false);
const TOL = { rtol: 1e-5, atol: 1e-6 };
const GRAD = { rtol: 1e-5, atol: 1e-7 };

function values(t: Tensor): number[] {
  return Array.from(t.toArray() as ArrayLike<number | bigint>, Number);
}

function reference(command: string, input: Bundle, meta: Record<string, unknown> = {}): Bundle {
  const dir = tempDir();
  writeBundle(path.join(dir, 'in'), input, meta);
  runReference('nanodet_ref.py', [command, path.join(dir, 'in'), path.join(dir, 'out')]);
  return readBundle(path.join(dir, 'out')).tensors;
}

for (const device of devices) {
  test(`nanodet: NanoDet's own quality_focal_loss, distribution_focal_loss, giou_loss and gradients are reproduced (${device})`, async (t) => {
    const q = readBundle(path.join(PEERS, 'qfl')).tensors;
    const pred = toTensor(q.pred, device).setRequiresGrad();
    const lq = await new QualityFocalLoss().forward(pred, toTensor(q.label, device), toTensor(q.score, device));
    assertClose(t, fromTensor(lq), q.loss, { name: 'qfl', ...TOL });
    await lq.sum().backward();
    assertClose(t, pred.grad!, q.grad_pred, { name: 'qfl grad', ...GRAD });
    const d = readBundle(path.join(PEERS, 'dfl')).tensors;
    const dp = toTensor(d.pred, device).setRequiresGrad();
    const ld = await new DistributionFocalLoss().forward(dp, toTensor(d.label, device));
    assertClose(t, fromTensor(ld), d.loss, { name: 'dfl', ...TOL });
    await ld.sum().backward();
    assertClose(t, dp.grad!, d.grad_pred, { name: 'dfl grad', ...GRAD });
    const g = readBundle(path.join(PEERS, 'giou')).tensors;
    const gp = toTensor(g.pred, device).setRequiresGrad();
    const lg = await new GIoULoss().forward(gp, toTensor(g.target, device));
    assertClose(t, fromTensor(lg), g.loss, { name: 'giou', ...TOL });
    await lg.sum().backward();
    assertClose(t, gp.grad!, g.grad_pred, { name: 'giou grad', ...GRAD });
    const a = toTensor(g.pred, device);
    const b = toTensor(g.target, device);
    const first = (x: Tensor, n: number) => Tensor.from((x.toArray() as Float32Array).slice(0, n * 4), [n, 4], { device });
    assertClose(t, boxIou(first(a, 50), first(b, 40)), g.iou_pairwise, { name: 'pairwise IoU', rtol: 1e-5, atol: 1e-6 });
  });

  test(`nanodet: NanoDet's DynamicSoftLabelAssigner assignments are reproduced exactly (random, crowded, empty) (${device})`, async (t) => {
    for (const name of ['dsl-assign', 'dsl-assign-crowded', 'dsl-assign-empty']) {
      const fx = readBundle(path.join(PEERS, name)).tensors;
      const M = fx.gt_bboxes.shape[0];
      const ann = new Float32Array(Math.max(M, 1) * 5).fill(-1);
      for (let m = 0; m < M; m++) {
        ann.set((fx.gt_bboxes.data as Float32Array).slice(m * 4, m * 4 + 4), m * 5);
        ann[m * 5 + 4] = Number((fx.gt_labels.data as BigInt64Array)[m]);
      }
      const N = fx.priors.shape[0];
      const logits = toTensor({ ...fx.pred_logits, shape: [1, N, fx.pred_logits.shape[1]] }, device);
      const decoded = toTensor({ ...fx.decoded_bboxes, shape: [1, N, 4] }, device);
      const r = await new DSLAssigner().assign(logits, toTensor(fx.priors, device), decoded, Tensor.from(ann, [1, Math.max(M, 1), 5], { device }));
      const expectedGt = Array.from(fx.assigned_gt_inds.data as BigInt64Array, (v) => Number(v) - 1);
      t.deepEqual(values(r.gtIndex), expectedGt, `${name}: assigned GT`);
      t.deepEqual(values(r.labels), Array.from(fx.assigned_labels.data as BigInt64Array, Number), `${name}: labels`);
      const ious = values(r.ious);
      const overlaps = Array.from(fx.max_overlaps.data as Float32Array);
      const fg = expectedGt.map((g) => g >= 0);
      const fgIous = ious.filter((_, i) => fg[i]);
      assertClose(t, { shape: [fgIous.length], data: fgIous }, { shape: [fgIous.length], data: overlaps.filter((_, i) => fg[i]) }, { name: `${name}: IoU of positives`, ...TOL });
      t.true(ious.every((v, i) => fg[i] || v === 0));
      t.is(values(r.numPositives)[0], fg.filter(Boolean).length);
    }
  });
}

const SIZE: [number, number] = [80, 96];
const STRIDES = [8, 16, 32];
const C = 4;
const R = 7;

/** Random annotations [B, M, 5] with the given real boxes per image (padding rows after), one duplicated box (a tie) when asked. */
function annotations(rng: Rng, counts: number[], tie = false): BundleEntry {
  const M = Math.max(1, ...counts) + 1 + (tie ? 1 : 0);
  const data = new Float32Array(counts.length * M * 5).fill(-1);
  counts.forEach((n, b) => {
    for (let k = 0; k < n; k++) {
      const w = rng.between(6, 60);
      const h = rng.between(6, 50);
      const x = rng.between(0, SIZE[1] - w);
      const y = rng.between(0, SIZE[0] - h);
      data.set([x, y, x + w, y + h, rng.integer(0, C)], (b * M + k) * 5);
    }
    if (tie && n > 0) data.copyWithin((b * M + n) * 5, (b * M) * 5, (b * M) * 5 + 5);
  });
  return { shape: [counts.length, M, 5], dtype: 'float32', data };
}

function predictions(rng: Rng, B: number, N: number, scale = 1): BundleEntry {
  return { shape: [B, N, C + 4 * (R + 1)], dtype: 'float32', data: rng.normal(B * N * (C + 4 * (R + 1)), scale) };
}

test('nanodet: centre priors, Integral, distance2bbox and bbox2distance equal the reference (odd input sizes)', async (t) => {
  const rng = new Rng(5);
  const input: Bundle = {
    qfl_pred: { shape: [50, C], dtype: 'float32', data: rng.normal(50 * C, 2) },
    qfl_label: { shape: [50], dtype: 'int64', data: BigInt64Array.from({ length: 50 }, () => BigInt(rng.integer(0, C + 1))) },
    qfl_score: { shape: [50], dtype: 'float32', data: rng.uniform(50) },
    dfl_pred: { shape: [40, R + 1], dtype: 'float32', data: rng.normal(40 * (R + 1)) },
    dfl_label: { shape: [40], dtype: 'float32', data: rng.uniform(40, 0, R - 0.1) },
    giou_pred: { shape: [30, 4], dtype: 'float32', data: Float32Array.from({ length: 120 }, (_, i) => (i % 4 < 2 ? rng.between(0, 40) : rng.between(45, 90))) },
    giou_target: { shape: [30, 4], dtype: 'float32', data: Float32Array.from({ length: 120 }, (_, i) => (i % 4 < 2 ? rng.between(0, 40) : rng.between(45, 90))) },
    reg: { shape: [30, 4 * (R + 1)], dtype: 'float32', data: rng.normal(30 * 4 * (R + 1)) },
    points: { shape: [30, 2], dtype: 'float32', data: rng.uniform(60, 40, 45) },
  };
  const out = reference('pieces', input, { height: 75, width: 100, strides: [8, 16, 32, 64], reg_max: R });
  assertClose(t, centrePriors(75, 100), out.priors, { name: 'priors', atol: 0, rtol: 0 });
  const p = toTensor(input.qfl_pred).setRequiresGrad();
  const q = await new QualityFocalLoss().forward(p, toTensor(input.qfl_label), toTensor(input.qfl_score));
  assertClose(t, q, out.qfl, { name: 'qfl', ...TOL });
  await q.sum().backward();
  assertClose(t, p.grad!, out.grad_qfl, { name: 'qfl grad', ...GRAD });
  const dp = toTensor(input.dfl_pred).setRequiresGrad();
  const d = await new DistributionFocalLoss().forward(dp, toTensor(input.dfl_label));
  assertClose(t, d, out.dfl, { name: 'dfl', ...TOL });
  await d.sum().backward();
  assertClose(t, dp.grad!, out.grad_dfl, { name: 'dfl grad', ...GRAD });
  const gp = toTensor(input.giou_pred).setRequiresGrad();
  const g = await new GIoULoss().forward(gp, toTensor(input.giou_target));
  assertClose(t, g, out.giou, { name: 'giou', ...TOL });
  await g.sum().backward();
  assertClose(t, gp.grad!, out.grad_giou, { name: 'giou grad', ...GRAD });
  const dist = integralDistances(toTensor(input.reg), R);
  assertClose(t, dist, out.integral, { name: 'integral', ...TOL });
  assertClose(t, distanceToBox(toTensor(input.points), dist), out.boxes, { name: 'distance2bbox', ...TOL });
  assertClose(t, boxToDistance(toTensor(input.points), toTensor(input.giou_target)), out.distances, { name: 'bbox2distance', ...TOL });
});

for (const device of devices) {
  test(`nanodet: the batched DSL assigner equals the per-image reference (B 1/2/4; 0, 1, 20 GT; padding; tied GTs; chunked) (${device})`, async (t) => {
    if (pythonWithTorch() === null) return t.fail('no python3 with torch: install python3-torch');
    const priors = centrePriors(SIZE[0], SIZE[1], { strides: STRIDES });
    const N = priors.shape[0];
    const cases: Array<{ counts: number[]; tie?: boolean }> = [{ counts: [0] }, { counts: [1] }, { counts: [20] }, { counts: [3, 0], tie: true }, { counts: [20, 1, 0, 7], tie: true }];
    for (const [k, c] of cases.entries()) {
      const rng = new Rng(40 + k);
      const B = c.counts.length;
      const ann = annotations(rng, c.counts, c.tie);
      const logits: BundleEntry = { shape: [B, N, C], dtype: 'float32', data: rng.normal(B * N * C, 2) };
      // predicted boxes: around each prior, as a trained head would give
      const dec = new Float32Array(B * N * 4);
      const pri = priors.toArray() as Float32Array;
      for (let b = 0; b < B; b++)
        for (let n = 0; n < N; n++) {
          const [cx, cy, s] = [pri[n * 4], pri[n * 4 + 1], pri[n * 4 + 2]];
          dec.set([cx - rng.between(0, 4 * s), cy - rng.between(0, 4 * s), cx + rng.between(0, 4 * s), cy + rng.between(0, 4 * s)], (b * N + n) * 4);
        }
      const decoded: BundleEntry = { shape: [B, N, 4], dtype: 'float32', data: dec };
      const expected = reference('assign', { logits, priors: fromTensor(priors), decoded, annotations: ann });
      for (const maxPairs of [undefined, N]) {
        const r = await new DSLAssigner(maxPairs ? { maxPairs } : {}).assign(toTensor(logits, device), priors.to(device), toTensor(decoded, device), toTensor(ann, device));
        const label = `case ${k}${maxPairs ? ' chunked' : ''}`;
        t.deepEqual(values(r.gtIndex), Array.from(expected.gt_index.data as BigInt64Array, Number), `${label}: GT index`);
        t.deepEqual(values(r.labels), Array.from(expected.labels.data as BigInt64Array, Number), `${label}: labels`);
        assertClose(t, r.ious, expected.ious, { name: `${label}: IoU`, ...TOL });
      }
    }
  });

  test(`nanodet: the NanoDet-Plus head loss with and without the AGM equals the reference, values and gradients (${device})`, async (t) => {
    if (pythonWithTorch() === null) return t.fail('no python3 with torch: install python3-torch');
    const priors = centrePriors(SIZE[0], SIZE[1], { strides: STRIDES });
    const N = priors.shape[0];
    for (const [k, c] of [{ counts: [2], aux: false }, { counts: [5, 0], aux: true }, { counts: [12, 1, 3, 0], aux: true }, { counts: [0, 0], aux: true }].entries()) {
      const rng = new Rng(70 + k);
      const B = c.counts.length;
      const input: Bundle = { preds: predictions(rng, B, N), priors: fromTensor(priors), annotations: annotations(rng, c.counts) };
      if (c.aux) input.aux_preds = predictions(rng, B, N);
      const expected = reference('loss', input, { num_classes: C, reg_max: R });
      const preds = toTensor(input.preds, device).setRequiresGrad();
      const aux = c.aux ? toTensor(input.aux_preds, device).setRequiresGrad() : undefined;
      const loss = await new NanoDetPlusLoss().forward({ preds, auxPreds: aux, priors: priors.to(device), annotations: toTensor(input.annotations, device), numClasses: C });
      const label = `case ${k}`;
      for (const [ours, theirs] of [['qfl', 'qfl'], ['bbox', 'bbox'], ['dfl', 'dfl'], ['total', 'total'], ...(c.aux ? [['auxQfl', 'aux_qfl'], ['auxBbox', 'aux_bbox'], ['auxDfl', 'aux_dfl']] : [])] as const)
        assertClose(t, loss[ours as keyof typeof loss] as Tensor, expected[theirs], { name: `${label}: ${ours}`, ...TOL });
      await loss.total.backward();
      assertClose(t, preds.grad!, expected.grad_preds, { name: `${label}: grad preds`, ...GRAD });
      if (aux) assertClose(t, aux.grad!, expected.grad_aux_preds, { name: `${label}: grad aux preds`, ...GRAD });
      if (c.counts.every((n) => n === 0)) t.is(values(loss.bbox)[0], 0);
    }
  });
}

test('nanodet: hand cases — DFL with an integer target is cross-entropy; QFL positive term vanishes when σ equals the target; disjoint GIoU loss in (1, 2)', async (t) => {
  const logits = [0.3, -1.2, 2.0, 0.5, 0.1, -0.4, 1.1, 0.0];
  const pred = Tensor.from(Float32Array.from(logits), [1, 8]);
  const dfl = values(await new DistributionFocalLoss().forward(pred, Tensor.from(Float32Array.from([3]), [1])))[0];
  const lse = Math.log(logits.reduce((s, v) => s + Math.exp(v), 0));
  t.true(Math.abs(dfl - (lse - logits[3])) < 1e-5, `${dfl} vs ${lse - logits[3]}`);
  // one class, positive, target equal to σ(x): no loss at all (no negatives either)
  const x = 0.7;
  const sigma = 1 / (1 + Math.exp(-x));
  const q = values(await new QualityFocalLoss().forward(Tensor.from(Float32Array.from([x]), [1, 1]), Tensor.from(BigInt64Array.from([0n]), [1]), Tensor.from(Float32Array.from([sigma]), [1])))[0];
  t.true(Math.abs(q) < 1e-9, `${q}`);
  const g = values(await new GIoULoss().forward(Tensor.from(Float32Array.from([0, 0, 10, 10, 50, 50, 60, 70]), [2, 4]), Tensor.from(Float32Array.from([20, 0, 30, 10, 0, 0, 5, 5]), [2, 4])));
  t.true(g.every((v) => v > 1 && v < 2), `${g}`);
});

test('nanodet: hundreds of GTs per image assign in bounded chunks with the same result', async (t) => {
  const rng = new Rng(9);
  const priors = centrePriors(128, 128, { strides: STRIDES });
  const N = priors.shape[0];
  const ann = annotations(rng, [300, 250], false);
  const logits = Tensor.from(rng.normal(2 * N * C), [2, N, C]);
  const decoded = distanceToBox(Tensor.from(Float32Array.from({ length: 2 * N * 2 }, (_, i) => (priors.toArray() as Float32Array)[Math.floor((i % (N * 2)) / 2) * 4 + (i % 2)]), [2, N, 2]), Tensor.from(rng.uniform(2 * N * 4, 2, 30), [2, N, 4]));
  const whole = await new DSLAssigner().assign(logits, priors, decoded, toTensor(ann));
  const chunked = await new DSLAssigner({ maxPairs: N * 300 }).assign(logits, priors, decoded, toTensor(ann));
  t.deepEqual(values(chunked.gtIndex), values(whole.gtIndex));
  t.true(values(whole.numPositives).every((n) => n > 0));
});

test('nanodet: model outputs, detection defaults, saved weights and bad input', async (t) => {
  const model = Model.nanodetPlus({ numClasses: 3, depth: 18, featureSize: 32, head: { channels: 32 }, aux: { channels: 64 }, seed: 3, classes: ['a', 'b', 'c'] });
  t.is(model.architecture, 'nanodet-plus');
  t.is(model.info.regMax, 7);
  const x = Tensor.from(new Rng(1).normal(2 * 3 * 72 * 100), [2, 3, 72, 100]);
  model.eval();
  const out = await model.forward(x);
  const N = [8, 16, 32, 64].reduce((s, st) => s + Math.ceil(72 / st) * Math.ceil(100 / st), 0);
  t.deepEqual(out.preds.shape, [2, N, 3 + 32]);
  t.deepEqual(out.priors.shape, [N, 4]);
  t.deepEqual(out.boxes.shape, [2, N, 4]);
  // the classification bias starts at −4.595 (confidence 0.01)
  const scores = values(out.classification).map((v) => 1 / (1 + Math.exp(-v)));
  t.true(scores.every((s) => s < 0.05), 'initial scores stay below the detection threshold');
  t.deepEqual((await model.detect(x)).map((d) => d.scores.length), [0, 0]);
  const dir = tempDir();
  const file = path.join(dir, 'nd.safetensors');
  await model.saveWeights(file);
  const again = await Model.fromWeights(file);
  t.is(again.architecture, 'nanodet-plus');
  t.deepEqual(again.config.classes, ['a', 'b', 'c']);
  const out2 = await again.eval().forward(x);
  assertClose(t, (out2 as typeof out).preds, out.preds, { atol: 0, rtol: 0 });
  t.throws(() => Model.nanodetPlus({ numClasses: 3, strides: [8, 32, 64] }), { instanceOf: RangeError, message: /options\.strides/ });
  t.throws(() => Model.nanodetPlus({ numClasses: 3, aux: { channels: 50 } }), { message: /divisible/ });
  t.throws(() => Model.nanodetPlus({ numClasses: 0 }), { instanceOf: RangeError, message: /options\.numClasses/ });
  const loss = new NanoDetPlusLoss();
  await t.throwsAsync(loss.forward({ preds: out.preds, priors: out.priors, annotations: Tensor.from(new Float32Array(10), [2, 1, 5]), numClasses: 4 }), { instanceOf: RangeError, message: /preds: expected a float tensor \[B, N, 36\]/ });
  await t.throwsAsync(loss.forward({ preds: out.preds, priors: out.priors, annotations: Tensor.from(new Float32Array(10), [1, 2, 5]), numClasses: 3 }), { instanceOf: RangeError, message: /annotations: expected \[2, M, 5\]/ });
  t.throws(() => new NanoDetPlusLoss({ assignBy: 'main' as never }), { instanceOf: RangeError, message: /options\.assignBy/ });
});

/** Backbone weight after one plain SGD step (no clipping, no momentum) of a NanoDet-Plus model. */
async function backboneAfterStep(aux: boolean, epoch: number, assignBy: 'aux' | 'aux-until-detach'): Promise<number[]> {
  const model = Model.nanodetPlus({ numClasses: 2, depth: 18, featureSize: 16, head: { channels: 16 }, aux: aux ? { channels: 32 } : false, seed: 11 });
  const trainer = new Trainer(model, { optimizer: { type: 'sgd', lr: 0.1, momentum: 0, weightDecay: 0, clipGradNorm: 0 }, loss: { detachEpoch: 2, assignBy } });
  const rng = new Rng(2);
  const images = Tensor.from(rng.normal(2 * 3 * 64 * 64), [2, 3, 64, 64]);
  const ann = Tensor.from(Float32Array.from([4, 6, 40, 50, 0, 20, 10, 60, 40, 1, 8, 8, 30, 30, 1, -1, -1, -1, -1, -1]), [2, 2, 5]);
  const r = await trainer.step({ images, annotations: ann, ids: [0, 1] } as never, 0.1, { epoch, batch: 0, step: 0 });
  if (aux) for (const k of ['qfl', 'bbox', 'dfl', 'auxQfl', 'auxBbox', 'auxDfl']) if (!Number.isFinite(r.components[k])) throw new Error(`no ${k} component`);
  const w = model.stateDict()['layer1.0.conv1.weight'];
  return values(w);
}

test('nanodet: the AGM — before detachEpoch its losses reach the backbone, from detachEpoch on they do not', async (t) => {
  // from detachEpoch on, with the main head assigning its own labels, only the main losses move the
  // backbone: the same step as a model without the AGM (same seed, so the same backbone and head)
  const plain = await backboneAfterStep(false, 5, 'aux-until-detach');
  const detached = await backboneAfterStep(true, 5, 'aux-until-detach');
  const attached = await backboneAfterStep(true, 0, 'aux-until-detach');
  assertClose(t, { shape: [detached.length], data: detached }, { shape: [plain.length], data: plain }, { name: 'detached AGM', atol: 1e-6, rtol: 1e-5 });
  const diff = attached.reduce((m, v, i) => Math.max(m, Math.abs(v - plain[i])), 0);
  t.true(diff > 1e-5, `the attached AGM changes the backbone step (max difference ${diff})`);
});
