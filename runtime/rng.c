/* rng.c - Philox 4x32-10 counter-based random numbers: uniform, normal, truncated normal, dropout. */
#include "flowc_rt.h"

#include <math.h>

/* Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3"
 * (SC 2011), as in the Random123 reference implementation. */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */
#define PHILOX_ROUNDS 10

/* Retries per element before truncated_normal gives up and returns the mean.
 * Each retry offers four candidates, each outside 2 stddev with probability
 * 0.0455, so reaching the limit never happens in practice; the bound only
 * guarantees termination. */
#define TRUNCATED_NORMAL_MAX_ATTEMPTS 64

void flrt_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < PHILOX_ROUNDS; round++) {
    if (round > 0) {
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
    uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = (uint32_t)p0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* The one place where (seed, stream, index, word3) becomes Philox input, so
 * that every generator (and the CUDA code that must match it) agrees on the
 * layout: counter = (index lo, index hi, stream, word3), key = (seed lo, seed hi). */
static void rng_block(uint64_t seed, uint32_t stream, uint64_t index, uint32_t word3,
                      uint32_t out[4]) {
  const uint32_t counter[4] = {(uint32_t)index, (uint32_t)(index >> 32), stream, word3};
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  flrt_philox4x32(counter, key, out);
}

/* Top 24 bits: exactly representable in a float, so the result is in [0, 1)
 * with no rounding up to 1. */
static float rng_unit_float(uint32_t x) { return (float)(x >> 8) * 0x1p-24f; }

/* In (0, 1]: Box-Muller takes its logarithm. */
static double rng_unit_open_below(uint32_t x) { return ((double)(x >> 8) + 1.0) * 0x1p-24; }

float flrt_uniform(uint64_t seed, uint32_t stream, uint64_t index) {
  uint32_t r[4];
  rng_block(seed, stream, index, 0, r);
  return rng_unit_float(r[0]);
}

void flrt_fill_uniform(float *dst, size_t n, float lo, float hi, uint64_t seed, uint32_t stream) {
  const float span = hi - lo;
  for (size_t i = 0; i < n; i++) {
    float v = lo + span * flrt_uniform(seed, stream, (uint64_t)i);
    /* lo + span * u can round up to hi for some lo, hi; keep the interval half-open. */
    if (v >= hi && hi > lo) v = nextafterf(hi, lo);
    dst[i] = v;
  }
}

/* Box-Muller on two 32-bit words: the pair (z0, z1) of independent standard
 * normals. Computed in double so that the CPU result does not depend on the
 * libm's float accuracy. */
static void rng_box_muller(uint32_t a, uint32_t b, double *z0, double *z1) {
  const double two_pi = 6.283185307179586476925286766559;
  double radius = sqrt(-2.0 * log(rng_unit_open_below(a)));
  double angle = two_pi * (double)rng_unit_float(b);
  *z0 = radius * cos(angle);
  *z1 = radius * sin(angle);
}

/* Element i of normal() uses Philox block (i, word3 = 0) and keeps the cosine
 * half of the Box-Muller pair, so each element is independent of n and of the
 * others (one GPU thread per element computes it alone). */
void flrt_fill_normal(float *dst, size_t n, float mean, float stddev, uint64_t seed,
                      uint32_t stream) {
  for (size_t i = 0; i < n; i++) {
    uint32_t r[4];
    double z0, z1;
    rng_block(seed, stream, (uint64_t)i, 0, r);
    rng_box_muller(r[0], r[1], &z0, &z1);
    dst[i] = (float)((double)mean + (double)stddev * z0);
  }
}

/* Attempt k for element i uses block (i, word3 = k), whose four words give
 * four candidates: z0 and z1 from words 0-1, then z0 and z1 from words 2-3.
 * The first within 2 stddev wins. Attempt 0's first candidate is normal()'s
 * value, so a truncated normal equals the normal wherever that lies inside. */
void flrt_fill_truncated_normal(float *dst, size_t n, float mean, float stddev, uint64_t seed,
                                uint32_t stream) {
  for (size_t i = 0; i < n; i++) {
    double chosen = 0.0;
    for (uint32_t attempt = 0; attempt < TRUNCATED_NORMAL_MAX_ATTEMPTS; attempt++) {
      uint32_t r[4];
      double z[4];
      rng_block(seed, stream, (uint64_t)i, attempt, r);
      rng_box_muller(r[0], r[1], &z[0], &z[1]);
      rng_box_muller(r[2], r[3], &z[2], &z[3]);
      int found = -1;
      for (int c = 0; c < 4 && found < 0; c++)
        if (fabs(z[c]) <= 2.0) found = c;
      if (found >= 0) {
        chosen = z[found];
        break;
      }
    }
    float v = (float)((double)mean + (double)stddev * chosen);
    /* Rounding to float must not step over the 2-stddev bound. */
    const float bound_hi = (float)((double)mean + 2.0 * fabs((double)stddev));
    const float bound_lo = (float)((double)mean - 2.0 * fabs((double)stddev));
    if (v > bound_hi) v = bound_hi;
    if (v < bound_lo) v = bound_lo;
    dst[i] = v;
  }
}

/* Element i of run r uses block (i, word3 = r's low 32 bits); the high 32 bits
 * of r are folded into the key's high word, so runs beyond 2^32 still differ. */
void flrt_dropout_mask(float *dst, size_t n, float keep_prob, uint64_t seed, uint32_t stream,
                       uint64_t run) {
  if (!(keep_prob > 0.0f)) {
    /* Nothing kept; 1/keep_prob would be infinite (and NaN times 0). */
    for (size_t i = 0; i < n; i++) dst[i] = 0.0f;
    return;
  }
  const float scale = 1.0f / keep_prob;
  if (keep_prob >= 1.0f) {
    /* Everything kept (evaluation): every draw in [0, 1) would pass, so
     * none is needed (6 us of Deep MNIST's 0.37 ms batch-1 forward pass). */
    for (size_t i = 0; i < n; i++) dst[i] = scale;
    return;
  }
  const uint64_t run_seed = seed ^ ((run >> 32) << 32);
  /* Each mask value is a function of its index alone: any thread may draw it. */
  FLRT_PARALLEL_LOOP((int64_t)n,
  for (size_t i = 0; i < n; i++) {
    uint32_t r[4];
    rng_block(run_seed, stream, (uint64_t)i, (uint32_t)run, r);
    dst[i] = rng_unit_float(r[0]) < keep_prob ? scale : 0.0f;
  });
}
