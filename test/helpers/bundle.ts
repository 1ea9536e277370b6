/**
 * Tensor bundles: a folder with `manifest.json` ({tensors: {name: {shape, dtype, file}}, meta}) and
 * one raw little-endian file per tensor. The format of ../shared/fixtures and of the parity
 * references in test/reference (bundle.py reads and writes the same).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DType, Tensor, TensorData } from '../../lib';

export interface BundleEntry {
  shape: number[];
  dtype: DType;
  data: TensorData;
}
export type Bundle = Record<string, BundleEntry>;

const ARRAY_TYPES = {
  float32: Float32Array,
  float64: Float64Array,
  int64: BigInt64Array,
  int32: Int32Array,
  uint8: Uint8Array,
  bool: Uint8Array,
} as const;

export function readBundle(dir: string): { tensors: Bundle; meta: Record<string, unknown> } {
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as {
    tensors: Record<string, { shape: number[]; dtype: DType; file: string }>;
    meta?: Record<string, unknown>;
  };
  const tensors: Bundle = {};
  for (const [name, e] of Object.entries(manifest.tensors)) {
    const bytes = fs.readFileSync(path.join(dir, e.file));
    const Ctor = ARRAY_TYPES[e.dtype];
    if (Ctor === undefined) throw new Error(`${dir}: tensor ${name} has unknown dtype ${e.dtype}`);
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(bytes);
    const data = new Ctor(copy.buffer);
    const numel = e.shape.reduce((a, b) => a * b, 1);
    if (data.length !== numel) throw new Error(`${dir}: tensor ${name} has ${data.length} elements, shape says ${numel}`);
    tensors[name] = { shape: e.shape, dtype: e.dtype, data };
  }
  return { tensors, meta: manifest.meta ?? {} };
}

export function writeBundle(dir: string, tensors: Bundle, meta: Record<string, unknown> = {}): void {
  fs.mkdirSync(dir, { recursive: true });
  const manifest: Record<string, { shape: number[]; dtype: DType; file: string }> = {};
  for (const [name, e] of Object.entries(tensors)) {
    const file = `${name}.bin`;
    fs.writeFileSync(path.join(dir, file), new Uint8Array(e.data.buffer, e.data.byteOffset, e.data.byteLength));
    manifest[name] = { shape: e.shape, dtype: e.dtype, file };
  }
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ tensors: manifest, meta }, null, 1));
}

/** A bundle entry as a Tensor (on `device`). */
export function toTensor(e: BundleEntry, device: 'cpu' | 'cuda' = 'cpu'): Tensor {
  return Tensor.from(e.data, e.shape, { dtype: e.dtype, device });
}

/** A Tensor as a bundle entry (copied to the host). */
export function fromTensor(t: Tensor): BundleEntry {
  return { shape: t.shape, dtype: t.dtype, data: t.toArray() };
}
