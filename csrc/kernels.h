// The per-ISA kernel table. Each ISA file (kernels_scalar.cpp, kernels_generic.cpp,
// kernels_avx2.cpp, kernels_avx512.cpp) fills one `Kernels` with its own functions; dispatch.cpp
// picks the table once at import. Kernels trust their inputs (the bindings validate).
#pragma once

#include <cstdint>

#include "shapes.h"

namespace lstm_fast {

// Coefficients of one Adam / AdamW step (PyTorch's rule, everything in float32):
//   g' = g + l2 * p                      (Adam's weight decay; l2 = 0 for AdamW)
//   p  = p * decay                       (AdamW's decoupled decay 1 - lr * wd; 1 for Adam)
//   m  = b1 * m + (1 - b1) * g'          v = b2 * v + (1 - b2) * g'^2
//   p  = p - step * m / (sqrt(v) / bc2_sqrt + eps)      step = lr / (1 - b1^t)
struct AdamCoeffs {
  float b1, b2, one_minus_b1, one_minus_b2, step, bc2_sqrt, eps, l2, decay;
};

// The packed W_hh panel of the last unit block when it holds n < W units, few enough that its
// four gates fit in at most three vectors (4n <= 3W): the gates are packed densely, [k][q*n + w]
// in NV = ceil(4n / W) vectors per k (zero-padded), instead of [k][gate q][W], so the recurrent
// product spends no FMAs on padding lanes (H = 100 at W = 16: one vector per k, not four).
// Returns NV for such a block, 0 for a block in the regular layout.
inline int lstm_dense_tail_vectors(int W, index_t H, index_t ub) {
  const index_t n = H - ub * W;
  if (n <= 0 || n >= W || 4 * n > 3 * W) return 0;
  return static_cast<int>((4 * n + W - 1) / W);
}

struct Kernels {
  const char* name;  // "scalar", "generic", "avx2", "avx512"
  int W;             // hidden units per LSTM register block (packed W_hh panel width)
  int MR, NR;        // GEMM micro-tile: MR rows x NR columns

  // C[m x n] (=, or += when accumulate) Ap . Bp over K, m <= MR, n <= NR.
  //   Ap: packed A panel, K x MR (MR values per k)       Bp: packed B panel, K x NR
  //   C: row-major with leading dimension ldc
  void (*gemm_micro)(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc, int m,
                     int n, bool accumulate);

  // Same with A unpacked and row-major: row r of A starts at A + r * lda (m <= MR rows).
  void (*gemm_micro_rowA)(index_t K, const float* A, index_t lda, const float* Bp, float* C,
                          index_t ldc, int m, int n, bool accumulate);

  // One row times a packed B panel: C[0:n] (= or +=) sum_k a[k] * Bp[k*NR + j], n <= NR. For a
  // batch of one row, where the MR-row micro-kernel would compute MR - 1 rows for nothing.
  void (*gemv_panel)(index_t K, const float* a, const float* Bp, float* C, int n,
                     bool accumulate);

  // y[n] (= or +=) sum_k Wm[n * ldw + k] * x[k] for n in [0, N): matrix-vector product over the
  // rows of a row-major matrix, without packing (for one-row problems, where packing would cost
  // more than the product). Wm (N, K) leading dim ldw, x (K), y (N).
  void (*gemv_rows)(index_t N, index_t K, const float* Wm, index_t ldw, const float* x, float* y,
                    bool accumulate);

  // C[m * ldc + n] += sum_k A[m * lda + k] * Wm[n * ldw + k] for m < M, n < N: rows of A
  // against rows of Wm (C += A . Wm^T), nothing packed. For products used once (a single step,
  // a few rows), where packing Wm would cost more than the product.
  void (*gemm_nt)(index_t M, index_t N, index_t K, const float* A, index_t lda, const float* Wm,
                  index_t ldw, float* C, index_t ldc);

  // y[j] (= or +=) sum_k a[k] * B[k * ldb + j] for j in [0, N): a row vector times a row-major
  // matrix, without packing (one-row products such as dx = dz . W_ih at batch 1, where packing
  // B would cost more than the product). The sum over k runs in ascending order from zero and is
  // then stored or added to y: as the packed micro-kernel sums one depth block, so a caller
  // that walks the same depth blocks gets the packed GEMM's result bitwise.
  void (*gemv_cols)(index_t N, index_t K, const float* a, const float* B, index_t ldb, float* y,
                    bool accumulate);

  // One fused LSTM step for `rows` rows and the unit blocks [ub0, ub1) (units ub*W .. ub*W+W-1,
  // clipped to H):
  //   z = xp + h_prev . W_hh^T (from the packed panels Wp), gates = act(z),
  //   c_out = f * c_prev + i * g,  h_out = o * tanh(c_out).
  // xp already holds x . W_ih^T + b_ih + b_hh. When gates_out is not null the post-activation
  // gates are stored there (it may alias xp). c_out may alias c_prev.
  //   h_out   (rows, H) leading dim ldh      c_out, c_prev (rows, H) leading dim H
  //   h_prev  (rows, K) leading dim ldh_prev xp, gates_out   (rows, 4H) leading dim 4H
  //   Wp      packed panels: [ub][k][gate q][W]; K = length of the recurrent input (H, or P);
  //           the last block may be packed densely (lstm_dense_tail_vectors)
  void (*lstm_fwd_rows)(index_t rows, index_t H, index_t K, index_t ub0, index_t ub1,
                        float* h_out, index_t ldh, float* c_out, float* gates_out,
                        const float* h_prev, index_t ldh_prev, const float* c_prev,
                        const float* xp, const float* Wp);

  // Backward, pointwise part of one step for `rows` rows and units [u0, u1):
  //   dh = dy + dh_next, tc = tanh(c), dc = dc_next + dh * o * (1 - tc^2)
  //   dZ = [dc*g * i(1-i), dc*c_prev * f(1-f), dc*i * (1-g^2), dh*tc * o(1-o)]
  //   dc_next <- dc * f (in place)
  //   gates (rows, 4H) post-activation; c, c_prev, dy, dh_next, dc_next (rows, H); dz (rows, 4H).
  //   dy may be null (zero upstream gradient).
  void (*lstm_bwd_pointwise)(index_t rows, index_t H, index_t u0, index_t u1, float* dz,
                             float* dc_next, const float* gates, const float* c,
                             const float* c_prev, const float* dy, const float* dh_next);

  // y = sigmoid(x), y = tanh(x) over n elements: the vector activations, exposed for tests.
  void (*sigmoid)(index_t n, const float* x, float* y);
  void (*tanh)(index_t n, const float* x, float* y);

  // Fused softmax cross-entropy over `rows` rows of z (rows, V), in place: for each row with
  // t[r] >= 0, nll[r] = log(sum_v e^(z_v - max)) - (z_t - max) (float64), and the row becomes
  // scale * (softmax(z) - onehot(t)); a row with t[r] < 0 (ignored) gets nll 0 and zeros.
  void (*softmax_xent)(index_t rows, index_t V, float* z, const int64_t* t, float scale,
                       double* nll);

  // One Adam step over n elements, in place on p, m and v (see AdamCoeffs); g is read, then
  // set to zero when zero_grad (the next step's zeroing done in the same pass).
  void (*adam)(index_t n, float* p, float* g, float* m, float* v, const AdamCoeffs& c,
               bool zero_grad);

  // sum of x[j]^2 over n elements, accumulated in float64 (for gradient norms).
  double (*sumsq)(index_t n, const float* x);

  // A full NR-column panel (B panel Bp, into C) and the next, last panel of n2 < NR columns
  // (Bp2, into C + NR) in one pass over k: the same results as two gemm_micro calls. With
  // AVX-512 a last panel of at most MR - 4 columns (N = 65: one, N = 100: four) is one
  // latency-bound FMA chain per column on its own; here its chains run between the full
  // panel's FMAs. Elsewhere (and when the registers would not hold both) two calls.
  void (*gemm_micro_pair)(index_t K, const float* Ap, const float* Bp, const float* Bp2, float* C,
                          index_t ldc, int m, int n2, bool accumulate);

  // C[m * ldc + j] (= or +=) sum_k A[m * ars + k * acs] * B[k * ldb + j] for m < M, j < N: rows
  // of A (any strides: dZ's rows, or its columns for dZ^T) times a row-major B, nothing packed.
  // For products with few rows or little depth, where packing costs more than the product: the
  // backward's dh_prev = dZ_t . W_hh and dx = dZ . W_ih at a few rows (B's rows streamed once
  // for up to four rows of A), and dW = dZ^T . h_prev at a depth of a few rows (each row of C
  // written once). Each element is summed over k in ascending order from zero, one multiply-add
  // per term as in gemm_micro, then stored or added to C: a caller that walks the packed
  // GEMM's depth blocks (kGemmKC) gets its results bitwise.
  void (*gemm_rows_b)(index_t M, index_t N, index_t K, const float* A, index_t ars, index_t acs,
                      const float* B, index_t ldb, float* C, index_t ldc, bool accumulate);

  // gemm_micro that also prefetches `lines` 64-byte lines from pf into L2, one or two per k
  // (at most 2K lines): the next chunk of a B panel, fetched by a tile that reads its own
  // chunk from L1 (micro_prefetching, gemm.h). The same results as gemm_micro. Where
  // prefetching is not used (kernels other than AVX-512), gemm_micro itself.
  void (*gemm_micro_pf)(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc,
                        int m, int n, bool accumulate, const float* pf, index_t lines);
};

// The lines [*l0, *l1) of a next chunk of `lines` cache lines that tile i of n prefetches: the
// tiles after the first share them (the first streams the current chunk for the others); a
// single tile takes them all.
inline void prefetch_share(index_t lines, index_t i, index_t n, index_t* l0, index_t* l1) {
  if (n <= 1) {
    *l0 = 0;
    *l1 = lines;
    return;
  }
  const index_t per = (lines + n - 2) / (n - 1);
  *l0 = i > 0 ? (i - 1) * per : 0;
  *l1 = i > 0 ? (*l0 + per < lines ? *l0 + per : lines) : 0;
}

const Kernels& kernels_scalar();
const Kernels& kernels_generic();
#if defined(LSTM_FAST_X86)
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
#endif

}  // namespace lstm_fast
