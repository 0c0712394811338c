// LSTM, one layer, one direction, float32. Shapes in the legend of shapes.h; PyTorch's gate
// order (i, f, g, o) and weight layout.
#pragma once

#include <cstdint>

#include "dispatch.h"
#include "kernels.h"

namespace lstm_fast {

struct LstmSizes {
  index_t T, B, I, H;
};

// How the recurrence of one call is spread over the threads (see choose_schedule in lstm.cpp).
Schedule lstm_choose_schedule(const Kernels& kern, const LstmSizes& s, int nthreads,
                              const index_t* batch_sizes = nullptr, bool backward = false);
const char* schedule_name(Schedule s);

// Floats of workspace lstm_forward needs (training: the gates cache holds the input projection;
// lengths: batch_sizes will be given).
index_t lstm_forward_workspace_size(const Kernels& kern, const LstmSizes& s, bool training,
                                    bool lengths, int nthreads);

// Variable lengths: with batch_sizes, rows are sorted by length (longest first) and step t
// computes only rows [0, batch_sizes[t]) (PackedSequence's layout): y is zero for the other
// rows, h_n / c_n hold each row's state after its last real step, and no arithmetic is spent on
// the padding in the step loop or the input projection. The training gates cache then holds
// packed rows (packed.h: step t's active rows follow step t-1's; rows past sum(batch_sizes) are
// unused); y, cells, dx stay (T, B, .) with zero padding rows.
//
// Forward over the sequence. Inference when gates == cells == nullptr; training when both are
// given (post-activation gates and cell states are kept for backward).
// h0, c0 may be null (zeros); b_ih, b_hh may be null (no bias).
void lstm_forward(float* y,            // (T, B, H)
                  float* h_n,          // (B, H)
                  float* c_n,          // (B, H)
                  float* gates,        // (T, B, 4H) or null; packed rows with batch_sizes
                  float* cells,        // (T, B, H) or null
                  const float* x,      // (T, B, I)
                  const float* h0,     // (B, H) or null
                  const float* c0,     // (B, H) or null
                  const float* W_ih,   // (4H, I)
                  const float* W_hh,   // (4H, H)
                  const float* b_ih,   // (4H) or null
                  const float* b_hh,   // (4H) or null
                  const LstmSizes& s,
                  const index_t* batch_sizes,  // (T) non-increasing, or null: all B rows
                  float* workspace, const Kernels& kern, int nthreads,
                  const int64_t* ids = nullptr,  // (T, B) token ids, or null
                  const float* table = nullptr,  // (V, 4H)
                  const int64_t* order = nullptr);  // (B) with batch_sizes, or null
// With ids (and table, no batch_sizes), the input is an embedding lookup: the input projection
// of row r is table[ids[r]] (table = E . W_ih^T + b_ih + b_hh, one row per token of the
// vocabulary, made once per call by the caller with lstm_embedding_table) -- a gather instead of
// a GEMM over every token; x, W_ih and the biases are not read.
// With order (batch_sizes given; a permutation of [0, B)), the rows of x and y are in the
// caller's batch order: row r of the sorted batch is their row order[r] (PyTorch's
// sorted_indices). x's rows are sorted by the packing copy of the active rows and y's rows
// written in place after each step; h0, c0, h_n, c_n and the caches stay sorted.

// The table of an embedding input (lstm_forward's ids): table[v] = b_ih + b_hh + E[v] . W_ih^T
// for v < V, each row bitwise what lstm_forward computes as the input projection of a row
// x = E[v] of a problem of sizes s, on whichever path it takes for s (any thread count and
// schedule). b_ih, b_hh may be null.
void lstm_embedding_table(float* table,       // (V, 4H)
                          const float* E,     // (V, I)
                          const float* W_ih,  // (4H, I)
                          const float* b_ih,  // (4H) or null
                          const float* b_hh,  // (4H) or null
                          const LstmSizes& s, index_t V, const Kernels& kern, int nthreads);

index_t lstm_backward_workspace_size(const Kernels& kern, const LstmSizes& s, bool lengths,
                                     int nthreads);

// Backward (BPTT) from a training forward. dx, dh0, dc0 are overwritten; dW_ih, dW_hh, db_ih,
// db_hh are accumulated into (+=); db_ih / db_hh may be null (no bias).
// dy, dh_n, dc_n may be null (zero upstream gradient).
void lstm_backward(float* dx,           // (T, B, I)
                   float* dh0,          // (B, H)
                   float* dc0,          // (B, H)
                   float* dW_ih,        // (4H, I)
                   float* dW_hh,        // (4H, H)
                   float* db_ih,        // (4H) or null
                   float* db_hh,        // (4H) or null
                   const float* dy,     // (T, B, H) or null
                   const float* dh_n,   // (B, H) or null
                   const float* dc_n,   // (B, H) or null
                   const float* x,      // (T, B, I)
                   const float* h0,     // (B, H) or null
                   const float* c0,     // (B, H) or null
                   const float* W_ih,   // (4H, I)
                   const float* W_hh,   // (4H, H)
                   const float* y,      // (T, B, H)
                   const float* gates,  // (T, B, 4H), packed rows with batch_sizes
                   const float* cells,  // (T, B, H)
                   const LstmSizes& s,
                   const index_t* batch_sizes,  // (T) as given to the forward, or null
                   float* workspace, const Kernels& kern, int nthreads,
                   const int64_t* ids = nullptr,  // (T, B), as given to the forward
                   index_t V = 0, const float* E = nullptr, float* dE = nullptr,
                   float* S = nullptr,
                   const int64_t* order = nullptr,  // (B) as given to the forward, or null
                   bool need_dx = true,
                   unsigned fresh = 0);  // bits: dW_ih, dW_hh, db_ih, db_hh hold nothing yet
// fresh: those gradients are written (=) instead of accumulated (+=); their contents on entry
// are never read (e.g. just allocated), and they are written in full whatever the shape.
// With ids (the forward's embedding input; no batch_sizes): the input gradient goes to the
// embedding table instead of dx (not written, may be null). dZ's rows are first summed per token
// into S (V, 4H, scratch), then dW_ih += S^T . E and dE += S . W_ih (V rows, not T*B), and the
// bias gradients are S's column sums. E: (V, I) the embedding weights, dE (V, I) accumulated.
// With order: x, y and dy are read, and dx written, in the caller's batch order (as in the
// forward); dh_n, dc_n, dh0, dc0 are sorted.
// need_dx = false: the input gradient is not wanted (an input that needs no gradient): the dx
// GEMM is skipped; dx must still point to (T, B, I) floats of scratch (with batch_sizes the
// packed x rows go through it), which are left undefined.

}  // namespace lstm_fast
