// The GRU / RNN pointwise kernels, written once with GCC/Clang vector extensions and compiled
// per ISA (pointwise_generic.cpp W = 4, pointwise_avx2.cpp W = 8, pointwise_avx512.cpp W = 16).
// The including file defines LF_W, LF_NAME and LF_TABLE. Everything lives in an anonymous
// namespace (simd_math.h's too), so no function is shared across ISA files.
//
// Tails: the last, partial vector of a unit range goes through the same arithmetic as a full
// one (zero-filled load, lane-by-lane store), so an element's result never depends on where a
// thread's slice starts: results are bitwise identical for any thread count. Every a * b + c
// of the structs below is spelled out (vfmadd): the full and tail blocks are separate template
// instances, and GCC had contracted x_n + r * hn into one FMA in the full one only (AVX-512), so
// a GRU unit's h changed by one rounding with the thread split of its block.
#include "cells/pointwise.h"
#include "simd_math.h"

namespace lstm_fast {
namespace {

template <bool kFull>
LF_INLINE vf ld(const float* p, int n) {
  return kFull ? load(p) : load_n(p, n);
}
template <bool kFull>
LF_INLINE void st(float* p, vf v, int n) {
  if (kFull)
    store(p, v);
  else
    store_n(p, v, n);
}

// Walk units [u0, u1) of each row in blocks of W, the tail as a partial block.
template <class F>
LF_INLINE void for_blocks(index_t rows, index_t u0, index_t u1, F f) {
  for (index_t b = 0; b < rows; ++b) {
    index_t u = u0;
    for (; u + W <= u1; u += W) f.template operator()<true>(b, u, W);
    if (u < u1) f.template operator()<false>(b, u, static_cast<int>(u1 - u));
  }
}

struct GruFwd {
  index_t H;
  float* h_out;
  float* gates_out;
  float* hwn_out;
  const float *xp, *hw_raw, *b_hh, *h_prev;
  template <bool kFull>
  LF_INLINE void operator()(index_t b, index_t u, int n) const {
    const index_t G = 3 * H;
    const float* x = xp + b * G + u;
    const float* hw = hw_raw + b * G + u;
    vf hr = ld<kFull>(hw, n), hz = ld<kFull>(hw + H, n), hn = ld<kFull>(hw + 2 * H, n);
    if (b_hh) {
      hr = hr + ld<kFull>(b_hh + u, n);
      hz = hz + ld<kFull>(b_hh + H + u, n);
      hn = hn + ld<kFull>(b_hh + 2 * H + u, n);
    }
    const vf r = vsigmoid(ld<kFull>(x, n) + hr);
    const vf z = vsigmoid(ld<kFull>(x + H, n) + hz);
    const vf nn = vtanh(vfmadd(r, hn, ld<kFull>(x + 2 * H, n)));
    const vf hp = ld<kFull>(h_prev + b * H + u, n);
    const vf zh = z * hp;
    st<kFull>(h_out + b * H + u, vfmadd(splat(1.0f) - z, nn, zh), n);
    if (gates_out) {
      float* g = gates_out + b * G + u;
      st<kFull>(g, r, n);
      st<kFull>(g + H, z, n);
      st<kFull>(g + 2 * H, nn, n);
    }
    if (hwn_out) st<kFull>(hwn_out + b * H + u, hn, n);
  }
};

void gru_fwd(index_t rows, index_t H, index_t u0, index_t u1, float* h_out, float* gates_out,
             float* hwn_out, const float* xp, const float* hw_raw, const float* b_hh,
             const float* h_prev) {
  for_blocks(rows, u0, u1, GruFwd{H, h_out, gates_out, hwn_out, xp, hw_raw, b_hh, h_prev});
}

struct GruBwd {
  index_t H;
  float *dxw, *dhw, *dh_next;
  const float *dy, *gates, *hwn, *h_prev;
  template <bool kFull>
  LF_INLINE void operator()(index_t b, index_t u, int n) const {
    const index_t G = 3 * H;
    const vf one = splat(1.0f);
    const float* g = gates + b * G + u;
    const vf r = ld<kFull>(g, n), z = ld<kFull>(g + H, n), nn = ld<kFull>(g + 2 * H, n);
    vf dh = ld<kFull>(dh_next + b * H + u, n);
    if (dy) dh = dh + ld<kFull>(dy + b * H + u, n);
    const vf dn = dh * (one - z) * vfmadd(-nn, nn, one);
    const vf dz = dh * (ld<kFull>(h_prev + b * H + u, n) - nn) * z * (one - z);
    const vf dr = dn * ld<kFull>(hwn + b * H + u, n) * r * (one - r);
    float* dx = dxw + b * G + u;
    float* dw = dhw + b * G + u;
    st<kFull>(dx, dr, n);
    st<kFull>(dx + H, dz, n);
    st<kFull>(dx + 2 * H, dn, n);
    st<kFull>(dw, dr, n);
    st<kFull>(dw + H, dz, n);
    st<kFull>(dw + 2 * H, dn * r, n);
    st<kFull>(dh_next + b * H + u, dh * z, n);
  }
};

void gru_bwd(index_t rows, index_t H, index_t u0, index_t u1, float* dxw, float* dhw,
             float* dh_next, const float* dy, const float* gates, const float* hwn,
             const float* h_prev) {
  for_blocks(rows, u0, u1, GruBwd{H, dxw, dhw, dh_next, dy, gates, hwn, h_prev});
}

struct RnnFwd {
  index_t H;
  float* a;
  bool relu;
  template <bool kFull>
  LF_INLINE void operator()(index_t b, index_t u, int n) const {
    float* p = a + b * H + u;
    const vf v = ld<kFull>(p, n);
    st<kFull>(p, relu ? vmax(v, splat(0.0f)) : vtanh(v), n);  // vmax keeps a NaN of v
  }
};

void rnn_fwd(index_t rows, index_t H, index_t u0, index_t u1, float* a, bool relu) {
  for_blocks(rows, u0, u1, RnnFwd{H, a, relu});
}

struct RnnBwd {
  index_t H;
  float* da;
  const float *dh_next, *dy, *y;
  bool relu;
  template <bool kFull>
  LF_INLINE void operator()(index_t b, index_t u, int n) const {
    const index_t j = b * H + u;
    vf dh = ld<kFull>(dh_next + j, n);
    if (dy) dh = dh + ld<kFull>(dy + j, n);
    const vf yv = ld<kFull>(y + j, n);
    // relu: zero where y <= 0, dh elsewhere (a NaN y passes dh on, as PyTorch's threshold)
    const vf zero = splat(0.0f);
    const vf da_v = relu ? (yv <= zero ? zero : dh) : dh * vfmadd(-yv, yv, splat(1.0f));
    st<kFull>(da + j, da_v, n);
  }
};

void rnn_bwd(index_t rows, index_t H, index_t u0, index_t u1, float* da, const float* dh_next,
             const float* dy, const float* y, bool relu) {
  for_blocks(rows, u0, u1, RnnBwd{H, da, dh_next, dy, y, relu});
}

const CellKernels kTable = {LF_NAME, gru_fwd, gru_bwd, rnn_fwd, rnn_bwd};

}  // namespace

const CellKernels& LF_TABLE() { return kTable; }

}  // namespace lstm_fast
