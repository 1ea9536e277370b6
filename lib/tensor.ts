/**
 * `Tensor`: a LibTorch tensor owned by native code, seen from TypeScript.
 *
 * Memory is freed by `dispose()`; a tensor that is never disposed is freed when the garbage
 * collector finalizes it (its host bytes are reported to V8 as external memory, so GC pressure
 * follows tensor allocation). `liveTensors()` counts native tensors not yet freed.
 */
import { native, NativeTensor, NativeTypedArray } from './binding';
import { checkInteger, checkOneOf, checkOptions, describe, invalid } from './validate';

/** Element types onestage exposes. `bool` tensors read and write as `Uint8Array` of 0/1. */
export type DType = 'float32' | 'float64' | 'int64' | 'int32' | 'uint8' | 'bool';
export const DTYPES: readonly DType[] = ['float32', 'float64', 'int64', 'int32', 'uint8', 'bool'];

/** `'cpu'`, `'cuda'` (device 0) or `'cuda:N'`. */
export type Device = 'cpu' | 'cuda' | `cuda:${number}`;

/** The typed array that holds (and is returned for) each dtype. */
export interface TypedArrayOf {
  float32: Float32Array;
  float64: Float64Array;
  int64: BigInt64Array;
  int32: Int32Array;
  uint8: Uint8Array;
  bool: Uint8Array;
}
export type TensorData = NativeTypedArray;

export interface TensorOptions {
  /** Element type; default: the typed array's own (`Float32Array` → float32, ...); `bool` takes a `Uint8Array` of 0/1. */
  dtype?: DType;
  /** Where the tensor lives; default `'cpu'`. */
  device?: Device;
}

const DEVICE_PATTERN = /^(cpu|cuda|cuda:\d{1,3})$/;

function dtypeOfArray(data: TensorData): DType {
  if (data instanceof Float32Array) return 'float32';
  if (data instanceof Float64Array) return 'float64';
  if (data instanceof BigInt64Array) return 'int64';
  if (data instanceof Int32Array) return 'int32';
  return 'uint8';
}

/** Checks a device string; exported for other modules' options. @internal */
export function checkDevice(name: string, value: unknown): Device {
  if (typeof value !== 'string') throw invalid(name, "'cpu', 'cuda' or 'cuda:N'", value);
  if (!DEVICE_PATTERN.test(value)) throw invalid(name, "'cpu', 'cuda' or 'cuda:N'", value, RangeError);
  return value as Device;
}

function isTensorData(value: unknown): value is TensorData {
  return (
    value instanceof Float32Array ||
    value instanceof Float64Array ||
    value instanceof BigInt64Array ||
    value instanceof Int32Array ||
    value instanceof Uint8Array
  );
}

/** Plain number arrays become the typed array of `dtype`. */
function fromNumbers(values: readonly unknown[], dtype: DType): TensorData {
  values.forEach((v, i) => {
    if (typeof v !== 'number' && typeof v !== 'boolean') throw invalid(`data[${i}]`, 'a number', v);
  });
  const nums = values as readonly (number | boolean)[];
  switch (dtype) {
    case 'float32':
      return Float32Array.from(nums, Number);
    case 'float64':
      return Float64Array.from(nums, Number);
    case 'int64':
      return BigInt64Array.from(nums, (v, i) => {
        const n = Number(v);
        if (!Number.isSafeInteger(n)) throw invalid(`data[${i}]`, 'an integer', v, RangeError);
        return BigInt(n);
      });
    case 'int32':
      return Int32Array.from(nums, (v, i) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < -2147483648 || n > 2147483647)
          throw invalid(`data[${i}]`, 'a 32-bit integer', v, RangeError);
        return n;
      });
    case 'uint8':
    case 'bool': {
      const max = dtype === 'bool' ? 1 : 255;
      return Uint8Array.from(nums, (v, i) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0 || n > max) throw invalid(`data[${i}]`, `an integer between 0 and ${max}`, v, RangeError);
        return n;
      });
    }
  }
}

function checkShape(shape: unknown, length: number): number[] {
  if (!Array.isArray(shape)) throw invalid('shape', 'an array of non-negative integers', shape);
  let numel = 1;
  shape.forEach((d, i) => {
    checkInteger(`shape[${i}]`, d, 0, Number.MAX_SAFE_INTEGER);
    numel *= d as number;
  });
  if (numel !== length)
    throw new RangeError(`shape [${shape.join(', ')}] holds ${numel} elements but data has ${length}`);
  return shape as number[];
}

export class Tensor {
  /** The native handle. @internal */
  readonly handle: NativeTensor;

  /** @internal Use `Tensor.from`, or receive tensors from onestage functions. */
  constructor(handle: NativeTensor) {
    this.handle = handle;
  }

  /**
   * A tensor holding a copy of `data` in C (row-major) order.
   * @param data typed array (its type sets the default dtype) or plain array of numbers (default float32)
   * @param shape dimensions; default `[data.length]`; their product must equal `data.length`
   * @example Tensor.from(new Float32Array([1, 2, 3, 4]), [2, 2])
   * @example Tensor.from([1, 0, 1], [3], { dtype: 'bool' })
   */
  static from(data: TensorData | readonly number[], shape?: readonly number[], options?: TensorOptions): Tensor {
    const opts = checkOptions('options', options);
    let dtype: DType;
    let array: TensorData;
    if (isTensorData(data)) {
      const own = dtypeOfArray(data);
      dtype = opts.dtype === undefined ? own : checkOneOf('options.dtype', opts.dtype, DTYPES);
      if (dtype !== own && !(dtype === 'bool' && own === 'uint8'))
        throw new TypeError(`Expected a ${describeArrayFor(dtype)} for data of dtype ${dtype} but received ${describe(data)}`);
      array = data;
    } else if (Array.isArray(data)) {
      dtype = opts.dtype === undefined ? 'float32' : checkOneOf('options.dtype', opts.dtype, DTYPES);
      array = fromNumbers(data, dtype);
    } else {
      throw invalid('data', 'a typed array or an array of numbers', data);
    }
    const dims = shape === undefined ? [array.length] : checkShape(shape, array.length);
    const device = opts.device === undefined ? 'cpu' : checkDevice('options.device', opts.device);
    return new Tensor(native().tensorFromArray(array, dims, dtype, device));
  }

  /** Dimensions, e.g. `[2, 3]`; `[]` for a scalar. */
  get shape(): number[] {
    return native().tensorShape(this.handle);
  }

  get dtype(): DType {
    return native().tensorDtype(this.handle) as DType;
  }

  /** `'cpu'` or `'cuda:N'`. */
  get device(): Device {
    return native().tensorDevice(this.handle) as Device;
  }

  /**
   * How a 4-d tensor's elements lie in memory, as a convolution reads it: `'channels-last'` (NHWC strides:
   * `channelsLast()`, and what a channels-last model's layers produce) or `'contiguous'` (NCHW — and
   * every tensor of another rank).
   */
  get memoryFormat(): 'contiguous' | 'channels-last' {
    return native().tensorMemoryFormat(this.handle) as 'contiguous' | 'channels-last';
  }

  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** True once `dispose()` has been called. */
  get disposed(): boolean {
    return native().tensorIsDisposed(this.handle);
  }

  /** A copy of the elements in C order, on the host (copied from the GPU if needed). */
  toArray(): TensorData {
    return native().tensorToArray(this.handle);
  }

  /** The elements as plain numbers (int64 converted with `Number`). */
  toNumbers(): number[] {
    return Array.from(this.toArray() as ArrayLike<number | bigint>, Number);
  }

  /** A copy on `device` (throws a clear Error when CUDA is not available). */
  to(device: Device): Tensor {
    return new Tensor(native().tensorTo(this.handle, checkDevice('device', device)));
  }

  /** Frees the native memory now. Idempotent; the tensor cannot be used afterwards. */
  dispose(): void {
    native().tensorDispose(this.handle);
  }

  /** Matrix product with broadcasting (`torch.matmul`). */
  matmul(other: Tensor): Tensor {
    return new Tensor(native().tensorMatmul(this.handle, handleOf('other', other)));
  }

  /** `matmul` on the thread pool: the event loop stays free while it runs. */
  async matmulAsync(other: Tensor): Promise<Tensor> {
    return new Tensor(await native().tensorMatmulAsync(this.handle, handleOf('other', other)));
  }

  sigmoid(): Tensor {
    return this.unary('sigmoid');
  }
  relu(): Tensor {
    return this.unary('relu');
  }
  exp(): Tensor {
    return this.unary('exp');
  }
  log(): Tensor {
    return this.unary('log');
  }
  /**
   * The same 4-d tensor `[N, C, H, W]` in channels-last memory order (NHWC strides; shape and values
   * unchanged): a copy, or this tensor's data when it already is. On CUDA, what a channels-last
   * model's layers produce and read fastest.
   */
  channelsLast(): Tensor {
    if (this.shape.length !== 4) throw new RangeError(`Expected a 4-d tensor [N, C, H, W] for channelsLast() but received shape [${this.shape.join(', ')}]`);
    return this.unary('channelsLast');
  }
  add(other: Tensor): Tensor {
    return this.binary(other, 'add');
  }
  sub(other: Tensor): Tensor {
    return this.binary(other, 'sub');
  }
  mul(other: Tensor): Tensor {
    return this.binary(other, 'mul');
  }
  div(other: Tensor): Tensor {
    return this.binary(other, 'div');
  }

  /** Softmax along `dim` (negative counts from the end). */
  softmax(dim: number): Tensor {
    return new Tensor(native().tensorSoftmax(this.handle, 'softmax', checkInteger('dim', dim, -64, 63)));
  }

  logSoftmax(dim: number): Tensor {
    return new Tensor(native().tensorSoftmax(this.handle, 'logSoftmax', checkInteger('dim', dim, -64, 63)));
  }

  /** Sum over `dims` (all elements when omitted). */
  sum(dims: readonly number[] = []): Tensor {
    if (!Array.isArray(dims)) throw invalid('dims', 'an array of integers', dims);
    dims.forEach((d, i) => checkInteger(`dims[${i}]`, d, -64, 63));
    return new Tensor(native().tensorSum(this.handle, [...dims]));
  }

  private unary(op: string): Tensor {
    return new Tensor(native().tensorUnary(this.handle, op));
  }

  private binary(other: Tensor, op: string): Tensor {
    return new Tensor(native().tensorBinary(this.handle, handleOf('other', other), op));
  }

  /** Whether gradients are recorded for this tensor. */
  get requiresGrad(): boolean {
    return native().tensorRequiresGrad(this.handle);
  }

  /** Records gradients for this (float) tensor from now on; returns this. */
  setRequiresGrad(on = true): this {
    if (typeof on !== 'boolean') throw invalid('on', 'a boolean', on);
    native().tensorSetRequiresGrad(this.handle, on);
    return this;
  }

  /** A copy of the accumulated gradient, or null before any `backward()` reached this tensor. */
  get grad(): Tensor | null {
    const g = native().tensorGrad(this.handle);
    return g === null ? null : new Tensor(g);
  }

  /**
   * Drops the accumulated gradient (PyTorch's `x.grad = None`): the next `backward()` stores its
   * gradient instead of adding to this one. Call it between backward passes, not while one runs. Returns this.
   */
  clearGrad(): this {
    native().tensorClearGrad(this.handle);
    return this;
  }

  /** Back-propagates from this one-element tensor (a loss) into every input that requires gradients. */
  async backward(): Promise<void> {
    await native().tensorBackwardAsync(this.handle);
  }

  toString(): string {
    return this.disposed ? 'Tensor(disposed)' : `Tensor(${this.dtype} [${this.shape.join(', ')}] on ${this.device})`;
  }
}

function describeArrayFor(dtype: DType): string {
  return { float32: 'Float32Array', float64: 'Float64Array', int64: 'BigInt64Array', int32: 'Int32Array', uint8: 'Uint8Array', bool: 'Uint8Array' }[dtype];
}

/** The native handle of a Tensor argument, with a TypeError naming `name` otherwise. @internal */
export function handleOf(name: string, value: unknown): NativeTensor {
  if (!(value instanceof Tensor)) throw invalid(name, 'a Tensor', value);
  return value.handle;
}

/** A record of native handles (as async exports return them) as Tensors. @internal */
export function wrapTensors<K extends string>(handles: Record<string, NativeTensor>): Record<K, Tensor> {
  const out: Record<string, Tensor> = {};
  for (const [k, h] of Object.entries(handles)) out[k] = new Tensor(h);
  return out as Record<K, Tensor>;
}

/** Number of native tensors alive (created and neither disposed nor garbage-collected). */
export function liveTensors(): number {
  return native().liveTensors();
}
