/* e2e_util.c - helpers for end-to-end tests: build programs with flowc, run them. */
#include "e2e_util.h"

#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

const char *e2e_source_root(void) {
  const char *root = getenv("FLOWC_SOURCE_ROOT");
  cr_assert(root, "FLOWC_SOURCE_ROOT is not set: run the tests through meson test");
  return root;
}

const char *e2e_build_root(void) {
  const char *root = getenv("FLOWC_BUILD_ROOT");
  cr_assert(root, "FLOWC_BUILD_ROOT is not set: run the tests through meson test");
  return root;
}

const char *e2e_scratch(const char *name) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/e2e-scratch", e2e_build_root());
  mkdir(path, 0777);
  snprintf(path, sizeof path, "%s/e2e-scratch/%s", e2e_build_root(), name);
  char cmd[8300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
  cr_assert_eq(system(cmd), 0, "cannot make %s", path);
  return path;
}

int e2e_run(char **output, const char *fmt, ...) {
  char cmd[16384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  char full[16500];
  snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
  FILE *p = popen(full, "r");
  cr_assert(p, "cannot run: %s", cmd);
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  size_t got;
  while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += got;
    if (cap - len < 4096) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
  }
  buf[len] = '\0';
  int status = pclose(p);
  if (output) *output = buf;
  else free(buf);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

const char *e2e_build(const char *dir, const char *flow, const char *program, const char *extra) {
  static char path[4096];
  char flow_path[4096];
  if (strchr(flow, '/')) snprintf(flow_path, sizeof flow_path, "%s", flow);
  else snprintf(flow_path, sizeof flow_path, "%s/examples/%s.flow", e2e_source_root(), flow);
  snprintf(path, sizeof path, "%s/%s", dir, program);
  char *out = NULL;
  int rc = e2e_run(&out, "'%s/compiler/flowc' build '%s' -o '%s' %s", e2e_build_root(), flow_path, path,
                   extra ? extra : "");
  cr_assert_eq(rc, 0, "flowc build %s failed (%d):\n%s", flow_path, rc, out);
  free(out);
  return path;
}

const char *e2e_digits_dir(void) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/../shared/data/mnist-digits-10k", e2e_source_root());
  char file[4200];
  snprintf(file, sizeof file, "%s/train-images-idx3-ubyte.gz", path);
  return access(file, R_OK) == 0 ? path : NULL;
}

const char *e2e_fashion_dir(void) {
  const char *path = "/usr/share/datasets/fashion-mnist";
  return access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) == 0 ? path : NULL;
}

double e2e_test_accuracy(const char *output) {
  const char *at = NULL, *p = output;
  while ((p = strstr(p, "test accuracy ")) != NULL) at = p++;
  if (!at) return -1;
  return atof(at + strlen("test accuracy "));
}

bool e2e_files_equal(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  bool same = fa && fb;
  while (same) {
    int ca = fgetc(fa), cb = fgetc(fb);
    if (ca != cb) same = false;
    if (ca == EOF || cb == EOF) break;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same;
}
