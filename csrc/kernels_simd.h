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
#include <algorithm>

#include "dispatch.h"
#include "kernels.h"

#include "simd_math.h"

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace lstm_fast {
namespace {

constexpr int MR = LF_MR;
constexpr int NR = LF_NR;
constexpr int ROWS = LF_ROWS;
constexpr int NV = NR / W;
static_assert(NR % W == 0, "NR must be a multiple of W");

// ---- GEMM micro-kernel ---------------------------------------------------------------------
// One depth step of an R x NVV register tile: acc[r][v] += a(r) * Bk[v * W ...], a(r) the row's
// value of A at this depth (packed or row-major).
template <int R, int NVV, class AVal>
LF_INLINE void tile_fma(vf (&acc)[R][NVV], const float* Bk, AVal a) {
  vf b[NVV];
#pragma GCC unroll 8
  for (int v = 0; v < NVV; ++v) b[v] = load(Bk + v * W);
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    const vf s = splat(a(r));
#pragma GCC unroll 8
    for (int v = 0; v < NVV; ++v) acc[r][v] = vfmadd(s, b[v], acc[r][v]);
  }
}

// Fetch the R rows of a C tile (span floats each) that are read or written after the k loop.
template <int R>
LF_INLINE void prefetch_tile(float* C, index_t ldc, int span) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) {
    __builtin_prefetch(C + r * ldc, 1, 3);
    __builtin_prefetch(C + r * ldc + span - 1, 1, 3);
  }
}

// C[m x n] (= or +=) an R x NVV tile of accumulators. A partial tile leaves the registers
// through a buffer written with constant indices: indexing the accumulators with the run-time m
// and n made GCC keep all of them in memory too (zeroed and stored on every call: 5 % of the
// micro-kernel's time in S6 training's short calls, stored on every k in micro_pair).
template <int R, int NVV>
LF_INLINE void store_tile(const vf (&acc)[R][NVV], float* C, index_t ldc, int m, int n,
                          bool accumulate) {
  if (m == R && n == NVV * W) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NVV; ++v) {
        float* p = C + r * ldc + v * W;
        store(p, accumulate ? load(p) + acc[r][v] : acc[r][v]);
      }
    return;
  }
  alignas(64) float t[R * NVV * W];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NVV; ++v) store(t + (r * NVV + v) * W, acc[r][v]);
  for (int r = 0; r < m; ++r)
    for (int v = 0; v * W < n; ++v) {
      float* p = C + r * ldc + v * W;
      const int nn = n - v * W < W ? n - v * W : W;
      const vf x = load(t + (r * NVV + v) * W);
      store_n(p, accumulate ? load_n(p, nn) + x : x, nn);
    }
}

// C[r, j] (= or +=) lane r of acc[j], for r < m and the NC columns of a panel whose rows were
// the vector lanes (micro_cols), through a buffer written with constant indices (as above).
template <int NC>
LF_INLINE void store_cols(const vf (&acc)[NC], float* C, index_t ldc, int m, bool accumulate) {
  alignas(64) float t[NC * W];
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) store(t + j * W, acc[j]);
  for (int j = 0; j < NC; ++j)
    for (int r = 0; r < m; ++r)
      C[r * ldc + j] = accumulate ? C[r * ldc + j] + t[j * W + r] : t[j * W + r];
}

// C[m x n] (= or +=) A . Bp over K. A is either packed (Ap[k*MR + r]) or row-major (A[r*lda+k]).
// R <= MR rows of accumulators (A's packed panel is still MR wide): a tile of m rows runs with
// the smallest R in {MR/3, 2MR/3, MR} that covers it, so a batch of, say, 64 rows does not
// compute 72. Every element gets the same FMAs in the same order whatever R is.
template <bool kRowA, int R, int NV = NR / W, bool kPrefetch = false>
LF_INLINE void micro(index_t K, const float* A, index_t lda, const float* Bp, float* C,
                     index_t ldc, int m, int n, bool accumulate, const float* pf = nullptr,
                     index_t lines = 0) {
  vf acc[R][NV];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  const float* arow[R];
  if (kRowA) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) arow[r] = A + (r < m ? r : 0) * lda;  // rows >= m: discarded
  }
  // the C tile is read (accumulate) or written after the loop: fetch it now
  if (!kRowA) prefetch_tile<R>(C, ldc, NV * W);
  for (index_t k = 0; k < K; ++k) {
    tile_fma<R, NV>(acc, Bp + k * NR, [&](int r) { return kRowA ? arow[r][k] : A[k * MR + r]; });
    if (kPrefetch) {  // lines k and K + k of the caller's next chunk, into L2
      if (k < lines) __builtin_prefetch(pf + k * 16, 0, 2);
      if (K + k < lines) __builtin_prefetch(pf + (K + k) * 16, 0, 2);
    }
  }
  store_tile<R, NV>(acc, C, ldc, m, n, accumulate);
}

constexpr int MR1 = MR / 3 > 0 ? MR / 3 : 1, MR2 = 2 * MR / 3 > MR1 ? 2 * MR / 3 : MR;

// A last panel of a few columns (N = 65: one; N = 100: four) where one vector holds an A
// sliver's MR rows (AVX-512: 12 rows in a masked 16-lane load): the rows become the lanes and
// each column j is A . b_j, NC FMAs per k instead of one per row (12). Every element gets the same
// FMAs in the same k order as in micro (fma(a, b, acc) with the operands swapped, which is the
// same rounding), and the same final add into C, so the result does not depend on the path.
#if defined(__AVX512F__) && LF_W == 16
constexpr bool kMaskedLoads = true;  // load_n is one masked instruction
#else
constexpr bool kMaskedLoads = false;
#endif
constexpr bool kColumnTail = W >= MR && kMaskedLoads;
constexpr int kColumnTailMax = MR - 4;
template <int NC>
LF_INLINE void micro_cols(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc,
                          int m, bool accumulate) {
  vf acc[NC];
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) acc[j] = vf{};
  for (index_t k = 0; k < K; ++k) {
    const vf a = load_n(Ap + k * MR, MR);
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) acc[j] = vfmadd(a, splat(Bp[k * NR + j]), acc[j]);
  }
  store_cols<NC>(acc, C, ldc, m, accumulate);
}

template <int NC>
LF_INLINE void micro_cols_n(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc,
                            int m, int n, bool accumulate) {
  if constexpr (NC >= 1) {
    if (n != NC) return micro_cols_n<NC - 1>(K, Ap, Bp, C, ldc, m, n, accumulate);
    micro_cols<NC>(K, Ap, Bp, C, ldc, m, accumulate);
  }
}

void gemm_micro(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc, int m, int n,
                bool accumulate) {
  if constexpr (kColumnTail) {
    if (n <= kColumnTailMax)
      return micro_cols_n<kColumnTailMax>(K, Ap, Bp, C, ldc, m, n, accumulate);
  }
  // A last panel of at most W columns (N = 65, 100, ...): one vector of accumulators per row.
  if (NR > W && n <= W) return micro<false, MR, 1>(K, Ap, MR, Bp, C, ldc, m, n, accumulate);
  if (m <= MR1) return micro<false, MR1>(K, Ap, MR, Bp, C, ldc, m, n, accumulate);
  if (m <= MR2) return micro<false, MR2>(K, Ap, MR, Bp, C, ldc, m, n, accumulate);
  micro<false, MR>(K, Ap, MR, Bp, C, ldc, m, n, accumulate);
}

// gemm_micro with a prefetch of the caller's next B chunk (Kernels::gemm_micro_pf): full-width
// panels of the AVX-512 kernels only (in the AVX2 build, the LSTM step tiles with a prefetch
// kept their panel vectors on the stack); elsewhere gemm_micro.
void gemm_micro_pf(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc, int m,
                   int n, bool accumulate, const float* pf, index_t lines) {
  if constexpr (W == 16) {
    if (n > W && lines > 0) {
      if (m <= MR1)
        return micro<false, MR1, NR / W, true>(K, Ap, MR, Bp, C, ldc, m, n, accumulate, pf,
                                                lines);
      if (m <= MR2)
        return micro<false, MR2, NR / W, true>(K, Ap, MR, Bp, C, ldc, m, n, accumulate, pf,
                                                lines);
      return micro<false, MR, NR / W, true>(K, Ap, MR, Bp, C, ldc, m, n, accumulate, pf, lines);
    }
  }
  gemm_micro(K, Ap, Bp, C, ldc, m, n, accumulate);
}

// A full panel and the narrow last panel after it (micro_cols's layout: the sliver's rows as
// the lanes) in one k loop: the full tile's FMAs and the narrow panel's NC chains issue
// together instead of the narrow panel running alone at one FMA per chain latency. Each
// element gets the FMAs of micro and micro_cols, in the same order, and the same final add.
template <int R, int NC>
LF_INLINE void micro_pair(index_t K, const float* Ap, const float* Bp, const float* Bp2, float* C,
                          index_t ldc, int m, bool accumulate) {
  vf acc[R][NV], acc2[NC];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
#pragma GCC unroll 16
  for (int j = 0; j < NC; ++j) acc2[j] = vf{};
  prefetch_tile<R>(C, ldc, NV * W);
  for (index_t k = 0; k < K; ++k) {
    tile_fma<R, NV>(acc, Bp + k * NR, [&](int r) { return Ap[k * MR + r]; });
    const vf al = load_n(Ap + k * MR, MR);
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) acc2[j] = vfmadd(al, splat(Bp2[k * NR + j]), acc2[j]);
  }
  store_tile<R, NV>(acc, C, ldc, m, NR, accumulate);
  store_cols<NC>(acc2, C + NR, ldc, m, accumulate);
}

// R accumulator rows and NC narrow columns fit in the 32 registers with the panel's NV vectors,
// the broadcast and the sliver vector.
constexpr bool pair_fits(int R, int NC) { return R * NV + NC + NV + 2 <= 32; }

template <int R, int NC>
LF_INLINE bool micro_pair_n(index_t K, const float* Ap, const float* Bp, const float* Bp2,
                            float* C, index_t ldc, int m, int n2, bool accumulate) {
  if constexpr (NC >= 1) {
    if (n2 != NC) return micro_pair_n<R, NC - 1>(K, Ap, Bp, Bp2, C, ldc, m, n2, accumulate);
    if constexpr (pair_fits(R, NC)) {
      micro_pair<R, NC>(K, Ap, Bp, Bp2, C, ldc, m, accumulate);
      return true;
    }
  }
  return false;
}

void gemm_micro_pair(index_t K, const float* Ap, const float* Bp, const float* Bp2, float* C,
                     index_t ldc, int m, int n2, bool accumulate) {
  if constexpr (kColumnTail) {
    if (n2 <= kColumnTailMax) {
      bool done;
      if (m <= MR1)
        done = micro_pair_n<MR1, kColumnTailMax>(K, Ap, Bp, Bp2, C, ldc, m, n2, accumulate);
      else if (m <= MR2)
        done = micro_pair_n<MR2, kColumnTailMax>(K, Ap, Bp, Bp2, C, ldc, m, n2, accumulate);
      else
        done = micro_pair_n<MR, kColumnTailMax>(K, Ap, Bp, Bp2, C, ldc, m, n2, accumulate);
      if (done) return;
    }
  }
  gemm_micro(K, Ap, Bp, C, ldc, m, NR, accumulate);
  gemm_micro(K, Ap, Bp2, C + NR, ldc, m, n2, accumulate);
}

void gemm_micro_rowA(index_t K, const float* A, index_t lda, const float* Bp, float* C,
                     index_t ldc, int m, int n, bool accumulate) {
  if (NR > W && n <= W) return micro<true, MR, 1>(K, A, lda, Bp, C, ldc, m, n, accumulate);
  if (m <= MR1) return micro<true, MR1>(K, A, lda, Bp, C, ldc, m, n, accumulate);
  if (m <= MR2) return micro<true, MR2>(K, A, lda, Bp, C, ldc, m, n, accumulate);
  micro<true, MR>(K, A, lda, Bp, C, ldc, m, n, accumulate);
}

// One row times a packed panel: four independent accumulator sets over k (k mod 4), so the FMA
// latency is hidden with a single row; combined in a fixed order at the end.
void gemv_panel(index_t K, const float* a, const float* Bp, float* C, int n, bool accumulate) {
  vf acc[4][NV];
#pragma GCC unroll 4
  for (int s = 0; s < 4; ++s)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[s][v] = vf{};
  index_t k = 0;
  for (; k + 4 <= K; k += 4)
#pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      const vf x = splat(a[k + s]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[s][v] += x * load(Bp + (k + s) * NR + v * W);
    }
  for (; k < K; ++k) {
    const vf x = splat(a[k]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[0][v] += x * load(Bp + k * NR + v * W);
  }
#pragma GCC unroll 8
  for (int v = 0; v * W < n; ++v) {
    const vf sum = (acc[0][v] + acc[1][v]) + (acc[2][v] + acc[3][v]);
    const int nn = n - v * W < W ? n - v * W : W;
    float* p = C + v * W;
    store_n(p, accumulate ? load_n(p, nn) + sum : sum, nn);
  }
}

// ---- Row vector times a row-major matrix (no packing) ---------------------------------------
// Blocks of CV vectors of columns, one accumulator per vector over k (the same per-element
// arithmetic as the micro-kernel: acc += a[k] * b, from zero, then stored or added).
template <int CV>
LF_INLINE void gemv_cols_block(index_t K, const float* a, const float* B, index_t ldb, float* y,
                               int n, bool accumulate) {
  vf acc[CV];
#pragma GCC unroll 8
  for (int v = 0; v < CV; ++v) acc[v] = vf{};
  if (n == CV * W) {
    for (index_t k = 0; k < K; ++k) {
      const vf x = splat(a[k]);
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) acc[v] += x * load(B + k * ldb + v * W);
    }
  } else {  // CV == 1, a partial vector: never read past column n
    for (index_t k = 0; k < K; ++k) acc[0] += splat(a[k]) * load_n(B + k * ldb, n);
  }
#pragma GCC unroll 8
  for (int v = 0; v * W < n; ++v) {
    const int nn = n - v * W < W ? n - v * W : W;
    float* p = y + v * W;
    store_n(p, accumulate ? load_n(p, nn) + acc[v] : acc[v], nn);
  }
}

void gemv_cols(index_t N, index_t K, const float* a, const float* B, index_t ldb, float* y,
               bool accumulate) {
  index_t j = 0;
  for (; j + 8 * W <= N; j += 8 * W)
    gemv_cols_block<8>(K, a, B + j, ldb, y + j, 8 * W, accumulate);
  for (; j + W <= N; j += W) gemv_cols_block<1>(K, a, B + j, ldb, y + j, W, accumulate);
  if (j < N) gemv_cols_block<1>(K, a, B + j, ldb, y + j, static_cast<int>(N - j), accumulate);
}

// ---- Rows of A times a row-major B (no packing) ---------------------------------------------
// MA rows of A (1..4) against CV vectors of B's columns: MA x CV accumulators over k, each
// acc = vfmadd(a, b, acc) from zero (the micro-kernel's arithmetic per element), then stored or
// added to C. n: the block's columns, CV * W, or fewer than W with CV = 1 (a partial vector:
// nothing past column n is read or written).
template <int MA, int CV>
LF_INLINE void rows_b_block(index_t K, const float* A, index_t ars, index_t acs, const float* B,
                            index_t ldb, float* C, index_t ldc, int n, bool accumulate) {
  vf acc[MA][CV];
#pragma GCC unroll 4
  for (int i = 0; i < MA; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) acc[i][v] = vf{};
  if (n == CV * W) {
    for (index_t k = 0; k < K; ++k) {
      vf a[MA];
#pragma GCC unroll 4
      for (int i = 0; i < MA; ++i) a[i] = splat(A[i * ars + k * acs]);
      const float* bk = B + k * ldb;
#pragma GCC unroll 8
      for (int v = 0; v < CV; ++v) {
        vf b = load(bk + v * W);
        keep_in_register<MA * CV + MA + 1, MA>(b);
#pragma GCC unroll 4
        for (int i = 0; i < MA; ++i) acc[i][v] = vfmadd(a[i], b, acc[i][v]);
      }
    }
  } else {  // CV == 1, a partial vector
    for (index_t k = 0; k < K; ++k) {
      const vf b = load_n(B + k * ldb, n);
#pragma GCC unroll 4
      for (int i = 0; i < MA; ++i) acc[i][0] = vfmadd(splat(A[i * ars + k * acs]), b, acc[i][0]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MA; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < CV; ++v) {
      if (v * W >= n) break;
      const int nn = n - v * W < W ? n - v * W : W;
      float* p = C + i * ldc + v * W;
      store_n(p, accumulate ? load_n(p, nn) + acc[i][v] : acc[i][v], nn);
    }
}

// Column vectors per block for MA rows: as many as the registers hold next to the MA
// broadcasts (32 vector registers with AVX-512, 16 elsewhere but NEON's 32: kept at 16).
template <int MA>
constexpr int rows_b_cv() {
  return W >= 16 ? (MA <= 2 ? 8 : 4) : (MA == 1 ? 8 : MA == 2 ? 4 : 2);
}

template <int MA>
LF_INLINE void rows_b(index_t N, index_t K, const float* A, index_t ars, index_t acs,
                      const float* B, index_t ldb, float* C, index_t ldc, bool accumulate) {
  constexpr int CV = rows_b_cv<MA>();
  index_t j = 0;
  for (; j + CV * W <= N; j += CV * W)
    rows_b_block<MA, CV>(K, A, ars, acs, B + j, ldb, C + j, ldc, CV * W, accumulate);
  for (; j + W <= N; j += W)
    rows_b_block<MA, 1>(K, A, ars, acs, B + j, ldb, C + j, ldc, W, accumulate);
  if (j < N)
    rows_b_block<MA, 1>(K, A, ars, acs, B + j, ldb, C + j, ldc, static_cast<int>(N - j),
                        accumulate);
}

// Fewer than W columns of rows of A whose elements at one depth are contiguous (ars == 1: the
// rows of dZ^T, for a weight gradient dZ^T . x with a narrow x): the rows become the vector
// lanes, NC accumulators over k (acc = vfmadd(a, b, acc): the same rounding as rows_b_block's
// vfmadd(b, a, acc), in the same order), so W rows take one pass instead of one partial vector
// each (I = 1: a 4H x 1 gradient, 4H masked vectors).
template <int NC>
LF_INLINE void rows_b_narrow(index_t M, index_t K, const float* A, index_t acs, const float* B,
                             index_t ldb, float* C, index_t ldc, bool accumulate) {
  for (index_t m = 0; m < M; m += W) {
    const int mm = M - m < W ? static_cast<int>(M - m) : W;
    vf acc[NC];
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) acc[j] = vf{};
    for (index_t k = 0; k < K; ++k) {
      const vf a = load_n(A + k * acs + m, mm);
#pragma GCC unroll 16
      for (int j = 0; j < NC; ++j) acc[j] = vfmadd(a, splat(B[k * ldb + j]), acc[j]);
    }
    alignas(64) float t[NC * W];
#pragma GCC unroll 16
    for (int j = 0; j < NC; ++j) store(t + j * W, acc[j]);
    for (int r = 0; r < mm; ++r)
      for (int j = 0; j < NC; ++j) {
        float* c = C + (m + r) * ldc + j;
        *c = accumulate ? *c + t[j * W + r] : t[j * W + r];
      }
  }
}

template <int NC>
LF_INLINE void rows_b_narrow_n(index_t M, index_t N, index_t K, const float* A, index_t acs,
                               const float* B, index_t ldb, float* C, index_t ldc,
                               bool accumulate) {
  if constexpr (NC >= 1) {
    if (N != NC) return rows_b_narrow_n<NC - 1>(M, N, K, A, acs, B, ldb, C, ldc, accumulate);
    rows_b_narrow<NC>(M, K, A, acs, B, ldb, C, ldc, accumulate);
  }
}

void gemm_rows_b(index_t M, index_t N, index_t K, const float* A, index_t ars, index_t acs,
                 const float* B, index_t ldb, float* C, index_t ldc, bool accumulate) {
  if (ars == 1 && N < W && M >= W && N > 0)
    return rows_b_narrow_n<W - 1>(M, N, K, A, acs, B, ldb, C, ldc, accumulate);
  index_t m = 0;
  for (; m + 4 <= M; m += 4)
    rows_b<4>(N, K, A + m * ars, ars, acs, B, ldb, C + m * ldc, ldc, accumulate);
  switch (M - m) {
    case 3: return rows_b<3>(N, K, A + m * ars, ars, acs, B, ldb, C + m * ldc, ldc, accumulate);
    case 2: return rows_b<2>(N, K, A + m * ars, ars, acs, B, ldb, C + m * ldc, ldc, accumulate);
    case 1: return rows_b<1>(N, K, A + m * ars, ars, acs, B, ldb, C + m * ldc, ldc, accumulate);
    default: return;
  }
}

// ---- Matrix-vector product over rows (no packing) -------------------------------------------
// Four rows at a time, each with its own vector accumulator over k, summed across lanes at the
// end; the k tail goes through a zero-filled partial vector.
// Sum of the lanes as a tree (log2 W levels): a serial sum of W lanes is W dependent adds,
// which dominated the batch-1 GEMV at small depths.
LF_INLINE float hsum(vf v) {
#if defined(__AVX512F__) && LF_W == 16
  const __m512 z = reinterpret_cast<__m512>(v);
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(z),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
#elif defined(__AVX__) && LF_W == 8
  const __m256 a = reinterpret_cast<__m256>(v);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
#endif
#if (defined(__AVX512F__) && LF_W == 16) || (defined(__AVX__) && LF_W == 8)
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
#else
  float t[W];
  store(t, v);
  for (int w = W / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) t[j] += t[j + w];
  return t[0];
#endif
}

// The lane sums of four vectors at once: halves folded per vector, then horizontal adds that
// combine the four (about a third of the operations of four separate sums).
LF_INLINE void hsum4(vf a0, vf a1, vf a2, vf a3, float* out) {
#if (defined(__AVX512F__) && LF_W == 16) || (defined(__AVX__) && LF_W == 8)
  auto half = [](vf v) {
#if LF_W == 16
    const __m512 z = reinterpret_cast<__m512>(v);
    return _mm256_add_ps(_mm512_castps512_ps256(z),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)));
#else
    return reinterpret_cast<__m256>(v);
#endif
  };
  const __m256 h01 = _mm256_hadd_ps(half(a0), half(a1));
  const __m256 h23 = _mm256_hadd_ps(half(a2), half(a3));
  const __m256 h = _mm256_hadd_ps(h01, h23);
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
#else
  out[0] = hsum(a0);
  out[1] = hsum(a1);
  out[2] = hsum(a2);
  out[3] = hsum(a3);
#endif
}

#if defined(__AVX512F__) && LF_W == 16
// Rows that start off a 64-byte boundary (NumPy allocates 16-byte aligned): each 16-float load
// of them spans two cache lines, and a GEMV streaming its matrix from L2 runs at half speed
// (1 MiB: 22 us against 12 us aligned, measured here). Such rows are read as aligned vectors
// (masked where they stick out of the row, so nothing outside it is touched) against x loaded
// at the same shift (x is small and stays in L1): lane l of the accumulator then sums the
// k = l - o (mod 16) of the plain loop, the same products in the same order, and the lanes are
// rotated back before the sum: bitwise the results of unaligned loads (the +0 that the plain
// loop's zero-filled last vector adds to some lanes changes nothing: a sum that starts at +0 is
// never -0 in round-to-nearest).
// R rows of W starting o floats (1..15) past a boundary against MA rows of A (x): acc[i][r]
// comes back in the plain loop's lanes.
template <int R, int MA>
LF_INLINE void gemv_rows_shifted(index_t K, const float* w0, index_t ldw, const float* x,
                                 index_t ldx, int o, vf (*acc)[R]) {
  const index_t nq = (o + K + 15) / 16;  // aligned vectors covering a row
  auto mask = [&](index_t m) {           // the lanes of aligned vector m inside the row
    unsigned mk = m == 0 ? 0xFFFFu << o : 0xFFFFu;
    const index_t end = o + K - 16 * m;
    if (end < 16) mk &= (1u << end) - 1u;
    return static_cast<__mmask16>(mk);
  };
  const float* q[R];
  __m512 a[MA][R];
  {
    const __mmask16 m0 = mask(0);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) q[r] = w0 + r * ldw - o;
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(m0, x + i * ldx - o);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        a[i][r] = _mm512_mask3_fmadd_ps(_mm512_maskz_load_ps(m0, q[r]), xv,
                                        _mm512_setzero_ps(), m0);
    }
  }
  index_t m = 1;
  for (; m + 1 < nq; ++m) {
    __m512 wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      wv[r] = _mm512_load_ps(q[r] + 16 * m);
      keep_in_register<MA * R + R + 1, MA>(wv[r]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ldx + 16 * m - o);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) a[i][r] = _mm512_fmadd_ps(wv[r], xv, a[i][r]);
    }
  }
  if (m < nq) {
    const __mmask16 mk = mask(m);
    __m512 wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_load_ps(mk, q[r] + 16 * m);
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i * ldx + 16 * m - o);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) a[i][r] = _mm512_mask3_fmadd_ps(wv[r], xv, a[i][r], mk);
    }
  }
  const __m512i back = _mm512_and_si512(
      _mm512_add_epi32(_mm512_set1_epi32(o),
                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)),
      _mm512_set1_epi32(15));
#pragma GCC unroll 4
  for (int i = 0; i < MA; ++i)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[i][r] = (vf)_mm512_permutexvar_ps(back, a[i][r]);
}

// The rows' offset past a 64-byte boundary in floats when every row of the matrix has the same
// one (1..15), else 0 (aligned, or rows that cannot be read as aligned vectors).
LF_INLINE int row_shift(const float* Wm, index_t ldw) {
  const auto addr = reinterpret_cast<std::uintptr_t>(Wm);
  if (addr % sizeof(float) != 0 || ldw % 16 != 0) return 0;
  return static_cast<int>(addr % 64 / sizeof(float));
}
#endif

// R rows of W (dot products over their rows) against MA rows of A, whole depth, plain loads:
// acc[i][r] += A_i . W_r lane-wise, the k tail through zero-filled partial vectors.
template <int R, int MA>
LF_INLINE void gemv_rows_plain(index_t K, const float* w0, index_t ldw, const float* x,
                               index_t ldx, vf (*acc)[R]) {
  index_t k = 0;
  for (; k + W <= K; k += W) {
    vf wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      wv[r] = load(w0 + r * ldw + k);
      keep_in_register<MA * R + R + 1, MA>(wv[r]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      const vf xv = load(x + i * ldx + k);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = vfmadd(wv[r], xv, acc[i][r]);
    }
  }
  if (k < K) {
    const int m = static_cast<int>(K - k);
    vf wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = load_n(w0 + r * ldw + k, m);
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      const vf xv = load_n(x + i * ldx + k, m);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = vfmadd(wv[r], xv, acc[i][r]);
    }
  }
}

// R rows of W against MA rows of A: read as aligned vectors when the rows sit o floats past a
// 64-byte boundary (AVX-512, gemv_rows_shifted), else with plain loads; the same results.
template <int R, int MA>
LF_INLINE void gemv_row_group(index_t K, const float* w0, index_t ldw, const float* x,
                              index_t ldx, int o, vf (*acc)[R]) {
#if defined(__AVX512F__) && LF_W == 16
  if (o) return gemv_rows_shifted<R, MA>(K, w0, ldw, x, ldx, o, acc);
#endif
  (void)o;
  gemv_rows_plain<R, MA>(K, w0, ldw, x, ldx, acc);
}

// C[i, n] (=, or += when accumulate) A_i . W_n for MA (1..4) rows of A and every row n < N of
// W: W's rows four at a time (each tile's lane sums reduced four at a time, hsum4), a row tail
// (N % 4) one at a time (hsum), so an element's arithmetic does not depend on MA. Each group
// of W rows is read once for all MA rows of A (a batch of two or three streams the weights
// once, not once per row).
template <int MA>
void nt_rows(index_t N, index_t K, const float* A, index_t lda, const float* Wm, index_t ldw,
             float* C, index_t ldc, bool accumulate) {
  // (Four rows of A: 16 FMAs per 8 loads already, and rotating 16 accumulators back cost more
  // than the aligned loads saved: 1-3 % slower at B = 8, 16.)
#if defined(__AVX512F__) && LF_W == 16
  const int o = MA < 4 ? row_shift(Wm, ldw) : 0;
#else
  const int o = 0;
#endif
  index_t n = 0;
  for (; n + 4 <= N; n += 4) {
    vf acc[MA][4];
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i)
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) acc[i][r] = vf{};
    gemv_row_group<4, MA>(K, Wm + n * ldw, ldw, A, lda, o, acc);
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      float s[4];
      hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3], s);
      float* c = C + i * ldc + n;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) c[j] = accumulate ? c[j] + s[j] : s[j];
    }
  }
  for (; n < N; ++n) {
    vf acc[MA][1];
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) acc[i][0] = vf{};
    gemv_row_group<1, MA>(K, Wm + n * ldw, ldw, A, lda, o, acc);
#pragma GCC unroll 4
    for (int i = 0; i < MA; ++i) {
      const float s = hsum(acc[i][0]);
      float* c = C + i * ldc + n;
      *c = accumulate ? *c + s : s;
    }
  }
}

void gemv_rows(index_t N, index_t K, const float* Wm, index_t ldw, const float* x, float* y,
               bool accumulate) {
  nt_rows<1>(N, K, x, 0, Wm, ldw, y, 0, accumulate);
}

// Groups of four rows of A where their 16 accumulators, four W vectors and an A vector fit in
// the registers. With 16 registers (AVX2) four rows fold every W load into each row's FMA, 20
// loads per 16 FMAs, more than two load ports issue: pairs of rows instead, where the depth is
// long enough for the k loop to outweigh a call's fixed part (the masked k tail, the sums).
// AVX2, 2 threads, in-process A/B against groups of four, forward T = 1: B = 16, H = 256 0.75x
// the time, H = 128 0.82x, B = 32, H = 256 0.81x; at H = 100 pairs took 1.09-1.21x.
constexpr bool kNtFour = 4 * 4 + 4 + 1 <= kVecRegs;
constexpr index_t kNtPairMinDepth = 128;

// C += A . Wm^T over rows of both: four rows of A at a time (or two, kNtFour) against four
// rows of Wm (16 accumulators, 8 loads per 16 FMAs), a row tail of A in one pass over Wm. Wm's
// rows go in blocks (a multiple of 4 rows, about 20 KiB) that stay in L1 while every row of A
// runs against them, and each group of four A rows stays in L1 across the block's groups of
// four W rows: A streams from L2 once per block instead of Wm once per four rows of A (with
// many rows, Wm's 4 loads per 16 FMAs from L2 bound the loop). The tiles and each element's
// arithmetic are those of an unblocked pass (blocks start at multiples of four rows of Wm).
void gemm_nt(index_t M, index_t N, index_t K, const float* A, index_t lda, const float* Wm,
             index_t ldw, float* C, index_t ldc) {
  constexpr index_t kBlockBytes = 20 << 10;
  const index_t row_bytes = std::max<index_t>(1, K) * static_cast<index_t>(sizeof(float));
  const index_t nb = M <= 4 ? N : std::clamp<index_t>(kBlockBytes / row_bytes / 4 * 4, 4, 256);
  for (index_t n0 = 0; n0 < N; n0 += nb) {
    const index_t n = std::min(nb, N - n0);
    const float* Wb = Wm + n0 * ldw;
    float* Cb = C + n0;
    index_t m = 0;
    if (kNtFour || K < kNtPairMinDepth)
      for (; m + 4 <= M; m += 4)
        nt_rows<4>(n, K, A + m * lda, lda, Wb, ldw, Cb + m * ldc, ldc, true);
    else
      for (; m + 2 <= M; m += 2)
        nt_rows<2>(n, K, A + m * lda, lda, Wb, ldw, Cb + m * ldc, ldc, true);
    switch (M - m) {
      case 3: nt_rows<3>(n, K, A + m * lda, lda, Wb, ldw, Cb + m * ldc, ldc, true); break;
      case 2: nt_rows<2>(n, K, A + m * lda, lda, Wb, ldw, Cb + m * ldc, ldc, true); break;
      case 1: nt_rows<1>(n, K, A + m * lda, lda, Wb, ldw, Cb + m * ldc, ldc, true); break;
      default: break;
    }
  }
}

// ---- Fused LSTM step -----------------------------------------------------------------------
// A tile is R rows x U unit blocks x 4 gates of accumulators. The depth K is walked in chunks
// [k0, k1): the first chunk starts from zero, later ones from the partial sums in `part`; the
// last chunk runs the epilogue (gates -> c', h') instead of storing partial sums. The order of
// the sum over k never changes, so the result does not depend on the chunking.
struct StepArgs {
  index_t H, K;
  float* h_out;
  index_t ldh;
  float* c_out;
  float* gates_out;
  const float* h_prev;
  index_t ldh_prev;
  const float* c_prev;
  const float* xp;
  const float* Wp;
};

// c' = f * c + i * g, written once so that every code path contracts it into the same FMAs
// (results must not depend on which tile shape computed an element).
LF_INLINE vf cell_update(vf f, vf c, vf i, vf g) {
  vf ig = i * g;
  LF_OPAQUE(ig);  // a*b + c*d may otherwise be fused either way: force fma(f, c, i*g)
  return f * c + ig;
}

// Full vectors (kFull) or the last, partial unit block of n < W units.
template <bool kFull>
LF_INLINE vf ld(const float* p, int n) {
  return kFull ? load(p) : load_n(p, n);
}
template <bool kFull>
LF_INLINE void st(float* p, vf v, int n) {
  if (kFull)
    store(p, v);
  else
    store_n(p, v, n);
}

// The fused epilogue for one row and W units: gates from pre-activations, c' and h'.
template <bool kFull>
LF_INLINE void lstm_epilogue(const StepArgs& a, index_t b, index_t u0, int n, const vf* acc) {
  const index_t H = a.H, G = 4 * H;
  const float* xr = a.xp + b * G + u0;
  const vf i = vsigmoid(acc[0] + ld<kFull>(xr, n));
  const vf f = vsigmoid(acc[1] + ld<kFull>(xr + H, n));
  const vf g = vtanh(acc[2] + ld<kFull>(xr + 2 * H, n));
  const vf o = vsigmoid(acc[3] + ld<kFull>(xr + 3 * H, n));
  const vf c = cell_update(f, ld<kFull>(a.c_prev + b * H + u0, n), i, g);
  st<kFull>(a.c_out + b * H + u0, c, n);
  st<kFull>(a.h_out + b * a.ldh + u0, o * vtanh(c), n);
  if (a.gates_out) {
    float* gr = a.gates_out + b * G + u0;
    st<kFull>(gr, i, n);
    st<kFull>(gr + H, f, n);
    st<kFull>(gr + 2 * H, g, n);
    st<kFull>(gr + 3 * H, o, n);
  }
}

// The epilogue of R x U full blocks: all loads first, then the maths of every block
// (independent dependency chains the core can overlap), then all stores. Stores may alias the
// loads (gates_out == xp in training), so interleaving them would serialise the rows. Every
// full block goes through this function (with some R, U), so an element's arithmetic does not
// depend on the tile shape that computed it.
template <int R, int U>
LF_INLINE void epilogue_full(const StepArgs& a, index_t row, index_t ub, const vf (*acc)[U][4]) {
  const index_t H = a.H;
  const index_t G = 4 * H;
  vf z[R][U][4], cp[R][U];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const index_t b = row + r, u0 = (ub + u) * W;
      const float* xr = a.xp + b * G + u0;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) z[r][u][q] = acc[r][u][q] + load(xr + q * H);
      cp[r][u] = load(a.c_prev + b * H + u0);
    }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      z[r][u][0] = vsigmoid(z[r][u][0]);
      z[r][u][1] = vsigmoid(z[r][u][1]);
      z[r][u][2] = vtanh(z[r][u][2]);
      z[r][u][3] = vsigmoid(z[r][u][3]);
      cp[r][u] = cell_update(z[r][u][1], cp[r][u], z[r][u][0], z[r][u][2]);
    }
  vf h[R][U];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) h[r][u] = z[r][u][3] * vtanh(cp[r][u]);  // h' = o*tanh(c')
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const index_t b = row + r, u0 = (ub + u) * W;
      store(a.c_out + b * H + u0, cp[r][u]);
      store(a.h_out + b * a.ldh + u0, h[r][u]);
      if (a.gates_out) {
        float* gr = a.gates_out + b * G + u0;
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) store(gr + q * H, z[r][u][q]);
      }
    }
}

constexpr index_t kLineFloats = 16;  // floats per 64-byte cache line
// Whether the chunked step sweep prefetches the next panel chunk (lstm_fwd_chunked): the
// AVX-512 kernels only. In the AVX2 build the tiles with the prefetch kept their panel vectors
// on the stack (16 registers), 1.19-1.23x the time at S1/S2.
constexpr bool kChunkPrefetch = W == 16;

template <int R, int U, bool kPrefetch = false>
LF_INLINE void lstm_tile(const StepArgs& a, index_t row, index_t ub, index_t k0, index_t k1,
                         float* part, bool first, bool last, const float* pf = nullptr,
                         index_t pf_lines = 0) {
  const index_t H = a.H, G = 4 * H;
  vf acc[R][U][4];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
        acc[r][u][q] = first ? vf{} : load(part + ((r * U + u) * 4 + q) * W);
  if (last) {  // the epilogue's inputs (pre-activations, c_prev) often come from memory
    // Both ends of each vector: with H not a multiple of 16 the gates' vectors straddle two
    // cache lines, and fetching only the first left the second to miss in the epilogue
    // (H = 97: 3x the epilogue's time of H = 96).
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        const float* xr = a.xp + (row + r) * G + (ub + u) * W;
        const float* cr = a.c_prev + (row + r) * a.H + (ub + u) * W;
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          __builtin_prefetch(xr + q * a.H, 0, 3);
          __builtin_prefetch(xr + q * a.H + W - 1, 0, 3);
        }
        __builtin_prefetch(cr, 0, 3);
        __builtin_prefetch(cr + W - 1, 0, 3);
      }
  }
  const float* panel[U];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u) panel[u] = a.Wp + (ub + u) * a.K * 4 * W;
  const float* hp = a.h_prev + row * a.ldh_prev;
  for (index_t k = k0; k < k1; ++k) {
    vf b[U][4];
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        b[u][q] = load(panel[u] + (k * 4 + q) * W);
        keep_in_register<R * U * 4 + U * 4 + 1, R>(b[u][q]);
      }
    if (kPrefetch) {  // this tile's share of the next panel chunk, into L2 (see the sweep)
      const index_t j = k - k0, n = k1 - k0;
      if (j < pf_lines) __builtin_prefetch(pf + j * kLineFloats, 0, 2);
      if (j + n < pf_lines) __builtin_prefetch(pf + (j + n) * kLineFloats, 0, 2);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf h = splat(hp[r * a.ldh_prev + k]);
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[r][u][q] += h * b[u][q];
    }
  }
  if (!last) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) store(part + ((r * U + u) * 4 + q) * W, acc[r][u][q]);
    return;
  }
  if ((ub + U) * W <= H) return epilogue_full<R, U>(a, row, ub, acc);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      const index_t u0 = (ub + u) * W;
      if (u0 + W <= H) {
        const vf one[1][1][4] = {{{acc[r][u][0], acc[r][u][1], acc[r][u][2], acc[r][u][3]}}};
        epilogue_full<1, 1>(a, row + r, ub + u, one);
      } else
        lstm_epilogue<false>(a, row + r, u0, static_cast<int>(H - u0), acc[r][u]);
    }
}

// The last unit block when it is packed densely (lstm_dense_tail_vectors: NV vectors per k
// hold the four gates of its n < W units side by side): R rows x NV accumulators instead of
// R x 4, and the epilogue takes each row's gates apart through a small buffer. Every lane gets
// the same FMAs in the same k order as in the regular layout (and the same epilogue), so an
// element's result does not depend on the layout.
template <int R, int NV>
LF_INLINE void lstm_tail_tile(const StepArgs& a, index_t row, index_t ub, index_t k0, index_t k1,
                              float* part, bool first, bool last) {
  const int n = static_cast<int>(a.H - ub * W);
  vf acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? vf{} : load(part + (r * NV + v) * W);
  const float* panel = a.Wp + ub * a.K * 4 * W;
  const float* hp = a.h_prev + row * a.ldh_prev;
  for (index_t k = k0; k < k1; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      b[v] = load(panel + (k * NV + v) * W);
      keep_in_register<R * NV + NV + 1, R>(b[v]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const vf h = splat(hp[r * a.ldh_prev + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += h * b[v];
    }
  }
  if (!last) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) store(part + (r * NV + v) * W, acc[r][v]);
    return;
  }
  // The epilogue of all R rows at once, their n units side by side (element r * n + w) in
  // vectors of W lanes: ceil(R n / W) passes through the gate maths instead of R, each a long
  // dependency chain (one per row cost about as much as a full unit block's epilogue: H = 97
  // and 100 ran 15-17 % slower than H = 96, T = 100, B = 16, one thread). Every input is
  // gathered before any output is written (gates_out may be xp), and each element goes
  // through the same operations as in lstm_epilogue, so the results are bitwise the same.
  const index_t H = a.H, G = 4 * H, u0 = ub * W;
  constexpr int NE = (R * (W - 1) + W - 1) / W;  // vectors for R rows of at most W - 1 units
  const int ne = (R * n + W - 1) / W;
  float zb[4][NE * W], xb[4][NE * W], cb[NE * W];
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) store(zb[q] + (ne - 1) * W, vf{});  // lanes past R n: zeros
  store(cb + (ne - 1) * W, vf{});
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) store(xb[q] + (ne - 1) * W, vf{});
  for (int r = 0; r < R; ++r) {
    float z[4 * W];  // the row's gates, [q * n + w]
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(z + v * W, acc[r][v]);
    const float* xr = a.xp + (row + r) * G + u0;
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      store_n(zb[q] + r * n, load_n(z + q * n, n), n);
      store_n(xb[q] + r * n, load_n(xr + q * H, n), n);
    }
    store_n(cb + r * n, load_n(a.c_prev + (row + r) * H + u0, n), n);
  }
  float hb[NE * W], gb[4][NE * W];
  for (int v = 0; v < ne; ++v) {
    const index_t e = v * W;
    const vf i = vsigmoid(load(zb[0] + e) + load(xb[0] + e));
    const vf f = vsigmoid(load(zb[1] + e) + load(xb[1] + e));
    const vf g = vtanh(load(zb[2] + e) + load(xb[2] + e));
    const vf o = vsigmoid(load(zb[3] + e) + load(xb[3] + e));
    const vf c = cell_update(f, load(cb + e), i, g);
    store(cb + e, c);
    store(hb + e, o * vtanh(c));
    store(gb[0] + e, i);
    store(gb[1] + e, f);
    store(gb[2] + e, g);
    store(gb[3] + e, o);
  }
  for (int r = 0; r < R; ++r) {
    const index_t b = row + r;
    store_n(a.c_out + b * H + u0, load_n(cb + r * n, n), n);
    store_n(a.h_out + b * a.ldh + u0, load_n(hb + r * n, n), n);
    if (a.gates_out) {
      float* gr = a.gates_out + b * G + u0;
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) store_n(gr + q * H, load_n(gb[q] + r * n, n), n);
    }
  }
}

// The dense last block for rr <= R rows (NV = nv in 1..3).
template <int R>
LF_INLINE void lstm_tail_rows(const StepArgs& a, int rr, int nv, index_t row, index_t ub,
                              index_t k0, index_t k1, float* part, bool first, bool last) {
  if constexpr (R >= 1) {
    if (rr != R) return lstm_tail_rows<R - 1>(a, rr, nv, row, ub, k0, k1, part, first, last);
    if (nv == 1) return lstm_tail_tile<R, 1>(a, row, ub, k0, k1, part, first, last);
    if (nv == 2) return lstm_tail_tile<R, 2>(a, row, ub, k0, k1, part, first, last);
    lstm_tail_tile<R, 3>(a, row, ub, k0, k1, part, first, last);
  }
}

// The number of vectors per k of block ub when it is a densely packed last block with a
// recurrent product to run (K > 0), else 0.
LF_INLINE int dense_tail(const StepArgs& a, index_t ub) {
  return a.K > 0 ? lstm_dense_tail_vectors(W, a.H, ub) : 0;
}

// Rows [row, row + rr) (rr <= ROWS) over unit blocks [ub0, ub1), whole depth: U = ROWS / rr
// blocks at a time so that even a single row keeps enough independent accumulators.
template <int R>
LF_INLINE void lstm_rows_full(const StepArgs& a, int rr, index_t row, index_t ub0, index_t ub1) {
  if constexpr (R >= 1) {
    if (rr != R) return lstm_rows_full<R - 1>(a, rr, row, ub0, ub1);
    // As many blocks as fit in the registers with their panel vectors (keep_in_register) when
    // each panel vector serves several rows: 2 rows x 2 blocks (25 vectors), 3 rows x 1 block,
    // not 2 x 3 or 3 x 2 (33-37 vectors, panel loads folded into the FMAs and re-issued per row:
    // 2 and 3 rows at H = 64-160, one thread, 0.70-0.82x the time with both changes).
    constexpr int U0 = ROWS / R > 0 ? ROWS / R : 1;
    constexpr int Ufit = (kVecRegs - 1) / (4 * R + 4);
    constexpr int U = R > 1 && Ufit >= 1 && Ufit < U0 ? Ufit : U0;
    const int nv = ub1 > ub0 ? dense_tail(a, ub1 - 1) : 0;
    const index_t ube = nv ? ub1 - 1 : ub1;  // the dense last block on its own
    index_t ub = ub0;
    for (; ub + U <= ube; ub += U) lstm_tile<R, U>(a, row, ub, 0, a.K, nullptr, true, true);
    if (U > 1)
      for (; ub < ube; ++ub) lstm_tile<R, 1>(a, row, ub, 0, a.K, nullptr, true, true);
    if (nv) lstm_tail_rows<R>(a, R, nv, row, ube, 0, a.K, nullptr, true, true);
  }
}

// One unit block, rows [row, row + rr), depth chunk [k0, k1).
template <int R>
LF_INLINE void lstm_rows_chunk(const StepArgs& a, int rr, index_t row, index_t ub, index_t k0,
                               index_t k1, float* part, bool first, bool last, const float* pf,
                               index_t pf_lines) {
  if constexpr (R >= 1) {
    if (rr != R)
      return lstm_rows_chunk<R - 1>(a, rr, row, ub, k0, k1, part, first, last, pf, pf_lines);
    if (kChunkPrefetch && pf_lines > 0)
      lstm_tile<R, 1, kChunkPrefetch>(a, row, ub, k0, k1, part, first, last, pf, pf_lines);
    else
      lstm_tile<R, 1>(a, row, ub, k0, k1, part, first, last);
  }
}

// Depth chunk sized for L1: KC x 4 gates x W floats of packed W_hh stay in L1 while a block of
// RB rows streams through it: 32 KiB where the L1 data cache holds 48 KiB or more (AMD Zen 5,
// Intel since Ice Lake), else 16 KiB (Zen 4, Skylake). Fewer, longer chunks load and store the
// partial sums less often: AMD EPYC Zen 5, 1 thread, B = 64, H = 512: 170-175 -> 181-182
// GFLOP/s; B = 32, H = 256: 157-165 -> 170-172 (40 KiB chunks: no better).
inline index_t l1_depth_chunk() {
  static const index_t kc = (l1d_cache_bytes() >= (48 << 10) ? 8192 : 4096) / (4 * W);
  return kc;
}

// The depth chunk of the chunked sweep. Where a 512-bit FMA issues at one per cycle (Zen 4), a
// 6-row tile's 24 FMAs per k take 24 cycles and its 4 panel vectors (256 bytes) can stream
// from L2 (32 bytes per cycle) at a third of its rate, so the panels need not stay in L1: chunks
// of up to 512 (128 KiB of panel) save the partial sums' loads and stores. AMD EPYC Zen 4, 1
// thread, step probe, GFLOP/s for chunks of 64 / 128 / 256 / 512: B = 64, H = 512: 102 / 106 /
// 109 / 110; B = 32, H = 256: 100 / 101 / 104.5 / 104.5; B = 16, H = 100: 86 / 88 / 88 / 88;
// 2 threads, B = 64, H = 512: 204 -> 216-219 (512). The AVX2 kernels (12 FMAs per 4 panel
// vectors, two FMAs per cycle) would need two thirds of L2's rate and gain nothing (101 / 100 /
// 102 / 102 at B = 64, H = 512; 96 / 93 / 93 / 93 at B = 32, H = 256): they keep the L1 chunk,
// as do CPUs with two full-width 512-bit FMA units.
inline index_t depth_chunk() {
  static const index_t kc = W == 16 && fma512_half_rate() ? 512 : l1_depth_chunk();
  return kc;
}
constexpr index_t RB = 8 * ROWS;

// Fewer rows than a tile and a short depth: whole-depth tiles of several unit blocks each
// (enough independent accumulators for one to five rows).
__attribute__((noinline)) void lstm_fwd_full(const StepArgs& a, index_t rows, index_t ub0,
                                             index_t ub1) {
  lstm_rows_full<ROWS>(a, static_cast<int>(rows), 0, ub0, ub1);
}

// Many rows and a long depth: depth chunks of KC, partial sums of RB rows kept in `part`.
__attribute__((noinline)) void lstm_fwd_chunked(const StepArgs& a, index_t rows, index_t ub0,
                                                index_t ub1) {
  float part[RB * 4 * W];
  const index_t K = a.K, KC = depth_chunk();
  // Each chunk of the panels is read from L2 or beyond by the first row tile that uses it and
  // from L1 by the others: at S2 (W_hh 4 MiB, streamed from L3 every step) that first tile
  // waited on its panel loads, the hottest instructions of the sweep. The tiles after the first
  // prefetch the chunk used next into L2, a share of its lines each, one or two per depth
  // step, while they compute from L1 (a tile alone prefetches it itself). Only where the
  // thread's panels take a quarter of L2 or more (they are evicted between steps, or never
  // fit). In-process A/B, 2 threads, AVX-512, forward: S2 0.896-0.914x the time, S1 (W_hh
  // next to a copy of W_ih^T in each core's L2) 0.957-0.974x, S3 1.006x; 1 thread S2 0.950x;
  // S6 and (100, 64, 128, 128), below the threshold, within 0.99-1.01x. (A prefetch of the
  // next chunk by the first tile, into L1, had no effect on the Zen 4 host of the time.)
  const bool prefetch =
      kChunkPrefetch && step_prefetch(4.0 * static_cast<double>((ub1 - ub0) * K * 4 * W));
  for (index_t ub = ub0; ub < ub1; ++ub) {
    const int nv = dense_tail(a, ub);
    for (index_t rc = 0; rc < rows; rc += RB) {
      const index_t nr = rows - rc < RB ? rows - rc : RB;
      // K = 0 (the recurrent product done elsewhere): one empty chunk, the epilogue only.
      for (index_t k0 = 0; k0 < K || (K == 0 && k0 == 0); k0 += KC) {
        const index_t k1 = K - k0 < KC ? K : k0 + KC;
        // Tiles of balanced heights (8 rows: 4 + 4, not 6 + 2): a tile of one or two rows
        // has too few independent accumulators to keep the FMA units busy.
        const index_t nt = (nr + ROWS - 1) / ROWS, base = nr / nt, extra = nr % nt;
        // The panel chunk used next (this block's next depth chunk, the first of the next row
        // block, or the next unit block's first), prefetched into L2 by the tiles after the
        // first, which read this chunk from L1: the first tile streams it from L2 or L3.
        const float* pf = nullptr;
        index_t pf_lines = 0;
        if (prefetch && !nv && K > 0) {
          const index_t nub_ = k1 < K || rc + RB < rows ? ub : ub + 1;
          const index_t nk0 = k1 < K ? k1 : 0, nk1 = K - nk0 < KC ? K : nk0 + KC;
          if (nub_ < ub1) {
            pf = a.Wp + (nub_ * K + nk0) * 4 * W;
            pf_lines = (nk1 - nk0) * 4 * W / kLineFloats;
          }
        }
        index_t lr = 0;
        for (index_t q = 0; q < nt; ++q) {
          const int rr = static_cast<int>(base + (q < extra ? 1 : 0));
          // this tile's lines of the next chunk: [l0, l1) (none for the first of several)
          index_t l0 = 0, l1 = 0;
          if (pf) prefetch_share(pf_lines, q, nt, &l0, &l1);
          if (nv)
            lstm_tail_rows<ROWS>(a, rr, nv, rc + lr, ub, k0, k1, part + lr * 4 * W, k0 == 0,
                                 k1 == K);
          else
            lstm_rows_chunk<ROWS>(a, rr, rc + lr, ub, k0, k1, part + lr * 4 * W, k0 == 0,
                                  k1 == K, pf ? pf + l0 * kLineFloats : nullptr,
                                  l1 > l0 ? l1 - l0 : 0);
          lr += rr;
        }
      }
    }
  }
}

void lstm_fwd_rows(index_t rows, index_t H, index_t K, index_t ub0, index_t ub1, float* h_out,
                   index_t ldh, float* c_out, float* gates_out, const float* h_prev,
                   index_t ldh_prev, const float* c_prev, const float* xp, const float* Wp) {
  const StepArgs a{H, K, h_out, ldh, c_out, gates_out, h_prev, ldh_prev, c_prev, xp, Wp};
  // Depth chunks whenever the depth is long, even for a single row tile: a chunk of the panels
  // is read once from L2 per step and reused from L1 by every row tile, and the chunked tiles
  // measured faster at every row count (1 to 12 rows, K = 256, AVX-512): whole-depth tiles
  // stream all of W_hh once per row tile, and a shrinking batch spends many steps at few rows.
  // Whole-depth tiles only for fewer rows than a tile (several unit blocks per tile). With
  // full row tiles the chunked sweep is used even when the depth fits one or two chunks: the
  // same tiles compiled in lstm_fwd_full (next to the multi-block tiles) kept their
  // accumulators on the stack and ran at half the speed (T=100, B=16, H=96).
  // A single row: whole-depth tiles at any depth (six unit blocks per tile keep 24 accumulators
  // in flight; a chunked one-row tile has only four: T=500, B=1, H=128 1.26 -> 1.10 ms).
  const index_t KC = l1_depth_chunk();
  if ((K <= KC + KC / 2 && rows < ROWS) || rows == 1)
    lstm_fwd_full(a, rows, ub0, ub1);
  else
    lstm_fwd_chunked(a, rows, ub0, ub1);
}

template <bool kFull>
LF_INLINE void lstm_bwd_block(index_t H, index_t b, index_t u, int n, float* dz, float* dc_next,
                              const float* gates, const float* c, const float* c_prev,
                              const float* dy, const float* dh_next) {
  const index_t G = 4 * H;
  const vf one = splat(1.0f);
  const float* gr = gates + b * G;
  float* dzr = dz + b * G;
  const vf i = ld<kFull>(gr + u, n), f = ld<kFull>(gr + H + u, n);
  const vf g = ld<kFull>(gr + 2 * H + u, n), o = ld<kFull>(gr + 3 * H + u, n);
  vf dh = ld<kFull>(dh_next + b * H + u, n);
  if (dy) dh = ld<kFull>(dy + b * H + u, n) + dh;
  const vf tc = vtanh(ld<kFull>(c + b * H + u, n));
  const vf dc = ld<kFull>(dc_next + b * H + u, n) + dh * o * (one - tc * tc);
  st<kFull>(dzr + u, dc * g * i * (one - i), n);
  st<kFull>(dzr + H + u, dc * ld<kFull>(c_prev + b * H + u, n) * f * (one - f), n);
  st<kFull>(dzr + 2 * H + u, dc * i * (one - g * g), n);
  st<kFull>(dzr + 3 * H + u, dh * tc * o * (one - o), n);
  st<kFull>(dc_next + b * H + u, dc * f, n);
}

void lstm_bwd_pointwise(index_t rows, index_t H, index_t u0, index_t u1, float* dz,
                        float* dc_next, const float* gates, const float* c, const float* c_prev,
                        const float* dy, const float* dh_next) {
  for (index_t b = 0; b < rows; ++b) {
    index_t u = u0;
    for (; u + W <= u1; u += W)
      lstm_bwd_block<true>(H, b, u, W, dz, dc_next, gates, c, c_prev, dy, dh_next);
    if (u < u1)
      lstm_bwd_block<false>(H, b, u, static_cast<int>(u1 - u), dz, dc_next, gates, c, c_prev, dy,
                            dh_next);
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

// Row maximum, exponentials in place with their sum (lane sums added in float64 at the end),
// then the gradient; the k tail through partial vectors (zeros there would change max and sum,
// so the tail lanes are masked out of both).
void softmax_xent(index_t rows, index_t V, float* z, const int64_t* t, float scale, double* nll) {
  for (index_t r = 0; r < rows; ++r) {
    float* zr = z + r * V;
    if (t[r] < 0) {
      for (index_t j = 0; j < V; j += W) store_n(zr + j, vf{}, V - j < W ? int(V - j) : W);
      nll[r] = 0.0;
      continue;
    }
    // row maximum: vector maxima over whole vectors, the tail and the lanes in scalar code
    float mx = zr[0];
    {
      index_t j = 0;
      if (V >= W) {
        vf m = load(zr);
        for (j = W; j + W <= V; j += W) m = vmax(load(zr + j), m);
        float lanes[W];
        store(lanes, m);
        for (int q = 0; q < W; ++q) mx = lanes[q] > mx ? lanes[q] : mx;
      }
      for (; j < V; ++j) mx = zr[j] > mx ? zr[j] : mx;
    }
    const float zt = zr[t[r]] - mx;
    const vf vm = splat(mx);
    vf acc = vf{};
    index_t j = 0;
    for (; j + W <= V; j += W) {
      const vf e = vexp(load(zr + j) - vm);
      store(zr + j, e);
      acc += e;
    }
    float tail = 0.0f;
    if (j < V) {
      const int n = static_cast<int>(V - j);
      const vf e = vexp(load_n(zr + j, n) - vm);
      store_n(zr + j, e, n);
      float tmp[W];
      store(tmp, e);
      for (int q = 0; q < n; ++q) tail += tmp[q];
    }
    float lanes[W];
    store(lanes, acc);
    double sum = tail;
    for (int q = 0; q < W; ++q) sum += lanes[q];
    nll[r] = __builtin_log(sum) - static_cast<double>(zt);
    const vf inv = splat(static_cast<float>(1.0 / sum) * scale);
    for (j = 0; j < V; j += W) {
      const int n = V - j < W ? static_cast<int>(V - j) : W;
      store_n(zr + j, load_n(zr + j, n) * inv, n);
    }
    zr[t[r]] -= scale;
  }
}

// Adam: every lane goes through the same vector arithmetic (tails through partial vectors),
// so an element's result does not depend on where a thread's slice starts.
template <bool kFull, bool kL2, bool kZero>
LF_INLINE void adam_block(float* p, float* g, float* m, float* v, const AdamCoeffs& c, int n) {
  vf pv = ld<kFull>(p, n);
  vf gv = ld<kFull>(g, n);
  if (kZero) st<kFull>(g, vf{}, n);
  if (kL2) gv = gv + splat(c.l2) * pv;
  pv = pv * splat(c.decay);
  const vf mv = splat(c.b1) * ld<kFull>(m, n) + splat(c.one_minus_b1) * gv;
  const vf vv = splat(c.b2) * ld<kFull>(v, n) + splat(c.one_minus_b2) * (gv * gv);
  const vf den = vsqrt(vv) / splat(c.bc2_sqrt) + splat(c.eps);
  st<kFull>(m, mv, n);
  st<kFull>(v, vv, n);
  st<kFull>(p, pv - splat(c.step) * (mv / den), n);
}

template <bool kL2, bool kZero>
void adam_t(index_t n, float* p, float* g, float* m, float* v, const AdamCoeffs& c) {
  index_t j = 0;
  for (; j + W <= n; j += W) adam_block<true, kL2, kZero>(p + j, g + j, m + j, v + j, c, W);
  if (j < n)
    adam_block<false, kL2, kZero>(p + j, g + j, m + j, v + j, c, static_cast<int>(n - j));
}

void adam(index_t n, float* p, float* g, float* m, float* v, const AdamCoeffs& c,
          bool zero_grad) {
  if (c.l2 != 0.0f)
    (zero_grad ? adam_t<true, true> : adam_t<true, false>)(n, p, g, m, v, c);
  else
    (zero_grad ? adam_t<false, true> : adam_t<false, false>)(n, p, g, m, v, c);
}

// Squares summed in float vectors over blocks of 64 vectors, the blocks in float64.
double sumsq(index_t n, const float* x) {
  double total = 0.0;
  for (index_t j0 = 0; j0 < n; j0 += 64 * W) {
    const index_t j1 = n - j0 < 64 * W ? n : j0 + 64 * W;
    vf acc = vf{};
    for (index_t j = j0; j < j1; j += W) {
      const vf a = load_n(x + j, j1 - j < W ? static_cast<int>(j1 - j) : W);
      acc += a * a;
    }
    float lanes[W];
    store(lanes, acc);
    for (int q = 0; q < W; ++q) total += lanes[q];
  }
  return total;
}

const Kernels kTable = {LF_NAME,       W,         MR,         NR,
                        gemm_micro,    gemm_micro_rowA,   gemv_panel, gemv_rows, gemm_nt, gemv_cols, lstm_fwd_rows,
                        lstm_bwd_pointwise, sigmoid, tanh_, softmax_xent, adam, sumsq,
                        gemm_micro_pair, gemm_rows_b, gemm_micro_pf};

}  // namespace

const Kernels& LF_TABLE() { return kTable; }

}  // namespace lstm_fast
