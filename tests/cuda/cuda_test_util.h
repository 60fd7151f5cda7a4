/* cuda_test_util.h - what the CUDA backend's tests share: the toolkit, emitted sources, the GPU emulator. */
#ifndef FLOWC_CUDA_TEST_UTIL_H
#define FLOWC_CUDA_TEST_UTIL_H

#include "e2e_util.h"

/* $CUDA_HOME, else /usr/local/cuda, when it has nvrtc.h; else NULL. */
const char *cu_toolkit(void);
/* Skips the test, saying why, when the toolkit is missing. */
void cu_require_toolkit(void);

/* flowc emit EXAMPLE --device cuda into dir/src (extra: more flowc
 * arguments); returns that folder. EXAMPLE is a name in examples/ or a path. */
const char *cu_emit(const char *dir, const char *example, const char *extra);
/* flowc build EXAMPLE --device cuda -o dir/PROGRAM; returns the program. */
const char *cu_build(const char *dir, const char *example, const char *program, const char *extra);
/* The same for the CPU (flowc build). */
const char *cu_build_cpu(const char *dir, const char *example, const char *program);

/* The emulator of tests/cuda/emu: a fake driver and cuBLAS (built into
 * dir/emu) and the kernels of an emitted model compiled for the CPU. */
typedef struct {
  char dir[4096];     /* holds libcublas.so.13 (for LD_LIBRARY_PATH) */
  char driver[4200];  /* the fake libcuda, for FLOWC_LIBCUDA */
  char kernels[4200]; /* the model's kernels library, for FLOWC_EMU_KERNELS */
  char cache[4200];   /* XDG_CACHE_HOME: NVRTC's cache */
} cu_emulator;

/* Builds the fakes and the kernels of the sources in src_dir (model NAME);
 * skips the test when there is no C++ compiler. */
void cu_emulator_make(cu_emulator *emu, const char *dir, const char *src_dir, const char *model);
/* Runs a shell command with the emulator in its environment (extra_env:
 * more VAR=value words, or ""). Output and exit status as e2e_run. */
int cu_run_emulated(const cu_emulator *emu, const char *extra_env, char **output, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes a small MNIST-format data set (64 training and 16 test images of
 * the real digits when they are beside the checkout, else patterned ones)
 * into dir/data; returns that folder. */
const char *cu_small_data(const char *dir);

/* Runs compare_checkpoints (built next to the tests) on two checkpoints;
 * returns its exit status and its report in *output. */
int cu_compare(const char *expected, const char *actual, const char *options, char **output);

#endif
