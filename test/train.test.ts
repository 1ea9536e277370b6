/**
 * Training: the native step (forward, loss, backward, clipping, optimizer) learns on tiny shapes
 * data; non-finite batches are skipped and reported; a resumed run equals an uninterrupted one; the
 * learning-rate schedule.
 */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildInfo, CocoDataset, DataLoader, Device, disposeBatch, makeShapes, Model, StepRecord, Tensor, Trainer } from '../lib';
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

test('train: a run killed after an epoch and resumed ends with the weights of an uninterrupted run (bitwise)', async (t) => {
  const ds = await dataset();
  const opts = { optimizer: { lr: 0.01 }, schedule: { warmupSteps: 4, type: 'cosine' as const } };
  const straight = small();
  await new Trainer(straight, opts).fit(loaderOf(ds), { epochs: 3 });
  const dir = tempDir();
  const first = small();
  await new Trainer(first, opts).fit(loaderOf(ds), { epochs: 1, runDir: dir });
  t.true(fs.existsSync(path.join(dir, 'latest.json')));
  t.is(fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').length, 3);
  // a fresh process would build a fresh model: different initial weights, overwritten by the checkpoint
  const resumed = Model.retinanet({ depth: 18, numClasses: 2, featureSize: 32, seed: 99 });
  const trainer = new Trainer(resumed, opts);
  const result = await trainer.fit(loaderOf(ds), { epochs: 3, runDir: dir, resume: true });
  t.is(result.steps, 6);
  const a = straight.stateDict();
  const b = resumed.stateDict();
  for (const k of Object.keys(a)) t.deepEqual(b[k].toArray(), a[k].toArray(), k);
  t.is(fs.readdirSync(dir).filter((d) => d.startsWith('ckpt-')).length, 2, 'two checkpoints kept');
  await t.throwsAsync(new Trainer(small()).fit(loaderOf(ds), { epochs: 1, runDir: tempDir(), resume: true }), { message: /no readable checkpoint/ });
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
