"""Numerical guards: NaN/Inf in any input propagate as the float64 reference says (never a crash
or a hang, never silently finite), saturating inputs give exact limits, denormal inputs are fine
and the flush-to-zero mode of the kernels does not leak into the calling thread; the optional
``check_finite=True`` raises instead of propagating."""

from __future__ import annotations

import faulthandler

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, ops
from lstm_fast import reference as ref

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's NaN maths

f32, f64 = np.float32, np.float64
T, B, I, H = 5, 3, 7, 10
NAMES = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0"]


@pytest.fixture(autouse=True)
def no_hang():
    """A hung kernel fails the run with a traceback instead of blocking CI."""
    faulthandler.dump_traceback_later(300, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def args(seed=0, T=T, B=B, I=I, H=H):
    rng = np.random.default_rng(seed)
    r = lambda *s, k=1.0: (rng.standard_normal(s) * k).astype(f32)  # noqa: E731
    return dict(
        x=r(T, B, I),
        weight_ih=r(4 * H, I, k=0.4),
        weight_hh=r(4 * H, H, k=0.4),
        bias_ih=r(4 * H, k=0.4),
        bias_hh=r(4 * H, k=0.4),
        h0=r(B, H),
        c0=r(B, H),
    )


def reference(a, **kw):
    return ref.lstm_forward(*(None if a[n] is None else a[n].astype(f64) for n in NAMES), **kw)


def same_nonfinite(got, want, what):
    """NaN exactly where the reference has NaN, the same infinities, close elsewhere."""
    got = np.asarray(got, f64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what + ": NaN pattern")
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=what + ": Inf pattern")
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-4, atol=1e-5, err_msg=what)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_input_propagates_like_reference(isa, name, value):
    a = args()
    pos = tuple(s // 2 for s in a[name].shape)
    a[name][pos] = value
    y, h_n, c_n, cache = ops.lstm_forward(**a, training=True)
    y_r, h_r, c_r, cache_r = reference(a)
    same_nonfinite(y, y_r, "y")
    same_nonfinite(h_n, h_r, "h_n")
    same_nonfinite(c_n, c_r, "c_n")
    if np.isnan(value):
        assert np.isnan(y).any(), "a NaN input vanished"
    # Backward runs (never crashes or hangs); non-finite exactly where the reference is.
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(f32)
    g = ops.lstm_backward(cache, dy)
    r = ref.lstm_backward(cache_r, dy.astype(f64))
    for nm in ("dx", "dh0", "dc0", "dweight_ih", "dweight_hh", "dbias_ih"):
        got, want = np.asarray(getattr(g, nm), f64), getattr(r, nm)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=nm)


def test_nan_stays_in_its_row(isa):
    """A NaN in x[t, b] poisons row b from step t on, and no other row or earlier step."""
    a = args(2)
    clean = ops.lstm_forward(**a)[0]
    a["x"][2, 1, 3] = np.nan
    y = ops.lstm_forward(**a)[0]
    assert np.isnan(y[2:, 1]).all()
    assert not np.isnan(np.delete(y, 1, axis=1)).any() and not np.isnan(y[:2]).any()
    np.testing.assert_allclose(np.delete(y, 1, axis=1), np.delete(clean, 1, axis=1), rtol=1e-6)


@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
def test_nonfinite_upstream_gradient_propagates(isa, name):
    a = args(3)
    _, _, _, cache = ops.lstm_forward(**a, training=True)
    *_, cache_r = reference(a)
    rng = np.random.default_rng(4)
    up = {"dy": rng.standard_normal((T, B, H)), "dh_n": rng.standard_normal((B, H))}
    up["dc_n"] = rng.standard_normal((B, H))
    up = {k: v.astype(f32) for k, v in up.items()}
    up[name][(0,) * up[name].ndim] = np.nan
    g = ops.lstm_backward(cache, **up)
    r = ref.lstm_backward(cache_r, **{k: v.astype(f64) for k, v in up.items()})
    for nm in ("dx", "dh0", "dweight_hh", "dbias_hh"):
        got, want = getattr(g, nm), getattr(r, nm)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=nm)
        assert np.isnan(got).any()


@pytest.mark.parametrize("scale", [1e3, 1e10, 1e30])
def test_saturating_inputs_give_exact_limits(isa, scale):
    """Huge finite pre-activations: sigmoid -> 0/1 and tanh -> -1/1, never NaN (no inf/inf)."""
    a = args(5)
    a["x"] = (np.sign(a["x"]) * scale).astype(f32)
    a["weight_ih"] = np.sign(a["weight_ih"]).astype(f32)
    a["h0"] = a["c0"] = None
    y, h_n, c_n, _ = ops.lstm_forward(**a)
    y_r, h_r, c_r, _ = reference(a)
    # The pre-activation sums overflow float32 only beyond ~3e38: 7 * 1e30 does not.
    assert np.isfinite(y).all() and np.isfinite(c_n).all()
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_n, c_r, rtol=1e-5, atol=1e-5)


def test_activations_at_special_values(isa):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 88.8, -88.8, 1e30, -1e30], f32)
    s, t = _core.sigmoid(x), _core.tanh(x)
    want_s = ref.sigmoid(x.astype(f64))
    want_t = np.tanh(x.astype(f64))
    same_nonfinite(s, want_s, "sigmoid")
    same_nonfinite(t, want_t, "tanh")
    assert s[1] == 1 and s[2] == 0 and t[1] == 1 and t[2] == -1


@pytest.mark.parametrize("where", ["x", "h0", "c0", "weights", "all"])
def test_denormal_inputs(isa, where):
    """Denormal values in the inputs: finite results that match the reference (the kernels may
    flush them to zero: a change of at most ~1e-38)."""
    a = args(6)
    rng = np.random.default_rng(7)
    den = lambda shape: (rng.choice([-1, 1], shape) * rng.uniform(1e-45, 1e-38, shape)).astype(f32)  # noqa: E731
    keys = {"weights": ["weight_ih", "weight_hh"], "all": NAMES}.get(where, [where])
    for k in keys:
        a[k] = den(a[k].shape)
    assert (np.abs(a[keys[0]]) < np.finfo(f32).tiny).all()
    y, h_n, c_n, cache = ops.lstm_forward(**a, training=True)
    y_r, h_r, c_r, cache_r = reference(a)
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_n, c_r, rtol=1e-5, atol=1e-6)
    dy = np.random.default_rng(8).standard_normal(y.shape).astype(f32)
    g = ops.lstm_backward(cache, dy)
    r = ref.lstm_backward(cache_r, dy.astype(f64))
    np.testing.assert_allclose(g.dx, r.dx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.dweight_hh, r.dweight_hh, rtol=1e-4, atol=1e-5)


def test_flush_to_zero_does_not_leak_into_the_caller():
    """The kernels may set FTZ/DAZ for themselves; the calling thread's NumPy keeps denormals."""
    tiny = np.array([1e-40], f32)
    assert (tiny * f32(1.0))[0] != 0
    a = args(9)
    _, _, _, cache = ops.lstm_forward(**a, training=True)
    ops.lstm_backward(cache)
    ops.gemm(a["weight_ih"], a["x"][0], trans_b=True)
    _core.sigmoid(a["x"].reshape(-1))
    assert (tiny * f32(1.0))[0] != 0, "FTZ/DAZ left set in the calling thread"
    assert np.float32(1e-39) / np.float32(2) != 0


def test_nan_everywhere_terminates():
    """All-NaN inputs of a larger problem on every thread count: returns, all NaN."""
    a = args(10, T=20, B=8, I=16, H=64)
    for k in a:
        a[k][...] = np.nan
    before = lstm_fast.get_num_threads()
    try:
        for n in (1, 2, 3):
            lstm_fast.set_num_threads(n)
            y, h_n, c_n, cache = ops.lstm_forward(**a, training=True)
            assert np.isnan(y).all() and np.isnan(c_n).all()
            g = ops.lstm_backward(cache, np.ones_like(y))
            assert np.isnan(g.dx).all()
    finally:
        lstm_fast.set_num_threads(before)


# ---- check_finite -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("name", NAMES)
def test_check_finite_forward_raises_naming_argument(name, value):
    a = args()
    a[name].flat[3] = value
    with pytest.raises(ValueError, match=rf"^{name}: expected finite values, got (NaN|Inf)"):
        ops.lstm_forward(**a, check_finite=True)


@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
def test_check_finite_backward_raises_naming_argument(name):
    a = args()
    _, _, _, cache = ops.lstm_forward(**a, training=True)
    up = {"dy": np.zeros((T, B, H), f32), "dh_n": np.zeros((B, H), f32)}
    up["dc_n"] = np.zeros((B, H), f32)
    up[name].flat[0] = np.nan
    with pytest.raises(ValueError, match=rf"^{name}: expected finite values, got NaN"):
        ops.lstm_backward(cache, **up, check_finite=True)


def test_check_finite_default_off_and_same_results():
    a = args()
    y0 = ops.lstm_forward(**a)[0]
    y1 = ops.lstm_forward(**a, check_finite=True)[0]
    assert np.array_equal(y0, y1)
    a["x"][0, 0, 0] = np.nan
    assert np.isnan(ops.lstm_forward(**a, check_finite=False)[0]).any()
    with pytest.raises(TypeError, match="^check_finite: expected a bool"):
        ops.lstm_forward(**a, check_finite="yes")


def test_check_finite_layer():
    lstm = lstm_fast.LSTM(I, H, seed=0, check_finite=True)
    x = args()["x"]
    x[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match=r"^input: expected finite values"):
        lstm(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: lstm_fast.GRU(I, H, seed=0, check_finite=True),
        lambda: lstm_fast.RNN(I, H, nonlinearity="relu", seed=0, check_finite=True),
        lambda: lstm_fast.LSTM(I, H, num_layers=2, bidirectional=True, seed=0, check_finite=True),
    ],
    ids=["gru", "rnn", "lstm2bi"],
)
def test_check_finite_family(make):
    layer = make()
    x = args()["x"]
    y, _ = layer(x)  # finite: runs
    layer.backward(np.ones_like(y))
    x[0, 2, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"^input: expected finite values, got NaN at index \(0, 2, 1\)"
    ):
        layer(x)
    x[0, 2, 1] = 0
    h0 = np.zeros((layer.num_layers * layer.num_directions, B, H), f32)
    h0[-1, 0, 0] = -np.inf
    hx = (h0, np.zeros_like(h0)) if isinstance(layer, lstm_fast.LSTM) else h0
    with pytest.raises(ValueError, match=r"^hx(\[0\])?: expected finite values, got Inf"):
        layer(x, hx)
    y, _ = layer(x)
    dy = np.ones_like(y)
    dy[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match=r"^dy: expected finite values, got Inf"):
        layer.backward(dy)
    name, p = next(iter(layer.named_parameters()))
    p.data[0, 0] = np.nan
    with pytest.raises(ValueError, match=rf"^{name}: expected finite values, got NaN"):
        layer(x)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "RNNCell"])
def test_check_finite_cells_and_ops(cell):
    c = getattr(lstm_fast, cell)(I, H, seed=0, check_finite=True)
    x = args()["x"][0]
    c(x)
    x[2, 3] = np.inf
    with pytest.raises(
        ValueError, match=r"^input: expected finite values, got Inf at index \(2, 3\)"
    ):
        c(x)
    with pytest.raises(TypeError, match="^check_finite: expected a bool"):
        getattr(lstm_fast, cell)(I, H, check_finite=1)
    rng = np.random.default_rng(0)
    for fwd, G in ((ops.gru_forward, 3), (ops.rnn_forward, 1)):
        xs = rng.standard_normal((T, B, I)).astype(f32)
        w_ih = rng.standard_normal((G * H, I)).astype(f32)
        w_hh = rng.standard_normal((G * H, H)).astype(f32)
        y, _, cache = fwd(xs, w_ih, w_hh, training=True, check_finite=True)
        w_hh[G * H - 1, H - 1] = np.nan
        with pytest.raises(ValueError, match=r"^weight_hh: expected finite values, got NaN"):
            fwd(xs, w_ih, w_hh, check_finite=True)
        assert np.isnan(fwd(xs, w_ih, w_hh)[0]).any()  # off: propagates
        bwd = ops.gru_backward if G == 3 else ops.rnn_backward
        dh = np.zeros((B, H), f32)
        dh[0, 0] = np.nan
        with pytest.raises(ValueError, match=r"^dh_n: expected finite values, got NaN"):
            bwd(cache, y, dh, check_finite=True)
