/**
 * Box geometry on tensors: anchors and NanoDet-Plus priors, the box coder and distance coding, IoU,
 * clipping and NMS.
 * Boxes are `x1, y1, x2, y2` in pixels of the network input (no +1).
 */
import { native } from './binding';
import { checkDevice, Device, handleOf, Tensor } from './tensor';
import { checkInteger, checkOptions, invalid } from './validate';

/** Anchor layout (defaults: RetinaNet, DESIGN.md). */
export interface AnchorOptions {
  /** Pyramid levels; default `[3, 4, 5, 6, 7]`. */
  levels?: number[];
  /** Stride per level; default `2 ** level`. */
  strides?: number[];
  /** Base size per level; default `2 ** (level + 2)` (32…512). */
  sizes?: number[];
  /** Aspect ratios h/w; default `[0.5, 1, 2]`. */
  ratios?: number[];
  /** Scales; default `[1, 2 ** (1/3), 2 ** (2/3)]`. */
  scales?: number[];
  /**
   * 'pytorch-retinanet' (default): centres at (i + ½)·stride, exact base anchors; 'torchvision': its
   * AnchorGenerator — sides int(size·scale), base anchors rounded, centres at i·(input size // grid size).
   */
  style?: 'pytorch-retinanet' | 'torchvision';
}

/** Box coder: deltas `(dx, dy, dw, dh)` normalised by `(d − mean) / std`. */
export interface BoxCoderOptions {
  /** Default `[0.1, 0.1, 0.2, 0.2]` (pytorch-retinanet); `[1, 1, 1, 1]` for torchvision/mmdetection. */
  std?: [number, number, number, number];
  /** Default `[0, 0, 0, 0]`. */
  mean?: [number, number, number, number];
  /** Target widths/heights are clamped to at least this before the log (pytorch-retinanet: 1, the default; 0 disables). */
  minTargetSize?: number;
  /** dw, dh clamped to at most this before exp when decoding (torchvision: log(1000/16)); default 0 = no clamp. */
  maxDeltaExp?: number;
}

function numberList(name: string, v: unknown, length?: number): void {
  if (v === undefined) return;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'number' || !Number.isFinite(x)))
    throw invalid(name, 'an array of finite numbers', v);
  if (length !== undefined && v.length !== length) throw invalid(name, `an array of ${length} numbers`, v, RangeError);
}

/** @internal */
export function checkAnchorOptions(name: string, o: AnchorOptions | undefined): AnchorOptions {
  const opts = checkOptions(name, o);
  for (const k of ['levels', 'strides', 'sizes', 'ratios', 'scales'] as const) numberList(`${name}.${k}`, opts[k]);
  if (opts.style !== undefined && opts.style !== 'pytorch-retinanet' && opts.style !== 'torchvision') throw invalid(`${name}.style`, "'pytorch-retinanet' or 'torchvision'", opts.style, RangeError);
  return opts;
}

/** @internal */
export function checkBoxCoderOptions(name: string, o: BoxCoderOptions | undefined): BoxCoderOptions {
  const opts = checkOptions(name, o);
  numberList(`${name}.std`, opts.std, 4);
  numberList(`${name}.mean`, opts.mean, 4);
  return opts;
}

/**
 * All anchors for an input of `height × width` pixels: `[N, 4]` float32, level by level, locations
 * row-major, then ratio-major anchors; N = Σ ceil(H/s)·ceil(W/s)·9 for the defaults.
 */
export function generateAnchors(height: number, width: number, options?: AnchorOptions): Tensor {
  checkInteger('height', height, 1, 1 << 20);
  checkInteger('width', width, 1, 1 << 20);
  return new Tensor(native().generateAnchors(checkAnchorOptions('options', options), height, width));
}

/** Regression targets: anchors `[..., 4]`, boxes `[..., 4]` → deltas `[..., 4]`. */
export function encodeBoxes(anchors: Tensor, boxes: Tensor, options?: BoxCoderOptions): Tensor {
  return new Tensor(native().boxEncode(handleOf('anchors', anchors), handleOf('boxes', boxes), checkBoxCoderOptions('options', options)));
}

/** Boxes from deltas: anchors `[..., 4]`, deltas `[..., 4]` → boxes `[..., 4]`. */
export function decodeBoxes(anchors: Tensor, deltas: Tensor, options?: BoxCoderOptions): Tensor {
  return new Tensor(native().boxDecode(handleOf('anchors', anchors), handleOf('deltas', deltas), checkBoxCoderOptions('options', options)));
}

/** Pairwise IoU: `[..., N, 4]` × `[..., M, 4]` → `[..., N, M]` (0 for empty boxes). */
export function boxIou(a: Tensor, b: Tensor): Tensor {
  return new Tensor(native().boxIou(handleOf('a', a), handleOf('b', b)));
}

/** Boxes clamped into `[0, width] × [0, height]`. */
export function clipBoxes(boxes: Tensor, height: number, width: number): Tensor {
  return new Tensor(native().clipBoxes(handleOf('boxes', boxes), height, width));
}

/**
 * Non-maximum suppression (torchvision.ops.nms semantics: suppress IoU > threshold).
 * boxes `[N, 4]`, scores `[N]` → kept indices `[K]` int64 by decreasing score.
 */
export function nms(boxes: Tensor, scores: Tensor, iouThreshold: number): Tensor {
  return new Tensor(native().nms(handleOf('boxes', boxes), handleOf('scores', scores), iouThreshold));
}

/** Class-aware NMS (torchvision.ops.batched_nms): only boxes of the same `groups` value `[N]` suppress each other. */
export function batchedNms(boxes: Tensor, scores: Tensor, groups: Tensor, iouThreshold: number): Tensor {
  return new Tensor(native().batchedNms(handleOf('boxes', boxes), handleOf('scores', scores), handleOf('groups', groups), iouThreshold));
}

/**
 * NanoDet-Plus centre priors for an input of `height × width`: `[N, 4]` float32 rows
 * `(cx, cy, stride, stride)`, level by level (feature sizes ceil(H/s) × ceil(W/s)), row-major,
 * centres at `(i·s, j·s)` (no +0.5). Strides default to 8, 16, 32, 64.
 */
export function centrePriors(height: number, width: number, options: { strides?: number[]; device?: Device } = {}): Tensor {
  checkInteger('height', height, 1, 1 << 20);
  checkInteger('width', width, 1, 1 << 20);
  const o = checkOptions('options', options);
  const strides = o.strides ?? [8, 16, 32, 64];
  if (!Array.isArray(strides) || strides.length === 0) throw invalid('options.strides', 'a non-empty array of integers', strides);
  strides.forEach((s, i) => checkInteger(`options.strides[${i}]`, s, 1, 4096));
  return new Tensor(native().centrePriors(strides, height, width, checkDevice('options.device', o.device ?? 'cpu')));
}

/**
 * Boxes from distances to the four sides (NanoDet's distance2bbox): points `[..., 2]`, distances
 * `[..., 4]` (left, top, right, bottom) → `[..., 4]`; with `maxShape` [height, width] the boxes are
 * clamped into the image.
 */
export function distanceToBox(points: Tensor, distances: Tensor, maxShape?: [number, number]): Tensor {
  const [h, w] = maxShape ?? [0, 0];
  if (maxShape !== undefined && (!Array.isArray(maxShape) || maxShape.length !== 2 || !(h > 0) || !(w > 0))) throw invalid('maxShape', '[height, width] of positive numbers', maxShape);
  return new Tensor(native().distanceToBox(handleOf('points', points), handleOf('distances', distances), h, w));
}

/** Distances from points `[..., 2]` to the sides of boxes `[..., 4]` (NanoDet's bbox2distance, unclamped). */
export function boxToDistance(points: Tensor, boxes: Tensor): Tensor {
  return new Tensor(native().boxToDistance(handleOf('points', points), handleOf('boxes', boxes)));
}

/**
 * GFL's Integral: distribution logits `[..., 4·(regMax+1)]` → expected distances `[..., 4]` in bins
 * (softmax per side · [0, 1, …, regMax]); multiply by the stride for pixels. regMax defaults to 7.
 */
export function integralDistances(reg: Tensor, regMax = 7): Tensor {
  checkInteger('regMax', regMax, 1, 64);
  return new Tensor(native().integralDistances(handleOf('reg', reg), regMax));
}

export interface RoiAlignOptions {
  /** Output bins `[height, width]`; default `[7, 7]`. */
  outputSize?: [number, number];
  /** Multiplies box coordinates (1 / the feature stride); default 1. */
  spatialScale?: number;
  /** Sample points per bin along each axis (torchvision's `sampling_ratio`, fixed, ≥ 1); default 2. */
  samplingRatio?: number;
  /** Pixel centres at +0.5 (torchvision's `aligned=True`); default true. */
  aligned?: boolean;
}

/**
 * RoIAlign with `torchvision.ops.roi_align`'s arithmetic (fixed sampling ratio): features
 * `[B, C, H, W]`, rois `[R, 5]` (batch index, x1, y1, x2, y2 in input pixels) → `[R, C, oh, ow]`.
 * Differentiable with respect to the features (autograd).
 */
export function roiAlign(features: Tensor, rois: Tensor, options: RoiAlignOptions = {}): Tensor {
  const o = checkOptions('options', options);
  if (o.outputSize !== undefined) numberList('options.outputSize', o.outputSize, 2);
  const [outputHeight, outputWidth] = o.outputSize ?? [7, 7];
  if (o.samplingRatio !== undefined) checkInteger('options.samplingRatio', o.samplingRatio, 1, 64);
  if (o.spatialScale !== undefined && !(typeof o.spatialScale === 'number' && o.spatialScale > 0)) throw invalid('options.spatialScale', 'a positive number', o.spatialScale);
  if (o.aligned !== undefined && typeof o.aligned !== 'boolean') throw invalid('options.aligned', 'a boolean', o.aligned);
  checkInteger('options.outputSize[0]', outputHeight, 1, 1024);
  checkInteger('options.outputSize[1]', outputWidth, 1, 1024);
  return new Tensor(native().roiAlign(handleOf('features', features), handleOf('rois', rois), { outputHeight, outputWidth, spatialScale: o.spatialScale, samplingRatio: o.samplingRatio, aligned: o.aligned }));
}
