/* test_philox.c - the CUDA build's random numbers and batches, checked on the host.
 *
 * The generated kernels draw dropout masks with flowc_rt_philox.h; here the
 * same header is compiled as C and compared bit for bit with rng.c, which the
 * CPU build uses: equal here means the GPU draws the CPU's masks (integer
 * arithmetic and one IEEE division, which nvcc and NVRTC do exactly as the
 * C compiler). The GPU's batches are the batcher's indices
 * (flrt_batcher_next_indices), gathered on the device: they must name the
 * rows flrt_batcher_next copies. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flowc_rt.h"
#include "flowc_rt_philox.h"

Test(philox, blocks_match_rng_c) {
  uint64_t state = 88172645463325252ull;
  for (int i = 0; i < 20000; i++) {
    uint32_t counter[4], key[2], expected[4];
    for (int k = 0; k < 4; k++) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      counter[k] = (uint32_t)state;
    }
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    key[0] = (uint32_t)state;
    key[1] = (uint32_t)(state >> 32);
    flrt_philox4x32(counter, key, expected);
    flrt_philox_words got = flrt_philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
    cr_assert(got.w0 == expected[0] && got.w1 == expected[1] && got.w2 == expected[2] && got.w3 == expected[3],
              "block %d differs", i);
  }
}

/* Every element of flrt_dropout_mask, for seeds, streams, run counters (one
 * past 2^32, where the high word moves into the key) and keep probabilities
 * (0 and below, 1, NaN) that exercise each branch. */
Test(philox, dropout_elements_match_flrt_dropout_mask) {
  static const uint64_t seeds[] = {0, 1, 42, (1ull << 40) + 7, UINT64_MAX};
  static const uint32_t streams[] = {0, 3, 17, 0x5EED0001u};
  static const uint64_t runs[] = {0, 1, 5, 12345, (1ull << 32) + 3, UINT64_MAX};
  const float keeps[] = {0.5f, 0.1f, 0.9f, 1.0f, 0.0f, -1.0f, NAN, 1.0f / 3.0f, 0.999999f};
  enum { COUNT = 3000 };
  float *mask = malloc(COUNT * sizeof *mask);
  cr_assert(mask);
  long kept = 0, total = 0;
  for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++)
    for (size_t t = 0; t < sizeof streams / sizeof streams[0]; t++)
      for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++)
        for (size_t k = 0; k < sizeof keeps / sizeof keeps[0]; k++) {
          flrt_dropout_mask(mask, COUNT, keeps[k], seeds[s], streams[t], runs[r]);
          for (uint64_t i = 0; i < COUNT; i++) {
            float element = flrt_dropout_element(seeds[s], streams[t], runs[r], i, keeps[k]);
            cr_assert(memcmp(&element, &mask[i], sizeof element) == 0,
                      "seed %llu stream %u run %llu keep %g: element %llu is %g, rng.c has %g",
                      (unsigned long long)seeds[s], streams[t], (unsigned long long)runs[r], (double)keeps[k],
                      (unsigned long long)i, (double)element, (double)mask[i]);
            kept += element != 0.0f;
            total++;
          }
        }
  free(mask);
  cr_assert(kept > total / 4 && kept < total, "the masks look degenerate: %ld of %ld kept", kept, total);
}

/* Indices far beyond one block of 2^32 elements (the counter's high word). */
Test(philox, dropout_element_uses_the_index_high_word) {
  const uint64_t index = (1ull << 32) + 5;
  const float a = flrt_dropout_element(7, 3, 2, index, 0.5f);
  uint32_t counter[4] = {5, 1, 3, 2}, key[2] = {7, 0}, words[4];
  flrt_philox4x32(counter, key, words);
  cr_assert_float_eq(a, (float)(words[0] >> 8) * 0x1p-24f < 0.5f ? 2.0f : 0.0f, 0.0f);
}

static flrt_split test_split(int64_t n, int64_t features) {
  flrt_split s = {n, features, 10, malloc((size_t)(n * features)), malloc((size_t)n)};
  cr_assert(s.pixels && s.labels);
  for (int64_t i = 0; i < n * features; i++) s.pixels[i] = (uint8_t)(i * 13 % 251);
  for (int64_t i = 0; i < n; i++) s.labels[i] = (uint8_t)((i * 7) % 10);
  return s;
}

/* Row i of `images` must be example indices[i]: the batcher walks the same
 * shuffles either way, across epoch ends and after a seek. */
Test(batcher, indices_name_the_rows_next_copies) {
  enum { N = 37, FEATURES = 3, BATCH = 10 };
  flrt_split s = test_split(N, FEATURES);
  flrt_batcher copying, indexing;
  cr_assert_eq(flrt_batcher_init(&copying, &s, 9), 0);
  cr_assert_eq(flrt_batcher_init(&indexing, &s, 9), 0);
  float images[BATCH * FEATURES], onehot[BATCH * 10];
  int64_t rows[BATCH];
  for (int call = 0; call < 40; call++) {
    if (call == 25) {
      flrt_batcher_seek(&copying, 123);
      flrt_batcher_seek(&indexing, 123);
    }
    flrt_batcher_next(&copying, BATCH, images, onehot);
    flrt_batcher_next_indices(&indexing, BATCH, rows);
    cr_assert_eq(copying.consumed, indexing.consumed);
    for (int r = 0; r < BATCH; r++) {
      cr_assert(rows[r] >= 0 && rows[r] < N);
      for (int f = 0; f < FEATURES; f++)
        cr_assert_float_eq(images[r * FEATURES + f], (float)s.pixels[rows[r] * FEATURES + f] / 255.0f, 0.0f, "call %d row %d", call, r);
      cr_assert_float_eq(onehot[r * 10 + s.labels[rows[r]]], 1.0f, 0.0f);
    }
  }
  flrt_batcher_free(&copying);
  flrt_batcher_free(&indexing);
  free(s.pixels);
  free(s.labels);
}
