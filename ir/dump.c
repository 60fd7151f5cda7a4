/* dump.c - the IR's stable textual dump and its Graphviz view. */
#include <string.h>

#include "ir.h"

static void print_ints(FILE *out, const char *key, const int *v, int n) {
  fprintf(out, "%s=[", key);
  for (int i = 0; i < n; i++) fprintf(out, "%s%d", i ? ", " : "", v[i]);
  fputc(']', out);
}

/* The attributes that matter for each op, in a fixed order, so that dumps
 * diff cleanly between compiler versions. */
static void print_attrs(const fl_graph *g, const fl_node *n, FILE *out) {
  char shape[160];
  const fl_attrs *a = &n->attr;
  switch (n->op) {
  case FL_OP_VARIABLE:
    fprintf(out, " {init=%%%d%s}", a->init, a->trainable ? "" : ", trainable=false");
    break;
  case FL_OP_FILL:
    fprintf(out, " {value=%g}", a->value);
    break;
  case FL_OP_CONST: {
    int64_t count = fl_shape_const_size(&a->target);
    fputs(" {value=", out);
    if (count == 1) fprintf(out, "%g", a->data ? a->data[0] : 0.0);
    else {
      fputc('[', out);
      for (int64_t i = 0; i < count && i < 8; i++)
        fprintf(out, "%s%g", i ? ", " : "", a->data ? a->data[i] : 0.0);
      fputs(count > 8 ? ", ...]" : "]", out);
    }
    fputc('}', out);
    break;
  }
  case FL_OP_RANDOM_UNIFORM:
    fprintf(out, " {minval=%g, maxval=%g, stream=%d}", a->a, a->b, a->stream);
    break;
  case FL_OP_TRUNCATED_NORMAL: case FL_OP_RANDOM_NORMAL:
    fprintf(out, " {mean=%g, stddev=%g, stream=%d}", a->a, a->b, a->stream);
    break;
  case FL_OP_DROPOUT_MASK:
    fprintf(out, " {stream=%d}", a->stream);
    break;
  case FL_OP_MATMUL:
    if (a->transpose_a || a->transpose_b)
      fprintf(out, " {transpose_a=%d, transpose_b=%d}", a->transpose_a, a->transpose_b);
    break;
  case FL_OP_CONV2D: case FL_OP_CONV2D_GRAD_INPUT: case FL_OP_CONV2D_GRAD_FILTER:
    fputs(" {", out);
    print_ints(out, "strides", a->strides, 2);
    fprintf(out, ", padding=%s}", a->padding == FL_PAD_SAME ? "SAME" : "VALID");
    break;
  case FL_OP_MAX_POOL: case FL_OP_MAX_POOL_GRAD:
    fputs(" {", out);
    print_ints(out, "ksize", a->ksize, 2);
    fputs(", ", out);
    print_ints(out, "strides", a->strides, 2);
    fprintf(out, ", padding=%s}", a->padding == FL_PAD_SAME ? "SAME" : "VALID");
    break;
  case FL_OP_RESHAPE:
    fprintf(out, " {shape=%s}", fl_shape_str(g, &a->target, shape, sizeof shape));
    break;
  case FL_OP_BROADCAST:
    if (a->mean) fputs(" {mean}", out);
    break;
  case FL_OP_REDUCE_SUM: case FL_OP_REDUCE_MEAN: case FL_OP_ARGMAX:
    if (a->naxes) {
      fputs(" {", out);
      print_ints(out, "axes", a->axes, a->naxes);
      fputs(a->keepdims ? ", keepdims}" : "}", out);
    } else if (a->keepdims)
      fputs(" {keepdims}", out);
    break;
  case FL_OP_MINIMIZE: case FL_OP_APPLY_SGD: case FL_OP_APPLY_MOMENTUM: case FL_OP_APPLY_ADAM: {
    static const char *const names[] = {"gradient_descent", "momentum", "adam"};
    fprintf(out, " {%s, lr=%g", names[a->optimizer], a->lr);
    if (a->optimizer == FL_OPT_MOMENTUM) fprintf(out, ", momentum=%g", a->momentum);
    if (a->optimizer == FL_OPT_ADAM)
      fprintf(out, ", beta1=%g, beta2=%g, epsilon=%g", a->beta1, a->beta2, a->epsilon);
    fputc('}', out);
    break;
  }
  default:
    break;
  }
}

void fl_dump(const fl_graph *g, FILE *out) {
  char shape[160];
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    fprintf(out, "%%%d = %s(", n->id, fl_op_name(n->op));
    for (int j = 0; j < n->ninputs; j++) fprintf(out, "%s%%%d", j ? ", " : "", n->inputs[j]);
    fputc(')', out);
    print_attrs(g, n, out);
    if (n->op != FL_OP_GROUP && n->op != FL_OP_MINIMIZE)
      fprintf(out, " : %s%s", fl_dtype_name(n->dtype),
              n->shaped ? fl_shape_str(g, &n->shape, shape, sizeof shape) : "[?]");
    if (n->name) fprintf(out, "  # %s", n->name);
    if (n->loc.file > 0)
      fprintf(out, "  (%s:%d:%d)", fl_source_path(n->loc.file), n->loc.line, n->loc.col);
    fputc('\n', out);
  }
}

/* Escapes a label for a double-quoted dot string. */
static void dot_text(FILE *out, const char *s) {
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') fputc('\\', out);
    fputc(*s, out);
  }
}

void fl_dump_dot(const fl_graph *g, FILE *out) {
  char shape[160];
  fputs("digraph flowc {\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n",
        out);
  for (int i = 0; i < g->nnodes; i++) {
    const fl_node *n = &g->nodes[i];
    const char *style = "";
    if (n->op == FL_OP_VARIABLE) style = ", style=filled, fillcolor=\"#fde9c9\"";
    else if (n->op == FL_OP_PLACEHOLDER) style = ", style=filled, fillcolor=\"#d7e8fb\"";
    else if (fl_op_has_side_effect(n->op)) style = ", style=filled, fillcolor=\"#f6d2d2\"";
    fprintf(out, "  n%d [label=\"", n->id);
    if (n->name) {
      dot_text(out, n->name);
      fputs("\\n", out);
    }
    fprintf(out, "%s", fl_op_name(n->op));
    if (n->shaped && n->op != FL_OP_GROUP && n->op != FL_OP_MINIMIZE) {
      fprintf(out, "\\n%s", fl_dtype_name(n->dtype));
      dot_text(out, fl_shape_str(g, &n->shape, shape, sizeof shape));
    }
    fprintf(out, "\"%s];\n", style);
    for (int j = 0; j < n->ninputs; j++) fprintf(out, "  n%d -> n%d;\n", n->inputs[j], n->id);
    if (n->op == FL_OP_VARIABLE && n->attr.init >= 0)
      fprintf(out, "  n%d -> n%d [style=dashed, label=\"init\"];\n", n->attr.init, n->id);
  }
  fputs("}\n", out);
}
