import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CocoDataset, loadImage, makeShapes } from '../lib';
import { serveDemo } from '../lib/jobs/serve_demo';
import { randomModel, runOrt } from './helpers/onnx';
import { tempDir } from './helpers/python';

/** Debian's chromium (scripts/setup.sh installs it) or ONESTAGE_CHROMIUM. */
function chromiumPath(): string | null {
  for (const p of [process.env.ONESTAGE_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'])
    if (p && fs.existsSync(p)) return p;
  return null;
}

// the browser's globals, inside page.evaluate callbacks
declare const window: unknown;
declare const document: { getElementById(id: string): { textContent: string | null } | null };

interface PageDetection {
  box: number[];
  score: number;
  label: number;
  class: string;
}

test.serial('web page: onnxruntime-web in headless Chromium detects what onnxruntime-node does; bad pictures are clear errors', async (t) => {
  const exe = chromiumPath();
  if (!exe) return t.fail('Chromium is needed for this test (scripts/setup.sh installs Debian\'s chromium; or set ONESTAGE_CHROMIUM)');
  const dir = tempDir('onestage-web-test-');
  const data = path.join(dir, 'shapes');
  await makeShapes({ out: data, train: 0, val: 4, size: 128, classes: 3, seed: 1 });
  const val = await CocoDataset.open(path.join(data, 'instances_val.json'));
  const model = await randomModel({ architecture: 'retinanet', numClasses: 3, depth: 18, featureSize: 64, classes: ['circle', 'square', 'triangle'] }, 11);
  const dynamicFile = path.join(dir, 'dynamic.onnx');
  const fixedFile = path.join(dir, 'fixed.onnx');
  await model.exportOnnx(dynamicFile);
  await model.exportOnnx(fixedFile, { dynamicSize: false, inputSize: [96, 96] });
  model.dispose();
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: exe, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const servers: Array<{ close: () => Promise<void> }> = [];
  try {
    const s = await serveDemo({ model: dynamicFile, port: 0 });
    servers.push(s);
    const page = await browser.newPage({ viewport: { width: 900, height: 700 } });
    const console: string[] = [];
    page.on('console', (m) => console.push(m.text()));
    page.on('pageerror', (e) => console.push(`pageerror: ${e.message}`));
    await page.goto(s.url);
    await page.waitForFunction(() => (window as unknown as { onestageReady?: boolean }).onestageReady === true, undefined, { timeout: 120_000 }).catch((err) => {
      throw new Error(`the page did not get ready: ${(err as Error).message}\n${console.join('\n')}`);
    });
    t.regex((await page.textContent('#status')) ?? '', /model ready: retinanet, 3 classes \(circle, square, triangle\)/);
    // the same pictures through the page's own path and through onnxruntime-node
    for (let i = 0; i < val.length; i++) {
      const file = val.record(i).file;
      const img = await loadImage(file);
      const dets = await page.evaluate(
        (a: { data: number[]; width: number; height: number }) => (window as unknown as { onestageDetect: (x: object) => Promise<PageDetection[]> }).onestageDetect({ data: Uint8Array.from(a.data), width: a.width, height: a.height, channels: 3 }),
        { data: Array.from(img.data), width: img.width, height: img.height },
      );
      const planar = new Float32Array(3 * img.width * img.height);
      for (let p = 0; p < img.width * img.height; p++) for (let c = 0; c < 3; c++) planar[c * img.width * img.height + p] = img.data[p * 3 + c];
      const o = await runOrt(dynamicFile, { data: planar, dims: [1, 3, img.height, img.width] });
      const n = Number((o.count.data as BigInt64Array)[0]);
      t.is(dets.length, n, `picture ${i}: detections in the page vs onnxruntime-node`);
      for (let k = 0; k < n; k++) {
        t.is(dets[k].label, Number((o.labels.data as BigInt64Array)[k]));
        t.is(dets[k].class, ['circle', 'square', 'triangle'][dets[k].label]);
        t.true(Math.abs(dets[k].score - (o.scores.data as Float32Array)[k]) <= 1e-5, `picture ${i} detection ${k} score`);
        for (let c = 0; c < 4; c++) t.true(Math.abs(dets[k].box[c] - (o.boxes.data as Float32Array)[k * 4 + c]) <= 1e-3, `picture ${i} detection ${k} box`);
      }
    }
    // the file picker: decode, draw, list
    await page.setInputFiles('#image', val.record(0).file);
    await page.waitForFunction(() => /detection\(s\) shown|error/.test(document.getElementById('status')!.textContent ?? ''), undefined, { timeout: 60_000 });
    const statusText = (await page.textContent('#status')) ?? '';
    t.regex(statusText, /detection\(s\) shown of \d+/);
    const rows = await page.$$eval('#table tr', (r) => r.length - 1);
    t.is(String(rows), /: (\d+) detection/.exec(statusText)![1]);
    const shot = path.join(process.env.ONESTAGE_SCREENSHOT_DIR ?? dir, 'web-page.png');
    await page.screenshot({ path: shot, fullPage: true });
    t.true(fs.statSync(shot).size > 10_000);
    // bad pictures: channel count, data size
    const err = (x: object) => page.evaluate((a) => (window as unknown as { onestageDetect: (x: object) => Promise<unknown> }).onestageDetect({ ...a, data: new Uint8Array((a as { n: number }).n) }).then(() => 'no error', (e: Error) => e.message), x);
    t.regex(await err({ width: 8, height: 8, channels: 2, n: 128 }), /2 channel/);
    t.regex(await err({ width: 8, height: 8, channels: 3, n: 100 }), /100 values, not 8 × 8 × 3/);
    // a fixed-size model refuses another size, naming both
    const f = await serveDemo({ model: fixedFile, port: 0 });
    servers.push(f);
    await page.goto(f.url);
    await page.waitForFunction(() => (window as unknown as { onestageReady?: boolean }).onestageReady === true, undefined, { timeout: 120_000 });
    t.regex(await err({ width: 128, height: 128, channels: 3, n: 128 * 128 * 3 }), /128×128; this model was exported for 96×96 only/);
    t.regex(await err({ width: 96, height: 96, channels: 4, n: 96 * 96 * 4 }), /no error/);
    t.deepEqual(console.filter((l) => l.startsWith('pageerror')), []);
  } finally {
    for (const s of servers) await s.close();
    await browser.close();
  }
});

test.serial('serve-demo: a missing model is a clear error', async (t) => {
  await t.throwsAsync(serveDemo({ model: '/no/such/model.onnx', port: 0 }), { message: /no model at \/no\/such\/model\.onnx.*onestage export/ });
});
