/* codegen.h - back ends: a finished IR graph becomes source files. */
#ifndef FLOWC_CODEGEN_H
#define FLOWC_CODEGEN_H

#include "ir.h"

typedef struct {
  const char *name;        /* C prefix of the generated API ("mnist_softmax") */
  const char *source_path; /* the description, named in comments */
  bool with_main;          /* also write main.c: the training executable */
  bool no_fuse;            /* one kernel per node: the reference for fused code */
  FILE *report;            /* when set: arena, variable and peak bytes are written here */
} fl_codegen_options;

/* Writes NAME.h, NAME.c and (with_main) main.c into dir, which must exist.
 * Returns 0, or -1 after reporting an error through fl_error. */
int fl_emit_c(const fl_graph *g, const char *dir, const fl_codegen_options *opt);

/* The CUDA backend (emit_cuda.c): writes NAME.h (the API of fl_emit_c's, the
 * same entries and parameters), NAME_cuda.c (host code over the runtime's
 * flowc_rt_cuda.h: driver API, NVRTC, cuBLAS, CUDA graphs), NAME_kernels.cu
 * (a CUDA kernel per fusion group, each with a comment naming its nodes) and
 * (with_main) main.c into dir. Returns 0, or -1 after reporting an error. */
int fl_emit_cuda(const fl_graph *g, const char *dir, const fl_codegen_options *opt);

/* Prints each entry the train block asks for, with its fusion groups in run
 * order (flowc dump --after fusion). */
int fl_dump_fusion(const fl_graph *g, FILE *out);

/* A C identifier made from `text` (letters, digits, '_'; '/' becomes '_'). */
void fl_c_identifier(const char *text, char *out, size_t cap);

/* ---- inference code (emit_infer.c) ----------------------------------------
 * One tensor of a trained graph as a self-contained C99 function: the
 * weights baked in as static const arrays, every intermediate tensor in one
 * static arena planned at compile time, the batch size fixed. The code needs
 * no malloc, no stdio and no BLAS (see docs/INFERENCE.md). */

/* A scalar fed with a value fixed at build time (keep_prob = 1.0). */
typedef struct {
  int node;
  double value;
} fl_infer_fixed;

typedef struct {
  const char *name;         /* C prefix of the API ("mnist_tiny") */
  const char *source_path;  /* the description, named in comments */
  const char *weights_path; /* the checkpoint, named in comments */
  int entry;                /* the node computed */
  int64_t batch;            /* the value of every symbolic dimension (N) */
  const fl_infer_fixed *fixed;
  int nfixed;
} fl_infer_options;

/* What the inference function needs and how its memory is laid out. */
typedef struct {
  int *inputs;          /* placeholders it takes, in node order */
  int ninputs;
  int *variables;       /* variables whose values it bakes in, in node order */
  int nvariables;
  size_t arena_bytes;   /* the static arena: every pool together */
  size_t weight_bytes;  /* variables and constants */
  /* per node, for the emitter: */
  int *kind;            /* how the node is computed (emit_infer.c's infer_kind) */
  int *alias;           /* the node whose buffer it shares, or -1 */
  int64_t *offset;      /* an arena node's offset in its pool, in elements */
  int *bias;            /* a conv2d or matmul's fused bias (the add that read it), or -1 */
  bool *relu;           /* ... and whether the relu after that add is fused too */
  int64_t pool_elems[FL_DTYPE_COUNT]; /* size of each dtype's pool, in elements */
} fl_infer_plan;

/* Finds what computing opt->entry needs (its inputs, the variables to load)
 * and plans the arena. Returns 0, or -1 after reporting why through fl_error
 * (a scalar placeholder not fixed, dropout with keep_prob below 1, an op that
 * has no inference kernel, a train op). */
int fl_infer_plan_make(const fl_graph *g, const fl_infer_options *opt, fl_infer_plan *plan);
void fl_infer_plan_free(fl_infer_plan *plan);

/* The name a variable has in checkpoints: its user name, or v<id>. */
void fl_checkpoint_name(const fl_graph *g, int id, char *buf, size_t cap);

/* Writes NAME.h and NAME.c into dir. values[i] holds plan->variables[i]'s
 * elements, row-major, in the variable's dtype. Returns 0, or -1 after
 * reporting an error. */
int fl_emit_infer(const fl_graph *g, const fl_infer_options *opt, const fl_infer_plan *plan,
                  const void *const *values, const char *dir);

#endif
