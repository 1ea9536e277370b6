/**
 * The training step's fast paths against the plain ones: multi-tensor ('foreach') and fused
 * optimizer updates against LibTorch's per-parameter optimizers (weights, EMA weights and the
 * checkpointed optimizer state), channels-last against NCHW, the clipping arithmetic, and on CUDA
 * the loss curve of the whole fast configuration against the plain one over 200 steps of shapes data.
 */
import test, { ExecutionContext } from 'ava';
import * as path from 'node:path';
import { Batch, buildInfo, CocoDataset, DataLoader, Device, disposeBatch, makeShapes, Model, OptimizerOptions, setTf32, StepRecord, synchronize, Tensor, Trainer, TrainerOptions } from '../lib';
import { assertClose } from './helpers/close';
import { tempDir } from './helpers/python';

const devices: Device[] = ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])];

const shapes = new Map<string, Promise<CocoDataset>>();
function dataset(train: number, size: number): Promise<CocoDataset> {
  const key = `${train}/${size}`;
  if (!shapes.has(key))
    shapes.set(key, (async () => {
      const dir = tempDir();
      await makeShapes({ out: dir, train, val: 0, size, classes: 3, seed: 21, maxObjects: 4 });
      return CocoDataset.open(path.join(dir, 'instances_train.json'));
    })());
  return shapes.get(key)!;
}

async function batches(device: Device, n: number): Promise<Batch[]> {
  const loader = new DataLoader(await dataset(8, 64), { batchSize: 4, seed: 5, device, transform: { minSide: 64, maxSide: 64 } });
  const out: Batch[] = [];
  for (let e = 0; out.length < n; e++) for await (const b of loader.epoch(e)) if (out.length < n) out.push(b); else disposeBatch(b);
  return out;
}

const small = (device: Device) => Model.retinanet({ depth: 18, numClasses: 3, featureSize: 32, seed: 4, device });
const weightsOf = (m: Model) => m.stateDict();

const optimizers: Array<[string, OptimizerOptions]> = [
  ['sgd', { type: 'sgd', lr: 0.02, momentum: 0.9, weightDecay: 1e-4 }],
  ['sgd nesterov', { type: 'sgd', lr: 0.02, momentum: 0.9, weightDecay: 1e-4, nesterov: true }],
  ['sgd without momentum', { type: 'sgd', lr: 0.02, momentum: 0, weightDecay: 0 }],
  ['adamw', { type: 'adamw', lr: 1e-4, weightDecay: 0.05 }],
];

for (const device of devices)
  for (const [name, optimizer] of optimizers) {
    // the fused kernels: AdamW with LibTorch ≥ 2, SGD with ≥ 2.4 (with the EMA on here, read first, then updated)
    const fusedHere = device === 'cuda' && (optimizer.type === 'adamw' ? !/^1\./.test(buildInfo().torchVersion) : !/^(1\.|2\.[0-3]\.)/.test(buildInfo().torchVersion));
    const impls: Array<'foreach' | 'fused'> = ['foreach', ...(fusedHere ? ['fused' as const] : [])];
    for (const impl of impls)
      test(`fast path: the '${impl}' ${name} update equals LibTorch's per-parameter optimizer over 3 steps, EMA and resumed state included (${device})`, async (t) => {
        if (device === 'cuda') setTf32(false);
        const data = await batches(device, 4);
        const run = async (implementation: 'loop' | 'foreach' | 'fused') => {
          const model = small(device);
          const trainer = new Trainer(model, { optimizer: { ...optimizer, implementation }, ema: { decay: 0.9, tau: 1 }, channelsLast: false, cudnnBenchmark: false });
          const losses: number[] = [];
          for (const b of data.slice(0, 3)) losses.push((await trainer.step(b, optimizer.lr)).total);
          return { model, trainer, losses };
        };
        const plain = await run('loop');
        const fast = await run(impl);
        // CPU: the same operations in the same order; CUDA: cuDNN's backward is not bitwise repeatable
        // (and AdamW's first steps move each weight by about ±lr whatever the gradient's size)
        const tol = device === 'cpu' ? { atol: 1e-7, rtol: 1e-6 } : { atol: optimizer.type === 'adamw' ? 4 * optimizer.lr! : 1e-5, rtol: 1e-3 };
        const near = (a: number, b: number) => Math.abs(a - b) <= (device === 'cpu' ? 1e-5 * Math.abs(a) : 3e-3 * Math.abs(a) + 1e-4);
        for (let i = 0; i < 3; i++) t.true(near(plain.losses[i], fast.losses[i]), `step ${i}: ${plain.losses[i]} vs ${fast.losses[i]}`);
        const a = weightsOf(plain.model);
        const b = weightsOf(fast.model);
        for (const k of ['conv1.weight', 'layer2.0.downsample.0.weight', 'fpn.P5_1.bias', 'classificationModel.conv4.weight', 'regressionModel.output.bias'])
          assertClose(t, b[k], a[k], { ...tol, name: k });
        // the EMA weights
        const emaOf = (x: { trainer: Trainer; model: Model }) => x.trainer.withEmaWeights(async () => weightsOf(x.model)['layer3.1.conv2.weight']);
        assertClose(t, await emaOf(fast), await emaOf(plain), { ...tol, name: 'ema' });
        // the optimizer state through a checkpoint, resumed with the per-parameter optimizer: one more step
        const dir = tempDir();
        await fast.trainer.saveCheckpoint(dir, { epoch: 0, batch: 3, step: 3 });
        const resumed = small(device);
        const again = new Trainer(resumed, { optimizer: { ...optimizer, implementation: 'loop' }, ema: { decay: 0.9, tau: 1 }, channelsLast: false, cudnnBenchmark: false });
        await again.loadCheckpoint(dir);
        const r1 = await plain.trainer.step(data[3], optimizer.lr);
        const r2 = await again.step(data[3], optimizer.lr);
        t.true(near(r1.total, r2.total), `${r1.total} vs ${r2.total}`);
        assertClose(t, weightsOf(resumed)['layer4.0.conv1.weight'], weightsOf(plain.model)['layer4.0.conv1.weight'], { ...tol, name: 'after resume with the loop optimizer' });
        for (const b of data) disposeBatch(b);
        for (const x of [plain, fast]) {
          x.trainer.dispose();
          x.model.dispose();
        }
        again.dispose();
        resumed.dispose();
      });
  }

for (const device of devices)
  test(`fast path: channels-last training gives the NCHW losses and weights; the model stays channels-last and saves plain weights (${device})`, async (t) => {
    if (device === 'cuda') setTf32(false);
    const data = await batches(device, 3);
    const run = async (channelsLast: boolean) => {
      const model = small(device);
      const trainer = new Trainer(model, { optimizer: { lr: 0.02 }, channelsLast, cudnnBenchmark: false });
      const losses: number[] = [];
      for (const b of data) losses.push((await trainer.step(b, 0.02)).total);
      trainer.dispose();
      return { model, losses };
    };
    const nchw = await run(false);
    const nhwc = await run(true);
    t.false(nchw.model.info.channelsLast);
    t.true(nhwc.model.info.channelsLast);
    for (let i = 0; i < data.length; i++) t.true(Math.abs(nchw.losses[i] - nhwc.losses[i]) <= 1e-4 * Math.abs(nchw.losses[i]), `step ${i}: ${nchw.losses[i]} vs ${nhwc.losses[i]}`);
    const a = nchw.model.stateDict();
    const b = nhwc.model.stateDict();
    // on CUDA the channels-last model runs its frozen BatchNorm layers as fused kernels (BatchNorm + sum + ReLU),
    // and the FPN's and heads' convolutions with their bias (+ ReLU) as fused epilogues: the BatchNorm weights
    // and biases and the convolutions' biases get their gradients from those kernels
    for (const k of [
      'conv1.weight', 'bn1.weight', 'bn1.bias', 'layer1.0.conv2.weight', 'layer1.0.bn2.weight', 'layer2.0.downsample.1.weight', 'layer2.0.downsample.1.bias', 'layer4.1.bn2.bias',
      'fpn.P3_1.bias', 'fpn.P3_2.weight', 'fpn.P3_2.bias', 'fpn.P7_2.bias', 'classificationModel.conv1.bias', 'classificationModel.conv4.weight', 'classificationModel.conv4.bias',
      'classificationModel.output.weight', 'classificationModel.output.bias', 'regressionModel.conv2.bias', 'regressionModel.output.bias',
    ])
      assertClose(t, b[k], a[k], { atol: 1e-5, rtol: 1e-4, name: k });
    // the forward pass of both layouts in eval mode (the fused forward alone)
    nchw.model.eval();
    const f1 = await nchw.model.forward(data[1].images);
    const f2 = await nhwc.model.channelsLast(true).eval().forward(data[1].images);
    nhwc.model.train();
    // CPU: to 1e-4. CUDA: this comparison after training shows differences of TF32's size (3e-3) that a
    // standalone fp32 check of untrained models does not (5e-6, fused kernels and LibTorch's BatchNorm
    // alike; bench/NOTES.md) — not yet explained, so the CUDA bound here is TF32's
    const fwdTol = device === 'cpu' ? { atol: 1e-4, rtol: 1e-4 } : { atol: 5e-3, rtol: 5e-3 };
    for (const k of ['c3', 'c5', 'classification'] as const) assertClose(t, f2[k], f1[k], { ...fwdTol, name: `forward ${k}` });
    for (const v of [...Object.values(f1), ...Object.values(f2)]) v.dispose();
    // saved weights are in NCHW order whatever the layout: a plain model loads them and detects the same
    const file = path.join(tempDir(), 'nhwc.safetensors');
    await nhwc.model.saveWeights(file);
    const loaded = small(device);
    await loaded.loadWeights(file);
    t.false(loaded.info.channelsLast);
    nhwc.model.eval();
    loaded.eval();
    const [d1] = await nhwc.model.detect(data[0].images, { scoreThreshold: 0.01 });
    const [d2] = await loaded.detect(data[0].images, { scoreThreshold: 0.01 });
    t.is(d1.scores.length, d2.scores.length);
    for (let i = 0; i < Math.min(5, d1.scores.length); i++) t.true(Math.abs(d1.scores[i] - d2.scores[i]) < 1e-4, `score ${i}`);
    t.false(nhwc.model.channelsLast(false).info.channelsLast);
    for (const b of data) disposeBatch(b);
    for (const m of [nchw.model, nhwc.model, loaded]) m.dispose();
  });

for (const device of devices)
  test(`fast path: the contrastive term reads channels-last (and on CUDA bfloat16) FPN maps in place and gives the NCHW float32 values (${device})`, async (t) => {
    if (device === 'cuda') setTf32(false);
    const loader = new DataLoader(await dataset(8, 64), { batchSize: 4, seed: 5, device, views: 2, transform: { minSide: 64, maxSide: 64 } });
    const data: Batch[] = [];
    for await (const b of loader.epoch(0)) data.push(b);
    const run = async (channelsLast: boolean, amp: boolean) => {
      const model = small(device);
      const trainer = new Trainer(model, { optimizer: { lr: 0.01 }, channelsLast, amp, cudnnBenchmark: false, loss: { contrastive: { weight: 0.5, projection: { hidden: 16, out: 8 } } } });
      const terms: number[] = [];
      for (const b of data) terms.push((await trainer.step(b, 0.01)).contrastive);
      trainer.dispose();
      model.dispose();
      return terms;
    };
    const plain = await run(false, false);
    const nhwc = await run(true, false);
    t.true(plain.every((v) => v > 0));
    for (let i = 0; i < plain.length; i++) t.true(Math.abs(nhwc[i] - plain[i]) <= 1e-4 * plain[i], `step ${i}: ${nhwc[i]} vs ${plain[i]}`);
    if (device === 'cuda') {
      const bf16 = await run(true, true);
      // bfloat16 maps (8 bits of mantissa) pooled in float32: the term within a few per cent
      for (let i = 0; i < plain.length; i++) t.true(Math.abs(bf16[i] - plain[i]) <= 3e-2 * plain[i], `bf16 step ${i}: ${bf16[i]} vs ${plain[i]}`);
    }
    for (const b of data) disposeBatch(b);
  });

test('fast path: clipping scales the update to the clip norm (one plain SGD step), and reports the norm before clipping', async (t) => {
  const [batch] = await batches('cpu', 1);
  const model = small('cpu');
  const before = model.stateDict();
  const lr = 0.5;
  const clip = 1e-3;
  const r = await new Trainer(model, { optimizer: { type: 'sgd', lr, momentum: 0, weightDecay: 0, clipGradNorm: clip } }).step(batch, lr);
  t.true(r.gradNorm > 10 * clip, `gradient norm ${r.gradNorm}`);
  const after = model.stateDict();
  let sq = 0;
  for (const k of Object.keys(before)) {
    if (k.endsWith('running_mean') || k.endsWith('running_var') || k.endsWith('num_batches_tracked')) continue;
    const x = before[k].toArray() as Float32Array;
    const y = after[k].toArray() as Float32Array;
    for (let i = 0; i < x.length; i++) sq += ((y[i] - x[i]) / lr) ** 2;
  }
  // ‖Δw‖ / lr = ‖g‖ · clip / (‖g‖ + 1e-6)
  const expected = (r.gradNorm * clip) / (r.gradNorm + 1e-6);
  t.true(Math.abs(Math.sqrt(sq) - expected) < 1e-3 * expected, `${Math.sqrt(sq)} vs ${expected}`);
  disposeBatch(batch);
  t.throws(() => new Trainer(small('cpu'), { optimizer: { type: 'adamw', implementation: 'fused' } }), { instanceOf: RangeError, message: /'fused' needs CUDA/ });
  t.throws(() => new Trainer(small('cpu'), { optimizer: { implementation: 'fast' as 'auto' } }), { instanceOf: RangeError, message: /options\.optimizer\.implementation/ });
  t.throws(() => new Trainer(small('cpu'), { channelsLast: 1 as unknown as boolean }), { message: /options\.channelsLast/ });
});

// one GPU test at a time: a CUDA graph capture fails when another thread synchronises the device meanwhile
const cuda = buildInfo().cudaAvailable ? test.serial : test.skip;

cuda('fast path: 200 steps on shapes data — the fast configuration (channels-last, cuDNN benchmark, fused AdamW, bf16, CUDA graph) follows the plain one (NCHW, per-parameter AdamW, bf16)', async (t) => {
  setTf32(true);
  const ds = await dataset(400, 128);
  const curve = async (fast: boolean) => {
    const model = Model.retinanet({ depth: 18, numClasses: 3, featureSize: 64, seed: 11, device: 'cuda' });
    const trainer = new Trainer(model, {
      optimizer: { type: 'adamw', lr: 2e-4, weightDecay: 1e-4, implementation: fast ? 'auto' : 'loop' },
      schedule: { warmupSteps: 20 },
      amp: true,
      channelsLast: fast,
      cudnnBenchmark: fast,
      cudaGraph: fast,
    });
    const losses: number[] = [];
    let replayed = 0;
    trainer.on('step', (r: StepRecord) => {
      losses.push(r.total);
      if (r.graph === 'replayed') replayed++;
    });
    await trainer.fit(new DataLoader(ds, { batchSize: 8, seed: 2, device: 'cuda', shuffle: true, transform: { minSide: 128, maxSide: 128 } }), { epochs: 4 });
    trainer.dispose();
    model.dispose();
    // every batch has the one shape: after 3 eager steps and the capture, the rest are replays
    t.is(replayed, fast ? 196 : 0);
    return losses;
  };
  const plain = await curve(false);
  const fast = await curve(true);
  t.is(plain.length, 200);
  t.is(fast.length, 200);
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const median = (xs: number[]) => {
    const v = [...xs].sort((x, y) => x - y);
    return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  };
  // single runs on a GPU are not bitwise repeatable and this loss is spiky from batch to batch (20-step
  // means move by ±30 % within one run, one spiky window can lift a 100-step mean by 20 %): medians,
  // which a few spikes do not move. The fast path must learn as well as the plain one — its median loss
  // over the last 100 steps no more than 10 % above the plain run's — and both must learn
  const windows: string[] = [];
  for (let w = 0; w < 200; w += 20) windows.push(`${mean(plain.slice(w, w + 20)).toFixed(3)}/${mean(fast.slice(w, w + 20)).toFixed(3)}`);
  t.log(`20-step means plain/fast: ${windows.join(' ')}`);
  const a = median(plain.slice(-100));
  const b = median(fast.slice(-100));
  t.log(`last 100 steps, medians: plain ${a.toFixed(4)}, fast ${b.toFixed(4)} (means ${mean(plain.slice(-100)).toFixed(4)}, ${mean(fast.slice(-100)).toFixed(4)})`);
  t.true(b <= 1.1 * a, `fast ${b} vs plain ${a}`);
  // learned: the late median well below the starting level (the mean of the first 20 steps, spikes included)
  t.true(b < 0.7 * mean(fast.slice(0, 20)), 'the fast run learned');
  t.true(a < 0.7 * mean(plain.slice(0, 20)), 'the plain run learned');
});

/** One step of a graph-versus-eager sequence: the batch and the epoch it belongs to. */
interface SequenceStep {
  batch: Batch;
  epoch?: number;
}

type Tolerance = { loss: number; weightAbs: number; weightRel: number };

/** The loss terms of two records of one step, side by side. */
const terms = (a: StepRecord, b: StepRecord): Array<[string, number, number]> => [
  ...(['cls', 'reg', 'contrastive', 'gradNorm'] as const).map((k): [string, number, number] => [k, a[k], b[k]]),
  ...Object.entries(a.components).map(([k, v]): [string, number, number] => [k, v, b.components[k]]),
];

/** How far run a's records are from run b's, in units of the loss tolerance (≤ 1 passes), and where. */
function lossExcess(a: StepRecord[], b: StepRecord[], tol: Tolerance, steps: number[] = a.map((_, i) => i)): { excess: number; where: string } {
  let worst = { excess: 0, where: '' };
  for (const i of steps)
    for (const [k, g, e] of terms(a[i], b[i])) {
      const excess = Math.abs(g - e) / (tol.loss * Math.abs(e) + 1e-6);
      if (excess > worst.excess) worst = { excess, where: `step ${steps.length === 1 ? steps[0] : i} ${k}: ${g} vs ${e}` };
    }
  return worst;
}

/** How far weights a are from weights b, in units of the weight tolerance, and where. */
function weightExcess(a: Record<string, Tensor>, b: Record<string, Tensor>, tol: Tolerance): { excess: number; where: string } {
  let worst = { excess: 0, where: '' };
  for (const k of Object.keys(b)) {
    const x = b[k].toArray() as Float32Array;
    const y = a[k].toArray() as Float32Array;
    for (let i = 0; i < x.length; i++) {
      const excess = Math.abs(Number(y[i]) - Number(x[i])) / (tol.weightAbs + tol.weightRel * Math.abs(Number(x[i])));
      if (excess > worst.excess) worst = { excess, where: `${k}[${i}]: ${y[i]} vs ${x[i]}` };
    }
  }
  return worst;
}

const worse = (a: { excess: number; where: string }, b: { excess: number; where: string }) => (b.excess > a.excess ? b : a);

/**
 * The same steps on two fresh models, eagerly (cudaGraph false) and with CUDA graphs (cudaGraph true):
 * how each graphed step ran, and its losses and the final weights against the eager run's.
 */
interface GraphCase {
  name: string;
  make: () => Model;
  options: TrainerOptions;
  sequence: SequenceStep[];
  /** StepRecord.graph of each step of the graph run. */
  expected: StepRecord['graph'][];
  tol: Tolerance;
}

async function graphVersusEager(t: ExecutionContext, { name, make, options, sequence, expected, tol }: GraphCase): Promise<void> {
  const lr = options.optimizer?.lr ?? 0.01;
  const run = async (cudaGraph: boolean) => {
    const model = make();
    const trainer = new Trainer(model, { ...options, cudaGraph });
    const records: StepRecord[] = [];
    for (const [i, s] of sequence.entries()) records.push(await trainer.step(s.batch, lr, { epoch: s.epoch ?? 0, batch: i, step: i }));
    const weights = weightsOf(model);
    trainer.dispose();
    model.dispose();
    return { records, weights };
  };
  const eager = await run(false);
  const graphed = await run(true);
  t.deepEqual(eager.records.map((r) => r.graph), sequence.map(() => 'off'), name);
  t.deepEqual(graphed.records.map((r) => r.graph), expected, name);
  const loss = lossExcess(graphed.records, eager.records, tol);
  t.true(loss.excess <= 1, `${name} ${loss.where}: ${loss.excess.toFixed(2)} × the loss tolerance ${tol.loss}`);
  const weights = weightExcess(graphed.weights, eager.weights, tol);
  t.true(weights.excess <= 1, `${name}: weights differ by ${weights.excess.toFixed(2)} × (${tol.weightAbs} + ${tol.weightRel}·|w|) at ${weights.where}`);
}

/**
 * How far the step that took `before` to `a` is from the one that took it to `b`: ‖a − b‖ / ‖b − before‖
 * over the trained weights (running statistics left out) — the two updates' difference relative to the
 * update. A replay that read another batch, a stale weight or another learning rate is ~1 here (other
 * images give nearly orthogonal gradients); a positive more or less in the assignment moves a few
 * weights of one branch, a few per cent at most.
 */
function updateDeviation(before: Record<string, Float32Array>, a: Record<string, Tensor>, b: Record<string, Tensor>): number {
  let diff = 0;
  let step = 0;
  for (const k of Object.keys(before)) {
    if (/running_(mean|var)$|num_batches_tracked$/.test(k)) continue;
    const x = a[k].toArray() as Float32Array;
    const y = b[k].toArray() as Float32Array;
    const w = before[k];
    for (let i = 0; i < w.length; i++) {
      diff += (x[i] - y[i]) ** 2;
      step += (y[i] - w[i]) ** 2;
    }
  }
  return Math.sqrt(diff / Math.max(step, 1e-30));
}

/**
 * graphVersusEager for a step that is not reproducible eagerly (atomics in the backward feeding a
 * discontinuous assignment): an eager run, a second eager run and the graph run go in lockstep, the
 * second and the graph run starting every step from the eager run's weights (copied in place, so the
 * captured graphs read them; SGD without momentum, so the weights are the whole state). Each step is
 * compared alone — differences cannot compound over the sequence. The eager floor is what the second
 * eager run, and the graph run where it stepped eagerly, differ from the eager run; each captured or
 * replayed step may differ by twice that: its losses by at most `cap` loss tolerances, its update (see
 * updateDeviation) by at most 20 %.
 */
async function graphVersusEagerStepwise(t: ExecutionContext, { name, make, options, sequence, expected, tol }: GraphCase, cap: number): Promise<void> {
  t.is(options.optimizer?.momentum, 0, 'the weights are the whole state');
  const lr = options.optimizer?.lr ?? 0.01;
  const [eager, again, graphed] = [false, false, true].map((cudaGraph) => {
    const model = make();
    return { model, trainer: new Trainer(model, { ...options, cudaGraph }), records: [] as StepRecord[] };
  });
  const start = path.join(tempDir(), 'start.safetensors');
  const none = { excess: 0, where: '' };
  const floor = { loss: none, update: none };
  const graph = { loss: none, update: none, weights: none };
  for (const [i, s] of sequence.entries()) {
    await eager.model.saveWeights(start);
    const before = Object.fromEntries(Object.entries(weightsOf(eager.model)).map(([k, v]) => [k, v.toArray() as Float32Array]));
    for (const side of [again, graphed]) await side.model.loadWeights(start);
    for (const side of [eager, again, graphed]) side.records.push(await side.trainer.step(s.batch, lr, { epoch: s.epoch ?? 0, batch: i, step: i }));
    const [e, a, g] = [eager, again, graphed].map((side) => weightsOf(side.model));
    const deviation = (x: Record<string, Tensor>) => ({ excess: updateDeviation(before, x, e), where: `step ${i}` });
    floor.loss = worse(floor.loss, lossExcess(again.records, eager.records, tol, [i]));
    floor.update = worse(floor.update, deviation(a));
    if (graphed.records[i].graph === 'off' || graphed.records[i].graph === 'eager') {
      floor.loss = worse(floor.loss, lossExcess(graphed.records, eager.records, tol, [i]));
      floor.update = worse(floor.update, deviation(g));
    } else {
      graph.loss = worse(graph.loss, lossExcess(graphed.records, eager.records, tol, [i]));
      graph.update = worse(graph.update, deviation(g));
      const off = weightExcess(g, e, tol);
      graph.weights = worse(graph.weights, { ...off, where: `step ${i} ${off.where}` });
    }
  }
  for (const side of [eager, again, graphed]) {
    side.trainer.dispose();
    side.model.dispose();
  }
  t.deepEqual(eager.records.map((r) => r.graph), sequence.map(() => 'off'), name);
  t.deepEqual(graphed.records.map((r) => r.graph), expected, name);
  const pct = (v: number) => `${(100 * v).toFixed(3)} %`;
  t.log(
    `${name}: eager floor ${floor.loss.excess.toFixed(2)} loss tolerances (${floor.loss.where}), update ${pct(floor.update.excess)} (${floor.update.where}); ` +
      `graph steps ${graph.loss.excess.toFixed(2)} (${graph.loss.where}), update ${pct(graph.update.excess)} (${graph.update.where}); ` +
      `largest weight difference ${graph.weights.excess.toFixed(2)} tolerances (${graph.weights.where})`,
  );
  const allowed = { loss: Math.min(cap, Math.max(1, 2 * floor.loss.excess)), update: Math.min(0.2, Math.max(0.01, 2 * floor.update.excess)) };
  t.true(graph.loss.excess <= allowed.loss, `${name} ${graph.loss.where}: ${graph.loss.excess.toFixed(2)} × the loss tolerance ${tol.loss} (allowed ${allowed.loss.toFixed(2)})`);
  t.true(graph.update.excess <= allowed.update, `${name} ${graph.update.where}: the update differs by ${pct(graph.update.excess)} of itself (allowed ${pct(allowed.update)})`);
}

/** The batch with its annotations padded by −1 rows to `rows` rows (the same boxes). */
function padRows(b: Batch, rows: number): Batch {
  const [B, M, F] = b.annotations.shape;
  const out = new Float32Array(B * rows * F).fill(-1);
  const a = b.annotations.toArray() as Float32Array;
  for (let i = 0; i < B; i++) out.set(a.subarray(i * M * F, (i + 1) * M * F), i * rows * F);
  return { ...b, annotations: Tensor.from(out, [B, rows, F], { device: b.annotations.device }) };
}

/** `n` batches of 4 shapes pictures at side × side (`views`: the contrastive second view too). */
async function squareBatches(device: Device, n: number, side: number, views = false): Promise<Batch[]> {
  const loader = new DataLoader(await dataset(8, 64), { batchSize: 4, seed: 5, device, views: views ? 2 : 1, transform: { minSide: side, maxSide: side } });
  const out: Batch[] = [];
  for (let e = 0; out.length < n; e++) for await (const b of loader.epoch(e)) if (out.length < n) out.push(b); else disposeBatch(b);
  return out;
}

const sgd: TrainerOptions = { optimizer: { type: 'sgd', lr: 0.01, momentum: 0.9, weightDecay: 1e-4 } };
const exact = { loss: 1e-4, weightAbs: 1e-6, weightRel: 1e-4 };

cuda('cuda graph: steps replayed from a captured graph give the eager steps\' losses and weights — focal and GHM losses, growing box capacity, eager steps in between', async (t) => {
  setTf32(false);
  const bs = await batches('cuda', 4);
  // the same batch with padding rows up to 12 (more than the first capacity, 8): eager until its capacity (16) is captured
  const wide = (b: Batch) => padRows(b, 12);
  const sequence = [bs[0], bs[1], bs[2], bs[3], bs[0], bs[1], wide(bs[2]), wide(bs[3]), wide(bs[0]), wide(bs[1]), bs[2], bs[3]].map((batch) => ({ batch }));
  const expected = ['eager', 'eager', 'eager', 'captured', 'replayed', 'replayed', 'eager', 'eager', 'eager', 'captured', 'replayed', 'replayed'] as const;
  for (const [name, loss] of [
    ['focal', {}],
    ['ghmc + ghmr with momentum', { classification: 'ghmc', regression: 'ghmr', ghmc: { momentum: 0.75 }, ghmr: { momentum: 0.7 } }],
  ] as const)
    await graphVersusEager(t, { name, make: () => small('cuda'), options: { ...sgd, loss }, sequence, expected: [...expected], tol: exact });
});

cuda('cuda graph: up to 4 batch shapes are captured and replayed side by side (one shared memory pool) with the eager losses and weights; a fifth shape runs eagerly', async (t) => {
  setTf32(false);
  const sides = [64, 96, 128, 160, 192];
  const perSide = await Promise.all(sides.map((s) => squareBatches('cuda', 1, s)));
  // five rounds over the five shapes: the first four are captured at their fourth step, the fifth finds the cache full
  const sequence: SequenceStep[] = [];
  const expected: StepRecord['graph'][] = [];
  for (let round = 0; round < 5; round++)
    sides.forEach((_, k) => {
      sequence.push({ batch: perSide[k][0] });
      expected.push(k === 4 || round < 3 ? 'eager' : round === 3 ? 'captured' : 'replayed');
    });
  await graphVersusEager(t, { name: 'five shapes', make: () => small('cuda'), options: sgd, sequence, expected, tol: { loss: 1e-3, weightAbs: 1e-5, weightRel: 1e-3 } });
});

cuda('cuda graph: the NanoDet-Plus step (DSL assignment, both heads, the AGM) replays with the eager losses and weights, and the AGM\'s detach epoch is a graph of its own', async (t) => {
  setTf32(false);
  // both runs see the graph's 8 annotation rows: equal costs (flat backgrounds give many) are broken by
  // position in the assigner's top-k, and that order can depend on the cost matrix's width
  const bs = (await batches('cuda', 2)).map((b) => padRows(b, 8));
  const sequence: SequenceStep[] = [];
  for (const epoch of [0, 1]) for (let i = 0; i < 6; i++) sequence.push({ batch: bs[i % 2], epoch });
  const expected = ['eager', 'eager', 'eager', 'captured', 'replayed', 'replayed'] as const;
  // SGD, not NanoDet's AdamW: AdamW turns gradient noise into ±lr moves of every weight whose gradient is
  // near zero, and the DSL assignment (dynamic k from summed IoUs, top-k ties) turns those into other
  // positives — two eager runs already differed by 1 % in the gradient norm after 3 AdamW steps (on the
  // H200: 4.6260 and 4.5788, the graph 4.6253 both times). Step by step from the same weights: over the
  // 12 steps two whole eager runs parted completely (H200, 2026-12-05: step 11's auxiliary box loss
  // 0.567 vs 1.253), which leaves nothing to hold the graph to
  await graphVersusEagerStepwise(
    t,
    {
      name: 'nanodet-plus',
      make: () => Model.nanodetPlus({ numClasses: 3, seed: 1, device: 'cuda' }),
      options: { optimizer: { type: 'sgd', lr: 0.01, momentum: 0, weightDecay: 1e-4, clipGradNorm: 35 }, loss: { detachEpoch: 1 } },
      sequence,
      expected: [...expected, ...expected],
      // to 1e-3: the NanoDet-Plus backward has kernels that accumulate with atomics (the interpolation's
      // backward, the depthwise convolutions' weight gradients): its first replay differed by 1.5e-4.
      // Channels-last since the sixth session: two eager runs differed by 1.8e-3 in step 1's gradient norm
      // on the H200 (the DSL assignment turns last-bit noise into other positives), so the eager runs'
      // own difference is measured and the graph held to it, at most 5 tolerances. The weights are held
      // by the update's deviation (updateDeviation): on the H100 (2026-12-05) an eager step of the graph
      // run moved one auxiliary-head weight 10.8 tolerances from the eager run's, a positive flipped
      tol: { loss: 1e-3, weightAbs: 1e-5, weightRel: 1e-3 },
    },
    5,
  );
});

cuda('amp: the bf16 copies of the convolution weights (one multi-tensor copy each way) train and detect as autocast\'s cast per weight — eager, captured and replayed steps, two views, NanoDet-Plus', async (t) => {
  setTf32(false);
  const bs = await squareBatches('cuda', 2, 64, true);
  const cases = [
    { name: 'retinanet, two views', make: () => small('cuda'), steps: 6, options: { ...sgd, loss: { contrastive: { weight: 0.5, projection: { hidden: 16, out: 8 } } } } },
    // one step: the DSL assignment turns the backward's last-bit noise into other positives after it
    { name: 'nanodet-plus', make: () => Model.nanodetPlus({ numClasses: 3, seed: 1, device: 'cuda' }), steps: 1, options: sgd },
  ];
  for (const c of cases) {
    const under = async <T>(casts: 'copies' | 'autocast', f: () => Promise<T>): Promise<T> => {
      if (casts === 'autocast') process.env.ONESTAGE_BF16_WEIGHTS = 'autocast';
      try {
        return await f();
      } finally {
        delete process.env.ONESTAGE_BF16_WEIGHTS;
      }
    };
    const run = (casts: 'copies' | 'autocast') => under(casts, async () => {
      const model = c.make();
      const trainer = new Trainer(model, { ...c.options, amp: true, cudnnBenchmark: false });
      const records: StepRecord[] = [];
      for (let i = 0; i < c.steps; i++) records.push(await trainer.step(bs[i % 2], 0.01));
      trainer.dispose();
      return { model, records, state: weightsOf(model) };
    });
    // autocast twice: the backward's own run-to-run difference (wgrad algorithms and the RoIAlign's
    // backward accumulate with atomics; bf16 rounds them visibly) is the floor the copies are held to
    const [copies, casts, again] = [await run('copies'), await run('autocast'), await run('autocast')];
    const start = c.make();
    const before = Object.fromEntries(Object.entries(weightsOf(start)).map(([k, v]) => [k, v.toArray() as Float32Array]));
    start.dispose();
    again.model.dispose();
    t.deepEqual(copies.records.map((r) => r.graph), casts.records.map((r) => r.graph), c.name);
    const values = (rs: StepRecord[]) => rs.flatMap((r) => [r.total, r.gradNorm]);
    const rel = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i]) / (Math.abs(b[i]) + 1e-6)));
    const floor = { records: rel(values(again.records), values(casts.records)), update: updateDeviation(before, again.state, casts.state) };
    const off = { records: rel(values(copies.records), values(casts.records)), update: updateDeviation(before, copies.state, casts.state) };
    t.log(`${c.name}: copies vs autocast: losses and norms ${off.records.toExponential(2)}, update ${off.update.toExponential(2)}; autocast vs autocast ${floor.records.toExponential(2)}, ${floor.update.toExponential(2)}`);
    t.true(off.records <= Math.min(0.05, Math.max(1e-4, 3 * floor.records)), `${c.name}: losses and gradient norms differ by ${off.records} (autocast twice: ${floor.records})`);
    t.true(off.update <= Math.min(0.05, Math.max(1e-4, 3 * floor.update)), `${c.name}: the updates differ by ${off.update} of themselves (autocast twice: ${floor.update})`);
    // detect from the same (trained) weights on both sides, eagerly and replayed
    const file = path.join(tempDir(), 'trained.safetensors');
    await copies.model.saveWeights(file);
    await casts.model.loadWeights(file);
    const detect = (casts: 'copies' | 'autocast', m: Model) => under(casts, async () => [await m.detect(bs[0].images, { amp: true, scoreThreshold: 0, topkCandidates: 1000 }), await m.detect(bs[0].images, { amp: true, cudaGraph: true, scoreThreshold: 0, topkCandidates: 1000 })]);
    const [d1, d2] = [await detect('copies', copies.model), await detect('autocast', casts.model)];
    for (const [i, d] of d1.entries())
      for (const [j, x] of d.entries()) {
        const e = d2[i][j];
        t.true(x.scores.length > 0, `${c.name}: detections to compare`);
        t.deepEqual(x.labels, e.labels, `${c.name}: detect ${i} image ${j} labels`);
        // to bf16's resolution: on the H200 (2026-12-05) the scores came out equal and 10 of 356 box
        // coordinates one bf16 step of the regression apart (4.6e-3 px on 5.8)
        assertClose(t, { shape: [x.scores.length], data: x.scores }, { shape: [e.scores.length], data: e.scores }, { rtol: 1e-3, atol: 1e-5, name: `${c.name}: detect ${i} scores` });
        assertClose(t, { shape: [x.boxes.length], data: x.boxes }, { shape: [e.boxes.length], data: e.boxes }, { rtol: 4e-3, atol: 1e-2, name: `${c.name}: detect ${i} boxes` });
      }
    copies.model.dispose();
    casts.model.dispose();
  }
  bs.forEach(disposeBatch);
});

cuda('cuda graph: the contrastive joint step (two views, RoIAlign over the boxes, projection head) replays with the eager losses and weights', async (t) => {
  setTf32(false);
  const bs = await squareBatches('cuda', 2, 64, true);
  const sequence = [0, 1, 0, 1, 0, 1].map((i) => ({ batch: bs[i] }));
  await graphVersusEager(t, {
    name: 'focal + contrastive',
    make: () => small('cuda'),
    options: { ...sgd, loss: { contrastive: { weight: 0.5, projection: { hidden: 16, out: 8 } } } },
    sequence,
    expected: ['eager', 'eager', 'eager', 'captured', 'replayed', 'replayed'],
    tol: exact,
  });
});

cuda('cuda graph: on by default (\'auto\') for a model on CUDA — the fourth step of a shape is captured, later ones replayed; backboneLrMultiplier keeps \'auto\' eager and makes true an error', async (t) => {
  const [b] = await batches('cuda', 1);
  const model = small('cuda');
  const trainer = new Trainer(model, sgd);
  const warnings: string[] = [];
  trainer.on('warning', (m: string) => warnings.push(m));
  const how: string[] = [];
  for (let i = 0; i < 6; i++) how.push((await trainer.step(b, 0.01)).graph);
  t.deepEqual(how, ['eager', 'eager', 'eager', 'captured', 'replayed', 'replayed']);
  t.deepEqual(warnings, []);
  trainer.dispose();
  const scaled = new Trainer(model, { optimizer: { ...sgd.optimizer, backboneLrMultiplier: 0.1 } });
  for (let i = 0; i < 5; i++) t.is((await scaled.step(b, 0.01)).graph, 'off');
  scaled.dispose();
  t.throws(() => new Trainer(model, { ...sgd, optimizer: { ...sgd.optimizer, backboneLrMultiplier: 0.1 }, cudaGraph: true }), { instanceOf: RangeError, message: /backboneLrMultiplier and cudaGraph/ });
  model.dispose();
});

cuda('cuda graph: captures and other CUDA work of the process exclude each other — two models training at once, transfers and synchronize() meanwhile, nothing fails', async (t) => {
  const bs = await batches('cuda', 2);
  const models = [small('cuda'), small('cuda')];
  const trainers = models.map((m) => new Trainer(m, sgd));
  const warnings: string[] = [];
  for (const tr of trainers) tr.on('warning', (m: string) => warnings.push(m));
  let busy = true;
  // JavaScript-side CUDA work while the steps (and their captures) run on the models' threads
  const traffic = (async () => {
    let n = 0;
    while (busy) {
      const x = Tensor.from(new Float32Array(1 << 16).fill(1), [1 << 16], { device: 'cuda' });
      t.is((x.toArray() as Float32Array)[7], 1);
      x.dispose();
      synchronize();
      n++;
      await new Promise((r) => setImmediate(r));
    }
    return n;
  })();
  const runs = trainers.map(async (tr, k) => {
    const how: string[] = [];
    for (let i = 0; i < 8; i++) how.push((await tr.step(bs[(i + k) % 2], 0.01)).graph);
    return how;
  });
  const hows = await Promise.all(runs);
  busy = false;
  t.true((await traffic) > 0);
  for (const how of hows) t.deepEqual(how, ['eager', 'eager', 'eager', 'captured', 'replayed', 'replayed', 'replayed', 'replayed']);
  t.deepEqual(warnings, []);
  for (const tr of trainers) tr.dispose();
  for (const m of models) m.dispose();
  for (const b of bs) disposeBatch(b);
});

cuda('cuda graph: a capture that fails ends, under \'auto\', in eager steps and one warning; under true in an error naming the cause', async (t) => {
  // ONESTAGE_TEST_CAPTURE_FAILURE: the capture synchronises the device, which no capture allows
  process.env.ONESTAGE_TEST_CAPTURE_FAILURE = '1';
  const [b] = await batches('cuda', 1);
  try {
    const model = small('cuda');
    const trainer = new Trainer(model, sgd);
    const warnings: string[] = [];
    trainer.on('warning', (m: string) => warnings.push(m));
    const records: StepRecord[] = [];
    for (let i = 0; i < 6; i++) records.push(await trainer.step(b, 0.01));
    t.deepEqual(records.map((r) => r.graph), ['eager', 'eager', 'eager', 'off', 'off', 'off']);
    t.is(warnings.length, 1);
    t.regex(warnings[0], /could not be captured as a CUDA graph .*; training goes on without CUDA graphs/);
    t.is(records[3].graphWarning, warnings[0]);
    t.true(records.every((r) => !r.skipped && Number.isFinite(r.total)), 'the steps after the failure train');
    trainer.dispose();
    const strict = new Trainer(model, { ...sgd, cudaGraph: true });
    for (let i = 0; i < 3; i++) await strict.step(b, 0.01);
    await t.throwsAsync(strict.step(b, 0.01), { message: /could not be captured as a CUDA graph .*; train with cudaGraph false/ });
    strict.dispose();
    model.dispose();
  } finally {
    delete process.env.ONESTAGE_TEST_CAPTURE_FAILURE;
    disposeBatch(b);
  }
});

test('cuda graph: true is refused where it cannot run (a CPU model), \'auto\' runs eagerly there; the option must be a boolean or \'auto\'', async (t) => {
  t.throws(() => new Trainer(small('cpu'), { cudaGraph: true }), { instanceOf: RangeError, message: /cudaGraph needs a model on CUDA/ });
  t.throws(() => new Trainer(small('cpu'), { cudaGraph: 'yes' as unknown as boolean }), { instanceOf: TypeError, message: /Expected a boolean or 'auto' for options\.cudaGraph/ });
  const [b] = await batches('cpu', 1);
  const model = small('cpu');
  for (const cudaGraph of [undefined, 'auto' as const]) {
    const trainer = new Trainer(model, { ...sgd, cudaGraph });
    const r = await trainer.step(b, 0.01);
    t.is(r.graph, 'off');
    t.is(r.graphWarning, undefined);
    trainer.dispose();
  }
  model.dispose();
  disposeBatch(b);
});
