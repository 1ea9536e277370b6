/**
 * Training: the native step (forward, loss, backward, clipping, optimizer) learns on tiny shapes
 * data; non-finite batches are skipped and reported; a resumed run equals an uninterrupted one; the
 * learning-rate schedule.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Batch, buildInfo, CocoDataset, DataLoader, Device, disposeBatch, liveTensors, makeShapes, Model, resolveReplicas, StepRecord, Tensor, Trainer } from '../lib';
import sharp from 'sharp';
import * as os from 'node:os';
import { assertClose } from './helpers/close';
import { tempDir } from './helpers/python';

let data: Promise<CocoDataset> | undefined;
function dataset(): Promise<CocoDataset> {
  data ??= (async () => {
    const dir = tempDir();
    await makeShapes({ out: dir, train: 12, val: 0, size: 64, classes: 2, seed: 9, maxObjects: 3 });
    return CocoDataset.open(path.join(dir, 'instances_train.json'));
  })();
  return data;
}

const small = (device: Device = 'cpu') => Model.retinanet({ depth: 18, numClasses: 2, featureSize: 32, seed: 1, device });
const loaderOf = (ds: CocoDataset, device: Device = 'cpu') => new DataLoader(ds, { batchSize: 4, seed: 3, device, transform: { minSide: 64, maxSide: 64 } });
const devices: Device[] = ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])];

for (const device of devices) test(`train: the loss falls over a few epochs on tiny shapes data (${device})`, async (t) => {
  const model = small(device);
  const trainer = new Trainer(model, { optimizer: { lr: 0.01 } });
  const records: StepRecord[] = [];
  trainer.on('step', (r: StepRecord) => records.push(r));
  const result = await trainer.fit(loaderOf(await dataset(), device), { epochs: 6 });
  t.is(result.steps, 18);
  t.is(records.length, 18);
  t.true(records.every((r) => !r.skipped && Number.isFinite(r.total) && r.gradNorm > 0));
  const mean = (rs: StepRecord[]) => rs.reduce((s, r) => s + r.total, 0) / rs.length;
  const first = mean(records.slice(0, 3));
  const last = mean(records.slice(-3));
  t.log(`loss ${first.toFixed(3)} → ${last.toFixed(3)}`);
  t.true(last < 0.9 * first, `loss ${first} → ${last}`);
  trainer.dispose();
  model.dispose();
});

test('train: a RetinaNet loss without a box coder encodes its targets with the model\'s; one given in the loss wins', async (t) => {
  const loader = loaderOf(await dataset());
  const it = loader.epoch(0)[Symbol.asyncIterator]();
  const batch = (await it.next()).value;
  const std1: [number, number, number, number] = [1, 1, 1, 1];
  // the first step's regression loss (same weights and batch) under each combination
  const firstReg = async (modelStd: [number, number, number, number] | undefined, lossStd: [number, number, number, number] | undefined) => {
    const model = Model.retinanet({ depth: 18, numClasses: 2, featureSize: 32, seed: 1, ...(modelStd ? { boxCoder: { std: modelStd } } : {}) });
    const trainer = new Trainer(model, { loss: lossStd ? { focal: { boxCoder: { std: lossStd } } } : {} });
    const r = await trainer.step(batch, 0.01);
    trainer.dispose();
    model.dispose();
    return r.reg;
  };
  const inherited = await firstReg(std1, undefined);
  const explicit = await firstReg(std1, std1);
  const defaults = await firstReg(undefined, undefined);
  const overridden = await firstReg(std1, [0.1, 0.1, 0.2, 0.2]);
  t.is(inherited, explicit);
  t.is(overridden, defaults);
  t.not(inherited, defaults, 'std 1 and the default 0.1/0.2 give other targets');
  disposeBatch(batch);
  await it.return?.(undefined);
});

test('train: a batch with a NaN is skipped, reported, and leaves the weights unchanged; too many in a row stop training', async (t) => {
  const model = small();
  const trainer = new Trainer(model, { maxConsecutiveSkips: 2 });
  const loader = loaderOf(await dataset());
  const it = loader.epoch(0)[Symbol.asyncIterator]();
  const batch = (await it.next()).value;
  const shape = batch.images.shape;
  const poisoned = new Float32Array(batch.images.toArray() as Float32Array);
  poisoned[5] = NaN;
  const bad = { ...batch, images: Tensor.from(poisoned, shape) };
  const annData = new Float32Array(batch.annotations.toArray() as Float32Array);
  const annShape = batch.annotations.shape;
  const before = model.stateDict()['layer1.0.conv1.weight'].toArray();
  const r = await trainer.step(bad, 0.01);
  t.true(r.skipped);
  t.regex(r.reason!, /non-finite/);
  t.deepEqual(model.stateDict()['layer1.0.conv1.weight'].toArray(), before);
  const ok = await trainer.step(batch, 0.01);
  t.false(ok.skipped);
  t.notDeepEqual(model.stateDict()['layer1.0.conv1.weight'].toArray(), before);
  disposeBatch(batch);
  await it.return?.(undefined);
  // a dataset whose every batch is poisoned: the run stops with the batch ids
  const nanLoader = { length: 3, epoch: async function* () {
    for (let k = 0; k < 3; k++) yield { ...bad, images: Tensor.from(poisoned, shape), annotations: Tensor.from(annData, annShape) };
  } } as unknown as DataLoader;
  await t.throwsAsync(trainer.fit(nanLoader, { epochs: 1 }), { message: /2 consecutive steps were skipped.*images/ });
  trainer.dispose();
  model.dispose();
});

const stateOf = (m: Model) => Object.fromEntries(Object.entries(m.stateDict()).map(([k, v]) => [k, v.toArray()]));

/** A copy of `batch` with one pixel NaN (its step's losses are not finite). */
function poison(batch: Batch): Batch {
  const pixels = new Float32Array(batch.images.toArray() as Float32Array);
  pixels[11] = NaN;
  return { ...batch, images: Tensor.from(pixels, batch.images.shape, { device: batch.images.device }), annotations: Tensor.from(batch.annotations.toArray() as Float32Array, batch.annotations.shape, { device: batch.annotations.device }) };
}

/** Steps over a fixed sequence (a poisoned first step, a poisoned later one), each at its own rate. */
async function stepSequence(trainer: Trainer, clean: Batch[], poisoned: Batch[]): Promise<StepRecord[]> {
  const sequence = [poisoned[0], clean[0], clean[1], clean[2], poisoned[1], clean[1], clean[0], clean[2]];
  const records: StepRecord[] = [];
  for (const [i, b] of sequence.entries()) records.push(await trainer.step(b, 0.01 * (1 + (i % 3))));
  return records;
}

// serial: ONESTAGE_TEST_QUEUED_UPDATE is read when a session is made, and the concurrent tests start after this one
test.serial('train: the update queued on the device before the losses are read gives the read-first run\'s records and weights bitwise, skipped steps (the first one too) included (cpu)', async (t) => {
  const loader = loaderOf(await dataset());
  const clean: Batch[] = [];
  for await (const b of loader.epoch(0)) clean.push(b);
  const poisoned = clean.map(poison);
  const optimizers = [{ momentum: 0.9, weightDecay: 1e-4 }, { momentum: 0.9, weightDecay: 1e-4, nesterov: true }, { momentum: 0, weightDecay: 0 }];
  for (const optimizer of optimizers) {
    const runs: Array<{ records: StepRecord[]; state: Record<string, ArrayLike<number | bigint>> }> = [];
    for (const queued of [false, true]) {
      if (queued) process.env.ONESTAGE_TEST_QUEUED_UPDATE = '1';
      try {
        const model = small();
        const trainer = new Trainer(model, { optimizer: { ...optimizer, lr: 0.01 } });
        const records = await stepSequence(trainer, clean, poisoned);
        t.true(records.every((r) => r.updateQueued === queued), `updateQueued ${queued}`);
        runs.push({ records, state: stateOf(model) });
        trainer.dispose();
        model.dispose();
      } finally {
        delete process.env.ONESTAGE_TEST_QUEUED_UPDATE;
      }
    }
    const view = (rs: StepRecord[]) => rs.map((r) => [r.cls, r.reg, r.total, r.gradNorm, r.skipped, r.reason]);
    t.deepEqual(view(runs[1].records), view(runs[0].records), JSON.stringify(optimizer));
    t.deepEqual(runs[1].records.map((r) => r.skipped), [true, false, false, false, true, false, false, false]);
    t.deepEqual(runs[1].state, runs[0].state, `weights bitwise (${JSON.stringify(optimizer)})`);
  }
  [...clean, ...poisoned].forEach(disposeBatch);
});

// serial: ONESTAGE_TEST_WEIGHT_COPIES is read at every forward, and the concurrent tests start after the serial ones
test.serial('train: convolution weights copied for the forward (bf16 under amp on CUDA) train as the weights themselves — float32 copies give the plain records, weights and detections bitwise (frozen layers, two views, NanoDet-Plus); float64 copies are what the convolutions read, and their error leaves the weights in place (cpu)', async (t) => {
  const ds = await dataset();
  const batches = async (views: boolean) => {
    const loader = new DataLoader(ds, { batchSize: 4, seed: 3, views: views ? 2 : 1, transform: { minSide: 64, maxSide: 64 } });
    const out: Batch[] = [];
    for await (const b of loader.epoch(0)) out.push(b);
    return out;
  };
  const cases = [
    { name: 'retinanet, layers frozen, two views', make: () => Model.retinanet({ depth: 18, numClasses: 2, featureSize: 32, seed: 1, trainableBackboneLayers: 2 }), views: true,
      options: { optimizer: { lr: 0.01 }, loss: { contrastive: { weight: 0.5, projection: { hidden: 16, out: 8 } } } } },
    { name: 'nanodet-plus', make: () => nanodet(), views: false, options: { optimizer: { lr: 0.01 } } },
  ];
  for (const c of cases) {
    const bs = await batches(c.views);
    const run = async (copies: string | undefined) => {
      if (copies) process.env.ONESTAGE_TEST_WEIGHT_COPIES = copies;
      try {
        const model = c.make();
        const trainer = new Trainer(model, c.options);
        const records: StepRecord[] = [];
        for (const b of bs) records.push(await trainer.step(b, 0.01));
        const detections = await model.detect(bs[0].images, { scoreThreshold: 0 });
        trainer.dispose();
        const state = stateOf(model);
        model.dispose();
        return { records: records.map((r) => [r.total, r.gradNorm, r.skipped]), state, detections };
      } finally {
        delete process.env.ONESTAGE_TEST_WEIGHT_COPIES;
      }
    };
    const plain = await run(undefined);
    const copied = await run('float32');
    t.true(plain.records.every(([, , skipped]) => !skipped), c.name);
    t.deepEqual(copied.records, plain.records, `${c.name}: records`);
    t.deepEqual(copied.state, plain.state, `${c.name}: weights`);
    t.deepEqual(copied.detections, plain.detections, `${c.name}: detections`);
    // float64 copies meet float32 activations: the convolutions read the copies
    const model = c.make();
    const trainer = new Trainer(model, c.options);
    const before = stateOf(model);
    process.env.ONESTAGE_TEST_WEIGHT_COPIES = 'float64';
    try {
      await t.throwsAsync(trainer.step(bs[0], 0.01), { message: /double/i }, c.name);
    } finally {
      delete process.env.ONESTAGE_TEST_WEIGHT_COPIES;
    }
    t.deepEqual(stateOf(model), before, `${c.name}: the failed step changed no weight`);
    // the float32 weights are back in the convolutions: the next step is the plain run's first
    const r = await trainer.step(bs[0], 0.01);
    t.deepEqual([r.total, r.gradNorm, r.skipped], plain.records[0], `${c.name}: the weights restored after the error`);
    trainer.dispose();
    model.dispose();
    bs.forEach(disposeBatch);
  }
});

// serial: ONESTAGE_TEST_FROZEN_BN and ONESTAGE_SHORTCUT_GRADIENTS are read at every forward
test.serial('train: the fused frozen-BatchNorm path — a block output\'s two gradients summed in its own backward, the ReLU\'s mask recomputed from x — trains as LibTorch\'s BatchNorm; run with ATen replicas of its CUDA kernels (ResNet-18 two views, ResNet-50 layers frozen; cpu)', async (t) => {
  const ds = await dataset();
  const cases = [
    { name: 'resnet-18, two views', make: () => Model.retinanet({ depth: 18, numClasses: 2, featureSize: 32, seed: 1 }), views: true },
    { name: 'resnet-50, layers frozen', make: () => Model.retinanet({ depth: 50, numClasses: 2, featureSize: 32, seed: 2, trainableBackboneLayers: 3 }), views: false },
  ];
  const keys = ['ONESTAGE_TEST_FROZEN_BN', 'ONESTAGE_SHORTCUT_GRADIENTS'] as const;
  for (const c of cases) {
    const loader = new DataLoader(ds, { batchSize: 4, seed: 3, views: c.views ? 2 : 1, transform: { minSide: 64, maxSide: 64 } });
    const bs: Batch[] = [];
    for await (const b of loader.epoch(0)) bs.push(b);
    const options = { optimizer: { lr: 0.01 }, ...(c.views ? { loss: { contrastive: { weight: 0.5, projection: { hidden: 16, out: 8 } } } } : {}) };
    const run = async (env: Partial<Record<(typeof keys)[number], string>>) => {
      Object.assign(process.env, env);
      try {
        const model = c.make();
        const trainer = new Trainer(model, options);
        const records: number[] = [];
        for (const b of bs) {
          const r = await trainer.step(b, 0.01);
          t.false(r.skipped, c.name);
          records.push(r.total, r.gradNorm);
        }
        const [d] = await model.detect(bs[0].images, { scoreThreshold: 0 });
        trainer.dispose();
        const state = model.stateDict();
        // every entry of the state dict, in its order, as one vector
        const flat = Object.values(state).flatMap((v) => Array.from(v.toArray() as ArrayLike<number | bigint>, Number));
        const out = { records, scores: Array.from(d.scores).slice(0, 50), state: flat };
        for (const v of Object.values(state)) v.dispose();
        model.dispose();
        return out;
      } finally {
        for (const k of keys) delete process.env[k];
      }
    };
    const plain = await run({});
    const fused = await run({ ONESTAGE_TEST_FROZEN_BN: 'emulate' });
    const summed = await run({ ONESTAGE_TEST_FROZEN_BN: 'emulate', ONESTAGE_SHORTCUT_GRADIENTS: 'autograd' });
    const wide = await run({ ONESTAGE_TEST_FROZEN_BN: 'emulate:float64' });
    const near = (a: number[], b: number[], rtol: number, what: string) => assertClose(t, { shape: [a.length], data: a }, { shape: [b.length], data: b }, { atol: 1e-6, rtol, name: `${c.name}: ${what}` });
    // float64 arithmetic moves the last bits: the hook is at work, and the weights stay within float32's rounding of LibTorch's
    t.notDeepEqual(wide.state, plain.state, `${c.name}: the replicas ran`);
    for (const [name, other, rtol] of [['replicas', fused, 1e-5], ['float64 replicas', wide, 1e-5], ['one gradient summed by autograd', summed, 1e-5]] as const) {
      near(other.records, plain.records, rtol, `${name}: losses and gradient norms`);
      near(other.scores, plain.scores, 1e-4, `${name}: detection scores`);
      near(other.state, plain.state, 1e-4, `${name}: weights`);
    }
    bs.forEach(disposeBatch);
  }
  process.env.ONESTAGE_TEST_FROZEN_BN = 'emulate:int8';
  try {
    const model = small();
    const images = Tensor.from(new Float32Array(3 * 64 * 64), [1, 3, 64, 64]);
    await t.throwsAsync(model.detect(images), { message: /ONESTAGE_TEST_FROZEN_BN must be emulate or emulate:float64, not 'emulate:int8'/ });
    images.dispose();
    model.dispose();
  } finally {
    delete process.env.ONESTAGE_TEST_FROZEN_BN;
  }
});

if (buildInfo().cudaAvailable)
  test('train: the queued update on CUDA (fused SGD, graphs replayed) skips poisoned steps on the device and follows the read-first update', async (t) => {
    const loader = loaderOf(await dataset(), 'cuda');
    const clean: Batch[] = [];
    for await (const b of loader.epoch(0)) clean.push(b);
    const poisoned = clean.map(poison);
    const queuedHere = !/^(1\.|2\.[0-3]\.)/.test(buildInfo().torchVersion);
    const runs: Array<{ records: StepRecord[]; model: Model }> = [];
    for (const implementation of ['foreach', 'auto'] as const) {
      const model = small('cuda');
      const trainer = new Trainer(model, { optimizer: { lr: 0.01, implementation } });
      // twice through: the eager steps, the capture, then replays (a poisoned one among them)
      const records = [...(await stepSequence(trainer, clean, poisoned)), ...(await stepSequence(trainer, clean, poisoned))];
      t.true(records.every((r) => r.updateQueued === (implementation === 'auto' && queuedHere)), implementation);
      runs.push({ records, model });
      trainer.dispose();
    }
    const [readFirst, queued] = runs;
    t.deepEqual(queued.records.map((r) => r.skipped), readFirst.records.map((r) => r.skipped));
    t.true(queued.records.some((r) => r.graph === 'replayed' && r.skipped), 'a poisoned step replayed');
    const values = (v: ArrayLike<number | bigint>) => ({ shape: [v.length], data: v });
    const finite = (rs: StepRecord[]) => values(rs.filter((r) => !r.skipped).map((r) => r.total));
    assertClose(t, finite(queued.records), finite(readFirst.records), { rtol: 1e-3, atol: 1e-4, name: 'losses' });
    const [a, b] = [stateOf(queued.model), stateOf(readFirst.model)];
    for (const k of Object.keys(b)) assertClose(t, values(a[k]), values(b[k]), { rtol: 1e-3, atol: 1e-4, name: k });
    // a poisoned step alone leaves every weight as it was
    const before = stateOf(queued.model);
    const again = new Trainer(queued.model, { optimizer: { lr: 0.01 } });
    const r = await again.step(poisoned[0], 0.01);
    t.true(r.skipped && r.updateQueued === queuedHere);
    t.deepEqual(stateOf(queued.model), before);
    again.dispose();
    runs.forEach((x) => x.model.dispose());
    [...clean, ...poisoned].forEach(disposeBatch);
  });

test('train: a run killed mid-epoch and resumed ends with the weights, EMA weights and GHM state of an uninterrupted run (bitwise)', async (t) => {
  const ds = await dataset();
  const opts = {
    optimizer: { lr: 0.01 },
    schedule: { warmupSteps: 4, type: 'cosine' as const },
    loss: { classification: 'ghmc' as const, regression: 'ghmr' as const, ghmc: { momentum: 0.75 }, ghmr: { momentum: 0.7 } },
    ema: { decay: 0.9, tau: 3 },
  };
  const straight = small();
  const straightTrainer = new Trainer(straight, opts);
  await straightTrainer.fit(loaderOf(ds), { epochs: 3 });
  const dir = tempDir();
  const first = small();
  const killed = new Trainer(first, opts);
  killed.on('step', (r: StepRecord) => {
    if (r.step === 4) throw new Error('killed');
  });
  await t.throwsAsync(killed.fit(loaderOf(ds), { epochs: 3, runDir: dir, checkpointEvery: 2 }), { message: 'killed' });
  t.regex(JSON.parse(fs.readFileSync(path.join(dir, 'latest.json'), 'utf8')).checkpoint, /e1b1$/, 'the last checkpoint is mid-epoch');
  // a fresh process would build a fresh model: different initial weights, overwritten by the checkpoint
  const resumed = Model.retinanet({ depth: 18, numClasses: 2, featureSize: 32, seed: 99 });
  const trainer = new Trainer(resumed, opts);
  const result = await trainer.fit(loaderOf(ds), { epochs: 3, runDir: dir, resume: true });
  t.is(result.steps, 5);
  t.deepEqual(stateOf(resumed), stateOf(straight), 'training weights');
  t.deepEqual(await trainer.withEmaWeights(async () => stateOf(resumed)), await straightTrainer.withEmaWeights(async () => stateOf(straight)), 'EMA weights');
  t.notDeepEqual(await trainer.withEmaWeights(async () => stateOf(resumed)), stateOf(resumed), 'EMA weights differ from the training weights');
  const steps = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).step);
  t.deepEqual(steps, [0, 1, 2, 3, 4, 5, 6, 7, 8], 'one record per step, none repeated');
  t.true(fs.existsSync(path.join(dir, 'model.safetensors')));
  t.is(fs.readdirSync(dir).filter((d) => d.startsWith('ckpt-')).length, 2, 'two checkpoints kept');
  await t.throwsAsync(new Trainer(small()).fit(loaderOf(ds), { epochs: 1, runDir: tempDir(), resume: true }), { message: /no readable checkpoint/ });
  await t.throwsAsync(new Trainer(small(), { ...opts, optimizer: { lr: 0.02 } }).fit(loaderOf(ds), { epochs: 3, runDir: dir, resume: true }), { message: /other trainer options: optimizer\.lr \(0\.01 in the checkpoint, 0\.02 now\)/ });
  const latest = path.join(dir, JSON.parse(fs.readFileSync(path.join(dir, 'latest.json'), 'utf8')).checkpoint);
  const state = fs.readFileSync(path.join(latest, 'trainer.pt'));
  fs.writeFileSync(path.join(latest, 'trainer.pt'), state.subarray(0, state.length >> 1));
  await t.throwsAsync(new Trainer(small(), opts).fit(loaderOf(ds), { epochs: 3, runDir: dir, resume: true }), { message: /trainer\.pt: not a training state/ });
  const weights = fs.readFileSync(path.join(latest, 'weights.safetensors'));
  fs.writeFileSync(path.join(latest, 'weights.safetensors'), weights.subarray(0, weights.length - 100));
  await t.throwsAsync(new Trainer(small(), opts).fit(loaderOf(ds), { epochs: 3, runDir: dir, resume: true }), { message: /weights\.safetensors/ });
});

if (buildInfo().cudaAvailable)
  test('train: pipelined steps on CUDA (replayed graphs, the model\'s device thread) give the sequential run\'s records and weights', async (t) => {
    const ds = await dataset();
    const opts = { optimizer: { lr: 0.01 }, schedule: { warmupSteps: 3, type: 'cosine' as const } };
    const runs: Array<{ model: Model; records: StepRecord[] }> = [];
    for (const pipeline of [false, true]) {
      const model = small('cuda');
      const trainer = new Trainer(model, opts);
      const records: StepRecord[] = [];
      trainer.on('step', (r: StepRecord) => records.push(r));
      await trainer.fit(loaderOf(ds, 'cuda'), { epochs: 3, pipeline });
      trainer.dispose();
      runs.push({ model, records });
    }
    t.deepEqual(runs[1].records.map((r) => [r.step, r.lr, r.ids]), runs[0].records.map((r) => [r.step, r.lr, r.ids]));
    t.true(runs[1].records.some((r) => r.graph === 'replayed'), 'graphs replayed');
    // cuDNN may choose other kernels in another run: equal within their rounding
    const values = (v: ArrayLike<number | bigint>) => ({ shape: [v.length], data: v });
    assertClose(t, values(runs[1].records.map((r) => r.total)), values(runs[0].records.map((r) => r.total)), { rtol: 1e-3, atol: 1e-4, name: 'losses' });
    const [a, b] = [stateOf(runs[1].model), stateOf(runs[0].model)];
    for (const k of Object.keys(b)) assertClose(t, values(a[k]), values(b[k]), { rtol: 1e-3, atol: 1e-4, name: k });
    runs.forEach((r) => r.model.dispose());
  });

// serial: it ends counting the process's live native tensors, which tests running beside it would change
test.serial('train: pipelined steps (the next asked for before the last has finished) give the sequential run\'s records, weights and checkpoints; steps asked for at once run in order; a stop waits for the step in flight', async (t) => {
  const ds = await dataset();
  const opts = { optimizer: { lr: 0.01 }, schedule: { warmupSteps: 3, type: 'cosine' as const } };
  const runs: Array<{ model: Model; dir: string }> = [];
  for (const pipeline of [false, true]) {
    const model = small();
    const dir = tempDir();
    await new Trainer(model, opts).fit(loaderOf(ds), { epochs: 2, runDir: dir, checkpointEvery: 2, keep: 10, pipeline, plots: false });
    runs.push({ model, dir });
  }
  const records = (dir: string) => fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => {
    const { seconds, imagesPerSecond, ...r } = JSON.parse(l);
    void seconds, imagesPerSecond;
    return r;
  });
  t.deepEqual(records(runs[1].dir), records(runs[0].dir), 'the same steps, losses, learning rates and images');
  t.deepEqual(stateOf(runs[1].model), stateOf(runs[0].model), 'the same weights (bitwise)');
  const checkpoints = (dir: string) => fs.readdirSync(dir).filter((d) => d.startsWith('ckpt-')).sort();
  t.deepEqual(checkpoints(runs[1].dir), checkpoints(runs[0].dir));
  for (const c of checkpoints(runs[0].dir))
    t.true(fs.readFileSync(path.join(runs[1].dir, c, 'weights.safetensors')).equals(fs.readFileSync(path.join(runs[0].dir, c, 'weights.safetensors'))), `${c}: a checkpoint holds its own step's weights`);

  // five steps asked for at once (other learning rates, other batches) run in the order asked
  const loader = loaderOf(ds);
  const batches: Batch[] = [];
  for await (const b of loader.epoch(0)) batches.push(b);
  const lrs = [0.01, 0.02, 0.005, 0.03, 0.01];
  const one = small();
  const oneByOne = new Trainer(one, { optimizer: { lr: 0.01 } });
  const sequential: StepRecord[] = [];
  for (const [i, lr] of lrs.entries()) sequential.push(await oneByOne.step(batches[i % batches.length], lr));
  const all = small();
  const together = new Trainer(all, { optimizer: { lr: 0.01 } });
  const started = process.hrtime.bigint();
  const concurrent = await Promise.all(lrs.map((lr, i) => together.step(batches[i % batches.length], lr)));
  const wall = Number(process.hrtime.bigint() - started) / 1e9;
  t.deepEqual(concurrent.map((r) => [r.lr, r.total]), sequential.map((r) => [r.lr, r.total]));
  // a step's time counts from the end of the one before it when it was asked for meanwhile: the steps' times add up to the wall time, not more
  const seconds = concurrent.reduce((sum, r) => sum + r.seconds, 0);
  t.true(seconds > 0 && seconds <= wall, `steps ${seconds.toFixed(3)} s of ${wall.toFixed(3)} s`);
  t.deepEqual(stateOf(all), stateOf(one));
  batches.forEach(disposeBatch);

  // every batch poisoned, pipelined: the stop comes after the step in flight has ended; nothing is left
  const base = liveTensors();
  const it = loaderOf(ds).epoch(0)[Symbol.asyncIterator]();
  const batch = (await it.next()).value as Batch;
  const poisoned = new Float32Array(batch.images.toArray() as Float32Array);
  poisoned[7] = NaN;
  const nanLoader = { length: 4, epoch: async function* () {
    for (let k = 0; k < 4; k++) yield { ...batch, images: Tensor.from(poisoned, batch.images.shape), annotations: Tensor.from(batch.annotations.toArray() as Float32Array, batch.annotations.shape) };
  } } as unknown as DataLoader;
  const stopped = new Trainer(small(), { maxConsecutiveSkips: 2 });
  const seen: number[] = [];
  stopped.on('step', (r: StepRecord) => seen.push(r.step));
  await t.throwsAsync(stopped.fit(nanLoader, { epochs: 1, pipeline: true }), { message: /2 consecutive steps were skipped/ });
  t.deepEqual(seen, [0, 1, 2], 'the step asked for before the stop ran');
  await t.throwsAsync(stopped.fit(nanLoader, { epochs: 1, pipeline: 'yes' as unknown as boolean }), { instanceOf: TypeError, message: /options\.pipeline/ });
  disposeBatch(batch);
  await it.return?.(undefined);
  stopped.dispose();
  t.true(liveTensors() <= base + 2, `native tensors alive: ${liveTensors()} (${base} before)`);
});

test('train: validation every epoch writes epochs.jsonl, loss and AP plots (SVG and PNG), the best and final weights; AP rises above an untrained model', async (t) => {
  const dir = tempDir();
  await makeShapes({ out: dir, train: 16, val: 0, size: 64, classes: 1, seed: 5, maxObjects: 2 });
  const ds = await CocoDataset.open(path.join(dir, 'instances_train.json'));
  const model = Model.retinanet({ depth: 18, numClasses: 1, featureSize: 32, seed: 2, freezeBn: false, anchors: { sizes: [16, 32, 64, 128, 256] } });
  const trainer = new Trainer(model, { optimizer: { type: 'adamw', lr: 2e-3, weightDecay: 0 }, schedule: { warmupSteps: 8 } });
  const val = new DataLoader(ds, { batchSize: 8, shuffle: false, augment: false, transform: { minSide: 64, maxSide: 64 } });
  const before = await trainer.evaluate(val);
  const run = path.join(dir, 'run');
  // overfitting 16 images (no augmentation) is quick and deterministic
  const result = await trainer.fit(new DataLoader(ds, { batchSize: 8, seed: 1, augment: false, transform: { minSide: 64, maxSide: 64 } }), { epochs: 30, runDir: run, valLoader: val, evalEvery: 10, evaluate: { voc: true } });
  const epochs = fs.readFileSync(path.join(run, 'epochs.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  t.is(epochs.length, 30);
  t.deepEqual(epochs.filter((e) => e.val).map((e) => e.epoch), [9, 19, 29]);
  const after = result.evaluation!;
  t.log(`AP50 untrained ${before.stats[1].toFixed(3)} → trained ${after.stats[1].toFixed(3)} (VOC ${after.voc!.map.toFixed(3)})`);
  t.true(before.stats[1] < 0.05);
  t.true(after.stats[1] > 0.2, `AP50 ${after.stats[1]}`);
  for (const f of ['loss.svg', 'loss.png', 'val.svg', 'val.png', 'model.safetensors', 'best.safetensors']) t.true(fs.existsSync(path.join(run, f)), f);
  t.regex(fs.readFileSync(path.join(run, 'val.svg'), 'utf8'), /^<svg/);
  const png = await sharp(path.join(run, 'loss.png')).metadata();
  t.is(png.format, 'png');
  t.true(png.width! > 500);
  trainer.dispose();
  model.dispose();
});

(buildInfo().cudaAvailable ? test : test.skip)('train: bf16 autocast on CUDA gives the fp32 loss to bf16 precision, learns, and keeps EMA weights on the GPU', async (t) => {
  const ds = await dataset();
  const loader = loaderOf(ds, 'cuda');
  const it = loader.epoch(0)[Symbol.asyncIterator]();
  const batch = (await it.next()).value;
  const fp32 = small('cuda');
  const bf16 = small('cuda');
  const a = await new Trainer(fp32).step(batch, 1e-9);
  const b = await new Trainer(bf16, { amp: true }).step(batch, 1e-9);
  t.log(`first-step loss fp32 ${a.total.toFixed(5)} bf16 ${b.total.toFixed(5)}`);
  t.true(Math.abs(a.total - b.total) < 0.05 * Math.abs(a.total));
  disposeBatch(batch);
  await it.return?.(undefined);
  const model = small('cuda');
  const trainer = new Trainer(model, { amp: true, ema: { decay: 0.9, tau: 2 }, optimizer: { lr: 0.01 } });
  const records: StepRecord[] = [];
  trainer.on('step', (r: StepRecord) => records.push(r));
  await trainer.fit(loaderOf(ds, 'cuda'), { epochs: 6 });
  t.true(records.every((r) => !r.skipped));
  const mean = (rs: StepRecord[]) => rs.reduce((s, r) => s + r.total, 0) / rs.length;
  t.true(mean(records.slice(-3)) < 0.9 * mean(records.slice(0, 3)));
  const ema = await trainer.withEmaWeights(async () => stateOf(model));
  t.notDeepEqual(ema['layer1.0.conv1.weight'], stateOf(model)['layer1.0.conv1.weight']);
  for (const m of [fp32, bf16, model]) m.dispose();
});

test('train: replicas split a batch over threads; with frozen BatchNorm the step equals the single-model step', async (t) => {
  const ds = await dataset();
  const it = loaderOf(ds).epoch(0)[Symbol.asyncIterator]();
  const batch = (await it.next()).value;
  const one = small(); // freezeBn (the default): no per-chunk statistics
  const two = small();
  const ra = await new Trainer(one, { optimizer: { lr: 0.05 } }).step(batch, 0.05);
  const rb = await new Trainer(two, { optimizer: { lr: 0.05 }, replicas: 2 }).step(batch, 0.05);
  t.true(Math.abs(ra.total - rb.total) < 1e-5 * ra.total, `${ra.total} vs ${rb.total}`);
  t.true(Math.abs(ra.gradNorm - rb.gradNorm) < 1e-5 * ra.gradNorm, `${ra.gradNorm} vs ${rb.gradNorm}`);
  const a = one.stateDict();
  const b = two.stateDict();
  for (const k of ['conv1.weight', 'layer4.1.conv2.weight', 'fpn.P3_1.weight', 'classificationModel.output.bias', 'regressionModel.output.weight'])
    assertClose(t, b[k], a[k], { atol: 1e-6, rtol: 1e-5 });
  t.notDeepEqual(b['classificationModel.output.bias'].toArray(), small().stateDict()['classificationModel.output.bias'].toArray(), 'the step changed the weights');
  disposeBatch(batch);
  await it.return?.(undefined);
  t.throws(() => new Trainer(small(), { replicas: 2, loss: { classification: 'ghmc' } }), { instanceOf: RangeError, message: /replicas > 1 needs losses without batch statistics/ });
  t.is(resolveReplicas('auto', 'cpu', { classification: 'ghmc' }), 1);
  t.is(resolveReplicas('auto', 'cuda:0'), 1);
  t.is(resolveReplicas('auto', 'cpu'), os.availableParallelism());
  t.is(resolveReplicas('auto', 'cpu', {}, 'retinanet', 2 * os.availableParallelism()), 1); // data-parallel processes share the cores
});

test('train: joint focal + contrastive training reports the contrastive term, needs the second view, and resumes bitwise with the projection head', async (t) => {
  const ds = await dataset();
  const views = (device: Device = 'cpu') => new DataLoader(ds, { batchSize: 4, seed: 3, device, views: 2, transform: { minSide: 64, maxSide: 64 } });
  const opts = { optimizer: { lr: 0.01 }, loss: { contrastive: { weight: 0.5, temperature: 0.5, projection: { hidden: 16, out: 8 } } } };
  const straight = small();
  const records: StepRecord[] = [];
  const a = new Trainer(straight, opts);
  a.on('step', (r: StepRecord) => records.push(r));
  await a.fit(views(), { epochs: 2 });
  t.true(records.every((r) => !r.skipped && r.contrastive > 0 && Math.abs(r.total - (r.cls + r.reg + r.contrastive)) < 1e-9));
  t.log(`contrastive term ${records[0].contrastive.toFixed(4)} → ${records[records.length - 1].contrastive.toFixed(4)}`);
  const dir = tempDir();
  await new Trainer(small(), opts).fit(views(), { epochs: 1, runDir: dir });
  const resumed = small();
  await new Trainer(resumed, opts).fit(views(), { epochs: 2, runDir: dir, resume: true });
  t.deepEqual(stateOf(resumed), stateOf(straight));
  await t.throwsAsync(new Trainer(small(), opts).fit(loaderOf(ds), { epochs: 1 }), { message: /needs the second view.*views: 2/ });
  t.throws(() => new Trainer(small(), { ...opts, replicas: 2 }), { message: /replicas > 1 cannot run the contrastive loss/ });
  t.throws(() => new Trainer(small(), { loss: { contrastive: { weight: 1, negatives: 'nearest' as never } } }), { instanceOf: RangeError, message: /options\.loss\.contrastive\.negatives/ });
  t.is(resolveReplicas('auto', 'cpu', opts.loss), 1);
});

test('train: amp needs CUDA; bad options are named', (t) => {
  const model = small();
  if (!buildInfo().cudaAvailable || model.device === 'cpu') t.throws(() => new Trainer(model, { amp: true }), { message: /amp .*CUDA/ });
  t.throws(() => new Trainer(model, { ema: { decay: 1.5 } }), { instanceOf: RangeError, message: /options\.ema\.decay/ });
  t.throws(() => new Trainer(model, { schedule: { type: 'plateau', monitor: 'mAP' as never } }), { instanceOf: RangeError, message: /options\.schedule\.monitor/ });
  model.dispose();
});

test('schedule: reduce-on-plateau multiplies the rate after `patience` evaluations without improvement', (t) => {
  const model = small();
  const tr = new Trainer(model, { optimizer: { lr: 0.1 }, schedule: { type: 'plateau', patience: 1, factor: 0.5, minLr: 0.03 } });
  t.is(tr.lrAt(0, 10, 5), 0.1);
  tr.observe(0.3, 'AP50');
  tr.observe(0.4, 'AP50'); // better
  tr.observe(0.4, 'AP50'); // 1 bad: within patience
  t.is(tr.lrAt(0, 10, 5), 0.1);
  tr.observe(0.39, 'AP50'); // 2 bad: reduce
  t.is(tr.lrAt(0, 10, 5), 0.05);
  tr.observe(0.1, 'AP50');
  tr.observe(0.1, 'AP50');
  t.is(tr.lrAt(0, 10, 5), 0.03, 'never below minLr');
  const loss = new Trainer(model, { optimizer: { lr: 0.1 }, schedule: { type: 'plateau', patience: 0 } });
  loss.observe(1.0, 'loss');
  loss.observe(0.9, 'loss'); // lower loss is better
  t.is(loss.lrAt(0, 10, 5), 0.1);
  loss.observe(0.95, 'loss');
  t.true(Math.abs(loss.lrAt(0, 10, 5) - 0.01) < 1e-12);
  tr.dispose();
  loss.dispose();
  model.dispose();
});

test('schedule: linear warm-up, then constant, step and cosine rates', (t) => {
  const model = small();
  const warm = new Trainer(model, { optimizer: { lr: 0.1 }, schedule: { warmupSteps: 10, warmupFactor: 0.1 } });
  t.true(Math.abs(warm.lrAt(0, 10, 5) - 0.01) < 1e-12);
  t.true(Math.abs(warm.lrAt(5, 10, 5) - 0.055) < 1e-12);
  t.is(warm.lrAt(30, 10, 5), 0.1);
  const step = new Trainer(model, { optimizer: { lr: 0.1 }, schedule: { type: 'step', milestones: [2, 4], gamma: 0.1 } });
  t.is(step.lrAt(19, 10, 5), 0.1);
  t.true(Math.abs(step.lrAt(20, 10, 5) - 0.01) < 1e-12);
  t.true(Math.abs(step.lrAt(45, 10, 5) - 0.001) < 1e-12);
  const cos = new Trainer(model, { optimizer: { lr: 0.1 }, schedule: { type: 'cosine' } });
  t.is(cos.lrAt(0, 10, 5), 0.1);
  t.true(Math.abs(cos.lrAt(25, 10, 5) - 0.05) < 1e-12);
  t.throws(() => new Trainer(model, { optimizer: { type: 'rmsprop' as never } }), { instanceOf: RangeError, message: /options\.optimizer\.type/ });
  for (const tr of [warm, step, cos]) tr.dispose();
  model.dispose();
});

const nanodet = (seed = 2) => Model.nanodetPlus({ depth: 18, numClasses: 2, featureSize: 16, head: { channels: 16 }, aux: { channels: 32 }, seed });

test('train: NanoDet-Plus killed mid-epoch past detachEpoch and resumed equals an uninterrupted run (bitwise), with its loss terms recorded', async (t) => {
  const ds = await dataset();
  const opts = { optimizer: { type: 'adamw' as const, lr: 1e-3 }, loss: { detachEpoch: 1 }, ema: { decay: 0.9, tau: 3 } };
  const straight = nanodet();
  const straightTrainer = new Trainer(straight, opts);
  const straightFit = await straightTrainer.fit(loaderOf(ds), { epochs: 3 });
  t.deepEqual(Object.keys(straightFit.history[0].components).sort(), ['auxBbox', 'auxDfl', 'auxQfl', 'bbox', 'dfl', 'qfl']);
  const dir = tempDir();
  const killed = new Trainer(nanodet(), opts);
  killed.on('step', (r: StepRecord) => {
    if (r.step === 5) throw new Error('killed');
  });
  await t.throwsAsync(killed.fit(loaderOf(ds), { epochs: 3, runDir: dir, checkpointEvery: 2 }), { message: 'killed' });
  const resumed = nanodet(77);
  const trainer = new Trainer(resumed, opts);
  await trainer.fit(loaderOf(ds), { epochs: 3, runDir: dir, resume: true });
  t.deepEqual(stateOf(resumed), stateOf(straight), 'training weights');
  t.deepEqual(await trainer.withEmaWeights(async () => stateOf(resumed)), await straightTrainer.withEmaWeights(async () => stateOf(straight)), 'EMA weights');
  const again = await Model.fromWeights(path.join(dir, 'model.safetensors'));
  t.is(again.architecture, 'nanodet-plus');
  t.throws(() => new Trainer(nanodet(), { loss: { classification: 'ghmc' } as never }), { instanceOf: RangeError, message: /classification is not an option of the NanoDet-Plus loss/ });
  t.throws(() => new Trainer(nanodet(), { replicas: 2 }), { message: /replicas > 1 is not available for NanoDet-Plus/ });
});

test('train: NanoDet-Plus with the AGM learns a few shapes images: validation AP rises above an untrained model', async (t) => {
  const dir = tempDir();
  await makeShapes({ out: dir, train: 16, val: 0, size: 64, classes: 1, seed: 5, maxObjects: 2 });
  const ds = await CocoDataset.open(path.join(dir, 'instances_train.json'));
  const model = Model.nanodetPlus({ depth: 18, numClasses: 1, featureSize: 32, head: { channels: 32 }, aux: { channels: 64 }, seed: 2 });
  const trainer = new Trainer(model, { optimizer: { type: 'adamw', lr: 2e-3, weightDecay: 0 }, schedule: { warmupSteps: 8 } });
  const val = new DataLoader(ds, { batchSize: 8, shuffle: false, augment: false, transform: { minSide: 64, maxSide: 64 } });
  const before = await trainer.evaluate(val);
  const result = await trainer.fit(new DataLoader(ds, { batchSize: 8, seed: 1, augment: false, transform: { minSide: 64, maxSide: 64 } }), { epochs: 30, valLoader: val, evalEvery: 30 });
  const after = result.evaluation!;
  t.log(`NanoDet-Plus AP50 untrained ${before.stats[1].toFixed(3)} → trained ${after.stats[1].toFixed(3)}`);
  t.true(before.stats[1] < 0.05);
  t.true(after.stats[1] > 0.2, `AP50 ${after.stats[1]}`);
  trainer.dispose();
  model.dispose();
});
