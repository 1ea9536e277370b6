/**
 * A small seeded generator (mulberry32 with Box–Muller normals): every random choice of the data
 * pipeline (shuffling, flips, zoom factors, synthetic data) comes from one of these, so runs repeat.
 */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let z = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform in [lo, hi). */
  between(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  /** Integer in [lo, hi). */
  integer(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo));
  }
  uniform(n: number, lo = 0, hi = 1): Float32Array {
    return Float32Array.from({ length: n }, () => lo + (hi - lo) * this.next());
  }
  normal(n: number, std = 1): Float32Array {
    return Float32Array.from({ length: n }, () => {
      const u = 1 - this.next();
      const v = this.next();
      return std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
    });
  }
  int(n: number, lo: number, hi: number): Int32Array {
    return Int32Array.from({ length: n }, () => lo + Math.floor(this.next() * (hi - lo)));
  }
  /** Fisher–Yates shuffle in place. */
  shuffle<T>(items: T[]): T[] {
    for (let i = items.length - 1; i > 0; i--) {
      const j = Math.floor(this.next() * (i + 1));
      [items[i], items[j]] = [items[j], items[i]];
    }
    return items;
  }
}
