/**
 * Inference latency at batch 1 (forward + post-processing, `detect`): NanoDet-Plus-m (ShuffleNetV2 1.0x +
 * Ghost-PAN) next to NanoDet-Plus on ResNet-18 + FPN and RetinaNet ResNet-18, 80 classes, random weights.
 *
 *   npx ts-node --transpile-only bench/nanodet_latency.ts [--size 416] [--iterations 10] [--device cpu]
 */
import { buildInfo, Device, Model, synchronize, Tensor } from '../lib';

async function main(): Promise<void> {
  const { Command } = await import('commander');
  const o = new Command().option('--size <px>', 'square input side', '416').option('--iterations <n>', 'timed runs', '10').option('--device <d>', "'auto', 'cpu' or 'cuda'", 'auto').parse().opts<{ size: string; iterations: string; device: string }>();
  const device: Device = o.device === 'auto' ? (buildInfo().cudaAvailable ? 'cuda' : 'cpu') : (o.device as Device);
  const size = Number(o.size);
  const models: Array<[string, () => Model]> = [
    ['NanoDet-Plus-m (ShuffleNetV2 1.0x, Ghost-PAN 96)', () => Model.nanodetPlus({ preset: 'm-416', numClasses: 80, device, seed: 0 })],
    ['NanoDet-Plus-m-1.5x (ShuffleNetV2 1.5x, Ghost-PAN 128)', () => Model.nanodetPlus({ preset: 'm-1.5x-416', numClasses: 80, device, seed: 0 })],
    ['NanoDet-Plus ResNet-18 + FPN 96', () => Model.nanodetPlus({ depth: 18, numClasses: 80, device, seed: 0 })],
    ['RetinaNet ResNet-18 + FPN 256', () => Model.retinanet({ depth: 18, numClasses: 80, device, seed: 0 })],
  ];
  const rows: string[] = [];
  const x = Tensor.from(Float32Array.from({ length: 3 * size * size }, (_, i) => Math.sin(i * 0.37)), [1, 3, size, size], { device });
  for (const [name, make] of models) {
    const model = make().eval();
    const sd = model.stateDict();
    // the inference network: NanoDet-Plus without its AGM (aux_fpn, aux_head)
    const params = Object.entries(sd).filter(([k]) => !/^aux_|running_|num_batches/.test(k)).reduce((a, [, v]) => a + v.shape.reduce((p, q) => p * q, 1), 0);
    for (const v of Object.values(sd)) v.dispose();
    await model.detect(x);
    synchronize();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < Number(o.iterations); i++) await model.detect(x);
    synchronize();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6 / Number(o.iterations);
    rows.push(`| ${name} | ${(params / 1e6).toFixed(2)} M | ${ms.toFixed(1)} |`);
    console.error(rows[rows.length - 1]);
    model.dispose();
  }
  x.dispose();
  console.log([`${size}×${size}, batch 1, ${device}`, '', '| model | parameters (inference) | ms per image |', '| --- | --- | --- |', ...rows].join('\n'));
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
