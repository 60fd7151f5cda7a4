/* compare_checkpoints.c - compares two flowc checkpoints (safetensors) tensor by tensor, within a tolerance.
 *
 * usage: compare_checkpoints [--rtol R] [--slot-rtol S] [--atol A] [--quiet] EXPECTED ACTUAL
 *
 * For every tensor of EXPECTED, ACTUAL must hold one of the same name, dtype
 * and shape. Floats agree when max|actual - expected| <= atol + rtol *
 * max|expected| over the tensor (a norm-wise bound: the error against the
 * tensor's own scale, which is what float sums in a different order give);
 * integers and booleans must be equal. Optimizer slots (TensorFlow's names
 * with a '/': W/Adam, W/Adam_1, W/Momentum) hold gradients and their
 * squares, which a correct run reproduces closely: they get --slot-rtol
 * (default 1e-4). Variables get --rtol (default 1e-3), because Adam's first
 * steps divide each gradient by its own magnitude: where a gradient is near
 * zero (~3e-7), rounding changes that element's step by up to the learning
 * rate. Prints one line per tensor and exits
 * 0 when all agree, 1 when one does not, 2 on a usage or file error.
 * Standalone C99: tests/gpu/check.sh compiles it with cc, the test suite
 * through meson. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char name[256];
  char dtype[16];
  int64_t dims[8];
  int rank;
  uint64_t begin, end; /* data offsets */
} tensor;

typedef struct {
  unsigned char *bytes;
  size_t size;
  uint64_t header; /* length of the JSON header */
  tensor *tensors;
  int count;
} checkpoint;

static const char *at;  /* the JSON parser's position */
static const char *end; /* ... and the header's end */

static void skip_space(void) {
  while (at < end && (*at == ' ' || *at == '\n' || *at == '\t' || *at == '\r')) at++;
}

static int expect(char c) {
  skip_space();
  if (at >= end || *at != c) return -1;
  at++;
  return 0;
}

/* A JSON string without escapes other than \" and \\ (safetensors names). */
static int parse_string(char *out, size_t cap) {
  if (expect('"')) return -1;
  size_t n = 0;
  while (at < end && *at != '"') {
    if (*at == '\\' && at + 1 < end) at++;
    if (n + 1 < cap) out[n++] = *at;
    at++;
  }
  out[n] = '\0';
  return expect('"');
}

static int parse_number(int64_t *out) {
  skip_space();
  char *stop;
  long long v = strtoll(at, &stop, 10);
  if (stop == at) return -1;
  at = stop;
  *out = v;
  return 0;
}

static int parse_numbers(int64_t *out, int max, int *count) {
  if (expect('[')) return -1;
  *count = 0;
  skip_space();
  if (at < end && *at == ']') return expect(']');
  for (;;) {
    int64_t v;
    if (parse_number(&v)) return -1;
    if (*count < max) out[*count] = v;
    (*count)++;
    skip_space();
    if (at < end && *at == ',') {
      at++;
      continue;
    }
    return expect(']');
  }
}

/* Skips any JSON value (the metadata object). */
static int skip_value(void) {
  skip_space();
  if (at >= end) return -1;
  if (*at == '"') {
    char ignored[4096];
    return parse_string(ignored, sizeof ignored);
  }
  if (*at == '{' || *at == '[') {
    char open = *at, close = open == '{' ? '}' : ']';
    at++;
    skip_space();
    if (at < end && *at == close) {
      at++;
      return 0;
    }
    for (;;) {
      if (open == '{') {
        char key[512];
        if (parse_string(key, sizeof key) || expect(':')) return -1;
      }
      if (skip_value()) return -1;
      skip_space();
      if (at < end && *at == ',') {
        at++;
        continue;
      }
      return expect(close);
    }
  }
  while (at < end && *at != ',' && *at != '}' && *at != ']') at++;
  return 0;
}

static int parse_tensor(tensor *t) {
  if (expect('{')) return -1;
  for (;;) {
    char key[64];
    if (parse_string(key, sizeof key) || expect(':')) return -1;
    if (strcmp(key, "dtype") == 0) {
      if (parse_string(t->dtype, sizeof t->dtype)) return -1;
    } else if (strcmp(key, "shape") == 0) {
      if (parse_numbers(t->dims, 8, &t->rank) || t->rank > 8) return -1;
    } else if (strcmp(key, "data_offsets") == 0) {
      int64_t offsets[2];
      int n;
      if (parse_numbers(offsets, 2, &n) || n != 2) return -1;
      t->begin = (uint64_t)offsets[0];
      t->end = (uint64_t)offsets[1];
    } else if (skip_value()) {
      return -1;
    }
    skip_space();
    if (at < end && *at == ',') {
      at++;
      continue;
    }
    return expect('}');
  }
}

static int load(const char *path, checkpoint *c) {
  memset(c, 0, sizeof *c);
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  rewind(f);
  c->bytes = malloc(size > 0 ? (size_t)size : 1);
  if (!c->bytes || size < 8 || fread(c->bytes, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "%s: cannot read it\n", path);
    fclose(f);
    return -1;
  }
  fclose(f);
  c->size = (size_t)size;
  for (int i = 7; i >= 0; i--) c->header = c->header << 8 | c->bytes[i];
  if (c->header > c->size - 8) {
    fprintf(stderr, "%s: not a safetensors file\n", path);
    return -1;
  }
  at = (const char *)c->bytes + 8;
  end = at + c->header;
  if (expect('{')) goto bad;
  for (;;) {
    char key[256];
    if (parse_string(key, sizeof key) || expect(':')) goto bad;
    if (strcmp(key, "__metadata__") == 0) {
      if (skip_value()) goto bad;
    } else {
      tensor *grown = realloc(c->tensors, (size_t)(c->count + 1) * sizeof *grown);
      if (!grown) goto bad;
      c->tensors = grown;
      tensor *t = &c->tensors[c->count++];
      memset(t, 0, sizeof *t);
      snprintf(t->name, sizeof t->name, "%s", key);
      if (parse_tensor(t) || t->end < t->begin || 8 + c->header + t->end > c->size) goto bad;
    }
    skip_space();
    if (at < end && *at == ',') {
      at++;
      continue;
    }
    if (expect('}')) goto bad;
    return 0;
  }
bad:
  fprintf(stderr, "%s: cannot parse its safetensors header\n", path);
  return -1;
}

static void release(checkpoint *c) {
  free(c->bytes);
  free(c->tensors);
  memset(c, 0, sizeof *c);
}

static const tensor *find(const checkpoint *c, const char *name) {
  for (int i = 0; i < c->count; i++)
    if (strcmp(c->tensors[i].name, name) == 0) return &c->tensors[i];
  return NULL;
}

static const unsigned char *data_of(const checkpoint *c, const tensor *t) { return c->bytes + 8 + c->header + t->begin; }

int main(int argc, char **argv) {
  double rtol = 1e-3, slot_rtol = 1e-4, atol = 1e-10;
  bool quiet = false;
  const char *paths[2] = {NULL, NULL};
  int npaths = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--rtol") == 0 && i + 1 < argc) rtol = atof(argv[++i]);
    else if (strcmp(argv[i], "--slot-rtol") == 0 && i + 1 < argc) slot_rtol = atof(argv[++i]);
    else if (strcmp(argv[i], "--atol") == 0 && i + 1 < argc) atol = atof(argv[++i]);
    else if (strcmp(argv[i], "--quiet") == 0) quiet = true;
    else if (argv[i][0] != '-' && npaths < 2) paths[npaths++] = argv[i];
    else npaths = 3;
  }
  if (npaths != 2) {
    fprintf(stderr, "usage: compare_checkpoints [--rtol R] [--slot-rtol S] [--atol A] [--quiet] EXPECTED ACTUAL\n");
    return 2;
  }
  checkpoint expected, actual;
  memset(&actual, 0, sizeof actual);
  if (load(paths[0], &expected) || load(paths[1], &actual)) {
    release(&expected);
    release(&actual);
    return 2;
  }
  int failures = 0;
  for (int i = 0; i < expected.count; i++) {
    const tensor *e = &expected.tensors[i], *a = find(&actual, e->name);
    bool same_shape = a && strcmp(a->dtype, e->dtype) == 0 && a->rank == e->rank && a->end - a->begin == e->end - e->begin;
    for (int j = 0; same_shape && j < e->rank; j++) same_shape = a->dims[j] == e->dims[j];
    if (!same_shape) {
      printf("%-24s missing, or another dtype or shape in %s\n", e->name, paths[1]);
      failures++;
      continue;
    }
    const size_t bytes = (size_t)(e->end - e->begin);
    if (strcmp(e->dtype, "F32") != 0) {
      bool equal = memcmp(data_of(&expected, e), data_of(&actual, a), bytes) == 0;
      if (!quiet || !equal) printf("%-24s %s %s\n", e->name, e->dtype, equal ? "equal" : "DIFFERENT");
      failures += !equal;
      continue;
    }
    double max_diff = 0.0, scale = 0.0;
    size_t worst = 0, count = bytes / 4;
    for (size_t k = 0; k < count; k++) {
      float x, y;
      memcpy(&x, data_of(&expected, e) + 4 * k, 4);
      memcpy(&y, data_of(&actual, a) + 4 * k, 4);
      double diff = isnan(x) != isnan(y) ? INFINITY : isnan(x) ? 0.0 : fabs((double)y - (double)x);
      if (diff > max_diff) {
        max_diff = diff;
        worst = k;
      }
      if (fabs((double)x) > scale) scale = fabs((double)x);
    }
    const double tolerance = strchr(e->name, '/') ? slot_rtol : rtol;
    bool ok = max_diff <= atol + tolerance * scale;
    if (!quiet || !ok)
      printf("%-24s %9zu floats  max|diff| %.3e  max|expected| %.3e  relative %.3e  %s (worst at %zu)\n", e->name,
             count, max_diff, scale, scale > 0 ? max_diff / scale : max_diff, ok ? "ok" : "TOO FAR", worst);
    failures += !ok;
  }
  if (!quiet || failures)
    printf("%d of %d tensors %s (max|diff| <= %g + R * max|expected| per tensor; R = %g for variables, %g for "
           "optimizer slots)\n",
           failures ? failures : expected.count, expected.count, failures ? "differ" : "agree", atol, rtol, slot_rtol);
  release(&expected);
  release(&actual);
  return failures ? 1 : 0;
}
