/* bench_softmax.c - times the generated softmax regression training step (batch 100). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "bench_util.h"
#include "mnist_softmax.h"

int main(int argc, char **argv) {
  flrt_select_blas_kernels(argv);
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  flrt_set_threads(threads);
  flrt_flush_denormals(); /* as the generated programs do */
  enum { BATCH = 100, STEPS = 400 };
  static float images[BATCH * 784], labels[BATCH * 10];
  bench_fill_batch(images, labels, BATCH, 2);
  mnist_softmax *m = mnist_softmax_new(1);
  if (!m) return 1;
  static double t[STEPS];
  float loss = 0, acc = 0;
  for (int i = 0; i < 20; i++) mnist_softmax_train_step(m, BATCH, images, labels, &loss, &acc);
  for (int i = 0; i < STEPS; i++) {
    double start = bench_now_ms();
    mnist_softmax_train_step(m, BATCH, images, labels, &loss, &acc);
    t[i] = bench_now_ms() - start;
  }
  printf("train_step_ms %.4f\n", bench_median(t, STEPS));
  mnist_softmax_free(m);
  return 0;
}
