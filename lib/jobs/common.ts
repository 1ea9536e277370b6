/**
 * Pieces shared by the command-line jobs: opening a dataset by format, resolving the device.
 */
import { CocoDataset } from '../data/coco';
import { CsvDataset } from '../data/csv';
import type { DetectionDataset } from '../data/dataset';
import { buildInfo } from '../runtime';
import type { Device } from '../tensor';

export interface DatasetSpec {
  format: 'coco' | 'csv';
  /** COCO instances JSON or CSV annotations. */
  file: string;
  /** CSV: classes file. */
  classes?: string;
  /** COCO: image folder. */
  images?: string;
}

export async function openDataset(spec: DatasetSpec): Promise<DetectionDataset> {
  if (spec.format === 'csv') {
    if (!spec.classes) throw new Error(`a CSV dataset (${spec.file}) needs its classes file`);
    return CsvDataset.open(spec.file, spec.classes);
  }
  return CocoDataset.open(spec.file, spec.images ? { images: spec.images } : {});
}

/** 'auto' → 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without one is an error. */
export function resolveDevice(device: 'auto' | Device): Device {
  const cuda = buildInfo().cudaAvailable;
  if (device === 'auto') return cuda ? 'cuda' : 'cpu';
  if (device === 'cuda' && !cuda) throw new Error("device 'cuda' was asked for but CUDA is not available (this build or machine has no usable GPU)");
  return device;
}

/** Metadata key recording the input size a model was trained at (for eval and detect defaults). */
export const INPUT_METADATA_KEY = 'onestage.input';
