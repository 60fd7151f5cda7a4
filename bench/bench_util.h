/* bench_util.h - timing helpers shared by the C benchmarks: medians of repeats. */
#ifndef FLOWC_BENCH_UTIL_H
#define FLOWC_BENCH_UTIL_H

#include <stdlib.h>
#include <time.h>

static double bench_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int bench_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double bench_median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, bench_cmp);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Deterministic pseudo-random images in [0, 1) and one-hot labels. */
static void bench_fill_batch(float *images, float *labels, int n, unsigned seed) {
  for (int i = 0; i < n * 784; i++) {
    seed = seed * 1664525u + 1013904223u;
    images[i] = (float)(seed >> 8) / 16777216.0f;
  }
  for (int i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    for (int c = 0; c < 10; c++) labels[i * 10 + c] = (int)((seed >> 8) % 10) == c ? 1.0f : 0.0f;
  }
}

#endif
