/* eval.c - the reference interpreter: runs a finished graph in double precision, op by op. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "flowc_rt.h"
#include "ir.h"

/* What one run means (generated code must agree):
 *  - Symbols are bound from the fed values' dims; every needed node's dims
 *    then follow from its inferred shape.
 *  - A fed node is never evaluated, and its inputs are not needed for it
 *    (TensorFlow: any tensor can be fed).
 *  - Phase 1 evaluates every needed pure node in increasing id; a VARIABLE's
 *    value there is a snapshot of its stored value. Phase 2 applies the needed
 *    updates (ASSIGN, APPLY_*, GROUP) in increasing id; an update reading a
 *    VARIABLE reads its stored value at that moment. So a fetched variable
 *    shows the value before this run's updates, a fetched ASSIGN the new one.
 *    A pure node reading an update's result is refused (it would have to run
 *    between the phases); updates, GROUPs and fetches may read it.
 *  - Feeds are taken as given: no dtype check or conversion.
 *  - Everything that can fail is checked before phase 2, so a failed run
 *    changes no variable and no dropout counter.
 *  - The dropout run counter starts at 0 and advances after each successful
 *    run that drew at least one mask.
 *  - Variables are initialised when the interpreter is made, in id order;
 *    nodes added to the graph later (gradient checks do that) are taken in
 *    at the next run, new variables initialised then.
 *  - Values are doubles whatever the dtype: integer results are not wrapped
 *    to 32 or 64 bits, and f32 results are not rounded (except by CAST to f32
 *    and by the random ops, which draw float32 numbers as generated code does). */

struct fl_eval {
  const fl_graph *g;
  uint64_t seed;
  uint64_t dropout_runs; /* the `run` of flrt_dropout_mask: runs that drew a mask so far */
  int nnodes;            /* nodes of g seen so far (the graph may grow after creation) */
  fl_value *vars;        /* per node id; meaningful for VARIABLE nodes only */
  bool *var_ready;       /* per node id: the variable has been initialised */
};

/* The state of one run. */
typedef struct {
  fl_eval *ev;
  const fl_graph *g;
  char *err;
  size_t errlen;
  int64_t *sym_value; /* per symbol */
  int *sym_feed;      /* per symbol: the fed node that bound it, or -1 (unbound) */
  int *feed_of;       /* per node: index into the feeds, or -1 */
  bool *needed;
  bool *keep;       /* the value must outlive phase 1: fetched, or read by an update */
  int *last_reader; /* per node: the last pure node of phase 1 that reads it, or -1 */
  fl_value *vals;   /* per node: dims resolved for every needed node, data once computed */
  bool used_dropout;
} run_state;

/* ---- small helpers ------------------------------------------------------- */

static void *xcalloc(size_t count, size_t size) {
  void *p = calloc(count ? count : 1, size ? size : 1);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

int64_t fl_value_size(const fl_value *v) {
  int64_t n = 1;
  for (int k = 0; k < v->rank; k++) n *= v->dims[k];
  return n;
}

void fl_value_free(fl_value *v) {
  if (!v) return;
  free(v->data);
  v->data = NULL;
}

/* Gives v (whose dtype, rank and dims are set) zeroed storage. Never NULL, so
 * that empty tensors need no special cases in memcpy and friends. */
static void value_alloc(fl_value *v) {
  int64_t n = fl_value_size(v);
  free(v->data);
  v->data = xcalloc((size_t)(n > 0 ? n : 1), sizeof(double));
}

static void value_copy(fl_value *dst, const fl_value *src) {
  *dst = *src;
  dst->data = NULL;
  if (!src->data) return; /* a GROUP's empty value stays data-less */
  value_alloc(dst);
  memcpy(dst->data, src->data, (size_t)fl_value_size(src) * sizeof(double));
}

static bool same_dims(const fl_value *a, const fl_value *b) {
  if (a->rank != b->rank) return false;
  for (int k = 0; k < a->rank; k++)
    if (a->dims[k] != b->dims[k]) return false;
  return true;
}

static char *dims_str(int rank, const int64_t *dims, char *buf, size_t cap) {
  size_t used = (size_t)snprintf(buf, cap, "[");
  for (int k = 0; k < rank && used < cap; k++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%lld", k ? ", " : "", (long long)dims[k]);
  if (used < cap) snprintf(buf + used, cap - used, "]");
  return buf;
}

/* 'name' for named nodes, %ID for the others: how messages refer to a node. */
static const char *node_label(const fl_graph *g, int id, char *buf, size_t cap) {
  if (g->nodes[id].name)
    snprintf(buf, cap, "'%s'", g->nodes[id].name);
  else
    snprintf(buf, cap, "%%%d", id);
  return buf;
}

static int fail(run_state *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(run_state *r, const char *fmt, ...) {
  if (r->err && r->errlen > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, r->errlen, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* A failure of one node: "OP LABEL: MESSAGE". */
static int fail_node(run_state *r, int id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_node(run_state *r, int id, const char *fmt, ...) {
  char msg[512], label[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return fail(r, "%s %s: %s", fl_op_name(r->g->nodes[id].op),
              node_label(r->g, id, label, sizeof label), msg);
}

static bool is_integer(fl_dtype t) { return t == FL_I32 || t == FL_I64; }

/* x rounded to the nearest float, as a double; out-of-range values become
 * infinities (a plain (float) cast of those is undefined behaviour in C). */
static double round_to_float(double x) {
  if (isfinite(x) && fabs(x) >= 0x1.ffffffp127) return copysign(INFINITY, x);
  return (double)(float)x;
}

/* CAST's meaning, per target dtype. */
static double cast_to(fl_dtype t, double x) {
  switch (t) {
  case FL_BOOL: return x != 0.0;
  case FL_I32:
  case FL_I64: return trunc(x); /* toward zero, as C's conversion; NaN stays NaN */
  case FL_F32: return round_to_float(x);
  default: return x;
  }
}

/* ---- shapes at run time ---------------------------------------------------- */

/* Binds the symbols of node id's declared shape from a fed value's dims, or
 * checks them against earlier bindings. */
static int bind_feed(run_state *r, int id, const fl_value *fed) {
  const fl_graph *g = r->g;
  const fl_node *n = &g->nodes[id];
  char label[128], want[256], got[256];
  if (fed->rank < 0 || fed->rank > FL_MAX_RANK)
    return fail(r, "feed for %s: rank %d is out of range", node_label(g, id, label, sizeof label),
                fed->rank);
  for (int k = 0; k < fed->rank; k++)
    if (fed->dims[k] < 0)
      return fail(r, "feed for %s: negative dimension in %s",
                  node_label(g, id, label, sizeof label),
                  dims_str(fed->rank, fed->dims, got, sizeof got));
  if (fl_value_size(fed) > 0 && !fed->data)
    return fail(r, "feed for %s: no data", node_label(g, id, label, sizeof label));
  if (!n->shaped) return 0; /* nothing declared to compare with */

  bool matches = fed->rank == n->shape.rank;
  int conflict_sym = -1;
  for (int k = 0; matches && k < fed->rank; k++) {
    fl_dim d = n->shape.dims[k];
    int64_t v = fed->dims[k];
    if (fl_dim_is_const(d)) {
      matches = v == d.coef;
    } else if (d.coef <= 0 || v % d.coef != 0) {
      matches = false;
    } else if (r->sym_feed[d.sym] < 0) {
      r->sym_value[d.sym] = v / d.coef;
      r->sym_feed[d.sym] = id;
    } else if (r->sym_value[d.sym] != v / d.coef) {
      matches = false;
      conflict_sym = d.sym;
    }
  }
  if (matches) return 0;
  fl_shape_str(g, &n->shape, want, sizeof want);
  dims_str(fed->rank, fed->dims, got, sizeof got);
  node_label(g, id, label, sizeof label);
  if (conflict_sym >= 0) {
    char source[128];
    return fail(r, "feed for %s: expected shape %s, got %s (%s is %lld from the feed for %s)",
                label, want, got, g->syms[conflict_sym], (long long)r->sym_value[conflict_sym],
                node_label(g, r->sym_feed[conflict_sym], source, sizeof source));
  }
  return fail(r, "feed for %s: expected shape %s, got %s", label, want, got);
}

/* Sets v's dtype, rank and dims from node id's shape and the bound symbols. */
static int resolve_dims(run_state *r, int id, fl_value *v) {
  const fl_node *n = &r->g->nodes[id];
  char shape[256];
  v->dtype = n->dtype;
  v->rank = n->shape.rank;
  if (v->rank < 0 || v->rank > FL_MAX_RANK) return fail_node(r, id, "rank %d is out of range", v->rank);
  for (int k = 0; k < v->rank; k++) {
    fl_dim d = n->shape.dims[k];
    if (fl_dim_is_const(d)) {
      v->dims[k] = d.coef;
    } else if (d.sym >= r->g->nsyms) {
      return fail_node(r, id, "shape mentions unknown symbol #%d", d.sym);
    } else if (r->sym_feed[d.sym] < 0) {
      return fail_node(r, id, "shape %s uses the symbol %s, which no feed binds",
                       fl_shape_str(r->g, &n->shape, shape, sizeof shape), r->g->syms[d.sym]);
    } else {
      v->dims[k] = d.coef * r->sym_value[d.sym];
    }
    if (v->dims[k] < 0)
      return fail_node(r, id, "shape %s has a negative dimension",
                       fl_shape_str(r->g, &n->shape, shape, sizeof shape));
  }
  return 0;
}

/* Fewest inputs each op reads (GROUP: any number). */
static int op_arity(fl_op op) {
  switch (op) {
  case FL_OP_PLACEHOLDER: case FL_OP_VARIABLE: case FL_OP_CONST: case FL_OP_FILL:
  case FL_OP_RANDOM_UNIFORM: case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
  case FL_OP_GROUP:
    return 0;
  case FL_OP_NEG: case FL_OP_SQUARE: case FL_OP_SQRT: case FL_OP_LOG: case FL_OP_EXP:
  case FL_OP_RELU: case FL_OP_SIGMOID: case FL_OP_TANH: case FL_OP_CAST: case FL_OP_MAX_POOL:
  case FL_OP_RESHAPE: case FL_OP_BROADCAST: case FL_OP_SUM_TO: case FL_OP_REDUCE_SUM:
  case FL_OP_REDUCE_MEAN: case FL_OP_ARGMAX: case FL_OP_SOFTMAX: case FL_OP_MINIMIZE:
    return 1;
  case FL_OP_SOFTMAX_XENT_GRAD: case FL_OP_APPLY_MOMENTUM:
    return 3;
  case FL_OP_APPLY_ADAM:
    return 6;
  default:
    return 2;
  }
}

/* ---- broadcasting ------------------------------------------------------- */

/* Strides for reading a tensor of dims `in` at each axis of a tensor of dims
 * `out` it broadcasts to (numpy: trailing axes aligned; an axis of size 1 or a
 * missing leading axis repeats, stride 0). False when it does not broadcast. */
static bool broadcast_strides(int in_rank, const int64_t *in, int out_rank, const int64_t *out,
                              int64_t *strides) {
  if (in_rank > out_rank) return false;
  int64_t stride = 1;
  for (int k = out_rank - 1; k >= 0; k--) {
    int j = k - (out_rank - in_rank);
    if (j < 0) {
      strides[k] = 0;
    } else if (in[j] == out[k] && in[j] != 1) {
      strides[k] = stride;
      stride *= in[j];
    } else if (in[j] == 1) {
      strides[k] = 0;
    } else {
      return false;
    }
  }
  return true;
}

/* Walks the elements of a tensor in row-major order while keeping the offsets
 * of up to three other tensors read through broadcast strides. */
typedef struct {
  int rank;
  const int64_t *dims;
  int64_t index[FL_MAX_RANK];
  int count;
  int64_t offset[3];
  const int64_t *strides[3];
} walker;

static void walker_start(walker *w, int rank, const int64_t *dims) {
  memset(w, 0, sizeof *w);
  w->rank = rank;
  w->dims = dims;
}

static void walker_track(walker *w, const int64_t *strides) { w->strides[w->count++] = strides; }

static void walker_next(walker *w) {
  for (int k = w->rank - 1; k >= 0; k--) {
    w->index[k]++;
    for (int t = 0; t < w->count; t++) w->offset[t] += w->strides[t][k];
    if (w->index[k] < w->dims[k]) return;
    for (int t = 0; t < w->count; t++) w->offset[t] -= w->strides[t][k] * w->dims[k];
    w->index[k] = 0;
  }
}

/* ---- evaluation of pure ops --------------------------------------------------- */

static const fl_value *input(run_state *r, const fl_node *n, int k) {
  return &r->vals[n->inputs[k]];
}

/* Integer division, truncating toward zero (the divisor is known nonzero). */
static double int_div(double x, double y) {
  if (fabs(x) < 0x1p62 && fabs(y) < 0x1p62) return (double)((int64_t)x / (int64_t)y);
  return trunc(x / y);
}

static int eval_binary(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *a = input(r, n, 0), *b = input(r, n, 1);
  int64_t a_strides[FL_MAX_RANK], b_strides[FL_MAX_RANK];
  if (!broadcast_strides(a->rank, a->dims, out->rank, out->dims, a_strides) ||
      !broadcast_strides(b->rank, b->dims, out->rank, out->dims, b_strides)) {
    char sa[256], sb[256], so[256];
    return fail_node(r, n->id, "cannot broadcast %s and %s to %s",
                     dims_str(a->rank, a->dims, sa, sizeof sa),
                     dims_str(b->rank, b->dims, sb, sizeof sb),
                     dims_str(out->rank, out->dims, so, sizeof so));
  }
  const bool integer_div = n->op == FL_OP_DIV && is_integer(n->dtype);
  value_alloc(out);
  walker w;
  walker_start(&w, out->rank, out->dims);
  walker_track(&w, a_strides);
  walker_track(&w, b_strides);
  for (int64_t i = 0, size = fl_value_size(out); i < size; i++, walker_next(&w)) {
    double x = a->data[w.offset[0]], y = b->data[w.offset[1]], z;
    switch (n->op) {
    case FL_OP_ADD: z = x + y; break;
    case FL_OP_SUB: z = x - y; break;
    case FL_OP_MUL: z = x * y; break;
    case FL_OP_DIV:
      if (integer_div && y == 0.0) return fail_node(r, n->id, "integer division by zero");
      z = integer_div ? int_div(x, y) : x / y;
      break;
    case FL_OP_RELU_GRAD: z = y > 0.0 ? x : 0.0; break; /* (dy, y) */
    case FL_OP_EQUAL: z = x == y; break;
    default: return fail_node(r, n->id, "not a binary op");
    }
    out->data[i] = z;
  }
  return 0;
}

static double sigmoid(double x) {
  /* Both branches avoid exp overflow for large |x|. */
  if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

static int eval_unary(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *a = input(r, n, 0);
  if (fl_value_size(a) != fl_value_size(out))
    return fail_node(r, n->id, "input has %lld elements, the result %lld",
                     (long long)fl_value_size(a), (long long)fl_value_size(out));
  value_alloc(out);
  for (int64_t i = 0, size = fl_value_size(out); i < size; i++) {
    double x = a->data[i], z;
    switch (n->op) {
    case FL_OP_NEG: z = -x; break;
    case FL_OP_SQUARE: z = x * x; break;
    case FL_OP_SQRT: z = sqrt(x); break;
    case FL_OP_LOG: z = log(x); break;
    case FL_OP_EXP: z = exp(x); break;
    case FL_OP_RELU: z = x > 0.0 ? x : 0.0; break;
    case FL_OP_SIGMOID: z = sigmoid(x); break;
    case FL_OP_TANH: z = tanh(x); break;
    case FL_OP_CAST: z = cast_to(n->dtype, x); break;
    default: return fail_node(r, n->id, "not a unary op");
    }
    out->data[i] = z;
  }
  return 0;
}

static int eval_matmul(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *a = input(r, n, 0), *b = input(r, n, 1);
  if (a->rank != 2 || b->rank != 2 || out->rank != 2)
    return fail_node(r, n->id, "operands must be matrices");
  const bool ta = n->attr.transpose_a, tb = n->attr.transpose_b;
  const int64_t m = ta ? a->dims[1] : a->dims[0], k = ta ? a->dims[0] : a->dims[1];
  const int64_t kb = tb ? b->dims[1] : b->dims[0], cols = tb ? b->dims[0] : b->dims[1];
  if (k != kb || out->dims[0] != m || out->dims[1] != cols) {
    char sa[64], sb[64], so[64];
    return fail_node(r, n->id, "%s x %s (transpose %d, %d) does not give %s",
                     dims_str(2, a->dims, sa, sizeof sa), dims_str(2, b->dims, sb, sizeof sb),
                     ta, tb, dims_str(2, out->dims, so, sizeof so));
  }
  value_alloc(out);
  for (int64_t i = 0; i < m; i++)
    for (int64_t p = 0; p < k; p++) {
      const double a_ip = ta ? a->data[p * a->dims[1] + i] : a->data[i * a->dims[1] + p];
      double *out_row = &out->data[i * cols];
      for (int64_t j = 0; j < cols; j++)
        out_row[j] += a_ip * (tb ? b->data[j * b->dims[1] + p] : b->data[p * b->dims[1] + j]);
    }
  return 0;
}

/* TensorFlow's output size and leading padding along one spatial axis.
 * SAME: out = ceil(in / stride); the padding needed, (out - 1) * stride + k - in,
 * is split with the smaller half before. VALID: out = ceil((in - k + 1) / stride). */
static void window_geometry(int64_t in, int64_t k, int64_t stride, fl_padding padding,
                            int64_t *out, int64_t *pad_before) {
  if (padding == FL_PAD_SAME) {
    *out = (in + stride - 1) / stride;
    int64_t pad_total = (*out - 1) * stride + k - in;
    *pad_before = pad_total > 0 ? pad_total / 2 : 0;
  } else {
    *out = in >= k ? (in - k + stride) / stride : 0;
    *pad_before = 0;
  }
}

/* The sizes of a 2-D convolution or pooling: x [n, h, w, c], windows kh x kw,
 * output [n, oh, ow, *]. */
typedef struct {
  int64_t n, h, w, c;
  int64_t kh, kw, o; /* filter [kh, kw, c, o] (pooling: o = c) */
  int64_t oh, ow;
  int64_t sh, sw;
  int64_t pad_top, pad_left;
} window_geom;

/* Checks that x, the window and y agree with TensorFlow's size rules. */
static int window_setup(run_state *r, const fl_node *n, const int64_t *x, int64_t kh, int64_t kw,
                        const int64_t *y, window_geom *geom) {
  const int sh = n->attr.strides[0], sw = n->attr.strides[1];
  if (sh < 1 || sw < 1) return fail_node(r, n->id, "strides (%d, %d) must be positive", sh, sw);
  if (kh < 1 || kw < 1)
    return fail_node(r, n->id, "window %lld x %lld must be nonempty", (long long)kh, (long long)kw);
  *geom = (window_geom){.n = x[0], .h = x[1], .w = x[2], .c = x[3], .kh = kh, .kw = kw,
                        .o = y[3], .sh = sh, .sw = sw};
  window_geometry(geom->h, kh, sh, n->attr.padding, &geom->oh, &geom->pad_top);
  window_geometry(geom->w, kw, sw, n->attr.padding, &geom->ow, &geom->pad_left);
  if (y[0] != geom->n || y[1] != geom->oh || y[2] != geom->ow) {
    char sx[128], sy[128];
    return fail_node(r, n->id, "input %s with a %lld x %lld window, strides (%d, %d), %s padding "
                               "gives [%lld, %lld, %lld, _], not %s",
                     dims_str(4, x, sx, sizeof sx), (long long)kh, (long long)kw, sh, sw,
                     n->attr.padding == FL_PAD_SAME ? "SAME" : "VALID", (long long)geom->n,
                     (long long)geom->oh, (long long)geom->ow, dims_str(4, y, sy, sizeof sy));
  }
  return 0;
}

typedef enum { CONV_FORWARD, CONV_GRAD_INPUT, CONV_GRAD_FILTER } conv_mode;

/* One loop nest for the convolution and both of its gradients, so that they
 * are exact adjoints by construction:
 *   y[n, oy, ox, o] = sum over ky, kx, c of x[n, iy, ix, c] * w[ky, kx, c, o]
 * with iy = oy * sh + ky - pad_top, ix = ox * sw + kx - pad_left, and x = 0
 * outside the image (zero padding). Accumulates into the written operand. */
static void conv_loops(const window_geom *gm, conv_mode mode, double *x, double *w, double *y) {
  for (int64_t b = 0; b < gm->n; b++)
    for (int64_t oy = 0; oy < gm->oh; oy++)
      for (int64_t ox = 0; ox < gm->ow; ox++) {
        double *y_pixel = &y[((b * gm->oh + oy) * gm->ow + ox) * gm->o];
        for (int64_t ky = 0; ky < gm->kh; ky++) {
          const int64_t iy = oy * gm->sh + ky - gm->pad_top;
          if (iy < 0 || iy >= gm->h) continue;
          for (int64_t kx = 0; kx < gm->kw; kx++) {
            const int64_t ix = ox * gm->sw + kx - gm->pad_left;
            if (ix < 0 || ix >= gm->w) continue;
            double *x_pixel = &x[((b * gm->h + iy) * gm->w + ix) * gm->c];
            for (int64_t c = 0; c < gm->c; c++) {
              double *w_row = &w[((ky * gm->kw + kx) * gm->c + c) * gm->o];
              switch (mode) {
              case CONV_FORWARD:
                for (int64_t o = 0; o < gm->o; o++) y_pixel[o] += x_pixel[c] * w_row[o];
                break;
              case CONV_GRAD_INPUT:
                for (int64_t o = 0; o < gm->o; o++) x_pixel[c] += y_pixel[o] * w_row[o];
                break;
              case CONV_GRAD_FILTER:
                for (int64_t o = 0; o < gm->o; o++) w_row[o] += x_pixel[c] * y_pixel[o];
                break;
              }
            }
          }
        }
      }
}

static int eval_conv(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *in0 = input(r, n, 0), *in1 = input(r, n, 1);
  const fl_value *x, *w, *y;
  conv_mode mode;
  switch (n->op) {
  case FL_OP_CONV2D: x = in0, w = in1, y = out, mode = CONV_FORWARD; break;
  case FL_OP_CONV2D_GRAD_INPUT: x = out, w = in1, y = in0, mode = CONV_GRAD_INPUT; break;
  default: x = in0, w = out, y = in1, mode = CONV_GRAD_FILTER; break;
  }
  if (x->rank != 4 || w->rank != 4 || y->rank != 4)
    return fail_node(r, n->id, "input, filter and output must have rank 4");
  if (w->dims[2] != x->dims[3] || w->dims[3] != y->dims[3]) {
    char sx[128], sw[128], sy[128];
    return fail_node(r, n->id, "channels of input %s, filter %s and output %s disagree",
                     dims_str(4, x->dims, sx, sizeof sx), dims_str(4, w->dims, sw, sizeof sw),
                     dims_str(4, y->dims, sy, sizeof sy));
  }
  window_geom gm;
  if (window_setup(r, n, x->dims, w->dims[0], w->dims[1], y->dims, &gm) < 0) return -1;
  value_alloc(out);
  conv_loops(&gm, mode, x->data, w->data, y->data);
  return 0;
}

/* The flat index into x of the maximum of the pooling window of output cell
 * (b, oy, ox, c), or -1 for a window wholly in the padding (which SAME never
 * makes). Padded cells take no part (as if -inf).
 * Tie rule: the FIRST maximum in row-major window order (ky, then kx) wins; a
 * later cell replaces it only when strictly greater. MAX_POOL_GRAD routes dy
 * to this cell, TensorFlow's CPU kernel does the same, and generated code
 * must do the same. */
static int64_t pool_argmax(const window_geom *gm, const double *x, int64_t b, int64_t oy,
                           int64_t ox, int64_t c) {
  int64_t best = -1;
  for (int64_t ky = 0; ky < gm->kh; ky++) {
    const int64_t iy = oy * gm->sh + ky - gm->pad_top;
    if (iy < 0 || iy >= gm->h) continue;
    for (int64_t kx = 0; kx < gm->kw; kx++) {
      const int64_t ix = ox * gm->sw + kx - gm->pad_left;
      if (ix < 0 || ix >= gm->w) continue;
      const int64_t at = ((b * gm->h + iy) * gm->w + ix) * gm->c + c;
      if (best < 0 || x[at] > x[best]) best = at;
    }
  }
  return best;
}

/* MAX_POOL (x) -> y, and MAX_POOL_GRAD (x, dy) -> dx. */
static int eval_pool(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *x = input(r, n, 0);
  const fl_value *y = n->op == FL_OP_MAX_POOL ? out : input(r, n, 1);
  if (x->rank != 4 || y->rank != 4 || out->rank != 4)
    return fail_node(r, n->id, "input and output must have rank 4");
  if (y->dims[3] != x->dims[3]) return fail_node(r, n->id, "channels of input and output disagree");
  if (n->op == FL_OP_MAX_POOL_GRAD && !same_dims(out, x))
    return fail_node(r, n->id, "the gradient must have the input's shape");
  window_geom gm;
  if (window_setup(r, n, x->dims, n->attr.ksize[0], n->attr.ksize[1], y->dims, &gm) < 0) return -1;
  value_alloc(out);
  for (int64_t b = 0; b < gm.n; b++)
    for (int64_t oy = 0; oy < gm.oh; oy++)
      for (int64_t ox = 0; ox < gm.ow; ox++)
        for (int64_t c = 0; c < gm.c; c++) {
          const int64_t y_at = ((b * gm.oh + oy) * gm.ow + ox) * gm.c + c;
          const int64_t best = pool_argmax(&gm, x->data, b, oy, ox, c);
          if (n->op == FL_OP_MAX_POOL)
            out->data[y_at] = best >= 0 ? x->data[best] : -INFINITY;
          else if (best >= 0)
            out->data[best] += y->data[y_at];
        }
  return 0;
}

/* BROADCAST (x) to the node's dims, and SUM_TO (x) down to them: adjoints. */
static int eval_broadcast_or_sum(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *x = input(r, n, 0);
  const bool broadcast = n->op == FL_OP_BROADCAST;
  const fl_value *small = broadcast ? x : out, *big = broadcast ? out : x;
  int64_t strides[FL_MAX_RANK];
  if (!broadcast_strides(small->rank, small->dims, big->rank, big->dims, strides)) {
    char ss[256], sb[256];
    return fail_node(r, n->id, "%s does not broadcast to %s",
                     dims_str(small->rank, small->dims, ss, sizeof ss),
                     dims_str(big->rank, big->dims, sb, sizeof sb));
  }
  value_alloc(out);
  const int64_t big_size = fl_value_size(big), small_size = fl_value_size(small);
  /* reduce_mean's gradient: each copy is divided by the number of copies. */
  const double copies =
      broadcast && n->attr.mean && small_size > 0 ? (double)big_size / (double)small_size : 1.0;
  walker w;
  walker_start(&w, big->rank, big->dims);
  walker_track(&w, strides);
  for (int64_t i = 0; i < big_size; i++, walker_next(&w)) {
    if (broadcast)
      out->data[i] = x->data[w.offset[0]] / copies;
    else
      out->data[w.offset[0]] += x->data[i];
  }
  return 0;
}

/* REDUCE_SUM and REDUCE_MEAN over attr.axes (none: all), keepdims or not. */
static int eval_reduce(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *x = input(r, n, 0);
  bool reduced[FL_MAX_RANK] = {false};
  for (int i = 0; i < n->attr.naxes; i++) {
    int axis = n->attr.axes[i] < 0 ? n->attr.axes[i] + x->rank : n->attr.axes[i];
    if (axis < 0 || axis >= x->rank)
      return fail_node(r, n->id, "axis %d is out of range for rank %d", n->attr.axes[i], x->rank);
    reduced[axis] = true;
  }
  if (n->attr.naxes == 0)
    for (int k = 0; k < x->rank; k++) reduced[k] = true;

  /* The result's expected dims, and where each input axis lands in it. */
  fl_value expected = {.rank = 0};
  int64_t out_strides[FL_MAX_RANK], stride = 1, count = 1;
  for (int k = 0; k < x->rank; k++)
    if (!reduced[k] || n->attr.keepdims) expected.dims[expected.rank++] = reduced[k] ? 1 : x->dims[k];
  for (int k = x->rank - 1; k >= 0; k--) {
    out_strides[k] = reduced[k] ? 0 : stride;
    if (reduced[k])
      count *= x->dims[k];
    else
      stride *= x->dims[k];
  }
  if (!same_dims(&expected, out)) {
    char se[256], so[256];
    return fail_node(r, n->id, "expected result %s, the node's shape is %s",
                     dims_str(expected.rank, expected.dims, se, sizeof se),
                     dims_str(out->rank, out->dims, so, sizeof so));
  }
  if (n->op == FL_OP_REDUCE_MEAN && is_integer(n->dtype) && count == 0)
    return fail_node(r, n->id, "integer mean of no elements");
  value_alloc(out);
  walker w;
  walker_start(&w, x->rank, x->dims);
  walker_track(&w, out_strides);
  for (int64_t i = 0, size = fl_value_size(x); i < size; i++, walker_next(&w))
    out->data[w.offset[0]] += x->data[i];
  if (n->op == FL_OP_REDUCE_MEAN)
    for (int64_t i = 0, size = fl_value_size(out); i < size; i++) {
      double mean = out->data[i] / (double)count; /* 0/0 = NaN for an empty float mean, as TF */
      out->data[i] = is_integer(n->dtype) ? trunc(mean) : mean;
    }
  return 0;
}

/* ARGMAX along attr.axes[0]: the index of the first maximum. */
static int eval_argmax(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *x = input(r, n, 0);
  const int axis = n->attr.axes[0] < 0 ? n->attr.axes[0] + x->rank : n->attr.axes[0];
  if (axis < 0 || axis >= x->rank)
    return fail_node(r, n->id, "axis %d is out of range for rank %d", n->attr.axes[0], x->rank);
  fl_value expected = {.rank = 0};
  int64_t outer = 1, inner = 1;
  for (int k = 0; k < x->rank; k++) {
    if (k != axis) expected.dims[expected.rank++] = x->dims[k];
    if (k < axis) outer *= x->dims[k];
    if (k > axis) inner *= x->dims[k];
  }
  if (!same_dims(&expected, out)) return fail_node(r, n->id, "result shape disagrees with the input");
  const int64_t len = x->dims[axis];
  if (len == 0 && outer * inner > 0) return fail_node(r, n->id, "argmax over an empty axis");
  value_alloc(out);
  for (int64_t a = 0; a < outer; a++)
    for (int64_t b = 0; b < inner; b++) {
      const double *row = &x->data[a * len * inner + b];
      int64_t best = 0;
      for (int64_t i = 1; i < len; i++)
        if (row[i * inner] > row[best * inner]) best = i;
      out->data[a * inner + b] = (double)best;
    }
  return 0;
}

/* The maximum of one row and the sum of exp(z - max): softmax(z) = exp(z -
 * max) / sum and log_softmax(z) = z - max - log(sum), both exact in z - max
 * and free of overflow. */
static void softmax_row_stats(const double *z, int64_t len, double *max_out, double *sum_out) {
  double max = -INFINITY, sum = 0.0;
  for (int64_t i = 0; i < len; i++)
    if (z[i] > max) max = z[i];
  for (int64_t i = 0; i < len; i++) sum += exp(z[i] - max);
  *max_out = max;
  *sum_out = sum;
}

/* SOFTMAX, SOFTMAX_XENT (labels, logits) and SOFTMAX_XENT_GRAD (labels,
 * logits, dy), all per row over the last axis. */
static int eval_softmax_family(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *logits = input(r, n, n->op == FL_OP_SOFTMAX ? 0 : 1);
  const fl_value *labels = n->op == FL_OP_SOFTMAX ? NULL : input(r, n, 0);
  if (logits->rank < 1) return fail_node(r, n->id, "logits must have rank 1 or more");
  if (labels && !same_dims(labels, logits)) {
    char sl[256], sz[256];
    return fail_node(r, n->id, "labels %s and logits %s differ in shape",
                     dims_str(labels->rank, labels->dims, sl, sizeof sl),
                     dims_str(logits->rank, logits->dims, sz, sizeof sz));
  }
  fl_value rows_shape = *logits; /* logits without the last axis: one value per row */
  rows_shape.rank--;
  const fl_value *dy = n->op == FL_OP_SOFTMAX_XENT_GRAD ? input(r, n, 2) : NULL;
  if (dy && !same_dims(dy, &rows_shape)) return fail_node(r, n->id, "dy must have one value per row");
  const fl_value *expected = n->op == FL_OP_SOFTMAX_XENT ? &rows_shape : logits;
  if (!same_dims(out, expected)) return fail_node(r, n->id, "result shape disagrees with the logits");

  const int64_t len = logits->dims[logits->rank - 1], rows = fl_value_size(&rows_shape);
  value_alloc(out);
  for (int64_t row = 0; row < rows && len > 0; row++) {
    const double *z = &logits->data[row * len];
    double max, sum;
    softmax_row_stats(z, len, &max, &sum);
    if (n->op == FL_OP_SOFTMAX_XENT) {
      const double *y = &labels->data[row * len], log_sum = log(sum);
      double loss = 0.0;
      for (int64_t i = 0; i < len; i++)
        if (y[i] != 0.0) loss -= y[i] * (z[i] - max - log_sum); /* 0 * -inf would be NaN */
      out->data[row] = loss;
    } else {
      double *p = &out->data[row * len];
      for (int64_t i = 0; i < len; i++) p[i] = exp(z[i] - max) / sum;
      if (n->op == FL_OP_SOFTMAX_XENT_GRAD)
        for (int64_t i = 0; i < len; i++) p[i] = (p[i] - labels->data[row * len + i]) * dy->data[row];
    }
  }
  return 0;
}

/* A float buffer for the runtime's RNG: values are drawn in float32 exactly
 * as generated code draws them, then widened. */
static float *float_buffer(int64_t size) { return xcalloc((size_t)(size > 0 ? size : 1), sizeof(float)); }

static void widen_floats(const float *from, fl_value *to) {
  for (int64_t i = 0, size = fl_value_size(to); i < size; i++) to->data[i] = (double)from[i];
}

static int eval_random(run_state *r, const fl_node *n, fl_value *out) {
  if (n->attr.stream < 0) return fail_node(r, n->id, "has no RNG stream");
  const int64_t size = fl_value_size(out);
  const uint32_t stream = (uint32_t)n->attr.stream;
  const float a = (float)round_to_float(n->attr.a), b = (float)round_to_float(n->attr.b);
  float *draws = float_buffer(size);
  switch (n->op) {
  case FL_OP_RANDOM_UNIFORM: flrt_fill_uniform(draws, (size_t)size, a, b, r->ev->seed, stream); break;
  case FL_OP_TRUNCATED_NORMAL:
    flrt_fill_truncated_normal(draws, (size_t)size, a, b, r->ev->seed, stream);
    break;
  default: flrt_fill_normal(draws, (size_t)size, a, b, r->ev->seed, stream); break;
  }
  value_alloc(out);
  widen_floats(draws, out);
  free(draws);
  return 0;
}

/* DROPOUT_MASK (x, keep_prob): 1/keep_prob or 0 per element. Every mask node
 * of one run uses the same run counter, each with its own stream. */
static int eval_dropout(run_state *r, const fl_node *n, fl_value *out) {
  const fl_value *x = input(r, n, 0), *keep_prob = input(r, n, 1);
  if (n->attr.stream < 0) return fail_node(r, n->id, "has no RNG stream");
  if (fl_value_size(keep_prob) != 1) return fail_node(r, n->id, "keep_prob must be a scalar");
  if (!same_dims(x, out)) return fail_node(r, n->id, "the mask must have the input's shape");
  const int64_t size = fl_value_size(out);
  float *mask = float_buffer(size);
  flrt_dropout_mask(mask, (size_t)size, (float)round_to_float(keep_prob->data[0]), r->ev->seed,
                    (uint32_t)n->attr.stream, r->ev->dropout_runs);
  value_alloc(out);
  widen_floats(mask, out);
  free(mask);
  r->used_dropout = true;
  return 0;
}

static int eval_pure(run_state *r, int id) {
  const fl_node *n = &r->g->nodes[id];
  fl_value *out = &r->vals[id];
  switch (n->op) {
  case FL_OP_VARIABLE: {
    /* A snapshot: the updates of phase 2 must not show through. */
    const fl_value *stored = &r->ev->vars[id];
    if (!same_dims(stored, out)) return fail_node(r, id, "stored value has another shape");
    value_copy(out, stored);
    return 0;
  }
  case FL_OP_CONST: {
    const int64_t size = fl_value_size(out);
    if (fl_shape_const_size(&n->attr.target) != size || (size > 0 && !n->attr.data))
      return fail_node(r, id, "data does not fill the node's shape");
    value_alloc(out);
    if (size > 0) memcpy(out->data, n->attr.data, (size_t)size * sizeof(double));
    return 0;
  }
  case FL_OP_FILL:
    value_alloc(out);
    for (int64_t i = 0, size = fl_value_size(out); i < size; i++) out->data[i] = n->attr.value;
    return 0;
  case FL_OP_RANDOM_UNIFORM: case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
    return eval_random(r, n, out);
  case FL_OP_ADD: case FL_OP_SUB: case FL_OP_MUL: case FL_OP_DIV: case FL_OP_RELU_GRAD:
  case FL_OP_EQUAL:
    return eval_binary(r, n, out);
  case FL_OP_NEG: case FL_OP_SQUARE: case FL_OP_SQRT: case FL_OP_LOG: case FL_OP_EXP:
  case FL_OP_RELU: case FL_OP_SIGMOID: case FL_OP_TANH: case FL_OP_CAST:
    return eval_unary(r, n, out);
  case FL_OP_MATMUL:
    return eval_matmul(r, n, out);
  case FL_OP_CONV2D: case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER:
    return eval_conv(r, n, out);
  case FL_OP_MAX_POOL: case FL_OP_MAX_POOL_GRAD:
    return eval_pool(r, n, out);
  case FL_OP_RESHAPE: {
    const fl_value *x = input(r, n, 0);
    if (fl_value_size(x) != fl_value_size(out))
      return fail_node(r, id, "%lld elements cannot become %lld", (long long)fl_value_size(x),
                       (long long)fl_value_size(out));
    value_alloc(out);
    memcpy(out->data, x->data, (size_t)fl_value_size(x) * sizeof(double));
    return 0;
  }
  case FL_OP_BROADCAST: case FL_OP_SUM_TO:
    return eval_broadcast_or_sum(r, n, out);
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN:
    return eval_reduce(r, n, out);
  case FL_OP_ARGMAX:
    return eval_argmax(r, n, out);
  case FL_OP_SOFTMAX: case FL_OP_SOFTMAX_XENT: case FL_OP_SOFTMAX_XENT_GRAD:
    return eval_softmax_family(r, n, out);
  case FL_OP_DROPOUT_MASK:
    return eval_dropout(r, n, out);
  default:
    return fail_node(r, id, "the interpreter cannot evaluate this op here");
  }
}

/* ---- updates (phase 2) ---------------------------------------------------- */

/* How many leading inputs of an update are variables it writes. */
static int update_ref_count(fl_op op) {
  switch (op) {
  case FL_OP_ASSIGN: case FL_OP_APPLY_SGD: return 1;
  case FL_OP_APPLY_MOMENTUM: return 2;
  case FL_OP_APPLY_ADAM: return 3;
  default: return 0;
  }
}

/* An input as an update reads it: a fed value, a variable's current stored
 * value, or the value computed for the node. */
static const fl_value *update_input(run_state *r, const fl_node *n, int k) {
  const int j = n->inputs[k];
  if (r->feed_of[j] < 0 && r->g->nodes[j].op == FL_OP_VARIABLE) return &r->ev->vars[j];
  return &r->vals[j];
}

/* Everything an update could object to, checked before any update runs. */
static int check_update(run_state *r, int id) {
  const fl_node *n = &r->g->nodes[id];
  const int refs = update_ref_count(n->op);
  if (refs == 0) return 0; /* GROUP */
  char label[128];
  for (int k = 0; k < refs; k++) {
    const int j = n->inputs[k];
    if (r->g->nodes[j].op != FL_OP_VARIABLE || !r->ev->var_ready[j])
      return fail_node(r, id, "input %d (%s) is not an initialised variable", k,
                       node_label(r->g, j, label, sizeof label));
  }
  /* The written variables, and the value or gradient, share one shape. */
  const fl_value *var = &r->ev->vars[n->inputs[0]];
  const int operands = n->op == FL_OP_APPLY_ADAM ? 4 : refs + 1;
  for (int k = 0; k < operands; k++) {
    const fl_value *v = k < refs ? &r->ev->vars[n->inputs[k]] : update_input(r, n, k);
    if (!same_dims(v, var)) {
      char sv[256], so[256];
      return fail_node(r, id, "input %d (%s) has shape %s, the variable %s", k,
                       node_label(r->g, n->inputs[k], label, sizeof label),
                       dims_str(v->rank, v->dims, so, sizeof so),
                       dims_str(var->rank, var->dims, sv, sizeof sv));
    }
  }
  if (n->op == FL_OP_APPLY_ADAM)
    for (int k = 4; k < 6; k++)
      if (fl_value_size(update_input(r, n, k)) != 1)
        return fail_node(r, id, "input %d (%s) must be a scalar", k,
                         node_label(r->g, n->inputs[k], label, sizeof label));
  return 0;
}

/* Applies one update (checked already: cannot fail). Its value is the
 * written variable's new value (GROUP: an empty value). */
static void apply_update(run_state *r, int id) {
  const fl_node *n = &r->g->nodes[id];
  fl_value *out = &r->vals[id];
  if (n->op == FL_OP_GROUP) {
    *out = (fl_value){.dtype = n->dtype, .rank = 1, .dims = {0}, .data = NULL};
    return;
  }
  fl_value *var = &r->ev->vars[n->inputs[0]];
  const int64_t size = fl_value_size(var);
  double *w = var->data;
  switch (n->op) {
  case FL_OP_ASSIGN: {
    const double *value = update_input(r, n, 1)->data;
    memmove(w, value, (size_t)size * sizeof(double)); /* memmove: assign(v, v) */
    break;
  }
  case FL_OP_APPLY_SGD: {
    const double *grad = update_input(r, n, 1)->data;
    for (int64_t i = 0; i < size; i++) w[i] -= n->attr.lr * grad[i];
    break;
  }
  case FL_OP_APPLY_MOMENTUM: {
    double *accum = r->ev->vars[n->inputs[1]].data;
    const double *grad = update_input(r, n, 2)->data;
    for (int64_t i = 0; i < size; i++) {
      accum[i] = n->attr.momentum * accum[i] + grad[i];
      w[i] -= n->attr.lr * accum[i];
    }
    break;
  }
  case FL_OP_APPLY_ADAM: {
    double *m = r->ev->vars[n->inputs[1]].data, *v = r->ev->vars[n->inputs[2]].data;
    const double *grad = update_input(r, n, 3)->data;
    const double beta1_power = update_input(r, n, 4)->data[0];
    const double beta2_power = update_input(r, n, 5)->data[0];
    const double b1 = n->attr.beta1, b2 = n->attr.beta2;
    /* TensorFlow's Adam: the bias corrections folded into the step size. */
    const double lr_t = n->attr.lr * sqrt(1.0 - beta2_power) / (1.0 - beta1_power);
    for (int64_t i = 0; i < size; i++) {
      m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
      v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
      w[i] -= lr_t * m[i] / (sqrt(v[i]) + n->attr.epsilon);
    }
    break;
  }
  default:
    break;
  }
  fl_value_free(out);
  value_copy(out, var);
  out->dtype = n->dtype;
}

/* ---- a run ---------------------------------------------------------------- */

static void run_free(run_state *r) {
  if (r->vals)
    for (int i = 0; i < r->g->nnodes; i++) fl_value_free(&r->vals[i]);
  free(r->vals);
  free(r->sym_value);
  free(r->sym_feed);
  free(r->feed_of);
  free(r->needed);
  free(r->keep);
  free(r->last_reader);
}

/* Marks what the fetches need, walking inputs from the highest id down (ids
 * are a topological order); a fed node needs nothing. */
static int mark_needed(run_state *r, const int *fetches, int nfetches) {
  const fl_graph *g = r->g;
  char label[128], reader[128];
  for (int f = 0; f < nfetches; f++) r->needed[fetches[f]] = true;
  for (int id = g->nnodes - 1; id >= 0; id--) {
    const fl_node *n = &g->nodes[id];
    if (!r->needed[id] || r->feed_of[id] >= 0) continue;
    for (int k = 0; k < n->ninputs; k++) {
      const int j = n->inputs[k];
      if (j < 0 || j >= id) return fail_node(r, id, "input %d is node %d, not an earlier node", k, j);
      /* Pure nodes run before every update, so one cannot read an update's result. */
      if (!fl_op_has_side_effect(n->op) && fl_op_has_side_effect(g->nodes[j].op) &&
          r->feed_of[j] < 0)
        return fail(r, "%s %s reads the result of %s %s; only updates and fetches may",
                    fl_op_name(n->op), node_label(g, id, reader, sizeof reader),
                    fl_op_name(g->nodes[j].op), node_label(g, j, label, sizeof label));
      r->needed[j] = true;
    }
  }
  return 0;
}

/* Resolves the dims of every needed node and checks all that can be checked
 * before anything is evaluated. */
static int check_needed(run_state *r) {
  const fl_graph *g = r->g;
  char label[128];
  /* Unfed placeholders first: the likeliest mistake, and the clearest message. */
  for (int id = 0; id < g->nnodes; id++)
    if (r->needed[id] && r->feed_of[id] < 0 && g->nodes[id].op == FL_OP_PLACEHOLDER)
      return fail(r, "placeholder %s is not fed", node_label(g, id, label, sizeof label));
  for (int id = 0; id < g->nnodes; id++) {
    const fl_node *n = &g->nodes[id];
    if (!r->needed[id] || r->feed_of[id] >= 0) continue;
    if (n->op == FL_OP_MINIMIZE)
      return fail_node(r, id, "was not lowered to updates (fl_autodiff does that)");
    if (n->ninputs < op_arity(n->op))
      return fail_node(r, id, "has %d inputs, needs %d", n->ninputs, op_arity(n->op));
    if (n->op == FL_OP_VARIABLE && !r->ev->var_ready[id])
      return fail_node(r, id, "is read before it is initialised");
    if (n->op == FL_OP_GROUP) {
      r->vals[id] = (fl_value){.dtype = n->dtype, .rank = 1, .dims = {0}};
      continue;
    }
    if (!n->shaped) return fail_node(r, id, "has no inferred shape (fl_infer_shapes)");
    if (resolve_dims(r, id, &r->vals[id]) < 0) return -1;
    if (fl_op_has_side_effect(n->op) && check_update(r, id) < 0) return -1;
  }
  return 0;
}

/* Which values phase 1 may free, and when: a value read only by pure nodes
 * dies after its last reader. */
static void plan_lifetimes(run_state *r, const int *fetches, int nfetches) {
  const fl_graph *g = r->g;
  for (int id = 0; id < g->nnodes; id++) r->last_reader[id] = -1;
  for (int f = 0; f < nfetches; f++) r->keep[fetches[f]] = true;
  for (int id = 0; id < g->nnodes; id++) {
    const fl_node *n = &g->nodes[id];
    if (!r->needed[id] || r->feed_of[id] >= 0) continue;
    for (int k = 0; k < n->ninputs; k++) {
      if (fl_op_has_side_effect(n->op))
        r->keep[n->inputs[k]] = true;
      else
        r->last_reader[n->inputs[k]] = id;
    }
  }
}

/* One run (see the top of the file). *used_dropout tells whether it drew
 * dropout masks, so that the caller can advance the run counter. */
static int run_graph(fl_eval *ev, const int *feed_nodes, const fl_value *feed_values, int nfeeds,
                     const int *fetches, int nfetches, fl_value *out, char *err, size_t errlen,
                     bool *used_dropout) {
  const fl_graph *g = ev->g;
  const int nnodes = g->nnodes;
  run_state state = {.ev = ev, .g = g, .err = err, .errlen = errlen}, *r = &state;
  r->sym_value = xcalloc((size_t)g->nsyms, sizeof *r->sym_value);
  r->sym_feed = xcalloc((size_t)g->nsyms, sizeof *r->sym_feed);
  r->feed_of = xcalloc((size_t)nnodes, sizeof *r->feed_of);
  r->needed = xcalloc((size_t)nnodes, sizeof *r->needed);
  r->keep = xcalloc((size_t)nnodes, sizeof *r->keep);
  r->last_reader = xcalloc((size_t)nnodes, sizeof *r->last_reader);
  r->vals = xcalloc((size_t)nnodes, sizeof *r->vals);
  for (int s = 0; s < g->nsyms; s++) r->sym_feed[s] = -1;
  for (int id = 0; id < nnodes; id++) r->feed_of[id] = -1;
  if (err && errlen) err[0] = '\0';

  int status = -1;
  char label[128];
  for (int f = 0; f < nfetches; f++)
    if (fetches[f] < 0 || fetches[f] >= nnodes) {
      fail(r, "fetch %d is node %d, which does not exist", f, fetches[f]);
      goto done;
    }
  for (int f = 0; f < nfeeds; f++) {
    const int id = feed_nodes[f];
    if (id < 0 || id >= nnodes) {
      fail(r, "feed %d is for node %d, which does not exist", f, id);
      goto done;
    }
    if (r->feed_of[id] >= 0) {
      fail(r, "%s is fed twice", node_label(g, id, label, sizeof label));
      goto done;
    }
    r->feed_of[id] = f;
    if (bind_feed(r, id, &feed_values[f]) < 0) goto done;
    /* Feeds are taken as given: no dtype check or conversion (a gradient
     * check feeds doubles to f32 placeholders on purpose). */
    value_copy(&r->vals[id], &feed_values[f]);
    if (!r->vals[id].data) value_alloc(&r->vals[id]);
    r->vals[id].dtype = g->nodes[id].dtype;
  }
  if (mark_needed(r, fetches, nfetches) < 0 || check_needed(r) < 0) goto done;
  plan_lifetimes(r, fetches, nfetches);

  /* Phase 1: the pure nodes. */
  for (int id = 0; id < nnodes; id++) {
    const fl_node *n = &g->nodes[id];
    if (!r->needed[id] || r->feed_of[id] >= 0 || fl_op_has_side_effect(n->op)) continue;
    if (eval_pure(r, id) < 0) goto done;
    for (int k = 0; k < n->ninputs; k++) {
      const int j = n->inputs[k];
      if (r->last_reader[j] == id && !r->keep[j]) fl_value_free(&r->vals[j]);
    }
  }
  /* Phase 2: the updates, in id order. Nothing past this point fails. */
  for (int id = 0; id < nnodes; id++)
    if (r->needed[id] && r->feed_of[id] < 0 && fl_op_has_side_effect(g->nodes[id].op))
      apply_update(r, id);
  if (out)
    for (int f = 0; f < nfetches; f++) value_copy(&out[f], &r->vals[fetches[f]]);
  *used_dropout = r->used_dropout;
  status = 0;
done:
  run_free(r);
  return status;
}

/* ---- the public API ----------------------------------------------------- */

/* Initialises one variable: zeros without an initialiser, else the value of
 * its initialiser subgraph (pure, no feeds; it may read earlier variables). */
static int init_variable(fl_eval *ev, int id, char *err, size_t errlen) {
  const fl_node *n = &ev->g->nodes[id];
  char shape[256];
  if (!n->shaped || !fl_shape_is_const(&n->shape)) {
    snprintf(err, errlen, "its shape %s is not constant",
             n->shaped ? fl_shape_str(ev->g, &n->shape, shape, sizeof shape) : "(not inferred)");
    return -1;
  }
  fl_value *stored = &ev->vars[id];
  stored->dtype = n->dtype;
  stored->rank = n->shape.rank;
  for (int k = 0; k < n->shape.rank; k++) stored->dims[k] = n->shape.dims[k].coef;
  if (n->attr.init < 0) {
    value_alloc(stored);
    return 0;
  }
  if (n->attr.init >= ev->g->nnodes) {
    snprintf(err, errlen, "its initialiser %%%d does not exist", n->attr.init);
    return -1;
  }
  fl_value init = {0};
  bool used_dropout;
  if (run_graph(ev, NULL, NULL, 0, &n->attr.init, 1, &init, err, errlen, &used_dropout) < 0)
    return -1;
  if (!same_dims(&init, stored) || !init.data) {
    char got[256];
    snprintf(err, errlen, "the initialiser's shape %s is not the variable's %s",
             dims_str(init.rank, init.dims, got, sizeof got),
             fl_shape_str(ev->g, &n->shape, shape, sizeof shape));
    fl_value_free(&init);
    return -1;
  }
  stored->data = init.data;
  return 0;
}

/* Takes in nodes added to the graph since the last look (gradient checks add
 * nodes to a graph that already has an interpreter): grows the storage and
 * initialises every variable not yet initialised, in id order. On failure,
 * *failed is the variable that could not be initialised. */
static int adopt_new_nodes(fl_eval *ev, char *err, size_t errlen, int *failed) {
  const fl_graph *g = ev->g;
  if (g->nnodes > ev->nnodes) {
    ev->vars = realloc(ev->vars, (size_t)g->nnodes * sizeof *ev->vars);
    ev->var_ready = realloc(ev->var_ready, (size_t)g->nnodes * sizeof *ev->var_ready);
    if (!ev->vars || !ev->var_ready) {
      fputs("flowc: out of memory\n", stderr);
      exit(1);
    }
    for (int id = ev->nnodes; id < g->nnodes; id++) {
      ev->vars[id] = (fl_value){0};
      ev->var_ready[id] = false;
    }
    ev->nnodes = g->nnodes;
  }
  for (int id = 0; id < g->nnodes; id++) {
    if (g->nodes[id].op != FL_OP_VARIABLE || ev->var_ready[id]) continue;
    char why[512], label[128];
    if (init_variable(ev, id, why, sizeof why) < 0) {
      if (err && errlen)
        snprintf(err, errlen, "cannot initialise variable %s: %s",
                 node_label(g, id, label, sizeof label), why);
      *failed = id;
      return -1;
    }
    ev->var_ready[id] = true;
  }
  return 0;
}

int fl_eval_run(fl_eval *ev, const int *feed_nodes, const fl_value *feed_values, int nfeeds,
                const int *fetches, int nfetches, fl_value *out, char *err, size_t errlen) {
  int failed_variable;
  bool used_dropout = false;
  if (adopt_new_nodes(ev, err, errlen, &failed_variable) < 0) return -1;
  if (run_graph(ev, feed_nodes, feed_values, nfeeds, fetches, nfetches, out, err, errlen,
                &used_dropout) < 0)
    return -1;
  /* The next run draws new masks; runs without masks leave the count alone. */
  if (used_dropout) ev->dropout_runs++;
  return 0;
}

fl_eval *fl_eval_new(const fl_graph *g, uint64_t seed) {
  fl_eval *ev = xcalloc(1, sizeof *ev);
  ev->g = g;
  ev->seed = seed;
  char err[768];
  int failed_variable;
  if (adopt_new_nodes(ev, err, sizeof err, &failed_variable) < 0) {
    fl_error(g->nodes[failed_variable].loc, "%s", err);
    fl_eval_free(ev);
    return NULL;
  }
  return ev;
}

void fl_eval_free(fl_eval *ev) {
  if (!ev) return;
  for (int id = 0; id < ev->nnodes; id++) fl_value_free(&ev->vars[id]);
  free(ev->vars);
  free(ev->var_ready);
  free(ev);
}

fl_value *fl_eval_variable(fl_eval *ev, int node) {
  if (!ev || node < 0 || node >= ev->nnodes || ev->g->nodes[node].op != FL_OP_VARIABLE ||
      !ev->var_ready[node])
    return NULL;
  return &ev->vars[node];
}
