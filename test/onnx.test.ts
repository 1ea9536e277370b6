import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { onnx } from 'onnx-proto';
import { CocoDataset, DataLoader, decodeBoxes, centrePriors, generateAnchors, loadImage, makeShapes, Model, Tensor, disposeBatch } from '../lib';
import { OnnxGraph } from '../lib/onnx/graph';
import { anchorsGraph, decodeDeltas, priorsGraph } from '../lib/onnx/export';
import { Rng } from '../lib/data/random';
import { randomModel, runOrt } from './helpers/onnx';
import { tempDir } from './helpers/python';

const dir = tempDir('onestage-onnx-test-');
const RAW_TOL = 1e-4;

/** max |a − b| / (1 + |b|) */
function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / (1 + Math.abs(b[i])));
  return m;
}

type OrtOut = Awaited<ReturnType<typeof runOrt>>;

/** Detections of image b of an ONNX 'detections' output equal model.detect's: same count, each matched by label, score ≤ 1e-5, box ≤ 1e-3 px. */
function sameDetections(o: OrtOut, b: number, d: { boxes: Float32Array; scores: Float32Array; labels: Int32Array }): string | null {
  const count = Number((o.count.data as BigInt64Array)[b]);
  if (count !== d.scores.length) return `image ${b}: ONNX ${count} detections, onestage ${d.scores.length}`;
  const D = o.scores.dims[1];
  const used = new Set<number>();
  for (let i = 0; i < count; i++) {
    // the same rank, or a neighbour with an equal score (ties may swap)
    let found = -1;
    for (let j = Math.max(0, i - 3); j < Math.min(count, i + 4) && found < 0; j++) {
      if (used.has(j)) continue;
      const s = (o.scores.data as Float32Array)[b * D + j];
      const l = Number((o.labels.data as BigInt64Array)[b * D + j]);
      let box = 0;
      for (let k = 0; k < 4; k++) box = Math.max(box, Math.abs((o.boxes.data as Float32Array)[(b * D + j) * 4 + k] - d.boxes[i * 4 + k]));
      if (l === d.labels[i] && Math.abs(s - d.scores[i]) <= 1e-5 && box <= 1e-3) found = j;
    }
    if (found < 0) return `image ${b}: onestage detection ${i} (label ${d.labels[i]}, score ${d.scores[i]}) has no ONNX match`;
    used.add(found);
  }
  // padding rows
  for (let j = count; j < D; j++) if (Number((o.labels.data as BigInt64Array)[b * D + j]) !== -1) return `image ${b}: padding row ${j} has a label`;
  return null;
}

/** (v / 255 − mean) / std as onestage's loader computes it (float64, then float32). */
function normalise(pixels: Float32Array, H: number, W: number): Float32Array {
  const mean = [0.485, 0.456, 0.406];
  const std = [0.229, 0.224, 0.225];
  const out = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) {
    const c = Math.floor(i / (H * W)) % 3;
    out[i] = (pixels[i] / 255 - mean[c]) / std[c];
  }
  return out;
}

const CASES = [
  { name: 'RetinaNet ResNet-18, pytorch-retinanet box coder', model: { architecture: 'retinanet' as const, numClasses: 3, depth: 18 as const, featureSize: 64 } },
  { name: 'RetinaNet ResNet-50, box std 1 with a delta clamp', model: { architecture: 'retinanet' as const, numClasses: 4, depth: 50 as const, featureSize: 32, boxCoder: { std: [1, 1, 1, 1] as [number, number, number, number], maxDeltaExp: Math.log(1000 / 16) } } },
  { name: 'NanoDet-Plus ResNet-18, depthwise head, strides 8–64', model: { architecture: 'nanodet-plus' as const, numClasses: 3, depth: 18 as const, featureSize: 64, head: { channels: 64 } } },
  // Ghost-PAN concatenates ×2-upsampled levels with the next: sizes divisible by 32, as NanoDet's
  { name: 'NanoDet-Plus-m (ShuffleNetV2 1.0x, Ghost-PAN)', model: { architecture: 'nanodet-plus' as const, numClasses: 3, preset: 'm-320' as const }, sizes: [[1, 128, 128], [4, 96, 160]] },
  { name: 'NanoDet-Plus ResNet-34, plain conv head, strides 8–32', model: { architecture: 'nanodet-plus' as const, numClasses: 2, depth: 34 as const, featureSize: 32, strides: [8, 16, 32], head: { channels: 32, convType: 'conv' as const, stackedConvs: 1 } } },
];

for (const [ci, c] of CASES.entries()) {
  test.serial(`ONNX ${c.name}: raw outputs equal forward, detections equal detect (batch 1 and 4, even and odd sizes)`, async (t) => {
    const model = await randomModel(c.model, ci);
    const raw = path.join(dir, `raw-${ci}.onnx`);
    const det = path.join(dir, `det-${ci}.onnx`);
    await model.exportOnnx(raw, { postprocess: 'raw', normalize: false });
    await model.exportOnnx(det);
    const rng = new Rng(10 + ci);
    const retina = c.model.architecture === 'retinanet';
    for (const [B, H, W] of (c as { sizes?: number[][] }).sizes ?? [[1, 128, 128], [4, 97, 130]]) {
      const pixels = Float32Array.from(rng.uniform(B * 3 * H * W, 0, 255), Math.round);
      const x = Tensor.from(normalise(pixels, H, W), [B, 3, H, W]);
      const o = await runOrt(raw, x);
      const f = (await model.forward(x)) as unknown as Record<string, Tensor>;
      const pairs: Array<[string, string]> = retina ? [['classification', 'classification'], ['regression', 'regression'], ['anchor_boxes', 'anchors']] : [['classification', 'classification'], ['distribution', 'distribution'], ['priors', 'priors']];
      for (const [k, ref] of pairs) {
        t.deepEqual(o[k].dims, [...f[ref].shape], `${k} shape at ${B}×${H}×${W}`);
        const d = maxRel(o[k].data as Float32Array, f[ref].toArray() as Float32Array);
        t.true(d <= RAW_TOL, `${k} at ${B}×${H}×${W}: ${d}`);
        t.log(`${B}×${H}×${W} ${k}: max |Δ|/(1+|x|) ${d.toExponential(1)}`);
      }
      for (const v of Object.values(f)) v.dispose();
      const od = await runOrt(det, { data: pixels, dims: [B, 3, H, W] });
      const dets = await model.detect(x);
      let total = 0;
      for (let b = 0; b < B; b++) {
        t.is(sameDetections(od, b, dets[b]), null);
        total += dets[b].scores.length;
      }
      t.true(total > 0, 'the random model detects something');
      x.dispose();
    }
    model.dispose();
  });
}

test.serial('ONNX detections on the shapes validation pictures: pixels normalised in the graph equal the loader, boxes equal detect', async (t) => {
  const data = path.join(dir, 'shapes');
  await makeShapes({ out: data, train: 0, val: 8, size: 128, classes: 3, seed: 0 });
  const val = await CocoDataset.open(path.join(data, 'instances_val.json'));
  const model = await randomModel({ architecture: 'retinanet', numClasses: 3, depth: 18, featureSize: 64 }, 7);
  const file = path.join(dir, 'shapes.onnx');
  await model.exportOnnx(file, { classes: ['circle', 'square', 'triangle'] });
  const loader = new DataLoader(val, { batchSize: 4, shuffle: false, augment: false, transform: { minSide: 128, maxSide: 128 } });
  let images = 0;
  for await (const batch of loader.epoch(0)) {
    try {
      const B = batch.images.shape[0];
      const pixels = new Float32Array(B * 3 * 128 * 128);
      for (let b = 0; b < B; b++) {
        const img = await loadImage(val.record(images + b).file);
        t.deepEqual([img.width, img.height], [128, 128]);
        for (let i = 0; i < 128 * 128; i++) for (let ch = 0; ch < 3; ch++) pixels[b * 3 * 128 * 128 + ch * 128 * 128 + i] = img.data[i * 3 + ch];
      }
      t.deepEqual(Array.from(normalise(pixels, 128, 128)), Array.from(batch.images.toArray() as Float32Array), 'the loader normalises as the test does');
      const o = await runOrt(file, { data: pixels, dims: [B, 3, 128, 128] });
      const dets = await model.detect(batch.images);
      for (let b = 0; b < B; b++) t.is(sameDetections(o, b, dets[b]), null);
      images += B;
    } finally {
      disposeBatch(batch);
    }
  }
  t.is(images, 8);
  const meta = Object.fromEntries(onnx.ModelProto.decode(fs.readFileSync(file)).metadataProps.map((p) => [p.key, p.value]));
  t.deepEqual(JSON.parse(meta.classes!), ['circle', 'square', 'triangle']);
  t.is(meta.architecture, 'retinanet');
  t.is(meta.normalize, 'true');
  t.deepEqual(JSON.parse(meta.mean!), [0.485, 0.456, 0.406]);
  model.dispose();
});

test.serial('ONNX pieces: anchors, priors and box decoding equal onestage for odd sizes and custom settings', async (t) => {
  const ort = await import('onnxruntime-node');
  const run = async (g: OnnxGraph, out: string, dims: number[]) => {
    g.output(out, 'out', 'float', ['n', 4]);
    const s = await ort.InferenceSession.create(g.encode({ opset: 17, graphName: 'piece', producerVersion: 'test', metadata: {} }));
    const r = await s.run({ images: new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims) });
    return r.out;
  };
  const anchors = { levels: [3, 4, 5], strides: [8, 16, 32], sizes: [20, 40, 80], ratios: [0.5, 1, 2.5], scales: [1, 1.5] };
  const g1 = new OnnxGraph();
  const img = g1.input('images', 'float', ['b', 3, 'h', 'w']);
  const a = await run(g1, anchorsGraph(g1, img, anchors).anchors, [1, 3, 77, 131]);
  const ref = generateAnchors(77, 131, anchors);
  t.deepEqual(a.dims, [...ref.shape]);
  t.deepEqual(Array.from(a.data as Float32Array), Array.from(ref.toArray() as Float32Array), 'anchors bit for bit');
  const g2 = new OnnxGraph();
  const img2 = g2.input('images', 'float', ['b', 3, 'h', 'w']);
  const p = await run(g2, priorsGraph(g2, img2, [8, 16, 32, 64, 128]).priors, [1, 3, 99, 250]);
  t.deepEqual(Array.from(p.data as Float32Array), Array.from(centrePriors(99, 250, { strides: [8, 16, 32, 64, 128] }).toArray() as Float32Array), 'priors bit for bit');
  // decoding: anchors and deltas as graph inputs
  const rng = new Rng(5);
  const anc = generateAnchors(64, 96);
  const N = anc.shape[0];
  const deltas = Tensor.from(rng.normal(2 * N * 4, 2), [2, N, 4]);
  const coder = { std: [0.1, 0.1, 0.2, 0.2] as [number, number, number, number], mean: [0.1, 0, -0.1, 0.2] as [number, number, number, number], maxDeltaExp: Math.log(1000 / 16) };
  const g3 = new OnnxGraph();
  const ai = g3.input('anchors', 'float', [N, 4]);
  const di = g3.input('deltas', 'float', [2, N, 4]);
  g3.output(decodeDeltas(g3, ai, di, coder), 'boxes', 'float', [2, N, 4]);
  const s3 = await ort.InferenceSession.create(g3.encode({ opset: 17, graphName: 'decode', producerVersion: 'test', metadata: {} }));
  const r3 = await s3.run({ anchors: new ort.Tensor('float32', anc.toArray() as Float32Array, [N, 4]), deltas: new ort.Tensor('float32', deltas.toArray() as Float32Array, [2, N, 4]) });
  const want = decodeBoxes(anc, deltas, coder);
  // equal to float32 rounding of the coordinates (boxes up to ±700 px: one ulp is 6e-5 px); exp differs in the last bit
  const got = r3.boxes.data as Float32Array;
  const exp = want.toArray() as Float32Array;
  let dd = 0;
  for (let i = 0; i < got.length; i++) dd = Math.max(dd, Math.abs(got[i] - exp[i]));
  t.true(dd <= 1.3e-4, `decoded boxes differ by ${dd} px`);
});

test.serial("ONNX files pass onnx's checker with full shape and type inference", (t) => {
  const py = ['/usr/bin/python3', 'python3'].find((p) => spawnSync(p, ['-c', 'import onnx'], { encoding: 'utf8' }).status === 0);
  if (!py) return t.fail('python3 with onnx is needed (scripts/setup.sh installs python3-onnx)');
  const files = fs.readdirSync(dir).filter((f) => f.endsWith('.onnx')).map((f) => path.join(dir, f));
  t.true(files.length >= 5);
  const script = 'import onnx,sys\nfor f in sys.argv[1:]:\n  m=onnx.load(f)\n  onnx.checker.check_model(m, full_check=True)\n  onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)\n  print("ok", f, len(m.graph.node))';
  const r = spawnSync(py, ['-c', script, ...files], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.split('\n').filter((l) => l.startsWith('ok ')).length, files.length);
});

test.serial('ONNX fixed sizes: a fixed batch and input size run, another size is refused by onnxruntime', async (t) => {
  const model = await randomModel({ architecture: 'nanodet-plus', numClasses: 3, depth: 18, featureSize: 32, head: { channels: 32 } }, 3);
  const file = path.join(dir, 'fixed.onnx');
  const r = await model.exportOnnx(file, { dynamicBatch: false, batchSize: 2, dynamicSize: false, inputSize: [96, 64], opset: 13 });
  t.deepEqual(r.inputs[0].dims, [2, 3, 96, 64]);
  t.is(r.opset, 13);
  const pixels = Float32Array.from(new Rng(1).uniform(2 * 3 * 96 * 64, 0, 255), Math.round);
  const o = await runOrt(file, { data: pixels, dims: [2, 3, 96, 64] });
  const dets = await model.detect(Tensor.from(normalise(pixels, 96, 64), [2, 3, 96, 64]));
  for (let b = 0; b < 2; b++) t.is(sameDetections(o, b, dets[b]), null);
  await t.throwsAsync(runOrt(file, { data: new Float32Array(3 * 96 * 64), dims: [1, 3, 96, 64] }));
  model.dispose();
});

test.serial('ONNX export: options it cannot express and bad paths are clear errors, and no partial file is left', async (t) => {
  const model = Model.retinanet({ numClasses: 2, depth: 18, featureSize: 16 });
  const file = path.join(dir, 'bad.onnx');
  await t.throwsAsync(model.exportOnnx(file, { opset: 11 }), { message: /opset/ });
  await t.throwsAsync(model.exportOnnx(file, { postprocess: 'boxes' as never }), { message: /postprocess/ });
  await t.throwsAsync(model.exportOnnx(file, { postprocess: 'raw', maxDetections: 10 }), { message: /maxDetections.*raw/ });
  await t.throwsAsync(model.exportOnnx(file, { dynamicSize: false }), { message: /inputSize/ });
  await t.throwsAsync(model.exportOnnx(file, { batchSize: 2 }), { message: /dynamicBatch: false/ });
  await t.throwsAsync(model.exportOnnx(file, { normalize: false, mean: [0, 0, 0] }), { message: /normalize: false/ });
  await t.throwsAsync(model.exportOnnx(file, { quantize: true } as never), { message: /quantize/ });
  await t.throwsAsync(model.exportOnnx(file, { classes: ['a'] }), { message: /classes/ });
  await t.throwsAsync(model.exportOnnx(dir), { message: /is a directory/ });
  const blocker = path.join(dir, 'a-file');
  fs.writeFileSync(blocker, 'x');
  await t.throwsAsync(model.exportOnnx(path.join(blocker, 'm.onnx')), { message: /cannot write .*a-file/ });
  t.false(fs.existsSync(file));
  t.deepEqual(fs.readdirSync(dir).filter((f) => f.includes('.tmp')), []);
  model.dispose();
});
