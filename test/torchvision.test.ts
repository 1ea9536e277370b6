/**
 * torchvision's RetinaNets (retinanet_resnet50_fpn and _v2) in onestage: their own code
 * (test/reference/torchvision_retinanet_ref.py, random weights, GeneralizedRCNNTransform bypassed: the
 * input is already normalised) against the torchvision variants, weights both ways, fine-tuning.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildInfo, CocoDataset, COCO_91_CLASSES, setTf32, DataLoader, disposeBatch, makeShapes, Model, Tensor, torchvisionLayout, Trainer, weightEntries } from '../lib';
import { readSafetensorsHeader } from '../lib/safetensors';
import { Rng } from '../lib/data/random';
import { fromTensor, readBundle, toTensor, writeBundle } from './helpers/bundle';
import { assertClose } from './helpers/close';
import { runReference, tempDir } from './helpers/python';

// the RetinaNet parity tolerances (test/retinanet.test.ts); deeper features of ResNet-50 with random BatchNorm
const NET = { rtol: 1e-4, atol: 1e-4 };
const NET_CUDA = { rtol: 1e-3, atol: 1e-3 };

/** Detections ordered by score, then label and box: the same set compares equal whatever the order of ties. */
function canonical(scores: ArrayLike<number>, labels: ArrayLike<number>, boxes: ArrayLike<number>): { scores: Float32Array; labels: number[]; boxes: Float32Array } {
  const idx = Array.from({ length: scores.length }, (_, i) => i);
  const key = (i: number) => [-scores[i], labels[i], boxes[4 * i], boxes[4 * i + 1], boxes[4 * i + 2], boxes[4 * i + 3]];
  idx.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    for (let k = 0; k < ka.length; k++) if (Math.abs(ka[k] - kb[k]) > (k === 0 ? 0 : 1e-3)) return ka[k] - kb[k];
    return 0;
  });
  return { scores: Float32Array.from(idx, (i) => scores[i]), labels: idx.map((i) => labels[i]), boxes: Float32Array.from(idx.flatMap((i) => [0, 1, 2, 3].map((k) => boxes[4 * i + k]))) };
}

/** Copies a safetensors file with renamed tensors and without metadata (a plain state_dict as other tools write it); returns the new names. */
function rewriteSafetensors(file: string, out: string, rename: (k: string) => string = (k) => k): string[] {
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  delete header.__metadata__;
  const renamed: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(header)) renamed[rename(k)] = v;
  let text = JSON.stringify(renamed);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length));
  fs.writeFileSync(out, Buffer.concat([len, Buffer.from(text), bytes.subarray(8 + n)]));
  return Object.keys(renamed);
}

interface RefRun {
  dir: string;
  images: Tensor;
}

async function reference(variant: 'v1' | 'v2', seed: number, weights?: string, images?: Tensor): Promise<RefRun> {
  const dir = tempDir(`onestage-tv-${variant}-`);
  const x = images ?? Tensor.from(new Rng(seed).normal(2 * 3 * 96 * 128), [2, 3, 96, 128]);
  writeBundle(path.join(dir, 'in'), { images: fromTensor(x) });
  runReference('torchvision_retinanet_ref.py', ['run', variant, String(seed), path.join(dir, 'in'), path.join(dir, 'out'), ...(weights ? [weights] : [])]);
  return { dir: path.join(dir, 'out'), images: x };
}

for (const [variant, name] of [['v1', 'torchvision'], ['v2', 'torchvision-v2']] as const) {
  test.serial(`torchvision ${variant}: retinanet_resnet50_fpn${variant === 'v2' ? '_v2' : ''} weights give torchvision's FPN, head outputs, anchors and detections; onestage's saved weights load back into torchvision`, async (t) => {
    const ref = await reference(variant, variant === 'v1' ? 1 : 2);
    const file = path.join(ref.dir, 'weights.pt');
    const layout = torchvisionLayout(weightEntries(file), file)!;
    t.deepEqual(layout, { variant: name, depth: 50, numClasses: 91, featureSize: 256, anchorsPerLocation: 9 });
    const model = await Model.fromWeights(file);
    t.is((model.config as { variant?: string }).variant, name);
    t.deepEqual(model.config.classes, [...COCO_91_CLASSES]);
    t.deepEqual(model.lastLoad!.missing, []);
    t.deepEqual(model.lastLoad!.unexpected, []);
    model.eval();
    const { tensors: want } = readBundle(ref.dir);
    const out = (await model.forward(ref.images)) as unknown as Record<string, Tensor>;
    for (const p of ['p3', 'p4', 'p5', 'p6', 'p7']) assertClose(t, out[p], want[p], { name: p, ...NET });
    assertClose(t, out.classification, want.cls_logits, { name: 'classification', ...NET });
    assertClose(t, out.regression, want.bbox_regression, { name: 'regression', ...NET });
    assertClose(t, out.anchors, want.anchors, { name: 'anchors', atol: 0, rtol: 0 });
    const dets = await model.detect(ref.images);
    for (let b = 0; b < 2; b++) {
      const n = want[`scores_${b}`].shape[0];
      t.is(dets[b].scores.length, n, `image ${b}: detection count`);
      t.true(n > 10, `image ${b}: the random model detects (${n})`);
      // detections with equal scores may come in either order (sorts are not stable in either library)
      const ours = canonical(dets[b].scores, dets[b].labels, dets[b].boxes);
      const theirs = canonical(want[`scores_${b}`].data as Float32Array, Array.from(want[`labels_${b}`].data as BigInt64Array, Number), want[`boxes_${b}`].data as Float32Array);
      assertClose(t, { shape: [n], data: ours.scores }, { shape: [n], data: theirs.scores }, { name: `image ${b} scores`, rtol: 1e-4, atol: 1e-5 });
      t.deepEqual(ours.labels, theirs.labels, `image ${b} labels`);
      assertClose(t, { shape: [n, 4], data: ours.boxes }, { shape: [n, 4], data: theirs.boxes }, { name: `image ${b} boxes`, rtol: 1e-4, atol: 1e-3 });
    }
    for (const v of Object.values(out)) v.dispose();
    if (buildInfo().cudaAvailable) {
      // the same weights on CUDA (TF32 off) against torchvision's CPU outputs
      setTf32(false);
      model.to('cuda');
      const x = ref.images.to('cuda');
      const o = (await model.forward(x)) as unknown as Record<string, Tensor>;
      for (const p of ['p3', 'p4', 'p5', 'p6', 'p7']) assertClose(t, o[p].to('cpu'), want[p], { name: `cuda ${p}`, ...NET_CUDA });
      assertClose(t, o.classification.to('cpu'), want.cls_logits, { name: 'cuda classification', ...NET_CUDA });
      assertClose(t, o.regression.to('cpu'), want.bbox_regression, { name: 'cuda regression', ...NET_CUDA });
      assertClose(t, o.anchors.to('cpu'), want.anchors, { name: 'cuda anchors', atol: 0, rtol: 0 });
      const cd = await model.detect(x);
      for (let b = 0; b < 2; b++) {
        const n = want[`scores_${b}`].shape[0];
        t.is(cd[b].scores.length, n, `cuda image ${b}: detection count`);
        const ours = canonical(cd[b].scores, cd[b].labels, cd[b].boxes);
        const theirs = canonical(want[`scores_${b}`].data as Float32Array, Array.from(want[`labels_${b}`].data as BigInt64Array, Number), want[`boxes_${b}`].data as Float32Array);
        assertClose(t, { shape: [n], data: ours.scores }, { shape: [n], data: theirs.scores }, { name: `cuda image ${b} scores`, rtol: 1e-3, atol: 1e-4 });
      }
      model.to('cpu');
    }
    // round trip: onestage's safetensors (torchvision's key names) load strictly into torchvision
    const saved = path.join(ref.dir, 'onestage.safetensors');
    await model.saveWeights(saved);
    const keys = readSafetensorsHeader(saved).entries.map((e) => e.name);
    t.true(keys.includes('head.classification_head.cls_logits.weight') && keys.includes('backbone.fpn.inner_blocks.0.0.weight') && keys.includes('backbone.body.layer4.2.bn3.running_var'));
    const back = await reference(variant, 99, saved, ref.images);
    const again = readBundle(back.dir).tensors;
    assertClose(t, again.cls_logits, want.cls_logits, { name: 'torchvision with onestage-saved weights', atol: 0, rtol: 0 });
    // and Model.fromWeights reads its own file back (onestage metadata) to the same outputs
    const reread = await Model.fromWeights(saved);
    t.is((reread.config as { variant?: string }).variant, name);
    reread.dispose();
    model.dispose();
  });
}

test.serial('torchvision: older key layouts (FPN blocks without .0, heads as conv.0/2/4/6) load too; a broken layout names the missing keys', async (t) => {
  const model = Model.retinanet({ variant: 'torchvision', depth: 18, numClasses: 5, featureSize: 32, seed: 1 });
  const dir = tempDir('onestage-tv-legacy-');
  const file = path.join(dir, 'w.safetensors');
  await model.saveWeights(file);
  // torchvision ≤ 0.12's names, and no onestage metadata
  const legacy = path.join(dir, 'legacy.safetensors');
  const names = rewriteSafetensors(file, legacy, (k) => k.replace(/^(backbone\.fpn\.(inner|layer)_blocks\.\d)\.0\./, '$1.').replace(/^(head\.\w+_head\.conv\.)(\d)\.0\./, (_, p: string, i: string) => `${p}${2 * Number(i)}.`));
  t.true(names.includes('backbone.fpn.inner_blocks.0.weight') && names.includes('head.classification_head.conv.6.weight'));
  const fresh = Model.retinanet({ variant: 'torchvision', depth: 18, numClasses: 5, featureSize: 32, seed: 2 });
  const report = await fresh.loadWeights(legacy);
  t.is(report.missing.length + report.unexpected.length + report.mismatched.length, 0);
  const a = fresh.stateDict();
  const b = model.stateDict();
  for (const k of Object.keys(b)) t.deepEqual(Array.from(a[k].toArray() as ArrayLike<number>), Array.from(b[k].toArray() as ArrayLike<number>), k);
  // recognised from the legacy keys alone (no metadata)
  const byKeys = await Model.fromWeights(legacy);
  t.deepEqual([byKeys.config.depth, byKeys.config.numClasses, byKeys.config.featureSize, (byKeys.config as { variant?: string }).variant], [18, 5, 32, 'torchvision']);
  // a torchvision file missing its P6/P7
  const entries = weightEntries(file).filter((e) => !e.name.startsWith('backbone.fpn.extra_blocks'));
  t.throws(() => torchvisionLayout(entries, 'x.pt'), { message: /x\.pt: torchvision RetinaNet keys expected but missing: backbone\.fpn\.extra_blocks\.p6\.weight, backbone\.fpn\.extra_blocks\.p7\.weight/ });
  // strict loading names missing keys in torchvision's names
  const v2 = Model.retinanet({ variant: 'torchvision-v2', depth: 18, numClasses: 5, featureSize: 32 });
  const err = await t.throwsAsync(v2.loadWeights(file));
  t.regex(err!.message, /head\.classification_head\.conv\.0\.1\.weight/);
  for (const m of [model, fresh, byKeys, v2]) m.dispose();
});

test.serial('fine-tuning: a 91-class torchvision checkpoint to the 3 shapes classes keeps every tensor but the classification layer, and the loss falls', async (t) => {
  const ref = await reference('v1', 3);
  const file = path.join(ref.dir, 'weights.pt');
  await t.throwsAsync(Model.fromWeights(file, { numClasses: 3 }), { message: /trained for 91 classes, not 3: to fine-tune to 3 classes pass \{ finetune: true \}/ });
  const strict = Model.retinanet({ variant: 'torchvision', numClasses: 3 });
  const e = await t.throwsAsync(strict.loadWeights(file));
  t.regex(e!.message, /cls_logits\.weight: file \[819, 256, 3, 3\] vs model \[27, 256, 3, 3\][\s\S]*finetune: true/);
  strict.dispose();
  const model = await Model.fromWeights(file, { classes: ['circle', 'square', 'triangle'], finetune: true, trainableBackboneLayers: 3 });
  const report = model.lastLoad!;
  t.deepEqual(report.reinitialized.sort(), ['head.classification_head.cls_logits.bias', 'head.classification_head.cls_logits.weight']);
  t.deepEqual([report.missing, report.unexpected, report.mismatched], [[], [], []]);
  t.deepEqual(model.config.classes, ['circle', 'square', 'triangle']);
  // the re-initialised layer has the prior's bias
  const bias = model.stateDict()['head.classification_head.cls_logits.bias'].toArray() as Float32Array;
  t.true(Array.from(bias).every((v) => Math.abs(v - Math.log(0.01 / 0.99)) < 1e-6));
  const data = path.join(tempDir('onestage-tv-ft-'), 'shapes');
  await makeShapes({ out: data, train: 4, val: 0, size: 128, classes: 3, seed: 0 });
  const loader = new DataLoader(await CocoDataset.open(path.join(data, 'instances_train.json')), { batchSize: 4, shuffle: false, augment: false, transform: { minSide: 128, maxSide: 128 } });
  const trainer = new Trainer(model, { optimizer: { type: 'adamw', lr: 1e-4, weightDecay: 0 } });
  const losses: number[] = [];
  for await (const batch of loader.epoch(0)) {
    try {
      for (let i = 0; i < 8; i++) losses.push((await trainer.step(batch, 1e-4)).total);
    } finally {
      disposeBatch(batch);
    }
  }
  t.log(`losses ${losses.map((l) => l.toFixed(3)).join(' ')}`);
  t.true(Math.min(...losses.slice(-3)) < 0.9 * losses[0], `the loss falls: ${losses[0]} → ${losses.slice(-3).join(', ')}`);
  trainer.dispose();
  model.dispose();
});

test('trainableBackboneLayers: as torchvision, layers outside the top N get no gradient', (t) => {
  for (const [n, frozen] of [[0, /^(conv1|bn1|layer[1-4])\./], [3, /^(conv1|bn1|layer1)\./], [5, /^$/]] as const) {
    const model = Model.retinanet({ variant: 'torchvision', depth: 18, numClasses: 2, featureSize: 16, trainableBackboneLayers: n, freezeBnAffine: false });
    const sd = model.stateDict();
    let frozenCount = 0;
    for (const [k, v] of Object.entries(sd)) if (frozen.test(k.replace('backbone.body.', '')) && k.startsWith('backbone.body.') && !/running_|num_batches/.test(k)) frozenCount += v.shape.reduce((a, b) => a * b, 1);
    t.is(model.parameters({ trainableOnly: true }), model.parameters() - frozenCount, `trainableBackboneLayers ${n}`);
    model.dispose();
  }
  t.throws(() => Model.retinanet({ numClasses: 2, trainableBackboneLayers: 6 }), { message: /trainableBackboneLayers/ });
  t.throws(() => Model.retinanet({ numClasses: 2, variant: 'detectron' as never }), { message: /variant/ });
});

test.serial('CLI: train --weights <torchvision file> --finetune fine-tunes to the dataset\'s classes (and without --finetune says how)', async (t) => {
  const dir = tempDir('onestage-tv-cli-');
  const coco = Model.retinanet({ variant: 'torchvision', depth: 18, numClasses: 91, featureSize: 32, seed: 4 });
  await coco.saveWeights(path.join(dir, 'with-meta.safetensors'));
  coco.dispose();
  const weights = path.join(dir, 'tv.safetensors');
  rewriteSafetensors(path.join(dir, 'with-meta.safetensors'), weights);
  await makeShapes({ out: path.join(dir, 'data'), train: 8, val: 4, size: 64, classes: 3, seed: 1 });
  const cli = path.resolve(__dirname, '..', 'bin', 'onestage.js');
  const args = ['train', '--coco-train', path.join(dir, 'data', 'instances_train.json'), '--coco-val', path.join(dir, 'data', 'instances_val.json'), '--weights', weights, '--depth', '18', '--feature-size', '32', '--epochs', '1', '--batch-size', '4', '--min-side', '64', '--max-side', '64', '--trainable-backbone-layers', '2', '--backbone-lr-multiplier', '0.1'];
  const refused = spawnSync(process.execPath, [cli, ...args, '--out', path.join(dir, 'a')], { encoding: 'utf8' });
  t.not(refused.status, 0);
  t.regex(refused.stderr, /cls_logits[\s\S]*--finetune/);
  const r = spawnSync(process.execPath, [cli, ...args, '--finetune', '--out', path.join(dir, 'b')], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout + r.stderr, /re-initialised for 3 classes: head\.classification_head\.cls_logits\.weight, head\.classification_head\.cls_logits\.bias/);
  const trained = await Model.fromWeights(path.join(dir, 'b', 'model.safetensors'));
  t.deepEqual([(trained.config as { variant?: string }).variant, trained.config.numClasses, trained.config.classes?.length], ['torchvision', 3, 3]);
  trained.dispose();
});

test.serial('backboneLrMultiplier: the backbone moves by the multiplier times the step of the rest (SGD, both update paths)', async (t) => {
  const dir = tempDir('onestage-tv-lr-');
  await makeShapes({ out: path.join(dir, 'data'), train: 2, val: 0, size: 64, classes: 2, seed: 5 });
  const loader = new DataLoader(await CocoDataset.open(path.join(dir, 'data', 'instances_train.json')), { batchSize: 2, shuffle: false, augment: false, transform: { minSide: 64, maxSide: 64 } });
  const deltas = async (multiplier: number, implementation: 'loop' | 'foreach') => {
    const model = Model.retinanet({ depth: 18, numClasses: 2, featureSize: 16, seed: 3, freezeBnAffine: false });
    const before = model.stateDict();
    const trainer = new Trainer(model, { optimizer: { type: 'sgd', lr: 0.01, momentum: 0, weightDecay: 0, clipGradNorm: 0, backboneLrMultiplier: multiplier, implementation } });
    // two steps: a fresh RetinaNet's output layers are zero, so only they move in the first
    for (const epoch of [0, 1])
      for await (const batch of loader.epoch(epoch)) {
        try {
          await trainer.step(batch, 0.01);
        } finally {
          disposeBatch(batch);
        }
      }
    const after = model.stateDict();
    const d: Record<string, Float32Array> = {};
    for (const k of ['layer1.0.conv1.weight', 'conv1.weight', 'fpn.P3_1.weight', 'classificationModel.output.bias']) {
      const a = after[k].toArray() as Float32Array;
      const b = before[k].toArray() as Float32Array;
      d[k] = a.map((v, i) => v - b[i]);
    }
    trainer.dispose();
    model.dispose();
    return d;
  };
  for (const impl of ['loop', 'foreach'] as const) {
    const full = await deltas(1, impl);
    const half = await deltas(0.5, impl);
    for (const k of ['layer1.0.conv1.weight', 'conv1.weight']) {
      t.true(full[k].some((v) => v !== 0), `${k} moves`);
      // the changes are a few float32 steps of the weights: compare their norms, and elementwise to two ulps
      const norm = (v: Float32Array) => Math.sqrt(v.reduce((a, x) => a + x * x, 0));
      const ratio = norm(half[k]) / norm(full[k]);
      t.true(Math.abs(ratio - 0.5) < 0.01, `${impl}: ${k} moved ${ratio} of the full step`);
      assertClose(t, { shape: [half[k].length], data: half[k] }, { shape: [full[k].length], data: full[k].map((v) => v / 2) }, { name: `${impl}: ${k} at half the rate`, rtol: 1e-2, atol: 6e-8 });
    }
    for (const k of ['fpn.P3_1.weight', 'classificationModel.output.bias'])
      assertClose(t, { shape: [half[k].length], data: half[k] }, { shape: [full[k].length], data: full[k] }, { name: `${impl}: ${k} at the full rate`, rtol: 1e-3, atol: 6e-8 });
  }
  t.throws(() => new Trainer(Model.retinanet({ depth: 18, numClasses: 2, featureSize: 16 }), { optimizer: { backboneLrMultiplier: -1 } }), { message: /backboneLrMultiplier/ });
});
