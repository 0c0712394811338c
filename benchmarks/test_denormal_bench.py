"""Denormal inputs do not slow the kernels: forward and training at S6 with ordinary inputs vs
inputs, states and weights whose values are mostly denormal floats (|v| < 1.2e-38).

Each parallel region of the core sets flush-to-zero / denormals-are-zero for its threads
(restored at its end), so the two cases must run at the same speed; without it, x86 cores take
microcode assists on every denormal operand (tens to hundreds of cycles each).

    PYTHONPATH=. python -m pytest benchmarks/test_denormal_bench.py --benchmark-only
    PYTHONPATH=. python benchmarks/test_denormal_bench.py [rounds]   # interleaved, prints ratios
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops

T, B, I, H = 100, 16, 65, 100  # S6


def problem(kind: str):
    rng = np.random.default_rng(0)

    def arr(*shape, scale=1.0):
        a = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
        if kind == "denormal":  # three values in four denormal, the rest ordinary
            den = (rng.standard_normal(shape) * 1e-39).astype(np.float32)
            a = np.where(rng.random(shape) < 0.75, den, a).astype(np.float32)
        return np.ascontiguousarray(a)

    x = arr(T, B, I)
    w_ih, w_hh = arr(4 * H, I, scale=0.1), arr(4 * H, H, scale=0.1)
    b_ih, b_hh = arr(4 * H, scale=0.1), arr(4 * H, scale=0.1)
    h0, c0 = arr(B, H), arr(B, H)
    dy = arr(T, B, H)
    return (x, w_ih, w_hh, b_ih, b_hh, h0, c0), dy


def run(mode: str, args, dy):
    if mode == "forward":
        return ops.lstm_forward(*args)
    y, h, c, cache = ops.lstm_forward(*args, training=True)
    return ops.lstm_backward(cache, dy)


@pytest.mark.parametrize("mode", ["forward", "training"])
@pytest.mark.parametrize("kind", ["normal", "denormal"])
def test_denormal_inputs(benchmark, mode, kind):
    lstm_fast.set_num_threads(1)
    args, dy = problem(kind)
    benchmark.group = f"denormal inputs S6 {mode} 1 thread"
    benchmark.name = kind
    benchmark(run, mode, args, dy)


def main(rounds: int = 15) -> None:
    lstm_fast.set_num_threads(1)
    cases = {k: problem(k) for k in ("normal", "denormal")}
    for mode in ("forward", "training"):
        best = {k: float("inf") for k in cases}
        for _ in range(rounds):  # interleaved: background load hits both alike
            for k, (args, dy) in cases.items():
                t = time.perf_counter()
                run(mode, args, dy)
                best[k] = min(best[k], time.perf_counter() - t)
        n, d = best["normal"], best["denormal"]
        print(
            f"S6 {mode}, 1 thread: normal {n * 1e3:.2f} ms, denormal {d * 1e3:.2f} ms, "
            f"denormal/normal {d / n:.2f}"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
