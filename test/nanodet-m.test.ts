/**
 * NanoDet-Plus as released (ShuffleNetV2 + Ghost-PAN, the NanoDet-Plus-m presets) against a reference
 * written from NanoDet's own modules (test/reference/nanodet_shufflenet_ref.py): weights in NanoDet's
 * key layout load strictly, backbone stages, Ghost-PAN levels and head outputs agree.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { buildInfo, CocoDataset, DataLoader, disposeBatch, makeShapes, Model, setTf32, Tensor, Trainer } from '../lib';
import { Rng } from '../lib/data/random';
import { fromTensor, readBundle, writeBundle } from './helpers/bundle';
import { assertClose } from './helpers/close';
import { runReference, tempDir } from './helpers/python';

const NET = { rtol: 1e-4, atol: 1e-4 };

for (const [preset, width, pan, head, aux] of [['m-320', '1.0x', 96, 96, 192], ['m-1.5x-416', '1.5x', 128, 128, 256]] as const) {
  test.serial(`NanoDet-Plus ${preset}: NanoDet's ShuffleNetV2 ${width} + Ghost-PAN weights load into the preset and give the reference's stages, pyramid and head outputs`, async (t) => {
    const dir = tempDir('onestage-nanodet-m-');
    const x = Tensor.from(new Rng(7).normal(2 * 3 * 96 * 160), [2, 3, 96, 160]);
    writeBundle(path.join(dir, 'in'), { images: fromTensor(x) });
    const counts = JSON.parse(runReference('nanodet_shufflenet_ref.py', [width, String(pan), String(head), String(aux), '3', '5', path.join(dir, 'in'), path.join(dir, 'out')])) as Record<string, number>;
    const model = Model.nanodetPlus({ preset, numClasses: 3 });
    const report = await model.loadWeights(path.join(dir, 'out', 'weights.pt'));
    t.is(report.missing.length + report.unexpected.length + report.mismatched.length, 0);
    model.eval();
    const out = (await model.forward(x)) as unknown as Record<string, Tensor>;
    const { tensors: want } = readBundle(path.join(dir, 'out'));
    for (const k of ['c3', 'c4', 'c5', 'p3', 'p4', 'p5', 'p6', 'preds']) assertClose(t, out[k], want[k], { name: k, ...NET });
    // parameter counts: the inference network (backbone, Ghost-PAN, head) and everything with the AGM
    const sd = model.stateDict();
    const params = (prefix: RegExp) => Object.entries(sd).filter(([k]) => prefix.test(k) && !/running_|num_batches/.test(k)).reduce((a, [, v]) => a + v.shape.reduce((p, q) => p * q, 1), 0);
    t.is(params(/^backbone\./), counts.backbone);
    t.is(params(/^fpn\./), counts.fpn);
    t.is(params(/^head\./), counts.head);
    t.is(model.parameters(), counts.all);
    t.log(`${preset} (3 classes): inference parameters ${counts.backbone + counts.fpn + counts.head}, with the AGM ${counts.all}`);
    // the round trip: onestage's saved weights load strictly into NanoDet's layout and give the same outputs
    const saved = path.join(dir, 'onestage.safetensors');
    await model.saveWeights(saved);
    runReference('nanodet_shufflenet_ref.py', [width, String(pan), String(head), String(aux), '3', '5', path.join(dir, 'in'), path.join(dir, 'back'), saved]);
    assertClose(t, readBundle(path.join(dir, 'back')).tensors.preds, want.preds, { name: 'NanoDet with onestage-saved weights', atol: 0, rtol: 0 });
    model.dispose();
  });
}

test('NanoDet-Plus presets and backbones: unknown names are errors naming them', async (t) => {
  t.throws(() => Model.nanodetPlus({ numClasses: 3, preset: 'm-640' as never }), { message: /options\.preset/ });
  t.throws(() => Model.nanodetPlus({ numClasses: 3, backbone: 'shufflenetv2-3.0x' }), { message: /options\.backbone/ });
  t.throws(() => Model.nanodetPlus({ numClasses: 3, neck: 'bifpn' as never }), { message: /options\.neck/ });
  const pan = Model.nanodetPlus({ numClasses: 3, preset: 'm-320' });
  const odd = Tensor.from(new Float32Array(3 * 97 * 130), [1, 3, 97, 130]);
  await t.throwsAsync(pan.forward(odd), { message: /Ghost-PAN needs a height and width divisible by 32 \(received 97×130\)/ });
  pan.dispose();
  const m = Model.nanodetPlus({ numClasses: 80, preset: 'm-416' });
  // NanoDet-Plus-m: 80 classes, the inference network (backbone + Ghost-PAN + head)
  const sd = m.stateDict();
  const inference = Object.entries(sd).filter(([k]) => /^(backbone|fpn|head)\./.test(k) && !/running_|num_batches/.test(k)).reduce((a, [, v]) => a + v.shape.reduce((p, q) => p * q, 1), 0);
  t.is(inference, 1197924);
  m.dispose();
});

test.serial("NanoDet-Plus checkpoints: a Lightning .ckpt (model. and avg_model.), torchvision's ShuffleNetV2 into the backbone, a checkpoint of another width", async (t) => {
  const dir = tempDir('onestage-nanodet-ckpt-');
  const x = Tensor.from(new Rng(8).normal(3 * 64 * 64), [1, 3, 64, 64]);
  writeBundle(path.join(dir, 'in'), { images: fromTensor(x) });
  runReference('nanodet_shufflenet_ref.py', ['1.0x', '96', '96', '192', '3', '6', path.join(dir, 'in'), path.join(dir, 'out')]);
  const pt = path.join(dir, 'out', 'weights.pt');
  const ckpt = path.join(dir, 'nanodet.ckpt');
  runReference('nanodet_shufflenet_ref.py', ['ckpt', pt, ckpt]);
  const model = Model.nanodetPlus({ preset: 'm-416', numClasses: 3 });
  await t.throwsAsync(model.loadWeights(ckpt), { message: /holds the model \('model\.'\) and its weight average \('avg_model\.'.*prefix: 'avg_model\.'/ });
  const plain = Model.nanodetPlus({ preset: 'm-416', numClasses: 3 });
  await plain.loadWeights(pt);
  await model.loadWeights(ckpt, { prefix: 'avg_model.' });
  const a = model.stateDict()['head.gfl_cls.0.bias'].toArray() as Float32Array;
  const b = plain.stateDict()['head.gfl_cls.0.bias'].toArray() as Float32Array;
  t.true(Math.abs(a[0] - b[0] - 0.001) < 1e-6, 'the weight average was loaded');
  await model.loadWeights(ckpt, { prefix: 'model.' });
  t.is((model.stateDict()['head.gfl_cls.0.bias'].toArray() as Float32Array)[0], b[0]);
  // another width: strict loading names the mismatched shapes
  const wide = Model.nanodetPlus({ preset: 'm-1.5x-416', numClasses: 3 });
  const err = await t.throwsAsync(wide.loadWeights(pt));
  t.regex(err!.message, /wrong shape: backbone\.stage2\.0\.branch1\.2\.weight: file \[58, 24, 1, 1\] vs model \[88, 24, 1, 1\]/);
  // ImageNet initialisation: torchvision's shufflenet_v2_x1_0 state_dict into the backbone (conv5 and fc ignored)
  const tv = path.join(dir, 'tv.pt');
  runReference('nanodet_shufflenet_ref.py', ['tv-shufflenet', '1.0x', tv]);
  const report = await plain.loadWeights(tv, { backboneOnly: true });
  t.is(report.missing.length + report.unexpected.length + report.mismatched.length, 0);
  t.true(report.loaded > 100);
  for (const m of [model, plain, wide]) m.dispose();
});

test.serial('NanoDet-Plus-m trains (its AGM learns the batch), and `train --preset` builds and saves the preset', async (t) => {
  const dir = tempDir('onestage-nanodet-m-train-');
  await makeShapes({ out: path.join(dir, 'data'), train: 4, val: 2, size: 96, classes: 2, seed: 2 });
  const loader = new DataLoader(await CocoDataset.open(path.join(dir, 'data', 'instances_train.json')), { batchSize: 4, shuffle: false, augment: false, transform: { minSide: 96, maxSide: 96 } });
  const model = Model.nanodetPlus({ preset: 'm-320', numClasses: 2, seed: 1 });
  const trainer = new Trainer(model, { optimizer: { type: 'adamw', lr: 1e-4, weightDecay: 0 } });
  // on one repeated batch the AGM (whose predictions assign the labels) learns fastest; the main head's
  // QFL first rises as its targets (the assigned IoUs) grow — the same for the ResNet NanoDet-Plus
  const records: Array<Record<string, number>> = [];
  for await (const batch of loader.epoch(0)) {
    try {
      for (let i = 0; i < 6; i++) { const r = await trainer.step(batch, 1e-4); records.push({ total: r.total, ...r.components }); }
    } finally {
      disposeBatch(batch);
    }
  }
  t.log(`auxQfl ${records.map((r) => r.auxQfl.toFixed(3)).join(' ')}; total ${records.map((r) => r.total.toFixed(3)).join(' ')}`);
  t.true(records.every((r) => Number.isFinite(r.total)));
  t.true(records[records.length - 1].auxQfl < 0.5 * records[0].auxQfl, 'the assignment head learns');
  trainer.dispose();
  model.dispose();
  const cli = path.resolve(__dirname, '..', 'bin', 'onestage.js');
  const r = spawnSync(process.execPath, [cli, 'train', '--preset', 'm-320', '--coco-train', path.join(dir, 'data', 'instances_train.json'), '--epochs', '1', '--batch-size', '2', '--min-side', '96', '--max-side', '96', '--out', path.join(dir, 'run')], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  const saved = await Model.fromWeights(path.join(dir, 'run', 'model.safetensors'));
  t.like(saved.config, { architecture: 'nanodet-plus', preset: 'm-320', backbone: 'shufflenetv2-1.0x', neck: 'ghost-pan' });
  saved.dispose();
  const bad = spawnSync(process.execPath, [cli, 'train', '--preset', 'm-320', '--head', 'retinanet', '--coco-train', path.join(dir, 'data', 'instances_train.json')], { encoding: 'utf8' });
  t.regex(bad.stderr, /--preset and --neck are NanoDet-Plus options/);
});

for (const device of ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])] as const)
  test.serial(`NanoDet-Plus-m channels-last: every feature map stays channels-last (channel shuffles, 1×1 and depthwise weights keep the layout) and gives the NCHW forward, losses and weights (${device})`, async (t) => {
    if (device === 'cuda') setTf32(false); // float32 both ways: the layouts, not TF32, are compared
    const dir = tempDir('onestage-nanodet-m-nhwc-');
    await makeShapes({ out: path.join(dir, 'data'), train: 2, val: 1, size: 128, classes: 2, seed: 4 });
    const loader = new DataLoader(await CocoDataset.open(path.join(dir, 'data', 'instances_train.json')), { batchSize: 2, shuffle: false, augment: false, device, transform: { minSide: 128, maxSide: 128 } });
    const batch = (await loader.epoch(0)[Symbol.asyncIterator]().next()).value!;
    const run = async (channelsLast: boolean) => {
      const model = Model.nanodetPlus({ preset: 'm-320', numClasses: 2, seed: 1, device }).channelsLast(channelsLast).eval();
      const out = (await model.forward(batch.images)) as unknown as Record<string, Tensor>;
      model.train();
      const trainer = new Trainer(model, { optimizer: { type: 'sgd', lr: 0.01 }, channelsLast, cudnnBenchmark: false });
      const losses: number[] = [];
      for (let i = 0; i < 2; i++) losses.push((await trainer.step(batch, 0.01)).total);
      trainer.dispose();
      return { model, losses, out };
    };
    const nchw = await run(false);
    const nhwc = await run(true);
    t.false(nchw.model.info.channelsLast);
    t.true(nhwc.model.info.channelsLast);
    for (const k of ['c3', 'c4', 'c5', 'p3', 'p4', 'p5', 'p6']) {
      t.is(nchw.out[k].memoryFormat, 'contiguous', `NCHW ${k}`);
      t.is(nhwc.out[k].memoryFormat, 'channels-last', `channels-last ${k}`);
      assertClose(t, nhwc.out[k], nchw.out[k], { name: k, ...NET });
    }
    assertClose(t, nhwc.out.preds, nchw.out.preds, { name: 'preds', ...NET });
    // the first step's losses to 1e-4; the second's to 1e-3 (training-mode BatchNorm sums in another order
    // in each layout, and after one update the DSL assignment's discontinuities amplify that: 1.1e-4 seen)
    for (let i = 0; i < 2; i++) t.true(Math.abs(nchw.losses[i] - nhwc.losses[i]) <= (i === 0 ? 1e-4 : 1e-3) * Math.abs(nchw.losses[i]), `step ${i}: ${nchw.losses[i]} vs ${nhwc.losses[i]}`);
    const a = nchw.model.stateDict();
    const b = nhwc.model.stateDict();
    // a 1×1 and a depthwise weight of a shuffle block, of Ghost-PAN and of the head; the stem; the AGM's head
    for (const k of ['backbone.conv1.0.weight', 'backbone.stage3.6.branch2.0.weight', 'backbone.stage2.1.branch2.3.weight', 'fpn.reduce_layers.1.conv.weight', 'fpn.bottom_up_blocks.1.blocks.0.shortcut.0.weight',
      'head.cls_convs.2.0.depthwise.weight', 'head.cls_convs.3.1.pointwise.weight', 'aux_head.reg_convs.0.conv.weight'])
      assertClose(t, b[k], a[k], { atol: 1e-5, rtol: 1e-4, name: k });
    // back to NCHW: every weight has NCHW strides again (a 1×1 or depthwise weight too), the outputs NCHW
    nhwc.model.channelsLast(false);
    t.false(nhwc.model.info.channelsLast);
    const back = (await nhwc.model.eval().forward(batch.images)) as unknown as Record<string, Tensor>;
    for (const k of ['c3', 'c5', 'p3']) t.is(back[k].memoryFormat, 'contiguous', `after channelsLast(false): ${k}`);
    for (const o of [nchw.out, nhwc.out, back]) for (const v of Object.values(o)) v.dispose();
    disposeBatch(batch);
    nchw.model.dispose();
    nhwc.model.dispose();
  });
