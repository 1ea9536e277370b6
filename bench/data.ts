/**
 * Input pipeline benchmark: images per second decoded + flipped + resized (short side 608, long side
 * ≤ 1024) + normalised + batched, onestage's DataLoader vs pytorch-retinanet's pipeline (skimage,
 * single process) on the same JPEGs, side by side.
 *   npx ts-node --transpile-only bench/data.ts [--images 64] [--size 512] [--batch 2]
 *       [--side 640] [--device cuda] [--prefetch 2] [--stages] [--decode-workers n] [--data dir]
 *       [--decoder auto,sharp]
 * --decoder: one DataLoader row per decoder ('auto': onestage's libjpeg-turbo decoder for JPEGs; 'sharp');
 * --side: resized to side × side (the reference is then not run: it resizes as pytorch-retinanet);
 * --stages: each stage also timed alone (header, decode + resize with sharp and with onestage's JPEG
 * decoder, collate + upload), as many in flight
 * as the libuv pool has threads (UV_THREADPOOL_SIZE, default 4).
 * The DataLoader row also reports the JavaScript thread's busy time per picture (event-loop utilisation,
 * garbage collection included): where it reaches the wall time per picture, the event loop is the ceiling.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { Command } from 'commander';
// onestage before sharp: loading sharp starts libuv's pool, which onestage sizes to the cores first
import { buildInfo, CocoDataset, DataLoader, Device, disposeBatch, IMAGENET_MEAN, IMAGENET_STD, imageSize, loadImage, makeShapes, paddedSize, resizeScale, scaledSize, Tensor } from '../lib';
import sharp from 'sharp';
import { native } from '../lib/binding';
import { writeJsonAtomic } from '../lib/io';
import { pythonWithTorch, tempDir, referenceEnv } from '../test/helpers/python';

/**
 * CPU time of the JavaScript thread so far (Linux: /proc/self/task/<pid>/stat, 10 ms ticks), ms; NaN
 * elsewhere. Unlike event-loop utilisation it does not count time the thread waited for a core.
 */
function mainThreadCpuMs(): number {
  const f = procStat(`/proc/self/task/${process.pid}/stat`);
  return f ? ((Number(f[11]) + Number(f[12])) * 1000) / 100 : NaN; // utime + stime, USER_HZ 100
}

/** Minor page faults of the whole process so far (Linux; NaN elsewhere): fresh memory touched by decoding. */
function minorFaults(): number {
  const f = procStat('/proc/self/stat');
  return f ? Number(f[7]) : NaN;
}

/** The fields of a /proc stat file after the command name (field 3 onwards), or undefined. */
function procStat(file: string): string[] | undefined {
  try {
    const stat = fs.readFileSync(file, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Runs `work` over 0..n-1 with at most `k` in flight; seconds taken. */
async function pool(n: number, k: number, work: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: Math.min(k, n) }, async () => {
    while (next < n) await work(next++);
  }));
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/**
 * Where the loader's host time goes: each stage alone over the same files, as many in flight as the
 * libuv pool has threads — the header read (imageSize), the decode + resize + flip (sharp), the
 * normalise + pad + collate (+ upload) of whole batches (native, one batch per call).
 */
async function stages(ds: CocoDataset, side: number | undefined, batch: number, device: Device, threads: number): Promise<Array<{ system: string; imagesPerSecond: number }>> {
  const n = ds.length;
  const files = Array.from({ length: n }, (_, i) => ds.record(i).file);
  const sizes: Array<{ width: number; height: number }> = new Array(n);
  const head = await pool(n, threads, async (i) => void (sizes[i] = await imageSize(files[i])));
  const decoded: Array<{ data: Uint8Array; width: number; height: number }> = new Array(n);
  // the loader's resize rule (lib/data/transforms)
  const target = (i: number) => {
    const out = scaledSize(sizes[i].width, sizes[i].height, resizeScale(sizes[i].width, sizes[i].height, side ?? 608, side ?? 1024));
    return out.width === sizes[i].width && out.height === sizes[i].height ? undefined : out;
  };
  const decode = await pool(n, threads, async (i) => {
    decoded[i] = await loadImage(files[i], { resize: target(i), flip: i % 2 === 0, decoder: 'sharp' });
  });
  // decoding alone, without the resize and flip: what a resize on the GPU could save at most
  const decodeOnly = await pool(n, threads, async (i) => void (await loadImage(files[i], { decoder: 'sharp' })));
  // onestage's JPEG decoder, into buffers reused as the DataLoader does (one per picture in flight)
  const jpeg = buildInfo().jpegDecoder !== '';
  const buffers = Array.from({ length: threads }, () => new Uint8Array(3 * Math.max(...sizes.map((z) => z.width * z.height))));
  const native1 = async (i: number, slot: number, resize: boolean) => {
    const r = resize ? target(i) : undefined;
    const o = await native().decodeJpegAsync(files[i], buffers[slot], r?.width ?? 0, r?.height ?? 0, resize && i % 2 === 0, null, 2 ** 40);
    if (!o.decoded) throw new Error(`${files[i]}: declined (${o.reason})`);
  };
  const byThread = async (resize: boolean) => {
    let next = 0;
    const t0 = process.hrtime.bigint();
    await Promise.all(Array.from({ length: Math.min(threads, n) }, async (_, slot) => {
      while (next < n) await native1(next++, slot, resize);
    }));
    return Number(process.hrtime.bigint() - t0) / 1e9;
  };
  const cpu0 = process.cpuUsage();
  const nativeDecode = jpeg ? await byThread(true) : NaN;
  const cpu = process.cpuUsage(cpu0);
  const nativeDecodeOnly = jpeg ? await byThread(false) : NaN;
  const batches = Math.floor(n / batch);
  // on CUDA both ways of making the floats: on the host (float32 upload) and on the device (uint8 upload,
  // the loader's default there)
  const ways: Array<'host' | 'device'> = device === 'cpu' ? ['host'] : ['host', 'device'];
  const rows = [
    { system: `stage: header (imageSize), ${threads} in flight`, imagesPerSecond: n / head },
    { system: `stage: decode + resize + flip (sharp), ${threads} in flight`, imagesPerSecond: n / decode },
    { system: `stage: decode only (sharp), ${threads} in flight`, imagesPerSecond: n / decodeOnly },
  ];
  // Pillow (one process), the decode + resize + flip the JPEG decoder reproduces
  const py = pythonWithTorch();
  if (py) {
    const cases = path.join(tempDir(), 'cases.json');
    fs.writeFileSync(cases, JSON.stringify(files.map((f, i) => [f, target(i)?.width ?? 0, target(i)?.height ?? 0, i % 2 === 0])));
    const res = spawnSync(py, [path.join(__dirname, 'reference_pil.py'), cases], { encoding: 'utf8', env: referenceEnv() });
    if (res.status === 0) {
      const r = JSON.parse(res.stdout) as { images: number; seconds: number };
      rows.push({ system: 'stage: decode + resize + flip (Pillow, one process)', imagesPerSecond: r.images / r.seconds });
    } else console.error(`Pillow stage failed: ${res.stderr.slice(-300)}`);
  }
  if (jpeg)
    rows.push(
      { system: `stage: decode + resize + flip (onestage JPEG decoder), ${threads} in flight; ${((cpu.user + cpu.system) / 1e3 / n).toFixed(2)} ms CPU a picture`, imagesPerSecond: n / nativeDecode },
      { system: `stage: decode only (onestage JPEG decoder), ${threads} in flight`, imagesPerSecond: n / nativeDecodeOnly },
    );
  for (const way of ways) {
    const collate = await pool(batches, threads, async (k) => {
      const samples = decoded.slice(k * batch, (k + 1) * batch);
      const padded = paddedSize(samples);
      new Tensor(await native().collateImagesAsync(samples.map((x) => x.data), samples.flatMap((x) => [x.height, x.width]), padded.height, padded.width, [...IMAGENET_MEAN], [...IMAGENET_STD], device, way)).dispose();
    });
    const what = device === 'cpu' ? 'normalise + pad + collate' : way === 'host' ? 'normalise + pad + collate + float32 upload' : 'pad + collate + uint8 upload + normalise on the GPU';
    rows.push({ system: `stage: ${what} (native), ${threads} batches in flight`, imagesPerSecond: (batches * batch) / collate });
  }
  return rows;
}

async function main(): Promise<void> {
  const o = new Command()
    .option('--images <n>', 'images', '64')
    .option('--size <px>', 'source image side', '512')
    .option('--batch <n>', 'batch size', '2')
    .option('--side <px>', 'resize to this square side (min and max side); default: short side 608, long side ≤ 1024 (pytorch-retinanet)')
    .option('--device <d>', "where batches are put: 'cpu' or 'cuda'", 'cpu')
    .option('--prefetch <n>', 'batches prepared ahead', '2')
    .option('--stages', 'also time each stage of the pipeline alone')
    .option('--data <dir>', 'make the pictures in this folder once and reuse them (default: a new temporary folder)')
    .option('--decode-concurrency <n>', "the DataLoader's decodeConcurrency (pictures decoded at once); default: pool size − 2")
    .option('--decoder <list>', "the DataLoader's decoder: 'auto' (onestage's JPEG decoder), 'sharp', or both, comma-separated", 'auto,sharp')
    .option('--decode-workers <n>', "the DataLoader's decodeWorkers (worker threads running sharp; 0: the main thread); default 'auto'")
    .option('--no-sharp-cache', "turn libvips' operation cache off (sharp.cache(false))")
    .parse()
    .opts<{ images: string; size: string; batch: string; side?: string; device: Device; prefetch: string; stages?: boolean; sharpCache: boolean; decodeWorkers?: string; data?: string; decodeConcurrency?: string; decoder: string }>();
  if (!o.sharpCache) sharp.cache(false);
  const side = o.side ? Number(o.side) : undefined;
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  // --data: a folder the pictures are made in once and reused by later runs
  const dir = o.data ?? tempDir();
  if (!fs.existsSync(path.join(dir, 'instances_train.json'))) await makeShapes({ out: dir, train: Number(o.images), val: 0, size: Number(o.size), seed: 1 });
  const json = path.join(dir, 'instances_train.json');
  const ds = await CocoDataset.open(json);
  const transform = side ? { minSide: side, maxSide: side } : undefined;
  const rows: Array<{ system: string; imagesPerSecond: number }> = [];
  let n = 0;
  for (const decoder of o.decoder.split(',').map((d) => d.trim()) as Array<'auto' | 'sharp'>) {
    const loader = new DataLoader(ds, { batchSize: Number(o.batch), seed: 0, prefetch: Number(o.prefetch), device: o.device, transform, decoder, decodeWorkers: o.decodeWorkers === undefined ? 'auto' : Number(o.decodeWorkers), ...(o.decodeConcurrency ? { decodeConcurrency: Number(o.decodeConcurrency) } : {}) });
    for await (const b of loader.epoch(0)) disposeBatch(b); // warm-up (file cache, thread pools)
    const t0 = process.hrtime.bigint();
    let gcMs = 0;
    const gc = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) gcMs += e.duration;
    });
    gc.observe({ entryTypes: ['gc'] });
    const elu0 = performance.eventLoopUtilization();
    const main0 = mainThreadCpuMs();
    const faults0 = minorFaults();
    const cpu0 = process.cpuUsage();
    // what a training step queued on libuv's pool would wait: a tiny native call (a 1×1 collate) issued
    // back to back while the epoch decodes, its latency recorded
    const probe = { busy: true, ms: [] as number[] };
    const prober = (async () => {
      const pixel = new Uint8Array(3);
      while (probe.busy) {
        const s0 = performance.now();
        new Tensor(await native().collateImagesAsync([pixel], [1, 1], 1, 1, [0, 0, 0], [1, 1, 1], 'cpu')).dispose();
        probe.ms.push(performance.now() - s0);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    n = 0;
    for await (const b of loader.epoch(1)) {
      n += b.ids.length;
      disposeBatch(b);
    }
    probe.busy = false;
    await prober;
    const sorted = [...probe.ms].sort((a, b) => a - b);
    const pct = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
    const ours = Number(process.hrtime.bigint() - t0) / 1e9;
    // the JavaScript thread's share: if its busy time per picture reaches the wall time per picture, the
    // event loop (not decoding) is the ceiling
    const elu = performance.eventLoopUtilization(elu0);
    const mainCpu = mainThreadCpuMs() - main0;
    const faults = minorFaults() - faults0;
    const cpu = process.cpuUsage(cpu0);
    await new Promise((resolve) => setImmediate(resolve)); // the last gc entries
    gc.disconnect();
    const mainMs = elu.active / n;
    console.error(
      `DataLoader (decoder '${decoder}') epoch: ${n} pictures in ${ours.toFixed(2)} s; event loop busy ${(100 * elu.utilization).toFixed(1)} % (${mainMs.toFixed(2)} ms a picture, ` +
        `garbage collection ${(gcMs / n).toFixed(2)} of it: a ceiling of ${(1000 / mainMs).toFixed(0)} img/s); JavaScript thread CPU ${Number.isNaN(mainCpu) ? '?' : (mainCpu / n).toFixed(2)} ms a picture; process CPU ${((cpu.user + cpu.system) / 1e3 / n).toFixed(2)} ms a picture (system ${(cpu.system / 1e3 / n).toFixed(2)}), ${(faults / n).toFixed(0)} page faults a picture; ` +
        `a native call on the pool meanwhile took ${pct(0.5).toFixed(2)} ms (median), ${pct(0.9).toFixed(2)} ms (90th percentile) over ${sorted.length} calls`,
    );
    rows.push({ system: `onestage DataLoader (decoder '${decoder}' + native collate), libuv pool ${threads}, sharp concurrency ${sharp.concurrency()}, ${loader.decodeConcurrency} decoded at once, ${loader.decodeWorkerCount} decode workers${o.sharpCache ? '' : ', no libvips cache'}; event loop ${mainMs.toFixed(2)} ms a picture, process CPU ${((cpu.user + cpu.system) / 1e3 / n).toFixed(2)} ms a picture`, imagesPerSecond: n / ours });
    await loader.close();
  }
  const py = side ? undefined : pythonWithTorch(); // the reference script resizes as pytorch-retinanet (608 / 1024)
  if (py) {
    spawnSync(py, [path.join(__dirname, 'reference_data.py'), json, o.batch], { encoding: 'utf8', env: referenceEnv() }); // warm-up
    const res = spawnSync(py, [path.join(__dirname, 'reference_data.py'), json, o.batch], { encoding: 'utf8', env: referenceEnv() });
    if (res.status === 0) {
      const r = JSON.parse(res.stdout) as { images: number; seconds: number };
      rows.push({ system: 'pytorch-retinanet pipeline (skimage, one process)', imagesPerSecond: r.images / r.seconds });
    } else console.error(`reference failed (needs python3-skimage): ${res.stderr.slice(-300)}`);
  }
  if (o.stages) rows.push(...(await stages(ds, side, Number(o.batch), o.device, threads)));
  console.log(`\nInput pipeline, ${n} JPEGs ${o.size}×${o.size} → ${side ? `${side}×${side}` : '608 short side'}, batch ${o.batch}, onto ${o.device}, ${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}\n`);
  console.log('| system | images/s | vs reference |\n| --- | --- | --- |');
  const ref = rows.find((r) => r.system.startsWith('pytorch-retinanet'))?.imagesPerSecond;
  for (const r of rows) console.log(`| ${r.system} | ${r.imagesPerSecond.toFixed(1)} | ${ref ? (r.imagesPerSecond / ref).toFixed(1) + '×' : ''} |`);
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true });
  writeJsonAtomic(path.join(__dirname, 'results', `data-${o.device}.json`), { rows, images: n, size: Number(o.size), side: side ?? null, batch: Number(o.batch), machine: `${os.cpus().length}× ${os.cpus()[0]?.model ?? 'CPU'}` }, 1);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
