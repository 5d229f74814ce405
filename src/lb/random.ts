// lb/ picks endpoints; it must not open sockets or read config sources (it is handed
// services/endpoints/nodes).
//
// random.ts: the injectable source of randomness (Math.random in production, a seeded PRNG in
// tests) and weighted sampling over it.

/** Returns a float in [0, 1), like Math.random. */
export type Random = () => number;

export const defaultRandom: Random = Math.random;

/**
 * mulberry32: a small, fast, seeded 32-bit PRNG. Deterministic for a seed; good enough for
 * load balancing and tests, not for anything cryptographic.
 */
export function seededRandom(seed: number): Random {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Index of one item drawn with probability proportional to its weight, skipping `skip` (the
 * index already drawn, for sampling without replacement). Weights must be positive; `total` is
 * the sum of the weights not skipped. Returns -1 only when nothing is left to draw.
 */
export function weightedIndex(
  weights: readonly number[],
  total: number,
  random: Random,
  skip = -1,
): number {
  let r = random() * total;
  let last = -1;
  for (let i = 0; i < weights.length; i++) {
    if (i === skip) continue;
    last = i;
    r -= weights[i]!;
    if (r < 0) return i;
  }
  // Floating-point rounding can leave r at a hair above 0 after the last item.
  return last;
}
