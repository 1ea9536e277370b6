/**
 * Training throughput: RetinaNet training steps on one synthetic batch (B images of S×S, 8 boxes each,
 * 80 classes), onestage's plain configuration (NCHW, LibTorch's per-parameter optimizer, no cuDNN
 * benchmark), its default fast one (channels-last, cuDNN benchmark, multi-tensor update) and that with
 * the step replayed as a CUDA graph (CUDA), fp32 and bf16 autocast, and that fed by the DataLoader from
 * JPEGs (`--loader-source`: their side, resized to `--size`) — and in the same invocation the PyTorch references on the same batch (torchvision's
 * retinanet_resnet50_fpn and the pytorch-retinanet-layout reference model of test/reference with its
 * per-image focal loss). Prints img/s, ms/step, peak memory and the ratio to torchvision; writes JSON.
 *
 *   npx ts-node --transpile-only bench/train_throughput.ts --device cuda [--batch 8] [--size 640]
 *       [--steps 30] [--warmup 10] [--precisions fp32,bf16] [--profile trace.json] [--loader-images 160]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Command } from 'commander';
import { buildInfo, CocoDataset, DataLoader, Device, makeShapes, Model, setTf32, StepRecord, synchronize, Trainer } from '../lib';
import { writeJsonAtomic } from '../lib/io';
import { syntheticArrays, timeTrainingSteps } from './synthetic';
import { parseVariants, withEnv } from './variants';
import { pythonWithTorch, referenceEnv } from '../test/helpers/python';

interface Options {
  device: 'cpu' | 'cuda';
  batch: number;
  size: number;
  depth: number;
  steps: number;
  warmup: number;
  precisions: string;
  optimizer: 'sgd' | 'adamw';
  profile?: string;
  reference: boolean;
  resident: boolean;
  loaderImages?: number;
  loaderEpochs: number;
  loaderSource: number;
  decodeWorkers: string;
  decodeConcurrency: string;
  decoder: string;
  pipeline: string;
  rows: string;
  weightCasts: string;
  variants: string;
  repeat: number;
  out: string;
}

interface Row {
  system: string;
  precision: string;
  imagesPerSecond: number;
  msPerStep: number;
  peakMiB: number | null;
  note?: string;
}

/** The synthetic batch (bench/synthetic.ts), also written where the Python references read it (raw float32, little-endian). */
function makeBatch(o: Options, dir: string): { images: Float32Array; annotations: Float32Array } {
  const data = syntheticArrays(o.batch, o.size, 0);
  fs.writeFileSync(path.join(dir, 'images.f32'), Buffer.from(data.images.buffer));
  fs.writeFileSync(path.join(dir, 'annotations.f32'), Buffer.from(data.annotations.buffer));
  return data;
}

async function timeOnestage(o: Options, data: { images: Float32Array; annotations: Float32Array }, amp: boolean, fast: boolean, cudaGraph = false, pipeline = false, readFirst = false): Promise<Row> {
  const r = await timeTrainingSteps({ ...o, data, amp, fast, cudaGraph, pipeline, implementation: readFirst ? 'foreach' : 'auto' });
  const name = !fast
    ? 'plain (NCHW, per-parameter optimizer)'
    : cudaGraph
      ? `default (cudaGraph auto: step replayed as a CUDA graph${pipeline ? '; the next step asked for before the last ends, as Trainer.fit' : ''}${readFirst ? "; optimizer 'foreach': losses read before the update" : ''})`
      : o.device === 'cuda'
        ? 'eager (cudaGraph false; channels-last, cuDNN benchmark, multi-tensor update)'
        : 'default (multi-tensor update)';
  return {
    system: `onestage ${name}`,
    precision: amp ? 'bf16' : 'fp32',
    imagesPerSecond: r.imagesPerSecond,
    msPerStep: r.msPerStep,
    peakMiB: r.peakMiB,
    note: r.skipped > 0 ? `${r.skipped} skipped steps` : undefined,
  };
}

/**
 * The fastest configuration fed by the DataLoader instead of a resident batch: shapes JPEGs of
 * `--loader-source`² (default S², up to 8 objects), decoded, resized to S×S, normalised and collated on
 * the CPU, uploaded through page-locked memory off the training stream, `prefetch` batches ahead —
 * trained by Trainer.fit, with its pipeline (the next step asked for before the last ends) or without.
 * Epoch 0 warms up (and captures the graph); epochs 1…`--loader-epochs` are timed, each started ahead at
 * the previous one's last batch (`loader.prepare`).
 */
async function timeLoaderFed(o: Options, dir: string, amp: boolean, decoder: 'auto' | 'sharp', decodeWorkers: number | 'auto', decodeConcurrency: number | undefined, pipeline: boolean): Promise<Row> {
  const source = o.loaderSource ?? o.size;
  const data = path.join(dir, `shapes-${source}`);
  if (!fs.existsSync(data)) await makeShapes({ out: data, train: o.loaderImages, val: 0, size: source, classes: 10, seed: 3, maxObjects: 8 });
  const ds = await CocoDataset.open(path.join(data, 'instances_train.json'));
  const device = o.device as Device;
  const loader = new DataLoader(ds, { batchSize: o.batch, seed: 1, shuffle: true, prefetch: 4, device, transform: { minSide: o.size, maxSide: o.size }, decoder, decodeWorkers, ...(decodeConcurrency ? { decodeConcurrency } : {}) });
  const model = Model.retinanet({ depth: o.depth as 50, numClasses: 80, device, seed: 0 });
  const lr = o.optimizer === 'sgd' ? 0.01 : 1e-4;
  // the Trainer's defaults (cudaGraph 'auto'); Trainer.fit as a user runs it: epoch 0 warms up (and
  // captures the graph), the later ones are timed — each started ahead at the last one's last batch
  const trainer = new Trainer(model, { optimizer: { type: o.optimizer, lr, momentum: 0.9, weightDecay: 1e-4 }, amp });
  let images = 0, replayed = 0, steps = 0;
  let t0 = 0n;
  let elu0 = performance.eventLoopUtilization();
  trainer.on('step', (r: StepRecord) => {
    if (r.epoch === 0) return;
    images += r.ids.length;
    steps++;
    if (r.graph === 'replayed') replayed++;
  });
  trainer.on('epoch', (e: { epoch: number }) => {
    if (e.epoch !== 0) return;
    synchronize();
    t0 = process.hrtime.bigint();
    elu0 = performance.eventLoopUtilization();
  });
  await trainer.fit(loader, { epochs: 1 + o.loaderEpochs, pipeline });
  synchronize();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await loader.close();
  // the JavaScript thread's busy share (loader and trainer): near 100 % it is the ceiling, not decoding
  const elu = performance.eventLoopUtilization(elu0);
  trainer.dispose();
  model.dispose();
  return {
    system: `onestage default${device === 'cuda' ? ' (CUDA graph)' : ''}, fed by the DataLoader (decode, resize, collate, upload), Trainer.fit${pipeline ? '' : ' without the pipeline'}`,
    precision: amp ? 'bf16' : 'fp32',
    imagesPerSecond: images / seconds,
    msPerStep: (1000 * seconds) / steps,
    peakMiB: null, // timed after the capture: the graph's pool is not in a peak taken here
    note: `${o.loaderImages} JPEGs ${source}², ${o.loaderEpochs} timed epochs${source === o.size ? '' : ` resized to ${o.size}²`}, libuv pool ${process.env.UV_THREADPOOL_SIZE ?? 4}, decoder '${decoder}', ${loader.decodeWorkerCount} decode workers, ${loader.decodeConcurrency} decoded at once, pipeline ${pipeline ? 'on' : 'off'}, ${replayed}/${steps} steps replayed, event loop busy ${(100 * elu.utilization).toFixed(0)} % (${(elu.active / images).toFixed(2)} ms a picture)`,
  };
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--device <d>', 'cpu or cuda (default: cuda where there is one)', buildInfo().cudaAvailable ? 'cuda' : 'cpu')
    .option('--batch <n>', 'images per step', (v) => Number(v), 8)
    .option('--size <px>', 'square input side', (v) => Number(v), 640)
    .option('--depth <n>', 'ResNet depth', (v) => Number(v), 50)
    .option('--steps <n>', 'timed steps', (v) => Number(v), 30)
    .option('--repeat <n>', 'time the resident rows this many times, interleaved (A/B comparisons within one run)', (v) => Number(v), 1)
    .option('--warmup <n>', 'untimed steps', (v) => Number(v), 10)
    .option('--precisions <list>', 'fp32,bf16 (bf16: CUDA only)', 'fp32,bf16')
    .option('--optimizer <type>', 'sgd or adamw (both sides)', 'sgd')
    .option('--profile <file.json>', 'write a Kineto trace of 5 steps of the default configuration per precision')
    .option('--no-reference', 'skip the PyTorch references')
    .option('--loader-images <n>', 'also train from a DataLoader over this many generated images (0: not; default 160 on CUDA, 0 on the CPU)', (v) => Number(v))
    .option('--loader-epochs <n>', 'timed epochs of the DataLoader-fed rows (after one untimed)', (v) => Number(v), 2)
    .option('--loader-source <px>', 'side of those JPEGs, resized to --size by the loader (default: --size, no resize)', (v) => Number(v))
    .option('--decode-concurrency <list>', "the loader-fed rows' decodeConcurrency, e.g. 16,auto (a row each)", 'auto')
    .option('--decode-workers <list>', "the loader-fed rows' decodeWorkers, e.g. 0,auto (a row each)", 'auto')
    .option('--decoder <list>', "the loader-fed rows' decoder: auto (onestage's JPEG decoder), sharp, or auto,sharp (a row each)", 'auto')
    .option('--pipeline <list>', "the loader-fed rows' Trainer.fit pipeline: on (default), off, or on,off (a row each)", 'on')
    .option('--no-resident', 'skip the resident-batch rows (only the DataLoader-fed ones)')
    .option('--weight-casts <list>', "the bf16 resident rows' weight casts: copies (default: the convolution weights' bf16 copies, one multi-tensor copy each way), autocast (ONESTAGE_BF16_WEIGHTS=autocast: a cast per weight), or copies,autocast (a row each)", 'copies')
    .option('--variants <list>', "environment variants of the resident rows, interleaved: 'default' or NAME=VALUE (several joined by +), e.g. default,ONESTAGE_SHORTCUT_GRADIENTS=autograd (a row each)", 'default')
    .option('--rows <list>', 'the resident-batch rows: plain, eager, graph, graph-pipelined, graph-readfirst, graph-pipelined-readfirst (graph rows: CUDA only; -readfirst: the SGD update after the losses are read)', 'plain,eager,graph,graph-pipelined')
    .option('--out <file>', 'JSON results', path.join(__dirname, 'results', 'train-throughput.json'))
    .parse(process.argv)
    .opts<Options>();
  const info = buildInfo();
  if (o.device === 'cuda' && !info.cudaAvailable) throw new Error('--device cuda: no CUDA device here');
  if (o.device === 'cuda') setTf32(true); // PyTorch's default for cuDNN convolutions, on both sides
  const precisions = o.precisions.split(',').filter((p) => p === 'fp32' || (p === 'bf16' && o.device === 'cuda'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestage-train-bench-'));
  const data = makeBatch(o, dir);
  const rows: Row[] = [];
  // [fast, graph, pipeline, read first] of the resident rows asked for ('-readfirst': SGD's update after the host read, not queued)
  const named: Record<string, [boolean, boolean, boolean, boolean]> = {
    plain: [false, false, false, false], eager: [true, false, false, false], graph: [true, true, false, false], 'graph-pipelined': [true, true, true, false],
    'graph-readfirst': [true, true, false, true], 'graph-pipelined-readfirst': [true, true, true, true],
  };
  const asked = o.resident === false ? [] : o.rows.split(',');
  for (const r of asked) if (!(r in named)) throw new Error(`--rows: unknown row '${r}' (${Object.keys(named).join(', ')})`);
  const configs = asked.filter((r) => o.device === 'cuda' || !r.startsWith('graph')).map((r) => named[r]);
  const casts = o.weightCasts.split(',');
  for (const c of casts) if (c !== 'copies' && c !== 'autocast') throw new Error(`--weight-casts: unknown '${c}' (copies, autocast)`);
  if (!Number.isInteger(o.repeat) || o.repeat < 1) throw new Error(`--repeat: a positive integer, not ${o.repeat}`);
  const variants = parseVariants(o.variants);
  for (let round = 0; round < o.repeat; round++) {
    for (const p of precisions)
      for (const [fast, graph, pipeline, readFirst] of configs)
        for (const c of p === 'bf16' ? casts : ['copies'])
          for (const v of variants) {
            const env = { ...v.env, ...(c === 'autocast' ? { ONESTAGE_BF16_WEIGHTS: 'autocast' } : {}) };
            const r = await withEnv(env, () => timeOnestage(o, data, p === 'bf16', fast, graph, pipeline, readFirst));
            if (c === 'autocast') r.system += ' [autocast casts per weight]';
            if (v.name !== 'default') r.system += ` [${v.name}]`;
            console.error(`${r.system} ${r.precision}: ${r.imagesPerSecond.toFixed(1)} img/s, ${r.msPerStep.toFixed(1)} ms/step`);
            rows.push(r);
          }
  }
  o.loaderImages ??= o.device === 'cuda' ? 160 : 0;
  if (o.loaderImages > 0)
    for (const p of precisions)
      for (const d of o.decoder.split(',') as Array<'auto' | 'sharp'>)
        for (const w of o.decodeWorkers.split(','))
          for (const c of o.decodeConcurrency.split(','))
            for (const pipe of o.pipeline.split(',')) {
              const r = await timeLoaderFed(o, dir, p === 'bf16', d, w === 'auto' ? 'auto' : Number(w), c === 'auto' ? undefined : Number(c), pipe !== 'off');
              console.error(`${r.system} ${r.precision}: ${r.imagesPerSecond.toFixed(1)} img/s, ${r.msPerStep.toFixed(1)} ms/step (${r.note})`);
              rows.push(r);
            }
  let reference: Record<string, unknown> = {};
  const py = pythonWithTorch();
  if (o.reference && py) {
    const res = spawnSync(py, [path.join(__dirname, 'reference_train.py'), dir, o.device, String(o.depth), String(o.batch), String(o.size), String(o.warmup), String(o.steps), precisions.join(','), o.optimizer], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 1 << 24 });
    if (res.status !== 0) console.error(`reference failed: ${res.stderr}`);
    for (const line of res.stdout.split('\n').filter(Boolean)) {
      const v = JSON.parse(line) as Row & { flopsPerStep?: number; matmulTflops?: number };
      if (v.flopsPerStep !== undefined || v.matmulTflops !== undefined) reference = { ...reference, ...v };
      else rows.push(v);
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
  const flops = reference.flopsPerStep as number | undefined;
  const peakRate = reference.matmulTflops as number | undefined;
  const machine = o.device === 'cuda' ? `${info.deviceCount} CUDA device(s)` : `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}`;
  console.log(`\nRetinaNet ResNet-${o.depth} FPN training, batch ${o.batch}, ${o.size}×${o.size}, ${o.optimizer.toUpperCase()}, ${o.device} (${machine}), onestage ${info.version} on LibTorch ${info.torchVersion}`);
  if (flops) console.log(`model FLOPs per step (forward + backward, torch.utils.flop_counter): ${(flops / 1e12).toFixed(2)} TFLOP${peakRate ? `; measured bf16 matrix-product rate ${peakRate.toFixed(0)} TFLOP/s` : ''}`);
  console.log('\n| system | precision | img/s | ms/step | peak MiB | vs torchvision | MFU |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const tv = rows.find((x) => x.system.startsWith('torchvision') && x.precision === r.precision);
    const ratio = tv ? (r.imagesPerSecond / tv.imagesPerSecond).toFixed(2) + '×' : '';
    const mfu = flops && peakRate ? ((flops / (r.msPerStep / 1000) / 1e12 / peakRate) * 100).toFixed(1) + ' %' : '';
    console.log(`| ${r.system} | ${r.precision} | ${r.imagesPerSecond.toFixed(1)} | ${r.msPerStep.toFixed(1)} | ${r.peakMiB === null ? '' : r.peakMiB.toFixed(0)} | ${ratio} | ${mfu} |${r.note ? ' ' + r.note : ''}`);
  }
  fs.mkdirSync(path.dirname(o.out), { recursive: true });
  writeJsonAtomic(o.out, { machine, device: o.device, batch: o.batch, size: o.size, depth: o.depth, steps: o.steps, warmup: o.warmup, optimizer: o.optimizer, flopsPerStep: flops, matmulTflops: peakRate, rows }, 1);
  console.log(`\nwritten ${path.relative(process.cwd(), o.out)}`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
