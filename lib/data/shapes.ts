/**
 * The synthetic shapes dataset — the embedded default data of the main job. Deterministic for a
 * seed: shapes drawn as SVG over noisy, textured backgrounds, rendered and JPEG-encoded by sharp,
 * annotations in COCO format (`instances_train.json`, `instances_val.json`).
 *
 * Content: circles, squares, triangles (and more classes when asked: diamonds, crosses, stars,
 * hexagons, rings, pentagons, bars), random colours, sizes from small to large, partial occlusion,
 * about 10 % images without objects, and about 5 % with a crowd region (a cluster of tiny shapes of
 * one class annotated once with iscrowd 1).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import sharp from 'sharp';
import { Rng } from './random';

export const SHAPE_CLASSES = ['circle', 'square', 'triangle', 'diamond', 'cross', 'star', 'hexagon', 'ring', 'pentagon', 'bar'] as const;

export interface ShapesOptions {
  /** Output folder (created). */
  out: string;
  /** Training images; default 200. */
  train?: number;
  /** Validation images; default 50. */
  val?: number;
  /** Image side in pixels; default 256. */
  size?: number;
  /** Number of classes (1–10); default 3. */
  classes?: number;
  /** Default 0. */
  seed?: number;
  /** Objects per image: up to this many; default 6. */
  maxObjects?: number;
}

export interface ShapesResult {
  train: string;
  val: string;
  images: number;
  objects: number;
}

interface Placed {
  cls: number;
  box: [number, number, number, number];
  svg: string;
}

function colour(rng: Rng): string {
  const c = () => rng.integer(20, 236);
  return `rgb(${c()},${c()},${c()})`;
}

function polygon(cx: number, cy: number, r: number, n: number, rot: number, inner = 0): Array<[number, number]> {
  const pts: Array<[number, number]> = [];
  const count = inner > 0 ? 2 * n : n;
  for (let k = 0; k < count; k++) {
    const a = rot + (2 * Math.PI * k) / count;
    const rr = inner > 0 && k % 2 === 1 ? r * inner : r;
    pts.push([cx + rr * Math.cos(a), cy + rr * Math.sin(a)]);
  }
  return pts;
}

function boxOf(pts: Array<[number, number]>): [number, number, number, number] {
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
}

/** One shape of class `cls` centred at (cx, cy) with radius r: its SVG and exact bounding box. */
function shape(cls: number, cx: number, cy: number, r: number, rng: Rng): Placed {
  const fill = colour(rng);
  const rot = rng.between(0, Math.PI);
  const poly = (pts: Array<[number, number]>) => ({ svg: `<polygon points="${pts.map((p) => p.map((v) => v.toFixed(2)).join(',')).join(' ')}" fill="${fill}"/>`, box: boxOf(pts) });
  let drawn: { svg: string; box: [number, number, number, number] };
  switch (SHAPE_CLASSES[cls]) {
    case 'circle':
      drawn = { svg: `<circle cx="${cx.toFixed(2)}" cy="${cy.toFixed(2)}" r="${r.toFixed(2)}" fill="${fill}"/>`, box: [cx - r, cy - r, cx + r, cy + r] };
      break;
    case 'square':
      drawn = poly(polygon(cx, cy, r, 4, Math.PI / 4));
      break;
    case 'triangle':
      drawn = poly(polygon(cx, cy, r, 3, -Math.PI / 2 + rng.between(-0.3, 0.3)));
      break;
    case 'diamond':
      drawn = poly([[cx, cy - r], [cx + 0.6 * r, cy], [cx, cy + r], [cx - 0.6 * r, cy]]);
      break;
    case 'cross': {
      const w = 0.35 * r;
      drawn = poly([[cx - w, cy - r], [cx + w, cy - r], [cx + w, cy - w], [cx + r, cy - w], [cx + r, cy + w], [cx + w, cy + w], [cx + w, cy + r], [cx - w, cy + r], [cx - w, cy + w], [cx - r, cy + w], [cx - r, cy - w], [cx - w, cy - w]]);
      break;
    }
    case 'star':
      drawn = poly(polygon(cx, cy, r, 5, rot, 0.45));
      break;
    case 'hexagon':
      drawn = poly(polygon(cx, cy, r, 6, rot));
      break;
    case 'ring':
      drawn = { svg: `<circle cx="${cx.toFixed(2)}" cy="${cy.toFixed(2)}" r="${(0.8 * r).toFixed(2)}" fill="none" stroke="${fill}" stroke-width="${(0.4 * r).toFixed(2)}"/>`, box: [cx - r, cy - r, cx + r, cy + r] };
      break;
    case 'pentagon':
      drawn = poly(polygon(cx, cy, r, 5, -Math.PI / 2));
      break;
    default: {
      // bar: a 2r × 0.5r rectangle, rotated
      const [c, sn] = [Math.cos(rot), Math.sin(rot)];
      const corner = (u: number, v: number): [number, number] => [cx + u * c - v * sn, cy + u * sn + v * c];
      drawn = poly([corner(-r, -0.25 * r), corner(r, -0.25 * r), corner(r, 0.25 * r), corner(-r, 0.25 * r)]);
    }
  }
  return { cls, box: drawn.box, svg: drawn.svg };
}

function iou(a: number[], b: number[]): number {
  const w = Math.min(a[2], b[2]) - Math.max(a[0], b[0]);
  const h = Math.min(a[3], b[3]) - Math.max(a[1], b[1]);
  if (w <= 0 || h <= 0) return 0;
  const inter = w * h;
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter);
}

/** Background: a base colour, a soft gradient or stripes, and per-pixel noise. */
function background(size: number, rng: Rng): { raw: Buffer; overlay: string } {
  const base = [rng.integer(40, 216), rng.integer(40, 216), rng.integer(40, 216)];
  const amp = rng.between(8, 28);
  const raw = Buffer.alloc(size * size * 3);
  for (let i = 0; i < size * size; i++) {
    const n = (rng.next() + rng.next() - 1) * amp;
    for (let c = 0; c < 3; c++) raw[3 * i + c] = Math.max(0, Math.min(255, Math.round(base[c] + n)));
  }
  let overlay = '';
  const kind = rng.integer(0, 3);
  if (kind === 1) {
    const step = rng.integer(8, 32);
    for (let x = 0; x < size; x += 2 * step) overlay += `<rect x="${x}" y="0" width="${step}" height="${size}" fill="${colour(rng)}" opacity="0.18"/>`;
  } else if (kind === 2) {
    overlay += `<defs><linearGradient id="g"><stop offset="0" stop-color="${colour(rng)}"/><stop offset="1" stop-color="${colour(rng)}"/></linearGradient></defs><rect width="${size}" height="${size}" fill="url(#g)" opacity="0.35"/>`;
  }
  return { raw, overlay };
}

/** Writes `out/{train,val}/*.jpg` and `out/instances_{train,val}.json` (each JSON written atomically). */
export async function makeShapes(options: ShapesOptions): Promise<ShapesResult> {
  const size = options.size ?? 256;
  const classes = options.classes ?? 3;
  const maxObjects = options.maxObjects ?? 6;
  if (!Number.isInteger(classes) || classes < 1 || classes > SHAPE_CLASSES.length)
    throw new RangeError(`Expected an integer between 1 and ${SHAPE_CLASSES.length} for classes but received ${classes}`);
  if (!Number.isInteger(size) || size < 32 || size > 4096) throw new RangeError(`Expected an integer between 32 and 4096 for size but received ${size}`);
  const splits: Array<[string, number]> = [['train', options.train ?? 200], ['val', options.val ?? 50]];
  for (const [name, n] of splits) if (!Number.isInteger(n) || n < 0) throw new RangeError(`Expected a non-negative integer for ${name} but received ${n}`);
  const rng = new Rng(options.seed ?? 0);
  const categories = SHAPE_CLASSES.slice(0, classes).map((name, i) => ({ id: i + 1, name, supercategory: 'shape' }));
  let images = 0;
  let objects = 0;
  const files: Record<string, string> = {};
  for (const [split, count] of splits) {
    const dir = path.join(options.out, split);
    await fs.promises.mkdir(dir, { recursive: true });
    const cocoImages: object[] = [];
    const annotations: object[] = [];
    for (let i = 0; i < count; i++) {
      const imageRng = new Rng(Math.floor(rng.next() * 2 ** 32));
      const id = i + 1;
      const file = `${split}_${String(id).padStart(5, '0')}.jpg`;
      const bg = background(size, imageRng);
      const placed: Placed[] = [];
      const crowd: Array<{ cls: number; box: number[] }> = [];
      const empty = imageRng.next() < 0.1;
      const n = empty ? 0 : imageRng.integer(1, maxObjects + 1);
      for (let k = 0; k < n; k++) {
        for (let attempt = 0; attempt < 20; attempt++) {
          const r = size * (imageRng.next() < 0.3 ? imageRng.between(0.04, 0.08) : imageRng.between(0.08, 0.3));
          const cx = imageRng.between(r * 0.6, size - r * 0.6);
          const cy = imageRng.between(r * 0.6, size - r * 0.6);
          const s = shape(imageRng.integer(0, classes), cx, cy, r, imageRng);
          // partial occlusion is allowed, heavy overlap is not
          if (placed.every((p) => iou(p.box, s.box) < 0.4)) {
            placed.push(s);
            break;
          }
        }
      }
      let crowdSvg = '';
      if (!empty && imageRng.next() < 0.05) {
        const cls = imageRng.integer(0, classes);
        const w = size * imageRng.between(0.15, 0.3);
        const x0 = imageRng.between(0, size - w);
        const y0 = imageRng.between(0, size - w);
        const cluster = Array.from({ length: imageRng.integer(8, 16) }, () => shape(cls, imageRng.between(x0 + 3, x0 + w - 3), imageRng.between(y0 + 3, y0 + w - 3), size * 0.012 + 1, imageRng));
        crowdSvg = cluster.map((c) => c.svg).join('');
        const b = boxOf(cluster.flatMap((c) => [[c.box[0], c.box[1]], [c.box[2], c.box[3]]] as Array<[number, number]>));
        crowd.push({ cls, box: b });
      }
      const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${size}" height="${size}">${bg.overlay}${crowdSvg}${placed.map((p) => p.svg).join('')}</svg>`;
      const target = path.join(dir, file);
      await sharp(bg.raw, { raw: { width: size, height: size, channels: 3 } })
        .composite([{ input: Buffer.from(svg), top: 0, left: 0 }])
        .jpeg({ quality: 92 })
        .toFile(target + '.tmp');
      await fs.promises.rename(target + '.tmp', target);
      cocoImages.push({ id, file_name: `${split}/${file}`, width: size, height: size });
      const clip = (v: number) => Math.min(Math.max(v, 0), size);
      for (const p of placed) {
        const [x1, y1, x2, y2] = p.box.map(clip);
        annotations.push({ id: annotations.length + 1, image_id: id, category_id: p.cls + 1, bbox: [x1, y1, x2 - x1, y2 - y1].map((v) => Math.round(v * 100) / 100), area: Math.round((x2 - x1) * (y2 - y1)), iscrowd: 0 });
        objects++;
      }
      for (const c of crowd) {
        const [x1, y1, x2, y2] = c.box.map(clip);
        annotations.push({ id: annotations.length + 1, image_id: id, category_id: c.cls + 1, bbox: [x1, y1, x2 - x1, y2 - y1].map((v) => Math.round(v * 100) / 100), area: Math.round((x2 - x1) * (y2 - y1)), iscrowd: 1 });
      }
      images++;
    }
    const json = path.join(options.out, `instances_${split}.json`);
    await fs.promises.writeFile(json + '.tmp', JSON.stringify({ info: { description: 'onestage synthetic shapes', seed: options.seed ?? 0 }, images: cocoImages, annotations, categories }));
    await fs.promises.rename(json + '.tmp', json);
    files[split] = json;
  }
  return { train: files.train, val: files.val, images, objects };
}
