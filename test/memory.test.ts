import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cpuMemory, emptyCpuCache, Tensor } from '../lib';
import { tempDir } from './helpers/python';

const root = path.resolve(__dirname, '..');

/** Runs `code` in a fresh Node process with onestage loaded as `o` and `env` added; returns its output. */
function child(code: string, env: Record<string, string>) {
  return spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', '-e', `const o = require('./lib');\n${code}`], {
    cwd: root,
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
}

const sines = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i));

test.serial('cpu memory: a freed tensor of 64 KiB or more hands its block to the next tensor of that size, which computes the right values', (t) => {
  emptyCpuCache();
  const m0 = cpuMemory();
  t.true(m0.enabled);
  t.true(m0.cacheLimit > 0);
  const n = 1 << 18; // 1 MiB of float32
  const data = sines(n);
  const a = Tensor.from(data, [n]);
  const b = a.mul(a);
  const m1 = cpuMemory();
  t.true(m1.allocated >= m0.allocated + n * 4, 'the product is a live block');
  b.dispose();
  const m2 = cpuMemory();
  t.true(m2.cached >= m0.cached + n * 4, 'its block is kept');
  t.is(m2.allocated, m1.allocated - n * 4);
  const c = a.add(a);
  const m3 = cpuMemory();
  t.is(m3.hits, m2.hits + 1, 'the sum reuses it');
  t.is(m3.misses, m2.misses);
  t.is(m3.cached, m2.cached - n * 4);
  const sum = c.toArray() as Float32Array;
  for (let i = 0; i < n; i++) {
    if (sum[i] !== Math.fround(data[i]! + data[i]!)) {
      t.fail(`element ${i}: ${sum[i]} instead of ${Math.fround(data[i]! + data[i]!)}`);
      break;
    }
  }
  // a request up to 1/8 smaller than a kept block reuses it (here 8 % smaller); a larger one does not
  c.dispose();
  const m4 = cpuMemory();
  const d = Tensor.from(sines(n - 20000), [n - 20000]);
  t.true(cpuMemory().hits > m4.hits);
  const m5 = cpuMemory();
  const e = Tensor.from(sines(2 * n), [2 * n]);
  t.true(cpuMemory().misses > m5.misses);
  // every tensor disposed here: none is left for a garbage collection to free during the next test
  for (const x of [a, d, e]) x.dispose();
});

test.serial('cpu memory: tensors under 64 KiB bypass the cache; emptyCpuCache returns every kept block; resetPeak restarts the peak', (t) => {
  const m0 = cpuMemory();
  const small = Tensor.from(sines(1000), [1000]);
  const product = small.mul(small);
  const m1 = cpuMemory();
  t.is(m1.allocated, m0.allocated);
  t.is(m1.hits + m1.misses, m0.hits + m0.misses);
  small.dispose();
  product.dispose();
  const big = Tensor.from(sines(1 << 17), [1 << 17]);
  const sq = big.mul(big);
  sq.dispose();
  t.true(cpuMemory().cached > 0);
  emptyCpuCache();
  const m2 = cpuMemory();
  t.is(m2.cached, 0);
  t.true(m2.peak >= m2.allocated);
  t.is(cpuMemory({ resetPeak: true }).peak, m2.allocated);
  big.dispose();
  t.throws(() => cpuMemory({ resetPeak: 'yes' as unknown as boolean }), { message: /options\.resetPeak/ });
});

test('cpu memory: ONESTAGE_CPU_CACHE_MB bounds what is kept (least recently freed out first), 0 leaves LibTorch\'s allocator, anything else is an error naming it', (t) => {
  // freed in the order 768 KiB, 256 KiB, 512 KiB under a 1 MiB limit: the 768 KiB block, freed
  // first, makes room for the last one
  const bounded = child(
    `const big = o.Tensor.from(new Float32Array(1 << 20), [1 << 20]); big.dispose();
     const afterBig = o.cpuMemory().cached;
     const [a, b, c] = [3, 1, 2].map((k) => o.Tensor.from(new Float32Array(k << 16), [k << 16]));
     a.dispose(); b.dispose(); c.dispose();
     const m = o.cpuMemory();
     const again = o.Tensor.from(new Float32Array(3 << 16), [3 << 16]);
     console.log(JSON.stringify({ afterBig, cached: m.cached, limit: m.cacheLimit, hit: o.cpuMemory().hits - m.hits }));`,
    { ONESTAGE_CPU_CACHE_MB: '1' },
  );
  t.is(bounded.status, 0, bounded.stderr);
  const r = JSON.parse(bounded.stdout.trim()) as { afterBig: number; cached: number; limit: number; hit: number };
  t.is(r.limit, 1 << 20);
  t.is(r.afterBig, 0, 'a 4 MiB block is larger than the whole cache');
  t.is(r.cached, (1 + 2) << 18, 'the 256 KiB and 512 KiB blocks stay');
  t.is(r.hit, 0, 'the 768 KiB block went back to the system');

  const off = child(`console.log(JSON.stringify(o.cpuMemory()));`, { ONESTAGE_CPU_CACHE_MB: '0' });
  t.is(off.status, 0, off.stderr);
  t.false((JSON.parse(off.stdout.trim()) as { enabled: boolean }).enabled);

  const bad = child(`o.cpuMemory();`, { ONESTAGE_CPU_CACHE_MB: '2GB' });
  t.not(bad.status, 0);
  t.regex(bad.stderr, /ONESTAGE_CPU_CACHE_MB must be a whole number of MiB .* but is '2GB'/);
});

test('cpu memory: three training steps give the same weights, bit for bit, with the caching allocator and with LibTorch\'s own', (t) => {
  const dir = tempDir();
  const trained = (cacheMb: string | undefined, name: string) => {
    const env: NodeJS.ProcessEnv = { ...process.env };
    if (cacheMb === undefined) delete env.ONESTAGE_CPU_CACHE_MB;
    else env.ONESTAGE_CPU_CACHE_MB = cacheMb;
    const file = path.join(dir, `${name}.safetensors`);
    const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(__dirname, 'helpers', 'train_tiny.ts'), file, path.join(dir, `data-${name}`)], {
      cwd: root,
      env,
      encoding: 'utf8',
    });
    t.is(r.status, 0, r.stderr);
    return { weights: fs.readFileSync(file), enabled: (JSON.parse(r.stdout.trim()) as { cacheEnabled: boolean }).cacheEnabled };
  };
  const cached = trained(undefined, 'cached');
  const plain = trained('0', 'plain');
  t.true(cached.enabled);
  t.false(plain.enabled);
  t.true(cached.weights.equals(plain.weights));
});
