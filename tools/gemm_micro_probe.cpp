// Developer probe of the GEMM micro-kernel alone (kern.gemm_micro), outside Python and without
// the blocking around it: `slivers` packed MR x KC slivers of A, each times `panels` packed
// KC x NR panels of B (the jr loop of gemm.cpp: KC * NR * panels floats of B stream through L1
// for every sliver), accumulating into a C of slivers * MR rows. Every thread of `threads` runs
// the same loop on buffers of its own. GFLOP/s summed over the threads (best of 5). Build and run:
//   PROBE=gemm_micro_probe tools/step-probe.sh 256 32 48 2    # KC panels slivers threads
// Panels * KC * NR * 4 bytes is the B that each sliver streams (256 x 32 panels: 1 MiB, an L2
// part as gemm.cpp's NC blocking keeps; 128 panels: 4 MiB, from L3). Timing only: the data are
// arbitrary and the results are not checked (the tests do that).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "dispatch.h"
#include "kernels.h"

using namespace lstm_fast;

namespace {
float* aligned_floats(index_t n) {
  void* p = std::aligned_alloc(64, static_cast<std::size_t>((n * 4 + 63) / 64 * 64));
  if (!p) {
    std::fprintf(stderr, "out of memory\n");
    std::exit(1);
  }
  return static_cast<float*>(p);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s KC panels slivers threads\n", argv[0]);
    return 2;
  }
  const index_t KC = std::atol(argv[1]), npan = std::atol(argv[2]), nsl = std::atol(argv[3]);
  const int P = std::atoi(argv[4]);
  if (KC < 1 || npan < 1 || nsl < 1 || P < 1) {
    std::fprintf(stderr, "KC, panels, slivers and threads >= 1 expected\n");
    return 2;
  }
  init_dispatch();  // LSTM_FAST_ISA picks the kernel set, as in the package
  const Kernels& kern = active_kernels();
  const index_t MR = kern.MR, NR = kern.NR, ldc = npan * NR;
  const double flops = 2.0 * KC * MR * NR * npan * nsl;
  const long reps = std::max<long>(1, static_cast<long>(8e8 / flops));
  double total = 0.0;
#pragma omp parallel num_threads(P) reduction(+ : total)
  {
    float* Ap = aligned_floats(nsl * KC * MR);
    float* Bp = aligned_floats(npan * KC * NR);
    float* C = aligned_floats(nsl * MR * ldc);
    for (index_t i = 0; i < nsl * KC * MR; ++i) Ap[i] = static_cast<float>(i % 7) * 0.01f;
    for (index_t i = 0; i < npan * KC * NR; ++i) Bp[i] = static_cast<float>(i % 5) * 0.01f;
    for (index_t i = 0; i < nsl * MR * ldc; ++i) C[i] = 0.0f;
    double best = 1e30;
    for (int rep = 0; rep < 5; ++rep) {
#pragma omp barrier
      const auto t0 = std::chrono::steady_clock::now();
      for (long it = 0; it < reps; ++it)
        for (index_t s = 0; s < nsl; ++s)
          for (index_t j = 0; j < npan; ++j)
            kern.gemm_micro(KC, Ap + s * KC * MR, Bp + j * KC * NR, C + s * MR * ldc + j * NR,
                            ldc, static_cast<int>(MR), static_cast<int>(NR), true);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                .count());
    }
    total += flops * reps / best / 1e9;
    std::free(Ap);
    std::free(Bp);
    std::free(C);
  }
  std::printf("%s MR=%ld NR=%ld KC=%ld panels=%ld slivers=%ld threads=%d: %.1f GFLOP/s\n",
              kern.name, static_cast<long>(MR), static_cast<long>(NR), static_cast<long>(KC),
              static_cast<long>(npan), static_cast<long>(nsl), P, total);
  return 0;
}
