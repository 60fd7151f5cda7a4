/* codegen.h - back ends: a finished IR graph becomes source files. */
#ifndef FLOWC_CODEGEN_H
#define FLOWC_CODEGEN_H

#include "ir.h"

typedef struct {
  const char *name;        /* C prefix of the generated API ("mnist_softmax") */
  const char *source_path; /* the description, named in comments */
  bool with_main;          /* also write main.c: the training executable */
  bool no_fuse;            /* one kernel per node: the reference for fused code */
  FILE *report;            /* when set: arena, variable and peak bytes are written here */
} fl_codegen_options;

/* Writes NAME.h, NAME.c and (with_main) main.c into dir, which must exist.
 * Returns 0, or -1 after reporting an error through fl_error. */
int fl_emit_c(const fl_graph *g, const char *dir, const fl_codegen_options *opt);

/* Prints each entry the train block asks for, with its fusion groups in run
 * order (flowc dump --after fusion). */
int fl_dump_fusion(const fl_graph *g, FILE *out);

/* A C identifier made from `text` (letters, digits, '_'; '/' becomes '_'). */
void fl_c_identifier(const char *text, char *out, size_t cap);

#endif
