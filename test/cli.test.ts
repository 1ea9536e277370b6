import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { buildInfo } from '../lib';

const cli = path.resolve(__dirname, '..', 'bin', 'onestage.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

test('cli: `onestage info` prints buildInfo as JSON', (t) => {
  const r = run('info');
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), buildInfo());
});

test('cli: `onestage demo` runs a forward pass and frees its tensors', (t) => {
  const r = run('demo');
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /sample 3: class probabilities/);
  t.regex(r.stdout, /native tensors alive after dispose: 0/);
});

test('cli: an unknown command or a bad option fails with a message and exit code 1', (t) => {
  const r = run('nonsense');
  t.is(r.status, 1);
  t.regex(r.stderr, /unknown command 'nonsense'/);
  if (!buildInfo().cudaAvailable) {
    const c = run('demo', '--device', 'cuda');
    t.is(c.status, 1);
    t.regex(c.stderr, /onestage: CUDA is not available/);
  }
});
