/**
 * Atomic file writes: the data goes to a temporary file in the same folder, is flushed to disk, and
 * is renamed over the target, so a reader (or a run killed mid-write) sees the old file or the new
 * one, never half of one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

let counter = 0;

/** Writes `data` to `file` atomically (creating the folder). */
export function writeFileAtomic(file: string, data: string | Uint8Array): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${counter++}`;
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new Error(`cannot write ${file} (${(err as Error).message})`);
  }
}

/** `JSON.stringify(value, null, indent)` written atomically. */
export function writeJsonAtomic(file: string, value: unknown, indent?: number): void {
  writeFileAtomic(file, JSON.stringify(value, null, indent));
}
