// Developer probe of the packed GEMM (gemm.cpp) outside Python: C (M x N) = A . W^T with A
// (M x K) and W (N x K) row-major, the hoisted input projection's layout, on `threads` threads.
// Prints the median and best GFLOP/s of `reps` calls. Build and run:
//   PROBE=gemm_probe tools/step-probe.sh M K N threads [reps]
// Timing only: the data are arbitrary and the results are not checked (the tests do that).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "dispatch.h"
#include "gemm/gemm.h"
#include "kernels.h"

using namespace lstm_fast;

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s M K N threads [reps]\n", argv[0]);
    return 2;
  }
  const index_t M = std::atol(argv[1]), K = std::atol(argv[2]), N = std::atol(argv[3]);
  const int P = std::atoi(argv[4]);
  const int reps = argc > 5 ? std::atoi(argv[5]) : 50;
  if (M < 1 || K < 1 || N < 1 || P < 1 || reps < 1) {
    std::fprintf(stderr, "M, K, N, threads and reps >= 1 expected\n");
    return 2;
  }
  init_dispatch();
  const Kernels& kern = active_kernels();
  std::vector<float> A(M * K), W(N * K), C(M * N);
  for (index_t i = 0; i < M * K; ++i) A[i] = static_cast<float>(i % 7) * 0.01f;
  for (index_t i = 0; i < N * K; ++i) W[i] = static_cast<float>(i % 5) * 0.01f;
  std::vector<double> t(reps);
  const double flops = 2.0 * M * N * K;
  for (int r = -2; r < reps; ++r) {  // two calls to warm up
    const auto t0 = std::chrono::steady_clock::now();
    gemm(kern, M, N, K, MatView{A.data(), K, 1}, MatView{W.data(), 1, K}, C.data(), N, false, P);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r >= 0) t[r] = s;
  }
  std::sort(t.begin(), t.end());
  std::printf("%s %ldx%ldx%ld threads=%d: median %.1f best %.1f GFLOP/s\n", kern.name,
              static_cast<long>(M), static_cast<long>(K), static_cast<long>(N), P,
              flops / t[reps / 2] / 1e9, flops / t[0] / 1e9);
  return 0;
}
