/* driver.c - the training driver's flags, monotonic timing, Ctrl-C handling and BLAS threads. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "flowc_rt.h"

#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Generated programs link OpenBLAS. One built without a BLAS (-DFLRT_NO_BLAS,
 * as kernels.c takes it) or against another BLAS (-DFLRT_NO_OPENBLAS) still
 * compiles and links; flrt_set_threads then does nothing. */
#if !defined(FLRT_NO_BLAS) && !defined(FLRT_NO_OPENBLAS)
#define FLRT_USE_OPENBLAS_THREADS 1
extern void openblas_set_num_threads(int);
extern char *openblas_get_corename(void);
extern int openblas_get_parallel(void); /* 0 sequential, 1 pthreads, 2 OpenMP */
#endif
#include <unistd.h>
#if defined(__x86_64__) || (defined(__i386__) && defined(__SSE2__))
#include <xmmintrin.h>
#define FLUSH_TO_ZERO 0x8000u      /* MXCSR bit 15 */
#define DENORMALS_ARE_ZERO 0x0040u /* MXCSR bit 6 */
#endif

/* ---- options -------------------------------------------------------------- */

static void opt_errorf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* Strict decimal: digits only (no sign, no spaces, no 0x), at most max. */
static int opt_parse_count(const char *text, uint64_t max, uint64_t *out) {
  if (!text || !*text) return -1;
  uint64_t v = 0;
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    unsigned d = (unsigned)(*p - '0');
    if (v > (max - d) / 10) return -1;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

typedef enum { OPT_STRING, OPT_COUNT, OPT_POSITIVE, OPT_SEED, OPT_THREADS, OPT_SWITCH } opt_kind;

typedef struct {
  const char *name; /* without the leading -- */
  opt_kind kind;
} opt_spec;

static const opt_spec OPT_SPECS[] = {
    {"data", OPT_STRING},      {"download", OPT_STRING}, {"steps", OPT_COUNT},
    {"batch", OPT_POSITIVE},   {"seed", OPT_SEED},       {"save", OPT_STRING},
    {"save-every", OPT_COUNT}, {"resume", OPT_STRING},   {"log-every", OPT_COUNT},
    {"threads", OPT_THREADS},  {"quiet", OPT_SWITCH},    {"help", OPT_SWITCH},
    {"validation", OPT_COUNT},
};
#define OPT_NSPECS ((int)(sizeof OPT_SPECS / sizeof OPT_SPECS[0]))

/* Stores a flag's value into opt; returns -1 with err set when it is bad. */
static int opt_apply(const opt_spec *spec, const char *value, flrt_options *opt, char *err,
                     size_t errlen) {
  const char *name = spec->name;
  uint64_t n = 0;
  switch (spec->kind) {
  case OPT_STRING:
    if (!*value) {
      opt_errorf(err, errlen, "--%s: expected a value, found an empty string", name);
      return -1;
    }
    if (strcmp(name, "data") == 0) opt->data_dir = value;
    else if (strcmp(name, "download") == 0) opt->download_url = value;
    else if (strcmp(name, "save") == 0) opt->save_path = value;
    else opt->resume_path = value;
    return 0;
  case OPT_COUNT:
    if (opt_parse_count(value, INT64_MAX, &n) != 0) {
      opt_errorf(err, errlen, "--%s: expected a non-negative integer, found '%s'", name, value);
      return -1;
    }
    if (strcmp(name, "steps") == 0) opt->steps = (int64_t)n;
    else if (strcmp(name, "save-every") == 0) opt->save_every = (int64_t)n;
    else if (strcmp(name, "validation") == 0) opt->validation = (int64_t)n;
    else opt->log_every = (int64_t)n;
    return 0;
  case OPT_POSITIVE:
    if (opt_parse_count(value, INT64_MAX, &n) != 0 || n == 0) {
      opt_errorf(err, errlen, "--%s: expected a positive integer, found '%s'", name, value);
      return -1;
    }
    opt->batch = (int64_t)n;
    return 0;
  case OPT_SEED:
    if (opt_parse_count(value, UINT64_MAX, &n) != 0) {
      opt_errorf(err, errlen, "--%s: expected a non-negative integer, found '%s'", name, value);
      return -1;
    }
    opt->seed = n;
    return 0;
  case OPT_THREADS:
    if (opt_parse_count(value, INT_MAX, &n) != 0) {
      opt_errorf(err, errlen, "--%s: expected a non-negative integer, found '%s'", name, value);
      return -1;
    }
    opt->threads = (int)n;
    return 0;
  case OPT_SWITCH:
    opt->quiet = true; /* --help never gets here */
    return 0;
  }
  return -1;
}

int flrt_parse_options_err(int argc, char **argv, flrt_options *opt, char *err, size_t errlen) {
  /* Work on a copy so that a failed parse leaves opt as it was. */
  flrt_options parsed = *opt;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "-h") == 0) return 1;
    if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
      opt_errorf(err, errlen, "unexpected argument '%s'", arg);
      return -1;
    }
    const char *name = arg + 2;
    const char *equals = strchr(name, '=');
    size_t name_len = equals ? (size_t)(equals - name) : strlen(name);
    const opt_spec *spec = NULL;
    for (int s = 0; s < OPT_NSPECS; s++)
      if (strlen(OPT_SPECS[s].name) == name_len && strncmp(OPT_SPECS[s].name, name, name_len) == 0)
        spec = &OPT_SPECS[s];
    if (!spec) {
      opt_errorf(err, errlen, "unknown option '--%.*s'", (int)name_len, name);
      return -1;
    }
    if (spec->kind == OPT_SWITCH) {
      if (equals) {
        opt_errorf(err, errlen, "--%s takes no value", spec->name);
        return -1;
      }
      if (strcmp(spec->name, "help") == 0) return 1;
    }
    const char *value = NULL;
    if (equals) {
      value = equals + 1;
    } else if (spec->kind != OPT_SWITCH) {
      if (i + 1 >= argc) {
        opt_errorf(err, errlen, "--%s: missing value", spec->name);
        return -1;
      }
      value = argv[++i];
    }
    if (opt_apply(spec, value, &parsed, err, errlen) != 0) return -1;
  }
  *opt = parsed;
  return 0;
}

static const char *opt_program_name(int argc, char **argv) {
  if (argc < 1 || !argv[0] || !argv[0][0]) return "train";
  const char *slash = strrchr(argv[0], '/');
  return slash ? slash + 1 : argv[0];
}

static const char *opt_or_none(const char *s) { return s ? s : "none"; }

static void opt_print_usage_line(FILE *out, const char *prog) {
  fprintf(out,
          "usage: %s [--data DIR] [--download URL] [--steps N] [--batch N] [--seed N] "
          "[--validation N] [--save FILE] [--save-every K] [--resume FILE] [--log-every K] "
          "[--threads N] [--quiet] [--help]\n",
          prog);
}

static void opt_print_help(FILE *out, const char *prog, const char *about,
                           const flrt_options *d) {
  opt_print_usage_line(out, prog);
  if (about && *about) fprintf(out, "%s\n", about);
  fprintf(out, "\noptions (defaults in brackets):\n");
  fprintf(out, "  --data DIR        directory with the four MNIST IDX files [%s]\n",
          opt_or_none(d->data_dir));
  fprintf(out, "  --download URL    first fetch missing files from URL into --data [%s]\n",
          opt_or_none(d->download_url));
  fprintf(out, "  --steps N         training steps [%lld]\n", (long long)d->steps);
  fprintf(out, "  --batch N         examples per step, at least 1 [%lld]\n", (long long)d->batch);
  fprintf(out, "  --seed N          seed of initial values, shuffles and dropout [%llu]\n",
          (unsigned long long)d->seed);
  fprintf(out, "  --validation N    training examples set aside as the validation split [%lld]\n",
          (long long)d->validation);
  fprintf(out, "  --save FILE       write a safetensors checkpoint to FILE [%s]\n",
          opt_or_none(d->save_path));
  fprintf(out, "  --save-every K    also checkpoint every K steps, 0 = only at the end [%lld]\n",
          (long long)d->save_every);
  fprintf(out, "  --resume FILE     continue from the checkpoint in FILE [%s]\n",
          opt_or_none(d->resume_path));
  fprintf(out, "  --log-every K     progress line every K steps, 0 = never [%lld]\n",
          (long long)d->log_every);
  fprintf(out, "  --threads N       threads of the kernels and of BLAS, 0 = one per core [%d]\n", d->threads);
  fprintf(out, "  --quiet           no progress lines [%s]\n", d->quiet ? "on" : "off");
  fprintf(out, "  --help            show this text\n");
  fprintf(out, "Each flag also takes the form --flag=value.\n");
}

void flrt_parse_options(int argc, char **argv, const char *about, flrt_options *opt) {
  const flrt_options defaults = *opt;
  const char *prog = opt_program_name(argc, argv);
  char err[512];
  int r = flrt_parse_options_err(argc, argv, opt, err, sizeof err);
  if (r == 1) {
    opt_print_help(stdout, prog, about, &defaults);
    fflush(stdout);
    exit(0);
  }
  if (r != 0) {
    fprintf(stderr, "%s: %s\n", prog, err);
    opt_print_usage_line(stderr, prog);
    fprintf(stderr, "Run '%s --help' for what each flag does.\n", prog);
    exit(2);
  }
}

/* ---- time, signals, threads ------------------------------------------------ */

double flrt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static volatile sig_atomic_t interrupt_requested = 0;

/* First signal: ask the training loop to stop at the next step (it saves a
 * checkpoint on the way out). Second: the user means it; die of the signal
 * with the default action so the shell sees the usual exit status. */
static void interrupt_handler(int sig) {
  if (interrupt_requested) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    raise(sig);
    return;
  }
  interrupt_requested = 1;
}

void flrt_install_interrupt_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = interrupt_handler;
  sigemptyset(&sa.sa_mask);
  /* Restart interrupted reads and writes: the loop polls the flag, so the
   * signal needs no EINTR to be noticed. */
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

bool flrt_interrupted(void) { return interrupt_requested != 0; }

void flrt_set_threads(int n) {
  (void)n; /* used by neither branch when built without OpenMP and OpenBLAS */
#ifdef _OPENMP
  if (n > 0) omp_set_num_threads(n);
#ifdef FLRT_USE_OPENBLAS_THREADS
  if (openblas_get_parallel() == 1) omp_set_num_threads(1);
#endif
#endif
#ifdef FLRT_USE_OPENBLAS_THREADS
  if (n > 0) openblas_set_num_threads(n);
#endif
}

/* Denormal floats (below 1.2e-38 in magnitude) cost an x86 core on the
 * order of a hundred cycles per operation. A network in training reaches
 * them (Adam's moments, gradients through dead units): a Deep MNIST step
 * took 28 ms from a few thousand steps on instead of 21. TensorFlow flushes
 * them to zero on the CPU, and so do generated programs: FTZ (results) and
 * DAZ (inputs) in MXCSR, on this thread and every thread of the OpenMP team;
 * threads created later inherit the mode from the thread that creates them. */
void flrt_flush_denormals(void) {
#if defined(__x86_64__) || (defined(__i386__) && defined(__SSE2__))
  _mm_setcsr(_mm_getcsr() | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO);
#ifdef _OPENMP
#pragma omp parallel
  _mm_setcsr(_mm_getcsr() | FLUSH_TO_ZERO | DENORMALS_ARE_ZERO);
#endif
#endif
}

/* OpenBLAS picks its kernels from the CPU's name when the library loads. On
 * virtual machines that report a generic "Xeon Processor" it falls back to
 * the SSE3 (Prescott) kernels and runs GEMMs at half speed or worse. When that
 * happened and the CPU has AVX2 or AVX-512, run the program again with
 * OPENBLAS_CORETYPE naming the right kernels; a user's own setting wins. */
void flrt_select_blas_kernels(char **argv) {
#if defined(FLRT_USE_OPENBLAS_THREADS) && defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (getenv("OPENBLAS_CORETYPE")) return;
  const char *core = openblas_get_corename();
  if (!core || (strcmp(core, "prescott") != 0 && strcmp(core, "Prescott") != 0)) return;
  __builtin_cpu_init();
  const char *better = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                       : __builtin_cpu_supports("avx2")  ? "Haswell"
                                                         : NULL;
  if (!better || setenv("OPENBLAS_CORETYPE", better, 1) != 0) return;
  execv("/proc/self/exe", argv);
  /* No /proc: keep running on the slow kernels rather than fail. */
  unsetenv("OPENBLAS_CORETYPE");
#else
  (void)argv;
#endif
}
