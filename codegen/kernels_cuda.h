/* kernels_cuda.h - the CUDA backend's kernels: CUDA C per fusion group, and the host code launching them. */
#ifndef FLOWC_KERNELS_CUDA_H
#define FLOWC_KERNELS_CUDA_H

#include "emit_internal.h"

/* A group's kernel functions are its name ("k12_matmul", "f9_epilogue_h_conv1")
 * plus these suffixes where it needs more than one launch. */
enum { CUDA_NAME_MAX = 200, CUDA_KERNELS_PER_GROUP = 4 };

/* snprintf for generated text: expressions and names are far below the
 * buffers' sizes, and one cut short would not compile, so truncation needs no
 * handling at each call. */
void cuda_text(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* What every kernel source starts with: fixed-width types (NVRTC has no C
 * headers), INFINITY, the grid-stride loop, the Philox header. */
void cuda_emit_preamble(strbuf *cu);

/* The __global__ functions that compute group `grp` (named after fname), each
 * with a comment naming the graph nodes it implements. Appends the names of
 * the functions to names[*count], which has room for
 * cuda_group_kernel_capacity(grp). Returns 0, or -1 for an op that has no
 * CUDA kernel. */
int cuda_emit_group_kernels(const fl_graph *g, const fl_group *grp, const char *fname, strbuf *cu,
                            char (*names)[CUDA_NAME_MAX], int *count);
int cuda_group_kernel_capacity(const fl_group *grp);

/* Scratch the group needs in the device arena, in bytes, as a C expression
 * over the symbols (int64_t): im2col matrices, partial sums. "0" for none. */
void cuda_group_scratch_bytes(const fl_graph *g, const fl_group *grp, char *buf, size_t cap);

/* Host code that launches the group on the model's stream. buffers[k] names
 * the CUdeviceptr of node k; `scratch` the group's scratch; the launching
 * function has `flcu_device *d`, `unsigned SYMBOL` for every symbol, the
 * macro FN(name) for a kernel's CUfunction, and `rng` (CUdeviceptr of the
 * seed and dropout counter). */
void cuda_emit_group_launch(const fl_graph *g, const fl_group *grp, const char *fname,
                            const char *const *buffers, const char *scratch, strbuf *host);

/* Whether a node is computed once at start-up rather than every run: fills of
 * constant shape, which the C backend writes each run. */
bool cuda_node_is_constant(const fl_graph *g, int node);

#endif
