/**
 * Runs the PyTorch references in test/reference with whichever python3 has torch:
 * $ONESTAGE_PYTHON, else `python3` on PATH, else /usr/bin/python3 (Debian's python3-torch).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { getNumThreads } from '../../lib';

let cached: string | null | undefined;

export function pythonWithTorch(): string | null {
  if (cached !== undefined) return cached;
  const candidates = [process.env.ONESTAGE_PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => !!c);
  cached = candidates.find((py) => spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0) ?? null;
  return cached;
}

/**
 * The environment of a PyTorch reference process: OMP_NUM_THREADS = onestage's CPU threads here, so both
 * sides of a comparison use as many (LibTorch's own default can be lower: native/core/cpu_threads.h),
 * and no bytecode files.
 */
export function referenceEnv(): NodeJS.ProcessEnv {
  return { ...process.env, PYTHONDONTWRITEBYTECODE: '1', OMP_NUM_THREADS: String(getNumThreads()) };
}

export const referenceDir = path.resolve(__dirname, '..', 'reference');

/** Runs `test/reference/<script>` with `args`; throws with its stderr when it fails. */
export function runReference(script: string, args: string[]): string {
  const py = pythonWithTorch();
  if (py === null) throw new Error('no python3 with torch found (install python3-torch or set ONESTAGE_PYTHON)');
  const res = spawnSync(py, [path.join(referenceDir, script), ...args], { encoding: 'utf8', env: referenceEnv() });
  if (res.status !== 0) throw new Error(`${script} failed (exit ${res.status}):\n${res.stderr}`);
  return res.stdout;
}

const temporary: string[] = [];
process.on('exit', () => {
  for (const dir of temporary) fs.rmSync(dir, { recursive: true, force: true });
});

/** A fresh temporary folder, removed at process exit. */
export function tempDir(prefix = 'onestage-test-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  temporary.push(dir);
  return dir;
}
