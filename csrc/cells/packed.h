// Variable lengths in PyTorch's packed layout, shared by the LSTM, GRU and RNN cores.
//
// With batch_sizes bs (T non-increasing counts), step t has the active rows [0, bs[t]). A packed
// array holds only those rows, step after step: row r of step t is packed row off(t) + r, with
// off(t) = bs[0] + ... + bs[t-1]. The buffers that are indexed by active rows only (the hoisted
// input projection, the training gates cache, dZ) use it, so each large GEMM runs once over
// N = sum(bs) rows and never touches, nor spends arithmetic on, the padding.
#pragma once

#include <cstdint>

#include "shapes.h"

namespace lstm_fast {

// bs[t0] + ... + bs[t1 - 1].
index_t packed_rows(const index_t* bs, index_t t0, index_t t1);

// Whether some step has fewer than B active rows.
bool has_padding(const index_t* bs, index_t T, index_t B);

// dst <- the active rows of steps [t0, t1) of src, packed. With order (a permutation of
// [0, B)), src's rows are in the caller's batch order: row r of a step is src's row order[r]
// of that step (the sort by length fused into the packing copy).
void pack_steps(float* dst,        // (packed_rows(bs, t0, t1), F)
                const float* src,  // (T, B, F)
                index_t F, index_t B, const index_t* bs, index_t t0, index_t t1, int nthreads,
                const int64_t* order = nullptr);

// dst <- for steps 1..T-1, rows [0, bs[t]) of step t - 1 of src, packed: the previous hidden
// state of every active row after step 0 (the operand of dW_hh).
void pack_previous_steps(float* dst,        // (packed_rows(bs, 1, T), F)
                         const float* src,  // (T, B, F)
                         index_t F, index_t B, const index_t* bs, index_t T, int nthreads,
                         const int64_t* order = nullptr);  // as in pack_steps

// a holds N = sum(bs) packed rows at its start: move each step's rows to its place in (T, B, F)
// and zero the padding rows. With order (as in pack_steps), row r of a step goes to row
// order[r] of that step (back to the caller's batch order).
void unpack_steps_in_place(float* a,  // (T, B, F)
                           index_t F, index_t B, const index_t* bs, index_t T,
                           const int64_t* order = nullptr);

// Batch-split recurrences with batch_sizes re-balance their rows every this many steps (a team
// barrier when rows change hands): rows sorted longest first would otherwise leave a fixed first
// thread with the rows that stay active while the others run out of work.
constexpr index_t kBalanceSteps = 8;

// The row grain of a re-balanced batch split whose steps run GEMM micro-tiles (the backward
// steps, the GRU and RNN forward): the micro-kernel's smallest row tile, MR / 3, which it runs
// without waste (at MR = 12, 30 rows split 16 / 14 where whole 12-row tiles gave 12 / 18).
inline index_t row_tile_grain(int MR) { return MR / 3 > 0 ? MR / 3 : 1; }

// The row grain of the LSTM forward's re-balanced batch split: its step kernel balances the
// heights of a thread's row tiles (16 rows: 6 + 5 + 5), so a split at any even row costs about
// its rows, where boundaries at whole 6-row tiles split 30 active rows 18 / 12.
constexpr index_t kLengthsRowGrain = 2;

// Rows [*r0, *r1) of thread p of np for a batch-split recurrence over steps [t0, t1):
// contiguous row ranges in order, balanced for a step cost of about ceil(n / tile) + 1 row tiles
// for n > 0 active rows (a partial tile costs about a full one; each step also streams the
// recurrent weights once). bs == null: an even split of B.
void balanced_rows(const index_t* bs, index_t t0, index_t t1, index_t B, index_t tile, int p,
                   int np, index_t* r0, index_t* r1);

// Whether balanced_rows splits steps [t0, t1) differently from steps [s0, s1) for any of the np
// threads (bs not null): rows change hands, so the team must meet first.
bool split_changes(const index_t* bs, index_t s0, index_t s1, index_t t0, index_t t1, index_t B,
                   index_t tile, int np);

}  // namespace lstm_fast
