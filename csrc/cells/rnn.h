// Elman RNN, one layer, one direction, float32: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),
// act = tanh or relu (PyTorch's nn.RNN). Shapes in the legend of shapes.h (G = H).
#pragma once

#include "cells/gru.h"

namespace lstm_fast {

index_t rnn_forward_workspace_size(const Kernels& kern, const CellSizes& s, bool lengths);

// Forward over the sequence. y doubles as the training cache (post-activation outputs).
// h0 may be null (zeros); b_ih, b_hh may be null. batch_sizes as in gru.h.
void rnn_forward(float* y,            // (T, B, H)
                 float* h_n,          // (B, H)
                 const float* x,      // (T, B, I)
                 const float* h0,     // (B, H) or null
                 const float* W_ih,   // (H, I)
                 const float* W_hh,   // (H, H)
                 const float* b_ih,   // (H) or null
                 const float* b_hh,   // (H) or null
                 bool relu, const CellSizes& s,
                 const index_t* batch_sizes,  // (T) non-increasing, or null
                 float* workspace, const Kernels& kern, int nthreads);

index_t rnn_backward_workspace_size(const Kernels& kern, const CellSizes& s, bool lengths);

// Backward (BPTT). dx, dh0 overwritten; dW_ih, dW_hh, db_ih, db_hh accumulated (+=).
void rnn_backward(float* dx,          // (T, B, I)
                  float* dh0,         // (B, H)
                  float* dW_ih,       // (H, I)
                  float* dW_hh,       // (H, H)
                  float* db_ih,       // (H) or null
                  float* db_hh,       // (H) or null
                  const float* dy,    // (T, B, H) or null
                  const float* dh_n,  // (B, H) or null
                  const float* x,     // (T, B, I)
                  const float* h0,    // (B, H) or null
                  const float* W_ih,  // (H, I)
                  const float* W_hh,  // (H, H)
                  const float* y,     // (T, B, H)
                  bool relu, const CellSizes& s,
                  const index_t* batch_sizes,  // (T) as given to the forward, or null
                  float* workspace, const Kernels& kern, int nthreads,
                  bool need_dx = true,  // false: dx is scratch, not written with the gradient
                  unsigned fresh = 0);  // bits: dW_ih, dW_hh, db_ih, db_hh hold nothing yet
// fresh: those gradients are written (=) instead of accumulated (+=); their contents on entry
// are never read (as lstm_backward's).

}  // namespace lstm_fast
