/**
 * Training parity (step level): onestage and the reference training loop (test/reference/train_ref.py:
 * pytorch-retinanet's FocalLoss; mmdetection's RetinaNet head with the GHM authors' GHMC/GHMR; torch.optim's
 * AdamW/SGD and clip_grad_norm_) train the same RetinaNet from the same initial weights on the same batches,
 * written by onestage's DataLoader. At each recipe's own settings the first steps agree to 1e-4 (later ones
 * separate as the reference separates from itself under a one-rounding-step change of its initial
 * weights: README "Training parity"); at a low SGD rate, where the dynamics do not amplify rounding,
 * 20 steps and the weights after them agree.
 */
import test, { ExecutionContext } from 'ava';
import * as path from 'node:path';
import { CocoDataset, DataLoader, makeShapes } from '../lib';
import { median, ParityRecipe, relativeDeviations, runParity, stepDifferences, weightDifferences } from '../bench/training_parity';
import { pythonWithTorch, tempDir } from './helpers/python';

const STEPS = 20;
/** Steps compared at the recipes' own settings: after them rounding-level differences are amplified (README "Training parity"). */
const EXACT_STEPS = 3;
/** Relative differences allowed for the per-step losses and gradient norms (measured ≤ 2e-6 over the compared steps). */
const STEP_RTOL = 1e-4;
/** Largest |Δw| / (1e-3 + |w|) allowed after 20 low-rate steps (measured ≤ 9e-7). */
const WEIGHT_RTOL = 1e-3;

let data: Promise<{ loader: () => DataLoader }> | undefined;
function shapes(): Promise<{ loader: () => DataLoader }> {
  data ??= (async () => {
    const dir = tempDir('onestage-parity-');
    await makeShapes({ out: dir, train: 2 * STEPS, val: 0, size: 128, classes: 3, seed: 3 });
    const train = await CocoDataset.open(path.join(dir, 'instances_train.json'));
    return { loader: () => new DataLoader(train, { batchSize: 2, seed: 1, transform: { minSide: 128, maxSide: 128 } }) };
  })();
  return data;
}

const MODEL = { depth: 18 as const, featureSize: 64, numClasses: 3, anchorSizes: [16, 32, 64, 128, 256] };

async function run(t: ExecutionContext, recipe: ParityRecipe, steps: number, optimizer: 'adamw' | 'sgd', lr?: number) {
  const python = pythonWithTorch();
  if (python === null) throw new Error('no python3 with torch (install python3-torch or set ONESTAGE_PYTHON)');
  const { loader } = await shapes();
  const dir = tempDir(`onestage-parity-${recipe}-`);
  const r = await runParity(loader(), { recipe, seed: 5, epochs: 1, maxSteps: steps, batchSize: 2, device: 'cpu', dir, python, warmupSteps: 5, optimizer, lr, model: MODEL });
  t.is(r.steps, steps);
  t.is(r.reference.length, steps);
  t.true(r.onestage.every((s) => Number.isFinite(s.total) && s.total > 0));
  return { r, dir };
}

const recipes: ParityRecipe[] = ['focal', 'ghm', 'ghmc', 'ghm-all-levels'];
for (const recipe of recipes) {
  test.serial(`training parity: ${recipe} at its own settings (AdamW 1e-3) — the first ${EXACT_STEPS} steps' losses and gradient norms equal the reference loop's`, async (t) => {
    const { r } = await run(t, recipe, EXACT_STEPS, 'adamw');
    const d = stepDifferences(r.onestage, r.reference, EXACT_STEPS);
    t.log(`${recipe}: max relative differences over ${EXACT_STEPS} steps ${JSON.stringify(d)}`);
    for (const [k, v] of Object.entries(d)) t.true(v < STEP_RTOL, `${k}: ${v} ≥ ${STEP_RTOL}`);
  });
}

for (const recipe of ['focal', 'ghm-all-levels'] as ParityRecipe[]) {
  test.serial(`training parity: ${recipe} with SGD at a low rate — 20 steps of losses, gradient norms and the weights after them equal the reference loop's`, async (t) => {
    const { r, dir } = await run(t, recipe, STEPS, 'sgd', 1e-4);
    // real steps: the weights moved far more than the sides differ
    const moved = weightDifferences(path.join(dir, 'init.safetensors'), path.join(dir, 'onestage', 'final.safetensors'));
    t.true(moved.maxAbs > 1e-3, `the weights moved by at most ${moved.maxAbs}`);
    const d = stepDifferences(r.onestage, r.reference);
    t.log(`${recipe}: max relative step differences ${JSON.stringify(d)}`);
    for (const [k, v] of Object.entries(d)) t.true(v < STEP_RTOL, `${k}: ${v} ≥ ${STEP_RTOL}`);
    const w = weightDifferences(path.join(dir, 'onestage', 'final.safetensors'), path.join(dir, 'reference', 'final.safetensors'));
    t.log(`${recipe}: weights after ${STEPS} steps: max |Δ| ${w.maxAbs.toExponential(2)}, max rel ${w.maxRel.toExponential(2)} (${w.worst})`);
    t.true(w.maxRel < WEIGHT_RTOL, `weights: ${w.maxRel} at ${w.worst}`);
  });
}

test.serial('training parity: NanoDet-Plus (AGM, DSL, QFL + GIoU + DFL; detached from the second epoch) — the first steps equal the reference loop\'s, later ones stay within its own rounding sensitivity', async (t) => {
  const python = pythonWithTorch();
  if (python === null) throw new Error('no python3 with torch (install python3-torch or set ONESTAGE_PYTHON)');
  const dir = tempDir('onestage-parity-nanodet-');
  await makeShapes({ out: path.join(dir, 'data'), train: STEPS, val: 0, size: 128, classes: 3, seed: 3 });
  const train = await CocoDataset.open(path.join(dir, 'data', 'instances_train.json'));
  const loader = new DataLoader(train, { batchSize: 2, seed: 1, transform: { minSide: 128, maxSide: 128 } });
  // 2 epochs of 10 steps: the AGM gets detached inputs from epoch 1 on
  const r = await runParity(loader, {
    recipe: 'nanodet-plus', seed: 5, epochs: 2, maxSteps: STEPS, batchSize: 2, device: 'cpu', dir: path.join(dir, 'run'), python, warmupSteps: 5, detachEpoch: 1,
    optimizer: 'sgd', lr: 1e-4, control: [1, 2, 3], model: { depth: 18, featureSize: 64, numClasses: 3, anchorSizes: [] },
  });
  t.is(r.steps, STEPS);
  const first = stepDifferences(r.onestage, r.reference, 2);
  t.log(`NanoDet-Plus: first 2 steps ${JSON.stringify(first)}`);
  for (const [k, v] of Object.entries(first)) t.true(v < STEP_RTOL, `${k}: ${v} ≥ ${STEP_RTOL}`);
  // DSL's dynamic k (an integer part of an IoU sum) and its top-k make the steps discontinuous in the
  // weights: the reference itself, started one rounding step away, separates from step 2 on. onestage
  // must stay within that sensitivity (medians over the 20 steps, robust to single assignment flips).
  // One perturbed start is a noisy measure of it (seen: 9.6e-5 and 5.4e-4 for the same onestage
  // deviation, with 2 threads and with 1): the largest of three perturbed starts is taken.
  for (const key of ['total', 'gradNorm'] as const) {
    const ours = median(relativeDeviations(r.onestage, r.reference, key));
    const controls = r.controls!.map((c) => median(relativeDeviations(c, r.reference, key)));
    const control = Math.max(...controls);
    t.log(`NanoDet-Plus ${key}: median deviation onestage ${ours.toExponential(1)}, reference one rounding step away ${controls.map((c) => c.toExponential(1)).join(', ')}`);
    t.true(ours <= 5 * control + STEP_RTOL, `${key}: onestage ${ours} vs the reference's own ${control}`);
  }
});
