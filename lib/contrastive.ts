/**
 * ContrastiveLoss: NT-Xent (SimCLR) between the two views of every ground-truth box on the FPN
 * levels, for the whole batch at once (native: RoIAlign per level, one masked similarity matrix).
 * See native/core/losses/contrastive.h for the exact definition.
 */
import { native } from './binding';
import { handleOf, Tensor } from './tensor';
import { checkInteger, checkOneOf, checkOptions, invalid } from './validate';

export interface ContrastiveLossOptions {
  /** Default 0.5 (the note's SimCLR temperature). */
  temperature?: number;
  /** `'all'` (default): every level for every box; `'assigned'`: FPN's level rule, one level per box. */
  levels?: 'all' | 'assigned';
  /**
   * `'other-class'` (default): boxes of another class anywhere in the batch; `'all-other'`: every other
   * box (SimCLR); `'same-region-other-images'`: the box of the same annotation row in the other images
   * (the prototype's definition). Always within one pyramid level; a box without negatives gets its
   * image's background region instead.
   */
  negatives?: 'other-class' | 'all-other' | 'same-region-other-images';
  /** `'average'` (default): mean over the RoIAlign bins; `'flatten'`: all bins. */
  pooling?: 'average' | 'flatten';
  /** RoIAlign bins per side; default 7. */
  outputSize?: number;
  /** RoIAlign samples per bin and axis; default 2. */
  samplingRatio?: number;
  /** Level of the first feature map (P3: 3, stride 8); default 3. */
  firstLevel?: number;
  /** The background region is the least-covered cell of a grid × grid split of the input; default 4. */
  backgroundGrid?: number;
}

export interface ContrastiveInput {
  /** FPN maps of the first view, e.g. `[p3, …, p7]`, each `[B, C, H, W]`. */
  features1: Tensor[];
  /** The same maps of the second view. */
  features2: Tensor[];
  /** `[B, M, 5]` boxes in input pixels (label ≥ 0; −1 padding and ≤ −2 ignore rows are left out). */
  annotations: Tensor;
  /** Network input `[height, width]` (for the background cells). */
  inputSize: [number, number];
}

export interface ContrastiveValue {
  /** Scalar with autograd (0 with a gradient path when there are no boxes). */
  loss: Tensor;
  /**
   * Embeddings in the loss (2 × boxes × levels). The counts stay on the loss's device until read:
   * reading one waits for the forward pass (a host synchronisation on CUDA), not reading them lets
   * the backward be queued behind the forward.
   */
  readonly embeddings: number;
  /** Of them, those contrasted with the background (no negative under the mode). Read lazily, as `embeddings`. */
  readonly withBackground: number;
}

/** Checks contrastive loss options; errors name the field under `name`. */
export function checkContrastiveOptions(name: string, options: ContrastiveLossOptions | undefined): ContrastiveLossOptions {
  const o = checkOptions(name, options);
  if (o.temperature !== undefined && !(typeof o.temperature === 'number' && o.temperature > 0 && Number.isFinite(o.temperature))) throw invalid(`${name}.temperature`, 'a positive number', o.temperature);
  if (o.levels !== undefined) checkOneOf(`${name}.levels`, o.levels, ['all', 'assigned'] as const);
  if (o.negatives !== undefined) checkOneOf(`${name}.negatives`, o.negatives, ['other-class', 'all-other', 'same-region-other-images'] as const);
  if (o.pooling !== undefined) checkOneOf(`${name}.pooling`, o.pooling, ['average', 'flatten'] as const);
  if (o.outputSize !== undefined) checkInteger(`${name}.outputSize`, o.outputSize, 1, 64);
  if (o.samplingRatio !== undefined) checkInteger(`${name}.samplingRatio`, o.samplingRatio, 1, 16);
  if (o.firstLevel !== undefined) checkInteger(`${name}.firstLevel`, o.firstLevel, 0, 16);
  if (o.backgroundGrid !== undefined) checkInteger(`${name}.backgroundGrid`, o.backgroundGrid, 1, 64);
  return o;
}

export class ContrastiveLoss {
  private readonly options: ContrastiveLossOptions;

  constructor(options?: ContrastiveLossOptions) {
    this.options = checkContrastiveOptions('options', options);
  }

  async forward(input: ContrastiveInput): Promise<ContrastiveValue> {
    const i = checkOptions('input', input) as ContrastiveInput;
    const list = (name: string, v: unknown) => {
      if (!Array.isArray(v)) throw invalid(name, 'an array of Tensors', v);
      return v.map((t, k) => handleOf(`${name}[${k}]`, t as Tensor));
    };
    if (!Array.isArray(i.inputSize) || i.inputSize.length !== 2) throw invalid('input.inputSize', '[height, width]', i.inputSize);
    const [h, w] = i.inputSize;
    checkInteger('input.inputSize[0]', h, 1, 1 << 20);
    checkInteger('input.inputSize[1]', w, 1, 1 << 20);
    const r = await native().contrastiveLossAsync(list('input.features1', i.features1), list('input.features2', i.features2), handleOf('input.annotations', i.annotations), h, w, this.options);
    const counts = new Tensor(r.counts); // int64 [2]: embeddings, withBackground
    let read: number[] | null = null;
    const value = (k: number) => {
      if (read === null) {
        read = counts.toNumbers();
        counts.dispose();
      }
      return read[k];
    };
    return {
      loss: new Tensor(r.loss),
      get embeddings() {
        return value(0);
      },
      get withBackground() {
        return value(1);
      },
    };
  }
}
