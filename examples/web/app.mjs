// The page's logic: loads /model.onnx with onnxruntime-web (wasm) and /model.json (its metadata), runs
// pictures through it and draws the detections. window.onestageDetect(image) is the same path without
// the file picker (used by the test): image = { data, width, height, channels } with data row-major
// height × width × channels bytes (RGB or RGBA).
import * as ort from '/ort/ort.wasm.min.mjs';

const $ = (id) => document.getElementById(id);
const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45'];
ort.env.wasm.wasmPaths = '/ort/';
ort.env.wasm.numThreads = 1;

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

const meta = await (await fetch('/model.json')).json();
const classes = JSON.parse(meta.metadata.classes ?? '[]');
const [, , fixedH, fixedW] = meta.input;
const fixedSize = typeof fixedH === 'number' && typeof fixedW === 'number';
const normalizeInside = meta.metadata.normalize !== 'false';
const mean = JSON.parse(meta.metadata.mean ?? '[0.485,0.456,0.406]');
const std = JSON.parse(meta.metadata.std ?? '[0.229,0.224,0.225]');
if (meta.metadata.postprocess !== 'detections') throw new Error('this page shows detections: export the model with postprocess "detections"');
const session = await ort.InferenceSession.create(await (await fetch('/model.onnx')).arrayBuffer(), { executionProviders: ['wasm'] });

/** image { data, width, height, channels } → detections [{ box: [x1, y1, x2, y2], score, label, class }] in its pixels. */
async function detect(image) {
  const { data, width, height, channels } = image;
  if (channels !== 3 && channels !== 4) throw new Error(`the image has ${channels} channel(s); the model takes RGB (3, or RGBA 4 with alpha ignored)`);
  if (data.length !== width * height * channels) throw new Error(`the image data has ${data.length} values, not ${width} × ${height} × ${channels}`);
  if (fixedSize && (width !== fixedW || height !== fixedH)) throw new Error(`the image is ${width}×${height}; this model was exported for ${fixedW}×${fixedH} only`);
  const plane = width * height;
  const input = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++)
    for (let c = 0; c < 3; c++) {
      const v = data[i * channels + c];
      input[c * plane + i] = normalizeInside ? v : Math.fround((v / 255 - mean[c]) / std[c]);
    }
  const out = await session.run({ images: new ort.Tensor('float32', input, [1, 3, height, width]) });
  const n = Number(out.count.data[0]);
  const dets = [];
  for (let i = 0; i < n; i++) {
    const label = Number(out.labels.data[i]);
    dets.push({ box: Array.from(out.boxes.data.slice(i * 4, i * 4 + 4)), score: out.scores.data[i], label, class: classes[label] ?? String(label) });
  }
  return dets;
}

function draw(canvas, dets, threshold) {
  const ctx = canvas.getContext('2d');
  ctx.lineWidth = 2;
  ctx.font = '12px sans-serif';
  const rows = ['<tr><th>class</th><th>score</th><th>box (x1, y1, x2, y2)</th></tr>'];
  for (const d of dets.filter((d) => d.score >= threshold)) {
    const [x1, y1, x2, y2] = d.box;
    const color = COLORS[d.label % COLORS.length];
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.class} ${d.score.toFixed(2)}`;
    const w = ctx.measureText(text).width + 6;
    ctx.fillStyle = color;
    ctx.fillRect(x1, Math.max(0, y1 - 15), w, 15);
    ctx.fillStyle = '#fff';
    ctx.fillText(text, x1 + 3, Math.max(11, y1 - 4));
    rows.push(`<tr><td style="color:${color}">${d.class}</td><td>${d.score.toFixed(3)}</td><td>${d.box.map((v) => v.toFixed(1)).join(', ')}</td></tr>`);
  }
  $('table').innerHTML = rows.join('');
  return rows.length - 1;
}

async function onFile(file) {
  try {
    const bitmap = await createImageBitmap(file);
    // fixed-size models get the picture scaled to their size; dynamic ones at most 640 px on the longer side
    const scale = fixedSize ? null : Math.min(1, 640 / Math.max(bitmap.width, bitmap.height));
    const canvas = $('canvas');
    canvas.width = fixedSize ? fixedW : Math.round(bitmap.width * scale);
    canvas.height = fixedSize ? fixedH : Math.round(bitmap.height * scale);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
    status(`running on ${file.name} (${canvas.width}×${canvas.height})…`);
    const t0 = performance.now();
    const dets = await detect({ data: pixels.data, width: canvas.width, height: canvas.height, channels: 4 });
    const shown = draw(canvas, dets, Number($('threshold').value));
    status(`${file.name}: ${shown} detection(s) shown of ${dets.length}, ${(performance.now() - t0).toFixed(0)} ms`);
  } catch (err) {
    status(`error: ${err.message}`, true);
  }
}

$('image').addEventListener('change', (e) => e.target.files[0] && onFile(e.target.files[0]));
window.onestageDetect = detect;
window.onestageReady = true;
status(`model ready: ${meta.metadata.architecture ?? 'detector'}, ${classes.length} classes (${classes.join(', ')}), input ${fixedSize ? `${fixedW}×${fixedH}` : 'any size'}`);
