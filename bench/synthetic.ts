/** The synthetic RetinaNet training batch of the GPU benchmarks: B images of S×S in [−1, 1) and 8 boxes each (32 px to S/3, 80 classes), from a seeded generator. */
import type { Batch, Device, StepRecord, TrainerOptions } from '../lib';
import { cudaMemory, Model, profilerAvailable, setCudnnBenchmark, startProfiler, stopProfiler, synchronize, Tensor, Trainer } from '../lib';

export const SYNTHETIC_BOXES = 8;

export function syntheticArrays(batch: number, size: number, seed: number): { images: Float32Array; annotations: Float32Array } {
  let x = seed * 9301 + 49297;
  const rand = () => ((x = (x * 9301 + 49297) % 233280) / 233280);
  const images = Float32Array.from({ length: batch * 3 * size * size }, () => rand() * 2 - 1);
  const annotations = new Float32Array(batch * SYNTHETIC_BOXES * 5);
  for (let i = 0; i < batch * SYNTHETIC_BOXES; i++) {
    const w = 32 + rand() * (size / 3);
    const h = 32 + rand() * (size / 3);
    const x1 = rand() * (size - w);
    const y1 = rand() * (size - h);
    annotations.set([x1, y1, x1 + w, y1 + h, Math.floor(rand() * 80)], 5 * i);
  }
  return { images, annotations };
}

/** A loader-shaped Batch of those arrays on `device`. */
export function syntheticBatch(data: { images: Float32Array; annotations: Float32Array }, batch: number, size: number, device: Device): Batch {
  const images = Tensor.from(data.images, [batch, 3, size, size], { device });
  const annotations = Tensor.from(data.annotations, [batch, SYNTHETIC_BOXES, 5], { device });
  const ids = Array.from({ length: batch }, (_, i) => i);
  return { images, annotations, scales: ids.map(() => 1), sizes: ids.map(() => [size, size]), inputSizes: ids.map(() => [size, size]), ids, files: ids.map(() => ''), flipped: ids.map(() => false), crops: ids.map(() => null) };
}

export interface StepTiming {
  imagesPerSecond: number;
  msPerStep: number;
  peakMiB: number | null;
  skipped: number;
}

/**
 * Training steps on the synthetic batch (RetinaNet unless `makeModel` says otherwise): `fast` is the Trainer's default configuration
 * (channels-last and cuDNN benchmark on CUDA, multi-tensor update), otherwise all of them off.
 * `cudaGraph` (with `fast`): the step replayed as a CUDA graph (captured during the warm-up); without it
 * the steps run eagerly (cudaGraph false), whatever the Trainer's default.
 * `profile`: a Kineto trace of 5 more steps is written there (-bf16/-fp32, -graph, added before .json).
 */
export async function timeTrainingSteps(o: {
  device: Device; batch: number; size: number; depth: number; steps: number; warmup: number; optimizer: 'sgd' | 'adamw';
  data: { images: Float32Array; annotations: Float32Array }; amp: boolean; fast: boolean; cudaGraph?: boolean; profile?: string;
  /** With `fast`: the layout instead of the Trainer's default (channels-last on CUDA). */
  channelsLast?: boolean;
  /** Another model than RetinaNet ResNet-`depth` (80 classes). */
  makeModel?: () => Model;
  /** Learning rate, weight decay and clipping instead of the RetinaNet benchmark's. */
  optimizerOptions?: { lr: number; weightDecay: number; clipGradNorm?: number };
  /** CPU data parallelism (TrainerOptions.replicas). */
  replicas?: number;
  /** Timed steps asked for one ahead (each before the last has finished), as Trainer.fit's pipeline. */
  pipeline?: boolean;
  /** With `fast`: the update's implementation instead of 'auto' ('foreach': SGD read first, never queued). */
  implementation?: 'auto' | 'foreach';
}): Promise<StepTiming> {
  const { device, amp, fast } = o;
  const batch = syntheticBatch(o.data, o.batch, o.size, device);
  const model = o.makeModel ? o.makeModel() : Model.retinanet({ depth: o.depth as 50, numClasses: 80, device, seed: 0 });
  const lr = o.optimizerOptions?.lr ?? (o.optimizer === 'sgd' ? 0.01 : 1e-4);
  const options: TrainerOptions = {
    optimizer: { type: o.optimizer, lr, momentum: 0.9, weightDecay: 1e-4, ...o.optimizerOptions, implementation: fast ? (o.implementation ?? 'auto') : 'loop' },
    amp,
    // fast: the Trainer's defaults (channels-last and cuDNN benchmark on CUDA); plain: all off
    ...(fast ? (o.channelsLast === undefined ? {} : { channelsLast: o.channelsLast }) : { channelsLast: false, cudnnBenchmark: false }),
    cudaGraph: Boolean(fast && o.cudaGraph),
    ...(o.replicas ? { replicas: o.replicas } : {}),
  };
  if (!fast && device === 'cuda') setCudnnBenchmark(false);
  const trainer = new Trainer(model, options);
  for (let i = 0; i < o.warmup; i++) {
    // with a graph the peak counts from the capture on (its memory pool is allocated there, not in the timed replays)
    if (o.cudaGraph && i === 3) cudaMemory(0, { resetPeak: true });
    await trainer.step(batch, lr);
  }
  if (o.cudaGraph && (await trainer.step(batch, lr)).graph !== 'replayed') throw new Error('cudaGraph: the warm-up did not end with a replayed step');
  synchronize();
  if (device === 'cuda' && !o.cudaGraph) cudaMemory(0, { resetPeak: true });
  const t0 = process.hrtime.bigint();
  let skipped = 0;
  // steps asked for and not yet awaited: at most one ahead with the pipeline, none without
  const asked: Array<Promise<StepRecord>> = [];
  for (let i = 0; i < o.steps; i++) {
    asked.push(trainer.step(batch, lr));
    if (asked.length > (o.pipeline ? 1 : 0)) skipped += (await asked.shift()!).skipped ? 1 : 0;
  }
  for (const r of asked) skipped += (await r).skipped ? 1 : 0;
  synchronize();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const peak = device === 'cuda' ? cudaMemory(0).peak / 2 ** 20 : null;
  if (fast && o.profile && profilerAvailable()) {
    // a few more steps under the profiler (kernels and CUDA runtime calls of every thread)
    startProfiler();
    for (let i = 0; i < 5; i++) await trainer.step(batch, lr);
    synchronize();
    const file = o.profile.replace(/\.json$/, `-${amp ? 'bf16' : 'fp32'}${o.cudaGraph ? '-graph' : ''}.json`);
    stopProfiler(file);
    console.error(`profile of 5 steps written to ${file}`);
  }
  trainer.dispose();
  model.dispose();
  batch.images.dispose();
  batch.annotations.dispose();
  return { imagesPerSecond: (o.batch * o.steps) / seconds, msPerStep: (1000 * seconds) / o.steps, peakMiB: peak, skipped };
}
