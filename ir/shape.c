/* shape.c - shape and dtype inference for every op, with errors that show both shapes. */
#include <stdarg.h>
#include <string.h>

#include "ir.h"

/* Formats a shape into one of a few rotating buffers, so that a message can
 * show two or three shapes in one printf. */
static const char *shape_text(const fl_graph *g, const fl_shape *s) {
  static char bufs[4][160];
  static int next;
  char *buf = bufs[next++ & 3];
  return fl_shape_str(g, s, buf, sizeof bufs[0]);
}

static const char *dim_text(const fl_graph *g, fl_dim d) {
  static char bufs[4][64];
  static int next;
  char *buf = bufs[next++ & 3];
  return fl_dim_str(g, d, buf, sizeof bufs[0]);
}

static fl_shape shape_of_rank(int rank) {
  fl_shape s;
  memset(&s, 0, sizeof s);
  s.rank = rank;
  return s;
}

static bool is_float(fl_dtype t) { return t == FL_F32; }
static bool is_numeric(fl_dtype t) { return t == FL_F32 || t == FL_I32 || t == FL_I64; }

static const fl_node *input(const fl_graph *g, const fl_node *n, int i) {
  return &g->nodes[n->inputs[i]];
}

/* Numpy broadcasting over dims that may be symbolic: a dim of 1 stretches,
 * equal dims stay; a symbol meets only itself or 1. */
static int broadcast_shapes(const fl_graph *g, const fl_node *n, const fl_shape *a,
                            const fl_shape *b, fl_shape *out) {
  int rank = a->rank > b->rank ? a->rank : b->rank;
  *out = shape_of_rank(rank);
  for (int i = 0; i < rank; i++) {
    int ia = a->rank - rank + i, ib = b->rank - rank + i;
    fl_dim da = ia >= 0 ? a->dims[ia] : fl_dim_const(1);
    fl_dim db = ib >= 0 ? b->dims[ib] : fl_dim_const(1);
    if (fl_dim_eq(da, db) || (fl_dim_is_const(db) && db.coef == 1))
      out->dims[i] = da;
    else if (fl_dim_is_const(da) && da.coef == 1)
      out->dims[i] = db;
    else {
      fl_error(n->loc, "%s: shapes %s and %s do not broadcast (dimension %s vs %s)",
               fl_op_name(n->op), shape_text(g, a), shape_text(g, b), dim_text(g, da),
               dim_text(g, db));
      return -1;
    }
  }
  return 0;
}

/* Output size of a window op along one axis, TensorFlow's rules. */
static int window_out(const fl_graph *g, const fl_node *n, const char *axis, fl_dim in, int k,
                      int stride, fl_dim *out) {
  if (!fl_dim_is_const(in)) {
    fl_error(n->loc, "%s: the %s of the input must be a known number, found %s",
             fl_op_name(n->op), axis, dim_text(g, in));
    return -1;
  }
  if (stride < 1 || k < 1) {
    fl_error(n->loc, "%s: window and strides must be positive", fl_op_name(n->op));
    return -1;
  }
  int64_t size = in.coef;
  if (n->attr.padding == FL_PAD_SAME) {
    *out = fl_dim_const((size + stride - 1) / stride);
    return 0;
  }
  if (size < k) {
    fl_error(n->loc, "%s: with VALID padding the input %s %lld is smaller than the window %d",
             fl_op_name(n->op), axis, (long long)size, k);
    return -1;
  }
  *out = fl_dim_const((size - k) / stride + 1);
  return 0;
}

/* Normalises a node's reduction axes in place against the input rank. */
static int normalise_axes(const fl_graph *g, fl_node *n, int rank) {
  bool seen[FL_MAX_RANK] = {false};
  for (int i = 0; i < n->attr.naxes; i++) {
    int axis = n->attr.axes[i];
    if (axis < -rank || axis >= rank) {
      fl_error(n->loc, "%s: axis %d is out of range for a tensor of rank %d (shape %s)",
               fl_op_name(n->op), axis, rank, shape_text(g, &input(g, n, 0)->shape));
      return -1;
    }
    if (axis < 0) axis += rank;
    if (seen[axis]) {
      fl_error(n->loc, "%s: axis %d is listed twice", fl_op_name(n->op), axis);
      return -1;
    }
    seen[axis] = true;
    n->attr.axes[i] = axis;
  }
  return 0;
}

static bool axis_reduced(const fl_node *n, int axis) {
  if (n->attr.naxes == 0) return true;
  for (int i = 0; i < n->attr.naxes; i++)
    if (n->attr.axes[i] == axis) return true;
  return false;
}

/* The element count of a shape as coef * sym^power (power 0 or 1 supported;
 * -1 when more than one symbolic dimension multiplies in). */
typedef struct {
  int64_t coef;
  int sym;
  int power;
} element_count;

static element_count count_elements(const fl_shape *s) {
  element_count c = {1, -1, 0};
  for (int i = 0; i < s->rank; i++) {
    c.coef *= s->dims[i].coef;
    if (s->dims[i].sym >= 0) {
      if (c.power > 0 && c.sym != s->dims[i].sym) c.power = -1;
      if (c.power >= 0) {
        c.sym = s->dims[i].sym;
        c.power++;
      }
    }
  }
  return c;
}

static int infer_reshape(const fl_graph *g, fl_node *n) {
  const fl_shape *in = &input(g, n, 0)->shape;
  const fl_shape *want = &n->attr.target;
  int infer_at = -1;
  fl_shape out = *want;
  element_count known = {1, -1, 0};
  for (int i = 0; i < want->rank; i++) {
    fl_dim d = want->dims[i];
    if (d.sym < 0 && d.coef == -1) {
      if (infer_at >= 0) {
        fl_error(n->loc, "reshape: only one dimension may be -1, found two in %s",
                 shape_text(g, want));
        return -1;
      }
      infer_at = i;
      continue;
    }
    if (d.coef <= 0) {
      fl_error(n->loc, "reshape: dimension %d of %s must be positive or -1", i,
               shape_text(g, want));
      return -1;
    }
    known.coef *= d.coef;
    if (d.sym >= 0) {
      known.power++;
      known.sym = d.sym;
    }
  }
  element_count have = count_elements(in);
  if (have.power < 0 || have.power > 1 || known.power > 1) {
    fl_error(n->loc, "reshape: cannot reshape %s: more than one symbolic dimension",
             shape_text(g, in));
    return -1;
  }
  if (infer_at < 0) {
    bool same = have.coef == known.coef && have.power == known.power &&
                (have.power == 0 || have.sym == known.sym);
    if (!same) {
      fl_error(n->loc, "reshape: cannot reshape %s into %s: the element counts differ",
               shape_text(g, in), shape_text(g, want));
      return -1;
    }
  } else {
    bool sym_ok = known.power == 0 || (have.power == 1 && have.sym == known.sym);
    if (!sym_ok || have.coef % known.coef != 0) {
      fl_error(n->loc, "reshape: cannot reshape %s into %s: %lld is not a multiple of %lld",
               shape_text(g, in), shape_text(g, want), (long long)have.coef,
               (long long)known.coef);
      return -1;
    }
    fl_dim d = fl_dim_const(have.coef / known.coef);
    if (have.power == 1 && known.power == 0) d.sym = have.sym;
    out.dims[infer_at] = d;
  }
  n->shape = out;
  return 0;
}

static int expect_rank(const fl_graph *g, const fl_node *n, const fl_node *in, const char *what,
                       int rank) {
  if (in->shape.rank == rank) return 0;
  fl_error(n->loc, "%s: %s must have rank %d, found %s", fl_op_name(n->op), what, rank,
           shape_text(g, &in->shape));
  return -1;
}

static int expect_float(const fl_node *n, const fl_node *in, const char *what) {
  if (is_float(in->dtype)) return 0;
  fl_error(n->loc, "%s: %s must be f32, found %s", fl_op_name(n->op), what,
           fl_dtype_name(in->dtype));
  return -1;
}

static int expect_same_shape(const fl_graph *g, const fl_node *n, const fl_node *a,
                             const fl_node *b, const char *what) {
  if (fl_shape_eq(&a->shape, &b->shape)) return 0;
  fl_error(n->loc, "%s: %s differ in shape: %s and %s", fl_op_name(n->op), what,
           shape_text(g, &a->shape), shape_text(g, &b->shape));
  return -1;
}

static int expect_scalar(const fl_graph *g, const fl_node *n, const fl_node *in,
                         const char *what) {
  if (in->shape.rank == 0) return 0;
  fl_error(n->loc, "%s: %s must be a scalar, found %s", fl_op_name(n->op), what,
           shape_text(g, &in->shape));
  return -1;
}

static int infer_matmul(const fl_graph *g, fl_node *n) {
  const fl_node *a = input(g, n, 0), *b = input(g, n, 1);
  if (expect_rank(g, n, a, "the left operand", 2) || expect_rank(g, n, b, "the right operand", 2))
    return -1;
  if (a->dtype != b->dtype || !is_numeric(a->dtype)) {
    fl_error(n->loc, "matmul: operands must have one numeric dtype, found %s and %s",
             fl_dtype_name(a->dtype), fl_dtype_name(b->dtype));
    return -1;
  }
  fl_dim rows = a->shape.dims[n->attr.transpose_a ? 1 : 0];
  fl_dim inner_a = a->shape.dims[n->attr.transpose_a ? 0 : 1];
  fl_dim inner_b = b->shape.dims[n->attr.transpose_b ? 1 : 0];
  fl_dim cols = b->shape.dims[n->attr.transpose_b ? 0 : 1];
  if (!fl_dim_eq(inner_a, inner_b)) {
    fl_error(n->loc, "matmul: inner dimensions differ: %s%s x %s%s", shape_text(g, &a->shape),
             n->attr.transpose_a ? "^T" : "", shape_text(g, &b->shape),
             n->attr.transpose_b ? "^T" : "");
    return -1;
  }
  n->dtype = a->dtype;
  n->shape = shape_of_rank(2);
  n->shape.dims[0] = rows;
  n->shape.dims[1] = cols;
  return 0;
}

static int infer_conv2d(const fl_graph *g, fl_node *n) {
  const fl_node *x = input(g, n, 0), *w = input(g, n, 1);
  if (expect_rank(g, n, x, "the input (NHWC)", 4) || expect_rank(g, n, w, "the filter (HWIO)", 4))
    return -1;
  if (expect_float(n, x, "the input") || expect_float(n, w, "the filter")) return -1;
  if (!fl_shape_is_const(&w->shape)) {
    fl_error(n->loc, "conv2d: the filter's shape must be known, found %s",
             shape_text(g, &w->shape));
    return -1;
  }
  if (!fl_dim_eq(x->shape.dims[3], w->shape.dims[2])) {
    fl_error(n->loc, "conv2d: the input has %s channels but the filter expects %s (%s with filter %s)",
             dim_text(g, x->shape.dims[3]), dim_text(g, w->shape.dims[2]),
             shape_text(g, &x->shape), shape_text(g, &w->shape));
    return -1;
  }
  fl_shape out = shape_of_rank(4);
  out.dims[0] = x->shape.dims[0];
  if (window_out(g, n, "height", x->shape.dims[1], (int)w->shape.dims[0].coef,
                 n->attr.strides[0], &out.dims[1]) ||
      window_out(g, n, "width", x->shape.dims[2], (int)w->shape.dims[1].coef, n->attr.strides[1],
                 &out.dims[2]))
    return -1;
  out.dims[3] = w->shape.dims[3];
  n->shape = out;
  n->dtype = FL_F32;
  return 0;
}

static int infer_max_pool(const fl_graph *g, fl_node *n) {
  const fl_node *x = input(g, n, 0);
  if (expect_rank(g, n, x, "the input (NHWC)", 4) || expect_float(n, x, "the input")) return -1;
  fl_shape out = x->shape;
  if (window_out(g, n, "height", x->shape.dims[1], n->attr.ksize[0], n->attr.strides[0],
                 &out.dims[1]) ||
      window_out(g, n, "width", x->shape.dims[2], n->attr.ksize[1], n->attr.strides[1],
                 &out.dims[2]))
    return -1;
  n->shape = out;
  n->dtype = FL_F32;
  return 0;
}

static int infer_reduce(const fl_graph *g, fl_node *n) {
  const fl_node *x = input(g, n, 0);
  if (!is_numeric(x->dtype)) {
    fl_error(n->loc, "%s: the input must be numeric, found %s", fl_op_name(n->op),
             fl_dtype_name(x->dtype));
    return -1;
  }
  if (normalise_axes(g, n, x->shape.rank)) return -1;
  fl_shape out = shape_of_rank(0);
  for (int i = 0; i < x->shape.rank; i++) {
    if (!axis_reduced(n, i))
      out.dims[out.rank++] = x->shape.dims[i];
    else if (n->attr.keepdims)
      out.dims[out.rank++] = fl_dim_const(1);
  }
  n->shape = out;
  n->dtype = x->dtype;
  return 0;
}

/* Checks that `small` broadcasts to `big` (for SUM_TO and BROADCAST). */
static int expect_broadcastable(const fl_graph *g, const fl_node *n, const fl_shape *small,
                                const fl_shape *big) {
  fl_shape joined;
  if (small->rank > big->rank || broadcast_shapes(g, n, small, big, &joined) ||
      !fl_shape_eq(&joined, big)) {
    fl_error(n->loc, "%s: %s does not broadcast to %s", fl_op_name(n->op), shape_text(g, small),
             shape_text(g, big));
    return -1;
  }
  return 0;
}

static int infer_variable(const fl_graph *g, fl_node *n) {
  if (n->attr.init < 0 || n->attr.init >= n->id) {
    fl_error(n->loc, "variable: no initial value");
    return -1;
  }
  const fl_node *init = &g->nodes[n->attr.init];
  if (!fl_shape_is_const(&init->shape)) {
    fl_error(n->loc, "variable: the shape must be known at compile time, found %s",
             shape_text(g, &init->shape));
    return -1;
  }
  n->shape = init->shape;
  n->dtype = init->dtype;
  return 0;
}

static int infer_node(fl_graph *g, fl_node *n) {
  for (int i = 0; i < n->ninputs; i++)
    if (n->inputs[i] < 0 || n->inputs[i] >= n->id || !g->nodes[n->inputs[i]].shaped) {
      fl_error(n->loc, "%s: internal error: input %d is not available", fl_op_name(n->op), i);
      return -1;
    }
  const fl_node *a = n->ninputs > 0 ? input(g, n, 0) : NULL;
  const fl_node *b = n->ninputs > 1 ? input(g, n, 1) : NULL;
  switch (n->op) {
  case FL_OP_PLACEHOLDER:
    if (n->attr.target.rank > 0) n->shape = n->attr.target;
    return 0;
  case FL_OP_VARIABLE:
    return infer_variable(g, n);
  case FL_OP_CONST: case FL_OP_FILL: case FL_OP_RANDOM_UNIFORM: case FL_OP_TRUNCATED_NORMAL:
  case FL_OP_RANDOM_NORMAL:
    for (int i = 0; i < n->attr.target.rank; i++)
      if (n->attr.target.dims[i].coef < 0 ||
          (!fl_dim_is_const(n->attr.target.dims[i]) && n->op != FL_OP_FILL)) {
        fl_error(n->loc, "%s: invalid shape %s", fl_op_name(n->op),
                 shape_text(g, &n->attr.target));
        return -1;
      }
    n->shape = n->attr.target;
    if (n->op != FL_OP_CONST && n->op != FL_OP_FILL && !is_float(n->dtype)) {
      fl_error(n->loc, "%s: only f32 random values are supported", fl_op_name(n->op));
      return -1;
    }
    return 0;
  case FL_OP_ADD: case FL_OP_SUB: case FL_OP_MUL: case FL_OP_DIV: case FL_OP_EQUAL:
    if (a->dtype != b->dtype) {
      fl_error(n->loc, "%s: dtypes differ: %s and %s", fl_op_name(n->op), fl_dtype_name(a->dtype),
               fl_dtype_name(b->dtype));
      return -1;
    }
    if (n->op != FL_OP_EQUAL && !is_numeric(a->dtype)) {
      fl_error(n->loc, "%s: arithmetic needs numbers, found %s", fl_op_name(n->op),
               fl_dtype_name(a->dtype));
      return -1;
    }
    n->dtype = n->op == FL_OP_EQUAL ? FL_BOOL : a->dtype;
    return broadcast_shapes(g, n, &a->shape, &b->shape, &n->shape);
  case FL_OP_NEG: case FL_OP_SQUARE:
    if (!is_numeric(a->dtype)) {
      fl_error(n->loc, "%s: the input must be numeric, found %s", fl_op_name(n->op),
               fl_dtype_name(a->dtype));
      return -1;
    }
    n->dtype = a->dtype;
    n->shape = a->shape;
    return 0;
  case FL_OP_SQRT: case FL_OP_LOG: case FL_OP_EXP: case FL_OP_RELU: case FL_OP_SIGMOID:
  case FL_OP_TANH:
    if (expect_float(n, a, "the input")) return -1;
    n->dtype = a->dtype;
    n->shape = a->shape;
    return 0;
  case FL_OP_RELU_GRAD:
    if (expect_same_shape(g, n, a, b, "gradient and output")) return -1;
    n->dtype = a->dtype;
    n->shape = a->shape;
    return 0;
  case FL_OP_CAST:
    n->shape = a->shape;
    return 0;
  case FL_OP_MATMUL:
    return infer_matmul(g, n);
  case FL_OP_CONV2D:
    return infer_conv2d(g, n);
  case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER: case FL_OP_BROADCAST:
  case FL_OP_SUM_TO:
    n->shape = n->attr.target;
    n->dtype = a->dtype;
    if (n->op == FL_OP_BROADCAST) return expect_broadcastable(g, n, &a->shape, &n->shape);
    if (n->op == FL_OP_SUM_TO) return expect_broadcastable(g, n, &n->shape, &a->shape);
    return 0;
  case FL_OP_MAX_POOL:
    return infer_max_pool(g, n);
  case FL_OP_MAX_POOL_GRAD:
    n->shape = a->shape;
    n->dtype = a->dtype;
    return 0;
  case FL_OP_RESHAPE:
    n->dtype = a->dtype;
    return infer_reshape(g, n);
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN:
    return infer_reduce(g, n);
  case FL_OP_ARGMAX: {
    if (a->shape.rank == 0) {
      fl_error(n->loc, "argmax: the input must have at least one dimension");
      return -1;
    }
    n->attr.naxes = 1;
    if (normalise_axes(g, n, a->shape.rank)) return -1;
    n->shape = shape_of_rank(0);
    for (int i = 0; i < a->shape.rank; i++)
      if (i != n->attr.axes[0]) n->shape.dims[n->shape.rank++] = a->shape.dims[i];
    n->dtype = FL_I64;
    return 0;
  }
  case FL_OP_SOFTMAX:
    if (expect_float(n, a, "the logits")) return -1;
    if (a->shape.rank == 0) {
      fl_error(n->loc, "softmax: the logits must have at least one dimension");
      return -1;
    }
    n->shape = a->shape;
    n->dtype = a->dtype;
    return 0;
  case FL_OP_SOFTMAX_XENT: case FL_OP_SOFTMAX_XENT_GRAD:
    if (expect_float(n, a, "labels") || expect_float(n, b, "logits") ||
        expect_same_shape(g, n, a, b, "labels and logits"))
      return -1;
    if (b->shape.rank == 0) {
      fl_error(n->loc, "%s: the logits must have at least one dimension", fl_op_name(n->op));
      return -1;
    }
    n->dtype = FL_F32;
    n->shape = b->shape;
    if (n->op == FL_OP_SOFTMAX_XENT) n->shape.rank--;
    return 0;
  case FL_OP_DROPOUT_MASK:
    if (expect_float(n, a, "the input") || expect_float(n, b, "keep_prob") ||
        expect_scalar(g, n, b, "keep_prob"))
      return -1;
    n->shape = a->shape;
    n->dtype = FL_F32;
    return 0;
  case FL_OP_ASSIGN:
    if (a->op != FL_OP_VARIABLE) {
      fl_error(n->loc, "assign: the target must be a variable, found %s", fl_op_name(a->op));
      return -1;
    }
    if (a->dtype != b->dtype) {
      fl_error(n->loc, "assign: the variable is %s but the value is %s", fl_dtype_name(a->dtype),
               fl_dtype_name(b->dtype));
      return -1;
    }
    if (expect_same_shape(g, n, a, b, "variable and value")) return -1;
    n->shape = a->shape;
    n->dtype = a->dtype;
    return 0;
  case FL_OP_MINIMIZE:
    if (expect_float(n, a, "the loss")) return -1;
    n->shape = shape_of_rank(0);
    return 0;
  case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM:
    n->shape = a->shape;
    n->dtype = a->dtype;
    return 0;
  case FL_OP_GROUP:
    n->shape = shape_of_rank(0);
    return 0;
  case FL_OP_COUNT:
    break;
  }
  fl_error(n->loc, "internal error: no shape rule for op %d", (int)n->op);
  return -1;
}

int fl_infer_shapes(fl_graph *g) {
  for (int i = 0; i < g->nnodes; i++) {
    fl_node *n = &g->nodes[i];
    if (n->shaped) continue;
    if (infer_node(g, n)) return -1;
    n->shaped = true;
  }
  return 0;
}
