"""In-process alternating A/B of the per-step calls at batch 1: LSTM.step(), an eval-mode
LSTMCell call and ops.lstm_forward at T = 1, this tree against a base tree (as
tools/ab_inprocess.py does for whole sequences).

    PYTHONPATH=. python tools/ab_step.py /tmp/base 256 --threads 2 --budget 15

Prints per call the median microseconds of both builds and the ratio new / base (below 1: the
tree on PYTHONPATH is faster), also from the fastest samples.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_inprocess import load_base  # noqa: E402

import lstm_fast  # noqa: E402
from lstm_fast.bench import time_interleaved  # noqa: E402

CALLS = 20  # per timed sample: one call is a few microseconds, near the timer's overhead


def calls(lib, x: np.ndarray, H: int) -> dict:
    m = lib.LSTM(H, H, seed=0).eval()
    out = np.empty((1, H), np.float32)
    st = [None]

    def step():
        for _ in range(CALLS):
            _, st[0] = m.step(x, st[0], out=out)

    c = lib.LSTMCell(H, H, seed=0).eval()
    cs = [c(x)]

    def cell():
        for _ in range(CALLS):
            cs[0] = c(x, cs[0])

    w = [
        np.ascontiguousarray(getattr(m, n + "_l0").data)
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    ]
    x3, h0 = x[None], np.zeros((1, H), np.float32)

    def ops():
        for _ in range(CALLS):
            lib.ops.lstm_forward(x3, *w, h0, h0)

    return {"step": step, "cell": cell, "ops": ops}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="source tree of the base build (built with tools/dev-build.sh)")
    p.add_argument("H", type=int, help="input and hidden size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timing in all")
    a = p.parse_args()
    base = load_base(a.base)
    for lib in (lstm_fast, base):
        lib.set_num_threads(a.threads)
    x = np.random.default_rng(0).standard_normal((1, a.H)).astype(np.float32)
    fns = {}
    for tag, lib in (("new", lstm_fast), ("base", base)):
        fns.update({f"{k}-{tag}": f for k, f in calls(lib, x, a.H).items()})
    r = time_interleaved(
        fns, budget=a.budget, min_repeats={k: 10 for k in fns}, warmup={k: 3 for k in fns}
    )
    for what in ("step", "cell", "ops"):
        n, b = r[f"{what}-new"], r[f"{what}-base"]
        print(
            f"H={a.H} threads={a.threads} {what}: new {n.median_s / CALLS * 1e6:.2f} us, base "
            f"{b.median_s / CALLS * 1e6:.2f} us, new/base {n.median_s / b.median_s:.3f} "
            f"(fastest samples {n.min_s / b.min_s:.3f})"
        )


if __name__ == "__main__":
    main()
