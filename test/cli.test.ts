/**
 * The command line end to end on tiny data: make-shapes → train (JSON config) → resume → eval →
 * detect; configuration errors name the field; bad commands and options fail with a message.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { buildInfo, cpuMemory } from '../lib';
import sharp from 'sharp';
import { tempDir } from './helpers/python';

const cli = path.resolve(__dirname, '..', 'bin', 'onestage.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });

test('cli: `onestage info` prints buildInfo, the CPU threads and the CPU caching allocator (on, or off with ONESTAGE_CPU_CACHE_MB=0) as JSON', (t) => {
  const r = run('info');
  t.is(r.status, 0, r.stderr);
  const { enabled, cacheLimit } = cpuMemory();
  // the child's thread count is its own default (this process may have changed its own)
  const threads = (JSON.parse(r.stdout) as { cpuThreads: number }).cpuThreads;
  t.true(Number.isInteger(threads) && threads >= 1);
  t.deepEqual(JSON.parse(r.stdout), { ...buildInfo(), cpuThreads: threads, cpuCache: { enabled, limitBytes: cacheLimit } });
  const off = spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8', env: { ...process.env, ONESTAGE_CPU_CACHE_MB: '0', OMP_NUM_THREADS: '1' } });
  t.deepEqual((JSON.parse(off.stdout) as { cpuCache: unknown }).cpuCache, { enabled: false, limitBytes: 0 });
  t.is((JSON.parse(off.stdout) as { cpuThreads: number }).cpuThreads, 1);
});

test('cli: make-shapes, train --config, train --resume, eval and detect run end to end', async (t) => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  const made = run('make-shapes', '--out', data, '--train', '8', '--val', '4', '--size', '64', '--classes', '2', '--seed', '3');
  t.is(made.status, 0, made.stderr);
  const run1 = path.join(dir, 'run');
  const config = {
    data: { train: path.join(data, 'instances_train.json'), val: path.join(data, 'instances_val.json'), minSide: 64, maxSide: 64, batchSize: 4 },
    model: { depth: 18, featureSize: 16, freezeBn: false },
    optimizer: { type: 'adamw', lr: 0.001 },
    epochs: 1,
    device: 'cpu',
    out: run1,
    progress: 'lines',
  };
  fs.writeFileSync(path.join(dir, 'cfg.json'), JSON.stringify(config));
  const trained = run('train', '--config', path.join(dir, 'cfg.json'));
  t.is(trained.status, 0, trained.stderr);
  t.regex(trained.stderr, /epoch 1\/1: loss/);
  t.regex(trained.stderr, buildInfo().jpegDecoder ? /data: JPEGs decoded by onestage's decoder \(libjpeg-turbo [\d.]+\), other formats by sharp; \d+ pictures at once, \d+ decode workers, 2 batches ahead/ : /data: JPEGs decoded by sharp/);
  t.regex(trained.stdout, /AP50 /);
  for (const f of ['model.safetensors', 'best.safetensors', 'config.json', 'eval.json', 'detections.json', 'metrics.jsonl', 'epochs.jsonl', 'loss.svg', 'loss.png', 'val.svg', 'val.png', 'latest.json'])
    t.true(fs.existsSync(path.join(run1, f)), f);
  // flags override the file; --resume continues to the new epoch count
  const resumed = run('train', '--config', path.join(dir, 'cfg.json'), '--epochs', '2', '--resume', '--decoder', 'sharp');
  t.is(resumed.status, 0, resumed.stderr);
  t.regex(resumed.stderr, /data: JPEGs decoded by sharp, other formats by sharp; \d+ pictures at once/);
  t.regex(resumed.stderr, /epoch 2\/2: loss/);
  t.notRegex(resumed.stderr, /epoch 1\/2: loss/);
  t.is(fs.readFileSync(path.join(run1, 'epochs.jsonl'), 'utf8').trim().split('\n').length, 2);

  const evalOut = path.join(dir, 'eval');
  const ev = run('eval', '--weights', path.join(run1, 'model.safetensors'), '--coco', path.join(data, 'instances_val.json'), '--out', evalOut, '--voc', '--device', 'cpu');
  t.is(ev.status, 0, ev.stderr);
  t.regex(ev.stdout, /AP50 +\d\.\d{4}/);
  t.regex(ev.stdout, /mAP \(VOC\)/);
  const written = JSON.parse(fs.readFileSync(path.join(evalOut, 'eval.json'), 'utf8'));
  t.is(written.stats.length, 12);
  t.true(Array.isArray(JSON.parse(fs.readFileSync(path.join(evalOut, 'detections.json'), 'utf8'))));

  const images = JSON.parse(fs.readFileSync(path.join(data, 'instances_val.json'), 'utf8')).images.slice(0, 2).map((im: { file_name: string }) => path.join(data, im.file_name));
  // a 64×40 picture whose EXIF says "rotate 90° to view": detected and drawn in its stored pixels, as the
  // loader reads it (the boxes are in those pixels' coordinates)
  const oriented = path.join(dir, 'oriented.jpg');
  await sharp(images[0]).resize(64, 40, { fit: 'fill' }).withMetadata({ orientation: 6 }).jpeg().toFile(oriented);
  const detOut = path.join(dir, 'drawn');
  const det = run('detect', '--weights', path.join(run1, 'model.safetensors'), '--out', detOut, '--score-threshold', '0.01', '--device', 'cpu', ...images, oriented);
  t.is(det.status, 0, det.stderr);
  const listed = JSON.parse(fs.readFileSync(path.join(detOut, 'detections.json'), 'utf8'));
  t.is(listed.length, 3);
  for (const im of listed) {
    t.true(fs.existsSync(im.output));
    t.is(im.width, 64);
    for (const d of im.detections) t.true(['circle', 'square'].includes(d.class) && d.score >= 0.01);
  }
  t.is((await sharp(listed[0].output).metadata()).width, 64);
  t.is(listed[2].height, 40);
  const drawn = await sharp(listed[2].output).metadata();
  t.deepEqual([drawn.width, drawn.height], [64, 40]);
});

test('cli: a bad configuration is rejected with every bad field named', (t) => {
  const dir = tempDir();
  const cfg = path.join(dir, 'bad.json');
  fs.writeFileSync(cfg, JSON.stringify({ data: { train: 'x.json', batchSize: 0 }, model: { dept: 18 }, optimizer: { lr: -1, type: 'rmsprop' }, epochs: 'ten' }));
  const r = run('train', '--config', cfg);
  t.is(r.status, 1);
  t.regex(r.stderr, /config\.data\.batchSize must be >= 1 \(received 0\)/);
  t.regex(r.stderr, /config\.model has an unknown field 'dept'/);
  t.regex(r.stderr, /config\.optimizer\.lr must be > 0 \(received -1\)/);
  t.regex(r.stderr, /config\.optimizer\.type must be one of "sgd", "adamw" \(received "rmsprop"\)/);
  t.regex(r.stderr, /config\.epochs must be integer \(received "ten"\)/);
  fs.writeFileSync(cfg, '{ "data": ');
  t.regex(run('train', '--config', cfg).stderr, /bad\.json: cannot read the configuration/);
  const csv = run('train', '--csv-train', 'a.csv', '--print-config');
  t.is(csv.status, 1);
  t.regex(csv.stderr, /options\.data\.classes is required with format 'csv'/);
  const printed = run('train', '--coco-train', 'a.json', '--depth', '18', '--print-config');
  t.is(printed.status, 0, printed.stderr);
  const resolved = JSON.parse(printed.stdout);
  t.is(resolved.model.depth, 18);
  t.is(resolved.data.minSide, 608, 'defaults are filled in');
  t.is(resolved.cudaGraph, 'auto', 'CUDA graphs where they can run, by default');
  t.like(resolved.data, { decoder: 'auto', decodeWorkers: 'auto', decodeConcurrency: 'auto', prefetch: 2 }, 'the loaders\' defaults');
  t.is(JSON.parse(run('train', '--coco-train', 'a.json', '--decoder', 'sharp', '--print-config').stdout).data.decoder, 'sharp');
  fs.writeFileSync(cfg, JSON.stringify({ data: { train: 'x.json', decoder: 'pillow', decodeWorkers: -1, decodeConcurrency: 0, prefetch: 65 } }));
  const loaderFields = run('train', '--config', cfg).stderr;
  t.regex(loaderFields, /config\.data\.decoder must be one of "auto", "sharp" \(received "pillow"\)/);
  for (const field of ['decodeWorkers', 'decodeConcurrency', 'prefetch']) t.regex(loaderFields, new RegExp(`config\\.data\\.${field}`), field);
  for (const [mode, value] of [['on', true], ['off', false], ['auto', 'auto']] as const)
    t.is(JSON.parse(run('train', '--coco-train', 'a.json', '--cuda-graph', mode, '--print-config').stdout).cudaGraph, value, `--cuda-graph ${mode}`);
  t.regex(run('train', '--coco-train', 'a.json', '--cuda-graph', 'always', '--print-config').stderr, /--cuda-graph.*'always'/);
  fs.writeFileSync(cfg, JSON.stringify({ data: { train: 'x.json' }, cudaGraph: 'yes' }));
  t.regex(run('train', '--config', cfg).stderr, /config\.cudaGraph/);
});

test('cli: train --head nanodet-plus trains a NanoDet-Plus; eval and detect rebuild it from its weights; RetinaNet loss options are refused for it', (t) => {
  const dir = tempDir();
  const data = path.join(dir, 'data');
  t.is(run('make-shapes', '--out', data, '--train', '8', '--val', '4', '--size', '64', '--classes', '2', '--seed', '4').status, 0);
  const out = path.join(dir, 'nd');
  const trained = run('train', '--head', 'nanodet-plus', '--coco-train', path.join(data, 'instances_train.json'), '--coco-val', path.join(data, 'instances_val.json'),
    '--depth', '18', '--feature-size', '16', '--min-side', '64', '--max-side', '64', '--batch-size', '4', '--epochs', '1', '--device', 'cpu', '--out', out, '--optimizer', 'adamw', '--lr', '0.001');
  t.is(trained.status, 0, trained.stderr);
  t.regex(trained.stderr, /training NanoDet-Plus ResNet-18/);
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  t.is(config.model.featureSize, 16);
  t.false(config.model.freezeBn, 'NanoDet-Plus trains its BatchNorm by default');
  const ev = run('eval', '--weights', path.join(out, 'model.safetensors'), '--coco', path.join(data, 'instances_val.json'), '--device', 'cpu', '--json');
  t.is(ev.status, 0, ev.stderr);
  t.is(JSON.parse(ev.stdout).stats.length, 12);
  const image = path.join(data, JSON.parse(fs.readFileSync(path.join(data, 'instances_val.json'), 'utf8')).images[0].file_name);
  const det = run('detect', '--weights', path.join(out, 'model.safetensors'), '--out', path.join(dir, 'drawn'), '--score-threshold', '0.01', '--device', 'cpu', image);
  t.is(det.status, 0, det.stderr);
  const cfg = path.join(dir, 'nd.json');
  fs.writeFileSync(cfg, JSON.stringify({ data: { train: 'x.json' }, model: { head: 'nanodet-plus', anchors: { sizes: [8, 16, 32, 64, 128] } }, loss: { classification: 'ghmc', detachEpoch: 3 } }));
  const bad = run('train', '--config', cfg);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /config\.loss\.classification is a RetinaNet loss option; config\.model\.head is 'nanodet-plus'/);
  t.regex(bad.stderr, /config\.model\.anchors and boxCoder are RetinaNet options/);
  t.regex(run('train', '--head', 'nanodet-plus', '--coco-train', 'a.json', '--loss', 'ghm').stderr, /--loss chooses a RetinaNet loss/);
});

test('cli: --loss sets the whole recipe (loss, the model\'s box coder, clipping) and keeps the contrastive term', (t) => {
  const show = (...args: string[]) => {
    const r = run('train', '--coco-train', 'a.json', '--print-config', ...args);
    t.is(r.status, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  const ghm = show('--loss', 'ghm', '--contrastive', '0.1');
  t.is(ghm.loss.classification, 'ghmc');
  t.is(ghm.loss.regression, 'ghmr');
  t.deepEqual(ghm.loss.ghmc, { bins: 30, momentum: 0.75, lossWeight: 1 });
  t.is(ghm.loss.regWeight, 10);
  t.true(ghm.loss.ghmPerLevel);
  t.deepEqual(ghm.model.boxCoder.std, [1, 1, 1, 1]);
  t.deepEqual(ghm.loss.focal.assigner, { lowQualityMatches: true, minPositiveIou: 0 });
  t.is(ghm.optimizer.clipGradNorm, 35);
  t.is(ghm.loss.contrastive.weight, 0.1);
  const focal = show('--loss', 'focal');
  t.deepEqual(focal.model.boxCoder.std, [0.1, 0.1, 0.2, 0.2]);
  t.is(focal.optimizer.clipGradNorm, 0.1);
  const ghmc = show('--loss', 'ghmc');
  t.is(ghmc.loss.regression, 'smoothL1');
  t.regex(run('train', '--coco-train', 'a.json', '--loss', 'ghmr').stderr, /Allowed choices are focal, ghm, ghmc/);
});

test('cli: an unknown command or a bad option fails with a message and exit code 1', (t) => {
  const r = run('nonsense');
  t.is(r.status, 1);
  t.regex(r.stderr, /unknown command 'nonsense'/);
  const bad = run('detect', '--weights', 'w.safetensors', '--out', 'o', '--score-threshold', 'high', 'a.jpg');
  t.is(bad.status, 1);
  t.regex(bad.stderr, /--score-threshold expects a number, received 'high'/);
  const missing = run('eval', '--weights', 'missing.safetensors', '--coco', 'missing.json');
  t.is(missing.status, 1);
  t.regex(missing.stderr, /onestage: missing\.json: cannot read the annotation file/);
  if (!buildInfo().cudaAvailable) {
    const c = run('demo', '--device', 'cuda');
    t.is(c.status, 1);
    t.regex(c.stderr, /onestage: device 'cuda' was asked for but CUDA is not available/);
  }
});
