/**
 * Inference of an exported RetinaNet in onnxruntime-node (CPU provider) vs onestage on the same machine,
 * inputs and weights: forward + post-processing (detect) for both.
 *
 *   npx ts-node --transpile-only bench/onnx_inference.ts [--model retinanet|nanodet-plus-m] [--depth 50] [--sizes 512,640] [--batch 1] [--iterations 5]
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { Model, Tensor } from '../lib';
import { tempDir } from '../test/helpers/python';

async function main(): Promise<void> {
  const { Command } = await import('commander');
  const o = new Command().option('--model <name>', "'retinanet' (ResNet --depth) or 'nanodet-plus-m' (the m-416 preset)", 'retinanet').option('--depth <n>', 'ResNet depth', '50').option('--sizes <list>', 'square input sides', '512,640').option('--batch <n>', 'batch', '1').option('--iterations <n>', 'timed runs', '5').parse().opts<{ model: string; depth: string; sizes: string; batch: string; iterations: string }>();
  const ort = await import('onnxruntime-node');
  const nanodet = o.model === 'nanodet-plus-m';
  if (!nanodet && o.model !== 'retinanet') throw new RangeError(`--model: expected retinanet or nanodet-plus-m, got '${o.model}'`);
  const model = (nanodet ? Model.nanodetPlus({ preset: 'm-416', numClasses: 80, seed: 0 }) : Model.retinanet({ depth: Number(o.depth) as 50, numClasses: 80, seed: 0 })).eval();
  const label = nanodet ? 'NanoDet-Plus-m' : `RetinaNet ResNet-${o.depth}`;
  const file = path.join(tempDir('onestage-bench-onnx-'), 'retinanet.onnx');
  const t0 = Date.now();
  const info = await model.exportOnnx(file, { normalize: false });
  console.log(`export: ${((Date.now() - t0) / 1000).toFixed(1)} s, ${(info.bytes / 1e6).toFixed(0)} MB`);
  const session = await ort.InferenceSession.create(file, { executionProviders: ['cpu'], intraOpNumThreads: os.cpus().length });
  const B = Number(o.batch);
  const iters = Number(o.iterations);
  const rows: string[] = [];
  for (const size of o.sizes.split(',').map(Number)) {
    const data = Float32Array.from({ length: B * 3 * size * size }, (_, i) => Math.sin(i * 0.37));
    const x = Tensor.from(data, [B, 3, size, size]);
    const feeds = { images: new ort.Tensor('float32', data, [B, 3, size, size]) };
    const time = async (f: () => Promise<unknown>) => {
      await f();
      const s = process.hrtime.bigint();
      for (let i = 0; i < iters; i++) await f();
      return Number(process.hrtime.bigint() - s) / 1e6 / iters;
    };
    const msOnestage = await time(() => model.detect(x));
    const msOrt = await time(() => session.run(feeds));
    rows.push(`| ${label} ${size}×${size}, batch ${B} | ${msOnestage.toFixed(0)} | ${msOrt.toFixed(0)} | ${(msOnestage / msOrt).toFixed(2)} |`);
    console.log(rows[rows.length - 1]);
    x.dispose();
  }
  console.log(['', `| ${label}, 80 classes, detect | onestage ms | onnxruntime-node ms | onestage / ORT |`, '| --- | --- | --- | --- |', ...rows].join('\n'));
  await session.release();
  model.dispose();
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
