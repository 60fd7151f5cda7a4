/* bench_cuda.c - times the generated CUDA Deep MNIST training step (batch 50) on the GPU, as the driver runs it.
 *
 * Built by tests/gpu/check.sh against `flowc emit --device cuda` sources. The
 * data set (synthetic, 1000 images) is uploaded once; each step stages 50
 * rows and runs mnist_deep_train_step with NULL data feeds, so the batch is
 * gathered on the GPU and the step replays its CUDA graph; the step returns
 * the loss and accuracy, so each timed step ends with the GPU idle. Also
 * times the same step fed from host memory. Prints "name value" lines. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>

#include "bench_util.h"
#include "mnist_deep.h"

enum { BATCH = 50, EXAMPLES = 1000, MAX_STEPS = 100000 };

int main(int argc, char **argv) {
  int steps = argc > 1 ? atoi(argv[1]) : 1000;
  if (steps < 10 || steps > MAX_STEPS) steps = 1000;
  static float images[EXAMPLES * 784], onehot[EXAMPLES * 10];
  static uint8_t labels[EXAMPLES];
  static double t[MAX_STEPS];
  bench_fill_batch(images, onehot, EXAMPLES, 1);
  for (int i = 0; i < EXAMPLES; i++)
    for (int c = 0; c < 10; c++)
      if (onehot[i * 10 + c] > 0.5f) labels[i] = (uint8_t)c;
  flrt_datasets data = {{EXAMPLES, 784, 10, images, labels}, {0, 784, 10, NULL, NULL}, {0, 784, 10, NULL, NULL}};
  mnist_deep *m = mnist_deep_new(1);
  if (!m) return 1;
  if (mnist_deep_upload_data(m, &data)) {
    fprintf(stderr, "bench_cuda: %s\n", mnist_deep_error(m));
    return 1;
  }
  int64_t rows[BATCH];
  float loss = 0, acc = 0;
  for (int i = 0; i < steps + 20; i++) {
    for (int r = 0; r < BATCH; r++) rows[r] = (i * BATCH + r) % EXAMPLES;
    double start = bench_now_ms();
    if (mnist_deep_stage_rows(m, mnist_deep_TRAIN_SPLIT, rows, BATCH) ||
        mnist_deep_train_step(m, BATCH, NULL, NULL, 0.5f, &loss, &acc)) {
      fprintf(stderr, "bench_cuda: %s\n", mnist_deep_error(m));
      return 1;
    }
    if (i >= 20) t[i - 20] = bench_now_ms() - start; /* the first steps warm up and capture */
  }
  double mean = 0;
  for (int i = 0; i < steps; i++) mean += t[i] / steps;
  const double staged_ms = bench_median(t, steps);
  for (int i = 0; i < steps + 20; i++) {
    double start = bench_now_ms();
    if (mnist_deep_train_step(m, BATCH, images + (i % 20) * BATCH * 784, onehot + (i % 20) * BATCH * 10, 0.5f, &loss,
                              &acc)) {
      fprintf(stderr, "bench_cuda: %s\n", mnist_deep_error(m));
      return 1;
    }
    if (i >= 20) t[i - 20] = bench_now_ms() - start;
  }
  const double host_ms = bench_median(t, steps);
  printf("device %s\ntrain_step_ms %.4f\ntrain_step_mean_ms %.4f\ntrain_step_host_feed_ms %.4f\nstep_gflop %.4f\nloss %.4f\n",
         mnist_deep_device(m), staged_ms, mean, host_ms, mnist_deep_train_step_flops(BATCH, false) / 1e9, loss);
  mnist_deep_free(m);
  return 0;
}
