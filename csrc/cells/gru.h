// GRU, one layer, one direction, float32 (PyTorch's maths and gate order r, z, n, with b_hn
// inside the reset product). Shapes in the legend of shapes.h (G = 3H). Also declares the pieces
// the GRU and vanilla-RNN cores share (schedule, packing, the per-step recurrent product).
#pragma once

#include "cells/pointwise.h"
#include "cells/team.h"
#include "dispatch.h"
#include "kernels.h"

namespace lstm_fast {

struct CellSizes {
  index_t T, B, I, H;
};

// Variable lengths (batch_sizes) as in lstm.h: rows sorted by length, longest first; step t
// computes only rows [0, batch_sizes[t]); y is zero for the other rows; h_n is each row's state
// after its last real step; the padding of x is never read. The training gates cache then holds
// packed rows (packed.h); hwn stays (T, B, H) with zero padding rows.

// lengths: batch_sizes will be given; nthreads: the team the call will run on.
index_t gru_forward_workspace_size(const Kernels& kern, const CellSizes& s, bool training,
                                   bool lengths, int nthreads);

// Forward over the sequence. Inference when gates == hwn == nullptr; training when both are
// given: post-activation gates r, z, n and hw_n = h W_hn^T + b_hn are kept for backward.
// h0 may be null (zeros); b_ih, b_hh may be null (no bias).
void gru_forward(float* y,            // (T, B, H)
                 float* h_n,          // (B, H)
                 float* gates,        // (T, B, 3H) or null; packed rows with batch_sizes
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

index_t gru_backward_workspace_size(const Kernels& kern, const CellSizes& s, bool lengths,
                                    int nthreads);

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
                  const float* gates,  // (T, B, 3H), packed rows with batch_sizes
                  const float* hwn,    // (T, B, H)
                  const CellSizes& s,
                  const index_t* batch_sizes,  // (T) as given to the forward, or null
                  float* workspace, const Kernels& kern, int nthreads,
                  bool need_dx = true,  // false: dx is scratch, not written with the gradient
                  unsigned fresh = 0);  // bits: dW_ih, dW_hh, db_ih, db_hh hold nothing yet
// fresh: those gradients are written (=) instead of accumulated (+=); their contents on entry
// are never read (as lstm_backward's).

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

// xp[r] = biases + x[r] . W_ih^T for every step's active rows (bias pointers may be null), in
// one GEMM. With batch_sizes (some padding) xp holds the N = sum(bs) packed rows (packed.h) and
// xg (N, I) receives x's active rows first.
void input_projection(const Kernels& kern, const CellSizes& s, index_t G, const float* x,
                      const float* W_ih, const float* b1, const float* b2, float* xp,
                      const index_t* bs, float* xg, int nthreads);

// y's padding rows zeroed; h_n[b] = y at row b's last real step (h_init without one).
void zero_padding(float* y, const CellSizes& s, const index_t* bs);
void final_state(float* h_n, const float* y, const float* h_init, const CellSizes& s,
                 const index_t* bs);

// Large products after a backward loop, one GEMM each over the N active rows of a
// gate-gradient matrix dz (N, G): all T*B rows without batch_sizes, else packed rows (bs must
// then have some padding):
// dx (= unless null; zero padding rows) dz . W_ih; dW_ih += dz^T x; dW_hh += dz^T h_prev
// (h0, then y); db (and db2, when not null) += column sums, taken by the dW_ih or else the dW_hh
// GEMM while it packs dz^T (a pass of their own only when neither runs). The padding of x and y
// is never read. With batch_sizes, dW_ih needs dx (its storage first holds x's packed rows) and
// dW_hh needs hp (N, H) scratch. need_dx = false: dx is only that scratch (the dx GEMM is
// skipped). dual: backward_dual_floats(kern, s) floats of scratch, or null; with it, and both
// weight gradients to compute from the same dz (the RNN), one gemm_dual packs dz^T once for both.
// fresh (bits 1: dW_ih, 2: dW_hh, 4: db, 8: db2): those gradients are written (=), not added
// into, by their first product, and zeroed when no product reaches them (no pass of zeros
// before the GEMMs).
void backward_products(const Kernels& kern, const CellSizes& s, index_t G, const float* dz,
                       float* dx, float* dW_ih, float* dW_hh, float* db, const float* x,
                       const float* h0, const float* W_ih, const float* y, const index_t* bs,
                       float* hp, int nthreads, float* db2 = nullptr, bool need_dx = true,
                       float* dual = nullptr, unsigned fresh = 0);

// Floats of backward_products's gemm_dual scratch (0 when its depth blocks would take more than
// a quarter of L2: then two GEMMs).
index_t backward_dual_floats(const Kernels& kern, const CellSizes& s);

}  // namespace cell_detail
}  // namespace lstm_fast
