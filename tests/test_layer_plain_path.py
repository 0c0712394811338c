"""The layers' plain forward and backward (one layer, one direction, float32 C-contiguous arrays,
no lengths) skip the general path's per-call Python: they must give bitwise the same outputs,
saved state and gradients as the general path, and hand every unusual call to it (errors
included)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import rnn


def make(kind, I, H, proj=0, **kw):
    if kind == "LSTM":
        return lstm_fast.LSTM(I, H, proj_size=proj, seed=3, **kw)
    if kind == "GRU":
        return lstm_fast.GRU(I, H, seed=3, **kw)
    return lstm_fast.RNN(I, H, nonlinearity=kind, seed=3, **kw)


def grads(m):
    return {n: p.grad.copy() for n, p in m.named_parameters()}


def run(m, x, hx, dy, dhn):
    """Forward, then backward with the given upstream gradients; everything as arrays."""
    y, hn = m(x, hx)
    out = [y, *(hn if isinstance(hn, tuple) else (hn,))]
    if not m.training:
        return out, None, None
    m.zero_grad()
    dx, dh0 = m.backward(dy, *dhn)
    return out, dx, (dh0, grads(m))


@pytest.mark.parametrize(
    "kind,proj,batch_first,training,with_state",
    [
        (k, p, bf, tr, st)
        for (k, p), bf, tr, st in itertools.product(
            [("LSTM", 0), ("LSTM", 3), ("GRU", 0), ("tanh", 0), ("relu", 0)],
            [False, True],
            [False, True],
            [False, True],
        )
    ],
)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 7, 17), (5, 3, 1, 7), (4, 17, 9, 33)])
def test_plain_path_equals_general_path(kind, proj, batch_first, training, with_state, T, B, I, H):
    rng = np.random.default_rng(T * 100 + B * 10 + H)
    m = make(kind, I, H, proj, batch_first=batch_first)
    m.train(training)
    P = proj or H
    shape = (B, T, I) if batch_first else (T, B, I)
    x = rng.standard_normal(shape).astype(np.float32)
    hx = None
    if with_state:
        h0 = rng.standard_normal((1, B, P)).astype(np.float32)
        c0 = rng.standard_normal((1, B, H)).astype(np.float32)
        hx = (h0, c0) if kind == "LSTM" else h0
    yshape = (B, T, P) if batch_first else (T, B, P)
    dy = rng.standard_normal(yshape).astype(np.float32)
    dhn = [rng.standard_normal((1, B, P)).astype(np.float32)]
    if kind == "LSTM":
        dhn.append(rng.standard_normal((1, B, H)).astype(np.float32))

    calls = []
    real_fwd, real_bwd = rnn._RNNBase._forward_plain, rnn._RNNBase._backward_plain

    def spy(real, tag):
        def f(self, *a):
            out = real(self, *a)
            calls.append((tag, out is not None))
            return out

        return f

    rnn._RNNBase._forward_plain = spy(real_fwd, "fwd")
    rnn._RNNBase._backward_plain = spy(real_bwd, "bwd")
    try:
        fast = run(m, x, hx, dy, dhn)
        assert calls == [("fwd", True)] + ([("bwd", True)] if training else [])
        calls.clear()
        # float64 input, states and gradients: the general paths, which convert them to the
        # same float32
        hx64 = None
        if hx is not None:
            hx64 = (
                tuple(a.astype(np.float64) for a in hx) if kind == "LSTM" else hx.astype(np.float64)
            )
        dhn64 = [a.astype(np.float64) for a in dhn]
        general = run(m, x.astype(np.float64), hx64, dy.astype(np.float64), dhn64)
        assert calls == ([("bwd", False)] if training else [])
    finally:
        rnn._RNNBase._forward_plain = real_fwd
        rnn._RNNBase._backward_plain = real_bwd
    for a, b in zip(fast[0], general[0]):
        assert a.shape == b.shape and a.dtype == np.float32 and a.flags.c_contiguous
        np.testing.assert_array_equal(a, b)
    if training:
        np.testing.assert_array_equal(fast[1], general[1])
        dh_f, g_f = fast[2]
        dh_g, g_g = general[2]
        for a, b in zip(
            dh_f if isinstance(dh_f, tuple) else (dh_f,),
            dh_g if isinstance(dh_g, tuple) else (dh_g,),
        ):
            np.testing.assert_array_equal(a, b)
        assert g_f.keys() == g_g.keys()
        for n in g_f:
            np.testing.assert_array_equal(g_f[n], g_g[n], err_msg=n)
    else:
        assert m._saved is None


def test_plain_path_hands_unusual_calls_to_the_general_path():
    m = lstm_fast.LSTM(4, 5)
    m.eval()
    x = np.zeros((2, 3, 4), np.float32)
    h = np.zeros((1, 3, 5), np.float32)
    # wrong sizes and types of x and hx: the general path's errors, nothing half-done
    with pytest.raises(ValueError, match=r"input: expected shape \(T, B, I=4\)"):
        m(np.zeros((2, 3, 6), np.float32))
    with pytest.raises(ValueError, match=r"hx: h_0: expected shape"):
        m(x, (np.zeros((1, 2, 5), np.float32), h))
    with pytest.raises(TypeError, match=r"hx: expected a tuple \(h_0, c_0\)"):
        m(x, h)
    with pytest.raises(ValueError, match=r"hx: c_0: expected shape"):
        m(x, (h, np.zeros((2, 3, 5), np.float32)))
    # states that are not float32 C-contiguous (1, B, F) arrays still work, as before
    y1, (h1, c1) = m(x, (h, h))
    y2, (h2, c2) = m(x, (h.astype(np.float64), np.asfortranarray(h)))
    y3, (h3, c3) = m(x, [h.tolist(), h])
    for a, b, c in ((y1, y2, y3), (h1, h2, h3), (c1, c2, c3)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    gru = lstm_fast.GRU(4, 5)
    with pytest.raises(TypeError, match="hx: expected one array h_0, got a tuple"):
        gru(x, (h, h))
    # a failed call clears the previous training forward's cache
    m.train()
    m(x)
    assert m._saved is not None
    with pytest.raises(ValueError):
        m(np.zeros((2, 3, 6), np.float32))
    assert m._saved is None
    with pytest.raises(RuntimeError, match="no saved forward"):
        m.backward(np.zeros((2, 3, 5), np.float32))
    # backward: wrong shapes and types go to the general path's errors
    m(x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3, 5\)"):
        m.backward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"dh_n: expected shape \(1, 3, 5\)"):
        m.backward(np.zeros((2, 3, 5), np.float32), np.zeros((1, 2, 5), np.float32))
    with pytest.raises(TypeError, match="dc_n must be None"):
        gru.train()
        gru(x)
        gru.backward(np.zeros((2, 3, 5), np.float32), None, h)
    dx1, (dh1, dc1) = m.backward(np.ones((2, 3, 5), np.float32), h, h)
    dx2, (dh2, dc2) = m.backward(np.ones((2, 3, 5)), h.astype(np.float64), np.asfortranarray(h))
    for a, b in ((dx1, dx2), (dh1, dh2), (dc1, dc2)):
        np.testing.assert_array_equal(a, b)
    dx3, _ = m.backward(np.ones((2, 3, 5), np.float32), need_dx=False)
    assert dx3 is None
    for layer in (m, lstm_fast.LSTM(4, 5, num_layers=2)):
        layer.train()
        layer(x)
        with pytest.raises(TypeError, match="need_dx: expected a bool, got str"):
            layer.backward(np.ones((2, 3, 5), np.float32), need_dx="no")


@pytest.mark.parametrize("cell", [lstm_fast.LSTMCell, lstm_fast.GRUCell, lstm_fast.RNNCell])
def test_cell_backward_names_a_bad_need_dx(cell):
    c = cell(4, 5)
    c.train()
    c(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="need_dx: expected a bool, got str"):
        c.backward(np.ones((3, 5), np.float32), need_dx="no")
    dx, _ = c.backward(np.ones((3, 5), np.float32), need_dx=False)  # the cache is still there
    assert dx is None
