// The scalar kernels: plain loops, no intrinsics, written to be read. They are the fallback for
// every ISA and the oracle the SIMD kernels are tested against (LSTM_FAST_ISA=scalar).
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace lstm_fast {
namespace {

constexpr int kW = 4;   // hidden units per packed W_hh panel
constexpr int kMR = 4;  // GEMM micro-tile rows
constexpr int kNR = 4;  // GEMM micro-tile columns

inline float sigmoid1(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// C = (or +=) A . B for one micro-tile; A is reached through a(r, k), B is packed K x NR.
template <class GetA>
void micro_tile(index_t K, GetA a, const float* Bp, float* C, index_t ldc, int m, int n,
                bool accumulate) {
  float acc[kMR][kNR] = {};
  for (index_t k = 0; k < K; ++k)
    for (int r = 0; r < kMR; ++r)
      for (int j = 0; j < kNR; ++j) acc[r][j] += a(r, k) * Bp[k * kNR + j];
  for (int r = 0; r < m; ++r)
    for (int j = 0; j < n; ++j) C[r * ldc + j] = accumulate ? C[r * ldc + j] + acc[r][j] : acc[r][j];
}

void gemm_micro(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc, int m, int n,
                bool accumulate) {
  micro_tile(K, [&](int r, index_t k) { return Ap[k * kMR + r]; }, Bp, C, ldc, m, n, accumulate);
}

void gemm_micro_pair(index_t K, const float* Ap, const float* Bp, const float* Bp2, float* C,
                     index_t ldc, int m, int n2, bool accumulate) {
  gemm_micro(K, Ap, Bp, C, ldc, m, kNR, accumulate);
  gemm_micro(K, Ap, Bp2, C + kNR, ldc, m, n2, accumulate);
}

void gemm_micro_rowA(index_t K, const float* A, index_t lda, const float* Bp, float* C,
                     index_t ldc, int m, int n, bool accumulate) {
  // Rows past m are never read (they may not exist): they contribute zeros.
  micro_tile(K, [&](int r, index_t k) { return r < m ? A[r * lda + k] : 0.0f; }, Bp, C, ldc, m, n,
             accumulate);
}

void gemv_panel(index_t K, const float* a, const float* Bp, float* C, int n, bool accumulate) {
  for (int j = 0; j < n; ++j) {
    float acc = 0.0f;
    for (index_t k = 0; k < K; ++k) acc += a[k] * Bp[k * kNR + j];
    C[j] = accumulate ? C[j] + acc : acc;
  }
}

void gemv_rows(index_t N, index_t K, const float* Wm, index_t ldw, const float* x, float* y,
               bool accumulate) {
  for (index_t n = 0; n < N; ++n) {
    float acc = 0.0f;
    for (index_t k = 0; k < K; ++k) acc += Wm[n * ldw + k] * x[k];
    y[n] = accumulate ? y[n] + acc : acc;
  }
}

void gemv_cols(index_t N, index_t K, const float* a, const float* B, index_t ldb, float* y,
               bool accumulate) {
  for (index_t j = 0; j < N; ++j) {
    float acc = 0.0f;
    for (index_t k = 0; k < K; ++k) acc += a[k] * B[k * ldb + j];
    y[j] = accumulate ? y[j] + acc : acc;
  }
}

void gemm_nt(index_t M, index_t N, index_t K, const float* A, index_t lda, const float* Wm,
             index_t ldw, float* C, index_t ldc) {
  for (index_t m = 0; m < M; ++m) gemv_rows(N, K, Wm, ldw, A + m * lda, C + m * ldc, true);
}

void gemm_rows_b(index_t M, index_t N, index_t K, const float* A, index_t ars, index_t acs,
                 const float* B, index_t ldb, float* C, index_t ldc, bool accumulate) {
  for (index_t m = 0; m < M; ++m)
    for (index_t j = 0; j < N; ++j) {
      float acc = 0.0f;  // the micro-kernel's sum: from zero, k ascending
      for (index_t k = 0; k < K; ++k) acc += A[m * ars + k * acs] * B[k * ldb + j];
      C[m * ldc + j] = accumulate ? C[m * ldc + j] + acc : acc;
    }
}

void lstm_fwd_rows(index_t rows, index_t H, index_t K, index_t ub0, index_t ub1, float* h_out,
                   index_t ldh, float* c_out, float* gates_out, const float* h_prev,
                   index_t ldh_prev, const float* c_prev, const float* xp, const float* Wp) {
  const index_t G = 4 * H;
  for (index_t b = 0; b < rows; ++b) {
    for (index_t ub = ub0; ub < ub1; ++ub) {
      // Pre-activations of the four gates of units ub*W .. ub*W+W-1: z = h_prev . W_hh^T.
      // The panel is [k][q][w], or for a last block of n < W units packed densely
      // [k][q * n + w] with nv * W floats per k (lstm_dense_tail_vectors).
      const float* panel = Wp + ub * K * 4 * kW;
      const int nv = lstm_dense_tail_vectors(kW, H, ub);
      const index_t n = nv ? H - ub * kW : kW;
      const index_t ld = nv ? nv * kW : 4 * kW;
      float z[4][kW] = {};
      for (index_t k = 0; k < K; ++k) {
        const float hk = h_prev[b * ldh_prev + k];
        for (int q = 0; q < 4; ++q)
          for (index_t w = 0; w < n; ++w) z[q][w] += hk * panel[k * ld + q * n + w];
      }
      for (int w = 0; w < kW; ++w) {
        const index_t u = ub * kW + w;
        if (u >= H) break;  // padding lanes of the last block
        const float i = sigmoid1(z[0][w] + xp[b * G + 0 * H + u]);
        const float f = sigmoid1(z[1][w] + xp[b * G + 1 * H + u]);
        const float g = std::tanh(z[2][w] + xp[b * G + 2 * H + u]);
        const float o = sigmoid1(z[3][w] + xp[b * G + 3 * H + u]);
        const float c = f * c_prev[b * H + u] + i * g;  // c' = f*c + i*g
        c_out[b * H + u] = c;
        h_out[b * ldh + u] = o * std::tanh(c);          // h' = o*tanh(c')
        if (gates_out) {
          gates_out[b * G + 0 * H + u] = i;
          gates_out[b * G + 1 * H + u] = f;
          gates_out[b * G + 2 * H + u] = g;
          gates_out[b * G + 3 * H + u] = o;
        }
      }
    }
  }
}

void lstm_bwd_pointwise(index_t rows, index_t H, index_t u0, index_t u1, float* dz,
                        float* dc_next, const float* gates, const float* c, const float* c_prev,
                        const float* dy, const float* dh_next) {
  const index_t G = 4 * H;
  for (index_t b = 0; b < rows; ++b) {
    for (index_t u = u0; u < u1; ++u) {
      const float i = gates[b * G + u], f = gates[b * G + H + u];
      const float g = gates[b * G + 2 * H + u], o = gates[b * G + 3 * H + u];
      const float dh = (dy ? dy[b * H + u] : 0.0f) + dh_next[b * H + u];
      const float tc = std::tanh(c[b * H + u]);
      const float dc = dc_next[b * H + u] + dh * o * (1.0f - tc * tc);
      // Derivatives from the saved outputs: sigma' = y(1-y), tanh' = 1-y^2.
      dz[b * G + u] = dc * g * i * (1.0f - i);
      dz[b * G + H + u] = dc * c_prev[b * H + u] * f * (1.0f - f);
      dz[b * G + 2 * H + u] = dc * i * (1.0f - g * g);
      dz[b * G + 3 * H + u] = dh * tc * o * (1.0f - o);
      dc_next[b * H + u] = dc * f;
    }
  }
}

void sigmoid(index_t n, const float* x, float* y) {
  for (index_t j = 0; j < n; ++j) y[j] = sigmoid1(x[j]);
}
void tanh_(index_t n, const float* x, float* y) {
  for (index_t j = 0; j < n; ++j) y[j] = std::tanh(x[j]);
}

void softmax_xent(index_t rows, index_t V, float* z, const int64_t* t, float scale, double* nll) {
  for (index_t r = 0; r < rows; ++r) {
    float* zr = z + r * V;
    if (t[r] < 0) {
      for (index_t j = 0; j < V; ++j) zr[j] = 0.0f;
      nll[r] = 0.0;
      continue;
    }
    float mx = zr[0];
    for (index_t j = 0; j < V; ++j) mx = zr[j] > mx ? zr[j] : mx;
    const float zt = zr[t[r]] - mx;
    double sum = 0.0;
    for (index_t j = 0; j < V; ++j) {
      zr[j] = std::exp(zr[j] - mx);
      sum += zr[j];
    }
    nll[r] = std::log(sum) - static_cast<double>(zt);
    const float inv = static_cast<float>(1.0 / sum) * scale;
    for (index_t j = 0; j < V; ++j) zr[j] *= inv;
    zr[t[r]] -= scale;
  }
}

void adam(index_t n, float* p, float* g, float* m, float* v, const AdamCoeffs& c,
          bool zero_grad) {
  for (index_t j = 0; j < n; ++j) {
    float gj = g[j];
    if (zero_grad) g[j] = 0.0f;
    if (c.l2 != 0.0f) gj = gj + c.l2 * p[j];
    const float pj = p[j] * c.decay;
    m[j] = c.b1 * m[j] + c.one_minus_b1 * gj;
    v[j] = c.b2 * v[j] + c.one_minus_b2 * (gj * gj);
    const float den = std::sqrt(v[j]) / c.bc2_sqrt + c.eps;
    p[j] = pj - c.step * (m[j] / den);
  }
}

double sumsq(index_t n, const float* x) {
  double total = 0.0;
  for (index_t j = 0; j < n; ++j) total += static_cast<double>(x[j]) * x[j];
  return total;
}

// (no prefetch here: gemm_micro)
void gemm_micro_pf(index_t K, const float* Ap, const float* Bp, float* C, index_t ldc, int m,
                   int n, bool accumulate, const float*, index_t) {
  gemm_micro(K, Ap, Bp, C, ldc, m, n, accumulate);
}

const Kernels kTable = {"scalar",      kW,        kMR,           kNR,
                        gemm_micro,    gemm_micro_rowA,   gemv_panel, gemv_rows, gemm_nt, gemv_cols, lstm_fwd_rows,
                        lstm_bwd_pointwise, sigmoid, tanh_, softmax_xent, adam, sumsq,
                        gemm_micro_pair, gemm_rows_b, gemm_micro_pf};

}  // namespace

const Kernels& kernels_scalar() { return kTable; }

}  // namespace lstm_fast
