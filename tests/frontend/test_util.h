/* test_util.h - helpers the front-end tests share: capture diagnostics, compile text. */
#ifndef FLOWC_TEST_FRONTEND_UTIL_H
#define FLOWC_TEST_FRONTEND_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front_internal.h"

/* Diagnostics go to a memstream while a test runs; diag_text() reads them. */
typedef struct {
  FILE *stream;
  char *buf;
  size_t len;
} diag_capture;

static inline void capture_begin(diag_capture *c) {
  fl_diag_reset();
  c->buf = NULL;
  c->len = 0;
  c->stream = open_memstream(&c->buf, &c->len);
  fl_diag_set_stream(c->stream);
}

static inline const char *capture_text(diag_capture *c) {
  fflush(c->stream);
  return c->buf ? c->buf : "";
}

static inline void capture_end(diag_capture *c) {
  fl_diag_set_stream(NULL);
  fclose(c->stream);
  free(c->buf);
  c->buf = NULL;
  fl_diag_reset();
}

/* Compiles source text named "t.flow"; NULL on errors (see the capture). */
static inline fl_graph *compile(const char *text) {
  return fl_frontend_parse("t.flow", text, strlen(text), NULL, 0);
}

/* The node a user name refers to, or -1. */
static inline int named(const fl_graph *g, const char *name) { return fl_graph_find(g, name); }

#endif
