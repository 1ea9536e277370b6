/**
 * Evaluation of a detector on a dataset: detections over a loader (no augmentation), converted to
 * COCO results (image ids and category ids of the dataset), scored with `evaluateCoco` and, if asked,
 * `evaluateVoc`; results can be written as a COCO results JSON file.
 */
import type { Batch, DataLoader } from '../data/loader';
import type { ProcessGroup } from '../distributed';
import { disposeBatch } from '../data/loader';
import type { Detection, DetectOptions, Model } from '../model';
import { CocoDetection, CocoEvalResult, COCO_STAT_NAMES, evaluateCoco } from './coco_eval';
import { evaluateVoc, VocEvalResult } from './voc_eval';

export interface EvaluateOptions extends DetectOptions {
  /** Also compute VOC AP at IoU 0.5 (all-point); default false. */
  voc?: boolean;
  /** Called after each batch with the images done so far. */
  onProgress?: (done: number, total: number) => void;
  /**
   * Data-parallel evaluation: every rank detects on its shard (the loader's `shard` must be the
   * group's), rank 0 merges the detections (an image in two shards — padding — counts once), scores
   * them, and every rank gets the numbers (rank 0 alone keeps `detections`).
   */
  group?: ProcessGroup;
}

export interface DetectorEvaluation extends CocoEvalResult {
  /** VOC AP@0.5 when asked. */
  voc?: VocEvalResult;
  /** Every detection as a COCO result (x, y, w, h in original pixels). */
  detections: CocoDetection[];
  images: number;
  seconds: number;
}

/** Detections of one batch as COCO results, with the dataset's image and category ids. */
export function toCocoResults(batch: Pick<Batch, 'ids'>, detections: Detection[], imageIdOf: (id: number | string) => number, categoryIds: number[]): CocoDetection[] {
  const out: CocoDetection[] = [];
  detections.forEach((d, i) => {
    const imageId = imageIdOf(batch.ids[i]);
    for (let k = 0; k < d.scores.length; k++) {
      const x1 = d.boxes[4 * k];
      const y1 = d.boxes[4 * k + 1];
      const w = d.boxes[4 * k + 2] - x1;
      const h = d.boxes[4 * k + 3] - y1;
      // rounded as JSON would keep them; float32 values printed with float64 digits are noise
      out.push({ image_id: imageId, category_id: categoryIds[d.labels[k]], bbox: [x1, y1, w, h].map((v) => Math.round(v * 1e3) / 1e3), score: Math.round(d.scores[k] * 1e5) / 1e5 });
    }
  });
  return out;
}

/**
 * Runs `model.detect` over every batch of `loader` (in eval mode; the mode is restored) and
 * evaluates against the loader's dataset ground truth.
 * @example const r = await evaluateDetector(model, valLoader); console.log(r.stats[1]); // AP50
 */
export async function evaluateDetector(model: Model, loader: DataLoader, options: EvaluateOptions = {}): Promise<DetectorEvaluation> {
  if (loader.augments) throw new RangeError('evaluateDetector needs a loader without augmentation (augment: false)');
  const { voc, onProgress, group, ...detectOptions } = options;
  const dataset = loader.dataset;
  const sharded = group !== undefined && group.worldSize > 1;
  const shard = loader.shard ?? { rank: 0, count: 1 };
  if (sharded && (shard.count !== group.worldSize || shard.rank !== group.rank))
    throw new RangeError(`data-parallel evaluation needs a loader sharded for this rank ({ shard: group.shard } = rank ${group.rank} of ${group.worldSize}); it has rank ${shard.rank} of ${shard.count}`);
  if (!sharded && shard.count > 1) throw new RangeError(`the loader is one shard (rank ${shard.rank} of ${shard.count}): pass options.group to merge the shards' detections`);
  const started = process.hrtime.bigint();
  const wasTraining = model.info.training;
  model.eval();
  const detections: CocoDetection[] = [];
  const seen: number[] = [];
  let images = 0;
  try {
    for await (const batch of loader.epoch(0)) {
      try {
        const dets = await model.detect({ images: batch.images, scales: batch.scales, sizes: batch.sizes }, detectOptions);
        detections.push(...toCocoResults(batch, dets, (id) => dataset.imageIdOf(id), dataset.categoryIds));
        for (const id of batch.ids) seen.push(dataset.imageIdOf(id));
        images += batch.ids.length;
        onProgress?.(images, dataset.length);
      } finally {
        disposeBatch(batch);
      }
    }
  } finally {
    model.train(wasTraining);
  }
  const score = (all: CocoDetection[], count: number) => {
    const gt = dataset.groundTruth();
    return { ...evaluateCoco(gt, all), voc: voc ? evaluateVoc(gt, all) : undefined, detections: all, images: count, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
  };
  if (!sharded) {
    if (!loader.complete) throw new Error(`evaluation saw ${images} of ${dataset.length} images (dropLast or skipped samples): its numbers would not be those of the dataset`);
    return score(detections, images);
  }
  const parts = await group.gather('evaluation', { images: seen, detections, complete: loader.complete });
  let full: DetectorEvaluation | undefined;
  let problem: string | undefined;
  if (parts) {
    // an image padded into two shards counts once: its detections from the lowest rank
    const counted = new Set<number>();
    const merged: CocoDetection[] = [];
    for (const part of parts) {
      const fresh = new Set(part.images.filter((id) => !counted.has(id)));
      for (const id of fresh) counted.add(id);
      merged.push(...part.detections.filter((d) => fresh.has(d.image_id)));
    }
    if (parts.some((p) => !p.complete) || counted.size !== dataset.length)
      problem = `evaluation saw ${counted.size} of ${dataset.length} images over ${group.worldSize} ranks (dropLast or skipped samples): its numbers would not be those of the dataset`;
    else full = score(merged, counted.size);
  }
  const shared = await group.share('evaluation', full ? { stats: full.stats, perClass: full.perClass, voc: full.voc, images: full.images } : { problem });
  if ('problem' in shared) throw new Error(shared.problem ?? 'evaluation failed on rank 0');
  return full ?? { ...(shared as Omit<DetectorEvaluation, 'detections' | 'seconds'>), detections: [], seconds: Number(process.hrtime.bigint() - started) / 1e9 };
}

/** The 12 COCO numbers and per-class AP as a text table (as pycocotools prints them, plus the classes). */
export function formatEvaluation(r: Pick<DetectorEvaluation, 'stats' | 'perClass' | 'voc'>): string {
  const lines = COCO_STAT_NAMES.map((name, i) => `${name.padEnd(9)} ${r.stats[i] < 0 ? '   n/a' : r.stats[i].toFixed(4)}`);
  lines.push('', 'class'.padEnd(16) + ' AP[.5:.95]' + (r.voc ? '  VOC AP50' : ''));
  r.perClass.forEach((c, i) => {
    const v = r.voc?.perClass.find((p) => p.categoryId === c.categoryId);
    lines.push(`${c.name.slice(0, 16).padEnd(16)} ${c.ap < 0 ? '       n/a' : c.ap.toFixed(4).padStart(10)}` + (v ? (v.ap < 0 ? '       n/a' : v.ap.toFixed(4).padStart(10)) : ''));
    void i;
  });
  if (r.voc) lines.push(`${'mAP (VOC)'.padEnd(16)} ${''.padStart(10)}${r.voc.map.toFixed(4).padStart(10)}`);
  return lines.join('\n');
}
