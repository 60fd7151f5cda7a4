/* test_rng.c - Philox known answers and the statistics of the derived distributions. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "flowc_rt.h"

#define N_SAMPLES 100000

static void moments(const float *x, size_t n, double *mean, double *var) {
  double s = 0.0, s2 = 0.0;
  for (size_t i = 0; i < n; i++) s += x[i];
  *mean = s / (double)n;
  for (size_t i = 0; i < n; i++) s2 += (x[i] - *mean) * (x[i] - *mean);
  *var = s2 / (double)n;
}

static float *alloc_floats(size_t n) {
  float *p = malloc(n * sizeof *p);
  cr_assert_not_null(p);
  return p;
}

static void check_philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                         uint32_t k1, uint32_t e0, uint32_t e1, uint32_t e2, uint32_t e3) {
  const uint32_t counter[4] = {c0, c1, c2, c3};
  const uint32_t key[2] = {k0, k1};
  uint32_t out[4];
  flrt_philox4x32(counter, key, out);
  cr_assert_eq(out[0], e0, "word 0: got 0x%08x, want 0x%08x", out[0], e0);
  cr_assert_eq(out[1], e1, "word 1: got 0x%08x, want 0x%08x", out[1], e1);
  cr_assert_eq(out[2], e2, "word 2: got 0x%08x, want 0x%08x", out[2], e2);
  cr_assert_eq(out[3], e3, "word 3: got 0x%08x, want 0x%08x", out[3], e3);
}

/* The known-answer vectors of Random123's kat_vectors for philox4x32_10. */
Test(rng, philox_known_answers) {
  check_philox(0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
  check_philox(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff,
               0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd);
  check_philox(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0,
               0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1);
}

/* The layout every generator (and the CUDA code) must share: counter =
 * (index lo, index hi, stream, 0), key = (seed lo, seed hi), top 24 bits. */
Test(rng, uniform_is_top_24_bits_of_documented_block) {
  const uint64_t seed = 0x0123456789abcdefull, index = 0x0000000500000007ull;
  const uint32_t stream = 42;
  const uint32_t counter[4] = {7, 5, stream, 0};
  const uint32_t key[2] = {0x89abcdefu, 0x01234567u};
  uint32_t out[4];
  flrt_philox4x32(counter, key, out);
  cr_assert_eq(flrt_uniform(seed, stream, index), (float)(out[0] >> 8) * 0x1p-24f);
}

Test(rng, uniform_range_and_moments) {
  float *u = alloc_floats(N_SAMPLES);
  for (size_t i = 0; i < N_SAMPLES; i++) {
    u[i] = flrt_uniform(7, 1, i);
    cr_assert(u[i] >= 0.0f && u[i] < 1.0f, "u[%zu] = %g outside [0, 1)", i, u[i]);
    cr_assert_eq(u[i], flrt_uniform(7, 1, i), "not a pure function of the index");
  }
  double mean, var;
  moments(u, N_SAMPLES, &mean, &var);
  cr_assert(fabs(mean - 0.5) < 0.005, "mean %g", mean);
  cr_assert(fabs(var - 1.0 / 12.0) < 0.002, "variance %g", var);
  free(u);
}

Test(rng, fill_uniform_matches_elementwise_and_stays_in_range) {
  const float lo = -0.25f, hi = 0.75f;
  float *x = alloc_floats(N_SAMPLES);
  flrt_fill_uniform(x, N_SAMPLES, lo, hi, 99, 3);
  for (size_t i = 0; i < N_SAMPLES; i++) {
    cr_assert(x[i] >= lo && x[i] < hi, "x[%zu] = %g outside [%g, %g)", i, x[i], lo, hi);
    cr_assert_float_eq(x[i], lo + (hi - lo) * flrt_uniform(99, 3, i), 1e-6);
  }
  double mean, var;
  moments(x, N_SAMPLES, &mean, &var);
  cr_assert(fabs(mean - 0.25) < 0.005, "mean %g", mean);
  cr_assert(fabs(var - 1.0 / 12.0) < 0.002, "variance %g", var);
  /* A prefix fill gives the same values: each element depends only on its index. */
  float head[10];
  flrt_fill_uniform(head, 10, lo, hi, 99, 3);
  for (int i = 0; i < 10; i++) cr_assert_eq(head[i], x[i]);
  free(x);
}

Test(rng, seeds_and_streams_give_different_sequences) {
  float a[64], b[64], c[64];
  flrt_fill_uniform(a, 64, 0, 1, 1, 0);
  flrt_fill_uniform(b, 64, 0, 1, 2, 0);
  flrt_fill_uniform(c, 64, 0, 1, 1, 1);
  int same_ab = 0, same_ac = 0;
  for (int i = 0; i < 64; i++) {
    same_ab += a[i] == b[i];
    same_ac += a[i] == c[i];
  }
  cr_assert_lt(same_ab, 3);
  cr_assert_lt(same_ac, 3);
}

Test(rng, normal_moments_and_tails) {
  float *x = alloc_floats(N_SAMPLES);
  flrt_fill_normal(x, N_SAMPLES, 1.5f, 2.0f, 12345, 4);
  double mean, var;
  moments(x, N_SAMPLES, &mean, &var);
  cr_assert(fabs(mean - 1.5) < 0.035, "mean %g", mean);
  cr_assert(fabs(var - 4.0) < 0.1, "variance %g", var);
  size_t beyond = 0;
  for (size_t i = 0; i < N_SAMPLES; i++) {
    cr_assert(isfinite(x[i]));
    beyond += fabs(x[i] - 1.5) > 4.0;
  }
  /* P(|z| > 2) = 0.0455 */
  double frac = (double)beyond / N_SAMPLES;
  cr_assert(fabs(frac - 0.0455) < 0.004, "fraction beyond 2 stddev %g", frac);
  free(x);
}

Test(rng, truncated_normal_stays_within_two_stddev) {
  const float mean = -0.5f, sd = 0.1f;
  float *x = alloc_floats(N_SAMPLES);
  float *plain = alloc_floats(N_SAMPLES);
  flrt_fill_truncated_normal(x, N_SAMPLES, mean, sd, 77, 5);
  flrt_fill_normal(plain, N_SAMPLES, mean, sd, 77, 5);
  size_t near_bound = 0, redrawn = 0;
  for (size_t i = 0; i < N_SAMPLES; i++) {
    cr_assert(fabsf(x[i] - mean) <= 2.0f * sd * (1.0f + 1e-6f), "x[%zu] = %g", i, x[i]);
    near_bound += fabsf(x[i] - mean) > 1.9f * sd;
    /* Inside the bounds the truncated normal is the normal itself. */
    if (fabsf(plain[i] - mean) <= 1.99f * sd) cr_assert_eq(x[i], plain[i]);
    else redrawn++;
  }
  cr_assert_gt(near_bound, 0, "no values near the bound: not a normal shape");
  cr_assert_gt(redrawn, N_SAMPLES / 40);
  double m, var;
  moments(x, N_SAMPLES, &m, &var);
  /* Variance of a standard normal truncated to [-2, 2]: 0.77374. */
  cr_assert(fabs(m - mean) < 0.002, "mean %g", m);
  cr_assert(fabs(var / (sd * sd) - 0.77374) < 0.02, "variance ratio %g", var / (sd * sd));
  free(x);
  free(plain);
}

Test(rng, dropout_mask_values_and_fraction) {
  const float keep = 0.3f;
  float *m = alloc_floats(N_SAMPLES);
  flrt_dropout_mask(m, N_SAMPLES, keep, 2024, 9, 0);
  size_t kept = 0;
  for (size_t i = 0; i < N_SAMPLES; i++) {
    cr_assert(m[i] == 0.0f || m[i] == 1.0f / keep, "m[%zu] = %g", i, m[i]);
    kept += m[i] != 0.0f;
  }
  double frac = (double)kept / N_SAMPLES;
  cr_assert(fabs(frac - keep) < 0.01, "kept fraction %g", frac);
  free(m);
}

Test(rng, dropout_mask_depends_on_run_and_only_on_args) {
  const size_t n = 4096;
  float *a = alloc_floats(n), *b = alloc_floats(n), *c = alloc_floats(n), *d = alloc_floats(n);
  flrt_dropout_mask(a, n, 0.5f, 1, 2, 10);
  flrt_dropout_mask(b, n, 0.5f, 1, 2, 10);
  flrt_dropout_mask(c, n, 0.5f, 1, 2, 11);
  flrt_dropout_mask(d, n, 0.5f, 1, 2, 10 + (1ull << 32));
  size_t diff_run = 0, diff_high = 0;
  for (size_t i = 0; i < n; i++) {
    cr_assert_eq(a[i], b[i], "same arguments gave different masks at %zu", i);
    diff_run += a[i] != c[i];
    diff_high += a[i] != d[i];
  }
  /* Independent masks at keep 0.5 differ in about half the places. */
  cr_assert(diff_run > n / 3 && diff_run < 2 * n / 3, "%zu differences", diff_run);
  cr_assert(diff_high > n / 3 && diff_high < 2 * n / 3, "%zu differences", diff_high);
  free(a);
  free(b);
  free(c);
  free(d);
}

Test(rng, dropout_mask_edge_probabilities) {
  float m[1000];
  flrt_dropout_mask(m, 1000, 1.0f, 3, 0, 0);
  for (int i = 0; i < 1000; i++) cr_assert_eq(m[i], 1.0f);
  flrt_dropout_mask(m, 1000, 0.0f, 3, 0, 0);
  for (int i = 0; i < 1000; i++) cr_assert_eq(m[i], 0.0f);
}
