#include "gemm/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "dispatch.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {
namespace {

constexpr index_t kKC = 256;  // depth of a packed block: an MR x KC sliver of A stays in L1

index_t mc_for(const Kernels& k) { return k.MR * std::max<index_t>(1, 144 / k.MR); }
index_t nc_for(const Kernels& k) { return k.NR * std::max<index_t>(1, 3072 / k.NR); }

struct AlignedBuffer {
  float* p = nullptr;
  explicit AlignedBuffer(std::size_t n) {
    std::size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    p = static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64));
    if (!p) throw std::bad_alloc();
  }
  ~AlignedBuffer() { std::free(p); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
};

// Ap[(ir * kc + k) * MR + r] = A(i0 + ir*MR + r, p0 + k), zero for rows >= i0 + mc.
void pack_a(const Kernels& kern, index_t mc, index_t kc, const MatView& A, index_t i0, index_t p0,
            float* Ap) {
  const int MR = kern.MR;
  for (index_t ir = 0; ir * MR < mc; ++ir) {
    float* dst = Ap + ir * kc * MR;
    const index_t rows = std::min<index_t>(MR, mc - ir * MR);
    const float* src = A.p + (i0 + ir * MR) * A.rs + p0 * A.cs;
    if (A.rs == 1 && rows == MR) {  // column-major A (a transposed row-major matrix)
      for (index_t k = 0; k < kc; ++k) std::memcpy(dst + k * MR, src + k * A.cs, MR * sizeof(float));
    } else {
      for (index_t r = 0; r < rows; ++r) {
        const float* s = src + r * A.rs;
        for (index_t k = 0; k < kc; ++k) dst[k * MR + r] = s[k * A.cs];
      }
      for (index_t r = rows; r < MR; ++r)
        for (index_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.0f;
    }
  }
}

// Bp[(jr * kc + k) * NR + c] = B(p0 + k, j0 + jr*NR + c), zero for columns >= j0 + nc.
void pack_b(const Kernels& kern, index_t kc, index_t nc, const MatView& B, index_t p0, index_t j0,
            float* Bp) {
  const int NR = kern.NR;
  for (index_t jr = 0; jr * NR < nc; ++jr) {
    float* dst = Bp + jr * kc * NR;
    const index_t cols = std::min<index_t>(NR, nc - jr * NR);
    const float* src = B.p + p0 * B.rs + (j0 + jr * NR) * B.cs;
    if (B.cs == 1) {  // row-major B
      for (index_t k = 0; k < kc; ++k) {
        std::memcpy(dst + k * NR, src + k * B.rs, cols * sizeof(float));
        for (index_t c = cols; c < NR; ++c) dst[k * NR + c] = 0.0f;
      }
    } else {  // depth blocks of 64: the panel block being written stays in L1
      for (index_t k0 = 0; k0 < kc; k0 += 64) {
        const index_t k1 = std::min<index_t>(kc, k0 + 64);
        for (index_t c = 0; c < cols; ++c) {
          const float* s = src + c * B.cs;
          for (index_t k = k0; k < k1; ++k) dst[k * NR + c] = s[k * B.rs];
        }
        for (index_t c = cols; c < NR; ++c)
          for (index_t k = k0; k < k1; ++k) dst[k * NR + c] = 0.0f;
      }
    }
  }
}

void zero_or_keep(index_t M, index_t N, float* C, index_t ldc, bool accumulate) {
  if (accumulate) return;
  for (index_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, N * sizeof(float));
}

}  // namespace

void pack_b_panels(const Kernels& kern, index_t K, index_t n0, index_t n1, MatView B, float* Bp) {
  if (n1 > n0) pack_b(kern, K, n1 - n0, B, 0, n0, Bp);
}

void gemm_serial(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                 float* C, index_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) return zero_or_keep(M, N, C, ldc, accumulate);
  const int MR = kern.MR, NR = kern.NR;
  const index_t MC = mc_for(kern), NC = nc_for(kern);
  const index_t kc_max = std::min(K, kKC);
  const index_t mc_max = std::min(M, MC), nc_max = std::min(N, NC);
  AlignedBuffer Ap(((mc_max + MR - 1) / MR) * MR * kc_max);
  AlignedBuffer Bp(((nc_max + NR - 1) / NR) * NR * kc_max);
  for (index_t jc = 0; jc < N; jc += NC) {
    const index_t nc = std::min(NC, N - jc);
    for (index_t pc = 0; pc < K; pc += kKC) {
      const index_t kc = std::min(kKC, K - pc);
      const bool acc = accumulate || pc > 0;
      pack_b(kern, kc, nc, B, pc, jc, Bp.p);
      for (index_t ic = 0; ic < M; ic += MC) {
        const index_t mc = std::min(MC, M - ic);
        pack_a(kern, mc, kc, A, ic, pc, Ap.p);
        for (index_t jr = 0; jr * NR < nc; ++jr) {
          const int n = static_cast<int>(std::min<index_t>(NR, nc - jr * NR));
          const float* bp = Bp.p + jr * kc * NR;
          for (index_t ir = 0; ir * MR < mc; ++ir) {
            const int m = static_cast<int>(std::min<index_t>(MR, mc - ir * MR));
            kern.gemm_micro(kc, Ap.p + ir * kc * MR, bp, C + (ic + ir * MR) * ldc + jc + jr * NR,
                            ldc, m, n, acc);
          }
        }
      }
    }
  }
}

void gemm(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B, float* C,
          index_t ldc, bool accumulate, int nthreads) {
  if (M <= 0 || N <= 0) return;
  const double flops = 2.0 * M * N * K;
  if (M <= 2 && B.rs == 1 && A.cs == 1 && K > 0) {
    // A row or two times a matrix stored as rows of B^T (e.g. x . W^T): dot products over the
    // rows, no packing. Threads split the columns in blocks of 8.
    const int P = flops < 2e5 ? 1 : nthreads;
    const index_t blocks = (N + 7) / 8;
#if defined(_OPENMP)
#pragma omp parallel num_threads(P) if (P > 1)
#endif
    {
#if defined(_OPENMP)
      const int p = omp_get_thread_num(), np = omp_get_num_threads();
#else
      const int p = 0, np = 1;
#endif
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
    gemm_serial(kern, M, N, K, A, B, C, ldc, accumulate);
    return;
  }
  // Split the dimension with more micro-tiles; a thread's part is a contiguous run of tiles.
  const bool split_n = nb >= P && (nb * kern.NR >= mb * kern.MR || mb < P);
#if defined(_OPENMP)
#pragma omp parallel num_threads(P)
#endif
  {
#if defined(_OPENMP)
    const int p = omp_get_thread_num(), np = omp_get_num_threads();
#else
    const int p = 0, np = 1;
#endif
    DenormalGuard ftz;
    const index_t tiles = split_n ? nb : mb;
    const index_t t0 = tiles * p / np, t1 = tiles * (p + 1) / np;
    if (split_n) {
      const index_t j0 = t0 * kern.NR, j1 = std::min(N, t1 * kern.NR);
      if (j1 > j0)
        gemm_serial(kern, M, j1 - j0, K, A, MatView{B.p + j0 * B.cs, B.rs, B.cs}, C + j0, ldc,
                    accumulate);
    } else {
      const index_t i0 = t0 * kern.MR, i1 = std::min(M, t1 * kern.MR);
      if (i1 > i0)
        gemm_serial(kern, i1 - i0, N, K, MatView{A.p + i0 * A.rs, A.rs, A.cs}, B, C + i0 * ldc,
                    ldc, accumulate);
    }
  }
}

}  // namespace lstm_fast
