/**
 * Loss benchmark: forward + backward of each loss on a RetinaNet-sized batch (B 8, 640×640 →
 * 76 725 anchors, 80 classes, 10 boxes per image), onestage vs the reference implementations
 * (pytorch-retinanet's per-image focal loop; the GHM authors' per-bin loops) in the same run. Each
 * call starts with the inputs' gradients cleared on both sides (a training step's zero_grad), so the
 * backward stores its gradient rather than adding it to the previous call's.
 *   npx ts-node --transpile-only bench/losses.ts [--device cuda] [--batch 8] [--profile prefix]
 * (--profile: a Kineto trace of 5 calls of each onestage loss, prefix-<loss>.json; LibTorch ≥ 2)
 * Prints a table and writes bench/results/losses-<device>.json.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { buildInfo, encodeBoxes, FocalLoss, generateAnchors, GHMC, GHMR, MaxIoUAssigner, Tensor } from '../lib';
import { profileCalls, timeMs as time } from './timing';
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
    .option('--batch <n>', 'images', '8')
    .option('--classes <n>', 'classes', '80')
    .option('--boxes <n>', 'boxes per image', '10')
    .option('--warmup <n>', 'untimed runs', '')
    .option('--iters <n>', 'timed runs', '')
    .option('--profile <prefix>', 'Kineto traces of each onestage loss')
    .parse()
    .opts<{ device: 'cpu' | 'cuda'; batch: string; classes: string; boxes: string; warmup: string; iters: string; profile?: string }>();
  const device = opts.device;
  const gpu = device === 'cuda';
  const warmup = Number(opts.warmup || (gpu ? 5 : 1));
  const iters = Number(opts.iters || (gpu ? 20 : 3));
  const [B, C, G] = [Number(opts.batch), Number(opts.classes), Number(opts.boxes)];
  const rng = new Rng(3);
  const anchors = generateAnchors(640, 640);
  const N = anchors.shape[0];
  const ann = new Float32Array(B * G * 5);
  for (let i = 0; i < B * G; i++) {
    const [w, h] = [20 + rng.next() * 300, 20 + rng.next() * 300];
    const [x, y] = [rng.next() * (640 - w), rng.next() * (640 - h)];
    ann.set([x, y, x + w, y + h, Math.floor(rng.next() * C)], i * 5);
  }
  const input: Bundle = {
    logits: { shape: [B, N, C], dtype: 'float32', data: rng.normal(B * N * C, 2) },
    regressions: { shape: [B, N, 4], dtype: 'float32', data: rng.normal(B * N * 4, 0.5) },
    anchors: fromTensor(anchors),
    annotations: { shape: [B, G, 5], dtype: 'float32', data: ann },
  };
  const T = (k: string) => Tensor.from(input[k].data, input[k].shape, { device });
  const logits = T('logits').setRequiresGrad();
  const regressions = T('regressions').setRequiresGrad();
  const anchorsD = T('anchors');
  const annotations = T('annotations');
  // GHM inputs from the assignment, shared with the reference
  const a = await new MaxIoUAssigner().assign(anchorsD, annotations);
  const labels = a.labels.toNumbers();
  const target = new Float32Array(B * N * C);
  const weight = new Float32Array(B * N * C);
  const rweight = new Float32Array(B * N * 4);
  labels.forEach((l, i) => {
    if (l >= 0) {
      target[i * C + l] = 1;
      rweight.fill(1, i * 4, i * 4 + 4);
    }
    if (l !== -2) weight.fill(1, i * C, i * C + C);
  });
  const deltas = encodeBoxes(anchorsD, a.boxes);
  input.ghm_labels = { shape: [B, N], dtype: 'int64', data: BigInt64Array.from(labels, (l) => BigInt(l)) };
  input.ghm_row_weight = { shape: [B, N], dtype: 'float32', data: Float32Array.from(labels, (l) => (l === -2 ? 0 : 1)) };
  input.ghm_rweight = { shape: [B, N, 4], dtype: 'float32', data: rweight };
  input.ghm_deltas = fromTensor(deltas);
  const tgt = Tensor.from(target, [B, N, C], { device }), wgt = Tensor.from(weight, [B, N, C], { device });
  const lbl = T('ghm_labels'), rowWgt = T('ghm_row_weight'), rwgt = T('ghm_rweight'), dlt = deltas.to(device);

  const rows: Row[] = [];
  // every call starts with the inputs' gradients cleared, on both sides (as after a training step's
  // zero_grad): the backward stores the gradient instead of adding it to the last call's
  const measure = async (loss: string, key: string, body: () => Promise<unknown>) => {
    const fn = () => {
      logits.clearGrad();
      regressions.clearGrad();
      return body();
    };
    rows.push({ loss, ms: await time(fn, warmup, iters) });
    await profileCalls(opts.profile && `${opts.profile}-${key}.json`, fn);
  };
  const focal = new FocalLoss();
  await measure('Focal (onestage, batched)', 'focal', async () => {
    const l = await focal.forward({ classifications: logits, regressions, anchors: anchorsD, annotations });
    await l.cls.add(l.reg).backward();
  });
  const ghmc = new GHMC({ momentum: 0.75 });
  await measure('GHM-C (onestage, labels form, fused)', 'ghmc', async () => (await ghmc.forward(logits, lbl, rowWgt)).backward());
  const ghmcDense = new GHMC({ momentum: 0.75 });
  await measure('GHM-C (onestage, one-hot form)', 'ghmc-onehot', async () => (await ghmcDense.forward(logits, tgt, wgt)).backward());
  const ghmr = new GHMR({ momentum: 0.7 });
  await measure('GHM-R (onestage, vectorised)', 'ghmr', async () => (await ghmr.forward(regressions, dlt, rwgt)).backward());
  console.error(rows);

  const py = pythonWithTorch();
  if (py) {
    const dir = tempDir();
    writeBundle(dir, input);
    const res = spawnSync(py, [path.join(__dirname, 'reference_losses.py'), dir, device, String(warmup), String(iters)], { encoding: 'utf8', env: referenceEnv(), maxBuffer: 1 << 24 });
    if (res.status !== 0) console.error(`reference failed: ${res.stderr}`);
    for (const line of res.stdout.split('\n').filter(Boolean)) rows.push(JSON.parse(line) as Row);
  }
  const machine = gpu ? `${buildInfo().deviceCount} CUDA device(s), LibTorch ${buildInfo().torchVersion}` : `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}`;
  console.log(`\nLoss forward + backward, B ${B}, ${N} anchors, ${C} classes, ${G} boxes/image, ${device} (${machine})\n`);
  console.log('| loss | ms | speed-up of onestage |');
  console.log('| --- | --- | --- |');
  const pair: Record<string, string> = { 'Focal (pytorch-retinanet per-image loop)': 'Focal (onestage, batched)', "GHM-C (authors' per-bin loop)": 'GHM-C (onestage, labels form, fused)', "GHM-R (authors' per-bin loop)": 'GHM-R (onestage, vectorised)' };
  for (const r of rows) {
    const ours = rows.find((o) => o.loss === pair[r.loss]);
    console.log(`| ${r.loss} | ${r.ms.toFixed(1)} | ${ours ? (r.ms / ours.ms).toFixed(1) + '×' : ''} |`);
  }
  const outDir = path.join(__dirname, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `losses-${device}.json`);
  fs.writeFileSync(file + '.tmp', JSON.stringify({ machine, device, B, N, C, G, warmup, iters, rows }, null, 1));
  fs.renameSync(file + '.tmp', file);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
