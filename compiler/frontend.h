/* frontend.h - the front end: .flow source text to an IR graph. */
#ifndef FLOWC_FRONTEND_H
#define FLOWC_FRONTEND_H

#include "ir.h"

/* A compile-time override of a top-level numeric assignment (flowc -D lr=0.1). */
typedef struct {
  const char *name;
  double value;
} fl_define;

/* Reads, parses and lowers a description into a graph whose shapes are not yet
 * inferred (run fl_finish next). Returns NULL after reporting errors through
 * fl_error; never crashes on any input. */
fl_graph *fl_frontend_load(const char *path, const fl_define *defines, int ndefines);
fl_graph *fl_frontend_parse(const char *path, const char *text, size_t len,
                            const fl_define *defines, int ndefines);

#endif
