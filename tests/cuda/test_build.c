/* test_build.c - flowc build --device cuda without a GPU: the host code compiles and links, and says why it cannot run.
 *
 * The programs link NVRTC and cuBLAS from the toolkit and load the driver at
 * start-up, so here (no driver) they must stop with the "no NVIDIA GPU"
 * message and exit status 1, not crash; with the toolkit's stub libcuda they
 * must name CUDA_ERROR_STUB_LIBRARY. Flags and data errors come first: --help
 * needs no GPU. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_test_util.h"

static const char *const examples[] = {"line_fit", "basic_usage", "mnist_softmax", "mnist_deep"};

/* A scratch folder of this file's own: tests run in parallel. */
static const char *scratch(const char *test, const char *example) {
  char name[256];
  snprintf(name, sizeof name, "cuda_%s_%s", test, example);
  return e2e_scratch(name);
}

Test(cuda_build, programs_link_and_report_the_missing_gpu, .timeout = 300) {
  cu_require_toolkit();
  char stub[2300];
  snprintf(stub, sizeof stub, "%s/lib64/stubs/libcuda.so", cu_toolkit());
  for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++) {
    const char *dir = scratch("run", examples[i]);
    const char *prog = cu_build(dir, examples[i], examples[i], NULL);
    char *out = NULL;
    const char *data = e2e_digits_dir() ? e2e_digits_dir() : "/nonexistent";
    int rc = e2e_run(&out, "FLOWC_LIBCUDA=/nonexistent/libcuda.so.1 '%s' --data '%s' --validation 0 --steps 2", prog,
                     data);
    if (e2e_digits_dir() || i < 2) { /* a model with data stops at the data first without it */
      cr_assert_eq(rc, 1, "%s: expected exit status 1 without a GPU, got %d:\n%s", examples[i], rc, out);
      cr_assert(strstr(out, "no NVIDIA GPU or driver found (") && strstr(out, "---> HINT:"),
                "%s: the message should say that no GPU or driver was found:\n%s", examples[i], out);
    }
    free(out);
    if (access(stub, R_OK) == 0) {
      rc = e2e_run(&out, "FLOWC_LIBCUDA='%s' '%s' --data '%s' --validation 0 --steps 2", stub, prog, data);
      if (e2e_digits_dir() || i < 2) {
        cr_assert_eq(rc, 1, "%s with the stub driver: exit status %d:\n%s", examples[i], rc, out);
        cr_assert(strstr(out, "cuInit: CUDA_ERROR_STUB_LIBRARY") && strstr(out, "stub"),
                  "%s: the stub library should be named:\n%s", examples[i], out);
      }
      free(out);
    }
    rc = e2e_run(&out, "'%s' --help", prog);
    cr_assert_eq(rc, 0, "%s --help needs no GPU:\n%s", examples[i], out);
    free(out);
  }
}

/* The system's own libcuda.so.1 is absent on machines without a GPU: then the
 * plain program (no FLOWC_LIBCUDA) must say so too. */
Test(cuda_build, without_a_driver_library_the_program_says_so) {
  cu_require_toolkit();
  char *out = NULL;
  if (e2e_run(&out, "ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1 '") == 0) {
    free(out);
    cr_skip_test("this machine has an NVIDIA driver library");
  }
  free(out);
  const char *dir = e2e_scratch("cuda_no_driver");
  const char *prog = cu_build(dir, "basic_usage", "basic_usage", NULL);
  int rc = e2e_run(&out, "'%s'", prog);
  cr_assert_eq(rc, 1, "got %d:\n%s", rc, out);
  cr_assert(strstr(out, "no NVIDIA GPU or driver found (libcuda.so.1"), "%s", out);
  free(out);
}

Test(cuda_build, generated_host_code_compiles_with_all_warnings_as_errors, .timeout = 240) {
  cu_require_toolkit();
  for (size_t i = 0; i < sizeof examples / sizeof examples[0]; i++) {
    const char *dir = scratch("warnings", examples[i]);
    const char *src = cu_emit(dir, examples[i], NULL);
    char *out = NULL;
    int rc = e2e_run(&out, "cd '%s' && cc -std=c99 -Wall -Wextra -Werror -DFLRT_NO_BLAS -I'%s/include' -c *.c", src,
                     cu_toolkit());
    cr_assert_eq(rc, 0, "the CUDA host code of %s does not compile cleanly:\n%s", examples[i], out);
    free(out);
    rc = e2e_run(&out, "cd '%s' && make -s CUDA_HOME='%s'", src, cu_toolkit());
    cr_assert_eq(rc, 0, "the emitted Makefile of %s fails:\n%s", examples[i], out);
    free(out);
  }
}

/* CPU programs never carry the CUDA runtime; CUDA ones carry all of it. */
Test(cuda_build, the_cuda_runtime_is_written_only_for_cuda) {
  const char *dir = e2e_scratch("cuda_runtime_files");
  char *out = NULL;
  int rc = e2e_run(&out, "'%s/compiler/flowc' emit '%s/examples/line_fit.flow' -o '%s/cpu' 2>/dev/null && ls '%s/cpu'",
                   e2e_build_root(), e2e_source_root(), dir, dir);
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(!strstr(out, "cuda") && !strstr(out, "philox"), "a CPU build has CUDA files:\n%s", out);
  free(out);
  rc = e2e_run(&out, "'%s/compiler/flowc' emit '%s/examples/line_fit.flow' --device cuda -o '%s/gpu' 2>/dev/null && "
                    "ls '%s/gpu'",
               e2e_build_root(), e2e_source_root(), dir, dir);
  cr_assert_eq(rc, 0, "%s", out);
  static const char *const expected[] = {"flrt_cuda_rt.c", "flowc_rt_cuda.h", "flowc_rt_philox.h", "flrt_cuda_headers.c",
                                         "line_fit_kernels.cu", "line_fit_cuda.c", "line_fit.h", "main.c", "Makefile",
                                         "flrt_rng.c"};
  for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
    cr_assert(strstr(out, expected[i]), "%s is missing from the CUDA build:\n%s", expected[i], out);
  free(out);
}

Test(cuda_build, usage_and_toolkit_errors) {
  const char *dir = e2e_scratch("cuda_errors");
  char *out = NULL;
  int rc = e2e_run(&out, "'%s/compiler/flowc' build '%s/examples/line_fit.flow' --device tpu -o '%s/x'",
                   e2e_build_root(), e2e_source_root(), dir);
  cr_assert_eq(rc, 2, "%s", out);
  cr_assert(strstr(out, "--device is cpu or cuda, not 'tpu'"), "%s", out);
  free(out);
  rc = e2e_run(&out, "'%s/compiler/flowc' build '%s/examples/line_fit.flow' --nvcc -o '%s/x'", e2e_build_root(),
               e2e_source_root(), dir);
  cr_assert_eq(rc, 2, "%s", out);
  cr_assert(strstr(out, "--nvcc goes with --device cuda"), "%s", out);
  free(out);
  rc = e2e_run(&out, "CUDA_HOME=/nonexistent/cuda '%s/compiler/flowc' build '%s/examples/line_fit.flow' --device cuda "
                     "-o '%s/x'",
               e2e_build_root(), e2e_source_root(), dir);
  cr_assert_eq(rc, 1, "%s", out);
  cr_assert(strstr(out, "the CUDA toolkit was not found: /nonexistent/cuda/include/cuda.h is missing (CUDA_HOME") &&
                strstr(out, "install the CUDA toolkit") && strstr(out, "CUDA_HOME"),
            "the message should name the missing toolkit and CUDA_HOME:\n%s", out);
  free(out);
  cr_assert(access("/nonexistent/cuda", F_OK) != 0);
}

Test(cuda_build, nvcc_compiles_the_kernels_ahead_of_time, .timeout = 300) {
  cu_require_toolkit();
  char nvcc[2300];
  snprintf(nvcc, sizeof nvcc, "%s/bin/nvcc", cu_toolkit());
  if (access(nvcc, X_OK) != 0) cr_skip_test("the toolkit has no nvcc");
  const char *dir = e2e_scratch("cuda_nvcc");
  const char *prog = cu_build(dir, "mnist_deep", "mnist_deep", "--nvcc");
  char *out = NULL;
  /* the fatbin is inside the program (the emulated test runs it) */
  int rc = e2e_run(&out, "nm '%s' | grep -c ' mnist_deep_fatbin'", prog);
  cr_assert_eq(rc, 0, "the program holds no fatbin:\n%s", out);
  free(out);
}
