/**
 * Inference benchmark: RetinaNet detect() (forward + post-processing, results on the host) at
 * batch 1 and 8, side by side with the PyTorch references in the same run on identical shapes.
 *   npx ts-node --transpile-only bench/inference.ts [--device cuda] [--depth 50] [--size 640]
 * Prints a table and writes bench/results/inference-<device>.json.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { buildInfo, Model, profilerAvailable, setCudnnBenchmark, setTf32, startProfiler, stopProfiler, synchronize, Tensor } from '../lib';
import { pythonWithTorch, referenceEnv } from '../test/helpers/python';
import { timeMs } from './timing';
import { parseVariants, withEnv } from './variants';

interface Row {
  system: string;
  batch: number;
  ms: number;
}

async function main(): Promise<void> {
  const opts = new Command()
    .option('--device <device>', 'cpu or cuda', 'cpu')
    .option('--depth <n>', 'ResNet depth', '50')
    .option('--size <px>', 'square input size', '640')
    .option('--batches <list>', 'batch sizes', '1,8')
    .option('--warmup <n>', 'untimed runs', '')
    .option('--iters <n>', 'timed runs', '')
    .option('--layouts <list>', "only these onestage rows (names as in the table, e.g. 'channels-last + bf16 + CUDA graph'), comma-separated")
    .option('--repeat <n>', 'time the rows this many times, interleaved (one model per kind kept across rounds: A/B comparisons)', '1')
    .option('--variants <list>', "environment variants of the CUDA rows, interleaved: 'default' or NAME=VALUE (several joined by +), e.g. default,ONESTAGE_CONV_FUSION=off (a row each, a model each: detect graphs are kept per model)", 'default')
    .option('--profile <file.json>', "write a Kineto trace of 5 detect calls of the first row's layout at the largest batch, per variant (file-<variant>.json)")
    .option('--no-reference', 'skip the PyTorch references')
    .parse()
    .opts<{ device: 'cpu' | 'cuda'; depth: string; size: string; batches: string; warmup: string; iters: string; layouts?: string; repeat: string; variants: string; profile?: string; reference: boolean }>();
  const device = opts.device;
  const gpu = device === 'cuda';
  const warmup = Number(opts.warmup || (gpu ? 10 : 1));
  const iters = Number(opts.iters || (gpu ? 30 : 3));
  const depth = Number(opts.depth) as 50;
  const size = Number(opts.size);
  const batches = opts.batches.split(',').map(Number);
  if (gpu) setTf32(true); // PyTorch's default for convolutions; both sides run the same way
  const rows: Row[] = [];
  const model = Model.retinanet({ depth, numClasses: 80, device, seed: 0 }).eval();
  // the bf16 rows once more with autocast's cast per weight instead of the weights' bf16 copies
  // (ONESTAGE_BF16_WEIGHTS=autocast), on a second model of the same weights: a detect graph is kept per
  // model and shape, and replays what its capture recorded
  let castsModel: Model | undefined;
  // on CUDA also channels-last with cuDNN's benchmark mode (what a Trainer leaves a CUDA model in), in
  // float32 (TF32) and with the bf16 forward (detect's amp), each also replayed as a CUDA graph (detect's
  // cudaGraph: the warm-up calls capture it)
  const all = gpu
    ? ['NCHW', 'channels-last', 'channels-last + bf16', 'channels-last + CUDA graph', 'channels-last + bf16 + CUDA graph', 'channels-last + bf16 (autocast casts)', 'channels-last + bf16 + CUDA graph (autocast casts)']
    : ['NCHW'];
  const chosen = opts.layouts ? opts.layouts.split(',').map((l) => l.trim()) : all;
  for (const l of chosen) if (!all.includes(l)) throw new Error(`--layouts: unknown row '${l}' (${all.join('; ')})`);
  if (Number(opts.repeat) > 1 && chosen.includes('NCHW')) throw new Error('--repeat: the NCHW row cannot be repeated (the model is channels-last after it)');
  const layouts = Array.from({ length: Number(opts.repeat) }, () => chosen).flat();
  const variants = parseVariants(opts.variants);
  if (!gpu && variants.some((v) => v.name !== 'default')) throw new Error('--variants: CUDA rows only');
  // a model per variant other than the default and casts or copies (the same seed: the same weights; detect graphs are kept per model
  // and replay what their capture recorded), channels-last as the default's after its first row
  const variantModels = new Map<string, Model>();
  const modelFor = (casts: boolean, v: string): Model => {
    if (v === 'default') return casts ? (castsModel ??= Model.retinanet({ depth, numClasses: 80, device, seed: 0 }).eval().channelsLast(true)) : model;
    const key = `${casts}|${v}`;
    if (!variantModels.has(key)) variantModels.set(key, Model.retinanet({ depth, numClasses: 80, device, seed: 0 }).eval().channelsLast(true));
    return variantModels.get(key)!;
  };
  if (gpu && !layouts.includes('NCHW')) {
    model.channelsLast(true);
    setCudnnBenchmark(true);
  }
  for (const layout of layouts) {
    if (layout === 'channels-last') {
      model.channelsLast(true);
      setCudnnBenchmark(true);
    }
    const amp = layout.includes('bf16');
    const cudaGraph = layout.includes('CUDA graph');
    const casts = layout.endsWith('(autocast casts)');
    for (const b of batches) {
      const x = Tensor.from(Float32Array.from({ length: b * 3 * size * size }, (_, i) => Math.sin(i * 0.37)), [b, 3, size, size], { device });
      for (const v of layout === 'NCHW' ? [{ name: 'default', env: {} }] : variants) {
        const m = modelFor(casts, v.name);
        const env = { ...v.env, ...(casts ? { ONESTAGE_BF16_WEIGHTS: 'autocast' } : {}) };
        const ms = await withEnv(env, () => timeMs(() => m.detect(x, { amp, cudaGraph }), warmup, iters));
        const system = `onestage ${layout}${v.name === 'default' ? '' : ` [${v.name}]`}`;
        rows.push({ system: `${system} (LibTorch ${buildInfo().torchVersion})`, batch: b, ms });
        console.error(`${system} batch ${b}: ${ms.toFixed(1)} ms`);
      }
      x.dispose();
    }
  }
  if (opts.profile && gpu && profilerAvailable()) {
    const layout = chosen[0];
    const b = Math.max(...batches);
    const x = Tensor.from(Float32Array.from({ length: b * 3 * size * size }, (_, i) => Math.sin(i * 0.37)), [b, 3, size, size], { device });
    for (const v of variants) {
      const m = modelFor(layout.endsWith('(autocast casts)'), v.name);
      const options = { amp: layout.includes('bf16'), cudaGraph: layout.includes('CUDA graph') };
      const file = opts.profile.replace(/\.json$/, '') + `-${v.name.replace(/[^A-Za-z0-9]+/g, '_')}.json`;
      await withEnv(v.env, async () => {
        for (let i = 0; i < 4; i++) await m.detect(x, options);
        synchronize();
        startProfiler();
        for (let i = 0; i < 5; i++) await m.detect(x, options);
        synchronize();
        stopProfiler(file);
      });
      console.error(`profile of '${layout}' batch ${b} [${v.name}]: ${file}`);
    }
    x.dispose();
  }
  castsModel?.dispose();
  for (const m of variantModels.values()) m.dispose();
  model.dispose();
  const py = pythonWithTorch();
  if (opts.reference && py) {
    const res = spawnSync(py, [path.join(__dirname, 'reference_inference.py'), device, String(depth), String(size), batches.join(','), String(warmup), String(iters)], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 1 << 24 });
    if (res.status !== 0) console.error(`reference failed: ${res.stderr}`);
    for (const line of res.stdout.split('\n').filter(Boolean)) rows.push(JSON.parse(line) as Row);
  }
  const machine = gpu ? `${buildInfo().deviceCount} CUDA device(s)` : `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}`;
  console.log(`\nRetinaNet ResNet-${depth} inference, ${size}×${size}, ${device} (${machine}); detect = forward + post-processing\n`);
  console.log('| system | batch | ms / batch | img/s | vs onestage |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const ours = rows.find((o) => o.system.startsWith('onestage NCHW') && o.batch === r.batch);
    const ratio = ours ? (r.ms / ours.ms).toFixed(2) + '×' : '';
    console.log(`| ${r.system} | ${r.batch} | ${r.ms.toFixed(1)} | ${((r.batch * 1000) / r.ms).toFixed(1)} | ${ratio} |`);
  }
  const outDir = path.join(__dirname, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `inference-${device}.json`);
  fs.writeFileSync(file + '.tmp', JSON.stringify({ machine, device, depth, size, warmup, iters, rows }, null, 1));
  fs.renameSync(file + '.tmp', file);
  console.log(`\nwritten ${path.relative(process.cwd(), file)}`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
