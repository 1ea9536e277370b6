/**
 * Data-parallel scaling: RetinaNet training steps (synthetic batches, fixed per-GPU batch) with 1
 * process on 1 GPU and with N processes on N GPUs (c10d NCCL), in one invocation; prints img/s of
 * each, the scaling efficiency img/s(N) ÷ (N × img/s(1)), and writes bench/results/dist-scaling.json.
 *
 *   ts-node bench/dist_scaling.ts --gpus 2,4,8 --batch 8,16 --size 640 --depth 50 --amp [--cuda-graph]
 *   (on the CPU: --device cpu uses Gloo processes instead of GPUs)
 * --cuda-graph: every run (the 1-process one too) replays its steps as CUDA graphs (cudaGraph true:
 * the data-parallel graphs with the all-reduces captured); without it every run is eager.
 */
import { Command } from 'commander';
import * as path from 'node:path';
import { buildInfo, Device, distEnvironment, launchWorkers, Model, ProcessGroup, setTf32, synchronize, Trainer } from '../lib';
import { writeJsonAtomic } from '../lib/io';
import { syntheticArrays, syntheticBatch } from './synthetic';

interface Options {
  gpus: number;
  batch: number;
  size: number;
  depth: number;
  steps: number;
  warmup: number;
  amp: boolean;
  cudaGraph: boolean;
  device: 'cuda' | 'cpu';
  out: string;
}

interface WorkerResult {
  worldSize: number;
  imagesPerSecond: number;
  msPerStep: number;
  skipped: number;
  /** Timed steps replayed as CUDA graphs. */
  replayed: number;
}

async function worker(o: Options): Promise<void> {
  const env = distEnvironment();
  const device: Device = o.device === 'cuda' ? `cuda:${env?.localRank ?? 0}` : 'cpu';
  if (o.device === 'cuda') setTf32(true); // cuDNN's default (LibTorch and PyTorch)
  const group = env && env.worldSize > 1 ? await ProcessGroup.fromEnv({ device, timeoutSeconds: 600 }) : undefined;
  const model = Model.retinanet({ depth: o.depth as 50, numClasses: 80, device, seed: 0 });
  const trainer = new Trainer(model, { optimizer: { lr: 1e-4 }, amp: o.amp, processGroup: group, cudaGraph: o.cudaGraph });
  const batch = syntheticBatch(syntheticArrays(o.batch, o.size, env?.rank ?? 0), o.batch, o.size, device);
  let skipped = 0;
  let replayed = 0;
  for (let i = 0; i < o.warmup; i++) skipped += (await trainer.step(batch, 1e-4)).skipped ? 1 : 0;
  synchronize();
  await group?.barrier('timing');
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < o.steps; i++) {
    const r = await trainer.step(batch, 1e-4);
    skipped += r.skipped ? 1 : 0;
    replayed += r.graph === 'replayed' ? 1 : 0;
  }
  synchronize();
  await group?.barrier('timing');
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const worldSize = group?.worldSize ?? 1;
  const result: WorkerResult = { worldSize, imagesPerSecond: (worldSize * o.batch * o.steps) / seconds, msPerStep: (1000 * seconds) / o.steps, skipped, replayed };
  if ((env?.rank ?? 0) === 0) process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  trainer.dispose();
  model.dispose();
  group?.dispose();
}

async function run(n: number, argv: string[]): Promise<WorkerResult> {
  let found: WorkerResult | undefined;
  const r = await launchWorkers(n, {
    args: argv,
    command: { execPath: process.execPath, execArgv: ['-r', 'ts-node/register/transpile-only'], script: __filename },
    out: (line, stream) => {
      const at = line.indexOf('RESULT ');
      if (at >= 0) found = JSON.parse(line.slice(at + 7)) as WorkerResult;
      else (stream === 'stdout' ? process.stdout : process.stderr).write(line + '\n');
    },
  });
  if (r.exitCode !== 0 || !found) throw new Error(`the ${n}-process run failed (rank ${r.failed?.rank} exit ${r.failed?.code ?? r.failed?.signal})`);
  return found;
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--gpus <list>', 'processes (GPUs) of the parallel runs, comma-separated', '2')
    .option('--batch <list>', 'images per GPU and step; several (comma-separated): a table each, in one invocation', '8')
    .option('--size <px>', 'square input side', (v) => Number(v), 640)
    .option('--depth <n>', 'ResNet depth', (v) => Number(v), 50)
    .option('--steps <n>', 'timed steps', (v) => Number(v), 30)
    .option('--warmup <n>', 'untimed steps', (v) => Number(v), 8)
    .option('--amp', 'bf16 autocast', false)
    .option('--cuda-graph', 'every run with cudaGraph true (else every run eager)', false)
    .option('--device <d>', "'cuda' (NCCL, a GPU per process) or 'cpu' (Gloo)", 'cuda')
    .option('--out <file>', 'JSON results', path.join(__dirname, 'results', 'dist-scaling.json'))
    .parse(process.argv)
    .opts<Omit<Options, 'gpus' | 'batch'> & { gpus: string; batch: string }>();
  const counts = o.gpus.split(',').map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--gpus expects comma-separated process counts, received ${o.gpus}`);
  const batches = o.batch.split(',').map(Number);
  if (batches.some((b) => !Number.isInteger(b) || b < 1)) throw new Error(`--batch expects comma-separated image counts, received ${o.batch}`);
  // a worker gets one batch size (the launcher passes --batch B)
  if (process.env.WORLD_SIZE) return worker({ ...o, batch: batches[0], gpus: Number(process.env.WORLD_SIZE) });
  const info = buildInfo();
  const most = Math.max(...counts);
  if (o.device === 'cuda' && info.deviceCount < most) throw new Error(`--gpus ${o.gpus} needs ${most} GPUs; this machine has ${info.deviceCount}`);
  const tables: Array<{ batch: number; one: WorkerResult; many: Array<WorkerResult & { efficiency: number }> }> = [];
  for (const batch of batches) {
    const argv = [...withoutOption(process.argv.slice(2), '--batch'), '--batch', String(batch)];
    const one = await run(1, argv);
    const many: Array<WorkerResult & { efficiency: number }> = [];
    for (const n of counts) {
      const r = await run(n, argv);
      many.push({ ...r, efficiency: r.imagesPerSecond / (n * one.imagesPerSecond) });
    }
    console.log(`\nRetinaNet ResNet-${o.depth}, ${o.size}×${o.size}, ${batch} images per ${o.device === 'cuda' ? 'GPU' : 'process'} and step, ${o.amp ? 'bf16 autocast' : 'fp32'} (${o.device === 'cuda' ? 'NCCL' : 'Gloo'}), ${o.cudaGraph ? 'CUDA graphs' : 'eager steps'}, onestage ${info.version}, LibTorch ${info.torchVersion}`);
    console.log('| processes | img/s | ms/step | scaling efficiency | replayed steps | skipped steps |\n| --- | --- | --- | --- | --- | --- |');
    for (const r of [{ ...one, efficiency: 1 }, ...many])
      console.log(`| ${r.worldSize} | ${r.imagesPerSecond.toFixed(1)} | ${r.msPerStep.toFixed(1)} | ${(100 * r.efficiency).toFixed(1)} % | ${r.replayed} of ${o.steps} | ${r.skipped} |`);
    tables.push({ batch, one, many });
    // written after each batch size: a run cut short keeps what it measured
    writeJsonAtomic(o.out, { date: new Date().toISOString(), options: o, tables, torch: info.torchVersion }, 2);
  }
}

/** argv without `name value` / `name=value`. */
function withoutOption(argv: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name) i++;
    else if (!argv[i].startsWith(`${name}=`)) out.push(argv[i]);
  }
  return out;
}

main().catch((err: Error) => {
  console.error(`dist_scaling: ${err.message}`);
  process.exit(1);
});
