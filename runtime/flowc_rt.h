/* flowc_rt.h - the runtime that generated flowc programs link: RNG, MNIST data
 * sets and batching, safetensors checkpoints, the training driver's flags,
 * timing and Ctrl-C handling.
 *
 * C99, dependency-light (libc, libm, zlib; libcurl only for --download).
 * flowc copies the runtime's .c files and this header next to the code it generates, so
 * the generated program is self-contained. Public names carry flrt_.
 * Functions that can fail return 0 on success and -1 on failure, after writing
 * a one-line message (no trailing newline) into err.
 */
#ifndef FLOWC_RT_H
#define FLOWC_RT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ---- Philox 4x32-10 counter-based RNG -----------------------------------
 * Every random number is a pure function of (seed, stream, index): the same
 * seed gives the same variables and dropout masks on every machine, CPU or
 * GPU, with any number of threads. */

void flrt_philox4x32(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);
/* Uniform float in [0, 1) for element `index` of `stream` under `seed`.
 * counter = (index lo, index hi, stream, 0), key = (seed lo, seed hi). */
float flrt_uniform(uint64_t seed, uint32_t stream, uint64_t index);
/* Fills dst[0..n) with uniform values in [lo, hi). */
void flrt_fill_uniform(float *dst, size_t n, float lo, float hi, uint64_t seed, uint32_t stream);
/* Normal(mean, stddev) by Box-Muller over pairs of uniforms. */
void flrt_fill_normal(float *dst, size_t n, float mean, float stddev, uint64_t seed, uint32_t stream);
/* Like TensorFlow's truncated_normal: values beyond 2 stddev are redrawn. */
void flrt_fill_truncated_normal(float *dst, size_t n, float mean, float stddev, uint64_t seed,
                                uint32_t stream);
/* Dropout mask: element i is 1/keep_prob with probability keep_prob, else 0
 * (all 0 when keep_prob <= 0). `run` distinguishes successive runs (the
 * model's run counter). */
void flrt_dropout_mask(float *dst, size_t n, float keep_prob, uint64_t seed, uint32_t stream,
                       uint64_t run);
/* The exact layout, which GPU code must reproduce (rng.c has the details):
 * element i of uniform and normal uses counter (i lo, i hi, stream, 0); normal
 * takes Box-Muller's cosine half of words 0-1; truncated normal's retry k
 * uses word3 = k and takes the first of its four candidates within 2 stddev;
 * dropout uses word3 = run lo, with run hi xor-ed into the seed's high word. */

/* ---- MNIST-style data sets (IDX files, gzip or plain) --------------------- */

typedef struct {
  int64_t n;        /* examples */
  int64_t features; /* 784 for 28x28 */
  int classes;      /* 10 */
  uint8_t *pixels;  /* n x features bytes as in the IDX file; batches hand them
                       out as floats byte/255 in [0, 1], so a data set takes a
                       quarter of the memory it would as floats */
  uint8_t *labels;  /* n */
} flrt_split;

typedef struct {
  flrt_split train, validation, test;
} flrt_datasets;

/* Reads the four standard files from dir (NULL: "."): train-images-idx3-ubyte.gz,
 * train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
 * t10k-labels-idx1-ubyte.gz (each also accepted without .gz). The first
 * `validation` training examples become the validation split (as
 * read_data_sets does; clamped so that at least one training example stays).
 * A missing file is named in err with where MNIST is published; a truncated or
 * malformed file is refused with its name and what was wrong. */
int flrt_read_data_sets(const char *dir, int64_t validation, flrt_datasets *out, char *err,
                        size_t errlen);
void flrt_free_data_sets(flrt_datasets *d);

/* Downloads the four files from base_url (base_url + "/" + file name) into dir
 * with libcurl, each to a temporary name renamed when complete. dir is
 * created if missing; files already in it are kept, not fetched again. Built
 * with -DFLRT_HAVE_CURL=0 it links without libcurl and always fails. */
int flrt_download_mnist(const char *base_url, const char *dir, char *err, size_t errlen);

/* next_batch semantics of the tutorials' loader: walks a shuffled permutation
 * of the split; a batch that crosses the end of an epoch takes the rest of
 * this epoch, reshuffles, and continues in the next. Shuffles are a pure
 * function of (seed, epoch), so a run resumed after `consumed` examples sees
 * the same batches as an uninterrupted one. */
typedef struct {
  const flrt_split *split;
  uint64_t seed;
  int64_t *perm;     /* permutation of the current epoch */
  int64_t epoch;     /* epochs started, from 0 */
  int64_t pos;       /* next index into perm */
  int64_t consumed;  /* examples handed out since the start */
} flrt_batcher;

int flrt_batcher_init(flrt_batcher *b, const flrt_split *split, uint64_t seed);
void flrt_batcher_free(flrt_batcher *b);
/* Positions the batcher as if `consumed` examples had been handed out. */
void flrt_batcher_seek(flrt_batcher *b, int64_t consumed);
/* Copies the next `batch` examples: images (batch x features floats) and
 * one-hot labels (batch x classes floats); either may be NULL. The shuffle
 * of epoch e is Fisher-Yates driven by Philox (key seed, stream 0x5EED0001,
 * word3 e; batch.c). */
void flrt_batcher_next(flrt_batcher *b, int64_t batch, float *images, float *onehot);
/* The same walk as flrt_batcher_next, handing out the examples' indices into
 * the split instead of copying them (the CUDA build gathers them on the GPU). */
void flrt_batcher_next_indices(flrt_batcher *b, int64_t batch, int64_t *indices);
/* Copies examples [start, start+count) of a split in order (evaluation). */
void flrt_split_slice(const flrt_split *s, int64_t start, int64_t count, float *images,
                      float *onehot);

/* ---- checkpoints in the safetensors format ------------------------------- */

typedef enum { FLRT_F32, FLRT_I32, FLRT_I64, FLRT_BOOL } flrt_dtype;

typedef struct {
  const char *name;
  flrt_dtype dtype;
  int rank;
  int64_t dims[8];
  void *data; /* nbytes = product(dims) * size of dtype */
} flrt_tensor;

/* Writes the tensors (names unique; data laid out in the order given) plus
 * string metadata
 * (`__metadata__`, pairs keys[i] = values[i]) to path + ".tmp", fsyncs it,
 * renames it over path, and fsyncs the directory: a crash at any point leaves
 * either the old file or the new one, never a damaged one. */
int flrt_checkpoint_save(const char *path, const flrt_tensor *tensors, int ntensors,
                         const char *const *meta_keys, const char *const *meta_values, int nmeta,
                         char *err, size_t errlen);

/* Reads path and fills each given tensor's data from the tensor of the same
 * name, which must exist with the same dtype and shape; the file's size must
 * match its header exactly (a truncated or padded file is refused), and every
 * data range must lie inside the file without overlaps. Metadata value for
 * meta_key is copied into meta_value (may be NULL): "" when the key is
 * absent, refused when it does not fit in meta_cap. The messages name the
 * tensor and the difference. All checks pass before any tensor is written,
 * so a refused load leaves the tensors as they were. */
int flrt_checkpoint_load(const char *path, flrt_tensor *tensors, int ntensors,
                         const char *meta_key, char *meta_value, size_t meta_cap, char *err,
                         size_t errlen);

/* ---- the training driver's options --------------------------------------- */

typedef struct {
  const char *data_dir;
  const char *download_url; /* --download URL, or NULL */
  int64_t steps;
  int64_t batch;
  int64_t validation;      /* --validation N: examples held out of training */
  uint64_t seed;
  const char *save_path;   /* --save FILE, or NULL */
  int64_t save_every;      /* --save-every K (0 = only at the end) */
  const char *resume_path; /* --resume FILE, or NULL */
  int64_t log_every;       /* --log-every K (0 = never) */
  int threads;             /* --threads N (0 = library default) */
  bool quiet;              /* --quiet: no progress lines */
} flrt_options;

/* Parses the driver's flags over the defaults already in opt. --help prints
 * the usage (with `about`, the model's one-line description, and the defaults)
 * and exits 0; a bad flag or value prints what was wrong and the usage line
 * to stderr and exits 2. */
void flrt_parse_options(int argc, char **argv, const char *about, flrt_options *opt);
/* What flrt_parse_options does short of printing and exiting: returns 0 with
 * opt updated, 1 when --help (or -h) was asked for, or -1 with the problem in
 * err (e.g. "--steps: expected a non-negative integer, found 'abc'"); opt is
 * left unchanged unless it returns 0. String fields point into argv. */
int flrt_parse_options_err(int argc, char **argv, flrt_options *opt, char *err, size_t errlen);

/* Milliseconds from a monotonic clock. */
double flrt_now_ms(void);
/* Makes SIGINT/SIGTERM set a flag instead of killing the process; a second
 * Ctrl-C kills it. */
void flrt_install_interrupt_handler(void);
bool flrt_interrupted(void);
/* Re-executes the program with OPENBLAS_CORETYPE set when OpenBLAS fell back
 * to its generic kernels on a CPU with AVX2 or AVX-512 (a VM that hides the
 * CPU model). Call first thing in main; returns when nothing needs doing. */
void flrt_select_blas_kernels(char **argv);
/* Sets the thread count of OpenBLAS and of the OpenMP loops in generated code
 * and in these kernels; n <= 0 keeps the libraries' defaults. The loops use
 * one thread when OpenBLAS is not its OpenMP build: a pthreads OpenBLAS keeps
 * its own threads spinning between calls, and the two would fight over the
 * cores. Compiled with -DFLRT_NO_BLAS or -DFLRT_NO_OPENBLAS it needs no
 * OpenBLAS to link. */
void flrt_set_threads(int n);
/* Floats below the normal range become 0, in results and in inputs, on this
 * thread and the OpenMP team's (x86; elsewhere nothing), as TensorFlow does
 * on the CPU: denormal arithmetic is some hundred times slower there. Call
 * after flrt_set_threads. */
void flrt_flush_denormals(void);

/* ---- threads ---------------------------------------------------------------
 * FLRT_OMP(omp parallel for ...) is an OpenMP directive in a program built
 * with -fopenmp and nothing otherwise (no unknown-pragma warnings). */
#ifdef _OPENMP
#include <omp.h>
#define FLRT_OMP(directive) _Pragma(#directive)
#else
#define FLRT_OMP(directive)
#endif
/* FLRT_PARALLEL_LOOP(n, for (...) ...); runs a loop over n independent
 * elements on OpenMP's threads from FLRT_PARALLEL_MIN elements on, and as a
 * plain loop below, where waking the other threads costs more than they
 * save. The loop is an argument, expanded twice, because an `if` clause on
 * the directive would still make a one-thread team: 0.3 us a loop, a tenth
 * of the glue around a softmax regression step's two small GEMMs. */
#define FLRT_PARALLEL_MIN 32768
#define FLRT_PARALLEL_LOOP(n, ...) FLRT_PARALLEL_LOOP_FROM(FLRT_PARALLEL_MIN, n, __VA_ARGS__)
/* The same for loops over rows that compute an exponential for each of
 * their n elements in all (a softmax): some 20 cycles an element, against
 * one for the loops above, so threads pay from far fewer. */
#define FLRT_PARALLEL_EXP_MIN 512
#define FLRT_PARALLEL_LOOP_EXP(n, ...) FLRT_PARALLEL_LOOP_FROM(FLRT_PARALLEL_EXP_MIN, n, __VA_ARGS__)
#ifdef _OPENMP
#define FLRT_PARALLEL_LOOP_FROM(min, n, ...)                        \
  do {                                                              \
    if ((n) >= (min)) {                                             \
      _Pragma("omp parallel for schedule(static)") __VA_ARGS__      \
    } else {                                                        \
      __VA_ARGS__                                                   \
    }                                                               \
  } while (0)
#else
#define FLRT_PARALLEL_LOOP_FROM(min, n, ...) \
  do {                                       \
    __VA_ARGS__                              \
  } while (0)
#endif

/* ---- kernels the generated code calls (runtime/kernels.c) -----------------
 * Shapes follow TensorFlow: images NHWC, filters HWIO. pad_top/pad_left are
 * the zero rows/columns before the image (SAME padding puts the odd one
 * after). out_h/out_w are the output's spatial size. */

/* C (m x n) = op(A) (m x k) @ op(B) (k x n), row-major with leading
 * dimensions lda, ldb, ldc; op(A) is A^T when trans_a (A then stored k x m),
 * likewise for B. C is overwritten, or added to when accumulate. OpenBLAS's
 * sgemm, its sgemv for a single row or column, flowc's own vector loops for
 * an output at most 16 columns wide (GCC and Clang), or plain loops built
 * with -DFLRT_NO_BLAS. */
void flrt_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
               const float *b, int64_t ldb, float *c, int64_t ldc, bool accumulate);
/* C += alpha op(A) op(B), the same loops: a weight updated in place by
 * gradient descent on its gradient (alpha = -learning rate) as the gradient
 * is computed, without storing it. */
void flrt_gemm_update(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float alpha, float *c, int64_t ldc);

typedef struct {
  int64_t batch, in_h, in_w, in_c; /* input N, H, W, C */
  int64_t k_h, k_w;                /* window */
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_left;
  int64_t out_h, out_w;
} flrt_window;

/* Fills `w` for TensorFlow's SAME (same = true) or VALID padding. */
void flrt_window_init(flrt_window *w, int64_t batch, int64_t in_h, int64_t in_w, int64_t in_c,
                      int64_t k_h, int64_t k_w, int64_t stride_h, int64_t stride_w, bool same);

/* im2col: cols is (batch*out_h*out_w) x (k_h*k_w*in_c), row-major; each row
 * holds one output position's window in (kh, kw, c) order, zeros where the
 * window hangs over the padding. */
void flrt_im2col(const flrt_window *w, const float *x, float *cols);
/* The adjoint: adds each column entry back into dx (dx is zeroed first). */
void flrt_col2im(const flrt_window *w, const float *cols, float *dx);

/* conv2d forward and both gradients: through im2col + sgemm, or a direct
 * convolution (the forward pass of a window of at most 2048 entries,
 * k_h * k_w * in_c, the input gradient of a stride-1 window of at most 2048
 * k_h * k_w * out_c, and the filter gradient of one of at most 64).
 * `cols` is scratch of flrt_conv2d_scratch(w, out_c) floats, which depends on
 * the thread count (OpenMP's, when built with -fopenmp). out_c is the number
 * of filters. A 1x1 stride-1 VALID window needs no scratch and cols may be
 * NULL. Every output (out, dx, dfilter) is overwritten, not accumulated. */
size_t flrt_conv2d_scratch(const flrt_window *w, int64_t out_c);
/* Images per chunk: the batch is split so that each thread gets the same
 * number of chunks and a chunk's im2col matrix is at most about 1 MiB. */
int64_t flrt_conv2d_chunk(const flrt_window *w);
void flrt_conv2d(const flrt_window *w, int64_t out_c, const float *x, const float *filter,
                 float *out, float *cols);
/* conv2d, then out += bias (out_c values) and, when relu, max(out, 0): the
 * epilogue runs on each chunk while its output is still in cache. */
void flrt_conv2d_bias(const flrt_window *w, int64_t out_c, const float *x, const float *filter,
                      const float *bias, bool relu, float *out, float *cols);
void flrt_conv2d_grad_input(const flrt_window *w, int64_t out_c, const float *dy,
                            const float *filter, float *dx, float *cols);
void flrt_conv2d_grad_filter(const flrt_window *w, int64_t out_c, const float *x,
                             const float *dy, float *dfilter, float *cols);

/* out[c] = the sum over rows of in[r][c] (a bias's gradient). Threads sum
 * runs of rows, added in thread order: the result depends on the thread
 * count only. */
void flrt_sum_rows(const float *in, int64_t rows, int64_t cols, float *out);

/* Softmax cross-entropy of each row of logits against its labels (rows x
 * classes, rows laid end to end), and its gradient in one pass over one
 * softmax: loss[r] = -sum_c labels * log softmax(z), grad[r][c] =
 * (softmax(z)[c] - labels[r][c]) * dy[r]. Either output may be NULL (the
 * unfused kernels, which then compute the same bits as the fused one; dy
 * may be NULL with grad). In float, exp and log as polynomials on vectors
 * where GCC and Clang build it. */
void flrt_softmax_xent(int64_t rows, int64_t classes, const float *labels, const float *logits, const float *dy,
                       float *loss, float *grad);

/* max_pool (padding cells never win) and its gradient: each window's dy goes
 * to the first maximum in row-major window order. */
void flrt_max_pool(const flrt_window *w, const float *x, float *out);
void flrt_max_pool_grad(const flrt_window *w, const float *x, const float *dy, float *dx);
/* relu_grad(max_pool_grad(x, dy), x), in one pass: the gradient of a max_pool
 * whose input x is a relu's output, through that relu. */
void flrt_max_pool_grad_relu(const flrt_window *w, const float *x, const float *dy, float *dx);

/* Prints a tensor the way numpy does for small arrays: 0.5, [1 2 3],
 * [[1 2] [3 4]] (%g per value, one line, no newline). Over 1000 elements,
 * only the ends of the flat data: [a b c d e f ... x y z]. */
void flrt_print_tensor(FILE *out, const float *data, int rank, const int64_t *dims);

/* ---- arena ---------------------------------------------------------------- */

typedef struct {
  unsigned char *base;
  size_t cap;
} flrt_arena;

/* Makes the arena at least `bytes` large (64-byte aligned); contents are not
 * kept. Returns 0, or -1 when memory runs out. */
int flrt_arena_reserve(flrt_arena *a, size_t bytes);
/* Places n buffers in one arena so that no two alive at the same time
 * overlap. Buffer i is written by step first[i] and last read by step
 * last[i]; offsets[i] receives its 64-byte aligned offset. Returns the arena
 * size. Generated entries call it once per run, with that run's sizes. */
size_t flrt_plan_arena(const size_t *sizes, const int *first, const int *last, int n,
                       size_t *offsets);
/* Rounds a slice size up to the arena's 64-byte alignment. */
static inline size_t flrt_align(size_t bytes) { return (bytes + 63) & ~(size_t)63; }
void flrt_arena_free(flrt_arena *a);

#endif
