/* test_nvrtc.c - every kernel flowc generates for the four examples compiles with NVRTC for sm_80 and sm_90.
 *
 * NVRTC needs no GPU, so this runs everywhere the CUDA toolkit is installed:
 * the kernels of each example (NAME_kernels.cu, with the Philox header it
 * includes) go through the runtime's own compile function (cuda_rt.c's
 * flcu_compile, what a program does at start-up), once per architecture.
 * Also: the host code's table of kernel names matches the source's kernels,
 * and a compile error comes back with NVRTC's log. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_test_util.h"

#ifndef FLOWC_TEST_NO_CUDA
#include "flowc_rt_cuda.h"
#endif

#ifdef FLOWC_TEST_NO_CUDA
Test(nvrtc, kernels_compile_for_sm80_and_sm90) {
  cr_skip_test("built without the CUDA toolkit (no nvrtc.h and libnvrtc at configure time)");
}
#else
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot read %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *text = malloc((size_t)n + 1);
  cr_assert(text);
  cr_assert_eq(fread(text, 1, (size_t)n, f), (size_t)n);
  text[n] = '\0';
  fclose(f);
  return text;
}

static const char *const examples[] = {"line_fit", "basic_usage", "mnist_softmax", "mnist_deep"};

/* Every KERNEL_x of the host's enum is an extern "C" __global__ x in the
 * source, and the other way round. */
static void check_names(const char *host, const char *cu, const char *example) {
  int in_cu = 0, in_host = 0;
  for (const char *at = cu; (at = strstr(at, "extern \"C\" __global__ void ")) != NULL; in_cu++) {
    at += strlen("extern \"C\" __global__ void ");
    char name[300], entry[320];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(at, "("), at);
    snprintf(entry, sizeof entry, "  KERNEL_%s,\n", name);
    cr_assert(strstr(host, entry), "%s: kernel %s is not in the host's table", example, name);
  }
  for (const char *at = host; (at = strstr(at, "\n  KERNEL_")) != NULL; in_host++) at += 10;
  /* KERNEL_COUNT is the table's last line */
  cr_assert_eq(in_host - 1, in_cu, "%s: the host knows %d kernels, the source has %d", example, in_host - 1, in_cu);
}

/* The kernels of each example (fused, as flowc builds them, and with -O0 one
 * per node) through NVRTC for both architectures. */
static void compile_all(const char *flags, const char *tag) {
  cu_require_toolkit();
  for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++) {
    char name[128];
    snprintf(name, sizeof name, "cuda_nvrtc_%s_%s", tag, examples[i]);
    const char *dir = e2e_scratch(name);
    const char *src = cu_emit(dir, examples[i], flags);
    char path[4400];
    snprintf(path, sizeof path, "%s/%s_kernels.cu", src, examples[i]);
    char *cu = slurp(path);
    snprintf(path, sizeof path, "%s/flowc_rt_philox.h", src);
    char *philox = slurp(path);
    snprintf(path, sizeof path, "%s/%s_cuda.c", src, examples[i]);
    char *host = slurp(path);
    check_names(host, cu, examples[i]);
    const char *names[] = {"flowc_rt_philox.h"}, *texts[] = {philox};
    flcu_program program = {examples[i], cu, names, texts, 1, NULL, 0};
    static const char *const archs[] = {"sm_80", "sm_90"};
    for (size_t a = 0; a < 2; a++) {
      void *image = NULL;
      size_t size = 0;
      static char err[1 << 16];
      int rc = flcu_compile(&program, archs[a], &image, &size, err, sizeof err);
      cr_assert_eq(rc, 0, "%s's kernels do not compile for %s:\n%s", examples[i], archs[a], err);
      cr_assert(size > 64 && memcmp(image, "\177ELF", 4) == 0, "%s for %s: not a cubin", examples[i], archs[a]);
      free(image);
    }
    free(cu);
    free(philox);
    free(host);
  }
}

Test(nvrtc, kernels_compile_for_sm80_and_sm90, .timeout = 300) { compile_all(NULL, "fused"); }

Test(nvrtc, unfused_kernels_compile_for_sm80_and_sm90, .timeout = 300) { compile_all("-O0", "unfused"); }

Test(nvrtc, a_compile_error_comes_with_the_log) {
  cu_require_toolkit();
  flcu_program program = {"broken.cu", "extern \"C\" __global__ void k(float *x) { x[0] = undeclared; }\n", NULL,
                          NULL, 0, NULL, 0};
  void *image = NULL;
  size_t size = 0;
  char err[4096];
  cr_assert_neq(flcu_compile(&program, "sm_80", &image, &size, err, sizeof err), 0);
  cr_assert(image == NULL);
  cr_assert(strstr(err, "broken.cu") && strstr(err, "undeclared"), "the message should carry NVRTC's log:\n%s", err);
}
#endif
