/* kernels_c.c - one C function per IR node: loops for elementwise ops and
 * reductions, OpenBLAS for matmul, runtime calls for convolution and pooling. */
#include <stdlib.h>
#include <string.h>

#include "emit_internal.h"
#include "flowc_rt.h"
#include "kernels_c.h"

/* ---- index expressions ------------------------------------------------------ */

/* The flat index into a tensor of shape `in`, broadcast against loops i0..i{r-1}
 * over a shape of rank r (numpy alignment: trailing dims line up). Dims of 1
 * contribute nothing, which is what broadcasting means. */
static void broadcast_index(const fl_graph *g, const fl_shape *in, int r, char *buf, size_t cap) {
  size_t used = 0;
  buf[0] = '\0';
  for (int j = 0; j < in->rank; j++) {
    fl_dim d = in->dims[j];
    if (d.sym < 0 && d.coef == 1) continue;
    int loop = j + (r - in->rank);
    char stride[128];
    emit_dims_product(g, in, j + 1, in->rank, stride, sizeof stride);
    if (strcmp(stride, "1") == 0)
      used += (size_t)snprintf(buf + used, cap - used, "%si%d", used ? " + " : "", loop);
    else
      used += (size_t)snprintf(buf + used, cap - used, "%si%d * %s", used ? " + " : "", loop,
                               stride);
    if (used >= cap) break;
  }
  if (!used) snprintf(buf, cap, "0");
}

/* Opens one loop per dim of `s` (i0, i1, ...), indented; returns the depth. */
static int open_loops(const fl_graph *g, const fl_shape *s, strbuf *sb) {
  for (int j = 0; j < s->rank; j++) {
    char dim[96];
    emit_dim(g, s->dims[j], dim, sizeof dim);
    sb_printf(sb, "%*sfor (int64_t i%d = 0; i%d < %s; i%d++)\n", 2 + 2 * j, "", j, j, dim, j);
  }
  return s->rank;
}

/* ---- elementwise expressions ------------------------------------------------ */

static void elementwise_expr(const fl_graph *g, const fl_node *n, const char *a, const char *b,
                             char *buf, size_t cap) {
  fl_dtype in = n->ninputs ? g->nodes[n->inputs[0]].dtype : n->dtype;
  bool f = in == FL_F32;
  switch (n->op) {
  case FL_OP_ADD: snprintf(buf, cap, "%s + %s", a, b); break;
  case FL_OP_SUB: snprintf(buf, cap, "%s - %s", a, b); break;
  case FL_OP_MUL: snprintf(buf, cap, "%s * %s", a, b); break;
  case FL_OP_DIV:
    if (f) snprintf(buf, cap, "%s / %s", a, b);
    else snprintf(buf, cap, "%s != 0 ? %s / %s : 0", b, a, b); /* no trap on x / 0 */
    break;
  case FL_OP_NEG: snprintf(buf, cap, "-%s", a); break;
  case FL_OP_SQUARE: snprintf(buf, cap, "%s * %s", a, a); break;
  case FL_OP_SQRT: snprintf(buf, cap, "sqrtf(%s)", a); break;
  case FL_OP_LOG: snprintf(buf, cap, "logf(%s)", a); break;
  case FL_OP_EXP: snprintf(buf, cap, "expf(%s)", a); break;
  case FL_OP_RELU: snprintf(buf, cap, "%s > 0.0f ? %s : 0.0f", a, a); break;
  case FL_OP_SIGMOID: snprintf(buf, cap, "1.0f / (1.0f + expf(-%s))", a); break;
  case FL_OP_TANH: snprintf(buf, cap, "tanhf(%s)", a); break;
  case FL_OP_RELU_GRAD: snprintf(buf, cap, "%s > 0.0f ? %s : 0.0f", b, a); break;
  case FL_OP_EQUAL: snprintf(buf, cap, "%s == %s", a, b); break;
  case FL_OP_CAST:
    if (n->dtype == FL_BOOL) snprintf(buf, cap, "%s != 0", a);
    else snprintf(buf, cap, "(%s)%s", emit_ctype(n->dtype), a);
    break;
  default: snprintf(buf, cap, "0 /* unsupported */"); break;
  }
}

static void emit_elementwise(const fl_graph *g, const fl_node *n, strbuf *sb) {
  char size[128], expr[1024], a[300], b[300];
  emit_size(g, &n->shape, size, sizeof size);
  bool flat = true;
  for (int i = 0; i < n->ninputs; i++) {
    const fl_shape *s = &g->nodes[n->inputs[i]].shape;
    if (!fl_shape_eq(s, &n->shape) && fl_shape_const_size(s) != 1) flat = false;
  }
  if (flat) {
    /* Same shapes (or scalars against a tensor): one flat loop. */
    for (int i = 0; i < n->ninputs && i < 2; i++) {
      bool scalar = !fl_shape_eq(&g->nodes[n->inputs[i]].shape, &n->shape);
      snprintf(i ? b : a, 300, "in%d[%s]", i, scalar ? "0" : "i");
    }
    elementwise_expr(g, n, a, b, expr, sizeof expr);
    sb_printf(sb, "  FLRT_PARALLEL_LOOP(%s,\n  for (int64_t i = 0; i < %s; i++)\n    out[i] = %s;\n  );\n", size, size, expr);
    return;
  }
  char idx_a[256], idx_b[256], idx_out[256];
  broadcast_index(g, &g->nodes[n->inputs[0]].shape, n->shape.rank, idx_a, sizeof idx_a);
  snprintf(a, sizeof a, "in0[%s]", idx_a);
  if (n->ninputs > 1) {
    broadcast_index(g, &g->nodes[n->inputs[1]].shape, n->shape.rank, idx_b, sizeof idx_b);
    snprintf(b, sizeof b, "in1[%s]", idx_b);
  }
  broadcast_index(g, &n->shape, n->shape.rank, idx_out, sizeof idx_out);
  elementwise_expr(g, n, a, b, expr, sizeof expr);
  int depth = open_loops(g, &n->shape, sb);
  sb_printf(sb, "%*sout[%s] = %s;\n", 2 + 2 * depth, "", idx_out, expr);
}

/* ---- reductions ------------------------------------------------------------- */

/* Sums `in` (loops over its dims) into out, where out_index maps input loops
 * to the output element; each output is divided by `divisor` at the end (a
 * mean: division, not a reciprocal's product, so integer means truncate
 * exactly as the interpreter's do). */
static void emit_sum_loops(const fl_graph *g, const fl_node *n, const fl_shape *in,
                           const char *out_index, const char *scale, strbuf *sb) {
  char out_size[128], in_idx[256];
  emit_size(g, &n->shape, out_size, sizeof out_size);
  broadcast_index(g, in, in->rank, in_idx, sizeof in_idx);
  if (fl_shape_const_size(&n->shape) == 1) {
    /* A total: accumulate in double, which keeps long sums accurate. */
    char in_size[128];
    emit_size(g, in, in_size, sizeof in_size);
    sb_printf(sb, "  double total = 0.0;\n  for (int64_t i = 0; i < %s; i++)\n    total += in0[i];\n",
              in_size);
    sb_printf(sb, "  out[0] = (%s)(total%s%s);\n", emit_ctype(n->dtype), scale ? " / " : "",
              scale ? scale : "");
    return;
  }
  sb_printf(sb, "  memset(out, 0, (size_t)(%s) * sizeof *out);\n", out_size);
  int depth = open_loops(g, in, sb);
  sb_printf(sb, "%*sout[%s] += in0[%s];\n", 2 + 2 * depth, "", out_index, in_idx);
  if (scale)
    sb_printf(sb, "  for (int64_t i = 0; i < %s; i++)\n    out[i] = (%s)(out[i] / %s);\n", out_size,
              emit_ctype(n->dtype), scale);
}

/* Output index of a reduction: the kept axes of the input, in order. */
static void reduce_out_index(const fl_graph *g, const fl_node *n, const fl_shape *in, char *buf,
                             size_t cap) {
  fl_shape kept;
  kept.rank = 0;
  int loop_of[FL_MAX_RANK];
  for (int j = 0; j < in->rank; j++) {
    bool reduced = n->attr.naxes == 0;
    for (int k = 0; k < n->attr.naxes; k++) reduced |= n->attr.axes[k] == j;
    if (!reduced) {
      loop_of[kept.rank] = j;
      kept.dims[kept.rank++] = in->dims[j];
    }
  }
  size_t used = 0;
  buf[0] = '\0';
  for (int k = 0; k < kept.rank; k++) {
    char stride[128];
    emit_dims_product(g, &kept, k + 1, kept.rank, stride, sizeof stride);
    used += (size_t)snprintf(buf + used, cap - used, "%si%d%s%s", used ? " + " : "", loop_of[k],
                             strcmp(stride, "1") ? " * " : "", strcmp(stride, "1") ? stride : "");
    if (used >= cap) break;
  }
  if (!used) snprintf(buf, cap, "0");
}

/* Output index of SUM_TO: the input's trailing axes where the target keeps them. */
static void sum_to_out_index(const fl_graph *g, const fl_node *n, const fl_shape *in, char *buf,
                             size_t cap) {
  fl_shape masked = n->shape;
  (void)in;
  /* broadcast_index skips dims of 1, and the target's loops are the input's
   * trailing ones, so the same helper gives the output index. */
  broadcast_index(g, &masked, in->rank, buf, cap);
}

/* Whether SUM_TO keeps the input's last *kept axes whole and sums over the
 * rest (the target's other axes, if any, are 1): then it sums whole rows. */
static bool sum_to_keeps_trailing(const fl_node *n, const fl_shape *in, int *kept) {
  const fl_shape *t = &n->shape;
  int k = 0;
  while (k < t->rank && k < in->rank && fl_dim_eq(t->dims[t->rank - 1 - k], in->dims[in->rank - 1 - k])) k++;
  for (int j = 0; j < t->rank - k; j++)
    if (t->dims[j].sym >= 0 || t->dims[j].coef != 1) return false;
  *kept = k;
  return k > 0 && k < in->rank;
}

/* ---- kernels ---------------------------------------------------------------- */

/* A matmul's GEMM arguments: "trans_a, trans_b, m, n, k" in head, and its
 * leading dimensions. */
typedef struct {
  char head[320], lda[96], ldb[96], ldc[96];
} gemm_args;

static void matmul_gemm_args(const fl_graph *g, const fl_node *n, gemm_args *args) {
  const fl_shape *a = &g->nodes[n->inputs[0]].shape, *b = &g->nodes[n->inputs[1]].shape;
  char m[96], k[96];
  emit_dim(g, n->shape.dims[0], m, sizeof m);
  emit_dim(g, n->shape.dims[1], args->ldc, sizeof args->ldc);
  emit_dim(g, a->dims[n->attr.transpose_a ? 0 : 1], k, sizeof k);
  emit_dim(g, a->dims[1], args->lda, sizeof args->lda);
  emit_dim(g, b->dims[1], args->ldb, sizeof args->ldb);
  snprintf(args->head, sizeof args->head, "%s, %s, %s, %s, %s", n->attr.transpose_a ? "true" : "false",
           n->attr.transpose_b ? "true" : "false", m, args->ldc, k);
}

static void emit_matmul(const fl_graph *g, const fl_node *n, strbuf *sb) {
  if (n->dtype == FL_F32) {
    gemm_args args;
    matmul_gemm_args(g, n, &args);
    sb_printf(sb, "  flrt_gemm(%s, in0, %s, in1, %s, out, %s, false);\n", args.head, args.lda, args.ldb, args.ldc);
    return;
  }
  const fl_shape *a = &g->nodes[n->inputs[0]].shape;
  char m[96], k[96], cols[96];
  emit_dim(g, n->shape.dims[0], m, sizeof m);
  emit_dim(g, n->shape.dims[1], cols, sizeof cols);
  emit_dim(g, a->dims[n->attr.transpose_a ? 0 : 1], k, sizeof k);
  sb_printf(sb, "  for (int64_t i = 0; i < %s; i++)\n    for (int64_t j = 0; j < %s; j++) {\n", m, cols);
  sb_printf(sb, "      %s sum = 0;\n      for (int64_t p = 0; p < %s; p++)\n", emit_ctype(n->dtype), k);
  sb_printf(sb, "        sum += in0[%s] * in1[%s];\n", n->attr.transpose_a ? "p * (int64_t)(m_lda) + i" : "i * (int64_t)(m_lda) + p",
            n->attr.transpose_b ? "j * (int64_t)(m_ldb) + p" : "p * (int64_t)(m_ldb) + j");
  sb_printf(sb, "      out[i * (int64_t)(%s) + j] = sum;\n    }\n", cols);
}

/* flrt_window for a conv or pool node, from the NHWC input shape. */
static void emit_window(const fl_graph *g, const fl_node *n, const fl_shape *x, int64_t kh,
                        int64_t kw, strbuf *sb) {
  char batch[96];
  emit_dim(g, x->dims[0], batch, sizeof batch);
  sb_printf(sb, "  flrt_window w;\n  flrt_window_init(&w, %s, %lld, %lld, %lld, %lld, %lld, %d, %d, %s);\n",
            batch, (long long)x->dims[1].coef, (long long)x->dims[2].coef,
            (long long)x->dims[3].coef, (long long)kh, (long long)kw, n->attr.strides[0],
            n->attr.strides[1], n->attr.padding == FL_PAD_SAME ? "true" : "false");
}

/* The input and filter shapes a convolution node's window is made from. */
static void conv_shapes(const fl_graph *g, const fl_node *n, const fl_shape **x, const fl_shape **w) {
  *x = n->op == FL_OP_CONV2D_GRAD_INPUT ? &n->shape : &g->nodes[n->inputs[0]].shape;
  *w = n->op == FL_OP_CONV2D_GRAD_FILTER ? &n->shape : &g->nodes[n->inputs[1]].shape;
}

void kernel_scratch_statement(const fl_graph *g, const fl_node *n, const char *target, strbuf *sb) {
  const fl_shape *x, *w;
  conv_shapes(g, n, &x, &w);
  sb_printf(sb, "  {\n  ");
  emit_window(g, n, x, w->dims[0].coef, w->dims[1].coef, sb);
  sb_printf(sb, "    %s = flrt_conv2d_scratch(&w, %lld) * sizeof(float); /* convolution scratch of %%%d */\n  }\n",
            target, (long long)w->dims[3].coef, n->id);
}

size_t kernel_scratch_bytes(const fl_graph *g, const fl_node *n, int64_t batch) {
  const fl_shape *x, *w;
  conv_shapes(g, n, &x, &w);
  flrt_window win;
  flrt_window_init(&win, fl_dim_value(x->dims[0], batch), x->dims[1].coef, x->dims[2].coef, x->dims[3].coef,
                   w->dims[0].coef, w->dims[1].coef, n->attr.strides[0], n->attr.strides[1],
                   n->attr.padding == FL_PAD_SAME);
  return flrt_conv2d_scratch(&win, w->dims[3].coef) * sizeof(float);
}

/* softmax in generated loops (double sums); the cross-entropy and its
 * gradient, when they are not fused, through the fused kernel's runtime
 * function with one output, so that -O0 computes the same bits. */
static void emit_softmax_family(const fl_graph *g, const fl_node *n, strbuf *sb) {
  const fl_shape *logits = &g->nodes[n->inputs[n->op == FL_OP_SOFTMAX ? 0 : 1]].shape;
  char rows[128], classes[96];
  emit_dims_product(g, logits, 0, logits->rank - 1, rows, sizeof rows);
  emit_dim(g, logits->dims[logits->rank - 1], classes, sizeof classes);
  if (n->op == FL_OP_SOFTMAX_XENT) {
    sb_printf(sb, "  flrt_softmax_xent(%s, %s, in0, in1, NULL, out, NULL);\n", rows, classes);
    return;
  }
  if (n->op == FL_OP_SOFTMAX_XENT_GRAD) {
    sb_printf(sb, "  flrt_softmax_xent(%s, %s, in0, in1, in2, NULL, out);\n", rows, classes);
    return;
  }
  sb_printf(sb, "  const int64_t classes = %s;\n", classes);
  sb_printf(sb, "  FLRT_PARALLEL_LOOP_EXP((%s) * classes,\n", rows);
  sb_printf(sb, "  for (int64_t r = 0; r < %s; r++) {\n", rows);
  sb_printf(sb, "    const float *z = in0 + r * classes;\n");
  sb_printf(sb, "    float max = z[0];\n    for (int64_t c = 1; c < classes; c++)\n"
                "      if (z[c] > max) max = z[c];\n");
  /* The exponentials are computed once: they wait in out to be divided by
   * their sum. */
  sb_printf(sb, "    double sum = 0.0;\n    for (int64_t c = 0; c < classes; c++) {\n"
                "      const double e = exp((double)z[c] - max);\n"
                "      out[r * classes + c] = (float)e;\n      sum += e;\n    }\n");
  sb_printf(sb, "    for (int64_t c = 0; c < classes; c++)\n"
                "      out[r * classes + c] = (float)(out[r * classes + c] / sum);\n");
  sb_printf(sb, "  });\n");
}

static void emit_argmax(const fl_graph *g, const fl_node *n, strbuf *sb) {
  const fl_shape *in = &g->nodes[n->inputs[0]].shape;
  int axis = n->attr.axes[0];
  char outer[128], inner[128], len[96];
  emit_dims_product(g, in, 0, axis, outer, sizeof outer);
  emit_dims_product(g, in, axis + 1, in->rank, inner, sizeof inner);
  emit_dim(g, in->dims[axis], len, sizeof len);
  sb_printf(sb, "  const int64_t inner = %s, len = %s;\n", inner, len);
  sb_printf(sb, "  for (int64_t o = 0; o < %s; o++)\n    for (int64_t i = 0; i < inner; i++) {\n", outer);
  sb_printf(sb, "      const %s *v = in0 + o * len * inner + i;\n", emit_ctype(g->nodes[n->inputs[0]].dtype));
  sb_printf(sb, "      int64_t best = 0;\n      for (int64_t k = 1; k < len; k++)\n"
                "        if (v[k * inner] > v[best * inner]) best = k; /* first max wins */\n"
                "      out[o * inner + i] = best;\n    }\n");
}

static void emit_update(const fl_graph *g, const fl_node *n, strbuf *sb) {
  char size[128], lr[48], b1[48], b2[48], eps[48], mom[48];
  emit_size(g, &n->shape, size, sizeof size);
  emit_float(lr, sizeof lr, n->attr.lr);
  emit_float(b1, sizeof b1, n->attr.beta1);
  emit_float(b2, sizeof b2, n->attr.beta2);
  emit_float(eps, sizeof eps, n->attr.epsilon);
  emit_float(mom, sizeof mom, n->attr.momentum);
  if (n->op == FL_OP_APPLY_ADAM) /* its step size is computed first */
    sb_printf(sb, "  const float lr_t = %s * sqrtf(1.0f - beta2_power[0]) / (1.0f - beta1_power[0]);\n", lr);
  sb_printf(sb, "  FLRT_PARALLEL_LOOP(%s,\n", size);
  switch (n->op) {
  case FL_OP_APPLY_SGD:
    sb_printf(sb, "  for (int64_t i = 0; i < %s; i++)\n    var[i] -= %s * grad[i];\n", size, lr);
    break;
  case FL_OP_APPLY_MOMENTUM:
    sb_printf(sb, "  for (int64_t i = 0; i < %s; i++) {\n    accum[i] = %s * accum[i] + grad[i];\n"
                  "    var[i] -= %s * accum[i];\n  }\n", size, mom, lr);
    break;
  default: /* TensorFlow's Adam: bias correction folded into the step size */
    sb_printf(sb, "  for (int64_t i = 0; i < %s; i++) {\n", size);
    sb_printf(sb, "    m[i] = %s * m[i] + (1.0f - %s) * grad[i];\n", b1, b1);
    sb_printf(sb, "    v[i] = %s * v[i] + (1.0f - %s) * grad[i] * grad[i];\n", b2, b2);
    sb_printf(sb, "    var[i] -= lr_t * m[i] / (sqrtf(v[i]) + %s);\n  }\n", eps);
    break;
  }
  sb_printf(sb, "  );\n");
}

/* The statements of node n's kernel: inputs are in0, in1, ... (or the update
 * names), the result is out, convolution scratch is scratch. */
static void emit_node_body(const fl_graph *g, const fl_node *n, strbuf *sb) {
  const fl_shape *x = n->ninputs ? &g->nodes[n->inputs[0]].shape : NULL;
  char size[128], buf[256], lit[64];
  emit_size(g, &n->shape, size, sizeof size);
  switch (n->op) {
  case FL_OP_FILL:
    emit_float(lit, sizeof lit, n->attr.value);
    if (n->dtype != FL_F32) snprintf(lit, sizeof lit, "(%s)%lld", emit_ctype(n->dtype), (long long)n->attr.value);
    sb_printf(sb, "  for (int64_t i = 0; i < %s; i++)\n    out[i] = %s;\n", size, lit);
    break;
  case FL_OP_MATMUL:
    if (n->dtype != FL_F32) {
      char lda[96], ldb[96];
      emit_dim(g, x->dims[1], lda, sizeof lda);
      emit_dim(g, g->nodes[n->inputs[1]].shape.dims[1], ldb, sizeof ldb);
      sb_printf(sb, "  const int64_t m_lda = %s, m_ldb = %s;\n", lda, ldb);
    }
    emit_matmul(g, n, sb);
    break;
  case FL_OP_CONV2D: {
    const fl_shape *w = &g->nodes[n->inputs[1]].shape;
    emit_window(g, n, x, w->dims[0].coef, w->dims[1].coef, sb);
    sb_printf(sb, "  flrt_conv2d(&w, %lld, in0, in1, out, scratch);\n", (long long)w->dims[3].coef);
    break;
  }
  case FL_OP_CONV2D_GRAD_INPUT: {
    const fl_shape *w = &g->nodes[n->inputs[1]].shape;
    emit_window(g, n, &n->shape, w->dims[0].coef, w->dims[1].coef, sb);
    sb_printf(sb, "  flrt_conv2d_grad_input(&w, %lld, in0, in1, out, scratch);\n", (long long)w->dims[3].coef);
    break;
  }
  case FL_OP_CONV2D_GRAD_FILTER:
    emit_window(g, n, x, n->shape.dims[0].coef, n->shape.dims[1].coef, sb);
    sb_printf(sb, "  flrt_conv2d_grad_filter(&w, %lld, in0, in1, out, scratch);\n", (long long)n->shape.dims[3].coef);
    break;
  case FL_OP_MAX_POOL: case FL_OP_MAX_POOL_GRAD:
    emit_window(g, n, x, n->attr.ksize[0], n->attr.ksize[1], sb);
    if (n->op == FL_OP_MAX_POOL) sb_printf(sb, "  flrt_max_pool(&w, in0, out);\n");
    else sb_printf(sb, "  flrt_max_pool_grad(&w, in0, in1, out);\n");
    break;
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN: {
    char in_size[128], scale[300];
    reduce_out_index(g, n, x, buf, sizeof buf);
    emit_size(g, x, in_size, sizeof in_size);
    snprintf(scale, sizeof scale, "(double)((%s) / (%s))", in_size, size);
    emit_sum_loops(g, n, x, buf, n->op == FL_OP_REDUCE_MEAN ? scale : NULL, sb);
    break;
  }
  case FL_OP_SUM_TO: {
    int kept;
    if (n->dtype == FL_F32 && sum_to_keeps_trailing(n, x, &kept)) {
      /* A bias's gradient: whole rows summed, which the runtime threads. */
      char rows[128], cols[128];
      emit_dims_product(g, x, 0, x->rank - kept, rows, sizeof rows);
      emit_dims_product(g, x, x->rank - kept, x->rank, cols, sizeof cols);
      sb_printf(sb, "  flrt_sum_rows(in0, %s, %s, out);\n", rows, cols);
      break;
    }
    sum_to_out_index(g, n, x, buf, sizeof buf);
    emit_sum_loops(g, n, x, buf, NULL, sb);
    break;
  }
  case FL_OP_BROADCAST: {
    char in_idx[256], out_idx[256], in_size[128];
    broadcast_index(g, x, n->shape.rank, in_idx, sizeof in_idx);
    broadcast_index(g, &n->shape, n->shape.rank, out_idx, sizeof out_idx);
    emit_size(g, x, in_size, sizeof in_size);
    if (n->attr.mean)
      sb_printf(sb, "  const float scale = (float)(1.0 / (double)((%s) / (%s)));\n", size, in_size);
    int depth = open_loops(g, &n->shape, sb);
    sb_printf(sb, "%*sout[%s] = in0[%s]%s;\n", 2 + 2 * depth, "", out_idx, in_idx, n->attr.mean ? " * scale" : "");
    break;
  }
  case FL_OP_ARGMAX:
    emit_argmax(g, n, sb);
    break;
  case FL_OP_SOFTMAX: case FL_OP_SOFTMAX_XENT: case FL_OP_SOFTMAX_XENT_GRAD:
    emit_softmax_family(g, n, sb);
    break;
  case FL_OP_DROPOUT_MASK:
    sb_printf(sb, "  flrt_dropout_mask(out, (size_t)(%s), in1[0], seed, %d, run);\n", size, n->attr.stream);
    break;
  case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM:
    emit_update(g, n, sb);
    break;
  default:
    if (fl_op_is_elementwise(n->op)) emit_elementwise(g, n, sb);
    else sb_printf(sb, "  /* no kernel for %s */\n", fl_op_name(n->op));
    break;
  }
}

bool kernel_exists(fl_op op) {
  switch (op) {
  case FL_OP_PLACEHOLDER: case FL_OP_VARIABLE: case FL_OP_CONST: case FL_OP_RESHAPE:
  case FL_OP_GROUP: case FL_OP_ASSIGN: case FL_OP_MINIMIZE: case FL_OP_RANDOM_UNIFORM:
  case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
    return false;
  default:
    return true;
  }
}

bool kernel_needs_scratch(fl_op op) {
  return op == FL_OP_CONV2D || op == FL_OP_CONV2D_GRAD_INPUT || op == FL_OP_CONV2D_GRAD_FILTER;
}

/* The symbols a kernel takes, as parameters (type "int64_t ") or arguments
 * (type ""), after `more` earlier ones; returns how many it wrote. */
int kernel_sym_list(const fl_graph *g, const bool *uses, bool more, const char *type, strbuf *sb) {
  int count = 0;
  for (int s = 0; s < g->nsyms && s < 64; s++)
    if (uses[s]) {
      char name[64];
      fl_sym_c_name(g, s, name, sizeof name);
      sb_printf(sb, "%s%s%s", more || count ? ", " : "", type, name);
      count++;
    }
  return count;
}

/* Names of a kernel's parameters, in order, for the definition and the call. */
static const char *const adam_names[] = {"var", "m", "v", "grad", "beta1_power", "beta2_power"};
static const char *const momentum_names[] = {"var", "accum", "grad"};
static const char *const sgd_names[] = {"var", "grad"};

static const char *param_name(const fl_node *n, int i, char *buf, size_t cap) {
  if (n->op == FL_OP_APPLY_ADAM) return adam_names[i];
  if (n->op == FL_OP_APPLY_MOMENTUM) return momentum_names[i];
  if (n->op == FL_OP_APPLY_SGD) return sgd_names[i];
  snprintf(buf, cap, "in%d", i);
  return buf;
}

static bool param_is_written(const fl_node *n, int i) {
  switch (n->op) {
  case FL_OP_APPLY_SGD: return i == 0;
  case FL_OP_APPLY_MOMENTUM: return i <= 1;
  case FL_OP_APPLY_ADAM: return i <= 2;
  default: return false;
  }
}

static bool kernel_has_out(const fl_node *n) {
  return !fl_op_has_side_effect(n->op);
}

void kernel_function_name(const fl_graph *g, int id, char *buf, size_t cap) {
  char label[96];
  emit_node_label(g, id, label, sizeof label);
  snprintf(buf, cap, "k%d_%s_%s", id, fl_op_name(g->nodes[id].op), g->nodes[id].name ? label : "");
  size_t len = strlen(buf);
  if (len && buf[len - 1] == '_') buf[len - 1] = '\0';
  /* op names like softmax_cross_entropy_with_logits are long: keep them */
}

void emit_kernel(const fl_graph *g, int id, strbuf *sb) {
  const fl_node *n = &g->nodes[id];
  char fname[192], pname[16];
  kernel_function_name(g, id, fname, sizeof fname);
  emit_node_comment(g, n, sb);
  sb_printf(sb, "static void %s(", fname);
  int nparams = 0;
  for (int i = 0; i < n->ninputs; i++) {
    const fl_node *in = &g->nodes[n->inputs[i]];
    if (n->op == FL_OP_DROPOUT_MASK && i == 0) continue; /* only its shape matters */
    sb_printf(sb, "%s%s%s *restrict %s", nparams++ ? ", " : "", param_is_written(n, i) ? "" : "const ",
              emit_ctype(in->dtype), param_name(n, i, pname, sizeof pname));
  }
  if (kernel_has_out(n))
    sb_printf(sb, "%s%s *restrict out", nparams++ ? ", " : "", emit_ctype(n->dtype));
  if (kernel_needs_scratch(n->op)) sb_printf(sb, "%sfloat *restrict scratch", nparams++ ? ", " : "");
  if (n->op == FL_OP_DROPOUT_MASK) sb_printf(sb, "%suint64_t seed, uint64_t run", nparams++ ? ", " : "");
  bool uses[64];
  emit_node_syms(g, n, uses);
  nparams += kernel_sym_list(g, uses, nparams > 0, "int64_t ", sb);
  if (!nparams) sb_printf(sb, "void");
  sb_printf(sb, ") {\n");

  emit_node_body(g, n, sb);
  sb_printf(sb, "}\n\n");
}

/* The call of node id's kernel; buffer(k) names node k's buffer in the entry. */
void emit_kernel_call(const fl_graph *g, int id, const char *const *buffers,
                      const char *scratch, strbuf *sb) {
  const fl_node *n = &g->nodes[id];
  char fname[192];
  kernel_function_name(g, id, fname, sizeof fname);
  sb_printf(sb, "  %s(", fname);
  int nargs = 0;
  for (int i = 0; i < n->ninputs; i++) {
    if (n->op == FL_OP_DROPOUT_MASK && i == 0) continue;
    sb_printf(sb, "%s%s", nargs++ ? ", " : "", buffers[n->inputs[i]]);
  }
  if (kernel_has_out(n)) sb_printf(sb, "%s%s", nargs++ ? ", " : "", buffers[id]);
  if (kernel_needs_scratch(n->op)) sb_printf(sb, "%s%s", nargs++ ? ", " : "", scratch);
  if (n->op == FL_OP_DROPOUT_MASK) sb_printf(sb, "%sm->seed, m->dropout_runs", nargs++ ? ", " : "");
  bool uses[64];
  emit_node_syms(g, n, uses);
  kernel_sym_list(g, uses, nargs > 0, "", sb);
  sb_printf(sb, ");\n");
}

/* ---- fused groups ----------------------------------------------------------- */

/* Copies a kernel body one level deeper, for bodies reused inside a block. */
static void emit_indented(const strbuf *body, strbuf *sb) {
  for (const char *line = body->text; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    sb_printf(sb, "  %.*s\n", (int)len, line);
    line = end ? end + 1 : line + len;
  }
}

static bool in_group(const fl_group *grp, int node) {
  for (int i = 0; i < grp->nnodes; i++)
    if (grp->nodes[i] == node) return true;
  return false;
}

/* The group's inputs from outside it, each once, in first-use order. */
int group_inputs(const fl_graph *g, const fl_group *grp, int *ins) {
  int count = 0;
  for (int i = 0; i < grp->nnodes; i++) {
    const fl_node *m = &g->nodes[grp->nodes[i]];
    for (int k = 0; k < m->ninputs; k++) {
      int in = m->inputs[k];
      if (in_group(grp, in) || (m->op == FL_OP_DROPOUT_MASK && k == 0)) continue;
      bool seen = false;
      for (int j = 0; j < count && !seen; j++) seen = ins[j] == in;
      if (!seen) ins[count++] = in;
    }
  }
  return count;
}

/* Members whose values the group stores, in order: the root, or every member. */
static int group_outputs(const fl_graph *g, const fl_group *grp, int *outs) {
  if (grp->root >= 0 && fl_op_has_side_effect(g->nodes[grp->root].op)) return 0; /* it updates in place */
  if (grp->root >= 0) {
    outs[0] = grp->root;
    return 1;
  }
  int count = 0;
  for (int i = 0; i < grp->nnodes; i++)
    if (!fl_op_has_side_effect(g->nodes[grp->nodes[i]].op)) outs[count++] = grp->nodes[i];
  return count;
}

static int input_index(const int *ins, int n, int node) {
  for (int i = 0; i < n; i++)
    if (ins[i] == node) return i;
  return -1;
}

static bool written_by_group(const fl_graph *g, const fl_group *grp, int node) {
  for (int i = 0; i < grp->nnodes; i++) {
    const fl_node *m = &g->nodes[grp->nodes[i]];
    for (int k = 0; k < m->ninputs; k++)
      if (m->inputs[k] == node && param_is_written(m, k)) return true;
  }
  return false;
}

static bool group_needs_scratch(const fl_graph *g, const fl_group *grp) {
  for (int i = 0; i < grp->nnodes; i++)
    if (kernel_needs_scratch(g->nodes[grp->nodes[i]].op)) return true;
  return false;
}

void kernel_group_syms(const fl_graph *g, const fl_group *grp, bool *uses) {
  bool one[64];
  memset(uses, 0, sizeof(bool) * 64);
  for (int i = 0; i < grp->nnodes; i++) {
    emit_node_syms(g, &g->nodes[grp->nodes[i]], one);
    for (int s = 0; s < g->nsyms && s < 64; s++) uses[s] |= one[s];
  }
}

/* An elementwise tree as one loop: each member is a named local computed from
 * the group's inputs and the members before it, so nothing is evaluated twice
 * and the loop body reads like the graph. */
static void emit_elementwise_group(const fl_graph *g, const fl_group *grp, const int *ins, int nins, strbuf *sb) {
  const fl_node *root = &g->nodes[grp->root];
  char size[128];
  emit_size(g, &root->shape, size, sizeof size);
  bool flat = true;
  for (int i = 0; i < nins; i++) {
    const fl_shape *s = &g->nodes[ins[i]].shape;
    if (!fl_shape_eq(s, &root->shape) && fl_shape_const_size(s) != 1) flat = false;
  }
  const char *indent;
  char out_idx[256] = "i";
  if (flat) {
    sb_printf(sb, "  FLRT_PARALLEL_LOOP(%s,\n  for (int64_t i = 0; i < %s; i++) {\n", size, size);
    indent = "    ";
  } else {
    broadcast_index(g, &root->shape, root->shape.rank, out_idx, sizeof out_idx);
    int depth = open_loops(g, &root->shape, sb);
    sb_printf(sb, "%*s{\n", 2 + 2 * depth, "");
    static char deep[64];
    snprintf(deep, sizeof deep, "%*s", 4 + 2 * depth, "");
    indent = deep;
  }
  for (int k = 0; k < grp->nnodes; k++) {
    const fl_node *n = &g->nodes[grp->nodes[k]];
    char operand[2][320];
    for (int j = 0; j < n->ninputs && j < 2; j++) {
      int in = n->inputs[j];
      if (in_group(grp, in)) {
        snprintf(operand[j], sizeof operand[j], "v%d", in);
        continue;
      }
      int at = input_index(ins, nins, in);
      const fl_shape *s = &g->nodes[in].shape;
      char index[256];
      if (flat) snprintf(index, sizeof index, "%s", fl_shape_eq(s, &root->shape) ? "i" : "0");
      else broadcast_index(g, s, root->shape.rank, index, sizeof index);
      snprintf(operand[j], sizeof operand[j], "in%d[%s]", at, index);
    }
    char expr[1024];
    elementwise_expr(g, n, operand[0], n->ninputs > 1 ? operand[1] : "", expr, sizeof expr);
    sb_printf(sb, "%sconst %s v%d = %s;\n", indent, emit_ctype(n->dtype), n->id, expr);
  }
  sb_printf(sb, "%sout0[%s] = v%d;\n", indent, out_idx, grp->root);
  if (flat) sb_printf(sb, "  });\n");
  else sb_printf(sb, "%.*s}\n", (int)strlen(indent) - 2, indent);
}

/* matmul or conv2d into out0, then bias (and relu) in place over the rows. */
static void emit_epilogue_group(const fl_graph *g, const fl_group *grp, const int *ins, int nins, strbuf *sb) {
  const fl_node *gemm = &g->nodes[grp->nodes[0]];
  const fl_node *add = &g->nodes[grp->nodes[1]];
  int bias = add->inputs[0] == gemm->id ? add->inputs[1] : add->inputs[0];
  bool relu = grp->nnodes > 2;
  if (gemm->op == FL_OP_CONV2D) { /* the runtime applies the epilogue chunk by chunk */
    const fl_shape *w = &g->nodes[gemm->inputs[1]].shape;
    emit_window(g, gemm, &g->nodes[gemm->inputs[0]].shape, w->dims[0].coef, w->dims[1].coef, sb);
    sb_printf(sb, "  flrt_conv2d_bias(&w, %lld, in0, in1, in%d, %s, out0, scratch);\n", (long long)w->dims[3].coef,
              input_index(ins, nins, bias), relu ? "true" : "false");
    return;
  }
  sb_printf(sb, "  float *out = out0;\n  {\n");
  /* the GEMM's body reads in0/in1: its inputs come first in the group's list */
  strbuf body = {0};
  emit_node_body(g, gemm, &body);
  emit_indented(&body, sb);
  sb_free(&body);
  sb_printf(sb, "  }\n");
  char size[128], channels[96];
  emit_size(g, &gemm->shape, size, sizeof size);
  emit_dim(g, gemm->shape.dims[gemm->shape.rank - 1], channels, sizeof channels);
  sb_printf(sb, "  const int64_t channels = %s, rows = (%s) / channels;\n", channels, size);
  sb_printf(sb, "  const float *bias = in%d;\n", input_index(ins, nins, bias));
  sb_printf(sb, "  FLRT_PARALLEL_LOOP(rows * channels,\n");
  sb_printf(sb, "  for (int64_t r = 0; r < rows; r++) {\n    float *row = out + r * channels;\n"
                "    for (int64_t c = 0; c < channels; c++) {\n      const float v = row[c] + bias[c];\n");
  sb_printf(sb, relu ? "      row[c] = v > 0.0f ? v : 0.0f;\n" : "      row[c] = v;\n");
  sb_printf(sb, "    }\n  });\n");
}

/* Loss and gradient of softmax cross-entropy from one softmax per row. */
static void emit_xent_group(const fl_graph *g, const fl_group *grp, strbuf *sb) {
  const fl_node *x = &g->nodes[grp->nodes[0]];
  const fl_shape *logits = &g->nodes[x->inputs[1]].shape;
  char rows[128], classes[96];
  emit_dims_product(g, logits, 0, logits->rank - 1, rows, sizeof rows);
  emit_dim(g, logits->dims[logits->rank - 1], classes, sizeof classes);
  sb_printf(sb, "  flrt_softmax_xent(%s, %s, in0, in1, in2, out0, out1);\n", rows, classes);
}

static void emit_updates_group(const fl_graph *g, const fl_group *grp, const int *ins, int nins, strbuf *sb) {
  for (int i = 0; i < grp->nnodes; i++) {
    const fl_node *n = &g->nodes[grp->nodes[i]];
    char label[96];
    emit_node_label(g, n->inputs[0], label, sizeof label);
    sb_printf(sb, "  { /* %%%d %s of %s */\n", n->id, fl_op_name(n->op), label);
    for (int k = 0; k < n->ninputs; k++) {
      char pname[16];
      const char *name = param_name(n, k, pname, sizeof pname);
      sb_printf(sb, "    %sfloat *%s = in%d;\n", param_is_written(n, k) ? "" : "const ", name,
                input_index(ins, nins, n->inputs[k]));
    }
    strbuf body = {0};
    emit_update(g, n, &body);
    emit_indented(&body, sb);
    sb_free(&body);
    sb_printf(sb, "  }\n");
  }
}

/* The weight gradient's GEMM subtracts lr times the product from the weight. */
static void emit_gemm_sgd_group(const fl_graph *g, const fl_group *grp, const int *ins, int nins, strbuf *sb) {
  const fl_node *gemm = &g->nodes[grp->nodes[0]], *sgd = &g->nodes[grp->nodes[1]];
  gemm_args args;
  matmul_gemm_args(g, gemm, &args);
  char alpha[48];
  emit_float(alpha, sizeof alpha, -sgd->attr.lr);
  sb_printf(sb, "  flrt_gemm_update(%s, in%d, %s, in%d, %s, %s, in%d, %s);\n", args.head,
            input_index(ins, nins, gemm->inputs[0]), args.lda, input_index(ins, nins, gemm->inputs[1]), args.ldb,
            alpha, input_index(ins, nins, sgd->inputs[0]), args.ldc);
}

static void emit_pool_grad_relu_group(const fl_graph *g, const fl_group *grp, const int *ins, int nins, strbuf *sb) {
  const fl_node *pool = &g->nodes[grp->nodes[0]];
  emit_window(g, pool, &g->nodes[pool->inputs[0]].shape, pool->attr.ksize[0], pool->attr.ksize[1], sb);
  sb_printf(sb, "  flrt_max_pool_grad_relu(&w, in%d, in%d, out0);\n", input_index(ins, nins, pool->inputs[0]),
            input_index(ins, nins, pool->inputs[1]));
}

void emit_group_kernel(const fl_graph *g, const fl_group *grp, const char *fname, strbuf *sb) {
  /* a group reads at most every node once; an update group may read hundreds */
  int *ins = calloc((size_t)g->nnodes + 1, sizeof(int)), outs[8];
  if (!ins) abort();
  int nins = group_inputs(g, grp, ins), nouts = group_outputs(g, grp, outs);
  sb_printf(sb, "/* fused %s:\n", fl_group_kind_name(grp->kind));
  for (int i = 0; i < grp->nnodes; i++) {
    sb_printf(sb, " * ");
    strbuf line = {0};
    emit_node_comment(g, &g->nodes[grp->nodes[i]], &line);
    /* the single-node comment without its opening and closing markers */
    sb_printf(sb, "%.*s\n", (int)(line.len > 7 ? line.len - 7 : 0), line.text ? line.text + 3 : "");
    sb_free(&line);
  }
  sb_printf(sb, " */\nstatic void %s(", fname);
  int nparams = 0;
  for (int i = 0; i < nins; i++)
    sb_printf(sb, "%s%s%s *restrict in%d", nparams++ ? ", " : "", written_by_group(g, grp, ins[i]) ? "" : "const ",
              emit_ctype(g->nodes[ins[i]].dtype), i);
  for (int i = 0; i < nouts; i++)
    sb_printf(sb, "%s%s *restrict out%d", nparams++ ? ", " : "", emit_ctype(g->nodes[outs[i]].dtype), i);
  if (group_needs_scratch(g, grp)) sb_printf(sb, "%sfloat *restrict scratch", nparams++ ? ", " : "");
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  nparams += kernel_sym_list(g, uses, nparams > 0, "int64_t ", sb);
  if (!nparams) sb_printf(sb, "void");
  sb_printf(sb, ") {\n");
  switch (grp->kind) {
  case FL_GROUP_ELEMENTWISE: emit_elementwise_group(g, grp, ins, nins, sb); break;
  case FL_GROUP_EPILOGUE: emit_epilogue_group(g, grp, ins, nins, sb); break;
  case FL_GROUP_SOFTMAX_XENT: emit_xent_group(g, grp, sb); break;
  case FL_GROUP_UPDATES: emit_updates_group(g, grp, ins, nins, sb); break;
  case FL_GROUP_POOL_GRAD_RELU: emit_pool_grad_relu_group(g, grp, ins, nins, sb); break;
  case FL_GROUP_GEMM_SGD: emit_gemm_sgd_group(g, grp, ins, nins, sb); break;
  default: break;
  }
  sb_printf(sb, "}\n\n");
  free(ins);
}

void emit_group_call(const fl_graph *g, const fl_group *grp, const char *fname, const char *const *buffers,
                     const char *scratch, strbuf *sb) {
  int *ins = calloc((size_t)g->nnodes + 1, sizeof(int)), outs[8];
  if (!ins) abort();
  int nins = group_inputs(g, grp, ins), nouts = group_outputs(g, grp, outs);
  sb_printf(sb, "  %s(", fname);
  int nargs = 0;
  for (int i = 0; i < nins; i++) sb_printf(sb, "%s%s", nargs++ ? ", " : "", buffers[ins[i]]);
  for (int i = 0; i < nouts; i++) sb_printf(sb, "%s%s", nargs++ ? ", " : "", buffers[outs[i]]);
  if (group_needs_scratch(g, grp)) sb_printf(sb, "%s%s", nargs++ ? ", " : "", scratch);
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  kernel_sym_list(g, uses, nargs > 0, "", sb);
  sb_printf(sb, ");\n");
  free(ins);
}

/* The C expression of an elementwise op over operand expressions a and b:
 * the CUDA backend's kernels use the same text (kernels_cuda.c). */
void kernel_elementwise_expr(const fl_graph *g, const fl_node *n, const char *a, const char *b, char *buf,
                             size_t cap) {
  elementwise_expr(g, n, a, b, buf, cap);
}
