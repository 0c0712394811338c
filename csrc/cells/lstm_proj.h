// LSTM with a projection of the hidden state (PyTorch's proj_size), one layer, one direction,
// float32. Shapes in the legend of shapes.h (P = projection size, 0 < P < H):
//
//   z_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      W_hh (4H, P), h (B, P)
//   c_t = f * c_{t-1} + i * g,   m_t = o * tanh(c_t)       c, m (B, H)
//   h_t = m_t W_hr^T                                       W_hr (P, H), h_t (B, P) = y_t
//
// Same structure as lstm.h: the input projection is one GEMM over all rows of a chunk of steps;
// per step the fused gate tile (kern.lstm_fwd_rows with recurrent depth K = P) writes m_t and c_t,
// then the small product m_t W_hr^T gives h_t. One OpenMP region per chunk; the units schedule
// meets at two barriers per step (after the gates, after the projection), the batch schedule at
// none (threads own rows for both phases).
#pragma once

#include "cells/lstm.h"

namespace lstm_fast {

// How the recurrence of one call is spread over the threads (the same override as the LSTM's).
Schedule lstm_proj_choose_schedule(const Kernels& kern, const LstmSizes& s, index_t P,
                                   int nthreads);

index_t lstm_proj_forward_workspace_size(const Kernels& kern, const LstmSizes& s, index_t P,
                                         bool training);

// Forward over the sequence. Inference when gates == cells == m == nullptr; training when all
// three are given (post-activation gates, cell states and the pre-projection outputs m are kept
// for backward). h0, c0 may be null (zeros); b_ih, b_hh may be null (no bias). batch_sizes as in
// lstm_forward (y and m are zero on padding rows; padding of x is never read).
void lstm_proj_forward(float* y,            // (T, B, P)
                       float* h_n,          // (B, P)
                       float* c_n,          // (B, H)
                       float* gates,        // (T, B, 4H) or null
                       float* cells,        // (T, B, H) or null
                       float* m,            // (T, B, H) or null
                       const float* x,      // (T, B, I)
                       const float* h0,     // (B, P) or null
                       const float* c0,     // (B, H) or null
                       const float* W_ih,   // (4H, I)
                       const float* W_hh,   // (4H, P)
                       const float* b_ih,   // (4H) or null
                       const float* b_hh,   // (4H) or null
                       const float* W_hr,   // (P, H)
                       const LstmSizes& s, index_t P,
                       const index_t* batch_sizes,  // (T) non-increasing, or null: all B rows
                       float* workspace, const Kernels& kern, int nthreads);

index_t lstm_proj_backward_workspace_size(const Kernels& kern, const LstmSizes& s, index_t P,
                                          bool lengths);

// Backward (BPTT) from a training forward. dx, dh0, dc0 are overwritten; dW_ih, dW_hh, dW_hr,
// db_ih, db_hh are accumulated into (+=), except those marked fresh (bits 1: dW_ih, 2: dW_hh,
// 4: db_ih, 8: db_hh, 16: dW_hr), which are written (=, with no pass of zeros first);
// db_ih / db_hh may be null (no bias).
// dy, dh_n, dc_n may be null (zero upstream gradient).
void lstm_proj_backward(float* dx,           // (T, B, I)
                        float* dh0,          // (B, P)
                        float* dc0,          // (B, H)
                        float* dW_ih,        // (4H, I)
                        float* dW_hh,        // (4H, P)
                        float* dW_hr,        // (P, H)
                        float* db_ih,        // (4H) or null
                        float* db_hh,        // (4H) or null
                        const float* dy,     // (T, B, P) or null
                        const float* dh_n,   // (B, P) or null
                        const float* dc_n,   // (B, H) or null
                        const float* x,      // (T, B, I)
                        const float* h0,     // (B, P) or null
                        const float* c0,     // (B, H) or null
                        const float* W_ih,   // (4H, I)
                        const float* W_hh,   // (4H, P)
                        const float* W_hr,   // (P, H)
                        const float* y,      // (T, B, P)
                        const float* gates,  // (T, B, 4H)
                        const float* cells,  // (T, B, H)
                        const float* m,      // (T, B, H)
                        const LstmSizes& s, index_t P,
                        const index_t* batch_sizes,  // (T) as given to the forward, or null
                        float* workspace, const Kernels& kern, int nthreads,
                        bool need_dx = true,  // false: dx is not written (may be scratch)
                        unsigned fresh = 0);

}  // namespace lstm_fast
