/**
 * Image decoding and geometric augmentation. JPEGs go to onestage's libjpeg-turbo decoder (native, into
 * the caller's buffer), which resizes exactly as Pillow's `Image.resize(size, Image.BILINEAR)`; every
 * other format, and JPEGs it declines (CMYK, an embedded ICC profile, corrupt data), go to sharp
 * (libvips), whose pipeline decodes, resizes (kernel 'linear': the same triangle filter widened by the
 * shrink factor, libvips' own rounding) and flips. Output: RGB uint8, height × width × 3, row-major.
 * No EXIF rotation (as pytorch-retinanet's skimage loader).
 */
import * as fs from 'node:fs';
import { isMainThread } from 'node:worker_threads';
import sharp from 'sharp';
import { native } from '../binding';

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
  /**
   * Which decoder reads JPEGs: `'auto'` (default) onestage's libjpeg-turbo decoder where the addon has
   * it (`buildInfo().jpegDecoder`) and this is the main thread, else sharp; `'sharp'` sharp always.
   */
  decoder?: 'auto' | 'sharp';
}

const DEFAULT_PIXEL_LIMIT = 0x3fff * 0x3fff;

let jpegDecoder: boolean | undefined;

/**
 * Whether JPEGs can go to the native decoder here: the addon was built with libjpeg-turbo, and this is
 * the main thread (the addon is not loaded in worker threads).
 */
export function nativeJpegAvailable(): boolean {
  jpegDecoder ??= isMainThread && native().buildInfo().jpegDecoder !== '';
  return jpegDecoder;
}

/**
 * Decodes `file` with the native JPEG decoder into `out` (resized, mirrored, cropped as `options` say;
 * `modulate` is applied with sharp after). The output's size, or why the decoder declined the file (not
 * a JPEG, CMYK, an ICC profile, corrupt, over the pixel limit, larger than `out`; `lasting` where that is
 * what the file is): then decode it with `loadImage(file, { ...options, decoder: 'sharp' })`, which also
 * reports what is wrong.
 */
export async function decodeJpegInto(file: string, options: LoadImageOptions, out: Uint8Array): Promise<{ width: number; height: number } | { declined: string; lasting: boolean }> {
  const e = options.extract;
  const r = await native().decodeJpegAsync(
    file,
    out,
    options.resize?.width ?? 0,
    options.resize?.height ?? 0,
    options.flip ?? false,
    e ? [e.left, e.top, e.width, e.height] : null,
    options.limitInputPixels ?? DEFAULT_PIXEL_LIMIT,
  );
  if (!r.decoded) return { declined: r.reason, lasting: r.lasting };
  if (options.modulate) {
    const bytes = r.width * r.height * 3;
    try {
      out.set(await sharp(out.subarray(0, bytes), { raw: { width: r.width, height: r.height, channels: 3 } }).modulate(options.modulate).raw().toBuffer());
    } catch (err) {
      throw new BadSampleError(file, `cannot apply the photometric jitter: ${(err as Error).message}`);
    }
  }
  return { width: r.width, height: r.height };
}

/**
 * Width and height from the file header (no full decode): a JPEG's from onestage's decoder (its frame
 * header, as sharp reads it) unless `decoder: 'sharp'`, anything else — or a JPEG over the pixel limit —
 * from sharp's metadata.
 */
export async function imageSize(file: string, options: LoadImageOptions = {}): Promise<{ width: number; height: number }> {
  if ((options.decoder ?? 'auto') === 'auto' && nativeJpegAvailable()) {
    const h = await native().jpegHeaderAsync(file);
    if (h.read && h.width * h.height <= (options.limitInputPixels ?? DEFAULT_PIXEL_LIMIT)) return { width: h.width, height: h.height };
  }
  try {
    const m = await sharp(file, { limitInputPixels: options.limitInputPixels ?? DEFAULT_PIXEL_LIMIT }).metadata();
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

/**
 * Decodes (and optionally resizes, flips, crops, jitters) an image to RGB uint8: a JPEG with onestage's
 * decoder (resized byte for byte as Pillow's `Image.resize(size, BILINEAR)`) unless `decoder: 'sharp'`,
 * anything else — and a JPEG that decoder declines — with sharp.
 * @example const { data, width, height } = await loadImage('a.jpg', { resize: { width: 640, height: 480 }, flip: true });
 */
export async function loadImage(file: string, options: LoadImageOptions = {}): Promise<DecodedImage> {
  if ((options.decoder ?? 'auto') === 'auto' && nativeJpegAvailable()) {
    // the output's size; without a resize or window, the JPEG header's (a file that has none goes to sharp)
    let size: { width: number; height: number } | undefined = options.extract ?? options.resize;
    if (!size) {
      const h = await native().jpegHeaderAsync(file);
      if (h.read) size = h;
    }
    if (size) {
      const out = new Uint8Array(size.width * size.height * 3);
      const got = await decodeJpegInto(file, options, out);
      if ('width' in got) return { data: out.subarray(0, got.width * got.height * 3), width: got.width, height: got.height };
    }
  }
  try {
    let p = sharp(file, { limitInputPixels: options.limitInputPixels ?? DEFAULT_PIXEL_LIMIT, failOn: 'warning' });
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
