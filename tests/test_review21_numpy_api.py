"""Review 21: the NumPy-facing API (lstm_fast.nn, the recurrent layers, lstm_fast.ops) with the
inputs real code passes. Each test is a reproduction of a defect found in the review: it failed
before the fix next to it.
"""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast.nn import Embedding, Linear, softmax_cross_entropy


def _misaligned(shape, seed=0):
    """A float32 C-contiguous array whose data starts one byte past an aligned address (what
    np.frombuffer of a file's bytes at an odd offset gives), filled with random values."""
    n = int(np.prod(shape))
    vals = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    buf = bytearray(4 * n + 1)
    a = np.frombuffer(buf, dtype=np.float32, count=n, offset=1).reshape(shape)
    a[...] = vals.reshape(shape)
    assert not a.flags.aligned and a.flags.c_contiguous
    return a


# ---- misaligned float32 arrays in lstm_fast.nn ------------------------------------------------
# The recurrent layers copy a misaligned float32 input (the core refuses one); Linear, Embedding
# and softmax_cross_entropy passed it on, and the core's refusal named its own argument ("a",
# "src", "out", "z"), not the caller's: a valid input raised.


def test_linear_takes_misaligned_input_and_dy():
    lin = Linear(5, 3, seed=0)
    x = _misaligned((4, 5), 1)
    dy = _misaligned((4, 3), 2)
    y = lin(x)
    np.testing.assert_allclose(y, x @ lin.weight.data.T + lin.bias.data, rtol=1e-5, atol=1e-6)
    lin.zero_grad()
    dx = lin.backward(dy)
    np.testing.assert_allclose(dx, dy @ lin.weight.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.weight.grad, dy.T @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lin.bias.grad, dy.sum(0), rtol=1e-5, atol=1e-6)


def test_linear_accumulates_into_misaligned_grads():
    lin = Linear(5, 3, seed=0)
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    dy = np.random.default_rng(4).standard_normal((4, 3)).astype(np.float32)
    lin(x)
    gw, gb = _misaligned((3, 5), 5), _misaligned((3,), 6)
    gw0, gb0 = gw.copy(), gb.copy()
    lin.weight.grad, lin.bias.grad = gw, gb
    lin.backward(dy)
    assert lin.weight.grad is gw and lin.bias.grad is gb  # added into in place
    np.testing.assert_allclose(gw, gw0 + dy.T @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gb, gb0 + dy.sum(0), rtol=1e-5, atol=1e-6)


def test_embedding_backward_misaligned_dy_and_grad():
    emb = Embedding(10, 5, seed=0)
    ids = np.array([1, 2, 1, 7])
    emb(ids)
    dy = _misaligned((4, 5), 7)
    want = np.zeros((10, 5), np.float32)
    np.add.at(want, ids, dy)
    emb.zero_grad()
    emb.backward(dy)
    np.testing.assert_allclose(emb.weight.grad, want, rtol=1e-6, atol=1e-6)
    g = _misaligned((10, 5), 8)
    g0 = g.copy()
    emb.weight.grad = g
    emb.backward(np.ascontiguousarray(dy))
    np.testing.assert_allclose(g, g0 + want, rtol=1e-6, atol=1e-6)


def test_softmax_cross_entropy_inplace_misaligned_logits_are_copied():
    z = _misaligned((4, 5), 9)
    t = np.array([0, 1, 4, 2])
    want_loss, want_g = softmax_cross_entropy(np.ascontiguousarray(z.copy()), t)
    before = z.copy()
    loss, g = softmax_cross_entropy(z, t, inplace=True)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(z, before)  # not worked in: a copy was made


# ---- sizes no memory holds ----------------------------------------------------------------------
# The recurrent layers refuse parameters that cannot fit in memory with a ValueError naming the
# sizes; Linear and Embedding went straight to NumPy: "array is too big; `arr.size *
# arr.dtype.itemsize` is larger than the maximum possible size" (no argument named) or a
# MemoryError about a float64 array the caller never asked for.


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: Linear(2**40, 2**40), ("in_features=1099511627776", "out_features=")),
        (lambda: Linear(2**20, 2**20), ("in_features=1048576", "out_features=1048576")),
        (lambda: Embedding(2**40, 2**10), ("num_embeddings=1099511627776", "embedding_dim=1024")),
        (lambda: Embedding(2**62, 2**62), ("num_embeddings=", "embedding_dim=")),
    ],
)
def test_linear_embedding_refuse_sizes_beyond_memory(make, names):
    with pytest.raises(ValueError, match="memory") as err:
        make()
    for n in names:
        assert n in str(err.value)


# ---- bool switches ------------------------------------------------------------------------------
# softmax_cross_entropy tested inplace and need_grad for truthiness: inplace="False" (a config
# file's string) overwrote the caller's logits with the gradient, need_grad="no" returned it.


@pytest.mark.parametrize("name", ["inplace", "need_grad"])
@pytest.mark.parametrize("value", ["False", "no", 1, 0, None])
def test_softmax_cross_entropy_bool_switches_are_checked(name, value):
    z = np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32)
    before = z.copy()
    with pytest.raises(TypeError, match=f"{name}: expected a bool"):
        softmax_cross_entropy(z, np.array([0, 1, 3]), **{name: value})
    np.testing.assert_array_equal(z, before)


def test_softmax_cross_entropy_numpy_bools_accepted():
    z = np.zeros((2, 3), np.float32)
    loss, g = softmax_cross_entropy(z, [0, 1], need_grad=np.False_, inplace=np.True_)
    assert g is None and loss == pytest.approx(np.log(3.0))


# ---- None (or another object) where an array is expected ----------------------------------------
# The layers' conversion reported np.asarray(None)'s dtype: "c_0: expected a real floating-point
# array, got dtype object" for lstm(x, (h0, None)), where the caller passed no array at all.


@pytest.mark.parametrize(
    "call, want",
    [
        (lambda l, x: l(x, (np.zeros((1, 2, 4), np.float32), None)), "c_0: .* got NoneType"),
        (lambda l, x: l(None), "input: .* got NoneType"),
        (lambda l, x: l({"x": x}), "input: .* got dict"),
        (lambda l, x: l.step(None), "x_t: .* got NoneType"),
        (lambda l, x: l.step(x[0], (None, None)), r"state\[0\] \(h\): .* got NoneType"),
        (lambda l, x: l(np.array([None, None])), "input: .* got dtype object"),
    ],
)
def test_layer_names_the_type_of_a_non_array(call, want):
    from lstm_fast import LSTM

    layer = LSTM(3, 4, seed=0)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(TypeError, match=want):
        call(layer, x)


def test_cell_names_the_type_of_a_non_array():
    from lstm_fast import LSTMCell

    cell = LSTMCell(3, 4, seed=0)
    with pytest.raises(TypeError, match="h_0: .* got NoneType"):
        cell(np.zeros((2, 3), np.float32), (None, None))


# ---- a parameter replaced between forward and backward ------------------------------------------
# layer.weight_hh_l0 = Parameter(new) after a training forward: backward ran on the cache of the
# old weights and added their gradient into the new Parameter's .grad (PyTorch's backward sends
# it to the old Parameter, the one the forward used); Linear's dx used the old weight too. As
# after load_state_dict (and del), the saved forward is dropped and backward raises.


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "Linear"])
def test_backward_after_a_parameter_is_replaced_raises(kind):
    import lstm_fast
    from lstm_fast import Parameter

    rng = np.random.default_rng(11)
    if kind == "Linear":
        mod, name, x = Linear(3, 4, seed=0), "weight", rng.standard_normal((2, 3))
    elif kind == "LSTMCell":
        mod, name, x = lstm_fast.LSTMCell(3, 4, seed=0), "weight_ih", rng.standard_normal((2, 3))
    else:
        mod = getattr(lstm_fast, kind)(3, 4, seed=0)
        name, x = "weight_hh_l0", rng.standard_normal((5, 2, 3))
    out = mod(x.astype(np.float32))
    y = out[0] if isinstance(out, tuple) else out
    old = getattr(mod, name)
    new = Parameter(np.zeros_like(old.data))
    setattr(mod, name, new)
    with pytest.raises(RuntimeError, match="no saved forward|weight was replaced"):
        mod.backward(np.ones(y.shape, np.float32))
    assert not new.grad.any() and not old.grad.any()
    # a forward with the new parameter: its backward runs and accumulates into it
    out = mod(x.astype(np.float32))
    y = out[0] if isinstance(out, tuple) else out
    mod.backward(np.ones(y.shape, np.float32))
    assert getattr(mod, name) is new and new.grad.any() and not old.grad.any()


def test_assigning_the_same_parameter_keeps_the_saved_forward():
    import lstm_fast

    layer = lstm_fast.LSTM(3, 4, seed=0)
    y, _ = layer(np.ones((2, 1, 3), np.float32))
    layer.weight_ih_l0 = layer.weight_ih_l0  # not new weights
    dx, _ = layer.backward(np.ones(y.shape, np.float32))
    assert dx.shape == (2, 1, 3)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_optimizers_and_clipping_take_misaligned_float32_gradients(name):
    """A float32 gradient at an odd byte offset (a view into a byte buffer) reached the C++
    update kernels, which refuse misaligned data ("grad: expected float32-aligned data"), and
    clip_grad_norm's sum of squares the same. Both now take such a gradient, with the results
    of an aligned copy of it."""
    from lstm_fast import optim
    from lstm_fast.nn import Parameter

    g = _misaligned((3, 4))
    assert not g.flags.aligned
    p = Parameter(np.ones((3, 4), np.float32))
    q = Parameter(np.ones((3, 4), np.float32))
    p.grad, q.grad = g, g.copy()
    o_p, o_q = getattr(optim, name)([p], lr=0.1), getattr(optim, name)([q], lr=0.1)
    for _ in range(3):
        o_p.step()
        o_q.step()
    np.testing.assert_array_equal(p.data, q.data)
    assert optim.clip_grad_norm([p], 1.0) == optim.clip_grad_norm([q], 1.0)
