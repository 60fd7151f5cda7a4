/* flowc_freestanding.c - the few C library functions inference code calls, for targets without a C library (wasm32).
 *
 * Generated model code declares these itself when FLOWC_FREESTANDING is
 * defined or the target is bare wasm32, and flowc links this file in. The
 * float functions compute in double and round once, which makes them
 * correctly rounded in practice: exp by range reduction x = k ln2 + r and a
 * Taylor series, log by x = m 2^e and log m = 2 atanh((m - 1) / (m + 1)).
 * memset and friends are byte loops; compilers do not turn a loop inside a
 * function of that name back into a call of itself. */
#include <stddef.h>
#include <stdint.h>

float expf(float x);
float logf(float x);
float sqrtf(float x);
float tanhf(float x);
double exp(double x);
double log(double x);
void *memset(void *s, int c, size_t n);
void *memcpy(void *restrict dst, const void *restrict src, size_t n);
void *memmove(void *dst, const void *src, size_t n);

static double bits_to_double(uint64_t bits) {
  union {
    uint64_t u;
    double d;
  } v = {bits};
  return v.d;
}

static uint64_t double_to_bits(double d) {
  union {
    double d;
    uint64_t u;
  } v = {d};
  return v.u;
}

/* 2^k for any k in [-1074, 1023], exactly. */
static double pow2(int k) {
  if (k < -1022) return bits_to_double((uint64_t)(1023 - 1022) << 52) * bits_to_double((uint64_t)(1023 + k + 1022) << 52);
  return bits_to_double((uint64_t)(1023 + k) << 52);
}

static const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;

double exp(double x) {
  if (x != x) return x;
  if (x > 709.782712893384) return 1.0 / 0.0;
  if (x < -745.1332191019412) return 0.0;
  int k = (int)(x * 1.4426950408889634 + (x < 0 ? -0.5 : 0.5));
  double r = (x - k * LN2_HI) - k * LN2_LO; /* |r| <= ln2 / 2 */
  double term = 1.0, sum = 1.0;
  for (int i = 1; i <= 14; i++) {
    term *= r / i;
    sum += term;
  }
  if (k > 1023) return sum * pow2(1023) * pow2(k - 1023);
  if (k < -1022) return sum * pow2(-1022) * pow2(k + 1022);
  return sum * pow2(k);
}

double log(double x) {
  if (x != x || x < 0) return 0.0 / 0.0;
  if (x == 0) return -1.0 / 0.0;
  if (x == 1.0 / 0.0) return x;
  int e = 0;
  if (x < 2.2250738585072014e-308) { /* subnormal: scale into the normal range */
    x *= 18014398509481984.0;           /* 2^54 */
    e = -54;
  }
  uint64_t bits = double_to_bits(x);
  e += (int)((bits >> 52) & 0x7ff) - 1023;
  double m = bits_to_double((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull); /* [1, 2) */
  if (m > 1.4142135623730951) {
    m *= 0.5;
    e++;
  }
  double s = (m - 1) / (m + 1), s2 = s * s, term = s, sum = 0; /* |s| < 0.172 */
  for (int i = 1; i <= 27; i += 2) {
    sum += term / i;
    term *= s2;
  }
  return 2 * sum + e * LN2_LO + e * LN2_HI;
}

float expf(float x) { return (float)exp((double)x); }
float logf(float x) { return (float)log((double)x); }

float tanhf(float x) {
  double d = x;
  if (d > 10) return 1.0f;
  if (d < -10) return -1.0f;
  if (d > -1e-4 && d < 1e-4) return x; /* tanh x = x - x^3/3: the cubic is below float precision */
  double e = exp(2 * d);
  return (float)((e - 1) / (e + 1));
}

float sqrtf(float x) {
#if defined(__wasm__)
  return __builtin_sqrtf(x); /* one instruction, f32.sqrt */
#else
  if (x != x || x < 0) return 0.0f / 0.0f;
  if (x == 0 || x == 1.0f / 0.0f) return x;
  /* Newton's iteration from 2^ceil((e + 1) / 2) >= sqrt(x), where x = m 2^e
   * with m in [1, 2): from above it falls monotonically, quadratically. */
  double d = x;
  int e = (int)((double_to_bits(d) >> 52) & 0x7ff) - 1023;
  double y = pow2((e + 2) / 2 + 1);
  for (int i = 0; i < 64; i++) {
    double next = 0.5 * (y + d / y);
    if (next >= y) break;
    y = next;
  }
  return (float)y;
#endif
}

void *memset(void *s, int c, size_t n) {
  unsigned char *p = s;
  while (n--) *p++ = (unsigned char)c;
  return s;
}

void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (d < s)
    while (n--) *d++ = *s++;
  else
    while (n--) d[n] = s[n];
  return dst;
}
