"""Review 26: adversarial calls to the functional API, the NumPy layers and the bindings'
argument checks (aliasing, fed-back buffers, ...). Each test failed before its fix."""

import numpy as np
import pytest

from lstm_fast import GRU, LSTM, RNN


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize(
    "make",
    [
        lambda n: LSTM(6, 6, num_layers=n, seed=1),
        lambda n: GRU(6, 6, num_layers=n, seed=1),
        lambda n: RNN(6, 6, num_layers=n, seed=1),
        lambda n: LSTM(4, 6, num_layers=n, proj_size=4, seed=1),
    ],
    ids=["lstm", "gru", "rnn", "lstm-proj"],
)
@pytest.mark.parametrize("given", ["zeros", "other"])
def test_step_feeds_back_its_own_y_with_a_new_state(make, num_layers, given):
    # Generation: y_t of one step is the next x_t. It lives in the stream's state slot, which
    # step overwrote with the zeros (state=None) or the given state before reading x_t: the
    # step silently ran on the state's values instead of y_t's.
    rng = np.random.default_rng(0)
    m = make(num_layers)
    B, P, H = 3, m._out_size, m.hidden_size
    if given == "zeros":
        state = None
    else:
        h = rng.standard_normal((num_layers, B, P)).astype(np.float32)
        c = rng.standard_normal((num_layers, B, H)).astype(np.float32)
        state = (h, c) if isinstance(m, LSTM) else h
    x0 = rng.standard_normal((B, m.input_size)).astype(np.float32)
    y, _ = m.step(x0)
    want, _ = m.step(y.copy(), state)
    want = want.copy()
    y, _ = m.step(x0)
    got, _ = m.step(y, state)  # y itself, not a copy
    np.testing.assert_array_equal(got, want)


CACHES = ["LSTMCache", "GRUCache", "RNNCache", "LSTMProjCache"]


@pytest.mark.parametrize("name", CACHES)
def test_a_cache_made_without_a_forward_is_refused_not_a_crash(name):
    # Cache.__new__(Cache) gave an object whose C++ value was never constructed: its repr
    # printed garbage sizes and backward (or .gates) read uninitialised memory (SIGSEGV).
    # Run in a child: before the fix the process died.
    import os
    import subprocess
    import sys

    code = f"""
import numpy as np
from lstm_fast import _core, ops
C = _core.{name}
made = []
for how in (lambda: C.__new__(C), lambda: C(), lambda: type("X", (C,), {{}})()):
    try:
        made.append(how())
    except TypeError:
        pass
for c in made:  # (before the fix: each of these read garbage)
    repr(c), c.gates
    ops.lstm_backward(c) if "LSTM" in C.__name__ else ops.gru_backward(c)
print("refused", len(made))
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert r.returncode == 0 and r.stdout.strip() == "refused 0", (r.returncode, r.stdout, r.stderr)


@pytest.mark.parametrize("cls", [LSTM, GRU, RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("aliased", ["input", "h_0", "dy", "dh_n", "weight"])
def test_stacked_backward_refuses_an_aliased_grad_before_any_layer_accumulates(
    cls, bidirectional, aliased
):
    # weight_ih_l0.grad sharing memory with what backward reads (the input, h_0, dy, dh_n, a
    # weight): the core refused it only on reaching layer 0, after the layers above (and the
    # reverse direction) had added their gradients; a failed backward must change nothing.
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 3, 5, 6
    m = cls(I, H, num_layers=2, bidirectional=bidirectional, seed=0)
    D = 2 if bidirectional else 1
    params = dict(m.named_parameters())
    n = params["weight_ih_l0"].data.size
    buf = np.zeros(4096, np.float32)  # one memory for the aliased argument and the gradient
    args = {
        "input": rng.standard_normal((T, B, I)).astype(np.float32),
        "h_0": rng.standard_normal((2 * D, B, H)).astype(np.float32),
        "dy": rng.standard_normal((T, B, D * H)).astype(np.float32),
        "dh_n": rng.standard_normal((2 * D, B, H)).astype(np.float32),
    }
    shape = params["weight_ih_l0"].data.shape
    if aliased == "weight":
        params["weight_ih_l0"].grad = params["weight_hh_l1"].data.reshape(-1)[:n].reshape(shape)
    else:
        a = args[aliased]
        args[aliased] = buf[: a.size].reshape(a.shape)
        args[aliased][...] = a
        params["weight_ih_l0"].grad = buf[a.size - 3 : a.size - 3 + n].reshape(shape)
    x, h0, dy, dh_n = args.values()
    for name, p in params.items():
        if name != "weight_ih_l0":
            p.grad = np.zeros_like(p.data)
    before = {k: p.grad.copy() for k, p in params.items()}
    hx = (h0, np.zeros_like(h0)) if cls is LSTM else h0
    m(x, hx)
    with pytest.raises(ValueError, match=r"weight_ih_l0\.grad: expected memory separate from"):
        m.backward(dy, dh_n)
    for k, p in params.items():
        np.testing.assert_array_equal(p.grad, before[k], err_msg=k)


def test_forward_embedded_backward_refuses_a_grad_on_the_table_before_any_layer_accumulates():
    # The fused path's first layer reads embedding.weight: a .grad sharing its memory was
    # refused by the core at layer 0, after layer 1 had accumulated.
    from lstm_fast.nn import Embedding

    rng = np.random.default_rng(0)
    m, emb = LSTM(5, 6, num_layers=2, seed=0), Embedding(10, 5)
    params = dict(m.named_parameters())
    for p in params.values():
        p.grad = np.zeros_like(p.data)
    params["bias_ih_l0"].grad = emb.weight.data.reshape(-1)[:24]
    y, _ = m.forward_embedded(rng.integers(0, 10, (8, 3)), emb)  # T * B >= V: fused
    with pytest.raises(ValueError, match=r"bias_ih_l0\.grad: expected memory separate from emb"):
        m.backward(np.ones_like(y))
    for name, p in params.items():
        if name != "bias_ih_l0":
            assert not p.grad.any(), name


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("where", ["hx", "hx-lengths", "dy", "dy-lengths", "dh_n", "step-state"])
def test_check_finite_sees_float64_values_beyond_float32_range(where):
    # check_finite scanned the caller's float64 hx / dy / dh_n / step state (finite), then the
    # boundary's float32 conversion made 1e39 an Inf that reached the kernels unreported.
    rng = np.random.default_rng(0)
    T, B, I, H = 4, 3, 5, 6
    m = LSTM(I, H, check_finite=True, seed=0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    big = np.zeros((1, B, H))
    big[0, 1, 2] = -1e39
    lengths = [4, 3, 2] if where.endswith("lengths") else None
    named = {"hx": r"hx\[0\]", "dy": "dy", "dh_n": "dh_n", "step": r"state\[0\]"}
    match = named[where.split("-")[0]]
    with pytest.raises(ValueError, match=match + ": expected finite values, got Inf"):
        if where.startswith("hx"):
            m(x, (big, np.zeros((1, B, H))), lengths=lengths)
        elif where == "step-state":
            m.eval()
            m.step(x[0], (big, np.zeros((1, B, H))))
        else:
            y, _ = m(x, lengths=lengths)
            dy = np.ones(y.shape)
            if where.startswith("dy"):
                dy[0, 1, 2] = 1e39
                m.backward(dy)
            else:
                m.backward(dy, big)


@pytest.mark.parametrize("derive", ["view", "memoryview"])
def test_backward_refuses_an_input_derived_from_a_gradient_of_its_own_memory(derive):
    # The check's fast path (every gradient an array of its own memory) must still see an input
    # made from one of them: a view of it, or an array over a memoryview of it.
    T, B, I, H = 4, 3, 5, 6
    m = LSTM(I, H, num_layers=2, bidirectional=True, seed=0)
    params = dict(m.named_parameters())
    for p in params.values():
        p.grad = np.zeros_like(p.data)
    g = params["weight_ih_l0"].grad
    flat = g.reshape(-1) if derive == "view" else np.frombuffer(memoryview(g), np.float32)
    x = flat[: T * B * I].reshape(T, B, I)
    x[...] = np.random.default_rng(0).standard_normal((T, B, I))
    y, _ = m(x)
    before = {k: p.grad.copy() for k, p in params.items()}
    with pytest.raises(ValueError, match=r"weight_ih_l0\.grad: expected memory separate from"):
        m.backward(np.ones_like(y))
    for k, p in params.items():
        np.testing.assert_array_equal(p.grad, before[k], err_msg=k)
