/* rt_test_util.c - helpers shared by the runtime tests: temp dirs, files, synthetic IDX data. */
#include "rt_test_util.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

char *rtt_make_temp_dir(void) {
  const char *base = getenv("TMPDIR");
  if (!base || !*base) base = "/tmp";
  char *path = malloc(strlen(base) + 32);
  cr_assert_not_null(path);
  sprintf(path, "%s/flrt-test-XXXXXX", base);
  cr_assert_not_null(mkdtemp(path), "mkdtemp(%s) failed", path);
  return path;
}

void rtt_remove_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    remove(dir);
    return;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char *p = rtt_path(dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
      chmod(p, 0700);
      rtt_remove_tree(p);
    } else {
      remove(p);
    }
    free(p);
  }
  closedir(d);
  rmdir(dir);
}

char *rtt_path(const char *dir, const char *name) {
  char *p = malloc(strlen(dir) + strlen(name) + 2);
  cr_assert_not_null(p);
  sprintf(p, "%s/%s", dir, name);
  return p;
}

void rtt_write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  cr_assert_not_null(f, "cannot create %s", path);
  cr_assert_eq(fwrite(data, 1, len, f), len);
  cr_assert_eq(fclose(f), 0);
}

unsigned char *rtt_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  cr_assert_not_null(f, "cannot open %s", path);
  size_t cap = 4096, n = 0;
  unsigned char *buf = malloc(cap);
  cr_assert_not_null(buf);
  for (;;) {
    if (n == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
      cr_assert_not_null(buf);
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    if (r == 0) break;
    n += r;
  }
  fclose(f);
  *len = n;
  return buf;
}

void rtt_write_idx(const char *path, int gz, uint32_t magic, const uint32_t *dims, int ndims,
                   const unsigned char *data, size_t len) {
  size_t header_len = 4 + 4 * (size_t)ndims;
  unsigned char *bytes = malloc(header_len + len);
  cr_assert_not_null(bytes);
  for (int k = 0; k <= ndims; k++) {
    uint32_t v = k == 0 ? magic : dims[k - 1];
    bytes[4 * k] = (unsigned char)(v >> 24);
    bytes[4 * k + 1] = (unsigned char)(v >> 16);
    bytes[4 * k + 2] = (unsigned char)(v >> 8);
    bytes[4 * k + 3] = (unsigned char)v;
  }
  if (len) memcpy(bytes + header_len, data, len);
  if (gz) {
    gzFile f = gzopen(path, "wb");
    cr_assert_not_null(f, "gzopen(%s) failed", path);
    cr_assert_eq(gzwrite(f, bytes, (unsigned)(header_len + len)), (int)(header_len + len));
    cr_assert_eq(gzclose(f), Z_OK);
  } else {
    rtt_write_file(path, bytes, header_len + len);
  }
  free(bytes);
}

unsigned char rtt_pixel(int64_t i, int64_t j, int test_split) {
  return (unsigned char)((i * 31 + j * 7 + (test_split ? 101 : 0)) % 256);
}

unsigned char rtt_label(int64_t i, int test_split) {
  return (unsigned char)((i * 3 + (test_split ? 1 : 0)) % 10);
}

void rtt_write_mnist_dir(const char *dir, int gz, int64_t n_train, int64_t n_test, int rows,
                         int cols) {
  static const char *names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
  for (int split = 0; split < 2; split++) {
    int64_t n = split ? n_test : n_train;
    int64_t features = (int64_t)rows * cols;
    unsigned char *pixels = malloc((size_t)(n * features) + 1);
    unsigned char *labels = malloc((size_t)n + 1);
    cr_assert(pixels && labels);
    for (int64_t i = 0; i < n; i++) {
      labels[i] = rtt_label(i, split);
      for (int64_t j = 0; j < features; j++) pixels[i * features + j] = rtt_pixel(i, j, split);
    }
    char name[64];
    snprintf(name, sizeof name, "%s%s", names[2 * split], gz ? ".gz" : "");
    char *p = rtt_path(dir, name);
    uint32_t image_dims[3] = {(uint32_t)n, (uint32_t)rows, (uint32_t)cols};
    rtt_write_idx(p, gz, 0x803, image_dims, 3, pixels, (size_t)(n * features));
    free(p);
    snprintf(name, sizeof name, "%s%s", names[2 * split + 1], gz ? ".gz" : "");
    p = rtt_path(dir, name);
    uint32_t label_dims[1] = {(uint32_t)n};
    rtt_write_idx(p, gz, 0x801, label_dims, 1, labels, (size_t)n);
    free(p);
    free(pixels);
    free(labels);
  }
}

static int rtt_python_runs(const char *python, const char *code) {
  size_t len = strlen(python) + strlen(code) + 64;
  char *cmd = malloc(len);
  cr_assert_not_null(cmd);
  /* The code never holds a single quote: the tests write it that way. */
  cr_assert_null(strchr(code, '\''));
  snprintf(cmd, len, "%s -c '%s' >/dev/null 2>&1", python, code);
  int rc = system(cmd);
  free(cmd);
  return rc == 0;
}

const char *rtt_python_for(const char *code) {
  static const char *const candidates[] = {"python3", "/usr/bin/python3"};
  for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++)
    if (rtt_python_runs(candidates[i], code)) return candidates[i];
  return NULL;
}
