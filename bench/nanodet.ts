/**
 * NanoDet-Plus loss benchmark: DSL assignment (by the auxiliary head) + QFL + GIoU + DFL of both
 * heads, forward + backward, on a NanoDet-sized batch (B 16, 416×416 → 3 598 priors at strides
 * 8–64, 80 classes, 10 boxes per image), onestage (batched, no host sync) vs the per-image reference
 * loop (test/reference/nanodet_ref.py, NanoDet-Plus' structure) in the same run.
 *   npx ts-node --transpile-only bench/nanodet.ts [--device cuda] [--batch 16]
 * Prints a table and writes bench/results/nanodet-<device>.json.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { buildInfo, centrePriors, NanoDetPlusLoss, Tensor } from '../lib';
import { timeMs as time } from './timing';
import { Bundle, fromTensor, writeBundle } from '../test/helpers/bundle';
import { pythonWithTorch, tempDir, referenceEnv } from '../test/helpers/python';
import { Rng } from '../test/helpers/random';

interface Row {
  loss: string;
  ms: number;
}

async function main(): Promise<void> {
  const opts = new Command()
    .option('--device <device>', 'cpu or cuda', 'cpu')
    .option('--batch <n>', 'images', '16')
    .option('--size <px>', 'input side', '416')
    .option('--classes <n>', 'classes', '80')
    .option('--boxes <n>', 'boxes per image', '10')
    .option('--warmup <n>', 'untimed runs', '')
    .option('--iters <n>', 'timed runs', '')
    .parse()
    .opts<{ device: 'cpu' | 'cuda'; batch: string; size: string; classes: string; boxes: string; warmup: string; iters: string }>();
  const device = opts.device;
  const gpu = device === 'cuda';
  const warmup = Number(opts.warmup || (gpu ? 5 : 1));
  const iters = Number(opts.iters || (gpu ? 20 : 3));
  const [B, S, C, G] = [Number(opts.batch), Number(opts.size), Number(opts.classes), Number(opts.boxes)];
  const R = 7;
  const rng = new Rng(3);
  const priors = centrePriors(S, S);
  const N = priors.shape[0];
  const ann = new Float32Array(B * G * 5);
  for (let i = 0; i < B * G; i++) {
    const [w, h] = [16 + rng.next() * 200, 16 + rng.next() * 200];
    const [x, y] = [rng.next() * (S - w), rng.next() * (S - h)];
    ann.set([x, y, x + w, y + h, Math.floor(rng.next() * C)], i * 5);
  }
  const W = C + 4 * (R + 1);
  const input: Bundle = {
    preds: { shape: [B, N, W], dtype: 'float32', data: rng.normal(B * N * W) },
    aux_preds: { shape: [B, N, W], dtype: 'float32', data: rng.normal(B * N * W) },
    priors: fromTensor(priors),
    annotations: { shape: [B, G, 5], dtype: 'float32', data: ann },
  };
  const T = (k: string) => Tensor.from(input[k].data, input[k].shape, { device });
  const preds = T('preds').setRequiresGrad();
  const aux = T('aux_preds').setRequiresGrad();
  const pri = T('priors');
  const annotations = T('annotations');
  const loss = new NanoDetPlusLoss();
  const rows: Row[] = [];
  rows.push({ loss: 'NanoDet-Plus (onestage, batched)', ms: await time(async () => (await loss.forward({ preds, auxPreds: aux, priors: pri, annotations, numClasses: C })).total.backward(), warmup, iters) });
  console.error(rows);
  const py = pythonWithTorch();
  if (py) {
    const dir = tempDir();
    writeBundle(dir, input, { num_classes: C });
    const res = spawnSync(py, [path.join(__dirname, 'reference_nanodet.py'), dir, device, String(warmup), String(iters)], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 1 << 24 });
    if (res.status !== 0) console.error(`reference failed: ${res.stderr}`);
    for (const line of res.stdout.split('\n').filter(Boolean)) rows.push(JSON.parse(line) as Row);
  }
  const machine = gpu ? `${buildInfo().deviceCount} CUDA device(s), LibTorch ${buildInfo().torchVersion}` : `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}`;
  console.log(`\nNanoDet-Plus assignment + loss (main + AGM), forward + backward, B ${B}, ${S}×${S} (${N} priors), ${C} classes, ${G} boxes/image, ${device} (${machine})\n`);
  console.log('| implementation | ms | speed-up of onestage |');
  console.log('| --- | --- | --- |');
  const ours = rows[0];
  for (const r of rows) console.log(`| ${r.loss} | ${r.ms.toFixed(1)} | ${r === ours ? '' : (r.ms / ours.ms).toFixed(1) + '×'} |`);
  const outDir = path.join(__dirname, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `nanodet-${device}.json`);
  fs.writeFileSync(file + '.tmp', JSON.stringify({ machine, device, B, S, N, C, G, warmup, iters, rows }, null, 1));
  fs.renameSync(file + '.tmp', file);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
