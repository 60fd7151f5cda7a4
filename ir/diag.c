/* diag.c - error messages that quote the source line with a caret, chibicc style. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

typedef struct {
  char *path;
  char *text;
  size_t len;
} source_file;

static source_file *diag_sources; /* index 0 is unused: file id 0 means "nowhere" */
static int diag_nsources;
static int diag_errors;
static FILE *diag_stream;

int fl_source_add(const char *path, const char *text, size_t len) {
  if (diag_nsources == 0) {
    diag_sources = calloc(1, sizeof *diag_sources);
    if (!diag_sources) abort();
    diag_nsources = 1;
  }
  source_file *grown = realloc(diag_sources, (size_t)(diag_nsources + 1) * sizeof *grown);
  if (!grown) abort();
  diag_sources = grown;
  source_file *f = &diag_sources[diag_nsources];
  f->path = strdup(path ? path : "<input>");
  f->text = malloc(len + 1);
  if (!f->path || !f->text) abort();
  memcpy(f->text, text, len);
  f->text[len] = '\0';
  f->len = len;
  return diag_nsources++;
}

const char *fl_source_path(int file) {
  if (file <= 0 || file >= diag_nsources) return "<unknown>";
  return diag_sources[file].path;
}

void fl_diag_set_stream(FILE *stream) { diag_stream = stream; }

void fl_diag_reset(void) {
  for (int i = 1; i < diag_nsources; i++) {
    free(diag_sources[i].path);
    free(diag_sources[i].text);
  }
  free(diag_sources);
  diag_sources = NULL;
  diag_nsources = 0;
  diag_errors = 0;
}

int fl_error_count(void) { return diag_errors; }

/* Prints the line of `loc` with non-printable bytes shown as '?', so that binary
 * garbage in a source file cannot mangle the terminal, and a caret under it. */
static void quote_line(FILE *out, fl_loc loc) {
  if (loc.file <= 0 || loc.file >= diag_nsources || loc.line <= 0) return;
  const source_file *f = &diag_sources[loc.file];
  const char *p = f->text, *end = f->text + f->len;
  for (int line = 1; line < loc.line && p < end; p++)
    if (*p == '\n') line++;
  const char *eol = p;
  while (eol < end && *eol != '\n') eol++;
  size_t width = (size_t)(eol - p);
  if (width > 200) width = 200; /* a minified or binary line: show its start */
  fputs("  ", out);
  for (size_t i = 0; i < width; i++) {
    unsigned char c = (unsigned char)p[i];
    fputc(c == '\t' ? ' ' : (c < 32 || c >= 127) ? '?' : c, out);
  }
  fputs("\n  ", out);
  int col = loc.col < 1 ? 1 : loc.col;
  for (int i = 1; i < col && (size_t)i <= width; i++) fputc(' ', out);
  int len = loc.len < 1 ? 1 : loc.len;
  if (len > 80) len = 80;
  fputc('^', out);
  for (int i = 1; i < len; i++) fputc('~', out);
  fputc('\n', out);
}

static void report(fl_loc loc, const char *kind, const char *fmt, va_list ap) {
  FILE *out = diag_stream ? diag_stream : stderr;
  if (loc.file > 0 && loc.file < diag_nsources)
    fprintf(out, "%s:%d:%d: %s: ", diag_sources[loc.file].path, loc.line, loc.col, kind);
  else
    fprintf(out, "flowc: %s: ", kind);
  vfprintf(out, fmt, ap);
  fputc('\n', out);
  quote_line(out, loc);
  fflush(out);
}

void fl_error(fl_loc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report(loc, "error", fmt, ap);
  va_end(ap);
  diag_errors++;
}

void fl_note(fl_loc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report(loc, "note", fmt, ap);
  va_end(ap);
}
