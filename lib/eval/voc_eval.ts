/**
 * VOC-style AP at one IoU threshold (default 0.5) with all-point interpolation (the VOC2010+ rule,
 * mmdetection's `eval_map` with `mode='area'`): per class, detections by decreasing score are matched
 * greedily to the ground truth of their image with the highest IoU; a detection whose best match is
 * a crowd/ignore region counts as neither true nor false positive; boxes in pixels without +1.
 */
import type { CocoDetection, CocoGroundTruth } from './coco_eval';

export interface VocEvalOptions {
  /** IoU a detection needs with a ground-truth box to be a true positive; default 0.5. */
  iouThreshold?: number;
}

export interface VocEvalResult {
  /** Mean of the per-class APs over classes that have ground truth. */
  map: number;
  /** AP per category (−1 without ground truth), with the count of (non-ignored) ground truth. */
  perClass: Array<{ categoryId: number; name: string; ap: number; groundTruth: number; detections: number }>;
}

function iou(a: number[], b: number[]): number {
  const w = Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]);
  if (w <= 0) return 0;
  const h = Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]);
  if (h <= 0) return 0;
  const inter = w * h;
  return inter / (a[2] * a[3] + b[2] * b[3] - inter);
}

/** Area under the precision envelope over all recall points. */
export function allPointAp(recall: number[], precision: number[]): number {
  const mrec = [0, ...recall, 1];
  const mpre = [0, ...precision, 0];
  for (let i = mpre.length - 1; i > 0; i--) mpre[i - 1] = Math.max(mpre[i - 1], mpre[i]);
  let ap = 0;
  for (let i = 1; i < mrec.length; i++) if (mrec[i] !== mrec[i - 1]) ap += (mrec[i] - mrec[i - 1]) * mpre[i];
  return ap;
}

/**
 * VOC AP of `detections` against `groundTruth` (COCO form; `iscrowd` or `ignore` marks ignore regions).
 * @example const { map } = evaluateVoc(dataset.groundTruth(), result.detections);
 */
export function evaluateVoc(groundTruth: CocoGroundTruth, detections: CocoDetection[], options: VocEvalOptions = {}): VocEvalResult {
  const thr = options.iouThreshold ?? 0.5;
  if (typeof thr !== 'number' || !(thr > 0 && thr <= 1)) throw new RangeError(`Expected a number in (0, 1] for iouThreshold but received ${String(thr)}`);
  const perClass: VocEvalResult['perClass'] = [];
  const categories = [...groundTruth.categories].sort((a, b) => a.id - b.id);
  for (const cat of categories) {
    // ground truth of this class by image: boxes and ignore flags
    const gts = new Map<number, { boxes: number[][]; ignore: boolean[]; covered: Uint8Array }>();
    let count = 0;
    for (const a of groundTruth.annotations) {
      if (a.category_id !== cat.id) continue;
      let g = gts.get(a.image_id);
      if (!g) gts.set(a.image_id, (g = { boxes: [], ignore: [], covered: new Uint8Array(0) }));
      const ignore = Boolean(a.iscrowd) || Boolean(a.ignore);
      g.boxes.push(a.bbox);
      g.ignore.push(ignore);
      if (!ignore) count++;
    }
    for (const g of gts.values()) g.covered = new Uint8Array(g.boxes.length);
    const dets = detections.filter((d) => d.category_id === cat.id);
    const order = dets.map((_, i) => i).sort((a, b) => dets[b].score - dets[a].score || a - b);
    const recall: number[] = [];
    const precision: number[] = [];
    let tp = 0;
    let fp = 0;
    for (const i of order) {
      const d = dets[i];
      const g = gts.get(d.image_id);
      let best = -1;
      let bestIou = -Infinity;
      if (g) for (let k = 0; k < g.boxes.length; k++) {
        const v = iou(d.bbox, g.boxes[k]);
        if (v > bestIou) [best, bestIou] = [k, v];
      }
      if (g && bestIou >= thr) {
        if (g.ignore[best]) continue;
        if (!g.covered[best]) {
          g.covered[best] = 1;
          tp++;
        } else fp++;
      } else fp++;
      recall.push(count > 0 ? tp / count : 0);
      precision.push(tp / Math.max(tp + fp, Number.EPSILON));
    }
    perClass.push({ categoryId: cat.id, name: cat.name ?? String(cat.id), ap: count > 0 ? allPointAp(recall, precision) : -1, groundTruth: count, detections: dets.length });
  }
  const valid = perClass.filter((c) => c.ap >= 0);
  return { map: valid.length ? valid.reduce((s, c) => s + c.ap, 0) / valid.length : -1, perClass };
}
