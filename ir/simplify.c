/* simplify.c - constant folding and common subexpressions, after autodiff.
 *
 * Both passes rewrite uses, never delete: a replaced node stays in the array
 * (ids stay topological, names and train actions stay valid) and simply stops
 * being needed by any entry, which is how dead code disappears from the
 * generated programs. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static bool fill_scalar(const fl_graph *g, int id, double *value) {
  const fl_node *n = &g->nodes[id];
  if (n->op == FL_OP_FILL) {
    *value = n->attr.value;
    return true;
  }
  if (n->op == FL_OP_CONST && fl_shape_const_size(&n->shape) == 1 && n->attr.data) {
    *value = n->attr.data[0];
    return true;
  }
  return false;
}

/* The value of an elementwise op on constant scalars, for folding. */
static bool fold_value(fl_op op, double a, double b, double *out) {
  switch (op) {
  case FL_OP_ADD: *out = a + b; return true;
  case FL_OP_SUB: *out = a - b; return true;
  case FL_OP_MUL: *out = a * b; return true;
  case FL_OP_DIV:
    if (b == 0) return false;
    *out = a / b;
    return true;
  case FL_OP_NEG: *out = -a; return true;
  case FL_OP_SQUARE: *out = a * a; return true;
  default: return false;
  }
}

/* Replaces every use of `from` by `to` in nodes after `from`, the train
 * actions and the train ops' loss links. */
static void replace_uses(fl_graph *g, int from, int to) {
  for (int i = from + 1; i < g->nnodes; i++) {
    fl_node *n = &g->nodes[i];
    for (int j = 0; j < n->ninputs; j++)
      if (n->inputs[j] == from) n->inputs[j] = to;
    if (n->op == FL_OP_GROUP && n->attr.loss == from) n->attr.loss = to;
  }
  for (int i = 0; i < g->train.nactions; i++) {
    fl_action *a = &g->train.actions[i];
    for (int j = 0; j < a->ntargets; j++)
      if (a->targets[j] == from) a->targets[j] = to;
    for (int j = 0; j < a->npieces; j++)
      if (a->pieces[j].node == from) a->pieces[j].node = to;
  }
  if (g->nodes[from].name && !g->nodes[to].name) fl_node_set_name(g, to, g->nodes[from].name);
}

/* Nodes something feeds: they must keep their identity. */
static bool is_fed(const fl_graph *g, int id) {
  const fl_train *t = &g->train;
  if (id == t->images_node || id == t->labels_node) return true;
  for (int i = 0; i < t->nactions; i++)
    for (int j = 0; j < t->actions[i].nfeeds; j++)
      if (t->actions[i].feeds[j].node == id) return true;
  return false;
}

int fl_fold_constants(fl_graph *g) {
  int folded = 0;
  for (int i = 0; i < g->nnodes; i++) {
    fl_node *n = &g->nodes[i];
    if (!fl_op_is_elementwise(n->op) || n->dtype != FL_F32 || is_fed(g, i)) continue;
    double a = 0, b = 0, v;
    if (n->ninputs < 1 || !fill_scalar(g, n->inputs[0], &a)) continue;
    if (n->ninputs > 1 && !fill_scalar(g, n->inputs[1], &b)) continue;
    if (!fold_value(n->op, a, b, &v)) continue;
    /* The node becomes a fill of its own (already inferred) shape. */
    n->op = FL_OP_FILL;
    n->ninputs = 0;
    n->attr.value = v;
    n->attr.target = n->shape;
    folded++;
  }
  /* x * 1 and x + 0 where x already has the result's shape: use x. Not when
   * x is a variable's storage: the product is a value taken before the run's
   * updates, the variable itself is read when an update runs. */
  for (int i = 0; i < g->nnodes; i++) {
    fl_node *n = &g->nodes[i];
    if ((n->op != FL_OP_MUL && n->op != FL_OP_ADD) || is_fed(g, i)) continue;
    double identity = n->op == FL_OP_MUL ? 1.0 : 0.0, v;
    for (int k = 0; k < 2; k++) {
      int x = n->inputs[k], c = n->inputs[1 - k];
      if (fill_scalar(g, c, &v) && v == identity && fl_shape_eq(&g->nodes[x].shape, &n->shape) &&
          g->nodes[x].dtype == n->dtype && g->nodes[fl_storage_of(g, x)].op != FL_OP_VARIABLE) {
        replace_uses(g, i, x);
        folded++;
        break;
      }
    }
  }
  return folded;
}

static bool same_attrs(const fl_node *a, const fl_node *b) {
  const fl_attrs *x = &a->attr, *y = &b->attr;
  if (x->value != y->value || x->a != y->a || x->b != y->b || x->naxes != y->naxes ||
      x->keepdims != y->keepdims || x->mean != y->mean || x->transpose_a != y->transpose_a ||
      x->transpose_b != y->transpose_b || x->padding != y->padding ||
      x->strides[0] != y->strides[0] || x->strides[1] != y->strides[1] ||
      x->ksize[0] != y->ksize[0] || x->ksize[1] != y->ksize[1] || x->stream != y->stream)
    return false;
  for (int i = 0; i < x->naxes; i++)
    if (x->axes[i] != y->axes[i]) return false;
  if (!fl_shape_eq(&x->target, &y->target)) return false;
  if (a->op == FL_OP_CONST) {
    int64_t n = fl_shape_const_size(&a->shape);
    if (!x->data || !y->data || memcmp(x->data, y->data, (size_t)n * sizeof(double)) != 0) return false;
  }
  return true;
}

/* Ops whose every evaluation gives the same value from the same inputs. */
static bool is_pure_value(fl_op op) {
  switch (op) {
  case FL_OP_PLACEHOLDER: case FL_OP_VARIABLE: case FL_OP_RANDOM_UNIFORM:
  case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL: case FL_OP_DROPOUT_MASK:
    return false;
  default:
    return !fl_op_has_side_effect(op);
  }
}

int fl_eliminate_common(fl_graph *g) {
  int merged = 0;
  /* A hash of (op, inputs) buckets the candidates; equal nodes are rare
   * enough that a bucket's chain stays short. */
  int nbuckets = 1;
  while (nbuckets < 2 * g->nnodes) nbuckets *= 2;
  int *head = malloc((size_t)nbuckets * sizeof(int));
  int *next = malloc((size_t)g->nnodes * sizeof(int));
  if (!head || !next) abort();
  for (int i = 0; i < nbuckets; i++) head[i] = -1;
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    next[i] = -1;
    if (!is_pure_value(n->op) || is_fed(g, i)) continue;
    uint64_t h = (uint64_t)n->op * 0x9E3779B97F4A7C15ull ^ (uint64_t)n->dtype;
    for (int j = 0; j < n->ninputs; j++) h = (h ^ (uint64_t)n->inputs[j]) * 0x100000001B3ull;
    int bucket = (int)(h & (uint64_t)(nbuckets - 1));
    int match = -1;
    for (int k = head[bucket]; k >= 0 && match < 0; k = next[k]) {
      const fl_node *o = &g->nodes[k];
      if (o->op != n->op || o->dtype != n->dtype || o->ninputs != n->ninputs ||
          !fl_shape_eq(&o->shape, &n->shape))
        continue;
      bool same = true;
      for (int j = 0; j < n->ninputs && same; j++) same = o->inputs[j] == n->inputs[j];
      if (same && same_attrs(o, n)) match = k;
    }
    if (match >= 0) {
      replace_uses(g, i, match);
      merged++;
    } else {
      next[i] = head[bucket];
      head[bucket] = i;
    }
  }
  free(head);
  free(next);
  return merged;
}

int fl_simplify(fl_graph *g) {
  int changes = 0, round;
  /* Folding exposes common nodes and the other way round; a few rounds settle it. */
  for (int pass = 0; pass < 4; pass++) {
    round = fl_fold_constants(g) + fl_eliminate_common(g);
    changes += round;
    if (!round) break;
  }
  return changes;
}
