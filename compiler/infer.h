/* infer.h - flowc build and emit with --infer: inference binaries and C libraries for several targets (infer.c). */
#ifndef FLOWC_INFER_H
#define FLOWC_INFER_H

#include <stdbool.h>

#include "embedded.h"

/* Whether a build or emit command line asks for inference code (--infer). */
bool fl_infer_requested(int argc, char **argv);

/* flowc build|emit FILE --infer ENTRY --weights CKPT [--target T] ... argv[0]
 * is the command's name. Returns a FLOWC_* exit status. */
int cmd_infer(int argc, char **argv, bool is_build);

/* The support files flowc writes beside inference code (the files in
 * runtime/infer/), embedded by tools/embed.c --table fl_infer. */
extern const fl_embedded_file fl_infer_files[];
extern const int fl_infer_file_count;

#endif
