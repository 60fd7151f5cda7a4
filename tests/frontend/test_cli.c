/* test_cli.c - the flowc command: exit statuses, messages, check/dump/graph output. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"

typedef struct {
  int status;
  char *out, *err;
} run_result;

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return strdup("");
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *text = malloc((size_t)n + 1);
  size_t got = fread(text, 1, (size_t)n, f);
  text[got] = '\0';
  fclose(f);
  return text;
}

/* Runs flowc with the arguments (a NULL-terminated list) from the source root. */
static run_result run_flowc(const char *first, ...) {
  const char *build = getenv("FLOWC_BUILD_ROOT"), *root = getenv("FLOWC_SOURCE_ROOT");
  cr_assert(build && root, "run the tests with meson test (FLOWC_BUILD_ROOT, FLOWC_SOURCE_ROOT)");
  char flowc[4096];
  snprintf(flowc, sizeof flowc, "%s/compiler/flowc", build);
  const char *argv[32] = {flowc};
  int argc = 1;
  va_list ap;
  va_start(ap, first);
  for (const char *a = first; a && argc < 31; a = va_arg(ap, const char *)) argv[argc++] = a;
  va_end(ap);
  argv[argc] = NULL;
  char out_path[] = "/tmp/flowc-out-XXXXXX", err_path[] = "/tmp/flowc-err-XXXXXX";
  int out_fd = mkstemp(out_path), err_fd = mkstemp(err_path);
  cr_assert(out_fd >= 0 && err_fd >= 0);
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    if (chdir(root) != 0) _exit(127);
    execv(flowc, (char *const *)argv);
    _exit(127);
  }
  int status;
  waitpid(pid, &status, 0);
  close(out_fd);
  close(err_fd);
  run_result r = {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(out_path),
                  slurp(err_path)};
  unlink(out_path);
  unlink(err_path);
  return r;
}

static void free_result(run_result *r) {
  free(r->out);
  free(r->err);
}

Test(cli, help_and_version) {
  run_result r = run_flowc("--help", NULL);
  cr_expect_eq(r.status, 0);
  cr_expect(strstr(r.out, "usage: flowc"));
  cr_expect(strstr(r.out, "check"));
  cr_expect(strstr(r.out, "-D NAME=VALUE"));
  free_result(&r);
  r = run_flowc("--version", NULL);
  cr_expect_eq(r.status, 0);
  cr_expect_str_eq(r.out, "flowc 0.1.0\n");
  free_result(&r);
}

Test(cli, usage_errors_exit_2) {
  run_result r = run_flowc("bogus", NULL);
  cr_expect_eq(r.status, 2);
  cr_expect(strstr(r.err, "flowc: unknown command 'bogus'"), "%s", r.err);
  cr_expect(strstr(r.err, "usage: flowc"));
  free_result(&r);
  r = run_flowc("chek", "examples/line_fit.flow", NULL);
  cr_expect_eq(r.status, 2);
  cr_expect(strstr(r.err, "did you mean 'check'?"), "%s", r.err);
  free_result(&r);
  r = run_flowc("check", NULL);
  cr_expect_eq(r.status, 2);
  cr_expect(strstr(r.err, "missing the input file"), "%s", r.err);
  free_result(&r);
  r = run_flowc("check", "--frobnicate", "examples/line_fit.flow", NULL);
  cr_expect_eq(r.status, 2);
  cr_expect(strstr(r.err, "unknown option '--frobnicate'"), "%s", r.err);
  free_result(&r);
  r = run_flowc("check", "-D", "lr", "examples/line_fit.flow", NULL);
  cr_expect_eq(r.status, 2);
  free_result(&r);
  r = run_flowc(NULL);
  cr_expect_eq(r.status, 2);
  free_result(&r);
}

Test(cli, missing_file_exits_1) {
  run_result r = run_flowc("check", "x.flow", NULL);
  cr_expect_eq(r.status, 1);
  cr_expect(strstr(r.err, "cannot read 'x.flow': No such file or directory"), "%s", r.err);
  free_result(&r);
}

Test(cli, corpus_errors_exit_1) {
  const char *files[] = {"tests/errors/030-unknown-function.flow", "tests/errors/007-binary-garbage.flow",
                         "tests/errors/100-matmul-inner-dimensions.flow"};
  const char *messages[] = {"tests/errors/030-unknown-function.flow:3:5: error: unknown function 'matmull'",
                            "tests/errors/007-binary-garbage.flow:3:1: error: unexpected character",
                            "tests/errors/100-matmul-inner-dimensions.flow:4:5: error: matmul: inner dimensions differ: [N, 784] x [748, 10]"};
  for (int i = 0; i < 3; i++) {
    run_result r = run_flowc("check", files[i], NULL);
    cr_expect_eq(r.status, 1, "%s", files[i]);
    cr_expect(strstr(r.err, messages[i]), "%s", r.err);
    cr_expect_str_eq(r.out, "");
    free_result(&r);
  }
}

Test(cli, check_lists_tensors) {
  run_result r = run_flowc("check", "examples/mnist_deep.flow", NULL);
  cr_expect_eq(r.status, 0, "%s", r.err);
  const char *line = strstr(r.out, "h_pool2 ");
  cr_assert(line, "%s", r.out);
  const char *eol = strchr(line, '\n');
  cr_assert(eol);
  char *text = strndup(line, (size_t)(eol - line));
  cr_expect(strstr(text, "f32[N, 7, 7, 64]"), "%s", text);
  free(text);
  cr_expect(strstr(r.out, "(train op: adam, 8 variables)"), "%s", r.out);
  /* Columns line up: every type starts in the same column. */
  cr_expect(strstr(r.out, "x                   f32[N, 784]\n"), "%s", r.out);
  free_result(&r);
}

Test(cli, defines_anywhere) {
  run_result r = run_flowc("-D", "lr=0.1", "dump", "examples/mnist_softmax.flow", NULL);
  cr_expect_eq(r.status, 0, "%s", r.err);
  cr_expect(strstr(r.out, "lr=0.1"), "%s", r.out);
  free_result(&r);
  r = run_flowc("dump", "examples/mnist_softmax.flow", "-Dlr=0.25", NULL);
  cr_expect(strstr(r.out, "lr=0.25"), "%s", r.out);
  free_result(&r);
  r = run_flowc("check", "examples/mnist_softmax.flow", "-D", "nope=1", NULL);
  cr_expect_eq(r.status, 1);
  cr_expect(strstr(r.err, "define 'nope' matches no assignment"), "%s", r.err);
  free_result(&r);
}

Test(cli, graph_to_a_file) {
  char path[] = "/tmp/flowc-dot-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  close(fd);
  run_result r = run_flowc("graph", "-o", path, "examples/line_fit.flow", NULL);
  cr_expect_eq(r.status, 0, "%s", r.err);
  cr_expect_str_eq(r.out, "");
  char *dot = slurp(path);
  cr_expect(strncmp(dot, "digraph", 7) == 0, "%s", dot);
  free(dot);
  unlink(path);
  free_result(&r);
}
