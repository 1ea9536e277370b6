/**
 * The `onestage` command line. Each command is a thin layer over the public API.
 */
import { Command, InvalidArgumentError } from 'commander';
import { makeShapes } from './data/shapes';
import { buildInfo } from './runtime';
import { Tensor, liveTensors } from './tensor';

export function makeProgram(): Command {
  const program = new Command();
  program
    .name('onestage')
    .description('Train, evaluate and run one-stage object detectors (RetinaNet, NanoDet-Plus) on LibTorch')
    .showHelpAfterError();

  program
    .command('info')
    .description('print the build (onestage and LibTorch versions, CUDA) as JSON')
    .action(() => {
      console.log(JSON.stringify(buildInfo(), null, 2));
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
    .command('demo')
    .description('the main job on the embedded default data (for now: build info and a tiny forward pass)')
    .option('--device <device>', "'cpu' or 'cuda'", 'cpu')
    .action(async (opts: { device: 'cpu' | 'cuda' }) => {
      const info = buildInfo();
      console.log(`onestage ${info.version} on LibTorch ${info.torchVersion} (CUDA ${info.cudaAvailable ? 'available' : 'not available'})`);
      // a two-layer perceptron forward on fixed inputs: x·W1 → ReLU → ·W2 → softmax
      const x = Tensor.from(Float32Array.from({ length: 4 * 8 }, (_, i) => Math.sin(i)), [4, 8], { device: opts.device });
      const w1 = Tensor.from(Float32Array.from({ length: 8 * 16 }, (_, i) => Math.cos(i) / 4), [8, 16], { device: opts.device });
      const w2 = Tensor.from(Float32Array.from({ length: 16 * 3 }, (_, i) => Math.sin(2 * i) / 4), [16, 3], { device: opts.device });
      const xw1 = await x.matmulAsync(w1);
      const h = xw1.relu();
      const logits = h.matmul(w2);
      const p = logits.softmax(-1);
      const probs = p.toArray() as Float32Array;
      for (let r = 0; r < 4; r++) {
        console.log(`sample ${r}: class probabilities ${Array.from(probs.subarray(3 * r, 3 * r + 3), (v) => v.toFixed(4)).join(' ')}`);
      }
      for (const t of [x, w1, w2, xw1, h, logits, p]) t.dispose();
      console.log(`native tensors alive after dispose: ${liveTensors()}`);
    });

  return program;
}

function intOption(name: string): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} expects a non-negative integer, received '${value}'`);
    return n;
  };
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
