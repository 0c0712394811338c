// Vector maths shared by every SIMD kernel file: the vector type of the including ISA file
// (LF_W floats, GCC/Clang vector extensions), unaligned and partial loads/stores, and the
// vectorised exp, sigmoid and tanh. Include it inside an ISA file after defining LF_W; every
// name lives in an anonymous namespace (one private copy per ISA, never shared across files).
//
// Accuracy (measured against float64 by tests/test_lstm_core.py::test_activation_accuracy):
// sigmoid and tanh are within 3e-7 absolute and 5e-7 relative; no overflow for any |x|
// (inputs are clamped before exp), NaN propagates.
#pragma once

#include "shapes.h"

#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace lstm_fast {
namespace {

constexpr int W = LF_W;

typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));
typedef float vfu __attribute__((vector_size(W * 4), aligned(4), may_alias));

#define LF_INLINE inline __attribute__((always_inline))

// Hide a value from the optimiser (no instruction emitted), e.g. to pin how an expression is
// contracted into FMAs so that every code path rounds the same way.
#if defined(__x86_64__) || defined(__i386__)
#define LF_OPAQUE(v) __asm__("" : "+v"(v))
#elif defined(__aarch64__)
#define LF_OPAQUE(v) __asm__("" : "+w"(v))
#else
#define LF_OPAQUE(v) __asm__("" : "+r"(v))
#endif

LF_INLINE vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
LF_INLINE void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
LF_INLINE vf splat(float s) { return s - vf{}; }  // s - 0 folds to a plain broadcast

// a * b + c as one FMA where the ISA has one. The compiler's own contraction of a * b + c is
// not guaranteed: GCC once left one of four such sums in a loop unfused (AVX2 GEMV tail), so the
// result of an element depended on its position in the tile. Kernels whose paths must agree
// bitwise spell their FMAs out with this.
LF_INLINE vf vfmadd(vf a, vf b, vf c) {
#if defined(__AVX512F__) && LF_W == 16
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__) && LF_W == 8
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}

// Load the first n (1..W) floats at p, zeros in the other lanes; store the first n lanes.
// AVX-512 masks the lanes (masked-off lanes are never touched, so nothing past p + n is read
// or written); elsewhere through a register-sized buffer.
#if defined(__AVX512F__) && LF_W == 16
LF_INLINE vf load_n(const float* p, int n) {
  if (n == W) return load(p);
  return (vf)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
}
LF_INLINE void store_n(float* p, vf v, int n) {
  if (n == W) return store(p, v);
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), (__m512)v);
}
#else
LF_INLINE vf load_n(const float* p, int n) {
  if (n == W) return load(p);
  float t[W] = {};
  for (int j = 0; j < n; ++j) t[j] = p[j];
  return load(t);
}
LF_INLINE void store_n(float* p, vf v, int n) {
  if (n == W) return store(p, v);
  float t[W];
  store(t, v);
  for (int j = 0; j < n; ++j) p[j] = t[j];
}
#endif

// min/max that keep a NaN in a (the clamp of exp's argument must not hide a NaN). On x86 the
// minps/maxps instructions return their second operand when either is NaN, so a goes second.
#if defined(__AVX512F__) && LF_W == 16
LF_INLINE vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)b, (__m512)a); }
LF_INLINE vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)b, (__m512)a); }
#elif defined(__AVX__) && LF_W == 8
LF_INLINE vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)b, (__m256)a); }
LF_INLINE vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)b, (__m256)a); }
#elif defined(__SSE2__) && LF_W == 4
LF_INLINE vf vmin(vf a, vf b) { return (vf)_mm_min_ps((__m128)b, (__m128)a); }
LF_INLINE vf vmax(vf a, vf b) { return (vf)_mm_max_ps((__m128)b, (__m128)a); }
#else
LF_INLINE vf vmin(vf a, vf b) { return b < a ? b : a; }
LF_INLINE vf vmax(vf a, vf b) { return b > a ? b : a; }
#endif

// x = n ln2 + r with |r| <= ln2/2 (Cody-Waite, two-part ln2; x already clamped) and
// u = e^r - 1 = r + r^2 p(r) (a degree-6 polynomial for e^r, relative error 3.6e-9 on the
// interval): the reduction vexp and vtanh share. t holds n's integer in its low mantissa bits.
struct ExpParts {
  vf t, n, u;
};
LF_INLINE ExpParts exp_parts(vf x) {
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf t = x * splat(1.44269504088896341f) + magic;
  const vf n = t - magic;  // round(x / ln2) as a float
  vf r = x - n * splat(0.693145751953125f);
  r = r - n * splat(1.42860682030941723e-6f);
  vf p = splat(0.00137514085508883f);
  p = p * r + splat(0.008368918672204018f);
  p = p * r + splat(0.04166953265666962f);
  p = p * r + splat(0.166665181517601f);
  p = p * r + splat(0.49999988079071045f);
  return {t, n, p * (r * r) + r};
}

// 2^n for the n of exp_parts (an integer in [-126, 127]).
LF_INLINE vf exp2_int(const ExpParts& e) {
#if defined(__AVX512F__) && LF_W == 16
  return (vf)_mm512_scalef_ps(_mm512_set1_ps(1.0f), (__m512)e.n);
#else
  return (vf)(((vi)e.t - (vi)splat(12582912.0f) + 127) << 23);  // the exponent field
#endif
}

// exp(x): x clamped to [-87.3, 88.3] (no overflow, no denormal results), 2^n (1 + u) from
// exp_parts. NaN propagates.
LF_INLINE vf vexp(vf x) {
  x = vmax(vmin(x, splat(88.3f)), splat(-87.3f));
  const ExpParts e = exp_parts(x);
  const vf p = e.u + splat(1.0f);
#if defined(__AVX512F__) && LF_W == 16
  return (vf)_mm512_scalef_ps((__m512)p, (__m512)e.n);  // p * 2^n in one instruction
#else
  return p * exp2_int(e);
#endif
}

// 1 / d for d >= 1 (the activations divide only by such values). With AVX-512: the 14-bit
// reciprocal estimate and one Newton step (relative error about 2^-27, plus rounding), which
// issues as 3 instructions where a 16-lane division is a long, poorly pipelined one.
LF_INLINE vf vrecip(vf d) {
#if defined(__AVX512F__) && LF_W == 16
  const vf r = (vf)_mm512_rcp14_ps((__m512)d);
  return r + r * (splat(1.0f) - d * r);
#else
  return splat(1.0f) / d;
#endif
}

// Correctly rounded square root per lane (IEEE sqrt, as NumPy's and PyTorch's).
LF_INLINE vf vsqrt(vf x) {
#if defined(__AVX512F__) && LF_W == 16
  return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__) && LF_W == 8
  return (vf)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__) && LF_W == 4
  return (vf)_mm_sqrt_ps((__m128)x);
#else
  vf r;
  for (int j = 0; j < W; ++j) r[j] = __builtin_sqrtf(x[j]);
  return r;
#endif
}

LF_INLINE vf vsigmoid(vf x) { return vrecip(splat(1.0f) + vexp(-x)); }

// tanh(x) = sign(x) * -m / (2 + m) with m = expm1(-2|x|) in (-1, 0]: one exponential and no
// branch. expm1 comes from exp's own reduction -2|x| = n ln2 + r: e^r - 1 = u = r + r^2 p(r)
// (accurate for small r, where e^r rounds to 1), then expm1 = 2^n u + (2^n - 1), exact in the
// last step for the n this range gives. -2|x| is clamped at -87.3 (tanh is 1 in float32 long
// before, and 2^n stays a normal number); NaN propagates (vmax keeps it).
LF_INLINE vf vtanh(vf x) {
  const vi sign = vi{} + static_cast<int>(0x80000000u);
  const vi xb = (vi)x;
  const vf ax = (vf)(xb & ~sign);
  const ExpParts e = exp_parts(vmax(ax * splat(-2.0f), splat(-87.3f)));
  const vf s = exp2_int(e);
  const vf m = s * e.u + (s - splat(1.0f));  // expm1(-2|x|)
  const vf th = (splat(0.0f) - m) * vrecip(splat(2.0f) + m);
  return (vf)(((vi)th & ~sign) | (xb & sign));
}

}  // namespace
}  // namespace lstm_fast
