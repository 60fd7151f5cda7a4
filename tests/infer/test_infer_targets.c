/* test_infer_targets.c - end to end: inference binaries for the host, aarch64 (qemu-user), Cortex-M4 (qemu-system-arm) and wasm32 (Node.js).
 *
 * The softmax regression and the tiny CNN are trained briefly with their
 * training executables (once; the checkpoints are kept under the build root
 * and retrained when the description changes), then built for every target
 * with flowc build --infer and run on the same test images. A target whose
 * toolchain or emulator is missing is skipped with the Debian package to
 * install (scripts/install-deps installs them all).
 *
 * Tolerance: every target must print the host's classes, and its outputs must
 * agree with the host's within |a - b| <= 1e-5 + 1e-5 |a|. (The generated
 * loops add each output's products in the same order everywhere and no exp or
 * log is involved in logits, so in practice they agree to the last bit.)
 *
 * Checks that need no trained model (weights refused, the command line, code
 * that compiles with -Werror on every target) use checkpoints written here
 * with the runtime's flrt_checkpoint_save. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "e2e_util.h"
#include "flowc_rt.h"

#define ABS_TOL 1e-5
#define REL_TOL 1e-5

/* ---- tools ------------------------------------------------------------------ */

static bool have(const char *program) { return e2e_run(NULL, "command -v '%s' >/dev/null", program) == 0; }

static void need(const char *program, const char *package) {
  if (!have(program)) cr_skip_test("%s is not installed (apt-get install %s)", program, package);
}

static const char *flowc(void) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/compiler/flowc", e2e_build_root());
  return path;
}

static const char *example(const char *name) {
  static char path[2][4096];
  static int next;
  char *p = path[next++ % 2];
  snprintf(p, 4096, "%s/examples/%s.flow", e2e_source_root(), name);
  return p;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  cr_assert(f, "cannot write %s", path);
  fputs(text, f);
  fclose(f);
}

static time_t mtime(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? st.st_mtime : 0;
}

/* ---- trained models, shared by the tests -------------------------------------- */

typedef struct {
  char weights[4200];   /* the checkpoint */
  char images[4200];    /* the test images, plain IDX (the aarch64 build reads no gzip) */
  char labels[4200];
  double accuracy;      /* the training executable's test accuracy */
} trained_model;

/* The test images and labels, unzipped into the shared folder. */
static const char *shared_dir(void) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/e2e-scratch/infer-shared", e2e_build_root());
  char *out = NULL;
  cr_assert_eq(e2e_run(&out, "mkdir -p '%s'", path), 0, "%s", out);
  free(out);
  return path;
}

/* Trains examples/NAME.flow (steps, or the train block's) on real digits, else
 * Fashion-MNIST, once: tests run in parallel processes, so a lock file orders
 * them and the first one trains. */
static void trained(const char *name, int steps, trained_model *m) {
  const char *data = e2e_digits_dir();
  const char *kind = "digits";
  if (!data) {
    data = e2e_fashion_dir();
    kind = "fashion";
  }
  if (!data) cr_skip_test("no MNIST-format data here (../shared/data/mnist-digits-10k or apt-get install dataset-fashion-mnist)");
  const char *dir = shared_dir();
  char lock[4400], log[4400], prog[4400];
  snprintf(lock, sizeof lock, "%s/lock", dir);
  snprintf(m->weights, sizeof m->weights, "%s/%s-%s.safetensors", dir, name, kind);
  snprintf(m->images, sizeof m->images, "%s/%s-t10k-images", dir, kind);
  snprintf(m->labels, sizeof m->labels, "%s/%s-t10k-labels", dir, kind);
  snprintf(log, sizeof log, "%s/%s-%s.log", dir, name, kind);
  snprintf(prog, sizeof prog, "%s/%s-train", dir, name);
  int fd = open(lock, O_CREAT | O_RDWR, 0644);
  cr_assert(fd >= 0 && flock(fd, LOCK_EX) == 0, "cannot lock %s", lock);
  char *out = NULL;
  if (mtime(m->images) == 0) {
    cr_assert_eq(e2e_run(&out, "gzip -dc '%s/t10k-images-idx3-ubyte.gz' > '%s.tmp' && mv '%s.tmp' '%s' && "
                               "gzip -dc '%s/t10k-labels-idx1-ubyte.gz' > '%s'",
                         data, m->images, m->images, m->images, data, m->labels), 0, "%s", out);
    free(out);
  }
  if (mtime(m->weights) == 0 || mtime(m->weights) < mtime(example(name)) || mtime(log) == 0) {
    char extra[64] = "";
    if (steps > 0) snprintf(extra, sizeof extra, "--steps %d", steps);
    cr_assert_eq(e2e_run(&out, "'%s' build '%s' -o '%s'", flowc(), example(name), prog), 0, "%s", out);
    free(out);
    int rc = e2e_run(&out, "'%s' --data '%s' --validation 0 %s --threads 1 --quiet --save '%s' > '%s' 2>&1",
                     prog, data, extra, m->weights, log);
    cr_assert_eq(rc, 0, "training %s failed:\n%s", name, out);
    free(out);
  }
  cr_assert_eq(e2e_run(&out, "cat '%s'", log), 0);
  m->accuracy = e2e_test_accuracy(out);
  cr_assert(m->accuracy > 0.5, "training %s reached only %g:\n%s", name, m->accuracy, out);
  free(out);
  flock(fd, LOCK_UN);
  close(fd);
}

/* ---- outputs ------------------------------------------------------------------ */

enum { MAX_IMAGES = 1000, CLASSES = 10 };

typedef struct {
  int count;
  int cls[MAX_IMAGES];
  double v[MAX_IMAGES][CLASSES];
} outputs;

/* Lines "INDEX CLASS V0 ... V9" (the classifiers' --logits, the firmware); other lines are skipped. */
static void parse_outputs(const char *text, outputs *o) {
  memset(o, 0, sizeof *o);
  for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
    int index, cls, used = 0;
    if (sscanf(line, "%d %d%n", &index, &cls, &used) != 2 || index != o->count || o->count >= MAX_IMAGES) continue;
    const char *p = line + used;
    int k = 0;
    for (; k < CLASSES; k++) {
      char *end;
      double v = strtod(p, &end);
      if (end == p) break;
      o->v[o->count][k] = v;
      p = end;
    }
    if (k < CLASSES) continue;
    o->cls[o->count++] = cls;
  }
}

static void expect_same_outputs(const outputs *host, const outputs *other, const char *what, int want) {
  cr_assert_eq(other->count, want, "%s printed %d images' outputs, the host %d", what, other->count, want);
  cr_assert_eq(host->count, want, "the host printed %d images' outputs, expected %d", host->count, want);
  for (int i = 0; i < want; i++) {
    cr_assert_eq(other->cls[i], host->cls[i], "%s: image %d is class %d, on the host %d", what, i, other->cls[i],
                 host->cls[i]);
    for (int c = 0; c < CLASSES; c++) {
      double a = host->v[i][c], b = other->v[i][c];
      cr_assert(fabs(a - b) <= ABS_TOL + REL_TOL * fabs(a), "%s: image %d output %d is %.9g, on the host %.9g", what,
                i, c, b, a);
    }
  }
}

static void host_outputs(const char *program, const char *images, int limit, outputs *o) {
  char *out = NULL;
  int rc = e2e_run(&out, "'%s' '%s' --logits --limit %d", program, images, limit);
  cr_assert_eq(rc, 0, "%s failed:\n%s", program, out);
  parse_outputs(out, o);
  free(out);
}

/* flowc build --infer; returns flowc's output (malloc'd). */
static char *build(const char *model, const char *entry, const char *weights, const char *target, const char *output,
                   const char *extra) {
  char *out = NULL;
  int rc = e2e_run(&out, "'%s' build '%s' --infer %s --weights '%s' --target %s -o '%s' %s", flowc(), example(model),
                   entry, weights, target, output, extra ? extra : "");
  cr_assert_eq(rc, 0, "flowc build --infer %s --target %s failed (%d):\n%s", model, target, rc, out);
  return out;
}

static double accuracy_of(const char *text) {
  const char *at = strstr(text, "accuracy ");
  return at ? atof(at + strlen("accuracy ")) : -1;
}

/* ---- the host --------------------------------------------------------------------- */

static const struct {
  const char *model, *entry;
  int steps;
} models[] = {{"mnist_softmax", "y", 0}, {"mnist_tiny", "y_conv", 300}};

Test(host, classifiers_match_the_training_executables, .timeout = 240) {
  const char *dir = e2e_scratch("infer_host");
  for (size_t k = 0; k < sizeof models / sizeof models[0]; k++) {
    trained_model m;
    trained(models[k].model, models[k].steps, &m);
    char prog[4200];
    snprintf(prog, sizeof prog, "%s/%s", dir, models[k].model);
    char *out = build(models[k].model, models[k].entry, m.weights, "host", prog, NULL);
    cr_assert(strstr(out, "arena: ") && strstr(out, " bytes, weights: "), "flowc should print the arena and weight "
              "sizes:\n%s", out);
    free(out);
    cr_assert_eq(e2e_run(&out, "'%s' '%s' '%s'", prog, m.images, m.labels), 0, "%s", out);
    double acc = accuracy_of(out);
    /* Float sums in another order may flip an image whose two best scores tie. */
    cr_assert(fabs(acc - m.accuracy) <= 0.003, "%s: the classifier's accuracy %.4f differs from the training "
              "executable's %.4f:\n%s", models[k].model, acc, m.accuracy, out);
    cr_log_info("%s on the host: accuracy %.4f (training executable: %.4f)", models[k].model, acc, m.accuracy);
    free(out);

    /* A PGM of the first test image gets the class that --logits gives it. */
    outputs host;
    host_outputs(prog, m.images, 1, &host);
    char pgm[4300];
    snprintf(pgm, sizeof pgm, "%s/first.pgm", dir);
    cr_assert_eq(e2e_run(&out, "(printf 'P5\\n# first test image\\n28 28\\n255\\n'; tail -c +17 '%s' | head -c 784) > '%s'",
                         m.images, pgm), 0, "%s", out);
    free(out);
    cr_assert_eq(e2e_run(&out, "'%s' '%s'", prog, pgm), 0, "%s", out);
    int cls = -1;
    cr_assert(sscanf(out, "class %d", &cls) == 1 && cls == host.cls[0], "the PGM should be class %d:\n%s", host.cls[0],
              out);
    cr_assert(strstr(out, "  9  "), "the probabilities of all ten classes should follow:\n%s", out);
    free(out);
  }
}

/* ---- aarch64 under qemu-user -------------------------------------------------------- */

Test(aarch64, softmax_and_tiny_cnn_match_the_host_under_qemu, .timeout = 240) {
  need("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross");
  need("qemu-aarch64-static", "qemu-user-static");
  const char *dir = e2e_scratch("infer_aarch64");
  for (size_t k = 0; k < sizeof models / sizeof models[0]; k++) {
    trained_model m;
    trained(models[k].model, models[k].steps, &m);
    char host[4200], arm[4200];
    snprintf(host, sizeof host, "%s/%s_host", dir, models[k].model);
    snprintf(arm, sizeof arm, "%s/%s_aarch64", dir, models[k].model);
    free(build(models[k].model, models[k].entry, m.weights, "host", host, NULL));
    free(build(models[k].model, models[k].entry, m.weights, "aarch64-linux-gnu", arm, NULL));
    char *out = NULL;
    cr_assert_eq(e2e_run(&out, "file '%s' | grep -q aarch64 || readelf -h '%s' | grep -q AArch64", arm, arm), 0,
                 "%s is not an aarch64 program", arm);
    free(out);
    int n = 200;
    outputs a, b;
    host_outputs(host, m.images, n, &a);
    int rc = e2e_run(&out, "qemu-aarch64-static '%s' '%s' --logits --limit %d", arm, m.images, n);
    cr_assert_eq(rc, 0, "the aarch64 classifier failed under qemu:\n%s", out);
    parse_outputs(out, &b);
    free(out);
    expect_same_outputs(&a, &b, "aarch64", n);
    /* the first 1000 test images (Fashion-MNIST has 10000: too slow under emulation) */
    char *host_acc = NULL;
    cr_assert_eq(e2e_run(&host_acc, "'%s' '%s' '%s' --limit 1000", host, m.images, m.labels), 0);
    cr_assert_eq(e2e_run(&out, "qemu-aarch64-static '%s' '%s' '%s' --limit 1000", arm, m.images, m.labels), 0, "%s",
                 out);
    cr_assert_eq(accuracy_of(out), accuracy_of(host_acc), "aarch64: %s, host: %s", out, host_acc);
    cr_log_info("%s on aarch64 (qemu): %d images' outputs equal the host's; %s", models[k].model, n, out);
    free(out);
    free(host_acc);
  }
}

/* ---- Cortex-M4 under qemu-system-arm ------------------------------------------------ */

Test(cortex_m4, tiny_cnn_prints_the_host_classes_and_fits, .timeout = 240) {
  need("arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi");
  need("qemu-system-arm", "qemu-system-arm");
  trained_model m;
  trained("mnist_tiny", 300, &m);
  const char *dir = e2e_scratch("infer_cortex_m4");
  char host[4200], elf[4200];
  snprintf(host, sizeof host, "%s/host", dir);
  snprintf(elf, sizeof elf, "%s/mnist_tiny.elf", dir);
  free(build("mnist_tiny", "y_conv", m.weights, "host", host, NULL));
  char extra[4400];
  snprintf(extra, sizeof extra, "--images '%s' --count 10", m.images);
  char *out = build("mnist_tiny", "y_conv", m.weights, "cortex-m4", elf, extra);
  /* "model object mnist_tiny.o: code N bytes (.text), weights N bytes (.rodata), ..." */
  long long code = -1, weights = -1, data = -1, arena = -1;
  const char *line = strstr(out, "model object ");
  cr_assert(line && sscanf(strchr(line, ':') + 1, " code %lld bytes (.text), weights %lld bytes (.rodata), data %lld "
                           "bytes, arena %lld bytes", &code, &weights, &data, &arena) == 4,
            "flowc should report the model object's sizes:\n%s", out);
  const char *berkeley = strstr(out, "text\t");
  cr_assert(berkeley, "flowc should print arm-none-eabi-size's text/data/bss:\n%s", out);
  cr_log_info("cortex-m4 model object: %lld bytes of code, %lld of weights, %lld of arena", code, weights, arena);
  fprintf(stderr, "cortex-m4 sizes:\n%s", strstr(out, "model object "));
  cr_assert(code > 0 && code < 8 * 1024, "the model's code is %lld bytes of text, over 8 KB", code);
  cr_assert(weights < 64 * 1024, "the weights take %lld bytes, over 64 KB", weights);
  free(out);
  int rc = e2e_run(&out, "timeout 120 qemu-system-arm -M mps2-an386 -nographic -semihosting-config "
                         "enable=on,target=native -kernel '%s'", elf);
  cr_assert_eq(rc, 0, "the firmware failed under qemu-system-arm (%d):\n%s", rc, out);
  outputs a, b;
  parse_outputs(out, &b);
  host_outputs(host, m.images, 10, &a);
  expect_same_outputs(&a, &b, "cortex-m4", 10);
  free(out);
}

/* ---- wasm32 under Node.js ------------------------------------------------------------ */

Test(wasm32, softmax_and_tiny_cnn_match_the_host_under_node, .timeout = 240) {
  need("clang", "clang");
  need("wasm-ld", "lld");
  need("node", "nodejs");
  const char *dir = e2e_scratch("infer_wasm32");
  for (size_t k = 0; k < sizeof models / sizeof models[0]; k++) {
    trained_model m;
    trained(models[k].model, models[k].steps, &m);
    char host[4200], wasm[4200];
    snprintf(host, sizeof host, "%s/%s_host", dir, models[k].model);
    snprintf(wasm, sizeof wasm, "%s/%s.wasm", dir, models[k].model);
    free(build(models[k].model, models[k].entry, m.weights, "host", host, NULL));
    free(build(models[k].model, models[k].entry, m.weights, "wasm32", wasm, NULL));
    int n = 200;
    outputs a, b;
    host_outputs(host, m.images, n, &a);
    char *out = NULL;
    int rc = e2e_run(&out, "node '%s/%s.js' '%s' --logits --limit %d", dir, models[k].model, m.images, n);
    cr_assert_eq(rc, 0, "the wasm module failed under node:\n%s", out);
    parse_outputs(out, &b);
    free(out);
    expect_same_outputs(&a, &b, "wasm32", n);
    char *host_acc = NULL;
    cr_assert_eq(e2e_run(&host_acc, "'%s' '%s' '%s'", host, m.images, m.labels), 0);
    cr_assert_eq(e2e_run(&out, "node '%s/%s.js' '%s' '%s'", dir, models[k].model, m.images, m.labels), 0, "%s", out);
    cr_assert_eq(accuracy_of(out), accuracy_of(host_acc), "wasm32: %s, host: %s", out, host_acc);
    free(out);
    free(host_acc);
  }
}

/* ---- checkpoints written here ------------------------------------------------------------ */

typedef struct {
  const char *name;
  int rank;
  int64_t dims[4];
} tensor_spec;

static const tensor_spec tiny_tensors[] = {
    {"W_conv1", 4, {5, 5, 1, 8}}, {"b_conv1", 1, {8}},     {"W_conv2", 4, {5, 5, 8, 16}},
    {"b_conv2", 1, {16}},         {"W_fc", 2, {784, 10}}, {"b_fc", 1, {10}},
};
enum { NTINY = sizeof tiny_tensors / sizeof tiny_tensors[0] };

/* Writes a checkpoint of the given tensors with small pseudo-random values. */
static void write_checkpoint(const char *path, const tensor_spec *specs, int n) {
  flrt_tensor t[16];
  float *data[16];
  uint32_t state = 12345;
  for (int i = 0; i < n; i++) {
    int64_t count = 1;
    for (int d = 0; d < specs[i].rank; d++) count *= specs[i].dims[d];
    data[i] = malloc(sizeof(float) * (size_t)count);
    for (int64_t k = 0; k < count; k++) {
      state = state * 1664525u + 1013904223u;
      data[i][k] = ((float)(state >> 8) / 16777216.0f - 0.5f) * 0.2f;
    }
    t[i] = (flrt_tensor){specs[i].name, FLRT_F32, specs[i].rank, {0}, data[i]};
    memcpy(t[i].dims, specs[i].dims, sizeof specs[i].dims);
  }
  char err[512];
  cr_assert_eq(flrt_checkpoint_save(path, t, n, NULL, NULL, 0, err, sizeof err), 0, "%s", err);
  for (int i = 0; i < n; i++) free(data[i]);
}

/* flowc emit --infer with weights from path; returns the exit status, output in *out. */
static int emit(const char *flow, const char *entry, const char *weights, const char *dir, const char *extra, char **out) {
  return e2e_run(out, "'%s' emit '%s' --infer %s --weights '%s' -o '%s' %s", flowc(), flow, entry, weights, dir,
                 extra ? extra : "");
}

/* flowc emit must refuse the weights (exit 1) with both fragments in its message. */
static void expect_refused(const char *dir, const char *weights, const char *fragment1, const char *fragment2) {
  char out_dir[4200];
  snprintf(out_dir, sizeof out_dir, "%s/out", dir);
  char *out = NULL;
  int rc = emit(example("mnist_tiny"), "y_conv", weights, out_dir, NULL, &out);
  cr_assert_eq(rc, 1, "flowc accepted %s (%d):\n%s", weights, rc, out);
  cr_assert(strstr(out, fragment1) && strstr(out, fragment2), "the message should say '%s' and '%s':\n%s", fragment1,
            fragment2, out);
  free(out);
}

Test(weights, a_tensor_of_another_shape_is_refused_naming_it) {
  const char *dir = e2e_scratch("infer_wrong_shape");
  tensor_spec specs[NTINY];
  memcpy(specs, tiny_tensors, sizeof specs);
  specs[2].dims[3] = 32; /* W_conv2 [5, 5, 8, 32] */
  char path[4200];
  snprintf(path, sizeof path, "%s/w.safetensors", dir);
  write_checkpoint(path, specs, NTINY);
  expect_refused(dir, path, "tensor 'W_conv2'", "has shape [5, 5, 8, 32], the model expects [5, 5, 8, 16]");
}

Test(weights, a_missing_tensor_is_refused_naming_it) {
  const char *dir = e2e_scratch("infer_missing");
  char path[4200];
  snprintf(path, sizeof path, "%s/w.safetensors", dir);
  write_checkpoint(path, tiny_tensors, NTINY - 1); /* no b_fc */
  expect_refused(dir, path, "tensor 'b_fc'", "missing");
}

Test(weights, a_truncated_file_is_refused_naming_the_tensor) {
  const char *dir = e2e_scratch("infer_truncated");
  char path[4200], cut[4200];
  snprintf(path, sizeof path, "%s/w.safetensors", dir);
  write_checkpoint(path, tiny_tensors, NTINY);
  snprintf(cut, sizeof cut, "%s/cut.safetensors", dir);
  char *out = NULL;
  /* The tensors lie in the file in the order written: cutting 20 bytes off the end cuts b_fc. */
  cr_assert_eq(e2e_run(&out, "head -c $(( $(stat -c %%s '%s') - 20 )) '%s' > '%s'", path, path, cut), 0, "%s", out);
  free(out);
  expect_refused(dir, cut, "truncated", "tensor 'b_fc'");
  /* Cut inside the header: nothing can be read; the message names the first tensor the model needs. */
  cr_assert_eq(e2e_run(&out, "head -c 100 '%s' > '%s'", path, cut), 0, "%s", out);
  free(out);
  expect_refused(dir, cut, "truncated", "tensor 'W_conv1'");
  cr_assert_eq(e2e_run(&out, "head -c 5 '%s' > '%s'", path, cut), 0, "%s", out);
  free(out);
  expect_refused(dir, cut, "truncated", "tensor 'W_conv1'");
}

Test(weights, a_file_that_is_not_a_checkpoint_is_refused) {
  const char *dir = e2e_scratch("infer_garbage");
  char path[4200];
  snprintf(path, sizeof path, "%s/garbage.safetensors", dir);
  write_text(path, "this is not a safetensors file at all, just text that is long enough\n");
  expect_refused(dir, path, "garbage.safetensors", "not a safetensors file");
  expect_refused(dir, "/nonexistent/w.safetensors", "/nonexistent/w.safetensors", "No such file");
}

/* exp without a C library: a softmax output under wasm32 (flowc_freestanding.c's
 * expf) against the host's glibc, on synthetic weights and images. */
Test(wasm32, softmax_probabilities_match_the_host_without_a_c_library) {
  need("clang", "clang");
  need("wasm-ld", "lld");
  need("node", "nodejs");
  const char *dir = e2e_scratch("infer_wasm32_softmax");
  char flow[4200], weights[4200], images[4200], host[4200], wasm[4200];
  snprintf(flow, sizeof flow, "%s/probs.flow", dir);
  snprintf(weights, sizeof weights, "%s/w.safetensors", dir);
  snprintf(images, sizeof images, "%s/images-idx3-ubyte", dir);
  snprintf(host, sizeof host, "%s/probs_host", dir);
  snprintf(wasm, sizeof wasm, "%s/probs.wasm", dir);
  char *out = NULL;
  cr_assert_eq(e2e_run(&out, "sed 's/^y = matmul(x, W) + b$/logits = matmul(x, W) + b\\ny = softmax(logits)/' '%s' > '%s'",
                       example("mnist_softmax"), flow), 0, "%s", out);
  free(out);
  const tensor_spec specs[] = {{"W", 2, {784, 10}}, {"b", 1, {10}}};
  write_checkpoint(weights, specs, 2);
  FILE *f = fopen(images, "wb");
  cr_assert(f);
  const unsigned char header[16] = {0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 28, 0, 0, 0, 28};
  fwrite(header, 1, sizeof header, f);
  for (int i = 0; i < 20 * 784; i++) fputc((i * 7919 + i / 784 * 31) % 256, f);
  fclose(f);
  cr_assert_eq(e2e_run(&out, "'%s' build '%s' --infer y --weights '%s' -o '%s' && '%s' build '%s' --infer y --weights '%s' "
                             "--target wasm32 -o '%s'", flowc(), flow, weights, host, flowc(), flow, weights, wasm),
               0, "%s", out);
  free(out);
  outputs a, b;
  host_outputs(host, images, 20, &a);
  cr_assert_eq(e2e_run(&out, "node '%s/probs.js' '%s' --logits", dir, images), 0, "%s", out);
  parse_outputs(out, &b);
  free(out);
  expect_same_outputs(&a, &b, "wasm32 softmax", 20);
  double sum = 0;
  for (int c = 0; c < CLASSES; c++) sum += b.v[0][c];
  cr_assert(fabs(sum - 1) < 1e-5, "probabilities sum to %.9g", sum);
}

/* ---- the command line ------------------------------------------------------------------- */

Test(cli, an_unknown_target_lists_the_known_ones) {
  const char *dir = e2e_scratch("infer_unknown_target");
  char *out = NULL;
  int rc = e2e_run(&out, "'%s' build '%s' --infer y_conv --weights w.safetensors --target riscv -o '%s/x'", flowc(),
                   example("mnist_tiny"), dir);
  cr_assert_eq(rc, 2, "expected a usage error (2), got %d:\n%s", rc, out);
  cr_assert(strstr(out, "unknown target 'riscv'") && strstr(out, "host") && strstr(out, "aarch64-linux-gnu") &&
            strstr(out, "cortex-m4") && strstr(out, "wasm32"), "the message should list the targets:\n%s", out);
  free(out);
  rc = e2e_run(&out, "'%s' build '%s' --infer y_conv -o '%s/x'", flowc(), example("mnist_tiny"), dir);
  cr_assert_eq(rc, 2, "--infer without --weights should be a usage error:\n%s", out);
  cr_assert(strstr(out, "--weights"), "%s", out);
  free(out);
}

Test(cli, a_missing_toolchain_names_its_debian_package) {
  const char *dir = e2e_scratch("infer_no_toolchain");
  char weights[4200];
  snprintf(weights, sizeof weights, "%s/w.safetensors", dir);
  write_checkpoint(weights, tiny_tensors, NTINY);
  static const struct {
    const char *target, *program, *package;
  } cases[] = {{"aarch64-linux-gnu", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"},
               {"cortex-m4", "arm-none-eabi-gcc", "gcc-arm-none-eabi libnewlib-arm-none-eabi"},
               {"wasm32", "clang", "clang lld"},
               {"host", "cc", "gcc"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *out = NULL;
    /* No PATH: no compiler can be found (flowc itself is run by its full path). */
    int rc = e2e_run(&out, "PATH=/nonexistent CC= '%s' build '%s' --infer y_conv --weights '%s' --target %s -o '%s/x'",
                     flowc(), example("mnist_tiny"), weights, cases[i].target, dir);
    cr_assert_eq(rc, 1, "%s without its toolchain: expected 1, got %d:\n%s", cases[i].target, rc, out);
    cr_assert(strstr(out, cases[i].program) && strstr(out, cases[i].package),
              "the message should name %s and the package %s:\n%s", cases[i].program, cases[i].package, out);
    free(out);
  }
  char *out = NULL;
  int rc = e2e_run(&out, "'%s' build '%s' --infer y_conv --weights '%s' --target cortex-m4 --cc /nonexistent/gcc -o '%s/x'",
                   flowc(), example("mnist_tiny"), weights, dir);
  cr_assert_eq(rc, 1, "%s", out);
  cr_assert(strstr(out, "/nonexistent/gcc") && strstr(out, "gcc-arm-none-eabi"), "%s", out);
  free(out);
}

/* A model with dropout and a scalar placeholder: keep_prob must be fixed. */
static const char dropout_flow[] =
    "x = placeholder(f32, [N, 784])\ny_ = placeholder(f32, [N, 10])\nkeep_prob = placeholder(f32)\n"
    "W = variable(zeros([784, 10]))\nb = variable(zeros([10]))\n"
    "y = matmul(dropout(x, keep_prob), W) + b\n"
    "loss = reduce_mean(softmax_cross_entropy_with_logits(labels=y_, logits=y))\n"
    "train_step = gradient_descent(0.1).minimize(loss)\n"
    "train {\n  data = mnist(\"MNIST_data\")\n  run train_step with keep_prob = 0.5\n%s}\n";

/* dropout_flow at path, its test action `test` ("" for none). */
static void write_dropout_flow(const char *path, const char *test) {
  char text[2048];
  snprintf(text, sizeof text, dropout_flow, test);
  write_text(path, text);
}

/* dropout_flow as FILE.flow in a fresh scratch folder, beside a checkpoint of
 * its two variables and the folder for the emitted code. */
typedef struct {
  char flow[4200], weights[4200], out_dir[4200];
} dropout_case;

static void write_dropout_case(dropout_case *c, const char *scratch, const char *file) {
  const char *dir = e2e_scratch(scratch);
  snprintf(c->flow, sizeof c->flow, "%s/%s.flow", dir, file);
  snprintf(c->weights, sizeof c->weights, "%s/w.safetensors", dir);
  snprintf(c->out_dir, sizeof c->out_dir, "%s/out", dir);
  const tensor_spec specs[] = {{"W", 2, {784, 10}}, {"b", 1, {10}}};
  write_checkpoint(c->weights, specs, 2);
  write_dropout_flow(c->flow, "");
}

/* A loss is not an inference kernel (its kernel calls the training runtime):
 * asking for one is an error at the loss's line, and the prediction beside
 * it still builds. */
Test(cli, a_loss_has_no_inference_kernel) {
  dropout_case c;
  write_dropout_case(&c, "infer_loss", "loss");
  const char *flow = c.flow, *weights = c.weights, *out_dir = c.out_dir;
  char *out = NULL;
  int rc = emit(flow, "loss", weights, out_dir, "--feed keep_prob=1.0", &out);
  cr_assert_eq(rc, 1, "inference code for a loss was accepted:\n%s", out);
  cr_assert(strstr(out, "loss.flow:7:20:") && strstr(out, "no kernel for softmax_cross_entropy_with_logits"),
            "the message should name the op and its line:\n%s", out);
  free(out);
  rc = emit(flow, "y", weights, out_dir, "--feed keep_prob=1.0", &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
}

Test(cli, a_scalar_placeholder_is_fixed_by_the_test_action_or_feed) {
  dropout_case c;
  write_dropout_case(&c, "infer_keep_prob", "drop");
  const char *flow = c.flow, *weights = c.weights, *out_dir = c.out_dir;
  char *out = NULL;
  int rc = emit(flow, "y", weights, out_dir, NULL, &out);
  cr_assert_eq(rc, 1, "an unfixed keep_prob was accepted:\n%s", out);
  cr_assert(strstr(out, "keep_prob") && strstr(out, "--feed keep_prob="), "the message should name keep_prob:\n%s", out);
  free(out);
  rc = emit(flow, "y", weights, out_dir, "--feed keep_prob=0.5", &out);
  cr_assert_eq(rc, 1, "dropout at 0.5 was accepted:\n%s", out);
  cr_assert(strstr(out, "keep_prob") && strstr(out, "0.5"), "%s", out);
  free(out);
  rc = emit(flow, "y", weights, out_dir, "--feed keep_prob=1.0", &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  /* The test action's `with keep_prob = 1.0` fixes it too, as the training executable evaluates. */
  write_dropout_flow(flow, "  test: print \"{loss}\" with keep_prob = 1.0\n");
  rc = emit(flow, "y", weights, out_dir, NULL, &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = e2e_run(&out, "cd '%s' && ! grep -q 'fixed_keep_prob\\|dropout' drop.c && cc -std=c99 -Wall -Wextra -Werror -c drop.c", out_dir);
  cr_assert_eq(rc, 0, "dropout at keep_prob 1 should vanish from the code:\n%s", out);
  free(out);
  rc = emit(flow, "y_conv", weights, out_dir, NULL, &out);
  cr_assert_eq(rc, 1, "%s", out);
  cr_assert(strstr(out, "no tensor of that name"), "%s", out);
  free(out);
  rc = emit(flow, "train_step", weights, out_dir, NULL, &out);
  cr_assert_eq(rc, 1, "%s", out);
  cr_assert(strstr(out, "train op"), "%s", out);
  free(out);
}

/* ---- the generated code ---------------------------------------------------------------- */

Test(generated_code, compiles_cleanly_on_every_target_without_malloc_or_stdio, .timeout = 240) {
  const char *dir = e2e_scratch("infer_warnings");
  char weights[4200];
  snprintf(weights, sizeof weights, "%s/w.safetensors", dir);
  write_checkpoint(weights, tiny_tensors, NTINY);
  static const struct {
    const char *program, *package, *command, *nm;
  } compilers[] = {
      {"cc", "gcc", "cc -std=c99 -pedantic", "nm"},
      {"aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu", "aarch64-linux-gnu-gcc -std=c99", "aarch64-linux-gnu-nm"},
      {"arm-none-eabi-gcc", "gcc-arm-none-eabi",
       "arm-none-eabi-gcc -std=c99 -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Wdouble-promotion",
       "arm-none-eabi-nm"},
      /* (wasm-ld refuses any undefined function when it links the module) */
      {"clang", "clang", "clang --target=wasm32 -std=c99 -ffreestanding", "true"},
  };
  char src[4200];
  snprintf(src, sizeof src, "%s/lib", dir);
  char *out = NULL;
  int rc = emit(example("mnist_tiny"), "y_conv", weights, src, NULL, &out);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  for (size_t i = 0; i < sizeof compilers / sizeof compilers[0]; i++) {
    if (!have(compilers[i].program)) {
      cr_log_warn("%s is not installed (apt-get install %s): not compiled for it", compilers[i].program,
                  compilers[i].package);
      continue;
    }
    rc = e2e_run(&out, "cd '%s' && %s -O2 -Wall -Wextra -Werror -c mnist_tiny.c -o model.o", src, compilers[i].command);
    cr_assert_eq(rc, 0, "%s: the model does not compile cleanly:\n%s", compilers[i].program, out);
    free(out);
    /* Nothing from the C library beyond memory and math routines. */
    rc = e2e_run(&out, "cd '%s' && %s -u model.o | grep -E 'malloc|calloc|realloc|free|printf|puts|fwrite|fopen|"
                       "stdout|stderr|cblas|abort' ; true", src, compilers[i].nm);
    cr_assert_str_eq(out, "", "%s: the model calls the C library:\n%s", compilers[i].program, out);
    free(out);
  }
  /* Each target's emitted folder builds with its Makefile; the support files compile with -Werror too. */
  static const struct {
    const char *target, *program, *flags;
  } folders[] = {{"host", "cc", "cc -std=c99 -Wall -Wextra -Werror -DFLOWC_HAVE_ZLIB -c flowc_classify.c"},
                 {"aarch64-linux-gnu", "aarch64-linux-gnu-gcc",
                  "aarch64-linux-gnu-gcc -std=c99 -Wall -Wextra -Werror -c flowc_classify.c"},
                 {"cortex-m4", "arm-none-eabi-gcc",
                  "arm-none-eabi-gcc -std=c99 -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16 -Wall "
                  "-Wextra -Werror -c flowc_firmware.c flowc_startup.c"},
                 {"wasm32", "wasm-ld", "clang --target=wasm32 -std=c99 -ffreestanding -Wall -Wextra -Werror -c "
                                       "flowc_wasm.c flowc_freestanding.c"}};
  for (size_t i = 0; i < sizeof folders / sizeof folders[0]; i++) {
    if (!have(folders[i].program)) continue;
    char target_dir[4300];
    snprintf(target_dir, sizeof target_dir, "%s/%s", dir, folders[i].target);
    rc = e2e_run(&out, "'%s' emit '%s' --infer y_conv --weights '%s' --target %s -o '%s'", flowc(),
                 example("mnist_tiny"), weights, folders[i].target, target_dir);
    cr_assert_eq(rc, 0, "%s", out);
    free(out);
    rc = e2e_run(&out, "cd '%s' && %s && make -s", target_dir, folders[i].flags);
    cr_assert_eq(rc, 0, "%s: the emitted folder does not build cleanly:\n%s", folders[i].target, out);
    free(out);
  }
}
