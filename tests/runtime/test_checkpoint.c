/* test_checkpoint.c - safetensors save/load: round trips, numpy, damaged files, crashes mid-save. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flowc_rt.h"
#include "rt_test_util.h"

static char *dir;
static char *path;
static char err[1024];

static void setup(void) {
  dir = rtt_make_temp_dir();
  path = rtt_path(dir, "model.safetensors");
  err[0] = '\0';
}

static void teardown(void) {
  rtt_remove_tree(dir);
  free(dir);
  free(path);
}

TestSuite(checkpoint, .init = setup, .fini = teardown);

/* ---- a small model with every dtype, a scalar and an empty tensor ---------- */

typedef struct {
  float w[3 * 4];
  float b[4];
  int64_t step;
  uint8_t mask[5];
  int32_t idx[4];
  float empty[1];
  flrt_tensor t[6];
} model;

static void model_init(model *m, float base) {
  memset(m, 0, sizeof *m);
  for (int i = 0; i < 12; i++) m->w[i] = base + 0.5f * (float)i - 1.0f;
  for (int i = 0; i < 4; i++) m->b[i] = -base - 0.125f * (float)i;
  m->step = 123456789012ll;
  for (int i = 0; i < 5; i++) m->mask[i] = (uint8_t)(i % 2);
  for (int i = 0; i < 4; i++) m->idx[i] = (i - 2) * 1000003;
  flrt_tensor t[6] = {
      {"W", FLRT_F32, 2, {3, 4}, m->w},       {"b", FLRT_F32, 1, {4}, m->b},
      {"global_step", FLRT_I64, 0, {0}, &m->step},
      {"mask", FLRT_BOOL, 1, {5}, m->mask},   {"idx", FLRT_I32, 2, {2, 2}, m->idx},
      {"empty", FLRT_F32, 2, {0, 3}, m->empty},
  };
  memcpy(m->t, t, sizeof t);
}

/* Overwrites every buffer with a sentinel, so a load must restore them. */
static void model_scribble(model *m) {
  memset(m->w, 0xAB, sizeof m->w);
  memset(m->b, 0xAB, sizeof m->b);
  memset(&m->step, 0xAB, sizeof m->step);
  memset(m->mask, 0xAB, sizeof m->mask);
  memset(m->idx, 0xAB, sizeof m->idx);
}

static void model_assert_equal(const model *a, const model *b) {
  cr_assert_eq(memcmp(a->w, b->w, sizeof a->w), 0, "W differs");
  cr_assert_eq(memcmp(a->b, b->b, sizeof a->b), 0, "b differs");
  cr_assert_eq(a->step, b->step, "global_step differs");
  cr_assert_eq(memcmp(a->mask, b->mask, sizeof a->mask), 0, "mask differs");
  cr_assert_eq(memcmp(a->idx, b->idx, sizeof a->idx), 0, "idx differs");
}

static const char *const META_KEYS[2] = {"step", "note"};
static const char *const META_VALUES[2] = {"42", "quote\" back\\slash\nnew line\ttab \x01"};

static void save_model(const model *m) {
  cr_assert_eq(flrt_checkpoint_save(path, m->t, 6, META_KEYS, META_VALUES, 2, err, sizeof err), 0,
               "%s", err);
}

static int load_model(model *m, const char *key, char *value, size_t cap) {
  return flrt_checkpoint_load(path, m->t, 6, key, value, cap, err, sizeof err);
}

static int file_exists(const char *p) {
  struct stat st;
  return stat(p, &st) == 0;
}

static char *tmp_path(void) {
  char *t = malloc(strlen(path) + 5);
  cr_assert_not_null(t);
  sprintf(t, "%s.tmp", path);
  return t;
}

/* Writes a checkpoint by hand: header JSON padded to 8, then data. */
static void write_raw(const char *header, const void *data, size_t data_len) {
  size_t hl = strlen(header);
  size_t padded = (hl + 7) / 8 * 8;
  unsigned char *bytes = malloc(8 + padded + data_len + 1);
  cr_assert_not_null(bytes);
  for (int i = 0; i < 8; i++) bytes[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  memcpy(bytes + 8, header, hl);
  memset(bytes + 8 + hl, ' ', padded - hl);
  if (data_len) memcpy(bytes + 8 + padded, data, data_len);
  rtt_write_file(path, bytes, 8 + padded + data_len);
  free(bytes);
}

/* ---- round trips ------------------------------------------------------------ */

Test(checkpoint, round_trip_all_dtypes_and_metadata) {
  model saved, loaded;
  model_init(&saved, 3.0f);
  save_model(&saved);
  char *t = tmp_path();
  cr_assert(!file_exists(t), "the temporary file was left behind");
  free(t);

  model_init(&loaded, 0.0f);
  model_scribble(&loaded);
  char value[128];
  cr_assert_eq(load_model(&loaded, "step", value, sizeof value), 0, "%s", err);
  model_assert_equal(&saved, &loaded);
  cr_assert_str_eq(value, "42");
  cr_assert_eq(load_model(&loaded, "note", value, sizeof value), 0, "%s", err);
  cr_assert_str_eq(value, META_VALUES[1]);
  cr_assert_eq(load_model(&loaded, "absent", value, sizeof value), 0, "%s", err);
  cr_assert_str_eq(value, "");
  cr_assert_eq(load_model(&loaded, NULL, NULL, 0), 0, "%s", err);
  /* Loading a subset is fine. */
  cr_assert_eq(flrt_checkpoint_load(path, &loaded.t[1], 1, NULL, NULL, 0, err, sizeof err), 0,
               "%s", err);
}

Test(checkpoint, layout_is_safetensors) {
  model m;
  model_init(&m, 1.0f);
  save_model(&m);
  size_t len;
  unsigned char *bytes = rtt_read_file(path, &len);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | bytes[i];
  cr_assert_eq(hl % 8, 0, "header length %llu is not a multiple of 8", (unsigned long long)hl);
  cr_assert_eq(bytes[8], '{');
  /* Data: 48 + 16 + 8 + 5 + 16 + 0 bytes. */
  cr_assert_eq(len, 8 + hl + 93);
  char *header = malloc(hl + 1);
  memcpy(header, bytes + 8, hl);
  header[hl] = '\0';
  cr_assert_not_null(strstr(header, "\"W\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,48]}"),
                     "%s", header);
  cr_assert_not_null(strstr(header, "\"global_step\":{\"dtype\":\"I64\",\"shape\":[],"), "%s",
                     header);
  cr_assert_not_null(strstr(header, "\"__metadata__\":{\"step\":\"42\""), "%s", header);
  cr_assert_eq(memcmp(bytes + 8 + hl, m.w, sizeof m.w), 0, "W is not first, little-endian");
  free(header);
  free(bytes);
}

static const char NUMPY_CHECK[] =
    "import json, struct, sys\n"
    "import numpy as np\n"
    "b = open(sys.argv[1], 'rb').read()\n"
    "n = struct.unpack('<Q', b[:8])[0]\n"
    "h = json.loads(b[8:8 + n])\n"
    "meta = h.pop('__metadata__')\n"
    "assert meta == {'step': '42', 'note': 'quote\" back\\\\slash\\nnew line\\ttab \\x01'}, meta\n"
    "data = b[8 + n:]\n"
    "def arr(name, dt):\n"
    "    e = h[name]\n"
    "    s, t = e['data_offsets']\n"
    "    return np.frombuffer(data[s:t], dtype=dt).reshape(e['shape'])\n"
    "W = arr('W', '<f4')\n"
    "assert W.shape == (3, 4), W.shape\n"
    "assert np.array_equal(W, (np.arange(12, dtype=np.float32) * 0.5 + 2).reshape(3, 4)), W\n"
    "assert np.array_equal(arr('b', '<f4'), -3 - 0.125 * np.arange(4, dtype=np.float32))\n"
    "assert arr('global_step', '<i8').shape == () and int(arr('global_step', '<i8')) == 123456789012\n"
    "assert arr('mask', '?').tolist() == [False, True, False, True, False]\n"
    "assert arr('idx', '<i4').tolist() == [[-2000006, -1000003], [0, 1000003]]\n"
    "assert arr('empty', '<f4').shape == (0, 3)\n"
    "assert sorted(h) == ['W', 'b', 'empty', 'global_step', 'idx', 'mask'], sorted(h)\n"
    "assert len(data) == max(e['data_offsets'][1] for e in h.values())\n"
    "try:\n"
    "    from safetensors.numpy import load_file\n"
    "except ImportError:\n"
    "    load_file = None\n"
    "if load_file:\n"
    "    t = load_file(sys.argv[1])\n"
    "    assert np.array_equal(t['W'], W)\n"
    "print('ok')\n";

Test(checkpoint, numpy_reads_what_we_write) {
  const char *python = rtt_python_for("import numpy");
  if (!python) cr_skip_test("python3 with numpy is not available");
  model m;
  model_init(&m, 3.0f);
  save_model(&m);
  char *script = rtt_path(dir, "check.py");
  rtt_write_file(script, NUMPY_CHECK, strlen(NUMPY_CHECK));
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s '%s' '%s' 2>&1", python, script, path);
  FILE *p = popen(cmd, "r");
  cr_assert_not_null(p);
  char out[4096];
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = '\0';
  int rc = pclose(p);
  cr_assert_eq(rc, 0, "python check failed:\n%s", out);
  cr_assert_str_eq(out, "ok\n");
  free(script);
}

/* ---- refusals with messages --------------------------------------------------- */

Test(checkpoint, missing_tensor_is_named) {
  model m;
  model_init(&m, 1.0f);
  save_model(&m);
  float z[2];
  flrt_tensor want = {"Z", FLRT_F32, 1, {2}, z};
  cr_assert_eq(flrt_checkpoint_load(path, &want, 1, NULL, NULL, 0, err, sizeof err), -1);
  char expected[1200];
  snprintf(expected, sizeof expected, "tensor 'Z' missing from checkpoint %s", path);
  cr_assert_str_eq(err, expected);
}

Test(checkpoint, shape_mismatch_names_both_shapes) {
  static float w[784 * 10];
  flrt_tensor saved = {"W", FLRT_F32, 2, {784, 10}, w};
  cr_assert_eq(flrt_checkpoint_save(path, &saved, 1, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
  flrt_tensor want = {"W", FLRT_F32, 2, {10, 784}, w};
  cr_assert_eq(flrt_checkpoint_load(path, &want, 1, NULL, NULL, 0, err, sizeof err), -1);
  char expected[1200];
  snprintf(expected, sizeof expected,
           "tensor 'W' in %s has shape [784, 10], the model expects [10, 784]", path);
  cr_assert_str_eq(err, expected);
  flrt_tensor want_rank = {"W", FLRT_F32, 1, {7840}, w};
  cr_assert_eq(flrt_checkpoint_load(path, &want_rank, 1, NULL, NULL, 0, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, "the model expects [7840]"), "%s", err);
}

Test(checkpoint, dtype_mismatch_is_named) {
  int32_t v[3] = {1, 2, 3};
  flrt_tensor saved = {"count", FLRT_I32, 1, {3}, v};
  cr_assert_eq(flrt_checkpoint_save(path, &saved, 1, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
  float f[3];
  flrt_tensor want = {"count", FLRT_F32, 1, {3}, f};
  cr_assert_eq(flrt_checkpoint_load(path, &want, 1, NULL, NULL, 0, err, sizeof err), -1);
  char expected[1200];
  snprintf(expected, sizeof expected, "tensor 'count' in %s has dtype I32, the model expects F32",
           path);
  cr_assert_str_eq(err, expected);
}

Test(checkpoint, a_refused_load_leaves_every_buffer_untouched) {
  model m;
  model_init(&m, 1.0f);
  save_model(&m);
  model_scribble(&m);
  model before = m;
  m.t[4].dims[0] = 4; /* idx: [4, 2] instead of [2, 2] */
  m.t[4].dims[1] = 1;
  cr_assert_eq(load_model(&m, NULL, NULL, 0), -1);
  cr_assert_eq(memcmp(m.w, before.w, sizeof m.w), 0, "W was loaded although idx was refused");
  cr_assert_eq(memcmp(m.b, before.b, sizeof m.b), 0);
}

Test(checkpoint, metadata_longer_than_the_buffer_is_refused) {
  model m;
  model_init(&m, 1.0f);
  save_model(&m);
  char small[8];
  cr_assert_eq(load_model(&m, "note", small, sizeof small), -1);
  cr_assert_not_null(strstr(err, "note"), "%s", err);
  cr_assert_eq(load_model(&m, "step", small, 3), 0, "%s", err);
  cr_assert_str_eq(small, "42");
}

Test(checkpoint, missing_file) {
  model m;
  model_init(&m, 1.0f);
  cr_assert_eq(load_model(&m, NULL, NULL, 0), -1);
  cr_assert_not_null(strstr(err, path), "%s", err);
  cr_assert_not_null(strstr(err, "No such file"), "%s", err);
}

Test(checkpoint, every_truncation_is_refused) {
  model m;
  model_init(&m, 2.0f);
  save_model(&m);
  size_t len;
  unsigned char *bytes = rtt_read_file(path, &len);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | bytes[i];
  for (size_t cut = 0; cut < len; cut++) {
    rtt_write_file(path, bytes, cut);
    model_scribble(&m);
    cr_assert_eq(load_model(&m, NULL, NULL, 0), -1, "cut at %zu of %zu was accepted", cut, len);
    cr_assert_not_null(strstr(err, path), "cut at %zu: %s", cut, err);
    if (cut >= 8 + hl) {
      char expected[1200];
      snprintf(expected, sizeof expected,
               "checkpoint %s is truncated: header promises %llu bytes of data, file has %llu",
               path, (unsigned long long)(len - 8 - hl), (unsigned long long)(cut - 8 - hl));
      cr_assert_str_eq(err, expected);
    } else {
      cr_assert_not_null(strstr(err, "truncated"), "cut at %zu: %s", cut, err);
    }
  }
  free(bytes);
}

Test(checkpoint, trailing_bytes_are_refused) {
  model m;
  model_init(&m, 2.0f);
  save_model(&m);
  FILE *f = fopen(path, "ab");
  cr_assert_not_null(f);
  fputs("xyz", f);
  fclose(f);
  cr_assert_eq(load_model(&m, NULL, NULL, 0), -1);
  cr_assert_not_null(strstr(err, "accounts for only 93"), "%s", err);
}

Test(checkpoint, absurd_header_length_is_refused) {
  unsigned char bytes[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
  rtt_write_file(path, bytes, sizeof bytes);
  model m;
  model_init(&m, 0.0f);
  cr_assert_eq(load_model(&m, NULL, NULL, 0), -1);
  cr_assert_not_null(strstr(err, "absurd"), "%s", err);
}

/* A flipped header byte must be refused, or, when the header still makes
 * sense, load exactly the saved values. */
Test(checkpoint, flipped_header_bytes_never_load_wrong_values) {
  model saved;
  model_init(&saved, 5.0f);
  save_model(&saved);
  size_t len;
  unsigned char *bytes = rtt_read_file(path, &len);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | bytes[i];
  static const unsigned char masks[] = {0x01, 0x02, 0x08, 0x20, 0x40, 0x80, 0xff};
  int refused = 0, accepted = 0;
  for (size_t at = 0; at < 8 + hl; at++) {
    for (size_t k = 0; k < sizeof masks; k++) {
      bytes[at] ^= masks[k];
      rtt_write_file(path, bytes, len);
      bytes[at] ^= masks[k];
      model loaded;
      model_init(&loaded, 0.0f);
      model_scribble(&loaded);
      err[0] = '\0';
      if (load_model(&loaded, NULL, NULL, 0) == 0) {
        model_assert_equal(&saved, &loaded);
        accepted++;
      } else {
        cr_assert_neq(err[0], '\0', "refused without a message");
        refused++;
      }
    }
  }
  cr_assert_gt(refused, accepted, "%d refused, %d accepted", refused, accepted);
  free(bytes);
}

/* Random bytes and random mutations of a valid header: no crash, no hang. */
Test(checkpoint, fuzzed_headers_never_crash) {
  model saved;
  model_init(&saved, 5.0f);
  save_model(&saved);
  size_t len;
  unsigned char *good = rtt_read_file(path, &len);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | good[i];
  static const char alphabet[] = "{}[]\":,0123456789-+.eE\\u tfnrlsa_FI3264BOLdtypeshaofs";
  unsigned char *buf = malloc(len + 512);
  cr_assert_not_null(buf);
  uint32_t state = 12345;
  for (int iter = 0; iter < 4000; iter++) {
    size_t n;
    if (iter % 2 == 0) {
      /* Garbage from the characters a header uses. */
      size_t header_len = 1 + (size_t)(state % 300);
      for (size_t i = 0; i < header_len; i++) {
        state = state * 1664525u + 1013904223u;
        buf[8 + i] = (unsigned char)alphabet[(state >> 16) % (sizeof alphabet - 1)];
      }
      for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)header_len >> (8 * i));
      n = 8 + header_len + (state >> 8) % 64;
      memset(buf + 8 + header_len, 0x3f, n - 8 - header_len);
    } else {
      /* A valid file with a few header bytes replaced. */
      memcpy(buf, good, len);
      n = len;
      int edits = 1 + (int)(state % 4);
      for (int e = 0; e < edits; e++) {
        state = state * 1664525u + 1013904223u;
        size_t at = 8 + (state >> 8) % hl;
        state = state * 1664525u + 1013904223u;
        buf[at] = (state >> 24) % 3 == 0 ? (unsigned char)(state >> 8)
                                          : (unsigned char)alphabet[(state >> 16) % (sizeof alphabet - 1)];
      }
    }
    state = state * 1664525u + 1013904223u;
    rtt_write_file(path, buf, n);
    model loaded;
    model_init(&loaded, 0.0f);
    if (load_model(&loaded, "step", (char[64]){0}, 64) == 0) model_assert_equal(&saved, &loaded);
  }
  free(buf);
  free(good);
}

/* ---- the header parser on hand-written headers -------------------------------- */

Test(checkpoint, escaped_names_and_unicode) {
  float v[2] = {1.5f, -2.5f}, got[2] = {0, 0};
  write_raw("{\"__metadata__\":{\"k\\u00e9y\":\"v\\ud83d\\ude00\\/\"},"
            " \"a\\\"b\\u00e9\" : { \"shape\" : [ 2 ] , \"dtype\":\"F32\", "
            "\"data_offsets\":[0,8]}}\n\t\r",
            v, sizeof v);
  flrt_tensor t = {"a\"b\xc3\xa9", FLRT_F32, 1, {2}, got};
  char value[32];
  cr_assert_eq(flrt_checkpoint_load(path, &t, 1, "k\xc3\xa9y", value, sizeof value, err,
                                    sizeof err),
               0, "%s", err);
  cr_assert_eq(got[0], 1.5f);
  cr_assert_eq(got[1], -2.5f);
  cr_assert_str_eq(value, "v\xf0\x9f\x98\x80/");
}

Test(checkpoint, malformed_headers_are_refused) {
  static const char *const headers[] = {
      "",
      "[]",
      "{",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}} x",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2e0],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,16]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"V\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
      "{\"__metadata__\":{\"k\":1},\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
      "{\"__metadata__\":[],\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":\"\\ud800\"}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":\"\\x41\"}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":\"a\tb\"}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":\"\\u12\"}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":tru}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":\"unterminated}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]} \"k\":1}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":[1,2}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":-}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":1.}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":1e}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"k\":null}",
      "{\"W\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"pad\":{\"dtype\":\"U8\","
      "\"shape\":[1],\"data_offsets\":[8,9]}}",
  };
  float v[2] = {1, 2};
  for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
    write_raw(headers[i], v, sizeof v);
    float got[2];
    flrt_tensor t = {"W", FLRT_F32, 1, {2}, got};
    err[0] = '\0';
    cr_assert_eq(flrt_checkpoint_load(path, &t, 1, NULL, NULL, 0, err, sizeof err), -1,
                 "header %zu was accepted: %s", i, headers[i]);
    cr_assert_neq(err[0], '\0', "header %zu: no message", i);
    cr_assert_not_null(strstr(err, path), "header %zu: %s", i, err);
  }
}

Test(checkpoint, deep_nesting_is_refused_without_recursion_blowup) {
  size_t depth = 200000;
  char *h = malloc(depth * 2 + 64);
  cr_assert_not_null(h);
  strcpy(h, "{\"k\":");
  size_t n = strlen(h);
  for (size_t i = 0; i < depth; i++) h[n++] = '[';
  for (size_t i = 0; i < depth; i++) h[n++] = ']';
  h[n++] = '}';
  h[n] = '\0';
  write_raw(h, NULL, 0);
  cr_assert_eq(flrt_checkpoint_load(path, NULL, 0, NULL, NULL, 0, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, "nested"), "%s", err);
  free(h);
}

Test(checkpoint, foreign_dtypes_and_gaps_are_accepted) {
  /* Written by another tool: an F16 tensor we do not load, keys in another order. */
  unsigned char data[12] = {0};
  float w = 7.0f;
  memcpy(data + 4, &w, 4);
  write_raw("{\"h\":{\"data_offsets\":[0,4],\"shape\":[2],\"dtype\":\"F16\"},"
            "\"w\":{\"shape\":[1,1],\"dtype\":\"F32\",\"data_offsets\":[4,8]},"
            "\"x\":{\"shape\":[2],\"dtype\":\"BF16\",\"data_offsets\":[8,12]}}",
            data, sizeof data);
  float got = 0;
  flrt_tensor t = {"w", FLRT_F32, 2, {1, 1}, &got};
  cr_assert_eq(flrt_checkpoint_load(path, &t, 1, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
  cr_assert_eq(got, 7.0f);
}

/* ---- saving ---------------------------------------------------------------- */

Test(checkpoint, save_refuses_bad_tensors) {
  float v[2] = {0, 0};
  flrt_tensor dup[2] = {{"a", FLRT_F32, 1, {2}, v}, {"a", FLRT_F32, 1, {2}, v}};
  cr_assert_eq(flrt_checkpoint_save(path, dup, 2, NULL, NULL, 0, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, "'a'"), "%s", err);
  flrt_tensor reserved = {"__metadata__", FLRT_F32, 1, {2}, v};
  cr_assert_eq(flrt_checkpoint_save(path, &reserved, 1, NULL, NULL, 0, err, sizeof err), -1);
  flrt_tensor rank = {"r", FLRT_F32, 9, {1, 1, 1, 1, 1, 1, 1, 1}, v};
  cr_assert_eq(flrt_checkpoint_save(path, &rank, 1, NULL, NULL, 0, err, sizeof err), -1);
  flrt_tensor negative = {"n", FLRT_F32, 1, {-1}, v};
  cr_assert_eq(flrt_checkpoint_save(path, &negative, 1, NULL, NULL, 0, err, sizeof err), -1);
  flrt_tensor no_data = {"d", FLRT_F32, 1, {2}, NULL};
  cr_assert_eq(flrt_checkpoint_save(path, &no_data, 1, NULL, NULL, 0, err, sizeof err), -1);
  cr_assert(!file_exists(path), "a refused save created the file");
}

Test(checkpoint, save_into_a_missing_directory_fails_cleanly) {
  char *bad = rtt_path(dir, "no/such/dir/model.safetensors");
  model m;
  model_init(&m, 1.0f);
  cr_assert_eq(flrt_checkpoint_save(bad, m.t, 6, NULL, NULL, 0, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, bad), "%s", err);
  free(bad);
}

Test(checkpoint, failed_save_keeps_the_old_file) {
  model old;
  model_init(&old, 1.0f);
  save_model(&old);
  /* A directory where the temporary file goes: the save cannot even start. */
  char *t = tmp_path();
  cr_assert_eq(mkdir(t, 0700), 0);
  model fresh;
  model_init(&fresh, 9.0f);
  cr_assert_eq(flrt_checkpoint_save(path, fresh.t, 6, NULL, NULL, 0, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, t), "%s", err);
  cr_assert_eq(rmdir(t), 0);
  model loaded;
  model_init(&loaded, 0.0f);
  model_scribble(&loaded);
  cr_assert_eq(load_model(&loaded, NULL, NULL, 0), 0, "%s", err);
  model_assert_equal(&old, &loaded);
  free(t);
}

/* A write that fails halfway (file size limit): reported, the temporary file
 * removed, the old checkpoint intact. */
Test(checkpoint, save_failing_midway_keeps_the_old_file) {
  model old;
  model_init(&old, 1.0f);
  save_model(&old);
  const size_t big_n = 1 << 18; /* 1 MiB of floats */
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    float *big = calloc(big_n, sizeof(float));
    if (!big) _exit(10);
    struct rlimit lim = {65536, 65536};
    signal(SIGXFSZ, SIG_IGN);
    if (setrlimit(RLIMIT_FSIZE, &lim) != 0) _exit(11);
    flrt_tensor t = {"W", FLRT_F32, 1, {(int64_t)big_n}, big};
    char child_err[1024];
    int rc = flrt_checkpoint_save(path, &t, 1, NULL, NULL, 0, child_err, sizeof child_err);
    free(big);
    if (rc != -1) _exit(12);
    if (!strstr(child_err, "writing")) _exit(13);
    _exit(0);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
  char *t = tmp_path();
  cr_assert(!file_exists(t), "the partial temporary file was left behind");
  free(t);
  model loaded;
  model_init(&loaded, 0.0f);
  model_scribble(&loaded);
  cr_assert_eq(load_model(&loaded, NULL, NULL, 0), 0, "%s", err);
  model_assert_equal(&old, &loaded);
}

Test(checkpoint, stale_temporary_garbage_is_harmless) {
  char *t = tmp_path();
  rtt_write_file(t, "garbage from a killed save", 26);
  model m;
  model_init(&m, 4.0f);
  save_model(&m);
  cr_assert(!file_exists(t));
  rtt_write_file(t, "more garbage", 12);
  model loaded;
  model_init(&loaded, 0.0f);
  cr_assert_eq(load_model(&loaded, NULL, NULL, 0), 0, "%s", err);
  model_assert_equal(&m, &loaded);
  free(t);
}

/* A process killed at arbitrary points while saving in a loop: whatever it
 * left, path always holds one complete checkpoint, never a damaged one. */
Test(checkpoint, killed_while_saving_leaves_a_complete_checkpoint, .timeout = 100) {
  const size_t n = 1 << 20; /* 4 MiB per save */
  float *values = malloc(n * sizeof(float));
  cr_assert_not_null(values);
  flrt_tensor t = {"W", FLRT_F32, 1, {(int64_t)n}, values};
  const char *keys[1] = {"iteration"};
  for (size_t i = 0; i < n; i++) values[i] = 0.0f;
  const char *zero[1] = {"0"};
  cr_assert_eq(flrt_checkpoint_save(path, &t, 1, keys, zero, 1, err, sizeof err), 0, "%s", err);

  long last_seen = 0;
  int progressed = 0;
  for (int round = 0; round < 24; round++) {
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
      for (long it = last_seen + 1;; it++) {
        char text[32];
        snprintf(text, sizeof text, "%ld", it);
        const char *vals[1] = {text};
        for (size_t i = 0; i < n; i++) values[i] = (float)it;
        char child_err[512];
        if (flrt_checkpoint_save(path, &t, 1, keys, vals, 1, child_err, sizeof child_err) != 0)
          _exit(1);
      }
    }
    /* 0 to 46 ms, scattered over the phases of a save (one takes ~10 ms). */
    struct timespec pause = {0, (long)((round * 7919) % 47) * 1000000L + 137000L * round};
    nanosleep(&pause, NULL);
    kill(pid, SIGKILL);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
              "the saving child stopped by itself (status %d)", status);

    char iteration[32];
    for (size_t i = 0; i < n; i++) values[i] = -1.0f;
    cr_assert_eq(flrt_checkpoint_load(path, &t, 1, "iteration", iteration, sizeof iteration, err,
                                      sizeof err),
                 0, "round %d: %s", round, err);
    long it = strtol(iteration, NULL, 10);
    cr_assert_geq(it, last_seen, "round %d: went back from %ld to %ld", round, last_seen, it);
    for (size_t i = 0; i < n; i++)
      cr_assert_eq(values[i], (float)it, "round %d: element %zu is %g in checkpoint %ld", round,
                   i, values[i], it);
    progressed |= it > last_seen;
    last_seen = it;
  }
  cr_assert(progressed, "no save ever completed: the test did not test anything");
  free(values);
}
