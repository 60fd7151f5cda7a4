/* cuda_test_util.c - what the CUDA backend's tests share: the toolkit, emitted sources, the GPU emulator. */
#include "cuda_test_util.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flowc_rt.h"

const char *cu_toolkit(void) {
  static char home[2048];
  const char *env = getenv("CUDA_HOME");
  snprintf(home, sizeof home, "%s", env && *env ? env : "/usr/local/cuda");
  char probe[2200];
  snprintf(probe, sizeof probe, "%s/include/nvrtc.h", home);
  return access(probe, R_OK) == 0 ? home : NULL;
}

void cu_require_toolkit(void) {
  if (!cu_toolkit())
    cr_skip_test("the CUDA toolkit was not found (no nvrtc.h in $CUDA_HOME or /usr/local/cuda/include): "
                 "the CUDA backend's tests need its headers, NVRTC and cuBLAS, though no GPU");
}

static const char *flow_path(const char *example, char *buf, size_t cap) {
  if (strchr(example, '/')) snprintf(buf, cap, "%s", example);
  else snprintf(buf, cap, "%s/examples/%s.flow", e2e_source_root(), example);
  return buf;
}

const char *cu_emit(const char *dir, const char *example, const char *extra) {
  static char src[4200];
  char flow[4200];
  snprintf(src, sizeof src, "%s/src", dir);
  char *out = NULL;
  int rc = e2e_run(&out, "'%s/compiler/flowc' emit '%s' --device cuda -o '%s' %s", e2e_build_root(),
                   flow_path(example, flow, sizeof flow), src, extra ? extra : "");
  cr_assert_eq(rc, 0, "flowc emit --device cuda %s failed (%d):\n%s", example, rc, out);
  free(out);
  return src;
}

const char *cu_build(const char *dir, const char *example, const char *program, const char *extra) {
  static char path[4200];
  char flow[4200];
  snprintf(path, sizeof path, "%s/%s", dir, program);
  char *out = NULL;
  int rc = e2e_run(&out, "'%s/compiler/flowc' build '%s' --device cuda -o '%s' %s", e2e_build_root(),
                   flow_path(example, flow, sizeof flow), path, extra ? extra : "");
  cr_assert_eq(rc, 0, "flowc build --device cuda %s failed (%d):\n%s", example, rc, out);
  free(out);
  return path;
}

const char *cu_build_cpu(const char *dir, const char *example, const char *program) {
  static char path[4200];
  char flow[4200];
  snprintf(path, sizeof path, "%s/%s", dir, program);
  char *out = NULL;
  int rc = e2e_run(&out, "'%s/compiler/flowc' build '%s' -o '%s'", e2e_build_root(), flow_path(example, flow, sizeof flow),
                   path);
  cr_assert_eq(rc, 0, "flowc build %s failed (%d):\n%s", example, rc, out);
  free(out);
  return path;
}

/* The kernels library's table: every __global__ function of the source, with
 * whether it calls __syncthreads (its threads then run as coroutines). */
static void write_registry(const char *cu_path, const char *registry_path) {
  FILE *in = fopen(cu_path, "r");
  cr_assert(in, "cannot read %s", cu_path);
  FILE *out = fopen(registry_path, "w");
  cr_assert(out, "cannot write %s", registry_path);
  const char *base = strrchr(cu_path, '/');
  fprintf(out, "#include \"cuda_emu.h\"\n#include \"%s\"\nEMU_TABLE(\n", base ? base + 1 : cu_path);
  char line[8192], name[512] = "";
  int syncs = 0, count = 0;
  static const char marker[] = "extern \"C\" __global__ void ";
  while (fgets(line, sizeof line, in)) {
    const char *at = strstr(line, marker);
    if (at) {
      if (name[0]) fprintf(out, "%s  EMU_KERNEL(%s, %d)\n", count++ ? "," : "", name, syncs);
      at += sizeof marker - 1;
      size_t len = strcspn(at, "(");
      snprintf(name, sizeof name, "%.*s", (int)len, at);
      syncs = 0;
    }
    if (strstr(line, "__syncthreads")) syncs = 1;
  }
  if (name[0]) fprintf(out, "%s  EMU_KERNEL(%s, %d)\n", count++ ? "," : "", name, syncs);
  fprintf(out, ")\n");
  fclose(in);
  cr_assert_eq(fclose(out), 0);
  cr_assert(count > 0, "%s has no kernels", cu_path);
}

void cu_emulator_make(cu_emulator *emu, const char *dir, const char *src_dir, const char *model) {
  const char *cuda = cu_toolkit();
  cr_assert(cuda);
  char *out = NULL;
  if (e2e_run(&out, "command -v g++") != 0) {
    free(out);
    cr_skip_test("g++ is not installed: the GPU emulator compiles the kernels as C++ (apt-get install g++)");
  }
  free(out);
  snprintf(emu->dir, sizeof emu->dir, "%s/emu", dir);
  snprintf(emu->driver, sizeof emu->driver, "%s/driver/libflowc_fake_driver.so", emu->dir);
  snprintf(emu->kernels, sizeof emu->kernels, "%s/%s_kernels.so", emu->dir, model);
  snprintf(emu->cache, sizeof emu->cache, "%s/cache", emu->dir);
  const char *root = e2e_source_root();
  /* The driver goes in a folder of its own: NVRTC loads libcuda.so.1 from
   * LD_LIBRARY_PATH, which must then not find the fake. */
  int rc = e2e_run(&out,
                   "mkdir -p '%s/driver' && cd '%s' && "
                   "cc -std=c11 -O2 -fPIC -shared -I'%s/include' -I'%s/tests/cuda/emu' '%s/tests/cuda/emu/fake_cuda.c' "
                   "-o driver/libflowc_fake_driver.so -ldl && "
                   "printf 'libcublas.so.13 { global: *; };\\n' > cublas.map && "
                   "cc -std=c11 -O2 -fPIC -shared -Wl,--version-script=cublas.map -Wl,-soname,libcublas.so.13 "
                   "-I'%s/include' '%s/tests/cuda/emu/fake_cublas.c' -o libcublas.so.13 -ldl",
                   emu->dir, emu->dir, cuda, root, root, cuda, root);
  cr_assert_eq(rc, 0, "building the emulated driver failed:\n%s", out);
  free(out);
  char cu[4300], registry[4300];
  snprintf(cu, sizeof cu, "%s/%s_kernels.cu", src_dir, model);
  snprintf(registry, sizeof registry, "%s/%s_registry.cc", emu->dir, model);
  write_registry(cu, registry);
  rc = e2e_run(&out, "g++ -std=c++17 -O1 -fPIC -shared -Wall -Wno-unused-variable -Wno-unused-function "
                     "-I'%s/tests/cuda/emu' -I'%s' -x c++ '%s' -o '%s'",
               root, src_dir, registry, emu->kernels);
  cr_assert_eq(rc, 0, "compiling %s for the emulator failed:\n%s", cu, out);
  free(out);
}

int cu_run_emulated(const cu_emulator *emu, const char *extra_env, char **output, const char *fmt, ...) {
  char command[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(command, sizeof command, fmt, ap);
  va_end(ap);
  return e2e_run(output,
                 "LD_LIBRARY_PATH='%s' FLOWC_LIBCUDA='%s' FLOWC_EMU_KERNELS='%s' XDG_CACHE_HOME='%s' "
                 "FLOWC_EMU_STATS=1 %s %s",
                 emu->dir, emu->driver, emu->kernels, emu->cache, extra_env ? extra_env : "", command);
}

static void write_idx(const char *path, const unsigned char *header, size_t header_len, const unsigned char *data,
                      size_t len) {
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  cr_assert_eq(fwrite(header, 1, header_len, f), header_len);
  cr_assert_eq(fwrite(data, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24);
  p[1] = (unsigned char)(v >> 16);
  p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}

const char *cu_small_data(const char *dir) {
  static char data[4200];
  snprintf(data, sizeof data, "%s/data", dir);
  mkdir(data, 0777);
  enum { TRAIN = 64, TEST = 16, PIXELS = 784 };
  flrt_datasets real;
  char err[512];
  const char *digits = e2e_digits_dir();
  bool have_real = digits && flrt_read_data_sets(digits, 0, &real, err, sizeof err) == 0;
  static const char *const names[2][2] = {{"train-images-idx3-ubyte", "train-labels-idx1-ubyte"},
                                          {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}};
  for (int split = 0; split < 2; split++) {
    const int n = split ? TEST : TRAIN;
    unsigned char *pixels = malloc((size_t)n * PIXELS), *labels = malloc((size_t)n);
    cr_assert(pixels && labels);
    for (int i = 0; i < n; i++) {
      const flrt_split *from = split ? &real.test : &real.train;
      labels[i] = have_real ? from->labels[i] : (unsigned char)(i % 10);
      for (int p = 0; p < PIXELS; p++)
        /* Without real digits: sparse strokes like theirs (mostly 0), so the
         * tutorial's learning rate stays stable and CPU and GPU stay close. */
        pixels[(size_t)i * PIXELS + p] = have_real ? from->pixels[(size_t)i * PIXELS + p]
                                       : ((p * 7 + i * 31 + (p / 28) * labels[i] * 13) % 256) > 220 ? 255 : 0;
    }
    unsigned char header[16];
    char path[4400];
    put_u32(header, 0x803);
    put_u32(header + 4, (uint32_t)n);
    put_u32(header + 8, 28);
    put_u32(header + 12, 28);
    snprintf(path, sizeof path, "%s/%s", data, names[split][0]);
    write_idx(path, header, 16, pixels, (size_t)n * PIXELS);
    put_u32(header, 0x801);
    snprintf(path, sizeof path, "%s/%s", data, names[split][1]);
    write_idx(path, header, 8, labels, (size_t)n);
    free(pixels);
    free(labels);
  }
  if (have_real) flrt_free_data_sets(&real);
  return data;
}

int cu_compare(const char *expected, const char *actual, const char *options, char **output) {
  return e2e_run(output, "'%s/tests/cuda/compare-checkpoints' %s '%s' '%s'", e2e_build_root(), options ? options : "",
                 expected, actual);
}
