/**
 * `onestage detect`: a saved model run on image files; each picture is written with its boxes,
 * class names and scores drawn (an SVG overlay composited by sharp), and all detections to one JSON.
 */
import * as path from 'node:path';
import sharp from 'sharp';
import { ImageListDataset } from '../data/image_list';
import { DataLoader, disposeBatch } from '../data/loader';
import { writeFileAtomic, writeJsonAtomic } from '../io';
import { Detection, DetectOptions, Model } from '../model';
import type { Device } from '../tensor';
import { resolveDevice } from './common';
import { inputSizeOf, InputSize } from './evaluate';

export interface DetectJobOptions extends Partial<InputSize>, DetectOptions {
  weights: string;
  images: string[];
  out: string;
  device?: 'auto' | Device;
  batchSize?: number;
}

export interface ImageDetections {
  file: string;
  output: string;
  width: number;
  height: number;
  detections: Array<{ label: number; class: string; score: number; box: [number, number, number, number] }>;
}

const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45', '#fabed4', '#469990'];

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[c]!);
}

/** An SVG of the detections' boxes and labels for an image of `width` × `height`. */
export function detectionsSvg(width: number, height: number, dets: ImageDetections['detections']): string {
  const stroke = Math.max(1, Math.round(Math.min(width, height) / 200));
  const font = Math.max(9, Math.round(Math.min(width, height) / 30));
  const parts = dets.map((d) => {
    const [x1, y1, x2, y2] = d.box;
    const colour = PALETTE[d.label % PALETTE.length];
    const text = `${escapeXml(d.class)} ${d.score.toFixed(2)}`;
    const ty = y1 - font - 2 >= 0 ? y1 - font - 2 : y1;
    return `<rect x="${x1}" y="${y1}" width="${x2 - x1}" height="${y2 - y1}" fill="none" stroke="${colour}" stroke-width="${stroke}"/>` +
      `<rect x="${x1}" y="${ty}" width="${(text.length * font * 0.6 + 4).toFixed(1)}" height="${font + 2}" fill="${colour}" opacity="0.8"/>` +
      `<text x="${x1 + 2}" y="${ty + font - 1}" font-family="sans-serif" font-size="${font}" fill="white">${text}</text>`;
  });
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">${parts.join('')}</svg>`;
}

/** Writes `image` with `dets` drawn to `output` (format from its extension), atomically. */
export async function drawDetections(image: string, output: string, dets: ImageDetections['detections']): Promise<void> {
  // the stored pixels, as the loader read them for the model (no EXIF rotation): the boxes are in their
  // coordinates; the output carries no orientation tag, so viewers show it as drawn
  const { data, info } = await sharp(image).toBuffer({ resolveWithObject: true });
  const { width, height } = info;
  const ext = path.extname(output).toLowerCase();
  const composed = sharp(data).composite([{ input: Buffer.from(detectionsSvg(width, height, dets)), top: 0, left: 0 }]);
  const buffer = await (ext === '.png' ? composed.png() : ext === '.webp' ? composed.webp() : composed.jpeg({ quality: 90 })).toBuffer();
  writeFileAtomic(output, buffer);
}

export async function detectJob(o: DetectJobOptions): Promise<ImageDetections[]> {
  if (!Array.isArray(o.images) || o.images.length === 0) throw new TypeError('detect needs at least one image');
  const device = resolveDevice(o.device ?? 'auto');
  const model = await Model.fromWeights(o.weights, { device });
  const classes = model.config.classes ?? Array.from({ length: model.config.numClasses }, (_, i) => `class ${i}`);
  const dataset = new ImageListDataset(o.images, classes);
  const { minSide, maxSide, weights: _w, images: _i, out: _o, device: _d, batchSize, ...detectOptions } = o;
  void _w; void _i; void _o; void _d;
  const loader = new DataLoader(dataset, { batchSize: batchSize ?? 4, shuffle: false, augment: false, device, transform: inputSizeOf(o.weights, { minSide, maxSide }) });
  const results: ImageDetections[] = [];
  const used = new Map<string, number>();
  model.eval();
  try {
    for await (const batch of loader.epoch(0)) {
      try {
        const dets: Detection[] = await model.detect({ images: batch.images, scales: batch.scales, sizes: batch.sizes }, detectOptions);
        for (let i = 0; i < dets.length; i++) {
          const file = batch.files[i];
          const d = dets[i];
          const list: ImageDetections['detections'] = Array.from(d.scores, (score, k) => ({
            label: d.labels[k],
            class: classes[d.labels[k]],
            score: Math.round(score * 1e4) / 1e4,
            box: Array.from(d.boxes.subarray(4 * k, 4 * k + 4), (v) => Math.round(v * 100) / 100) as [number, number, number, number],
          }));
          // unique output names even for equal base names from different folders
          const stem = path.basename(file, path.extname(file));
          const n = used.get(stem) ?? 0;
          used.set(stem, n + 1);
          const output = path.join(o.out, `${stem}${n ? `-${n}` : ''}${/\.(png|webp)$/i.test(file) ? path.extname(file).toLowerCase() : '.jpg'}`);
          await drawDetections(file, output, list);
          const [height, width] = batch.sizes[i];
          results.push({ file, output, width, height, detections: list });
        }
      } finally {
        disposeBatch(batch);
      }
    }
  } finally {
    model.dispose();
  }
  writeJsonAtomic(path.join(o.out, 'detections.json'), results, 1);
  return results;
}
