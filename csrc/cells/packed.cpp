#include "cells/packed.h"

#include <cstring>

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

void pack_steps(float* dst, const float* src, index_t F, index_t B, const index_t* bs, index_t t0,
                index_t t1) {
  for (index_t t = t0; t < t1; ++t) {
    if (bs[t] > 0) std::memcpy(dst, src + t * B * F, bs[t] * F * sizeof(float));
    dst += bs[t] * F;
  }
}

void pack_previous_steps(float* dst, const float* src, index_t F, index_t B, const index_t* bs,
                         index_t T) {
  for (index_t t = 1; t < T; ++t) {
    if (bs[t] > 0) std::memcpy(dst, src + (t - 1) * B * F, bs[t] * F * sizeof(float));
    dst += bs[t] * F;
  }
}

void unpack_steps_in_place(float* a, index_t F, index_t B, const index_t* bs, index_t T) {
  // Last step first: step t's packed rows [off(t), off(t) + bs[t]) move up to [t*B, t*B + bs[t])
  // (t*B >= off(t)); everything written for step t lies at or above off(t), past the packed rows
  // of the earlier steps that are still to move.
  index_t off = packed_rows(bs, 0, T);
  for (index_t t = T - 1; t >= 0; --t) {
    off -= bs[t];
    float* dst = a + t * B * F;
    if (bs[t] > 0 && off != t * B) std::memmove(dst, a + off * F, bs[t] * F * sizeof(float));
    if (bs[t] < B) std::memset(dst + bs[t] * F, 0, (B - bs[t]) * F * sizeof(float));
  }
}

namespace {
// Active (row, step) pairs of rows [0, r) over steps [t0, t1).
index_t area_below(const index_t* bs, index_t t0, index_t t1, index_t r) {
  index_t a = 0;
  for (index_t t = t0; t < t1; ++t) a += bs[t] < r ? bs[t] : r;
  return a;
}

// The first row of thread p: the smallest r with area_below(r) >= total * p / np.
index_t split_row(const index_t* bs, index_t t0, index_t t1, index_t B, int p, int np) {
  if (p <= 0) return 0;
  if (p >= np) return B;
  const index_t total = area_below(bs, t0, t1, B);
  index_t lo = 0, hi = B;
  while (lo < hi) {  // area_below is non-decreasing in r
    const index_t mid = lo + (hi - lo) / 2;
    if (area_below(bs, t0, t1, mid) * np >= total * p)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}
}  // namespace

void balanced_rows(const index_t* bs, index_t t0, index_t t1, index_t B, int p, int np,
                   index_t* r0, index_t* r1) {
  if (!bs) {
    *r0 = B * p / np;
    *r1 = B * (p + 1) / np;
    return;
  }
  *r0 = split_row(bs, t0, t1, B, p, np);
  *r1 = split_row(bs, t0, t1, B, p + 1, np);
}

}  // namespace lstm_fast
