"""A parameter deleted from a layer or cell (``del layer.bias_ih_l0``): the layer ran as if that
bias were zeros, and a deleted weight failed in the core naming no layer. Now every call that
computes (forward, forward_embedded, step, a cell's forward) raises an AttributeError naming the
parameter and its shape before any work, and assigning it again restores the layer."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast.module import Parameter
from lstm_fast.nn import Embedding

CASES = [
    ("LSTM", {}, "bias_ih_l0", (20,)),
    ("LSTM", {}, "weight_hh_l0", (20, 5)),
    ("LSTM", {"num_layers": 2}, "weight_ih_l1", (20, 5)),
    ("LSTM", {"num_layers": 2}, "bias_hh_l1", (20,)),
    ("LSTM", {"proj_size": 3}, "weight_hr_l0", (3, 5)),
    ("LSTM", {"bidirectional": True}, "bias_ih_l0_reverse", (20,)),
    ("GRU", {}, "bias_hh_l0", (15,)),
    ("GRU", {"bidirectional": True, "num_layers": 2}, "weight_ih_l1_reverse", (15, 10)),
    ("RNN", {"nonlinearity": "relu"}, "bias_ih_l0", (5,)),
]


@pytest.mark.parametrize("kind,kw,name,shape", CASES)
def test_deleted_parameter_is_named_before_any_work(kind, kw, name, shape):
    m = getattr(lstm_fast, kind)(4, 5, seed=0, **kw)
    x = np.random.default_rng(0).standard_normal((3, 2, 4)).astype(np.float32)
    out = m(x)
    y0 = out[0]
    kept = getattr(m, name).data.copy()
    delattr(m, name)
    with pytest.raises(AttributeError, match=rf"{name}: missing .*shape \({shape[0]},"):
        m(x)
    assert m._saved is None  # nothing half-done for a backward to use
    with pytest.raises(RuntimeError):
        m.backward(np.ones_like(y0))
    if not kw.get("bidirectional") and not kw.get("proj_size"):
        with pytest.raises(AttributeError, match=name):
            m.step(x[0])
    setattr(m, name, Parameter(kept))  # assigned again: the layer computes as before
    y1 = m(x)[0]
    np.testing.assert_array_equal(y1, y0)


def test_deleted_parameter_breaks_a_running_stream():
    """step()'s fast path reuses buffers made from the weights: a deletion between two steps
    is caught by the next step, not computed around."""
    m = lstm_fast.LSTM(4, 5, seed=0)
    x = np.ones((2, 4), np.float32)
    _, st = m.step(x)
    m.step(x, st)
    del m.bias_hh_l0
    with pytest.raises(AttributeError, match="bias_hh_l0"):
        m.step(x)


def test_deleted_parameter_forward_embedded():
    m = lstm_fast.LSTM(8, 8, seed=0)
    del m.weight_ih_l0
    with pytest.raises(AttributeError, match=r"weight_ih_l0: missing .*\(32, 8\)"):
        m.forward_embedded(np.zeros((3, 2), np.int64), Embedding(5, 8))


@pytest.mark.parametrize(
    "kind,name,shape",
    [("LSTMCell", "bias_ih", 20), ("GRUCell", "weight_hh", 15), ("RNNCell", "bias_hh", 5)],
)
@pytest.mark.parametrize("training", [False, True])
def test_deleted_cell_parameter(kind, name, shape, training):
    c = getattr(lstm_fast, kind)(4, 5, seed=0)
    c.train(training)
    x = np.ones((2, 4), np.float32)
    c(x)
    delattr(c, name)
    with pytest.raises(AttributeError, match=rf"{name}: missing .*\({shape},"):
        c(x)


def test_layer_without_bias_needs_none():
    m = lstm_fast.LSTM(4, 5, bias=False, seed=0)
    y, _ = m(np.ones((2, 1, 4), np.float32))
    assert y.shape == (2, 1, 5)
