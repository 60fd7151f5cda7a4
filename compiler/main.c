/* main.c - the flowc command: dispatch to subcommands, shared options, check/dump/graph. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen.h"
#include "commands.h"
#include "front_internal.h"

struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
};

/* Every subcommand, in the order --help lists them. build.c adds its own here. */
static const struct command commands[] = {
    {"check", cmd_check, "check a description; list its named tensors with their shapes"},
    {"dump", cmd_dump, "print the IR, one node per line (--after autodiff|simplify|fusion)"},
    {"graph", cmd_graph, "print the IR as a Graphviz dot graph"},
    {"build", cmd_build, "compile the training executable (-o PROGRAM; --name, --cc, --keep, --report, -O0);\n"
                         "           with --infer ENTRY --weights CKPT [--target T]: an inference binary;\n"
                         "           with --device cuda [--nvcc]: the same program for an NVIDIA GPU (docs/CUDA.md)"},
    {"emit", cmd_emit, "write the program's C sources and a Makefile into a folder (-o DIR)"},
};
static const size_t ncommands = sizeof commands / sizeof commands[0];

static const char usage_line[] = "usage: flowc COMMAND [-D NAME=VALUE]... [-o FILE] FILE.flow";

static void print_help(FILE *out) {
  fprintf(out, "%s\n\nCommands:\n", usage_line);
  for (size_t i = 0; i < ncommands; i++)
    fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fputs("\nOptions (anywhere on the line):\n"
        "  -D NAME=VALUE  replace the value of a top-level assignment NAME = number\n"
        "  -o FILE        write the output to FILE instead of standard output\n"
        "  --help         show this help\n"
        "  --version      show the version\n"
        "\nExit status: 0 success, 1 an error in the description, 2 a usage error.\n",
        out);
}

int flowc_usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("flowc: ", stderr);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n%s\n(flowc --help lists the commands and options)\n", usage_line);
  return FLOWC_USAGE_ERROR;
}

static bool is_value_option(const char *arg, const char *const *value_options) {
  for (int i = 0; value_options && value_options[i]; i++)
    if (strcmp(arg, value_options[i]) == 0) return true;
  return false;
}

/* -D NAME=VALUE. The name is cut out of the argument in place (argv strings
 * are writable), so it lives as long as the process and needs no freeing. */
static int parse_define(char *text, struct flowc_args *args) {
  char *eq = strchr(text, '=');
  if (!eq || eq == text)
    return flowc_usage_error("-D %s: write -D NAME=VALUE, as in -D lr=0.1", text);
  for (const char *p = text; p < eq; p++) {
    bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
              (p > text && *p >= '0' && *p <= '9');
    if (!ok) return flowc_usage_error("-D %s: '%.*s' is not a name", text, (int)(eq - text), text);
  }
  char *end;
  errno = 0;
  double value = strtod(eq + 1, &end);
  if (end == eq + 1 || *end != '\0' || errno == ERANGE)
    return flowc_usage_error("-D %s: the value must be a number", text);
  if (args->ndefines == FLOWC_MAX_DEFINES)
    return flowc_usage_error("too many -D options (at most %d)", FLOWC_MAX_DEFINES);
  *eq = '\0';
  args->defines[args->ndefines++] = (fl_define){.name = text, .value = value};
  return FLOWC_OK;
}

int flowc_parse_args(int argc, char **argv, struct flowc_args *args,
                     const char *const *value_options) {
  memset(args, 0, sizeof *args);
  args->command = argc > 0 ? argv[0] : "";
  bool options_done = false;
  for (int i = 1; i < argc; i++) {
    char *arg = argv[i];
    if (!options_done && strcmp(arg, "--") == 0) {
      options_done = true;
      continue;
    }
    if (!options_done && arg[0] == '-' && arg[1] != '\0') {
      if (strcmp(arg, "-D") == 0 || strcmp(arg, "-o") == 0) {
        if (i + 1 >= argc) return flowc_usage_error("%s needs a value", arg);
        if (arg[1] == 'D') {
          if (parse_define(argv[++i], args)) return FLOWC_USAGE_ERROR;
        } else {
          if (args->output) return flowc_usage_error("-o is given twice");
          args->output = argv[++i];
        }
      } else if (strncmp(arg, "-D", 2) == 0) {
        if (parse_define(arg + 2, args)) return FLOWC_USAGE_ERROR;
      } else if (strncmp(arg, "-o", 2) == 0) {
        if (args->output) return flowc_usage_error("-o is given twice");
        args->output = arg + 2;
      } else {
        bool takes_value = is_value_option(arg, value_options);
        if (args->nextra + (takes_value ? 2 : 1) > FLOWC_MAX_EXTRA)
          return flowc_usage_error("too many options");
        if (takes_value && i + 1 >= argc) return flowc_usage_error("%s needs a value", arg);
        args->extra[args->nextra++] = arg;
        if (takes_value) args->extra[args->nextra++] = argv[++i];
      }
      continue;
    }
    if (args->input)
      return flowc_usage_error("%s: one input file, please (found '%s' and '%s')", args->command,
                               args->input, arg);
    args->input = arg;
  }
  if (!args->input) return flowc_usage_error("%s: missing the input file", args->command);
  return FLOWC_OK;
}

int flowc_no_extra_options(const struct flowc_args *args) {
  if (args->nextra > 0)
    return flowc_usage_error("%s: unknown option '%s'", args->command, args->extra[0]);
  return FLOWC_OK;
}

fl_graph *flowc_load(const struct flowc_args *args) {
  fl_graph *g = fl_frontend_load(args->input, args->defines, args->ndefines);
  if (!g) return NULL;
  if (fl_finish(g) != 0 || fl_error_count() > 0) {
    fl_graph_free(g);
    return NULL;
  }
  return g;
}

FILE *flowc_open_output(const struct flowc_args *args) {
  if (!args->output || strcmp(args->output, "-") == 0) return stdout;
  FILE *out = fopen(args->output, "w");
  if (!out) fprintf(stderr, "flowc: cannot write '%s': %s\n", args->output, strerror(errno));
  return out;
}

int flowc_close_output(const struct flowc_args *args, FILE *out) {
  bool failed = fflush(out) != 0 || ferror(out);
  if (out != stdout) failed = fclose(out) != 0 || failed;
  if (failed) {
    fprintf(stderr, "flowc: cannot write '%s': %s\n", args->output ? args->output : "standard output",
            strerror(errno));
    return FLOWC_USER_ERROR;
  }
  return FLOWC_OK;
}

/* ---- check --------------------------------------------------------------- */

static const char *optimizer_name(fl_optimizer o) {
  switch (o) {
  case FL_OPT_SGD: return "gradient_descent";
  case FL_OPT_MOMENTUM: return "momentum";
  case FL_OPT_ADAM: return "adam";
  }
  return "?";
}

/* Counts the optimizer updates under a train op (a GROUP, possibly of groups). */
static int count_updates(const fl_graph *g, int node, bool *seen, fl_optimizer *kind) {
  if (seen[node]) return 0;
  seen[node] = true;
  const fl_node *n = &g->nodes[node];
  switch (n->op) {
  case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM:
    *kind = n->attr.optimizer;
    if (n->op == FL_OP_APPLY_SGD) *kind = FL_OPT_SGD;
    if (n->op == FL_OP_APPLY_MOMENTUM) *kind = FL_OPT_MOMENTUM;
    if (n->op == FL_OP_APPLY_ADAM) *kind = FL_OPT_ADAM;
    return 1;
  case FL_OP_GROUP: {
    int total = 0;
    for (int i = 0; i < n->ninputs; i++) total += count_updates(g, n->inputs[i], seen, kind);
    return total;
  }
  default:
    return 0;
  }
}

/* The node a name refers to after fl_finish, which may have renumbered nodes. */
static int bound_node(const fl_graph *g, const fe_binding *b) {
  if (b->node < g->nnodes && g->nodes[b->node].name &&
      strcmp(g->nodes[b->node].name, b->node_name) == 0)
    return b->node;
  return fl_graph_find(g, b->node_name);
}

static void print_tensor_list(const fl_graph *g, const fe_bindings *names, FILE *out) {
  int width = 0;
  for (int i = 0; i < names->count; i++) {
    int len = (int)strlen(names->items[i].name);
    if (len > width) width = len;
  }
  for (int i = 0; i < names->count; i++) {
    const fe_binding *b = &names->items[i];
    int node = bound_node(g, b);
    fprintf(out, "%-*s  ", width, b->name);
    if (node < 0) {
      fputs("(removed by the passes)\n", out);
      continue;
    }
    const fl_node *n = &g->nodes[node];
    if (n->op == FL_OP_GROUP || n->op == FL_OP_MINIMIZE) {
      bool *seen = calloc((size_t)g->nnodes, sizeof *seen);
      fl_optimizer kind = n->attr.optimizer;
      int updates = seen ? count_updates(g, node, seen, &kind) : 0;
      free(seen);
      if (n->op == FL_OP_MINIMIZE)
        fprintf(out, "(train op: %s)\n", optimizer_name(kind));
      else
        fprintf(out, "(train op: %s, %d variable%s)\n", optimizer_name(kind), updates,
                updates == 1 ? "" : "s");
      continue;
    }
    char shape[256];
    fprintf(out, "%s%s\n", fl_dtype_name(n->dtype),
            n->shaped ? fl_shape_str(g, &n->shape, shape, sizeof shape) : "[?]");
  }
}

int cmd_check(int argc, char **argv) {
  struct flowc_args args;
  int status = flowc_parse_args(argc, argv, &args, NULL);
  if (status == FLOWC_OK) status = flowc_no_extra_options(&args);
  if (status != FLOWC_OK) return status;
  fe_bindings names;
  fl_graph *g = fe_compile_file(args.input, args.defines, args.ndefines, &names);
  if (!g) return FLOWC_USER_ERROR;
  if (fl_finish(g) != 0 || fl_error_count() > 0) {
    fe_bindings_free(&names);
    fl_graph_free(g);
    return FLOWC_USER_ERROR;
  }
  FILE *out = flowc_open_output(&args);
  if (out) {
    print_tensor_list(g, &names, out);
    status = flowc_close_output(&args, out);
  } else {
    status = FLOWC_USER_ERROR;
  }
  fe_bindings_free(&names);
  fl_graph_free(g);
  return status;
}

/* ---- dump and graph ------------------------------------------------------- */

/* The stages `--after` can stop at: the graph as written and differentiated,
 * after simplification, or the fusion groups of each entry. */
typedef enum { AFTER_AUTODIFF, AFTER_SIMPLIFY, AFTER_FUSION } dump_stage;

static int dump_with(int argc, char **argv, void (*print)(const fl_graph *, FILE *)) {
  static const char *const value_options[] = {"--after", NULL};
  struct flowc_args args;
  int status = flowc_parse_args(argc, argv, &args, value_options);
  if (status != FLOWC_OK) return status;
  dump_stage stage = AFTER_AUTODIFF;
  for (int i = 0; i < args.nextra; i++) {
    if (strcmp(args.extra[i], "--after") != 0 || i + 1 >= args.nextra)
      return flowc_usage_error("%s: unknown option '%s'", args.command, args.extra[i]);
    const char *what = args.extra[++i];
    if (strcmp(what, "autodiff") == 0) stage = AFTER_AUTODIFF;
    else if (strcmp(what, "simplify") == 0) stage = AFTER_SIMPLIFY;
    else if (strcmp(what, "fusion") == 0 && print == fl_dump) stage = AFTER_FUSION;
    else
      return flowc_usage_error("%s: --after takes autodiff, simplify%s; found '%s'", args.command,
                               print == fl_dump ? " or fusion" : "", what);
  }
  fl_graph *g = flowc_load(&args);
  if (!g) return FLOWC_USER_ERROR;
  if (stage >= AFTER_SIMPLIFY) fl_simplify(g);
  FILE *out = flowc_open_output(&args);
  if (out) {
    if (stage == AFTER_FUSION) status = fl_dump_fusion(g, out) ? FLOWC_USER_ERROR : FLOWC_OK;
    else print(g, out);
    int closed = flowc_close_output(&args, out);
    if (status == FLOWC_OK) status = closed;
  } else {
    status = FLOWC_USER_ERROR;
  }
  fl_graph_free(g);
  return status;
}

int cmd_dump(int argc, char **argv) { return dump_with(argc, argv, fl_dump); }
int cmd_graph(int argc, char **argv) { return dump_with(argc, argv, fl_dump_dot); }

/* ---- dispatch -------------------------------------------------------------- */

int main(int argc, char **argv) {
  /* The command is the first argument that is neither an option nor an
   * option's value, so -D and -o may come before it. */
  int at = -1;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      print_help(stdout);
      return FLOWC_OK;
    }
    if (strcmp(argv[i], "--version") == 0) {
      printf("flowc %s\n", FLOWC_VERSION);
      return FLOWC_OK;
    }
  }
  for (int i = 1; i < argc && at < 0; i++) {
    if (strcmp(argv[i], "-D") == 0 || strcmp(argv[i], "-o") == 0) i++;
    else if (argv[i][0] != '-' || argv[i][1] == '\0') at = i;
  }
  if (at < 0) return flowc_usage_error("missing a command (check, dump, graph, ...)");
  const struct command *cmd = NULL;
  for (size_t i = 0; i < ncommands; i++)
    if (strcmp(commands[i].name, argv[at]) == 0) cmd = &commands[i];
  if (!cmd) {
    const char *best = NULL;
    for (size_t i = 0; i < ncommands; i++)
      if (fe_edit_distance(argv[at], commands[i].name) <= 2) best = commands[i].name;
    if (best) return flowc_usage_error("unknown command '%s' (did you mean '%s'?)", argv[at], best);
    return flowc_usage_error("unknown command '%s'", argv[at]);
  }
  /* The command sees its name first, then every other argument in order. */
  char **rest = malloc((size_t)argc * sizeof *rest);
  if (!rest) return FLOWC_USER_ERROR;
  int n = 0;
  rest[n++] = argv[at];
  for (int i = 1; i < argc; i++)
    if (i != at) rest[n++] = argv[i];
  int status = cmd->run(n, rest);
  free(rest);
  fl_diag_reset();
  return status;
}
