/**
 * Data: the shapes generator, COCO and CSV datasets, decoding and resizing against PIL, exact box
 * geometry, the loader (coverage, determinism, responsiveness), the contrastive second view against
 * its definition, and every kind of bad input.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Batch, buildInfo, CocoDataset, contrastiveViews, cropBoxes, CsvDataset, DataLoader, disposeBatch, loadImage, makeShapes, resizeScale, Tensor, transformBoxes } from '../lib';
import sharp from 'sharp';
import { DecodePool } from '../lib/data/decode_pool';
import { fromTensor, readBundle, writeBundle } from './helpers/bundle';
import { native } from '../lib/binding';
import { assertClose } from './helpers/close';
import { runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

let shapesDir: Promise<string> | undefined;
/** One small shapes dataset shared by the tests of this file (made once; tests run concurrently). */
function shapes(): Promise<string> {
  shapesDir ??= (async () => {
    const dir = tempDir();
    await makeShapes({ out: dir, train: 24, val: 6, size: 96, classes: 3, seed: 5 });
    return dir;
  })();
  return shapesDir;
}

function hashFolder(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else h.update(e.name).update(fs.readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex');
}

async function collect(loader: DataLoader, epoch: number): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of loader.epoch(epoch)) out.push(b);
  return out;
}

test('shapes: deterministic for a seed, valid COCO with crowd regions and empty images', async (t) => {
  const [a, b, c] = [tempDir(), tempDir(), tempDir()];
  await makeShapes({ out: a, train: 30, val: 2, size: 64, seed: 3 });
  await makeShapes({ out: b, train: 30, val: 2, size: 64, seed: 3 });
  await makeShapes({ out: c, train: 30, val: 2, size: 64, seed: 4 });
  t.is(hashFolder(a), hashFolder(b));
  t.not(hashFolder(a), hashFolder(c));
  const ds = await CocoDataset.open(path.join(a, 'instances_train.json'));
  t.deepEqual(ds.classes, ['circle', 'square', 'triangle']);
  t.is(ds.length, 30);
  const all = Array.from({ length: ds.length }, (_, i) => ds.record(i));
  t.true(all.some((r) => r.labels.length === 0), 'some images have no objects');
  t.true(all.every((r) => fs.existsSync(r.file)));
  const big = tempDir();
  await makeShapes({ out: big, train: 120, val: 0, size: 64, seed: 1, classes: 10 });
  const many = await CocoDataset.open(path.join(big, 'instances_train.json'));
  const labels = Array.from({ length: many.length }, (_, i) => Array.from(many.record(i).labels)).flat();
  t.true(labels.includes(-2), 'crowd regions are kept as ignore regions');
  t.is(new Set(labels.filter((l) => l >= 0)).size, 10);
  await t.throwsAsync(makeShapes({ out: tempDir(), classes: 11 }), { instanceOf: RangeError, message: /classes/ });
});

test('decode: loader tensors equal PIL decoding + ImageNet normalisation of the same PNGs to 1e-6', async (t) => {
  const dir = tempDir();
  const rng = new Rng(8);
  const files: string[] = [];
  for (const [w, h] of [[40, 30], [32, 48]]) {
    const file = path.join(dir, `img${files.length}.png`);
    await sharp(Buffer.from(Uint8Array.from({ length: w * h * 3 }, () => rng.integer(0, 256))), { raw: { width: w, height: h, channels: 3 } }).png().toFile(file);
    files.push(file);
  }
  const coco = { images: files.map((f, i) => ({ id: i + 1, file_name: path.basename(f) })), annotations: [], categories: [{ id: 1, name: 'thing' }] };
  fs.writeFileSync(path.join(dir, 'ann.json'), JSON.stringify(coco));
  const ds = await CocoDataset.open(path.join(dir, 'ann.json'));
  // minSide 30 keeps image 0 at 40×30; image 1 (32×48) would be scaled, so take it in its own run
  runReference('data_ref.py', ['decode', path.join(dir, 'ref'), ...files]);
  const { tensors: ref } = readBundle(path.join(dir, 'ref'));
  for (const [k, minSide] of [[0, 30], [1, 32]] as const) {
    const loader = new DataLoader(ds, { batchSize: 2, shuffle: false, augment: false, groupByAspectRatio: false, transform: { minSide, maxSide: 1000, padMultiple: 1 } });
    const [batch] = await collect(loader, 0);
    const i = batch.files.indexOf(files[k]);
    const [h, w] = batch.inputSizes[i];
    const img = batch.images.shape;
    const data = batch.images.toArray() as Float32Array;
    const mine = new Float32Array(3 * h * w);
    for (let c = 0; c < 3; c++) for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) mine[(c * h + y) * w + x] = data[((i * 3 + c) * img[2] + y) * img[3] + x];
    assertClose(t, { shape: [3, h, w], data: mine }, ref[`image${k}`], { name: `image ${k}`, atol: 1e-6, rtol: 0 });
    disposeBatch(batch);
  }
});

test('resize: sharp linear kernel (decoder \'sharp\') vs PIL BILINEAR — shrinking within 0.5/255 mean, 4/255 max; enlarging within 2.5/255 mean', async (t) => {
  const dir = await shapes();
  const file = path.join(dir, 'train', 'train_00001.jpg');
  for (const [w, h, meanTol, maxTol] of [[57, 41, 0.5, 4], [150, 130, 2.5, 64]]) {
    const mine = await loadImage(file, { resize: { width: w, height: h }, decoder: 'sharp' });
    const out = path.join(tempDir(), 'r');
    runReference('data_ref.py', ['resize', file, String(w), String(h), out]);
    const ref = readBundle(out).tensors.image.data as Uint8Array;
    let sum = 0;
    let max = 0;
    for (let i = 0; i < ref.length; i++) {
      const d = Math.abs(ref[i] - mine.data[i]);
      sum += d;
      max = Math.max(max, d);
    }
    t.log(`${w}×${h}: mean |Δ| ${(sum / ref.length).toFixed(3)}, max ${max} (of 255)`);
    // enlarging: the two libraries place sample centres differently, which shows at sharp edges
    t.true(sum / ref.length <= meanTol && max <= maxTol, `mean ${sum / ref.length}, max ${max}`);
  }
});

test('geometry: resize rule as pytorch-retinanet; flip, resize and padding move boxes exactly', async (t) => {
  t.is(resizeScale(640, 480), 608 / 480);
  t.is(resizeScale(2000, 500), 1024 / 2000);
  const boxes = Float32Array.from([10, 20, 30, 60]);
  t.deepEqual(Array.from(transformBoxes(boxes, 100, 80, 50, 40, false)), [5, 10, 15, 30]);
  t.deepEqual(Array.from(transformBoxes(boxes, 100, 80, 50, 40, true)), [35, 10, 45, 30]);
  // through the loader: boxes follow the image's real resize factors and flips
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const loader = new DataLoader(ds, { batchSize: 4, seed: 1, transform: { minSide: 50, maxSide: 200, flip: 0.5 } });
  const byId = new Map(Array.from({ length: ds.length }, (_, k) => [ds.record(k).id, ds.record(k)]));
  let flips = 0;
  for await (const b of loader.epoch(0)) {
    const ann = b.annotations.toArray() as Float32Array;
    const M = b.annotations.shape[1];
    b.ids.forEach((id, i) => {
      const r = byId.get(id)!;
      const [h, w] = b.inputSizes[i];
      const expected = transformBoxes(r.boxes, r.width!, r.height!, w, h, b.flipped[i]);
      flips += b.flipped[i] ? 1 : 0;
      t.deepEqual(Array.from(ann.subarray(i * M * 5, i * M * 5 + r.labels.length * 5)).filter((_, k) => k % 5 !== 4), Array.from(expected));
      t.true(b.images.shape[2] % 32 === 0 && b.images.shape[3] % 32 === 0 && b.images.shape[2] >= h && b.images.shape[3] >= w);
    });
    disposeBatch(b);
  }
  t.true(flips > 0);
});

test('crop: random crops cut the image and move, clip or drop boxes exactly', async (t) => {
  const c = cropBoxes(Float32Array.from([10, 10, 30, 30, 0, 0, 12, 12, 40, 40, 50, 50]), Int32Array.from([0, 1, 2]), { x: 5, y: 5, width: 20, height: 40 });
  // first clipped; second keeps 7×7 of 12×12 (34 % ≥ 25 %); third outside the window
  t.deepEqual(Array.from(c.boxes), [5, 5, 20, 25, 0, 0, 7, 7]);
  t.deepEqual(Array.from(c.labels), [0, 1]);
  t.deepEqual(Array.from(cropBoxes(Float32Array.from([0, 0, 12, 12]), Int32Array.from([1]), { x: 5, y: 5, width: 20, height: 40 }, 0.4).labels), []);
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const byId = new Map(Array.from({ length: ds.length }, (_, k) => [ds.record(k).id, ds.record(k)]));
  const loader = new DataLoader(ds, { batchSize: 4, seed: 2, transform: { minSide: 96, maxSide: 96, crop: { p: 1, minSize: 0.5 } } });
  for await (const b of loader.epoch(0)) {
    const ann = b.annotations.toArray() as Float32Array;
    const M = b.annotations.shape[1];
    b.ids.forEach((id, i) => {
      const r = byId.get(id)!;
      const crop = b.crops[i]!;
      t.deepEqual(b.inputSizes[i], [crop.height, crop.width]);
      const expected = cropBoxes(transformBoxes(r.boxes, r.width!, r.height!, 96, 96, b.flipped[i]), r.labels, crop);
      const got = Array.from(ann.subarray(i * M * 5, (i + 1) * M * 5)).filter((_, k) => k < expected.labels.length * 5 && k % 5 !== 4);
      t.deepEqual(got, Array.from(expected.boxes));
    });
    disposeBatch(b);
  }
});

test('loader: every image exactly once per epoch; the same seed gives the same batches; epochs differ', async (t) => {
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const make = (seed: number) => new DataLoader(ds, { batchSize: 5, seed, transform: { minSide: 64, maxSide: 96 } });
  const a = await collect(make(7), 0);
  const ids = a.flatMap((b) => b.ids).sort();
  t.deepEqual(ids, Array.from({ length: ds.length }, (_, i) => ds.record(i).id).sort());
  t.is(a.length, make(7).length);
  const b = await collect(make(7), 0);
  t.deepEqual(a.map((x) => x.ids), b.map((x) => x.ids));
  t.deepEqual(a.map((x) => x.flipped), b.map((x) => x.flipped));
  t.deepEqual(a[0].images.toArray(), b[0].images.toArray());
  const e1 = await collect(make(7), 1);
  t.notDeepEqual(a.map((x) => x.ids), e1.map((x) => x.ids));
  const dropped = await collect(new DataLoader(ds, { batchSize: 5, dropLast: true, transform: { minSide: 64 } }), 0);
  t.is(dropped.length, Math.floor(ds.length / 5));
  t.true(dropped.every((x) => x.ids.length === 5));
  for (const x of [...a, ...b, ...e1, ...dropped]) disposeBatch(x);
});

test('loader: prefetching keeps the event loop responsive', async (t) => {
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const loader = new DataLoader(ds, { batchSize: 4, prefetch: 3, transform: { minSide: 96, maxSide: 96 } });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 2);
  const started = Date.now();
  for await (const b of loader.epoch(0)) disposeBatch(b);
  clearInterval(timer);
  const elapsed = Date.now() - started;
  t.true(ticks >= Math.min(5, elapsed / 20), `${ticks} ticks in ${elapsed} ms`);
});

test('views: the second view equals the zoom-and-paste definition (Python, pixel by pixel); annotations unchanged', async (t) => {
  const rng = new Rng(12);
  const [B, C, H, W] = [2, 3, 24, 28];
  const images = rng.normal(B * C * H * W);
  const ann = Float32Array.from([2.3, 3.1, 20.2, 19.7, 0, 5, 6, 11.5, 13, 1, 14, 2, 26, 9.4, 2, /* image 2 */ 0, 0, 28, 24, 1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1]);
  const factors = Float32Array.from([2.5, 2]);
  const dir = tempDir();
  writeBundle(path.join(dir, 'in'), { images: { shape: [B, C, H, W], dtype: 'float32', data: images }, annotations: { shape: [B, 3, 5], dtype: 'float32', data: ann }, factors: { shape: [B], dtype: 'float32', data: factors } });
  runReference('data_ref.py', ['views', path.join(dir, 'in'), path.join(dir, 'out')]);
  for (const device of ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])] as const) {
    const views = await contrastiveViews(Tensor.from(images, [B, C, H, W], { device }), Tensor.from(ann, [B, 3, 5], { device }), Tensor.from(factors, [B], { device }));
    t.is(views.device, device === 'cpu' ? 'cpu' : 'cuda:0');
    assertClose(t, fromTensor(views), readBundle(path.join(dir, 'out')).tensors.views, { name: `views (${device})`, atol: 1e-5, rtol: 1e-5 });
  }
  // through the loader: views come with the batch, same shape, boxes shared
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const loader = new DataLoader(ds, { batchSize: 3, views: 2, transform: { minSide: 64, maxSide: 96 } });
  const [batch] = await collect(loader, 0);
  t.deepEqual(batch.views!.shape, batch.images.shape);
  disposeBatch(batch);
});

test('csv: pytorch-retinanet format with images without objects and relative paths', async (t) => {
  const dir = await shapes();
  const ds = await CocoDataset.open(path.join(dir, 'instances_train.json'));
  const lines: string[] = [];
  for (let i = 0; i < 6; i++) {
    const r = ds.record(i);
    const rel = path.relative(dir, r.file);
    if (r.labels.length === 0) lines.push(`${rel},,,,,`);
    for (let k = 0; k < r.labels.length; k++) if (r.labels[k] >= 0) lines.push(`${rel},${Array.from(r.boxes.subarray(4 * k, 4 * k + 4)).join(',')},${ds.classes[r.labels[k]]}`);
  }
  lines.push('train/train_00001.jpg,,,,,');
  fs.writeFileSync(path.join(dir, 'ann.csv'), lines.join('\n'));
  fs.writeFileSync(path.join(dir, 'classes.csv'), ds.classes.map((c, i) => `${c},${i}`).join('\n'));
  const csv = await CsvDataset.open(path.join(dir, 'ann.csv'), path.join(dir, 'classes.csv'));
  t.deepEqual(csv.classes, ds.classes);
  t.true(csv.length <= 6 && csv.length >= 5);
  t.true(fs.existsSync(csv.record(0).file));
  const [batch] = await collect(new DataLoader(csv, { batchSize: 8, transform: { minSide: 64 } }), 0);
  t.is(batch.ids.length, csv.length);
  disposeBatch(batch);
});

test('bad input: each kind gives an error naming the file (and line), or is skipped and reported', async (t) => {
  const dir = tempDir();
  const good = path.join(await shapes(), 'train', 'train_00002.jpg');
  const bytes = fs.readFileSync(good);
  fs.writeFileSync(path.join(dir, 'truncated.jpg'), bytes.subarray(0, bytes.length / 2));
  fs.writeFileSync(path.join(dir, 'notimage.jpg'), 'hello, I am text');
  fs.copyFileSync(good, path.join(dir, 'good.jpg'));
  const coco = (files: string[], extra: object = {}) => ({ images: files.map((f, i) => ({ id: i + 1, file_name: f, width: 96, height: 96 })), annotations: [], categories: [{ id: 1, name: 'a' }], ...extra });
  const write = (name: string, content: unknown) => {
    fs.writeFileSync(path.join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
    return path.join(dir, name);
  };
  await t.throwsAsync(CocoDataset.open(write('bad.json', '{"images": [')), { message: /bad\.json: malformed JSON/ });
  await t.throwsAsync(CocoDataset.open(write('u1.json', coco(['good.jpg'], { annotations: [{ id: 9, image_id: 5, category_id: 1, bbox: [0, 0, 5, 5] }] }))), { message: /annotation 9 references unknown image id 5/ });
  await t.throwsAsync(CocoDataset.open(write('u2.json', coco(['good.jpg'], { annotations: [{ id: 3, image_id: 1, category_id: 7, bbox: [0, 0, 5, 5] }] }))), { message: /annotation 3 references unknown category id 7/ });
  const clipped = await CocoDataset.open(write('clip.json', coco(['good.jpg'], { annotations: [{ id: 1, image_id: 1, category_id: 1, bbox: [80, 80, 30, 30] }, { id: 2, image_id: 1, category_id: 1, bbox: [10, 10, 0, 5] }] })));
  t.deepEqual(Array.from(clipped.record(0).boxes), [80, 80, 96, 96]);
  t.is(clipped.warnings.length, 2);
  t.regex(clipped.warnings.map((w) => w.message).join('\n'), /clipped to the image.*\n.*dropped: zero or negative size/);

  const errorFor = async (file: string, options = {}) => {
    const ds = await CocoDataset.open(write(`${file}.json`, coco([file])));
    const loader = new DataLoader(ds, { batchSize: 1, transform: { minSide: 64 }, ...options });
    return t.throwsAsync(collect(loader, 0));
  };
  t.regex((await errorFor('missing.jpg'))!.message, /missing\.jpg: image file not found/);
  t.regex((await errorFor('truncated.jpg'))!.message, /truncated\.jpg: cannot (decode|read) image/);
  t.regex((await errorFor('notimage.jpg'))!.message, /notimage\.jpg: cannot (decode|read) image/);
  t.regex((await errorFor('good.jpg', { limitInputPixels: 100 }))!.message, /good\.jpg: .*pixel limit/);

  const mixed = await CocoDataset.open(write('mixed.json', coco(['good.jpg', 'missing.jpg', 'truncated.jpg', 'good.jpg'])));
  const loader = new DataLoader(mixed, { batchSize: 2, onBadSample: 'skip', shuffle: false, groupByAspectRatio: false, transform: { minSide: 64 } });
  const batches = await collect(loader, 0);
  t.is(batches.flatMap((b) => b.files).length, 2);
  t.deepEqual(loader.skipped.map((s) => path.basename(s.file)).sort(), ['missing.jpg', 'truncated.jpg']);
  for (const b of batches) disposeBatch(b);

  fs.writeFileSync(path.join(dir, 'classes.csv'), 'a,0\nb,1\n');
  const csvErr = async (content: string) => {
    fs.writeFileSync(path.join(dir, 'a.csv'), content);
    return (await t.throwsAsync(CsvDataset.open(path.join(dir, 'a.csv'), path.join(dir, 'classes.csv'))))!.message;
  };
  t.regex(await csvErr('good.jpg,1,2,3,4,a\ngood.jpg,1,2,3,a\n'), /a\.csv:2: expected 'path,x1,y1,x2,y2,class_name' \(6 columns\) but found 5/);
  t.regex(await csvErr('good.jpg,1,2,three,4,a\n'), /a\.csv:1: x2 'three' is not a number/);
  t.regex(await csvErr('good.jpg,1,2,3,4,zebra\n'), /a\.csv:1: class 'zebra' is not in/);
  fs.writeFileSync(path.join(dir, 'ok.csv'), 'good.jpg,1,2,3,4,a\n');
  fs.writeFileSync(path.join(dir, 'classes2.csv'), 'a,0\nb\n');
  await t.throwsAsync(CsvDataset.open(path.join(dir, 'ok.csv'), path.join(dir, 'classes2.csv')), { message: /classes2\.csv:2: expected 'class_name,id'/ });
  t.throws(() => new DataLoader(mixed, { batchSize: 0 }), { instanceOf: RangeError, message: /options\.batchSize/ });
});

test('collate: images normalised after a uint8 upload (the CUDA loader\'s path) equal those normalised on the host, bit for bit, zero padded', async (t) => {
  const rng = new Rng(12);
  // three sizes in one padded batch (below and right of each image), every byte value present
  const sizes = [[5, 7], [9, 4], [3, 11]];
  const images = sizes.map(([h, w]) => Uint8Array.from({ length: h * w * 3 }, (_, i) => (i < 256 ? i : rng.integer(0, 256))));
  images[1].fill(255, 0, 3);
  const mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225];
  for (const device of ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])]) {
    const host = new Tensor(await native().collateImagesAsync(images, sizes.flat(), 10, 12, mean, std, device, 'host'));
    const packed = new Tensor(await native().collateImagesAsync(images, sizes.flat(), 10, 12, mean, std, device, 'device'));
    t.deepEqual(packed.shape, [3, 3, 10, 12]);
    t.is(packed.device, host.device);
    const a = host.toArray() as Float32Array, b = packed.toArray() as Float32Array;
    t.deepEqual(Buffer.from(b.buffer, b.byteOffset, b.byteLength), Buffer.from(a.buffer, a.byteOffset, a.byteLength), device);
    // the padding of image 0 (5×7 in 10×12) is zero; its first pixel is (0/255 − mean)/std
    t.is(b[0 * 120 + 6 * 12 + 2], 0);
    t.is(b[0 * 120 + 2 * 12 + 9], 0);
    t.is(b[0], Math.fround((0 - mean[0]) / std[0]));
    host.dispose();
    packed.dispose();
  }
  t.throws(() => native().collateImagesAsync(images, sizes.flat(), 10, 12, mean, std, 'cpu', 'gpu' as 'device'), { instanceOf: RangeError, message: /Expected 'host' or 'device' for normalise but received 'gpu'/ });
});

(buildInfo().cudaAvailable ? test : test.skip)('loader on CUDA: batches uploaded through page-locked memory equal the CPU loader\'s, images, annotations and views, every batch of two epochs', async (t) => {
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const make = (device: 'cpu' | 'cuda') => new DataLoader(ds, { batchSize: 3, seed: 4, shuffle: true, views: 2, prefetch: 3, device, transform: { minSide: 64, maxSide: 96 } });
  const cpu = make('cpu'), gpu = make('cuda');
  let batches = 0;
  for (const epoch of [0, 1]) {
    const a = await collect(cpu, epoch);
    const b = await collect(gpu, epoch);
    t.is(a.length, b.length);
    a.forEach((x, i) => {
      const y = b[i];
      t.is(y.images.device, 'cuda:0');
      t.is(y.annotations.device, 'cuda:0');
      t.deepEqual(y.ids, x.ids);
      t.deepEqual(Array.from(y.images.toArray() as Float32Array), Array.from(x.images.toArray() as Float32Array));
      t.deepEqual(Array.from(y.annotations.toArray() as Float32Array), Array.from(x.annotations.toArray() as Float32Array));
      assertClose(t, fromTensor(y.views!), fromTensor(x.views!), { name: `views ${epoch}/${i}`, atol: 1e-5, rtol: 1e-5 });
      batches++;
    });
    [...a, ...b].forEach(disposeBatch);
  }
  t.true(batches >= 4);
});

test('thread pool: importing onestage sizes libuv\'s pool to the cores (4 to 64) unless UV_THREADPOOL_SIZE is set, which it keeps; sharp loaded first is reported', (t) => {
  const { spawnSync } = require('node:child_process') as typeof import('node:child_process');
  const root = path.join(__dirname, '..');
  // a 16-core machine for the child (os.availableParallelism and os.cpus answer 16), so the pool's real
  // size shows in the process's thread count: after an asynchronous file read, the pool is running
  const dir = tempDir();
  const cores16 = path.join(dir, 'cores16.js');
  fs.writeFileSync(cores16, "const os = require('os'); const c = os.cpus; os.availableParallelism = () => 16; os.cpus = () => Array.from({ length: 16 }, () => c()[0]);\n");
  const probe = (env: NodeJS.ProcessEnv, first = '', fake = false) => {
    const script = `${first} require('./lib'); require('fs').readFile('package.json', () => console.log(JSON.stringify({ size: process.env.UV_THREADPOOL_SIZE, threads: require('fs').readdirSync('/proc/self/task').length })));`;
    const r = spawnSync(process.execPath, [...(fake ? ['-r', cores16] : []), '-r', 'ts-node/register/transpile-only', '-e', script], { cwd: root, env, encoding: 'utf8' });
    t.is(r.status, 0, r.stderr);
    return { ...(JSON.parse(r.stdout.trim()) as { size: string; threads: number }), stderr: r.stderr };
  };
  const { UV_THREADPOOL_SIZE: _drop, ...without } = process.env;
  void _drop;
  const os = require('node:os') as typeof import('node:os');
  const cores = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  t.is(probe(without).size, String(Math.min(64, Math.max(4, cores))));
  t.is(probe({ ...without, UV_THREADPOOL_SIZE: '7' }).size, '7');
  // the pool really has 16 threads: as many threads as a process told 16 in its environment, 12 more than one told 4
  const ours = probe(without, '', true);
  const told16 = probe({ ...without, UV_THREADPOOL_SIZE: '16' }, '', true);
  const told4 = probe({ ...without, UV_THREADPOOL_SIZE: '4' }, '', true);
  t.is(ours.size, '16');
  t.is(ours.threads, told16.threads);
  t.is(told16.threads - told4.threads, 12);
  t.notRegex(ours.stderr, /ONESTAGE_THREADPOOL/);
  // sharp first: the pool started at 4 before onestage could size it, and a warning says so
  const late = probe(without, "require('sharp');", true);
  t.is(late.threads, told4.threads);
  t.regex(late.stderr, /sharp was loaded before onestage.*UV_THREADPOOL_SIZE=16/);
});

test.serial('loader: an image\'s size is read from its file once; later epochs reuse it and give the same batches', async (t) => {
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const loader = new DataLoader(ds, { batchSize: 4, seed: 2, shuffle: false, augment: false, transform: { minSide: 64, maxSide: 64 } });
  // header reads go through the native JPEG header reader (these are JPEGs) or sharp's metadata(): count
  // them (the loader and this test share one binding object and one sharp module)
  const proto = Object.getPrototypeOf(sharp({ create: { width: 1, height: 1, channels: 3, background: '#000' } })) as { metadata: (...a: unknown[]) => unknown };
  const binding = native() as unknown as { jpegHeaderAsync: (...a: unknown[]) => unknown };
  const metadata = proto.metadata;
  const jpegHeader = binding.jpegHeaderAsync;
  let reads = 0;
  proto.metadata = function (this: unknown, ...a: unknown[]) {
    reads++;
    return metadata.apply(this, a);
  };
  binding.jpegHeaderAsync = (...a: unknown[]) => {
    reads++;
    return jpegHeader.apply(binding, a);
  };
  const sums: number[][] = [];
  const perEpoch: number[] = [];
  try {
    for (const epoch of [0, 1]) {
      const s: number[] = [];
      const before = reads;
      for await (const b of loader.epoch(epoch)) {
        s.push((b.images.toArray() as Float32Array).reduce((a, v) => a + v, 0), ...b.scales);
        disposeBatch(b);
      }
      perEpoch.push(reads - before);
      sums.push(s);
    }
  } finally {
    proto.metadata = metadata;
    binding.jpegHeaderAsync = jpegHeader;
  }
  t.is(perEpoch[0], ds.length);
  t.is(perEpoch[1], 0);
  t.deepEqual(sums[1], sums[0]);
});

test('loader: decoding in worker threads (decodeWorkers) gives the same batches as on the JavaScript thread, and the same errors', async (t) => {
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const transform = { minSide: 64, maxSide: 96, scaleJitter: [0.8, 1.2] as [number, number], photometric: { brightness: 0.2, saturation: 0.2, hue: 10 }, crop: { p: 0.5, minSize: 0.6 } };
  // decoder 'sharp': the workers decode what the native JPEG decoder does not take — here, everything
  const make = (decodeWorkers: number) => new DataLoader(ds, { batchSize: 3, seed: 4, views: 2, transform, decodeWorkers, decoder: 'sharp' });
  t.is(new DataLoader(ds).decodeWorkerCount, 0); // 'auto' on the CPU
  const plain = await collect(make(0), 1);
  const loader = make(2);
  t.is(loader.decodeWorkerCount, 2);
  for (const epoch of [1, 1]) {
    // the second pass reuses the shared buffers the first one gave back
    const pooled = await collect(loader, epoch);
    t.is(pooled.length, plain.length);
    for (let k = 0; k < plain.length; k++) {
      const [a, b] = [plain[k], pooled[k]];
      t.deepEqual(b.ids, a.ids);
      t.deepEqual([b.flipped, b.crops, b.inputSizes, b.scales], [a.flipped, a.crops, a.inputSizes, a.scales]);
      t.deepEqual(b.images.toArray(), a.images.toArray());
      t.deepEqual(b.views!.toArray(), a.views!.toArray());
      t.deepEqual(b.annotations.toArray(), a.annotations.toArray());
    }
    for (const b of pooled) disposeBatch(b);
  }
  t.true(plain.some((b) => b.crops.some((c) => c !== null)));
  for (const b of plain) disposeBatch(b);
  await loader.close();

  const dir = tempDir();
  const good = path.join(await shapes(), 'train', 'train_00002.jpg');
  fs.writeFileSync(path.join(dir, 'truncated.jpg'), fs.readFileSync(good).subarray(0, 500));
  fs.copyFileSync(good, path.join(dir, 'good.jpg'));
  const coco = { images: ['good.jpg', 'truncated.jpg', 'missing.jpg'].map((f, i) => ({ id: i + 1, file_name: f, width: 96, height: 96 })), annotations: [], categories: [{ id: 1, name: 'a' }] };
  fs.writeFileSync(path.join(dir, 'c.json'), JSON.stringify(coco));
  const bad = await CocoDataset.open(path.join(dir, 'c.json'));
  const strict = new DataLoader(bad, { batchSize: 3, shuffle: false, groupByAspectRatio: false, transform: { minSide: 64 }, decodeWorkers: 1 });
  await t.throwsAsync(collect(strict, 0), { message: /(truncated|missing)\.jpg: (cannot (decode|read) image|image file not found)/ });
  const skipping = new DataLoader(bad, { batchSize: 3, shuffle: false, groupByAspectRatio: false, transform: { minSide: 64 }, decodeWorkers: 1, onBadSample: 'skip' });
  const kept = await collect(skipping, 0);
  t.deepEqual(kept.flatMap((b) => b.files.map((f) => path.basename(f))), ['good.jpg']);
  t.deepEqual(skipping.skipped.map((s) => path.basename(s.file)).sort(), ['missing.jpg', 'truncated.jpg']);
  for (const b of kept) disposeBatch(b);
  t.throws(() => new DataLoader(bad, { decodeWorkers: -1 }), { instanceOf: RangeError, message: /options\.decodeWorkers/ });

  // a picture larger than the buffer offered (1 MiB at least) comes back in a buffer of its own, the same
  // bytes; a closed pool refuses further work with a message
  const pool = new DecodePool(1);
  const big = { resize: { width: 700, height: 700 }, flip: true };
  const [direct, pooled] = await Promise.all([loadImage(good, { ...big, decoder: 'sharp' }), pool.load(good, big, 3)]);
  t.is(pooled.data.byteLength, 700 * 700 * 3);
  t.deepEqual([pooled.width, pooled.height], [700, 700]);
  t.true(Buffer.from(pooled.data).equals(Buffer.from(direct.data)));
  pooled.release();
  await pool.close();
  await t.throwsAsync(pool.load(good, {}, 3), { message: /image decoding workers were closed/ });
});

test.serial('loader: prepare(epoch) starts an epoch\'s first batches ahead — the epoch then gives the same batches; batches prepared and not taken are freed', async (t) => {
  const { liveTensors } = await import('../lib');
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const make = () => new DataLoader(ds, { batchSize: 4, seed: 3, prefetch: 2, transform: { minSide: 64, maxSide: 64, scaleJitter: [0.9, 1.1] } });
  const summary = (bs: Batch[]) => bs.map((b) => [b.ids, b.flipped, b.scales, Array.from(b.images.toArray() as Float32Array).reduce((a, v) => a + v, 0)]);
  const fresh = await collect(make(), 1);
  const expected = summary(fresh);
  for (const b of fresh) disposeBatch(b);
  const base = liveTensors();
  const loader = make();
  loader.prepare(1);
  await new Promise((r) => setTimeout(r, 200)); // let the prepared batches load
  t.true(liveTensors() > base, 'prepared batches are loaded ahead');
  const got = await collect(loader, 1);
  t.deepEqual(summary(got), expected);
  for (const b of got) disposeBatch(b);
  t.is(liveTensors(), base);
  // prepared, then another epoch iterated: the prepared batches are freed, the epoch is right
  loader.prepare(2);
  const other = await collect(loader, 1);
  t.deepEqual(summary(other), expected);
  for (const b of other) disposeBatch(b);
  t.is(liveTensors(), base);
  // prepared and discarded
  loader.prepare(3);
  await new Promise((r) => setTimeout(r, 100));
  await loader.discardPrepared();
  t.is(liveTensors(), base);
  t.throws(() => loader.prepare(-1), { instanceOf: RangeError, message: /epoch/ });
});

test.serial('loader: decodeConcurrency bounds the pictures decoded at once (default: the pool less 2), with the same batches', async (t) => {
  const ds = await CocoDataset.open(path.join(await shapes(), 'instances_train.json'));
  const make = (decodeConcurrency?: number) => new DataLoader(ds, { batchSize: 4, seed: 6, prefetch: 3, transform: { minSide: 64, maxSide: 96 }, ...(decodeConcurrency ? { decodeConcurrency } : {}) });
  const pool = Number(process.env.UV_THREADPOOL_SIZE);
  t.is(make().decodeConcurrency, Math.max(2, pool - 2));
  // decodes go through the native JPEG decoder (these are JPEGs) or sharp's toBuffer(): count those under
  // way (the loader and this test share one binding object and one sharp module)
  const proto = Object.getPrototypeOf(sharp({ create: { width: 1, height: 1, channels: 3, background: '#000' } })) as { toBuffer: (...a: unknown[]) => Promise<unknown> };
  const binding = native() as unknown as { decodeJpegAsync: (...a: unknown[]) => Promise<unknown> };
  const toBuffer = proto.toBuffer;
  const decodeJpeg = binding.decodeJpegAsync;
  let now = 0;
  let most = 0;
  const counted = (f: (...a: unknown[]) => Promise<unknown>) =>
    async function (this: unknown, ...a: unknown[]) {
      most = Math.max(most, ++now);
      try {
        return await f.apply(this, a);
      } finally {
        now--;
      }
    };
  proto.toBuffer = counted(toBuffer);
  binding.decodeJpegAsync = counted(decodeJpeg);
  const sums: number[][] = [];
  const mosts: number[] = [];
  try {
    for (const c of [1, 2, 8]) {
      most = 0;
      const s: number[] = [];
      for await (const b of make(c).epoch(0)) {
        s.push((b.images.toArray() as Float32Array).reduce((a, v) => a + v, 0));
        disposeBatch(b);
      }
      sums.push(s);
      mosts.push(most);
    }
  } finally {
    proto.toBuffer = toBuffer;
    binding.decodeJpegAsync = decodeJpeg;
  }
  t.is(mosts[0], 1);
  t.is(mosts[1], 2);
  t.true(mosts[2] > 2 && mosts[2] <= 8, `${mosts[2]} at once with decodeConcurrency 8`);
  t.deepEqual(sums[1], sums[0]);
  t.deepEqual(sums[2], sums[0]);
  t.throws(() => new DataLoader(ds, { decodeConcurrency: 0 }), { instanceOf: RangeError, message: /options\.decodeConcurrency/ });
});
