"""Benchmarks of the LSTM with projection (proj_size): the layer on the fused C++ core vs the
previous path (the float32 NumPy reference, as ``lstm_fast.LSTM(proj_size=...)`` ran before the
core had a projection) vs ``torch.nn.LSTM(proj_size=...)``; forward (inference) and training
(forward + backward), at S1 with P = H/2 (T=100, B=32, I=256, H=256, P=128) and at S6
(char-LM, T=100, B=16, I=65, H=100, P=50), 2 threads. One measured call per test; peers of a group
side by side.

Run: ``PYTHONPATH=. python -m pytest benchmarks/test_proj_bench.py --benchmark-only``
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _peers, reference

SHAPES = {"S1-P128": (100, 32, 256, 256, 128), "S6-P50": (100, 16, 65, 100, 50)}


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    before = lstm_fast.get_num_threads()
    lstm_fast.set_num_threads(2)
    with contextlib.suppress(_peers.Unavailable):
        _peers.import_peer("torch").set_num_threads(2)
    yield
    lstm_fast.set_num_threads(before)


def _run(benchmark, fn, rounds=3):
    fn()  # warm-up (first-call allocations, page faults)
    benchmark.pedantic(fn, rounds=rounds, iterations=1)


@pytest.mark.parametrize("fshape", list(SHAPES))
@pytest.mark.parametrize("mode", ["forward", "training"])
@pytest.mark.parametrize("impl", ["lstm_fast", "reference-path", "torch"])
def test_lstm_proj(benchmark, fshape, mode, impl):
    T, B, I, H, P = SHAPES[fshape]
    benchmark.group = f"LSTM proj {fshape} {mode}"
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    dy = np.full((T, B, P), 0.1, np.float32)
    if impl == "torch":
        torch = _peers.importorskip("torch")
        warnings.filterwarnings("ignore", "LSTM with projections is not supported with oneDNN")
        m = torch.nn.LSTM(I, H, proj_size=P)
        xt = torch.from_numpy(x)
        dyt = torch.from_numpy(dy)

        def fn():
            if mode == "forward":
                with torch.no_grad():
                    m(xt)
            else:
                y, _ = m(xt)
                y.backward(dyt)

    elif impl == "reference-path":
        # What the layer ran for proj_size before: the NumPy reference in float32, the weight
        # gradients accumulated into the parameters' gradients.
        w = reference.init_lstm_weights(I, H, seed=0, proj_size=P)
        grads = {k: np.zeros_like(v) for k, v in w.items()}

        def fn():
            y, hn, cn, cache = reference.lstm_forward(x, **w)
            if mode == "training":
                g = reference.lstm_backward(cache, dy)
                grads["weight_ih"] += g.dweight_ih
                grads["weight_hh"] += g.dweight_hh
                grads["bias_ih"] += g.dbias_ih
                grads["bias_hh"] += g.dbias_hh
                grads["weight_hr"] += g.dweight_hr

    else:
        m = lstm_fast.LSTM(I, H, proj_size=P, seed=0)
        m.train(mode == "training")

        def fn():
            m(x)
            if mode == "training":
                m.backward(dy)

    _run(benchmark, fn)
