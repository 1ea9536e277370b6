/**
 * Image decoding and geometric augmentation with sharp (libvips): one pipeline per sample decodes,
 * resizes (kernel 'linear': a triangle filter widened by the shrink factor when downscaling, as PIL's
 * BILINEAR) and flips. Output: RGB uint8, height × width × 3, row-major. No EXIF rotation (as
 * pytorch-retinanet's skimage loader).
 */
import * as fs from 'node:fs';
import sharp from 'sharp';

export interface DecodedImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Error for a sample that cannot be used; `file` names it. */
export class BadSampleError extends Error {
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`${file}: ${reason}`);
    this.name = 'BadSampleError';
  }
}

export interface LoadImageOptions {
  /** Refuse images with more pixels than this (sharp's limitInputPixels); default 268 402 689 (0x3FFF²). */
  limitInputPixels?: number;
  /** Output size; omitted: the original size. */
  resize?: { width: number; height: number };
  /** Mirror left–right after resizing. */
  flip?: boolean;
  /** Window of the resized (and flipped) image to keep. */
  extract?: { left: number; top: number; width: number; height: number };
  /** Photometric jitter: brightness and saturation multipliers, hue rotation in degrees. */
  modulate?: { brightness: number; saturation: number; hue: number };
}

/** Width and height from the file header (no full decode). */
export async function imageSize(file: string, options: LoadImageOptions = {}): Promise<{ width: number; height: number }> {
  try {
    const m = await sharp(file, { limitInputPixels: options.limitInputPixels ?? 0x3fff * 0x3fff }).metadata();
    if (!m.width || !m.height) throw new Error('no image size in the header');
    return { width: m.width, height: m.height };
  } catch (err) {
    await checkReadable(file);
    throw new BadSampleError(file, `cannot read image: ${(err as Error).message}`);
  }
}

/**
 * After a failed read: a missing or unreadable file is reported as such (not as libvips' message).
 * Checked only on failure — a check before every picture costs the DataLoader's JavaScript thread a
 * thread-pool round trip per picture.
 */
async function checkReadable(file: string): Promise<void> {
  try {
    await fs.promises.access(file, fs.constants.R_OK);
  } catch {
    throw new BadSampleError(file, 'image file not found or not readable');
  }
}

/** Decodes (and optionally resizes, flips, jitters) an image to RGB uint8. */
export async function loadImage(file: string, options: LoadImageOptions = {}): Promise<DecodedImage> {
  try {
    let p = sharp(file, { limitInputPixels: options.limitInputPixels ?? 0x3fff * 0x3fff, failOn: 'warning' });
    p = p.removeAlpha().toColourspace('srgb');
    if (options.resize) p = p.resize(options.resize.width, options.resize.height, { fit: 'fill', kernel: 'linear' });
    if (options.flip) p = p.flop();
    if (options.extract) {
      // sharp applies extract before resize unless the resize happens in a pipeline of its own
      const { data, info } = await p.raw().toBuffer({ resolveWithObject: true });
      p = sharp(data, { raw: { width: info.width, height: info.height, channels: info.channels as 3 } }).extract(options.extract);
    }
    if (options.modulate) p = p.modulate(options.modulate);
    const { data, info } = await p.raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
  } catch (err) {
    await checkReadable(file);
    const msg = (err as Error).message;
    throw new BadSampleError(file, /pixel limit/i.test(msg) ? `image exceeds the pixel limit (${msg})` : `cannot decode image: ${msg}`);
  }
}
