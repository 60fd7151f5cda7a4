/* emit_cuda.c - the CUDA backend: NAME.h, NAME_cuda.c (host) and NAME_kernels.cu from the same entries as the C backend.
 *
 * The generated API is the CPU one: the same entry points with the same
 * parameters (host pointers in, host pointers out), the same variables struct
 * and checkpoint names, so main.c (emit_main.c) and any caller serve both
 * builds, and checkpoints move between them. Underneath:
 *  - the variables live on the GPU in one buffer laid out as NAME_variables
 *    (offsetof gives each one's place); m->vars is the host's copy, refreshed
 *    for checkpoints and uploaded after init or load;
 *  - an entry runs the C backend's schedule (fusion groups, buffer lifetimes)
 *    with kernels_cuda.c's kernels: its buffers are planned by flrt_plan_arena
 *    into one device arena, after a mirror of the run's upload block (seed,
 *    dropout counter, fed values, the rows of a staged batch);
 *  - a run's work is issued by an `enqueue` function; flcu_run runs it eagerly
 *    the first time, then captures it as a CUDA graph and replays it (keyed by
 *    the batch size, the data's source and the buffers' addresses);
 *  - the data sets are uploaded once (NAME_upload_data); the driver stages each
 *    batch's rows (NAME_stage_rows) and passes NULL for the data feeds, which
 *    the run gathers on the GPU. */
#include <stdlib.h>
#include <string.h>

#include "codegen.h"
#include "emit_internal.h"
#include "flowc_rt.h"
#include "kernels_c.h"
#include "kernels_cuda.h"

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

/* ---- what the generator keeps --------------------------------------------- */

typedef struct {
  emit_model em;
  strbuf cu;                        /* NAME_kernels.cu */
  char (*kernels)[CUDA_NAME_MAX];   /* every __global__ function, for the name table */
  int nkernels, kernels_cap;
  char **group_names;               /* per entry and group: its kernel base name */
  int64_t *const_offset;            /* per node: byte offset in the constant block, or -1 */
  int64_t const_bytes;
  bool data;                        /* the train block reads a data set */
} cuda_model;

static const char *group_name(cuda_model *cm, int entry, int group) {
  int at = 0;
  for (int e = 0; e < entry; e++) at += cm->em.entries[e].sched->ngroups;
  return cm->group_names[at + group];
}

/* Whether node i is a data feed of entry e (images or labels of the data set). */
static bool is_data_feed(const cuda_model *cm, const emit_entry *e, int node) {
  const fl_train *t = &cm->em.g->train;
  if (t->data == FL_DATA_NONE || !e->fed[node]) return false;
  return node == t->images_node || node == t->labels_node;
}

static bool entry_has_data(const cuda_model *cm, const emit_entry *e) {
  for (int i = 0; i < e->nfeeds; i++)
    if (is_data_feed(cm, e, e->feeds[i])) return true;
  return false;
}

/* The value a node has in a run without a kernel of its own: constants. */
static bool is_constant(const fl_graph *g, int node) {
  return g->nodes[node].op == FL_OP_CONST || cuda_node_is_constant(g, node);
}

/* ---- kernels --------------------------------------------------------------- */

static int collect_kernels(cuda_model *cm) {
  const fl_graph *g = cm->em.g;
  int total = 0;
  for (int e = 0; e < cm->em.nentries; e++) total += cm->em.entries[e].sched->ngroups;
  cm->group_names = xcalloc((size_t)total + 1, sizeof(char *));
  cuda_emit_preamble(&cm->cu);
  if (cm->data) {
    sb_printf(&cm->cu,
              "/* Rows of an uploaded data set into a batch: images as they are, labels one-hot. */\n"
              "extern \"C\" __global__ void flowc_gather_images(const float *__restrict__ images, const int *__restrict__ rows,\n"
              "                                                 float *__restrict__ out, unsigned count, unsigned features) {\n"
              "  FLOWC_FOR(i, count * features)\n    out[i] = images[(size_t)rows[i / features] * features + i %% features];\n}\n\n"
              "extern \"C\" __global__ void flowc_gather_onehot(const unsigned char *__restrict__ labels, const int *__restrict__ rows,\n"
              "                                                 float *__restrict__ out, unsigned count, unsigned classes) {\n"
              "  FLOWC_FOR(i, count * classes)\n    out[i] = labels[rows[i / classes]] == i %% classes ? 1.0f : 0.0f;\n}\n\n");
    cm->kernels = xcalloc(2, sizeof *cm->kernels);
    cm->kernels_cap = 2;
    snprintf(cm->kernels[cm->nkernels++], CUDA_NAME_MAX, "flowc_gather_images");
    snprintf(cm->kernels[cm->nkernels++], CUDA_NAME_MAX, "flowc_gather_onehot");
  }
  int at = 0;
  for (int e = 0; e < cm->em.nentries; e++) {
    const fl_schedule *s = cm->em.entries[e].sched;
    for (int gi = 0; gi < s->ngroups; gi++, at++) {
      const fl_group *grp = &s->groups[gi];
      char name[CUDA_NAME_MAX];
      if (grp->kind == FL_GROUP_SINGLE) kernel_function_name(g, grp->nodes[0], name, sizeof name);
      else snprintf(name, sizeof name, "%s", emit_fused_name(&cm->em, grp));
      cm->group_names[at] = strdup(name);
      if (!cm->group_names[at]) abort();
      bool seen = false;
      for (int k = 0; k < at && !seen; k++) seen = strcmp(cm->group_names[k], name) == 0;
      if (seen) continue;
      char (*found)[CUDA_NAME_MAX] = xcalloc((size_t)cuda_group_kernel_capacity(grp), sizeof *found);
      int nfound = 0;
      if (cuda_emit_group_kernels(g, grp, name, &cm->cu, found, &nfound)) {
        const fl_node *n = &g->nodes[grp->nodes[0]];
        fl_error(n->loc, "the CUDA backend has no kernel for %s", fl_op_name(n->op));
        free(found);
        return -1;
      }
      for (int k = 0; k < nfound; k++) {
        if (cm->nkernels == cm->kernels_cap) {
          cm->kernels_cap = cm->kernels_cap ? 2 * cm->kernels_cap : 64;
          cm->kernels = realloc(cm->kernels, (size_t)cm->kernels_cap * sizeof *cm->kernels);
          if (!cm->kernels) abort();
        }
        cuda_text(cm->kernels[cm->nkernels++], CUDA_NAME_MAX, "%s", found[k]);
      }
      free(found);
    }
  }
  return 0;
}

/* Constants (CONST nodes and fills of constant shape) that runs read, laid out
 * in one block uploaded when the GPU opens. */
static void plan_constants(cuda_model *cm) {
  const fl_graph *g = cm->em.g;
  cm->const_offset = xcalloc((size_t)g->nnodes, sizeof(int64_t));
  for (int i = 0; i < g->nnodes; i++) {
    cm->const_offset[i] = -1;
    bool used = false;
    for (int e = 0; e < cm->em.nentries && !used; e++)
      used = cm->em.entries[e].needed[i] && !cm->em.entries[e].fed[i];
    if (!used || !is_constant(g, i)) continue;
    cm->const_offset[i] = cm->const_bytes;
    cm->const_bytes += (int64_t)flrt_align((size_t)fl_shape_const_size(&g->nodes[i].shape) * fl_dtype_size(g->nodes[i].dtype));
  }
}

/* ---- the header ------------------------------------------------------------ */

static void emit_header(const cuda_model *cm, strbuf *sb) {
  const emit_model *em = &cm->em;
  const fl_graph *g = em->g;
  const char *p = em->prefix;
  char guard[128], shape[160];
  fl_c_identifier(p, guard, sizeof guard);
  for (char *c = guard; *c; c++)
    if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 'a' + 'A');
  sb_printf(sb, "/* %s.h - generated by flowc %s from %s for NVIDIA GPUs (CUDA). The API of the\n"
                " * model, the same as the CPU build's: create it, call its entry points (host memory in,\n"
                " * host memory out), save and load its variables. Do not edit. */\n",
            p, FLOWC_VERSION, em->opt->source_path ? em->opt->source_path : "a description");
  sb_printf(sb, "#ifndef %s_MODEL_H\n#define %s_MODEL_H\n\n", guard, guard);
  sb_printf(sb, "#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n\n#include \"flowc_rt.h\"\n\n");
  sb_printf(sb, "/* Every variable of the model, optimizer slots included; the GPU keeps a copy\n"
                " * with the same layout. */\ntypedef struct {\n");
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    if (n->op != FL_OP_VARIABLE) continue;
    int64_t count = fl_shape_const_size(&n->shape);
    sb_printf(sb, "  %s %s[%lld]; /* %s%s */\n", emit_ctype(n->dtype), em->var_names[i],
              (long long)(count > 0 ? count : 1), fl_dtype_name(n->dtype), fl_shape_str(g, &n->shape, shape, sizeof shape));
  }
  sb_printf(sb, "  char unused; /* keeps the struct valid for a model without variables */\n");
  sb_printf(sb, "} %s_variables;\n\n", p);
  sb_printf(sb, "/* The GPU's side of a model: its device, kernels and buffers (%s_cuda.c). */\n"
                "typedef struct %s_gpu %s_gpu;\n\n", p, p, p);
  sb_printf(sb, "typedef struct {\n  %s_variables vars; /* the host's copy: see %s_fetch_variables */\n", p, p);
  sb_printf(sb, "  uint64_t seed;         /* of initialisation and dropout */\n"
                "  uint64_t dropout_runs; /* runs that drew dropout masks: the RNG counter */\n"
                "  int64_t step;          /* training steps done (kept by the driver) */\n"
                "  int64_t consumed;      /* training examples consumed (kept by the driver) */\n"
                "  bool host_vars_stale;  /* the GPU's variables are newer (a training run changed them) */\n"
                "  bool gpu_vars_stale;   /* m->vars is newer (init, load, or set it after a change of yours) */\n"
                "  %s_gpu *gpu;           /* NULL until the first call that needs the GPU */\n"
                "  char error[1024];\n} %s;\n\n", p, p);
  sb_printf(sb, "/* Allocates a model with variables initialised from seed; NULL when out of memory.\n"
                " * The GPU is opened by the first call that needs it. */\n"
                "%s *%s_new(uint64_t seed);\nvoid %s_free(%s *m);\n"
                "/* (Re)initialises every variable and the counters from seed. */\n"
                "void %s_init(%s *m, uint64_t seed);\n"
                "/* The last error's message. */\nconst char *%s_error(const %s *m);\n"
                "/* Variables, step and counters to a safetensors file (atomically); the same file\n"
                " * the CPU build writes and reads. */\n"
                "int %s_save(%s *m, const char *path);\n"
                "/* Reads a checkpoint written by %s_save (of either build); refuses a mismatched or\n"
                " * damaged one. */\n"
                "int %s_load(%s *m, const char *path);\n\n",
            p, p, p, p, p, p, p, p, p, p, p, p, p);
  sb_printf(sb, "/* ---- CUDA only ---- */\n"
                "/* Copies the GPU's variables into m->vars (checkpoints do it themselves). */\n"
                "int %s_fetch_variables(%s *m);\n"
                "/* The GPU the model runs on (\"NVIDIA H100 80GB HBM3 (sm_90)\"); opens it. NULL on failure. */\n"
                "const char *%s_device(%s *m);\n"
                "/* Data sets on the GPU: %s_upload_data copies every split there once. After\n"
                " * %s_stage_rows (rows of a split, by index) or %s_stage_range (a slice), an entry\n"
                " * called with NULL for its data feeds (images and labels) reads that batch, gathered\n"
                " * on the GPU; its batch size must be the number of rows staged. */\n"
                "enum { %s_TRAIN_SPLIT = 0, %s_VALIDATION_SPLIT = 1, %s_TEST_SPLIT = 2 };\n"
                "int %s_upload_data(%s *m, const flrt_datasets *data);\n"
                "int %s_stage_rows(%s *m, int split, const int64_t *rows, int64_t count);\n"
                "int %s_stage_range(%s *m, int split, int64_t start, int64_t count);\n\n",
            p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p);
  for (int e = 0; e < em->nentries; e++) {
    emit_entry_doc(em, &em->entries[e], sb);
    sb_printf(sb, "int %s_%s(", p, em->entries[e].name);
    emit_entry_params(em, &em->entries[e], sb);
    sb_printf(sb, ");\n");
    sb_printf(sb, "/* Floating-point operations of one run at that batch size (gemm_only: matmuls and\n"
                  " * convolutions alone), for GFLOP/s figures. */\n"
                  "double %s_%s_flops(int64_t batch, bool gemm_only);\n\n", p, em->entries[e].name);
  }
  sb_printf(sb, "#endif\n");
}

/* ---- the host source: preamble, state, lifecycle -------------------------------- */

/* The kernel source as a C string literal, a line per line. */
static void emit_string_literal(const char *text, strbuf *sb) {
  sb_printf(sb, "  \"");
  for (const char *c = text; *c; c++) {
    if (*c == '\n') {
      sb_printf(sb, "\\n\"%s", c[1] ? "\n  \"" : "");
      continue;
    }
    if (*c == '"' || *c == '\\') sb_printf(sb, "\\%c", *c);
    else if (*c == '\t') sb_printf(sb, "\\t");
    else if ((unsigned char)*c < 32) sb_printf(sb, "\\%03o", (unsigned char)*c);
    else sb_printf(sb, "%c", *c);
  }
  if (text[0] && text[strlen(text) - 1] != '\n') sb_printf(sb, "\"");
  sb_printf(sb, ";\n\n");
}

static void emit_state(const cuda_model *cm, strbuf *sb) {
  const emit_model *em = &cm->em;
  const char *p = em->prefix;
  sb_printf(sb, "/* The kernels (%s_kernels.cu), compiled by NVRTC for the GPU at start-up. */\n"
                "static const char kernel_source[] =\n", p);
  emit_string_literal(cm->cu.text, sb);
  sb_printf(sb, "#ifdef FLOWC_CUDA_AOT\n/* flowc build --nvcc: the same kernels compiled ahead of time (%s_fatbin.c). */\n"
                "extern const unsigned char %s_fatbin[];\nextern const size_t %s_fatbin_size;\n#endif\n\n", p, p, p);
  sb_printf(sb, "enum {\n");
  for (int k = 0; k < cm->nkernels; k++) sb_printf(sb, "  KERNEL_%s,\n", cm->kernels[k]);
  sb_printf(sb, "  KERNEL_COUNT\n};\nstatic const char *const kernel_names[KERNEL_COUNT + 1] = {\n");
  for (int k = 0; k < cm->nkernels; k++) sb_printf(sb, "  \"%s\",\n", cm->kernels[k]);
  sb_printf(sb, "  NULL\n};\n\nenum {\n");
  for (int e = 0; e < em->nentries; e++) sb_printf(sb, "  ENTRY_%s,\n", em->entries[e].name);
  sb_printf(sb, "  ENTRY_COUNT\n};\n\n");
  sb_printf(sb, "struct %s_gpu {\n"
                "  flcu_device dev;\n"
                "  CUfunction fn[KERNEL_COUNT + 1];\n"
                "  CUdeviceptr vars;             /* %s_variables, on the GPU */\n"
                "  CUdeviceptr consts;           /* constants and constant fills, uploaded once */\n"
                "  flcu_buffer arena;            /* a run's upload mirror, gathered batch and tensors */\n"
                "  flcu_host_buffer upload, download; /* page-locked: what a run reads and returns */\n"
                "  CUdeviceptr images[3], labels[3]; /* uploaded splits (train, validation, test) */\n"
                "  int64_t split_n[3];\n"
                "  int staged_split;             /* the split of the staged batch, or -1 */\n"
                "  int64_t staged_count, staged_cap;\n"
                "  int32_t *staged_rows;\n"
                "  uint64_t generation;          /* bumped when a buffer moves: captured graphs go stale */\n"
                "  flcu_graph_cache graphs[ENTRY_COUNT + 1];\n"
                "  char description[160];\n"
                "};\n\n"
                "/* A kernel's function, inside enqueue functions (which have `gpu`). */\n"
                "#define FN(name) (gpu->fn[KERNEL_##name])\n\n", p, p);
}

/* NAME_init: the C backend's initialisation on the host copy, then marking it
 * newer than the GPU's. The C backend's text is reused as it is, under the
 * name NAME_host_init, through a typedef (static by its prior declaration). */
static int emit_lifecycle(const cuda_model *cm, strbuf *sb) {
  const emit_model *em = &cm->em;
  const fl_graph *g = em->g;
  const char *p = em->prefix;
  /* constants: those runs read, and the initial values of variables */
  bool *arrays = xcalloc((size_t)g->nnodes, sizeof(bool));
  for (int i = 0; i < g->nnodes; i++) {
    if (cm->const_offset[i] >= 0) arrays[i] = true;
    if (g->nodes[i].op == FL_OP_VARIABLE && g->nodes[i].attr.init >= 0) arrays[g->nodes[i].attr.init] = true;
  }
  for (int i = 0; i < g->nnodes; i++)
    if (arrays[i] && g->nodes[i].op == FL_OP_CONST) emit_const_array(g, i, sb);
  free(arrays);
  sb_printf(sb, "typedef %s %s_host;\nstatic void %s_host_init(%s_host *m, uint64_t seed);\n", p, p, p, p);
  emit_model host = *em;
  cuda_text(host.prefix, sizeof host.prefix, "%s_host", p);
  if (emit_init_function(&host, sb)) return -1;
  sb_printf(sb, "void %s_init(%s *m, uint64_t seed) {\n  %s_host_init(m, seed);\n  m->gpu_vars_stale = true;\n"
                "  m->host_vars_stale = false;\n}\n\n", p, p, p);
  sb_printf(sb, "%s *%s_new(uint64_t seed) {\n  %s *m = calloc(1, sizeof *m);\n  if (!m) return NULL;\n"
                "  %s_init(m, seed);\n  return m;\n}\n\n", p, p, p, p);
  sb_printf(sb, "const char *%s_error(const %s *m) { return m->error; }\n\n", p, p);
  sb_printf(sb, "static int fail(%s *m, const char *fmt, ...) {\n  va_list ap;\n  va_start(ap, fmt);\n"
                "  vsnprintf(m->error, sizeof m->error, fmt, ap);\n  va_end(ap);\n  return -1;\n}\n\n", p);
  sb_printf(sb, "static int gpu_failed(%s *m, const char *what) {\n"
                "  return fail(m, \"%s_%%s: %%s\", what, m->gpu->dev.error);\n}\n\n", p, p);
  sb_printf(sb, "\n/* The constant block: every constant a run reads, and fills of constant shape. */\n"
                "enum { CONST_BYTES = %lld };\n"
                "static void fill_constants(unsigned char *block) {\n  (void)block;\n", (long long)(cm->const_bytes + 64));
  for (int i = 0; i < g->nnodes; i++) {
    if (cm->const_offset[i] < 0) continue;
    const fl_node *n = &g->nodes[i];
    const char *type = emit_ctype(n->dtype);
    if (n->op == FL_OP_CONST) {
      sb_printf(sb, "  memcpy(block + %lld, c%d, sizeof c%d);\n", (long long)cm->const_offset[i], i, i);
    } else {
      char lit[64];
      if (n->dtype == FL_F32) emit_float(lit, sizeof lit, n->attr.value);
      else snprintf(lit, sizeof lit, "(%s)%lld", type, (long long)n->attr.value);
      sb_printf(sb, "  for (size_t i = 0; i < %lld; i++) { /* %%%d fill */\n    const %s v = %s;\n"
                    "    memcpy(block + %lld + i * sizeof v, &v, sizeof v);\n  }\n",
                (long long)fl_shape_const_size(&n->shape), i, type, lit, (long long)cm->const_offset[i]);
    }
  }
  sb_printf(sb, "}\n\n");
  /* opening and closing the GPU */
  sb_printf(sb, "/* Opens the GPU at the first call that needs it, and uploads the variables\n"
                " * whenever the host's copy is newer. */\n"
                "static int gpu_ready(%s *m) {\n  if (!m->gpu) {\n"
                "    %s_gpu *gpu = calloc(1, sizeof *gpu);\n"
                "    if (!gpu)\n      return fail(m, \"%s: out of memory\");\n"
                "    flcu_program program = {\"%s_kernels.cu\", kernel_source, flcu_header_names, flcu_header_texts,\n"
                "                            flcu_header_count, NULL, 0};\n"
                "#ifdef FLOWC_CUDA_AOT\n    program.fatbin = %s_fatbin;\n    program.fatbin_size = %s_fatbin_size;\n#endif\n"
                "    if (flcu_open(&gpu->dev, &program)) {\n      fail(m, \"%%s\", gpu->dev.error);\n      free(gpu);\n      return -1;\n    }\n"
                "    m->gpu = gpu;\n    gpu->staged_split = -1;\n"
                "    unsigned char *block = calloc(1, CONST_BYTES);\n"
                "    if (!block)\n      return fail(m, \"%s: out of memory\");\n    fill_constants(block);\n"
                "    int status = flcu_alloc(&gpu->dev, &gpu->vars, sizeof(%s_variables)) ||\n"
                "                 flcu_alloc(&gpu->dev, &gpu->consts, CONST_BYTES) ||\n"
                "                 flcu_copy_in(&gpu->dev, gpu->consts, block, CONST_BYTES);\n"
                "    free(block);\n"
                "    for (int k = 0; k < KERNEL_COUNT && !status; k++)\n"
                "      status = flcu_function(&gpu->dev, kernel_names[k], &gpu->fn[k]);\n"
                "    if (status) {\n      fail(m, \"%%s\", gpu->dev.error);\n      %s_free_gpu(m);\n      return -1;\n    }\n"
                "    flcu_describe(&gpu->dev, gpu->description, sizeof gpu->description);\n"
                "    m->gpu_vars_stale = true;\n  }\n"
                "  if (m->gpu_vars_stale) {\n"
                "    if (flcu_copy_in(&m->gpu->dev, m->gpu->vars, &m->vars, sizeof m->vars))\n"
                "      return gpu_failed(m, \"upload of the variables\");\n"
                "    m->gpu_vars_stale = false;\n    m->host_vars_stale = false;\n  }\n  return 0;\n}\n\n",
            p, p, p, p, p, p, p, p, p);
  sb_printf(sb, "const char *%s_device(%s *m) {\n  return gpu_ready(m) ? NULL : m->gpu->description;\n}\n\n", p, p);
  sb_printf(sb, "void %s_free(%s *m) {\n  if (!m) return;\n  %s_free_gpu(m);\n  free(m);\n}\n\n", p, p, p);
  sb_printf(sb, "int %s_fetch_variables(%s *m) {\n"
                "  if (!m->gpu || !m->host_vars_stale) return 0;\n"
                "  if (flcu_copy_out(&m->gpu->dev, &m->vars, m->gpu->vars, sizeof m->vars))\n"
                "    return gpu_failed(m, \"download of the variables\");\n"
                "  m->host_vars_stale = false;\n  return 0;\n}\n\n", p, p);
  /* checkpoints: the C backend's names, layout and metadata; the variables
   * come from the device before a save and go back before the next run */
  char before_save[160];
  snprintf(before_save, sizeof before_save, "  if (%s_fetch_variables(m)) return -1;\n", p);
  emit_checkpoint_functions(em, before_save,
                            "  m->gpu_vars_stale = true; /* uploaded before the next run */\n"
                            "  m->host_vars_stale = false;\n",
                            sb);
  return 0;
}

/* Freeing the GPU's side, and the data set functions. */
static void emit_data_functions(const cuda_model *cm, strbuf *sb) {
  const emit_model *em = &cm->em;
  const fl_graph *g = em->g;
  const fl_train *t = &g->train;
  const char *p = em->prefix;
  sb_printf(sb, "static void %s_free_gpu(%s *m) {\n  %s_gpu *gpu = m->gpu;\n  if (!gpu) return;\n"
                "  for (int e = 0; e < ENTRY_COUNT; e++)\n    flcu_graphs_clear(&gpu->dev, &gpu->graphs[e]);\n"
                "  for (int s = 0; s < 3; s++) {\n    flcu_free(&gpu->dev, &gpu->images[s]);\n    flcu_free(&gpu->dev, &gpu->labels[s]);\n  }\n"
                "  flcu_release(&gpu->dev, &gpu->arena);\n  flcu_release_host(&gpu->dev, &gpu->upload);\n"
                "  flcu_release_host(&gpu->dev, &gpu->download);\n  flcu_free(&gpu->dev, &gpu->vars);\n"
                "  flcu_free(&gpu->dev, &gpu->consts);\n  flcu_close(&gpu->dev);\n  free(gpu->staged_rows);\n"
                "  free(gpu);\n  m->gpu = NULL;\n  m->gpu_vars_stale = true;\n}\n\n", p, p, p);
  /* The feature and class counts the data feeds expect. */
  long long features = -1, classes = -1;
  if (t->images_node >= 0) {
    const fl_shape *s = &g->nodes[t->images_node].shape;
    features = 1;
    for (int j = 1; j < s->rank; j++) features *= s->dims[j].sym < 0 ? s->dims[j].coef : -1;
  }
  if (t->labels_node >= 0) {
    const fl_shape *s = &g->nodes[t->labels_node].shape;
    classes = s->rank == 2 && s->dims[1].sym < 0 ? s->dims[1].coef : -1;
  }
  sb_printf(sb, "/* Drops the graphs that captured the old addresses of a buffer that moved. */\n"
                "static void buffers_moved(%s_gpu *gpu) {\n  gpu->generation++;\n"
                "  for (int e = 0; e < ENTRY_COUNT; e++)\n    flcu_graphs_clear(&gpu->dev, &gpu->graphs[e]);\n}\n\n", p);
  sb_printf(sb, "int %s_upload_data(%s *m, const flrt_datasets *data) {\n  if (gpu_ready(m)) return -1;\n"
                "  %s_gpu *gpu = m->gpu;\n"
                "  const flrt_split *splits[3] = {&data->train, &data->validation, &data->test};\n"
                "  buffers_moved(gpu);\n  gpu->staged_split = -1;\n"
                "  for (int s = 0; s < 3; s++) {\n"
                "    const flrt_split *split = splits[s];\n"
                "    flcu_free(&gpu->dev, &gpu->images[s]);\n    flcu_free(&gpu->dev, &gpu->labels[s]);\n"
                "    gpu->split_n[s] = 0;\n    if (split->n <= 0) continue;\n", p, p, p);
  if (features > 0)
    sb_printf(sb, "    if (split->features != %lld)\n"
                  "      return fail(m, \"%s_upload_data: the model's images have %lld values, the data set's %%lld\",\n"
                  "                  (long long)split->features);\n", features, p, features);
  if (classes > 0)
    sb_printf(sb, "    if (split->classes != %lld)\n"
                  "      return fail(m, \"%s_upload_data: the model has %lld classes, the data set %%d\", split->classes);\n",
              classes, p, classes);
  /* The host keeps bytes; the device gets the floats batches are made of. */
  sb_printf(sb, "    const size_t image_bytes = (size_t)split->n * (size_t)split->features * sizeof(float);\n"
                "    float *staging = malloc(image_bytes);\n"
                "    if (!staging)\n      return fail(m, \"%s_upload_data: out of memory staging %%zu bytes\", image_bytes);\n"
                "    flrt_split_slice(split, 0, split->n, staging, NULL);\n"
                "    const int failed = flcu_alloc(&gpu->dev, &gpu->images[s], image_bytes) ||\n"
                "        flcu_alloc(&gpu->dev, &gpu->labels[s], (size_t)split->n) ||\n"
                "        flcu_copy_in(&gpu->dev, gpu->images[s], staging, image_bytes) ||\n"
                "        flcu_copy_in(&gpu->dev, gpu->labels[s], split->labels, (size_t)split->n);\n"
                "    free(staging);\n"
                "    if (failed)\n      return gpu_failed(m, \"upload_data\");\n", p);
  sb_printf(sb, "    gpu->split_n[s] = split->n;\n  }\n  return 0;\n}\n\n");
  sb_printf(sb, "static int stage(%s *m, const char *who, int split, int64_t count) {\n"
                "  if (!m->gpu || split < 0 || split > 2 || !m->gpu->images[split])\n"
                "    return fail(m, \"%s_%%s: split %%d is not on the GPU (%s_upload_data uploads the data sets)\", who, split);\n"
                "  %s_gpu *gpu = m->gpu;\n"
                "  if (count < 1 || count > INT32_MAX)\n    return fail(m, \"%s_%%s: %%lld rows\", who, (long long)count);\n"
                "  if (count > gpu->staged_cap) {\n"
                "    int32_t *grown = realloc(gpu->staged_rows, (size_t)count * sizeof *grown);\n"
                "    if (!grown)\n      return fail(m, \"%s_%%s: out of memory\", who);\n"
                "    gpu->staged_rows = grown;\n    gpu->staged_cap = count;\n  }\n"
                "  gpu->staged_split = split;\n  gpu->staged_count = count;\n  return 0;\n}\n\n",
            p, p, p, p, p, p);
  sb_printf(sb, "int %s_stage_rows(%s *m, int split, const int64_t *rows, int64_t count) {\n"
                "  if (stage(m, \"stage_rows\", split, count)) return -1;\n"
                "  for (int64_t r = 0; r < count; r++) {\n"
                "    if (rows[r] < 0 || rows[r] >= m->gpu->split_n[split]) {\n      m->gpu->staged_split = -1;\n"
                "      return fail(m, \"%s_stage_rows: row %%lld is outside the split's %%lld\", (long long)rows[r],\n"
                "                  (long long)m->gpu->split_n[split]);\n    }\n"
                "    m->gpu->staged_rows[r] = (int32_t)rows[r];\n  }\n  return 0;\n}\n\n", p, p, p);
  sb_printf(sb, "int %s_stage_range(%s *m, int split, int64_t start, int64_t count) {\n"
                "  if (stage(m, \"stage_range\", split, count)) return -1;\n"
                "  if (start < 0 || start + count > m->gpu->split_n[split]) {\n    m->gpu->staged_split = -1;\n"
                "    return fail(m, \"%s_stage_range: rows %%lld to %%lld are outside the split's %%lld\", (long long)start,\n"
                "                (long long)(start + count), (long long)m->gpu->split_n[split]);\n  }\n"
                "  for (int64_t r = 0; r < count; r++)\n    m->gpu->staged_rows[r] = (int32_t)(start + r);\n"
                "  return 0;\n}\n\n", p, p, p);
  sb_printf(sb, "/* Grows the arena and the staging buffers of a run; a move invalidates graphs. */\n"
                "static int reserve(%s *m, const char *who, size_t arena, size_t upload, size_t download) {\n"
                "  %s_gpu *gpu = m->gpu;\n"
                "  const int a = flcu_reserve(&gpu->dev, &gpu->arena, arena);\n"
                "  const int u = a < 0 ? -1 : flcu_reserve_host(&gpu->dev, &gpu->upload, upload);\n"
                "  const int d = u < 0 ? -1 : flcu_reserve_host(&gpu->dev, &gpu->download, download);\n"
                "  if (a < 0 || u < 0 || d < 0)\n    return gpu_failed(m, who);\n"
                "  if (a > 0 || u > 0 || d > 0)\n    buffers_moved(gpu);\n  return 0;\n}\n\n", p, p);
  sb_printf(sb, "/* What an enqueue function gets: the model and the run's plan. */\n"
                "typedef struct {\n  %s *m;\n  const void *plan;\n} run_call;\n\n", p);
}

/* ---- entries ------------------------------------------------------------------- */

/* The arena's buffers for one run: every materialized node that is not a
 * constant, then each group's scratch; with the groups that write and last
 * read them. */
typedef struct {
  int count;
  int *node; /* the node, or -(group + 1) for a group's scratch */
  int *first, *last;
} buffer_list;

/* Snapshots of assignments' sources are numbered after every group's
 * scratch: -(ngroups + 1 + node). */
static buffer_list list_buffers(const fl_graph *g, const emit_entry *e) {
  const fl_schedule *s = e->sched;
  buffer_list b = {0};
  int cap = 2 * g->nnodes + s->ngroups + 1;
  b.node = xcalloc((size_t)cap, sizeof(int));
  b.first = xcalloc((size_t)cap, sizeof(int));
  b.last = xcalloc((size_t)cap, sizeof(int));
  for (int i = 0; i < g->nnodes; i++)
    if (s->materialized[i] && !is_constant(g, i)) {
      b.node[b.count] = i;
      b.first[b.count] = s->first[i];
      b.last[b.count++] = s->last[i];
    }
  for (int gi = 0; gi < s->ngroups; gi++) {
    char scratch[512];
    cuda_group_scratch_bytes(g, &s->groups[gi], scratch, sizeof scratch);
    if (strcmp(scratch, "0") == 0) continue;
    b.node[b.count] = -(gi + 1);
    b.first[b.count] = b.last[b.count] = gi;
    b.count++;
  }
  /* alive from the end of the pure groups to the end of the run */
  for (int i = 0; i < g->nnodes; i++)
    if (e->needed[i] && !e->fed[i] && g->nodes[i].op == FL_OP_ASSIGN && emit_assign_needs_snapshot(g, e, i)) {
      b.node[b.count] = -(s->ngroups + 1 + i);
      b.first[b.count] = s->npure;
      b.last[b.count++] = s->ngroups;
    }
  return b;
}

/* The assignment whose snapshot buffer entry i is, or -1. */
static int snapshot_of(const buffer_list *b, const fl_schedule *s, int i) {
  return b->node[i] <= -(s->ngroups + 1) ? -b->node[i] - 1 - s->ngroups : -1;
}

/* Bytes of a variable (what an assignment copies). */
static long long variable_bytes(const fl_graph *g, int var) {
  return (long long)(fl_shape_const_size(&g->nodes[var].shape) * (int64_t)fl_dtype_size(g->nodes[var].dtype));
}

/* The assignments before node `before` (all that are left for -1), in node
 * order, from `*next` on: side effects run in node order, as on the CPU. */
static void emit_assigns(const fl_graph *g, const emit_entry *e, const buffer_list *b, int before, int *next,
                         strbuf *sb) {
  for (; *next < g->nnodes && (before < 0 || *next < before); (*next)++) {
    const int i = *next;
    const fl_node *nd = &g->nodes[i];
    if (!e->needed[i] || e->fed[i] || nd->op != FL_OP_ASSIGN) continue;
    char source[64];
    snprintf(source, sizeof source, "t%d", i);
    for (int k = 0; k < b->count; k++)
      if (snapshot_of(b, e->sched, k) == i) snprintf(source, sizeof source, "arena + p->offsets[%d]", k);
    sb_printf(sb, "  flcu_copy(d, t%d, %s, %lld); /* %%%d assign */\n", nd->inputs[0], source,
              variable_bytes(g, nd->inputs[0]), i);
  }
}

static void free_buffers(buffer_list *b) {
  free(b->node);
  free(b->first);
  free(b->last);
}

/* Declares `const int64_t SYM = p->SYM;` (or from parameters) for the symbols. */
static void declare_syms(const fl_graph *g, const emit_entry *e, const char *type, const char *from, strbuf *sb) {
  for (int s = 0; s < g->nsyms; s++)
    if (e->syms[s]) {
      char name[64];
      fl_sym_c_name(g, s, name, sizeof name);
      sb_printf(sb, "  const %s %s = (%s)%s%s;\n  (void)%s;\n", type, name, type, from, name, name);
    }
}

static void size_expr(const fl_graph *g, const fl_shape *s, char *buf, size_t cap) {
  char raw[200];
  emit_size(g, s, raw, sizeof raw);
  snprintf(buf, cap, "(int64_t)(%s)", raw);
}

static void emit_cuda_entry(cuda_model *cm, int index, strbuf *sb) {
  emit_model *em = &cm->em;
  const fl_graph *g = em->g;
  const emit_entry *e = &em->entries[index];
  const fl_schedule *s = e->sched;
  const char *p = em->prefix, *name = e->name;
  const bool data = entry_has_data(cm, e);
  char size[256], label[96];
  buffer_list b = list_buffers(g, e);
  int *slot = xcalloc((size_t)g->nnodes, sizeof(int));
  for (int i = 0; i < b.count; i++)
    if (b.node[i] >= 0) slot[b.node[i]] = i;
  const int nbuf = b.count > 0 ? b.count : 1;

  /* the plan: where everything goes, as a function of the symbols */
  sb_printf(sb, "/* ---- %s_%s ---- */\n\n", p, name);
  sb_printf(sb, "typedef struct {\n");
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      char sym[64];
      fl_sym_c_name(g, k, sym, sizeof sym);
      sb_printf(sb, "  int64_t %s;\n", sym);
    }
  sb_printf(sb, "  int source;        /* -1: data feeds from host memory; else the staged split */\n"
                "  size_t upload_bytes, download_bytes, arena_bytes;\n"
                "  int64_t largest;   /* elements of the largest tensor (32-bit kernels) */\n"
                "  size_t up_rng, up_rows, at_upload;\n"
                "  size_t offsets[%d];\n", nbuf);
  for (int i = 0; i < e->nfeeds; i++) {
    int f = e->feeds[i];
    if (is_data_feed(cm, e, f)) sb_printf(sb, "  size_t up_t%d, at_t%d; /* from the host, or gathered */\n", f, f);
    else sb_printf(sb, "  size_t up_t%d;\n", f);
  }
  for (int i = 0; i < e->nfetches; i++) sb_printf(sb, "  size_t down%d;\n", i);
  sb_printf(sb, "} %s_plan;\n\n", name);

  sb_printf(sb, "static void %s_plan_make(%s_plan *p", name, name);
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      char sym[64];
      fl_sym_c_name(g, k, sym, sizeof sym);
      sb_printf(sb, ", int64_t %s", sym);
    }
  sb_printf(sb, ", int source) {\n  memset(p, 0, sizeof *p);\n  p->source = source;\n");
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      char sym[64];
      fl_sym_c_name(g, k, sym, sizeof sym);
      sb_printf(sb, "  p->%s = %s;\n", sym, sym);
    }
  sb_printf(sb, "  size_t up = 0, down = 0, at = 0;\n  int64_t largest = 1;\n");
  sb_printf(sb, "  p->up_rng = up;\n  up += flrt_align(2 * sizeof(uint64_t)); /* seed, dropout counter */\n");
  int rows_feed = -1;
  for (int i = 0; i < e->nfeeds; i++) {
    int f = e->feeds[i];
    const fl_node *n = &g->nodes[f];
    size_expr(g, &n->shape, size, sizeof size);
    emit_node_label(g, f, label, sizeof label);
    if (is_data_feed(cm, e, f)) {
      if (rows_feed < 0) rows_feed = f;
      sb_printf(sb, "  if (source < 0) { /* %s from host memory */\n    p->up_t%d = up;\n"
                    "    up += flrt_align((size_t)%s * sizeof(%s));\n  }\n", label, f, size, emit_ctype(n->dtype));
    } else {
      sb_printf(sb, "  p->up_t%d = up; /* %s */\n  up += flrt_align((size_t)%s * sizeof(%s));\n", f, label, size,
                emit_ctype(n->dtype));
    }
    sb_printf(sb, "  if (%s > largest) largest = %s;\n", size, size);
  }
  char rows[256] = "0";
  if (rows_feed >= 0) {
    const fl_shape *rs = &g->nodes[rows_feed].shape;
    fl_shape first = {.rank = 1, .dims = {rs->dims[0]}};
    size_expr(g, &first, rows, sizeof rows);
    sb_printf(sb, "  if (source >= 0) { /* the staged rows */\n    p->up_rows = up;\n"
                  "    up += flrt_align((size_t)%s * sizeof(int32_t));\n  }\n", rows);
  }
  sb_printf(sb, "  p->upload_bytes = up;\n  p->at_upload = at;\n  at += flrt_align(up);\n");
  for (int i = 0; i < e->nfeeds; i++) {
    int f = e->feeds[i];
    if (!is_data_feed(cm, e, f)) continue;
    size_expr(g, &g->nodes[f].shape, size, sizeof size);
    sb_printf(sb, "  if (source >= 0) { /* %%%d gathered from the split */\n    p->at_t%d = at;\n"
                  "    at += flrt_align((size_t)%s * sizeof(%s));\n  }\n", f, f, size, emit_ctype(g->nodes[f].dtype));
  }
  sb_printf(sb, "  enum { BUFFERS = %d };\n  static const int first[%d] = {", b.count, nbuf);
  for (int i = 0; i < b.count; i++) sb_printf(sb, "%s%d", i ? ", " : "", b.first[i]);
  sb_printf(sb, "%s};\n  static const int last[%d] = {", b.count ? "" : "0", nbuf);
  for (int i = 0; i < b.count; i++) sb_printf(sb, "%s%d", i ? ", " : "", b.last[i]);
  sb_printf(sb, "%s};\n  size_t sizes[%d] = {0};\n", b.count ? "" : "0", nbuf);
  for (int i = 0; i < b.count; i++) {
    if (b.node[i] >= 0) {
      const fl_node *nd = &g->nodes[b.node[i]];
      size_expr(g, &nd->shape, size, sizeof size);
      emit_node_label(g, b.node[i], label, sizeof label);
      sb_printf(sb, "  sizes[%d] = (size_t)%s * sizeof(%s); /* %%%d %s */\n  if (%s > largest) largest = %s;\n", i,
                size, emit_ctype(nd->dtype), b.node[i], label, size, size);
    } else if (snapshot_of(&b, s, i) >= 0) {
      const int assign = snapshot_of(&b, s, i);
      sb_printf(sb, "  sizes[%d] = %lld; /* snapshot for %%%d assign */\n", i,
                variable_bytes(g, g->nodes[assign].inputs[0]), assign);
    } else {
      char scratch[512];
      cuda_group_scratch_bytes(g, &s->groups[-b.node[i] - 1], scratch, sizeof scratch);
      sb_printf(sb, "  sizes[%d] = %s; /* scratch of kernel %s */\n"
                    "  if ((int64_t)(sizes[%d] / sizeof(float)) > largest) largest = (int64_t)(sizes[%d] / sizeof(float));\n",
                i, scratch, group_name(cm, index, -b.node[i] - 1), i, i);
    }
  }
  sb_printf(sb, "  const size_t planned = flrt_plan_arena(sizes, first, last, BUFFERS, p->offsets);\n"
                "  for (int i = 0; i < BUFFERS; i++)\n    p->offsets[i] += at;\n"
                "  p->arena_bytes = at + planned;\n");
  for (int i = 0; i < e->nfetches; i++) {
    const fl_node *n = &g->nodes[e->fetches[i]];
    size_expr(g, &n->shape, size, sizeof size);
    sb_printf(sb, "  p->down%d = down;\n  down += flrt_align((size_t)%s * sizeof(%s));\n", i, size,
              emit_ctype(n->dtype));
  }
  sb_printf(sb, "  p->download_bytes = down;\n  p->largest = largest;\n}\n\n");

  /* enqueue: the run's work on the stream */
  sb_printf(sb, "/* Issues one run of %s_%s on the GPU's stream (captured into a graph after the\n"
                " * first run of a shape, then replayed). */\n"
                "static void %s_enqueue(void *context) {\n  const run_call *call = context;\n"
                "  const %s_plan *p = call->plan;\n  %s *m = call->m;\n  %s_gpu *gpu = m->gpu;\n"
                "  flcu_device *d = &gpu->dev;\n", p, name, name, name, p, p);
  declare_syms(g, e, "unsigned", "p->", sb);
  sb_printf(sb, "  const CUdeviceptr arena = gpu->arena.ptr, vars = gpu->vars, consts = gpu->consts;\n"
                "  const CUdeviceptr up = arena + p->at_upload, rng = up + p->up_rng;\n"
                "  unsigned char *down = gpu->download.ptr;\n"
                "  (void)vars;\n  (void)consts;\n  (void)rng;\n  (void)down;\n"
                "  flcu_upload(d, up, gpu->upload.ptr, p->upload_bytes);\n");
  /* buffers */
  char **buffers = xcalloc((size_t)g->nnodes, sizeof(char *));
  for (int i = 0; i < g->nnodes; i++) {
    if (!e->needed[i]) continue;
    const fl_node *nd = &g->nodes[i];
    buffers[i] = xcalloc(32, 1);
    snprintf(buffers[i], 32, "t%d", i);
    if (e->fed[i]) {
      if (is_data_feed(cm, e, i))
        sb_printf(sb, "  const CUdeviceptr t%d = p->source < 0 ? up + p->up_t%d : arena + p->at_t%d;\n", i, i, i);
      else sb_printf(sb, "  const CUdeviceptr t%d = up + p->up_t%d;\n", i, i);
    } else if (nd->op == FL_OP_VARIABLE) {
      sb_printf(sb, "  const CUdeviceptr t%d = vars + offsetof(%s_variables, %s);\n", i, p, em->var_names[i]);
    } else if (cm->const_offset[i] >= 0) {
      sb_printf(sb, "  const CUdeviceptr t%d = consts + %lld;\n", i, (long long)cm->const_offset[i]);
    } else if (nd->op == FL_OP_RESHAPE || nd->op == FL_OP_ASSIGN) {
      sb_printf(sb, "  const CUdeviceptr t%d = t%d; /* %s: the same data */\n", i, nd->inputs[nd->op == FL_OP_ASSIGN ? 1 : 0],
                fl_op_name(nd->op));
    } else if (s->materialized[i]) {
      sb_printf(sb, "  const CUdeviceptr t%d = arena + p->offsets[%d];\n", i, slot[i]);
    } else {
      free(buffers[i]); /* computed inside a fused kernel: no buffer */
      buffers[i] = NULL;
      continue;
    }
    sb_printf(sb, "  (void)t%d;\n", i);
  }
  if (data) {
    sb_printf(sb, "  if (p->source >= 0) { /* the staged rows of an uploaded split, gathered */\n"
                  "    CUdeviceptr images = gpu->images[p->source], labels = gpu->labels[p->source];\n"
                  "    CUdeviceptr rows = up + p->up_rows;\n    unsigned count = (unsigned)%s;\n", rows);
    for (int i = 0; i < e->nfeeds; i++) {
      int f = e->feeds[i];
      if (!is_data_feed(cm, e, f)) continue;
      const fl_shape *fs = &g->nodes[f].shape;
      fl_shape rest = *fs;
      rest.rank = fs->rank - 1;
      for (int j = 1; j < fs->rank; j++) rest.dims[j - 1] = fs->dims[j];
      emit_size(g, &rest, size, sizeof size);
      bool images = f == g->train.images_node;
      sb_printf(sb, "    {\n      CUdeviceptr out = t%d;\n      unsigned width = (unsigned)(%s);\n"
                    "      void *args[] = {&%s, &rows, &out, &count, &width};\n"
                    "      flcu_launch(d, FN(%s), \"%s\", flcu_blocks((int64_t)count * width, 256), 1, 1, 256, 1, args);\n"
                    "    }\n", f, size, images ? "images" : "labels", images ? "flowc_gather_images" : "flowc_gather_onehot",
                images ? "flowc_gather_images" : "flowc_gather_onehot");
    }
    sb_printf(sb, "  }\n");
  }
  /* the kernels, in schedule order; fetches are downloaded after the pure
   * ones, snapshots taken, and the side effects (updates and assignments)
   * run in node order */
  int next_assign = 0;
  for (int gi = 0; gi <= s->ngroups; gi++) {
    if (gi == s->npure) {
      for (int i = 0; i < e->nfetches; i++) {
        const fl_node *n = &g->nodes[e->fetches[i]];
        size_expr(g, &n->shape, size, sizeof size);
        sb_printf(sb, "  flcu_download(d, down + p->down%d, t%d, (size_t)%s * sizeof(%s));\n", i, e->fetches[i], size,
                  emit_ctype(n->dtype));
      }
      for (int i = 0; i < b.count; i++) {
        const int assign = snapshot_of(&b, s, i);
        if (assign >= 0)
          sb_printf(sb, "  flcu_copy(d, arena + p->offsets[%d], t%d, %lld); /* snapshot for %%%d assign */\n", i,
                    g->nodes[assign].inputs[1], variable_bytes(g, g->nodes[assign].inputs[0]), assign);
      }
    }
    if (gi == s->ngroups) break;
    const fl_group *grp = &s->groups[gi];
    const int side_effect = fl_group_side_effect_node(g, grp);
    if (side_effect >= 0) emit_assigns(g, e, &b, side_effect, &next_assign, sb);
    char scratch[64] = "0";
    for (int i = 0; i < b.count; i++)
      if (b.node[i] == -(gi + 1)) snprintf(scratch, sizeof scratch, "arena + p->offsets[%d]", i);
    cuda_emit_group_launch(g, grp, group_name(cm, index, gi), (const char *const *)buffers, scratch, sb);
  }
  emit_assigns(g, e, &b, -1, &next_assign, sb);
  sb_printf(sb, "}\n\n");

  /* the entry point */
  bool side_effects = e->nruns > 0;
  for (int i = 0; i < g->nnodes; i++)
    if (e->needed[i] && !e->fed[i] && fl_op_has_side_effect(g->nodes[i].op)) side_effects = true;
  sb_printf(sb, "int %s_%s(", p, name);
  emit_entry_params(em, e, sb);
  sb_printf(sb, ") {\n");
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      char sym[64];
      fl_sym_c_name(g, k, sym, sizeof sym);
      sb_printf(sb, "  if (%s < 1)\n    return fail(m, \"%s_%s: %s must be at least 1, got %%lld\", (long long)%s);\n", sym,
                p, name, sym, sym);
    }
  sb_printf(sb, "  if (gpu_ready(m)) return -1;\n  %s_gpu *gpu = m->gpu;\n  int source = -1;\n", p);
  if (data) {
    strbuf all = {0}, any = {0};
    for (int i = 0; i < e->nfeeds; i++)
      if (is_data_feed(cm, e, e->feeds[i])) {
        emit_node_label(g, e->feeds[i], label, sizeof label);
        sb_printf(&all, "%s!feed_%s", all.len ? " && " : "", label);
        sb_printf(&any, "%s!feed_%s", any.len ? " || " : "", label);
      }
    sb_printf(sb, "  if (%s) {\n    if (!(%s))\n"
                  "      return fail(m, \"%s_%s: give every data feed, or NULL for each to use the batch staged on the GPU\");\n"
                  "    if (gpu->staged_split < 0 || gpu->staged_count != %s)\n"
                  "      return fail(m, \"%s_%s: no batch of %%lld rows is staged on the GPU (%s_stage_rows)\", (long long)%s);\n"
                  "    source = gpu->staged_split;\n  }\n",
              any.text, all.text, p, name, rows, p, name, p, rows);
    sb_free(&all);
    sb_free(&any);
  }
  sb_printf(sb, "  %s_plan plan;\n  %s_plan_make(&plan", name, name);
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      char sym[64];
      fl_sym_c_name(g, k, sym, sizeof sym);
      sb_printf(sb, ", %s", sym);
    }
  sb_printf(sb, ", source);\n");
  sb_printf(sb, "  if (plan.largest > INT32_MAX)\n"
                "    return fail(m, \"%s_%s: a tensor of %%lld elements is beyond the CUDA kernels' 32-bit indices; \"\n"
                "                   \"use a smaller batch\", (long long)plan.largest);\n"
                "  if (reserve(m, \"%s\", plan.arena_bytes, plan.upload_bytes, plan.download_bytes)) return -1;\n"
                "  unsigned char *up = gpu->upload.ptr;\n"
                "  const uint64_t rng[2] = {m->seed, m->dropout_runs};\n"
                "  memcpy(up + plan.up_rng, rng, sizeof rng);\n", p, name, name);
  for (int i = 0; i < e->nfeeds; i++) {
    int f = e->feeds[i];
    const fl_node *n = &g->nodes[f];
    emit_node_label(g, f, label, sizeof label);
    size_expr(g, &n->shape, size, sizeof size);
    const char *from = n->shape.rank == 0 ? "&" : "";
    if (is_data_feed(cm, e, f))
      sb_printf(sb, "  if (source < 0)\n    memcpy(up + plan.up_t%d, feed_%s, (size_t)%s * sizeof(%s));\n", f, label, size,
                emit_ctype(n->dtype));
    else
      sb_printf(sb, "  memcpy(up + plan.up_t%d, %sfeed_%s, (size_t)%s * sizeof(%s));\n", f, from, label, size,
                emit_ctype(n->dtype));
  }
  if (data)
    sb_printf(sb, "  if (source >= 0)\n    memcpy(up + plan.up_rows, gpu->staged_rows, (size_t)%s * sizeof(int32_t));\n",
              rows);
  /* graphs are keyed by up to two symbols; more would need a longer key */
  int nsyms = 0, sym_index[2] = {-1, -1};
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      if (nsyms < 2) sym_index[nsyms] = k;
      nsyms++;
    }
  sb_printf(sb, "  run_call call = {m, &plan};\n  const int64_t key[4] = {source, (int64_t)gpu->generation");
  for (int j = 0; j < 2; j++) {
    if (sym_index[j] >= 0 && nsyms <= 2) {
      char sym[64];
      fl_sym_c_name(g, sym_index[j], sym, sizeof sym);
      sb_printf(sb, ", %s", sym);
    } else {
      sb_printf(sb, ", 0");
    }
  }
  char cache[160];
  if (nsyms <= 2) snprintf(cache, sizeof cache, "&gpu->graphs[ENTRY_%s]", name);
  else snprintf(cache, sizeof cache, "NULL /* more than two symbols: no graph key, eager runs */");
  sb_printf(sb, "};\n  if (flcu_run(&gpu->dev, %s, key, %s_enqueue, &call) || flcu_sync(&gpu->dev))\n"
                "    return gpu_failed(m, \"%s\");\n",
            cache, name, name);
  for (int i = 0; i < e->nfetches; i++) {
    const fl_node *n = &g->nodes[e->fetches[i]];
    emit_node_label(g, e->fetches[i], label, sizeof label);
    size_expr(g, &n->shape, size, sizeof size);
    sb_printf(sb, "  if (out_%s)\n    memcpy(out_%s, gpu->download.ptr + plan.down%d, (size_t)%s * sizeof(%s));\n", label,
              label, i, size, emit_ctype(n->dtype));
  }
  if (side_effects) sb_printf(sb, "  m->host_vars_stale = true;\n");
  if (e->uses_dropout) sb_printf(sb, "  m->dropout_runs++;\n");
  sb_printf(sb, "  return 0;\n}\n\n");
  emit_flops_function(em, e, sb);
  for (int i = 0; i < g->nnodes; i++) free(buffers[i]);
  free(buffers);
  free(slot);
  free_buffers(&b);
}

static void emit_source(cuda_model *cm, strbuf *sb) {
  const emit_model *em = &cm->em;
  const char *p = em->prefix;
  sb_printf(sb, "/* %s_cuda.c - generated by flowc %s from %s: the host side of the CUDA build.\n"
                " * Each entry plans its buffers, fills the page-locked upload block, and runs its\n"
                " * enqueue function (the kernels of %s_kernels.cu and cuBLAS GEMMs, in the C\n"
                " * backend's schedule) as a CUDA graph. Do not edit. */\n",
            p, FLOWC_VERSION, em->opt->source_path ? em->opt->source_path : "a description", p);
  sb_printf(sb, "#include <math.h>\n#include <stdarg.h>\n#include <stddef.h>\n#include <stdio.h>\n#include <stdlib.h>\n"
                "#include <string.h>\n\n#include \"%s.h\"\n#include \"flowc_rt_cuda.h\"\n\n", p);
}

int fl_emit_cuda(const fl_graph *g, const char *dir, const fl_codegen_options *opt) {
  cuda_model cm;
  memset(&cm, 0, sizeof cm);
  int status = emit_model_init(&cm.em, g, opt);
  cm.em.device_data = true;
  cm.data = g->train.data != FL_DATA_NONE;
  strbuf header = {0}, source = {0}, main_c = {0};
  if (status == 0) status = collect_kernels(&cm);
  if (status == 0) {
    plan_constants(&cm);
    emit_header(&cm, &header);
    emit_source(&cm, &source);
    emit_state(&cm, &source);
    sb_printf(&source, "static void %s_free_gpu(%s *m);\n\n", cm.em.prefix, cm.em.prefix);
    status = emit_lifecycle(&cm, &source);
  }
  if (status == 0) {
    emit_data_functions(&cm, &source);
    for (int e = 0; e < cm.em.nentries; e++) emit_cuda_entry(&cm, e, &source);
  }
  if (status == 0 && opt->with_main) status = emit_main(&cm.em, &main_c);
  if (status == 0) {
    char name[160];
    snprintf(name, sizeof name, "%s.h", cm.em.prefix);
    status = sb_write_file(&header, dir, name);
    snprintf(name, sizeof name, "%s_cuda.c", cm.em.prefix);
    if (status == 0) status = sb_write_file(&source, dir, name);
    snprintf(name, sizeof name, "%s_kernels.cu", cm.em.prefix);
    if (status == 0) status = sb_write_file(&cm.cu, dir, name);
    if (status == 0 && opt->with_main) status = sb_write_file(&main_c, dir, "main.c");
  }
  sb_free(&header);
  sb_free(&source);
  sb_free(&main_c);
  sb_free(&cm.cu);
  int total = 0;
  for (int e = 0; e < cm.em.nentries; e++) total += cm.em.entries[e].sched ? cm.em.entries[e].sched->ngroups : 0;
  for (int i = 0; cm.group_names && i < total; i++) free(cm.group_names[i]);
  free(cm.group_names);
  free(cm.kernels);
  free(cm.const_offset);
  emit_model_free(&cm.em);
  return status;
}
