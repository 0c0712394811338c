"""The layer family against torch: LSTM/GRU/RNN x layers x directions x batch_first x lengths x
proj_size, forward and backward with random upstream gradients; cells; streaming step."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import lstm_fast

torch = pytest.importorskip("torch")

KINDS = ["LSTM", "GRU", "tanh", "relu"]


def make_pair(kind, I, H, proj=0, **kw):
    if kind == "LSTM":
        return torch.nn.LSTM(I, H, proj_size=proj, **kw), lstm_fast.LSTM(I, H, proj_size=proj, **kw)
    if kind == "GRU":
        return torch.nn.GRU(I, H, **kw), lstm_fast.GRU(I, H, **kw)
    return torch.nn.RNN(I, H, nonlinearity=kind, **kw), lstm_fast.RNN(I, H, nonlinearity=kind, **kw)


CASES = [
    (kind, L, bi, bf, use_len, 0)
    for kind, L, bi, bf, use_len in itertools.product(
        KINDS, [1, 2, 3], [False, True], [False, True], [False, True]
    )
] + [
    ("LSTM", L, bi, bf, use_len, 3)
    for L, bi, bf, use_len in itertools.product(
        [1, 2, 3], [False, True], [False, True], [False, True]
    )
]


@pytest.mark.parametrize("kind,L,bi,bf,use_len,proj", CASES)
def test_parity_with_torch(kind, L, bi, bf, use_len, proj):
    rng = np.random.default_rng(hash((kind, L, bi, bf, use_len, proj)) % 2**32)
    I, H, T, B = 5, 7, 6, 4
    torch.manual_seed(0)
    tm, om = make_pair(kind, I, H, proj, num_layers=L, bidirectional=bi, batch_first=bf)
    om.load_state_dict(tm.state_dict())
    D, P = (2 if bi else 1), (proj or H)
    x = rng.standard_normal((B, T, I) if bf else (T, B, I)).astype(np.float32)
    lengths = rng.permutation(np.array([T, 1, 3, 5])) if use_len else None
    h0 = rng.standard_normal((L * D, B, P)).astype(np.float32)
    c0 = rng.standard_normal((L * D, B, H)).astype(np.float32)
    hx = (h0, c0) if kind == "LSTM" else h0
    y, hn = om(x, hx, lengths=lengths)

    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = torch.tensor(h0, requires_grad=True), torch.tensor(c0, requires_grad=True)
    hxt = (h0t, c0t) if kind == "LSTM" else h0t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if use_len:
            pk = torch.nn.utils.rnn.pack_padded_sequence(
                xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False
            )
            yt, hnt = tm(pk, hxt)
            yt, _ = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=bf, total_length=T)
        else:
            yt, hnt = tm(xt, hxt)
    states = hn if kind == "LSTM" else (hn,)
    tstates = hnt if kind == "LSTM" else (hnt,)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    for a, b in zip(states, tstates):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-5)

    dy = rng.standard_normal(y.shape).astype(np.float32)
    dst = [rng.standard_normal(s.shape).astype(np.float32) for s in states]
    loss = (yt * torch.tensor(dy)).sum()
    for s, d in zip(tstates, dst):
        loss = loss + (s * torch.tensor(d)).sum()
    loss.backward()
    om.zero_grad()
    dx, dstate = om.backward(dy, *dst)
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol, err_msg="dx")
    dh0 = dstate[0] if kind == "LSTM" else dstate
    np.testing.assert_allclose(dh0, h0t.grad.numpy(), **tol, err_msg="dh0")
    if kind == "LSTM":
        np.testing.assert_allclose(dstate[1], c0t.grad.numpy(), **tol, err_msg="dc0")
    for n, p in tm.named_parameters():
        np.testing.assert_allclose(getattr(om, n).grad, p.grad.numpy(), **tol, err_msg=n)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_sequence_in_and_out(kind):
    rng = np.random.default_rng(1)
    tm, om = make_pair(kind, 4, 6, bidirectional=True)
    om.load_state_dict(tm.state_dict())
    x = torch.tensor(rng.standard_normal((5, 3, 4)).astype(np.float32))
    pk = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, 5, 3]), enforce_sorted=False)
    y, h = om(pk)
    with torch.no_grad():
        yt, ht = tm(pk)
    assert isinstance(y, torch.nn.utils.rnn.PackedSequence)
    np.testing.assert_allclose(y.data.numpy(), yt.data.numpy(), rtol=1e-5, atol=1e-5)
    h, ht = (h[0], ht[0]) if kind == "LSTM" else (h, ht)
    np.testing.assert_allclose(h, ht.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_and_no_hx(kind):
    rng = np.random.default_rng(2)
    tm, om = make_pair(kind, 4, 6, num_layers=2)
    om.load_state_dict(tm.state_dict())
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y, h = om(x)
    with torch.no_grad():
        yt, ht = tm(torch.tensor(x))
    np.testing.assert_allclose(y, yt.numpy(), rtol=1e-5, atol=1e-5)
    assert y.shape == (5, 6)
    dx, _ = om.backward(np.ones_like(y) * 0.5)
    assert dx.shape == (5, 4)


def test_lengths_zero_and_padding_never_read():
    gru = lstm_fast.GRU(3, 5, bidirectional=True, seed=0)
    x = np.random.default_rng(3).standard_normal((4, 3, 3)).astype(np.float32)
    lengths = np.array([0, 4, 2])
    x[2:, 2] = np.nan
    x[:, 0] = np.nan
    y, h = gru(x, lengths=lengths)
    assert np.isfinite(y).all() and not y[:, 0].any() and not y[2:, 2].any()
    np.testing.assert_array_equal(h[:, 0], 0)


def test_dropout_is_seeded_and_only_in_training():
    a = lstm_fast.GRU(3, 5, num_layers=2, dropout=0.5, seed=7)
    b = lstm_fast.GRU(3, 5, num_layers=2, dropout=0.5, seed=7)
    x = np.ones((4, 2, 3), np.float32)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    y1 = a.eval()(x)[0]
    y2 = a(x)[0]
    np.testing.assert_array_equal(y1, y2)


def test_constructor_errors():
    with pytest.raises(ValueError, match="proj_size"):
        lstm_fast.GRU(3, 5, proj_size=2)
    with pytest.raises(ValueError, match="nonlinearity"):
        lstm_fast.RNN(3, 5, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size"):
        lstm_fast.LSTM(3, 5, proj_size=5)
    gru = lstm_fast.GRU(3, 5)
    with pytest.raises(ValueError, match=r"lengths: expected values in \[0, T=4\]"):
        gru(np.zeros((4, 2, 3), np.float32), lengths=[5, 1])
    with pytest.raises(TypeError, match="hx"):
        gru(np.zeros((4, 2, 3), np.float32), (np.zeros((1, 2, 5)), np.zeros((1, 2, 5))))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_cells_match_torch(name, unbatched):
    rng = np.random.default_rng(4)
    tc = getattr(torch.nn, name)(5, 7)
    oc = getattr(lstm_fast, name)(5, 7)
    oc.load_state_dict(tc.state_dict())
    shape = (5,) if unbatched else (3, 5)
    hshape = (7,) if unbatched else (3, 7)
    x = rng.standard_normal(shape).astype(np.float32)
    h = rng.standard_normal(hshape).astype(np.float32)
    c = rng.standard_normal(hshape).astype(np.float32)
    lstm = name == "LSTMCell"
    out = oc(x, (h, c) if lstm else h)
    xt = torch.tensor(x, requires_grad=True)
    ht, ct = torch.tensor(h, requires_grad=True), torch.tensor(c, requires_grad=True)
    tout = tc(xt, (ht, ct) if lstm else ht)
    o, to = (out[0], tout[0]) if lstm else (out, tout)
    np.testing.assert_allclose(o, to.detach().numpy(), rtol=1e-5, atol=1e-6)
    dh = rng.standard_normal(o.shape).astype(np.float32)
    loss = (to * torch.tensor(dh)).sum()
    dc = None
    if lstm:
        dc = rng.standard_normal(o.shape).astype(np.float32)
        loss = loss + (tout[1] * torch.tensor(dc)).sum()
    loss.backward()
    dx, dstate = oc.backward(dh, dc)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    dh0 = dstate[0] if lstm else dstate
    np.testing.assert_allclose(dh0, ht.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(oc.weight_hh.grad, tc.weight_hh.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [1, 3])
def test_step_streams_like_the_sequence(isa, kind, B):
    rng = np.random.default_rng(5)
    _, layer = make_pair(kind, 6, 9, num_layers=2)
    layer.eval()
    x = rng.standard_normal((7, B, 6)).astype(np.float32)
    y, _ = layer(x)
    state, out = None, np.empty((B, 9), np.float32)
    for t in range(7):
        y_t, state = layer.step(x[t], state, out=out)
        assert y_t is out
        np.testing.assert_allclose(y_t, y[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_step_fast_and_general_paths_agree(kind):
    """step()'s short path (its own state passed back, a float32 batch, out of y's shape) and
    the general one (state given as copies or as another array, unbatched x, a float64 x,
    check_finite) are the same computation: bitwise the same outputs and states, in any mix,
    and the short path sees weights changed in place and check_finite switched on later."""
    rng = np.random.default_rng(11)
    _, layer = make_pair(kind, 5, 7, num_layers=2)
    layer.eval()
    lstm = kind == "LSTM"
    T, B = 9, 2
    x = rng.standard_normal((T, B, 5)).astype(np.float32)
    y_seq, _ = layer(x)
    y, state = [], None
    for t in range(T):  # the short path throughout
        y_t, state = layer.step(x[t], state)
        y.append(y_t.copy())
    np.testing.assert_allclose(np.stack(y), y_seq, rtol=1e-5, atol=1e-6)

    def copy(st):
        return tuple(a.copy() for a in st) if lstm else st.copy()

    state, out = None, np.empty((B, 7), np.float32)
    for t in range(T):
        how = t % 4
        if how == 0:  # the short path, out given
            y_t, state = layer.step(x[t], state, out=out)
            assert y_t is out
        elif how == 1:  # state copies: the general path copies them in
            y_t, state = layer.step(x[t], copy(state))
        elif how == 2:  # a float64 x is converted
            y_t, state = layer.step(x[t].astype(np.float64), state)
        else:  # the short path without out
            y_t, state = layer.step(x[t], state)
        np.testing.assert_array_equal(y_t, y[t])
    # weights written in place are read by the next short-path call
    layer.weight_hh_l1.data[...] = 0
    layer.bias_hh_l1.data[...] = 0
    y2, _ = layer(x[:2])
    s = None
    for t in range(2):
        y_t, s = layer.step(x[t], s, out=out)
    np.testing.assert_allclose(out, y2[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out, y[1], rtol=1e-3, atol=1e-4)
    # check_finite switched on after the stream exists: a NaN input raises, nothing changes
    layer.check_finite = True
    bad = x[0].copy()
    bad[0, 0] = np.nan
    before = copy(s)
    with pytest.raises(ValueError, match="x_t"):
        layer.step(bad, s, out=out)
    for a, b in zip(before if lstm else (before,), s if lstm else (s,)):
        np.testing.assert_array_equal(a, b)


def test_step_reuses_its_buffers():
    layer = lstm_fast.LSTM(8, 16, seed=0).eval()
    x = np.ones((1, 8), np.float32)
    _, s1 = layer.step(x)
    buf = layer._stream
    h1 = s1[0].copy()
    _, s2 = layer.step(x, s1)
    _, s3 = layer.step(x, s2)
    assert layer._stream is buf
    assert s3[0] is not s2[0] and np.shares_memory(s3[0], buf.h)
    assert not np.array_equal(h1, s3[0])
