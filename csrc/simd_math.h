// Vector maths shared by every SIMD kernel file: the vector type of the including ISA file
// (LF_W floats, GCC/Clang vector extensions), unaligned and partial loads/stores, and the
// vectorised exp, sigmoid and tanh. Include it inside an ISA file after defining LF_W; every
// name lives in an anonymous namespace (one private copy per ISA, never shared across files).
//
// Accuracy (measured against float64 by tests/test_lstm_core.py::test_activation_accuracy):
// sigmoid and tanh are within 3e-7 absolute and 5e-7 relative (measured: 9.4e-8 absolute for
// sigmoid, 1.8e-7 absolute and 2.2e-7 relative for tanh); no overflow for any |x| (inputs are
// clamped before exp), NaN propagates.
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
typedef unsigned vu __attribute__((vector_size(W * 4)));
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

// The vector registers of the target (x86: 32 with AVX-512, else 16; aarch64: 32).
#if (defined(__AVX512F__) && LF_W == 16) || defined(__aarch64__)
constexpr int kVecRegs = 32;
#else
constexpr int kVecRegs = 16;
#endif

// A vector loaded once and used by two or three FMAs of a tile: kept in a register (LF_OPAQUE
// hides where it came from) where the tile's `live` vectors fit. GCC otherwise folds the load
// into each FMA as a memory operand: a panel vector of an LSTM step tile of 3 rows was loaded
// 3 times, 15 loads per 12 FMAs, more than the two load ports issue (3 rows took longer than
// 4). With four or more uses GCC keeps the register itself, and the asm there only took
// scheduling freedom (5 rows: 1.11x the time). Only the instructions change: each FMA's
// operands and rounding are the same.
template <int live, int uses, class V>
LF_INLINE void keep_in_register(V& v) {
  if constexpr (uses > 1 && uses <= 3 && live <= kVecRegs) LF_OPAQUE(v);
}

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

// -(a * b) - c as one FMA where the ISA has one (the reductions below need the exact product).
LF_INLINE vf vfnmsub(vf a, vf b, vf c) {
#if defined(__AVX512F__) && LF_W == 16
  return (vf)_mm512_fnmsub_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__) && LF_W == 8
  return (vf)_mm256_fnmsub_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return (splat(0.0f) - a * b) - c;
#endif
}

// The activations below are written for the FMA pipe's count: on Zen 4 a 512-bit FMA, MUL,
// RCP14 or SCALEF each takes the FMA pipe (SCALEF two cycles), while ADD/MIN/MAX run on their
// own pipe and integer logic/shifts issue beside them for free (tools measured: one FMA and one
// ADD, AND, PADDD or PSLLD per cycle; FMA + SCALEF two cycles). So 2^n is built from the
// integer n in the exponent field (shift + add) instead of SCALEF, the reduction is one FMA
// against ln2 rounded to float (its error n * 1.9e-9 costs at most 2.4e-7 of e^x's relative
// accuracy at |x| = 87, and the sigmoid's absolute error is e^x's relative error / 4 at most),
// and the sigmoid's polynomial for e^r has degree 5 (relative error 1.1e-7 on |r| <= ln2/2,
// fitted here to the minimax by Lawson's iteration). Measured over every 7th float below 40
// in magnitude against float64: sigmoid 9.4e-8 absolute, tanh 1.8e-7 absolute and 2.2e-7
// relative; a loop of LSTM epilogues (3 sigmoids + 2 tanh per vector) runs 82 cycles per
// 16-lane vector against 100 with exp()'s SCALEF and two-part reduction.

// 2^n as a float for the n of t = n + 1.5 * 2^23 (its integer in t's low mantissa bits;
// -126 <= n <= 127): the bits of t shifted left by 23 leave n << 23 (the magic's own bits
// vanish), plus the exponent bias.
LF_INLINE vf pow2_of_rounded(vf t) { return (vf)(((vu)t << 23) + (127u << 23)); }

#if LF_W == 8
// AVX2: sigmoid(x) = 1 / (1 + exp(-x)), the previous formulation (exp's two-part reduction).
// The one below gave wrong values in some rows of the AVX2 LSTM step in the ASan+UBSan build
// (GCC 12; the release build, the AVX-512 and generic kernels, and the function alone under
// the sanitizers were right; not understood), so AVX2 keeps this one.
LF_INLINE vf vsigmoid(vf x) { return vrecip(splat(1.0f) + vexp(-x)); }
#else
// sigmoid(x) = 1 / (1 + e^-x): x clamped to [-88.3, 86] (e^-x <= 2.3e38: no overflow, and 2^n
// stays normal; the result at -88.3 is below the smallest normal float, so flushed to 0 under
// the kernels' flush-to-zero, as sigmoid(-inf) must be), -x = n ln2 + r, e^r by a degree-5
// polynomial, 1 + 2^n e^r in one FMA (a NaN in x reaches it through r, so it propagates).
LF_INLINE vf vsigmoid(vf x) {
  x = vmax(vmin(x, splat(86.0f)), splat(-88.3f));
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf t = vfmadd(x, splat(-1.44269504088896341f), magic);
  const vf r = vfnmsub(t - magic, splat(0.693147180559945309f), x);  // -x - n ln2
  vf p = splat(0.008312518708407879f);
  p = vfmadd(p, r, splat(0.041890114545822144f));
  p = vfmadd(p, r, splat(0.16667114198207855f));
  p = vfmadd(p, r, splat(0.499992311000824f));
  p = vfmadd(p, r, splat(1.0f));
  p = vfmadd(p, r, splat(1.0f));
  return vrecip(vfmadd(p, pow2_of_rounded(t), splat(1.0f)));
}
#endif

// tanh(x) = sign(x) * -m / (2 + m) with m = expm1(-2|x|) in (-1, 0]: one exponential and no
// branch. |x| is clamped at 12 (tanh is 1 in float32 from 9.01; 2^n stays normal). expm1 comes
// from the reduction -2|x| = n ln2 + r: e^r - 1 = u = r + r^2 p(r) (exp_parts' degree-6
// polynomial, accurate relative to u for small r, where e^r rounds to 1), then
// expm1 = 2^n u + (2^n - 1), exact in the last step for these n. NaN propagates (vmin keeps
// it, and it reaches m through r).
LF_INLINE vf vtanh(vf x) {
  const vi sign = vi{} + static_cast<int>(0x80000000u);
  const vi xb = (vi)x;
  const vf ax = vmin((vf)(xb & ~sign), splat(12.0f));
  const vf ax2 = ax + ax;
  const vf magic = splat(12582912.0f);
  const vf t = vfmadd(ax2, splat(-1.44269504088896341f), magic);
  const vf r = vfnmsub(t - magic, splat(0.693147180559945309f), ax2);  // -2|x| - n ln2
  vf p = splat(0.00137514085508883f);
  p = vfmadd(p, r, splat(0.008368918672204018f));
  p = vfmadd(p, r, splat(0.04166953265666962f));
  p = vfmadd(p, r, splat(0.166665181517601f));
  p = vfmadd(p, r, splat(0.49999988079071045f));
  const vf u = vfmadd(p, r * r, r);
  const vf s = pow2_of_rounded(t);
  const vf m = vfmadd(s, u, s - splat(1.0f));  // expm1(-2|x|)
  const vf th = m * vrecip(splat(2.0f) + m);   // -tanh|x| (<= 0)
  return (vf)(((vi)th & ~sign) | (xb & sign));
}

}  // namespace
}  // namespace lstm_fast
