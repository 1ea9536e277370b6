/**
 * `npm run bench -- [--device cuda] [...]`: the training-throughput and the inference benchmarks, each
 * with its PyTorch references in the same run (bench/train_throughput.ts, bench/inference.ts); the
 * arguments go to both.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const args = process.argv.slice(2);
let failed = false;
for (const script of ['train_throughput.ts', 'inference.ts']) {
  const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', path.join(__dirname, script), ...args], { stdio: 'inherit' });
  failed ||= r.status !== 0;
}
process.exitCode = failed ? 1 : 0;
