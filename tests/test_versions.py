"""Weights updated in place between a training forward and its backward: every Parameter counts
the in-place updates made by lstm_fast.optim and load_state_dict (PyTorch's version counter), a
training forward remembers the counts, and backward refuses a parameter updated since -- before
any gradient changes -- instead of mixing the forward's activations with the new weights."""

import copy
import pickle

import numpy as np
import pytest

import lstm_fast
from lstm_fast import nn, optim
from lstm_fast.module import Parameter


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _grads(m):
    return {n: p.grad.copy() for n, p in m.named_parameters()}


LAYERS = [
    (lstm_fast.LSTM, dict(num_layers=2, bidirectional=True)),
    (lstm_fast.LSTM, dict(proj_size=3)),
    (lstm_fast.LSTM, dict()),  # the single-layer plain path
    (lstm_fast.GRU, dict(num_layers=3)),
    (lstm_fast.RNN, dict(nonlinearity="relu", bidirectional=True)),
]


@pytest.mark.parametrize("cls,kw", LAYERS)
@pytest.mark.parametrize("opt", [optim.SGD, optim.Adam, optim.RMSprop])
def test_layer_backward_after_an_optimizer_step_raises_and_changes_nothing(cls, kw, opt):
    rng = np.random.default_rng(0)
    m = cls(5, 7, seed=1, **kw)
    x = _rand(rng, 6, 4, 5)
    y, _ = m(x)
    dy = _rand(rng, *y.shape)
    m.backward(dy)
    o = opt(m.parameters(), lr=0.01)
    o.step()
    before = _grads(m)
    first = next(iter(m.named_parameters()))[0]
    with pytest.raises(RuntimeError, match=rf"{first} was updated in place .* run the forward"):
        m.backward(dy)
    after = _grads(m)
    assert all(np.array_equal(before[n], after[n]) for n in before)
    # a new forward differentiates the new weights: the same gradients as a twin built with them
    m.zero_grad()
    y, _ = m(x)
    m.backward(dy)
    twin = cls(5, 7, seed=2, **kw)
    twin.load_state_dict(m.state_dict())
    y2, _ = twin(x)
    twin.backward(dy)
    for (n, p), (_, q) in zip(m.named_parameters(), twin.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=n)


def test_backward_twice_without_an_update_still_accumulates():
    rng = np.random.default_rng(1)
    m = lstm_fast.LSTM(3, 4, num_layers=2, seed=0)
    y, _ = m(_rand(rng, 5, 2, 3))
    dy = _rand(rng, *y.shape)
    m.backward(dy)
    once = _grads(m)
    m.backward(dy)
    for n, g in _grads(m).items():
        np.testing.assert_allclose(g, 2 * once[n], rtol=1e-6, atol=1e-7)


def test_an_update_of_a_parameter_the_forward_did_not_use_is_ignored():
    rng = np.random.default_rng(2)
    m = lstm_fast.GRU(3, 4, seed=0)
    other = Parameter(np.zeros(3))
    y, _ = m(_rand(rng, 5, 2, 3))
    optim.SGD([other], lr=0.1).step()
    m.backward(_rand(rng, *y.shape))  # no error


@pytest.mark.parametrize("cls", [lstm_fast.LSTMCell, lstm_fast.GRUCell, lstm_fast.RNNCell])
def test_cell_backward_after_a_step_raises(cls):
    rng = np.random.default_rng(3)
    c = cls(4, 6, seed=0)
    out = c(_rand(rng, 3, 4))
    h = out[0] if isinstance(out, tuple) else out
    optim.Adam([c.weight_hh], lr=1e-3).step()
    with pytest.raises(RuntimeError, match="weight_hh was updated in place"):
        c.backward(_rand(rng, *h.shape))
    assert not c.weight_ih.grad.any()


def test_linear_backward_after_a_step_or_a_load_raises():
    rng = np.random.default_rng(4)
    lin = nn.Linear(5, 3, seed=0)
    y = lin(_rand(rng, 4, 5))
    optim.SGD(lin.parameters(), lr=0.1).step()
    with pytest.raises(RuntimeError, match="Linear.backward: weight was updated in place"):
        lin.backward(np.ones_like(y))
    y = lin(_rand(rng, 4, 5))
    lin.load_state_dict({"weight": _rand(rng, 3, 5), "bias": _rand(rng, 3)})
    with pytest.raises(RuntimeError, match="load_state_dict"):
        lin.backward(np.ones_like(y))


def test_linear_dx_uses_the_forwards_weight_after_reassignment():
    rng = np.random.default_rng(5)
    lin = nn.Linear(5, 3, seed=0)
    w0 = lin.weight.data.copy()
    x, dy = _rand(rng, 4, 5), _rand(rng, 4, 3)
    lin(x)
    lin.weight.data = _rand(rng, 3, 5)  # a new array: the forward's stays in its cache
    dx = lin.backward(dy)
    np.testing.assert_allclose(dx, dy @ w0, rtol=1e-5, atol=1e-6)


def test_embedded_forward_refuses_an_updated_embedding():
    rng = np.random.default_rng(6)
    emb = nn.Embedding(11, 5, seed=0)
    m = lstm_fast.LSTM(5, 6, seed=0)
    ids = rng.integers(0, 11, (7, 3))
    y, _ = m.forward_embedded(ids, emb)
    optim.SGD(emb.parameters(), lr=0.1).step()
    with pytest.raises(RuntimeError, match="embedding.weight was updated in place"):
        m.backward(_rand(rng, *y.shape))


def test_versions_survive_copies_and_old_pickles():
    p = Parameter(np.ones(3))
    optim.SGD([p], lr=0.1).step()
    assert copy.deepcopy(p)._version == 1
    assert pickle.loads(pickle.dumps(p))._version == 1
    # a Parameter pickled before the counter existed (no _version): usable by every path
    old = object.__new__(Parameter)
    old.data, old.grad = np.ones((4, 3), np.float32), np.zeros((4, 3), np.float32)
    lin = nn.Linear(3, 4, seed=0)
    lin.weight = old
    y = lin(np.ones((2, 3), np.float32))
    lin.backward(np.ones_like(y))
    optim.SGD([old], lr=0.1).step()
    assert old._version == 1
