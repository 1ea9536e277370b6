/**
 * DataLoader: an async iterator of padded, normalised batches. Decoding and resizing run
 * concurrently on libuv's thread pool (JPEGs in onestage's decoder, other formats in sharp), batching on
 * onestage's; a bounded queue of `prefetch` batches
 * is prepared ahead, so memory stays bounded however long the dataset. Shuffling, aspect-ratio
 * grouping (as pytorch-retinanet's sampler, without its wrap-around repeats) and every augmentation
 * choice come from seeded generators: the same seed gives the same batches.
 */
import { native } from '../binding';
import { checkDevice, Device, Tensor } from '../tensor';
import { checkInteger, checkOneOf, checkOptions, invalid } from '../validate';
import { DetectionDataset, SampleRecord } from './dataset';
import { BufferPool } from './buffer_pool';
import { DecodePool, defaultDecodeWorkers } from './decode_pool';
import { BadSampleError, DecodedImage, decodeJpegInto, imageSize, loadImage, LoadImageOptions, nativeJpegAvailable } from './image';
import { Rng } from './random';
import { cropBoxes, IMAGENET_MEAN, IMAGENET_STD, paddedSize, resizeScale, scaledSize, TransformOptions, transformBoxes } from './transforms';

export interface Batch {
  /** `[B, 3, H, W]` float32, normalised, zero-padded (after normalisation) to a multiple of padMultiple. */
  images: Tensor;
  /** With `views: 2`: the contrastive second view, aligned with `images` (same boxes). */
  views?: Tensor;
  /** `[B, M, 5]` float32 x1, y1, x2, y2, label in input pixels; −1 rows pad; label −2 ignore regions. */
  annotations: Tensor;
  /** Resize factor of each image (original → input pixels). */
  scales: number[];
  /** Original `[height, width]` of each image. */
  sizes: Array<[number, number]>;
  /** `[height, width]` of each resized image inside the padded batch. */
  inputSizes: Array<[number, number]>;
  ids: Array<number | string>;
  files: string[];
  /** Horizontal flip applied to each image. */
  flipped: boolean[];
  /** Crop window of each image in resized pixels (before the crop), or null. */
  crops: Array<{ x: number; y: number; width: number; height: number } | null>;
}

export interface LoaderOptions {
  /** Images per batch; default 2. */
  batchSize?: number;
  /** Shuffle each epoch; default true. */
  shuffle?: boolean;
  /** Seed of every random choice; default 0. */
  seed?: number;
  /** Drop the last, smaller batch; default false. */
  dropLast?: boolean;
  /** Batch images of similar aspect ratio together (pytorch-retinanet's sampler); default true. */
  groupByAspectRatio?: boolean;
  /** Batches prepared ahead; default 2. */
  prefetch?: number;
  /** Where batches are put; default 'cpu'. */
  device?: Device;
  /** Random flips (and jitter when configured); default true. */
  augment?: boolean;
  transform?: TransformOptions;
  /** 2: also produce the contrastive second view (`batch.views`); default 1. */
  views?: 1 | 2;
  /** Zoom factor range of the second view; default [2, 3). */
  zoom?: [number, number];
  /** One zoom factor per batch (default) or per image. */
  zoomPer?: 'batch' | 'image';
  /** 'error' (default): a bad sample stops iteration with an error naming the file; 'skip': it is left out and reported. */
  onBadSample?: 'error' | 'skip';
  /** Pictures with more pixels are bad samples (sharp's limitInputPixels); default 0x3FFF². */
  limitInputPixels?: number;
  /**
   * Which decoder reads JPEGs. 'auto' (default): onestage's libjpeg-turbo decoder where the addon was
   * built with it (`buildInfo().jpegDecoder`) — on the thread pool, straight into reused buffers,
   * resized exactly as Pillow's `Image.resize(size, Image.BILINEAR)` (a 960² JPEG to 640²: about 4× less
   * CPU than sharp on the development VM) — and sharp for every other format and for the JPEGs it
   * declines (CMYK, an embedded ICC profile, corrupt data). 'sharp': sharp for all (libvips' resize:
   * the same triangle filter, its own rounding — pixel values differ by a few levels).
   */
  decoder?: 'auto' | 'sharp';
  /**
   * Worker threads that decode with sharp off the JavaScript thread (what the native JPEG decoder does
   * not take: other formats, or every picture with `decoder: 'sharp'`), handing the pixels over in
   * reused shared memory: the main thread, which also drives the training step, then spends about
   * 0.1 ms a picture on the loader instead of 0.7–2 ms (sharp's bookkeeping and the garbage collections
   * its output buffers cause). Same pixels either way. 0: sharp runs from the main thread. Default
   * 'auto': 2 on CUDA with at least 8 cores, else 0; started at the first picture that needs them.
   */
  decodeWorkers?: number | 'auto';
  /**
   * Pictures decoded at once. Decoding runs on libuv's thread pool, which the training step, the
   * batch's collate and upload, and file reads use too: a job queued behind a full pool waits for
   * decodes to finish (measured on a 2-core VM: 6–7 ms median, 16 ms at the 90th percentile, against
   * 0.12 ms and 2.4–2.8 ms with two threads kept free). Default: the pool's size
   * (UV_THREADPOOL_SIZE) less 2, at least 2 — a pool thread stays free for the step and the collate.
   */
  decodeConcurrency?: number;
  /**
   * Data-parallel shard (`group.shard`): each epoch's global batches of batchSize × count images are
   * planned as a single process would plan them (same seed, same order, same per-image random
   * choices), and rank `rank` gets its contiguous part of each; a global batch whose size is not a
   * multiple of count is padded with its own first images (as torch's DistributedSampler pads), so
   * every rank runs the same number of equally sized batches. Default: no sharding.
   */
  shard?: { rank: number; count: number };
}

/** One batch of the plan: dataset indices, and where they sit in the global batch (for the random choices). */
interface PlannedBatch {
  indices: number[];
  offset: number;
  span: number;
}

export interface SkippedSample {
  epoch: number;
  file: string;
  reason: string;
}

interface LoadedSample {
  record: SampleRecord;
  data: Uint8Array;
  width: number;
  height: number;
  originalWidth: number;
  originalHeight: number;
  scale: number;
  boxes: Float32Array;
  labels: Int32Array;
  flipped: boolean;
  crop: { x: number; y: number; width: number; height: number } | null;
  /** Gives the pixel buffer back to its pool (no-op for sharp's own buffers). */
  release(): void;
}

export class DataLoader implements AsyncIterable<Batch> {
  /** The dataset it reads. */
  readonly dataset: DetectionDataset;
  /** The data-parallel shard of this loader (count 1: unsharded). */
  readonly shard: { rank: number; count: number };
  private readonly o: Required<Omit<LoaderOptions, 'transform' | 'shard' | 'decodeWorkers' | 'decodeConcurrency'>> & { transform: Required<Omit<TransformOptions, 'scaleJitter' | 'photometric' | 'crop'>> & TransformOptions };
  private sizes: Array<{ width: number; height: number } | undefined>;
  /** Images whose size was read from the file (and checked against the annotations) once: later epochs skip the header read. */
  private readonly verified: boolean[] = [];
  private nextEpoch = 0;
  private readonly decodeWorkers: number;
  /** Decodes under way are limited to its size (options.decodeConcurrency). */
  private readonly decodeGate: Gate;
  private decoder: DecodePool | undefined;
  /** Pictures the native JPEG decoder declined for what they are (other formats, CMYK, ICC): sharp's from then on. */
  private readonly sharpOnly = new Set<number>();
  /** Buffers the native JPEG decoder writes into, reused batch after batch. */
  private readonly buffers = new BufferPool((bytes) => new ArrayBuffer(bytes));
  /** Batches of an epoch started ahead by `prepare`. */
  private prepared: { epoch: number; state: Promise<EpochState> } | undefined;
  /** Samples skipped with `onBadSample: 'skip'`, with the reason. */
  readonly skipped: SkippedSample[] = [];

  constructor(dataset: DetectionDataset, options?: LoaderOptions) {
    if (!dataset || typeof dataset.record !== 'function') throw invalid('dataset', 'a CocoDataset, CsvDataset or DetectionDataset', dataset);
    const o = checkOptions('options', options);
    const t = checkOptions('options.transform', o.transform);
    this.dataset = dataset;
    this.o = {
      batchSize: checkInteger('options.batchSize', o.batchSize ?? 2, 1, 4096),
      shuffle: o.shuffle ?? true,
      seed: checkInteger('options.seed', o.seed ?? 0, 0, Number.MAX_SAFE_INTEGER),
      dropLast: o.dropLast ?? false,
      groupByAspectRatio: o.groupByAspectRatio ?? true,
      prefetch: checkInteger('options.prefetch', o.prefetch ?? 2, 0, 64),
      device: checkDevice('options.device', o.device ?? 'cpu'),
      augment: o.augment ?? true,
      views: checkInteger('options.views', o.views ?? 1, 1, 2) as 1 | 2,
      zoom: o.zoom ?? [2, 3],
      zoomPer: checkOneOf('options.zoomPer', o.zoomPer ?? 'batch', ['batch', 'image'] as const),
      onBadSample: checkOneOf('options.onBadSample', o.onBadSample ?? 'error', ['error', 'skip'] as const),
      limitInputPixels: o.limitInputPixels ?? 0x3fff * 0x3fff,
      decoder: checkOneOf('options.decoder', o.decoder ?? 'auto', ['auto', 'sharp'] as const),
      transform: {
        ...t,
        minSide: t.minSide ?? 608,
        maxSide: t.maxSide ?? 1024,
        padMultiple: checkInteger('options.transform.padMultiple', t.padMultiple ?? 32, 1, 1024),
        flip: t.flip ?? 0.5,
        mean: t.mean ?? IMAGENET_MEAN,
        std: t.std ?? IMAGENET_STD,
      },
    };
    this.decodeWorkers = o.decodeWorkers === undefined || o.decodeWorkers === 'auto' ? defaultDecodeWorkers(this.o.device) : checkInteger('options.decodeWorkers', o.decodeWorkers, 0, 64);
    this.decodeGate = new Gate(o.decodeConcurrency === undefined ? defaultDecodeConcurrency() : checkInteger('options.decodeConcurrency', o.decodeConcurrency, 1, 4096));
    const sh = o.shard === undefined ? { rank: 0, count: 1 } : (checkOptions('options.shard', o.shard) as { rank: number; count: number });
    const count = checkInteger('options.shard.count', sh.count, 1, 1 << 20);
    this.shard = { rank: checkInteger('options.shard.rank', sh.rank, 0, count - 1), count };
    if (!(this.o.zoom[0] > 0 && this.o.zoom[1] >= this.o.zoom[0])) throw invalid('options.zoom', 'a range [lo, hi) of positive factors', this.o.zoom, RangeError);
    this.sizes = Array.from({ length: dataset.length }, (_, i) => {
      const r = dataset.record(i);
      return r.width && r.height ? { width: r.width, height: r.height } : undefined;
    });
  }

  /** Whether batches are augmented (flips, jitter, crops): evaluation needs a loader without. */
  get augments(): boolean {
    return this.o.augment;
  }

  /** Whether every image is seen exactly once per epoch (no dropped last batch, no skipped samples so far). */
  get complete(): boolean {
    return !this.o.dropLast && this.skipped.length === 0;
  }

  /** Batches per epoch (of this shard: every rank runs the same number). */
  get length(): number {
    const n = this.dataset.length;
    const B = this.o.batchSize * this.shard.count;
    return this.o.dropLast ? Math.floor(n / B) : Math.ceil(n / B);
  }

  /** Image indices of each batch of `epoch` (deterministic for the seed; this shard's part when sharded). */
  async batchIndices(epoch: number): Promise<number[][]> {
    return (await this.plan(epoch)).map((b) => b.indices);
  }

  private async plan(epoch: number): Promise<PlannedBatch[]> {
    const { rank, count } = this.shard;
    const global = await this.globalBatches(epoch);
    return global.map((g) => {
      if (count === 1) return { indices: g, offset: 0, span: g.length };
      const padded = [...g];
      for (let i = 0; padded.length % count !== 0; i++) padded.push(g[i % g.length]);
      const per = padded.length / count;
      return { indices: padded.slice(rank * per, (rank + 1) * per), offset: rank * per, span: padded.length };
    });
  }

  /** The batches of batchSize × shard count images a single process would run. */
  private async globalBatches(epoch: number): Promise<number[][]> {
    const n = this.dataset.length;
    const rng = new Rng(this.o.seed * 1000003 + epoch * 7919 + 1);
    let order = Array.from({ length: n }, (_, i) => i);
    const B = this.o.batchSize * this.shard.count;
    let batches: number[][];
    if (this.o.groupByAspectRatio) {
      await this.ensureSizes();
      const ratio = (i: number) => this.sizes[i]!.width / this.sizes[i]!.height;
      order = order.sort((a, b) => ratio(a) - ratio(b) || a - b);
      batches = [];
      for (let i = 0; i < n; i += B) batches.push(order.slice(i, i + B));
      if (this.o.shuffle) rng.shuffle(batches);
    } else {
      if (this.o.shuffle) rng.shuffle(order);
      batches = [];
      for (let i = 0; i < n; i += B) batches.push(order.slice(i, i + B));
    }
    return this.o.dropLast ? batches.filter((b) => b.length === B) : batches;
  }

  /**
   * The batches of one epoch. Breaking out of the loop frees what was prefetched. Where `prepare(epoch)`
   * ran first, the batches it started are the first ones (the same batches: every choice is seeded by
   * epoch and batch index).
   */
  async *epoch(epoch: number): AsyncGenerator<Batch> {
    checkInteger('epoch', epoch, 0, Number.MAX_SAFE_INTEGER);
    const prepared = this.prepared;
    this.prepared = undefined;
    let state: EpochState;
    if (prepared && prepared.epoch === epoch) state = await prepared.state;
    else {
      if (prepared) await discard(prepared.state).catch(() => undefined);
      state = await this.startEpoch(epoch);
    }
    const { plan, pending } = state;
    try {
      while (pending.length > 0) {
        const batch = await pending.shift()!;
        if (state.next < plan.length) this.launch(state, epoch);
        if (batch !== null) yield batch;
      }
    } finally {
      await discard(state);
    }
  }

  /**
   * Starts loading the first `prefetch + 1` batches of `epoch` now — while the last steps of the
   * previous epoch run, say — so that the next `epoch(epoch)` does not begin by waiting for a batch to
   * be decoded (`Trainer.fit` does this at each epoch's last batch). Replaces what an earlier `prepare`
   * started; `discardPrepared()` frees it unused.
   */
  prepare(epoch: number): void {
    checkInteger('epoch', epoch, 0, Number.MAX_SAFE_INTEGER);
    const old = this.prepared;
    if (old?.epoch === epoch) return;
    const state = this.startEpoch(epoch);
    state.catch(() => undefined); // reported by epoch()
    this.prepared = { epoch, state };
    if (old) void discard(old.state).catch(() => undefined);
  }

  /** Frees the batches `prepare` started and no epoch took. */
  async discardPrepared(): Promise<void> {
    const old = this.prepared;
    this.prepared = undefined;
    if (old) await discard(old.state).catch(() => undefined);
  }

  private async startEpoch(epoch: number): Promise<EpochState> {
    const state: EpochState = { plan: await this.plan(epoch), pending: [], next: 0 };
    while (state.next < state.plan.length && state.pending.length < this.o.prefetch + 1) this.launch(state, epoch);
    return state;
  }

  private launch(state: EpochState, epoch: number): void {
    const k = state.next++;
    const p = this.loadBatch(state.plan[k], epoch, k);
    p.catch(() => undefined); // handled when awaited
    state.pending.push(p);
  }

  /** Pictures decoded at once (options.decodeConcurrency). */
  get decodeConcurrency(): number {
    return this.decodeGate.size;
  }

  /** Number of worker threads decoding images (0: decoded on the JavaScript thread). */
  get decodeWorkerCount(): number {
    return this.decodeWorkers;
  }

  /**
   * Stops the decoding workers (a loader iterated again starts new ones). Not needed for the process
   * to exit: idle workers do not keep it alive.
   */
  async close(): Promise<void> {
    const d = this.decoder;
    this.decoder = undefined;
    await d?.close();
  }

  /** Iterates the next epoch (0, 1, 2, … on successive loops). */
  [Symbol.asyncIterator](): AsyncIterator<Batch> {
    return this.epoch(this.nextEpoch++);
  }

  private async ensureSizes(): Promise<void> {
    const missing = this.sizes.map((s, i) => (s ? -1 : i)).filter((i) => i >= 0);
    for (let k = 0; k < missing.length; k += 16) {
      await Promise.all(
        missing.slice(k, k + 16).map(async (i) => {
          try {
            this.sizes[i] = await imageSize(this.dataset.record(i).file, { limitInputPixels: this.o.limitInputPixels, decoder: this.o.decoder });
          } catch (err) {
            if (this.o.onBadSample === 'error') throw err;
            this.sizes[i] = { width: 1, height: 1 }; // reported when the sample is loaded
          }
        }),
      );
    }
  }

  private async loadSample(index: number, rng: Rng): Promise<LoadedSample> {
    const record = this.dataset.record(index);
    const t = this.o.transform;
    const flip = this.o.augment && rng.next() < t.flip;
    const jitter = this.o.augment && t.scaleJitter ? rng.between(t.scaleJitter[0], t.scaleJitter[1]) : 1;
    const ph = this.o.augment && t.photometric ? t.photometric : undefined;
    const modulate = ph
      ? { brightness: 1 + rng.between(-(ph.brightness ?? 0), ph.brightness ?? 0), saturation: 1 + rng.between(-(ph.saturation ?? 0), ph.saturation ?? 0), hue: Math.round(rng.between(-(ph.hue ?? 0), ph.hue ?? 0)) } // sharp rotates hue by whole degrees
      : undefined;
    let size = this.verified[index] ? this.sizes[index] : undefined;
    if (!size) {
      size = await imageSize(record.file, { limitInputPixels: this.o.limitInputPixels, decoder: this.o.decoder });
      if (record.width && record.height && (record.width !== size.width || record.height !== size.height))
        throw new BadSampleError(record.file, `the annotations say ${record.width}×${record.height} but the image is ${size.width}×${size.height}`);
      this.sizes[index] = size;
      this.verified[index] = true;
    }
    const scale = resizeScale(size.width, size.height, t.minSide, t.maxSide) * jitter;
    const out = scaledSize(size.width, size.height, scale);
    const same = out.width === size.width && out.height === size.height;
    let crop: LoadedSample['crop'] = null;
    if (this.o.augment && t.crop && rng.next() < t.crop.p) {
      const width = Math.max(1, Math.round(out.width * rng.between(t.crop.minSize, 1)));
      const height = Math.max(1, Math.round(out.height * rng.between(t.crop.minSize, 1)));
      crop = { x: rng.integer(0, out.width - width + 1), y: rng.integer(0, out.height - height + 1), width, height };
    }
    const options = {
      limitInputPixels: this.o.limitInputPixels,
      resize: same ? undefined : out,
      flip,
      modulate,
      extract: crop ? { left: crop.x, top: crop.y, width: crop.width, height: crop.height } : undefined,
    };
    const img = await this.decodeGate.run(() => this.decode(index, record.file, options, 3 * (crop ? crop.width * crop.height : out.width * out.height)));
    let boxes = transformBoxes(record.boxes, size.width, size.height, out.width, out.height, flip);
    let labels = record.labels;
    if (crop) ({ boxes, labels } = cropBoxes(boxes, labels, crop, t.crop?.minVisible ?? 0.25));
    return { record, data: img.data, width: img.width, height: img.height, originalWidth: size.width, originalHeight: size.height, scale, boxes, labels, flipped: flip, crop, release: img.release ?? (() => undefined) };
  }

  /**
   * One picture's pixels (`bytes` of them expected): the native JPEG decoder into a pooled buffer;
   * what it declines, sharp — in the decode workers where there are any (and for good, for a picture
   * declined for what it is).
   */
  private async decode(index: number, file: string, options: LoadImageOptions, bytes: number): Promise<DecodedImage & { release?: () => void }> {
    if (this.o.decoder === 'auto' && nativeJpegAvailable() && !this.sharpOnly.has(index)) {
      const buffer = this.buffers.acquire(bytes);
      let got: Awaited<ReturnType<typeof decodeJpegInto>>;
      try {
        got = await decodeJpegInto(file, options, new Uint8Array(buffer, 0, bytes));
      } catch (err) {
        this.buffers.release(buffer);
        throw err;
      }
      if ('width' in got) return { data: new Uint8Array(buffer, 0, got.width * got.height * 3), width: got.width, height: got.height, release: this.buffers.releaser(buffer) };
      this.buffers.release(buffer);
      if (got.lasting) this.sharpOnly.add(index);
    }
    const sharpOptions = { ...options, decoder: 'sharp' as const };
    if (this.decodeWorkers > 0) this.decoder ??= new DecodePool(this.decodeWorkers);
    return this.decoder ? this.decoder.load(file, sharpOptions, bytes) : loadImage(file, sharpOptions);
  }

  private async loadBatch({ indices, offset, span }: PlannedBatch, epoch: number, k: number): Promise<Batch | null> {
    // the random choices of the whole global batch, so that a shard's images get what they would
    // get in a single process
    const rng = new Rng(this.o.seed * 1000003 + epoch * 7919 + k * 104729 + 2);
    const choices = Array.from({ length: span }, () => new Rng(Math.floor(rng.next() * 2 ** 32)));
    const [lo, hi] = this.o.zoom;
    const batchZoom = this.o.views === 2 ? rng.between(lo, hi) : 0;
    const imageZoom = this.o.views === 2 && this.o.zoomPer === 'image' ? Array.from({ length: span }, () => rng.between(lo, hi)) : [];
    const loaded = await Promise.all(
      indices.map((i, j) =>
        this.loadSample(i, choices[offset + j]).catch((err: unknown) => {
          if (this.o.onBadSample === 'skip' && err instanceof BadSampleError) {
            this.skipped.push({ epoch, file: err.file, reason: err.reason });
            return null;
          }
          throw err;
        }),
      ),
    );
    const kept = indices.map((_, j) => j).filter((j) => loaded[j] !== null);
    const samples = kept.map((j) => loaded[j]!);
    if (samples.length === 0) return null;
    const t = this.o.transform;
    const padded = paddedSize(samples, t.padMultiple);
    let images: Tensor;
    try {
      images = new Tensor(
        await native().collateImagesAsync(samples.map((s) => s.data), samples.flatMap((s) => [s.height, s.width]), padded.height, padded.width, [...t.mean], [...t.std], this.o.device),
      );
    } finally {
      for (const s of samples) s.release();
    }
    const M = Math.max(1, ...samples.map((s) => s.labels.length));
    const ann = new Float32Array(samples.length * M * 5).fill(-1);
    samples.forEach((s, b) => {
      for (let i = 0; i < s.labels.length; i++) {
        ann.set(s.boxes.subarray(4 * i, 4 * i + 4), (b * M + i) * 5);
        ann[(b * M + i) * 5 + 4] = s.labels[i];
      }
    });
    let annotations = Tensor.from(ann, [samples.length, M, 5]);
    if (this.o.device !== 'cpu') {
      // off the JavaScript thread and the training stream, as the images
      const host = annotations;
      try {
        annotations = new Tensor(await native().uploadAsync(host.handle, this.o.device));
      } finally {
        host.dispose();
      }
    }
    let views: Tensor | undefined;
    if (this.o.views === 2) {
      const factors = Tensor.from(Float32Array.from(kept, (j) => (this.o.zoomPer === 'batch' ? batchZoom : imageZoom[offset + j])));
      views = new Tensor(await native().contrastiveViewsAsync(images.handle, annotations.handle, factors.handle));
      factors.dispose();
    }
    return {
      images,
      views,
      annotations,
      scales: samples.map((s) => s.scale),
      sizes: samples.map((s) => [s.originalHeight, s.originalWidth]),
      inputSizes: samples.map((s) => [s.height, s.width]),
      ids: samples.map((s) => s.record.id),
      files: samples.map((s) => s.record.file),
      flipped: samples.map((s) => s.flipped),
      crops: samples.map((s) => s.crop),
    };
  }
}

/** The default decodeConcurrency: the libuv pool's size less 2, at least 2. */
function defaultDecodeConcurrency(): number {
  const pool = Number.parseInt(process.env.UV_THREADPOOL_SIZE ?? '', 10);
  return Math.max(2, (Number.isFinite(pool) && pool > 0 ? pool : 4) - 2);
}

/** At most `size` jobs under way; the others wait in order. */
class Gate {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(readonly size: number) {}

  async run<T>(job: () => Promise<T>): Promise<T> {
    if (this.active >= this.size) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.active++;
    try {
      return await job();
    } finally {
      const next = this.waiting.shift();
      if (next) next(); // the slot passes on
      else this.active--;
    }
  }
}

/** An epoch being loaded: its plan, the batches under way (in order) and the next batch to start. */
interface EpochState {
  plan: PlannedBatch[];
  pending: Array<Promise<Batch | null>>;
  next: number;
}

/** Waits for the batches under way and frees them. */
async function discard(state: EpochState | Promise<EpochState>): Promise<void> {
  const s = await state;
  const pending = s.pending.splice(0);
  s.next = s.plan.length; // nothing more starts
  for (const p of pending) {
    const b = await p.catch(() => null);
    if (b) disposeBatch(b);
  }
}

/** Frees a batch's tensors. */
export function disposeBatch(batch: Batch): void {
  batch.images.dispose();
  batch.annotations.dispose();
  batch.views?.dispose();
}
