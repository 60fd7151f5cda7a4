/* data.c - MNIST-style IDX files (gzip or plain, read through zlib) and read_data_sets. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "flowc_rt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#define IDX_MAGIC_LABELS 0x00000801u
#define IDX_MAGIC_IMAGES 0x00000803u
#define MNIST_CLASSES 10

/* Far beyond any real data set; rejects headers whose counts would overflow
 * size computations before anything is allocated. */
#define IDX_MAX_COUNT 0x7fffffffu
#define IDX_MAX_FEATURES (1u << 24)

/* gzread takes an unsigned int length; read in pieces well below that. */
#define GZ_CHUNK (1u << 24)

static const char *const MNIST_FILES[4] = {
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
};

static void data_errorf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static char *data_join_path(const char *dir, const char *name, size_t name_len) {
  size_t dir_len = strlen(dir);
  int need_slash = dir_len > 0 && dir[dir_len - 1] != '/';
  char *path = malloc(dir_len + (size_t)need_slash + name_len + 1);
  if (!path) return NULL;
  memcpy(path, dir, dir_len);
  if (need_slash) path[dir_len] = '/';
  memcpy(path + dir_len + need_slash, name, name_len);
  path[dir_len + need_slash + name_len] = '\0';
  return path;
}

static int data_is_regular_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Finds `name` (which ends in .gz) in dir, or the same name without .gz.
 * Returns a malloc'd path, or NULL with err set. */
static char *data_find_file(const char *dir, const char *name, char *err, size_t errlen) {
  size_t len = strlen(name);
  char *gz_path = data_join_path(dir, name, len);
  char *plain_path = data_join_path(dir, name, len - 3);
  if (!gz_path || !plain_path) {
    free(gz_path);
    free(plain_path);
    data_errorf(err, errlen, "out of memory");
    return NULL;
  }
  if (data_is_regular_file(gz_path)) {
    free(plain_path);
    return gz_path;
  }
  if (data_is_regular_file(plain_path)) {
    free(gz_path);
    return plain_path;
  }
  data_errorf(err, errlen,
              "cannot find %s (nor %s): the data directory must hold %s, %s, %s and %s "
              "(gzip or plain). MNIST is published at http://yann.lecun.com/exdb/mnist/ "
              "and --download URL fetches the four files from a mirror; Debian's "
              "dataset-fashion-mnist package provides Fashion-MNIST in "
              "/usr/share/datasets/fashion-mnist",
              gz_path, plain_path, MNIST_FILES[0], MNIST_FILES[1], MNIST_FILES[2],
              MNIST_FILES[3]);
  free(gz_path);
  free(plain_path);
  return NULL;
}

/* Reads up to n bytes; returns how many were read (short at end of file), or
 * -1 when zlib reports corrupt data (err set). */
static int64_t data_gz_read(gzFile gz, const char *path, unsigned char *buf, uint64_t n,
                            char *err, size_t errlen) {
  uint64_t got = 0;
  while (got < n) {
    uint64_t want = n - got < GZ_CHUNK ? n - got : GZ_CHUNK;
    int r = gzread(gz, buf + got, (unsigned)want);
    if (r > 0) {
      got += (uint64_t)r;
      continue;
    }
    int errnum = Z_OK;
    const char *msg = gzerror(gz, &errnum);
    /* Z_BUF_ERROR is a gzip stream that ends early: a truncated file, which
     * the caller reports with the byte counts. */
    if (r < 0 || (errnum != Z_OK && errnum != Z_BUF_ERROR)) {
      if (errnum == Z_ERRNO)
        data_errorf(err, errlen, "file %s: read error: %s", path, strerror(errno));
      else
        data_errorf(err, errlen, "file %s: corrupt gzip data: %s", path, msg ? msg : "?");
      return -1;
    }
    break;
  }
  return (int64_t)got;
}

/* Reads exactly n bytes of `what` or fails naming the file and the shortfall
 * (counting `already` bytes of `what` read before). The buffer grows as data
 * arrives, so a corrupt header promising gigabytes fails as truncated instead
 * of allocating them. Returns a malloc'd buffer. */
static unsigned char *data_read_exact(gzFile gz, const char *path, uint64_t n, uint64_t already,
                                      const char *what, char *err, size_t errlen) {
  if (n > (uint64_t)SIZE_MAX - 1) {
    data_errorf(err, errlen, "file %s: %s of %llu bytes is too large", path, what,
                (unsigned long long)n);
    return NULL;
  }
  uint64_t cap = n < (1u << 20) ? n : (1u << 20);
  unsigned char *buf = malloc((size_t)(cap > 0 ? cap : 1));
  if (!buf) {
    data_errorf(err, errlen, "out of memory reading %s", path);
    return NULL;
  }
  uint64_t got = 0;
  for (;;) {
    int64_t r = data_gz_read(gz, path, buf + got, cap - got, err, errlen);
    if (r < 0) {
      free(buf);
      return NULL;
    }
    got += (uint64_t)r;
    if (got < cap) break; /* end of file */
    if (cap == n) break;
    uint64_t next = cap * 2 < n ? cap * 2 : n;
    unsigned char *grown = realloc(buf, (size_t)next);
    if (!grown) {
      free(buf);
      data_errorf(err, errlen, "out of memory reading %s", path);
      return NULL;
    }
    buf = grown;
    cap = next;
  }
  if (got < n) {
    free(buf);
    data_errorf(err, errlen, "file %s: truncated: expected %llu bytes of %s, found %llu", path,
                (unsigned long long)(already + n), what, (unsigned long long)(already + got));
    return NULL;
  }
  return buf;
}

/* Reads the rest of the stream so that zlib checks the gzip trailer's CRC:
 * a corrupted file whose damage decompresses to plausible bytes is only
 * caught there. Trailing bytes are tolerated. */
static int data_drain(gzFile gz, const char *path, char *err, size_t errlen) {
  unsigned char scratch[4096];
  for (;;) {
    int r = gzread(gz, scratch, sizeof scratch);
    if (r > 0) continue;
    int errnum = Z_OK;
    const char *msg = gzerror(gz, &errnum);
    if (r < 0 || errnum != Z_OK) {
      if (errnum == Z_BUF_ERROR)
        data_errorf(err, errlen, "file %s: truncated: the gzip stream ends before its trailer",
                    path);
      else if (errnum == Z_ERRNO)
        data_errorf(err, errlen, "file %s: read error: %s", path, strerror(errno));
      else
        data_errorf(err, errlen, "file %s: corrupt gzip data: %s", path, msg ? msg : "?");
      return -1;
    }
    return 0;
  }
}

static uint32_t data_be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

typedef struct {
  int64_t count;
  int64_t rows, cols; /* images only */
  unsigned char *bytes;
} idx_file;

/* Reads an IDX file of labels (rank 1) or images (rank 3). */
static int data_read_idx(const char *path, int images, idx_file *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  gzFile gz = gzopen(path, "rb");
  if (!gz) {
    data_errorf(err, errlen, "cannot open %s: %s", path,
                errno ? strerror(errno) : "out of memory");
    return -1;
  }
  const uint32_t magic_expected = images ? IDX_MAGIC_IMAGES : IDX_MAGIC_LABELS;
  const uint64_t header_bytes = images ? 16 : 8;
  const char *kind = images ? "image" : "label";
  /* The magic number first, so that a wrong kind of file is called that
   * rather than "truncated" when it is shorter than the header expected. */
  unsigned char *header = data_read_exact(gz, path, 4, 0, "header", err, errlen);
  if (!header) goto fail;
  uint32_t magic = data_be32(header);
  free(header);
  if (magic != magic_expected) {
    const uint32_t other = images ? IDX_MAGIC_LABELS : IDX_MAGIC_IMAGES;
    data_errorf(err, errlen,
                "file %s: not an IDX %s file: magic number 0x%08lx, expected 0x%08lx%s", path,
                kind, (unsigned long)magic, (unsigned long)magic_expected,
                magic == other ? (images ? " (this is a label file)" : " (this is an image file)")
                               : "");
    goto fail;
  }
  header = data_read_exact(gz, path, header_bytes - 4, 4, "header", err, errlen);
  if (!header) goto fail;
  uint32_t count = data_be32(header);
  uint32_t rows = images ? data_be32(header + 4) : 1;
  uint32_t cols = images ? data_be32(header + 8) : 1;
  free(header);
  if (count == 0 || count > IDX_MAX_COUNT) {
    data_errorf(err, errlen, "file %s: implausible number of %ss: %lu", path, kind,
                (unsigned long)count);
    goto fail;
  }
  if (rows == 0 || cols == 0 || (uint64_t)rows * cols > IDX_MAX_FEATURES) {
    data_errorf(err, errlen, "file %s: implausible image size %lux%lu", path,
                (unsigned long)rows, (unsigned long)cols);
    goto fail;
  }
  uint64_t data_bytes = (uint64_t)count * rows * cols;
  char what[32];
  snprintf(what, sizeof what, "%s data", kind);
  out->bytes = data_read_exact(gz, path, data_bytes, 0, what, err, errlen);
  if (!out->bytes) goto fail;
  if (data_drain(gz, path, err, errlen) != 0) goto fail;
  gzclose(gz);
  out->count = count;
  out->rows = rows;
  out->cols = cols;
  return 0;
fail:
  free(out->bytes);
  out->bytes = NULL;
  gzclose(gz);
  return -1;
}

/* Builds a split from examples [first, first+n) of the image and label bytes. */
static int data_make_split(flrt_split *s, const idx_file *images, const idx_file *labels,
                           int64_t first, int64_t n) {
  const int64_t features = images->rows * images->cols;
  s->n = n;
  s->features = features;
  s->classes = MNIST_CLASSES;
  s->pixels = NULL;
  s->labels = NULL;
  if (n == 0) return 0;
  s->pixels = malloc((size_t)n * (size_t)features);
  s->labels = malloc((size_t)n);
  if (!s->pixels || !s->labels) return -1;
  const unsigned char *src = images->bytes + (size_t)first * (size_t)features;
  memcpy(s->pixels, src, (size_t)n * (size_t)features);
  memcpy(s->labels, labels->bytes + first, (size_t)n);
  return 0;
}

static void data_free_split(flrt_split *s) {
  free(s->pixels);
  free(s->labels);
  memset(s, 0, sizeof *s);
}

static int data_check_labels(const char *path, const idx_file *labels, char *err, size_t errlen) {
  for (int64_t i = 0; i < labels->count; i++) {
    if (labels->bytes[i] >= MNIST_CLASSES) {
      data_errorf(err, errlen, "file %s: label %u of example %lld is outside 0..%d", path,
                  (unsigned)labels->bytes[i], (long long)i, MNIST_CLASSES - 1);
      return -1;
    }
  }
  return 0;
}

int flrt_read_data_sets(const char *dir, int64_t validation, flrt_datasets *out, char *err,
                        size_t errlen) {
  memset(out, 0, sizeof *out);
  if (!dir) dir = ".";
  char *paths[4] = {NULL, NULL, NULL, NULL};
  idx_file files[4];
  memset(files, 0, sizeof files);
  int status = -1;

  for (int i = 0; i < 4; i++) {
    paths[i] = data_find_file(dir, MNIST_FILES[i], err, errlen);
    if (!paths[i]) goto done;
  }
  for (int i = 0; i < 4; i++) {
    const int is_images = (i % 2) == 0;
    if (data_read_idx(paths[i], is_images, &files[i], err, errlen) != 0) goto done;
    if (!is_images && data_check_labels(paths[i], &files[i], err, errlen) != 0) goto done;
  }
  for (int i = 0; i < 4; i += 2) {
    if (files[i].count != files[i + 1].count) {
      data_errorf(err, errlen, "%s holds %lld images but %s holds %lld labels", paths[i],
                  (long long)files[i].count, paths[i + 1], (long long)files[i + 1].count);
      goto done;
    }
  }
  if (files[0].rows != files[2].rows || files[0].cols != files[2].cols) {
    data_errorf(err, errlen, "%s holds %lldx%lld images but %s holds %lldx%lld images", paths[0],
                (long long)files[0].rows, (long long)files[0].cols, paths[2],
                (long long)files[2].rows, (long long)files[2].cols);
    goto done;
  }

  const int64_t total_train = files[0].count;
  if (validation < 0) validation = 0;
  if (validation > total_train - 1) validation = total_train - 1;
  if (data_make_split(&out->validation, &files[0], &files[1], 0, validation) != 0 ||
      data_make_split(&out->train, &files[0], &files[1], validation, total_train - validation) !=
          0 ||
      data_make_split(&out->test, &files[2], &files[3], 0, files[2].count) != 0) {
    data_errorf(err, errlen, "out of memory loading the data sets from %s", dir);
    flrt_free_data_sets(out);
    goto done;
  }
  status = 0;
done:
  for (int i = 0; i < 4; i++) {
    free(paths[i]);
    free(files[i].bytes);
  }
  return status;
}

void flrt_free_data_sets(flrt_datasets *d) {
  if (!d) return;
  data_free_split(&d->train);
  data_free_split(&d->validation);
  data_free_split(&d->test);
}
