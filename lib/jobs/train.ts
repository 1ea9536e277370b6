/**
 * `onestage train`: a training run from a validated configuration — datasets and loaders, the
 * model (optionally from weights or a backbone), the trainer with validation, and at the end a
 * COCO evaluation (eval.json) and the validation detections as COCO results (detections.json).
 */
import * as path from 'node:path';
import { TrainConfig } from '../config';
import { nativeJpegAvailable } from '../data/image';
import { DataLoader } from '../data/loader';
import { distEnvironment, ProcessGroup } from '../distributed';
import { DetectorEvaluation } from '../eval/evaluate';
import { writeJsonAtomic } from '../io';
import { Model, MODEL_METADATA_KEY } from '../model';
import { FitResult, localProcesses, resolveReplicas, Trainer } from '../train/trainer';
import type { Device } from '../tensor';
import { INPUT_METADATA_KEY, openDataset, resolveDevice } from './common';
import { torchvisionLayout, weightEntries } from '../torchvision';
import { readSafetensorsHeader } from '../safetensors';
import { buildInfo } from '../runtime';

export interface TrainJobOptions {
  /** Continue the run in `config.out` from its latest checkpoint. */
  resume?: boolean;
  /** Lines of text for the user (default: stderr). */
  log?: (line: string) => void;
}

export interface TrainJobResult {
  runDir: string;
  /** The final weights (rank 0 of a data-parallel run writes them; other ranks get undefined). */
  weights?: string;
  /** This process's rank and the number of processes (1 without data parallelism). */
  rank: number;
  worldSize: number;
  fit: FitResult;
  evaluation?: DetectorEvaluation;
  seconds: number;
}

export async function trainJob(config: TrainConfig, options: TrainJobOptions = {}): Promise<TrainJobResult> {
  const started = Date.now();
  // data-parallel when the launcher variables say so (onestage train --nproc N, torchrun, …)
  const env = distEnvironment();
  const dist = env && env.worldSize > 1 ? env : undefined;
  const main = !dist || dist.rank === 0;
  const log = options.log ?? ((line: string) => (main ? process.stderr.write(line + '\n') : undefined));
  let device = resolveDevice(config.device);
  if (dist && device === 'cuda') device = `cuda:${dist.localRank}`;
  let group: ProcessGroup | undefined;
  if (dist) {
    const c = config.distributed;
    group = await ProcessGroup.init({ device, backend: c.backend === 'auto' ? undefined : c.backend, masterAddr: dist.masterAddr, masterPort: dist.masterPort, rank: dist.rank, worldSize: dist.worldSize, agentStore: dist.agentStore, timeoutSeconds: c.timeoutSeconds });
  }
  try {
    return await trainInGroup(config, options, { started, device, group, log, main });
  } finally {
    group?.dispose();
  }
}

function readSafetensorsMetadata(file: string): string | undefined {
  return readSafetensorsHeader(file).metadata[MODEL_METADATA_KEY];
}

async function trainInGroup(config: TrainConfig, options: TrainJobOptions, ctx: { started: number; device: Device; group?: ProcessGroup; log: (line: string) => void; main: boolean }): Promise<TrainJobResult> {
  const { started, device, group, log, main } = ctx;
  const d = config.data;
  const train = await openDataset({ format: d.format, file: d.train, classes: d.classes, images: d.images });
  const val = d.val ? await openDataset({ format: d.format, file: d.val, classes: d.classes, images: d.images }) : undefined;
  if (val && val.classes.join('\n') !== train.classes.join('\n')) throw new Error(`${d.val}: its classes (${val.classes.join(', ')}) differ from the training set's (${train.classes.join(', ')})`);
  for (const w of [...train.warnings, ...(val?.warnings ?? [])].slice(0, 5)) log(`data: ${w.file}: ${w.message}`);
  const transform = { minSide: d.minSide, maxSide: d.maxSide };
  // the contrastive term trains on the batch and its second view
  const views = (config.loss.contrastive?.weight ?? 0) > 0 ? 2 : 1;
  const shard = group?.shard;
  // how pictures are decoded: the same for both loaders
  const decoding = { decoder: d.decoder, decodeWorkers: d.decodeWorkers, decodeConcurrency: d.decodeConcurrency === 'auto' ? undefined : d.decodeConcurrency, prefetch: d.prefetch };
  const loader = new DataLoader(train, { batchSize: d.batchSize, seed: config.seed, device, augment: d.augment, transform, views, shard, ...decoding });
  const valLoader = val ? new DataLoader(val, { batchSize: d.batchSize, shuffle: false, augment: false, device, transform, shard, ...decoding }) : undefined;
  const m = config.model;
  const nanodet = m.head === 'nanodet-plus';
  const common = { numClasses: train.classes.length, classes: train.classes, depth: m.depth, featureSize: m.featureSize, freezeBn: m.freezeBn, device, seed: config.seed };
  let variant = m.variant;
  if (m.weights && !nanodet && (!m.weights.endsWith('.safetensors') || readSafetensorsMetadata(m.weights) === undefined)) {
    // a torchvision RetinaNet file sets the variant; its depth and FPN size must be the configuration's
    const layout = torchvisionLayout(weightEntries(m.weights), m.weights);
    if (layout) {
      if (variant && variant !== layout.variant) throw new Error(`${m.weights} is a '${layout.variant}' RetinaNet; the configuration says model.variant '${variant}'`);
      if (layout.depth !== m.depth || layout.featureSize !== m.featureSize)
        throw new Error(`${m.weights} is a ResNet-${layout.depth} RetinaNet with FPN ${layout.featureSize}; the configuration has depth ${m.depth}, featureSize ${m.featureSize} (set model.depth / model.featureSize)`);
      variant = layout.variant;
    }
  }
  const model: Model = nanodet
    ? Model.nanodetPlus({ ...common, ...m.nanodet })
    : Model.retinanet({ ...common, anchors: m.anchors, boxCoder: m.boxCoder, ...(variant ? { variant } : {}), ...(m.trainableBackboneLayers !== undefined ? { trainableBackboneLayers: m.trainableBackboneLayers } : {}) });
  let trainer: Trainer | undefined;
  try {
    if (m.weights) {
      const report = await model.loadWeights(m.weights, m.finetune ? { finetune: true } : {});
      if (report.reinitialized.length) log(`fine-tuning from ${m.weights}: ${report.loaded} tensors kept, re-initialised for ${train.classes.length} classes: ${report.reinitialized.join(', ')}`);
    }
    if (m.backbone) await model.loadWeights(m.backbone, { backboneOnly: true });
    trainer = new Trainer(model, { optimizer: config.optimizer, loss: config.loss, schedule: config.schedule, amp: config.amp, cudaGraph: config.cudaGraph, ema: config.ema, replicas: config.replicas, processGroup: group, bucketMiB: config.distributed.bucketMiB });
    // as the Trainer resolves it ('auto' shares the cores with the other local processes)
    const replicas = resolveReplicas(config.replicas, device, config.loss, model.architecture, group ? localProcesses(group) : 1);
    log(`training ${nanodet ? 'NanoDet-Plus' : 'RetinaNet'} ResNet-${m.depth} (${(model.parameters() / 1e6).toFixed(1)} M parameters) on ${device}${replicas > 1 ? ` (${replicas} replicas)` : ''}` +
      (group ? ` × ${group.worldSize} processes (${group.backend}, ${d.batchSize} images per process and step)` : '') + `: ${train.length} images, ${train.classes.length} classes` +
      (val ? `, validating on ${val.length}` : '') + ` → ${config.out}`);
    const jpeg = d.decoder === 'auto' && nativeJpegAvailable() ? `onestage's decoder (libjpeg-turbo ${buildInfo().jpegDecoder})` : 'sharp';
    log(`data: JPEGs decoded by ${jpeg}, other formats by sharp; ${loader.decodeConcurrency} pictures at once, ${loader.decodeWorkerCount} decode workers, ${d.prefetch} batches ahead`);
    if (main) writeJsonAtomic(path.join(config.out, 'config.json'), config, 2);
    const fit = await trainer.fit(loader, {
      epochs: config.epochs,
      runDir: config.out,
      resume: options.resume,
      valLoader,
      evalEvery: config.evalEvery,
      checkpointEvery: config.checkpointEvery,
      keep: config.keep,
      progress: config.progress,
      evaluate: { voc: config.voc },
      metadata: { [INPUT_METADATA_KEY]: JSON.stringify(transform) },
    });
    const evaluation = fit.evaluation;
    if (evaluation && main) {
      writeJsonAtomic(path.join(config.out, 'eval.json'), { stats: evaluation.stats, perClass: evaluation.perClass, voc: evaluation.voc, images: evaluation.images }, 2);
      writeJsonAtomic(path.join(config.out, 'detections.json'), evaluation.detections);
    }
    return { runDir: config.out, weights: fit.weights, rank: group?.rank ?? 0, worldSize: group?.worldSize ?? 1, fit, evaluation, seconds: (Date.now() - started) / 1000 };
  } finally {
    trainer?.dispose();
    model.dispose();
  }
}
