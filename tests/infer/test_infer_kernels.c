/* test_infer_kernels.c - inference code (fl_emit_infer), compiled and run, against the reference interpreter on the same graph.
 *
 * Each case is a small description whose entry exercises one family of
 * kernels: convolutions with SAME and VALID padding, strides and odd sizes,
 * the fused bias and relu epilogue (and the cases that must not fuse),
 * max-pooling, matmuls with transposes, softmax, elementwise ops,
 * reductions, argmax, constants, dropout at keep_prob 1, batches above 1.
 * The weights are the interpreter's initial values (fl_eval_new with seed 1),
 * rounded to float as a checkpoint would hold them; the inputs are a fixed
 * pattern. The generated file is compiled with cc -std=c99 -Wall -Wextra
 * -Werror beside a harness that prints the outputs, and they are held to
 * the interpreter's (double precision) values within
 * |generated - interpreted| <= 1e-5 + 1e-4 |interpreted| (integers exactly). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "codegen.h"
#include "frontend.h"
#include "ir.h"

#define ABS_TOL 1e-5
#define REL_TOL 1e-4

#include "../diag_capture.h"

TestSuite(infer_kernels, .init = capture_start, .fini = capture_stop);

static const char *env(const char *name) {
  const char *v = getenv(name);
  cr_assert(v && *v, "%s is not set: run the tests through meson test", name);
  return v;
}

/* Runs a shell command; stdout and stderr into *output (malloc'd). */
static int run(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **output, const char *fmt, ...) {
  char cmd[8192], full[8300];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  snprintf(full, sizeof full, "( %s ) 2>&1", cmd);
  FILE *p = popen(full, "r");
  cr_assert(p, "cannot run %s", cmd);
  size_t cap = 1 << 16, len = 0, got;
  char *buf = malloc(cap);
  while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += got;
    if (cap - len < 4096) buf = realloc(buf, cap *= 2);
  }
  buf[len] = '\0';
  int status = pclose(p);
  *output = buf;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* The input pattern: smooth, signed, different for every element and input. */
static float pattern(int input, int64_t i) { return (float)sin(0.37 * (double)i + 1.3 * input) * (1.0f + 0.1f * input); }

/* Compiles text, emits inference code for `entry` at `batch` with the fixed
 * scalars in `fixed` ("keep_prob=1", or NULL), runs it, and compares every
 * output element with the interpreter's. */
static void check(const char *name, const char *text, const char *entry_name, int64_t batch, const char *fixed_text) {
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g, "%s does not parse:\n%s", name, diag_text());
  cr_assert_eq(fl_finish(g), 0, "%s does not check:\n%s", name, diag_text());
  int entry = fl_graph_find(g, entry_name);
  cr_assert_geq(entry, 0, "no tensor %s", entry_name);
  fl_infer_fixed fixed[2];
  int nfixed = 0;
  if (fixed_text) {
    char fname[64];
    double v;
    cr_assert_eq(sscanf(fixed_text, "%63[^=]=%lf", fname, &v), 2);
    fixed[nfixed++] = (fl_infer_fixed){fl_graph_find(g, fname), v};
  }
  fl_infer_options opt = {.name = name, .source_path = "t.flow", .weights_path = "the interpreter",
                          .entry = entry, .batch = batch, .fixed = fixed, .nfixed = nfixed};
  fl_infer_plan plan;
  cr_assert_eq(fl_infer_plan_make(g, &opt, &plan), 0, "%s: no plan:\n%s", name, diag_text());

  fl_eval *ev = fl_eval_new(g, 1);
  void **values = calloc((size_t)plan.nvariables + 1, sizeof *values);
  for (int i = 0; i < plan.nvariables; i++) {
    fl_value *v = fl_eval_variable(ev, plan.variables[i]);
    int64_t count = fl_value_size(v);
    float *f = malloc(sizeof(float) * (size_t)(count > 0 ? count : 1));
    for (int64_t k = 0; k < count; k++) {
      f[k] = (float)v->data[k];
      v->data[k] = f[k]; /* the interpreter sees the weights the code bakes in */
    }
    values[i] = f;
  }

  char dir[4096];
  snprintf(dir, sizeof dir, "%s/infer-kernels-%s", env("FLOWC_BUILD_ROOT"), name);
  char *out;
  cr_assert_eq(run(&out, "rm -rf '%s' && mkdir -p '%s'", dir, dir), 0, "%s", out);
  free(out);
  cr_assert_eq(fl_emit_infer(g, &opt, &plan, (const void *const *)values, dir), 0, "%s: emit failed:\n%s", name,
               diag_text());

  /* The harness: inputs as literals, the outputs printed one per line. */
  char path[4300];
  snprintf(path, sizeof path, "%s/main.c", dir);
  FILE *f = fopen(path, "w");
  cr_assert(f);
  fprintf(f, "#include <stdio.h>\n#include \"%s.h\"\n\n", name);
  int feed_nodes[8];
  fl_value feed_values[8];
  int nfeeds = 0;
  for (int i = 0; i < plan.ninputs; i++) {
    const fl_node *in = &g->nodes[plan.inputs[i]];
    int64_t count = fl_shape_size_at(&in->shape, batch);
    fprintf(f, "static const float in%d[%lld] = {", i, (long long)count);
    fl_value *v = &feed_values[nfeeds];
    v->dtype = FL_F32;
    v->rank = in->shape.rank;
    for (int d = 0; d < in->shape.rank; d++) v->dims[d] = fl_dim_value(in->shape.dims[d], batch);
    v->data = malloc(sizeof(double) * (size_t)count);
    for (int64_t k = 0; k < count; k++) {
      float x = pattern(i, k);
      v->data[k] = x;
      fprintf(f, "%s%.9g", k ? ", " : "", (double)x);
    }
    fprintf(f, "};\n");
    feed_nodes[nfeeds++] = plan.inputs[i];
  }
  for (int i = 0; i < nfixed; i++) {
    fl_value *v = &feed_values[nfeeds];
    v->dtype = FL_F32;
    v->rank = 0;
    v->data = malloc(sizeof(double));
    v->data[0] = fixed[i].value;
    feed_nodes[nfeeds++] = fixed[i].node;
  }
  const fl_node *e = &g->nodes[entry];
  int64_t out_count = fl_shape_size_at(&e->shape, batch);
  const char *ctype = e->dtype == FL_F32 ? "float" : e->dtype == FL_I64 ? "int64_t" : e->dtype == FL_I32 ? "int32_t" : "bool";
  fprintf(f, "static %s result[%lld];\n\nint main(void) {\n  %s_infer(", ctype, (long long)out_count, name);
  for (int i = 0; i < plan.ninputs; i++) fprintf(f, "in%d, ", i);
  fprintf(f, "result);\n  for (int i = 0; i < %lld; i++)\n    printf(\"%%.9g\\n\", (double)result[i]);\n"
             "  return 0;\n}\n", (long long)out_count);
  fclose(f);
  int rc = run(&out, "cd '%s' && cc -std=c99 -O2 -Wall -Wextra -Werror -o harness main.c %s.c -lm && ./harness", dir,
               name);
  cr_assert_eq(rc, 0, "%s: the generated code does not compile or run:\n%s", name, out);

  fl_value expect;
  char err[512];
  cr_assert_eq(fl_eval_run(ev, feed_nodes, feed_values, nfeeds, &entry, 1, &expect, err, sizeof err), 0,
               "interpreter: %s", err);
  cr_assert_eq(fl_value_size(&expect), out_count);
  const char *p = out;
  for (int64_t k = 0; k < out_count; k++) {
    char *end;
    double got = strtod(p, &end);
    cr_assert(end != p, "%s: only %lld of %lld outputs:\n%s", name, (long long)k, (long long)out_count, out);
    p = end;
    double want = expect.data[k];
    bool ok = e->dtype == FL_F32 ? fabs(got - want) <= ABS_TOL + REL_TOL * fabs(want) : got == want;
    cr_assert(ok, "%s[%lld]: generated code %.9g, interpreter %.9g", name, (long long)k, got, want);
  }
  free(out);
  fl_value_free(&expect);
  for (int i = 0; i < nfeeds; i++) free(feed_values[i].data);
  for (int i = 0; i < plan.nvariables; i++) free(values[i]);
  free(values);
  fl_eval_free(ev);
  fl_infer_plan_free(&plan);
  fl_graph_free(g);
}

/* A loss to minimise, so that fl_finish's autodiff runs as in real models. */
#define TRAIN(loss) "l = reduce_mean(" loss ")\nts = gradient_descent(0.1).minimize(l)\n"

Test(infer_kernels, conv_same_with_fused_bias_and_relu_then_pool_same) {
  check("conv_same",
        "x = placeholder(f32, [N, 7, 9, 3])\n"
        "W = variable(truncated_normal([5, 5, 3, 4], stddev=0.3))\nb = variable(random_uniform([4], -0.5, 0.5))\n"
        "h = relu(conv2d(x, W, strides=[1, 1, 1, 1], padding=\"SAME\") + b)\n"
        "out = max_pool(h, ksize=[1, 3, 3, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n" TRAIN("out"),
        "out", 2, NULL);
}

Test(infer_kernels, conv_valid_strided_bias_without_relu) {
  check("conv_valid",
        "x = placeholder(f32, [N, 8, 7, 2])\n"
        "W = variable(truncated_normal([3, 2, 2, 5], stddev=0.3))\nb = variable(random_uniform([5], -0.5, 0.5))\n"
        "out = conv2d(x, W, strides=[1, 2, 3, 1], padding=\"VALID\") + b\n" TRAIN("out"),
        "out", 3, NULL);
}

/* More output channels than stay in local sums (64): they sum in the output,
 * with and without an epilogue; an odd output width leaves the last pixel of
 * each row without a pair, and SAME padding at stride 2 leaves a pair's first
 * pixel in the padding. */
Test(infer_kernels, conv_wide_output_sums_in_place_with_unpaired_pixels) {
  check("conv_wide",
        "x = placeholder(f32, [N, 5, 9, 3])\n"
        "W = variable(truncated_normal([3, 4, 3, 70], stddev=0.3))\nb = variable(random_uniform([70], -0.5, 0.5))\n"
        "V = variable(truncated_normal([3, 4, 3, 70], stddev=0.3))\n"
        "out = relu(conv2d(x, W, strides=[1, 2, 2, 1], padding=\"SAME\") + b)"
        " + conv2d(x, V, strides=[1, 2, 2, 1], padding=\"SAME\")\n" TRAIN("out"),
        "out", 2, NULL);
}

Test(infer_kernels, conv_read_twice_is_not_fused_and_pool_valid) {
  check("conv_twice",
        "x = placeholder(f32, [N, 6, 6, 1])\n"
        "W = variable(truncated_normal([3, 3, 1, 2], stddev=0.5))\nb = variable(random_uniform([2], -0.5, 0.5))\n"
        "c = conv2d(x, W, strides=[1, 1, 1, 1], padding=\"SAME\")\n"
        "h = relu(c + b) * c\n"
        "out = max_pool(h, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"VALID\")\n" TRAIN("out"),
        "out", 1, NULL);
}

Test(infer_kernels, matmuls_with_transposes_bias_and_relu) {
  check("matmuls",
        "x = placeholder(f32, [N, 6])\n"
        "W1 = variable(truncated_normal([6, 4], stddev=0.5))\nb1 = variable(random_uniform([4], -0.5, 0.5))\n"
        "W2 = variable(truncated_normal([3, 4], stddev=0.5))\n"
        "h = relu(matmul(x, W1) + b1)\n"
        "g = matmul(x, x, transpose_a=true)\n"
        "out = matmul(h, W2, transpose_b=true) + reduce_sum(g)\n" TRAIN("out"),
        "out", 3, NULL);
}

Test(infer_kernels, softmax_of_logits) {
  check("softmax",
        "x = placeholder(f32, [N, 5])\n"
        "W = variable(truncated_normal([5, 7], stddev=1.0))\nb = variable(random_uniform([7], -1.0, 1.0))\n"
        "out = softmax(matmul(x, W) + b)\n" TRAIN("out"),
        "out", 2, NULL);
}

Test(infer_kernels, elementwise_reductions_and_constants) {
  check("elementwise",
        "x = placeholder(f32, [N, 3, 4])\n"
        "s = variable(random_uniform([4], 0.5, 1.5))\n"
        "k = constant([[1.0, -2.0, 0.5, 3.0]])\n"
        "y = sigmoid(x) * tanh(x * s) + exp(x * 0.5) - sqrt(square(x) + 1.0) + log(square(x) + 2.0) / k\n"
        "out = reduce_mean(y, axis=1) + reduce_sum(-y)\n" TRAIN("out"),
        "out", 2, NULL);
}

Test(infer_kernels, argmax_gives_integers) {
  check("argmax",
        "x = placeholder(f32, [N, 5])\n"
        "W = variable(truncated_normal([5, 6], stddev=1.0))\n"
        "y = matmul(x, W)\nout = argmax(y, 1)\n" TRAIN("y"),
        "out", 4, NULL);
}

Test(infer_kernels, dropout_at_keep_prob_1_is_the_identity) {
  check("dropout",
        "x = placeholder(f32, [N, 8])\nkeep_prob = placeholder(f32)\n"
        "W = variable(truncated_normal([8, 3], stddev=0.5))\nb = variable(random_uniform([3], -0.5, 0.5))\n"
        "out = matmul(dropout(relu(x), keep_prob), W) + b\n"
        TRAIN("out"),
        "out", 2, "keep_prob=1.0");
}

Test(infer_kernels, a_weight_as_the_entry_is_copied_out) {
  check("weight_entry",
        "x = placeholder(f32, [N, 2])\nW = variable(random_uniform([2, 3], -1.0, 1.0))\n"
        "y = matmul(x, W)\nout = reshape(W, [6])\n" TRAIN("y"),
        "out", 1, NULL);
}

Test(infer_kernels, the_arena_reuses_dead_tensors) {
  const char *text = "x = placeholder(f32, [N, 100])\n"
                     "a = relu(x)\nb = relu(a)\nc = relu(b)\nd = relu(c)\nout = relu(d)\n";
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g && fl_finish(g) == 0, "%s", diag_text());
  fl_infer_options opt = {.name = "chain", .entry = fl_graph_find(g, "out"), .batch = 1};
  fl_infer_plan plan;
  cr_assert_eq(fl_infer_plan_make(g, &opt, &plan), 0, "%s", diag_text());
  /* Four intermediates of 400 bytes in a chain: two slices suffice (the output
   * goes straight to the caller's buffer). */
  cr_assert_eq(plan.arena_bytes, 2 * 400, "arena of %zu bytes", plan.arena_bytes);
  cr_assert_eq(plan.ninputs, 1);
  fl_infer_plan_free(&plan);
  fl_graph_free(g);
}

Test(infer_kernels, unsupported_and_unfixed_nodes_are_refused) {
  const char *text = "x = placeholder(f32, [N, 4])\nscale = placeholder(f32)\n"
                     "W = variable(zeros([4, 2]))\nout = matmul(x, W) * scale\n" TRAIN("out");
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g && fl_finish(g) == 0, "%s", diag_text());
  fl_infer_options opt = {.name = "refused", .entry = fl_graph_find(g, "out"), .batch = 1};
  fl_infer_plan plan;
  cr_assert_eq(fl_infer_plan_make(g, &opt, &plan), -1);
  cr_assert(strstr(diag_text(), "placeholder 'scale' is a scalar") && strstr(diag_text(), "--feed scale="), "%s",
            diag_text());
  fl_infer_plan_free(&plan);
  /* Fixed, it is a constant of the code. */
  fl_infer_fixed fixed = {fl_graph_find(g, "scale"), 2.0};
  opt.fixed = &fixed;
  opt.nfixed = 1;
  cr_assert_eq(fl_infer_plan_make(g, &opt, &plan), 0, "%s", diag_text());
  cr_assert_eq(plan.ninputs, 1);
  cr_assert_eq(plan.nvariables, 1);
  fl_infer_plan_free(&plan);
  fl_graph_free(g);
}
