// The scalar GRU / RNN pointwise kernels: plain loops, no intrinsics, written to be read. The
// fallback for every ISA and the oracle the SIMD versions are tested against. Also holds
// cell_kernels_for(), the one place that matches this table to the active `Kernels`.
#include <cmath>
#include <cstring>

#include "cells/pointwise.h"

namespace lstm_fast {
namespace {

inline float sigmoid1(float x) { return 1.0f / (1.0f + std::exp(-x)); }

void gru_fwd(index_t rows, index_t H, index_t u0, index_t u1, float* h_out, float* gates_out,
             float* hwn_out, const float* xp, const float* hw_raw, const float* b_hh,
             const float* h_prev) {
  const index_t G = 3 * H;
  for (index_t b = 0; b < rows; ++b)
    for (index_t u = u0; u < u1; ++u) {
      const float* x = xp + b * G;
      const float* hw = hw_raw + b * G;
      const float hr = hw[u] + (b_hh ? b_hh[u] : 0.0f);
      const float hz = hw[H + u] + (b_hh ? b_hh[H + u] : 0.0f);
      const float hn = hw[2 * H + u] + (b_hh ? b_hh[2 * H + u] : 0.0f);
      const float r = sigmoid1(x[u] + hr);                 // reset gate
      const float z = sigmoid1(x[H + u] + hz);             // update gate
      const float n = std::tanh(x[2 * H + u] + r * hn);    // candidate: b_hn inside r * (.)
      const float hp = h_prev[b * H + u];
      h_out[b * H + u] = (1.0f - z) * n + z * hp;          // h' = (1 - z) n + z h
      if (gates_out) {
        float* g = gates_out + b * G;
        g[u] = r;
        g[H + u] = z;
        g[2 * H + u] = n;
      }
      if (hwn_out) hwn_out[b * H + u] = hn;
    }
}

void gru_bwd(index_t rows, index_t H, index_t u0, index_t u1, float* dxw, float* dhw,
             float* dh_next, const float* dy, const float* gates, const float* hwn,
             const float* h_prev) {
  const index_t G = 3 * H;
  for (index_t b = 0; b < rows; ++b)
    for (index_t u = u0; u < u1; ++u) {
      const float* g = gates + b * G;
      const float r = g[u], z = g[H + u], n = g[2 * H + u];
      const float dh = dh_next[b * H + u] + (dy ? dy[b * H + u] : 0.0f);
      // Derivatives from the saved outputs: sigma' = s(1-s), tanh' = 1-t^2.
      const float dn = dh * (1.0f - z) * (1.0f - n * n);
      const float dz = dh * (h_prev[b * H + u] - n) * z * (1.0f - z);
      const float dr = dn * hwn[b * H + u] * r * (1.0f - r);
      dxw[b * G + u] = dr;
      dxw[b * G + H + u] = dz;
      dxw[b * G + 2 * H + u] = dn;
      dhw[b * G + u] = dr;
      dhw[b * G + H + u] = dz;
      dhw[b * G + 2 * H + u] = dn * r;
      dh_next[b * H + u] = dh * z;
    }
}

void rnn_fwd(index_t rows, index_t H, index_t u0, index_t u1, float* a, bool relu) {
  for (index_t b = 0; b < rows; ++b)
    for (index_t u = u0; u < u1; ++u) {
      float& v = a[b * H + u];
      v = relu ? (v > 0.0f ? v : (v == v ? 0.0f : v)) : std::tanh(v);
    }
}

void rnn_bwd(index_t rows, index_t H, index_t u0, index_t u1, float* da, const float* dh_next,
             const float* dy, const float* y, bool relu) {
  for (index_t b = 0; b < rows; ++b)
    for (index_t u = u0; u < u1; ++u) {
      const index_t j = b * H + u;
      const float dh = dh_next[j] + (dy ? dy[j] : 0.0f);
      // relu: 0 where the output is <= 0, dh elsewhere (also at a NaN output, as PyTorch's)
      da[j] = relu ? (y[j] <= 0.0f ? 0.0f : dh) : dh * (1.0f - y[j] * y[j]);
    }
}

const CellKernels kTable = {"scalar", gru_fwd, gru_bwd, rnn_fwd, rnn_bwd};

}  // namespace

const CellKernels& cell_kernels_scalar() { return kTable; }

const CellKernels& cell_kernels_for(const Kernels& kern) {
  if (std::strcmp(kern.name, "generic") == 0) return cell_kernels_generic();
#if defined(LSTM_FAST_X86)
  if (std::strcmp(kern.name, "avx2") == 0) return cell_kernels_avx2();
  if (std::strcmp(kern.name, "avx512") == 0) return cell_kernels_avx512();
#endif
  return kTable;
}

}  // namespace lstm_fast
