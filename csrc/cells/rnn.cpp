#include "cells/rnn.h"

#include <algorithm>
#include <cstring>

#include "cells/packed.h"
#include "cells/team.h"
#include "gemm/gemm.h"

namespace lstm_fast {

using namespace cell_detail;

namespace {
// Few rows in all (unpacked_forward, team.h): the weights' rows are read in place (dot
// products, kernel gemm_nt, as the LSTM's and GRU's), packing would cost more.
bool use_unpacked(const CellSizes& s) { return unpacked_forward(s.T, s.B, s.H); }
}  // namespace

index_t rnn_forward_workspace_size(const Kernels& kern, const CellSizes& s, bool lengths) {
  const index_t xg = lengths ? s.T * s.B * s.I : 0;  // x's active rows, packed
  return num_panels(kern, s.H) * s.H * kern.NR + s.B * s.H + xg + 64;
}

void rnn_forward(float* y, float* h_n, const float* x, const float* h0, const float* W_ih,
                 const float* W_hh, const float* b_ih, const float* b_hh, bool relu,
                 const CellSizes& s, const index_t* bs, float* workspace, const Kernels& kern,
                 int nthreads) {
  const index_t T = s.T, B = s.B, H = s.H;
  if (B == 0 || H == 0) return;
  if (T == 0) {
    for (index_t j = 0; j < B * H; ++j) h_n[j] = h0 ? h0[j] : 0.0f;
    return;
  }
  if (bs && !has_padding(bs, T, B)) bs = nullptr;  // every row active: the packed layout is dense
  const CellKernels& ck = cell_kernels_for(kern);
  const bool unpacked = use_unpacked(s);
  const index_t nbj = num_panels(kern, H);
  float* Wp = workspace;                  // packed W_hh^T panels
  float* zeros = Wp + nbj * H * kern.NR;  // (B, H)
  float* xg = zeros + B * H;              // (T*B, I) with batch_sizes: x's active rows, packed
  if (!h0) std::memset(zeros, 0, B * H * sizeof(float));
  const float* h_init = h0 ? h0 : zeros;
  const index_t rows_1 = bs ? bs[0] : B;  // a single step's active rows
  if (T == 1 && !unpacked && rows_1 >= kOneStepRnnRows &&
      one_step_weights(H, s.I, H, kOneStepRnnBytes)) {
    // One step of many rows: y = b_ih + b_hh + x . W_ih^T + h0 . W_hh^T from GEMMs over the
    // threads' units (team.h, one_step_columns), then each thread's activation of its units.
    const index_t rows = rows_1;
    zero_padding(y, s, bs);
    const std::vector<float> bias = summed_bias(b_ih, b_hh, H);  // as gemm_bias2 sums them
    const int P = one_step_threads(rows, H, s.I, H, h0 != nullptr, nthreads);
    run_column_team(P, H, kern.NR, [&](int, int, index_t u0, index_t u1) {
      one_step_columns(kern, rows, rows, H, s.I, H, u0, u1, x, h0, W_ih, W_hh,
                       bias.empty() ? nullptr : bias.data(), y, nullptr);
      if (u1 > u0 && rows > 0) ck.rnn_fwd(rows, H, u0, u1, y, relu);
      if (!bs) copy_columns(rows, H, u0, u1, y, h_n);  // every row's last step is this one
    });
    if (bs) final_state(h_n, y, h_init, s, bs);
    return;
  }
  // y starts as the hoisted input projection x . W_ih^T + b_ih + b_hh (zero on padding rows);
  // each step adds h_prev . W_hh^T and applies the activation in place. With batch_sizes the
  // projection lands packed at y's start and is then spread to its rows.
  // Unpacked: each thread projects its own units in the team region below.
  if (!unpacked) {
    input_projection(kern, s, H, x, W_ih, b_ih, b_hh, y, bs, xg, nthreads);
    if (bs) unpack_steps_in_place(y, H, B, bs, T);
  } else {
    zero_padding(y, s, bs);
  }

  Schedule sched = choose_schedule(kern, s, H, nthreads);
  if (unpacked) {
    sched = H > 8 && unpacked_forward_threads(H, s.I, H, T, B, nthreads) > 1 ? Schedule::kUnits
                                                                             : Schedule::kSerial;
  }
  const int P = sched == Schedule::kSerial ? 1 : nthreads;
  if (!unpacked) pack_gate_panels(kern, H, 1, W_hh, Wp, P);

  StepBarrier step_barrier;
  run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    const index_t ublk = unpacked ? 8 : kern.NR;
    const index_t nblk = (H + ublk - 1) / ublk;
    index_t r0 = 0, r1 = B, j0 = 0, j1 = nblk;
    if (sched == Schedule::kUnits) {
      j0 = nblk * p / np;
      j1 = nblk * (p + 1) / np;
    }
    const index_t u0 = std::min(H, j0 * ublk), u1 = std::min(H, j1 * ublk);
    if (unpacked && u1 > u0) {
      // The input projection of this thread's units, every step's active rows: b_ih + b_hh,
      // then += x . W_ih^T (dot products over W_ih's rows, as step_forward sums them).
      for (index_t t = 0; t < T; ++t) {
        const index_t rows = bs ? bs[t] : B;
        float* yt = y + t * B * H;
        for (index_t r = 0; r < rows; ++r)
          for (index_t u = u0; u < u1; ++u)
            yt[r * H + u] = (b_ih ? b_ih[u] : 0.0f) + (b_hh ? b_hh[u] : 0.0f);
        if (rows > 0)
          kern.gemm_nt(rows, u1 - u0, s.I, x + t * B * s.I, s.I, W_ih + u0 * s.I, s.I, yt + u0,
                       H);
      }
    }
    // Batch split: rows are independent (no barrier), re-balanced every kBalanceSteps steps
    // with batch_sizes (row tiles of MR).
    const bool rebalance = sched == Schedule::kBatch && bs && np > 1;
    const index_t seg = rebalance ? kBalanceSteps : T;
    for (index_t t = 0; t < T; ++t) {
      if (sched == Schedule::kBatch && t % seg == 0) {
        const index_t t2 = std::min(T, t + seg);
        // Rows changing hands: their h_prev must be written first.
        const index_t grain = row_tile_grain(kern.MR);
        if (rebalance && t > 0 && split_changes(bs, t - seg, t, t, t2, B, grain, np)) {
          team_barrier();
        }
        balanced_rows(bs, t, t2, B, grain, p, np, &r0, &r1);
      }
      const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * H;
      const index_t re = bs ? std::min(r1, bs[t]) : r1;
      float* a = y + t * B * H;
      if (re > r0 && u1 > u0) {
        if (unpacked) {  // rows four at a time against W_hh's rows
          kern.gemm_nt(re - r0, u1 - u0, H, h_prev + r0 * H, H, W_hh + u0 * H, H,
                       a + r0 * H + u0, H);
        } else {
          recurrent_product(kern, H, 1, r0, re, j0, j1, h_prev, Wp, a, true);
        }
        ck.rnn_fwd(re - r0, H, u0, u1, a + r0 * H, relu);
      }
      if (sched == Schedule::kUnits && np > 1 && t + 1 < T) {
        team_barrier();  // h_t complete before step t + 1 (the region's end joins after the last)
      }
    }
  });
  final_state(h_n, y, h_init, s, bs);
}

index_t rnn_backward_workspace_size(const Kernels& kern, const CellSizes& s, bool lengths) {
  const index_t hp = lengths ? s.T * s.B * s.H : 0;  // packed h_prev rows for dW_hh
  // the unpacked path's rows of x and h_prev (rnn_backward_unpacked)
  const index_t rows = s.T * s.B <= kUnpackedBackwardRows ? s.T * s.B * (s.I + s.H) : 0;
  return s.T * s.B * s.H + num_panels(kern, s.H) * kern.NR * s.H + hp +
         backward_dual_floats(kern, s) + rows + 64;
}

namespace {
// rnn_backward for few rows in all (unpacked_backward, team.h), as gru_backward_unpacked:
// threads own slices of the hidden units for the pointwise step and dh_next = da_t . W_hh
// (W_hh's rows in place, recurrent_product_back's depth blocks), then unpacked_grads.
void rnn_backward_unpacked(float* dx, float* dh0, float* dW_ih, float* dW_hh, float* db_ih,
                           float* db_hh, const float* dy, const float* x, const float* h0,
                           const float* W_ih, const float* W_hh, const float* y, bool relu,
                           const CellSizes& s, const index_t* bs, float* workspace,
                           const Kernels& kern, int nthreads, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H;
  const CellKernels& ck = cell_kernels_for(kern);
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B, n0 = bs ? bs[0] : B;
  // Workspace: da (N, H) packed rows with batch_sizes; x's rows (N, I); h_prev's rows (N, H).
  float* da = workspace;
  float* xr = da + T * B * H;
  float* hr = xr + T * B * I;
  if (bs) pack_steps(xr, x, I, B, bs, 0, T, 1);  // never read x's padding
  index_t h_skip = 0;
  const float* hp = unpacked_h_prev(hr, h0, y, T, B, H, bs, nullptr, &h_skip);
  // dW_hh as backward_products sums it: one block (its gemm_dual), else h0's rows first.
  const bool dual = backward_dual_floats(kern, s) > 0;
  UnpackedGrads g{};
  g.set_rows(T, B, I, H, H, bs, N);
  g.set_operands(da, da, bs ? xr : x, hp, h_skip, h0 && !dual && N > n0 ? n0 : 0);
  g.set_outputs(W_ih, need_dx ? dx : nullptr, dW_ih, dW_hh, db_ih, db_hh, fresh);
  run_unpacked_backward(kern, g, nthreads, W_hh, dh0, false,
                        [&](int, index_t t, index_t rows, index_t off, index_t u0, index_t u1) {
                          ck.rnn_bwd(rows, H, u0, u1, da + off * H, dh0,
                                     dy ? dy + t * B * H : nullptr, y + t * B * H, relu);
                        });
}
}  // namespace

void rnn_backward(float* dx, float* dh0, float* dW_ih, float* dW_hh, float* db_ih, float* db_hh,
                  const float* dy, const float* dh_n, const float* x, const float* h0,
                  const float* W_ih, const float* W_hh, const float* y, bool relu,
                  const CellSizes& s, const index_t* bs, float* workspace, const Kernels& kern,
                  int nthreads, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H;
  const bool unpacked = unpacked_backward(T, B) && B > 0 && H > 0 && T > 0;
  // (the packed path's backward_products writes fresh gradients; with nothing to compute,
  // the early returns below, they are zeroed here)
  fresh = start_fresh_grads(fresh, B == 0 || H == 0 || T == 0, H, I, H, dW_ih, dW_hh, db_ih,
                            db_hh);
  if (B == 0 || H == 0) {
    if (need_dx && T * B * I > 0) std::memset(dx, 0, T * B * I * sizeof(float));
    return;
  }
  for (index_t j = 0; j < B * H; ++j) dh0[j] = dh_n ? dh_n[j] : 0.0f;  // running dh_next
  if (T == 0) return;
  if (bs && !has_padding(bs, T, B)) bs = nullptr;  // as in the forward: dense layout
  if (unpacked)
    return rnn_backward_unpacked(dx, dh0, dW_ih, dW_hh, db_ih, db_hh, dy, x, h0, W_ih, W_hh, y,
                                 relu, s, bs, workspace, kern, nthreads, need_dx, fresh);
  const CellKernels& ck = cell_kernels_for(kern);
  const index_t nbj = num_panels(kern, H);
  // With batch_sizes da holds packed rows (N in all).
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B;
  float* da = workspace;         // (N, H): gradients of the pre-activations
  float* Wb = da + T * B * H;    // W_hh (H x H) packed as the B operand of da_t . W_hh
  float* hp = Wb + nbj * kern.NR * H;  // (N, H) with batch_sizes: packed h_prev rows
  // backward_products's gemm_dual scratch, when reserved (backward_dual_floats)
  float* dual = backward_dual_floats(kern, s) > 0 ? hp + (bs ? T * B * H : 0) : nullptr;
  const Schedule sched = choose_schedule(kern, s, H, nthreads);
  const int P = sched == Schedule::kSerial ? 1 : nthreads;
  // One step of many rows with large weights (as the forward's): the pointwise step, then
  // dh0 = da . W_hh from the GEMM instead of W_hh's panels packed whole for one product.
  const index_t rows_1 = bs ? bs[0] : B;  // a single step's active rows
  const bool one_step =
      T == 1 && rows_1 >= kOneStepRnnRows && one_step_weights(H, I, H, kOneStepRnnBytes);
  if (one_step) {
    const int P1 = one_step_threads(rows_1, H, H, 0, false, nthreads);
    run_row_team(P1, rows_1, [&](index_t r0, index_t r1) {
      ck.rnn_bwd(r1 - r0, H, 0, H, da + r0 * H, dh0 + r0 * H, dy ? dy + r0 * H : nullptr,
                 y + r0 * H, relu);
    });
    gemm(kern, rows_1, H, H, MatView{da, H, 1}, MatView{W_hh, H, 1}, dh0, H, false, nthreads);
  } else {
    pack_b_panels(kern, H, 0, H, MatView{W_hh, H, 1}, Wb);
  }

  StepBarrier step_barrier;
  if (!one_step) run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    index_t r0 = 0, r1 = B, j0 = 0, j1 = nbj;
    if (sched == Schedule::kUnits) {
      j0 = nbj * p / np;
      j1 = nbj * (p + 1) / np;
    }
    const index_t u0 = std::min(H, j0 * kern.NR), u1 = std::min(H, j1 * kern.NR);
    index_t off = N;  // packed row of step t's row 0 (after the decrement below)
    // Batch split: rows are independent (no barrier), re-balanced every kBalanceSteps steps
    // with batch_sizes (row tiles of MR).
    const bool rebalance = sched == Schedule::kBatch && bs && np > 1;
    const index_t seg = rebalance ? kBalanceSteps : T;
    for (index_t t = T - 1; t >= 0; --t) {
      if (sched == Schedule::kBatch && (T - 1 - t) % seg == 0) {
        const index_t s0 = std::max<index_t>(0, t + 1 - seg), s2 = std::min(T, t + 1 + seg);
        // Rows changing hands: their dh_next must be written first.
        const index_t grain = row_tile_grain(kern.MR);
        if (rebalance && t < T - 1 && split_changes(bs, t + 1, s2, s0, t + 1, B, grain, np)) {
          team_barrier();
        }
        balanced_rows(bs, s0, t + 1, B, grain, p, np, &r0, &r1);
      }
      off -= bs ? bs[t] : B;
      const index_t re = bs ? std::min(r1, bs[t]) : r1;
      if (re > r0 && u1 > u0)
        ck.rnn_bwd(re - r0, H, u0, u1, da + (off + r0) * H, dh0 + r0 * H,
                   dy ? dy + (t * B + r0) * H : nullptr, y + (t * B + r0) * H, relu);
      if (sched == Schedule::kUnits && np > 1) {
        team_barrier();
      }
      // dh_next[:, my columns] = da_t . W_hh[:, my columns] (rows past re pass through).
      if (re > r0) recurrent_product_back(kern, H, H, r0, re, j0, j1, da + off * H, Wb, dh0, false);
    }
  });
  // both biases enter the same pre-activation: the same column sums for each
  backward_products(kern, s, H, da, dx, dW_ih, dW_hh, db_ih, x, h0, W_ih, y, bs, hp, nthreads,
                    db_hh, need_dx, dual, fresh);
}

}  // namespace lstm_fast
