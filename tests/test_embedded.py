"""The embedding lookup folded into the first LSTM layer: lstm_forward_embedded (core) and
LSTM.forward_embedded (layer), against the plain path on the gathered rows."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, nn


def _problem(rng, T, B, V, I, H):
    ids = rng.integers(0, V, (T, B))
    E = rng.standard_normal((V, I)).astype(np.float32)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.3).astype(np.float32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.3).astype(np.float32)
    b_ih, b_hh = (rng.standard_normal(4 * H).astype(np.float32) for _ in range(2))
    h0, c0 = (rng.standard_normal((B, H)).astype(np.float32) for _ in range(2))
    return ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0


@pytest.mark.parametrize(
    "T,B,V,I,H", [(7, 3, 11, 5, 9), (12, 17, 33, 16, 17), (40, 32, 97, 64, 33), (2, 2, 5, 4, 8)]
)
def test_core_matches_gathered_input(isa, threads, T, B, V, I, H):
    """Forward: bitwise the plain core on E[ids] (the tiny unpacked shapes too); backward:
    dembedding is the scatter-add of the plain dx, the weight and bias gradients agree; every
    ISA; 1 and 2 threads bitwise."""
    rng = np.random.default_rng(T * B + V)
    ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0 = _problem(rng, T, B, V, I, H)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    dhn = rng.standard_normal((B, H)).astype(np.float32)
    dE0 = rng.standard_normal((V, I)).astype(np.float32)
    runs = []
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        x = np.ascontiguousarray(E[ids])
        y1, hn1, cn1, c1 = _core.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, True)
        y2, hn2, cn2, c2 = _core.lstm_forward_embedded(ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0, True)
        for a, b in ((y1, y2), (hn1, hn2), (cn1, cn2)):
            np.testing.assert_array_equal(a, b)
        r1 = _core.lstm_backward(c1, dy, dhn, None)
        dE = dE0.copy()
        r2 = _core.lstm_backward(c2, dy, dhn, None, dembedding=dE)
        assert r2[0] is dE or np.shares_memory(r2[0], dE)
        want = dE0.copy()
        np.add.at(want, ids.reshape(-1), r1[0].reshape(-1, I))
        np.testing.assert_allclose(dE, want, rtol=1e-4, atol=1e-4)
        for a, b in zip(r1[1:], r2[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        runs.append([y2.tobytes(), dE.tobytes()] + [a.tobytes() for a in r2[1:]])
    assert runs[0] == runs[1]


def test_core_bad_input_is_clear_and_changes_nothing():
    rng = np.random.default_rng(0)
    ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0 = _problem(rng, 5, 2, 7, 3, 4)
    bad = ids.copy()
    bad[1, 1] = 7
    with pytest.raises(IndexError, match=r"ids: expected values in \[0, V=7\), got 7"):
        _core.lstm_forward_embedded(bad, E, w_ih, w_hh, b_ih, b_hh, h0, c0, True)
    with pytest.raises(TypeError, match="ids: expected a numpy.ndarray of integers"):
        _core.lstm_forward_embedded(ids.astype(float), E, w_ih, w_hh, b_ih, b_hh, h0, c0, True)
    with pytest.raises(ValueError, match=r"weight_ih: expected shape \(4H=16, I=2\)"):
        _core.lstm_forward_embedded(ids, E[:, :2].copy(), w_ih, w_hh, b_ih, b_hh, h0, c0, True)
    *_, cache = _core.lstm_forward(
        np.ascontiguousarray(E[ids]), w_ih, w_hh, b_ih, b_hh, h0, c0, True
    )
    with pytest.raises(ValueError, match="dembedding: expected None"):
        _core.lstm_backward(cache, None, None, None, dembedding=np.zeros((7, 3), np.float32))
    *_, cache = _core.lstm_forward_embedded(ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0, True)
    dE = np.zeros((6, 3), np.float32)
    with pytest.raises(ValueError, match=r"dembedding: expected shape \(V=7, I=3\)"):
        _core.lstm_backward(cache, None, None, None, dembedding=dE)
    assert not dE.any()


@pytest.mark.parametrize("num_layers,dropout", [(1, 0.0), (2, 0.0), (3, 0.4)])
def test_layer_matches_forward_on_embedding(num_layers, dropout):
    """LSTM.forward_embedded == forward(embedding(ids)): outputs, states, every parameter's
    gradient (the embedding's included), with dropout masks drawn in the same order."""
    V, E_dim, H, T, B = 23, 8, 12, 9, 5
    rng = np.random.default_rng(num_layers)
    ids = rng.integers(0, V, (T, B))
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    hx = tuple(rng.standard_normal((num_layers, B, H)).astype(np.float32) for _ in range(2))
    outs = []
    for fused in (False, True):
        emb = nn.Embedding(V, E_dim, seed=1)
        rnn = lstm_fast.LSTM(E_dim, H, num_layers, dropout=dropout, seed=2)
        if fused:
            y, (h, c) = rnn.forward_embedded(ids, emb, hx)
            dx, (dh0, dc0) = rnn.backward(dy)
            assert dx is None
        else:
            y, (h, c) = rnn(emb(ids), hx)
            dx, (dh0, dc0) = rnn.backward(dy)
            emb.backward(dx)
        grads = {n: p.grad.copy() for n, p in rnn.named_parameters()}
        outs.append((y, h, c, dh0, dc0, emb.weight.grad.copy(), grads))
    (y1, h1, c1, a1, b1, e1, g1), (y2, h2, c2, a2, b2, e2, g2) = outs
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h2, h1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c2, c1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a2, a1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b2, b1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e2, e1, rtol=1e-4, atol=1e-5)
    for n in g1:
        np.testing.assert_allclose(g2[n], g1[n], rtol=1e-4, atol=1e-5, err_msg=n)


def test_layer_embedding_gradient_finite_difference():
    """The embedding's gradient through the fused path against central differences of a
    random projection of the output (random upstream gradient), float32 with a loose bound."""
    V, E_dim, H, T, B = 6, 4, 5, 4, 3
    rng = np.random.default_rng(3)
    emb = nn.Embedding(V, E_dim, seed=0)
    rnn = lstm_fast.LSTM(E_dim, H, 2, seed=1)
    ids = rng.integers(0, V, (T, B))
    ids[0, 0] = 2
    w = rng.standard_normal((T, B, H)).astype(np.float32)

    def f():
        y, _ = rnn.forward_embedded(ids, emb)
        return float((y.astype(np.float64) * w).sum())

    f()
    rnn.backward(w)
    for idx in [(2, 0), (2, 3), (int(ids[1, 1]), 1)]:
        old = emb.weight.data[idx]
        emb.weight.data[idx] = old + 1e-2
        fp = f()
        emb.weight.data[idx] = old - 1e-2
        fm = f()
        emb.weight.data[idx] = old
        assert emb.weight.grad[idx] == pytest.approx((fp - fm) / 2e-2, rel=2e-2, abs=2e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: lstm_fast.GRU(6, 7, 2, seed=0),
        lambda: lstm_fast.LSTM(6, 7, 1, bidirectional=True, seed=0),
        lambda: lstm_fast.LSTM(6, 7, 1, proj_size=3, seed=0),
    ],
)
def test_layer_fallback_keeps_the_contract(make):
    """Configurations the fused core does not cover run forward(embedding(ids)); backward still
    returns None and leaves the input gradient in the embedding."""
    V, T, B = 9, 5, 4
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, (T, B))
    a, b = make(), make()
    ea, eb = nn.Embedding(V, 6, seed=1), nn.Embedding(V, 6, seed=1)
    ya, _ = a.forward_embedded(ids, ea)
    yb, _ = b(eb(ids))
    np.testing.assert_array_equal(ya, yb)
    dy = rng.standard_normal(ya.shape).astype(np.float32)
    dxa, _ = a.backward(dy)
    dxb, _ = b.backward(dy)
    eb.backward(dxb)
    assert dxa is None
    np.testing.assert_allclose(ea.weight.grad, eb.weight.grad, rtol=1e-6, atol=1e-7)


def test_layer_padding_idx_falls_back():
    V, T, B = 9, 5, 4
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (T, B))
    ids[0] = 0
    emb = nn.Embedding(V, 6, padding_idx=0, seed=1)
    rnn = lstm_fast.LSTM(6, 7, seed=0)
    y, _ = rnn.forward_embedded(ids, emb)
    rnn.backward(np.ones_like(y))
    assert not emb.weight.grad[0].any() and emb.weight.grad[1:].any()


def test_layer_bad_input():
    rnn = lstm_fast.LSTM(6, 7, seed=0)
    emb = nn.Embedding(9, 6, seed=1)
    with pytest.raises(TypeError, match="ids: expected an integer array"):
        rnn.forward_embedded(np.zeros((3, 2)), emb)
    with pytest.raises(ValueError, match=r"ids: expected shape \(T, B\)"):
        rnn.forward_embedded(np.zeros((3, 2, 1), np.int64), emb)
    with pytest.raises(ValueError, match=r"embedding: expected weight of shape \(V, I=6\)"):
        rnn.forward_embedded(np.zeros((3, 2), np.int64), nn.Embedding(9, 5, seed=0))
    with pytest.raises(IndexError, match="ids: expected values in"):
        rnn.forward_embedded(np.full((3, 2), 9), emb)


def test_layer_other_id_dtypes_states_and_unbatched():
    """int32 / uint8 ids, a given (h0, c0), eval mode, and unbatched (T,) ids (the fallback) all
    agree with forward(embedding(ids))."""
    V, T, B, H = 13, 6, 3, 5
    rng = np.random.default_rng(4)
    emb = nn.Embedding(V, 4, seed=1)
    rnn = lstm_fast.LSTM(4, H, 2, seed=2)
    hx = tuple(rng.standard_normal((2, B, H)).astype(np.float32) for _ in range(2))
    ids = rng.integers(0, V, (T, B))
    want, (wh, wc) = rnn(emb(ids), hx)
    for dt in (np.int32, np.uint8, np.int64):
        got, (h, c) = rnn.forward_embedded(ids.astype(dt), emb, hx)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(h, wh, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(c, wc, rtol=1e-6, atol=1e-7)
    rnn.eval()
    got, _ = rnn.forward_embedded(ids, emb, hx)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(RuntimeError, match="no saved forward"):
        rnn.backward(np.ones_like(got))
    rnn.train()
    one = ids[:, 0]
    y2, _ = rnn(emb(one))
    y1, _ = rnn.forward_embedded(one, emb)  # last forward: the one backward differentiates
    np.testing.assert_array_equal(y1, y2)
    emb.zero_grad()
    dx, _ = rnn.backward(np.ones_like(y1))
    assert dx is None and emb.weight.grad.any()
