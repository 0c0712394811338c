"""The layer family's benchmark targets as ratios from one run, each group timed interleaved.

The pytest-benchmark modules (``test_family_bench.py``, ``test_lengths_bench.py``) time one
implementation after the other, a few rounds each; on a shared machine whose load changes from
second to second their ratios move by tens of percent from run to run. This script times the
members of each group in turns (:func:`lstm_fast.bench.time_interleaved`: short batches in
rotating order, with gaps that let the other runtime's spinning threads go idle) and prints,
per group, the times and the ratio the target is stated in (2 threads for both libraries):

* GRU S1 and S2, forward and training: ``torch.nn.GRU`` / lstm_fast (target >= 1.3);
* S1 with lengths uniform in [T/4, T], forward and training: lengths / full (target <= 0.7)
  and ``torch.nn.LSTM`` on a PackedSequence / lengths (target >= 5);
* 2-layer bidirectional LSTM at S6, training: torch / lstm_fast (target >= 1.5);
* ``LSTM.step()`` at S4 (batch 1, allocation-free): microseconds per call (target <= 10) and
  ``torch.nn.LSTMCell`` / step.

In training, torch's input requires its gradient: lstm_fast's ``backward`` returns dx, so both
sides compute the same gradients (as ``lstm-fast bench`` does).

The last line is one JSON object with every figure.

    PYTHONPATH=. python benchmarks/family_ratios.py [--budget SECONDS] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import lstm_fast
from lstm_fast import _peers
from lstm_fast.bench import CallFailed, time_interleaved

SHAPES = {
    "S1": (100, 32, 256, 256),
    "S2": (50, 64, 512, 512),
    "S4": (1, 1, 256, 256),
    "S6": (100, 16, 65, 100),
}


def _x(T, B, I, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


def gru_group(shape: str, mode: str, torch):
    T, B, I, H = SHAPES[shape]
    x = _x(T, B, I)
    dy = np.full((T, B, H), 0.1, np.float32)
    m = lstm_fast.GRU(I, H, seed=0)
    m.train(mode == "training")

    def ours():
        y, _ = m(x)
        if mode == "training":
            m.backward(dy)

    fns = {"lstm_fast": ours}
    if torch is not None:
        tm = torch.nn.GRU(I, H)
        # In training the input needs its gradient, as lstm_fast's backward returns dx: the
        # same work on both sides (lstm-fast bench's torch peers do the same).
        xt = torch.from_numpy(x).requires_grad_(mode == "training")
        dyt = torch.from_numpy(dy)

        def theirs():
            if mode == "forward":
                with torch.no_grad():
                    tm(xt)
            else:
                xt.grad = None
                y, _ = tm(xt)
                y.backward(dyt)

        fns["torch"] = theirs
    return fns


def lengths_group(mode: str, torch):
    # The calls of test_lengths_bench.py, next to this script (with PYTHONSAFEPATH the script's
    # directory is not on sys.path by itself).
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import test_lengths_bench as tlb

    data = tlb.make_inputs()
    fns = {
        "lengths": tlb.make_call("lstm_fast-lengths", mode, *data),
        "full": tlb.make_call("lstm_fast-full", mode, *data),
    }
    if torch is not None:
        fns["torch-packed"] = tlb.make_call("torch-packed", mode, *data)
    return fns


def bilstm_group(torch):
    T, B, I, H = SHAPES["S6"]
    x = _x(T, B, I)
    m = lstm_fast.LSTM(I, H, num_layers=2, bidirectional=True, seed=0)
    dy = np.ones((T, B, 2 * H), np.float32)

    def ours():
        m(x)
        m.backward(dy)

    fns = {"lstm_fast": ours}
    if torch is not None:
        tm = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
        xt = torch.from_numpy(x).requires_grad_(True)  # dx too, as lstm_fast's backward

        def theirs():
            xt.grad = None
            y, _ = tm(xt)
            y.sum().backward()

        fns["torch"] = theirs
    return fns


def step_group(torch, calls_per_sample: int = 20):
    _, B, I, H = SHAPES["S4"]
    x = _x(1, B, I)[0]
    m = lstm_fast.LSTM(I, H, seed=0).eval()
    out = np.empty((B, H), np.float32)
    state = [None]

    def ours():  # several calls per timed sample: one call is ~10 us, near the timer's overhead
        for _ in range(calls_per_sample):
            _, state[0] = m.step(x, state[0], out=out)

    fns = {"step": ours}
    if torch is not None:
        cell = torch.nn.LSTMCell(I, H)
        xt = torch.from_numpy(x)
        tstate = [None]

        def theirs():
            with torch.no_grad():
                for _ in range(calls_per_sample):
                    tstate[0] = cell(xt, tstate[0])

        fns["torch-cell"] = theirs
    return fns, calls_per_sample


def run_group(fns, budget):
    timed = time_interleaved(
        fns,
        budget=budget,
        min_repeats={k: 5 for k in fns},
        warmup={k: 2 for k in fns},
    )
    out = {}
    for name, t in timed.items():
        if isinstance(t, CallFailed):
            raise SystemExit(f"{name} failed: {t}")
        out[name] = t.median_s
    return out


def vs_torch(fig: dict, key: str, label: str, t: dict, target: str) -> None:
    """Print ``label: lstm_fast ms | torch ms | torch/lstm_fast`` and record the ratio."""
    line = f"{label}: lstm_fast {t['lstm_fast'] * 1e3:8.2f} ms"
    if "torch" in t:
        r = t["torch"] / t["lstm_fast"]
        line += f" | torch {t['torch'] * 1e3:8.2f} ms | torch/lstm_fast {r:.2f}"
        fig[key] = r
    print(f"{line}  (target {target})", flush=True)


def _seconds(text: str) -> float:
    """--budget: a finite number of seconds >= 0 (0: each implementation's minimum repeats).
    A NaN budget is never reached (10,000 calls each), a negative one passed silently."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return v


def _threads(text: str) -> int:
    """--threads: an integer in [1, the core's limit] (0 failed with a traceback after the
    imports, in lstm_fast.set_num_threads)."""
    limit = lstm_fast._core.max_threads()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= limit:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, {limit}], got {text!r}")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--budget",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="seconds of timed calls per implementation and group, >= 0 (default 2; 0: only "
        "the minimum of 5 calls each, the shortest run)",
    )
    p.add_argument(
        "--threads", type=_threads, default=2, help="threads of both libraries (default 2)"
    )
    p.add_argument("--no-torch", action="store_true", help="leave torch out")
    args = p.parse_args(argv)
    torch = None
    if not args.no_torch:
        try:
            torch = _peers.import_peer("torch")
        except _peers.Unavailable as e:
            print(f"torch left out: {e}")
    allocator = _peers.steady_allocator()  # the same malloc state for every group and library
    fig: dict = {"threads": args.threads, "torch": getattr(torch, "__version__", None)}
    with _peers.thread_limits(args.threads):
        if torch is not None:
            torch.set_num_threads(args.threads)
        print(
            f"lstm_fast {lstm_fast.__version__} ({lstm_fast.cpu_info()['isa']}), "
            f"{args.threads} threads, torch {fig['torch']}; medians of interleaved batches; "
            f"allocator: {allocator}"
        )
        for shape in ("S1", "S2"):
            for mode in ("forward", "training"):
                t = run_group(gru_group(shape, mode, torch), args.budget)
                key = f"gru_{shape}_{mode}_vs_torch"
                vs_torch(fig, key, f"GRU {shape} {mode:8s}", t, ">= 1.3")
        for mode in ("forward", "training"):
            t = run_group(lengths_group(mode, torch), args.budget)
            r = t["lengths"] / t["full"]
            fig[f"lengths_{mode}_over_full"] = r
            line = (
                f"S1 lengths {mode:8s}: lengths {t['lengths'] * 1e3:7.2f} ms, full "
                f"{t['full'] * 1e3:7.2f} ms, lengths/full {r:.3f} (target <= 0.7)"
            )
            if "torch-packed" in t:
                r2 = t["torch-packed"] / t["lengths"]
                fig[f"lengths_{mode}_torch_packed_over_lengths"] = r2
                line += (
                    f" | torch packed {t['torch-packed'] * 1e3:7.2f} ms, "
                    f"torch/lengths {r2:.2f} (target >= 5)"
                )
            print(line, flush=True)
        t = run_group(bilstm_group(torch), args.budget)
        label = "2-layer bidirectional LSTM S6 training"
        vs_torch(fig, "bilstm_s6_training_vs_torch", label, t, ">= 1.5")
        fns, per = step_group(torch)
        t = run_group(fns, args.budget)
        us = t["step"] / per * 1e6
        fig["step_s4_us"] = us
        line = f"LSTM.step() S4: {us:.1f} us per call (target <= 10)"
        if "torch-cell" in t:
            r = t["torch-cell"] / t["step"]
            fig["step_s4_torch_cell_over_step"] = r
            line += f" | torch.nn.LSTMCell {t['torch-cell'] / per * 1e6:.1f} us ({r:.2f}x)"
        print(line, flush=True)
    print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
