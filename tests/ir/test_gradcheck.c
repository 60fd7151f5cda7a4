/* test_gradcheck.c - fl_gradients against central finite differences, in the double-precision interpreter. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend.h"
#include "ir.h"

/* ---- method --------------------------------------------------------------------
 * Each case is a .flow graph whose parameters are trainable variables drawn
 * from random initialisers, and whose loss is reduce_sum(op(...) * R) with R a
 * fixed random variable (trainable=false), so that every output element
 * matters with its own weight. fl_gradients adds the backward graph; the
 * interpreter evaluates it, and each parameter element (all of them, or 30
 * sampled ones for bigger tensors) is moved by +-H to get
 * (L(x+h) - L(x-h)) / 2h.
 *
 * Tolerance: |analytic - numeric| <= 1e-6 + 1e-5 * |numeric|. The interpreter
 * computes in double (initial values are float draws widened exactly), so the
 * central difference with h = 1e-5 is off by O(h^2 * L''') ~ 1e-10 plus a
 * rounding error of O(1e-16 * |L| / h) ~ 1e-10: the tolerance leaves four
 * orders of magnitude for those, and a wrong rule misses it by far more. */
#define H 1e-5
#define ABS_TOL 1e-6
#define REL_TOL 1e-5
#define MAX_CHECKED 30

#include "../diag_capture.h"

TestSuite(gradcheck, .init = capture_start, .fini = capture_stop);

/* printf into a fresh string (the caller frees it). */
static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int need = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = malloc((size_t)need + 1);
  cr_assert(s);
  va_start(ap, fmt);
  vsnprintf(s, (size_t)need + 1, fmt, ap);
  va_end(ap);
  return s;
}

static fl_graph *compile_ok(const char *text) {
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g, "does not parse:\n%s\n--- diagnostics:\n%s", text, diag_text());
  cr_assert_eq(fl_finish(g), 0, "fl_finish fails:\n%s\n--- diagnostics:\n%s", text, diag_text());
  return g;
}

static int node(const fl_graph *g, const char *name) {
  int id = fl_graph_find(g, name);
  cr_assert_geq(id, 0, "no node named '%s'", name);
  return id;
}

/* A deterministic pseudo-random double in [0, 1). */
static double lcg(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*state >> 11) * 0x1p-53;
}

/* One fed value. */
typedef struct {
  int node;
  fl_value value;
} feed;

static int run(fl_eval *ev, const feed *feeds, int nfeeds, const int *fetches, int nfetches,
               fl_value *out) {
  int nodes[8];
  fl_value values[8];
  cr_assert_leq(nfeeds, 8);
  for (int i = 0; i < nfeeds; i++) {
    nodes[i] = feeds[i].node;
    values[i] = feeds[i].value;
  }
  char err[512];
  int rc = fl_eval_run(ev, nodes, values, nfeeds, fetches, nfetches, out, err, sizeof err);
  cr_assert_eq(rc, 0, "fl_eval_run: %s", err);
  return rc;
}

static double run_scalar(fl_eval *ev, const feed *feeds, int nfeeds, int node_id) {
  fl_value v = {0};
  run(ev, feeds, nfeeds, &node_id, 1, &v);
  cr_assert_eq(fl_value_size(&v), 1, "node %d is not a scalar", node_id);
  double x = v.data[0];
  fl_value_free(&v);
  return x;
}

/* The trainable f32 variables a run of `loss` reads, in id order. */
static int trainable_variables(const fl_graph *g, int loss, int *vars, int cap) {
  bool *needed = calloc((size_t)g->nnodes, sizeof(bool));
  cr_assert(needed);
  fl_mark_needed(g, &loss, 1, NULL, needed);
  int n = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (needed[i] && g->nodes[i].op == FL_OP_VARIABLE && g->nodes[i].attr.trainable &&
        g->nodes[i].dtype == FL_F32) {
      cr_assert_lt(n, cap);
      vars[n++] = i;
    }
  free(needed);
  return n;
}

static const char *label(const fl_graph *g, int id) {
  static char buf[4][64];
  static int next;
  char *b = buf[next++ & 3];
  if (g->nodes[id].name) snprintf(b, 64, "%s", g->nodes[id].name);
  else snprintf(b, 64, "%%%d", id);
  return b;
}

/* Compares one analytic gradient with central differences on up to
 * MAX_CHECKED elements of the variable. Returns the largest |analytic|. */
static double check_variable(const fl_graph *g, fl_eval *ev, int loss, int var,
                             const fl_value *analytic, const feed *feeds, int nfeeds,
                             const char *what) {
  fl_value *stored = fl_eval_variable(ev, var);
  cr_assert(stored, "%s: %s is not an initialised variable", what, label(g, var));
  int64_t size = fl_value_size(stored);
  cr_assert_eq(fl_value_size(analytic), size, "%s: the gradient of %s has %lld elements, the variable %lld",
               what, label(g, var), (long long)fl_value_size(analytic), (long long)size);
  cr_assert_eq(analytic->rank, stored->rank, "%s: gradient of %s has another rank", what, label(g, var));
  for (int k = 0; k < stored->rank; k++)
    cr_assert_eq(analytic->dims[k], stored->dims[k], "%s: gradient of %s differs in dim %d", what,
                 label(g, var), k);
  /* Which elements: all, or MAX_CHECKED distinct ones at random. */
  int64_t picks[MAX_CHECKED];
  int npicks = 0;
  uint64_t state = 0x9e3779b97f4a7c15ull ^ (uint64_t)var;
  if (size <= MAX_CHECKED) {
    for (int64_t i = 0; i < size; i++) picks[npicks++] = i;
  } else {
    while (npicks < MAX_CHECKED) {
      int64_t i = (int64_t)(lcg(&state) * (double)size);
      bool seen = false;
      for (int j = 0; j < npicks; j++) seen |= picks[j] == i;
      if (!seen) picks[npicks++] = i;
    }
  }
  double largest = 0.0;
  for (int p = 0; p < npicks; p++) {
    int64_t i = picks[p];
    stored = fl_eval_variable(ev, var); /* runs may grow the interpreter's tables */
    double x0 = stored->data[i];
    stored->data[i] = x0 + H;
    double plus = run_scalar(ev, feeds, nfeeds, loss);
    stored = fl_eval_variable(ev, var);
    stored->data[i] = x0 - H;
    double minus = run_scalar(ev, feeds, nfeeds, loss);
    stored = fl_eval_variable(ev, var);
    stored->data[i] = x0;
    double numeric = (plus - minus) / (2 * H);
    double a = analytic->data[i];
    cr_expect(fabs(a - numeric) <= ABS_TOL + REL_TOL * fabs(numeric),
              "%s: d loss / d %s[%lld]: analytic %.10g, numeric %.10g (difference %.3g)", what,
              label(g, var), (long long)i, a, numeric, fabs(a - numeric));
    if (fabs(a) > largest) largest = fabs(a);
  }
  return largest;
}

/* The whole check on a finished graph: gradients of `loss` with respect to
 * every trainable variable it reads. */
static void gradcheck_graph(fl_graph *g, int loss, const feed *feeds, int nfeeds, const char *what) {
  int vars[32], grads[32];
  int n = trainable_variables(g, loss, vars, 32);
  cr_assert_gt(n, 0, "%s: the loss reads no trainable variable", what);
  cr_assert_eq(fl_gradients(g, loss, vars, n, grads), 0, "%s: fl_gradients fails:\n%s", what, diag_text());
  for (int i = 0; i < n; i++) {
    cr_assert_geq(grads[i], 0, "%s: no gradient for %s", what, label(g, vars[i]));
    const fl_node *gn = &g->nodes[grads[i]], *vn = &g->nodes[vars[i]];
    char gs[160], vs[160];
    cr_assert(fl_shape_eq(&gn->shape, &vn->shape), "%s: the gradient of %s has shape %s, the variable %s",
              what, label(g, vars[i]), fl_shape_str(g, &gn->shape, gs, sizeof gs),
              fl_shape_str(g, &vn->shape, vs, sizeof vs));
    cr_assert_eq(gn->dtype, FL_F32, "%s: the gradient of %s is not f32", what, label(g, vars[i]));
  }
  fl_eval *ev = fl_eval_new(g, 7);
  cr_assert(ev, "%s: fl_eval_new fails:\n%s", what, diag_text());
  fl_value analytic[32];
  memset(analytic, 0, sizeof analytic);
  run(ev, feeds, nfeeds, grads, n, analytic);
  for (int i = 0; i < n; i++) {
    double largest = check_variable(g, ev, loss, vars[i], &analytic[i], feeds, nfeeds, what);
    /* A vacuous check proves nothing: the loss must really depend on it. */
    cr_expect_gt(largest, 1e-6, "%s: every checked gradient of %s is 0", what, label(g, vars[i]));
    fl_value_free(&analytic[i]);
  }
  fl_eval_free(ev);
}

/* Compiles text and checks d(loss)/d(every trainable variable). */
static void gradcheck_text(const char *text, const char *what) {
  fl_graph *g = compile_ok(text);
  gradcheck_graph(g, node(g, "loss"), NULL, 0, what);
  fl_graph_free(g);
}

/* ---- elementwise binary ops, broadcasting both ways ------------------------------------- */

/* loss sums OP over: equal shapes, [3,4] with [4] and back, [3,1] with [1,4],
 * a scalar variable each way, and a variable with itself. */
static void binary_case(const char *op, const char *init) {
  char *text = format("a = variable(%s([3, 4]%s))\n"
                      "b = variable(%s([4]%s))\n"
                      "c = variable(%s([3, 1]%s))\n"
                      "d = variable(%s([1, 4]%s))\n"
                      "e = variable(%s([3, 4]%s))\n"
                      "s = variable(0.75)\n"
                      "R1 = variable(random_normal([3, 4]), trainable=false)\n"
                      "R2 = variable(random_normal([3, 4]), trainable=false)\n"
                      "R3 = variable(random_normal([3, 4]), trainable=false)\n"
                      "loss = reduce_sum(%s(a, e) * R1) + reduce_sum(%s(a, b) * R2)"
                      " + reduce_sum(%s(b, a) * R3) + reduce_sum(%s(c, d) * R1)"
                      " + reduce_sum(%s(d, c) * R2) + reduce_sum(%s(a, s) * R3)"
                      " + reduce_sum(%s(s, e) * R1) + reduce_sum(%s(e, e) * R2)\n",
                      init, !strcmp(init, "random_uniform") ? ", 0.5, 1.5" : "", init,
                      !strcmp(init, "random_uniform") ? ", 0.5, 1.5" : "", init,
                      !strcmp(init, "random_uniform") ? ", 0.5, 1.5" : "", init,
                      !strcmp(init, "random_uniform") ? ", 0.5, 1.5" : "", init,
                      !strcmp(init, "random_uniform") ? ", 0.5, 1.5" : "", op, op, op, op, op, op, op,
                      op);
  gradcheck_text(text, op);
  free(text);
}

Test(gradcheck, add) { binary_case("add", "random_normal"); }
Test(gradcheck, sub) { binary_case("subtract", "random_normal"); }
Test(gradcheck, mul) { binary_case("multiply", "random_normal"); }
/* divisors in [0.5, 1.5): far from 0 */
Test(gradcheck, div) { binary_case("divide", "random_uniform"); }

Test(gradcheck, operators_and_accumulation) {
  /* one variable reached along several paths: contributions must add up */
  gradcheck_text("x = variable(random_normal([2, 3]))\n"
                 "y = variable(random_uniform([3], 0.5, 1.5))\n"
                 "R = variable(random_normal([2, 3]), trainable=false)\n"
                 "h = x * x + x / y - y * 2.0 + (-x)\n"
                 "loss = reduce_sum(h * R) + reduce_sum(h * h * R) + reduce_sum(y * y)\n",
                 "accumulation");
}

/* ---- unary ops ---------------------------------------------------------------------------- */

static void unary_case(const char *op, const char *init) {
  char *text = format("x = variable(%s)\n"
                      "R = variable(random_normal([3, 5]), trainable=false)\n"
                      "loss = reduce_sum(%s(x) * R)\n",
                      init, op);
  gradcheck_text(text, op);
  free(text);
}

Test(gradcheck, neg) { unary_case("neg", "random_normal([3, 5])"); }
Test(gradcheck, square) { unary_case("square", "random_normal([3, 5])"); }
Test(gradcheck, sqrt) { unary_case("sqrt", "random_uniform([3, 5], 0.5, 2.0)"); }
Test(gradcheck, log) { unary_case("log", "random_uniform([3, 5], 0.5, 2.0)"); }
Test(gradcheck, exp) { unary_case("exp", "random_normal([3, 5])"); }
Test(gradcheck, sigmoid) { unary_case("sigmoid", "random_normal([3, 5], stddev=2.0)"); }
Test(gradcheck, tanh) { unary_case("tanh", "random_normal([3, 5])"); }

Test(gradcheck, relu) {
  /* relu is not differentiable at 0: the draws must keep away from it. */
  const char *text = "x = variable(random_normal([3, 5]))\n"
                     "R = variable(random_normal([3, 5]), trainable=false)\n"
                     "loss = reduce_sum(relu(x) * R)\n";
  fl_graph *g = compile_ok(text);
  fl_eval *ev = fl_eval_new(g, 7);
  fl_value *x = fl_eval_variable(ev, node(g, "x"));
  int negative = 0, positive = 0;
  for (int64_t i = 0; i < fl_value_size(x); i++) {
    cr_assert_gt(fabs(x->data[i]), 10 * H, "x[%lld] = %g is too close to relu's kink", (long long)i,
                 x->data[i]);
    negative += x->data[i] < 0;
    positive += x->data[i] > 0;
  }
  cr_assert(negative > 0 && positive > 0, "both sides of the kink should be checked");
  fl_eval_free(ev);
  gradcheck_graph(g, node(g, "loss"), NULL, 0, "relu");
  fl_graph_free(g);
}

/* ---- matmul ---------------------------------------------------------------------------- */

static void matmul_case(bool ta, bool tb) {
  char *text = format("A = variable(random_normal(%s))\n"
                      "B = variable(random_normal(%s))\n"
                      "R = variable(random_normal([3, 5]), trainable=false)\n"
                      "loss = reduce_sum(matmul(A, B, transpose_a=%s, transpose_b=%s) * R)\n",
                      ta ? "[4, 3]" : "[3, 4]", tb ? "[5, 4]" : "[4, 5]", ta ? "true" : "false",
                      tb ? "true" : "false");
  gradcheck_text(text, ta ? (tb ? "matmul^T^T" : "matmul^T") : (tb ? "matmul_^T" : "matmul"));
  free(text);
}

Test(gradcheck, matmul) { matmul_case(false, false); }
Test(gradcheck, matmul_transpose_a) { matmul_case(true, false); }
Test(gradcheck, matmul_transpose_b) { matmul_case(false, true); }
Test(gradcheck, matmul_transpose_both) { matmul_case(true, true); }

Test(gradcheck, matmul_shared_operand) {
  /* x^T x and x x^T: both operands are the same variable */
  gradcheck_text("x = variable(random_normal([3, 4]))\n"
                 "R = variable(random_normal([4, 4]), trainable=false)\n"
                 "S = variable(random_normal([3, 3]), trainable=false)\n"
                 "loss = reduce_sum(matmul(x, x, transpose_a=true) * R) + "
                 "reduce_sum(matmul(x, x, transpose_b=true) * S)\n",
                 "matmul shared");
}

/* ---- shape ops and reductions --------------------------------------------------------------- */

Test(gradcheck, reshape) {
  gradcheck_text("x = variable(random_normal([2, 3, 4]))\n"
                 "R = variable(random_normal([4, 6]), trainable=false)\n"
                 "S = variable(random_normal([24]), trainable=false)\n"
                 "T = variable(random_normal([6, 2, 2]), trainable=false)\n"
                 "loss = reduce_sum(reshape(x, [4, -1]) * R) + reduce_sum(reshape(x, [-1]) * S)"
                 " + reduce_sum(reshape(square(x), [6, 2, 2]) * T)\n",
                 "reshape");
}

Test(gradcheck, reduce_sum) {
  gradcheck_text("x = variable(random_normal([3, 4]))\n"
                 "s = variable(0.6, trainable=false)\n"
                 "R0 = variable(random_normal([4]), trainable=false)\n"
                 "R1 = variable(random_normal([3]), trainable=false)\n"
                 "K1 = variable(random_normal([3, 1]), trainable=false)\n"
                 "K0 = variable(random_normal([1, 4]), trainable=false)\n"
                 "KA = variable(random_normal([1, 1]), trainable=false)\n"
                 "loss = reduce_sum(square(x)) * s + reduce_sum(reduce_sum(x, 0) * R0)"
                 " + reduce_sum(reduce_sum(x, axis=1) * R1)"
                 " + reduce_sum(reduce_sum(x, axis=-1, keepdims=true) * K1)"
                 " + reduce_sum(reduce_sum(x, axis=0, keepdims=true) * K0)"
                 " + reduce_sum(reduce_sum(x, keepdims=true) * KA)"
                 " + reduce_sum(x, axis=[0, 1]) * s\n",
                 "reduce_sum");
}

Test(gradcheck, reduce_mean) {
  gradcheck_text("x = variable(random_normal([3, 4]))\n"
                 "s = variable(0.6, trainable=false)\n"
                 "R0 = variable(random_normal([4]), trainable=false)\n"
                 "R1 = variable(random_normal([3]), trainable=false)\n"
                 "K1 = variable(random_normal([3, 1]), trainable=false)\n"
                 "K0 = variable(random_normal([1, 4]), trainable=false)\n"
                 "KA = variable(random_normal([1, 1]), trainable=false)\n"
                 "loss = reduce_mean(square(x)) * s + reduce_sum(reduce_mean(x, 0) * R0)"
                 " + reduce_sum(reduce_mean(x, axis=1) * R1)"
                 " + reduce_sum(reduce_mean(x, axis=-1, keepdims=true) * K1)"
                 " + reduce_sum(reduce_mean(x, axis=0, keepdims=true) * K0)"
                 " + reduce_sum(reduce_mean(x, keepdims=true) * KA)"
                 " + reduce_mean(x, axis=[0, 1]) * s\n",
                 "reduce_mean");
}

Test(gradcheck, reductions_rank3) {
  gradcheck_text("x = variable(random_normal([2, 3, 4]))\n"
                 "A = variable(random_normal([3]), trainable=false)\n"
                 "B = variable(random_normal([2, 3, 1]), trainable=false)\n"
                 "C = variable(random_normal([1, 3, 1]), trainable=false)\n"
                 "D = variable(random_normal([2, 4]), trainable=false)\n"
                 "loss = reduce_sum(reduce_sum(x, axis=[0, 2]) * A)"
                 " + reduce_sum(reduce_mean(x, axis=[-1], keepdims=true) * B)"
                 " + reduce_sum(reduce_mean(square(x), axis=[2, 0], keepdims=true) * C)"
                 " + reduce_sum(reduce_mean(x, axis=1) * D)\n",
                 "reductions rank 3");
}

/* ---- softmax and cross entropy --------------------------------------------------------------- */

Test(gradcheck, softmax) {
  gradcheck_text("x = variable(random_normal([3, 5]))\n"
                 "y = variable(random_normal([2, 3, 4]))\n"
                 "R = variable(random_normal([3, 5]), trainable=false)\n"
                 "S = variable(random_normal([2, 3, 4]), trainable=false)\n"
                 "loss = reduce_sum(softmax(x) * R) + reduce_sum(softmax(y) * S)\n",
                 "softmax");
}

/* TensorFlow's rule, softmax(z) - labels, is the gradient when each row of
 * labels sums to 1: the labels here are distributions. */
Test(gradcheck, softmax_cross_entropy_with_logits) {
  gradcheck_text("labels = variable(constant([[0.1, 0.2, 0.3, 0.4, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0],"
                 " [0.25, 0.25, 0.25, 0.125, 0.125]]), trainable=false)\n"
                 "z = variable(random_normal([3, 5], stddev=2.0))\n"
                 "R = variable(random_normal([3]), trainable=false)\n"
                 "loss = reduce_sum(softmax_cross_entropy_with_logits(labels=labels, logits=z) * R)\n",
                 "xent");
  gradcheck_text("labels = variable(constant([[[0.5, 0.5], [1.0, 0.0]], [[0.0, 1.0], [0.3, 0.7]]]),"
                 " trainable=false)\n"
                 "z = variable(random_normal([2, 2, 2]))\n"
                 "R = variable(random_normal([2, 2]), trainable=false)\n"
                 "loss = reduce_sum(softmax_cross_entropy_with_logits(labels, z) * R)\n",
                 "xent rank 3");
}

/* ---- convolution and pooling ------------------------------------------------------------------ */

static void conv_case(const char *x_shape, const char *w_shape, int stride, const char *padding,
                      const char *out_shape) {
  char *text = format("x = variable(random_normal(%s))\n"
                      "w = variable(random_normal(%s))\n"
                      "R = variable(random_normal(%s), trainable=false)\n"
                      "loss = reduce_sum(conv2d(x, w, strides=[1, %d, %d, 1], padding=\"%s\") * R)\n",
                      x_shape, w_shape, out_shape, stride, stride, padding);
  char *what = format("conv2d %s * %s stride %d %s", x_shape, w_shape, stride, padding);
  gradcheck_text(text, what);
  free(text);
  free(what);
}

Test(gradcheck, conv2d_same_stride1) { conv_case("[2, 5, 5, 3]", "[3, 3, 3, 4]", 1, "SAME", "[2, 5, 5, 4]"); }
Test(gradcheck, conv2d_same_stride2) { conv_case("[2, 5, 5, 3]", "[3, 3, 3, 4]", 2, "SAME", "[2, 3, 3, 4]"); }
Test(gradcheck, conv2d_valid_stride1) { conv_case("[2, 5, 5, 3]", "[3, 3, 3, 4]", 1, "VALID", "[2, 3, 3, 4]"); }
Test(gradcheck, conv2d_valid_stride2) { conv_case("[2, 5, 5, 3]", "[3, 3, 3, 4]", 2, "VALID", "[2, 2, 2, 4]"); }
/* uneven padding: SAME pads 0 before and 1 after (6 with 3x3, stride 2), and
 * 1 before and 2 after (5 with 4x4, stride 1) */
Test(gradcheck, conv2d_same_uneven) {
  conv_case("[2, 6, 6, 2]", "[3, 3, 2, 3]", 2, "SAME", "[2, 3, 3, 3]");
  conv_case("[1, 5, 5, 2]", "[4, 4, 2, 3]", 1, "SAME", "[1, 5, 5, 3]");
}
Test(gradcheck, conv2d_rectangular) {
  char *text = format("x = variable(random_normal([2, 6, 5, 2]))\n"
                      "w = variable(random_normal([3, 2, 2, 3]))\n"
                      "R = variable(random_normal([2, 3, 2, 3]), trainable=false)\n"
                      "loss = reduce_sum(conv2d(x, w, strides=[1, 2, 3, 1], padding=\"SAME\") * R)\n");
  gradcheck_text(text, "conv2d strides 2, 3");
  free(text);
}

/* Pooling input: a shuffled list of distinct values 0.01 apart, so no window
 * has a tie and no +-h step changes a window's maximum. */
static char *distinct_values(int count, uint64_t seed) {
  int *order = malloc((size_t)count * sizeof *order);
  for (int i = 0; i < count; i++) order[i] = i;
  for (int i = count - 1; i > 0; i--) {
    int j = (int)(lcg(&seed) * (i + 1));
    int t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  size_t cap = (size_t)count * 16 + 16, used = 0;
  char *text = malloc(cap);
  used += (size_t)snprintf(text, cap, "[");
  for (int i = 0; i < count; i++)
    used += (size_t)snprintf(text + used, cap - used, "%s%.2f", i ? ", " : "", order[i] * 0.01 - 0.5);
  snprintf(text + used, cap - used, "]");
  free(order);
  return text;
}

static void pool_case(int k, int stride, const char *padding, const char *out_shape) {
  char *values = distinct_values(2 * 5 * 5 * 2, (uint64_t)(k * 10 + stride));
  char *text = format("x = variable(constant(%s, shape=[2, 5, 5, 2]))\n"
                      "R = variable(random_normal(%s), trainable=false)\n"
                      "loss = reduce_sum(max_pool(x, ksize=[1, %d, %d, 1], strides=[1, %d, %d, 1],"
                      " padding=\"%s\") * R)\n",
                      values, out_shape, k, k, stride, stride, padding);
  char *what = format("max_pool %dx%d stride %d %s", k, k, stride, padding);
  fl_graph *g = compile_ok(text);
  gradcheck_graph(g, node(g, "loss"), NULL, 0, what);
  fl_graph_free(g);
  free(values);
  free(text);
  free(what);
}

Test(gradcheck, max_pool_2x2_s2_same) { pool_case(2, 2, "SAME", "[2, 3, 3, 2]"); }
Test(gradcheck, max_pool_2x2_s2_valid) { pool_case(2, 2, "VALID", "[2, 2, 2, 2]"); }
Test(gradcheck, max_pool_3x3_s1_same) { pool_case(3, 1, "SAME", "[2, 5, 5, 2]"); }
Test(gradcheck, max_pool_3x3_s1_valid) { pool_case(3, 1, "VALID", "[2, 3, 3, 2]"); }

/* ---- dropout with a fixed mask ---------------------------------------------------------------- */

Test(gradcheck, dropout_fixed_mask) {
  fl_graph *g = compile_ok("x = variable(random_normal([4, 6]))\n"
                           "keep_prob = placeholder(f32)\n"
                           "d = dropout(x, keep_prob)\n"
                           "R = variable(random_normal([4, 6]), trainable=false)\n"
                           "loss = reduce_sum(square(d) * R) + reduce_sum(d)\n");
  int d = node(g, "d");
  cr_assert_eq(g->nodes[d].op, FL_OP_MUL);
  int mask = g->nodes[d].inputs[1];
  cr_assert_eq(g->nodes[mask].op, FL_OP_DROPOUT_MASK);
  /* Draw a mask once (keep_prob 0.5), then feed it to every later run. */
  fl_eval *ev = fl_eval_new(g, 7);
  feed kp = {node(g, "keep_prob"), {.dtype = FL_F32, .rank = 0, .data = (double[]){0.5}}};
  feed drawn = {mask, {0}};
  run(ev, &kp, 1, &mask, 1, &drawn.value);
  int zeros = 0, kept = 0;
  for (int64_t i = 0; i < fl_value_size(&drawn.value); i++) {
    double m = drawn.value.data[i];
    cr_assert(m == 0.0 || m == 2.0, "mask[%lld] = %g, not 0 or 1/keep_prob", (long long)i, m);
    zeros += m == 0.0;
    kept += m == 2.0;
  }
  cr_assert(zeros > 0 && kept > 0, "the mask should drop some and keep some (%d, %d)", zeros, kept);
  fl_eval_free(ev);
  gradcheck_graph(g, node(g, "loss"), &drawn, 1, "dropout");
  /* and the gradient is 0 exactly where the mask dropped */
  int x = node(g, "x"), grad;
  cr_assert_eq(fl_gradients(g, node(g, "loss"), &x, 1, &grad), 0);
  ev = fl_eval_new(g, 7);
  fl_value gx = {0};
  run(ev, &drawn, 1, &grad, 1, &gx);
  for (int64_t i = 0; i < fl_value_size(&gx); i++)
    if (drawn.value.data[i] == 0.0) cr_expect_eq(gx.data[i], 0.0, "grad[%lld] of a dropped element", (long long)i);
  fl_value_free(&gx);
  fl_value_free(&drawn.value);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- composite losses ---------------------------------------------------------------------------- */

/* [n, width] of values in [0, 1), and one-hot labels [n, classes]. */
static void make_batch(int n, int width, int classes, uint64_t seed, fl_value *x, fl_value *labels) {
  *x = (fl_value){.dtype = FL_F32, .rank = 2, .dims = {n, width}};
  *labels = (fl_value){.dtype = FL_F32, .rank = 2, .dims = {n, classes}};
  x->data = malloc((size_t)(n * width) * sizeof(double));
  labels->data = calloc((size_t)(n * classes), sizeof(double));
  for (int i = 0; i < n * width; i++) x->data[i] = (double)(float)lcg(&seed);
  for (int i = 0; i < n; i++) labels->data[i * classes + (int)(lcg(&seed) * classes)] = 1.0;
}

Test(gradcheck, softmax_regression) {
  fl_graph *g = compile_ok("x = placeholder(f32, [None, 20])\n"
                           "y_ = placeholder(f32, [None, 5])\n"
                           "W = variable(random_normal([20, 5], stddev=0.5))\n"
                           "b = variable(random_normal([5], stddev=0.5))\n"
                           "y = matmul(x, W) + b\n"
                           "loss = reduce_mean(softmax_cross_entropy_with_logits(labels=y_, logits=y))\n");
  feed feeds[2] = {{node(g, "x"), {0}}, {node(g, "y_"), {0}}};
  make_batch(4, 20, 5, 11, &feeds[0].value, &feeds[1].value);
  gradcheck_graph(g, node(g, "loss"), feeds, 2, "softmax regression");
  fl_value_free(&feeds[0].value);
  fl_value_free(&feeds[1].value);
  fl_graph_free(g);
}

/* The gradients fl_autodiff builds for minimize are the same: an SGD step with
 * rate 1 moves each variable by minus its finite-difference gradient. */
Test(gradcheck, minimize_applies_the_gradient) {
  fl_graph *g = compile_ok("x = placeholder(f32, [None, 6])\n"
                           "y_ = placeholder(f32, [None, 3])\n"
                           "W = variable(random_normal([6, 3], stddev=0.5))\n"
                           "b = variable(random_normal([3], stddev=0.5))\n"
                           "loss = reduce_mean(softmax_cross_entropy_with_logits(labels=y_, logits=matmul(x, W) + b))\n"
                           "train = gradient_descent(1.0).minimize(loss)\n");
  feed feeds[2] = {{node(g, "x"), {0}}, {node(g, "y_"), {0}}};
  make_batch(3, 6, 3, 5, &feeds[0].value, &feeds[1].value);
  int loss = node(g, "loss"), train = node(g, "train");
  int vars[2] = {node(g, "W"), node(g, "b")};
  fl_eval *ev = fl_eval_new(g, 3);
  /* numeric gradients first, at the initial values */
  double numeric[2][18];
  for (int v = 0; v < 2; v++) {
    fl_value *stored = fl_eval_variable(ev, vars[v]);
    for (int64_t i = 0; i < fl_value_size(stored); i++) {
      double x0 = stored->data[i];
      stored->data[i] = x0 + H;
      double plus = run_scalar(ev, feeds, 2, loss);
      stored = fl_eval_variable(ev, vars[v]);
      stored->data[i] = x0 - H;
      double minus = run_scalar(ev, feeds, 2, loss);
      stored = fl_eval_variable(ev, vars[v]);
      stored->data[i] = x0;
      numeric[v][i] = (plus - minus) / (2 * H);
    }
  }
  double before[2][18];
  for (int v = 0; v < 2; v++) {
    fl_value *stored = fl_eval_variable(ev, vars[v]);
    memcpy(before[v], stored->data, (size_t)fl_value_size(stored) * sizeof(double));
  }
  fl_value out = {0};
  run(ev, feeds, 2, &train, 1, &out);
  fl_value_free(&out);
  for (int v = 0; v < 2; v++) {
    fl_value *stored = fl_eval_variable(ev, vars[v]);
    for (int64_t i = 0; i < fl_value_size(stored); i++) {
      double step = before[v][i] - stored->data[i];
      cr_expect(fabs(step - numeric[v][i]) <= ABS_TOL + REL_TOL * fabs(numeric[v][i]),
                "%s[%lld]: the SGD step is %.10g, the numeric gradient %.10g", label(g, vars[v]),
                (long long)i, step, numeric[v][i]);
    }
  }
  fl_eval_free(ev);
  fl_value_free(&feeds[0].value);
  fl_value_free(&feeds[1].value);
  fl_graph_free(g);
}

Test(gradcheck, small_conv_net) {
  fl_graph *g = compile_ok("x = placeholder(f32, [None, 36])\n"
                           "y_ = placeholder(f32, [None, 3])\n"
                           "img = reshape(x, [-1, 6, 6, 1])\n"
                           "W1 = variable(truncated_normal([3, 3, 1, 4], stddev=0.5))\n"
                           "b1 = variable(constant(0.1, shape=[4]))\n"
                           "z1 = conv2d(img, W1, strides=[1, 1, 1, 1], padding=\"SAME\") + b1\n"
                           "h1 = relu(z1)\n"
                           "p1 = max_pool(h1, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n"
                           "flat = reshape(p1, [-1, 3 * 3 * 4])\n"
                           "W2 = variable(truncated_normal([36, 3], stddev=0.3))\n"
                           "b2 = variable(zeros([3]))\n"
                           "logits = matmul(tanh(flat), W2) + b2\n"
                           "loss = reduce_mean(softmax_cross_entropy_with_logits(labels=y_, logits=logits))\n");
  feed feeds[2] = {{node(g, "x"), {0}}, {node(g, "y_"), {0}}};
  make_batch(2, 36, 3, 21, &feeds[0].value, &feeds[1].value);
  /* The check assumes no pre-activation sits on relu's kink and no pooling
   * window has a near tie among positive values. */
  fl_eval *ev = fl_eval_new(g, 7);
  int z1 = node(g, "z1");
  fl_value z = {0};
  run(ev, feeds, 2, &z1, 1, &z);
  for (int64_t i = 0; i < fl_value_size(&z); i++)
    cr_assert_gt(fabs(z.data[i]), 10 * H, "z1[%lld] = %g is too close to relu's kink", (long long)i, z.data[i]);
  fl_value_free(&z);
  fl_eval_free(ev);
  gradcheck_graph(g, node(g, "loss"), feeds, 2, "conv net");
  fl_value_free(&feeds[0].value);
  fl_value_free(&feeds[1].value);
  fl_graph_free(g);
}

/* ---- where gradients stop ----------------------------------------------------------------------- */

Test(gradcheck, no_trainable_variable) {
  const char *text = "x = variable(zeros([3]), trainable=false)\n"
                     "loss = reduce_sum(x * 2.0)\n"
                     "train_op = gradient_descent(0.1).minimize(loss)\n";
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g, "%s", diag_text());
  cr_assert_neq(fl_finish(g), 0, "a loss without trainable variables must be refused");
  cr_assert(strstr(diag_text(), "t.flow:3:34: error: minimize: the loss depends on no trainable variable"),
            "%s", diag_text());
  fl_graph_free(g);
}

Test(gradcheck, stop_gradients) {
  fl_graph *g = compile_ok("A = variable(random_normal([3, 4]))\n"
                           "B = variable(random_normal([3, 4]))\n"
                           "C = variable(random_normal([3, 4]))\n"
                           "D = variable(random_normal([3, 4]))\n"
                           "V = variable(random_normal([3, 4]))\n"
                           "k = cast(argmax(A, 1), f32)\n"
                           "e = cast(equal(B, V), f32)\n"
                           "c = cast(cast(C, bool), f32)\n"
                           "i = cast(cast(D, i32), f32)\n"
                           "loss = reduce_sum(V * V) + reduce_sum(k) + reduce_sum(e) + reduce_sum(c) + reduce_sum(i)\n");
  int xs[5] = {node(g, "A"), node(g, "B"), node(g, "C"), node(g, "D"), node(g, "V")}, grads[5];
  int loss = node(g, "loss");
  cr_assert_eq(fl_gradients(g, loss, xs, 5, grads), 0, "%s", diag_text());
  cr_expect_eq(grads[0], -1, "argmax must stop the gradient");
  cr_expect_eq(grads[1], -1, "equal must stop the gradient");
  cr_expect_eq(grads[2], -1, "a cast to bool must stop the gradient");
  cr_expect_eq(grads[3], -1, "a cast to i32 must stop the gradient");
  cr_assert_geq(grads[4], 0, "V is read directly");
  /* d(sum V*V)/dV = 2V exactly */
  fl_eval *ev = fl_eval_new(g, 7);
  fl_value gv = {0};
  run(ev, NULL, 0, &grads[4], 1, &gv);
  fl_value *v = fl_eval_variable(ev, xs[4]);
  for (int64_t j = 0; j < fl_value_size(v); j++)
    cr_expect_float_eq(gv.data[j], 2 * v->data[j], 1e-12, "dV[%lld]", (long long)j);
  fl_value_free(&gv);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(gradcheck, float_cast_passes_the_gradient) {
  fl_graph *g = compile_ok("x = variable(random_normal([2, 3]))\n"
                           "R = variable(random_normal([2, 3]), trainable=false)\n"
                           "loss = reduce_sum(cast(x, f32) * R)\n");
  int x = node(g, "x"), grad;
  cr_assert_eq(fl_gradients(g, node(g, "loss"), &x, 1, &grad), 0, "%s", diag_text());
  cr_assert_geq(grad, 0, "a cast from f32 to f32 is the identity");
  fl_eval *ev = fl_eval_new(g, 7);
  fl_value gx = {0};
  run(ev, NULL, 0, &grad, 1, &gx);
  fl_value *r = fl_eval_variable(ev, node(g, "R"));
  for (int64_t j = 0; j < fl_value_size(r); j++)
    cr_expect_float_eq(gx.data[j], r->data[j], 1e-12, "dx[%lld]", (long long)j);
  fl_value_free(&gx);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(gradcheck, unreached_variable) {
  fl_graph *g = compile_ok("x = variable(random_normal([2]))\n"
                           "y = variable(random_normal([2]))\n"
                           "loss = reduce_sum(x * x)\n");
  int xs[2] = {node(g, "x"), node(g, "y")}, grads[2];
  cr_assert_eq(fl_gradients(g, node(g, "loss"), xs, 2, grads), 0, "%s", diag_text());
  cr_expect_geq(grads[0], 0);
  cr_expect_eq(grads[1], -1, "y does not reach the loss");
  fl_graph_free(g);
}

/* A non-scalar y: the gradient of its sum. */
Test(gradcheck, non_scalar_target) {
  fl_graph *g = compile_ok("x = variable(random_normal([2, 3]))\n"
                           "y = exp(x)\n");
  int x = node(g, "x"), grad;
  cr_assert_eq(fl_gradients(g, node(g, "y"), &x, 1, &grad), 0, "%s", diag_text());
  fl_eval *ev = fl_eval_new(g, 7);
  fl_value gx = {0};
  run(ev, NULL, 0, &grad, 1, &gx);
  fl_value *v = fl_eval_variable(ev, x);
  for (int64_t j = 0; j < fl_value_size(v); j++)
    cr_expect_float_eq(gx.data[j], exp(v->data[j]), 1e-12, "dx[%lld]", (long long)j);
  fl_value_free(&gx);
  fl_eval_free(ev);
  fl_graph_free(g);
}
