/** Seeded test inputs: the library's generator (same seed, same inputs). */
export { Rng } from '../../lib/data/random';
