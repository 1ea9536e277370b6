/**
 * The native JPEG decoder (libjpeg-turbo) against Pillow: decoding, resizing (BILINEAR, with the DCT
 * scaling of Pillow's `draft` for large reductions), mirroring and cropping, byte for byte; the files it
 * declines go to sharp, with sharp's pixels and errors; the DataLoader's JPEG batches are its pixels.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Batch, buildInfo, CocoDataset, DataLoader, disposeBatch, IMAGENET_MEAN, IMAGENET_STD, LoadImageOptions, loadImage, scaledSize } from '../lib';
import sharp from 'sharp';
import { native } from '../lib/binding';
import { BadSampleError, imageSize } from '../lib/data/image';
import { readBundle } from './helpers/bundle';
import { runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

/** Photo-like RGB pixels: smooth waves plus noise (JPEG's entropy coder gets real work). */
function photo(width: number, height: number, seed: number): Buffer {
  const rng = new Rng(seed);
  const waves = Array.from({ length: 4 }, () => [rng.between(0.01, 0.2), rng.between(0.01, 0.2), rng.between(0, 6)]);
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++)
      for (let c = 0; c < 3; c++) {
        let v = 128 + rng.between(-25, 25);
        for (const [a, b, p] of waves) v += 30 * Math.sin(a * x * (c + 1) + b * y + p);
        px[(y * width + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
  return px;
}

let filesMade: Promise<Record<string, string>> | undefined;
/** The test JPEGs (4:2:0, 4:4:4, progressive, greyscale, a larger one) and the files the decoder declines. */
function files(): Promise<Record<string, string>> {
  filesMade ??= (async () => {
    const dir = tempDir();
    const raw = (w: number, h: number, seed: number) => sharp(photo(w, h, seed), { raw: { width: w, height: h, channels: 3 } });
    const out: Record<string, string> = {};
    const write = async (name: string, p: ReturnType<typeof sharp>) => {
      out[name] = path.join(dir, name);
      await p.toFile(out[name]);
    };
    await write('c420.jpg', raw(203, 157, 1).jpeg({ quality: 90 }));
    await write('c444.jpg', raw(160, 120, 2).jpeg({ quality: 95, chromaSubsampling: '4:4:4' }));
    await write('progressive.jpg', raw(150, 210, 3).jpeg({ quality: 85, progressive: true }));
    await write('grey.jpg', raw(131, 97, 4).toColourspace('b-w').jpeg({ quality: 90 }));
    await write('large.jpg', raw(480, 360, 5).jpeg({ quality: 90 }));
    await write('cmyk.jpg', raw(64, 48, 6).toColourspace('cmyk').jpeg());
    await write('icc.jpg', raw(64, 48, 7).withIccProfile('p3').jpeg());
    await write('png.png', raw(64, 48, 8).png());
    out['truncated.jpg'] = path.join(dir, 'truncated.jpg');
    fs.writeFileSync(out['truncated.jpg'], fs.readFileSync(out['c420.jpg']).subarray(0, 2000));
    // 128 KiB of comment segments before the frame header: past the header reader's first 64 KiB
    const comment = Buffer.concat([Buffer.from([0xff, 0xfe, 0xff, 0xff]), Buffer.alloc(65533, 0x61)]);
    const c420 = fs.readFileSync(out['c420.jpg']);
    out['late-header.jpg'] = path.join(dir, 'late-header.jpg');
    fs.writeFileSync(out['late-header.jpg'], Buffer.concat([c420.subarray(0, 2), comment, comment, c420.subarray(2)]));
    return out;
  })();
  return filesMade;
}

interface Case {
  file: string;
  width: number;
  height: number;
  flip: boolean;
  extract: [number, number, number, number] | null;
  /** The DCT scaling expected (Pillow's draft for twice the size). */
  shrink: number;
}

function options(c: Case): LoadImageOptions {
  return {
    resize: c.width ? { width: c.width, height: c.height } : undefined,
    flip: c.flip,
    extract: c.extract ? { left: c.extract[0], top: c.extract[1], width: c.extract[2], height: c.extract[3] } : undefined,
  };
}

test('jpeg: the addon has the decoder wherever libjpeg\'s headers were there to build it', (t) => {
  const headers = fs.existsSync('/usr/include/jpeglib.h') || fs.readdirSync('/usr/include').some((d) => fs.existsSync(path.join('/usr/include', d, 'jpeglib.h')));
  if (!headers) return t.pass('no jpeglib.h on this machine: JPEGs go through sharp');
  t.regex(buildInfo().jpegDecoder, /^\d+\.\d+\.\d+$|^libjpeg/);
});

test('jpeg: sizes from the header equal sharp\'s metadata (a frame header past the first 64 KiB too); other formats go to sharp', async (t) => {
  if (!buildInfo().jpegDecoder) return t.pass('built without libjpeg');
  const f = await files();
  for (const name of ['c420.jpg', 'c444.jpg', 'progressive.jpg', 'grey.jpg', 'large.jpg', 'cmyk.jpg', 'icc.jpg', 'truncated.jpg', 'late-header.jpg']) {
    const h = await native().jpegHeaderAsync(f[name]);
    const m = await sharp(f[name]).metadata();
    t.like(h, { read: true, width: m.width, height: m.height }, name);
    t.deepEqual(await imageSize(f[name]), { width: m.width!, height: m.height! }, name);
  }
  t.like(await native().jpegHeaderAsync(f['png.png']), { read: false, reason: 'not a JPEG', lasting: true });
  t.deepEqual(await imageSize(f['png.png']), { width: 64, height: 48 });
  t.like(await native().jpegHeaderAsync(path.join(tempDir(), 'missing.jpg')), { read: false, lasting: false });
  await t.throwsAsync(imageSize(path.join(tempDir(), 'missing.jpg')), { instanceOf: BadSampleError, message: /not found/ });
  // over the pixel limit: sharp's answer, as before
  const [viaSharp, limited] = await Promise.allSettled([imageSize(f['c420.jpg'], { limitInputPixels: 100, decoder: 'sharp' }), imageSize(f['c420.jpg'], { limitInputPixels: 100 })]);
  t.is(limited.status, viaSharp.status);
  // the late frame header decodes too, to the original's pixels
  const [late, plain] = await Promise.all([loadImage(f['late-header.jpg'], { resize: { width: 90, height: 70 } }), loadImage(f['c420.jpg'], { resize: { width: 90, height: 70 } })]);
  t.true(Buffer.from(late.data).equals(Buffer.from(plain.data)));
  t.throws(() => native().jpegHeaderAsync(''), { instanceOf: TypeError, message: /file path/ });
});

test('jpeg: decode + resize + mirror + crop equal Pillow (draft, convert, resize BILINEAR, transpose, crop) byte for byte', async (t) => {
  if (!buildInfo().jpegDecoder) return t.pass('built without libjpeg');
  const f = await files();
  const c = (file: string, width: number, height: number, flip: boolean, shrink = 1, extract: Case['extract'] = null): Case => ({ file: f[file], width, height, flip, extract, shrink });
  const cases: Case[] = [
    // the picture as it is (straight into the buffer), and mirrored
    ...['c420.jpg', 'c444.jpg', 'progressive.jpg', 'grey.jpg'].flatMap((n) => [c(n, 0, 0, false), c(n, 0, 0, true)]),
    c('c420.jpg', 142, 110, true), // down 0.7×
    c('c444.jpg', 250, 190, false), // up
    c('progressive.jpg', 100, 210, false), // the horizontal pass alone
    c('grey.jpg', 131, 60, true), // the vertical pass alone, mirrored after
    c('c420.jpg', 3, 2, false, 8),
    c('large.jpg', 7, 300, true), // long filters across, enlarged down the rows
    c('large.jpg', 100, 80, false, 2), // DCT scaling 1/2, then the window (0, 0, 240, 180)
    c('large.jpg', 50, 40, true, 4),
    c('large.jpg', 20, 15, false, 8),
    c('large.jpg', 1, 1, false, 8),
    c('large.jpg', 61, 59, true, 2), // 480 / 61 and 360 / 59: a window with fractional ends
    c('c420.jpg', 180, 140, true, 1, [10, 20, 100, 60]),
  ];
  const dir = tempDir();
  fs.writeFileSync(path.join(dir, 'cases.json'), JSON.stringify(cases));
  runReference('data_ref.py', ['jpeg', path.join(dir, 'cases.json'), path.join(dir, 'ref')]);
  const { tensors: ref } = readBundle(path.join(dir, 'ref'));
  for (const [k, cs] of cases.entries()) {
    const name = `${path.basename(cs.file)} → ${cs.width}×${cs.height}${cs.flip ? ' mirrored' : ''}${cs.extract ? ' cropped' : ''}`;
    const expected = ref[`image${k}`];
    const [h, w] = expected.shape;
    // the decoder took it (not sharp), at the DCT scaling Pillow's draft picks
    const out = new Uint8Array(w * h * 3);
    const o = options(cs);
    const e = o.extract;
    const got = await native().decodeJpegAsync(cs.file, out, cs.width, cs.height, cs.flip, e ? [e.left, e.top, e.width, e.height] : null, 1e9);
    t.like(got, { decoded: true, width: w, height: h, shrink: cs.shrink }, name);
    const img = await loadImage(cs.file, o);
    t.deepEqual([img.width, img.height], [w, h], name);
    const ours = Buffer.from(img.data);
    const theirs = Buffer.from(expected.data as Uint8Array);
    const differing = ours.reduce((n, v, i) => n + (v !== theirs[i] ? 1 : 0), 0);
    t.is(differing, 0, `${name}: ${differing} of ${theirs.length} bytes differ from Pillow`);
    t.true(Buffer.from(out).equals(theirs), name);
  }
  // the scalar loops (CPUs without AVX2; ONESTAGE_NO_AVX2=1 here) give the same bytes: a child process
  // decodes every case with them and returns SHA-256 digests
  const addon = path.resolve(__dirname, '..', 'build', 'Release', 'onestage.node');
  const script = `
    const b = require(${JSON.stringify(addon)});
    const cases = JSON.parse(require('fs').readFileSync(${JSON.stringify(path.join(dir, 'cases.json'))}, 'utf8'));
    (async () => {
      const out = [];
      for (const c of cases) {
        const buf = new Uint8Array(4 << 20);
        const r = await b.decodeJpegAsync(c.file, buf, c.width, c.height, c.flip, c.extract, 1e9);
        out.push(require('crypto').createHash('sha256').update(buf.subarray(0, r.width * r.height * 3)).digest('hex'));
      }
      console.log(JSON.stringify(out));
    })();`;
  const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, ONESTAGE_NO_AVX2: '1' } });
  t.is(child.status, 0, child.stderr);
  const scalar = JSON.parse(child.stdout) as string[];
  const digests = cases.map((_, k) => createHash('sha256').update(ref[`image${k}`].data as Uint8Array).digest('hex'));
  t.deepEqual(scalar, digests, 'the scalar loops equal Pillow too');
});

test('jpeg: what the decoder declines (PNG, CMYK, an ICC profile, truncated data, over the pixel limit, missing) goes to sharp: its pixels, its errors', async (t) => {
  if (!buildInfo().jpegDecoder) return t.pass('built without libjpeg');
  const f = await files();
  const buffer = new Uint8Array(1 << 20);
  // lasting: declined for what the file is (the DataLoader then sends it to sharp for good)
  const declined = async (file: string, reason: RegExp, lasting: boolean, maxPixels = 1e9) => {
    const o = await native().decodeJpegAsync(file, buffer, 0, 0, false, null, maxPixels);
    t.false(o.decoded, file);
    t.regex(o.reason, reason, file);
    t.is(o.lasting, lasting, file);
  };
  await declined(f['png.png'], /not a JPEG/, true);
  await declined(f['cmyk.jpg'], /colour space/, true);
  await declined(f['icc.jpg'], /ICC profile/, true);
  await declined(f['truncated.jpg'], /libjpeg: .*(premature|Corrupt)/i, false);
  await declined(f['c420.jpg'], /pixel limit|more pixels/, false, 100);
  await declined(path.join(tempDir(), 'missing.jpg'), /cannot open/, false);
  // too small a buffer: declined, nothing written past it
  const small = new Uint8Array(10);
  t.like(await native().decodeJpegAsync(f['c420.jpg'], small, 0, 0, false, null, 1e9), { decoded: false, reason: 'the output does not fit the buffer' });
  for (const name of ['png.png', 'cmyk.jpg', 'icc.jpg']) {
    for (const o of [{}, { resize: { width: 40, height: 30 }, flip: true }]) {
      const [auto, viaSharp] = await Promise.all([loadImage(f[name], o), loadImage(f[name], { ...o, decoder: 'sharp' })]);
      t.deepEqual([auto.width, auto.height], [viaSharp.width, viaSharp.height]);
      t.true(Buffer.from(auto.data).equals(Buffer.from(viaSharp.data)), name);
    }
  }
  await t.throwsAsync(loadImage(f['truncated.jpg']), { instanceOf: BadSampleError, message: /truncated\.jpg: cannot decode image/ });
  await t.throwsAsync(loadImage(f['c420.jpg'], { limitInputPixels: 100 }), { instanceOf: BadSampleError, message: /(pixel limit|cannot read image)/ });
  await t.throwsAsync(loadImage(path.join(tempDir(), 'missing.jpg'), { resize: { width: 4, height: 4 } }), { instanceOf: BadSampleError, message: /not found/ });
  // bad arguments are errors, not declines
  t.throws(() => native().decodeJpegAsync(f['c420.jpg'], buffer, 10, 0, false, null, 1e9), { instanceOf: RangeError, message: /width and height/ });
  t.throws(() => native().decodeJpegAsync(f['c420.jpg'], new Float32Array(4) as unknown as Uint8Array, 0, 0, false, null, 1e9), { instanceOf: TypeError, message: /Uint8Array for out/ });
  t.throws(() => native().decodeJpegAsync(f['c420.jpg'], buffer, 0, 0, false, [0, 0, 0, 5], 1e9), { instanceOf: RangeError, message: /extract/ });
});

test('jpeg: corrupted files (seeded byte mutations and cuts of each kind of JPEG) are decoded or declined, never crash; loadImage gives pixels or a BadSampleError', async (t) => {
  if (!buildInfo().jpegDecoder) return t.pass('built without libjpeg');
  const f = await files();
  const dir = tempDir();
  const rng = new Rng(24);
  const buffer = new Uint8Array(1 << 20);
  let decoded = 0;
  let declined = 0;
  for (const name of ['c420.jpg', 'c444.jpg', 'progressive.jpg', 'grey.jpg']) {
    const original = fs.readFileSync(f[name]);
    for (let i = 0; i < 40; i++) {
      let bytes = Buffer.from(original);
      // a few bytes anywhere after the start-of-image marker (headers, tables, entropy-coded data), or a cut
      if (i % 5 === 4) bytes = bytes.subarray(0, rng.integer(2, bytes.length));
      else for (let k = rng.integer(1, 9); k > 0; k--) bytes[rng.integer(2, bytes.length)] = rng.integer(0, 256);
      const file = path.join(dir, `mutant-${i}-${name}`);
      fs.writeFileSync(file, bytes);
      const header = await native().jpegHeaderAsync(file);
      t.is(typeof header.read, 'boolean');
      if (header.read) t.true(header.width > 0 && header.height > 0, file);
      else t.true(header.reason.length > 0, file);
      // full size, a resize, and a reduction large enough for the DCT scaling
      for (const [w, h] of [
        [0, 0],
        [37, 29],
        [20, 15],
      ]) {
        const o = await native().decodeJpegAsync(file, buffer, w, h, i % 2 === 0, null, 1e9);
        if (o.decoded) {
          decoded++;
          if (w) t.deepEqual([o.width, o.height], [w, h], file);
          else if (header.read) t.deepEqual([o.width, o.height], [header.width, header.height], file);
        } else {
          declined++;
          t.true(o.reason.length > 0, file);
        }
      }
      try {
        const img = await loadImage(file, { resize: { width: 37, height: 29 } });
        t.is(img.data.length, 37 * 29 * 3, file);
      } catch (e) {
        t.true(e instanceof BadSampleError, `${file}: ${String(e)}`);
      }
    }
  }
  // both outcomes occur: the mutations reach the entropy-coded data (decoded, perhaps with other pixels)
  // and the markers (declined)
  t.log(`${decoded} decoded, ${declined} declined`);
  t.true(decoded > 0 && declined > 0, `${decoded} decoded, ${declined} declined`);
});

test.serial('jpeg: DataLoader batches of JPEGs are the decoder\'s pixels, normalised — epoch after epoch in reused buffers; decoder \'sharp\' switches it off', async (t) => {
  if (!buildInfo().jpegDecoder) return t.pass('built without libjpeg');
  const f = await files();
  const dir = path.dirname(f['c420.jpg']);
  // with two pictures the decoder declines for what they are: sharp decodes them, after the first epoch
  // without asking the decoder again
  const names = ['c420.jpg', 'c444.jpg', 'progressive.jpg', 'grey.jpg', 'large.jpg', 'png.png', 'cmyk.jpg'];
  const coco = { images: names.map((n, i) => ({ id: i + 1, file_name: n })), annotations: [], categories: [{ id: 1, name: 'a' }] };
  fs.writeFileSync(path.join(dir, 'coco.json'), JSON.stringify(coco));
  const ds = await CocoDataset.open(path.join(dir, 'coco.json'));
  const transform = { minSide: 90, maxSide: 140, padMultiple: 8, crop: { p: 0.5, minSize: 0.7 } };
  const loader = new DataLoader(ds, { batchSize: 2, seed: 3, transform });
  let checked = 0;
  let cropped = 0;
  const binding = native() as unknown as { decodeJpegAsync: (file: string, ...a: unknown[]) => Promise<unknown> };
  const decodeJpeg = binding.decodeJpegAsync;
  const asked: string[][] = [[], [], []];
  let epochNow = 0;
  binding.decodeJpegAsync = (file: string, ...a: unknown[]) => {
    asked[epochNow].push(path.basename(file));
    return decodeJpeg.call(binding, file, ...a);
  };
  // the batches first (the checks below decode too, and must not count as the loader's requests)
  const epochs: Batch[][] = [];
  for (const epoch of [0, 1, 2]) {
    epochNow = epoch;
    const got: Batch[] = [];
    for await (const b of loader.epoch(epoch)) got.push(b);
    epochs.push(got);
  }
  binding.decodeJpegAsync = decodeJpeg;
  t.deepEqual(asked[0].slice().sort(), names.slice().sort());
  t.deepEqual(asked[1].slice().sort(), names.slice(0, 5).sort());
  for (const [epoch, batches] of epochs.entries())
    for (const b of batches) {
      const [, , H, W] = b.images.shape;
      const data = b.images.toArray() as Float32Array;
      for (const [i, file] of b.files.entries()) {
        const [h, w] = b.inputSizes[i];
        const crop = b.crops[i];
        cropped += crop ? 1 : 0;
        const [oh, ow] = b.sizes[i];
        const resized = scaledSize(ow, oh, b.scales[i]);
        const same = resized.width === ow && resized.height === oh;
        const img = await loadImage(file, { resize: same ? undefined : resized, flip: b.flipped[i], extract: crop ? { left: crop.x, top: crop.y, width: crop.width, height: crop.height } : undefined });
        let worst = 0;
        for (let c = 0; c < 3; c++)
          for (let y = 0; y < h; y++)
            for (let x = 0; x < w; x++) {
              const expected = Math.fround((img.data[(y * w + x) * 3 + c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]);
              worst = Math.max(worst, Math.abs(data[((i * 3 + c) * H + y) * W + x] - expected));
            }
        t.is(worst, 0, `${path.basename(file)} epoch ${epoch}`);
        checked++;
      }
      disposeBatch(b);
    }
  t.is(checked, 3 * names.length);
  t.true(cropped > 0 && cropped < checked, `${cropped} of ${checked} pictures cropped`);
  // the same plan with sharp decoding: same sizes and flips, other pixels where a picture was resized
  const [a] = await (async () => {
    const out = [];
    for await (const b of new DataLoader(ds, { batchSize: 5, seed: 3, shuffle: false, augment: false, transform: { minSide: 90, maxSide: 140 } }).epoch(0)) out.push(b);
    return out;
  })();
  const [s] = await (async () => {
    const out = [];
    for await (const b of new DataLoader(ds, { batchSize: 5, seed: 3, shuffle: false, augment: false, transform: { minSide: 90, maxSide: 140 }, decoder: 'sharp' }).epoch(0)) out.push(b);
    return out;
  })();
  t.deepEqual(s.inputSizes, a.inputSizes);
  t.notDeepEqual(s.images.toArray(), a.images.toArray());
  disposeBatch(a);
  disposeBatch(s);
  t.throws(() => new DataLoader(ds, { decoder: 'pil' as 'sharp' }), { instanceOf: RangeError, message: /options\.decoder/ });
});
