/** COCO evaluation: pycocotools' own numbers for three cases (fixtures), to 1e-6. */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CocoDetection, CocoGroundTruth, evaluateCoco, evaluateVoc, Rng } from '../lib';
import { runReference, tempDir } from './helpers/python';

const CASES = path.join(__dirname, 'fixtures', 'cocoeval');

for (const name of fs.readdirSync(CASES).filter((d) => fs.statSync(path.join(CASES, d)).isDirectory())) {
  test(`coco eval: reproduces pycocotools COCOeval on '${name}' (12 stats and per-class AP, 1e-6)`, (t) => {
    const dir = path.join(CASES, name);
    const expected = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) as { stats: number[]; perClassAP: Record<string, number> };
    const { stats, perClass } = evaluateCoco(path.join(dir, 'gt.json'), path.join(dir, 'dets.json'));
    stats.forEach((v, i) => t.true(Math.abs(v - expected.stats[i]) <= 1e-6, `stat ${i}: ${v} vs ${expected.stats[i]}`));
    for (const c of perClass) {
      const e = expected.perClassAP[String(c.categoryId)];
      t.true(Math.abs(c.ap - e) <= 1e-6, `category ${c.categoryId}: ${c.ap} vs ${e}`);
    }
  });
}

test('coco eval: detections for unknown images and malformed input are errors', (t) => {
  const gt = { images: [{ id: 1 }], annotations: [{ id: 1, image_id: 1, category_id: 1, bbox: [0, 0, 10, 10], area: 100 }], categories: [{ id: 1, name: 'a' }] };
  t.throws(() => evaluateCoco(gt, [{ image_id: 2, category_id: 1, bbox: [0, 0, 1, 1], score: 1 }]), { instanceOf: RangeError, message: /image_id 2/ });
  t.throws(() => evaluateCoco({} as never, []), { instanceOf: TypeError });
  const perfect = evaluateCoco(gt, [{ image_id: 1, category_id: 1, bbox: [0, 0, 10, 10], score: 0.9 }]);
  // tp / (tp + fp + eps), as pycocotools: 1 − 1e-16
  t.true(Math.abs(perfect.stats[0] - 1) < 1e-12 && Math.abs(perfect.stats[1] - 1) < 1e-12);
  t.deepEqual(perfect.stats.slice(4, 6), [-1, -1], 'no medium or large ground truth');
  t.deepEqual(evaluateCoco(gt, []).stats.slice(0, 3), [0, 0, 0]);
});

test('voc eval: all-point AP@0.5 matches the numpy reference on random cases with crowd regions, and hand cases', (t) => {
  const rng = new Rng(11);
  for (let trial = 0; trial < 4; trial++) {
    const gt: CocoGroundTruth = { images: [], annotations: [], categories: [{ id: 1, name: 'a' }, { id: 2, name: 'b' }, { id: 5, name: 'c' }] };
    const dets: CocoDetection[] = [];
    for (let im = 1; im <= 12; im++) {
      gt.images.push({ id: im });
      const boxes: Array<[number[], number]> = [];
      for (let k = rng.integer(0, 5); k > 0; k--) {
        const box = [rng.between(0, 80), rng.between(0, 80), rng.between(4, 40), rng.between(4, 40)];
        const cat = [1, 2, 5][rng.integer(0, trial === 3 ? 1 : 2)];
        boxes.push([box, cat]);
        gt.annotations.push({ id: gt.annotations.length + 1, image_id: im, category_id: cat, bbox: box, iscrowd: rng.next() < 0.1 ? 1 : 0 });
      }
      for (let d = rng.integer(0, 8); d > 0; d--) {
        const near = boxes.length > 0 && rng.next() < 0.6 ? boxes[rng.integer(0, boxes.length - 1)] : undefined;
        const box = near ? near[0].map((v) => v * rng.between(0.85, 1.15)) : [rng.between(0, 80), rng.between(0, 80), rng.between(4, 40), rng.between(4, 40)];
        // quantised scores make ties, whose order must be stable on both sides
        dets.push({ image_id: im, category_id: near && rng.next() < 0.8 ? near[1] : [1, 2, 5][rng.integer(0, 2)], bbox: box, score: Math.round(rng.next() * 20) / 20 });
      }
    }
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'case.json'), JSON.stringify({ gt, dets, thr: 0.5 }));
    const expected = JSON.parse(runReference('voc_ref.py', [path.join(dir, 'case.json')])) as { map: number; ap: Record<string, number> };
    const ours = evaluateVoc(gt, dets);
    t.true(Math.abs(ours.map - expected.map) < 1e-12, `trial ${trial}: mAP ${ours.map} vs ${expected.map}`);
    for (const c of ours.perClass) t.true(Math.abs(c.ap - expected.ap[String(c.categoryId)]) < 1e-12, `trial ${trial} class ${c.categoryId}: ${c.ap} vs ${expected.ap[String(c.categoryId)]}`);
  }
  // hand case: 2 GT, detections TP (0.9), FP duplicate (0.8), TP (0.7) → recall 0.5, 0.5, 1 and precision 1, 0.5, 0.67
  const gt = { images: [{ id: 1 }], annotations: [{ id: 1, image_id: 1, category_id: 1, bbox: [0, 0, 10, 10] }, { id: 2, image_id: 1, category_id: 1, bbox: [20, 20, 10, 10] }], categories: [{ id: 1, name: 'a' }] };
  const hand = evaluateVoc(gt, [
    { image_id: 1, category_id: 1, bbox: [0, 0, 10, 10], score: 0.9 },
    { image_id: 1, category_id: 1, bbox: [0, 0, 10, 10], score: 0.8 },
    { image_id: 1, category_id: 1, bbox: [20, 20, 10, 10], score: 0.7 },
  ]);
  t.true(Math.abs(hand.map - (0.5 * 1 + 0.5 * (2 / 3))) < 1e-12, String(hand.map));
  t.is(evaluateVoc(gt, []).map, 0);
  t.throws(() => evaluateVoc(gt, [], { iouThreshold: 1.5 }), { instanceOf: RangeError, message: /iouThreshold/ });
});
