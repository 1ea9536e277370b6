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

interface Gt {
  box: number[];
  area: number;
  crowd: boolean;
}
interface Dt {
  box: number[];
  area: number;
  score: number;
}
interface ImageEval {
  scores: number[]; // sorted, ≤ 100
  matched: Uint8Array[]; // [T][D]
  dtIgnore: Uint8Array[]; // [T][D]
  gtIgnore: Uint8Array; // [G]
}

/** maskUtils.iou for boxes (x, y, w, h): crowd ground truth divides by the detection's area. */
function iou(d: number[], g: number[], crowd: boolean): number {
  const w = Math.min(d[0] + d[2], g[0] + g[2]) - Math.max(d[0], g[0]);
  if (w <= 0) return 0;
  const h = Math.min(d[1] + d[3], g[1] + g[3]) - Math.max(d[1], g[1]);
  if (h <= 0) return 0;
  const inter = w * h;
  const u = crowd ? d[2] * d[3] : d[2] * d[3] + g[2] * g[3] - inter;
  return inter / u;
}

/** Stable order of indices by a key (ascending), like numpy's mergesort argsort. */
function stableOrder(n: number, key: (i: number) => number): number[] {
  return Array.from({ length: n }, (_, i) => i).sort((a, b) => key(a) - key(b) || a - b);
}

function evaluateImage(gtAll: Gt[], dtAll: Dt[], area: [number, number]): ImageEval | null {
  if (gtAll.length === 0 && dtAll.length === 0) return null;
  const gtIg0 = gtAll.map((g) => (g.crowd || g.area < area[0] || g.area > area[1] ? 1 : 0));
  const gOrder = stableOrder(gtAll.length, (i) => gtIg0[i]);
  const gt = gOrder.map((i) => gtAll[i]);
  const gtIg = Uint8Array.from(gOrder.map((i) => gtIg0[i]));
  const dt = stableOrder(dtAll.length, (i) => -dtAll[i].score).slice(0, MAX_DETS[2]).map((i) => dtAll[i]);
  const ious = dt.map((d) => gt.map((g) => iou(d.box, g.box, g.crowd)));
  const T = IOU_THRS.length;
  const matched = Array.from({ length: T }, () => new Uint8Array(dt.length));
  const dtIgnore = Array.from({ length: T }, () => new Uint8Array(dt.length));
  for (let t = 0; t < T; t++) {
    const gtMatched = new Uint8Array(gt.length);
    for (let di = 0; di < dt.length; di++) {
      let best = Math.min(IOU_THRS[t], 1 - 1e-10);
      let m = -1;
      for (let gi = 0; gi < gt.length; gi++) {
        if (gtMatched[gi] && !gt[gi].crowd) continue;
        if (m > -1 && gtIg[m] === 0 && gtIg[gi] === 1) break;
        if (ious[di][gi] < best) continue;
        best = ious[di][gi];
        m = gi;
      }
      if (m === -1) continue;
      dtIgnore[t][di] = gtIg[m];
      matched[t][di] = 1;
      gtMatched[m] = 1;
    }
    for (let di = 0; di < dt.length; di++) {
      const outside = dt[di].area < area[0] || dt[di].area > area[1];
      if (!matched[t][di] && outside) dtIgnore[t][di] = 1;
    }
  }
  return { scores: dt.map((d) => d.score), matched, dtIgnore, gtIgnore: gtIg };
}

/** Precision [T][R] and recall [T] of one (category, area, maxDet) cell, or null when it has no ground truth. */
function accumulate(evals: ImageEval[], maxDet: number): { precision: number[][]; recall: number[] } | null {
  const T = IOU_THRS.length;
  const scores: number[] = [];
  const owner: Array<[number, number]> = [];
  let npig = 0;
  evals.forEach((e, k) => {
    const n = Math.min(maxDet, e.scores.length);
    for (let d = 0; d < n; d++) {
      scores.push(e.scores[d]);
      owner.push([k, d]);
    }
    for (const ig of e.gtIgnore) if (ig === 0) npig++;
  });
  if (npig === 0) return null;
  const order = stableOrder(scores.length, (i) => -scores[i]);
  const precision: number[][] = [];
  const recall: number[] = [];
  for (let t = 0; t < T; t++) {
    const tp: number[] = [];
    const fp: number[] = [];
    let tps = 0;
    let fps = 0;
    for (const i of order) {
      const [k, d] = owner[i];
      if (evals[k].dtIgnore[t][d]) {
        tp.push(tps);
        fp.push(fps);
        continue;
      }
      if (evals[k].matched[t][d]) tps++;
      else fps++;
      tp.push(tps);
      fp.push(fps);
    }
    const nd = tp.length;
    const rc = tp.map((v) => v / npig);
    const pr = tp.map((v, i) => v / (fp[i] + v + Number.EPSILON));
    recall.push(nd ? rc[nd - 1] : 0);
    for (let i = nd - 1; i > 0; i--) if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
    const q = new Array<number>(REC_THRS.length).fill(0);
    for (let r = 0; r < REC_THRS.length; r++) {
      // numpy.searchsorted(rc, thr, side='left'): first index with rc[i] >= thr
      let lo = 0;
      let hi = nd;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (rc[mid] < REC_THRS[r]) lo = mid + 1;
        else hi = mid;
      }
      if (lo >= nd) break; // pycocotools: the IndexError leaves the rest at 0
      q[r] = pr[lo];
    }
    precision.push(q);
  }
  return { precision, recall };
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
  const known = new Set(imgIds);
  const key = (img: number, cat: number) => `${img}:${cat}`;
  const gts = new Map<string, Gt[]>();
  for (const a of gtJson.annotations) {
    const list = gts.get(key(a.image_id, a.category_id)) ?? [];
    list.push({ box: a.bbox, area: a.area ?? a.bbox[2] * a.bbox[3], crowd: Boolean(a.iscrowd) || Boolean(a.ignore) });
    gts.set(key(a.image_id, a.category_id), list);
  }
  const dts = new Map<string, Dt[]>();
  dets.forEach((d, i) => {
    if (!known.has(d.image_id)) throw new RangeError(`detection ${i} refers to image_id ${d.image_id}, which the ground truth does not have`);
    if (!Array.isArray(d.bbox) || d.bbox.length !== 4 || typeof d.score !== 'number') throw new TypeError(`detection ${i} needs a 4-number bbox and a score`);
    const list = dts.get(key(d.image_id, d.category_id)) ?? [];
    list.push({ box: d.bbox, area: d.bbox[2] * d.bbox[3], score: d.score });
    dts.set(key(d.image_id, d.category_id), list);
  });
  const T = IOU_THRS.length;
  // precision[t][r][k][a][m] and recall[t][k][a][m], −1 where undefined
  const P = (t: number, r: number, k: number, a: number, m: number) => (((t * REC_THRS.length + r) * catIds.length + k) * 4 + a) * 3 + m;
  const Rc = (t: number, k: number, a: number, m: number) => ((t * catIds.length + k) * 4 + a) * 3 + m;
  const precision = new Float64Array(T * REC_THRS.length * catIds.length * 12).fill(-1);
  const recall = new Float64Array(T * catIds.length * 12).fill(-1);
  catIds.forEach((cat, k) => {
    AREA_RNG.forEach((area, a) => {
      const evals = imgIds.map((img) => evaluateImage(gts.get(key(img, cat)) ?? [], dts.get(key(img, cat)) ?? [], area)).filter((e): e is ImageEval => e !== null);
      if (evals.length === 0) return;
      MAX_DETS.forEach((maxDet, m) => {
        const acc = accumulate(evals, maxDet);
        if (!acc) return;
        for (let t = 0; t < T; t++) {
          recall[Rc(t, k, a, m)] = acc.recall[t];
          for (let r = 0; r < REC_THRS.length; r++) precision[P(t, r, k, a, m)] = acc.precision[t][r];
        }
      });
    });
  });
  const ap = (t: number | null, a: number, m: number) => {
    const v: number[] = [];
    for (let ti = 0; ti < T; ti++) {
      if (t !== null && ti !== t) continue;
      for (let r = 0; r < REC_THRS.length; r++) for (let k = 0; k < catIds.length; k++) v.push(precision[P(ti, r, k, a, m)]);
    }
    return mean(v);
  };
  const ar = (a: number, m: number) => {
    const v: number[] = [];
    for (let ti = 0; ti < T; ti++) for (let k = 0; k < catIds.length; k++) v.push(recall[Rc(ti, k, a, m)]);
    return mean(v);
  };
  const t50 = IOU_THRS.indexOf(0.5);
  const t75 = IOU_THRS.indexOf(0.75);
  const stats = [ap(null, 0, 2), ap(t50, 0, 2), ap(t75, 0, 2), ap(null, 1, 2), ap(null, 2, 2), ap(null, 3, 2), ar(0, 0), ar(0, 1), ar(0, 2), ar(1, 2), ar(2, 2), ar(3, 2)];
  const names = new Map(gtJson.categories.map((c) => [c.id, c.name ?? String(c.id)]));
  const perClass = catIds.map((cat, k) => {
    const v: number[] = [];
    for (let t = 0; t < T; t++) for (let r = 0; r < REC_THRS.length; r++) v.push(precision[P(t, r, k, 0, 2)]);
    return { categoryId: cat, name: names.get(cat) ?? String(cat), ap: mean(v) };
  });
  return { stats, perClass };
}
