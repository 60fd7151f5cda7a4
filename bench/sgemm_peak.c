/* sgemm_peak.c - the machine's measured single-precision GEMM rate through OpenBLAS: the ceiling. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "flowc_rt.h"

extern char *openblas_get_corename(void);

/* sgemm_peak THREADS: the GFLOP/s; sgemm_peak --kernels: OpenBLAS's kernel set. */
int main(int argc, char **argv) {
  flrt_select_blas_kernels(argv);
  if (argc > 1 && strcmp(argv[1], "--kernels") == 0) {
    printf("%s\n", openblas_get_corename());
    return 0;
  }
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  flrt_set_threads(threads);
  const int n = 2048, repeats = 7;
  float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
  if (!a || !b || !c) return 1;
  for (int i = 0; i < n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
  double t[16];
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
  for (int r = 0; r < repeats; r++) {
    double start = bench_now_ms();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    t[r] = bench_now_ms() - start;
  }
  double ms = bench_median(t, repeats);
  printf("%.1f\n", 2.0 * n * (double)n * n / (ms * 1e6));
  free(a);
  free(b);
  free(c);
  return 0;
}
