/**
 * Calls every native export with wrong arguments: each call must throw (or reject with) a
 * JavaScript Error with a plain message. A C++ exception escaping, or an abort, fails the file.
 * A new export must be added to VALID below, so nothing escapes the fuzz.
 */
import test from 'ava';
import * as os from 'node:os';
import * as path from 'node:path';
import { native, NativeBinding, NativeProcessGroup } from '../lib/binding';
import { freePort } from '../lib/jobs/launch';
import { Rng } from './helpers/random';
import { tempDir } from './helpers/python';

// random argument lists may reach functions that write files: keep them out of the repository
process.chdir(tempDir('onestage-fuzz-'));

type Args = unknown[];

/** One valid argument list per export: bad values are substituted into it position by position. */
function validArgs(group: NativeProcessGroup | null = null, port = 1): Record<keyof NativeBinding, Args> {
  const b = native();
  const t = b.tensorFromArray(new Float32Array(4), [2, 2], 'float32', 'cpu');
  const boxes = b.tensorFromArray(new Float32Array([0, 0, 4, 4, 1, 1, 5, 5]), [2, 4], 'float32', 'cpu');
  const scores = b.tensorFromArray(new Float32Array([0.9, 0.8]), [2], 'float32', 'cpu');
  const groups = b.tensorFromArray(new BigInt64Array([0n, 1n]), [2], 'int64', 'cpu');
  const model = b.modelCreateRetinaNet({ depth: 18, numClasses: 2, featureSize: 8 });
  const images = b.tensorFromArray(new Float32Array(3 * 32 * 32), [1, 3, 32, 32], 'float32', 'cpu');
  const scales = b.tensorFromArray(new Float32Array([1]), [1], 'float32', 'cpu');
  const sizes = b.tensorFromArray(new Float32Array([32, 32]), [1, 2], 'float32', 'cpu');
  const anchors2 = b.tensorFromArray(new Float32Array([0, 0, 8, 8, 4, 4, 12, 12]), [2, 4], 'float32', 'cpu');
  const annotations = b.tensorFromArray(new Float32Array([0, 0, 8, 8, 1]), [1, 1, 5], 'float32', 'cpu');
  const cls = b.tensorFromArray(new Float32Array(6), [1, 2, 3], 'float32', 'cpu');
  const reg = b.tensorFromArray(new Float32Array(8), [1, 2, 4], 'float32', 'cpu');
  const pred = b.tensorFromArray(new Float32Array(6), [2, 3], 'float32', 'cpu');
  const ones = b.tensorFromArray(new Float32Array(6).fill(1), [2, 3], 'float32', 'cpu');
  const ghm = b.ghmCreate('ghmc', { momentum: 0.5 });
  const retinaLoss = b.retinaLossCreate({});
  const leaf = b.tensorFromArray(new Float32Array([1, 2]), [2], 'float32', 'cpu');
  b.tensorSetRequiresGrad(leaf, true);
  const scalarLoss = b.tensorSum(leaf, []);
  const session = b.trainerCreate(model, {}, {}, {});
  const points = b.tensorFromArray(new Float32Array([4, 4, 12, 4]), [2, 2], 'float32', 'cpu');
  const priors2 = b.tensorFromArray(new Float32Array([4, 4, 8, 8, 12, 4, 8, 8]), [2, 4], 'float32', 'cpu');
  const labels2 = b.tensorFromArray(new BigInt64Array([0n, 3n]), [2], 'int64', 'cpu');
  const preds = b.tensorFromArray(new Float32Array(2 * 35), [1, 2, 35], 'float32', 'cpu');
  return {
    buildInfo: [],
    liveTensors: [],
    setNumThreads: [2],
    getNumThreads: [],
    manualSeed: [7],
    setTf32: [false],
    synchronize: [],
    setCudnnBenchmark: [false],
    profilerAvailable: [],
    cudaMemory: [0, false],
    cpuCacheInstall: [2 ** 30],
    cpuMemory: [false],
    emptyCpuCache: [],
    profilerStart: [],
    profilerStop: [path.join(os.tmpdir(), `onestage-fuzz-${process.pid}.json`)],
    tensorFromArray: [new Float32Array(4), [2, 2], 'float32', 'cpu'],
    tensorShape: [t],
    tensorDtype: [t],
    tensorDevice: [t],
    tensorMemoryFormat: [t],
    tensorToArray: [t],
    tensorTo: [t, 'cpu'],
    tensorDispose: [b.tensorFromArray(new Float32Array(1), [1], 'float32', 'cpu')],
    tensorIsDisposed: [t],
    tensorMatmul: [t, t],
    tensorMatmulAsync: [t, t],
    tensorUnary: [t, 'sigmoid'],
    tensorBinary: [t, t, 'add'],
    tensorSoftmax: [t, 'softmax', -1],
    tensorSum: [t, [0]],
    modelCreateRetinaNet: [{ depth: 18, numClasses: 2, featureSize: 8 }],
    modelCreateNanoDetPlus: [{ depth: 18, numClasses: 2, featureSize: 8, head: { channels: 8 }, aux: { channels: 8, groups: 4 } }],
    modelDispose: [b.modelCreateRetinaNet({ depth: 18, numClasses: 1, featureSize: 4 })],
    modelInfo: [model],
    modelSetTraining: [model, false],
    modelTo: [model, 'cpu'],
    modelSetChannelsLast: [model, false],
    modelForwardAsync: [model, images, {}],
    modelDetectAsync: [model, images, scales, sizes, {}],
    modelLoadTorchAsync: [model, 'no-such-file.pt', {}],
    modelLoadSafetensorsAsync: [model, 'no-such-file.safetensors', 8, [], {}],
    modelSaveSafetensorsAsync: [model, 'fuzz.safetensors', {}],
    modelStateDict: [model],
    torchFileEntries: ['/nonexistent.pt'],
    generateAnchors: [{}, 64, 64],
    boxEncode: [boxes, boxes, {}],
    boxDecode: [boxes, boxes, {}],
    boxIou: [boxes, boxes],
    contrastiveLossAsync: [[b.tensorFromArray(new Float32Array(2 * 3 * 8 * 8), [2, 3, 8, 8], 'float32', 'cpu')], [b.tensorFromArray(new Float32Array(2 * 3 * 8 * 8), [2, 3, 8, 8], 'float32', 'cpu')], b.tensorFromArray(new Float32Array([1, 1, 20, 20, 0, 2, 2, 30, 30, 1]), [2, 1, 5], 'float32', 'cpu'), 64, 64, {}],
    roiAlign: [b.tensorFromArray(new Float32Array(2 * 3 * 8 * 8), [2, 3, 8, 8], 'float32', 'cpu'), b.tensorFromArray(new Float32Array([0, 1, 1, 5, 6, 1, 0, 0, 8, 8]), [2, 5], 'float32', 'cpu'), {}],
    clipBoxes: [boxes, 10, 10],
    nms: [boxes, scores, 0.5],
    batchedNms: [boxes, scores, groups, 0.5],
    centrePriors: [[8, 16, 32], 64, 64, 'cpu'],
    maxPool2dWithGradient: [b.tensorFromArray(new Float32Array(2 * 8 * 6 * 6), [2, 8, 6, 6], 'float32', 'cpu'), b.tensorFromArray(new Float32Array(2 * 8 * 3 * 3), [2, 8, 3, 3], 'float32', 'cpu'), {}],
    frozenBatchNormWithGradient: [b.tensorFromArray(new Float32Array(2 * 8 * 3 * 3), [2, 8, 3, 3], 'float32', 'cpu'), null, b.tensorFromArray(new Float32Array(2 * 8 * 3 * 3), [2, 8, 3, 3], 'float32', 'cpu'), null, b.tensorFromArray(new Float32Array(32).fill(1), [4, 8], 'float32', 'cpu'), {}],
    distanceToBox: [points, boxes, 0, 0],
    boxToDistance: [points, boxes],
    integralDistances: [b.tensorFromArray(new Float32Array(64), [2, 32], 'float32', 'cpu'), 7],
    qualityFocalLossAsync: [pred, labels2, scores, {}],
    distributionFocalLossAsync: [b.tensorFromArray(new Float32Array(16), [2, 8], 'float32', 'cpu'), b.tensorFromArray(new Float32Array([0.5, 3.2]), [2], 'float32', 'cpu')],
    giouLossAsync: [boxes, boxes, {}],
    assignDslAsync: [cls, priors2, reg, annotations, {}],
    nanodetLossAsync: [preds, preds, priors2, annotations, { numClasses: 3 }],
    tensorSetRequiresGrad: [t, true],
    tensorRequiresGrad: [t],
    tensorGrad: [t],
    tensorClearGrad: [leaf],
    tensorBackwardAsync: [scalarLoss],
    assignMaxIouAsync: [anchors2, annotations, {}],
    focalLossAsync: [cls, reg, anchors2, annotations, {}],
    sigmoidFocalLossAsync: [pred, ones, {}],
    ghmCreate: ['ghmr', {}],
    ghmForwardAsync: [ghm, pred, ones, ones],
    ghmAccSum: [ghm],
    ghmSetAccSum: [ghm, b.tensorFromArray(new Float64Array(10), [10], 'float64', 'cpu')],
    ghmDispose: [b.ghmCreate('ghmc', {})],
    retinaLossCreate: [{}],
    retinaLossForwardAsync: [retinaLoss, cls, reg, anchors2, annotations, []],
    retinaLossState: [retinaLoss],
    retinaLossDispose: [b.retinaLossCreate({})],
    collateImagesAsync: [[new Uint8Array(12)], [2, 2], 4, 4, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2], 'cpu'],
    uploadAsync: [t, 'cpu'],
    trainerCreate: [model, {}, {}, {}, group],
    trainerStepAsync: [session, images, annotations, 0.01],
    trainerSaveStateAsync: [session, 'fuzz-state.pt'],
    trainerLoadStateAsync: [session, 'no-such-state.pt'],
    trainerSwapEma: [session],
    trainerDispose: [b.trainerCreate(b.modelCreateRetinaNet({ depth: 18, numClasses: 1, featureSize: 4 }), {}, {}, {})],
    decodeJpegAsync: ['missing.jpg', new Uint8Array(48), 4, 4, false, null, 1e6],
    jpegHeaderAsync: ['missing.jpg'],
    contrastiveViewsAsync: [b.tensorFromArray(new Float32Array(3 * 8 * 8), [1, 3, 8, 8], 'float32', 'cpu'), annotations, b.tensorFromArray(new Float32Array([2]), [1], 'float32', 'cpu')],
    distBackends: [],
    distInitAsync: [{ backend: 'gloo', masterAddr: '127.0.0.1', masterPort: port, rank: 0, worldSize: 1, timeoutMs: 1000 }],
    distInfo: [group],
    distMeanAsync: [group, t],
    distBarrierAsync: [group, 'fuzz'],
    distAllGatherAsync: [group, [1, -2, 3]],
    distStoreSetAsync: [group, 'fuzz-key', new Uint8Array([1, 2])],
    distStoreGetAsync: [group, 'fuzz-key'],
    distStoreDeleteAsync: [group, 'fuzz-key'],
    distDispose: [group],
  };
}

/** Positions where null and undefined mean "none". */
const NULLABLE_POSITIONS: Partial<Record<keyof NativeBinding, number[]>> = {
  frozenBatchNormWithGradient: [1, 3],
  nanodetLossAsync: [1],
  trainerCreate: [4],
  decodeJpegAsync: [5],
};

/** Positions where any non-empty string is valid (store keys, labels). */
const TEXT_POSITIONS: Partial<Record<keyof NativeBinding, number[]>> = {
  distBarrierAsync: [1],
  distStoreSetAsync: [1],
  distStoreGetAsync: [1],
  distStoreDeleteAsync: [1],
  decodeJpegAsync: [0], // a file that is not there is declined, not an error
  jpegHeaderAsync: [0],
};

/** A world-size-1 Gloo group (a real one: its exports must accept it), when this build has Gloo. */
async function soloGroup(): Promise<NativeProcessGroup | null> {
  if (!native().distBackends().includes('gloo')) return null;
  return native().distInitAsync({ backend: 'gloo', masterAddr: '127.0.0.1', masterPort: await freePort(), rank: 0, worldSize: 1, timeoutMs: 1000 });
}

/** Positions that take an options object: undefined and any object are valid there. */
const OPTION_POSITIONS: Partial<Record<keyof NativeBinding, number[]>> = {
  modelForwardAsync: [2],
  modelDetectAsync: [4],
  modelLoadTorchAsync: [2],
  modelLoadSafetensorsAsync: [4],
  modelSaveSafetensorsAsync: [2],
  generateAnchors: [0],
  boxEncode: [2],
  boxDecode: [2],
  assignMaxIouAsync: [2],
  roiAlign: [2],
  maxPool2dWithGradient: [2],
  frozenBatchNormWithGradient: [5],
  contrastiveLossAsync: [5],
  focalLossAsync: [4],
  sigmoidFocalLossAsync: [2],
  qualityFocalLossAsync: [3],
  giouLossAsync: [2],
  assignDslAsync: [4],
  nanodetLossAsync: [4],
  ghmCreate: [1],
  retinaLossCreate: [0],
  trainerCreate: [1, 2, 3],
};

function validAsOptions(v: unknown): boolean {
  return v === undefined || (typeof v === 'object' && v !== null && !Array.isArray(v));
}

function badValues(): unknown[] {
  const b = native();
  const disposed = b.tensorFromArray(new Float32Array(1), [1], 'float32', 'cpu');
  b.tensorDispose(disposed);
  return [
    undefined,
    null,
    NaN,
    -1.5,
    1e300,
    'nonsense',
    '',
    {},
    { __nativeTensor: true },
    [NaN],
    ['x', 'y'],
    Symbol('s'),
    () => 1,
    2n ** 70n,
    new Int16Array(3),
    new ArrayBuffer(8),
    disposed, // keep last: the position test relies on it
  ];
}

async function expectError(t: import('ava').ExecutionContext, name: string, fn: (...a: unknown[]) => unknown, args: Args, mustThrow: boolean) {
  let error: unknown;
  try {
    const result = fn(...args);
    if (result instanceof Promise) await result;
  } catch (e) {
    error = e;
  }
  if (error === undefined) {
    if (mustThrow) t.fail(`${name}(${args.map(show).join(', ')}) did not throw`);
    return;
  }
  if (!(error instanceof Error)) return t.fail(`${name} threw a non-Error: ${String(error)}`);
  if (error.message.length === 0) t.fail(`${name} threw an Error without a message`);
  if (/Exception raised from|most recent call first|frame #/.test(error.message))
    t.fail(`${name}: error message carries a C++ backtrace: ${error.message.slice(0, 200)}`);
}

function show(v: unknown): string {
  if (typeof v === 'symbol') return 'Symbol()';
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'function') return 'fn';
  if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) return (v as object).constructor.name;
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.getPrototypeOf(v) === Object.prototype && Object.keys(v).length === 0) return '{} (or a tensor handle)';
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

test('fuzz: every native export is covered by the fuzz table', (t) => {
  t.deepEqual(Object.keys(native()).sort(), Object.keys(validArgs()).sort());
});

test('fuzz: a wrong value at each argument position throws a JavaScript error', async (t) => {
  const b = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
  const valid = validArgs(await soloGroup(), await freePort());
  const bad = badValues();
  const disposed = bad[bad.length - 1];
  for (const [name, args] of Object.entries(valid)) {
    const fn = b[name];
    const optional = OPTION_POSITIONS[name as keyof NativeBinding] ?? [];
    const required = args.some((_, p) => !optional.includes(p));
    await expectError(t, name, fn, [], required);
    for (let p = 0; p < args.length; p++) {
      for (const v of bad) {
        // disposing twice is allowed (idempotent), and asking whether a tensor is disposed
        const allowed =
          ((name === 'tensorDispose' || name === 'tensorIsDisposed') && v === disposed) ||
          ((OPTION_POSITIONS[name as keyof NativeBinding] ?? []).includes(p) && validAsOptions(v)) ||
          ((NULLABLE_POSITIONS[name as keyof NativeBinding] ?? []).includes(p) && (v === null || v === undefined)) ||
          ((TEXT_POSITIONS[name as keyof NativeBinding] ?? []).includes(p) && typeof v === 'string' && v !== '');
        await expectError(t, name, fn, [...args.slice(0, p), v, ...args.slice(p + 1)], !allowed);
      }
    }
  }
  b.setNumThreads(Math.max(1, require('node:os').availableParallelism()));
  try {
    b.profilerStop(valid.profilerStop[0]); // started above where this build has Kineto
  } catch {
    // not running
  }
  t.pass();
});

test('fuzz: random argument lists never crash the process', async (t) => {
  const b = native() as unknown as Record<string, (...a: unknown[]) => unknown>;
  const valid = validArgs(await soloGroup(), await freePort());
  const pool = [...badValues(), ...Object.values(valid).flat(), 0, 1, -1, 3, [], [2, 2], [0, 1], 'cuda', 'cuda:7', 'bool', 'int64', 'logSoftmax', new Float64Array(4), new Uint8Array([0, 1, 2, 3])];
  const rng = new Rng(99);
  const names = Object.keys(valid);
  for (let i = 0; i < 3000; i++) {
    const name = names[Math.floor(rng.next() * names.length)];
    if (name === 'setNumThreads' || name === 'manualSeed' || name.startsWith('profiler')) continue;
    const n = Math.floor(rng.next() * 5);
    const args = Array.from({ length: n }, () => pool[Math.floor(rng.next() * pool.length)]);
    await expectError(t, name, b[name], args, false);
  }
  t.pass();
});

test('fuzz: calling exports as constructors throws instead of crashing', (t) => {
  const b = native() as unknown as Record<string, new (...a: unknown[]) => unknown>;
  for (const name of ['tensorShape', 'tensorFromArray', 'tensorMatmul']) {
    t.throws(() => new b[name](), { instanceOf: TypeError });
  }
});
