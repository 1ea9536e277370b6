/**
 * Training parity: onestage and the reference training loop (test/reference/train_ref.py) train the same
 * RetinaNet from the same initial weights on the same batches — onestage writes its initial weights and
 * every batch its DataLoader produces (images and annotations, in order, with the step's learning rate);
 * the reference reads them, so only the training arithmetic differs. Both final models are scored by the
 * same COCO evaluator (onestage's, on the same validation loader).
 *
 *   npx ts-node --transpile-only bench/training_parity.ts [--recipes focal,ghmc,ghm] [--seeds 0,1,2]
 *       [--epochs 8] [--train 3000] [--device auto] [--out runs/parity] [--steps N]
 *
 * Writes <out>/parity.json (every run: AP of both sides, per-step losses and gradient norms),
 * <out>/parity.md (the table) and <out>/loss-curves.{svg,png} (both sides' smoothed losses).
 * Settings are those of examples/compare-losses.ts: shapes 128², ResNet-18 + FPN 128, AdamW 1e-3,
 * weight decay 0.05, 50 warm-up steps then cosine, batch 8, BatchNorm trained; recipes focal, ghm, ghmc,
 * ghm-all-levels (RetinaNet) and nanodet-plus (head 128, AGM 256, detached at 3/4 of the epochs, ≤ 10).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  buildInfo, CocoDataset, DataLoader, Device, disposeBatch, evaluateDetector, lossRecipe, LOSS_RECIPES, LossRecipeName, makeShapes, Model, NanoDetPlusLossOptions, RetinaNetLossOptions, setTf32, Trainer, writeFileAtomic, writeJsonAtomic, writeLineChart,
} from '../lib';
import { readFloat32Tensors } from '../lib/safetensors';
import { referenceEnv } from '../test/helpers/python';

/** A training recipe of the parity runs: a built-in RetinaNet recipe, the old compare-losses GHM, or NanoDet-Plus. */
export type ParityRecipe = LossRecipeName | 'ghm-all-levels' | 'nanodet-plus';
export const PARITY_RECIPES: readonly ParityRecipe[] = [...LOSS_RECIPES, 'ghm-all-levels', 'nanodet-plus'];

/** The loss, box std and clipping of a parity recipe (NanoDet-Plus: its own loss, NanoDet's clipping at 35). */
export function parityRecipe(name: ParityRecipe, detachEpoch = 10): { loss: RetinaNetLossOptions | NanoDetPlusLossOptions; std: [number, number, number, number]; clipGradNorm: number } {
  if (name === 'nanodet-plus') return { loss: { detachEpoch }, std: [0.1, 0.1, 0.2, 0.2], clipGradNorm: 35 };
  if (name === 'ghm-all-levels') {
    // what examples/compare-losses.ts used before the 'ghm' recipe: GHM-C bins 10, GHM-R weight 1, once over all levels
    const std: [number, number, number, number] = [1, 1, 1, 1];
    return { loss: { classification: 'ghmc', regression: 'ghmr', ghmc: { momentum: 0.75 }, ghmr: { momentum: 0.7, mu: 0.02 }, focal: { boxCoder: { std } } }, std, clipGradNorm: 0.1 };
  }
  const r = lossRecipe(name);
  return { loss: r.loss, std: (r.boxCoder.std ?? [0.1, 0.1, 0.2, 0.2]) as [number, number, number, number], clipGradNorm: r.clipGradNorm };
}

export interface ParityModelOptions {
  depth: 18 | 34 | 50;
  /** FPN channels (RetinaNet: also the subnets'). */
  featureSize: number;
  numClasses: number;
  /** RetinaNet anchor sizes per level P3–P7. */
  anchorSizes: number[];
  /** NanoDet-Plus head channels (default featureSize) and the AGM head's (default 2·featureSize). */
  headChannels?: number;
  auxChannels?: number;
}

export interface ParityRunOptions {
  recipe: ParityRecipe;
  seed: number;
  epochs: number;
  /** Stop after this many steps (0: all epochs). */
  maxSteps?: number;
  batchSize: number;
  device: Device;
  model: ParityModelOptions;
  /** 'adamw' (default; lr 1e-3, weight decay 0.05) or 'sgd' (lr 0.01, momentum 0.9, weight decay 1e-4: mmdetection's). */
  optimizer?: 'adamw' | 'sgd';
  lr?: number;
  warmupSteps?: number;
  /** NanoDet-Plus: the AGM's detach epoch; default 10. */
  detachEpoch?: number;
  /** Folder of this run (config, init weights, batches, both sides' records). */
  dir: string;
  /** Also score both final models on this loader. */
  valLoader?: DataLoader;
  /**
   * Also run the reference a second time with every initial weight moved by one float32 rounding step
   * (this seed): how far rounding-level differences alone carry through these steps (result.control).
   * Several seeds: one such run each (result.controls; result.control is the first).
   */
  control?: number | number[];
  /** Also run the reference a second time from the same weights (result.rerun): its own run-to-run noise (non-deterministic GPU kernels). */
  rerun?: boolean;
  /** Delete the batches after the reference has run (they are large). */
  dropBatches?: boolean;
  /** Python with torch for the reference; default ONESTAGE_PYTHON or python3. */
  python?: string;
}

export interface StepValues {
  step: number;
  cls: number;
  reg: number;
  total: number;
  gradNorm: number;
}

export interface ParityRunResult {
  recipe: ParityRecipe;
  seed: number;
  steps: number;
  onestage: StepValues[];
  reference: StepValues[];
  /** The reference from initial weights one rounding step away (with options.control): the first seed's run. */
  control?: StepValues[];
  /** Every control seed's run, in the order of options.control. */
  controls?: StepValues[][];
  /** The reference run again from the same weights (with options.rerun). */
  rerun?: StepValues[];
  /** COCO stats of the final weights (with a valLoader). */
  onestageStats?: number[];
  referenceStats?: number[];
  seconds: { onestage: number; reference: number };
}

/** Trains onestage on `train`, writing everything the reference needs into `o.dir`, then runs the reference. */
export async function runParity(train: DataLoader, o: ParityRunOptions): Promise<ParityRunResult> {
  const r = parityRecipe(o.recipe, o.detachEpoch);
  fs.rmSync(o.dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(o.dir, 'onestage'), { recursive: true });
  const nanodet = o.recipe === 'nanodet-plus';
  const m = o.model;
  // NanoDet-Plus with onestage's defaults beside the sizes (depthwise 5x5 head convs, 2 stacked; AGM 4 GroupNorm convs, 32 groups)
  const nanodetModel = { depth: m.depth, numClasses: m.numClasses, featureSize: m.featureSize, headChannels: m.headChannels ?? m.featureSize, stackedConvs: 2, kernelSize: 5, regMax: 7, strides: [8, 16, 32, 64], auxChannels: m.auxChannels ?? 2 * m.featureSize, auxStackedConvs: 4, auxGroups: 32 };
  const build = () =>
    nanodet
      ? Model.nanodetPlus({ depth: m.depth, numClasses: m.numClasses, featureSize: m.featureSize, head: { channels: nanodetModel.headChannels }, aux: { channels: nanodetModel.auxChannels }, device: o.device, seed: o.seed })
      : Model.retinanet({ depth: m.depth, numClasses: m.numClasses, featureSize: m.featureSize, freezeBn: false, anchors: { sizes: m.anchorSizes }, boxCoder: { std: r.std }, device: o.device, seed: o.seed });
  const optimizer =
    o.optimizer === 'sgd'
      ? { type: 'sgd' as const, lr: o.lr ?? 0.01, momentum: 0.9, weightDecay: 1e-4, clipGradNorm: r.clipGradNorm }
      : { type: 'adamw' as const, lr: o.lr ?? 1e-3, weightDecay: 0.05, clipGradNorm: r.clipGradNorm };
  writeJsonAtomic(path.join(o.dir, 'config.json'), { model: nanodet ? { architecture: 'nanodet-plus', ...nanodetModel } : { architecture: 'retinanet', ...m }, loss: r.loss, optimizer, recipe: o.recipe, seed: o.seed });
  const model = build();
  await model.saveWeights(path.join(o.dir, 'init.safetensors'));
  const trainer = new Trainer(model, { loss: r.loss, optimizer, schedule: { warmupSteps: o.warmupSteps ?? 50, type: 'cosine' }, replicas: 1 });
  const total = o.maxSteps ? Math.min(o.maxSteps, train.length * o.epochs) : train.length * o.epochs;
  const bin = fs.openSync(path.join(o.dir, 'batches.bin'), 'w');
  const index: string[] = [];
  const onestage: StepValues[] = [];
  let offset = 0;
  const put = (data: Float32Array, shape: number[]) => {
    const at = offset;
    fs.writeSync(bin, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    offset += data.byteLength;
    return { offset: at, shape };
  };
  const started = process.hrtime.bigint();
  let step = 0;
  try {
    for (let epoch = 0; epoch < o.epochs && step < total; epoch++) {
      for await (const batch of train.epoch(epoch)) {
        try {
          if (step >= total) continue;
          const lr = trainer.lrAt(step, train.length, o.epochs);
          index.push(JSON.stringify({ step, epoch, lr, images: put(batch.images.toArray() as Float32Array, [...batch.images.shape]), annotations: put(batch.annotations.toArray() as Float32Array, [...batch.annotations.shape]) }));
          const rec = await trainer.step(batch, lr, { epoch, batch: 0, step });
          onestage.push({ step, cls: rec.cls, reg: rec.reg, total: rec.total, gradNorm: rec.gradNorm });
          step++;
        } finally {
          disposeBatch(batch);
        }
      }
    }
  } finally {
    fs.closeSync(bin);
  }
  const onestageSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  writeFileAtomic(path.join(o.dir, 'batches.jsonl'), index.join('\n') + '\n');
  writeFileAtomic(path.join(o.dir, 'onestage', 'steps.jsonl'), onestage.map((s) => JSON.stringify(s)).join('\n') + '\n');
  await model.saveWeights(path.join(o.dir, 'onestage', 'final.safetensors'));
  trainer.dispose();

  const refStarted = process.hrtime.bigint();
  runReferenceLoop(o.dir, o.device.startsWith('cuda') ? 'cuda' : 'cpu', o.python);
  const referenceSeconds = Number(process.hrtime.bigint() - refStarted) / 1e9;
  const controlSeeds = o.control === undefined ? [] : Array.isArray(o.control) ? o.control : [o.control];
  controlSeeds.forEach((seed, i) => runReferenceLoop(o.dir, o.device.startsWith('cuda') ? 'cuda' : 'cpu', o.python, ['--perturb', String(seed), '--out', i === 0 ? 'control' : `control${i + 1}`]));
  if (o.rerun) runReferenceLoop(o.dir, o.device.startsWith('cuda') ? 'cuda' : 'cpu', o.python, ['--out', 'rerun']);
  if (o.dropBatches) fs.rmSync(path.join(o.dir, 'batches.bin'), { force: true });
  const read = (side: string) => fs.readFileSync(path.join(o.dir, side, 'steps.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as StepValues);
  const reference = read('reference');

  const result: ParityRunResult = { recipe: o.recipe, seed: o.seed, steps: step, onestage, reference, seconds: { onestage: onestageSeconds, reference: referenceSeconds } };
  if (controlSeeds.length > 0) {
    result.controls = controlSeeds.map((_, i) => read(i === 0 ? 'control' : `control${i + 1}`));
    result.control = result.controls[0];
  }
  if (o.rerun) result.rerun = read('rerun');
  if (o.valLoader) {
    result.onestageStats = (await evaluateDetector(model, o.valLoader)).stats;
    const ref = build();
    await ref.loadWeights(path.join(o.dir, 'reference', 'final.safetensors'));
    result.referenceStats = (await evaluateDetector(ref, o.valLoader)).stats;
    ref.dispose();
  }
  model.dispose();
  return result;
}

/** Runs test/reference/train_ref.py on a run folder (throws with its stderr on failure). */
export function runReferenceLoop(dir: string, device: 'cpu' | 'cuda', python?: string, extra: string[] = []): void {
  const py = python ?? process.env.ONESTAGE_PYTHON ?? 'python3';
  const script = path.join(__dirname, '..', 'test', 'reference', 'train_ref.py');
  const res = spawnSync(py, [script, dir, '--device', device, ...extra], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 64 * 1024 * 1024 });
  if (res.status !== 0) throw new Error(`train_ref.py failed (exit ${res.status}${res.signal ? `, ${res.signal}` : ''}):\n${res.stderr}`);
}

/** The largest |a − b| / (atol + |b|) of two step series, per quantity, over the first `steps` steps. */
export function stepDifferences(a: StepValues[], b: StepValues[], steps = Math.min(a.length, b.length), atol = 1e-6): Record<'cls' | 'reg' | 'total' | 'gradNorm', number> {
  const out = { cls: 0, reg: 0, total: 0, gradNorm: 0 };
  if (a.length < steps || b.length < steps) throw new RangeError(`both sides need ${steps} steps (onestage ${a.length}, reference ${b.length})`);
  for (let i = 0; i < steps; i++)
    for (const k of ['cls', 'reg', 'total', 'gradNorm'] as const) out[k] = Math.max(out[k], Math.abs(a[i][k] - b[i][k]) / (atol + Math.abs(b[i][k])));
  return out;
}

/** Per step, |a − b| / (atol + |b|) of one quantity. */
export function relativeDeviations(a: StepValues[], b: StepValues[], key: 'cls' | 'reg' | 'total' | 'gradNorm', atol = 1e-6): number[] {
  return a.slice(0, b.length).map((s, i) => Math.abs(s[key] - b[i][key]) / (atol + Math.abs(b[i][key])));
}

export function median(v: number[]): number {
  const s = [...v].sort((x, y) => x - y);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Weight differences of two safetensors files: the largest |a − b| and the largest |a − b| / (1e-3 + |b|) over every F32 tensor, and where. */
export function weightDifferences(fileA: string, fileB: string): { maxAbs: number; maxRel: number; worst: string } {
  const a = readFloat32Tensors(fileA);
  const b = readFloat32Tensors(fileB);
  let maxAbs = 0;
  let maxRel = 0;
  let worst = '';
  for (const [name, va] of a) {
    const vb = b.get(name);
    if (!vb || vb.length !== va.length) throw new RangeError(`${name}: missing or of another size in ${fileB}`);
    for (let i = 0; i < va.length; i++) {
      const d = Math.abs(va[i] - vb[i]);
      if (d > maxAbs) maxAbs = d;
      const rel = d / (1e-3 + Math.abs(vb[i]));
      if (rel > maxRel) {
        maxRel = rel;
        worst = name;
      }
    }
  }
  return { maxAbs, maxRel, worst };
}

const mean = (v: number[]): number => v.reduce((s, x) => s + x, 0) / Math.max(1, v.length);
const spread = (v: number[]) => (v.length ? `${mean(v).toFixed(3)} ± ${((Math.max(...v) - Math.min(...v)) / 2).toFixed(3)}` : '—');

interface MainOptions {
  recipes: string;
  seeds: string;
  epochs: string;
  train: string;
  steps: string;
  device: string;
  out: string;
  jobs: string;
  data?: string;
  control?: boolean;
}

/** One run per child process, `jobs` at a time (each with its share of the CPU threads); returns every finished run. */
async function runJobs(o: MainOptions, recipes: ParityRecipe[], seeds: number[], data: string, onResult: (r: ParityRunResult[]) => void): Promise<ParityRunResult[]> {
  const { spawn } = await import('node:child_process');
  const os = await import('node:os');
  const jobs = Number(o.jobs);
  const threads = String(Math.max(1, Math.floor(os.cpus().length / jobs)));
  const queue = seeds.flatMap((seed) => recipes.map((recipe) => ({ recipe, seed })));
  const results: ParityRunResult[] = [];
  const failures: string[] = [];
  const worker = async () => {
    for (let job = queue.shift(); job; job = queue.shift()) {
      const { recipe, seed } = job;
      const out = path.join(o.out, `job-${recipe}-s${seed}`);
      const args = ['--transpile-only', __filename, '--recipes', recipe, '--seeds', String(seed), '--epochs', o.epochs, '--train', o.train, '--steps', o.steps, '--device', o.device, '--out', out, '--data', data, '--jobs', '1', ...(o.control ? ['--control'] : [])];
      const code = await new Promise<number | null>((resolve) => {
        const child = spawn(process.execPath, [require.resolve('ts-node/dist/bin.js'), ...args], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, OMP_NUM_THREADS: threads, MKL_NUM_THREADS: threads } });
        child.on('exit', (c) => resolve(c));
        child.on('error', () => resolve(-1));
      });
      const file = path.join(out, 'parity.json');
      if (code !== 0 || !fs.existsSync(file)) {
        failures.push(`${recipe} seed ${seed} (exit ${code})`);
        continue;
      }
      results.push(...(JSON.parse(fs.readFileSync(file, 'utf8')) as { results: ParityRunResult[] }).results);
      onResult(results);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, jobs) }, worker));
  if (failures.length) console.error(`training parity: failed runs: ${failures.join(', ')}`);
  return results;
}

async function main(): Promise<void> {
  const { Command } = await import('commander');
  const o = new Command()
    .option('--recipes <names>', `comma-separated: ${PARITY_RECIPES.join(', ')}`, 'focal,ghmc,ghm')
    .option('--seeds <list>', 'seeds (model initialisation and data order)', '0,1,2')
    .option('--epochs <n>', 'epochs', '8')
    .option('--train <n>', 'training images', '3000')
    .option('--steps <n>', 'stop each run after this many steps (0: all epochs)', '0')
    .option('--device <device>', "'auto', 'cpu' or 'cuda'", 'auto')
    .option('--out <dir>', 'output folder', path.join('runs', 'parity'))
    .option('--jobs <n>', 'runs at a time, each in its own process (one GPU can hold several of these small runs)', '1')
    .option('--data <dir>', 'an existing shapes dataset folder (default: made under --out)')
    .option('--control', 'also run the reference from weights one rounding step away and once more from the same weights: the noise floor of the step comparison')
    .parse()
    .opts<MainOptions>();
  const recipes = o.recipes.split(',').map((s) => s.trim()) as ParityRecipe[];
  for (const r of recipes) if (!PARITY_RECIPES.includes(r)) throw new RangeError(`--recipes: unknown recipe '${r}' (expected ${PARITY_RECIPES.join(', ')})`);
  const seeds = o.seeds.split(',').map(Number);
  if (seeds.some((s) => !Number.isInteger(s))) throw new RangeError(`--seeds: expected comma-separated integers, got '${o.seeds}'`);
  if (!(Number.isInteger(Number(o.jobs)) && Number(o.jobs) >= 1)) throw new RangeError(`--jobs: expected a positive integer, got '${o.jobs}'`);
  const device: Device = o.device === 'auto' ? (buildInfo().cudaAvailable ? 'cuda' : 'cpu') : (o.device as Device);
  if (device.startsWith('cuda')) setTf32(false);
  const epochs = Number(o.epochs);
  const data = o.data ?? path.join(o.out, 'data');
  if (!o.data) await makeShapes({ out: data, train: Number(o.train), val: 60, size: 128, classes: 3, seed: 0 });
  const trainSet = await CocoDataset.open(path.join(data, 'instances_train.json'));
  const valSet = await CocoDataset.open(path.join(data, 'instances_val.json'));
  const resultsFile = path.join(o.out, 'parity.json');
  const save = (results: ParityRunResult[]) => writeJsonAtomic(resultsFile, { device, epochs, train: trainSet.length, results });
  let results: ParityRunResult[] = [];
  if (Number(o.jobs) > 1) results = await runJobs({ ...o, device }, recipes, seeds, data, save);
  else {
    const transform = { minSide: 128, maxSide: 128 };
    const valLoader = new DataLoader(valSet, { batchSize: 8, shuffle: false, augment: false, device, transform });
    // examples/compare-losses.ts' sizes: FPN 128; NanoDet-Plus head 128, AGM 256, detached at 3/4 of the epochs (at most 10)
    const model: ParityModelOptions = { depth: 18, featureSize: 128, numClasses: 3, anchorSizes: [16, 32, 64, 128, 256], headChannels: 128, auxChannels: 256 };
    const detachEpoch = Math.min(10, Math.floor((3 * epochs) / 4));
    // seed by seed, so that an interrupted session still has every recipe at the first seeds
    for (const seed of seeds)
      for (const recipe of recipes) {
        const loader = new DataLoader(trainSet, { batchSize: 8, seed, device: 'cpu', transform });
        const r = await runParity(loader, { recipe, seed, epochs, maxSteps: Number(o.steps), batchSize: 8, device, model, detachEpoch, dir: path.join(o.out, `${recipe}-s${seed}`), valLoader, dropBatches: true, ...(o.control ? { control: seed + 1, rerun: true } : {}) });
        results.push(r);
        const d = stepDifferences(r.onestage, r.reference, Math.min(20, r.steps));
        if (o.control) {
          // median per-step deviation from the reference over the first 100 steps: onestage, the rounding-step control, the rerun
          const med = (v: StepValues[] | undefined) => (v ? (['cls', 'reg', 'gradNorm'] as const).map((k) => `${k} ${median(relativeDeviations(v.slice(0, 100), r.reference, k)).toExponential(1)}`).join(', ') : '—');
          console.error(`${recipe} seed ${seed}, median deviation from the reference over steps 0–99: onestage ${med(r.onestage)}; control ${med(r.control)}; rerun ${med(r.rerun)}`);
        }
        console.error(`${recipe} seed ${seed}: AP onestage ${r.onestageStats![0].toFixed(3)} reference ${r.referenceStats![0].toFixed(3)}; first 20 steps max rel diff ${JSON.stringify(d)}; ${r.seconds.onestage.toFixed(0)} s / ${r.seconds.reference.toFixed(0)} s`);
        save(results);
      }
  }
  const rows = recipes.map((recipe) => {
    const rs = results.filter((r) => r.recipe === recipe);
    const col = (side: 'onestageStats' | 'referenceStats', k: number) => spread(rs.map((r) => r[side]![k]));
    return `| ${recipe} | ${col('onestageStats', 0)} | ${col('referenceStats', 0)} | ${col('onestageStats', 1)} | ${col('referenceStats', 1)} | ${rs.map((r) => r.seed).join(', ')} |`;
  });
  const table = [
    `Shapes (${trainSet.length} train / ${valSet.length} val, 128²), ResNet-18 + FPN 128 (RetinaNet subnets 128; NanoDet-Plus head 128, AGM 256), ${epochs} epochs, batch 8, AdamW 1e-3 cosine, ${device}; mean ± half-range over the seeds`,
    '',
    '| recipe | AP onestage | AP reference | AP50 onestage | AP50 reference | seeds |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
  writeFileAtomic(path.join(o.out, 'parity.md'), table);
  const smoothed = (v: StepValues[]) => {
    const w = Math.max(1, Math.floor(v.length / 100));
    const pts: Array<[number, number]> = [];
    for (let i = 0; i + w <= v.length; i += w) pts.push([(i + w / 2) / (v.length / epochs), mean(v.slice(i, i + w).map((s) => s.total))]);
    return pts;
  };
  await writeLineChart(path.join(o.out, 'loss-curves'), results.filter((r) => r.seed === seeds[0]).flatMap((r) => [
    { name: `${r.recipe} onestage`, points: smoothed(r.onestage) },
    { name: `${r.recipe} reference`, points: smoothed(r.reference) },
  ]), { title: `Training loss (seed ${seeds[0]})`, xTitle: 'epoch', yTitle: 'loss', logY: true });
  console.log(table);
}

if (require.main === module)
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
