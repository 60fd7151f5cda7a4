/* infer.c - flowc build/emit --infer: inference binaries and C libraries for the host, aarch64 Linux, Cortex-M4 and wasm32.
 *
 *   flowc build FILE --infer ENTRY --weights CKPT [--target T] -o OUT
 *   flowc emit  FILE --infer ENTRY --weights CKPT [--target T] -o DIR
 *
 * Both read the checkpoint now, at build time, and refuse one that does not
 * fit the model (a missing tensor, another shape or dtype, a truncated file),
 * naming the tensor. emit writes the model (NAME.h, NAME.c: a C99 library with
 * no malloc and no stdio), the target's support files (runtime/infer/) and a
 * Makefile; build compiles them with the target's toolchain into a classifier
 * program (host, aarch64-linux-gnu), a firmware image (cortex-m4) or a
 * WebAssembly module with a Node.js runner (wasm32). A missing toolchain is
 * named with the Debian packages that provide it. docs/INFERENCE.md has the
 * details. */
#include "infer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "build.h"
#include "codegen.h"
#include "commands.h"
#include "flowc_rt.h"
#include "front_internal.h"

static fl_loc nowhere(void) { return (fl_loc){0, 0, 0, 0}; }

/* ---- targets ---------------------------------------------------------------- */

typedef enum {
  TARGET_CLASSIFIER, /* a Linux program: flowc_classify.c around the model */
  TARGET_FIRMWARE,   /* a bare-metal ELF: start-up code, semihosting, baked-in images */
  TARGET_WASM,       /* a WebAssembly module and its Node.js runner */
} target_kind;

typedef struct {
  const char *name;
  const char *alias;     /* another spelling accepted on the command line, or NULL */
  target_kind kind;
  const char *compiler;  /* the default C compiler (host: $CC, else cc) */
  const char *packages;  /* Debian packages that provide the toolchain */
  const char *runner;    /* how to run the result here, for the closing hint; NULL: natively */
  const char *runner_package; /* the Debian package of the runner */
  const char *default_output; /* printf format of the default output name, %s = model name */
  bool native;           /* the machine flowc runs on: -march=native, and zlib for gzip files */
} infer_target;

static const infer_target targets[] = {
    {"host", NULL, TARGET_CLASSIFIER, "cc", "gcc zlib1g-dev", NULL, NULL, "%s_classify", true},
    {"aarch64-linux-gnu", "aarch64", TARGET_CLASSIFIER, "aarch64-linux-gnu-gcc",
     "gcc-aarch64-linux-gnu libc6-dev-arm64-cross", "qemu-aarch64-static", "qemu-user-static",
     "%s_classify_aarch64", false},
    {"cortex-m4", NULL, TARGET_FIRMWARE, "arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi",
     "qemu-system-arm -M mps2-an386 -nographic -semihosting-config enable=on,target=native -kernel",
     "qemu-system-arm", "%s.elf", false},
    {"wasm32", "wasm", TARGET_WASM, "clang", "clang lld", "node", "nodejs", "%s.wasm", false},
};
enum { NTARGETS = sizeof targets / sizeof targets[0] };

static const infer_target *find_target(const char *name) {
  for (int i = 0; i < NTARGETS; i++)
    if (strcmp(targets[i].name, name) == 0 || (targets[i].alias && strcmp(targets[i].alias, name) == 0))
      return &targets[i];
  return NULL;
}

static void target_list(char *buf, size_t cap) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < NTARGETS && used < cap; i++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", targets[i].name);
}

/* ---- the request ------------------------------------------------------------ */

enum { MAX_FEEDS = 16 };

typedef struct {
  const char *source_path;
  const char *output;
  const char *entry_name;
  const char *weights_path;
  const infer_target *target;
  const char *cc;          /* --cc or $CC (host only) */
  const char *name;        /* --name: the C prefix */
  const char *images_path; /* --images: IDX images baked into firmware */
  int64_t batch;
  int64_t image_count;     /* --count */
  const char *feeds[MAX_FEEDS]; /* NAME=VALUE */
  int nfeeds;
  bool keep, verbose;
} infer_request;

static const char *const infer_value_options[] = {"--infer", "--weights", "--target", "--feed", "--batch",
                                                  "--cc",    "--name",    "--images", "--count", NULL};

bool fl_infer_requested(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--infer") == 0 || strncmp(argv[i], "--infer=", 8) == 0) return true;
  }
  return false;
}

static int parse_positive(const char *option, const char *text, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (end == text || *end || errno || v < 1 || v > 1000000)
    return flowc_usage_error("%s: expected a whole number from 1 to 1000000, found '%s'", option, text);
  *out = v;
  return FLOWC_OK;
}

static int read_request(const struct flowc_args *args, bool is_build, infer_request *req) {
  memset(req, 0, sizeof *req);
  req->source_path = args->input;
  req->output = args->output;
  req->batch = 1;
  req->image_count = 10;
  const char *target = "host";
  for (int i = 0; i < args->nextra; i++) {
    const char *opt = args->extra[i], *value = NULL;
    char key[32];
    const char *eq = strchr(opt, '=');
    /* --option=value works as well as --option value */
    if (eq && (size_t)(eq - opt) < sizeof key) {
      snprintf(key, sizeof key, "%.*s", (int)(eq - opt), opt);
      value = eq + 1;
    } else {
      snprintf(key, sizeof key, "%s", opt);
      bool takes_value = false;
      for (int k = 0; infer_value_options[k]; k++) takes_value |= strcmp(opt, infer_value_options[k]) == 0;
      if (takes_value) value = args->extra[++i];
    }
    int rc = FLOWC_OK;
    if (strcmp(key, "--infer") == 0 && value) req->entry_name = value;
    else if (strcmp(key, "--weights") == 0 && value) req->weights_path = value;
    else if (strcmp(key, "--target") == 0 && value) target = value;
    else if (strcmp(key, "--cc") == 0 && value) req->cc = value;
    else if (strcmp(key, "--name") == 0 && value) req->name = value;
    else if (strcmp(key, "--images") == 0 && value) req->images_path = value;
    else if (strcmp(key, "--batch") == 0 && value) rc = parse_positive("--batch", value, &req->batch);
    else if (strcmp(key, "--count") == 0 && value) {
      rc = parse_positive("--count", value, &req->image_count);
      if (rc == FLOWC_OK && req->image_count > 10000)
        return flowc_usage_error("--count %s: at most 10000 images go into firmware", value);
    } else if (strcmp(key, "--feed") == 0 && value) {
      if (req->nfeeds == MAX_FEEDS) return flowc_usage_error("too many --feed options (at most %d)", MAX_FEEDS);
      req->feeds[req->nfeeds++] = value;
    } else if (strcmp(key, "--keep") == 0 && !value && is_build) req->keep = true;
    else if ((strcmp(key, "--verbose") == 0 || strcmp(key, "-v") == 0) && !value) req->verbose = true;
    else return flowc_usage_error("%s --infer: unknown option '%s'", args->command, opt);
    if (rc != FLOWC_OK) return rc;
  }
  if (!req->entry_name || !*req->entry_name)
    return flowc_usage_error("--infer needs the name of the tensor to compute (--infer y_conv)");
  if (!req->weights_path)
    return flowc_usage_error("--infer needs the trained weights: --weights CHECKPOINT.safetensors");
  req->target = find_target(target);
  if (!req->target) {
    char list[256];
    target_list(list, sizeof list);
    return flowc_usage_error("unknown target '%s'; the targets are: %s", target, list);
  }
  if (req->images_path && req->target->kind != TARGET_FIRMWARE)
    return flowc_usage_error("--images bakes test images into firmware: it needs --target cortex-m4");
  return FLOWC_OK;
}

/* Scalars fixed at build time: the test action's `with` values first (what
 * the training executable evaluates with: keep_prob = 1.0), then --feed. */
static int fixed_feeds(const fl_graph *g, const infer_request *req, fl_infer_fixed *fixed, int *nfixed) {
  *nfixed = 0;
  const fl_train *t = &g->train;
  for (int a = 0; a < t->nactions; a++) {
    if (t->actions[a].when != FL_WHEN_TEST) continue;
    for (int f = 0; f < t->actions[a].nfeeds && *nfixed < MAX_FEEDS * 2; f++) {
      const fl_feed *feed = &t->actions[a].feeds[f];
      bool seen = false;
      for (int k = 0; k < *nfixed; k++) seen |= fixed[k].node == feed->node;
      if (!seen) fixed[(*nfixed)++] = (fl_infer_fixed){feed->node, feed->value};
    }
  }
  for (int i = 0; i < req->nfeeds; i++) {
    const char *text = req->feeds[i], *eq = strchr(text, '=');
    char name[256], *end;
    if (!eq || eq == text || (size_t)(eq - text) >= sizeof name) {
      fl_error(nowhere(), "--feed %s: write --feed NAME=VALUE, as in --feed keep_prob=1.0", text);
      return -1;
    }
    snprintf(name, sizeof name, "%.*s", (int)(eq - text), text);
    errno = 0;
    double value = strtod(eq + 1, &end);
    if (end == eq + 1 || *end || errno == ERANGE) {
      fl_error(nowhere(), "--feed %s: the value must be a number", text);
      return -1;
    }
    int node = fl_graph_find(g, name);
    if (node < 0) {
      fl_error(nowhere(), "--feed %s: %s has no tensor named '%s'", text, req->source_path, name);
      return -1;
    }
    int k = 0;
    while (k < *nfixed && fixed[k].node != node) k++;
    fixed[k] = (fl_infer_fixed){node, value};
    if (k == *nfixed) (*nfixed)++;
  }
  return 0;
}

static int find_entry(const fl_graph *g, const infer_request *req) {
  int entry = fl_graph_find(g, req->entry_name);
  if (entry >= 0) return entry;
  const char *best = NULL;
  int best_distance = 3;
  for (int i = 0; i < g->nnodes; i++) {
    if (!g->nodes[i].name) continue;
    int d = fe_edit_distance(req->entry_name, g->nodes[i].name);
    if (d < best_distance) {
      best_distance = d;
      best = g->nodes[i].name;
    }
  }
  if (best)
    fl_error(nowhere(), "--infer %s: %s has no tensor of that name (did you mean '%s'?)", req->entry_name,
             req->source_path, best);
  else
    fl_error(nowhere(), "--infer %s: %s has no tensor of that name (flowc check lists them)", req->entry_name,
             req->source_path);
  return -1;
}

/* ---- the weights -------------------------------------------------------------- */

static flrt_dtype rt_dtype(fl_dtype t) {
  switch (t) {
  case FL_F32: return FLRT_F32;
  case FL_I32: return FLRT_I32;
  case FL_I64: return FLRT_I64;
  default: return FLRT_BOOL;
  }
}

/* One entry of a safetensors header: a tensor's name and data range. */
typedef struct {
  char name[256];
  unsigned long long begin, end;
} header_entry;

/* Reads the tensor entries of a (possibly cut) safetensors header: at depth 1
 * a key names a tensor, at depth 2 its "data_offsets" follow. Names in
 * checkpoints that flowc writes have no escapes worth decoding. */
static int scan_header(const char *text, size_t len, header_entry *entries, int cap) {
  int count = 0, depth = 0;
  char key[256] = "";
  for (size_t i = 0; i < len; i++) {
    char c = text[i];
    if (c == '"') {
      size_t start = ++i;
      while (i < len && text[i] != '"') i += text[i] == '\\' ? 2 : 1;
      if (i >= len) break;
      size_t n = i - start < sizeof key - 1 ? i - start : sizeof key - 1;
      size_t after = i + 1;
      while (after < len && (text[after] == ' ' || text[after] == '\n')) after++;
      bool is_key = after < len && text[after] == ':';
      if (depth == 1 && is_key) {
        memcpy(key, text + start, n);
        key[n] = '\0';
      } else if (depth == 2 && is_key && n == 12 && memcmp(text + start, "data_offsets", 12) == 0 && count < cap) {
        unsigned long long b, e;
        if (sscanf(text + after + 1, " [ %llu , %llu ]", &b, &e) == 2) {
          snprintf(entries[count].name, sizeof entries[count].name, "%s", key);
          entries[count].begin = b;
          entries[count].end = e;
          count++;
        }
      }
    } else if (c == '{' || c == '[') {
      depth++;
    } else if (c == '}' || c == ']') {
      depth--;
    }
  }
  return count;
}

/* The runtime's message for a truncated checkpoint says how many bytes are
 * missing; this one says which tensor they belonged to. Returns false when
 * the file cannot be read back to tell. */
static bool name_cut_tensor(const char *path, const flrt_tensor *wanted, char *msg, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  unsigned char prefix[8];
  struct stat st;
  if (fstat(fileno(f), &st) || fread(prefix, 1, 8, f) != 8) {
    fclose(f);
    if (stat(path, &st) == 0)
      snprintf(msg, cap, "checkpoint %s is truncated: the file has only %lld bytes, so tensor '%s' and every "
                         "other is missing", path, (long long)st.st_size, wanted[0].name);
    return stat(path, &st) == 0;
  }
  unsigned long long header_len = 0, size = (unsigned long long)st.st_size;
  for (int i = 7; i >= 0; i--) header_len = header_len << 8 | prefix[i];
  if (header_len > size - 8) {
    fclose(f);
    snprintf(msg, cap, "checkpoint %s is truncated inside its header (%llu bytes promised, %llu present): "
                       "tensor '%s' and every other is missing", path, header_len, size - 8, wanted[0].name);
    return true;
  }
  char *header = malloc(header_len + 1);
  bool found = false;
  if (header && fread(header, 1, header_len, f) == header_len) {
    header[header_len] = '\0';
    enum { MAX_ENTRIES = 4096 };
    header_entry *entries = calloc(MAX_ENTRIES, sizeof *entries);
    int n = entries ? scan_header(header, header_len, entries, MAX_ENTRIES) : 0;
    unsigned long long data = size - 8 - header_len;
    int cut = -1;
    for (int i = 0; i < n; i++)
      if (entries[i].end > data && (cut < 0 || entries[i].begin < entries[cut].begin)) cut = i;
    if (cut >= 0) {
      snprintf(msg, cap, "checkpoint %s is truncated: tensor '%s' needs bytes %llu to %llu of the data, "
                         "but the file holds only %llu", path, entries[cut].name, entries[cut].begin,
               entries[cut].end, data);
      found = true;
    }
    free(entries);
  }
  free(header);
  fclose(f);
  return found;
}

/* Loads every variable the plan needs from the checkpoint; values[i] gets
 * plan->variables[i]'s elements. Refuses a mismatched or damaged file with a
 * message that names the tensor. */
static int load_weights(const fl_graph *g, const fl_infer_plan *plan, const char *path, void **values) {
  int n = plan->nvariables;
  flrt_tensor *tensors = calloc((size_t)n + 1, sizeof *tensors);
  char (*names)[256] = calloc((size_t)n + 1, sizeof *names);
  if (!tensors || !names) {
    fl_error(nowhere(), "out of memory");
    free(tensors);
    free(names);
    return -1;
  }
  for (int i = 0; i < n; i++) {
    const fl_node *v = &g->nodes[plan->variables[i]];
    fl_checkpoint_name(g, v->id, names[i], sizeof names[i]);
    tensors[i].name = names[i];
    tensors[i].dtype = rt_dtype(v->dtype);
    tensors[i].rank = v->shape.rank;
    for (int d = 0; d < v->shape.rank; d++) tensors[i].dims[d] = v->shape.dims[d].coef;
    int64_t count = fl_shape_const_size(&v->shape);
    values[i] = calloc((size_t)(count > 0 ? count : 1), fl_dtype_size(v->dtype));
    tensors[i].data = values[i];
    if (!values[i]) {
      fl_error(nowhere(), "out of memory for the weights of '%s'", names[i]);
      free(tensors);
      free(names);
      return -1;
    }
  }
  char err[1024];
  int status = 0;
  if (flrt_checkpoint_load(path, tensors, n, NULL, NULL, 0, err, sizeof err)) {
    char better[1024];
    if (strstr(err, "truncated") && n > 0 && name_cut_tensor(path, tensors, better, sizeof better))
      fl_error(nowhere(), "%s", better);
    else
      fl_error(nowhere(), "%s", err);
    status = -1;
  }
  free(tensors);
  free(names);
  return status;
}

/* ---- what the support files need to know -------------------------------------- */

/* The classifier, the firmware and the wasm runner feed images and read
 * scores: the model must take one f32 input and give f32 outputs, both with
 * the batch as their first dimension. */
static bool classifier_fits(const fl_graph *g, const fl_infer_plan *plan, int entry, int64_t batch,
                            int64_t *image, int64_t *classes, char *why, size_t cap) {
  const fl_node *out = &g->nodes[entry];
  if (plan->ninputs != 1) {
    snprintf(why, cap, "it takes %d inputs, not one image", plan->ninputs);
    return false;
  }
  const fl_node *in = &g->nodes[plan->inputs[0]];
  if (in->dtype != FL_F32 || out->dtype != FL_F32) {
    snprintf(why, cap, "it needs f32 images and f32 scores");
    return false;
  }
  if (in->shape.rank < 2 || out->shape.rank < 1 || fl_dim_value(in->shape.dims[0], batch) != batch ||
      fl_dim_value(out->shape.dims[0], batch) != batch) {
    snprintf(why, cap, "the batch must be the first dimension of its input and output");
    return false;
  }
  *image = fl_shape_size_at(&in->shape, batch) / batch;
  *classes = fl_shape_size_at(&out->shape, batch) / batch;
  return true;
}

static int write_text(const char *dir, const char *name, const char *text, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  bool written = f && (!len || fwrite(text, 1, len, f) == len);
  if (f && fclose(f)) written = false;
  if (!written) {
    fl_error(nowhere(), "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

static const fl_embedded_file *support_file(const char *name) {
  for (int i = 0; i < fl_infer_file_count; i++)
    if (strcmp(fl_infer_files[i].name, name) == 0) return &fl_infer_files[i];
  return NULL;
}

static int copy_support(const char *dir, const char *name) {
  const fl_embedded_file *f = support_file(name);
  if (!f) {
    fl_error(nowhere(), "flowc was built without its support file %s", name);
    return -1;
  }
  return write_text(dir, name, f->text, f->len);
}

static int write_binding(const char *dir, const char *prefix, const fl_graph *g, int entry, int64_t image,
                         int64_t classes, int64_t batch) {
  char text[2048];
  int n = snprintf(text, sizeof text,
                   "/* flowc_model.h - generated by flowc: the model that flowc's classifier, firmware and\n"
                   " * wasm exports wrap. Do not edit. */\n"
                   "#ifndef FLOWC_MODEL_H\n#define FLOWC_MODEL_H\n\n#include \"%s.h\"\n\n"
                   "#define FLOWC_MODEL_NAME \"%s\"\n"
                   "#define FLOWC_MODEL_BATCH %lld\n"
                   "#define FLOWC_MODEL_INPUT_SIZE %lld /* floats per image */\n"
                   "#define FLOWC_MODEL_CLASSES %lld     /* outputs per image */\n"
                   "#define FLOWC_MODEL_PROBABILITIES %d /* 1: the outputs are a softmax already */\n"
                   "#define flowc_model_infer %s_infer\n\n#endif\n",
                   prefix, prefix, (long long)batch, (long long)image, (long long)classes,
                   g->nodes[entry].op == FL_OP_SOFTMAX, prefix);
  return write_text(dir, "flowc_model.h", text, (size_t)n);
}

/* flowc_images.h: the first `count` images of an IDX file (gzip or plain), as
 * bytes, for the firmware. Without a file, one blank image. */
static int write_images(const char *dir, const infer_request *req, int64_t image) {
  unsigned char *pixels = NULL;
  int64_t count = 1;
  if (req->images_path) {
    gzFile f = gzopen(req->images_path, "rb");
    unsigned char head[16];
    if (!f) {
      fl_error(nowhere(), "--images %s: %s", req->images_path, strerror(errno));
      return -1;
    }
    /* magic 0x00000803 (unsigned bytes, 3 dimensions), count, rows, columns: big-endian */
    uint32_t field[4] = {0, 0, 0, 0};
    if (gzread(f, head, 16) == 16)
      for (int k = 0; k < 4; k++)
        field[k] = (uint32_t)head[4 * k] << 24 | (uint32_t)head[4 * k + 1] << 16 | (uint32_t)head[4 * k + 2] << 8 |
                   head[4 * k + 3];
    int64_t have = field[1];
    if (field[0] != 0x00000803 || (int64_t)field[2] * field[3] != image) {
      gzclose(f);
      fl_error(nowhere(), "--images %s: expected an IDX file of %lld-pixel images (magic 0x00000803)",
               req->images_path, (long long)image);
      return -1;
    }
    count = req->image_count < have ? req->image_count : have;
    pixels = malloc((size_t)(count * image));
    if (!pixels || gzread(f, pixels, (unsigned)(count * image)) != (int)(count * image)) {
      gzclose(f);
      free(pixels);
      fl_error(nowhere(), "--images %s: truncated", req->images_path);
      return -1;
    }
    gzclose(f);
  } else {
    fl_note(nowhere(), "no --images: the firmware classifies one blank image");
  }
  size_t cap = (size_t)(count * image) * 5 + 1024, used = 0;
  char *text = malloc(cap);
  if (!text) {
    free(pixels);
    fl_error(nowhere(), "out of memory");
    return -1;
  }
  used += (size_t)snprintf(text + used, cap - used,
                           "/* flowc_images.h - generated by flowc: %lld image%s from %s for the firmware. */\n"
                           "#define FLOWC_IMAGE_COUNT %lld\n"
                           "static const unsigned char flowc_images[%lld] = {",
                           (long long)count, count == 1 ? "" : "s",
                           req->images_path ? req->images_path : "nowhere (a blank image)", (long long)count,
                           (long long)(count * image));
  for (int64_t i = 0; i < count * image; i++)
    used += (size_t)snprintf(text + used, cap - used, "%s%s%u", i ? "," : "", i % 28 == 0 ? "\n  " : "",
                             pixels ? pixels[i] : 0u);
  used += (size_t)snprintf(text + used, cap - used, "\n};\n");
  free(pixels);
  int status = write_text(dir, "flowc_images.h", text, used);
  free(text);
  return status;
}

/* ---- commands ------------------------------------------------------------------ */

typedef struct {
  int argc;
  char *argv[128];
} command;

static void arg(command *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(command *c, const char *fmt, ...) {
  if (c->argc >= 126) return;
  va_list ap;
  va_start(ap, fmt);
  char buf[4400];
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  c->argv[c->argc++] = strdup(buf);
  c->argv[c->argc] = NULL;
}

/* The compiler, which --cc may give with options ("clang --target=aarch64-linux-gnu"). */
static void compiler_args(command *c, const char *cc) {
  char copy[1024];
  snprintf(copy, sizeof copy, "%s", cc);
  for (char *tok = strtok(copy, " \t"); tok; tok = strtok(NULL, " \t")) arg(c, "%s", tok);
}

static void free_command(command *c) {
  for (int i = 0; i < c->argc; i++) free(c->argv[i]);
  c->argc = 0;
}

static const char *const cortex_m4_flags[] = {"-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                                              "-ffunction-sections", "-fdata-sections"};
static const char *const wasm_exports[] = {"flowc_input", "flowc_output", "flowc_run", "flowc_batch",
                                           "flowc_input_size", "flowc_classes", "flowc_probabilities"};

/* The commands that build `output` from the sources in dir. cc is the
 * compiler ("$(CC)" when writing a Makefile). Returns how many. */
static int target_commands(const infer_target *t, const char *cc, const char *dir, const char *prefix,
                           const char *output, command *cmds) {
  memset(cmds, 0, 2 * sizeof *cmds);
  command *c = &cmds[0];
  compiler_args(c, cc);
  arg(c, "-std=c99");
  /* No fused multiply-adds: every target then rounds each product and sum
   * alike (gcc's default in ISO C mode; clang contracts unless told). */
  arg(c, "-ffp-contract=off");
  switch (t->kind) {
  case TARGET_CLASSIFIER:
    /* -O2 -funroll-loops: measured fastest on the examples; -O3's full
     * unrolling and SLP vectorising of the small constant loops made
     * mnist_tiny six times slower. */
    arg(c, "-O2");
    arg(c, "-funroll-loops");
    if (t->native) {
      arg(c, "-march=native");
      arg(c, "-DFLOWC_HAVE_ZLIB");
    } else {
      arg(c, "-static"); /* runs on any aarch64 Linux, and under qemu-user without a sysroot */
    }
    arg(c, "-Wall");
    arg(c, "-I%s", dir);
    arg(c, "-o");
    arg(c, "%s", output);
    arg(c, "%s/flowc_classify.c", dir);
    arg(c, "%s/%s.c", dir, prefix);
    if (t->native) arg(c, "-lz");
    arg(c, "-lm");
    return 1;
  case TARGET_FIRMWARE:
    /* The model on its own first, so that its size can be reported apart
     * from newlib's printf. */
    arg(c, "-O2");
    for (size_t i = 0; i < sizeof cortex_m4_flags / sizeof cortex_m4_flags[0]; i++) arg(c, "%s", cortex_m4_flags[i]);
    arg(c, "-Wall");
    arg(c, "-c");
    arg(c, "%s/%s.c", dir, prefix);
    arg(c, "-o");
    arg(c, "%s/%s.o", dir, prefix);
    c = &cmds[1];
    compiler_args(c, cc);
    arg(c, "-std=c99");
    arg(c, "-ffp-contract=off");
    arg(c, "-O2");
    for (size_t i = 0; i < sizeof cortex_m4_flags / sizeof cortex_m4_flags[0]; i++) arg(c, "%s", cortex_m4_flags[i]);
    arg(c, "-Wall");
    arg(c, "--specs=rdimon.specs");
    arg(c, "-nostartfiles");
    arg(c, "-T");
    arg(c, "%s/flowc_cortex_m4.ld", dir);
    arg(c, "-Wl,--gc-sections");
    arg(c, "-I%s", dir);
    arg(c, "-o");
    arg(c, "%s", output);
    arg(c, "%s/flowc_firmware.c", dir);
    arg(c, "%s/flowc_startup.c", dir);
    arg(c, "%s/%s.o", dir, prefix);
    arg(c, "-lm");
    return 2;
  case TARGET_WASM:
    arg(c, "--target=wasm32");
    arg(c, "-O2");
    arg(c, "-ffreestanding");
    arg(c, "-nostdlib");
    arg(c, "-Wall");
    arg(c, "-Wl,--no-entry");
    arg(c, "-Wl,--export=%s_infer", prefix);
    for (size_t i = 0; i < sizeof wasm_exports / sizeof wasm_exports[0]; i++) arg(c, "-Wl,--export=%s", wasm_exports[i]);
    arg(c, "-I%s", dir);
    arg(c, "-o");
    arg(c, "%s", output);
    arg(c, "%s/%s.c", dir, prefix);
    arg(c, "%s/flowc_wasm.c", dir);
    arg(c, "%s/flowc_freestanding.c", dir);
    return 1;
  }
  return 0;
}

/* Runs argv with stdout and stderr to log_path; returns the exit status, 127
 * when the program could not be started. */
static int run_logged(char *const *argv, const char *log_path) {
  pid_t pid = fork();
  if (pid < 0) return 127;
  if (pid == 0) {
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Whether a program can be found the way execvp will look for it. */
static bool on_path(const char *program) {
  if (strchr(program, '/')) return access(program, X_OK) == 0;
  const char *path = getenv("PATH");
  if (!path) path = "/usr/bin:/bin";
  char dir[4096], full[8192];
  while (*path) {
    size_t len = strcspn(path, ":");
    snprintf(dir, sizeof dir, "%.*s", (int)len, len ? path : ".");
    snprintf(full, sizeof full, "%s/%s", dir, program);
    if (access(full, X_OK) == 0) return true;
    path += len + (path[len] == ':');
  }
  return false;
}

static void print_log(const char *log_path, int max_lines) {
  FILE *f = fopen(log_path, "r");
  if (!f) return;
  char line[1024];
  for (int shown = 0; shown < max_lines && fgets(line, sizeof line, f); shown++) fputs(line, stderr);
  fclose(f);
}

static bool log_mentions(const char *log_path, const char *text) {
  FILE *f = fopen(log_path, "r");
  if (!f) return false;
  char line[2048];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) found = strstr(line, text) != NULL;
  fclose(f);
  return found;
}

/* The cross size tool beside the compiler: arm-none-eabi-gcc -> arm-none-eabi-size. */
static void size_tool(const char *cc, char *buf, size_t cap) {
  char first[512];
  snprintf(first, sizeof first, "%s", cc);
  first[strcspn(first, " \t")] = '\0';
  size_t len = strlen(first);
  if (len >= 3 && strcmp(first + len - 3, "gcc") == 0) snprintf(buf, cap, "%.*ssize", (int)(len - 3), first);
  else snprintf(buf, cap, "arm-none-eabi-size");
}

/* Output of a command into buf; 0 when it ran and succeeded. */
static int capture(char *const *argv, const char *scratch_log, char *buf, size_t cap) {
  int rc = run_logged(argv, scratch_log);
  buf[0] = '\0';
  FILE *f = fopen(scratch_log, "r");
  if (f) {
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
  }
  return rc;
}

/* Sizes of the firmware: the model object alone (its code, its weights and
 * its arena, from `size -A`) and the whole image (`size`, Berkeley format). */
static void report_firmware_sizes(const char *cc, const char *dir, const char *prefix, const char *output) {
  char tool[512], object[4200], log[4200], text[16384];
  size_tool(cc, tool, sizeof tool);
  snprintf(object, sizeof object, "%s/%s.o", dir, prefix);
  snprintf(log, sizeof log, "%s/size.log", dir);
  char *sysv[] = {tool, "-A", object, NULL};
  if (capture(sysv, log, text, sizeof text) != 0) {
    fl_note(nowhere(), "cannot run %s for the sizes (Debian: binutils-arm-none-eabi)", tool);
    return;
  }
  long long code = 0, rodata = 0, data = 0, bss = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    char section[256];
    long long size;
    if (sscanf(line, "%255s %lld", section, &size) != 2) continue;
    if (strncmp(section, ".text", 5) == 0) code += size;
    else if (strncmp(section, ".rodata", 7) == 0) rodata += size;
    else if (strncmp(section, ".data", 5) == 0) data += size;
    else if (strncmp(section, ".bss", 4) == 0) bss += size;
  }
  printf("model object %s.o: code %lld bytes (.text), weights %lld bytes (.rodata), data %lld bytes, "
         "arena %lld bytes (.bss)\n", prefix, code, rodata, data, bss);
  char *berkeley[] = {tool, (char *)output, NULL};
  if (capture(berkeley, log, text, sizeof text) == 0) printf("firmware (%s):\n%s", tool, text);
}

/* Compiles the sources in dir for the target. */
static int compile_target(const infer_request *req, const char *cc, const char *dir, const char *prefix) {
  const infer_target *t = req->target;
  command cmds[2];
  int ncmds = target_commands(t, cc, dir, prefix, req->output, cmds);
  int status = 0;
  char log[4200];
  snprintf(log, sizeof log, "%s/compile.log", dir);
  if (!on_path(cmds[0].argv[0])) {
    if (req->cc || (t->native && getenv("CC") && *getenv("CC")))
      fl_error(nowhere(), "target %s: the C compiler '%s' is not installed (the target's toolchain comes from "
                          "`apt-get install %s`)", t->name, cmds[0].argv[0], t->packages);
    else
      fl_error(nowhere(), "target %s needs %s, which is not installed: install it with `apt-get install %s`",
               t->name, cmds[0].argv[0], t->packages);
    status = -1;
  }
  for (int i = 0; i < ncmds && status == 0; i++) {
    if (req->verbose) {
      for (int k = 0; k < cmds[i].argc; k++) fprintf(stderr, "%s%s", k ? " " : "", cmds[i].argv[k]);
      fputc('\n', stderr);
    }
    int rc = run_logged(cmds[i].argv, log);
    if (rc == 127) {
      fl_error(nowhere(), "target %s: '%s' could not be run; install it with `apt-get install %s`", t->name,
               cmds[i].argv[0], t->packages);
      status = -1;
    } else if (rc != 0) {
      fl_error(nowhere(), "the %s toolchain failed on the generated code (log: %s)", t->name, log);
      print_log(log, 30);
      if (log_mentions(log, "wasm-ld"))
        fl_note(nowhere(), "clang links wasm32 with wasm-ld: `apt-get install lld`");
      else if (log_mentions(log, "zlib.h"))
        fl_note(nowhere(), "zlib.h is missing: `apt-get install zlib1g-dev`");
      else if (log_mentions(log, ".h: No such file") || log_mentions(log, "cannot find -l") ||
               log_mentions(log, "specs"))
        fl_note(nowhere(), "the %s toolchain is incomplete: `apt-get install %s`", t->name, t->packages);
      status = -1;
    }
  }
  for (int i = 0; i < ncmds; i++) free_command(&cmds[i]);
  if (status == 0 && t->kind == TARGET_FIRMWARE) report_firmware_sizes(cc, dir, prefix, req->output);
  return status;
}

/* The Node.js runner: the module's file name, then flowc_classify.js. */
static int write_wasm_runner(const char *path, const char *wasm_path) {
  const fl_embedded_file *js = support_file("flowc_classify.js");
  if (!js) {
    fl_error(nowhere(), "flowc was built without its support file flowc_classify.js");
    return -1;
  }
  const char *base = strrchr(wasm_path, '/');
  base = base ? base + 1 : wasm_path;
  FILE *f = fopen(path, "w");
  if (!f) {
    fl_error(nowhere(), "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  /* the name first, in strict mode as the rest of the file */
  fprintf(f, "#!/usr/bin/env node\n'use strict';\nconst flowcWasmFile = '");
  for (const char *c = base; *c; c++) fprintf(f, "%s%c", *c == '\'' || *c == '\\' ? "\\" : "", *c);
  fprintf(f, "';\n");
  fwrite(js->text, 1, js->len, f);
  if (fclose(f)) {
    fl_error(nowhere(), "cannot write %s: %s", path, strerror(errno));
    return -1;
  }
  chmod(path, 0755);
  return 0;
}

/* NAME.wasm -> NAME.js; anything else gets .js appended. */
static void runner_path(const char *wasm_path, char *buf, size_t cap) {
  size_t len = strlen(wasm_path);
  if (len > 5 && strcmp(wasm_path + len - 5, ".wasm") == 0) snprintf(buf, cap, "%.*s.js", (int)(len - 5), wasm_path);
  else snprintf(buf, cap, "%s.js", wasm_path);
}

/* Writes the support files of the target beside the model. Returns 0, -1
 * after an error, or 1 when the entry does not fit them (it is not a
 * classifier's): an error for build, a note for emit, which then writes the
 * C library alone. */
static int write_support(const infer_request *req, bool is_build, const char *dir, const char *prefix,
                         const fl_graph *g, int entry, const fl_infer_plan *plan) {
  int64_t image = 0, classes = 0;
  char why[256];
  if (!classifier_fits(g, plan, entry, req->batch, &image, &classes, why, sizeof why)) {
    const char *wrapper = req->target->kind == TARGET_CLASSIFIER ? "classifier"
                          : req->target->kind == TARGET_FIRMWARE ? "firmware"
                                                                 : "wasm module";
    if (is_build) {
      fl_error(g->nodes[entry].loc, "--target %s wraps the model in a %s that feeds images and reads scores, "
                                    "but %s does not fit: %s; flowc emit --infer writes the C library alone",
               req->target->name, wrapper, req->entry_name, why);
      return -1;
    }
    fl_note(nowhere(), "%s does not fit the %s (%s): writing the C library alone", req->entry_name, wrapper, why);
    return 1;
  }
  if (write_binding(dir, prefix, g, entry, image, classes, req->batch)) return -1;
  switch (req->target->kind) {
  case TARGET_CLASSIFIER:
    return copy_support(dir, "flowc_classify.c");
  case TARGET_FIRMWARE:
    if (copy_support(dir, "flowc_firmware.c") || copy_support(dir, "flowc_startup.c") ||
        copy_support(dir, "flowc_cortex_m4.ld"))
      return -1;
    return write_images(dir, req, image);
  case TARGET_WASM:
    return copy_support(dir, "flowc_wasm.c") || copy_support(dir, "flowc_freestanding.c");
  }
  return 0;
}

static int write_makefile(const infer_request *req, const char *dir, const char *prefix, const char *output) {
  const infer_target *t = req->target;
  command cmds[2];
  char cc_default[512];
  snprintf(cc_default, sizeof cc_default, "%s", t->compiler);
  int ncmds = target_commands(t, "$(CC)", ".", prefix, output, cmds);
  size_t cap = 16384, used = 0;
  char *text = malloc(cap);
  if (!text) return -1;
  used += (size_t)snprintf(text + used, cap - used,
                           "# Makefile - builds %s for %s from the sources flowc emitted (make).\n"
                           "# %s.h and %s.c are the model: C99 with no malloc and no stdio.\n"
                           "# The toolchain: apt-get install %s\n"
                           "CC = %s\n\n%s: $(wildcard *.c *.h *.ld)\n",
                           output, t->name, prefix, prefix, t->packages, cc_default, output);
  for (int i = 0; i < ncmds; i++) {
    used += (size_t)snprintf(text + used, cap - used, "\t");
    for (int k = 0; k < cmds[i].argc && used < cap; k++)
      used += (size_t)snprintf(text + used, cap - used, "%s%s", k ? " " : "", cmds[i].argv[k]);
    used += (size_t)snprintf(text + used, cap - used, "\n");
    free_command(&cmds[i]);
  }
  if (t->kind == TARGET_FIRMWARE) {
    char tool[512];
    size_tool(t->compiler, tool, sizeof tool);
    used += (size_t)snprintf(text + used, cap - used, "\t%s -A %s.o\n\t%s %s\n", tool, prefix, tool, output);
  }
  used += (size_t)snprintf(text + used, cap - used, "\nclean:\n\trm -f %s %s.o\n.PHONY: clean\n", output, prefix);
  int status = used < cap ? write_text(dir, "Makefile", text, used) : -1;
  free(text);
  return status;
}

/* ---- the command ------------------------------------------------------------------ */

static int make_dir(const char *dir) {
  if (mkdir(dir, 0777) && errno != EEXIST) {
    fl_error(nowhere(), "cannot create folder %s: %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}

static void remove_dir(const char *dir) {
  static const char *const files[] = {"flowc_model.h", "flowc_images.h", "flowc_classify.c", "flowc_firmware.c",
                                      "flowc_startup.c", "flowc_cortex_m4.ld", "flowc_wasm.c",
                                      "flowc_freestanding.c", "compile.log", "size.log"};
  char path[4400];
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, files[i]);
    unlink(path);
  }
}

int cmd_infer(int argc, char **argv, bool is_build) {
  struct flowc_args args;
  int rc = flowc_parse_args(argc, argv, &args, infer_value_options);
  if (rc != FLOWC_OK) return rc;
  infer_request req;
  rc = read_request(&args, is_build, &req);
  if (rc != FLOWC_OK) return rc;

  fl_graph *g = flowc_load(&args);
  if (!g) return FLOWC_USER_ERROR;
  fl_simplify(g); /* as for training executables: constants folded, common subexpressions merged */
  int status = 0, entry = find_entry(g, &req);
  fl_infer_fixed fixed[MAX_FEEDS * 3];
  int nfixed = 0;
  if (entry < 0 || fixed_feeds(g, &req, fixed, &nfixed)) status = -1;

  char prefix[128];
  if (req.name) fl_c_identifier(req.name, prefix, sizeof prefix);
  else fl_model_name(req.source_path, prefix, sizeof prefix);
  if (status == 0 && strncmp(prefix, "flowc_", 6) == 0) {
    /* NAME.c would overwrite a support file of the same name */
    fl_error(nowhere(), "the model's name '%s' is taken by flowc's own files: choose another with --name", prefix);
    status = -1;
  }
  fl_infer_options opt = {.name = prefix, .source_path = req.source_path, .weights_path = req.weights_path,
                          .entry = entry, .batch = req.batch, .fixed = fixed, .nfixed = nfixed};
  fl_infer_plan plan;
  memset(&plan, 0, sizeof plan);
  void **values = NULL;
  if (status == 0) status = fl_infer_plan_make(g, &opt, &plan);
  if (status == 0) {
    values = calloc((size_t)plan.nvariables + 1, sizeof *values);
    status = values ? load_weights(g, &plan, req.weights_path, values) : -1;
  }

  char default_output[256], emit_dir[256], dir_buf[] = "/tmp/flowc-infer-XXXXXX";
  const char *dir = NULL;
  if (status == 0) {
    snprintf(default_output, sizeof default_output, req.target->default_output, prefix);
    if (!is_build) {
      snprintf(emit_dir, sizeof emit_dir, "%s_infer_src", prefix);
      dir = req.output ? req.output : emit_dir;
      status = make_dir(dir);
    } else {
      if (!req.output) req.output = default_output;
      dir = mkdtemp(dir_buf);
      if (!dir) {
        fl_error(nowhere(), "cannot create a temporary folder: %s", strerror(errno));
        status = -1;
      }
    }
  }
  if (status == 0) status = fl_emit_infer(g, &opt, &plan, (const void *const *)values, dir);
  bool library_only = false;
  if (status == 0) {
    int fits = write_support(&req, is_build, dir, prefix, g, entry, &plan);
    library_only = fits == 1;
    status = fits < 0 ? -1 : 0;
  }
  if (status == 0) {
    char shape[256] = "";
    size_t used = 0;
    for (int d = 0; d < g->nodes[entry].shape.rank && used < sizeof shape; d++)
      used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? ", " : "",
                               (long long)fl_dim_value(g->nodes[entry].shape.dims[d], req.batch));
    printf("%s: %s %s[%s] for %s: arena: %zu bytes, weights: %zu bytes\n", prefix, req.entry_name,
           fl_dtype_name(g->nodes[entry].dtype), shape, req.target->name, plan.arena_bytes, plan.weight_bytes);
    fflush(stdout);
  }
  if (status == 0 && !is_build && library_only) {
    fprintf(stderr, "flowc: wrote %s/ (%s.h and %s.c: the model)\n", dir, prefix, prefix);
  } else if (status == 0 && !is_build) {
    char output[256];
    snprintf(output, sizeof output, req.target->default_output, prefix);
    status = write_makefile(&req, dir, prefix, output);
    if (status == 0 && req.target->kind == TARGET_WASM) {
      char path[4400], runner[4400];
      snprintf(path, sizeof path, "%s/%s", dir, output);
      runner_path(path, runner, sizeof runner);
      status = write_wasm_runner(runner, output);
    }
    if (status == 0)
      fprintf(stderr, "flowc: wrote %s/ (%s.h and %s.c are the model; make -C %s builds %s for %s)\n", dir, prefix,
              prefix, dir, output, req.target->name);
  } else if (status == 0) {
    const char *cc = req.cc;
    if (!cc && req.target->native) cc = getenv("CC");
    if (!cc || !*cc) cc = req.target->compiler;
    status = compile_target(&req, cc, dir, prefix);
    if (status == 0 && req.target->kind == TARGET_WASM) {
      char runner[4400];
      runner_path(req.output, runner, sizeof runner);
      status = write_wasm_runner(runner, req.output);
      if (status == 0) printf("run it with: node %s IMAGES [LABELS]  (Debian: nodejs)\n", runner);
    } else if (status == 0 && req.target->runner) {
      printf("run it with: %s %s  (Debian: %s)\n", req.target->runner, req.output, req.target->runner_package);
    }
    if (req.keep || status != 0) {
      fprintf(stderr, "flowc: generated sources kept in %s\n", dir);
    } else {
      char path[4400];
      snprintf(path, sizeof path, "%s/%s.c", dir, prefix);
      unlink(path);
      snprintf(path, sizeof path, "%s/%s.h", dir, prefix);
      unlink(path);
      snprintf(path, sizeof path, "%s/%s.o", dir, prefix);
      unlink(path);
      remove_dir(dir);
      rmdir(dir);
    }
  }

  if (values)
    for (int i = 0; i < plan.nvariables; i++) free(values[i]);
  free(values);
  fl_infer_plan_free(&plan);
  fl_graph_free(g);
  return status ? FLOWC_USER_ERROR : FLOWC_OK;
}
