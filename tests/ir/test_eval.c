/* test_eval.c - the reference interpreter, op by op, against hand values and adjoint identities. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "flowc_rt.h"
#include "ir.h"

/* ---- building graphs by hand -------------------------------------------------
 * Shapes are set on each node directly (shaped = true), so these tests do not
 * depend on the shape pass. */

static fl_shape make_shape(const int64_t *dims, int rank) {
  fl_shape s = {.rank = rank};
  for (int k = 0; k < rank; k++) s.dims[k] = fl_dim_const(dims[k]);
  return s;
}
#define SHAPE(...)                                                                                \
  make_shape((const int64_t[]){__VA_ARGS__}, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)))
static const fl_shape SCALAR = {.rank = 0};

/* (count, array) for add()'s inputs. */
#define INPUTS(...) (int)(sizeof((int[]){__VA_ARGS__}) / sizeof(int)), (const int[]){__VA_ARGS__}
#define NO_INPUTS 0, NULL

static int add(fl_graph *g, fl_op op, fl_dtype dtype, fl_shape shape, const fl_attrs *attr,
               int ninputs, const int *inputs) {
  int id = fl_graph_add(g, op, dtype, inputs, ninputs, attr, (fl_loc){0});
  g->nodes[id].shape = shape;
  g->nodes[id].shaped = true;
  return id;
}

static int constant_of(fl_graph *g, fl_dtype dtype, fl_shape shape, const double *data) {
  fl_attrs a = fl_attrs_default();
  a.target = shape;
  a.data = (double *)data; /* fl_graph_add copies it */
  return add(g, FL_OP_CONST, dtype, shape, &a, NO_INPUTS);
}
static int constant(fl_graph *g, fl_shape shape, const double *data) {
  return constant_of(g, FL_F32, shape, data);
}

static int placeholder(fl_graph *g, const char *name, fl_shape shape) {
  int id = add(g, FL_OP_PLACEHOLDER, FL_F32, shape, NULL, NO_INPUTS);
  if (name) fl_node_set_name(g, id, name);
  return id;
}

static int variable_of(fl_graph *g, const char *name, fl_dtype dtype, int init) {
  fl_attrs a = fl_attrs_default();
  a.init = init;
  int id = add(g, FL_OP_VARIABLE, dtype, g->nodes[init].shape, &a, NO_INPUTS);
  if (name) fl_node_set_name(g, id, name);
  return id;
}
static int variable(fl_graph *g, const char *name, fl_shape shape, const double *init) {
  return variable_of(g, name, FL_F32, constant(g, shape, init));
}

/* A deterministic pseudo-random double in [-1, 1) for test data. */
static double test_random(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*state >> 11) * 0x1p-52 - 1.0;
}

static double *random_data(int64_t n, uint64_t seed) {
  double *d = malloc((size_t)n * sizeof *d);
  for (int64_t i = 0; i < n; i++) d[i] = test_random(&seed);
  return d;
}

/* ---- running -------------------------------------------------------------- */

static fl_value run_fed(fl_eval *ev, int node, int nfeeds, const int *feed_nodes,
                        const fl_value *feeds) {
  fl_value v = {0};
  char err[512];
  int rc = fl_eval_run(ev, feed_nodes, feeds, nfeeds, &node, 1, &v, err, sizeof err);
  cr_assert_eq(rc, 0, "run of %%%d failed: %s", node, err);
  return v;
}
static fl_value run(fl_eval *ev, int node) { return run_fed(ev, node, 0, NULL, NULL); }

/* Runs expecting failure; returns the message. */
static const char *run_error(fl_eval *ev, int nfetches, const int *fetches, int nfeeds,
                             const int *feed_nodes, const fl_value *feeds) {
  static char err[512];
  fl_value out[8] = {{0}};
  int rc = fl_eval_run(ev, feed_nodes, feeds, nfeeds, fetches, nfetches, out, err, sizeof err);
  cr_assert_eq(rc, -1, "the run should have failed");
  return err;
}

static fl_value value_of(fl_shape shape, double *data) {
  fl_value v = {.dtype = FL_F32, .rank = shape.rank, .data = data};
  for (int k = 0; k < shape.rank; k++) v.dims[k] = shape.dims[k].coef;
  return v;
}

static void expect_dims(const fl_value *v, int rank, const int64_t *dims) {
  cr_assert_eq(v->rank, rank, "rank %d, expected %d", v->rank, rank);
  for (int k = 0; k < rank; k++)
    cr_assert_eq(v->dims[k], dims[k], "dim %d is %lld, expected %lld", k, (long long)v->dims[k],
                 (long long)dims[k]);
}
#define EXPECT_DIMS(v, ...)                                                                       \
  expect_dims(v, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]){__VA_ARGS__})

static void expect_values(const fl_value *v, const double *want, int64_t n, double tol) {
  cr_assert_eq(fl_value_size(v), n, "%lld elements, expected %lld", (long long)fl_value_size(v),
               (long long)n);
  for (int64_t i = 0; i < n; i++)
    cr_assert(fabs(v->data[i] - want[i]) <= tol, "element %lld is %.17g, expected %.17g",
              (long long)i, v->data[i], want[i]);
}
#define EXPECT_VALUES(v, tol, ...)                                                                \
  expect_values(v, (const double[]){__VA_ARGS__},                                             \
                (int64_t)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)), tol)

static double dot(const fl_value *a, const fl_value *b) {
  cr_assert_eq(fl_value_size(a), fl_value_size(b));
  double s = 0.0;
  for (int64_t i = 0; i < fl_value_size(a); i++) s += a->data[i] * b->data[i];
  return s;
}

/* ---- elementwise and broadcasting -------------------------------------------- */

Test(eval, broadcast_add_of_row_vector) {
  fl_graph *g = fl_graph_new();
  int a = constant(g, SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
  int b = constant(g, SHAPE(3), (double[]){10, 20, 30});
  int sum = add(g, FL_OP_ADD, FL_F32, SHAPE(2, 3), NULL, INPUTS(a, b));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, sum);
  EXPECT_DIMS(&v, 2, 3);
  EXPECT_VALUES(&v, 0, 11, 22, 33, 14, 25, 36);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, broadcast_column_against_row) {
  fl_graph *g = fl_graph_new();
  int col = constant(g, SHAPE(2, 1), (double[]){1, 2});
  int row = constant(g, SHAPE(1, 3), (double[]){10, 20, 30});
  int sum = add(g, FL_OP_ADD, FL_F32, SHAPE(2, 3), NULL, INPUTS(col, row));
  int diff = add(g, FL_OP_SUB, FL_F32, SHAPE(2, 3), NULL, INPUTS(row, col));
  int quot = add(g, FL_OP_DIV, FL_F32, SHAPE(2, 3), NULL, INPUTS(row, col));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, sum);
  EXPECT_VALUES(&v, 0, 11, 21, 31, 12, 22, 32);
  fl_value_free(&v);
  v = run(ev, diff);
  EXPECT_VALUES(&v, 0, 9, 19, 29, 8, 18, 28);
  fl_value_free(&v);
  v = run(ev, quot);
  EXPECT_VALUES(&v, 0, 10, 20, 30, 5, 10, 15);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, unary_ops) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(4), (double[]){-2, -0.5, 0.5, 4});
  int pos = constant(g, SHAPE(2), (double[]){0.25, 4});
  int neg = add(g, FL_OP_NEG, FL_F32, SHAPE(4), NULL, INPUTS(x));
  int square = add(g, FL_OP_SQUARE, FL_F32, SHAPE(4), NULL, INPUTS(x));
  int relu = add(g, FL_OP_RELU, FL_F32, SHAPE(4), NULL, INPUTS(x));
  int sigmoid = add(g, FL_OP_SIGMOID, FL_F32, SHAPE(4), NULL, INPUTS(x));
  int tanh_ = add(g, FL_OP_TANH, FL_F32, SHAPE(4), NULL, INPUTS(x));
  int exp_ = add(g, FL_OP_EXP, FL_F32, SHAPE(4), NULL, INPUTS(x));
  int sqrt_ = add(g, FL_OP_SQRT, FL_F32, SHAPE(2), NULL, INPUTS(pos));
  int log_ = add(g, FL_OP_LOG, FL_F32, SHAPE(2), NULL, INPUTS(pos));
  int dy = constant(g, SHAPE(4), (double[]){1, 2, 3, 4});
  int relu_grad = add(g, FL_OP_RELU_GRAD, FL_F32, SHAPE(4), NULL, INPUTS(dy, relu));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v;
  v = run(ev, neg);
  EXPECT_VALUES(&v, 0, 2, 0.5, -0.5, -4);
  fl_value_free(&v);
  v = run(ev, square);
  EXPECT_VALUES(&v, 0, 4, 0.25, 0.25, 16);
  fl_value_free(&v);
  v = run(ev, relu);
  EXPECT_VALUES(&v, 0, 0, 0, 0.5, 4);
  fl_value_free(&v);
  v = run(ev, sigmoid);
  EXPECT_VALUES(&v, 1e-15, 1 / (1 + exp(2.0)), 1 / (1 + exp(0.5)), 1 / (1 + exp(-0.5)),
                1 / (1 + exp(-4.0)));
  fl_value_free(&v);
  v = run(ev, tanh_);
  EXPECT_VALUES(&v, 1e-15, tanh(-2.0), tanh(-0.5), tanh(0.5), tanh(4.0));
  fl_value_free(&v);
  v = run(ev, exp_);
  EXPECT_VALUES(&v, 1e-12, exp(-2.0), exp(-0.5), exp(0.5), exp(4.0));
  fl_value_free(&v);
  v = run(ev, sqrt_);
  EXPECT_VALUES(&v, 0, 0.5, 2);
  fl_value_free(&v);
  v = run(ev, log_);
  EXPECT_VALUES(&v, 1e-15, log(0.25), log(4.0));
  fl_value_free(&v);
  v = run(ev, relu_grad);
  EXPECT_VALUES(&v, 0, 0, 0, 3, 4);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, sigmoid_does_not_overflow) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(2), (double[]){-1000, 1000});
  int s = add(g, FL_OP_SIGMOID, FL_F32, SHAPE(2), NULL, INPUTS(x));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, s);
  EXPECT_VALUES(&v, 0, 0, 1);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, equal_broadcasts_to_bool) {
  fl_graph *g = fl_graph_new();
  int a = constant_of(g, FL_I64, SHAPE(2, 2), (double[]){1, 2, 3, 2});
  int b = constant_of(g, FL_I64, SHAPE(2), (double[]){1, 2});
  int eq = add(g, FL_OP_EQUAL, FL_BOOL, SHAPE(2, 2), NULL, INPUTS(a, b));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, eq);
  cr_assert_eq(v.dtype, FL_BOOL);
  EXPECT_VALUES(&v, 0, 1, 1, 0, 1);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, integer_division_truncates_and_refuses_zero) {
  fl_graph *g = fl_graph_new();
  int a = constant_of(g, FL_I32, SHAPE(4), (double[]){7, -7, 7, -7});
  int b = constant_of(g, FL_I32, SHAPE(4), (double[]){2, 2, -2, -2});
  int zero = constant_of(g, FL_I32, SCALAR, (double[]){0});
  int q = add(g, FL_OP_DIV, FL_I32, SHAPE(4), NULL, INPUTS(a, b));
  int bad = add(g, FL_OP_DIV, FL_I32, SHAPE(4), NULL, INPUTS(a, zero));
  fl_node_set_name(g, bad, "ratio");
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, q);
  EXPECT_VALUES(&v, 0, 3, -3, -3, 3);
  fl_value_free(&v);
  const char *err = run_error(ev, 1, &bad, 0, NULL, NULL);
  cr_assert(strstr(err, "division by zero") && strstr(err, "'ratio'"), "message: %s", err);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, cast) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(5), (double[]){-1.7, 1.7, 2.5, 0, 0.1});
  int to_int = add(g, FL_OP_CAST, FL_I32, SHAPE(5), NULL, INPUTS(x));
  int to_bool = add(g, FL_OP_CAST, FL_BOOL, SHAPE(5), NULL, INPUTS(x));
  int to_float = add(g, FL_OP_CAST, FL_F32, SHAPE(5), NULL, INPUTS(x));
  int bools = constant_of(g, FL_BOOL, SHAPE(2), (double[]){1, 0});
  int bool_to_float = add(g, FL_OP_CAST, FL_F32, SHAPE(2), NULL, INPUTS(bools));
  int huge = constant(g, SHAPE(2), (double[]){1e300, -1e300});
  int huge_to_float = add(g, FL_OP_CAST, FL_F32, SHAPE(2), NULL, INPUTS(huge));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v;
  v = run(ev, to_int);
  cr_assert_eq(v.dtype, FL_I32);
  EXPECT_VALUES(&v, 0, -1, 1, 2, 0, 0);
  fl_value_free(&v);
  v = run(ev, to_bool);
  EXPECT_VALUES(&v, 0, 1, 1, 1, 0, 1);
  fl_value_free(&v);
  v = run(ev, to_float);
  EXPECT_VALUES(&v, 0, (double)-1.7f, (double)1.7f, 2.5, 0, (double)0.1f);
  cr_assert_neq(v.data[4], 0.1, "cast to f32 rounds to float");
  fl_value_free(&v);
  v = run(ev, bool_to_float);
  EXPECT_VALUES(&v, 0, 1, 0);
  fl_value_free(&v);
  v = run(ev, huge_to_float);
  cr_assert(isinf(v.data[0]) && v.data[0] > 0 && isinf(v.data[1]) && v.data[1] < 0);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- matmul ------------------------------------------------------------------ */

Test(eval, matmul_with_transposes) {
  fl_graph *g = fl_graph_new();
  /* A = [[1, 2, 3], [4, 5, 6]], B = [[7, 8], [9, 10], [11, 12]]: AB = [[58, 64], [139, 154]]. */
  int a = constant(g, SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
  int a_t = constant(g, SHAPE(3, 2), (double[]){1, 4, 2, 5, 3, 6});
  int b = constant(g, SHAPE(3, 2), (double[]){7, 8, 9, 10, 11, 12});
  int b_t = constant(g, SHAPE(2, 3), (double[]){7, 9, 11, 8, 10, 12});
  fl_attrs plain = fl_attrs_default(), ta = plain, tb = plain, tab = plain;
  ta.transpose_a = tab.transpose_a = true;
  tb.transpose_b = tab.transpose_b = true;
  int products[4] = {
      add(g, FL_OP_MATMUL, FL_F32, SHAPE(2, 2), &plain, INPUTS(a, b)),
      add(g, FL_OP_MATMUL, FL_F32, SHAPE(2, 2), &ta, INPUTS(a_t, b)),
      add(g, FL_OP_MATMUL, FL_F32, SHAPE(2, 2), &tb, INPUTS(a, b_t)),
      add(g, FL_OP_MATMUL, FL_F32, SHAPE(2, 2), &tab, INPUTS(a_t, b_t)),
  };
  /* B^T A^T = (AB)^T */
  int ba = add(g, FL_OP_MATMUL, FL_F32, SHAPE(2, 2), &tab, INPUTS(b, a));
  fl_eval *ev = fl_eval_new(g, 1);
  for (int i = 0; i < 4; i++) {
    fl_value v = run(ev, products[i]);
    EXPECT_DIMS(&v, 2, 2);
    EXPECT_VALUES(&v, 0, 58, 64, 139, 154);
    fl_value_free(&v);
  }
  fl_value v = run(ev, ba);
  EXPECT_VALUES(&v, 0, 58, 139, 64, 154);
  fl_value_free(&v);
  /* A 3x2 times 2x3 matrix: an outer shape different from the inner one. */
  int big = add(g, FL_OP_MATMUL, FL_F32, SHAPE(3, 3), &ta, INPUTS(a, a));
  v = run(ev, big); /* A^T A, on a node added after the interpreter was made */
  EXPECT_VALUES(&v, 0, 17, 22, 27, 22, 29, 36, 27, 36, 45);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- convolution ------------------------------------------------------------ */

typedef struct {
  int64_t n, h, w, c, kh, kw, o;
  int sh, sw;
  fl_padding padding;
} conv_case;

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* The output size, stated as TensorFlow's documentation states it. */
static void conv_out_size(const conv_case *cc, int64_t *oh, int64_t *ow) {
  if (cc->padding == FL_PAD_SAME) {
    *oh = ceil_div(cc->h, cc->sh);
    *ow = ceil_div(cc->w, cc->sw);
  } else {
    *oh = ceil_div(cc->h - cc->kh + 1, cc->sh);
    *ow = ceil_div(cc->w - cc->kw + 1, cc->sw);
  }
}

/* A direct convolution written differently from the interpreter's: the input
 * is first copied into an explicitly zero-padded image. */
static double *naive_conv(const conv_case *cc, const double *x, const double *w) {
  int64_t oh, ow;
  conv_out_size(cc, &oh, &ow);
  int64_t pad_h = 0, pad_w = 0;
  if (cc->padding == FL_PAD_SAME) {
    pad_h = (oh - 1) * cc->sh + cc->kh - cc->h;
    pad_w = (ow - 1) * cc->sw + cc->kw - cc->w;
    if (pad_h < 0) pad_h = 0;
    if (pad_w < 0) pad_w = 0;
  }
  const int64_t top = pad_h / 2, left = pad_w / 2;
  const int64_t ph = cc->h + pad_h, pw = cc->w + pad_w;
  double *padded = calloc((size_t)(cc->n * ph * pw * cc->c), sizeof *padded);
  for (int64_t b = 0; b < cc->n; b++)
    for (int64_t i = 0; i < cc->h; i++)
      for (int64_t j = 0; j < cc->w; j++)
        for (int64_t c = 0; c < cc->c; c++)
          padded[((b * ph + i + top) * pw + j + left) * cc->c + c] =
              x[((b * cc->h + i) * cc->w + j) * cc->c + c];
  double *y = calloc((size_t)(cc->n * oh * ow * cc->o), sizeof *y);
  for (int64_t b = 0; b < cc->n; b++)
    for (int64_t i = 0; i < oh; i++)
      for (int64_t j = 0; j < ow; j++)
        for (int64_t o = 0; o < cc->o; o++) {
          double s = 0;
          for (int64_t di = 0; di < cc->kh; di++)
            for (int64_t dj = 0; dj < cc->kw; dj++)
              for (int64_t c = 0; c < cc->c; c++)
                s += padded[((b * ph + i * cc->sh + di) * pw + j * cc->sw + dj) * cc->c + c] *
                     w[((di * cc->kw + dj) * cc->c + c) * cc->o + o];
          y[((b * oh + i) * ow + j) * cc->o + o] = s;
        }
  free(padded);
  return y;
}

static const conv_case conv_cases[] = {
    {2, 5, 6, 2, 3, 2, 3, 1, 1, FL_PAD_SAME},  {2, 5, 6, 2, 3, 2, 3, 1, 1, FL_PAD_VALID},
    {2, 5, 6, 2, 3, 2, 3, 2, 2, FL_PAD_SAME},  {2, 5, 6, 2, 3, 2, 3, 2, 2, FL_PAD_VALID},
    {1, 7, 4, 3, 5, 5, 2, 2, 1, FL_PAD_SAME},  {1, 7, 7, 1, 2, 3, 2, 3, 2, FL_PAD_VALID},
    {3, 4, 4, 2, 1, 1, 2, 2, 2, FL_PAD_SAME},  {1, 6, 6, 2, 4, 4, 1, 2, 2, FL_PAD_SAME},
};

/* x, w and dy as constants; the three convolution nodes. */
typedef struct {
  fl_graph *g;
  int x, w, dy, y, dx, dw;
  int64_t oh, ow;
  double *x_data, *w_data, *dy_data;
} conv_graph;

static conv_graph build_conv(const conv_case *cc, uint64_t seed) {
  conv_graph cg = {.g = fl_graph_new()};
  conv_out_size(cc, &cg.oh, &cg.ow);
  cg.x_data = random_data(cc->n * cc->h * cc->w * cc->c, seed);
  cg.w_data = random_data(cc->kh * cc->kw * cc->c * cc->o, seed + 1);
  cg.dy_data = random_data(cc->n * cg.oh * cg.ow * cc->o, seed + 2);
  fl_shape xs = SHAPE(cc->n, cc->h, cc->w, cc->c), ws = SHAPE(cc->kh, cc->kw, cc->c, cc->o);
  fl_shape ys = SHAPE(cc->n, cg.oh, cg.ow, cc->o);
  fl_attrs a = fl_attrs_default();
  a.strides[0] = cc->sh;
  a.strides[1] = cc->sw;
  a.padding = cc->padding;
  cg.x = constant(cg.g, xs, cg.x_data);
  cg.w = constant(cg.g, ws, cg.w_data);
  cg.dy = constant(cg.g, ys, cg.dy_data);
  cg.y = add(cg.g, FL_OP_CONV2D, FL_F32, ys, &a, INPUTS(cg.x, cg.w));
  a.target = xs;
  cg.dx = add(cg.g, FL_OP_CONV2D_GRAD_INPUT, FL_F32, xs, &a, INPUTS(cg.dy, cg.w));
  a.target = ws;
  cg.dw = add(cg.g, FL_OP_CONV2D_GRAD_FILTER, FL_F32, ws, &a, INPUTS(cg.x, cg.dy));
  return cg;
}

static void free_conv(conv_graph *cg) {
  free(cg->x_data);
  free(cg->w_data);
  free(cg->dy_data);
  fl_graph_free(cg->g);
}

Test(eval, conv2d_matches_direct_formula) {
  for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
    const conv_case *cc = &conv_cases[i];
    conv_graph cg = build_conv(cc, 100 + i);
    fl_eval *ev = fl_eval_new(cg.g, 1);
    fl_value y = run(ev, cg.y);
    EXPECT_DIMS(&y, cc->n, cg.oh, cg.ow, cc->o);
    double *want = naive_conv(cc, cg.x_data, cg.w_data);
    for (int64_t k = 0; k < fl_value_size(&y); k++)
      cr_assert(fabs(y.data[k] - want[k]) <= 1e-12, "case %zu element %lld: %g vs %g", i,
                (long long)k, y.data[k], want[k]);
    free(want);
    fl_value_free(&y);
    fl_eval_free(ev);
    free_conv(&cg);
  }
}

/* conv2d x w = y, run on literal values. */
static fl_value conv_by_hand(fl_shape xs, const double *x, fl_shape ws, const double *w,
                             fl_shape ys, int sh, int sw, fl_padding padding) {
  fl_graph *g = fl_graph_new();
  fl_attrs a = fl_attrs_default();
  a.strides[0] = sh;
  a.strides[1] = sw;
  a.padding = padding;
  int xn = constant(g, xs, x), wn = constant(g, ws, w);
  int y = add(g, FL_OP_CONV2D, FL_F32, ys, &a, INPUTS(xn, wn));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, y);
  fl_eval_free(ev);
  fl_graph_free(g);
  return v;
}

Test(eval, conv2d_tiny_cases_by_hand) {
  const double nine[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, ones[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  /* 3x3 image, 2x2 box filter. VALID: the four full windows. */
  fl_value v = conv_by_hand(SHAPE(1, 3, 3, 1), nine, SHAPE(2, 2, 1, 1), ones, SHAPE(1, 2, 2, 1), 1,
                            1, FL_PAD_VALID);
  EXPECT_VALUES(&v, 0, 12, 16, 24, 28);
  fl_value_free(&v);
  /* SAME, stride 1: one row and column of padding, all of it after. */
  v = conv_by_hand(SHAPE(1, 3, 3, 1), nine, SHAPE(2, 2, 1, 1), ones, SHAPE(1, 3, 3, 1), 1, 1,
                   FL_PAD_SAME);
  EXPECT_VALUES(&v, 0, 12, 16, 9, 24, 28, 15, 15, 17, 9);
  fl_value_free(&v);
  /* SAME, stride 2, 3x3 box: padding 1 before and 1 after. */
  v = conv_by_hand(SHAPE(1, 3, 3, 1), nine, SHAPE(3, 3, 1, 1), ones, SHAPE(1, 2, 2, 1), 2, 2,
                   FL_PAD_SAME);
  EXPECT_VALUES(&v, 0, 12, 16, 24, 28);
  fl_value_free(&v);
  /* Width 4, a 1x3 filter, stride 2, SAME: padding 1, all after (TensorFlow
   * puts the odd cell at the end). */
  v = conv_by_hand(SHAPE(1, 1, 4, 1), (double[]){1, 2, 3, 4}, SHAPE(1, 3, 1, 1),
                   (double[]){1, 10, 100}, SHAPE(1, 1, 2, 1), 1, 2, FL_PAD_SAME);
  EXPECT_VALUES(&v, 0, 321, 43);
  fl_value_free(&v);
  /* Two input channels into two output channels, 1x1 filter: a matmul per pixel. */
  v = conv_by_hand(SHAPE(1, 1, 2, 2), (double[]){1, 2, 3, 4}, SHAPE(1, 1, 2, 2),
                   (double[]){1, 10, 100, 1000}, SHAPE(1, 1, 2, 2), 1, 1, FL_PAD_VALID);
  EXPECT_VALUES(&v, 0, 201, 2010, 403, 4030);
  fl_value_free(&v);
}

Test(eval, conv2d_gradients_are_adjoints) {
  for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
    conv_graph cg = build_conv(&conv_cases[i], 200 + i);
    fl_eval *ev = fl_eval_new(cg.g, 1);
    fl_value y = run(ev, cg.y), dx = run(ev, cg.dx), dw = run(ev, cg.dw);
    fl_value x = run(ev, cg.x), w = run(ev, cg.w), dy = run(ev, cg.dy);
    const double y_dy = dot(&y, &dy), x_dx = dot(&x, &dx), w_dw = dot(&w, &dw);
    cr_assert(fabs(y_dy - x_dx) <= 1e-9, "case %zu: <conv(x,w),dy> %.17g, <x,dx> %.17g", i, y_dy,
              x_dx);
    cr_assert(fabs(y_dy - w_dw) <= 1e-9, "case %zu: <conv(x,w),dy> %.17g, <w,dw> %.17g", i, y_dy,
              w_dw);
    fl_value *all[] = {&y, &dx, &dw, &x, &w, &dy};
    for (size_t k = 0; k < 6; k++) fl_value_free(all[k]);
    fl_eval_free(ev);
    free_conv(&cg);
  }
}

Test(eval, conv2d_refuses_wrong_output_shape) {
  fl_graph *g = fl_graph_new();
  fl_attrs a = fl_attrs_default();
  a.strides[0] = a.strides[1] = 1;
  a.padding = FL_PAD_VALID;
  int x = add(g, FL_OP_FILL, FL_F32, SHAPE(1, 4, 4, 1), NULL, NO_INPUTS);
  int w = add(g, FL_OP_FILL, FL_F32, SHAPE(3, 3, 1, 1), NULL, NO_INPUTS);
  int y = add(g, FL_OP_CONV2D, FL_F32, SHAPE(1, 4, 4, 1), &a, INPUTS(x, w)); /* VALID gives 2x2 */
  fl_eval *ev = fl_eval_new(g, 1);
  const char *err = run_error(ev, 1, &y, 0, NULL, NULL);
  cr_assert(strstr(err, "conv2d") != NULL, "message: %s", err);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- max pooling ------------------------------------------------------------- */

Test(eval, max_pool_values_and_gradient_routing) {
  fl_graph *g = fl_graph_new();
  /* Four 2x2 windows: a plain one, a four-way tie, a two-way tie, a negative one. */
  int x = constant(g, SHAPE(1, 4, 4, 1), (double[]){
                                             1, 2,  5, 5,  //
                                             3, 4,  5, 5,  //
                                             1, 7, -4, -3, //
                                             7, 2, -2, -1, //
                                         });
  fl_attrs a = fl_attrs_default();
  a.ksize[0] = a.ksize[1] = 2;
  a.strides[0] = a.strides[1] = 2;
  a.padding = FL_PAD_VALID;
  int y = add(g, FL_OP_MAX_POOL, FL_F32, SHAPE(1, 2, 2, 1), &a, INPUTS(x));
  int dy = constant(g, SHAPE(1, 2, 2, 1), (double[]){10, 20, 30, 40});
  int dx = add(g, FL_OP_MAX_POOL_GRAD, FL_F32, SHAPE(1, 4, 4, 1), &a, INPUTS(x, dy));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, y);
  EXPECT_VALUES(&v, 0, 4, 5, 7, -1);
  fl_value_free(&v);
  /* Ties go to the first maximum in row-major window order. */
  v = run(ev, dx);
  EXPECT_VALUES(&v, 0,
                0, 0, 20, 0, //
                0, 10, 0, 0, //
                0, 30, 0, 0, //
                0, 0, 0, 40);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, max_pool_same_padding_ignores_padded_cells) {
  fl_graph *g = fl_graph_new();
  /* 3x3, 2x2 windows, stride 2, SAME: output 2x2, one padded row and column
   * after. All values negative, so a padded zero would win if it counted. */
  int x = constant(g, SHAPE(1, 3, 3, 2), (double[]){
                                             -1, 1, -2, 2, -3, 3,  //
                                             -4, 4, -5, 5, -6, 6,  //
                                             -7, 7, -8, 8, -9, 9,  //
                                         });
  fl_attrs a = fl_attrs_default();
  a.ksize[0] = a.ksize[1] = 2;
  a.strides[0] = a.strides[1] = 2;
  a.padding = FL_PAD_SAME;
  int y = add(g, FL_OP_MAX_POOL, FL_F32, SHAPE(1, 2, 2, 2), &a, INPUTS(x));
  int dy = constant(g, SHAPE(1, 2, 2, 2), (double[]){1, 2, 3, 4, 5, 6, 7, 8});
  int dx = add(g, FL_OP_MAX_POOL_GRAD, FL_F32, SHAPE(1, 3, 3, 2), &a, INPUTS(x, dy));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, y);
  EXPECT_VALUES(&v, 0, -1, 5, -3, 6, -7, 8, -9, 9);
  fl_value_free(&v);
  v = run(ev, dx);
  EXPECT_VALUES(&v, 0,
                1, 0, 0, 0, 3, 0, //
                0, 0, 0, 2, 0, 4, //
                5, 0, 0, 6, 7, 8);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- shapes and reductions ------------------------------------------------------ */

Test(eval, reshape_keeps_data) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
  int r = add(g, FL_OP_RESHAPE, FL_F32, SHAPE(3, 1, 2), NULL, INPUTS(x));
  int bad = add(g, FL_OP_RESHAPE, FL_F32, SHAPE(4), NULL, INPUTS(x));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, r);
  EXPECT_DIMS(&v, 3, 1, 2);
  EXPECT_VALUES(&v, 0, 1, 2, 3, 4, 5, 6);
  fl_value_free(&v);
  run_error(ev, 1, &bad, 0, NULL, NULL);
  fl_eval_free(ev);
  fl_graph_free(g);
}

static int reduce(fl_graph *g, fl_op op, int x, fl_shape shape, bool keepdims, int naxes,
                  const int *axes) {
  fl_attrs a = fl_attrs_default();
  a.keepdims = keepdims;
  a.naxes = naxes;
  for (int i = 0; i < naxes; i++) a.axes[i] = axes[i];
  return add(g, op, FL_F32, shape, &a, INPUTS(x));
}

Test(eval, reductions_with_axes_and_keepdims) {
  fl_graph *g = fl_graph_new();
  double data[24];
  for (int i = 0; i < 24; i++) data[i] = i;
  int x = constant(g, SHAPE(2, 3, 4), data);
  int sum_1 = reduce(g, FL_OP_REDUCE_SUM, x, SHAPE(2, 4), false, 1, (int[]){1});
  int sum_02 = reduce(g, FL_OP_REDUCE_SUM, x, SHAPE(1, 3, 1), true, 2, (int[]){0, 2});
  int sum_all = reduce(g, FL_OP_REDUCE_SUM, x, SCALAR, false, 0, NULL);
  int mean_all_kept = reduce(g, FL_OP_REDUCE_MEAN, x, SHAPE(1, 1, 1), true, 0, NULL);
  int mean_last = reduce(g, FL_OP_REDUCE_MEAN, x, SHAPE(2, 3), false, 1, (int[]){-1});
  int wrong = reduce(g, FL_OP_REDUCE_SUM, x, SHAPE(2, 3), false, 1, (int[]){1});
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v;
  v = run(ev, sum_1);
  EXPECT_DIMS(&v, 2, 4);
  EXPECT_VALUES(&v, 0, 12, 15, 18, 21, 48, 51, 54, 57);
  fl_value_free(&v);
  v = run(ev, sum_02);
  EXPECT_DIMS(&v, 1, 3, 1);
  EXPECT_VALUES(&v, 0, 0 + 1 + 2 + 3 + 12 + 13 + 14 + 15, 4 + 5 + 6 + 7 + 16 + 17 + 18 + 19,
                8 + 9 + 10 + 11 + 20 + 21 + 22 + 23);
  fl_value_free(&v);
  v = run(ev, sum_all);
  cr_assert_eq(v.rank, 0);
  EXPECT_VALUES(&v, 0, 276);
  fl_value_free(&v);
  v = run(ev, mean_all_kept);
  EXPECT_DIMS(&v, 1, 1, 1);
  EXPECT_VALUES(&v, 0, 11.5);
  fl_value_free(&v);
  v = run(ev, mean_last);
  EXPECT_VALUES(&v, 0, 1.5, 5.5, 9.5, 13.5, 17.5, 21.5);
  fl_value_free(&v);
  const char *err = run_error(ev, 1, &wrong, 0, NULL, NULL);
  cr_assert(strstr(err, "reduce_sum") != NULL, "message: %s", err);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, sum_to_sums_broadcast_axes) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(2, 3), (double[]){1, 2, 3, 4, 5, 6});
  fl_attrs a = fl_attrs_default();
  a.target = SHAPE(3);
  int cols = add(g, FL_OP_SUM_TO, FL_F32, SHAPE(3), &a, INPUTS(x));
  a.target = SHAPE(2, 1);
  int rows = add(g, FL_OP_SUM_TO, FL_F32, SHAPE(2, 1), &a, INPUTS(x));
  a.target = SCALAR;
  int all = add(g, FL_OP_SUM_TO, FL_F32, SCALAR, &a, INPUTS(x));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v;
  v = run(ev, cols);
  EXPECT_VALUES(&v, 0, 5, 7, 9);
  fl_value_free(&v);
  v = run(ev, rows);
  EXPECT_DIMS(&v, 2, 1);
  EXPECT_VALUES(&v, 0, 6, 15);
  fl_value_free(&v);
  v = run(ev, all);
  EXPECT_VALUES(&v, 0, 21);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}


/* <broadcast(x), y> == <x, sum_to(y)>; with attr.mean the left side is
 * divided by the number of copies. */
Test(eval, broadcast_and_sum_to_are_adjoints) {
  static const struct {
    int small_rank;
    int64_t small[3];
    int big_rank;
    int64_t big[3];
  } cases[] = {
      {2, {3, 1}, 3, {2, 3, 4}}, {1, {4}, 3, {2, 3, 4}}, {0, {0}, 2, {2, 3}},
      {3, {2, 1, 4}, 3, {2, 3, 4}}, {1, {1}, 1, {5}},   {2, {2, 3}, 2, {2, 3}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fl_shape small = make_shape(cases[i].small, cases[i].small_rank);
    fl_shape big = make_shape(cases[i].big, cases[i].big_rank);
    const int64_t small_size = fl_shape_const_size(&small), big_size = fl_shape_const_size(&big);
    double *x_data = random_data(small_size, 300 + i), *y_data = random_data(big_size, 400 + i);
    fl_graph *g = fl_graph_new();
    int x = constant(g, small, x_data), y = constant(g, big, y_data);
    fl_attrs a = fl_attrs_default();
    a.target = big;
    int bx = add(g, FL_OP_BROADCAST, FL_F32, big, &a, INPUTS(x));
    a.mean = true;
    int bx_mean = add(g, FL_OP_BROADCAST, FL_F32, big, &a, INPUTS(x));
    a = fl_attrs_default();
    a.target = small;
    int sy = add(g, FL_OP_SUM_TO, FL_F32, small, &a, INPUTS(y));
    fl_eval *ev = fl_eval_new(g, 1);
    fl_value xv = run(ev, x), yv = run(ev, y), bxv = run(ev, bx), bmv = run(ev, bx_mean),
             syv = run(ev, sy);
    const double lhs = dot(&bxv, &yv), rhs = dot(&xv, &syv), lhs_mean = dot(&bmv, &yv);
    cr_assert(fabs(lhs - rhs) <= 1e-12, "case %zu: %.17g vs %.17g", i, lhs, rhs);
    const double copies = (double)big_size / (double)small_size;
    cr_assert(fabs(lhs_mean - rhs / copies) <= 1e-12, "case %zu (mean): %.17g vs %.17g", i,
              lhs_mean, rhs / copies);
    fl_value *all[] = {&xv, &yv, &bxv, &bmv, &syv};
    for (size_t k = 0; k < 5; k++) fl_value_free(all[k]);
    fl_eval_free(ev);
    fl_graph_free(g);
    free(x_data);
    free(y_data);
  }
}

Test(eval, broadcast_copies_along_axes) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(2, 1), (double[]){1, 2});
  fl_attrs a = fl_attrs_default();
  a.target = SHAPE(2, 3);
  int b = add(g, FL_OP_BROADCAST, FL_F32, SHAPE(2, 3), &a, INPUTS(x));
  a.mean = true;
  int bm = add(g, FL_OP_BROADCAST, FL_F32, SHAPE(2, 3), &a, INPUTS(x));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, b);
  EXPECT_VALUES(&v, 0, 1, 1, 1, 2, 2, 2);
  fl_value_free(&v);
  v = run(ev, bm);
  EXPECT_VALUES(&v, 1e-15, 1 / 3.0, 1 / 3.0, 1 / 3.0, 2 / 3.0, 2 / 3.0, 2 / 3.0);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, argmax_takes_first_maximum) {
  fl_graph *g = fl_graph_new();
  int x = constant(g, SHAPE(2, 3), (double[]){1, 3, 3, 5, 5, 0});
  fl_attrs a = fl_attrs_default();
  a.naxes = 1;
  a.axes[0] = 1;
  int along_rows = add(g, FL_OP_ARGMAX, FL_I64, SHAPE(2), &a, INPUTS(x));
  a.axes[0] = -1;
  int along_last = add(g, FL_OP_ARGMAX, FL_I64, SHAPE(2), &a, INPUTS(x));
  a.axes[0] = 0;
  int along_cols = add(g, FL_OP_ARGMAX, FL_I64, SHAPE(3), &a, INPUTS(x));
  int ties = constant(g, SHAPE(2, 2), (double[]){2, 2, 2, 1});
  int tie_cols = add(g, FL_OP_ARGMAX, FL_I64, SHAPE(2), &a, INPUTS(ties));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v;
  v = run(ev, along_rows);
  cr_assert_eq(v.dtype, FL_I64);
  EXPECT_VALUES(&v, 0, 1, 0);
  fl_value_free(&v);
  v = run(ev, along_last);
  EXPECT_VALUES(&v, 0, 1, 0);
  fl_value_free(&v);
  v = run(ev, along_cols);
  EXPECT_VALUES(&v, 0, 1, 1, 0);
  fl_value_free(&v);
  v = run(ev, tie_cols);
  EXPECT_VALUES(&v, 0, 0, 0);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- softmax and cross-entropy -------------------------------------------------- */

Test(eval, softmax_rows_sum_to_one) {
  fl_graph *g = fl_graph_new();
  int z = constant(g, SHAPE(3, 3), (double[]){1, 2, 3, 1000, 1001, 1002, -5, 0, 0});
  int s = add(g, FL_OP_SOFTMAX, FL_F32, SHAPE(3, 3), NULL, INPUTS(z));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, s);
  for (int row = 0; row < 3; row++) {
    double sum = 0;
    for (int i = 0; i < 3; i++) {
      cr_assert(isfinite(v.data[row * 3 + i]) && v.data[row * 3 + i] > 0);
      sum += v.data[row * 3 + i];
    }
    cr_assert(fabs(sum - 1) <= 1e-15, "row %d sums to %.17g", row, sum);
  }
  const double lse = log(exp(1.0) + exp(2.0) + exp(3.0));
  for (int i = 0; i < 3; i++) {
    cr_assert(fabs(v.data[i] - exp(i + 1 - lse)) <= 1e-15);
    cr_assert(fabs(v.data[3 + i] - v.data[i]) <= 1e-15, "softmax is shift invariant");
  }
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, softmax_cross_entropy_by_hand) {
  fl_graph *g = fl_graph_new();
  int labels = constant(g, SHAPE(3, 3), (double[]){0, 1, 0, 0, 1, 0, 0.25, 0.25, 0.5});
  int logits = constant(g, SHAPE(3, 3), (double[]){1, 2, 3, 1001, 1002, 1003, 1, 2, 3});
  int xent = add(g, FL_OP_SOFTMAX_XENT, FL_F32, SHAPE(3), NULL, INPUTS(labels, logits));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value v = run(ev, xent);
  EXPECT_DIMS(&v, 3);
  /* log(e + e^2 + e^3) - 2, and the same for logits shifted by 1000. */
  const double lse = 3.4076059644443801;
  EXPECT_VALUES(&v, 1e-12, 1.4076059644443801, 1.4076059644443801,
                0.25 * (lse - 1) + 0.25 * (lse - 2) + 0.5 * (lse - 3));
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, softmax_xent_grad_matches_finite_differences) {
  enum { ROWS = 3, CLASSES = 4 };
  fl_graph *g = fl_graph_new();
  int labels = constant(g, SHAPE(ROWS, CLASSES),
                        (double[]){0, 0, 1, 0, 0.1, 0.2, 0.3, 0.4, 1, 0, 0, 0});
  int logits = placeholder(g, "logits", SHAPE(ROWS, CLASSES));
  int dy = constant(g, SHAPE(ROWS), (double[]){0.5, -1.5, 2});
  int xent = add(g, FL_OP_SOFTMAX_XENT, FL_F32, SHAPE(ROWS), NULL, INPUTS(labels, logits));
  int grad = add(g, FL_OP_SOFTMAX_XENT_GRAD, FL_F32, SHAPE(ROWS, CLASSES), NULL,
                 INPUTS(labels, logits, dy));
  fl_eval *ev = fl_eval_new(g, 1);
  double *z = random_data(ROWS * CLASSES, 7);
  for (int i = 0; i < ROWS * CLASSES; i++) z[i] *= 3;
  fl_value feed = value_of(SHAPE(ROWS, CLASSES), z);
  fl_value analytic = run_fed(ev, grad, 1, &logits, &feed);
  EXPECT_DIMS(&analytic, ROWS, CLASSES);
  const double dys[ROWS] = {0.5, -1.5, 2}, h = 1e-5;
  for (int i = 0; i < ROWS * CLASSES; i++) {
    double loss[2];
    for (int side = 0; side < 2; side++) {
      const double saved = z[i];
      z[i] += side ? -h : h;
      fl_value x = run_fed(ev, xent, 1, &logits, &feed);
      loss[side] = 0;
      for (int row = 0; row < ROWS; row++) loss[side] += dys[row] * x.data[row];
      fl_value_free(&x);
      z[i] = saved;
    }
    const double numeric = (loss[0] - loss[1]) / (2 * h);
    cr_assert(fabs(numeric - analytic.data[i]) <= 1e-8, "logit %d: analytic %.12g, numeric %.12g",
              i, analytic.data[i], numeric);
  }
  fl_value_free(&analytic);
  free(z);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- randomness ---------------------------------------------------------------- */

static int random_node(fl_graph *g, fl_op op, fl_shape shape, double a, double b, int stream) {
  fl_attrs at = fl_attrs_default();
  at.target = shape;
  at.a = a;
  at.b = b;
  at.stream = stream;
  return add(g, op, FL_F32, shape, &at, NO_INPUTS);
}

Test(eval, variables_start_from_the_runtime_rng) {
  const uint64_t seed = 42;
  fl_graph *g = fl_graph_new();
  int u = variable_of(g, "u", FL_F32, random_node(g, FL_OP_RANDOM_UNIFORM, SHAPE(5), -1, 1, 3));
  int tn = random_node(g, FL_OP_TRUNCATED_NORMAL, SHAPE(2, 3), 0, 0.1, 4);
  int two = constant(g, SCALAR, (double[]){2});
  int t = variable_of(g, "t", FL_F32, add(g, FL_OP_MUL, FL_F32, SHAPE(2, 3), NULL, INPUTS(tn, two)));
  int n = variable_of(g, "n", FL_F32, random_node(g, FL_OP_RANDOM_NORMAL, SHAPE(3), 1, 2, 5));
  fl_eval *ev = fl_eval_new(g, seed);
  cr_assert_not_null(ev);
  float want[6];
  flrt_fill_uniform(want, 5, -1.0f, 1.0f, seed, 3);
  for (int i = 0; i < 5; i++) cr_assert_eq(fl_eval_variable(ev, u)->data[i], (double)want[i]);
  flrt_fill_truncated_normal(want, 6, 0.0f, 0.1f, seed, 4);
  for (int i = 0; i < 6; i++) cr_assert_eq(fl_eval_variable(ev, t)->data[i], 2.0 * want[i]);
  flrt_fill_normal(want, 3, 1.0f, 2.0f, seed, 5);
  for (int i = 0; i < 3; i++) cr_assert_eq(fl_eval_variable(ev, n)->data[i], (double)want[i]);
  EXPECT_DIMS(fl_eval_variable(ev, t), 2, 3);
  cr_assert_null(fl_eval_variable(ev, two), "only variables have stored values");
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, dropout_masks_share_a_run_and_change_between_runs) {
  enum { SIZE = 1000 };
  const uint64_t seed = 9;
  fl_graph *g = fl_graph_new();
  fl_attrs fill = fl_attrs_default();
  fill.value = 2;
  int x = add(g, FL_OP_FILL, FL_F32, SHAPE(SIZE), &fill, NO_INPUTS);
  int keep_prob = placeholder(g, "keep_prob", SCALAR);
  fl_attrs a = fl_attrs_default();
  a.stream = 0;
  int mask = add(g, FL_OP_DROPOUT_MASK, FL_F32, SHAPE(SIZE), &a, INPUTS(x, keep_prob));
  int same_stream = add(g, FL_OP_DROPOUT_MASK, FL_F32, SHAPE(SIZE), &a, INPUTS(x, keep_prob));
  a.stream = 1;
  int other_stream = add(g, FL_OP_DROPOUT_MASK, FL_F32, SHAPE(SIZE), &a, INPUTS(x, keep_prob));
  int dropped = add(g, FL_OP_MUL, FL_F32, SHAPE(SIZE), NULL, INPUTS(x, mask));
  int unfed = placeholder(g, "unfed", SCALAR);
  fl_eval *ev = fl_eval_new(g, seed);
  double half = 0.5;
  fl_value feed = {.dtype = FL_F32, .rank = 0, .data = &half};
  float want[SIZE], other[SIZE];
  char err[256];

  /* Run 0: every mask node uses run 0; the mask node is evaluated once and
   * its value reused by its readers. */
  int fetches[4] = {mask, same_stream, other_stream, dropped};
  fl_value out[4];
  cr_assert_eq(fl_eval_run(ev, &keep_prob, &feed, 1, fetches, 4, out, err, sizeof err), 0, "%s",
               err);
  flrt_dropout_mask(want, SIZE, 0.5f, seed, 0, 0);
  flrt_dropout_mask(other, SIZE, 0.5f, seed, 1, 0);
  int kept = 0, differ = 0;
  for (int i = 0; i < SIZE; i++) {
    cr_assert_eq(out[0].data[i], (double)want[i]);
    cr_assert(out[0].data[i] == 0 || out[0].data[i] == 2);
    cr_assert_eq(out[1].data[i], out[0].data[i]);
    cr_assert_eq(out[2].data[i], (double)other[i]);
    cr_assert_eq(out[3].data[i], 2 * out[0].data[i]);
    kept += out[0].data[i] != 0;
    differ += out[2].data[i] != out[0].data[i];
  }
  cr_assert(kept > 400 && kept < 600, "kept %d of %d", kept, SIZE);
  cr_assert(differ > 0, "streams must differ");

  /* Run 1 draws a new mask. */
  fl_value second = run_fed(ev, mask, 1, &keep_prob, &feed);
  flrt_dropout_mask(want, SIZE, 0.5f, seed, 0, 1);
  differ = 0;
  for (int i = 0; i < SIZE; i++) {
    cr_assert_eq(second.data[i], (double)want[i]);
    differ += second.data[i] != out[0].data[i];
  }
  cr_assert(differ > 0, "successive runs must draw different masks");
  fl_value_free(&second);

  /* Runs without a mask, and failed runs, do not count. */
  fl_value plain = run(ev, x);
  fl_value_free(&plain);
  int failing[2] = {mask, unfed};
  run_error(ev, 2, failing, 1, &keep_prob, &feed);
  fl_value third = run_fed(ev, mask, 1, &keep_prob, &feed);
  flrt_dropout_mask(want, SIZE, 0.5f, seed, 0, 2);
  for (int i = 0; i < SIZE; i++) cr_assert_eq(third.data[i], (double)want[i]);
  fl_value_free(&third);

  for (int i = 0; i < 4; i++) fl_value_free(&out[i]);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- feeds ------------------------------------------------------------------- */

Test(eval, unfed_placeholder_is_named) {
  fl_graph *g = fl_graph_new();
  int x = placeholder(g, "x", SHAPE(2));
  int y = add(g, FL_OP_NEG, FL_F32, SHAPE(2), NULL, INPUTS(x));
  int anonymous = placeholder(g, NULL, SHAPE(2));
  int z = add(g, FL_OP_NEG, FL_F32, SHAPE(2), NULL, INPUTS(anonymous));
  fl_eval *ev = fl_eval_new(g, 1);
  cr_assert_str_eq(run_error(ev, 1, &y, 0, NULL, NULL), "placeholder 'x' is not fed");
  char want[64];
  snprintf(want, sizeof want, "placeholder %%%d is not fed", anonymous);
  cr_assert_str_eq(run_error(ev, 1, &z, 0, NULL, NULL), want);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, symbolic_dims_bind_from_feeds) {
  fl_graph *g = fl_graph_new();
  int n = fl_graph_symbol(g, "N");
  fl_shape images = {.rank = 2, .dims = {fl_dim_sym(n), fl_dim_const(784)}};
  fl_shape labels = {.rank = 2, .dims = {fl_dim_sym(n), fl_dim_const(10)}};
  fl_shape per_row = {.rank = 1, .dims = {fl_dim_sym(n)}};
  fl_shape flat = {.rank = 1, .dims = {{.coef = 784, .sym = n}}};
  int x = placeholder(g, "x", images);
  int y_ = placeholder(g, "y_", labels);
  fl_attrs a = fl_attrs_default();
  a.naxes = 1;
  a.axes[0] = 1;
  int row_sums = add(g, FL_OP_REDUCE_SUM, FL_F32, per_row, &a, INPUTS(x));
  int flat_x = add(g, FL_OP_RESHAPE, FL_F32, flat, NULL, INPUTS(x));
  int both = add(g, FL_OP_ADD, FL_F32, per_row, NULL,
                 INPUTS(row_sums, reduce(g, FL_OP_REDUCE_SUM, y_, per_row, false, 1, (int[]){1})));
  int needs_n = add(g, FL_OP_FILL, FL_F32, per_row, NULL, NO_INPUTS);
  fl_eval *ev = fl_eval_new(g, 1);

  double *pixels = calloc(5 * 784, sizeof *pixels), *hot = calloc(5 * 10, sizeof *hot);
  for (int i = 0; i < 3 * 784; i++) pixels[i] = 1;
  fl_value three = {.dtype = FL_F32, .rank = 2, .dims = {3, 784}, .data = pixels};
  fl_value v = run_fed(ev, row_sums, 1, &x, &three);
  EXPECT_DIMS(&v, 3);
  EXPECT_VALUES(&v, 0, 784, 784, 784);
  fl_value_free(&v);
  v = run_fed(ev, flat_x, 1, &x, &three);
  EXPECT_DIMS(&v, 3 * 784);
  fl_value_free(&v);

  fl_value wrong = {.dtype = FL_F32, .rank = 2, .dims = {5, 783}, .data = pixels};
  cr_assert_str_eq(run_error(ev, 1, &row_sums, 1, &x, &wrong),
                   "feed for 'x': expected shape [N, 784], got [5, 783]");
  fl_value wrong_rank = {.dtype = FL_F32, .rank = 1, .dims = {784}, .data = pixels};
  cr_assert_str_eq(run_error(ev, 1, &row_sums, 1, &x, &wrong_rank),
                   "feed for 'x': expected shape [N, 784], got [784]");

  /* N is 5 from x, so y_ cannot have 4 rows. */
  fl_value five = {.dtype = FL_F32, .rank = 2, .dims = {5, 784}, .data = pixels};
  fl_value four_labels = {.dtype = FL_F32, .rank = 2, .dims = {4, 10}, .data = hot};
  const int feed_nodes[2] = {x, y_};
  const fl_value conflicting[2] = {five, four_labels};
  const char *err = run_error(ev, 1, &both, 2, feed_nodes, conflicting);
  cr_assert(strstr(err, "feed for 'y_': expected shape [N, 10], got [4, 10]") != NULL &&
                strstr(err, "N is 5 from the feed for 'x'") != NULL,
            "message: %s", err);
  fl_value five_labels = {.dtype = FL_F32, .rank = 2, .dims = {5, 10}, .data = hot};
  const fl_value agreeing[2] = {five, five_labels};
  fl_value sums;
  char buf[256];
  cr_assert_eq(fl_eval_run(ev, feed_nodes, agreeing, 2, &both, 1, &sums, buf, sizeof buf), 0, "%s",
               buf);
  EXPECT_VALUES(&sums, 0, 784, 784, 784, 0, 0);
  fl_value_free(&sums);

  err = run_error(ev, 1, &needs_n, 0, NULL, NULL);
  cr_assert(strstr(err, "symbol N") != NULL, "message: %s", err);
  free(pixels);
  free(hot);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, any_node_can_be_fed) {
  fl_graph *g = fl_graph_new();
  int x = placeholder(g, "x", SHAPE(2));
  int two = constant(g, SCALAR, (double[]){2});
  int y = add(g, FL_OP_MUL, FL_F32, SHAPE(2), NULL, INPUTS(x, two));
  fl_node_set_name(g, y, "y");
  int one = constant(g, SCALAR, (double[]){1});
  int z = add(g, FL_OP_ADD, FL_F32, SHAPE(2), NULL, INPUTS(y, one));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value fed = value_of(SHAPE(2), (double[]){10, 20});
  fl_value v = run_fed(ev, z, 1, &y, &fed); /* x is not needed */
  EXPECT_VALUES(&v, 0, 11, 21);
  fl_value_free(&v);
  v = run_fed(ev, z, 1, &x, &fed);
  EXPECT_VALUES(&v, 0, 21, 41);
  fl_value_free(&v);
  fl_value wrong = value_of(SHAPE(3), (double[]){1, 2, 3});
  cr_assert_str_eq(run_error(ev, 1, &z, 1, &y, &wrong),
                   "feed for 'y': expected shape [2], got [3]");
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- state ------------------------------------------------------------------ */

Test(eval, counter_assign_increments) {
  fl_graph *g = fl_graph_new();
  int state = variable_of(g, "state", FL_I32, constant_of(g, FL_I32, SCALAR, (double[]){0}));
  int one = constant_of(g, FL_I32, SCALAR, (double[]){1});
  int new_value = add(g, FL_OP_ADD, FL_I32, SCALAR, NULL, INPUTS(state, one));
  int update = add(g, FL_OP_ASSIGN, FL_I32, SCALAR, NULL, INPUTS(state, new_value));
  fl_node_set_name(g, update, "update");
  fl_eval *ev = fl_eval_new(g, 1);
  char printed[64] = "", err[256];
  for (int step = 0; step < 4; step++) {
    if (step > 0)
      cr_assert_eq(fl_eval_run(ev, NULL, NULL, 0, &update, 1, NULL, err, sizeof err), 0, "%s", err);
    fl_value v = run(ev, state);
    cr_assert_eq(v.dtype, FL_I32);
    snprintf(printed + strlen(printed), sizeof printed - strlen(printed), "%s%g", step ? " " : "",
             v.data[0]);
    fl_value_free(&v);
  }
  cr_assert_str_eq(printed, "0 1 2 3");

  /* In one run: the variable shows its old value, the assign the new one. */
  int fetches[2] = {state, update};
  fl_value out[2];
  cr_assert_eq(fl_eval_run(ev, NULL, NULL, 0, fetches, 2, out, err, sizeof err), 0, "%s", err);
  EXPECT_VALUES(&out[0], 0, 3);
  EXPECT_VALUES(&out[1], 0, 4);
  fl_value_free(&out[0]);
  fl_value_free(&out[1]);
  cr_assert_eq(fl_eval_variable(ev, state)->data[0], 4);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, failed_run_changes_nothing) {
  fl_graph *g = fl_graph_new();
  int state = variable(g, "state", SCALAR, (double[]){5});
  int x = placeholder(g, "x", SCALAR);
  int one = constant(g, SCALAR, (double[]){1});
  int update = add(g, FL_OP_ASSIGN, FL_F32, SCALAR, NULL,
                   INPUTS(state, add(g, FL_OP_ADD, FL_F32, SCALAR, NULL, INPUTS(state, one))));
  int needs_x = add(g, FL_OP_NEG, FL_F32, SCALAR, NULL, INPUTS(x));
  int group = add(g, FL_OP_GROUP, FL_F32, SCALAR, NULL, INPUTS(update, needs_x));
  fl_eval *ev = fl_eval_new(g, 1);
  cr_assert_str_eq(run_error(ev, 1, &group, 0, NULL, NULL), "placeholder 'x' is not fed");
  cr_assert_eq(fl_eval_variable(ev, state)->data[0], 5);
  fl_value fed = value_of(SCALAR, (double[]){1});
  fl_value v = run_fed(ev, group, 1, &x, &fed);
  cr_assert_eq(v.rank, 1);
  cr_assert_eq(v.dims[0], 0, "a group has an empty value");
  cr_assert_null(v.data);
  cr_assert_eq(fl_eval_variable(ev, state)->data[0], 6);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, pure_node_cannot_read_an_update) {
  fl_graph *g = fl_graph_new();
  int state = variable(g, "state", SCALAR, (double[]){0});
  int one = constant(g, SCALAR, (double[]){1});
  int update = add(g, FL_OP_ASSIGN, FL_F32, SCALAR, NULL, INPUTS(state, one));
  fl_node_set_name(g, update, "update");
  int twice = add(g, FL_OP_MUL, FL_F32, SCALAR, NULL, INPUTS(update, one));
  fl_eval *ev = fl_eval_new(g, 1);
  const char *err = run_error(ev, 1, &twice, 0, NULL, NULL);
  cr_assert(strstr(err, "reads the result of assign 'update'") != NULL, "message: %s", err);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, variables_are_writable_through_the_api) {
  fl_graph *g = fl_graph_new();
  int w = variable(g, "w", SHAPE(2), (double[]){1, 2});
  int neg = add(g, FL_OP_NEG, FL_F32, SHAPE(2), NULL, INPUTS(w));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_eval_variable(ev, w)->data[1] += 0.5;
  fl_value v = run(ev, neg);
  EXPECT_VALUES(&v, 0, -1, -2.5);
  fl_value_free(&v);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, initialiser_needing_a_feed_is_reported) {
  fl_graph *g = fl_graph_new();
  int x = placeholder(g, "x", SHAPE(2));
  variable_of(g, "w", FL_F32, x);
  char *text = NULL;
  size_t len = 0;
  FILE *stream = open_memstream(&text, &len);
  fl_diag_set_stream(stream);
  fl_eval *ev = fl_eval_new(g, 1);
  fl_diag_set_stream(NULL);
  fclose(stream);
  cr_assert_null(ev);
  cr_assert(strstr(text, "cannot initialise variable 'w': placeholder 'x' is not fed") != NULL,
            "message: %s", text);
  free(text);
  fl_diag_reset();
  fl_graph_free(g);
}

Test(eval, variables_added_later_are_initialised_on_the_next_run) {
  fl_graph *g = fl_graph_new();
  int w = variable(g, "w", SHAPE(2), (double[]){1, 2});
  fl_eval *ev = fl_eval_new(g, 1);
  fl_eval_variable(ev, w)->data[0] = 10;
  int slot = variable(g, "slot", SHAPE(2), (double[]){3, 4});
  int sum = add(g, FL_OP_ADD, FL_F32, SHAPE(2), NULL, INPUTS(w, slot));
  cr_assert_null(fl_eval_variable(ev, slot), "not initialised before a run");
  fl_value v = run(ev, sum);
  EXPECT_VALUES(&v, 0, 13, 6); /* w keeps its changed value */
  fl_value_free(&v);
  EXPECT_VALUES(fl_eval_variable(ev, slot), 0, 3, 4);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- optimizer updates ---------------------------------------------------------- */

Test(eval, apply_sgd_and_momentum_one_step) {
  fl_graph *g = fl_graph_new();
  int w = variable(g, "w", SHAPE(2), (double[]){1, 2});
  int grad = constant(g, SHAPE(2), (double[]){0.5, -1});
  fl_attrs a = fl_attrs_default();
  a.lr = 0.1;
  int sgd = add(g, FL_OP_APPLY_SGD, FL_F32, SHAPE(2), &a, INPUTS(w, grad));
  int v = variable(g, "v", SHAPE(2), (double[]){1, 2});
  int accum = variable(g, "accum", SHAPE(2), (double[]){0.1, 0.2});
  int ones = constant(g, SHAPE(2), (double[]){1, 1});
  a.momentum = 0.9;
  int momentum = add(g, FL_OP_APPLY_MOMENTUM, FL_F32, SHAPE(2), &a, INPUTS(v, accum, ones));
  fl_eval *ev = fl_eval_new(g, 1);
  int fetches[3] = {w, sgd, momentum};
  fl_value out[3];
  char err[256];
  cr_assert_eq(fl_eval_run(ev, NULL, NULL, 0, fetches, 3, out, err, sizeof err), 0, "%s", err);
  EXPECT_VALUES(&out[0], 0, 1, 2); /* fetched with its update: the old value */
  EXPECT_VALUES(&out[1], 1e-15, 0.95, 2.1);
  EXPECT_VALUES(&out[2], 1e-15, 1 - 0.109, 2 - 0.118);
  EXPECT_VALUES(fl_eval_variable(ev, w), 1e-15, 0.95, 2.1);
  EXPECT_VALUES(fl_eval_variable(ev, accum), 1e-15, 1.09, 1.18);
  EXPECT_VALUES(fl_eval_variable(ev, v), 1e-15, 0.891, 1.882);
  for (int i = 0; i < 3; i++) fl_value_free(&out[i]);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, sgd_gradient_is_computed_from_the_old_value) {
  fl_graph *g = fl_graph_new();
  int w = variable(g, "w", SHAPE(1), (double[]){1});
  int two = constant(g, SCALAR, (double[]){2});
  int grad = add(g, FL_OP_MUL, FL_F32, SHAPE(1), NULL, INPUTS(w, two)); /* d(w^2)/dw */
  fl_attrs a = fl_attrs_default();
  a.lr = 0.1;
  int sgd = add(g, FL_OP_APPLY_SGD, FL_F32, SHAPE(1), &a, INPUTS(w, grad));
  int train = add(g, FL_OP_GROUP, FL_F32, SCALAR, NULL, INPUTS(sgd));
  fl_eval *ev = fl_eval_new(g, 1);
  char err[256];
  for (int step = 0; step < 2; step++)
    cr_assert_eq(fl_eval_run(ev, NULL, NULL, 0, &train, 1, NULL, err, sizeof err), 0, "%s", err);
  EXPECT_VALUES(fl_eval_variable(ev, w), 1e-15, 0.64);
  fl_eval_free(ev);
  fl_graph_free(g);
}

Test(eval, apply_adam_one_step) {
  fl_graph *g = fl_graph_new();
  int w = variable(g, "w", SHAPE(2), (double[]){1, -1});
  int m = variable(g, "m", SHAPE(2), (double[]){0, 0});
  int v = variable(g, "v", SHAPE(2), (double[]){0, 0});
  int beta1_power = variable(g, "beta1_power", SCALAR, (double[]){0.9});
  int beta2_power = variable(g, "beta2_power", SCALAR, (double[]){0.999});
  int grad = constant(g, SHAPE(2), (double[]){0.5, -2});
  fl_attrs a = fl_attrs_default();
  a.lr = 0.001;
  a.beta1 = 0.9;
  a.beta2 = 0.999;
  a.epsilon = 1e-8;
  int adam = add(g, FL_OP_APPLY_ADAM, FL_F32, SHAPE(2), &a,
                 INPUTS(w, m, v, grad, beta1_power, beta2_power));
  fl_eval *ev = fl_eval_new(g, 1);
  fl_value out = run(ev, adam);
  /* First step: m = 0.1 g, v = 0.001 g^2, lr_t = 0.001 sqrt(0.001) / 0.1,
   * w -= lr_t m / (sqrt(v) + 1e-8): a step of about lr against the sign of g
   * (worked out by hand in Python doubles). */
  EXPECT_VALUES(&out, 1e-15, 0.9990000006324551, -0.9990000001581139);
  EXPECT_VALUES(fl_eval_variable(ev, m), 1e-15, 0.05, -0.2);
  EXPECT_VALUES(fl_eval_variable(ev, v), 1e-15, 0.00025, 0.004);
  fl_value_free(&out);
  fl_eval_free(ev);
  fl_graph_free(g);
}

/* ---- size ------------------------------------------------------------------- */

/* The Deep MNIST convolutions on a batch of 2, forward and backward: the
 * interpreter must stay quick enough for gradient checks on such graphs. */
Test(eval, deep_mnist_sized_convolutions) {
  fl_graph *g = fl_graph_new();
  fl_attrs conv = fl_attrs_default(), pool = fl_attrs_default();
  conv.strides[0] = conv.strides[1] = 1;
  conv.padding = FL_PAD_SAME;
  pool.ksize[0] = pool.ksize[1] = pool.strides[0] = pool.strides[1] = 2;
  pool.padding = FL_PAD_SAME;
  int x = random_node(g, FL_OP_RANDOM_UNIFORM, SHAPE(2, 28, 28, 1), 0, 1, 0);
  int w1 = random_node(g, FL_OP_TRUNCATED_NORMAL, SHAPE(5, 5, 1, 32), 0, 0.1, 1);
  int w2 = random_node(g, FL_OP_TRUNCATED_NORMAL, SHAPE(5, 5, 32, 64), 0, 0.1, 2);
  int h1 = add(g, FL_OP_RELU, FL_F32, SHAPE(2, 28, 28, 32), NULL,
               INPUTS(add(g, FL_OP_CONV2D, FL_F32, SHAPE(2, 28, 28, 32), &conv, INPUTS(x, w1))));
  int p1 = add(g, FL_OP_MAX_POOL, FL_F32, SHAPE(2, 14, 14, 32), &pool, INPUTS(h1));
  int h2 = add(g, FL_OP_CONV2D, FL_F32, SHAPE(2, 14, 14, 64), &conv, INPUTS(p1, w2));
  int p2 = add(g, FL_OP_MAX_POOL, FL_F32, SHAPE(2, 7, 7, 64), &pool, INPUTS(h2));
  int dp2 = add(g, FL_OP_FILL, FL_F32, SHAPE(2, 7, 7, 64), NULL, NO_INPUTS);
  int dh2 = add(g, FL_OP_MAX_POOL_GRAD, FL_F32, SHAPE(2, 14, 14, 64), &pool, INPUTS(h2, dp2));
  conv.target = SHAPE(2, 14, 14, 32);
  int dp1 = add(g, FL_OP_CONV2D_GRAD_INPUT, FL_F32, SHAPE(2, 14, 14, 32), &conv, INPUTS(dh2, w2));
  conv.target = SHAPE(5, 5, 32, 64);
  int dw2 = add(g, FL_OP_CONV2D_GRAD_FILTER, FL_F32, SHAPE(5, 5, 32, 64), &conv, INPUTS(p1, dh2));
  fl_eval *ev = fl_eval_new(g, 1);
  int fetches[3] = {p2, dp1, dw2};
  fl_value out[3];
  char err[256];
  cr_assert_eq(fl_eval_run(ev, NULL, NULL, 0, fetches, 3, out, err, sizeof err), 0, "%s", err);
  EXPECT_DIMS(&out[0], 2, 7, 7, 64);
  EXPECT_DIMS(&out[1], 2, 14, 14, 32);
  EXPECT_DIMS(&out[2], 5, 5, 32, 64);
  for (int i = 0; i < 3; i++) fl_value_free(&out[i]);
  fl_eval_free(ev);
  fl_graph_free(g);
}
