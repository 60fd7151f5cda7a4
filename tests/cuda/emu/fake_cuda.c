/* fake_cuda.c - the tests' stand-in for libcuda.so.1: a GPU that is the CPU.
 *
 * A generated CUDA program loads it as its driver (FLOWC_LIBCUDA); its cuBLAS
 * is fake_cublas.c (through LD_LIBRARY_PATH), which sends GEMMs here. Only
 * driver symbols (and emu_*) are exported: NVRTC looks for a driver among the
 * process's global symbols, so cuBLAS's stand-in must not carry them. Device memory is host memory; kernels come from
 * the library FLOWC_EMU_KERNELS names (NAME_kernels.cu compiled as C++ with
 * cuda_emu.h), whatever image cuModuleLoadData is given (NVRTC's real cubin);
 * stream work runs at once, or is recorded between cuStreamBeginCapture and
 * cuStreamEndCapture and replayed by cuGraphLaunch, with parameters copied at
 * capture as CUDA does. It checks what it can of the rules a real driver
 * enforces: launch limits, copies within allocations, page-locked host memory
 * for copies captured in a graph; fresh device memory is filled with NaNs so
 * that a read before a write shows. FLOWC_EMU_STATS=1 prints counts at exit;
 * FLOWC_EMU_SM=XY sets the compute capability (default 80). */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_abi.h"

/* ---- bookkeeping ---------------------------------------------------------------- */

typedef struct {
  uintptr_t start;
  size_t size;
  bool pinned; /* cuMemAllocHost */
} region;

static region *regions;
static int nregions, regions_cap;

static struct {
  long launches, graphs_captured, graph_launches, gemms, copies;
  const char *image;
} stats;

static void print_stats(void) {
  fprintf(stderr, "emu: %ld kernel launches, %ld GEMMs, %ld copies, %ld graphs captured, %ld graph launches; "
                  "module: %s\n",
          stats.launches, stats.gemms, stats.copies, stats.graphs_captured, stats.graph_launches,
          stats.image ? stats.image : "none");
}

static void add_region(void *p, size_t size, bool pinned) {
  if (nregions == regions_cap) {
    regions_cap = regions_cap ? 2 * regions_cap : 64;
    regions = realloc(regions, (size_t)regions_cap * sizeof *regions);
    if (!regions) abort();
  }
  regions[nregions++] = (region){(uintptr_t)p, size, pinned};
}

static void remove_region(uintptr_t p) {
  for (int i = 0; i < nregions; i++)
    if (regions[i].start == p) {
      regions[i] = regions[--nregions];
      return;
    }
}

/* The region holding [p, p + size), or NULL. */
static const region *find_region(uintptr_t p, size_t size, bool pinned) {
  for (int i = 0; i < nregions; i++)
    if (regions[i].pinned == pinned && p >= regions[i].start && p + size <= regions[i].start + regions[i].size)
      return &regions[i];
  return NULL;
}

static CUresult complain(CUresult r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static CUresult complain(CUresult r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("emu: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return r;
}

/* ---- recorded work ------------------------------------------------------------- */

typedef enum { OP_COPY, OP_SET, OP_KERNEL, OP_GEMM } op_kind;

typedef struct {
  op_kind kind;
  void *dst;
  const void *src;
  size_t bytes;
  int value;
  const emu_kernel *kernel;
  unsigned grid[3], block[3];
  unsigned char *args; /* the parameters' bytes, copied at capture */
  void **argv;
  int ta, tb; /* CUBLAS_OP_N or CUBLAS_OP_T: 0 or 1 */
  int m, n, k, lda, ldb, ldc;
  float alpha, beta;
  const float *a, *b;
  float *c;
} op;

struct CUgraph_st {
  op *ops;
  int count, cap;
};

struct CUgraphExec_st {
  struct CUgraph_st graph;
};

static struct CUgraph_st *capture; /* the graph being recorded, or NULL */

/* The kernels library and its emu_run (cuModuleLoadData loads them). */
static void *kernels_library;
static int (*run_kernel)(const emu_kernel *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                         void *const *);

static void record(const op *o) {
  if (capture->count == capture->cap) {
    capture->cap = capture->cap ? 2 * capture->cap : 64;
    capture->ops = realloc(capture->ops, (size_t)capture->cap * sizeof *capture->ops);
    if (!capture->ops) abort();
  }
  capture->ops[capture->count++] = *o;
}

static void gemm(const op *o) {
  /* column-major, as cuBLAS: C = alpha op(A) op(B) + beta C */
  for (int j = 0; j < o->n; j++)
    for (int i = 0; i < o->m; i++) {
      double sum = 0.0;
      for (int p = 0; p < o->k; p++) {
        float a = !o->ta ? o->a[i + (size_t)p * o->lda] : o->a[p + (size_t)i * o->lda];
        float b = !o->tb ? o->b[p + (size_t)j * o->ldb] : o->b[j + (size_t)p * o->ldb];
        sum += (double)a * (double)b;
      }
      float *c = &o->c[i + (size_t)j * o->ldc];
      *c = (float)((double)o->alpha * sum + (o->beta != 0.0f ? (double)o->beta * (double)*c : 0.0));
    }
}

static CUresult perform(const op *o) {
  switch (o->kind) {
  case OP_COPY: stats.copies++; memmove(o->dst, o->src, o->bytes); return CUDA_SUCCESS;
  case OP_SET: memset(o->dst, o->value, o->bytes); return CUDA_SUCCESS;
  case OP_GEMM: stats.gemms++; gemm(o); return CUDA_SUCCESS;
  case OP_KERNEL:
    stats.launches++;
    return run_kernel(o->kernel, o->grid[0], o->grid[1], o->grid[2], o->block[0], o->block[1], o->block[2], o->argv)
               ? CUDA_ERROR_LAUNCH_FAILED
               : CUDA_SUCCESS;
  }
  return CUDA_ERROR_UNKNOWN;
}

static CUresult issue(const op *o) {
  if (capture) {
    record(o);
    return CUDA_SUCCESS;
  }
  return perform(o);
}

/* ---- the driver API ------------------------------------------------------------- */

CUresult cuInit(unsigned int flags) {
  (void)flags;
  if (getenv("FLOWC_EMU_STATS")) atexit(print_stats);
  return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int *version) {
  *version = CUDA_VERSION;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
  *count = 1;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  *device = ordinal;
  return ordinal == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
  (void)dev;
  snprintf(name, (size_t)len, "flowc CPU emulator");
  return CUDA_SUCCESS;
}

static int compute_capability(void) {
  const char *sm = getenv("FLOWC_EMU_SM");
  return sm && *sm ? atoi(sm) : 80;
}

CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attribute, CUdevice dev) {
  (void)dev;
  *value = 0;
  if (attribute == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) *value = compute_capability() / 10;
  if (attribute == CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR) *value = compute_capability() % 10;
  return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev) {
  (void)dev;
  *bytes = (size_t)16 << 30;
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *context, CUdevice dev) {
  (void)dev;
  *context = (CUcontext)(uintptr_t)0x100;
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
  (void)dev;
  return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext context) {
  (void)context;
  return CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream *stream, unsigned int flags) {
  (void)flags;
  *stream = (CUstream)(uintptr_t)0x200;
  return CUDA_SUCCESS;
}

CUresult cuStreamDestroy(CUstream stream) {
  (void)stream;
  return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream stream) {
  (void)stream;
  return capture ? complain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamSynchronize while capturing")
                 : CUDA_SUCCESS;
}

CUresult cuMemAlloc(CUdeviceptr *ptr, size_t bytes) {
  if (capture) return complain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemAlloc while capturing");
  if (!bytes) return CUDA_ERROR_INVALID_VALUE;
  void *p = aligned_alloc(256, (bytes + 255) & ~(size_t)255);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  memset(p, 0xFF, bytes); /* NaN: a value read before it was written shows */
  add_region(p, bytes, false);
  *ptr = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}

CUresult cuMemFree(CUdeviceptr ptr) {
  remove_region((uintptr_t)ptr);
  free((void *)(uintptr_t)ptr);
  return CUDA_SUCCESS;
}

CUresult cuMemAllocHost(void **ptr, size_t bytes) {
  *ptr = malloc(bytes ? bytes : 1);
  if (!*ptr) return CUDA_ERROR_OUT_OF_MEMORY;
  add_region(*ptr, bytes, true);
  return CUDA_SUCCESS;
}

CUresult cuMemFreeHost(void *ptr) {
  remove_region((uintptr_t)ptr);
  free(ptr);
  return CUDA_SUCCESS;
}

static CUresult check_device(const char *what, CUdeviceptr p, size_t bytes) {
  if (!find_region((uintptr_t)p, bytes, false))
    return complain(CUDA_ERROR_INVALID_VALUE, "%s: %zu bytes at device address %#llx are not inside an allocation",
                    what, bytes, (unsigned long long)p);
  return CUDA_SUCCESS;
}

/* Captured copies must come from (or go to) page-locked memory. */
static CUresult check_host(const char *what, const void *p, size_t bytes) {
  if (capture && !find_region((uintptr_t)p, bytes, true))
    return complain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "%s: a captured copy with pageable host memory", what);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t bytes) {
  CUresult r = check_device("cuMemcpyHtoD", dst, bytes);
  if (r) return r;
  if (capture) return complain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemcpyHtoD while capturing");
  memcpy((void *)(uintptr_t)dst, src, bytes);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t bytes) {
  CUresult r = check_device("cuMemcpyDtoH", src, bytes);
  if (r) return r;
  if (capture) return complain(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemcpyDtoH while capturing");
  memcpy(dst, (void *)(uintptr_t)src, bytes);
  return CUDA_SUCCESS;
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t bytes, CUstream stream) {
  (void)stream;
  CUresult r = check_device("cuMemcpyHtoDAsync", dst, bytes);
  if (!r) r = check_host("cuMemcpyHtoDAsync", src, bytes);
  if (r) return r;
  op o = {.kind = OP_COPY, .dst = (void *)(uintptr_t)dst, .src = src, .bytes = bytes};
  return issue(&o);
}

CUresult cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  (void)stream;
  CUresult r = check_device("cuMemcpyDtoHAsync", src, bytes);
  if (!r) r = check_host("cuMemcpyDtoHAsync", dst, bytes);
  if (r) return r;
  op o = {.kind = OP_COPY, .dst = dst, .src = (const void *)(uintptr_t)src, .bytes = bytes};
  return issue(&o);
}

CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream) {
  (void)stream;
  CUresult r = check_device("cuMemcpyDtoDAsync", dst, bytes);
  if (!r) r = check_device("cuMemcpyDtoDAsync", src, bytes);
  if (r) return r;
  op o = {.kind = OP_COPY, .dst = (void *)(uintptr_t)dst, .src = (const void *)(uintptr_t)src, .bytes = bytes};
  return issue(&o);
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t count, CUstream stream) {
  (void)stream;
  CUresult r = check_device("cuMemsetD8Async", dst, count);
  if (r) return r;
  op o = {.kind = OP_SET, .dst = (void *)(uintptr_t)dst, .bytes = count, .value = value};
  return issue(&o);
}


CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  const unsigned char *bytes = image;
  if (!bytes) return CUDA_ERROR_INVALID_IMAGE;
  if (bytes[0] == 0x7f && bytes[1] == 'E' && bytes[2] == 'L' && bytes[3] == 'F') stats.image = "cubin";
  else if (bytes[0] == 0x50 && bytes[1] == 0xed && bytes[2] == 0x55 && bytes[3] == 0xba) stats.image = "fatbin";
  else if (strstr((const char *)bytes, ".target")) stats.image = "ptx";
  else return complain(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: neither a cubin, a fatbin nor PTX");
  const char *path = getenv("FLOWC_EMU_KERNELS");
  if (!kernels_library && (!path || !(kernels_library = dlopen(path, RTLD_NOW | RTLD_LOCAL))))
    return complain(CUDA_ERROR_FILE_NOT_FOUND, "FLOWC_EMU_KERNELS: %s", path ? dlerror() : "not set");
  void *symbol = dlsym(kernels_library, "emu_run");
  memcpy(&run_kernel, &symbol, sizeof symbol);
  if (!run_kernel) return complain(CUDA_ERROR_NOT_FOUND, "%s has no emu_run", path);
  *module = (CUmodule)kernels_library;
  return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule module) {
  (void)module;
  return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *function, CUmodule module, const char *name) {
  const emu_kernel *(*find)(const char *) = NULL;
  void *symbol = dlsym((void *)module, "emu_find");
  memcpy(&find, &symbol, sizeof symbol);
  const emu_kernel *k = find ? find(name) : NULL;
  if (!k) return complain(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: no kernel %s", name);
  *function = (CUfunction)(uintptr_t)k;
  return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int grid_x, unsigned int grid_y, unsigned int grid_z,
                        unsigned int block_x, unsigned int block_y, unsigned int block_z, unsigned int shared,
                        CUstream stream, void **params, void **extra) {
  (void)stream;
  (void)extra;
  const emu_kernel *k = (const emu_kernel *)(uintptr_t)f;
  /* the limits of every GPU flowc targets */
  if (!grid_x || !grid_y || !grid_z || grid_x > 2147483647u || grid_y > 65535 || grid_z > 65535 || !block_x ||
      !block_y || !block_z || block_x > 1024 || block_y > 1024 || block_z > 64 ||
      (unsigned long)block_x * block_y * block_z > 1024 || shared > 48 * 1024)
    return complain(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel %s: grid %ux%ux%u, block %ux%ux%u is not launchable",
                    k->name, grid_x, grid_y, grid_z, block_x, block_y, block_z);
  size_t total = 0;
  for (int i = 0; i < k->nparams; i++) total += k->sizes[i];
  if (total > 4096) return complain(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel %s: %zu bytes of parameters", k->name, total);
  op o = {.kind = OP_KERNEL, .kernel = k, .grid = {grid_x, grid_y, grid_z}, .block = {block_x, block_y, block_z}};
  if (!capture) {
    o.argv = params;
    return perform(&o);
  }
  o.args = malloc(total + 1);
  o.argv = calloc((size_t)k->nparams + 1, sizeof *o.argv);
  if (!o.args || !o.argv) return CUDA_ERROR_OUT_OF_MEMORY;
  size_t at = 0;
  for (int i = 0; i < k->nparams; i++) {
    memcpy(o.args + at, params[i], k->sizes[i]);
    o.argv[i] = o.args + at;
    at += k->sizes[i];
  }
  record(&o);
  return CUDA_SUCCESS;
}

CUresult cuStreamBeginCapture(CUstream stream, CUstreamCaptureMode mode) {
  (void)stream;
  (void)mode;
  if (capture) return CUDA_ERROR_ILLEGAL_STATE;
  capture = calloc(1, sizeof *capture);
  return capture ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuStreamEndCapture(CUstream stream, CUgraph *graph) {
  (void)stream;
  if (!capture) return CUDA_ERROR_ILLEGAL_STATE;
  *graph = capture;
  capture = NULL;
  stats.graphs_captured++;
  return CUDA_SUCCESS;
}

CUresult cuGraphInstantiate(CUgraphExec *exec, CUgraph graph, unsigned long long flags) {
  (void)flags;
  struct CUgraphExec_st *e = calloc(1, sizeof *e);
  if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
  /* the executable graph takes the ops over; cuGraphDestroy frees the shell */
  e->graph = *graph;
  graph->ops = NULL;
  graph->count = graph->cap = 0;
  *exec = e;
  return CUDA_SUCCESS;
}

CUresult cuGraphDestroy(CUgraph graph) {
  free(graph->ops);
  free(graph);
  return CUDA_SUCCESS;
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
  (void)stream;
  if (capture) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  stats.graph_launches++;
  for (int i = 0; i < exec->graph.count; i++) {
    CUresult r = perform(&exec->graph.ops[i]);
    if (r) return r;
  }
  return CUDA_SUCCESS;
}

CUresult cuGraphExecDestroy(CUgraphExec exec) {
  for (int i = 0; i < exec->graph.count; i++) {
    free(exec->graph.ops[i].args);
    free(exec->graph.ops[i].argv);
  }
  free(exec->graph.ops);
  free(exec);
  return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **name) {
  static char text[64];
  snprintf(text, sizeof text, "CUDA_ERROR_%d", (int)error);
  *name = text;
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
  (void)error;
  *text = "(emulated)";
  return CUDA_SUCCESS;
}

/* ---- for the cuBLAS stand-in (fake_cublas.c) ------------------------------------
 * cuBLAS shares the stream, so its GEMMs go through here: run now or recorded. */

int emu_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda, const float *b,
             int ldb, float beta, float *c, int ldc) {
  size_t a_end = (size_t)(trans_a ? m : k) * (size_t)lda;
  size_t b_end = (size_t)(trans_b ? k : n) * (size_t)ldb;
  size_t c_end = (size_t)n * (size_t)ldc;
  if (check_device("cublasSgemm A", (CUdeviceptr)(uintptr_t)a, a_end * sizeof(float)) ||
      check_device("cublasSgemm B", (CUdeviceptr)(uintptr_t)b, b_end * sizeof(float)) ||
      check_device("cublasSgemm C", (CUdeviceptr)(uintptr_t)c, c_end * sizeof(float)))
    return -1;
  op o = {.kind = OP_GEMM, .ta = trans_a != 0, .tb = trans_b != 0,
          .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .ldc = ldc, .alpha = alpha, .beta = beta, .a = a, .b = b,
          .c = c};
  return issue(&o) == CUDA_SUCCESS ? 0 : -1;
}

int emu_device_memory(const void *p, size_t bytes) { return find_region((uintptr_t)p, bytes, false) != NULL; }
