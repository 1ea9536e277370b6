/**
 * What every dataset offers the loader: sample files, class names, annotations in original image
 * pixels (x1, y1, x2, y2; label = contiguous class index, −2 for ignore/crowd regions), and sizes.
 */
export interface SampleAnnotation {
  /** `[n × 4]` row-major x1, y1, x2, y2 in original pixels. */
  boxes: Float32Array;
  /** `[n]` contiguous class index, or −2 for an ignore (crowd) region. */
  labels: Int32Array;
}

export interface SampleRecord extends SampleAnnotation {
  /** Dataset id (COCO image id; CSV: the image path). */
  id: number | string;
  file: string;
  /** Original size, when the annotation file states it. */
  width?: number;
  height?: number;
}

/** A note about data that was changed on reading (clipped box, dropped box). */
export interface DataWarning {
  file: string;
  message: string;
}

/** Ground truth in COCO's form, for evaluation (`evaluateCoco`, `evaluateVoc`). */
export interface GroundTruth {
  images: Array<{ id: number; file_name?: string; width?: number; height?: number }>;
  annotations: Array<{ id: number; image_id: number; category_id: number; bbox: number[]; area?: number; iscrowd?: number; ignore?: number }>;
  categories: Array<{ id: number; name?: string }>;
}

export interface DetectionDataset {
  readonly length: number;
  /** Class names by contiguous index. */
  readonly classes: string[];
  /** Category id (COCO: the file's; CSV: index + 1) of each contiguous label. */
  readonly categoryIds: number[];
  /** The numeric image id used in evaluation for a record id (COCO: the same; CSV: row order + 1). */
  imageIdOf(recordId: number | string): number;
  /** The dataset's ground truth for evaluation (COCO: as in the file, crowd regions and `area` included). */
  groundTruth(): GroundTruth;
  /** Boxes changed on reading (clipped, or dropped for zero/negative size). Never silent. */
  readonly warnings: DataWarning[];
  record(index: number): SampleRecord;
}

export function checkIndex(index: number, length: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= length)
    throw new RangeError(`Expected an integer between 0 and ${length - 1} for index but received ${String(index)}`);
}

/**
 * Clips boxes to the image and drops those with no area left, recording each change.
 * Input boxes in x1, y1, x2, y2.
 */
export function cleanBoxes(file: string, boxes: number[][], labels: number[], width: number | undefined, height: number | undefined, warnings: DataWarning[]): SampleAnnotation {
  const outB: number[] = [];
  const outL: number[] = [];
  boxes.forEach((b, i) => {
    let [x1, y1, x2, y2] = b;
    if (width !== undefined && height !== undefined) {
      const c = [Math.min(Math.max(x1, 0), width), Math.min(Math.max(y1, 0), height), Math.min(Math.max(x2, 0), width), Math.min(Math.max(y2, 0), height)];
      if (c.some((v, k) => v !== b[k]) && c[2] > c[0] && c[3] > c[1]) warnings.push({ file, message: `box ${i} [${b.join(', ')}] clipped to the image (${width}×${height})` });
      [x1, y1, x2, y2] = c;
    }
    if (!(x2 > x1 && y2 > y1)) {
      warnings.push({ file, message: `box ${i} [${b.join(', ')}] dropped: zero or negative size${width !== undefined ? ' inside the image' : ''}` });
      return;
    }
    outB.push(x1, y1, x2, y2);
    outL.push(labels[i]);
  });
  return { boxes: Float32Array.from(outB), labels: Int32Array.from(outL) };
}

/** COCO-form ground truth built from records (area = box area, no crowd regions); image ids = index + 1. */
export function groundTruthFromRecords(records: SampleRecord[], classes: string[], categoryIds: number[]): GroundTruth {
  const gt: GroundTruth = { images: [], annotations: [], categories: classes.map((name, i) => ({ id: categoryIds[i], name })) };
  records.forEach((r, k) => {
    gt.images.push({ id: k + 1, file_name: r.file, width: r.width, height: r.height });
    for (let i = 0; i < r.labels.length; i++) {
      const [x1, y1, x2, y2] = r.boxes.subarray(4 * i, 4 * i + 4);
      gt.annotations.push({ id: gt.annotations.length + 1, image_id: k + 1, category_id: categoryIds[r.labels[i]], bbox: [x1, y1, x2 - x1, y2 - y1], area: (x2 - x1) * (y2 - y1), iscrowd: 0 });
    }
  });
  return gt;
}
