/**
 * safetensors headers: an 8-byte little-endian header length, a JSON header
 * `{name: {dtype, shape, data_offsets: [begin, end]}, __metadata__?: {string: string}}`, then data.
 * The header is read and checked here; the tensor bytes are read natively.
 */
import * as fs from 'node:fs';
import type { NativeSafetensorsEntry } from './binding';

const DTYPE_SIZES: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
const MAX_HEADER = 100 * 1024 * 1024;

export interface SafetensorsHeader {
  dataStart: number;
  entries: NativeSafetensorsEntry[];
  metadata: Record<string, string>;
}

/** Reads and validates the header of `path`; errors name the file and what is wrong. */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  const fd = fs.openSync(path, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const fail = (why: string): never => {
      throw new Error(`${path} is not a valid safetensors file: ${why}`);
    };
    if (size < 8) fail(`it has ${size} bytes`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const headerLength = Number(lenBuf.readBigUInt64LE(0));
    if (headerLength < 2 || headerLength > MAX_HEADER || 8 + headerLength > size)
      fail(`header length ${headerLength} does not fit a file of ${size} bytes`);
    const headerBuf = Buffer.alloc(headerLength);
    fs.readSync(fd, headerBuf, 0, headerLength, 8);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch (err) {
      fail(`header is not JSON (${(err as Error).message})`);
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) fail('header is not a JSON object');
    const dataStart = 8 + headerLength;
    const dataSize = size - dataStart;
    const entries: NativeSafetensorsEntry[] = [];
    let metadata: Record<string, string> = {};
    for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (value === null || typeof value !== 'object' || Object.values(value).some((v) => typeof v !== 'string'))
          fail('__metadata__ must map strings to strings');
        metadata = value as Record<string, string>;
        continue;
      }
      const e = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (e === null || typeof e !== 'object') fail(`entry ${name} is not an object`);
      if (typeof e.dtype !== 'string' || !(e.dtype in DTYPE_SIZES)) fail(`tensor ${name} has unsupported dtype ${String(e.dtype)}`);
      if (!Array.isArray(e.shape) || e.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) fail(`tensor ${name} has a bad shape`);
      const offsets = e.data_offsets;
      if (!Array.isArray(offsets) || offsets.length !== 2 || offsets.some((d) => !Number.isSafeInteger(d) || d < 0) || offsets[0] > offsets[1])
        fail(`tensor ${name} has bad data_offsets`);
      const [begin, end] = offsets as [number, number];
      const shape = e.shape as number[];
      const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_SIZES[e.dtype as string];
      if (end - begin !== bytes) fail(`tensor ${name} has ${end - begin} bytes but its shape and dtype need ${bytes}`);
      if (end > dataSize) fail(`tensor ${name} ends at byte ${end} of a ${dataSize}-byte data section (truncated file?)`);
      entries.push({ name, dtype: e.dtype as string, shape, begin, end });
    }
    return { dataStart, entries, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The float32 tensors of a safetensors file by name (other dtypes are left out), read in JavaScript:
 * for comparing weight files (tests, parity benchmarks) without the addon.
 */
export function readFloat32Tensors(path: string): Map<string, Float32Array> {
  const { dataStart, entries } = readSafetensorsHeader(path);
  const buf = fs.readFileSync(path);
  const out = new Map<string, Float32Array>();
  for (const e of entries) {
    if (e.dtype !== 'F32') continue;
    const bytes = buf.subarray(dataStart + e.begin, dataStart + e.end);
    out.set(e.name, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
  }
  return out;
}
