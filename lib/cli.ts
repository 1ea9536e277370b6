/**
 * The `onestage` command line. Each command is a thin layer over the public API and the jobs in
 * lib/jobs; errors print as one line naming what was wrong and set a non-zero exit code.
 */
// first: sizes libuv's thread pool before anything starts it (lib/threadpool.ts)
import './threadpool';
import { Command, InvalidArgumentError, Option } from 'commander';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseTrainConfig } from './config';
import { LOSS_RECIPES, lossRecipe, LossRecipeName } from './losses';
import { makeShapes } from './data/shapes';
import { formatEvaluation } from './eval/evaluate';
import { DatasetSpec } from './jobs/common';
import { demoJob } from './jobs/demo';
import { detectJob } from './jobs/detect';
import { evalJob } from './jobs/evaluate';
import { launchWorkers, withoutNproc } from './jobs/launch';
import { trainJob } from './jobs/train';
import { Model } from './model';
import { buildInfo, cpuMemory, getNumThreads, synchronize } from './runtime';
import { Tensor } from './tensor';

function intOption(name: string, min = 0): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} expects an integer ≥ ${min}, received '${value}'`);
    return n;
  };
}

function numberOption(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`${name} expects a number, received '${value}'`);
    return n;
  };
}

const deviceOption = () => new Option('--device <device>', 'where to run').choices(['auto', 'cpu', 'cuda']).default('auto');

interface DatasetFlags {
  coco?: string;
  csv?: string;
  classes?: string;
  images?: string;
}

function datasetFrom(o: DatasetFlags): DatasetSpec {
  if (o.coco && o.csv) throw new Error('give either --coco or --csv, not both');
  if (o.coco) return { format: 'coco', file: o.coco, images: o.images };
  if (o.csv) {
    if (!o.classes) throw new Error('--csv needs --classes (the classes file)');
    return { format: 'csv', file: o.csv, classes: o.classes };
  }
  throw new Error('give the dataset: --coco instances.json or --csv annotations.csv --classes classes.csv');
}

/** Sets `value` at a dotted `key` of `target` (creating objects on the way) when value is defined. */
function setPath(target: Record<string, unknown>, key: string, value: unknown): void {
  if (value === undefined) return;
  const parts = key.split('.');
  let o = target;
  for (const p of parts.slice(0, -1)) o = (o[p] ??= {}) as Record<string, unknown>;
  o[parts[parts.length - 1]] = value;
}

/** `train` flags that set one configuration field each. */
const TRAIN_FLAG_FIELDS: Array<[string, string]> = [
  ['classes', 'data.classes'], ['batchSize', 'data.batchSize'], ['minSide', 'data.minSide'], ['maxSide', 'data.maxSide'], ['decoder', 'data.decoder'],
  ['head', 'model.head'], ['depth', 'model.depth'], ['featureSize', 'model.featureSize'], ['weights', 'model.weights'], ['backbone', 'model.backbone'],
  ['preset', 'model.nanodet.preset'], ['neck', 'model.nanodet.neck'],
  ['variant', 'model.variant'], ['finetune', 'model.finetune'], ['trainableBackboneLayers', 'model.trainableBackboneLayers'], ['backboneLrMultiplier', 'optimizer.backboneLrMultiplier'],
  ['optimizer', 'optimizer.type'], ['lr', 'optimizer.lr'], ['contrastive', 'loss.contrastive.weight'],
  ['epochs', 'epochs'], ['device', 'device'], ['amp', 'amp'], ['cudaGraph', 'cudaGraph'], ['ema', 'ema'], ['seed', 'seed'], ['out', 'out'],
  ['distBackend', 'distributed.backend'], ['distTimeout', 'distributed.timeoutSeconds'],
];

export function makeProgram(): Command {
  const program = new Command();
  program
    .name('onestage')
    .description('Train, evaluate and run one-stage object detectors (RetinaNet with Focal / GHM / contrastive losses, NanoDet-Plus) on LibTorch')
    .showHelpAfterError();

  program
    .command('info')
    .description('print the build (onestage and LibTorch versions, CUDA), LibTorch\'s CPU threads and the CPU caching allocator\'s state as JSON')
    .action(() => {
      const { enabled, cacheLimit } = cpuMemory();
      console.log(JSON.stringify({ ...buildInfo(), cpuThreads: getNumThreads(), cpuCache: { enabled, limitBytes: cacheLimit } }, null, 2));
    });

  program
    .command('make-shapes')
    .description('write the synthetic shapes dataset (COCO format: JPEG images + instances_{train,val}.json)')
    .requiredOption('--out <dir>', 'output folder')
    .option('--train <n>', 'training images', intOption('--train'), 200)
    .option('--val <n>', 'validation images', intOption('--val'), 50)
    .option('--size <px>', 'image side', intOption('--size'), 256)
    .option('--classes <k>', 'number of classes (1–10)', intOption('--classes'), 3)
    .option('--seed <n>', 'random seed', intOption('--seed'), 0)
    .action(async (o: { out: string; train: number; val: number; size: number; classes: number; seed: number }) => {
      const started = Date.now();
      const r = await makeShapes(o);
      console.log(`wrote ${r.images} images with ${r.objects} objects in ${((Date.now() - started) / 1000).toFixed(1)} s: ${r.train}, ${r.val}`);
    });

  program
    .command('train')
    .description('train a RetinaNet from a JSON configuration (validated against its schema) and/or flags; flags override the file')
    .option('--config <file>', 'configuration JSON (see README: Training configuration)')
    .option('--coco-train <file>', 'COCO instances JSON of the training set')
    .option('--coco-val <file>', 'COCO instances JSON of the validation set')
    .option('--csv-train <file>', 'CSV annotations of the training set')
    .option('--csv-val <file>', 'CSV annotations of the validation set')
    .option('--classes <file>', 'CSV classes file')
    .addOption(new Option('--head <kind>', "detector: 'retinanet' (default) or 'nanodet-plus'").choices(['retinanet', 'nanodet-plus']))
    .option('--depth <n>', 'ResNet depth (18, 34, 50, 101, 152)', intOption('--depth', 1))
    .option('--feature-size <n>', 'FPN and subnet channels', intOption('--feature-size', 1))
    .option('--weights <file>', 'start from these weights')
    .option('--backbone <file>', 'ResNet backbone weights (torchvision state_dict)')
    .option('--preset <name>', "NanoDet-Plus as released: m-320 | m-416 | m-1.5x-320 | m-1.5x-416 (ShuffleNetV2 + Ghost-PAN; implies --head nanodet-plus)")
    .option('--neck <kind>', "NanoDet-Plus neck: fpn | ghost-pan")
    .option('--variant <name>', "RetinaNet variant: pytorch-retinanet | torchvision | torchvision-v2 (a torchvision --weights file sets it)")
    .option('--finetune', '--weights trained for other classes: keep all but the classification output layer')
    .option('--trainable-backbone-layers <n>', "torchvision's trainable_backbone_layers (0-5)", intOption('--trainable-backbone-layers', 0))
    .option('--backbone-lr-multiplier <x>', 'the backbone trains at lr × this', numberOption('--backbone-lr-multiplier'))
    .addOption(new Option('--loss <recipe>', "loss recipe (sets the loss, box coder and clipping): 'focal' (pytorch-retinanet: Focal + smooth L1), 'ghm' (mmdetection's GHM-C + GHM-R) or 'ghmc' (GHM-C + smooth L1)").choices([...LOSS_RECIPES]))
    .option('--contrastive <weight>', 'add the contrastive loss between two views with this weight', numberOption('--contrastive'))
    .addOption(new Option('--optimizer <type>', 'optimizer').choices(['sgd', 'adamw']))
    .option('--lr <rate>', 'base learning rate', numberOption('--lr'))
    .option('--epochs <n>', 'epochs', intOption('--epochs', 1))
    .option('--batch-size <n>', 'images per batch', intOption('--batch-size', 1))
    .option('--min-side <px>', 'resize: shorter side', intOption('--min-side', 1))
    .option('--max-side <px>', 'resize: longest side at most', intOption('--max-side', 1))
    .addOption(new Option('--decoder <name>', "JPEG decoder: 'auto' (onestage's libjpeg-turbo decoder, resizing as Pillow's BILINEAR; default) or 'sharp'").choices(['auto', 'sharp']))
    .addOption(new Option('--device <device>', 'where to train').choices(['auto', 'cpu', 'cuda']))
    .option('--amp', 'bf16 autocast (CUDA)')
    .addOption(new Option('--cuda-graph <mode>', "replay the training step as a CUDA graph: 'auto' (default: on CUDA in one process; a failed capture goes on eagerly), 'on' (also data-parallel steps under --nproc/NCCL; a failure is an error), 'off'")
      .choices(['auto', 'on', 'off'])
      .argParser((v: string) => {
        if (!['auto', 'on', 'off'].includes(v)) throw new InvalidArgumentError(`Expected 'auto', 'on' or 'off' but received '${v}'`);
        return v === 'auto' ? 'auto' : v === 'on';
      }))
    .option('--ema', 'exponential moving average of the weights')
    .option('--seed <n>', 'seed of initialisation and data order', intOption('--seed'))
    .option('--out <dir>', 'run folder')
    .option('--resume', 'continue the run in --out from its latest checkpoint')
    .option('--nproc <n>', 'data-parallel: start this many worker processes here (one per GPU on CUDA), c10d Gloo/NCCL', intOption('--nproc', 1))
    .addOption(new Option('--dist-backend <backend>', "data-parallel backend: 'auto' (NCCL on CUDA, Gloo on CPU), 'gloo' or 'nccl'").choices(['auto', 'gloo', 'nccl']))
    .option('--dist-timeout <seconds>', 'data-parallel: a rank waiting longer than this for the others stops with an error', numberOption('--dist-timeout'))
    .option('--print-config', 'print the resolved configuration and exit')
    .action(async (o: Record<string, string | number | boolean | undefined>) => {
      let base: Record<string, unknown> = {};
      if (o.config) {
        try {
          base = JSON.parse(fs.readFileSync(String(o.config), 'utf8')) as Record<string, unknown>;
        } catch (err) {
          throw new Error(`${String(o.config)}: cannot read the configuration (${(err as Error).message})`);
        }
      }
      if (o.cocoTrain && o.csvTrain) throw new Error('give either --coco-train or --csv-train, not both');
      if (o.cocoTrain) setPath(base, 'data.format', 'coco');
      if (o.csvTrain) setPath(base, 'data.format', 'csv');
      setPath(base, 'data.train', o.cocoTrain ?? o.csvTrain);
      setPath(base, 'data.val', o.cocoVal ?? o.csvVal);
      for (const [flag, field] of TRAIN_FLAG_FIELDS) setPath(base, field, o[flag]);
      if (o.preset !== undefined || o.neck !== undefined) {
        if (o.head === 'retinanet') throw new Error('--preset and --neck are NanoDet-Plus options; --head is retinanet');
        setPath(base, 'model.head', 'nanodet-plus');
      }
      if (o.loss !== undefined) {
        if (o.head === 'nanodet-plus' || (base.model as Record<string, unknown> | undefined)?.head === 'nanodet-plus') throw new Error('--loss chooses a RetinaNet loss; NanoDet-Plus trains with QFL, GIoU and DFL');
        // the whole recipe: loss, the box coder its targets and the decoding use, and its gradient clipping
        const recipe = lossRecipe(o.loss as LossRecipeName);
        const contrastive = (base.loss as Record<string, unknown> | undefined)?.contrastive;
        base.loss = { ...recipe.loss, ...(contrastive !== undefined ? { contrastive } : {}) };
        setPath(base, 'model.boxCoder', recipe.boxCoder);
        setPath(base, 'optimizer.clipGradNorm', recipe.clipGradNorm);
      }
      const config = parseTrainConfig(base, o.config ? 'config' : 'options');
      if (o.printConfig) {
        console.log(JSON.stringify(config, null, 2));
        return;
      }
      if (o.nproc !== undefined && Number(o.nproc) > 1) {
        if (process.env.WORLD_SIZE) throw new Error('--nproc starts the workers itself: do not combine it with a launcher (WORLD_SIZE is set)');
        if (config.device === 'cuda' || (config.device === 'auto' && buildInfo().cudaAvailable)) {
          const gpus = buildInfo().deviceCount;
          if (Number(o.nproc) > gpus) throw new Error(`--nproc ${o.nproc} on CUDA needs one GPU per process; this machine has ${gpus}`);
        }
        const r = await launchWorkers(Number(o.nproc), { args: withoutNproc(process.argv.slice(2)) });
        if (r.exitCode !== 0) throw new Error(`data-parallel training failed: rank ${r.failed!.rank} ${r.failed!.signal ? `was killed by ${r.failed!.signal}` : `exited with code ${r.failed!.code}`}`);
        return;
      }
      const r = await trainJob(config, { resume: Boolean(o.resume) });
      if (r.rank !== 0) return; // rank 0 reports
      if (r.evaluation) console.log(formatEvaluation(r.evaluation));
      console.log(`weights: ${r.weights} (${r.seconds.toFixed(0)} s)`);
    });

  program
    .command('eval')
    .description('evaluate saved weights on a dataset: prints the COCO table, writes eval.json and detections.json (COCO results)')
    .requiredOption('--weights <file>', 'weights saved by onestage (.safetensors)')
    .option('--coco <file>', 'COCO instances JSON')
    .option('--images <dir>', 'COCO image folder (default: the JSON file\'s folder)')
    .option('--csv <file>', 'CSV annotations')
    .option('--classes <file>', 'CSV classes file')
    .option('--out <dir>', 'where to write eval.json and detections.json')
    .option('--voc', 'also VOC AP@0.5 (all-point)')
    .option('--batch-size <n>', 'images per batch', intOption('--batch-size', 1), 4)
    .option('--min-side <px>', 'resize (default: as trained)', intOption('--min-side', 1))
    .option('--max-side <px>', 'resize (default: as trained)', intOption('--max-side', 1))
    .option('--json', 'print the result as JSON instead of the table')
    .addOption(deviceOption())
    .action(async (o: DatasetFlags & { weights: string; out?: string; voc?: boolean; batchSize: number; minSide?: number; maxSide?: number; json?: boolean; device: 'auto' | 'cpu' | 'cuda' }) => {
      const r = await evalJob({ weights: o.weights, dataset: datasetFrom(o), out: o.out, voc: o.voc, batchSize: o.batchSize, minSide: o.minSide, maxSide: o.maxSide, device: o.device });
      if (o.json) console.log(JSON.stringify({ stats: r.stats, perClass: r.perClass, voc: r.voc }));
      else console.log(formatEvaluation(r) + `\n\n${r.images} images in ${r.seconds.toFixed(1)} s` + (o.out ? `; written to ${path.join(o.out, 'eval.json')}` : ''));
    });

  program
    .command('detect')
    .description('run saved weights on images: writes each image with boxes, classes and scores drawn, and detections.json')
    .requiredOption('--weights <file>', 'weights saved by onestage (.safetensors)')
    .requiredOption('--out <dir>', 'output folder')
    .argument('<images...>', 'image files')
    .option('--score-threshold <p>', 'minimum score', numberOption('--score-threshold'), 0.3)
    .option('--max-detections <n>', 'per image', intOption('--max-detections'), 100)
    .option('--min-side <px>', 'resize (default: as trained)', intOption('--min-side', 1))
    .option('--max-side <px>', 'resize (default: as trained)', intOption('--max-side', 1))
    .addOption(deviceOption())
    .action(async (images: string[], o: { weights: string; out: string; scoreThreshold: number; maxDetections: number; minSide?: number; maxSide?: number; device: 'auto' | 'cpu' | 'cuda' }) => {
      const r = await detectJob({ weights: o.weights, images, out: o.out, scoreThreshold: o.scoreThreshold, maxDetections: o.maxDetections, minSide: o.minSide, maxSide: o.maxSide, device: o.device });
      for (const im of r) console.log(`${im.output}: ${im.detections.length} detections${im.detections.length ? ` (${im.detections.slice(0, 3).map((d) => `${d.class} ${d.score.toFixed(2)}`).join(', ')}${im.detections.length > 3 ? ', …' : ''})` : ''}`);
      console.log(`detections: ${path.join(o.out, 'detections.json')}`);
    });

  program
    .command('export')
    .description('export saved weights as an ONNX model (network, anchors/priors and, by default, the post-processing inside)')
    .requiredOption('--weights <file>', 'weights saved by onestage (.safetensors)')
    .requiredOption('--onnx <file>', 'the .onnx file to write')
    .option('--opset <n>', 'ONNX opset (13 … 21)', intOption('--opset', 13), 17)
    .option('--raw', "the heads' outputs and anchors/priors instead of detections")
    .option('--fixed-batch <n>', 'a fixed batch size instead of a dynamic one', intOption('--fixed-batch', 1))
    .option('--fixed-size <HxW>', 'a fixed input height×width instead of dynamic ones')
    .option('--input-size <HxW>', 'the input size to record in the metadata (dynamic sizes)')
    .option('--no-normalize', 'the input is already normalised (default: RGB 0–255, normalised inside)')
    .option('--score-threshold <p>', 'detections: minimum score', numberOption('--score-threshold'))
    .option('--nms-threshold <iou>', 'detections: NMS IoU', numberOption('--nms-threshold'))
    .option('--topk <n>', 'detections: candidates per level (0: all above the threshold)', intOption('--topk', 0))
    .option('--max-detections <n>', 'detections: per image (0: all)', intOption('--max-detections', 0))
    .action(async (o: { weights: string; onnx: string; opset: number; raw?: boolean; fixedBatch?: number; fixedSize?: string; inputSize?: string; normalize: boolean; scoreThreshold?: number; nmsThreshold?: number; topk?: number; maxDetections?: number }) => {
      const size = (flag: string, v: string | undefined): [number, number] | undefined => {
        if (v === undefined) return undefined;
        const m = /^(\d+)x(\d+)$/.exec(v);
        if (!m) throw new RangeError(`${flag}: expected HEIGHTxWIDTH, e.g. 320x320, but received '${v}'`);
        return [Number(m[1]), Number(m[2])];
      };
      if (!fs.existsSync(o.weights)) throw new Error(`--weights: no file at ${o.weights}`);
      const model = await Model.fromWeights(o.weights);
      try {
        const fixed = size('--fixed-size', o.fixedSize);
        const r = await model.exportOnnx(o.onnx, {
          opset: o.opset,
          postprocess: o.raw ? 'raw' : 'detections',
          ...(o.fixedBatch !== undefined ? { dynamicBatch: false, batchSize: o.fixedBatch } : {}),
          ...(fixed ? { dynamicSize: false, inputSize: fixed } : { inputSize: size('--input-size', o.inputSize) }),
          normalize: o.normalize,
          ...(o.scoreThreshold !== undefined ? { scoreThreshold: o.scoreThreshold } : {}),
          ...(o.nmsThreshold !== undefined ? { nmsThreshold: o.nmsThreshold } : {}),
          ...(o.topk !== undefined ? { topkCandidates: o.topk } : {}),
          ...(o.maxDetections !== undefined ? { maxDetections: o.maxDetections } : {}),
        });
        console.log(`${r.file}: ${(r.bytes / 1e6).toFixed(1)} MB, opset ${r.opset}, input images [${r.inputs[0].dims.join(', ')}], outputs ${r.outputs.map((x) => `${x.name} [${x.dims.join(', ')}]`).join(', ')}`);
        console.log(`operators: ${Object.keys(r.operators).join(', ')}`);
      } finally {
        model.dispose();
      }
    });

  program
    .command('serve-demo')
    .description('serve the web page of examples/web (onnxruntime-web) with an exported model on http://127.0.0.1:PORT/')
    .requiredOption('--model <file>', 'an ONNX model exported with detections (onestage export)')
    .option('--port <n>', 'port', intOption('--port', 0), 8080)
    .action(async (o: { model: string; port: number }) => {
      const { serveDemo } = await import('./jobs/serve_demo');
      const s = await serveDemo({ model: o.model, port: o.port });
      console.log(`serving ${o.model} at ${s.url} (Ctrl-C to stop)`);
    });

  program
    .command('bench')
    .description('time RetinaNet inference (forward + post-processing) on random weights and inputs')
    .option('--depth <n>', 'ResNet depth', intOption('--depth', 1), 50)
    .option('--size <px>', 'square input side', intOption('--size', 32), 640)
    .option('--batch-size <n>', 'images per batch', intOption('--batch-size', 1), 1)
    .option('--iterations <n>', 'timed runs', intOption('--iterations', 1), 10)
    .addOption(deviceOption())
    .action(async (o: { depth: number; size: number; batchSize: number; iterations: number; device: 'auto' | 'cpu' | 'cuda' }) => {
      const device = o.device === 'auto' ? (buildInfo().cudaAvailable ? 'cuda' : 'cpu') : o.device;
      const model = Model.retinanet({ depth: o.depth as 50, numClasses: 80, device, seed: 0 }).eval();
      const x = Tensor.from(Float32Array.from({ length: o.batchSize * 3 * o.size * o.size }, (_, i) => Math.sin(i * 0.37)), [o.batchSize, 3, o.size, o.size], { device });
      try {
        await model.detect(x); // warm-up
        synchronize();
        const t0 = process.hrtime.bigint();
        for (let i = 0; i < o.iterations; i++) await model.detect(x);
        synchronize();
        const ms = Number(process.hrtime.bigint() - t0) / 1e6 / o.iterations;
        console.log(`RetinaNet ResNet-${o.depth} ${o.size}×${o.size} batch ${o.batchSize} on ${device}: ${ms.toFixed(1)} ms per batch, ${((1000 * o.batchSize) / ms).toFixed(1)} img/s`);
      } finally {
        x.dispose();
        model.dispose();
      }
    });

  program
    .command('demo')
    .description('the main job: generate the shapes dataset, train RetinaNet ResNet-18 with focal loss, evaluate, write plots and annotated pictures')
    .option('--out <dir>', 'output folder', path.join('runs', 'demo'))
    .option('--epochs <n>', 'epochs (default: chosen for the device)', intOption('--epochs', 1))
    .addOption(deviceOption())
    .action(async (o: { out: string; epochs?: number; device: 'auto' | 'cpu' | 'cuda' }) => {
      await demoJob({ out: o.out, epochs: o.epochs, device: o.device });
    });

  return program;
}

/** Runs the CLI; errors print as one line (no stack) and set exit code 1. */
export async function main(argv: string[] = process.argv): Promise<void> {
  try {
    await makeProgram().parseAsync(argv);
  } catch (err) {
    console.error(`onestage: ${(err as Error).message}`);
    process.exitCode = 1;
  }
}
