/* emit_main.c - the generated training executable's main(): flags, data,
 * the step loop the train block describes, progress, checkpoints, test. */
#include <stdlib.h>
#include <string.h>

#include "emit_internal.h"

/* Writes text as a C string literal's contents. */
static void c_string(strbuf *sb, const char *text) {
  for (const char *p = text; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') sb_printf(sb, "\\%c", c);
    else if (c == '\n') sb_printf(sb, "\\n");
    else if (c == '\t') sb_printf(sb, "\\t");
    else if (c < 32 || c >= 127) sb_printf(sb, "\\%03o", c);
    else sb_printf(sb, "%c", c);
  }
}

static const char *action_when(const fl_action *a) {
  switch (a->when) {
  case FL_WHEN_START: return "start";
  case FL_WHEN_END: return "end";
  case FL_WHEN_TEST: return "test";
  case FL_WHEN_EVERY: return "every";
  default: return "step";
  }
}

/* The arguments of an entry call: symbols, feeds, then fetch outputs. */
static void entry_args(const emit_model *em, const emit_entry *e, const fl_action *a,
                       const char *batch, const char *images, const char *labels,
                       const char *out_prefix, strbuf *sb) {
  const fl_graph *g = em->g;
  if (em->device_data) images = labels = "NULL"; /* CUDA: the batch staged on the GPU */
  sb_printf(sb, "m");
  for (int s = 0; s < g->nsyms; s++)
    if (e->syms[s]) sb_printf(sb, ", %s", batch);
  for (int i = 0; i < e->nfeeds; i++) {
    int id = e->feeds[i];
    if (id == g->train.images_node && g->train.data != FL_DATA_NONE && images) sb_printf(sb, ", %s", images);
    else if (id == g->train.labels_node && g->train.data != FL_DATA_NONE && labels) sb_printf(sb, ", %s", labels);
    else {
      double value = 0;
      for (int k = 0; k < a->nfeeds; k++)
        if (a->feeds[k].node == id) value = a->feeds[k].value;
      char lit[64];
      if (g->nodes[id].dtype == FL_F32) emit_float(lit, sizeof lit, value);
      else snprintf(lit, sizeof lit, "%lld", (long long)value);
      sb_printf(sb, ", %s", lit);
    }
  }
  for (int i = 0; i < e->nfetches; i++) sb_printf(sb, ", %s%d", out_prefix, i);
}

/* Declares one output buffer per fetch of the entry. */
static int declare_outputs(const emit_model *em, const emit_entry *e, const fl_action *a, strbuf *sb) {
  const fl_graph *g = em->g;
  for (int i = 0; i < e->nfetches; i++) {
    const fl_node *n = &g->nodes[e->fetches[i]];
    int64_t size = fl_shape_const_size(&n->shape);
    if (size < 0) {
      char label[96];
      emit_node_label(g, e->fetches[i], label, sizeof label);
      fl_error(a->loc, "print: '%s' has a batch-sized shape; print a reduction of it (reduce_mean, ...)", label);
      return -1;
    }
    sb_printf(sb, "    %s out%d[%lld];\n", emit_ctype(n->dtype), i, (long long)(size > 0 ? size : 1));
  }
  return 0;
}

/* The statements that print one action's format, reading out<k> buffers. */
static void print_pieces(const emit_model *em, const emit_entry *e, const fl_action *a, strbuf *sb,
                         const char *indent) {
  const fl_graph *g = em->g;
  for (int p = 0; p < a->npieces; p++) {
    const fl_print_piece *piece = &a->pieces[p];
    if (piece->is_step) {
      sb_printf(sb, "%sprintf(\"%%lld\", (long long)step);\n", indent);
    } else if (piece->node >= 0) {
      int k = 0;
      while (k < e->nfetches && e->fetches[k] != piece->node) k++;
      const fl_node *n = &g->nodes[piece->node];
      sb_printf(sb, "%s{\n%s  static const int64_t dims[] = {", indent, indent);
      for (int j = 0; j < n->shape.rank; j++) sb_printf(sb, "%s%lld", j ? ", " : "", (long long)n->shape.dims[j].coef);
      sb_printf(sb, "%s};\n", n->shape.rank ? "" : "1");
      if (n->dtype == FL_F32) {
        sb_printf(sb, "%s  flrt_print_tensor(stdout, out%d, %d, dims);\n", indent, k, n->shape.rank);
      } else {
        /* integers and booleans print through floats, exact for small values */
        int64_t size = fl_shape_const_size(&n->shape);
        sb_printf(sb, "%s  float as_float[%lld];\n%s  for (int i = 0; i < %lld; i++)\n%s    as_float[i] = (float)out%d[i];\n",
                  indent, (long long)(size > 0 ? size : 1), indent, (long long)size, indent, k);
        sb_printf(sb, "%s  flrt_print_tensor(stdout, as_float, %d, dims);\n", indent, n->shape.rank);
      }
      sb_printf(sb, "%s}\n", indent);
    } else if (piece->text && piece->text[0]) {
      sb_printf(sb, "%sfputs(\"", indent);
      c_string(sb, piece->text);
      sb_printf(sb, "\", stdout);\n");
    }
  }
  sb_printf(sb, "%sputchar('\\n');\n%sfflush(stdout);\n", indent, indent);
}

static int emit_action(const emit_model *em, int index, strbuf *sb) {
  const fl_graph *g = em->g;
  const fl_action *a = &g->train.actions[index];
  const emit_entry *e = &em->entries[em->action_entry[index]];
  bool any_sym = false;
  for (int s = 0; s < g->nsyms; s++) any_sym |= e->syms[s];
  bool on_batch = a->when != FL_WHEN_START && a->when != FL_WHEN_END;
  if (any_sym && (!on_batch || g->train.data == FL_DATA_NONE)) {
    fl_error(a->loc, "%s: this action needs a batch size (its tensors have a symbolic "
                     "dimension) but runs without a data batch", action_when(a));
    return -1;
  }
  const char *indent = "    ";
  sb_printf(sb, "  { /* %s: %s (line %d) */\n", action_when(a), a->kind == FL_ACT_RUN ? "run" : "print", a->loc.line);
  if (a->when == FL_WHEN_EVERY)
    sb_printf(sb, "    if (step %% %lld == 0) {\n", (long long)(a->every > 0 ? a->every : 1)), indent = "      ";
  if (a->when == FL_WHEN_TEST) {
    /* Test values are means over the test set, computed in chunks so that a
     * large model does not need the whole set's activations at once. */
    if (declare_outputs(em, e, a, sb)) return -1;
    sb_printf(sb, "    double sums[%d] = {0};\n", e->nfetches + 1);
    sb_printf(sb, "    for (int64_t start = 0; start < data.test.n; start += TEST_CHUNK) {\n"
                  "      const int64_t count = data.test.n - start < TEST_CHUNK ? data.test.n - start : TEST_CHUNK;\n");
    if (em->device_data)
      sb_printf(sb, "      if (%s_stage_range(m, %s_TEST_SPLIT, start, count))\n        fail_model(m);\n", em->prefix,
                em->prefix);
    else
      sb_printf(sb, "      flrt_split_slice(&data.test, start, count, test_images, test_labels);\n");
    sb_printf(sb, "      if (%s_%s(", em->prefix, e->name);
    entry_args(em, e, a, "count", "test_images", "test_labels", "out", sb);
    sb_printf(sb, "))\n        fail_model(m);\n");
    for (int i = 0; i < e->nfetches; i++) {
      if (g->nodes[e->fetches[i]].shape.rank != 0) {
        fl_error(a->loc, "test: values are averaged over the test set, so they must be scalars");
        return -1;
      }
      sb_printf(sb, "      sums[%d] += (double)out%d[0] * (double)count;\n", i, i);
    }
    sb_printf(sb, "    }\n");
    for (int i = 0; i < e->nfetches; i++)
      sb_printf(sb, "    out%d[0] = (%s)(sums[%d] / (double)data.test.n);\n", i,
                emit_ctype(g->nodes[e->fetches[i]].dtype), i);
    sb_printf(sb, "    const int64_t step = m->step;\n    (void)step;\n");
    print_pieces(em, e, a, sb, indent);
    sb_printf(sb, "  }\n");
    return 0;
  }
  if (a->kind == FL_ACT_RUN) {
    sb_printf(sb, "%sif (%s_%s(", indent, em->prefix, e->name);
    /* training runs leave loss and accuracy in step_loss / step_accuracy */
    strbuf args = {0};
    entry_args(em, e, a, "opt.batch", "images", "labels", "&run_out", &args);
    sb_printf(sb, "%s))\n%s  fail_model(m);\n", args.text, indent);
    sb_free(&args);
  } else {
    if (declare_outputs(em, e, a, sb)) return -1;
    sb_printf(sb, "%sif (%s_%s(", indent, em->prefix, e->name);
    entry_args(em, e, a, "opt.batch", "images", "labels", "out", sb);
    sb_printf(sb, "))\n%s  fail_model(m);\n", indent);
    print_pieces(em, e, a, sb, indent);
  }
  if (a->when == FL_WHEN_EVERY) sb_printf(sb, "    }\n");
  sb_printf(sb, "  }\n");
  return 0;
}

/* The entry of the first training run, or NULL. */
static const emit_entry *training_entry(const emit_model *em) {
  const fl_train *t = &em->g->train;
  for (int i = 0; i < t->nactions; i++)
    if (t->actions[i].when == FL_WHEN_STEP && t->actions[i].kind == FL_ACT_RUN)
      return &em->entries[em->action_entry[i]];
  return NULL;
}

/* FLOPs of one run of an entry as a + b * batch (every cost is linear in N). */
static void entry_flops(const fl_graph *g, const emit_entry *e, int64_t *fixed, int64_t *per_example) {
  int64_t at1 = 0, at2 = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (e->needed[i] && !e->fed[i]) {
      at1 += fl_node_flops(g, i, 1);
      at2 += fl_node_flops(g, i, 2);
    }
  *per_example = at2 - at1;
  *fixed = at1 - *per_example;
}

/* The per-layer table printed before the first step, Darknet style: each
 * user-named tensor of the forward pass with the unnamed nodes that feed it. */
static void emit_summary(const emit_model *em, const emit_entry *e, strbuf *sb) {
  const fl_graph *g = em->g;
  int limit = g->nforward ? g->nforward : g->nnodes;
  int *owner = calloc((size_t)g->nnodes, sizeof(int));
  int *stack = calloc((size_t)g->nnodes + 1, sizeof(int));
  if (!owner || !stack) {
    free(owner);
    free(stack);
    return;
  }
  sb_printf(sb, "static void print_summary(int64_t batch) {\n");
  sb_printf(sb, "  printf(\"%%-20s %%-26s %%-20s %%10s %%12s\\n\", \"layer\", \"op\", \"output\", \"params\", \"MFLOP/image\");\n");
  int64_t total_params = 0;
  for (int i = 0; i < limit; i++) {
    const fl_node *n = &g->nodes[i];
    if (!n->name || !e->needed[i] || e->fed[i] || n->op == FL_OP_VARIABLE || n->op == FL_OP_PLACEHOLDER ||
        n->op == FL_OP_CONST || n->op == FL_OP_FILL || owner[i])
      continue;
    /* Claim the unnamed nodes this one is made of. */
    int64_t flops = 0, params = 0, depth = 0;
    stack[depth++] = i;
    owner[i] = i + 1;
    while (depth) {
      int k = stack[--depth];
      flops += fl_node_flops(g, k, 1);
      const fl_node *kn = &g->nodes[k];
      for (int j = 0; j < kn->ninputs; j++) {
        int in = kn->inputs[j];
        const fl_node *inn = &g->nodes[in];
        if (inn->op == FL_OP_VARIABLE && inn->attr.trainable && !owner[in]) {
          owner[in] = i + 1;
          params += fl_shape_const_size(&inn->shape);
        } else if (!inn->name && !owner[in] && inn->op != FL_OP_VARIABLE) {
          owner[in] = i + 1;
          stack[depth++] = in;
        }
      }
    }
    total_params += params;
    char shape[160], label[96];
    fl_shape_str(g, &n->shape, shape, sizeof shape);
    fl_c_identifier(n->name, label, sizeof label);
    sb_printf(sb, "  printf(\"%%-20s %%-26s %%-20s %%10lld %%12.3f\\n\", \"%.20s\", \"%.26s\", \"%.20s\", %lldLL, %.6f);\n",
              label, fl_op_name(n->op), shape, (long long)params, (double)flops / 1e6);
  }
  int64_t fixed, per_example;
  entry_flops(g, e, &fixed, &per_example);
  sb_printf(sb, "  printf(\"%%-68s %%10lld\\n\", \"trainable parameters\", %lldLL);\n", (long long)total_params);
  sb_printf(sb, "  printf(\"one training step of %%lld images: %%.3f GFLOP (forward, backward and update)\\n\",\n"
                "         (long long)batch, (%lld.0 + %lld.0 * (double)batch) / 1e9);\n}\n\n",
            (long long)fixed, (long long)per_example);
  free(owner);
  free(stack);
}

int emit_main(const emit_model *em, strbuf *sb) {
  const fl_graph *g = em->g;
  const fl_train *t = &g->train;
  const char *p = em->prefix;
  bool data = t->data != FL_DATA_NONE;
  int status = 0;
  sb_printf(sb, "/* main.c - generated by flowc %s: the training executable of %s (from %s).\n"
                " * It runs the train block: flags override its settings (--help lists them). */\n",
            FLOWC_VERSION, p, em->opt->source_path ? em->opt->source_path : "a description");
  sb_printf(sb, "#include <math.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n#include \"%s.h\"\n\n", p);
  sb_printf(sb, "enum { TEST_CHUNK = 1000, IMAGE_SIZE = 784, CLASSES = 10 };\n\n");
  sb_printf(sb, "static const char *program = \"%s\";\n\n", p);
  sb_printf(sb, "static void fail_model(%s *m) {\n  fprintf(stderr, \"%%s: %%s\\n\", program, %s_error(m));\n  exit(1);\n}\n\n", p, p);
  sb_printf(sb, "static void save_or_fail(%s *m, const char *path) {\n  if (%s_save(m, path))\n    fail_model(m);\n}\n\n", p, p);
  const emit_entry *train = training_entry(em);
  int64_t step_fixed = 0, step_per_example = 0;
  if (train && data) {
    emit_summary(em, train, sb);
    entry_flops(g, train, &step_fixed, &step_per_example);
  }
  sb_printf(sb, "int main(int argc, char **argv) {\n");
  sb_printf(sb, "  flrt_options opt = {0};\n  opt.data_dir = \"");
  c_string(sb, t->data_dir ? t->data_dir : "MNIST_data");
  sb_printf(sb, "\";\n  opt.steps = %lld;\n  opt.batch = %lld;\n  opt.validation = %lld;\n  opt.seed = %lluu;\n  opt.log_every = %d;\n",
            (long long)t->steps, (long long)t->batch, (long long)t->validation, (unsigned long long)t->seed, data ? 100 : 0);
  sb_printf(sb, "  if (argc > 0 && argv[0]) program = argv[0];\n  flrt_select_blas_kernels(argv);\n");
  sb_printf(sb, "  flrt_parse_options(argc, argv, \"the %s model, compiled by flowc from ", p);
  c_string(sb, em->opt->source_path ? em->opt->source_path : "a description");
  sb_printf(sb, "\", &opt);\n  flrt_set_threads(opt.threads);\n  flrt_flush_denormals();\n  flrt_install_interrupt_handler();\n\n");
  sb_printf(sb, "  %s *m = %s_new(opt.seed);\n  if (!m) {\n    fprintf(stderr, \"%%s: out of memory for the model\\n\", program);\n    return 1;\n  }\n", p, p);
  sb_printf(sb, "  if (opt.resume_path) {\n    if (%s_load(m, opt.resume_path))\n      fail_model(m);\n"
                "    if (!opt.quiet)\n      printf(\"resumed from %%s at step %%lld\\n\", opt.resume_path, (long long)m->step);\n  }\n", p);
  sb_printf(sb, "  float run_out0 = NAN, run_out1 = NAN, run_out2 = NAN, run_out3 = NAN; /* loss, accuracy */\n"
                "  (void)run_out2;\n  (void)run_out3;\n");
  if (data) {
    sb_printf(sb, "  char err[1024];\n"
                  "  if (opt.download_url && flrt_download_mnist(opt.download_url, opt.data_dir, err, sizeof err)) {\n"
                  "    fprintf(stderr, \"%%s: %%s\\n\", program, err);\n    return 1;\n  }\n"
                  "  flrt_datasets data;\n"
                  "  if (flrt_read_data_sets(opt.data_dir, opt.validation, &data, err, sizeof err)) {\n"
                  "    fprintf(stderr, \"%%s: %%s\\n\", program, err);\n    return 1;\n  }\n");
    sb_printf(sb, "  if (!opt.quiet)\n    printf(\"data: %%lld training, %%lld validation, %%lld test images from %%s\\n\",\n"
                  "           (long long)data.train.n, (long long)data.validation.n, (long long)data.test.n, opt.data_dir);\n");
    sb_printf(sb, "  flrt_batcher batcher;\n  if (flrt_batcher_init(&batcher, &data.train, opt.seed)) {\n"
                  "    fprintf(stderr, \"%%s: out of memory\\n\", program);\n    return 1;\n  }\n"
                  "  flrt_batcher_seek(&batcher, m->consumed);\n");
    if (em->device_data) /* CUDA: the data sets go to the GPU once; batches are gathered there */
      sb_printf(sb, "  if (%s_upload_data(m, &data))\n    fail_model(m);\n"
                    "  int64_t *batch_rows = malloc((size_t)opt.batch * sizeof *batch_rows);\n"
                    "  if (!batch_rows) {\n    fprintf(stderr, \"%%s: out of memory\\n\", program);\n    return 1;\n  }\n", p);
    sb_printf(sb, "  float *images = malloc((size_t)opt.batch * IMAGE_SIZE * sizeof(float));\n"
                  "  float *labels = malloc((size_t)opt.batch * CLASSES * sizeof(float));\n"
                  "  float *test_images = malloc((size_t)TEST_CHUNK * IMAGE_SIZE * sizeof(float));\n"
                  "  float *test_labels = malloc((size_t)TEST_CHUNK * CLASSES * sizeof(float));\n"
                  "  if (!images || !labels || !test_images || !test_labels) {\n"
                  "    fprintf(stderr, \"%%s: out of memory for batches of %%lld\\n\", program, (long long)opt.batch);\n    return 1;\n  }\n");
  }
  if (train && data)
    sb_printf(sb, "  if (!opt.quiet)\n    print_summary(opt.batch);\n"
                  "  const double step_gflop = (%lld.0 + %lld.0 * (double)opt.batch) / 1e9;\n",
              (long long)step_fixed, (long long)step_per_example);
  else
    sb_printf(sb, "  const double step_gflop = 0.0;\n");
  sb_printf(sb, "\n  int64_t step = m->step;\n  (void)step;\n");
  for (int i = 0; i < t->nactions && status == 0; i++)
    if (t->actions[i].when == FL_WHEN_START) status = emit_action(em, i, sb);
  sb_printf(sb, "\n  double window_start = flrt_now_ms();\n  int64_t window_steps = 0;\n");
  sb_printf(sb, "  for (; step < opt.steps; step++) {\n");
  if (data && em->device_data)
    sb_printf(sb, "    flrt_batcher_next_indices(&batcher, opt.batch, batch_rows);\n"
                  "    if (%s_stage_rows(m, %s_TRAIN_SPLIT, batch_rows, opt.batch))\n      fail_model(m);\n", p, p);
  else if (data) sb_printf(sb, "    flrt_batcher_next(&batcher, opt.batch, images, labels);\n");
  for (int i = 0; i < t->nactions && status == 0; i++)
    if (t->actions[i].when == FL_WHEN_STEP || t->actions[i].when == FL_WHEN_EVERY) status = emit_action(em, i, sb);
  sb_printf(sb, "    m->step = step + 1;\n    m->consumed += %s;\n    window_steps++;\n", data ? "opt.batch" : "0");
  sb_printf(sb, "    if (!opt.quiet && opt.log_every > 0 && m->step %% opt.log_every == 0) {\n"
                "      const double ms = (flrt_now_ms() - window_start) / (double)window_steps;\n"
                "      printf(\"step %%6lld  loss %%.4f  batch accuracy %%.3f  %%.2f ms/step  %%.0f images/s  %%.1f GFLOP/s\\n\",\n"
                "             (long long)m->step, run_out0, run_out1, ms, ms > 0 ? 1000.0 * (double)opt.batch / ms : 0.0,\n"
                "             ms > 0 ? step_gflop * 1000.0 / ms : 0.0);\n"
                "      fflush(stdout);\n      window_start = flrt_now_ms();\n      window_steps = 0;\n    }\n");
  sb_printf(sb, "    if (opt.save_path && opt.save_every > 0 && m->step %% opt.save_every == 0)\n      save_or_fail(m, opt.save_path);\n");
  sb_printf(sb, "    if (flrt_interrupted()) {\n"
                "      const char *path = opt.save_path ? opt.save_path : \"%s-interrupted.safetensors\";\n"
                "      save_or_fail(m, path);\n"
                "      fprintf(stderr, \"%%s: interrupted after step %%lld; saved %%s (continue with --resume %%s)\\n\",\n"
                "              program, (long long)m->step, path, path);\n      return 130;\n    }\n  }\n", p);
  /* Saved before the end and test actions: evaluation may draw dropout masks
   * (advancing the counter), and a resumed run must continue from the state
   * the last step left, as an uninterrupted run does. */
  sb_printf(sb, "  if (opt.save_path) {\n    save_or_fail(m, opt.save_path);\n"
                "    if (!opt.quiet)\n      printf(\"saved %%s\\n\", opt.save_path);\n  }\n");
  for (int i = 0; i < t->nactions && status == 0; i++)
    if (t->actions[i].when == FL_WHEN_END) status = emit_action(em, i, sb);
  if (data) {
    for (int i = 0; i < t->nactions && status == 0; i++)
      if (t->actions[i].when == FL_WHEN_TEST) status = emit_action(em, i, sb);
  } else {
    for (int i = 0; i < t->nactions && status == 0; i++)
      if (t->actions[i].when == FL_WHEN_TEST) {
        fl_error(t->actions[i].loc, "test: there is no test set without `data = mnist(...)`");
        status = -1;
      }
  }
  if (data)
    sb_printf(sb, "  free(images);\n  free(labels);\n  free(test_images);\n  free(test_labels);\n"
                  "  flrt_batcher_free(&batcher);\n  flrt_free_data_sets(&data);\n");
  if (data && em->device_data) sb_printf(sb, "  free(batch_rows);\n");
  sb_printf(sb, "  %s_free(m);\n  return 0;\n}\n", p);
  return status;
}
