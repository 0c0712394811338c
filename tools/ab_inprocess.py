"""In-process alternating A/B of two builds of lstm_fast on LSTM shapes.

Both builds are imported into one process (the base tree's package copied under the name
``lstm_fast_base``) and timed in alternating batches of calls, so a shared machine's slow and fast
moments fall on both alike; separate processes, minutes apart, differ by tens of percent here.

    PYTHONPATH=. python tools/ab_inprocess.py /path/to/base/tree forward 100,32,256,256 ...
    PYTHONPATH=. python tools/ab_inprocess.py /tmp/base training 100,16,65,100 --threads 2
    PYTHONPATH=. python tools/ab_inprocess.py /tmp/base backward 1,2,1,512 --cell gru

``--cell`` (lstm, gru, rnn_tanh, rnn_relu; default lstm); mode ``backward`` times the backward
alone, from one training forward's cache.

The base tree must hold a built extension (``tools/dev-build.sh`` there). Prints per shape the
median and 10th-percentile time ratio new / base (below 1: the tree on PYTHONPATH is faster).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np


def load_base(tree: str):
    src = os.path.join(os.path.abspath(tree), "lstm_fast")
    if not os.path.isdir(src):
        raise SystemExit(f"base: expected a source tree holding lstm_fast/, got {tree!r}")
    tmp = tempfile.mkdtemp(prefix="lstm_fast_ab_")
    shutil.copytree(src, os.path.join(tmp, "lstm_fast_base"))
    sys.path.insert(0, tmp)
    return importlib.import_module("lstm_fast_base")


GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def problem(T, B, I, H, seed=0, cell="lstm"):
    rng = np.random.default_rng(seed)
    k = np.float32(1 / np.sqrt(H))
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    G = GATES[cell] * H
    w = [rng.uniform(-k, k, s).astype(np.float32) for s in ((G, I), (G, H), (G,), (G,))]
    h0 = rng.standard_normal((B, H), dtype=np.float32) * 0.1
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    return x, w, h0, h0.copy(), dy


def make_call(ops, mode, x, w, h0, c0, dy, cell="lstm"):
    if cell == "lstm":

        def forward(training=False):
            y, _, _, cache = ops.lstm_forward(x, *w, h0, c0, training=training)
            return cache

        def backward(cache):
            return ops.lstm_backward(cache, dy)
    else:

        def forward(training=False):
            if cell == "gru":
                return ops.gru_forward(x, *w, h0, training=training)[2]
            return ops.rnn_forward(x, *w, h0, nonlinearity=cell[4:], training=training)[2]

        def backward(cache):
            if cell == "gru":
                return ops.gru_backward(cache, dy)
            return ops.rnn_backward(cache, dy)

    if mode == "forward":
        return forward
    if mode == "backward":
        cache = forward(training=True)
        return lambda: backward(cache)
    return lambda: backward(forward(training=True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="source tree of the base build (with its compiled extension)")
    p.add_argument("mode", choices=("forward", "training", "backward"))
    p.add_argument("shapes", nargs="+", help="T,B,I,H")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=6.0, help="seconds per shape")
    p.add_argument("--cell", choices=tuple(GATES), default="lstm")
    args = p.parse_args(argv)
    import lstm_fast
    from lstm_fast import ops

    base = load_base(args.base)
    base_ops = importlib.import_module("lstm_fast_base.ops")
    for pkg in (lstm_fast, base):
        pkg.set_num_threads(args.threads)
    for shape in args.shapes:
        T, B, I, H = map(int, shape.split(","))
        data = problem(T, B, I, H, cell=args.cell)
        new = make_call(ops, args.mode, *data, cell=args.cell)
        old = make_call(base_ops, args.mode, *data, cell=args.cell)
        for f in (new, old, new, old):
            f()
        t = time.perf_counter()
        new()
        n = max(1, int(0.05 / (time.perf_counter() - t)))  # calls per batch: ~50 ms
        tn, tb = [], []
        t0, r = time.perf_counter(), 0
        while time.perf_counter() - t0 < args.budget or min(len(tn), len(tb)) < 5:
            pair = ((new, tn), (old, tb)) if r % 2 == 0 else ((old, tb), (new, tn))
            for f, ts in pair:
                f()  # untimed: the other build's call left the caches cold
                for _ in range(n):
                    t = time.perf_counter()
                    f()
                    ts.append(time.perf_counter() - t)
            r += 1
        mn, mb = statistics.median(tn), statistics.median(tb)
        qn, qb = sorted(tn)[len(tn) // 10], sorted(tb)[len(tb) // 10]
        print(
            f"{args.cell} {shape:>16} {args.mode} {args.threads}t: new {mn * 1e3:9.3f} ms  base "
            f"{mb * 1e3:9.3f} ms  new/base median {mn / mb:.3f}  p10 {qn / qb:.3f}  (n={len(tn)})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
