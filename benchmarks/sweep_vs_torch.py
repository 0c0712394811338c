"""Random shapes and options against torch, each timed interleaved: a search for slow paths.

The canonical shapes (S1-S6) are what the other benchmarks time; this script draws cases off
them -- cell (LSTM, GRU, RNN and, with ``--api torch``, the cells), T, B, I, H, layers,
direction, ``batch_first``, ``proj_size``, a ``PackedSequence`` (torch API), forward or
training -- and prints, per case, torch's time over lstm_fast's (below 1: lstm_fast is slower)
with both times, the slowest cases last. Same seed, same cases.

    PYTHONPATH=. python benchmarks/sweep_vs_torch.py [--api numpy|torch] [--cases N]
        [--seed S] [--threads N] [--budget SECONDS] [--case CELL,T,B,I,H,MODE ...]

``--case`` times the cases given instead of random ones (default options; T is ignored by the
cells), e.g. ``--api torch --case GRUCell,1,2,1,512,training``.

``--api numpy``: the NumPy layers (``lstm_fast.LSTM`` ...) with torch's weights loaded;
``--api torch``: the drop-in modules of ``lstm_fast.torch``. In training both sides compute
the input's gradient too.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import lstm_fast
from lstm_fast import _peers
from lstm_fast.bench import CallFailed, time_interleaved


def draw(rng, api: str) -> dict:
    """One case's settings."""
    cells = ["LSTM", "GRU", "RNN"] + (["LSTMCell", "GRUCell", "RNNCell"] if api == "torch" else [])
    c = dict(
        cell=str(rng.choice(cells)),
        T=int(rng.choice([1, 3, 5, 20, 37, 120])),
        B=int(rng.choice([1, 2, 3, 8, 16, 64, 128])),
        I=int(rng.choice([1, 3, 17, 100, 300])),
        H=int(rng.choice([7, 16, 64, 100, 130, 256, 512])),
        mode=str(rng.choice(["forward", "training"])),
        kw={},
        packed=False,
    )
    if not c["cell"].endswith("Cell"):
        c["kw"] = dict(
            num_layers=int(rng.choice([1, 2])),
            bidirectional=bool(rng.random() < 0.4),
            batch_first=bool(rng.random() < 0.3),
        )
        if c["cell"] == "LSTM" and rng.random() < 0.2 and c["H"] > 7:
            c["kw"]["proj_size"] = c["H"] // 2
        if c["cell"] == "RNN" and rng.random() < 0.5:
            c["kw"]["nonlinearity"] = "relu"
        c["packed"] = api == "torch" and c["B"] > 1 and rng.random() < 0.3
    return c


def given_case(text: str) -> dict:
    """A case from ``CELL,T,B,I,H,MODE`` (default options)."""
    cell, T, B, I, H, mode = text.split(",")
    if mode not in ("forward", "training"):
        raise SystemExit(f"--case {text}: MODE must be forward or training, got {mode!r}")
    return dict(cell=cell, T=int(T), B=int(B), I=int(I), H=int(H), mode=mode, kw={}, packed=False)


def describe(c: dict) -> str:
    opts = " ".join(f"{k}={v}" for k, v in c["kw"].items() if v not in (False, 1))
    T = "" if c["cell"].endswith("Cell") else f"T={c['T']:3d} "
    return (
        f"{c['cell']:8s} {T}B={c['B']:3d} I={c['I']:3d} H={c['H']:3d} {c['mode']:8s} "
        + ("packed " if c["packed"] else "")
        + opts
    ).rstrip()


def timers(c: dict, api: str, torch, rng):
    """(ours, theirs): callables running the case once on each side."""
    cell, T, B, I, H, kw = c["cell"], c["T"], c["B"], c["I"], c["H"], c["kw"]
    training = c["mode"] == "training"
    tm = getattr(torch.nn, cell)(I, H, **kw)
    tm.train(training)
    is_cell = cell.endswith("Cell")
    if is_cell:
        shape = (B, I)
    else:
        shape = (B, T, I) if kw.get("batch_first") else (T, B, I)
    x = rng.standard_normal(shape).astype(np.float32)
    if api == "numpy":
        lm = getattr(lstm_fast, cell)(I, H, **kw)
        lm.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
        lm.train(training)
        out = kw.get("proj_size") or H
        dy = rng.standard_normal(shape[:2] + (out * (2 if kw.get("bidirectional") else 1),))
        dy = dy.astype(np.float32)

        def ours():
            lm(x)
            if training:
                lm.backward(dy)

    else:
        import lstm_fast.torch as lft

        lm = getattr(lft, cell)(I, H, **kw)
        lm.load_state_dict(tm.state_dict())
        lm.train(training)
    xt = torch.from_numpy(x)
    lengths = None
    if c["packed"]:
        lengths = torch.from_numpy(np.sort(rng.integers(1, T + 1, B))[::-1].copy())
        lengths[0] = T
    pack = torch.nn.utils.rnn.pack_padded_sequence

    def run_torch_api(m):
        def f():
            xi = xt.detach().requires_grad_(training)
            with torch.set_grad_enabled(training):
                inp = (
                    pack(xi, lengths, batch_first=kw.get("batch_first", False))
                    if c["packed"]
                    else xi
                )
                y = m(inp)
                y = y[0] if isinstance(y, tuple) else y
                y = y.data if c["packed"] else y
                if training:
                    y.sum().backward()

        return f

    if api == "torch":
        ours = run_torch_api(lm)
    return ours, run_torch_api(tm)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--api", choices=["numpy", "torch"], default="numpy")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per side and case")
    ap.add_argument("--case", nargs="+", default=[], help="CELL,T,B,I,H,MODE: these cases only")
    args = ap.parse_args(argv)
    try:
        torch = _peers.import_peer("torch")
    except _peers.Unavailable as e:
        print(f"sweep_vs_torch: torch {e} (pip install torch==2.13.0)", file=sys.stderr)
        return 2
    lstm_fast.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    rows = []
    given = [given_case(text) for text in args.case]
    for i in range(len(given) or args.cases):
        c = given[i] if given else draw(rng, args.api)
        torch.manual_seed(len(rows))
        ours, theirs = timers(c, args.api, torch, rng)
        r = time_interleaved(
            {"lstm_fast": ours, "torch": theirs},
            budget=args.budget,
            min_repeats={"lstm_fast": 5, "torch": 5},
            warmup={"lstm_fast": 2, "torch": 2},
        )
        if any(isinstance(v, CallFailed) for v in r.values()):
            print(f"  failed  {describe(c)}: {r}", flush=True)
            continue
        ratio = r["torch"].median_s / r["lstm_fast"].median_s
        row = (ratio, r["lstm_fast"].median_s, r["torch"].median_s, describe(c))
        rows.append(row)
        print(
            f"{ratio:6.2f}  lstm_fast {row[1] * 1e3:9.3f} ms  torch {row[2] * 1e3:9.3f}  {row[3]}"
        )
    print("\nslowest (torch / lstm_fast):")
    for ratio, ours, theirs, d in sorted(rows)[:10]:
        print(f"{ratio:6.2f}  lstm_fast {ours * 1e3:9.3f} ms  torch {theirs * 1e3:9.3f}  {d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
