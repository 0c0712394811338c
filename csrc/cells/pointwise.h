// The second per-ISA kernel table: the pointwise parts of the GRU and vanilla-RNN steps,
// forward (epilogue after the recurrent product) and backward. One table per ISA file
// (pointwise_scalar.cpp, pointwise_generic.cpp, pointwise_avx2.cpp, pointwise_avx512.cpp);
// cell_kernels_for() picks the one matching the active `Kernels` by name, so both tables always
// come from the same ISA. Shapes in the legend of shapes.h; every (rows, F) array has leading
// dimension F. Kernels trust their inputs.
#pragma once

#include "kernels.h"

namespace lstm_fast {

struct CellKernels {
  const char* name;  // "scalar", "generic", "avx2", "avx512"

  // GRU forward epilogue for `rows` rows and units [u0, u1) (PyTorch's r, z, n):
  //   hw = hw_raw + b_hh,  r = sigmoid(xp_r + hw_r),  z = sigmoid(xp_z + hw_z),
  //   n = tanh(xp_n + r * hw_n),  h_out = (1 - z) * n + z * h_prev.
  // gates_out (post-activation r, z, n) may alias xp; gates_out, hwn_out may be null (inference).
  //   h_out, h_prev, hwn_out (rows, H)      xp, hw_raw, gates_out (rows, 3H)    b_hh (3H) or null
  void (*gru_fwd)(index_t rows, index_t H, index_t u0, index_t u1, float* h_out,
                  float* gates_out, float* hwn_out, const float* xp, const float* hw_raw,
                  const float* b_hh, const float* h_prev);

  // GRU backward, pointwise part of one step for `rows` rows and units [u0, u1):
  //   dh = dh_next + dy,  dn = dh (1 - z)(1 - n^2),  dz = dh (h_prev - n) z (1 - z),
  //   dr = dn hw_n r (1 - r);  dxw = [dr, dz, dn],  dhw = [dr, dz, dn * r];
  //   dh_next <- dh * z (in place: the direct path h' = ... + z h; the caller adds dhw . W_hh).
  //   dxw, dhw, gates (rows, 3H)   dh_next, dy, hwn, h_prev (rows, H); dy may be null.
  void (*gru_bwd)(index_t rows, index_t H, index_t u0, index_t u1, float* dxw, float* dhw,
                  float* dh_next, const float* dy, const float* gates, const float* hwn,
                  const float* h_prev);

  // RNN forward epilogue, in place: a = act(a) for `rows` rows and units [u0, u1).
  //   a (rows, H); relu: max(a, 0) instead of tanh.
  void (*rnn_fwd)(index_t rows, index_t H, index_t u0, index_t u1, float* a, bool relu);

  // RNN backward pointwise: da = (dh_next + dy) * act'(y), act' from the output
  // (tanh: 1 - y^2, relu: y > 0).  da, dh_next, dy, y (rows, H); dy may be null.
  void (*rnn_bwd)(index_t rows, index_t H, index_t u0, index_t u1, float* da,
                  const float* dh_next, const float* dy, const float* y, bool relu);
};

const CellKernels& cell_kernels_scalar();
const CellKernels& cell_kernels_generic();
#if defined(LSTM_FAST_X86)
const CellKernels& cell_kernels_avx2();
const CellKernels& cell_kernels_avx512();
#endif

// The table of the same ISA as `kern` (by name); the scalar one for an unknown name.
const CellKernels& cell_kernels_for(const Kernels& kern);

}  // namespace lstm_fast
