"""Time lstm_fast's LSTM against the NumPy reference and, with --peers, against torch.nn.LSTM,
torch.nn.LSTMCell (one-step shapes) and ONNX Runtime's LSTM operator, in one run.

For each shape, mode (forward = inference, training = forward + backward) and thread count it
prints the time per call (median of adaptive repeats after a warm-up; the implementations of a
cell take turns in short batches, so a shared machine's load falls on all alike), GFLOP/s by
the FLOP model 2*T*B*(I+H)*4H (training 3x), the percentage of the machine's peak (NumPy
float32 matmul GFLOP/s measured at the top of the same run, per thread count) and, per peer,
the ratio peer time / lstm_fast time (>= 1 means lstm_fast is faster).

Canonical shapes (T,B,I,H): S1 100,32,256,256  S2 50,64,512,512  S3 100,128,1024,1024
S4 1,1,256,256  S5 500,1,64,128  S6 100,16,65,100.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _peers

SHAPES: dict[str, tuple[int, int, int, int]] = {
    "S1": (100, 32, 256, 256),
    "S2": (50, 64, 512, 512),
    "S3": (100, 128, 1024, 1024),
    "S4": (1, 1, 256, 256),
    "S5": (500, 1, 64, 128),
    "S6": (100, 16, 65, 100),
}
# Shapes whose forward exceeds this many FLOPs are "big": fewer repeats, and --quick leaves the
# NumPy reference out on them (S2, S3).
BIG_FLOPS = 1e10
HEAVY_FLOPS = 1e11  # S3: minimum repeats lowered further
SCHEMA = "lstm_fast.bench/1"
# OpenBLAS kernel sets (threadpoolctl's "architecture") that use at most AVX2.
_AVX2_BLAS_KERNELS = {"haswell", "zen", "sandybridge", "excavator"}
MODE_ABBR = {"forward": "fwd", "training": "train"}


# ----------------------------------------------------------------------------- argument parsing


def _positive_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(
            f"expected {what} as comma-separated positive integers, got {text!r}"
        )
    return vals


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``"T,B,I,H"`` -> (T, B, I, H), four positive integers."""
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(
            f"expected T,B,I,H (four positive integers, e.g. 100,32,256,256), got {text!r}"
        )
    return vals  # type: ignore[return-value]


def parse_shape_names(text: str) -> list[str]:
    """``"S1,S6"`` -> ["S1", "S6"] (case-insensitive; ``all`` for S1..S6)."""
    if text.strip().lower() == "all":
        return list(SHAPES)
    names = [v.strip().upper() for v in text.split(",") if v.strip()]
    bad = [n for n in names if n not in SHAPES]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown shape {', '.join(map(repr, bad)) or repr(text)}; "
            f"expected names from {', '.join(SHAPES)} (or 'all'), or use --shape T,B,I,H"
        )
    return list(dict.fromkeys(names))  # (as --modes and --threads: "S1,S1" runs S1 once)


def parse_modes(text: str) -> list[str]:
    modes = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [m for m in modes if m not in _peers.MODES]
    if not modes or bad:
        raise argparse.ArgumentTypeError(
            f"unknown mode {', '.join(map(repr, bad)) or repr(text)}; "
            f"expected a comma-separated list of {', '.join(_peers.MODES)}"
        )
    return list(dict.fromkeys(modes))


def parse_threads(text: str) -> list[int]:
    return list(dict.fromkeys(_positive_ints(text, "thread counts")))


def core_count() -> int:
    """CPUs this process may run on: its affinity mask, at most its cgroup's CPU quota rounded
    up (``cpu_info()['cpu_quota']``), as lstm_fast's thread team."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        from lstm_fast import cpu_info

        quota = cpu_info().get("cpu_quota")
    except ImportError:
        quota = None
    if quota:
        n = min(n, max(1, math.ceil(quota)))
    return n


def omp_num_threads() -> int | None:
    """OMP_NUM_THREADS when it is one positive integer, at most ``max_threads()`` (lstm_fast's
    default team: OMP_NUM_THREADS=100 on a machine whose limit is 64 runs 64), else None."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "").strip())
    except ValueError:
        return None
    if n < 1:
        return None
    from ._core import max_threads

    return min(n, max_threads())


def default_threads() -> int:
    """The larger default thread count: OMP_NUM_THREADS when set (as lstm_fast's own default
    team; a user who set it to 1 gets no 2-thread rows), else :func:`core_count`."""
    return omp_num_threads() or core_count()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--shapes",
        type=parse_shape_names,
        metavar="S1,S6",
        help="canonical shapes to run (default: all; with --quick: all but S3)",
    )
    g.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="T,B,I,H",
        help="a literal shape (repeatable); replaces the default shapes",
    )
    g.add_argument(
        "--modes",
        type=parse_modes,
        default=list(_peers.MODES),
        metavar="forward,training",
        help="modes to run (default: both)",
    )
    g.add_argument(
        "--threads",
        type=parse_threads,
        metavar="1,2",
        help=f"thread counts (default: 1 and the core count, here {core_count()}; "
        "OMP_NUM_THREADS, when set, replaces the core count)",
    )
    g.add_argument(
        "--peers",
        action="store_true",
        help="also time torch.nn.LSTM, torch.nn.LSTMCell (T = 1) and ONNX Runtime when installed",
    )
    g.add_argument("--no-reference", action="store_true", help="do not time the NumPy reference")
    g.add_argument(
        "--cold-start",
        action="store_true",
        help="also time the first call in a fresh process (python -c ...) vs steady state",
    )
    t = p.add_argument_group("timing")
    t.add_argument(
        "--quick",
        action="store_true",
        help="tiny repeat counts, small peak matmul, skip S3 and the reference on big shapes",
    )
    t.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="time budget per implementation and cell, at most 3600 (default 1.0; --quick 0.1)",
    )
    t.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="minimum timed repeats per cell, 1 to 10000 (default 5; --quick 1; by default "
        "at most 3 on big shapes such as S2, 2 on S3, and 1 of the reference there)",
    )
    t.add_argument(
        "--peak-size",
        type=int,
        metavar="N",
        help="N for the N x N float32 matmul that measures the peak, 16 to 8192 "
        "(default 2048; --quick 1024)",
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    o = p.add_argument_group("output")
    o.add_argument(
        "--json",
        metavar="PATH",
        help="write all raw results as JSON to PATH ('-': to stdout, and the table to stderr)",
    )
    o.add_argument(
        "--plot",
        metavar="PATH.png",
        help="write a bar chart (needs matplotlib; a PATH without an extension gets .png)",
    )


# ------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    median_s: float
    min_s: float
    mean_s: float
    stdev_s: float
    repeats: int
    warmup: int
    first_s: float

    def as_dict(self) -> dict:
        return {
            "median_ms": self.median_s * 1e3,
            "min_ms": self.min_s * 1e3,
            "mean_ms": self.mean_s * 1e3,
            "stdev_ms": self.stdev_s * 1e3,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "first_call_ms": self.first_s * 1e3,
        }


def _warm_up(
    fn: Callable[[], object], warmup: int, budget: float
) -> tuple[int, float | None, float]:
    """At least ``warmup`` calls, then more while they fill under a tenth of ``budget`` (at most
    100): (calls made, the first one's time or None, the last one's time)."""
    perf = time.perf_counter
    first, last, n = None, 0.0, 0
    start = perf()
    while n < max(warmup, 0) or (n and n < 100 and perf() - start < 0.1 * budget):
        t = perf()
        fn()
        last = perf() - t
        first = last if first is None else first
        n += 1
    return n, first, last


def _timing(times: list[float], warmup: int, first: float | None) -> Timing:
    return Timing(
        median_s=statistics.median(times),
        min_s=min(times),
        mean_s=statistics.fmean(times),
        stdev_s=statistics.stdev(times) if len(times) > 1 else 0.0,
        repeats=len(times),
        warmup=warmup,
        first_s=times[0] if first is None else first,
    )


def time_call(
    fn: Callable[[], object],
    *,
    budget: float,
    min_repeats: int,
    max_repeats: int = 10_000,
    warmup: int = 1,
) -> Timing:
    """Median of adaptive repeats of ``fn()`` after a warm-up, timed with ``time.perf_counter``.

    Warm-up: at least ``warmup`` calls, then more while they fill under a tenth of the budget (at
    most 100). Repeats: as many as fit in ``budget``, clamped to [min_repeats, max_repeats].
    """
    perf = time.perf_counter
    n_warm, first, _ = _warm_up(fn, warmup, budget)
    times: list[float] = []
    deadline = perf() + budget
    while len(times) < max_repeats:
        t = perf()
        fn()
        times.append(perf() - t)
        if len(times) >= min_repeats and perf() >= deadline:
            break
    return _timing(times, n_warm, first)


def _other_threads_ns() -> int | None:
    """CPU time (ns) run so far by this process's threads other than the calling one (Linux:
    /proc/self/task/*/schedstat), or None where that cannot be read."""
    me = threading.get_native_id()
    total = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        if tid == str(me):
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return total


def wait_quiet(min_s: float, max_s: float = 0.5, window_s: float = 0.02) -> float:
    """Sleep at least ``min_s``, then until no other thread of this process has run for a
    window of ``window_s`` (at most ``max_s`` in all); returns the seconds waited.

    Runtimes keep their worker threads spinning after a call: NumPy's OpenBLAS pool for about
    0.14 s after a matmul (measured here, a whole vCPU), ONNX Runtime's for up to 40 ms,
    OpenMP teams for a few ms. A call timed while another runtime's threads spin shares the
    cores with them (up to 2x slower on 2 threads), so each timed batch waits for quiet."""
    t0 = time.perf_counter()
    time.sleep(min_s)
    prev = _other_threads_ns()
    if prev is None:
        return time.perf_counter() - t0
    while time.perf_counter() - t0 < max_s:
        time.sleep(window_s)
        cur = _other_threads_ns()
        if cur is None or cur - prev < 0.05 * window_s * 1e9:
            break
        prev = cur
    return time.perf_counter() - t0


class CallFailed(Exception):
    """An implementation raised while being timed (``__cause__`` holds its exception)."""


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    budget: float,
    min_repeats: dict[str, int],
    warmup: dict[str, int],
    max_repeats: int = 10_000,
    round_s: float = 0.2,
    max_round_s: float = 1.0,
    gap_s: float = 0.05,
    settle_below_s: float = 0.02,
) -> dict[str, Timing | CallFailed]:
    """Time several implementations of one problem *interleaved*: after each one's warm-up
    (as :func:`time_call`), rounds in which every implementation in turn makes a short batch of
    calls, each call timed on its own, the starting implementation rotating from round to
    round. A shared machine's slow and fast moments then fall on all of them alike, and their
    ratios hold where back-to-back blocks of a second each can differ by half.

    A batch lasts about as long as the slowest implementation's call (at least ``round_s``, at
    most ``max_round_s``; one call when a call is longer), so every implementation gets the same
    share of each round. After each batch, ``gap_s`` of sleep (0: none) and then
    :func:`wait_quiet` let the worker threads of the runtime that just ran go idle before the
    next one starts: after a call on 2 threads, lstm_fast's and torch's OpenMP teams spin for
    about 10 ms of CPU, ONNX Runtime's pool for up to 40 ms and NumPy's OpenBLAS pool for about
    0.14 s, and a runtime timed inside another's spinning measured up to 2x slow (S1 forward,
    S5 training). Calls shorter than ``settle_below_s`` start each batch with one
    untimed call (counted with the warm-up), as the gap leaves the caches cold. An
    implementation stops once it has ``min_repeats`` calls and ``budget`` seconds of them (or
    ``max_repeats`` calls); one that raises gets a :class:`CallFailed` instead of a
    :class:`Timing` and the others go on.
    """
    perf = time.perf_counter
    out: dict[str, Timing | CallFailed] = {}
    first: dict[str, float] = {}
    n_warm: dict[str, int] = {}
    per_call: dict[str, float] = {}
    times: dict[str, list[float]] = {}

    def failed(e: Exception) -> CallFailed:
        err = CallFailed(f"{type(e).__name__}: {e}")
        err.__cause__ = e
        return err

    for name, fn in fns.items():
        try:
            k, t0, dt = _warm_up(fn, warmup.get(name, 1), budget)
        except Exception as e:  # noqa: BLE001 - one failing implementation must not end the run
            out[name] = failed(e)
            continue
        if t0 is not None:
            first[name] = t0
        # no warm-up call: the call time is unknown, so one call per batch until measured
        n_warm[name], per_call[name], times[name] = k, dt if k else float("inf"), []
        if gap_s > 0:
            wait_quiet(gap_s)

    def done(name: str) -> bool:
        ts = times[name]
        return len(ts) >= max_repeats or (len(ts) >= min_repeats.get(name, 1) and sum(ts) >= budget)

    names = list(times)
    rot = 0
    while True:
        live = [n for n in names if n not in out and not done(n)]
        if not live:
            break
        order = names[rot:] + names[:rot]
        rot = (rot + 1) % max(len(names), 1)
        known = [per_call[n] for n in live if per_call[n] != float("inf")]
        span = min(max([round_s, *known]), max_round_s)
        for name in order:
            if name in out or done(name):
                continue
            k = max(1, min(int(span / max(per_call[name], 1e-7)), max_repeats - len(times[name])))
            batch = []
            try:
                if per_call[name] < settle_below_s:
                    fns[name]()
                    n_warm[name] += 1
                for _ in range(k):
                    t = perf()
                    fns[name]()
                    batch.append(perf() - t)
            except Exception as e:  # noqa: BLE001
                out[name] = failed(e)
                continue
            times[name].extend(batch)
            per_call[name] = statistics.median(batch)
            if gap_s > 0:
                wait_quiet(gap_s)
    for name in names:
        if name in out:
            continue
        out[name] = _timing(times[name], n_warm[name], first.get(name))
    return {name: out[name] for name in fns}


def measure_peak(threads: int, n: int, budget: float, min_repeats: int) -> dict:
    """NumPy float32 ``n x n @ n x n`` GFLOP/s (best repeat), its BLAS at ``threads`` threads."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with _peers.blas_control().limit(threads):
        tm = time_call(lambda: np.matmul(a, b, out=out), budget=budget, min_repeats=min_repeats)
    flops = 2.0 * n**3
    # The peak is the best repeat: the machine's practical rate, least disturbed by other load.
    return {
        "threads": threads,
        "n": n,
        "ms": tm.min_s * 1e3,
        "gflops": flops / tm.min_s / 1e9,
        "median_ms": tm.median_s * 1e3,
        "median_gflops": flops / tm.median_s / 1e9,
        "repeats": tm.repeats,
    }


# ------------------------------------------------------------------------------------ settings


@dataclass
class Settings:
    shapes: list[tuple[str, tuple[int, int, int, int]]]
    modes: list[str]
    threads: list[int]
    impls: list[str]
    budget: float
    min_repeats: int
    peak_size: int
    quick: bool
    seed: int
    repeats_given: bool = False  # --repeats: the minimum of every cell, big shapes too


def resolve(args: argparse.Namespace) -> Settings:
    """Defaults that depend on --quick and the machine."""
    quick = bool(args.quick)
    if args.shape:
        shapes = [("custom", s) for s in args.shape]
        shapes += [(n, SHAPES[n]) for n in (args.shapes or [])]
    elif args.shapes:
        shapes = [(n, SHAPES[n]) for n in args.shapes]
    else:
        shapes = [(n, s) for n, s in SHAPES.items() if not (quick and n == "S3")]
    threads = args.threads or list(dict.fromkeys([1, default_threads()]))
    impls = ["lstm_fast"]
    if not args.no_reference:
        impls.append("numpy")
    if args.peers:
        impls += list(_peers.PEERS)
    budget = args.budget if args.budget is not None else (0.1 if quick else 1.0)
    min_repeats = args.repeats if args.repeats is not None else (1 if quick else 5)
    peak = args.peak_size if args.peak_size is not None else (1024 if quick else 2048)
    return Settings(
        shapes=shapes,
        modes=list(args.modes),
        threads=threads,
        impls=impls,
        budget=budget,
        min_repeats=max(1, min_repeats),
        peak_size=peak,
        quick=quick,
        seed=args.seed,
        repeats_given=args.repeats is not None,
    )


# the peak matmul holds three N x N float32 matrices: 768 MiB at N = 8192
MAX_PEAK_SIZE = 8192
# --budget is per implementation and cell: an hour is far beyond any use, a typo beyond it
MAX_BUDGET = 3600.0
# --repeats: the timing loops stop at this many calls anyway (time_interleaved's max_repeats)
MAX_REPEATS = 10_000


def shape_bytes(T: int, B: int, I: int, H: int) -> int:
    """A lower bound of the memory one cell of shape (T, B, I, H) needs: the problem's float32
    x, dy, weights and states, lstm_fast's outputs and its training caches (gates, cells)."""
    return 4 * (2 * T * B * I + 8 * T * B * H + 8 * H * (I + H) + 4 * B * H)


def _available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (bytes), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def plot_path(path: str) -> str:
    """The file matplotlib writes for ``--plot PATH``: PATH, or PATH.png when it has no
    extension (savefig appends one)."""
    return path if os.path.splitext(path)[1] else path + ".png"


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written as a file; None when it can. A file that does not exist
    yet is created and removed again (os.access passes anything for root, and some directories,
    /proc or a read-only mount, look writable but refuse new files)."""
    if not path:
        return "expected a file path, got ''"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"directory {parent!r} does not exist"
    if os.path.isdir(path):
        return f"expected a file path, got the directory {path!r}"
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{path!r} is not writable"
    if not os.path.exists(path):
        try:
            with open(path, "x"):
                pass
            os.remove(path)
        except OSError as e:
            return f"cannot create {path!r}: {e.strerror or e}"
    return None


def _check_args(args: argparse.Namespace) -> str | None:
    """Errors argparse cannot express; None when fine. Checked before anything runs, so a bad
    option never costs a whole benchmark."""
    if args.budget is not None and not 0 < args.budget <= MAX_BUDGET:  # (NaN fails too)
        return (
            f"--budget: expected a positive, finite number of seconds, at most {MAX_BUDGET:g}, "
            f"got {args.budget}"
        )
    if args.seed < 0:
        return f"--seed: expected an integer >= 0, got {args.seed}"
    if args.repeats is not None and not 1 <= args.repeats <= MAX_REPEATS:
        return f"--repeats: expected an integer in [1, {MAX_REPEATS}], got {args.repeats}"
    avail = _available_bytes()
    for shape in args.shape or []:
        need = shape_bytes(*shape)
        if avail is not None and need > avail:
            return (
                f"--shape {','.join(map(str, shape))}: needs about {need / 2**30:.3g} GiB "
                f"(inputs, outputs and training caches), {avail / 2**30:.3g} GiB available"
            )
    if args.peak_size is not None and not 16 <= args.peak_size <= MAX_PEAK_SIZE:
        return (
            f"--peak-size: expected an integer in [16, {MAX_PEAK_SIZE}] (three N x N float32 "
            f"matrices), got {args.peak_size}"
        )
    if args.threads:
        from ._core import max_threads

        limit = max_threads()
        if max(args.threads) > limit:
            return f"--threads: expected thread counts in [1, {limit}], got {max(args.threads)}"
    if args.plot is not None and os.path.isdir(args.plot):
        return f"--plot: expected a file path, got the directory {args.plot!r}"
    outputs = [("--json", args.json), ("--plot", args.plot and plot_path(args.plot))]
    if args.json and args.plot and os.path.realpath(args.json) == os.path.realpath(outputs[1][1]):
        return f"--plot: expected a file other than --json's, got {outputs[1][1]!r} for both"
    for opt, path in outputs:
        if path is not None and not (opt == "--json" and path == "-"):
            problem = _unwritable(path)
            if problem:
                return f"{opt}: {problem}"
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (first: a blocked matplotlib must stay blocked)
            from matplotlib.backend_bases import FigureCanvasBase
        except ImportError:
            return (
                "--plot: matplotlib is not installed "
                "(pip install matplotlib, or the 'bench' extra: pip install 'lstm_fast[bench]')"
            )
        ext = os.path.splitext(plot_path(args.plot))[1][1:].lower()
        kinds = FigureCanvasBase.get_supported_filetypes()
        if ext not in kinds:
            return (
                f"--plot: expected an image file matplotlib writes (.png, .svg, .pdf, ...), "
                f"got {args.plot!r}"
            )
    return None


# ----------------------------------------------------------------------------------- machine


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": core_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict:
    import lstm_fast

    v = {"lstm_fast": lstm_fast.__version__, "python": platform.python_version()}
    v.update(_peers.peer_versions())
    return v


# ---------------------------------------------------------------------------------- the run


def _cell_settings(name, mode, st: Settings, flops) -> tuple[int, int] | None:
    """(minimum repeats, warm-up calls) of one implementation in one cell; None: skipped."""
    big = flops / (3.0 if mode == "training" else 1.0) > BIG_FLOPS
    heavy = flops / (3.0 if mode == "training" else 1.0) > HEAVY_FLOPS
    if name == "numpy" and st.quick and big:
        return None
    min_rep = st.min_repeats
    # Two warm-up calls: a training step's outputs and caches are still alive while the next
    # call allocates (as in a training loop), so allocators that reuse memory (lstm_fast's pool,
    # torch's) reach their steady state on the third call. The first call is reported apart.
    warmup = 2
    if big and not st.repeats_given:  # (an explicit --repeats is what the user asked for)
        min_rep = min(min_rep, 3)
    if heavy and not st.repeats_given:
        min_rep = min(min_rep, 2)
    if name == "numpy" and big:
        warmup = 0  # nothing to warm up in NumPy; one call is seconds long
        min_rep = min_rep if st.repeats_given else 1
    return min_rep, warmup


def _time_cell(problem, mode, threads, st: Settings, flops, peak_gflops) -> dict:
    """Prepare every implementation of one cell, time them interleaved (time_interleaved) and
    return the result dicts of the JSON, by implementation."""
    res: dict[str, dict] = {}
    fns: dict[str, Callable[[], object]] = {}
    settings: dict[str, tuple[int, int]] = {}
    with _peers.thread_limits(threads):
        for name in st.impls:
            cfg = _cell_settings(name, mode, st, flops)
            if cfg is None:
                res[name] = {"status": "skipped (--quick, big shape)"}
                continue
            try:
                fns[name] = _peers.make(name, problem, mode, threads)
                settings[name] = cfg
            except _peers.Unavailable as e:
                res[name] = {"status": str(e)}
            except _peers.Mismatch as e:
                res[name] = {"status": "mismatch", "error": str(e)}
            except Exception as e:  # noqa: BLE001 - one failing implementation must not end the run
                res[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"}
            wait_quiet(0.02)  # let spinning worker threads of one runtime go idle
        timed = time_interleaved(
            fns,
            budget=st.budget,
            min_repeats={n: c[0] for n, c in settings.items()},
            warmup={n: c[1] for n, c in settings.items()},
        )
    for name, tm in timed.items():
        if isinstance(tm, CallFailed):
            res[name] = {"status": "error", "error": str(tm)}
            continue
        r = {"status": "ok", **tm.as_dict()}
        r["gflops"] = flops / tm.median_s / 1e9
        r["pct_peak"] = 100.0 * r["gflops"] / peak_gflops if peak_gflops else None
        res[name] = r
    return {name: res[name] for name in st.impls}


def _fmt_ms(ms: float) -> str:
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _fmt_ratio(r: float) -> str:
    """2.41x; 123x; below 0.1 two significant digits (0.0045x, not 0.00x)."""
    if r >= 100:
        return f"{r:.0f}x"
    if r >= 0.1 or r <= 0 or not math.isfinite(r):
        return f"{r:.2f}x"
    return f"{r:.{1 - math.floor(math.log10(r))}f}x"


def _peer_cell(res: dict) -> str:
    """'2.41x 29.7ms', or why there is no ratio: n/a, not installed, skipped, error, MISMATCH."""
    status = res.get("status", "?")
    if status == "ok":
        if "speedup" not in res:  # lstm_fast itself failed in this cell
            return f"{_fmt_ms(res['median_ms'])}ms"
        return f"{_fmt_ratio(res['speedup'])} {_fmt_ms(res['median_ms'])}ms"
    for prefix, text in (
        ("not installed", "not installed"),
        ("not available", "unavailable"),
        ("n/a", "n/a"),
        ("skipped", "skipped"),
        ("mismatch", "MISMATCH"),
    ):
        if status.startswith(prefix):
            return text
    return "error"


SHORT = {
    "numpy": "vs numpy",
    "torch.nn.LSTM": "vs torch LSTM",
    "torch.nn.LSTMCell": "vs LSTMCell",
    "onnxruntime": "vs ORT",
}


class Table:
    """Rows printed as they are measured, so a long run shows progress."""

    def __init__(self, impls: list[str], out=sys.stdout):
        self.peers = [i for i in impls if i != "lstm_fast"]
        self.out = out
        self.cols = [
            ("shape", 6, "<"),
            ("T,B,I,H", 18, "<"),
            ("mode", 9, "<"),
            ("thr", 3, ">"),
            ("ms", 9, ">"),
            ("GFLOP/s", 8, ">"),
            ("%peak", 6, ">"),
        ] + [(SHORT[p], 17, ">") for p in self.peers]

    def _line(self, cells) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, (_, w, a) in zip(cells, self.cols)).rstrip()

    def header(self) -> None:
        head = self._line([c[0] for c in self.cols])
        print(head, file=self.out)
        print("-" * len(head), file=self.out, flush=True)

    def row(self, cell: dict) -> None:
        ours = cell["impls"]["lstm_fast"]
        shape = ",".join(str(cell[k]) for k in "TBIH")
        if ours["status"] == "ok":
            pct = ours["pct_peak"]
            main = [
                _fmt_ms(ours["median_ms"]),
                f"{ours['gflops']:.2f}" if ours["gflops"] < 10 else f"{ours['gflops']:.1f}",
                "" if pct is None else f"{pct:.0f}%",
            ]
        else:
            main = [ours["status"].upper(), "", ""]
        peers = [_peer_cell(cell["impls"][p]) for p in self.peers]
        print(
            self._line([cell["shape"], shape, cell["mode"], cell["threads"], *main, *peers]),
            file=self.out,
            flush=True,
        )


def run_cells(
    st: Settings, peaks: dict[int, float], table: Table | None, cells: list | None = None
) -> list[dict]:
    """Time every cell; each one is appended to ``cells`` (a new list by default) as soon as
    it is measured, so a caller holding the list keeps the finished cells on Ctrl-C."""
    cells = [] if cells is None else cells
    for name, (T, B, I, H) in st.shapes:
        problem = _peers.make_problem(T, B, I, H, seed=st.seed)
        for mode in st.modes:
            flops = problem.flops(mode)
            for threads in st.threads:
                cell = {
                    "shape": name,
                    "T": T,
                    "B": B,
                    "I": I,
                    "H": H,
                    "mode": mode,
                    "threads": threads,
                    "flops": flops,
                    "peak_gflops": peaks.get(threads),
                    "impls": {},
                }
                cell["impls"] = _time_cell(problem, mode, threads, st, flops, peaks.get(threads))
                ours = cell["impls"]["lstm_fast"]
                for impl, res in cell["impls"].items():
                    if impl != "lstm_fast" and res["status"] == "ok" and ours["status"] == "ok":
                        res["speedup"] = res["median_ms"] / ours["median_ms"]
                cells.append(cell)
                if table is not None:
                    table.row(cell)
    return cells


# ------------------------------------------------------------------------------- cold start

_COLD_CODE = r"""
import json, os, site, statistics, sys, time
# the parent's lstm_fast (argv[8], the directory holding it) goes first but after the standard
# library: a site-packages there shadowed stdlib modules with backports named like them
_site = {os.path.realpath(d) for d in [*site.getsitepackages(), site.getusersitepackages()]}
_at = next((k for k, p in enumerate(sys.path) if os.path.realpath(p or ".") in _site), None)
sys.path.insert(len(sys.path) if _at is None else _at, sys.argv[8])
t0 = time.perf_counter()
import numpy as np
import lstm_fast
from lstm_fast import ops
import_s = time.perf_counter() - t0
T, B, I, H, threads, repeats = map(int, sys.argv[1:7])
mode = sys.argv[7]
lstm_fast.set_num_threads(threads)
rng = np.random.default_rng(0)
k = np.float32(1 / np.sqrt(H))
x = rng.standard_normal((T, B, I), dtype=np.float32)
w_ih = rng.uniform(-k, k, (4 * H, I)).astype(np.float32)
w_hh = rng.uniform(-k, k, (4 * H, H)).astype(np.float32)
b = rng.uniform(-k, k, (2, 4 * H)).astype(np.float32)
dy = rng.standard_normal((T, B, H), dtype=np.float32)
def call():
    if mode == "forward":
        return ops.lstm_forward(x, w_ih, w_hh, b[0], b[1])
    y, h, c, cache = ops.lstm_forward(x, w_ih, w_hh, b[0], b[1], training=True)
    return ops.lstm_backward(cache, dy)
t = time.perf_counter(); call(); first = time.perf_counter() - t
if first > 0.2:  # long calls (S3): a few repeats are enough for the steady state
    repeats = max(2, min(repeats, int(2.0 / first)))
times = []
for _ in range(repeats):
    t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
print(json.dumps({"import_ms": import_s * 1e3, "first_ms": first * 1e3,
                  "steady_ms": statistics.median(times) * 1e3, "repeats": repeats}))
"""


def cold_start(T, B, I, H, mode: str, threads: int, repeats: int) -> dict:
    """First call in a fresh interpreter vs the median of the following calls (same process)."""
    import lstm_fast

    root = os.path.dirname(os.path.dirname(os.path.abspath(lstm_fast.__file__)))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    # NumPy's BLAS on one thread in the child (it does no BLAS work): OpenBLAS starts its pool
    # when NumPy loads and those threads spin for about 0.1 s, past the first call; a team of
    # lstm_fast's started in that window shares a vCPU with them (S5 forward's first call:
    # 20-30 ms instead of 2 ms). The first call measured is then lstm_fast's own one-off costs.
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["MKL_NUM_THREADS"] = "1"
    argv = [*map(str, (T, B, I, H, threads, repeats)), mode, root]
    cmd = [sys.executable, "-c", _COLD_CODE, *argv]
    wait_quiet(0.2)  # this process's pools (torch's, ONNX Runtime's) go idle first
    try:
        # cwd = an empty directory: `python -c` puts the cwd first on sys.path, where a source
        # checkout (without the compiled _core) or a site-packages (whose backports named like
        # stdlib modules then shadow them) would stand before the parent's lstm_fast and stdlib
        with tempfile.TemporaryDirectory() as cwd:
            proc = subprocess.run(
                cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600
            )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": "timed out after 600 s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "error", "error": f"exit {proc.returncode}: {tail[0]}"}
    last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    try:
        res = json.loads(last)
        res["first_over_steady"] = res["first_ms"] / res["steady_ms"]
    except (ValueError, TypeError, KeyError, ZeroDivisionError):
        return {"status": "error", "error": f"unexpected output: {last[:200]}"}
    res["status"] = "ok"
    return res


def run_cold(st: Settings, out=sys.stdout, rows: list | None = None) -> list[dict]:
    """Cold-start rows, each appended to ``rows`` (a new list by default) when measured."""
    threads = max(st.threads)
    repeats = 3 if st.quick else 10
    rows = [] if rows is None else rows
    plural = "s" if threads > 1 else ""
    print(
        f"\ncold start (fresh process, {threads} thread{plural}; first call after import vs "
        f"median of up to {repeats} more calls; NumPy's BLAS on one thread in the child):",
        file=out,
    )
    print(
        f"{'shape':<6}  {'T,B,I,H':<18}  {'mode':<9}  {'import ms':>9}  {'first ms':>9}  "
        f"{'steady ms':>9}  {'first/steady':>12}",
        file=out,
    )
    for name, (T, B, I, H) in st.shapes:
        for mode in st.modes:
            res = cold_start(T, B, I, H, mode, threads, repeats)
            res.update(shape=name, T=T, B=B, I=I, H=H, mode=mode, threads=threads)
            rows.append(res)
            shape = f"{T},{B},{I},{H}"
            if res["status"] == "ok":
                line = (
                    f"{_fmt_ms(res['import_ms']):>9}  {_fmt_ms(res['first_ms']):>9}  "
                    f"{_fmt_ms(res['steady_ms']):>9}  {res['first_over_steady']:>11.2f}x"
                )
            else:
                line = f"error: {res['error']}"
            print(f"{name:<6}  {shape:<18}  {mode:<9}  {line}", file=out, flush=True)
    return rows


# ------------------------------------------------------------------------------------- plot


def _shape_label(cell: dict) -> str:
    """A cell's shape as the plot names it: S1, ... or, for a --shape, its T,B,I,H (every
    --shape is "custom" in the results)."""
    if cell["shape"] in SHAPES:
        return cell["shape"]
    return ",".join(str(cell[k]) for k in "TBIH")


def write_plot(path: str, report: dict) -> None:
    """Grouped bars: GFLOP/s of each implementation per (shape, mode, threads), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["results"]
    impls = report["settings"]["impls"]
    labels = [f"{_shape_label(c)}\n{MODE_ABBR[c['mode']]} {c['threads']}t" for c in cells]
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cells) + 2), 4.8))
    xs = np.arange(len(cells))
    for k, impl in enumerate(impls):
        vals = [
            c["impls"][impl]["gflops"] if c["impls"][impl].get("status") == "ok" else 0.0
            for c in cells
        ]
        ax.bar(xs + (k - (len(impls) - 1) / 2) * width, vals, width, label=impl)
    for p in report["peak"]:
        ax.axhline(p["gflops"], ls="--", lw=0.8, color="grey")
        ax.text(-0.5, p["gflops"], f" peak {p['threads']}t", fontsize=7, va="bottom")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("GFLOP/s (forward 2·T·B·(I+H)·4H FLOP, training 3x)")
    m = report["machine"]
    ax.set_title(f"lstm_fast bench — {m['cpu_model']}, {report['date'][:10]}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------- main


def _slow_peaks(peaks: list[dict]) -> list[str]:
    """Thread counts whose measured peak is below the peak of a smaller thread count (more
    threads can always do what fewer do: the machine was busy), as "2 threads", ..."""
    return [
        f"{p['threads']} threads"
        for p in peaks
        if any(q["threads"] < p["threads"] and q["gflops"] > p["gflops"] for q in peaks)
    ]


def run(args: argparse.Namespace) -> int:
    err = _check_args(args)
    if err:
        print(f"lstm-fast bench: error: {err}", file=sys.stderr)
        return 2
    import lstm_fast

    st = resolve(args)
    out = sys.stderr if args.json == "-" else sys.stdout  # `--json - | jq`: stdout is the JSON
    info = lstm_fast.cpu_info()
    mach = machine_info()
    vers = versions()
    blas = _peers.blas_control().method
    date = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")

    print(
        f"lstm-fast bench  {date}\n"
        f"machine: {mach['cpu_model']}, {mach['usable_cpus']} usable CPUs, {mach['platform']}\n"
        f"lstm_fast {vers['lstm_fast']}: isa={info.get('isa')} "
        f"(available {', '.join(info.get('available_isas', []))}), "
        f"schedule={info.get('schedule')}; numpy {vers['numpy']}",
        file=out,
    )
    load = mach["load_average"]
    if load and load[0] > 0.5:
        print(
            f"note: load average {load[0]:.1f} before the run: other processes are using the "
            "CPUs, timings will be noisy",
            file=out,
        )
    if not args.threads and omp_num_threads():
        print(
            f"note: threads {', '.join(map(str, st.threads))} (OMP_NUM_THREADS="
            f"{os.environ['OMP_NUM_THREADS'].strip()}; --threads to choose others)",
            file=out,
        )
    if max(st.threads) > mach["usable_cpus"]:
        print(
            f"note: {max(st.threads)} threads on {mach['usable_cpus']} usable CPUs: lstm_fast "
            f"runs at most {info.get('cpus', mach['usable_cpus'])} of them (cpu_info()['cpus']), "
            "NumPy's BLAS and the peers are oversubscribed",
            file=out,
        )
    if args.peers:
        peers = [f"{p} {vers[p] or 'not installed'}" for p in ("torch", "onnxruntime", "onnx")]
        print("peers: " + ", ".join(peers), file=out)
        missing = [p for p in ("torch", "onnx", "onnxruntime") if not vers[p]]
        if missing:
            hint = []
            if "torch" in missing:
                hint.append("pip install torch==2.13.0")
            if set(missing) - {"torch"}:
                hint.append("pip install 'lstm_fast[bench]' (onnx, onnxruntime)")
            print(f"note: {', '.join(missing)} not installed: " + "; ".join(hint), file=out)
    print(f"allocator: {_peers.steady_allocator()}", file=out)

    lib = _peers.blas_control().describe()
    peaks: list[dict] = []
    cells: list[dict] = []
    cold: list | None = [] if args.cold_start else None

    def report(cold: list | None, interrupted: bool) -> dict:
        return {
            "schema": SCHEMA,
            "date": date,
            "interrupted": interrupted,
            "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
            "machine": mach,
            "versions": vers,
            "cpu_info": info,
            "blas_threads_control": blas,
            "blas": lib,
            "allocator": _peers.steady_allocator(),
            "settings": {
                "shapes": [
                    {"name": n, "T": s[0], "B": s[1], "I": s[2], "H": s[3]} for n, s in st.shapes
                ],
                "modes": st.modes,
                "threads": st.threads,
                "impls": st.impls,
                "peers": bool(args.peers),
                "quick": st.quick,
                "budget_s": st.budget,
                "min_repeats": st.min_repeats,
                "peak_size": st.peak_size,
                "seed": st.seed,
            },
            "peak": peaks,
            "results": cells,
            "cold_start": cold,
        }

    try:  # (Ctrl-C while the peak is measured also leaves an interrupted --json)
        for n in st.threads:
            peaks.append(measure_peak(n, st.peak_size, max(st.budget, 0.3), 3))
        note = (
            ""
            if blas != "none"
            else "  (NumPy's BLAS threads not controlled: install threadpoolctl)"
        )
        what = " ".join(str(lib[k]) for k in ("internal_api", "version") if k in lib)
        if lib.get("architecture"):
            what += f", {lib['architecture']} kernels"
        print(
            f"peak (NumPy float32 matmul {st.peak_size}x{st.peak_size}"
            + (f", {what}" if what else "")
            + ", best repeat): "
            + ", ".join(f"{p['threads']} thr {p['gflops']:.1f} GFLOP/s" for p in peaks)
            + note,
            file=out,
            flush=True,
        )
        slow = _slow_peaks(peaks)
        if slow:
            print(
                f"note: the matmul ran slower on {', '.join(slow)} than on fewer threads: the "
                "CPUs were busy while it was measured, and %peak there reads too high",
                file=out,
            )
        arch = str(lib.get("architecture", "")).lower()
        if arch in _AVX2_BLAS_KERNELS and info.get("isa") == "avx512":
            print(
                f"note: NumPy's BLAS runs its {lib['architecture']} (AVX2) kernels on this CPU "
                "while lstm_fast runs AVX-512 ones: the peak is an AVX2 one, and %peak can "
                "exceed 100",
                file=out,
            )
        print(file=out)

        table = Table(st.impls, out)
        table.header()
        run_cells(st, {p["threads"]: p["gflops"] for p in peaks}, table, cells)
        print(
            "\nms: median per call of lstm_fast; GFLOP/s: 2*T*B*(I+H)*4H per forward, training "
            "3x; %peak: of the matmul rate at the same thread count.\n"
            "vs X: X's time / lstm_fast's time (>= 1: lstm_fast faster), then X's ms.",
            file=out,
        )
        if cold is not None:
            run_cold(st, out, cold)
    except MemoryError as e:
        print(f"lstm-fast bench: out of memory: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError) as stop:
        # Ctrl-C, or the reader of the table left (`| head`): the cells measured so far still
        # go to --json (marked interrupted), then cli.main's one line and exit status (130, 1)
        if args.json and not (args.json == "-" and isinstance(stop, BrokenPipeError)):
            try:
                _write_json(args.json, report(cold, True))
                where = "stdout" if args.json == "-" else args.json
                print(
                    f"lstm-fast bench: wrote the {len(cells)} finished cells to {where}",
                    file=sys.stderr,
                )
            except OSError as e:
                print(f"lstm-fast bench: --json: cannot write {args.json!r}: {e}", file=sys.stderr)
        raise

    final = report(cold, False)
    failed_output = False
    wrote: list[str] = []  # said once every file is written (a closed stdout stops no write)
    if args.json:
        try:
            _write_json(args.json, final)
        except OSError as e:
            if not (args.json == "-" and isinstance(e, BrokenPipeError)):  # (`| head`: quiet)
                print(f"lstm-fast bench: --json: cannot write {args.json!r}: {e}", file=sys.stderr)
            failed_output = True
        else:
            if args.json != "-":
                wrote.append(args.json)
    if args.plot:
        png = plot_path(args.plot)
        try:
            write_plot(png, final)
        except (OSError, ValueError) as e:
            print(f"lstm-fast bench: --plot: cannot write {png!r}: {e}", file=sys.stderr)
            failed_output = True
        else:
            wrote.append(png)
    if wrote:
        print("\n" + "\n".join(f"wrote {w}" for w in wrote), file=out)

    problems = []
    unavailable = {}  # impl -> why, once: a broken install fails every cell the same way
    for c in cells:
        for impl, res in c["impls"].items():
            if res["status"].startswith("not available"):
                unavailable.setdefault(impl, res["status"])
            if res["status"] in ("error", "mismatch") and (
                impl == "lstm_fast" or res["status"] == "mismatch"
            ):
                problems.append(
                    f"{c['shape']} {c['mode']} {c['threads']} thr {impl}: {res['error']}"
                )
            elif res["status"] == "error":
                print(f"note: {c['shape']} {c['mode']} {impl}: {res['error']}", file=sys.stderr)
    for impl, why in unavailable.items():
        print(f"note: {impl} {why}", file=sys.stderr)
    for r in cold or []:
        if r["status"] != "ok":
            problems.append(f"{r['shape']} {r['mode']} cold start: {r['error']}")
    for p in problems:
        print(f"lstm-fast bench: {p}", file=sys.stderr)
    return 1 if problems or failed_output else 0


def _write_json(path: str, report: dict) -> None:
    """Write ``report`` to ``path`` whole or not at all (a temporary file renamed over it: an
    interrupted or failed write leaves an existing file as it was); ``"-"``: to stdout."""
    if path == "-":
        json.dump(report, sys.stdout, indent=1)
        print(file=sys.stdout, flush=True)
        return
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/stdout, a FIFO: write through
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
        return
    real = os.path.realpath(path)  # a symlink to a file: the file is replaced, not the link
    tmp = f"{real}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
