/**
 * Geometry of the input pipeline: pytorch-retinanet's resize rule, exact box transforms and padding.
 */

export interface TransformOptions {
  /** Short side after resizing; default 608. */
  minSide?: number;
  /** Long side at most this; default 1024. */
  maxSide?: number;
  /** Batches are padded to a multiple of this; default 32 (no extra 32 px when already divisible). */
  padMultiple?: number;
  /** Probability of a horizontal flip; default 0.5 when augmenting, else 0. */
  flip?: number;
  /** Random scale factor range multiplied into the resize scale, e.g. [0.8, 1.2]; default none. */
  scaleJitter?: [number, number];
  /**
   * Random crop of the resized image: with probability `p`, a window whose sides are U[minSize, 1]
   * of the image's, at a random place; boxes are shifted and clipped, and a box keeping less than
   * `minVisible` (default 0.25) of its area, or less than 1 px a side, is dropped. Default none.
   */
  crop?: { p: number; minSize: number; minVisible?: number };
  /** Photometric jitter: brightness and saturation ± fraction, hue ± degrees (rounded to whole degrees, as sharp takes them); default none. */
  photometric?: { brightness?: number; saturation?: number; hue?: number };
  /** ImageNet normalisation by default. */
  mean?: [number, number, number];
  std?: [number, number, number];
}

export const IMAGENET_MEAN: [number, number, number] = [0.485, 0.456, 0.406];
export const IMAGENET_STD: [number, number, number] = [0.229, 0.224, 0.225];

/** pytorch-retinanet's Resizer: short side to minSide unless the long side would exceed maxSide. */
export function resizeScale(width: number, height: number, minSide = 608, maxSide = 1024): number {
  let scale = minSide / Math.min(width, height);
  if (Math.max(width, height) * scale > maxSide) scale = maxSide / Math.max(width, height);
  return scale;
}

/** Output size for a scale: each side rounded, at least 1 pixel. */
export function scaledSize(width: number, height: number, scale: number): { width: number; height: number } {
  return { width: Math.max(1, Math.round(width * scale)), height: Math.max(1, Math.round(height * scale)) };
}

/**
 * Boxes `[n × 4]` from the original image to the resized (and flipped) one: x by newWidth/width,
 * y by newHeight/height — the exact factors of the resize — then mirrored about the new width.
 */
export function transformBoxes(boxes: Float32Array, width: number, height: number, newWidth: number, newHeight: number, flip: boolean): Float32Array {
  const sx = newWidth / width;
  const sy = newHeight / height;
  const out = new Float32Array(boxes.length);
  for (let i = 0; i < boxes.length; i += 4) {
    const x1 = boxes[i] * sx, y1 = boxes[i + 1] * sy, x2 = boxes[i + 2] * sx, y2 = boxes[i + 3] * sy;
    out[i] = flip ? newWidth - x2 : x1;
    out[i + 1] = y1;
    out[i + 2] = flip ? newWidth - x1 : x2;
    out[i + 3] = y2;
  }
  return out;
}

/** Batch size: the largest height and width rounded up to a multiple. */
export function paddedSize(sizes: Array<{ width: number; height: number }>, multiple = 32): { width: number; height: number } {
  const up = (v: number) => Math.ceil(v / multiple) * multiple;
  return { width: up(Math.max(...sizes.map((s) => s.width))), height: up(Math.max(...sizes.map((s) => s.height))) };
}

/**
 * Boxes `[n × 4]` (with labels) into a crop window `x, y, width, height`: shifted, clipped, and
 * dropped when less than `minVisible` of their area (or under 1 px a side) remains.
 */
export function cropBoxes(boxes: Float32Array, labels: Int32Array, window: { x: number; y: number; width: number; height: number }, minVisible = 0.25): { boxes: Float32Array; labels: Int32Array } {
  const outB: number[] = [];
  const outL: number[] = [];
  for (let i = 0; i < labels.length; i++) {
    const [x1, y1, x2, y2] = boxes.subarray(4 * i, 4 * i + 4);
    const c = [Math.max(x1 - window.x, 0), Math.max(y1 - window.y, 0), Math.min(x2 - window.x, window.width), Math.min(y2 - window.y, window.height)];
    const w = c[2] - c[0];
    const h = c[3] - c[1];
    const area = (x2 - x1) * (y2 - y1);
    if (w < 1 || h < 1 || (area > 0 && (w * h) / area < minVisible)) continue;
    outB.push(...c);
    outL.push(labels[i]);
  }
  return { boxes: Float32Array.from(outB), labels: Int32Array.from(outL) };
}
