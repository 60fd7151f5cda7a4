/* test_batcher.c - next_batch: epochs, the epoch boundary, seeking for resume, seeds. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flowc_rt.h"

#define FEATURES 3

/* Example i has pixel bytes (i mod 256, i / 256, 7 i mod 256) and label
 * i % 10, so a copied row says which example it came from. */
static uint8_t pixel_of(int64_t i, int j) {
  return (uint8_t)(j == 0 ? i & 255 : j == 1 ? (i >> 8) & 255 : (i * 7) & 255);
}
static flrt_split make_split(int64_t n) {
  flrt_split s;
  s.n = n;
  s.features = FEATURES;
  s.classes = 10;
  s.pixels = malloc((size_t)n * FEATURES);
  s.labels = malloc((size_t)n);
  cr_assert(s.pixels && s.labels);
  for (int64_t i = 0; i < n; i++) {
    for (int j = 0; j < FEATURES; j++) s.pixels[i * FEATURES + j] = pixel_of(i, j);
    s.labels[i] = (uint8_t)(i % 10);
  }
  return s;
}

static void free_split(flrt_split *s) {
  free(s->pixels);
  free(s->labels);
}

/* Draws `batch` examples and returns their indices (checking rows agree). */
static void draw(flrt_batcher *b, int64_t batch, int64_t *indices) {
  float *images = malloc((size_t)batch * FEATURES * sizeof(float));
  float *onehot = malloc((size_t)batch * 10 * sizeof(float));
  cr_assert(images && onehot);
  flrt_batcher_next(b, batch, images, onehot);
  for (int64_t r = 0; r < batch; r++) {
    int64_t i = lroundf(images[r * FEATURES] * 255.0f) + 256 * lroundf(images[r * FEATURES + 1] * 255.0f);
    cr_assert(i >= 0 && i < b->split->n);
    for (int j = 0; j < FEATURES; j++)
      cr_assert_eq(images[r * FEATURES + j], (float)pixel_of(i, j) / 255.0f, "row %lld", (long long)r);
    for (int c = 0; c < 10; c++)
      cr_assert_eq(onehot[r * 10 + c], c == i % 10 ? 1.0f : 0.0f, "one-hot of row %lld",
                   (long long)r);
    indices[r] = i;
  }
  free(images);
  free(onehot);
}

static void assert_permutation(const int64_t *idx, int64_t n) {
  char *seen = calloc((size_t)n, 1);
  cr_assert_not_null(seen);
  for (int64_t k = 0; k < n; k++) {
    cr_assert(!seen[idx[k]], "example %lld appears twice in one epoch", (long long)idx[k]);
    seen[idx[k]] = 1;
  }
  free(seen);
}

Test(batcher, every_example_once_per_epoch_and_epochs_differ) {
  const int64_t n = 100;
  flrt_split s = make_split(n);
  flrt_batcher b;
  cr_assert_eq(flrt_batcher_init(&b, &s, 42), 0);
  int64_t epochs[3][100];
  for (int e = 0; e < 3; e++) {
    for (int k = 0; k < 10; k++) draw(&b, 10, &epochs[e][k * 10]);
    assert_permutation(epochs[e], n);
  }
  cr_assert_eq(b.consumed, 300);
  cr_assert_neq(memcmp(epochs[0], epochs[1], sizeof epochs[0]), 0, "epoch 1 was not reshuffled");
  cr_assert_neq(memcmp(epochs[1], epochs[2], sizeof epochs[0]), 0, "epoch 2 was not reshuffled");
  int in_order = 1;
  for (int64_t k = 0; k < n; k++) in_order &= epochs[0][k] == k;
  cr_assert(!in_order, "the first epoch is not shuffled");
  flrt_batcher_free(&b);
  free_split(&s);
}

Test(batcher, batch_crossing_the_epoch_boundary) {
  const int64_t n = 10;
  flrt_split s = make_split(n);
  flrt_batcher stepped, single;
  cr_assert_eq(flrt_batcher_init(&stepped, &s, 7), 0);
  cr_assert_eq(flrt_batcher_init(&single, &s, 7), 0);
  /* Batches of 4 over 10 examples: the third takes 2 from epoch 0 and 2
   * from epoch 1. The stream must equal one drawn an example at a time. */
  int64_t by4[40], by1[40];
  for (int k = 0; k < 10; k++) draw(&stepped, 4, &by4[4 * k]);
  for (int k = 0; k < 40; k++) draw(&single, 1, &by1[k]);
  cr_assert_eq(memcmp(by4, by1, sizeof by4), 0);
  for (int e = 0; e < 4; e++) assert_permutation(&by4[10 * e], n);
  cr_assert_eq(stepped.epoch, 3);
  flrt_batcher_free(&stepped);
  flrt_batcher_free(&single);
  free_split(&s);
}

Test(batcher, batch_larger_than_the_split_spans_epochs) {
  const int64_t n = 7;
  flrt_split s = make_split(n);
  flrt_batcher b;
  cr_assert_eq(flrt_batcher_init(&b, &s, 3), 0);
  int64_t idx[21];
  draw(&b, 21, idx);
  for (int e = 0; e < 3; e++) assert_permutation(&idx[7 * e], n);
  flrt_batcher_free(&b);
  free_split(&s);
}

Test(batcher, seek_reproduces_the_batches_of_an_uninterrupted_run) {
  const int64_t n = 23, batch = 5;
  flrt_split s = make_split(n);
  flrt_batcher b;
  cr_assert_eq(flrt_batcher_init(&b, &s, 1234), 0);
  int64_t stream[20 * 5];
  for (int k = 0; k < 20; k++) draw(&b, batch, &stream[k * batch]);
  flrt_batcher_free(&b);

  /* Resume after every number of steps, seeking backwards on a used
   * batcher (positions inside epochs 0 to 4). */
  flrt_batcher r;
  cr_assert_eq(flrt_batcher_init(&r, &s, 1234), 0);
  for (int start = 19; start >= 0; start--) {
    flrt_batcher_seek(&r, start * batch);
    cr_assert_eq(r.consumed, start * batch);
    for (int k = start; k < 20; k++) {
      int64_t got[5];
      draw(&r, batch, got);
      cr_assert_eq(memcmp(got, &stream[k * batch], sizeof got), 0,
                   "resumed at step %d, step %d differs", start, k);
    }
  }
  /* Exactly at an epoch boundary, where a stepped batcher has not yet
   * reshuffled but a sought one starts the next epoch. */
  flrt_batcher_seek(&r, 2 * n);
  int64_t got[5];
  draw(&r, 5, got);
  cr_assert_eq(memcmp(got, &stream[2 * n], sizeof got), 0);
  flrt_batcher_free(&r);
  free_split(&s);
}

Test(batcher, seeds_decide_the_order) {
  const int64_t n = 50;
  flrt_split s = make_split(n);
  flrt_batcher a, b, c;
  cr_assert_eq(flrt_batcher_init(&a, &s, 1), 0);
  cr_assert_eq(flrt_batcher_init(&b, &s, 2), 0);
  cr_assert_eq(flrt_batcher_init(&c, &s, 1), 0);
  int64_t ia[50], ib[50], ic[50];
  draw(&a, 50, ia);
  draw(&b, 50, ib);
  draw(&c, 50, ic);
  cr_assert_neq(memcmp(ia, ib, sizeof ia), 0, "seeds 1 and 2 gave the same order");
  cr_assert_eq(memcmp(ia, ic, sizeof ia), 0, "the same seed gave different orders");
  flrt_batcher_free(&a);
  flrt_batcher_free(&b);
  flrt_batcher_free(&c);
  free_split(&s);
}

Test(batcher, null_outputs_still_advance) {
  const int64_t n = 10;
  flrt_split s = make_split(n);
  flrt_batcher a, b;
  cr_assert_eq(flrt_batcher_init(&a, &s, 5), 0);
  cr_assert_eq(flrt_batcher_init(&b, &s, 5), 0);
  flrt_batcher_next(&a, 6, NULL, NULL);
  int64_t skip[6], x[3], y[3];
  draw(&b, 6, skip);
  draw(&a, 3, x);
  draw(&b, 3, y);
  cr_assert_eq(memcmp(x, y, sizeof x), 0);
  flrt_batcher_free(&a);
  flrt_batcher_free(&b);
  free_split(&s);
}

Test(batcher, empty_split_is_refused) {
  flrt_split s;
  memset(&s, 0, sizeof s);
  flrt_batcher b;
  cr_assert_eq(flrt_batcher_init(&b, &s, 0), -1);
  cr_assert_null(b.perm);
}
