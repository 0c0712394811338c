"""zero_grad(set_to_none=True) on parameters, modules and optimizers (PyTorch's keyword and its
default there): gradients become None, the next backward makes fresh ones, and a training step
gives bitwise what the zeroing path gives."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast import nn, optim


def _model(seed=0):
    lstm = lstm_fast.LSTM(5, 7, num_layers=2, bidirectional=True, seed=seed)
    head = nn.Linear(14, 3, seed=seed)
    return lstm, head


def _train_step(lstm, head, opt, x, set_to_none):
    opt.zero_grad(set_to_none=set_to_none)
    y, _ = lstm(x)
    z = head(y)
    dz = np.sin(z).astype(np.float32)  # a fixed upstream gradient
    dy = head.backward(dz)
    lstm.backward(dy)
    opt.step()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_training_with_set_to_none_matches_zeroing(opt_name):
    x = np.random.default_rng(1).standard_normal((6, 4, 5)).astype(np.float32)
    runs = []
    for set_to_none in (False, True):
        lstm, head = _model()
        params = list(lstm.parameters()) + list(head.parameters())
        opt = optim.make_optimizer(opt_name, params, lr=0.05)
        for _ in range(3):
            _train_step(lstm, head, opt, x, set_to_none)
        runs.append([p.data.copy() for p in params])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_set_to_none_leaves_none_until_backward():
    lstm, head = _model()
    opt = optim.SGD(list(lstm.parameters()) + list(head.parameters()), lr=0.1)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in opt.params)
    lstm.zero_grad()  # the zeroing path makes arrays again
    assert all(isinstance(p.grad, np.ndarray) and not p.grad.any() for p in lstm.parameters())
    head.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in head.parameters())
    p = next(iter(head.parameters()))
    p.zero_grad(set_to_none=False)
    assert isinstance(p.grad, np.ndarray) and p.grad.shape == p.data.shape


def test_step_names_a_parameter_left_without_a_gradient():
    lstm, head = _model()
    params = list(lstm.parameters()) + list(head.parameters())
    opt = optim.SGD(params, lr=0.1)
    opt.zero_grad(set_to_none=True)
    x = np.ones((2, 1, 5), np.float32)
    y, _ = lstm(x)
    lstm.backward(np.ones_like(y))  # the head got no backward
    before = [p.data.copy() for p in params]
    with pytest.raises(ValueError, match=r"step: parameter \d+: grad: expected an array"):
        opt.step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_set_to_none_must_be_a_bool(bad):
    lstm, _ = _model()
    grads = [p.grad.copy() for p in lstm.parameters()]
    with pytest.raises(TypeError, match="set_to_none: expected a bool"):
        lstm.zero_grad(set_to_none=bad)
    with pytest.raises(TypeError, match="set_to_none: expected a bool"):
        optim.SGD(list(lstm.parameters()), lr=0.1).zero_grad(set_to_none=bad)
    for p, g in zip(lstm.parameters(), grads):
        np.testing.assert_array_equal(p.grad, g)
