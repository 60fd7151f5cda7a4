/* test_error_corpus.c - each tests/errors/NNN-name.flow fails with the message and location its first line expects. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <unistd.h>

#include "test_util.h"

/* Reads "# expect: LINE:COL: MESSAGE" from the first line of a corpus file. */
static bool read_expectation(const char *path, int *line, int *col, char *message, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  char first[1024];
  bool ok = fgets(first, sizeof first, f) != NULL;
  fclose(f);
  if (!ok) return false;
  first[strcspn(first, "\n")] = '\0';
  int used = 0;
  if (sscanf(first, "# expect: %d:%d: %n", line, col, &used) != 2 || used == 0) return false;
  snprintf(message, cap, "%s", first + used);
  return message[0] != '\0';
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The corpus files, sorted; returns how many. */
static int list_corpus(const char *dir, char ***out) {
  DIR *d = opendir(dir);
  cr_assert(d, "cannot open %s", dir);
  char **names = NULL;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t len = strlen(e->d_name);
    if (len < 6 || strcmp(e->d_name + len - 5, ".flow") != 0) continue;
    names = realloc(names, (size_t)(n + 1) * sizeof *names);
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, (size_t)n, sizeof *names, compare_names);
  *out = names;
  return n;
}

static void check_one(const char *dir, const char *name) {
  char path[8400];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int line, col;
  char message[1024];
  cr_assert(read_expectation(path, &line, &col, message, sizeof message),
            "%s: the first line must be '# expect: LINE:COL: MESSAGE'", name);
  diag_capture diag;
  capture_begin(&diag);
  fl_graph *g = fl_frontend_load(path, NULL, 0);
  int finished = g ? fl_finish(g) : -1;
  fl_graph_free(g);
  const char *out = capture_text(&diag);
  cr_expect(finished != 0 && fl_error_count() > 0, "%s: no error was reported", name);
  char want_prefix[8600];
  snprintf(want_prefix, sizeof want_prefix, "%s:%d:%d: error: ", path, line, col);
  cr_expect(strncmp(out, want_prefix, strlen(want_prefix)) == 0,
            "%s: the first message should start with '%s', got:\n%s", name, want_prefix, out);
  const char *eol = strchr(out, '\n');
  size_t first_len = eol ? (size_t)(eol - out) : strlen(out);
  char *first = strndup(out, first_len);
  cr_expect(strstr(first, message), "%s: want '%s' in the first message, got:\n%s", name, message, first);
  free(first);
  /* The source line is quoted and a caret marks the place. */
  const char *quote = eol ? eol + 1 : "";
  cr_expect(strncmp(quote, "  ", 2) == 0, "%s: no quoted source line:\n%s", name, out);
  const char *caret_line = strchr(quote, '\n');
  cr_expect(caret_line && strncmp(caret_line + 1, "  ", 2) == 0 &&
                caret_line[1 + strspn(caret_line + 1, " ")] == '^',
            "%s: no caret under the quoted line:\n%s", name, out);
  if (caret_line && col <= 200)
    cr_expect_eq((int)strspn(caret_line + 1, " "), 2 + col - 1, "%s: the caret is not under column %d:\n%s",
                 name, col, out);
  capture_end(&diag);
}

Test(error_corpus, every_file_fails_as_expected) {
  const char *root = getenv("FLOWC_SOURCE_ROOT");
  cr_assert(root, "FLOWC_SOURCE_ROOT is not set (run the tests with meson test)");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/tests/errors", root);
  char **names;
  int n = list_corpus(dir, &names);
  cr_expect_geq(n, 45, "the corpus has only %d files", n);
  for (int i = 0; i < n; i++) {
    check_one(dir, names[i]);
    free(names[i]);
  }
  free(names);
}

/* Every byte value that is not part of the language, written to a file by the
 * test itself: each is reported where it stands, none crashes the front end. */
Test(error_corpus, generated_binary_garbage) {
  char path[] = "/tmp/flowc-garbage-XXXXXX";
  int fd = mkstemp(path);
  cr_assert_geq(fd, 0);
  FILE *f = fdopen(fd, "wb");
  fputs("x = 1\n", f);
  for (int b = 0; b < 256; b++)
    if ((b < 32 && b != '\n' && b != '\t' && b != '\r') || b >= 128) fputc(b, f);
  fputc('\n', f);
  fclose(f);
  diag_capture diag;
  capture_begin(&diag);
  fl_graph *g = fl_frontend_load(path, NULL, 0);
  cr_expect_null(g);
  char want[256];
  snprintf(want, sizeof want, "%s:2:1: error: unexpected character '\\x00'", path);
  cr_expect(strncmp(capture_text(&diag), want, strlen(want)) == 0, "%s", capture_text(&diag));
  capture_end(&diag);
  unlink(path);
}

Test(error_corpus, missing_file) {
  diag_capture diag;
  capture_begin(&diag);
  cr_expect_null(fl_frontend_load("/nonexistent/x.flow", NULL, 0));
  cr_expect(strstr(capture_text(&diag), "cannot read '/nonexistent/x.flow': No such file or directory"),
            "%s", capture_text(&diag));
  capture_end(&diag);
}
