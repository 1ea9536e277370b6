/**
 * Imbalance-aware detection losses and anchor assignment, usable on plain tensors and inside
 * training: MaxIoUAssigner, FocalLoss, GHMC, GHMR and the RetinaNetLoss composer. Every forward is
 * computed for the whole batch at once on the tensors' device (no per-image loop, no host sync) and
 * returns tensors with autograd.
 *
 * Annotations are `[B, M, 5]` rows `(x1, y1, x2, y2, label)`: label ≥ 0 a box of that class,
 * −1 a padding row, −2 an ignore region (COCO crowd).
 */
import { native, NativeLoss, NativeTensor } from './binding';
import { BoxCoderOptions, checkBoxCoderOptions } from './geometry';
import { handleOf, Tensor, wrapTensors } from './tensor';
import { checkInteger, checkOneOf, checkOptions, invalid } from './validate';
import { checkContrastiveOptions, ContrastiveLossOptions } from './contrastive';

export interface AssignerOptions {
  /** IoU ≥ this: positive; default 0.5. */
  positiveIou?: number;
  /** IoU < this: negative (between: ignored); default 0.4. */
  negativeIou?: number;
  /** mmdetection's low-quality matches: anchors tying a GT's best IoU become positives of that GT; default false. */
  lowQualityMatches?: boolean;
  /** Minimum best IoU for a low-quality match; default 0. */
  minPositiveIou?: number;
  /** Anchors covered by an ignore region (label −2) above this fraction of their area are ignored; default 0.5; 0 disables. */
  ignoreIof?: number;
}

export interface Assignment {
  /** `[B, N]` int64: class ≥ 0 positive, −1 negative, −2 ignored. */
  labels: Tensor;
  /** `[B, N]` int64: annotation row of each positive anchor, −1 otherwise. */
  assignedGt: Tensor;
  /** `[B, N, 4]` assigned box (the anchor itself where not positive). */
  boxes: Tensor;
  /** `[B, N]` best IoU with a real box (−1 for images without boxes). */
  maxIou: Tensor;
  /** `[B]` int64. */
  numPositives: Tensor;
}

export interface FocalLossOptions {
  /**
   * `'retinanet'` (default): pytorch-retinanet's FocalLoss exactly — probabilities clamped to
   * [1e-4, 1−1e-4], per-image sum ÷ max(1, positives), smooth-L1 (β 1/9) averaged over 4·positives,
   * mean over images. `'logits'`: torchvision's `sigmoid_focal_loss` element formula on logits,
   * normalised per image (torchvision) or per batch (mmdetection) by the positives.
   */
  variant?: 'retinanet' | 'logits';
  /** Default 0.25 (`'logits'`: negative disables the α factor). */
  alpha?: number;
  /** Default 2. */
  gamma?: number;
  /** `'retinanet'` only: classifications are probabilities (pytorch-retinanet's model output), not logits. */
  probabilities?: boolean;
  /** `'logits'` only: `'image'` (default) or `'batch'`. */
  normalize?: 'image' | 'batch';
  /** Box loss on positives: `'smoothL1'` (default), `'l1'`, `'giou'` (on decoded boxes) or `'none'`. */
  regression?: 'smoothL1' | 'l1' | 'giou' | 'none';
  /** Smooth-L1 transition; default 1/9. */
  beta?: number;
  /** Regression targets; default std [0.1, 0.1, 0.2, 0.2] (pytorch-retinanet). */
  boxCoder?: BoxCoderOptions;
  assigner?: AssignerOptions;
}

export interface GhmOptions {
  /** Gradient-density bins; default 10. */
  bins?: number;
  /** EMA momentum of the bin counts; 0 (default) uses the current counts. */
  momentum?: number;
  /** Default 1. */
  lossWeight?: number;
}

export interface GhmrOptions extends GhmOptions {
  /** Authentic smooth-L1 parameter μ; default 0.02 (its scale depends on the box coder's std). */
  mu?: number;
}

export interface RetinaNetLossOptions {
  /** `'focal'` (default) or `'ghmc'`. */
  classification?: 'focal' | 'ghmc';
  /** `'smoothL1'` (default), `'l1'`, `'giou'`, `'ghmr'` or `'none'`. */
  regression?: 'smoothL1' | 'l1' | 'giou' | 'ghmr' | 'none';
  clsWeight?: number;
  regWeight?: number;
  /** Focal options, also the assigner, box coder, β and normalisation used by every part. */
  focal?: FocalLossOptions;
  /** Default bins 10, momentum 0.75. */
  ghmc?: GhmOptions;
  /** Default bins 10, momentum 0.7, μ 0.02. */
  ghmr?: GhmrOptions;
  /**
   * GHM once per pyramid level, summed — mmdetection's call pattern: its head has one GHMC/GHMR module, so one
   * momentum state updated once per level in level order — instead of once over all levels (default).
   */
  ghmPerLevel?: boolean;
  /**
   * Data-parallel Trainer: GHM's bin counts and element totals are the means over the ranks (the global
   * batch's histogram, the same EMA on every rank) instead of per rank as mmdetection under DDP (default false).
   */
  ghmAcrossRanks?: boolean;
  /**
   * The contrastive term of joint training (Trainer only: it needs the loader's second view,
   * `views: 2`): `weight` × ContrastiveLoss on the FPN features of the batch and of its second view.
   */
  contrastive?: ContrastiveTrainingOptions;
}

export interface ContrastiveTrainingOptions extends ContrastiveLossOptions {
  /** Default 0 (off). */
  weight?: number;
  /** SimCLR projection head Linear(D, hidden) → ReLU → Linear(hidden, out) before normalisation, trained with the model; default none. */
  projection?: { hidden: number; out?: number };
  /** Also the detection losses on the second view (added to cls and reg); default false. */
  detectOnViews?: boolean;
}

/**
 * A named training recipe for a RetinaNet: the loss, the box coder its regression targets (and the
 * model's decoding) use, and the gradient clipping it was tuned with.
 */
export interface LossRecipe {
  loss: RetinaNetLossOptions;
  /** The model's box coder: the loss's targets use the same (set both from here). */
  boxCoder: BoxCoderOptions;
  /** The optimizer's `clipGradNorm`. */
  clipGradNorm: number;
}

/** Names of the built-in recipes (`lossRecipe`). */
export const LOSS_RECIPES = ['focal', 'ghm', 'ghmc'] as const;
export type LossRecipeName = (typeof LOSS_RECIPES)[number];

/**
 * The built-in recipes:
 * - `'focal'` — pytorch-retinanet: Focal loss (α 0.25, γ 2) + smooth L1 (β 1/9), box std
 *   [0.1, 0.1, 0.2, 0.2], max-IoU assignment 0.4 / 0.5, gradients clipped to norm 0.1.
 * - `'ghm'` — mmdetection's GHM RetinaNet (`configs/ghm/retinanet_ghm_r50_fpn_1x_coco.py`): GHM-C
 *   (30 bins, momentum 0.75) + GHM-R (μ 0.02, 10 bins, momentum 0.7, loss weight 10), each called once
 *   per pyramid level with one shared momentum state (`ghmPerLevel`), box std [1, 1, 1, 1] (μ is meant
 *   for that scale), mmdetection's assigner with low-quality matches (min IoU 0), clipping at norm 35.
 * - `'ghmc'` — GHM-C as in `'ghm'` with pytorch-retinanet's smooth-L1 regression and box std (the GHM
 *   paper's "GHM-C + SL1" row), clipping at norm 35.
 * @example const r = lossRecipe('ghm');
 *   const model = Model.retinanet({ numClasses: 3, boxCoder: r.boxCoder });
 *   const trainer = new Trainer(model, { loss: r.loss, optimizer: { clipGradNorm: r.clipGradNorm } });
 */
export function lossRecipe(name: LossRecipeName): LossRecipe {
  checkOneOf('recipe', name, LOSS_RECIPES);
  const retinanetStd: [number, number, number, number] = [0.1, 0.1, 0.2, 0.2];
  const mmdetStd: [number, number, number, number] = [1, 1, 1, 1];
  const ghmc = { bins: 30, momentum: 0.75, lossWeight: 1 };
  switch (name) {
    case 'focal':
      return { loss: { classification: 'focal', regression: 'smoothL1', focal: { boxCoder: { std: retinanetStd } } }, boxCoder: { std: retinanetStd }, clipGradNorm: 0.1 };
    case 'ghmc':
      return { loss: { classification: 'ghmc', regression: 'smoothL1', ghmc, ghmPerLevel: true, focal: { boxCoder: { std: retinanetStd } } }, boxCoder: { std: retinanetStd }, clipGradNorm: 35 };
    default:
      return {
        loss: {
          classification: 'ghmc',
          regression: 'ghmr',
          ghmc,
          ghmr: { bins: 10, momentum: 0.7, mu: 0.02, lossWeight: 1 },
          regWeight: 10,
          ghmPerLevel: true,
          focal: { boxCoder: { std: mmdetStd }, assigner: { lowQualityMatches: true, minPositiveIou: 0 } },
        },
        boxCoder: { std: mmdetStd },
        clipGradNorm: 35,
      };
  }
}

/** Checks `options.contrastive` (throws naming the field). */
export function checkContrastiveTraining(name: string, c: ContrastiveTrainingOptions | undefined): ContrastiveTrainingOptions | undefined {
  if (c === undefined) return undefined;
  const o = checkOptions(name, c);
  const { weight, projection, detectOnViews, ...loss } = o;
  if (weight !== undefined && !(typeof weight === 'number' && weight >= 0 && Number.isFinite(weight))) throw invalid(`${name}.weight`, 'a non-negative number', weight);
  checkContrastiveOptions(name, loss);
  if (projection !== undefined) {
    const p = checkOptions(`${name}.projection`, projection);
    checkInteger(`${name}.projection.hidden`, p.hidden, 1, 65536);
    if (p.out !== undefined) checkInteger(`${name}.projection.out`, p.out, 1, 65536);
  }
  if (detectOnViews !== undefined && typeof detectOnViews !== 'boolean') throw invalid(`${name}.detectOnViews`, 'a boolean', detectOnViews);
  return o;
}

export interface DetectionLossInput {
  /** `[B, N, C]` logits (or probabilities with `probabilities: true`). */
  classifications: Tensor;
  /** `[B, N, 4]` box deltas. */
  regressions: Tensor;
  /** `[N, 4]`. */
  anchors: Tensor;
  /** `[B, M, 5]`, −1-padded. */
  annotations: Tensor;
}

export interface LossValue {
  /** Classification loss, a one-element tensor with autograd. */
  cls: Tensor;
  /** Regression loss, a one-element tensor with autograd. */
  reg: Tensor;
}

function finite(name: string, v: unknown): void {
  if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) throw invalid(name, 'a finite number', v);
}

function checkAssigner(name: string, o: AssignerOptions | undefined): AssignerOptions {
  const a = checkOptions(name, o);
  for (const k of ['positiveIou', 'negativeIou', 'minPositiveIou', 'ignoreIof'] as const) finite(`${name}.${k}`, a[k]);
  if (a.lowQualityMatches !== undefined && typeof a.lowQualityMatches !== 'boolean') throw invalid(`${name}.lowQualityMatches`, 'a boolean', a.lowQualityMatches);
  return a;
}

function checkFocal(name: string, o: FocalLossOptions | undefined): FocalLossOptions {
  const f = checkOptions(name, o);
  if (f.variant !== undefined) checkOneOf(`${name}.variant`, f.variant, ['retinanet', 'logits'] as const);
  if (f.normalize !== undefined) checkOneOf(`${name}.normalize`, f.normalize, ['image', 'batch'] as const);
  if (f.regression !== undefined) checkOneOf(`${name}.regression`, f.regression, ['smoothL1', 'l1', 'giou', 'none'] as const);
  for (const k of ['alpha', 'gamma', 'beta'] as const) finite(`${name}.${k}`, f[k]);
  return { ...f, boxCoder: checkBoxCoderOptions(`${name}.boxCoder`, f.boxCoder), assigner: checkAssigner(`${name}.assigner`, f.assigner) };
}

function checkGhm(name: string, o: GhmrOptions | undefined): GhmrOptions {
  const g = checkOptions(name, o);
  if (g.bins !== undefined) checkInteger(`${name}.bins`, g.bins, 1, 100000);
  for (const k of ['momentum', 'lossWeight', 'mu'] as const) finite(`${name}.${k}`, g[k]);
  if (g.momentum !== undefined && (g.momentum < 0 || g.momentum >= 1)) throw invalid(`${name}.momentum`, 'a number in [0, 1)', g.momentum, RangeError);
  return g;
}

function lossInput(input: DetectionLossInput): [NativeTensor, NativeTensor, NativeTensor, NativeTensor] {
  const i = checkOptions('input', input) as DetectionLossInput;
  return [handleOf('input.classifications', i.classifications), handleOf('input.regressions', i.regressions), handleOf('input.anchors', i.anchors), handleOf('input.annotations', i.annotations)];
}

/**
 * `torchvision.ops.sigmoid_focal_loss` per element (reduction none): logits and 0/1 targets of one
 * shape → loss of that shape, with autograd. α default 0.25 (negative disables), γ default 2.
 */
export async function sigmoidFocalLoss(logits: Tensor, targets: Tensor, options?: { alpha?: number; gamma?: number }): Promise<Tensor> {
  const o = checkOptions('options', options);
  finite('options.alpha', o.alpha);
  finite('options.gamma', o.gamma);
  return new Tensor(await native().sigmoidFocalLossAsync(handleOf('logits', logits), handleOf('targets', targets), o));
}

/** Max-IoU assignment of anchors to ground truth for a whole batch (pytorch-retinanet's IoU). */
export class MaxIoUAssigner {
  private readonly options: AssignerOptions;
  constructor(options?: AssignerOptions) {
    this.options = checkAssigner('options', options);
  }
  /** anchors `[N, 4]`, annotations `[B, M, 5]` → per-anchor labels, assigned boxes, IoU. */
  async assign(anchors: Tensor, annotations: Tensor): Promise<Assignment> {
    const out = await native().assignMaxIouAsync(handleOf('anchors', anchors), handleOf('annotations', annotations), this.options);
    return wrapTensors<keyof Assignment>(out);
  }
}

/** Focal loss with max-IoU assignment and box regression (see FocalLossOptions.variant). */
export class FocalLoss {
  private readonly options: FocalLossOptions;
  constructor(options?: FocalLossOptions) {
    this.options = checkFocal('options', options);
  }
  /** `{cls, reg}` scalars with autograd. */
  async forward(input: DetectionLossInput): Promise<LossValue> {
    const out = await native().focalLossAsync(...lossInput(input), this.options);
    return wrapTensors<keyof LossValue>(out);
  }
}

abstract class GhmLoss {
  /** @internal */
  protected readonly handle: NativeLoss;
  protected constructor(kind: 'ghmc' | 'ghmr', options: GhmrOptions | undefined) {
    this.handle = native().ghmCreate(kind, checkGhm('options', options));
  }
  /** The loss (a one-element tensor with autograd); updates the momentum state. */
  async forward(pred: Tensor, target: Tensor, labelWeight: Tensor): Promise<Tensor> {
    return new Tensor(await native().ghmForwardAsync(this.handle, handleOf('pred', pred), handleOf('target', target), handleOf('labelWeight', labelWeight)));
  }
  /** The EMA of the bin counts (float64, `[bins]`), or null before the first call or without momentum. */
  get accSum(): Float64Array | null {
    const h = native().ghmAccSum(this.handle);
    if (h === null) return null;
    const t = new Tensor(h);
    const values = t.toArray() as Float64Array;
    t.dispose();
    return values;
  }
  /** Restores the momentum state (e.g. from a checkpoint). */
  set accSum(values: Float64Array | null) {
    if (!(values instanceof Float64Array)) throw invalid('accSum', 'a Float64Array', values);
    const t = Tensor.from(values);
    try {
      native().ghmSetAccSum(this.handle, t.handle);
    } finally {
      t.dispose();
    }
  }
  dispose(): void {
    native().ghmDispose(this.handle);
  }
}

/**
 * GHM-C: pred `[..., C]` logits with either target `[..., C]` 0/1 and labelWeight `[..., C]`
 * (> 0 counts), or — mmdetection's labels form, fused and much faster — target `[...]` integer class
 * indices (anything outside 0…C−1 is background) and labelWeight `[...]` per row.
 * mmdetection / the GHM authors' semantics, vectorised.
 */
export class GHMC extends GhmLoss {
  constructor(options?: GhmOptions) {
    super('ghmc', options);
  }
}

/** GHM-R (authentic smooth L1): pred `[..., 4]`, target `[..., 4]` encoded deltas, labelWeight `[..., 4]`. */
export class GHMR extends GhmLoss {
  constructor(options?: GhmrOptions) {
    super('ghmr', options);
  }
}

/** The RetinaNet loss: one assignment, classification focal | ghmc, regression smoothL1 | l1 | giou | ghmr | none. */
export class RetinaNetLoss {
  /** @internal */
  readonly handle: NativeLoss;
  constructor(options?: RetinaNetLossOptions) {
    const o = checkOptions('options', options);
    if (o.classification !== undefined) checkOneOf('options.classification', o.classification, ['focal', 'ghmc'] as const);
    if (o.regression !== undefined) checkOneOf('options.regression', o.regression, ['smoothL1', 'l1', 'giou', 'ghmr', 'none'] as const);
    finite('options.clsWeight', o.clsWeight);
    finite('options.regWeight', o.regWeight);
    if ((checkContrastiveTraining('options.contrastive', o.contrastive)?.weight ?? 0) > 0)
      throw new RangeError('options.contrastive runs in the Trainer, which has both views; use ContrastiveLoss on its own tensors');
    this.handle = native().retinaLossCreate({
      ...o,
      focal: checkFocal('options.focal', o.focal),
      ghmc: checkGhm('options.ghmc', o.ghmc),
      ghmr: checkGhm('options.ghmr', o.ghmr),
    });
  }
  /** `{cls, reg}`; `levelSizes` (anchors per pyramid level) is needed with `ghmPerLevel`. */
  async forward(input: DetectionLossInput & { levelSizes?: number[] }): Promise<LossValue> {
    const levels = input.levelSizes ?? [];
    if (!Array.isArray(levels)) throw invalid('input.levelSizes', 'an array of integers', levels);
    levels.forEach((n, i) => checkInteger(`input.levelSizes[${i}]`, n, 0, 2 ** 40));
    const out = await native().retinaLossForwardAsync(this.handle, ...lossInput(input), levels);
    return wrapTensors<keyof LossValue>(out);
  }
  /** GHM momentum states (one each, shared by the levels with ghmPerLevel), for checkpoints. */
  state(): { ghmc: Array<Float64Array | null>; ghmr: Array<Float64Array | null> } {
    const s = native().retinaLossState(this.handle);
    const read = (h: NativeTensor | null) => {
      if (h === null) return null;
      const t = new Tensor(h);
      const v = t.toArray() as Float64Array;
      t.dispose();
      return v;
    };
    return { ghmc: s.ghmc.map(read), ghmr: s.ghmr.map(read) };
  }
  dispose(): void {
    native().retinaLossDispose(this.handle);
  }
}
