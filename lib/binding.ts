/**
 * The one typed seam between TypeScript and the native addon: exactly what
 * `native/binding` exports. Public classes wrap these functions; nothing else loads the addon.
 * @internal
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** Opaque handle to a native tensor (a tagged object; only the addon can make one). */
export interface NativeTensor {
  readonly __nativeTensor: unique symbol;
}

export interface NativeBuildInfo {
  version: string;
  torchVersion: string;
  cudaCompiled: boolean;
  cudaAvailable: boolean;
  deviceCount: number;
  /** libjpeg-turbo version of the JPEG decoder ('' when built without it). */
  jpegDecoder: string;
}

/** What decodeJpegAsync did: decoded into the buffer, or declined (with the reason) for sharp to decode. */
export interface NativeJpegOutcome {
  decoded: boolean;
  reason: string;
  /** Declined for what the file is (not a JPEG, CMYK, an ICC profile): any request for it would be. */
  lasting: boolean;
  width: number;
  height: number;
  /** The DCT scaling libjpeg decoded at (1, 2, 4, 8). */
  shrink: number;
}

/** Counters of onestage's CPU caching allocator (bytes, and request counts). */
export interface CpuMemory {
  /** Whether the caching allocator is LibTorch's CPU allocator in this process. */
  enabled: boolean;
  /** Bytes of live tensor blocks of 64 KiB and more (block sizes: tensors' bytes rounded up to 4 KiB). */
  allocated: number;
  /** The most `allocated` has been (since the last `resetPeak`). */
  peak: number;
  /** Bytes of freed blocks kept for reuse. */
  cached: number;
  /** The most bytes kept for reuse (`ONESTAGE_CPU_CACHE_MB`). */
  cacheLimit: number;
  /** Requests served from the cache and from the system allocator. */
  hits: number;
  misses: number;
}

export type NativeTypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

export interface NativeBinding {
  buildInfo(): NativeBuildInfo;
  setNumThreads(threads: number): void;
  getNumThreads(): number;
  manualSeed(seed: number): void;
  setTf32(enabled: boolean): void;
  synchronize(): void;
  setCudnnBenchmark(enabled: boolean): void;
  profilerAvailable(): boolean;
  profilerStart(): void;
  profilerStop(path: string): void;
  cudaMemory(device: number, resetPeak: boolean): { allocated: number; peak: number; reserved: number };
  cpuCacheInstall(limitBytes: number): void;
  cpuMemory(resetPeak: boolean): CpuMemory;
  emptyCpuCache(): void;

  tensorFromArray(data: NativeTypedArray, shape: number[], dtype: string, device: string): NativeTensor;
  tensorShape(t: NativeTensor): number[];
  tensorDtype(t: NativeTensor): string;
  tensorDevice(t: NativeTensor): string;
  tensorMemoryFormat(t: NativeTensor): string;
  tensorToArray(t: NativeTensor): NativeTypedArray;
  tensorTo(t: NativeTensor, device: string): NativeTensor;
  tensorDispose(t: NativeTensor): boolean;
  tensorIsDisposed(t: NativeTensor): boolean;
  liveTensors(): number;
  tensorMatmul(a: NativeTensor, b: NativeTensor): NativeTensor;
  tensorMatmulAsync(a: NativeTensor, b: NativeTensor): Promise<NativeTensor>;
  tensorUnary(t: NativeTensor, op: string): NativeTensor;
  tensorBinary(a: NativeTensor, b: NativeTensor, op: string): NativeTensor;
  tensorSoftmax(t: NativeTensor, op: string, dim: number): NativeTensor;
  tensorSum(t: NativeTensor, dims: number[]): NativeTensor;
  tensorSetRequiresGrad(t: NativeTensor, on: boolean): void;
  tensorRequiresGrad(t: NativeTensor): boolean;
  tensorGrad(t: NativeTensor): NativeTensor | null;
  tensorClearGrad(t: NativeTensor): void;
  tensorBackwardAsync(t: NativeTensor): Promise<void>;

  modelCreateRetinaNet(options: object): NativeModel;
  modelCreateNanoDetPlus(options: object): NativeModel;
  modelDispose(m: NativeModel): boolean;
  modelInfo(m: NativeModel): NativeModelInfo;
  modelSetTraining(m: NativeModel, training: boolean): void;
  modelTo(m: NativeModel, device: string): void;
  modelSetChannelsLast(m: NativeModel, on: boolean): void;
  modelForwardAsync(m: NativeModel, images: NativeTensor, options: { amp: boolean }): Promise<Record<string, NativeTensor>>;
  modelDetectAsync(m: NativeModel, images: NativeTensor, scales: NativeTensor, sizes: NativeTensor, options: object): Promise<NativeDetection[]>;
  modelLoadTorchAsync(m: NativeModel, path: string, options: object): Promise<NativeLoadReport>;
  modelLoadSafetensorsAsync(m: NativeModel, path: string, dataStart: number, entries: NativeSafetensorsEntry[], options: object): Promise<NativeLoadReport>;
  modelSaveSafetensorsAsync(m: NativeModel, path: string, metadata: Record<string, string>): Promise<void>;
  modelStateDict(m: NativeModel): Record<string, NativeTensor>;
  torchFileEntries(path: string): Array<{ name: string; shape: number[] }>;

  generateAnchors(options: object, height: number, width: number): NativeTensor;
  boxEncode(anchors: NativeTensor, boxes: NativeTensor, options: object): NativeTensor;
  boxDecode(anchors: NativeTensor, deltas: NativeTensor, options: object): NativeTensor;
  boxIou(a: NativeTensor, b: NativeTensor): NativeTensor;
  contrastiveLossAsync(features1: NativeTensor[], features2: NativeTensor[], annotations: NativeTensor, inputHeight: number, inputWidth: number, options: object): Promise<{ loss: NativeTensor; counts: NativeTensor }>;
  roiAlign(features: NativeTensor, rois: NativeTensor, options: object): NativeTensor;
  /** Internal (tests): the ResNet stem's max pooling, its output and input gradient by onestage's kernels or LibTorch's. */
  maxPool2dWithGradient(
    input: NativeTensor,
    gradOutput: NativeTensor,
    options: { kernel?: number; stride?: number; padding?: number; channelsLast?: boolean; aten?: boolean; type?: 'float32' | 'bfloat16' | 'float16' },
  ): { output: NativeTensor; gradInput: NativeTensor; implementation: 'onestage' | 'aten' };
  /** Internal (tests): the fused frozen-BatchNorm kernels (CUDA) or their ATen replicas (CPU), forward and backward; params [4, C] = weight, bias, mean, var. */
  frozenBatchNormWithGradient(
    input: NativeTensor,
    residual: NativeTensor | null,
    gradOutput: NativeTensor,
    gradOutput2: NativeTensor | null,
    params: NativeTensor,
    options: { eps?: number; relu?: boolean; maskFromOutput?: boolean; sumFirst?: boolean; type?: 'float32' | 'bfloat16' | 'float16' },
  ): { output: NativeTensor; gradInput: NativeTensor; gradResidual: NativeTensor | null; gradWeight: NativeTensor; gradBias: NativeTensor; implementation: 'kernels' | 'emulation' };
  clipBoxes(boxes: NativeTensor, height: number, width: number): NativeTensor;
  nms(boxes: NativeTensor, scores: NativeTensor, iouThreshold: number): NativeTensor;
  batchedNms(boxes: NativeTensor, scores: NativeTensor, groups: NativeTensor, iouThreshold: number): NativeTensor;
  centrePriors(strides: number[], height: number, width: number, device: string): NativeTensor;
  distanceToBox(points: NativeTensor, distances: NativeTensor, height: number, width: number): NativeTensor;
  boxToDistance(points: NativeTensor, boxes: NativeTensor): NativeTensor;
  integralDistances(reg: NativeTensor, regMax: number): NativeTensor;

  assignMaxIouAsync(anchors: NativeTensor, annotations: NativeTensor, options: object): Promise<Record<string, NativeTensor>>;
  focalLossAsync(cls: NativeTensor, reg: NativeTensor, anchors: NativeTensor, annotations: NativeTensor, options: object): Promise<Record<string, NativeTensor>>;
  sigmoidFocalLossAsync(logits: NativeTensor, targets: NativeTensor, options: object): Promise<NativeTensor>;
  qualityFocalLossAsync(pred: NativeTensor, label: NativeTensor, score: NativeTensor, options: object): Promise<NativeTensor>;
  distributionFocalLossAsync(pred: NativeTensor, label: NativeTensor): Promise<NativeTensor>;
  giouLossAsync(pred: NativeTensor, target: NativeTensor, options: object): Promise<NativeTensor>;
  assignDslAsync(logits: NativeTensor, priors: NativeTensor, decoded: NativeTensor, annotations: NativeTensor, options: object): Promise<Record<string, NativeTensor>>;
  nanodetLossAsync(preds: NativeTensor, auxPreds: NativeTensor | null, priors: NativeTensor, annotations: NativeTensor, options: object): Promise<Record<string, NativeTensor>>;
  ghmCreate(kind: 'ghmc' | 'ghmr', options: object): NativeLoss;
  ghmForwardAsync(loss: NativeLoss, pred: NativeTensor, target: NativeTensor, labelWeight: NativeTensor): Promise<NativeTensor>;
  ghmAccSum(loss: NativeLoss): NativeTensor | null;
  ghmSetAccSum(loss: NativeLoss, accSum: NativeTensor): void;
  ghmDispose(loss: NativeLoss): void;
  retinaLossCreate(options: object): NativeLoss;
  retinaLossForwardAsync(loss: NativeLoss, cls: NativeTensor, reg: NativeTensor, anchors: NativeTensor, annotations: NativeTensor, levelSizes: number[]): Promise<Record<string, NativeTensor>>;
  retinaLossState(loss: NativeLoss): { ghmc: Array<NativeTensor | null>; ghmr: Array<NativeTensor | null> };
  retinaLossDispose(loss: NativeLoss): void;

  /** normalise: 'host' (floats made on the CPU) or 'device' (uint8 uploaded, normalised there); default 'device' for CUDA, 'host' for the CPU. Either gives the same floats. */
  collateImagesAsync(images: Uint8Array[], sizes: number[], height: number, width: number, mean: number[], std: number[], device: string, normalise?: 'host' | 'device'): Promise<NativeTensor>;
  /** A CPU tensor copied to `device` off the JavaScript thread (CUDA: through page-locked memory on a copy stream of its own). */
  uploadAsync(tensor: NativeTensor, device: string): Promise<NativeTensor>;
  contrastiveViewsAsync(images: NativeTensor, annotations: NativeTensor, factors: NativeTensor): Promise<NativeTensor>;
  decodeJpegAsync(file: string, out: Uint8Array, width: number, height: number, flip: boolean, extract: number[] | null, maxPixels: number): Promise<NativeJpegOutcome>;
  jpegHeaderAsync(file: string): Promise<{ read: boolean; reason: string; lasting: boolean; width: number; height: number }>;

  trainerCreate(model: NativeModel, optimizer: object, loss: object, training: object, group?: NativeProcessGroup | null): NativeSession;
  trainerStepAsync(session: NativeSession, images: NativeTensor, annotations: NativeTensor, lr: number, views?: NativeTensor | null, epoch?: number): Promise<NativeStepResult>;
  trainerSaveStateAsync(session: NativeSession, path: string): Promise<void>;
  trainerLoadStateAsync(session: NativeSession, path: string): Promise<void>;
  /** Swaps model weights and EMA weights; false when the session keeps no EMA. */
  trainerSwapEma(session: NativeSession): boolean;
  trainerDispose(session: NativeSession): void;

  distBackends(): string[];
  distInitAsync(options: { backend: string; masterAddr: string; masterPort: number; rank: number; worldSize: number; timeoutMs?: number; agentStore?: boolean; interface?: string; deviceIndex?: number }): Promise<NativeProcessGroup>;
  distInfo(group: NativeProcessGroup): { rank: number; worldSize: number; backend: string; device: string; timeoutMs: number };
  distMeanAsync(group: NativeProcessGroup, tensor: NativeTensor): Promise<NativeTensor>;
  /** Every rank's values (one length on every rank), concatenated in rank order. */
  distAllGatherAsync(group: NativeProcessGroup, values: number[]): Promise<number[]>;
  distBarrierAsync(group: NativeProcessGroup, what: string): Promise<void>;
  distStoreSetAsync(group: NativeProcessGroup, key: string, value: Uint8Array): Promise<void>;
  distStoreGetAsync(group: NativeProcessGroup, key: string): Promise<Buffer>;
  distStoreDeleteAsync(group: NativeProcessGroup, key: string): Promise<boolean>;
  distDispose(group: NativeProcessGroup): void;
}

/** Opaque handle to a native c10d process group. */
export interface NativeProcessGroup {
  readonly __nativeProcessGroup: unique symbol;
}

/** Opaque handle to a native model. */
export interface NativeModel {
  readonly __nativeModel: unique symbol;
}

export interface NativeModelInfo {
  architecture: 'retinanet' | 'nanodet-plus';
  depth: number;
  numClasses: number;
  /** FPN channels. */
  featureSize: number;
  /** RetinaNet only. */
  anchorsPerLocation?: number;
  /** NanoDet-Plus only: distribution bins − 1. */
  regMax?: number;
  /** NanoDet-Plus only: whether the model has the AGM (aux_fpn, aux_head). */
  aux?: boolean;
  freezeBn: boolean;
  freezeBnAffine: boolean;
  device: string;
  training: boolean;
  /** Convolution weights in channels-last memory order (`model.channelsLast()`). */
  channelsLast: boolean;
  parameters: number;
  trainableParameters: number;
}

export interface NativeLoadReport {
  loaded: number;
  missing: string[];
  unexpected: string[];
  mismatched: string[];
  /** The classification output layer of another class count, re-initialised (loadWeights with finetune). */
  reinitialized: string[];
}

export interface NativeDetection {
  boxes: Float32Array;
  scores: Float32Array;
  labels: Int32Array;
}

export interface NativeSafetensorsEntry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

/** Opaque handle to a native stateful loss (GHM, RetinaNet loss). */
export interface NativeLoss {
  readonly __nativeLoss: unique symbol;
}

/** Opaque handle to a native training session (model + loss + optimizer). */
export interface NativeSession {
  readonly __nativeSession: unique symbol;
}

export interface NativeStepResult {
  cls: number;
  reg: number;
  /** The weighted contrastive term (0 without it). */
  contrastive: number;
  total: number;
  gradNorm: number;
  skipped: boolean;
  reason: string;
  /** How the step ran: 'off' (no CUDA graphs), 'eager' (graphs on, this shape not captured yet or the cache full), 'captured' (recorded and replayed), 'replayed'. */
  graph: 'off' | 'eager' | 'captured' | 'replayed';
  /** Only at the step where cudaGraph 'auto' gave up on graphs (a capture failed): why. */
  graphWarning?: string;
  /**
   * The update was queued on the device before the losses were read, and skipped there if they were not
   * finite (SGD with the fused kernel: CUDA, LibTorch ≥ 2.4, one process, no EMA, one learning rate):
   * the next step is queued while this one's losses travel to the host. false: read first, then updated.
   */
  updateQueued: boolean;
  /** The architecture's own terms by name (NanoDet-Plus: qfl, bbox, dfl, auxQfl, auxBbox, auxDfl; RetinaNet: none). */
  components: Record<string, number>;
}

/** Folder of the package (holds package.json and build/). */
export const packageRoot = path.resolve(__dirname, '..');

function loadBinding(): NativeBinding {
  const candidates = [
    process.env.ONESTAGE_ADDON,
    path.join(packageRoot, 'build', 'Release', 'onestage.node'),
    path.join(packageRoot, 'build', 'Debug', 'onestage.node'),
  ].filter((p): p is string => typeof p === 'string' && p.length > 0);
  const found = candidates.find((p) => fs.existsSync(p));
  if (found === undefined) {
    throw new Error(
      `onestage: the native addon is not built (looked for ${candidates.join(', ')}). ` +
        'Run `bash scripts/setup.sh` (Debian/Ubuntu) or `npm run build:native` with LibTorch installed.',
    );
  }
  // OpenBLAS (LibTorch's CPU BLAS on Debian) registers a fork handler that joins its worker threads;
  // a fork (any child_process call) while a native call is inside a GEMM then deadlocks the process.
  // LibTorch's own intra-op threads do the parallel work, so OpenBLAS runs single-threaded unless the
  // user asks otherwise. Must be set before the library loads.
  process.env.OPENBLAS_NUM_THREADS ??= '1';
  const cacheLimit = cpuCacheLimit();
  let binding: NativeBinding;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    binding = require(found) as NativeBinding;
  } catch (err) {
    throw new Error(`onestage: the native addon ${found} could not be loaded: ${(err as Error).message}`);
  }
  if (cacheLimit > 0) binding.cpuCacheInstall(cacheLimit);
  return binding;
}

/**
 * Bytes of freed CPU tensor memory the caching allocator may keep for reuse: `ONESTAGE_CPU_CACHE_MB`
 * (MiB; 0 leaves LibTorch's own allocator in place), else an eighth of physical memory, at most 8 GiB.
 */
function cpuCacheLimit(): number {
  const env = process.env.ONESTAGE_CPU_CACHE_MB;
  if (env === undefined || env.trim() === '') return Math.min(Math.floor(os.totalmem() / 8), 8 * 2 ** 30);
  if (!/^\s*\d+\s*$/.test(env) || !Number.isSafeInteger(Number(env) * 2 ** 20))
    throw new Error(`onestage: ONESTAGE_CPU_CACHE_MB must be a whole number of MiB (0 turns the CPU cache off) but is '${env}'`);
  return Number(env) * 2 ** 20;
}

let cached: NativeBinding | undefined;

/** The native addon, loaded on first use. */
export function native(): NativeBinding {
  cached ??= loadBinding();
  return cached;
}
