/**
 * Inference fusions (core/models/frozen_bn: convBatchNormAct, convBiasAct). In 16-bit inference on channels-last CUDA models a
 * frozen BatchNorm followed by a ReLU is folded into its convolution (weight w·s, bias t, each rounded once) and cuDNN runs
 * convolution + bias + ReLU as one kernel; so do the heads' convolutions with a bias and a ReLU. CPU: the folding's arithmetic in
 * ATen (test hook ONESTAGE_TEST_CONV_FUSION=emulate, float32) gives LibTorch's outputs to float rounding, differs from them in the
 * last bits (it ran), runs in inference only (training steps bitwise unchanged), and ONESTAGE_CONV_FUSION=off restores the plain
 * path bitwise. CUDA: the fused bf16 forward is as close to float32 as the unfused bf16 forward, and the detect graph (the folding
 * inside it) replays the eager fused detections, weights loaded in place included. Weights: random, with BatchNorm statistics and
 * affine parameters away from their defaults (test/reference/random_weights.py).
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildInfo, DataLoader, CocoDataset, Device, disposeBatch, makeShapes, Model, setTf32, Tensor, Trainer } from '../lib';
import { assertClose } from './helpers/close';
import { runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

const KEYS = ['c3', 'c4', 'c5', 'p3', 'p5', 'p7', 'regression', 'classification'] as const;
type Outputs = Record<(typeof KEYS)[number], Float32Array>;
const SWITCHES = ['ONESTAGE_TEST_CONV_FUSION', 'ONESTAGE_CONV_FUSION'] as const;

/** Runs `f` with the switches set as given (the others unset), then unsets them. */
async function under<T>(env: Partial<Record<(typeof SWITCHES)[number], string>>, f: () => Promise<T>): Promise<T> {
  for (const k of SWITCHES) delete process.env[k];
  Object.assign(process.env, env);
  try {
    return await f();
  } finally {
    for (const k of SWITCHES) delete process.env[k];
  }
}

/** A RetinaNet with random weights whose BatchNorm layers are not the identity. */
async function randomModel(depth: 18 | 50, device: Device, seed: number): Promise<Model> {
  const model = Model.retinanet({ depth, numClasses: 3, featureSize: 32, seed: 1, device });
  const dir = tempDir();
  const state = model.stateDict();
  fs.writeFileSync(path.join(dir, 'keys.json'), JSON.stringify(Object.entries(state).map(([k, v]) => [k, v.shape])));
  for (const v of Object.values(state)) v.dispose();
  const file = path.join(dir, `random-${depth}.pt`);
  runReference('random_weights.py', [path.join(dir, 'keys.json'), String(seed), file]);
  await model.loadWeights(file);
  return model.eval();
}

async function outputs(model: Model, images: Tensor, amp = false): Promise<Outputs> {
  const out = (await model.forward(images, { amp })) as unknown as Record<string, Tensor>;
  const got = Object.fromEntries(KEYS.map((k) => [k, out[k].toArray() as Float32Array])) as Outputs;
  for (const v of Object.values(out)) v.dispose();
  return got;
}

const imagesOf = (device: Device, b = 2, side = 96) => Tensor.from(new Rng(3).normal(b * 3 * side * side), [b, 3, side, side], { device });

// serial: the switches are read at every forward
test.serial('conv fusion: BatchNorm folded into the convolutions, the heads\' conv + bias + ReLU as one call — the emulated arithmetic gives LibTorch\'s outputs and detections to float rounding and differs in the last bits; off restores them bitwise; training steps unchanged; bad switch values are errors (cpu)', async (t) => {
  const images = imagesOf('cpu');
  for (const c of [{ depth: 18 as const, channelsLast: false }, { depth: 50 as const, channelsLast: true }]) {
    const name = `resnet-${c.depth}${c.channelsLast ? ', channels-last' : ''}`;
    const model = await randomModel(c.depth, 'cpu', 11);
    model.channelsLast(c.channelsLast);
    const plain = await outputs(model, images);
    const fused = await under({ ONESTAGE_TEST_CONV_FUSION: 'emulate' }, () => outputs(model, images));
    const off = await under({ ONESTAGE_TEST_CONV_FUSION: 'emulate', ONESTAGE_CONV_FUSION: 'off' }, () => outputs(model, images));
    t.notDeepEqual(fused.c3, plain.c3, `${name}: the folded convolutions ran`);
    t.deepEqual(off, plain, `${name}: ONESTAGE_CONV_FUSION=off is the plain path`);
    for (const k of KEYS) {
      const scale = plain[k].reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      assertClose(t, { shape: [fused[k].length], data: fused[k] }, { shape: [plain[k].length], data: plain[k] }, { rtol: 1e-4, atol: 1e-5 * scale, name: `${name}: ${k}` });
    }
    const detect = () => model.detect(images, { scoreThreshold: 0.05, topkCandidates: 100 });
    const [d0] = await detect();
    const [d1] = await under({ ONESTAGE_TEST_CONV_FUSION: 'emulate' }, detect);
    t.true(d0.scores.length > 0, `${name}: detections to compare`);
    t.deepEqual(Array.from(d1.labels), Array.from(d0.labels), `${name}: detection labels`);
    assertClose(t, { shape: [d1.scores.length], data: d1.scores }, { shape: [d0.scores.length], data: d0.scores }, { rtol: 1e-4, atol: 1e-6, name: `${name}: detection scores` });
    assertClose(t, { shape: [d1.boxes.length], data: d1.boxes }, { shape: [d0.boxes.length], data: d0.boxes }, { rtol: 1e-4, atol: 1e-3, name: `${name}: detection boxes` });
    model.dispose();
  }
  // a training step (gradient mode on, BatchNorm frozen) takes none of it
  const dir = tempDir();
  await makeShapes({ out: dir, train: 4, val: 0, size: 64, classes: 3, seed: 9, maxObjects: 3 });
  const ds = await CocoDataset.open(path.join(dir, 'instances_train.json'));
  const [batch] = await (async () => {
    const bs = [];
    for await (const b of new DataLoader(ds, { batchSize: 4, seed: 3, transform: { minSide: 64, maxSide: 64 } }).epoch(0)) bs.push(b);
    return bs;
  })();
  const step = async () => {
    const model = await randomModel(18, 'cpu', 12);
    const trainer = new Trainer(model, { optimizer: { lr: 0.01 } });
    const r = [await trainer.step(batch, 0.01), await trainer.step(batch, 0.01)].flatMap((s) => [s.total, s.gradNorm]);
    trainer.dispose();
    model.dispose();
    return r;
  };
  t.deepEqual(await under({ ONESTAGE_TEST_CONV_FUSION: 'emulate' }, step), await step(), 'training steps');
  disposeBatch(batch);
  const model = Model.retinanet({ depth: 18, numClasses: 3, featureSize: 8, seed: 1 }).eval();
  await under({ ONESTAGE_CONV_FUSION: 'maybe' }, () => t.throwsAsync(model.detect(images), { message: /ONESTAGE_CONV_FUSION must be on or off, not 'maybe'/ }));
  await under({ ONESTAGE_TEST_CONV_FUSION: 'float64' }, () => t.throwsAsync(model.forward(images), { message: /ONESTAGE_TEST_CONV_FUSION must be emulate, not 'float64'/ }));
  await t.throwsAsync(model.forward(images, { amp: true }), { instanceOf: RangeError, message: /options\.amp \(bf16 autocast\) needs a model on CUDA; this one is on cpu/ });
  await t.throwsAsync(model.forward(images, { amp: 'yes' as unknown as boolean }), { instanceOf: TypeError, message: /Expected a boolean for options\.amp/ });
  model.dispose();
  images.dispose();
});

const cuda = buildInfo().cudaAvailable ? test.serial : test.skip;

cuda('conv fusion: the fused bf16 forward (folded BatchNorm, cuDNN\'s conv + bias + ReLU) is as close to float32 as the unfused bf16 forward; the detect graph replays the eager fused detections, weights loaded in place included (cuda)', async (t) => {
  setTf32(false);
  const images = imagesOf('cuda', 2, 128);
  for (const depth of [18, 50] as const) {
    const model = (await randomModel(depth, 'cuda', 21)).channelsLast(true);
    const f32 = await outputs(model, images);
    const fused = await outputs(model, images, true);
    const unfused = await under({ ONESTAGE_CONV_FUSION: 'off' }, () => outputs(model, images, true));
    t.notDeepEqual(fused.c3, unfused.c3, `resnet-${depth}: the fused calls ran (cuDNN found engines)`);
    for (const k of KEYS) {
      const dev = (a: Float32Array) => {
        let num = 0;
        let den = 0;
        for (let i = 0; i < a.length; i++) {
          num += (a[i] - f32[k][i]) ** 2;
          den += f32[k][i] ** 2;
        }
        return Math.sqrt(num / Math.max(den, 1e-30));
      };
      const [e1, e0] = [dev(fused[k]), dev(unfused[k])];
      t.log(`resnet-${depth} ${k}: relative deviation from float32 fused ${e1.toExponential(2)}, unfused ${e0.toExponential(2)}`);
      t.true(e1 <= Math.max(1.5 * e0, 2e-3), `resnet-${depth} ${k}: fused ${e1} vs unfused ${e0} (relative RMS deviation from float32)`);
    }
    // the detect graph: eager, eager, captured, replayed — the folding is inside it
    const opts = { amp: true, scoreThreshold: 0.05, topkCandidates: 200 };
    const detections = async () => (await model.detect(images, opts)).map((d) => ({ boxes: Array.from(d.boxes), scores: Array.from(d.scores), labels: Array.from(d.labels) }));
    const graphed = async () => (await model.detect(images, { ...opts, cudaGraph: true })).map((d) => ({ boxes: Array.from(d.boxes), scores: Array.from(d.scores), labels: Array.from(d.labels) }));
    const eager = await detections();
    t.true(eager[0].scores.length > 0, `resnet-${depth}: detections to compare`);
    for (let i = 0; i < 4; i++) t.deepEqual(await graphed(), eager, `resnet-${depth}: detect graph call ${i}`);
    // other weights loaded into the same storage: the replay folds them
    const other = await randomModel(depth, 'cuda', 22);
    const file = path.join(tempDir(), 'other.safetensors');
    await other.saveWeights(file);
    other.dispose();
    await model.loadWeights(file);
    const eagerOther = await detections();
    t.notDeepEqual(eagerOther, eager, `resnet-${depth}: other weights, other detections`);
    t.deepEqual(await graphed(), eagerOther, `resnet-${depth}: the replay after loading`);
    model.dispose();
  }
  images.dispose();
});
