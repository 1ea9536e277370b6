/**
 * Decoding off the JavaScript thread: worker threads run `loadImage` (sharp) and copy the pixels into
 * shared memory that the DataLoader reuses, so the main thread — which also drives the training step —
 * carries a message per picture instead of sharp's pipeline bookkeeping and the garbage collections
 * of its 1–2 MB output buffers (V8 runs a full collection every few pictures under that external
 * memory pressure). The pixels are the same bytes `loadImage` returns on the main thread.
 */
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import { BufferPool } from './buffer_pool';
import { BadSampleError, DecodedImage, LoadImageOptions } from './image';

/** A decoded image whose pixels live in a pooled buffer: `release()` once they are no longer read. */
export interface PooledImage extends DecodedImage {
  release(): void;
}

interface Reply {
  id: number;
  width?: number;
  height?: number;
  bytes?: number;
  /** Pixels that did not fit the buffer offered (transferred instead). */
  data?: ArrayBuffer;
  error?: { file?: string; reason?: string; message: string };
}

interface Pending {
  resolve(image: PooledImage): void;
  reject(err: Error): void;
  buffer: SharedArrayBuffer;
  worker: WorkerSlot;
}

interface WorkerSlot {
  worker: Worker;
  inFlight: number;
}

// The worker: loads the image module (TypeScript through ts-node when the caller runs from sources)
// and answers each request with the size and bytes of the decoded image, copied into the buffer sent.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
if (workerData.typescript && !require.extensions['.ts'])
  require('ts-node').register({ transpileOnly: true, projectSearchDir: require('node:path').dirname(workerData.module) });
const { loadImage } = require(workerData.module);
parentPort.on('message', async ({ id, file, options, buffer }) => {
  try {
    const img = await loadImage(file, options);
    const bytes = img.data.byteLength;
    if (bytes <= buffer.byteLength) {
      new Uint8Array(buffer, 0, bytes).set(img.data);
      parentPort.postMessage({ id, width: img.width, height: img.height, bytes });
    } else {
      const data = img.data.byteOffset === 0 && img.data.buffer.byteLength === bytes ? img.data.buffer : img.data.slice().buffer;
      parentPort.postMessage({ id, width: img.width, height: img.height, bytes, data }, [data]);
    }
  } catch (err) {
    parentPort.postMessage({ id, error: { file: err.file, reason: err.reason, message: String(err && err.message || err) } });
  }
});
`;

/** Worker threads decoding images into reused shared buffers. */
export class DecodePool {
  private readonly workers: WorkerSlot[];
  private readonly pending = new Map<number, Pending>();
  private readonly buffers = new BufferPool((bytes) => new SharedArrayBuffer(bytes));
  private nextId = 0;
  private failure: Error | undefined;

  /** `count` worker threads (1 to 64). */
  constructor(readonly count: number) {
    const module = require.resolve('./image');
    this.workers = Array.from({ length: count }, () => {
      const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { module, typescript: module.endsWith('.ts') } });
      const slot: WorkerSlot = { worker, inFlight: 0 };
      worker.on('message', (reply: Reply) => this.settle(reply));
      worker.on('error', (err) => this.fail(new Error(`image decoding worker failed: ${err.message}`)));
      worker.on('exit', (code) => {
        if (code !== 0) this.fail(new Error(`image decoding worker exited with code ${code}`));
      });
      worker.unref(); // kept alive only while it has work (see load)
      return slot;
    });
  }

  /**
   * Decodes `file` as `loadImage(file, options)` does, on the least busy worker; `bytes` is the size
   * expected (a larger image still arrives, in a buffer of its own).
   */
  load(file: string, options: LoadImageOptions, bytes: number): Promise<PooledImage> {
    if (this.failure) return Promise.reject(this.failure);
    const slot = this.workers.reduce((a, b) => (b.inFlight < a.inFlight ? b : a));
    const buffer = this.buffers.acquire(bytes);
    const id = this.nextId++;
    return new Promise<PooledImage>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, buffer, worker: slot });
      if (slot.inFlight++ === 0) slot.worker.ref();
      // sharp only: the addon is not loaded in worker threads
      slot.worker.postMessage({ id, file, options: { ...options, decoder: 'sharp' }, buffer });
    });
  }

  /** Stops the workers; later loads fail. */
  async close(): Promise<void> {
    this.fail(new Error('the image decoding workers were closed'));
    await Promise.all(this.workers.map((w) => w.worker.terminate()));
  }

  private settle(reply: Reply): void {
    const p = this.pending.get(reply.id);
    if (!p) return;
    this.pending.delete(reply.id);
    if (--p.worker.inFlight === 0) p.worker.worker.unref();
    if (reply.error) {
      this.buffers.release(p.buffer);
      const e = reply.error;
      p.reject(e.file !== undefined && e.reason !== undefined ? new BadSampleError(e.file, e.reason) : new Error(e.message));
      return;
    }
    const width = reply.width!;
    const height = reply.height!;
    if (reply.data) {
      this.buffers.release(p.buffer);
      p.resolve({ data: new Uint8Array(reply.data), width, height, release: () => undefined });
      return;
    }
    p.resolve({ data: new Uint8Array(p.buffer, 0, reply.bytes!), width, height, release: this.buffers.releaser(p.buffer) });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(err);
    }
  }
}

/**
 * The default number of decoding workers: on CUDA, where the training step needs the JavaScript thread
 * at hundreds of pictures a second, 2 where there are at least 8 cores; none on the CPU (the cores are
 * the training's) or on small machines (the workers' own threads then cost more than they save).
 */
export function defaultDecodeWorkers(device: string): number {
  return device !== 'cpu' && os.availableParallelism() >= 8 ? 2 : 0;
}
