/* test_driver.c - the driver's flags, --help and errors, timing, Ctrl-C handling, arena, threads. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flowc_rt.h"

static flrt_options defaults(void) {
  flrt_options o;
  memset(&o, 0, sizeof o);
  o.data_dir = "data/mnist";
  o.steps = 1000;
  o.batch = 100;
  o.seed = 7;
  o.log_every = 100;
  return o;
}

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])))

static char err[512];

static int parse(int argc, char **argv, flrt_options *o) {
  err[0] = '\0';
  return flrt_parse_options_err(argc, argv, o, err, sizeof err);
}

Test(options, no_flags_keep_the_defaults) {
  char *argv[] = {"train"};
  flrt_options o = defaults(), d = defaults();
  cr_assert_eq(parse(1, argv, &o), 0, "%s", err);
  cr_assert_eq(memcmp(&o, &d, sizeof o), 0);
}

Test(options, every_flag_in_both_forms) {
  char *argv[] = {"train",           "--data",        "/d",         "--download=http://m/x",
                  "--steps",         "20000",         "--batch=50", "--seed",
                  "18446744073709551615", "--save=ck.safetensors", "--save-every", "500",
                  "--resume",        "old.safetensors", "--log-every=0", "--threads",
                  "8",               "--quiet"};
  flrt_options o = defaults();
  cr_assert_eq(parse(ARGC(argv), argv, &o), 0, "%s", err);
  cr_assert_str_eq(o.data_dir, "/d");
  cr_assert_str_eq(o.download_url, "http://m/x");
  cr_assert_eq(o.steps, 20000);
  cr_assert_eq(o.batch, 50);
  cr_assert_eq(o.seed, UINT64_MAX);
  cr_assert_str_eq(o.save_path, "ck.safetensors");
  cr_assert_eq(o.save_every, 500);
  cr_assert_str_eq(o.resume_path, "old.safetensors");
  cr_assert_eq(o.log_every, 0);
  cr_assert_eq(o.threads, 8);
  cr_assert(o.quiet);
}

Test(options, later_flags_win) {
  char *argv[] = {"train", "--steps=1", "--steps", "2"};
  flrt_options o = defaults();
  cr_assert_eq(parse(ARGC(argv), argv, &o), 0, "%s", err);
  cr_assert_eq(o.steps, 2);
}

Test(options, help_is_reported) {
  char *argv[] = {"train", "--steps", "5", "--help", "--bogus"};
  flrt_options o = defaults();
  cr_assert_eq(parse(ARGC(argv), argv, &o), 1);
  char *argv2[] = {"train", "-h"};
  cr_assert_eq(parse(ARGC(argv2), argv2, &o), 1);
}

static void expect_error(char **argv, int argc, const char *message) {
  flrt_options o = defaults(), d = defaults();
  cr_assert_eq(parse(argc, argv, &o), -1, "accepted, expected: %s", message);
  cr_assert_str_eq(err, message);
  cr_assert_eq(memcmp(&o, &d, sizeof o), 0, "a failed parse changed the options");
}

Test(options, bad_values_are_named) {
  char *a1[] = {"train", "--steps", "abc"};
  expect_error(a1, 3, "--steps: expected a non-negative integer, found 'abc'");
  char *a2[] = {"train", "--steps=-5"};
  expect_error(a2, 2, "--steps: expected a non-negative integer, found '-5'");
  char *a3[] = {"train", "--batch", "0"};
  expect_error(a3, 3, "--batch: expected a positive integer, found '0'");
  char *a4[] = {"train", "--seed", "18446744073709551616"};
  expect_error(a4, 3, "--seed: expected a non-negative integer, found '18446744073709551616'");
  char *a5[] = {"train", "--steps", "9223372036854775808"};
  expect_error(a5, 3, "--steps: expected a non-negative integer, found '9223372036854775808'");
  char *a6[] = {"train", "--threads", "2147483648"};
  expect_error(a6, 3, "--threads: expected a non-negative integer, found '2147483648'");
  char *a7[] = {"train", "--log-every", " 5"};
  expect_error(a7, 3, "--log-every: expected a non-negative integer, found ' 5'");
  char *a8[] = {"train", "--save-every", ""};
  expect_error(a8, 3, "--save-every: expected a non-negative integer, found ''");
  char *a9[] = {"train", "--batch", "1e3"};
  expect_error(a9, 3, "--batch: expected a positive integer, found '1e3'");
  char *a10[] = {"train", "--steps", "10", "--batch", "12x"};
  expect_error(a10, 5, "--batch: expected a positive integer, found '12x'");
}

Test(options, malformed_command_lines_are_named) {
  char *a1[] = {"train", "--stpes", "10"};
  expect_error(a1, 3, "unknown option '--stpes'");
  char *a2[] = {"train", "--steps"};
  expect_error(a2, 2, "--steps: missing value");
  char *a3[] = {"train", "data"};
  expect_error(a3, 2, "unexpected argument 'data'");
  char *a4[] = {"train", "--quiet=yes"};
  expect_error(a4, 2, "--quiet takes no value");
  char *a5[] = {"train", "--data="};
  expect_error(a5, 2, "--data: expected a value, found an empty string");
  char *a6[] = {"train", "--"};
  expect_error(a6, 2, "unexpected argument '--'");
  char *a7[] = {"train", "--unknown=3"};
  expect_error(a7, 2, "unknown option '--unknown'");
}

/* Runs flrt_parse_options in a child; returns its exit status and output. */
static int run_parse_options(char **argv, int argc, char *out, size_t out_cap, char *errout,
                             size_t err_cap) {
  FILE *o = tmpfile(), *e = tmpfile();
  cr_assert(o && e);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    dup2(fileno(o), 1);
    dup2(fileno(e), 2);
    flrt_options opt = defaults();
    opt.save_path = "default.safetensors";
    flrt_parse_options(argc, argv, "Softmax regression on MNIST.", &opt);
    printf("parsed steps=%lld\n", (long long)opt.steps);
    fflush(stdout);
    _exit(0);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status), "the parser died (status %d)", status);
  rewind(o);
  rewind(e);
  size_t n = fread(out, 1, out_cap - 1, o);
  out[n] = '\0';
  n = fread(errout, 1, err_cap - 1, e);
  errout[n] = '\0';
  fclose(o);
  fclose(e);
  return WEXITSTATUS(status);
}

Test(options, help_prints_usage_with_defaults_and_exits_0) {
  char *argv[] = {"./build/softmax", "--steps", "3", "--help"};
  char out[8192], errout[8192];
  cr_assert_eq(run_parse_options(argv, 4, out, sizeof out, errout, sizeof errout), 0);
  /* Not an exact "": under LeakSanitizer a forked child's exit may add a note. */
  cr_assert_null(strstr(errout, "usage"), "help went to stderr: %s", errout);
  cr_assert_not_null(strstr(out, "usage: softmax "), "%s", out);
  cr_assert_not_null(strstr(out, "Softmax regression on MNIST."), "%s", out);
  static const char *const lines[][2] = {
      {"--data DIR", "[data/mnist]"},  {"--download URL", "[none]"},
      {"--steps N", "[1000]"},         {"--batch N", "[100]"},
      {"--seed N", "[7]"},             {"--save FILE", "[default.safetensors]"},
      {"--save-every K", "[0]"},       {"--resume FILE", "[none]"},
      {"--log-every K", "[100]"},      {"--threads N", "[0]"},
      {"--quiet", "[off]"},            {"--help", ""},
  };
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
    /* Each flag on its own line, with its default (not the --steps 3 given). */
    char needle[64];
    snprintf(needle, sizeof needle, "\n  %s ", lines[i][0]);
    const char *line = strstr(out, needle);
    cr_assert_not_null(line, "no line for %s in:\n%s", lines[i][0], out);
    const char *end = strchr(line + 1, '\n');
    cr_assert_not_null(end);
    char text[256];
    snprintf(text, sizeof text, "%.*s", (int)(end - line), line);
    cr_assert_not_null(strstr(text, lines[i][1]), "line '%s' lacks '%s'", text, lines[i][1]);
  }
  cr_assert_null(strstr(out, "parsed"), "--help did not exit");
}

Test(options, bad_flag_prints_error_and_usage_and_exits_2) {
  char *argv[] = {"train", "--steps", "abc"};
  char out[8192], errout[8192];
  cr_assert_eq(run_parse_options(argv, 3, out, sizeof out, errout, sizeof errout), 2);
  cr_assert_str_eq(out, "");
  cr_assert_not_null(strstr(errout, "train: --steps: expected a non-negative integer, found 'abc'\n"),
                     "%s", errout);
  cr_assert_not_null(strstr(errout, "usage: train [--data DIR]"), "%s", errout);
}

Test(options, good_flags_return_to_the_program) {
  char *argv[] = {"train", "--steps=12"};
  char out[8192], errout[8192];
  cr_assert_eq(run_parse_options(argv, 2, out, sizeof out, errout, sizeof errout), 0);
  cr_assert_str_eq(out, "parsed steps=12\n");
  cr_assert_str_eq(errout, "");
}

/* ---- time ----------------------------------------------------------------- */

Test(driver, now_ms_is_monotonic_milliseconds) {
  double a = flrt_now_ms();
  struct timespec pause = {0, 30 * 1000000L};
  nanosleep(&pause, NULL);
  double b = flrt_now_ms();
  cr_assert(b - a >= 29.0 && b - a < 2000.0, "30 ms sleep measured as %g ms", b - a);
  double prev = flrt_now_ms();
  for (int i = 0; i < 100000; i++) {
    double t = flrt_now_ms();
    cr_assert_geq(t, prev);
    prev = t;
  }
}

/* ---- interrupts ------------------------------------------------------------ */

/* In a child: the first signal only sets the flag, the second kills. */
static void check_interrupts(int sig) {
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    if (flrt_interrupted()) _exit(10);
    flrt_install_interrupt_handler();
    if (flrt_interrupted()) _exit(11);
    raise(sig);
    if (!flrt_interrupted()) _exit(12);
    raise(sig);
    _exit(13); /* the second signal must not return here */
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(!WIFEXITED(status), "child exited with %d instead of dying of the second signal",
            WEXITSTATUS(status));
  cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == sig, "status %d", status);
}

Test(driver, sigint_sets_flag_then_second_kills) { check_interrupts(SIGINT); }

Test(driver, sigterm_sets_flag_then_second_kills) { check_interrupts(SIGTERM); }

Test(driver, interrupt_from_another_process) {
  int ready[2];
  cr_assert_eq(pipe(ready), 0);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    flrt_install_interrupt_handler();
    if (write(ready[1], "r", 1) != 1) _exit(20);
    double start = flrt_now_ms();
    while (!flrt_interrupted())
      if (flrt_now_ms() - start > 10000) _exit(21);
    _exit(0);
  }
  char c;
  cr_assert_eq(read(ready[0], &c, 1), 1);
  kill(pid, SIGINT);
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %d", status);
  close(ready[0]);
  close(ready[1]);
}

/* ---- arena and threads ------------------------------------------------------ */

Test(driver, arena_is_aligned_and_grows) {
  flrt_arena a = {NULL, 0};
  cr_assert_eq(flrt_arena_reserve(&a, 100), 0);
  cr_assert_not_null(a.base);
  cr_assert_geq(a.cap, 100);
  cr_assert_eq((uintptr_t)a.base % 64, 0);
  memset(a.base, 1, a.cap);
  unsigned char *before = a.base;
  cr_assert_eq(flrt_arena_reserve(&a, 50), 0);
  cr_assert_eq(a.base, before, "a smaller request reallocated");
  cr_assert_eq(flrt_arena_reserve(&a, 1 << 20), 0);
  cr_assert_geq(a.cap, 1 << 20);
  cr_assert_eq((uintptr_t)a.base % 64, 0);
  memset(a.base, 2, a.cap);
  cr_assert_eq(flrt_arena_reserve(&a, SIZE_MAX - 8), -1);
  cr_assert_eq(flrt_arena_reserve(&a, 256), 0);
  flrt_arena_free(&a);
  cr_assert_null(a.base);
  cr_assert_eq(a.cap, 0);
  flrt_arena_free(&a);
}

Test(driver, set_threads_accepts_any_count) {
  flrt_set_threads(0);
  flrt_set_threads(2);
  flrt_set_threads(1);
  flrt_set_threads(-3);
}

/* ---- flrt_flush_denormals ------------------------------------------------- */

#if defined(__x86_64__) || (defined(__i386__) && defined(__SSE2__))
/* A product below the normal range, and a denormal input, on one thread. */
static bool flushes_here(void) {
  volatile float tiny = 1e-30f, scale = 1e-10f, denormal = 1e-40f, one = 1.0f;
  return tiny * scale == 0.0f && denormal * one == 0.0f;
}
#endif

/* Before: denormals are kept on every thread (the check itself can fail).
 * After: flushed on the calling thread and on the threads of the team that
 * already existed, which the runtime's loops reuse. */
Test(driver, flush_denormals_on_every_thread) {
#if !defined(__x86_64__) && !(defined(__i386__) && defined(__SSE2__))
  cr_skip_test("flushes denormals on x86 only");
#else
  int flushed = 0, threads = 0;
#ifdef _OPENMP
  omp_set_num_threads(3);
#pragma omp parallel reduction(+ : flushed, threads)
#endif
  {
    flushed += flushes_here();
    threads += 1;
  }
  cr_assert_eq(flushed, 0, "denormals flushed on %d threads before flrt_flush_denormals", flushed);
  flrt_flush_denormals();
  cr_assert(flushes_here(), "not flushed on the calling thread");
  flushed = threads = 0;
#ifdef _OPENMP
#pragma omp parallel reduction(+ : flushed, threads)
#endif
  {
    flushed += flushes_here();
    threads += 1;
  }
  cr_assert_eq(flushed, threads, "flushed on %d of %d threads", flushed, threads);
#endif
}
