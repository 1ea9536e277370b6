import sharp from 'sharp';
import * as path from 'node:path';
import * as fs from 'node:fs';
import { makeShapes, loadImage } from '../../lib';
async function main() {
  const dir = '/tmp/exp/shapes960';
  if (!fs.existsSync(path.join(dir, 'instances_train.json'))) await makeShapes({ out: dir, train: 48, val: 0, size: 960, seed: 1 });
  const files = fs.readdirSync(dir, { recursive: true } as any).map(String).filter((f) => f.endsWith('.jpg')).map((f) => path.join(dir, f));
  const bufs = files.map((f) => fs.readFileSync(f));
  console.log(files.length, 'files', bufs[0].length, 'bytes');
  const t = async (name: string, fn: (i: number) => Promise<unknown>) => {
    for (let i = 0; i < 8; i++) await fn(i);
    const t0 = process.hrtime.bigint();
    for (let r = 0; r < 2; r++) for (let i = 0; i < files.length; i++) await fn(i);
    console.log(name, (Number(process.hrtime.bigint() - t0) / 1e6 / (2 * files.length)).toFixed(2), 'ms');
  };
  await t('decode raw (buffer)', (i) => sharp(bufs[i]).raw().toBuffer());
  await t('decode raw (file)', (i) => sharp(files[i]).raw().toBuffer());
  await t('decode + resize 640 linear', (i) => sharp(bufs[i]).resize(640, 640, { fit: 'fill', kernel: 'linear' }).raw().toBuffer());
  await t('decode + resize 640 linear, srgb+removeAlpha', (i) => sharp(bufs[i]).removeAlpha().toColourspace('srgb').resize(640, 640, { fit: 'fill', kernel: 'linear' }).raw().toBuffer());
  await t('decode + resize 640 + flop', (i) => sharp(bufs[i]).removeAlpha().toColourspace('srgb').resize(640, 640, { fit: 'fill', kernel: 'linear' }).flop().raw().toBuffer());
  await t('loadImage resize+flip', (i) => loadImage(files[i], { resize: { width: 640, height: 640 }, flip: true }));
  await t('decode + resize 640 nearest', (i) => sharp(bufs[i]).resize(640, 640, { fit: 'fill', kernel: 'nearest' }).raw().toBuffer());
  await t('decode shrink-on-load 480 (x2)', (i) => sharp(bufs[i]).resize(480, 480, { fit: 'fill', kernel: 'linear' }).raw().toBuffer());
  await t('metadata', (i) => sharp(files[i]).metadata());
}
main();
