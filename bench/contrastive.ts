/**
 * Contrastive loss benchmark: forward + backward on B 8, 10 boxes per image, 5 FPN levels of 256
 * channels at 640×640 (80² … 5²), onestage vs the loop reference (explicit loops over images, boxes,
 * levels and views; torchvision's roi_align) in the same run; on CUDA also a RetinaNet-50 training step
 * (batch 8, 640×640, the Trainer's default fast path, fp32 and bf16) so that the loss's share of a
 * step comes from one run.
 * On CUDA the maps are channels-last leaves (as the Trainer's default step produces them; --nchw for NCHW).
 *   npx ts-node --transpile-only bench/contrastive.ts [--device cuda] [--batch 8] [--boxes 10] [--no-step] [--no-reference] [--nchw]
 * Prints a table and writes bench/results/contrastive-<device>.json.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Command } from 'commander';
import { buildInfo, ContrastiveLoss, setTf32, Tensor } from '../lib';
import { syntheticArrays, timeTrainingSteps } from './synthetic';
import { profileCalls, timeMs } from './timing';
import { Bundle, writeBundle } from '../test/helpers/bundle';
import { pythonWithTorch, tempDir, referenceEnv } from '../test/helpers/python';
import { Rng } from '../test/helpers/random';

async function main(): Promise<void> {
  const o = new Command()
    .option('--device <device>', 'cpu or cuda', 'cpu')
    .option('--batch <n>', 'images', '8')
    .option('--boxes <n>', 'boxes per image', '10')
    .option('--channels <n>', 'FPN channels', '256')
    .option('--size <px>', 'input side', '640')
    .option('--iters <n>', 'timed runs', '')
    .option('--no-step', 'skip the RetinaNet-50 training step (CUDA)')
    .option('--no-reference', 'skip the loop reference')
    .option('--nchw', 'NCHW feature maps on CUDA (default there: channels-last, as the Trainer makes them)')
    .option('--profile <file.json>', 'a Kineto trace of 5 calls of the loss (LibTorch ≥ 2)')
    .parse()
    .opts<{ device: 'cpu' | 'cuda'; batch: string; boxes: string; channels: string; size: string; iters: string; step: boolean; reference: boolean; nchw?: boolean; profile?: string }>();
  const device = o.device;
  const gpu = device === 'cuda';
  const [B, G, C, S] = [Number(o.batch), Number(o.boxes), Number(o.channels), Number(o.size)];
  const iters = Number(o.iters || (gpu ? 20 : 2));
  const warmup = gpu ? 3 : 1;
  const rng = new Rng(5);
  const bundle: Bundle = {};
  const levels = [3, 4, 5, 6, 7].map((l) => Math.ceil(S / 2 ** l));
  levels.forEach((n, l) => {
    bundle[`f1_${l}`] = { shape: [B, C, n, n], dtype: 'float32', data: rng.normal(B * C * n * n) };
    bundle[`f2_${l}`] = { shape: [B, C, n, n], dtype: 'float32', data: rng.normal(B * C * n * n) };
  });
  const ann = new Float32Array(B * G * 5);
  for (let i = 0; i < B * G; i++) {
    const w = rng.between(16, 300);
    const h = rng.between(16, 300);
    const x = rng.between(0, S - w);
    const y = rng.between(0, S - h);
    ann.set([x, y, x + w, y + h, rng.integer(0, 79)], i * 5);
  }
  bundle.annotations = { shape: [B, G, 5], dtype: 'float32', data: ann };
  // the maps in the layout the Trainer's step hands the loss: channels-last on CUDA (its default)
  const channelsLast = gpu && !o.nchw;
  const map = (key: string) => {
    const t = Tensor.from(bundle[key].data as Float32Array, bundle[key].shape, { device });
    if (!channelsLast) return t.setRequiresGrad(true);
    const nhwc = t.channelsLast();
    t.dispose();
    return nhwc.setRequiresGrad(true);
  };
  const f1 = levels.map((_, l) => map(`f1_${l}`));
  const f2 = levels.map((_, l) => map(`f2_${l}`));
  const annotations = Tensor.from(ann, [B, G, 5], { device });
  const loss = new ContrastiveLoss();
  const call = async () => {
    const r = await loss.forward({ features1: f1, features2: f2, annotations, inputSize: [S, S] });
    await r.loss.backward();
  };
  const ms = await timeMs(call, warmup, iters);
  await profileCalls(o.profile, call);
  const rows = [{ system: `onestage (LibTorch ${buildInfo().torchVersion}${channelsLast ? ', channels-last maps' : ''})`, ms }];
  console.error(`onestage: ${ms.toFixed(2)} ms`);
  const py = o.reference ? pythonWithTorch() : null;
  if (py) {
    const dir = tempDir();
    writeBundle(dir, bundle, { temperature: 0.5, levels: 'all', negatives: 'other-class', pooling: 'average', output_size: 7, sampling_ratio: 2, first_level: 3, grid: 4, height: S, width: S });
    const res = spawnSync(py, [path.join(__dirname, 'reference_contrastive.py'), dir, device, String(gpu ? 1 : 0), String(gpu ? 3 : 1)], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 1 << 24 });
    if (res.status === 0) rows.push(JSON.parse(res.stdout.trim().split('\n').pop()!));
    else console.error(`reference failed: ${res.stderr}`);
  }
  for (const f of [...f1, ...f2, annotations]) f.dispose();
  console.log(`\nContrastive loss forward + backward, B ${B}, ${G} boxes per image, 5 levels × ${C} channels (${S}×${S}), ${device}\n`);
  console.log('| system | ms | vs onestage |');
  console.log('| --- | --- | --- |');
  for (const r of rows) console.log(`| ${r.system} | ${r.ms.toFixed(2)} | ${(r.ms / ms).toFixed(1)}× |`);
  const steps: Array<{ precision: string; msPerStep: number; lossShare: number }> = [];
  if (gpu && o.step) {
    // the denominator of the "< 5 % of a step": RetinaNet-50, 8 images of 640², default fast path
    setTf32(true);
    const data = syntheticArrays(8, 640, 0);
    for (const amp of [false, true]) {
      const r = await timeTrainingSteps({ device, batch: 8, size: 640, depth: 50, steps: 20, warmup: 8, optimizer: 'sgd', data, amp, fast: true });
      steps.push({ precision: amp ? 'bf16' : 'fp32', msPerStep: r.msPerStep, lossShare: ms / r.msPerStep });
    }
    console.log('\n| RetinaNet-50 step (8 × 640², default fast path) | ms/step | contrastive loss / step |');
    console.log('| --- | --- | --- |');
    for (const r of steps) console.log(`| ${r.precision} | ${r.msPerStep.toFixed(1)} | ${(100 * r.lossShare).toFixed(1)} % |`);
  }
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true });
  fs.writeFileSync(path.join(__dirname, 'results', `contrastive-${device}.json`), JSON.stringify({ rows, steps }, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
