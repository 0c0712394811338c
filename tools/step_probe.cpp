// Developer probe of the fused LSTM step kernel (kern.lstm_fwd_rows), outside Python: time per
// step and GFLOP/s for B rows, H units and depth K on a chosen kernel set, on P threads that
// split the unit blocks with a barrier per step (the layer's units split). With K = 0 only the
// epilogue runs (gates, c', h' from the pre-activations): its share of a step. Each step reads
// its own pre-activations (as the layer does) unless `--same-xp`. Build and run:
//   tools/step-probe.sh 32 256 256 1        # B H K threads [steps]
// Timing only: the data are arbitrary and the results are not checked (the tests do that).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "dispatch.h"
#include "kernels.h"

using namespace lstm_fast;

// 64-byte aligned storage, as the package's workspace (a std::vector's large blocks start 16
// bytes past a page: every vector load of the panels would then straddle two cache lines).
template <class T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <class U>
  Aligned(const Aligned<U>&) {}
  T* allocate(std::size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  bool operator==(const Aligned&) const { return true; }
  bool operator!=(const Aligned&) const { return false; }
};
using fvec = std::vector<float, Aligned<float>>;

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s B H K threads [steps] [--same-xp]\n", argv[0]);
    return 2;
  }
  const index_t B = std::atol(argv[1]), H = std::atol(argv[2]), K = std::atol(argv[3]);
  const int P = std::atoi(argv[4]);
  const int steps = argc > 5 && argv[5][0] != '-' ? std::atoi(argv[5]) : 50;
  bool same_xp = false;
  for (int i = 5; i < argc; ++i) same_xp = same_xp || std::strcmp(argv[i], "--same-xp") == 0;
  if (B < 1 || H < 1 || K < 0 || P < 1 || steps < 1) {
    std::fprintf(stderr, "B, H, threads, steps >= 1 and K >= 0 expected\n");
    return 2;
  }
  init_dispatch();  // LSTM_FAST_ISA picks the kernel set, as in the package
  const Kernels& kern = active_kernels();
  const index_t W = kern.W, nub = (H + W - 1) / W, G = 4 * H;
  fvec Wp(std::max<index_t>(1, nub * W * 4 * K)), h(2 * B * std::max(H, K)),
      c(B * H), xp((same_xp ? 1 : steps) * B * G);
  unsigned seed = 1;
  auto rnd = [&seed]() { return ((seed = seed * 1103515245u + 12345u) >> 16 & 1023) / 1024.0f - 0.5f; };
  for (auto& v : Wp) v = 0.05f * rnd();
  for (auto& v : h) v = rnd();
  for (auto& v : xp) v = rnd();
  double best = 1e30;
  for (int rep = 0; rep < 7; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(P)
    {
      const int p = omp_get_thread_num();
      const index_t b0 = nub * p / P, b1 = nub * (p + 1) / P;
      for (int t = 0; t < steps; ++t) {
        const index_t ld = std::max(H, K);
        const float* hin = h.data() + (t & 1) * B * ld;
        float* hout = h.data() + ((t + 1) & 1) * B * ld;
        const float* xpt = xp.data() + (same_xp ? 0 : static_cast<index_t>(t) * B * G);
        kern.lstm_fwd_rows(B, H, K, b0, b1, hout, ld, c.data(), nullptr, hin, ld, c.data(), xpt,
                           Wp.data());
#pragma omp barrier
      }
    }
    const double dt =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
    best = std::min(best, dt);
  }
  std::printf("%s B=%ld H=%ld K=%ld threads=%d%s: %.2f us per step (best of 7 x %d steps)", kern.name,
              static_cast<long>(B), static_cast<long>(H), static_cast<long>(K), P,
              same_xp ? " same-xp" : "", best * 1e6, steps);
  if (K > 0) std::printf(", %.1f GFLOP/s", 2.0 * B * G * K / best / 1e9);
  std::printf("\n");
  return 0;
}
