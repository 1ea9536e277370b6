/** The synthetic RetinaNet training batch of the GPU benchmarks: B images of S×S in [−1, 1) and 8 boxes each (32 px to S/3, 80 classes), from a seeded generator. */
import type { Batch, Device } from '../lib';
import { Tensor } from '../lib';

export const SYNTHETIC_BOXES = 8;

export function syntheticArrays(batch: number, size: number, seed: number): { images: Float32Array; annotations: Float32Array } {
  let x = seed * 9301 + 49297;
  const rand = () => ((x = (x * 9301 + 49297) % 233280) / 233280);
  const images = Float32Array.from({ length: batch * 3 * size * size }, () => rand() * 2 - 1);
  const annotations = new Float32Array(batch * SYNTHETIC_BOXES * 5);
  for (let i = 0; i < batch * SYNTHETIC_BOXES; i++) {
    const w = 32 + rand() * (size / 3);
    const h = 32 + rand() * (size / 3);
    const x1 = rand() * (size - w);
    const y1 = rand() * (size - h);
    annotations.set([x1, y1, x1 + w, y1 + h, Math.floor(rand() * 80)], 5 * i);
  }
  return { images, annotations };
}

/** A loader-shaped Batch of those arrays on `device`. */
export function syntheticBatch(data: { images: Float32Array; annotations: Float32Array }, batch: number, size: number, device: Device): Batch {
  const images = Tensor.from(data.images, [batch, 3, size, size], { device });
  const annotations = Tensor.from(data.annotations, [batch, SYNTHETIC_BOXES, 5], { device });
  const ids = Array.from({ length: batch }, (_, i) => i);
  return { images, annotations, scales: ids.map(() => 1), sizes: ids.map(() => [size, size]), inputSizes: ids.map(() => [size, size]), ids, files: ids.map(() => ''), flipped: ids.map(() => false), crops: ids.map(() => null) };
}
