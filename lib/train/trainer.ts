/**
 * Trainer: runs training steps natively (forward, loss, backward, clipping, optimizer step in one
 * async call — the event loop stays free), schedules the learning rate, records every step, and
 * checkpoints so that a killed run resumes at the exact next batch with the same learning rate.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, NativeSession } from '../binding';
import type { Batch, DataLoader } from '../data/loader';
import { disposeBatch } from '../data/loader';
import type { RetinaNetLossOptions } from '../losses';
import type { Model } from '../model';
import { checkInteger, checkOneOf, checkOptions, invalid } from '../validate';

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
}

export interface ScheduleOptions {
  /** Steps of linear warm-up from warmupFactor·lr to lr; default 0. */
  warmupSteps?: number;
  /** Default 0.001. */
  warmupFactor?: number;
  /** After warm-up: 'constant' (default), 'step' (× gamma at each milestone epoch) or 'cosine' (to 0 at the end). */
  type?: 'constant' | 'step' | 'cosine';
  /** Epochs at which 'step' multiplies the rate by gamma. */
  milestones?: number[];
  /** Default 0.1. */
  gamma?: number;
}

export interface TrainerOptions {
  optimizer?: OptimizerOptions;
  loss?: RetinaNetLossOptions;
  schedule?: ScheduleOptions;
  /** Training stops with an error after this many consecutive skipped (non-finite) steps; default 10. */
  maxConsecutiveSkips?: number;
}

export interface StepRecord {
  epoch: number;
  /** Batch index within the epoch. */
  batch: number;
  /** Global step (all epochs). */
  step: number;
  lr: number;
  cls: number;
  reg: number;
  total: number;
  gradNorm: number;
  skipped: boolean;
  reason?: string;
  ids: Array<number | string>;
  seconds: number;
  imagesPerSecond: number;
}

export interface FitOptions {
  /** Total epochs to reach (resuming continues up to this). */
  epochs: number;
  /** Folder for metrics.jsonl and checkpoints; none: nothing is written. */
  runDir?: string;
  /** Continue from runDir's latest checkpoint; default false. */
  resume?: boolean;
  /** Also checkpoint every this many steps; default: only at the end of each epoch. */
  checkpointEvery?: number;
  /** Keep this many checkpoints; default 2. */
  keep?: number;
}

export interface FitResult {
  epochs: number;
  steps: number;
  skipped: Array<{ step: number; ids: Array<number | string>; reason: string }>;
}

interface CheckpointState {
  format: 'onestage-checkpoint-1';
  /** Epoch and batch to run next. */
  epoch: number;
  batch: number;
  step: number;
  options: TrainerOptions;
}

function writeAtomic(file: string, text: string): void {
  fs.writeFileSync(file + '.tmp', text);
  const fd = fs.openSync(file + '.tmp', 'r');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(file + '.tmp', file);
}

export class Trainer extends EventEmitter {
  private readonly model: Model;
  private readonly options: TrainerOptions;
  private readonly session: NativeSession;
  private consecutiveSkips = 0;
  private stepsPerEpoch = 0;
  private totalEpochs = 1;

  constructor(model: Model, options?: TrainerOptions) {
    super();
    const o = checkOptions('options', options);
    const opt = checkOptions('options.optimizer', o.optimizer);
    if (opt.type !== undefined) checkOneOf('options.optimizer.type', opt.type, ['sgd', 'adamw'] as const);
    for (const k of ['lr', 'momentum', 'weightDecay', 'beta1', 'beta2', 'eps', 'clipGradNorm'] as const)
      if (opt[k] !== undefined && (typeof opt[k] !== 'number' || !Number.isFinite(opt[k]) || (opt[k] as number) < 0)) throw invalid(`options.optimizer.${k}`, 'a non-negative number', opt[k]);
    const sch = checkOptions('options.schedule', o.schedule);
    if (sch.type !== undefined) checkOneOf('options.schedule.type', sch.type, ['constant', 'step', 'cosine'] as const);
    if (sch.warmupSteps !== undefined) checkInteger('options.schedule.warmupSteps', sch.warmupSteps, 0, 1e9);
    this.model = model;
    this.options = { ...o, optimizer: opt, schedule: sch };
    this.session = native().trainerCreate(model.handle, opt, o.loss ?? {});
  }

  /** Learning rate of global step `step` (warm-up, then the schedule over `epochs` of `stepsPerEpoch`). */
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
      default:
        return base;
    }
  }

  /** One training step on a batch (the model is put in train mode). */
  async step(batch: Batch, lr = this.lrAt(0), where: { epoch: number; batch: number; step: number } = { epoch: 0, batch: 0, step: 0 }): Promise<StepRecord> {
    const started = process.hrtime.bigint();
    const r = await native().trainerStepAsync(this.session, batch.images.handle, batch.annotations.handle, lr);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const record: StepRecord = { ...where, lr, ...r, reason: r.skipped ? r.reason : undefined, ids: batch.ids, seconds, imagesPerSecond: batch.ids.length / seconds };
    this.consecutiveSkips = r.skipped ? this.consecutiveSkips + 1 : 0;
    this.emit('step', record);
    return record;
  }

  /**
   * Trains over `loader` up to `epochs`. With `runDir`: appends every step to metrics.jsonl and
   * checkpoints after each epoch (and every `checkpointEvery` steps); with `resume` it continues
   * from the latest checkpoint at the exact next batch.
   */
  async fit(loader: DataLoader, options: FitOptions): Promise<FitResult> {
    const o = checkOptions('options', options) as FitOptions;
    checkInteger('options.epochs', o.epochs, 1, 1e6);
    this.stepsPerEpoch = loader.length;
    this.totalEpochs = o.epochs;
    let epoch = 0;
    let firstBatch = 0;
    let step = 0;
    if (o.resume) {
      if (!o.runDir) throw new TypeError('options.resume needs options.runDir');
      const state = await this.loadCheckpoint(o.runDir);
      ({ epoch, batch: firstBatch, step } = state);
    }
    if (o.runDir) fs.mkdirSync(o.runDir, { recursive: true });
    const metrics = o.runDir ? path.join(o.runDir, 'metrics.jsonl') : undefined;
    const result: FitResult = { epochs: o.epochs, steps: 0, skipped: [] };
    this.model.train();
    for (; epoch < o.epochs; epoch++, firstBatch = 0) {
      let k = 0;
      for await (const batch of loader.epoch(epoch)) {
        try {
          if (k < firstBatch) continue;
          const rec = await this.step(batch, this.lrAt(step), { epoch, batch: k, step });
          if (metrics) fs.appendFileSync(metrics, JSON.stringify(rec) + '\n');
          if (rec.skipped) {
            result.skipped.push({ step, ids: rec.ids, reason: rec.reason ?? '' });
            if (this.consecutiveSkips >= (this.options.maxConsecutiveSkips ?? 10))
              throw new Error(`training stopped: ${this.consecutiveSkips} consecutive steps were skipped; the last (epoch ${epoch}, batch ${k}, images ${rec.ids.join(', ')}): ${rec.reason}`);
          }
          step++;
          result.steps++;
          if (o.runDir && o.checkpointEvery && step % o.checkpointEvery === 0) await this.saveCheckpoint(o.runDir, { epoch, batch: k + 1, step }, o.keep);
        } finally {
          k++;
          disposeBatch(batch);
        }
      }
      this.emit('epoch', { epoch, step });
      if (o.runDir) await this.saveCheckpoint(o.runDir, { epoch: epoch + 1, batch: 0, step }, o.keep);
    }
    return result;
  }

  /** Writes `runDir/ckpt-<step>/` (weights.safetensors, optimizer.pt, state.json), then `latest.json` atomically. */
  async saveCheckpoint(runDir: string, at: { epoch: number; batch: number; step: number }, keep = 2): Promise<string> {
    const dir = path.join(runDir, `ckpt-${String(at.step).padStart(8, '0')}-e${at.epoch}b${at.batch}`);
    fs.mkdirSync(dir, { recursive: true });
    await this.model.saveWeights(path.join(dir, 'weights.safetensors'));
    await native().trainerSaveOptimizerAsync(this.session, path.join(dir, 'optimizer.pt'));
    const state: CheckpointState = { format: 'onestage-checkpoint-1', ...at, options: this.options };
    writeAtomic(path.join(dir, 'state.json'), JSON.stringify(state, null, 1));
    writeAtomic(path.join(runDir, 'latest.json'), JSON.stringify({ checkpoint: path.basename(dir) }));
    const all = fs.readdirSync(runDir).filter((d) => d.startsWith('ckpt-')).sort();
    for (const old of all.slice(0, Math.max(0, all.length - keep))) if (old !== path.basename(dir)) fs.rmSync(path.join(runDir, old), { recursive: true, force: true });
    return dir;
  }

  /** Restores weights and optimizer state from `runDir/latest.json`; returns where to continue. */
  async loadCheckpoint(runDir: string): Promise<CheckpointState> {
    let dir: string;
    let state: CheckpointState;
    try {
      dir = path.join(runDir, (JSON.parse(fs.readFileSync(path.join(runDir, 'latest.json'), 'utf8')) as { checkpoint: string }).checkpoint);
      state = JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')) as CheckpointState;
    } catch (err) {
      throw new Error(`${runDir}: no readable checkpoint to resume from (${(err as Error).message})`);
    }
    if (state.format !== 'onestage-checkpoint-1') throw new Error(`${dir}/state.json: unknown checkpoint format ${String(state.format)}`);
    await this.model.loadWeights(path.join(dir, 'weights.safetensors'));
    await native().trainerLoadOptimizerAsync(this.session, path.join(dir, 'optimizer.pt'));
    return state;
  }

  /** Frees the optimizer state (the model stays). */
  dispose(): void {
    native().trainerDispose(this.session);
  }
}
