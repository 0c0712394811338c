#include "cells/lstm_proj.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cells/team.h"
#include "gemm/gemm.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {
namespace {

// Depth chunk of the per-step products against packed panels (a chunk of a panel stays in L1
// while every row tile passes over it).
constexpr index_t kKC = 256;

// At most this many rows in all (T * B): the forward reads the weights' rows directly (no packing).
constexpr index_t kUnpackedRows = 4;

index_t num_panels(const Kernels& k, index_t N) { return (N + k.NR - 1) / k.NR; }

// C[r, panel columns] = A[r] . Bp for rows [r0, r1) and the NR-wide panels [jr0, jr1) of a B
// operand packed by pack_b_panels (K x N). The depth is walked in chunks of kKC that accumulate
// in a fixed order, so an element's result does not depend on the row or panel split.
// one_row: the problem has a single row (B == 1): one-row GEMV, no MR-row tile.
void rows_times_panels(const Kernels& kern, index_t r0, index_t r1, index_t K, const float* A,
                       index_t lda, const float* Bp, index_t N, index_t jr0, index_t jr1,
                       float* C, index_t ldc, bool one_row) {
  if (r1 <= r0) return;
  const int MR = kern.MR, NR = kern.NR;
  for (index_t jr = jr0; jr < jr1; ++jr) {
    const int n = static_cast<int>(std::min<index_t>(NR, N - jr * NR));
    for (index_t k0 = 0; k0 < K; k0 += kKC) {
      const index_t kc = std::min(kKC, K - k0);
      const float* bp = Bp + (jr * K + k0) * NR;
      if (one_row) {
        kern.gemv_panel(kc, A + r0 * lda + k0, bp, C + r0 * ldc + jr * NR, n, k0 > 0);
        continue;
      }
      for (index_t r = r0; r < r1; r += MR) {
        const int mm = static_cast<int>(std::min<index_t>(MR, r1 - r));
        kern.gemm_micro_rowA(kc, A + r * lda + k0, lda, bp, C + r * ldc + jr * NR, ldc, mm, n,
                             k0 > 0);
      }
    }
  }
}

// h_n (B, P), c_n (B, H): each row's state after its last real step.
void final_states(float* h_n, float* c_n, const float* y, const float* cells, const float* state,
                  const float* h_init, const float* c_init, const LstmSizes& s, index_t P,
                  const index_t* bs) {
  const index_t T = s.T, B = s.B, H = s.H;
  for (index_t b = 0; b < B; ++b) {
    index_t len = T;
    if (bs)
      while (len > 0 && bs[len - 1] <= b) --len;
    const float* h = len ? y + ((len - 1) * B + b) * P : h_init + b * P;
    const float* c = !cells ? state + b * H
                     : len  ? cells + ((len - 1) * B + b) * H
                            : c_init + b * H;
    std::memcpy(h_n + b * P, h, P * sizeof(float));
    std::memcpy(c_n + b * H, c, H * sizeof(float));
  }
}

// Forward for very few rows (T * B <= 4): per step, z = xp + W_hh . h_prev by dot products over
// W_hh's rows (threads split the 4H gate rows), the gate maths (threads split the units), then
// h = W_hr . m by dot products over W_hr's rows (threads split the P outputs).
void forward_unpacked(float* y, float* gates, float* cells, float* m, const float* x,
                      const float* h_init, const float* c_init, const float* W_ih,
                      const float* W_hh, const float* b_ih, const float* b_hh, const float* W_hr,
                      const LstmSizes& s, index_t P, const index_t* bs, float* xp_buf,
                      float* state, float* m_buf, const Kernels& kern, int nthreads) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  const bool training = gates != nullptr;
  float* xp = training ? gates : xp_buf;
  if (!training) std::memcpy(state, c_init, B * H * sizeof(float));
  for (index_t t = 0; t < T; ++t)
    input_projection(kern, bs ? bs[t] : B, G, I, x + t * B * I, W_ih, b_ih, b_hh, xp + t * B * G,
                     nthreads);
  const int NT = (G * P + P * H >= (1 << 16) && nthreads > 1) ? nthreads : 1;
  const index_t nub = num_unit_blocks(kern, H), gblk = (G + 7) / 8, pblk = (P + 7) / 8;
  StepBarrier step_barrier;
  run_team(NT, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    const index_t n0 = std::min(G, gblk * p / np * 8), n1 = std::min(G, gblk * (p + 1) / np * 8);
    const index_t q0 = std::min(P, pblk * p / np * 8), q1 = std::min(P, pblk * (p + 1) / np * 8);
    const index_t ub0 = nub * p / np, ub1 = nub * (p + 1) / np;
    for (index_t t = 0; t < T; ++t) {
      const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * P;
      const float* c_prev = training ? (t == 0 ? c_init : cells + (t - 1) * B * H) : state;
      float* c_out = training ? cells + t * B * H : state;
      float* m_t = training ? m + t * B * H : m_buf;
      float* xp_t = xp + t * B * G;
      const index_t rows = bs ? bs[t] : B;
      for (index_t b = 0; b < rows && n1 > n0; ++b)
        kern.gemv_rows(n1 - n0, P, W_hh + n0 * P, P, h_prev + b * P, xp_t + b * G + n0, true);
      if (np > 1) team_barrier();
      if (ub1 > ub0 && rows > 0)
        kern.lstm_fwd_rows(rows, H, 0, ub0, ub1, m_t, H, c_out, training ? xp_t : nullptr,
                           h_prev, P, c_prev, xp_t, nullptr);
      if (np > 1) team_barrier();
      for (index_t b = 0; b < rows && q1 > q0; ++b)
        kern.gemv_rows(q1 - q0, H, W_hr + q0 * H, H, m_t + b * H, y + (t * B + b) * P + q0,
                       false);
      if (np > 1 && t + 1 < T) team_barrier();  // (the region's end joins after the last)
    }
  });
}

}  // namespace

// The cost model of lstm_choose_schedule with the projection's step cost: the gate product
// B x P x 4H plus the projection B x H x P, and both weights streamed each step.
Schedule lstm_proj_choose_schedule(const Kernels& kern, const LstmSizes& s, index_t P,
                                   int nthreads) {
  const Schedule forced = schedule_override();
  if (nthreads <= 1) return Schedule::kSerial;
  const index_t nub = num_unit_blocks(kern, s.H);
  if (forced == Schedule::kUnits) return nub >= 2 ? Schedule::kUnits : Schedule::kSerial;
  if (forced == Schedule::kBatch) return s.B >= 2 ? Schedule::kBatch : Schedule::kSerial;
  if (forced == Schedule::kSerial) return Schedule::kSerial;
  const double step_flops = 2.0 * s.B * (4.0 * s.H * P + double(s.H) * P);
  if (step_flops < serial_step_flops(nthreads, false) && s.B < 2 * nthreads)
    return Schedule::kSerial;
  const double weight_bytes = 4.0 * (4.0 * s.H * P + double(s.H) * P);
  if (s.B >= 4 * nthreads && weight_bytes <= 2.0 * (1 << 20)) return Schedule::kBatch;
  if (nub >= 2 * nthreads) return Schedule::kUnits;
  if (s.B >= nthreads) return Schedule::kBatch;
  if (nub >= 2) return Schedule::kUnits;
  return Schedule::kSerial;
}

index_t lstm_proj_forward_workspace_size(const Kernels& kern, const LstmSizes& s, index_t P,
                                         bool training) {
  const index_t G = 4 * s.H;
  const index_t panels = num_unit_blocks(kern, s.H) * P * 4 * kern.W;
  const index_t hr = num_panels(kern, P) * kern.NR * s.H;
  const index_t xp = training ? 0 : chunk_steps(s) * s.B * G;
  const index_t wip = (G + kern.NR - 1) / kern.NR * kern.NR * s.I;  // W_ih^T packed once
  // The unpacked path's (T*B, 4H) block, only for the T * B <= kUnpackedRows calls that take it
  // (formed for every shape, T * B * 4H could wrap: y is (T, B, P), nothing bounds it).
  const index_t unpacked = s.T * s.B <= kUnpackedRows ? s.T * s.B * G : 0;
  return std::max(panels + hr + xp + wip, unpacked) + 2 * s.B * s.H + s.B * std::max(s.H, P) +
         64;
}

void lstm_proj_forward(float* y, float* h_n, float* c_n, float* gates, float* cells, float* m,
                       const float* x, const float* h0, const float* c0, const float* W_ih,
                       const float* W_hh, const float* b_ih, const float* b_hh,
                       const float* W_hr, const LstmSizes& s, index_t P, const index_t* bs,
                       float* workspace, const Kernels& kern, int nthreads) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  const bool training = gates != nullptr;
  if (B == 0 || H == 0 || P == 0) return;
  if (T == 0) {
    for (index_t j = 0; j < B * P; ++j) h_n[j] = h0 ? h0[j] : 0.0f;
    for (index_t j = 0; j < B * H; ++j) c_n[j] = c0 ? c0[j] : 0.0f;
    return;
  }
  if (bs) {  // padding rows of y (and of the saved m, which backward multiplies) are zero
    for (index_t t = 0; t < T; ++t)
      if (bs[t] < B) {
        std::memset(y + (t * B + bs[t]) * P, 0, (B - bs[t]) * P * sizeof(float));
        if (training) std::memset(m + (t * B + bs[t]) * H, 0, (B - bs[t]) * H * sizeof(float));
      }
  }
  if (T * B <= kUnpackedRows) {
    // Workspace: [xp (T*B, 4H)] [c state (B, H)] [m (B, H)] [zeros (B, max(H, P))].
    float* xp_buf = workspace;
    float* state = xp_buf + T * B * G;
    float* m_buf = state + B * H;
    float* zeros = m_buf + B * H;
    std::memset(zeros, 0, B * std::max(H, P) * sizeof(float));
    const float* h_init = h0 ? h0 : zeros;
    const float* c_init = c0 ? c0 : zeros;
    forward_unpacked(y, gates, cells, m, x, h_init, c_init, W_ih, W_hh, b_ih, b_hh, W_hr, s, P,
                     bs, xp_buf, state, m_buf, kern, nthreads);
    final_states(h_n, c_n, y, cells, state, h_init, c_init, s, P, bs);
    return;
  }
  // Workspace: [gate panels of W_hh] [W_hr^T panels] [xp chunk (TC*B, 4H), inference only]
  //            [c state (B, H)] [m (B, H), inference] [zeros (B, max(H, P))].
  const index_t nub = num_unit_blocks(kern, H), nbp = num_panels(kern, P);
  float* Wp = workspace;
  float* Wr = Wp + nub * P * 4 * kern.W;  // W_hr^T as the B operand of m . W_hr^T: (H, P)
  // W_ih^T packed once for every projection GEMM of the call (chunks of steps, or one per step
  // with batch_sizes: repacking it per step cost as much as the lengths saved, S1-sized with
  // proj_size = 128 and lengths uniform in [T/4, T]).
  float* Wip = Wr + nbp * kern.NR * H;
  float* xp_buf = Wip + (G + kern.NR - 1) / kern.NR * kern.NR * I;
  float* state = xp_buf + (training ? 0 : chunk_steps(s) * B * G);
  float* m_buf = state + B * H;
  float* zeros = m_buf + B * H;
  std::memset(zeros, 0, B * std::max(H, P) * sizeof(float));
  const float* h_init = h0 ? h0 : zeros;
  const float* c_init = c0 ? c0 : zeros;
  if (!training) std::memcpy(state, c_init, B * H * sizeof(float));

  const Schedule sched = lstm_proj_choose_schedule(kern, s, P, nthreads);
  const int NT = sched == Schedule::kSerial ? 1 : nthreads;

  {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(NT) schedule(static) if (NT > 1 && H >= 64)
#endif
    for (index_t ub = 0; ub < nub; ++ub) pack_lstm_panels(kern, H, P, ub, W_hh, Wp);
  }
  pack_b_panels(kern, H, 0, P, MatView{W_hr, 1, H}, Wr);
  pack_b_panels_parallel(kern, I, G, MatView{W_ih, 1, I}, Wip, nthreads);

  const index_t TC = chunk_steps(s);
  for (index_t t0 = 0; t0 < T; t0 += TC) {
    const index_t t1 = std::min(T, t0 + TC);
    float* xp = training ? gates + t0 * B * G : xp_buf;
    if (!bs) {
      input_projection(kern, (t1 - t0) * B, G, I, x + t0 * B * I, W_ih, b_ih, b_hh, xp, nthreads,
                       Wip);
    } else {  // only the active rows of each step
      for (index_t t = t0; t < t1; ++t)
        input_projection(kern, bs[t], G, I, x + t * B * I, W_ih, b_ih, b_hh,
                         xp + (t - t0) * B * G, nthreads, Wip);
    }

    StepBarrier step_barrier;
    run_team(NT, [&] {
      DenormalGuard ftz;
      BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
      const int p = team_id(), np = team_size();
      // Rows [r0, r1), gate unit blocks [ub0, ub1), projection panels [jp0, jp1) of this thread.
      index_t r0 = 0, r1 = B, ub0 = 0, ub1 = nub, jp0 = 0, jp1 = nbp;
      if (sched == Schedule::kBatch) {
        r0 = B * p / np;
        r1 = B * (p + 1) / np;
      } else if (sched == Schedule::kUnits) {
        ub0 = nub * p / np;
        ub1 = nub * (p + 1) / np;
        jp0 = nbp * p / np;
        jp1 = nbp * (p + 1) / np;
      }
      const bool units = sched == Schedule::kUnits && np > 1;
      for (index_t t = t0; t < t1; ++t) {
        const float* h_prev = t == 0 ? h_init : y + (t - 1) * B * P;
        const float* c_prev = training ? (t == 0 ? c_init : cells + (t - 1) * B * H) : state;
        float* c_out = training ? cells + t * B * H : state;
        float* m_t = training ? m + t * B * H : m_buf;
        float* xp_t = xp + (t - t0) * B * G;
        const index_t re = bs ? std::min(r1, bs[t]) : r1;
        // Gates, c_t and m_t = o * tanh(c_t) from the fused tile (recurrent depth P).
        if (re > r0 && ub1 > ub0)
          kern.lstm_fwd_rows(re - r0, H, P, ub0, ub1, m_t + r0 * H, H, c_out + r0 * H,
                             training ? xp_t + r0 * G : nullptr, h_prev + r0 * P, P,
                             c_prev + r0 * H, xp_t + r0 * G, Wp);
        if (units) team_barrier();
        // h_t = m_t . W_hr^T, written as y_t.
        rows_times_panels(kern, r0, re, H, m_t, H, Wr, P, jp0, jp1, y + t * B * P, P, B == 1);
        if (units && t + 1 < t1) team_barrier();  // (the region's end joins after the last)
      }
    });
  }
  final_states(h_n, c_n, y, cells, state, h_init, c_init, s, P, bs);
}

namespace {
// dW_ih = dZ^T . x and dW_hh = dZ^T . h_prev from one gemm_dual (dZ^T packed once) when a
// depth block of both operands fits in half of L2: floats of its scratch, or 0.
index_t dual_floats(const Kernels& kern, const LstmSizes& s, index_t P) {
  return gemm_dual_scratch_floats(kern, s.T * s.B, s.I, P);
}
}  // namespace

index_t lstm_proj_backward_workspace_size(const Kernels& kern, const LstmSizes& s, index_t P,
                                          bool lengths) {
  const index_t G = 4 * s.H, TB = s.T * s.B;
  const index_t xz = lengths ? TB * s.I : 0;  // x with its padding rows zeroed
  // the unpacked path's rows of h_prev (unpacked_backward, team.h)
  const index_t hr = TB <= kUnpackedBackwardRows ? TB * P : 0;
  return TB * G + TB * P + 2 * s.B * s.H + num_panels(kern, P) * kern.NR * G +
         num_panels(kern, s.H) * kern.NR * P + dual_floats(kern, s, P) + xz + hr + 64;
}

void lstm_proj_backward(float* dx, float* dh0, float* dc0, float* dW_ih, float* dW_hh,
                        float* dW_hr, float* db_ih, float* db_hh, const float* dy,
                        const float* dh_n, const float* dc_n, const float* x, const float* h0,
                        const float* c0, const float* W_ih, const float* W_hh,
                        const float* W_hr, const float* y, const float* gates,
                        const float* cells, const float* m, const LstmSizes& s, index_t P,
                        const index_t* bs, float* workspace, const Kernels& kern,
                        int nthreads, bool need_dx, unsigned fresh) {
  const index_t T = s.T, B = s.B, I = s.I, H = s.H, G = 4 * H;
  if (!db_ih) fresh &= ~4u;
  if (!db_hh) fresh &= ~8u;
  // The fresh gradients of a call with nothing to compute (the early returns): zeros.
  auto zero_fresh = [&] {
    if (fresh & 1u) std::memset(dW_ih, 0, G * I * sizeof(float));
    if (fresh & 2u) std::memset(dW_hh, 0, G * P * sizeof(float));
    if (fresh & 4u) std::memset(db_ih, 0, G * sizeof(float));
    if (fresh & 8u) std::memset(db_hh, 0, G * sizeof(float));
    if (fresh & 16u) std::memset(dW_hr, 0, P * H * sizeof(float));
  };
  if (B == 0 || H == 0 || P == 0) {
    if (need_dx && T * B * I > 0) std::memset(dx, 0, T * B * I * sizeof(float));
    return zero_fresh();
  }
  // dh0 / dc0 double as the running dh_next (B, P) / dc_next (B, H) of the reverse loop.
  for (index_t j = 0; j < B * P; ++j) dh0[j] = dh_n ? dh_n[j] : 0.0f;
  for (index_t j = 0; j < B * H; ++j) dc0[j] = dc_n ? dc_n[j] : 0.0f;
  if (T == 0) return zero_fresh();
  const index_t TB = T * B, nbp = num_panels(kern, P), nbh = num_panels(kern, H);
  float* dz = workspace;               // (T, B, 4H)
  float* dhs = dz + TB * G;            // (T, B, P): dh_t, the gradient w.r.t. h_t (for dW_hr)
  float* dm = dhs + TB * P;            // (B, H): dh_t . W_hr, the gradient w.r.t. m_t
  float* zeros = dm + B * H;           // (B, H): a null c0
  float* Wb = zeros + B * H;           // W_hh (4H, P) packed as the B operand of dZ_t . W_hh
  float* Wr = Wb + nbp * kern.NR * G;  // W_hr (P, H) packed as the B operand of dh_t . W_hr
  float* dual = Wr + nbh * kern.NR * P;  // gemm_dual's packed panels (dual_floats)
  float* xz = dual + dual_floats(kern, s, P);  // (T, B, I) with batch_sizes: x, padding zeroed
  std::memset(zeros, 0, B * H * sizeof(float));
  const float* c_init = c0 ? c0 : zeros;
  pack_b_panels(kern, G, 0, P, MatView{W_hh, P, 1}, Wb);
  pack_b_panels(kern, P, 0, H, MatView{W_hr, H, 1}, Wr);
  bool padded = false;
  if (bs) {  // dZ and dh are zero on padding rows
    for (index_t t = 0; t < T; ++t)
      if (bs[t] < B) {
        padded = true;
        std::memset(dz + (t * B + bs[t]) * G, 0, (B - bs[t]) * G * sizeof(float));
        std::memset(dhs + (t * B + bs[t]) * P, 0, (B - bs[t]) * P * sizeof(float));
      }
  }

  // Never read x's padding (it may hold anything, NaN included): with padding the weight
  // gradient's operand is a copy of x whose padding rows are zero (dz's are too), so that one
  // product runs over all T*B rows instead of one per step.
  auto x_operand = [&]() -> const float* {
    if (!padded) return x;
    const int PC = TB * I >= (1 << 16) ? nthreads : 1;
#if defined(_OPENMP)
#pragma omp parallel for num_threads(PC) schedule(static) if (PC > 1)
#endif
    for (index_t t = 0; t < T; ++t) {
      std::memcpy(xz + t * B * I, x + t * B * I, bs[t] * I * sizeof(float));
      std::memset(xz + (t * B + bs[t]) * I, 0, (B - bs[t]) * I * sizeof(float));
    }
    return xz;
  };

  // Few rows in all (at most the forward's kUnpackedRows: with 16 rows, T = B = 4, I = 100,
  // H = 256, P = 128, the unpacked path measured 0.94x the packed one's speed on 1 thread;
  // in-process A/B, time packed / unpacked, T = 1, 2 threads: B = 4, I = 1, H = 256, P = 128
  // 1.23, B = 1 and 2, I = 100, H = 512, P = 256 1.07, 1.06; 1 thread 1.11, 0.98, 0.99).
  if (TB <= kUnpackedRows && unpacked_backward(T, B, /*one_row_kernel=*/true)) {
    // Nothing packed (as lstm_backward's unpacked path). Threads own slices of
    // P (dh_t, dh_next) and of the hidden units (dm, dZ); the products read W_hr's and W_hh's
    // rows in place in the depth blocks of rows_times_panels (its bits where it uses the
    // micro-kernel: batches of two or more). Then dx, dW_ih, dW_hh, the bias sums
    // (unpacked_grads; padding rows of dz, x's copy and y are zero) and dW_hr = dh^T . m.
    float* hr = xz + (bs ? TB * I : 0);  // h_prev's rows (T*B, P)
    index_t h_skip = 0;
    const float* hp = unpacked_h_prev(hr, h0, y, T, B, P, nullptr, nullptr, &h_skip);
    UnpackedGrads g{};
    g.set_rows(T, B, I, P, G, nullptr, TB);
    // (h_split as the GEMMs below)
    g.set_operands(dz, dz, x_operand(), hp, h_skip,
                   h0 && dual_floats(kern, s, P) == 0 && T > 1 ? B : 0);
    g.set_outputs(W_ih, need_dx ? dx : nullptr, dW_ih, dW_hh, db_ih, db_hh, fresh & 15u);
    // (dh_next and dW_hh over P, dm and dW_hr P x H: about P + P / 4 columns of 4H)
    const int NT = unpacked_backward_threads(B, TB, G, I, P + P / 4, nthreads);
    StepBarrier step_barrier;
    run_team(NT, [&] {
      DenormalGuard ftz;
      BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
      const int p = team_id(), np = team_size();
      index_t q0, q1, u0, u1;  // this thread's columns of P and of H, in 64-byte lines
      line_slice(P, p, np, &q0, &q1);
      line_slice(H, p, np, &u0, &u1);
      for (index_t t = T - 1; t >= 0; --t) {
        float* dz_t = dz + t * B * G;
        float* dh_t = dhs + t * B * P;
        const float* c_prev = t == 0 ? c_init : cells + (t - 1) * B * H;
        const index_t rows = bs ? bs[t] : B;  // (rows past it: dh_next passes through)
        for (index_t r = 0; r < rows; ++r)
          for (index_t j = q0; j < q1; ++j)
            dh_t[r * P + j] = dh0[r * P + j] + (dy ? dy[(t * B + r) * P + j] : 0.0f);
        if (np > 1) team_barrier();
        rows_times_weights(kern, rows, P, u0, u1, dh_t, P, W_hr, H, dm, H, false);
        if (rows > 0 && u1 > u0)
          kern.lstm_bwd_pointwise(rows, H, u0, u1, dz_t, dc0, gates + t * B * G,
                                  cells + t * B * H, c_prev, nullptr, dm);
        if (np > 1) team_barrier();
        rows_times_weights(kern, rows, G, q0, q1, dz_t, G, W_hh, P, dh0, P, false);
      }
      if (np > 1) team_barrier();  // every unit of dz and column of dh written
      unpacked_grads(kern, g, p, np);
      unpacked_weight_rows(kern, P * p / np, P * (p + 1) / np, H, P, 0, TB, dhs, m, dW_hr,
                           !(fresh & 16u));
    });
    return;
  }

  Schedule sched = lstm_proj_choose_schedule(kern, s, P, nthreads);
  // As in lstm_backward: with fewer than 2*MR rows per thread a row split wastes much of each
  // MR-row tile; split the columns instead when there are enough.
  if (sched == Schedule::kBatch && schedule_override() == Schedule::kAuto &&
      B < 2 * kern.MR * nthreads && nbh >= 2 * nthreads)
    sched = Schedule::kUnits;
  const int NT = sched == Schedule::kSerial ? 1 : nthreads;

  StepBarrier step_barrier;
  run_team(NT, [&] {
    DenormalGuard ftz;
    BarrierScope barrier_scope(&step_barrier);  // team_barrier(): the fast one
    const int p = team_id(), np = team_size();
    // Rows [r0, r1); panels of P columns [jp0, jp1) (dh_t, dh_next); panels of H columns
    // [jh0, jh1), which are also the units [u0, u1) of the pointwise part (dm, dZ, dc_next).
    index_t r0 = 0, r1 = B, jp0 = 0, jp1 = nbp, jh0 = 0, jh1 = nbh;
    if (sched == Schedule::kBatch) {
      r0 = B * p / np;
      r1 = B * (p + 1) / np;
    } else if (sched == Schedule::kUnits) {
      jp0 = nbp * p / np;
      jp1 = nbp * (p + 1) / np;
      jh0 = nbh * p / np;
      jh1 = nbh * (p + 1) / np;
    }
    const bool units = sched == Schedule::kUnits && np > 1;
    const index_t q0 = std::min(P, jp0 * kern.NR), q1 = std::min(P, jp1 * kern.NR);
    const index_t u0 = std::min(H, jh0 * kern.NR), u1 = std::min(H, jh1 * kern.NR);
    for (index_t t = T - 1; t >= 0; --t) {
      float* dz_t = dz + t * B * G;
      float* dh_t = dhs + t * B * P;
      const float* c_prev = t == 0 ? c_init : cells + (t - 1) * B * H;
      const index_t re = bs ? std::min(r1, bs[t]) : r1;  // this step's active rows
      // dh_t = dh_next + dy_t (this thread's rows, its columns of P). Rows past their length
      // keep dh_next untouched in dh0: it flows straight to the previous step.
      for (index_t r = r0; r < re; ++r)
        for (index_t j = q0; j < q1; ++j)
          dh_t[r * P + j] = dh0[r * P + j] + (dy ? dy[(t * B + r) * P + j] : 0.0f);
      if (units) team_barrier();
      // dm = dh_t . W_hr (this thread's columns of H), then the gate backward of those units:
      // the same columns, so no barrier in between.
      rows_times_panels(kern, r0, re, P, dh_t, P, Wr, H, jh0, jh1, dm, H, B == 1);
      if (re > r0 && u1 > u0)
        kern.lstm_bwd_pointwise(re - r0, H, u0, u1, dz_t + r0 * G, dc0 + r0 * H,
                                gates + t * B * G + r0 * G, cells + t * B * H + r0 * H,
                                c_prev + r0 * H, nullptr, dm + r0 * H);
      if (units) team_barrier();
      // dh_next = dZ_t . W_hh (this thread's columns of P; reads every thread's dZ_t). The next
      // step's first phase reads the same columns only: no barrier.
      rows_times_panels(kern, r0, re, G, dz_t, G, Wb, P, jp0, jp1, dh0, P, B == 1);
    }
  });

  // Large GEMMs over all T*B rows.
  // The bias gradients (dz's column sums over the active rows; padding rows are zero) come out
  // of the dW_ih GEMMs' packing of dz^T.
  std::vector<float> dbs((db_ih || db_hh) ? static_cast<std::size_t>(G) : 0, 0.0f);
  float* sums = dbs.empty() ? nullptr : dbs.data();
  if (need_dx) gemm(kern, TB, I, G, MatView{dz, G, 1}, MatView{W_ih, I, 1}, dx, I, false, nthreads);
  const float* xa = x_operand();  // (x's padding never read)
  // Fresh gradients are written by their first product (no pass of zeros before it).
  const bool ih_acc = !(fresh & 1u);
  bool hh_acc = !(fresh & 2u);
  if ((h0 || T > 1) && dual_floats(kern, s, P) > 0) {
    // Both weight gradients in one pass over dZ^T: h_prev's rows are h0's (zeros without h0),
    // then the outputs of steps 0 .. T-2 (zero on padding rows).
    gemm_dual(kern, G, TB, MatView{dz, 1, G}, I, RowSource{xa, I, TB, nullptr, 0}, dW_ih, I,
              ih_acc, P, RowSource{h0, P, B, y, P}, dW_hh, P, hh_acc, dual, nthreads, sums);
    hh_acc = true;
  } else {
    gemm(kern, G, I, TB, MatView{dz, 1, G}, MatView{xa, I, 1}, dW_ih, I, ih_acc, nthreads,
         nullptr, nullptr, sums);
    h_prev_products(kern, G, P, dz, h0, B, y, (T - 1) * B, dW_hh, &hh_acc, nthreads);
  }
  if (!hh_acc) std::memset(dW_hh, 0, G * P * sizeof(float));  // one step from a zero state
  // dW_hr = sum_t dh_t^T m_t (padding rows: dh_t and m_t are zero).
  gemm(kern, P, H, TB, MatView{dhs, 1, P}, MatView{m, H, 1}, dW_hr, H, !(fresh & 16u), nthreads);
  for (index_t j = 0; sums && j < G; ++j) {
    if (db_ih) db_ih[j] = (fresh & 4u) ? sums[j] : db_ih[j] + sums[j];
    if (db_hh) db_hh[j] = (fresh & 8u) ? sums[j] : db_hh[j] + sums[j];
  }
}

}  // namespace lstm_fast
