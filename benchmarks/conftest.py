"""Shared fixtures of the pytest-benchmark suites.

Run them with ``pytest benchmarks/ --benchmark-only`` (plain ``pytest`` only collects tests/).
Every test measures one call; tests of the same shape, mode and thread count share a
``benchmark.group``, so pytest-benchmark prints lstm_fast, the NumPy reference and the peers
side by side. Peers that are not installed are skipped.

Environment:
    LSTM_FAST_BENCH_SHAPES   canonical shapes of ``lstm-fast bench``, e.g. ``S1,S6`` or ``all``
                             (default ``S1,S4,S5,S6``)
    LSTM_FAST_BENCH_THREADS  thread counts, e.g. ``1,2`` (default: 1 and the core count)
"""

from __future__ import annotations

import argparse
import os
import time

import pytest

from lstm_fast import _peers, bench

DEFAULT_SHAPES = "S1,S4,S5,S6"


def _from_env(name: str, parse, default: str):
    text = os.environ.get(name, "").strip() or default
    try:
        return parse(text)
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"{name}={text!r}: {e}") from None


# Every suite runs with the same malloc state for all implementations (_peers.steady_allocator).
ALLOCATOR = _peers.steady_allocator()


def _threads(text: str) -> list[int]:
    """bench.parse_threads, and at most lstm_fast's limit (a larger count failed every test in
    set_num_threads instead of stopping the session with one usage error)."""
    from lstm_fast._core import max_threads

    threads = bench.parse_threads(text)
    if max(threads) > max_threads():
        raise argparse.ArgumentTypeError(
            f"expected thread counts in [1, {max_threads()}], got {max(threads)}"
        )
    return threads


SHAPE_NAMES = _from_env("LSTM_FAST_BENCH_SHAPES", bench.parse_shape_names, DEFAULT_SHAPES)
THREADS = _from_env(
    "LSTM_FAST_BENCH_THREADS",
    _threads,
    ",".join(map(str, dict.fromkeys([1, bench.core_count()]))),
)


def pytest_generate_tests(metafunc):
    """``shape`` and ``threads`` arguments take the values selected by the environment."""
    if "shape" in metafunc.fixturenames:
        metafunc.parametrize("shape", SHAPE_NAMES)
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", THREADS, ids=[f"{n}thr" for n in THREADS])


@pytest.fixture(scope="session")
def problem_for():
    """``problem_for("S1")`` -> the seeded :class:`lstm_fast._peers.Problem` of that shape."""
    cache: dict[str, _peers.Problem] = {}

    def get(name: str) -> _peers.Problem:
        if name not in cache:
            cache[name] = _peers.make_problem(*bench.SHAPES[name], seed=0)
        return cache[name]

    return get


@pytest.fixture
def run_benchmark(benchmark):
    """``run_benchmark(fn, flops=...)``: one measured callable, GFLOP/s in ``extra_info``.

    Calls that take longer than 0.1 s (the NumPy reference on big shapes) get a fixed small
    number of rounds instead of pytest-benchmark's calibration, so a suite stays minutes long.
    """

    def run(fn, *, flops: float | None = None):
        t = time.perf_counter()
        fn()  # warm-up, and an estimate of the call's length
        first = time.perf_counter() - t
        if flops is not None:
            benchmark.extra_info["flops"] = flops
        if first > 0.1:
            rounds = max(3, min(10, int(2.0 / first)))
            result = benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        else:
            result = benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        if flops is not None and stats is not None and getattr(stats, "stats", None):
            benchmark.extra_info["gflops"] = flops / stats.stats.median / 1e9
        return result

    return run
