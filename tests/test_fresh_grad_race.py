"""Two threads starting backward on one layer whose gradients are None (zero_grad(set_to_none)):
each could see None and make its own zero array, the first one's accumulation then lost. The
window is widened here by a slow np.zeros_like; the gradient must be the sum of both calls."""

import threading
import time

import numpy as np
import pytest

import lstm_fast
from lstm_fast import nn


def _slow_zeros_like(monkeypatch):
    real = np.zeros_like

    def slow(a, *args, **kwargs):
        time.sleep(0.02)  # both threads are past the None check before either assigns
        return real(a, *args, **kwargs)

    monkeypatch.setattr(np, "zeros_like", slow)


def _twice_concurrently(fn):
    start = threading.Barrier(2)
    errors = []

    def run():
        try:
            start.wait(timeout=10)
            fn()
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors


def _layer(kind):
    rng = np.random.default_rng(0 if kind != "Linear" else 1)
    if kind == "Linear":
        return nn.Linear(5, 3, seed=0), rng.standard_normal((4, 5)).astype(np.float32)
    m = getattr(lstm_fast, kind)(6, 5, seed=0)
    return m, rng.standard_normal((4, 3, 6)).astype(np.float32)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "Linear"])
def test_concurrent_backward_from_none_grads_sums_both(kind, monkeypatch):
    m, x = _layer(kind)
    out = m(x)
    y = out[0] if isinstance(out, tuple) else out
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    m.zero_grad()
    m.backward(dy)
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = None
    _slow_zeros_like(monkeypatch)
    _twice_concurrently(lambda: m.backward(dy))
    for n, p in m.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[n], rtol=1e-6, atol=1e-7, err_msg=n)
