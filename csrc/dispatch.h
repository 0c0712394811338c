// Runtime dispatch in one place: CPU features detected once, the kernel table chosen once at
// import (LSTM_FAST_ISA=scalar|generic|avx2|avx512 forces one), the thread count, and the
// flush-to-zero guard every parallel region opens.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace lstm_fast {

// The OpenMP team of the current parallel region (0 of 1 outside one, or without OpenMP).
inline int team_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int team_size() {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The barrier of the recurrences' steps (one per step in a units split): a generation counter
// on its own cache line. Waiters spin briefly, then yield the CPU, so a team with more threads
// than free cores still makes progress. On 2 threads (AMD EPYC Zen 5) it takes 60-75 ns where
// GNU libgomp's `omp barrier` takes 240-300 ns: at batch 1 (S5: ~2 us per step) that is a tenth
// of a step. A parallel region opts in with a StepBarrier declared before it and a BarrierScope
// opened by every thread at its start; team_barrier() then uses it (else the OpenMP barrier).
struct StepBarrier {
  alignas(64) std::atomic<unsigned> arrived{0};
  alignas(64) std::atomic<unsigned> phase{0};
  void wait(int n);  // n: the team's size
};

// Makes team_barrier() on the calling thread use `b` for the lifetime of the scope, in the
// parallel region that opened it (a region nested inside keeps the OpenMP barrier).
class BarrierScope {
 public:
  explicit BarrierScope(StepBarrier* b);
  ~BarrierScope();
  BarrierScope(const BarrierScope&) = delete;
  BarrierScope& operator=(const BarrierScope&) = delete;

 private:
  StepBarrier* previous_;
  int previous_level_;
};

// The StepBarrier of the innermost BarrierScope on this thread if it was opened at this
// parallel nesting level, else null.
StepBarrier* current_step_barrier();

inline void team_barrier() {
#if defined(_OPENMP)
  if (StepBarrier* b = current_step_barrier()) return b->wait(omp_get_num_threads());
#pragma omp barrier
#endif
}

// ---- Waking the team after an idle gap ------------------------------------------------------
// After a region the team's workers spin for a while, then sleep; a later region wakes them.
// On a virtual machine whose idle vCPUs the host deschedules, that wake can take milliseconds:
// here (2 vCPUs, AMD EPYC Zen 4 VM) a one-step call (H = 256, batch 1, `step()`) after an idle
// gap of 25-100 ms took 4-7.8 ms on 2 threads against 0.35-0.39 ms on one (17 us against 31
// back to back; torch.nn.LSTMCell 0.7-1.1 ms after such gaps), while after gaps of 3-15 ms the
// two threads were still the faster. So each region run_team opens records when its first
// worker arrived; a worker that came late (>= kSlowWakeNs) after an idle gap teaches the
// process that gaps that long wake slowly. A small call (small_call_threads) after such a gap
// then runs on the calling thread alone, unless it follows such a call within a millisecond (a
// burst of calls: it wakes the team for the rest). Results do not depend on the thread count.
constexpr std::int64_t kSlowWakeNs = 1000000;  // 1 ms
std::int64_t monotonic_ns();
// After a region that started at start_ns, its first worker having arrived late_ns after.
void note_team_region(std::int64_t start_ns, std::int64_t late_ns);
// Whether the team has been idle for at least the gap after which it was seen to wake slowly.
bool team_wake_slow();
// Test hooks: the learned gap (INT64_MAX: none) and when the last region ended; set the gap.
std::int64_t slow_wake_gap_ns();
std::int64_t team_end_ns();
void set_slow_wake_gap_ns(std::int64_t ns);
// Regions of more than one thread opened by run_team so far (tests).
std::int64_t team_regions();

// The threads of a call of `fma` multiply-adds that would share them only above 2^17 (a
// fraction of a microsecond of work per thread): nthreads, or 1 below that, or 1 when the call
// is small (below 2^22, a few hundred microseconds on one thread), the team would wake slowly
// (team_wake_slow()) and the call is not part of a burst (see above).
int small_call_threads(double fma, int nthreads);

// Runs body() on a team of P threads, or directly on the calling thread when P <= 1: a region
// with `if (false)` still builds and tears down a team in libgomp (about 3,000 instructions,
// the cost of a whole one-step call at small sizes). Inside body, team_id()/team_size() and
// the barriers work alike in both cases. A region notes when its first worker arrived
// (note_team_region).
template <class F>
inline void run_team(int P, F&& body) {
#if defined(_OPENMP)
  if (P > 1) {
    const std::int64_t start = monotonic_ns();
    std::atomic<std::int64_t> late{-1};
#pragma omp parallel num_threads(P)
    {
      if (omp_get_thread_num() == 1) late.store(monotonic_ns() - start, std::memory_order_relaxed);
      body();
    }
    note_team_region(start, late.load(std::memory_order_relaxed));
    return;
  }
#endif
  body();
}

// ISAs this CPU (and OS) can run, best last: "scalar", "generic", then "avx2", "avx512".
std::vector<std::string> available_isas();
// The active kernel table. Each call to the core reads it once at its start.
const Kernels& active_kernels();
// Select a table by name; throws std::invalid_argument naming the ISA if unknown or unsupported.
void set_isa(const std::string& name);
// The table chosen at import: LSTM_FAST_ISA if set (throws if unsupported), else the best.
void init_dispatch();

// Per-OS-thread override of get_num_threads() (0 clears it).
void set_local_num_threads(int n);
int get_local_num_threads();
// The thread count asked for (set_num_threads, this OS thread's override, else OMP_NUM_THREADS).
int get_num_threads();
// The CPUs this process may use: its affinity mask's, at most its cgroup's CPU quota rounded up
// (a container limited to 1.5 CPUs: 2), both read at import and by set_num_threads.
int usable_cpus();
// That quota in CPUs (quota / period, e.g. 1.5), the smallest of the process's cgroup and its
// ancestors (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us); 0 when none is set
// or off Linux.
double cpu_quota();
// The quota in CPUs that a cgroup file's text sets: "QUOTA PERIOD" as in cgroup v2's cpu.max
// (QUOTA "max": none), or cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us joined by a space
// (QUOTA -1: none). 0 for no limit, and for text that is not exactly two such fields.
double parse_cpu_quota(const std::string& text);
// The team a call runs on: get_num_threads(), at most usable_cpus() (more threads than CPUs only
// take turns, and each step's barrier waits for every one of them). Results are bitwise the
// same for any team size.
int team_threads();
// Tests: run teams of up to n threads whatever the CPUs (0: usable_cpus() again).
void set_cpu_limit(int n);
// True in a process forked after this one's thread team started: every call runs on one thread
// (GNU libgomp's team does not survive fork; see dispatch.cpp).
bool forked_serial();
void set_num_threads(int n);  // n >= 1

// Recurrence schedule override (LSTM_FAST_SCHEDULE=auto|units|batch|serial), read at import.
enum class Schedule { kAuto, kUnits, kBatch, kSerial };

// True on CPUs whose 512-bit FMA runs at half the rate of two 512-bit FMA units (AMD Zen 4: its
// FMA units are 256 bits wide); false elsewhere and off x86.
bool fma512_half_rate();

// Bytes of one core's L2 cache (sysconf; 1 MiB when the system does not say).
index_t l2_cache_bytes();
// Bytes of one core's L1 data cache (sysconf; 32 KiB when the system does not say).
index_t l1d_cache_bytes();

// Whether a per-step product prefetches the next chunks of the weight panels it streams (the
// LSTM step sweep, the GRU/RNN step products): the thread's panels take a quarter of L2 or more
// (below that they stay in L2 between steps).
inline bool step_prefetch(double panel_bytes) {
  return panel_bytes >= 0.25 * static_cast<double>(l2_cache_bytes());
}

// The fewest rows of a step for which a batch split of a recurrence (each thread computes its
// rows over all units, so each streams all of W_hh every step) beats a units split (each thread
// keeps its slice of W_hh in its own cache, one barrier per step); -1 when W_hh is too large
// for a batch split at any row count (> 2 MiB). Measured per step on 2 threads, LSTM forward:
// with W_hh at most half an L2 (H = 128: 256 KiB), the batch split wins from 4 rows per thread;
// with W_hh about one L2 (H = 256 on a 1 MiB L2), only from 16 rows per thread (units against
// batch, us per step: 2 rows per thread 7.8 against 12.8, 4 rows 15.0 against 16.0, 8 rows
// 26.6 against 31.0, 16 rows 57.7 against 53.1).
index_t batch_split_min_rows(double whh_bytes, int nthreads);

// Below this many FLOP per recurrent step (with fewer than two rows per thread) a recurrence
// runs on one thread: a step's share per thread would cost less than its barrier. The fused
// LSTM forward step (weight-stationary tiles, one StepBarrier of 60-75 ns on 2 threads) pays
// from ~3e4 FLOP per step on 2 threads (T = 300, us per step, serial against units: B = 1,
// H = 64 0.57-0.75 against 0.46-0.49; H = 128 2.0-2.5 against 1.3-1.5; B = 2, H = 128 2.3-2.9
// against 1.7-1.8; H = 32, 8e3 FLOP: 0.18-0.25 against 0.25); the barrier's cost grows with
// the team, so the threshold does too. The other steps keep 5e5: the backward's (a column
// split of dh with a shared packing of dZ_t per step: LSTM training at B = 2, H = 128 9.9 us
// per step serial against 6.8-12.6 split) and the GRU's and RNN's (a packed-panel product and
// a separate pointwise pass: no gain measured at B = 1-3, H = 64-128, GRU forward B = 2,
// H = 128 2.7-3.0 serial against 3.1-3.6 split).
inline double serial_step_flops(int nthreads, bool fused_lstm_forward) {
  return fused_lstm_forward ? 1.5e4 * nthreads : 5e5;
}
Schedule schedule_override();
void set_schedule_override(Schedule s);

// Flush denormals to zero (FTZ + DAZ) for the lifetime of the object, on the calling thread;
// the previous mode is restored on destruction. Opened at the start of every parallel region.
class DenormalGuard {
 public:
  DenormalGuard();
  ~DenormalGuard();
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
  unsigned long saved_;
};

}  // namespace lstm_fast
