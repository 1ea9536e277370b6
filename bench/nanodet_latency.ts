/**
 * Inference latency at batch 1 (forward + post-processing, `detect`): NanoDet-Plus-m (ShuffleNetV2 1.0x +
 * Ghost-PAN) next to NanoDet-Plus on ResNet-18 + FPN and RetinaNet ResNet-18, 80 classes, random weights.
 * With `--train-batch N`: also training throughput of the same models on a synthetic batch of N images
 * (8 boxes each; the Trainer's default configuration, AdamW 1e-3, weight decay 0.05, clipping at 35 as
 * NanoDet-Plus' configs), fp32 and (CUDA) bf16, and in the same run the NanoDet-Plus-m reference
 * (bench/reference_nanodet_train.py: NanoDet's modules, the per-image DSL loop) on the same batch.
 *
 *   npx ts-node --transpile-only bench/nanodet_latency.ts [--size 416] [--iterations 10] [--device cpu]
 *       [--train-batch 32] [--steps 20] [--warmup 5] [--models 0,2] [--no-reference] [--out bench/results/nanodet-latency-<device>.json]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildInfo, Device, Model, setTf32, synchronize, Tensor } from '../lib';
import { writeJsonAtomic } from '../lib/io';
import { pythonWithTorch, referenceEnv } from '../test/helpers/python';
import { syntheticArrays, timeTrainingSteps } from './synthetic';

async function main(): Promise<void> {
  const { Command } = await import('commander');
  const o = new Command()
    .option('--size <px>', 'square input side', '416')
    .option('--iterations <n>', 'timed runs', '10')
    .option('--device <d>', "'auto', 'cpu' or 'cuda'", 'auto')
    .option('--train-batch <n>', 'also time training steps on a batch of this many images (0: not)', '0')
    .option('--steps <n>', 'timed training steps', '20')
    .option('--warmup <n>', 'untimed training steps', '5')
    .option('--out <file>', 'JSON results (default bench/results/nanodet-latency-<device>.json)')
    .option('--models <list>', 'which models, by index in the table (comma-separated; default all)')
    .option('--no-reference', 'skip the NanoDet-Plus-m reference training loop')
    .option('--profile <file.json>', 'CUDA: a Kineto trace of 5 graph-replayed bf16 steps per model (-<model index> added)')
    .option('--nchw', 'CUDA training rows: also with NCHW weights and inputs (the default is channels-last)')
    .parse()
    .opts<{ size: string; iterations: string; device: string; trainBatch: string; steps: string; warmup: string; out?: string; models?: string; reference: boolean; nchw?: boolean; profile?: string }>();
  const device: Device = o.device === 'auto' ? (buildInfo().cudaAvailable ? 'cuda' : 'cpu') : (o.device as Device);
  const size = Number(o.size);
  if (device === 'cuda') setTf32(true); // PyTorch's default for cuDNN convolutions, on both sides
  const allModels: Array<[string, () => Model]> = [
    ['NanoDet-Plus-m (ShuffleNetV2 1.0x, Ghost-PAN 96)', () => Model.nanodetPlus({ preset: 'm-416', numClasses: 80, device, seed: 0 })],
    ['NanoDet-Plus-m-1.5x (ShuffleNetV2 1.5x, Ghost-PAN 128)', () => Model.nanodetPlus({ preset: 'm-1.5x-416', numClasses: 80, device, seed: 0 })],
    ['NanoDet-Plus ResNet-18 + FPN 96', () => Model.nanodetPlus({ depth: 18, numClasses: 80, device, seed: 0 })],
    ['RetinaNet ResNet-18 + FPN 256', () => Model.retinanet({ depth: 18, numClasses: 80, device, seed: 0 })],
  ];
  const models = o.models
    ? o.models.split(',').map((k) => {
        const m = allModels[Number(k)];
        if (!m) throw new RangeError(`--models: expected indices 0–${allModels.length - 1} but received '${k}'`);
        return m;
      })
    : allModels;
  const rows: string[] = [];
  const latency: Array<{ model: string; parameters: number; msPerImage: number }> = [];
  const x = Tensor.from(Float32Array.from({ length: 3 * size * size }, (_, i) => Math.sin(i * 0.37)), [1, 3, size, size], { device });
  for (const [name, make] of models) {
    const model = make().eval();
    const sd = model.stateDict();
    // the inference network: NanoDet-Plus without its AGM (aux_fpn, aux_head)
    const params = Object.entries(sd).filter(([k]) => !/^aux_|running_|num_batches/.test(k)).reduce((a, [, v]) => a + v.shape.reduce((p, q) => p * q, 1), 0);
    for (const v of Object.values(sd)) v.dispose();
    await model.detect(x);
    synchronize();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < Number(o.iterations); i++) await model.detect(x);
    synchronize();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6 / Number(o.iterations);
    rows.push(`| ${name} | ${(params / 1e6).toFixed(2)} M | ${ms.toFixed(1)} |`);
    latency.push({ model: name, parameters: params, msPerImage: ms });
    console.error(rows[rows.length - 1]);
    model.dispose();
  }
  x.dispose();
  const machine = device === 'cuda' ? `${buildInfo().deviceCount} CUDA device(s)` : `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}`;
  console.log([`${size}×${size}, batch 1, ${device} (${machine})`, '', '| model | parameters (inference) | ms per image |', '| --- | --- | --- |', ...rows].join('\n'));
  const training = Number(o.trainBatch) > 0 ? await trainingThroughput(models, device, size, Number(o.trainBatch), Number(o.steps), Number(o.warmup), o.reference, o.nchw ?? false, o.profile) : [];
  const out = o.out ?? path.join(__dirname, 'results', `nanodet-latency-${device}.json`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  writeJsonAtomic(out, { machine, device, size, latency, training }, 1);
}

interface TrainingRow {
  system: string;
  precision: string;
  imagesPerSecond: number;
  msPerStep: number;
}

/** Training img/s of each model (the Trainer's default path, on CUDA both eager and replayed as a CUDA graph) and of the NanoDet-Plus-m reference, same batch. */
async function trainingThroughput(models: Array<[string, () => Model]>, device: Device, size: number, batch: number, steps: number, warmup: number, reference: boolean, nchw: boolean, profile?: string): Promise<TrainingRow[]> {
  const data = syntheticArrays(batch, size, 0);
  const precisions = device === 'cuda' ? ['fp32', 'bf16'] : ['fp32'];
  const optimizerOptions = { lr: 1e-3, weightDecay: 0.05, clipGradNorm: 35 };
  const rows: TrainingRow[] = [];
  for (const precision of precisions)
    for (const [index, [name, make]] of models.entries())
      for (const [cudaGraph, channelsLast] of device === 'cuda' ? [[false, true], [true, true], ...(nchw ? [[false, false], [true, false]] : [])] : [[false, undefined]]) {
        const r = await timeTrainingSteps({ device, batch, size, depth: 18, steps, warmup: Math.max(warmup, cudaGraph ? 5 : 0), optimizer: 'adamw', data, amp: precision === 'bf16', fast: true, cudaGraph: cudaGraph as boolean, channelsLast, makeModel: make, optimizerOptions,
          profile: profile && cudaGraph && channelsLast && precision === 'bf16' ? profile.replace(/\.json$/, `-${index}.json`) : undefined });
        const how = device === 'cuda' ? `${cudaGraph ? ', CUDA graph' : ', eager'}${channelsLast === false ? ', NCHW' : ''}` : '';
        rows.push({ system: `onestage ${name}${how}`, precision, imagesPerSecond: r.imagesPerSecond, msPerStep: r.msPerStep });
        console.error(`training ${name}${how} ${precision}: ${r.imagesPerSecond.toFixed(1)} img/s`);
      }
  const py = reference ? pythonWithTorch() : null;
  if (py) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestage-nanodet-bench-'));
    fs.writeFileSync(path.join(dir, 'images.f32'), Buffer.from(data.images.buffer));
    fs.writeFileSync(path.join(dir, 'annotations.f32'), Buffer.from(data.annotations.buffer));
    const res = spawnSync(py, [path.join(__dirname, 'reference_nanodet_train.py'), dir, device, '1.0x', '96', '96', '192', String(batch), String(size), String(warmup), String(steps), precisions.join(',')], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 1 << 24 });
    fs.rmSync(dir, { recursive: true, force: true });
    if (res.status !== 0) console.error(`reference failed: ${res.stderr.slice(-2000)}`);
    for (const line of res.stdout.split('\n').filter(Boolean)) rows.push(JSON.parse(line) as TrainingRow);
  }
  console.log([``, `Training, batch ${batch}, ${size}×${size}, AdamW, ${device}`, '', '| system | precision | img/s | ms/step |', '| --- | --- | --- | --- |', ...rows.map((r) => `| ${r.system} | ${r.precision} | ${r.imagesPerSecond.toFixed(1)} | ${r.msPerStep.toFixed(1)} |`)].join('\n'));
  return rows;
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
