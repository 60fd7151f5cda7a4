/* test_kernels.c - runtime/kernels.c against naive double-precision references. */
#include <criterion/criterion.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flowc_rt.h"

/* ---- helpers ------------------------------------------------------------- */

/* A small LCG so that the data is the same on every machine and run. */
static uint32_t lcg_state;
static float rnd(void) {
  lcg_state = lcg_state * 1664525u + 1013904223u;
  return (float)(lcg_state >> 8) / 16777216.0f * 2.0f - 1.0f; /* [-1, 1) */
}
static float *random_floats(size_t n) {
  float *p = malloc((n ? n : 1) * sizeof *p);
  cr_assert(p != NULL);
  for (size_t i = 0; i < n; i++) p[i] = rnd();
  return p;
}

static size_t image_size(const flrt_window *w) {
  return (size_t)(w->batch * w->in_h * w->in_w * w->in_c);
}
static size_t out_size(const flrt_window *w, int64_t c) {
  return (size_t)(w->batch * w->out_h * w->out_w * c);
}
static size_t filter_size(const flrt_window *w, int64_t out_c) {
  return (size_t)(w->k_h * w->k_w * w->in_c * out_c);
}

/* x[n, ih, iw, c] for a position that may lie in the padding (then -1). */
static int64_t x_index(const flrt_window *w, int64_t n, int64_t oh, int64_t ow, int64_t kh,
                       int64_t kw, int64_t c) {
  int64_t ih = oh * w->stride_h + kh - w->pad_top, iw = ow * w->stride_w + kw - w->pad_left;
  if (ih < 0 || ih >= w->in_h || iw < 0 || iw >= w->in_w) return -1;
  return ((n * w->in_h + ih) * w->in_w + iw) * w->in_c + c;
}

/* The three convolution products, straight from the definition, in double:
 * every (output position, window entry, filter) triple contributes once. */
enum { FWD, GRAD_INPUT, GRAD_FILTER };
static void naive_conv(int which, const flrt_window *w, int64_t O, const float *x,
                       const float *f, const float *dy, double *res) {
  size_t len = which == FWD          ? out_size(w, O)
               : which == GRAD_INPUT ? image_size(w)
                                     : filter_size(w, O);
  for (size_t i = 0; i < len; i++) res[i] = 0.0;
  for (int64_t n = 0; n < w->batch; n++)
    for (int64_t oh = 0; oh < w->out_h; oh++)
      for (int64_t ow = 0; ow < w->out_w; ow++)
        for (int64_t kh = 0; kh < w->k_h; kh++)
          for (int64_t kw = 0; kw < w->k_w; kw++)
            for (int64_t c = 0; c < w->in_c; c++) {
              int64_t xi = x_index(w, n, oh, ow, kh, kw, c);
              if (xi < 0) continue;
              for (int64_t o = 0; o < O; o++) {
                int64_t fi = ((kh * w->k_w + kw) * w->in_c + c) * O + o;
                int64_t yi = ((n * w->out_h + oh) * w->out_w + ow) * O + o;
                if (which == FWD) res[yi] += (double)x[xi] * f[fi];
                else if (which == GRAD_INPUT) res[xi] += (double)dy[yi] * f[fi];
                else res[fi] += (double)x[xi] * dy[yi];
              }
            }
}

static void assert_close(const float *got, const double *want, size_t n, double rel,
                         const char *what) {
  for (size_t i = 0; i < n; i++) {
    double tol = rel * fmax(1.0, fabs(want[i]));
    cr_assert(fabs(got[i] - want[i]) <= tol, "%s[%zu]: got %.8g, want %.8g", what, i,
              (double)got[i], want[i]);
  }
}

/* Each value within rel times the largest one wanted (at least 1): where
 * the error grows with the size of the terms summed, as in Winograd's
 * transforms, rather than with the value they sum to. */
static void assert_close_to_largest(const float *got, const double *want, size_t n, double rel, const char *what) {
  double largest = 1.0, worst = 0.0;
  for (size_t i = 0; i < n; i++) largest = fmax(largest, fabs(want[i]));
  for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - want[i]));
  cr_log_info("%s: largest error %.3g of largest value %.3g", what, worst, largest);
  for (size_t i = 0; i < n; i++)
    cr_assert(fabs(got[i] - want[i]) <= rel * largest, "%s[%zu]: got %.8g, want %.8g (largest %.8g)", what, i,
              (double)got[i], want[i], largest);
}

/* The bound for conv2d's products, relative to the largest value: Winograd's
 * forward pass and input gradient stay within a few 1e-6 of it, the direct
 * loops under 1e-6 (an error in them, or a wrong coefficient in a
 * transform, is of the size of the values). */
#define CONV_REL 1e-5

static double dot(const float *a, const float *b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

static double dot_strided(const float *a, size_t a_step, const float *b, size_t b_step, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; i++) s += (double)a[i * a_step] * b[i * b_step];
  return s;
}

typedef struct {
  int64_t n, h, w, c, kh, kw, sh, sw, o;
  bool same;
} conv_case;

/* Odd sizes so that SAME padding is uneven, windows as large as the image,
 * both strides, one and several channels and filters, and the pointwise 1x1
 * shortcut. */
static const conv_case conv_cases[] = {
    {1, 7, 5, 1, 3, 3, 1, 1, 1, true},  {1, 7, 5, 1, 3, 3, 1, 1, 1, false},
    {2, 7, 5, 3, 3, 3, 2, 2, 4, true},  {2, 7, 5, 3, 3, 3, 2, 2, 4, false},
    {1, 7, 5, 3, 5, 5, 1, 1, 4, true},  {2, 7, 5, 1, 5, 5, 2, 2, 1, true},
    {2, 7, 5, 3, 5, 5, 1, 1, 4, false}, {1, 7, 5, 3, 5, 5, 2, 2, 4, false},
    {2, 6, 8, 3, 2, 2, 2, 2, 4, true},  {1, 7, 5, 3, 3, 5, 2, 1, 4, true},
    {2, 7, 5, 3, 1, 1, 1, 1, 4, false}, {2, 7, 5, 3, 1, 1, 1, 1, 4, true},
    {1, 7, 5, 3, 1, 1, 2, 2, 4, true},  {1, 5, 5, 2, 5, 5, 1, 1, 3, false},
    {1, 4, 4, 2, 4, 4, 1, 1, 3, true},  {1, 28, 28, 1, 5, 5, 1, 1, 4, true},
    /* direct convolutions (at most 64 window entries) with whole and partial
     * blocks of 8 pixels and 16 filters, and a stride */
    {3, 12, 19, 2, 3, 3, 1, 1, 20, true}, {2, 11, 17, 4, 3, 3, 2, 2, 32, false},
    {2, 28, 28, 1, 5, 5, 1, 1, 32, true},
    /* the filter gradient in tiles of channels x filters, with channels and
     * filters left over, and a stride */
    {2, 9, 7, 11, 3, 3, 1, 1, 37, true}, {2, 9, 8, 16, 3, 3, 2, 2, 64, false},
    /* just over the direct limit of the gradients (im2col; direct forward),
     * then in chunks of many images */
    {2, 9, 10, 8, 3, 3, 1, 1, 16, true}, {40, 6, 6, 8, 3, 3, 1, 1, 16, true},
    /* many channels: Winograd's at stride 1, direct forward and im2col
     * gradients at stride 2 */
    {2, 6, 5, 48, 5, 5, 1, 1, 8, true}, {1, 7, 6, 44, 5, 5, 2, 2, 8, false},
};
#define NCASES (sizeof conv_cases / sizeof conv_cases[0])

static void init_case(flrt_window *w, const conv_case *k) {
  flrt_window_init(w, k->n, k->h, k->w, k->c, k->kh, k->kw, k->sh, k->sw, k->same);
}

/* ---- flrt_gemm ------------------------------------------------------------ */

/* Every transpose and shape class: a single row of at most 16 columns
 * (1 x 10 x 1024, 1 x 16 x 301, 1 x 13 x 70, and 1 x 3 x 2 whose rows all go
 * through the padded copy) to flowc's own loop unless B is transposed, other
 * single rows and single columns to sgemv, few rows and many columns to
 * flowc's own panels when neither is transposed, else to one GEMM per thread
 * on its columns (8 x 300 x 1800, 21 x 150 x 1500 and 50 x 200 x 700: blocks
 * of rows and of columns whole and partial, sums in blocks of 256 and a
 * remainder, blocks not a multiple of 16 wide), many rows and a short
 * sum to one GEMM per thread on its rows (600 x 100 x 70), at most 16
 * columns (a classifier's) to flowc's own loops: rows of B as vectors for
 * A B, dot products for A B^T, vectors along A's rows for A^T B (100 x 10 x
 * 784 and 784 x 10 x 100, with partial blocks of rows, columns and vectors in
 * 70 x 13 x 200 and 150 x 7 x 33; A^T B^T stays with sgemm; ten columns
 * with AVX-512 take three rows of B a vector, in blocks of 15 and the rest
 * as above: 37 x 10 x 77, 23 x 10 x 91 and 37 x 10 x 75, a partial block
 * of rows and a rest of 2, 1 and 15, as the last block's loads would read
 * one float past A and B; 13 x 10 x 1600, B's triples packed in more than
 * one panel of 765 rows), a single row
 * against at least 64 columns to flowc's own loop over runs of B's rows
 * unless B is transposed (1 x 300 x 203 and 1 x 64 x 9: columns past the
 * last vector, rows past the last four), the rest to sgemm;
 * overwriting must clear a NaN left in the output, accumulating must add to
 * what is there, and flrt_gemm_update must add alpha times the product. */
Test(gemm, matches_naive_for_rows_columns_and_transposes, .timeout = 60) {
  lcg_state = 11;
  const int64_t shapes[][3] = {{1, 7, 5},     {6, 1, 5},     {1, 1, 4},   {4, 3, 6},      {1, 9, 1},
                               {5, 2, 1},     {8, 300, 1800}, {600, 100, 70}, {100, 10, 784}, {70, 13, 200},
                               {150, 7, 33}, {784, 10, 100}, {1, 10, 1024}, {1, 16, 301}, {1, 13, 70}, {1, 3, 2},
                               {21, 150, 1500}, {50, 200, 700}, {1, 300, 203}, {1, 64, 9},
                               {37, 10, 77}, {23, 10, 91}, {37, 10, 75}, {13, 10, 1600}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int t = 0; t < 12; t++) {
      const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
      const bool ta = t & 1, tb = t & 2, acc = t & 4, update = t & 8;
      const float alpha = update ? -0.3f : 1.0f;
      float *a = random_floats((size_t)(m * k)), *b = random_floats((size_t)(k * n));
      float *c = random_floats((size_t)(m * n));
      double *want = malloc((size_t)(m * n) * sizeof *want);
      double *magnitude = malloc((size_t)(m * n) * sizeof *magnitude);
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
          double sum = 0.0, size = 0.0;
          for (int64_t p = 0; p < k; p++) {
            double term = (double)(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
            sum += term, size += fabs(term);
          }
          const double before = acc || update ? c[i * n + j] : 0.0;
          want[i * n + j] = before + alpha * sum, magnitude[i * n + j] = fabs(before) + fabs(alpha) * size;
        }
      if (!acc && !update) c[0] = NAN;
      if (update) flrt_gemm_update(ta, tb, m, n, k, a, ta ? m : k, b, tb ? k : n, alpha, c, n);
      else flrt_gemm(ta, tb, m, n, k, a, ta ? m : k, b, tb ? k : n, c, n, acc);
      cr_log_info("m %lld n %lld k %lld trans_a %d trans_b %d accumulate %d update %d", (long long)m, (long long)n,
                  (long long)k, ta, tb, acc, update);
      /* Float rounding grows with the sum of the terms' sizes, not with the
       * result (1800 terms of size 1/4 can cancel to about 1), and how it
       * grows depends on the order OpenBLAS's kernel for this CPU adds them. */
      for (size_t i = 0; i < (size_t)(m * n); i++) {
        double tol = 1e-6 * fmax(1.0, magnitude[i]);
        cr_assert(fabs(c[i] - want[i]) <= tol, "gemm[%zu]: got %.8g, want %.8g (terms' sizes add to %.4g)", i,
                  (double)c[i], want[i], magnitude[i]);
      }
      free(a), free(b), free(c), free(want), free(magnitude);
    }
}

/* op(A) B (A^T when ta, its rows lda apart) by flrt_gemm, or subtracted a
 * quarter of it from C by flrt_gemm_update, on `threads` threads, against
 * the double-precision sum. */
static void check_threaded_gemm(int64_t m, int64_t n, int64_t k, bool ta, int64_t lda, bool update, int threads,
                                const char *what) {
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  float *a = random_floats((size_t)((ta ? k : m) * lda)), *b = random_floats((size_t)(k * n));
  float *c = random_floats((size_t)(m * n));
  double *want = malloc((size_t)(m * n) * sizeof *want);
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double sum = 0.0;
      for (int64_t p = 0; p < k; p++) sum += (double)a[ta ? p * lda + i : i * lda + p] * b[p * n + j];
      want[i * n + j] = update ? c[i * n + j] - 0.25 * sum : sum;
    }
  if (update) flrt_gemm_update(ta, false, m, n, k, a, lda, b, n, -0.25f, c, n);
  else flrt_gemm(ta, false, m, n, k, a, lda, b, n, c, n, false);
  cr_log_info("%s: m %lld n %lld k %lld, %d threads, trans_a %d, update %d", what, (long long)m, (long long)n,
              (long long)k, threads, ta, update);
  /* k terms of size at most 1 */
  assert_close(c, want, (size_t)(m * n), 1e-6 * (double)k, what);
  free(a), free(b), free(c), free(want);
}

/* Narrow products with a small output split their sum between the threads
 * (each thread's share of k a multiple of 64, so a thread may get none) and
 * add the partial sums: any thread count gives the naive result, with one to
 * three panels of B's triples a thread in 30 x 10 x 1700. */
Test(gemm, split_sum_matches_naive_for_any_thread_count, .timeout = 60) {
  lcg_state = 17;
  const int64_t shapes[][3] = {{100, 10, 784}, {256, 16, 64}, {70, 13, 200}, {300, 10, 100}, {30, 10, 1700}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int threads = 1; threads <= 4; threads++)
      for (int update = 0; update < 2; update++)
        check_threaded_gemm(shapes[s][0], shapes[s][1], shapes[s][2], false, shapes[s][2], update, threads,
                            "split gemm");
}

/* An output whose rows are further apart than its width (ldc > n): the
 * split sum, narrow rows, the ten-column triples and, for A^T B, the
 * ten-column transpose write each row's n values and leave the floats
 * between the rows as they were. */
Test(gemm, narrow_output_rows_apart_keep_the_gaps, .timeout = 60) {
  lcg_state = 29;
  const int64_t shapes[][3] = {{100, 10, 784}, {70, 13, 200}, {9, 10, 40}, {784, 10, 100}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int threads = 1; threads <= 3; threads++)
      for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, update = t & 2;
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        const int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], ldc = n + 3;
        float *a = random_floats((size_t)(m * k)), *b = random_floats((size_t)(k * n));
        float *c = random_floats((size_t)(m * ldc)), *before = malloc((size_t)(m * ldc) * sizeof *before);
        memcpy(before, c, (size_t)(m * ldc) * sizeof *before);
        if (update) flrt_gemm_update(ta, false, m, n, k, a, ta ? m : k, b, n, -0.25f, c, ldc);
        else flrt_gemm(ta, false, m, n, k, a, ta ? m : k, b, n, c, ldc, false);
        cr_log_info("m %lld n %lld k %lld ldc %lld, %d threads, trans_a %d, update %d", (long long)m, (long long)n,
                    (long long)k, (long long)ldc, threads, ta, update);
        for (int64_t i = 0; i < m; i++) {
          for (int64_t j = 0; j < n; j++) {
            const double sum = ta ? dot_strided(a + i, (size_t)m, b + j, (size_t)n, (size_t)k)
                                  : dot_strided(a + i * k, 1, b + j, (size_t)n, (size_t)k);
            const double want = update ? before[i * ldc + j] - 0.25 * sum : sum;
            cr_assert(fabs(c[i * ldc + j] - want) <= 1e-6 * (double)k, "c[%lld][%lld]: got %.8g, want %.8g",
                      (long long)i, (long long)j, (double)c[i * ldc + j], want);
          }
          for (int64_t j = n; j < ldc; j++)
            cr_assert(c[i * ldc + j] == before[i * ldc + j], "c[%lld][%lld] past the row's %lld values was written",
                      (long long)i, (long long)j, (long long)n);
        }
        free(a), free(b), free(c), free(before);
      }
}

/* A single row against a wide B (batch-1 fully connected layers) splits B's
 * rows between the threads and adds their sums of all columns; at most 8192
 * sums fit, so 5 threads on 2000 columns run as 4: any thread count gives
 * the naive result, a column of A (trans_a, 3 floats apart) included. */
Test(gemm, wide_row_matches_naive_for_any_thread_count, .timeout = 60) {
  lcg_state = 23;
  const int64_t shapes[][2] = {{1024, 3136}, {300, 203}, {2000, 100}, {64, 3}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int threads = 1; threads <= 5; threads++)
      for (int t = 0; t < 4; t++) {
        const bool ta = t & 1, update = t & 2;
        check_threaded_gemm(1, shapes[s][0], shapes[s][1], ta, ta ? 3 : shapes[s][1], update, threads, "wide row");
      }
}

/* ---- flrt_window_init ---------------------------------------------------- */

Test(window, deep_mnist_layers) {
  flrt_window w;
  flrt_window_init(&w, 50, 28, 28, 1, 5, 5, 1, 1, true); /* conv1 */
  cr_assert_eq(w.out_h, 28);
  cr_assert_eq(w.out_w, 28);
  cr_assert_eq(w.pad_top, 2);
  cr_assert_eq(w.pad_left, 2);
  flrt_window_init(&w, 50, 28, 28, 32, 2, 2, 2, 2, true); /* pool1 */
  cr_assert_eq(w.out_h, 14);
  cr_assert_eq(w.out_w, 14);
  cr_assert_eq(w.pad_top, 0);
  cr_assert_eq(w.pad_left, 0);
  flrt_window_init(&w, 50, 14, 14, 64, 2, 2, 2, 2, true); /* pool2 */
  cr_assert_eq(w.out_h, 7);
  cr_assert_eq(w.pad_top, 0);
}

Test(window, same_uneven_padding) {
  flrt_window w;
  /* pad_total 3: one row before, two after. */
  flrt_window_init(&w, 1, 4, 4, 1, 4, 4, 1, 1, true);
  cr_assert_eq(w.out_h, 4);
  cr_assert_eq(w.pad_top, 1);
  /* 5 wide, 2x2 stride 2: out 3, pad_total 1, all of it after. */
  flrt_window_init(&w, 1, 7, 5, 1, 2, 2, 2, 2, true);
  cr_assert_eq(w.out_h, 4);
  cr_assert_eq(w.out_w, 3);
  cr_assert_eq(w.pad_top, 0);
  cr_assert_eq(w.pad_left, 0);
  /* 7x5, 3x3 stride 2: out 4x3, pad_total 2 each way. */
  flrt_window_init(&w, 1, 7, 5, 1, 3, 3, 2, 2, true);
  cr_assert_eq(w.out_h, 4);
  cr_assert_eq(w.out_w, 3);
  cr_assert_eq(w.pad_top, 1);
  cr_assert_eq(w.pad_left, 1);
  /* Stride larger than the window: no padding needed. */
  flrt_window_init(&w, 1, 7, 7, 1, 1, 1, 3, 3, true);
  cr_assert_eq(w.out_h, 3);
  cr_assert_eq(w.pad_top, 0);
}

Test(window, valid) {
  flrt_window w;
  flrt_window_init(&w, 2, 7, 5, 3, 3, 3, 2, 2, false);
  cr_assert_eq(w.out_h, 3);
  cr_assert_eq(w.out_w, 2);
  cr_assert_eq(w.pad_top, 0);
  cr_assert_eq(w.pad_left, 0);
  flrt_window_init(&w, 1, 28, 28, 1, 5, 5, 1, 1, false);
  cr_assert_eq(w.out_h, 24);
  flrt_window_init(&w, 1, 3, 3, 1, 5, 5, 1, 1, false); /* window larger than the image */
  cr_assert_eq(w.out_h, 0);
  cr_assert_eq(w.out_w, 0);
}

/* ---- conv2d -------------------------------------------------------------- */

Test(conv2d, matches_naive) {
  lcg_state = 1;
  for (size_t t = 0; t < NCASES; t++) {
    const conv_case *k = &conv_cases[t];
    flrt_window w;
    init_case(&w, k);
    float *x = random_floats(image_size(&w)), *f = random_floats(filter_size(&w, k->o));
    float *out = random_floats(out_size(&w, k->o)); /* garbage: must be overwritten */
    float *cols = random_floats(flrt_conv2d_scratch(&w, k->o));
    double *want = malloc(out_size(&w, k->o) * sizeof *want);
    flrt_conv2d(&w, k->o, x, f, out, cols);
    naive_conv(FWD, &w, k->o, x, f, NULL, want);
    cr_log_info("case %zu", t);
    assert_close_to_largest(out, want, out_size(&w, k->o), CONV_REL, "conv2d");
    free(x), free(f), free(out), free(cols), free(want);
  }
}

/* The epilogue applied chunk by chunk equals conv2d followed by + bias and
 * relu over the whole output (bit for bit: the same sums, then the same
 * additions). */
Test(conv2d, bias_and_relu_epilogue) {
  lcg_state = 12;
  for (size_t t = 0; t < NCASES; t++) {
    const conv_case *k = &conv_cases[t];
    flrt_window w;
    init_case(&w, k);
    const size_t ny = out_size(&w, k->o);
    float *x = random_floats(image_size(&w)), *f = random_floats(filter_size(&w, k->o));
    float *bias = random_floats((size_t)k->o), *y = random_floats(ny), *want = random_floats(ny);
    float *cols = random_floats(flrt_conv2d_scratch(&w, k->o));
    for (int relu = 0; relu < 2; relu++) {
      flrt_conv2d(&w, k->o, x, f, want, cols);
      for (size_t i = 0; i < ny; i++) {
        const float v = want[i] + bias[i % (size_t)k->o];
        want[i] = relu && v < 0.0f ? 0.0f : v;
      }
      flrt_conv2d_bias(&w, k->o, x, f, bias, relu, y, cols);
      for (size_t i = 0; i < ny; i++)
        cr_assert_eq(y[i], want[i], "case %zu relu %d: out[%zu] %g, want %g", t, relu, i, y[i], want[i]);
    }
    free(x), free(f), free(bias), free(y), free(want), free(cols);
  }
}

Test(conv2d, gradients_match_naive) {
  lcg_state = 2;
  for (size_t t = 0; t < NCASES; t++) {
    const conv_case *k = &conv_cases[t];
    flrt_window w;
    init_case(&w, k);
    float *x = random_floats(image_size(&w)), *f = random_floats(filter_size(&w, k->o));
    float *dy = random_floats(out_size(&w, k->o));
    float *dx = random_floats(image_size(&w)), *df = random_floats(filter_size(&w, k->o));
    float *cols = random_floats(flrt_conv2d_scratch(&w, k->o));
    double *want_dx = malloc(image_size(&w) * sizeof *want_dx);
    double *want_df = malloc(filter_size(&w, k->o) * sizeof *want_df);
    flrt_conv2d_grad_input(&w, k->o, dy, f, dx, cols);
    flrt_conv2d_grad_filter(&w, k->o, x, dy, df, cols);
    naive_conv(GRAD_INPUT, &w, k->o, x, f, dy, want_dx);
    naive_conv(GRAD_FILTER, &w, k->o, x, f, dy, want_df);
    assert_close_to_largest(dx, want_dx, image_size(&w), CONV_REL, "grad_input");
    assert_close_to_largest(df, want_df, filter_size(&w, k->o), CONV_REL, "grad_filter");
    free(x), free(f), free(dy), free(dx), free(df), free(cols), free(want_dx), free(want_df);
  }
}

/* <conv(x, f), dy> = <x, grad_input(dy, f)> = <f, grad_filter(x, dy)>: the
 * gradients are the exact adjoints of the forward map in x and in f. */
Test(conv2d, gradients_are_adjoints) {
  lcg_state = 3;
  for (size_t t = 0; t < NCASES; t++) {
    const conv_case *k = &conv_cases[t];
    flrt_window w;
    init_case(&w, k);
    size_t nx = image_size(&w), nf = filter_size(&w, k->o), ny = out_size(&w, k->o);
    float *x = random_floats(nx), *f = random_floats(nf), *dy = random_floats(ny);
    float *y = random_floats(ny), *dx = random_floats(nx), *df = random_floats(nf);
    float *cols = random_floats(flrt_conv2d_scratch(&w, k->o));
    flrt_conv2d(&w, k->o, x, f, y, cols);
    flrt_conv2d_grad_input(&w, k->o, dy, f, dx, cols);
    flrt_conv2d_grad_filter(&w, k->o, x, dy, df, cols);
    double a = dot(y, dy, ny), b = dot(x, dx, nx), c = dot(f, df, nf);
    double scale = fmax(1.0, fabs(a));
    cr_assert(fabs(a - b) <= 1e-3 * scale, "case %zu: <conv(x,f),dy> %.9g vs <x,dx> %.9g", t, a, b);
    cr_assert(fabs(a - c) <= 1e-3 * scale, "case %zu: <conv(x,f),dy> %.9g vs <f,df> %.9g", t, a, c);
    free(x), free(f), free(dy), free(y), free(dx), free(df), free(cols);
  }
}

Test(conv2d, pointwise_needs_no_scratch) {
  flrt_window w;
  flrt_window_init(&w, 2, 3, 3, 2, 1, 1, 1, 1, true);
  cr_assert_eq(flrt_conv2d_scratch(&w, 3), 0);
  float x[36], f[2 * 3] = {1, 2, 3, -1, 0.5f, 0}, out[54], dx[36], df[6];
  for (int i = 0; i < 36; i++) x[i] = (float)i;
  flrt_conv2d(&w, 3, x, f, out, NULL);
  /* pixel 4 holds channels (8, 9). */
  cr_assert_float_eq(out[4 * 3 + 0], 8 * 1 + 9 * -1.0f, 1e-6);
  cr_assert_float_eq(out[4 * 3 + 1], 8 * 2 + 9 * 0.5f, 1e-6);
  cr_assert_float_eq(out[4 * 3 + 2], 8 * 3 + 9 * 0.0f, 1e-6);
  flrt_conv2d_grad_input(&w, 3, out, f, dx, NULL);
  flrt_conv2d_grad_filter(&w, 3, x, out, df, NULL);
  /* A strided 1x1 is not pointwise: it skips pixels. */
  flrt_window_init(&w, 1, 3, 3, 2, 1, 1, 2, 2, false);
  cr_assert_gt(flrt_conv2d_scratch(&w, 3), 0);
}

Test(conv2d, known_values) {
  /* 3x3 image 1..9, 3x3 all-ones filter, SAME: each output is the sum of its
   * neighbourhood, corners see only 4 pixels. */
  flrt_window w;
  flrt_window_init(&w, 1, 3, 3, 1, 3, 3, 1, 1, true);
  float x[9], f[9], out[9], cols[81];
  for (int i = 0; i < 9; i++) x[i] = (float)(i + 1), f[i] = 1.0f;
  flrt_conv2d(&w, 1, x, f, out, cols);
  const float want[9] = {12, 21, 16, 27, 45, 33, 24, 39, 28};
  for (int i = 0; i < 9; i++) cr_assert_float_eq(out[i], want[i], 1e-5, "out[%d] = %g", i, out[i]);
  /* Cross-correlation, not convolution: a filter with a single 1 at (0, 0)
   * shifts the image down-right (reads up-left). */
  for (int i = 0; i < 9; i++) f[i] = i == 0 ? 1.0f : 0.0f;
  flrt_conv2d(&w, 1, x, f, out, cols);
  const float shifted[9] = {0, 0, 0, 0, 1, 2, 0, 4, 5};
  for (int i = 0; i < 9; i++) cr_assert_float_eq(out[i], shifted[i], 1e-6);
}

Test(conv2d, empty_batch) {
  flrt_window w;
  flrt_window_init(&w, 0, 5, 5, 2, 3, 3, 1, 1, true);
  float f[3 * 3 * 2 * 2] = {0}, df[3 * 3 * 2 * 2];
  for (int i = 0; i < 36; i++) df[i] = 7.0f;
  cr_assert_eq(flrt_conv2d_scratch(&w, 2), 0);
  flrt_conv2d(&w, 2, NULL, f, NULL, NULL);
  flrt_conv2d_grad_input(&w, 2, NULL, f, NULL, NULL);
  flrt_conv2d_grad_filter(&w, 2, NULL, NULL, df, NULL);
  for (int i = 0; i < 36; i++) cr_assert_eq(df[i], 0.0f); /* an empty sum */
}

Test(im2col, col2im_is_adjoint) {
  lcg_state = 4;
  flrt_window w;
  flrt_window_init(&w, 2, 7, 5, 3, 3, 3, 2, 2, true);
  size_t nx = image_size(&w), nc = (size_t)(w.batch * w.out_h * w.out_w * w.k_h * w.k_w * w.in_c);
  float *x = random_floats(nx), *c = random_floats(nc);
  float *cols = random_floats(nc), *dx = random_floats(nx);
  flrt_im2col(&w, x, cols);
  flrt_col2im(&w, c, dx);
  double a = dot(cols, c, nc), b = dot(x, dx, nx);
  cr_assert(fabs(a - b) <= 1e-4 * fmax(1.0, fabs(a)), "%.9g vs %.9g", a, b);
  free(x), free(c), free(cols), free(dx);
}

/* ---- max_pool ------------------------------------------------------------ */

static void naive_max_pool(const flrt_window *w, const float *x, double *out, int64_t *arg) {
  int64_t C = w->in_c, i = 0;
  for (int64_t n = 0; n < w->batch; n++)
    for (int64_t oh = 0; oh < w->out_h; oh++)
      for (int64_t ow = 0; ow < w->out_w; ow++)
        for (int64_t c = 0; c < C; c++, i++) {
          int64_t best = -1;
          for (int64_t kh = 0; kh < w->k_h; kh++)
            for (int64_t kw = 0; kw < w->k_w; kw++) {
              int64_t xi = x_index(w, n, oh, ow, kh, kw, c);
              if (xi >= 0 && (best < 0 || x[xi] > x[best])) best = xi;
            }
          cr_assert(best >= 0, "a window with no pixel");
          out[i] = x[best];
          arg[i] = best;
        }
}

typedef struct {
  int64_t n, h, w, c, k, s;
  bool same;
} pool_case;

static const pool_case pool_cases[] = {
    {1, 7, 5, 1, 2, 2, true},  {2, 7, 5, 3, 2, 2, true}, {2, 7, 5, 3, 2, 2, false},
    {1, 7, 5, 2, 3, 1, true},  {2, 7, 5, 3, 3, 1, false}, {1, 5, 7, 2, 3, 2, true},
    {2, 28, 28, 4, 2, 2, true}, {1, 4, 4, 1, 4, 1, true},
    /* windows that tile the image, over more channels than one pass takes */
    {1, 4, 6, 300, 2, 2, false}, {2, 6, 6, 3, 3, 3, true}, {3, 6, 8, 40, 2, 2, true},
};
#define NPOOL (sizeof pool_cases / sizeof pool_cases[0])

Test(max_pool, matches_naive) {
  lcg_state = 5;
  for (size_t t = 0; t < NPOOL; t++) {
    const pool_case *k = &pool_cases[t];
    flrt_window w;
    flrt_window_init(&w, k->n, k->h, k->w, k->c, k->k, k->k, k->s, k->s, k->same);
    size_t nx = image_size(&w), ny = out_size(&w, k->c);
    float *x = random_floats(nx), *out = random_floats(ny);
    /* All negative: a padding cell read as 0 would win every edge window. */
    for (size_t i = 0; i < nx; i++) x[i] = -2.0f + x[i];
    double *want = malloc(ny * sizeof *want);
    int64_t *arg = malloc(ny * sizeof *arg);
    flrt_max_pool(&w, x, out);
    naive_max_pool(&w, x, want, arg);
    for (size_t i = 0; i < ny; i++)
      cr_assert_eq((double)out[i], want[i], "case %zu out[%zu]: %g vs %g", t, i, out[i], want[i]);
    free(x), free(out), free(want), free(arg);
  }
}

Test(max_pool, grad_matches_naive_with_ties) {
  lcg_state = 6;
  for (size_t t = 0; t < NPOOL; t++) {
    const pool_case *k = &pool_cases[t];
    flrt_window w;
    flrt_window_init(&w, k->n, k->h, k->w, k->c, k->k, k->k, k->s, k->s, k->same);
    size_t nx = image_size(&w), ny = out_size(&w, k->c);
    float *x = random_floats(nx), *dy = random_floats(ny), *dx = random_floats(nx);
    /* Few distinct values, so most windows hold ties. */
    for (size_t i = 0; i < nx; i++) x[i] = floorf(x[i] * 2.0f) - 5.0f;
    double *pooled = malloc(ny * sizeof *pooled), *want = calloc(nx, sizeof *want);
    int64_t *arg = malloc(ny * sizeof *arg);
    naive_max_pool(&w, x, pooled, arg);
    for (size_t i = 0; i < ny; i++) want[arg[i]] += dy[i];
    flrt_max_pool_grad(&w, x, dy, dx);
    assert_close(dx, want, nx, 1e-6, "max_pool_grad");
    free(x), free(dy), free(dx), free(pooled), free(want), free(arg);
  }
}

/* Through a relu: relu_grad(max_pool_grad(x, dy), x), in tiled and
 * overlapping windows, with zeros and negatives in x (relu outputs are never
 * negative, but the kernel must not care). */
Test(max_pool, grad_through_relu_matches_two_passes) {
  lcg_state = 13;
  for (size_t t = 0; t < NPOOL; t++) {
    const pool_case *k = &pool_cases[t];
    flrt_window w;
    flrt_window_init(&w, k->n, k->h, k->w, k->c, k->k, k->k, k->s, k->s, k->same);
    size_t nx = image_size(&w), ny = out_size(&w, k->c);
    float *x = random_floats(nx), *dy = random_floats(ny), *dx = random_floats(nx), *want = random_floats(nx);
    for (size_t i = 0; i < nx; i++) x[i] = i % 3 == 0 ? 0.0f : floorf(x[i] * 4.0f) - 1.0f;
    flrt_max_pool_grad(&w, x, dy, want);
    for (size_t i = 0; i < nx; i++) want[i] = x[i] > 0.0f ? want[i] : 0.0f;
    flrt_max_pool_grad_relu(&w, x, dy, dx);
    for (size_t i = 0; i < nx; i++)
      cr_assert_eq(dx[i], want[i], "case %zu dx[%zu]: %g, want %g", t, i, dx[i], want[i]);
    free(x), free(dy), free(dx), free(want);
  }
}

Test(max_pool, grad_tie_goes_to_first) {
  /* One 2x2 window of equal values: everything to the top-left. */
  flrt_window w;
  flrt_window_init(&w, 1, 2, 2, 1, 2, 2, 2, 2, false);
  float x[4] = {3, 3, 3, 3}, dy[1] = {5}, dx[4] = {9, 9, 9, 9}, out[1];
  flrt_max_pool(&w, x, out);
  cr_assert_eq(out[0], 3.0f);
  flrt_max_pool_grad(&w, x, dy, dx);
  cr_assert_eq(dx[0], 5.0f);
  cr_assert_eq(dx[1], 0.0f);
  cr_assert_eq(dx[2], 0.0f);
  cr_assert_eq(dx[3], 0.0f);
  /* A later equal value does not replace; a larger one does. */
  float y[4] = {1, 4, 2, 4}, d2[4];
  flrt_max_pool_grad(&w, y, dy, d2);
  cr_assert_eq(d2[1], 5.0f);
  cr_assert_eq(d2[3], 0.0f);
}

Test(max_pool, grad_overlapping_windows_accumulate) {
  /* 4x4 with its maximum at (1, 1); 3x3 stride 1 VALID: 4 windows, and the
   * three that contain (1, 1) all route their dy there. */
  flrt_window w;
  flrt_window_init(&w, 1, 4, 4, 1, 3, 3, 1, 1, false);
  cr_assert_eq(w.out_h, 2);
  float x[16], dy[4] = {1, 2, 4, 8}, dx[16], out[4];
  for (int i = 0; i < 16; i++) x[i] = 0.0f;
  x[1 * 4 + 1] = 10.0f;
  x[3 * 4 + 3] = 1.0f; /* only in the last window, and its maximum there */
  flrt_max_pool(&w, x, out);
  cr_assert_eq(out[0], 10.0f);
  cr_assert_eq(out[3], 10.0f);
  flrt_max_pool_grad(&w, x, dy, dx);
  cr_assert_eq(dx[1 * 4 + 1], 1.0f + 2.0f + 4.0f + 8.0f);
  float sum = 0;
  for (int i = 0; i < 16; i++) sum += dx[i];
  cr_assert_eq(sum, 15.0f);
  /* Channels are independent: C = 2 with the maximum in different places. */
  flrt_window_init(&w, 1, 2, 2, 2, 2, 2, 1, 1, true); /* SAME: 2x2 output */
  float xc[8] = {1, 0, 0, 0, 0, 0, 0, 1}, dyc[8] = {1, 1, 1, 1, 1, 1, 1, 1}, dxc[8];
  flrt_max_pool_grad(&w, xc, dyc, dxc);
  /* channel 0: max at pixel 0 is in window (0,0) only; other windows see
   * zeros only and pick their first pixel. */
  cr_assert_eq(dxc[0 * 2 + 0], 1.0f);
  cr_assert_eq(dxc[1 * 2 + 0], 1.0f);
  cr_assert_eq(dxc[2 * 2 + 0], 1.0f);
  cr_assert_eq(dxc[3 * 2 + 0], 1.0f);
  /* channel 1: pixel 3 holds the max and is in every window. */
  cr_assert_eq(dxc[3 * 2 + 1], 4.0f);
  cr_assert_eq(dxc[0 * 2 + 1], 0.0f);
}

Test(max_pool, padding_never_wins) {
  flrt_window w;
  flrt_window_init(&w, 1, 3, 3, 1, 3, 3, 1, 1, true);
  float x[9], out[9], dy[9], dx[9];
  for (int i = 0; i < 9; i++) x[i] = -10.0f - (float)i, dy[i] = 1.0f;
  flrt_max_pool(&w, x, out);
  cr_assert_eq(out[8], -14.0f); /* window of (1..2, 1..2): max is x[4] */
  cr_assert_eq(out[0], -10.0f);
  flrt_max_pool_grad(&w, x, dy, dx);
  cr_assert_eq(dx[0], 4.0f); /* windows (0,0), (0,1), (1,0), (1,1) */
}

/* ---- flrt_print_tensor ---------------------------------------------------- */

static char *printed(const float *data, int rank, const int64_t *dims) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert(f != NULL);
  flrt_print_tensor(f, data, rank, dims);
  fclose(f);
  return buf;
}

#define EXPECT_PRINT(want, data, rank, dims)                          \
  do {                                                                \
    char *got_ = printed(data, rank, dims);                           \
    cr_assert_str_eq(got_, want, "printed \"%s\"", got_);             \
    free(got_);                                                       \
  } while (0)

Test(print_tensor, small) {
  float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  float half = 0.5f;
  EXPECT_PRINT("0.5", &half, 0, NULL);
  int64_t d1[1] = {3};
  EXPECT_PRINT("[1 2 3]", v, 1, d1);
  int64_t d2[2] = {2, 2};
  EXPECT_PRINT("[[1 2] [3 4]]", v, 2, d2);
  int64_t d3[3] = {2, 2, 2};
  EXPECT_PRINT("[[[1 2] [3 4]] [[5 6] [7 8]]]", v, 3, d3);
  int64_t d13[2] = {1, 3};
  EXPECT_PRINT("[[1 2 3]]", v, 2, d13);
  float odd[3] = {-1.5f, 0.1f, 1e-7f};
  EXPECT_PRINT("[-1.5 0.1 1e-07]", odd, 1, d1);
  int64_t d0[1] = {0};
  EXPECT_PRINT("[]", v, 1, d0);
}

Test(print_tensor, large_is_summarised) {
  float *v = malloc(1001 * sizeof *v);
  for (int i = 0; i < 1001; i++) v[i] = (float)i;
  int64_t d[1] = {1001};
  EXPECT_PRINT("[0 1 2 3 4 5 ... 998 999 1000]", v, 1, d);
  int64_t d2[2] = {11, 91};
  EXPECT_PRINT("[0 1 2 3 4 5 ... 998 999 1000]", v, 2, d2);
  /* 1000 elements are still printed in full. */
  int64_t d3[1] = {1000};
  char *s = printed(v, 1, d3);
  cr_assert_null(strstr(s, "..."));
  cr_assert(strncmp(s, "[0 1 2 ", 7) == 0);
  cr_assert(strcmp(s + strlen(s) - 5, " 999]") == 0, "%s", s + strlen(s) - 5);
  free(s);
  free(v);
}

/* A batch larger than one im2col chunk: a 3x3 window over Deep MNIST's
 * second layer's input at batch 13 runs in chunks of a few images (its own
 * 5x5 window runs as Winograd's, which does not chunk: tested below); each
 * product must still equal the whole-batch definition (grad_filter sums over
 * the chunks and the threads). */
Test(conv2d, batches_split_into_chunks_match_naive, .timeout = 120) {
  lcg_state = 7;
  flrt_window w;
  flrt_window_init(&w, 13, 14, 14, 32, 3, 3, 1, 1, true);
  const int64_t O = 8;
  cr_assert(flrt_conv2d_chunk(&w) < 13, "chunk %lld should split batch 13", (long long)flrt_conv2d_chunk(&w));
  float *x = random_floats(image_size(&w)), *f = random_floats(filter_size(&w, O));
  float *dy = random_floats(out_size(&w, O)), *y = random_floats(out_size(&w, O));
  float *dx = random_floats(image_size(&w)), *df = random_floats(filter_size(&w, O));
  float *cols = random_floats(flrt_conv2d_scratch(&w, O));
  double *want_y = malloc(out_size(&w, O) * sizeof(double));
  double *want_dx = malloc(image_size(&w) * sizeof(double));
  double *want_df = malloc(filter_size(&w, O) * sizeof(double));
  flrt_conv2d(&w, O, x, f, y, cols);
  flrt_conv2d_grad_input(&w, O, dy, f, dx, cols);
  flrt_conv2d_grad_filter(&w, O, x, dy, df, cols);
  naive_conv(FWD, &w, O, x, f, dy, want_y);
  naive_conv(GRAD_INPUT, &w, O, x, f, dy, want_dx);
  naive_conv(GRAD_FILTER, &w, O, x, f, dy, want_df);
  assert_close_to_largest(y, want_y, out_size(&w, O), CONV_REL, "conv2d");
  assert_close_to_largest(dx, want_dx, image_size(&w), CONV_REL, "grad_input");
  assert_close_to_largest(df, want_df, filter_size(&w, O), CONV_REL, "grad_filter");
  free(x), free(f), free(dy), free(y), free(dx), free(df), free(cols), free(want_y), free(want_dx), free(want_df);
}

/* Fewer images than threads: the forward pass cuts each image's output rows
 * into bands, one per thread, both in the direct convolution and through
 * im2col (im2col bands at the top of a SAME image start in its padding,
 * lower ones part-way down the image, VALID and stride 2 included). The
 * outputs must equal the definition, and the epilogue must still match
 * conv2d + bias + relu bit for bit. */
Test(conv2d, images_split_into_row_bands_match_naive, .timeout = 120) {
#ifndef _OPENMP
  cr_skip_test("built without OpenMP: one thread, no bands");
#else
  static const conv_case cases[] = {
      {1, 14, 14, 32, 3, 3, 1, 1, 64, true},  /* direct (Deep MNIST's conv2 is Winograd's) */
      {1, 28, 28, 1, 5, 5, 1, 1, 32, true},   /* conv1: direct */
      {1, 12, 12, 240, 3, 3, 1, 1, 16, true}, /* 2160 entries: im2col */
      {1, 13, 11, 48, 5, 5, 2, 2, 16, false}, /* 1200 entries, stride 2: direct */
      {2, 21, 19, 8, 3, 3, 2, 2, 48, true},  {2, 23, 19, 8, 3, 3, 2, 2, 48, false},
      {1, 31, 9, 3, 5, 3, 1, 1, 40, true},
  };
  lcg_state = 21;
  for (int threads = 2; threads <= 3; threads++) {
    omp_set_num_threads(threads);
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
      const conv_case *k = &cases[t];
      flrt_window w;
      init_case(&w, k);
      /* (the batches of 2 take bands at 3 threads, whole images at 2) */
      cr_assert(w.out_h * w.out_w * k->kh * k->kw * k->c * k->o >= (1 << 18), "case %zu is too small for bands", t);
      const size_t ny = out_size(&w, k->o);
      float *x = random_floats(image_size(&w)), *f = random_floats(filter_size(&w, k->o));
      float *bias = random_floats((size_t)k->o), *y = random_floats(ny), *fused = random_floats(ny);
      float *cols = random_floats(flrt_conv2d_scratch(&w, k->o));
      double *want = malloc(ny * sizeof *want);
      flrt_conv2d(&w, k->o, x, f, y, cols);
      naive_conv(FWD, &w, k->o, x, f, NULL, want);
      cr_log_info("%d threads, case %zu", threads, t);
      assert_close_to_largest(y, want, ny, CONV_REL, "conv2d");
      flrt_conv2d_bias(&w, k->o, x, f, bias, true, fused, cols);
      for (size_t i = 0; i < ny; i++) {
        const float v = y[i] + bias[i % (size_t)k->o];
        cr_assert_eq(fused[i], v > 0.0f ? v : 0.0f, "%d threads, case %zu: out[%zu]", threads, t, i);
      }
      free(x), free(f), free(bias), free(y), free(fused), free(cols), free(want);
    }
  }
#endif
}

/* 5x5 windows of stride 1 with 8 or more channels and filters run as
 * Winograd's F(2x2, 5x5), forward pass and input gradient (the filter
 * gradient stays direct: checked here too): Deep MNIST's conv2 at batch 1
 * and (8 filters) at 13, whose blocks of tiles cross the images, odd sizes
 * whose last tiles stick out of the output, VALID (the input gradient's
 * window then reads 4 rows of padding), channels that do not fill a vector
 * (copied tiles) and filters that do not fill one or a block of them. At
 * 1, 2 and 3 threads the products must equal the definition, the forward
 * pass and input gradient in the same bits at every count (the filter
 * gradient adds up the threads' sums, so its bits depend on their count),
 * and the epilogue must match conv2d + bias + relu bit for bit. */
Test(conv2d, winograd_matches_naive_at_any_thread_count, .timeout = 120) {
  static const conv_case cases[] = {
      {1, 14, 14, 32, 5, 5, 1, 1, 64, true}, {3, 9, 11, 11, 5, 5, 1, 1, 40, true},
      {2, 10, 9, 16, 5, 5, 1, 1, 13, false}, {1, 6, 7, 8, 5, 5, 1, 1, 8, true},
      {2, 5, 5, 20, 5, 5, 1, 1, 33, true},   {13, 14, 14, 32, 5, 5, 1, 1, 8, true},
  };
  lcg_state = 41;
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    const conv_case *k = &cases[t];
    flrt_window w;
    init_case(&w, k);
    const size_t ny = out_size(&w, k->o), nx = image_size(&w), nf = filter_size(&w, k->o);
    float *x = random_floats(nx), *f = random_floats(nf), *dy = random_floats(ny);
    float *bias = random_floats((size_t)k->o), *y = random_floats(ny), *fused = random_floats(ny);
    float *dx = random_floats(nx), *y1 = malloc(ny * sizeof *y1), *dx1 = malloc(nx * sizeof *dx1);
    float *df = random_floats(nf);
    double *want_y = malloc(ny * sizeof *want_y), *want_dx = malloc(nx * sizeof *want_dx);
    double *want_df = malloc(nf * sizeof *want_df);
    naive_conv(FWD, &w, k->o, x, f, dy, want_y);
    naive_conv(GRAD_INPUT, &w, k->o, x, f, dy, want_dx);
    naive_conv(GRAD_FILTER, &w, k->o, x, f, dy, want_df);
    for (int threads = 1; threads <= 3; threads++) {
#ifdef _OPENMP
      omp_set_num_threads(threads);
#else
      if (threads > 1) break;
#endif
      cr_log_info("case %zu, %d threads", t, threads);
      float *cols = random_floats(flrt_conv2d_scratch(&w, k->o));
      flrt_conv2d(&w, k->o, x, f, y, cols);
      flrt_conv2d_grad_input(&w, k->o, dy, f, dx, cols);
      flrt_conv2d_grad_filter(&w, k->o, x, dy, df, cols);
      flrt_conv2d_bias(&w, k->o, x, f, bias, true, fused, cols);
      assert_close_to_largest(y, want_y, ny, CONV_REL, "conv2d");
      assert_close_to_largest(dx, want_dx, nx, CONV_REL, "grad_input");
      assert_close_to_largest(df, want_df, nf, CONV_REL, "grad_filter");
      for (size_t i = 0; i < ny; i++) {
        const float v = y[i] + bias[i % (size_t)k->o];
        cr_assert_eq(fused[i], v > 0.0f ? v : 0.0f, "case %zu, %d threads: out[%zu]", t, threads, i);
      }
      if (threads == 1) {
        memcpy(y1, y, ny * sizeof *y);
        memcpy(dx1, dx, nx * sizeof *dx);
      }
      cr_assert(memcmp(y, y1, ny * sizeof *y) == 0, "case %zu: %d threads changed conv2d's bits", t, threads);
      cr_assert(memcmp(dx, dx1, nx * sizeof *dx) == 0, "case %zu: %d threads changed grad_input's bits", t, threads);
      free(cols);
    }
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
    free(x), free(f), free(dy), free(bias), free(y), free(fused), free(dx), free(y1), free(dx1), free(df),
        free(want_y), free(want_dx), free(want_df);
  }
}

/* A forward pass on few tiles (batch-1 inference) keeps its transformed
 * filters between calls, checked against a copy of the filter each time:
 * a filter written in place (its first and its last value, which the first
 * and the last thread check), five filters in turn (more than the cache
 * holds), a window of other sizes in between, whose filter starts at the
 * same address as the first (the cache must tell them apart by their
 * sizes), and changing thread counts must all give the definition's
 * outputs, never those of a stale or another size's transform. */
Test(conv2d, winograd_cache_follows_changed_filters, .timeout = 120) {
  static const conv_case conv2 = {1, 14, 14, 32, 5, 5, 1, 1, 64, true}, other = {1, 9, 11, 11, 5, 5, 1, 1, 40, true};
  enum { FILTERS_IN_TURN = 5 };
  lcg_state = 43;
  flrt_window w, wo;
  init_case(&w, &conv2);
  init_case(&wo, &other);
  const size_t other_ny = out_size(&wo, other.o);
  float *other_x = random_floats(image_size(&wo)), *other_y = malloc(other_ny * sizeof *other_y);
  float *other_cols = malloc(flrt_conv2d_scratch(&wo, other.o) * sizeof *other_cols);
  double *other_want = malloc(other_ny * sizeof *other_want);
  const size_t ny = out_size(&w, conv2.o), nf = filter_size(&w, conv2.o);
  float *x = random_floats(image_size(&w)), *y = malloc(ny * sizeof *y);
  float *cols = malloc(flrt_conv2d_scratch(&w, conv2.o) * sizeof *cols);
  double *want = malloc(ny * sizeof *want);
  float *f[FILTERS_IN_TURN];
  for (int i = 0; i < FILTERS_IN_TURN; i++) f[i] = random_floats(nf);
  cr_assert(filter_size(&wo, other.o) <= nf);
  for (int call = 0; call < 12; call++) {
#ifdef _OPENMP
    omp_set_num_threads(1 + call % 3);
#endif
    if (call % 3 == 0) { /* the other window first, on the start of f[0] */
      flrt_conv2d(&wo, other.o, other_x, f[0], other_y, other_cols);
      naive_conv(FWD, &wo, other.o, other_x, f[0], NULL, other_want);
      assert_close_to_largest(other_y, other_want, other_ny, CONV_REL, "conv2d of the other window");
    }
    float *filter = call < 4 ? f[0] : f[call % FILTERS_IN_TURN];
    if (call == 1) filter[nf - 1] += 0.5f;
    if (call == 2) filter[0] -= 0.5f;
    if (call == 3) filter[nf / 2] *= -1.0f;
    flrt_conv2d(&w, conv2.o, x, filter, y, cols);
    naive_conv(FWD, &w, conv2.o, x, filter, NULL, want);
    cr_log_info("call %d, %d threads", call, 1 + call % 3);
    assert_close_to_largest(y, want, ny, CONV_REL, "conv2d");
  }
  for (int i = 0; i < FILTERS_IN_TURN; i++) free(f[i]);
  free(x), free(y), free(cols), free(want), free(other_x), free(other_y), free(other_cols),
      free(other_want);
}

/* Threads of the calling program that run batch-1 convolutions at once
 * share the process's cache of transformed filters: each call claims its
 * entry, and a call that finds an entry claimed transforms on its own. Three
 * threads, each going round two filters of its own and one that all of them
 * use (7 filters for 4 entries, so that entries are refitted while others
 * may use them), must each get the definition's outputs on every call. */
enum { CACHE_USERS = 3, CACHE_CALLS = 100 };
typedef struct {
  const flrt_window *w;
  const float *x, *own[2], *shared;
  const double *want_own[2], *want_shared;
  size_t ny;
  int wrong; /* calls whose outputs were off */
} cache_user;

/* assert_close_to_largest's test without asserting: the other threads only
 * count, and the test's own thread asserts on their counts. */
static bool close_to_largest(const float *got, const double *want, size_t n) {
  double largest = 1.0;
  for (size_t i = 0; i < n; i++) largest = fmax(largest, fabs(want[i]));
  for (size_t i = 0; i < n; i++)
    if (!(fabs(got[i] - want[i]) <= CONV_REL * largest)) return false;
  return true;
}

static void *use_cache(void *arg) {
  cache_user *u = arg;
  float *y = malloc(u->ny * sizeof *y), *cols = malloc(flrt_conv2d_scratch(u->w, 64) * sizeof *cols);
  for (int call = 0; call < CACHE_CALLS; call++) {
    const int which = call % 3; /* 2: the shared filter */
    flrt_conv2d(u->w, 64, u->x, which < 2 ? u->own[which] : u->shared, y, cols);
    if (!close_to_largest(y, which < 2 ? u->want_own[which] : u->want_shared, u->ny)) u->wrong++;
  }
  free(y), free(cols);
  return NULL;
}

Test(conv2d, winograd_cache_shared_by_threads, .timeout = 120) {
  static const conv_case conv2 = {1, 14, 14, 32, 5, 5, 1, 1, 64, true};
  lcg_state = 47;
  flrt_window w;
  init_case(&w, &conv2);
  const size_t ny = out_size(&w, conv2.o), nf = filter_size(&w, conv2.o);
  float *x = random_floats(image_size(&w)), *shared = random_floats(nf);
  double *want_shared = malloc(ny * sizeof *want_shared);
  naive_conv(FWD, &w, conv2.o, x, shared, NULL, want_shared);
  cache_user users[CACHE_USERS];
  pthread_t threads[CACHE_USERS];
  for (int t = 0; t < CACHE_USERS; t++) {
    users[t] = (cache_user){.w = &w, .x = x, .shared = shared, .want_shared = want_shared, .ny = ny};
    for (int f = 0; f < 2; f++) {
      float *own = random_floats(nf);
      double *want = malloc(ny * sizeof *want);
      naive_conv(FWD, &w, conv2.o, x, own, NULL, want);
      users[t].own[f] = own, users[t].want_own[f] = want;
    }
  }
  for (int t = 0; t < CACHE_USERS; t++) cr_assert_eq(pthread_create(&threads[t], NULL, use_cache, &users[t]), 0);
  for (int t = 0; t < CACHE_USERS; t++) {
    pthread_join(threads[t], NULL);
    cr_expect_eq(users[t].wrong, 0, "thread %d: %d of %d calls off", t, users[t].wrong, CACHE_CALLS);
    for (int f = 0; f < 2; f++) free((float *)users[t].own[f]), free((double *)users[t].want_own[f]);
  }
  free(x), free(shared), free(want_shared);
}

/* ---- flrt_sum_rows -------------------------------------------------------- */

/* Column sums over whole rows (widths under and over a block of 256
 * columns), threaded by runs of rows: close to the double-precision sum at
 * every thread count, and the same bits every time for one count. */
Test(sum_rows, matches_rows_added_in_order) {
  lcg_state = 31;
  const int64_t shapes[][2] = {{5000, 10}, {2000, 32}, {1500, 40}, {100, 1024}, {200, 300}, {3, 7}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int64_t rows = shapes[s][0], cols = shapes[s][1];
    float *in = random_floats((size_t)(rows * cols)), *got = random_floats((size_t)cols);
    float *again = random_floats((size_t)cols);
    double *want = calloc((size_t)cols, sizeof *want);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) want[c] += in[r * cols + c];
    for (int threads = 1; threads <= 3; threads++) {
#ifdef _OPENMP
      omp_set_num_threads(threads);
#endif
      flrt_sum_rows(in, rows, cols, got);
      cr_log_info("%lld x %lld, %d threads", (long long)rows, (long long)cols, threads);
      assert_close(got, want, (size_t)cols, 1e-4, "sum_rows");
      flrt_sum_rows(in, rows, cols, again);
      cr_assert(memcmp(got, again, (size_t)cols * sizeof *got) == 0, "the same sums twice");
    }
    free(in), free(got), free(again), free(want);
  }
}

/* ---- softmax cross-entropy ------------------------------------------------ */

static void naive_softmax_xent(int64_t rows, int64_t classes, const float *labels, const float *z, const float *dy,
                               double *loss, double *grad) {
  for (int64_t r = 0; r < rows; r++) {
    const float *zr = z + r * classes, *yr = labels + r * classes;
    double max = zr[0], sum = 0.0;
    for (int64_t c = 1; c < classes; c++) max = fmax(max, zr[c]);
    for (int64_t c = 0; c < classes; c++) sum += exp(zr[c] - max);
    loss[r] = 0.0;
    for (int64_t c = 0; c < classes; c++) {
      loss[r] -= yr[c] * (zr[c] - max - log(sum));
      grad[r * classes + c] = (exp(zr[c] - max) / sum - yr[c]) * dy[r];
    }
  }
}

/* Rows that fill no block, one, part of the next and several runs of
 * blocks; classes up to a vector's 16 (a block of rows transposed in
 * registers), up to the widest row turned into lanes and past it (the plain
 * loop); threads that start and end inside a block of 16 rows (500 x 10);
 * logits from -1 to 1 and spread over -100..100, where most exponentials
 * underflow. Labels are one-hot, or spread over the classes. Nothing is
 * written past the loss or the gradient. */
#define XENT_GUARD 16
Test(softmax_xent, matches_double_reference) {
  lcg_state = 41;
  const int64_t shapes[][2] = {{1, 10},  {15, 10}, {16, 10}, {17, 3},  {100, 10}, {130, 64},
                               {70, 65}, {9, 1},   {500, 10}, {33, 16}, {20, 2},   {40, 17}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int spread = 0; spread < 2; spread++) {
      const int64_t rows = shapes[s][0], classes = shapes[s][1];
      const size_t n = (size_t)(rows * classes);
      float *z = random_floats(n), *labels = calloc(n, sizeof *labels), *dy = random_floats((size_t)rows);
      float *loss = random_floats((size_t)rows + XENT_GUARD), *grad = random_floats(n + XENT_GUARD);
      float guard[XENT_GUARD];
      memcpy(guard, loss + rows, sizeof guard), memcpy(grad + n, guard, sizeof guard);
      float *alone_loss = random_floats((size_t)rows), *alone_grad = random_floats(n);
      double *want_loss = malloc((size_t)rows * sizeof *want_loss), *want_grad = malloc(n * sizeof *want_grad);
      cr_assert(labels && want_loss && want_grad);
      for (int64_t r = 0; r < rows; r++) {
        if (spread)
          for (int64_t c = 0; c < classes; c++) {
            z[r * classes + c] *= 100.0f;
            labels[r * classes + c] = 1.0f / (float)classes;
          }
        else
          labels[r * classes + (r * 7) % classes] = 1.0f;
      }
      naive_softmax_xent(rows, classes, labels, z, dy, want_loss, want_grad);
      for (int threads = 1; threads <= 3; threads++) {
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
        cr_log_info("%lld x %lld, logits x%d, %d threads", (long long)rows, (long long)classes, spread ? 100 : 1,
                    threads);
        flrt_softmax_xent(rows, classes, labels, z, dy, loss, grad);
        /* float throughout: a few ulp of the loss's terms (up to 200 here) */
        for (int64_t r = 0; r < rows; r++)
          cr_assert(fabs(loss[r] - want_loss[r]) <= 2e-6 * fmax(1.0, fabs(want_loss[r])) + (spread ? 3e-5 : 0.0),
                    "loss[%lld]: got %.8g, want %.8g", (long long)r, (double)loss[r], want_loss[r]);
        for (size_t i = 0; i < n; i++)
          cr_assert(fabs(grad[i] - want_grad[i]) <= 1e-6, "grad[%zu]: got %.8g, want %.8g", i, (double)grad[i],
                    want_grad[i]);
        cr_assert(memcmp(loss + rows, guard, sizeof guard) == 0 && memcmp(grad + n, guard, sizeof guard) == 0,
                  "written past the loss or the gradient");
        /* the unfused kernels ask for one output each: the same bits */
        flrt_softmax_xent(rows, classes, labels, z, NULL, alone_loss, NULL);
        flrt_softmax_xent(rows, classes, labels, z, dy, NULL, alone_grad);
        cr_assert(memcmp(alone_loss, loss, (size_t)rows * sizeof *loss) == 0, "the loss alone differs");
        cr_assert(memcmp(alone_grad, grad, n * sizeof *grad) == 0, "the gradient alone differs");
      }
      free(z), free(labels), free(dy), free(loss), free(grad), free(want_loss), free(want_grad);
      free(alone_loss), free(alone_grad);
    }
}
