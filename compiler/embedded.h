/* embedded.h - the runtime sources carried inside the flowc binary. */
#ifndef FLOWC_EMBEDDED_H
#define FLOWC_EMBEDDED_H

#include <stddef.h>

typedef struct {
  const char *name; /* file name as written next to the model ("flrt_rng.c") */
  const char *text;
  size_t len;
} fl_embedded_file;

extern const fl_embedded_file fl_runtime_files[];
extern const int fl_runtime_file_count;

#endif
