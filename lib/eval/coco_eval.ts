/**
 * COCO bbox evaluation with pycocotools' COCOeval semantics, reproducing its 12 summary numbers and
 * per-category AP to 1e-6: IoU thresholds .50:.05:.95 and recall points 0:.01:1 built as numpy's
 * linspace builds them, maxDets 1/10/100, areas all/small/medium/large taken from each annotation's
 * `area` field (detections: w·h), crowd ground truth as ignore regions matched by intersection over
 * the detection's area (and matchable any number of times), greedy matching in score order with a
 * stable sort, 101-point interpolated precision.
 */
import * as fs from 'node:fs';

export interface CocoGroundTruth {
  images: Array<{ id: number }>;
  annotations: Array<{ id: number; image_id: number; category_id: number; bbox: number[]; area?: number; iscrowd?: number; ignore?: number }>;
  categories: Array<{ id: number; name?: string }>;
}

export interface CocoDetection {
  image_id: number;
  category_id: number;
  /** x, y, width, height. */
  bbox: number[];
  score: number;
}

export interface CocoEvalResult {
  /** AP, AP50, AP75, AP small/medium/large, AR@1, AR@10, AR@100, AR small/medium/large (−1 where undefined). */
  stats: number[];
  /** AP@[.5:.95] (all areas, 100 detections) per category, −1 without ground truth. */
  perClass: Array<{ categoryId: number; name: string; ap: number }>;
}

export const COCO_STAT_NAMES = [
  'AP', 'AP50', 'AP75', 'APsmall', 'APmedium', 'APlarge', 'AR1', 'AR10', 'AR100', 'ARsmall', 'ARmedium', 'ARlarge',
] as const;

/** numpy.linspace(start, stop, num) exactly: i·step + start, the last value = stop. */
function linspace(start: number, stop: number, num: number): number[] {
  const step = (stop - start) / (num - 1);
  return Array.from({ length: num }, (_, i) => (i === num - 1 ? stop : i * step + start));
}

const IOU_THRS = linspace(0.5, 0.95, Math.round((0.95 - 0.5) / 0.05) + 1);
const REC_THRS = linspace(0, 1, Math.round(1 / 0.01) + 1);
const MAX_DETS = [1, 10, 100];
const AREA_RNG: Array<[number, number]> = [[0, 1e10], [0, 32 * 32], [32 * 32, 96 * 96], [96 * 96, 1e10]];

/** maskUtils.iou for boxes (x, y, w, h): crowd ground truth divides by the detection's area. */
function iou(d: ArrayLike<number>, g: ArrayLike<number>, crowd: boolean): number {
  const w = Math.min(d[0] + d[2], g[0] + g[2]) - Math.max(d[0], g[0]);
  if (w <= 0) return 0;
  const h = Math.min(d[1] + d[3], g[1] + g[3]) - Math.max(d[1], g[1]);
  if (h <= 0) return 0;
  const inter = w * h;
  const u = crowd ? d[2] * d[3] : d[2] * d[3] + g[2] * g[3] - inter;
  return inter / u;
}

const T = IOU_THRS.length;
const R = REC_THRS.length;
const A = AREA_RNG.length;
const MATCHED = 1; // bit t: matched at threshold t; bit T + t: ignored at threshold t

/** Growable columns of the evaluated detections of one (category, area) cell of the table. */
class Entries {
  scores = new Float64Array(64);
  /** rank of the detection within its image (for maxDets) */
  ranks = new Int32Array(64);
  /** bits 0..T−1 matched, bits T..2T−1 ignored */
  flags = new Int32Array(64);
  length = 0;
  /** non-ignored ground truth */
  npig = 0;
  /** whether any image contributed (pycocotools' evaluateImg returned something) */
  used = false;

  push(score: number, rank: number, flags: number): void {
    if (this.length === this.scores.length) {
      const grow = <A extends Float64Array | Int32Array>(x: A): A => {
        const y = new (x.constructor as new (n: number) => A)(x.length * 2);
        y.set(x);
        return y;
      };
      this.scores = grow(this.scores);
      this.ranks = grow(this.ranks);
      this.flags = grow(this.flags);
    }
    this.scores[this.length] = score;
    this.ranks[this.length] = rank;
    this.flags[this.length] = flags;
    this.length++;
  }
}

/**
 * pycocotools' evaluateImg for one (image, category) and every area range at once: the IoU matrix is
 * computed once; per area, ground truth is ordered by its ignore flag and detections (by score,
 * at most 100) are matched greedily at each IoU threshold.
 */
function evaluateCell(gtBoxes: number[][], gtArea: number[], gtCrowd: boolean[], dtBoxes: number[][], dtScores: number[], out: Entries[]): void {
  const G = gtBoxes.length;
  // detections by decreasing score, stable, at most maxDets[-1]
  const order = dtScores.map((_, i) => i).sort((x, y) => dtScores[y] - dtScores[x] || x - y).slice(0, MAX_DETS[MAX_DETS.length - 1]);
  const D = order.length;
  const ious = new Float64Array(D * G);
  for (let d = 0; d < D; d++) for (let g = 0; g < G; g++) ious[d * G + g] = iou(dtBoxes[order[d]], gtBoxes[g], gtCrowd[g]);
  const gOrder = new Int32Array(G);
  const gIg = new Uint8Array(G);
  const gtMatched = new Uint8Array(G);
  for (let a = 0; a < A; a++) {
    const [lo, hi] = AREA_RNG[a];
    // ground truth: non-ignored first, stable (numpy mergesort of the ignore flags)
    let k = 0;
    for (let pass = 0; pass < 2; pass++)
      for (let g = 0; g < G; g++) {
        const ig = gtCrowd[g] || gtArea[g] < lo || gtArea[g] > hi ? 1 : 0;
        if (ig === pass) {
          gOrder[k] = g;
          gIg[k++] = ig;
        }
      }
    const cell = out[a];
    cell.used = true;
    for (let j = 0; j < G; j++) if (gIg[j] === 0) cell.npig++;
    const flags = new Int32Array(D);
    for (let t = 0; t < T; t++) {
      gtMatched.fill(0);
      for (let d = 0; d < D; d++) {
        let best = Math.min(IOU_THRS[t], 1 - 1e-10);
        let m = -1;
        for (let j = 0; j < G; j++) {
          const g = gOrder[j];
          if (gtMatched[j] && !gtCrowd[g]) continue;
          if (m > -1 && gIg[m] === 0 && gIg[j] === 1) break;
          const v = ious[d * G + g];
          if (v < best) continue;
          best = v;
          m = j;
        }
        if (m === -1) continue;
        flags[d] |= (MATCHED << t) | (gIg[m] << (T + t));
        gtMatched[m] = 1;
      }
    }
    for (let d = 0; d < D; d++) {
      const box = dtBoxes[order[d]];
      const area = box[2] * box[3];
      let f = flags[d];
      if (area < lo || area > hi) for (let t = 0; t < T; t++) if (!(f & (MATCHED << t))) f |= MATCHED << (T + t);
      cell.push(dtScores[order[d]], d, f);
    }
  }
}

/**
 * pycocotools' accumulate for one (category, area): precision at the 101 recall points [T][R] and
 * recall [T] for each maxDets, or null when there is no (non-ignored) ground truth.
 */
function accumulateCell(e: Entries): Array<{ precision: Float64Array; recall: Float64Array } | null> {
  if (!e.used || e.npig === 0) return MAX_DETS.map(() => null);
  // one stable order by score (ties: image order, then rank) serves every maxDets
  const idx = new Int32Array(e.length);
  for (let i = 0; i < e.length; i++) idx[i] = i;
  const sorted = Array.from(idx).sort((x, y) => e.scores[y] - e.scores[x] || x - y);
  return MAX_DETS.map((maxDet) => {
    const kept = sorted.filter((i) => e.ranks[i] < maxDet);
    const nd = kept.length;
    const precision = new Float64Array(T * R);
    const recall = new Float64Array(T);
    const rc = new Float64Array(nd);
    const pr = new Float64Array(nd);
    for (let t = 0; t < T; t++) {
      let tp = 0;
      let fp = 0;
      for (let i = 0; i < nd; i++) {
        const f = e.flags[kept[i]];
        if (!(f & (MATCHED << (T + t)))) {
          if (f & (MATCHED << t)) tp++;
          else fp++;
        }
        rc[i] = tp / e.npig;
        pr[i] = tp / (fp + tp + Number.EPSILON);
      }
      recall[t] = nd ? rc[nd - 1] : 0;
      for (let i = nd - 1; i > 0; i--) if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
      for (let r = 0; r < R; r++) {
        // numpy.searchsorted(rc, thr, side='left'): first index with rc[i] >= thr
        let lo = 0;
        let hi = nd;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (rc[mid] < REC_THRS[r]) lo = mid + 1;
          else hi = mid;
        }
        if (lo >= nd) break; // pycocotools: the IndexError leaves the rest at 0
        precision[t * R + r] = pr[lo];
      }
    }
    return { precision, recall };
  });
}

function mean(values: number[]): number {
  const v = values.filter((x) => x > -1);
  return v.length === 0 ? -1 : v.reduce((a, b) => a + b, 0) / v.length;
}

function readJson<T>(value: T | string, what: string): T {
  if (typeof value !== 'string') return value;
  try {
    return JSON.parse(fs.readFileSync(value, 'utf8')) as T;
  } catch (err) {
    throw new Error(`${value}: cannot read the ${what} (${(err as Error).message})`);
  }
}

/**
 * COCOeval (bbox) of `detections` against `groundTruth` (objects or JSON file paths).
 * @example const { stats, perClass } = evaluateCoco('instances_val.json', results);
 */
export function evaluateCoco(groundTruth: CocoGroundTruth | string, detections: CocoDetection[] | string): CocoEvalResult {
  const gtJson = readJson(groundTruth, 'ground truth');
  const dets = readJson(detections, 'detections');
  if (!gtJson || !Array.isArray(gtJson.images) || !Array.isArray(gtJson.annotations) || !Array.isArray(gtJson.categories))
    throw new TypeError('Expected COCO ground truth with images, annotations and categories');
  if (!Array.isArray(dets)) throw new TypeError('Expected an array of COCO detections {image_id, category_id, bbox, score}');
  const imgIds = [...new Set(gtJson.images.map((i) => i.id))].sort((a, b) => a - b);
  const catIds = [...new Set(gtJson.categories.map((c) => c.id))].sort((a, b) => a - b);
  const imgIndex = new Map(imgIds.map((id, i) => [id, i]));
  const catIndex = new Map(catIds.map((id, k) => [id, k]));
  const K = catIds.length;
  interface Cell {
    gtBoxes: number[][];
    gtArea: number[];
    gtCrowd: boolean[];
    dtBoxes: number[][];
    dtScores: number[];
  }
  const cells = new Map<number, Cell>();
  const cellOf = (img: number, k: number): Cell => {
    const key = img * K + k;
    let c = cells.get(key);
    if (!c) cells.set(key, (c = { gtBoxes: [], gtArea: [], gtCrowd: [], dtBoxes: [], dtScores: [] }));
    return c;
  };
  for (const a of gtJson.annotations) {
    const img = imgIndex.get(a.image_id);
    const k = catIndex.get(a.category_id);
    if (img === undefined || k === undefined) continue; // pycocotools evaluates the listed images and categories only
    const c = cellOf(img, k);
    c.gtBoxes.push(a.bbox);
    c.gtArea.push(a.area ?? a.bbox[2] * a.bbox[3]);
    c.gtCrowd.push(Boolean(a.iscrowd));
  }
  dets.forEach((d, i) => {
    const img = imgIndex.get(d.image_id);
    if (img === undefined) throw new RangeError(`detection ${i} refers to image_id ${d.image_id}, which the ground truth does not have`);
    if (!Array.isArray(d.bbox) || d.bbox.length !== 4 || typeof d.score !== 'number') throw new TypeError(`detection ${i} needs a 4-number bbox and a score`);
    const k = catIndex.get(d.category_id);
    if (k === undefined) return;
    const c = cellOf(img, k);
    c.dtBoxes.push(d.bbox);
    c.dtScores.push(d.score);
  });
  // entries[k][a]: cells in image order, as pycocotools concatenates them
  const entries = Array.from({ length: K }, () => Array.from({ length: A }, () => new Entries()));
  for (const key of [...cells.keys()].sort((x, y) => x - y)) {
    const c = cells.get(key)!;
    evaluateCell(c.gtBoxes, c.gtArea, c.gtCrowd, c.dtBoxes, c.dtScores, entries[key % K]);
  }
  // precision[t][r][k][a][m] and recall[t][k][a][m], −1 where undefined
  const P = (t: number, r: number, k: number, a: number, m: number) => (((t * R + r) * K + k) * A + a) * MAX_DETS.length + m;
  const Rc = (t: number, k: number, a: number, m: number) => ((t * K + k) * A + a) * MAX_DETS.length + m;
  const precision = new Float64Array(T * R * K * A * MAX_DETS.length).fill(-1);
  const recall = new Float64Array(T * K * A * MAX_DETS.length).fill(-1);
  for (let k = 0; k < K; k++)
    for (let a = 0; a < A; a++)
      accumulateCell(entries[k][a]).forEach((acc, m) => {
        if (!acc) return;
        for (let t = 0; t < T; t++) {
          recall[Rc(t, k, a, m)] = acc.recall[t];
          for (let r = 0; r < R; r++) precision[P(t, r, k, a, m)] = acc.precision[t * R + r];
        }
      });
  const ap = (t: number | null, a: number, m: number) => {
    const v: number[] = [];
    for (let ti = 0; ti < T; ti++) {
      if (t !== null && ti !== t) continue;
      for (let r = 0; r < R; r++) for (let k = 0; k < K; k++) v.push(precision[P(ti, r, k, a, m)]);
    }
    return mean(v);
  };
  const ar = (a: number, m: number) => {
    const v: number[] = [];
    for (let ti = 0; ti < T; ti++) for (let k = 0; k < K; k++) v.push(recall[Rc(ti, k, a, m)]);
    return mean(v);
  };
  const t50 = IOU_THRS.indexOf(0.5);
  const t75 = IOU_THRS.indexOf(0.75);
  const stats = [ap(null, 0, 2), ap(t50, 0, 2), ap(t75, 0, 2), ap(null, 1, 2), ap(null, 2, 2), ap(null, 3, 2), ar(0, 0), ar(0, 1), ar(0, 2), ar(1, 2), ar(2, 2), ar(3, 2)];
  const names = new Map(gtJson.categories.map((c) => [c.id, c.name ?? String(c.id)]));
  const perClass = catIds.map((cat, k) => {
    const v: number[] = [];
    for (let t = 0; t < T; t++) for (let r = 0; r < R; r++) v.push(precision[P(t, r, k, 0, 2)]);
    return { categoryId: cat, name: names.get(cat) ?? String(cat), ap: mean(v) };
  });
  return { stats, perClass };
}
