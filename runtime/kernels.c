/* kernels.c - conv2d (im2col + sgemm), max_pool and tensor printing for generated programs. */
#include "flowc_rt.h"

#include <math.h>
#include <string.h>

#ifndef FLRT_NO_BLAS
#include <cblas.h>
#endif

/* ---- GEMM ------------------------------------------------------------------
 * C (m x n) = op(A) (m x k) @ op(B) (k x n), all row-major, alpha 1, beta 0.
 * op(A) is A^T when trans_a (then A is stored k x m), likewise for B. The
 * three convolution GEMMs are the only ones here, so this is the single place
 * that knows whether OpenBLAS is present. */

#ifdef FLRT_NO_BLAS
/* Plain loops for targets without OpenBLAS. The innermost loop always walks
 * contiguous memory: a row of B scaled into a row of C (i-k-j order, or k-i-j
 * when A is transposed, so that A too is read a row at a time), or a dot
 * product of two rows when B is transposed. */
static void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc, bool accumulate) {
  if (!trans_b) {
    if (!accumulate)
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
    if (trans_a) {
      for (int64_t p = 0; p < k; p++) {
        const float *arow = a + p * lda, *brow = b + p * ldb;
        for (int64_t i = 0; i < m; i++) {
          float *crow = c + i * ldc;
          for (int64_t j = 0; j < n; j++) crow[j] += arow[i] * brow[j];
        }
      }
    } else {
      for (int64_t i = 0; i < m; i++) {
        float *crow = c + i * ldc;
        for (int64_t p = 0; p < k; p++) {
          const float *brow = b + p * ldb;
          for (int64_t j = 0; j < n; j++) crow[j] += a[i * lda + p] * brow[j];
        }
      }
    }
    return;
  }
  for (int64_t i = 0; i < m; i++) {
    for (int64_t j = 0; j < n; j++) {
      const float *brow = b + j * ldb; /* row j of B is column j of B^T */
      float sum = 0.0f;
      for (int64_t p = 0; p < k; p++) sum += (trans_a ? a[p * lda + i] : a[i * lda + p]) * brow[p];
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
    }
  }
}
#else
static void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a,
                 int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc, bool accumulate) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n, (blasint)k, 1.0f, a,
              (blasint)lda, b, (blasint)ldb, accumulate ? 1.0f : 0.0f, c, (blasint)ldc);
}
#endif

/* memset with a length of 0 still wants a valid pointer; empty tensors may
 * come as NULL. */
static void zero(float *p, int64_t n) {
  if (n > 0) memset(p, 0, (size_t)n * sizeof *p);
}

/* BLAS rejects a leading dimension of 0 (and prints about it), so degenerate
 * shapes never reach gemm: an empty sum is just zeros. */
static bool degenerate(int64_t m, int64_t n, int64_t k, float *c) {
  if (m > 0 && n > 0 && k > 0) return false;
  zero(c, m * n);
  return true;
}

/* ---- windows ------------------------------------------------------------- */

void flrt_window_init(flrt_window *w, int64_t batch, int64_t in_h, int64_t in_w, int64_t in_c,
                      int64_t k_h, int64_t k_w, int64_t stride_h, int64_t stride_w, bool same) {
  w->batch = batch;
  w->in_h = in_h;
  w->in_w = in_w;
  w->in_c = in_c;
  w->k_h = k_h;
  w->k_w = k_w;
  w->stride_h = stride_h;
  w->stride_w = stride_w;
  if (same) {
    /* TensorFlow: out = ceil(in / stride); the padding that makes the last
     * window fit is split with the smaller half before the image. */
    w->out_h = (in_h + stride_h - 1) / stride_h;
    w->out_w = (in_w + stride_w - 1) / stride_w;
    int64_t pad_h = (w->out_h - 1) * stride_h + k_h - in_h;
    int64_t pad_w = (w->out_w - 1) * stride_w + k_w - in_w;
    w->pad_top = pad_h > 0 ? pad_h / 2 : 0;
    w->pad_left = pad_w > 0 ? pad_w / 2 : 0;
  } else {
    /* A window larger than the image gives an empty output rather than a
     * negative size (the compiler's shape check refuses it earlier). */
    w->out_h = in_h >= k_h ? (in_h - k_h) / stride_h + 1 : 0;
    w->out_w = in_w >= k_w ? (in_w - k_w) / stride_w + 1 : 0;
    w->pad_top = 0;
    w->pad_left = 0;
  }
}

/* The kw range [*lo, *hi) of a window row starting at image column iw0 that
 * falls inside the image; empty (lo == hi) when none does. */
static void inside_cols(const flrt_window *w, int64_t iw0, int64_t *lo, int64_t *hi) {
  int64_t l = iw0 < 0 ? -iw0 : 0, h = w->in_w - iw0;
  if (h > w->k_w) h = w->k_w;
  if (l > w->k_w) l = w->k_w;
  if (h < l) h = l;
  *lo = l;
  *hi = h;
}

/* Rows (positions) and columns (window entries) of the im2col matrix. */
static int64_t window_rows(const flrt_window *w) { return w->batch * w->out_h * w->out_w; }
static int64_t window_cols(const flrt_window *w) { return w->k_h * w->k_w * w->in_c; }

/* A 1x1 window with stride 1 and no padding reads each pixel exactly once in
 * order, so x itself is the im2col matrix and the copy can be skipped. */
static bool is_pointwise(const flrt_window *w) {
  return w->k_h == 1 && w->k_w == 1 && w->stride_h == 1 && w->stride_w == 1 && w->pad_top == 0 &&
         w->pad_left == 0 && w->out_h == w->in_h && w->out_w == w->in_w;
}

void flrt_im2col(const flrt_window *w, const float *x, float *cols) {
  const int64_t C = w->in_c;
  const int64_t krow = w->k_w * C; /* one window row: k_w pixels of C channels */
  float *dst = cols;
  for (int64_t n = 0; n < w->batch; n++) {
    const float *img = x + n * w->in_h * w->in_w * C;
    for (int64_t oh = 0; oh < w->out_h; oh++) {
      for (int64_t ow = 0; ow < w->out_w; ow++) {
        for (int64_t kh = 0; kh < w->k_h; kh++, dst += krow) {
          int64_t ih = oh * w->stride_h + kh - w->pad_top;
          if (ih < 0 || ih >= w->in_h) {
            zero(dst, krow);
            continue;
          }
          int64_t iw0 = ow * w->stride_w - w->pad_left;
          /* Copy the part of the window row inside the image in one go; only
           * the edges of the image need the per-pixel zeros. */
          int64_t lo, hi;
          inside_cols(w, iw0, &lo, &hi);
          zero(dst, lo * C);
          if (hi > lo)
            memcpy(dst + lo * C, img + (ih * w->in_w + iw0 + lo) * C,
                   (size_t)((hi - lo) * C) * sizeof *dst);
          zero(dst + hi * C, (w->k_w - hi) * C);
        }
      }
    }
  }
}

void flrt_col2im(const flrt_window *w, const float *cols, float *dx) {
  const int64_t C = w->in_c;
  zero(dx, w->batch * w->in_h * w->in_w * C);
  const float *src = cols;
  for (int64_t n = 0; n < w->batch; n++) {
    float *img = dx + n * w->in_h * w->in_w * C;
    for (int64_t oh = 0; oh < w->out_h; oh++) {
      for (int64_t ow = 0; ow < w->out_w; ow++) {
        for (int64_t kh = 0; kh < w->k_h; kh++, src += w->k_w * C) {
          int64_t ih = oh * w->stride_h + kh - w->pad_top;
          if (ih < 0 || ih >= w->in_h) continue; /* padding: the gradient goes nowhere */
          int64_t iw0 = ow * w->stride_w - w->pad_left;
          int64_t lo, hi;
          inside_cols(w, iw0, &lo, &hi);
          if (hi == lo) continue;
          /* Inside the image the window row is contiguous in dx too. */
          float *d = img + (ih * w->in_w + iw0 + lo) * C;
          const float *s = src + lo * C;
          for (int64_t i = 0; i < (hi - lo) * C; i++) d[i] += s[i];
        }
      }
    }
  }
}

/* ---- conv2d -------------------------------------------------------------- */

/* im2col works on a chunk of images at a time, so that its matrix (which the
 * GEMM reads right after) stays near the cache's size instead of the whole
 * batch's: 31 MiB for Deep MNIST's second layer at batch 50, 3.7 MiB per chunk. */
#define CONV_CHUNK_FLOATS ((int64_t)1 << 20)

int64_t flrt_conv2d_chunk(const flrt_window *w) {
  const int64_t per_image = w->out_h * w->out_w * window_cols(w);
  int64_t chunk = per_image > 0 ? CONV_CHUNK_FLOATS / per_image : w->batch;
  if (chunk < 1) chunk = 1;
  return chunk < w->batch ? chunk : w->batch;
}

size_t flrt_conv2d_scratch(const flrt_window *w) {
  /* The pointwise case works on x, dx and the outputs directly. */
  if (is_pointwise(w)) return 0;
  return (size_t)(flrt_conv2d_chunk(w) * w->out_h * w->out_w * window_cols(w));
}

/* One chunk of a window's batch: images [first, first + part.batch). */
typedef struct {
  int64_t first, size;
  flrt_window part;
} conv_chunk;

/* Steps c to the next chunk of w's batch (start from a zeroed conv_chunk). */
static bool next_chunk(const flrt_window *w, conv_chunk *c) {
  if (c->size == 0) c->size = flrt_conv2d_chunk(w);
  else c->first += c->size;
  if (c->first >= w->batch) return false;
  c->part = *w;
  c->part.batch = w->batch - c->first < c->size ? w->batch - c->first : c->size;
  return true;
}

void flrt_conv2d(const flrt_window *w, int64_t out_c, const float *x, const float *filter,
                 float *out, float *cols) {
  const int64_t K = window_cols(w), O = out_c;
  if (degenerate(window_rows(w), O, K, out)) return;
  if (is_pointwise(w)) {
    gemm(false, false, window_rows(w), O, K, x, K, filter, O, out, O, false);
    return;
  }
  /* out (P x O) = cols (P x K) @ filter (K x O): HWIO is already K x O. */
  const int64_t image_in = w->in_h * w->in_w * w->in_c, image_rows = w->out_h * w->out_w;
  for (conv_chunk c = {0}; next_chunk(w, &c);) {
    flrt_im2col(&c.part, x + c.first * image_in, cols);
    gemm(false, false, c.part.batch * image_rows, O, K, cols, K, filter, O, out + c.first * image_rows * O, O,
         false);
  }
}

void flrt_conv2d_grad_input(const flrt_window *w, int64_t out_c, const float *dy,
                            const float *filter, float *dx, float *cols) {
  const int64_t P = window_rows(w), K = window_cols(w), O = out_c;
  if (is_pointwise(w)) {
    /* dx is laid out exactly like dcols here, so the GEMM writes it. */
    if (!degenerate(P, K, O, dx)) gemm(false, true, P, K, O, dy, O, filter, O, dx, K, false);
    return;
  }
  if (P <= 0 || K <= 0 || O <= 0) {
    zero(dx, w->batch * w->in_h * w->in_w * w->in_c);
    return;
  }
  /* dcols (P x K) = dy (P x O) @ filter^T (O x K), then scatter back, a chunk
   * of images at a time (col2im zeroes its chunk of dx first). */
  const int64_t image_in = w->in_h * w->in_w * w->in_c, image_rows = w->out_h * w->out_w;
  for (conv_chunk c = {0}; next_chunk(w, &c);) {
    gemm(false, true, c.part.batch * image_rows, K, O, dy + c.first * image_rows * O, O, filter, O, cols, K, false);
    flrt_col2im(&c.part, cols, dx + c.first * image_in);
  }
}

void flrt_conv2d_grad_filter(const flrt_window *w, int64_t out_c, const float *x,
                             const float *dy, float *dfilter, float *cols) {
  const int64_t P = window_rows(w), K = window_cols(w), O = out_c;
  if (degenerate(K, O, P, dfilter)) return;
  if (is_pointwise(w)) {
    gemm(true, false, K, O, P, x, K, dy, O, dfilter, O, false);
    return;
  }
  /* dfilter (K x O) = sum over chunks of cols^T (K x rows) @ dy (rows x O). */
  const int64_t image_in = w->in_h * w->in_w * w->in_c, image_rows = w->out_h * w->out_w;
  for (conv_chunk c = {0}; next_chunk(w, &c);) {
    flrt_im2col(&c.part, x + c.first * image_in, cols);
    gemm(true, false, K, O, c.part.batch * image_rows, cols, K, dy + c.first * image_rows * O, O, dfilter, O,
         c.first > 0);
  }
}

/* ---- max_pool ------------------------------------------------------------ */

/* Channels run innermost in NHWC, over contiguous memory: each window cell
 * updates all channels at once, which the compiler turns into vector max and
 * blend instructions. Padding cells are skipped rather than read as 0, so they
 * never win (as -inf would not). */
void flrt_max_pool(const flrt_window *w, const float *x, float *out) {
  const int64_t C = w->in_c;
  float *dst = out;
  for (int64_t n = 0; n < w->batch; n++) {
    const float *img = x + n * w->in_h * w->in_w * C;
    for (int64_t oh = 0; oh < w->out_h; oh++) {
      for (int64_t ow = 0; ow < w->out_w; ow++, dst += C) {
        float *restrict best = dst;
        for (int64_t c = 0; c < C; c++) best[c] = -INFINITY;
        for (int64_t kh = 0; kh < w->k_h; kh++) {
          int64_t ih = oh * w->stride_h + kh - w->pad_top;
          if (ih < 0 || ih >= w->in_h) continue;
          for (int64_t kw = 0; kw < w->k_w; kw++) {
            int64_t iw = ow * w->stride_w + kw - w->pad_left;
            if (iw < 0 || iw >= w->in_w) continue;
            const float *restrict px = img + (ih * w->in_w + iw) * C;
            for (int64_t c = 0; c < C; c++) best[c] = px[c] > best[c] ? px[c] : best[c];
          }
        }
      }
    }
  }
}

/* Channels per pass of the gradient: the running maxima and their positions
 * live in small stack arrays. */
#define POOL_CHANNEL_BLOCK 256

void flrt_max_pool_grad(const flrt_window *w, const float *x, const float *dy, float *dx) {
  const int64_t C = w->in_c;
  zero(dx, w->batch * w->in_h * w->in_w * C);
  float best[POOL_CHANNEL_BLOCK];
  int64_t where[POOL_CHANNEL_BLOCK];
  for (int64_t n = 0; n < w->batch; n++) {
    const int64_t base = n * w->in_h * w->in_w * C;
    for (int64_t oh = 0; oh < w->out_h; oh++) {
      for (int64_t ow = 0; ow < w->out_w; ow++) {
        const float *g = dy + ((n * w->out_h + oh) * w->out_w + ow) * C;
        for (int64_t c0 = 0; c0 < C; c0 += POOL_CHANNEL_BLOCK) {
          const int64_t width = C - c0 < POOL_CHANNEL_BLOCK ? C - c0 : POOL_CHANNEL_BLOCK;
          for (int64_t c = 0; c < width; c++) {
            best[c] = -INFINITY;
            where[c] = -1;
          }
          /* Only strictly greater replaces, visiting the window in (kh, kw)
           * order, so ties go to the first maximum, as TensorFlow's CPU kernel
           * does. */
          for (int64_t kh = 0; kh < w->k_h; kh++) {
            int64_t ih = oh * w->stride_h + kh - w->pad_top;
            if (ih < 0 || ih >= w->in_h) continue;
            for (int64_t kw = 0; kw < w->k_w; kw++) {
              int64_t iw = ow * w->stride_w + kw - w->pad_left;
              if (iw < 0 || iw >= w->in_w) continue;
              const int64_t at = base + (ih * w->in_w + iw) * C + c0;
              const float *px = x + at;
              for (int64_t c = 0; c < width; c++) {
                const int greater = px[c] > best[c] || where[c] < 0;
                best[c] = greater ? px[c] : best[c];
                where[c] = greater ? at + c : where[c];
              }
            }
          }
          for (int64_t c = 0; c < width; c++)
            if (where[c] >= 0) dx[where[c]] += g[c0 + c]; /* overlapping windows accumulate */
        }
      }
    }
  }
}

/* ---- printing ------------------------------------------------------------ */

/* Nested brackets for dims[0..rank), values space-separated at every level. */
static const float *print_nested(FILE *out, const float *data, int rank, const int64_t *dims) {
  fputc('[', out);
  for (int64_t i = 0; i < dims[0]; i++) {
    if (i) fputc(' ', out);
    if (rank == 1)
      fprintf(out, "%g", (double)*data++);
    else
      data = print_nested(out, data, rank - 1, dims + 1);
  }
  fputc(']', out);
  return data;
}

void flrt_print_tensor(FILE *out, const float *data, int rank, const int64_t *dims) {
  if (rank <= 0) {
    fprintf(out, "%g", (double)data[0]);
    return;
  }
  int64_t count = 1;
  for (int i = 0; i < rank; i++) count *= dims[i];
  if (count <= 1000) {
    print_nested(out, data, rank, dims);
    return;
  }
  /* Too many to read: like numpy's summary, the ends of the flat data only,
   * in a single pair of brackets whatever the rank. */
  fputc('[', out);
  for (int64_t i = 0; i < 6; i++) fprintf(out, "%s%g", i ? " " : "", (double)data[i]);
  fputs(" ...", out);
  for (int64_t i = count - 3; i < count; i++) fprintf(out, " %g", (double)data[i]);
  fputc(']', out);
}
