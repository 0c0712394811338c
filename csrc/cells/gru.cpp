#include "cells/gru.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "cells/packed.h"
#include "cells/team.h"
#include "gemm/gemm.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {
namespace cell_detail {

// Depth chunk of the per-step products: 256 x NR floats of a panel stay in L1 while every row
// tile passes over them; chunks accumulate in a fixed order (results independent of threads).
constexpr index_t kKC = 256;

index_t num_panels(const Kernels& kern, index_t H) { return (H + kern.NR - 1) / kern.NR; }

Schedule choose_schedule(const Kernels& kern, const CellSizes& s, index_t G, int nthreads) {
  const Schedule forced = schedule_override();
  if (nthreads <= 1) return Schedule::kSerial;
  const index_t nbj = num_panels(kern, s.H);
  if (forced == Schedule::kUnits) return nbj >= 2 ? Schedule::kUnits : Schedule::kSerial;
  if (forced == Schedule::kBatch) return s.B >= 2 ? Schedule::kBatch : Schedule::kSerial;
  if (forced == Schedule::kSerial) return Schedule::kSerial;
  const double step_flops = 2.0 * s.B * s.H * G;
  if (step_flops < serial_step_flops(nthreads, false) && s.B < 2 * nthreads)
    return Schedule::kSerial;
  const double whh_bytes = 4.0 * G * s.H;
  const index_t batch_rows = batch_split_min_rows(whh_bytes, nthreads);
  if (batch_rows > 0 && s.B >= batch_rows) return Schedule::kBatch;
  if (nbj >= 2 * nthreads) return Schedule::kUnits;
  if (s.B >= nthreads) return Schedule::kBatch;
  if (nbj >= 2) return Schedule::kUnits;
  return Schedule::kSerial;
}

void pack_gate_panels(const Kernels& kern, index_t H, int gates, const float* W_hh, float* Wp,
                      int nthreads) {
  const index_t per_gate = num_panels(kern, H) * H * kern.NR;
  const int P = H >= 64 ? nthreads : 1;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1)
#endif
  for (int q = 0; q < gates; ++q)  // B(k, j) = W_hh[q*H + j, k]
    pack_b_panels(kern, H, 0, H, MatView{W_hh + q * H * H, 1, H}, Wp + q * per_gate);
}

namespace {
// A buffer private to the calling thread, reused across steps and calls (grown when needed):
// one step's A rows packed into MR-row slivers. Read in place, rows a multiple of 4 KiB apart
// (H or 3H floats at the usual sizes) fall into the same few L1 sets.
float* step_slab(index_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<index_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}
}  // namespace

void recurrent_product(const Kernels& kern, index_t H, int gates, index_t r0, index_t r1,
                       index_t j0, index_t j1, const float* A, const float* Wp, float* C,
                       bool accumulate) {
  const int MR = kern.MR, NR = kern.NR;
  if (r1 <= r0 || j1 <= j0) return;
  const index_t G = gates * H, per_gate = num_panels(kern, H) * H * NR;
  float* Ap = step_slab(((r1 - r0) / MR + 1) * MR * H);
  pack_a_slivers(kern, r1 - r0, H, 0, H, A + r0 * H, H, Ap);
  const index_t ns = (r1 - r0 + MR - 1) / MR;
  const bool prefetch = step_prefetch(4.0 * static_cast<double>((j1 - j0) * gates * H * NR));
  for (index_t jr = j0; jr < j1; ++jr) {
    const int n = static_cast<int>(std::min<index_t>(NR, H - jr * NR));
    for (int q = 0; q < gates; ++q) {
      const float* panel = Wp + q * per_gate + jr * H * NR;
      float* Cq = C + q * H + jr * NR;
      for (index_t k0 = 0; k0 < H; k0 += kKC) {
        const index_t kc = std::min(kKC, H - k0);
        // the chunk used next: this panel's next depth chunk, or the next gate's or panel's
        // first (none after the last)
        const float* next = nullptr;
        index_t next_floats = 0;
        if (prefetch) {
          if (k0 + kKC < H) {
            next = panel + (k0 + kKC) * NR;
            next_floats = std::min(kKC, H - k0 - kKC) * NR;
          } else if (q + 1 < gates || jr + 1 < j1) {
            next = q + 1 < gates ? panel + per_gate : Wp + (jr + 1) * H * NR;
            next_floats = std::min(kKC, H) * NR;
          }
        }
        for (index_t r = r0; r < r1; r += MR) {
          const int m = static_cast<int>(std::min<index_t>(MR, r1 - r));
          micro_prefetching(kern, kc, Ap + (((r - r0) / MR) * H + k0) * MR, panel + k0 * NR,
                            Cq + r * G, G, m, n, accumulate || k0 > 0, (r - r0) / MR, ns, next,
                            next_floats);
        }
      }
    }
  }
}

void recurrent_product_back(const Kernels& kern, index_t H, index_t G, index_t r0, index_t r1,
                            index_t j0, index_t j1, const float* dz, const float* Wb, float* dh,
                            bool accumulate) {
  const int MR = kern.MR, NR = kern.NR;
  if (r1 <= r0 || j1 <= j0) return;
  float* Ap = step_slab(((r1 - r0) / MR + 1) * MR * G);
  pack_a_slivers(kern, r1 - r0, G, 0, G, dz + r0 * G, G, Ap);
  const index_t ns = (r1 - r0 + MR - 1) / MR;
  const bool prefetch = step_prefetch(4.0 * static_cast<double>((j1 - j0) * G * NR));
  for (index_t jr = j0; jr < j1; ++jr) {
    const int n = static_cast<int>(std::min<index_t>(NR, H - jr * NR));
    for (index_t k0 = 0; k0 < G; k0 += kKC) {
      const index_t kc = std::min(kKC, G - k0);
      // the chunk used next (the panels are consecutive: the next kKC depths, or the next
      // panel's first; none after the last)
      const bool more = k0 + kKC < G || jr + 1 < j1;
      const float* next = prefetch && more ? Wb + (jr * G + k0 + kc) * NR : nullptr;
      const index_t next_floats =
          k0 + kKC < G ? std::min(kKC, G - k0 - kKC) * NR : std::min(kKC, G) * NR;
      for (index_t r = r0; r < r1; r += MR) {
        const int m = static_cast<int>(std::min<index_t>(MR, r1 - r));
        micro_prefetching(kern, kc, Ap + (((r - r0) / MR) * G + k0) * MR,
                          Wb + (jr * G + k0) * NR, dh + r * H + jr * NR, H, m, n,
                          accumulate || k0 > 0, (r - r0) / MR, ns, next, next_floats);
      }
    }
  }
}

void input_projection(const Kernels& kern, const CellSizes& s, index_t G, const float* x,
                      const float* W_ih, const float* b1, const float* b2, float* xp,
                      const index_t* bs, float* xg, int nthreads) {
  const index_t T = s.T, B = s.B, I = s.I;
  const index_t rows = bs ? packed_rows(bs, 0, T) : T * B;
  if (bs) pack_steps(xg, x, I, B, bs, 0, T, nthreads);  // only the active rows, packed
  gemm_bias2(kern, rows, G, I, MatView{bs ? xg : x, I, 1}, MatView{W_ih, 1, I}, xp, G, b1, b2,
             nthreads);
}

void zero_padding(float* y, const CellSizes& s, const index_t* bs) {
  if (!bs) return;
  for (index_t t = 0; t < s.T; ++t)
    if (bs[t] < s.B)
      std::memset(y + (t * s.B + bs[t]) * s.H, 0, (s.B - bs[t]) * s.H * sizeof(float));
}

void final_state(float* h_n, const float* y, const float* h_init, const CellSizes& s,
                 const index_t* bs) {
  const index_t T = s.T, B = s.B, H = s.H;
  for (index_t b = 0; b < B; ++b) {
    index_t len = T;
    if (bs)
      while (len > 0 && bs[len - 1] <= b) --len;
    const float* h = len ? y + ((len - 1) * B + b) * H : h_init + b * H;
    std::memcpy(h_n + b * H, h, H * sizeof(float));
  }
}

void backward_products(const Kernels& kern, const CellSizes& s, index_t G, const float* dz,
                       float* dx, float* dW_ih, float* dW_hh, float* db, const float* x,
                       const float* h0, const float* W_ih, const float* y, const index_t* bs,
                       float* hp, int nthreads, float* db2, bool need_dx, float* dual,
                       unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H;
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B;
  const index_t n0 = bs ? bs[0] : B;  // step 0's rows
  if (!db) {
    std::swap(db, db2);
    fresh = (fresh & 3u) | ((fresh & 8u) ? 4u : 0u);
  }
  bool ih_fresh = dW_ih && (fresh & 1u), hh_fresh = dW_hh && (fresh & 2u);
  // The bias gradients from the column sums: written (fresh) or added.
  auto add_sums = [&](const float* sums) {
    for (index_t j = 0; db && j < G; ++j) {
      db[j] = (fresh & 4u) ? sums[j] : db[j] + sums[j];
      if (db2) db2[j] = (fresh & 8u) ? sums[j] : db2[j] + sums[j];
    }
  };
  if (dual && dW_ih && dW_hh && (!bs || dx) && (h0 || N > n0)) {
    // Both weight gradients in one pass over dz^T (the bias sums from its packing): h_prev's
    // rows are h0's (zeros without h0), then the previous outputs (packed with batch_sizes,
    // like x's rows, which dx's storage holds first).
    std::vector<float> sums(db ? static_cast<std::size_t>(G) : 0, 0.0f);
    if (bs) {
      pack_steps(dx, x, I, B, bs, 0, T, nthreads);
      if (N > n0) pack_previous_steps(hp, y, H, B, bs, T, nthreads);
    }
    gemm_dual(kern, G, N, MatView{dz, 1, G}, I, RowSource{bs ? dx : x, I, N, nullptr, 0}, dW_ih,
              I, !ih_fresh, H, RowSource{h0, H, n0, bs ? hp : y, H}, dW_hh, H, !hh_fresh, dual,
              nthreads, sums.empty() ? nullptr : sums.data());
    if (dx && need_dx) {
      gemm(kern, N, I, G, MatView{dz, G, 1}, MatView{W_ih, I, 1}, dx, I, false, nthreads);
      if (bs) unpack_steps_in_place(dx, I, B, bs, T);
    }
    if (db) add_sums(sums.data());
    return;
  }
  // The bias gradient (dz's column sums) comes out of the dW_ih GEMM's packing of dz^T when
  // that GEMM runs, else out of the dW_hh GEMMs' (rows of step 0 first, summed directly when
  // there is no h0 to multiply them with); else a pass of its own (bias_sums).
  std::vector<float> dbs(db ? static_cast<std::size_t>(G) : 0, 0.0f);
  float* sums = dbs.empty() ? nullptr : dbs.data();
  bool summed = false;
  const bool ih = dW_ih && (!bs || dx);  // the dW_ih GEMM runs
  float* hh_sums = ih ? nullptr : sums;   // else the dW_hh GEMMs take the sums
  if (hh_sums && dW_hh && !h0)
    for (index_t r = 0; r < n0; ++r)
      for (index_t j = 0; j < G; ++j) hh_sums[j] += dz[r * G + j];
  if (!bs) {
    if (dx && need_dx)
      gemm(kern, N, I, G, MatView{dz, G, 1}, MatView{W_ih, I, 1}, dx, I, false, nthreads);
    if (dW_ih) {
      gemm(kern, G, I, N, MatView{dz, 1, G}, MatView{x, I, 1}, dW_ih, I, !ih_fresh, nthreads,
           nullptr, nullptr, sums);
      ih_fresh = false;
      summed = true;
    }
    if (dW_hh) {
      bool acc = !hh_fresh;
      h_prev_products(kern, G, H, dz, h0, B, y, (T - 1) * B, dW_hh, &acc, nthreads, hh_sums);
      hh_fresh = !acc;
      summed = summed || hh_sums != nullptr;
    }
  } else {  // never read the padding of x (it may hold anything, NaN included) or of y
    // dx's storage first holds x's active rows, packed: the operand of dW_ih; then dx itself.
    if (dx) {
      if (dW_ih) {
        pack_steps(dx, x, I, B, bs, 0, T, nthreads);
        gemm(kern, G, I, N, MatView{dz, 1, G}, MatView{dx, I, 1}, dW_ih, I, !ih_fresh, nthreads,
             nullptr, nullptr, sums);
        ih_fresh = false;
        summed = true;
      }
      if (need_dx) {
        gemm(kern, N, I, G, MatView{dz, G, 1}, MatView{W_ih, I, 1}, dx, I, false, nthreads);
        unpack_steps_in_place(dx, I, B, bs, T);
      }
    }
    if (dW_hh) {  // step 0 against h0's active rows, steps 1.. against the previous outputs
      const index_t n1 = N - bs[0];
      if (n1 > 0) pack_previous_steps(hp, y, H, B, bs, T, nthreads);
      bool acc = !hh_fresh;
      h_prev_products(kern, G, H, dz, h0, bs[0], hp, n1, dW_hh, &acc, nthreads, hh_sums);
      hh_fresh = !acc;
      summed = summed || hh_sums != nullptr;
    }
  }
  // fresh gradients no product reached (no h0 and a single step; dW_ih without dx): zeros
  if (ih_fresh) std::memset(dW_ih, 0, G * I * sizeof(float));
  if (hh_fresh) std::memset(dW_hh, 0, G * H * sizeof(float));
  if (db && summed) {
    add_sums(sums);
  } else if (db) {
    if (fresh & 4u) std::memset(db, 0, G * sizeof(float));
    if (db2 && (fresh & 8u)) std::memset(db2, 0, G * sizeof(float));
    bias_sums(N, G, dz, db, db2, nthreads);
  }
}

index_t backward_dual_floats(const Kernels& kern, const CellSizes& s) {
  // Depth blocks of at most a quarter of L2: with dz only H wide (the RNN) its packing is
  // cheap, and where the blocks took half of L2 (I = H = 512) one gemm_dual measured 1.03-1.05x
  // the time of the two GEMMs (0.94-0.97x at H = 100, 256).
  return gemm_dual_scratch_floats(kern, s.T * s.B, s.I, s.H, 4);
}

}  // namespace cell_detail

using namespace cell_detail;

namespace {
// Few rows in all (unpacked_forward, team.h): the forward reads the weights' rows in place (dot
// products, kernel gemm_nt), as the LSTM's does; packing W_hh and W_ih^T would cost more than
// the steps. T = 1, B = 16, I = 300, H = 512, 2 threads, in-process against torch.nn.GRU:
// 0.74x torch's speed packed, 2.2x unpacked; T = 5, B = 1, I = 100: 0.77x packed.
bool use_unpacked(const CellSizes& s) { return unpacked_forward(s.T, s.B, s.H, s.I, true); }

// A single step (or, as the LSTM's, two steps of at most kOneStepMaxRows rows, all active)
// past the unpacked path's rows with large weights (one_step_weights, team.h): the GEMMs of
// one_step_columns instead of W_hh packed whole for a step or two.
bool one_step_gemm(const CellSizes& s, const index_t* bs) {
  const bool steps = s.T <= kOneStepMaxT && s.B <= kOneStepMaxRows && !bs;
  return (s.T == 1 || steps) && one_step_weights(3 * s.H, s.I, s.H, kOneStepGatedBytes) &&
         !use_unpacked(s);
}

// The batch split's own-rows projection (gru_forward) runs while W_hh takes at most
// kOwnRowsMaxWhh bytes.
constexpr double kOwnRowsMaxWhh = 4.0 * (1 << 20);

// The rows a thread's projection block may take beyond its own rows of a step
// (own_proj_block_rows, team.h).
index_t own_proj_rows(const CellSizes& s, int nthreads) {
  return own_proj_block_rows(3 * s.H, s.I, s.T * s.B, nthreads);
}

// Floats of that path's buffers (0 when it cannot run): W_ih^T packed, then per-thread
// pre-activations (3H) and gathered x rows (I) of up to B + nthreads * own_proj_rows rows.
index_t own_rows_floats(const Kernels& kern, const CellSizes& s, int nthreads) {
  if (nthreads <= 1 || s.B < 2 || use_unpacked(s) || 12.0 * s.H * s.H > kOwnRowsMaxWhh)
    return 0;
  const index_t G = 3 * s.H;
  return (G + kern.NR - 1) / kern.NR * kern.NR * s.I +
         (s.B + nthreads * own_proj_rows(s, nthreads)) * (G + s.I);
}

// One thread's copy of W_hh's gate panels and W_ih^T for the batch split with its own-rows
// projection (gru_forward; private_copy_floats, team.h), or 0.
index_t own_rows_copy_floats(const Kernels& kern, const CellSizes& s, int nthreads) {
  if (own_rows_floats(kern, s, nthreads) == 0) return 0;
  const index_t G = 3 * s.H;
  return private_copy_floats(3 * num_panels(kern, s.H) * s.H * kern.NR +
                                 (G + kern.NR - 1) / kern.NR * kern.NR * s.I,
                             nthreads, s.T * s.B);
}

// One thread's copy of W_hh's panels for the backward's batch split (gru_backward), or 0.
index_t backward_copy_floats(const Kernels& kern, const CellSizes& s, int nthreads) {
  if (s.B < 2) return 0;
  return private_copy_floats(num_panels(kern, s.H) * kern.NR * 3 * s.H, nthreads, s.T * s.B);
}
}  // namespace

index_t gru_forward_workspace_size(const Kernels& kern, const CellSizes& s, bool training,
                                   bool lengths, int nthreads) {
  const index_t G = 3 * s.H;
  const index_t panels = 3 * num_panels(kern, s.H) * s.H * kern.NR;
  const index_t xg = lengths ? s.T * s.B * s.I : 0;
  const index_t copy = own_rows_copy_floats(kern, s, nthreads);
  const index_t copies = private_copies_floats(copy, nthreads);
  return panels + (training ? 0 : s.T * s.B * G) + xg + s.B * G + s.B * s.H +
         own_rows_floats(kern, s, nthreads) + copies + 64;
}

void gru_forward(float* y, float* h_n, float* gates, float* hwn, const float* x, const float* h0,
                 const float* W_ih, const float* W_hh, const float* b_ih, const float* b_hh,
                 const CellSizes& s, const index_t* bs, float* workspace, const Kernels& kern,
                 int nthreads) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 3 * H;
  const bool training = gates != nullptr;
  if (B == 0 || H == 0) return;
  if (T == 0) {
    for (index_t j = 0; j < B * H; ++j) h_n[j] = h0 ? h0[j] : 0.0f;
    return;
  }
  if (bs && !has_padding(bs, T, B)) bs = nullptr;  // every row active: the packed layout is dense
  const CellKernels& ck = cell_kernels_for(kern);
  const bool unpacked = use_unpacked(s);
  // Workspace: [packed W_hh] [xp (T*B, 3H), inference only] [x's active rows (T*B, I), with
  // batch_sizes] [hw (B, 3H)] [zeros (B, H)]. With batch_sizes xp (the training gates cache)
  // holds packed rows.
  const index_t nbj = num_panels(kern, H);
  float* Wp = workspace;
  float* xp = training ? gates : Wp + 3 * nbj * H * kern.NR;
  float* xg = (training ? Wp + 3 * nbj * H * kern.NR : xp + T * B * G);
  float* hw = xg + (bs ? T * B * I : 0);
  float* zeros = hw + B * G;
  // The batch split's own-rows projection (own_rows_floats): W_ih^T packed, pre-activations,
  // gathered x rows.
  float* Wip = zeros + B * H;
  float* xo = Wip + (G + kern.NR - 1) / kern.NR * kern.NR * I;
  const index_t extra = own_proj_rows(s, nthreads);  // a block's rows beyond a step's
  float* xgo = xo + (B + nthreads * extra) * G;
  // The other threads' copies of the packed weights on that path (own_rows_copy_floats).
  const index_t copy = own_rows_copy_floats(kern, s, nthreads);
  float* const copies = align_floats(xgo + (B + nthreads * extra) * I);
  if (!h0) std::memset(zeros, 0, B * H * sizeof(float));
  const float* h_init = h0 ? h0 : zeros;
  zero_padding(y, s, bs);
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B;
  if (bs && training) {  // unused rows of the caches: never read; keep them finite and defined
    std::memset(gates + N * G, 0, (T * B - N) * G * sizeof(float));
    zero_padding(hwn, s, bs);
  }

  if (one_step_gemm(s, bs)) {
    // One step of many rows (or two, every row active): xp = b_ih + x . W_ih^T for every
    // step's rows and per step hw = h_prev . W_hh^T from GEMMs over the threads' columns, then
    // (after the team meets) the gate maths of each thread's rows (team.h, one_step_columns).
    const index_t rows = bs ? bs[0] : B, rows_x = T == 1 ? rows : T * B;
    const int P = one_step_threads(rows_x, G, I, H, h0 != nullptr || T > 1, nthreads);
    run_column_team(P, G, kern.NR, [&](int p, int np, index_t n0, index_t n1) {
      one_step_columns(kern, rows_x, rows, G, I, H, n0, n1, x, h0, W_ih, W_hh, b_ih, xp, hw);
      const index_t r0 = rows * p / np, r1 = rows * (p + 1) / np;
      for (index_t t = 0; t < T; ++t) {
        const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * H;
        if (t > 0 && n1 > n0)
          gemm_serial(kern, B, n1 - n0, H, MatView{h_prev, H, 1}, MatView{W_hh + n0 * H, 1, H},
                      hw + n0, G, false);
        if (np > 1) team_barrier();
        float* xp_t = xp + t * B * G;
        if (r1 > r0)
          ck.gru_fwd(r1 - r0, H, 0, H, y + (t * B + r0) * H, training ? xp_t + r0 * G : nullptr,
                     training ? hwn + (t * B + r0) * H : nullptr, xp_t + r0 * G, hw + r0 * G,
                     b_hh, h_prev + r0 * H);
        if (np > 1 && t + 1 < T) team_barrier();  // h_t complete, hw read, before step t + 1
        if (!bs && t + 1 == T && r1 > r0)  // this thread's rows of h_n, while in its cache
          std::memcpy(h_n + r0 * H, y + (t * B + r0) * H, (r1 - r0) * H * sizeof(float));
      }
    });
    if (bs) final_state(h_n, y, h_init, s, bs);  // (rows of no step: their h0)
    return;
  }
  Schedule sched = choose_schedule(kern, s, G, nthreads);
  if (unpacked) {
    sched = H > 8 && unpacked_forward_threads(G, I, H, T, B, nthreads) > 1 ? Schedule::kUnits
                                                                          : Schedule::kSerial;
  }
  // With the own-rows projection below, the batch split wins from 4 rows per thread (8 when
  // W_hh is larger than a core's L2) up to 4 MiB of W_hh, as for the LSTM. In-process, 2
  // threads, Zen 4 (1 MiB L2), forward batch / units time: H = 256, B = 8 0.779, B = 16 0.770;
  // H = 512, B = 16 0.936, B = 64 (S2) 0.931; but B = 4 at H = 256 1.172.
  if (!bs && schedule_override() == Schedule::kAuto && own_rows_floats(kern, s, nthreads) > 0 &&
      s.B >= nthreads * (12.0 * H * H <= static_cast<double>(l2_cache_bytes()) ? 4 : 8))
    sched = Schedule::kBatch;
  const int P = sched == Schedule::kSerial ? 1 : nthreads;
  // The batch split: each thread projects its own rows inside its recurrence's team region, in
  // blocks of steps of own_proj_rows rows or more (a step's rows when more), as the LSTM's
  // forward does (lstm.cpp): its pre-activations are in its own cache rather than half in the
  // other core's, and W_ih^T streams through it once per block. Bitwise the shared GEMM's
  // results (the same products, each element summed in the same order).
  // (Not for one or two active rows in all: the shared GEMM computes those as dot products, in
  // another summation order than the packed micro-kernel the own rows use, and one thread must
  // give the same bits.)
  const bool own = sched == Schedule::kBatch && P > 1 && N > 2 &&
                   own_rows_floats(kern, s, nthreads) > 0;
  // Each thread packs its own copy of the weights in the team region (private_copy_floats).
  const bool own_copies = own && copy > 0;
  std::vector<float> bias;  // own: b_ih as the shared GEMM adds it (gemm_bias2: b_ih + 0)
  if (own) {
    if (!own_copies) pack_b_panels_parallel(kern, I, G, MatView{W_ih, 1, I}, Wip, nthreads);
    if (b_ih) {
      bias.resize(static_cast<std::size_t>(G));
      for (index_t j = 0; j < G; ++j) bias[j] = b_ih[j] + 0.0f;
    }
  } else if (!unpacked) {
    // Hoisted input projection: x . W_ih^T + b_ih for all steps (b_hh stays in the step: b_hn
    // is multiplied by the reset gate). Unpacked: each thread projects its own units below.
    input_projection(kern, s, G, x, W_ih, b_ih, nullptr, xp, bs, xg, nthreads);
  }
  if (!unpacked && !own_copies) pack_gate_panels(kern, H, 3, W_hh, Wp, P);

  StepBarrier step_barrier;
  run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    // This thread's packed weights: thread 0 packs the workspace's, the others their copies.
    float* const Wp_p = own_copies && p > 0 ? copies + (p - 1) * copy : Wp;
    float* const Wip_p = own_copies && p > 0 ? Wp_p + 3 * nbj * H * kern.NR : Wip;
    if (own_copies) {
      pack_gate_panels(kern, H, 3, W_hh, Wp_p, 1);
      pack_b_panels(kern, I, 0, G, MatView{W_ih, 1, I}, Wip_p);
    }
    index_t r0 = 0, r1 = B, j0 = 0, j1 = nbj;
    const index_t ublk = unpacked ? 8 : kern.NR;  // unit granularity of a thread's slice
    const index_t nblk = (H + ublk - 1) / ublk;
    if (sched == Schedule::kUnits) {
      j0 = nblk * p / np;
      j1 = nblk * (p + 1) / np;
    } else {
      j1 = nblk;
    }
    const index_t u0 = std::min(H, j0 * ublk), u1 = std::min(H, j1 * ublk);
    if (unpacked && u1 > u0) {
      // The input projection of this thread's units of every gate, all steps' active rows:
      // b_ih, then += x . W_ih^T (dot products over W_ih's rows, as step_forward sums them).
      index_t o = 0;
      for (index_t t = 0; t < T; ++t) {
        const index_t rows = bs ? bs[t] : B;
        float* xp_t = xp + o * G;
        o += rows;
        for (index_t r = 0; r < rows; ++r)
          for (int q = 0; q < 3; ++q) {
            float* dst = xp_t + r * G + q * H;
            for (index_t u = u0; u < u1; ++u) dst[u] = b_ih ? b_ih[q * H + u] : 0.0f;
          }
        if (rows > 0)
          for (int q = 0; q < 3; ++q)
            kern.gemm_nt(rows, u1 - u0, I, x + t * B * I, I, W_ih + (q * H + u0) * I, I,
                         xp_t + q * H + u0, G);
      }
    }
    index_t off = 0;  // packed row of step t's row 0
    // Batch split: rows are independent (no barrier), re-balanced every kBalanceSteps steps
    // with batch_sizes (row tiles of MR).
    const bool rebalance = sched == Schedule::kBatch && bs && np > 1;
    const index_t seg = rebalance ? kBalanceSteps : T;
    index_t blk_end = 0;    // own: the steps [.., blk_end) have their projection in xo
    float* xo_t = nullptr;  // own: this step's first row's pre-activations in xo
    for (index_t t = 0; t < T; ++t) {
      if (sched == Schedule::kBatch && t % seg == 0) {
        const index_t t2 = std::min(T, t + seg);
        // Rows changing hands: their h_prev must be written first.
        const index_t grain = row_tile_grain(kern.MR);
        if (rebalance && t > 0 && split_changes(bs, t - seg, t, t, t2, B, grain, np)) {
          team_barrier();
        }
        balanced_rows(bs, t, t2, B, grain, p, np, &r0, &r1);
        blk_end = t;
      }
      const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * H;
      const index_t re = bs ? std::min(r1, bs[t]) : r1;
      float* xp_t = xp + off * G;
      off += bs ? bs[t] : B;
      const float* xin = xp_t + r0 * G;  // this thread's first row's pre-activations
      if (own && re > r0) {
        if (t >= blk_end) {  // the projection of the next block of steps (within the segment)
          const index_t seg_end = std::min(T, (t / seg + 1) * seg);
          // this thread's rows of xo / xgo: disjoint from the other threads' (r0 increasing)
          float* xo_p = xo + (r0 + p * extra) * G;
          float* xg_p = xgo + (r0 + p * extra) * I;
          blk_end = project_rows_block(kern, x, B, I, G, bs, nullptr, t, seg_end, r0, r1,
                                       std::max(r1 - r0, extra),
                                       W_ih, bias.empty() ? nullptr : bias.data(), Wip_p,
                                       xg_p, xo_p);
          xo_t = xo_p;
        }
        xin = xo_t;
        xo_t += (re - r0) * G;
      }
      if (re > r0 && u1 > u0) {
        // hw[:, gate q, my units] = h_prev . W_hq^T (the bias is added in the epilogue).
        if (unpacked) {  // rows four at a time against W_hh's rows (gemm_nt)
          for (index_t b = r0; b < re; ++b)
            for (int q = 0; q < 3; ++q)
              std::fill(hw + b * G + q * H + u0, hw + b * G + q * H + u1, 0.0f);
          for (int q = 0; q < 3; ++q)
            kern.gemm_nt(re - r0, u1 - u0, H, h_prev + r0 * H, H, W_hh + (q * H + u0) * H, H,
                         hw + r0 * G + q * H + u0, G);
        } else {
          recurrent_product(kern, H, 3, r0, re, j0, j1, h_prev, Wp_p, hw, false);
        }
        ck.gru_fwd(re - r0, H, u0, u1, y + (t * B + r0) * H,
                   training ? xp_t + r0 * G : nullptr,
                   training ? hwn + (t * B + r0) * H : nullptr, xin, hw + r0 * G, b_hh,
                   h_prev + r0 * H);
      }
      if (sched == Schedule::kUnits && np > 1 && t + 1 < T) {
        team_barrier();  // h_t complete before step t + 1 (the region's end joins after the last)
      }
    }
  });
  final_state(h_n, y, h_init, s, bs);
}

index_t gru_backward_workspace_size(const Kernels& kern, const CellSizes& s, bool lengths,
                                    int nthreads) {
  const index_t G = 3 * s.H;
  const index_t hp = lengths ? s.T * s.B * s.H : 0;  // packed h_prev rows for dW_hh
  const index_t copy = backward_copy_floats(kern, s, nthreads);
  const index_t copies = private_copies_floats(copy, nthreads);
  // the unpacked path's rows of x and h_prev (gru_backward_unpacked)
  const index_t rows = s.T * s.B <= kUnpackedBackwardRows ? s.T * s.B * (s.I + s.H) : 0;
  return 2 * s.T * s.B * G + num_panels(kern, s.H) * kern.NR * G + s.B * s.H + hp + copies +
         rows + 64;
}

namespace {
// gru_backward for few rows in all (unpacked_backward, team.h): nothing packed. Threads own
// slices of the hidden units: the pointwise step for their units, then (after the team meets:
// the product reads every unit of dhw_t) dh_next[:, their units] += dhw_t . W_hh[:, their
// units] from W_hh's rows in place, in the depth blocks of recurrent_product_back (its bits).
// After the loop, dx, the weight gradients and the bias sums (unpacked_grads).
void gru_backward_unpacked(float* dx, float* dh0, float* dW_ih, float* dW_hh, float* db_ih,
                           float* db_hh, const float* dy, const float* x, const float* h0,
                           const float* W_ih, const float* W_hh, const float* y,
                           const float* gates, const float* hwn, const CellSizes& s,
                           const index_t* bs, float* workspace, const Kernels& kern,
                           int nthreads, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 3 * H;
  const CellKernels& ck = cell_kernels_for(kern);
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B, n0 = bs ? bs[0] : B;
  // Workspace: dxw, dhw (N, 3H) packed rows with batch_sizes; zeros (B, H); x's rows (N, I);
  // h_prev's rows (N, H).
  float* dxw = workspace;
  float* dhw = dxw + T * B * G;
  float* zeros = dhw + T * B * G;
  float* xr = zeros + B * H;
  float* hr = xr + T * B * I;
  if (!h0) std::memset(zeros, 0, B * H * sizeof(float));
  const float* h_init = h0 ? h0 : zeros;
  if (bs) pack_steps(xr, x, I, B, bs, 0, T, 1);  // never read x's padding
  index_t h_skip = 0;
  const float* hp = unpacked_h_prev(hr, h0, y, T, B, H, bs, nullptr, &h_skip);
  // dW_hh in two blocks with h0 (step 0's rows, then the later steps'), as backward_products.
  UnpackedGrads g{};
  g.set_rows(T, B, I, H, G, bs, N);
  g.set_operands(dxw, dhw, bs ? xr : x, hp, h_skip, h0 && N > n0 ? n0 : 0);
  g.set_outputs(W_ih, need_dx ? dx : nullptr, dW_ih, dW_hh, db_ih, db_hh, fresh);
  // (the step leaves dh_next = dh * z in dh0: the product adds to it)
  run_unpacked_backward(kern, g, nthreads, W_hh, dh0, true,
                        [&](int, index_t t, index_t rows, index_t off, index_t u0, index_t u1) {
                          const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * H;
                          ck.gru_bwd(rows, H, u0, u1, dxw + off * G, dhw + off * G, dh0,
                                     dy ? dy + t * B * H : nullptr, gates + off * G,
                                     hwn + t * B * H, h_prev);
                        });
}
}  // namespace

void gru_backward(float* dx, float* dh0, float* dW_ih, float* dW_hh, float* db_ih, float* db_hh,
                  const float* dy, const float* dh_n, const float* x, const float* h0,
                  const float* W_ih, const float* W_hh, const float* y, const float* gates,
                  const float* hwn, const CellSizes& s, const index_t* bs, float* workspace,
                  const Kernels& kern, int nthreads, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 3 * H;
  const bool unpacked = unpacked_backward(T, B) && B > 0 && H > 0 && T > 0;
  // (the packed path's backward_products writes fresh gradients; with nothing to compute,
  // the early returns below, they are zeroed here)
  fresh = start_fresh_grads(fresh, B == 0 || H == 0 || T == 0, G, I, H, dW_ih, dW_hh, db_ih,
                            db_hh);
  if (B == 0 || H == 0) {
    if (need_dx && T * B * I > 0) std::memset(dx, 0, T * B * I * sizeof(float));
    return;
  }
  for (index_t j = 0; j < B * H; ++j) dh0[j] = dh_n ? dh_n[j] : 0.0f;  // running dh_next
  if (T == 0) return;
  if (bs && !has_padding(bs, T, B)) bs = nullptr;  // as in the forward: dense layout
  if (unpacked)
    return gru_backward_unpacked(dx, dh0, dW_ih, dW_hh, db_ih, db_hh, dy, x, h0, W_ih, W_hh, y,
                                 gates, hwn, s, bs, workspace, kern, nthreads, need_dx, fresh);
  const CellKernels& ck = cell_kernels_for(kern);
  const index_t nbj = num_panels(kern, H);
  // With batch_sizes dxw, dhw and the gates cache hold packed rows (N in all).
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B;
  float* dxw = workspace;            // (N, 3H): gradients of x W_ih^T + b_ih
  float* dhw = dxw + T * B * G;      // (N, 3H): gradients of h W_hh^T + b_hh
  float* Wb = dhw + T * B * G;       // W_hh (3H x H) packed as the B operand of dhw_t . W_hh
  float* zeros = Wb + nbj * kern.NR * G;  // (B, H)
  float* hp = zeros + B * H;              // (N, H) with batch_sizes: packed h_prev rows
  // The other threads' copies of W_hh's panels (backward_copy_floats).
  float* const copies = align_floats(hp + (bs ? T * B * H : 0));  // (unused without copies)
  if (!h0) std::memset(zeros, 0, B * H * sizeof(float));
  const float* h_init = h0 ? h0 : zeros;
  const Schedule sched = choose_schedule(kern, s, G, nthreads);
  const int P = sched == Schedule::kSerial ? 1 : nthreads;
  // Threads owning rows each pack their own copy of the panels in the team region where the
  // copies are small (backward_copy_floats), as in the forward.
  const index_t copy = backward_copy_floats(kern, s, nthreads);
  const bool own_copies = sched == Schedule::kBatch && P > 1 && copy > 0;
  // One step of many rows with large weights (as the forward's one_step_gemm): the pointwise
  // step, then dh0 += dhw . W_hh from the GEMM (W_hh's blocks packed just before their use)
  // instead of W_hh's panels packed whole for a single product.
  const bool one_step = T == 1 && one_step_weights(G, I, H, kOneStepGatedBytes);
  if (one_step) {
    const index_t rows = bs ? bs[0] : B;
    const int P1 = one_step_threads(rows, G, H, 0, false, nthreads);
    run_row_team(P1, rows, [&](index_t r0, index_t r1) {
      ck.gru_bwd(r1 - r0, H, 0, H, dxw + r0 * G, dhw + r0 * G, dh0 + r0 * H,
                 dy ? dy + r0 * H : nullptr, gates + r0 * G, hwn + r0 * H, h_init + r0 * H);
    });
    if (rows > 0)
      gemm(kern, rows, H, G, MatView{dhw, G, 1}, MatView{W_hh, H, 1}, dh0, H, true, nthreads);
  } else if (!own_copies) {
    pack_b_panels(kern, G, 0, H, MatView{W_hh, H, 1}, Wb);
  }

  StepBarrier step_barrier;
  if (!one_step) run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    float* const Wb_p = own_copies && p > 0 ? copies + (p - 1) * copy : Wb;
    if (own_copies) pack_b_panels(kern, G, 0, H, MatView{W_hh, H, 1}, Wb_p);
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
      const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * H;
      // Pointwise for my units: dxw_t, dhw_t, and dh_next <- dh * z (rows past re pass through).
      if (re > r0 && u1 > u0)
        ck.gru_bwd(re - r0, H, u0, u1, dxw + (off + r0) * G, dhw + (off + r0) * G,
                   dh0 + r0 * H, dy ? dy + (t * B + r0) * H : nullptr, gates + (off + r0) * G,
                   hwn + (t * B + r0) * H, h_prev + r0 * H);
      if (sched == Schedule::kUnits && np > 1) {
        team_barrier();
      }
      // dh_next[:, my columns] += dhw_t . W_hh[:, my columns] (reads every thread's dhw_t).
      if (re > r0)
        recurrent_product_back(kern, H, G, r0, re, j0, j1, dhw + off * G, Wb_p, dh0, true);
    }
  });
  backward_products(kern, s, G, dxw, dx, dW_ih, nullptr, db_ih, x, h0, W_ih, y, bs, hp,
                    nthreads, nullptr, need_dx, nullptr, fresh & 5u);
  backward_products(kern, s, G, dhw, nullptr, nullptr, dW_hh, db_hh, x, h0, W_ih, y, bs, hp,
                    nthreads, nullptr, true, nullptr, (fresh & 2u) | ((fresh & 8u) ? 4u : 0u));
}

}  // namespace lstm_fast
