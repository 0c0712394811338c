#include "dispatch.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <unistd.h>
#if defined(__linux__)
#include <sched.h>
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define LSTM_FAST_HAVE_ATFORK 1
#endif
#if defined(LSTM_FAST_X86)
#include <cpuid.h>
#include <xmmintrin.h>
#endif

namespace lstm_fast {
namespace {

std::atomic<const Kernels*> g_active{nullptr};
std::atomic<int> g_threads{0};
std::atomic<int> g_schedule{static_cast<int>(Schedule::kAuto)};

// Fork safety. GNU libgomp's thread team does not survive fork(): in a child process the first
// parallel region of more than one thread waits forever for workers that exist only in the
// parent (a DataLoader worker or a multiprocessing "fork" pool running a model would hang).
// Once a team of more than one thread may have started (get_num_threads() returned > 1), a
// child forked afterwards runs every call on its own thread: the results are bitwise those of
// any thread count, only slower. A child forked before that keeps its threads.
std::atomic<bool> g_team_used{false};
// hardware_concurrency() reads the CPU list from the system (tens of microseconds here): once,
// when the module loads, not in the first call.
const int g_hardware_threads = static_cast<int>(std::thread::hardware_concurrency());
std::atomic<bool> g_forked_serial{false};
#if defined(LSTM_FAST_HAVE_ATFORK)
void on_fork_child() {
  if (g_team_used.load(std::memory_order_relaxed))
    g_forked_serial.store(true, std::memory_order_relaxed);
}
[[maybe_unused]] const int g_atfork_registered = pthread_atfork(nullptr, nullptr, on_fork_child);
#endif

// The CPUs this process may run on: its affinity mask (taskset, a container's cpuset), else the
// hardware threads. A team larger than that only makes its threads take turns on the same
// cores, and every barrier of a step then waits for each of them to be scheduled: with 64
// threads on 2 CPUs a units-split RNN forward (T = 50, B = 16, H = 128) took 60x the time of 2.
int affinity_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  return std::max(1, g_hardware_threads);
}

#if defined(__linux__)
// A small file's contents (at most 4 KiB), or "" when it cannot be read.
std::string read_small_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return {};
  std::string text(4096, '\0');
  f.read(&text[0], static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(f.gcount()));
  return text;
}

// This process's cgroup path in the hierarchy of /proc/self/cgroup's line for `controller`
// (cgroup v1: "N:cpu,cpuacct:/path"), or of the cgroup v2 line ("0::/path") when controller is
// empty; "/" when there is no such line or the path leaves the namespace's root ("/..").
std::string own_cgroup(const std::string& cgroup_file, const std::string& controller) {
  std::istringstream lines(cgroup_file);
  for (std::string line; std::getline(lines, line);) {
    const std::size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string id = line.substr(0, a), ctrls = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    bool match = false;
    if (controller.empty()) {
      match = id == "0" && ctrls.empty();
    } else {
      std::istringstream names(ctrls);
      for (std::string n; std::getline(names, n, ',');) match = match || n == controller;
    }
    if (!match) continue;
    if (path.empty() || path[0] != '/' || path.find("/..") != std::string::npos) return "/";
    return path;
  }
  return "/";
}

// The smallest quota (in CPUs) of this process's cgroup and its ancestors up to the root, for
// cgroup v2 (cpu.max) and v1 (the cpu controller's cpu.cfs_quota_us and cpu.cfs_period_us); 0
// when none sets one. A container often sees its own cgroup as the root of the mount: its files
// are then /sys/fs/cgroup/cpu.max (or /sys/fs/cgroup/cpu/cpu.cfs_*), the walk's last step.
double cgroup_cpu_quota() {
  const std::string self = read_small_file("/proc/self/cgroup");
  double best = 0.0;
  auto walk = [&](const std::string& root, std::string path, auto&& quota_at) {
    while (true) {
      const std::string dir = root + (path == "/" ? std::string() : path);
      const double q = quota_at(dir);
      if (q > 0.0 && (best == 0.0 || q < best)) best = q;
      if (path == "/" || path.empty()) break;
      const std::size_t cut = path.find_last_of('/');
      path = cut == 0 || cut == std::string::npos ? "/" : path.substr(0, cut);
    }
  };
  walk("/sys/fs/cgroup", own_cgroup(self, ""),
       [](const std::string& dir) { return parse_cpu_quota(read_small_file(dir + "/cpu.max")); });
  walk("/sys/fs/cgroup/cpu", own_cgroup(self, "cpu"), [](const std::string& dir) {
    const std::string quota = read_small_file(dir + "/cpu.cfs_quota_us");
    if (quota.empty()) return 0.0;
    return parse_cpu_quota(quota + " " + read_small_file(dir + "/cpu.cfs_period_us"));
  });
  return best;
}
#else
double cgroup_cpu_quota() { return 0.0; }
#endif

// The CPUs a quota of q CPUs gives a team: ceil(q), at least 1 (no bound for q = 0: none).
int quota_cpus(double q) {
  if (!(q > 0.0)) return std::numeric_limits<int>::max();
  return static_cast<int>(std::max(1.0, std::ceil(std::min(q, 1e6))));
}

// The CPU quota (0: none) and the CPUs a team may use: the affinity mask's, at most the quota
// rounded up; both read at import and again by set_num_threads.
std::atomic<double> g_quota{cgroup_cpu_quota()};
std::atomic<int> g_cpus{std::min(affinity_cpus(), quota_cpus(g_quota.load()))};
std::atomic<int> g_cpu_limit{0};  // a test's override of g_cpus (0: none)

int note_team(int n) {
  if (n > 1 && !g_team_used.load(std::memory_order_relaxed))
    g_team_used.store(true, std::memory_order_relaxed);
  return n;
}

#if defined(LSTM_FAST_X86)
unsigned long long xgetbv0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

bool cpu_has_avx2_fma() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!(fma && osxsave && avx)) return false;
  if ((xgetbv0() & 0x6) != 0x6) return false;  // OS saves XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return b & (1u << 5);  // AVX2
}

bool cpu_has_avx512() {
  if (!cpu_has_avx2_fma()) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  if (!(f && dq && bw && vl)) return false;
  return (xgetbv0() & 0xe6) == 0xe6;  // OS saves opmask and ZMM state
}

// AMD family 19h (Zen 3 and Zen 4; of these only Zen 4 has AVX-512), whose FMA units are 256
// bits wide: a 512-bit FMA issues at one per cycle, half the rate of Intel's AVX-512 cores and
// AMD Zen 5.
bool cpu_fma512_half_rate() {
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  const bool amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned base = (a >> 8) & 0xf, ext = (a >> 20) & 0xff;
  return (base == 0xf ? base + ext : base) == 0x19;
}
#endif

}  // namespace

bool fma512_half_rate() {
#if defined(LSTM_FAST_X86)
  static const bool half = cpu_fma512_half_rate();
  return half;
#else
  return false;
#endif
}

namespace {

const Kernels* table_for(const std::string& name) {
  if (name == "scalar") return &kernels_scalar();
  if (name == "generic") return &kernels_generic();
#if defined(LSTM_FAST_X86)
  if (name == "avx2" && cpu_has_avx2_fma()) return &kernels_avx2();
  if (name == "avx512" && cpu_has_avx512()) return &kernels_avx512();
#endif
  return nullptr;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> isas = {"scalar", "generic"};
#if defined(LSTM_FAST_X86)
  if (cpu_has_avx2_fma()) isas.push_back("avx2");
  if (cpu_has_avx512()) isas.push_back("avx512");
#endif
  return isas;
}

const Kernels& active_kernels() {
  const Kernels* k = g_active.load(std::memory_order_acquire);
  return k ? *k : kernels_scalar();
}

void set_isa(const std::string& name) {
  const Kernels* k = table_for(name);
  if (!k) {
    const bool known = name == "scalar" || name == "generic" || name == "avx2" || name == "avx512";
    throw std::invalid_argument(
        std::string("LSTM_FAST_ISA: ") +
        (known ? "this CPU does not support '" + name + "'" : "unknown ISA '" + name + "'") +
        "; available: " + join(available_isas()));
  }
  g_active.store(k, std::memory_order_release);
}

void init_dispatch() {
  const char* env = std::getenv("LSTM_FAST_ISA");
  if (env && *env) {
    set_isa(env);
  } else {
    set_isa(available_isas().back());
  }
  const char* sched = std::getenv("LSTM_FAST_SCHEDULE");
  if (sched && *sched) {
    const std::string s = sched;
    if (s == "auto") set_schedule_override(Schedule::kAuto);
    else if (s == "units") set_schedule_override(Schedule::kUnits);
    else if (s == "batch") set_schedule_override(Schedule::kBatch);
    else if (s == "serial") set_schedule_override(Schedule::kSerial);
    else
      throw std::invalid_argument("LSTM_FAST_SCHEDULE: expected one of auto, units, batch, serial, got '" +
                                  s + "'");
  }
}

namespace {
thread_local StepBarrier* t_step_barrier = nullptr;
thread_local int t_step_level = -1;  // omp_get_level() where t_step_barrier was set

int parallel_level() {
#if defined(_OPENMP)
  return omp_get_level();
#else
  return 0;
#endif
}
}  // namespace

StepBarrier* current_step_barrier() {
  return t_step_barrier && t_step_level == parallel_level() ? t_step_barrier : nullptr;
}

BarrierScope::BarrierScope(StepBarrier* b)
    : previous_(t_step_barrier), previous_level_(t_step_level) {
  t_step_barrier = b;
  t_step_level = parallel_level();
}
BarrierScope::~BarrierScope() {
  t_step_barrier = previous_;
  t_step_level = previous_level_;
}

void StepBarrier::wait(int n) {
  if (n <= 1) return;
  const unsigned gen = phase.load(std::memory_order_acquire);
  if (arrived.fetch_add(1, std::memory_order_acq_rel) == static_cast<unsigned>(n - 1)) {
    // Last to arrive: reset the count before opening the next generation (a thread released
    // by it may arrive at the next barrier at once).
    arrived.store(0, std::memory_order_relaxed);
    phase.store(gen + 1, std::memory_order_release);
    return;
  }
  for (int spin = 0; phase.load(std::memory_order_acquire) == gen; ++spin) {
    // A few microseconds of spinning covers a balanced step's wait; longer waits mean the
    // other thread is not running (e.g. just created and still queued on this vCPU), and
    // spinning would only keep it off.
    if (spin < 256) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      __asm__ __volatile__("yield");
#endif
    } else {
      std::this_thread::yield();  // the thread we wait for may need this core
    }
  }
}

// A per-thread override (0: none), for a Python thread that runs one of two concurrent
// directions of a bidirectional layer on its share of the cores.
thread_local int t_local_threads = 0;

void set_local_num_threads(int n) { t_local_threads = n < 0 ? 0 : n; }
int get_local_num_threads() { return t_local_threads; }

int get_num_threads() {
  if (g_forked_serial.load(std::memory_order_relaxed)) return 1;
  if (t_local_threads > 0) return t_local_threads;
  int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) return n;
#if defined(_OPENMP)
  // The runtime's default (OMP_NUM_THREADS), bounded like set_num_threads' argument.
  return std::min(omp_get_max_threads(), std::max(64, 4 * g_hardware_threads));
#else
  return 1;
#endif
}

double parse_cpu_quota(const std::string& text) {
  // Two fields and nothing else: QUOTA ("max", or an integer; negative: none) and PERIOD (a
  // positive integer), microseconds each.
  std::istringstream in(text);
  std::string quota, period, extra;
  if (!(in >> quota >> period) || (in >> extra)) return 0.0;
  if (quota == "max") return 0.0;
  auto integer = [](const std::string& f, long long* v) {
    if (f.empty() || f.size() > 18) return false;
    std::size_t i = f[0] == '-' ? 1 : 0;
    if (i == f.size()) return false;
    for (std::size_t j = i; j < f.size(); ++j)
      if (f[j] < '0' || f[j] > '9') return false;
    *v = std::stoll(f);
    return true;
  };
  long long q = 0, p = 0;
  if (!integer(quota, &q) || !integer(period, &p) || q <= 0 || p <= 0) return 0.0;
  return static_cast<double>(q) / static_cast<double>(p);
}

double cpu_quota() { return g_quota.load(std::memory_order_relaxed); }

int usable_cpus() {
  const int limit = g_cpu_limit.load(std::memory_order_relaxed);
  return limit > 0 ? limit : g_cpus.load(std::memory_order_relaxed);
}

int team_threads() {
  const int n = get_num_threads(), cpus = usable_cpus();
  return note_team(n < cpus ? n : cpus);
}

void set_cpu_limit(int n) { g_cpu_limit.store(n < 0 ? 0 : n, std::memory_order_relaxed); }

namespace {
std::atomic<std::int64_t> g_team_end{0};  // monotonic_ns() when the last region ended (0: none)
std::atomic<std::int64_t> g_slow_gap{std::numeric_limits<std::int64_t>::max()};
std::atomic<std::int64_t> g_team_regions{0};
std::atomic<std::int64_t> g_last_alone{0};  // when small_call_threads last chose one thread
constexpr std::int64_t kBurstNs = 1000000;  // 1 ms
}  // namespace

std::int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void note_team_region(std::int64_t start_ns, std::int64_t late_ns) {
  g_team_regions.fetch_add(1, std::memory_order_relaxed);
  const std::int64_t end = g_team_end.exchange(monotonic_ns(), std::memory_order_relaxed);
  if (end == 0 || late_ns < 0 || start_ns <= end) return;  // no gap known (first region, or
                                                          // regions of threads running at once)
  const std::int64_t gap = start_ns - end;
  if (gap < kSlowWakeNs) return;  // the workers were still spinning
  // Only learned, never unlearned: a quick arrival after a long gap proves little, as a region
  // this one does not see (the GEMM's, torch's in the same runtime) may have woken the team
  // just before, and a wrong "slow" costs a small call at most its time on one thread.
  if (late_ns >= kSlowWakeNs && gap < g_slow_gap.load(std::memory_order_relaxed))
    g_slow_gap.store(gap, std::memory_order_relaxed);
}

bool team_wake_slow() {
  const std::int64_t end = g_team_end.load(std::memory_order_relaxed);
  return end != 0 && monotonic_ns() - end >= g_slow_gap.load(std::memory_order_relaxed);
}

std::int64_t slow_wake_gap_ns() { return g_slow_gap.load(std::memory_order_relaxed); }
std::int64_t team_end_ns() { return g_team_end.load(std::memory_order_relaxed); }
void set_slow_wake_gap_ns(std::int64_t ns) {
  g_slow_gap.store(ns > 0 ? ns : std::numeric_limits<std::int64_t>::max(),
                   std::memory_order_relaxed);
}
std::int64_t team_regions() { return g_team_regions.load(std::memory_order_relaxed); }

int small_call_threads(double fma, int nthreads) {
  if (nthreads <= 1 || fma < double(1 << 17)) return 1;
  if (fma < double(1 << 22) && team_wake_slow()) {
    // An isolated call runs alone; a call within kBurstNs of the previous one that did is a
    // burst after the gap: it wakes the team, which its successors then find awake (without
    // this, every call of the burst ran alone, the team's last region being long ago).
    const std::int64_t now = monotonic_ns();
    if (now - g_last_alone.exchange(now, std::memory_order_relaxed) >= kBurstNs) return 1;
  }
  return nthreads;
}

bool forked_serial() { return g_forked_serial.load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  // The affinity mask and the cgroup's CPU quota may have changed since import
  // (os.sched_setaffinity, a container's limit updated): read them again.
  const double quota = cgroup_cpu_quota();
  g_quota.store(quota, std::memory_order_relaxed);
  g_cpus.store(std::min(affinity_cpus(), quota_cpus(quota)), std::memory_order_relaxed);
  g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed);
}

namespace {
// A cache size the system reports (sysconf's value v, 0 when unknown), or `fallback` when it
// says nothing plausible.
index_t cache_bytes(long v, long lo, long hi, index_t fallback) {
  return v >= lo && v <= hi ? static_cast<index_t>(v) : fallback;
}
}  // namespace

index_t l2_cache_bytes() {
#if defined(_SC_LEVEL2_CACHE_SIZE)
  static const index_t bytes =
      cache_bytes(sysconf(_SC_LEVEL2_CACHE_SIZE), 64 << 10, 64 << 20, 1 << 20);
#else
  static const index_t bytes = 1 << 20;
#endif
  return bytes;
}

index_t l1d_cache_bytes() {
#if defined(_SC_LEVEL1_DCACHE_SIZE)
  static const index_t bytes =
      cache_bytes(sysconf(_SC_LEVEL1_DCACHE_SIZE), 8 << 10, 4 << 20, 32 << 10);
#else
  static const index_t bytes = 32 << 10;
#endif
  return bytes;
}

index_t batch_split_min_rows(double whh_bytes, int nthreads) {
  if (whh_bytes > 2.0 * (1 << 20)) return -1;
  const index_t per_thread = whh_bytes <= 0.5 * static_cast<double>(l2_cache_bytes()) ? 4 : 16;
  return per_thread * std::max(1, nthreads);
}

Schedule schedule_override() { return static_cast<Schedule>(g_schedule.load()); }
void set_schedule_override(Schedule s) { g_schedule.store(static_cast<int>(s)); }

#if defined(LSTM_FAST_X86)
DenormalGuard::DenormalGuard() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
DenormalGuard::~DenormalGuard() { _mm_setcsr(static_cast<unsigned>(saved_)); }
#elif defined(__aarch64__)
DenormalGuard::DenormalGuard() {
  unsigned long fpcr;
  __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
  saved_ = fpcr;
  __asm__ volatile("msr fpcr, %0" ::"r"(fpcr | (1ul << 24)));
}
DenormalGuard::~DenormalGuard() { __asm__ volatile("msr fpcr, %0" ::"r"(saved_)); }
#else
DenormalGuard::DenormalGuard() : saved_(0) {}
DenormalGuard::~DenormalGuard() {}
#endif

}  // namespace lstm_fast
