/**
 * COCO evaluation benchmark on a COCO-val-sized case (5 000 images, 80 classes, ~7 ground-truth
 * boxes and 100 detections per image), side by side with pycocotools' COCOeval in the same run when
 * a python3 with pycocotools is found (`--python`, $ONESTAGE_PYTHON, python3).
 *   npx ts-node --transpile-only bench/eval.ts [--images 5000] [--python python3]
 * Prints a table and writes bench/results/eval.json; the numbers of both are compared.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { CocoDetection, CocoGroundTruth, evaluateCoco, Rng } from '../lib';

function makeCase(images: number, classes: number, seed: number): { gt: CocoGroundTruth; dets: CocoDetection[] } {
  const rng = new Rng(seed);
  const gt: CocoGroundTruth = { images: [], annotations: [], categories: Array.from({ length: classes }, (_, i) => ({ id: i + 1, name: `c${i + 1}` })) };
  const dets: CocoDetection[] = [];
  for (let im = 1; im <= images; im++) {
    gt.images.push({ id: im });
    const boxes: Array<{ box: number[]; cat: number }> = [];
    const n = rng.integer(0, 14);
    for (let k = 0; k < n; k++) {
      const w = 8 + rng.next() * 200;
      const h = 8 + rng.next() * 200;
      const box = [rng.next() * (640 - w), rng.next() * (480 - h), w, h].map((v) => Math.round(v * 100) / 100);
      const cat = rng.integer(1, classes);
      boxes.push({ box, cat });
      gt.annotations.push({ id: gt.annotations.length + 1, image_id: im, category_id: cat, bbox: box, area: Math.round(w * h * (0.6 + 0.3 * rng.next())), iscrowd: rng.next() < 0.02 ? 1 : 0 });
    }
    for (let d = 0; d < 100; d++) {
      let box: number[];
      let cat: number;
      if (boxes.length > 0 && rng.next() < 0.5) {
        const g = boxes[rng.integer(0, boxes.length - 1)];
        const j = () => 1 + (rng.next() - 0.5) * 0.4;
        box = [g.box[0] * j(), g.box[1] * j(), g.box[2] * j(), g.box[3] * j()];
        cat = rng.next() < 0.8 ? g.cat : rng.integer(1, classes);
      } else {
        const w = 4 + rng.next() * 250;
        const h = 4 + rng.next() * 250;
        box = [rng.next() * (640 - w), rng.next() * (480 - h), w, h];
        cat = rng.integer(1, classes);
      }
      dets.push({ image_id: im, category_id: cat, bbox: box.map((v) => Math.round(v * 100) / 100), score: Math.round(rng.next() * 1e6) / 1e6 });
    }
  }
  return { gt, dets };
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--images <n>', 'images', '5000')
    .option('--classes <n>', 'classes', '80')
    .option('--python <exe>', 'python3 with pycocotools', process.env.ONESTAGE_PYTHON ?? 'python3')
    .parse()
    .opts<{ images: string; classes: string; python: string }>();
  const { gt, dets } = makeCase(Number(o.images), Number(o.classes), 7);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'onestage-evalbench-'));
  const gtFile = path.join(dir, 'gt.json');
  const dtFile = path.join(dir, 'dets.json');
  fs.writeFileSync(gtFile, JSON.stringify(gt));
  fs.writeFileSync(dtFile, JSON.stringify(dets));
  console.error(`case: ${gt.images.length} images, ${gt.categories.length} classes, ${gt.annotations.length} ground-truth boxes, ${dets.length} detections`);
  const t0 = process.hrtime.bigint();
  const ours = evaluateCoco(gt, dets);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  console.error(`onestage evaluateCoco: ${seconds.toFixed(2)} s`);
  const rows: Array<{ system: string; seconds: number; stats: number[] }> = [{ system: 'onestage evaluateCoco (TypeScript)', seconds, stats: ours.stats }];
  const res = spawnSync(o.python, [path.join(__dirname, 'reference_eval.py'), gtFile, dtFile], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (res.status === 0) rows.push(JSON.parse(res.stdout.trim().split('\n').pop()!));
  else console.error(`pycocotools not measured: ${(res.stderr || res.error?.message || '').trim().split('\n').pop()}`);
  fs.rmSync(dir, { recursive: true, force: true });
  const cpu = `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}`;
  console.log(`\nCOCO bbox evaluation, ${gt.images.length} images × ${gt.categories.length} classes, ${dets.length} detections (${cpu})\n`);
  console.log('| system | seconds | vs onestage | max |Δ stats| |');
  console.log('| --- | --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.system} | ${r.seconds.toFixed(2)} | ${(r.seconds / seconds).toFixed(1)}× | ${Math.max(...r.stats.map((v, i) => Math.abs(v - ours.stats[i]))).toExponential(1)} |`);
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true });
  fs.writeFileSync(path.join(__dirname, 'results', 'eval.json'), JSON.stringify({ machine: cpu, rows }, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
