/* build.c - flowc emit and flowc build: write a program's sources, compile them. */
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
#include "infer.h"

static fl_loc nowhere(void) { return (fl_loc){0, 0, 0, 0}; }

void fl_model_name(const char *source_path, char *buf, size_t cap) {
  const char *base = strrchr(source_path, '/');
  base = base ? base + 1 : source_path;
  char stem[256];
  snprintf(stem, sizeof stem, "%s", base);
  char *dot = strrchr(stem, '.');
  if (dot && dot != stem) *dot = '\0';
  fl_c_identifier(stem, buf, cap);
}

static int write_text(const char *dir, const char *name, const char *text, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f || (len && fwrite(text, 1, len, f) != len) || fclose(f)) {
    fl_error(nowhere(), "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

static int write_makefile(const char *dir, const char *name) {
  char text[4096];
  int n = snprintf(text, sizeof text,
                   "# Makefile - builds %s from the sources flowc emitted (make; ./%s --help).\n"
                   "CC ?= cc\n"
                   "CFLAGS ?= -O3 -march=native -fno-math-errno -ffp-contract=fast\n"
                   "# OpenBLAS's OpenMP build shares its threads with the generated loops\n"
                   "# (Debian: libopenblas-openmp-dev); otherwise the default OpenBLAS.\n"
                   "MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null)\n"
                   "OMP_BLAS := /usr/lib/$(MULTIARCH)/openblas-openmp\n"
                   "ifneq ($(MULTIARCH),)\nifneq ($(wildcard $(OMP_BLAS)/libopenblas.so),)\n"
                   "BLAS_CFLAGS := -I/usr/include/$(MULTIARCH)/openblas-openmp\n"
                   "BLAS_LIBS := -L$(OMP_BLAS) -Wl,-rpath,$(OMP_BLAS) -lopenblas\n"
                   "endif\nendif\n"
                   "BLAS_CFLAGS ?= $(shell pkg-config --cflags openblas 2>/dev/null)\n"
                   "BLAS_LIBS ?= $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)\n"
                   "SOURCES := $(wildcard *.c)\n\n"
                   "%s: $(SOURCES) $(wildcard *.h)\n"
                   "\t$(CC) -std=c99 $(CFLAGS) -fopenmp $(BLAS_CFLAGS) -o $@ $(SOURCES) $(BLAS_LIBS) -lz -lcurl -lm\n\n"
                   "clean:\n\trm -f %s\n.PHONY: clean\n",
                   name, name, name, name);
  return write_text(dir, "Makefile", text, (size_t)n);
}

int fl_emit_program(const fl_graph *g, const fl_build_request *req, const char *dir) {
  if (mkdir(dir, 0777) && errno != EEXIST) {
    fl_error(nowhere(), "cannot create folder %s: %s", dir, strerror(errno));
    return -1;
  }
  char name[128];
  if (req->name) fl_c_identifier(req->name, name, sizeof name);
  else fl_model_name(req->source_path, name, sizeof name);
  fl_codegen_options opt = {.name = name, .source_path = req->source_path, .with_main = true,
                            .no_fuse = req->unoptimized, .report = req->report ? stdout : NULL};
  if (fl_emit_c(g, dir, &opt)) return -1;
  for (int i = 0; i < fl_runtime_file_count; i++)
    if (write_text(dir, fl_runtime_files[i].name, fl_runtime_files[i].text, fl_runtime_files[i].len))
      return -1;
  return write_makefile(dir, name);
}

/* Runs argv, with stdout and stderr going to log_path (or inherited when NULL).
 * Returns the exit status, 127 when the program could not be started. */
static int run_command(char *const *argv, const char *log_path) {
  pid_t pid = fork();
  if (pid < 0) return 127;
  if (pid == 0) {
    if (log_path) {
      int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Output of a shell-free command (pkg-config) into buf; 0 on success. */
static int capture(char *const *argv, char *buf, size_t cap) {
  int fds[2];
  if (pipe(fds)) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], 1);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2);
    close(fds[0]);
    close(fds[1]);
    execvp(argv[0], argv);
    _exit(127);
  }
  close(fds[1]);
  size_t used = 0;
  ssize_t got;
  while (used + 1 < cap && (got = read(fds[0], buf + used, cap - used - 1)) > 0) used += (size_t)got;
  buf[used] = '\0';
  close(fds[0]);
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  while (used && (buf[used - 1] == '\n' || buf[used - 1] == ' ')) buf[--used] = '\0';
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* Splits flags on spaces into argv (pkg-config output has no quoting here). */
static int split_flags(char *flags, char **argv, int at, int max) {
  for (char *tok = strtok(flags, " \t"); tok && at < max - 1; tok = strtok(NULL, " \t")) argv[at++] = tok;
  return at;
}

/* The compiler and linker flags for OpenBLAS and OpenMP. The generated loops
 * and the convolutions thread with OpenMP; OpenBLAS's OpenMP build then shares
 * the same threads, where its default pthreads build keeps its own spinning
 * between calls and the two fight over the cores (the program then runs its
 * loops on one thread). Debian installs the OpenMP build beside the default
 * (libopenblas-openmp-dev) without making it the default, so it is named by
 * its folder, and found again at run time through the rpath. */
static void blas_and_openmp_flags(const char *cc, char *flags, size_t cap) {
  char multiarch[256] = "";
  char *ask[] = {(char *)cc, "-print-multiarch", NULL};
  if (capture(ask, multiarch, sizeof multiarch) == 0) multiarch[strcspn(multiarch, "\r\n")] = '\0';
  char dir[512], lib[600];
  snprintf(dir, sizeof dir, "/usr/lib/%s/openblas-openmp", multiarch);
  snprintf(lib, sizeof lib, "%s/libopenblas.so", dir);
  if (multiarch[0] && access(lib, R_OK) == 0) {
    snprintf(flags, cap, "-I/usr/include/%s/openblas-openmp -L%s -Wl,-rpath,%s -lopenblas", multiarch, dir, dir);
  } else {
    char *pkg[] = {"pkg-config", "--cflags", "--libs", "openblas", NULL};
    if (capture(pkg, flags, cap)) snprintf(flags, cap, "-lopenblas");
    flags[strcspn(flags, "\r\n")] = '\0';
  }
  size_t used = strlen(flags);
  snprintf(flags + used, cap - used, " -fopenmp");
}

/* After a failed compile: find which dependency is missing and say how to get it. */
static void diagnose_missing(const char *cc, const char *dir) {
  static const struct {
    const char *header, *package;
  } deps[] = {{"cblas.h", "libopenblas-dev"},
              {"zlib.h", "zlib1g-dev"},
              {"curl/curl.h", "libcurl4-openssl-dev"},
              {"omp.h", "libomp-dev"}}; /* clang's OpenMP; gcc brings its own */
  char probe[4096], log[4096];
  snprintf(probe, sizeof probe, "%s/probe.c", dir);
  snprintf(log, sizeof log, "%s/probe.log", dir);
  for (size_t i = 0; i < sizeof deps / sizeof deps[0]; i++) {
    FILE *f = fopen(probe, "w");
    if (!f) return;
    fprintf(f, "#include <%s>\nint main(void) { return 0; }\n", deps[i].header);
    fclose(f);
    char blas_flags[1024] = "";
    char *pkg[] = {"pkg-config", "--cflags", "openblas", NULL};
    capture(pkg, blas_flags, sizeof blas_flags);
    char *argv[64] = {(char *)cc, "-E", "-o", "/dev/null"};
    int argc = split_flags(blas_flags, argv, 4, 60);
    argv[argc++] = probe;
    argv[argc] = NULL;
    if (run_command(argv, log) != 0)
      fl_note(nowhere(), "%s is missing: install it with `apt-get install %s`", deps[i].header, deps[i].package);
  }
}

static void remove_tree(const char *dir) {
  char path[4096];
  for (int i = 0; i < fl_runtime_file_count; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, fl_runtime_files[i].name);
    unlink(path);
  }
  static const char *const others[] = {"main.c", "Makefile", "compile.log", "probe.c", "probe.log"};
  for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, others[i]);
    unlink(path);
  }
}

int fl_build_program(const fl_graph *g, const fl_build_request *req) {
  char dir[] = "/tmp/flowc-build-XXXXXX";
  if (!mkdtemp(dir)) {
    fl_error(nowhere(), "cannot create a temporary folder: %s", strerror(errno));
    return -1;
  }
  char name[128];
  if (req->name) fl_c_identifier(req->name, name, sizeof name);
  else fl_model_name(req->source_path, name, sizeof name);
  int status = fl_emit_program(g, req, dir);
  const char *cc = req->cc ? req->cc : getenv("CC");
  if (!cc || !*cc) cc = "cc";
  char log[4096];
  snprintf(log, sizeof log, "%s/compile.log", dir);
  if (status == 0) {
    char flags[2048] = "";
    blas_and_openmp_flags(cc, flags, sizeof flags);
    char *argv[256];
    int argc = 0;
    argv[argc++] = (char *)cc;
    argv[argc++] = "-std=c99";
    argv[argc++] = "-O3";
    argv[argc++] = "-march=native";
    argv[argc++] = "-fno-math-errno";     /* sqrtf and friends inline and vectorize */
    argv[argc++] = "-ffp-contract=fast"; /* multiply-adds become FMAs, as in gnu99 */
    argv[argc++] = "-Wall";
    argv[argc++] = "-o";
    argv[argc++] = (char *)req->output;
    char sources[64][4200];
    int nsources = 0;
    snprintf(sources[nsources++], sizeof sources[0], "%s/main.c", dir);
    snprintf(sources[nsources++], sizeof sources[0], "%s/%s.c", dir, name);
    for (int i = 0; i < fl_runtime_file_count && nsources < 64; i++) {
      size_t len = strlen(fl_runtime_files[i].name);
      if (len > 2 && strcmp(fl_runtime_files[i].name + len - 2, ".c") == 0)
        snprintf(sources[nsources++], sizeof sources[0], "%s/%s", dir, fl_runtime_files[i].name);
    }
    for (int i = 0; i < nsources; i++) argv[argc++] = sources[i];
    argc = split_flags(flags, argv, argc, 240);
    argv[argc++] = "-lz";
    argv[argc++] = "-lcurl";
    argv[argc++] = "-lm";
    argv[argc] = NULL;
    if (req->verbose) {
      for (int i = 0; i < argc; i++) fprintf(stderr, "%s%s", i ? " " : "", argv[i]);
      fputc('\n', stderr);
    }
    int rc = run_command(argv, log);
    if (rc == 127) {
      fl_error(nowhere(), "no C compiler: '%s' could not be run; install one with `apt-get install gcc`, "
                          "or name one with --cc or $CC", cc);
      status = -1;
    } else if (rc != 0) {
      fl_error(nowhere(), "the C compiler failed on the generated code (log: %s)", log);
      FILE *f = fopen(log, "r");
      if (f) {
        char line[1024];
        for (int shown = 0; shown < 30 && fgets(line, sizeof line, f); shown++) fputs(line, stderr);
        fclose(f);
      }
      diagnose_missing(cc, dir);
      return -1;
    }
  }
  if (req->keep || status != 0) {
    fprintf(stderr, "flowc: generated sources kept in %s\n", dir);
  } else {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.c", dir, name);
    unlink(path);
    snprintf(path, sizeof path, "%s/%s.h", dir, name);
    unlink(path);
    remove_tree(dir);
    rmdir(dir);
  }
  return status;
}

/* ---- the commands --------------------------------------------------------- */

#include "commands.h"

/* Options of build and emit beyond the common ones. */
static const char *const build_value_options[] = {"--name", "--cc", "--device", NULL};

static int read_build_options(const struct flowc_args *args, fl_build_request *req, bool is_build) {
  for (int i = 0; i < args->nextra; i++) {
    const char *opt = args->extra[i];
    if (strcmp(opt, "--name") == 0 && i + 1 < args->nextra) req->name = args->extra[++i];
    else if (strcmp(opt, "--cc") == 0 && i + 1 < args->nextra && is_build) req->cc = args->extra[++i];
    else if (strcmp(opt, "--keep") == 0 && is_build) req->keep = true;
    else if (strcmp(opt, "--verbose") == 0 || strcmp(opt, "-v") == 0) req->verbose = true;
    else if (strcmp(opt, "-O0") == 0) req->unoptimized = true;
    else if (strcmp(opt, "--report") == 0) req->report = true;
    else if (strcmp(opt, "--device") == 0 && i + 1 < args->nextra) {
      const char *device = args->extra[++i];
      if (strcmp(device, "cuda") == 0) req->cuda = true;
      else if (strcmp(device, "cpu") != 0)
        return flowc_usage_error("%s: --device is cpu or cuda, not '%s'", args->command, device);
    } else if (strcmp(opt, "--nvcc") == 0 && is_build) req->nvcc = true;
    else return flowc_usage_error("%s: unknown option '%s'", args->command, opt);
  }
  return FLOWC_OK;
}

static int build_or_emit(int argc, char **argv, bool is_build) {
  struct flowc_args args;
  int rc = flowc_parse_args(argc, argv, &args, build_value_options);
  if (rc != FLOWC_OK) return rc;
  fl_build_request req = {.source_path = args.input, .output = args.output};
  rc = read_build_options(&args, &req, is_build);
  if (rc != FLOWC_OK) return rc;
  if (req.nvcc && !req.cuda) return flowc_usage_error("%s: --nvcc goes with --device cuda", args.command);
  char default_output[256];
  if (!req.output) {
    /* Like cc: the program is named after the description. */
    fl_model_name(args.input, default_output, sizeof default_output);
    if (!is_build) strncat(default_output, "_src", sizeof default_output - strlen(default_output) - 1);
    req.output = default_output;
  }
  fl_graph *g = flowc_load(&args);
  if (!g) return FLOWC_USER_ERROR;
  if (!req.unoptimized) fl_simplify(g);
  if (req.cuda) rc = is_build ? fl_build_cuda_program(g, &req) : fl_emit_cuda_program(g, &req, req.output);
  else rc = is_build ? fl_build_program(g, &req) : fl_emit_program(g, &req, req.output);
  fl_graph_free(g);
  if (rc) return FLOWC_USER_ERROR;
  if (!is_build) fprintf(stderr, "flowc: wrote %s/ (make -C %s builds it)\n", req.output, req.output);
  return FLOWC_OK;
}

/* With --infer, build and emit make inference code instead (infer.c). */
int cmd_build(int argc, char **argv) {
  return fl_infer_requested(argc, argv) ? cmd_infer(argc, argv, true) : build_or_emit(argc, argv, true);
}
int cmd_emit(int argc, char **argv) {
  return fl_infer_requested(argc, argv) ? cmd_infer(argc, argv, false) : build_or_emit(argc, argv, false);
}
