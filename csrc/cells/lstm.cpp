#include "cells/lstm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cells/packed.h"
#include "cells/team.h"
#include "gemm/gemm.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {
namespace {

// Depth chunk of the backward step product dZ_t . W_hh (256 x NR floats of panel: 16 KiB AVX2).
constexpr index_t kKCb = 256;

// The batch split with its own-rows projection (lstm_forward) is chosen only while W_hh takes at
// most this many bytes (lstm_choose_schedule).
constexpr double kOwnRowsMaxWhh = 4.0 * (1 << 20);

// Whether lstm_forward's batch split may run with each thread projecting its own rows: two rows
// or more and W_hh of at most kOwnRowsMaxWhh bytes (with more, the scheduler never splits the
// batch).
bool own_rows_possible(const LstmSizes& s) {
  return s.B >= 2 && 16.0 * s.H * s.H <= kOwnRowsMaxWhh;
}

// The rows a thread's projection block may take beyond its own rows of a step
// (own_proj_block_rows, team.h).
index_t own_proj_rows(const LstmSizes& s, int nthreads) {
  return own_proj_block_rows(4 * s.H, s.I, s.T * s.B, nthreads);
}

// Floats of that path's per-thread buffers: pre-activations (4H) and gathered x rows (I) of up
// to B + nthreads * own_proj_rows rows in all.
index_t own_projection_floats(const LstmSizes& s, int nthreads) {
  if (nthreads <= 1 || !own_rows_possible(s)) return 0;
  return (s.B + nthreads * own_proj_rows(s, nthreads)) * (4 * s.H + s.I);
}

// W_ih^T is packed once per call (by all threads) when the projection runs in more than one
// chunk of steps, or when the threads may split the batch (then each computes its own rows'
// projection, see lstm_forward); else the single GEMM packs it itself: floats of that copy.
index_t packed_w_ih_size(const Kernels& kern, const LstmSizes& s) {
  if (chunk_steps(s) >= s.T && !own_rows_possible(s)) return 0;
  return (4 * s.H + kern.NR - 1) / kern.NR * kern.NR * s.I;
}

// dst[r] = table[ids[r]] (rows of G floats) for r < rows; threads split the rows.
void gather_rows(index_t rows, index_t G, const int64_t* ids, const float* table, float* dst,
                 int nthreads) {
  const int P = rows * G >= (index_t(1) << 16) ? nthreads : 1;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1)
#endif
  for (index_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * G, table + ids[r] * G, G * sizeof(float));
}

// S[ids[r]] += dz[r] for r < rows in order (S: V rows of G floats, zeroed here first); threads
// split the columns in blocks of 64, so each element is summed by one thread in row order.
void scatter_rows(index_t rows, index_t G, index_t V, const int64_t* ids, const float* dz,
                  float* S, int nthreads) {
  const index_t blocks = (G + 63) / 64;
  const int P = rows * G >= (index_t(1) << 16) ? nthreads : 1;
  run_team(P, [&] {
    const int p = team_id(), np = team_size();
    const index_t j0 = std::min(G, blocks * p / np * 64);
    const index_t j1 = std::min(G, blocks * (p + 1) / np * 64);
    if (j1 > j0) {
      for (index_t v = 0; v < V; ++v) std::memset(S + v * G + j0, 0, (j1 - j0) * sizeof(float));
      for (index_t r = 0; r < rows; ++r) {
        float* dst = S + ids[r] * G;
        const float* src = dz + r * G;
        for (index_t j = j0; j < j1; ++j) dst[j] += src[j];
      }
    }
  });
}

// h_n, c_n: each row's state after its last real step (the last step without batch_sizes).
// With order, y's rows are in the caller's order (sorted row b is y's row order[b]).
void final_states(float* h_n, float* c_n, const float* y, const float* cells, const float* state,
                  const float* h_init, const float* c_init, const LstmSizes& s,
                  const index_t* bs, const int64_t* order = nullptr) {
  const index_t T = s.T, B = s.B, H = s.H;
  const bool training = cells != nullptr;
  for (index_t b = 0; b < B; ++b) {
    index_t len = T;
    if (bs)
      while (len > 0 && bs[len - 1] <= b) --len;
    const float* h = len ? y + ((len - 1) * B + (order ? order[b] : b)) * H : h_init + b * H;
    const float* c = !training ? state + b * H
                     : len     ? cells + ((len - 1) * B + b) * H
                               : c_init + b * H;
    std::memcpy(h_n + b * H, h, H * sizeof(float));
    std::memcpy(c_n + b * H, c, H * sizeof(float));
  }
}

// Forward for very few steps (see use_unpacked): nothing is packed. Threads split the 4H gate
// columns: each computes its columns of the input projection (biases, then x . W_ih^T by dot
// products over W_ih's rows, kernel gemm_nt) and, per step, of h_prev . W_hh^T over all active
// rows at once; then the gate maths (threads split the units).
void lstm_forward_unpacked(float* y, float* gates, float* cells, const float* x,
                           const float* h_init, const float* c_init, const float* W_ih,
                           const float* W_hh, const float* b_ih, const float* b_hh,
                           const LstmSizes& s, const index_t* bs, float* xp_buf, float* state,
                           const Kernels& kern, int nthreads, const int64_t* ids,
                           const float* table) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  const bool training = gates != nullptr;
  float* xp = training ? gates : xp_buf;  // packed rows with batch_sizes (see packed.h)
  if (!training) std::memcpy(state, c_init, B * H * sizeof(float));
  const index_t rows_all = T * B;
  // (the cost estimate in double: an integer product of weights and rows could wrap)
  const double flops = static_cast<double>(G) * static_cast<double>(H + I) * rows_all;
  const int P = small_call_threads(flops, nthreads);
  const index_t nub = num_unit_blocks(kern, H), nblk = (G + 7) / 8;
  StepBarrier step_barrier;
  run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    const index_t n0 = std::min(G, nblk * p / np * 8), n1 = std::min(G, nblk * (p + 1) / np * 8);
    const index_t ub0 = nub * p / np, ub1 = nub * (p + 1) / np;
    if (n1 > n0) {  // this thread's columns of the input projection, active rows only
      index_t nrows = rows_all;
      if (bs) {
        nrows = 0;
        for (index_t t = 0; t < T; ++t) nrows += bs[t];
      }
      if (ids) {  // embedding input: the projection is a row of the table
        for (index_t r = 0; r < nrows; ++r)
          std::memcpy(xp + r * G + n0, table + ids[r] * G + n0, (n1 - n0) * sizeof(float));
      } else {
        for (index_t r = 0; r < nrows; ++r) {
          float* dst = xp + r * G;
          for (index_t j = n0; j < n1; ++j)
            dst[j] = (b_ih ? b_ih[j] : 0.0f) + (b_hh ? b_hh[j] : 0.0f);
        }
      }
      if (!ids && !bs) {
        kern.gemm_nt(rows_all, n1 - n0, I, x, I, W_ih + n0 * I, I, xp + n0, G);
      } else if (!ids) {
        index_t off = 0;
        for (index_t t = 0; t < T; off += bs[t], ++t)
          if (bs[t] > 0)
            kern.gemm_nt(bs[t], n1 - n0, I, x + t * B * I, I, W_ih + n0 * I, I,
                         xp + off * G + n0, G);
      }
    }
    index_t off = 0;  // packed row of this step's row 0
    for (index_t t = 0; t < T; ++t) {
      const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * H;
      const float* c_prev = training ? (t == 0 ? c_init : cells + (t - 1) * B * H) : state;
      float* c_out = training ? cells + t * B * H : state;
      const index_t rows = bs ? bs[t] : B;
      float* xp_t = xp + off * G;
      off += rows;
      if (rows > 0 && n1 > n0)
        kern.gemm_nt(rows, n1 - n0, H, h_prev, H, W_hh + n0 * H, H, xp_t + n0, G);
      if (np > 1) team_barrier();
      if (ub1 > ub0 && rows > 0)
        kern.lstm_fwd_rows(rows, H, 0, ub0, ub1, y + t * B * H, H, c_out,
                           training ? xp_t : nullptr, h_prev, H, c_prev, xp_t, nullptr);
      if (np > 1 && t + 1 < T) team_barrier();  // (the region's end joins after the last)
    }
  });
}

// One to kOneStepMaxT steps of many rows (one_step_gemm): the pre-activations from GEMMs over
// each thread's columns, xp = b_ih + b_hh + x . W_ih^T for every step's rows, then per step
// xp_t += h_prev . W_hh^T (none at step 0 without h0: it is zero) and, after the team meets,
// the gate maths of each thread's rows (the packed step kernel's epilogue, with no depth).
// Nothing is packed for a recurrence: the GEMM packs each block of W_hh just before its use,
// where the gate panels of the packed path are written whole and read back from L2 or L3,
// which for a step or two cost about as much as their products. rows: step 0's active rows
// (all B for T > 1: no batch_sizes there); xp: the gates cache in training; cells: the
// training cache (T, B, H), or null (inference: the c state in `state`).
void lstm_forward_one_step(float* y, float* gates, float* cells, float* state, const float* x,
                           const float* h0, const float* c_init, const float* W_ih,
                           const float* W_hh, const float* b_ih, const float* b_hh,
                           const LstmSizes& s, index_t rows, float* xp, const Kernels& kern,
                           int nthreads, float* h_n, float* c_n) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  if (rows <= 0) return;
  const index_t rows_x = T == 1 ? rows : T * B;
  const std::vector<float> bias = summed_bias(b_ih, b_hh, G);  // as gemm_bias2 sums them
  const int P = one_step_threads(rows_x, G, I, H, h0 != nullptr || T > 1, nthreads);
  run_column_team(P, G, kern.NR, [&](int p, int np, index_t n0, index_t n1) {
    one_step_columns(kern, rows_x, rows, G, I, H, n0, n1, x, h0, W_ih, W_hh,
                     bias.empty() ? nullptr : bias.data(), xp, nullptr);
    const index_t r0 = rows * p / np, r1 = rows * (p + 1) / np;
    for (index_t t = 0; t < T; ++t) {
      float* xp_t = xp + t * B * G;
      const float* h_prev = t == 0 ? (h0 ? h0 : c_init) : y + (t - 1) * B * H;
      if (t > 0 && n1 > n0)
        gemm_serial(kern, B, n1 - n0, H, MatView{h_prev, H, 1}, MatView{W_hh + n0 * H, 1, H},
                    xp_t + n0, G, true);
      if (np > 1) team_barrier();
      // The gate maths of this thread's rows (with no depth, h_prev is not read).
      const float* c_prev = t == 0 ? c_init : cells ? cells + (t - 1) * B * H : state;
      float* c_out = cells ? cells + t * B * H : state;
      if (r1 > r0)
        kern.lstm_fwd_rows(r1 - r0, H, 0, 0, num_unit_blocks(kern, H), y + t * B * H + r0 * H, H,
                           c_out + r0 * H, gates ? xp_t + r0 * G : nullptr, h_prev + r0 * H, H,
                           c_prev + r0 * H, xp_t + r0 * G, nullptr);
      if (np > 1 && t + 1 < T) team_barrier();  // h_t complete before step t + 1's product
      if (h_n && t + 1 == T && r1 > r0) {  // this thread's rows of the final states, in cache
        std::memcpy(h_n + r0 * H, y + t * B * H + r0 * H, (r1 - r0) * H * sizeof(float));
        std::memcpy(c_n + r0 * H, c_out + r0 * H, (r1 - r0) * H * sizeof(float));
      }
    }
  });
}

// Few rows in all: packing W_hh (and W_ih for the projection GEMM) would cost more than the
// steps save (a cell step, a short chunk; unpacked_forward, team.h).
bool use_unpacked(const LstmSizes& s) { return unpacked_forward(s.T, s.B, s.H, s.I, true); }

// One step (any rows) or up to kOneStepMaxT steps of at most kOneStepMaxRows rows (all active)
// past the unpacked path's rows with large weights (one_step_weights, team.h), from x (not an
// embedding's table) in the rows' own order: lstm_forward_one_step. (Not chosen by the thread
// count: the bits must not depend on it. On one thread two steps took 1.02-1.06x the packed
// path's time at 48-64 rows, 1.07x at 128, where 2 threads gained nothing.)
bool one_step_gemm(const LstmSizes& s, const index_t* bs, const int64_t* order) {
  // (T > 1: the inference workspace holds the whole projection only when chunk_steps covers T)
  const bool steps =
      s.T <= kOneStepMaxT && s.B <= kOneStepMaxRows && !bs && chunk_steps(s) >= s.T;
  return (s.T == 1 || steps) && !order &&
         one_step_weights(4 * s.H, s.I, s.H, kOneStepGatedBytes) && !use_unpacked(s);
}

}  // namespace

// Each row of the table summed as lstm_forward sums a row of x on the path it takes for s: the
// unpacked path's bias, then += dot products over W_ih's rows (gemm_nt; an element's sum
// depends neither on the rows taken at once nor on the columns), or the packed micro-kernel of
// the hoisted projection and of the batch split's own-rows blocks (bias + the depth blocks in
// order). gemm() would take a table of one or two rows as dot products: gemm_packed_serial
// does not.
void lstm_embedding_table(float* table, const float* E, const float* W_ih, const float* b_ih,
                          const float* b_hh, const LstmSizes& s, index_t V, const Kernels& kern,
                          int nthreads) {
  const index_t I = s.I, G = 4 * s.H;
  if (V <= 0 || G <= 0) return;
  const std::vector<float> bias = summed_bias(b_ih, b_hh, G);  // as both paths sum them
  const float* bias_p = bias.empty() ? nullptr : bias.data();
  if (!use_unpacked(s)) {
    if (V <= 2)
      gemm_packed_serial(kern, V, G, I, MatView{E, I, 1}, MatView{W_ih, 1, I}, table, G, bias_p);
    else
      gemm(kern, V, G, I, MatView{E, I, 1}, MatView{W_ih, 1, I}, table, G, false, nthreads,
           bias_p);
    return;
  }
  // Threads split the rows in blocks of four (gemm_nt's row group).
  const index_t blocks = (V + 3) / 4;
  const double flops = 2.0 * static_cast<double>(V) * static_cast<double>(G) * I;
  const int P = flops >= double(index_t(1) << 17) && nthreads > 1
                    ? static_cast<int>(std::min<index_t>(nthreads, blocks))
                    : 1;
  run_team(P, [&] {
    DenormalGuard ftz;
    const int p = team_id(), np = team_size();
    const index_t v0 = std::min(V, blocks * p / np * 4);
    const index_t v1 = std::min(V, blocks * (p + 1) / np * 4);
    for (index_t v = v0; v < v1; ++v) {
      float* dst = table + v * G;
      if (bias_p)
        std::memcpy(dst, bias_p, G * sizeof(float));
      else
        std::memset(dst, 0, G * sizeof(float));
    }
    if (v1 > v0) kern.gemm_nt(v1 - v0, G, I, E + v0 * I, I, W_ih, I, table + v0 * G, G);
  });
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::kUnits: return "units";
    case Schedule::kBatch: return "batch";
    case Schedule::kSerial: return "serial";
    default: return "auto";
  }
}

// The cost model, in order:
//  * one thread, or a step too small to share (serial_step_flops: 3e4 FLOP on 2 threads, a
//    fraction of a microsecond; the barrier per step would cost about as much as it saves)
//    -> serial;
//  * without batch_sizes, W_hh of at most 4 MiB (H = 512) and 4 rows per thread (8 when W_hh
//    is larger than one core's L2) -> batch, the forward's own-rows path (lstm_forward): each
//    thread projects its own rows and streams all of W_hh every step, and the threads never
//    meet;
//  * enough rows for the batch split (batch_split_min_rows: 4 per thread when W_hh fits in half
//    an L2, 16 when each core streams it from a larger cache every step; never above 2 MiB;
//    with batch_sizes 4 mean rows per thread, the own-rows path again) -> batch-parallel:
//    threads own rows for the whole sequence and never meet (no barrier per step);
//  * enough unit blocks to share -> units (weight-stationary, one barrier per step);
//  * else batch if every thread gets a row, else serial.
// With batch_sizes the rows are counted as their mean over the steps: the active rows fall
// over the sequence, and a batch split sized for the first steps streams the whole of W_hh on
// every thread for rows that run out. In-process, 2 threads, forward batch / units time (the
// own-rows path, its projection per segment, before blocks across segments): S1 with lengths
// uniform in [T/4, T] (20 rows on average) 0.977, in [0, T] 0.953, (100, 64, 256, 256) 0.978;
// 12 rows of length T and 20 of 1: 0.971, 8 of T and 24 of T/10: 0.969; 4 of T and 28 of T/10:
// 1.047 (3.4 mean rows per thread); training within 0.91-1.01.
// Without batch_sizes, batch / units forward time with the projection in blocks: H = 256,
// T = 100: B = 2 1.299, B = 4 1.038, B = 6 0.923, B = 8 0.895, B = 12-20 0.83-0.85; H = 512,
// T = 50: B = 4 1.227, B = 8 0.995, B = 16 0.973, B = 20 0.955; before the blocks, B = 64 (S2)
// 0.950-0.956 and H = 1024 (16 MiB) 1.055-1.087 at B = 32-128. Training (both passes split
// alike): H = 256, B = 8 0.906, B = 16 0.848; H = 512, B = 16 0.932; S2 0.94-0.98. The units
// split's barrier and exchange of h every step cost most in the host's slow phases (S1 with
// lengths forced to units 14.1 ms against 11.2 in the fast phase, the batch split 11.7).
Schedule lstm_choose_schedule(const Kernels& kern, const LstmSizes& s0, int nthreads,
                              const index_t* bs, bool backward) {
  LstmSizes s = s0;
  if (bs && s.T > 0) s.B = std::max<index_t>(1, (packed_rows(bs, 0, s.T) + s.T - 1) / s.T);
  Schedule forced = schedule_override();
  if (nthreads <= 1) return Schedule::kSerial;
  const index_t nub = num_unit_blocks(kern, s.H);
  if (forced == Schedule::kUnits) return nub >= 2 ? Schedule::kUnits : Schedule::kSerial;
  if (forced == Schedule::kBatch) return s.B >= 2 ? Schedule::kBatch : Schedule::kSerial;
  if (forced == Schedule::kSerial) return Schedule::kSerial;
  const double step_flops = 2.0 * s.B * s.H * 4.0 * s.H;
  if (step_flops < serial_step_flops(nthreads, !backward) && s.B < 2 * nthreads)
    return Schedule::kSerial;
  const double whh_bytes = 16.0 * s.H * s.H;
  if (!bs && own_rows_possible(s) &&
      s.B >= nthreads * (whh_bytes <= static_cast<double>(l2_cache_bytes()) ? 4 : 8))
    return Schedule::kBatch;
  index_t batch_rows = batch_split_min_rows(whh_bytes, nthreads);
  if (bs && batch_rows > 0 && s0.B >= 2) batch_rows = std::min<index_t>(batch_rows, 4 * nthreads);
  if (batch_rows > 0 && s.B >= batch_rows) return Schedule::kBatch;
  if (nub >= 2 * nthreads) return Schedule::kUnits;
  if (s.B >= nthreads) return Schedule::kBatch;
  if (nub >= 2) return Schedule::kUnits;
  return Schedule::kSerial;
}

namespace {
// One thread's copy of the packed W_hh panels and W_ih^T for the batch split with its own-rows
// projection (lstm_forward; private_copy_floats), or 0.
index_t own_rows_copy_floats(const Kernels& kern, const LstmSizes& s, int nthreads) {
  if (own_projection_floats(s, nthreads) == 0 || packed_w_ih_size(kern, s) == 0) return 0;
  const index_t panels = num_unit_blocks(kern, s.H) * s.H * 4 * kern.W;
  return private_copy_floats(panels + packed_w_ih_size(kern, s), nthreads, s.T * s.B);
}
}  // namespace

index_t lstm_forward_workspace_size(const Kernels& kern, const LstmSizes& s, bool training,
                                    bool lengths, int nthreads) {
  if (use_unpacked(s)) return s.T * s.B * 4 * s.H + 2 * s.B * s.H + 64;
  const index_t panels = num_unit_blocks(kern, s.H) * s.H * 4 * kern.W;
  const index_t xp = training ? 0 : chunk_steps(s) * s.B * 4 * s.H;
  const index_t xg = lengths ? chunk_steps(s) * s.B * s.I : 0;  // a chunk's active rows of x
  const index_t ring = lengths ? 2 * s.B * s.H : 0;  // sorted h of two steps, with an order
  const index_t copy = own_rows_copy_floats(kern, s, nthreads);
  const index_t copies = private_copies_floats(copy, nthreads);
  return panels + xp + xg + ring + own_projection_floats(s, nthreads) + copies +
         2 * s.B * s.H + packed_w_ih_size(kern, s) + 64;
}

void lstm_forward(float* y, float* h_n, float* c_n, float* gates, float* cells, const float* x,
                  const float* h0, const float* c0, const float* W_ih, const float* W_hh,
                  const float* b_ih, const float* b_hh, const LstmSizes& s,
                  const index_t* bs, float* workspace, const Kernels& kern, int nthreads,
                  const int64_t* ids, const float* table, const int64_t* order) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  const bool training = gates != nullptr;
  if (ids) bs = nullptr;  // the embedding path is dense (the bindings check it)
  if (!bs) order = nullptr;
  if (B == 0 || H == 0) return;
  if (T == 0) {
    for (index_t j = 0; j < B * H; ++j) {
      h_n[j] = h0 ? h0[j] : 0.0f;
      c_n[j] = c0 ? c0[j] : 0.0f;
    }
    return;
  }
  // Every row active: the packed layout is dense (with order, x still needs the gather).
  if (bs && !order && !has_padding(bs, T, B)) bs = nullptr;
  // order on the unpacked path (tiny shapes): x gathered first, y computed sorted, then
  // scattered to the caller's order.
  std::vector<float> x_sorted, y_sorted;
  float* y_user = y;
  if (order && use_unpacked(s)) {
    x_sorted.resize(static_cast<std::size_t>(T * B * I));
    y_sorted.resize(static_cast<std::size_t>(T * B * H));
    for (index_t t = 0; t < T; ++t)
      for (index_t r = 0; r < B; ++r)
        std::memcpy(x_sorted.data() + (t * B + r) * I, x + (t * B + order[r]) * I,
                    I * sizeof(float));
    x = x_sorted.data();
    y = y_sorted.data();
  }
  if (bs) {  // padding rows of y are zero
    for (index_t t = 0; t < T; ++t) {
      if (order && y == y_user) {
        for (index_t r = bs[t]; r < B; ++r)
          std::memset(y + (t * B + order[r]) * H, 0, H * sizeof(float));
      } else if (bs[t] < B) {
        std::memset(y + (t * B + bs[t]) * H, 0, (B - bs[t]) * H * sizeof(float));
      }
    }
  }
  // One or two steps, or a handful of rows in all: packing W_hh would cost more than the steps
  // themselves, so the products read the weights' rows directly (use_unpacked).
  // Workspace: [xp (T*B, 4H)] [c state (B, H)] [zeros (B, H)].
  if (use_unpacked(s)) {
    float* xp_buf = workspace;
    float* state = xp_buf + T * B * G;
    float* zeros = state + B * H;
    if (!h0 || !c0) std::memset(zeros, 0, B * H * sizeof(float));
    const float* h_init = h0 ? h0 : zeros;
    const float* c_init = c0 ? c0 : zeros;
    lstm_forward_unpacked(y, gates, cells, x, h_init, c_init, W_ih, W_hh, b_ih, b_hh, s, bs,
                          xp_buf, state, kern, nthreads, ids, table);
    final_states(h_n, c_n, y, cells, state, h_init, c_init, s, bs);
    if (y != y_user)
      for (index_t t = 0; t < T; ++t)
        for (index_t r = 0; r < B; ++r)
          std::memcpy(y_user + (t * B + order[r]) * H, y + (t * B + r) * H, H * sizeof(float));
    return;
  }
  // Workspace: [packed W_hh] [xp chunk (TC*B, 4H), inference only]
  //            [x chunk (TC*B, I), with batch_sizes] [c state (B, H)] [zeros (B, H)].
  // With batch_sizes, xp (and the training gates cache) hold packed rows (packed.h).
  const index_t nub = num_unit_blocks(kern, H);
  const index_t TC = chunk_steps(s);
  float* Wp = workspace;
  float* xp_buf = Wp + nub * H * 4 * kern.W;
  float* xg = xp_buf + (training ? 0 : TC * B * G);  // (TC*B, I): a chunk's active rows of x
  float* state = xg + (bs ? TC * B * I : 0);          // (B, H): c in inference
  float* zeros = state + B * H;                       // (B, H): null h0 / c0
  float* Wip = zeros + B * H;  // W_ih^T packed once, with several chunks (packed_w_ih_size)
  // With an order, y's rows are in the caller's order: the recurrence reads h_prev from a ring
  // of two sorted (B, H) steps, and each thread copies what it computed to y's rows after the
  // step (a thread's rows or units of a step are read only by itself or after a barrier).
  // The batch split's own projections (own_projection_floats): pre-activations, then x rows.
  float* xo = Wip + packed_w_ih_size(kern, s);
  const index_t extra = own_proj_rows(s, nthreads);  // a block's rows beyond a step's
  float* xgo = xo + (B + nthreads * extra) * G;
  const bool own_rows = own_projection_floats(s, nthreads) > 0;
  // The other threads' copies of the packed weights on that path (own_rows_copy_floats).
  const index_t copy = own_rows_copy_floats(kern, s, nthreads);
  float* copies = xo + own_projection_floats(s, nthreads);
  if (copy > 0) copies = align_floats(copies);
  float* ring = order ? copies + (nthreads - 1) * copy : nullptr;
  if (!h0 || !c0) std::memset(zeros, 0, B * H * sizeof(float));
  const float* h_init = h0 ? h0 : zeros;
  const float* c_init = c0 ? c0 : zeros;
  if (!ids && one_step_gemm(s, bs, order)) {
    // (reads c_init at step 0: the state needs no copy of it; without padding rows the team
    // writes h_n and c_n, with them final_states gives the rows of no step their initial ones)
    lstm_forward_one_step(y, gates, training ? cells : nullptr, state, x, h0, c_init, W_ih, W_hh,
                          b_ih, b_hh, s, bs ? bs[0] : B, training ? gates : xp_buf, kern,
                          nthreads, bs ? nullptr : h_n, bs ? nullptr : c_n);
    if (bs) final_states(h_n, c_n, y, cells, state, h_init, c_init, s, bs);
    return;
  }
  if (!training) std::memcpy(state, c_init, B * H * sizeof(float));
  // Step t's operands: h_prev and h_out (in y, or with an order in the ring of two sorted
  // steps), c_prev and c_out (the training cache, or the inference state).
  auto h_prev_of = [&](index_t t) -> const float* {
    return t == 0 ? h_init : ring ? ring + ((t - 1) & 1) * B * H : y + (t - 1) * B * H;
  };
  auto h_out_of = [&](index_t t) { return ring ? ring + (t & 1) * B * H : y + t * B * H; };
  auto c_prev_of = [&](index_t t) -> const float* {
    return training ? (t == 0 ? c_init : cells + (t - 1) * B * H) : state;
  };
  auto c_out_of = [&](index_t t) { return training ? cells + t * B * H : state; };
  if (ids || packed_w_ih_size(kern, s) == 0) Wip = nullptr;
  const Schedule sched = lstm_choose_schedule(kern, s, nthreads, bs);
  const int P = sched == Schedule::kSerial ? 1 : nthreads;
  // The batch split with each thread projecting its own rows (below), and whether each thread
  // packs its own copy of the weights there (own_rows_copy_floats).
  const bool own_path = sched == Schedule::kBatch && P > 1 && Wip && own_rows;
  const bool own_copies = own_path && copy > 0;

  if (!own_copies) {
    if (Wip) pack_b_panels_parallel(kern, I, G, MatView{W_ih, 1, I}, Wip, nthreads);
    // Pack W_hh into gate-interleaved panels, one unit block per task.
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1 && H >= 64)
#endif
    for (index_t ub = 0; ub < nub; ++ub) pack_lstm_panels(kern, H, H, ub, W_hh, Wp);
  }

  // The batch split: each thread computes the input projection of its own rows in the team
  // region of its recurrence (no fork and join per chunk), so the pre-activations it reads are
  // in its own cache rather than half of them in the other core's, as after a GEMM that splits
  // the rows its own way. The same products, each element summed in the same order: results
  // are bitwise those of the shared GEMM.
  //
  // A thread projects its active rows of a block of steps at once (gathered from x into its
  // part of xgo, through the order when there is one), at least kOwnProjRows rows when its rows
  // per step are fewer (own_proj_rows: more where W_ih^T is large, fewer for a small T * B per
  // thread), so W_ih^T streams through its cache once per block; the steps read their
  // pre-activations from its part of xo.
  // With batch_sizes the rows are re-balanced every kBalanceSteps steps (a barrier when they
  // change hands) and a block ends with its segment.
  //
  // In-process A/B, 2 threads, AMD EPYC Zen 4, forward, against the shared GEMM: S6 (8 rows per
  // thread) 0.838x and 0.837x the time, (100, 20, 128, 128) 0.888x, (100, 8, 65, 100) 0.989x;
  // against a projection per step and thread (whole chunks first): S1 0.990x, S2 1.003x,
  // (100, 64, 128, 128) 0.990x, training 1.00-1.01x (the step then writes the gates cache
  // instead of overwriting the projection in it); that per-step form had taken S1 forward to
  // 0.90x and training to 0.95x of the shared GEMM's time.
  //
  // With batch_sizes this path keeps the batch split to the last step, where the shared path
  // below (which an embedding input takes) would turn to the units split once the active rows
  // run low, with a barrier and an exchange of h every step. In the host's slow phases (cores
  // apart, slower transfers between them) that made S1 with lengths uniform in [T/4, T]
  // 20-25 % slower (forward 11.2 -> 14.1 ms, training 35 -> 43 ms), where the batch split
  // without an exchange moved by 3 %.
  const std::vector<float> bias = summed_bias(b_ih, b_hh, G);  // as gemm_bias2 sums them
  const float* bias_p = bias.empty() ? nullptr : bias.data();
  if (own_path) {
    const index_t seg = bs ? kBalanceSteps : T;  // steps between re-balancings
    const index_t panels = nub * H * 4 * kern.W;
    StepBarrier step_barrier;
    run_team(P, [&] {
      DenormalGuard ftz;
      BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
      const int p = team_id(), np = team_size();
      // This thread's packed weights: thread 0 packs the workspace's, the others their copies.
      float* const Wp_p = own_copies && p > 0 ? copies + (p - 1) * copy : Wp;
      float* const Wip_p = own_copies && p > 0 ? Wp_p + panels : Wip;
      if (own_copies) {
        for (index_t ub = 0; ub < nub; ++ub) pack_lstm_panels(kern, H, H, ub, W_hh, Wp_p);
        pack_b_panels(kern, I, 0, G, MatView{W_ih, 1, I}, Wip_p);
      }
      auto active = [&](index_t t) { return bs ? bs[t] : B; };
      index_t r0 = 0, r1 = B;
      index_t off = 0;        // packed row of step t's row 0
      index_t blk_end = 0;    // the steps [.., blk_end) have their projection in xo
      float* xo_t = nullptr;  // this step's first row's pre-activations in xo
      for (index_t t = 0; t < T; ++t) {
        if (t % seg == 0) {
          const index_t t2 = std::min(T, t + seg);
          if (bs && t > 0 && split_changes(bs, t - seg, t, t, t2, B, kLengthsRowGrain, np))
            team_barrier();
          balanced_rows(bs, t, t2, B, kLengthsRowGrain, p, np, &r0, &r1);
          blk_end = t;
        }
        const index_t re = std::min(r1, active(t));
        if (t >= blk_end && re > r0) {  // the projection of the next block of steps
          const index_t seg_end = std::min(T, (t / seg + 1) * seg);
          // this thread's rows of xo / xgo: disjoint from the other threads' (r0 increasing)
          float* xo_p = xo + (r0 + p * extra) * G;
          float* xg_p = xgo + (r0 + p * extra) * I;
          blk_end = project_rows_block(kern, x, B, I, G, bs, order, t, seg_end, r0, r1,
                                       std::max(r1 - r0, extra), W_ih, bias_p, Wip_p, xg_p,
                                       xo_p);
          xo_t = xo_p;
        }
        const float* h_prev = h_prev_of(t);
        float* h_out = h_out_of(t);
        const float* c_prev = c_prev_of(t);
        float* c_out = c_out_of(t);
        float* g_t = training ? gates + (off + r0) * G : nullptr;
        off += active(t);
        if (re <= r0) continue;
        kern.lstm_fwd_rows(re - r0, H, H, 0, nub, h_out + r0 * H, H, c_out + r0 * H, g_t,
                           h_prev + r0 * H, H, c_prev + r0 * H, xo_t, Wp_p);
        xo_t += (re - r0) * G;
        if (ring)
          for (index_t r = r0; r < re; ++r)
            std::memcpy(y + (t * B + order[r]) * H, h_out + r * H, H * sizeof(float));
      }
    });
    final_states(h_n, c_n, y, cells, state, h_init, c_init, s, bs, order);
    return;
  }

  index_t off0 = 0;  // packed row of step t0's row 0
  for (index_t t0 = 0; t0 < T; t0 += TC) {
    const index_t t1 = std::min(T, t0 + TC);
    // Hoisted input projection for steps [t0, t1): one GEMM over the chunk's active rows (all
    // (t1 - t0) * B rows without batch_sizes), bias first.
    float* xp = training ? gates + off0 * G : xp_buf;
    const index_t rows = bs ? packed_rows(bs, t0, t1) : (t1 - t0) * B;
    if (ids) {
      gather_rows(rows, G, ids + t0 * B, table, xp, nthreads);
    } else {
      if (bs) pack_steps(xg, x, I, B, bs, t0, t1, nthreads, order);
      const float* xa = bs ? xg : x + t0 * B * I;
      if (Wip && rows <= 2) {
        // gemm() takes one or two rows as dot products over W_ih's rows (another summation
        // order); the batch split's own-rows projection (above) always uses the packed
        // micro-kernel, at any row count: a chunk of one or two active rows (the last chunk,
        // with a long tail of batch_sizes or B = 2) must too, or the results would differ in
        // the last bit between one thread and the batch split.
        gemm_packed_serial(kern, rows, G, I, MatView{xa, I, 1}, MatView{W_ih, 1, I}, xp, G,
                           bias_p, Wip);
      } else {
        input_projection(kern, rows, G, I, xa, W_ih, b_ih, b_hh, xp, nthreads, Wip);
      }
    }

    // The recurrence: one parallel region for the chunk; per step one fused tile sweep.
    StepBarrier step_barrier;
    run_team(P, [&] {
      DenormalGuard ftz;
      BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
      const int p = team_id(), np = team_size();
      index_t r0 = 0, r1 = B, ub0 = 0, ub1 = nub;
      if (sched == Schedule::kUnits) {  // this thread's units
        ub0 = nub * p / np;
        ub1 = nub * (p + 1) / np;
      }
      // Batch split (forced, or an embedding input): rows are independent, so threads never
      // meet, except that with batch_sizes the rows are re-balanced every kBalanceSteps steps
      // (in grains of kLengthsRowGrain rows; the step kernel balances its tile heights).
      const bool rebalance = sched == Schedule::kBatch && bs && np > 1;
      const index_t seg = rebalance ? kBalanceSteps : t1 - t0;
      index_t off = 0;  // packed row (in the chunk) of step t's row 0
      for (index_t t = t0; t < t1; ++t) {
        if (sched == Schedule::kBatch && (t - t0) % seg == 0) {
          const index_t tile = kLengthsRowGrain, t2 = std::min(t1, t + seg);
          // Rows changing hands: their h_prev / c_prev must be written first.
          if (rebalance && t > t0 && split_changes(bs, t - seg, t, t, t2, B, tile, np))
            team_barrier();
          balanced_rows(bs, t, t2, B, tile, p, np, &r0, &r1);
        }
        const float* h_prev = h_prev_of(t);
        float* h_out = h_out_of(t);
        const float* c_prev = c_prev_of(t);
        float* c_out = c_out_of(t);
        float* xp_t = xp + off * G;
        off += bs ? bs[t] : B;
        const index_t re = bs ? std::min(r1, bs[t]) : r1;
        if (re > r0 && ub1 > ub0) {
          kern.lstm_fwd_rows(re - r0, H, H, ub0, ub1, h_out + r0 * H, H, c_out + r0 * H,
                             training ? xp_t + r0 * G : nullptr, h_prev + r0 * H, H,
                             c_prev + r0 * H, xp_t + r0 * G, Wp);
          if (ring) {  // this thread's part of the step to y's rows, in the caller's order
            const index_t u0 = ub0 * kern.W, u1 = std::min(H, ub1 * kern.W);
            for (index_t r = r0; r < re; ++r)
              std::memcpy(y + (t * B + order[r]) * H + u0, h_out + r * H + u0,
                          (u1 - u0) * sizeof(float));
          }
        }
        if (sched == Schedule::kUnits && np > 1 && t + 1 < t1)
          team_barrier();  // (the region's end joins)
      }
    });
    off0 += rows;
  }
  final_states(h_n, c_n, y, cells, state, h_init, c_init, s, bs, order);
}

namespace {
// One step's dZ_t rows packed into MR-row slivers (the A operand of dZ_t . W_hh), a slab per
// thread (or two shared slabs, alternating by step, when threads split the columns).
index_t dz_slab(const Kernels& kern, const LstmSizes& s) {
  return (s.B / kern.MR + 2) * kern.MR * 4 * s.H;
}
}  // namespace

// The weight gradients dW_ih = dZ^T . x and dW_hh = dZ^T . h_prev as one gemm_dual (dZ^T packed
// once, not once per product), when a depth block of both operands fits in half of L2
// (gemm_dual_fits). With batch_sizes its operands are the packed rows of x and h_prev. Floats of
// its scratch, or 0 when not used.
index_t dual_weight_grad_floats(const Kernels& kern, const LstmSizes& s) {
  return gemm_dual_scratch_floats(kern, s.T * s.B, s.I, s.H);
}

// Floats of W_ih packed in full-depth panels for the dx rows computed in the backward's step
// loop (lstm_backward), or 0 where that is not done: one row (no slivers), or W_hh's and W_ih's
// panels together over half of one core's L2 (each step streams both).
index_t step_dx_floats(const Kernels& kern, const LstmSizes& s) {
  const index_t nbj = (s.H + kern.NR - 1) / kern.NR, nbi = (s.I + kern.NR - 1) / kern.NR;
  const double bytes = 4.0 * (nbj + nbi) * kern.NR * 4.0 * s.H;
  if (s.B < 2 || s.I <= 0 || bytes > 0.5 * static_cast<double>(l2_cache_bytes())) return 0;
  return nbi * kern.NR * 4 * s.H;
}

namespace {
// One thread's copy of W_hh's panels (and W_ih's for step_dx) for the backward's batch split
// (lstm_backward; private_copy_floats), or 0.
index_t backward_copy_floats(const Kernels& kern, const LstmSizes& s, int nthreads) {
  if (s.B < 2) return 0;
  const index_t nbj = (s.H + kern.NR - 1) / kern.NR;
  return private_copy_floats(nbj * kern.NR * 4 * s.H + step_dx_floats(kern, s), nthreads,
                             s.T * s.B);
}
}  // namespace

index_t lstm_backward_workspace_size(const Kernels& kern, const LstmSizes& s, bool lengths,
                                     int nthreads) {
  const index_t nbj = (s.H + kern.NR - 1) / kern.NR;
  const index_t hp = lengths ? s.T * s.B * s.H : 0;  // packed h_prev rows for dW_hh
  const index_t slabs = std::max(2, nthreads) * dz_slab(kern, s);
  const index_t dys = lengths ? std::max(1, nthreads) * s.B * s.H : 0;  // dy rows gathered
  const index_t copy = backward_copy_floats(kern, s, nthreads);
  const index_t copies = private_copies_floats(copy, nthreads);
  // the unpacked path's rows of x and h_prev (lstm_backward_unpacked)
  const index_t rows = s.T * s.B <= kUnpackedBackwardRows ? s.T * s.B * (s.I + s.H) : 0;
  return s.T * s.B * 4 * s.H + nbj * kern.NR * 4 * s.H + s.B * s.H + hp + slabs + dys +
         dual_weight_grad_floats(kern, s) + step_dx_floats(kern, s) + copies + rows + 64;
}

namespace {
// lstm_backward for few rows in all (unpacked_backward, team.h; not with an embedding input):
// nothing packed. Threads own slices of the hidden units: the pointwise step for their units,
// then (after the team meets: the product reads every unit of dZ_t) dh_next[:, their units] =
// dZ_t . W_hh[:, their units] from W_hh's rows in place, in depth blocks of kGemmKC. After the
// loop, dx, the weight gradients and the bias sums (unpacked_grads). The workspace was sized
// by lstm_backward_workspace_size (lengths given when bs is).
void lstm_backward_unpacked(float* dx, float* dh0, float* dc0, float* dW_ih, float* dW_hh,
                            float* db_ih, float* db_hh, const float* dy, const float* x,
                            const float* h0, const float* c0, const float* W_ih,
                            const float* W_hh, const float* y, const float* gates,
                            const float* cells, const LstmSizes& s, const index_t* bs,
                            float* workspace, const Kernels& kern, int nthreads,
                            const int64_t* order, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B, n0 = bs ? bs[0] : B;
  // Workspace: dZ (N, 4H) packed rows with batch_sizes; zeros (B, H); x's rows (N, I); h_prev's
  // rows (N, H); with an order, each thread's dy rows of a step gathered (B, H).
  float* dz = workspace;
  float* zeros = dz + T * B * G;
  float* xr = zeros + B * H;
  float* hr = xr + T * B * I;
  float* dyg = hr + T * B * H;
  std::memset(zeros, 0, B * H * sizeof(float));
  const float* c_init = c0 ? c0 : zeros;
  if (bs) pack_steps(xr, x, I, B, bs, 0, T, 1, order);  // never read x's padding
  index_t h_skip = 0;
  const float* hp = unpacked_h_prev(hr, h0, y, T, B, H, bs, order, &h_skip);
  // dW_hh as the packed path sums it: one block (its gemm_dual), else h0's rows first.
  const bool dual = dual_weight_grad_floats(kern, s) > 0;
  UnpackedGrads g{};
  g.set_rows(T, B, I, H, G, bs, N);
  g.order = order;
  g.set_operands(dz, dz, bs ? xr : x, hp, h_skip, h0 && !dual && N > n0 ? n0 : 0);
  g.set_outputs(W_ih, need_dx ? dx : nullptr, dW_ih, dW_hh, db_ih, db_hh, fresh);
  run_unpacked_backward(
      kern, g, nthreads, W_hh, dh0, false,
      [&](int p, index_t t, index_t rows, index_t off, index_t u0, index_t u1) {
        const float* c_prev = t == 0 ? c_init : cells + (t - 1) * B * H;
        const float* dy_t = dy ? dy + t * B * H : nullptr;
        if (dy && order) {  // dy's rows are in the caller's order
          float* gp = dyg + p * B * H;
          for (index_t r = 0; r < rows; ++r)
            std::memcpy(gp + r * H + u0, dy + (t * B + order[r]) * H + u0,
                        (u1 - u0) * sizeof(float));
          dy_t = gp;
        }
        kern.lstm_bwd_pointwise(rows, H, u0, u1, dz + off * G, dc0, gates + off * G,
                                cells + t * B * H, c_prev, dy_t, dh0);
      });
}
}  // namespace

void lstm_backward(float* dx, float* dh0, float* dc0, float* dW_ih, float* dW_hh, float* db_ih,
                   float* db_hh, const float* dy, const float* dh_n, const float* dc_n,
                   const float* x, const float* h0, const float* c0, const float* W_ih,
                   const float* W_hh, const float* y, const float* gates, const float* cells,
                   const LstmSizes& s, const index_t* bs, float* workspace, const Kernels& kern,
                   int nthreads, const int64_t* ids, index_t V, const float* E, float* dE,
                   float* S, const int64_t* order, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  // The workspace was sized (lstm_backward_workspace_size) for lengths if batch_sizes came in,
  // even when they turn out to hold no padding and are dropped below.
  const index_t dual_floats = dual_weight_grad_floats(kern, s);
  if (ids) bs = nullptr;  // dense (the bindings check it)
  if (!bs) order = nullptr;
  if (!db_ih) fresh &= ~4u;
  if (!db_hh) fresh &= ~8u;
  // Gradients to write that no product below will: zeros.
  auto zero_fresh = [&](unsigned bits) {
    if (bits & 1u) std::memset(dW_ih, 0, G * I * sizeof(float));
    if (bits & 2u) std::memset(dW_hh, 0, G * H * sizeof(float));
    if (bits & 4u) std::memset(db_ih, 0, G * sizeof(float));
    if (bits & 8u) std::memset(db_hh, 0, G * sizeof(float));
  };
  if (B == 0 || H == 0 || T == 0) zero_fresh(fresh);
  if (B == 0 || H == 0) {
    if (dx && T * B * I > 0) std::memset(dx, 0, T * B * I * sizeof(float));
    return;
  }
  // dh0 / dc0 double as the running dh_next / dc_next of the reverse loop.
  for (index_t j = 0; j < B * H; ++j) {
    dh0[j] = dh_n ? dh_n[j] : 0.0f;
    dc0[j] = dc_n ? dc_n[j] : 0.0f;
  }
  if (T == 0) return;
  if (bs && !order && !has_padding(bs, T, B)) bs = nullptr;  // as in the forward
  if (!ids && unpacked_backward(T, B, /*one_row_kernel=*/true))
    return lstm_backward_unpacked(dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh, dy, x, h0, c0, W_ih,
                                  W_hh, y, gates, cells, s, bs, workspace, kern, nthreads, order,
                                  need_dx, fresh);
  const index_t nbj = (H + kern.NR - 1) / kern.NR;
  // dZ and the gates cache hold packed rows with batch_sizes (packed.h): N rows in all.
  const index_t N = bs ? packed_rows(bs, 0, T) : T * B;
  float* dz = workspace;               // (N, 4H)
  float* Wb = dz + T * B * G;          // W_hh packed as the B operand of dZ_t . W_hh: (4H, H)
  float* zeros = Wb + nbj * kern.NR * G;  // (B, H)
  float* hp = zeros + B * H;              // (N, H) with batch_sizes: packed h_prev rows
  float* dzp = hp + (bs ? T * B * H : 0);  // max(2, threads) slabs of packed dZ_t rows
  const index_t slab = dz_slab(kern, s);
  // With an order, dy's rows are in the caller's order: each thread gathers the rows it needs
  // for a step into its own (B, H) buffer.
  float* dyg = dzp + std::max(2, nthreads) * slab;
  float* dual = dyg + (bs ? std::max(1, nthreads) * B * H : 0);  // gemm_dual's packed panels
  float* Wib = dual + dual_floats;  // W_ih in full-depth panels (step_dx_floats)
  // The other threads' copies of W_hh's and W_ih's panels (backward_copy_floats).
  float* const copies = align_floats(Wib + step_dx_floats(kern, s));  // (unused without copies)
  std::memset(zeros, 0, B * H * sizeof(float));
  const float* c_init = c0 ? c0 : zeros;

  Schedule sched = lstm_choose_schedule(kern, s, nthreads, bs, true);
  // The backward step product runs row tiles of MR/3, 2MR/3 or MR rows: with fewer than 2MR/3
  // rows per thread a row split wastes much of each tile, so split the columns of dh instead
  // (when there are enough). Above that the row split wins: no barrier per step (S6 training,
  // 8 rows per thread: 4.3 -> 3.15 ms at 2 threads).
  if (sched == Schedule::kBatch && schedule_override() == Schedule::kAuto &&
      3 * s.B < 2 * kern.MR * nthreads && (H + kern.NR - 1) / kern.NR >= 2 * nthreads)
    sched = Schedule::kUnits;
  const int P = sched == Schedule::kSerial ? 1 : nthreads;
  // A single row over one or two steps: dZ_t . W_hh straight from W_hh (gemv_cols); packing it
  // would cost more than the products (S4 training: a 1 MiB pack per call).
  const bool unpacked_dh = B == 1 && T <= 2;
  // dx's rows of a step computed in the step loop, right after dh_next, from the same slivers of
  // dZ_t (still in L1) and W_ih packed once in full-depth panels, instead of one GEMM over all
  // of dZ afterwards (which packs dZ again, a transposition, and reads it back from memory).
  // The depth blocks, kernels and panel pairs are the GEMM's (gemm_serial_bias): bitwise its
  // result. Threads owning rows (or one thread), without batch_sizes, at least 4 rows each
  // (fewer: the tiles of a step waste more than the GEMM's pass costs; 1 thread, B = 2: 1.075x
  // the time, B = 3 1.010x, B = 4 0.989x), when W_hh's and W_ih's panels fit in half an L2
  // together (step_dx_floats). In-process A/B, training, against the GEMM after the loop: 2
  // threads S6 0.974-1.002x, (100, 32, 128, 128) 0.961-0.983x, (100, 16, 128, 128) 0.980x; 1
  // thread S6 0.995x, (100, 32, 128, 128) 0.960x.
  // One step of many rows with large weights (as the forward's one_step_gemm): the pointwise
  // step, then dh0 = dZ . W_hh from the GEMM, which packs W_hh's blocks just before their use,
  // instead of W_hh's panels packed whole for a single product (and W_ih's for the step's dx:
  // dx comes from the GEMM below). In-process A/B, 2 threads, backward time new / old,
  // (B, I, H): (32, 256, 256) 0.90, (128, 512, 512) 0.88, (65, 1, 256) 0.91, (8, 64, 512)
  // 0.96, (64, 200, 200) 0.98, (128, 100, 256) 0.99.
  const bool one_step = T == 1 && !ids && !order && !unpacked_dh &&
                        one_step_weights(G, I, H, kOneStepGatedBytes);
  const index_t rows_each = sched == Schedule::kSerial ? B : B / std::max(1, P);
  const bool step_dx = !one_step && need_dx && dx && !bs && !ids && !unpacked_dh &&
                       sched != Schedule::kUnits && rows_each >= 4 &&
                       step_dx_floats(kern, s) > 0;
  // Threads owning rows each pack their own copy of the panels in the team region where the
  // copies are small (backward_copy_floats), as the forward's batch split does.
  const index_t copy = backward_copy_floats(kern, s, nthreads);
  const bool own_copies =
      !one_step && sched == Schedule::kBatch && P > 1 && !unpacked_dh && copy > 0;
  const index_t wb_floats = nbj * kern.NR * G;
  if (one_step) {
    const index_t rows = bs ? bs[0] : B;
    const int P1 = one_step_threads(rows, G, H, 0, false, nthreads);
    run_row_team(P1, rows, [&](index_t r0, index_t r1) {
      kern.lstm_bwd_pointwise(r1 - r0, H, 0, H, dz + r0 * G, dc0 + r0 * H, gates + r0 * G,
                              cells + r0 * H, c_init + r0 * H, dy ? dy + r0 * H : nullptr,
                              dh0 + r0 * H);
    });
    if (rows > 0)
      gemm(kern, rows, H, G, MatView{dz, G, 1}, MatView{W_hh, H, 1}, dh0, H, false, nthreads);
  } else if (!own_copies) {
    if (!unpacked_dh) pack_b_panels(kern, G, 0, H, MatView{W_hh, H, 1}, Wb);
    if (step_dx) pack_b_panels(kern, G, 0, I, MatView{W_ih, I, 1}, Wib);
  }

  StepBarrier step_barrier;
  if (!one_step) run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    // This thread's panels: thread 0 packs the workspace's, the others their copies.
    float* const Wb_p = own_copies && p > 0 ? copies + (p - 1) * copy : Wb;
    float* const Wib_p = own_copies && p > 0 ? Wb_p + wb_floats : Wib;
    if (own_copies) {
      pack_b_panels(kern, G, 0, H, MatView{W_hh, H, 1}, Wb_p);
      if (step_dx) pack_b_panels(kern, G, 0, I, MatView{W_ih, I, 1}, Wib_p);
    }
    index_t r0 = 0, r1 = B, j0 = 0, j1 = nbj;
    if (sched == Schedule::kUnits) {
      j0 = nbj * p / np;
      j1 = nbj * (p + 1) / np;
    }
    const index_t u0 = std::min(H, j0 * kern.NR), u1 = std::min(H, j1 * kern.NR);
    const int MR = kern.MR, NR = kern.NR;
    // Batch split: rows are independent (no barrier), re-balanced every kBalanceSteps steps
    // with batch_sizes (in grains of row_tile_grain(MR) rows).
    const bool rebalance = sched == Schedule::kBatch && bs && np > 1;
    const index_t seg = rebalance ? kBalanceSteps : T;
    index_t off = N;  // packed row of step t's row 0 (after the decrement below)
    for (index_t t = T - 1; t >= 0; --t) {
      if (sched == Schedule::kBatch && (T - 1 - t) % seg == 0) {
        const index_t s0 = std::max<index_t>(0, t + 1 - seg), s2 = std::min(T, t + 1 + seg);
        // Rows changing hands: their dh_next / dc_next must be written first.
        const index_t grain = row_tile_grain(MR);
        if (rebalance && t < T - 1 && split_changes(bs, t + 1, s2, s0, t + 1, B, grain, np))
          team_barrier();
        balanced_rows(bs, s0, t + 1, B, grain, p, np, &r0, &r1);
      }
      off -= bs ? bs[t] : B;
      float* dz_t = dz + off * G;
      const float* gates_t = gates + off * G;
      const float* c_prev = t == 0 ? c_init : cells + (t - 1) * B * H;
      const index_t re = bs ? std::min(r1, bs[t]) : r1;  // this step's active rows
      // Pointwise: this thread's units (all rows) or rows (all units).
      const float* dy_t = dy ? dy + t * B * H + r0 * H : nullptr;
      if (dy && order && re > r0 && u1 > u0) {
        float* g = dyg + p * B * H;
        for (index_t r = r0; r < re; ++r)
          std::memcpy(g + (r - r0) * H + u0, dy + (t * B + order[r]) * H + u0,
                      (u1 - u0) * sizeof(float));
        dy_t = g;
      }
      if (re > r0 && u1 > u0)
        kern.lstm_bwd_pointwise(re - r0, H, u0, u1, dz_t + r0 * G, dc0 + r0 * H,
                                gates_t + r0 * G, cells + t * B * H + r0 * H, c_prev + r0 * H,
                                dy_t, dh0 + r0 * H);
      // dZ_t's rows packed into MR-row slivers: read in place, rows 4H floats apart (a multiple
      // of 4 KiB at the usual sizes) fell into the same few L1 sets. Threads splitting the
      // columns pack their own columns of every row into a shared slab (two, alternating by
      // step, so a thread ahead never overwrites one still being read); threads owning rows
      // pack their rows into their own slab.
      const bool shared = sched == Schedule::kUnits;
      float* dzs = dzp + (shared ? (t & 1) : p) * slab;
      const index_t rbase = shared ? 0 : r0;
      if (B > 1 && re > r0) {
        if (shared) {
          for (int q = 0; q < 4; ++q)
            pack_a_slivers(kern, re, G, q * H + u0, q * H + u1, dz_t, G, dzs);
        } else {
          pack_a_slivers(kern, re - r0, G, 0, G, dz_t + r0 * G, G, dzs);
        }
      }
      if (sched == Schedule::kUnits && np > 1) team_barrier();
      // dh_next[:, my columns] = dZ_t . W_hh[:, my columns]  (reads every thread's dZ_t).
      // The depth 4H is walked in chunks of kKCb so a chunk of the packed panel stays in L1
      // while all row tiles pass over it; chunks accumulate into dh_next in a fixed order.
      if (unpacked_dh) {
        if (re > r0 && u1 > u0) kern.gemv_cols(u1 - u0, G, dz_t, W_hh + u0, H, dh0 + u0, false);
        continue;
      }
      for (index_t jr = j0; jr < j1; ++jr) {
        const int n = static_cast<int>(std::min<index_t>(NR, H - jr * NR));
        // The last full panel and a narrow last one (H = 100: 4 columns) in one pass.
        const int n2 = jr + 2 == j1 && j1 * NR >= H ? static_cast<int>(H - (jr + 1) * NR) : NR;
        const bool pair = B > 1 && n == NR && n2 < NR;
        for (index_t k0 = 0; k0 < G; k0 += kKCb) {
          const index_t kc = std::min(kKCb, G - k0);
          if (B == 1) {  // a single row: no MR-row tile
            if (re > r0)
              kern.gemv_panel(kc, dz_t + k0, Wb_p + (jr * G + k0) * NR, dh0 + jr * NR, n,
                              k0 > 0);
            continue;
          }
          for (index_t r = r0; r < re; r += MR) {
            const int m = static_cast<int>(std::min<index_t>(MR, re - r));
            const float* ap = dzs + (((r - rbase) / MR) * G + k0) * MR;
            const float* bp = Wb_p + (jr * G + k0) * NR;
            if (pair)
              kern.gemm_micro_pair(kc, ap, bp, bp + G * NR, dh0 + r * H + jr * NR, H, m, n2,
                                   k0 > 0);
            else
              kern.gemm_micro(kc, ap, bp, dh0 + r * H + jr * NR, H, m, n, k0 > 0);
          }
        }
        if (pair) ++jr;  // the narrow panel is done
      }
      if (step_dx && re > r0) {
        for (index_t r = r0; r < re; r += MR) {
          const int m = static_cast<int>(std::min<index_t>(MR, re - r));
          const float* ap = dzs + ((r - rbase) / MR) * G * MR;
          for (index_t pc = 0; pc < G; pc += kGemmKC)
            sliver_times_panels(kern, std::min(kGemmKC, G - pc), ap + pc * MR, Wib_p + pc * NR,
                                G * NR, I, dx + (t * B + r) * I, I, m, pc > 0);
        }
      }
    }
  });

  // Large GEMMs, each over all N active rows. The bias gradient (dZ's column sums) comes out of
  // the dW_ih GEMM's packing of dZ^T (no pass of its own over dZ).
  std::vector<float> dbs((db_ih || db_hh) ? static_cast<std::size_t>(G) : 0, 0.0f);
  float* sums = dbs.empty() ? nullptr : dbs.data();
  bool dual_done = false;  // dW_ih and dW_hh from one gemm_dual
  const bool ih_acc = !(fresh & 1u);  // the one dW_ih product adds, or writes
  bool hh_acc = !(fresh & 2u);        // the first dW_hh product writes when fresh
  if (ids) {
    // Embedding input: dZ's rows summed per token (S, V rows), then the two products over V
    // rows instead of T*B; S's column sums (dZ's) come out of the first, as above.
    scatter_rows(N, G, V, ids, dz, S, nthreads);
    gemm(kern, G, I, V, MatView{S, 1, G}, MatView{E, I, 1}, dW_ih, I, ih_acc, nthreads, nullptr,
         nullptr, sums);
    gemm(kern, V, I, G, MatView{S, G, 1}, MatView{W_ih, I, 1}, dE, I, true, nthreads);
  } else if (!bs) {
    if (need_dx && !step_dx)
      gemm(kern, N, I, G, MatView{dz, G, 1}, MatView{W_ih, I, 1}, dx, I, false, nthreads);
    if ((h0 || T > 1) && dual_floats > 0) {
      // Both weight gradients in one pass over dZ^T: h_prev's rows are h0's (zeros without
      // h0), then the outputs of steps 0 .. T-2.
      gemm_dual(kern, G, N, MatView{dz, 1, G}, I, RowSource{x, I, N, nullptr, 0}, dW_ih, I,
                ih_acc, H, RowSource{h0, H, B, y, H}, dW_hh, H, hh_acc, dual, nthreads, sums);
      hh_acc = dual_done = true;
    } else {
      gemm(kern, G, I, N, MatView{dz, 1, G}, MatView{x, I, 1}, dW_ih, I, ih_acc, nthreads,
           nullptr, nullptr, sums);
    }
  }
  if (dual_done) {
    // dW_hh came with dW_ih
  } else if (!bs) {
    h_prev_products(kern, G, H, dz, h0, B, y, (T - 1) * B, dW_hh, &hh_acc, nthreads);
  } else {  // never read the padding of x (it may hold anything, NaN included) or of y
    // dx's storage first holds x's active rows, packed: the operand of dW_ih; then dx itself.
    pack_steps(dx, x, I, B, bs, 0, T, nthreads, order);
    // dW_hh: step 0 against h0's active rows, steps 1.. against the previous outputs (packed).
    const index_t n1 = N - bs[0];
    if (n1 > 0) pack_previous_steps(hp, y, H, B, bs, T, nthreads, order);
    if ((h0 || n1 > 0) && dual_floats > 0) {
      // Both weight gradients in one pass over dZ^T, as without lengths (h0's rows: zeros
      // without h0).
      gemm_dual(kern, G, N, MatView{dz, 1, G}, I, RowSource{dx, I, N, nullptr, 0}, dW_ih, I,
                ih_acc, H, RowSource{h0, H, bs[0], hp, H}, dW_hh, H, hh_acc, dual, nthreads,
                sums);
      hh_acc = true;
    } else {
      gemm(kern, G, I, N, MatView{dz, 1, G}, MatView{dx, I, 1}, dW_ih, I, ih_acc, nthreads,
           nullptr, nullptr, sums);
      h_prev_products(kern, G, H, dz, h0, bs[0], hp, n1, dW_hh, &hh_acc, nthreads);
    }
    if (need_dx) {
      gemm(kern, N, I, G, MatView{dz, G, 1}, MatView{W_ih, I, 1}, dx, I, false, nthreads);
      unpack_steps_in_place(dx, I, B, bs, T, order);
    }
  }
  if (!hh_acc) zero_fresh(2u);  // no product reached dW_hh (one step from a zero state)
  for (index_t j = 0; sums && j < G; ++j) {
    if (db_ih) db_ih[j] = (fresh & 4u) ? sums[j] : db_ih[j] + sums[j];
    if (db_hh) db_hh[j] = (fresh & 8u) ? sums[j] : db_hh[j] + sums[j];
  }
}

// Wp[((ub * K + k) * 4 + q) * W + w] = W_hh[q*H + ub*W + w, k], zero for units >= H. The depth
// is walked in blocks of kPackK so that the block of the panel being written (kPackK x 4 x W
// floats, 16 KiB at W = 16) stays in L1 while its 4W source rows are read: a whole-depth sweep
// per source row re-fetched each panel line 4W times (it dominated calls with few steps).
// A last block of few units is packed densely instead (lstm_dense_tail_vectors): its n units'
// four gates side by side, Wp[ub * K * 4W + k * NV * W + q * n + w], zeros up to NV * W.
void pack_lstm_panels(const Kernels& kern, index_t H, index_t K, index_t ub, const float* W_hh,
                      float* Wp) {
  const int W = kern.W;
  constexpr index_t kPackK = 64;
  float* panel = Wp + ub * K * 4 * W;
  if (const int nv = lstm_dense_tail_vectors(W, H, ub)) {
    const index_t n = H - ub * W, ld = nv * W;
    for (index_t k0 = 0; k0 < K; k0 += kPackK) {
      const index_t k1 = std::min(K, k0 + kPackK);
      for (index_t k = k0; k < k1; ++k)
        for (index_t j = 4 * n; j < ld; ++j) panel[k * ld + j] = 0.0f;
      for (int q = 0; q < 4; ++q)
        for (index_t w = 0; w < n; ++w) {
          const float* src = W_hh + (q * H + ub * W + w) * K;
          float* dst = panel + q * n + w;
          for (index_t k = k0; k < k1; ++k) dst[k * ld] = src[k];
        }
    }
    return;
  }
  // Each gate's W source rows are transposed into its W lanes (transpose_rows: 4 x 4 blocks
  // through registers, where one float per store to lines 4W floats apart made this pack 44 %
  // of a forward at T = 10, B = 3, I = 300, H = 700); lanes of units >= H are zero.
  const int rows = static_cast<int>(std::min<index_t>(W, H - ub * W));
  for (index_t k0 = 0; k0 < K; k0 += kPackK) {
    const index_t k1 = std::min(K, k0 + kPackK);
    for (int q = 0; q < 4; ++q) {
      float* dst = panel + k0 * 4 * W + q * W;
      transpose_rows(W_hh + (q * H + ub * W) * K + k0, K, rows, k1 - k0, 4 * W, dst);
      for (index_t k = 0; k < k1 - k0; ++k)
        for (int w = rows; w < W; ++w) dst[k * 4 * W + w] = 0.0f;
    }
  }
}

// db_a[j] (and db_b[j]) += sum over rows of dz[:, j]: threads own blocks of 64 columns, each
// column summed over the rows in order (the same bits for any thread count).
void bias_sums(index_t rows, index_t G, const float* dz, float* db_a, float* db_b,
               int nthreads) {
  if (!db_a && !db_b) return;
  const int P = G >= 256 ? nthreads : 1;
  const index_t blocks = (G + 63) / 64;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(P) schedule(static) if (P > 1)
#endif
  for (index_t blk = 0; blk < blocks; ++blk) {
    float acc[64];
    const index_t c0 = blk * 64, n = std::min<index_t>(64, G - c0);
    for (index_t j = 0; j < n; ++j) acc[j] = 0.0f;
    for (index_t r = 0; r < rows; ++r) {
      const float* row = dz + r * G + c0;
      for (index_t j = 0; j < n; ++j) acc[j] += row[j];
    }
    for (index_t j = 0; j < n; ++j) {
      if (db_a) db_a[c0 + j] += acc[j];
      if (db_b) db_b[c0 + j] += acc[j];
    }
  }
}

}  // namespace lstm_fast
