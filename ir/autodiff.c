/* autodiff.c - reverse-mode differentiation as more graph, and optimizer lowering.
 *
 * fl_gradients walks the nodes between the xs and y in reverse topological
 * order, applying one local derivative rule per op; every gradient is an
 * ordinary node, so shape inference, fusion and codegen treat the backward
 * pass like the forward one. Broadcasting is undone by SUM_TO, reductions by
 * BROADCAST. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

/* Adds a node and infers its shape at once, so later rules can read it. */
static int add_node(fl_graph *g, fl_op op, fl_dtype dtype, const int *inputs, int ninputs,
                    const fl_attrs *attr, fl_loc loc) {
  int id = fl_graph_add(g, op, dtype, inputs, ninputs, attr, loc);
  if (fl_infer_shapes(g)) return -1;
  return id;
}

static int unary(fl_graph *g, fl_op op, int x, fl_loc loc) {
  if (x < 0) return -1;
  return add_node(g, op, g->nodes[x].dtype, &x, 1, NULL, loc);
}

static int binary(fl_graph *g, fl_op op, int a, int b, fl_loc loc) {
  if (a < 0 || b < 0) return -1;
  int in[2] = {a, b};
  return add_node(g, op, g->nodes[a].dtype, in, 2, NULL, loc);
}

static int scalar(fl_graph *g, double value, fl_loc loc) {
  fl_attrs attr = fl_attrs_default();
  attr.value = value;
  return add_node(g, FL_OP_FILL, FL_F32, NULL, 0, &attr, loc);
}

static int fill_like(fl_graph *g, const fl_shape *shape, double value, fl_loc loc) {
  fl_attrs attr = fl_attrs_default();
  attr.value = value;
  attr.target = *shape;
  return add_node(g, FL_OP_FILL, FL_F32, NULL, 0, &attr, loc);
}

/* Reshapes / sums / broadcasts `x` to `shape` with an op that takes its target. */
static int to_shape(fl_graph *g, fl_op op, int x, const fl_shape *shape, bool mean, fl_loc loc) {
  if (x < 0) return -1;
  if (op != FL_OP_BROADCAST || !mean)
    if (fl_shape_eq(&g->nodes[x].shape, shape)) return x;
  fl_attrs attr = fl_attrs_default();
  attr.target = *shape;
  attr.mean = mean;
  return add_node(g, op, g->nodes[x].dtype, &x, 1, &attr, loc);
}

static int sum_to(fl_graph *g, int x, int like) {
  if (x < 0) return -1;
  fl_shape shape = g->nodes[like].shape;
  return to_shape(g, FL_OP_SUM_TO, x, &shape, false, g->nodes[like].loc);
}

static int matmul(fl_graph *g, int a, int b, bool ta, bool tb, fl_loc loc) {
  if (a < 0 || b < 0) return -1;
  fl_attrs attr = fl_attrs_default();
  attr.transpose_a = ta;
  attr.transpose_b = tb;
  int in[2] = {a, b};
  return add_node(g, FL_OP_MATMUL, FL_F32, in, 2, &attr, loc);
}

/* d(reduce)/dx: put the reduced axes back as 1s, then broadcast over them. */
static int reduce_grad(fl_graph *g, const fl_node *n, int gy) {
  const fl_node *x = &g->nodes[n->inputs[0]];
  fl_shape kept = x->shape;
  for (int i = 0; i < kept.rank; i++) {
    bool reduced = n->attr.naxes == 0;
    for (int j = 0; j < n->attr.naxes; j++) reduced |= n->attr.axes[j] == i;
    if (reduced) kept.dims[i] = fl_dim_const(1);
  }
  fl_loc loc = n->loc;
  fl_shape x_shape = x->shape;
  int reshaped = to_shape(g, FL_OP_RESHAPE, gy, &kept, false, loc);
  return to_shape(g, FL_OP_BROADCAST, reshaped, &x_shape, n->op == FL_OP_REDUCE_MEAN, loc);
}

/* Whether gradients flow from an op's output to its inputs at all. */
static bool stops_gradient(const fl_graph *g, const fl_node *n) {
  switch (n->op) {
  case FL_OP_ARGMAX: case FL_OP_EQUAL: case FL_OP_DROPOUT_MASK: case FL_OP_ASSIGN:
  case FL_OP_PLACEHOLDER: case FL_OP_VARIABLE: case FL_OP_CONST: case FL_OP_FILL:
  case FL_OP_RANDOM_UNIFORM: case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
  case FL_OP_GROUP: case FL_OP_MINIMIZE: case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM:
  case FL_OP_APPLY_ADAM:
    return true;
  case FL_OP_CAST: /* only a float-to-float cast is differentiable */
    return n->dtype != FL_F32 || g->nodes[n->inputs[0]].dtype != FL_F32;
  default:
    return false;
  }
}

/* Writes into in_grads[i] the gradient contribution of node n's input i,
 * given gy, the gradient of n's output (-1 where none flows). */
static int local_gradients(fl_graph *g, int id, int gy, int *in_grads) {
  int errors_before = fl_error_count();
  const fl_node n = g->nodes[id]; /* a copy: adding nodes may move the array */
  fl_loc loc = n.loc;
  int a = n.ninputs > 0 ? n.inputs[0] : -1, b = n.ninputs > 1 ? n.inputs[1] : -1;
  for (int i = 0; i < n.ninputs; i++) in_grads[i] = -1;
  switch (n.op) {
  case FL_OP_ADD:
    in_grads[0] = sum_to(g, gy, a);
    in_grads[1] = sum_to(g, gy, b);
    break;
  case FL_OP_SUB:
    in_grads[0] = sum_to(g, gy, a);
    in_grads[1] = sum_to(g, unary(g, FL_OP_NEG, gy, loc), b);
    break;
  case FL_OP_MUL:
    in_grads[0] = sum_to(g, binary(g, FL_OP_MUL, gy, b, loc), a);
    in_grads[1] = sum_to(g, binary(g, FL_OP_MUL, gy, a, loc), b);
    break;
  case FL_OP_DIV: /* d(a/b)/db = -(a/b)/b */
    in_grads[0] = sum_to(g, binary(g, FL_OP_DIV, gy, b, loc), a);
    in_grads[1] = sum_to(
        g, unary(g, FL_OP_NEG, binary(g, FL_OP_DIV, binary(g, FL_OP_MUL, gy, id, loc), b, loc), loc),
        b);
    break;
  case FL_OP_NEG:
    in_grads[0] = unary(g, FL_OP_NEG, gy, loc);
    break;
  case FL_OP_SQUARE:
    in_grads[0] = binary(g, FL_OP_MUL, gy, binary(g, FL_OP_MUL, a, scalar(g, 2.0, loc), loc), loc);
    break;
  case FL_OP_SQRT:
    in_grads[0] = binary(g, FL_OP_DIV, gy, binary(g, FL_OP_MUL, id, scalar(g, 2.0, loc), loc), loc);
    break;
  case FL_OP_LOG:
    in_grads[0] = binary(g, FL_OP_DIV, gy, a, loc);
    break;
  case FL_OP_EXP:
    in_grads[0] = binary(g, FL_OP_MUL, gy, id, loc);
    break;
  case FL_OP_RELU:
    in_grads[0] = binary(g, FL_OP_RELU_GRAD, gy, id, loc);
    break;
  case FL_OP_SIGMOID: /* y (1 - y) */
    in_grads[0] = binary(g, FL_OP_MUL, gy,
                         binary(g, FL_OP_MUL, id,
                                binary(g, FL_OP_SUB, scalar(g, 1.0, loc), id, loc), loc),
                         loc);
    break;
  case FL_OP_TANH: /* 1 - y^2 */
    in_grads[0] = binary(g, FL_OP_MUL, gy,
                         binary(g, FL_OP_SUB, scalar(g, 1.0, loc), unary(g, FL_OP_SQUARE, id, loc),
                                loc),
                         loc);
    break;
  case FL_OP_CAST:
    in_grads[0] = gy;
    break;
  case FL_OP_MATMUL: {
    bool ta = n.attr.transpose_a, tb = n.attr.transpose_b;
    if (!ta && !tb) {
      in_grads[0] = matmul(g, gy, b, false, true, loc);
      in_grads[1] = matmul(g, a, gy, true, false, loc);
    } else if (ta && !tb) {
      in_grads[0] = matmul(g, b, gy, false, true, loc);
      in_grads[1] = matmul(g, a, gy, false, false, loc);
    } else if (!ta && tb) {
      in_grads[0] = matmul(g, gy, b, false, false, loc);
      in_grads[1] = matmul(g, gy, a, true, false, loc);
    } else {
      in_grads[0] = matmul(g, b, gy, true, true, loc);
      in_grads[1] = matmul(g, gy, a, true, true, loc);
    }
    break;
  }
  case FL_OP_RESHAPE: {
    fl_shape shape = g->nodes[a].shape;
    in_grads[0] = to_shape(g, FL_OP_RESHAPE, gy, &shape, false, loc);
    break;
  }
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN:
    in_grads[0] = reduce_grad(g, &n, gy);
    break;
  case FL_OP_BROADCAST:
    if (n.attr.mean) goto unsupported;
    in_grads[0] = sum_to(g, gy, a);
    break;
  case FL_OP_SUM_TO: {
    fl_shape shape = g->nodes[a].shape;
    in_grads[0] = to_shape(g, FL_OP_BROADCAST, gy, &shape, false, loc);
    break;
  }
  case FL_OP_SOFTMAX: { /* y * (gy - sum(gy * y, last axis)) */
    int gyy = binary(g, FL_OP_MUL, gy, id, loc);
    fl_attrs attr = fl_attrs_default();
    attr.naxes = 1;
    attr.axes[0] = -1;
    attr.keepdims = true;
    int sum = gyy < 0 ? -1 : add_node(g, FL_OP_REDUCE_SUM, FL_F32, &gyy, 1, &attr, loc);
    in_grads[0] = binary(g, FL_OP_MUL, id, binary(g, FL_OP_SUB, gy, sum, loc), loc);
    break;
  }
  case FL_OP_SOFTMAX_XENT: { /* TensorFlow 1: no gradient into the labels */
    int in[3] = {a, b, gy};
    in_grads[1] = add_node(g, FL_OP_SOFTMAX_XENT_GRAD, FL_F32, in, 3, NULL, loc);
    break;
  }
  case FL_OP_CONV2D: {
    fl_attrs attr = n.attr;
    attr.target = g->nodes[a].shape;
    int in_x[2] = {gy, b};
    in_grads[0] = add_node(g, FL_OP_CONV2D_GRAD_INPUT, FL_F32, in_x, 2, &attr, loc);
    attr.target = g->nodes[b].shape;
    int in_w[2] = {a, gy};
    in_grads[1] = add_node(g, FL_OP_CONV2D_GRAD_FILTER, FL_F32, in_w, 2, &attr, loc);
    break;
  }
  case FL_OP_MAX_POOL: {
    int in[2] = {a, gy};
    in_grads[0] = add_node(g, FL_OP_MAX_POOL_GRAD, FL_F32, in, 2, &n.attr, loc);
    break;
  }
  default:
    if (stops_gradient(g, &n)) break;
  unsupported:
    fl_error(loc, "the gradient of %s is not supported", fl_op_name(n.op));
    return -1;
  }
  return fl_error_count() > errors_before ? -1 : 0;
}

int fl_gradients(fl_graph *g, int y, const int *xs, int nxs, int *grads) {
  int errors_before = fl_error_count();
  int count = g->nnodes;
  bool *from_x = xcalloc((size_t)count, sizeof(bool));   /* depends on some x */
  bool *to_y = xcalloc((size_t)count, sizeof(bool));     /* y depends on it */
  int *grad = malloc((size_t)count * sizeof(int));
  if (!grad) abort();
  for (int i = 0; i < count; i++) grad[i] = -1;
  for (int i = 0; i < nxs; i++) from_x[xs[i]] = true;
  for (int i = 0; i < count; i++) {
    const fl_node *n = &g->nodes[i];
    if (stops_gradient(g, n) && !from_x[i]) continue;
    for (int j = 0; j < n->ninputs && !from_x[i]; j++)
      if (from_x[n->inputs[j]] && !stops_gradient(g, n)) from_x[i] = true;
  }
  to_y[y] = true;
  for (int i = y; i >= 0; i--) {
    if (!to_y[i]) continue;
    const fl_node *n = &g->nodes[i];
    for (int j = 0; j < n->ninputs; j++) to_y[n->inputs[j]] = true;
  }
  int status = 0;
  if (from_x[y]) {
    fl_shape y_shape = g->nodes[y].shape;
    grad[y] = fill_like(g, &y_shape, 1.0, g->nodes[y].loc);
    if (grad[y] < 0) status = -1;
  }
  int in_grads[16];
  for (int i = y; i >= 0 && status == 0; i--) {
    if (grad[i] < 0 || !from_x[i] || stops_gradient(g, &g->nodes[i])) continue;
    if (g->nodes[i].ninputs > 16) continue;
    if (local_gradients(g, i, grad[i], in_grads)) {
      status = -1;
      break;
    }
    const fl_node *n = &g->nodes[i];
    for (int j = 0; j < n->ninputs; j++) {
      int in = n->inputs[j];
      if (in_grads[j] < 0 || !from_x[in] || !to_y[in]) continue;
      if (grad[in] < 0)
        grad[in] = in_grads[j];
      else {
        grad[in] = binary(g, FL_OP_ADD, grad[in], in_grads[j], g->nodes[in].loc);
        if (grad[in] < 0) status = -1;
      }
      n = &g->nodes[i]; /* adding nodes may have moved the array */
    }
  }
  for (int i = 0; i < nxs; i++) grads[i] = status == 0 ? grad[xs[i]] : -1;
  free(from_x);
  free(to_y);
  free(grad);
  if (fl_error_count() > errors_before) status = -1;
  return status;
}

/* A zero-initialised slot variable beside `var` (optimizer state). */
static int slot_variable(fl_graph *g, int var, const char *suffix, double value, bool scalar_slot) {
  fl_loc loc = g->nodes[var].loc;
  fl_shape shape = g->nodes[var].shape;
  if (scalar_slot) shape.rank = 0;
  int init = fill_like(g, &shape, value, loc);
  if (init < 0) return -1;
  fl_attrs attr = fl_attrs_default();
  attr.init = init;
  attr.trainable = false;
  int slot = add_node(g, FL_OP_VARIABLE, FL_F32, NULL, 0, &attr, loc);
  if (slot < 0) return -1;
  const char *base = g->nodes[var].name;
  char name[256];
  if (base)
    snprintf(name, sizeof name, "%s/%s", base, suffix);
  else
    snprintf(name, sizeof name, "%s", suffix);
  fl_node_set_name(g, slot, name);
  return slot;
}

static int *trainable_variables(const fl_graph *g, int loss, int *count) {
  bool *needed = xcalloc((size_t)g->nnodes, sizeof(bool));
  fl_mark_needed(g, &loss, 1, NULL, needed);
  int *vars = xcalloc((size_t)g->nnodes, sizeof(int));
  *count = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (needed[i] && g->nodes[i].op == FL_OP_VARIABLE && g->nodes[i].attr.trainable &&
        g->nodes[i].dtype == FL_F32)
      vars[(*count)++] = i;
  free(needed);
  return vars;
}

/* Lowers one MINIMIZE node into gradients and a GROUP of update nodes. */
static int lower_minimize(fl_graph *g, int minimize) {
  fl_node m = g->nodes[minimize];
  int loss = m.inputs[0];
  int nvars;
  int *vars = trainable_variables(g, loss, &nvars);
  if (nvars == 0) {
    fl_error(m.loc, "minimize: the loss depends on no trainable variable");
    free(vars);
    return -1;
  }
  int *grads = xcalloc((size_t)nvars, sizeof(int));
  int *updates = xcalloc((size_t)nvars + 2, sizeof(int));
  int nupdates = 0, status = 0;
  if (fl_gradients(g, loss, vars, nvars, grads)) status = -1;
  int beta1_power = -1, beta2_power = -1;
  if (status == 0 && m.attr.optimizer == FL_OPT_ADAM) {
    beta1_power = slot_variable(g, vars[0], "beta1_power", m.attr.beta1, true);
    beta2_power = slot_variable(g, vars[0], "beta2_power", m.attr.beta2, true);
    if (beta1_power < 0 || beta2_power < 0) status = -1;
    /* one pair of powers per optimizer, named as TensorFlow names them */
    if (status == 0) {
      fl_node_set_name(g, beta1_power, "beta1_power");
      fl_node_set_name(g, beta2_power, "beta2_power");
    }
  }
  bool any_gradient = false;
  for (int i = 0; i < nvars && status == 0; i++) any_gradient |= grads[i] >= 0;
  if (status == 0 && !any_gradient) {
    /* TensorFlow's "No gradients provided for any variable" */
    fl_error(m.loc, "minimize: no gradient reaches any trainable variable: the loss depends on them only "
                    "through argmax, equal or a cast to an integer or bool");
    status = -1;
  }
  fl_attrs attr = m.attr;
  attr.init = -1;
  for (int i = 0; i < nvars && status == 0; i++) {
    int var = vars[i], grad = grads[i];
    if (grad < 0) continue; /* a variable the loss reads but that gets no gradient */
    int update = -1;
    if (m.attr.optimizer == FL_OPT_SGD) {
      int in[2] = {var, grad};
      update = add_node(g, FL_OP_APPLY_SGD, FL_F32, in, 2, &attr, m.loc);
    } else if (m.attr.optimizer == FL_OPT_MOMENTUM) {
      int accum = slot_variable(g, var, "Momentum", 0.0, false);
      int in[3] = {var, accum, grad};
      update = accum < 0 ? -1 : add_node(g, FL_OP_APPLY_MOMENTUM, FL_F32, in, 3, &attr, m.loc);
    } else {
      int slot_m = slot_variable(g, var, "Adam", 0.0, false);
      int slot_v = slot_variable(g, var, "Adam_1", 0.0, false);
      int in[6] = {var, slot_m, slot_v, grad, beta1_power, beta2_power};
      update = slot_m < 0 || slot_v < 0 ? -1
                                        : add_node(g, FL_OP_APPLY_ADAM, FL_F32, in, 6, &attr, m.loc);
    }
    if (update < 0) status = -1;
    updates[nupdates++] = update;
  }
  if (status == 0 && m.attr.optimizer == FL_OPT_ADAM) {
    /* The powers advance after every APPLY_ADAM has read them: side effects
     * run in node order, and these nodes come last. */
    int next1 = binary(g, FL_OP_MUL, beta1_power, scalar(g, m.attr.beta1, m.loc), m.loc);
    int next2 = binary(g, FL_OP_MUL, beta2_power, scalar(g, m.attr.beta2, m.loc), m.loc);
    int in1[2] = {beta1_power, next1}, in2[2] = {beta2_power, next2};
    updates[nupdates++] = next1 < 0 ? -1 : add_node(g, FL_OP_ASSIGN, FL_F32, in1, 2, NULL, m.loc);
    updates[nupdates++] = next2 < 0 ? -1 : add_node(g, FL_OP_ASSIGN, FL_F32, in2, 2, NULL, m.loc);
    if (updates[nupdates - 1] < 0 || updates[nupdates - 2] < 0) status = -1;
  }
  if (status == 0) {
    fl_attrs group_attr = m.attr;
    group_attr.loss = loss;
    int group = add_node(g, FL_OP_GROUP, FL_F32, updates, nupdates, &group_attr, m.loc);
    if (group < 0) status = -1;
    else {
      /* The train op's name and every reference move to the group; the
       * MINIMIZE node stays behind as an empty group nobody runs. */
      fl_node_set_name(g, group, m.name);
      fl_node_set_name(g, minimize, NULL);
      fl_node *old = &g->nodes[minimize];
      old->op = FL_OP_GROUP;
      old->ninputs = 0;
      for (int i = 0; i < g->train.nactions; i++) {
        fl_action *act = &g->train.actions[i];
        for (int j = 0; j < act->ntargets; j++)
          if (act->targets[j] == minimize) act->targets[j] = group;
      }
      for (int i = 0; i < g->nnodes; i++)
        for (int j = 0; j < g->nodes[i].ninputs; j++)
          if (g->nodes[i].inputs[j] == minimize && i != group) {
            fl_error(g->nodes[i].loc, "%s: a train op can only be run, not used as a value",
                     fl_op_name(g->nodes[i].op));
            status = -1;
          }
    }
  }
  free(vars);
  free(grads);
  free(updates);
  return status;
}

int fl_autodiff(fl_graph *g) {
  int count = g->nnodes;
  if (g->nforward == 0) g->nforward = count;
  for (int i = 0; i < count; i++)
    if (g->nodes[i].op == FL_OP_MINIMIZE && lower_minimize(g, i)) return -1;
  return fl_infer_shapes(g);
}

void fl_mark_needed(const fl_graph *g, const int *targets, int ntargets, const bool *fed,
                    bool *needed) {
  memset(needed, 0, (size_t)g->nnodes * sizeof(bool));
  for (int i = 0; i < ntargets; i++) needed[targets[i]] = true;
  for (int i = g->nnodes - 1; i >= 0; i--) {
    if (!needed[i] || (fed && fed[i])) continue;
    const fl_node *n = &g->nodes[i];
    for (int j = 0; j < n->ninputs; j++) needed[n->inputs[j]] = true;
  }
}

static const char *when_name(fl_when when) {
  switch (when) {
  case FL_WHEN_START: return "start";
  case FL_WHEN_END: return "end";
  case FL_WHEN_TEST: return "test";
  default: return "every step";
  }
}

/* Every placeholder an action reads must be fed: by the data set (for actions
 * that run on a batch) or by the action's own `with`. */
static int check_train_feeds(fl_graph *g) {
  const fl_train *t = &g->train;
  bool *fed = xcalloc((size_t)g->nnodes, sizeof(bool));
  bool *needed = xcalloc((size_t)g->nnodes, sizeof(bool));
  int status = 0;
  for (int i = 0; i < t->nactions && status == 0; i++) {
    const fl_action *a = &t->actions[i];
    memset(fed, 0, (size_t)g->nnodes * sizeof(bool));
    bool on_batch = a->when != FL_WHEN_START && a->when != FL_WHEN_END;
    if (on_batch && t->data != FL_DATA_NONE) {
      if (t->images_node >= 0) fed[t->images_node] = true;
      if (t->labels_node >= 0) fed[t->labels_node] = true;
    }
    for (int j = 0; j < a->nfeeds; j++) fed[a->feeds[j].node] = true;
    fl_mark_needed(g, a->targets, a->ntargets, fed, needed);
    for (int j = 0; j < g->nnodes; j++) {
      const fl_node *n = &g->nodes[j];
      if (!needed[j] || fed[j] || n->op != FL_OP_PLACEHOLDER) continue;
      char ph[64];
      if (n->name) snprintf(ph, sizeof ph, "%s", n->name);
      else snprintf(ph, sizeof ph, "%%%d", j);
      fl_error(a->loc, "%s (%s) needs placeholder '%s' fed: add `with %s = VALUE`%s",
               a->kind == FL_ACT_RUN ? "run" : "print", when_name(a->when), ph, ph,
               on_batch ? "" : " (start: and end: actions get no data batch)");
      fl_note(n->loc, "'%s' is declared here", ph);
      status = -1;
      break;
    }
    for (int j = 0; j < a->nfeeds && status == 0; j++) {
      const fl_node *n = &g->nodes[a->feeds[j].node];
      if (n->shape.rank != 0) {
        char shape[160];
        fl_error(a->feeds[j].loc, "feed: '%s' has shape %s, but `with` feeds only scalars",
                 n->name ? n->name : "?", fl_shape_str(g, &n->shape, shape, sizeof shape));
        status = -1;
      }
    }
  }
  free(fed);
  free(needed);
  return status;
}

static int check_data_feeds(fl_graph *g) {
  const fl_train *t = &g->train;
  if (t->data != FL_DATA_MNIST) return 0;
  const struct {
    int node;
    int64_t width;
    const char *what;
  } feeds[2] = {{t->images_node, 784, "images"}, {t->labels_node, 10, "one-hot labels"}};
  for (int i = 0; i < 2; i++) {
    if (feeds[i].node < 0) continue;
    const fl_node *n = &g->nodes[feeds[i].node];
    bool ok = n->op == FL_OP_PLACEHOLDER && n->dtype == FL_F32 && n->shape.rank == 2 &&
              fl_dim_eq(n->shape.dims[1], fl_dim_const(feeds[i].width)) &&
              n->shape.dims[0].sym >= 0 && n->shape.dims[0].coef == 1;
    if (!ok) {
      char shape[160];
      fl_error(t->loc, "mnist data feeds %s as f32[N, %lld], but '%s' is %s %s%s",
               feeds[i].what, (long long)feeds[i].width, n->name ? n->name : "?",
               fl_op_name(n->op), fl_dtype_name(n->dtype),
               fl_shape_str(g, &n->shape, shape, sizeof shape));
      return -1;
    }
  }
  return 0;
}

int fl_finish(fl_graph *g) {
  if (fl_infer_shapes(g) || fl_autodiff(g)) return -1;
  if (check_data_feeds(g) || check_train_feeds(g)) return -1;
  return 0;
}
