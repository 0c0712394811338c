#include "cells/step.h"

#include <algorithm>

#include "cells/pointwise.h"
#include "dispatch.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {

namespace {
int gates_of(StepCell cell) {
  return cell == StepCell::kLSTM ? 4 : cell == StepCell::kGRU ? 3 : 1;
}
}  // namespace

index_t step_workspace_size(StepCell cell, index_t B, index_t H) {
  return 2 * B * gates_of(cell) * H + 64;
}

void step_forward(StepCell cell, float* h_out, float* c_out, const float* x, const float* h,
                  const float* c, const float* W_ih, const float* W_hh, const float* b_ih,
                  const float* b_hh, index_t B, index_t I, index_t H, float* workspace,
                  const Kernels& kern, int nthreads) {
  const int ng = gates_of(cell);
  const index_t G = ng * H;
  const CellKernels& ck = cell_kernels_for(kern);
  float* xp = workspace;         // (B, G): x . W_ih^T + biases (+ h . W_hh^T but for the GRU)
  float* hw = xp + B * G;        // (B, G): GRU only, h . W_hh^T
  // Work split: unit blocks of the LSTM's register width W (lstm_fwd_rows works on blocks).
  const index_t blk = kern.W, nblk = (H + blk - 1) / blk;
  // (the cost estimate in double: an integer product of weights and rows could wrap)
  const double flops = static_cast<double>(G) * static_cast<double>(I + H) * B;
  const int P = nblk >= 2 ? small_call_threads(flops, nthreads) : 1;
  run_team(P, [&] {
    DenormalGuard ftz;
    const int p = team_id(), np = team_size();
    const index_t b0 = nblk * p / np, b1 = nblk * (p + 1) / np;
    const index_t u0 = std::min(H, b0 * blk), u1 = std::min(H, b1 * blk);
    if (u1 > u0) {
      // Biases, then x . W_ih^T and h . W_hh^T for this thread's units of every gate: the
      // weights are read in place (dot products over their rows, all B rows at once).
      for (index_t b = 0; b < B; ++b)
        for (int q = 0; q < ng; ++q) {
          float* dst = xp + b * G + q * H;
          for (index_t u = u0; u < u1; ++u)
            dst[u] = (b_ih ? b_ih[q * H + u] : 0.0f) +
                     (cell != StepCell::kGRU && b_hh ? b_hh[q * H + u] : 0.0f);
          if (cell == StepCell::kGRU)
            for (index_t u = u0; u < u1; ++u) hw[b * G + q * H + u] = 0.0f;
        }
      for (int q = 0; q < ng; ++q) {
        kern.gemm_nt(B, u1 - u0, I, x, I, W_ih + (q * H + u0) * I, I, xp + q * H + u0, G);
        float* rec = cell == StepCell::kGRU ? hw : xp;
        kern.gemm_nt(B, u1 - u0, H, h, H, W_hh + (q * H + u0) * H, H, rec + q * H + u0, G);
      }
      switch (cell) {
        case StepCell::kLSTM:
          kern.lstm_fwd_rows(B, H, 0, b0, b1, h_out, H, c_out, nullptr, h, H, c, xp, nullptr);
          break;
        case StepCell::kGRU:
          ck.gru_fwd(B, H, u0, u1, h_out, nullptr, nullptr, xp, hw, b_hh, h);
          break;
        default:
          for (index_t b = 0; b < B; ++b)
            for (index_t u = u0; u < u1; ++u) h_out[b * H + u] = xp[b * H + u];
          ck.rnn_fwd(B, H, u0, u1, h_out, cell == StepCell::kRNNRelu);
      }
    }
  });
}

}  // namespace lstm_fast
