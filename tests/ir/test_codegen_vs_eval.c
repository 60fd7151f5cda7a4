/* test_codegen_vs_eval.c - generated C, compiled and run, against the reference interpreter on the same graph. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "codegen.h"
#include "frontend.h"
#include "ir.h"

/* ---- method -----------------------------------------------------------------------
 * A test compiles a description, emits its C with fl_emit_c (no main.c), and
 * writes a harness main.c that creates the model with seed 1, calls entry
 * points on a fixed batch and writes the fetched tensors and then every
 * variable, raw, to out.bin. The harness is built as the user would build it
 * (cc -std=c99 -O2 -Wall -Wextra -Werror with the runtime's CPU sources) and run.
 * The interpreter (fl_eval_new(g, 1)) makes the same runs with the same feeds;
 * dropout masks and initial values come from the same Philox streams, so
 * every value must agree. The C is emitted as flowc build makes it
 * (fl_simplify, then fused kernels); MNIST softmax and the every-op graph are
 * also checked as -O0 makes it (neither: one kernel per node).
 *
 * Tolerance: generated code computes in float32 (sgemm, float kernels), the
 * interpreter in double. After a step or two of training, float values agree
 * when |generated - interpreted| <= 1e-5 + 1e-4 * |interpreted|; integers and
 * booleans must be equal.
 *
 * One exception, and it is Adam's, not the code's: Adam's step for an element
 * is about lr * g / (|g| + epsilon / sqrt(1 - beta2)), so an element whose
 * gradient is within float noise of 0 (|g| ~ 1e-7 where most are ~1e-2) steps
 * by anything up to lr depending on that noise. Variables that Adam trains may
 * therefore have a few elements (at most 1 in 10^4, plus 2) off by up to
 * lr * steps more; their slots m and v, which carry the gradients linearly,
 * are held to the strict tolerance.
 *
 * FLOWC_TEST_VERBOSE=1 prints, per compared tensor, the largest difference
 * and the share of the tolerance it takes. */
#define ABS_TOL 1e-5
#define REL_TOL 1e-4

#include "../diag_capture.h"

TestSuite(codegen_vs_eval, .init = capture_start, .fini = capture_stop);

/* ---- text and processes ------------------------------------------------------------- */

typedef struct {
  char *text;
  size_t len, cap;
} buf;

static void bprintf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int need = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (b->len + (size_t)need + 1 > b->cap) {
    b->cap = (b->len + (size_t)need + 1) * 2;
    b->text = realloc(b->text, b->cap);
    cr_assert(b->text);
  }
  va_start(ap, fmt);
  vsnprintf(b->text + b->len, b->cap - b->len, fmt, ap);
  va_end(ap);
  b->len += (size_t)need;
}

static const char *env(const char *name) {
  const char *v = getenv(name);
  cr_assert(v && *v, "%s is not set: run the tests through meson test", name);
  return v;
}

/* Runs a shell command; stdout and stderr go to *output (malloc'd). Returns
 * the exit status, or 128 + the signal. */
static int run_command(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_command(char **output, const char *fmt, ...) {
  char cmd[16384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  char full[16500];
  snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
  FILE *p = popen(full, "r");
  cr_assert(p, "cannot run: %s", cmd);
  buf out = {0};
  char chunk[4096];
  size_t got;
  bprintf(&out, "%s", "");
  while ((got = fread(chunk, 1, sizeof chunk, p)) > 0) bprintf(&out, "%.*s", (int)got, chunk);
  int status = pclose(p);
  *output = out.text;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* A fresh folder for one test under the build root. */
static const char *scratch(const char *name, char *path, size_t cap) {
  snprintf(path, cap, "%s/ir-codegen-vs-eval", env("FLOWC_BUILD_ROOT"));
  mkdir(path, 0777);
  snprintf(path, cap, "%s/ir-codegen-vs-eval/%s", env("FLOWC_BUILD_ROOT"), name);
  char *out;
  int rc = run_command(&out, "rm -rf '%s' && mkdir -p '%s'", path, path);
  cr_assert_eq(rc, 0, "cannot make %s: %s", path, out);
  free(out);
  return path;
}

static void write_file(const char *dir, const char *name, const void *data, size_t len) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  cr_assert(f, "cannot write %s", path);
  cr_assert_eq(fwrite(data, 1, len, f), len);
  fclose(f);
}

static unsigned char *read_file(const char *dir, const char *name, size_t *len) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  cr_assert(f, "cannot read %s", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *data = malloc((size_t)size + 1);
  cr_assert(data);
  cr_assert_eq(fread(data, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  *len = (size_t)size;
  return data;
}

/* ---- graphs -------------------------------------------------------------------------- */

static fl_graph *compile_text(const char *text) {
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g, "does not parse:\n%s\n--- diagnostics:\n%s", text, diag_text());
  cr_assert_eq(fl_finish(g), 0, "fl_finish fails:\n%s\n--- diagnostics:\n%s", text, diag_text());
  return g;
}

static fl_graph *compile_example(const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/examples/%s.flow", env("FLOWC_SOURCE_ROOT"), name);
  fl_graph *g = fl_frontend_load(path, NULL, 0);
  cr_assert(g, "%s does not parse:\n%s", path, diag_text());
  cr_assert_eq(fl_finish(g), 0, "%s does not check:\n%s", path, diag_text());
  return g;
}

static int node(const fl_graph *g, const char *name) {
  int id = fl_graph_find(g, name);
  cr_assert_geq(id, 0, "no node named '%s'", name);
  return id;
}

/* The C field name of each variable in NAME_variables, as emit_c.c names
 * them: the user name as an identifier, else v<id>; a clash gets _<id>. */
static void variable_fields(const fl_graph *g, char (*names)[128]) {
  for (int i = 0; i < g->nnodes; i++) {
    names[i][0] = '\0';
    if (g->nodes[i].op != FL_OP_VARIABLE) continue;
    if (g->nodes[i].name) fl_c_identifier(g->nodes[i].name, names[i], 96);
    else snprintf(names[i], 96, "v%d", i);
    for (int j = 0; j < i; j++)
      if (g->nodes[j].op == FL_OP_VARIABLE && strcmp(names[j], names[i]) == 0) {
        size_t len = strlen(names[i]);
        snprintf(names[i] + (len < 80 ? len : 80), 16, "_%d", i);
        break;
      }
  }
}

/* ---- expected values ------------------------------------------------------------------- */

/* What out.bin holds, in order: each item is count elements of dtype, as C
 * stores them (float, int32_t, int64_t, bool). */
typedef struct {
  char what[160];
  fl_dtype dtype;
  int64_t count;
  double *expect; /* owned */
  double loose;   /* > 0: a few elements may be off by this much more (Adam) */
} item;

typedef struct {
  item items[128];
  int n;
} layout;

static void expect_value(layout *l, const char *what, const fl_value *v) {
  cr_assert_lt(l->n, 128);
  item *it = &l->items[l->n++];
  snprintf(it->what, sizeof it->what, "%s", what);
  it->dtype = v->dtype;
  it->count = fl_value_size(v);
  it->loose = 0;
  it->expect = malloc((size_t)(it->count > 0 ? it->count : 1) * sizeof(double));
  cr_assert(it->expect);
  if (it->count > 0) memcpy(it->expect, v->data, (size_t)it->count * sizeof(double));
}

static size_t dtype_bytes(fl_dtype t) {
  switch (t) {
  case FL_F32: return sizeof(float);
  case FL_I32: return sizeof(int32_t);
  case FL_I64: return sizeof(int64_t);
  default: return sizeof(bool);
  }
}

/* Compares out.bin with the layout; every mismatch up to a few per item is
 * reported. Returns the number of mismatching elements. */
static long compare_output(const char *dir, layout *l) {
  size_t len;
  unsigned char *data = read_file(dir, "out.bin", &len);
  size_t want = 0;
  for (int i = 0; i < l->n; i++) want += (size_t)l->items[i].count * dtype_bytes(l->items[i].dtype);
  cr_assert_eq(len, want, "out.bin has %zu bytes, the layout %zu", len, want);
  size_t at = 0;
  long total_bad = 0;
  for (int i = 0; i < l->n; i++) {
    item *it = &l->items[i];
    long bad = 0, loose = 0;
    double worst = 0, used = 0; /* used: the largest share of the tolerance taken */
    int64_t worst_at = -1;
    for (int64_t k = 0; k < it->count; k++) {
      double got;
      switch (it->dtype) {
      case FL_F32: { float f; memcpy(&f, data + at, sizeof f); got = f; break; }
      case FL_I32: { int32_t v; memcpy(&v, data + at, sizeof v); got = v; break; }
      case FL_I64: { int64_t v; memcpy(&v, data + at, sizeof v); got = (double)v; break; }
      default: { bool v; memcpy(&v, data + at, sizeof v); got = v; break; }
      }
      at += dtype_bytes(it->dtype);
      double e = it->expect[k];
      bool ok = it->dtype == FL_F32 ? fabs(got - e) <= ABS_TOL + REL_TOL * fabs(e) : got == e;
      if (!ok && it->loose > 0 && fabs(got - e) <= ABS_TOL + REL_TOL * fabs(e) + it->loose &&
          loose < it->count / 10000 + 2) {
        loose++;
        ok = true;
      }
      if (!ok) {
        if (bad < 5)
          cr_expect_fail("%s[%lld]: generated code %.9g, interpreter %.9g", it->what, (long long)k, got, e);
        bad++;
      }
      if (it->dtype == FL_F32 && fabs(got - e) / (ABS_TOL + REL_TOL * fabs(e)) > used)
        used = fabs(got - e) / (ABS_TOL + REL_TOL * fabs(e));
      if (fabs(got - e) > worst) {
        worst = fabs(got - e);
        worst_at = k;
      }
    }
    if (getenv("FLOWC_TEST_VERBOSE"))
      fprintf(stderr, "%-40s %9lld elements, largest difference %.3g (at %lld), %.1f%% of the tolerance\n",
              it->what, (long long)it->count, worst, (long long)worst_at, 100 * used);
    if (bad)
      cr_expect_fail("%s: %ld of %lld elements differ (largest difference %.3g at %lld)", it->what, bad,
                     (long long)it->count, worst, (long long)worst_at);
    total_bad += bad;
  }
  free(data);
  return total_bad;
}

static void free_layout(layout *l) {
  for (int i = 0; i < l->n; i++) free(l->items[i].expect);
  l->n = 0;
}

/* ---- the interpreter's side ---------------------------------------------------------------- */

typedef struct {
  int node;
  fl_value value;
} feed;

/* Runs fetches (values and train ops) with feeds; values whose `what` is
 * non-NULL go into the layout. */
static void eval_run(fl_eval *ev, const feed *feeds, int nfeeds, const int *fetches,
                     const char *const *what, int nfetches, layout *l) {
  int nodes[8];
  fl_value values[8];
  for (int i = 0; i < nfeeds; i++) {
    nodes[i] = feeds[i].node;
    values[i] = feeds[i].value;
  }
  fl_value out[32];
  memset(out, 0, sizeof out);
  char err[512];
  cr_assert_eq(fl_eval_run(ev, nodes, values, nfeeds, fetches, nfetches, out, err, sizeof err), 0,
               "interpreter: %s", err);
  for (int i = 0; i < nfetches; i++) {
    if (what[i]) expect_value(l, what[i], &out[i]);
    fl_value_free(&out[i]);
  }
}

/* Every variable, in id order (the harness writes them in the same order).
 * adam_steps: how many Adam steps the runs made (see the method above). */
static void expect_variables(const fl_graph *g, fl_eval *ev, layout *l, int adam_steps) {
  for (int i = 0; i < g->nnodes; i++) {
    if (g->nodes[i].op != FL_OP_VARIABLE) continue;
    fl_value *v = fl_eval_variable(ev, i);
    cr_assert(v, "variable %d is not initialised", i);
    char what[160];
    snprintf(what, sizeof what, "variable %s", g->nodes[i].name ? g->nodes[i].name : "(unnamed)");
    expect_value(l, what, v);
    for (int j = 0; j < g->nnodes; j++)
      if (g->nodes[j].op == FL_OP_APPLY_ADAM && g->nodes[j].inputs[0] == i)
        l->items[l->n - 1].loose = adam_steps * g->nodes[j].attr.lr;
  }
}

/* ---- the generated side ------------------------------------------------------------------- */

/* The fixed batch: x in [0, 1) as floats, one-hot labels. */
typedef struct {
  int n;
  float x[8 * 784];
  float labels[8 * 10];
} batch;

static void make_batch(batch *b, int n, uint64_t seed) {
  cr_assert_leq(n, 8);
  b->n = n;
  for (int i = 0; i < n * 784; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    b->x[i] = (float)((double)(seed >> 40) / (double)(1ull << 24));
  }
  memset(b->labels, 0, sizeof b->labels);
  for (int i = 0; i < n; i++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    b->labels[i * 10 + (int)((seed >> 33) % 10)] = 1.0f;
  }
}

/* Feeds for the interpreter: the batch's floats, widened. */
static fl_value batch_x(const batch *b) {
  fl_value v = {.dtype = FL_F32, .rank = 2, .dims = {b->n, 784}};
  v.data = malloc((size_t)(b->n * 784) * sizeof(double));
  for (int i = 0; i < b->n * 784; i++) v.data[i] = b->x[i];
  return v;
}

static fl_value batch_labels(const batch *b) {
  fl_value v = {.dtype = FL_F32, .rank = 2, .dims = {b->n, 10}};
  v.data = malloc((size_t)(b->n * 10) * sizeof(double));
  for (int i = 0; i < b->n * 10; i++) v.data[i] = b->labels[i];
  return v;
}

static fl_value scalar(double x) {
  fl_value v = {.dtype = FL_F32, .rank = 0};
  v.data = malloc(sizeof(double));
  v.data[0] = (double)(float)x;
  return v;
}

/* Emits the model's C into dir from g (a second compile of the description,
 * which this frees: simplification rewrites it, while the interpreter runs
 * the graph as written) and writes main.c around `body`: the body sees
 * `m` (the model, seed 1), `x` and `y_` (the batch from batch.bin, n rows)
 * and put(ptr, bytes); after it, every variable is written. */
static void emit_and_write_harness(fl_graph *g, const char *dir, const char *prefix, const batch *b,
                                   const char *body, bool fuse) {
  /* as flowc build does: simplified and fused, or (-O0) neither */
  if (fuse) fl_simplify(g);
  fl_codegen_options opt = {.name = prefix, .source_path = "t.flow", .with_main = false, .no_fuse = !fuse};
  cr_assert_eq(fl_emit_c(g, dir, &opt), 0, "fl_emit_c fails:\n%s", diag_text());
  buf h = {0};
  bprintf(&h,
          "/* harness for %s: one fixed batch, fetches and variables to out.bin */\n"
          "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n#include \"%s.h\"\n\n"
          "static FILE *out;\n"
          "static void put(const void *p, size_t n) {\n"
          "  if (fwrite(p, 1, n, out) != n) exit(3);\n}\n\n"
          "static void check(%s *m, int rc) {\n"
          "  if (rc) {\n    fprintf(stderr, \"entry failed: %%s\\n\", %s_error(m));\n    exit(4);\n  }\n}\n\n"
          "int main(int argc, char **argv) {\n"
          "  static float x[%d * 784], y_[%d * 10];\n"
          "  const int64_t n = %d;\n"
          "  (void)n;\n"
          "  if (argc != 3) return 2;\n"
          "  FILE *in = fopen(argv[1], \"rb\");\n"
          "  if (!in || fread(x, sizeof x, 1, in) != 1 || fread(y_, sizeof y_, 1, in) != 1) return 5;\n"
          "  fclose(in);\n"
          "  out = fopen(argv[2], \"wb\");\n"
          "  if (!out) return 6;\n"
          "  %s *m = %s_new(1);\n"
          "  if (!m) return 7;\n"
          "%s",
          prefix, prefix, prefix, prefix, b->n, b->n, b->n, prefix, prefix, body);
  char (*fields)[128] = calloc((size_t)g->nnodes, sizeof *fields);
  variable_fields(g, fields);
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == FL_OP_VARIABLE)
      bprintf(&h, "  put(m->vars.%s, sizeof m->vars.%s);\n", fields[i], fields[i]);
  free(fields);
  bprintf(&h, "  if (fclose(out)) return 8;\n  %s_free(m);\n  return 0;\n}\n", prefix);
  write_file(dir, "main.c", h.text, h.len);
  free(h.text);
  /* the batch, as the harness reads it */
  buf raw = {0};
  raw.cap = sizeof(float) * (size_t)b->n * 794 + 1;
  raw.text = malloc(raw.cap);
  memcpy(raw.text, b->x, sizeof(float) * (size_t)b->n * 784);
  memcpy(raw.text + sizeof(float) * (size_t)b->n * 784, b->labels, sizeof(float) * (size_t)b->n * 10);
  write_file(dir, "batch.bin", raw.text, sizeof(float) * (size_t)b->n * 794);
  free(raw.text);
  fl_graph_free(g);
}

/* The runtime's CPU sources, from runtime/meson.build (tests/ir/meson.build
 * passes them); runtime/ also holds sources for other targets. */
#ifndef FLOWC_RT_SOURCES
#define FLOWC_RT_SOURCES "arena.c batch.c checkpoint.c data.c download.c driver.c kernels.c rng.c"
#endif

/* Builds the harness as a user builds generated code, and runs it. */
static void build_and_run(const char *dir, const char *prefix) {
  char *out;
  const char *src = env("FLOWC_SOURCE_ROOT");
  buf runtime = {0};
  bprintf(&runtime, "%s", "");
  char names[] = FLOWC_RT_SOURCES;
  for (char *name = strtok(names, " "); name; name = strtok(NULL, " "))
    bprintf(&runtime, " '%s/runtime/%s'", src, name);
  int rc = run_command(&out,
                       "cd '%s' && cc -std=c99 -O2 -Wall -Wextra -Werror -I. -I'%s/runtime' main.c %s.c%s "
                       "$(pkg-config --cflags --libs openblas) -lz -lcurl -lm -o harness",
                       dir, src, prefix, runtime.text);
  free(runtime.text);
  if (rc != 0 && strlen(out) > 3000) strcpy(out + 2980, "\n[...]"); /* the first errors tell */
  cr_assert_eq(rc, 0, "the generated code does not compile (%d):\n%s", rc, out);
  free(out);
  rc = run_command(&out, "cd '%s' && ./harness batch.bin out.bin", dir);
  cr_assert_eq(rc, 0, "the harness fails (%d):\n%s", rc, out);
  free(out);
}

/* ---- the examples ---------------------------------------------------------------------------- */

static void mnist_softmax_case(bool fuse) {
  fl_graph *g = compile_example("mnist_softmax");
  char dir[4096];
  scratch(fuse ? "mnist_softmax" : "mnist_softmax_unfused", dir, sizeof dir);
  batch *b = malloc(sizeof *b);
  make_batch(b, 3, 42);
  emit_and_write_harness(compile_example("mnist_softmax"), dir, "mnist_softmax", b,
                         "  float ce, acc, acc_after;\n"
                         "  check(m, mnist_softmax_train_step(m, n, x, y_, &ce, &acc));\n"
                         "  put(&ce, sizeof ce);\n  put(&acc, sizeof acc);\n"
                         "  check(m, mnist_softmax_accuracy(m, n, x, y_, &acc_after));\n"
                         "  put(&acc_after, sizeof acc_after);\n"
                         "  printf(\"loss %.9g accuracy %.9g then %.9g\\n\", ce, acc, acc_after);\n",
                         fuse);
  build_and_run(dir, "mnist_softmax");

  fl_eval *ev = fl_eval_new(g, 1);
  cr_assert(ev, "%s", diag_text());
  feed feeds[2] = {{node(g, "x"), batch_x(b)}, {node(g, "y_"), batch_labels(b)}};
  layout *l = calloc(1, sizeof *l);
  int step[3] = {node(g, "cross_entropy"), node(g, "accuracy"), node(g, "train_step")};
  eval_run(ev, feeds, 2, step, (const char *const[]){"cross_entropy", "accuracy", NULL}, 3, l);
  int acc = node(g, "accuracy");
  eval_run(ev, feeds, 2, &acc, (const char *const[]){"accuracy after the step"}, 1, l);
  expect_variables(g, ev, l, 0);
  /* the step really moved W away from its zeros */
  fl_value *w = fl_eval_variable(ev, node(g, "W"));
  double moved = 0;
  for (int64_t i = 0; i < fl_value_size(w); i++) moved += fabs(w->data[i]);
  cr_assert_gt(moved, 0.1, "the training step did not change W");
  compare_output(dir, l);

  free_layout(l);
  free(l);
  fl_value_free(&feeds[0].value);
  fl_value_free(&feeds[1].value);
  fl_eval_free(ev);
  free(b);
  fl_graph_free(g);
}

Test(codegen_vs_eval, mnist_softmax) { mnist_softmax_case(true); }
Test(codegen_vs_eval, mnist_softmax_unfused) { mnist_softmax_case(false); }

static void mnist_deep_case(bool fuse) {
  fl_graph *g = compile_example("mnist_deep");
  char dir[4096];
  scratch(fuse ? "mnist_deep" : "mnist_deep_unfused", dir, sizeof dir);
  batch *b = malloc(sizeof *b);
  make_batch(b, 3, 7);
  /* keep_prob 1 (a mask of ones), then 0.5: the masks are drawn from the
   * same streams and the same run counter on both sides. */
  emit_and_write_harness(compile_example("mnist_deep"), dir, "mnist_deep", b,
                         "  float ce, acc;\n"
                         "  check(m, mnist_deep_train_step(m, n, x, y_, 1.0f, &ce, &acc));\n"
                         "  put(&ce, sizeof ce);\n  put(&acc, sizeof acc);\n"
                         "  printf(\"step 1: loss %.9g accuracy %.9g\\n\", ce, acc);\n"
                         "  check(m, mnist_deep_train_step(m, n, x, y_, 0.5f, &ce, &acc));\n"
                         "  put(&ce, sizeof ce);\n  put(&acc, sizeof acc);\n"
                         "  printf(\"step 2: loss %.9g accuracy %.9g\\n\", ce, acc);\n"
                         "  check(m, mnist_deep_accuracy(m, n, x, y_, 1.0f, &acc));\n"
                         "  put(&acc, sizeof acc);\n"
                         "  put(&m->dropout_runs, sizeof m->dropout_runs);\n",
                         fuse);
  build_and_run(dir, "mnist_deep");

  fl_eval *ev = fl_eval_new(g, 1);
  cr_assert(ev, "%s", diag_text());
  int kp = node(g, "keep_prob");
  feed feeds[3] = {{node(g, "x"), batch_x(b)}, {node(g, "y_"), batch_labels(b)}, {kp, scalar(1.0)}};
  layout *l = calloc(1, sizeof *l);
  int step[3] = {node(g, "cross_entropy"), node(g, "accuracy"), node(g, "train_step")};
  eval_run(ev, feeds, 3, step, (const char *const[]){"step 1 cross_entropy", "step 1 accuracy", NULL}, 3, l);
  feeds[2].value.data[0] = 0.5;
  eval_run(ev, feeds, 3, step, (const char *const[]){"step 2 cross_entropy", "step 2 accuracy", NULL}, 3, l);
  feeds[2].value.data[0] = 1.0;
  int acc = node(g, "accuracy");
  eval_run(ev, feeds, 3, &acc, (const char *const[]){"accuracy after two steps"}, 1, l);
  /* three runs drew masks: the counter (a uint64_t) is 3 */
  fl_value runs = {.dtype = FL_I64, .rank = 0, .data = (double[]){3}};
  expect_value(l, "dropout_runs", &runs);
  expect_variables(g, ev, l, 2);
  compare_output(dir, l);

  free_layout(l);
  free(l);
  for (int i = 0; i < 3; i++) fl_value_free(&feeds[i].value);
  fl_eval_free(ev);
  free(b);
  fl_graph_free(g);
}

/* (unfused, Deep MNIST would double the slowest test; every_op_unfused runs
 * the same unfused kernels.) */
Test(codegen_vs_eval, mnist_deep) { mnist_deep_case(true); }

/* ---- a graph with every op ----------------------------------------------------------------- */

static const char every_op_text[] =
    "x = placeholder(f32, [None, 784])\n"
    "y_ = placeholder(f32, [None, 10])\n"
    "keep = placeholder(f32)\n"
    "img = reshape(x, [-1, 7, 7, 16])\n"
    "K1 = variable(truncated_normal([3, 3, 16, 4], stddev=0.2))\n"
    "c1 = conv2d(img, K1, strides=[1, 1, 1, 1], padding=\"SAME\")\n"
    "K2 = variable(random_normal([3, 3, 4, 6], stddev=0.3))\n"
    "c2 = conv2d(tanh(c1), K2, strides=[1, 2, 2, 1], padding=\"VALID\")\n"
    "p1 = max_pool(relu(c1 + 0.05), ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n"
    "p2 = max_pool(c2, ksize=[1, 3, 3, 1], strides=[1, 1, 1, 1], padding=\"VALID\")\n"
    "f1 = reshape(p1, [-1, 64])\n"
    "f2 = reshape(p2, [-1, 6])\n"
    "W1 = variable(random_uniform([64, 10], -0.2, 0.2))\n"
    "W2 = variable(random_normal([10, 6], stddev=0.3))\n"
    "b = variable(constant(0.1, shape=[10]))\n"
    "d = dropout(f1, keep)\n"
    "logits = matmul(d, W1) + matmul(f2, W2, transpose_b=true) + b\n"
    "probs = softmax(logits)\n"
    "loss = reduce_mean(softmax_cross_entropy_with_logits(labels=y_, logits=logits))\n"
    "A = variable(random_uniform([10, 5], 0.5, 1.5))\n"
    "B = variable(ones([5]))\n"
    "u = matmul(probs, A)\n"
    "v = sqrt(square(u) + 1.0) - log(exp(neg(u)) + 2.0) / B + sigmoid(u) * negative(B)\n"
    "w = matmul(A, probs, transpose_a=true, transpose_b=true)\n"
    "loss2 = reduce_sum(reduce_mean(v, axis=0, keepdims=true)) + reduce_mean(square(w), axis=[-1, 0])"
    " + reduce_sum(subtract(v, 1.0), axis=[0, 1]) / 10.0\n"
    "C = variable(constant([[1.0, -1.0], [0.5, 2.0]]))\n"
    "G = matmul(C, C, transpose_a=true)\n"
    "loss3 = reduce_sum(square(G - constant([[1.0, 0.0], [0.0, 1.0]]))) + reduce_mean(multiply(divide(C, 2.0), 3.0))\n"
    "train1 = gradient_descent(0.5).minimize(loss)\n"
    "train2 = momentum(0.1, 0.9).minimize(loss2)\n"
    "train3 = adam(0.05).minimize(loss3)\n"
    "counter = variable(0)\n"
    "inc = assign(counter, counter + 1)\n"
    "am = argmax(logits, 1)\n"
    "eq = equal(am, argmax(y_, 1))\n"
    "accuracy = reduce_mean(cast(eq, f32))\n"
    "ci = cast(logits * 10.0, i32)\n"
    "ri = reduce_sum(ci, axis=1)\n"
    "idiv = ci / 3\n"
    "cb = cast(logits, bool)\n"
    "train {\n"
    "  data = mnist(\"MNIST_data\")\n"
    "  steps = 1\n"
    "  every 1: print \"{am} {eq} {ci} {ri} {idiv} {cb} {probs} {c2} {p2} {v} {w}\" with keep = 1.0\n"
    "  run train1, train2, train3, inc with keep = 0.5\n"
    "}\n";

static void every_op_case(bool fuse) {
  fl_graph *g = compile_text(every_op_text);
  char dir[4096];
  scratch(fuse ? "every_op" : "every_op_unfused", dir, sizeof dir);
  batch *b = malloc(sizeof *b);
  make_batch(b, 3, 99);
  emit_and_write_harness(
      compile_text(every_op_text), dir, "every_op", b,
      "  int64_t am[3];\n  bool eq[3];\n  int32_t ci[30], ri[3], idiv[30];\n  bool cb[30];\n"
      "  float probs[30], c2[3 * 3 * 3 * 6], p2[3 * 6], v[15], w[15];\n"
      "  check(m, every_op_am_eq_ci_ri_idiv_cb_probs_c2_p2_v_w(m, n, x, y_, 1.0f, am, eq, ci, ri, idiv, cb,\n"
      "                                                      probs, c2, p2, v, w));\n"
      "  put(am, sizeof am);\n  put(eq, sizeof eq);\n  put(ci, sizeof ci);\n  put(ri, sizeof ri);\n"
      "  put(idiv, sizeof idiv);\n  put(cb, sizeof cb);\n  put(probs, sizeof probs);\n  put(c2, sizeof c2);\n"
      "  put(p2, sizeof p2);\n  put(v, sizeof v);\n  put(w, sizeof w);\n"
      "  float loss, loss2, loss3, accuracy;\n"
      "  check(m, every_op_train1_train2_train3_inc(m, n, x, y_, 0.5f, &loss, &loss2, &loss3, &accuracy));\n"
      "  put(&loss, sizeof loss);\n  put(&loss2, sizeof loss2);\n  put(&loss3, sizeof loss3);\n"
      "  put(&accuracy, sizeof accuracy);\n"
      "  printf(\"loss %.9g %.9g %.9g accuracy %.9g\\n\", loss, loss2, loss3, accuracy);\n",
      fuse);
  build_and_run(dir, "every_op");

  fl_eval *ev = fl_eval_new(g, 1);
  cr_assert(ev, "%s", diag_text());
  feed feeds[3] = {{node(g, "x"), batch_x(b)}, {node(g, "y_"), batch_labels(b)}, {node(g, "keep"), scalar(1.0)}};
  layout *l = calloc(1, sizeof *l);
  static const char *const printed[] = {"am", "eq", "ci", "ri", "idiv", "cb", "probs", "c2", "p2", "v", "w"};
  int fetches[11];
  for (int i = 0; i < 11; i++) fetches[i] = node(g, printed[i]);
  eval_run(ev, feeds, 3, fetches, printed, 11, l);
  feeds[2].value.data[0] = 0.5;
  int step[8] = {node(g, "loss"), node(g, "loss2"), node(g, "loss3"), node(g, "accuracy"),
                 node(g, "train1"), node(g, "train2"), node(g, "train3"), node(g, "inc")};
  eval_run(ev, feeds, 3, step,
           (const char *const[]){"loss", "loss2", "loss3", "accuracy", NULL, NULL, NULL, NULL}, 8, l);
  expect_variables(g, ev, l, 1);
  compare_output(dir, l);

  free_layout(l);
  free(l);
  for (int i = 0; i < 3; i++) fl_value_free(&feeds[i].value);
  fl_eval_free(ev);
  free(b);
  fl_graph_free(g);
}

Test(codegen_vs_eval, every_op) { every_op_case(true); }
Test(codegen_vs_eval, every_op_unfused) { every_op_case(false); }

/* ---- focused cases ----------------------------------------------------------------------------- */

/* The batch of the current small case (two rows), for cases that feed it. */
static batch *small_batch;

/* Builds a small description as flowc build does, runs `body` in the harness
 * and `interpret`'s runs in the interpreter, and compares their outputs and
 * then every variable. */
static void small_case(const char *name, const char *text, const char *body,
                       void (*interpret)(const fl_graph *g, fl_eval *ev, layout *l)) {
  fl_graph *g = compile_text(text);
  char dir[4096];
  scratch(name, dir, sizeof dir);
  batch *b = calloc(1, sizeof *b);
  make_batch(b, 2, 5);
  small_batch = b;
  emit_and_write_harness(compile_text(text), dir, name, b, body, true);
  build_and_run(dir, name);
  fl_eval *ev = fl_eval_new(g, 1);
  cr_assert(ev, "%s", diag_text());
  layout *l = calloc(1, sizeof *l);
  interpret(g, ev, l);
  expect_variables(g, ev, l, 0);
  compare_output(dir, l);
  free_layout(l);
  free(l);
  fl_eval_free(ev);
  free(b);
  fl_graph_free(g);
}

/* An integer mean is the truncated quotient: 49 ones average to 1. */
static void integer_mean_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  static const char *const names[] = {"total", "rows", "cols"};
  int fetches[3] = {node(g, "total"), node(g, "rows"), node(g, "cols")};
  eval_run(ev, NULL, 0, fetches, names, 3, l);
  cr_assert_eq(l->items[0].expect[0], 1.0, "the interpreter's mean of 49 ones");
}

Test(codegen_vs_eval, integer_reduce_mean) {
  small_case("integer_mean",
             "k = constant(1, shape=[7, 7])\n"
             "total = reduce_mean(k)\n"
             "j = constant(7, shape=[3, 49])\n"
             "rows = reduce_mean(j, axis=1)\n"
             "cols = reduce_mean(j, axis=0)\n"
             "train {\n  steps = 1\n  print \"{total} {rows} {cols}\"\n}\n",
             "  int32_t total, rows[3], cols[49];\n"
             "  check(m, integer_mean_total_rows_cols(m, &total, rows, cols));\n"
             "  put(&total, sizeof total);\n  put(rows, sizeof rows);\n  put(cols, sizeof cols);\n",
             integer_mean_interpret);
}

/* Integer kernels: matmul (not BLAS), division toward zero, casts, fills. */
static void integer_ops_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  static const char *const names[] = {"mm", "mt", "ma", "q", "nd", "r", "bf", "wide"};
  int fetches[8];
  for (int i = 0; i < 8; i++) fetches[i] = node(g, names[i]);
  eval_run(ev, NULL, 0, fetches, names, 8, l);
}

Test(codegen_vs_eval, integer_ops) {
  small_case("integer_ops",
             "a = constant([[1, 2, 3], [4, 5, 6]])\n"
             "b = constant([[1, -1], [2, 0], [-3, 5]])\n"
             "mm = matmul(a, b)\n"
             "mt = matmul(a, a, transpose_b=true)\n"
             "ma = matmul(a, a, transpose_a=true)\n"
             "q = a / -4\n"
             "nd = (a - 7) / 3\n"
             "r = reduce_sum(argmax(b, 0))\n"
             "bt = constant(true, shape=[2])\n"
             "bf = cast(bt, i32)\n"
             "wide = cast(a, i64) * 3 + 1\n"
             "train {\n  steps = 1\n  print \"{mm} {mt} {ma} {q} {nd} {r} {bf} {wide}\"\n}\n",
             "  int32_t mm[4], mt[4], ma[9], q[6], nd[6], bf[2];\n  int64_t r, wide[6];\n"
             "  check(m, integer_ops_mm_mt_ma_q_nd_r_bf_wide(m, mm, mt, ma, q, nd, &r, bf, wide));\n"
             "  put(mm, sizeof mm);\n  put(mt, sizeof mt);\n  put(ma, sizeof ma);\n  put(q, sizeof q);\n"
             "  put(nd, sizeof nd);\n  put(&r, sizeof r);\n  put(bf, sizeof bf);\n  put(wide, sizeof wide);\n",
             integer_ops_interpret);
}

/* Within one run, pure nodes read variables before any update (eval.c's
 * phase 1): a reshape of `a` read by the second assign is a's value from
 * before the first assign changed it. */
static void assign_order_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[3] = {node(g, "s1"), node(g, "s2"), node(g, "b")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){NULL, NULL, "b before the run"}, 3, l);
  fl_value *bv = fl_eval_variable(ev, node(g, "b"));
  cr_assert_eq(bv->data[0], 1.0, "the interpreter's b after the run");
}

Test(codegen_vs_eval, reshape_of_variable_reads_before_updates) {
  small_case("assign_order",
             "a = variable(constant([1.0, 2.0, 3.0, 4.0]))\n"
             "b = variable(zeros([2, 2]))\n"
             "s1 = assign(a, constant([10.0, 20.0, 30.0, 40.0]))\n"
             "s2 = assign(b, reshape(a, [2, 2]))\n"
             "train {\n  steps = 1\n  run s1, s2, b\n}\n",
             "  float b[4];\n  check(m, assign_order_s1_s2(m, b));\n  put(b, sizeof b);\n",
             assign_order_interpret);
}

/* Simplification must not change what an update reads: w * 1.0 is w's value
 * from before this run's updates, not w itself (which s1 has changed by the
 * time s2 copies it). */
static void identity_fold_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[3] = {node(g, "s1"), node(g, "s2"), node(g, "v")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){NULL, NULL, "v before the run"}, 3, l);
  cr_assert_eq(fl_eval_variable(ev, node(g, "v"))->data[1], 2.0, "the interpreter's v after the run");
}

Test(codegen_vs_eval, multiply_by_one_reads_before_updates) {
  small_case("identity_fold",
             "w = variable(constant([1.0, 2.0]))\n"
             "v = variable(zeros([2]))\n"
             "s1 = assign(w, w + 1.0)\n"
             "s2 = assign(v, w * 1.0)\n"
             "train {\n  steps = 1\n  run s1, s2, v\n}\n",
             "  float v[2];\n  check(m, identity_fold_s1_s2(m, v));\n  put(v, sizeof v);\n",
             identity_fold_interpret);
}

/* The same in training: the gradient of a * b with respect to a is b (times
 * a fill of ones that simplification drops). Both updates must use the
 * values from before the step: a = 2 - 0.1 * 3, b = 3 - 0.1 * 2. */
static void scalar_product_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[2] = {node(g, "loss"), node(g, "train")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){"loss", NULL}, 2, l);
  cr_assert_float_eq(fl_eval_variable(ev, node(g, "b"))->data[0], 2.8, 1e-12, "the interpreter's b");
}

Test(codegen_vs_eval, scalar_product_training) {
  small_case("scalar_product",
             "a = variable(2.0)\n"
             "b = variable(3.0)\n"
             "loss = a * b\n"
             "train = gradient_descent(0.1).minimize(loss)\n"
             "train {\n  steps = 1\n  run train\n}\n",
             "  float loss;\n  check(m, scalar_product_train(m, &loss));\n  put(&loss, sizeof loss);\n",
             scalar_product_interpret);
}

/* Two training steps, the loss fetched by each: the second reads the
 * weights the first updated. */
static void two_steps_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[2] = {node(g, "loss"), node(g, "train")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){"loss", NULL}, 2, l);
  eval_run(ev, NULL, 0, fetches, (const char *const[]){"loss again", NULL}, 2, l);
}

/* A weight gradient that only gradient descent reads is computed into the
 * weight (a gemm_sgd group): x is a constant, so W's gradient, x^T (2 x W x),
 * is one GEMM that subtracts lr times itself from W; b's update stays in the
 * updates kernel. */
static const char weight_update_flow[] = "x = constant([[1.0, 2.0, 0.5], [3.0, -1.0, 2.0]])\n"
                                         "W = variable(random_normal([3, 4]))\n"
                                         "b = variable(random_normal([4]))\n"
                                         "y = matmul(x, W) + b\n"
                                         "loss = reduce_sum(y * y)\n"
                                         "train = gradient_descent(0.01).minimize(loss)\n"
                                         "train {\n  steps = 1\n  run train\n}\n";

Test(codegen_vs_eval, weight_gradient_updates_in_place) {
  fl_graph *g = compile_text(weight_update_flow);
  bool needed[256] = {false};
  const int target = node(g, "train");
  cr_assert(g->nnodes <= 256);
  fl_mark_needed(g, &target, 1, NULL, needed);
  fl_schedule *s = fl_schedule_run(g, needed, NULL, NULL, 0, true);
  int fused = 0;
  for (int i = 0; i < s->ngroups; i++) fused += s->groups[i].kind == FL_GROUP_GEMM_SGD;
  cr_assert_eq(fused, 1, "W's gradient and update should make one gemm_sgd group");
  fl_schedule_free(s);
  fl_graph_free(g);
  small_case("weight_update", weight_update_flow,
             "  float loss, again;\n  check(m, weight_update_train(m, &loss));\n"
             "  check(m, weight_update_train(m, &again));\n  put(&loss, sizeof loss);\n  put(&again, sizeof again);\n",
             two_steps_interpret);
}

/* The gradient of U in matmul(U, V) reads V, and V's reads U: both GEMMs
 * read variables that the step updates, so neither may run as part of the
 * other's update (each must see the values from before the step). */
Test(codegen_vs_eval, factorization_gradients_read_weights_before_updates) {
  small_case("factorization",
             "U = variable(random_normal([3, 2]))\n"
             "V = variable(random_normal([2, 4]))\n"
             "p = matmul(U, V)\n"
             "loss = reduce_sum(p * p)\n"
             "train = gradient_descent(0.05).minimize(loss)\n"
             "train {\n  steps = 1\n  run train\n}\n",
             "  float loss, again;\n  check(m, factorization_train(m, &loss));\n"
             "  check(m, factorization_train(m, &again));\n  put(&loss, sizeof loss);\n"
             "  put(&again, sizeof again);\n",
             two_steps_interpret);
}

/* Side effects run in node order (eval.c's phase 2): `reset` (written before
 * the optimizer was lowered) sets W, then the SGD step moves it by the
 * gradient at the old W: W = [5, 5] - 0.1 * [2, 4]. */
static void assign_then_update_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[3] = {node(g, "loss"), node(g, "reset"), node(g, "train")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){"loss", NULL, NULL}, 3, l);
  cr_assert_float_eq(fl_eval_variable(ev, node(g, "W"))->data[0], 4.8, 1e-12, "the interpreter's W");
}

Test(codegen_vs_eval, assign_and_update_in_one_run) {
  small_case("assign_then_update",
             "W = variable(constant([1.0, 2.0]))\n"
             "loss = reduce_sum(W * W)\n"
             "train = gradient_descent(0.1).minimize(loss)\n"
             "reset = assign(W, constant([5.0, 5.0]))\n"
             "train {\n  steps = 1\n  run reset, train\n}\n",
             "  float loss;\n  check(m, assign_then_update_reset_train(m, &loss));\n  put(&loss, sizeof loss);\n",
             assign_then_update_interpret);
}

/* Fusion: an elementwise tree with more than 16 inputs (a sum of 20
 * variables). */
static void wide_tree_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int total = node(g, "total");
  eval_run(ev, NULL, 0, &total, (const char *const[]){"total"}, 1, l);
}

Test(codegen_vs_eval, elementwise_tree_with_20_inputs) {
  buf text = {0};
  for (int i = 0; i < 20; i++) bprintf(&text, "a%d = variable(random_normal([2, 3]))\n", i);
  bprintf(&text, "total = a0");
  for (int i = 1; i < 20; i++) bprintf(&text, " + a%d", i);
  bprintf(&text, "\ntrain {\n  steps = 1\n  print \"{total}\"\n}\n");
  small_case("wide_tree", text.text,
             "  float total[6];\n  check(m, wide_tree_total(m, total));\n  put(total, sizeof total);\n",
             wide_tree_interpret);
  free(text.text);
}

/* Fusion: a deep tree whose C expression repeats its operand (relu writes it
 * twice, so 12 nested relus write x 4096 times). */
static void deep_tree_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int deep = node(g, "deep");
  eval_run(ev, NULL, 0, &deep, (const char *const[]){"deep"}, 1, l);
}

Test(codegen_vs_eval, deep_elementwise_tree) {
  buf text = {0};
  bprintf(&text, "a = variable(random_normal([2, 3]))\nb = variable(random_normal([2, 3]))\ndeep = ");
  for (int i = 0; i < 12; i++) bprintf(&text, "relu(");
  bprintf(&text, "a * 2.0 - b");
  for (int i = 0; i < 12; i++) bprintf(&text, ")");
  bprintf(&text, "\ntrain {\n  steps = 1\n  print \"{deep}\"\n}\n");
  small_case("deep_tree", text.text,
             "  float deep[6];\n  check(m, deep_tree_deep(m, deep));\n  put(deep, sizeof deep);\n",
             deep_tree_interpret);
  free(text.text);
}

/* Fusion: GEMM epilogues with transposed operands, the bias on either side,
 * with and without relu, and conv2d VALID stride 2; a [1, K] bias is not an
 * epilogue but plain broadcasting. */
static void epilogues_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  static const char *const names[] = {"e1", "e2", "e3", "e4", "e5"};
  int fetches[5];
  for (int i = 0; i < 5; i++) fetches[i] = node(g, names[i]);
  eval_run(ev, NULL, 0, fetches, names, 5, l);
}

Test(codegen_vs_eval, gemm_epilogues) {
  small_case("epilogues",
             "A = variable(random_normal([4, 3]))\n"
             "B = variable(random_normal([5, 4]))\n"
             "b5 = variable(random_normal([5]))\n"
             "b3 = variable(random_normal([3]))\n"
             "r = variable(random_normal([1, 5]))\n"
             "e1 = matmul(A, B, transpose_a=true, transpose_b=true) + b5\n"
             "e2 = relu(b3 + matmul(B, A))\n"
             "e3 = relu(matmul(A, B, transpose_a=true, transpose_b=true) + r)\n"
             "x = variable(random_normal([2, 7, 7, 3]))\n"
             "k = variable(random_normal([3, 3, 3, 5]))\n"
             "e4 = relu(conv2d(x, k, strides=[1, 2, 2, 1], padding=\"VALID\") + b5)\n"
             "e5 = conv2d(x, k, strides=[1, 1, 1, 1], padding=\"SAME\") + b5\n"
             "train {\n  steps = 1\n  print \"{e1} {e2} {e3} {e4} {e5}\"\n}\n",
             "  float e1[15], e2[15], e3[15], e4[2 * 3 * 3 * 5], e5[2 * 7 * 7 * 5];\n"
             "  check(m, epilogues_e1_e2_e3_e4_e5(m, e1, e2, e3, e4, e5));\n"
             "  put(e1, sizeof e1);\n  put(e2, sizeof e2);\n  put(e3, sizeof e3);\n  put(e4, sizeof e4);\n"
             "  put(e5, sizeof e5);\n",
             epilogues_interpret);
}

/* A variable that a run only writes (never reads) is still valid C under
 * -Wall -Werror. */
static void write_only_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[1] = {node(g, "reset")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){NULL}, 1, l);
}

Test(codegen_vs_eval, write_only_variable) {
  small_case("write_only",
             "b = variable(zeros([2]))\n"
             "reset = assign(b, constant([5.0, 6.0]))\n"
             "train {\n  steps = 1\n  run reset\n}\n",
             "  check(m, write_only_reset(m));\n",
             write_only_interpret);
}

/* A counter and its update; assign(v, v) and chained assigns in one run. */
static void assigns_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  int fetches[4] = {node(g, "inc"), node(g, "same"), node(g, "twice"), node(g, "product")};
  eval_run(ev, NULL, 0, fetches, (const char *const[]){NULL, NULL, NULL, "product"}, 4, l);
  eval_run(ev, NULL, 0, fetches, (const char *const[]){NULL, NULL, NULL, "product again"}, 4, l);
}

Test(codegen_vs_eval, assigns_and_counters) {
  small_case("assigns",
             "state = variable(0)\n"
             "inc = assign(state, state + 1)\n"
             "f = variable(constant([1.5, -2.0]))\n"
             "same = assign(f, f)\n"
             "twice = assign(f, f * 2.0)\n"
             "product = matmul(constant([[3.0, 3.0]]), constant([[2.0], [2.0]]))\n"
             "train {\n  steps = 1\n  run inc, same, twice, product\n}\n",
             "  float product;\n"
             "  check(m, assigns_inc_same_twice(m, &product));\n  put(&product, sizeof product);\n"
             "  check(m, assigns_inc_same_twice(m, &product));\n  put(&product, sizeof product);\n",
             assigns_interpret);
}

/* Feeds and symbols are parameters of the entry: their C names must not
 * clash with the model parameter `m` or with C keywords. */
static void feed_names_interpret(const fl_graph *g, fl_eval *ev, layout *l) {
  feed feeds[4] = {{node(g, "m"), scalar(2.0)},
                   {node(g, "double"), scalar(3.0)},
                   {node(g, "x"), batch_x(small_batch)},
                   {node(g, "y_"), batch_labels(small_batch)}};
  int fetches[2] = {node(g, "up"), node(g, "s")};
  eval_run(ev, feeds, 4, fetches, (const char *const[]){NULL, "s"}, 2, l);
  for (int i = 0; i < 4; i++) fl_value_free(&feeds[i].value);
}

Test(codegen_vs_eval, feed_names_that_are_c_names) {
  small_case("feed_names",
             "x = placeholder(f32, [m, 784])\n"
             "y_ = placeholder(f32, [m, 10])\n"
             "m = placeholder(f32)\n"
             "double = placeholder(f32)\n"
             "v = variable(zeros([2]))\n"
             "s = reduce_sum(x) + reduce_mean(y_)\n"
             "up = assign(v, v + m * double + s)\n"
             "train {\n  data = mnist(\"MNIST_data\")\n  steps = 1\n  run up, s with m = 2.0, double = 3.0\n}\n",
             "  float s;\n  check(m, feed_names_up(m, n, x, y_, 2.0f, 3.0f, &s));\n  put(&s, sizeof s);\n",
             feed_names_interpret);
}
