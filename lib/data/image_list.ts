/**
 * A dataset of plain image files without annotations, for running a detector on pictures through
 * the same loader (resize, normalisation, padding) as training and evaluation.
 */
import * as path from 'node:path';
import { checkIndex, DataWarning, DetectionDataset, GroundTruth, SampleRecord } from './dataset';

export class ImageListDataset implements DetectionDataset {
  readonly classes: string[];
  readonly categoryIds: number[];
  readonly warnings: DataWarning[] = [];
  private readonly records: SampleRecord[];
  private readonly imageIds: Map<number | string, number>;

  /** `files`: image paths (record ids are the resolved paths); `classes`: the model's class names. */
  constructor(files: string[], classes: string[]) {
    if (!Array.isArray(files) || files.some((f) => typeof f !== 'string' || f === '')) throw new TypeError('Expected an array of image paths for files');
    this.classes = [...classes];
    this.categoryIds = classes.map((_, i) => i + 1);
    this.records = files.map((f) => ({ id: path.resolve(f), file: path.resolve(f), boxes: new Float32Array(0), labels: new Int32Array(0) }));
    this.imageIds = new Map(this.records.map((r, k) => [r.id, k + 1]));
  }

  get length(): number {
    return this.records.length;
  }

  record(index: number): SampleRecord {
    checkIndex(index, this.records.length);
    return this.records[index];
  }

  imageIdOf(recordId: number | string): number {
    const id = this.imageIds.get(recordId);
    if (id === undefined) throw new RangeError(`no image '${String(recordId)}' in this list`);
    return id;
  }

  groundTruth(): GroundTruth {
    return { images: this.records.map((r, k) => ({ id: k + 1, file_name: r.file })), annotations: [], categories: this.classes.map((name, i) => ({ id: i + 1, name })) };
  }
}
