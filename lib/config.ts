/**
 * The training configuration of `onestage train --config cfg.json`: a JSON Schema (validated with
 * ajv, defaults filled in, unknown fields rejected) and its TypeScript type. Errors name the field
 * (`config.optimizer.lr must be >= 0 (received -1)`).
 */
import Ajv, { ErrorObject } from 'ajv';
import * as fs from 'node:fs';
import type { AnchorOptions, BoxCoderOptions } from './geometry';
import type { RetinaNetLossOptions } from './losses';
import type { NanoDetPlusOptions, ResNetDepth } from './model';
import type { NanoDetPlusLossOptions } from './nanodet';
import type { EmaOptions, OptimizerOptions, ScheduleOptions } from './train/trainer';
import type { ProgressMode } from './train/progress';
import { NANODET_PLUS_PRESETS } from './model';

export interface TrainConfig {
  data: {
    /** 'coco' (instances JSON + images) or 'csv' (pytorch-retinanet's CSV files). */
    format: 'coco' | 'csv';
    /** COCO instances JSON or CSV annotations of the training set. */
    train: string;
    /** The same for validation (optional). */
    val?: string;
    /** CSV: the classes file. */
    classes?: string;
    /** COCO: image folder (default: the JSON file's folder). */
    images?: string;
    /** Resize: shorter side to this, longer side at most maxSide. */
    minSide: number;
    maxSide: number;
    batchSize: number;
    /** Random flips during training. */
    augment: boolean;
    /** JPEG decoder of the loaders (LoaderOptions.decoder): 'auto' (onestage's, default) or 'sharp'. */
    decoder: 'auto' | 'sharp';
    /** Worker threads decoding what sharp decodes (LoaderOptions.decodeWorkers); default 'auto'. */
    decodeWorkers: number | 'auto';
    /** Pictures decoded at once (LoaderOptions.decodeConcurrency); default 'auto': the pool's size less 2. */
    decodeConcurrency: number | 'auto';
    /** Batches prepared ahead (LoaderOptions.prefetch); default 2. */
    prefetch: number;
  };
  model: {
    /** 'retinanet' (default) or 'nanodet-plus'. */
    head: 'retinanet' | 'nanodet-plus';
    /** Default 50 (RetinaNet) or 18 (NanoDet-Plus). */
    depth: ResNetDepth;
    /** FPN channels; default 256 (RetinaNet) or 96 (NanoDet-Plus). */
    featureSize: number;
    /** Default true (RetinaNet, as pytorch-retinanet) or false (NanoDet-Plus). */
    freezeBn: boolean;
    /** NanoDet-Plus only: its strides, head, regMax and AGM (see NanoDetPlusOptions). */
    nanodet?: Pick<NanoDetPlusOptions, 'preset' | 'backbone' | 'neck' | 'neckKernelSize' | 'strides' | 'head' | 'regMax' | 'aux'>;
    anchors?: AnchorOptions;
    boxCoder?: BoxCoderOptions;
    /** Start from these weights (.safetensors or .pt state_dict). */
    weights?: string;
    /** Backbone weights only (torchvision ResNet state_dict). */
    backbone?: string;
    /** RetinaNet variant (see RetinaNetOptions.variant); a torchvision file in `weights` sets it. */
    variant?: 'pytorch-retinanet' | 'torchvision' | 'torchvision-v2';
    /** `weights` trained for another class count: keep every tensor but the classification output layer. */
    finetune?: boolean;
    /** torchvision's trainable_backbone_layers (0–5; RetinaNet). */
    trainableBackboneLayers?: number;
  };
  /** RetinaNetLossOptions, or NanoDetPlusLossOptions with head 'nanodet-plus'. */
  loss: RetinaNetLossOptions & NanoDetPlusLossOptions;
  optimizer: OptimizerOptions;
  schedule: ScheduleOptions;
  epochs: number;
  /** 'auto' (CUDA when available), 'cpu' or 'cuda'. */
  device: 'auto' | 'cpu' | 'cuda';
  amp: boolean;
  /** CUDA graphs for the training step: 'auto' (default: on CUDA in one process), true, false (TrainerOptions.cudaGraph). */
  cudaGraph: boolean | 'auto';
  ema: boolean | EmaOptions;
  /** CPU data parallelism: copies of the model, each on its own thread ('auto': the cores, when possible). */
  replicas: number | 'auto';
  /**
   * Data-parallel training across processes (used when WORLD_SIZE > 1, e.g. under `--nproc N` or
   * torchrun): the c10d backend ('auto': NCCL on CUDA, Gloo on the CPU), how long a rank waits for
   * the others before failing, and the gradient all-reduce bucket size.
   */
  distributed: { backend: 'auto' | 'gloo' | 'nccl'; timeoutSeconds: number; bucketMiB: number };
  seed: number;
  /** Run folder. */
  out: string;
  evalEvery: number;
  checkpointEvery?: number;
  keep: number;
  progress: ProgressMode;
  /** Also VOC AP@0.5 at validation. */
  voc: boolean;
}

const num = (extra: object = {}) => ({ type: 'number', ...extra });
const int = (extra: object = {}) => ({ type: 'integer', ...extra });
const nonNeg = num({ minimum: 0 });
const prob = num({ exclusiveMinimum: 0, exclusiveMaximum: 1 });
const four = { type: 'array', items: num(), minItems: 4, maxItems: 4 };
const closed = (properties: Record<string, object>, extra: object = {}) => ({ type: 'object', additionalProperties: false, properties, ...extra });

const assigner = closed({ positiveIou: num({ minimum: 0, maximum: 1 }), negativeIou: num({ minimum: 0, maximum: 1 }), lowQualityMatches: { type: 'boolean' }, minPositiveIou: num({ minimum: 0, maximum: 1 }), ignoreIof: num({ minimum: 0, maximum: 1 }) });
const boxCoder = closed({ std: four, mean: four, minTargetSize: nonNeg, maxDeltaExp: nonNeg });
const ghm = { bins: int({ minimum: 1, maximum: 1000 }), momentum: num({ minimum: 0, maximum: 1, exclusiveMaximum: 1 }), lossWeight: nonNeg };

/** JSON Schema (draft-07) of the training configuration. */
export const TRAIN_CONFIG_SCHEMA = closed(
  {
    data: closed(
      {
        format: { enum: ['coco', 'csv'], default: 'coco' },
        train: { type: 'string', minLength: 1 },
        val: { type: 'string', minLength: 1 },
        classes: { type: 'string', minLength: 1 },
        images: { type: 'string', minLength: 1 },
        minSide: int({ minimum: 32, maximum: 8192, default: 608 }),
        maxSide: int({ minimum: 32, maximum: 8192, default: 1024 }),
        batchSize: int({ minimum: 1, maximum: 4096, default: 2 }),
        augment: { type: 'boolean', default: true },
        decoder: { enum: ['auto', 'sharp'], default: 'auto' },
        decodeWorkers: { anyOf: [{ const: 'auto' }, int({ minimum: 0, maximum: 64 })], default: 'auto' },
        decodeConcurrency: { anyOf: [{ const: 'auto' }, int({ minimum: 1, maximum: 4096 })], default: 'auto' },
        prefetch: int({ minimum: 0, maximum: 64, default: 2 }),
      },
      { required: ['train'] },
    ),
    model: closed(
      {
        head: { enum: ['retinanet', 'nanodet-plus'], default: 'retinanet' },
        depth: { enum: [18, 34, 50, 101, 152] },
        featureSize: int({ minimum: 1, maximum: 4096 }),
        freezeBn: { type: 'boolean' },
        nanodet: closed({
          preset: { enum: ['m-320', 'm-416', 'm-1.5x-320', 'm-1.5x-416'] },
          backbone: { type: 'string', pattern: '^(resnet|shufflenetv2-(0\\.5x|1\\.0x|1\\.5x|2\\.0x))$' },
          neck: { enum: ['fpn', 'ghost-pan'] },
          neckKernelSize: int({ minimum: 1, maximum: 15 }),
          strides: { anyOf: [{ const: [8, 16, 32] }, { const: [8, 16, 32, 64] }, { const: [8, 16, 32, 64, 128] }] },
          head: closed({ channels: int({ minimum: 1, maximum: 4096 }), stackedConvs: int({ minimum: 0, maximum: 16 }), kernelSize: int({ minimum: 1, maximum: 15 }), convType: { enum: ['depthwise', 'conv'] } }),
          regMax: int({ minimum: 1, maximum: 64 }),
          aux: { anyOf: [{ type: 'boolean' }, closed({ channels: int({ minimum: 1, maximum: 4096 }), stackedConvs: int({ minimum: 0, maximum: 16 }), groups: int({ minimum: 1, maximum: 4096 }) })] },
        }),
        anchors: closed({ levels: { type: 'array', items: int() }, strides: { type: 'array', items: num({ exclusiveMinimum: 0 }) }, sizes: { type: 'array', items: num({ exclusiveMinimum: 0 }) }, ratios: { type: 'array', items: num({ exclusiveMinimum: 0 }) }, scales: { type: 'array', items: num({ exclusiveMinimum: 0 }) } }),
        boxCoder,
        weights: { type: 'string', minLength: 1 },
        backbone: { type: 'string', minLength: 1 },
        variant: { enum: ['pytorch-retinanet', 'torchvision', 'torchvision-v2'] },
        finetune: { type: 'boolean' },
        trainableBackboneLayers: int({ minimum: 0, maximum: 5 }),
      },
      { default: {} },
    ),
    loss: closed(
      {
        classification: { enum: ['focal', 'ghmc'] },
        regression: { enum: ['smoothL1', 'l1', 'giou', 'ghmr', 'none'] },
        clsWeight: nonNeg,
        regWeight: nonNeg,
        focal: closed({ variant: { enum: ['retinanet', 'logits'] }, alpha: num(), gamma: nonNeg, probabilities: { type: 'boolean' }, normalize: { enum: ['image', 'batch'] }, regression: { enum: ['smoothL1', 'l1', 'giou', 'none'] }, beta: nonNeg, boxCoder, assigner }),
        ghmc: closed(ghm),
        ghmr: closed({ ...ghm, mu: num({ exclusiveMinimum: 0 }) }),
        ghmPerLevel: { type: 'boolean' },
        ghmAcrossRanks: { type: 'boolean' },
        contrastive: closed({
          weight: nonNeg,
          temperature: num({ exclusiveMinimum: 0 }),
          levels: { enum: ['all', 'assigned'] },
          negatives: { enum: ['other-class', 'all-other', 'same-region-other-images'] },
          pooling: { enum: ['average', 'flatten'] },
          outputSize: int({ minimum: 1, maximum: 64 }),
          samplingRatio: int({ minimum: 1, maximum: 16 }),
          backgroundGrid: int({ minimum: 1, maximum: 64 }),
          projection: closed({ hidden: int({ minimum: 1, maximum: 65536 }), out: int({ minimum: 1, maximum: 65536 }) }, { required: ['hidden'] }),
          detectOnViews: { type: 'boolean' },
        }),
        // NanoDet-Plus (model.head 'nanodet-plus')
        qflBeta: nonNeg,
        qflWeight: nonNeg,
        giouWeight: nonNeg,
        dflWeight: nonNeg,
        detachEpoch: int({ minimum: 0 }),
        assignBy: { enum: ['aux', 'aux-until-detach'] },
        assigner: closed({ topk: int({ minimum: 1, maximum: 1000 }), iouFactor: nonNeg, softCenterPrior: { type: 'boolean' }, softCenterRadius: num(), ignoreIof: num({ minimum: 0, maximum: 1 }), maxPairs: int({ minimum: 1 }) }),
      },
      { default: {} },
    ),
    optimizer: closed(
      { type: { enum: ['sgd', 'adamw'] }, lr: num({ exclusiveMinimum: 0 }), momentum: nonNeg, weightDecay: nonNeg, nesterov: { type: 'boolean' }, beta1: num({ minimum: 0, exclusiveMaximum: 1 }), beta2: num({ minimum: 0, exclusiveMaximum: 1 }), eps: num({ exclusiveMinimum: 0 }), clipGradNorm: nonNeg, backboneLrMultiplier: nonNeg },
      { default: {} },
    ),
    schedule: closed(
      {
        warmupSteps: int({ minimum: 0 }),
        warmupFactor: num({ minimum: 0, maximum: 1 }),
        type: { enum: ['constant', 'step', 'cosine', 'plateau'] },
        milestones: { type: 'array', items: int({ minimum: 0 }) },
        gamma: nonNeg,
        monitor: { enum: ['AP', 'AP50', 'loss'] },
        factor: num({ exclusiveMinimum: 0, maximum: 1 }),
        patience: int({ minimum: 0 }),
        threshold: nonNeg,
        minLr: nonNeg,
      },
      { default: {} },
    ),
    epochs: int({ minimum: 1, maximum: 1e6, default: 12 }),
    device: { enum: ['auto', 'cpu', 'cuda'], default: 'auto' },
    amp: { type: 'boolean', default: false },
    cudaGraph: { anyOf: [{ type: 'boolean' }, { const: 'auto' }], default: 'auto' },
    ema: { anyOf: [{ type: 'boolean' }, closed({ decay: prob, tau: num({ exclusiveMinimum: 0 }) })], default: false },
    replicas: { anyOf: [{ const: 'auto' }, int({ minimum: 1, maximum: 256 })], default: 'auto' },
    distributed: closed(
      {
        backend: { enum: ['auto', 'gloo', 'nccl'], default: 'auto' },
        timeoutSeconds: num({ exclusiveMinimum: 0, default: 300 }),
        bucketMiB: num({ minimum: 1 / 1024, maximum: 1024, default: 25 }),
      },
      { default: {} },
    ),
    seed: int({ minimum: 0, default: 0 }),
    out: { type: 'string', minLength: 1, default: 'runs/train' },
    evalEvery: int({ minimum: 1, default: 1 }),
    checkpointEvery: int({ minimum: 1 }),
    keep: int({ minimum: 1, default: 2 }),
    progress: { enum: ['auto', 'bar', 'lines', 'none'], default: 'auto' },
    voc: { type: 'boolean', default: false },
  },
  { required: ['data'] },
);

function describe(e: ErrorObject, root: string): string {
  const where = root + e.instancePath.replace(/\//g, '.');
  switch (e.keyword) {
    case 'additionalProperties':
      return `${where} has an unknown field '${(e.params as { additionalProperty: string }).additionalProperty}'`;
    case 'required':
      return `${where}.${(e.params as { missingProperty: string }).missingProperty} is required`;
    case 'enum':
      return `${where} must be one of ${((e.params as { allowedValues: unknown[] }).allowedValues).map((v) => JSON.stringify(v)).join(', ')} (received ${JSON.stringify(e.data)})`;
    default:
      return `${where} ${e.message ?? 'is invalid'} (received ${JSON.stringify(e.data)})`;
  }
}

let validator: ReturnType<Ajv['compile']> | undefined;

/**
 * Validates a configuration object, fills in defaults (in a copy), and applies cross-field rules.
 * Throws an Error listing every problem, each naming its field.
 */
export function parseTrainConfig(value: unknown, root = 'config'): TrainConfig {
  validator ??= new Ajv({ allErrors: true, useDefaults: true, verbose: true, strict: false }).compile(TRAIN_CONFIG_SCHEMA);
  const copy = JSON.parse(JSON.stringify(value ?? null)) as unknown;
  if (copy === null || typeof copy !== 'object' || Array.isArray(copy)) throw new TypeError(`${root} must be a JSON object`);
  const problems: string[] = [];
  if (!validator(copy)) {
    // anyOf reports each branch; keep the most specific messages
    const errors = (validator.errors ?? []).filter((e) => e.keyword !== 'anyOf');
    problems.push(...[...new Set(errors.map((e) => describe(e, root)))]);
  } else {
    const c = copy as TrainConfig;
    if (c.data.format === 'csv' && !c.data.classes) problems.push(`${root}.data.classes is required with format 'csv'`);
    if (c.data.format === 'coco' && c.data.classes) problems.push(`${root}.data.classes is only for format 'csv'`);
    if (c.data.minSide > c.data.maxSide) problems.push(`${root}.data.minSide (${c.data.minSide}) must not exceed ${root}.data.maxSide (${c.data.maxSide})`);
    if (c.model.weights && c.model.backbone) problems.push(`${root}.model.weights and ${root}.model.backbone exclude each other`);
    const nanodet = c.model.head === 'nanodet-plus';
    c.model.depth ??= nanodet ? 18 : 50;
    const preset = c.model.nanodet?.preset;
    c.model.featureSize ??= nanodet ? (preset ? NANODET_PLUS_PRESETS[preset].featureSize! : 96) : 256;
    c.model.freezeBn ??= !nanodet;
    const retinaLossKeys = ['classification', 'regression', 'clsWeight', 'regWeight', 'focal', 'ghmc', 'ghmr', 'ghmPerLevel', 'ghmAcrossRanks', 'contrastive'];
    const nanodetLossKeys = ['qflBeta', 'qflWeight', 'giouWeight', 'dflWeight', 'detachEpoch', 'assignBy', 'assigner'];
    for (const k of Object.keys(c.loss))
      if ((nanodet ? retinaLossKeys : nanodetLossKeys).includes(k)) problems.push(`${root}.loss.${k} is ${nanodet ? 'a RetinaNet' : 'a NanoDet-Plus'} loss option; ${root}.model.head is '${c.model.head}'`);
    if (nanodet && (c.model.variant || c.model.trainableBackboneLayers !== undefined)) problems.push(`${root}.model.variant and trainableBackboneLayers are RetinaNet options; ${root}.model.head is 'nanodet-plus'`);
    if (c.model.finetune && !c.model.weights) problems.push(`${root}.model.finetune needs ${root}.model.weights`);
    if (!nanodet && c.model.nanodet) problems.push(`${root}.model.nanodet needs ${root}.model.head 'nanodet-plus'`);
    if (nanodet && (c.model.anchors || c.model.boxCoder)) problems.push(`${root}.model.anchors and boxCoder are RetinaNet options; NanoDet-Plus uses centre priors`);
    if (c.schedule.type === 'plateau' && c.schedule.monitor && c.schedule.monitor !== 'loss' && !c.data.val) problems.push(`${root}.schedule.monitor '${c.schedule.monitor}' needs ${root}.data.val`);
  }
  if (problems.length > 0) throw new Error(`invalid configuration:\n  ${problems.join('\n  ')}`);
  return copy as TrainConfig;
}

/** Reads and validates a JSON configuration file. */
export function readTrainConfig(file: string): TrainConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`${file}: cannot read the configuration (${(err as Error).message})`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: malformed JSON (${(err as Error).message})`);
  }
  try {
    return parseTrainConfig(value);
  } catch (err) {
    throw new Error(`${file}: ${(err as Error).message}`);
  }
}
