/* kernels_cuda.c - CUDA C for each fusion group (or single node), and the host code that launches it.
 *
 * The kernels mirror the C backend's (kernels_c.c) op for op, with the same
 * expressions for elementwise ops, so that a GPU run and a CPU run differ only
 * by the order of float additions. Conventions:
 *  - one thread per output element in grid-stride loops (FLOWC_FOR), 256
 *    threads a block, 32-bit unsigned indices (the entry refuses tensors of
 *    2^31 elements or more before it launches anything);
 *  - shapes are constants in the source except the symbols (the batch N),
 *    which every kernel that needs them takes as `unsigned` parameters;
 *  - sums that cross threads (reductions, bias gradients) use a fixed tree in
 *    shared memory and a second pass over per-chunk partial sums, never float
 *    atomics, so that a run is reproducible bit for bit;
 *  - GEMMs are cuBLAS calls (flcu_sgemm); convolutions are im2col kernels
 *    around them; gradients that scatter on the CPU (col2im, max-pool's
 *    gradient) gather here, one thread per input element, adding in the CPU's
 *    order. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "emit_internal.h"
#include "flowc_rt.h"
#include "kernels_c.h"
#include "kernels_cuda.h"

enum { THREADS = 256 };

/* ---- small helpers ---------------------------------------------------------- */

void cuda_text(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
}

static bool in_group(const fl_group *grp, int node) {
  for (int i = 0; i < grp->nnodes; i++)
    if (grp->nodes[i] == node) return true;
  return false;
}

static int input_index(const int *ins, int n, int node) {
  for (int i = 0; i < n; i++)
    if (ins[i] == node) return i;
  return -1;
}

/* Members whose values the group stores: the root, or each pure member. */
static int group_outputs(const fl_graph *g, const fl_group *grp, int *outs) {
  if (grp->root >= 0 && fl_op_has_side_effect(g->nodes[grp->root].op)) return 0; /* it updates in place */
  if (grp->root >= 0) {
    outs[0] = grp->root;
    return 1;
  }
  int count = 0;
  for (int i = 0; i < grp->nnodes; i++)
    if (!fl_op_has_side_effect(g->nodes[grp->nodes[i]].op)) outs[count++] = grp->nodes[i];
  return count;
}

/* The group's inputs from outside it (group_inputs), in an array of the right size. */
static int *inputs_of(const fl_graph *g, const fl_group *grp, int *count) {
  size_t cap = 1;
  for (int i = 0; i < grp->nnodes; i++) cap += (size_t)g->nodes[grp->nodes[i]].ninputs;
  int *ins = malloc(cap * sizeof *ins);
  if (!ins) abort();
  *count = group_inputs(g, grp, ins);
  return ins;
}

/* The product of dims [from, to) of s, parenthesised when it is a product. */
static void product(const fl_graph *g, const fl_shape *s, int from, int to, char *buf, size_t cap) {
  char raw[256];
  emit_dims_product(g, s, from, to, raw, sizeof raw);
  if (strchr(raw, '*')) cuda_text(buf, cap, "(%s)", raw);
  else snprintf(buf, cap, "%s", raw);
}

static void size_of(const fl_graph *g, const fl_shape *s, char *buf, size_t cap) {
  product(g, s, 0, s->rank, buf, cap);
}

/* The type a kernel uses for a dtype (int64_t and friends come from the preamble). */
static const char *ctype(fl_dtype t) { return emit_ctype(t); }

static bool is_one(const char *expr) { return strcmp(expr, "1") == 0; }

/* The flat index into `in` (broadcast against `out`, trailing dims aligned)
 * of the output element at flat index i. */
static void broadcast_index(const fl_graph *g, const fl_shape *in, const fl_shape *out, char *buf,
                            size_t cap) {
  if (fl_shape_eq(in, out)) {
    snprintf(buf, cap, "i");
    return;
  }
  if (fl_shape_const_size(in) == 1) {
    snprintf(buf, cap, "0");
    return;
  }
  size_t used = 0;
  buf[0] = '\0';
  const int off = out->rank - in->rank;
  for (int j = 0; j < in->rank; j++) {
    if (in->dims[j].sym < 0 && in->dims[j].coef == 1) continue;
    const int oj = j + off;
    char outer[256], dim[128], stride[256], coord[700];
    product(g, out, oj + 1, out->rank, outer, sizeof outer);
    product(g, out, oj, oj + 1, dim, sizeof dim);
    product(g, in, j + 1, in->rank, stride, sizeof stride);
    if (oj == 0) snprintf(coord, sizeof coord, is_one(outer) ? "i" : "i / %s", outer);
    else if (is_one(outer)) snprintf(coord, sizeof coord, "i %% %s", dim);
    else snprintf(coord, sizeof coord, "i / %s %% %s", outer, dim);
    used += (size_t)snprintf(buf + used, cap - used, "%s(%s)%s%s", used ? " + " : "", coord,
                             is_one(stride) ? "" : " * ", is_one(stride) ? "" : stride);
    if (used >= cap) break;
  }
  if (!used) snprintf(buf, cap, "0");
}

/* ---- kernel text ------------------------------------------------------------ */

void cuda_emit_preamble(strbuf *cu) {
  sb_printf(cu,
            "#if defined(__CUDACC_RTC__)\n"
            "/* NVRTC has no C library headers: the fixed-width types by hand. */\n"
            "typedef signed char int8_t;\ntypedef int int32_t;\ntypedef long long int64_t;\n"
            "typedef unsigned int uint32_t;\ntypedef unsigned long long uint64_t;\n"
            "#else\n#include <stdint.h>\n#endif\n"
            "#ifndef INFINITY\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n"
            "#ifndef NAN\n#define NAN __int_as_float(0x7fffffff)\n#endif\n\n"
            "#include \"flowc_rt_philox.h\"\n\n"
            "/* One thread per element, the grid striding over the rest. */\n"
            "#define FLOWC_FOR(i, n) \\\n"
            "  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += gridDim.x * blockDim.x)\n\n");
}

/* The opening comment of a kernel: the nodes it implements, as the C backend
 * writes them (one line each), and what this function does of them. */
static void kernel_comment(const fl_graph *g, const fl_group *grp, const char *what, strbuf *cu) {
  sb_printf(cu, "/* %s", what);
  for (int i = 0; i < grp->nnodes; i++) {
    strbuf line = {0};
    emit_node_comment(g, &g->nodes[grp->nodes[i]], &line);
    /* the node's comment without its own markers */
    sb_printf(cu, "\n * %.*s", (int)(line.len > 7 ? line.len - 7 : 0), line.text ? line.text + 3 : "");
    sb_free(&line);
  }
  sb_printf(cu, " */\n");
}

/* A kernel's opening line: inputs (const unless written), outputs, extra
 * parameters (already formatted, may be ""), then the symbols. */
static void kernel_open(const fl_graph *g, const fl_group *grp, const char *name, const int *ins, int nins,
                        const bool *written, const int *outs, int nouts, const char *extra, strbuf *cu) {
  sb_printf(cu, "extern \"C\" __global__ void %s(", name);
  int n = 0;
  for (int i = 0; i < nins; i++)
    sb_printf(cu, "%s%s%s *__restrict__ in%d", n++ ? ", " : "", written && written[i] ? "" : "const ",
              ctype(g->nodes[ins[i]].dtype), i);
  for (int i = 0; i < nouts; i++)
    sb_printf(cu, "%s%s *__restrict__ out%d", n++ ? ", " : "", ctype(g->nodes[outs[i]].dtype), i);
  if (extra && *extra) sb_printf(cu, "%s%s", n++ ? ", " : "", extra);
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  n += kernel_sym_list(g, uses, n > 0, "unsigned ", cu);
  sb_printf(cu, ") {\n");
}

/* The host side of one launch: the argument list (buffers then extras then
 * symbols, matching kernel_open) and the flcu_launch call. */
static void launch(const fl_graph *g, const fl_group *grp, const char *name, const char *const *args, int nargs,
                   const char *grid_x, const char *grid_y, const char *grid_z, int block_x, int block_y,
                   strbuf *host) {
  sb_printf(host, "  {\n    void *args[] = {");
  int n = 0;
  for (int i = 0; i < nargs; i++) sb_printf(host, "%s(void *)&%s", n++ ? ", " : "", args[i]);
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  n += kernel_sym_list(g, uses, n > 0, "(void *)&", host);
  if (!n) sb_printf(host, "NULL");
  sb_printf(host, "};\n    flcu_launch(d, FN(%s), \"%s\", %s, %s, %s, %d, %d, args);\n  }\n", name, name, grid_x,
            grid_y, grid_z, block_x, block_y);
}

/* Grid of a one-thread-per-element kernel over `count` elements. */
static void grid_for(const char *count, char *buf, size_t cap) {
  cuda_text(buf, cap, "flcu_blocks((int64_t)%s, %d)", count, THREADS);
}

/* ---- elementwise trees ------------------------------------------------------ */

static void tree_expr(const fl_graph *g, const fl_group *grp, int node, const int *ins, int nins,
                      char index[][512], char *buf, size_t cap) {
  if (!in_group(grp, node)) {
    int k = input_index(ins, nins, node);
    snprintf(buf, cap, "in%d[%s]", k, index[k]);
    return;
  }
  const fl_node *n = &g->nodes[node];
  char a[4096] = "", b[4096] = "", pa[4200], pb[4200];
  if (n->ninputs > 0) tree_expr(g, grp, n->inputs[0], ins, nins, index, a, sizeof a);
  if (n->ninputs > 1) tree_expr(g, grp, n->inputs[1], ins, nins, index, b, sizeof b);
  snprintf(pa, sizeof pa, "(%s)", a);
  snprintf(pb, sizeof pb, "(%s)", b);
  kernel_elementwise_expr(g, n, pa, pb, buf, cap);
}

/* A tree of elementwise ops (or one), its root stored: one pass. */
static void elementwise_kernel(const fl_graph *g, const fl_group *grp, const char *name, strbuf *cu) {
  int nins, outs[8];
  int *ins = inputs_of(g, grp, &nins);
  const int nouts = group_outputs(g, grp, outs);
  const fl_node *root = &g->nodes[grp->root];
  char (*index)[512] = calloc((size_t)(nins ? nins : 1), sizeof *index);
  if (!index) abort();
  for (int i = 0; i < nins; i++) broadcast_index(g, &g->nodes[ins[i]].shape, &root->shape, index[i], sizeof index[i]);
  char size[256], expr[16384];
  size_of(g, &root->shape, size, sizeof size);
  tree_expr(g, grp, grp->root, ins, nins, index, expr, sizeof expr);
  free(index);
  kernel_comment(g, grp, "elementwise", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, nouts, "", cu);
  sb_printf(cu, "  FLOWC_FOR(i, %s)\n    out0[i] = %s;\n}\n\n", size, expr);
  free(ins);
}

static void elementwise_launch(const fl_graph *g, const fl_group *grp, const char *name, const char *const *buffers,
                               strbuf *host) {
  int nins, outs[8];
  int *ins = inputs_of(g, grp, &nins);
  const int nouts = group_outputs(g, grp, outs);
  const char **args = malloc((size_t)(nins + nouts) * sizeof *args);
  if (!args) abort();
  int nargs = 0;
  for (int i = 0; i < nins; i++) args[nargs++] = buffers[ins[i]];
  for (int i = 0; i < nouts; i++) args[nargs++] = buffers[outs[i]];
  char size[256], grid[320];
  size_of(g, &g->nodes[grp->root].shape, size, sizeof size);
  grid_for(size, grid, sizeof grid);
  launch(g, grp, name, args, nargs, grid, "1", "1", THREADS, 1, host);
  free(args);
  free(ins);
}

/* ---- single nodes ----------------------------------------------------------- */

/* A node's input k as its kernel parameter name. */
static void param(const fl_node *n, const int *ins, int nins, int k, char *buf, size_t cap) {
  snprintf(buf, cap, "in%d", input_index(ins, nins, n->inputs[k]));
}

static void fill_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int outs[1] = {n->id};
  char size[256], lit[64];
  size_of(g, &n->shape, size, sizeof size);
  if (n->dtype == FL_F32) emit_float(lit, sizeof lit, n->attr.value);
  else snprintf(lit, sizeof lit, "(%s)%lld", ctype(n->dtype), (long long)n->attr.value);
  kernel_comment(g, grp, "fill", cu);
  kernel_open(g, grp, name, NULL, 0, NULL, outs, 1, "", cu);
  sb_printf(cu, "  FLOWC_FOR(i, %s)\n    out0[i] = %s;\n}\n\n", size, lit);
}

static void broadcast_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int ins[4], outs[1] = {n->id};
  int nins = group_inputs(g, grp, ins);
  const fl_shape *x = &g->nodes[n->inputs[0]].shape;
  char size[256], in_size[256], index[512];
  size_of(g, &n->shape, size, sizeof size);
  size_of(g, x, in_size, sizeof in_size);
  broadcast_index(g, x, &n->shape, index, sizeof index);
  kernel_comment(g, grp, "broadcast", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "", cu);
  if (n->attr.mean) /* as the C backend: the float of 1 / copies, then a float product */
    sb_printf(cu, "  const float scale = (float)(1.0 / (double)(%s / %s));\n", size, in_size);
  sb_printf(cu, "  FLOWC_FOR(i, %s)\n    out0[i] = in0[%s]%s;\n}\n\n", size, index, n->attr.mean ? " * scale" : "");
}

/* ---- reductions ---------------------------------------------------------------
 * A reduction whose reduced axes are adjacent (after dropping axes of size 1)
 * is a sum over the middle index of [outer, rows, inner]; bias gradients
 * ([N*H*W, C] -> [C]) and means over the batch are of that form. It runs in
 * two passes: chunks of rows summed by blocks into partial sums, then the
 * partials summed per output (skipped when there is one chunk). Other
 * reductions take one thread per output, looping over everything it sums. */

typedef struct {
  bool adjacent;
  char outer[256], rows[256], inner[256];
  fl_shape in;           /* the input without its axes of size 1 */
  bool reduced[FL_MAX_RANK];
  bool columns;          /* inner may exceed 1: the (32, 8) block layout */
} reduce_form;

static void reduce_form_of(const fl_graph *g, const fl_node *n, reduce_form *f) {
  const fl_shape *in = &g->nodes[n->inputs[0]].shape;
  memset(f, 0, sizeof *f);
  const int offset = in->rank - n->shape.rank;
  for (int j = 0; j < in->rank; j++) {
    if (in->dims[j].sym < 0 && in->dims[j].coef == 1) continue;
    bool reduced;
    if (n->op == FL_OP_SUM_TO) {
      reduced = j < offset;
      if (!reduced) {
        fl_dim t = n->shape.dims[j - offset];
        reduced = t.sym < 0 && t.coef == 1;
      }
    } else {
      reduced = n->attr.naxes == 0;
      for (int k = 0; k < n->attr.naxes; k++) reduced |= n->attr.axes[k] == j;
    }
    f->reduced[f->in.rank] = reduced;
    f->in.dims[f->in.rank++] = in->dims[j];
  }
  int first = -1, last = -1;
  for (int j = 0; j < f->in.rank; j++)
    if (f->reduced[j]) {
      if (first < 0) first = j;
      last = j;
    }
  f->adjacent = true;
  for (int j = first; j >= 0 && j <= last; j++) f->adjacent &= f->reduced[j];
  if (first < 0) first = last = f->in.rank; /* nothing reduced: rows = 1 */
  product(g, &f->in, 0, first, f->outer, sizeof f->outer);
  product(g, &f->in, first, last < f->in.rank ? last + 1 : first, f->rows, sizeof f->rows);
  product(g, &f->in, last < f->in.rank ? last + 1 : first, f->in.rank, f->inner, sizeof f->inner);
  f->columns = !is_one(f->inner);
}

/* The value an output takes from its sum: the mean's scale, the output type. */
static void reduce_finish_expr(const fl_node *n, const char *sum, const char *rows, char *buf, size_t cap) {
  if (n->op == FL_OP_REDUCE_MEAN)
    snprintf(buf, cap, "(%s)((double)%s * (1.0 / (double)%s))", ctype(n->dtype), sum, rows);
  else snprintf(buf, cap, "(%s)%s", ctype(n->dtype), sum);
}

static void reduce_kernels(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu,
                           char (*names)[CUDA_NAME_MAX], int *count) {
  int ins[4], outs[1] = {n->id};
  const int nins = group_inputs(g, grp, ins);
  reduce_form f;
  reduce_form_of(g, n, &f);
  const char *acc = n->dtype == FL_F32 ? "float" : ctype(n->dtype);
  char finish[512];
  snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", name);
  if (!f.adjacent) {
    /* One thread per output: decode its kept coordinates, loop over the rest. */
    kernel_comment(g, grp, "reduction, one thread per output", cu);
    kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "", cu);
    char out_size[256];
    size_of(g, &n->shape, out_size, sizeof out_size);
    fl_shape kept = {0}, red = {0};
    int kept_axis[FL_MAX_RANK], red_axis[FL_MAX_RANK];
    for (int j = 0; j < f.in.rank; j++) {
      if (f.reduced[j]) {
        red_axis[red.rank] = j;
        red.dims[red.rank++] = f.in.dims[j];
      } else {
        kept_axis[kept.rank] = j;
        kept.dims[kept.rank++] = f.in.dims[j];
      }
    }
    char red_size[256];
    size_of(g, &red, red_size, sizeof red_size);
    sb_printf(cu, "  FLOWC_FOR(i, %s) {\n    unsigned base = 0;\n", out_size);
    for (int k = 0; k < kept.rank; k++) {
      char outer[256], dim[128], stride[256];
      product(g, &kept, k + 1, kept.rank, outer, sizeof outer);
      product(g, &kept, k, k + 1, dim, sizeof dim);
      product(g, &f.in, kept_axis[k] + 1, f.in.rank, stride, sizeof stride);
      sb_printf(cu, "    base += (i / %s %% %s) * %s;\n", outer, dim, stride);
    }
    sb_printf(cu, "    %s sum = 0;\n    for (unsigned r = 0; r < %s; r++) {\n      unsigned at = base;\n", acc, red_size);
    for (int k = 0; k < red.rank; k++) {
      char outer[256], dim[128], stride[256];
      product(g, &red, k + 1, red.rank, outer, sizeof outer);
      product(g, &red, k, k + 1, dim, sizeof dim);
      product(g, &f.in, red_axis[k] + 1, f.in.rank, stride, sizeof stride);
      sb_printf(cu, "      at += (r / %s %% %s) * %s;\n", outer, dim, stride);
    }
    reduce_finish_expr(n, "sum", red_size, finish, sizeof finish);
    sb_printf(cu, "      sum += in0[at];\n    }\n    out0[i] = %s;\n  }\n}\n\n", finish);
    return;
  }
  char extra[128];
  snprintf(extra, sizeof extra, "%s *__restrict__ partial, unsigned chunks", acc);
  kernel_comment(g, grp, f.columns ? "reduction over [outer, rows, inner], pass 1: a block of 32 columns x 8 "
                                     "row strides sums one chunk of rows"
                                   : "reduction over [outer, rows], pass 1: a block sums one chunk of rows",
                 cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, extra, cu);
  sb_printf(cu, "  const unsigned outer = %s, rows = %s, inner = %s;\n", f.outer, f.rows, f.inner);
  sb_printf(cu, "  const unsigned per = (rows + chunks - 1u) / chunks, begin = blockIdx.y * per;\n"
                "  const unsigned end = begin + per < rows ? begin + per : rows;\n"
                "  __shared__ %s sums[%d];\n  (void)inner;\n", acc, THREADS);
  reduce_finish_expr(n, f.columns ? "sums[threadIdx.x]" : "sums[0]", "rows", finish, sizeof finish);
  sb_printf(cu, "  for (unsigned o = blockIdx.z; o < outer; o += gridDim.z) {\n    %s sum = 0;\n", acc);
  if (f.columns) {
    sb_printf(cu, "    const unsigned col = blockIdx.x * 32u + threadIdx.x, slot = threadIdx.y * 32u + threadIdx.x;\n"
                  "    if (col < inner)\n"
                  "      for (unsigned r = begin + threadIdx.y; r < end; r += 8u)\n"
                  "        sum += in0[(o * rows + r) * inner + col];\n"
                  "    sums[slot] = sum;\n    __syncthreads();\n"
                  "    for (unsigned half = 4u; half > 0u; half >>= 1) {\n"
                  "      if (threadIdx.y < half) sums[slot] += sums[slot + half * 32u];\n"
                  "      __syncthreads();\n    }\n"
                  "    if (threadIdx.y == 0u && col < inner) {\n"
                  "      if (chunks == 1u) out0[o * inner + col] = %s;\n"
                  "      else partial[(o * chunks + blockIdx.y) * inner + col] = sums[threadIdx.x];\n"
                  "    }\n", finish);
  } else {
    sb_printf(cu, "    for (unsigned r = begin + threadIdx.x; r < end; r += %du)\n"
                  "      sum += in0[o * rows + r];\n"
                  "    sums[threadIdx.x] = sum;\n    __syncthreads();\n"
                  "    for (unsigned half = %du; half > 0u; half >>= 1) {\n"
                  "      if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];\n"
                  "      __syncthreads();\n    }\n"
                  "    if (threadIdx.x == 0u) {\n"
                  "      if (chunks == 1u) out0[o] = %s;\n"
                  "      else partial[o * chunks + blockIdx.y] = sums[0];\n"
                  "    }\n", THREADS, THREADS / 2, finish);
  }
  sb_printf(cu, "    __syncthreads(); /* sums is reused for the next output */\n  }\n}\n\n");
  /* pass 2 */
  char finish_name[CUDA_NAME_MAX];
  snprintf(finish_name, sizeof finish_name, "%s_finish", name);
  snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", finish_name);
  kernel_comment(g, grp, "reduction, pass 2: the chunks' partial sums, in chunk order", cu);
  snprintf(extra, sizeof extra, "const %s *__restrict__ partial, unsigned chunks", acc);
  kernel_open(g, grp, finish_name, NULL, 0, NULL, outs, 1, extra, cu);
  reduce_finish_expr(n, "sum", "rows", finish, sizeof finish);
  sb_printf(cu, "  const unsigned outer = %s, rows = %s, inner = %s;\n  (void)rows;\n"
                "  FLOWC_FOR(i, outer * inner) {\n    const unsigned o = i / inner, col = i %% inner;\n"
                "    %s sum = 0;\n    for (unsigned c = 0; c < chunks; c++)\n"
                "      sum += partial[(o * chunks + c) * inner + col];\n"
                "    out0[i] = %s;\n  }\n}\n\n", f.outer, f.rows, f.inner, acc, finish);
}

/* Rows per chunk of a reduction's first pass: enough chunks to fill the GPU
 * (a bias gradient of Deep MNIST at batch 50, 39200 rows of 32: 154 blocks),
 * few enough that the second pass, a thread per output summing the chunks,
 * stays short. 32 or 8 rows per thread. */
static const char *chunk_rows(const reduce_form *f) { return f->columns ? "256" : "2048"; }

static void reduce_scratch(const fl_graph *g, const fl_node *n, char *buf, size_t cap) {
  reduce_form f;
  reduce_form_of(g, n, &f);
  if (!f.adjacent) {
    snprintf(buf, cap, "0");
    return;
  }
  /* the scratch holds outer x chunks x inner partial sums */
  snprintf(buf, cap, "(size_t)(%s) * (size_t)(%s) * flcu_chunks((int64_t)(%s), %s) * sizeof(%s)", f.outer, f.inner,
           f.rows, chunk_rows(&f), n->dtype == FL_F32 ? "float" : ctype(n->dtype));
}

static void reduce_launch(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name,
                          const char *const *buffers, const char *scratch, strbuf *host) {
  reduce_form f;
  reduce_form_of(g, n, &f);
  const char *args[4] = {buffers[n->inputs[0]], buffers[n->id]};
  if (!f.adjacent) {
    char size[256], grid[320];
    size_of(g, &n->shape, size, sizeof size);
    grid_for(size, grid, sizeof grid);
    launch(g, grp, name, args, 2, grid, "1", "1", THREADS, 1, host);
    return;
  }
  sb_printf(host, "  {\n    unsigned chunks = flcu_chunks((int64_t)(%s), %s);\n    CUdeviceptr partial = %s;\n",
            f.rows, chunk_rows(&f), scratch);
  char grid_x[320], grid_z[320], finish_name[CUDA_NAME_MAX], count[600], grid[700];
  if (f.columns) snprintf(grid_x, sizeof grid_x, "((%s) + 31u) / 32u", f.inner);
  else snprintf(grid_x, sizeof grid_x, "1");
  cuda_text(grid_z, sizeof grid_z, "(%s) < 65535u ? (%s) : 65535u", f.outer, f.outer);
  args[2] = "partial";
  args[3] = "chunks";
  launch(g, grp, name, args, 4, grid_x, "chunks", grid_z, f.columns ? 32 : THREADS, f.columns ? 8 : 1, host);
  snprintf(finish_name, sizeof finish_name, "%s_finish", name);
  snprintf(count, sizeof count, "(%s) * (%s)", f.outer, f.inner);
  grid_for(count, grid, sizeof grid);
  const char *finish_args[3] = {buffers[n->id], "partial", "chunks"};
  sb_printf(host, "    if (chunks > 1u)\n  ");
  launch(g, grp, finish_name, finish_args, 3, grid, "1", "1", THREADS, 1, host);
  sb_printf(host, "  }\n");
}

/* ---- argmax and the softmax family ------------------------------------------ */

static void argmax_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int ins[4], outs[1] = {n->id};
  const int nins = group_inputs(g, grp, ins);
  const fl_shape *in = &g->nodes[n->inputs[0]].shape;
  const int axis = n->attr.axes[0];
  char outer[256], inner[256], len[128];
  product(g, in, 0, axis, outer, sizeof outer);
  product(g, in, axis + 1, in->rank, inner, sizeof inner);
  product(g, in, axis, axis + 1, len, sizeof len);
  kernel_comment(g, grp, "argmax, one thread per result", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "", cu);
  sb_printf(cu, "  const unsigned inner = %s, len = %s;\n  (void)inner;\n", inner, len);
  sb_printf(cu, "  FLOWC_FOR(i, %s * inner) {\n    const unsigned o = i / inner, at = i %% inner;\n"
                "    const %s *v = in0 + o * len * inner + at;\n    unsigned best = 0;\n"
                "    for (unsigned k = 1; k < len; k++)\n"
                "      if (v[k * inner] > v[best * inner]) best = k; /* the first maximum wins */\n"
                "    out0[i] = (%s)best;\n  }\n}\n\n",
            outer, ctype(g->nodes[n->inputs[0]].dtype), ctype(n->dtype));
}

/* Softmax, its cross-entropy and the gradient, one thread per row, in double
 * like the C backend. xent_out and grad_out name the outputs ("" when absent). */
static void softmax_rows(const fl_graph *g, const fl_shape *logits, const char *labels, const char *z, const char *dy,
                         const char *softmax_out, const char *xent_out, const char *grad_out, strbuf *cu) {
  char rows[256], classes[128];
  product(g, logits, 0, logits->rank - 1, rows, sizeof rows);
  product(g, logits, logits->rank - 1, logits->rank, classes, sizeof classes);
  sb_printf(cu, "  const unsigned classes = %s;\n  FLOWC_FOR(r, %s) {\n", classes, rows);
  sb_printf(cu, "    const float *z = %s + r * classes;\n    float max = z[0];\n"
                "    for (unsigned c = 1; c < classes; c++)\n      if (z[c] > max) max = z[c];\n"
                "    double sum = 0.0;\n    for (unsigned c = 0; c < classes; c++)\n"
                "      sum += exp((double)z[c] - max);\n", z);
  if (*softmax_out)
    sb_printf(cu, "    for (unsigned c = 0; c < classes; c++)\n"
                  "      %s[r * classes + c] = (float)(exp((double)z[c] - max) / sum);\n", softmax_out);
  if (*xent_out)
    sb_printf(cu, "    const double log_sum = log(sum);\n    double loss = 0.0;\n"
                  "    for (unsigned c = 0; c < classes; c++)\n"
                  "      loss -= %s[r * classes + c] * ((double)z[c] - max - log_sum);\n"
                  "    %s[r] = (float)loss;\n", labels, xent_out);
  if (*grad_out)
    sb_printf(cu, "    for (unsigned c = 0; c < classes; c++)\n"
                  "      %s[r * classes + c] = (float)((exp((double)z[c] - max) / sum - %s[r * classes + c]) * %s[r]);\n",
              grad_out, labels, dy);
  sb_printf(cu, "  }\n}\n\n");
}

static void softmax_rows_count(const fl_graph *g, const fl_shape *logits, char *buf, size_t cap) {
  product(g, logits, 0, logits->rank - 1, buf, cap);
}

static void softmax_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int ins[4], outs[1] = {n->id};
  const int nins = group_inputs(g, grp, ins);
  char p0[16], p1[16], p2[16];
  kernel_comment(g, grp, "one thread per row", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "", cu);
  if (n->op == FL_OP_SOFTMAX) {
    param(n, ins, nins, 0, p0, sizeof p0);
    softmax_rows(g, &g->nodes[n->inputs[0]].shape, "", p0, "", "out0", "", "", cu);
    return;
  }
  param(n, ins, nins, 0, p0, sizeof p0);
  param(n, ins, nins, 1, p1, sizeof p1);
  if (n->op == FL_OP_SOFTMAX_XENT) {
    softmax_rows(g, &g->nodes[n->inputs[1]].shape, p0, p1, "", "", "out0", "", cu);
    return;
  }
  param(n, ins, nins, 2, p2, sizeof p2);
  softmax_rows(g, &g->nodes[n->inputs[1]].shape, p0, p1, p2, "", "", "out0", cu);
}

static void xent_group_kernel(const fl_graph *g, const fl_group *grp, const char *name, strbuf *cu) {
  int ins[8], outs[8];
  const int nins = group_inputs(g, grp, ins), nouts = group_outputs(g, grp, outs);
  const fl_node *x = &g->nodes[grp->nodes[0]], *grad = &g->nodes[grp->nodes[1]];
  char p0[16], p1[16], p2[16];
  param(x, ins, nins, 0, p0, sizeof p0);
  param(x, ins, nins, 1, p1, sizeof p1);
  param(grad, ins, nins, 2, p2, sizeof p2);
  kernel_comment(g, grp, "softmax cross-entropy and its gradient from one softmax, one thread per row", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, nouts, "", cu);
  softmax_rows(g, &g->nodes[x->inputs[1]].shape, p0, p1, p2, "", "out0", "out1", cu);
}

static void rows_launch(const fl_graph *g, const fl_group *grp, const char *name, const fl_shape *logits,
                        const char *const *buffers, strbuf *host) {
  int ins[8], outs[8];
  const int nins = group_inputs(g, grp, ins), nouts = group_outputs(g, grp, outs);
  const char *args[16];
  int nargs = 0;
  for (int i = 0; i < nins; i++) args[nargs++] = buffers[ins[i]];
  for (int i = 0; i < nouts; i++) args[nargs++] = buffers[outs[i]];
  char rows[256], grid[320];
  softmax_rows_count(g, logits, rows, sizeof rows);
  grid_for(rows, grid, sizeof grid);
  launch(g, grp, name, args, nargs, grid, "1", "1", THREADS, 1, host);
}

/* ---- matmul ----------------------------------------------------------------- */

static void matmul_dims(const fl_graph *g, const fl_node *n, char *m, char *cols, char *k, char *lda, char *ldb) {
  const fl_shape *a = &g->nodes[n->inputs[0]].shape, *b = &g->nodes[n->inputs[1]].shape;
  product(g, &n->shape, 0, 1, m, 128);
  product(g, &n->shape, 1, 2, cols, 128);
  product(g, a, n->attr.transpose_a ? 0 : 1, n->attr.transpose_a ? 1 : 2, k, 128);
  product(g, a, 1, 2, lda, 128);
  product(g, b, 1, 2, ldb, 128);
}

/* flcu_sgemm(d, ..., out, ldc), or with alpha given flcu_sgemm_update(d, ...,
 * alpha, out, ldc), for matmul node n. */
static void matmul_call(const fl_graph *g, const fl_node *n, const char *a, const char *b, const char *alpha,
                        const char *out, strbuf *host) {
  char m[128], cols[128], k[128], lda[128], ldb[128];
  matmul_dims(g, n, m, cols, k, lda, ldb);
  sb_printf(host, "  %s(d, %s, %s, (int64_t)%s, (int64_t)%s, (int64_t)%s, %s, (int64_t)%s, %s, (int64_t)%s, %s%s%s, "
                  "(int64_t)%s);\n",
            alpha ? "flcu_sgemm_update" : "flcu_sgemm", n->attr.transpose_a ? "true" : "false",
            n->attr.transpose_b ? "true" : "false", m, cols, k, a, lda, b, ldb, alpha ? alpha : "", alpha ? ", " : "",
            out, cols);
}


/* The weight gradient's GEMM subtracts lr times the product from the weight. */
static void gemm_sgd_launch(const fl_graph *g, const fl_group *grp, const char *const *buffers, strbuf *host) {
  const fl_node *n = &g->nodes[grp->nodes[0]], *sgd = &g->nodes[grp->nodes[1]];
  char alpha[48];
  emit_float(alpha, sizeof alpha, -sgd->attr.lr);
  matmul_call(g, n, buffers[n->inputs[0]], buffers[n->inputs[1]], alpha, buffers[sgd->inputs[0]], host);
}

/* Integer matmuls are rare and small: one thread per result. */
static void int_matmul_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int ins[4], outs[1] = {n->id};
  const int nins = group_inputs(g, grp, ins);
  char m[128], cols[128], k[128], lda[128], ldb[128], pa[16], pb[16];
  matmul_dims(g, n, m, cols, k, lda, ldb);
  param(n, ins, nins, 0, pa, sizeof pa);
  param(n, ins, nins, 1, pb, sizeof pb);
  kernel_comment(g, grp, "integer matmul, one thread per result", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "", cu);
  sb_printf(cu, "  const unsigned cols = %s, depth = %s, lda = %s, ldb = %s;\n", cols, k, lda, ldb);
  sb_printf(cu, "  FLOWC_FOR(idx, %s * cols) {\n    const unsigned i = idx / cols, j = idx %% cols;\n"
                "    %s sum = 0;\n    for (unsigned p = 0; p < depth; p++)\n      sum += %s[%s] * %s[%s];\n"
                "    out0[idx] = sum;\n  }\n}\n\n",
            m, ctype(n->dtype), pa, n->attr.transpose_a ? "p * lda + i" : "i * lda + p", pb,
            n->attr.transpose_b ? "j * ldb + p" : "p * ldb + j");
}

/* ---- convolution and pooling -------------------------------------------------- */

/* The window of a conv or pool node, from the NHWC input shape. */
static flrt_window window_of(const fl_node *n, const fl_shape *x, int64_t kh, int64_t kw) {
  flrt_window w;
  flrt_window_init(&w, 1, x->dims[1].coef, x->dims[2].coef, x->dims[3].coef, kh, kw, n->attr.strides[0],
                   n->attr.strides[1], n->attr.padding == FL_PAD_SAME);
  return w;
}

/* For every conv op: its window (over the forward input x) and filter count. */
static flrt_window conv_window(const fl_graph *g, const fl_node *n, int64_t *out_c) {
  const fl_shape *x = n->op == FL_OP_CONV2D_GRAD_INPUT ? &n->shape : &g->nodes[n->inputs[0]].shape;
  const fl_shape *w = n->op == FL_OP_CONV2D_GRAD_FILTER ? &n->shape : &g->nodes[n->inputs[1]].shape;
  *out_c = w->dims[3].coef;
  return window_of(n, x, w->dims[0].coef, w->dims[1].coef);
}

static bool pointwise(const flrt_window *w) {
  return w->k_h == 1 && w->k_w == 1 && w->stride_h == 1 && w->stride_w == 1 && w->pad_top == 0 && w->pad_left == 0 &&
         w->out_h == w->in_h && w->out_w == w->in_w;
}

/* The batch dimension of a conv op's forward input, as an expression. */
static void conv_batch(const fl_graph *g, const fl_node *n, char *buf, size_t cap) {
  const fl_shape *x = n->op == FL_OP_CONV2D_GRAD_INPUT ? &n->shape : &g->nodes[n->inputs[0]].shape;
  product(g, x, 0, 1, buf, cap);
}

/* im2col: cols (N*OH*OW) x (KH*KW*C), zeros where the window hangs over the padding. */
static void im2col_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int64_t out_c;
  const flrt_window w = conv_window(g, n, &out_c);
  char batch[128];
  conv_batch(g, n, batch, sizeof batch);
  kernel_comment(g, grp, "im2col of the input: one thread per entry of the (positions x window) matrix", cu);
  sb_printf(cu, "extern \"C\" __global__ void %s(const float *__restrict__ x, float *__restrict__ cols", name);
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  kernel_sym_list(g, uses, true, "unsigned ", cu);
  sb_printf(cu, ") {\n  const unsigned H = %lld, W = %lld, C = %lld, KW = %lld, OH = %lld, OW = %lld;\n"
                "  const unsigned SH = %lld, SW = %lld, PT = %lld, PL = %lld, K = %lld * KW * C;\n",
            (long long)w.in_h, (long long)w.in_w, (long long)w.in_c, (long long)w.k_w, (long long)w.out_h,
            (long long)w.out_w, (long long)w.stride_h, (long long)w.stride_w, (long long)w.pad_top,
            (long long)w.pad_left, (long long)w.k_h);
  sb_printf(cu, "  FLOWC_FOR(i, %s * OH * OW * K) {\n"
                "    const unsigned k = i %% K, p = i / K;\n"
                "    const unsigned c = k %% C, kw = k / C %% KW, kh = k / (C * KW);\n"
                "    const unsigned ow = p %% OW, oh = p / OW %% OH, n = p / (OW * OH);\n"
                "    const int ih = (int)(oh * SH + kh) - (int)PT, iw = (int)(ow * SW + kw) - (int)PL;\n"
                "    cols[i] = ih >= 0 && ih < (int)H && iw >= 0 && iw < (int)W\n"
                "                  ? x[((n * H + (unsigned)ih) * W + (unsigned)iw) * C + c] : 0.0f;\n"
                "  }\n}\n\n", batch);
}

/* col2im as a gather: each input element sums the window entries that read
 * it, in (oh, ow, kh, kw) order, which is the order col2im adds them. */
static void col2im_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int64_t out_c;
  const flrt_window w = conv_window(g, n, &out_c);
  char batch[128];
  conv_batch(g, n, batch, sizeof batch);
  kernel_comment(g, grp, "col2im of the window gradients: one thread per input element, gathering", cu);
  sb_printf(cu, "extern \"C\" __global__ void %s(const float *__restrict__ cols, float *__restrict__ dx", name);
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  kernel_sym_list(g, uses, true, "unsigned ", cu);
  sb_printf(cu, ") {\n  const int H = %lld, W = %lld, C = %lld, KH = %lld, KW = %lld, OH = %lld, OW = %lld;\n"
                "  const int SH = %lld, SW = %lld, PT = %lld, PL = %lld, K = KH * KW * C;\n",
            (long long)w.in_h, (long long)w.in_w, (long long)w.in_c, (long long)w.k_h, (long long)w.k_w,
            (long long)w.out_h, (long long)w.out_w, (long long)w.stride_h, (long long)w.stride_w, (long long)w.pad_top,
            (long long)w.pad_left);
  sb_printf(cu, "  FLOWC_FOR(i, %s * (unsigned)(H * W * C)) {\n"
                "    const int c = (int)(i %% (unsigned)C), iw = (int)(i / (unsigned)C %% (unsigned)W);\n"
                "    const int ih = (int)(i / (unsigned)(C * W) %% (unsigned)H), n = (int)(i / (unsigned)(C * W * H));\n"
                "    /* the windows that read (ih, iw): oh * SH in (ih + PT - KH, ih + PT] */\n"
                "    const int th = ih + PT, tw = iw + PL;\n"
                "    const int oh_first = th >= KH ? (th - KH + SH) / SH : 0, oh_last = th / SH < OH ? th / SH : OH - 1;\n"
                "    const int ow_first = tw >= KW ? (tw - KW + SW) / SW : 0, ow_last = tw / SW < OW ? tw / SW : OW - 1;\n"
                "    float sum = 0.0f;\n"
                "    for (int oh = oh_first; oh <= oh_last; oh++)\n"
                "      for (int ow = ow_first; ow <= ow_last; ow++)\n"
                "        sum += cols[(size_t)((n * OH + oh) * OW + ow) * K + ((th - oh * SH) * KW + tw - ow * SW) * C + c];\n"
                "    dx[i] = sum;\n  }\n}\n\n", batch);
}

/* Scratch of a conv op: its im2col matrix, (N*OH*OW) x (KH*KW*C) floats. */
static void conv_scratch(const fl_graph *g, const fl_node *n, char *buf, size_t cap) {
  int64_t out_c;
  const flrt_window w = conv_window(g, n, &out_c);
  if (pointwise(&w)) {
    snprintf(buf, cap, "0");
    return;
  }
  char batch[128];
  conv_batch(g, n, batch, sizeof batch);
  snprintf(buf, cap, "(size_t)(%s) * %lldu * sizeof(float)", batch,
           (long long)(w.out_h * w.out_w * w.k_h * w.k_w * w.in_c));
}

static void conv_kernels(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu,
                         char (*names)[CUDA_NAME_MAX], int *count) {
  int64_t out_c;
  const flrt_window w = conv_window(g, n, &out_c);
  if (pointwise(&w)) return; /* only the GEMM */
  char kname[CUDA_NAME_MAX];
  snprintf(kname, sizeof kname, "%s%s", name, n->op == FL_OP_CONV2D_GRAD_INPUT ? "_col2im" : "_im2col");
  snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", kname);
  if (n->op == FL_OP_CONV2D_GRAD_INPUT) col2im_kernel(g, grp, n, kname, cu);
  else im2col_kernel(g, grp, n, kname, cu);
}

/* conv2d and its gradients: im2col (or col2im) around one GEMM; `out` is the
 * result's buffer (an epilogue group passes its root's). */
static void conv_launch(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name,
                        const char *const *buffers, const char *out, const char *scratch, strbuf *host) {
  int64_t out_c;
  const flrt_window w = conv_window(g, n, &out_c);
  char batch[128], positions[300], kname[CUDA_NAME_MAX], count[400], grid[500];
  conv_batch(g, n, batch, sizeof batch);
  snprintf(positions, sizeof positions, "(int64_t)%s * %lld", batch, (long long)(w.out_h * w.out_w));
  const long long k = (long long)(w.k_h * w.k_w * w.in_c);
  const bool direct = pointwise(&w);
  snprintf(kname, sizeof kname, "%s%s", name, n->op == FL_OP_CONV2D_GRAD_INPUT ? "_col2im" : "_im2col");
  const char *in0 = buffers[n->inputs[0]], *in1 = buffers[n->inputs[1]];
  sb_printf(host, "  { /* %%%d %s: %s */\n  CUdeviceptr cols = %s;\n", n->id, fl_op_name(n->op),
            direct ? "a 1x1 window reads the image as it is"
            : n->op == FL_OP_CONV2D_GRAD_INPUT ? "GEMM, then col2im" : "im2col, then GEMM",
            direct ? "0" : scratch);
  sb_printf(host, "  (void)cols;\n");
  switch (n->op) {
  case FL_OP_CONV2D: /* out (P x O) = cols (P x K) @ filter (K x O) */
  case FL_OP_CONV2D_GRAD_FILTER: { /* dfilter (K x O) = cols^T (K x P) @ dy (P x O) */
    if (!direct) {
      const char *args[2] = {in0, "cols"};
      snprintf(count, sizeof count, "%s * %lld", positions, k);
      grid_for(count, grid, sizeof grid);
      launch(g, grp, kname, args, 2, grid, "1", "1", THREADS, 1, host);
    }
    const char *a = direct ? in0 : "cols";
    if (n->op == FL_OP_CONV2D)
      sb_printf(host, "  flcu_sgemm(d, false, false, %s, %lld, %lld, %s, %lld, %s, %lld, %s, %lld);\n", positions,
                (long long)out_c, k, a, k, in1, (long long)out_c, out, (long long)out_c);
    else
      sb_printf(host, "  flcu_sgemm(d, true, false, %lld, %lld, %s, %s, %lld, %s, %lld, %s, %lld);\n", k,
                (long long)out_c, positions, a, k, in1, (long long)out_c, out, (long long)out_c);
    break;
  }
  default: /* CONV2D_GRAD_INPUT: dcols (P x K) = dy (P x O) @ filter^T (O x K), then col2im */
    sb_printf(host, "  flcu_sgemm(d, false, true, %s, %lld, %lld, %s, %lld, %s, %lld, %s, %lld);\n", positions, k,
              (long long)out_c, in0, (long long)out_c, in1, (long long)out_c, direct ? out : "cols", k);
    if (!direct) {
      const char *args[2] = {"cols", out};
      snprintf(count, sizeof count, "(int64_t)%s * %lld", batch, (long long)(w.in_h * w.in_w * w.in_c));
      grid_for(count, grid, sizeof grid);
      launch(g, grp, kname, args, 2, grid, "1", "1", THREADS, 1, host);
    }
    break;
  }
  sb_printf(host, "  }\n");
}

static void pool_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  /* a POOL_GRAD_RELU group writes its root, the relu's gradient */
  const bool relu = grp->kind == FL_GROUP_POOL_GRAD_RELU;
  int ins[4], outs[1] = {relu ? grp->root : n->id};
  const int nins = group_inputs(g, grp, ins);
  const fl_shape *x = &g->nodes[n->inputs[0]].shape;
  const flrt_window w = window_of(n, x, n->attr.ksize[0], n->attr.ksize[1]);
  char batch[128], px[16], pdy[16];
  product(g, x, 0, 1, batch, sizeof batch);
  param(n, ins, nins, 0, px, sizeof px);
  kernel_comment(g, grp, n->op == FL_OP_MAX_POOL ? "max_pool, one thread per output"
                         : relu ? "max_pool's gradient through the relu before it, one thread per input element"
                                : "max_pool's gradient, one thread per input element", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "", cu);
  sb_printf(cu, "  const int H = %lld, W = %lld, C = %lld, KH = %lld, KW = %lld, OH = %lld, OW = %lld;\n"
                "  const int SH = %lld, SW = %lld, PT = %lld, PL = %lld;\n",
            (long long)w.in_h, (long long)w.in_w, (long long)w.in_c, (long long)w.k_h, (long long)w.k_w,
            (long long)w.out_h, (long long)w.out_w, (long long)w.stride_h, (long long)w.stride_w, (long long)w.pad_top,
            (long long)w.pad_left);
  if (n->op == FL_OP_MAX_POOL) {
    sb_printf(cu, "  FLOWC_FOR(i, %s * (unsigned)(OH * OW * C)) {\n"
                  "    const int c = (int)(i %% (unsigned)C), ow = (int)(i / (unsigned)C %% (unsigned)OW);\n"
                  "    const int oh = (int)(i / (unsigned)(C * OW) %% (unsigned)OH), n = (int)(i / (unsigned)(C * OW * OH));\n"
                  "    float best = -INFINITY; /* padding cells are skipped: they never win */\n"
                  "    for (int kh = 0; kh < KH; kh++) {\n"
                  "      const int ih = oh * SH + kh - PT;\n      if (ih < 0 || ih >= H) continue;\n"
                  "      for (int kw = 0; kw < KW; kw++) {\n"
                  "        const int iw = ow * SW + kw - PL;\n        if (iw < 0 || iw >= W) continue;\n"
                  "        const float v = %s[((n * H + ih) * W + iw) * C + c];\n"
                  "        best = v > best ? v : best;\n      }\n    }\n    out0[i] = best;\n  }\n}\n\n",
              batch, px);
    return;
  }
  /* Gather: each input element takes dy from every window whose first
   * maximum (in (kh, kw) order, the CPU's rule) it is, adding in window
   * order as the CPU does. */
  param(n, ins, nins, 1, pdy, sizeof pdy);
  sb_printf(cu, "  FLOWC_FOR(i, %s * (unsigned)(H * W * C)) {\n"
                "    const int c = (int)(i %% (unsigned)C), iw = (int)(i / (unsigned)C %% (unsigned)W);\n"
                "    const int ih = (int)(i / (unsigned)(C * W) %% (unsigned)H), n = (int)(i / (unsigned)(C * W * H));\n"
                "    const float *image = %s + (size_t)n * H * W * C;\n"
                "    /* the windows that hold (ih, iw): oh * SH in (ih + PT - KH, ih + PT] */\n"
                "    const int th = ih + PT, tw = iw + PL;\n"
                "    const int oh_first = th >= KH ? (th - KH + SH) / SH : 0, oh_last = th / SH < OH ? th / SH : OH - 1;\n"
                "    const int ow_first = tw >= KW ? (tw - KW + SW) / SW : 0, ow_last = tw / SW < OW ? tw / SW : OW - 1;\n"
                "    float sum = 0.0f;\n"
                "    for (int oh = oh_first; oh <= oh_last; oh++) {\n"
                "      for (int ow = ow_first; ow <= ow_last; ow++) {\n"
                "        float best = -INFINITY;\n        int where = -1;\n"
                "        for (int kh = 0; kh < KH; kh++) {\n"
                "          const int y = oh * SH + kh - PT;\n          if (y < 0 || y >= H) continue;\n"
                "          for (int kw = 0; kw < KW; kw++) {\n"
                "            const int x = ow * SW + kw - PL;\n            if (x < 0 || x >= W) continue;\n"
                "            const float v = image[(y * W + x) * C + c];\n"
                "            if (v > best || where < 0) {\n              best = v;\n              where = y * W + x;\n            }\n"
                "          }\n        }\n"
                "        if (where == ih * W + iw) sum += %s[((n * OH + oh) * OW + ow) * C + c];\n"
                "      }\n    }\n    out0[i] = %s;\n  }\n}\n\n",
            batch, px, pdy, relu ? "image[(ih * W + iw) * C + c] > 0.0f ? sum : 0.0f" : "sum");
}

static void dropout_kernel(const fl_graph *g, const fl_group *grp, const fl_node *n, const char *name, strbuf *cu) {
  int ins[4], outs[1] = {n->id};
  const int nins = group_inputs(g, grp, ins);
  char size[256], keep[16];
  size_of(g, &n->shape, size, sizeof size);
  param(n, ins, nins, 1, keep, sizeof keep);
  kernel_comment(g, grp, "dropout mask: rng.c's flrt_dropout_mask, element by element (flowc_rt_philox.h)", cu);
  kernel_open(g, grp, name, ins, nins, NULL, outs, 1, "const unsigned long long *__restrict__ rng", cu);
  sb_printf(cu, "  const unsigned long long seed = rng[0], run = rng[1]; /* the run's seed and dropout counter */\n"
                "  const float keep_prob = %s[0];\n"
                "  FLOWC_FOR(i, %s)\n    out0[i] = flrt_dropout_element(seed, %du, run, i, keep_prob);\n}\n\n",
            keep, size, n->attr.stream);
}

/* ---- optimizer updates -------------------------------------------------------- */

/* The update of element i of one APPLY node, its tensors named by parameter. */
static void update_body(const fl_node *n, const char *const *p, const char *indent, strbuf *cu) {
  char lr[48], b1[48], b2[48], eps[48], mom[48];
  emit_float(lr, sizeof lr, n->attr.lr);
  emit_float(b1, sizeof b1, n->attr.beta1);
  emit_float(b2, sizeof b2, n->attr.beta2);
  emit_float(eps, sizeof eps, n->attr.epsilon);
  emit_float(mom, sizeof mom, n->attr.momentum);
  switch (n->op) {
  case FL_OP_APPLY_SGD:
    sb_printf(cu, "%s%s[i] -= %s * %s[i];\n", indent, p[0], lr, p[1]);
    break;
  case FL_OP_APPLY_MOMENTUM:
    sb_printf(cu, "%s%s[i] = %s * %s[i] + %s[i];\n%s%s[i] -= %s * %s[i];\n", indent, p[1], mom, p[1], p[2], indent, p[0],
              lr, p[1]);
    break;
  default: /* TensorFlow's Adam, as kernels_c.c writes it */
    sb_printf(cu, "%sconst float lr_t = %s * sqrtf(1.0f - %s[0]) / (1.0f - %s[0]);\n", indent, lr, p[5], p[4]);
    sb_printf(cu, "%s%s[i] = %s * %s[i] + (1.0f - %s) * %s[i];\n", indent, p[1], b1, p[1], b1, p[3]);
    sb_printf(cu, "%s%s[i] = %s * %s[i] + (1.0f - %s) * %s[i] * %s[i];\n", indent, p[2], b2, p[2], b2, p[3], p[3]);
    sb_printf(cu, "%s%s[i] -= lr_t * %s[i] / (sqrtf(%s[i]) + %s);\n", indent, p[0], p[1], p[2], eps);
    break;
  }
}

static bool update_writes(fl_op op, int k) {
  switch (op) {
  case FL_OP_APPLY_SGD: return k == 0;
  case FL_OP_APPLY_MOMENTUM: return k <= 1;
  case FL_OP_APPLY_ADAM: return k <= 2;
  default: return false;
  }
}

/* Every update of the group in one launch: the elements of all variables are
 * one index space, and each thread finds its variable by comparing with the
 * running sizes (constants), so small and large variables share the grid. */
static void updates_kernel(const fl_graph *g, const fl_group *grp, const char *name, strbuf *cu) {
  int nins;
  int *ins = inputs_of(g, grp, &nins);
  bool *written = calloc((size_t)nins + 1, sizeof *written);
  if (!written) abort();
  for (int m = 0; m < grp->nnodes; m++) {
    const fl_node *n = &g->nodes[grp->nodes[m]];
    for (int k = 0; k < n->ninputs; k++)
      if (update_writes(n->op, k)) written[input_index(ins, nins, n->inputs[k])] = true;
  }
  kernel_comment(g, grp, grp->nnodes > 1 ? "every optimizer update of the run, one index space" : "optimizer update", cu);
  kernel_open(g, grp, name, ins, nins, written, NULL, 0, "", cu);
  int64_t total = 0;
  for (int m = 0; m < grp->nnodes; m++) total += fl_shape_const_size(&g->nodes[grp->nodes[m]].shape);
  sb_printf(cu, "  FLOWC_FOR(at, %lldu) {\n", (long long)total);
  int64_t start = 0;
  for (int m = 0; m < grp->nnodes; m++) {
    const fl_node *n = &g->nodes[grp->nodes[m]];
    const int64_t size = fl_shape_const_size(&n->shape);
    char label[96], names_store[6][16];
    const char *p[6];
    for (int k = 0; k < n->ninputs && k < 6; k++) {
      snprintf(names_store[k], sizeof names_store[k], "in%d", input_index(ins, nins, n->inputs[k]));
      p[k] = names_store[k];
    }
    emit_node_label(g, n->inputs[0], label, sizeof label);
    if (m + 1 < grp->nnodes) sb_printf(cu, "    %sif (at < %lldu) {", m ? "else " : "", (long long)(start + size));
    else sb_printf(cu, "    %s{", m ? "else " : "");
    sb_printf(cu, " /* %%%d %s of %s */\n      const unsigned i = at - %lldu;\n", n->id, fl_op_name(n->op), label,
              (long long)start);
    update_body(n, p, "      ", cu);
    sb_printf(cu, "    }\n");
    start += size;
  }
  sb_printf(cu, "  }\n}\n\n");
  free(written);
  free(ins);
}

static void updates_launch(const fl_graph *g, const fl_group *grp, const char *name, const char *const *buffers,
                           strbuf *host) {
  int nins;
  int *ins = inputs_of(g, grp, &nins);
  const char **args = malloc((size_t)nins * sizeof *args + 1);
  if (!args) abort();
  for (int i = 0; i < nins; i++) args[i] = buffers[ins[i]];
  int64_t total = 0;
  for (int m = 0; m < grp->nnodes; m++) total += fl_shape_const_size(&g->nodes[grp->nodes[m]].shape);
  char grid[128];
  snprintf(grid, sizeof grid, "flcu_blocks(%lld, %d)", (long long)total, THREADS);
  launch(g, grp, name, args, nins, grid, "1", "1", THREADS, 1, host);
  free(args);
  free(ins);
}

/* Kernel parameters are limited to 4 KB: an update kernel takes at most this
 * many variables (Adam's 4 pointers each), further ones get more launches. */
enum { UPDATES_PER_LAUNCH = 64 };

/* Part `part` of a group of updates, and its kernel's name. */
static fl_group updates_part(const fl_group *grp, int part, const char *name, char *part_name, size_t cap) {
  fl_group sub = *grp;
  sub.nodes = grp->nodes + part * UPDATES_PER_LAUNCH;
  sub.nnodes = grp->nnodes - part * UPDATES_PER_LAUNCH;
  if (sub.nnodes > UPDATES_PER_LAUNCH) sub.nnodes = UPDATES_PER_LAUNCH;
  sub.root = -1;
  if (grp->nnodes > UPDATES_PER_LAUNCH) cuda_text(part_name, cap, "%s_part%d", name, part);
  else cuda_text(part_name, cap, "%s", name);
  return sub;
}

static int updates_parts(const fl_group *grp) { return (grp->nnodes + UPDATES_PER_LAUNCH - 1) / UPDATES_PER_LAUNCH; }

/* ---- epilogue groups -------------------------------------------------------- */

/* bias (and relu) in place over the GEMM's rows. */
static void epilogue_kernel(const fl_graph *g, const fl_group *grp, const char *name, strbuf *cu) {
  const fl_node *gemm = &g->nodes[grp->nodes[0]], *add = &g->nodes[grp->nodes[1]];
  const bool relu = grp->nnodes > 2;
  char size[256], channels[128];
  size_of(g, &gemm->shape, size, sizeof size);
  product(g, &gemm->shape, gemm->shape.rank - 1, gemm->shape.rank, channels, sizeof channels);
  kernel_comment(g, grp, relu ? "bias and relu in place on the GEMM's output" : "bias in place on the GEMM's output",
                 cu);
  sb_printf(cu, "extern \"C\" __global__ void %s(float *__restrict__ out, const float *__restrict__ bias", name);
  bool uses[64];
  kernel_group_syms(g, grp, uses);
  kernel_sym_list(g, uses, true, "unsigned ", cu);
  (void)add;
  sb_printf(cu, ") {\n  const unsigned channels = %s;\n  FLOWC_FOR(i, %s) {\n    const float v = out[i] + bias[i %% channels];\n",
            channels, size);
  sb_printf(cu, relu ? "    out[i] = v > 0.0f ? v : 0.0f;\n  }\n}\n\n" : "    out[i] = v;\n  }\n}\n\n");
}

static void epilogue_launch(const fl_graph *g, const fl_group *grp, const char *name, const char *const *buffers,
                            const char *scratch, strbuf *host) {
  const fl_node *gemm = &g->nodes[grp->nodes[0]], *add = &g->nodes[grp->nodes[1]];
  const int bias = add->inputs[0] == gemm->id ? add->inputs[1] : add->inputs[0];
  const char *out = buffers[grp->root];
  if (gemm->op == FL_OP_MATMUL) matmul_call(g, gemm, buffers[gemm->inputs[0]], buffers[gemm->inputs[1]], NULL, out, host);
  else conv_launch(g, grp, gemm, name, buffers, out, scratch, host);
  const char *args[2] = {out, buffers[bias]};
  char size[256], grid[320];
  size_of(g, &gemm->shape, size, sizeof size);
  grid_for(size, grid, sizeof grid);
  launch(g, grp, name, args, 2, grid, "1", "1", THREADS, 1, host);
}

/* ---- dispatch ------------------------------------------------------------------ */

int cuda_group_kernel_capacity(const fl_group *grp) {
  return CUDA_KERNELS_PER_GROUP + (grp->kind == FL_GROUP_UPDATES ? updates_parts(grp) : 0);
}

bool cuda_node_is_constant(const fl_graph *g, int node) {
  return g->nodes[node].op == FL_OP_FILL && fl_shape_is_const(&g->nodes[node].shape);
}

int cuda_emit_group_kernels(const fl_graph *g, const fl_group *grp, const char *fname, strbuf *cu,
                             char (*names)[CUDA_NAME_MAX], int *count) {
  switch (grp->kind) {
  case FL_GROUP_ELEMENTWISE:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    elementwise_kernel(g, grp, fname, cu);
    return 0;
  case FL_GROUP_EPILOGUE: {
    const fl_node *gemm = &g->nodes[grp->nodes[0]];
    if (gemm->op == FL_OP_CONV2D) conv_kernels(g, grp, gemm, fname, cu, names, count);
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    epilogue_kernel(g, grp, fname, cu);
    return 0;
  }
  case FL_GROUP_SOFTMAX_XENT:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    xent_group_kernel(g, grp, fname, cu);
    return 0;
  case FL_GROUP_UPDATES:
    for (int part = 0; part < updates_parts(grp); part++) {
      fl_group sub = updates_part(grp, part, fname, names[*count], CUDA_NAME_MAX);
      updates_kernel(g, &sub, names[(*count)++], cu);
    }
    return 0;
  case FL_GROUP_POOL_GRAD_RELU:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    pool_kernel(g, grp, &g->nodes[grp->nodes[0]], fname, cu);
    return 0;
  case FL_GROUP_GEMM_SGD: /* cuBLAS only */
    return 0;
  default:
    break;
  }
  const fl_node *n = &g->nodes[grp->nodes[0]];
  if (fl_op_is_elementwise(n->op)) {
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    elementwise_kernel(g, grp, fname, cu);
    return 0;
  }
  switch (n->op) {
  case FL_OP_FILL:
    if (cuda_node_is_constant(g, n->id)) return 0; /* uploaded once at start-up */
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    fill_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_BROADCAST:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    broadcast_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN: case FL_OP_SUM_TO:
    reduce_kernels(g, grp, n, fname, cu, names, count);
    return 0;
  case FL_OP_ARGMAX:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    argmax_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_SOFTMAX: case FL_OP_SOFTMAX_XENT: case FL_OP_SOFTMAX_XENT_GRAD:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    softmax_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_MATMUL:
    if (n->dtype == FL_F32) return 0; /* cuBLAS */
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    int_matmul_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_CONV2D: case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER:
    conv_kernels(g, grp, n, fname, cu, names, count);
    return 0;
  case FL_OP_MAX_POOL: case FL_OP_MAX_POOL_GRAD:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    pool_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_DROPOUT_MASK:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    dropout_kernel(g, grp, n, fname, cu);
    return 0;
  case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM:
    snprintf(names[(*count)++], CUDA_NAME_MAX, "%s", fname);
    updates_kernel(g, grp, fname, cu);
    return 0;
  default:
    return -1; /* an op without a CUDA kernel */
  }
}

void cuda_group_scratch_bytes(const fl_graph *g, const fl_group *grp, char *buf, size_t cap) {
  snprintf(buf, cap, "0");
  for (int i = 0; i < grp->nnodes; i++) {
    const fl_node *n = &g->nodes[grp->nodes[i]];
    if (kernel_needs_scratch(n->op)) {
      conv_scratch(g, n, buf, cap);
      return;
    }
    if (n->op == FL_OP_REDUCE_SUM || n->op == FL_OP_REDUCE_MEAN || n->op == FL_OP_SUM_TO) {
      reduce_scratch(g, n, buf, cap);
      return;
    }
  }
}

void cuda_emit_group_launch(const fl_graph *g, const fl_group *grp, const char *fname, const char *const *buffers,
                            const char *scratch, strbuf *host) {
  switch (grp->kind) {
  case FL_GROUP_ELEMENTWISE: elementwise_launch(g, grp, fname, buffers, host); return;
  case FL_GROUP_EPILOGUE: epilogue_launch(g, grp, fname, buffers, scratch, host); return;
  case FL_GROUP_SOFTMAX_XENT:
    rows_launch(g, grp, fname, &g->nodes[g->nodes[grp->nodes[0]].inputs[1]].shape, buffers, host);
    return;
  case FL_GROUP_GEMM_SGD:
    gemm_sgd_launch(g, grp, buffers, host);
    return;
  case FL_GROUP_UPDATES:
    for (int part = 0; part < updates_parts(grp); part++) {
      char name[CUDA_NAME_MAX];
      fl_group sub = updates_part(grp, part, fname, name, sizeof name);
      updates_launch(g, &sub, name, buffers, host);
    }
    return;
  default: break;
  }
  const fl_node *n = &g->nodes[grp->nodes[0]];
  if (fl_op_is_elementwise(n->op)) {
    elementwise_launch(g, grp, fname, buffers, host);
    return;
  }
  int ins[8];
  const int nins = group_inputs(g, grp, ins);
  const char *args[16];
  int nargs = 0;
  char size[256], grid[320];
  size_of(g, &n->shape, size, sizeof size);
  grid_for(size, grid, sizeof grid);
  switch (n->op) {
  case FL_OP_FILL:
    if (cuda_node_is_constant(g, n->id)) return;
    args[0] = buffers[n->id];
    launch(g, grp, fname, args, 1, grid, "1", "1", THREADS, 1, host);
    return;
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN: case FL_OP_SUM_TO:
    reduce_launch(g, grp, n, fname, buffers, scratch, host);
    return;
  case FL_OP_SOFTMAX:
    rows_launch(g, grp, fname, &g->nodes[n->inputs[0]].shape, buffers, host);
    return;
  case FL_OP_SOFTMAX_XENT: case FL_OP_SOFTMAX_XENT_GRAD:
    rows_launch(g, grp, fname, &g->nodes[n->inputs[1]].shape, buffers, host);
    return;
  case FL_OP_MATMUL:
    if (n->dtype == FL_F32) {
      matmul_call(g, n, buffers[n->inputs[0]], buffers[n->inputs[1]], NULL, buffers[n->id], host);
      return;
    }
    break;
  case FL_OP_CONV2D: case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER:
    conv_launch(g, grp, n, fname, buffers, buffers[n->id], scratch, host);
    return;
  case FL_OP_MAX_POOL: case FL_OP_MAX_POOL_GRAD: {
    const fl_shape *x = &g->nodes[n->inputs[0]].shape;
    size_of(g, n->op == FL_OP_MAX_POOL ? &n->shape : x, size, sizeof size);
    grid_for(size, grid, sizeof grid);
    break;
  }
  case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM:
    updates_launch(g, grp, fname, buffers, host);
    return;
  default:
    break;
  }
  for (int i = 0; i < nins; i++) args[nargs++] = buffers[ins[i]];
  args[nargs++] = buffers[grp->kind == FL_GROUP_POOL_GRAD_RELU ? grp->root : n->id];
  if (n->op == FL_OP_DROPOUT_MASK) args[nargs++] = "rng";
  if (n->op == FL_OP_ARGMAX) {
    const fl_shape *in = &g->nodes[n->inputs[0]].shape;
    char outer[256], inner[256], count[600];
    product(g, in, 0, n->attr.axes[0], outer, sizeof outer);
    product(g, in, n->attr.axes[0] + 1, in->rank, inner, sizeof inner);
    snprintf(count, sizeof count, "%s * %s", outer, inner);
    grid_for(count, grid, sizeof grid);
  }
  if (n->op == FL_OP_MATMUL) { /* integer */
    char rows[128], cols[128], count[300];
    product(g, &n->shape, 0, 1, rows, sizeof rows);
    product(g, &n->shape, 1, 2, cols, sizeof cols);
    snprintf(count, sizeof count, "%s * %s", rows, cols);
    grid_for(count, grid, sizeof grid);
  }
  launch(g, grp, fname, args, nargs, grid, "1", "1", THREADS, 1, host);
}
