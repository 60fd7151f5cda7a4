/* cuda_rt.c - the CUDA runtime of generated programs: driver loading, NVRTC with a disk cache, cuBLAS, graphs. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "flowc_rt_cuda.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nvrtc.h>

/* ---- the driver API, loaded at run time ------------------------------------
 * Linking libcuda.so.1 would make a machine without the NVIDIA driver refuse
 * to start the program with a loader error; loading it here lets the program
 * say what is missing. cuda.h maps several names to versioned symbols
 * (cuMemAlloc is cuMemAlloc_v2), so each name is looked up as the macro
 * expands it, which is the symbol the toolkit's headers were written for. */

#define FLCU_STRINGIFY_TEXT(x) #x
#define FLCU_STRINGIFY(x) FLCU_STRINGIFY_TEXT(x)

#define FLCU_DRIVER_FUNCTIONS(X)                                                                   \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName)           \
  X(cuDeviceGetAttribute) X(cuDeviceTotalMem) X(cuDevicePrimaryCtxRetain)                          \
  X(cuDevicePrimaryCtxRelease) X(cuCtxSetCurrent) X(cuStreamCreate) X(cuStreamDestroy)             \
  X(cuStreamSynchronize) X(cuMemAlloc) X(cuMemFree) X(cuMemAllocHost) X(cuMemFreeHost)             \
  X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync) X(cuMemcpyDtoDAsync)   \
  X(cuMemsetD8Async) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)                  \
  X(cuLaunchKernel) X(cuStreamBeginCapture) X(cuStreamEndCapture) X(cuGraphInstantiate)            \
  X(cuGraphLaunch) X(cuGraphExecDestroy) X(cuGraphDestroy) X(cuGetErrorName) X(cuGetErrorString)

/* __typeof__ (GCC, Clang) gives each pointer the exact prototype of cuda.h. */
#define FLCU_DRIVER_FIELD(name) __typeof__(&name) name;
static struct {
  FLCU_DRIVER_FUNCTIONS(FLCU_DRIVER_FIELD)
  void *library;
  bool tried, initialised;
  CUresult init_result;
  char problem[512]; /* why the driver could not be loaded */
} driver;

/* Loads the driver library and every function; 0, or -1 with driver.problem. */
static int driver_load(void) {
  if (driver.tried) return driver.library ? 0 : -1;
  driver.tried = true;
  const char *path = getenv("FLOWC_LIBCUDA");
  if (!path || !*path) path = "libcuda.so.1";
  driver.library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!driver.library) {
    const char *why = dlerror();
    snprintf(driver.problem, sizeof driver.problem, "%s", why ? why : path);
    return -1;
  }
  const char *missing = NULL;
#define FLCU_DRIVER_LOAD(name)                                                                     \
  if (!missing) {                                                                                  \
    void *symbol = dlsym(driver.library, FLCU_STRINGIFY(name));                                    \
    if (symbol) memcpy(&driver.name, &symbol, sizeof symbol);                                      \
    else missing = FLCU_STRINGIFY(name);                                                           \
  }
  FLCU_DRIVER_FUNCTIONS(FLCU_DRIVER_LOAD)
#undef FLCU_DRIVER_LOAD
  if (missing) {
    snprintf(driver.problem, sizeof driver.problem,
             "%s has no %s: the driver is older than this CUDA toolkit", path, missing);
    dlclose(driver.library);
    driver.library = NULL;
    return -1;
  }
  return 0;
}

/* ---- errors ------------------------------------------------------------------ */

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

static void set_error(flcu_device *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(flcu_device *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->error, sizeof d->error, fmt, ap);
  va_end(ap);
  d->failed = true;
}

/* What to do about a driver error, where there is something to say. */
static const char *driver_hint(CUresult r) {
  switch (r) {
  case CUDA_ERROR_OUT_OF_MEMORY:
    return "the GPU ran out of memory: try a smaller --batch, or stop the other programs that "
           "use it (nvidia-smi lists them)";
  case CUDA_ERROR_NO_BINARY_FOR_GPU: case CUDA_ERROR_UNSUPPORTED_PTX_VERSION:
  case CUDA_ERROR_INVALID_PTX: case CUDA_ERROR_INVALID_IMAGE:
    return "the kernels were not built for this GPU or driver: build without --nvcc (NVRTC then "
           "compiles them for this GPU at start-up), or update the NVIDIA driver";
  case CUDA_ERROR_ILLEGAL_ADDRESS: case CUDA_ERROR_LAUNCH_FAILED: case CUDA_ERROR_MISALIGNED_ADDRESS:
  case CUDA_ERROR_ILLEGAL_INSTRUCTION: case CUDA_ERROR_HARDWARE_STACK_ERROR:
    return "a kernel faulted, which is a bug in flowc: rerun with FLOWC_CUDA_GRAPHS=0 under "
           "compute-sanitizer to name the kernel, and report it with the .flow file";
  case CUDA_ERROR_LAUNCH_TIMEOUT:
    return "a kernel ran into the display watchdog: use a GPU that drives no display";
  case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES:
    return "a kernel asked for more registers or threads than this GPU has: report it with the "
           ".flow file";
  default:
    return NULL;
  }
}

/* The names of the errors that a broken set-up gives, for drivers (and the
 * toolkit's stub library) whose cuGetErrorName cannot say them. */
static const char *known_error_name(CUresult r) {
  switch (r) {
  case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
  case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
  case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
  case CUDA_ERROR_STUB_LIBRARY: return "CUDA_ERROR_STUB_LIBRARY";
  case CUDA_ERROR_NO_DEVICE: return "CUDA_ERROR_NO_DEVICE";
  case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
  case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: return "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH";
  case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: return "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE";
  case CUDA_ERROR_NO_BINARY_FOR_GPU: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
  default: return NULL;
  }
}

static void driver_error_text(CUresult r, const char **name, const char **text) {
  *name = NULL;
  *text = NULL;
  if (driver.cuGetErrorName && driver.cuGetErrorName(r, name) != CUDA_SUCCESS) *name = NULL;
  if (driver.cuGetErrorString && driver.cuGetErrorString(r, text) != CUDA_SUCCESS) *text = NULL;
  if (!*name) *name = known_error_name(r);
  if (!*name) *name = "an unknown CUDA error";
  if (!*text) *text = "";
}

/* llm.c's check, as a message: the call, file:line, the error, a hint. */
static int driver_failed(flcu_device *d, CUresult r, const char *what, const char *file, int line) {
  const char *name, *text;
  driver_error_text(r, &name, &text);
  const char *hint = driver_hint(r);
  set_error(d, "%s failed: %s (%s) at %s:%d%s%s", what, name, text, base_name(file), line,
            hint ? "\n---> HINT: " : "", hint ? hint : "");
  return -1;
}

/* CU(d, cuMemAlloc, (&p, bytes)): 0, or -1 with the message in d->error. */
#define CU(d, fn, args)                                                                            \
  (cu_result = driver.fn args, cu_result == CUDA_SUCCESS                                           \
                                   ? 0                                                             \
                                   : driver_failed(d, cu_result, #fn, __FILE__, __LINE__))

static int blas_failed(flcu_device *d, cublasStatus_t s, const char *what, int line) {
  const char *hint = NULL;
  if (s == CUBLAS_STATUS_ALLOC_FAILED) hint = driver_hint(CUDA_ERROR_OUT_OF_MEMORY);
  if (s == CUBLAS_STATUS_NOT_INITIALIZED)
    hint = "cuBLAS could not start: the NVIDIA driver may be older than the CUDA toolkit";
  if (s == CUBLAS_STATUS_ARCH_MISMATCH)
    hint = "this GPU is older than the cuBLAS of this CUDA toolkit supports";
  set_error(d, "%s failed: %s at %s:%d%s%s", what, cublasGetStatusString(s), base_name(__FILE__),
            line, hint ? "\n---> HINT: " : "", hint ? hint : "");
  return -1;
}

#define BLAS(d, call, what)                                                                        \
  (blas_status = (call), blas_status == CUBLAS_STATUS_SUCCESS                                      \
                             ? 0                                                                   \
                             : blas_failed(d, blas_status, what, __LINE__))

/* ---- NVRTC and its cache ------------------------------------------------------ */

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errorf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || !errlen) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

int flcu_compile(const flcu_program *p, const char *arch, void **image, size_t *size, char *err,
                 size_t errlen) {
  *image = NULL;
  *size = 0;
  nvrtcProgram prog;
  nvrtcResult r = nvrtcCreateProgram(&prog, p->source, p->name, p->nheaders, p->header_texts,
                                     p->header_names);
  if (r != NVRTC_SUCCESS) {
    errorf(err, errlen, "nvrtcCreateProgram failed: %s", nvrtcGetErrorString(r));
    return -1;
  }
  char arch_option[64];
  snprintf(arch_option, sizeof arch_option, "--gpu-architecture=%s", arch);
  /* Exact IEEE division and square root (the defaults, said out loud): the
   * kernels must agree with the CPU backend, and dropout's 1/keep_prob with
   * rng.c bit for bit. */
  const char *options[] = {arch_option, "--prec-div=true", "--prec-sqrt=true"};
  r = nvrtcCompileProgram(prog, (int)(sizeof options / sizeof options[0]), options);
  if (r != NVRTC_SUCCESS) {
    size_t log_size = 0;
    char *log = NULL;
    if (nvrtcGetProgramLogSize(prog, &log_size) == NVRTC_SUCCESS && (log = malloc(log_size + 1))) {
      if (nvrtcGetProgramLog(prog, log) != NVRTC_SUCCESS) log[0] = '\0';
      log[log_size] = '\0';
    }
    errorf(err, errlen, "NVRTC could not compile %s for %s (%s):\n%s", p->name, arch,
           nvrtcGetErrorString(r), log ? log : "");
    free(log);
    nvrtcDestroyProgram(&prog);
    return -1;
  }
  const bool cubin = strncmp(arch, "sm_", 3) == 0;
  r = cubin ? nvrtcGetCUBINSize(prog, size) : nvrtcGetPTXSize(prog, size);
  if (r == NVRTC_SUCCESS && !(*image = malloc(*size ? *size : 1))) {
    errorf(err, errlen, "out of memory for the compiled kernels");
    nvrtcDestroyProgram(&prog);
    return -1;
  }
  if (r == NVRTC_SUCCESS) r = cubin ? nvrtcGetCUBIN(prog, *image) : nvrtcGetPTX(prog, *image);
  nvrtcDestroyProgram(&prog);
  if (r != NVRTC_SUCCESS) {
    free(*image);
    *image = NULL;
    errorf(err, errlen, "NVRTC could not hand over the compiled %s: %s", p->name,
           nvrtcGetErrorString(r));
    return -1;
  }
  return 0;
}

/* FNV-1a, 64 bits: a cache key, not a defence against anyone. */
static uint64_t hash_bytes(uint64_t h, const void *data, size_t n) {
  const unsigned char *bytes = data;
  for (size_t i = 0; i < n; i++) {
    h ^= bytes[i];
    h *= 0x100000001B3ull;
  }
  return h;
}

static uint64_t hash_text(uint64_t h, const char *text) {
  return hash_bytes(h, text, strlen(text) + 1); /* the NUL separates fields */
}

static uint64_t program_hash(const flcu_program *p, const char *arch) {
  int major = 0, minor = 0;
  nvrtcVersion(&major, &minor);
  char version[64];
  snprintf(version, sizeof version, "flowc-nvrtc-cache-1 nvrtc %d.%d", major, minor);
  uint64_t h = hash_text(0xCBF29CE484222325ull, version);
  h = hash_text(h, arch);
  h = hash_text(h, p->source);
  for (int i = 0; i < p->nheaders; i++) {
    h = hash_text(h, p->header_names[i]);
    h = hash_text(h, p->header_texts[i]);
  }
  return h;
}

/* $XDG_CACHE_HOME/flowc, else ~/.cache/flowc, created on the way; 0 or -1. */
static int cache_dir(char *buf, size_t cap) {
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  char parent[3072];
  if (xdg && *xdg) snprintf(parent, sizeof parent, "%s", xdg);
  else if (home && *home) snprintf(parent, sizeof parent, "%s/.cache", home);
  else return -1;
  mkdir(parent, 0755);
  if ((size_t)snprintf(buf, cap, "%s/flowc", parent) >= cap) return -1;
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
  return 0;
}

static const char cache_magic[8] = {'F', 'L', 'O', 'W', 'C', 'K', 'C', '1'};

/* A cached image: magic, the key's hash, the size, the bytes. */
static void *cache_read(const char *path, uint64_t hash, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char magic[8];
  uint64_t stored_hash = 0, stored_size = 0;
  void *image = NULL;
  if (fread(magic, 1, 8, f) == 8 && memcmp(magic, cache_magic, 8) == 0 &&
      fread(&stored_hash, sizeof stored_hash, 1, f) == 1 && stored_hash == hash &&
      fread(&stored_size, sizeof stored_size, 1, f) == 1 && stored_size > 0 &&
      stored_size < ((uint64_t)1 << 31) && (image = malloc((size_t)stored_size))) {
    if (fread(image, 1, (size_t)stored_size, f) != stored_size || fgetc(f) != EOF) {
      free(image);
      image = NULL;
    }
  }
  fclose(f);
  if (image) *size = (size_t)stored_size;
  return image;
}

/* Written under a temporary name and renamed, so that a reader never sees half. */
static void cache_write(const char *path, uint64_t hash, const void *image, size_t size) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) return;
  const uint64_t stored_size = size;
  bool ok = fwrite(cache_magic, 1, 8, f) == 8 && fwrite(&hash, sizeof hash, 1, f) == 1 &&
            fwrite(&stored_size, sizeof stored_size, 1, f) == 1 && fwrite(image, 1, size, f) == size;
  ok = fclose(f) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) unlink(tmp);
}

/* The NVRTC target for compute capability major.minor: the exact cubin when
 * NVRTC knows the architecture; a cubin of the same major for a newer minor
 * (binary compatible); PTX of the newest architecture NVRTC knows for a GPU
 * newer than all of them (the driver compiles it). Too old a GPU is an error. */
static int pick_arch(flcu_device *d, char *arch, size_t cap) {
  int count = 0;
  if (nvrtcGetNumSupportedArchs(&count) != NVRTC_SUCCESS || count <= 0) {
    set_error(d, "NVRTC lists no GPU architectures\n---> HINT: reinstall the CUDA toolkit");
    return -1;
  }
  int *archs = malloc((size_t)count * sizeof *archs);
  if (!archs || nvrtcGetSupportedArchs(archs) != NVRTC_SUCCESS) {
    free(archs);
    set_error(d, "NVRTC lists no GPU architectures\n---> HINT: reinstall the CUDA toolkit");
    return -1;
  }
  const int want = d->major * 10 + d->minor;
  int lowest = archs[0], highest = archs[0], same_major = -1;
  bool exact = false;
  for (int i = 0; i < count; i++) {
    if (archs[i] < lowest) lowest = archs[i];
    if (archs[i] > highest) highest = archs[i];
    if (archs[i] == want) exact = true;
    if (archs[i] / 10 == d->major && archs[i] <= want && archs[i] > same_major) same_major = archs[i];
  }
  free(archs);
  int major = 0, minor = 0;
  nvrtcVersion(&major, &minor);
  if (exact) snprintf(arch, cap, "sm_%d", want);
  else if (same_major > 0) snprintf(arch, cap, "sm_%d", same_major);
  else if (want > highest) snprintf(arch, cap, "compute_%d", highest);
  else {
    set_error(d, "this GPU (%s, sm_%d) is older than NVRTC %d.%d can target (sm_%d and newer)\n"
                 "---> HINT: use a CUDA toolkit that still supports sm_%d (the CPU build, flowc "
                 "build without --device cuda, runs anywhere)",
              d->name, want, major, minor, lowest, want);
    return -1;
  }
  return 0;
}

/* Loads the kernels into d->module; *how says where they came from. */
static int load_kernels(flcu_device *d, const flcu_program *p, char *how, size_t how_cap) {
  CUresult cu_result;
  if (p->fatbin) {
    snprintf(how, how_cap, "compiled ahead of time by nvcc");
    if (CU(d, cuModuleLoadData, (&d->module, p->fatbin))) {
      char sm[64];
      snprintf(sm, sizeof sm, "; this GPU is sm_%d%d", d->major, d->minor);
      strncat(d->error, sm, sizeof d->error - strlen(d->error) - 1);
      return -1;
    }
    return 0;
  }
  char arch[32];
  if (pick_arch(d, arch, sizeof arch)) return -1;
  const uint64_t hash = program_hash(p, arch);
  char dir[3200], path[3400];
  bool cacheable = cache_dir(dir, sizeof dir) == 0;
  if (cacheable) snprintf(path, sizeof path, "%s/%016llx-%s.bin", dir, (unsigned long long)hash, arch);
  size_t size = 0;
  void *image = cacheable ? cache_read(path, hash, &size) : NULL;
  if (image) {
    if (driver.cuModuleLoadData(&d->module, image) == CUDA_SUCCESS) {
      snprintf(how, how_cap, "NVRTC %s, from the cache", arch);
      free(image);
      return 0;
    }
    free(image); /* stale or damaged: compile again and replace it */
  }
  const double start = now_seconds();
  char err[sizeof d->error];
  if (flcu_compile(p, arch, &image, &size, err, sizeof err)) {
    set_error(d, "%s\n---> HINT: this is a bug in flowc's CUDA backend; please report it with the "
                 ".flow file", err);
    return -1;
  }
  snprintf(how, how_cap, "NVRTC %s in %.2f s", arch, now_seconds() - start);
  if (CU(d, cuModuleLoadData, (&d->module, image))) {
    free(image);
    return -1;
  }
  if (cacheable) cache_write(path, hash, image, size);
  free(image);
  return 0;
}

/* ---- the device ------------------------------------------------------------- */

/* Where the driver is missing or refuses: one message that says so plainly. */
static int no_gpu(flcu_device *d, const char *detail, const char *hint) {
  set_error(d, "no NVIDIA GPU or driver found (%s)\n---> HINT: %s", detail, hint);
  return -1;
}

static int open_driver(flcu_device *d) {
  if (driver_load())
    return no_gpu(d, driver.problem,
                  "install the NVIDIA driver; `nvidia-smi` should list the GPU (in a container, "
                  "pass it through, e.g. docker run --gpus all)");
  if (!driver.initialised) {
    driver.init_result = driver.cuInit(0);
    driver.initialised = true;
  }
  if (driver.init_result != CUDA_SUCCESS) {
    const char *name, *text;
    driver_error_text(driver.init_result, &name, &text);
    char detail[256];
    snprintf(detail, sizeof detail, "cuInit: %s%s%s", name, *text ? ": " : "", text);
    const char *hint = "`nvidia-smi` should list a GPU; in a container, pass it through "
                       "(docker run --gpus all)";
    if (driver.init_result == CUDA_ERROR_STUB_LIBRARY)
      hint = "the CUDA toolkit's stub libcuda.so was loaded instead of the driver's: install the "
             "NVIDIA driver and keep lib64/stubs out of LD_LIBRARY_PATH";
    if (driver.init_result == CUDA_ERROR_SYSTEM_DRIVER_MISMATCH ||
        driver.init_result == CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE)
      hint = "the kernel module and the driver library disagree or are too old: update the "
             "NVIDIA driver, then reboot";
    return no_gpu(d, detail, hint);
  }
  int version = 0;
  CUresult cu_result;
  if (CU(d, cuDriverGetVersion, (&version))) return -1;
  /* Within a major version newer toolkits run on older drivers (minor version
   * compatibility); across majors they do not. */
  if (version / 1000 < CUDA_VERSION / 1000) {
    set_error(d, "the NVIDIA driver supports CUDA %d.%d, but this program was built with the CUDA "
                 "%d.%d toolkit\n---> HINT: update the NVIDIA driver (CUDA %d needs a driver of "
                 "that generation), or build with an older toolkit (CUDA_HOME)",
              version / 1000, version % 1000 / 10, CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10,
              CUDA_VERSION / 1000);
    return -1;
  }
  return 0;
}

int flcu_open(flcu_device *d, const flcu_program *p) {
  memset(d, 0, sizeof *d);
  if (open_driver(d)) return -1;
  CUresult cu_result;
  cublasStatus_t blas_status;
  int count = 0, index = 0;
  if (CU(d, cuDeviceGetCount, (&count))) return -1;
  const char *wanted = getenv("FLOWC_CUDA_DEVICE");
  if (wanted && *wanted) index = atoi(wanted);
  if (count <= 0) return no_gpu(d, "the driver sees no GPU", "`nvidia-smi` should list one");
  if (index < 0 || index >= count) {
    set_error(d, "FLOWC_CUDA_DEVICE=%s, but there %s %d GPU%s (0 to %d)", wanted,
              count == 1 ? "is" : "are", count, count == 1 ? "" : "s", count - 1);
    return -1;
  }
  if (CU(d, cuDeviceGet, (&d->device, index)) ||
      CU(d, cuDeviceGetName, (d->name, (int)sizeof d->name, d->device)) ||
      CU(d, cuDeviceGetAttribute,
         (&d->major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d->device)) ||
      CU(d, cuDeviceGetAttribute,
         (&d->minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d->device)))
    return -1;
  size_t total = 0;
  if (CU(d, cuDeviceTotalMem, (&total, d->device))) return -1;
  /* The primary context is the one cuBLAS (through the runtime API) uses. */
  if (CU(d, cuDevicePrimaryCtxRetain, (&d->context, d->device))) return -1;
  d->open = true;
  if (CU(d, cuCtxSetCurrent, (d->context)) ||
      CU(d, cuStreamCreate, (&d->stream, CU_STREAM_NON_BLOCKING))) {
    flcu_close(d);
    return -1;
  }
  char how[128] = "";
  if (load_kernels(d, p, how, sizeof how)) {
    char error[sizeof d->error];
    memcpy(error, d->error, sizeof error);
    flcu_close(d);
    memcpy(d->error, error, sizeof error);
    d->failed = true;
    return -1;
  }
  /* cuBLAS allocates its workspace when a stream is set unless given one;
   * allocation is not allowed inside a graph capture, so it gets one now
   * (the sizes NVIDIA recommends: 32 MiB on Hopper and newer, 4 MiB before). */
  const size_t workspace = d->major >= 9 ? (size_t)32 << 20 : (size_t)4 << 20;
  if (BLAS(d, cublasCreate(&d->blas), "cublasCreate") ||
      BLAS(d, cublasSetStream(d->blas, d->stream), "cublasSetStream") ||
      flcu_alloc(d, &d->blas_workspace, workspace) ||
      BLAS(d, cublasSetWorkspace(d->blas, (void *)(uintptr_t)d->blas_workspace, workspace),
           "cublasSetWorkspace")) {
    char error[sizeof d->error];
    memcpy(error, d->error, sizeof error);
    flcu_close(d);
    memcpy(d->error, error, sizeof error);
    d->failed = true;
    return -1;
  }
  /* Strict FP32 by default, so that GPU and CPU runs agree closely; TF32
   * tensor cores (what PyTorch's convolutions use by default) on request. */
  const char *tf32 = getenv("FLOWC_CUDA_TF32");
  const bool use_tf32 = tf32 && *tf32 && strcmp(tf32, "0") != 0 && d->major >= 8;
  if (use_tf32 && BLAS(d, cublasSetMathMode(d->blas, CUBLAS_TF32_TENSOR_OP_MATH), "cublasSetMathMode")) {
    char error[sizeof d->error];
    memcpy(error, d->error, sizeof error);
    flcu_close(d);
    memcpy(d->error, error, sizeof error);
    d->failed = true;
    return -1;
  }
  const char *graphs = getenv("FLOWC_CUDA_GRAPHS");
  d->graphs = !(graphs && strcmp(graphs, "0") == 0);
  const char *quiet = getenv("FLOWC_CUDA_QUIET");
  if (!(quiet && *quiet && strcmp(quiet, "0") != 0)) {
    fprintf(stderr, "flowc: %s (sm_%d%d, %.1f GiB); kernels: %s%s%s\n", d->name, d->major, d->minor,
            (double)total / (double)(1 << 30), how, d->graphs ? "" : "; CUDA graphs off",
            use_tf32 ? "; TF32 GEMMs" : "");
    fflush(stderr);
  }
  return 0;
}

void flcu_close(flcu_device *d) {
  if (!d->open) return;
  if (d->stream) driver.cuStreamSynchronize(d->stream);
  if (d->blas) cublasDestroy(d->blas);
  if (d->blas_workspace) driver.cuMemFree(d->blas_workspace);
  if (d->module) driver.cuModuleUnload(d->module);
  if (d->stream) driver.cuStreamDestroy(d->stream);
  driver.cuDevicePrimaryCtxRelease(d->device);
  memset(d, 0, sizeof *d);
}

int flcu_function(flcu_device *d, const char *name, CUfunction *out) {
  CUresult cu_result;
  if (CU(d, cuModuleGetFunction, (out, d->module, name))) {
    char what[128];
    snprintf(what, sizeof what, "\n(looking up kernel %s)", name);
    strncat(d->error, what, sizeof d->error - strlen(d->error) - 1);
    return -1;
  }
  return 0;
}

const char *flcu_describe(const flcu_device *d, char *buf, size_t cap) {
  if (d->open) snprintf(buf, cap, "%s (sm_%d%d)", d->name, d->major, d->minor);
  else snprintf(buf, cap, "no GPU opened");
  return buf;
}

/* ---- memory ----------------------------------------------------------------- */

int flcu_alloc(flcu_device *d, CUdeviceptr *p, size_t bytes) {
  CUresult cu_result;
  *p = 0;
  if (CU(d, cuMemAlloc, (p, bytes ? bytes : 256))) {
    char size[96];
    snprintf(size, sizeof size, " (asking for %.1f MiB)", (double)bytes / (1 << 20));
    char *newline = strchr(d->error, '\n');
    if (newline) { /* before the hint */
      char rest[sizeof d->error];
      snprintf(rest, sizeof rest, "%s", newline);
      snprintf(newline, sizeof d->error - (size_t)(newline - d->error), "%s%s", size, rest);
    }
    return -1;
  }
  return 0;
}

void flcu_free(flcu_device *d, CUdeviceptr *p) {
  (void)d;
  if (*p && driver.cuMemFree) driver.cuMemFree(*p);
  *p = 0;
}

/* Grown buffers get 25% more than asked for, so that a batch size creeping up
 * does not reallocate (and recapture) every time. */
static size_t grown(size_t bytes) {
  size_t more = bytes / 4;
  return bytes + (more < ((size_t)64 << 20) ? more : ((size_t)64 << 20));
}

int flcu_reserve(flcu_device *d, flcu_buffer *b, size_t bytes) {
  if (bytes <= b->cap && b->ptr) return 0;
  flcu_free(d, &b->ptr);
  b->cap = 0;
  size_t cap = grown(bytes);
  if (flcu_alloc(d, &b->ptr, cap)) return -1;
  b->cap = cap;
  return 1;
}

void flcu_release(flcu_device *d, flcu_buffer *b) {
  flcu_free(d, &b->ptr);
  b->cap = 0;
}

int flcu_reserve_host(flcu_device *d, flcu_host_buffer *b, size_t bytes) {
  if (bytes <= b->cap && b->ptr) return 0;
  flcu_release_host(d, b);
  size_t cap = grown(bytes ? bytes : 64);
  void *p = NULL;
  CUresult cu_result;
  if (CU(d, cuMemAllocHost, (&p, cap))) return -1;
  b->ptr = p;
  b->cap = cap;
  return 1;
}

void flcu_release_host(flcu_device *d, flcu_host_buffer *b) {
  (void)d;
  if (b->ptr && driver.cuMemFreeHost) driver.cuMemFreeHost(b->ptr);
  b->ptr = NULL;
  b->cap = 0;
}

int flcu_copy_in(flcu_device *d, CUdeviceptr dst, const void *src, size_t bytes) {
  CUresult cu_result;
  if (!bytes) return 0;
  return CU(d, cuMemcpyHtoD, (dst, src, bytes));
}

int flcu_copy_out(flcu_device *d, void *dst, CUdeviceptr src, size_t bytes) {
  CUresult cu_result;
  if (!bytes) return 0;
  return CU(d, cuMemcpyDtoH, (dst, src, bytes));
}

/* ---- stream work ------------------------------------------------------------ */

void flcu_upload(flcu_device *d, CUdeviceptr dst, const void *src, size_t bytes) {
  CUresult cu_result;
  if (d->failed || !bytes) return;
  CU(d, cuMemcpyHtoDAsync, (dst, src, bytes, d->stream));
}

void flcu_download(flcu_device *d, void *dst, CUdeviceptr src, size_t bytes) {
  CUresult cu_result;
  if (d->failed || !bytes) return;
  CU(d, cuMemcpyDtoHAsync, (dst, src, bytes, d->stream));
}

void flcu_copy(flcu_device *d, CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
  CUresult cu_result;
  if (d->failed || !bytes || dst == src) return;
  CU(d, cuMemcpyDtoDAsync, (dst, src, bytes, d->stream));
}

void flcu_zero(flcu_device *d, CUdeviceptr dst, size_t bytes) {
  CUresult cu_result;
  if (d->failed || !bytes) return;
  CU(d, cuMemsetD8Async, (dst, 0, bytes, d->stream));
}

void flcu_launch(flcu_device *d, CUfunction f, const char *name, unsigned grid_x, unsigned grid_y,
                 unsigned grid_z, unsigned block_x, unsigned block_y, void **args) {
  CUresult cu_result;
  if (d->failed || !grid_x || !grid_y || !grid_z) return; /* nothing to do: an empty tensor */
  if (CU(d, cuLaunchKernel,
         (f, grid_x, grid_y, grid_z, block_x, block_y, 1, 0, d->stream, args, NULL))) {
    char what[160];
    snprintf(what, sizeof what, "\n(kernel %s, grid %ux%ux%u, block %ux%u)", name, grid_x, grid_y,
             grid_z, block_x, block_y);
    strncat(d->error, what, sizeof d->error - strlen(d->error) - 1);
  }
}

unsigned flcu_blocks(int64_t n, unsigned threads) {
  if (n <= 0) return 0;
  int64_t blocks = (n + threads - 1) / threads;
  /* Kernels loop with a grid stride, so a cap only means more work per thread. */
  return blocks > 65536 ? 65536u : (unsigned)blocks;
}

unsigned flcu_chunks(int64_t rows, int64_t rows_per_chunk) {
  int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  if (chunks < 1) chunks = 1;
  return chunks > 1024 ? 1024u : (unsigned)chunks;
}

static void sgemm(flcu_device *d, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, CUdeviceptr a,
                  int64_t lda, CUdeviceptr b, int64_t ldb, float alpha, float beta, CUdeviceptr c, int64_t ldc) {
  cublasStatus_t blas_status;
  if (d->failed || m <= 0 || n <= 0) return;
  if (k <= 0) { /* an empty sum: cuBLAS refuses k = 0 with beta 0 on some versions */
    if (beta != 0.0f) return;
    for (int64_t row = 0; row < m; row++)
      flcu_zero(d, c + (CUdeviceptr)(row * ldc) * sizeof(float), (size_t)n * sizeof(float));
    return;
  }
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX) {
    set_error(d, "a matrix product of %lld x %lld x %lld is beyond cuBLAS's 32-bit sizes\n"
                 "---> HINT: use a smaller --batch", (long long)m, (long long)n, (long long)k);
    return;
  }
  /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, and a
   * row-major matrix is its own transpose in column-major: swap the operands,
   * keep each one's transposition flag. */
  BLAS(d,
       cublasSgemm(d->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                   (int)n, (int)m, (int)k, &alpha, (const float *)(uintptr_t)b, (int)ldb,
                   (const float *)(uintptr_t)a, (int)lda, &beta, (float *)(uintptr_t)c, (int)ldc),
       "cublasSgemm");
}

void flcu_sgemm(flcu_device *d, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                CUdeviceptr a, int64_t lda, CUdeviceptr b, int64_t ldb, CUdeviceptr c, int64_t ldc) {
  sgemm(d, trans_a, trans_b, m, n, k, a, lda, b, ldb, 1.0f, 0.0f, c, ldc);
}

void flcu_sgemm_update(flcu_device *d, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                       CUdeviceptr a, int64_t lda, CUdeviceptr b, int64_t ldb, float alpha, CUdeviceptr c,
                       int64_t ldc) {
  sgemm(d, trans_a, trans_b, m, n, k, a, lda, b, ldb, alpha, 1.0f, c, ldc);
}

int flcu_sync(flcu_device *d) {
  CUresult cu_result;
  if (d->failed) {
    /* Let queued work finish before the caller frees anything it uses. */
    if (d->stream) driver.cuStreamSynchronize(d->stream);
    return -1;
  }
  if (CU(d, cuStreamSynchronize, (d->stream))) {
    strncat(d->error, "\n(the error came from a kernel or copy queued before; FLOWC_CUDA_GRAPHS=0 "
                      "and CUDA_LAUNCH_BLOCKING=1 make it point at the right one)",
            sizeof d->error - strlen(d->error) - 1);
    return -1;
  }
  return 0;
}

/* ---- graphs ----------------------------------------------------------------- */

void flcu_graphs_clear(flcu_device *d, flcu_graph_cache *cache) {
  for (int i = 0; i < FLCU_GRAPH_SLOTS; i++) {
    if (cache->slots[i].exec && d->open) driver.cuGraphExecDestroy(cache->slots[i].exec);
    memset(&cache->slots[i], 0, sizeof cache->slots[i]);
  }
}

static flcu_graph_slot *graph_slot(flcu_device *d, flcu_graph_cache *cache, const int64_t key[4]) {
  flcu_graph_slot *oldest = &cache->slots[0];
  for (int i = 0; i < FLCU_GRAPH_SLOTS; i++) {
    flcu_graph_slot *s = &cache->slots[i];
    if (s->used && memcmp(s->key, key, sizeof s->key) == 0) return s;
    if (!s->used || (oldest->used && s->last_use < oldest->last_use)) oldest = s;
  }
  if (oldest->exec) driver.cuGraphExecDestroy(oldest->exec);
  (void)d;
  memset(oldest, 0, sizeof *oldest);
  memcpy(oldest->key, key, sizeof oldest->key);
  oldest->used = true;
  return oldest;
}

/* Captures enqueue's work into s->exec; 0, or -1 with d->error set. */
static int capture(flcu_device *d, flcu_graph_slot *s, void (*enqueue)(void *), void *context) {
  CUresult cu_result;
  if (CU(d, cuStreamBeginCapture, (d->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL))) return -1;
  d->capturing = true;
  enqueue(context);
  d->capturing = false;
  /* End the capture whatever happened, or the stream stays in capture mode. */
  CUgraph graph = NULL;
  CUresult ended = driver.cuStreamEndCapture(d->stream, &graph);
  if (!d->failed && ended != CUDA_SUCCESS) driver_failed(d, ended, "cuStreamEndCapture", __FILE__, __LINE__);
  if (!d->failed) CU(d, cuGraphInstantiate, (&s->exec, graph, 0));
  if (graph) driver.cuGraphDestroy(graph);
  return d->failed ? -1 : 0;
}

int flcu_run(flcu_device *d, flcu_graph_cache *cache, const int64_t key[4],
             void (*enqueue)(void *context), void *context) {
  CUresult cu_result;
  if (d->failed) return -1;
  if (!d->graphs || !cache) {
    enqueue(context);
    return d->failed ? -1 : 0;
  }
  flcu_graph_slot *s = graph_slot(d, cache, key);
  s->last_use = ++cache->clock;
  if (!s->exec && s->runs++ == 0) { /* the first run of a shape warms up, eagerly */
    enqueue(context);
    return d->failed ? -1 : 0;
  }
  if (!s->exec && capture(d, s, enqueue, context)) {
    /* A driver or library that cannot capture still trains, only slower. */
    fprintf(stderr, "flowc: capturing a CUDA graph failed, running without graphs:\n%s\n", d->error);
    d->failed = false;
    d->error[0] = '\0';
    d->graphs = false;
    s->exec = NULL;
    enqueue(context);
    return d->failed ? -1 : 0;
  }
  return CU(d, cuGraphLaunch, (s->exec, d->stream));
}
