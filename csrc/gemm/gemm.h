// The packed GEMM engine: C (M x N) = (or +=) op(A) . op(B), BLIS-style blocking (KC depth ->
// pack B for all columns -> MC rows -> pack A -> NC columns -> MR x NR micro-kernel of the
// active ISA; each operand packed once per call).
// Transposes are strides: element (i, j) of a matrix view is p[i * rs + j * cs], so NN, NT and
// TN are all the same call, and packing absorbs the layout.
#pragma once

#include <vector>

#include "kernels.h"

namespace lstm_fast {

// The depth of a packed block: each element of a product is the sum of its blocks in order,
// each block summed from zero (fixed: it sets the summation order). Code that reproduces a
// GEMM's result with the micro-kernels directly (lstm.cpp's dx per step) walks the same blocks.
inline constexpr index_t kGemmKC = 256;

struct MatView {
  const float* p;
  index_t rs, cs;  // row stride, column stride (in floats)
};

// Serial GEMM on the calling thread (B's packing buffer per call, A's kept per thread).
void gemm_serial(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                 float* C, index_t ldc, bool accumulate);

// Parallel GEMM: the output is split into independent blocks, never along K: columns in
// multiples of NR (one run of panels per thread), or rows in multiples of MR (chunks that the
// threads take in turn from a shared counter, so a slower core takes fewer, while B packs into
// 4 MiB; else one run of rows per thread). Each element is therefore reduced by one thread in
// the same order at any thread count and whichever thread takes it: results are bitwise
// identical.
// With bias (length N) and !accumulate: C = bias (in every row) + op(A) . op(B), the bias
// written tile by tile just before the tile's first depth block (no separate pass over C).
// Bpre: op(B) already packed by pack_b_panels (full depth K, all N columns), for a B used by
// several calls (the view B is still given: very few rows read it directly).
// a_sums (length M): a_sums[i] += sum over k of op(A)(i, k), in k order, computed from the
// blocks of A as they are packed (no pass of its own over A): e.g. a bias gradient, the column
// sums of dZ, from the GEMM dZ^T . x of the weight gradient.
void gemm(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B, float* C,
          index_t ldc, bool accumulate, int nthreads, const float* bias = nullptr,
          const float* Bpre = nullptr, float* a_sums = nullptr);

// C = bias + op(A) . op(B) (bias may be null) on the calling thread, always through the packed
// micro-tiles, also for the one or two rows gemm() computes as dot products: each element is
// bitwise what gemm() gives it in a product of more rows (Bpre as in gemm).
void gemm_packed_serial(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                        float* C, index_t ldc, const float* bias, const float* Bpre = nullptr);

// C (= or, accumulate, +=) op(A) . op(B) on the calling thread for a row-major A (row i at
// A + i * lda), with bias (and !accumulate) C = bias + op(A) . op(B) as gemm_serial_bias writes
// it: B packed per depth block, A's rows read in place by the micro-tiles (no packing of A:
// for a product whose A is small and used once, e.g. a one-step call's rows, each thread
// multiplying them by its own columns). Each element bitwise as gemm() gives it.
void gemm_rows_serial(const Kernels& kern, index_t M, index_t N, index_t K, const float* A,
                      index_t lda, MatView B, float* C, index_t ldc, bool accumulate,
                      const float* bias = nullptr);

// One row tile of a packed product: C's m rows at c (leading dimension ldc), n columns, get the
// sliver ap (kc x MR, depth block of A) times the packed panels of B that cover them (panel j
// at bp + j * bstride, kc x NR): gemm_micro per panel, the last full panel and a narrow last
// one in one gemm_micro_pair; acc: add to C, else overwrite. The GEMMs' tile loop, also for
// code that must give their results bitwise (lstm.cpp's dx rows per step).
void sliver_times_panels(const Kernels& kern, index_t kc, const float* ap, const float* bp,
                         index_t bstride, index_t n, float* c, index_t ldc, int m, bool acc);

// b1 + b2 element by element, n of each (a null one counts as zeros; empty when both are
// null): the bias gemm_bias2 adds, and what the LSTM's own projection blocks (cells/lstm.cpp)
// must add to match it bitwise.
std::vector<float> summed_bias(const float* b1, const float* b2, index_t n);

// C = b1 + b2 + op(A) . op(B), either bias may be null (then zeros): the hoisted input
// projection of every recurrent core (biases summed once, as b1[j] + b2[j]).
void gemm_bias2(const Kernels& kern, index_t M, index_t N, index_t K, MatView A, MatView B,
                float* C, index_t ldc, const float* b1, const float* b2, int nthreads,
                const float* Bpre = nullptr);

// The rows of a K-row operand, each from wherever it lies: row k is p1 + k * ld1 for k < k1,
// else p2 + (k - k1) * ld2; a null pointer stands for rows of zeros. (The previous hidden
// states of an LSTM's weight gradient: h0's B rows, then the first T - 1 steps' outputs.)
struct RowSource {
  const float* p1;
  index_t ld1, k1;
  const float* p2;
  index_t ld2;
  const float* row(index_t k) const {
    if (k < k1) return p1 ? p1 + k * ld1 : nullptr;
    return p2 ? p2 + (k - k1) * ld2 : nullptr;
  }
};

// Two products with one left operand: C1 (M x N1) = (or, acc1, +=) op(A) . B1 and C2 (M x N2)
// (+)= op(A) . B2, where B1 (K x N1) and B2 (K x N2) are given as rows (RowSource). A's blocks
// are packed once for both (an LSTM's weight gradients dW_ih = dZ^T . x and dW_hh = dZ^T . h_prev
// share dZ^T, which two gemm calls would pack twice). Depth blocks of KC rows: both operands'
// panels of a block are packed by the threads together, then the threads take chunks of
// MR-row slivers of C; each element is reduced over the blocks in order (bitwise identical at
// any thread count). Bp: gemm_dual_packed_floats(K, N1, N2) floats of scratch (two packed
// blocks). gemm_dual_fits: a packed block of both operands takes at most 1/share of L2 (the
// micro-kernel streams all its panels per sliver of A; wider operands: two gemm calls, whose
// NC blocking keeps B's part in L2). gemm_dual_scratch_floats: the scratch when it fits, else
// 0 (then two gemm calls). a_sums (length M): += the row sums of op(A), as gemm's.
index_t gemm_dual_packed_floats(const Kernels& kern, index_t K, index_t N1, index_t N2);
bool gemm_dual_fits(const Kernels& kern, index_t N1, index_t N2, int share = 2);
index_t gemm_dual_scratch_floats(const Kernels& kern, index_t K, index_t N1, index_t N2,
                                 int share = 2);
void gemm_dual(const Kernels& kern, index_t M, index_t K, MatView A, index_t N1,
               const RowSource& B1, float* C1, index_t ldc1, bool acc1, index_t N2,
               const RowSource& B2, float* C2, index_t ldc2, bool acc2, float* Bp,
               int nthreads, float* a_sums = nullptr);

// Pack the K x N matrix B (rows [0, K), columns [n0, n1)) into NR-wide panels: panel j holds
// Bp[(j * K + k) * NR + c] = B(k, n0 + j * NR + c), zero past n1. Bp holds
// ceil((n1 - n0) / NR) * K * NR floats.
void pack_b_panels(const Kernels& kern, index_t K, index_t n0, index_t n1, MatView B, float* Bp);

// dst[k * ld + r] = src[r * rs + k] for r < rows, k < kc (rows of the source become the
// interleaved lanes of a packed panel), four rows and four depths at a time on x86.
void transpose_rows(const float* src, index_t rs, int rows, index_t kc, int ld, float* dst);

// All N columns of B packed as by pack_b_panels (n0 = 0, n1 = N), threads splitting the panels.
// Bp holds ceil(N / NR) * K * NR floats.
void pack_b_panels_parallel(const Kernels& kern, index_t K, index_t N, MatView B, float* Bp,
                            int nthreads);

// Pack rows [0, m) and columns [c0, c1) of the row-major matrix A (leading dim lda) into the
// micro-kernel's MR-row slivers of full depth K: Ap[((r / MR) * K + k) * MR + r % MR] =
// A[r * lda + k]; the rows of the last sliver past m are zero. Column ranges can be packed
// separately (e.g. by different threads) into the same Ap.
void pack_a_slivers(const Kernels& kern, index_t m, index_t K, index_t c0, index_t c1,
                    const float* A, index_t lda, float* Ap);

// A per-step product's loop over the B chunks of the panels it streams (the recurrent weights,
// which at S2's sizes come from L3 every step): sliver s of ns runs gemm_micro over the current
// chunk, and the slivers after the first (which streams the chunk into L1 for the others)
// prefetch a share each of the chunk used next, next_floats floats at next (null: none), into
// L2 (Kernels::gemm_micro_pf); a single sliver prefetches it alone. The results are those of
// gemm_micro.
inline void micro_prefetching(const Kernels& kern, index_t kc, const float* ap, const float* bp,
                              float* c, index_t ldc, int m, int n, bool accumulate, index_t s,
                              index_t ns, const float* next, index_t next_floats) {
  index_t l0 = 0, l1 = 0;
  if (next) prefetch_share(next_floats / 16, s, ns, &l0, &l1);
  if (l1 > l0)
    return kern.gemm_micro_pf(kc, ap, bp, c, ldc, m, n, accumulate, next + l0 * 16, l1 - l0);
  kern.gemm_micro(kc, ap, bp, c, ldc, m, n, accumulate);
}

}  // namespace lstm_fast
