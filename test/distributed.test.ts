/**
 * Data-parallel training on c10d Gloo (CPU, loopback): 2 processes end with the weights of one
 * process trained on the same global batches, evaluate as one, resume across process counts, and a
 * killed or hung rank makes the other stop with an error within the timeout. Also the loader's
 * shards and the `--nproc` launcher.
 */
import test from 'ava';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildInfo, CocoDataset, DataLoader, disposeBatch, distBackends, distEnvironment, getNumThreads, launchWorkers, makeShapes, Model, setNumThreads } from '../lib';
import { freePort, withoutNproc } from '../lib/jobs/launch';
import { readFloat32Tensors } from '../lib/safetensors';
import { tempDir } from './helpers/python';

const worker = path.join(__dirname, 'helpers', 'dist_worker.ts');
const cli = path.resolve(__dirname, '..', 'bin', 'onestage.js');
const hasGloo = distBackends().includes('gloo');
const glooTest = hasGloo ? test.serial : test.skip;
// NCCL needs a GPU per process
const ncclTest = distBackends().includes('nccl') && buildInfo().deviceCount >= 2 ? test.serial : test.skip;
const ncclOneGpuTest = distBackends().includes('nccl') && buildInfo().deviceCount >= 1 ? test.serial : test.skip;

let shapes: Promise<string> | undefined;
function data(): Promise<string> {
  shapes ??= (async () => {
    const dir = tempDir('onestage-dist-');
    await makeShapes({ out: dir, train: 16, val: 6, size: 64, classes: 2, seed: 4, maxObjects: 3 });
    return dir;
  })();
  return shapes;
}

interface WorkerRun {
  code: number;
  stdout: string;
  stderr: string;
  /** graphs: steps by StepRecord.graph ('off', 'eager', 'captured', 'replayed'). */
  result?: { weights?: string; stats?: number[]; losses: number[]; steps: number; worldSize: number; graphs: Record<string, number> };
}

function parseResult(stdout: string): WorkerRun['result'] {
  const line = stdout.split('\n').find((l) => l.includes('RESULT '));
  return line ? JSON.parse(line.slice(line.indexOf('RESULT ') + 7)) : undefined;
}

/** One process, no launcher variables. */
function single(config: object): WorkerRun {
  const env: NodeJS.ProcessEnv = { ...process.env, ONESTAGE_TEST_DIST: JSON.stringify(config) };
  for (const k of ['WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete env[k];
  const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', worker], { env, encoding: 'utf8' });
  return { code: r.status ?? 1, stdout: r.stdout, stderr: r.stderr, result: parseResult(r.stdout) };
}

/** `n` processes through the launcher (rank-prefixed output). */
async function parallel(n: number, config: object, env: NodeJS.ProcessEnv = {}): Promise<WorkerRun> {
  let stdout = '';
  let stderr = '';
  const r = await launchWorkers(n, {
    args: [],
    command: { execPath: process.execPath, execArgv: ['-r', 'ts-node/register/transpile-only'], script: worker },
    env: { ...env, ONESTAGE_TEST_DIST: JSON.stringify(config) },
    out: (line, stream) => (stream === 'stdout' ? (stdout += line + '\n') : (stderr += line + '\n')),
  });
  return { code: r.exitCode, stdout, stderr, result: parseResult(stdout) };
}

/** Sets the first `classes` values of every `gfl_cls` bias in a safetensors file to `value`, in place. */
function setClassBias(file: string, classes: number, value: number): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; data_offsets: [number, number] }>;
  for (const [name, e] of Object.entries(header))
    if (/gfl_cls(\.\d+)?\.bias$/.test(name)) for (let i = 0; i < classes; i++) buf.writeFloatLE(value, 8 + n + e.data_offsets[0] + 4 * i);
  fs.writeFileSync(file, buf);
}

function maxWeightDifference(a: string, b: string): { max: number; worst: string; tensors: number } {
  const wa = readFloat32Tensors(a);
  const wb = readFloat32Tensors(b);
  let max = 0;
  let worst = '';
  for (const [name, x] of wa) {
    const y = wb.get(name);
    if (!y || y.length !== x.length) return { max: Infinity, worst: name, tensors: wa.size };
    for (let i = 0; i < x.length; i++) {
      const d = Math.abs(x[i] - y[i]);
      if (d > max) {
        max = d;
        worst = name;
      }
    }
  }
  return { max, worst, tensors: wa.size };
}

test('dist: the launcher variables are read as torchrun sets them', (t) => {
  t.is(distEnvironment({}), undefined);
  t.deepEqual(distEnvironment({ WORLD_SIZE: '4', RANK: '2', LOCAL_RANK: '0', MASTER_ADDR: 'node1', MASTER_PORT: '1234' }), { rank: 2, worldSize: 4, localRank: 0, masterAddr: 'node1', masterPort: 1234, agentStore: false });
  t.throws(() => distEnvironment({ WORLD_SIZE: '2', RANK: '2', MASTER_ADDR: 'a', MASTER_PORT: '1' }), { message: /RANK must be an integer in \[0, 1\]/ });
  t.throws(() => distEnvironment({ WORLD_SIZE: '2', RANK: '0', MASTER_PORT: '1' }), { message: /MASTER_ADDR is not set/ });
  t.throws(() => distEnvironment({ WORLD_SIZE: '2', RANK: '0', MASTER_ADDR: 'a' }), { message: /MASTER_PORT is not set/ });
  t.deepEqual(withoutNproc(['train', '--nproc', '2', '--epochs', '1', '--nproc=3']), ['train', '--epochs', '1']);
});

test('dist: sharded loaders split each global batch evenly, with the single-process random choices', async (t) => {
  const ds = await CocoDataset.open(path.join(await data(), 'instances_train.json'));
  const transform = { minSide: 64, maxSide: 64 };
  // 16 images, 3 per rank × 2 ranks: global batches of 6, the last of 4 (2 per rank, no padding)
  const whole = new DataLoader(ds, { batchSize: 6, seed: 5, transform });
  const shards = [0, 1].map((rank) => new DataLoader(ds, { batchSize: 3, seed: 5, transform, shard: { rank, count: 2 } }));
  t.is(shards[0].length, whole.length);
  const global = await whole.batchIndices(1);
  const parts = await Promise.all(shards.map((s) => s.batchIndices(1)));
  global.forEach((g, k) => t.deepEqual([...parts[0][k], ...parts[1][k]], g));
  // a global batch of an odd size is padded with its own first images
  const three = [0, 1].map((rank) => new DataLoader(ds, { batchSize: 3, seed: 5, transform, shard: { rank, count: 2 }, groupByAspectRatio: false }));
  const odd = new DataLoader(ds, { batchSize: 5, seed: 5, transform, shard: { rank: 0, count: 3 }, groupByAspectRatio: false });
  const oddPlan = await odd.batchIndices(0);
  t.true(oddPlan.every((b) => b.length === 5 || b.length === 1), JSON.stringify(oddPlan)); // 16 = 15 + 1: the last global batch of 1 padded to 3
  const a = await three[0].batchIndices(0);
  const b = await three[1].batchIndices(0);
  t.deepEqual(new Set([...a.flat(), ...b.flat()]).size, 16);
  // the images' flips are those of the single-process batch
  const flipsOf = async (l: DataLoader) => {
    const out: boolean[][] = [];
    for await (const batch of l.epoch(2)) {
      out.push(batch.flipped);
      disposeBatch(batch);
    }
    return out;
  };
  const wholeFlips = await flipsOf(whole);
  const shardFlips = await Promise.all(shards.map(flipsOf));
  wholeFlips.forEach((f, k) => t.deepEqual([...shardFlips[0][k], ...shardFlips[1][k]], f));
  t.throws(() => new DataLoader(ds, { shard: { rank: 2, count: 2 } }), { message: /options\.shard\.rank/ });
});

test.serial('launchWorkers: each worker gets OMP_NUM_THREADS = this process\'s threads ÷ workers, unless the environment sets it', async (t) => {
  const script = path.join(tempDir('onestage-launch-threads-'), 'threads.js');
  fs.writeFileSync(script, "console.log('THREADS ' + process.env.OMP_NUM_THREADS)\n");
  const run = async (env?: NodeJS.ProcessEnv) => {
    const lines: string[] = [];
    const r = await launchWorkers(2, { args: [], env, command: { execPath: process.execPath, execArgv: [], script }, out: (line) => lines.push(line) });
    t.is(r.exitCode, 0);
    return lines.filter((l) => l.includes('THREADS ')).map((l) => l.slice(l.indexOf('THREADS ') + 8));
  };
  const before = getNumThreads();
  const saved = { OMP_NUM_THREADS: process.env.OMP_NUM_THREADS, MKL_NUM_THREADS: process.env.MKL_NUM_THREADS };
  delete process.env.OMP_NUM_THREADS;
  delete process.env.MKL_NUM_THREADS;
  try {
    setNumThreads(5);
    t.deepEqual(await run(), ['2', '2']);
    setNumThreads(1);
    t.deepEqual(await run(), ['1', '1']);
    t.deepEqual(await run({ OMP_NUM_THREADS: '4' }), ['4', '4']);
  } finally {
    setNumThreads(before);
    for (const [k, v] of Object.entries(saved)) if (v !== undefined) process.env[k] = v;
  }
});

glooTest('dist: allGather gives every rank each rank\'s integers (other lengths, beyond 32 bits, negative, none)', async (t) => {
  const lines: string[] = [];
  let stderr = '';
  const r = await launchWorkers(2, {
    args: [],
    command: { execPath: process.execPath, execArgv: ['-r', 'ts-node/register/transpile-only'], script: path.join(__dirname, 'helpers', 'dist_collectives.ts') },
    out: (line, stream) => (stream === 'stdout' ? lines.push(line) : (stderr += line + '\n')),
  });
  t.is(r.exitCode, 0, stderr);
  const results = lines.filter((l) => l.includes('RESULT ')).map((l) => JSON.parse(l.slice(l.indexOf('RESULT ') + 7)) as { rank: number; gathered: number[][]; empty: number[][] });
  t.is(results.length, 2);
  for (const res of results) {
    t.deepEqual(res.gathered, [[2 ** 40], [2 ** 40 + 1, -11]], `rank ${res.rank}`);
    t.deepEqual(res.empty, [[], []]);
  }
});

glooTest('dist: 2 Gloo processes end with the weights of one process trained on the same global batches, and evaluate as one; their steps make no copies of the convolution weights', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-run-');
  const base = { data: dir, head: 'retinanet', epochs: 2 };
  const one = single({ ...base, out: path.join(out, 'one'), batchSize: 4 });
  t.is(one.code, 0, one.stderr);
  // float64 copies would fail every convolution (float32 activations): data-parallel steps make none
  // (one autograd node would hold every convolution's gradient back from the buckets until the end)
  const two = await parallel(2, { ...base, out: path.join(out, 'two'), batchSize: 2 }, { ONESTAGE_TEST_WEIGHT_COPIES: 'float64:train' });
  t.is(two.code, 0, two.stderr);
  t.is(two.result!.worldSize, 2);
  t.is(two.result!.steps, one.result!.steps);
  const diff = maxWeightDifference(one.result!.weights!, two.result!.weights!);
  t.true(diff.tensors > 50);
  t.true(diff.max <= 1e-6, `weights differ by ${diff.max} (${diff.worst})`);
  // losses are the means over the ranks: the single process's numbers
  one.result!.losses.forEach((l, i) => t.true(Math.abs(l - two.result!.losses[i]) <= 1e-5 * Math.max(1, Math.abs(l)), `epoch ${i}: ${l} vs ${two.result!.losses[i]}`));
  // evaluation sharded over the ranks and merged on rank 0: the single process's numbers
  one.result!.stats!.forEach((s, i) => t.true(Math.abs(s - two.result!.stats![i]) <= 1e-6, `stat ${i}: ${s} vs ${two.result!.stats![i]}`));
  // only rank 0 wrote the run folder: one set of records
  const epochs = fs.readFileSync(path.join(out, 'two', 'epochs.jsonl'), 'utf8').trim().split('\n');
  t.is(epochs.length, 2);
});

ncclTest('dist: 2 NCCL processes (a GPU each) end with the weights of one process on one GPU', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-nccl-');
  const base = { data: dir, head: 'retinanet', epochs: 2, device: 'cuda' };
  const one = single({ ...base, out: path.join(out, 'one'), batchSize: 4 });
  t.is(one.code, 0, one.stderr);
  const two = await parallel(2, { ...base, out: path.join(out, 'two'), batchSize: 2 });
  t.is(two.code, 0, two.stderr);
  // cudaGraph 'auto' (the default) keeps data-parallel steps eager
  t.deepEqual(two.result!.graphs, { off: two.result!.steps });
  const diff = maxWeightDifference(one.result!.weights!, two.result!.weights!);
  t.log(`NCCL vs one GPU: weights differ by at most ${diff.max} (${diff.worst})`);
  // cuDNN's backward kernels sum in an order of their own (not bitwise reproducible even on one GPU)
  t.true(diff.max <= 1e-5, `weights differ by ${diff.max} (${diff.worst})`);
  one.result!.stats!.forEach((s, i) => t.true(Math.abs(s - two.result!.stats![i]) <= 1e-3, `stat ${i}: ${s} vs ${two.result!.stats![i]}`));
});

ncclOneGpuTest('dist: the data-parallel step replayed as a CUDA graph (NCCL, world size 1) equals the eager data-parallel step, RetinaNet and NanoDet-Plus', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-graph1-');
  const base = { data: dir, head: 'retinanet', epochs: 2, device: 'cuda', batchSize: 2 };
  // a process group of one: the bucketed all-reduces, the losses' all-reduce and the shape all-gather
  // run (and are captured) as with more ranks
  const eager = await parallel(1, { ...base, out: path.join(out, 'eager'), cudaGraph: false });
  t.is(eager.code, 0, eager.stderr);
  const graph = await parallel(1, { ...base, out: path.join(out, 'graph'), cudaGraph: true });
  t.is(graph.code, 0, graph.stderr);
  t.is(graph.result!.worldSize, 1);
  t.deepEqual(eager.result!.graphs, { off: eager.result!.steps });
  // 3 eager steps of the one shape, one capture, the rest replayed
  t.is(graph.result!.graphs.eager, 3, JSON.stringify(graph.result!.graphs));
  t.is(graph.result!.graphs.captured, 1);
  t.is(graph.result!.graphs.replayed, graph.result!.steps - 4);
  const diff = maxWeightDifference(eager.result!.weights!, graph.result!.weights!);
  t.log(`graph vs eager (NCCL, 1 rank): weights differ by at most ${diff.max} (${diff.worst})`);
  t.true(diff.max <= 1e-5, `weights differ by ${diff.max} (${diff.worst})`);
  eager.result!.losses.forEach((l, i) => t.true(Math.abs(l - graph.result!.losses[i]) <= 1e-4 * Math.max(1, Math.abs(l)), `epoch ${i}: ${l} vs ${graph.result!.losses[i]}`));
  // NanoDet-Plus: its normalisers' all-reduces (inside the forward) captured too; the DSL assignment's
  // discontinuities amplify kernel noise (see the single-process graph test), hence 1e-3
  const nanodet = { ...base, head: 'nanodet-plus', clip: 0 };
  const nEager = await parallel(1, { ...nanodet, out: path.join(out, 'n-eager'), cudaGraph: false });
  t.is(nEager.code, 0, nEager.stderr);
  const nGraph = await parallel(1, { ...nanodet, out: path.join(out, 'n-graph'), cudaGraph: true });
  t.is(nGraph.code, 0, nGraph.stderr);
  t.is(nGraph.result!.graphs.replayed, nGraph.result!.steps - 4, JSON.stringify(nGraph.result!.graphs));
  const nDiff = maxWeightDifference(nEager.result!.weights!, nGraph.result!.weights!);
  t.log(`NanoDet-Plus graph vs eager (NCCL, 1 rank): weights differ by at most ${nDiff.max} (${nDiff.worst})`);
  t.true(nDiff.max <= 1e-3, `weights differ by ${nDiff.max} (${nDiff.worst})`);
});

ncclTest('dist: 2 NCCL processes replaying CUDA graphs (all-reduces captured) end with the weights of the eager data-parallel run and of one process on one GPU', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-graph2-');
  const base = { data: dir, head: 'retinanet', epochs: 2, device: 'cuda' };
  const one = single({ ...base, out: path.join(out, 'one'), batchSize: 4, cudaGraph: false });
  t.is(one.code, 0, one.stderr);
  const two = await parallel(2, { ...base, out: path.join(out, 'two'), batchSize: 2, cudaGraph: true });
  t.is(two.code, 0, two.stderr);
  t.true((two.result!.graphs.replayed ?? 0) >= two.result!.steps - 4, JSON.stringify(two.result!.graphs));
  const eager = await parallel(2, { ...base, out: path.join(out, 'eager'), batchSize: 2, cudaGraph: false });
  t.is(eager.code, 0, eager.stderr);
  const diff = maxWeightDifference(one.result!.weights!, two.result!.weights!);
  const vsEager = maxWeightDifference(eager.result!.weights!, two.result!.weights!);
  t.log(`NCCL graphs vs one GPU eager: weights differ by at most ${diff.max} (${diff.worst}); vs 2 NCCL ranks eager: ${vsEager.max} (${vsEager.worst})`);
  t.true(diff.max <= 1e-5, `weights differ by ${diff.max} (${diff.worst})`);
  t.true(vsEager.max <= 1e-5, `weights differ from the eager data-parallel run's by ${vsEager.max} (${vsEager.worst})`);
  one.result!.losses.forEach((l, i) => t.true(Math.abs(l - two.result!.losses[i]) <= 1e-4 * Math.max(1, Math.abs(l)), `epoch ${i}: ${l} vs ${two.result!.losses[i]}`));
});

ncclTest('dist: a CUDA graph capture that fails on one rank fails on every rank, naming it', async (t) => {
  const out = tempDir('onestage-dist-graphfail-');
  const config = { data: await data(), head: 'retinanet', out, batchSize: 2, epochs: 1, device: 'cuda', cudaGraph: true, captureFailure: 'rank:1', timeoutSeconds: 60 };
  const [rank0, rank1] = await twoWorkers(config, () => undefined);
  t.is(rank1.code, 1);
  t.regex(rank1.stderr, /worker failed: .*could not be captured as a CUDA graph \(.*\); train with cudaGraph false/);
  t.is(rank0.code, 1);
  t.regex(rank0.stderr, /worker failed: .*could not be captured as a CUDA graph on rank 1 \(every rank replays the same graphs, so none does\); train with cudaGraph false/);
});

ncclTest('dist: with CUDA graphs, a hung worker makes the other exit with an error after the timeout', async (t) => {
  const out = tempDir('onestage-dist-graphhang-');
  let stoppedAt = 0;
  const timeoutSeconds = 6;
  // stopped after its sixth step: the graph has been captured (fourth step) and replayed
  const config = { data: await data(), head: 'retinanet', out, batchSize: 2, epochs: 1000, device: 'cuda', cudaGraph: true, timeoutSeconds, announceSteps: true };
  const [survivor, hung] = await twoWorkers(config, (rank, children) => {
    if (rank !== 1) return;
    stoppedAt = Date.now();
    children[1].kill('SIGSTOP');
    setTimeout(() => children[1].kill('SIGKILL'), 2_000 * timeoutSeconds).unref();
  }, 6);
  // our error (exit 1) or c10d's NCCL watchdog, which may take the process down itself on a timeout
  // (TORCH_NCCL_ASYNC_ERROR_HANDLING's default): either way it stops, saying why
  t.not(survivor.code, 0);
  t.regex(survivor.stderr, /(timed out|timeout)/i);
  const waited = (survivor.endedAt - stoppedAt) / 1000;
  t.true(waited >= timeoutSeconds * 0.5 && waited < timeoutSeconds + 30, `the survivor stopped ${waited} s after the other hung`);
  t.not(hung.code, 0);
});

glooTest('dist: NanoDet-Plus over 2 processes (normalisers all-reduced) equals one process', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-nanodet-');
  // with the classification bias raised (scores ~0.8): at NanoDet's initialisation (scores ~0.01) the
  // box-loss normaliser max(mean over ranks of Σ scores, 1) is clamped at 1, and there NanoDet's own
  // rule (and ours) weighs each rank's boxes as a whole batch's — one process and two differ by design
  const init = path.join(out, 'init.safetensors');
  const model = Model.nanodetPlus({ depth: 18, numClasses: 2, featureSize: 32, seed: 1, freezeBn: true });
  await model.saveWeights(init);
  model.dispose();
  setClassBias(init, 2, 1.5);
  // no gradient clipping: the clipped steps would hide a wrong scale of the loss terms
  const base = { data: dir, head: 'nanodet-plus', epochs: 2, init, clip: 0 };
  const one = single({ ...base, out: path.join(out, 'one'), batchSize: 4 });
  t.is(one.code, 0, one.stderr);
  const two = await parallel(2, { ...base, out: path.join(out, 'two'), batchSize: 2 });
  t.is(two.code, 0, two.stderr);
  const diff = maxWeightDifference(one.result!.weights!, two.result!.weights!);
  // unclipped steps amplify the other summation order to ~2e-5; per-rank normalisers (no all-reduce)
  // would put the weights ~7e-2 apart
  t.true(diff.max <= 1e-4, `weights differ by ${diff.max} (${diff.worst})`);
});

glooTest('dist: GHM-C/GHM-R with ghmAcrossRanks (global bin counts) over 2 processes equal one process; per-rank counts do not', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-ghm-');
  const loss = { classification: 'ghmc', regression: 'ghmr', ghmc: { momentum: 0.75 }, ghmr: { momentum: 0.7 } };
  const base = { data: dir, head: 'retinanet', epochs: 2 };
  const one = single({ ...base, out: path.join(out, 'one'), batchSize: 4, loss });
  t.is(one.code, 0, one.stderr);
  const global = await parallel(2, { ...base, out: path.join(out, 'global'), batchSize: 2, loss: { ...loss, ghmAcrossRanks: true } });
  t.is(global.code, 0, global.stderr);
  const perRank = await parallel(2, { ...base, out: path.join(out, 'per-rank'), batchSize: 2, loss });
  t.is(perRank.code, 0, perRank.stderr);
  const same = maxWeightDifference(one.result!.weights!, global.result!.weights!);
  const other = maxWeightDifference(one.result!.weights!, perRank.result!.weights!);
  t.log(`global counts: ${same.max}; per-rank counts: ${other.max}`);
  t.true(same.max <= 1e-5, `weights differ by ${same.max} (${same.worst})`);
  t.true(other.max > 10 * Math.max(same.max, 1e-7), `per-rank counts should differ: ${other.max}`);
});

glooTest('dist: a checkpoint written by 2 processes resumes in 1, and one from 1 in 2', async (t) => {
  const dir = await data();
  const out = tempDir('onestage-dist-resume-');
  const base = { data: dir, head: 'retinanet', out };
  const first = await parallel(2, { ...base, batchSize: 2, epochs: 1 });
  t.is(first.code, 0, first.stderr);
  const second = single({ ...base, batchSize: 4, epochs: 2, resume: true });
  t.is(second.code, 0, second.stderr);
  t.is(second.result!.steps, 4); // only the second epoch ran
  const third = await parallel(2, { ...base, batchSize: 2, epochs: 3, resume: true });
  t.is(third.code, 0, third.stderr);
  t.is(third.result!.steps, 4);
  const epochs = fs.readFileSync(path.join(out, 'epochs.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { epoch: number });
  t.deepEqual(epochs.map((e) => e.epoch), [0, 1, 2]);
});

/**
 * Starts 2 workers by hand (no launcher, which would stop the survivor itself) and waits for both;
 * `onStep` is called once per rank when it has announced step `atStep`.
 */
async function twoWorkers(config: object, onStep: (rank: number, children: ChildProcess[]) => void, atStep = 1): Promise<Array<{ code: number | null; stderr: string; endedAt: number }>> {
  const port = await freePort();
  const children: ChildProcess[] = [];
  const results = [0, 1].map((rank) => {
    const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', worker], {
      env: { ...process.env, ONESTAGE_TEST_DIST: JSON.stringify(config), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port), WORLD_SIZE: '2', RANK: String(rank), LOCAL_RANK: String(rank) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let stderr = '';
    let announced = false;
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout!.on('data', (d: Buffer) => {
      if (!announced && d.toString().includes(`STEP ${atStep}\n`)) {
        announced = true;
        onStep(rank, children);
      }
    });
    return new Promise<{ code: number | null; stderr: string; endedAt: number }>((resolve) => child.on('close', (code) => resolve({ code, stderr, endedAt: Date.now() })));
  });
  const timer = setTimeout(() => children.forEach((c) => c.kill('SIGKILL')), 120_000);
  try {
    return await Promise.all(results);
  } finally {
    clearTimeout(timer);
    children.forEach((c) => c.kill('SIGKILL'));
  }
}

glooTest('dist: killing one worker makes the other exit with an error', async (t) => {
  const out = tempDir('onestage-dist-kill-');
  let killedAt = 0;
  const [survivor, killed] = await twoWorkers({ data: await data(), head: 'retinanet', out, batchSize: 2, epochs: 1000, timeoutSeconds: 30, announceSteps: true }, (rank, children) => {
    if (rank !== 1) return;
    killedAt = Date.now();
    children[1].kill('SIGKILL');
  });
  t.is(killed.code, null); // killed by the signal
  t.is(survivor.code, 1);
  t.regex(survivor.stderr, /worker failed: .*(all-reduce|broadcast|barrier).*rank 0 of 2.*failed/);
  t.true(killedAt > 0);
  t.true(survivor.endedAt - killedAt < 30_000, `the survivor took ${survivor.endedAt - killedAt} ms`);
});

glooTest('dist: a hung worker makes the other exit with an error after the timeout', async (t) => {
  const out = tempDir('onestage-dist-hang-');
  let stoppedAt = 0;
  const timeoutSeconds = 4;
  const [survivor, hung] = await twoWorkers({ data: await data(), head: 'retinanet', out, batchSize: 2, epochs: 1000, timeoutSeconds, announceSteps: true }, (rank, children) => {
    if (rank !== 1) return;
    stoppedAt = Date.now();
    children[1].kill('SIGSTOP'); // alive, connected, silent
    setTimeout(() => children[1].kill('SIGKILL'), 2_000 * timeoutSeconds).unref();
  });
  t.is(survivor.code, 1);
  t.regex(survivor.stderr, /worker failed: .*(timed out|Timed out|timeout)/i);
  const waited = (survivor.endedAt - stoppedAt) / 1000;
  t.true(waited >= timeoutSeconds * 0.5 && waited < timeoutSeconds + 30, `the survivor stopped ${waited} s after the other hung`);
  t.not(hung.code, 0);
});

glooTest('dist: onestage train --nproc 2 runs the CLI as 2 ranks with prefixed output and one run folder', (t) => {
  const out = tempDir('onestage-dist-cli-');
  const dir = fs.mkdtempSync(path.join(out, 'data-'));
  const made = spawnSync(process.execPath, [cli, 'make-shapes', '--out', dir, '--train', '8', '--val', '4', '--size', '64', '--classes', '2'], { encoding: 'utf8' });
  t.is(made.status, 0, made.stderr);
  const run = path.join(out, 'run');
  const r = spawnSync(process.execPath, [cli, 'train', '--nproc', '2', '--coco-train', path.join(dir, 'instances_train.json'), '--coco-val', path.join(dir, 'instances_val.json'),
    '--depth', '18', '--feature-size', '32', '--batch-size', '2', '--epochs', '1', '--min-side', '64', '--max-side', '64', '--device', 'cpu', '--out', run], { encoding: 'utf8', env: { ...process.env, WORLD_SIZE: '' } });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, /\[rank 0\] training RetinaNet ResNet-18 .* × 2 processes \(gloo, 2 images per process and step\)/);
  t.regex(r.stdout, /\[rank 0\] weights: /);
  t.notRegex(r.stdout, /\[rank 1\] weights: /);
  t.true(fs.existsSync(path.join(run, 'model.safetensors')));
  t.is(fs.readFileSync(path.join(run, 'epochs.jsonl'), 'utf8').trim().split('\n').length, 1);
});
