/**
 * NanoDet-Plus losses and assignment, usable on plain tensors and inside training (a NanoDet-Plus
 * model trained by the Trainer uses the same native code): QualityFocalLoss, DistributionFocalLoss,
 * GIoULoss (per sample, as NanoDet's functions with reduction 'none'), the Dynamic Soft Label
 * assigner, and the whole NanoDet-Plus head loss with the auxiliary (AGM) head. Everything is
 * computed for the whole batch at once on the tensors' device, with autograd.
 *
 * Annotations are `[B, M, 5]` rows `(x1, y1, x2, y2, label)`: label ≥ 0 a box of that class,
 * −1 a padding row, −2 an ignore region (COCO crowd).
 */
import { native } from './binding';
import { handleOf, Tensor, wrapTensors } from './tensor';
import { checkInteger, checkOneOf, checkOptions, invalid } from './validate';

function finite(name: string, v: unknown): void {
  if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) throw invalid(name, 'a finite number', v);
}

/** Quality Focal Loss (GFL): the classification loss of NanoDet-Plus, against IoU-valued soft labels. */
export class QualityFocalLoss {
  private readonly beta: number;
  /** β: the modulating exponent; default 2. */
  constructor(options: { beta?: number } = {}) {
    const o = checkOptions('options', options);
    finite('options.beta', o.beta);
    this.beta = o.beta ?? 2;
  }
  /**
   * pred `[N, C]` logits, label `[N]` int64 (0…C−1 positive; anything else, e.g. C, background),
   * score `[N]` float32 (the positive's IoU target) → loss per sample `[N]` (summed over classes).
   */
  async forward(pred: Tensor, label: Tensor, score: Tensor): Promise<Tensor> {
    return new Tensor(await native().qualityFocalLossAsync(handleOf('pred', pred), handleOf('label', label), handleOf('score', score), { beta: this.beta }));
  }
}

/** Distribution Focal Loss (GFL): cross-entropy to the two bins around a continuous distance target. */
export class DistributionFocalLoss {
  /** pred `[N, regMax+1]` logits, label `[N]` float32 in `[0, regMax)` → loss per sample `[N]`. */
  async forward(pred: Tensor, label: Tensor): Promise<Tensor> {
    return new Tensor(await native().distributionFocalLossAsync(handleOf('pred', pred), handleOf('label', label)));
  }
}

/** GIoU loss `1 − GIoU` of aligned boxes (mmdetection/NanoDet: union and enclosing area max-clamped to eps). */
export class GIoULoss {
  private readonly eps: number;
  /** eps: default 1e-6 (NanoDet's GIoULoss). */
  constructor(options: { eps?: number } = {}) {
    const o = checkOptions('options', options);
    finite('options.eps', o.eps);
    this.eps = o.eps ?? 1e-6;
  }
  /** pred `[..., 4]`, target `[..., 4]` boxes → `[...]`. */
  async forward(pred: Tensor, target: Tensor): Promise<Tensor> {
    return new Tensor(await native().giouLossAsync(handleOf('pred', pred), handleOf('target', target), { eps: this.eps }));
  }
}

export interface DSLAssignerOptions {
  /** Candidates summed for the dynamic k; default 13. */
  topk?: number;
  /** Weight of the −log IoU cost; default 3. */
  iouFactor?: number;
  /** Add RTMDet's soft centre prior 10^(distance/stride − radius) to the cost; default false (NanoDet). */
  softCenterPrior?: boolean;
  /** Default 3. */
  softCenterRadius?: number;
  /** > 0: priors whose predicted box lies inside an ignore region (label −2) by more than this fraction are ignored; default 0 (off, as NanoDet). */
  ignoreIof?: number;
  /** Images are assigned in chunks of at most this many prior × GT pairs; default 2^24. */
  maxPairs?: number;
}

export interface DSLAssignment {
  /** `[B, N]` int64: annotation row of each positive prior, −1 otherwise. */
  gtIndex: Tensor;
  /** `[B, N]` int64: class of each positive, −1 otherwise. */
  labels: Tensor;
  /** `[B, N]` float32: IoU of the prior's predicted box with its GT (the QFL target), 0 otherwise. */
  ious: Tensor;
  /** `[B, N]` bool: ignored priors (only with ignoreIof). */
  ignored: Tensor;
  /** `[B]` int64. */
  numPositives: Tensor;
}

function checkDsl(name: string, o: DSLAssignerOptions | undefined): DSLAssignerOptions {
  const a = checkOptions(name, o);
  if (a.topk !== undefined) checkInteger(`${name}.topk`, a.topk, 1, 1000);
  if (a.maxPairs !== undefined) checkInteger(`${name}.maxPairs`, a.maxPairs, 1, 2 ** 40);
  for (const k of ['iouFactor', 'softCenterRadius', 'ignoreIof'] as const) finite(`${name}.${k}`, a[k]);
  if (a.softCenterPrior !== undefined && typeof a.softCenterPrior !== 'boolean') throw invalid(`${name}.softCenterPrior`, 'a boolean', a.softCenterPrior);
  return a;
}

/** Dynamic Soft Label assignment (NanoDet-Plus) for a whole batch; no gradient. */
export class DSLAssigner {
  private readonly options: DSLAssignerOptions;
  constructor(options?: DSLAssignerOptions) {
    this.options = checkDsl('options', options);
  }
  /**
   * logits `[B, N, C]` classification logits, priors `[N, 4]` (cx, cy, stride, stride), decoded
   * `[B, N, 4]` predicted boxes, annotations `[B, M, 5]` → the assignment.
   */
  async assign(logits: Tensor, priors: Tensor, decoded: Tensor, annotations: Tensor): Promise<DSLAssignment> {
    const out = await native().assignDslAsync(handleOf('logits', logits), handleOf('priors', priors), handleOf('decoded', decoded), handleOf('annotations', annotations), this.options);
    return wrapTensors<keyof DSLAssignment>(out);
  }
}

export interface NanoDetPlusLossOptions {
  /** QFL β; default 2. */
  qflBeta?: number;
  /** Default 1. */
  qflWeight?: number;
  /** Default 2. */
  giouWeight?: number;
  /** Default 0.25. */
  dflWeight?: number;
  /** Training: from this epoch on the AGM's inputs are detached; default 10. */
  detachEpoch?: number;
  /**
   * Training: `'aux'` (NanoDet-Plus's code, default) — the auxiliary head assigns the labels for the
   * whole of training; `'aux-until-detach'` (the note's reading) — from detachEpoch on the main head
   * assigns its own.
   */
  assignBy?: 'aux' | 'aux-until-detach';
  assigner?: DSLAssignerOptions;
}

/** Checks NanoDet-Plus loss options (throws naming the field). */
export function checkNanoDetPlusLossOptions(name: string, options: NanoDetPlusLossOptions | undefined): NanoDetPlusLossOptions {
  const o = checkOptions(name, options);
  for (const k of ['qflBeta', 'qflWeight', 'giouWeight', 'dflWeight'] as const) finite(`${name}.${k}`, o[k]);
  if (o.detachEpoch !== undefined) checkInteger(`${name}.detachEpoch`, o.detachEpoch, 0, 1e6);
  if (o.assignBy !== undefined) checkOneOf(`${name}.assignBy`, o.assignBy, ['aux', 'aux-until-detach'] as const);
  return { ...o, assigner: checkDsl(`${name}.assigner`, o.assigner) };
}

export interface NanoDetPlusLossInput {
  /** `[B, N, C + 4·(regMax+1)]` main head outputs (logits, then distance logits). */
  preds: Tensor;
  /** The auxiliary head's outputs, same shape; with them they assign the labels and add their own losses. */
  auxPreds?: Tensor;
  /** `[N, 4]` centre priors. */
  priors: Tensor;
  /** `[B, M, 5]`, −1-padded. */
  annotations: Tensor;
  /** Number of classes C. */
  numClasses: number;
  /** Default 7. */
  regMax?: number;
  /** Assign by the main head even with auxPreds; default false. */
  assignWithMain?: boolean;
}

export interface NanoDetPlusLossValue {
  qfl: Tensor;
  bbox: Tensor;
  dfl: Tensor;
  auxQfl?: Tensor;
  auxBbox?: Tensor;
  auxDfl?: Tensor;
  /** Sum of all terms, a one-element tensor with autograd. */
  total: Tensor;
  /** `[B]` int64 positives per image. */
  numPositives: Tensor;
}

/** The NanoDet-Plus head loss: DSL assignment, QFL, GIoU and DFL with NanoDet-Plus' normalisation, plus the AGM's. */
export class NanoDetPlusLoss {
  private readonly options: NanoDetPlusLossOptions;
  constructor(options?: NanoDetPlusLossOptions) {
    this.options = checkNanoDetPlusLossOptions('options', options);
  }
  async forward(input: NanoDetPlusLossInput): Promise<NanoDetPlusLossValue> {
    const i = checkOptions('input', input) as NanoDetPlusLossInput;
    checkInteger('input.numClasses', i.numClasses, 1, 100000);
    if (i.regMax !== undefined) checkInteger('input.regMax', i.regMax, 1, 64);
    const out = await native().nanodetLossAsync(handleOf('input.preds', i.preds), i.auxPreds === undefined ? null : handleOf('input.auxPreds', i.auxPreds), handleOf('input.priors', i.priors), handleOf('input.annotations', i.annotations), {
      ...this.options,
      numClasses: i.numClasses,
      regMax: i.regMax ?? 7,
      assignWithMain: i.assignWithMain ?? false,
    });
    return wrapTensors<keyof NanoDetPlusLossValue>(out) as NanoDetPlusLossValue;
  }
}
