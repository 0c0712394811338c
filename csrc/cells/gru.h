// GRU, one layer, one direction, float32 (PyTorch's maths and gate order r, z, n, with b_hn
// inside the reset product). Shapes in the legend of shapes.h (G = 3H). Also declares the pieces
// the GRU and vanilla-RNN cores share (schedule, packing, the per-step recurrent product).
#pragma once

#include "cells/pointwise.h"
#include "dispatch.h"
#include "kernels.h"

namespace lstm_fast {

struct CellSizes {
  index_t T, B, I, H;
};

// Variable lengths (batch_sizes) as in lstm.h: rows sorted by length, longest first; step t
// computes only rows [0, batch_sizes[t]); y is zero for the other rows; h_n is each row's state
// after its last real step; the padding of x is never read.

index_t gru_forward_workspace_size(const Kernels& kern, const CellSizes& s, bool training);

// Forward over the sequence. Inference when gates == hwn == nullptr; training when both are
// given: post-activation gates r, z, n and hw_n = h W_hn^T + b_hn are kept for backward.
// h0 may be null (zeros); b_ih, b_hh may be null (no bias).
void gru_forward(float* y,            // (T, B, H)
                 float* h_n,          // (B, H)
                 float* gates,        // (T, B, 3H) or null
                 float* hwn,          // (T, B, H) or null
                 const float* x,      // (T, B, I)
                 const float* h0,     // (B, H) or null
                 const float* W_ih,   // (3H, I)
                 const float* W_hh,   // (3H, H)
                 const float* b_ih,   // (3H) or null
                 const float* b_hh,   // (3H) or null
                 const CellSizes& s,
                 const index_t* batch_sizes,  // (T) non-increasing, or null
                 float* workspace, const Kernels& kern, int nthreads);

index_t gru_backward_workspace_size(const Kernels& kern, const CellSizes& s);

// Backward (BPTT) from a training forward. dx, dh0 are overwritten; dW_ih, dW_hh, db_ih, db_hh
// are accumulated into (+=); db_ih / db_hh may be null. dy, dh_n may be null (zero).
void gru_backward(float* dx,           // (T, B, I)
                  float* dh0,          // (B, H)
                  float* dW_ih,        // (3H, I)
                  float* dW_hh,        // (3H, H)
                  float* db_ih,        // (3H) or null
                  float* db_hh,        // (3H) or null
                  const float* dy,     // (T, B, H) or null
                  const float* dh_n,   // (B, H) or null
                  const float* x,      // (T, B, I)
                  const float* h0,     // (B, H) or null
                  const float* W_ih,   // (3H, I)
                  const float* W_hh,   // (3H, H)
                  const float* y,      // (T, B, H)
                  const float* gates,  // (T, B, 3H)
                  const float* hwn,    // (T, B, H)
                  const CellSizes& s,
                  const index_t* batch_sizes,  // (T) as given to the forward, or null
                  float* workspace, const Kernels& kern, int nthreads);

// ---- shared by gru.cpp and rnn.cpp --------------------------------------------------------------
namespace cell_detail {

// How the recurrence is spread over the threads, for a gate width G (same cost model as the
// LSTM's; LSTM_FAST_SCHEDULE / _set_schedule force one).
Schedule choose_schedule(const Kernels& kern, const CellSizes& s, index_t G, int nthreads);

// NR-wide column panels of the H x H blocks of W_hh^T, one set per gate:
// Wp[q][panel j][k][c] = W_hh[q*H + j*NR + c, k]; floats: gates * panels(H) * H * NR.
index_t num_panels(const Kernels& kern, index_t H);
void pack_gate_panels(const Kernels& kern, index_t H, int gates, const float* W_hh, float* Wp,
                      int nthreads);

// C[r, q*H + cols] (= or +=) A[r, :] . W_hh[q*H + cols, :]^T for rows [r0, r1), every gate q,
// and the columns of panels [j0, j1). A (rows, H) leading dim H; C leading dim gates*H.
void recurrent_product(const Kernels& kern, index_t H, int gates, index_t r0, index_t r1,
                       index_t j0, index_t j1, const float* A, const float* Wp, float* C,
                       bool accumulate);

// dh[r, cols] += dz[r, :] . W_hh[:, cols] for rows [r0, r1) and panels [j0, j1) (columns of H);
// Wb = W_hh (G x H) packed by pack_b_panels. dz leading dim G, dh leading dim H.
void recurrent_product_back(const Kernels& kern, index_t H, index_t G, index_t r0, index_t r1,
                            index_t j0, index_t j1, const float* dz, const float* Wb, float* dh,
                            bool accumulate);

// xp[r] = biases + x[r] . W_ih^T for every step's active rows (bias pointers may be null).
void input_projection(const Kernels& kern, const CellSizes& s, index_t G, const float* x,
                      const float* W_ih, const float* b1, const float* b2, float* xp,
                      const index_t* bs, int nthreads);

// y's padding rows zeroed; h_n[b] = y at row b's last real step (h_init without one).
void zero_padding(float* y, const CellSizes& s, const index_t* bs);
void final_state(float* h_n, const float* y, const float* h_init, const CellSizes& s,
                 const index_t* bs);

// Large products after a backward loop, for one gate-gradient matrix dz (T*B, G):
// dx (=, unless null) dz . W_ih; dW_ih += dz^T x; dW_hh += dz^T h_prev (h0, then y);
// db += column sums. Padding rows of dz are zero; x's padding is never read.
void backward_products(const Kernels& kern, const CellSizes& s, index_t G, const float* dz,
                       float* dx, bool dx_accumulate, float* dW_ih, float* dW_hh, float* db,
                       const float* x, const float* h0, const float* W_ih, const float* y,
                       const index_t* bs, int nthreads);

// Team helpers (no-ops without OpenMP).
int team_id();
int team_size();

}  // namespace cell_detail
}  // namespace lstm_fast
