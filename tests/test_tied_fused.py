"""Tied parameters on LSTM.forward_embedded's fused path (the embedding lookup folded into the
first layer): backward raised the core's 'dweight_hh: expected memory separate from dweight_ih'
where the plain path (embedding, then the layer) sums the gradient of both uses, as PyTorch."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast.nn import Embedding


def _grads(fused, tie, seed=3):
    rng = np.random.default_rng(seed)
    V, E, T, B = 11, 8, 6, 3
    m = lstm_fast.LSTM(E, E, num_layers=2, seed=0)
    emb = Embedding(V, E, seed=1)
    if tie in ("weight", "both"):
        m.weight_hh_l0 = m.weight_ih_l0
    if tie in ("bias", "both"):
        m.bias_hh_l0 = m.bias_ih_l0
    ids = rng.integers(0, V, (T, B))
    if fused:
        y, (h, c) = m.forward_embedded(ids, emb)
    else:
        y, (h, c) = m(emb(ids))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dh = rng.standard_normal(h.shape).astype(np.float32)
    m.zero_grad()
    emb.zero_grad()
    dx, (dh0, dc0) = m.backward(dy, dh)
    if not fused:
        emb.backward(dx)
    out = {n: p.grad.copy() for n, p in m.named_parameters()}
    out["embedding"] = emb.weight.grad.copy()
    out["dh0"], out["dc0"] = dh0, dc0
    return y, out


@pytest.mark.parametrize("tie", ["weight", "bias", "both"])
def test_forward_embedded_with_tied_parameters_sums_their_gradients(tie):
    y_f, g_f = _grads(True, tie)
    y_p, g_p = _grads(False, tie)
    np.testing.assert_allclose(y_f, y_p, rtol=1e-5, atol=1e-6)
    assert set(g_f) == set(g_p)
    for name in g_p:
        np.testing.assert_allclose(g_f[name], g_p[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # (the plain path's sums are checked against torch in test_review5_layers)


def test_forward_embedded_tied_frozen_embedding():
    """A frozen (eval-mode) embedding on the fused path with tied layer weights: no embedding
    gradient, the layer's tied gradient still the sum."""
    rng = np.random.default_rng(4)
    m = lstm_fast.LSTM(8, 8, seed=0)
    m.weight_hh_l0 = m.weight_ih_l0
    emb = Embedding(11, 8, seed=1)
    emb.eval()
    ids = rng.integers(0, 11, (5, 2))
    y, _ = m.forward_embedded(ids, emb)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    m.zero_grad()
    emb.zero_grad()
    m.backward(dy)
    assert emb.weight.grad is None or not np.any(emb.weight.grad)
    ref = lstm_fast.LSTM(8, 8, seed=0)
    ref.weight_hh_l0 = ref.weight_ih_l0
    yr, _ = ref(emb(ids))
    ref.zero_grad()
    ref.backward(dy)
    np.testing.assert_allclose(m.weight_ih_l0.grad, ref.weight_ih_l0.grad, rtol=1e-4, atol=1e-5)
