/**
 * Evaluation of a detector on a dataset: detections over a loader (no augmentation), converted to
 * COCO results (image ids and category ids of the dataset), scored with `evaluateCoco` and, if asked,
 * `evaluateVoc`; results can be written as a COCO results JSON file.
 */
import type { Batch, DataLoader } from '../data/loader';
import { disposeBatch } from '../data/loader';
import type { Detection, DetectOptions, Model } from '../model';
import { CocoDetection, CocoEvalResult, COCO_STAT_NAMES, evaluateCoco } from './coco_eval';
import { evaluateVoc, VocEvalResult } from './voc_eval';

export interface EvaluateOptions extends DetectOptions {
  /** Also compute VOC AP at IoU 0.5 (all-point); default false. */
  voc?: boolean;
  /** Called after each batch with the images done so far. */
  onProgress?: (done: number, total: number) => void;
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
  const { voc, onProgress, ...detectOptions } = options;
  const dataset = loader.dataset;
  const started = process.hrtime.bigint();
  const wasTraining = model.info.training;
  model.eval();
  const detections: CocoDetection[] = [];
  let images = 0;
  try {
    for await (const batch of loader.epoch(0)) {
      try {
        const dets = await model.detect({ images: batch.images, scales: batch.scales, sizes: batch.sizes }, detectOptions);
        detections.push(...toCocoResults(batch, dets, (id) => dataset.imageIdOf(id), dataset.categoryIds));
        images += batch.ids.length;
        onProgress?.(images, dataset.length);
      } finally {
        disposeBatch(batch);
      }
    }
  } finally {
    model.train(wasTraining);
  }
  if (!loader.complete) throw new Error(`evaluation saw ${images} of ${dataset.length} images (dropLast or skipped samples): its numbers would not be those of the dataset`);
  const gt = dataset.groundTruth();
  const coco = evaluateCoco(gt, detections);
  return { ...coco, voc: voc ? evaluateVoc(gt, detections) : undefined, detections, images, seconds: Number(process.hrtime.bigint() - started) / 1e9 };
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
