// The SIMD kernels, written once with GCC/Clang vector extensions and compiled per ISA:
// kernels_generic.cpp (W = 4, SSE2 / NEON), kernels_avx2.cpp (W = 8, AVX2 + FMA) and
// kernels_avx512.cpp (W = 16). The including file defines, before including this header:
//   LF_W     floats per vector          LF_MR, LF_NR  GEMM micro-tile (LF_NR a multiple of LF_W)
//   LF_ROWS  rows of the LSTM step tile (LF_ROWS x 4 gates accumulators of W units)
//   LF_NAME  the ISA name                LF_TABLE      the name of the accessor function
// Everything lives in an anonymous namespace and uses no library templates, so no function
// compiled with wider instructions can be shared (COMDAT-folded) with another ISA's file.
//
// Loop tails are handled here: a partial vector is loaded into a zeroed register-sized buffer
// and stored back lane by lane, through the same arithmetic as full vectors, so the result of
// every element is independent of where a tile or a thread's slice starts (bitwise determinism).
#include "kernels.h"

namespace lstm_fast {
namespace {

constexpr int W = LF_W;
constexpr int MR = LF_MR;
constexpr int NR = LF_NR;
constexpr int ROWS = LF_ROWS;
constexpr int NV = NR / W;
static_assert(NR % W == 0, "NR must be a multiple of W");

typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));
typedef float vfu __attribute__((vector_size(W * 4), aligned(4), may_alias));

#define LF_INLINE inline __attribute__((always_inline))

LF_INLINE vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
LF_INLINE void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
LF_INLINE vf splat(float s) { return s - vf{}; }  // s - 0 folds to a plain broadcast

// Load the first n (1..W) floats at p, zeros in the other lanes.
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

LF_INLINE vf vmin(vf a, vf b) { return b < a ? b : a; }  // a NaN in a stays NaN
LF_INLINE vf vmax(vf a, vf b) { return b > a ? b : a; }

// exp(x): x clamped to [-87.3, 88.3] (no overflow, no denormal results), x = n ln2 + r with
// |r| <= ln2/2 (Cody-Waite, two-part ln2), e^r by a degree-6 polynomial (relative error
// 3.6e-9 on the interval), 2^n built in the exponent bits. NaN propagates.
LF_INLINE vf vexp(vf x) {
  x = vmax(vmin(x, splat(88.3f)), splat(-87.3f));
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf n = (x * splat(1.44269504088896341f) + magic) - magic;
  vf r = x - n * splat(0.693145751953125f);
  r = r - n * splat(1.42860682030941723e-6f);
  vf p = splat(0.00137514085508883f);
  p = p * r + splat(0.008368918672204018f);
  p = p * r + splat(0.04166953265666962f);
  p = p * r + splat(0.166665181517601f);
  p = p * r + splat(0.49999988079071045f);
  p = p * (r * r) + r + splat(1.0f);
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;
}

LF_INLINE vf vsigmoid(vf x) { return splat(1.0f) / (splat(1.0f) + vexp(-x)); }

// tanh: an odd polynomial for |x| < 0.625 (relative error 4.6e-9), 1 - 2/(e^{2|x|} + 1) with
// the sign of x above; both are computed and selected per lane (branch free).
LF_INLINE vf vtanh(vf x) {
  const vi sign = vi{} + static_cast<int>(0x80000000u);
  const vi xb = (vi)x;
  const vf ax = (vf)(xb & ~sign);
  vf x2 = x * x;
  vf q = splat(-0.005718891508877277f);
  q = q * x2 + splat(0.02065306343138218f);
  q = q * x2 + splat(-0.053744640201330185f);
  q = q * x2 + splat(0.13331513106822968f);
  q = q * x2 + splat(-0.3333328664302826f);
  vf small = x + x * x2 * q;
  vf large = splat(1.0f) - splat(2.0f) / (vexp(ax + ax) + splat(1.0f));
  const vf slarge = (vf)((vi)large | (xb & sign));
  return ax < splat(0.625f) ? small : slarge;
}

// ---- GEMM micro-kernel ---------------------------------------------------------------------
// C[m x n] (= or +=) A . Bp over K. A is either packed (Ap[k*MR + r]) or row-major (A[r*lda+k]).
template <bool kRowA>
LF_INLINE void micro(index_t K, const float* A, index_t lda, const float* Bp, float* C,
                     index_t ldc, int m, int n, bool accumulate) {
  vf acc[MR][NV];
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  const float* arow[MR];
  if (kRowA) {
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) arow[r] = A + (r < m ? r : 0) * lda;  // rows >= m: discarded
  }
  for (index_t k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) b[v] = load(Bp + k * NR + v * W);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      const vf a = splat(kRowA ? arow[r][k] : A[k * MR + r]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  if (m == MR && n == NR) {
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        float* p = C + r * ldc + v * W;
        store(p, accumulate ? load(p) + acc[r][v] : acc[r][v]);
      }
  } else {
    for (int r = 0; r < m; ++r)
      for (int v = 0; v * W < n; ++v) {
        float* p = C + r * ldc + v * W;
        const int nn = n - v * W < W ? n - v * W : W;
        store_n(p, accumulate ? load_n(p, nn) + acc[r][v] : acc[r][v], nn);
      }
  }
}

void gemm_micro(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc, int m, int n,
                bool accumulate) {
  micro<false>(K, Ap, 0, Bp, C, ldc, m, n, accumulate);
}

void gemm_micro_rowA(index_t K, const float* A, index_t lda, const float* Bp, float* C,
                     index_t ldc, int m, int n, bool accumulate) {
  micro<true>(K, A, lda, Bp, C, ldc, m, n, accumulate);
}

// ---- Fused LSTM step -----------------------------------------------------------------------
// R rows x U unit blocks x 4 gates accumulators; the epilogue turns them into c' and h'.
template <int R, int U>
LF_INLINE void lstm_tile(index_t H, index_t K, index_t ub, float* h_out, index_t ldh, float* c_out,
                         float* gates_out, const float* h_prev, index_t ldh_prev,
                         const float* c_prev, const float* xp, const float* Wp) {
  const index_t G = 4 * H;
  vf acc[R][U][4];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) acc[r][u][q] = vf{};
  const float* panel[U];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) panel[u] = Wp + (ub + u) * K * 4 * W;
  for (index_t k = 0; k < K; ++k) {
    vf b[U][4];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) b[u][q] = load(panel[u] + (k * 4 + q) * W);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf a = splat(h_prev[r * ldh_prev + k]);
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[r][u][q] += a * b[u][q];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const index_t u0 = (ub + u) * W;
      const int n = H - u0 < W ? static_cast<int>(H - u0) : W;
      const float* xr = xp + r * G + u0;
      const vf i = vsigmoid(acc[r][u][0] + load_n(xr, n));
      const vf f = vsigmoid(acc[r][u][1] + load_n(xr + H, n));
      const vf g = vtanh(acc[r][u][2] + load_n(xr + 2 * H, n));
      const vf o = vsigmoid(acc[r][u][3] + load_n(xr + 3 * H, n));
      const vf c = f * load_n(c_prev + r * H + u0, n) + i * g;
      store_n(c_out + r * H + u0, c, n);
      store_n(h_out + r * ldh + u0, o * vtanh(c), n);
      if (gates_out) {
        float* gr = gates_out + r * G + u0;
        store_n(gr, i, n);
        store_n(gr + H, f, n);
        store_n(gr + 2 * H, g, n);
        store_n(gr + 3 * H, o, n);
      }
    }
  }
}

// R rows over unit blocks [ub0, ub1): U = ROWS / R blocks at a time, then one at a time.
template <int R>
LF_INLINE void lstm_rows_tile(index_t H, index_t K, index_t ub0, index_t ub1, float* h_out,
                              index_t ldh, float* c_out, float* gates_out, const float* h_prev,
                              index_t ldh_prev, const float* c_prev, const float* xp,
                              const float* Wp) {
  constexpr int U = ROWS / R > 0 ? ROWS / R : 1;
  index_t ub = ub0;
  for (; ub + U <= ub1; ub += U)
    lstm_tile<R, U>(H, K, ub, h_out, ldh, c_out, gates_out, h_prev, ldh_prev, c_prev, xp, Wp);
  if (U > 1)
    for (; ub < ub1; ++ub)
      lstm_tile<R, 1>(H, K, ub, h_out, ldh, c_out, gates_out, h_prev, ldh_prev, c_prev, xp, Wp);
}

template <int R>
LF_INLINE void lstm_tail_rows(int rr, index_t H, index_t K, index_t ub0, index_t ub1,
                              float* h_out, index_t ldh, float* c_out, float* gates_out,
                              const float* h_prev, index_t ldh_prev, const float* c_prev,
                              const float* xp, const float* Wp) {
  if constexpr (R >= 1) {
    if (rr == R)
      lstm_rows_tile<R>(H, K, ub0, ub1, h_out, ldh, c_out, gates_out, h_prev, ldh_prev, c_prev,
                        xp, Wp);
    else
      lstm_tail_rows<R - 1>(rr, H, K, ub0, ub1, h_out, ldh, c_out, gates_out, h_prev, ldh_prev,
                            c_prev, xp, Wp);
  }
}

void lstm_fwd_rows(index_t rows, index_t H, index_t K, index_t ub0, index_t ub1, float* h_out,
                   index_t ldh, float* c_out, float* gates_out, const float* h_prev,
                   index_t ldh_prev, const float* c_prev, const float* xp, const float* Wp) {
  const index_t G = 4 * H;
  index_t b = 0;
  for (; b + ROWS <= rows; b += ROWS)
    lstm_rows_tile<ROWS>(H, K, ub0, ub1, h_out + b * ldh, ldh, c_out + b * H,
                         gates_out ? gates_out + b * G : nullptr, h_prev + b * ldh_prev,
                         ldh_prev, c_prev + b * H, xp + b * G, Wp);
  if (b < rows)
    lstm_tail_rows<ROWS - 1>(static_cast<int>(rows - b), H, K, ub0, ub1, h_out + b * ldh, ldh,
                             c_out + b * H, gates_out ? gates_out + b * G : nullptr,
                             h_prev + b * ldh_prev, ldh_prev, c_prev + b * H, xp + b * G, Wp);
}

void lstm_bwd_pointwise(index_t rows, index_t H, index_t u0, index_t u1, float* dz,
                        float* dc_next, const float* gates, const float* c, const float* c_prev,
                        const float* dy, const float* dh_next) {
  const index_t G = 4 * H;
  const vf one = splat(1.0f);
  for (index_t b = 0; b < rows; ++b) {
    const float* gr = gates + b * G;
    float* dzr = dz + b * G;
    for (index_t u = u0; u < u1; u += W) {
      const int n = u1 - u < W ? static_cast<int>(u1 - u) : W;
      const vf i = load_n(gr + u, n), f = load_n(gr + H + u, n);
      const vf g = load_n(gr + 2 * H + u, n), o = load_n(gr + 3 * H + u, n);
      vf dh = load_n(dh_next + b * H + u, n);
      if (dy) dh = load_n(dy + b * H + u, n) + dh;
      const vf tc = vtanh(load_n(c + b * H + u, n));
      const vf dc = load_n(dc_next + b * H + u, n) + dh * o * (one - tc * tc);
      store_n(dzr + u, dc * g * i * (one - i), n);
      store_n(dzr + H + u, dc * load_n(c_prev + b * H + u, n) * f * (one - f), n);
      store_n(dzr + 2 * H + u, dc * i * (one - g * g), n);
      store_n(dzr + 3 * H + u, dh * tc * o * (one - o), n);
      store_n(dc_next + b * H + u, dc * f, n);
    }
  }
}

void sigmoid(index_t n, const float* x, float* y) {
  for (index_t j = 0; j < n; j += W) {
    const int m = n - j < W ? static_cast<int>(n - j) : W;
    store_n(y + j, vsigmoid(load_n(x + j, m)), m);
  }
}
void tanh_(index_t n, const float* x, float* y) {
  for (index_t j = 0; j < n; j += W) {
    const int m = n - j < W ? static_cast<int>(n - j) : W;
    store_n(y + j, vtanh(load_n(x + j, m)), m);
  }
}

const Kernels kTable = {LF_NAME,       W,       MR,      NR, gemm_micro, gemm_micro_rowA,
                        lstm_fwd_rows, lstm_bwd_pointwise, sigmoid, tanh_};

}  // namespace

const Kernels& LF_TABLE() { return kTable; }

}  // namespace lstm_fast
