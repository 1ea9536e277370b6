/**
 * Byte buffers reused by size: the DataLoader decodes each picture into one and takes it back after the
 * batch is collated, so decoding touches no fresh memory (no page faults, no garbage for V8) once the
 * pool holds as many buffers as pictures are in flight.
 */

/** Buffer sizes are rounded up to this, so that pictures of similar sizes share buffers. */
export const GRANULE = 1 << 20;

export class BufferPool<B extends ArrayBuffer | SharedArrayBuffer> {
  /** Free buffers, smallest first. */
  private free: B[] = [];

  /** `make(bytes)` creates a buffer of `bytes` bytes (a multiple of GRANULE). */
  constructor(private readonly make: (bytes: number) => B) {}

  /** The smallest free buffer of at least `bytes` bytes, or a new one. */
  acquire(bytes: number): B {
    const i = this.free.findIndex((b) => b.byteLength >= bytes);
    if (i >= 0) return this.free.splice(i, 1)[0];
    return this.make(Math.max(GRANULE, Math.ceil(bytes / GRANULE) * GRANULE));
  }

  /** Takes `buffer` back for later `acquire`s. */
  release(buffer: B): void {
    const i = this.free.findIndex((b) => b.byteLength >= buffer.byteLength);
    this.free.splice(i < 0 ? this.free.length : i, 0, buffer);
  }

  /** A function that gives `buffer` back once, however often it is called. */
  releaser(buffer: B): () => void {
    let released = false;
    return () => {
      if (!released) this.release(buffer);
      released = true;
    };
  }

  /** Bytes held by free buffers. */
  get freeBytes(): number {
    return this.free.reduce((n, b) => n + b.byteLength, 0);
  }
}
