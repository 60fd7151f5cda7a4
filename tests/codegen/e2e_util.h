/* e2e_util.h - helpers for end-to-end tests: build programs with flowc, run them. */
#ifndef FLOWC_E2E_UTIL_H
#define FLOWC_E2E_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* FLOWC_SOURCE_ROOT / FLOWC_BUILD_ROOT from the test environment. */
const char *e2e_source_root(void);
const char *e2e_build_root(void);
/* A fresh scratch folder for this test (under the build root). */
const char *e2e_scratch(const char *name);
/* Runs a shell command; its stdout+stderr goes into *output (malloc'd, may be
 * NULL). Returns the exit status (or 128+signal). */
int e2e_run(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Compiles examples/NAME.flow (or a path) into dir/NAME with flowc build and
 * extra flowc arguments; asserts success. Returns the program's path. */
const char *e2e_build(const char *dir, const char *flow, const char *program, const char *extra);
/* The real-digits data folder, or NULL when it is not beside the checkout. */
const char *e2e_digits_dir(void);
/* Fashion-MNIST from Debian's package, or NULL when not installed. */
const char *e2e_fashion_dir(void);
/* The last "test accuracy X" in output, or -1. */
double e2e_test_accuracy(const char *output);
bool e2e_files_equal(const char *a, const char *b);

#endif
