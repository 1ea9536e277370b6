/** COCO evaluation: pycocotools' own numbers for three cases (fixtures), to 1e-6. */
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evaluateCoco } from '../lib';

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
