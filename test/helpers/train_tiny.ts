/**
 * Child process of test/memory.test.ts: trains a small RetinaNet for 3 SGD steps on generated shapes
 * (everything seeded) and saves its weights to argv[2] — run with and without the CPU caching allocator.
 */
import * as path from 'node:path';
import { CocoDataset, cpuMemory, DataLoader, disposeBatch, makeShapes, Model, Trainer } from '../../lib';

async function main(): Promise<void> {
  const [out, dataDir] = process.argv.slice(2) as [string, string];
  await makeShapes({ out: dataDir, train: 8, val: 0, size: 64, classes: 3, seed: 21, maxObjects: 4 });
  const ds = await CocoDataset.open(path.join(dataDir, 'instances_train.json'));
  const model = Model.retinanet({ depth: 18, numClasses: 3, featureSize: 32, seed: 4 });
  const trainer = new Trainer(model, { optimizer: { type: 'sgd', lr: 0.02, momentum: 0.9, weightDecay: 1e-4 } });
  let steps = 0;
  for (let e = 0; steps < 3; e++)
    for await (const b of new DataLoader(ds, { batchSize: 4, seed: 5, transform: { minSide: 64, maxSide: 64 } }).epoch(e)) {
      if (steps++ < 3) await trainer.step(b, 0.02);
      disposeBatch(b);
    }
  await model.saveWeights(out);
  console.log(JSON.stringify({ cacheEnabled: cpuMemory().enabled }));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
