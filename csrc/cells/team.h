// Helpers shared by the recurrent cores (lstm.cpp, lstm_proj.cpp, gru.cpp): unit blocks of the
// packed panels, the step chunking of the hoisted input projection and the batch split's own-rows
// blocks of it (the team helpers team_id, team_size, team_barrier are in dispatch.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cells/lstm.h"
#include "dispatch.h"
#include "gemm/gemm.h"
#include "kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {

// Whether a forward reads the weights' rows in place (dot products over them, kernel gemm_nt,
// rows four at a time) instead of packing W_hh into panels and W_ih^T for the projection GEMM:
// for few rows in all, packing costs more than the steps save. At most 4 rows in all; at most
// two steps of at most 64 rows in all; from H = 256, a batch of one for at most 16 steps or of
// at most four for 8 (the same for the LSTM, GRU and RNN). In-process A/B, 2 threads, forward,
// I = H, time unpacked / packed: T = 1, B = 32, H = 512 LSTM 0.66; 64 rows 0.78 (T = 1, H =
// 256), GRU 0.67 (H = 512); 128 rows 1.09-1.11 (H = 256), 256 rows 1.85-1.89 (H = 512); B = 1,
// T = 8 and 16: LSTM 0.56-0.75, GRU 0.33-0.55 (H = 256, 512), 32: 0.73-1.31; B = 4, T = 8:
// 0.73-0.85, 16: 0.95-1.12; H = 128: T = 8 0.99-1.00 (LSTM), 16 1.12-1.17.
// A gated cell (LSTM, GRU: 4 or 3 gates) of more than 16 rows in all is unpacked only where
// each row's dot products are long enough, I + H >= 8 rows: short ones (I + H of a few hundred)
// spend more on each output's lane sum than packing the weights once costs (GRU / LSTM time
// packed / unpacked, T = 1, 2 threads: B = 64, I = 3, H = 64 0.38 / 0.48; B = 48, I = H = 100
// 0.55 / 0.68; B = 32, I = 3, H = 128 0.65 / 0.68; B = 64, I = 256, H = 128 0.82 / 0.79; but
// B = 32, I = 256, H = 128 0.99 / 1.16 and I = H = 256 1.81 / 2.01, kept unpacked). The RNN
// (one gate) was faster unpacked at every such shape measured (B = 64, I = H = 100: packed 1.21).
inline bool unpacked_forward(index_t T, index_t B, index_t H, index_t I = 0, bool gated = false) {
  if (T * B <= 4) return true;
  if (T <= 2) return T * B <= 64 && (!gated || T * B <= 16 || I + H >= 8 * T * B);
  if (H < 256) return false;
  return (B == 1 && T <= 16) || (B <= 4 && T <= 8);
}

// Whether a backward reads the weights' rows in place instead of packing W_hh (and running the
// weight gradients and dx through the packed GEMM): at most kUnpackedBackwardRows rows in all
// (T * B; e.g. the cells' training step, T = 1, B = 1..4); for the LSTM (one_row_kernel: its
// packed step has a kernel of its own for a batch of one) with B = 1 only up to 4 steps (with
// a projection, lstm_proj.cpp, at most 4 rows in all). Its per-step product dh_prev = dZ_t .
// W_hh streams W_hh's rows, every thread its own columns (rows_times_weights), where packing would read W_hh, write its panels and read them again
// for a product of a few rows; the weight gradients of depth T * B are written row by row
// (each row of dW once, no zeroing pass), dx streams W_ih's rows (unpacked_grads). The same
// arithmetic as the packed path element by element (sums from zero in the GEMM's depth
// blocks), so where that path's order is the same (dW's blocks, the recurrent product in the
// same blocks) the bits are too. In-process A/B, backward only, time packed / unpacked, 1
// thread: T = 1, B = 2, I = 1, H = 512 GRU 2.07, LSTM 1.75, RNN 2.14; 16 rows: GRU 1.16-1.58
// (T = 16, B = 1; H = 64, 512), 1.42-1.46 (B = 16), LSTM B = 16 1.14-1.22, T = 2, B = 8 1.25,
// but LSTM B = 1: T = 16 0.83-1.03, T = 8 0.92 (H = 64) - 1.19, T = 4 1.13-1.33. 2 threads:
// 16 rows GRU 1.54-2.44, RNN 2.71 (B = 16, H = 512), LSTM 1.05 (H = 64) - 2.52; 32 rows
// GRU 1.34-1.94, LSTM 1.15; 64 rows GRU 0.95-1.10.
// unpacked_backward_enabled(): false only for tests and A/B timing (_set_unpacked_backward).
constexpr index_t kUnpackedBackwardRows = 16;
bool unpacked_backward_enabled();
void set_unpacked_backward_enabled(bool on);
inline bool unpacked_backward(index_t T, index_t B, bool one_row_kernel = false) {
  if (T * B > kUnpackedBackwardRows || !unpacked_backward_enabled()) return false;
  return B > 1 || T <= 4 || !one_row_kernel;
}

// out[r, c] (= or +=) sum over j < G of dz[r * ldz + j] * Wm[j * ldw + c], for rows r < rows
// and columns [c0, c1): rows of dZ times a row-major weight matrix, nothing packed, the depth
// in blocks of kGemmKC (each summed from zero, then stored or added, the first one stored
// unless accumulate): the packed GEMM's per-element arithmetic.
void rows_times_weights(const Kernels& kern, index_t rows, index_t G, index_t c0, index_t c1,
                        const float* dz, index_t ldz, const float* Wm, index_t ldw, float* out,
                        index_t ldo, bool accumulate);

// The products after an unpacked backward's step loop (unpacked_backward), run by every thread
// p of a team of np (after the loop's last barrier), each on its own part: dx's columns (of I),
// the weight gradients' rows and the bias sums' elements (of G). Nothing two threads write
// overlaps, and each element is summed in one fixed order: bitwise the same for any np.
struct UnpackedGrads {
  index_t T, B, I, H, G;
  const index_t* bs;      // batch_sizes (T) or null: dz's rows packed, N = sum(bs)
  const int64_t* order;   // with bs: the caller's row of sorted row r (dx's rows), or null
  index_t N;              // rows of dz
  const float* dzx;       // (N, G): gradients of x . W_ih^T (+ b_ih): dx, dW_ih, db_ih
  const float* dzh;       // (N, G): of h . W_hh^T (+ b_hh): dW_hh, db_hh (may be dzx)
  const float* xr;        // (N, I): x's rows of dz's rows
  const float* hr;        // (N - h_skip, H): h_prev's rows of dz's rows [h_skip, N)
  index_t h_skip;         // dz's first rows whose h_prev is zero (step 0 without h0)
  index_t h_split;        // > 0: dW_hh summed in two blocks, rows [0, h_split), then the rest
                          // (as the packed path's two products h0 / later steps); 0: one
  const float* W_ih;      // (G, I)
  float* dx;              // (T, B, I) or null (not needed)
  float* dW_ih;           // (G, I)
  float* dW_hh;           // (G, H)
  float* db_ih;           // (G) or null
  float* db_hh;           // (G) or null
  unsigned fresh;         // bits: dW_ih, dW_hh, db_ih, db_hh written (=) rather than added to

  // The sizes and rows, and the operands of the products, every cell's unpacked backward hands
  // over alike (order, for the LSTM's unsorted rows, is set apart).
  void set_rows(index_t t, index_t b, index_t i, index_t h, index_t g, const index_t* bs_,
                index_t n) {
    T = t, B = b, I = i, H = h, G = g, bs = bs_, N = n;
  }
  void set_operands(const float* dz_x, const float* dz_h, const float* x_rows,
                    const float* h_rows, index_t skip, index_t split) {
    dzx = dz_x, dzh = dz_h, xr = x_rows, hr = h_rows, h_skip = skip, h_split = split;
  }
  // The weights and gradients every cell's unpacked backward hands over alike.
  void set_outputs(const float* w_ih, float* dx_, float* dw_ih, float* dw_hh, float* db_ih_,
                   float* db_hh_, unsigned fresh_) {
    W_ih = w_ih, dx = dx_, dW_ih = dw_ih, dW_hh = dw_hh, db_ih = db_ih_, db_hh = db_hh_;
    fresh = fresh_;
  }
};
void unpacked_grads(const Kernels& kern, const UnpackedGrads& g, int p, int np);

// The fresh bits of a backward (UnpackedGrads::fresh) without those of absent biases; where
// neither path writes them (zero_first: a backward with nothing to compute, which returns
// early), the gradients to be written are zeroed here. dW_ih (G x I), dW_hh (G x H), db_ih and
// db_hh (G). (The unpacked path and backward_products write fresh gradients in their first
// pass instead of adding into zeros.)
inline unsigned start_fresh_grads(unsigned fresh, bool zero_first, index_t G, index_t I,
                                  index_t H, float* dW_ih, float* dW_hh, float* db_ih,
                                  float* db_hh) {
  if (!db_ih) fresh &= ~4u;
  if (!db_hh) fresh &= ~8u;
  if (zero_first) {
    if (fresh & 1u) std::memset(dW_ih, 0, G * I * sizeof(float));
    if (fresh & 2u) std::memset(dW_hh, 0, G * H * sizeof(float));
    if (fresh & 4u) std::memset(db_ih, 0, G * sizeof(float));
    if (fresh & 8u) std::memset(db_hh, 0, G * sizeof(float));
  }
  return fresh;
}

// [c0, c1) of n columns (hidden units, input features) for thread p of np, on multiples of 16
// floats (whole 64-byte lines: no line written by two threads).
void line_slice(index_t n, int p, int np, index_t* c0, index_t* c1);

// body(p, np, a, b) on a team of P threads (flush-to-zero, the fast step barrier), thread p of
// np owning the slice [a, b) that slice(p, np, &a, &b) gives it.
template <class S, class F>
void run_sliced_team(int P, S&& slice, F&& body) {
  StepBarrier step_barrier;
  run_team(P, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    index_t a, b;
    slice(p, np, &a, &b);
    body(p, np, a, b);
  });
}

// body(p, np, u0, u1) with thread p owning the units [u0, u1) of H (line_slice): the unpacked
// backwards' team region.
template <class F>
void run_unit_team(int P, index_t H, F&& body) {
  run_sliced_team(
      P, [H](int p, int np, index_t* a, index_t* b) { line_slice(H, p, np, a, b); }, body);
}

// dW[j, :] (= or +=) sum over dz's rows k in [k0, k1) of dz[k * G + j] * src[(k - k0) * n + :]
// for the rows j in [j0, j1) of dW (n columns): dZ^T . src as rows of dW, each row written once
// per depth block of kGemmKC (the packed GEMM's blocks: its bits); no rows and !accumulate:
// zeros. (unpacked_grads's weight gradients; lstm_proj.cpp's dW_hr.)
void unpacked_weight_rows(const Kernels& kern, index_t j0, index_t j1, index_t n, index_t G,
                          index_t k0, index_t k1, const float* dz, const float* src, float* dW,
                          bool accumulate);

// The rows of h_prev for dz's rows [h_skip, N) into hr (floats for (N, H) reserved by the
// caller), or a pointer to them in place: h0's rows for step 0 (with h0; without it h_skip =
// step 0's rows, which are zero), then each later step's active rows of the previous outputs
// y (row order[r] of a step for sorted row r with order). *h_skip is set.
const float* unpacked_h_prev(float* hr, const float* h0, const float* y, index_t T, index_t B,
                             index_t H, const index_t* bs, const int64_t* order,
                             index_t* h_skip);

// The threads of an unpacked backward: one below kUnpackedCallFma multiply-adds in all (dh,
// dx, dW_ih, dW_hh: 2 N G (H + I)) or kUnpackedStepFma in a step's product (B G H), where the
// team's wake-up and its barrier per step cost more than the second thread saves; else
// small_call_threads. 1 under a forced serial schedule, all under another forced one. Results
// do not depend on it. In-process, backward, 2 threads against 1 (H = 64, I = 17): RNN T = 16,
// B = 1 (4 k per step) 15.5 against 8.4 us, GRU (12 k per step, 0.5 M in all) 30.4 against
// 26.7; LSTM T = 1, B = 16 (0.26 M per step, 0.66 M in all) 24.3 against 22.3; GRU T = 1, B = 1,
// I = 100, H = 256 (0.55 M in all) 36 against 93.
constexpr double kUnpackedStepFma = 1 << 15;
constexpr double kUnpackedCallFma = 1 << 19;
int unpacked_backward_threads(index_t B, index_t N, index_t G, index_t I, index_t H,
                              int nthreads);

// The unpacked backwards' team region (gru.cpp, rnn.cpp, lstm.cpp), on unpacked_backward_threads
// of g's sizes: threads own units [u0, u1) (run_unit_team); for t = T - 1 .. 0,
// pointwise(p, t, rows, off, u0, u1) writes step t's rows of g.dzx / g.dzh for those units
// (called only with rows and units; off: the packed row of step t's row 0), the team meets,
// and dh_next[:, units] = (or += with `accumulate`: the GRU's step leaves dh * z there)
// g.dzh_t . W_hh[:, units] (rows_times_weights; rows past `rows` pass through). After the
// loop, the team meets again and computes dx, the weight gradients and the bias sums
// (unpacked_grads).
template <class F>
void run_unpacked_backward(const Kernels& kern, const UnpackedGrads& g, int nthreads,
                           const float* W_hh, float* dh0, bool accumulate, F&& pointwise) {
  const int P = unpacked_backward_threads(g.B, g.N, g.G, g.I, g.H, nthreads);
  run_unit_team(P, g.H, [&](int p, int np, index_t u0, index_t u1) {
    index_t off = g.N;  // packed row of step t's row 0 (after the decrement below)
    for (index_t t = g.T - 1; t >= 0; --t) {
      const index_t rows = g.bs ? g.bs[t] : g.B;
      off -= rows;
      if (rows > 0 && u1 > u0) pointwise(p, t, rows, off, u0, u1);
      if (np > 1) team_barrier();
      rows_times_weights(kern, rows, g.G, u0, u1, g.dzh + off * g.G, g.G, W_hh, g.H, dh0, g.H,
                         accumulate);
    }
    if (np > 1) team_barrier();  // every unit of dZ written
    unpacked_grads(kern, g, p, np);
  });
}

// The threads of a GRU's or RNN's unpacked forward (dot products over the weights' rows, the
// units split between threads): one while its weights (G x (I + H) floats) take less than
// 256 KiB, where the second thread did not pay for its wake-up and the barrier per step even
// at a million multiply-adds (T = 1, in-process, 2 threads against 1: RNN I = H = 100, B = 16
// 1.17, B = 64 1.00; I = H = 128, B = 64 0.98; GRU I = H = 100 (234 KiB), B = 8 1.23, B = 16
// 1.12; but GRU I = H = 128 (384 KiB), B = 16 0.80, RNN I = H = 256 (512 KiB), B = 8 0.81);
// else small_call_threads. 1 under a forced serial schedule, all under another forced one
// (results do not depend on it). The LSTM's own unpacked forward keeps small_call_threads (it
// scaled from 128 KiB: I = H = 64, B = 16 0.86).
inline int unpacked_forward_threads(index_t G, index_t I, index_t H, index_t T, index_t B,
                                    int nthreads) {
  const Schedule forced = schedule_override();
  if (forced == Schedule::kSerial) return 1;
  if (forced != Schedule::kAuto) return nthreads;
  const double weights = static_cast<double>(G) * static_cast<double>(I + H);
  if (weights < double(1 << 16)) return 1;
  // (in double: an integer product of weights and rows could wrap)
  return small_call_threads(weights * static_cast<double>(T) * static_cast<double>(B), nthreads);
}

// Blocks of W hidden units (the packed W_hh panels' width), the last one padded.
inline index_t num_unit_blocks(const Kernels& k, index_t H) { return (H + k.W - 1) / k.W; }

// The input projection is computed for a chunk of steps at a time, so it is still in cache when
// the recurrence reads it and the inference workspace stays bounded: the whole sequence at once
// when its pre-activations take at most kWholeFloats (4 MiB), else chunks of kChunkFloats
// (1 MiB: with the batch split each core streams all of W_hh every step, 1 MiB at H = 256, and
// its half of a chunk must fit next to it in a 2 MiB L2). In-process alternating A/B on 2
// threads, S1 forward (12.5 MiB of pre-activations): 2 MiB chunks 0.91-1.0x the time of 8 MiB
// ones, 1 MiB chunks 0.94x (twice) the time of 2 MiB ones, 512 KiB 0.98x; 1 thread S1 0.95x,
// (200, 64, 256, 256) 0.94x; S2 forward and S1/S2 training within +-2 %. S6 (2.5 MiB) in 2 MiB
// chunks was 2-5 % slower than in one, hence the whole-sequence bound.
constexpr index_t kChunkFloats = index_t(1) << 18;
constexpr index_t kWholeFloats = index_t(1) << 20;
inline index_t chunk_steps(const LstmSizes& s) {
  const index_t per_step = std::max<index_t>(1, s.B * 4 * s.H);
  // T * per_step <= kWholeFloats, without forming the product: T * B * 4H is not bounded by any
  // array of an inference call with a projection (y is (T, B, P)), and could wrap.
  if (s.T <= kWholeFloats / per_step) return std::max<index_t>(1, s.T);
  return std::max<index_t>(1, std::min<index_t>(s.T, kChunkFloats / per_step));
}

// The hoisted input projection of an LSTM (with or without projection): xp[r] = b_ih + b_hh +
// x[r] . W_ih^T for `rows` rows (biases may be null); Wip: W_ih^T packed beforehand, or null.
inline void input_projection(const Kernels& kern, index_t rows, index_t G, index_t I,
                             const float* x, const float* W_ih, const float* b_ih,
                             const float* b_hh, float* xp, int nthreads,
                             const float* Wip = nullptr) {
  gemm_bias2(kern, rows, G, I, MatView{x, I, 1}, MatView{W_ih, 1, I}, xp, G, b_ih, b_hh,
             nthreads, Wip);
}

// One step of many rows, where no recurrence amortises packing (the cells' one-step paths,
// one_step_gemm in lstm.cpp and gru.cpp, rnn_forward): the pre-activations come from GEMMs
// that pack each block of the weights just before using it, where the recurrent paths pack
// W_hh whole first (written, then read back from L2 or L3: for one step about as costly as the
// product) and run a step kernel made for long sequences. Taken past the unpacked path's rows
// (unpacked_forward) when the weights (G x (I + H) floats) are large: from 768 KiB for the
// LSTM and GRU, from 256 KiB and 128 rows for the RNN. Below that the batch split with the
// weights packed into its own cache stays faster. In-process A/B, 2 threads, Xeon (2 MiB L2),
// forward time new / old, (B, I, H): LSTM (128, 100, 256) 0.85, (64, 100, 256) 0.72,
// (32, 256, 256) 0.84, (64, 200, 200) 0.66, (128, 512, 512) 0.75, (8, 64, 512) 0.88, but
// (128, 128, 128) 1.07 and (256, 64, 64) 1.41; GRU (128, 100, 256) 0.72, (64, 100, 256) 0.67,
// (64, 200, 200) 0.84, (128, 1024, 1024) 0.86, (32, 256, 256) and (64, 512, 512) 0.99-1.04,
// (256, 128, 128) 1.15; RNN (128, 100, 256) 0.77-0.81, (128, 512, 512) 0.76,
// (256, 256, 256) 0.93, 32 or 64 rows 0.99-1.01, (256, 128, 128) 1.29. The backwards of the
// same shapes (past unpacked_backward's rows) take dh0 = dZ . W_hh from the GEMM as well, after
// the pointwise step: backward time new / old LSTM (32, 256, 256) 0.90, (128, 512, 512) 0.88,
// (128, 100, 256) 0.99; GRU (65, 17, 300) 0.89, (128, 512, 512) 0.96, (128, 100, 256) 1.01;
// RNN (128, 100, 256) 0.92, (128, 512, 512) 0.89, (256, 256, 256) 0.84.
inline bool one_step_weights(index_t G, index_t I, index_t H, double min_bytes) {
  return 4.0 * static_cast<double>(G) * static_cast<double>(I + H) >= min_bytes;
}
constexpr double kOneStepGatedBytes = 768 << 10;
constexpr double kOneStepRnnBytes = 256 << 10;
constexpr index_t kOneStepRnnRows = 128;
// The LSTM's and GRU's few-step form (one_step_gemm in lstm.cpp, gru.cpp): up to two steps of
// at most 96 rows, with every row active. GRU forward new / old, 2 threads: (2, 64, 256, 256)
// 0.81, (2, 48, 300, 300) 0.79, (2, 64, 100, 256) 0.87, (2, 96, 256, 256) 0.89; one thread
// 1.02. LSTM forward new / old (the packed path), 2 threads, (T, B, I, H):
// (2, 64, 256, 256) 0.81, (2, 48, 300, 300) 0.79, (2, 40, 200, 200) 0.90, (2, 96, 256, 256)
// 0.91, (2, 128, 512, 512) 0.88, (2, 128, 100, 256) 1.00 (1.07 on one thread: the row bound);
// three steps gain less or lose where W_hh packed once serves all of them: (3, 32, 512, 512)
// 0.78, (3, 64, 256, 256) 0.91, but (3, 64, 100, 256) 1.03, (3, 128, 100, 256) 1.07.
constexpr index_t kOneStepMaxT = 2;
constexpr index_t kOneStepMaxRows = 96;

// The columns [n0, n1) of the one-step paths' products, on the calling thread (a team member):
// xp[r, n0:n1] = bias[n0:n1] (0 when null) + x[r] . W_ih[n0:n1]^T for rows_x rows, then
// h0[r] . W_hh[n0:n1]^T for the first rows_h of them, added to xp or written to hw[r, n0:n1]
// when hw is given; h0 null: zero (nothing computed). Each element is summed as one GEMM
// (gemm_bias2, gemm) over all columns would sum it, so the bits do not depend on how the
// columns are split.
inline void one_step_columns(const Kernels& kern, index_t rows_x, index_t rows_h, index_t G,
                             index_t I, index_t H, index_t n0, index_t n1, const float* x,
                             const float* h0, const float* W_ih, const float* W_hh,
                             const float* bias, float* xp, float* hw) {
  if (n1 <= n0 || rows_x <= 0) return;
  const index_t n = n1 - n0;
  if (hw && !h0)
    for (index_t r = 0; r < rows_h; ++r) std::memset(hw + r * G + n0, 0, n * sizeof(float));
  // C (+)= A . W[n0:n1]^T (bias first when given) for `rows` rows of A (depth K): A's rows read
  // in place (gemm_rows_serial) where the depth is short or the thread's columns few, else
  // packed. In place, each panel re-reads the rows as a dozen streams: with 16 panels of depth
  // 256-300 (the LSTM's two-step form) that took 1.04-1.05x the time of packing them, where
  // with depth 100 or 4 panels (the RNN's H = 256 on 2 threads) it saved 4-12 %.
  auto product = [&](index_t rows, index_t K, const float* A, const float* W, float* C,
                     bool acc, const float* b) {
    const MatView Wt{W + n0 * K, 1, K};
    if (K <= 128 || n <= 4 * kern.NR)
      gemm_rows_serial(kern, rows, n, K, A, K, Wt, C + n0, G, acc, b);
    else if (acc)
      gemm_serial(kern, rows, n, K, MatView{A, K, 1}, Wt, C + n0, G, true);
    else
      gemm_packed_serial(kern, rows, n, K, MatView{A, K, 1}, Wt, C + n0, G, b);
  };
  // bias + x . W_ih^T, the bias written into each tile just before its first depth block (as
  // if filled first: the same sums, without a pass of its own over xp)
  product(rows_x, I, x, W_ih, xp, false, bias ? bias + n0 : nullptr);
  if (!h0 || rows_h <= 0) return;
  float* c = hw ? hw : xp;
  product(rows_h, H, h0, W_hh, c, hw == nullptr, nullptr);
}

// dW (G x F) (+)= dz^T . h_prev for a recurrent weight gradient, h_prev's rows being h0's n0
// rows (none without h0: they are zeros) and then n1 rows of `later` (the previous outputs,
// packed with lengths), dz's rows in the same order: one GEMM per part. The first product
// writes dW when *acc is false (a fresh gradient), and *acc is true after any product (still
// false when none ran: the caller zeroes a fresh dW). sums: dz's column sums, added by the
// products as they pack dz^T (gemm's a_sums), or null.
inline void h_prev_products(const Kernels& kern, index_t G, index_t F, const float* dz,
                            const float* h0, index_t n0, const float* later, index_t n1,
                            float* dW, bool* acc, int nthreads, float* sums = nullptr) {
  if (h0 && n0 > 0) {
    gemm(kern, G, F, n0, MatView{dz, 1, G}, MatView{h0, F, 1}, dW, F, *acc, nthreads, nullptr,
         nullptr, sums);
    *acc = true;
  }
  if (n1 > 0) {
    gemm(kern, G, F, n1, MatView{dz + n0 * G, 1, G}, MatView{later, F, 1}, dW, F, *acc,
         nthreads, nullptr, nullptr, sums);
    *acc = true;
  }
}

// dst[r, u0:u1] = src[r, u0:u1] for rows of width H: a one-step team's units of its outputs
// into the final state while they are in its cache (no serial pass over the state after the
// team region; 128 KiB at B = 128, H = 256).
inline void copy_columns(index_t rows, index_t H, index_t u0, index_t u1, const float* src,
                         float* dst) {
  if (u1 <= u0) return;
  for (index_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * H + u0, src + r * H + u0, (u1 - u0) * sizeof(float));
}

// A thread's share [n0, n1) of G columns split in blocks of `grain` (team_id p of np).
inline void column_share(index_t G, index_t grain, int p, int np, index_t* n0, index_t* n1) {
  const index_t nblk = (G + grain - 1) / grain;
  *n0 = std::min(G, nblk * p / np * grain);
  *n1 = std::min(G, nblk * (p + 1) / np * grain);
}

// body(p, np, n0, n1) with thread p owning the columns [n0, n1) of G in blocks of `grain`
// (column_share): the one-step paths' team region.
template <class F>
void run_column_team(int P, index_t G, index_t grain, F&& body) {
  run_sliced_team(
      P, [G, grain](int p, int np, index_t* a, index_t* b) { column_share(G, grain, p, np, a, b); },
      body);
}

// body(r0, r1) on a team of P threads (flush-to-zero), thread p of np owning the rows [r0, r1)
// of `rows` when not empty: the one-step backwards' pointwise steps.
template <class F>
void run_row_team(int P, index_t rows, F&& body) {
  run_team(P, [&] {
    DenormalGuard ftz;
    const int p = team_id(), np = team_size();
    const index_t r0 = rows * p / np, r1 = rows * (p + 1) / np;
    if (r1 > r0) body(r0, r1);
  });
}

// The team of a one-step path: small_call_threads of its multiply-adds, one under a forced
// serial schedule.
inline int one_step_threads(index_t rows, index_t G, index_t I, index_t H, bool h0,
                            int nthreads) {
  if (schedule_override() == Schedule::kSerial) return 1;
  const double fma = static_cast<double>(rows) * static_cast<double>(G) *
                     static_cast<double>(I + (h0 ? H : 0));
  return small_call_threads(fma, nthreads);
}

// The batch split's own-rows input projection (lstm.cpp, gru.cpp) projects a block of at least
// this many of a thread's rows at once (a step's rows when more), over several steps when its
// rows per step are fewer, so that W_ih^T streams through its cache once per block:
// kOwnProjRows while the packed W_ih^T (G x I) takes at most half of L2 (each thread keeps a
// copy there, private_copy_floats, and larger blocks only evict it), kOwnProjRowsStreamed when
// it is larger and comes from L3 for every block. But at most T * B / nthreads rows (0: blocks
// of one step), so that the buffers stay within about the size of x's rows and the
// pre-activations of all steps: with a fixed count alone they grew with the thread count
// whatever the problem (T = 3, B = 2, I = 5000 on 64 threads took an 83 MB workspace for a
// 120 kB x; the kernels run on up to as many threads as the process has CPUs). In-process A/B,
// 2 threads, LSTM forward, 256 rows against 64 where W_ih^T is larger: S2 0.953x the time,
// (50, 32, 384, 384) 0.949x, (50, 16, 512, 512) 0.968x, (100, 64, 1024, 256) 0.978x,
// (50, 64, 256, 512) 0.964x (128 rows: S2 0.968x); at S1 (W_ih^T 1 MiB) 256 rows took 1.039x.
constexpr index_t kOwnProjRows = 64;
constexpr index_t kOwnProjRowsStreamed = 256;
inline index_t own_proj_block_rows(index_t G, index_t I, index_t rows, int nthreads) {
  const double packed_bytes = 4.0 * static_cast<double>(G) * static_cast<double>(I);
  const bool streamed = packed_bytes > 0.5 * static_cast<double>(l2_cache_bytes());
  return std::min<index_t>(streamed ? kOwnProjRowsStreamed : kOwnProjRows,
                           rows / std::max(1, nthreads));
}

// The batch split's own-rows input projection (lstm.cpp, gru.cpp), one block: the active rows
// among [r0, r1) of steps t0, t0 + 1, ... (bs null: all B rows active), while the steps last
// (to t1) and the rows fit in cap, are gathered from x (row order[r] of a step for sorted row r
// when order is given) into xg, then xo = bias + xg . W_ih^T (G columns; W_ih^T packed in Wip,
// bias may be null). The rows follow each other step by step. Returns the block's end step.
inline index_t project_rows_block(const Kernels& kern, const float* x, index_t B, index_t I,
                                  index_t G, const index_t* bs, const int64_t* order, index_t t0,
                                  index_t t1, index_t r0, index_t r1, index_t cap,
                                  const float* W_ih, const float* bias, const float* Wip,
                                  float* xg, float* xo) {
  index_t m = 0, u = t0;
  for (; u < t1; ++u) {
    const index_t n = std::max<index_t>(0, std::min(r1, bs ? bs[u] : B) - r0);
    if (n == 0 || m + n > cap) break;
    if (order) {
      for (index_t r = r0; r < r0 + n; ++r)
        std::memcpy(xg + (m + r - r0) * I, x + (u * B + order[r]) * I, I * sizeof(float));
    } else {
      std::memcpy(xg + m * I, x + (u * B + r0) * I, n * I * sizeof(float));
    }
    m += n;
  }
  gemm_packed_serial(kern, m, G, I, MatView{xg, I, 1}, MatView{W_ih, 1, I}, xo, G, bias, Wip);
  return u;
}

// Threads that split the batch all read the same packed weights every step. Where those fit
// twice over in one core's L2 (at most half of it), each thread packs a copy of its own at the
// start of the team region instead of sharing one copy that the threads packed in halves
// beforehand: then every step read half of the weights from the other core's cache (slow on
// these hosts), and the packing took parallel regions of its own. Floats of one copy of
// `floats` floats, rounded up to a whole cache line; 0 where the copies are not made. A call of
// `rows` rows in all (T * B) makes them only with at least kCopyMinRows rows per thread: a copy
// is read once per step for the thread's rows, and for a handful of rows its packing costs
// more than it saves, while the copies' memory grows with the thread count (T = 3, B = 2,
// I = 5000, H = 8 on 16 threads: 15 copies of W_ih^T, 9.6 MB for a 120 kB input, where L2 is
// 2 MiB per core).
constexpr index_t kCopyMinRows = 8;
inline index_t private_copy_floats(index_t floats, int nthreads, index_t rows) {
  if (nthreads <= 1 || floats <= 0 || rows < kCopyMinRows * nthreads) return 0;
  if (4.0 * static_cast<double>(floats) > 0.5 * static_cast<double>(l2_cache_bytes())) return 0;
  return (floats + 15) / 16 * 16;
}

// Workspace floats for the copies of the threads other than the first (`copy` floats each, from
// private_copy_floats), with room to align their start (align_floats); 0 without copies.
inline index_t private_copies_floats(index_t copy, int nthreads) {
  return copy > 0 ? (nthreads - 1) * copy + 16 : 0;
}

// p rounded up to a 64-byte boundary (the workspaces are 64-byte aligned and hold 16 floats to
// spare for each pointer rounded up so).
inline float* align_floats(float* p) {
  const auto a = (reinterpret_cast<std::uintptr_t>(p) + 63) & ~static_cast<std::uintptr_t>(63);
  return reinterpret_cast<float*>(a);
}

// Gate-interleaved panels of W_hh (4H, K) for the fused step tile, unit block ub:
// Wp[((ub * K + k) * 4 + q) * W + w] = W_hh[q*H + ub*W + w, k], zero for units >= H (lstm.cpp).
void pack_lstm_panels(const Kernels& kern, index_t H, index_t K, index_t ub, const float* W_hh,
                      float* Wp);

// Bias gradients: db_a[j] (and db_b[j], when not null) += sum over the rows of dz (rows, G)
// (lstm.cpp; used by every cell's backward).
void bias_sums(index_t rows, index_t G, const float* dz, float* db_a, float* db_b,
               int nthreads);

}  // namespace lstm_fast
