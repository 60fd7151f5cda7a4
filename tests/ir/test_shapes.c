/* test_shapes.c - every op's shape and dtype rule, valid and invalid, through .flow text. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend.h"
#include "ir.h"

/* ---- helpers ------------------------------------------------------------------ */

#include "../diag_capture.h"

TestSuite(shapes, .init = capture_start, .fini = capture_stop);

/* Compiles text (as "t.flow") and runs every check; the graph must be valid. */
static fl_graph *compile_ok(const char *text) {
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  cr_assert(g, "does not parse:\n%s\n--- diagnostics:\n%s", text, diag_text());
  cr_assert_eq(fl_finish(g), 0, "fl_finish fails:\n%s\n--- diagnostics:\n%s", text, diag_text());
  return g;
}

/* "f32[N, 10]" for the node a user name refers to. */
static const char *typed_shape(const fl_graph *g, const char *name, char *buf, size_t cap) {
  int id = fl_graph_find(g, name);
  cr_assert_geq(id, 0, "no node named '%s'", name);
  const fl_node *n = &g->nodes[id];
  cr_assert(n->shaped, "'%s' has no inferred shape", name);
  char shape[160];
  snprintf(buf, cap, "%s%s", fl_dtype_name(n->dtype), fl_shape_str(g, &n->shape, shape, sizeof shape));
  return buf;
}

/* Compiles text and checks the typed shapes of named nodes: a NULL-terminated
 * list of (name, "dtype[dims]") pairs. */
static void expect_shapes(const char *text, const char *const *pairs) {
  fl_graph *g = compile_ok(text);
  for (int i = 0; pairs[i]; i += 2) {
    char got[200];
    typed_shape(g, pairs[i], got, sizeof got);
    cr_expect_str_eq(got, pairs[i + 1], "'%s': expected %s, got %s, in:\n%s", pairs[i], pairs[i + 1],
                     got, text);
  }
  fl_graph_free(g);
}
#define SHAPES(text, ...) expect_shapes(text, (const char *const[]){__VA_ARGS__, NULL})

/* Compiling text must fail, and the first diagnostic line must be exactly
 * `want` ("t.flow:LINE:COL: error: MESSAGE"). */
static void expect_error(const char *text, const char *want) {
  fl_graph *g = fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
  if (g) {
    int rc = fl_finish(g);
    cr_assert_neq(rc, 0, "compiles, but should fail with\n  %s\n---\n%s", want, text);
    fl_graph_free(g);
  }
  const char *all = diag_text();
  const char *eol = strchr(all, '\n');
  size_t len = eol ? (size_t)(eol - all) : strlen(all);
  char first[1024];
  snprintf(first, sizeof first, "%.*s", (int)(len < sizeof first ? len : sizeof first - 1), all);
  cr_expect_str_eq(first, want, "wrong first diagnostic for:\n%s\n--- expected:\n%s\n--- all diagnostics:\n%s",
                   text, want, all);
  cr_expect_geq(fl_error_count(), 1, "no error counted");
  /* The next case starts with a clean slate. */
  fflush(diag_stream);
  fclose(diag_stream);
  free(diag_buf);
  capture_start();
}

/* ---- elementwise ops and broadcasting -------------------------------------------- */

Test(shapes, broadcasting_valid) {
  SHAPES("x = placeholder(f32, [N, 10])\n"
         "b = variable(zeros([10]))\n"
         "y = x + b\n"
         "z = b + x\n",
         "y", "f32[N, 10]", "z", "f32[N, 10]");
  SHAPES("a = placeholder(f32, [2, 1])\n"
         "b = placeholder(f32, [1, 3])\n"
         "c = a + b\n"
         "d = b * a\n"
         "e = a - b\n"
         "f = b / a\n",
         "c", "f32[2, 3]", "d", "f32[2, 3]", "e", "f32[2, 3]", "f", "f32[2, 3]");
  /* scalars: a literal takes the tensor's dtype; a scalar tensor broadcasts */
  SHAPES("x = placeholder(f32, [2, 3])\n"
         "s = placeholder(f32)\n"
         "a = x * 2\n"
         "b = 1.5 - x\n"
         "c = s + x\n"
         "d = x / s\n"
         "e = s * s\n"
         "k = placeholder(i32, [4])\n"
         "f = k + 1\n",
         "a", "f32[2, 3]", "b", "f32[2, 3]", "c", "f32[2, 3]", "d", "f32[2, 3]", "e", "f32[]",
         "s", "f32[]", "f", "i32[4]");
  /* rank extension, 1s against symbols, three-way stretching */
  SHAPES("a = placeholder(f32, [5, 1, 3])\n"
         "b = placeholder(f32, [4, 1])\n"
         "c = a + b\n"
         "n = placeholder(f32, [N, 1])\n"
         "m = placeholder(f32, [1, 5])\n"
         "d = n * m\n"
         "o = placeholder(f32, [1])\n"
         "e = o + n\n"
         "p = placeholder(f32, [N, 3])\n"
         "f = p - p\n"
         "g = add(p, o)\n"
         "h = subtract(o, p)\n"
         "i = multiply(p, 2.0)\n"
         "j = divide(p, p)\n",
         "c", "f32[5, 4, 3]", "d", "f32[N, 5]", "e", "f32[N, 1]", "f", "f32[N, 3]", "g", "f32[N, 3]",
         "h", "f32[N, 3]", "i", "f32[N, 3]", "j", "f32[N, 3]");
  /* None is the symbol N */
  SHAPES("x = placeholder(f32, [None, 784])\ny = placeholder(f32, [N, 784])\nz = x + y\n",
         "x", "f32[N, 784]", "z", "f32[N, 784]");
}

Test(shapes, broadcasting_invalid) {
  expect_error("x = placeholder(f32, [N, 784])\n"
               "W = variable(zeros([784, 10]))\n"
               "y = matmul(x, W)\n"
               "z = y + W\n",
               "t.flow:4:7: error: add: shapes [N, 10] and [784, 10] do not broadcast (dimension N vs 784)");
  expect_error("a = placeholder(f32, [2, 3])\nb = placeholder(f32, [4, 3])\nc = a * b\n",
               "t.flow:3:7: error: mul: shapes [2, 3] and [4, 3] do not broadcast (dimension 2 vs 4)");
  expect_error("a = placeholder(f32, [2, 3])\nb = placeholder(f32, [2])\nc = a - b\n",
               "t.flow:3:7: error: sub: shapes [2, 3] and [2] do not broadcast (dimension 3 vs 2)");
  expect_error("a = placeholder(f32, [N])\nb = placeholder(f32, [M])\nc = divide(a, b)\n",
               "t.flow:3:5: error: div: shapes [N] and [M] do not broadcast (dimension N vs M)");
  expect_error("a = placeholder(f32, [3])\nb = placeholder(i32, [3])\nc = a + b\n",
               "t.flow:3:7: error: add: dtypes differ: f32 and i32");
  expect_error("a = placeholder(f32, [3])\nb = equal(a, a)\nc = b + b\n",
               "t.flow:3:7: error: add: arithmetic needs numbers, found bool");
}

Test(shapes, unary_ops) {
  SHAPES("x = placeholder(f32, [N, 3])\n"
         "a = neg(x)\nb = -x\nc = square(x)\nd = sqrt(x)\ne = log(x)\nf = exp(x)\n"
         "g = relu(x)\nh = sigmoid(x)\ni = tanh(x)\n"
         "k = placeholder(i32, [2])\nl = square(k)\nm = negative(k)\n",
         "a", "f32[N, 3]", "b", "f32[N, 3]", "c", "f32[N, 3]", "d", "f32[N, 3]", "e", "f32[N, 3]",
         "f", "f32[N, 3]", "g", "f32[N, 3]", "h", "f32[N, 3]", "i", "f32[N, 3]", "l", "i32[2]",
         "m", "i32[2]");
  expect_error("k = placeholder(i32, [2])\ny = sqrt(k)\n",
               "t.flow:2:5: error: sqrt: the input must be f32, found i32");
  expect_error("k = placeholder(i32, [2])\n\n  y = relu(k)\n",
               "t.flow:3:7: error: relu: the input must be f32, found i32");
  expect_error("x = placeholder(f32, [2])\nb = equal(x, x)\ny = neg(b)\n",
               "t.flow:3:5: error: neg: the input must be numeric, found bool");
  expect_error("x = placeholder(f32, [2])\nb = equal(x, x)\ny = square(b)\n",
               "t.flow:3:5: error: square: the input must be numeric, found bool");
}

/* ---- matmul --------------------------------------------------------------------- */

Test(shapes, matmul_valid) {
  SHAPES("x = placeholder(f32, [N, 784])\n"
         "W = variable(zeros([784, 10]))\n"
         "y = matmul(x, W)\n",
         "y", "f32[N, 10]", "W", "f32[784, 10]", "x", "f32[N, 784]");
  SHAPES("a = placeholder(f32, [3, 5])\n"
         "b = placeholder(f32, [3, 4])\n"
         "c = placeholder(f32, [4, 3])\n"
         "d = placeholder(f32, [2, 3])\n"
         "ta = matmul(a, b, transpose_a=true)\n"
         "tb = matmul(d, c, transpose_b=true)\n"
         "tab = matmul(b, d, transpose_a=true, transpose_b=true)\n"
         "pos = matmul(a, b, true)\n"
         "x = placeholder(f32, [N, 3])\n"
         "xt = matmul(x, x, transpose_a=true)\n"
         "xx = matmul(x, x, transpose_b=true)\n"
         "i = placeholder(i32, [2, 2])\n"
         "ii = matmul(i, i)\n",
         "ta", "f32[5, 4]", "tb", "f32[2, 4]", "tab", "f32[4, 2]", "pos", "f32[5, 4]",
         "xt", "f32[3, 3]", "xx", "f32[N, N]", "ii", "i32[2, 2]");
}

Test(shapes, matmul_invalid) {
  expect_error("x = placeholder(f32, [N, 784])\nW = variable(zeros([10, 784]))\ny = matmul(x, W)\n",
               "t.flow:3:5: error: matmul: inner dimensions differ: [N, 784] x [10, 784]");
  expect_error("x = placeholder(f32, [N, 784])\nW = variable(zeros([784, 10]))\n"
               "y = matmul(x, W, transpose_a=true)\n",
               "t.flow:3:5: error: matmul: inner dimensions differ: [N, 784]^T x [784, 10]");
  expect_error("x = placeholder(f32, [N, 784])\nW = variable(zeros([784, 10]))\n"
               "y = matmul(x, W, transpose_b=true)\n",
               "t.flow:3:5: error: matmul: inner dimensions differ: [N, 784] x [784, 10]^T");
  expect_error("x = placeholder(f32, [N, 28, 28])\nW = variable(zeros([28, 10]))\ny = matmul(x, W)\n",
               "t.flow:3:5: error: matmul: the left operand must have rank 2, found [N, 28, 28]");
  expect_error("x = placeholder(f32, [N, 28])\nW = variable(zeros([28]))\ny = matmul(x, W)\n",
               "t.flow:3:5: error: matmul: the right operand must have rank 2, found [28]");
  expect_error("x = placeholder(f32, [2, 2])\nk = placeholder(i32, [2, 2])\ny = matmul(x, k)\n",
               "t.flow:3:5: error: matmul: operands must have one numeric dtype, found f32 and i32");
  expect_error("x = placeholder(f32, [2, 2])\nb = equal(x, x)\ny = matmul(b, b)\n",
               "t.flow:3:5: error: matmul: operands must have one numeric dtype, found bool and bool");
}

/* ---- reshape -------------------------------------------------------------------- */

Test(shapes, reshape_valid) {
  SHAPES("x = placeholder(f32, [N, 784])\n"
         "img = reshape(x, [-1, 28, 28, 1])\n"
         "back = reshape(img, [-1, 784])\n"
         "flat = reshape(img, [-1])\n"
         "again = reshape(flat, [-1, 28, 28])\n"
         "c = placeholder(f32, [N, 7, 7, 64])\n"
         "f = reshape(c, [-1, 7 * 7 * 64])\n"
         "g = reshape(c, [-1, 64])\n"
         "s = placeholder(f32, [2, 3, 4])\n"
         "h = reshape(s, [4, -1])\n"
         "i = reshape(s, [24])\n"
         "j = reshape(s, [2, 12])\n"
         "k = reshape(s, [-1])\n"
         "l = reshape(s, [1, 1, 24, 1])\n"
         "m = reshape(constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), [3, 2])\n"
         "one = placeholder(f32, [1])\n"
         "sc = reshape(one, [1, 1])\n",
         "img", "f32[N, 28, 28, 1]", "back", "f32[N, 784]", "flat", "f32[784*N]",
         "again", "f32[N, 28, 28]", "f", "f32[N, 3136]", "g", "f32[49*N, 64]", "h", "f32[4, 6]",
         "i", "f32[24]", "j", "f32[2, 12]", "k", "f32[24]", "l", "f32[1, 1, 24, 1]", "m", "f32[3, 2]",
         "sc", "f32[1, 1]");
  SHAPES("k = placeholder(i32, [N, 4])\nr = reshape(k, [-1, 2, 2])\n", "r", "i32[N, 2, 2]");
  /* multiples of the symbol survive a round trip */
  SHAPES("x = placeholder(f32, [N, 2])\n"
         "f = reshape(x, [-1])\n"
         "b = reshape(f, [-1, 2])\n"
         "c = placeholder(f32, [N, 7, 7, 64])\n"
         "g = reshape(c, [-1, 64])\n"
         "h = reshape(g, [-1, 7, 7, 64])\n"
         "i = reshape(g, [-1, 49, 64])\n"
         "j = f * f\n",
         "f", "f32[2*N]", "b", "f32[N, 2]", "h", "f32[N, 7, 7, 64]", "i", "f32[N, 49, 64]",
         "j", "f32[2*N]");
}

Test(shapes, reshape_invalid) {
  expect_error("x = placeholder(f32, [N, 784])\ny = reshape(x, [-1, 27, 27, 1])\n",
               "t.flow:2:5: error: reshape: cannot reshape [N, 784] into [-1, 27, 27, 1]: 784 is not a "
               "multiple of 729");
  expect_error("x = placeholder(f32, [2, 3])\ny = reshape(x, [4, 2])\n",
               "t.flow:2:5: error: reshape: cannot reshape [2, 3] into [4, 2]: the element counts differ");
  expect_error("x = placeholder(f32, [N, 784])\ny = reshape(x, [28, 28])\n",
               "t.flow:2:5: error: reshape: cannot reshape [N, 784] into [28, 28]: the element counts "
               "differ");
  expect_error("x = placeholder(f32, [N, 6])\ny = reshape(x, [-1, 4])\n",
               "t.flow:2:5: error: reshape: cannot reshape [N, 6] into [-1, 4]: 6 is not a multiple of 4");
  expect_error("x = placeholder(f32, [N, 2])\nf = reshape(x, [-1])\ny = placeholder(f32, [N])\nz = f + y\n",
               "t.flow:4:7: error: add: shapes [2*N] and [N] do not broadcast (dimension 2*N vs N)");
  expect_error("x = placeholder(f32, [N, M])\ny = reshape(x, [-1])\n",
               "t.flow:2:5: error: reshape: cannot reshape [N, M]: more than one symbolic dimension");
  /* written twice: the front end already refuses it, at the second -1 */
  expect_error("x = placeholder(f32, [2, 3])\ny = reshape(x, [-1, -1])\n",
               "t.flow:2:21: error: reshape: only one dimension may be -1");
}

/* ---- conv2d and max_pool ------------------------------------------------------------ */

Test(shapes, conv2d_valid) {
  SHAPES("x = placeholder(f32, [N, 28, 28, 1])\n"
         "w = variable(zeros([5, 5, 1, 32]))\n"
         "same1 = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n"
         "valid1 = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"VALID\")\n"
         "same2 = conv2d(x, w, strides=[1, 2, 2, 1], padding=\"SAME\")\n"
         "valid2 = conv2d(x, w, strides=[1, 2, 2, 1], padding=\"VALID\")\n"
         "y = placeholder(f32, [N, 7, 7, 3])\n"
         "k = variable(zeros([3, 3, 3, 8]))\n"
         "a = conv2d(y, k, strides=[1, 2, 2, 1], padding=\"VALID\")\n"
         "b = conv2d(y, k, strides=[1, 2, 2, 1], padding=\"SAME\")\n"
         "c = conv2d(y, k, strides=[1, 1, 2, 1], padding=\"VALID\")\n"
         "r = variable(zeros([1, 7, 3, 2]))\n"
         "d = conv2d(y, r, [1, 1, 1, 1], \"VALID\")\n"
         "e = conv2d(y, r, [1, 3, 3, 1], \"SAME\")\n",
         "same1", "f32[N, 28, 28, 32]", "valid1", "f32[N, 24, 24, 32]", "same2", "f32[N, 14, 14, 32]",
         "valid2", "f32[N, 12, 12, 32]", "a", "f32[N, 3, 3, 8]", "b", "f32[N, 4, 4, 8]",
         "c", "f32[N, 5, 3, 8]", "d", "f32[N, 7, 1, 2]", "e", "f32[N, 3, 3, 2]");
}

Test(shapes, conv2d_invalid) {
  expect_error("x = placeholder(f32, [N, 28, 28, 3])\nw = variable(zeros([5, 5, 1, 32]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n",
               "t.flow:3:5: error: conv2d: the input has 3 channels but the filter expects 1 "
               "([N, 28, 28, 3] with filter [5, 5, 1, 32])");
  expect_error("x = placeholder(f32, [N, 784])\nw = variable(zeros([5, 5, 1, 32]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n",
               "t.flow:3:5: error: conv2d: the input (NHWC) must have rank 4, found [N, 784]");
  expect_error("x = placeholder(f32, [N, 28, 28, 1])\nw = variable(zeros([5, 5, 1]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n",
               "t.flow:3:5: error: conv2d: the filter (HWIO) must have rank 4, found [5, 5, 1]");
  expect_error("x = placeholder(f32, [N, 3, 8, 1])\nw = variable(zeros([5, 5, 1, 2]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"VALID\")\n",
               "t.flow:3:5: error: conv2d: with VALID padding the input height 3 is smaller than the "
               "window 5");
  expect_error("x = placeholder(f32, [N, 8, 4, 1])\nw = variable(zeros([5, 5, 1, 2]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"VALID\")\n",
               "t.flow:3:5: error: conv2d: with VALID padding the input width 4 is smaller than the "
               "window 5");
  expect_error("x = placeholder(f32, [1, H, 8, 1])\nw = variable(zeros([3, 3, 1, 2]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n",
               "t.flow:3:5: error: conv2d: the height of the input must be a known number, found H");
  expect_error("x = placeholder(i32, [1, 8, 8, 1])\nw = variable(zeros([3, 3, 1, 2]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n",
               "t.flow:3:5: error: conv2d: the input must be f32, found i32");
  expect_error("x = placeholder(f32, [1, 8, 8, 1])\nw = placeholder(f32, [3, 3, 1, N])\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"SAME\")\n",
               "t.flow:3:5: error: conv2d: the filter's shape must be known, found [3, 3, 1, N]");
  expect_error("x = placeholder(f32, [1, 8, 8, 1])\nw = variable(zeros([3, 3, 1, 2]))\n"
               "y = conv2d(x, w, strides=[1, 1, 1, 1], padding=\"FULL\")\n",
               "t.flow:3:48: error: conv2d: padding must be \"SAME\" or \"VALID\", found \"FULL\"");
}

Test(shapes, max_pool_valid) {
  SHAPES("x = placeholder(f32, [N, 28, 28, 32])\n"
         "a = max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n"
         "y = placeholder(f32, [N, 7, 7, 64])\n"
         "b = max_pool(y, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n"
         "c = max_pool(y, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"VALID\")\n"
         "d = max_pool(y, ksize=[1, 3, 3, 1], strides=[1, 1, 1, 1], padding=\"VALID\")\n"
         "e = max_pool(y, ksize=[1, 3, 3, 1], strides=[1, 1, 1, 1], padding=\"SAME\")\n"
         "f = max_pool(y, [1, 7, 1, 1], [1, 1, 2, 1], \"VALID\")\n",
         "a", "f32[N, 14, 14, 32]", "b", "f32[N, 4, 4, 64]", "c", "f32[N, 3, 3, 64]",
         "d", "f32[N, 5, 5, 64]", "e", "f32[N, 7, 7, 64]", "f", "f32[N, 1, 4, 64]");
}

Test(shapes, max_pool_invalid) {
  expect_error("x = placeholder(f32, [N, 784])\n"
               "y = max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n",
               "t.flow:2:5: error: max_pool: the input (NHWC) must have rank 4, found [N, 784]");
  expect_error("x = placeholder(f32, [1, 5, 2, 1])\n"
               "y = max_pool(x, ksize=[1, 3, 3, 1], strides=[1, 1, 1, 1], padding=\"VALID\")\n",
               "t.flow:2:5: error: max_pool: with VALID padding the input width 2 is smaller than the "
               "window 3");
  expect_error("x = placeholder(f32, [1, 5, W, 1])\n"
               "y = max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n",
               "t.flow:2:5: error: max_pool: the width of the input must be a known number, found W");
  expect_error("x = placeholder(i32, [1, 4, 4, 1])\n"
               "y = max_pool(x, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n",
               "t.flow:2:5: error: max_pool: the input must be f32, found i32");
  expect_error("x = placeholder(f32, [1, 4, 4, 1])\n"
               "y = max_pool(x, ksize=[2, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n",
               "t.flow:2:23: error: max_pool: ksize must be a list of 4 integers [1, h, w, 1]");
}

/* ---- reductions, argmax, comparisons, casts -------------------------------------------- */

Test(shapes, reductions_valid) {
  SHAPES("x = placeholder(f32, [N, 10])\n"
         "all = reduce_sum(x)\n"
         "rows = reduce_sum(x, 1)\n"
         "cols = reduce_sum(x, axis=0)\n"
         "last = reduce_sum(x, axis=-1)\n"
         "both = reduce_sum(x, axis=[0, 1])\n"
         "kd = reduce_sum(x, axis=1, keepdims=true)\n"
         "kd0 = reduce_sum(x, axis=0, keepdims=true)\n"
         "kdall = reduce_sum(x, keepdims=true)\n"
         "m = reduce_mean(x)\n"
         "m1 = reduce_mean(x, 1)\n"
         "mneg = reduce_mean(x, axis=[-2])\n"
         "mkd = reduce_mean(x, axis=-1, keep_dims=true)\n"
         "old = reduce_sum(x, reduction_indices=[1])\n",
         "all", "f32[]", "rows", "f32[N]", "cols", "f32[10]", "last", "f32[N]", "both", "f32[]",
         "kd", "f32[N, 1]", "kd0", "f32[1, 10]", "kdall", "f32[1, 1]", "m", "f32[]", "m1", "f32[N]",
         "mneg", "f32[10]", "mkd", "f32[N, 1]", "old", "f32[N]");
  SHAPES("x = placeholder(f32, [2, 3, 4, 5])\n"
         "a = reduce_sum(x, axis=[0, 2])\n"
         "b = reduce_mean(x, axis=[-1, 1])\n"
         "c = reduce_sum(x, axis=[3, 0], keepdims=true)\n"
         "d = reduce_mean(x, axis=[-4, -3, -2, -1])\n"
         "k = placeholder(i32, [3, 4])\n"
         "e = reduce_sum(k, 0)\n"
         "f = reduce_mean(k)\n",
         "a", "f32[3, 5]", "b", "f32[2, 4]", "c", "f32[1, 3, 4, 1]", "d", "f32[]", "e", "i32[4]",
         "f", "i32[]");
}

Test(shapes, reductions_invalid) {
  expect_error("x = placeholder(f32, [N, 10])\ny = reduce_sum(x, axis=2)\n",
               "t.flow:2:5: error: reduce_sum: axis 2 is out of range for a tensor of rank 2 (shape [N, 10])");
  expect_error("x = placeholder(f32, [N, 10])\ny = reduce_mean(x, axis=-3)\n",
               "t.flow:2:5: error: reduce_mean: axis -3 is out of range for a tensor of rank 2 (shape "
               "[N, 10])");
  expect_error("x = placeholder(f32, [N, 10])\ny = reduce_sum(x, axis=[1, -1])\n",
               "t.flow:2:5: error: reduce_sum: axis 1 is listed twice");
  expect_error("x = placeholder(f32, [3])\ny = reduce_sum(x, axis=0)\nz = reduce_sum(y, axis=0)\n",
               "t.flow:3:5: error: reduce_sum: axis 0 is out of range for a tensor of rank 0 (shape [])");
  expect_error("x = placeholder(f32, [3])\nb = equal(x, x)\ny = reduce_sum(b)\n",
               "t.flow:3:5: error: reduce_sum: the input must be numeric, found bool");
  expect_error("x = placeholder(f32, [3])\ny = reduce_sum(x, axis=0.5)\n",
               "t.flow:2:24: error: reduce_sum: axis must be an integer or a list of integers (between "
               "-8 and 7), found an out-of-range number");
}

Test(shapes, argmax_equal_cast) {
  SHAPES("y = placeholder(f32, [N, 10])\n"
         "y_ = placeholder(f32, [N, 10])\n"
         "a = argmax(y, 1)\n"
         "a0 = argmax(y)\n"
         "am = argmax(y, axis=-1)\n"
         "ad = argmax(y, dimension=0)\n"
         "correct = equal(argmax(y, 1), argmax(y_, 1))\n"
         "acc = reduce_mean(cast(correct, f32))\n"
         "asint = cast(y, i32)\n"
         "asbool = cast(y, bool)\n"
         "as64 = cast(y, int64)\n"
         "same = cast(y, float32)\n"
         "fe = equal(y, y_)\n"
         "be = equal(fe, fe)\n"
         "ie = equal(asint, 3)\n",
         "a", "i64[N]", "a0", "i64[10]", "am", "i64[N]", "ad", "i64[10]", "correct", "bool[N]",
         "acc", "f32[]", "asint", "i32[N, 10]", "asbool", "bool[N, 10]", "as64", "i64[N, 10]",
         "same", "f32[N, 10]", "fe", "bool[N, 10]", "be", "bool[N, 10]", "ie", "bool[N, 10]");
  SHAPES("x = placeholder(f32, [2, 3, 4])\na = argmax(x, 1)\nb = argmax(x, -1)\n", "a", "i64[2, 4]",
         "b", "i64[2, 3]");
}

Test(shapes, argmax_equal_cast_invalid) {
  expect_error("y = placeholder(f32, [N, 10])\na = argmax(y, 2)\n",
               "t.flow:2:5: error: argmax: axis 2 is out of range for a tensor of rank 2 (shape [N, 10])");
  expect_error("y = placeholder(f32, [N, 10])\na = argmax(y, -3)\n",
               "t.flow:2:5: error: argmax: axis -3 is out of range for a tensor of rank 2 (shape [N, 10])");
  expect_error("s = placeholder(f32)\na = argmax(s)\n",
               "t.flow:2:5: error: argmax: the input must have at least one dimension");
  expect_error("y = placeholder(f32, [N, 10])\na = argmax(y, [0, 1])\n",
               "t.flow:2:15: error: argmax: axis must be one integer");
  expect_error("y = placeholder(f32, [N, 10])\nc = equal(argmax(y, 1), y)\n",
               "t.flow:2:5: error: equal: dtypes differ: i64 and f32");
  expect_error("y = placeholder(f32, [N, 10])\nz = placeholder(f32, [N, 5])\nc = equal(y, z)\n",
               "t.flow:3:5: error: equal: shapes [N, 10] and [N, 5] do not broadcast (dimension 10 vs 5)");
  /* cast's only rule is the dtype name, which the front end checks */
  expect_error("y = placeholder(f32, [N, 10])\nc = cast(y, f16)\n",
               "t.flow:2:13: error: cast: unknown dtype 'f16' (known: f32, i32, i64, bool)");
}

/* ---- softmax, cross entropy, dropout ------------------------------------------------------- */

Test(shapes, softmax_xent_dropout) {
  SHAPES("y = placeholder(f32, [N, 10])\n"
         "y_ = placeholder(f32, [N, 10])\n"
         "p = softmax(y)\n"
         "xe = softmax_cross_entropy_with_logits(labels=y_, logits=y)\n"
         "xe2 = softmax_cross_entropy_with_logits(y_, y)\n"
         "ce = reduce_mean(xe)\n"
         "v = placeholder(f32, [4])\n"
         "pv = softmax(v)\n"
         "xv = softmax_cross_entropy_with_logits(labels=v, logits=v)\n"
         "t = placeholder(f32, [2, 3, 4])\n"
         "xt = softmax_cross_entropy_with_logits(labels=t, logits=t)\n"
         "keep_prob = placeholder(f32)\n"
         "d = dropout(y, keep_prob)\n"
         "d2 = dropout(y, 0.5)\n",
         "p", "f32[N, 10]", "xe", "f32[N]", "xe2", "f32[N]", "ce", "f32[]", "pv", "f32[4]",
         "xv", "f32[]", "xt", "f32[2, 3]", "d", "f32[N, 10]", "d2", "f32[N, 10]");
  /* the mask is its own node, of x's shape */
  fl_graph *g = compile_ok("y = placeholder(f32, [N, 10])\nk = placeholder(f32)\nd = dropout(y, k)\n");
  int d = fl_graph_find(g, "d");
  cr_assert_eq(g->nodes[d].op, FL_OP_MUL);
  const fl_node *mask = &g->nodes[g->nodes[d].inputs[1]];
  cr_assert_eq(mask->op, FL_OP_DROPOUT_MASK);
  char buf[160];
  cr_assert_str_eq(fl_shape_str(g, &mask->shape, buf, sizeof buf), "[N, 10]");
  cr_assert_eq(mask->dtype, FL_F32);
  fl_graph_free(g);
}

Test(shapes, softmax_xent_dropout_invalid) {
  expect_error("k = placeholder(i32, [2, 3])\np = softmax(k)\n",
               "t.flow:2:5: error: softmax: the logits must be f32, found i32");
  expect_error("s = placeholder(f32)\np = softmax(s)\n",
               "t.flow:2:5: error: softmax: the logits must have at least one dimension");
  expect_error("y = placeholder(f32, [N, 10])\ny_ = placeholder(f32, [N, 5])\n"
               "xe = softmax_cross_entropy_with_logits(labels=y_, logits=y)\n",
               "t.flow:3:6: error: softmax_cross_entropy_with_logits: labels and logits differ in shape: "
               "[N, 5] and [N, 10]");
  expect_error("y = placeholder(f32, [N, 10])\ny_ = placeholder(f32, [10])\n"
               "xe = softmax_cross_entropy_with_logits(labels=y_, logits=y)\n",
               "t.flow:3:6: error: softmax_cross_entropy_with_logits: labels and logits differ in shape: "
               "[10] and [N, 10]");
  expect_error("y = placeholder(f32, [N, 10])\ny_ = placeholder(i32, [N, 10])\n"
               "xe = softmax_cross_entropy_with_logits(labels=y_, logits=y)\n",
               "t.flow:3:6: error: softmax_cross_entropy_with_logits: labels must be f32, found i32");
  expect_error("y = placeholder(f32)\n"
               "xe = softmax_cross_entropy_with_logits(labels=y, logits=y)\n",
               "t.flow:2:6: error: softmax_cross_entropy_with_logits: the logits must have at least one "
               "dimension");
  expect_error("y = placeholder(f32, [N, 10])\nk = placeholder(f32, [2])\nd = dropout(y, k)\n",
               "t.flow:3:5: error: dropout_mask: keep_prob must be a scalar, found [2]");
  expect_error("y = placeholder(i32, [N, 10])\nk = placeholder(f32)\nd = dropout(y, k)\n",
               "t.flow:3:5: error: dropout_mask: the input must be f32, found i32");
  expect_error("y = placeholder(f32, [N, 10])\nd = dropout(y, 1.5)\n",
               "t.flow:2:16: error: dropout: keep_prob must be in (0, 1], found 1.5");
}

/* ---- variables and assign -------------------------------------------------------------- */

Test(shapes, variables_and_assign) {
  SHAPES("a = variable(zeros([3, 4]))\n"
         "b = variable(ones([5]))\n"
         "c = variable(constant(0.1, shape=[2, 2]))\n"
         "d = variable(constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))\n"
         "e = variable(random_uniform([7], -1.0, 1.0))\n"
         "f = variable(truncated_normal([2, 3], stddev=0.1))\n"
         "h = variable(random_normal([4, 1]))\n"
         "i = variable(0)\n"
         "j = variable(1.5)\n"
         "k = assign(a, a * 2.0)\n"
         "l = assign(i, i + 1)\n"
         "m = assign(d, constant([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))\n",
         "a", "f32[3, 4]", "b", "f32[5]", "c", "f32[2, 2]", "d", "f32[3, 2]", "e", "f32[7]",
         "f", "f32[2, 3]", "h", "f32[4, 1]", "i", "i32[]", "j", "f32[]", "k", "f32[3, 4]", "l", "i32[]",
         "m", "f32[3, 2]");
}

Test(shapes, variables_and_assign_invalid) {
  expect_error("a = variable(zeros([3]))\nb = assign(a, zeros([4]))\n",
               "t.flow:2:5: error: assign: variable and value differ in shape: [3] and [4]");
  expect_error("a = variable(zeros([3]))\nb = assign(a, zeros([1]))\n",
               "t.flow:2:5: error: assign: variable and value differ in shape: [3] and [1]");
  expect_error("a = variable(zeros([3]))\nk = placeholder(i32, [3])\nb = assign(a, k)\n",
               "t.flow:3:5: error: assign: the variable is f32 but the value is i32");
  expect_error("x = placeholder(f32, [2, 3])\ny = x + 1\nz = assign(y, x)\n",
               "t.flow:3:12: error: assign: ref must be a variable, found the result of add");
  expect_error("x = placeholder(f32, [N, 3])\nv = variable(x)\n",
               "t.flow:2:5: error: variable: the shape must be known at compile time, found [N, 3]");
}

/* ---- minimize ------------------------------------------------------------------------- */

Test(shapes, minimize) {
  fl_graph *g = compile_ok("x = placeholder(f32, [N, 3])\n"
                           "W = variable(zeros([3, 2]))\n"
                           "loss = reduce_mean(square(matmul(x, W)))\n"
                           "train = gradient_descent(0.5).minimize(loss)\n");
  int train = fl_graph_find(g, "train");
  cr_assert_geq(train, 0);
  cr_assert_eq(g->nodes[train].op, FL_OP_GROUP, "the train op is a group of updates");
  for (int i = 0; i < g->nnodes; i++) {
    cr_assert_neq(g->nodes[i].op, FL_OP_MINIMIZE, "node %d is a MINIMIZE left behind", i);
    cr_assert(g->nodes[i].shaped, "node %d (%s) has no shape", i, fl_op_name(g->nodes[i].op));
  }
  fl_graph_free(g);
  expect_error("x = placeholder(i32, [2])\nloss = reduce_sum(x)\n"
               "train_op = gradient_descent(0.1).minimize(loss)\n",
               "t.flow:3:34: error: minimize: the loss must be f32, found i32");
  expect_error("x = variable(zeros([3]), trainable=false)\nloss = reduce_sum(x)\n"
               "train_op = gradient_descent(0.1).minimize(loss)\n",
               "t.flow:3:34: error: minimize: the loss depends on no trainable variable");
}

/* Every node of the two MNIST examples gets a shape, and the named ones the
 * tutorials' shapes. */
static fl_graph *load_example(const char *name) {
  const char *root = getenv("FLOWC_SOURCE_ROOT");
  cr_assert(root, "FLOWC_SOURCE_ROOT is not set: run through meson test");
  char path[4096];
  snprintf(path, sizeof path, "%s/examples/%s.flow", root, name);
  fl_graph *g = fl_frontend_load(path, NULL, 0);
  cr_assert(g, "%s does not parse:\n%s", path, diag_text());
  cr_assert_eq(fl_finish(g), 0, "%s does not check:\n%s", path, diag_text());
  return g;
}

Test(shapes, mnist_deep_shapes) {
  fl_graph *g = load_example("mnist_deep");
  static const char *const want[] = {
      "x_image", "f32[N, 28, 28, 1]", "h_conv1", "f32[N, 28, 28, 32]", "h_pool1", "f32[N, 14, 14, 32]",
      "h_conv2", "f32[N, 14, 14, 64]", "h_pool2", "f32[N, 7, 7, 64]", "h_pool2_flat", "f32[N, 3136]",
      "h_fc1", "f32[N, 1024]", "h_fc1_drop", "f32[N, 1024]", "y_conv", "f32[N, 10]",
      "cross_entropy", "f32[]", "correct_prediction", "bool[N]", "accuracy", "f32[]",
      "keep_prob", "f32[]", NULL};
  for (int i = 0; want[i]; i += 2) {
    char got[200];
    cr_expect_str_eq(typed_shape(g, want[i], got, sizeof got), want[i + 1], "%s", want[i]);
  }
  for (int i = 0; i < g->nnodes; i++) cr_assert(g->nodes[i].shaped, "node %d has no shape", i);
  fl_graph_free(g);
}

/* ---- the dump ---------------------------------------------------------------------------- */

static char *dump_text(const fl_graph *g) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert(f);
  fl_dump(g, f);
  fclose(f);
  return buf;
}

Test(shapes, dump_is_stable) {
  fl_graph *g = load_example("mnist_softmax");
  char *first = dump_text(g);
  char *second = dump_text(g);
  cr_assert_str_eq(first, second, "two dumps of one graph differ");
  cr_assert(strstr(first, "matmul("), "no matmul in the dump:\n%s", first);
  cr_assert(strstr(first, "f32[N, 10]"), "no f32[N, 10] in the dump:\n%s", first);
  cr_assert(strstr(first, "f32[N, 784]  # x"), "the placeholder x is not shown:\n%s", first);
  cr_assert(strstr(first, "softmax_cross_entropy_with_logits("), "no cross entropy:\n%s", first);
  /* One line per node, numbered in order. */
  int lines = 0;
  for (const char *p = first; *p; p++) lines += *p == '\n';
  cr_assert_eq(lines, g->nnodes, "%d lines for %d nodes:\n%s", lines, g->nnodes, first);
  for (int i = 0; i < g->nnodes; i++) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, i ? "\n%%%d = " : "%%%d = ", i);
    cr_assert(i ? strstr(first, prefix) != NULL : strncmp(first, prefix, strlen(prefix)) == 0,
              "no line for %%%d", i);
  }
  /* A second compile of the same description dumps the same text. */
  fl_graph *again = load_example("mnist_softmax");
  char *third = dump_text(again);
  cr_assert_str_eq(first, third, "two compiles dump differently");
  free(first);
  free(second);
  free(third);
  fl_graph_free(g);
  fl_graph_free(again);
}

Test(shapes, dump_shows_attributes) {
  fl_graph *g = compile_ok("x = placeholder(f32, [N, 28, 28, 1])\n"
                           "w = variable(zeros([5, 5, 1, 2]))\n"
                           "c = conv2d(x, w, strides=[1, 2, 2, 1], padding=\"VALID\")\n"
                           "p = max_pool(c, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding=\"SAME\")\n"
                           "r = reduce_sum(p, axis=[1, 2], keepdims=true)\n");
  char *text = dump_text(g);
  cr_assert(strstr(text, "conv2d(%0, %2) {strides=[2, 2], padding=VALID} : f32[N, 12, 12, 2]  # c  (t.flow:3:5)"),
            "%s", text);
  cr_assert(strstr(text, "{ksize=[2, 2], strides=[2, 2], padding=SAME} : f32[N, 6, 6, 2]  # p"), "%s", text);
  cr_assert(strstr(text, "{axes=[1, 2], keepdims} : f32[N, 1, 1, 2]  # r"), "%s", text);
  free(text);
  fl_graph_free(g);
}
