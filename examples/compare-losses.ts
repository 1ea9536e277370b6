/**
 * Compares the losses on the shapes data: the same ResNet-18 backbone and FPN (same seed, same data
 * order) trained with each loss configuration — RetinaNet heads with its losses, and NanoDet-Plus
 * (its head over centre priors, DSL assignment, QFL + GIoU + DFL and the AGM) — and NanoDet-Plus-m
 * (ShuffleNetV2 1.0x + Ghost-PAN, the released architecture) with the same losses, evaluated on the
 * validation set after every epoch.
 * Writes <out>/compare-losses.md (AP, AP50, AP75, seconds per epoch) and <out>/compare-losses.{svg,png}
 * (validation AP50 of every configuration per epoch).
 *
 *   npx ts-node --transpile-only examples/compare-losses.ts [--epochs 12] [--device auto] [--out runs/compare]
 *
 * Configurations: the built-in recipes (lossRecipe: loss, box coder and clipping) — focal + smooth L1
 * (pytorch-retinanet), GHM-C + smooth L1 and GHM-C + GHM-R (mmdetection's GHM RetinaNet) — focal +
 * contrastive (the second view, weight 0.1), NanoDet-Plus (FPN 128, head 128, AGM detached from epoch
 * 10 or at three quarters of the epochs when fewer).
 *   [--optimizer adamw|sgd] AdamW 1e-3 wd 0.05 (default) or SGD 0.01 momentum 0.9 wd 1e-4 (mmdetection's)
 *   [--seed 0] model initialisation and data order
 */
import * as path from 'node:path';
import { Command } from 'commander';
import {
  buildInfo, CocoDataset, DataLoader, Device, EpochRecord, lossRecipe, makeShapes, Model, NanoDetPlusLossOptions, RetinaNetLossOptions, Trainer, TrainerOptions, writeFileAtomic, writeLineChart,
} from '../lib';

interface Variant {
  name: string;
  loss: RetinaNetLossOptions | NanoDetPlusLossOptions;
  /** NanoDet-Plus instead of RetinaNet: on the ResNet-18 + FPN of the others, or NanoDet-Plus-m (ShuffleNetV2 1.0x + Ghost-PAN 96). */
  nanodet?: 'resnet' | 'm';
  /** Box coder std of targets and decoding. */
  std: [number, number, number, number];
  /** Gradient clipping of the recipe. */
  clip: number;
  /** The loader also makes the second view. */
  views?: 2;
}

function recipe(name: string, which: 'focal' | 'ghm' | 'ghmc'): Variant {
  const r = lossRecipe(which);
  return { name, loss: r.loss, std: r.boxCoder.std as [number, number, number, number], clip: r.clipGradNorm };
}

const focal = recipe('focal + smooth L1', 'focal');
const VARIANTS: Variant[] = [
  // pytorch-retinanet
  focal,
  // the contrastive idea: focal + NT-Xent between the two views of every box (weight 0.1, projection head)
  { ...focal, name: 'focal + contrastive', loss: { ...focal.loss, contrastive: { weight: 0.1, temperature: 0.5, negatives: 'other-class', projection: { hidden: 128, out: 64 } } }, views: 2 },
  // mmdetection's GHM RetinaNet: GHM-C alone, then GHM-C + GHM-R (box std 1, GHM-R weight 10, per level)
  recipe('GHM-C + smooth L1', 'ghmc'),
  recipe('GHM-C + GHM-R', 'ghm'),
  // NanoDet-Plus: QFL + GIoU + DFL on DSL assignment by the auxiliary head
  { name: 'NanoDet-Plus (QFL + GIoU + DFL, AGM)', loss: {}, std: focal.std, clip: focal.clip, nanodet: 'resnet' },
  // the same losses on NanoDet-Plus-m as its authors ship it (preset m-416's modules at this input size)
  { name: 'NanoDet-Plus-m (ShuffleNetV2 1.0x + Ghost-PAN, same losses)', loss: {}, std: focal.std, clip: focal.clip, nanodet: 'm' },
];

async function main(): Promise<void> {
  const o = new Command()
    .option('--epochs <n>', 'epochs per configuration', '12')
    .option('--device <device>', "'auto', 'cpu' or 'cuda'", 'auto')
    .option('--out <dir>', 'output folder', path.join('runs', 'compare'))
    .option('--train <n>', 'training images', '300')
    .option('--only <names>', "comma-separated words picking configurations by name (e.g. 'nanodet,focal')")
    .option('--optimizer <type>', "'adamw' (1e-3, weight decay 0.05) or 'sgd' (0.01, momentum 0.9, weight decay 1e-4)", 'adamw')
    .option('--seed <n>', 'model initialisation and data order', '0')
    .parse()
    .opts<{ epochs: string; device: string; out: string; train: string; only?: string; optimizer: string; seed: string }>();
  if (o.optimizer !== 'adamw' && o.optimizer !== 'sgd') throw new Error(`--optimizer must be 'adamw' or 'sgd', not '${o.optimizer}'`);
  const seed = Number(o.seed);
  const picks = o.only?.split(',').map((w) => w.trim().toLowerCase()).filter(Boolean);
  const variants = picks ? VARIANTS.filter((v) => picks.some((p) => v.name.toLowerCase() === p || v.name.toLowerCase().includes(p))) : VARIANTS;
  if (variants.length === 0) throw new Error(`--only ${o.only} matches none of: ${VARIANTS.map((v) => v.name).join('; ')}`);
  const device: Device = o.device === 'auto' ? (buildInfo().cudaAvailable ? 'cuda' : 'cpu') : (o.device as Device);
  const epochs = Number(o.epochs);
  const data = path.join(o.out, 'data');
  await makeShapes({ out: data, train: Number(o.train), val: 60, size: 128, classes: 3, seed: 0 });
  const train = await CocoDataset.open(path.join(data, 'instances_train.json'));
  const val = await CocoDataset.open(path.join(data, 'instances_val.json'));
  const transform = { minSide: 128, maxSide: 128 };
  const rows: string[] = [];
  const curves: Array<{ name: string; points: Array<[number, number]> }> = [];
  for (const v of variants) {
    const model: Model = v.nanodet === 'm'
      ? Model.nanodetPlus({ preset: 'm-416', numClasses: 3, device, seed })
      : v.nanodet === 'resnet'
      ? Model.nanodetPlus({ depth: 18, numClasses: 3, featureSize: 128, head: { channels: 128 }, aux: { channels: 256 }, device, seed })
      : Model.retinanet({ depth: 18, numClasses: 3, featureSize: 128, freezeBn: false, anchors: { sizes: [16, 32, 64, 128, 256] }, boxCoder: { std: v.std }, device, seed });
    const loss = v.nanodet ? { ...v.loss, detachEpoch: Math.min(10, Math.floor((3 * epochs) / 4)) } : v.loss;
    const optimizer = o.optimizer === 'sgd' ? { type: 'sgd' as const, lr: 0.01, momentum: 0.9, weightDecay: 1e-4 } : { type: 'adamw' as const, lr: 1e-3, weightDecay: 0.05 };
    const options: TrainerOptions = { loss, optimizer: { ...optimizer, clipGradNorm: v.clip }, schedule: { warmupSteps: 50, type: 'cosine' }, replicas: 'auto' };
    const trainer = new Trainer(model, options);
    const history: EpochRecord[] = [];
    trainer.on('epoch', (e: EpochRecord) => {
      history.push(e);
      console.error(`${v.name}: epoch ${e.epoch + 1}/${epochs} loss ${e.total.toFixed(4)} AP50 ${e.val?.AP50.toFixed(4)} (${e.seconds.toFixed(1)} s)`);
    });
    const loader = new DataLoader(train, { batchSize: 8, seed, device, transform, views: v.views ?? 1 });
    const valLoader = new DataLoader(val, { batchSize: 8, shuffle: false, augment: false, device, transform });
    const result = await trainer.fit(loader, { epochs, valLoader, evalEvery: 1 });
    const s = result.evaluation!.stats;
    const perEpoch = history.reduce((a, e) => a + e.seconds, 0) / history.length;
    rows.push(`| ${v.name} | ${s[0].toFixed(3)} | ${s[1].toFixed(3)} | ${s[2].toFixed(3)} | ${perEpoch.toFixed(1)} |`);
    curves.push({ name: v.name, points: history.map((e) => [e.epoch + 1, e.val!.AP50]) });
    trainer.dispose();
    model.dispose();
  }
  const table = [
    `Shapes (${train.length} train / ${val.length} val images, 128 px), ResNet-18 + FPN 128 (RetinaNet heads, or NanoDet-Plus) and NanoDet-Plus-m, ${epochs} epochs on ${device}, ${o.optimizer === 'sgd' ? 'SGD 0.01' : 'AdamW 1e-3'} cosine, seed ${seed}`,
    '',
    '| loss | AP | AP50 | AP75 | s / epoch |',
    '| --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
  writeFileAtomic(path.join(o.out, 'compare-losses.md'), table);
  await writeLineChart(path.join(o.out, 'compare-losses'), curves, { title: 'Validation AP50 by loss', xTitle: 'epoch', yTitle: 'AP50', yDomain: [0, 1] });
  console.log(table);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
