#include "gemm/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include <unistd.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "dispatch.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {
namespace {

constexpr index_t kKC = kGemmKC;  // depth of a packed block (gemm.h)

// Blocking (loop order pc -> pack B -> ic -> pack A -> jc -> ir -> jr, gemm_serial_bias): the
// MR x KC sliver of packed A stays in L1 while the jr loop streams a KC x NC part of packed B
// from L2, so NC is chosen for that part to fill about half of this core's L2; the MC x KC
// block of A stays in L2 across the jc loop.
index_t l2_bytes() { return l2_cache_bytes(); }
index_t mc_for(const Kernels& k) { return k.MR * std::max<index_t>(1, 576 / k.MR); }
index_t nc_for(const Kernels& k) {
  const index_t cols = l2_bytes() / 2 / (kKC * static_cast<index_t>(sizeof(float)));
  return k.NR * std::clamp<index_t>(cols / k.NR, 4, 4096 / k.NR);
}

struct AlignedBuffer {
  float* p = nullptr;
  std::size_t n = 0;  // capacity in floats
  explicit AlignedBuffer(std::size_t count) : n(count) {
    std::size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// dst[0:n] = src[0:n] for the short rows of a packed panel (n = MR or NR, or the part of one):
// the usual widths are copied inline (a few vector moves; a call to memcpy per 48-byte row
// measured 10 % of a training step), others through memcpy.
inline void copy_row(float* dst, const float* src, int n) {
  switch (n) {
    case 4: return static_cast<void>(__builtin_memcpy(dst, src, 4 * sizeof(float)));
    case 6: return static_cast<void>(__builtin_memcpy(dst, src, 6 * sizeof(float)));
    case 8: return static_cast<void>(__builtin_memcpy(dst, src, 8 * sizeof(float)));
    case 12: return static_cast<void>(__builtin_memcpy(dst, src, 12 * sizeof(float)));
    case 16: return static_cast<void>(__builtin_memcpy(dst, src, 16 * sizeof(float)));
    case 32: return static_cast<void>(__builtin_memcpy(dst, src, 32 * sizeof(float)));
    default: std::memcpy(dst, src, n * sizeof(float));
  }
}

// q[from .. w) = 0: the lanes of a packed row past the matrix's edge (a sliver's rows, a panel's
// columns). Vector stores: GCC turned the plain loop, called once per depth, into a memset call
// of a few bytes each (3 % of an S6 backward, in the step's packing of dZ_t's 8 rows per thread
// into 12-row slivers).
inline void zero_tail(float* q, int from, int w) {
  int r = from;
#if defined(__SSE2__)
  for (; r + 4 <= w; r += 4) _mm_storeu_ps(q + r, _mm_setzero_ps());
  if (r + 2 <= w) {
    _mm_storel_pi(reinterpret_cast<__m64*>(q + r), _mm_setzero_ps());
    r += 2;
  }
  if (r < w) q[r] = 0.0f;
#else
  for (; r < w; ++r) q[r] = 0.0f;
#endif
}

}  // namespace

// dst[k * ld + r] = src[r * rs + k] for r < rows, k < kc: rows of the source become the
// interleaved lanes of a packed panel (a transpose). On x86 four rows and four depths at a time
// through SSE registers (4 stores per 16 values instead of 16); pairs of rows and the last row
// element by element. Groups of rows outer, depth inner: only four source rows are live at a
// time. Rows a multiple of 4 KiB apart (dZ's rows at H a multiple of 256) share one L1 set, and
// walking the depth across all 12 rows of a sliver at once evicted each line before its next
// use (8 ways): the LSTM backward's units split spent 15 % of its time here (T = 100, B = 16,
// H = 256, 2 threads; 4 % after). In-process A/B, 2 threads, training: units split forced
// (100, 16, 65, 100) 0.955x the time, (100, 8, 65, 256) 0.957x; default schedules S2 0.977x,
// S1 0.989x, S6 1.005x.
void transpose_rows(const float* src, index_t rs, int rows, index_t kc, int ld, float* dst) {
  int r = 0;
#if defined(__SSE2__)
  for (; r + 4 <= rows; r += 4) {
    const float* s = src + r * rs;
    index_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      __m128 a = _mm_loadu_ps(s + k), b = _mm_loadu_ps(s + rs + k),
             c = _mm_loadu_ps(s + 2 * rs + k), e = _mm_loadu_ps(s + 3 * rs + k);
      _MM_TRANSPOSE4_PS(a, b, c, e);
      float* d = dst + k * ld + r;
      _mm_storeu_ps(d, a);
      _mm_storeu_ps(d + ld, b);
      _mm_storeu_ps(d + 2 * ld, c);
      _mm_storeu_ps(d + 3 * ld, e);
    }
    for (; k < kc; ++k)
      for (int j = 0; j < 4; ++j) dst[k * ld + r + j] = s[j * rs + k];
  }
  for (; r + 2 <= rows; r += 2) {
    const float* s = src + r * rs;
    index_t k = 0;
    for (; k + 4 <= kc; k += 4) {
      const __m128 a = _mm_loadu_ps(s + k), b = _mm_loadu_ps(s + rs + k);
      const __m128 lo = _mm_unpacklo_ps(a, b), hi = _mm_unpackhi_ps(a, b);
      float* d = dst + k * ld + r;
      _mm_storel_pi(reinterpret_cast<__m64*>(d), lo);
      _mm_storeh_pi(reinterpret_cast<__m64*>(d + ld), lo);
      _mm_storel_pi(reinterpret_cast<__m64*>(d + 2 * ld), hi);
      _mm_storeh_pi(reinterpret_cast<__m64*>(d + 3 * ld), hi);
    }
    for (; k < kc; ++k) {
      dst[k * ld + r] = s[k];
      dst[k * ld + r + 1] = s[rs + k];
    }
  }
#endif
  for (; r < rows; ++r)
    for (index_t j = 0; j < kc; ++j) dst[j * ld + r] = src[r * rs + j];
}

namespace {

// Panels of w columns from a block whose k-th row (kc rows, n columns) starts at src + k * ld:
// dst[(p * kc + k) * w + c] = src[k * ld + p * w + c], zero past column n. Depth blocks of 8
// rows outer, panels inner: each source row is read contiguously while it is in L1 (one panel
// at a time would touch a new row, usually a new cache line, for every 48 or 128 bytes).
void pack_rows(const float* src, index_t ld, index_t n, index_t kc, int w, float* dst) {
  const index_t np = (n + w - 1) / w;
  for (index_t k0 = 0; k0 < kc; k0 += 8) {
    const index_t k1 = std::min<index_t>(kc, k0 + 8);
    for (index_t p = 0; p < np; ++p) {
      const int cols = static_cast<int>(std::min<index_t>(w, n - p * w));
      float* d = dst + p * kc * w;
      for (index_t k = k0; k < k1; ++k) {
        copy_row(d + k * w, src + k * ld + p * w, cols);
        zero_tail(d + k * w, cols, w);
      }
    }
  }
}

// Panels of w lanes from `rows`-sized groups: the transposing and strided layouts, one panel
// at a time. Lane r, depth k of the panel at dst is src[r * rs + k * cs].
void pack_lanes(const float* src, index_t rs, index_t cs, index_t n, index_t kc, int w,
                float* dst) {
  for (index_t p = 0; p * w < n; ++p) {
    float* d = dst + p * kc * w;
    const int lanes = static_cast<int>(std::min<index_t>(w, n - p * w));
    const float* s = src + p * w * rs;
    if (cs == 1) {
      transpose_rows(s, rs, lanes, kc, w, d);
    } else {
      for (int r = 0; r < lanes; ++r)
        for (index_t k = 0; k < kc; ++k) d[k * w + r] = s[r * rs + k * cs];
    }
    for (index_t k = 0; k < kc && lanes < w; ++k) zero_tail(d + k * w, lanes, w);
  }
}

// Ap[(ir * kc + k) * MR + r] = A(i0 + ir*MR + r, p0 + k), zero for rows >= i0 + mc.
void pack_a(const Kernels& kern, index_t mc, index_t kc, const MatView& A, index_t i0, index_t p0,
            float* Ap) {
  const float* src = A.p + i0 * A.rs + p0 * A.cs;
  if (A.rs == 1)  // column-major A (a transposed row-major matrix): contiguous MR-row slivers
    pack_rows(src, A.cs, mc, kc, kern.MR, Ap);
  else
    pack_lanes(src, A.rs, A.cs, mc, kc, kern.MR, Ap);
}

// sums[i] += A(i0 + i, p0 + k) over k < kc, in k order, for i < mc: read back from the block
// just packed (in cache), whatever A's layout. Over the depth blocks in order this is each row
// summed in k order: the same float additions as a plain loop over A's row.
// A sliver's MR lanes summed over its kc depths (lanes past the block's rows are zero and
// never stored); MR known at compile time so the lane loop becomes vector adds.
template <int MR>
void sliver_sums(index_t kc, const float* a, float* acc) {
  for (index_t k = 0; k < kc; ++k)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) acc[r] += a[k * MR + r];
}

void add_row_sums(const Kernels& kern, index_t mc, index_t kc, const float* Ap, float* sums) {
  const int MR = kern.MR;
  for (index_t ir = 0; ir * MR < mc; ++ir) {
    const int rows = static_cast<int>(std::min<index_t>(MR, mc - ir * MR));
    float acc[64] = {};
    for (int r = 0; r < rows; ++r) acc[r] = sums[ir * MR + r];
    const float* a = Ap + ir * kc * MR;
    switch (MR) {
      case 4: sliver_sums<4>(kc, a, acc); break;
      case 6: sliver_sums<6>(kc, a, acc); break;
      case 12: sliver_sums<12>(kc, a, acc); break;
      default:
        for (index_t k = 0; k < kc; ++k)
          for (int r = 0; r < rows; ++r) acc[r] += a[k * MR + r];
    }
    for (int r = 0; r < rows; ++r) sums[ir * MR + r] = acc[r];
  }
}

// Bp[(jr * kc + k) * NR + c] = B(p0 + k, j0 + jr*NR + c), zero for columns >= j0 + nc.
void pack_b(const Kernels& kern, index_t kc, index_t nc, const MatView& B, index_t p0, index_t j0,
            float* Bp) {
  const float* src = B.p + p0 * B.rs + j0 * B.cs;
  if (B.cs == 1)  // row-major B
    pack_rows(src, B.rs, nc, kc, kern.NR, Bp);
  else  // e.g. B stored as rows of B^T (x . W^T): a transpose
    pack_lanes(src, B.cs, B.rs, nc, kc, kern.NR, Bp);
}

void zero_or_keep(index_t M, index_t N, float* C, index_t ldc, bool accumulate) {
  if (accumulate) return;
  for (index_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, N * sizeof(float));
}


// C (M x N) = bias (every row) for the rows and columns given.
void fill_rows(index_t M, index_t N, const float* bias, float* C, index_t ldc) {
  for (index_t i = 0; i < M; ++i) std::memcpy(C + i * ldc, bias, N * sizeof(float));
}

// gemm_serial with an optional bias row: with bias (and !accumulate) C = bias + A . B. The bias
// is written into each C tile just before its first depth block accumulates onto it, so the
// tile is in L1 (no separate pass over C through memory); the sum is rounded as bias + (A . B)
// over the first block, then + each later block, the same as filling C first.
void gemm_serial_bias(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                      float* C, index_t ldc, bool accumulate, const float* bias,
                      const float* Bpre = nullptr, float* a_sums = nullptr) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (bias && !accumulate) return fill_rows(M, N, bias, C, ldc);
    return zero_or_keep(M, N, C, ldc, accumulate);
  }
  const int MR = kern.MR, NR = kern.NR;
  const index_t MC = mc_for(kern), NC = nc_for(kern);
  const index_t kc_max = std::min(K, kKC);
  const index_t mc_max = std::min(M, MC);
  // A's block in a buffer kept per thread (at most MC x KC floats): a row-chunked parallel GEMM
  // calls this once per chunk.
  thread_local std::unique_ptr<AlignedBuffer> a_buf;
  const std::size_t a_need = static_cast<std::size_t>(((mc_max + MR - 1) / MR) * MR * kc_max);
  if (!a_buf || a_buf->n < a_need) {
    a_buf.reset();
    a_buf = std::make_unique<AlignedBuffer>(std::max(a_need, std::size_t(mc_for(kern) * kKC)));
  }
  AlignedBuffer& Ap = *a_buf;
  AlignedBuffer Bp(Bpre ? 0 : ((N + NR - 1) / NR) * NR * kc_max);
  // Each operand is packed once: B's depth block for all columns, then A's blocks; the jc loop
  // inside keeps a KC x NC part of B (about half of L2) hot while the A block (MC x KC, also in
  // L2) is reused for every such part. With Bpre (B packed beforehand in full-depth panels,
  // pack_b_panels) B is not packed here at all.
  for (index_t pc = 0; pc < K; pc += kKC) {
    const index_t kc = std::min(kKC, K - pc);
    const bool acc = accumulate || pc > 0 || bias;
    const bool fill = bias && !accumulate && pc == 0;
    if (!Bpre) pack_b(kern, kc, N, B, pc, 0, Bp.p);
    // Panel j at depth pc: packed here (kc rows per panel) or beforehand (K rows per panel).
    const float* b0 = Bpre ? Bpre + pc * NR : Bp.p;
    const index_t bstride = (Bpre ? K : kc) * NR;
    for (index_t ic = 0; ic < M; ic += MC) {
      const index_t mc = std::min(MC, M - ic);
      pack_a(kern, mc, kc, A, ic, pc, Ap.p);
      if (a_sums) add_row_sums(kern, mc, kc, Ap.p, a_sums + ic);
      for (index_t jc = 0; jc < N; jc += NC) {
        const index_t nc = std::min(NC, N - jc);
        for (index_t ir = 0; ir * MR < mc; ++ir) {
          const int m = static_cast<int>(std::min<index_t>(MR, mc - ir * MR));
          const float* ap = Ap.p + ir * kc * MR;
          float* c = C + (ic + ir * MR) * ldc + jc;
          if (fill) fill_rows(m, nc, bias + jc, c, ldc);
          sliver_times_panels(kern, kc, ap, b0 + (jc / NR) * bstride, bstride, nc, c, ldc, m, acc);
        }
      }
    }
  }
}

// Rows [i0, i1) of gemm_dual's products for the depth block [pc, pc + kc): A's block packed
// once (MC rows at a time) and multiplied by both operands' panels of the block (Bb: nb1
// panels of B1, then B2's, kc x NR floats each).
void gemm_dual_rows(const Kernels& kern, index_t i0, index_t i1, index_t pc, index_t kc,
                    MatView A, const float* Bb, index_t nb1, const index_t* N, float* const* C,
                    const index_t* ldc, const bool* accumulate, float* a_sums) {
  const int MR = kern.MR, NR = kern.NR;
  const index_t MC = mc_for(kern);
  thread_local std::unique_ptr<AlignedBuffer> a_buf;
  const std::size_t a_need = static_cast<std::size_t>(MC * kKC);
  if (!a_buf || a_buf->n < a_need) {
    a_buf.reset();
    a_buf = std::make_unique<AlignedBuffer>(a_need);
  }
  float* Ap = a_buf->p;
  for (index_t ic = i0; ic < i1; ic += MC) {
    const index_t mc = std::min(MC, i1 - ic);
    pack_a(kern, mc, kc, A, ic, pc, Ap);
    if (a_sums) add_row_sums(kern, mc, kc, Ap, a_sums + ic);
    for (int g = 0; g < 2; ++g) {
      const bool acc = accumulate[g] || pc > 0;
      const float* bg = Bb + (g ? nb1 : 0) * kc * NR;
      for (index_t ir = 0; ir * MR < mc; ++ir) {
        const int m = static_cast<int>(std::min<index_t>(MR, mc - ir * MR));
        const float* ap = Ap + ir * kc * MR;
        float* c = C[g] + (ic + ir * MR) * ldc[g];
        sliver_times_panels(kern, kc, ap, bg, kc * NR, N[g], c, ldc[g], m, acc);
      }
    }
  }
}

}  // namespace

// The number of chunks of about `per` MR-row slivers (mb in all) that a team of P threads takes
// in turn from a shared counter: a multiple of P (at most mb), chunk c being the slivers
// [mb * c / n, mb * (c + 1) / n). With ceil(mb / per) chunks the counts came out uneven: S6's dx
// GEMM (134 slivers, 16 per chunk) ran 9 chunks, 5 on one thread and 4 on the other.
namespace {
index_t even_chunks(index_t mb, index_t per, int P) {
  const index_t n = ((mb + per - 1) / per + P - 1) / P * P;
  return std::max<index_t>(1, std::min(n, mb));
}
}  // namespace

void sliver_times_panels(const Kernels& kern, index_t kc, const float* ap, const float* bp,
                         index_t bstride, index_t n, float* c, index_t ldc, int m, bool acc) {
  const int NR = kern.NR;
  const index_t njr = (n + NR - 1) / NR;
  const int nlast = static_cast<int>(n - (njr - 1) * NR);
  for (index_t jr = 0; jr < njr; ++jr, bp += bstride) {
    if (jr + 2 == njr && nlast < NR) {  // the last full panel and the narrow one
      kern.gemm_micro_pair(kc, ap, bp, bp + bstride, c + jr * NR, ldc, m, nlast, acc);
      return;
    }
    kern.gemm_micro(kc, ap, bp, c + jr * NR, ldc, m, jr + 1 < njr ? NR : nlast, acc);
  }
}

void pack_b_panels(const Kernels& kern, index_t K, index_t n0, index_t n1, MatView B, float* Bp) {
  if (n1 > n0) pack_b(kern, K, n1 - n0, B, 0, n0, Bp);
}

void pack_a_slivers(const Kernels& kern, index_t m, index_t K, index_t c0, index_t c1,
                    const float* A, index_t lda, float* Ap) {
  const int MR = kern.MR;
  if (c1 <= c0) return;
  for (index_t ir = 0; ir * MR < m; ++ir) {
    const int rows = static_cast<int>(std::min<index_t>(MR, m - ir * MR));
    float* dst = Ap + (ir * K + c0) * MR;
    transpose_rows(A + ir * MR * lda + c0, lda, rows, c1 - c0, MR, dst);
    for (index_t k = 0; k < c1 - c0 && rows < MR; ++k) zero_tail(dst + k * MR, rows, MR);
  }
}

void gemm_serial(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                 float* C, index_t ldc, bool accumulate) {
  gemm_serial_bias(kern, M, N, K, A, B, C, ldc, accumulate, nullptr);
}

void gemm(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B, float* C,
          index_t ldc, bool accumulate, int nthreads, const float* bias, const float* Bpre,
          float* a_sums) {
  // A row or two: dot products over the rows of B^T (B.rs == 1), or the row times a row-major B
  // (B.cs == 1); no packing either way.
  const bool rows_of_bt = M <= 2 && B.rs == 1 && A.cs == 1 && K > 0;
  const bool row_times_b = !rows_of_bt && M <= 2 && B.cs == 1 && K > 0;
  if (a_sums && (N <= 0 || rows_of_bt || row_times_b)) {
    // no packing of A on these paths: the row sums directly, then the product without them
    for (index_t i = 0; i < M; ++i) {
      float acc = a_sums[i];
      for (index_t k = 0; k < K; ++k) acc += A.p[i * A.rs + k * A.cs];
      a_sums[i] = acc;
    }
    a_sums = nullptr;
  }
  if (M <= 0 || N <= 0) return;
  if (bias && !accumulate && (K <= 0 || rows_of_bt || row_times_b)) {
    fill_rows(M, N, bias, C, ldc);  // few rows or no depth: fill, then accumulate
    accumulate = true;
    bias = nullptr;
  }
  const double flops = 2.0 * M * N * K;
  if (row_times_b) {
    // C[i, j] over the depth blocks of the packed GEMM (kKC), each summed from zero and then
    // added: bitwise the packed path's result. Threads split the columns in blocks of 64.
    const int P = flops < 2e5 ? 1 : nthreads;
    const index_t blocks = (N + 63) / 64;
    std::vector<float> arow(A.cs == 1 ? 0 : static_cast<std::size_t>(M * K));
    for (index_t i = 0; i < M && A.cs != 1; ++i)
      for (index_t k = 0; k < K; ++k) arow[i * K + k] = A.p[i * A.rs + k * A.cs];
#if defined(_OPENMP)
#pragma omp parallel num_threads(P) if (P > 1)
#endif
    {
      const int p = team_id(), np = team_size();
      DenormalGuard ftz;
      const index_t j0 = std::min(N, blocks * p / np * 64);
      const index_t j1 = std::min(N, blocks * (p + 1) / np * 64);
      for (index_t i = 0; i < M && j1 > j0; ++i) {
        const float* a = A.cs == 1 ? A.p + i * A.rs : arow.data() + i * K;
        for (index_t pc = 0; pc < K; pc += kKC)
          kern.gemv_cols(j1 - j0, std::min(kKC, K - pc), a + pc, B.p + pc * B.rs + j0, B.rs,
                         C + i * ldc + j0, accumulate || pc > 0);
      }
    }
    return;
  }
  if (rows_of_bt) {
    // A row or two times a matrix stored as rows of B^T (e.g. x . W^T): dot products over the
    // rows, no packing. Threads split the columns in blocks of 8.
    const int P = flops < 2e5 ? 1 : nthreads;
    const index_t blocks = (N + 7) / 8;
#if defined(_OPENMP)
#pragma omp parallel num_threads(P) if (P > 1)
#endif
    {
      const int p = team_id(), np = team_size();
      DenormalGuard ftz;
      const index_t j0 = std::min(N, blocks * p / np * 8), j1 = std::min(N, blocks * (p + 1) / np * 8);
      for (index_t i = 0; i < M && j1 > j0; ++i)
        kern.gemv_rows(j1 - j0, K, B.p + j0 * B.cs, B.cs, A.p + i * A.rs, C + i * ldc + j0,
                       accumulate);
    }
    return;
  }
  const index_t nb = (N + kern.NR - 1) / kern.NR, mb = (M + kern.MR - 1) / kern.MR;
  int P = nthreads;
  if (flops < 2e5) P = 1;
  P = static_cast<int>(std::min<index_t>(P, std::max(nb, mb)));
  if (P <= 1) {
    DenormalGuard ftz;
    gemm_serial_bias(kern, M, N, K, A, B, C, ldc, accumulate, bias, Bpre, a_sums);
    return;
  }
  // Split the dimension with more micro-tiles.
  const bool split_n = nb >= P && (nb * kern.NR >= mb * kern.MR || mb < P);
  if (split_n) {  // a thread's part is a contiguous run of NR-column panels
#if defined(_OPENMP)
#pragma omp parallel num_threads(P)
#endif
    {
      const int p = team_id(), np = team_size();
      DenormalGuard ftz;
      const index_t t0 = nb * p / np, t1 = nb * (p + 1) / np;
      const index_t j0 = t0 * kern.NR, j1 = std::min(N, t1 * kern.NR);
      if (j1 > j0)
        gemm_serial_bias(kern, M, j1 - j0, K, A, MatView{B.p + j0 * B.cs, B.rs, B.cs}, C + j0,
                         ldc, accumulate, bias ? bias + j0 : nullptr,
                         Bpre ? Bpre + t0 * K * kern.NR : nullptr, p == 0 ? a_sums : nullptr);
    }
    return;
  }
  // Rows: chunks of MR-row slivers (about 8 per thread) handed out in turn from a shared
  // counter, so a core that runs slower (a shared machine's other load) takes fewer chunks
  // instead of the whole team waiting for its half. Every chunk multiplies by the same packed B
  // (packed once, together, first, in full-depth panels, into a buffer kept per calling thread;
  // or given as Bpre), which each chunk reads whole: chunks of at least 4 slivers while B fits
  // in half an L2, of 16 (192 rows at MR = 12: ~100 FLOP per byte of B) when it streams from a
  // larger cache. Chunk boundaries are multiples of MR and each element is still computed by
  // one thread in the same order, so the result does not depend on which thread took which.
  // B over 4 MiB: one chunk per thread (not packed beforehand, each packs its depth blocks
  // itself, pc outer, so a block is packed once and reused from L2 for all the thread's rows;
  // smaller chunks would stream all of such a B once each: S3 training, 2 threads, 0.96-0.97x
  // torch against 1.04-1.07x with one chunk per thread).
  const std::size_t b_floats = static_cast<std::size_t>(nb) * kern.NR * K;
  const bool big_b = b_floats > (std::size_t(1) << 20);
  const index_t min_per = 4 * b_floats <= static_cast<std::size_t>(l2_bytes()) / 2 ? 4 : 16;
  const index_t per_thread = (mb + P - 1) / P;  // never fewer chunks than threads
  const index_t per =
      big_b ? per_thread
            : std::min<index_t>(per_thread,
                                std::clamp<index_t>((mb + 8 * P - 1) / (8 * P), min_per,
                                                    std::max(min_per, mc_for(kern) / kern.MR)));
  const index_t nchunks = even_chunks(mb, per, P);
  if (!Bpre && !big_b) {
    thread_local std::unique_ptr<AlignedBuffer> shared;
    if (!shared || shared->n < b_floats) {
      shared.reset();
      shared = std::make_unique<AlignedBuffer>(b_floats);
    }
    pack_b_panels_parallel(kern, K, N, B, shared->p, P);
    Bpre = shared->p;
  }
  std::atomic<index_t> next{0};
#if defined(_OPENMP)
#pragma omp parallel num_threads(P)
#endif
  {
    DenormalGuard ftz;
    for (index_t c = next.fetch_add(1, std::memory_order_relaxed); c < nchunks;
         c = next.fetch_add(1, std::memory_order_relaxed)) {
      const index_t i0 = mb * c / nchunks * kern.MR;
      const index_t i1 = std::min(M, mb * (c + 1) / nchunks * kern.MR);
      gemm_serial_bias(kern, i1 - i0, N, K, MatView{A.p + i0 * A.rs, A.rs, A.cs}, B,
                       C + i0 * ldc, ldc, accumulate, bias, Bpre, a_sums ? a_sums + i0 : nullptr);
    }
  }
}

void gemm_packed_serial(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                        float* C, index_t ldc, const float* bias, const float* Bpre) {
  DenormalGuard ftz;
  gemm_serial_bias(kern, M, N, K, A, B, C, ldc, false, bias, Bpre);
}

void gemm_rows_serial(const Kernels& kern, index_t M, index_t N, index_t K, const float* A,
                      index_t lda, MatView B, float* C, index_t ldc, bool accumulate,
                      const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (bias && !accumulate) return fill_rows(M, N, bias, C, ldc);
    return zero_or_keep(M, N, C, ldc, accumulate);
  }
  DenormalGuard ftz;
  const int MR = kern.MR, NR = kern.NR;
  const index_t NC = nc_for(kern), kc_max = std::min(K, kKC);
  thread_local std::unique_ptr<AlignedBuffer> b_buf;  // B's depth block, kept per thread
  const std::size_t b_need = static_cast<std::size_t>(((N + NR - 1) / NR) * NR * kc_max);
  if (!b_buf || b_buf->n < b_need) {
    b_buf.reset();
    b_buf = std::make_unique<AlignedBuffer>(b_need);
  }
  float* Bp = b_buf->p;
  // The loops of gemm_serial_bias without A's blocks: the micro-tiles read A's rows in place.
  for (index_t pc = 0; pc < K; pc += kKC) {
    const index_t kc = std::min(kKC, K - pc);
    const bool acc = accumulate || pc > 0 || bias;
    const bool fill = bias && !accumulate && pc == 0;
    pack_b(kern, kc, N, B, pc, 0, Bp);
    for (index_t jc = 0; jc < N; jc += NC) {
      const index_t nc = std::min(NC, N - jc);
      const index_t njr = (nc + NR - 1) / NR;
      for (index_t ir = 0; ir * MR < M; ++ir) {
        const int m = static_cast<int>(std::min<index_t>(MR, M - ir * MR));
        const float* a = A + ir * MR * lda + pc;
        float* c = C + ir * MR * ldc + jc;
        if (fill) fill_rows(m, nc, bias + jc, c, ldc);
        const float* bp = Bp + (jc / NR) * kc * NR;
        for (index_t jr = 0; jr < njr; ++jr, bp += kc * NR) {
          const int n = static_cast<int>(std::min<index_t>(NR, nc - jr * NR));
          kern.gemm_micro_rowA(kc, a, lda, bp, c + jr * NR, ldc, m, n, acc);
        }
      }
    }
  }
}

void gemm_bias2(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                float* C, index_t ldc, const float* b1, const float* b2, int nthreads,
                const float* Bpre) {
  if (!b1 && !b2) return gemm(kern, M, N, K, A, B, C, ldc, false, nthreads, nullptr, Bpre);
  const std::vector<float> bias = summed_bias(b1, b2, N);
  gemm(kern, M, N, K, A, B, C, ldc, false, nthreads, bias.data(), Bpre);
}

std::vector<float> summed_bias(const float* b1, const float* b2, index_t n) {
  std::vector<float> bias;
  if (!b1 && !b2) return bias;
  bias.resize(static_cast<std::size_t>(std::max<index_t>(n, 0)));
  for (index_t j = 0; j < n; ++j) bias[j] = (b1 ? b1[j] : 0.0f) + (b2 ? b2[j] : 0.0f);
  return bias;
}

void pack_b_panels_parallel(const Kernels& kern, index_t K, index_t N, MatView B, float* Bp,
                            int nthreads) {
  const index_t nb = (N + kern.NR - 1) / kern.NR;
  const int P = static_cast<int>(std::min<index_t>(nthreads, nb));
#if defined(_OPENMP)
#pragma omp parallel num_threads(P) if (P > 1 && K * N >= (1 << 16))
#endif
  {
    const int p = team_id(), np = team_size();
    const index_t t0 = nb * p / np, t1 = nb * (p + 1) / np;
    pack_b_panels(kern, K, t0 * kern.NR, std::min(N, t1 * kern.NR), B, Bp + t0 * K * kern.NR);
  }
}

index_t gemm_dual_packed_floats(const Kernels& kern, index_t K, index_t N1, index_t N2) {
  const index_t nb = (N1 + kern.NR - 1) / kern.NR + (N2 + kern.NR - 1) / kern.NR;
  return 2 * std::min(std::max<index_t>(K, 1), kKC) * nb * kern.NR;  // two depth blocks
}

bool gemm_dual_fits(const Kernels& kern, index_t N1, index_t N2, int share) {
  const index_t nb = (N1 + kern.NR - 1) / kern.NR + (N2 + kern.NR - 1) / kern.NR;
  return nb * kern.NR * kKC * static_cast<index_t>(sizeof(float)) <= l2_bytes() / share;
}

index_t gemm_dual_scratch_floats(const Kernels& kern, index_t K, index_t N1, index_t N2,
                                 int share) {
  return gemm_dual_fits(kern, N1, N2, share) ? gemm_dual_packed_floats(kern, K, N1, N2) : 0;
}

void gemm_dual(const Kernels& kern, index_t M, index_t K, MatView A, index_t N1,
               const RowSource& B1, float* C1, index_t ldc1, bool acc1, index_t N2,
               const RowSource& B2, float* C2, index_t ldc2, bool acc2, float* Bp,
               int nthreads, float* a_sums) {
  if (M <= 0) return;
  const int MR = kern.MR, NR = kern.NR;
  const index_t nb1 = (N1 + NR - 1) / NR, nb = nb1 + (N2 + NR - 1) / NR;
  if (K <= 0) {  // no depth: the products are zero
    zero_or_keep(M, N1, C1, ldc1, acc1);
    zero_or_keep(M, N2, C2, ldc2, acc2);
    return;
  }
  const index_t N[2] = {N1, N2}, ldc[2] = {ldc1, ldc2};
  float* const C[2] = {C1, C2};
  const bool accumulate[2] = {acc1, acc2};
  // Panels [j0, j1) of depth block [pc, pc + kc) of both operands into Bb (B1's panels first,
  // then B2's; kc x NR floats each, zero past the last column): each source row is read once.
  auto pack_block = [&](index_t pc, index_t kc, index_t j0, index_t j1, float* Bb) {
    for (index_t j = j0; j < j1; ++j) {
      const bool first = j < nb1;
      const RowSource& src = first ? B1 : B2;
      const index_t c0 = (first ? j : j - nb1) * NR;
      const int cols = static_cast<int>(std::min<index_t>(NR, N[first ? 0 : 1] - c0));
      float* d = Bb + j * kc * NR;
      for (index_t k = 0; k < kc; ++k) {
        const float* row = src.row(pc + k);
        float* dk = d + k * NR;
        if (row)
          copy_row(dk, row + c0, cols);
        else
          std::memset(dk, 0, cols * sizeof(float));
        zero_tail(dk, cols, NR);
      }
    }
  };
  const double flops = 2.0 * M * (N1 + N2) * K;
  const index_t mb = (M + MR - 1) / MR;
  const int P = flops < 2e5 ? 1 : static_cast<int>(std::min<index_t>(nthreads, mb));
  const index_t blk = std::min(K, kKC) * nb * NR;  // floats of one packed depth block
  if (P <= 1) {
    DenormalGuard ftz;
    for (index_t pc = 0; pc < K; pc += kKC) {
      const index_t kc = std::min(kKC, K - pc);
      pack_block(pc, kc, 0, nb, Bp);
      gemm_dual_rows(kern, 0, M, pc, kc, A, Bp, nb1, N, C, ldc, accumulate, a_sums);
    }
    return;
  }
  // Per depth block: the threads pack its panels together (into one of two buffers, so the next
  // block's packing never overwrites one still in use: one barrier per block), then each thread
  // multiplies its own rows, the same ones in every block: its rows of C stay in its own cache
  // across the blocks (taking chunks from a shared counter per block moved them between the
  // cores; in-process A/B, training, 2 threads: S6 0.986x the time, (100, 32, 128, 128)
  // 0.982x, S4 0.987x). Every element is still reduced over the blocks in order by one thread:
  // bitwise the same at any thread count.
  const index_t nblocks = (K + kKC - 1) / kKC;
#if defined(_OPENMP)
#pragma omp parallel num_threads(P)
#endif
  {
    DenormalGuard ftz;
    const int p = team_id(), np = team_size();
    const index_t i0 = mb * p / np * MR, i1 = std::min(M, mb * (p + 1) / np * MR);
    for (index_t b = 0; b < nblocks; ++b) {
      const index_t pc = b * kKC, kc = std::min(kKC, K - pc);
      float* Bb = Bp + (b & 1) * blk;
      pack_block(pc, kc, nb * p / np, nb * (p + 1) / np, Bb);
#if defined(_OPENMP)
#pragma omp barrier
#endif
      if (i1 > i0) gemm_dual_rows(kern, i0, i1, pc, kc, A, Bb, nb1, N, C, ldc, accumulate, a_sums);
    }
  }
}

}  // namespace lstm_fast
