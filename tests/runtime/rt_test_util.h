/* rt_test_util.h - helpers shared by the runtime tests: temp dirs, files, synthetic IDX data. */
#ifndef RT_TEST_UTIL_H
#define RT_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* A fresh directory under $TMPDIR (or /tmp); malloc'd path. */
char *rtt_make_temp_dir(void);
/* rm -rf dir (only what the tests created there). */
void rtt_remove_tree(const char *dir);
/* malloc'd dir + "/" + name. */
char *rtt_path(const char *dir, const char *name);

void rtt_write_file(const char *path, const void *data, size_t len);
/* malloc'd contents; *len set. */
unsigned char *rtt_read_file(const char *path, size_t *len);

/* An IDX file: big-endian magic and dims, then the bytes; gzipped through
 * zlib when gz is nonzero. */
void rtt_write_idx(const char *path, int gz, uint32_t magic, const uint32_t *dims, int ndims,
                   const unsigned char *data, size_t len);

/* Example i's pixel j and label, as written by rtt_write_mnist_dir. */
unsigned char rtt_pixel(int64_t i, int64_t j, int test_split);
unsigned char rtt_label(int64_t i, int test_split);

/* The four standard files in dir, n_train and n_test images of rows x cols:
 * gzipped under the .gz names when gz is nonzero, else plain under the names
 * without .gz. */
void rtt_write_mnist_dir(const char *dir, int gz, int64_t n_train, int64_t n_test, int rows,
                         int cols);

/* A Python interpreter for which `PYTHON -c code` exits 0: "python3" from
 * PATH, else the system's /usr/bin/python3 (a pyenv python3 first in PATH may
 * lack numpy where Debian's has it); NULL when neither can run the code. */
const char *rtt_python_for(const char *code);

#endif
