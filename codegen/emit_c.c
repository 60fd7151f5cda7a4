/* emit_c.c - the C backend: kernels, entry points, variables and checkpoints as C99.
 *
 * Every computation the train block asks for becomes an entry point: a C
 * function that takes the fed tensors and returns the fetched ones. An entry
 * evaluates its pure nodes in node order, copies out the fetches, then applies
 * the side effects (assignments, optimizer updates) in node order, so a run
 * reads every variable before any is written. Each node is one kernel function
 * named after the node (k12_matmul); its buffer is a slice of one arena whose
 * offsets the entry computes once from the run's symbolic sizes. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"
#include "emit_internal.h"
#include "flowc_rt.h"

/* ---- small helpers -------------------------------------------------------- */

void fl_c_identifier(const char *text, char *out, size_t cap) {
  size_t j = 0;
  if (cap == 0) return;
  if (text[0] && isdigit((unsigned char)text[0]) && j + 1 < cap) out[j++] = '_';
  for (size_t i = 0; text[i] && j + 1 < cap; i++) {
    unsigned char c = (unsigned char)text[i];
    out[j++] = (isalnum(c) || c == '_') ? (char)c : '_';
  }
  out[j] = '\0';
  if (j == 0 && cap > 1) snprintf(out, cap, "_");
}

const char *emit_ctype(fl_dtype t) {
  switch (t) {
  case FL_F32: return "float";
  case FL_I32: return "int32_t";
  case FL_I64: return "int64_t";
  case FL_BOOL: return "bool";
  default: return "void";
  }
}

const char *emit_rt_dtype(fl_dtype t) {
  switch (t) {
  case FL_F32: return "FLRT_F32";
  case FL_I32: return "FLRT_I32";
  case FL_I64: return "FLRT_I64";
  default: return "FLRT_BOOL";
  }
}

/* A float literal that C reads back as the same float: 0.1f, 2.0f. */
void emit_float(char *buf, size_t cap, double v) {
  if (isnan(v)) {
    snprintf(buf, cap, "NAN");
    return;
  }
  if (isinf(v)) {
    snprintf(buf, cap, v > 0 ? "INFINITY" : "-INFINITY");
    return;
  }
  char tmp[48];
  snprintf(tmp, sizeof tmp, "%.9g", (double)(float)v);
  bool has_point = strpbrk(tmp, ".e") != NULL;
  snprintf(buf, cap, "%s%sf", tmp, has_point ? "" : ".0");
}

/* A typed literal for a value of dtype t. */
static void emit_literal(char *buf, size_t cap, fl_dtype t, double v) {
  switch (t) {
  case FL_F32: emit_float(buf, cap, v); break;
  case FL_I32: snprintf(buf, cap, "%lld", (long long)v); break;
  case FL_I64: snprintf(buf, cap, "INT64_C(%lld)", (long long)v); break;
  default: snprintf(buf, cap, "%s", v != 0 ? "true" : "false"); break;
  }
}

/* C keywords and the names generated code declares itself: a symbol or
 * tensor named like one gets a trailing underscore. */
static bool reserved_name(const char *name) {
  static const char *const words[] = {
      "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else", "enum",
      "extern", "float", "for", "goto", "if", "inline", "int", "long", "register", "restrict", "return",
      "short", "signed", "sizeof", "static", "struct", "switch", "typedef", "union", "unsigned", "void",
      "volatile", "while", "bool", "true", "false", "m", "w", "i", "j", "k", "p", "r", "c", "o",
      "out", "in0", "in1", "in2", "arena", "sizes", "offsets", "first", "last", "scratch", "seed",
      "run", "rows", "channels", "classes", "inner", "len", "best", "total", "scale", "bias", "row",
      "z", "max", "sum", "loss", "labels", "var", "grad", "v", "accum", "lr_t", "arena_bytes"};
  for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
    if (strcmp(name, words[i]) == 0) return true;
  /* t12, in0, out1, i3: buffer, parameter and loop names */
  static const char *const numbered[] = {"t", "in", "out", "i", "c", "f", "k"};
  for (size_t i = 0; i < sizeof numbered / sizeof numbered[0]; i++) {
    size_t len = strlen(numbered[i]);
    if (strncmp(name, numbered[i], len) == 0 && name[len] && strspn(name + len, "0123456789") == strlen(name + len))
      return true;
  }
  return false;
}

/* The symbol's C name in generated code ("N"). */
static void sym_name(const fl_graph *g, int sym, char *buf, size_t cap) {
  fl_c_identifier(g->syms[sym], buf, cap);
  if (reserved_name(buf) && strlen(buf) + 2 <= cap) strcat(buf, "_");
}

void fl_sym_c_name(const fl_graph *g, int sym, char *buf, size_t cap) { sym_name(g, sym, buf, cap); }

/* A dimension as a C expression of type int64_t. */
void emit_dim(const fl_graph *g, fl_dim d, char *buf, size_t cap) {
  char sym[64];
  if (d.sym < 0) snprintf(buf, cap, "%lld", (long long)d.coef);
  else {
    sym_name(g, d.sym, sym, sizeof sym);
    if (d.coef == 1) snprintf(buf, cap, "%s", sym);
    else snprintf(buf, cap, "%lld * %s", (long long)d.coef, sym);
  }
}

/* The product of dims [from, to) as a C expression ("N * 784"). */
void emit_dims_product(const fl_graph *g, const fl_shape *s, int from, int to, char *buf,
                       size_t cap) {
  int64_t coef = 1;
  int count[64] = {0};
  for (int i = from; i < to; i++) {
    coef *= s->dims[i].coef;
    if (s->dims[i].sym >= 0 && s->dims[i].sym < 64) count[s->dims[i].sym]++;
  }
  size_t used = (size_t)snprintf(buf, cap, "%lld", (long long)coef);
  for (int sym = 0; sym < 64 && sym < g->nsyms; sym++)
    for (int k = 0; k < count[sym] && used < cap; k++) {
      char name[64];
      sym_name(g, sym, name, sizeof name);
      if (coef == 1 && used == 1 && buf[0] == '1')
        used = (size_t)snprintf(buf, cap, "%s", name);
      else
        used += (size_t)snprintf(buf + used, cap - used, " * %s", name);
    }
}

void emit_size(const fl_graph *g, const fl_shape *s, char *buf, size_t cap) {
  emit_dims_product(g, s, 0, s->rank, buf, cap);
}

/* Which symbols a node's kernel needs: those in its shape and its inputs'. */
void emit_node_syms(const fl_graph *g, const fl_node *n, bool *uses) {
  memset(uses, 0, (size_t)g->nsyms * sizeof(bool));
  const fl_shape *shapes[17];
  int count = 0;
  shapes[count++] = &n->shape;
  for (int i = 0; i < n->ninputs && count < 17; i++) shapes[count++] = &g->nodes[n->inputs[i]].shape;
  if (n->op == FL_OP_RESHAPE || n->op == FL_OP_BROADCAST || n->op == FL_OP_SUM_TO)
    shapes[count - 1 < 16 ? count++ : 16] = &n->attr.target;
  for (int i = 0; i < count; i++)
    for (int j = 0; j < shapes[i]->rank; j++)
      if (shapes[i]->dims[j].sym >= 0) uses[shapes[i]->dims[j].sym] = true;
}

/* ---- text building -------------------------------------------------------- */

void sb_printf(strbuf *sb, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int need = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (need < 0) {
    va_end(ap2);
    return;
  }
  if (sb->len + (size_t)need + 1 > sb->cap) {
    size_t cap = sb->cap ? sb->cap : 4096;
    while (sb->len + (size_t)need + 1 > cap) cap *= 2;
    char *grown = realloc(sb->text, cap);
    if (!grown) {
      fputs("flowc: out of memory\n", stderr);
      exit(1);
    }
    sb->text = grown;
    sb->cap = cap;
  }
  vsnprintf(sb->text + sb->len, sb->cap - sb->len, fmt, ap2);
  va_end(ap2);
  sb->len += (size_t)need;
}

void sb_free(strbuf *sb) {
  free(sb->text);
  sb->text = NULL;
  sb->len = sb->cap = 0;
}

int sb_write_file(const strbuf *sb, const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) {
    fl_error((fl_loc){0, 0, 0, 0}, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  if (sb->len && fwrite(sb->text, 1, sb->len, f) != sb->len) {
    fclose(f);
    fl_error((fl_loc){0, 0, 0, 0}, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  if (fclose(f)) {
    fl_error((fl_loc){0, 0, 0, 0}, "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* ---- naming --------------------------------------------------------------- */

/* The node's name for comments and identifiers: its user name, or t<id>. */
void emit_node_label(const fl_graph *g, int id, char *buf, size_t cap) {
  if (g->nodes[id].name) fl_c_identifier(g->nodes[id].name, buf, cap);
  else snprintf(buf, cap, "t%d", id);
}

/* The comment that names what a kernel implements:
 *   %12 = matmul(%3, %5) : f32[N, 10]  # y  (model.flow:10:5) */
void emit_node_comment(const fl_graph *g, const fl_node *n, strbuf *sb) {
  char shape[160];
  sb_printf(sb, "/* %%%d = %s(", n->id, fl_op_name(n->op));
  for (int i = 0; i < n->ninputs; i++) sb_printf(sb, "%s%%%d", i ? ", " : "", n->inputs[i]);
  sb_printf(sb, ") : %s%s", fl_dtype_name(n->dtype), fl_shape_str(g, &n->shape, shape, sizeof shape));
  if (n->name) {
    /* a name can't end the comment early: '*' '/' never both appear in one */
    sb_printf(sb, "  # ");
    for (const char *p = n->name; *p; p++) sb_printf(sb, "%c", (*p == '*') ? '_' : *p);
  }
  if (n->loc.file > 0) {
    const char *path = fl_source_path(n->loc.file);
    const char *base = strrchr(path, '/');
    sb_printf(sb, "  (%s:%d:%d)", base ? base + 1 : path, n->loc.line, n->loc.col);
  }
  sb_printf(sb, " */\n");
}

/* ---- entries -------------------------------------------------------------- */

#include "kernels_c.h"

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    fputs("flowc: out of memory\n", stderr);
    exit(1);
  }
  return p;
}

static bool same_ids(const int *a, int na, const int *b, int nb) {
  if (na != nb) return false;
  for (int i = 0; i < na; i++)
    if (a[i] != b[i]) return false;
  return true;
}

static void append_unique(int *list, int *count, int id) {
  for (int i = 0; i < *count; i++)
    if (list[i] == id) return;
  list[(*count)++] = id;
}

/* Whether every placeholder `node` needs is fed under `fed`. */
static bool computable(const fl_graph *g, int node, const bool *fed) {
  bool *needed = xcalloc((size_t)g->nnodes, sizeof(bool));
  fl_mark_needed(g, &node, 1, fed, needed);
  bool ok = true;
  for (int i = 0; i < g->nnodes && ok; i++)
    if (needed[i] && !fed[i] && g->nodes[i].op == FL_OP_PLACEHOLDER) ok = false;
  free(needed);
  return ok;
}

static void entry_name(const fl_graph *g, const int *ids, int n, char *buf, size_t cap) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < n && used + 1 < cap; i++) {
    char label[96];
    emit_node_label(g, ids[i], label, sizeof label);
    used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? "_" : "", label);
  }
  if (!used) snprintf(buf, cap, "run");
}

static int build_entry_for_action(emit_model *em, const fl_action *a) {
  const fl_graph *g = em->g;
  const fl_train *t = &g->train;
  int cap = a->ntargets + 4;
  int *fetches = xcalloc((size_t)cap, sizeof(int)), nfetches = 0;
  int *runs = xcalloc((size_t)cap, sizeof(int)), nruns = 0;
  bool *fed = xcalloc((size_t)g->nnodes, sizeof(bool));
  bool on_batch = a->when != FL_WHEN_START && a->when != FL_WHEN_END;
  bool data = on_batch && t->data != FL_DATA_NONE;
  if (data) {
    if (t->images_node >= 0) fed[t->images_node] = true;
    if (t->labels_node >= 0) fed[t->labels_node] = true;
  }
  for (int i = 0; i < a->nfeeds; i++) fed[a->feeds[i].node] = true;
  if (a->kind == FL_ACT_RUN) {
    for (int i = 0; i < a->ntargets; i++) {
      int id = a->targets[i];
      if (fl_op_has_side_effect(g->nodes[id].op)) append_unique(runs, &nruns, id);
      else append_unique(fetches, &nfetches, id);
    }
    /* A training run also returns its loss, and the accuracy when the same
     * feeds give it: the driver's progress line shows both for free. */
    for (int i = 0; i < nruns; i++) {
      const fl_node *r = &g->nodes[runs[i]];
      if (r->op == FL_OP_GROUP && r->attr.loss >= 0) append_unique(fetches, &nfetches, r->attr.loss);
    }
    int accuracy = fl_graph_find(g, "accuracy");
    if (nruns && accuracy >= 0 && g->nodes[accuracy].shape.rank == 0 &&
        g->nodes[accuracy].dtype == FL_F32 && computable(g, accuracy, fed))
      append_unique(fetches, &nfetches, accuracy);
  } else {
    for (int i = 0; i < a->ntargets; i++) {
      int id = a->targets[i];
      if (g->nodes[id].op == FL_OP_GROUP || g->nodes[id].op == FL_OP_MINIMIZE) {
        fl_error(a->loc, "print: a train op has no value to print; use `run` to run it");
        free(fetches); free(runs); free(fed);
        return -1;
      }
      append_unique(fetches, &nfetches, id);
    }
  }
  bool *needed = xcalloc((size_t)g->nnodes, sizeof(bool));
  int *targets = xcalloc((size_t)(nfetches + nruns), sizeof(int));
  memcpy(targets, fetches, (size_t)nfetches * sizeof(int));
  memcpy(targets + nfetches, runs, (size_t)nruns * sizeof(int));
  fl_mark_needed(g, targets, nfetches + nruns, fed, needed);
  free(targets);
  int *feeds = xcalloc((size_t)g->nnodes, sizeof(int)), nfeeds = 0;
  if (data) {
    if (t->images_node >= 0 && needed[t->images_node]) feeds[nfeeds++] = t->images_node;
    if (t->labels_node >= 0 && needed[t->labels_node]) feeds[nfeeds++] = t->labels_node;
  }
  for (int i = 0; i < a->nfeeds; i++)
    if (needed[a->feeds[i].node]) append_unique(feeds, &nfeeds, a->feeds[i].node);
  for (int i = 0; i < g->nnodes; i++) fed[i] = false;
  for (int i = 0; i < nfeeds; i++) fed[feeds[i]] = true;

  for (int e = 0; e < em->nentries; e++) {
    emit_entry *old = &em->entries[e];
    if (same_ids(old->fetches, old->nfetches, fetches, nfetches) &&
        same_ids(old->runs, old->nruns, runs, nruns) && same_ids(old->feeds, old->nfeeds, feeds, nfeeds)) {
      free(fetches); free(runs); free(fed); free(needed); free(feeds);
      return e;
    }
  }
  emit_entry *en = &em->entries[em->nentries];
  memset(en, 0, sizeof *en);
  en->fetches = fetches;
  en->nfetches = nfetches;
  en->runs = runs;
  en->nruns = nruns;
  en->feeds = feeds;
  en->nfeeds = nfeeds;
  en->fed = fed;
  en->needed = needed;
  en->when = a->when;
  en->syms = xcalloc((size_t)g->nsyms + 1, sizeof(bool));
  for (int i = 0; i < g->nnodes; i++) {
    if (!needed[i]) continue;
    if (g->nodes[i].op == FL_OP_DROPOUT_MASK && !fed[i]) en->uses_dropout = true;
    for (int j = 0; j < g->nodes[i].shape.rank; j++)
      if (g->nodes[i].shape.dims[j].sym >= 0) en->syms[g->nodes[i].shape.dims[j].sym] = true;
    if (!fed[i] && (g->nodes[i].op == FL_OP_RANDOM_UNIFORM || g->nodes[i].op == FL_OP_TRUNCATED_NORMAL ||
                    g->nodes[i].op == FL_OP_RANDOM_NORMAL)) {
      fl_error(g->nodes[i].loc, "%s can only initialise a variable", fl_op_name(g->nodes[i].op));
      return -1;
    }
  }
  if (nruns) entry_name(g, runs, nruns, en->name, sizeof en->name);
  else entry_name(g, fetches, nfetches, en->name, sizeof en->name);
  /* Entries that differ only in feeds get numbered names. */
  for (int e = 0, suffix = 2; e < em->nentries; e++)
    if (strcmp(em->entries[e].name, en->name) == 0) {
      char base[96];
      snprintf(base, sizeof base, "%s", en->name);
      snprintf(en->name, sizeof en->name, "%.80s_%d", base, suffix++);
      e = -1;
    }
  return em->nentries++;
}

static void free_entries(emit_model *em) {
  for (int i = 0; i < em->nentries; i++) {
    emit_entry *e = &em->entries[i];
    free(e->fetches); free(e->runs); free(e->feeds); free(e->fed); free(e->needed); free(e->syms);
    fl_schedule_free(e->sched);
  }
  for (int i = 0; i < em->nfused; i++) {
    free(em->fused_sigs[i]);
    free(em->fused_names[i]);
  }
  free(em->fused_sigs);
  free(em->fused_names);
  free(em->entries);
  free(em->action_entry);
  free(em->var_names);
}

/* ---- the header ------------------------------------------------------------ */

static void var_field_names(emit_model *em) {
  const fl_graph *g = em->g;
  em->var_names = xcalloc((size_t)g->nnodes, sizeof *em->var_names);
  for (int i = 0; i < g->nnodes; i++) {
    if (g->nodes[i].op != FL_OP_VARIABLE) continue;
    if (g->nodes[i].name) fl_c_identifier(g->nodes[i].name, em->var_names[i], sizeof em->var_names[i]);
    else snprintf(em->var_names[i], sizeof em->var_names[i], "v%d", i);
    for (int j = 0; j < i; j++)
      if (g->nodes[j].op == FL_OP_VARIABLE && strcmp(em->var_names[j], em->var_names[i]) == 0) {
        size_t len = strlen(em->var_names[i]);
        snprintf(em->var_names[i] + (len < 80 ? len : 80), 16, "_%d", i);
        break;
      }
  }
}

/* Parameters of an entry, shared by the prototype and the definition. */
static void entry_params(const emit_model *em, const emit_entry *e, strbuf *sb) {
  const fl_graph *g = em->g;
  sb_printf(sb, "%s *m", em->prefix);
  for (int s = 0; s < g->nsyms; s++)
    if (e->syms[s]) {
      char name[64];
      fl_sym_c_name(g, s, name, sizeof name);
      sb_printf(sb, ", int64_t %s", name);
    }
  for (int i = 0; i < e->nfeeds; i++) {
    const fl_node *n = &g->nodes[e->feeds[i]];
    char label[96];
    emit_node_label(g, e->feeds[i], label, sizeof label);
    if (n->shape.rank == 0) sb_printf(sb, ", %s feed_%s", emit_ctype(n->dtype), label);
    else sb_printf(sb, ", const %s *feed_%s", emit_ctype(n->dtype), label);
  }
  for (int i = 0; i < e->nfetches; i++) {
    char label[96];
    emit_node_label(g, e->fetches[i], label, sizeof label);
    sb_printf(sb, ", %s *out_%s", emit_ctype(g->nodes[e->fetches[i]].dtype), label);
  }
}

static void entry_doc(const emit_model *em, const emit_entry *e, strbuf *sb) {
  const fl_graph *g = em->g;
  char label[96], shape[160];
  sb_printf(sb, "/* %s_%s:", em->prefix, e->name);
  for (int i = 0; i < e->nruns; i++) {
    emit_node_label(g, e->runs[i], label, sizeof label);
    sb_printf(sb, " runs %s;", label);
  }
  if (e->nfetches) sb_printf(sb, " returns");
  for (int i = 0; i < e->nfetches; i++) {
    const fl_node *n = &g->nodes[e->fetches[i]];
    emit_node_label(g, e->fetches[i], label, sizeof label);
    sb_printf(sb, "%s %s %s%s", i ? "," : "", label, fl_dtype_name(n->dtype),
              fl_shape_str(g, &n->shape, shape, sizeof shape));
  }
  sb_printf(sb, ".\n *");
  if (e->nfeeds) sb_printf(sb, " Feeds:");
  for (int i = 0; i < e->nfeeds; i++) {
    const fl_node *n = &g->nodes[e->feeds[i]];
    emit_node_label(g, e->feeds[i], label, sizeof label);
    sb_printf(sb, "%s %s %s%s", i ? "," : "", label, fl_dtype_name(n->dtype),
              fl_shape_str(g, &n->shape, shape, sizeof shape));
  }
  sb_printf(sb, "%s Outputs may be NULL. Returns 0, or -1 with %s_error(m) set. */\n",
            e->nfeeds ? "." : "", em->prefix);
}

static void emit_header(const emit_model *em, strbuf *sb) {
  const fl_graph *g = em->g;
  const char *p = em->prefix;
  char guard[128], shape[160];
  fl_c_identifier(p, guard, sizeof guard);
  for (char *c = guard; *c; c++) *c = (char)toupper((unsigned char)*c);
  sb_printf(sb, "/* %s.h - generated by flowc %s from %s. The API of the model: create it,\n"
                " * call its entry points, save and load its variables. Do not edit. */\n",
            p, FLOWC_VERSION, em->opt->source_path ? em->opt->source_path : "a description");
  sb_printf(sb, "#ifndef %s_MODEL_H\n#define %s_MODEL_H\n\n", guard, guard);
  sb_printf(sb, "#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n\n#include \"flowc_rt.h\"\n\n");
  sb_printf(sb, "/* Every variable of the model, optimizer slots included. */\ntypedef struct {\n");
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    if (n->op != FL_OP_VARIABLE) continue;
    int64_t count = fl_shape_const_size(&n->shape);
    sb_printf(sb, "  %s %s[%lld]; /* %s%s */\n", emit_ctype(n->dtype), em->var_names[i],
              (long long)(count > 0 ? count : 1), fl_dtype_name(n->dtype),
              fl_shape_str(g, &n->shape, shape, sizeof shape));
  }
  sb_printf(sb, "  char unused; /* keeps the struct valid for a model without variables */\n");
  sb_printf(sb, "} %s_variables;\n\n", p);
  sb_printf(sb, "typedef struct {\n  %s_variables vars;\n", p);
  sb_printf(sb, "  uint64_t seed;         /* of initialisation and dropout */\n"
                "  uint64_t dropout_runs; /* runs that drew dropout masks: the RNG counter */\n"
                "  int64_t step;          /* training steps done (kept by the driver) */\n"
                "  int64_t consumed;      /* training examples consumed (kept by the driver) */\n"
                "  flrt_arena arena;      /* intermediate tensors of the current run */\n"
                "  char error[512];\n} %s;\n\n", p);
  sb_printf(sb, "/* Allocates a model with variables initialised from seed; NULL when out of memory. */\n"
                "%s *%s_new(uint64_t seed);\nvoid %s_free(%s *m);\n"
                "/* (Re)initialises every variable and the counters from seed. */\n"
                "void %s_init(%s *m, uint64_t seed);\n"
                "/* The last error's message. */\nconst char *%s_error(const %s *m);\n"
                "/* Variables, step and counters to a safetensors file (atomically). */\n"
                "int %s_save(%s *m, const char *path);\n"
                "/* Reads a checkpoint written by %s_save; refuses a mismatched or damaged one. */\n"
                "int %s_load(%s *m, const char *path);\n\n",
            p, p, p, p, p, p, p, p, p, p, p, p, p);
  for (int e = 0; e < em->nentries; e++) {
    entry_doc(em, &em->entries[e], sb);
    sb_printf(sb, "int %s_%s(", p, em->entries[e].name);
    entry_params(em, &em->entries[e], sb);
    sb_printf(sb, ");\n");
    sb_printf(sb, "/* Floating-point operations of one run at that batch size (gemm_only: matmuls and\n"
                  " * convolutions alone), for GFLOP/s figures. */\n"
                  "double %s_%s_flops(int64_t batch, bool gemm_only);\n\n", p, em->entries[e].name);
  }
  sb_printf(sb, "#endif\n");
}

/* ---- the model's source ---------------------------------------------------- */

static int emit_const_data(const fl_graph *g, int id, strbuf *sb) {
  const fl_node *n = &g->nodes[id];
  int64_t count = fl_shape_const_size(&n->shape);
  sb_printf(sb, "static const %s c%d[%lld] = {", emit_ctype(n->dtype), id, (long long)(count > 0 ? count : 1));
  for (int64_t i = 0; i < count; i++) {
    char lit[64];
    emit_literal(lit, sizeof lit, n->dtype, n->attr.data ? n->attr.data[i] : 0.0);
    sb_printf(sb, "%s%s", i ? ", " : "", lit);
    if (i % 8 == 7 && i + 1 < count) sb_printf(sb, "\n   ");
  }
  sb_printf(sb, "};\n");
  return 0;
}

static int emit_init(const emit_model *em, strbuf *sb) {
  const fl_graph *g = em->g;
  sb_printf(sb, "void %s_init(%s *m, uint64_t seed) {\n  m->seed = seed;\n  m->dropout_runs = 0;\n"
                "  m->step = 0;\n  m->consumed = 0;\n", em->prefix, em->prefix);
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *v = &g->nodes[i];
    if (v->op != FL_OP_VARIABLE) continue;
    const fl_node *init = &g->nodes[v->attr.init];
    const char *field = em->var_names[i];
    char size[64], lit[64], b[64];
    snprintf(size, sizeof size, "%lld", (long long)fl_shape_const_size(&v->shape));
    switch (init->op) {
    case FL_OP_FILL:
      emit_literal(lit, sizeof lit, v->dtype, init->attr.value);
      sb_printf(sb, "  for (size_t i = 0; i < %s; i++) /* %s */\n    m->vars.%s[i] = %s;\n", size, field, field, lit);
      break;
    case FL_OP_CONST:
      sb_printf(sb, "  memcpy(m->vars.%s, c%d, sizeof m->vars.%s);\n", field, init->id, field);
      break;
    case FL_OP_RANDOM_UNIFORM:
      emit_float(lit, sizeof lit, init->attr.a);
      emit_float(b, sizeof b, init->attr.b);
      sb_printf(sb, "  flrt_fill_uniform(m->vars.%s, %s, %s, %s, seed, %d);\n", field, size, lit, b, init->attr.stream);
      break;
    case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
      emit_float(lit, sizeof lit, init->attr.a);
      emit_float(b, sizeof b, init->attr.b);
      sb_printf(sb, "  flrt_fill_%snormal(m->vars.%s, %s, %s, %s, seed, %d);\n",
                init->op == FL_OP_TRUNCATED_NORMAL ? "truncated_" : "", field, size, lit, b, init->attr.stream);
      break;
    default:
      fl_error(v->loc, "variable: an initial value must be a constant, a fill (zeros, ones, constant "
                       "with shape) or a random initialiser; found %s", fl_op_name(init->op));
      return -1;
    }
  }
  sb_printf(sb, "}\n\n");
  return 0;
}

static void emit_lifecycle(const emit_model *em, strbuf *sb) {
  const char *p = em->prefix;
  sb_printf(sb, "%s *%s_new(uint64_t seed) {\n  %s *m = calloc(1, sizeof *m);\n  if (!m) return NULL;\n"
                "  %s_init(m, seed);\n  return m;\n}\n\n", p, p, p, p);
  sb_printf(sb, "void %s_free(%s *m) {\n  if (!m) return;\n  flrt_arena_free(&m->arena);\n  free(m);\n}\n\n", p, p);
  sb_printf(sb, "const char *%s_error(const %s *m) { return m->error; }\n\n", p, p);
  sb_printf(sb, "static int fail(%s *m, const char *fmt, ...) {\n  va_list ap;\n  va_start(ap, fmt);\n"
                "  vsnprintf(m->error, sizeof m->error, fmt, ap);\n  va_end(ap);\n  return -1;\n}\n\n", p);
  emit_checkpoint_functions(em, "", "", sb);
}

/* The checkpoint functions: the variables under TensorFlow's names, and the
 * training state in the metadata. Every backend writes the same files;
 * before_save and after_load are statements a backend adds (the CUDA one
 * moves the variables between device and host there). */
void emit_checkpoint_functions(const emit_model *em, const char *before_save, const char *after_load, strbuf *sb) {
  const fl_graph *g = em->g;
  const char *p = em->prefix;
  int nvars = 0;
  for (int i = 0; i < g->nnodes; i++) nvars += g->nodes[i].op == FL_OP_VARIABLE;
  sb_printf(sb, "enum { VARIABLE_COUNT = %d };\n\n", nvars);
  sb_printf(sb, "/* The checkpoint's view of the variables: TensorFlow's names. */\n"
                "static void describe_variables(%s *m, flrt_tensor *t) {\n", p);
  int k = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *v = &g->nodes[i];
    if (v->op != FL_OP_VARIABLE) continue;
    char name[256];
    fl_checkpoint_name(g, i, name, sizeof name);
    sb_printf(sb, "  t[%d] = (flrt_tensor){\"%s\", %s, %d, {", k++, name, emit_rt_dtype(v->dtype), v->shape.rank);
    for (int j = 0; j < v->shape.rank; j++) sb_printf(sb, "%s%lld", j ? ", " : "", (long long)v->shape.dims[j].coef);
    sb_printf(sb, "%s}, m->vars.%s};\n", v->shape.rank ? "" : "0", em->var_names[i]);
  }
  if (!nvars) sb_printf(sb, "  (void)m;\n  (void)t;\n");
  sb_printf(sb, "}\n\n");
  sb_printf(sb,
            "int %s_save(%s *m, const char *path) {\n%s"
            "  flrt_tensor tensors[VARIABLE_COUNT + 1];\n  describe_variables(m, tensors);\n"
            "  char state[160];\n"
            "  snprintf(state, sizeof state, \"step=%%lld consumed=%%lld dropout_runs=%%llu seed=%%llu\",\n"
            "           (long long)m->step, (long long)m->consumed, (unsigned long long)m->dropout_runs,\n"
            "           (unsigned long long)m->seed);\n"
            "  const char *keys[] = {\"flowc_model\", \"flowc_state\"};\n"
            "  const char *values[] = {\"%s\", state};\n"
            "  char err[512];\n"
            "  if (flrt_checkpoint_save(path, tensors, VARIABLE_COUNT, keys, values, 2, err, sizeof err))\n"
            "    return fail(m, \"%%s\", err);\n  return 0;\n}\n\n",
            p, p, before_save, p);
  sb_printf(sb,
            "int %s_load(%s *m, const char *path) {\n"
            "  flrt_tensor tensors[VARIABLE_COUNT + 1];\n  describe_variables(m, tensors);\n"
            "  char state[160] = \"\", err[512];\n"
            "  if (flrt_checkpoint_load(path, tensors, VARIABLE_COUNT, \"flowc_state\", state, sizeof state, err, sizeof err))\n"
            "    return fail(m, \"%%s\", err);\n"
            "  long long step = 0, consumed = 0;\n  unsigned long long runs = 0, seed = 0;\n"
            "  if (sscanf(state, \"step=%%lld consumed=%%lld dropout_runs=%%llu seed=%%llu\", &step, &consumed, &runs, &seed) != 4)\n"
            "    return fail(m, \"%%s: no flowc training state in the checkpoint's metadata\", path);\n"
            "  m->step = step;\n  m->consumed = consumed;\n  m->dropout_runs = runs;\n  m->seed = seed;\n%s"
            "  return 0;\n}\n\n",
            p, p, after_load);
}

/* The function name of a fused group, the same for every entry that has the
 * same group: "f57_epilogue_h_conv1". */
static const char *fused_name(emit_model *em, const fl_group *grp) {
  strbuf sig = {0};
  sb_printf(&sig, "%d", (int)grp->kind);
  for (int i = 0; i < grp->nnodes; i++) sb_printf(&sig, ",%d", grp->nodes[i]);
  for (int i = 0; i < em->nfused; i++)
    if (strcmp(em->fused_sigs[i], sig.text) == 0) {
      sb_free(&sig);
      return em->fused_names[i];
    }
  int last = grp->root >= 0 ? grp->root : grp->nodes[grp->nnodes - 1];
  char label[96], name[256];
  emit_node_label(em->g, last, label, sizeof label);
  snprintf(name, sizeof name, "f%d_%s_%s", last, fl_group_kind_name(grp->kind), label);
  for (int i = 0, suffix = 2; i < em->nfused; i++)
    if (strcmp(em->fused_names[i], name) == 0) {
      snprintf(name, sizeof name, "f%d_%s_%s_%d", last, fl_group_kind_name(grp->kind), label, suffix++);
      i = -1;
    }
  em->fused_sigs = realloc(em->fused_sigs, (size_t)(em->nfused + 1) * sizeof(char *));
  em->fused_names = realloc(em->fused_names, (size_t)(em->nfused + 1) * sizeof(char *));
  if (!em->fused_sigs || !em->fused_names) abort();
  em->fused_sigs[em->nfused] = sig.text;
  em->fused_names[em->nfused] = strdup(name);
  return em->fused_names[em->nfused++];
}

static bool group_has_scratch(const fl_graph *g, const fl_group *grp) {
  for (int i = 0; i < grp->nnodes; i++)
    if (kernel_needs_scratch(g->nodes[grp->nodes[i]].op)) return true;
  return false;
}

/* The arena's buffers for one run: every materialized node, then the
 * convolutions' scratch, each with the groups that write and last read it. */
typedef struct {
  int count;
  int *node;   /* the node, or -(group + 1) for a group's scratch */
  int *first, *last;
} arena_plan;

/* An assignment whose value lives in a variable this run writes (assign(v,
 * reshape(w)) next to an update of w) must copy the value before the side
 * effects start: values are taken before the run writes anything. */
static bool assign_needs_snapshot(const fl_graph *g, const emit_entry *e, int assign) {
  int src = fl_storage_of(g, g->nodes[assign].inputs[1]);
  if (g->nodes[src].op != FL_OP_VARIABLE || e->fed[src]) return false;
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    if (!e->needed[i] || e->fed[i] || !fl_op_has_side_effect(n->op) || n->op == FL_OP_GROUP) continue;
    int written = n->op == FL_OP_APPLY_ADAM ? 3 : n->op == FL_OP_APPLY_MOMENTUM ? 2 : 1;
    for (int k = 0; k < written && k < n->ninputs; k++)
      if (n->inputs[k] == src) return true;
  }
  return false;
}

static arena_plan plan_buffers(const fl_graph *g, const emit_entry *e) {
  const fl_schedule *s = e->sched;
  arena_plan p = {0};
  int cap = 2 * g->nnodes + s->ngroups + 1;
  p.node = xcalloc((size_t)cap, sizeof(int));
  p.first = xcalloc((size_t)cap, sizeof(int));
  p.last = xcalloc((size_t)cap, sizeof(int));
  for (int i = 0; i < g->nnodes; i++)
    if (s->materialized[i]) {
      p.node[p.count] = i;
      p.first[p.count] = s->first[i];
      p.last[p.count++] = s->last[i];
    }
  for (int gi = 0; gi < s->ngroups; gi++)
    if (group_has_scratch(g, &s->groups[gi])) {
      p.node[p.count] = -(gi + 1);
      p.first[p.count] = p.last[p.count] = gi;
      p.count++;
    }
  /* Snapshots, numbered after every group: alive from the end of the pure
   * groups to the end of the run. */
  for (int i = 0; i < g->nnodes; i++)
    if (e->needed[i] && !e->fed[i] && g->nodes[i].op == FL_OP_ASSIGN && assign_needs_snapshot(g, e, i)) {
      p.node[p.count] = -(s->ngroups + 1 + i);
      p.first[p.count] = s->npure;
      p.last[p.count++] = s->ngroups;
    }
  return p;
}

static void free_plan(arena_plan *p) {
  free(p->node);
  free(p->first);
  free(p->last);
}

/* The convolution of a group that needs im2col scratch. */
static const fl_node *group_conv(const fl_graph *g, const fl_group *grp) {
  for (int i = 0; i < grp->nnodes; i++)
    if (kernel_needs_scratch(g->nodes[grp->nodes[i]].op)) return &g->nodes[grp->nodes[i]];
  return NULL;
}

/* Copies a run's fetches out of its buffers. */
static void emit_fetch_copies(const fl_graph *g, const emit_entry *e, strbuf *sb) {
  char size[160], label[96];
  for (int i = 0; i < e->nfetches; i++) {
    int id = e->fetches[i];
    emit_node_label(g, id, label, sizeof label);
    emit_size(g, &g->nodes[id].shape, size, sizeof size);
    sb_printf(sb, "  if (out_%s)\n    memcpy(out_%s, t%d, (size_t)(%s) * sizeof *out_%s);\n", label, label, id, size,
              label);
  }
}

/* Which buffers the entry's code reads: declaring only those keeps the
 * generated code free of unused variables. */
static bool *read_buffers(const fl_graph *g, const emit_entry *e) {
  bool *read = xcalloc((size_t)g->nnodes, sizeof(bool));
  const fl_schedule *s = e->sched;
  int *ins = xcalloc((size_t)g->nnodes + 1, sizeof(int));
  for (int gi = 0; gi < s->ngroups; gi++) {
    const fl_group *grp = &s->groups[gi];
    if (grp->kind == FL_GROUP_SINGLE) {
      const fl_node *n = &g->nodes[grp->nodes[0]];
      for (int k = 0; k < n->ninputs; k++) read[n->inputs[k]] = true;
      read[grp->nodes[0]] = true; /* its output is written through its buffer */
    } else {
      int nins = group_inputs(g, grp, ins);
      for (int k = 0; k < nins; k++) read[ins[k]] = true;
      for (int k = 0; k < grp->nnodes; k++)
        if (s->materialized[grp->nodes[k]]) read[grp->nodes[k]] = true;
    }
  }
  for (int i = 0; i < e->nfetches; i++) read[e->fetches[i]] = true;
  for (int i = 0; i < g->nnodes; i++)
    if (e->needed[i] && !e->fed[i] && g->nodes[i].op == FL_OP_ASSIGN) read[g->nodes[i].inputs[1]] = true;
  /* an alias that is read reads its source */
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (read[i] && e->needed[i] && !e->fed[i] && (g->nodes[i].op == FL_OP_RESHAPE || g->nodes[i].op == FL_OP_ASSIGN))
      read[g->nodes[i].inputs[g->nodes[i].op == FL_OP_ASSIGN ? 1 : 0]] = true;
  free(ins);
  return read;
}

/* One group's kernel call, with its scratch slice when it has one. */
static void emit_group_code(emit_model *em, const emit_entry *e, int gi, const char *const *buffers,
                            const arena_plan *plan, strbuf *sb) {
  const fl_group *grp = &e->sched->groups[gi];
  char scratch[64] = "NULL";
  for (int i = 0; i < plan->count; i++)
    if (plan->node[i] == -(gi + 1)) snprintf(scratch, sizeof scratch, "(float *)(arena + offsets[%d])", i);
  if (grp->kind == FL_GROUP_SINGLE) emit_kernel_call(em->g, grp->nodes[0], buffers, scratch, sb);
  else emit_group_call(em->g, grp, fused_name(em, grp), buffers, scratch, sb);
}

static void emit_entry_body(emit_model *em, const emit_entry *e, strbuf *sb) {
  const fl_graph *g = em->g;
  const fl_schedule *s = e->sched;
  char **buffers = xcalloc((size_t)g->nnodes, sizeof(char *));
  bool *is_const = xcalloc((size_t)g->nnodes, sizeof(bool));
  char size[160], label[96];
  sb_printf(sb, "int %s_%s(", em->prefix, e->name);
  entry_params(em, e, sb);
  sb_printf(sb, ") {\n");
  for (int k = 0; k < g->nsyms; k++)
    if (e->syms[k]) {
      char name[64];
      fl_sym_c_name(g, k, name, sizeof name);
      sb_printf(sb, "  if (%s < 1)\n    return fail(m, \"%s_%s: %s must be at least 1, got %%lld\", (long long)%s);\n",
                name, em->prefix, e->name, name, name);
    }
  /* The arena: buffers alive at the same time never overlap; the plan is
   * made once per run, from this run's sizes. */
  arena_plan plan = plan_buffers(g, e);
  int n = plan.count > 0 ? plan.count : 1;
  sb_printf(sb, "  enum { BUFFERS = %d };\n  static const int first[%d] = {", plan.count, n);
  for (int i = 0; i < plan.count; i++) sb_printf(sb, "%s%d", i ? ", " : "", plan.first[i]);
  sb_printf(sb, "%s};\n  static const int last[%d] = {", plan.count ? "" : "0", n);
  for (int i = 0; i < plan.count; i++) sb_printf(sb, "%s%d", i ? ", " : "", plan.last[i]);
  sb_printf(sb, "%s};\n  size_t sizes[%d] = {0}, offsets[%d];\n", plan.count ? "" : "0", n, n);
  for (int i = 0; i < plan.count; i++) {
    if (plan.node[i] >= 0) {
      const fl_node *nd = &g->nodes[plan.node[i]];
      emit_size(g, &nd->shape, size, sizeof size);
      emit_node_label(g, plan.node[i], label, sizeof label);
      sb_printf(sb, "  sizes[%d] = (size_t)(%s) * sizeof(%s); /* %%%d %s */\n", i, size, emit_ctype(nd->dtype),
                plan.node[i], label);
    } else if (-plan.node[i] - 1 < s->ngroups) {
      char target[32];
      snprintf(target, sizeof target, "sizes[%d]", i);
      kernel_scratch_statement(g, group_conv(g, &s->groups[-plan.node[i] - 1]), target, sb);
    } else {
      int assign = -plan.node[i] - 1 - s->ngroups;
      emit_size(g, &g->nodes[assign].shape, size, sizeof size);
      sb_printf(sb, "  sizes[%d] = (size_t)(%s) * sizeof(%s); /* value of %%%d, taken before the updates */\n", i,
                size, emit_ctype(g->nodes[assign].dtype), assign);
    }
  }
  sb_printf(sb, "  const size_t arena_bytes = flrt_plan_arena(sizes, first, last, BUFFERS, offsets);\n");
  sb_printf(sb, "  if (flrt_arena_reserve(&m->arena, arena_bytes))\n"
                "    return fail(m, \"%s_%s: out of memory for %%zu bytes of intermediate tensors\", arena_bytes);\n"
                "  unsigned char *arena = m->arena.base;\n  (void)arena;\n  (void)offsets;\n", em->prefix, e->name);
  int *slot = xcalloc((size_t)g->nnodes, sizeof(int));
  for (int i = 0; i < plan.count; i++)
    if (plan.node[i] >= 0) slot[plan.node[i]] = i;
  /* Buffers: feeds, variables, constants, aliases and arena slices. */
  bool *read = read_buffers(g, e);
  for (int i = 0; i < g->nnodes; i++) {
    if (!e->needed[i] || !read[i]) continue;
    const fl_node *nd = &g->nodes[i];
    const char *type = emit_ctype(nd->dtype);
    char *buf = xcalloc(32, 1);
    snprintf(buf, 32, "t%d", i);
    buffers[i] = buf;
    if (e->fed[i]) {
      emit_node_label(g, i, label, sizeof label);
      sb_printf(sb, "  const %s *t%d = %sfeed_%s;\n", type, i, nd->shape.rank ? "" : "&", label);
      is_const[i] = true;
    } else if (nd->op == FL_OP_VARIABLE) {
      sb_printf(sb, "  %s *t%d = m->vars.%s;\n", type, i, em->var_names[i]);
    } else if (nd->op == FL_OP_CONST) {
      sb_printf(sb, "  const %s *t%d = c%d;\n", type, i, i);
      is_const[i] = true;
    } else if (nd->op == FL_OP_RESHAPE || nd->op == FL_OP_ASSIGN) {
      int src = nd->inputs[nd->op == FL_OP_ASSIGN ? 1 : 0];
      is_const[i] = is_const[src];
      sb_printf(sb, "  %s%s *t%d = t%d; /* %s: the same data */\n", is_const[i] ? "const " : "", type, i, src,
                fl_op_name(nd->op));
    } else if (s->materialized[i]) {
      sb_printf(sb, "  %s *t%d = (%s *)(arena + offsets[%d]);\n", type, i, type, slot[i]);
    }
  }
  /* The pure kernels in schedule order, then the fetches, then the side
   * effects in node order (an update group goes where its first member is). */
  for (int gi = 0; gi < s->npure; gi++) emit_group_code(em, e, gi, (const char *const *)buffers, &plan, sb);
  emit_fetch_copies(g, e, sb);
  for (int i = 0; i < plan.count; i++) {
    int assign = -plan.node[i] - 1 - s->ngroups;
    if (plan.node[i] >= 0 || assign < 0) continue;
    emit_size(g, &g->nodes[assign].shape, size, sizeof size);
    sb_printf(sb, "  %s *snapshot%d = (%s *)(arena + offsets[%d]);\n  memcpy(snapshot%d, t%d, (size_t)(%s) * sizeof *snapshot%d);\n",
              emit_ctype(g->nodes[assign].dtype), assign, emit_ctype(g->nodes[assign].dtype), i, assign,
              g->nodes[assign].inputs[1], size, assign);
  }
  int next_group = s->npure;
  for (int i = 0; i <= g->nnodes; i++) {
    while (next_group < s->ngroups &&
           (i == g->nnodes || fl_group_side_effect_node(g, &s->groups[next_group]) < i))
      emit_group_code(em, e, next_group++, (const char *const *)buffers, &plan, sb);
    if (i == g->nnodes) break;
    const fl_node *nd = &g->nodes[i];
    if (!e->needed[i] || e->fed[i] || nd->op != FL_OP_ASSIGN) continue;
    emit_node_comment(g, nd, sb);
    char source[32];
    if (assign_needs_snapshot(g, e, i)) snprintf(source, sizeof source, "snapshot%d", i);
    else snprintf(source, sizeof source, "t%d", nd->inputs[1]);
    sb_printf(sb, "  memmove(m->vars.%s, %s, sizeof m->vars.%s);\n", em->var_names[nd->inputs[0]], source,
              em->var_names[nd->inputs[0]]);
  }
  if (e->uses_dropout) sb_printf(sb, "  m->dropout_runs++;\n");
  sb_printf(sb, "  return 0;\n}\n\n");
  for (int i = 0; i < g->nnodes; i++) free(buffers[i]);
  free(buffers);
  free(is_const);
  free(slot);
  free(read);
  free_plan(&plan);
}

/* What --report prints: each entry's arena at the train block's batch size. */
static void write_report(const emit_model *em, FILE *out) {
  const fl_graph *g = em->g;
  int64_t batch = g->train.batch;
  size_t vars = 0, peak_arena = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == FL_OP_VARIABLE)
      vars += (size_t)fl_shape_const_size(&g->nodes[i].shape) * fl_dtype_size(g->nodes[i].dtype);
  fprintf(out, "%s: memory at batch %lld\n", em->prefix, (long long)batch);
  for (int e = 0; e < em->nentries; e++) {
    const emit_entry *en = &em->entries[e];
    arena_plan plan = plan_buffers(g, en);
    size_t *sizes = xcalloc((size_t)plan.count + 1, sizeof(size_t)), *offsets = xcalloc((size_t)plan.count + 1, sizeof(size_t));
    size_t unplanned = 0;
    for (int i = 0; i < plan.count; i++) {
      if (plan.node[i] >= 0) {
        const fl_node *nd = &g->nodes[plan.node[i]];
        sizes[i] = (size_t)fl_shape_size_at(&nd->shape, batch) * fl_dtype_size(nd->dtype);
      } else if (-plan.node[i] - 1 < en->sched->ngroups) {
        sizes[i] = kernel_scratch_bytes(g, group_conv(g, &en->sched->groups[-plan.node[i] - 1]), batch);
      } else {
        const fl_node *nd = &g->nodes[-plan.node[i] - 1 - en->sched->ngroups];
        sizes[i] = (size_t)fl_shape_size_at(&nd->shape, batch) * fl_dtype_size(nd->dtype);
      }
      unplanned += flrt_align(sizes[i]);
    }
    size_t arena = flrt_plan_arena(sizes, plan.first, plan.last, plan.count, offsets);
    fprintf(out, "  entry %-24s %3d kernels  arena %10.2f MiB  (%.2f MiB without reuse)\n", en->name,
            en->sched->ngroups, (double)arena / 1048576.0, (double)unplanned / 1048576.0);
    if (arena > peak_arena) peak_arena = arena;
    free(sizes);
    free(offsets);
    free_plan(&plan);
  }
  fprintf(out, "  variables %.2f MiB, largest arena %.2f MiB: peak %.2f MiB (plus the data set)\n",
          (double)vars / 1048576.0, (double)peak_arena / 1048576.0, (double)(vars + peak_arena) / 1048576.0);
}

/* Every cost is linear in the batch: a + b * batch, from the costs at 1 and 2. */
static void emit_entry_flops(const emit_model *em, const emit_entry *e, strbuf *sb) {
  const fl_graph *g = em->g;
  int64_t all[2] = {0, 0}, gemm[2] = {0, 0};
  for (int i = 0; i < g->nnodes; i++) {
    if (!e->needed[i] || e->fed[i]) continue;
    for (int b = 0; b < 2; b++) {
      int64_t f = fl_node_flops(g, i, b + 1);
      all[b] += f;
      if (fl_node_is_gemm(g, i)) gemm[b] += f;
    }
  }
  sb_printf(sb, "double %s_%s_flops(int64_t batch, bool gemm_only) {\n"
                "  if (gemm_only)\n    return %lld.0 + %lld.0 * (double)batch;\n"
                "  return %lld.0 + %lld.0 * (double)batch;\n}\n\n",
            em->prefix, e->name, (long long)(2 * gemm[0] - gemm[1]), (long long)(gemm[1] - gemm[0]),
            (long long)(2 * all[0] - all[1]), (long long)(all[1] - all[0]));
}

static int emit_source(emit_model *em, strbuf *sb) {
  const fl_graph *g = em->g;
  sb_printf(sb, "/* %s.c - generated by flowc %s from %s. Each kernel function implements\n"
                " * the graph node named in the comment above it. Do not edit. */\n",
            em->prefix, FLOWC_VERSION, em->opt->source_path ? em->opt->source_path : "a description");
  sb_printf(sb, "#include <math.h>\n#include <stdarg.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n"
                "#include <cblas.h>\n\n#include \"%s.h\"\n\n", em->prefix);
  /* Every node any entry or initialiser needs. */
  bool *used = xcalloc((size_t)g->nnodes, sizeof(bool));
  for (int e = 0; e < em->nentries; e++)
    for (int i = 0; i < g->nnodes; i++)
      if (em->entries[e].needed[i] && !em->entries[e].fed[i]) used[i] = true;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == FL_OP_VARIABLE && g->nodes[i].attr.init >= 0) used[g->nodes[i].attr.init] = true;
  for (int i = 0; i < g->nnodes; i++)
    if (used[i] && g->nodes[i].op == FL_OP_CONST) emit_const_data(g, i, sb);
  sb_printf(sb, "\n");
  /* One definition per single node and per distinct fused group. */
  bool *defined = xcalloc((size_t)g->nnodes, sizeof(bool));
  for (int e = 0; e < em->nentries; e++) {
    const fl_schedule *sched = em->entries[e].sched;
    for (int gi = 0; gi < sched->ngroups; gi++) {
      const fl_group *grp = &sched->groups[gi];
      if (grp->kind == FL_GROUP_SINGLE) {
        if (!defined[grp->nodes[0]]) emit_kernel(g, grp->nodes[0], sb);
        defined[grp->nodes[0]] = true;
      } else {
        int before = em->nfused;
        const char *name = fused_name(em, grp);
        if (em->nfused > before) emit_group_kernel(g, grp, name, sb);
      }
    }
  }
  free(defined);
  free(used);
  emit_lifecycle(em, sb);
  if (emit_init(em, sb)) return -1;
  for (int e = 0; e < em->nentries; e++) {
    emit_entry_body(em, &em->entries[e], sb);
    emit_entry_flops(em, &em->entries[e], sb);
  }
  return 0;
}

int fl_emit_c(const fl_graph *g, const char *dir, const fl_codegen_options *opt) {
  emit_model em;
  memset(&em, 0, sizeof em);
  em.g = g;
  em.opt = opt;
  fl_c_identifier(opt->name ? opt->name : "model", em.prefix, sizeof em.prefix);
  em.entries = xcalloc((size_t)g->train.nactions + 1, sizeof(emit_entry));
  em.action_entry = xcalloc((size_t)g->train.nactions + 1, sizeof(int));
  var_field_names(&em);
  int status = 0;
  for (int i = 0; i < g->train.nactions && status == 0; i++) {
    em.action_entry[i] = build_entry_for_action(&em, &g->train.actions[i]);
    if (em.action_entry[i] < 0) status = -1;
  }
  for (int e = 0; e < em.nentries && status == 0; e++) {
    emit_entry *en = &em.entries[e];
    en->sched = fl_schedule_run(g, en->needed, en->fed, en->fetches, en->nfetches, !opt->no_fuse);
  }
  strbuf header = {0}, source = {0}, main_c = {0};
  if (status == 0 && opt->report) write_report(&em, opt->report);
  if (status == 0) {
    emit_header(&em, &header);
    status = emit_source(&em, &source);
  }
  if (status == 0 && opt->with_main) status = emit_main(&em, &main_c);
  if (status == 0) {
    char name[128];
    snprintf(name, sizeof name, "%s.h", em.prefix);
    status = sb_write_file(&header, dir, name);
    snprintf(name, sizeof name, "%s.c", em.prefix);
    if (status == 0) status = sb_write_file(&source, dir, name);
    if (status == 0 && opt->with_main) status = sb_write_file(&main_c, dir, "main.c");
  }
  sb_free(&header);
  sb_free(&source);
  sb_free(&main_c);
  free_entries(&em);
  return status;
}

int fl_dump_fusion(const fl_graph *g, FILE *out) {
  emit_model em;
  memset(&em, 0, sizeof em);
  em.g = g;
  em.entries = xcalloc((size_t)g->train.nactions + 1, sizeof(emit_entry));
  em.action_entry = xcalloc((size_t)g->train.nactions + 1, sizeof(int));
  int status = 0;
  for (int i = 0; i < g->train.nactions && status == 0; i++)
    if ((em.action_entry[i] = build_entry_for_action(&em, &g->train.actions[i])) < 0) status = -1;
  for (int e = 0; e < em.nentries && status == 0; e++) {
    emit_entry *en = &em.entries[e];
    en->sched = fl_schedule_run(g, en->needed, en->fed, en->fetches, en->nfetches, true);
    int nodes = 0;
    for (int i = 0; i < en->sched->ngroups; i++) nodes += en->sched->groups[i].nnodes;
    fprintf(out, "entry %s: %d kernels for %d nodes\n", en->name, en->sched->ngroups, nodes);
    fl_dump_schedule(g, en->sched, out);
  }
  free_entries(&em);
  return status;
}

/* ---- for the CUDA backend (emit_cuda.c) ------------------------------------
 * It emits the same entries, variables, initialisation and checkpoints, so
 * that the generated APIs match and the driver (emit_main.c) serves both. */

int emit_model_init(emit_model *em, const fl_graph *g, const fl_codegen_options *opt) {
  memset(em, 0, sizeof *em);
  em->g = g;
  em->opt = opt;
  fl_c_identifier(opt->name ? opt->name : "model", em->prefix, sizeof em->prefix);
  em->entries = xcalloc((size_t)g->train.nactions + 1, sizeof(emit_entry));
  em->action_entry = xcalloc((size_t)g->train.nactions + 1, sizeof(int));
  var_field_names(em);
  for (int i = 0; i < g->train.nactions; i++)
    if ((em->action_entry[i] = build_entry_for_action(em, &g->train.actions[i])) < 0) return -1;
  for (int e = 0; e < em->nentries; e++) {
    emit_entry *en = &em->entries[e];
    en->sched = fl_schedule_run(g, en->needed, en->fed, en->fetches, en->nfetches, !opt->no_fuse);
  }
  return 0;
}

void emit_model_free(emit_model *em) { free_entries(em); }
void emit_entry_params(const emit_model *em, const emit_entry *e, strbuf *sb) { entry_params(em, e, sb); }
bool emit_assign_needs_snapshot(const fl_graph *g, const emit_entry *e, int assign) {
  return assign_needs_snapshot(g, e, assign);
}
void emit_entry_doc(const emit_model *em, const emit_entry *e, strbuf *sb) { entry_doc(em, e, sb); }
void emit_const_array(const fl_graph *g, int id, strbuf *sb) { emit_const_data(g, id, sb); }
int emit_init_function(const emit_model *em, strbuf *sb) { return emit_init(em, sb); }
void emit_flops_function(const emit_model *em, const emit_entry *e, strbuf *sb) { emit_entry_flops(em, e, sb); }
const char *emit_fused_name(emit_model *em, const fl_group *grp) { return fused_name(em, grp); }
