"""Fifth review: the NumPy layers in stateful and unusual use (weights changed or shared between
calls, a failed call's side effects, buffers the caller reuses), against PyTorch's semantics."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import rnn
from lstm_fast.module import Parameter
from lstm_fast.nn import Embedding

torch = pytest.importorskip("torch")


def _torch_twin(layer, kind, **kw):
    t = getattr(torch.nn, kind)(layer.input_size, layer.hidden_size, **kw)
    t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.state_dict().items()})
    return t


# ---- parameters shared (tied) between the two directions, or within one direction -----------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("concurrent", [None, True])
def test_tied_directions_sum_their_gradients_deterministically(threads, kind, concurrent):
    """A Parameter shared by both directions of a bidirectional layer (one weight read forwards
    and backwards) has one .grad: the two directions' backward calls ran at once on two
    threads and both accumulated into it, a data race that lost updates (off by up to ~0.6)
    and changed from run to run. The directions now run one after the other when their
    gradients share memory: bitwise the same every time, and torch's sum of the two."""
    rng = np.random.default_rng(1)
    lstm_fast.set_num_threads(2)
    before = rnn.BIDIRECTIONAL_CONCURRENT
    rnn.BIDIRECTIONAL_CONCURRENT = concurrent
    try:
        m = getattr(lstm_fast, kind)(48, 48, bidirectional=True, seed=0)
        m.weight_hh_l0_reverse = m.weight_hh_l0
        m.weight_ih_l0_reverse = m.weight_ih_l0
        x = rng.standard_normal((40, 24, 48)).astype(np.float32)
        t = _torch_twin(m, kind, bidirectional=True)
        yt, _ = t(torch.from_numpy(x))
        dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
        (yt * torch.from_numpy(dy)).sum().backward()
        y, _ = m(x)
        grads = []
        for _ in range(6):
            m.zero_grad()
            m.backward(dy)
            grads.append(m.weight_hh_l0.grad.copy())
        for g in grads[1:]:
            np.testing.assert_array_equal(g, grads[0])
        ref = (t.weight_hh_l0.grad + t.weight_hh_l0_reverse.grad).numpy()
        np.testing.assert_allclose(grads[0], ref, rtol=1e-4, atol=1e-4)
    finally:
        rnn.BIDIRECTIONAL_CONCURRENT = before


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("cell", [False, True])
def test_weights_tied_within_a_direction_sum_their_gradients(kind, cell):
    """weight_hh tied to weight_ih (I == H) and bias_hh to bias_ih: backward raised the core's
    'dweight_hh: expected memory separate from dweight_ih' (names the user never used); as
    torch, the gradient is now the sum of both uses."""
    rng = np.random.default_rng(2)
    make = getattr(lstm_fast, kind + ("Cell" if cell else ""))
    m = make(8, 8, seed=0)
    sfx = "" if cell else "_l0"
    setattr(m, "weight_hh" + sfx, getattr(m, "weight_ih" + sfx))
    setattr(m, "bias_hh" + sfx, getattr(m, "bias_ih" + sfx))
    t = getattr(torch.nn, kind + ("Cell" if cell else ""))(8, 8)
    t.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})
    x = rng.standard_normal((3, 8) if cell else (5, 3, 8)).astype(np.float32)
    out = m(x)
    y = out[0] if isinstance(out, tuple) else out
    dy = rng.standard_normal(y.shape).astype(np.float32)
    tout = t(torch.from_numpy(x))
    ty = tout[0] if isinstance(tout, tuple) else tout
    (ty * torch.from_numpy(dy)).sum().backward()
    m.zero_grad()
    m.backward(dy)
    tw = dict(t.named_parameters())
    for a, b in (("weight_ih", "weight_hh"), ("bias_ih", "bias_hh")):
        ref = (tw[a + sfx].grad + tw[b + sfx].grad).numpy()
        got = getattr(m, a + sfx).grad
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


# ---- a parameter made invalid by assignment: named, and nothing changed ---------------------


@pytest.mark.parametrize(
    "name,value,error,match",
    [
        ("weight_hh_l1_reverse", np.zeros((16, 4)), TypeError, r"dtype float32.*got float64"),
        ("bias_ih_l1", np.zeros(15, np.float32), ValueError, r"shape \(16,\).*got \(15,\)"),
        ("weight_ih_l1", np.zeros((16, 7), np.float32), ValueError, r"\(16, 8\).*got \(16, 7\)"),
        ("weight_ih_l1", np.zeros((8, 16), np.float32).T, ValueError, r"C-contiguous"),
    ],
)
def test_a_bad_parameter_is_named_and_the_dropout_generator_untouched(name, value, error, match):
    """p.data = <float64 / wrong shape / strided array> on layer 1 raised the core's message
    'weight_ih: ...' (which of the four weight_ih?) after layer 0 had run and drawn its dropout
    mask: the layer's generator had moved on, so the next forward of the repaired layer no
    longer matched a twin's. The error now names the parameter and the generator is as
    before."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    m = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=0.5, seed=0)
    twin = lstm_fast.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=0.5, seed=0)
    good = getattr(m, name).data
    getattr(m, name).data = value
    with pytest.raises(error, match=rf"^{name}: expected .*{match}"):
        m(x)
    getattr(m, name).data = good
    np.testing.assert_array_equal(m(x)[0], twin(x)[0])


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_a_bad_parameter_is_named_by_forward_and_step(kind, num_layers):
    """The plain one-layer forward and step() (fast and general path) name the parameter too."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    m = getattr(lstm_fast, kind)(3, 4, num_layers=num_layers, seed=0)
    name = f"bias_hh_l{num_layers - 1}"
    good = getattr(m, name).data
    getattr(m, name).data = good.astype(np.float64)
    with pytest.raises(TypeError, match=rf"^{name}: expected .*float32"):
        m(x)
    with pytest.raises(TypeError, match=rf"^{name}: expected .*float32"):
        m.step(x[0])
    getattr(m, name).data = good
    y, _ = m(x)
    m.weight_hh_l0 = Parameter(np.zeros((m.weight_hh_l0.shape[0], 5)))
    with pytest.raises(ValueError, match=r"^weight_hh_l0: expected .*got \(\d+, 5\)"):
        m(x)
    with pytest.raises(ValueError, match=r"^weight_hh_l0: expected .*got \(\d+, 5\)"):
        m.step(x[0])


# ---- lengths ----------------------------------------------------------------------------------


def test_a_bad_length_is_reported_by_value_and_position():
    """A bad entry of lengths printed the whole list (a 4096-row batch: 4096 numbers in the
    message); it now names the first bad value and its position, expected vs given."""
    m = lstm_fast.GRU(3, 4, seed=0)
    x = np.zeros((5, 4096, 3), np.float32)
    lengths = np.full(4096, 5)
    lengths[1234] = 6
    with pytest.raises(ValueError) as e:
        m(x, lengths=lengths)
    msg = str(e.value)
    assert msg == "lengths: expected values in [0, T=5], got 6 at position 1234"
    lengths[1234] = 5
    lengths[77] = -1
    with pytest.raises(ValueError, match=r"got -1 at position 77$"):
        m(x, lengths=lengths)


# ---- a buffer reused by the caller before backward --------------------------------------------


def test_embedding_backward_is_not_misled_by_a_refilled_id_buffer():
    """Embedding kept a reference to the ids: a data loader that refills its batch buffer in
    place before backward (prefetching the next batch) sent the gradient to the next batch's
    rows. The ids are copied (torch would raise for the in-place change)."""
    rng = np.random.default_rng(5)
    emb, twin = Embedding(11, 3, seed=0), Embedding(11, 3, seed=0)
    ids = rng.integers(0, 11, (4, 3))
    dy = rng.standard_normal((4, 3, 3)).astype(np.float32)
    twin(ids.copy())
    twin.backward(dy)
    emb(ids)
    ids[...] = rng.integers(0, 11, ids.shape)
    emb.backward(dy)
    np.testing.assert_array_equal(emb.weight.grad, twin.weight.grad)
