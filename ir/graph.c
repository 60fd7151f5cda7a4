/* graph.c - building the IR: nodes, symbols, dtypes and shape helpers. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return q;
}

static char *xstrdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = xrealloc(NULL, n);
  memcpy(d, s, n);
  return d;
}

static const char *const op_names[] = {
#define FL_OP_NAME(e, s) s,
    FL_OPS(FL_OP_NAME)
#undef FL_OP_NAME
};

const char *fl_op_name(fl_op op) {
  return (unsigned)op < FL_OP_COUNT ? op_names[op] : "?";
}

bool fl_op_has_side_effect(fl_op op) {
  switch (op) {
  case FL_OP_ASSIGN: case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM:
  case FL_OP_GROUP: case FL_OP_MINIMIZE:
    return true;
  default:
    return false;
  }
}

bool fl_op_is_elementwise(fl_op op) {
  switch (op) {
  case FL_OP_ADD: case FL_OP_SUB: case FL_OP_MUL: case FL_OP_DIV: case FL_OP_NEG:
  case FL_OP_SQUARE: case FL_OP_SQRT: case FL_OP_LOG: case FL_OP_EXP: case FL_OP_RELU:
  case FL_OP_SIGMOID: case FL_OP_TANH: case FL_OP_RELU_GRAD: case FL_OP_EQUAL: case FL_OP_CAST:
    return true;
  default:
    return false;
  }
}

static const char *const dtype_names[FL_DTYPE_COUNT] = {"f32", "i32", "i64", "bool"};

const char *fl_dtype_name(fl_dtype t) {
  return (unsigned)t < FL_DTYPE_COUNT ? dtype_names[t] : "?";
}

bool fl_dtype_parse(const char *name, fl_dtype *out) {
  static const struct {
    const char *name;
    fl_dtype type;
  } aliases[] = {{"f32", FL_F32},     {"float32", FL_F32}, {"float", FL_F32}, {"i32", FL_I32},
                 {"int32", FL_I32},   {"i64", FL_I64},     {"int64", FL_I64}, {"bool", FL_BOOL}};
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (strcmp(name, aliases[i].name) == 0) {
      *out = aliases[i].type;
      return true;
    }
  return false;
}

size_t fl_dtype_size(fl_dtype t) {
  switch (t) {
  case FL_F32: case FL_I32: return 4;
  case FL_I64: return 8;
  case FL_BOOL: return 1;
  default: return 0;
  }
}

fl_dim fl_dim_const(int64_t v) { return (fl_dim){.coef = v, .sym = -1}; }
fl_dim fl_dim_sym(int sym) { return (fl_dim){.coef = 1, .sym = sym}; }
bool fl_dim_eq(fl_dim a, fl_dim b) { return a.coef == b.coef && a.sym == b.sym; }
bool fl_dim_is_const(fl_dim d) { return d.sym < 0; }

bool fl_shape_eq(const fl_shape *a, const fl_shape *b) {
  if (a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!fl_dim_eq(a->dims[i], b->dims[i])) return false;
  return true;
}

bool fl_shape_is_const(const fl_shape *s) {
  for (int i = 0; i < s->rank; i++)
    if (!fl_dim_is_const(s->dims[i])) return false;
  return true;
}

int64_t fl_shape_const_size(const fl_shape *s) {
  int64_t n = 1;
  for (int i = 0; i < s->rank; i++) {
    if (!fl_dim_is_const(s->dims[i])) return -1;
    n *= s->dims[i].coef;
  }
  return n;
}

fl_graph *fl_graph_new(void) {
  fl_graph *g = xrealloc(NULL, sizeof *g);
  memset(g, 0, sizeof *g);
  g->train.images_node = g->train.labels_node = -1;
  g->train.validation = 5000;
  g->train.batch = 100;
  g->train.steps = 1000;
  g->train.seed = 1;
  return g;
}

void fl_graph_free(fl_graph *g) {
  if (!g) return;
  for (int i = 0; i < g->nnodes; i++) {
    free(g->nodes[i].inputs);
    free(g->nodes[i].attr.data);
    free(g->nodes[i].name);
  }
  free(g->nodes);
  for (int i = 0; i < g->nsyms; i++) free(g->syms[i]);
  free(g->syms);
  for (int i = 0; i < g->train.nactions; i++) {
    fl_action *a = &g->train.actions[i];
    free(a->targets);
    for (int j = 0; j < a->npieces; j++) free(a->pieces[j].text);
    free(a->pieces);
    free(a->feeds);
  }
  free(g->train.actions);
  free(g->train.data_dir);
  free(g);
}

fl_attrs fl_attrs_default(void) {
  fl_attrs a;
  memset(&a, 0, sizeof a);
  a.init = -1;
  a.trainable = true;
  a.stream = -1;
  a.loss = -1;
  return a;
}

int fl_graph_add(fl_graph *g, fl_op op, fl_dtype dtype, const int *inputs, int ninputs,
                 const fl_attrs *attr, fl_loc loc) {
  if (g->nnodes == g->cap) {
    g->cap = g->cap ? 2 * g->cap : 64;
    g->nodes = xrealloc(g->nodes, (size_t)g->cap * sizeof *g->nodes);
  }
  fl_node *n = &g->nodes[g->nnodes];
  memset(n, 0, sizeof *n);
  n->id = g->nnodes;
  n->op = op;
  n->dtype = dtype;
  n->attr = attr ? *attr : fl_attrs_default();
  if (attr && attr->data) {
    /* The graph owns constant data: copy what the caller lent. */
    int64_t count = fl_shape_const_size(&attr->target);
    size_t bytes = (size_t)(count > 0 ? count : 1) * sizeof(double);
    n->attr.data = xrealloc(NULL, bytes);
    memcpy(n->attr.data, attr->data, bytes);
  }
  n->ninputs = ninputs;
  n->inputs = xrealloc(NULL, (size_t)(ninputs > 0 ? ninputs : 1) * sizeof(int));
  for (int i = 0; i < ninputs; i++) n->inputs[i] = inputs[i];
  n->loc = loc;
  return g->nnodes++;
}

int fl_graph_symbol(fl_graph *g, const char *name) {
  if (strcmp(name, "None") == 0) name = "N";
  for (int i = 0; i < g->nsyms; i++)
    if (strcmp(g->syms[i], name) == 0) return i;
  g->syms = xrealloc(g->syms, (size_t)(g->nsyms + 1) * sizeof *g->syms);
  g->syms[g->nsyms] = xstrdup(name);
  return g->nsyms++;
}

void fl_node_set_name(fl_graph *g, int node, const char *name) {
  free(g->nodes[node].name);
  g->nodes[node].name = name ? xstrdup(name) : NULL;
}

int fl_graph_find(const fl_graph *g, const char *name) {
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (g->nodes[i].name && strcmp(g->nodes[i].name, name) == 0) return i;
  return -1;
}

int fl_graph_new_stream(fl_graph *g) { return g->nstreams++; }

char *fl_dim_str(const fl_graph *g, fl_dim d, char *buf, size_t cap) {
  if (d.sym < 0)
    snprintf(buf, cap, "%lld", (long long)d.coef);
  else if (d.coef == 1)
    snprintf(buf, cap, "%s", g->syms[d.sym]);
  else
    snprintf(buf, cap, "%lld*%s", (long long)d.coef, g->syms[d.sym]);
  return buf;
}

char *fl_shape_str(const fl_graph *g, const fl_shape *s, char *buf, size_t cap) {
  size_t used = 0;
  if (cap == 0) return buf;
  buf[0] = '\0';
  used += (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < s->rank && used < cap; i++) {
    char dim[64];
    used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "",
                             fl_dim_str(g, s->dims[i], dim, sizeof dim));
  }
  if (used < cap) snprintf(buf + used, cap - used, "]");
  return buf;
}
