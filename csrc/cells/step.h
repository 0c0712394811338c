// Streaming: one time step of an LSTM / GRU / RNN layer for a few rows (real-time inference at
// batch 1), straight from the row-major weights (GEMV over their rows: nothing is packed, so
// nothing depends on a previous call). Threads own slices of hidden units for the whole step
// (input and recurrent products and the epilogue of their units): no barrier.
#pragma once

#include "kernels.h"

namespace lstm_fast {

enum class StepCell { kLSTM, kGRU, kRNNTanh, kRNNRelu };

// Floats of workspace step_forward needs: (B, 2G).
index_t step_workspace_size(StepCell cell, index_t B, index_t H);

// h_out (and c_out for the LSTM) from x (B, I), h (B, H), c (B, H). Outputs must not alias
// inputs; c, c_out are ignored except for the LSTM; biases may be null.
void step_forward(StepCell cell,
                  float* h_out,        // (B, H)
                  float* c_out,        // (B, H) LSTM
                  const float* x,      // (B, I)
                  const float* h,      // (B, H)
                  const float* c,      // (B, H) LSTM
                  const float* W_ih,   // (G, I)
                  const float* W_hh,   // (G, H)
                  const float* b_ih,   // (G) or null
                  const float* b_hh,   // (G) or null
                  index_t B, index_t I, index_t H, float* workspace, const Kernels& kern,
                  int nthreads);

}  // namespace lstm_fast
