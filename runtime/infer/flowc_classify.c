/* flowc_classify.c - the command-line classifier around a flowc inference model (host and aarch64 Linux).
 *
 * flowc build --infer compiles this file with the generated model and
 * flowc_model.h, which names the model. Only the model code is kept free of
 * malloc and stdio; this program is an ordinary hosted one. IDX files may be
 * gzip-compressed when it is built with -DFLOWC_HAVE_ZLIB (the host build);
 * otherwise (the aarch64 build, whose sysroot has no zlib) they must be plain.
 * Pixels become floats as the training data loader makes them: byte / 255. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#ifdef FLOWC_HAVE_ZLIB
#include <zlib.h>
#endif

#include "flowc_model.h"

enum { IMAGE = FLOWC_MODEL_INPUT_SIZE, CLASSES = FLOWC_MODEL_CLASSES, BATCH = FLOWC_MODEL_BATCH };

static const char *program = FLOWC_MODEL_NAME;

static void usage(FILE *out) {
  fprintf(out,
          "usage: %s IMAGES [LABELS]   IDX files: the accuracy with LABELS, else each image's class\n"
          "       %s DIR               the test set in DIR (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)\n"
          "       %s IMAGE.pgm         a binary PGM (P5) of %d pixels: its class and the probabilities\n"
          "options:\n"
          "  --limit K     only the first K images\n"
          "  --logits      one line per image: its index, class and the model's %d outputs\n"
          "  --bench K     time K runs on the first image (or a blank one): median milliseconds\n"
          "the %s model, compiled by flowc for inference (batch %d)%s\n",
          program, program, program, IMAGE, CLASSES, FLOWC_MODEL_NAME, BATCH,
#ifdef FLOWC_HAVE_ZLIB
          "; IDX files may be gzip-compressed"
#else
          "; IDX files must be plain (gunzip them first)"
#endif
  );
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", program);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

/* ---- files ---------------------------------------------------------------- */

typedef struct {
  unsigned char *data;
  size_t len;
} bytes;

static bytes read_all(const char *path) {
  bytes b = {NULL, 0};
  size_t cap = 1 << 16;
#ifdef FLOWC_HAVE_ZLIB
  gzFile f = gzopen(path, "rb"); /* reads plain files as they are */
  if (!f) fail("cannot open %s: %s", path, strerror(errno));
  b.data = malloc(cap);
  int got;
  while (b.data && (got = gzread(f, b.data + b.len, (unsigned)(cap - b.len))) > 0) {
    b.len += (size_t)got;
    if (b.len == cap) b.data = realloc(b.data, cap *= 2);
  }
  int err = 0;
  const char *msg = gzerror(f, &err);
  if (err != Z_OK && err != Z_STREAM_END) fail("cannot read %s: %s", path, msg);
  gzclose(f);
#else
  FILE *f = fopen(path, "rb");
  if (!f) fail("cannot open %s: %s", path, strerror(errno));
  b.data = malloc(cap);
  size_t got;
  while (b.data && (got = fread(b.data + b.len, 1, cap - b.len, f)) > 0) {
    b.len += got;
    if (b.len == cap) b.data = realloc(b.data, cap *= 2);
  }
  if (ferror(f)) fail("cannot read %s: %s", path, strerror(errno));
  fclose(f);
  if (b.len >= 2 && b.data && b.data[0] == 0x1f && b.data[1] == 0x8b)
    fail("%s is gzip-compressed; this build reads plain IDX files: gunzip it first", path);
#endif
  if (!b.data) fail("out of memory reading %s", path);
  return b;
}

static uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An IDX file of unsigned bytes: its item count and the bytes of each item. */
static const unsigned char *idx_items(const bytes *b, const char *path, int want_dims, size_t item,
                                      size_t *count) {
  if (b->len < 4 || b->data[0] || b->data[1] || b->data[2] != 0x08)
    fail("%s is not an IDX file of unsigned bytes", path);
  int dims = b->data[3];
  if (dims < 1 || b->len < 4 + 4 * (size_t)dims) fail("%s: truncated IDX header", path);
  size_t per = 1;
  for (int d = 1; d < dims; d++) per *= be32(b->data + 4 + 4 * d);
  if ((want_dims == 1 && dims != 1) || per != item)
    fail("%s holds items of %zu values; the model takes %zu", path, per, item);
  *count = be32(b->data + 4);
  size_t have = (b->len - 4 - 4 * (size_t)dims) / per;
  if (have < *count) fail("%s is truncated: %zu of %zu items", path, have, *count);
  return b->data + 4 + 4 * dims;
}

/* A binary PGM (P5) of exactly IMAGE pixels, as floats in [0, 1]. */
static void read_pgm(const char *path, float *image) {
  bytes b = read_all(path);
  size_t at = 2;
  long fields[3];
  if (b.len < 2 || b.data[0] != 'P' || b.data[1] != '5') fail("%s is not a binary PGM (P5)", path);
  for (int k = 0; k < 3; k++) {
    for (;;) { /* white space and # comments */
      while (at < b.len && strchr(" \t\r\n", b.data[at])) at++;
      if (at < b.len && b.data[at] == '#')
        while (at < b.len && b.data[at] != '\n') at++;
      else
        break;
    }
    fields[k] = 0;
    if (at >= b.len || b.data[at] < '0' || b.data[at] > '9') fail("%s: malformed PGM header", path);
    while (at < b.len && b.data[at] >= '0' && b.data[at] <= '9' && fields[k] < 100000)
      fields[k] = fields[k] * 10 + (b.data[at++] - '0');
  }
  at++; /* the single white space before the pixels */
  long w = fields[0], h = fields[1], maxval = fields[2];
  if (maxval < 1 || maxval > 65535) fail("%s: PGM maxval %ld out of range", path, maxval);
  if (w * h != IMAGE) fail("%s is %ldx%ld; the model takes %d pixels", path, w, h, IMAGE);
  size_t size = maxval > 255 ? 2 : 1;
  if (b.len < at + (size_t)IMAGE * size) fail("%s is truncated", path);
  for (int i = 0; i < IMAGE; i++) {
    const unsigned char *p = b.data + at + (size_t)i * size;
    long v = size == 2 ? (long)p[0] << 8 | p[1] : p[0];
    image[i] = (float)v / (float)maxval;
  }
  free(b.data);
}

/* ---- running the model ------------------------------------------------------ */

static float input[BATCH * IMAGE], output[BATCH * CLASSES];

static int argmax(const float *v) {
  int best = 0;
  for (int c = 1; c < CLASSES; c++)
    if (v[c] > v[best]) best = c; /* the first maximum wins, as argmax does */
  return best;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void print_outputs(long index, const float *v) {
  printf("%ld %d", index, argmax(v));
  for (int c = 0; c < CLASSES; c++) printf(" %.9g", v[c]);
  putchar('\n');
}

/* Classifies count images of IMAGE bytes; returns the number of correct ones
 * when labels are given. */
static long classify(const unsigned char *images, const unsigned char *labels, size_t count, int logits) {
  long correct = 0;
  double start = now_ms();
  for (size_t first = 0; first < count; first += BATCH) {
    size_t n = count - first < BATCH ? count - first : BATCH;
    memset(input, 0, sizeof input); /* a short last batch is padded with blanks */
    for (size_t i = 0; i < n * IMAGE; i++) input[i] = images[first * IMAGE + i] / 255.0f;
    flowc_model_infer(input, output);
    for (size_t i = 0; i < n; i++) {
      const float *v = output + i * CLASSES;
      if (logits) print_outputs((long)(first + i), v);
      else if (!labels) printf("%zu %d\n", first + i, argmax(v));
      if (labels && argmax(v) == labels[first + i]) correct++;
    }
  }
  double ms = now_ms() - start;
  if (labels)
    printf("accuracy %.4f (%ld of %zu images), %.4f ms per image\n", count ? (double)correct / count : 0.0,
           correct, count, count ? ms / count : 0.0);
  return correct;
}

static void bench(const float *image, int runs) {
  for (int b = 0; b < BATCH; b++) memcpy(input + b * IMAGE, image, sizeof(float) * IMAGE);
  double *t = malloc(sizeof(double) * (size_t)runs);
  if (!t) fail("out of memory");
  for (int i = 0; i < 10; i++) flowc_model_infer(input, output); /* warm the caches */
  for (int i = 0; i < runs; i++) {
    double start = now_ms();
    flowc_model_infer(input, output);
    t[i] = now_ms() - start;
  }
  qsort(t, (size_t)runs, sizeof *t, compare_doubles);
  printf("latency_ms %.4f (median of %d runs, batch %d)\n", t[runs / 2], runs, BATCH);
  free(t);
}

static int is_directory(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* DIR/NAME, or DIR/NAME.gz when only that exists. */
static char *in_dir(const char *dir, const char *name) {
  size_t len = strlen(dir) + strlen(name) + 8;
  char *path = malloc(len);
  if (!path) fail("out of memory");
  snprintf(path, len, "%s/%s", dir, name);
  struct stat st;
  if (stat(path, &st) != 0) snprintf(path, len, "%s/%s.gz", dir, name);
  return path;
}

static long parse_count(const char *flag, const char *text) {
  char *end;
  errno = 0;
  long v = text ? strtol(text, &end, 10) : -1;
  if (!text || *end || errno || v < 1) fail("%s: expected a positive integer, found '%s'", flag, text ? text : "");
  return v;
}

int main(int argc, char **argv) {
  const char *files[2] = {NULL, NULL};
  int nfiles = 0, logits = 0;
  long limit = -1, runs = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--logits") == 0) {
      logits = 1;
    } else if (strcmp(argv[i], "--limit") == 0) {
      limit = parse_count("--limit", i + 1 < argc ? argv[++i] : NULL);
    } else if (strcmp(argv[i], "--bench") == 0) {
      runs = parse_count("--bench", i + 1 < argc ? argv[++i] : NULL);
    } else if (argv[i][0] == '-' && argv[i][1]) {
      usage(stderr);
      fail("unknown option '%s'", argv[i]);
    } else if (nfiles < 2) {
      files[nfiles++] = argv[i];
    } else {
      usage(stderr);
      fail("too many files");
    }
  }
  if (!nfiles && !runs) {
    usage(stderr);
    return 2;
  }
  static float first_image[IMAGE];
  const char *images_path = files[0], *labels_path = files[1];
  char *owned[2] = {NULL, NULL};
  if (images_path && is_directory(images_path)) {
    if (labels_path) fail("give a folder or IMAGES [LABELS], not both");
    images_path = owned[0] = in_dir(files[0], "t10k-images-idx3-ubyte");
    labels_path = owned[1] = in_dir(files[0], "t10k-labels-idx1-ubyte");
  }
  size_t len = images_path ? strlen(images_path) : 0;
  if (images_path && len > 4 && strcmp(images_path + len - 4, ".pgm") == 0) {
    read_pgm(images_path, first_image);
    if (runs) {
      bench(first_image, (int)runs);
      return 0;
    }
    for (int b = 0; b < BATCH; b++) memcpy(input + b * IMAGE, first_image, sizeof first_image);
    flowc_model_infer(input, output);
    float p[CLASSES];
    if (FLOWC_MODEL_PROBABILITIES) {
      memcpy(p, output, sizeof p);
    } else { /* softmax of the logits */
      float max = output[argmax(output)];
      double sum = 0;
      for (int c = 0; c < CLASSES; c++) sum += exp((double)output[c] - max);
      for (int c = 0; c < CLASSES; c++) p[c] = (float)(exp((double)output[c] - max) / sum);
    }
    printf("class %d\n", argmax(output));
    for (int c = 0; c < CLASSES; c++) printf("  %d  %.6f\n", c, p[c]);
    return 0;
  }
  bytes images = {NULL, 0}, labels = {NULL, 0};
  const unsigned char *pixels = NULL, *label_bytes = NULL;
  size_t count = 0, nlabels = 0;
  if (images_path) {
    images = read_all(images_path);
    pixels = idx_items(&images, images_path, 3, IMAGE, &count);
    if (labels_path) {
      labels = read_all(labels_path);
      label_bytes = idx_items(&labels, labels_path, 1, 1, &nlabels);
      if (nlabels < count) fail("%s has %zu labels for %zu images", labels_path, nlabels, count);
    }
    if (limit > 0 && (size_t)limit < count) count = (size_t)limit;
  }
  if (runs) {
    for (int i = 0; i < IMAGE && count; i++) first_image[i] = pixels[i] / 255.0f;
    bench(first_image, (int)runs);
  } else {
    classify(pixels, label_bytes, count, logits);
  }
  free(images.data);
  free(labels.data);
  free(owned[0]);
  free(owned[1]);
  return 0;
}
