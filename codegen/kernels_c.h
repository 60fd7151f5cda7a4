/* kernels_c.h - the per-node kernel emitter of the C backend. */
#ifndef FLOWC_KERNELS_C_H
#define FLOWC_KERNELS_C_H

#include "emit_internal.h"

/* Whether a node is computed by a kernel function (not an alias or a source). */
bool kernel_exists(fl_op op);
/* Convolutions need im2col scratch space in the arena. */
bool kernel_needs_scratch(fl_op op);
void kernel_scratch_size(const fl_graph *g, const fl_node *n, char *buf, size_t cap);
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

#endif
