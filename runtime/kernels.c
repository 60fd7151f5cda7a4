/* kernels.c - conv2d (im2col + sgemm), max_pool and tensor printing for generated programs. */
#include "flowc_rt.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef FLRT_NO_BLAS
#include <cblas.h>
#endif
#ifdef __AVX512F__
#include <immintrin.h> /* masked loads and stores of part of a vector */
#endif

/* The direct loops work on blocks of PIXELS output pixels (of one output
 * row) x FILTERS filters, whose accumulators stay in registers while the
 * window is walked: each filter row is loaded once for PIXELS products, each
 * input value broadcast once for FILTERS. 8 x 32 takes 16 of AVX-512's 32
 * vector registers; 6 x 16 takes 12 of AVX2's 16. Filters beyond the last
 * whole block, and images narrower than a block, take plain loops. */
#ifdef __AVX512F__
#define VEC 16
#define PIXELS 8
#else
#define VEC 8
#define PIXELS 6
#endif
#define FILTER_VECS 2
#define FILTERS (VEC * FILTER_VECS)

/* VEC floats as one value: GCC and Clang keep it in a vector register on
 * every target (or split it), where their vectorizer mangles the same loops
 * written with arrays. Other compilers get plain loops. */
#ifdef __GNUC__
typedef float vec __attribute__((vector_size(VEC * sizeof(float))));
/* The same, at any float's address: loads and stores through it keep the
 * accumulators in registers, where memcpy into and out of them made GCC
 * spill all of them to the stack on every step (twice the time). Macros, not
 * functions: a vector passed by value would change the ABI on targets without
 * the vector unit. */
typedef float unaligned_vec __attribute__((vector_size(VEC * sizeof(float)), aligned(sizeof(float)), may_alias));
#define LOAD_VEC(p) (*(const unaligned_vec *)(p))
#define STORE_VEC(p, v) (*(unaligned_vec *)(p) = (v))
/* What comparing two vecs gives: all bits set where true. */
typedef int32_t mask __attribute__((vector_size(VEC * sizeof(float))));
#define DIRECT_BLOCKS 1
#else
#define DIRECT_BLOCKS 0
#endif

/* AVX-512 vectors rearranged by constant lane lists (the ten-column GEMMs,
 * the softmax of a classifier): GCC 12 and Clang have the builtin. */
#if VEC == 16 && (defined(__clang__) || __GNUC__ >= 12)
#define SHUFFLE_16 1
/* r[0..16) transposed in registers (row i's lane j to row j's lane i). A
 * level swaps the off-diagonal blocks of side `side` in every pair of rows
 * side apart; four levels transpose. */
#define RUN4(s) (s), (s) + 1, (s) + 2, (s) + 3
#define UPPER_8(u, l) __builtin_shufflevector(u, l, RUN4(0), RUN4(4), RUN4(16), RUN4(20))
#define LOWER_8(u, l) __builtin_shufflevector(u, l, RUN4(8), RUN4(12), RUN4(24), RUN4(28))
#define UPPER_4(u, l) __builtin_shufflevector(u, l, RUN4(0), RUN4(16), RUN4(8), RUN4(24))
#define LOWER_4(u, l) __builtin_shufflevector(u, l, RUN4(4), RUN4(20), RUN4(12), RUN4(28))
#define UPPER_2(u, l) __builtin_shufflevector(u, l, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
#define LOWER_2(u, l) __builtin_shufflevector(u, l, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31)
#define UPPER_1(u, l) __builtin_shufflevector(u, l, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
#define LOWER_1(u, l) __builtin_shufflevector(u, l, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31)
#define TRANSPOSE_LEVEL(r, side)                                \
  for (int row = 0; row < VEC; row++)                           \
    if (!(row & side)) {                                        \
      const vec upper = r[row], lower = r[row + side];          \
      r[row] = UPPER_##side(upper, lower);                      \
      r[row + side] = LOWER_##side(upper, lower);               \
    }
static inline void transpose_16(vec *r) {
  TRANSPOSE_LEVEL(r, 8)
  TRANSPOSE_LEVEL(r, 4)
  TRANSPOSE_LEVEL(r, 2)
  TRANSPOSE_LEVEL(r, 1)
}
#else
#define SHUFFLE_16 0
#endif

/* ---- GEMM ------------------------------------------------------------------
 * C (m x n) = op(A) (m x k) @ op(B) (k x n), all row-major, alpha 1; beta 1
 * when accumulating, else 0. op(A) is A^T when trans_a (then A is stored
 * k x m), likewise for B. The one place that knows whether OpenBLAS is
 * present: the convolutions and the generated matmuls call it. */

#ifdef FLRT_NO_BLAS
/* Plain loops for targets without OpenBLAS. The innermost loop always walks
 * contiguous memory: a row of B scaled into a row of C (i-k-j order, or k-i-j
 * when A is transposed, so that A too is read a row at a time), or a dot
 * product of two rows when B is transposed. */
static void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  if (!trans_b) {
    if (!accumulate)
      for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
    if (trans_a) {
      for (int64_t p = 0; p < k; p++) {
        const float *arow = a + p * lda, *brow = b + p * ldb;
        for (int64_t i = 0; i < m; i++) {
          float *crow = c + i * ldc;
          for (int64_t j = 0; j < n; j++) crow[j] += alpha * arow[i] * brow[j];
        }
      }
    } else {
      for (int64_t i = 0; i < m; i++) {
        float *crow = c + i * ldc;
        for (int64_t p = 0; p < k; p++) {
          const float *brow = b + p * ldb;
          for (int64_t j = 0; j < n; j++) crow[j] += alpha * a[i * lda + p] * brow[j];
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
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + alpha * sum : alpha * sum;
    }
  }
}
#else
/* Column splitting (below) pays from these sizes on. */
#define SPLIT_MAX_ROWS 512
#define SPLIT_MIN_COLUMNS 128
#define SPLIT_MIN_MACS ((int64_t)1 << 22)
/* A GEMM of many rows and a short sum (a fully connected layer's weight
 * gradient: 3136 x 1024 over 50 examples) is split by rows instead. */
#define SPLIT_MAX_DEPTH 256

#if DIRECT_BLOCKS
/* A classifier's GEMMs have outputs at most NARROW_COLUMNS wide (10 classes)
 * against a long sum (logits = x W) or many rows (the weight gradient x^T
 * dlogits). OpenBLAS packs both matrices for a few microseconds of work (19
 * and 14 us of the softmax regression step's 40); these loops pack nothing.
 * Blocks of rows and columns keep their accumulators in registers; rows and
 * columns past the end repeat the last one and are not stored. */
#define NARROW_COLUMNS 16
#define NARROW_ROWS 4
#define NARROW_BLOCK_COLUMNS 5
#define NARROW_VECS 4
/* Threads pay from this many multiply-adds on (some microseconds' work). */
#define NARROW_THREADS_MIN_MACS ((int64_t)1 << 17)
/* The most partial sums (outputs x threads) of a split sum: 32 KiB of stack. */
#define NARROW_SPLIT_SUM_FLOATS 8192

static float sum_lanes(const vec *v) {
  float sum = 0.0f;
  for (int l = 0; l < VEC; l++) sum += (*v)[l];
  return sum;
}

/* c (+)= alpha * value: alpha is 1, or minus a learning rate when the sum is
 * a gradient that updates c in place. */
static void store_or_add(float *c, float alpha, float value, bool accumulate) {
  *c = accumulate ? *c + alpha * value : alpha * value;
}

/* c[0..count) (+)= alpha * the sum of the used partials, stride apart, in
 * thread order (the same result for one thread count): the threads' partial
 * sums of a split sum meeting. A vector at a time: the scalar loop took
 * 0.75 us of the softmax regression logits' 8. */
static void add_partials(int used, int64_t stride, const float *partial, int64_t count, float alpha, float *c,
                         bool accumulate) {
  int64_t e = 0;
  for (; e + VEC <= count; e += VEC) {
    vec sum = LOAD_VEC(partial + e);
    for (int u = 1; u < used; u++) sum += LOAD_VEC(partial + u * stride + e);
    STORE_VEC(c + e, accumulate ? (vec)LOAD_VEC(c + e) + alpha * sum : alpha * sum);
  }
  for (; e < count; e++) {
    float sum = partial[e];
    for (int u = 1; u < used; u++) sum += partial[u * stride + e];
    store_or_add(c + e, alpha, sum, accumulate);
  }
}

/* c[i][j] (+)= sum_p a[i][p] bt[j][p] for rows [i0, i1) and all n columns:
 * dot products of contiguous rows, the remainder of k in plain loops. */
static void narrow_dots(int64_t i0, int64_t i1, int64_t n, int64_t k, const float *a, int64_t lda, const float *bt,
                        int64_t ldbt, float alpha, float *c, int64_t ldc, bool accumulate) {
  for (int64_t i = i0; i < i1; i += NARROW_ROWS)
    for (int64_t j = 0; j < n; j += NARROW_BLOCK_COLUMNS) {
      const float *arow[NARROW_ROWS], *brow[NARROW_BLOCK_COLUMNS];
      for (int r = 0; r < NARROW_ROWS; r++) arow[r] = a + (i + r < i1 ? i + r : i1 - 1) * lda;
      for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++) brow[q] = bt + (j + q < n ? j + q : n - 1) * ldbt;
      vec acc[NARROW_ROWS][NARROW_BLOCK_COLUMNS];
      for (int r = 0; r < NARROW_ROWS; r++)
        for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++) acc[r][q] = (vec){0};
      int64_t p = 0;
      for (; p + VEC <= k; p += VEC) {
        vec av[NARROW_ROWS], bv[NARROW_BLOCK_COLUMNS];
        for (int r = 0; r < NARROW_ROWS; r++) av[r] = LOAD_VEC(arow[r] + p);
        for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++) bv[q] = LOAD_VEC(brow[q] + p);
        for (int r = 0; r < NARROW_ROWS; r++)
          for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++) acc[r][q] += av[r] * bv[q];
      }
      for (int r = 0; r < NARROW_ROWS && i + r < i1; r++)
        for (int q = 0; q < NARROW_BLOCK_COLUMNS && j + q < n; q++) {
          float sum = sum_lanes(&acc[r][q]);
          for (int64_t t = p; t < k; t++) sum += arow[r][t] * brow[q][t];
          store_or_add(c + (i + r) * ldc + j + q, alpha, sum, accumulate);
        }
    }
}

/* c[i][0..n) (+)= sum_p a[i][p] b[p][0..n) for rows [i0, i1), n at most
 * vecs * VEC: each row of B is loaded as whole vectors, lanes past n reading
 * into the next row and thrown away; the last rows, whose vectors would
 * reach past the end of B, go through a zero-padded copy. */
#ifdef __AVX512F__
#define NARROW_ROW_BLOCK 10 /* 100 rows: 50 a thread in 5 whole blocks */
#else
#define NARROW_ROW_BLOCK 6 /* 12 accumulators for 16 columns, of 16 registers */
#endif

/* The first rows of B (k rows ldb apart, n used) whose vecs vectors end
 * inside B; the rows from there on are read through padded_row. */
static int64_t whole_vector_rows(int vecs, int64_t n, int64_t k, int64_t ldb) {
  if ((k - 1) * ldb + n < vecs * VEC) return 0;
  const int64_t last_safe = ((k - 1) * ldb + n - vecs * VEC) / ldb;
  return last_safe + 1 < k ? last_safe + 1 : k;
}

/* Row p of B, or its n values copied into padded (2 * VEC floats, zero past
 * n) when its vectors would reach past B's end. */
static const float *padded_row(const float *b, int64_t ldb, int64_t p, int64_t n, int64_t safe_rows, float *padded) {
  if (p < safe_rows) return b + p * ldb;
  memcpy(padded, b + p * ldb, (size_t)n * sizeof *padded);
  return padded;
}

static inline void narrow_rows(int vecs, int64_t i0, int64_t i1, int64_t n, int64_t k, const float *a, int64_t lda,
                               const float *b, int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  const int64_t safe_rows = whole_vector_rows(vecs, n, k, ldb);
  for (int64_t i = i0; i < i1; i += NARROW_ROW_BLOCK) {
    const float *arow[NARROW_ROW_BLOCK];
    for (int r = 0; r < NARROW_ROW_BLOCK; r++) arow[r] = a + (i + r < i1 ? i + r : i1 - 1) * lda;
    vec acc[NARROW_ROW_BLOCK][2];
    for (int r = 0; r < NARROW_ROW_BLOCK; r++)
      for (int v = 0; v < vecs; v++) acc[r][v] = (vec){0};
    float padded[2 * VEC] = {0};
    for (int64_t p = 0; p < k; p++) {
      const float *brow = padded_row(b, ldb, p, n, safe_rows, padded);
      vec bv[2];
      for (int v = 0; v < vecs; v++) bv[v] = LOAD_VEC(brow + v * VEC);
      for (int r = 0; r < NARROW_ROW_BLOCK; r++) {
        const float x = arow[r][p];
        for (int v = 0; v < vecs; v++) acc[r][v] += x * bv[v];
      }
    }
    for (int r = 0; r < NARROW_ROW_BLOCK && i + r < i1; r++)
      for (int64_t j = 0; j < n; j++) store_or_add(c + (i + r) * ldc + j, alpha, acc[r][j / VEC][j % VEC], accumulate);
  }
}

#if SHUFFLE_16
/* Ten classes fill 10 of a row of B's 16 lanes. Three rows of B, five
 * columns each, fill 15: lanes 5s..5s+4 hold row p+s's columns 0-4 (or 5-9,
 * the second vector), and the matching value of a's row goes to each run of
 * five lanes by one permute. Two multiply-adds then do for three rows of B
 * what took three, and the permutes run beside them (the softmax regression
 * step's logits: 0.61 us down to 0.45 for 10 rows of a). A block is 15 rows
 * of B, the five triples that one 16-float load of a's row covers; blocks
 * stop where that load or B's, 2 floats past each triple, would leave the
 * rows given, and narrow_rows adds the rest.
 * B's triples are arranged once into a panel on the stack, not again for
 * every block of rows of a, and a row's three runs of sums are added as
 * vectors: 5.7 us down to 5.1 for 100 x 10 x 392 (half the logits' sum). */
#define TRIPLE_BLOCK 15
#define TRIPLE_ROWS 8 /* 16 accumulators, 8 of a's rows: 10 spilled them */
#define TRIPLE_PANEL 255 /* triples: 765 rows of B, 32 KiB */
#define SPREAD(x, s) \
  __builtin_shufflevector(x, x, s, s, s, s, s, s + 1, s + 1, s + 1, s + 1, s + 1, s + 2, s + 2, s + 2, s + 2, s + 2, s)

static void ten_columns_by_triples(int64_t i0, int64_t i1, int64_t k, const float *a, int64_t lda, const float *b,
                                   float alpha, float *c, int64_t ldc, bool accumulate) {
  const int64_t blocks_end = k < TRIPLE_BLOCK + 1 ? 0 : (k - 1) / TRIPLE_BLOCK * TRIPLE_BLOCK;
  vec panel[2 * TRIPLE_PANEL];
  for (int64_t p0 = 0; p0 < blocks_end; p0 += 3 * TRIPLE_PANEL) {
    const int64_t p1 = blocks_end - p0 < 3 * TRIPLE_PANEL ? blocks_end : p0 + 3 * TRIPLE_PANEL;
    for (int64_t t = 0; t < (p1 - p0) / 3; t++) {
      const vec lo = LOAD_VEC(b + (p0 + 3 * t) * 10), hi = LOAD_VEC(b + (p0 + 3 * t) * 10 + VEC);
      panel[2 * t] = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 15);
      panel[2 * t + 1] = __builtin_shufflevector(lo, hi, 5, 6, 7, 8, 9, 15, 16, 17, 18, 19, 25, 26, 27, 28, 29, 15);
    }
    for (int64_t i = i0; i < i1; i += TRIPLE_ROWS) {
      const float *arow[TRIPLE_ROWS];
      for (int r = 0; r < TRIPLE_ROWS; r++) arow[r] = a + (i + r < i1 ? i + r : i1 - 1) * lda;
      vec acc[TRIPLE_ROWS][2];
      for (int r = 0; r < TRIPLE_ROWS; r++) acc[r][0] = acc[r][1] = (vec){0};
      for (int64_t p = p0; p < p1; p += TRIPLE_BLOCK) {
        const vec *triples = panel + 2 * (p - p0) / 3;
        for (int u = 0; u < TRIPLE_BLOCK / 3; u++) {
          const vec first = triples[2 * u], second = triples[2 * u + 1];
          for (int r = 0; r < TRIPLE_ROWS; r++) {
            const vec x = LOAD_VEC(arow[r] + p);
            vec spread;
            switch (u) { /* constant lanes for the permute */
            case 0: spread = SPREAD(x, 0); break;
            case 1: spread = SPREAD(x, 3); break;
            case 2: spread = SPREAD(x, 6); break;
            case 3: spread = SPREAD(x, 9); break;
            default: spread = SPREAD(x, 12); break;
            }
            acc[r][0] += spread * first, acc[r][1] += spread * second;
          }
        }
      }
      /* Lane 15 held a's value times B's 16th float of the triple: dropped. */
      for (int r = 0; r < TRIPLE_ROWS && i + r < i1; r++) {
        const vec sums =
            __builtin_shufflevector(acc[r][0], acc[r][1], 0, 1, 2, 3, 4, 16, 17, 18, 19, 20, 15, 15, 15, 15, 15, 15) +
            __builtin_shufflevector(acc[r][0], acc[r][1], 5, 6, 7, 8, 9, 21, 22, 23, 24, 25, 15, 15, 15, 15, 15, 15) +
            __builtin_shufflevector(acc[r][0], acc[r][1], 10, 11, 12, 13, 14, 26, 27, 28, 29, 30, 15, 15, 15, 15, 15, 15);
        for (int j = 0; j < 10; j++) store_or_add(c + (i + r) * ldc + j, alpha, sums[j], accumulate || p0 > 0);
      }
    }
  }
  if (blocks_end < k)
    narrow_rows(1, i0, i1, 10, k - blocks_end, a + blocks_end, lda, b + blocks_end * 10, 10, alpha, c, ldc, true);
}
#endif

/* narrow_rows with the vectors n needs, each count compiled on its own. */
static void narrow_rows_of(int64_t i0, int64_t i1, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                           int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
#if SHUFFLE_16
  if (n == 10 && ldb == 10 && k > TRIPLE_BLOCK) {
    ten_columns_by_triples(i0, i1, k, a, lda, b, alpha, c, ldc, accumulate);
    return;
  }
#endif
  if (n <= VEC) narrow_rows(1, i0, i1, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
  else narrow_rows(2, i0, i1, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
}

/* c[0..n) (+)= alpha * sum_p a[p * a_step] b[p][0..n): one row (batch-1
 * logits), where OpenBLAS's sgemv took 3 to 5 us for 1 x 1024 x 10, most of
 * it waking its threads. Four sums run interleaved so that each multiply-add
 * need not wait for the one before; B's rows are read as in narrow_rows. */
static void narrow_one_row(int vecs, int64_t n, int64_t k, const float *a, int64_t a_step, const float *b,
                           int64_t ldb, float alpha, float *c, bool accumulate) {
  const int64_t safe_rows = whole_vector_rows(vecs, n, k, ldb);
  vec acc[4][2] = {{{0}}};
  int64_t p = 0;
  for (; p + 4 <= safe_rows; p += 4)
    for (int u = 0; u < 4; u++)
      for (int v = 0; v < vecs; v++) acc[u][v] += a[(p + u) * a_step] * LOAD_VEC(b + (p + u) * ldb + v * VEC);
  float padded[2 * VEC] = {0};
  for (; p < k; p++) {
    const float *brow = padded_row(b, ldb, p, n, safe_rows, padded);
    for (int v = 0; v < vecs; v++) acc[0][v] += a[p * a_step] * LOAD_VEC(brow + v * VEC);
  }
  for (int v = 0; v < vecs; v++) acc[0][v] = (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]);
  for (int64_t j = 0; j < n; j++) store_or_add(c + j, alpha, acc[0][j / VEC][j % VEC], accumulate);
}

/* One row against a wide B (a fully connected layer at batch 1: 1 x 3136
 * times 3136 x 1024) reads B once and does little else: 12.8 MB of weights,
 * which a plain read takes 59-64 us to stream on two threads. OpenBLAS's
 * sgemv splits the columns, so every thread reads pieces of every row 4 KiB
 * apart (75-98 us). Here each thread reads its own contiguous run of rows,
 * four at a time, into sums of all n columns that stay in L1 (67 us), and
 * the threads' sums meet at the end. */
#define WIDE_ROW_MIN_COLUMNS 64
/* The sums of all threads on the calling thread's stack: 32 KiB. */
#define WIDE_ROW_SUM_FLOATS 8192

/* sums[0..n) = sum over rows p in [p0, p1) of a[p * a_step] b[p][0..n). */
static void wide_row_part(int64_t p0, int64_t p1, int64_t n, const float *a, int64_t a_step, const float *b,
                          int64_t ldb, float *sums) {
  memset(sums, 0, (size_t)n * sizeof *sums);
  int64_t p = p0;
  for (; p + 4 <= p1; p += 4) {
    const float *r0 = b + p * ldb, *r1 = r0 + ldb, *r2 = r1 + ldb, *r3 = r2 + ldb;
    const float x0 = a[p * a_step], x1 = a[(p + 1) * a_step], x2 = a[(p + 2) * a_step], x3 = a[(p + 3) * a_step];
    int64_t j = 0;
    for (; j + VEC <= n; j += VEC)
      STORE_VEC(sums + j, (vec)LOAD_VEC(sums + j) + ((x0 * (vec)LOAD_VEC(r0 + j) + x1 * (vec)LOAD_VEC(r1 + j)) +
                                                      (x2 * (vec)LOAD_VEC(r2 + j) + x3 * (vec)LOAD_VEC(r3 + j))));
    for (; j < n; j++) sums[j] += (x0 * r0[j] + x1 * r1[j]) + (x2 * r2[j] + x3 * r3[j]);
  }
  for (; p < p1; p++)
    for (int64_t j = 0; j < n; j++) sums[j] += a[p * a_step] * b[p * ldb + j];
}

/* Thread t of used: its share of the rows into its own sums, then, once all
 * are there, its share of the columns of c. */
static void wide_row_thread(int t, int used, int64_t n, int64_t k, const float *a, int64_t a_step, const float *b,
                            int64_t ldb, float alpha, float *c, bool accumulate, float *sums) {
  wide_row_part(k * t / used, k * (t + 1) / used, n, a, a_step, b, ldb, sums + t * n);
  FLRT_OMP(omp barrier)
  const int64_t j0 = n * t / used, j1 = n * (t + 1) / used;
  add_partials(used, n, sums + j0, j1 - j0, alpha, c + j0, accumulate);
}

static void wide_row(int64_t n, int64_t k, const float *a, int64_t a_step, const float *b, int64_t ldb, float alpha,
                     float *c, bool accumulate) {
  float sums[WIDE_ROW_SUM_FLOATS];
#ifdef _OPENMP
  int threads = 1;
  if (!omp_in_parallel() && n * k >= FLRT_PARALLEL_MIN) threads = omp_get_max_threads();
  if (threads * n > WIDE_ROW_SUM_FLOATS) threads = (int)(WIDE_ROW_SUM_FLOATS / n);
  if (threads > 1) {
    FLRT_OMP(omp parallel num_threads(threads))
    wide_row_thread(omp_get_thread_num(), omp_get_num_threads(), n, k, a, a_step, b, ldb, alpha, c, accumulate, sums);
    return;
  }
#endif
  wide_row_thread(0, 1, n, k, a, a_step, b, ldb, alpha, c, accumulate, sums);
}

/* c[p][j] (+)= sum_i a[i][p] b[i][j] for the vecs * VEC rows of c from p0
 * (columns of a, contiguous in a's rows) and all n columns. */
static inline void narrow_outer_block(int vecs, int64_t p0, int64_t n, int64_t k, const float *a, int64_t lda,
                                      const float *b, int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  for (int64_t j = 0; j < n; j += NARROW_BLOCK_COLUMNS) {
    int64_t column[NARROW_BLOCK_COLUMNS];
    for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++) column[q] = j + q < n ? j + q : n - 1;
    vec acc[NARROW_BLOCK_COLUMNS][NARROW_VECS];
    for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++)
      for (int v = 0; v < vecs; v++) acc[q][v] = (vec){0};
    for (int64_t i = 0; i < k; i++) {
      vec av[NARROW_VECS];
      for (int v = 0; v < vecs; v++) av[v] = LOAD_VEC(a + i * lda + p0 + v * VEC);
      for (int q = 0; q < NARROW_BLOCK_COLUMNS; q++) {
        const float bq = b[i * ldb + column[q]];
        for (int v = 0; v < vecs; v++) acc[q][v] += bq * av[v];
      }
    }
    for (int v = 0; v < vecs; v++)
      for (int l = 0; l < VEC; l++)
        for (int q = 0; q < NARROW_BLOCK_COLUMNS && j + q < n; q++)
          store_or_add(c + (p0 + v * VEC + l) * ldc + j + q, alpha, acc[q][v][l], accumulate);
  }
}

#if SHUFFLE_16
/* Ten columns (a classifier's weight gradient x^T dy): all ten in one pass
 * over a's rows, then each vector's 16 rows of c turned into rows of 10 by
 * transpose_16, where storing the sums one lane at a time took a quarter of
 * the 784 x 10 x 100 GEMM. */
static inline void ten_columns_outer_block(int vecs, int64_t p0, int64_t k, const float *a, int64_t lda,
                                           const float *b, int64_t ldb, float alpha, float *c, int64_t ldc,
                                           bool accumulate) {
  vec acc[10][2];
  for (int q = 0; q < 10; q++) acc[q][0] = acc[q][1] = (vec){0};
  for (int64_t i = 0; i < k; i++) {
    vec av[2];
    for (int v = 0; v < vecs; v++) av[v] = LOAD_VEC(a + i * lda + p0 + v * VEC);
    for (int q = 0; q < 10; q++) {
      const float bq = b[i * ldb + q];
      for (int v = 0; v < vecs; v++) acc[q][v] += bq * av[v];
    }
  }
  for (int v = 0; v < vecs; v++) {
    vec rows[VEC];
    for (int q = 0; q < VEC; q++) rows[q] = q < 10 ? alpha * acc[q][v] : (vec){0};
    transpose_16(rows);
    for (int l = 0; l < VEC; l++) {
      float sums[VEC], *out = c + (p0 + v * VEC + l) * ldc;
      STORE_VEC(sums, rows[l]);
      for (int q = 0; q < 10; q++) out[q] = accumulate ? out[q] + sums[q] : sums[q];
    }
  }
}
#endif

static void narrow_outer(int64_t p0, int64_t p1, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
                         int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  int64_t p = p0;
#if SHUFFLE_16
  if (n == 10) {
    for (; p + 2 * VEC <= p1; p += 2 * VEC) ten_columns_outer_block(2, p, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
    for (; p + VEC <= p1; p += VEC) ten_columns_outer_block(1, p, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
  }
#endif
  for (; p + NARROW_VECS * VEC <= p1; p += NARROW_VECS * VEC)
    narrow_outer_block(NARROW_VECS, p, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
  for (; p + VEC <= p1; p += VEC) narrow_outer_block(1, p, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
  for (; p < p1; p++)
    for (int64_t j = 0; j < n; j++) {
      float sum = 0.0f;
      for (int64_t i = 0; i < k; i++) sum += a[i * lda + p] * b[i * ldb + j];
      store_or_add(c + p * ldc + j, alpha, sum, accumulate);
    }
}

/* A GEMM of few rows against a wide B (a fully connected layer at batch 50:
 * 50 x 3136 times 3136 x 1024). OpenBLAS's kernels reach half the peak on
 * 50 rows (1.4 to 1.6 ms for Deep MNIST's fc1, its weights streaming at only
 * 8 GB/s). Here FEW_DEPTH rows of FEW_COLUMNS columns of B (4 KiB apart in
 * fc1's) are copied into a contiguous 32 KiB panel that stays in L1 while
 * every block of FEW_ROWS rows of A passes over it with FEW_ROWS x
 * FEW_COLUMNS sums in registers (1.1 to 1.2 ms). With AVX-512, blocks of 5
 * rows x 64 columns load 9 values for 20 multiply-adds, where 10 x 32 loaded
 * 12: 1.27-1.47 ms down to 1.14-1.23 timed alone with the caches flushed. */
#define FEW_MAX_ROWS 64
#ifdef __AVX512F__
#define FEW_ROWS 5 /* 20 accumulators of 32 registers; 50 rows in 10 blocks */
#define FEW_VECS 4
#define FEW_DEPTH 128
#else
#define FEW_ROWS 6 /* 12 accumulators of 16 registers */
#define FEW_VECS 2
#define FEW_DEPTH 256
#endif
#define FEW_COLUMNS (VEC * FEW_VECS)

/* c[0..m)[j0..j1) (+)= alpha * a b, on the calling thread. Rows of A past m
 * repeat the last one and are not stored; columns of a last narrow panel are
 * zeros. */
static void few_rows(int64_t m, int64_t j0, int64_t j1, int64_t k, const float *a, int64_t lda, const float *b,
                     int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  float panel[FEW_DEPTH * FEW_COLUMNS];
  if (!accumulate)
    for (int64_t i = 0; i < m; i++) memset(c + i * ldc + j0, 0, (size_t)(j1 - j0) * sizeof *c);
  for (int64_t p0 = 0; p0 < k; p0 += FEW_DEPTH) {
    const int64_t depth = k - p0 < FEW_DEPTH ? k - p0 : FEW_DEPTH;
    for (int64_t j = j0; j < j1; j += FEW_COLUMNS) {
      const int64_t width = j1 - j < FEW_COLUMNS ? j1 - j : FEW_COLUMNS;
      for (int64_t p = 0; p < depth; p++) {
        float *row = panel + p * FEW_COLUMNS;
        if (width < FEW_COLUMNS) memset(row + width, 0, (size_t)(FEW_COLUMNS - width) * sizeof *row);
        memcpy(row, b + (p0 + p) * ldb + j, (size_t)width * sizeof *row);
      }
      for (int64_t i = 0; i < m; i += FEW_ROWS) {
        const float *arow[FEW_ROWS];
        for (int r = 0; r < FEW_ROWS; r++) arow[r] = a + (i + r < m ? i + r : m - 1) * lda + p0;
        vec acc[FEW_ROWS][FEW_VECS];
        for (int r = 0; r < FEW_ROWS; r++)
          for (int f = 0; f < FEW_VECS; f++) acc[r][f] = (vec){0};
        for (int64_t p = 0; p < depth; p++) {
          vec bv[FEW_VECS];
          for (int f = 0; f < FEW_VECS; f++) bv[f] = LOAD_VEC(panel + p * FEW_COLUMNS + f * VEC);
          for (int r = 0; r < FEW_ROWS; r++) {
            const float x = arow[r][p];
            for (int f = 0; f < FEW_VECS; f++) acc[r][f] += x * bv[f];
          }
        }
        for (int r = 0; r < FEW_ROWS && i + r < m; r++) {
          float *out = c + (i + r) * ldc + j;
          if (width == FEW_COLUMNS)
            for (int f = 0; f < FEW_VECS; f++)
              STORE_VEC(out + f * VEC, (vec)LOAD_VEC(out + f * VEC) + alpha * acc[r][f]);
          else
            for (int64_t l = 0; l < width; l++) out[l] += alpha * acc[r][l / VEC][l % VEC];
        }
      }
    }
  }
}

/* few_rows with the columns shared out among the threads, in whole panels. */
static void few_rows_gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                          float alpha, float *c, int64_t ldc, bool accumulate) {
  int64_t threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel()) threads = omp_get_max_threads();
#endif
  FLRT_PARALLEL_LOOP_FROM(2, threads, for (int64_t t = 0; t < threads; t++) {
    const int64_t j0 = n * t / threads / FEW_COLUMNS * FEW_COLUMNS,
                  j1 = t + 1 == threads ? n : n * (t + 1) / threads / FEW_COLUMNS * FEW_COLUMNS;
    few_rows(m, j0, j1, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
  });
}

/* The narrow cases, or false to leave the GEMM to OpenBLAS. */
static bool narrow_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                        const float *b, int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  if (n > NARROW_COLUMNS) return false;
  /* All of OpenMP's threads or none: one thread calls the loops directly,
   * without a one-thread team (0.3 us). */
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && m * n * k >= NARROW_THREADS_MIN_MACS) threads = omp_get_max_threads();
#endif
  if (!trans_a && !trans_b && k >= NARROW_VECS * VEC && threads > 1 && m * n * threads <= NARROW_SPLIT_SUM_FLOATS) {
    /* A small output (logits): the threads split the sum, not the rows, each
     * reading its own rows of B (the weights), the same ones that the weight
     * gradient (x^T dy, split below by rows of the output) updates on that
     * thread. Rows of B read or written on the other core cost a transfer
     * between the cores each step, more than this GEMM's arithmetic where
     * the cores are far apart. The partial sums then meet on the stack. */
    float partial[NARROW_SPLIT_SUM_FLOATS];
    FLRT_OMP(omp parallel num_threads(threads))
    {
      int t = 0, used = 1;
#ifdef _OPENMP
      t = omp_get_thread_num(), used = omp_get_num_threads();
#endif
      const int64_t step = NARROW_VECS * VEC, p0 = k * t / used / step * step,
                    p1 = t + 1 == used ? k : k * (t + 1) / used / step * step;
      narrow_rows_of(0, m, n, p1 - p0, a + p0, lda, b + p0 * ldb, ldb, 1.0f, partial + t * m * n, n, false);
      FLRT_OMP(omp barrier)
      const int64_t i0 = m * t / used, i1 = m * (t + 1) / used;
      if (ldc == n) add_partials(used, m * n, partial + i0 * n, (i1 - i0) * n, alpha, c + i0 * n, accumulate);
      else
        for (int64_t i = i0; i < i1; i++) add_partials(used, m * n, partial + i * n, n, alpha, c + i * ldc, accumulate);
    }
    return true;
  }
  if (!trans_a && !trans_b && k >= NARROW_VECS * VEC) {
    FLRT_PARALLEL_LOOP_FROM(2, threads, for (int t = 0; t < threads; t++) {
      const int64_t i0 = m * t / threads, i1 = m * (t + 1) / threads;
      narrow_rows_of(i0, i1, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
    });
    return true;
  }
  if (!trans_a && trans_b && k >= NARROW_VECS * VEC) {
    FLRT_PARALLEL_LOOP_FROM(2, threads, for (int t = 0; t < threads; t++) {
      const int64_t i0 = m * t / threads / NARROW_ROWS * NARROW_ROWS,
                    i1 = t + 1 == threads ? m : m * (t + 1) / threads / NARROW_ROWS * NARROW_ROWS;
      narrow_dots(i0, i1, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
    });
    return true;
  }
  if (trans_a && !trans_b && m >= NARROW_VECS * VEC) {
    FLRT_PARALLEL_LOOP_FROM(2, threads, for (int t = 0; t < threads; t++) {
      const int64_t step = NARROW_VECS * VEC, p0 = m * t / threads / step * step,
                    p1 = t + 1 == threads ? m : m * (t + 1) / threads / step * step;
      narrow_outer(p0, p1, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
    });
    return true;
  }
  return false;
}
#endif

static void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                 const float *b, int64_t ldb, float alpha, float *c, int64_t ldc, bool accumulate) {
  /* A single row or column is a matrix-vector product: sgemv reads the
   * matrix once, where sgemm first packs it (ten times slower for the
   * batch-1 forward pass of a 3136 x 1024 layer). The output is cleared
   * first rather than scaled by a beta of 0, which would keep a NaN left in
   * reused memory. */
#if DIRECT_BLOCKS
  if (m == 1 && !trans_b && n <= NARROW_COLUMNS && k > 0) {
    narrow_one_row(n <= VEC ? 1 : 2, n, k, a, trans_a ? lda : 1, b, ldb, alpha, c, accumulate);
    return;
  }
  if (m == 1 && !trans_b && n >= WIDE_ROW_MIN_COLUMNS && n <= WIDE_ROW_SUM_FLOATS && k > 0) {
    wide_row(n, k, a, trans_a ? lda : 1, b, ldb, alpha, c, accumulate);
    return;
  }
#endif
  const bool row = m == 1, column = n == 1 && ldc == 1;
  if ((row || column) && m > 0 && n > 0 && k > 0) {
    if (!accumulate) memset(c, 0, (size_t)(row ? n : m) * sizeof *c);
    if (row) { /* c = op(B)^T a, a's k values lda apart when it is a column */
      const blasint a_step = trans_a ? (blasint)lda : 1;
      if (trans_b) cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)n, (blasint)k, alpha, b, (blasint)ldb, a, a_step, 1.0f, c, 1);
      else cblas_sgemv(CblasRowMajor, CblasTrans, (blasint)k, (blasint)n, alpha, b, (blasint)ldb, a, a_step, 1.0f, c, 1);
    } else { /* c = op(A) b, b's k values ldb apart when it is a column */
      const blasint b_step = trans_b ? 1 : (blasint)ldb;
      if (trans_a) cblas_sgemv(CblasRowMajor, CblasTrans, (blasint)k, (blasint)m, alpha, a, (blasint)lda, b, b_step, 1.0f, c, 1);
      else cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)m, (blasint)k, alpha, a, (blasint)lda, b, b_step, 1.0f, c, 1);
    }
    return;
  }
#if DIRECT_BLOCKS
  if (m > 0 && n > 0 && k > 0 && narrow_gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate)) return;
  if (!trans_a && !trans_b && m > 0 && m <= FEW_MAX_ROWS && n >= SPLIT_MIN_COLUMNS && m * n * k >= SPLIT_MIN_MACS) {
    few_rows_gemm(m, n, k, a, lda, b, ldb, alpha, c, ldc, accumulate);
    return;
  }
#endif
  const float beta = accumulate ? 1.0f : 0.0f;
#ifdef _OPENMP
  /* A GEMM with few rows (fully connected layers at batch 50: m = 50, n and k
   * in the thousands) runs faster as one single-threaded GEMM per thread on
   * its own columns of B and C than threaded by OpenBLAS, which splits the
   * rows and has every thread pack all of B (12-14% on Deep MNIST's fc1). */
  const int64_t threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (threads > 1 && m <= SPLIT_MAX_ROWS && n >= SPLIT_MIN_COLUMNS * threads && m * n * k >= SPLIT_MIN_MACS) {
    FLRT_OMP(omp parallel for schedule(static, 1) num_threads(threads))
    for (int64_t t = 0; t < threads; t++) {
      /* Column blocks of whole cache lines (16 floats). */
      const int64_t j0 = n * t / threads / 16 * 16, j1 = t + 1 == threads ? n : n * (t + 1) / threads / 16 * 16;
      cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                  (blasint)m, (blasint)(j1 - j0), (blasint)k, alpha, a, (blasint)lda, trans_b ? b + j0 * ldb : b + j0,
                  (blasint)ldb, beta, c + j0, (blasint)ldc);
    }
    return;
  }
  /* Its output is most of its memory traffic, and threads that each write
   * their own rows of it beat OpenBLAS's split (1.86 ms against 2.2 for
   * Deep MNIST's fc1 weight gradient). */
  if (threads > 1 && m > SPLIT_MAX_ROWS && k <= SPLIT_MAX_DEPTH && m * n * k >= SPLIT_MIN_MACS) {
    FLRT_OMP(omp parallel for schedule(static, 1) num_threads(threads))
    for (int64_t t = 0; t < threads; t++) {
      const int64_t i0 = m * t / threads / 16 * 16, i1 = t + 1 == threads ? m : m * (t + 1) / threads / 16 * 16;
      cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                  (blasint)(i1 - i0), (blasint)n, (blasint)k, alpha, trans_a ? a + i0 : a + i0 * lda, (blasint)lda, b,
                  (blasint)ldb, beta, c + i0 * ldc, (blasint)ldc);
    }
    return;
  }
#endif
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              (blasint)m, (blasint)n, (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, c, (blasint)ldc);
}
#endif

void flrt_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
               const float *b, int64_t ldb, float *c, int64_t ldc, bool accumulate) {
  gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, 1.0f, c, ldc, accumulate);
}

void flrt_gemm_update(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
                      const float *b, int64_t ldb, float alpha, float *c, int64_t ldc) {
  gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, alpha, c, ldc, true);
}

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

/* The batch is cut into chunks of images. Each thread takes whole chunks, so
 * that no two threads write the same output (col2im scatters into dx, and
 * windows overlap only within an image), and each chunk's im2col matrix
 * stays within a core's L2 cache, where the GEMM reads it back, rather than
 * the whole batch's: 31 MiB for Deep MNIST's second layer at batch 50, 0.6 MiB
 * per chunk of one image (1 MiB chunks ran its step 8% faster than 4 MiB
 * ones, on a machine with 2 MiB of L2 per core). With one chunk (a
 * small batch) a gradient runs on the calling thread and OpenBLAS may thread
 * the one GEMM itself, while the forward pass cuts the images into row bands
 * (row_bands); inside a parallel region OpenMP's OpenBLAS runs each GEMM on
 * the thread that called it. */
#define CONV_CHUNK_FLOATS ((int64_t)1 << 18)

/* A window of at most this many entries (k_h * k_w * in_c) runs as a direct
 * convolution: its GEMM would be too thin to pay for im2col, which copies each
 * input pixel k_h * k_w times (Deep MNIST's first layer: 25 entries, 32
 * filters, and im2col + GEMM at a tenth of the machine's speed). */
#define DIRECT_MAX_ENTRIES 64
/* The forward pass runs direct up to this many entries, where its blocks
 * of filters (entries x 32 floats, 256 KiB at most) stay in L2 and the
 * register blocks below (GCC and Clang only) beat im2col's copy + sgemm:
 * Deep MNIST's conv2 (800 entries) at batch 50 in 4.0 ms instead of 4.5. The
 * filter gradient's direct loop adds into dfilter in memory and loses to the
 * GEMM past 64 entries. */
#ifdef __GNUC__
#define DIRECT_FORWARD_MAX_ENTRIES 2048
#else
#define DIRECT_FORWARD_MAX_ENTRIES DIRECT_MAX_ENTRIES
#endif

static int64_t max_threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/* Whether the filter gradient (and the chunking) works direct. */
static bool runs_direct(const flrt_window *w) {
  return window_cols(w) <= DIRECT_MAX_ENTRIES && !is_pointwise(w);
}

static bool forward_runs_direct(const flrt_window *w) {
  return window_cols(w) <= DIRECT_FORWARD_MAX_ENTRIES && !is_pointwise(w);
}

/* The input gradient of a stride-1 window is itself a convolution: of dy,
 * padded by k - 1 - pad on the top and left, with the filter turned by 180
 * degrees and its input and output channels swapped. This is its window
 * (over dy, whose channels are the out_c filters); run direct like a forward
 * pass, it needs neither the dcols matrix nor col2im's scatter. */
static void transposed_window(const flrt_window *w, int64_t out_c, flrt_window *t) {
  *t = *w;
  t->in_h = w->out_h;
  t->in_w = w->out_w;
  t->in_c = out_c;
  t->pad_top = w->k_h - 1 - w->pad_top;
  t->pad_left = w->k_w - 1 - w->pad_left;
  t->out_h = w->in_h;
  t->out_w = w->in_w;
}

static bool grad_input_runs_direct(const flrt_window *w, int64_t out_c) {
  return w->stride_h == 1 && w->stride_w == 1 && w->pad_top < w->k_h && w->pad_left < w->k_w &&
         w->k_h * w->k_w * out_c <= DIRECT_FORWARD_MAX_ENTRIES && !is_pointwise(w);
}

/* Whether the filter gradient runs in tiles of channels x filters
 * (direct_grad_filter_tiles): at least one whole tile, and a padded image
 * that fits the scratch the forward pass sizes for it. */
#if DIRECT_BLOCKS
static bool grad_filter_runs_tiled(const flrt_window *w, int64_t out_c) {
  return w->in_c >= PIXELS && out_c >= FILTERS && forward_runs_direct(w);
}
#endif

/* A padded image: the rows and columns every window reads, zeros outside
 * the image, so the direct loops need no bounds checks. */
static int64_t padded_h(const flrt_window *w) { return (w->out_h - 1) * w->stride_h + w->k_h; }
static int64_t padded_w(const flrt_window *w) { return (w->out_w - 1) * w->stride_w + w->k_w; }

int64_t flrt_conv2d_chunk(const flrt_window *w) {
  const int64_t per_image = w->out_h * w->out_w * window_cols(w);
  int64_t chunk = per_image > 0 ? CONV_CHUNK_FLOATS / per_image : w->batch;
  if (chunk < 1) chunk = 1;
  if (runs_direct(w)) chunk = 1; /* the direct loops work an image at a time */
  const int64_t threads = max_threads();
  if (w->batch <= 1 || threads <= 1) return chunk < w->batch ? chunk : (w->batch > 0 ? w->batch : 1);
  /* Enough chunks for every thread and a whole number of them per thread,
   * so that no thread waits on a last odd chunk. */
  int64_t chunks = (w->batch + chunk - 1) / chunk;
  if (chunks < threads) chunks = threads;
  chunks = (chunks + threads - 1) / threads * threads;
  chunk = (w->batch + chunks - 1) / chunks;
  return chunk < 1 ? 1 : chunk;
}

static int64_t chunk_count(const flrt_window *w) {
  const int64_t chunk = flrt_conv2d_chunk(w);
  return (w->batch + chunk - 1) / chunk;
}

/* Threads that get a chunk: never more than there are chunks. */
static int64_t chunk_threads(const flrt_window *w) {
  const int64_t threads = max_threads(), chunks = chunk_count(w);
  return chunks < threads ? (chunks > 0 ? chunks : 1) : threads;
}

/* Floats of one thread's share of the scratch: its chunk's im2col matrix
 * (which the gradient of the input needs also where the forward pass and the
 * filter gradient run direct) or padded image, then its partial filter
 * gradient. */
static int64_t thread_scratch(const flrt_window *w, int64_t out_c) {
  int64_t work = flrt_conv2d_chunk(w) * w->out_h * w->out_w * window_cols(w);
  if (forward_runs_direct(w) && padded_h(w) * padded_w(w) * w->in_c > work) work = padded_h(w) * padded_w(w) * w->in_c;
  if (grad_input_runs_direct(w, out_c)) {
    flrt_window t;
    transposed_window(w, out_c, &t);
    if (padded_h(&t) * padded_w(&t) * t.in_c > work) work = padded_h(&t) * padded_w(&t) * t.in_c;
  }
  return (int64_t)(flrt_align((size_t)work * sizeof(float)) / sizeof(float)) + window_cols(w) * out_c;
}

/* Below this many multiply-adds an image's forward pass is not worth
 * sharing out: the threads would wait on each other longer than they work. */
#define BAND_MIN_MACS ((int64_t)1 << 18)

/* Bands of output rows per image in the forward pass. Chunks of whole images
 * leave threads idle when the batch has fewer images than there are threads
 * (batch-1 inference), so there each image's output rows are cut into one
 * band per thread instead; bands never write the same output. The gradients
 * keep whole images: col2im's bands would overlap in dx. */
static int64_t row_bands(const flrt_window *w, int64_t out_c) {
  const int64_t threads = max_threads();
  if (threads <= 1 || w->batch >= threads || w->out_h < 2) return 1;
  if (w->out_h * w->out_w * window_cols(w) * out_c < BAND_MIN_MACS) return 1;
  return threads < w->out_h ? threads : w->out_h;
}

/* ---- Winograd F(2x2, 5x5) ---------------------------------------------------
 * A 5x5 window of stride 1 (Deep MNIST's conv2, and the input gradient of
 * one, itself a 5x5 convolution) computes each 2x2 block of outputs from a
 * 6x6 tile of its input by Winograd's minimal filtering (Lavin and Gray,
 * "Fast Algorithms for Convolutional Neural Networks", 2016). Tile and
 * filters are transformed (V = B^T d B, U = G g G^T), multiplied point by
 * point and summed over the channels, which is one GEMM for each of the 36
 * points (tiles x channels times channels x filters), and turned back
 * (Y = A^T M A): 36 multiply-adds per channel and filter for 4 outputs
 * where the direct loop does 100. The direct loop ran conv2 at 9/10 of the
 * machine's sgemm rate, so only fewer multiplies could make it faster. The
 * points are 0, 1, -1, 2, -2 and infinity, as in Lavin's F(4x4, 3x3); in
 * float the outputs stay within a few 1e-6 of the sum's size (the direct
 * loop's within 1e-6).
 *
 * Every (image, tile) pair is one row of the GEMMs, so a thread's share of
 * a batch is a contiguous run of them, worked in blocks of at most
 * WINO_BLOCK tiles whose V and M stay in L2 for all 36 points.
 *
 * The filter gradient stays direct. Its Winograd form (the adjoint: V and
 * A dy A^T meet in one GEMM per point summed over the tiles, then G^T dU G)
 * took conv2's from 2.4 to 1.6 ms at batch 50, but its error is relative to
 * the largest gradient (1.4e-5 of it at batch 13), and Adam divides each
 * weight's gradient by its own size: after two steps 154 of conv2's 51200
 * weights had moved up to 0.66 learning rates away from the interpreter's. */
#define WINO_K 5     /* the window */
#define WINO_OUT 2   /* outputs per tile side */
#define WINO_TILE 6  /* WINO_OUT + WINO_K - 1 */
#define WINO_POINTS (WINO_TILE * WINO_TILE)
#define WINO_BLOCK PIXELS
/* Fewer channels or filters leave the transforms' vectors mostly empty
 * (conv1 reads 1 channel), and the direct loop does better. */
#define WINO_MIN_CHANNELS 8

static bool runs_winograd(const flrt_window *w, int64_t out_c) {
  return DIRECT_BLOCKS && w->k_h == WINO_K && w->k_w == WINO_K && w->stride_h == 1 && w->stride_w == 1 &&
         w->in_c >= WINO_MIN_CHANNELS && out_c >= WINO_MIN_CHANNELS && w->out_h > 0 && w->out_w > 0 &&
         w->batch > 0;
}

/* The sizes of a Winograd convolution: channels padded to whole vectors
 * (the transforms work on vectors of channels) and filters to whole blocks
 * of FILTERS (the GEMM's), all in floats and multiples of 64 bytes. */
typedef struct {
  int64_t C, O, Cp, Op, tiles_h, tiles_w, tiles, threads;
  int64_t filters_floats, gather_floats, v_floats, m_floats, thread_floats;
} wino_plan;

static int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

static wino_plan plan_winograd(const flrt_window *w, int64_t out_c) {
  wino_plan p = {.C = w->in_c, .O = out_c};
  p.Cp = round_up(p.C, VEC);
  p.Op = round_up(p.O, FILTERS);
  p.tiles_h = (w->out_h + WINO_OUT - 1) / WINO_OUT;
  p.tiles_w = (w->out_w + WINO_OUT - 1) / WINO_OUT;
  p.tiles = w->batch * p.tiles_h * p.tiles_w;
  /* At least a whole block of tiles for every thread. */
  p.threads = max_threads();
  if (p.threads > p.tiles / WINO_BLOCK) p.threads = p.tiles / WINO_BLOCK > 0 ? p.tiles / WINO_BLOCK : 1;
  p.filters_floats = WINO_POINTS * p.C * p.Op;
  p.gather_floats = WINO_POINTS * p.Cp;
  p.v_floats = WINO_POINTS * WINO_BLOCK * p.Cp;
  p.m_floats = WINO_POINTS * WINO_BLOCK * p.Op;
  p.thread_floats = p.gather_floats + p.v_floats + p.m_floats;
  return p;
}

static int64_t winograd_scratch(const flrt_window *w, int64_t out_c) {
  const wino_plan p = plan_winograd(w, out_c);
  return p.filters_floats + p.threads * p.thread_floats;
}

#if DIRECT_BLOCKS
/* *v = the n (at most VEC) floats at p, zeros in the lanes after them
 * (through a pointer: see LOAD_VEC). */
static void load_partial(vec *v, const float *p, int64_t n) {
  if (n >= VEC) {
    *v = LOAD_VEC(p);
    return;
  }
  *v = (vec){0};
  for (int64_t l = 0; l < n; l++) (*v)[l] = p[l];
}

/* out[0..6) (os apart) = G in[0..5): the filter transform. */
static inline void wino_g(vec *out, int os, const vec *in) {
  const vec g0 = in[0], g1 = in[1], g2 = in[2], g3 = in[3], g4 = in[4];
  const vec even = g0 + g2 + g4, odd = g1 + g3;
  const vec even4 = g0 + 4.0f * g2 + 16.0f * g4, odd4 = 2.0f * g1 + 8.0f * g3;
  out[0] = 0.25f * g0;
  out[os] = (-1.0f / 6.0f) * (even + odd);
  out[2 * os] = (-1.0f / 6.0f) * (even - odd);
  out[3 * os] = (1.0f / 24.0f) * (even4 + odd4);
  out[4 * os] = (1.0f / 24.0f) * (even4 - odd4);
  out[5 * os] = g4;
}

/* out[0..6) (os apart) = B^T in[0..6): the input transform. */
static inline void wino_bt(vec *out, int os, const vec *in) {
  const vec d0 = in[0], d1 = in[1], d2 = in[2], d3 = in[3], d4 = in[4], d5 = in[5];
  const vec a = d4 - 4.0f * d2, b = d3 - 4.0f * d1, c = d4 - d2, e = 2.0f * (d3 - d1);
  out[0] = 4.0f * d0 - 5.0f * d2 + d4;
  out[os] = a + b;
  out[2 * os] = a - b;
  out[3 * os] = c + e;
  out[4 * os] = c - e;
  out[5 * os] = 4.0f * d1 - 5.0f * d3 + d5;
}

/* out[0..2) (os apart) = A^T in[0..6): the output transform. */
static inline void wino_at(vec *out, int os, const vec *in) {
  const vec m0 = in[0], m1 = in[1], m2 = in[2], m3 = in[3], m4 = in[4], m5 = in[5];
  out[0] = m0 + (m1 + m2) + (m3 + m4);
  out[os] = (m1 - m2) + 2.0f * (m3 - m4) + m5;
}

/* U[c][point][o] for channels [c0, c1) and every filter (zero past O). The
 * filter is HWIO, so VEC filters of one window cell and channel are one
 * vector. U, V and M keep a channel's, a tile's 36 points together: each
 * transform then writes or reads one run of memory (36 runs 8 KiB apart,
 * all in one set of the L1 cache, took three times as long). */
static void wino_filters(const wino_plan *p, const float *filter, int64_t c0, int64_t c1, float *U) {
  for (int64_t o0 = 0; o0 < p->Op; o0 += VEC)
    for (int64_t c = c0; c < c1; c++) {
      vec t[WINO_TILE * WINO_K];
      for (int kw = 0; kw < WINO_K; kw++) { /* columns, straight from the filter */
        vec g[WINO_K];
        for (int kh = 0; kh < WINO_K; kh++)
          if (o0 < p->O) load_partial(&g[kh], filter + ((kh * WINO_K + kw) * p->C + c) * p->O + o0, p->O - o0);
          else g[kh] = (vec){0};
        wino_g(t + kw, WINO_K, g);
      }
      for (int a = 0; a < WINO_TILE; a++) { /* rows, straight into U */
        vec u[WINO_TILE];
        wino_g(u, 1, t + a * WINO_K);
        for (int b = 0; b < WINO_TILE; b++) STORE_VEC(U + (c * WINO_POINTS + a * WINO_TILE + b) * p->Op + o0, u[b]);
      }
    }
}

/* V[row][point][c] of one tile: its 6x6 input, zeros outside the image,
 * transformed. A tile wholly inside the image (and channels that fill their
 * vectors) is read in place, any other copied into `gather` first. */
static void wino_input_tile(const flrt_window *w, const wino_plan *p, const float *x, int64_t tile, float *gather,
                            float *V, int64_t row) {
  const int64_t n = tile / (p->tiles_h * p->tiles_w), in_tile = tile % (p->tiles_h * p->tiles_w);
  const int64_t top = in_tile / p->tiles_w * WINO_OUT - w->pad_top;
  const int64_t left = in_tile % p->tiles_w * WINO_OUT - w->pad_left;
  const float *img = x + n * w->in_h * w->in_w * p->C, *base;
  int64_t row_step, col_step;
  if (p->Cp == p->C && top >= 0 && left >= 0 && top + WINO_TILE <= w->in_h && left + WINO_TILE <= w->in_w) {
    base = img + (top * w->in_w + left) * p->C;
    row_step = w->in_w * p->C;
    col_step = p->C;
  } else {
    zero(gather, p->gather_floats);
    for (int64_t i = 0; i < WINO_TILE; i++) {
      const int64_t ih = top + i;
      if (ih < 0 || ih >= w->in_h) continue;
      for (int64_t j = 0; j < WINO_TILE; j++) {
        const int64_t iw = left + j;
        if (iw >= 0 && iw < w->in_w)
          memcpy(gather + (i * WINO_TILE + j) * p->Cp, img + (ih * w->in_w + iw) * p->C, (size_t)p->C * sizeof *x);
      }
    }
    base = gather;
    row_step = WINO_TILE * p->Cp;
    col_step = p->Cp;
  }
  for (int64_t c0 = 0; c0 < p->Cp; c0 += VEC) {
    vec t[WINO_POINTS];
    for (int j = 0; j < WINO_TILE; j++) { /* columns, straight from the input */
      vec d[WINO_TILE];
      for (int i = 0; i < WINO_TILE; i++) d[i] = LOAD_VEC(base + i * row_step + j * col_step + c0);
      wino_bt(t + j, WINO_TILE, d);
    }
    for (int i = 0; i < WINO_TILE; i++) { /* rows, straight into V */
      vec v[WINO_TILE];
      wino_bt(v, 1, t + i * WINO_TILE);
      for (int j = 0; j < WINO_TILE; j++) STORE_VEC(V + (row * WINO_POINTS + i * WINO_TILE + j) * p->Cp + c0, v[j]);
    }
  }
}

/* M[row][point][o] = sum over c of V[row][point][c] U[c][point][o] for a
 * block of `rows` tiles, FILTERS filters at a time in registers, as in
 * direct_block. */
static inline __attribute__((always_inline)) void wino_gemm_rows(int rows, const wino_plan *p, const float *V,
                                                                 const float *U, float *M) {
  for (int i = 0; i < WINO_POINTS; i++) {
    const float *v = V + i * p->Cp, *u = U + i * p->Op;
    float *m = M + i * p->Op;
    for (int64_t o0 = 0; o0 < p->Op; o0 += FILTERS) {
      vec acc[WINO_BLOCK][FILTER_VECS];
      for (int r = 0; r < rows; r++)
        for (int f = 0; f < FILTER_VECS; f++) acc[r][f] = (vec){0};
      for (int64_t c = 0; c < p->C; c++) {
        vec fv[FILTER_VECS];
        for (int f = 0; f < FILTER_VECS; f++) fv[f] = LOAD_VEC(u + c * WINO_POINTS * p->Op + o0 + f * VEC);
        for (int r = 0; r < rows; r++) {
          const float x = v[r * WINO_POINTS * p->Cp + c];
          for (int f = 0; f < FILTER_VECS; f++) acc[r][f] += x * fv[f];
        }
      }
      for (int r = 0; r < rows; r++)
        for (int f = 0; f < FILTER_VECS; f++) STORE_VEC(m + r * WINO_POINTS * p->Op + o0 + f * VEC, acc[r][f]);
    }
  }
}

/* wino_gemm_rows compiled for each block height, so that the accumulators
 * of a short last block stay in registers too. */
static void wino_gemm(int rows, const wino_plan *p, const float *V, const float *U, float *M) {
  switch (rows) {
  case 1: wino_gemm_rows(1, p, V, U, M); break;
  case 2: wino_gemm_rows(2, p, V, U, M); break;
  case 3: wino_gemm_rows(3, p, V, U, M); break;
  case 4: wino_gemm_rows(4, p, V, U, M); break;
  case 5: wino_gemm_rows(5, p, V, U, M); break;
#if WINO_BLOCK > 6
  case 6: wino_gemm_rows(6, p, V, U, M); break;
  case 7: wino_gemm_rows(7, p, V, U, M); break;
#endif
  default: wino_gemm_rows(WINO_BLOCK, p, V, U, M); break;
  }
}

/* A tile's 2x2 outputs from its row of M, with the bias and relu of the
 * epilogue; outputs past the image's last row or column are not stored. */
static void wino_output_tile(const flrt_window *w, const wino_plan *p, const float *M, int64_t row, int64_t tile,
                             const float *bias, bool relu, float *out) {
  const int64_t n = tile / (p->tiles_h * p->tiles_w), in_tile = tile % (p->tiles_h * p->tiles_w);
  const int64_t oh0 = in_tile / p->tiles_w * WINO_OUT, ow0 = in_tile % p->tiles_w * WINO_OUT;
  for (int64_t o0 = 0; o0 < p->O; o0 += VEC) {
    const int64_t lanes = p->O - o0 < VEC ? p->O - o0 : VEC;
    vec t[WINO_OUT * WINO_TILE], y[WINO_OUT * WINO_OUT];
    for (int j = 0; j < WINO_TILE; j++) { /* columns, straight from M */
      vec m[WINO_TILE];
      for (int i = 0; i < WINO_TILE; i++) m[i] = LOAD_VEC(M + (row * WINO_POINTS + i * WINO_TILE + j) * p->Op + o0);
      wino_at(t + j, WINO_TILE, m);
    }
    for (int i = 0; i < WINO_OUT; i++) wino_at(y + i * WINO_OUT, 1, t + i * WINO_TILE); /* rows */
    vec b = {0};
    if (bias) load_partial(&b, bias + o0, lanes);
    for (int i = 0; i < WINO_OUT && oh0 + i < w->out_h; i++)
      for (int j = 0; j < WINO_OUT && ow0 + j < w->out_w; j++) {
        vec v = y[i * WINO_OUT + j];
        if (bias) v += b;
        if (relu) v = (vec)((mask)(v > (vec){0}) & (mask)v);
        float *o = out + ((n * w->out_h + oh0 + i) * w->out_w + ow0 + j) * p->O + o0;
        if (lanes == VEC) STORE_VEC(o, v);
        else
          for (int64_t l = 0; l < lanes; l++) o[l] = v[l];
      }
  }
}

/* Tiles [t0, t1) in blocks: gather and transform, the 36 GEMMs, back. */
static void wino_tiles(const flrt_window *w, const wino_plan *p, const float *x, const float *U, const float *bias,
                       bool relu, float *out, int64_t t0, int64_t t1, float *scratch) {
  float *gather = scratch, *V = gather + p->gather_floats, *M = V + p->v_floats;
  int64_t blocks = (t1 - t0 + WINO_BLOCK - 1) / WINO_BLOCK;
  for (int64_t t = t0; t < t1; blocks--) {
    /* Even blocks: 25 tiles go as 7, 6, 6, 6 rather than 8, 8, 8, 1. */
    const int rows = (int)((t1 - t + blocks - 1) / blocks);
    for (int r = 0; r < rows; r++) wino_input_tile(w, p, x, t + r, gather, V, r);
    wino_gemm(rows, p, V, U, M);
    for (int r = 0; r < rows; r++) wino_output_tile(w, p, M, r, t + r, bias, relu, out);
    t += rows;
  }
}
#endif

/* The filter transform is the same work whatever the batch: at batch 1 (49
 * tiles in conv2) it took 11-17 us of the convolution's 43-65. A forward
 * pass on a few tiles therefore keeps the transformed filters of the last
 * WINO_CACHE_ENTRIES filters convolved with, each beside a copy of the
 * filter it came from. Before use, every thread compares its channels of
 * the filter with the copy (1 us) and transforms again the channels that
 * changed, so a cached filter is never stale, whoever wrote the weights.
 * The entries belong to the process, not to a calling thread (whose own
 * would be lost when it ends): a call claims its entry for its duration,
 * and one that finds the entries it could use claimed by other threads
 * transforms into its scratch as before. */
#define WINO_CACHE_ENTRIES 4
#define WINO_CACHE_MAX_TILES 256 /* batch 5 of conv2: the transform a twentieth of the work */
#define WINO_CACHE_MAX_FLOATS ((int64_t)1 << 20) /* 4 MiB for the filter's copy and U */

typedef struct {
  int claimed;         /* by a call on some thread (atomic) */
  const float *filter; /* the key, with C and O */
  int64_t C, O, floats;
  void *memory;    /* floats and a cache line more, for: */
  float *copy, *U; /* the filter's floats, then U, both 64-byte aligned */
  bool filled;
} wino_cache_entry;

#if DIRECT_BLOCKS
static wino_cache_entry wino_cache[WINO_CACHE_ENTRIES];
static unsigned wino_cache_next; /* the next entry to refit (atomic) */

static bool wino_claim(wino_cache_entry *entry) {
  return __atomic_exchange_n(&entry->claimed, 1, __ATOMIC_ACQUIRE) == 0;
}

static void wino_release(wino_cache_entry *entry) { __atomic_store_n(&entry->claimed, 0, __ATOMIC_RELEASE); }

/* The entry for this filter, claimed: its own, or the next one in turn
 * refitted (not filled). NULL when the filter is too large, memory runs out
 * or the entry is claimed elsewhere. */
static wino_cache_entry *wino_cached(const wino_plan *p, const float *filter) {
  const int64_t filter_floats = WINO_K * WINO_K * p->C * p->O;
  const int64_t copy_floats = round_up(filter_floats, 16), floats = copy_floats + p->filters_floats;
  if (floats > WINO_CACHE_MAX_FLOATS) return NULL;
  for (int e = 0; e < WINO_CACHE_ENTRIES; e++) {
    wino_cache_entry *entry = &wino_cache[e];
    if (!wino_claim(entry)) continue;
    if (entry->memory && entry->filter == filter && entry->C == p->C && entry->O == p->O) return entry;
    wino_release(entry);
  }
  wino_cache_entry *entry = &wino_cache[__atomic_fetch_add(&wino_cache_next, 1, __ATOMIC_RELAXED) % WINO_CACHE_ENTRIES];
  if (!wino_claim(entry)) return NULL;
  if (entry->floats < floats) {
    free(entry->memory);
    entry->memory = malloc((size_t)(floats + 16) * sizeof(float));
    entry->floats = entry->memory ? floats : 0;
    if (!entry->memory) {
      wino_release(entry);
      return NULL;
    }
  }
  entry->filter = filter, entry->C = p->C, entry->O = p->O, entry->filled = false;
  entry->copy = (float *)(((uintptr_t)entry->memory + 63) & ~(uintptr_t)63);
  entry->U = entry->copy + copy_floats;
  return entry;
}

/* The cached U for channels [c0, c1) made current: transformed again, and
 * the copy refreshed, where the filter differs from the copy. */
static void wino_refresh(const wino_plan *p, const float *filter, wino_cache_entry *entry, int64_t c0, int64_t c1) {
  const size_t run = (size_t)((c1 - c0) * p->O) * sizeof *filter;
  bool same = entry->filled;
  for (int64_t cell = 0; cell < WINO_K * WINO_K && same; cell++) {
    const int64_t at = (cell * p->C + c0) * p->O;
    same = memcmp(filter + at, entry->copy + at, run) == 0;
  }
  if (same) return;
  wino_filters(p, filter, c0, c1, entry->U);
  for (int64_t cell = 0; cell < WINO_K * WINO_K; cell++) {
    const int64_t at = (cell * p->C + c0) * p->O;
    memcpy(entry->copy + at, filter + at, run);
  }
}
#endif

/* out = the convolution of x (+ bias, relu), for a window runs_winograd
 * takes; scratch holds winograd_scratch(w, out_c) floats. The threads first
 * transform a share of the filters each (or check the cached ones, with
 * use_cache and few tiles), then work a share of the tiles. */
static void winograd_conv(const flrt_window *w, int64_t out_c, const float *x, const float *filter, const float *bias,
                          bool relu, float *out, float *scratch, bool use_cache) {
#if DIRECT_BLOCKS
  const wino_plan p = plan_winograd(w, out_c);
  wino_cache_entry *entry = use_cache && p.tiles <= WINO_CACHE_MAX_TILES ? wino_cached(&p, filter) : NULL;
  float *U = entry ? entry->U : scratch;
#ifdef _OPENMP
  const int64_t threads = omp_in_parallel() ? 1 : p.threads;
#endif
  FLRT_OMP(omp parallel num_threads(threads) if(threads > 1))
  {
    int64_t t = 0, used = 1;
#ifdef _OPENMP
    t = omp_get_thread_num(), used = omp_get_num_threads();
#endif
    const int64_t c0 = p.C * t / used, c1 = p.C * (t + 1) / used;
    if (entry) wino_refresh(&p, filter, entry, c0, c1);
    else wino_filters(&p, filter, c0, c1, U);
    FLRT_OMP(omp barrier)
    wino_tiles(w, &p, x, U, bias, relu, out, p.tiles * t / used, p.tiles * (t + 1) / used,
               scratch + p.filters_floats + t * p.thread_floats);
  }
  if (entry) {
    entry->filled = true;
    wino_release(entry);
  }
#else
  (void)w, (void)out_c, (void)x, (void)filter, (void)bias, (void)relu, (void)out, (void)scratch, (void)use_cache;
#endif
}

/* The input gradient of a stride-1 window is a convolution of dy with the
 * turned filter (transposed_window), so a 5x5 one runs as Winograd's too,
 * the turned filter first in the scratch and the transforms after it. */
static bool grad_input_runs_winograd(const flrt_window *w, int64_t out_c) {
  if (w->stride_h != 1 || w->stride_w != 1 || w->pad_top >= w->k_h || w->pad_left >= w->k_w) return false;
  flrt_window t;
  transposed_window(w, out_c, &t);
  return runs_winograd(&t, w->in_c);
}

static int64_t turned_floats(const flrt_window *w, int64_t out_c) {
  return (int64_t)(flrt_align((size_t)(window_cols(w) * out_c) * sizeof(float)) / sizeof(float));
}

static int64_t winograd_transposed_scratch(const flrt_window *w, int64_t out_c) {
  flrt_window t;
  transposed_window(w, out_c, &t);
  return winograd_scratch(&t, w->in_c);
}

size_t flrt_conv2d_scratch(const flrt_window *w, int64_t out_c) {
  /* The pointwise case works on x, dx and the outputs directly. */
  if (is_pointwise(w) || window_rows(w) <= 0) return 0;
  /* A band's matrix is at most an image's, which is what a chunk holds here. */
  const int64_t threads = row_bands(w, out_c) > 1 ? max_threads() : chunk_threads(w);
  int64_t floats = threads * thread_scratch(w, out_c);
  if (runs_winograd(w, out_c) && winograd_scratch(w, out_c) > floats) floats = winograd_scratch(w, out_c);
  if (grad_input_runs_winograd(w, out_c) && turned_floats(w, out_c) + winograd_transposed_scratch(w, out_c) > floats)
    floats = turned_floats(w, out_c) + winograd_transposed_scratch(w, out_c);
  return (size_t)floats;
}

static void pad_image(const flrt_window *w, const float *img, float *padded) {
  const int64_t C = w->in_c, ph = padded_h(w), pw = padded_w(w);
  const int64_t cols = w->in_w < pw - w->pad_left ? w->in_w : pw - w->pad_left;
  zero(padded, ph * pw * C);
  for (int64_t ih = 0; ih < w->in_h && ih + w->pad_top < ph; ih++)
    if (cols > 0)
      memcpy(padded + ((ih + w->pad_top) * pw + w->pad_left) * C, img + ih * w->in_w * C,
             (size_t)(cols * C) * sizeof *img);
}

#if DIRECT_BLOCKS
/* out[p][0..FILTERS) for PIXELS pixels starting at in_row, the window's
 * k_h rows in_step apart, each of `entries` (k_w * C) values. */
static void direct_block(const float *in_row, int64_t in_step, int64_t pixel_step, int64_t entries,
                         int64_t k_h, const float *filter, int64_t O, float *out) {
  vec acc[PIXELS][FILTER_VECS];
  for (int p = 0; p < PIXELS; p++)
    for (int v = 0; v < FILTER_VECS; v++) acc[p][v] = (vec){0};
  const float *f = filter;
  for (int64_t kh = 0; kh < k_h; kh++) {
    const float *in = in_row + kh * in_step;
    for (int64_t e = 0; e < entries; e++, f += O) {
      vec fv[FILTER_VECS];
      for (int v = 0; v < FILTER_VECS; v++) fv[v] = LOAD_VEC(f + v * VEC);
      for (int p = 0; p < PIXELS; p++) {
        const float x = in[p * pixel_step + e];
        for (int v = 0; v < FILTER_VECS; v++) acc[p][v] += x * fv[v];
      }
    }
  }
  for (int p = 0; p < PIXELS; p++)
    for (int v = 0; v < FILTER_VECS; v++) STORE_VEC(out + p * O + v * VEC, acc[p][v]);
}

/* dfilter rows (one per window entry, FILTERS wide) += sum over the block's
 * pixels of in * dy. Pixels past `pixels` count with a dy of 0 (and read the
 * last real pixel's input, which stays inside the image). */
static void direct_grad_block(const float *in_row, int64_t in_step, int64_t pixel_step, int64_t entries,
                              int64_t k_h, const float *dy, int64_t O, int64_t pixels, float *dfilter) {
  vec g[PIXELS][FILTER_VECS];
  int64_t at[PIXELS];
  for (int p = 0; p < PIXELS; p++) {
    for (int v = 0; v < FILTER_VECS; v++) g[p][v] = p < pixels ? (vec)LOAD_VEC(dy + p * O + v * VEC) : (vec){0};
    at[p] = (p < pixels ? p : pixels - 1) * pixel_step;
  }
  float *d = dfilter;
  for (int64_t kh = 0; kh < k_h; kh++) {
    const float *in = in_row + kh * in_step;
    for (int64_t e = 0; e < entries; e++, d += O) {
      vec acc[FILTER_VECS];
      for (int v = 0; v < FILTER_VECS; v++) acc[v] = LOAD_VEC(d + v * VEC);
      for (int p = 0; p < PIXELS; p++) {
        const float x = in[at[p] + e];
        for (int v = 0; v < FILTER_VECS; v++) acc[v] += x * g[p][v];
      }
      for (int v = 0; v < FILTER_VECS; v++) STORE_VEC(d + v * VEC, acc[v]);
    }
  }
}
#endif

/* One image's output row: out[ow][o] = sum over the window of in * filter. */
static void direct_row(const flrt_window *w, int64_t O, const float *padded, int64_t oh,
                       const float *filter, float *out) {
  const int64_t C = w->in_c, pw = padded_w(w), sw = w->stride_w, entries = w->k_w * C;
  const float *in_row = padded + oh * w->stride_h * pw * C;
  int64_t o0 = 0;
#if DIRECT_BLOCKS
  if (w->out_w >= PIXELS)
    for (; o0 + FILTERS <= O; o0 += FILTERS)
      for (int64_t ow0 = 0; ow0 < w->out_w; ow0 += PIXELS) {
        /* The last block ends at the row's end, overlapping the one before
         * (its outputs are written twice, with the same values). */
        const int64_t start = ow0 + PIXELS <= w->out_w ? ow0 : w->out_w - PIXELS;
        direct_block(in_row + start * sw * C, pw * C, sw * C, entries, w->k_h, filter + o0, O,
                     out + start * O + o0);
      }
#endif
  if (o0 == O) return;
  for (int64_t ow = 0; ow < w->out_w; ow++) { /* the filters left: one output at a time */
    float *o = out + ow * O;
    for (int64_t j = o0; j < O; j++) o[j] = 0.0f;
    for (int64_t kh = 0; kh < w->k_h; kh++)
      for (int64_t e = 0; e < entries; e++) {
        const float x = in_row[kh * pw * C + ow * sw * C + e], *f = filter + (kh * entries + e) * O;
        for (int64_t j = o0; j < O; j++) o[j] += x * f[j];
      }
  }
}

/* One image's share of the filter gradient, added to dfilter:
 * dfilter[e][o] += sum over output pixels of in(window entry e) * dy[o]. */
static void direct_grad_filter_image(const flrt_window *w, int64_t O, const float *padded,
                                     const float *dy, float *dfilter) {
  const int64_t C = w->in_c, pw = padded_w(w), sw = w->stride_w, entries = w->k_w * C;
  for (int64_t oh = 0; oh < w->out_h; oh++) {
    const float *in_row = padded + oh * w->stride_h * pw * C, *g = dy + oh * w->out_w * O;
    int64_t o0 = 0;
#if DIRECT_BLOCKS
    for (; o0 + FILTERS <= O; o0 += FILTERS)
      for (int64_t ow0 = 0; ow0 < w->out_w; ow0 += PIXELS) {
        const int64_t pixels = w->out_w - ow0 < PIXELS ? w->out_w - ow0 : PIXELS;
        direct_grad_block(in_row + ow0 * sw * C, pw * C, sw * C, entries, w->k_h, g + ow0 * O + o0, O, pixels,
                          dfilter + o0);
      }
#endif
    for (int64_t ow = 0; ow < w->out_w && o0 < O; ow++) /* the filters left */
      for (int64_t kh = 0; kh < w->k_h; kh++)
        for (int64_t e = 0; e < entries; e++) {
          const float x = in_row[kh * pw * C + ow * sw * C + e];
          float *d = dfilter + (kh * entries + e) * O;
          for (int64_t j = o0; j < O; j++) d[j] += x * g[ow * O + j];
        }
  }
}

#if DIRECT_BLOCKS
/* The filter gradient of windows with many channels, one image at a time:
 * for each window cell (kh, kw), tiles of PIXELS channels x FILTERS filters
 * of dfilter stay in registers while the image's output pixels go by, each
 * pixel's dy row loaded once for PIXELS channels and each input value
 * broadcast once for FILTERS filters. The image (padded) and its dy stay in
 * a core's caches for all the tiles, and nothing is copied: im2col + sgemm
 * copied every input pixel 25 times for Deep MNIST's conv2. Channels and
 * filters past the last whole tile take plain loops. */
static void direct_grad_filter_tiles(const flrt_window *w, int64_t O, const float *padded, const float *dy,
                                     float *dfilter) {
  const int64_t C = w->in_c, pw = padded_w(w), sh = w->stride_h, sw = w->stride_w;
  for (int64_t kh = 0; kh < w->k_h; kh++)
    for (int64_t kw = 0; kw < w->k_w; kw++) {
      const float *cell = padded + (kh * pw + kw) * C; /* the cell's input for output pixel (0, 0) */
      float *d = dfilter + (kh * w->k_w + kw) * C * O;
      int64_t c0 = 0;
      for (; c0 + PIXELS <= C; c0 += PIXELS) {
        int64_t o0 = 0;
        for (; o0 + FILTERS <= O; o0 += FILTERS) {
          vec acc[PIXELS][FILTER_VECS];
          for (int i = 0; i < PIXELS; i++)
            for (int v = 0; v < FILTER_VECS; v++) acc[i][v] = LOAD_VEC(d + (c0 + i) * O + o0 + v * VEC);
          for (int64_t oh = 0; oh < w->out_h; oh++) {
            const float *x = cell + oh * sh * pw * C + c0, *g = dy + oh * w->out_w * O + o0;
            for (int64_t ow = 0; ow < w->out_w; ow++, x += sw * C, g += O) {
              vec gv[FILTER_VECS];
              for (int v = 0; v < FILTER_VECS; v++) gv[v] = LOAD_VEC(g + v * VEC);
              for (int i = 0; i < PIXELS; i++)
                for (int v = 0; v < FILTER_VECS; v++) acc[i][v] += x[i] * gv[v];
            }
          }
          for (int i = 0; i < PIXELS; i++)
            for (int v = 0; v < FILTER_VECS; v++) STORE_VEC(d + (c0 + i) * O + o0 + v * VEC, acc[i][v]);
        }
        for (; o0 < O; o0++) /* the filters left, for this tile's channels */
          for (int64_t oh = 0; oh < w->out_h; oh++)
            for (int64_t ow = 0; ow < w->out_w; ow++) {
              const float *x = cell + (oh * sh * pw + ow * sw) * C + c0;
              const float g = dy[(oh * w->out_w + ow) * O + o0];
              for (int i = 0; i < PIXELS; i++) d[(c0 + i) * O + o0] += x[i] * g;
            }
      }
      for (; c0 < C; c0++) /* the channels left, for every filter */
        for (int64_t oh = 0; oh < w->out_h; oh++)
          for (int64_t ow = 0; ow < w->out_w; ow++) {
            const float x = cell[(oh * sh * pw + ow * sw) * C + c0], *g = dy + (oh * w->out_w + ow) * O;
            for (int64_t o = 0; o < O; o++) d[c0 * O + o] += x * g[o];
          }
    }
}
#endif

/* One chunk of a window's batch: images [first, first + part.batch). */
typedef struct {
  int64_t first;
  flrt_window part;
} conv_chunk;

typedef void chunk_work(const conv_chunk *chunk, float *scratch, void *ctx);

/* Runs work on chunks [first, end) of w's batch, chunks of `size` images. */
static void run_chunks(const flrt_window *w, int64_t size, int64_t first, int64_t end, float *scratch,
                       chunk_work *work, void *ctx) {
  for (int64_t c = first; c < end; c++) {
    conv_chunk chunk = {.first = c * size, .part = *w};
    chunk.part.batch = w->batch - chunk.first < size ? w->batch - chunk.first : size;
    work(&chunk, scratch, ctx);
  }
}

/* Runs work on every chunk of w's batch. The chunks are shared out among the
 * threads in fixed contiguous runs, and `scratch` is the running thread's
 * share of cols, from its start (the chunk's matrix or padded image) and at
 * partial_at (its partial filter gradient). */
static void for_each_chunk(const flrt_window *w, int64_t out_c, float *cols, chunk_work *work, void *ctx) {
  const int64_t size = flrt_conv2d_chunk(w), chunks = chunk_count(w), threads = chunk_threads(w);
  const int64_t share = thread_scratch(w, out_c), per_thread = (chunks + threads - 1) / threads;
  if (threads == 1) {
    /* Outside any parallel region, even an inactive one: a GEMM called inside
     * one opens a nested team of fresh threads on every call. */
    run_chunks(w, size, 0, chunks, cols, work, ctx);
    return;
  }
  FLRT_OMP(omp parallel for schedule(static, 1) num_threads(threads))
  for (int64_t t = 0; t < threads; t++) {
    const int64_t end = (t + 1) * per_thread < chunks ? (t + 1) * per_thread : chunks;
    run_chunks(w, size, t * per_thread, end, cols + t * share, work, ctx);
  }
}

/* Where a thread's partial filter gradient starts in its share. */
static int64_t partial_at(const flrt_window *w, int64_t out_c) {
  return thread_scratch(w, out_c) - window_cols(w) * out_c;
}

typedef struct {
  const flrt_window *w;
  int64_t out_c;
  const float *x, *filter, *dy, *bias;
  bool relu;
  float *out, *dx;
} conv_args;

/* The forward pass's epilogue on rows x O outputs: + bias, then relu. */
static void add_bias(float *out, int64_t rows, int64_t O, const float *bias, bool relu) {
  for (int64_t r = 0; r < rows; r++) {
    float *row = out + r * O;
    if (relu)
      for (int64_t o = 0; o < O; o++) row[o] = row[o] + bias[o] > 0.0f ? row[o] + bias[o] : 0.0f;
    else
      for (int64_t o = 0; o < O; o++) row[o] += bias[o];
  }
}

static void forward_chunk(const conv_chunk *c, float *scratch, void *ctx) {
  const conv_args *a = ctx;
  const flrt_window *w = &c->part;
  const int64_t O = a->out_c, image_in = w->in_h * w->in_w * w->in_c, image_rows = w->out_h * w->out_w;
  const float *x = a->x + c->first * image_in;
  float *out = a->out + c->first * image_rows * O;
  if (forward_runs_direct(w)) {
    for (int64_t n = 0; n < w->batch; n++) {
      pad_image(w, x + n * image_in, scratch);
      for (int64_t oh = 0; oh < w->out_h; oh++)
        direct_row(w, O, scratch, oh, a->filter, out + (n * image_rows + oh * w->out_w) * O);
    }
  } else {
    /* out (P x O) = cols (P x K) @ filter (K x O): HWIO is already K x O. */
    const int64_t K = window_cols(w);
    flrt_im2col(w, x, scratch);
    flrt_gemm(false, false, w->batch * image_rows, O, K, scratch, K, a->filter, O, out, O, false);
  }
  /* while the chunk's output is still in cache */
  if (a->bias) add_bias(out, w->batch * image_rows, O, a->bias, a->relu);
}

/* The window of output rows [oh0, oh1) of one image, and where its input
 * starts: the rows above the band are cut off, and only the image's own
 * padding is kept. */
static const float *band_window(const flrt_window *w, const float *img, int64_t oh0, int64_t oh1,
                                flrt_window *band) {
  *band = *w;
  band->batch = 1;
  band->out_h = oh1 - oh0;
  const int64_t top = oh0 * w->stride_h - w->pad_top; /* the band's first window row in the image */
  if (top < 0) {
    band->pad_top = -top;
    return img;
  }
  band->pad_top = 0;
  band->in_h = w->in_h - top;
  return img + top * w->in_w * w->in_c;
}

/* Band b of `bands` of image n, in `scratch` (one thread's share). */
static void forward_band(const conv_args *a, int64_t n, int64_t b, int64_t bands, float *scratch) {
  const flrt_window *w = a->w;
  const int64_t O = a->out_c, image_in = w->in_h * w->in_w * w->in_c, image_rows = w->out_h * w->out_w;
  const int64_t oh0 = w->out_h * b / bands, oh1 = w->out_h * (b + 1) / bands;
  const float *img = a->x + n * image_in;
  float *out = a->out + (n * image_rows + oh0 * w->out_w) * O;
  if (forward_runs_direct(w)) {
    pad_image(w, img, scratch); /* the whole image: cheap beside the band's work */
    for (int64_t oh = oh0; oh < oh1; oh++) direct_row(w, O, scratch, oh, a->filter, out + (oh - oh0) * w->out_w * O);
  } else {
    flrt_window band;
    const float *x = band_window(w, img, oh0, oh1, &band);
    flrt_im2col(&band, x, scratch);
    flrt_gemm(false, false, window_rows(&band), O, window_cols(w), scratch, window_cols(w), a->filter, O, out, O,
              false);
  }
  if (a->bias) add_bias(out, (oh1 - oh0) * w->out_w, O, a->bias, a->relu);
}

/* Every image's bands, shared out among the threads in contiguous runs. */
static void forward_bands(const conv_args *a, int64_t bands, float *cols) {
  const int64_t threads = max_threads(), share = thread_scratch(a->w, a->out_c);
  const int64_t items = a->w->batch * bands, per_thread = (items + threads - 1) / threads;
  FLRT_OMP(omp parallel for schedule(static, 1) num_threads(threads))
  for (int64_t t = 0; t < threads; t++)
    for (int64_t i = t * per_thread; i < (t + 1) * per_thread && i < items; i++)
      forward_band(a, i / bands, i % bands, bands, cols + t * share);
}

void flrt_conv2d_bias(const flrt_window *w, int64_t out_c, const float *x, const float *filter,
                      const float *bias, bool relu, float *out, float *cols) {
  const int64_t K = window_cols(w), O = out_c, P = window_rows(w);
  if (K <= 0 && P > 0 && O > 0) { /* an empty window: the outputs are the epilogue of 0 */
    zero(out, P * O);
    if (bias) add_bias(out, P, O, bias, relu);
    return;
  }
  if (degenerate(P, O, K, out)) return;
  if (is_pointwise(w)) {
    flrt_gemm(false, false, P, O, K, x, K, filter, O, out, O, false);
    if (bias) {
      FLRT_PARALLEL_LOOP(P * O, for (int64_t r = 0; r < P; r++) { add_bias(out + r * O, 1, O, bias, relu); });
    }
    return;
  }
  if (runs_winograd(w, out_c)) {
    winograd_conv(w, out_c, x, filter, bias, relu, out, cols, true);
    return;
  }
  conv_args a = {.w = w, .out_c = out_c, .x = x, .filter = filter, .bias = bias, .relu = relu, .out = out};
  const int64_t bands = row_bands(w, out_c);
  if (bands > 1) forward_bands(&a, bands, cols);
  else for_each_chunk(w, out_c, cols, forward_chunk, &a);
}

void flrt_conv2d(const flrt_window *w, int64_t out_c, const float *x, const float *filter,
                 float *out, float *cols) {
  flrt_conv2d_bias(w, out_c, x, filter, NULL, false, out, cols);
}

static void grad_input_chunk(const conv_chunk *c, float *scratch, void *ctx) {
  const conv_args *a = ctx;
  const flrt_window *w = &c->part;
  const int64_t O = a->out_c, K = window_cols(w), image_rows = w->out_h * w->out_w;
  /* dcols (P x K) = dy (P x O) @ filter^T (O x K), then scatter back (col2im
   * zeroes its chunk of dx first). */
  flrt_gemm(false, true, w->batch * image_rows, K, O, a->dy + c->first * image_rows * O, O, a->filter, O, scratch, K,
       false);
  flrt_col2im(w, scratch, a->dx + c->first * w->in_h * w->in_w * w->in_c);
}

/* dx of a chunk's images: direct rows of the transposed window. */
static void grad_input_direct_chunk(const conv_chunk *c, float *scratch, void *ctx) {
  const conv_args *a = ctx;
  const flrt_window *w = &c->part;
  const int64_t O = a->out_c, C = w->in_c, image_in = w->in_h * w->in_w * C, image_rows = w->out_h * w->out_w;
  flrt_window t;
  transposed_window(w, O, &t);
  for (int64_t n = c->first; n < c->first + w->batch; n++) {
    pad_image(&t, a->dy + n * image_rows * O, scratch);
    for (int64_t ih = 0; ih < w->in_h; ih++)
      direct_row(&t, C, scratch, ih, a->filter, a->dx + n * image_in + ih * w->in_w * C);
  }
}

/* The filter turned by 180 degrees with its channels swapped:
 * turned[kh'][kw'][o][c] = filter[k_h-1-kh'][k_w-1-kw'][c][o]. */
static void turn_filter(const flrt_window *w, int64_t O, const float *filter, float *turned) {
  const int64_t C = w->in_c;
  for (int64_t kh = 0; kh < w->k_h; kh++)
    for (int64_t kw = 0; kw < w->k_w; kw++) {
      const float *f = filter + ((w->k_h - 1 - kh) * w->k_w + (w->k_w - 1 - kw)) * C * O;
      float *t = turned + (kh * w->k_w + kw) * O * C;
      for (int64_t c = 0; c < C; c++)
        for (int64_t o = 0; o < O; o++) t[o * C + c] = f[c * O + o];
    }
}

void flrt_conv2d_grad_input(const flrt_window *w, int64_t out_c, const float *dy,
                            const float *filter, float *dx, float *cols) {
  const int64_t P = window_rows(w), K = window_cols(w), O = out_c;
  if (is_pointwise(w)) {
    /* dx is laid out exactly like dcols here, so the GEMM writes it. */
    if (!degenerate(P, K, O, dx)) flrt_gemm(false, true, P, K, O, dy, O, filter, O, dx, K, false);
    return;
  }
  if (P <= 0 || K <= 0 || O <= 0) {
    zero(dx, w->batch * w->in_h * w->in_w * w->in_c);
    return;
  }
  if (grad_input_runs_winograd(w, out_c)) {
    flrt_window t;
    transposed_window(w, out_c, &t);
    turn_filter(w, out_c, filter, cols);
    winograd_conv(&t, w->in_c, dy, cols, NULL, false, dx, cols + turned_floats(w, out_c), false);
    return;
  }
  conv_args a = {.w = w, .out_c = out_c, .filter = filter, .dy = dy, .dx = dx};
  if (grad_input_runs_direct(w, out_c)) {
    /* The turned filter waits where the first thread's partial filter
     * gradient goes, unused here. */
    float *turned = cols + partial_at(w, out_c);
    turn_filter(w, out_c, filter, turned);
    a.filter = turned;
    for_each_chunk(w, out_c, cols, grad_input_direct_chunk, &a);
    return;
  }
  for_each_chunk(w, out_c, cols, grad_input_chunk, &a);
}

static void grad_filter_chunk(const conv_chunk *c, float *scratch, void *ctx) {
  const conv_args *a = ctx;
  const flrt_window *w = &c->part;
  const int64_t O = a->out_c, K = window_cols(w), image_in = w->in_h * w->in_w * w->in_c;
  const int64_t image_rows = w->out_h * w->out_w;
  float *partial = scratch + partial_at(a->w, O);
  const float *x = a->x + c->first * image_in, *dy = a->dy + c->first * image_rows * O;
  /* The direct loops: one padded image at a time. */
  void (*per_image)(const flrt_window *, int64_t, const float *, const float *, float *) =
      runs_direct(w) ? direct_grad_filter_image : NULL;
#if DIRECT_BLOCKS
  if (!per_image && grad_filter_runs_tiled(w, O)) per_image = direct_grad_filter_tiles;
#endif
  if (per_image) {
    for (int64_t n = 0; n < w->batch; n++) {
      pad_image(w, x + n * image_in, scratch);
      per_image(w, O, scratch, dy + n * image_rows * O, partial);
    }
    return;
  }
  /* partial (K x O) += cols^T (K x rows) @ dy (rows x O). */
  flrt_im2col(w, x, scratch);
  flrt_gemm(true, false, K, O, w->batch * image_rows, scratch, K, dy, O, partial, O, true);
}

void flrt_conv2d_grad_filter(const flrt_window *w, int64_t out_c, const float *x,
                             const float *dy, float *dfilter, float *cols) {
  const int64_t P = window_rows(w), K = window_cols(w), O = out_c;
  if (degenerate(K, O, P, dfilter)) return;
  if (is_pointwise(w)) {
    flrt_gemm(true, false, K, O, P, x, K, dy, O, dfilter, O, false);
    return;
  }
  /* Each thread sums its chunks into its own partial gradient; the partials
   * are then added in thread order, so the result does not depend on which
   * thread finished first. */
  const int64_t threads = chunk_threads(w), share = thread_scratch(w, out_c), at = partial_at(w, out_c);
  for (int64_t t = 0; t < threads; t++) zero(cols + t * share + at, K * O);
  conv_args a = {.w = w, .out_c = out_c, .x = x, .dy = dy};
  for_each_chunk(w, out_c, cols, grad_filter_chunk, &a);
  memcpy(dfilter, cols + at, (size_t)(K * O) * sizeof *dfilter);
  for (int64_t t = 1; t < threads; t++) {
    const float *partial = cols + t * share + at;
    for (int64_t i = 0; i < K * O; i++) dfilter[i] += partial[i];
  }
}

/* ---- softmax cross-entropy --------------------------------------------------
 * A classifier's rows are short (10 classes): vectors along a row would
 * leave most lanes idle, so VEC rows are taken at a time, turned so that
 * each lane holds one row, and every class is then one vector operation.
 * exp and log are polynomials on vectors (Cephes' expf and logf, within
 * 2 ulp of the C library's on the ranges used): the C library's are called
 * one value at a time, 20 cycles each, four fifths of the step's softmax. */

#if DIRECT_BLOCKS
/* The most classes a block of rows turns into lanes (a stack buffer of
 * XENT_BLOCKS x XENT_MAX_CLASSES x VEC floats, 16 KiB with AVX-512); wider
 * rows take the plain loop. */
#define XENT_MAX_CLASSES 64

/* Macros and pointers, not vectors passed by value: see unaligned_vec. */
#define SPLAT(x) ((vec){0} + (x))
#define SELECT(m, yes, no) ((vec)(((mask)(yes) & (m)) | ((mask)(no) & ~(m))))

/* e^x in place, for x up to 88 (e^88.7 is the largest float); below -87.3
 * it gives 2^-126, which a softmax's sum of at least 1 does not see. */
static inline void exp_in_place(vec *v) {
  const vec lowest = SPLAT(-87.33654f), round = SPLAT(12582912.0f); /* 1.5 * 2^23 */
  const vec x = SELECT(*v < lowest, lowest, *v);
  const vec n = (x * 1.44269504088896341f + round) - round; /* nearest integer of x / ln 2 */
  const vec r = x - n * 0.693359375f + n * 2.12194440e-4f;  /* ln 2 in two parts */
  vec p = SPLAT(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const mask exponent = (__builtin_convertvector(n, mask) + 127) << 23; /* 2^n */
  *v = p * (vec)exponent;
}

/* ln x in place, for positive normal x (a sum of exponentials, at least 1). */
static inline void log_in_place(vec *v) {
  const mask bits = (mask)*v;
  mask exponent = ((bits >> 23) & 0xff) - 127;
  vec m = (vec)((bits & 0x7fffff) | 0x3f800000); /* x / 2^exponent, in [1, 2) */
  const mask high = m > 1.41421356f;             /* then m / 2, in [sqrt(1/2), sqrt(2)) */
  exponent -= high;                              /* true is -1 */
  m = SELECT(high, m * 0.5f, m);
  const vec f = m - 1.0f, e = __builtin_convertvector(exponent, vec), z = f * f;
  vec p = SPLAT(7.0376836292e-2f);
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  *v = f + (f * z * p - e * 2.12194440e-4f - 0.5f * z) + e * 0.693359375f;
}

/* Rows [r0, r0 + XENT_BLOCK_ROWS), those from `end` on left out. Each
 * row's maximum and label sums are taken along the row, its logits less the
 * maximum turned into lanes (a block of VEC rows at a time) for the
 * exponentials, and the gradient turned back along the rows. Each of these
 * passes reads what the one before stored long before: a vector read of
 * values just stored one by one (or one by one of a vector just stored)
 * waits for the stores to finish, three times the time. */
#define XENT_BLOCKS 4
#define XENT_BLOCK_ROWS (XENT_BLOCKS * VEC)
static void softmax_xent_rows(int64_t r0, int64_t end, int64_t classes, const float *labels, const float *logits,
                              const float *dy, float *loss, float *grad) {
  float shifted[XENT_BLOCKS][XENT_MAX_CLASSES][VEC], label_sums[XENT_BLOCKS][VEC], label_dots[XENT_BLOCKS][VEC];
  float factors[XENT_BLOCKS][VEC], losses[XENT_BLOCKS][VEC];
  const int64_t count = end - r0 < XENT_BLOCK_ROWS ? end - r0 : XENT_BLOCK_ROWS;
  const int blocks = (int)((count + VEC - 1) / VEC);
  for (int i = 0; i < blocks * VEC; i++) {
    const int64_t r = r0 + (i < count ? i : count - 1);
    const float *zr = logits + r * classes, *yr = labels + r * classes;
    float max = zr[0];
    for (int64_t c = 1; c < classes; c++) max = zr[c] > max ? zr[c] : max;
    float label_sum = 0.0f, label_dot = 0.0f;
    for (int64_t c = 0; c < classes; c++) {
      const float s = zr[c] - max;
      shifted[i / VEC][c][i % VEC] = s;
      label_sum += yr[c];
      label_dot += yr[c] * s;
    }
    label_sums[i / VEC][i % VEC] = label_sum;
    label_dots[i / VEC][i % VEC] = label_dot;
  }
  for (int b = 0; b < blocks; b++) {
    vec sum = {0};
    for (int64_t c = 0; c < classes; c++) {
      vec e = LOAD_VEC(shifted[b][c]);
      exp_in_place(&e);
      STORE_VEC(shifted[b][c], e);
      sum += e;
    }
    vec log_sum = sum;
    log_in_place(&log_sum);
    /* -sum(labels * (z - max - log(sum))) */
    STORE_VEC(losses[b], LOAD_VEC(label_sums[b]) * log_sum - LOAD_VEC(label_dots[b]));
    STORE_VEC(factors[b], 1.0f / sum);
  }
  for (int64_t i = 0; i < count; i++) {
    if (loss) loss[r0 + i] = losses[i / VEC][i % VEC];
    if (!grad) continue;
    const float *yr = labels + (r0 + i) * classes;
    float *gr = grad + (r0 + i) * classes;
    const float scale = dy[r0 + i], factor = factors[i / VEC][i % VEC] * scale;
    for (int64_t c = 0; c < classes; c++) gr[c] = shifted[i / VEC][c][i % VEC] * factor - yr[c] * scale;
  }
}
#endif

#if SHUFFLE_16
/* At most 16 classes (a classifier's 10): a block of 16 rows is loaded a
 * row a vector, turned into a vector a class by the register transpose, and
 * the gradient turned back, where softmax_xent_rows moves every value
 * through the stack one at a time (1.7-2.5 us for 100 rows of 10, against
 * 0.85-1.3). Lanes past the classes and rows past the end hold zeros; they
 * are neither summed nor stored. */
#define XENT_NARROW_CLASSES VEC
static void softmax_xent_narrow(int64_t r0, int64_t end, int64_t classes, const float *labels, const float *logits,
                                const float *dy, float *loss, float *grad) {
  const __mmask16 in_row = (__mmask16)((1u << classes) - 1);
  for (int64_t r = r0; r < end; r += VEC) {
    const int count = end - r < VEC ? (int)(end - r) : VEC;
    const __mmask16 in_block = (__mmask16)((1u << count) - 1);
    vec z[VEC], y[VEC];
    for (int i = 0; i < VEC; i++) {
      z[i] = i < count ? (vec)_mm512_maskz_loadu_ps(in_row, logits + (r + i) * classes) : (vec){0};
      y[i] = i < count ? (vec)_mm512_maskz_loadu_ps(in_row, labels + (r + i) * classes) : (vec){0};
    }
    transpose_16(z);
    transpose_16(y);
    vec max = z[0];
    for (int c = 1; c < classes; c++) max = SELECT(z[c] > max, z[c], max);
    vec sum = {0}, label_sum = {0}, label_dot = {0};
    for (int c = 0; c < classes; c++) {
      z[c] -= max;
      label_sum += y[c];
      label_dot += y[c] * z[c];
      exp_in_place(&z[c]);
      sum += z[c];
    }
    if (loss) {
      vec log_sum = sum;
      log_in_place(&log_sum);
      /* -sum(labels * (z - max - log(sum))) */
      _mm512_mask_storeu_ps(loss + r, in_block, (__m512)(label_sum * log_sum - label_dot));
    }
    if (!grad) continue;
    const vec scale = (vec)_mm512_maskz_loadu_ps(in_block, dy + r), factor = scale / sum;
    for (int c = 0; c < classes; c++) z[c] = z[c] * factor - y[c] * scale;
    transpose_16(z);
    for (int i = 0; i < count; i++) _mm512_mask_storeu_ps(grad + (r + i) * classes, in_row, (__m512)z[i]);
  }
}
#endif

/* One row, plain loops. */
static void softmax_xent_row(int64_t r, int64_t classes, const float *labels, const float *logits, const float *dy,
                             float *loss, float *grad) {
  const float *z = logits + r * classes, *y = labels + r * classes;
  float max = z[0];
  for (int64_t c = 1; c < classes; c++)
    if (z[c] > max) max = z[c];
  float sum = 0.0f, label_sum = 0.0f, label_dot = 0.0f;
  for (int64_t c = 0; c < classes; c++) {
    const float shifted = z[c] - max;
    sum += expf(shifted);
    label_sum += y[c];
    label_dot += y[c] * shifted;
  }
  if (loss) loss[r] = label_sum * logf(sum) - label_dot;
  if (!grad) return;
  const float factor = dy[r] / sum;
  for (int64_t c = 0; c < classes; c++) grad[r * classes + c] = expf(z[c] - max) * factor - y[c] * dy[r];
}

/* Threads pay from this many logits on: a row of 10 takes some 15 ns, and
 * waking the other thread 0.5 to 1 us, plus the gradient's cache lines
 * coming back from the core that read them in the weight gradient. */
#define XENT_THREADS_MIN 4096

/* Rows [first, end). */
static void softmax_xent_part(int64_t first, int64_t end, int64_t classes, const float *labels, const float *logits,
                              const float *dy, float *loss, float *grad) {
#if SHUFFLE_16
  if (classes <= XENT_NARROW_CLASSES) {
    softmax_xent_narrow(first, end, classes, labels, logits, dy, loss, grad);
    return;
  }
#endif
#if DIRECT_BLOCKS
  if (classes <= XENT_MAX_CLASSES) {
    for (int64_t r = first; r < end; r += XENT_BLOCK_ROWS)
      softmax_xent_rows(r, end, classes, labels, logits, dy, loss, grad);
    return;
  }
#endif
  for (int64_t r = first; r < end; r++) softmax_xent_row(r, classes, labels, logits, dy, loss, grad);
}

void flrt_softmax_xent(int64_t rows, int64_t classes, const float *labels, const float *logits, const float *dy,
                       float *loss, float *grad) {
  if (rows <= 0 || classes <= 0) return;
  int64_t threads = rows * classes >= XENT_THREADS_MIN ? max_threads() : 1;
  if (threads > rows) threads = rows;
  if (threads <= 1) { /* no one-thread team (0.3 us) */
    softmax_xent_part(0, rows, classes, labels, logits, dy, loss, grad);
    return;
  }
  FLRT_OMP(omp parallel for schedule(static, 1) num_threads(threads))
  for (int64_t t = 0; t < threads; t++)
    softmax_xent_part(rows * t / threads, rows * (t + 1) / threads, classes, labels, logits, dy, loss, grad);
}

/* ---- sums ---------------------------------------------------------------- */

/* Columns summed at a time, and the most threads that share the rows: the
 * partial sums live on the stack (16 KiB). */
#define SUM_COLUMNS 256
#define SUM_MAX_THREADS 16

void flrt_sum_rows(const float *in, int64_t rows, int64_t cols, float *out) {
  int64_t threads = rows * cols >= FLRT_PARALLEL_MIN ? max_threads() : 1;
  if (threads > rows) threads = rows;
  if (threads <= 1) {
    for (int64_t c = 0; c < cols; c++) out[c] = 0.0f;
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) out[c] += in[r * cols + c];
    return;
  }
  /* Each thread sums a contiguous run of rows; the runs' sums are then added
   * in thread order, so for one thread count the result never changes. */
  for (int64_t c0 = 0; c0 < cols; c0 += SUM_COLUMNS) {
    const int64_t width = cols - c0 < SUM_COLUMNS ? cols - c0 : SUM_COLUMNS;
    float partial[SUM_MAX_THREADS][SUM_COLUMNS];
    const int64_t used = threads < SUM_MAX_THREADS ? threads : SUM_MAX_THREADS;
    FLRT_OMP(omp parallel for schedule(static, 1) num_threads(used))
    for (int64_t t = 0; t < used; t++) {
      float *sum = partial[t];
      for (int64_t c = 0; c < width; c++) sum[c] = 0.0f;
      for (int64_t r = rows * t / used; r < rows * (t + 1) / used; r++)
        for (int64_t c = 0; c < width; c++) sum[c] += in[r * cols + c0 + c];
    }
    for (int64_t c = 0; c < width; c++) {
      float total = partial[0][c];
      for (int64_t t = 1; t < used; t++) total += partial[t][c];
      out[c0 + c] = total;
    }
  }
}

/* ---- max_pool ------------------------------------------------------------ */

/* Channels run innermost in NHWC, over contiguous memory: each window cell
 * updates all channels at once, which the compiler turns into vector max and
 * blend instructions. Padding cells are skipped rather than read as 0, so they
 * never win (as -inf would not). Output rows are independent, so the threads
 * share them out. */
/* The pool threads from far fewer elements than other loops: its input is
 * a convolution's output, which the threads wrote in runs of images or bands
 * of rows in the same order as they split the pool's rows here, so each
 * thread reads what its own core holds. On one thread the other half comes
 * across from the other core's cache (batch-1 Deep MNIST's first pool: 10
 * us instead of 2 where a fork and join costs 1 us). */
#define POOL_THREADS_MIN 2048
void flrt_max_pool(const flrt_window *w, const float *x, float *out) {
  const int64_t C = w->in_c, rows = w->batch * w->out_h;
  FLRT_PARALLEL_LOOP_FROM(POOL_THREADS_MIN, rows * w->out_w * C,
  for (int64_t r = 0; r < rows; r++) {
    const int64_t n = r / w->out_h, oh = r % w->out_h;
    const float *img = x + n * w->in_h * w->in_w * C;
    float *dst = out + r * w->out_w * C;
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
  });
}

/* Channels per pass of the gradient: the running maxima and their positions
 * live in small stack arrays. */
#define POOL_CHANNEL_BLOCK 256

/* Windows that tile the image exactly (2x2 windows with stride 2 on an even
 * image, as in Deep MNIST): every input cell belongs to one window, so dx is
 * written once, the window's gradient at its maximum and 0 elsewhere, with no
 * zeroing pass and no scatter. */
static bool pool_tiles_image(const flrt_window *w) {
  return w->stride_h == w->k_h && w->stride_w == w->k_w && w->pad_top == 0 && w->pad_left == 0 &&
         w->out_h * w->k_h == w->in_h && w->out_w * w->k_w == w->in_w;
}

static void max_pool_grad_tiled_row(const flrt_window *w, const float *img, const float *g, float *dimg,
                                    int64_t oh, bool relu) {
  const int64_t C = w->in_c;
  float best[POOL_CHANNEL_BLOCK];
  int32_t which[POOL_CHANNEL_BLOCK]; /* the maximum's cell, kh * k_w + kw */
  for (int64_t ow = 0; ow < w->out_w; ow++, g += C) {
    for (int64_t c0 = 0; c0 < C; c0 += POOL_CHANNEL_BLOCK) {
      const int64_t width = C - c0 < POOL_CHANNEL_BLOCK ? C - c0 : POOL_CHANNEL_BLOCK;
      const float *first = img + (oh * w->k_h * w->in_w + ow * w->k_w) * C + c0;
      for (int64_t c = 0; c < width; c++) {
        best[c] = first[c];
        which[c] = 0;
      }
      /* Only strictly greater replaces, in (kh, kw) order: ties go to the
       * first maximum, as TensorFlow's CPU kernel does. */
      for (int32_t kh = 0, cell = 0; kh < w->k_h; kh++)
        for (int32_t kw = 0; kw < w->k_w; kw++, cell++) {
          if (cell == 0) continue;
          const float *px = img + ((oh * w->k_h + kh) * w->in_w + ow * w->k_w + kw) * C + c0;
          for (int64_t c = 0; c < width; c++) {
            const int greater = px[c] > best[c];
            best[c] = greater ? px[c] : best[c];
            which[c] = greater ? cell : which[c];
          }
        }
      for (int32_t kh = 0, cell = 0; kh < w->k_h; kh++)
        for (int32_t kw = 0; kw < w->k_w; kw++, cell++) {
          float *d = dimg + ((oh * w->k_h + kh) * w->in_w + ow * w->k_w + kw) * C + c0;
          if (relu) /* the maximum is the relu's output: no gradient where it is not positive */
            for (int64_t c = 0; c < width; c++) d[c] = which[c] == cell && best[c] > 0.0f ? g[c0 + c] : 0.0f;
          else
            for (int64_t c = 0; c < width; c++) d[c] = which[c] == cell ? g[c0 + c] : 0.0f;
        }
    }
  }
}

/* The same for 2x2 windows (Deep MNIST's pools), in one pass over each
 * pixel's channels with the four cells side by side: the general loops above
 * make seven short passes per pixel, each with its own set-up, and ran at a
 * seventh of the memory's speed. GCC does not vectorize the selects, so whole
 * vectors of channels are written with the vector type, cells chosen by
 * masks; the rest (and other compilers) take the plain loop. */
static void max_pool_grad_2x2_row(const flrt_window *w, const float *img, const float *g, float *dimg, int64_t oh,
                                  bool relu) {
  const int64_t C = w->in_c, row = w->in_w * C;
  for (int64_t ow = 0; ow < w->out_w; ow++, g += C) {
    const int64_t at = 2 * oh * row + 2 * ow * C;
    const float *x0 = img + at, *x1 = x0 + C, *x2 = x0 + row, *x3 = x2 + C;
    float *d0 = dimg + at, *d1 = d0 + C, *d2 = d0 + row, *d3 = d2 + C;
    int64_t c = 0;
#if DIRECT_BLOCKS
    for (; c + VEC <= C; c += VEC) {
      const vec v0 = LOAD_VEC(x0 + c), v1 = LOAD_VEC(x1 + c), v2 = LOAD_VEC(x2 + c), v3 = LOAD_VEC(x3 + c);
      /* Only strictly greater replaces, in cell order: ties go to the first
       * maximum, as in max_pool_grad_tiled_row. */
      const mask over1 = v1 > v0;
      const vec best1 = (vec)((over1 & (mask)v1) | (~over1 & (mask)v0));
      const mask over2 = v2 > best1;
      const vec best2 = (vec)((over2 & (mask)v2) | (~over2 & (mask)best1));
      const mask over3 = v3 > best2;
      const vec best = (vec)((over3 & (mask)v3) | (~over3 & (mask)best2));
      /* the maximum is the relu's output: no gradient where it is not positive */
      const mask keep = relu ? (mask)(best > (vec){0}) : ~(mask){0};
      const mask grad = (mask)LOAD_VEC(g + c) & keep;
      STORE_VEC(d0 + c, (vec)(grad & ~(over1 | over2 | over3)));
      STORE_VEC(d1 + c, (vec)(grad & over1 & ~(over2 | over3)));
      STORE_VEC(d2 + c, (vec)(grad & over2 & ~over3));
      STORE_VEC(d3 + c, (vec)(grad & over3));
    }
#endif
    for (; c < C; c++) {
      float best = x0[c];
      int32_t which = 0;
      if (x1[c] > best) best = x1[c], which = 1;
      if (x2[c] > best) best = x2[c], which = 2;
      if (x3[c] > best) best = x3[c], which = 3;
      const float grad = relu && !(best > 0.0f) ? 0.0f : g[c];
      d0[c] = which == 0 ? grad : 0.0f;
      d1[c] = which == 1 ? grad : 0.0f;
      d2[c] = which == 2 ? grad : 0.0f;
      d3[c] = which == 3 ? grad : 0.0f;
    }
  }
}

/* Any window: dx zeroed, then each window's gradient added at its maximum
 * (overlapping windows accumulate). */
static void max_pool_grad_image(const flrt_window *w, const float *img, const float *g, float *dimg) {
  const int64_t C = w->in_c;
  zero(dimg, w->in_h * w->in_w * C);
  float best[POOL_CHANNEL_BLOCK];
  int64_t where[POOL_CHANNEL_BLOCK];
  for (int64_t oh = 0; oh < w->out_h; oh++) {
    for (int64_t ow = 0; ow < w->out_w; ow++, g += C) {
      for (int64_t c0 = 0; c0 < C; c0 += POOL_CHANNEL_BLOCK) {
        const int64_t width = C - c0 < POOL_CHANNEL_BLOCK ? C - c0 : POOL_CHANNEL_BLOCK;
        for (int64_t c = 0; c < width; c++) {
          best[c] = -INFINITY;
          where[c] = -1;
        }
        for (int64_t kh = 0; kh < w->k_h; kh++) {
          int64_t ih = oh * w->stride_h + kh - w->pad_top;
          if (ih < 0 || ih >= w->in_h) continue;
          for (int64_t kw = 0; kw < w->k_w; kw++) {
            int64_t iw = ow * w->stride_w + kw - w->pad_left;
            if (iw < 0 || iw >= w->in_w) continue;
            const int64_t at = (ih * w->in_w + iw) * C + c0;
            const float *px = img + at;
            for (int64_t c = 0; c < width; c++) {
              const int greater = px[c] > best[c] || where[c] < 0;
              best[c] = greater ? px[c] : best[c];
              where[c] = greater ? at + c : where[c];
            }
          }
        }
        for (int64_t c = 0; c < width; c++)
          if (where[c] >= 0) dimg[where[c]] += g[c0 + c];
      }
    }
  }
}

static void max_pool_grad(const flrt_window *w, const float *x, const float *dy, float *dx, bool relu) {
  const int64_t image_in = w->in_h * w->in_w * w->in_c, image_out = w->out_h * w->out_w * w->in_c;
  if (pool_tiles_image(w)) {
    const int64_t rows = w->batch * w->out_h;
    FLRT_PARALLEL_LOOP(rows * w->out_w * w->in_c,
    for (int64_t r = 0; r < rows; r++) {
      const int64_t n = r / w->out_h, oh = r % w->out_h;
      const float *g = dy + n * image_out + oh * w->out_w * w->in_c;
      if (w->k_h == 2 && w->k_w == 2) max_pool_grad_2x2_row(w, x + n * image_in, g, dx + n * image_in, oh, relu);
      else max_pool_grad_tiled_row(w, x + n * image_in, g, dx + n * image_in, oh, relu);
    });
    return;
  }
  /* Windows overlap only within an image: the images are independent. */
  FLRT_PARALLEL_LOOP(w->batch * image_in,
  for (int64_t n = 0; n < w->batch; n++) {
    float *dimg = dx + n * image_in;
    const float *img = x + n * image_in;
    max_pool_grad_image(w, img, dy + n * image_out, dimg);
    if (relu)
      for (int64_t i = 0; i < image_in; i++) dimg[i] = img[i] > 0.0f ? dimg[i] : 0.0f;
  });
}

void flrt_max_pool_grad(const flrt_window *w, const float *x, const float *dy, float *dx) {
  max_pool_grad(w, x, dy, dx, false);
}

void flrt_max_pool_grad_relu(const flrt_window *w, const float *x, const float *dy, float *dx) {
  max_pool_grad(w, x, dy, dx, true);
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
