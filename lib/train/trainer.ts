/**
 * Trainer: runs training steps natively (forward, loss, backward, clipping, optimizer step and the
 * EMA update in one async call — the event loop stays free), schedules the learning rate, evaluates
 * on a validation loader, records every step, plots the curves, and checkpoints so that a killed run
 * resumes at the exact next batch with the same learning rate.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, NativeSession, NativeStepResult } from '../binding';
import type { Batch, DataLoader } from '../data/loader';
import { disposeBatch } from '../data/loader';
import { ProcessGroup } from '../distributed';
import { COCO_STAT_NAMES } from '../eval/coco_eval';
import { DetectorEvaluation, evaluateDetector, EvaluateOptions } from '../eval/evaluate';
import { writeFileAtomic, writeJsonAtomic } from '../io';
import { checkContrastiveTraining, RetinaNetLossOptions } from '../losses';
import type { BoxCoderOptions } from '../geometry';
import { checkNanoDetPlusLossOptions, NanoDetPlusLossOptions } from '../nanodet';
import type { Model } from '../model';
import { setCudnnBenchmark } from '../runtime';
import { checkInteger, checkOneOf, checkOptions, invalid } from '../validate';
import { smooth, thin, writeLineChart } from './plots';
import { Progress, ProgressMode } from './progress';

export interface OptimizerOptions {
  /** 'sgd' (default) or 'adamw'. */
  type?: 'sgd' | 'adamw';
  /** Base learning rate; default 0.01. */
  lr?: number;
  /** SGD momentum; default 0.9. */
  momentum?: number;
  /** Default 1e-4. */
  weightDecay?: number;
  nesterov?: boolean;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Gradients are clipped to this total norm (pytorch-retinanet: 0.1, the default); 0 disables. */
  clipGradNorm?: number;
  /** The backbone (conv1, bn1, layer1–4) trains at lr × this (a second parameter group); default 1. */
  backboneLrMultiplier?: number;
  /**
   * How the update runs — the same arithmetic each way: 'loop' (LibTorch's optimizer, a few kernels per
   * parameter), 'foreach' (multi-tensor kernels over all parameters, as torch.optim's foreach=True),
   * 'fused' (one fused kernel, as torch.optim's fused=True, on CUDA: AdamW with LibTorch ≥ 2, SGD with
   * LibTorch ≥ 2.4 — then queued before the losses are read, the skip decided on the device, where the
   * run has no EMA and one learning rate: `StepRecord.updateQueued`), 'auto' (default: 'fused' where it
   * exists, else 'foreach'). A performance setting: not checkpointed.
   */
  implementation?: 'auto' | 'fused' | 'foreach' | 'loop';
}

export interface ScheduleOptions {
  /** Steps of linear warm-up from warmupFactor·lr to lr; default 0. */
  warmupSteps?: number;
  /** Default 0.001. */
  warmupFactor?: number;
  /**
   * After warm-up: 'constant' (default), 'step' (× gamma at each milestone epoch), 'cosine' (to 0 at
   * the end) or 'plateau' (× factor when the monitored number has not improved for `patience` evaluations).
   */
  type?: 'constant' | 'step' | 'cosine' | 'plateau';
  /** Epochs at which 'step' multiplies the rate by gamma. */
  milestones?: number[];
  /** Default 0.1. */
  gamma?: number;
  /** 'plateau': the number watched — validation 'AP', 'AP50' (default with a validation loader) or training 'loss' (default without). */
  monitor?: 'AP' | 'AP50' | 'loss';
  /** 'plateau': multiplier on each reduction; default 0.1. */
  factor?: number;
  /** 'plateau': evaluations without improvement before a reduction; default 2. */
  patience?: number;
  /** 'plateau': relative improvement that counts (torch's threshold, mode 'rel'); default 1e-4. */
  threshold?: number;
  /** 'plateau': the rate never goes below this; default 0. */
  minLr?: number;
}

export interface EmaOptions {
  /** Default 0.9998. */
  decay?: number;
  /** Ramp: the effective decay is decay·(1 − exp(−updates/tau)); default 2000. */
  tau?: number;
}

export interface TrainerOptions {
  optimizer?: OptimizerOptions;
  /** The loss: RetinaNetLossOptions for a RetinaNet model (its targets use the model's box coder unless `focal.boxCoder` is given), NanoDetPlusLossOptions for a NanoDet-Plus model. */
  loss?: RetinaNetLossOptions | NanoDetPlusLossOptions;
  schedule?: ScheduleOptions;
  /** bf16 autocast of the forward pass on CUDA (losses stay float32); default false. An error on CPU. */
  amp?: boolean;
  /**
   * Convolution weights and inputs in channels-last (NHWC) memory order, the layout of cuDNN's
   * tensor-core kernels: the same numbers, faster on CUDA. The model keeps the layout (inference
   * too; `model.channelsLast(false)` reverts it). Default: true for a model on CUDA, false on the CPU.
   * A performance setting: not checkpointed.
   */
  channelsLast?: boolean;
  /**
   * cuDNN's benchmark mode (process-wide, `torch.backends.cudnn.benchmark`): each new input shape
   * times the convolution algorithms once and keeps the fastest. Default: true for a model on CUDA
   * (left unchanged otherwise). Not checkpointed.
   */
  cudnnBenchmark?: boolean;
  /**
   * CUDA graphs of the training step. After 3 eager steps of one batch shape, forward, losses (RetinaNet's
   * focal / GHM / contrastive terms, or NanoDet-Plus's with its DSL assignment and AGM), backward and
   * gradient clipping are captured as one CUDA graph and replayed for every later batch of that shape
   * (annotations padded with −1 rows to a power-of-two capacity ≥ 8; a batch with more boxes runs eagerly
   * until its capacity is captured in turn). Up to 4 shapes are kept (their activations share one memory
   * pool); further shapes run eagerly. The same numbers; no per-operation launch cost. The optimizer
   * update, the EMA and the non-finite skip run after the replay as in the eager step.
   * - `'auto'` (default): on for a model on CUDA in one process (no `replicas`, no
   *   `backboneLrMultiplier`), off otherwise; a capture that fails switches graphs off for the rest of
   *   the run with a `'warning'` event (and `StepRecord.graphWarning`) instead of failing.
   * - `true`: on, and a configuration that cannot be graphed, or a failed capture, is an error. With an
   *   NCCL `processGroup` this graphs the data-parallel step as well: the gradient all-reduces are
   *   captured with it, every step begins with a small all-gather of the ranks' batch shapes so that all
   *   ranks capture and replay the same graphs together, a capture that fails on one rank fails on all,
   *   and a replay that does not finish within the group's timeout (a rank stopped) is an error.
   * - `false`: never.
   * A performance setting: not checkpointed.
   */
  cudaGraph?: boolean | 'auto';
  /** Exponential moving average of the weights, used for validation and the final model; default off. */
  ema?: boolean | EmaOptions;
  /** Training stops with an error after this many consecutive skipped (non-finite) steps; default 10. */
  maxConsecutiveSkips?: number;
  /**
   * CPU data parallelism: each batch is split over this many copies of the model, each on its own
   * thread (LibTorch's CPU kernels here run one thread each), gradients summed before one optimizer
   * step — the batch-mean loss and its gradient, with BatchNorm statistics per chunk. 'auto': the
   * number of CPU cores when the model is on the CPU and the losses allow it (no GHM, per-image
   * normalisation), else 1. Default 1.
   */
  replicas?: number | 'auto';
  /**
   * Data-parallel training across processes: this rank's c10d group. Every rank takes rank 0's
   * weights at the first step, gradients are averaged over the ranks every step (bucketed, overlapped
   * with backward), reported losses are the means over the ranks; `fit` needs loaders sharded by the
   * group (`shard: group.shard`), and only rank 0 writes records, plots, checkpoints and weights.
   * Not part of the checkpointed options (a run may resume on another number of processes).
   */
  processGroup?: ProcessGroup;
  /** Gradient all-reduce bucket size in MiB (data-parallel only); default 25, as DistributedDataParallel. */
  bucketMiB?: number;
}

/**
 * The replica count `replicas` resolves to for a model on `device` with `loss`; 'auto' shares the
 * cores among `processesHere` data-parallel processes on this machine.
 */
export function resolveReplicas(replicas: TrainerOptions['replicas'], device: string, loss: RetinaNetLossOptions = {}, architecture: 'retinanet' | 'nanodet-plus' = 'retinanet', processesHere = 1): number {
  if (replicas === undefined) return 1;
  if (replicas !== 'auto') return replicas;
  if (architecture === 'nanodet-plus') return 1; // batch-wide loss normalisers
  const batchStatistics = (loss.classification ?? 'focal') !== 'focal' || loss.regression === 'ghmr' || (loss.focal?.variant === 'logits' && loss.focal?.normalize === 'batch') || (loss.contrastive?.weight ?? 0) > 0;
  return device === 'cpu' && !batchStatistics ? Math.max(1, Math.floor(os.availableParallelism() / Math.max(1, processesHere))) : 1;
}

/** One training step: the native step's losses (cls, reg, contrastive, total), gradNorm, skipped, and where and how fast it ran. */
export interface StepRecord extends Omit<NativeStepResult, 'reason'> {
  epoch: number;
  /** Batch index within the epoch. */
  batch: number;
  /** Global step (all epochs). */
  step: number;
  lr: number;
  /** Why the step was skipped (only when skipped). */
  reason?: string;
  ids: Array<number | string>;
  /** The step's time: from its call, or — asked for while the last step ran (fit's pipeline) — from that one's end. */
  seconds: number;
  imagesPerSecond: number;
}

export interface EpochRecord {
  epoch: number;
  /** Global steps done at the end of the epoch. */
  step: number;
  /** Means of the epoch's applied steps. */
  cls: number;
  reg: number;
  contrastive: number;
  total: number;
  /** Means of the architecture's own terms (NanoDet-Plus: qfl, bbox, dfl, auxQfl, auxBbox, auxDfl). */
  components: Record<string, number>;
  /** Learning rate of the last step. */
  lr: number;
  skipped: number;
  seconds: number;
  imagesPerSecond: number;
  /** Validation (with the EMA weights when EMA is on): the 12 COCO numbers by name, and VOC mAP if asked. */
  val?: Record<(typeof COCO_STAT_NAMES)[number], number> & { vocMap?: number; seconds: number };
}

export interface FitOptions {
  /** Total epochs to reach (resuming continues up to this). */
  epochs: number;
  /** Folder for metrics.jsonl, epochs.jsonl, plots, checkpoints and the final weights; none: nothing is written. */
  runDir?: string;
  /** Continue from runDir's latest checkpoint; default false. */
  resume?: boolean;
  /** Also checkpoint every this many steps; default: only at the end of each epoch. */
  checkpointEvery?: number;
  /** Keep this many checkpoints; default 2. */
  keep?: number;
  /** Validation loader (no augmentation): evaluated with COCO AP after every `evalEvery` epochs and at the end. */
  valLoader?: DataLoader;
  /** Default 1. */
  evalEvery?: number;
  /** Detection options for validation, and `voc: true` for VOC AP@0.5 too. */
  evaluate?: Omit<EvaluateOptions, 'onProgress'>;
  /** Progress on stderr: 'auto' (a bar on a terminal, lines otherwise), 'bar', 'lines' or 'none' (default). */
  progress?: ProgressMode;
  /** Write loss and validation plots (SVG and PNG) to runDir after each epoch; default true with runDir. */
  plots?: boolean;
  /** Extra safetensors metadata for model.safetensors and best.safetensors. */
  metadata?: Record<string, string>;
  /**
   * Ask for the next step before the last one has finished: its batch is taken from the loader and its
   * step queued (behind the running one, in order: native/core/train/step_turns.h) while the device
   * works, so the hand-off between steps — the promise's return to JavaScript, the libuv pool, which
   * the loader's decodes keep busy — overlaps the step instead of following it. Same steps, same
   * results; a step's record is handled (metrics, progress, the stop after `maxConsecutiveSkips`) while
   * the next one runs, so a stop lets that one finish first. Checkpoints, validation and the epoch's
   * end wait for every step asked for. Default 'auto': on for a model on CUDA in one process.
   */
  pipeline?: boolean | 'auto';
}

export interface FitResult {
  epochs: number;
  /** Steps run by this call. */
  steps: number;
  skipped: Array<{ step: number; ids: Array<number | string>; reason: string }>;
  /** Per-epoch records of this call. */
  history: EpochRecord[];
  /** The last validation, if any. */
  evaluation?: DetectorEvaluation;
  /** The final weights (EMA weights when EMA is on), when runDir was given. */
  weights?: string;
}

interface PlateauState {
  scale: number;
  best: number | null;
  bad: number;
}

interface CheckpointState {
  format: 'onestage-checkpoint-2';
  /** Epoch and batch to run next. */
  epoch: number;
  batch: number;
  step: number;
  plateau: PlateauState;
  consecutiveSkips: number;
  options: TrainerOptions;
  /** Processes that trained (absent: 1) and the batches of an epoch then (absent: this run's). */
  worldSize?: number;
  stepsPerEpoch?: number;
}

function emaSettings(ema: TrainerOptions['ema']): { emaDecay: number; emaTau: number } {
  if (!ema) return { emaDecay: 0, emaTau: 2000 };
  const o = ema === true ? {} : ema;
  return { emaDecay: o.decay ?? 0.9998, emaTau: o.tau ?? 2000 };
}

function checkTrainerOptions(options: TrainerOptions | undefined, architecture: 'retinanet' | 'nanodet-plus'): TrainerOptions {
  const o = checkOptions('options', options);
  const opt = checkOptions('options.optimizer', o.optimizer);
  if (opt.type !== undefined) checkOneOf('options.optimizer.type', opt.type, ['sgd', 'adamw'] as const);
  for (const k of ['lr', 'momentum', 'weightDecay', 'beta1', 'beta2', 'eps', 'clipGradNorm', 'backboneLrMultiplier'] as const)
    if (opt[k] !== undefined && (typeof opt[k] !== 'number' || !Number.isFinite(opt[k]) || (opt[k] as number) < 0)) throw invalid(`options.optimizer.${k}`, 'a non-negative number', opt[k]);
  const sch = checkOptions('options.schedule', o.schedule);
  if (sch.type !== undefined) checkOneOf('options.schedule.type', sch.type, ['constant', 'step', 'cosine', 'plateau'] as const);
  if (sch.monitor !== undefined) checkOneOf('options.schedule.monitor', sch.monitor, ['AP', 'AP50', 'loss'] as const);
  if (sch.warmupSteps !== undefined) checkInteger('options.schedule.warmupSteps', sch.warmupSteps, 0, 1e9);
  if (sch.patience !== undefined) checkInteger('options.schedule.patience', sch.patience, 0, 1e6);
  for (const k of ['warmupFactor', 'gamma', 'factor', 'threshold', 'minLr'] as const)
    if (sch[k] !== undefined && (typeof sch[k] !== 'number' || !Number.isFinite(sch[k]) || (sch[k] as number) < 0)) throw invalid(`options.schedule.${k}`, 'a non-negative number', sch[k]);
  if (sch.milestones !== undefined && (!Array.isArray(sch.milestones) || sch.milestones.some((m) => !Number.isInteger(m) || m < 0)))
    throw invalid('options.schedule.milestones', 'an array of non-negative integers (epochs)', sch.milestones);
  if (opt.implementation !== undefined) checkOneOf('options.optimizer.implementation', opt.implementation, ['auto', 'fused', 'foreach', 'loop'] as const);
  for (const k of ['amp', 'channelsLast', 'cudnnBenchmark'] as const)
    if (o[k] !== undefined && typeof o[k] !== 'boolean') throw invalid(`options.${k}`, 'a boolean', o[k]);
  if (o.cudaGraph !== undefined && typeof o.cudaGraph !== 'boolean' && o.cudaGraph !== 'auto') throw invalid('options.cudaGraph', "a boolean or 'auto'", o.cudaGraph);
  if (o.ema !== undefined && typeof o.ema !== 'boolean') {
    const e = checkOptions('options.ema', o.ema);
    if (e.decay !== undefined && !(typeof e.decay === 'number' && e.decay > 0 && e.decay < 1)) throw invalid('options.ema.decay', 'a number in (0, 1)', e.decay, RangeError);
    if (e.tau !== undefined && !(typeof e.tau === 'number' && e.tau > 0)) throw invalid('options.ema.tau', 'a positive number', e.tau, RangeError);
  }
  if (o.maxConsecutiveSkips !== undefined) checkInteger('options.maxConsecutiveSkips', o.maxConsecutiveSkips, 1, 1e9);
  if (o.replicas !== undefined && o.replicas !== 'auto') checkInteger('options.replicas', o.replicas, 1, 256);
  if (o.processGroup !== undefined && !(o.processGroup instanceof ProcessGroup)) throw invalid('options.processGroup', 'a ProcessGroup (ProcessGroup.init or ProcessGroup.fromEnv)', o.processGroup);
  if (o.bucketMiB !== undefined && !(typeof o.bucketMiB === 'number' && o.bucketMiB >= 1 / 1024 && o.bucketMiB <= 1024)) throw invalid('options.bucketMiB', 'a number of MiB in [1/1024, 1024]', o.bucketMiB, RangeError);
  if (architecture === 'nanodet-plus') {
    const l = checkOptions('options.loss', o.loss) as Record<string, unknown>;
    const foreign = Object.keys(l).filter((k) => !NANODET_LOSS_KEYS.includes(k));
    if (foreign.length > 0) throw new RangeError(`options.loss: ${foreign.join(', ')} ${foreign.length > 1 ? 'are' : 'is'} not an option of the NanoDet-Plus loss (expected ${NANODET_LOSS_KEYS.join(', ')})`);
    return { ...o, optimizer: opt, schedule: sch, loss: checkNanoDetPlusLossOptions('options.loss', o.loss as NanoDetPlusLossOptions) };
  }
  if (o.loss !== undefined) checkContrastiveTraining('options.loss.contrastive', checkOptions('options.loss', o.loss as RetinaNetLossOptions).contrastive);
  return { ...o, optimizer: opt, schedule: sch };
}

const NANODET_LOSS_KEYS = ['qflBeta', 'qflWeight', 'giouWeight', 'dflWeight', 'detachEpoch', 'assignBy', 'assigner'];

/** Keys whose values differ between two option objects (for a clear resume error). */
function differences(a: unknown, b: unknown, prefix = ''): string[] {
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = new Set([...Object.keys(a as object), ...Object.keys(b as object)]);
    return [...keys].flatMap((k) => differences((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], prefix ? `${prefix}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [`${prefix} (${JSON.stringify(a)} in the checkpoint, ${JSON.stringify(b)} now)`];
}

function readJsonLines<T>(file: string): T[] {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as T];
      } catch {
        return []; // a line cut by a kill
      }
    });
}

/** Data-parallel processes on this machine: LOCAL_WORLD_SIZE as launchers set it, else the whole group. */
export function localProcesses(group: ProcessGroup): number {
  const n = Number(process.env.LOCAL_WORLD_SIZE);
  return Number.isInteger(n) && n >= 1 ? n : group.worldSize;
}

/**
 * Trains a model. Events: `'step'` (a StepRecord after every step), `'epoch'` (an EpochRecord after every
 * epoch), `'warning'` (a message: cudaGraph 'auto' gave up on CUDA graphs and went on eagerly).
 */
export class Trainer extends EventEmitter {
  private readonly model: Model;
  /** The options that define the run (checkpointed and compared at resume): without the performance settings (processGroup, bucketMiB, channelsLast, cudnnBenchmark, cudaGraph, optimizer.implementation). */
  private readonly options: TrainerOptions;
  private readonly group?: ProcessGroup;
  private readonly session: NativeSession;
  private consecutiveSkips = 0;
  /** When the last step's result came back (a step asked for before it counts its time from there). */
  private lastStepEnd = 0n;
  private stepsPerEpoch = 0;
  private totalEpochs = 1;
  private plateau: PlateauState = { scale: 1, best: null, bad: 0 };

  constructor(model: Model, options?: TrainerOptions) {
    super();
    const { processGroup, bucketMiB, channelsLast, cudnnBenchmark, cudaGraph, ...rest } = checkTrainerOptions(options, model.architecture);
    const { implementation, ...optimizer } = rest.optimizer ?? {};
    this.options = { ...rest, optimizer };
    this.group = processGroup && processGroup.worldSize > 1 ? processGroup : undefined;
    this.model = model;
    const { emaDecay, emaTau } = emaSettings(this.options.ema);
    const replicas = resolveReplicas(this.options.replicas, model.device, this.options.loss as RetinaNetLossOptions, model.architecture, this.group ? localProcesses(this.group) : 1);
    if (this.group && this.group.device !== model.device && !(this.group.device === 'cuda:0' && model.device === 'cuda'))
      throw new RangeError(`the process group's collectives run on ${this.group.device} (${this.group.backend}) but the model is on ${model.device}`);
    const onCuda = model.device.startsWith('cuda');
    if (cudnnBenchmark ?? onCuda) setCudnnBenchmark(true);
    const training = { amp: this.options.amp ?? false, channelsLast: channelsLast ?? onCuda, cudaGraph: cudaGraph === true ? 'on' : cudaGraph === false ? 'off' : 'auto', emaDecay, emaTau, replicas, bucketMiB: bucketMiB ?? 25 };
    // a RetinaNet loss without its own box coder encodes targets with the model's (the decoding's)
    let loss = this.options.loss ?? {};
    const modelCoder = model.architecture === 'retinanet' ? (model.config as { boxCoder?: BoxCoderOptions }).boxCoder : undefined;
    const lossFocal = (loss as RetinaNetLossOptions).focal;
    if (modelCoder && !lossFocal?.boxCoder) loss = { ...loss, focal: { ...lossFocal, boxCoder: modelCoder } };
    this.session = native().trainerCreate(model.handle, { ...optimizer, implementation: implementation ?? 'auto' }, loss, training, this.group?.nativeHandle ?? null);
  }

  /** Learning rate of global step `step`: warm-up, then the schedule over `epochs` of `stepsPerEpoch` (× the plateau factor). */
  lrAt(step: number, stepsPerEpoch = this.stepsPerEpoch, epochs = this.totalEpochs): number {
    const base = this.options.optimizer?.lr ?? 0.01;
    const s = this.options.schedule ?? {};
    const warm = s.warmupSteps ?? 0;
    if (step < warm) {
      const f = s.warmupFactor ?? 0.001;
      return base * (f + (1 - f) * (step / warm));
    }
    const epoch = stepsPerEpoch > 0 ? Math.floor(step / stepsPerEpoch) : 0;
    switch (s.type ?? 'constant') {
      case 'step':
        return base * Math.pow(s.gamma ?? 0.1, (s.milestones ?? []).filter((m) => epoch >= m).length);
      case 'cosine': {
        const total = Math.max(1, stepsPerEpoch * epochs - warm);
        return 0.5 * base * (1 + Math.cos((Math.PI * Math.min(step - warm, total)) / total));
      }
      case 'plateau':
        return Math.max(base * this.plateau.scale, Math.min(base, s.minLr ?? 0));
      default:
        return base;
    }
  }

  /** Feeds one evaluation of the monitored number to the 'plateau' schedule (higher is better for AP, lower for loss). */
  observe(value: number, monitor: 'AP' | 'AP50' | 'loss'): void {
    const s = this.options.schedule ?? {};
    if (s.type !== 'plateau' || !Number.isFinite(value)) return;
    const v = monitor === 'loss' ? -value : value;
    const thr = s.threshold ?? 1e-4;
    const p = this.plateau;
    if (p.best === null || v > p.best + Math.abs(p.best) * thr) {
      p.best = v;
      p.bad = 0;
    } else if (++p.bad > (s.patience ?? 2)) {
      p.scale *= s.factor ?? 0.1;
      p.bad = 0;
    }
  }

  /** One training step on a batch (the model is put in train mode). */
  async step(batch: Batch, lr = this.lrAt(0), where: { epoch: number; batch: number; step: number } = { epoch: 0, batch: 0, step: 0 }): Promise<StepRecord> {
    const started = process.hrtime.bigint();
    if (this.usesViews && !batch.views) throw new Error('the contrastive loss needs the second view of every batch: create the DataLoader with views: 2');
    const r = await native().trainerStepAsync(this.session, batch.images.handle, batch.annotations.handle, lr, this.usesViews ? batch.views!.handle : null, where.epoch);
    // a step asked for while the last one ran (Trainer.fit's pipeline) started when that one ended
    const ended = process.hrtime.bigint();
    const seconds = Number(ended - (this.lastStepEnd > started ? this.lastStepEnd : started)) / 1e9;
    this.lastStepEnd = ended;
    const record: StepRecord = { ...where, lr, ...r, reason: r.skipped ? r.reason : undefined, ids: batch.ids, seconds, imagesPerSecond: batch.ids.length / seconds };
    this.consecutiveSkips = r.skipped ? this.consecutiveSkips + 1 : 0;
    if (r.graphWarning) this.emit('warning', r.graphWarning);
    this.emit('step', record);
    return record;
  }

  /** Whether the steps use the batches' second view (the contrastive term is on). */
  get usesViews(): boolean {
    return ((this.options.loss as RetinaNetLossOptions | undefined)?.contrastive?.weight ?? 0) > 0;
  }

  /** Whether the weights are averaged (EMA). */
  get hasEma(): boolean {
    return emaSettings(this.options.ema).emaDecay > 0;
  }

  /**
   * Runs `fn` with the EMA weights in the model (the training weights are put back after, even on
   * error). Without EMA it just runs `fn`.
   */
  async withEmaWeights<T>(fn: () => Promise<T>): Promise<T> {
    if (!this.hasEma) return fn();
    native().trainerSwapEma(this.session);
    try {
      return await fn();
    } finally {
      native().trainerSwapEma(this.session);
    }
  }

  /** COCO evaluation of the model (EMA weights when on) on `loader`. */
  async evaluate(loader: DataLoader, options?: EvaluateOptions): Promise<DetectorEvaluation> {
    return this.withEmaWeights(() => evaluateDetector(this.model, loader, this.group ? { ...options, group: this.group } : options));
  }

  /**
   * Trains over `loader` up to `epochs`. With `runDir`: appends every step to metrics.jsonl and every
   * epoch to epochs.jsonl, plots them, checkpoints after each epoch (and every `checkpointEvery`
   * steps), and writes the final weights to `model.safetensors` (and `best.safetensors`, the best
   * validation); with `resume` it continues from the latest checkpoint at the exact next batch.
   */
  async fit(loader: DataLoader, options: FitOptions): Promise<FitResult> {
    const o = checkOptions('options', options) as FitOptions;
    checkInteger('options.epochs', o.epochs, 1, 1e6);
    if (o.evalEvery !== undefined) checkInteger('options.evalEvery', o.evalEvery, 1, 1e6);
    if (o.checkpointEvery !== undefined) checkInteger('options.checkpointEvery', o.checkpointEvery, 1, 1e9);
    if (o.keep !== undefined) checkInteger('options.keep', o.keep, 1, 1e6);
    if (o.progress !== undefined) checkOneOf('options.progress', o.progress, ['auto', 'bar', 'lines', 'none'] as const);
    if (o.pipeline !== undefined && typeof o.pipeline !== 'boolean' && o.pipeline !== 'auto') throw new TypeError(`Expected a boolean or 'auto' for options.pipeline but received ${JSON.stringify(o.pipeline)}`);
    if (o.valLoader !== undefined && o.valLoader.augments) throw new RangeError('options.valLoader must not augment (create it with augment: false)');
    if (o.resume && !o.runDir) throw new TypeError('options.resume needs options.runDir');
    const group = this.group;
    for (const [name, l] of [['loader', loader], ['options.valLoader', o.valLoader]] as const) {
      if (!l) continue;
      const want = group ? group.shard : { rank: 0, count: 1 };
      const has = l.shard ?? { rank: 0, count: 1 }; // loaders of one's own may have no shard
      if (has.rank !== want.rank || has.count !== want.count)
        throw new RangeError(group ? `data-parallel training needs ${name} sharded for this rank: create it with { shard: group.shard } (rank ${want.rank} of ${want.count}); it has rank ${has.rank} of ${has.count}` : `${name} is one shard (rank ${has.rank} of ${has.count}) but the trainer has no processGroup`);
    }
    // only rank 0 writes (records, plots, checkpoints, weights); every rank reads a checkpoint to resume
    const main = !group || group.isMain;
    this.stepsPerEpoch = loader.length;
    this.totalEpochs = o.epochs;
    let epoch = 0;
    let firstBatch = 0;
    let step = 0;
    if (o.resume) ({ epoch, batch: firstBatch, step } = await this.loadCheckpoint(o.runDir!, loader.length));
    const files = o.runDir && main ? this.runFiles(o.runDir) : undefined;
    if (files) {
      fs.mkdirSync(o.runDir!, { recursive: true });
      // steps and epochs after the checkpoint are run again: drop their records
      writeFileAtomic(files.metrics, readJsonLines<StepRecord>(files.metrics).filter((r) => r.step < step).map((r) => JSON.stringify(r) + '\n').join(''));
      writeFileAtomic(files.epochs, readJsonLines<EpochRecord>(files.epochs).filter((r) => r.epoch < epoch).map((r) => JSON.stringify(r) + '\n').join(''));
    }
    const monitor = this.options.schedule?.monitor ?? (o.valLoader ? 'AP50' : 'loss');
    if (monitor !== 'loss' && this.options.schedule?.type === 'plateau' && !o.valLoader) throw new RangeError(`options.schedule.monitor '${monitor}' needs options.valLoader`);
    const progress = new Progress(main ? (o.progress ?? 'none') : 'none', loader.length);
    const world = group?.worldSize ?? 1;
    const plots = files && o.plots !== false;
    const result: FitResult = { epochs: o.epochs, steps: 0, skipped: [], history: [] };
    const pipeline = o.pipeline === undefined || o.pipeline === 'auto' ? this.model.device.startsWith('cuda') && !group : o.pipeline;
    let bestAp = files && fs.existsSync(files.best) ? (readJsonLines<EpochRecord>(files.epochs).reduce((b, r) => Math.max(b, r.val?.[monitor === 'AP' ? 'AP' : 'AP50'] ?? -1), -1)) : -1;
    this.model.train();
    try {
      for (; epoch < o.epochs; epoch++, firstBatch = 0) {
        const sums = { cls: 0, reg: 0, contrastive: 0, total: 0, n: 0, images: 0, skipped: 0, lr: 0 };
        const components: Record<string, number> = {};
        const epochStart = process.hrtime.bigint();
        let k = 0;
        progress.startEpoch(loader.length, firstBatch, { epoch, epochs: o.epochs, loss: NaN, cls: NaN, reg: NaN, lr: this.lrAt(step), imagesPerSecond: 0 });
        // a step asked for and not yet handled (pipeline): its record, batch and place
        let inFlight: { record: Promise<StepRecord>; batch: Batch; k: number; step: number } | undefined;
        const handle = async (f: NonNullable<typeof inFlight>) => {
          try {
            const rec = await f.record;
            if (files) fs.appendFileSync(files.metrics, JSON.stringify(rec) + '\n');
            sums.lr = rec.lr;
            if (rec.graphWarning) progress.log(`step ${f.step}: ${rec.graphWarning}`);
            if (rec.skipped) {
              sums.skipped++;
              result.skipped.push({ step: f.step, ids: rec.ids, reason: rec.reason ?? '' });
              progress.log(`step ${f.step} skipped (images ${rec.ids.join(', ')}): ${rec.reason}`);
              if (this.consecutiveSkips >= (this.options.maxConsecutiveSkips ?? 10))
                throw new Error(`training stopped: ${this.consecutiveSkips} consecutive steps were skipped; the last (epoch ${epoch}, batch ${f.k}, images ${rec.ids.join(', ')}): ${rec.reason}`);
            } else {
              sums.cls += rec.cls;
              sums.reg += rec.reg;
              sums.contrastive += rec.contrastive;
              sums.total += rec.total;
              for (const [k, v] of Object.entries(rec.components ?? {})) components[k] = (components[k] ?? 0) + v;
              sums.n++;
            }
            sums.images += rec.ids.length;
            result.steps++;
            const elapsed = Number(process.hrtime.bigint() - epochStart) / 1e9;
            progress.update(f.k + 1, loader.length, { epoch, epochs: o.epochs, loss: rec.total, cls: rec.cls, reg: rec.reg, lr: rec.lr, imagesPerSecond: (world * sums.images) / elapsed });
            if (o.runDir && main && o.checkpointEvery && (f.step + 1) % o.checkpointEvery === 0) await this.saveCheckpoint(o.runDir, { epoch, batch: f.k + 1, step: f.step + 1 }, o.keep);
          } finally {
            disposeBatch(f.batch);
          }
        };
        try {
          for await (const batch of loader.epoch(epoch)) {
            if (k < firstBatch) {
              k++;
              disposeBatch(batch);
              continue;
            }
            // the next epoch's first batches decode while this epoch's last step (and the evaluation,
            // checkpoint and plots after it) run
            if (k === loader.length - 1 && epoch + 1 < o.epochs && typeof loader.prepare === 'function') loader.prepare(epoch + 1);
            const asked = { record: this.step(batch, this.lrAt(step), { epoch, batch: k, step }), batch, k, step };
            // its failure is handled where it is awaited (not an unhandled rejection meanwhile)
            asked.record.catch(() => undefined);
            k++;
            step++;
            const previous = inFlight;
            inFlight = asked;
            if (previous) await handle(previous);
            // without the pipeline, or when a checkpoint follows this step, nothing more is asked for first
            if (!pipeline || (o.runDir && main && o.checkpointEvery && step % o.checkpointEvery === 0)) {
              inFlight = undefined;
              await handle(asked);
            }
          }
          if (inFlight) {
            const last = inFlight;
            inFlight = undefined;
            await handle(last);
          }
        } finally {
          // a failure with a step still running: it ends before the error goes on (its batch freed)
          if (inFlight) {
            await inFlight.record.catch(() => undefined);
            disposeBatch(inFlight.batch);
          }
        }
        progress.stopBar();
        const seconds = Number(process.hrtime.bigint() - epochStart) / 1e9;
        const n = Math.max(1, sums.n);
        const record: EpochRecord = { epoch, step, cls: sums.cls / n, reg: sums.reg / n, contrastive: sums.contrastive / n, total: sums.total / n, components: Object.fromEntries(Object.entries(components).map(([k, v]) => [k, v / n])), lr: sums.lr, skipped: sums.skipped, seconds, imagesPerSecond: (world * sums.images) / seconds };
        const last = epoch === o.epochs - 1;
        if (o.valLoader && ((epoch + 1) % (o.evalEvery ?? 1) === 0 || last)) {
          const ev = await this.evaluate(o.valLoader, o.evaluate);
          this.model.train();
          result.evaluation = ev;
          const named = Object.fromEntries(COCO_STAT_NAMES.map((name, i) => [name, ev.stats[i]])) as NonNullable<EpochRecord['val']>;
          record.val = { ...named, ...(ev.voc ? { vocMap: ev.voc.map } : {}), seconds: ev.seconds };
          const watched = monitor === 'AP' ? ev.stats[0] : ev.stats[1];
          if (monitor !== 'loss') this.observe(watched, monitor);
          if (files && watched > bestAp) {
            bestAp = watched;
            await this.withEmaWeights(() => this.model.saveWeights(files.best, o.metadata));
          }
        }
        if (monitor === 'loss') this.observe(record.total, 'loss');
        progress.log(`epoch ${epoch + 1}/${o.epochs}: loss ${record.total.toFixed(4)} (cls ${record.cls.toFixed(4)} reg ${record.reg.toFixed(4)}${this.usesViews ? ` contrastive ${record.contrastive.toFixed(4)}` : ''}) ${record.imagesPerSecond.toFixed(1)} img/s ${seconds.toFixed(1)} s` +
          (record.val ? ` | val AP ${record.val.AP.toFixed(4)} AP50 ${record.val.AP50.toFixed(4)} AP75 ${record.val.AP75.toFixed(4)}` : ''));
        result.history.push(record);
        if (files) fs.appendFileSync(files.epochs, JSON.stringify(record) + '\n');
        this.emit('epoch', record);
        if (o.runDir && main) await this.saveCheckpoint(o.runDir, { epoch: epoch + 1, batch: 0, step }, o.keep);
        if (plots) await this.writePlots(o.runDir!);
      }
      if (files) {
        await this.withEmaWeights(() => this.model.saveWeights(files.final, o.metadata));
        result.weights = files.final;
      }
      // every rank leaves together (rank 0 serves the store the others may still be reading)
      if (group) await group.barrier('end of training');
    } finally {
      progress.stopBar();
      if (typeof loader.discardPrepared === 'function') await loader.discardPrepared();
    }
    return result;
  }

  private runFiles(runDir: string) {
    return {
      metrics: path.join(runDir, 'metrics.jsonl'),
      epochs: path.join(runDir, 'epochs.jsonl'),
      final: path.join(runDir, 'model.safetensors'),
      best: path.join(runDir, 'best.safetensors'),
    };
  }

  /** Writes loss.svg/.png (every step, smoothed, and epoch means) and, with validation, val.svg/.png. */
  async writePlots(runDir: string): Promise<void> {
    const files = this.runFiles(runDir);
    const steps = readJsonLines<StepRecord>(files.metrics).filter((r) => !r.skipped);
    const epochs = readJsonLines<EpochRecord>(files.epochs);
    const perEpoch = Math.max(1, this.stepsPerEpoch);
    const x = (r: StepRecord) => r.step / perEpoch;
    const curve = (key: 'total' | 'cls' | 'reg' | 'contrastive') => thin(smooth(steps.map((r) => [x(r), r[key] ?? 0] as [number, number])), 1500);
    await writeLineChart(path.join(runDir, 'loss'), [
      { name: 'total', points: curve('total') },
      { name: 'classification', points: curve('cls') },
      { name: 'regression', points: curve('reg') },
      ...(this.usesViews ? [{ name: 'contrastive', points: curve('contrastive') }] : []),
      { name: 'total (epoch mean)', points: epochs.map((e) => [e.epoch + 1, e.total]) },
    ], { title: 'Training loss (smoothed)', xTitle: 'epoch', yTitle: 'loss', logY: true });
    const val = epochs.filter((e) => e.val);
    if (val.length > 0)
      await writeLineChart(path.join(runDir, 'val'), [
        { name: 'AP', points: val.map((e) => [e.epoch + 1, e.val!.AP]) },
        { name: 'AP50', points: val.map((e) => [e.epoch + 1, e.val!.AP50]) },
        { name: 'AP75', points: val.map((e) => [e.epoch + 1, e.val!.AP75]) },
        ...(val.some((e) => e.val!.vocMap !== undefined) ? [{ name: 'VOC mAP@0.5', points: val.map((e) => [e.epoch + 1, e.val!.vocMap ?? NaN] as [number, number]) }] : []),
      ], { title: 'Validation', xTitle: 'epoch', yTitle: 'average precision', yDomain: [0, 1] });
  }

  /** Writes `runDir/ckpt-<step>/` (weights.safetensors, trainer.pt, state.json), then `latest.json` atomically. */
  async saveCheckpoint(runDir: string, at: { epoch: number; batch: number; step: number }, keep = 2): Promise<string> {
    const dir = path.join(runDir, `ckpt-${String(at.step).padStart(8, '0')}-e${at.epoch}b${at.batch}`);
    fs.mkdirSync(dir, { recursive: true });
    await this.model.saveWeights(path.join(dir, 'weights.safetensors'));
    await native().trainerSaveStateAsync(this.session, path.join(dir, 'trainer.pt'));
    const state: CheckpointState = { format: 'onestage-checkpoint-2', ...at, plateau: { ...this.plateau }, consecutiveSkips: this.consecutiveSkips, options: this.options, worldSize: this.group?.worldSize ?? 1, stepsPerEpoch: this.stepsPerEpoch };
    writeJsonAtomic(path.join(dir, 'state.json'), state, 1);
    writeJsonAtomic(path.join(runDir, 'latest.json'), { checkpoint: path.basename(dir) });
    const all = fs.readdirSync(runDir).filter((d) => d.startsWith('ckpt-')).sort();
    for (const old of all.slice(0, Math.max(0, all.length - keep))) if (old !== path.basename(dir)) fs.rmSync(path.join(runDir, old), { recursive: true, force: true });
    return dir;
  }

  /**
   * Restores weights, optimizer, GHM and EMA state and the schedule from `runDir/latest.json`; returns
   * where to continue. A checkpoint written by another number of processes (other batches per epoch,
   * `stepsPerEpoch` now) continues at the same fraction of its epoch, with the step count in this run's batches.
   */
  async loadCheckpoint(runDir: string, stepsPerEpoch?: number): Promise<CheckpointState> {
    let dir: string;
    let state: CheckpointState;
    try {
      dir = path.join(runDir, (JSON.parse(fs.readFileSync(path.join(runDir, 'latest.json'), 'utf8')) as { checkpoint: string }).checkpoint);
      state = JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')) as CheckpointState;
    } catch (err) {
      throw new Error(`${runDir}: no readable checkpoint to resume from (${(err as Error).message})`);
    }
    if (state.format !== 'onestage-checkpoint-2') throw new Error(`${dir}/state.json: unknown checkpoint format ${String(state.format)}`);
    const changed = differences(state.options, JSON.parse(JSON.stringify(this.options)));
    if (changed.length > 0) throw new Error(`${dir}: the checkpoint was written with other trainer options: ${changed.join('; ')}`);
    try {
      await this.model.loadWeights(path.join(dir, 'weights.safetensors'));
    } catch (err) {
      throw new Error(`${dir}/weights.safetensors: ${(err as Error).message}`);
    }
    await native().trainerLoadStateAsync(this.session, path.join(dir, 'trainer.pt'));
    this.plateau = { ...state.plateau };
    this.consecutiveSkips = state.consecutiveSkips;
    const before = state.stepsPerEpoch;
    if (stepsPerEpoch !== undefined && before !== undefined && before !== stepsPerEpoch) {
      const batch = Math.min(stepsPerEpoch, Math.round((state.batch / before) * stepsPerEpoch));
      return { ...state, batch, step: state.epoch * stepsPerEpoch + batch };
    }
    return state;
  }

  /** Frees the optimizer state (the model stays). */
  dispose(): void {
    native().trainerDispose(this.session);
  }
}
