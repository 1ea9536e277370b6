/**
 * Parity harness proof: LibTorch ops through the binding equal PyTorch on the same inputs
 * (test/reference/ops.py), float32, random inputs with a fixed seed.
 */
import test from 'ava';
import * as path from 'node:path';
import { buildInfo, roiAlign, Tensor } from '../lib';
import { Bundle, fromTensor, readBundle, toTensor, writeBundle } from './helpers/bundle';
import { assertClose, compareClose } from './helpers/close';
import { pythonWithTorch, runReference, tempDir } from './helpers/python';
import { Rng } from './helpers/random';

const devices = ['cpu', ...(buildInfo().cudaAvailable ? ['cuda' as const] : [])] as const;

function inputs(seed: number): Bundle {
  const rng = new Rng(seed);
  return {
    a: { shape: [3, 4, 5], dtype: 'float32', data: rng.normal(60) },
    b: { shape: [5, 6], dtype: 'float32', data: rng.normal(30) },
    x: { shape: [4, 3, 5], dtype: 'float32', data: rng.uniform(60, 0.05, 4) },
    y: { shape: [3, 1], dtype: 'float32', data: rng.uniform(3, 0.5, 2) },
  };
}

for (const device of devices) {
  test(`parity: binding ops equal PyTorch on ${device} (float32, rtol 1e-5)`, (t) => {
    if (pythonWithTorch() === null) return t.fail('no python3 with torch: install python3-torch');
    const dir = tempDir();
    const inDir = path.join(dir, 'in');
    const outDir = path.join(dir, 'out');
    const input = inputs(1234);
    writeBundle(inDir, input);
    runReference('ops.py', [inDir, outDir, device]);
    const expected = readBundle(outDir).tensors;

    const [a, b, x, y] = (['a', 'b', 'x', 'y'] as const).map((k) => toTensor(input[k], device));
    const half = Tensor.from([0.5], [1], { device });
    const xm = x.sub(half);
    const actual: Record<string, Tensor> = {
      matmul: a.matmul(b),
      sigmoid: x.sigmoid(),
      exp: x.exp(),
      log: x.log(),
      relu: xm.relu(),
      add: x.add(y),
      sub: x.sub(y),
      mul: x.mul(y),
      div: x.div(y),
      softmax_last: x.softmax(-1),
      log_softmax_0: x.logSoftmax(0),
      sum_all: x.sum(),
      sum_0_2: x.sum([0, 2]),
    };
    t.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort());
    for (const [name, value] of Object.entries(actual)) {
      t.is(value.device, device === 'cuda' ? 'cuda:0' : 'cpu');
      // CUDA matmul may use TF32 on the reference side; onestage keeps full fp32 unless asked
      assertClose(t, fromTensor(value), expected[name], { name, rtol: 1e-5, atol: 1e-6 });
      value.dispose();
    }
    for (const v of [a, b, x, y, half, xm]) v.dispose();
  });
}

test('assertClose: reports the worst element with its index and both values', (t) => {
  const r = compareClose({ shape: [2, 2], data: [1, 2, 3, 4.5] }, { shape: [2, 2], data: [1, 2, 3, 4] }, { name: 'm' });
  t.false(r.ok);
  t.regex(r.message, /1 of 4 elements differ; worst at \[1, 1\]: actual 4\.5, expected 4/);
  t.true(compareClose({ shape: [1], data: [1 + 1e-7] }, { shape: [1], data: [1] }).ok);
  t.false(compareClose({ shape: [2], data: [1, 2] }, { shape: [1, 2], data: [1, 2] }).ok);
  t.false(compareClose({ shape: [1], data: [NaN] }, { shape: [1], data: [1] }).ok);
});

test('bundles: fixtures of the reference projects read with their shapes and dtypes', (t) => {
  const { tensors, meta } = readBundle(path.join(__dirname, 'fixtures', 'peers', 'focal-torchvision'));
  t.deepEqual(tensors.logits.shape, [600, 5]);
  t.is(tensors.loss.dtype, 'float32');
  t.regex(String(meta.source), /sigmoid_focal_loss/);
});

for (const device of devices) {
  test(`parity: roiAlign equals torchvision.ops.roi_align (aligned, sampling ratio 2) forward and gradient on ${device}`, async (t) => {
    if (pythonWithTorch() === null) return t.fail('no python3 with torch: install python3-torch');
    const rng = new Rng(77);
    const [B, C, H, W, oh, ow, scale] = [2, 3, 9, 11, 3, 4, 0.25];
    // boxes in input pixels (4× the feature map): fractional, tiny, partly and wholly outside, one on the last row/column
    const rois = [
      0, 3.3, 5.1, 20.7, 30.2,
      1, -6, -4, 10, 9,
      0, 30, 20, 30.5, 20.5,
      1, 35.7, 27.1, 44, 36,
      1, 50, 50, 60, 60,
      0, 0, 0, 44, 36,
    ];
    const R = rois.length / 5;
    const input: Bundle = {
      features: { shape: [B, C, H, W], dtype: 'float32', data: rng.normal(B * C * H * W) },
      rois: { shape: [R, 5], dtype: 'float32', data: Float32Array.from(rois) },
      weight: { shape: [R, C, oh, ow], dtype: 'float32', data: rng.normal(R * C * oh * ow) },
    };
    const dir = tempDir();
    writeBundle(path.join(dir, 'in'), input, { spatial_scale: scale, sampling_ratio: 2 });
    runReference('roi_align_ref.py', [path.join(dir, 'in'), path.join(dir, 'out'), device]);
    const expected = readBundle(path.join(dir, 'out')).tensors;
    const features = toTensor(input.features, device).setRequiresGrad(true);
    const out = roiAlign(features, toTensor(input.rois, device), { outputSize: [oh, ow], spatialScale: scale, samplingRatio: 2 });
    t.deepEqual(out.shape, [R, C, oh, ow]);
    assertClose(t, out, expected.output, { atol: 1e-6, rtol: 1e-5 });
    await out.mul(toTensor(input.weight, device)).sum().backward();
    assertClose(t, features.grad!, expected.grad, { atol: 1e-6, rtol: 1e-5 });
    t.deepEqual(roiAlign(features, Tensor.from(new Float32Array(0), [0, 5], { device })).shape, [0, C, 7, 7]);
    t.throws(() => roiAlign(features, Tensor.from(new Float32Array(4), [1, 4], { device })), { message: /rois of shape \[R, 5\]/ });
    t.throws(() => roiAlign(features, toTensor(input.rois, device), { samplingRatio: 0 }), { instanceOf: RangeError, message: /options\.samplingRatio/ });
  });
}
