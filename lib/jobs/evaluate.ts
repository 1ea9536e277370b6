/**
 * `onestage eval`: a saved model evaluated on a dataset — the COCO table (and VOC AP@0.5) printed,
 * the numbers and the detections (COCO results format) written as JSON.
 */
import * as path from 'node:path';
import { DataLoader } from '../data/loader';
import { DetectorEvaluation, evaluateDetector } from '../eval/evaluate';
import { writeJsonAtomic } from '../io';
import { Model } from '../model';
import { readSafetensorsHeader } from '../safetensors';
import type { Device } from '../tensor';
import { DatasetSpec, INPUT_METADATA_KEY, openDataset, resolveDevice } from './common';

export interface InputSize {
  minSide: number;
  maxSide: number;
}

/** The input size recorded with the weights by `onestage train`, else 608/1024 (pytorch-retinanet). */
export function inputSizeOf(weights: string, override: Partial<InputSize> = {}): InputSize {
  let recorded: Partial<InputSize> = {};
  const text = readSafetensorsHeader(weights).metadata[INPUT_METADATA_KEY];
  if (text) {
    try {
      recorded = JSON.parse(text) as Partial<InputSize>;
    } catch {
      recorded = {};
    }
  }
  return { minSide: override.minSide ?? recorded.minSide ?? 608, maxSide: override.maxSide ?? recorded.maxSide ?? 1024 };
}

export interface EvalJobOptions extends Partial<InputSize> {
  weights: string;
  dataset: DatasetSpec;
  device?: 'auto' | Device;
  batchSize?: number;
  voc?: boolean;
  /** Folder for eval.json and detections.json; none: nothing written. */
  out?: string;
  scoreThreshold?: number;
}

export async function evalJob(o: EvalJobOptions): Promise<DetectorEvaluation> {
  const device = resolveDevice(o.device ?? 'auto');
  const dataset = await openDataset(o.dataset);
  const model = await Model.fromWeights(o.weights, { device });
  try {
    if (model.config.numClasses !== dataset.classes.length)
      throw new Error(`${o.weights} detects ${model.config.numClasses} classes but ${o.dataset.file} has ${dataset.classes.length}`);
    const transform = inputSizeOf(o.weights, o);
    const loader = new DataLoader(dataset, { batchSize: o.batchSize ?? 4, shuffle: false, augment: false, device, transform });
    const r = await evaluateDetector(model, loader, { voc: o.voc, ...(o.scoreThreshold !== undefined ? { scoreThreshold: o.scoreThreshold } : {}) });
    if (o.out) {
      writeJsonAtomic(path.join(o.out, 'eval.json'), { weights: path.resolve(o.weights), dataset: path.resolve(o.dataset.file), stats: r.stats, perClass: r.perClass, voc: r.voc, images: r.images, seconds: r.seconds }, 2);
      writeJsonAtomic(path.join(o.out, 'detections.json'), r.detections);
    }
    return r;
  } finally {
    model.dispose();
  }
}
