/* deep_weights.c - writes the Deep MNIST model's initial weights as a checkpoint, for timing the inference binary without training first. */
#include <stdio.h>

#include "mnist_deep.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: deep_weights CHECKPOINT.safetensors\n");
    return 2;
  }
  mnist_deep *m = mnist_deep_new(1);
  if (!m) return 1;
  int rc = mnist_deep_save(m, argv[1]);
  if (rc) fprintf(stderr, "deep_weights: %s\n", mnist_deep_error(m));
  mnist_deep_free(m);
  return rc ? 1 : 0;
}
