/**
 * COCO `instances_*.json` + an image folder. Categories map to contiguous labels in id order;
 * boxes `[x, y, w, h]` become x1, y1, x2, y2; crowd annotations stay as ignore regions (label −2);
 * images without annotations are kept (negatives). Malformed files and references to unknown ids are
 * errors naming the file and the id.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkIndex, cleanBoxes, DataWarning, DetectionDataset, GroundTruth, SampleRecord } from './dataset';

interface CocoImage {
  id: number;
  file_name: string;
  width?: number;
  height?: number;
}
interface CocoAnnotation {
  id?: number;
  image_id: number;
  category_id: number;
  bbox: [number, number, number, number];
  area?: number;
  iscrowd?: number;
}
interface CocoCategory {
  id: number;
  name: string;
}

export interface CocoOptions {
  /** Folder of the images; default: the JSON file's folder. */
  images?: string;
}

export class CocoDataset implements DetectionDataset {
  readonly classes: string[];
  readonly warnings: DataWarning[] = [];
  /** COCO category id of each contiguous label. */
  readonly categoryIds: number[];
  private readonly records: SampleRecord[];
  private readonly gt: GroundTruth;

  private constructor(classes: string[], categoryIds: number[], records: SampleRecord[], warnings: DataWarning[], gt: GroundTruth) {
    this.classes = classes;
    this.categoryIds = categoryIds;
    this.records = records;
    this.gt = gt;
    this.warnings.push(...warnings);
  }

  imageIdOf(recordId: number | string): number {
    if (typeof recordId !== 'number') throw new TypeError(`Expected a COCO image id (number) but received ${typeof recordId}`);
    return recordId;
  }

  /** The file's images, annotations (with their `area` and `iscrowd`) and categories. */
  groundTruth(): GroundTruth {
    return this.gt;
  }

  /** Reads and checks the annotation file. @example await CocoDataset.open('data/instances_train.json') */
  static async open(annotationFile: string, options: CocoOptions = {}): Promise<CocoDataset> {
    if (typeof annotationFile !== 'string') throw new TypeError(`Expected a path for annotationFile but received ${typeof annotationFile}`);
    let text: string;
    try {
      text = await fs.promises.readFile(annotationFile, 'utf8');
    } catch (err) {
      throw new Error(`${annotationFile}: cannot read the annotation file (${(err as Error).message})`);
    }
    let json: { images?: CocoImage[]; annotations?: CocoAnnotation[]; categories?: CocoCategory[] };
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new Error(`${annotationFile}: malformed JSON (${(err as Error).message})`);
    }
    const fail = (why: string): never => {
      throw new Error(`${annotationFile}: ${why}`);
    };
    if (json === null || typeof json !== 'object') fail('not a COCO annotation object');
    if (!Array.isArray(json.images)) fail('"images" must be an array');
    if (!Array.isArray(json.categories)) fail('"categories" must be an array');
    const annotations = json.annotations ?? [];
    if (!Array.isArray(annotations)) fail('"annotations" must be an array');
    const categories = [...json.categories!].sort((a, b) => a.id - b.id);
    const labelOf = new Map<number, number>();
    categories.forEach((c, i) => {
      if (!Number.isInteger(c.id) || typeof c.name !== 'string') fail(`category ${JSON.stringify(c)} needs an integer id and a name`);
      if (labelOf.has(c.id)) fail(`category id ${c.id} appears twice`);
      labelOf.set(c.id, i);
    });
    const root = options.images ?? path.dirname(annotationFile);
    const byImage = new Map<number, { boxes: number[][]; labels: number[] }>();
    const images = json.images!;
    images.forEach((im) => {
      if (!Number.isInteger(im.id) || typeof im.file_name !== 'string') fail(`image ${JSON.stringify(im).slice(0, 80)} needs an integer id and a file_name`);
      if (byImage.has(im.id)) fail(`image id ${im.id} appears twice`);
      byImage.set(im.id, { boxes: [], labels: [] });
    });
    annotations.forEach((a, k) => {
      const where = `annotation ${a.id ?? `#${k}`}`;
      const entry = byImage.get(a.image_id);
      if (!entry) fail(`${where} references unknown image id ${a.image_id}`);
      const label = labelOf.get(a.category_id);
      if (label === undefined) fail(`${where} references unknown category id ${a.category_id}`);
      if (!Array.isArray(a.bbox) || a.bbox.length !== 4 || a.bbox.some((v) => typeof v !== 'number' || !Number.isFinite(v)))
        fail(`${where} has a bbox that is not 4 finite numbers`);
      const [x, y, w, h] = a.bbox;
      entry!.boxes.push([x, y, x + w, y + h]);
      entry!.labels.push(a.iscrowd ? -2 : label!);
    });
    const warnings: DataWarning[] = [];
    const records = images.map((im) => {
      const file = path.join(root, im.file_name);
      const e = byImage.get(im.id)!;
      return { id: im.id, file, width: im.width, height: im.height, ...cleanBoxes(file, e.boxes, e.labels, im.width, im.height, warnings) };
    });
    const gt: GroundTruth = {
      images: images.map((im) => ({ id: im.id, file_name: im.file_name, width: im.width, height: im.height })),
      annotations: annotations.map((a, k) => ({ id: a.id ?? k + 1, image_id: a.image_id, category_id: a.category_id, bbox: a.bbox, area: a.area ?? a.bbox[2] * a.bbox[3], iscrowd: a.iscrowd ? 1 : 0 })),
      categories: categories.map((c) => ({ id: c.id, name: c.name })),
    };
    return new CocoDataset(categories.map((c) => c.name), categories.map((c) => c.id), records, warnings, gt);
  }

  get length(): number {
    return this.records.length;
  }

  record(index: number): SampleRecord {
    checkIndex(index, this.records.length);
    return this.records[index];
  }
}
