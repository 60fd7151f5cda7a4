/* bench_deep.c - times the generated Deep MNIST code: a training step (batch 50) and batch-1 inference. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "bench_util.h"
#include "mnist_deep.h"

int main(int argc, char **argv) {
  flrt_select_blas_kernels(argv);
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  int steps = argc > 2 ? atoi(argv[2]) : 20;
  flrt_set_threads(threads);
  flrt_flush_denormals(); /* as the generated programs do */
  enum { BATCH = 50 };
  static float images[BATCH * 784], labels[BATCH * 10];
  bench_fill_batch(images, labels, BATCH, 1);
  mnist_deep *m = mnist_deep_new(1);
  if (!m) return 1;
  double t[1000];
  float loss = 0, acc = 0;
  for (int i = 0; i < 3; i++) /* warm-up: arena, caches, BLAS threads */
    if (mnist_deep_train_step(m, BATCH, images, labels, 0.5f, &loss, &acc)) return 1;
  for (int i = 0; i < steps; i++) {
    double start = bench_now_ms();
    mnist_deep_train_step(m, BATCH, images, labels, 0.5f, &loss, &acc);
    t[i] = bench_now_ms() - start;
  }
  double step_ms = bench_median(t, steps);
  int infers = 200;
  for (int i = 0; i < 10; i++) mnist_deep_accuracy(m, 1, images, labels, 1.0f, &acc);
  for (int i = 0; i < infers; i++) {
    double start = bench_now_ms();
    mnist_deep_accuracy(m, 1, images + (i % BATCH) * 784, labels + (i % BATCH) * 10, 1.0f, &acc);
    t[i] = bench_now_ms() - start;
  }
  double infer_ms = bench_median(t, infers);
  printf("train_step_ms %.3f\ninfer_ms %.4f\nstep_gflop %.4f\nstep_gemm_gflop %.4f\nloss %.4f\n", step_ms, infer_ms,
         mnist_deep_train_step_flops(BATCH, false) / 1e9, mnist_deep_train_step_flops(BATCH, true) / 1e9, loss);
  mnist_deep_free(m);
  return 0;
}
