/**
 * `Model`: a detector whose weights live in native memory. Every heavy call (forward, detect,
 * loading and saving weights) runs on the thread pool and returns a promise; calls on one model
 * are serialised natively, so concurrent promises never race.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { native, NativeDetection, NativeLoadReport, NativeModel, NativeModelInfo } from './binding';
import { AnchorOptions, BoxCoderOptions, checkAnchorOptions, checkBoxCoderOptions } from './geometry';
import { readSafetensorsHeader } from './safetensors';
import { checkDevice, Device, handleOf, Tensor, wrapTensors } from './tensor';
import { checkInteger, checkOneOf, checkOptions, invalid } from './validate';
import type { OnnxExportOptions, OnnxExportResult } from './onnx/export';
import { COCO_91_CLASSES, RETINANET_VARIANTS, RetinaNetVariant, torchvisionLayout, weightEntries } from './torchvision';

export type ResNetDepth = 18 | 34 | 50 | 101 | 152;

export interface RetinaNetOptions {
  /** Classes to detect (no background class). */
  numClasses: number;
  /** ResNet depth; default 50. */
  depth?: ResNetDepth;
  /** Channels of the FPN and subnets; default 256. */
  featureSize?: number;
  /** Prior probability for the classification bias −log((1−p)/p); default 0.01. */
  prior?: number;
  /** BatchNorm running statistics stay fixed in train mode (pytorch-retinanet); default true. */
  freezeBn?: boolean;
  /** BatchNorm weight and bias get no gradient either; default false. */
  freezeBnAffine?: boolean;
  anchors?: AnchorOptions;
  boxCoder?: BoxCoderOptions;
  /** Default 'cpu'. */
  device?: Device;
  /** Seeds the initialisation (LibTorch's generator) for reproducible weights. */
  seed?: number;
  /** Class names (numClasses of them), kept with saved weights and used to label drawn detections. */
  classes?: string[];
  /**
   * Architecture variant: 'pytorch-retinanet' (default); 'torchvision' (torchvision's
   * retinanet_resnet50_fpn: P6 from P5's output) or 'torchvision-v2' (retinanet_resnet50_fpn_v2: P6 from
   * C5, GroupNorm(32) in the subnets). The torchvision variants default to torchvision's anchors
   * (`anchors.style: 'torchvision'`), box coder (std 1, dw/dh clamp log(1000/16), no target-size clamp),
   * frozen BatchNorm affine (FrozenBatchNorm2d) and 300 detections per image, and save and load weights
   * under torchvision's state_dict names.
   */
  variant?: RetinaNetVariant;
  /** torchvision's trainable_backbone_layers: how many of layer4, layer3, layer2, layer1, conv1 (5: and bn1) train; default 5 (all). */
  trainableBackboneLayers?: number;
}

export interface NanoDetPlusOptions {
  /** Classes to detect (no background class). */
  numClasses: number;
  /**
   * A released NanoDet-Plus configuration ('m-320', 'm-416', 'm-1.5x-320', 'm-1.5x-416'): ShuffleNetV2 +
   * Ghost-PAN and the head and AGM sizes of NanoDet's configs; options given beside it win.
   */
  preset?: NanoDetPlusPreset;
  /** 'resnet' (default; `depth`) or NanoDet's 'shufflenetv2-0.5x' | 'shufflenetv2-1.0x' | 'shufflenetv2-1.5x' | 'shufflenetv2-2.0x'. */
  backbone?: string;
  /** 'fpn' (default: pytorch-retinanet's FPN) or 'ghost-pan' (NanoDet-Plus's; kernel `neckKernelSize`, default 5). */
  neck?: 'fpn' | 'ghost-pan';
  neckKernelSize?: number;
  /** ResNet depth; default 18. */
  depth?: ResNetDepth;
  /** Channels of the FPN; default 96. */
  featureSize?: number;
  /** Strides of the levels used (P3…): 8, 16, 32 then optionally 64 and 128; default [8, 16, 32, 64]. */
  strides?: number[];
  /** The NanoDet-Plus head: `channels` (default 96), `stackedConvs` (2), `kernelSize` (5), `convType` 'depthwise' (default: depthwise-separable) or 'conv'. */
  head?: { channels?: number; stackedConvs?: number; kernelSize?: number; convType?: 'depthwise' | 'conv' };
  /** Distribution bins − 1 (GFL's reg_max); default 7. */
  regMax?: number;
  /**
   * The assignment-guidance module (aux FPN + SimpleConvHead with GroupNorm) used in training:
   * true (default), false, or its sizes: `channels` (default 192), `stackedConvs` (4), `groups` (32).
   */
  aux?: boolean | { channels?: number; stackedConvs?: number; groups?: number };
  /** BatchNorm running statistics stay fixed in train mode; default false (NanoDet trains them). */
  freezeBn?: boolean;
  /** Default 'cpu'. */
  device?: Device;
  /** Seeds the initialisation. */
  seed?: number;
  /** Class names (numClasses of them). */
  classes?: string[];
}

export type NanoDetPlusPreset = 'm-320' | 'm-416' | 'm-1.5x-320' | 'm-1.5x-416';

/** NanoDet-Plus's released configurations (config/nanodet-plus-m*.yml): backbone, Ghost-PAN, head and AGM sizes, input size. */
export const NANODET_PLUS_PRESETS: Record<NanoDetPlusPreset, Omit<NanoDetPlusOptions, 'numClasses'> & { inputSize: number }> = {
  'm-320': { backbone: 'shufflenetv2-1.0x', neck: 'ghost-pan', neckKernelSize: 5, featureSize: 96, strides: [8, 16, 32, 64], head: { channels: 96, stackedConvs: 2, kernelSize: 5, convType: 'depthwise' }, regMax: 7, aux: { channels: 192, stackedConvs: 4, groups: 32 }, inputSize: 320 },
  'm-416': { backbone: 'shufflenetv2-1.0x', neck: 'ghost-pan', neckKernelSize: 5, featureSize: 96, strides: [8, 16, 32, 64], head: { channels: 96, stackedConvs: 2, kernelSize: 5, convType: 'depthwise' }, regMax: 7, aux: { channels: 192, stackedConvs: 4, groups: 32 }, inputSize: 416 },
  'm-1.5x-320': { backbone: 'shufflenetv2-1.5x', neck: 'ghost-pan', neckKernelSize: 5, featureSize: 128, strides: [8, 16, 32, 64], head: { channels: 128, stackedConvs: 2, kernelSize: 5, convType: 'depthwise' }, regMax: 7, aux: { channels: 256, stackedConvs: 4, groups: 32 }, inputSize: 320 },
  'm-1.5x-416': { backbone: 'shufflenetv2-1.5x', neck: 'ghost-pan', neckKernelSize: 5, featureSize: 128, strides: [8, 16, 32, 64], head: { channels: 128, stackedConvs: 2, kernelSize: 5, convType: 'depthwise' }, regMax: 7, aux: { channels: 256, stackedConvs: 4, groups: 32 }, inputSize: 416 },
};

/** What a model was built from (kept in saved weights): the architecture and its options. */
export type ModelConfig =
  | (Omit<RetinaNetOptions, 'device' | 'seed'> & { architecture?: 'retinanet' })
  | (Omit<NanoDetPlusOptions, 'device' | 'seed'> & { architecture: 'nanodet-plus' });

/** Metadata key under which `saveWeights` records the architecture (`Model.fromWeights` reads it). */
export const MODEL_METADATA_KEY = 'onestage.model';

/** Options of `Model.forward`. */
export interface ForwardOptions {
  /** bf16 autocast of the forward pass, as `DetectOptions.amp` (a model on CUDA); outputs in float32. Default false. */
  amp?: boolean;
}

export interface DetectOptions {
  /** Candidates need a score above this; default 0.05. */
  scoreThreshold?: number;
  /** Candidates kept per pyramid level and image before NMS; default 1000 (RetinaNet) or 0 (NanoDet-Plus); 0 keeps all above the threshold. */
  topkCandidates?: number;
  /** IoU above which a lower-scored box of the same class is suppressed; default 0.5 (RetinaNet) or 0.6 (NanoDet-Plus). */
  nmsThreshold?: number;
  /** Detections kept per image; default 100; 0 keeps all. */
  maxDetections?: number;
  /**
   * bf16 autocast of the forward pass (a model on CUDA; a RangeError elsewhere); scores, decoding and
   * NMS stay in float32. Default false. Scores move by about 1e-2 against float32. On a channels-last
   * model the frozen BatchNorm layers followed by a ReLU are folded into their convolutions (weight ·
   * scale, bias = shift, rounded once to bf16) and cuDNN runs convolution + bias + ReLU as one kernel,
   * the heads' convolutions too (`ONESTAGE_CONV_FUSION=off`: unfused).
   */
  amp?: boolean;
  /**
   * Replay forward and post-processing as a CUDA graph (a model on CUDA; `topkCandidates` > 0 —
   * NanoDet-Plus's default keeps every candidate, a count known only after the forward: pass e.g. 1000).
   * The first 2 calls of an input shape and set of options run eagerly, the third is captured, later
   * ones copy their inputs into the graph's and replay it: the same kernels, the same detections,
   * without the per-operation launch cost. Up to 4 shapes are kept (least recently used dropped);
   * replaced weights (loading into new storage, moving, channels-last) drop them. A capture that fails
   * is an error naming the cause. Default false.
   */
  cudaGraph?: boolean;
}

/** A batch for `detect`: images plus how each was resized from its original. */
export interface DetectBatch {
  /** `[B, 3, H, W]` float32, normalised, padded to a common size. */
  images: Tensor;
  /** Factor each original image was resized by (default 1). */
  scales?: number[];
  /** Original `[height, width]` of each image (default: the padded input size ÷ scale). */
  sizes?: Array<[number, number]>;
}

/** Detections of one image, by decreasing score, in original image pixels. */
export interface Detection {
  /** `[n × 4]` row-major `x1, y1, x2, y2`. */
  boxes: Float32Array;
  scores: Float32Array;
  /** Contiguous class indices `0 … numClasses−1`. */
  labels: Int32Array;
}

/** Backbone features C3–C5 and pyramid levels P3–P5 of a forward pass. */
export interface PyramidOutput {
  c3: Tensor;
  c4: Tensor;
  c5: Tensor;
  p3: Tensor;
  p4: Tensor;
  p5: Tensor;
}

/** Raw outputs of one NanoDet-Plus forward pass (no gradient). */
export interface NanoDetPlusForwardOutput extends PyramidOutput {
  /** Present with stride 64. */
  p6?: Tensor;
  /** `[B, N, numClasses + 4·(regMax+1)]`: the head's output as NanoDet returns it. */
  preds: Tensor;
  /** `[B, N, numClasses]` logits. */
  classification: Tensor;
  /** `[B, N, 4·(regMax+1)]` distance logits. */
  distribution: Tensor;
  /** `[B, N, 4]` decoded boxes in input pixels. */
  boxes: Tensor;
  /** `[N, 4]` centre priors for this input size. */
  priors: Tensor;
}

/** Raw outputs of one RetinaNet forward pass (no gradient). */
export interface ForwardOutput extends PyramidOutput {
  p6: Tensor;
  p7: Tensor;
  /** `[B, N, 4]` raw box deltas. */
  regression: Tensor;
  /** `[B, N, numClasses]` logits (apply a sigmoid for probabilities). */
  classification: Tensor;
  /** `[N, 4]` anchors for this input size. */
  anchors: Tensor;
}

export interface LoadWeightsOptions {
  /** Missing, unexpected or wrongly shaped keys are an error (and nothing is loaded); default true. */
  strict?: boolean;
  /** Load only the backbone (conv1, bn1, layer1–4), e.g. from a torchvision `resnetNN` state_dict. */
  backboneOnly?: boolean;
  /** Read only file keys with this prefix, without it (e.g. `'backbone.body.'`). */
  prefix?: string;
  /**
   * Fine-tuning to another class count: a classification output layer of another shape is not loaded
   * but re-initialised with the prior (listed in the report's `reinitialized`); every other tensor must fit.
   */
  finetune?: boolean;
}

export type LoadReport = NativeLoadReport;

export interface FromWeightsOptions {
  device?: Device;
  /** Another class count: fine-tuning (needs finetune: true); the classification output layer is re-initialised. */
  numClasses?: number;
  /** Class names (their count sets numClasses). */
  classes?: string[];
  /** Allow a class count other than the file's. */
  finetune?: boolean;
  /** RetinaNet: torchvision's trainable_backbone_layers for the model built (see RetinaNetOptions). */
  trainableBackboneLayers?: number;
}
export type ModelInfo = NativeModelInfo;

const DEPTHS = [18, 34, 50, 101, 152] as const;

/** A detector: RetinaNet (`Model.retinanet`, forward gives `ForwardOutput`) or NanoDet-Plus (`Model.nanodetPlus`, `NanoDetPlusForwardOutput`). */
export class Model<Out extends object = ForwardOutput | NanoDetPlusForwardOutput> {
  /** @internal */
  readonly handle: NativeModel;
  /** What the last `Model.fromWeights` load kept and re-initialised (loaded, reinitialized, …). */
  lastLoad?: LoadReport;
  /** The options it was built with (without device and seed). */
  readonly config: ModelConfig;

  private constructor(handle: NativeModel, config: ModelConfig) {
    this.handle = handle;
    this.config = config;
  }

  /** 'retinanet' or 'nanodet-plus'. */
  get architecture(): 'retinanet' | 'nanodet-plus' {
    return this.config.architecture ?? 'retinanet';
  }

  /**
   * A RetinaNet (ResNet + FPN P3–P7 + subnets), initialised as pytorch-retinanet.
   * @example const model = Model.retinanet({ depth: 50, numClasses: 80 });
   */
  static retinanet(options: RetinaNetOptions): Model<ForwardOutput> {
    const o = checkCommonOptions(options);
    if (o.prior !== undefined && !(typeof o.prior === 'number' && o.prior > 0 && o.prior < 1))
      throw invalid('options.prior', 'a number in (0, 1)', o.prior, RangeError);
    for (const k of ['freezeBn', 'freezeBnAffine'] as const)
      if (o[k] !== undefined && typeof o[k] !== 'boolean') throw invalid(`options.${k}`, 'a boolean', o[k]);
    if (o.variant !== undefined && !RETINANET_VARIANTS.includes(o.variant)) throw invalid('options.variant', RETINANET_VARIANTS.map((v) => `'${v}'`).join(', '), o.variant, RangeError);
    if (o.trainableBackboneLayers !== undefined) checkInteger('options.trainableBackboneLayers', o.trainableBackboneLayers, 0, 5);
    const torchvision = o.variant === 'torchvision' || o.variant === 'torchvision-v2';
    const anchors = checkAnchorOptions('options.anchors', torchvision ? { style: 'torchvision', ...o.anchors } : o.anchors);
    const boxCoder = checkBoxCoderOptions('options.boxCoder', torchvision ? { std: [1, 1, 1, 1], maxDeltaExp: Math.log(1000 / 16), minTargetSize: 0, ...o.boxCoder } : o.boxCoder);
    if (torchvision && o.freezeBnAffine === undefined) o.freezeBnAffine = true;
    const { device: _device, seed: _seed, classes, ...arch } = o;
    void _device;
    void _seed;
    const handle = native().modelCreateRetinaNet({ ...arch, ...(o.device ? { device: o.device } : {}), ...(o.seed !== undefined ? { seed: o.seed } : {}), anchors, boxCoder });
    return new Model<ForwardOutput>(handle, { ...arch, numClasses: options.numClasses, ...(classes ? { classes: [...classes] } : {}) });
  }

  /**
   * A NanoDet-Plus detector (ResNet + FPN P3–P6 + NanoDet-Plus head over centre priors, with the
   * AGM's auxiliary FPN and head for training), heads initialised as NanoDet.
   * @example const model = Model.nanodetPlus({ depth: 18, numClasses: 80 });
   */
  static nanodetPlus(options: NanoDetPlusOptions): Model<NanoDetPlusForwardOutput> {
    checkOptions('options', options);
    if (options.preset !== undefined && !(options.preset in NANODET_PLUS_PRESETS))
      throw invalid('options.preset', Object.keys(NANODET_PLUS_PRESETS).map((k) => `'${k}'`).join(', '), options.preset, RangeError);
    const { inputSize: _size, ...preset }: Partial<(typeof NANODET_PLUS_PRESETS)[NanoDetPlusPreset]> = options.preset ? NANODET_PLUS_PRESETS[options.preset] : {};
    void _size;
    const o = checkCommonOptions({ ...preset, ...options, head: { ...preset.head, ...options.head }, ...(preset.aux || options.aux !== undefined ? { aux: typeof options.aux === 'object' ? { ...(preset.aux as object), ...options.aux } : (options.aux ?? preset.aux) } : {}) } as NanoDetPlusOptions);
    const backboneSpec = o.backbone ?? 'resnet';
    const sm = /^shufflenetv2-(0\.5x|1\.0x|1\.5x|2\.0x)$/.exec(backboneSpec);
    if (backboneSpec !== 'resnet' && !sm) throw invalid('options.backbone', "'resnet' or 'shufflenetv2-0.5x' | '-1.0x' | '-1.5x' | '-2.0x'", backboneSpec, RangeError);
    if (o.neck !== undefined) checkOneOf('options.neck', o.neck, ['fpn', 'ghost-pan'] as const);
    if (o.neckKernelSize !== undefined) checkInteger('options.neckKernelSize', o.neckKernelSize, 1, 15);
    if (o.regMax !== undefined) checkInteger('options.regMax', o.regMax, 1, 64);
    if (o.strides !== undefined) {
      if (!Array.isArray(o.strides) || o.strides.length < 3 || o.strides.length > 5 || o.strides.some((v, i) => v !== 8 << i))
        throw invalid('options.strides', 'the strides of P3… in order: [8, 16, 32], [8, 16, 32, 64] or [8, 16, 32, 64, 128]', o.strides, RangeError);
    }
    const head = checkOptions('options.head', o.head);
    for (const k of ['channels', 'stackedConvs', 'kernelSize'] as const) if (head[k] !== undefined) checkInteger(`options.head.${k}`, head[k], k === 'channels' ? 1 : 0, 4096);
    if (head.convType !== undefined) checkOneOf('options.head.convType', head.convType, ['depthwise', 'conv'] as const);
    if (o.aux !== undefined && typeof o.aux !== 'boolean') {
      const a = checkOptions('options.aux', o.aux);
      for (const k of ['channels', 'stackedConvs', 'groups'] as const) if (a[k] !== undefined) checkInteger(`options.aux.${k}`, a[k], k === 'stackedConvs' ? 0 : 1, 4096);
    }
    if (o.freezeBn !== undefined && typeof o.freezeBn !== 'boolean') throw invalid('options.freezeBn', 'a boolean', o.freezeBn);
    const { device: _device, seed: _seed, classes, ...arch } = o;
    void _device;
    void _seed;
    const handle = native().modelCreateNanoDetPlus({ ...arch, backboneKind: sm ? 'shufflenetv2' : 'resnet', ...(sm ? { backboneWidth: sm[1] } : {}), ...(o.device ? { device: o.device } : {}), ...(o.seed !== undefined ? { seed: o.seed } : {}) });
    return new Model<NanoDetPlusForwardOutput>(handle, { architecture: 'nanodet-plus', ...arch, numClasses: options.numClasses, ...(classes ? { classes: [...classes] } : {}) });
  }

  /**
   * A model rebuilt from weights that onestage saved (the architecture is in the file's metadata),
   * with the weights loaded.
   * @example const model = await Model.fromWeights('runs/shapes/model.safetensors', { device: 'cuda' });
   */
  static async fromWeights(file: string, options: FromWeightsOptions = {}): Promise<Model> {
    if (typeof file !== 'string' || file.length === 0) throw invalid('path', 'a file path', file);
    const o = checkOptions('options', options) as FromWeightsOptions;
    if (o.numClasses !== undefined) checkInteger('options.numClasses', o.numClasses, 1, 100000);
    if (o.classes !== undefined && (!Array.isArray(o.classes) || o.classes.some((c) => typeof c !== 'string'))) throw invalid('options.classes', 'an array of class names', o.classes);
    if (o.finetune !== undefined && typeof o.finetune !== 'boolean') throw invalid('options.finetune', 'a boolean', o.finetune);
    if (!fs.existsSync(file)) throw new Error(`${file}: no such weights file`);
    const text = file.endsWith('.safetensors') ? readSafetensorsHeader(file).metadata[MODEL_METADATA_KEY] : undefined;
    let config: ModelConfig;
    if (text !== undefined) {
      try {
        config = JSON.parse(text) as ModelConfig;
      } catch (err) {
        throw new Error(`${file}: malformed '${MODEL_METADATA_KEY}' metadata (${(err as Error).message})`);
      }
    } else {
      // no onestage metadata: a torchvision RetinaNet is recognised by its keys
      const layout = torchvisionLayout(weightEntries(file), file);
      if (!layout)
        throw new Error(`${file}: neither onestage metadata ('${MODEL_METADATA_KEY}') nor a torchvision RetinaNet state_dict; build the model with Model.retinanet / Model.nanodetPlus and call loadWeights`);
      if (layout.anchorsPerLocation !== 9) throw new Error(`${file}: ${layout.anchorsPerLocation} anchors per location; torchvision's RetinaNets have 9 (build the model with matching anchors and call loadWeights)`);
      config = { architecture: 'retinanet', variant: layout.variant, depth: layout.depth, numClasses: layout.numClasses, featureSize: layout.featureSize, ...(layout.numClasses === 91 ? { classes: [...COCO_91_CLASSES] } : {}) };
    }
    const fileClasses = config.numClasses;
    const classes = o.classes ?? (o.numClasses !== undefined && o.numClasses !== fileClasses ? undefined : config.classes);
    const numClasses = o.numClasses ?? (o.classes ? o.classes.length : fileClasses);
    if (o.classes && o.classes.length !== numClasses) throw new RangeError(`options.classes: ${o.classes.length} names for numClasses ${numClasses}`);
    if (numClasses !== fileClasses && !o.finetune)
      throw new RangeError(`${file} was trained for ${fileClasses} classes, not ${numClasses}: to fine-tune to ${numClasses} classes pass { finetune: true } (CLI: train --weights ${file} --finetune)`);
    const device = o.device ? { device: o.device } : {};
    const { architecture, classes: _c, ...rest } = config as ModelConfig & { classes?: string[] };
    void _c;
    const sized = { ...rest, numClasses, ...(classes ? { classes } : {}), ...(o.trainableBackboneLayers !== undefined ? { trainableBackboneLayers: o.trainableBackboneLayers } : {}), ...device };
    let model: Model;
    if (architecture === 'nanodet-plus') model = Model.nanodetPlus(sized as NanoDetPlusOptions);
    else if (architecture === undefined || architecture === 'retinanet') model = Model.retinanet(sized as RetinaNetOptions);
    else throw new Error(`${file}: unknown architecture '${String(architecture)}' in its metadata`);
    try {
      model.lastLoad = await model.loadWeights(file, { finetune: numClasses !== fileClasses });
    } catch (err) {
      model.dispose();
      throw err;
    }
    return model;
  }

  /** Architecture, sizes, device, mode and parameter counts. */
  get info(): ModelInfo {
    return native().modelInfo(this.handle);
  }

  /** Number of parameters (all, or only those that get gradients). */
  parameters(options: { trainableOnly?: boolean } = {}): number {
    const i = this.info;
    return options.trainableOnly ? i.trainableParameters : i.parameters;
  }

  /** Training mode (BatchNorm stays frozen when `freezeBn`). */
  train(on = true): this {
    if (typeof on !== 'boolean') throw invalid('on', 'a boolean', on);
    native().modelSetTraining(this.handle, on);
    return this;
  }

  /** Inference mode. */
  eval(): this {
    return this.train(false);
  }

  /** Moves the weights to `device`. */
  to(device: Device): this {
    native().modelTo(this.handle, checkDevice('device', device));
    return this;
  }

  get device(): Device {
    return this.info.device as Device;
  }

  /**
   * Convolution weights in channels-last (NHWC) memory order, inputs converted to it in `forward`
   * and `detect`: the same numbers, and on CUDA the layout cuDNN's tensor-core kernels work in (no
   * conversions around each convolution). `false` returns to NCHW. The Trainer sets it for CUDA models.
   */
  channelsLast(on = true): this {
    if (typeof on !== 'boolean') throw invalid('on', 'a boolean', on);
    native().modelSetChannelsLast(this.handle, on);
    return this;
  }

  /**
   * Raw outputs for a batch `[B, 3, H, W]` (float32, on the model's device), without gradients.
   * `options.amp`: the forward under bf16 autocast as `detect`'s (a model on CUDA; a RangeError elsewhere),
   * the outputs converted to float32.
   * @example const out = await model.forward(images, { amp: true }); // out.classification [B, N, C]
   */
  async forward(images: Tensor, options?: ForwardOptions): Promise<Out> {
    const imagesHandle = handleOf('images', images);
    const o = checkOptions('options', options) as ForwardOptions;
    this.checkAmp(o.amp);
    return wrapTensors<string>(await native().modelForwardAsync(this.handle, imagesHandle, { amp: o.amp ?? false })) as unknown as Out;
  }

  private checkAmp(amp: unknown): void {
    if (amp !== undefined && typeof amp !== 'boolean') throw invalid('options.amp', 'a boolean', amp);
    if (amp && !this.device.startsWith('cuda')) throw new RangeError(`options.amp (bf16 autocast) needs a model on CUDA; this one is on ${this.device}`);
  }

  /**
   * Detections for each image of a batch, in original image pixels: sigmoid scores, the top
   * `topkCandidates` per level above `scoreThreshold`, decoded and clipped to the image, class-aware
   * NMS, the best `maxDetections` (defaults per architecture: RetinaNet 1000 candidates per level,
   * NMS 0.5; NanoDet-Plus every candidate above 0.05, NMS 0.6, as its post-processing). Runs in
   * whatever mode the model is in (call `eval()` first).
   */
  async detect(input: Tensor | DetectBatch, options?: DetectOptions): Promise<Detection[]> {
    const batch: DetectBatch = input instanceof Tensor ? { images: input } : (checkOptions('input', input) as DetectBatch);
    const images = batch.images;
    handleOf('input.images', images);
    const shape = images.shape;
    if (shape.length !== 4) throw new RangeError(`Expected input.images of shape [B, 3, H, W] but received [${shape.join(', ')}]`);
    const [B, , H, W] = shape;
    const scales = batch.scales ?? new Array<number>(B).fill(1);
    if (!Array.isArray(scales) || scales.length !== B || scales.some((s) => typeof s !== 'number' || !(s > 0) || !Number.isFinite(s)))
      throw invalid('input.scales', `an array of ${B} positive numbers`, scales);
    const sizes = batch.sizes ?? scales.map((s) => [H / s, W / s] as [number, number]);
    if (!Array.isArray(sizes) || sizes.length !== B || sizes.some((s) => !Array.isArray(s) || s.length !== 2 || s.some((v) => typeof v !== 'number' || !(v > 0))))
      throw invalid('input.sizes', `an array of ${B} [height, width] pairs of positive numbers`, sizes);
    const o = checkOptions('options', options);
    for (const k of ['scoreThreshold', 'nmsThreshold'] as const)
      if (o[k] !== undefined && (typeof o[k] !== 'number' || !Number.isFinite(o[k]) || (o[k] as number) < 0 || (o[k] as number) > 1))
        throw invalid(`options.${k}`, 'a number between 0 and 1', o[k], typeof o[k] === 'number' ? RangeError : TypeError);
    for (const k of ['topkCandidates', 'maxDetections'] as const) if (o[k] !== undefined) checkInteger(`options.${k}`, o[k], 0, 2 ** 40);
    this.checkAmp(o.amp);
    if (o.cudaGraph !== undefined && typeof o.cudaGraph !== 'boolean') throw invalid('options.cudaGraph', 'a boolean', o.cudaGraph);
    if (o.cudaGraph && !this.device.startsWith('cuda')) throw new RangeError(`options.cudaGraph needs a model on CUDA; this one is on ${this.device}`);
    const scalesT = Tensor.from(Float32Array.from(scales), [B]);
    const sizesT = Tensor.from(Float32Array.from(sizes.flat()), [B, 2]);
    try {
      const dets: NativeDetection[] = await native().modelDetectAsync(this.handle, images.handle, scalesT.handle, sizesT.handle, o);
      return dets;
    } finally {
      scalesT.dispose();
      sizesT.dispose();
    }
  }

  /**
   * Loads weights from a `.safetensors` file or a PyTorch `.pt`/`.pth` file holding a state_dict
   * (pytorch-retinanet / torchvision key names; a `module.` prefix is removed). Loading never runs
   * code from the file. Returns what was loaded, missing, unexpected and mismatched.
   */
  async loadWeights(file: string, options?: LoadWeightsOptions): Promise<LoadReport> {
    if (typeof file !== 'string' || file.length === 0) throw invalid('path', 'a file path', file);
    const o = checkOptions('options', options);
    if (o.strict !== undefined && typeof o.strict !== 'boolean') throw invalid('options.strict', 'a boolean', o.strict);
    if (o.backboneOnly !== undefined && typeof o.backboneOnly !== 'boolean') throw invalid('options.backboneOnly', 'a boolean', o.backboneOnly);
    if (o.prefix !== undefined && typeof o.prefix !== 'string') throw invalid('options.prefix', 'a string', o.prefix);
    if (o.finetune !== undefined && typeof o.finetune !== 'boolean') throw invalid('options.finetune', 'a boolean', o.finetune);
    const format = weightsFormat(file);
    if (format === 'safetensors') {
      const header = readSafetensorsHeader(file);
      return native().modelLoadSafetensorsAsync(this.handle, file, header.dataStart, header.entries, o);
    }
    if (o.prefix === undefined && file.toLowerCase().endsWith('.ckpt')) {
      // a PyTorch Lightning checkpoint (NanoDet's): the model under 'model.', its EMA copy under 'avg_model.'
      const names = native().torchFileEntries(file).map((e) => e.name);
      const hasModel = names.some((n) => n.startsWith('model.'));
      const hasAvg = names.some((n) => n.startsWith('avg_model.'));
      if (hasModel && hasAvg)
        throw new Error(`${file} holds the model ('model.') and its weight average ('avg_model.', what NanoDet evaluates and exports): pass { prefix: 'avg_model.' } or { prefix: 'model.' }`);
      if (hasModel || hasAvg) return native().modelLoadTorchAsync(this.handle, file, { ...o, prefix: hasAvg ? 'avg_model.' : 'model.' });
    }
    return native().modelLoadTorchAsync(this.handle, file, o);
  }

  /** Writes the weights as `.safetensors` (atomically: temporary file, fsync, rename), with the architecture in the metadata. */
  async saveWeights(file: string, metadata: Record<string, string> = {}): Promise<void> {
    if (typeof file !== 'string' || !file.endsWith('.safetensors')) throw invalid('path', 'a path ending in .safetensors', file);
    checkOptions('metadata', metadata);
    await native().modelSaveSafetensorsAsync(this.handle, path.resolve(file), { format: 'pt', [MODEL_METADATA_KEY]: JSON.stringify(this.config), ...metadata });
  }

  /**
   * Writes the model as ONNX (atomically): the network, its anchors or priors computed from the input
   * size inside the graph, and by default the whole post-processing of `detect` (outputs `boxes`,
   * `scores`, `labels`, `count`); `postprocess: 'raw'` gives the heads' outputs and the anchors/priors.
   * Exports inference behaviour (BatchNorm running statistics) whatever mode the model is in.
   */
  async exportOnnx(file: string, options?: OnnxExportOptions): Promise<OnnxExportResult> {
    const { exportOnnx } = await import('./onnx/export');
    return exportOnnx(this as unknown as Model, file, options);
  }

  /** Copies of every parameter and buffer, by state_dict name. */
  stateDict(): Record<string, Tensor> {
    const out: Record<string, Tensor> = {};
    for (const [k, h] of Object.entries(native().modelStateDict(this.handle))) out[k] = new Tensor(h);
    return out;
  }

  /** Frees the weights now; the model cannot be used afterwards (running calls finish first). */
  dispose(): void {
    native().modelDispose(this.handle);
  }
}

/** Checks the options every architecture shares (numClasses, depth, featureSize, device, seed, classes). */
function checkCommonOptions<T extends Pick<RetinaNetOptions, 'numClasses' | 'depth' | 'featureSize' | 'device' | 'seed' | 'classes'>>(options: T): T {
  if (options === undefined || options === null || typeof options !== 'object') throw invalid('options', 'an object', options);
  const o = checkOptions('options', options) as T;
  checkInteger('options.numClasses', o.numClasses, 1, 100000);
  if (o.depth !== undefined && !(DEPTHS as readonly unknown[]).includes(o.depth))
    throw invalid('options.depth', `one of ${DEPTHS.join(', ')}`, o.depth, RangeError);
  if (o.featureSize !== undefined) checkInteger('options.featureSize', o.featureSize, 1, 4096);
  if (o.device !== undefined) checkDevice('options.device', o.device);
  if (o.seed !== undefined) checkInteger('options.seed', o.seed, 0, Number.MAX_SAFE_INTEGER);
  if (o.classes !== undefined && (!Array.isArray(o.classes) || o.classes.length !== o.numClasses || o.classes.some((c) => typeof c !== 'string')))
    throw invalid('options.classes', `an array of ${o.numClasses} class names`, o.classes);
  return o;
}

function weightsFormat(file: string): 'safetensors' | 'torch' {
  const ext = path.extname(file).toLowerCase();
  return checkOneOf('path extension', ext, ['.safetensors', '.pt', '.pth', '.bin', '.tar', '.ckpt'] as const) === '.safetensors' ? 'safetensors' : 'torch';
}
