/* kernels_c.h - the per-node kernel emitter of the C backend. */
#ifndef FLOWC_KERNELS_C_H
#define FLOWC_KERNELS_C_H

#include "emit_internal.h"

/* Whether a node is computed by a kernel function (not an alias or a source). */
bool kernel_exists(fl_op op);
/* Convolutions need im2col scratch space in the arena. */
bool kernel_needs_scratch(fl_op op);
/* Sets `target` to the node's im2col scratch in bytes, at run time, with the
 * runtime's own formula (statements for an entry's body). */
void kernel_scratch_statement(const fl_graph *g, const fl_node *n, const char *target, strbuf *sb);
/* The same at a given batch size, for --report. */
size_t kernel_scratch_bytes(const fl_graph *g, const fl_node *n, int64_t batch);
void kernel_function_name(const fl_graph *g, int id, char *buf, size_t cap);
/* The kernel's definition, with a comment naming the node it implements. */
void emit_kernel(const fl_graph *g, int id, strbuf *sb);
/* A call of the kernel; buffers[k] is the C expression of node k's buffer. */
void emit_kernel_call(const fl_graph *g, int id, const char *const *buffers, const char *scratch,
                      strbuf *sb);

/* Fused groups (fl_schedule): one function each; SINGLE groups use emit_kernel. */
void emit_group_kernel(const fl_graph *g, const fl_group *grp, const char *fname, strbuf *sb);
void emit_group_call(const fl_graph *g, const fl_group *grp, const char *fname, const char *const *buffers,
                     const char *scratch, strbuf *sb);
/* The group's inputs from outside it, each once (returns the count). */
int group_inputs(const fl_graph *g, const fl_group *grp, int *ins);

/* An elementwise op's expression over operands a and b (shared with CUDA). */
void kernel_elementwise_expr(const fl_graph *g, const fl_node *n, const char *a, const char *b, char *buf,
                             size_t cap);

/* The symbols any member of a group uses (uses[sym], at most 64 symbols). */
void kernel_group_syms(const fl_graph *g, const fl_group *grp, bool *uses);
/* The symbols marked in uses, as parameters or arguments: each written as
 * TYPE NAME ("int64_t N", "(void *)&N"), comma-separated, after `more` earlier
 * ones. Returns how many it wrote. */
int kernel_sym_list(const fl_graph *g, const bool *uses, bool more, const char *type, strbuf *sb);

#endif
