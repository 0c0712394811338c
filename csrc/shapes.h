// lstm_fast — the one shape legend of the C++ core.
//
//   T  time steps            B  batch (rows per step)        I  input features
//   H  hidden units          P  projection size (proj_size)  G  gate width: 4H LSTM, 3H GRU, H RNN
//   W  hidden units per register block of the active ISA (the SIMD width in floats)
//
// Every array is float32, C-contiguous and sequence-major: x is (T, B, I), y is (T, B, H), the
// saved gates of a training forward are (T, B, G) with PyTorch's gate order (i, f, g, o for the
// LSTM), weights use PyTorch's layout: W_ih (G, I), W_hh (G, H), b_ih (G), b_hh (G).
//
// Gradient semantics, stated once: backward overwrites dx, dh0, dc0 and accumulates (+=) into
// the weight and bias gradients; the caller zeroes those.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lstm_fast {

using index_t = std::int64_t;

}  // namespace lstm_fast
