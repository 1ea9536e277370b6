/**
 * One process of the data-parallel tests (test/distributed.test.ts), configured by the
 * ONESTAGE_TEST_DIST JSON and the launcher variables: trains a tiny detector on shapes data with
 * or without a process group, evaluates, and rank 0 writes its weights and a RESULT line.
 */
import * as path from 'node:path';
import { CocoDataset, DataLoader, Device, distEnvironment, Model, ProcessGroup, setTf32, StepRecord, Trainer } from '../../lib';

interface WorkerConfig {
  data: string;
  out: string;
  head: 'retinanet' | 'nanodet-plus';
  /** Images per process and step. */
  batchSize: number;
  epochs: number;
  timeoutSeconds?: number;
  resume?: boolean;
  /** Start from these weights (every rank; rank 0's are broadcast anyway). */
  init?: string;
  /** RetinaNet loss options. */
  loss?: object;
  /** 'cuda': one GPU per process (NCCL); default 'cpu' (Gloo). */
  device?: 'cpu' | 'cuda';
  /** Gradient-norm clipping (default 0.1, as pytorch-retinanet); 0: none. */
  clip?: number;
  /** Per-step lines on stdout (for the failure tests). */
  announceSteps?: boolean;
  /** TrainerOptions.cudaGraph (default: the Trainer's, 'auto'). */
  cudaGraph?: boolean | 'auto';
  /** ONESTAGE_TEST_CAPTURE_FAILURE for this process ('rank:N': that rank's captures fail). */
  captureFailure?: string;
}

async function main(): Promise<void> {
  const c = JSON.parse(process.env.ONESTAGE_TEST_DIST ?? '{}') as WorkerConfig;
  if (c.captureFailure) process.env.ONESTAGE_TEST_CAPTURE_FAILURE = c.captureFailure;
  const env = distEnvironment();
  const device: Device = c.device === 'cuda' ? `cuda:${env?.localRank ?? 0}` : 'cpu';
  if (c.device === 'cuda') setTf32(false); // TF32 convolutions would make batch 4 and 2 × 2 differ by ~1e-3
  const group = await ProcessGroup.fromEnv({ timeoutSeconds: c.timeoutSeconds ?? 60, device });
  const rank = group?.rank ?? 0;
  const train = await CocoDataset.open(path.join(c.data, 'instances_train.json'));
  const val = await CocoDataset.open(path.join(c.data, 'instances_val.json'));
  // a different initialisation on every rank: rank 0's must win (broadcast at the first step)
  const common = { depth: 18 as const, numClasses: 2, featureSize: 32, seed: 1 + rank, freezeBn: true, device };
  const model = c.head === 'nanodet-plus' ? Model.nanodetPlus(common) : Model.retinanet(common);
  if (c.init) await model.loadWeights(c.init);
  const transform = { minSide: 64, maxSide: 64 };
  const loader = new DataLoader(train, { batchSize: c.batchSize, seed: 3, transform, shard: group?.shard, device });
  const valLoader = new DataLoader(val, { batchSize: c.batchSize, shuffle: false, augment: false, transform, shard: group?.shard, device });
  const trainer = new Trainer(model, { optimizer: { lr: 0.01, clipGradNorm: c.clip ?? 0.1 }, loss: c.loss, ema: { decay: 0.9, tau: 2 }, processGroup: group, bucketMiB: 0.25, cudaGraph: c.cudaGraph });
  if (c.announceSteps) trainer.on('step', (r: StepRecord) => process.stdout.write(`STEP ${r.step}\n`));
  // how the steps ran (StepRecord.graph): 'off', 'eager', 'captured', 'replayed'
  const graphs: Record<string, number> = {};
  trainer.on('step', (r: StepRecord) => void (graphs[r.graph] = (graphs[r.graph] ?? 0) + 1));
  const fit = await trainer.fit(loader, { epochs: c.epochs, runDir: c.out, resume: c.resume, valLoader });
  const losses = fit.history.map((e) => e.total);
  if (rank === 0) process.stdout.write(`RESULT ${JSON.stringify({ weights: fit.weights, stats: fit.evaluation?.stats, losses, steps: fit.steps, worldSize: group?.worldSize ?? 1, graphs })}\n`);
  trainer.dispose();
  model.dispose();
  group?.dispose();
}

main().catch((err: Error) => {
  process.stderr.write(`worker failed: ${err.message}\n`);
  process.exit(1);
});
