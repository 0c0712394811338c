"""Backward without the input gradient (``need_dx=False``): an input that needs no gradient
(raw features; a torch input without ``requires_grad``) skips the dx GEMM. dx comes back as
None and every other result is bitwise the one of the full backward, for every cell, with and
without lengths, in every layer configuration, on every kernel set."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops

# Sizes off the SIMD widths: T, B, I, H.
T, B, I, H = 7, 5, 17, 7


def _lengths_bs(rng):
    lengths = np.sort(rng.integers(1, T + 1, B))[::-1].copy()
    lengths[0] = T
    return np.array([(lengths > t).sum() for t in range(T)], np.int64)


def _weights(rng, g, inp=I, hid=H):
    k = 1 / np.sqrt(hid)
    return [
        rng.uniform(-k, k, s).astype(np.float32)
        for s in ((g * hid, inp), (g * hid, hid), (g * hid,), (g * hid,))
    ]


def _same(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.tobytes() == b.tobytes(), f"{what} differs"


def _both(backward):
    full, lean = backward(True), backward(False)
    assert full[0] is not None and full[0].shape == (T, B, I)
    assert lean[0] is None
    for j, (a, b) in enumerate(zip(full[1:], lean[1:]), 1):
        _same(a, b, f"result {j}")
    return full, lean


@pytest.mark.parametrize("lengths", [False, True], ids=["dense", "batch_sizes"])
@pytest.mark.parametrize("cell", ["LSTM", "LSTM_proj", "LSTM_order", "GRU", "RNN_TANH"])
def test_ops_backward_without_dx(isa, rng, cell, lengths):
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    bs = _lengths_bs(rng) if lengths or cell == "LSTM_order" else None
    extra = {}
    if cell == "LSTM_order":
        extra["sorted_indices"] = rng.permutation(B).astype(np.int64)
    g = 4 if cell.startswith("LSTM") else 3 if cell == "GRU" else 1
    w = _weights(rng, g)
    h0 = rng.standard_normal((B, 3 if cell == "LSTM_proj" else H)).astype(np.float32)
    if cell.startswith("LSTM"):
        if cell == "LSTM_proj":
            w[1] = rng.uniform(-0.3, 0.3, (4 * H, 3)).astype(np.float32)
            extra["weight_hr"] = rng.uniform(-0.3, 0.3, (3, H)).astype(np.float32)
        c0 = rng.standard_normal((B, H)).astype(np.float32)
        y, _, _, cache = ops.lstm_forward(x, *w, h0, c0, training=True, batch_sizes=bs, **extra)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dhn = rng.standard_normal(h0.shape).astype(np.float32)
        dcn = rng.standard_normal((B, H)).astype(np.float32)
        full, lean = _both(lambda n: ops.lstm_backward(cache, dy, dhn, dcn, need_dx=n))
        assert (
            lean.dweight_hr is full.dweight_hr
            or lean.dweight_hr.tobytes() == full.dweight_hr.tobytes()
        )
    else:
        fwd = ops.gru_forward if cell == "GRU" else ops.rnn_forward
        bwd = ops.gru_backward if cell == "GRU" else ops.rnn_backward
        kw = {} if cell == "GRU" else {"nonlinearity": "tanh"}
        y, _, cache = fwd(x, *w, h0, training=True, batch_sizes=bs, **kw)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dhn = rng.standard_normal(h0.shape).astype(np.float32)
        _both(lambda n: bwd(cache, dy, dhn, need_dx=n))


def _grads(m):
    return {n: p.grad.copy() for n, p in m.named_parameters()}


LAYERS = [
    (kind, L, bi, bf, use_len)
    for kind, L, bi, bf, use_len in itertools.product(
        ("LSTM", "GRU", "RNN"), (1, 2), (False, True), (False, True), (False, True)
    )
    if not (bf and L == 2 and kind != "LSTM")  # batch_first once per cell is enough past L = 1
]


@pytest.mark.parametrize("kind,L,bi,bf,use_len", LAYERS)
def test_layer_backward_without_dx(rng, kind, L, bi, bf, use_len):
    make = getattr(lstm_fast, kind)
    m = make(I, H, num_layers=L, bidirectional=bi, batch_first=bf, seed=3)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B) if use_len else None
    y, hn = m(x, lengths=lengths)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dhn = rng.standard_normal((hn[0] if kind == "LSTM" else hn).shape).astype(np.float32)
    m.zero_grad()
    dx, st_full = m.backward(dy, dhn)
    g_full = _grads(m)
    m.zero_grad()
    none, st_lean = m.backward(dy, dhn, need_dx=False)
    assert dx is not None and dx.shape == x.shape and none is None
    for a, b in zip(
        st_full if kind == "LSTM" else (st_full,), st_lean if kind == "LSTM" else (st_lean,)
    ):
        _same(a, b, "initial-state gradient")
    for n, gv in _grads(m).items():
        _same(g_full[n], gv, n)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_backward_without_dx(rng, kind):
    cell = getattr(lstm_fast, kind)(I, H, seed=1)
    x = rng.standard_normal((B, I)).astype(np.float32)
    out = cell(x)
    h = out[0] if kind == "LSTMCell" else out
    dh = rng.standard_normal(h.shape).astype(np.float32)
    cell.zero_grad()
    dx, _ = cell.backward(dh)
    g_full = _grads(cell)
    cell.zero_grad()
    none, _ = cell.backward(dh, need_dx=False)
    assert dx.shape == (B, I) and none is None
    for n, gv in _grads(cell).items():
        _same(g_full[n], gv, n)


def test_torch_input_without_requires_grad_skips_dx(monkeypatch):
    torch = pytest.importorskip("torch")
    lft = pytest.importorskip("lstm_fast.torch")
    seen = []
    real = ops.lstm_backward

    def spy(*a, **kw):
        seen.append(kw.get("need_dx", True))
        return real(*a, **kw)

    monkeypatch.setattr(ops, "lstm_backward", spy)
    torch.manual_seed(0)
    for bi in (False, True):
        m = lft.LSTM(I, H, num_layers=2, bidirectional=bi)
        x = torch.randn(T, B, I)
        grads = []
        for req in (True, False):
            m.zero_grad()
            seen.clear()
            xi = x.clone().requires_grad_(req)
            y, _ = m(xi)
            y.pow(2).sum().backward()
            grads.append([p.grad.clone() for p in m.parameters()])
            D = 2 if bi else 1
            # layer 0's directions skip dx exactly when the input needs no gradient; layer 1's
            # input (layer 0's output) always needs it
            assert sorted(seen) == sorted([req] * D + [True] * D)
            assert (xi.grad is not None) == req
        for a, b in zip(*grads):
            assert torch.equal(a, b)
