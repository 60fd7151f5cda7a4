/* cost.c - how much arithmetic each node does: per-layer summaries and GFLOP/s. */
#include "ir.h"

int64_t fl_dim_value(fl_dim d, int64_t batch) { return d.sym < 0 ? d.coef : d.coef * batch; }

int64_t fl_shape_size_at(const fl_shape *s, int64_t batch) {
  int64_t n = 1;
  for (int i = 0; i < s->rank; i++) n *= fl_dim_value(s->dims[i], batch);
  return n;
}

bool fl_node_is_gemm(const fl_graph *g, int node) {
  switch (g->nodes[node].op) {
  case FL_OP_MATMUL: case FL_OP_CONV2D: case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER:
    return true;
  default:
    return false;
  }
}

int64_t fl_node_flops(const fl_graph *g, int node, int64_t batch) {
  const fl_node *n = &g->nodes[node];
  int64_t out = fl_shape_size_at(&n->shape, batch);
  const fl_shape *in0 = n->ninputs > 0 ? &g->nodes[n->inputs[0]].shape : NULL;
  switch (n->op) {
  case FL_OP_MATMUL: {
    int64_t inner = fl_dim_value(in0->dims[n->attr.transpose_a ? 0 : 1], batch);
    return 2 * out * inner;
  }
  case FL_OP_CONV2D: case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER: {
    /* all three are the same GEMM: (N*OH*OW) x (KH*KW*C) x O */
    const fl_shape *w = n->op == FL_OP_CONV2D_GRAD_FILTER ? &n->shape : &g->nodes[n->inputs[1]].shape;
    const fl_shape *y = n->op == FL_OP_CONV2D ? &n->shape
                        : n->op == FL_OP_CONV2D_GRAD_INPUT ? in0 : &g->nodes[n->inputs[1]].shape;
    return 2 * fl_shape_size_at(y, batch) * w->dims[0].coef * w->dims[1].coef * w->dims[2].coef;
  }
  case FL_OP_MAX_POOL:
    return out * n->attr.ksize[0] * n->attr.ksize[1];
  case FL_OP_MAX_POOL_GRAD:
    return fl_shape_size_at(&g->nodes[n->inputs[1]].shape, batch) * n->attr.ksize[0] * n->attr.ksize[1];
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN: case FL_OP_SUM_TO: case FL_OP_ARGMAX:
    return fl_shape_size_at(in0, batch);
  case FL_OP_SOFTMAX: case FL_OP_SOFTMAX_XENT_GRAD:
    return 5 * out;
  case FL_OP_SOFTMAX_XENT:
    return 5 * fl_shape_size_at(in0, batch);
  case FL_OP_APPLY_SGD:
    return 2 * out;
  case FL_OP_APPLY_MOMENTUM:
    return 4 * out;
  case FL_OP_APPLY_ADAM:
    return 12 * out;
  default:
    return fl_op_is_elementwise(n->op) || n->op == FL_OP_BROADCAST || n->op == FL_OP_DROPOUT_MASK ? out : 0;
  }
}
