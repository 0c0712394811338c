"""The LSTM with projection (proj_size) in the C++ core: parity with the float64 NumPy reference on
every ISA, bitwise determinism across thread counts and schedules, variable lengths, parity with
torch.nn.LSTM(proj_size=...), the layer on the core path, and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, ops, reference

FWD_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
GRAD_NAMES = ("dx", "dh0", "dc0", "dweight_ih", "dweight_hh", "dbias_ih", "dbias_hh", "dweight_hr")


def f32(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def make_problem(rng, T, B, I, H, P, *, bias=True, state=True):
    """Float64 arrays already rounded to float32, so both sides see the same numbers."""
    s = 1.0 / np.sqrt(H)
    w = {
        "weight_ih": rng.uniform(-s, s, (4 * H, I)),
        "weight_hh": rng.uniform(-s, s, (4 * H, P)),
        "bias_ih": rng.uniform(-s, s, 4 * H) if bias else None,
        "bias_hh": rng.uniform(-s, s, 4 * H) if bias else None,
        "weight_hr": rng.uniform(-s, s, (P, H)),
    }
    w = {k: None if v is None else f32(v).astype(np.float64) for k, v in w.items()}
    x = f32(rng.standard_normal((T, B, I))).astype(np.float64)
    h0 = f32(rng.standard_normal((B, P)) * 0.5).astype(np.float64) if state else None
    c0 = f32(rng.standard_normal((B, H)) * 0.5).astype(np.float64) if state else None
    return x, w, h0, c0


def ours(x, w, h0, c0, dy, dhn, dcn, batch_sizes=None):
    y, hn, cn, cache = ops.lstm_forward(
        f32(x),
        f32(w["weight_ih"]),
        f32(w["weight_hh"]),
        f32(w["bias_ih"]),
        f32(w["bias_hh"]),
        f32(h0),
        f32(c0),
        training=True,
        batch_sizes=batch_sizes,
        weight_hr=f32(w["weight_hr"]),
    )
    g = ops.lstm_backward(cache, f32(dy), f32(dhn), f32(dcn))
    return y, hn, cn, g


def theirs(x, w, h0, c0, dy, dhn, dcn, lengths=None):
    ry, rhn, rcn, rc = reference.lstm_forward(
        x,
        w["weight_ih"],
        w["weight_hh"],
        w["bias_ih"],
        w["bias_hh"],
        h0,
        c0,
        weight_hr=w["weight_hr"],
        lengths=lengths,
    )
    return ry, rhn, rcn, reference.lstm_backward(rc, dy, dhn, dcn)


def assert_matches(a, b, bias=True, valid=None):
    (y, hn, cn, g), (ry, rhn, rcn, rg) = a, b
    np.testing.assert_allclose(y, ry, **FWD_TOL, err_msg="y")
    np.testing.assert_allclose(hn, rhn, **FWD_TOL, err_msg="h_n")
    np.testing.assert_allclose(cn, rcn, **FWD_TOL, err_msg="c_n")
    for name in GRAD_NAMES:
        if not bias and name.startswith("dbias"):
            assert getattr(g, name) is None
            continue
        got, want = getattr(g, name), getattr(rg, name)
        if name == "dx" and valid is not None:
            assert not np.any(got[~valid]), "dx on padding"
            got, want = got[valid], want[valid]
        np.testing.assert_allclose(got, want, **GRAD_TOL, err_msg=name)


def upstream(rng, T, B, H, P):
    # Random upstream gradients on y, h_n and c_n (never all ones).
    return rng.standard_normal((T, B, P)), rng.standard_normal((B, P)), rng.standard_normal((B, H))


# (H, P): P < H; sizes that hit SIMD tails (1, 7, 17, 33) on both sides.
HP = [(h, p) for h, p in itertools.product([7, 17, 33, 40], [1, 7, 17, 33]) if p < h]
GRID = [(T, B, H, P) for T, B, (H, P) in itertools.product([1, 5], [1, 3, 17], HP)]


@pytest.mark.parametrize("T,B,H,P", GRID)
def test_matches_reference(isa, T, B, H, P):
    rng = np.random.default_rng(hash((T, B, H, P)) % 2**32)
    I = 1 + (T * B + H) % 19
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    dy, dhn, dcn = upstream(rng, T, B, H, P)
    assert_matches(ours(x, w, h0, c0, dy, dhn, dcn), theirs(x, w, h0, c0, dy, dhn, dcn))


@pytest.mark.parametrize(
    "T,B,I,H,P",
    [
        (33, 16, 24, 64, 31),
        (40, 3, 5, 130, 48),
        (20, 1, 9, 33, 7),
        (1, 3, 9, 256, 65),
        (4, 1, 5, 130, 129),
    ],
)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_longer_sequences_match_reference(isa, threads, T, B, I, H, P, nthreads):
    lstm_fast.set_num_threads(nthreads)
    rng = np.random.default_rng(T + B + H)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    dy, dhn, dcn = upstream(rng, T, B, H, P)
    assert_matches(ours(x, w, h0, c0, dy, dhn, dcn), theirs(x, w, h0, c0, dy, dhn, dcn))


@pytest.mark.parametrize("bias,state", [(False, True), (True, False), (False, False)])
def test_no_bias_no_state(isa, bias, state):
    rng = np.random.default_rng(7)
    T, B, I, H, P = 4, 5, 6, 17, 7
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P, bias=bias, state=state)
    dy, dhn, dcn = upstream(rng, T, B, H, P)
    assert_matches(ours(x, w, h0, c0, dy, dhn, dcn), theirs(x, w, h0, c0, dy, dhn, dcn), bias=bias)


def test_none_upstream_is_zero_and_inference_equals_training():
    rng = np.random.default_rng(8)
    T, B, I, H, P = 6, 4, 5, 9, 4
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    args = [f32(a) for a in (x, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"], h0, c0)]
    y, hn, cn, cache = ops.lstm_forward(*args, training=True, weight_hr=f32(w["weight_hr"]))
    yi, hni, cni, none = ops.lstm_forward(*args, weight_hr=f32(w["weight_hr"]))
    assert none is None and isinstance(cache, ops.LSTMProjCache)
    assert y.shape == (T, B, P) and hn.shape == (B, P) and cn.shape == (B, H)
    for a, b in ((y, yi), (hn, hni), (cn, cni)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y[-1], hn)
    g0 = ops.lstm_backward(cache)
    assert all(not np.any(a) for a in g0 if a is not None) and not np.any(g0.dweight_hr)
    g1 = ops.lstm_backward(cache, np.zeros_like(y), np.zeros_like(hn), np.zeros_like(cn))
    for name in GRAD_NAMES:
        np.testing.assert_array_equal(getattr(g0, name), getattr(g1, name))
    assert cache.shape == (T, B, I, H, P) and cache.m.shape == (T, B, H)
    assert "P=4" in repr(cache) and cache.nbytes > 0


def test_lstm_grads_keeps_seven_elements():
    rng = np.random.default_rng(9)
    x, w, h0, c0 = make_problem(rng, 3, 2, 4, 6, 3)
    *_, g = ours(x, w, h0, c0, *upstream(rng, 3, 2, 6, 3))
    dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = g  # positional unpacking as before
    assert len(g) == 7 and g.dweight_hr.shape == (3, 6)
    assert g._replace(dx=None).dweight_hr is g.dweight_hr
    plain = ops.lstm_backward(
        ops.lstm_forward(f32(x), f32(np.zeros((24, 4))), f32(np.zeros((24, 6))), training=True)[3]
    )
    assert len(plain) == 7 and plain.dweight_hr is None


def test_zero_sizes():
    rng = np.random.default_rng(10)
    H, P, I = 5, 2, 3
    _, w, _, _ = make_problem(rng, 1, 1, I, H, P)
    w32 = {k: f32(v) for k, v in w.items()}
    for T, B in [(0, 3), (4, 0), (0, 0)]:
        x = np.zeros((T, B, I), np.float32)
        h0, c0 = np.ones((B, P), np.float32), np.full((B, H), 2.0, np.float32)
        y, hn, cn, cache = ops.lstm_forward(x, **w32, h0=h0, c0=c0, training=True)
        assert y.shape == (T, B, P) and hn.shape == (B, P) and cn.shape == (B, H)
        np.testing.assert_array_equal(hn, h0)
        np.testing.assert_array_equal(cn, c0)
        g = ops.lstm_backward(cache, None, np.full((B, P), 3.0, np.float32))
        assert g.dx.shape == (T, B, I) and g.dweight_hr.shape == (P, H)
        np.testing.assert_array_equal(g.dh0, np.full((B, P), 3.0))


# ---- variable lengths -------------------------------------------------------------------------


def sorted_lengths(rng, T, B):
    lengths = rng.integers(1, T + 1, B)
    lengths[0] = T
    if B > 2:
        lengths[-1] = 0
    return np.sort(lengths)[::-1].copy()


@pytest.mark.parametrize(
    "T,B,I,H,P", [(7, 5, 3, 9, 4), (12, 17, 17, 33, 17), (3, 3, 5, 7, 1), (2, 2, 4, 8, 7)]
)
def test_batch_sizes_match_reference_lengths(isa, T, B, I, H, P):
    rng = np.random.default_rng(T * B + H + P)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    lengths = sorted_lengths(rng, T, B)
    bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    xs = f32(x)
    for t in range(T):  # the padding must never be read
        xs[t, bs[t] :] = np.nan
    dy, dhn, dcn = upstream(rng, T, B, H, P)
    valid = lengths[None, :] > np.arange(T)[:, None]
    got = ours(xs, w, h0, c0, dy, dhn, dcn, batch_sizes=bs)
    assert not np.any(got[0][~valid]), "y on padding"
    assert_matches(got, theirs(x, w, h0, c0, dy, dhn, dcn, lengths=lengths), valid=valid)
    w32 = [f32(w[k]) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    yi, hni, cni, _ = ops.lstm_forward(
        xs, *w32, f32(h0), f32(c0), batch_sizes=bs, weight_hr=f32(w["weight_hr"])
    )
    for a, b in zip((yi, hni, cni), got[:3]):
        np.testing.assert_array_equal(a, b)


# ---- determinism ------------------------------------------------------------------------------

RUNS = [
    (1, "auto"),
    (2, "auto"),
    (2, "units"),
    (2, "batch"),
    (2, "serial"),
    (3, "units"),
    (3, "batch"),
]


BITWISE_SHAPES = [(9, 16, 33, 64, 33), (5, 3, 17, 130, 17), (12, 1, 5, 40, 7), (4, 40, 8, 7, 1)]
BITWISE_SHAPES += [(2, 2, 9, 70, 33), (11, 24, 7, 40, 17)]
# T * B <= 4 (no packing) with weights large enough to split the step over threads.
BITWISE_SHAPES += [(1, 3, 9, 256, 65), (4, 1, 5, 130, 129)]


@pytest.mark.parametrize(
    "T,B,I,H,P,with_lengths",
    [(*shape, wl) for shape, wl in itertools.product(BITWISE_SHAPES, [False, True])],
)
def test_bitwise_identical_across_threads_and_schedules(
    isa, threads, schedule, T, B, I, H, P, with_lengths
):
    rng = np.random.default_rng(3)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    bs = None
    if with_lengths:
        lengths = sorted_lengths(rng, T, B)
        bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    dy, dhn, dcn = upstream(rng, T, B, H, P)
    results = []
    for n, sched in RUNS:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        y, hn, cn, g = ours(x, w, h0, c0, dy, dhn, dcn, batch_sizes=bs)
        yi = ops.lstm_forward(
            f32(x),
            *(f32(w[k]) for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
            f32(h0),
            f32(c0),
            batch_sizes=bs,
            weight_hr=f32(w["weight_hr"]),
        )[0]
        results.append((n, sched, [y, hn, cn, yi, *g, g.dweight_hr]))
    base = results[0][2]
    for n, sched, arrays in results[1:]:
        for a, b in zip(base, arrays):
            assert a.tobytes() == b.tobytes(), f"threads={n} schedule={sched} differs"


def test_schedule_choice():
    # The benchmark shape runs batch-parallel; tiny steps stay serial; one row goes by units.
    assert _core._proj_choose_schedule(100, 32, 256, 256, 128, 2) == "batch"
    assert _core._proj_choose_schedule(5, 2, 3, 7, 3, 2) == "serial"
    assert _core._proj_choose_schedule(5, 1, 64, 512, 256, 2) == "units"
    assert _core._proj_choose_schedule(5, 64, 64, 512, 256, 1) == "serial"


# ---- torch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("T,B,I,H,P", [(6, 4, 5, 17, 7), (1, 1, 3, 33, 1), (5, 17, 7, 40, 33)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_matches_torch(T, B, I, H, P, bias):
    torch = pytest.importorskip("torch")
    torch.manual_seed(T + H)
    m = torch.nn.LSTM(I, H, proj_size=P, bias=bias)
    rng = np.random.default_rng(11)
    x = f32(rng.standard_normal((T, B, I)))
    h0, c0 = f32(rng.standard_normal((B, P)) * 0.5), f32(rng.standard_normal((B, H)) * 0.5)
    dy, dhn, dcn = (f32(a) for a in upstream(rng, T, B, H, P))
    p = {k: v.detach().numpy().copy() for k, v in m.named_parameters()}
    y, hn, cn, cache = ops.lstm_forward(
        x,
        p["weight_ih_l0"],
        p["weight_hh_l0"],
        p.get("bias_ih_l0"),
        p.get("bias_hh_l0"),
        h0,
        c0,
        training=True,
        weight_hr=p["weight_hr_l0"],
    )
    g = ops.lstm_backward(cache, dy, dhn, dcn)

    xt = torch.tensor(x, requires_grad=True)
    h0t, c0t = (
        torch.tensor(h0[None], requires_grad=True),
        torch.tensor(c0[None], requires_grad=True),
    )
    yt, (hnt, cnt) = m(xt, (h0t, c0t))
    loss = (yt * torch.from_numpy(dy)).sum() + (hnt[0] * torch.from_numpy(dhn)).sum()
    loss = loss + (cnt[0] * torch.from_numpy(dcn)).sum()
    loss.backward()
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hn, hnt[0].detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cn, cnt[0].detach().numpy(), rtol=1e-5, atol=1e-5)
    pairs = [
        (g.dx, xt.grad),
        (g.dh0, h0t.grad[0]),
        (g.dc0, c0t.grad[0]),
        (g.dweight_ih, m.weight_ih_l0.grad),
        (g.dweight_hh, m.weight_hh_l0.grad),
        (g.dweight_hr, m.weight_hr_l0.grad),
    ]
    if bias:
        pairs += [(g.dbias_ih, m.bias_ih_l0.grad), (g.dbias_hh, m.bias_hh_l0.grad)]
    for a, b in pairs:
        b = b.numpy()
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(b).max()))


# ---- the layer runs the core, not the reference -------------------------------------------------


@pytest.mark.parametrize("bi,use_len", [(False, False), (True, True)])
def test_layer_uses_the_core(monkeypatch, bi, use_len):
    def forbidden(*a, **k):
        raise AssertionError("the proj_size layer called the NumPy reference")

    monkeypatch.setattr(reference, "lstm_forward", forbidden)
    monkeypatch.setattr(reference, "lstm_backward", forbidden)
    layer = lstm_fast.LSTM(5, 9, num_layers=2, proj_size=4, bidirectional=bi, seed=0)
    layer.train()
    rng = np.random.default_rng(12)
    x = f32(rng.standard_normal((6, 3, 5)))
    lengths = np.array([6, 2, 4]) if use_len else None
    y, (hn, cn) = layer(x, lengths=lengths)
    D = 2 if bi else 1
    assert y.shape == (6, 3, D * 4) and hn.shape == (2 * D, 3, 4) and cn.shape == (2 * D, 3, 9)
    dx, (dh0, dc0) = layer.backward(f32(rng.standard_normal(y.shape)))
    assert dx.shape == x.shape and dh0.shape == hn.shape and dc0.shape == cn.shape
    before = layer.weight_hr_l0.grad.copy()
    assert np.any(before)
    layer.backward(f32(np.zeros(y.shape)))  # accumulates: zero upstream adds nothing
    np.testing.assert_array_equal(layer.weight_hr_l0.grad, before)


def test_backward_accumulates_into_given_gradients():
    rng = np.random.default_rng(13)
    T, B, I, H, P = 4, 3, 5, 9, 4
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    dy, dhn, dcn = (f32(a) for a in upstream(rng, T, B, H, P))
    w32 = {k: f32(v) for k, v in w.items()}
    _, _, _, cache = ops.lstm_forward(f32(x), **w32, h0=f32(h0), c0=f32(c0), training=True)
    g = ops.lstm_backward(cache, dy, dhn, dcn)
    acc = [np.ones_like(a) for a in (g.dweight_ih, g.dweight_hh, g.dbias_ih, g.dbias_hh)]
    acc_hr = np.ones_like(g.dweight_hr)
    _core.lstm_proj_backward(cache, dy, dhn, dcn, *acc, acc_hr)
    for a, b in zip(
        acc + [acc_hr], (g.dweight_ih, g.dweight_hh, g.dbias_ih, g.dbias_hh, g.dweight_hr)
    ):
        np.testing.assert_allclose(a, b + 1, rtol=1e-6, atol=1e-6)


# ---- the reference: float64 finite differences with projection and lengths -----------------------


def test_reference_gradients_match_finite_differences():
    rng = np.random.default_rng(14)
    T, B, I, H, P = 4, 3, 2, 5, 2
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    lengths = np.array([4, 0, 2])
    dy, dhn, dcn = upstream(rng, T, B, H, P)

    def loss(x_, w_, h0_, c0_):
        y, hn, cn, _ = reference.lstm_forward(
            x_,
            **{k: v for k, v in w_.items() if k != "weight_hr"},
            h0=h0_,
            c0=c0_,
            weight_hr=w_["weight_hr"],
            lengths=lengths,
        )
        return np.sum(y * dy) + np.sum(hn * dhn) + np.sum(cn * dcn)

    _, _, _, cache = reference.lstm_forward(
        x,
        **{k: v for k, v in w.items() if k != "weight_hr"},
        h0=h0,
        c0=c0,
        weight_hr=w["weight_hr"],
        lengths=lengths,
    )
    g = reference.lstm_backward(cache, dy, dhn, dcn)
    eps = 1e-6
    checks = [("weight_hr", g.dweight_hr), ("weight_hh", g.dweight_hh), ("weight_ih", g.dweight_ih)]
    for name, grad in checks:
        for idx in itertools.islice(np.ndindex(grad.shape), 0, None, 3):
            wp = {k: (None if v is None else v.copy()) for k, v in w.items()}
            wm = {k: (None if v is None else v.copy()) for k, v in w.items()}
            wp[name][idx] += eps
            wm[name][idx] -= eps
            fd = (loss(x, wp, h0, c0) - loss(x, wm, h0, c0)) / (2 * eps)
            assert abs(fd - grad[idx]) < 1e-6 * max(1.0, abs(fd)), (name, idx)
    for arr, grad in ((h0, g.dh0), (c0, g.dc0)):
        for idx in np.ndindex(arr.shape):
            ap, am = arr.copy(), arr.copy()
            ap[idx] += eps
            am[idx] -= eps
            args_p = (ap, c0) if arr is h0 else (h0, ap)
            args_m = (am, c0) if arr is h0 else (h0, am)
            fd = (loss(x, w, *args_p) - loss(x, w, *args_m)) / (2 * eps)
            assert abs(fd - grad[idx]) < 1e-6 * max(1.0, abs(fd))


# ---- bad input --------------------------------------------------------------------------------


def good_args(T=3, B=2, I=4, H=5, P=3):
    rng = np.random.default_rng(15)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    return dict(
        x=f32(x),
        weight_ih=f32(w["weight_ih"]),
        weight_hh=f32(w["weight_hh"]),
        bias_ih=f32(w["bias_ih"]),
        bias_hh=f32(w["bias_hh"]),
        h0=f32(h0),
        c0=f32(c0),
        weight_hr=f32(w["weight_hr"]),
    )


@pytest.mark.parametrize(
    "name,value,exc,match",
    [
        (
            "weight_hr",
            np.zeros((3, 6), np.float32),
            ValueError,
            r"weight_hr: expected shape \(P=3, H=5\), got \(3, 6\)",
        ),
        (
            "weight_hr",
            np.zeros((2, 5), np.float32),
            ValueError,
            r"weight_hr: expected shape \(P=3, H=5\), got \(2, 5\)",
        ),
        (
            "weight_hr",
            np.zeros((3, 5), np.float64),
            TypeError,
            r"weight_hr: expected dtype float32, got float64",
        ),
        (
            "weight_hr",
            np.zeros((3, 5, 1), np.float32),
            ValueError,
            r"weight_hr: expected 2 dimensions \(P, H\)",
        ),
        (
            "weight_hr",
            np.zeros((5, 3), np.float32).T,
            ValueError,
            r"weight_hr: expected a C-contiguous array",
        ),
        ("weight_hr", [[0.0] * 5] * 3, TypeError, r"weight_hr: expected a numpy.ndarray"),
        (
            "h0",
            np.zeros((2, 5), np.float32),
            ValueError,
            r"h0: expected shape \(B=2, P=3\), got \(2, 5\)",
        ),
        (
            "c0",
            np.zeros((2, 3), np.float32),
            ValueError,
            r"c0: expected shape \(B=2, H=5\), got \(2, 3\)",
        ),
        (
            "weight_ih",
            np.zeros((20, 3), np.float32),
            ValueError,
            r"weight_ih: expected shape \(4H=20, I=4\), got \(20, 3\)",
        ),
        ("weight_hh", np.zeros((18, 3), np.float32), ValueError, r"weight_hh: expected shape"),
        (
            "bias_ih",
            np.zeros(19, np.float32),
            ValueError,
            r"bias_ih: expected shape \(4H=20,\), got \(19,\)",
        ),
    ],
)
def test_bad_arguments(name, value, exc, match):
    a = good_args()
    a[name] = value
    with pytest.raises(exc, match=match):
        ops.lstm_forward(**a)


@pytest.mark.parametrize("P", [5, 6])
def test_projection_not_smaller_than_hidden(P):
    a = good_args()
    H = 5
    a["weight_hh"] = np.zeros((4 * H, P), np.float32)
    a["weight_hr"] = np.zeros((P, H), np.float32)
    a["h0"] = np.zeros((2, P), np.float32)
    with pytest.raises(
        ValueError, match=rf"weight_hr: expected a projection size 0 < P < H, got shape \({P}, 5\)"
    ):
        ops.lstm_forward(**a)


def test_bad_backward_arguments():
    a = good_args()
    y, hn, cn, cache = ops.lstm_forward(**a, training=True)
    with pytest.raises(ValueError, match=r"dy: expected shape \(T=3, B=2, P=3\), got \(3, 2, 5\)"):
        ops.lstm_backward(cache, np.zeros((3, 2, 5), np.float32))
    with pytest.raises(ValueError, match=r"dh_n: expected shape \(B=2, P=3\), got \(2, 5\)"):
        ops.lstm_backward(cache, y, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"dc_n: expected shape \(B=2, H=5\), got \(2, 3\)"):
        ops.lstm_backward(cache, y, hn, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"dweight_hr: expected shape \(P=3, H=5\), got \(5, 3\)"):
        _core.lstm_proj_backward(
            cache, y, hn, cn, None, None, None, None, np.zeros((5, 3), np.float32)
        )
    with pytest.raises(TypeError, match="cache: expected the LSTMProjCache"):
        _core.lstm_proj_backward(object(), y, hn, cn)
    plain = ops.lstm_forward(
        a["x"], np.zeros((20, 4), np.float32), np.zeros((20, 5), np.float32), training=True
    )[3]
    with pytest.raises(TypeError, match="cache: expected the LSTMProjCache"):
        _core.lstm_proj_backward(plain, y, hn, cn)
    g = ops.lstm_backward(cache, y)  # still usable after the errors
    assert g.dweight_hr.shape == (3, 5)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_inference_in_chunks_equals_training(threads, with_lengths):
    # 128 rows x 4H = 1024, 37 steps (over 2^20 floats): the inference input projection runs
    # in chunks of 4 steps.
    rng = np.random.default_rng(16)
    T, B, I, H, P = 37, 128, 8, 256, 96
    x, w, h0, c0 = make_problem(rng, T, B, I, H, P)
    bs = None
    if with_lengths:
        lengths = sorted_lengths(rng, T, B)
        bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    args = [f32(a) for a in (x, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"], h0, c0)]
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        train = ops.lstm_forward(
            *args, training=True, batch_sizes=bs, weight_hr=f32(w["weight_hr"])
        )
        infer = ops.lstm_forward(*args, batch_sizes=bs, weight_hr=f32(w["weight_hr"]))
        for a, b in zip(train[:3], infer[:3]):
            np.testing.assert_array_equal(a, b)
    ry, rhn, rcn, _ = reference.lstm_forward(
        x,
        *(w[k] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
        h0,
        c0,
        weight_hr=w["weight_hr"],
        lengths=None if bs is None else lengths,
    )
    np.testing.assert_allclose(infer[0], ry, **FWD_TOL)
    np.testing.assert_allclose(infer[1], rhn, **FWD_TOL)
    np.testing.assert_allclose(infer[2], rcn, **FWD_TOL)
