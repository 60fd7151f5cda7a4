/* emu_abi.h - what the tests' CPU emulator of a GPU shares between its kernels library and its driver.
 *
 * The generated NAME_kernels.cu is compiled as C++ for the CPU with cuda_emu.h
 * (the kernels library); fake_cuda.c stands in for libcuda.so.1 and cuBLAS
 * and runs those kernels when the program launches them. Nothing here is
 * part of flowc: it lets the tests run a CUDA program where no GPU is. */
#ifndef FLOWC_EMU_ABI_H
#define FLOWC_EMU_ABI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { EMU_MAX_PARAMS = 512 };

typedef struct emu_kernel {
  const char *name;
  int nparams;
  size_t sizes[EMU_MAX_PARAMS]; /* bytes of each parameter, for copies made at capture */
  int syncs;                    /* calls __syncthreads: its threads run as coroutines */
  /* calls the kernel once, for the thread whose indices emu_run has set */
  void (*call)(void *const *params);
} emu_kernel;

/* The kernel named `name`, or NULL (exported by the kernels library). */
const emu_kernel *emu_find(const char *name);
/* Runs a launch: every block in order, every thread of a block. Returns 0, or
 * -1 when the threads of a block disagree about __syncthreads. */
int emu_run(const emu_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
            unsigned block_y, unsigned block_z, void *const *params);

#ifdef __cplusplus
}
#endif

#endif
