import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildInfo, DTYPES, getNumThreads, liveTensors, setNumThreads, Tensor } from '../lib';

const gc = (globalThis as { gc?: () => void }).gc;

test('buildInfo: reports the package version, LibTorch version and CUDA state', (t) => {
  const info = buildInfo();
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  t.is(info.version, require('../package.json').version);
  t.regex(info.torchVersion, /^\d+\.\d+\.\d+/);
  t.is(typeof info.cudaCompiled, 'boolean');
  t.is(typeof info.cudaAvailable, 'boolean');
  t.true(Number.isInteger(info.deviceCount) && info.deviceCount >= 0);
  if (!info.cudaCompiled) t.false(info.cudaAvailable);
});

/** Physical cores as the kernel reports them (distinct physical id / core id of /proc/cpuinfo), within this process's CPUs and its cgroup quota. */
function expectedCores(): number {
  let cores = 0;
  if (fs.existsSync('/proc/cpuinfo')) {
    const pairs = new Set<string>();
    for (const block of fs.readFileSync('/proc/cpuinfo', 'utf8').split(/\n\s*\n/)) {
      const field = (k: string) => new RegExp(`^${k}\\s*:\\s*(.*)$`, 'm').exec(block)?.[1];
      if (field('core id') !== undefined) pairs.add(`${field('physical id') ?? '0'}/${field('core id')}`);
    }
    cores = pairs.size;
  }
  cores = Math.min(cores || os.availableParallelism(), os.availableParallelism());
  const max = fs.existsSync('/sys/fs/cgroup/cpu.max') ? fs.readFileSync('/sys/fs/cgroup/cpu.max', 'utf8').trim().split(/\s+/) : ['max'];
  if (max[0] !== 'max') cores = Math.min(cores, Math.ceil(Number(max[0]) / Number(max[1])));
  return Math.max(1, cores);
}

test.serial('CPU threads: one per physical core by default (LibTorch may count fewer), OMP_NUM_THREADS wins; setNumThreads / getNumThreads', (t) => {
  const threadsOf = (env: NodeJS.ProcessEnv) => {
    const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', `console.log(require(${JSON.stringify(path.resolve(__dirname, '..', 'lib'))}).getNumThreads())`], { encoding: 'utf8', env });
    t.is(r.status, 0, r.stderr);
    return Number(r.stdout.trim());
  };
  const { OMP_NUM_THREADS: _o, MKL_NUM_THREADS: _m, ...plain } = process.env;
  t.is(threadsOf(plain), expectedCores());
  t.is(threadsOf({ ...plain, OMP_NUM_THREADS: '1' }), 1);
  t.is(threadsOf({ ...plain, MKL_NUM_THREADS: '3' }), 3);
  const before = getNumThreads();
  setNumThreads(3);
  t.is(getNumThreads(), 3);
  setNumThreads(before);
  t.throws(() => setNumThreads(0), { instanceOf: RangeError, message: /threads/ });
});

test('Tensor.from: every dtype round-trips through native memory unchanged', (t) => {
  const cases = {
    float32: new Float32Array([1.5, -2.25, 3e-8, 1e30, -0, Infinity]),
    float64: new Float64Array([Math.PI, -1e-300, 2 ** 60, NaN, 0, 1]),
    int64: new BigInt64Array([1n, -2n, 2n ** 62n, -(2n ** 63n), 0n, 7n]),
    int32: new Int32Array([1, -2, 2 ** 31 - 1, -(2 ** 31), 0, 7]),
    uint8: new Uint8Array([0, 1, 127, 128, 255, 9]),
    bool: new Uint8Array([0, 1, 1, 0, 1, 0]),
  } as const;
  for (const dtype of DTYPES) {
    const data = cases[dtype];
    const x = Tensor.from(data, [2, 3], { dtype });
    t.deepEqual(x.shape, [2, 3]);
    t.is(x.dtype, dtype);
    t.is(x.device, 'cpu');
    t.is(x.size, 6);
    const back = x.toArray();
    t.is(back.constructor, data.constructor, dtype);
    t.deepEqual(Array.from(back as ArrayLike<unknown>), Array.from(data as ArrayLike<unknown>), dtype);
    x.dispose();
  }
});

test('Tensor.from: plain arrays, default 1-D shape, scalars and empty tensors', (t) => {
  const a = Tensor.from([1, 2, 3]);
  t.deepEqual(a.shape, [3]);
  t.is(a.dtype, 'float32');
  const s = Tensor.from([42], [], { dtype: 'int64' });
  t.deepEqual(s.shape, []);
  t.deepEqual(s.toNumbers(), [42]);
  const e = Tensor.from(new Float32Array(0), [0, 4]);
  t.deepEqual(e.shape, [0, 4]);
  t.is(e.toArray().length, 0);
  const b = Tensor.from([1, 0, 1], [3], { dtype: 'bool' });
  t.deepEqual(Array.from(b.toArray() as Uint8Array), [1, 0, 1]);
  for (const x of [a, s, e, b]) x.dispose();
});

test('Tensor.from: a subarray view copies only its own elements', (t) => {
  const big = new Float32Array([9, 1, 2, 3, 9]);
  const x = Tensor.from(big.subarray(1, 4));
  t.deepEqual(Array.from(x.toArray() as Float32Array), [1, 2, 3]);
  big[2] = 100; // the tensor holds a copy
  t.deepEqual(Array.from(x.toArray() as Float32Array), [1, 2, 3]);
  x.dispose();
});

test('Tensor.from: bad arguments give errors naming the argument', (t) => {
  t.throws(() => Tensor.from(new Float32Array(5), [2, 2]), { instanceOf: RangeError, message: /shape \[2, 2\] holds 4 elements but data has 5/ });
  t.throws(() => Tensor.from(new Float32Array(4), [2, -2]), { instanceOf: RangeError, message: /shape\[1\]/ });
  t.throws(() => Tensor.from(new Float32Array(4), [2, 2.5] as number[]), { instanceOf: RangeError, message: /shape\[1\]/ });
  t.throws(() => Tensor.from('abc' as never), { instanceOf: TypeError, message: /Expected a typed array or an array of numbers for data but received 'abc' of type string/ });
  t.throws(() => Tensor.from(new Float32Array(4), [4], { dtype: 'float16' as never }), { instanceOf: RangeError, message: /options\.dtype/ });
  t.throws(() => Tensor.from(new Float32Array(4), [4], { dtype: 'int32' }), { instanceOf: TypeError, message: /Int32Array for data of dtype int32/ });
  t.throws(() => Tensor.from(new Float32Array(4), [4], { device: 'tpu' as never }), { instanceOf: RangeError, message: /options\.device/ });
  t.throws(() => Tensor.from([1, 2, 'x'] as never), { instanceOf: TypeError, message: /data\[2\]/ });
  t.throws(() => Tensor.from([0, 2], [2], { dtype: 'bool' }), { instanceOf: RangeError, message: /data\[1\]/ });
  t.throws(() => Tensor.from(new Uint8Array([0, 3]), [2], { dtype: 'bool' }), { instanceOf: RangeError, message: /Expected 0 or 1 for data\[1\]/ });
  t.throws(() => Tensor.from(new Float32Array(4), [4], 5 as never), { instanceOf: TypeError, message: /options/ });
  t.throws(() => Tensor.from(new Int16Array(4) as never), { instanceOf: TypeError, message: /data/ });
});

test.serial('dispose: frees the native tensor once, and a disposed tensor gives a clear error', (t) => {
  const before = liveTensors();
  const x = Tensor.from([1, 2, 3, 4], [2, 2]);
  t.is(liveTensors(), before + 1);
  x.dispose();
  t.is(liveTensors(), before);
  t.true(x.disposed);
  x.dispose(); // idempotent
  t.is(liveTensors(), before);
  t.throws(() => x.shape, { message: /tensor has been disposed/ });
  t.throws(() => x.toArray(), { message: /disposed/ });
  const y = Tensor.from([1, 2, 3, 4], [2, 2]);
  t.throws(() => y.matmul(x), { message: /b has been disposed/ });
  t.is(String(x), 'Tensor(disposed)');
  y.dispose();
});

test.serial('finalizer: tensors dropped without dispose are freed by the garbage collector', async (t) => {
  if (gc === undefined) return t.fail('run with --expose-gc (the ava config sets it)');
  const before = liveTensors();
  (() => {
    for (let i = 0; i < 200; i++) Tensor.from(new Float32Array(1000), [10, 100]);
  })();
  t.is(liveTensors(), before + 200);
  for (let round = 0; round < 20 && liveTensors() > before; round++) {
    gc();
    await new Promise((r) => setImmediate(r));
  }
  t.is(liveTensors(), before);
});

test('to(): copies to a device; CUDA without a GPU is a clear error', (t) => {
  const x = Tensor.from([1, 2, 3]);
  const y = x.to('cpu');
  t.deepEqual(y.toNumbers(), [1, 2, 3]);
  if (!buildInfo().cudaAvailable) {
    t.throws(() => x.to('cuda'), { message: /CUDA is not available/ });
    t.throws(() => Tensor.from([1], [1], { device: 'cuda:0' }), { message: /CUDA is not available/ });
  }
  t.throws(() => x.to('gpu' as never), { instanceOf: RangeError, message: /Expected 'cpu', 'cuda' or 'cuda:N' for device but received 'gpu'/ });
  x.dispose();
  y.dispose();
});

test('channelsLast(): same shape and values in NHWC order (memoryFormat says so); only for 4-d tensors', (t) => {
  const data = Float32Array.from({ length: 2 * 3 * 4 * 5 }, (_, i) => i * 0.5);
  const x = Tensor.from(data, [2, 3, 4, 5]);
  const y = x.channelsLast();
  t.deepEqual(y.shape, [2, 3, 4, 5]);
  t.is(x.memoryFormat, 'contiguous');
  t.is(y.memoryFormat, 'channels-last');
  t.is(Tensor.from(data, [120]).memoryFormat, 'contiguous');
  t.deepEqual(Array.from(y.toArray() as Float32Array), Array.from(data));
  // gradients reach a channels-last leaf
  const leaf = y.setRequiresGrad(true);
  const s = leaf.mul(leaf).sum();
  return s.backward().then(() => {
    t.deepEqual(Array.from(leaf.grad!.toArray() as Float32Array), Array.from(data, (v) => 2 * v));
    t.throws(() => Tensor.from(new Float32Array(6), [2, 3]).channelsLast(), { instanceOf: RangeError, message: /channelsLast\(\) but received shape \[2, 3\]/ });
    for (const z of [x, y, s]) z.dispose();
  });
});

test('clearGrad(): a second backward adds to the gradient unless it was cleared', async (t) => {
  const x = Tensor.from([1, 2, 3]).setRequiresGrad();
  await x.mul(x).sum().backward();
  await x.mul(x).sum().backward();
  t.deepEqual(Array.from(x.grad!.toArray() as Float32Array), [4, 8, 12]);
  t.is(x.clearGrad(), x);
  t.is(x.grad, null);
  await x.mul(x).sum().backward();
  t.deepEqual(Array.from(x.grad!.toArray() as Float32Array), [2, 4, 6]);
  x.dispose();
});

test('ops: shape, dtype and device errors name what was wrong', (t) => {
  const a = Tensor.from(new Float32Array(6), [2, 3]);
  const b = Tensor.from(new Float32Array(6), [2, 3]);
  const i = Tensor.from(new Int32Array(6), [2, 3]);
  t.throws(() => a.matmul(b), { instanceOf: RangeError, message: /matmul: shapes \[2, 3\] and \[2, 3\] cannot be multiplied/ });
  t.throws(() => a.add(i), { instanceOf: TypeError, message: /different dtypes \(float32 and int32\)/ });
  t.throws(() => i.sigmoid(), { instanceOf: TypeError, message: /sigmoid: expected a float32 or float64 tensor but received int32/ });
  t.throws(() => a.softmax(2), { instanceOf: RangeError, message: /dim 2 is out of range/ });
  t.throws(() => a.sum([0, -2]), { instanceOf: RangeError, message: /appears more than once/ });
  t.throws(() => a.add(Tensor.from(new Float32Array(4), [4])), { instanceOf: RangeError, message: /do not broadcast/ });
  t.throws(() => a.matmul(3 as never), { instanceOf: TypeError, message: /Expected a Tensor for other but received 3 of type number/ });
  for (const x of [a, b, i]) x.dispose();
});

test('matmulAsync: runs on the thread pool and keeps the event loop free', async (t) => {
  const n = 1200;
  const a = Tensor.from(new Float64Array(n * n).fill(1), [n, n]);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const started = Date.now();
  let product = a;
  for (let k = 0; k < 4; k++) {
    const next = await a.matmulAsync(a);
    if (product !== a) product.dispose();
    product = next;
  }
  const elapsed = Date.now() - started;
  clearInterval(timer);
  t.deepEqual(product.shape, [n, n]);
  t.is((product.toArray() as Float64Array)[0], n);
  // the timer fired while the products were computed: the loop was not blocked
  t.true(ticks >= Math.min(5, elapsed / 20), `only ${ticks} timer ticks in ${elapsed} ms`);
  product.dispose();
  a.dispose();
});

test('matmulAsync: errors reject the promise with the right error class', async (t) => {
  const a = Tensor.from(new Float32Array(6), [2, 3]);
  await t.throwsAsync(a.matmulAsync(a), { instanceOf: RangeError, message: /cannot be multiplied/ });
  a.dispose();
});

test('fork: spawning child processes while a native matrix product runs does not deadlock (OpenBLAS fork handler)', async (t) => {
  t.timeout(60_000);
  const { spawnSync } = await import('node:child_process');
  const n = 600;
  const a = Tensor.from(new Float32Array(n * n).fill(0.5), [n, n]);
  for (let round = 0; round < 10; round++) {
    const product = a.matmulAsync(a);
    for (let k = 0; k < 3; k++) t.is(spawnSync(process.execPath, ['-e', ''], { stdio: 'ignore' }).status, 0);
    (await product).dispose();
  }
  a.dispose();
});
