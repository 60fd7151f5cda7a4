/* ir.h - the flowc IR: a graph of typed, shaped nodes, and the passes over it.
 *
 * This is the one header every stage shares. The front end (compiler/) builds a
 * graph with fl_graph_add(); the passes here infer shapes, differentiate and
 * lower optimizers; the back ends (codegen/) read the finished graph.
 *
 * Invariants of a finished graph (after fl_infer_shapes and fl_autodiff):
 *  - node ids are indices into g->nodes and every input id is smaller than the
 *    id of the node that reads it (the node array is a topological order);
 *  - every node has a dtype and a shape; a dimension is either a constant or a
 *    constant multiple of one symbol (N, 784*N), resolved when a run binds it;
 *  - no MINIMIZE node is left: each became a GROUP of optimizer update nodes.
 */
#ifndef FLOWC_IR_H
#define FLOWC_IR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FLOWC_VERSION "0.1.0"

#define FL_MAX_RANK 8

/* ---- diagnostics ------------------------------------------------------- */

/* A place in a source file. file is an id from fl_source_add (0 = nowhere). */
typedef struct {
  int file;
  int line; /* 1-based */
  int col;  /* 1-based, in bytes */
  int len;  /* length of the offending token, for the caret underline (>= 1) */
} fl_loc;

/* Registers a source text so errors can quote its lines; returns its file id. */
int fl_source_add(const char *path, const char *text, size_t len);
const char *fl_source_path(int file);

/* Prints "path:line:col: error: MESSAGE", the source line and a caret under the
 * token, to the diagnostic stream (stderr unless redirected). Counts errors. */
void fl_error(fl_loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, with "note:" and without counting. */
void fl_note(fl_loc loc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fl_error_count(void);
/* Tests capture messages by pointing the stream at a memstream; NULL = stderr. */
void fl_diag_set_stream(FILE *stream);
/* Forgets registered sources and the error count (tests, repeated compiles). */
void fl_diag_reset(void);

/* ---- types and shapes -------------------------------------------------- */

typedef enum { FL_F32, FL_I32, FL_I64, FL_BOOL, FL_DTYPE_COUNT } fl_dtype;

const char *fl_dtype_name(fl_dtype t); /* "f32", "i32", "i64", "bool" */
/* Parses a dtype name ("f32", also "float32", "float", "int32", "int64", "bool"). */
bool fl_dtype_parse(const char *name, fl_dtype *out);
size_t fl_dtype_size(fl_dtype t);

/* One dimension: coef when sym < 0, else coef * (value of symbol sym). */
typedef struct {
  int64_t coef;
  int sym;
} fl_dim;

typedef struct {
  int rank;
  fl_dim dims[FL_MAX_RANK];
} fl_shape;

fl_dim fl_dim_const(int64_t v);
fl_dim fl_dim_sym(int sym);
bool fl_dim_eq(fl_dim a, fl_dim b);
bool fl_dim_is_const(fl_dim d);
bool fl_shape_eq(const fl_shape *a, const fl_shape *b);
bool fl_shape_is_const(const fl_shape *s);
/* Number of elements of a shape whose dims are all constant; -1 otherwise. */
int64_t fl_shape_const_size(const fl_shape *s);

/* ---- operations -------------------------------------------------------- */

/* X(ENUM, "name") - name is what dumps and messages print. */
#define FL_OPS(X)                                                                  \
  /* sources */                                                                    \
  X(PLACEHOLDER, "placeholder") /* fed at run time */                              \
  X(VARIABLE, "variable")       /* state; attr.init = initialiser node */          \
  X(CONST, "const")             /* attr.data: literal values, row-major */         \
  X(FILL, "fill")               /* every element attr.value */                     \
  X(RANDOM_UNIFORM, "random_uniform")     /* in [attr.a, attr.b) */                \
  X(TRUNCATED_NORMAL, "truncated_normal") /* mean attr.a, stddev attr.b */         \
  X(RANDOM_NORMAL, "random_normal")       /* mean attr.a, stddev attr.b */         \
  /* elementwise, numpy broadcasting */                                            \
  X(ADD, "add")                                                                    \
  X(SUB, "sub")                                                                    \
  X(MUL, "mul")                                                                    \
  X(DIV, "div")                                                                    \
  X(NEG, "neg")                                                                    \
  X(SQUARE, "square")                                                              \
  X(SQRT, "sqrt")                                                                  \
  X(LOG, "log")                                                                    \
  X(EXP, "exp")                                                                    \
  X(RELU, "relu")                                                                  \
  X(SIGMOID, "sigmoid")                                                            \
  X(TANH, "tanh")                                                                  \
  X(RELU_GRAD, "relu_grad") /* (dy, y): dy where y > 0, else 0 */                  \
  X(EQUAL, "equal")         /* -> bool */                                          \
  X(CAST, "cast")           /* to the node's dtype */                              \
  /* linear algebra and convolution */                                             \
  X(MATMUL, "matmul") /* 2-D; attr.transpose_a / transpose_b */                    \
  X(CONV2D, "conv2d") /* (x NHWC, w HWIO); attr.strides, attr.padding */           \
  X(CONV2D_GRAD_INPUT, "conv2d_grad_input")   /* (dy, w) -> shape of x */          \
  X(CONV2D_GRAD_FILTER, "conv2d_grad_filter") /* (x, dy) -> shape of w */          \
  X(MAX_POOL, "max_pool") /* attr.ksize, attr.strides, attr.padding */             \
  X(MAX_POOL_GRAD, "max_pool_grad") /* (x, dy) -> shape of x, to the argmax */     \
  /* shape */                                                                      \
  X(RESHAPE, "reshape") /* the node's shape is the target */                       \
  X(BROADCAST, "broadcast") /* (x) to the node's shape; attr.mean: divide by the   \
                               number of copies (gradient of reduce_mean) */       \
  X(SUM_TO, "sum_to") /* (x) summed down to the node's (broadcastable) shape */    \
  /* reductions */                                                                 \
  X(REDUCE_SUM, "reduce_sum")   /* attr.axes (none = all), attr.keepdims */        \
  X(REDUCE_MEAN, "reduce_mean")                                                    \
  X(ARGMAX, "argmax")           /* attr.axes[0]; -> i64 */                         \
  X(SOFTMAX, "softmax")         /* over the last axis */                           \
  X(SOFTMAX_XENT, "softmax_cross_entropy_with_logits") /* (labels, logits) -> [N] */ \
  X(SOFTMAX_XENT_GRAD, "softmax_xent_grad") /* (labels, logits, dy) -> logits */   \
  /* randomness */                                                                 \
  X(DROPOUT_MASK, "dropout_mask") /* (x, keep_prob): x's shape; 0 or 1/keep_prob */  \
  /* state and training */                                                         \
  X(ASSIGN, "assign")             /* (variable, value) -> the new value */         \
  X(MINIMIZE, "minimize")         /* (loss); removed by fl_autodiff */             \
  X(APPLY_SGD, "apply_sgd")       /* (var, grad); attr.lr */                       \
  X(APPLY_MOMENTUM, "apply_momentum") /* (var, accum, grad); lr, momentum */       \
  X(APPLY_ADAM, "apply_adam") /* (var, m, v, grad, beta1_power, beta2_power) */    \
  X(GROUP, "group")           /* runs its inputs; no value (a train op) */

typedef enum {
#define FL_OP_ENUM(e, s) FL_OP_##e,
  FL_OPS(FL_OP_ENUM)
#undef FL_OP_ENUM
      FL_OP_COUNT
} fl_op;

const char *fl_op_name(fl_op op);
/* Ops whose run changes state: their runs are ordered after every pure node. */
bool fl_op_has_side_effect(fl_op op);
bool fl_op_is_elementwise(fl_op op);

typedef enum { FL_PAD_SAME, FL_PAD_VALID } fl_padding;
typedef enum { FL_OPT_SGD, FL_OPT_MOMENTUM, FL_OPT_ADAM } fl_optimizer;

typedef struct {
  double value;        /* FILL */
  double a, b;         /* RANDOM_UNIFORM [a, b); *_NORMAL mean a, stddev b */
  double *data;        /* CONST: fl_shape_const_size(&target) values, row-major */
  int axes[FL_MAX_RANK]; /* REDUCE_*: naxes == 0 means all axes; ARGMAX: axes[0] */
  int naxes;
  bool keepdims;
  bool mean;           /* BROADCAST as the gradient of reduce_mean */
  bool transpose_a, transpose_b; /* MATMUL */
  int strides[2];      /* CONV2D*, MAX_POOL*: (height, width) */
  int ksize[2];        /* MAX_POOL*: (height, width) */
  fl_padding padding;
  int init;            /* VARIABLE: node id of its initialiser (-1: none) */
  bool trainable;      /* VARIABLE: seen by minimize (default true) */
  fl_shape target;     /* CONST, FILL, RANDOM_*: the shape to make. RESHAPE: the
                          shape as written (one dim may be coef -1, "infer").
                          SUM_TO, BROADCAST, CONV2D_GRAD_*: the result's shape. */
  fl_optimizer optimizer; /* MINIMIZE, APPLY_* */
  double lr, momentum, beta1, beta2, epsilon;
  int stream;          /* DROPOUT_MASK and random initialisers: RNG stream id */
  int loss;            /* GROUP made by fl_autodiff: the loss it minimises (-1: none) */
} fl_attrs;

typedef struct {
  int id;
  fl_op op;
  fl_dtype dtype;
  fl_shape shape;
  bool shaped;    /* set by fl_infer_shapes */
  int *inputs;    /* node ids, each < id */
  int ninputs;
  fl_attrs attr;
  char *name;     /* the user's name for it (assignment target), or NULL */
  fl_loc loc;     /* where the user wrote it (errors point here) */
} fl_node;

/* ---- the train section --------------------------------------------------
 * What the generated training executable does, as the description's
 * `train { ... }` block says it (see docs/LANGUAGE.md). Steps are numbered
 * from 0 as in the tutorials' `for i in range(steps)`; the actions of a step
 * (FL_WHEN_STEP and FL_WHEN_EVERY) run in the order written, all on the same
 * training batch. */

typedef enum {
  FL_WHEN_START, /* once, before the first step */
  FL_WHEN_STEP,  /* every step (the training run) */
  FL_WHEN_EVERY, /* when step % every == 0 (step counts from 1 after the run) */
  FL_WHEN_END,   /* once, after the last step */
  FL_WHEN_TEST,  /* once at the end, averaged over the test set in chunks */
} fl_when;

typedef enum { FL_ACT_RUN, FL_ACT_PRINT } fl_action_kind;

/* A value fed for one action: node gets a constant scalar (keep_prob = 1.0). */
typedef struct {
  int node;
  double value;
  fl_loc loc;
} fl_feed;

/* A piece of a print format: literal text, or a slot naming a tensor or "step". */
typedef struct {
  char *text; /* literal text when node < 0 and !is_step */
  int node;   /* tensor printed in this slot, or -1 */
  bool is_step;
} fl_print_piece;

typedef struct {
  fl_action_kind kind;
  fl_when when;
  int64_t every;
  int *targets; /* RUN: nodes to run; PRINT: tensors printed, in slot order */
  int ntargets;
  fl_print_piece *pieces; /* PRINT only */
  int npieces;
  fl_feed *feeds;
  int nfeeds;
  fl_loc loc;
} fl_action;

typedef enum { FL_DATA_NONE, FL_DATA_MNIST } fl_data_kind;

typedef struct {
  bool present;
  fl_data_kind data;
  char *data_dir;       /* default data directory (flags override) */
  int images_node;      /* placeholder fed with images [N, 784], or -1 */
  int labels_node;      /* placeholder fed with one-hot labels [N, 10], or -1 */
  int64_t validation;   /* validation split size (default 5000) */
  int64_t batch;        /* default 100 */
  int64_t steps;        /* default 1000 */
  uint64_t seed;        /* default 1 */
  fl_action *actions;
  int nactions;
  fl_loc loc;
} fl_train;

/* ---- the graph ---------------------------------------------------------- */

typedef struct fl_graph {
  fl_node *nodes;
  int nnodes, cap;
  char **syms; /* symbolic dimension names ("N") */
  int nsyms;
  fl_train train;
  int nstreams; /* RNG streams handed out so far */
  int nforward; /* nodes before fl_autodiff ran: the rest are gradients and updates */
} fl_graph;

fl_graph *fl_graph_new(void);
void fl_graph_free(fl_graph *g);

/* Appends a node; inputs must already exist. attr may be NULL (defaults:
 * init -1, trainable true). Returns the new node's id. The inputs array is
 * copied. */
int fl_graph_add(fl_graph *g, fl_op op, fl_dtype dtype, const int *inputs, int ninputs,
                 const fl_attrs *attr, fl_loc loc);
/* Interns a symbolic dimension name; "None" is the same symbol as "N". */
int fl_graph_symbol(fl_graph *g, const char *name);
/* Sets (replaces) a node's user name. */
void fl_node_set_name(fl_graph *g, int node, const char *name);
/* The node a user name refers to (the last node given that name), or -1. */
int fl_graph_find(const fl_graph *g, const char *name);
fl_attrs fl_attrs_default(void);
/* A fresh RNG stream id for a random node. */
int fl_graph_new_stream(fl_graph *g);

/* "[N, 28, 28, 1]"; writes at most cap bytes, returns buf. */
char *fl_shape_str(const fl_graph *g, const fl_shape *s, char *buf, size_t cap);
char *fl_dim_str(const fl_graph *g, fl_dim d, char *buf, size_t cap);

/* ---- passes ------------------------------------------------------------- */

/* Infers dtype and shape of every node not yet shaped. On a contradiction,
 * reports it at the node's location and returns -1. */
int fl_infer_shapes(fl_graph *g);

/* Replaces each MINIMIZE node by the gradient subgraph and a GROUP of optimizer
 * update nodes (creating slot variables for momentum and Adam), then infers the
 * new nodes' shapes. Returns -1 after reporting an error (a loss that depends on
 * no trainable variable, a non-float loss). */
int fl_autodiff(fl_graph *g);

/* Gradients of y (summed if not scalar) with respect to xs: grads[i] is the
 * node id of d(sum y)/d xs[i], or -1 where y does not depend on xs[i].
 * Used by fl_autodiff and by the gradient-check tests. */
int fl_gradients(fl_graph *g, int y, const int *xs, int nxs, int *grads);

/* Every check after parsing: shapes, then autodiff, then the train section
 * (each action's placeholders fed). What `flowc check` runs. */
int fl_finish(fl_graph *g);

/* Marks in needed[] every node that a run of `targets` evaluates: their inputs,
 * transitively, stopping at fed nodes (fed[i] true; may be NULL), which are
 * marked but whose inputs are not followed. A variable's initialiser is not
 * part of a run. */
void fl_mark_needed(const fl_graph *g, const int *targets, int ntargets, const bool *fed,
                    bool *needed);

/* ---- simplification (ir/simplify.c) -------------------------------------
 * Rewrites uses only: replaced nodes stay in place, unused. Each returns the
 * number of changes. */

/* Folds elementwise ops on constant scalars into fills; drops x*1 and x+0. */
int fl_fold_constants(fl_graph *g);
/* Merges nodes with the same op, inputs and attributes. */
int fl_eliminate_common(fl_graph *g);
/* Both, until nothing changes. */
int fl_simplify(fl_graph *g);

/* ---- fusion and scheduling (ir/schedule.c) -------------------------------
 * One run of an entry, partitioned into groups of nodes that one kernel
 * computes, in the order they run, with a memory plan by liveness. */

typedef enum {
  FL_GROUP_SINGLE,       /* one node, its own kernel */
  FL_GROUP_ELEMENTWISE,  /* a tree of elementwise ops: one loop, one stored value (root) */
  FL_GROUP_EPILOGUE,     /* matmul or conv2d, then bias add and maybe relu, in place */
  FL_GROUP_SOFTMAX_XENT, /* softmax cross-entropy and its gradient from one softmax */
  FL_GROUP_UPDATES,      /* every optimizer update of the run */
  FL_GROUP_POOL_GRAD_RELU, /* relu_grad(max_pool_grad(y, dy), y): a max_pool's gradient
                            * masked by the relu that feeds the pool, in one pass (root last) */
  FL_GROUP_GEMM_SGD,     /* a matmul whose only reader is apply_sgd (its gradient): the GEMM
                          * subtracts lr times the product from the variable (root last) */
} fl_group_kind;

/* "single", "elementwise", ...: how dumps and generated comments name a kind. */
const char *fl_group_kind_name(fl_group_kind kind);

typedef struct {
  fl_group_kind kind;
  int *nodes; /* members in evaluation order; ELEMENTWISE and EPILOGUE: root last */
  int nnodes;
  int root;   /* the member whose value leaves the group; -1: each member's does */
} fl_group;

typedef struct {
  fl_group *groups; /* in run order: pure groups, then side effects */
  int ngroups;
  int *group_of;       /* per node: its group, or -1 (not computed by a kernel) */
  bool *materialized;  /* per node: has a buffer of its own in the arena */
  int *first, *last;   /* per materialized node: groups that write and last read it */
  int npure;           /* groups [0, npure) are pure; fetches are copied after them */
} fl_schedule;

/* Where a group with side effects stands among the run's other side effects
 * (assignments included): its first member with a side effect (a gemm_sgd
 * group's update, not its matmul). -1 for a pure group. */
int fl_group_side_effect_node(const fl_graph *g, const fl_group *grp);

/* Groups the nodes a run evaluates (needed, not fed) into kernels; fuse=false
 * gives one group per node (the reference the fused code is tested against).
 * Fetched nodes stay materialized. */
fl_schedule *fl_schedule_run(const fl_graph *g, const bool *needed, const bool *fed,
                             const int *fetches, int nfetches, bool fuse);
void fl_schedule_free(fl_schedule *s);
/* The node whose buffer a node's value lives in (reshapes and assigns share
 * their input's). */
int fl_storage_of(const fl_graph *g, int node);
/* "group 3 (elementwise): %12 add, %13 relu -> %13" lines. */
void fl_dump_schedule(const fl_graph *g, const fl_schedule *s, FILE *out);

/* ---- costs (ir/cost.c) --------------------------------------------------- */

/* Evaluates a dimension with every symbol set to `batch`. */
int64_t fl_dim_value(fl_dim d, int64_t batch);
int64_t fl_shape_size_at(const fl_shape *s, int64_t batch);
/* Floating-point operations of one run of a node at the given batch size, a
 * multiply-add counted as two: what GFLOP/s figures divide by. */
int64_t fl_node_flops(const fl_graph *g, int node, int64_t batch);
/* Whether a node is a GEMM-shaped op (matmul, conv2d and its gradients). */
bool fl_node_is_gemm(const fl_graph *g, int node);

/* ---- views -------------------------------------------------------------- */

/* The stable textual dump: one line per node,
 *   %7 = matmul(%3, %5) : f32[N, 10]  # y  (model.flow:6:6)  */
void fl_dump(const fl_graph *g, FILE *out);
/* Graphviz dot. */
void fl_dump_dot(const fl_graph *g, FILE *out);

/* ---- the reference interpreter (ir/eval.c) ------------------------------
 * Runs a graph in double precision, straightforwardly. It is the executable
 * meaning of every op: the gradient checks use it, and the generated code is
 * tested against it. */

typedef struct {
  fl_dtype dtype;
  int rank;
  int64_t dims[FL_MAX_RANK];
  double *data; /* owned by whoever filled it */
} fl_value;

typedef struct fl_eval fl_eval;

/* Creates an interpreter and initialises every variable from its initialiser
 * with the given seed. */
fl_eval *fl_eval_new(const fl_graph *g, uint64_t seed);
void fl_eval_free(fl_eval *ev);
/* The stored value of a VARIABLE node (writable: tests perturb it). */
fl_value *fl_eval_variable(fl_eval *ev, int node);
/* Runs once: feeds (node -> value) replace those nodes' values; computes the
 * fetches and runs the targets (side effects: assign, optimizer updates).
 * out[i] receives a copy of fetch i (free with fl_value_free). Returns 0, or -1
 * with a message in err (an unfed placeholder is named there). */
int fl_eval_run(fl_eval *ev, const int *feed_nodes, const fl_value *feed_values, int nfeeds,
                const int *fetches, int nfetches, fl_value *out, char *err, size_t errlen);
void fl_value_free(fl_value *v);
int64_t fl_value_size(const fl_value *v);

#endif
