/* flowc_rt_cuda.h - the CUDA part of the runtime: the device, NVRTC, cuBLAS, copies, launches, graphs.
 *
 * What the host code of a `flowc build --device cuda` program calls (C99). It
 * is written next to the generated code only for CUDA builds, never into CPU
 * programs. The driver API is loaded with dlopen (libcuda.so.1) at the first
 * use, so that a machine without a driver gets a message instead of a loader
 * error; NVRTC and cuBLAS are linked from the CUDA toolkit.
 *
 * Errors: every function that can fail writes a message into d->error (the
 * call, file:line, the CUDA error's name and text, and a hint) and returns -1.
 * Stream work (copies, launches, GEMMs) is asynchronous and returns nothing:
 * the first failure sticks (d->failed), later stream calls do nothing, and
 * flcu_sync or flcu_run report it. Generated code checks once per run.
 *
 * Environment: FLOWC_CUDA_DEVICE=N picks a GPU (default 0);
 * FLOWC_CUDA_GRAPHS=0 runs every step eagerly instead of replaying a captured
 * CUDA graph (for debugging); FLOWC_CUDA_TF32=1 lets cuBLAS use TF32 tensor
 * cores (faster, 10-bit mantissas: no longer close to the CPU's results);
 * FLOWC_CUDA_QUIET=1 drops the start-up line;
 * FLOWC_LIBCUDA=PATH loads another driver library (the tests' emulator). The
 * NVRTC cache lives in $XDG_CACHE_HOME/flowc or ~/.cache/flowc. */
#ifndef FLOWC_RT_CUDA_H
#define FLOWC_RT_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda.h>

/* The kernels of a model: CUDA C for NVRTC, and headers it includes. */
typedef struct {
  const char *name;   /* the source's file name, in messages ("mnist_deep_kernels.cu") */
  const char *source; /* CUDA C */
  const char *const *header_names;
  const char *const *header_texts;
  int nheaders;
  /* --nvcc: the same kernels compiled ahead of time (a fatbin for sm_80 and
   * sm_90 plus PTX), or NULL to compile with NVRTC at start-up. */
  const unsigned char *fatbin;
  size_t fatbin_size;
} flcu_program;

/* The headers the kernels include, as written by flowc next to the runtime
 * (flrt_cuda_headers.c): flowc_rt_philox.h. */
extern const char *const flcu_header_names[];
extern const char *const flcu_header_texts[];
extern const int flcu_header_count;

/* A device buffer that only grows. */
typedef struct {
  CUdeviceptr ptr;
  size_t cap;
} flcu_buffer;

/* Page-locked host memory: copies from it can be captured in a CUDA graph. */
typedef struct {
  unsigned char *ptr;
  size_t cap;
} flcu_host_buffer;

/* One captured run: a step is captured once per key (the batch size, where its
 * data comes from, the addresses of the buffers) and replayed after that. */
enum { FLCU_GRAPH_SLOTS = 4 };
typedef struct {
  int64_t key[4];
  CUgraphExec exec; /* NULL until captured */
  int runs;         /* eager runs so far (the first one warms up) */
  uint64_t last_use;
  bool used;
} flcu_graph_slot;

typedef struct {
  flcu_graph_slot slots[FLCU_GRAPH_SLOTS];
  uint64_t clock;
} flcu_graph_cache;

typedef struct {
  CUdevice device;
  CUcontext context; /* the primary context, which cuBLAS shares */
  CUstream stream;
  CUmodule module;
  cublasHandle_t blas;
  CUdeviceptr blas_workspace;
  int major, minor; /* compute capability */
  char name[128];
  bool open;
  bool graphs;    /* replay captured CUDA graphs (FLOWC_CUDA_GRAPHS=0: no) */
  bool capturing; /* inside flcu_run's capture */
  bool failed;    /* a stream call failed: the rest of the run is skipped */
  char error[1024];
} flcu_device;

/* Initialises the driver, opens the GPU, creates a stream and a cuBLAS handle,
 * and loads the kernels: from p->fatbin when given, else compiled by NVRTC for
 * this GPU's architecture (cached on disk, keyed by a hash of the source, the
 * headers, the architecture and NVRTC's version). No driver, no GPU, a driver
 * too old for this toolkit, an architecture NVRTC cannot target, or a failed
 * compile each give a message naming what is missing. */
int flcu_open(flcu_device *d, const flcu_program *p);
void flcu_close(flcu_device *d);
int flcu_function(flcu_device *d, const char *name, CUfunction *out);

/* "NVIDIA H100 80GB HBM3 (sm_90)". */
const char *flcu_describe(const flcu_device *d, char *buf, size_t cap);

/* Memory. flcu_reserve* grow a buffer to at least `bytes` and return 1 when it
 * moved (graphs that captured the old address are stale), 0 when it did not,
 * -1 on failure. Contents are not kept. */
int flcu_alloc(flcu_device *d, CUdeviceptr *p, size_t bytes);
void flcu_free(flcu_device *d, CUdeviceptr *p);
int flcu_reserve(flcu_device *d, flcu_buffer *b, size_t bytes);
void flcu_release(flcu_device *d, flcu_buffer *b);
int flcu_reserve_host(flcu_device *d, flcu_host_buffer *b, size_t bytes);
void flcu_release_host(flcu_device *d, flcu_host_buffer *b);
/* Synchronous copies from and to ordinary (pageable) host memory. */
int flcu_copy_in(flcu_device *d, CUdeviceptr dst, const void *src, size_t bytes);
int flcu_copy_out(flcu_device *d, void *dst, CUdeviceptr src, size_t bytes);

/* Stream work: asynchronous, sticky errors (see the top). src and dst host
 * pointers of uploads and downloads must be page-locked (flcu_host_buffer). */
void flcu_upload(flcu_device *d, CUdeviceptr dst, const void *src, size_t bytes);
void flcu_download(flcu_device *d, void *dst, CUdeviceptr src, size_t bytes);
void flcu_copy(flcu_device *d, CUdeviceptr dst, CUdeviceptr src, size_t bytes);
void flcu_zero(flcu_device *d, CUdeviceptr dst, size_t bytes);
/* Launches a kernel with block (bx, by) threads; `name` is for messages. */
void flcu_launch(flcu_device *d, CUfunction f, const char *name, unsigned grid_x, unsigned grid_y,
                 unsigned grid_z, unsigned block_x, unsigned block_y, void **args);
/* Blocks for n elements at `threads` per block, for grid-stride loops. */
unsigned flcu_blocks(int64_t n, unsigned threads);
/* Chunks of rows a reduction's first pass splits `rows` into (1 to 1024): a
 * pure function of its arguments, so that the plan (scratch) and the launch
 * (grid) agree. */
unsigned flcu_chunks(int64_t rows, int64_t rows_per_chunk);
/* C (m x n) = op(A) (m x k) @ op(B) (k x n), row-major like cblas_sgemm with
 * alpha 1 and beta 0, through cuBLAS (which is column-major: it computes
 * C^T = op(B)^T op(A)^T, the same memory). k = 0 gives zeros. */
void flcu_sgemm(flcu_device *d, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                CUdeviceptr a, int64_t lda, CUdeviceptr b, int64_t ldb, CUdeviceptr c, int64_t ldc);
/* C += alpha op(A) op(B), the same way: a weight updated in place by
 * gradient descent as its gradient is computed (alpha = -learning rate). */
void flcu_sgemm_update(flcu_device *d, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                       CUdeviceptr a, int64_t lda, CUdeviceptr b, int64_t ldb, float alpha, CUdeviceptr c,
                       int64_t ldc);
/* Waits for the stream; returns -1 with d->error after any failure in the run. */
int flcu_sync(flcu_device *d);

/* Runs enqueue(context), which issues one run's work on d->stream: eagerly the
 * first time `key` is seen (a warm-up), then captured once as a CUDA graph and
 * replayed from then on. A capture that fails switches graphs off (with a
 * warning) and runs eagerly; so does a NULL cache. Does not wait for the stream. */
int flcu_run(flcu_device *d, flcu_graph_cache *cache, const int64_t key[4],
             void (*enqueue)(void *context), void *context);
void flcu_graphs_clear(flcu_device *d, flcu_graph_cache *cache);

/* NVRTC alone, which needs no GPU: compiles p for `arch` ("sm_80" gives a
 * cubin, "compute_80" PTX). *image is malloc'd. On failure err holds NVRTC's
 * log. */
int flcu_compile(const flcu_program *p, const char *arch, void **image, size_t *size, char *err,
                 size_t errlen);

#endif
