/* fork_join.c - the time of an empty OpenMP parallel region on THREADS threads
 * (median of 200 batches of 1000): how far apart the machine's cores are
 * just now. On this project's VM it has read 0.4 us at some minutes and 1.1
 * at others, and the small benchmarks (the softmax regression step, 20 us of
 * work with two forks and a barrier) move with it. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static int by_value(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 2;
  enum { BATCHES = 200, REGIONS = 1000 };
  static double us[BATCHES];
  static volatile int slot[64]; /* a body the compiler keeps */
  for (int b = 0; b < BATCHES; b++) {
    const double start = omp_get_wtime();
    for (int r = 0; r < REGIONS; r++) {
#pragma omp parallel num_threads(threads)
      slot[omp_get_thread_num() & 63] = r;
    }
    us[b] = (omp_get_wtime() - start) / REGIONS * 1e6;
  }
  qsort(us, BATCHES, sizeof *us, by_value);
  printf("fork_join_us %.3f\n", us[BATCHES / 2] + 0 * slot[0]);
  return 0;
}
