/**
 * ONNX export of onestage's detectors, written from the model's structure and weights (LibTorch has no
 * ONNX exporter). Each layer is a named function over an `OnnxGraph` that mirrors the native module of
 * the same name; the post-processing mirrors `selectAndSuppress` (native/core/models/postprocess.cpp):
 * per-level top-k of (location, class) scores, decoding, clipping, class-aware NMS
 * (`NonMaxSuppression` over a per-class score matrix) and the best `maxDetections` by score.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Model, ModelConfig, NanoDetPlusOptions, RetinaNetOptions } from '../model';
import { MODEL_METADATA_KEY } from '../model';
import { IMAGENET_MEAN, IMAGENET_STD } from '../data/transforms';
import { writeFileAtomic } from '../io';
import { checkInteger, checkOptions, invalid } from '../validate';
import { Dim, MAX_OPSET, MIN_OPSET, OnnxGraph } from './graph';

export interface OnnxExportOptions {
  /** ONNX opset, 13 … 21; default 17. */
  opset?: number;
  /** Batch size a dimension named `batch` (default true); false: `batchSize` fixed. */
  dynamicBatch?: boolean;
  /** Fixed batch size with `dynamicBatch: false`; default 1. */
  batchSize?: number;
  /** Height and width dimensions named `height`/`width` (default true); false: `inputSize` fixed. */
  dynamicSize?: boolean;
  /** `[height, width]`: fixed with `dynamicSize: false` (required then); otherwise only recorded in the metadata. */
  inputSize?: [number, number];
  /** `'detections'` (default): decoding, thresholds, top-k, NMS inside; `'raw'`: the heads' outputs and the anchors/priors. */
  postprocess?: 'detections' | 'raw';
  /**
   * Normalisation inside the graph (default true): the input is float32 RGB `[B, 3, H, W]` with values
   * 0–255, normalised as onestage's loader does ((v / 255 − mean) / std, in float64). false: the input is
   * already normalised, as `model.forward` takes it.
   */
  normalize?: boolean;
  /** Per-channel mean and std of the normalisation; default ImageNet's (onestage's loader). */
  mean?: [number, number, number];
  std?: [number, number, number];
  /** Post-processing settings baked into the graph; defaults as `model.detect` for the architecture. */
  scoreThreshold?: number;
  topkCandidates?: number;
  nmsThreshold?: number;
  maxDetections?: number;
  /** Class names for the metadata; default the model's `classes`. */
  classes?: string[];
}

export interface OnnxExportResult {
  file: string;
  bytes: number;
  opset: number;
  inputs: Array<{ name: string; dims: Dim[] }>;
  outputs: Array<{ name: string; dims: Dim[] }>;
  /** Operator types in the graph and how often each occurs. */
  operators: Record<string, number>;
  metadata: Record<string, string>;
}

/** Reads weights by state_dict name and turns each into a graph initializer (once). */
export class WeightSource {
  private readonly made = new Map<string, string>();
  constructor(
    private readonly g: OnnxGraph,
    private readonly weights: Record<string, { data: Float32Array; shape: number[] }>,
  ) {}
  has(name: string): boolean {
    return name in this.weights;
  }
  get(name: string): string {
    let v = this.made.get(name);
    if (!v) {
      const w = this.weights[name];
      if (!w) throw new Error(`ONNX export: the model has no weight '${name}'`);
      v = this.g.tensor(name, w.data, w.shape);
      this.made.set(name, v);
    }
    return v;
  }
  shape(name: string): number[] {
    const w = this.weights[name];
    if (!w) throw new Error(`ONNX export: the model has no weight '${name}'`);
    return w.shape;
  }
}

// ---------------------------------------------------------------- layers

/** `nn.Conv2d` (`prefix.weight`, optional `prefix.bias`), square kernel, symmetric padding. */
export function conv2d(g: OnnxGraph, W: WeightSource, prefix: string, x: string, o: { stride?: number; pad?: number; groups?: number } = {}): string {
  const k = W.shape(`${prefix}.weight`)[2];
  const pad = o.pad ?? Math.floor(k / 2);
  const inputs = [x, W.get(`${prefix}.weight`)];
  if (W.has(`${prefix}.bias`)) inputs.push(W.get(`${prefix}.bias`));
  return g.op('Conv', inputs, { kernel_shape: [k, k], strides: [o.stride ?? 1, o.stride ?? 1], pads: [pad, pad, pad, pad], group: o.groups ?? 1, dilations: [1, 1] }, prefix);
}

/** `nn.BatchNorm2d` in eval mode (running statistics, LibTorch's eps 1e-5). */
export function batchNorm(g: OnnxGraph, W: WeightSource, prefix: string, x: string): string {
  return g.op('BatchNormalization', [x, W.get(`${prefix}.weight`), W.get(`${prefix}.bias`), W.get(`${prefix}.running_mean`), W.get(`${prefix}.running_var`)], { epsilon: { float: 1e-5 } }, prefix);
}

/** ResNet basic block / bottleneck (`layerN.i`), with its downsample shortcut. */
export function resnetBlock(g: OnnxGraph, W: WeightSource, prefix: string, x: string, stride: number, bottleneck: boolean): string {
  let h: string;
  if (bottleneck) {
    h = g.op('Relu', [batchNorm(g, W, `${prefix}.bn1`, conv2d(g, W, `${prefix}.conv1`, x, { pad: 0 }))]);
    h = g.op('Relu', [batchNorm(g, W, `${prefix}.bn2`, conv2d(g, W, `${prefix}.conv2`, h, { stride, pad: 1 }))]);
    h = batchNorm(g, W, `${prefix}.bn3`, conv2d(g, W, `${prefix}.conv3`, h, { pad: 0 }));
  } else {
    h = g.op('Relu', [batchNorm(g, W, `${prefix}.bn1`, conv2d(g, W, `${prefix}.conv1`, x, { stride, pad: 1 }))]);
    h = batchNorm(g, W, `${prefix}.bn2`, conv2d(g, W, `${prefix}.conv2`, h, { pad: 1 }));
  }
  const shortcut = W.has(`${prefix}.downsample.0.weight`) ? batchNorm(g, W, `${prefix}.downsample.1`, conv2d(g, W, `${prefix}.downsample.0`, x, { stride, pad: 0 })) : x;
  return g.op('Relu', [g.op('Add', [h, shortcut])], {}, `${prefix}.out`);
}

const RESNET_BLOCKS: Record<number, number[]> = { 18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3] };

/** ResNet stem and layer1–4 → C3, C4, C5. */
export function resnet(g: OnnxGraph, W: WeightSource, depth: number, x: string): { c3: string; c4: string; c5: string } {
  const blocks = RESNET_BLOCKS[depth];
  if (!blocks) throw new RangeError(`ONNX export: unknown ResNet depth ${depth}`);
  let h = g.op('Relu', [batchNorm(g, W, 'bn1', conv2d(g, W, 'conv1', x, { stride: 2, pad: 3 }))]);
  h = g.op('MaxPool', [h], { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1] }, 'maxpool');
  const out: string[] = [];
  for (let l = 0; l < 4; l++) {
    for (let i = 0; i < blocks[l]; i++) h = resnetBlock(g, W, `layer${l + 1}.${i}`, h, i === 0 && l > 0 ? 2 : 1, depth >= 50);
    out.push(h);
  }
  return { c3: out[1], c4: out[2], c5: out[3] };
}

/** `F.interpolate(x, size = like's H, W, mode nearest)`: Resize nearest, asymmetric, floor (PyTorch's legacy nearest). */
export function upsampleNearestTo(g: OnnxGraph, x: string, like: string): string {
  const sizes = g.op('Concat', [g.op('Slice', [g.op('Shape', [x]), g.int64([0]), g.int64([2])]), g.op('Slice', [g.op('Shape', [like]), g.int64([2]), g.int64([4])])], { axis: 0 });
  return g.op('Resize', [x, '', '', sizes], { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' }, 'upsample');
}

/** The feature pyramid (`fpn.*`, pytorch-retinanet's PyramidFeatures) → P3 … P(2+levels). */
export function pyramid(g: OnnxGraph, W: WeightSource, prefix: string, c: { c3: string; c4: string; c5: string }, levels: number): string[] {
  const p5l = conv2d(g, W, `${prefix}.P5_1`, c.c5);
  const p4l = g.op('Add', [conv2d(g, W, `${prefix}.P4_1`, c.c4), upsampleNearestTo(g, p5l, c.c4)]);
  const p3l = g.op('Add', [conv2d(g, W, `${prefix}.P3_1`, c.c3), upsampleNearestTo(g, p4l, c.c3)]);
  const out = [conv2d(g, W, `${prefix}.P3_2`, p3l), conv2d(g, W, `${prefix}.P4_2`, p4l), conv2d(g, W, `${prefix}.P5_2`, p5l)];
  if (levels >= 4) out.push(conv2d(g, W, `${prefix}.P6`, c.c5, { stride: 2 }));
  if (levels >= 5) out.push(conv2d(g, W, `${prefix}.P7_2`, g.op('Relu', [out[3]]), { stride: 2 }));
  return out;
}

/** RetinaNet subnet (`regressionModel` / `classificationModel`): 4 × (conv 3×3, ReLU), output conv → [B, H·W·A, K]. */
export function retinaSubnet(g: OnnxGraph, W: WeightSource, prefix: string, p: string, outputsPerAnchor: number): string {
  let h = p;
  for (let i = 1; i <= 4; i++) h = g.op('Relu', [conv2d(g, W, `${prefix}.conv${i}`, h)]);
  h = conv2d(g, W, `${prefix}.output`, h);
  return g.op('Reshape', [g.op('Transpose', [h], { perm: [0, 2, 3, 1] }), g.int64([0, -1, outputsPerAnchor])]);
}

const leaky = (g: OnnxGraph, x: string) => g.op('LeakyRelu', [x], { alpha: { float: 0.1 } });

/** NanoDet's DepthwiseConvModule (`prefix.depthwise`, `dwnorm`, `pointwise`, `pwnorm`), LeakyReLU after each norm. */
export function depthwiseConvModule(g: OnnxGraph, W: WeightSource, prefix: string, x: string, stride = 1): string {
  const ch = W.shape(`${prefix}.depthwise.weight`)[0];
  const h = leaky(g, batchNorm(g, W, `${prefix}.dwnorm`, conv2d(g, W, `${prefix}.depthwise`, x, { groups: ch, stride })));
  return leaky(g, batchNorm(g, W, `${prefix}.pwnorm`, conv2d(g, W, `${prefix}.pointwise`, h, { pad: 0 })));
}

/** conv → BatchNorm (→ LeakyReLU): the Sequential pieces of ShuffleNetV2 and GhostNet (`seq.i` conv, `seq.i+1` norm). */
function convBn(g: OnnxGraph, W: WeightSource, conv: string, bn: string, x: string, o: { stride?: number; depthwise?: boolean; act?: boolean } = {}): string {
  const shape = W.shape(`${conv}.weight`);
  const y = batchNorm(g, W, bn, conv2d(g, W, conv, x, { stride: o.stride ?? 1, groups: o.depthwise ? shape[0] : 1, pad: Math.floor(shape[2] / 2) }));
  return o.act ? leaky(g, y) : y;
}

/** channel_shuffle(x, 2) of a [B, C, H, W] value with C known. */
function channelShuffle(g: OnnxGraph, x: string, C: number): string {
  const t = g.op('Transpose', [g.op('Reshape', [x, g.int64([0, 2, C / 2, -1])])], { perm: [0, 2, 1, 3] });
  return g.op('Reshape', [t, g.op('Shape', [x])], {}, 'shuffled');
}

/** NanoDet's ShuffleNetV2 (`backbone.*`, LeakyReLU 0.1): conv1, max-pool, stage2–4 → C3, C4, C5. */
export function shufflenetV2(g: OnnxGraph, W: WeightSource, x: string): { c3: string; c4: string; c5: string } {
  let h = convBn(g, W, 'backbone.conv1.0', 'backbone.conv1.1', x, { stride: 2, act: true });
  h = g.op('MaxPool', [h], { kernel_shape: [3, 3], strides: [2, 2], pads: [1, 1, 1, 1] }, 'maxpool');
  const outs: string[] = [];
  for (const stage of [2, 3, 4]) {
    for (let i = 0; W.has(`backbone.stage${stage}.${i}.branch2.0.weight`); i++) {
      const p = `backbone.stage${stage}.${i}`;
      const down = W.has(`${p}.branch1.0.weight`);
      const branch2 = (v: string) => {
        let y = convBn(g, W, `${p}.branch2.0`, `${p}.branch2.1`, v, { act: true });
        y = convBn(g, W, `${p}.branch2.3`, `${p}.branch2.4`, y, { stride: down ? 2 : 1, depthwise: true });
        return convBn(g, W, `${p}.branch2.5`, `${p}.branch2.6`, y, { act: true });
      };
      let out: string;
      let C: number;
      if (down) {
        const b1 = convBn(g, W, `${p}.branch1.2`, `${p}.branch1.3`, convBn(g, W, `${p}.branch1.0`, `${p}.branch1.1`, h, { stride: 2, depthwise: true }), { act: true });
        out = g.op('Concat', [b1, branch2(h)], { axis: 1 });
        C = W.shape(`${p}.branch1.2.weight`)[0] + W.shape(`${p}.branch2.5.weight`)[0];
      } else {
        const half = W.shape(`${p}.branch2.0.weight`)[1];
        const x1 = g.op('Slice', [h, g.int64([0]), g.int64([half]), g.int64([1])]);
        const x2 = g.op('Slice', [h, g.int64([half]), g.int64([2 * half]), g.int64([1])]);
        out = g.op('Concat', [x1, branch2(x2)], { axis: 1 });
        C = 2 * half;
      }
      h = channelShuffle(g, out, C);
    }
    outs.push(h);
  }
  return { c3: outs[0], c4: outs[1], c5: outs[2] };
}

/** GhostNet's GhostModule: primary 1×1 conv and the cheap depthwise 3×3, concatenated. */
function ghostModule(g: OnnxGraph, W: WeightSource, p: string, x: string, act: boolean): string {
  const x1 = convBn(g, W, `${p}.primary_conv.0`, `${p}.primary_conv.1`, x, { act });
  return g.op('Concat', [x1, convBn(g, W, `${p}.cheap_operation.0`, `${p}.cheap_operation.1`, x1, { act, depthwise: true })], { axis: 1 });
}

/** GhostBlocks of Ghost-PAN: GhostBottlenecks (ghost1, linear ghost2, depthwise + 1×1 shortcut when channels change). */
function ghostBlocks(g: OnnxGraph, W: WeightSource, p: string, x: string): string {
  let h = x;
  for (let i = 0; W.has(`${p}.blocks.${i}.ghost1.primary_conv.0.weight`); i++) {
    const b = `${p}.blocks.${i}`;
    const y = ghostModule(g, W, `${b}.ghost2`, ghostModule(g, W, `${b}.ghost1`, h, true), false);
    const shortcut = W.has(`${b}.shortcut.0.weight`) ? convBn(g, W, `${b}.shortcut.2`, `${b}.shortcut.3`, convBn(g, W, `${b}.shortcut.0`, `${b}.shortcut.1`, h, { depthwise: true })) : h;
    h = g.op('Add', [y, shortcut]);
  }
  return h;
}

/** NanoDet-Plus's Ghost-PAN (`fpn.*`): reduce, top-down (bilinear ×2), bottom-up (depthwise-separable stride 2), extra levels. */
export function ghostPan(g: OnnxGraph, W: WeightSource, c: { c3: string; c4: string; c5: string }): string[] {
  const inputs = [c.c3, c.c4, c.c5].map((x, i) => leaky(g, batchNorm(g, W, `fpn.reduce_layers.${i}.bn`, conv2d(g, W, `fpn.reduce_layers.${i}.conv`, x, { pad: 0 }))));
  const L = inputs.length;
  const up = (x: string) => g.op('Resize', [x, '', g.float([1, 1, 2, 2])], { mode: 'linear', coordinate_transformation_mode: 'half_pixel' }, 'upsample');
  const inner = [inputs[L - 1]];
  for (let idx = L - 1; idx > 0; idx--) inner.unshift(ghostBlocks(g, W, `fpn.top_down_blocks.${L - 1 - idx}`, g.op('Concat', [up(inner[0]), inputs[idx - 1]], { axis: 1 })));
  const outs = [inner[0]];
  for (let idx = 0; idx < L - 1; idx++) outs.push(ghostBlocks(g, W, `fpn.bottom_up_blocks.${idx}`, g.op('Concat', [depthwiseConvModule(g, W, `fpn.downsamples.${idx}`, outs[outs.length - 1], 2), inner[idx + 1]], { axis: 1 })));
  for (let i = 0; W.has(`fpn.extra_lvl_in_conv.${i}.depthwise.weight`); i++)
    outs.push(g.op('Add', [depthwiseConvModule(g, W, `fpn.extra_lvl_in_conv.${i}`, inputs[L - 1], 2), depthwiseConvModule(g, W, `fpn.extra_lvl_out_conv.${i}`, outs[outs.length - 1], 2)]));
  return outs;
}

/** NanoDet-Plus head (`head.*`): per level the stacked depthwise-separable (or plain) conv modules and gfl_cls → [B, N, C + 4·(regMax+1)], level-major. */
export function nanodetHead(g: OnnxGraph, W: WeightSource, feats: string[], o: { stackedConvs: number; convType: 'depthwise' | 'conv'; channels: number }): string {
  const flat = feats.map((f, l) => {
    let x = f;
    for (let i = 0; i < o.stackedConvs; i++) {
      const p = `head.cls_convs.${l}.${i}`;
      if (o.convType === 'depthwise') {
        x = depthwiseConvModule(g, W, p, x);
      } else {
        x = leaky(g, batchNorm(g, W, `${p}.bn`, conv2d(g, W, `${p}.conv`, x)));
      }
    }
    const out = conv2d(g, W, `head.gfl_cls.${l}`, x, { pad: 0 });
    return g.op('Reshape', [out, g.int64([0, 0, -1])]);
  });
  return g.op('Transpose', [flat.length > 1 ? g.op('Concat', flat, { axis: 2 }) : flat[0]], { perm: [0, 2, 1] }, 'head.preds');
}

// ---------------------------------------------------------------- shapes, anchors, priors

/** Scalar int64 dimension `axis` of `x`. */
export function dim(g: OnnxGraph, x: string, axis: number): string {
  return g.op('Gather', [g.op('Shape', [x]), g.int64([axis], [])], { axis: 0 });
}
const unsq = (g: OnnxGraph, x: string, axes: number[]) => g.op('Unsqueeze', [x, g.int64(axes)]);

/** ⌈size / stride⌉ of a scalar int64 size (float64 arithmetic, as std::ceil(height / stride)). */
function ceilDiv(g: OnnxGraph, size: string, stride: number): string {
  return g.op('Cast', [g.op('Ceil', [g.op('Div', [g.op('Cast', [size], { to: 11 }), g.double([stride], [])])])], { to: 7 });
}

/** `(x + offset) · stride` over a grid row of `n` (scalar int64), as float64 [n]. */
function gridCoordinates(g: OnnxGraph, n: string, offset: number, stride: number): string {
  const r = g.op('Cast', [g.op('Range', [g.int64([0], []), n, g.int64([1], [])])], { to: 11 });
  return g.op('Mul', [offset ? g.op('Add', [r, g.double([offset], [])]) : r, g.double([stride], [])]);
}

/** Grid centres cx, cy [h·w] (row-major) for a level of h × w cells. */
function gridCentres(g: OnnxGraph, h: string, w: string, offset: number, stride: number): { cx: string; cy: string } {
  const hw = g.op('Concat', [unsq(g, h, [0]), unsq(g, w, [0])], { axis: 0 });
  const xs = g.op('Expand', [unsq(g, gridCoordinates(g, w, offset, stride), [0]), hw]);
  const ys = g.op('Expand', [unsq(g, gridCoordinates(g, h, offset, stride), [1]), hw]);
  return { cx: g.op('Reshape', [xs, g.int64([-1])]), cy: g.op('Reshape', [ys, g.int64([-1])]) };
}

export interface AnchorSpec {
  strides: number[];
  sizes: number[];
  ratios: number[];
  scales: number[];
}

/** Base anchors of one level centred at 0, ratio-major then scale (as generateAnchors, float64). */
export function baseAnchors(size: number, ratios: number[], scales: number[]): number[] {
  const base: number[] = [];
  for (const r of ratios)
    for (const s of scales) {
      const side = size * s;
      const w = Math.sqrt((side * side) / r);
      const h = w * r;
      base.push(-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h);
    }
  return base;
}

/** RetinaNet anchors [N, 4] float32 for the input's height and width, and the anchors per level (scalars). */
export function anchorsGraph(g: OnnxGraph, images: string, a: AnchorSpec): { anchors: string; levelSizes: string[] } {
  const H = dim(g, images, 2);
  const Wd = dim(g, images, 3);
  const A = a.ratios.length * a.scales.length;
  const levels: string[] = [];
  const levelSizes: string[] = [];
  a.strides.forEach((stride, l) => {
    const h = ceilDiv(g, H, stride);
    const w = ceilDiv(g, Wd, stride);
    const { cx, cy } = gridCentres(g, h, w, 0.5, stride);
    const shifts = g.op('Concat', [cx, cy, cx, cy].map((v) => unsq(g, v, [1])), { axis: 1 });
    const base = g.double(baseAnchors(a.sizes[l], a.ratios, a.scales), [1, A, 4]);
    levels.push(g.op('Reshape', [g.op('Add', [unsq(g, shifts, [1]), base]), g.int64([-1, 4])]));
    levelSizes.push(g.op('Mul', [g.op('Mul', [h, w]), g.int64([A], [])]));
  });
  return { anchors: g.op('Cast', [g.op('Concat', levels, { axis: 0 })], { to: 1 }, 'anchors'), levelSizes };
}

/** NanoDet-Plus centre priors [N, 4] = (x, y, stride, stride), float32, and the priors per level. */
export function priorsGraph(g: OnnxGraph, images: string, strides: number[]): { priors: string; levelSizes: string[] } {
  const H = dim(g, images, 2);
  const Wd = dim(g, images, 3);
  const levels: string[] = [];
  const levelSizes: string[] = [];
  for (const s of strides) {
    // (size + s − 1) / s in integers
    const h = g.op('Div', [g.op('Add', [H, g.int64([s - 1], [])]), g.int64([s], [])]);
    const w = g.op('Div', [g.op('Add', [Wd, g.int64([s - 1], [])]), g.int64([s], [])]);
    const { cx, cy } = gridCentres(g, h, w, 0, s);
    const st = g.op('Expand', [g.double([s], [1]), unsq(g, g.op('Mul', [h, w]), [0])]);
    levels.push(g.op('Concat', [cx, cy, st, st].map((v) => unsq(g, v, [1])), { axis: 1 }));
    levelSizes.push(g.op('Mul', [h, w]));
  }
  return { priors: g.op('Cast', [g.op('Concat', levels, { axis: 0 })], { to: 1 }, 'priors'), levelSizes };
}

// ---------------------------------------------------------------- decoding

const lastAxis = (g: OnnxGraph, x: string, k: number) => g.op('Gather', [x, g.int64([k], [])], { axis: -1 });

/** Box coder decode (native BoxCoder::decode, same operation order): anchors [..., 4], deltas [..., 4] → boxes. */
export function decodeDeltas(g: OnnxGraph, anchors: string, deltas: string, coder: { std: number[]; mean: number[]; maxDeltaExp: number }): string {
  const coordinate = (k: number) => {
    const v = g.op('Mul', [lastAxis(g, deltas, k), g.float([coder.std[k]], [])]);
    return coder.mean[k] !== 0 ? g.op('Add', [v, g.float([coder.mean[k]], [])]) : v;
  };
  const half = g.float([0.5], []);
  const [a0, a1, a2, a3] = [0, 1, 2, 3].map((k) => lastAxis(g, anchors, k));
  const aw = g.op('Sub', [a2, a0]);
  const ah = g.op('Sub', [a3, a1]);
  const acx = g.op('Add', [a0, g.op('Mul', [aw, half])]);
  const acy = g.op('Add', [a1, g.op('Mul', [ah, half])]);
  let dw = coordinate(2);
  let dh = coordinate(3);
  if (coder.maxDeltaExp > 0) {
    dw = g.op('Min', [dw, g.float([coder.maxDeltaExp], [])]);
    dh = g.op('Min', [dh, g.float([coder.maxDeltaExp], [])]);
  }
  const cx = g.op('Add', [acx, g.op('Mul', [coordinate(0), aw])]);
  const cy = g.op('Add', [acy, g.op('Mul', [coordinate(1), ah])]);
  const w = g.op('Mul', [g.op('Exp', [dw]), aw]);
  const h = g.op('Mul', [g.op('Exp', [dh]), ah]);
  const hw = g.op('Mul', [w, half]);
  const hh = g.op('Mul', [h, half]);
  const parts = [g.op('Sub', [cx, hw]), g.op('Sub', [cy, hh]), g.op('Add', [cx, hw]), g.op('Add', [cy, hh])];
  return g.op('Concat', parts.map((p) => g.op('Unsqueeze', [p, g.int64([-1])])), { axis: -1 }, 'decoded');
}

/** GFL's integral: distribution logits [B, N, 4·(R+1)] → expected distances [B, N, 4] (softmax · 0…R). */
export function integralDistancesGraph(g: OnnxGraph, reg: string, regMax: number): string {
  const p = g.op('Softmax', [g.op('Reshape', [reg, g.int64([0, 0, 4, regMax + 1])])], { axis: -1 });
  const project = g.float(Array.from({ length: regMax + 1 }, (_, i) => i), [regMax + 1, 1]);
  return g.op('Reshape', [g.op('MatMul', [p, project]), g.int64([0, 0, 4])]);
}

/** NanoDet-Plus boxes: priors [N, 4] (x, y, stride, stride), distribution logits → [B, N, 4] (distance2bbox, unclipped). */
export function decodeDistribution(g: OnnxGraph, reg: string, priors: string, regMax: number): string {
  const stride = lastAxis(g, priors, 2);
  const d = g.op('Mul', [integralDistancesGraph(g, reg, regMax), unsq(g, stride, [-1])]);
  const [px, py] = [lastAxis(g, priors, 0), lastAxis(g, priors, 1)];
  const parts = [g.op('Sub', [px, lastAxis(g, d, 0)]), g.op('Sub', [py, lastAxis(g, d, 1)]), g.op('Add', [px, lastAxis(g, d, 2)]), g.op('Add', [py, lastAxis(g, d, 3)])];
  return g.op('Concat', parts.map((v) => g.op('Unsqueeze', [v, g.int64([-1])])), { axis: -1 }, 'decoded');
}

// ---------------------------------------------------------------- post-processing

export interface PostprocessSettings {
  scoreThreshold: number;
  topkCandidates: number;
  nmsThreshold: number;
  maxDetections: number;
}

/**
 * selectAndSuppress: scores [B, N, C] probabilities, boxes [B, N, 4] decoded (input pixels), levelSizes
 * (scalars, Σ = N) → boxes [B, D, 4], scores [B, D], labels [B, D] (int64), count [B] (int64); rows from
 * count on are padding (boxes 0, scores 0, labels −1).
 */
export function detectionsGraph(g: OnnxGraph, images: string, scores: string, boxes: string, levelSizes: string[], numClasses: number, s: PostprocessSettings): { boxes: string; scores: string; labels: string; count: string } {
  const C = numClasses;
  const cScores: string[] = [];
  const cLocation: string[] = [];
  const cLabel: string[] = [];
  let start = g.int64([0], []);
  for (const n of levelSizes) {
    const end = g.op('Add', [start, n]);
    const level = g.op('Slice', [scores, unsq(g, start, [0]), unsq(g, end, [0]), g.int64([1])]);
    const flat = g.op('Reshape', [level, g.int64([0, -1])]);
    const nC = g.op('Mul', [n, g.int64([C], [])]);
    const k = s.topkCandidates > 0 ? g.op('Min', [nC, g.int64([s.topkCandidates], [])]) : nC;
    const [vals, idx] = g.opN('TopK', [flat, unsq(g, k, [0])], 2, { axis: 1, largest: 1, sorted: 1 }, 'level_topk');
    cScores.push(vals);
    cLocation.push(g.op('Add', [g.op('Div', [idx, g.int64([C], [])]), start]));
    cLabel.push(g.op('Mod', [idx, g.int64([C], [])]));
    start = end;
  }
  const cat = (v: string[], stem: string) => (v.length > 1 ? g.op('Concat', v, { axis: 1 }, stem) : v[0]);
  const candScores = cat(cScores, 'candidate_scores'); // [B, K]
  const candLocation = cat(cLocation, 'candidate_locations');
  const candLabel = cat(cLabel, 'candidate_labels');
  const K = dim(g, candScores, 1);
  const loc4 = g.op('Expand', [unsq(g, candLocation, [2]), g.op('Concat', [g.op('Shape', [candLocation]), g.int64([4])], { axis: 0 })]);
  let candBoxes = g.op('GatherElements', [boxes, loc4], { axis: 1 });
  // clip to the input (native clipBoxesPerImage with limits = input height, width)
  const H = g.op('Cast', [dim(g, images, 2)], { to: 1 });
  const Wd = g.op('Cast', [dim(g, images, 3)], { to: 1 });
  const maxima = g.op('Concat', [Wd, H, Wd, H].map((v) => unsq(g, v, [0])), { axis: 0 });
  candBoxes = g.op('Min', [g.op('Max', [candBoxes, g.float([0], [])]), maxima], {}, 'candidate_boxes');
  // class-aware NMS: each candidate scores only in its own class's row
  const perClass = g.op('Transpose', [g.op('Mul', [g.op('OneHot', [candLabel, g.int64([C], []), g.float([0, 1])], { axis: -1 }), unsq(g, candScores, [2])])], { perm: [0, 2, 1] });
  const selected = g.op('NonMaxSuppression', [candBoxes, perClass, g.int64([2 ** 31 - 1]), g.float([s.nmsThreshold]), g.float([s.scoreThreshold])], { center_point_box: 0 }, 'nms');
  const where = g.op('Gather', [selected, g.int64([0, 2])], { axis: 1 }); // (image, candidate)
  const ones = g.op('Expand', [g.float([1], []), g.op('Slice', [g.op('Shape', [selected]), g.int64([0]), g.int64([1])])]);
  const keep = g.op('ScatterND', [g.op('ConstantOfShape', [g.op('Shape', [candScores])]), where, ones], {}, 'keep');
  const kept = g.op('Greater', [keep, g.float([0], [])]);
  const ranked = g.op('Where', [kept, candScores, g.float([-1], [])]);
  const D = s.maxDetections > 0 ? g.op('Min', [K, g.int64([s.maxDetections], [])]) : K;
  const [, order] = g.opN('TopK', [ranked, unsq(g, D, [0])], 2, { axis: 1, largest: 1, sorted: 1 }, 'final_topk');
  const count = g.op('Min', [g.op('ReduceSum', [g.op('Cast', [kept], { to: 7 }), g.int64([1])], { keepdims: 0 }), D], {}, 'count');
  const valid = g.op('Less', [unsq(g, g.op('Range', [g.int64([0], []), D, g.int64([1], [])]), [0]), unsq(g, count, [1])]);
  const order4 = g.op('Expand', [unsq(g, order, [2]), g.op('Concat', [g.op('Shape', [order]), g.int64([4])], { axis: 0 })]);
  return {
    boxes: g.op('Where', [unsq(g, valid, [2]), g.op('GatherElements', [candBoxes, order4], { axis: 1 }), g.float([0], [])]),
    scores: g.op('Where', [valid, g.op('GatherElements', [candScores, order], { axis: 1 }), g.float([0], [])]),
    labels: g.op('Where', [valid, g.op('GatherElements', [candLabel, order], { axis: 1 }), g.int64([-1], [])]),
    count,
  };
}

// ---------------------------------------------------------------- the model

const DEFAULT_ANCHORS = { levels: [3, 4, 5, 6, 7], ratios: [0.5, 1, 2], scales: [1, 2 ** (1 / 3), 2 ** (2 / 3)] };

function resolveAnchors(o: RetinaNetOptions): AnchorSpec {
  const a = o.anchors ?? {};
  const levels = a.levels ?? DEFAULT_ANCHORS.levels;
  return { strides: a.strides ?? levels.map((l) => 2 ** l), sizes: a.sizes ?? levels.map((l) => 2 ** (l + 2)), ratios: a.ratios ?? DEFAULT_ANCHORS.ratios, scales: a.scales ?? DEFAULT_ANCHORS.scales };
}

interface Resolved {
  opset: number;
  dynamicBatch: boolean;
  batchSize: number;
  dynamicSize: boolean;
  inputSize?: [number, number];
  postprocess: 'detections' | 'raw';
  normalize: boolean;
  mean: [number, number, number];
  std: [number, number, number];
  settings: PostprocessSettings;
  classes?: string[];
}

const OPTION_KEYS = ['opset', 'dynamicBatch', 'batchSize', 'dynamicSize', 'inputSize', 'postprocess', 'normalize', 'mean', 'std', 'scoreThreshold', 'topkCandidates', 'nmsThreshold', 'maxDetections', 'classes'];

function resolveOptions(config: ModelConfig, options: OnnxExportOptions | undefined): Resolved {
  const o = checkOptions('options', options) as OnnxExportOptions;
  for (const k of Object.keys(o)) if (!OPTION_KEYS.includes(k)) throw new RangeError(`options.${k}: the ONNX exporter has no such option (it knows ${OPTION_KEYS.join(', ')})`);
  const opset = o.opset ?? 17;
  checkInteger('options.opset', opset, MIN_OPSET, MAX_OPSET);
  for (const k of ['dynamicBatch', 'dynamicSize', 'normalize'] as const) if (o[k] !== undefined && typeof o[k] !== 'boolean') throw invalid(`options.${k}`, 'a boolean', o[k]);
  const postprocess = o.postprocess ?? 'detections';
  if (postprocess !== 'detections' && postprocess !== 'raw') throw invalid('options.postprocess', "'detections' or 'raw'", postprocess, RangeError);
  const dynamicBatch = o.dynamicBatch ?? true;
  const dynamicSize = o.dynamicSize ?? true;
  if (o.batchSize !== undefined) {
    checkInteger('options.batchSize', o.batchSize, 1, 1 << 16);
    if (dynamicBatch) throw new RangeError('options.batchSize: a fixed batch size needs dynamicBatch: false');
  }
  if (o.inputSize !== undefined && (!Array.isArray(o.inputSize) || o.inputSize.length !== 2 || o.inputSize.some((v) => !Number.isInteger(v) || v < 1 || v > 16384)))
    throw invalid('options.inputSize', '[height, width] of positive integers', o.inputSize, RangeError);
  if (!dynamicSize && !o.inputSize) throw new RangeError('options.inputSize: dynamicSize: false needs a fixed [height, width]');
  for (const k of ['mean', 'std'] as const)
    if (o[k] !== undefined && (!Array.isArray(o[k]) || o[k]!.length !== 3 || o[k]!.some((v) => typeof v !== 'number' || !Number.isFinite(v) || (k === 'std' && !(v > 0)))))
      throw invalid(`options.${k}`, k === 'std' ? 'three positive numbers' : 'three finite numbers', o[k], RangeError);
  if ((o.mean || o.std) && o.normalize === false) throw new RangeError('options.mean/std: the graph does not normalise (normalize: false), so it cannot use them');
  const nanodet = config.architecture === 'nanodet-plus';
  for (const k of ['scoreThreshold', 'nmsThreshold'] as const)
    if (o[k] !== undefined && (typeof o[k] !== 'number' || !(o[k]! >= 0 && o[k]! <= 1))) throw invalid(`options.${k}`, 'a number between 0 and 1', o[k], RangeError);
  for (const k of ['topkCandidates', 'maxDetections'] as const) if (o[k] !== undefined) checkInteger(`options.${k}`, o[k], 0, 2 ** 31 - 1);
  if (postprocess === 'raw')
    for (const k of ['scoreThreshold', 'nmsThreshold', 'topkCandidates', 'maxDetections'] as const)
      if (o[k] !== undefined) throw new RangeError(`options.${k}: a 'raw' export has no post-processing to apply it to`);
  const classes = o.classes ?? config.classes;
  if (o.classes !== undefined && (!Array.isArray(o.classes) || o.classes.length !== config.numClasses || o.classes.some((c) => typeof c !== 'string')))
    throw invalid('options.classes', `${config.numClasses} class names`, o.classes, RangeError);
  return {
    opset,
    dynamicBatch,
    batchSize: o.batchSize ?? 1,
    dynamicSize,
    inputSize: o.inputSize,
    postprocess,
    normalize: o.normalize ?? true,
    mean: o.mean ?? IMAGENET_MEAN,
    std: o.std ?? IMAGENET_STD,
    settings: {
      scoreThreshold: o.scoreThreshold ?? 0.05,
      topkCandidates: o.topkCandidates ?? (nanodet ? 0 : 1000),
      nmsThreshold: o.nmsThreshold ?? (nanodet ? 0.6 : 0.5),
      maxDetections: o.maxDetections ?? 100,
    },
    classes,
  };
}

/** Builds the ONNX model of `model` (weights read now) and writes it atomically to `file`. */
export async function exportOnnx(model: Model, file: string, options?: OnnxExportOptions): Promise<OnnxExportResult> {
  if (typeof file !== 'string' || file.length === 0) throw invalid('file', 'a file path', file);
  const target = path.resolve(file);
  if (fs.existsSync(target) && fs.statSync(target).isDirectory()) throw new Error(`ONNX export: ${file} is a directory`);
  const r = resolveOptions(model.config, options);
  const variant = (model.config as RetinaNetOptions).variant;
  if (variant !== undefined && variant !== 'pytorch-retinanet')
    throw new RangeError(`ONNX export: the '${variant}' RetinaNet variant is not exported yet (its P6 source, GroupNorm heads and anchors are not in the exporter); models of the default variant and NanoDet-Plus are`);
  const g = new OnnxGraph();
  const sd = model.stateDict();
  const weights: Record<string, { data: Float32Array; shape: number[] }> = {};
  try {
    for (const [k, t] of Object.entries(sd)) {
      if (t.dtype !== 'float32') continue;
      const host = t.device === 'cpu' ? t : t.to('cpu');
      weights[k] = { data: host.toArray() as Float32Array, shape: [...t.shape] };
      if (host !== t) host.dispose();
    }
  } finally {
    for (const t of Object.values(sd)) t.dispose();
  }
  const W = new WeightSource(g, weights);
  const B: Dim = r.dynamicBatch ? 'batch' : r.batchSize;
  const Hd: Dim = r.dynamicSize ? 'height' : r.inputSize![0];
  const Wdim: Dim = r.dynamicSize ? 'width' : r.inputSize![1];
  const images = g.input('images', 'float', [B, 3, Hd, Wdim]);
  let x = images;
  if (r.normalize) {
    // (v / 255 − mean) / std in float64, as onestage's loader computes its table
    const v = g.op('Div', [g.op('Cast', [images], { to: 11 }), g.double([255], [])]);
    x = g.op('Cast', [g.op('Div', [g.op('Sub', [v, g.double(r.mean, [1, 3, 1, 1])]), g.double(r.std, [1, 3, 1, 1])])], { to: 1 }, 'normalized');
  }
  const config = model.config;
  const nanodet = config.architecture === 'nanodet-plus';
  const C = config.numClasses;
  const outputs: Array<{ name: string; dims: Dim[] }> = [];
  const out = (value: string, name: string, dtype: 'float' | 'int64', dims: Dim[]) => {
    g.output(value, name, dtype, dims);
    outputs.push({ name, dims });
  };
  const depth = config.depth ?? (nanodet ? 18 : 50);
  const nd = config as NanoDetPlusOptions;
  const shufflenet = nanodet && (nd.backbone ?? 'resnet') !== 'resnet';
  const c = shufflenet ? shufflenetV2(g, W, x) : resnet(g, W, depth, x);
  if (!nanodet) {
    const rc = config as RetinaNetOptions;
    const a = resolveAnchors(rc);
    const feats = pyramid(g, W, 'fpn', c, a.strides.length);
    const A = a.ratios.length * a.scales.length;
    const cat = (parts: string[], stem: string) => g.op('Concat', parts, { axis: 1 }, stem);
    const regression = cat(feats.map((p) => retinaSubnet(g, W, 'regressionModel', p, 4)), 'regression');
    const classification = cat(feats.map((p) => retinaSubnet(g, W, 'classificationModel', p, C)), 'classification');
    if (W.shape('classificationModel.output.weight')[0] !== A * C) throw new Error(`ONNX export: the classification output has ${W.shape('classificationModel.output.weight')[0]} channels, not anchors (${A}) × classes (${C})`);
    const { anchors, levelSizes } = anchorsGraph(g, images, a);
    if (r.postprocess === 'raw') {
      out(classification, 'classification', 'float', [B, 'anchors', C]);
      out(regression, 'regression', 'float', [B, 'anchors', 4]);
      out(anchors, 'anchor_boxes', 'float', ['anchors', 4]);
    } else {
      const coder = rc.boxCoder ?? {};
      const boxes = decodeDeltas(g, anchors, regression, { std: coder.std ?? [0.1, 0.1, 0.2, 0.2], mean: coder.mean ?? [0, 0, 0, 0], maxDeltaExp: coder.maxDeltaExp ?? 0 });
      const det = detectionsGraph(g, images, g.op('Sigmoid', [classification]), boxes, levelSizes, C, r.settings);
      emitDetections(det, out, B);
    }
  } else {
    const nc = config as NanoDetPlusOptions;
    const strides = nc.strides ?? [8, 16, 32, 64];
    const feats = nd.neck === 'ghost-pan' ? ghostPan(g, W, c) : pyramid(g, W, 'fpn', c, strides.length);
    const regMax = nc.regMax ?? 7;
    const head = nc.head ?? {};
    const preds = nanodetHead(g, W, feats, { stackedConvs: head.stackedConvs ?? 2, convType: head.convType ?? 'depthwise', channels: head.channels ?? 96 });
    const classification = g.op('Slice', [preds, g.int64([0]), g.int64([C]), g.int64([2])], {}, 'classification');
    const distribution = g.op('Slice', [preds, g.int64([C]), g.int64([C + 4 * (regMax + 1)]), g.int64([2])], {}, 'distribution');
    const { priors, levelSizes } = priorsGraph(g, images, strides);
    if (r.postprocess === 'raw') {
      out(classification, 'classification', 'float', [B, 'priors', C]);
      out(distribution, 'distribution', 'float', [B, 'priors', 4 * (regMax + 1)]);
      out(priors, 'priors', 'float', ['priors', 4]);
    } else {
      const boxes = decodeDistribution(g, distribution, priors, regMax);
      const det = detectionsGraph(g, images, g.op('Sigmoid', [classification]), boxes, levelSizes, C, r.settings);
      emitDetections(det, out, B);
    }
  }
  const metadata: Record<string, string> = {
    [MODEL_METADATA_KEY]: JSON.stringify(config),
    architecture: nanodet ? 'nanodet-plus' : 'retinanet',
    classes: JSON.stringify(r.classes ?? Array.from({ length: C }, (_, i) => String(i))),
    input: r.normalize ? 'images: float32 RGB [batch, 3, height, width], values 0-255 (normalised inside)' : 'images: float32 RGB [batch, 3, height, width], normalised ((v/255 - mean)/std)',
    input_size: r.inputSize ? r.inputSize.join(',') : '',
    dynamic_size: String(r.dynamicSize),
    normalize: String(r.normalize),
    mean: JSON.stringify(r.mean),
    std: JSON.stringify(r.std),
    postprocess: r.postprocess,
    ...(r.postprocess === 'detections' ? { score_threshold: String(r.settings.scoreThreshold), topk_candidates: String(r.settings.topkCandidates), nms_threshold: String(r.settings.nmsThreshold), max_detections: String(r.settings.maxDetections) } : {}),
  };
  const { version } = (await import('../runtime')).buildInfo();
  const bytes = g.encode({ opset: r.opset, graphName: `onestage_${metadata.architecture}`, producerVersion: version, metadata, docString: `onestage ${metadata.architecture} (${shufflenet ? nd.backbone : `ResNet-${depth}`}${nanodet ? `, ${nd.neck ?? 'fpn'}` : ''}), ${r.postprocess}` });
  try {
    writeFileAtomic(target, bytes);
  } catch (err) {
    throw new Error(`ONNX export: cannot write ${file}: ${(err as Error).message}`);
  }
  return { file: target, bytes: bytes.length, opset: r.opset, inputs: [{ name: 'images', dims: [B, 3, Hd, Wdim] }], outputs, operators: Object.fromEntries([...g.opCounts.entries()].sort()), metadata };
}

function emitDetections(det: { boxes: string; scores: string; labels: string; count: string }, out: (v: string, n: string, t: 'float' | 'int64', d: Dim[]) => void, B: Dim): void {
  out(det.boxes, 'boxes', 'float', [B, 'detections', 4]);
  out(det.scores, 'scores', 'float', [B, 'detections']);
  out(det.labels, 'labels', 'int64', [B, 'detections']);
  out(det.count, 'count', 'int64', [B]);
}
