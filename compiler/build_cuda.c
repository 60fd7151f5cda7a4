/* build_cuda.c - flowc build/emit --device cuda: the CUDA build's sources, nvcc (--nvcc), and the compile.
 *
 * The program is C99 host code compiled by the system's C compiler against
 * the CUDA toolkit's headers, linked with NVRTC and cuBLAS (found through
 * $CUDA_HOME, else $CUDA_PATH, else /usr/local/cuda; their directory goes into
 * the program's RUNPATH). The driver library is not linked: the runtime loads
 * it when the program starts (cuda_rt.c), so that a machine without one gets
 * a message rather than a loader error. The CPU runtime is compiled with
 * -DFLRT_NO_BLAS: a CUDA program needs no OpenBLAS. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "build.h"
#include "codegen.h"
#include "embedded.h"

/* The CUDA runtime (cuda_rt.c, flowc_rt_cuda.h, flowc_rt_philox.h), embedded
 * apart from the CPU runtime so that CPU programs never carry it. */
extern const fl_embedded_file fl_cuda_runtime_files[];
extern const int fl_cuda_runtime_file_count;

static fl_loc nowhere(void) { return (fl_loc){0, 0, 0, 0}; }

static int write_file(const char *dir, const char *name, const char *text, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f || (len && fwrite(text, 1, len, f) != len) || fclose(f)) {
    fl_error(nowhere(), "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* The name a CUDA runtime file gets next to the model: sources take the
 * runtime's flrt_ prefix (no clash with a user's files when vendored). */
static void runtime_name(const char *name, char *buf, size_t cap) {
  size_t len = strlen(name);
  bool source = len > 2 && strcmp(name + len - 2, ".c") == 0;
  snprintf(buf, cap, "%s%s", source && strncmp(name, "flrt_", 5) != 0 ? "flrt_" : "", name);
}

static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The toolkit: $CUDA_HOME, $CUDA_PATH or /usr/local/cuda, with its library
 * folder (lib64, else lib). Returns 0, or -1 after saying what is missing. */
static int find_toolkit(char *home, size_t home_cap, char *lib, size_t lib_cap) {
  const char *env = getenv("CUDA_HOME");
  const char *from = "CUDA_HOME";
  if (!env || !*env) {
    env = getenv("CUDA_PATH");
    from = "CUDA_PATH";
  }
  if (!env || !*env) {
    env = "/usr/local/cuda";
    from = NULL;
  }
  snprintf(home, home_cap, "%s", env);
  static const char *const headers[] = {"cuda.h", "nvrtc.h", "cublas_v2.h"};
  for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
    char path[4200];
    snprintf(path, sizeof path, "%s/include/%s", home, headers[i]);
    if (!is_file(path)) {
      fl_error(nowhere(), "the CUDA toolkit was not found: %s is missing%s%s%s", path, from ? " (" : "",
               from ? from : "", from ? " points there)" : "");
      fl_note(nowhere(), "install the CUDA toolkit (its headers, NVRTC and cuBLAS; NVIDIA's packages put it in "
                         "/usr/local/cuda), or point CUDA_HOME at it");
      return -1;
    }
  }
  static const char *const dirs[] = {"lib64", "lib", "lib/x64"};
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    char nvrtc[4200], cublas[4200];
    snprintf(lib, lib_cap, "%s/%s", home, dirs[i]);
    snprintf(nvrtc, sizeof nvrtc, "%s/libnvrtc.so", lib);
    snprintf(cublas, sizeof cublas, "%s/libcublas.so", lib);
    if (is_file(nvrtc) && is_file(cublas)) return 0;
  }
  fl_error(nowhere(), "the CUDA toolkit in %s has no libnvrtc.so and libcublas.so in lib64/ or lib/", home);
  fl_note(nowhere(), "install the toolkit's NVRTC and cuBLAS libraries, or point CUDA_HOME at a complete toolkit");
  return -1;
}

static int write_makefile(const char *dir, const char *name, const char *cuda_home) {
  char text[4096];
  int n = snprintf(text, sizeof text,
                   "# Makefile - builds %s for NVIDIA GPUs from the sources flowc emitted (make; ./%s --help).\n"
                   "# The kernels are compiled by NVRTC when the program starts; it needs the CUDA toolkit's\n"
                   "# NVRTC and cuBLAS here and the NVIDIA driver where it runs.\n"
                   "CC ?= cc\n"
                   "CFLAGS ?= -O3 -march=native\n"
                   "CUDA_HOME ?= %s\n"
                   "CUDA_LIB := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib))\n"
                   "SOURCES := $(filter-out %%_fatbin.c,$(wildcard *.c))\n\n"
                   "%s: $(SOURCES) $(wildcard *.h) $(wildcard *.cu)\n"
                   "\t$(CC) -std=c99 $(CFLAGS) -DFLRT_NO_BLAS -I$(CUDA_HOME)/include -o $@ $(SOURCES) \\\n"
                   "\t  -L$(CUDA_LIB) -Wl,--enable-new-dtags,-rpath,$(CUDA_LIB) -lcublas -lnvrtc -ldl -lz -lcurl -lm\n\n"
                   "clean:\n\trm -f %s\n.PHONY: clean\n",
                   name, name, cuda_home, name, name);
  return write_file(dir, "Makefile", text, (size_t)n);
}

/* The headers the kernels include, as C strings for NVRTC (flrt_cuda_headers.c). */
static int write_header_strings(const char *dir) {
  size_t cap = 1 << 16, len = 0;
  char *text = malloc(cap);
  if (!text) return -1;
#define APPEND(...)                                                                                \
  do {                                                                                             \
    int need = snprintf(NULL, 0, __VA_ARGS__);                                                     \
    while (len + (size_t)need + 1 > cap) {                                                         \
      char *grown = realloc(text, cap *= 2);                                                       \
      if (!grown) {                                                                                \
        free(text);                                                                                \
        return -1;                                                                                 \
      }                                                                                            \
      text = grown;                                                                                \
    }                                                                                              \
    len += (size_t)snprintf(text + len, cap - len, __VA_ARGS__);                                   \
  } while (0)
  APPEND("/* flrt_cuda_headers.c - written by flowc: the headers the kernels include, for NVRTC. */\n"
         "#include \"flowc_rt_cuda.h\"\n\n");
  int count = 0;
  for (int i = 0; i < fl_cuda_runtime_file_count; i++)
    if (strcmp(fl_cuda_runtime_files[i].name, "flowc_rt_philox.h") == 0) count++;
  APPEND("const char *const flcu_header_names[] = {\"flowc_rt_philox.h\", NULL};\n"
         "const char *const flcu_header_texts[] = {\n  \"");
  for (int i = 0; i < fl_cuda_runtime_file_count; i++) {
    if (strcmp(fl_cuda_runtime_files[i].name, "flowc_rt_philox.h") != 0) continue;
    const char *t = fl_cuda_runtime_files[i].text;
    for (size_t k = 0; k < fl_cuda_runtime_files[i].len; k++) {
      unsigned char c = (unsigned char)t[k];
      if (c == '\n') APPEND("\\n\"%s", k + 1 < fl_cuda_runtime_files[i].len ? "\n  \"" : "");
      else if (c == '"' || c == '\\') APPEND("\\%c", c);
      else if (c < 32 || c >= 127) APPEND("\\%03o", c);
      else APPEND("%c", c);
    }
  }
  APPEND(",\n  NULL};\nconst int flcu_header_count = %d;\n", count);
#undef APPEND
  int status = write_file(dir, "flrt_cuda_headers.c", text, len);
  free(text);
  return status;
}

static int emit_sources(const fl_graph *g, const fl_build_request *req, const char *dir, const char *cuda_home,
                        char *name, size_t name_cap) {
  if (mkdir(dir, 0777) && errno != EEXIST) {
    fl_error(nowhere(), "cannot create folder %s: %s", dir, strerror(errno));
    return -1;
  }
  if (req->name) fl_c_identifier(req->name, name, name_cap);
  else fl_model_name(req->source_path, name, name_cap);
  fl_codegen_options opt = {.name = name, .source_path = req->source_path, .with_main = true,
                            .no_fuse = req->unoptimized};
  if (fl_emit_cuda(g, dir, &opt)) return -1;
  for (int i = 0; i < fl_runtime_file_count; i++)
    if (write_file(dir, fl_runtime_files[i].name, fl_runtime_files[i].text, fl_runtime_files[i].len)) return -1;
  for (int i = 0; i < fl_cuda_runtime_file_count; i++) {
    char file[256];
    runtime_name(fl_cuda_runtime_files[i].name, file, sizeof file);
    if (write_file(dir, file, fl_cuda_runtime_files[i].text, fl_cuda_runtime_files[i].len)) return -1;
  }
  if (write_header_strings(dir)) return -1;
  return write_makefile(dir, name, cuda_home);
}

int fl_emit_cuda_program(const fl_graph *g, const fl_build_request *req, const char *dir) {
  /* emit writes sources to build elsewhere: no toolkit is needed here, the
   * Makefile's CUDA_HOME says where it is expected */
  char home[2048], name[128];
  const char *env = getenv("CUDA_HOME");
  snprintf(home, sizeof home, "%s", env && *env ? env : "/usr/local/cuda");
  return emit_sources(g, req, dir, home, name, sizeof name);
}

/* Runs argv with its output into log_path; the exit status, 127 when it could not start. */
static int run_logged(char *const *argv, const char *log_path, bool verbose) {
  if (verbose) {
    for (int i = 0; argv[i]; i++) fprintf(stderr, "%s%s", i ? " " : "", argv[i]);
    fputc('\n', stderr);
  }
  pid_t pid = fork();
  if (pid < 0) return 127;
  if (pid == 0) {
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static void show_log(const char *log) {
  FILE *f = fopen(log, "r");
  if (!f) return;
  char line[1024];
  for (int shown = 0; shown < 30 && fgets(line, sizeof line, f); shown++) fputs(line, stderr);
  fclose(f);
}

/* A failed compile that could not find a library's header: name its package. */
static void diagnose(const char *log) {
  static const struct {
    const char *header, *package;
  } deps[] = {{"zlib.h", "zlib1g-dev"}, {"curl/curl.h", "libcurl4-openssl-dev"}};
  FILE *f = fopen(log, "r");
  if (!f) return;
  char line[1024];
  while (fgets(line, sizeof line, f))
    for (size_t i = 0; i < sizeof deps / sizeof deps[0]; i++)
      if (strstr(line, deps[i].header) && strstr(line, "No such file"))
        fl_note(nowhere(), "%s is missing: install it with `apt-get install %s`", deps[i].header, deps[i].package);
  fclose(f);
}

/* --nvcc: the kernels compiled for sm_80 and sm_90 (plus sm_90 PTX, which newer
 * GPUs compile at load time) into a fatbin, written as a C array. */
static int compile_fatbin(const char *dir, const char *name, const char *home, bool verbose) {
  char nvcc[4200], cu[4300], fatbin[4300], log[4300], include[4300];
  snprintf(nvcc, sizeof nvcc, "%s/bin/nvcc", home);
  if (access(nvcc, X_OK) != 0) {
    fl_error(nowhere(), "--nvcc: nvcc was not found at %s", nvcc);
    fl_note(nowhere(), "install the CUDA toolkit's compiler, point CUDA_HOME at a toolkit that has it, or leave "
                       "out --nvcc (NVRTC then compiles the kernels when the program starts)");
    return -1;
  }
  snprintf(cu, sizeof cu, "%s/%s_kernels.cu", dir, name);
  snprintf(fatbin, sizeof fatbin, "%s/%s.fatbin", dir, name);
  snprintf(log, sizeof log, "%s/nvcc.log", dir);
  snprintf(include, sizeof include, "-I%s", dir);
  char *argv[] = {nvcc, "--fatbin", "-O3", include,
                  "-gencode", "arch=compute_80,code=sm_80",
                  "-gencode", "arch=compute_90,code=sm_90",
                  "-gencode", "arch=compute_90,code=compute_90",
                  "-o", fatbin, cu, NULL};
  int rc = run_logged(argv, log, verbose);
  if (rc != 0) {
    fl_error(nowhere(), "nvcc failed on the generated kernels (log: %s)", log);
    show_log(log);
    return -1;
  }
  FILE *in = fopen(fatbin, "rb");
  if (!in) {
    fl_error(nowhere(), "cannot read %s: %s", fatbin, strerror(errno));
    return -1;
  }
  char out_path[4300];
  snprintf(out_path, sizeof out_path, "%s/%s_fatbin.c", dir, name);
  FILE *out = fopen(out_path, "w");
  if (!out) {
    fclose(in);
    fl_error(nowhere(), "cannot write %s: %s", out_path, strerror(errno));
    return -1;
  }
  fprintf(out, "/* %s_fatbin.c - written by flowc build --nvcc: %s_kernels.cu compiled by nvcc for sm_80 and\n"
               " * sm_90 (and sm_90 PTX for newer GPUs). The driver picks the image for the GPU. */\n"
               "#include <stddef.h>\n\n"
               "const unsigned char %s_fatbin[] __attribute__((aligned(64))) = {",
          name, name, name);
  int c;
  long n = 0;
  for (; (c = fgetc(in)) != EOF; n++) fprintf(out, "%s0x%02x", n == 0 ? "\n  " : n % 16 ? ", " : ",\n  ", c);
  fprintf(out, "\n};\nconst size_t %s_fatbin_size = sizeof %s_fatbin;\n", name, name);
  fclose(in);
  if (fclose(out)) {
    fl_error(nowhere(), "cannot write %s: %s", out_path, strerror(errno));
    return -1;
  }
  return 0;
}

/* Deletes what emit_sources, nvcc and the compiler wrote into the temporary
 * folder (name is the model's prefix), then the folder. */
static void remove_folder(const char *dir, const char *name) {
  char path[4400];
  for (int i = 0; i < fl_runtime_file_count; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, fl_runtime_files[i].name);
    unlink(path);
  }
  for (int i = 0; i < fl_cuda_runtime_file_count; i++) {
    char file[256];
    runtime_name(fl_cuda_runtime_files[i].name, file, sizeof file);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    unlink(path);
  }
  static const char *const others[] = {"main.c", "Makefile", "compile.log", "nvcc.log", "flrt_cuda_headers.c"};
  for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, others[i]);
    unlink(path);
  }
  static const char *const model_files[] = {".h", "_cuda.c", "_kernels.cu", "_fatbin.c", ".fatbin"};
  for (size_t i = 0; i < sizeof model_files / sizeof model_files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s%s", dir, name, model_files[i]);
    unlink(path);
  }
  rmdir(dir);
}

int fl_build_cuda_program(const fl_graph *g, const fl_build_request *req) {
  char home[2048], lib[2200], name[128];
  if (find_toolkit(home, sizeof home, lib, sizeof lib)) return -1;
  char dir[] = "/tmp/flowc-build-XXXXXX";
  if (!mkdtemp(dir)) {
    fl_error(nowhere(), "cannot create a temporary folder: %s", strerror(errno));
    return -1;
  }
  int status = emit_sources(g, req, dir, home, name, sizeof name);
  if (status == 0 && req->nvcc) status = compile_fatbin(dir, name, home, req->verbose);
  const char *cc = req->cc ? req->cc : getenv("CC");
  if (!cc || !*cc) cc = "cc";
  char log[4200];
  snprintf(log, sizeof log, "%s/compile.log", dir);
  if (status == 0) {
    char include[2300], libdir[2300], rpath[2400];
    snprintf(include, sizeof include, "-I%s/include", home);
    snprintf(libdir, sizeof libdir, "-L%s", lib);
    /* RUNPATH (not RPATH): LD_LIBRARY_PATH can still point elsewhere */
    snprintf(rpath, sizeof rpath, "-Wl,--enable-new-dtags,-rpath,%s", lib);
    char *argv[128];
    int argc = 0;
    argv[argc++] = (char *)cc;
    argv[argc++] = "-std=c99";
    argv[argc++] = "-O3";
    argv[argc++] = "-march=native";
    argv[argc++] = "-Wall";
    argv[argc++] = "-DFLRT_NO_BLAS";
    if (req->nvcc) argv[argc++] = "-DFLOWC_CUDA_AOT";
    argv[argc++] = include;
    argv[argc++] = "-o";
    argv[argc++] = (char *)req->output;
    char sources[64][4400];
    int nsources = 0;
    snprintf(sources[nsources++], sizeof sources[0], "%s/main.c", dir);
    snprintf(sources[nsources++], sizeof sources[0], "%s/%s_cuda.c", dir, name);
    snprintf(sources[nsources++], sizeof sources[0], "%s/flrt_cuda_headers.c", dir);
    if (req->nvcc) snprintf(sources[nsources++], sizeof sources[0], "%s/%s_fatbin.c", dir, name);
    for (int i = 0; i < fl_runtime_file_count && nsources < 60; i++) {
      size_t len = strlen(fl_runtime_files[i].name);
      if (len > 2 && strcmp(fl_runtime_files[i].name + len - 2, ".c") == 0)
        snprintf(sources[nsources++], sizeof sources[0], "%s/%s", dir, fl_runtime_files[i].name);
    }
    for (int i = 0; i < fl_cuda_runtime_file_count && nsources < 64; i++) {
      char file[256];
      runtime_name(fl_cuda_runtime_files[i].name, file, sizeof file);
      size_t len = strlen(file);
      if (len > 2 && strcmp(file + len - 2, ".c") == 0)
        snprintf(sources[nsources++], sizeof sources[0], "%s/%s", dir, file);
    }
    for (int i = 0; i < nsources; i++) argv[argc++] = sources[i];
    argv[argc++] = libdir;
    argv[argc++] = rpath;
    argv[argc++] = "-lcublas";
    argv[argc++] = "-lnvrtc";
    argv[argc++] = "-ldl";
    argv[argc++] = "-lz";
    argv[argc++] = "-lcurl";
    argv[argc++] = "-lm";
    argv[argc] = NULL;
    int rc = run_logged(argv, log, req->verbose);
    if (rc == 127) {
      fl_error(nowhere(), "no C compiler: '%s' could not be run; install one with `apt-get install gcc`, "
                          "or name one with --cc or $CC", cc);
      status = -1;
    } else if (rc != 0) {
      fl_error(nowhere(), "the C compiler failed on the generated CUDA host code (log: %s)", log);
      show_log(log);
      diagnose(log);
      status = -1;
    }
  }
  if (req->keep || status != 0) {
    fprintf(stderr, "flowc: generated sources kept in %s\n", dir);
    return status;
  }
  remove_folder(dir, name);
  return status;
}
