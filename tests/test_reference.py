"""The NumPy reference itself: float64 finite differences for every gradient, parity with
torch.nn.LSTM / GRU / RNN (incl. proj_size, packed variable lengths and the reverse direction of
a bidirectional layer), dtypes, shapes and the small helpers."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import reference as ref

CELLS = ["lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "lstm_proj": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


# ---- a uniform view of the three cells ------------------------------------------------------


def make_problem(cell, T, B, I, H, P, rng, *, bias=True, scale=0.6):
    """Named float64 arrays for one layer: x, initial state(s) and the weights (PyTorch layout)."""
    G = GATES[cell] * H
    proj = cell == "lstm_proj"
    Hout = P if proj else H  # width of y and h
    a = {
        "x": rng.standard_normal((T, B, I)),
        "h0": rng.standard_normal((B, Hout)) * 0.5,
        "weight_ih": rng.uniform(-scale, scale, (G, I)),
        "weight_hh": rng.uniform(-scale, scale, (G, Hout)),
    }
    if cell.startswith("lstm"):
        a["c0"] = rng.standard_normal((B, H)) * 0.5
    if bias:
        a["bias_ih"] = rng.uniform(-scale, scale, G)
        a["bias_hh"] = rng.uniform(-scale, scale, G)
    if proj:
        a["weight_hr"] = rng.uniform(-scale, scale, (P, H))
    return a


def forward(cell, a, lengths=None, reverse=False):
    """Runs the reference; returns (outputs, cache), outputs = (y, h_n) or (y, h_n, c_n)."""
    args = (a["x"], a["weight_ih"], a["weight_hh"], a.get("bias_ih"), a.get("bias_hh"), a["h0"])
    kw = dict(lengths=lengths, reverse=reverse)
    if cell.startswith("lstm"):
        y, h_n, c_n, cache = ref.lstm_forward(*args, a["c0"], weight_hr=a.get("weight_hr"), **kw)
        return (y, h_n, c_n), cache
    if cell == "gru":
        y, h_n, cache = ref.gru_forward(*args, **kw)
    else:
        y, h_n, cache = ref.rnn_forward(*args, nonlinearity=cell[4:], **kw)
    return (y, h_n), cache


def backward(cell, cache, upstream):
    """Runs the reference backward; returns the gradients named as the arrays of the problem."""
    if cell.startswith("lstm"):
        g = ref.lstm_backward(cache, *upstream)
    elif cell == "gru":
        g = ref.gru_backward(cache, *upstream)
    else:
        g = ref.rnn_backward(cache, *upstream)
    return g


def grad_of(g, name):
    return getattr(g, "d" + name)


def loss(cell, a, upstream, lengths, reverse):
    """L = sum(dy * y) + sum(dh_n * h_n) (+ sum(dc_n * c_n)): its gradients are the backward's."""
    outputs, _ = forward(cell, a, lengths, reverse)
    return sum(float(np.sum(u * o)) for u, o in zip(upstream, outputs))


def numerical_grad(f, a, name, eps=1e-6):
    """Central differences of f(a) w.r.t. every element of a[name]."""
    value = a[name]
    grad = np.zeros_like(value)
    for idx in np.ndindex(value.shape):
        old = value[idx]
        value[idx] = old + eps
        plus = f(a)
        value[idx] = old - eps
        minus = f(a)
        value[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


def relu_margin(a, cache):
    """Smallest |pre-activation| of a relu RNN (finite differences need it away from the kink)."""
    pre = a["x"] @ a["weight_ih"].T + cache.h_prev @ a["weight_hh"].T
    if "bias_ih" in a:
        pre = pre + a["bias_ih"] + a["bias_hh"]
    return np.min(np.abs(pre)) if pre.size else np.inf


def mixed_lengths(rng, T, B):
    """Lengths in [0, T] in no particular order, including 0 and T when B allows."""
    lengths = np.array([T, 0, *rng.integers(1, T + 1, B)])[:B]
    return rng.permutation(lengths)


# ---- finite differences -------------------------------------------------------------------


# (T, B, I, H, P): sizes 1, odd sizes; P only matters for lstm_proj.
FD_SHAPES = [(1, 1, 1, 1, 1), (4, 3, 2, 3, 2), (3, 5, 1, 2, 1)]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H,P", FD_SHAPES)
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradients_match_finite_differences(cell, T, B, I, H, P, with_lengths, reverse, bias):
    for seed in range(100):
        rng = np.random.default_rng([seed, T, B, I, H, with_lengths, reverse, bias])
        a = make_problem(cell, T, B, I, H, P, rng, bias=bias)
        lengths = mixed_lengths(rng, T, B) if with_lengths else None
        outputs, cache = forward(cell, a, lengths, reverse)
        if cell != "rnn_relu" or relu_margin(a, cache) > 1e-3:
            break
    else:
        pytest.fail("no seed keeps the relu pre-activations away from 0")
    upstream = [rng.standard_normal(o.shape) for o in outputs]  # random, never all-ones
    g = backward(cell, cache, upstream)

    def f(arrays):
        return loss(cell, arrays, upstream, lengths, reverse)

    for name in a:
        np.testing.assert_allclose(
            grad_of(g, name), numerical_grad(f, a, name), rtol=1e-6, atol=1e-8, err_msg=name
        )
    if not bias:
        assert g.dbias_ih is None and g.dbias_hh is None
    if cell == "lstm":
        assert g.dweight_hr is None


# ---- parity with torch.nn -------------------------------------------------------------------

TORCH_TOL = dict(rtol=1e-9, atol=1e-12)


def torch_module(torch, cell, I, H, P, bias, bidirectional):
    nn = torch.nn
    if cell.startswith("lstm"):
        proj_size = P if cell == "lstm_proj" else 0
        m = nn.LSTM(I, H, bias=bias, proj_size=proj_size, bidirectional=bidirectional)
    elif cell == "gru":
        m = nn.GRU(I, H, bias=bias, bidirectional=bidirectional)
    else:
        m = nn.RNN(I, H, nonlinearity=cell[4:], bias=bias, bidirectional=bidirectional)
    return m.double()


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_torch(cell, bidirectional, packed, bias):
    """Forward and every gradient against torch autograd, same weights and upstream gradients.

    Bidirectional: direction 0 is compared with reverse=False, direction 1 (``_reverse``
    parameters) with reverse=True; dx is the sum of both directions' dx.
    """
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng([7, CELLS.index(cell), bidirectional, packed, bias])
    T, B, I, H, P = 6, 4, 3, 5, 3
    is_lstm = cell.startswith("lstm")
    Hout = P if cell == "lstm_proj" else H
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I))
    lengths = rng.permutation([T, 1, 4, 2]) if packed else None  # torch needs lengths >= 1
    problems = [make_problem(cell, T, B, I, H, P, rng, bias=bias) for _ in range(D)]
    for a in problems:
        a["x"] = x

    m = torch_module(torch, cell, I, H, P, bias, bidirectional)
    with torch.no_grad():
        for d, a in enumerate(problems):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
                if name in a:
                    getattr(m, f"{name}_l0" + ("_reverse" if d else "")).copy_(
                        torch.tensor(a[name])
                    )

    dy = rng.standard_normal((T, B, D * Hout))
    dh_n = rng.standard_normal((D, B, Hout))
    dc_n = rng.standard_normal((D, B, H))

    # torch autograd
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(np.stack([a["h0"] for a in problems]), requires_grad=True)
    c0t = (
        torch.tensor(np.stack([a["c0"] for a in problems]), requires_grad=True) if is_lstm else None
    )
    inp = xt
    if packed:
        inp = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), enforce_sorted=False
        )
    out, state = m(inp, (h0t, c0t) if is_lstm else h0t)
    if packed:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    h_nt, c_nt = state if is_lstm else (state, None)
    total = (out * torch.tensor(dy)).sum() + (h_nt * torch.tensor(dh_n)).sum()
    if is_lstm:
        total = total + (c_nt * torch.tensor(dc_n)).sum()
    total.backward()

    # the reference, one direction at a time
    dx = np.zeros_like(x)
    for d, a in enumerate(problems):
        cols = slice(d * Hout, (d + 1) * Hout)
        outputs, cache = forward(cell, a, lengths, reverse=bool(d))
        np.testing.assert_allclose(outputs[0], out[:, :, cols].detach().numpy(), **TORCH_TOL)
        np.testing.assert_allclose(outputs[1], h_nt[d].detach().numpy(), **TORCH_TOL)
        upstream = [dy[:, :, cols], dh_n[d]]
        if is_lstm:
            np.testing.assert_allclose(outputs[2], c_nt[d].detach().numpy(), **TORCH_TOL)
            upstream.append(dc_n[d])
        g = backward(cell, cache, upstream)
        dx += g.dx
        np.testing.assert_allclose(g.dh0, h0t.grad[d].numpy(), **TORCH_TOL, err_msg="dh0")
        if is_lstm:
            np.testing.assert_allclose(g.dc0, c0t.grad[d].numpy(), **TORCH_TOL, err_msg="dc0")
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
            if name in a:
                want = getattr(m, f"{name}_l0" + ("_reverse" if d else "")).grad.numpy()
                np.testing.assert_allclose(grad_of(g, name), want, **TORCH_TOL, err_msg=name)
            elif name != "weight_hr" or is_lstm:
                assert grad_of(g, name) is None, name
    np.testing.assert_allclose(dx, xt.grad.numpy(), **TORCH_TOL, err_msg="dx")


# ---- lengths and reverse, without torch --------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
def test_full_lengths_equal_no_lengths(cell):
    rng = np.random.default_rng(1)
    T, B, I, H, P = 5, 3, 4, 6, 2
    a = make_problem(cell, T, B, I, H, P, rng)
    for reverse in (False, True):
        out1, cache1 = forward(cell, a, None, reverse)
        out2, cache2 = forward(cell, a, np.full(B, T), reverse)
        upstream = [rng.standard_normal(o.shape) for o in out1]
        for u, v in zip(out1, out2):
            np.testing.assert_array_equal(u, v)
        for u, v in zip(backward(cell, cache1, upstream), backward(cell, cache2, upstream)):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("cell", CELLS)
def test_padding_is_ignored(cell):
    """y is zero past each length, a length-0 row keeps h0, and the padding of x never enters
    any result (NaN there changes nothing)."""
    rng = np.random.default_rng(2)
    T, B, I, H, P = 5, 4, 3, 4, 3
    a = make_problem(cell, T, B, I, H, P, rng)
    lengths = np.array([3, 0, 5, 1])
    valid = np.arange(T)[:, None] < lengths
    for reverse in (False, True):
        out, cache = forward(cell, a, lengths, reverse)
        upstream = [rng.standard_normal(o.shape) for o in out]
        g = backward(cell, cache, upstream)
        assert not np.any(out[0][~valid])
        np.testing.assert_array_equal(out[1][1], a["h0"][1])
        np.testing.assert_array_equal(g.dh0[1], upstream[1][1])
        assert not np.any(g.dx[~valid])

        noisy = dict(a, x=np.where(valid[:, :, None], a["x"], np.nan))
        out_n, cache_n = forward(cell, noisy, lengths, reverse)
        for u, v in zip(out, out_n):
            np.testing.assert_array_equal(u, v)
        for u, v in zip(g, backward(cell, cache_n, upstream)):
            np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("cell", CELLS)
def test_reverse_equals_forward_on_reversed_sequences(cell):
    rng = np.random.default_rng(3)
    T, B, I, H, P = 6, 4, 3, 5, 2
    a = make_problem(cell, T, B, I, H, P, rng)
    lengths = np.array([6, 2, 0, 4])
    t = np.arange(T)[:, None]
    # flip[t, b]: position t of sequence b read backwards within its length (padding in place)
    flip = np.where(t < lengths, lengths - 1 - t, t)
    cols = np.arange(B)
    out_rev, _ = forward(cell, a, lengths, reverse=True)
    out_fwd, _ = forward(cell, dict(a, x=a["x"][flip, cols]), lengths, reverse=False)
    np.testing.assert_allclose(out_rev[0], out_fwd[0][flip, cols], rtol=1e-13, atol=1e-15)
    for u, v in zip(out_rev[1:], out_fwd[1:]):
        np.testing.assert_allclose(u, v, rtol=1e-13, atol=1e-15)


# ---- dtypes, sizes, steps -----------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_float32_in_float32_out(cell, with_lengths):
    rng = np.random.default_rng(4)
    T, B, I, H, P = 5, 3, 4, 7, 3
    a64 = make_problem(cell, T, B, I, H, P, rng)
    a32 = {k: v.astype(np.float32) for k, v in a64.items()}
    lengths = np.array([5, 0, 2]) if with_lengths else None
    out32, cache32 = forward(cell, a32, lengths)
    out64, cache64 = forward(cell, {k: v.astype(np.float64) for k, v in a32.items()}, lengths)
    upstream = [rng.standard_normal(o.shape) for o in out64]
    g32 = backward(cell, cache32, [u.astype(np.float32) for u in upstream])
    g64 = backward(cell, cache64, upstream)
    for o32, o64 in zip(out32, out64):
        assert o32.dtype == np.float32
        np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-5)
    for name in a64:
        assert grad_of(g32, name).dtype == np.float32, name
        np.testing.assert_allclose(grad_of(g32, name), grad_of(g64, name), rtol=1e-3, atol=1e-4)
    # Only x decides the dtype: float64 weights are cast to it.
    out_mixed, _ = forward(cell, dict(a64, x=a32["x"]), lengths)
    assert all(o.dtype == np.float32 for o in out_mixed)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I", [(0, 3, 2), (4, 0, 2), (3, 2, 0)])
def test_zero_sizes(cell, T, B, I):
    rng = np.random.default_rng(5)
    H, P = 4, 2
    a = make_problem(cell, T, B, I, H, P, rng)
    out, cache = forward(cell, a, np.full(B, T) if B else None)
    upstream = [rng.standard_normal(o.shape) for o in out]
    g = backward(cell, cache, upstream)
    for name in a:
        assert grad_of(g, name).shape == a[name].shape, name
    if T == 0:
        np.testing.assert_array_equal(out[1], a["h0"])
        np.testing.assert_array_equal(g.dh0, upstream[1])
        assert not np.any(g.dweight_ih)


@pytest.mark.parametrize("cell", CELLS)
def test_defaults_are_zero_state_and_zero_upstream(cell):
    rng = np.random.default_rng(6)
    a = make_problem(cell, 4, 2, 3, 5, 2, rng)
    zeros = dict(a, h0=np.zeros_like(a["h0"]))
    if "c0" in a:
        zeros["c0"] = np.zeros_like(a["c0"])
    out, cache = forward(cell, zeros)
    weights = [a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"]]
    if cell.startswith("lstm"):
        y, h_n, c_n, cache2 = ref.lstm_forward(a["x"], *weights, weight_hr=a.get("weight_hr"))
        g = ref.lstm_backward(cache2)
    elif cell == "gru":
        y, h_n, cache2 = ref.gru_forward(a["x"], *weights)
        g = ref.gru_backward(cache2)
    else:
        y, h_n, cache2 = ref.rnn_forward(a["x"], *weights, nonlinearity=cell[4:])
        g = ref.rnn_backward(cache2)
    np.testing.assert_array_equal(y, out[0])
    np.testing.assert_array_equal(h_n, out[1])
    assert all(not np.any(v) for v in g if v is not None)
    # the cache may be used again, and backward does not write into it
    upstream = [rng.standard_normal(o.shape) for o in out]
    g1, g2 = backward(cell, cache, upstream), backward(cell, cache, upstream)
    for u, v in zip(g1, g2):
        if u is not None:
            np.testing.assert_array_equal(u, v)


def test_lstm_bias_gradients_equal():
    rng = np.random.default_rng(8)
    a = make_problem("lstm", 3, 2, 3, 4, 0, rng)
    out, cache = forward("lstm", a)
    g = backward("lstm", cache, [rng.standard_normal(o.shape) for o in out])
    np.testing.assert_array_equal(g.dbias_ih, g.dbias_hh)
    assert g.dbias_ih is not g.dbias_hh


@pytest.mark.parametrize("cell", CELLS)
def test_step_equals_one_step_of_forward(cell):
    rng = np.random.default_rng(9)
    a = make_problem(cell, 1, 3, 4, 5, 2, rng)
    out, _ = forward(cell, a)
    w = [a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"]]
    if cell.startswith("lstm"):
        h, c = ref.lstm_step(a["x"][0], a["h0"], a["c0"], *w, weight_hr=a.get("weight_hr"))
        np.testing.assert_array_equal(c, out[2])
    elif cell == "gru":
        h = ref.gru_step(a["x"][0], a["h0"], *w)
    else:
        h = ref.rnn_step(a["x"][0], a["h0"], *w, nonlinearity=cell[4:])
    np.testing.assert_array_equal(h, out[1])
    np.testing.assert_array_equal(h, out[0][0])


def test_sigmoid_is_stable():
    z = np.array([-1e4, -800.0, -30.0, 0.0, 30.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = ref.sigmoid(z)
        s32 = ref.sigmoid(z.astype(np.float32))
    assert s32.dtype == np.float32
    want = [0.0, 0.0, np.exp(-30) / (1 + np.exp(-30)), 0.5, 1 / (1 + np.exp(-30)), 1.0, 1.0]
    np.testing.assert_allclose(s, want, rtol=1e-15, atol=0)
    np.testing.assert_allclose(s32, want, rtol=1e-6, atol=0)


# ---- FLOP model and initialisation ---------------------------------------------------------


def test_flops():
    assert ref.lstm_flops(100, 32, 256, 256) == 2 * 100 * 32 * 512 * 4 * 256
    assert ref.lstm_flops(100, 32, 256, 256, training=True) == 3 * ref.lstm_flops(100, 32, 256, 256)
    assert ref.gru_flops(5, 3, 7, 11) == 2 * 5 * 3 * 18 * 33
    assert ref.rnn_flops(5, 3, 7, 11, training=True) == 3 * 2 * 5 * 3 * 18 * 11
    assert isinstance(ref.lstm_flops(1, 1, 1, 1), int)


@pytest.mark.parametrize(
    "init,G", [(ref.init_lstm_weights, 4), (ref.init_gru_weights, 3), (ref.init_rnn_weights, 1)]
)
def test_init_weights(init, G):
    I, H = 7, 16
    w = init(I, H, seed=3)
    assert list(w) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    assert w["weight_ih"].shape == (G * H, I) and w["weight_hh"].shape == (G * H, H)
    assert w["bias_ih"].shape == (G * H,) and w["bias_hh"].shape == (G * H,)
    for v in w.values():
        assert v.dtype == np.float32 and np.all(np.abs(v) <= 1 / np.sqrt(H))
    again = init(I, H, seed=3)
    assert all(np.array_equal(w[k], again[k]) for k in w)
    w64 = init(I, H, seed=3, dtype=np.float64)
    assert w64["weight_ih"].dtype == np.float64
    np.testing.assert_array_equal(w64["weight_ih"].astype(np.float32), w["weight_ih"])
    nobias = init(I, H, seed=3, bias=False)
    assert nobias["bias_ih"] is None and nobias["bias_hh"] is None


def test_init_lstm_weights_with_projection():
    w = ref.init_lstm_weights(5, 8, seed=0, proj_size=3, dtype=np.float64)
    assert w["weight_hh"].shape == (32, 3) and w["weight_hr"].shape == (3, 8)
    x = np.ones((2, 4, 5))
    y, h_n, c_n, _ = ref.lstm_forward(x, **w)
    assert y.shape == (2, 4, 3) and h_n.shape == (4, 3) and c_n.shape == (4, 8)


# ---- obviously inconsistent arguments -------------------------------------------------------


def test_inconsistent_shapes_raise():
    rng = np.random.default_rng(0)
    w = ref.init_lstm_weights(3, 4, seed=0)
    x = rng.standard_normal((5, 2, 3))
    ref.lstm_forward(x, **w)  # fine
    bad = [
        dict(x=x[0]),  # rank 2
        dict(x=x[..., :2]),  # I does not match weight_ih
        dict(weight_ih=w["weight_ih"][:15]),  # not 4H rows
        dict(weight_hh=w["weight_hh"][:, :3]),
        dict(bias_ih=w["bias_ih"][:5]),
        dict(h0=np.zeros((3, 4))),
        dict(c0=np.zeros((2, 5))),
        dict(lengths=[5, 6]),  # > T
        dict(lengths=[5, -1]),
        dict(lengths=[5]),
        dict(lengths=[2.0, 3.0]),
        dict(weight_hr=np.zeros((2, 3))),  # (P, H) with the wrong H
    ]
    for kwargs in bad:
        args = dict(x=x, **w)
        args.update(kwargs)
        with pytest.raises(ValueError):
            ref.lstm_forward(**args)
    gw = ref.init_gru_weights(3, 4)
    with pytest.raises(ValueError):
        ref.gru_forward(x, gw["weight_ih"], gw["weight_hh"][:, :3])
    rw = ref.init_rnn_weights(3, 4)
    with pytest.raises(ValueError):
        ref.rnn_forward(x, rw["weight_ih"], rw["weight_hh"], nonlinearity="sigmoid")
    _, _, _, cache = ref.lstm_forward(x, **w)
    with pytest.raises(ValueError):
        ref.lstm_backward(cache, np.zeros((5, 2, 3)))
