/** Helpers of the ONNX tests: models with random (non-degenerate) weights and onnxruntime-node runs. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model, NanoDetPlusOptions, RetinaNetOptions, Tensor } from '../../lib';
import { readSafetensorsHeader } from '../../lib/safetensors';
import { Rng } from '../../lib/data/random';
import { tempDir } from './python';

/**
 * A model whose BatchNorm statistics and affine parameters and whose output layers are random too
 * (a fresh model's output layers are constant — zero weights, the prior's bias — so every score would
 * tie), in eval mode.
 */
export async function randomModel(options: ({ architecture: 'retinanet' } & RetinaNetOptions) | ({ architecture: 'nanodet-plus' } & NanoDetPlusOptions), seed = 0): Promise<Model> {
  const { architecture, ...o } = options;
  const model = architecture === 'retinanet' ? Model.retinanet({ seed, ...(o as RetinaNetOptions) }) : Model.nanodetPlus({ seed, ...(o as NanoDetPlusOptions) });
  const file = path.join(tempDir('onestage-onnx-'), 'w.safetensors');
  await model.saveWeights(file);
  const header = readSafetensorsHeader(file);
  const bytes = fs.readFileSync(file);
  const rng = new Rng(seed + 1000);
  for (const e of header.entries) {
    if (e.dtype !== 'F32') continue;
    const n = (e.end - e.begin) / 4;
    const view = new Float32Array(bytes.buffer, bytes.byteOffset + header.dataStart + e.begin, n);
    let values: Float32Array | null = null;
    if (e.name.endsWith('running_var')) values = rng.uniform(n, 0.5, 1.5);
    else if (e.name.endsWith('running_mean')) values = rng.normal(n, 0.1);
    else if (/(bn\d?|norm|downsample\.1)\.weight$/.test(e.name)) values = rng.uniform(n, 0.3, 0.6);
    else if (/(bn\d?|norm|downsample\.1)\.bias$/.test(e.name)) values = rng.normal(n, 0.1);
    else if (/(output|gfl_cls\.\d+)\.weight$/.test(e.name)) values = rng.normal(n, 0.5 / Math.sqrt(fanIn(e.shape)));
    else if (/head\.cls_convs\..*\.weight$/.test(e.name) && e.shape.length === 4) values = rng.normal(n, 1 / Math.sqrt(fanIn(e.shape)));
    else if (/classificationModel\.output\.bias$/.test(e.name)) values = rng.uniform(n, -3, 0);
    else if (/gfl_cls\.\d+\.bias$/.test(e.name)) values = rng.uniform(n, -3, 0);
    if (values) view.set(values);
  }
  fs.writeFileSync(file, bytes);
  await model.loadWeights(file);
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
  return model.eval();
}

const fanIn = (shape: number[]) => shape.slice(1).reduce((a, b) => a * b, 1);

/** Runs an ONNX file in onnxruntime-node (CPU) on one float32 input; outputs as typed arrays with dims. */
export async function runOrt(file: string, images: Tensor | { data: Float32Array; dims: number[] }): Promise<Record<string, { data: Float32Array | BigInt64Array; dims: number[] }>> {
  const ort = await import('onnxruntime-node');
  const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'] });
  try {
    const input = images instanceof Tensor ? { data: images.toArray() as Float32Array, dims: [...images.shape] } : images;
    const res = await session.run({ images: new ort.Tensor('float32', input.data, input.dims) });
    const out: Record<string, { data: Float32Array | BigInt64Array; dims: number[] }> = {};
    for (const [k, v] of Object.entries(res)) out[k] = { data: v.data as Float32Array | BigInt64Array, dims: [...v.dims] };
    return out;
  } finally {
    await session.release();
  }
}
