/* batch.c - next_batch over per-epoch shuffles that are a pure function of (seed, epoch). */
#include "flowc_rt.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* Philox stream reserved for shuffles; model variables and dropout use small
 * stream numbers chosen by the compiler, far from this one. */
#define FLRT_SHUFFLE_STREAM 0x5EED0001u

/* Fisher-Yates over 0..n-1. Step i (from n-1 down to 1) draws j in [0, i]
 * from Philox block counter = (i lo, i hi, FLRT_SHUFFLE_STREAM, epoch),
 * key = (seed lo, seed hi), as j = floor(word0 * (i + 1) / 2^32). The bias of
 * this mapping is below (i + 1) / 2^32, far under anything a shuffle shows. */
static void batch_shuffle(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch) {
  const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    const uint32_t counter[4] = {(uint32_t)(uint64_t)i, (uint32_t)((uint64_t)i >> 32),
                                 FLRT_SHUFFLE_STREAM, (uint32_t)(uint64_t)epoch};
    uint32_t r[4];
    flrt_philox4x32(counter, key, r);
    int64_t j = (int64_t)(((uint64_t)r[0] * (uint64_t)(i + 1)) >> 32);
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}

int flrt_batcher_init(flrt_batcher *b, const flrt_split *split, uint64_t seed) {
  memset(b, 0, sizeof *b);
  if (!split || split->n <= 0) return -1;
  b->perm = malloc((size_t)split->n * sizeof *b->perm);
  if (!b->perm) return -1;
  b->split = split;
  b->seed = seed;
  batch_shuffle(b->perm, split->n, seed, 0);
  return 0;
}

void flrt_batcher_free(flrt_batcher *b) {
  free(b->perm);
  memset(b, 0, sizeof *b);
}

void flrt_batcher_seek(flrt_batcher *b, int64_t consumed) {
  const int64_t n = b->split->n;
  if (consumed < 0) consumed = 0;
  int64_t epoch = consumed / n;
  int64_t pos = consumed % n;
  if (epoch != b->epoch) batch_shuffle(b->perm, n, b->seed, epoch);
  b->epoch = epoch;
  b->pos = pos;
  b->consumed = consumed;
}

/* Writes example `index` of s as row `row` of images and onehot (either NULL). */
static void batch_copy_example(const flrt_split *s, int64_t index, int64_t row, float *images,
                               float *onehot) {
  if (images) {
    float *dst = images + (size_t)row * (size_t)s->features;
    const uint8_t *src = s->pixels + (size_t)index * (size_t)s->features;
    for (int64_t j = 0; j < s->features; j++) dst[j] = (float)src[j] / 255.0f;
  }
  if (onehot) {
    float *dst = onehot + (size_t)row * (size_t)s->classes;
    for (int c = 0; c < s->classes; c++) dst[c] = 0.0f;
    dst[s->labels[index]] = 1.0f;
  }
}

/* The epoch boundary is crossed lazily: a batch that ends exactly at the end
 * of an epoch leaves pos == n, and the next call reshuffles. A batch larger
 * than the split simply spans several epochs. */
void flrt_batcher_next(flrt_batcher *b, int64_t batch, float *images, float *onehot) {
  const flrt_split *s = b->split;
  for (int64_t row = 0; row < batch; row++) {
    if (b->pos >= s->n) {
      b->epoch++;
      b->pos = 0;
      batch_shuffle(b->perm, s->n, b->seed, b->epoch);
    }
    batch_copy_example(s, b->perm[b->pos], row, images, onehot);
    b->pos++;
  }
  b->consumed += batch;
}

void flrt_batcher_next_indices(flrt_batcher *b, int64_t batch, int64_t *indices) {
  const flrt_split *s = b->split;
  for (int64_t row = 0; row < batch; row++) {
    if (b->pos >= s->n) {
      b->epoch++;
      b->pos = 0;
      batch_shuffle(b->perm, s->n, b->seed, b->epoch);
    }
    indices[row] = b->perm[b->pos++];
  }
  b->consumed += batch;
}

void flrt_split_slice(const flrt_split *s, int64_t start, int64_t count, float *images,
                      float *onehot) {
  assert(start >= 0 && count >= 0 && start + count <= s->n);
  for (int64_t row = 0; row < count; row++)
    batch_copy_example(s, start + row, row, images, onehot);
}
