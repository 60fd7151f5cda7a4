/* test_emulated.c - the generated CUDA programs, run on the tests' GPU emulator, agree with the CPU build.
 *
 * No GPU here, so tests/cuda/emu stands in for one: the real program (host
 * code, runtime, NVRTC compiling the real kernels to a real cubin) runs
 * against a fake driver and cuBLAS that execute the kernels compiled as C++
 * for the CPU, with CUDA graphs recorded and replayed. What this shows: the
 * kernels compute what the CPU kernels compute (dropout masks included), the
 * host code plans, copies, launches, captures and replays correctly, and
 * checkpoints move between the builds. What it cannot show: GPU races, the
 * memory model, speed (tests/gpu/check.sh measures those on a GPU). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_test_util.h"

/* The GPU and CPU programs of an example, and the emulator for the first. */
typedef struct {
  const char *dir;
  char gpu[4200], cpu[4200];
  cu_emulator emu;
} pair;

static void make_pair(pair *p, const char *name, const char *example) {
  cu_require_toolkit();
  p->dir = e2e_scratch(name);
  const char *src = cu_emit(p->dir, example, NULL);
  char model[256];
  const char *base = strrchr(example, '/');
  snprintf(model, sizeof model, "%s", base ? base + 1 : example);
  char *dot = strrchr(model, '.');
  if (dot) *dot = '\0';
  cu_emulator_make(&p->emu, p->dir, src, model);
  snprintf(p->gpu, sizeof p->gpu, "%s", cu_build(p->dir, example, "gpu", NULL));
  snprintf(p->cpu, sizeof p->cpu, "%s", cu_build_cpu(p->dir, example, "cpu"));
}

static long stat_of(const char *output, const char *what) {
  const char *at = strstr(output, "emu: ");
  cr_assert(at, "the emulator printed no statistics:\n%s", output);
  const char *found = strstr(at, what);
  cr_assert(found, "no '%s' in the emulator's statistics:\n%s", what, output);
  while (found > at && found[-1] == ' ') found--;
  while (found > at && found[-1] >= '0' && found[-1] <= '9') found--;
  return atol(found);
}

Test(emulated, basic_usage_prints_what_the_cpu_build_prints, .timeout = 240) {
  pair p;
  make_pair(&p, "cuda_emu_basic_usage", "basic_usage");
  char *out = NULL;
  int rc = cu_run_emulated(&p.emu, "FLOWC_CUDA_QUIET=1", &out, "'%s' 2>/dev/null", p.gpu);
  cr_assert_eq(rc, 0, "the CUDA basic_usage failed:\n%s", out);
  cr_assert_str_eq(out, "0\n1\n2\n3\n[[12]]\n21 7\n14\n");
  free(out);
}

/* Every number the programs print, compared within rtol. */
static void same_numbers(const char *cpu, const char *gpu, double rtol) {
  const char *a = cpu, *b = gpu;
  int count = 0;
  for (;;) {
    while (*a && !(*a == '-' || (*a >= '0' && *a <= '9'))) a++;
    while (*b && !(*b == '-' || (*b >= '0' && *b <= '9'))) b++;
    if (!*a || !*b) break;
    char *ea, *eb;
    double x = strtod(a, &ea), y = strtod(b, &eb);
    cr_assert(fabs(x - y) <= rtol * fmax(fabs(x), 1e-3), "number %d: CPU %g, GPU %g\nCPU:\n%s\nGPU:\n%s", count, x, y,
              cpu, gpu);
    a = ea > a ? ea : a + 1;
    b = eb > b ? eb : b + 1;
    count++;
  }
  cr_assert(!*a && !*b, "the outputs have different lengths\nCPU:\n%s\nGPU:\n%s", cpu, gpu);
  cr_assert(count > 10);
}

Test(emulated, line_fit_matches_the_cpu_build, .timeout = 240) {
  pair p;
  make_pair(&p, "cuda_emu_line_fit", "line_fit");
  char *cpu = NULL, *gpu = NULL;
  cr_assert_eq(e2e_run(&cpu, "'%s'", p.cpu), 0, "%s", cpu);
  int rc = cu_run_emulated(&p.emu, "FLOWC_CUDA_QUIET=1", &gpu, "'%s' 2>/dev/null", p.gpu);
  cr_assert_eq(rc, 0, "%s", gpu);
  same_numbers(cpu, gpu, 1e-5);
  free(cpu);
  free(gpu);
}

/* tests/cuda/ops.flow: strided VALID convolution and its gradients, pooling
 * with overlapping windows, softmax, reductions over non-adjacent axes and
 * with keepdims, argmax over a middle axis, integer arithmetic, momentum. */
/* Runs a description of tests/cuda (its train block prints its results) as
 * the CPU build and the emulated GPU build: both outputs, to be freed. */
static void run_both(const char *name, const char *file, char **cpu, char **gpu) {
  char flow[4200];
  snprintf(flow, sizeof flow, "%s/tests/cuda/%s", e2e_source_root(), file);
  pair p;
  make_pair(&p, name, flow);
  cr_assert_eq(e2e_run(cpu, "'%s'", p.cpu), 0, "%s", *cpu);
  int rc = cu_run_emulated(&p.emu, "FLOWC_CUDA_QUIET=1", gpu, "'%s' 2>/dev/null", p.gpu);
  cr_assert_eq(rc, 0, "%s", *gpu);
}

Test(emulated, other_ops_match_the_cpu_build, .timeout = 240) {
  char *cpu = NULL, *gpu = NULL;
  run_both("cuda_emu_ops", "ops.flow", &cpu, &gpu);
  same_numbers(cpu, gpu, 1e-5);
  free(cpu);
  free(gpu);
}

/* tests/cuda/assign_order.flow: side effects take effect in node order and
 * read the values from before the run, as on the CPU: each step sets W to
 * [5 5] and then moves it by the gradient at the W from before the step, so
 * W ends at [5 5] - 0.1 * 2 * [4.8 4.6], not at [5 5]; b gets a from before
 * s1 added 10 to it. */
Test(emulated, side_effects_run_in_node_order, .timeout = 240) {
  char *cpu = NULL, *gpu = NULL;
  run_both("cuda_emu_assign_order", "assign_order.flow", &cpu, &gpu);
  cr_assert(strstr(cpu, "[4.04 4.08] [21 22 23 24] [[11 12] [13 14]]") != NULL,
            "the CPU build should end with W = [4.04 4.08], a = [21 22 23 24], b = [[11 12] [13 14]]:\n%s", cpu);
  same_numbers(cpu, gpu, 1e-6);
  free(cpu);
  free(gpu);
}

Test(emulated, mnist_softmax_matches_the_cpu_build, .timeout = 240) {
  pair p;
  make_pair(&p, "cuda_emu_softmax", "mnist_softmax");
  const char *data = cu_small_data(p.dir);
  char *cpu = NULL, *gpu = NULL, *report = NULL;
  int rc = e2e_run(&cpu, "'%s' --data '%s' --validation 0 --batch 16 --steps 20 --log-every 5 --save '%s/cpu.st' --quiet",
                   p.cpu, data, p.dir);
  cr_assert_eq(rc, 0, "%s", cpu);
  rc = cu_run_emulated(&p.emu, "", &gpu,
                       "'%s' --data '%s' --validation 0 --batch 16 --steps 20 --log-every 5 --save '%s/gpu.st' --quiet", p.gpu,
                       data, p.dir);
  cr_assert_eq(rc, 0, "%s", gpu);
  cr_assert(stat_of(gpu, "graph launches") >= 10, "the steps should replay a CUDA graph:\n%s", gpu);
  cr_assert_float_eq(e2e_test_accuracy(gpu), e2e_test_accuracy(cpu), 1e-6, "CPU:\n%s\nGPU:\n%s", cpu, gpu);
  char cpu_st[4300], gpu_st[4300];
  snprintf(cpu_st, sizeof cpu_st, "%s/cpu.st", p.dir);
  snprintf(gpu_st, sizeof gpu_st, "%s/gpu.st", p.dir);
  rc = cu_compare(cpu_st, gpu_st, "--rtol 1e-4", &report);
  cr_assert_eq(rc, 0, "after 20 steps the GPU's weights differ from the CPU's:\n%s", report);
  free(cpu);
  free(gpu);
  free(report);
}

/* Deep MNIST from one checkpoint, on one batch: the tolerance that
 * tests/gpu/check.sh states for a GPU, here after three steps. */
Test(emulated, mnist_deep_steps_match_the_cpu_build, .timeout = 300) {
  pair p;
  make_pair(&p, "cuda_emu_deep", "mnist_deep");
  const char *data = cu_small_data(p.dir);
  char *out = NULL, *report = NULL;
  const char *common = "--validation 0 --batch 8 --quiet";
  int rc = e2e_run(&out, "'%s' --data '%s' %s --steps 0 --save '%s/init.st'", p.cpu, data, common, p.dir);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = e2e_run(&out, "'%s' --data '%s' %s --steps 3 --resume '%s/init.st' --save '%s/cpu3.st'", p.cpu, data, common, p.dir,
               p.dir);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = cu_run_emulated(&p.emu, "", &out, "'%s' --data '%s' %s --steps 3 --resume '%s/init.st' --save '%s/gpu3.st'", p.gpu,
                       data, common, p.dir, p.dir);
  cr_assert_eq(rc, 0, "%s", out);
  /* step 1 warms up, step 2 is captured, step 3 replays it */
  cr_assert_eq(stat_of(out, "graphs captured"), 1, "%s", out);
  cr_assert_eq(stat_of(out, "graph launches"), 2, "%s", out);
  free(out);
  char cpu_st[4300], gpu_st[4300];
  snprintf(cpu_st, sizeof cpu_st, "%s/cpu3.st", p.dir);
  snprintf(gpu_st, sizeof gpu_st, "%s/gpu3.st", p.dir);
  rc = cu_compare(cpu_st, gpu_st, "", &report);
  cr_assert_eq(rc, 0, "the GPU's Deep MNIST steps differ from the CPU's:\n%s", report);
  free(report);
  /* without graphs: the very same numbers */
  rc = cu_run_emulated(&p.emu, "FLOWC_CUDA_GRAPHS=0", &out,
                       "'%s' --data '%s' %s --steps 3 --resume '%s/init.st' --save '%s/eager3.st'", p.gpu, data, common,
                       p.dir, p.dir);
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert_eq(stat_of(out, "graphs captured"), 0, "%s", out);
  free(out);
  char eager_st[4300];
  snprintf(eager_st, sizeof eager_st, "%s/eager3.st", p.dir);
  cr_assert(e2e_files_equal(gpu_st, eager_st), "replaying graphs changed the results");
}

/* Two steps on one build, the third on the other, against two steps and a
 * third on the CPU. (Not against three steps in one run: the first run's
 * test evaluation draws dropout masks too, which moves the counter that the
 * checkpoint keeps, in both builds alike.) */
Test(emulated, checkpoints_move_between_the_builds, .timeout = 300) {
  pair p;
  make_pair(&p, "cuda_emu_resume", "mnist_deep");
  const char *data = cu_small_data(p.dir);
  const char *common = "--validation 0 --batch 8 --quiet";
  char *out = NULL, *report = NULL;
  const char *d = p.dir;
  int rc = e2e_run(&out, "'%s' --data '%s' %s --steps 0 --save '%s/init.st' && "
                         "'%s' --data '%s' %s --steps 2 --resume '%s/init.st' --save '%s/cpu2.st' && "
                         "'%s' --data '%s' %s --steps 3 --resume '%s/cpu2.st' --save '%s/cpu2_cpu1.st'",
                   p.cpu, data, common, d, p.cpu, data, common, d, d, p.cpu, data, common, d, d);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = cu_run_emulated(&p.emu, "", &out, "'%s' --data '%s' %s --steps 2 --resume '%s/init.st' --save '%s/gpu2.st'", p.gpu,
                       data, common, d, d);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = e2e_run(&out, "'%s' --data '%s' %s --steps 3 --resume '%s/gpu2.st' --save '%s/gpu2_cpu1.st'", p.cpu, data, common,
               d, d);
  cr_assert_eq(rc, 0, "the CPU build cannot resume the GPU's checkpoint:\n%s", out);
  free(out);
  rc = cu_run_emulated(&p.emu, "", &out, "'%s' --data '%s' %s --steps 3 --resume '%s/cpu2.st' --save '%s/cpu2_gpu1.st'",
                       p.gpu, data, common, d, d);
  cr_assert_eq(rc, 0, "the GPU build cannot resume the CPU's checkpoint:\n%s", out);
  free(out);
  char a[4300], b[4300];
  snprintf(a, sizeof a, "%s/cpu2.st", d);
  snprintf(b, sizeof b, "%s/gpu2.st", d);
  rc = cu_compare(a, b, "", &report);
  cr_assert_eq(rc, 0, "two steps on the GPU differ from two on the CPU:\n%s", report);
  free(report);
  snprintf(a, sizeof a, "%s/cpu2_cpu1.st", d);
  snprintf(b, sizeof b, "%s/gpu2_cpu1.st", d);
  rc = cu_compare(a, b, "", &report);
  cr_assert_eq(rc, 0, "GPU then CPU differs from CPU then CPU:\n%s", report);
  free(report);
  snprintf(b, sizeof b, "%s/cpu2_gpu1.st", d);
  rc = cu_compare(a, b, "", &report);
  cr_assert_eq(rc, 0, "CPU then GPU differs from CPU then CPU:\n%s", report);
  free(report);
}

Test(emulated, kernels_for_each_kind_of_gpu, .timeout = 240) {
  pair p;
  make_pair(&p, "cuda_emu_archs", "basic_usage");
  static const struct {
    const char *sm, *expect;
  } cases[] = {{"80", "kernels: NVRTC sm_80"},    {"90", "kernels: NVRTC sm_90"},
               {"86", "kernels: NVRTC sm_86"},    {"130", "kernels: NVRTC compute_"},
               {"61", "older than NVRTC"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char env[64], *out = NULL;
    snprintf(env, sizeof env, "FLOWC_EMU_SM=%s", cases[i].sm);
    int rc = cu_run_emulated(&p.emu, env, &out, "'%s'", p.gpu);
    cr_assert(strstr(out, cases[i].expect), "sm_%s: expected '%s' in:\n%s", cases[i].sm, cases[i].expect, out);
    cr_assert_eq(rc, strcmp(cases[i].sm, "61") == 0 ? 1 : 0, "sm_%s: exit status %d:\n%s", cases[i].sm, rc, out);
    free(out);
  }
  /* the second run of the same kernels for the same GPU takes them from the cache */
  char *out = NULL;
  int rc = cu_run_emulated(&p.emu, "", &out, "'%s'", p.gpu);
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(strstr(out, "kernels: NVRTC sm_80, from the cache"), "%s", out);
  free(out);
}

Test(emulated, nvcc_kernels_run_as_the_nvrtc_ones, .timeout = 300) {
  cu_require_toolkit();
  char nvcc[2300];
  snprintf(nvcc, sizeof nvcc, "%s/bin/nvcc", cu_toolkit());
  FILE *probe = fopen(nvcc, "r");
  if (!probe) cr_skip_test("the toolkit has no nvcc");
  fclose(probe);
  pair p;
  make_pair(&p, "cuda_emu_nvcc", "mnist_deep");
  const char *aot = cu_build(p.dir, "mnist_deep", "aot", "--nvcc");
  const char *data = cu_small_data(p.dir);
  const char *common = "--validation 0 --batch 8 --quiet --steps 2";
  char *out = NULL;
  int rc = cu_run_emulated(&p.emu, "", &out, "'%s' --data '%s' %s --save '%s/nvrtc.st'", p.gpu, data, common, p.dir);
  cr_assert_eq(rc, 0, "%s", out);
  free(out);
  rc = cu_run_emulated(&p.emu, "", &out, "'%s' --data '%s' %s --save '%s/nvcc.st'", aot, data, common, p.dir);
  cr_assert_eq(rc, 0, "%s", out);
  cr_assert(strstr(out, "compiled ahead of time by nvcc") && strstr(out, "module: fatbin"), "%s", out);
  free(out);
  char a[4300], b[4300];
  snprintf(a, sizeof a, "%s/nvrtc.st", p.dir);
  snprintf(b, sizeof b, "%s/nvcc.st", p.dir);
  cr_assert(e2e_files_equal(a, b), "the nvcc build computed other numbers than the NVRTC build");
}
