/* cuda_emu.h - compiles flowc's generated CUDA kernels as C++ and runs them on the CPU (the tests' GPU emulator).
 *
 * Included before NAME_kernels.cu (g++ -include), it maps CUDA's keywords and
 * built-in variables to plain C++: a launch runs its blocks one after another
 * and, within a block, its threads one after another. Kernels that call
 * __syncthreads run each thread as a coroutine (ucontext) that yields at the
 * barrier, so shared-memory reductions behave as on a GPU. What it cannot
 * show: races between threads, the GPU's memory model, timing. The test that
 * builds the kernels library ends the file with EMU_TABLE(EMU_KERNEL(name,
 * syncs), ...). */
#ifndef FLOWC_CUDA_EMU_H
#define FLOWC_CUDA_EMU_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <ucontext.h>
#include <utility>

#include "emu_abi.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
/* one block runs at a time, so a static array is the block's shared memory */
#define __shared__ static

struct emu_uint3 {
  unsigned x, y, z;
};

static emu_uint3 threadIdx, blockIdx, blockDim, gridDim;

static inline float __int_as_float(int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

/* ---- threads of a block as coroutines ---------------------------------------- */

enum { EMU_RUNNING, EMU_AT_BARRIER, EMU_DONE };

struct emu_thread {
  ucontext_t context;
  emu_uint3 index;
  int state;
};

static struct {
  ucontext_t scheduler;
  emu_thread *current;
  const emu_kernel *kernel;
  void *const *params;
} emu_state;

/* Not inlined: a call the compiler cannot see through, so that the kernel
 * reloads threadIdx (which the scheduler changes) after it. */
__attribute__((noinline)) static void __syncthreads() {
  emu_thread *t = emu_state.current;
  if (!t) {
    std::fprintf(stderr, "emu: __syncthreads in a kernel registered without barriers\n");
    std::abort();
  }
  t->state = EMU_AT_BARRIER;
  swapcontext(&t->context, &emu_state.scheduler);
  threadIdx = emu_state.current->index;
}

static void emu_thread_main() {
  emu_state.kernel->call(emu_state.params);
  emu_state.current->state = EMU_DONE; /* uc_link returns to the scheduler */
}

enum { EMU_STACK = 64 << 10 };

/* One block of a kernel with barriers: every thread runs until the barrier,
 * then all are released, until all have returned. */
static int emu_block_with_barriers(unsigned count) {
  static emu_thread *threads;
  static char *stacks;
  static unsigned allocated;
  if (count > allocated) {
    std::free(threads);
    std::free(stacks);
    threads = static_cast<emu_thread *>(std::calloc(count, sizeof *threads));
    stacks = static_cast<char *>(std::malloc((size_t)count * EMU_STACK));
    if (!threads || !stacks) std::abort();
    allocated = count;
  }
  unsigned t = 0;
  for (unsigned z = 0; z < blockDim.z; z++)
    for (unsigned y = 0; y < blockDim.y; y++)
      for (unsigned x = 0; x < blockDim.x; x++, t++) {
        emu_thread *th = &threads[t];
        th->index = {x, y, z};
        th->state = EMU_RUNNING;
        getcontext(&th->context);
        th->context.uc_stack.ss_sp = stacks + (size_t)t * EMU_STACK;
        th->context.uc_stack.ss_size = EMU_STACK;
        th->context.uc_link = &emu_state.scheduler;
        makecontext(&th->context, emu_thread_main, 0);
      }
  for (;;) {
    unsigned done = 0, waiting = 0;
    for (unsigned i = 0; i < count; i++) {
      emu_thread *th = &threads[i];
      if (th->state == EMU_DONE) continue;
      th->state = EMU_RUNNING;
      emu_state.current = th;
      threadIdx = th->index;
      swapcontext(&emu_state.scheduler, &th->context);
    }
    for (unsigned i = 0; i < count; i++) {
      done += threads[i].state == EMU_DONE;
      waiting += threads[i].state == EMU_AT_BARRIER;
    }
    emu_state.current = nullptr;
    if (done == count) return 0;
    if (done > 0 && waiting > 0) {
      std::fprintf(stderr, "emu: kernel %s: %u threads wait at __syncthreads while %u have returned\n",
                   emu_state.kernel->name, waiting, done);
      return -1;
    }
  }
}

extern "C" int emu_run(const emu_kernel *k, unsigned grid_x, unsigned grid_y, unsigned grid_z, unsigned block_x,
                       unsigned block_y, unsigned block_z, void *const *params) {
  gridDim = {grid_x, grid_y, grid_z};
  blockDim = {block_x, block_y, block_z};
  emu_state.kernel = k;
  emu_state.params = params;
  for (unsigned bz = 0; bz < grid_z; bz++)
    for (unsigned by = 0; by < grid_y; by++)
      for (unsigned bx = 0; bx < grid_x; bx++) {
        blockIdx = {bx, by, bz};
        if (k->syncs) {
          if (emu_block_with_barriers(block_x * block_y * block_z)) return -1;
          continue;
        }
        for (unsigned z = 0; z < block_z; z++)
          for (unsigned y = 0; y < block_y; y++)
            for (unsigned x = 0; x < block_x; x++) {
              threadIdx = {x, y, z};
              k->call(params);
            }
      }
  return 0;
}

/* ---- the kernel table ---------------------------------------------------------- */

template <typename... A, std::size_t... I>
static void emu_invoke(void (*fn)(A...), void *const *params, std::index_sequence<I...>) {
  fn(*static_cast<std::remove_cv_t<std::remove_reference_t<A>> *>(params[I])...);
}

template <typename... A> struct emu_signature {
  template <void (*F)(A...)> static void call(void *const *params) {
    emu_invoke(F, params, std::index_sequence_for<A...>{});
  }
};

template <typename... A> static emu_signature<A...> emu_signature_of(void (*)(A...)) { return {}; }

template <typename... A>
static emu_kernel emu_describe(void (*)(A...), const char *name, int syncs, void (*call)(void *const *)) {
  emu_kernel k{};
  k.name = name;
  k.nparams = (int)sizeof...(A);
  const std::size_t sizes[] = {sizeof(A)..., 0};
  for (int i = 0; i < k.nparams; i++) k.sizes[i] = sizes[i];
  k.syncs = syncs;
  k.call = call;
  return k;
}

#define EMU_KERNEL(name, syncs)                                                                    \
  emu_describe(name, #name, syncs, decltype(emu_signature_of(name))::template call<name>)

#define EMU_TABLE(...)                                                                             \
  static const emu_kernel emu_kernels[] = {__VA_ARGS__};                                           \
  extern "C" const emu_kernel *emu_find(const char *name) {                                        \
    for (const emu_kernel &k : emu_kernels)                                                        \
      if (std::strcmp(k.name, name) == 0) return &k;                                               \
    return nullptr;                                                                                \
  }

#endif
