/* build.h - from a finished graph to program sources (flowc emit) and an executable (flowc build). */
#ifndef FLOWC_BUILD_H
#define FLOWC_BUILD_H

#include "ir.h"

typedef struct {
  const char *source_path; /* the description, for comments and messages */
  const char *name;        /* the model's C prefix; NULL: from the description's file name */
  const char *output;      /* the executable (build) or the folder (emit) */
  const char *cc;          /* C compiler; NULL: $CC or "cc" */
  bool keep;               /* build: keep the generated sources (printed) */
  bool verbose;            /* print the compiler command */
  bool unoptimized;        /* -O0: no simplification, one kernel per node */
  bool report;             /* --report: print arena, variable and peak memory */
  bool cuda;               /* --device cuda: the program trains on an NVIDIA GPU */
  bool nvcc;               /* --nvcc: its kernels compiled ahead of time by nvcc */
} fl_build_request;

/* The default model name: the description's base name as a C identifier. */
void fl_model_name(const char *source_path, char *buf, size_t cap);

/* Writes the model, main.c, the runtime and a Makefile into dir (created if missing). */
int fl_emit_program(const fl_graph *g, const fl_build_request *req, const char *dir);

/* Emits into a temporary folder and compiles the training executable req->output.
 * A missing compiler, header or library is named with the Debian package that
 * provides it. */
int fl_build_program(const fl_graph *g, const fl_build_request *req);

/* The same for --device cuda (build_cuda.c): the CUDA host code, kernels and
 * runtime; build compiles against the CUDA toolkit ($CUDA_HOME, else
 * /usr/local/cuda) and names what is missing. */
int fl_emit_cuda_program(const fl_graph *g, const fl_build_request *req, const char *dir);
int fl_build_cuda_program(const fl_graph *g, const fl_build_request *req);

#endif
