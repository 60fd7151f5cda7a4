/* flowc_rt_philox.h - Philox 4x32-10 and the dropout draw, one text for C hosts and CUDA kernels.
 *
 * The CUDA kernels that flowc generates include this header (NVRTC gets it as a
 * named header, nvcc finds it next to the kernels), and the tests compile the
 * very same text as C and compare it with rng.c's flrt_dropout_mask bit for
 * bit. That is how a GPU run draws exactly the CPU's dropout masks for a seed.
 *
 * Only 32- and 64-bit integer arithmetic, one exact integer-to-float
 * conversion, one IEEE division and one comparison: nothing that a compiler
 * or a math library could round differently on the two sides. No includes,
 * because NVRTC has no C library headers. */
#ifndef FLOWC_RT_PHILOX_H
#define FLOWC_RT_PHILOX_H

#if defined(__CUDACC__)
#define FLRT_HD static __device__ __forceinline__
#else
#define FLRT_HD static inline
#endif

/* Fixed widths without <stdint.h>: true on every target flowc supports. */
typedef unsigned int flrt_u32;
typedef unsigned long long flrt_u64;

/* The four output words of one Philox block. */
typedef struct {
  flrt_u32 w0, w1, w2, w3;
} flrt_philox_words;

/* Philox 4x32-10 (Salmon et al., SC 2011), as rng.c's flrt_philox4x32. */
FLRT_HD flrt_philox_words flrt_philox4x32_10(flrt_u32 c0, flrt_u32 c1, flrt_u32 c2, flrt_u32 c3,
                                             flrt_u32 k0, flrt_u32 k1) {
  for (int round = 0; round < 10; round++) {
    if (round > 0) {
      k0 += 0x9E3779B9u; /* golden ratio */
      k1 += 0xBB67AE85u; /* sqrt(3) - 1 */
    }
    const flrt_u64 p0 = (flrt_u64)0xD2511F53u * c0;
    const flrt_u64 p1 = (flrt_u64)0xCD9E8D57u * c2;
    const flrt_u32 n0 = (flrt_u32)(p1 >> 32) ^ c1 ^ k0;
    const flrt_u32 n1 = (flrt_u32)p1;
    const flrt_u32 n2 = (flrt_u32)(p0 >> 32) ^ c3 ^ k1;
    const flrt_u32 n3 = (flrt_u32)p0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  flrt_philox_words out = {c0, c1, c2, c3};
  return out;
}

/* Element `index` of the dropout mask of run `run`: the value rng.c's
 * flrt_dropout_mask(dst, n, keep_prob, seed, stream, run) stores in dst[index].
 * Block (index lo, index hi, stream, run lo) under key (seed lo, seed hi ^ run
 * hi); the top 24 bits of word 0 as a float in [0, 1) (2^-24 written out, so
 * that no hexadecimal float literal is needed) decide keep or drop. */
FLRT_HD float flrt_dropout_element(flrt_u64 seed, flrt_u32 stream, flrt_u64 run, flrt_u64 index,
                                   float keep_prob) {
  if (!(keep_prob > 0.0f)) return 0.0f; /* nothing kept; also NaN */
  const float scale = 1.0f / keep_prob;
  const flrt_u64 run_seed = seed ^ ((run >> 32) << 32);
  const flrt_philox_words r =
      flrt_philox4x32_10((flrt_u32)index, (flrt_u32)(index >> 32), stream, (flrt_u32)run,
                         (flrt_u32)run_seed, (flrt_u32)(run_seed >> 32));
  return (float)(r.w0 >> 8) * 5.9604644775390625e-08f < keep_prob ? scale : 0.0f;
}

#endif
