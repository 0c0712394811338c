"""Benchmarks of the layer family: GRU vs torch.nn.GRU (S1, S2; forward and training), variable
lengths vs none and vs torch with a PackedSequence (S1), 2-layer bidirectional LSTM at S6, and
the streaming ``step()`` at S4. One measured call per test; peers of a group side by side.

Run: ``PYTHONPATH=. python -m pytest benchmarks/test_family_bench.py --benchmark-only``
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _peers

SHAPES = {
    "S1": (100, 32, 256, 256),
    "S2": (50, 64, 512, 512),
    "S4": (1, 1, 256, 256),
    "S6": (100, 16, 65, 100),
}


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    before = lstm_fast.get_num_threads()
    lstm_fast.set_num_threads(2)
    with contextlib.suppress(_peers.Unavailable):
        _peers.import_peer("torch").set_num_threads(2)
    yield
    lstm_fast.set_num_threads(before)


def _x(T, B, I, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I)).astype(np.float32)


def _run(benchmark, fn, rounds=3):
    fn()  # warm-up (first-call allocations, page faults)
    benchmark.pedantic(fn, rounds=rounds, iterations=1)


@pytest.mark.parametrize("fshape", ["S1", "S2"])
@pytest.mark.parametrize("mode", ["forward", "training"])
@pytest.mark.parametrize("impl", ["lstm_fast", "torch"])
def test_gru(benchmark, fshape, mode, impl):
    T, B, I, H = SHAPES[fshape]
    benchmark.group = f"GRU {fshape} {mode}"
    x = _x(T, B, I)
    if impl == "torch":
        torch = _peers.importorskip("torch")
        m = torch.nn.GRU(I, H)
        xt = torch.from_numpy(x).requires_grad_(mode == "training")  # dx, like lstm_fast
        dy = torch.ones(T, B, H) * 0.1

        def fn():
            if mode == "forward":
                with torch.no_grad():
                    m(xt)
            else:
                xt.grad = None
                y, _ = m(xt)
                y.backward(dy)
    else:
        m = lstm_fast.GRU(I, H, seed=0)
        m.train(mode == "training")
        dy = np.full((T, B, H), 0.1, np.float32)

        def fn():
            y, _ = m(x)
            if mode == "training":
                m.backward(dy)

    _run(benchmark, fn)


@pytest.mark.parametrize("impl", ["lstm_fast-lengths", "lstm_fast-full", "torch-packed"])
def test_lstm_lengths_s1(benchmark, impl):
    T, B, I, H = SHAPES["S1"]
    benchmark.group = "LSTM S1 lengths U[T/4, T] training"
    x = _x(T, B, I)
    lengths = np.random.default_rng(1).integers(T // 4, T + 1, B)
    if impl == "torch-packed":
        torch = _peers.importorskip("torch")
        m = torch.nn.LSTM(I, H)
        xt = torch.from_numpy(x).requires_grad_(True)  # dx, like lstm_fast's backward
        lt = torch.from_numpy(lengths)

        def fn():
            xt.grad = None
            pk = torch.nn.utils.rnn.pack_padded_sequence(xt, lt, enforce_sorted=False)
            y, _ = m(pk)
            y.data.sum().backward()
    else:
        m = lstm_fast.LSTM(I, H, seed=0)
        dy = np.full((T, B, H), 0.1, np.float32)
        use = lengths if impl == "lstm_fast-lengths" else None

        def fn():
            m(x, lengths=use)
            m.backward(dy)

    _run(benchmark, fn)


@pytest.mark.parametrize("impl", ["lstm_fast", "torch"])
def test_bilstm_2layer_s6(benchmark, impl):
    T, B, I, H = SHAPES["S6"]
    benchmark.group = "LSTM S6 2-layer bidirectional training"
    x = _x(T, B, I)
    if impl == "torch":
        torch = _peers.importorskip("torch")
        m = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
        xt = torch.from_numpy(x).requires_grad_(True)  # dx, like lstm_fast's backward

        def fn():
            xt.grad = None
            y, _ = m(xt)
            y.sum().backward()
    else:
        m = lstm_fast.LSTM(I, H, num_layers=2, bidirectional=True, seed=0)
        dy = np.ones((T, B, 2 * H), np.float32)

        def fn():
            m(x)
            m.backward(dy)

    _run(benchmark, fn)


@pytest.mark.parametrize("impl", ["lstm_fast-step", "torch-cell"])
def test_step_s4(benchmark, impl):
    _, B, I, H = SHAPES["S4"]
    benchmark.group = "LSTM S4 streaming step"
    x = _x(1, B, I)[0]
    if impl == "torch-cell":
        torch = _peers.importorskip("torch")
        cell = torch.nn.LSTMCell(I, H)
        xt = torch.from_numpy(x)
        state = [None]

        def fn():
            with torch.no_grad():
                state[0] = cell(xt, state[0])
    else:
        m = lstm_fast.LSTM(I, H, seed=0).eval()
        out = np.empty((B, H), np.float32)
        state = [None]

        def fn():
            _, state[0] = m.step(x, state[0], out=out)

    fn()
    benchmark.pedantic(fn, rounds=200, iterations=10)
