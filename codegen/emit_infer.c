/* emit_infer.c - inference code: one tensor of a trained graph as a self-contained C99 function.
 *
 * The training backend (emit_c.c) writes entry points that take a batch size at
 * run time, allocate their arena and call OpenBLAS. Inference code for small
 * and embedded targets fixes everything it can at build time instead:
 *  - the batch size (every symbolic dimension takes one value), so every loop
 *    bound is a literal;
 *  - the weights, read from a checkpoint by flowc and written out as
 *    `static const` arrays;
 *  - the memory: every intermediate tensor gets an offset in one static arena,
 *    and tensors whose lifetimes do not overlap share bytes (a first-fit plan
 *    over the node order);
 *  - the feeds that are not data (keep_prob): fixed values, so that dropout
 *    with keep_prob 1 disappears.
 * Convolution, pooling, matmul and softmax get their own loops here (no BLAS,
 * no double-precision math); every other op reuses the training backend's
 * kernel emitter, whose loops need nothing beyond <math.h> and <string.h>.
 * On targets without a C library (wasm32) the generated file declares the few
 * functions it may call and flowc supplies them in flowc_freestanding.c.
 *
 * Loops run the innermost index over contiguous output elements (output
 * channels of a convolution, columns of a matmul), so compilers vectorise them
 * without reordering any sum: each output element adds its products in the
 * same order on every target, which is why results agree across host,
 * aarch64, Cortex-M and wasm32 to the last bit when no exp/log is involved. */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"
#include "emit_internal.h"
#include "kernels_c.h"

/* How a node of the inference function gets its value. */
enum infer_kind {
  IK_UNUSED = 0, /* not needed by the entry */
  IK_INPUT,      /* a parameter of the function */
  IK_FIXED,      /* a scalar fixed at build time */
  IK_VARIABLE,   /* weights from the checkpoint */
  IK_CONST,      /* a literal of the description */
  IK_ALIAS,      /* the same data as plan->alias[i] (reshape, dropout at keep_prob 1) */
  IK_KERNEL,     /* computed by a kernel into the arena (or the output) */
};

/* Slices of the arena start at multiples of 16 bytes (SIMD loads). */
#define INFER_ALIGN_BYTES 16

static fl_loc nowhere(void) { return (fl_loc){0, 0, 0, 0}; }

static void *infer_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

void fl_checkpoint_name(const fl_graph *g, int id, char *buf, size_t cap) {
  /* The training executable saves each variable under this name (emit_c.c). */
  if (g->nodes[id].name) snprintf(buf, cap, "%s", g->nodes[id].name);
  else snprintf(buf, cap, "v%d", id);
}

/* ---- the plan --------------------------------------------------------------- */

static const char *node_label_for_message(const fl_graph *g, int id, char *buf, size_t cap) {
  if (g->nodes[id].name) snprintf(buf, cap, "'%s'", g->nodes[id].name);
  else snprintf(buf, cap, "%%%d (%s)", id, fl_op_name(g->nodes[id].op));
  return buf;
}

/* The value of a scalar known at build time (fixed, a constant or a fill). */
static bool known_scalar(const fl_graph *g, const fl_infer_options *opt, int id, double *value) {
  for (int i = 0; i < opt->nfixed; i++)
    if (opt->fixed[i].node == id) {
      *value = opt->fixed[i].value;
      return true;
    }
  const fl_node *n = &g->nodes[id];
  if (fl_shape_const_size(&n->shape) != 1) return false;
  if (n->op == FL_OP_CONST && n->attr.data) {
    *value = n->attr.data[0];
    return true;
  }
  if (n->op == FL_OP_FILL) {
    *value = n->attr.value;
    return true;
  }
  return false;
}

static int resolve(const fl_infer_plan *plan, int id) {
  while (plan->kind[id] == IK_ALIAS) id = plan->alias[id];
  return id;
}

/* dropout(x, keep_prob) is mul(x, dropout_mask(x, keep_prob)). At keep_prob 1
 * the mask is all ones and the product is x itself; inference never drops. */
static int dropout_alias(const fl_graph *g, const fl_infer_options *opt, int id, int *source) {
  const fl_node *n = &g->nodes[id];
  if (n->op != FL_OP_MUL || n->ninputs != 2) return 0;
  for (int side = 0; side < 2; side++) {
    const fl_node *mask = &g->nodes[n->inputs[side]];
    if (mask->op != FL_OP_DROPOUT_MASK) continue;
    double keep;
    char label[128];
    node_label_for_message(g, mask->inputs[1], label, sizeof label);
    if (!known_scalar(g, opt, mask->inputs[1], &keep)) {
      fl_error(n->loc, "dropout: its keep_prob %s must be fixed for inference; pass --feed %s=1.0",
               label, g->nodes[mask->inputs[1]].name ? g->nodes[mask->inputs[1]].name : "NAME");
      return -1;
    }
    if (keep != 1.0) {
      fl_error(n->loc, "dropout: keep_prob %s is %g, but inference keeps every unit; pass --feed %s=1.0",
               label, keep, g->nodes[mask->inputs[1]].name ? g->nodes[mask->inputs[1]].name : "NAME");
      return -1;
    }
    *source = n->inputs[1 - side];
    return 1;
  }
  return 0;
}

/* Whether a kernel for this op exists in inference code: either one of ours
 * (matmul, conv2d, max_pool, softmax) or the training backend's loop kernels. */
static bool infer_op_supported(fl_op op) {
  switch (op) {
  case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER: case FL_OP_MAX_POOL_GRAD:
  case FL_OP_DROPOUT_MASK:
  case FL_OP_SUM_TO: /* made only by differentiation; its kernel calls the training runtime */
  case FL_OP_SOFTMAX_XENT: case FL_OP_SOFTMAX_XENT_GRAD: /* losses: their kernel calls it too */
    return false;
  default:
    return kernel_exists(op) && !fl_op_has_side_effect(op);
  }
}

/* First-fit placement of the computed tensors of one dtype: a tensor lives
 * from the node that writes it to the last node that reads it; its slice may
 * reuse any bytes whose tensor is dead by then. The inputs of node j are still
 * alive while j is placed, so an output never overlaps its inputs (the kernels'
 * restrict pointers rely on that). */
typedef struct {
  int64_t offset, size, last_use;
} live_slice;

static int64_t place(live_slice *alive, int *nalive, int64_t size, int at, int64_t last_use) {
  int kept = 0;
  for (int i = 0; i < *nalive; i++)
    if (alive[i].last_use >= at) alive[kept++] = alive[i];
  *nalive = kept;
  int64_t best = -1;
  for (int c = -1; c < *nalive; c++) {
    int64_t start = c < 0 ? 0 : alive[c].offset + alive[c].size;
    bool fits = true;
    for (int i = 0; i < *nalive && fits; i++)
      if (start < alive[i].offset + alive[i].size && alive[i].offset < start + size) fits = false;
    if (fits && (best < 0 || start < best)) best = start;
  }
  alive[(*nalive)++] = (live_slice){best, size, last_use};
  return best;
}

/* Folds `relu(conv2d(x, w) + b)` (and matmul's same pattern) into the conv or
 * matmul kernel: the add and the relu become aliases of its buffer, which
 * saves two passes over the tensor and, more to the point on a
 * microcontroller, two tensors' worth of arena. Only when the conv's sole
 * reader is the add of a bias along the last axis, and the add's sole reader
 * the relu. The sum is formed as before (products first, then the bias), so
 * the values do not change. */
static void fuse_epilogues(const fl_graph *g, const fl_infer_options *opt, fl_infer_plan *plan) {
  int n = opt->entry + 1;
  int *readers = infer_calloc((size_t)n, sizeof(int)), *reader = infer_calloc((size_t)n, sizeof(int));
  for (int k = 0; k < n; k++) {
    const fl_node *nd = &g->nodes[k];
    if (plan->kind[k] == IK_KERNEL)
      for (int i = 0; i < nd->ninputs; i++) {
        readers[nd->inputs[i]]++;
        reader[nd->inputs[i]] = k;
      }
    else if (plan->kind[k] == IK_ALIAS) {
      readers[plan->alias[k]]++;
      reader[plan->alias[k]] = k;
    }
  }
  readers[opt->entry]++; /* the caller reads the entry */
  reader[opt->entry] = -1;
  for (int j = 0; j < n; j++) {
    const fl_node *nd = &g->nodes[j];
    if (plan->kind[j] != IK_KERNEL || nd->dtype != FL_F32 ||
        !(nd->op == FL_OP_CONV2D || nd->op == FL_OP_MATMUL) || readers[j] != 1 || reader[j] < 0)
      continue;
    const fl_node *add = &g->nodes[reader[j]];
    if (add->op != FL_OP_ADD || plan->kind[add->id] != IK_KERNEL || add->ninputs != 2 ||
        add->inputs[0] == add->inputs[1] || !fl_shape_eq(&add->shape, &nd->shape))
      continue;
    int bias = add->inputs[add->inputs[0] == j ? 1 : 0];
    const fl_shape *bs = &g->nodes[bias].shape;
    const fl_dim last = nd->shape.dims[nd->shape.rank - 1];
    if (g->nodes[bias].dtype != FL_F32 || bs->rank != 1 || !fl_dim_is_const(last) || !fl_dim_eq(bs->dims[0], last))
      continue;
    plan->bias[j] = bias;
    plan->kind[add->id] = IK_ALIAS;
    plan->alias[add->id] = j;
    if (readers[add->id] == 1 && reader[add->id] >= 0) {
      const fl_node *relu = &g->nodes[reader[add->id]];
      if (relu->op == FL_OP_RELU && plan->kind[relu->id] == IK_KERNEL) {
        plan->relu[j] = true;
        plan->kind[relu->id] = IK_ALIAS;
        plan->alias[relu->id] = j;
      }
    }
  }
  free(readers);
  free(reader);
}

int fl_infer_plan_make(const fl_graph *g, const fl_infer_options *opt, fl_infer_plan *plan) {
  memset(plan, 0, sizeof *plan);
  int n = g->nnodes;
  plan->kind = infer_calloc((size_t)n, sizeof(int));
  plan->alias = infer_calloc((size_t)n, sizeof(int));
  plan->offset = infer_calloc((size_t)n, sizeof(int64_t));
  plan->bias = infer_calloc((size_t)n, sizeof(int));
  plan->relu = infer_calloc((size_t)n, sizeof(bool));
  plan->inputs = infer_calloc((size_t)n, sizeof(int));
  plan->variables = infer_calloc((size_t)n, sizeof(int));
  for (int i = 0; i < n; i++) {
    plan->alias[i] = -1;
    plan->offset[i] = -1;
    plan->bias[i] = -1;
  }
  if (opt->entry < 0 || opt->entry >= n) {
    fl_error(nowhere(), "no tensor to compute");
    return -1;
  }
  if (opt->batch < 1) {
    fl_error(nowhere(), "the batch size must be at least 1, found %lld", (long long)opt->batch);
    return -1;
  }
  bool *live = infer_calloc((size_t)n, sizeof(bool));
  bool *fixed = infer_calloc((size_t)n, sizeof(bool));
  for (int i = 0; i < opt->nfixed; i++) fixed[opt->fixed[i].node] = true;
  live[opt->entry] = true;
  int status = 0;
  char label[128];
  const char *entry_name = g->nodes[opt->entry].name ? g->nodes[opt->entry].name : "the entry";
  /* Node ids are a topological order: walking down from the entry visits every
   * node after all the nodes that read it. */
  for (int i = opt->entry; i >= 0 && status == 0; i--) {
    if (!live[i]) continue;
    const fl_node *nd = &g->nodes[i];
    node_label_for_message(g, i, label, sizeof label);
    if (fixed[i]) {
      if (nd->shape.rank != 0) {
        fl_error(nd->loc, "--feed fixes scalars, but %s is %s-dimensional", label,
                 nd->shape.rank == 1 ? "one" : "multi");
        status = -1;
      }
      plan->kind[i] = IK_FIXED;
      continue;
    }
    int source = -1;
    switch (nd->op) {
    case FL_OP_PLACEHOLDER:
      if (nd->shape.rank == 0) {
        fl_error(nd->loc, "placeholder %s is a scalar that %s needs: fix its value for inference with "
                          "--feed %s=VALUE", label, entry_name, nd->name ? nd->name : "NAME");
        status = -1;
      }
      plan->kind[i] = IK_INPUT;
      break;
    case FL_OP_VARIABLE: plan->kind[i] = IK_VARIABLE; break;
    case FL_OP_CONST: plan->kind[i] = IK_CONST; break;
    case FL_OP_RESHAPE:
      plan->kind[i] = IK_ALIAS;
      plan->alias[i] = nd->inputs[0];
      live[nd->inputs[0]] = true;
      break;
    case FL_OP_RANDOM_UNIFORM: case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
      fl_error(nd->loc, "%s can only initialise a variable", fl_op_name(nd->op));
      status = -1;
      break;
    default: {
      int dropped = dropout_alias(g, opt, i, &source);
      if (dropped < 0) {
        status = -1;
        break;
      }
      if (dropped) {
        plan->kind[i] = IK_ALIAS;
        plan->alias[i] = source;
        live[source] = true;
        break;
      }
      if (fl_op_has_side_effect(nd->op)) {
        bool train_op = nd->op != FL_OP_ASSIGN;
        fl_error(nd->loc, "%s %s: inference computes tensors; it cannot run %s",
                 i == opt->entry ? "--infer" : "the entry depends on", label,
                 train_op ? "a train op" : "an assignment");
        status = -1;
        break;
      }
      if (!infer_op_supported(nd->op)) {
        fl_error(nd->loc, "inference code has no kernel for %s (%s)", fl_op_name(nd->op), label);
        status = -1;
        break;
      }
      plan->kind[i] = IK_KERNEL;
      for (int k = 0; k < nd->ninputs; k++) live[nd->inputs[k]] = true;
      break;
    }
    }
  }
  if (status == 0)
    for (int i = 0; i <= opt->entry; i++) {
      if (!live[i]) continue;
      int64_t elems = fl_shape_size_at(&g->nodes[i].shape, opt->batch);
      if (elems > INT_MAX / 8) {
        fl_error(g->nodes[i].loc, "%s has %lld elements at batch %lld: too large for inference code",
                 node_label_for_message(g, i, label, sizeof label), (long long)elems, (long long)opt->batch);
        status = -1;
        break;
      }
      if (plan->kind[i] == IK_INPUT) plan->inputs[plan->ninputs++] = i;
      if (plan->kind[i] == IK_VARIABLE) plan->variables[plan->nvariables++] = i;
      if (plan->kind[i] == IK_VARIABLE || plan->kind[i] == IK_CONST)
        plan->weight_bytes += (size_t)elems * fl_dtype_size(g->nodes[i].dtype);
    }
  free(live);
  free(fixed);
  if (status) return -1;

  fuse_epilogues(g, opt, plan);

  /* Lifetimes: a tensor is last used by the last kernel that reads it. */
  int64_t *last_use = infer_calloc((size_t)n, sizeof(int64_t));
  for (int i = 0; i < n; i++) last_use[i] = -1;
  for (int j = 0; j <= opt->entry; j++) {
    if (plan->kind[j] != IK_KERNEL) continue;
    for (int k = 0; k <= g->nodes[j].ninputs; k++) {
      int in = k < g->nodes[j].ninputs ? g->nodes[j].inputs[k] : plan->bias[j];
      if (in < 0) continue;
      int r = resolve(plan, in);
      if (last_use[r] < j) last_use[r] = j;
    }
  }
  int output = resolve(plan, opt->entry);
  live_slice *alive = infer_calloc((size_t)n, sizeof(live_slice));
  for (int t = 0; t < FL_DTYPE_COUNT; t++) {
    int nalive = 0;
    int64_t high = 0, unit = INFER_ALIGN_BYTES / (int64_t)fl_dtype_size((fl_dtype)t);
    for (int j = 0; j <= opt->entry; j++) {
      const fl_node *nd = &g->nodes[j];
      /* The tensor the caller asked for is written straight into its buffer. */
      if (plan->kind[j] != IK_KERNEL || nd->dtype != (fl_dtype)t || j == output) continue;
      int64_t elems = fl_shape_size_at(&nd->shape, opt->batch);
      int64_t size = (elems + unit - 1) / unit * unit;
      plan->offset[j] = place(alive, &nalive, size, j, last_use[j] < j ? j : last_use[j]);
      if (plan->offset[j] + size > high) high = plan->offset[j] + size;
    }
    plan->pool_elems[t] = high;
    plan->arena_bytes += (size_t)high * fl_dtype_size((fl_dtype)t);
  }
  free(alive);
  free(last_use);
  return 0;
}

void fl_infer_plan_free(fl_infer_plan *plan) {
  free(plan->inputs);
  free(plan->variables);
  free(plan->kind);
  free(plan->alias);
  free(plan->offset);
  free(plan->bias);
  free(plan->relu);
  memset(plan, 0, sizeof *plan);
}

/* ---- names ------------------------------------------------------------------ */

/* Identifiers the generated file uses at file scope or in the entry function,
 * or that the headers it includes may define: a weight or a parameter with
 * such a name gets a prefix. (Names local to a kernel may shadow a weight
 * harmlessly: kernels see only their parameters.) */
static const char *const reserved_names[] = {
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "bool", "true", "false", "NULL",
    "expf", "logf", "sqrtf", "tanhf", "exp", "log", "sqrt", "tanh", "memset", "memcpy",
    "memmove", "INFINITY", "NAN", "main"};

static bool is_reserved(const char *name) {
  for (size_t i = 0; i < sizeof reserved_names / sizeof reserved_names[0]; i++)
    if (strcmp(name, reserved_names[i]) == 0) return true;
  /* The generated file's own names: k12_conv2d, c7, t3, arena_f32, fixed_keep_prob;
   * and the C library's (_Names, __names, int64_t). */
  if ((name[0] == 'k' || name[0] == 'c' || name[0] == 't') && isdigit((unsigned char)name[1])) return true;
  if (strncmp(name, "arena", 5) == 0 || strncmp(name, "fixed_", 6) == 0) return true;
  if (name[0] == '_' && (name[1] == '_' || isupper((unsigned char)name[1]))) return true;
  size_t len = strlen(name);
  return len > 2 && strcmp(name + len - 2, "_t") == 0;
}

typedef struct {
  char (*names)[128];
  int count;
} name_set;

static bool name_taken(const name_set *set, const char *name) {
  for (int i = 0; i < set->count; i++)
    if (strcmp(set->names[i], name) == 0) return true;
  return false;
}

/* A file-unique C name made from `base`: as it is when free, else with the
 * prefix (and then a number). */
static void unique_name(name_set *set, const char *base, const char *prefix, char *out, size_t cap) {
  char clean[96];
  fl_c_identifier(base, clean, sizeof clean);
  snprintf(out, cap, "%s", clean);
  if (is_reserved(out) || name_taken(set, out)) snprintf(out, cap, "%s%s", prefix, clean);
  for (int k = 2; is_reserved(out) || name_taken(set, out); k++) snprintf(out, cap, "%s%s_%d", prefix, clean, k);
  snprintf(set->names[set->count++], sizeof set->names[0], "%s", out);
}

static void upper(const char *in, char *out, size_t cap) {
  size_t i = 0;
  for (; in[i] && i + 1 < cap; i++) out[i] = (char)toupper((unsigned char)in[i]);
  out[i] = '\0';
}

/* ---- literals --------------------------------------------------------------- */

/* The shortest decimal that reads back as the same float ("0.1f", "-2.5e-05f"):
 * weights are exact and the file stays as small as it can. */
static void float_literal(float v, char *buf, size_t cap) {
  if (isnan(v)) {
    snprintf(buf, cap, "NAN");
    return;
  }
  if (isinf(v)) {
    snprintf(buf, cap, v > 0 ? "INFINITY" : "-INFINITY");
    return;
  }
  char tmp[48];
  for (int digits = 6; digits <= 9; digits++) {
    snprintf(tmp, sizeof tmp, "%.*g", digits, (double)v);
    if (strtof(tmp, NULL) == v && signbit(strtof(tmp, NULL)) == signbit(v)) break;
  }
  snprintf(buf, cap, "%s%sf", tmp, strpbrk(tmp, ".en") ? "" : ".0");
}

static void literal(fl_dtype t, const void *values, int64_t i, char *buf, size_t cap) {
  switch (t) {
  case FL_F32: float_literal(((const float *)values)[i], buf, cap); break;
  case FL_I32: snprintf(buf, cap, "%d", (int)((const int32_t *)values)[i]); break;
  case FL_I64: snprintf(buf, cap, "INT64_C(%lld)", (long long)((const int64_t *)values)[i]); break;
  default: snprintf(buf, cap, "%s", ((const unsigned char *)values)[i] ? "true" : "false"); break;
  }
}

static void emit_array(strbuf *sb, fl_dtype t, const char *name, const void *values, int64_t count) {
  sb_printf(sb, "static const %s %s[%lld] = {", emit_ctype(t), name, (long long)(count > 0 ? count : 1));
  char lit[64];
  for (int64_t i = 0; i < count; i++) {
    literal(t, values, i, lit, sizeof lit);
    sb_printf(sb, "%s%s%s", i ? "," : "", i % 8 == 0 ? "\n  " : " ", lit);
  }
  if (count <= 0) sb_printf(sb, "0");
  sb_printf(sb, "\n};\n\n");
}

/* A CONST node's literal values (doubles in the IR) in its dtype. */
static void *const_values(const fl_node *n, int64_t count) {
  size_t size = fl_dtype_size(n->dtype);
  unsigned char *out = infer_calloc((size_t)(count > 0 ? count : 1), size);
  for (int64_t i = 0; i < count; i++) {
    double v = n->attr.data ? n->attr.data[i] : 0.0;
    switch (n->dtype) {
    case FL_F32: ((float *)out)[i] = (float)v; break;
    case FL_I32: ((int32_t *)out)[i] = (int32_t)v; break;
    case FL_I64: ((int64_t *)out)[i] = (int64_t)v; break;
    default: out[i] = v != 0; break;
    }
  }
  return out;
}

/* ---- our kernels -------------------------------------------------------------
 * Every dimension is a literal here (the batch is fixed), and loop counters are
 * int: fl_infer_plan_make refused tensors too large for that. */

static int64_t dim(const fl_shape *s, int i, int64_t batch) { return fl_dim_value(s->dims[i], batch); }

static bool own_kernel(const fl_node *n) {
  return (n->op == FL_OP_MATMUL && n->dtype == FL_F32) || n->op == FL_OP_CONV2D ||
         n->op == FL_OP_MAX_POOL || (n->op == FL_OP_SOFTMAX && n->dtype == FL_F32);
}

/* TensorFlow's padding: SAME gives ceil(in / stride) outputs and puts the
 * smaller half of the padding first; VALID pads nothing. */
static int64_t pad_before(fl_padding padding, int64_t in, int64_t out, int64_t k, int64_t stride) {
  if (padding != FL_PAD_SAME) return 0;
  int64_t total = (out - 1) * stride + k - in;
  return total > 0 ? total / 2 : 0;
}

/* What a conv or matmul kernel does after its sums: add the fused bias, then
 * the fused relu, over `count` elements at `at`. */
typedef struct {
  bool bias, relu;
} epilogue;

static epilogue epilogue_of(const fl_infer_plan *plan, int id) {
  return (epilogue){plan->bias[id] >= 0, plan->relu[id]};
}

/* to[oc] = the epilogue of from[oc], for count channels; nothing where both
 * are the same memory and there is no epilogue. */
static void emit_store(epilogue e, const char *to, const char *from, int64_t count, const char *indent, strbuf *sb) {
  if (!e.bias && !e.relu && strcmp(to, from) == 0) return;
  sb_printf(sb, "%sfor (int oc = 0; oc < %lld; oc++) {\n", indent, (long long)count);
  sb_printf(sb, "%s  const float v = %s[oc]%s;\n", indent, from, e.bias ? " + bias[oc]" : "");
  sb_printf(sb, "%s  %s[oc] = %s;\n%s}\n", indent, to, e.relu ? "v > 0.0f ? v : 0.0f" : "v", indent);
}

static void emit_epilogue(epilogue e, const char *at, int64_t count, const char *indent, strbuf *sb) {
  emit_store(e, at, at, count, indent, sb);
}

static void kernel_head(const fl_graph *g, const fl_infer_plan *plan, int id, int ninputs, strbuf *sb) {
  char fname[192];
  kernel_function_name(g, id, fname, sizeof fname);
  emit_node_comment(g, &g->nodes[id], sb);
  /* the fused nodes: the add of the bias and the relu (aliases of this kernel's buffer) */
  for (int k = id + 1; k < g->nnodes; k++)
    if (plan->kind[k] == IK_ALIAS && plan->alias[k] == id && (g->nodes[k].op == FL_OP_ADD || g->nodes[k].op == FL_OP_RELU)) {
      sb_printf(sb, "/*   fused: */ ");
      emit_node_comment(g, &g->nodes[k], sb);
    }
  sb_printf(sb, "static void %s(", fname);
  for (int i = 0; i < ninputs; i++) sb_printf(sb, "const float *restrict in%d, ", i);
  if (plan->bias[id] >= 0) sb_printf(sb, "const float *restrict bias, ");
  sb_printf(sb, "float *restrict out) {\n");
}

/* The most output channels whose sums stay in local arrays (registers, where
 * the vector unit holds them: 64 floats are four AVX-512 registers); wider
 * layers sum into their output instead, keeping the stack small on
 * microcontrollers. */
#define CONV_LOCAL_SUMS 64

/* One output pixel's sums over the window entry (kh, kw) at input pixel px:
 * its channels accumulate filter rows, which are contiguous. */
static void emit_conv_window_sums(int64_t C, int64_t OC, const char *const *sums, const char *const *px, int pixels,
                                  const char *indent, strbuf *sb) {
  sb_printf(sb, "%sfor (int c = 0; c < %lld; c++)\n%s  for (int oc = 0; oc < %lld; oc++)", indent, (long long)C,
            indent, (long long)OC);
  sb_printf(sb, pixels > 1 ? " {\n" : "\n");
  for (int q = 0; q < pixels; q++)
    sb_printf(sb, "%s    %s[oc] += %s[c] * f[c * %lld + oc];\n", indent, sums[q], px[q], (long long)OC);
  if (pixels > 1) sb_printf(sb, "%s  }\n", indent);
}

static void emit_conv2d(const fl_graph *g, const fl_infer_plan *plan, const fl_node *n, int64_t batch, strbuf *sb) {
  const fl_shape *x = &g->nodes[n->inputs[0]].shape, *w = &g->nodes[n->inputs[1]].shape;
  int64_t B = dim(x, 0, batch), H = dim(x, 1, batch), W = dim(x, 2, batch), C = dim(x, 3, batch);
  int64_t KH = dim(w, 0, batch), KW = dim(w, 1, batch), OC = dim(w, 3, batch);
  int64_t OH = dim(&n->shape, 1, batch), OW = dim(&n->shape, 2, batch);
  int64_t SH = n->attr.strides[0], SW = n->attr.strides[1];
  int64_t PT = pad_before(n->attr.padding, H, OH, KH, SH), PL = pad_before(n->attr.padding, W, OW, KW, SW);
  const bool local = OC <= CONV_LOCAL_SUMS;
  const char *sums[2] = {local ? "sum0" : "o0", local ? "sum1" : "o1"};
  kernel_head(g, plan, n->id, 2, sb);
  sb_printf(sb, "  /* x [%lld, %lld, %lld, %lld] (NHWC) * filter [%lld, %lld, %lld, %lld] (HWIO), stride %lldx%lld,\n"
                "   * padding %lld above and %lld left. Two output pixels of a row at a time, so that\n"
                "   * their sums are independent work for the vector unit; each sum still adds its\n"
                "   * terms in window order, as for one pixel alone. */\n",
            (long long)B, (long long)H, (long long)W, (long long)C, (long long)KH, (long long)KW,
            (long long)C, (long long)OC, (long long)SH, (long long)SW, (long long)PT, (long long)PL);
  sb_printf(sb, "  for (int n = 0; n < %lld; n++)\n    for (int oh = 0; oh < %lld; oh++)\n"
                "      for (int ow = 0; ow < %lld; ow += 2) {\n",
            (long long)B, (long long)OH, (long long)OW);
  sb_printf(sb, "        const int pair = ow + 1 < %lld;\n", (long long)OW);
  sb_printf(sb, "        float *restrict o0 = out + ((n * %lld + oh) * %lld + ow) * %lld;\n", (long long)OH,
            (long long)OW, (long long)OC);
  sb_printf(sb, "        float *restrict o1 = o0 + %lld; /* the second pixel's, when pair */\n", (long long)OC);
  if (local) /* both cleared, so that no compiler sees sum1 read unset */
    sb_printf(sb, "        float sum0[%lld], sum1[%lld];\n        for (int oc = 0; oc < %lld; oc++)\n"
                  "          sum0[oc] = sum1[oc] = 0.0f;\n",
              (long long)OC, (long long)OC, (long long)OC);
  else /* o1 is past the output after its last pixel */
    sb_printf(sb, "        for (int oc = 0; oc < %lld; oc++)\n          o0[oc] = 0.0f;\n"
                  "        if (pair)\n          for (int oc = 0; oc < %lld; oc++)\n            o1[oc] = 0.0f;\n",
              (long long)OC, (long long)OC);
  sb_printf(sb, "        for (int kh = 0; kh < %lld; kh++) {\n", (long long)KH);
  sb_printf(sb, "          const int ih = oh * %lld + kh - %lld;\n          if (ih < 0 || ih >= %lld)\n"
                "            continue;\n", (long long)SH, (long long)PT, (long long)H);
  sb_printf(sb, "          for (int kw = 0; kw < %lld; kw++) {\n", (long long)KW);
  sb_printf(sb, "            const int iw0 = ow * %lld + kw - %lld, iw1 = iw0 + %lld;\n", (long long)SW, (long long)PL,
            (long long)SW);
  sb_printf(sb, "            const int first = iw0 >= 0 && iw0 < %lld, second = pair && iw1 >= 0 && iw1 < %lld;\n",
            (long long)W, (long long)W);
  sb_printf(sb, "            const float *restrict f = in1 + (kh * %lld + kw) * %lld;\n", (long long)KW,
            (long long)(C * OC));
  const char *both[2] = {"px0", "px1"};
  sb_printf(sb, "            if (first && second) {\n");
  sb_printf(sb, "              const float *restrict px0 = in0 + ((n * %lld + ih) * %lld + iw0) * %lld;\n",
            (long long)H, (long long)W, (long long)C);
  sb_printf(sb, "              const float *restrict px1 = px0 + %lld;\n", (long long)(SW * C));
  emit_conv_window_sums(C, OC, sums, both, 2, "              ", sb);
  for (int q = 0; q < 2; q++) {
    sb_printf(sb, "            } else if (%s) {\n", q ? "second" : "first");
    sb_printf(sb, "              const float *restrict px%d = in0 + ((n * %lld + ih) * %lld + iw%d) * %lld;\n", q,
              (long long)H, (long long)W, q, (long long)C);
    emit_conv_window_sums(C, OC, &sums[q], &both[q], 1, "              ", sb);
  }
  sb_printf(sb, "            }\n          }\n        }\n");
  const epilogue e = epilogue_of(plan, n->id);
  emit_store(e, "o0", sums[0], OC, "        ", sb);
  if (local || e.bias || e.relu) {
    sb_printf(sb, "        if (pair) {\n");
    emit_store(e, "o1", sums[1], OC, "          ", sb);
    sb_printf(sb, "        }\n");
  }
  sb_printf(sb, "      }\n}\n\n");
}

static void emit_max_pool(const fl_graph *g, const fl_infer_plan *plan, const fl_node *n, int64_t batch, strbuf *sb) {
  const fl_shape *x = &g->nodes[n->inputs[0]].shape;
  int64_t B = dim(x, 0, batch), H = dim(x, 1, batch), W = dim(x, 2, batch), C = dim(x, 3, batch);
  int64_t KH = n->attr.ksize[0], KW = n->attr.ksize[1];
  int64_t OH = dim(&n->shape, 1, batch), OW = dim(&n->shape, 2, batch);
  int64_t SH = n->attr.strides[0], SW = n->attr.strides[1];
  int64_t PT = pad_before(n->attr.padding, H, OH, KH, SH), PL = pad_before(n->attr.padding, W, OW, KW, SW);
  kernel_head(g, plan, n->id, 1, sb);
  sb_printf(sb, "  /* %lldx%lld windows, stride %lldx%lld, over x [%lld, %lld, %lld, %lld]; padding cells are\n"
                "   * skipped, so they never win. */\n",
            (long long)KH, (long long)KW, (long long)SH, (long long)SW, (long long)B, (long long)H,
            (long long)W, (long long)C);
  sb_printf(sb, "  for (int n = 0; n < %lld; n++)\n    for (int oh = 0; oh < %lld; oh++)\n"
                "      for (int ow = 0; ow < %lld; ow++) {\n",
            (long long)B, (long long)OH, (long long)OW);
  sb_printf(sb, "        float *restrict o = out + ((n * %lld + oh) * %lld + ow) * %lld;\n", (long long)OH,
            (long long)OW, (long long)C);
  sb_printf(sb, "        for (int c = 0; c < %lld; c++)\n          o[c] = -INFINITY;\n", (long long)C);
  sb_printf(sb, "        for (int kh = 0; kh < %lld; kh++) {\n", (long long)KH);
  sb_printf(sb, "          const int ih = oh * %lld + kh - %lld;\n          if (ih < 0 || ih >= %lld)\n"
                "            continue;\n", (long long)SH, (long long)PT, (long long)H);
  sb_printf(sb, "          for (int kw = 0; kw < %lld; kw++) {\n", (long long)KW);
  sb_printf(sb, "            const int iw = ow * %lld + kw - %lld;\n            if (iw < 0 || iw >= %lld)\n"
                "              continue;\n", (long long)SW, (long long)PL, (long long)W);
  sb_printf(sb, "            const float *restrict px = in0 + ((n * %lld + ih) * %lld + iw) * %lld;\n", (long long)H,
            (long long)W, (long long)C);
  sb_printf(sb, "            for (int c = 0; c < %lld; c++)\n              if (px[c] > o[c])\n"
                "                o[c] = px[c];\n", (long long)C);
  sb_printf(sb, "          }\n        }\n      }\n}\n\n");
}

static void emit_matmul_f32(const fl_graph *g, const fl_infer_plan *plan, const fl_node *n, int64_t batch, strbuf *sb) {
  const fl_shape *a = &g->nodes[n->inputs[0]].shape, *b = &g->nodes[n->inputs[1]].shape;
  int64_t M = dim(&n->shape, 0, batch), N = dim(&n->shape, 1, batch);
  int64_t K = dim(a, n->attr.transpose_a ? 0 : 1, batch);
  int64_t lda = dim(a, 1, batch), ldb = dim(b, 1, batch);
  char a_at[96];
  if (n->attr.transpose_a) snprintf(a_at, sizeof a_at, "in0[p * %lld + i]", (long long)lda);
  else snprintf(a_at, sizeof a_at, "in0[i * %lld + p]", (long long)lda);
  kernel_head(g, plan, n->id, 2, sb);
  if (!n->attr.transpose_b) {
    sb_printf(sb, "  /* [%lld, %lld] x [%lld, %lld]: rows of the right operand, scaled, accumulate into\n"
                  "   * a row of the result. */\n",
              (long long)M, (long long)K, (long long)K, (long long)N);
    sb_printf(sb, "  for (int i = 0; i < %lld; i++) {\n    float *restrict o = out + i * %lld;\n", (long long)M,
              (long long)N);
    sb_printf(sb, "    for (int j = 0; j < %lld; j++)\n      o[j] = 0.0f;\n", (long long)N);
    sb_printf(sb, "    for (int p = 0; p < %lld; p++) {\n      const float a = %s;\n", (long long)K, a_at);
    sb_printf(sb, "      const float *restrict b = in1 + p * %lld;\n", (long long)ldb);
    sb_printf(sb, "      for (int j = 0; j < %lld; j++)\n        o[j] += a * b[j];\n    }\n", (long long)N);
    emit_epilogue(epilogue_of(plan, n->id), "o", N, "    ", sb);
    sb_printf(sb, "  }\n}\n\n");
    return;
  }
  sb_printf(sb, "  /* [%lld, %lld] x [%lld, %lld]^T: dot products of rows. */\n", (long long)M, (long long)K,
            (long long)N, (long long)K);
  sb_printf(sb, "  for (int i = 0; i < %lld; i++)\n    for (int j = 0; j < %lld; j++) {\n", (long long)M, (long long)N);
  sb_printf(sb, "      float sum = 0.0f;\n      for (int p = 0; p < %lld; p++)\n", (long long)K);
  sb_printf(sb, "        sum += %s * in1[j * %lld + p];\n      out[i * %lld + j] = sum;\n    }\n", a_at,
            (long long)ldb, (long long)N);
  if (plan->bias[n->id] >= 0 || plan->relu[n->id]) {
    sb_printf(sb, "  for (int i = 0; i < %lld; i++) {\n    float *restrict o = out + i * %lld;\n", (long long)M,
              (long long)N);
    emit_epilogue(epilogue_of(plan, n->id), "o", N, "    ", sb);
    sb_printf(sb, "  }\n");
  }
  sb_printf(sb, "}\n\n");
}

static void emit_softmax_f32(const fl_graph *g, const fl_infer_plan *plan, const fl_node *n, int64_t batch, strbuf *sb) {
  int64_t classes = dim(&n->shape, n->shape.rank - 1, batch);
  int64_t rows = fl_shape_size_at(&n->shape, batch) / (classes > 0 ? classes : 1);
  kernel_head(g, plan, n->id, 1, sb);
  sb_printf(sb, "  /* over the last axis, in float: exp(z - max) / sum */\n");
  sb_printf(sb, "  for (int r = 0; r < %lld; r++) {\n", (long long)rows);
  sb_printf(sb, "    const float *restrict z = in0 + r * %lld;\n    float *restrict o = out + r * %lld;\n",
            (long long)classes, (long long)classes);
  sb_printf(sb, "    float max = z[0];\n    for (int c = 1; c < %lld; c++)\n      if (z[c] > max)\n"
                "        max = z[c];\n", (long long)classes);
  sb_printf(sb, "    float sum = 0.0f;\n    for (int c = 0; c < %lld; c++) {\n      o[c] = expf(z[c] - max);\n"
                "      sum += o[c];\n    }\n", (long long)classes);
  sb_printf(sb, "    const float inv = 1.0f / sum;\n    for (int c = 0; c < %lld; c++)\n      o[c] *= inv;\n  }\n}\n\n",
            (long long)classes);
}

static void emit_own_kernel(const fl_graph *g, const fl_infer_plan *plan, const fl_node *n, int64_t batch, strbuf *sb) {
  switch (n->op) {
  case FL_OP_CONV2D: emit_conv2d(g, plan, n, batch, sb); break;
  case FL_OP_MAX_POOL: emit_max_pool(g, plan, n, batch, sb); break;
  case FL_OP_MATMUL: emit_matmul_f32(g, plan, n, batch, sb); break;
  default: emit_softmax_f32(g, plan, n, batch, sb); break;
  }
}

/* ---- the files ---------------------------------------------------------------- */

typedef struct {
  const fl_graph *g;
  const fl_infer_options *opt;
  const fl_infer_plan *plan;
  char prefix[96], upper_prefix[96];
  char **buffers;    /* per node: the C expression of its data */
  char (*params)[128]; /* per input, then the output: parameter names */
  int output;        /* the node whose value the caller gets (aliases resolved) */
} infer_file;

static const char *pool_name(fl_dtype t) {
  switch (t) {
  case FL_F32: return "arena_f32";
  case FL_I32: return "arena_i32";
  case FL_I64: return "arena_i64";
  default: return "arena_bool";
  }
}

static void shape_text(const infer_file *f, int id, char *buf, size_t cap) {
  const fl_node *n = &f->g->nodes[id];
  size_t used = (size_t)snprintf(buf, cap, "%s[", fl_dtype_name(n->dtype));
  for (int i = 0; i < n->shape.rank && used < cap; i++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "",
                             (long long)fl_dim_value(n->shape.dims[i], f->opt->batch));
  if (used < cap) snprintf(buf + used, cap - used, "]");
}

static void params_text(const infer_file *f, strbuf *sb) {
  const fl_graph *g = f->g;
  for (int i = 0; i < f->plan->ninputs; i++)
    sb_printf(sb, "const %s *restrict %s, ", emit_ctype(g->nodes[f->plan->inputs[i]].dtype), f->params[i]);
  sb_printf(sb, "%s *restrict %s", emit_ctype(g->nodes[f->opt->entry].dtype), f->params[f->plan->ninputs]);
}

static void emit_header(const infer_file *f, strbuf *sb) {
  const fl_graph *g = f->g;
  const fl_infer_options *opt = f->opt;
  const char *p = f->prefix, *P = f->upper_prefix;
  char shape[256], label[96], macro[320];
  emit_node_label(g, opt->entry, label, sizeof label);
  shape_text(f, opt->entry, shape, sizeof shape);
  sb_printf(sb, "/* %s.h - generated by flowc %s from %s with the weights in %s:\n"
                " * inference of %s, batch %lld. Do not edit.\n *\n",
            p, FLOWC_VERSION, opt->source_path ? opt->source_path : "a description",
            opt->weights_path ? opt->weights_path : "a checkpoint", label, (long long)opt->batch);
  sb_printf(sb, " * %s_infer computes %s %s from ", p, label, shape);
  for (int i = 0; i < f->plan->ninputs; i++) {
    char in_label[96], in_shape[256];
    emit_node_label(g, f->plan->inputs[i], in_label, sizeof in_label);
    shape_text(f, f->plan->inputs[i], in_shape, sizeof in_shape);
    sb_printf(sb, "%s%s %s", i ? (i + 1 == f->plan->ninputs ? " and " : ", ") : "", in_label, in_shape);
  }
  if (!f->plan->ninputs) sb_printf(sb, "nothing but its weights");
  sb_printf(sb, ",\n * row-major; the buffers must not overlap. It calls no malloc and no stdio:\n"
                " * the weights are constant arrays (%zu bytes) and the intermediate tensors\n"
                " * share one static arena (%zu bytes), so calls must not overlap either\n"
                " * (one thread at a time). */\n",
            f->plan->weight_bytes, f->plan->arena_bytes);
  sb_printf(sb, "#ifndef %s_INFER_H\n#define %s_INFER_H\n\n#include <stdbool.h>\n#include <stdint.h>\n\n", P, P);
  sb_printf(sb, "#define %s_BATCH %lld\n", P, (long long)opt->batch);
  char generic_in[160], generic_out[160];
  snprintf(generic_in, sizeof generic_in, "%s_INPUT_SIZE", P);
  snprintf(generic_out, sizeof generic_out, "%s_OUTPUT_SIZE", P);
  for (int i = 0; i < f->plan->ninputs; i++) {
    int id = f->plan->inputs[i];
    char up[128];
    emit_node_label(g, id, label, sizeof label);
    upper(label, up, sizeof up);
    snprintf(macro, sizeof macro, "%s_%s_SIZE", P, up);
    shape_text(f, id, shape, sizeof shape);
    if (strcmp(macro, generic_in) && strcmp(macro, generic_out))
      sb_printf(sb, "#define %s %lld /* elements of %s, %s */\n", macro,
                (long long)fl_shape_size_at(&g->nodes[id].shape, opt->batch), label, shape);
  }
  if (f->plan->ninputs == 1)
    sb_printf(sb, "#define %s %lld /* elements of the input */\n", generic_in,
              (long long)fl_shape_size_at(&g->nodes[f->plan->inputs[0]].shape, opt->batch));
  sb_printf(sb, "#define %s %lld /* elements of the output */\n", generic_out,
            (long long)fl_shape_size_at(&g->nodes[opt->entry].shape, opt->batch));
  sb_printf(sb, "#define %s_ARENA_BYTES %zu\n#define %s_WEIGHT_BYTES %zu\n\n", P, f->plan->arena_bytes, P,
            f->plan->weight_bytes);
  sb_printf(sb, "void %s_infer(", p);
  params_text(f, sb);
  sb_printf(sb, ");\n\n#endif\n");
}

/* What the model's source includes: <math.h> and <string.h> where there is a C
 * library, its own declarations where there is none. */
static void emit_includes(const infer_file *f, strbuf *sb) {
  sb_printf(sb, "#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n\n");
  sb_printf(sb,
            "#if defined(FLOWC_FREESTANDING) || (defined(__wasm__) && !defined(__wasi__) && !defined(__EMSCRIPTEN__))\n"
            "/* No C library on this target: flowc_freestanding.c defines these. */\n"
            "float expf(float x);\nfloat logf(float x);\nfloat sqrtf(float x);\nfloat tanhf(float x);\n"
            "double exp(double x);\ndouble log(double x);\n"
            "void *memset(void *s, int c, size_t n);\n"
            "void *memcpy(void *restrict dst, const void *restrict src, size_t n);\n"
            "#ifndef INFINITY\n#define INFINITY (__builtin_inff())\n#endif\n"
            "#ifndef NAN\n#define NAN (__builtin_nanf(\"\"))\n#endif\n"
            "#else\n#include <math.h>\n#include <string.h>\n#endif\n\n");
  sb_printf(sb, "/* The kernels are shared with training programs, which thread their loops. */\n"
                "#define FLRT_PARALLEL_LOOP(n, ...) do { __VA_ARGS__ } while (0)\n"
                "#define FLRT_PARALLEL_LOOP_EXP(n, ...) do { __VA_ARGS__ } while (0)\n\n");
  sb_printf(sb, "#include \"%s.h\"\n\n", f->prefix);
}

static int emit_source(const infer_file *f, const void *const *values, strbuf *sb) {
  const fl_graph *g = f->g;
  const fl_infer_options *opt = f->opt;
  const fl_infer_plan *plan = f->plan;
  char label[96], shape[256], cp[256];
  emit_node_label(g, opt->entry, label, sizeof label);
  sb_printf(sb, "/* %s.c - generated by flowc %s from %s with the weights in %s:\n"
                " * inference of %s, batch %lld. Each kernel function implements the graph node\n"
                " * named in the comment above it. Do not edit. */\n",
            f->prefix, FLOWC_VERSION, opt->source_path ? opt->source_path : "a description",
            opt->weights_path ? opt->weights_path : "a checkpoint", label, (long long)opt->batch);
  emit_includes(f, sb);

  sb_printf(sb, "/* ---- weights: %zu bytes ---- */\n\n", plan->weight_bytes);
  for (int i = 0; i < plan->nvariables; i++) {
    int id = plan->variables[i];
    fl_checkpoint_name(g, id, cp, sizeof cp);
    shape_text(f, id, shape, sizeof shape);
    sb_printf(sb, "/* %s %s */\n", cp, shape);
    emit_array(sb, g->nodes[id].dtype, f->buffers[id], values[i], fl_shape_size_at(&g->nodes[id].shape, opt->batch));
  }
  for (int id = 0; id <= opt->entry; id++) {
    const fl_node *n = &g->nodes[id];
    if (plan->kind[id] == IK_CONST) {
      int64_t count = fl_shape_size_at(&n->shape, opt->batch);
      void *data = const_values(n, count);
      emit_node_comment(g, n, sb);
      emit_array(sb, n->dtype, f->buffers[id], data, count);
      free(data);
    } else if (plan->kind[id] == IK_FIXED) {
      double v = 0;
      for (int k = 0; k < opt->nfixed; k++)
        if (opt->fixed[k].node == id) v = opt->fixed[k].value;
      char lit[64];
      if (n->dtype == FL_F32) float_literal((float)v, lit, sizeof lit);
      else if (n->dtype == FL_BOOL) snprintf(lit, sizeof lit, "%s", v != 0 ? "true" : "false");
      else snprintf(lit, sizeof lit, "%lld", (long long)v);
      emit_node_label(g, id, label, sizeof label);
      sb_printf(sb, "/* %s, fixed at build time */\nstatic const %s %s[1] = {%s};\n\n", label,
                emit_ctype(n->dtype), f->buffers[id], lit);
    }
  }

  bool any_pool = false;
  for (int t = 0; t < FL_DTYPE_COUNT; t++) any_pool |= plan->pool_elems[t] > 0;
  if (any_pool) {
    sb_printf(sb, "/* ---- the arena: %zu bytes ----\n * Every intermediate tensor at an offset planned at build time; tensors whose\n"
                  " * lifetimes do not overlap share memory. */\n", plan->arena_bytes);
    for (int t = 0; t < FL_DTYPE_COUNT; t++)
      if (plan->pool_elems[t] > 0)
        sb_printf(sb, "static %s %s[%lld];\n", emit_ctype((fl_dtype)t), pool_name((fl_dtype)t),
                  (long long)plan->pool_elems[t]);
    sb_printf(sb, "\n");
  }

  sb_printf(sb, "/* ---- kernels ---- */\n\n");
  bool uses_sym[64] = {false};
  for (int id = 0; id <= opt->entry; id++) {
    if (plan->kind[id] != IK_KERNEL) continue;
    const fl_node *n = &g->nodes[id];
    if (own_kernel(n)) {
      emit_own_kernel(g, plan, n, opt->batch, sb);
    } else {
      bool uses[64];
      emit_node_syms(g, n, uses);
      for (int s = 0; s < g->nsyms && s < 64; s++) uses_sym[s] |= uses[s];
      emit_kernel(g, id, sb);
    }
  }

  sb_printf(sb, "void %s_infer(", f->prefix);
  params_text(f, sb);
  sb_printf(sb, ") {\n");
  for (int s = 0; s < g->nsyms && s < 64; s++)
    if (uses_sym[s]) {
      char name[64];
      fl_sym_c_name(g, s, name, sizeof name); /* as the reused kernels name it */
      sb_printf(sb, "  const int64_t %s = %lld;\n", name, (long long)opt->batch);
    }
  for (int id = 0; id <= opt->entry; id++) {
    if (plan->kind[id] != IK_KERNEL) continue;
    const fl_node *n = &g->nodes[id];
    /* a fused conv's value is its relu's: name it after the last fused node */
    int named = id;
    for (int k = id + 1; k <= opt->entry; k++)
      if (plan->kind[k] == IK_ALIAS && plan->alias[k] == id && !g->nodes[named].name) named = k;
    emit_node_label(g, named, label, sizeof label);
    shape_text(f, id, shape, sizeof shape);
    sb_printf(sb, "  /* %s %s -> %s */\n", label, shape, f->buffers[id]);
    if (own_kernel(n)) {
      char fname[192];
      kernel_function_name(g, id, fname, sizeof fname);
      sb_printf(sb, "  %s(", fname);
      for (int k = 0; k < n->ninputs; k++) sb_printf(sb, "%s, ", f->buffers[n->inputs[k]]);
      if (plan->bias[id] >= 0) sb_printf(sb, "%s, ", f->buffers[plan->bias[id]]);
      sb_printf(sb, "%s);\n", f->buffers[id]);
    } else {
      emit_kernel_call(g, id, (const char *const *)f->buffers, NULL, sb);
    }
  }
  if (plan->kind[f->output] != IK_KERNEL) {
    /* The entry is an input, a weight or a constant: copy it out. */
    const char *out = f->params[plan->ninputs];
    sb_printf(sb, "  for (int i = 0; i < %lld; i++)\n    %s[i] = %s[i];\n",
              (long long)fl_shape_size_at(&g->nodes[opt->entry].shape, opt->batch), out, f->buffers[f->output]);
  }
  sb_printf(sb, "}\n");
  return 0;
}

int fl_emit_infer(const fl_graph *g, const fl_infer_options *opt, const fl_infer_plan *plan,
                  const void *const *values, const char *dir) {
  infer_file f;
  memset(&f, 0, sizeof f);
  f.g = g;
  f.opt = opt;
  f.plan = plan;
  fl_c_identifier(opt->name ? opt->name : "model", f.prefix, sizeof f.prefix);
  upper(f.prefix, f.upper_prefix, sizeof f.upper_prefix);
  f.output = resolve(plan, opt->entry);

  /* Names: parameters first (they are what the user sees), then the file's
   * own arrays, none shadowing another or anything the file uses. */
  name_set names = {infer_calloc((size_t)(g->nnodes + g->nsyms) + 4, sizeof *names.names), 0};
  snprintf(names.names[names.count++], sizeof names.names[0], "%s_infer", f.prefix);
  for (int s = 0; s < g->nsyms; s++) fl_sym_c_name(g, s, names.names[names.count++], sizeof names.names[0]);
  f.params = infer_calloc((size_t)plan->ninputs + 1, sizeof *f.params);
  f.buffers = infer_calloc((size_t)g->nnodes, sizeof(char *));
  char label[96];
  for (int i = 0; i < plan->ninputs; i++) {
    emit_node_label(g, plan->inputs[i], label, sizeof label);
    unique_name(&names, label, "in_", f.params[i], sizeof f.params[i]);
  }
  emit_node_label(g, opt->entry, label, sizeof label);
  unique_name(&names, label, "out_", f.params[plan->ninputs], sizeof f.params[0]);
  for (int i = 0; i < plan->ninputs; i++) f.buffers[plan->inputs[i]] = strdup(f.params[i]);
  for (int id = 0; id <= opt->entry; id++) {
    char name[160];
    switch (plan->kind[id]) {
    case IK_VARIABLE:
      fl_checkpoint_name(g, id, name, sizeof name);
      unique_name(&names, name, "w_", name, sizeof name);
      f.buffers[id] = strdup(name);
      break;
    case IK_CONST:
      snprintf(name, sizeof name, "c%d", id);
      f.buffers[id] = strdup(name);
      break;
    case IK_FIXED:
      emit_node_label(g, id, label, sizeof label);
      snprintf(name, sizeof name, "fixed_%s", label);
      if (name_taken(&names, name)) snprintf(name, sizeof name, "fixed_%s_%d", label, id);
      snprintf(names.names[names.count++], sizeof names.names[0], "%.127s", name);
      f.buffers[id] = strdup(name);
      break;
    case IK_KERNEL:
      if (id == f.output) snprintf(name, sizeof name, "%s", f.params[plan->ninputs]);
      else snprintf(name, sizeof name, "(%s + %lld)", pool_name(g->nodes[id].dtype), (long long)plan->offset[id]);
      f.buffers[id] = strdup(name);
      break;
    default:
      break;
    }
  }
  for (int id = 0; id <= opt->entry; id++)
    if (plan->kind[id] == IK_ALIAS) f.buffers[id] = strdup(f.buffers[resolve(plan, id)]);

  strbuf header = {0}, source = {0};
  emit_header(&f, &header);
  int status = emit_source(&f, values, &source);
  char name[128];
  snprintf(name, sizeof name, "%s.h", f.prefix);
  if (status == 0) status = sb_write_file(&header, dir, name);
  snprintf(name, sizeof name, "%s.c", f.prefix);
  if (status == 0) status = sb_write_file(&source, dir, name);
  sb_free(&header);
  sb_free(&source);
  for (int i = 0; i < g->nnodes; i++) free(f.buffers[i]);
  free(f.buffers);
  free(f.params);
  free(names.names);
  return status;
}
