/* frontend.c - the front end's entry points: read a file, lex, parse, lower. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "front_internal.h"

fl_graph *fe_compile_text(const char *path, const char *text, size_t len,
                          const fl_define *defines, int ndefines, fe_bindings *names) {
  if (names) memset(names, 0, sizeof *names);
  int file = fl_source_add(path, text ? text : "", text ? len : 0);
  fe_arena arena = {0};
  fe_token *tokens;
  fe_program program;
  fl_graph *g = NULL;
  int ntokens = fe_lex(&arena, file, text ? text : "", text ? len : 0, &tokens);
  if (ntokens >= 0 && fe_parse(&arena, tokens, ntokens, &program) == 0)
    g = fe_lower(&program, defines, ndefines, names);
  fe_arena_free(&arena);
  return g;
}

fl_graph *fe_compile_file(const char *path, const fl_define *defines, int ndefines,
                          fe_bindings *names) {
  if (names) memset(names, 0, sizeof *names);
  FILE *f = fopen(path, "rb");
  if (!f) {
    fl_error((fl_loc){0}, "cannot read '%s': %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 1 << 16, len = 0;
  char *text = malloc(cap);
  for (;;) {
    if (!text) {
      fclose(f);
      fl_error((fl_loc){0}, "cannot read '%s': out of memory", path);
      return NULL;
    }
    len += fread(text + len, 1, cap - len, f);
    if (len < cap) break;
    char *grown = realloc(text, cap * 2);
    if (!grown) free(text);
    text = grown;
    cap *= 2;
  }
  int failed = ferror(f);
  int saved_errno = errno;
  fclose(f);
  if (failed) {
    free(text);
    fl_error((fl_loc){0}, "cannot read '%s': %s", path, strerror(saved_errno));
    return NULL;
  }
  fl_graph *g = fe_compile_text(path, text, len, defines, ndefines, names);
  free(text);
  return g;
}

fl_graph *fl_frontend_parse(const char *path, const char *text, size_t len,
                            const fl_define *defines, int ndefines) {
  return fe_compile_text(path, text, len, defines, ndefines, NULL);
}

fl_graph *fl_frontend_load(const char *path, const fl_define *defines, int ndefines) {
  return fe_compile_file(path, defines, ndefines, NULL);
}
