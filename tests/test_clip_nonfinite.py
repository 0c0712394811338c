"""clip_grad_norm with NaN / Inf gradients: the same gradients and norm as PyTorch's
clip_grad_norm_ (every gradient multiplied by the NaN or 0 coefficient), and
error_if_nonfinite=True raising before any gradient changes, as PyTorch's."""

import math

import numpy as np
import pytest

from lstm_fast import optim
from lstm_fast.nn import Parameter

torch = pytest.importorskip("torch")


def _pair(grads):
    ours = []
    for g in grads:
        p = Parameter(np.zeros_like(g))
        p.grad = g.copy()
        ours.append(p)
    theirs = []
    for g in grads:
        t = torch.zeros(g.shape, requires_grad=True)
        t.grad = torch.from_numpy(g.copy())
        theirs.append(t)
    return ours, theirs


def _grads(bad, where):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in ((3, 4), (5,), (2, 2))]
    grads[where].flat[1] = bad
    return grads


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 2])  # the first or the last parameter (order matters for max)
def test_nonfinite_gradients_as_torch(norm_type, bad, where):
    ours, theirs = _pair(_grads(bad, where))
    n1 = optim.clip_grad_norm(ours, 1.0, norm_type)
    n2 = float(torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type))
    assert (math.isnan(n1) and math.isnan(n2)) or n1 == n2
    for p, t in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, t.grad.numpy())


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_error_if_nonfinite_raises_before_changing_anything(norm_type, bad):
    grads = _grads(bad, 2)
    ours, theirs = _pair(grads)
    with pytest.raises(RuntimeError, match="norm"):
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match=r"(?i)non.?finite.*no gradient was changed"):
        optim.clip_grad_norm(ours, 1.0, norm_type, error_if_nonfinite=True)
    for p, g in zip(ours, grads):
        np.testing.assert_array_equal(p.grad, g)


def test_error_if_nonfinite_lets_finite_gradients_clip():
    grads = _grads(5.0, 0)
    ours, theirs = _pair(grads)
    n1 = optim.clip_grad_norm(ours, 0.5, 2.0, True)
    n2 = float(torch.nn.utils.clip_grad_norm_(theirs, 0.5, 2.0, True))
    assert n1 == pytest.approx(n2, rel=1e-6)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-6)
