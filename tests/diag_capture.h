/* diag_capture.h - tests read the compiler's diagnostics from a memstream:
 * TestSuite(name, .init = capture_start, .fini = capture_stop), then
 * diag_text() in a test. Include after criterion.h and ir.h. */
#ifndef FLOWC_TEST_DIAG_CAPTURE_H
#define FLOWC_TEST_DIAG_CAPTURE_H

#include <stdio.h>
#include <stdlib.h>

static FILE *diag_stream;
static char *diag_buf;
static size_t diag_len;

static void capture_start(void) {
  fl_diag_reset();
  diag_buf = NULL;
  diag_len = 0;
  diag_stream = open_memstream(&diag_buf, &diag_len);
  cr_assert(diag_stream, "open_memstream failed");
  fl_diag_set_stream(diag_stream);
}

static void capture_stop(void) {
  fl_diag_set_stream(NULL);
  if (diag_stream) fclose(diag_stream);
  free(diag_buf);
  diag_stream = NULL;
  diag_buf = NULL;
  fl_diag_reset();
}

static const char *diag_text(void) {
  fflush(diag_stream);
  return diag_buf ? diag_buf : "";
}

#endif
