/* emit_internal.h - what the C backend's files share: text buffers, naming, plans. */
#ifndef FLOWC_EMIT_INTERNAL_H
#define FLOWC_EMIT_INTERNAL_H

#include "codegen.h"

typedef struct {
  char *text;
  size_t len, cap;
} strbuf;

void sb_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_free(strbuf *sb);
int sb_write_file(const strbuf *sb, const char *dir, const char *name);

const char *emit_ctype(fl_dtype t);
const char *emit_rt_dtype(fl_dtype t);
void emit_float(char *buf, size_t cap, double v);
void emit_dim(const fl_graph *g, fl_dim d, char *buf, size_t cap);
void emit_dims_product(const fl_graph *g, const fl_shape *s, int from, int to, char *buf,
                       size_t cap);
void emit_size(const fl_graph *g, const fl_shape *s, char *buf, size_t cap);
void emit_node_syms(const fl_graph *g, const fl_node *n, bool *uses);
void emit_node_label(const fl_graph *g, int id, char *buf, size_t cap);
void emit_node_comment(const fl_graph *g, const fl_node *n, strbuf *sb);
/* A symbol's name in generated code: its own, unless that is a C keyword or
 * a name the generated code uses itself (then with a trailing '_'). */
void fl_sym_c_name(const fl_graph *g, int sym, char *buf, size_t cap);

/* An entry point: one run of the graph, as one action of the train block asks. */
typedef struct {
  char name[96];   /* C name without the model prefix ("train_step") */
  int *fetches;    /* tensors returned, in order */
  int nfetches;
  int *runs;       /* side-effect targets (train ops, assigns) */
  int nruns;
  int *feeds;      /* fed nodes, in parameter order: data feeds first */
  int nfeeds;
  bool *fed;       /* per node */
  bool *needed;    /* per node: evaluated by this entry */
  bool *syms;      /* per symbol: a parameter of this entry */
  bool uses_dropout;
  fl_when when;    /* of the first action that uses it */
  fl_schedule *sched; /* its kernels (fusion groups), their order and lifetimes */
} emit_entry;

typedef struct {
  const fl_graph *g;
  const fl_codegen_options *opt;
  char prefix[96];        /* API prefix: "mnist_softmax" */
  emit_entry *entries;
  int nentries;
  int *action_entry;      /* per train action: its entry */
  char (*var_names)[96];  /* per node: C field name of a VARIABLE */
  char **fused_sigs;      /* fused kernels emitted so far: membership signature */
  char **fused_names;     /* ... and function name */
  int nfused;
  bool device_data;       /* CUDA: main uploads the data sets and stages batches by index */
} emit_model;

/* The C backend's pieces that the CUDA backend (emit_cuda.c) emits as they are:
 * the entries with their schedules, the API's parameters and comments, constant
 * arrays, NAME_init, the FLOP counts, fused kernels' names. */
int emit_model_init(emit_model *em, const fl_graph *g, const fl_codegen_options *opt);
void emit_model_free(emit_model *em);
void emit_entry_params(const emit_model *em, const emit_entry *e, strbuf *sb);
/* Whether assignment node `assign` copies a variable that a side effect of
 * the run writes: it then copies a snapshot taken before the side effects
 * (a run reads the values from before its own side effects). */
bool emit_assign_needs_snapshot(const fl_graph *g, const emit_entry *e, int assign);
void emit_entry_doc(const emit_model *em, const emit_entry *e, strbuf *sb);
void emit_const_array(const fl_graph *g, int id, strbuf *sb);
int emit_init_function(const emit_model *em, strbuf *sb);
void emit_flops_function(const emit_model *em, const emit_entry *e, strbuf *sb);
const char *emit_fused_name(emit_model *em, const fl_group *grp);

/* NAME_save, NAME_load and the table behind them; before_save and after_load
 * are statements a backend adds to them (may be ""). */
void emit_checkpoint_functions(const emit_model *em, const char *before_save, const char *after_load, strbuf *sb);

/* Writes main.c: the training driver over the model's entries. */
int emit_main(const emit_model *em, strbuf *sb);

#endif
