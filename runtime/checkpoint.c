/* checkpoint.c - safetensors checkpoints: atomic save, strictly validated load. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "flowc_rt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* The format (https://github.com/huggingface/safetensors): an 8-byte
 * little-endian header length N, N bytes of JSON
 *   {"__metadata__":{"k":"v"},"W":{"dtype":"F32","shape":[784,10],
 *    "data_offsets":[0,31360]},...}
 * padded with spaces, then the tensors' bytes, little-endian; data_offsets
 * are relative to the end of the header. */

/* The reference implementation refuses larger headers too; a bigger length
 * means the file is not a safetensors file. */
#define CKPT_MAX_HEADER (100u * 1024u * 1024u)
#define CKPT_MAX_RANK 8
/* Nesting in a valid header is 3 deep; the limit keeps garbage like
 * "[[[[..." from exhausting the stack. */
#define JSON_MAX_DEPTH 16

static void ckpt_errorf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* ---- dtypes --------------------------------------------------------------- */

typedef struct {
  const char *name;
  unsigned size;
} ckpt_dtype_info;

/* Every safetensors dtype, so that a checkpoint holding tensors this model
 * does not use still validates. */
static const ckpt_dtype_info CKPT_DTYPES[] = {
    {"F32", 4},    {"I32", 4},     {"I64", 8},     {"BOOL", 1}, {"F64", 8},
    {"F16", 2},    {"BF16", 2},    {"U8", 1},      {"I8", 1},   {"I16", 2},
    {"U16", 2},    {"U32", 4},     {"U64", 8},     {"F8_E5M2", 1}, {"F8_E4M3", 1},
};
#define CKPT_NDTYPES ((int)(sizeof CKPT_DTYPES / sizeof CKPT_DTYPES[0]))

/* Index into CKPT_DTYPES of a flrt_dtype, or -1. */
static int ckpt_dtype_index(flrt_dtype d) {
  switch (d) {
  case FLRT_F32: return 0;
  case FLRT_I32: return 1;
  case FLRT_I64: return 2;
  case FLRT_BOOL: return 3;
  }
  return -1;
}

static int ckpt_host_is_little_endian(void) {
  const uint16_t probe = 1;
  unsigned char first;
  memcpy(&first, &probe, 1);
  return first == 1;
}

static void ckpt_byteswap(unsigned char *p, size_t count, unsigned size) {
  for (size_t i = 0; i < count; i++, p += size)
    for (unsigned a = 0, b = size - 1; a < b; a++, b--) {
      unsigned char t = p[a];
      p[a] = p[b];
      p[b] = t;
    }
}

/* ---- growable string ------------------------------------------------------ */

typedef struct {
  char *data;
  size_t len, cap;
  int failed; /* out of memory: later appends are ignored */
} ckpt_buf;

static void buf_append(ckpt_buf *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) {
      b->failed = 1;
      return;
    }
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static void buf_puts(ckpt_buf *b, const char *s) { buf_append(b, s, strlen(s)); }

static void buf_put_u64(ckpt_buf *b, uint64_t v) {
  char tmp[24];
  snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
  buf_puts(b, tmp);
}

/* A JSON string literal; bytes >= 0x80 pass through (names are UTF-8). */
static void buf_put_json_string(ckpt_buf *b, const char *s) {
  buf_append(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    switch (*p) {
    case '"': buf_append(b, "\\\"", 2); break;
    case '\\': buf_append(b, "\\\\", 2); break;
    case '\n': buf_append(b, "\\n", 2); break;
    case '\r': buf_append(b, "\\r", 2); break;
    case '\t': buf_append(b, "\\t", 2); break;
    default:
      if (*p < 0x20) {
        snprintf(esc, sizeof esc, "\\u%04x", (unsigned)*p);
        buf_puts(b, esc);
      } else {
        buf_append(b, (const char *)p, 1);
      }
    }
  }
  buf_append(b, "\"", 1);
}

/* ---- a small JSON parser, for exactly what a safetensors header holds ----- */

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind;

typedef struct json_value json_value;
typedef struct json_member json_member;

struct json_value {
  json_kind kind;
  /* JSON_NUMBER: whether it is a non-negative integer that fits in int64
   * (the only numbers a header needs), and its value. */
  int is_count;
  int64_t count_value;
  /* JSON_STRING: decoded bytes, NUL-terminated, len excludes the NUL (the
   * string may hold \u0000, so len is authoritative). */
  char *str;
  size_t len;
  /* JSON_ARRAY: items[n]; JSON_OBJECT: members[n]. */
  json_value *items;
  json_member *members;
  size_t n, cap;
};

struct json_member {
  char *key;
  size_t key_len;
  json_value value;
};

typedef struct {
  const char *start, *p, *end;
  char *err;
  size_t errlen;
  const char *path;
  int failed;
} json_parser;

static void json_fail(json_parser *jp, const char *what) {
  if (jp->failed) return;
  jp->failed = 1;
  ckpt_errorf(jp->err, jp->errlen, "checkpoint %s: malformed header at byte %lld: %s", jp->path,
              (long long)(jp->p - jp->start), what);
}

static void json_free(json_value *v) {
  if (!v) return;
  free(v->str);
  for (size_t i = 0; i < v->n; i++) {
    if (v->kind == JSON_ARRAY) json_free(&v->items[i]);
    if (v->kind == JSON_OBJECT) {
      free(v->members[i].key);
      json_free(&v->members[i].value);
    }
  }
  free(v->items);
  free(v->members);
  memset(v, 0, sizeof *v);
}

static void json_skip_space(json_parser *jp) {
  while (jp->p < jp->end &&
         (*jp->p == ' ' || *jp->p == '\t' || *jp->p == '\n' || *jp->p == '\r'))
    jp->p++;
}

static int json_hex4(json_parser *jp, unsigned *out) {
  if (jp->end - jp->p < 4) {
    json_fail(jp, "incomplete \\u escape");
    return -1;
  }
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    char c = jp->p[i];
    unsigned d;
    if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
    else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
    else {
      json_fail(jp, "bad hex digit in \\u escape");
      return -1;
    }
    v = v * 16 + d;
  }
  jp->p += 4;
  *out = v;
  return 0;
}

static size_t json_put_utf8(char *dst, unsigned cp) {
  if (cp < 0x80) {
    dst[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    dst[0] = (char)(0xC0 | (cp >> 6));
    dst[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    dst[0] = (char)(0xE0 | (cp >> 12));
    dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    dst[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  dst[0] = (char)(0xF0 | (cp >> 18));
  dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  dst[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Parses a string literal at jp->p (which is at the opening quote). The
 * decoded form is never longer than the literal, which bounds the buffer. */
static int json_parse_string(json_parser *jp, char **out, size_t *out_len) {
  jp->p++; /* opening quote */
  const char *scan = jp->p;
  while (scan < jp->end && *scan != '"') scan += (*scan == '\\' && scan + 1 < jp->end) ? 2 : 1;
  if (scan >= jp->end) {
    json_fail(jp, "unterminated string");
    return -1;
  }
  char *s = malloc((size_t)(scan - jp->p) + 1);
  if (!s) {
    json_fail(jp, "out of memory");
    return -1;
  }
  size_t len = 0;
  while (*jp->p != '"') {
    unsigned char c = (unsigned char)*jp->p;
    if (c < 0x20) {
      json_fail(jp, "control character in string");
      goto fail;
    }
    if (c != '\\') {
      s[len++] = (char)c;
      jp->p++;
      continue;
    }
    jp->p++;
    char e = *jp->p++;
    switch (e) {
    case '"': s[len++] = '"'; break;
    case '\\': s[len++] = '\\'; break;
    case '/': s[len++] = '/'; break;
    case 'b': s[len++] = '\b'; break;
    case 'f': s[len++] = '\f'; break;
    case 'n': s[len++] = '\n'; break;
    case 'r': s[len++] = '\r'; break;
    case 't': s[len++] = '\t'; break;
    case 'u': {
      unsigned cp;
      if (json_hex4(jp, &cp) != 0) goto fail;
      if (cp >= 0xDC00 && cp <= 0xDFFF) {
        json_fail(jp, "lone low surrogate in \\u escape");
        goto fail;
      }
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        unsigned low;
        if (jp->end - jp->p < 2 || jp->p[0] != '\\' || jp->p[1] != 'u') {
          json_fail(jp, "high surrogate without its low half");
          goto fail;
        }
        jp->p += 2;
        if (json_hex4(jp, &low) != 0) goto fail;
        if (low < 0xDC00 || low > 0xDFFF) {
          json_fail(jp, "high surrogate without its low half");
          goto fail;
        }
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
      }
      /* "\uXXXX" is 6 bytes, its UTF-8 at most 3; a surrogate pair is 12
       * bytes for 4: the decoded string still fits. */
      len += json_put_utf8(s + len, cp);
      break;
    }
    default:
      json_fail(jp, "unknown escape in string");
      goto fail;
    }
  }
  jp->p++; /* closing quote */
  s[len] = '\0';
  *out = s;
  *out_len = len;
  return 0;
fail:
  free(s);
  return -1;
}

static int json_parse_number(json_parser *jp, json_value *v) {
  const char *p = jp->p;
  int negative = 0, integral = 1, overflow = 0;
  uint64_t value = 0;
  if (p < jp->end && *p == '-') {
    negative = 1;
    p++;
  }
  if (p >= jp->end || *p < '0' || *p > '9') {
    json_fail(jp, "bad number");
    return -1;
  }
  if (*p == '0' && p + 1 < jp->end && p[1] >= '0' && p[1] <= '9') {
    json_fail(jp, "number with a leading zero");
    return -1;
  }
  while (p < jp->end && *p >= '0' && *p <= '9') {
    unsigned d = (unsigned)(*p - '0');
    if (value > ((uint64_t)INT64_MAX - d) / 10) overflow = 1;
    else value = value * 10 + d;
    p++;
  }
  if (p < jp->end && *p == '.') {
    integral = 0;
    p++;
    if (p >= jp->end || *p < '0' || *p > '9') {
      json_fail(jp, "bad fraction in number");
      return -1;
    }
    while (p < jp->end && *p >= '0' && *p <= '9') p++;
  }
  if (p < jp->end && (*p == 'e' || *p == 'E')) {
    integral = 0;
    p++;
    if (p < jp->end && (*p == '+' || *p == '-')) p++;
    if (p >= jp->end || *p < '0' || *p > '9') {
      json_fail(jp, "bad exponent in number");
      return -1;
    }
    while (p < jp->end && *p >= '0' && *p <= '9') p++;
  }
  jp->p = p;
  v->kind = JSON_NUMBER;
  v->is_count = integral && !negative && !overflow;
  v->count_value = v->is_count ? (int64_t)value : 0;
  return 0;
}

static int json_parse_value(json_parser *jp, json_value *v, int depth);

static int json_parse_array(json_parser *jp, json_value *v, int depth) {
  v->kind = JSON_ARRAY;
  jp->p++; /* [ */
  json_skip_space(jp);
  if (jp->p < jp->end && *jp->p == ']') {
    jp->p++;
    return 0;
  }
  for (;;) {
    if (v->n == v->cap) {
      size_t cap = v->cap ? v->cap * 2 : 4;
      json_value *grown = realloc(v->items, cap * sizeof *grown);
      if (!grown) {
        json_fail(jp, "out of memory");
        return -1;
      }
      v->items = grown;
      v->cap = cap;
    }
    json_value *item = &v->items[v->n];
    memset(item, 0, sizeof *item);
    v->n++;
    if (json_parse_value(jp, item, depth + 1) != 0) return -1;
    json_skip_space(jp);
    if (jp->p < jp->end && *jp->p == ',') {
      jp->p++;
      continue;
    }
    if (jp->p < jp->end && *jp->p == ']') {
      jp->p++;
      return 0;
    }
    json_fail(jp, "expected ',' or ']' in array");
    return -1;
  }
}

static int json_parse_object(json_parser *jp, json_value *v, int depth) {
  v->kind = JSON_OBJECT;
  jp->p++; /* { */
  json_skip_space(jp);
  if (jp->p < jp->end && *jp->p == '}') {
    jp->p++;
    return 0;
  }
  for (;;) {
    json_skip_space(jp);
    if (jp->p >= jp->end || *jp->p != '"') {
      json_fail(jp, "expected a string key in object");
      return -1;
    }
    if (v->n == v->cap) {
      size_t cap = v->cap ? v->cap * 2 : 4;
      json_member *grown = realloc(v->members, cap * sizeof *grown);
      if (!grown) {
        json_fail(jp, "out of memory");
        return -1;
      }
      v->members = grown;
      v->cap = cap;
    }
    json_member *m = &v->members[v->n];
    memset(m, 0, sizeof *m);
    v->n++;
    if (json_parse_string(jp, &m->key, &m->key_len) != 0) return -1;
    for (size_t i = 0; i + 1 < v->n; i++) {
      if (v->members[i].key_len == m->key_len && memcmp(v->members[i].key, m->key, m->key_len) == 0) {
        json_fail(jp, "duplicate key in object");
        return -1;
      }
    }
    json_skip_space(jp);
    if (jp->p >= jp->end || *jp->p != ':') {
      json_fail(jp, "expected ':' after key");
      return -1;
    }
    jp->p++;
    if (json_parse_value(jp, &m->value, depth + 1) != 0) return -1;
    json_skip_space(jp);
    if (jp->p < jp->end && *jp->p == ',') {
      jp->p++;
      continue;
    }
    if (jp->p < jp->end && *jp->p == '}') {
      jp->p++;
      return 0;
    }
    json_fail(jp, "expected ',' or '}' in object");
    return -1;
  }
}

static int json_match_literal(json_parser *jp, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0) {
    json_fail(jp, "unexpected character");
    return -1;
  }
  jp->p += n;
  return 0;
}

static int json_parse_value(json_parser *jp, json_value *v, int depth) {
  if (depth > JSON_MAX_DEPTH) {
    json_fail(jp, "nested too deeply");
    return -1;
  }
  json_skip_space(jp);
  if (jp->p >= jp->end) {
    json_fail(jp, "unexpected end of header");
    return -1;
  }
  switch (*jp->p) {
  case '{': return json_parse_object(jp, v, depth);
  case '[': return json_parse_array(jp, v, depth);
  case '"':
    v->kind = JSON_STRING;
    return json_parse_string(jp, &v->str, &v->len);
  case 't': v->kind = JSON_BOOL; return json_match_literal(jp, "true");
  case 'f': v->kind = JSON_BOOL; return json_match_literal(jp, "false");
  case 'n': v->kind = JSON_NULL; return json_match_literal(jp, "null");
  default:
    if (*jp->p == '-' || (*jp->p >= '0' && *jp->p <= '9')) return json_parse_number(jp, v);
    json_fail(jp, "unexpected character");
    return -1;
  }
}

/* Parses the whole header: one value, then only whitespace (the padding). */
static int json_parse_document(json_parser *jp, json_value *root) {
  memset(root, 0, sizeof *root);
  if (json_parse_value(jp, root, 0) != 0) {
    json_free(root);
    return -1;
  }
  json_skip_space(jp);
  if (jp->p != jp->end) {
    json_fail(jp, "unexpected bytes after the header object");
    json_free(root);
    return -1;
  }
  return 0;
}

static const json_value *json_get(const json_value *obj, const char *key) {
  size_t len = strlen(key);
  for (size_t i = 0; i < obj->n; i++)
    if (obj->members[i].key_len == len && memcmp(obj->members[i].key, key, len) == 0)
      return &obj->members[i].value;
  return NULL;
}

/* ---- save ----------------------------------------------------------------- */

static int ckpt_tensor_bytes(const flrt_tensor *t, uint64_t *bytes) {
  int di = ckpt_dtype_index(t->dtype);
  if (di < 0 || t->rank < 0 || t->rank > CKPT_MAX_RANK) return -1;
  uint64_t n = CKPT_DTYPES[di].size;
  for (int d = 0; d < t->rank; d++) {
    if (t->dims[d] < 0) return -1;
    if (t->dims[d] != 0 && n > (uint64_t)INT64_MAX / (uint64_t)t->dims[d]) return -1;
    n *= (uint64_t)t->dims[d];
  }
  *bytes = n;
  return 0;
}

static void ckpt_format_shape(char *dst, size_t cap, int rank, const int64_t *dims) {
  size_t used = 0;
  if (cap == 0) return;
  dst[0] = '\0';
  used += (size_t)snprintf(dst, cap, "[");
  for (int d = 0; d < rank && used < cap; d++)
    used += (size_t)snprintf(dst + used, cap - used, d ? ", %lld" : "%lld", (long long)dims[d]);
  if (used < cap) snprintf(dst + used, cap - used, "]");
}

/* Builds the padded JSON header for the tensors, or returns -1 (err set). */
static int ckpt_build_header(const char *path, const flrt_tensor *tensors, int ntensors,
                             const char *const *meta_keys, const char *const *meta_values,
                             int nmeta, ckpt_buf *header, char *err, size_t errlen) {
  uint64_t offset = 0;
  int first = 1;
  buf_puts(header, "{");
  if (nmeta > 0) {
    buf_puts(header, "\"__metadata__\":{");
    for (int i = 0; i < nmeta; i++) {
      if (!meta_keys[i] || !meta_values[i]) {
        ckpt_errorf(err, errlen, "cannot save checkpoint %s: metadata entry %d is NULL", path, i);
        return -1;
      }
      if (i) buf_puts(header, ",");
      buf_put_json_string(header, meta_keys[i]);
      buf_puts(header, ":");
      buf_put_json_string(header, meta_values[i]);
    }
    buf_puts(header, "}");
    first = 0;
  }
  for (int i = 0; i < ntensors; i++) {
    const flrt_tensor *t = &tensors[i];
    uint64_t bytes;
    if (!t->name || !t->name[0] || strcmp(t->name, "__metadata__") == 0) {
      ckpt_errorf(err, errlen, "cannot save checkpoint %s: tensor %d has no usable name", path, i);
      return -1;
    }
    for (int j = 0; j < i; j++) {
      if (strcmp(tensors[j].name, t->name) == 0) {
        ckpt_errorf(err, errlen, "cannot save checkpoint %s: two tensors are named '%s'", path,
                    t->name);
        return -1;
      }
    }
    if (ckpt_tensor_bytes(t, &bytes) != 0 || (bytes > 0 && !t->data)) {
      ckpt_errorf(err, errlen, "cannot save checkpoint %s: tensor '%s' has a bad dtype, rank, "
                  "shape or data pointer", path, t->name);
      return -1;
    }
    if (!first) buf_puts(header, ",");
    first = 0;
    buf_put_json_string(header, t->name);
    buf_puts(header, ":{\"dtype\":\"");
    buf_puts(header, CKPT_DTYPES[ckpt_dtype_index(t->dtype)].name);
    buf_puts(header, "\",\"shape\":[");
    for (int d = 0; d < t->rank; d++) {
      if (d) buf_puts(header, ",");
      buf_put_u64(header, (uint64_t)t->dims[d]);
    }
    buf_puts(header, "],\"data_offsets\":[");
    buf_put_u64(header, offset);
    buf_puts(header, ",");
    buf_put_u64(header, offset + bytes);
    buf_puts(header, "]}");
    offset += bytes;
  }
  buf_puts(header, "}");
  /* Data then starts 8-aligned in the file, as the format recommends. */
  while (!header->failed && header->len % 8 != 0) buf_puts(header, " ");
  if (header->failed) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: out of memory", path);
    return -1;
  }
  return 0;
}

/* Writes a tensor's bytes little-endian, swapping on big-endian hosts. */
static int ckpt_write_data(FILE *f, const flrt_tensor *t, uint64_t bytes) {
  if (bytes == 0) return 0;
  const unsigned size = CKPT_DTYPES[ckpt_dtype_index(t->dtype)].size;
  if (size == 1 || ckpt_host_is_little_endian())
    return fwrite(t->data, 1, (size_t)bytes, f) == (size_t)bytes ? 0 : -1;
  unsigned char chunk[4096];
  const unsigned char *src = t->data;
  for (uint64_t done = 0; done < bytes;) {
    size_t n = bytes - done < sizeof chunk ? (size_t)(bytes - done) : sizeof chunk;
    memcpy(chunk, src + done, n);
    ckpt_byteswap(chunk, n / size, size);
    if (fwrite(chunk, 1, n, f) != n) return -1;
    done += n;
  }
  return 0;
}

/* fsyncs the directory holding path so that the rename itself is durable. */
static void ckpt_sync_parent_dir(const char *path) {
  const char *slash = strrchr(path, '/');
  char *dir;
  if (!slash) {
    dir = malloc(2);
    if (dir) strcpy(dir, ".");
  } else {
    size_t len = slash == path ? 1 : (size_t)(slash - path);
    dir = malloc(len + 1);
    if (dir) {
      memcpy(dir, path, len);
      dir[len] = '\0';
    }
  }
  if (!dir) return;
  int fd = open(dir, O_RDONLY);
  if (fd >= 0) {
    /* Some file systems refuse fsync on a directory (EINVAL); the new file
     * is complete either way, so that is not worth failing the save for. */
    (void)fsync(fd);
    close(fd);
  }
  free(dir);
}

int flrt_checkpoint_save(const char *path, const flrt_tensor *tensors, int ntensors,
                         const char *const *meta_keys, const char *const *meta_values, int nmeta,
                         char *err, size_t errlen) {
  ckpt_buf header = {NULL, 0, 0, 0};
  char *tmp_path = NULL;
  FILE *f = NULL;
  int tmp_created = 0;

  if (ckpt_build_header(path, tensors, ntensors, meta_keys, meta_values, nmeta, &header, err,
                        errlen) != 0)
    goto fail;
  tmp_path = malloc(strlen(path) + 5);
  if (!tmp_path) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: out of memory", path);
    goto fail;
  }
  strcpy(tmp_path, path);
  strcat(tmp_path, ".tmp");

  /* A stale .tmp from a killed save is garbage; removing it first and then
   * creating exclusively also means we never write through a symlink. */
  if (unlink(tmp_path) != 0 && errno != ENOENT) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: cannot remove stale %s: %s", path,
                tmp_path, strerror(errno));
    goto fail;
  }
  int fd = open(tmp_path, O_WRONLY | O_CREAT | O_EXCL, 0666);
  if (fd < 0) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: cannot create %s: %s", path, tmp_path,
                strerror(errno));
    goto fail;
  }
  tmp_created = 1;
  f = fdopen(fd, "wb");
  if (!f) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: %s", path, strerror(errno));
    close(fd);
    goto fail;
  }

  unsigned char prefix[8];
  for (int i = 0; i < 8; i++) prefix[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
  int ok = fwrite(prefix, 1, 8, f) == 8 && fwrite(header.data, 1, header.len, f) == header.len;
  for (int i = 0; ok && i < ntensors; i++) {
    uint64_t bytes = 0;
    (void)ckpt_tensor_bytes(&tensors[i], &bytes); /* validated while building the header */
    ok = ckpt_write_data(f, &tensors[i], bytes) == 0;
  }
  if (ok) ok = fflush(f) == 0;
  if (ok) ok = fsync(fileno(f)) == 0;
  if (!ok) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: writing %s failed: %s", path, tmp_path,
                strerror(errno));
    fclose(f);
    f = NULL;
    goto fail;
  }
  int close_failed = fclose(f) != 0;
  f = NULL;
  if (close_failed) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: closing %s failed: %s", path, tmp_path,
                strerror(errno));
    goto fail;
  }
  if (rename(tmp_path, path) != 0) {
    ckpt_errorf(err, errlen, "cannot save checkpoint %s: renaming %s failed: %s", path, tmp_path,
                strerror(errno));
    goto fail;
  }
  ckpt_sync_parent_dir(path);
  free(tmp_path);
  free(header.data);
  return 0;

fail:
  if (tmp_created) unlink(tmp_path);
  free(tmp_path);
  free(header.data);
  return -1;
}

/* ---- load ----------------------------------------------------------------- */

typedef struct {
  const json_member *member; /* name = member->key */
  int dtype;                 /* index into CKPT_DTYPES */
  const json_value *shape;   /* array of counts */
  uint64_t begin, end;
} ckpt_entry;

static int ckpt_entry_by_begin(const void *a, const void *b) {
  const ckpt_entry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

/* Checks one tensor entry of the header and fills e. */
static int ckpt_check_entry(const char *path, const json_member *m, ckpt_entry *e, char *err,
                            size_t errlen) {
  const json_value *v = &m->value;
  const char *name = m->key;
  e->member = m;
  if (v->kind != JSON_OBJECT) {
    ckpt_errorf(err, errlen, "checkpoint %s: entry '%s' is not an object", path, name);
    return -1;
  }
  const json_value *dtype = json_get(v, "dtype");
  const json_value *shape = json_get(v, "shape");
  const json_value *offsets = json_get(v, "data_offsets");
  if (!dtype || dtype->kind != JSON_STRING) {
    ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has no dtype string", path, name);
    return -1;
  }
  e->dtype = -1;
  for (int i = 0; i < CKPT_NDTYPES; i++)
    if (strlen(CKPT_DTYPES[i].name) == dtype->len && strcmp(CKPT_DTYPES[i].name, dtype->str) == 0)
      e->dtype = i;
  if (e->dtype < 0) {
    ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has unknown dtype '%s'", path, name,
                dtype->str);
    return -1;
  }
  if (!shape || shape->kind != JSON_ARRAY) {
    ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has no shape array", path, name);
    return -1;
  }
  uint64_t bytes = CKPT_DTYPES[e->dtype].size;
  for (size_t d = 0; d < shape->n; d++) {
    const json_value *dim = &shape->items[d];
    if (dim->kind != JSON_NUMBER || !dim->is_count) {
      ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has a shape entry that is not a "
                  "non-negative integer", path, name);
      return -1;
    }
    uint64_t extent = (uint64_t)dim->count_value;
    if (extent != 0 && bytes > (uint64_t)INT64_MAX / extent) {
      ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has an impossibly large shape", path,
                  name);
      return -1;
    }
    bytes *= extent;
  }
  e->shape = shape;
  if (!offsets || offsets->kind != JSON_ARRAY || offsets->n != 2 ||
      offsets->items[0].kind != JSON_NUMBER || !offsets->items[0].is_count ||
      offsets->items[1].kind != JSON_NUMBER || !offsets->items[1].is_count) {
    ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' needs data_offsets [begin, end] of "
                "non-negative integers", path, name);
    return -1;
  }
  e->begin = (uint64_t)offsets->items[0].count_value;
  e->end = (uint64_t)offsets->items[1].count_value;
  if (e->end < e->begin || e->end - e->begin != bytes) {
    ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has data_offsets [%llu, %llu] but its "
                "dtype and shape need %llu bytes", path, name, (unsigned long long)e->begin,
                (unsigned long long)e->end, (unsigned long long)bytes);
    return -1;
  }
  for (size_t i = 0; i < v->n; i++) {
    const char *k = v->members[i].key;
    if (strcmp(k, "dtype") != 0 && strcmp(k, "shape") != 0 && strcmp(k, "data_offsets") != 0) {
      ckpt_errorf(err, errlen, "checkpoint %s: tensor '%s' has an unknown field '%s'", path, name,
                  k);
      return -1;
    }
  }
  return 0;
}

static void ckpt_format_file_shape(char *dst, size_t cap, const json_value *shape) {
  int64_t dims[CKPT_MAX_RANK];
  int rank = shape->n > CKPT_MAX_RANK ? CKPT_MAX_RANK : (int)shape->n;
  for (int d = 0; d < rank; d++) dims[d] = shape->items[d].count_value;
  ckpt_format_shape(dst, cap, rank, dims);
  if (shape->n > CKPT_MAX_RANK) {
    size_t used = strlen(dst);
    if (used > 0 && used + 5 < cap) strcpy(dst + used - 1, ", ...]");
  }
}

/* Reads exactly n bytes at offset, or fails. */
static int ckpt_read_at(FILE *f, uint64_t offset, void *dst, uint64_t n) {
  if (n == 0) return 0;
  if (fseeko(f, (off_t)offset, SEEK_SET) != 0) return -1;
  return fread(dst, 1, (size_t)n, f) == (size_t)n ? 0 : -1;
}

int flrt_checkpoint_load(const char *path, flrt_tensor *tensors, int ntensors,
                         const char *meta_key, char *meta_value, size_t meta_cap, char *err,
                         size_t errlen) {
  int status = -1;
  char *header_text = NULL;
  ckpt_entry *entries = NULL;
  ckpt_entry *sorted = NULL;
  json_value root;
  int have_root = 0;
  memset(&root, 0, sizeof root);

  FILE *f = fopen(path, "rb");
  if (!f) {
    ckpt_errorf(err, errlen, "cannot open checkpoint %s: %s", path, strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    ckpt_errorf(err, errlen, "checkpoint %s is not a regular file", path);
    goto done;
  }
  const uint64_t file_size = (uint64_t)st.st_size;
  unsigned char prefix[8];
  if (file_size < 8 || ckpt_read_at(f, 0, prefix, 8) != 0) {
    ckpt_errorf(err, errlen, "checkpoint %s is truncated: the file has only %llu bytes", path,
                (unsigned long long)file_size);
    goto done;
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | prefix[i];
  if (header_len < 2 || header_len > CKPT_MAX_HEADER) {
    ckpt_errorf(err, errlen, "checkpoint %s is not a safetensors file: header length %llu is "
                "absurd (file has %llu bytes)", path, (unsigned long long)header_len,
                (unsigned long long)file_size);
    goto done;
  }
  if (header_len > file_size - 8) {
    ckpt_errorf(err, errlen, "checkpoint %s is truncated: its header is %llu bytes but the file "
                "has only %llu after the length prefix", path, (unsigned long long)header_len,
                (unsigned long long)(file_size - 8));
    goto done;
  }
  header_text = malloc((size_t)header_len);
  if (!header_text) {
    ckpt_errorf(err, errlen, "checkpoint %s: out of memory reading the header", path);
    goto done;
  }
  if (ckpt_read_at(f, 8, header_text, header_len) != 0) {
    ckpt_errorf(err, errlen, "checkpoint %s: cannot read the header: %s", path,
                ferror(f) ? strerror(errno) : "unexpected end of file");
    goto done;
  }
  json_parser jp = {header_text, header_text, header_text + header_len, err, errlen, path, 0};
  if (json_parse_document(&jp, &root) != 0) goto done;
  have_root = 1;
  if (root.kind != JSON_OBJECT) {
    ckpt_errorf(err, errlen, "checkpoint %s: the header is not a JSON object", path);
    goto done;
  }

  /* Validate every entry (not only the requested ones): a damaged header is
   * refused as a whole. */
  const json_value *metadata = NULL;
  size_t nentries = 0;
  entries = malloc((root.n ? root.n : 1) * sizeof *entries);
  if (!entries) {
    ckpt_errorf(err, errlen, "checkpoint %s: out of memory", path);
    goto done;
  }
  for (size_t i = 0; i < root.n; i++) {
    const json_member *m = &root.members[i];
    if (strcmp(m->key, "__metadata__") == 0 && m->key_len == strlen("__metadata__")) {
      metadata = &m->value;
      if (metadata->kind != JSON_OBJECT) {
        ckpt_errorf(err, errlen, "checkpoint %s: __metadata__ is not an object", path);
        goto done;
      }
      for (size_t k = 0; k < metadata->n; k++) {
        if (metadata->members[k].value.kind != JSON_STRING) {
          ckpt_errorf(err, errlen, "checkpoint %s: metadata '%s' is not a string", path,
                      metadata->members[k].key);
          goto done;
        }
      }
      continue;
    }
    if (ckpt_check_entry(path, m, &entries[nentries], err, errlen) != 0) goto done;
    nentries++;
  }

  /* Ranges must not overlap (empty ones cannot), and the data section must
   * end exactly where the file does. */
  uint64_t data_end = 0;
  sorted = malloc((nentries ? nentries : 1) * sizeof *sorted);
  if (!sorted) {
    ckpt_errorf(err, errlen, "checkpoint %s: out of memory", path);
    goto done;
  }
  if (nentries > 0) memcpy(sorted, entries, nentries * sizeof *sorted);
  qsort(sorted, nentries, sizeof *sorted, ckpt_entry_by_begin);
  const ckpt_entry *previous = NULL;
  for (size_t i = 0; i < nentries; i++) {
    if (sorted[i].end == sorted[i].begin) continue;
    if (previous && sorted[i].begin < previous->end) {
      ckpt_errorf(err, errlen, "checkpoint %s: the data of tensors '%s' and '%s' overlap", path,
                  previous->member->key, sorted[i].member->key);
      goto done;
    }
    previous = &sorted[i];
    if (sorted[i].end > data_end) data_end = sorted[i].end;
  }
  const uint64_t data_available = file_size - 8 - header_len;
  if (data_end > data_available) {
    ckpt_errorf(err, errlen, "checkpoint %s is truncated: header promises %llu bytes of data, "
                "file has %llu", path, (unsigned long long)data_end,
                (unsigned long long)data_available);
    goto done;
  }
  if (data_end < data_available) {
    ckpt_errorf(err, errlen, "checkpoint %s has %llu bytes of data but its header accounts for "
                "only %llu", path, (unsigned long long)data_available,
                (unsigned long long)data_end);
    goto done;
  }

  /* Check every requested tensor before reading any, so that a mismatch
   * leaves the model's tensors untouched. */
  const ckpt_entry **found = NULL;
  if (ntensors > 0) {
    found = malloc((size_t)ntensors * sizeof *found);
    if (!found) {
      ckpt_errorf(err, errlen, "checkpoint %s: out of memory", path);
      goto done;
    }
  }
  for (int t = 0; t < ntensors; t++) {
    const flrt_tensor *want = &tensors[t];
    const char *name = want->name ? want->name : "";
    found[t] = NULL;
    for (size_t i = 0; i < nentries && !found[t]; i++)
      if (entries[i].member->key_len == strlen(name) && strcmp(entries[i].member->key, name) == 0)
        found[t] = &entries[i];
    if (!found[t]) {
      ckpt_errorf(err, errlen, "tensor '%s' missing from checkpoint %s", name, path);
      free(found);
      goto done;
    }
    const ckpt_entry *e = found[t];
    int want_dtype = ckpt_dtype_index(want->dtype);
    if (e->dtype != want_dtype) {
      ckpt_errorf(err, errlen, "tensor '%s' in %s has dtype %s, the model expects %s", name, path,
                  CKPT_DTYPES[e->dtype].name, want_dtype >= 0 ? CKPT_DTYPES[want_dtype].name : "?");
      free(found);
      goto done;
    }
    int same_shape = want->rank >= 0 && (size_t)want->rank == e->shape->n;
    for (int d = 0; same_shape && d < want->rank; d++)
      same_shape = e->shape->items[d].count_value == want->dims[d];
    if (!same_shape) {
      char have_s[160], want_s[160];
      ckpt_format_file_shape(have_s, sizeof have_s, e->shape);
      ckpt_format_shape(want_s, sizeof want_s,
                        want->rank < 0 ? 0 : (want->rank > CKPT_MAX_RANK ? CKPT_MAX_RANK : want->rank),
                        want->dims);
      ckpt_errorf(err, errlen, "tensor '%s' in %s has shape %s, the model expects %s", name, path,
                  have_s, want_s);
      free(found);
      goto done;
    }
    if (e->end > e->begin && !want->data) {
      ckpt_errorf(err, errlen, "tensor '%s': no buffer to load checkpoint %s into", name, path);
      free(found);
      goto done;
    }
  }

  const char *meta_found = NULL;
  size_t meta_len = 0;
  if (meta_key && meta_value) {
    const json_value *mv = metadata ? json_get(metadata, meta_key) : NULL;
    if (mv) {
      meta_found = mv->str;
      meta_len = mv->len;
    }
    if (meta_len + 1 > meta_cap) {
      ckpt_errorf(err, errlen, "checkpoint %s: metadata '%s' is %llu bytes, more than the %llu "
                  "the caller can hold", path, meta_key, (unsigned long long)meta_len,
                  (unsigned long long)(meta_cap ? meta_cap - 1 : 0));
      free(found);
      goto done;
    }
  }

  for (int t = 0; t < ntensors; t++) {
    const ckpt_entry *e = found[t];
    uint64_t bytes = e->end - e->begin;
    if (ckpt_read_at(f, 8 + header_len + e->begin, tensors[t].data, bytes) != 0) {
      ckpt_errorf(err, errlen, "checkpoint %s: cannot read tensor '%s': %s", path, tensors[t].name,
                  ferror(f) ? strerror(errno) : "unexpected end of file");
      free(found);
      goto done;
    }
    unsigned size = CKPT_DTYPES[e->dtype].size;
    if (size > 1 && !ckpt_host_is_little_endian())
      ckpt_byteswap(tensors[t].data, (size_t)(bytes / size), size);
  }
  free(found);

  if (meta_key && meta_value) {
    if (meta_len > 0) memcpy(meta_value, meta_found, meta_len);
    meta_value[meta_len] = '\0';
  }
  status = 0;

done:
  if (have_root) json_free(&root);
  free(sorted);
  free(entries);
  free(header_text);
  fclose(f);
  return status;
}
