// The backward's unpacked path for few rows in all (unpacked_backward, team.h): the products
// read the weights' rows in place and write the weight gradients row by row, nothing packed.
#include <algorithm>
#include <atomic>
#include <cstring>

#include "cells/packed.h"
#include "cells/team.h"
#include "gemm/gemm.h"

namespace lstm_fast {

namespace {
std::atomic<bool> g_unpacked_backward{true};

// db[j] (= or +=) the sum of dz[k, j] over k < N in order, from zero, for j in [j0, j1).
void column_sums(index_t j0, index_t j1, index_t N, index_t G, const float* dz, float* db,
                 bool fresh) {
  for (index_t j = j0; j < j1; ++j) {
    float s = 0.0f;
    for (index_t k = 0; k < N; ++k) s += dz[k * G + j];
    db[j] = fresh ? s : db[j] + s;
  }
}
}  // namespace

void unpacked_weight_rows(const Kernels& kern, index_t j0, index_t j1, index_t n, index_t G,
                          index_t k0, index_t k1, const float* dz, const float* src, float* dW,
                          bool accumulate) {
  if (j1 <= j0 || n <= 0) return;
  if (k1 <= k0 && !accumulate) std::memset(dW + j0 * n, 0, (j1 - j0) * n * sizeof(float));
  for (index_t pc = k0; pc < k1; pc += kGemmKC) {
    const index_t kc = std::min(kGemmKC, k1 - pc);
    kern.gemm_rows_b(j1 - j0, n, kc, dz + pc * G + j0, 1, G, src + (pc - k0) * n, n,
                     dW + j0 * n, n, accumulate || pc > k0);
  }
}

void line_slice(index_t n, int p, int np, index_t* c0, index_t* c1) {
  const index_t blocks = (n + 15) / 16;
  *c0 = std::min(n, blocks * p / np * 16);
  *c1 = std::min(n, blocks * (p + 1) / np * 16);
}

bool unpacked_backward_enabled() { return g_unpacked_backward.load(std::memory_order_relaxed); }
void set_unpacked_backward_enabled(bool on) {
  g_unpacked_backward.store(on, std::memory_order_relaxed);
}

void rows_times_weights(const Kernels& kern, index_t rows, index_t G, index_t c0, index_t c1,
                        const float* dz, index_t ldz, const float* Wm, index_t ldw, float* out,
                        index_t ldo, bool accumulate) {
  if (rows <= 0 || c1 <= c0) return;
  for (index_t pc = 0; pc < G; pc += kGemmKC)
    kern.gemm_rows_b(rows, c1 - c0, std::min(kGemmKC, G - pc), dz + pc, ldz, 1,
                     Wm + pc * ldw + c0, ldw, out + c0, ldo, accumulate || pc > 0);
}

void unpacked_grads(const Kernels& kern, const UnpackedGrads& g, int p, int np) {
  const index_t T = g.T, B = g.B, I = g.I, H = g.H, G = g.G, N = g.N;
  // dx = dZ . W_ih, this thread's columns; rows in (T, B, I) (padding rows zero).
  if (g.dx) {
    index_t c0, c1;
    line_slice(I, p, np, &c0, &c1);
    if (c1 > c0) {
      if (!g.bs) {
        rows_times_weights(kern, N, G, c0, c1, g.dzx, G, g.W_ih, I, g.dx, I, false);
      } else {
        index_t off = 0;
        for (index_t t = 0; t < T; ++t) {
          const index_t n = g.bs[t];
          float* dxt = g.dx + t * B * I;
          for (index_t r = 0; r < B; ++r) {
            float* row = dxt + (g.order ? g.order[r] : r) * I;
            if (r >= n) {
              std::memset(row + c0, 0, (c1 - c0) * sizeof(float));
            } else if (g.order) {
              rows_times_weights(kern, 1, G, c0, c1, g.dzx + (off + r) * G, G, g.W_ih, I, row,
                                 I, false);
            }
          }
          if (!g.order)
            rows_times_weights(kern, n, G, c0, c1, g.dzx + off * G, G, g.W_ih, I, dxt, I,
                               false);
          off += n;
        }
      }
    }
  }
  // The weight gradients and the bias sums: this thread's rows of G.
  const index_t j0 = G * p / np, j1 = G * (p + 1) / np;
  unpacked_weight_rows(kern, j0, j1, I, G, 0, N, g.dzx, g.xr, g.dW_ih, !(g.fresh & 1u));
  // (no rows at all, as one step from a zero state: zeros when written, else unchanged)
  const index_t ks = std::min(g.h_skip, N);
  const index_t split = g.h_split > ks && g.h_split < N ? g.h_split : N;
  unpacked_weight_rows(kern, j0, j1, H, G, ks, split, g.dzh, g.hr, g.dW_hh, !(g.fresh & 2u));
  if (split < N)
    unpacked_weight_rows(kern, j0, j1, H, G, split, N, g.dzh, g.hr + (split - ks) * H, g.dW_hh,
                         true);
  if (g.db_ih) column_sums(j0, j1, N, G, g.dzx, g.db_ih, g.fresh & 4u);
  if (g.db_hh) {
    if (g.dzh == g.dzx && g.db_ih && (g.fresh & 12u) == 12u)  // the same sums, written
      std::memcpy(g.db_hh + j0, g.db_ih + j0, (j1 - j0) * sizeof(float));
    else
      column_sums(j0, j1, N, G, g.dzh, g.db_hh, g.fresh & 8u);
  }
}

const float* unpacked_h_prev(float* hr, const float* h0, const float* y, index_t T, index_t B,
                             index_t H, const index_t* bs, const int64_t* order,
                             index_t* h_skip) {
  const index_t n0 = bs ? bs[0] : B;
  *h_skip = h0 ? 0 : n0;
  if (!bs && T == 1) return h0;  // (null without h0: no row reaches dW_hh)
  if (!bs && !h0) return y;      // steps 1..T-1: the outputs of steps 0..T-2, in place
  float* d = hr;
  if (h0) {
    std::memcpy(d, h0, n0 * H * sizeof(float));
    d += n0 * H;
  }
  if (T > 1) {
    if (bs)
      pack_previous_steps(d, y, H, B, bs, T, 1, order);
    else
      std::memcpy(d, y, (T - 1) * B * H * sizeof(float));
  }
  return hr;
}

int unpacked_backward_threads(index_t B, index_t N, index_t G, index_t I, index_t H,
                              int nthreads) {
  const Schedule forced = schedule_override();
  if (forced == Schedule::kSerial) return 1;
  if (forced != Schedule::kAuto) return nthreads;  // (tests: every split at any size)
  // (as doubles: products of sizes could wrap)
  const double step = static_cast<double>(B) * static_cast<double>(G) * static_cast<double>(H);
  const double fma = 2.0 * static_cast<double>(N) * static_cast<double>(G) *
                     (static_cast<double>(H) + static_cast<double>(I));
  if (step < kUnpackedStepFma || fma < kUnpackedCallFma) return 1;
  return small_call_threads(fma, nthreads);
}

}  // namespace lstm_fast
