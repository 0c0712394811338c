#include "cells/packed.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "dispatch.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {

index_t packed_rows(const index_t* bs, index_t t0, index_t t1) {
  index_t n = 0;
  for (index_t t = t0; t < t1; ++t) n += bs[t];
  return n;
}

bool has_padding(const index_t* bs, index_t T, index_t B) {
  for (index_t t = 0; t < T; ++t)
    if (bs[t] < B) return true;
  return false;
}

namespace {
// Threads for copying `floats` floats: one below 1 MiB.
int copy_threads(index_t floats, int nthreads) {
  return floats >= (index_t(1) << 18) ? nthreads : 1;
}

// Copies rows [0, bs[t]) of step t - shift of src to the packed place of step t, for steps
// [t0, t1); the steps are split over the threads (each finds its packed offset).
void pack_rows(float* dst, const float* src, index_t F, index_t B, const index_t* bs, index_t t0,
               index_t t1, index_t shift, int nthreads, const int64_t* order = nullptr) {
  const int P = copy_threads(packed_rows(bs, t0, t1) * F, nthreads);
  run_team(P, [&] {
    const int p = team_id(), np = team_size();
    const index_t ta = t0 + (t1 - t0) * p / np, tb = t0 + (t1 - t0) * (p + 1) / np;
    float* d = dst + packed_rows(bs, t0, ta) * F;
    for (index_t t = ta; t < tb; ++t) {
      const float* s = src + (t - shift) * B * F;
      if (order) {
        for (index_t r = 0; r < bs[t]; ++r)
          std::memcpy(d + r * F, s + order[r] * F, F * sizeof(float));
      } else if (bs[t] > 0) {
        std::memcpy(d, s, bs[t] * F * sizeof(float));
      }
      d += bs[t] * F;
    }
  });
}
}  // namespace

void pack_steps(float* dst, const float* src, index_t F, index_t B, const index_t* bs, index_t t0,
                index_t t1, int nthreads, const int64_t* order) {
  pack_rows(dst, src, F, B, bs, t0, t1, 0, nthreads, order);
}

void pack_previous_steps(float* dst, const float* src, index_t F, index_t B, const index_t* bs,
                         index_t T, int nthreads, const int64_t* order) {
  if (T > 1) pack_rows(dst, src, F, B, bs, 1, T, 1, nthreads, order);
}

void unpack_steps_in_place(float* a, index_t F, index_t B, const index_t* bs, index_t T,
                           const int64_t* order) {
  // Last step first: step t's packed rows [off(t), off(t) + bs[t]) move up to [t*B, t*B + bs[t])
  // (t*B >= off(t)); everything written for step t lies at or above off(t), past the packed rows
  // of the earlier steps that are still to move.
  index_t off = packed_rows(bs, 0, T);
  std::vector<float> tmp;
  for (index_t t = T - 1; t >= 0; --t) {
    off -= bs[t];
    float* dst = a + t * B * F;
    if (!order) {
      if (bs[t] > 0 && off != t * B) std::memmove(dst, a + off * F, bs[t] * F * sizeof(float));
      if (bs[t] < B) std::memset(dst + bs[t] * F, 0, (B - bs[t]) * F * sizeof(float));
      continue;
    }
    // Permuted: the step's packed rows may overlap its destination rows, so they are copied
    // out first when they do; the rows order[bs[t]..B) are the padding.
    const float* src = a + off * F;
    if (bs[t] > 0 && off + bs[t] > t * B) {
      tmp.assign(src, src + bs[t] * F);
      src = tmp.data();
    }
    for (index_t r = 0; r < bs[t]; ++r)
      std::memcpy(dst + order[r] * F, src + r * F, F * sizeof(float));
    for (index_t r = bs[t]; r < B; ++r) std::memset(dst + order[r] * F, 0, F * sizeof(float));
  }
}

namespace {
// Cost of rows [r0, r1) over steps [t0, t1), in row tiles (see balanced_rows).
index_t range_cost(const index_t* bs, index_t t0, index_t t1, index_t tile, index_t r0,
                   index_t r1) {
  index_t c = 0;
  for (index_t t = t0; t < t1; ++t) {
    const index_t n = (bs[t] < r1 ? bs[t] : r1) - r0;
    if (n > 0) c += (n + tile - 1) / tile + 1;
  }
  return c;
}

// The end of thread q's rows, given their start lo: chosen among tile-aligned rows (and B) to
// minimise the larger of thread q's cost and the mean cost left to the threads after it.
index_t next_boundary(const index_t* bs, index_t t0, index_t t1, index_t B, index_t tile,
                      index_t lo, int q, int np) {
  if (q >= np - 1) return B;
  const index_t rest = np - q - 1;
  index_t best = -1, hi = B;
  // Candidates every `step` rows: at most about 64 per boundary.
  const index_t step = tile * std::max<index_t>(1, (B / tile + 63) / 64);
  for (index_t r = lo;; r = std::min(B, r + step)) {
    const index_t mine = range_cost(bs, t0, t1, tile, lo, r);
    const index_t left = (range_cost(bs, t0, t1, tile, r, B) + rest - 1) / rest;
    const index_t worst = std::max(mine, left);
    if (best < 0 || worst < best) {
      best = worst;
      hi = r;
    }
    if (r >= B) break;
  }
  return hi;
}
}  // namespace

void balanced_rows(const index_t* bs, index_t t0, index_t t1, index_t B, index_t tile, int p,
                   int np, index_t* r0, index_t* r1) {
  if (!bs) {
    *r0 = B * p / np;
    *r1 = B * (p + 1) / np;
    return;
  }
  // Boundaries in order; every thread computes the same ones, so the split depends only on
  // (bs, steps, B, tile, np).
  tile = std::max<index_t>(1, tile);
  index_t lo = 0;
  for (int q = 0; q < p; ++q) lo = next_boundary(bs, t0, t1, B, tile, lo, q, np);
  *r0 = lo;
  *r1 = next_boundary(bs, t0, t1, B, tile, lo, p, np);
}

bool split_changes(const index_t* bs, index_t s0, index_t s1, index_t t0, index_t t1, index_t B,
                   index_t tile, int np) {
  tile = std::max<index_t>(1, tile);
  index_t a = 0, b = 0;
  for (int q = 0; q < np - 1; ++q) {
    a = next_boundary(bs, s0, s1, B, tile, a, q, np);
    b = next_boundary(bs, t0, t1, B, tile, b, q, np);
    if (a != b) return true;
  }
  return false;
}

}  // namespace lstm_fast
