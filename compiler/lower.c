/* lower.c - evaluates a parsed .flow program into an IR graph: names, functions, builtins, train block. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front_internal.h"

/* Limits that turn pathological input into an error instead of a crash or a hang. */
enum {
  MAX_LOWER_DEPTH = 1000,      /* nested expressions, counted through function bodies */
  MAX_CALL_DEPTH = 64,         /* nested user-function expansions */
  MAX_EXPANSIONS = 1000000,    /* user-function calls expanded in one compile */
  MAX_NODES = 1 << 20,         /* graph nodes */
  MAX_PARAMS = 8,              /* parameters of a builtin */
};
#define MAX_DIM ((int64_t)1 << 31)
#define MAX_ELEMENTS ((int64_t)1 << 40)

/* ---- values --------------------------------------------------------------- */

typedef enum {
  V_ERROR,     /* an error was reported; consumers stay silent (no cascades) */
  V_UNBOUND,   /* a name bound to nothing: a symbolic dim in a placeholder shape, else an error */
  V_NONE,
  V_BOOL,
  V_NUMBER,
  V_STRING,
  V_LIST,
  V_DTYPE,
  V_TENSOR,
  V_OPTIMIZER,
} value_kind;

typedef struct {
  fl_optimizer kind;
  const char *name;
  double lr, momentum, beta1, beta2, epsilon;
} optimizer;

typedef struct value value;
struct value {
  value_kind kind;
  fl_loc loc;        /* where the value was written, for messages about it */
  double number;     /* V_NUMBER; V_BOOL 0 or 1 */
  int64_t integer;   /* V_NUMBER when is_integer */
  bool is_integer;
  const char *str;   /* V_STRING text; V_UNBOUND the name */
  int node;          /* V_TENSOR */
  fl_dtype dtype;    /* V_DTYPE */
  value *items;      /* V_LIST */
  int nitems;
  optimizer opt;     /* V_OPTIMIZER */
};

typedef struct {
  const char *name;
  value v;
} binding;

typedef struct {
  binding *items;
  int n, cap;
} scope;

typedef struct {
  const fe_stmt *def;
  fl_loc call_loc;
} frame;

typedef struct lowering lowering;
typedef struct call call;
typedef value (*builtin_fn)(lowering *lw, call *c);

typedef struct {
  const char *name;
  builtin_fn fn;
  int nrequired;
  const char *params[MAX_PARAMS]; /* "name|alias|alias", in TensorFlow's positional order */
} builtin;

struct call {
  const builtin *b;
  const char *name; /* as the user wrote it (an alias shows as written) */
  fl_loc loc;
  value arg[MAX_PARAMS];
  bool given[MAX_PARAMS];
};

struct lowering {
  fe_arena *arena;
  fl_graph *g;
  const fe_program *prog;
  const fl_define *defines;
  int ndefines;
  bool *define_used;
  scope globals;
  scope *locals; /* the innermost function's parameters, or NULL at top level */
  const fe_stmt **defs;
  int ndefs, defs_cap;
  frame stack[MAX_CALL_DEPTH];
  int nframes;
  int depth;
  long expansions;
  bool too_large_reported;
  const fe_stmt *train_stmt;
  fe_bindings *names;
};

static const builtin builtins[];
static const size_t nbuiltins;

/* ---- errors ------------------------------------------------------------- */

static value error_value(void) { return (value){.kind = V_ERROR}; }

/* Reports an error; inside a function expansion, also where each call was made. */
static value lower_error(lowering *lw, fl_loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static value lower_error(lowering *lw, fl_loc loc, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fl_error(loc, "%s", msg);
  /* The innermost calls explain the error best; the outermost says where the
   * model made it. A long chain in between is summarised. */
  for (int i = lw->nframes - 1; i >= 0; i--) {
    if (i < lw->nframes - 3 && i > 0) {
      fl_note((fl_loc){0}, "... %d more calls ...", i);
      i = 1;
      continue;
    }
    fl_note(lw->stack[i].call_loc, "in call to %s here", lw->stack[i].def->name);
  }
  return error_value();
}

static const char *kind_name(const value *v) {
  switch (v->kind) {
  case V_ERROR: return "an error";
  case V_UNBOUND: return "an undefined name";
  case V_NONE: return "None";
  case V_BOOL: return "a boolean";
  case V_NUMBER: return "a number";
  case V_STRING: return "a string";
  case V_LIST: return "a list";
  case V_DTYPE: return "a dtype";
  case V_TENSOR: return "a tensor";
  case V_OPTIMIZER: return "an optimizer";
  }
  return "a value";
}

/* ---- names ----------------------------------------------------------------- */

static binding *scope_find(scope *s, const char *name) {
  if (!s) return NULL;
  for (int i = s->n - 1; i >= 0; i--)
    if (strcmp(s->items[i].name, name) == 0) return &s->items[i];
  return NULL;
}

static void scope_bind(lowering *lw, scope *s, const char *name, value v) {
  binding *b = scope_find(s, name);
  if (!b) {
    b = fe_arena_push(lw->arena, &s->items, &s->n, &s->cap, sizeof *b);
    b->name = name;
  }
  b->v = v;
}

static const fe_stmt *find_def(const lowering *lw, const char *name) {
  for (int i = 0; i < lw->ndefs; i++)
    if (strcmp(lw->defs[i]->name, name) == 0) return lw->defs[i];
  return NULL;
}

static const builtin *find_builtin(const char *name) {
  for (size_t i = 0; i < nbuiltins; i++)
    if (strcmp(builtins[i].name, name) == 0) return &builtins[i];
  return NULL;
}

/* Keeps the closest candidate within edit distance 2 (and shorter than the name,
 * so that two-letter names are not "corrected" to unrelated ones). */
static void consider(const char *name, const char *candidate, const char **best, int *best_dist) {
  if (strcmp(name, candidate) == 0) return;
  int d = fe_edit_distance(name, candidate);
  if (d <= 2 && d < (int)strlen(name) && d < *best_dist) {
    *best = candidate;
    *best_dist = d;
  }
}

static const char *suggest_function(const lowering *lw, const char *name) {
  const char *best = NULL;
  int dist = 3;
  for (int i = 0; i < lw->ndefs; i++) consider(name, lw->defs[i]->name, &best, &dist);
  for (size_t i = 0; i < nbuiltins; i++) consider(name, builtins[i].name, &best, &dist);
  return best;
}

static const char *suggest_value(const lowering *lw, const char *name) {
  const char *best = NULL;
  int dist = 3;
  if (lw->locals)
    for (int i = 0; i < lw->locals->n; i++) consider(name, lw->locals->items[i].name, &best, &dist);
  for (int i = 0; i < lw->globals.n; i++) consider(name, lw->globals.items[i].name, &best, &dist);
  return best;
}

static value report_unbound(lowering *lw, const value *v, const char *hint) {
  if (find_def(lw, v->str) || find_builtin(v->str))
    return lower_error(lw, v->loc, "'%s' is a function: call it, as in %s(...)", v->str, v->str);
  const char *close = suggest_value(lw, v->str);
  if (close)
    return lower_error(lw, v->loc, "undefined name '%s' (did you mean '%s'?)%s", v->str, close,
                       hint ? hint : "");
  return lower_error(lw, v->loc, "undefined name '%s'%s", v->str, hint ? hint : "");
}

/* ---- graph building ------------------------------------------------------ */

/* Nodes made inside a function expansion carry the outermost call's location:
 * a shape error then points at the line of the model that made it, not at the
 * helper's body that every call shares. */
static fl_loc node_loc(const lowering *lw, fl_loc loc) {
  return lw->nframes > 0 ? lw->stack[0].call_loc : loc;
}

static int add_node(lowering *lw, fl_op op, fl_dtype dtype, const int *inputs, int ninputs,
                    const fl_attrs *attr, fl_loc loc) {
  if (lw->g->nnodes >= MAX_NODES) {
    if (!lw->too_large_reported)
      lower_error(lw, loc, "the graph is too large (more than %d nodes); does a function expand "
                  "exponentially?", MAX_NODES);
    lw->too_large_reported = true;
    return -1;
  }
  for (int i = 0; i < ninputs; i++)
    if (inputs[i] < 0) return -1;
  return fl_graph_add(lw->g, op, dtype, inputs, ninputs, attr, node_loc(lw, loc));
}

static value tensor_value(int node, fl_loc loc) {
  if (node < 0) return error_value();
  return (value){.kind = V_TENSOR, .node = node, .loc = loc};
}

static fl_dtype node_dtype(const lowering *lw, int node) { return lw->g->nodes[node].dtype; }

static bool dtype_is_integer(fl_dtype t) { return t == FL_I32 || t == FL_I64; }

static int scalar_const(lowering *lw, double v, fl_dtype dtype, fl_loc loc) {
  fl_attrs a = fl_attrs_default();
  a.data = &v; /* fl_graph_add copies it */
  return add_node(lw, FL_OP_CONST, dtype, NULL, 0, &a, loc);
}

static fl_dtype literal_dtype(const value *v) {
  if (v->kind == V_BOOL) return FL_BOOL;
  return v->is_integer ? FL_I32 : FL_F32;
}

/* Checks that a literal fits a dtype: 0.5 is no i32, 3 is no bool. */
static bool literal_fits(lowering *lw, const char *who, const value *v, fl_dtype dtype) {
  if (dtype_is_integer(dtype) && v->kind == V_NUMBER && !v->is_integer) {
    lower_error(lw, v->loc, "%s: %g is not an integer, but the tensor is %s", who, v->number,
                fl_dtype_name(dtype));
    return false;
  }
  if (dtype == FL_BOOL && v->kind == V_NUMBER) {
    lower_error(lw, v->loc, "%s: %g is a number, but the tensor is bool (write true or false)",
                who, v->number);
    return false;
  }
  return true;
}

/* Flattens a nested list of numbers row-major, checking it is rectangular.
 * Returns the number of values written, or -1 after an error. */
static int64_t flatten_literal(lowering *lw, const char *who, const value *v, int level,
                               fl_shape *shape, double *out, int64_t at, bool *any_float,
                               bool *any_bool) {
  if (v->kind == V_NUMBER || v->kind == V_BOOL) {
    if (level != shape->rank) {
      lower_error(lw, v->loc, "%s: ragged list: a number where a list of %lld was expected", who,
                  (long long)shape->dims[level].coef);
      return -1;
    }
    if (v->kind == V_NUMBER && !v->is_integer) *any_float = true;
    if (v->kind == V_BOOL) *any_bool = true;
    out[at] = v->number;
    return 1;
  }
  if (v->kind != V_LIST) {
    if (v->kind == V_UNBOUND) report_unbound(lw, v, NULL);
    else if (v->kind != V_ERROR)
      lower_error(lw, v->loc, "%s: a literal holds numbers, found %s", who, kind_name(v));
    return -1;
  }
  if (level >= shape->rank || shape->dims[level].coef != v->nitems) {
    lower_error(lw, v->loc, "%s: ragged list: %d elements where %lld were expected", who,
                v->nitems, level < shape->rank ? (long long)shape->dims[level].coef : 0LL);
    return -1;
  }
  int64_t written = 0;
  for (int i = 0; i < v->nitems; i++) {
    int64_t n = flatten_literal(lw, who, &v->items[i], level + 1, shape, out, at + written,
                                any_float, any_bool);
    if (n < 0) return -1;
    written += n;
  }
  return written;
}

/* A CONST node from a number or a nested list; dtype < 0 picks it from the
 * literal (f32 if any number has a '.', else i32). */
static int literal_const(lowering *lw, const char *who, const value *v, int dtype_or_auto,
                         const fl_shape *reshape_to) {
  fl_shape shape = {0};
  /* The shape is the lengths along the first elements; flatten checks the rest. */
  const value *p = v;
  while (p->kind == V_LIST) {
    if (shape.rank == FL_MAX_RANK) {
      lower_error(lw, v->loc, "%s: a literal may have at most %d dimensions", who, FL_MAX_RANK);
      return -1;
    }
    shape.dims[shape.rank++] = fl_dim_const(p->nitems);
    if (p->nitems == 0) break;
    p = &p->items[0];
  }
  int64_t count = fl_shape_const_size(&shape);
  double *data = malloc((size_t)(count > 0 ? count : 1) * sizeof *data);
  if (!data) {
    lower_error(lw, v->loc, "%s: out of memory", who);
    return -1;
  }
  bool any_float = false, any_bool = false;
  int64_t n = flatten_literal(lw, who, v, 0, &shape, data, 0, &any_float, &any_bool);
  if (n < 0) {
    free(data);
    return -1;
  }
  fl_dtype dtype = any_bool ? FL_BOOL : any_float ? FL_F32 : FL_I32;
  if (dtype_or_auto >= 0) {
    fl_dtype want = (fl_dtype)dtype_or_auto;
    if (dtype_is_integer(want) && any_float) {
      free(data);
      lower_error(lw, v->loc, "%s: the literal has fractional numbers but the dtype is %s", who,
                  fl_dtype_name(want));
      return -1;
    }
    dtype = want;
  }
  fl_attrs a = fl_attrs_default();
  a.target = shape;
  if (reshape_to) {
    if (fl_shape_const_size(reshape_to) != count) {
      free(data);
      char want[160];
      lower_error(lw, v->loc, "%s: the literal has %lld values but shape %s needs %lld", who,
                  (long long)count, fl_shape_str(lw->g, reshape_to, want, sizeof want),
                  (long long)fl_shape_const_size(reshape_to));
      return -1;
    }
    a.target = *reshape_to;
  }
  a.data = data;
  int node = add_node(lw, FL_OP_CONST, dtype, NULL, 0, &a, v->loc);
  free(data);
  return node;
}

/* A tensor from a value: tensors as they are, numbers and lists as CONST nodes
 * (of dtype_hint when >= 0, else the literal's own dtype). Returns -1 after an
 * error. */
static int to_tensor(lowering *lw, const char *who, const char *what, const value *v,
                     int dtype_hint) {
  switch (v->kind) {
  case V_TENSOR:
    return v->node;
  case V_NUMBER: case V_BOOL:
    if (dtype_hint >= 0) {
      if (!literal_fits(lw, who, v, (fl_dtype)dtype_hint)) return -1;
      return scalar_const(lw, v->number, (fl_dtype)dtype_hint, v->loc);
    }
    return scalar_const(lw, v->number, literal_dtype(v), v->loc);
  case V_LIST:
    return literal_const(lw, who, v, dtype_hint, NULL);
  case V_ERROR:
    return -1;
  case V_UNBOUND:
    report_unbound(lw, v, NULL);
    return -1;
  default:
    lower_error(lw, v->loc, "%s: %s must be a tensor, found %s", who, what, kind_name(v));
    return -1;
  }
}

/* ---- numbers ------------------------------------------------------------- */

static value number_value(double x, fl_loc loc) {
  return (value){.kind = V_NUMBER, .number = x, .loc = loc};
}

static value integer_value(int64_t x, fl_loc loc) {
  return (value){.kind = V_NUMBER, .number = (double)x, .integer = x, .is_integer = true, .loc = loc};
}

/* number op number, folded now: + - * of integers stay integers, / gives a float. */
static value fold(lowering *lw, char op, const value *a, const value *b, fl_loc loc) {
  if (a->is_integer && b->is_integer && op != '/') {
    int64_t r;
    bool overflow = op == '+'   ? __builtin_add_overflow(a->integer, b->integer, &r)
                    : op == '-' ? __builtin_sub_overflow(a->integer, b->integer, &r)
                                : __builtin_mul_overflow(a->integer, b->integer, &r);
    if (overflow)
      return lower_error(lw, loc, "number too large: %lld %c %lld overflows 64 bits",
                         (long long)a->integer, op, (long long)b->integer);
    return integer_value(r, loc);
  }
  double r;
  switch (op) {
  case '+': r = a->number + b->number; break;
  case '-': r = a->number - b->number; break;
  case '*': r = a->number * b->number; break;
  default:
    if (b->number == 0) return lower_error(lw, loc, "division by zero");
    r = a->number / b->number;
    break;
  }
  if (isinf(r) || isnan(r)) return lower_error(lw, loc, "number too large: %g %c %g", a->number, op, b->number);
  return number_value(r, loc);
}

/* ---- arithmetic on values ------------------------------------------------ */

/* Binary elementwise op. A number meeting a tensor takes the tensor's dtype,
 * as a Python scalar does; two numbers fold when written with an operator. */
static value binary(lowering *lw, const char *who, fl_op op, const value *a, const value *b,
                    fl_loc loc, bool fold_numbers) {
  if (a->kind == V_ERROR || b->kind == V_ERROR) return error_value();
  const value *operands[2] = {a, b};
  for (int i = 0; i < 2; i++) {
    const value *v = operands[i];
    if (v->kind == V_UNBOUND) return report_unbound(lw, v, NULL);
    if (v->kind != V_TENSOR && v->kind != V_NUMBER && v->kind != V_LIST && v->kind != V_BOOL)
      return lower_error(lw, v->loc, "%s: expected a tensor or a number, found %s", who,
                         kind_name(v));
  }
  if (fold_numbers && a->kind == V_NUMBER && b->kind == V_NUMBER) {
    char sym = op == FL_OP_ADD ? '+' : op == FL_OP_SUB ? '-' : op == FL_OP_MUL ? '*' : '/';
    return fold(lw, sym, a, b, loc);
  }
  int x, y;
  if (a->kind == V_TENSOR) {
    x = a->node;
    y = to_tensor(lw, who, "the second operand", b, node_dtype(lw, x));
  } else if (b->kind == V_TENSOR) {
    y = b->node;
    x = to_tensor(lw, who, "the first operand", a, node_dtype(lw, y));
  } else {
    x = to_tensor(lw, who, "the first operand", a, -1);
    y = x < 0 ? -1 : to_tensor(lw, who, "the second operand", b, node_dtype(lw, x));
  }
  if (x < 0 || y < 0) return error_value();
  /* A dtype mismatch of two tensors is left to the shape pass, which reports it. */
  fl_dtype dtype = op == FL_OP_EQUAL ? FL_BOOL : node_dtype(lw, x);
  int in[2] = {x, y};
  return tensor_value(add_node(lw, op, dtype, in, 2, NULL, loc), loc);
}

static value unary(lowering *lw, const char *who, fl_op op, const value *a, fl_loc loc) {
  int x = to_tensor(lw, who, "the input", a, -1);
  if (x < 0) return error_value();
  return tensor_value(add_node(lw, op, node_dtype(lw, x), &x, 1, NULL, loc), loc);
}

/* ---- argument binding for builtins --------------------------------------- */

static bool param_matches(const char *spec, const char *name) {
  size_t n = strlen(name);
  for (const char *p = spec;;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return true;
    if (!bar) return false;
    p = bar + 1;
  }
}

static const char *param_name(const char *spec, char *buf, size_t cap) {
  size_t len = strcspn(spec, "|");
  snprintf(buf, cap, "%.*s", (int)(len < cap ? len : cap - 1), spec);
  return buf;
}

static int count_params(const builtin *b) {
  int n = 0;
  while (n < MAX_PARAMS && b->params[n]) n++;
  return n;
}

/* "conv2d(input, filter, strides, padding)" */
static const char *signature(const char *name, const builtin *b, char *buf, size_t cap) {
  size_t used = (size_t)snprintf(buf, cap, "%s(", name);
  int n = count_params(b);
  for (int i = 0; i < n && used < cap; i++) {
    char p[40];
    used += (size_t)snprintf(buf + used, cap - used, "%s%s%s", i ? ", " : "",
                             param_name(b->params[i], p, sizeof p), i >= b->nrequired ? "=..." : "");
  }
  if (used < cap) snprintf(buf + used, cap - used, ")");
  return buf;
}

static value lower_expr(lowering *lw, const fe_expr *e);

static fl_loc expr_loc(const fe_expr *e) {
  /* The leftmost token, bounded: the parser limits how deep a tree goes. */
  while (e->kind == EX_BINARY || e->kind == EX_METHOD) e = e->lhs;
  return e->loc;
}

/* Lowers the argument expressions and matches them to the builtin's parameters. */
static bool bind_builtin_args(lowering *lw, const builtin *b, const char *name, fl_loc loc,
                              const fe_arg *args, int nargs, call *c) {
  memset(c, 0, sizeof *c);
  c->b = b;
  c->name = name;
  c->loc = loc;
  int nparams = count_params(b);
  value *vals = fe_arena_alloc(lw->arena, (size_t)(nargs > 0 ? nargs : 1) * sizeof *vals);
  bool ok = true;
  for (int i = 0; i < nargs; i++) {
    vals[i] = lower_expr(lw, args[i].value);
    if (vals[i].kind == V_ERROR) ok = false;
  }
  if (!ok) return false;
  char sig[256];
  for (int i = 0; i < nargs; i++) {
    int slot = -1;
    if (!args[i].name) {
      if (i >= nparams) {
        lower_error(lw, expr_loc(args[i].value), "%s: too many arguments: expected at most %d, found %d; %s",
                    name, nparams, nargs, signature(name, b, sig, sizeof sig));
        return false;
      }
      slot = i;
    } else {
      for (int j = 0; j < nparams; j++)
        if (param_matches(b->params[j], args[i].name)) slot = j;
      if (slot < 0) {
        const char *best = NULL;
        int dist = 3;
        for (int j = 0; j < nparams; j++) {
          char p[40];
          const char *pn = param_name(b->params[j], p, sizeof p);
          if (fe_edit_distance(args[i].name, pn) < dist) {
            dist = fe_edit_distance(args[i].name, pn);
            best = b->params[j];
          }
        }
        char p[40];
        if (best)
          lower_error(lw, args[i].name_loc, "%s has no argument '%s' (did you mean '%s'?); %s", name,
                      args[i].name, param_name(best, p, sizeof p), signature(name, b, sig, sizeof sig));
        else
          lower_error(lw, args[i].name_loc, "%s has no argument '%s'; %s", name, args[i].name,
                      signature(name, b, sig, sizeof sig));
        return false;
      }
      if (c->given[slot]) {
        char p[40];
        lower_error(lw, args[i].name_loc, "%s: argument '%s' is given twice", name,
                    param_name(b->params[slot], p, sizeof p));
        return false;
      }
    }
    c->given[slot] = true;
    c->arg[slot] = vals[i];
    c->arg[slot].loc = expr_loc(args[i].value);
  }
  for (int j = 0; j < b->nrequired; j++)
    if (!c->given[j]) {
      char p[40];
      lower_error(lw, loc, "%s: missing argument '%s'; %s", name,
                  param_name(b->params[j], p, sizeof p), signature(name, b, sig, sizeof sig));
      return false;
    }
  return true;
}

/* Readers of one argument. Each reports its own errors and returns false. */

static const char *pname(const call *c, int i, char *buf) { return param_name(c->b->params[i], buf, 40); }

static int arg_tensor(lowering *lw, call *c, int i, int dtype_hint) {
  char p[40];
  return to_tensor(lw, c->name, pname(c, i, p), &c->arg[i], dtype_hint);
}

static bool arg_number(lowering *lw, call *c, int i, double fallback, double *out) {
  if (!c->given[i] || c->arg[i].kind == V_NONE) {
    *out = fallback;
    return true;
  }
  const value *v = &c->arg[i];
  if (v->kind == V_NUMBER) {
    *out = v->number;
    return true;
  }
  if (v->kind == V_UNBOUND) {
    report_unbound(lw, v, NULL);
    return false;
  }
  char p[40];
  lower_error(lw, v->loc, "%s: %s must be a number, found %s", c->name, pname(c, i, p),
              kind_name(v));
  return false;
}

static bool arg_bool(lowering *lw, call *c, int i, bool fallback, bool *out) {
  if (!c->given[i] || c->arg[i].kind == V_NONE) {
    *out = fallback;
    return true;
  }
  const value *v = &c->arg[i];
  if (v->kind == V_BOOL) {
    *out = v->number != 0;
    return true;
  }
  if (v->kind == V_UNBOUND) {
    report_unbound(lw, v, NULL);
    return false;
  }
  char p[40];
  lower_error(lw, v->loc, "%s: %s must be true or false, found %s", c->name, pname(c, i, p),
              kind_name(v));
  return false;
}

static bool arg_dtype(lowering *lw, call *c, int i, int fallback, int *out) {
  if (!c->given[i] || c->arg[i].kind == V_NONE) {
    *out = fallback;
    return true;
  }
  const value *v = &c->arg[i];
  fl_dtype t;
  if (v->kind == V_DTYPE) {
    *out = (int)v->dtype;
    return true;
  }
  if (v->kind == V_STRING && fl_dtype_parse(v->str, &t)) {
    *out = (int)t;
    return true;
  }
  char p[40];
  if (v->kind == V_UNBOUND)
    lower_error(lw, v->loc, "%s: unknown dtype '%s' (known: f32, i32, i64, bool)", c->name, v->str);
  else
    lower_error(lw, v->loc, "%s: %s must be a dtype (f32, i32, i64, bool), found %s", c->name,
                pname(c, i, p), kind_name(v));
  return false;
}

enum { SHAPE_SYMBOLS = 1, SHAPE_INFER = 2 };

/* A shape from a list of integers (or one integer). SHAPE_SYMBOLS lets
 * undefined names and None stand for symbolic dimensions (placeholders);
 * SHAPE_INFER allows one -1 (reshape). */
static bool to_shape(lowering *lw, call *c, int i, int flags, fl_shape *out) {
  const value *v = &c->arg[i];
  memset(out, 0, sizeof *out);
  char p[40];
  pname(c, i, p);
  if (v->kind == V_NUMBER && v->is_integer) {
    if (v->integer < 1 || v->integer > MAX_DIM) {
      lower_error(lw, v->loc, "%s: %s must be positive, found %lld", c->name, p,
                  (long long)v->integer);
      return false;
    }
    out->rank = 1;
    out->dims[0] = fl_dim_const(v->integer);
    return true;
  }
  if (v->kind != V_LIST) {
    if (v->kind == V_UNBOUND) {
      report_unbound(lw, v, NULL);
      return false;
    }
    lower_error(lw, v->loc, "%s: %s must be a list of integers, found %s", c->name, p,
                kind_name(v));
    return false;
  }
  if (v->nitems > FL_MAX_RANK) {
    lower_error(lw, v->loc, "%s: %s has %d dimensions; at most %d are supported", c->name, p,
                v->nitems, FL_MAX_RANK);
    return false;
  }
  bool inferred = false;
  int64_t elements = 1;
  for (int k = 0; k < v->nitems; k++) {
    const value *d = &v->items[k];
    if ((flags & SHAPE_SYMBOLS) && (d->kind == V_UNBOUND || d->kind == V_NONE)) {
      out->dims[k] = fl_dim_sym(fl_graph_symbol(lw->g, d->kind == V_NONE ? "None" : d->str));
      continue;
    }
    if (d->kind == V_UNBOUND) {
      report_unbound(lw, d, " (a symbolic dimension like N is allowed only in a placeholder's shape)");
      return false;
    }
    if (d->kind != V_NUMBER || !d->is_integer) {
      lower_error(lw, d->loc, "%s: %s must be a list of integers, found %s", c->name, p,
                  d->kind == V_NUMBER ? "a fractional number" : kind_name(d));
      return false;
    }
    if (d->integer == -1 && (flags & SHAPE_INFER)) {
      if (inferred) {
        lower_error(lw, d->loc, "%s: only one dimension may be -1", c->name);
        return false;
      }
      inferred = true;
      out->dims[k] = fl_dim_const(-1);
      continue;
    }
    if (d->integer < 1 || d->integer > MAX_DIM) {
      if (d->integer == -1 && (flags & SHAPE_SYMBOLS))
        lower_error(lw, d->loc, "%s: write None or a name like N for a dimension known only at "
                    "run time, not -1", c->name);
      else
        lower_error(lw, d->loc, "%s: dimension %lld of %s is out of range (must be positive%s)",
                    c->name, (long long)d->integer, p, (flags & SHAPE_INFER) ? " or -1" : "");
      return false;
    }
    elements *= d->integer;
    if (elements > MAX_ELEMENTS) {
      lower_error(lw, v->loc, "%s: %s has too many elements", c->name, p);
      return false;
    }
    out->dims[k] = fl_dim_const(d->integer);
  }
  out->rank = v->nitems;
  return true;
}

static bool arg_padding(lowering *lw, call *c, int i, fl_padding *out) {
  const value *v = &c->arg[i];
  if (v->kind == V_STRING && strcmp(v->str, "SAME") == 0) {
    *out = FL_PAD_SAME;
    return true;
  }
  if (v->kind == V_STRING && strcmp(v->str, "VALID") == 0) {
    *out = FL_PAD_VALID;
    return true;
  }
  if (v->kind == V_STRING)
    lower_error(lw, v->loc, "%s: padding must be \"SAME\" or \"VALID\", found \"%s\"", c->name, v->str);
  else
    lower_error(lw, v->loc, "%s: padding must be \"SAME\" or \"VALID\", found %s", c->name,
                kind_name(v));
  return false;
}

/* strides and ksize: [1, h, w, 1] as TensorFlow writes them for NHWC. */
static bool arg_window(lowering *lw, call *c, int i, int out[2]) {
  const value *v = &c->arg[i];
  char p[40];
  pname(c, i, p);
  bool ok = v->kind == V_LIST && v->nitems == 4;
  for (int k = 0; ok && k < 4; k++) {
    const value *d = &v->items[k];
    ok = d->kind == V_NUMBER && d->is_integer && d->integer >= 1 && d->integer <= 65536 &&
         ((k != 0 && k != 3) || d->integer == 1);
  }
  if (!ok) {
    lower_error(lw, v->loc, "%s: %s must be a list of 4 integers [1, h, w, 1]", c->name, p);
    return false;
  }
  out[0] = (int)v->items[1].integer;
  out[1] = (int)v->items[2].integer;
  return true;
}

static bool arg_axes(lowering *lw, call *c, int i, fl_attrs *a) {
  a->naxes = 0;
  if (!c->given[i] || c->arg[i].kind == V_NONE) return true;
  const value *v = &c->arg[i];
  const value *items = v;
  int n = 1;
  if (v->kind == V_LIST) {
    items = v->items;
    n = v->nitems;
    if (n == 0 || n > FL_MAX_RANK) {
      lower_error(lw, v->loc, "%s: axis must be an integer or a list of 1 to %d integers", c->name,
                  FL_MAX_RANK);
      return false;
    }
  }
  for (int k = 0; k < n; k++) {
    if (items[k].kind != V_NUMBER || !items[k].is_integer || items[k].integer < -FL_MAX_RANK ||
        items[k].integer >= FL_MAX_RANK) {
      if (items[k].kind == V_UNBOUND) {
        report_unbound(lw, &items[k], NULL);
        return false;
      }
      lower_error(lw, items[k].loc, "%s: axis must be an integer or a list of integers (between "
                  "-%d and %d), found %s", c->name, FL_MAX_RANK, FL_MAX_RANK - 1,
                  items[k].kind == V_NUMBER ? "an out-of-range number" : kind_name(&items[k]));
      return false;
    }
    a->axes[k] = (int)items[k].integer;
  }
  a->naxes = n;
  return true;
}

/* ---- builtins -------------------------------------------------------------- */

static value bi_placeholder(lowering *lw, call *c) {
  int dtype;
  if (!arg_dtype(lw, c, 0, -1, &dtype)) return error_value();
  fl_attrs a = fl_attrs_default();
  if (c->given[1] && c->arg[1].kind != V_NONE && !to_shape(lw, c, 1, SHAPE_SYMBOLS, &a.target))
    return error_value();
  return tensor_value(add_node(lw, FL_OP_PLACEHOLDER, (fl_dtype)dtype, NULL, 0, &a, c->loc), c->loc);
}

static value bi_variable(lowering *lw, call *c) {
  const value *init_v = &c->arg[0];
  if (init_v->kind == V_NONE)
    return lower_error(lw, init_v->loc, "variable: needs an initial value");
  int init = arg_tensor(lw, c, 0, -1);
  if (init < 0) return error_value();
  fl_dtype dtype = node_dtype(lw, init);
  bool trainable;
  /* Only floating-point variables can be trained; counters default to not trainable. */
  if (!arg_bool(lw, c, 1, dtype == FL_F32, &trainable)) return error_value();
  const value *name = &c->arg[2];
  if (c->given[2] && name->kind != V_NONE && name->kind != V_STRING)
    return lower_error(lw, name->loc, "variable: name must be a string, found %s", kind_name(name));
  fl_attrs a = fl_attrs_default();
  a.init = init;
  a.trainable = trainable;
  int node = add_node(lw, FL_OP_VARIABLE, dtype, NULL, 0, &a, c->loc);
  if (node >= 0 && c->given[2] && name->kind == V_STRING && name->str[0])
    fl_node_set_name(lw->g, node, name->str);
  return tensor_value(node, c->loc);
}

static value bi_constant(lowering *lw, call *c) {
  int dtype;
  if (!arg_dtype(lw, c, 1, -1, &dtype)) return error_value();
  const value *v = &c->arg[0];
  bool has_shape = c->given[2] && c->arg[2].kind != V_NONE;
  fl_shape shape = {0};
  if (has_shape && !to_shape(lw, c, 2, 0, &shape)) return error_value();
  if (v->kind == V_NUMBER || v->kind == V_BOOL) {
    fl_dtype t = dtype >= 0 ? (fl_dtype)dtype : literal_dtype(v);
    if (!literal_fits(lw, c->name, v, t)) return error_value();
    if (!has_shape) return tensor_value(scalar_const(lw, v->number, t, c->loc), c->loc);
    fl_attrs a = fl_attrs_default();
    a.value = v->number;
    a.target = shape;
    return tensor_value(add_node(lw, FL_OP_FILL, t, NULL, 0, &a, c->loc), c->loc);
  }
  if (v->kind == V_LIST)
    return tensor_value(literal_const(lw, c->name, v, dtype, has_shape ? &shape : NULL), c->loc);
  if (v->kind == V_UNBOUND) return report_unbound(lw, v, NULL);
  return lower_error(lw, v->loc, "%s: value must be a number or a list of numbers, found %s",
                     c->name, kind_name(v));
}

static value fill(lowering *lw, call *c, double x) {
  fl_attrs a = fl_attrs_default();
  int dtype;
  if (!to_shape(lw, c, 0, 0, &a.target) || !arg_dtype(lw, c, 1, FL_F32, &dtype))
    return error_value();
  a.value = x;
  return tensor_value(add_node(lw, FL_OP_FILL, (fl_dtype)dtype, NULL, 0, &a, c->loc), c->loc);
}

static value bi_zeros(lowering *lw, call *c) { return fill(lw, c, 0.0); }
static value bi_ones(lowering *lw, call *c) { return fill(lw, c, 1.0); }

/* random_uniform(shape, minval, maxval, dtype); *_normal(shape, mean, stddev, dtype) */
static value random_op(lowering *lw, call *c, fl_op op, double a_default, double b_default) {
  fl_attrs a = fl_attrs_default();
  int dtype;
  if (!to_shape(lw, c, 0, 0, &a.target) || !arg_number(lw, c, 1, a_default, &a.a) ||
      !arg_number(lw, c, 2, b_default, &a.b) || !arg_dtype(lw, c, 3, FL_F32, &dtype))
    return error_value();
  if (dtype != FL_F32)
    return lower_error(lw, c->arg[3].loc, "%s: only f32 random values are supported", c->name);
  if (op == FL_OP_RANDOM_UNIFORM && !(a.a < a.b))
    return lower_error(lw, c->loc, "%s: minval (%g) must be below maxval (%g)", c->name, a.a, a.b);
  if (op != FL_OP_RANDOM_UNIFORM && !(a.b > 0))
    return lower_error(lw, c->given[2] ? c->arg[2].loc : c->loc,
                       "%s: stddev must be positive, found %g", c->name, a.b);
  a.stream = fl_graph_new_stream(lw->g);
  return tensor_value(add_node(lw, op, FL_F32, NULL, 0, &a, c->loc), c->loc);
}

static value bi_random_uniform(lowering *lw, call *c) {
  return random_op(lw, c, FL_OP_RANDOM_UNIFORM, 0.0, 1.0);
}
static value bi_truncated_normal(lowering *lw, call *c) {
  return random_op(lw, c, FL_OP_TRUNCATED_NORMAL, 0.0, 1.0);
}
static value bi_random_normal(lowering *lw, call *c) {
  return random_op(lw, c, FL_OP_RANDOM_NORMAL, 0.0, 1.0);
}

#define BINARY_BUILTIN(fn, op)                                                                \
  static value fn(lowering *lw, call *c) {                                                    \
    return binary(lw, c->name, op, &c->arg[0], &c->arg[1], c->loc, false);                    \
  }
BINARY_BUILTIN(bi_add, FL_OP_ADD)
BINARY_BUILTIN(bi_sub, FL_OP_SUB)
BINARY_BUILTIN(bi_mul, FL_OP_MUL)
BINARY_BUILTIN(bi_div, FL_OP_DIV)
BINARY_BUILTIN(bi_equal, FL_OP_EQUAL)

#define UNARY_BUILTIN(fn, op)                                                                 \
  static value fn(lowering *lw, call *c) { return unary(lw, c->name, op, &c->arg[0], c->loc); }
UNARY_BUILTIN(bi_neg, FL_OP_NEG)
UNARY_BUILTIN(bi_square, FL_OP_SQUARE)
UNARY_BUILTIN(bi_sqrt, FL_OP_SQRT)
UNARY_BUILTIN(bi_log, FL_OP_LOG)
UNARY_BUILTIN(bi_exp, FL_OP_EXP)
UNARY_BUILTIN(bi_relu, FL_OP_RELU)
UNARY_BUILTIN(bi_sigmoid, FL_OP_SIGMOID)
UNARY_BUILTIN(bi_tanh, FL_OP_TANH)
UNARY_BUILTIN(bi_softmax, FL_OP_SOFTMAX)

static value bi_matmul(lowering *lw, call *c) {
  fl_attrs a = fl_attrs_default();
  int in[2] = {arg_tensor(lw, c, 0, -1), -1};
  if (in[0] < 0) return error_value();
  in[1] = arg_tensor(lw, c, 1, node_dtype(lw, in[0]));
  if (in[1] < 0 || !arg_bool(lw, c, 2, false, &a.transpose_a) ||
      !arg_bool(lw, c, 3, false, &a.transpose_b))
    return error_value();
  return tensor_value(add_node(lw, FL_OP_MATMUL, node_dtype(lw, in[0]), in, 2, &a, c->loc), c->loc);
}

static value bi_reshape(lowering *lw, call *c) {
  fl_attrs a = fl_attrs_default();
  int x = arg_tensor(lw, c, 0, -1);
  if (x < 0 || !to_shape(lw, c, 1, SHAPE_INFER, &a.target)) return error_value();
  return tensor_value(add_node(lw, FL_OP_RESHAPE, node_dtype(lw, x), &x, 1, &a, c->loc), c->loc);
}

static value bi_conv2d(lowering *lw, call *c) {
  fl_attrs a = fl_attrs_default();
  int in[2] = {arg_tensor(lw, c, 0, -1), arg_tensor(lw, c, 1, FL_F32)};
  if (in[0] < 0 || in[1] < 0 || !arg_window(lw, c, 2, a.strides) || !arg_padding(lw, c, 3, &a.padding))
    return error_value();
  return tensor_value(add_node(lw, FL_OP_CONV2D, node_dtype(lw, in[0]), in, 2, &a, c->loc), c->loc);
}

static value bi_max_pool(lowering *lw, call *c) {
  fl_attrs a = fl_attrs_default();
  int x = arg_tensor(lw, c, 0, -1);
  if (x < 0 || !arg_window(lw, c, 1, a.ksize) || !arg_window(lw, c, 2, a.strides) ||
      !arg_padding(lw, c, 3, &a.padding))
    return error_value();
  return tensor_value(add_node(lw, FL_OP_MAX_POOL, node_dtype(lw, x), &x, 1, &a, c->loc), c->loc);
}

static value bi_xent(lowering *lw, call *c) {
  int in[2] = {arg_tensor(lw, c, 0, FL_F32), arg_tensor(lw, c, 1, FL_F32)};
  if (in[0] < 0 || in[1] < 0) return error_value();
  return tensor_value(add_node(lw, FL_OP_SOFTMAX_XENT, FL_F32, in, 2, NULL, c->loc), c->loc);
}

static value reduce(lowering *lw, call *c, fl_op op) {
  fl_attrs a = fl_attrs_default();
  int x = arg_tensor(lw, c, 0, -1);
  if (x < 0 || !arg_axes(lw, c, 1, &a) || !arg_bool(lw, c, 2, false, &a.keepdims))
    return error_value();
  return tensor_value(add_node(lw, op, node_dtype(lw, x), &x, 1, &a, c->loc), c->loc);
}

static value bi_reduce_sum(lowering *lw, call *c) { return reduce(lw, c, FL_OP_REDUCE_SUM); }
static value bi_reduce_mean(lowering *lw, call *c) { return reduce(lw, c, FL_OP_REDUCE_MEAN); }

static value bi_argmax(lowering *lw, call *c) {
  fl_attrs a = fl_attrs_default();
  int x = arg_tensor(lw, c, 0, -1);
  if (x < 0) return error_value();
  if (c->given[1] && c->arg[1].kind == V_LIST)
    return lower_error(lw, c->arg[1].loc, "%s: axis must be one integer", c->name);
  if (!arg_axes(lw, c, 1, &a)) return error_value();
  if (a.naxes == 0) a.axes[0] = 0; /* TensorFlow 1's default axis */
  a.naxes = 1;
  return tensor_value(add_node(lw, FL_OP_ARGMAX, FL_I64, &x, 1, &a, c->loc), c->loc);
}

static value bi_cast(lowering *lw, call *c) {
  int dtype;
  int x = arg_tensor(lw, c, 0, -1);
  if (x < 0 || !arg_dtype(lw, c, 1, -1, &dtype)) return error_value();
  return tensor_value(add_node(lw, FL_OP_CAST, (fl_dtype)dtype, &x, 1, NULL, c->loc), c->loc);
}

static value bi_dropout(lowering *lw, call *c) {
  int x = arg_tensor(lw, c, 0, -1);
  if (x < 0) return error_value();
  const value *kp = &c->arg[1];
  if (kp->kind == V_NUMBER && !(kp->number > 0 && kp->number <= 1))
    return lower_error(lw, kp->loc, "%s: keep_prob must be in (0, 1], found %g", c->name, kp->number);
  int in[2] = {x, arg_tensor(lw, c, 1, FL_F32)};
  if (in[1] < 0) return error_value();
  fl_attrs a = fl_attrs_default();
  a.stream = fl_graph_new_stream(lw->g);
  int mask = add_node(lw, FL_OP_DROPOUT_MASK, FL_F32, in, 2, &a, c->loc);
  int prod[2] = {x, mask};
  return tensor_value(add_node(lw, FL_OP_MUL, node_dtype(lw, x), prod, 2, NULL, c->loc), c->loc);
}

static value bi_assign(lowering *lw, call *c) {
  const value *ref = &c->arg[0];
  if (ref->kind == V_UNBOUND) return report_unbound(lw, ref, NULL);
  if (ref->kind != V_TENSOR)
    return lower_error(lw, ref->loc, "%s: ref must be a variable, found %s", c->name, kind_name(ref));
  const fl_node *target = &lw->g->nodes[ref->node];
  if (target->op != FL_OP_VARIABLE)
    return lower_error(lw, ref->loc, "%s: ref must be a variable, found the result of %s", c->name,
                       fl_op_name(target->op));
  int in[2] = {ref->node, arg_tensor(lw, c, 1, target->dtype)};
  if (in[1] < 0) return error_value();
  return tensor_value(add_node(lw, FL_OP_ASSIGN, target->dtype, in, 2, NULL, c->loc), c->loc);
}

static bool positive_rate(lowering *lw, call *c, int i, double fallback, double *out) {
  if (!arg_number(lw, c, i, fallback, out)) return false;
  if (*out > 0) return true;
  char p[40];
  lower_error(lw, c->given[i] ? c->arg[i].loc : c->loc, "%s: %s must be positive, found %g",
              c->name, pname(c, i, p), *out);
  return false;
}

static value optimizer_value(const optimizer *o, fl_loc loc) {
  return (value){.kind = V_OPTIMIZER, .opt = *o, .loc = loc};
}

static value bi_gradient_descent(lowering *lw, call *c) {
  optimizer o = {.kind = FL_OPT_SGD, .name = "gradient_descent"};
  if (!positive_rate(lw, c, 0, 0, &o.lr)) return error_value();
  return optimizer_value(&o, c->loc);
}

static value bi_momentum(lowering *lw, call *c) {
  optimizer o = {.kind = FL_OPT_MOMENTUM, .name = "momentum"};
  if (!positive_rate(lw, c, 0, 0, &o.lr) || !arg_number(lw, c, 1, 0, &o.momentum))
    return error_value();
  if (!(o.momentum >= 0 && o.momentum < 1))
    return lower_error(lw, c->arg[1].loc, "%s: momentum must be in [0, 1), found %g", c->name,
                       o.momentum);
  return optimizer_value(&o, c->loc);
}

static value bi_adam(lowering *lw, call *c) {
  optimizer o = {.kind = FL_OPT_ADAM, .name = "adam"};
  if (!positive_rate(lw, c, 0, 0.001, &o.lr) || !arg_number(lw, c, 1, 0.9, &o.beta1) ||
      !arg_number(lw, c, 2, 0.999, &o.beta2) || !positive_rate(lw, c, 3, 1e-08, &o.epsilon))
    return error_value();
  for (int i = 1; i <= 2; i++) {
    double beta = i == 1 ? o.beta1 : o.beta2;
    if (!(beta >= 0 && beta < 1))
      return lower_error(lw, c->arg[i].loc, "%s: beta%d must be in [0, 1), found %g", c->name, i, beta);
  }
  return optimizer_value(&o, c->loc);
}

static value bi_mnist(lowering *lw, call *c) {
  return lower_error(lw, c->loc, "mnist(...) names a data set: use it in a train block, as "
                     "data = mnist(\"DIR\")");
}

static const builtin builtins[] = {
    {"placeholder", bi_placeholder, 1, {"dtype", "shape"}},
    {"variable", bi_variable, 1, {"initial_value", "trainable", "name"}},
    {"Variable", bi_variable, 1, {"initial_value", "trainable", "name"}},
    {"constant", bi_constant, 1, {"value", "dtype", "shape"}},
    {"zeros", bi_zeros, 1, {"shape", "dtype"}},
    {"ones", bi_ones, 1, {"shape", "dtype"}},
    {"random_uniform", bi_random_uniform, 1, {"shape", "minval", "maxval", "dtype"}},
    {"truncated_normal", bi_truncated_normal, 1, {"shape", "mean", "stddev", "dtype"}},
    {"random_normal", bi_random_normal, 1, {"shape", "mean", "stddev", "dtype"}},
    {"add", bi_add, 2, {"x", "y"}},
    {"subtract", bi_sub, 2, {"x", "y"}},
    {"sub", bi_sub, 2, {"x", "y"}},
    {"multiply", bi_mul, 2, {"x", "y"}},
    {"mul", bi_mul, 2, {"x", "y"}},
    {"divide", bi_div, 2, {"x", "y"}},
    {"div", bi_div, 2, {"x", "y"}},
    {"negative", bi_neg, 1, {"x"}},
    {"neg", bi_neg, 1, {"x"}},
    {"square", bi_square, 1, {"x"}},
    {"sqrt", bi_sqrt, 1, {"x"}},
    {"log", bi_log, 1, {"x"}},
    {"exp", bi_exp, 1, {"x"}},
    {"relu", bi_relu, 1, {"features|x"}},
    {"sigmoid", bi_sigmoid, 1, {"x"}},
    {"tanh", bi_tanh, 1, {"x"}},
    {"matmul", bi_matmul, 2, {"a", "b", "transpose_a", "transpose_b"}},
    {"reshape", bi_reshape, 2, {"tensor", "shape"}},
    {"conv2d", bi_conv2d, 4, {"input", "filter", "strides", "padding"}},
    {"max_pool", bi_max_pool, 4, {"value|input", "ksize", "strides", "padding"}},
    {"softmax", bi_softmax, 1, {"logits"}},
    {"softmax_cross_entropy_with_logits", bi_xent, 2, {"labels", "logits"}},
    {"reduce_sum", bi_reduce_sum, 1,
     {"input_tensor|input", "axis|reduction_indices", "keepdims|keep_dims"}},
    {"sum", bi_reduce_sum, 1, {"input_tensor|input", "axis|reduction_indices", "keepdims|keep_dims"}},
    {"reduce_mean", bi_reduce_mean, 1,
     {"input_tensor|input", "axis|reduction_indices", "keepdims|keep_dims"}},
    {"mean", bi_reduce_mean, 1, {"input_tensor|input", "axis|reduction_indices", "keepdims|keep_dims"}},
    {"argmax", bi_argmax, 1, {"input", "axis|dimension"}},
    {"equal", bi_equal, 2, {"x", "y"}},
    {"cast", bi_cast, 2, {"x", "dtype"}},
    {"dropout", bi_dropout, 2, {"x", "keep_prob"}},
    {"assign", bi_assign, 2, {"ref", "value"}},
    {"gradient_descent", bi_gradient_descent, 1, {"learning_rate"}},
    {"GradientDescentOptimizer", bi_gradient_descent, 1, {"learning_rate"}},
    {"momentum", bi_momentum, 2, {"learning_rate", "momentum"}},
    {"MomentumOptimizer", bi_momentum, 2, {"learning_rate", "momentum"}},
    {"adam", bi_adam, 0, {"learning_rate", "beta1", "beta2", "epsilon"}},
    {"AdamOptimizer", bi_adam, 0, {"learning_rate", "beta1", "beta2", "epsilon"}},
    {"mnist", bi_mnist, 0, {"dir", "images", "labels"}},
};
static const size_t nbuiltins = sizeof builtins / sizeof builtins[0];

static const builtin minimize_method = {"minimize", NULL, 1, {"loss"}};
static const builtin mnist_setting = {"mnist", NULL, 0, {"dir|path", "images", "labels"}};

/* ---- expressions ----------------------------------------------------------- */

static value call_user(lowering *lw, const fe_stmt *def, const fe_expr *e) {
  for (int i = 0; i < lw->nframes; i++)
    if (lw->stack[i].def == def) {
      if (i == lw->nframes - 1)
        return lower_error(lw, e->loc, "recursion: %s calls itself", def->name);
      char through[512];
      size_t used = 0;
      through[0] = '\0';
      for (int j = i + 1; j < lw->nframes && used < sizeof through; j++)
        used += (size_t)snprintf(through + used, sizeof through - used, "%s%s", j > i + 1 ? ", " : "",
                                 lw->stack[j].def->name);
      return lower_error(lw, e->loc, "recursion: %s calls itself through %s", def->name, through);
    }
  if (lw->nframes >= MAX_CALL_DEPTH)
    return lower_error(lw, e->loc, "function calls nested too deeply (more than %d)", MAX_CALL_DEPTH);
  if (++lw->expansions > MAX_EXPANSIONS)
    return lower_error(lw, e->loc, "too many function calls to expand (more than %d); does a "
                       "function expand exponentially?", MAX_EXPANSIONS);
  /* Bind parameters to argument values, evaluated in the caller's scope. */
  scope *params = fe_arena_alloc(lw->arena, sizeof *params);
  value *vals = fe_arena_alloc(lw->arena, (size_t)(def->nparams > 0 ? def->nparams : 1) * sizeof *vals);
  bool *given = fe_arena_alloc(lw->arena, (size_t)(def->nparams > 0 ? def->nparams : 1));
  int npositional = 0;
  for (int i = 0; i < e->nargs; i++)
    if (!e->args[i].name) npositional++;
  if (npositional > def->nparams)
    return lower_error(lw, e->loc, "%s: expected %d argument%s, found %d", def->name, def->nparams,
                       def->nparams == 1 ? "" : "s", e->nargs);
  bool failed = false;
  for (int i = 0; i < e->nargs; i++) {
    int slot = i;
    if (e->args[i].name) {
      slot = -1;
      for (int j = 0; j < def->nparams; j++)
        if (strcmp(def->params[j], e->args[i].name) == 0) slot = j;
      if (slot < 0)
        return lower_error(lw, e->args[i].name_loc, "%s has no parameter '%s' (defined at %d:%d)",
                           def->name, e->args[i].name, def->loc.line, def->loc.col);
      if (given[slot])
        return lower_error(lw, e->args[i].name_loc, "%s: argument '%s' is given twice", def->name,
                           e->args[i].name);
    }
    vals[slot] = lower_expr(lw, e->args[i].value);
    vals[slot].loc = expr_loc(e->args[i].value);
    given[slot] = true;
    if (vals[slot].kind == V_ERROR) failed = true;
  }
  if (failed) return error_value();
  for (int j = 0; j < def->nparams; j++)
    if (!given[j])
      return lower_error(lw, e->loc, "%s: expected %d argument%s, found %d (missing '%s')", def->name,
                         def->nparams, def->nparams == 1 ? "" : "s", e->nargs, def->params[j]);
  for (int j = 0; j < def->nparams; j++) scope_bind(lw, params, def->params[j], vals[j]);
  scope *saved = lw->locals;
  lw->locals = params;
  lw->stack[lw->nframes++] = (frame){.def = def, .call_loc = e->loc};
  value result = lower_expr(lw, def->value);
  lw->nframes--;
  lw->locals = saved;
  if (result.kind == V_UNBOUND) {
    /* Report it inside the body, where the name was written. */
    lw->stack[lw->nframes++] = (frame){.def = def, .call_loc = e->loc};
    report_unbound(lw, &result, NULL);
    lw->nframes--;
    return error_value();
  }
  return result;
}

static value call_builtin(lowering *lw, const builtin *b, const fe_expr *e) {
  call c;
  if (!bind_builtin_args(lw, b, e->name, e->loc, e->args, e->nargs, &c)) return error_value();
  return b->fn(lw, &c);
}

static value lower_call(lowering *lw, const fe_expr *e) {
  const fe_stmt *def = find_def(lw, e->name);
  const builtin *b = find_builtin(e->name);
  /* Inside `def conv2d(...) = conv2d(...)` the inner call is the builtin it wraps. */
  bool wraps_builtin = def && b && lw->nframes > 0 && lw->stack[lw->nframes - 1].def == def;
  if (def && !wraps_builtin) return call_user(lw, def, e);
  if (b) return call_builtin(lw, b, e);
  const char *close = suggest_function(lw, e->name);
  if (close) return lower_error(lw, e->loc, "unknown function '%s' (did you mean '%s'?)", e->name, close);
  return lower_error(lw, e->loc, "unknown function '%s'", e->name);
}

static value lower_method(lowering *lw, const fe_expr *e) {
  value recv = lower_expr(lw, e->lhs);
  if (recv.kind == V_ERROR) return recv;
  if (recv.kind == V_UNBOUND) return report_unbound(lw, &recv, NULL);
  if (recv.kind != V_OPTIMIZER)
    return lower_error(lw, e->loc, "%s has no method '%s' (only optimizers have one: "
                       "adam(...).minimize(loss))", kind_name(&recv), e->name);
  if (strcmp(e->name, "minimize") != 0)
    return lower_error(lw, e->loc, "an optimizer has no method '%s'; it has minimize(loss)", e->name);
  call c;
  if (!bind_builtin_args(lw, &minimize_method, "minimize", e->loc, e->args, e->nargs, &c))
    return error_value();
  int loss = arg_tensor(lw, &c, 0, FL_F32);
  if (loss < 0) return error_value();
  fl_attrs a = fl_attrs_default();
  a.optimizer = recv.opt.kind;
  a.lr = recv.opt.lr;
  a.momentum = recv.opt.momentum;
  a.beta1 = recv.opt.beta1;
  a.beta2 = recv.opt.beta2;
  a.epsilon = recv.opt.epsilon;
  return tensor_value(add_node(lw, FL_OP_MINIMIZE, FL_F32, &loss, 1, &a, e->loc), e->loc);
}

static value lower_name(lowering *lw, const fe_expr *e) {
  binding *b = scope_find(lw->locals, e->name);
  if (!b) b = scope_find(&lw->globals, e->name);
  if (b) {
    value v = b->v;
    v.loc = e->loc;
    return v;
  }
  if (strcmp(e->name, "None") == 0) return (value){.kind = V_NONE, .loc = e->loc};
  if (strcmp(e->name, "true") == 0 || strcmp(e->name, "True") == 0)
    return (value){.kind = V_BOOL, .number = 1, .loc = e->loc};
  if (strcmp(e->name, "false") == 0 || strcmp(e->name, "False") == 0)
    return (value){.kind = V_BOOL, .number = 0, .loc = e->loc};
  fl_dtype t;
  if (fl_dtype_parse(e->name, &t)) return (value){.kind = V_DTYPE, .dtype = t, .loc = e->loc};
  return (value){.kind = V_UNBOUND, .str = e->name, .loc = e->loc};
}

static value lower_expr_inner(lowering *lw, const fe_expr *e) {
  switch (e->kind) {
  case EX_NUMBER:
    return e->is_integer ? integer_value(e->int_value, e->loc) : number_value(e->number, e->loc);
  case EX_STRING:
    return (value){.kind = V_STRING, .str = e->str, .loc = e->loc};
  case EX_NAME:
    return lower_name(lw, e);
  case EX_LIST: {
    value list = {.kind = V_LIST, .loc = e->loc, .nitems = e->nitems};
    list.items = fe_arena_alloc(lw->arena, (size_t)(e->nitems > 0 ? e->nitems : 1) * sizeof(value));
    bool failed = false;
    for (int i = 0; i < e->nitems; i++) {
      list.items[i] = lower_expr(lw, e->items[i]);
      list.items[i].loc = expr_loc(e->items[i]);
      if (list.items[i].kind == V_ERROR) failed = true;
    }
    return failed ? error_value() : list;
  }
  case EX_NEG: {
    value x = lower_expr(lw, e->lhs);
    if (x.kind == V_ERROR) return x;
    if (x.kind == V_NUMBER) {
      if (x.is_integer) {
        if (x.integer == INT64_MIN) return lower_error(lw, e->loc, "number too large");
        return integer_value(-x.integer, e->loc);
      }
      return number_value(-x.number, e->loc);
    }
    if (x.kind == V_UNBOUND) return report_unbound(lw, &x, NULL);
    if (x.kind != V_TENSOR)
      return lower_error(lw, e->loc, "'-' needs a tensor or a number, found %s", kind_name(&x));
    return unary(lw, "neg", FL_OP_NEG, &x, e->loc);
  }
  case EX_BINARY: {
    /* a + b + c + ... is a left-deep tree as long as the chain: walk its spine
     * in a loop, so that a long sum costs no stack. */
    int n = 0;
    const fe_expr *leftmost = e;
    while (leftmost->kind == EX_BINARY) {
      n++;
      leftmost = leftmost->lhs;
    }
    const fe_expr **spine = fe_arena_alloc(lw->arena, (size_t)n * sizeof *spine);
    const fe_expr *p = e;
    for (int i = n - 1; i >= 0; i--, p = p->lhs) spine[i] = p;
    value acc = lower_expr(lw, leftmost);
    for (int i = 0; i < n; i++) {
      const fe_expr *op_expr = spine[i];
      value b = lower_expr(lw, op_expr->rhs);
      acc.loc = expr_loc(leftmost);
      b.loc = expr_loc(op_expr->rhs);
      char c = op_expr->op;
      fl_op op = c == '+' ? FL_OP_ADD : c == '-' ? FL_OP_SUB : c == '*' ? FL_OP_MUL : FL_OP_DIV;
      acc = binary(lw, fl_op_name(op), op, &acc, &b, op_expr->loc, true);
    }
    return acc;
  }
  case EX_CALL:
    return lower_call(lw, e);
  case EX_METHOD:
    return lower_method(lw, e);
  }
  return error_value();
}

static value lower_expr(lowering *lw, const fe_expr *e) {
  if (lw->depth >= MAX_LOWER_DEPTH)
    return lower_error(lw, e->loc, "expression nested too deeply (more than %d levels, counting "
                       "through function calls)", MAX_LOWER_DEPTH);
  lw->depth++;
  value v = lower_expr_inner(lw, e);
  lw->depth--;
  return v;
}

/* ---- statements ---------------------------------------------------------- */

static void record_name(lowering *lw, const char *name, int node) {
  fe_bindings *names = lw->names;
  if (!names) return;
  const char *node_name = lw->g->nodes[node].name;
  for (int i = 0; i < names->count; i++)
    if (strcmp(names->items[i].name, name) == 0) {
      free(names->items[i].node_name);
      names->items[i].node_name = strdup(node_name);
      names->items[i].node = node;
      return;
    }
  fe_binding *grown = realloc(names->items, (size_t)(names->count + 1) * sizeof *grown);
  if (!grown) abort();
  names->items = grown;
  grown[names->count++] = (fe_binding){.name = strdup(name), .node_name = strdup(node_name), .node = node};
}

static void lower_assign(lowering *lw, const fe_stmt *st) {
  value v;
  int define = -1;
  for (int i = 0; i < lw->ndefines; i++)
    if (strcmp(lw->defines[i].name, st->name) == 0) define = i;
  if (define >= 0) {
    /* -D replaces the written value, which is then not evaluated at all. */
    lw->define_used[define] = true;
    double x = lw->defines[define].value;
    if (x == floor(x) && fabs(x) < 9007199254740992.0)
      v = integer_value((int64_t)x, st->loc);
    else
      v = number_value(x, st->loc);
  } else {
    v = lower_expr(lw, st->value);
  }
  if (v.kind == V_UNBOUND) {
    report_unbound(lw, &v, NULL);
    v = error_value();
  }
  if (v.kind == V_TENSOR) {
    if (!lw->g->nodes[v.node].name) fl_node_set_name(lw->g, v.node, st->name);
    record_name(lw, st->name, v.node);
  }
  scope_bind(lw, &lw->globals, st->name, v);
}

/* ---- the train block ------------------------------------------------------- */

/* The tensor a train-block name refers to, or -1 after an error. */
static int train_tensor(lowering *lw, const char *who, const char *name, fl_loc loc) {
  binding *b = scope_find(&lw->globals, name);
  if (!b) {
    const char *close = suggest_value(lw, name);
    if (close) lower_error(lw, loc, "%s: undefined name '%s' (did you mean '%s'?)", who, name, close);
    else lower_error(lw, loc, "%s: undefined name '%s'", who, name);
    return -1;
  }
  if (b->v.kind == V_ERROR) return -1;
  if (b->v.kind != V_TENSOR) {
    lower_error(lw, loc, "%s: '%s' is %s, not a tensor", who, name, kind_name(&b->v));
    return -1;
  }
  if (strcmp(who, "run") != 0 && lw->g->nodes[b->v.node].op == FL_OP_MINIMIZE) {
    lower_error(lw, loc, "%s: '%s' is a train op: it can be run, but has no value", who, name);
    return -1;
  }
  return b->v.node;
}

static bool setting_integer(lowering *lw, const fe_train_stmt *s, int64_t min, int64_t *out) {
  value v = lower_expr(lw, s->value);
  if (v.kind == V_ERROR) return false;
  if (v.kind == V_UNBOUND) {
    report_unbound(lw, &v, NULL);
    return false;
  }
  if (v.kind != V_NUMBER || !v.is_integer || v.integer < min) {
    lower_error(lw, expr_loc(s->value), "%s must be %s integer, found %s", s->name,
                min > 0 ? "a positive" : "a non-negative",
                v.kind == V_NUMBER ? (v.is_integer ? "a smaller number" : "a fractional number")
                                   : kind_name(&v));
    return false;
  }
  *out = v.integer;
  return true;
}

static int data_placeholder(lowering *lw, const call *c, int i, const char *fallback) {
  if (!c->given[i]) {
    binding *b = scope_find(&lw->globals, fallback);
    if (!b || b->v.kind != V_TENSOR) {
      lower_error(lw, c->loc, "mnist data feeds placeholders 'x' and 'y_' by default; name others "
                  "with images= and labels=");
      return -1;
    }
    return b->v.node;
  }
  const value *v = &c->arg[i];
  if (v->kind == V_UNBOUND) {
    report_unbound(lw, v, NULL);
    return -1;
  }
  if (v->kind != V_TENSOR || lw->g->nodes[v->node].op != FL_OP_PLACEHOLDER) {
    char p[40];
    lower_error(lw, v->loc, "mnist: %s must be a placeholder, found %s", param_name(mnist_setting.params[i], p, sizeof p),
                v->kind == V_TENSOR ? fl_op_name(lw->g->nodes[v->node].op) : kind_name(v));
    return -1;
  }
  return v->node;
}

static void train_data(lowering *lw, const fe_train_stmt *s) {
  const fe_expr *e = s->value;
  if (e->kind != EX_CALL || strcmp(e->name, "mnist") != 0) {
    lower_error(lw, expr_loc(e), "data must be a data set, as in data = mnist(\"MNIST_data\")");
    return;
  }
  call c;
  if (!bind_builtin_args(lw, &mnist_setting, "mnist", e->loc, e->args, e->nargs, &c)) return;
  const char *dir = "MNIST_data";
  if (c.given[0]) {
    if (c.arg[0].kind != V_STRING) {
      lower_error(lw, c.arg[0].loc, "mnist: the directory must be a string, found %s",
                  kind_name(&c.arg[0]));
      return;
    }
    dir = c.arg[0].str;
  }
  int images = data_placeholder(lw, &c, 1, "x");
  int labels = images < 0 ? -1 : data_placeholder(lw, &c, 2, "y_");
  if (images < 0 || labels < 0) return;
  fl_train *t = &lw->g->train;
  t->data = FL_DATA_MNIST;
  free(t->data_dir);
  t->data_dir = strdup(dir);
  t->images_node = images;
  t->labels_node = labels;
}

static void train_setting(lowering *lw, const fe_train_stmt *s, const fe_stmt *block, int index) {
  static const char *const known[] = {"data", "batch", "steps", "seed", "validation"};
  int which = -1;
  for (int i = 0; i < 5; i++)
    if (strcmp(s->name, known[i]) == 0) which = i;
  if (which < 0) {
    const char *best = NULL;
    int dist = 3;
    for (int i = 0; i < 5; i++) consider(s->name, known[i], &best, &dist);
    lower_error(lw, s->loc, "unknown train setting '%s'%s%s%s (known: data, batch, steps, seed, validation)",
                s->name, best ? "; did you mean '" : "", best ? best : "", best ? "'?" : "");
    return;
  }
  for (int i = 0; i < index; i++) {
    const fe_train_stmt *earlier = &block->train[i];
    if (earlier->kind == TS_SETTING && strcmp(earlier->name, s->name) == 0) {
      lower_error(lw, s->loc, "setting '%s' is already set at %d:%d", s->name, earlier->loc.line,
                  earlier->loc.col);
      return;
    }
  }
  fl_train *t = &lw->g->train;
  int64_t n;
  switch (which) {
  case 0: train_data(lw, s); break;
  case 1: if (setting_integer(lw, s, 1, &n)) t->batch = n; break;
  case 2: if (setting_integer(lw, s, 0, &n)) t->steps = n; break;
  case 3: if (setting_integer(lw, s, 0, &n)) t->seed = (uint64_t)n; break;
  default: if (setting_integer(lw, s, 0, &n)) t->validation = n; break;
  }
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) abort();
  return p;
}

/* Splits a print format into text and {name} slots. Columns are counted in the
 * raw source text of the string, so that an error points inside it. */
static bool parse_format(lowering *lw, const fe_token *tok, fl_action *act) {
  const char *raw = tok->text + 1;
  size_t len = tok->len >= 2 ? tok->len - 2 : 0;
  act->pieces = xcalloc(len + 1, sizeof *act->pieces);
  act->targets = xcalloc(len + 1, sizeof *act->targets);
  char *text = xcalloc(len + 1, 1);
  size_t ntext = 0;
  bool ok = true;
#define FLUSH_TEXT()                                                                       \
  do {                                                                                     \
    if (ntext) {                                                                           \
      text[ntext] = '\0';                                                                  \
      act->pieces[act->npieces++] = (fl_print_piece){.text = strdup(text), .node = -1};    \
      ntext = 0;                                                                           \
    }                                                                                      \
  } while (0)
  for (size_t i = 0; i < len && ok;) {
    fl_loc here = {tok->loc.file, tok->loc.line, tok->loc.col + 1 + (int)i, 1};
    char c = raw[i];
    if (c == '\\' && i + 1 < len) {
      char e = raw[i + 1];
      text[ntext++] = e == 'n' ? '\n' : e == 't' ? '\t' : e;
      i += 2;
    } else if (c == '{' && i + 1 < len && raw[i + 1] == '{') {
      text[ntext++] = '{';
      i += 2;
    } else if (c == '}' && i + 1 < len && raw[i + 1] == '}') {
      text[ntext++] = '}';
      i += 2;
    } else if (c == '}') {
      lower_error(lw, here, "print: unmatched '}' in the format (write '}}' for a brace)");
      ok = false;
    } else if (c == '{') {
      size_t close = i + 1;
      while (close < len && raw[close] != '}' && raw[close] != '{') close++;
      if (close >= len || raw[close] != '}') {
        lower_error(lw, here, "print: '{' is not closed by '}' (write '{{' for a brace)");
        ok = false;
        break;
      }
      size_t a = i + 1, b = close;
      while (a < b && raw[a] == ' ') a++;
      while (b > a && raw[b - 1] == ' ') b--;
      fl_loc name_loc = {tok->loc.file, tok->loc.line, tok->loc.col + 1 + (int)a, b > a ? (int)(b - a) : 1};
      bool ident = b > a && !(raw[a] >= '0' && raw[a] <= '9');
      for (size_t k = a; k < b; k++) {
        char ch = raw[k];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_'))
          ident = false;
      }
      if (!ident) {
        if (b == a) lower_error(lw, here, "print: empty slot '{}': name a tensor, or write {step}");
        else lower_error(lw, name_loc, "print: '%.*s' is not a name; a slot holds a tensor's name or step",
                         (int)(b - a), raw + a);
        ok = false;
        break;
      }
      char *name = fe_arena_strndup(lw->arena, raw + a, b - a);
      FLUSH_TEXT();
      if (strcmp(name, "step") == 0) {
        act->pieces[act->npieces++] = (fl_print_piece){.node = -1, .is_step = true};
      } else {
        int node = train_tensor(lw, "print", name, name_loc);
        if (node < 0) {
          ok = false;
          break;
        }
        act->pieces[act->npieces++] = (fl_print_piece){.node = node};
        act->targets[act->ntargets++] = node;
      }
      i = close + 1;
    } else {
      text[ntext++] = c;
      i++;
    }
  }
  if (ok) FLUSH_TEXT();
#undef FLUSH_TEXT
  free(text);
  return ok;
}

static void train_action(lowering *lw, const fe_train_stmt *s) {
  fl_train *t = &lw->g->train;
  fl_action act = {.kind = s->action, .when = s->when, .every = s->every, .loc = s->loc};
  bool ok = true;
  if (s->action == FL_ACT_RUN) {
    act.targets = xcalloc((size_t)s->ntargets, sizeof *act.targets);
    for (int i = 0; i < s->ntargets && ok; i++) {
      int node = train_tensor(lw, "run", s->targets[i], s->target_locs[i]);
      if (node < 0) ok = false;
      else act.targets[act.ntargets++] = node;
    }
  } else {
    ok = parse_format(lw, &s->format, &act);
  }
  if (ok && s->nfeeds) {
    act.feeds = xcalloc((size_t)s->nfeeds, sizeof *act.feeds);
    for (int i = 0; i < s->nfeeds && ok; i++) {
      int node = train_tensor(lw, "with", s->feeds[i].name, s->feeds[i].loc);
      if (node < 0) ok = false;
      else act.feeds[act.nfeeds++] = (fl_feed){.node = node, .value = s->feeds[i].value, .loc = s->feeds[i].loc};
    }
  }
  /* Even a failed action goes into the graph, which owns (and frees) its arrays. */
  fl_action *grown = realloc(t->actions, (size_t)(t->nactions + 1) * sizeof *grown);
  if (!grown) abort();
  t->actions = grown;
  t->actions[t->nactions++] = act;
}

static void lower_train(lowering *lw, const fe_stmt *st) {
  if (lw->train_stmt) {
    lower_error(lw, st->loc, "a description has one train block; the first is at %d:%d",
                lw->train_stmt->loc.line, lw->train_stmt->loc.col);
    return;
  }
  lw->train_stmt = st;
  lw->g->train.present = true;
  lw->g->train.loc = st->loc;
  for (int i = 0; i < st->ntrain; i++) {
    const fe_train_stmt *s = &st->train[i];
    if (s->kind == TS_SETTING) train_setting(lw, s, st, i);
    else train_action(lw, s);
  }
}

/* ---- checks over the finished graph ---------------------------------------- */

static bool is_random_init(fl_op op) {
  return op == FL_OP_RANDOM_UNIFORM || op == FL_OP_TRUNCATED_NORMAL || op == FL_OP_RANDOM_NORMAL;
}

/* Random initialisers run once, when variables are initialised: one used by
 * anything other than a variable's initial value would have no meaning at run
 * time. */
static void check_random_uses(lowering *lw) {
  fl_graph *g = lw->g;
  if (g->nnodes == 0) return;
  bool *in_init = xcalloc((size_t)g->nnodes, sizeof *in_init);
  bool *reported = xcalloc((size_t)g->nnodes, sizeof *reported);
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == FL_OP_VARIABLE && g->nodes[i].attr.init >= 0)
      in_init[g->nodes[i].attr.init] = true;
  /* Inputs have smaller ids, so one backward sweep closes the set. */
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (in_init[i] && g->nodes[i].op != FL_OP_VARIABLE)
      for (int k = 0; k < g->nodes[i].ninputs; k++) in_init[g->nodes[i].inputs[k]] = true;
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    int bad = -1;
    if (is_random_init(n->op) && !in_init[i]) bad = i;
    for (int k = 0; bad < 0 && k < n->ninputs; k++)
      if (!in_init[i] && is_random_init(g->nodes[n->inputs[k]].op)) bad = n->inputs[k];
    if (bad >= 0 && !reported[bad]) {
      reported[bad] = true;
      fl_error(g->nodes[bad].loc, "%s can only initialise a variable, as in variable(%s(...))",
               fl_op_name(g->nodes[bad].op), fl_op_name(g->nodes[bad].op));
    }
  }
  for (int i = 0; i < g->train.nactions; i++) {
    const fl_action *a = &g->train.actions[i];
    for (int k = 0; k < a->ntargets; k++)
      if (is_random_init(g->nodes[a->targets[k]].op) && !reported[a->targets[k]]) {
        reported[a->targets[k]] = true;
        fl_error(a->loc, "%s can only initialise a variable; print or run the variable instead",
                 fl_op_name(g->nodes[a->targets[k]].op));
      }
  }
  free(in_init);
  free(reported);
}

/* ---- entry points ---------------------------------------------------------- */

static void collect_defs(lowering *lw) {
  for (int i = 0; i < lw->prog->nstmts; i++) {
    const fe_stmt *st = &lw->prog->stmts[i];
    if (st->kind != ST_DEF) continue;
    const fe_stmt *earlier = find_def(lw, st->name);
    if (earlier) {
      lower_error(lw, st->loc, "function %s is already defined at %d:%d", st->name,
                  earlier->loc.line, earlier->loc.col);
      continue;
    }
    *(const fe_stmt **)fe_arena_push(lw->arena, &lw->defs, &lw->ndefs, &lw->defs_cap,
                                     sizeof(const fe_stmt *)) = st;
  }
}

void fe_bindings_free(fe_bindings *names) {
  if (!names) return;
  for (int i = 0; i < names->count; i++) {
    free(names->items[i].name);
    free(names->items[i].node_name);
  }
  free(names->items);
  names->items = NULL;
  names->count = 0;
}

fl_graph *fe_lower(const fe_program *program, const fl_define *defines, int ndefines,
                   fe_bindings *names) {
  fe_arena arena = {0};
  lowering lw = {.arena = &arena, .g = fl_graph_new(), .prog = program, .defines = defines,
                 .ndefines = ndefines, .names = names};
  if (names) memset(names, 0, sizeof *names);
  int errors_before = fl_error_count();
  lw.define_used = fe_arena_alloc(&arena, (size_t)(ndefines > 0 ? ndefines : 1));
  collect_defs(&lw);
  for (int i = 0; i < program->nstmts; i++) {
    const fe_stmt *st = &program->stmts[i];
    if (st->kind == ST_ASSIGN) lower_assign(&lw, st);
    else if (st->kind == ST_TRAIN) lower_train(&lw, st);
  }
  for (int i = 0; i < ndefines; i++) {
    bool used = lw.define_used[i];
    for (int j = 0; j < ndefines; j++)
      if (lw.define_used[j] && strcmp(defines[j].name, defines[i].name) == 0) used = true;
    if (!used)
      fl_error((fl_loc){0}, "define '%s' matches no assignment", defines[i].name);
  }
  if (fl_error_count() == errors_before) check_random_uses(&lw);
  if (fl_error_count() == errors_before && lw.g->nnodes == 0)
    fl_error((fl_loc){program->file, 1, 1, 1}, "empty description: no tensors defined");
  fe_arena_free(&arena);
  if (fl_error_count() != errors_before) {
    fl_graph_free(lw.g);
    fe_bindings_free(names);
    return NULL;
  }
  return lw.g;
}
