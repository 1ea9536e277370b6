/**
 * Input pipeline benchmark: images per second decoded + flipped + resized (short side 608, long side
 * ≤ 1024) + normalised + batched, onestage's DataLoader vs pytorch-retinanet's pipeline (skimage,
 * single process) on the same JPEGs, side by side.
 *   npx ts-node --transpile-only bench/data.ts [--images 64] [--size 512] [--batch 2]
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { CocoDataset, DataLoader, disposeBatch, makeShapes } from '../lib';
import { pythonWithTorch, tempDir } from '../test/helpers/python';

async function main(): Promise<void> {
  const o = new Command().option('--images <n>', 'images', '64').option('--size <px>', 'source image side', '512').option('--batch <n>', 'batch size', '2').parse().opts<{ images: string; size: string; batch: string }>();
  const dir = tempDir();
  await makeShapes({ out: dir, train: Number(o.images), val: 0, size: Number(o.size), seed: 1 });
  const json = path.join(dir, 'instances_train.json');
  const ds = await CocoDataset.open(json);
  const loader = new DataLoader(ds, { batchSize: Number(o.batch), seed: 0, prefetch: 2 });
  for await (const b of loader.epoch(0)) disposeBatch(b); // warm-up (file cache, thread pools)
  const t0 = process.hrtime.bigint();
  let n = 0;
  for await (const b of loader.epoch(1)) {
    n += b.ids.length;
    disposeBatch(b);
  }
  const ours = Number(process.hrtime.bigint() - t0) / 1e9;
  const rows: Array<{ system: string; imagesPerSecond: number }> = [{ system: 'onestage DataLoader (sharp + native collate)', imagesPerSecond: n / ours }];
  const py = pythonWithTorch();
  if (py) {
    spawnSync(py, [path.join(__dirname, 'reference_data.py'), json, o.batch], { encoding: 'utf8' }); // warm-up
    const res = spawnSync(py, [path.join(__dirname, 'reference_data.py'), json, o.batch], { encoding: 'utf8' });
    if (res.status === 0) {
      const r = JSON.parse(res.stdout) as { images: number; seconds: number };
      rows.push({ system: 'pytorch-retinanet pipeline (skimage, one process)', imagesPerSecond: r.images / r.seconds });
    } else console.error(`reference failed (needs python3-skimage): ${res.stderr.slice(-300)}`);
  }
  console.log(`\nInput pipeline, ${n} JPEGs ${o.size}×${o.size} → 608 short side, batch ${o.batch}, ${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}\n`);
  console.log('| system | images/s | vs reference |\n| --- | --- | --- |');
  const ref = rows[1]?.imagesPerSecond;
  for (const r of rows) console.log(`| ${r.system} | ${r.imagesPerSecond.toFixed(1)} | ${ref ? (r.imagesPerSecond / ref).toFixed(1) + '×' : ''} |`);
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true });
  fs.writeFileSync(path.join(__dirname, 'results', 'data-cpu.json'), JSON.stringify({ rows, images: n, size: Number(o.size) }, null, 1));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
