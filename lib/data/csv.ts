/**
 * pytorch-retinanet's CSV format: annotations `path,x1,y1,x2,y2,class_name` (a row `path,,,,,` is an
 * image without objects) and classes `class_name,id`. Relative image paths resolve against the
 * annotation file's folder. Errors name the file and line.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse } from 'csv-parse/sync';
import { checkIndex, cleanBoxes, DataWarning, DetectionDataset, GroundTruth, groundTruthFromRecords, SampleRecord } from './dataset';

async function readCsv(file: string, what: string): Promise<string[][]> {
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`${file}: cannot read the ${what} file (${(err as Error).message})`);
  }
  try {
    return parse(text, { relax_column_count: true, skip_empty_lines: true, trim: true }) as string[][];
  } catch (err) {
    throw new Error(`${file}: malformed CSV (${(err as Error).message})`);
  }
}

export class CsvDataset implements DetectionDataset {
  readonly classes: string[];
  readonly warnings: DataWarning[] = [];
  /** 1 … K: the class id of the classes file + 1. */
  readonly categoryIds: number[];
  private readonly records: SampleRecord[];
  private readonly imageIds: Map<number | string, number>;

  private constructor(classes: string[], records: SampleRecord[], warnings: DataWarning[]) {
    this.classes = classes;
    this.categoryIds = classes.map((_, i) => i + 1);
    this.records = records;
    this.imageIds = new Map(records.map((r, k) => [r.id, k + 1]));
    this.warnings.push(...warnings);
  }

  imageIdOf(recordId: number | string): number {
    const id = this.imageIds.get(recordId);
    if (id === undefined) throw new RangeError(`no image '${String(recordId)}' in this dataset`);
    return id;
  }

  /** Ground truth with image ids in row order from 1 and category ids = class id + 1. */
  groundTruth(): GroundTruth {
    return groundTruthFromRecords(this.records, this.classes, this.categoryIds);
  }

  /** @example await CsvDataset.open('train.csv', 'classes.csv') */
  static async open(annotationFile: string, classFile: string): Promise<CsvDataset> {
    const classRows = await readCsv(classFile, 'classes');
    const byName = new Map<string, number>();
    const ids: Array<[string, number]> = [];
    classRows.forEach((row, i) => {
      const line = i + 1;
      if (row.length !== 2) throw new Error(`${classFile}:${line}: expected 'class_name,id' (2 columns) but found ${row.length}`);
      const id = Number(row[1]);
      if (!Number.isInteger(id) || id < 0 || row[1] === '') throw new Error(`${classFile}:${line}: class id '${row[1]}' is not a non-negative integer`);
      if (byName.has(row[0])) throw new Error(`${classFile}:${line}: duplicate class name '${row[0]}'`);
      byName.set(row[0], id);
      ids.push([row[0], id]);
    });
    const sorted = [...ids].sort((a, b) => a[1] - b[1]);
    sorted.forEach(([, id], i) => {
      if (id !== i) throw new Error(`${classFile}: class ids must be 0…${sorted.length - 1} without gaps (found ${id})`);
    });
    const classes = sorted.map(([name]) => name);
    const rows = await readCsv(annotationFile, 'annotations');
    const root = path.dirname(annotationFile);
    const order: string[] = [];
    const perImage = new Map<string, { boxes: number[][]; labels: number[] }>();
    rows.forEach((row, i) => {
      const line = i + 1;
      if (row.length !== 6) throw new Error(`${annotationFile}:${line}: expected 'path,x1,y1,x2,y2,class_name' (6 columns) but found ${row.length}`);
      const [img, ...rest] = row;
      if (img === '') throw new Error(`${annotationFile}:${line}: empty image path`);
      const file = path.isAbsolute(img) ? img : path.join(root, img);
      if (!perImage.has(file)) {
        perImage.set(file, { boxes: [], labels: [] });
        order.push(file);
      }
      if (rest.every((v) => v === '')) return; // an image without objects
      const coords = rest.slice(0, 4).map(Number);
      rest.slice(0, 4).forEach((v, k) => {
        if (v === '' || !Number.isFinite(coords[k])) throw new Error(`${annotationFile}:${line}: ${['x1', 'y1', 'x2', 'y2'][k]} '${v}' is not a number`);
      });
      const label = byName.get(rest[4]);
      if (label === undefined) throw new Error(`${annotationFile}:${line}: class '${rest[4]}' is not in ${classFile}`);
      perImage.get(file)!.boxes.push(coords);
      perImage.get(file)!.labels.push(label);
    });
    const warnings: DataWarning[] = [];
    const records = order.map((file) => ({ id: file, file, ...cleanBoxes(file, perImage.get(file)!.boxes, perImage.get(file)!.labels, undefined, undefined, warnings) }));
    return new CsvDataset(classes, records, warnings);
  }

  get length(): number {
    return this.records.length;
  }

  record(index: number): SampleRecord {
    checkIndex(index, this.records.length);
    return this.records[index];
  }
}
