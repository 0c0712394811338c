"""Boundary fuzzing: every public function and the LSTM layer called with generated arguments.

Each call must either return a correct result (compared with :mod:`lstm_fast.reference` on small
cases) or raise a ``ValueError``/``TypeError`` whose message starts with (or names) the argument
at fault. Nothing may crash the interpreter. An oracle below states, independently of the
bindings, which arguments of a call are bad and how; the check order of the bindings is free.

Bad-input classes: wrong dtype (float64, float16, big-endian float32, int, bool, complex,
object), not an array (list, None, str, scalar), rank, shape mismatch, zero sizes, huge sizes
(0-stride views of a one-element buffer: nothing is allocated), outputs whose byte count would
overflow, non-contiguous, negative-stride, Fortran-order, misaligned and read-only arrays, NaN /
+-Inf / denormal values, wrong state shapes, wrong / out-of-range / unsorted ``batch_sizes``,
wrong ``training`` flags, wrong cache objects, backward called twice, caches whose arrays were
reshaped in place, layer constructor arguments, and ``set_num_threads`` arguments.

The number of generated calls is printed by the last test of the module (>= 10,000 in CI);
``LSTM_FAST_FUZZ_SCALE`` (default 1) scales the number of examples.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import as_strided

import lstm_fast
from lstm_fast import _core, ops
from lstm_fast import reference as ref

# The reference and NumPy warn about NaN/Inf arithmetic and complex casts the fuzz asks for.
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Casting complex values"),
]

f32, f64 = np.float32, np.float64
ISAS = lstm_fast.cpu_info()["available_isas"]
SCALE = float(os.environ.get("LSTM_FAST_FUZZ_SCALE", "1"))
MIN_CALLS = 10_000

# Generated calls into lstm_fast, and the fuzz tests that ran (the count is checked only when
# the whole module ran).
CALLS = {"n": 0}
RAN: set = set()


def fuzz(n: int):
    """Hypothesis settings for a fuzz test with about n examples (times LSTM_FAST_FUZZ_SCALE)."""
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


# ---- calling and judging ------------------------------------------------------------------------


class Bad:
    """What is wrong with one argument: its name and the exception class that must be raised."""

    def __init__(self, name: str, exc: type, why: str):
        self.name, self.exc, self.why = name, exc, why

    def __repr__(self):
        return f"Bad({self.name}, {self.exc.__name__}, {self.why})"


def names_argument(msg: str, name: str) -> bool:
    """The message starts with the argument's name (possibly after the function's / the outer
    argument's, as in ``set_num_threads: n: ...`` or ``hx: h_0: ...``)."""
    return re.match(rf"^([\w\[\]]+: )*{re.escape(name)}\b", msg) is not None


def call(fn, *args, **kwargs):
    """(result, None) or (None, error) for a ValueError/TypeError; anything else propagates."""
    CALLS["n"] += 1
    try:
        return fn(*args, **kwargs), None
    except (ValueError, TypeError) as e:
        return None, e


def judge(err, bad: list, what: str = "call"):
    """A call with the problems `bad` must raise one of them; a good call must not raise."""
    if not bad:
        assert err is None, f"{what}: a valid call raised {type(err).__name__}: {err}"
        return False
    assert err is not None, f"{what}: expected an error for {bad}, the call succeeded"
    msg = str(err)
    ok = [b for b in bad if isinstance(err, b.exc) and names_argument(msg, b.name)]
    assert ok, f"{what}: {type(err).__name__}({msg!r}) does not name any of {bad}"
    return True


# ---- argument generation and mutation -----------------------------------------------------------

DTYPES = [f64, np.float16, np.dtype(">f4"), np.int32, np.int64, np.uint8, np.bool_, np.complex64]
MUTATIONS = [
    "dtype",
    "object",
    "list",
    "none",
    "str",
    "scalar",
    "rank+",
    "rank-",
    "shape",
    "zero",
    "strided",
    "reversed",
    "fortran",
    "misaligned",
    "readonly",
    "huge",
    "nan",
    "inf",
    "-inf",
    "denormal",
]
FINITE_SAFE = {"readonly", "denormal"}  # values stay finite; result compared tightly


def misaligned(a: np.ndarray) -> np.ndarray:
    out = np.zeros(a.nbytes + 1, np.uint8)[1:].view(f32).reshape(a.shape)
    out[...] = a
    return out


def mutate(a, kind: str, rng: np.random.Generator, dtype=None, axis: int = 0):
    """A changed copy (or view) of the float32 array a (anything else is returned as is)."""
    if not isinstance(a, np.ndarray) or a.dtype != f32 or a.ndim == 0 or a.size > 100_000:
        return a  # not a float32 array, or already a huge 0-stride view: never copy those
    if kind == "dtype":
        return a.astype(dtype)
    if kind == "object":
        return a.astype(object)
    if kind == "list":
        return a.tolist()
    if kind == "none":
        return None
    if kind == "str":
        return "x"
    if kind == "scalar":
        return 1.0
    if kind == "rank+":
        return a[None]
    if kind == "rank-":
        if a.ndim == 1:
            return np.asarray(a[0] if a.size else f32(0))  # 0-d
        return a[..., 0] if a.shape[-1] else np.zeros(a.shape[:-1], f32)
    if kind in ("shape", "zero"):
        shape = list(a.shape)
        ax = axis % len(shape)
        shape[ax] = 0 if kind == "zero" else int(rng.integers(0, 8))
        return rng.standard_normal(shape).astype(f32)
    if kind == "strided":
        ax = axis % a.ndim
        return np.repeat(a, 2, axis=ax)[(slice(None),) * ax + (slice(None, None, 2),)]
    if kind == "reversed":
        return np.flip(a, axis=axis % a.ndim)
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "misaligned":
        return misaligned(a)
    if kind == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if kind == "huge":
        # Sizes whose byte count is far beyond memory, from a one-element buffer (0 strides).
        big = (1 << (60 // a.ndim),) * a.ndim  # any rank (an earlier mutation may add one)
        shape = tuple(big[d] if d == axis % a.ndim else max(s, 2) for d, s in enumerate(a.shape))
        return as_strided(np.zeros(1, f32), shape=shape, strides=(0,) * a.ndim)
    if kind in ("nan", "inf", "-inf", "denormal"):
        b = a.copy()
        if b.size:
            v = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "denormal": 1e-41}[kind]
            if kind == "denormal":
                b[...] = rng.choice([1e-41, -3e-40, 1e-45], size=b.shape)
            else:
                b.flat[int(rng.integers(0, b.size))] = v
        return b
    raise AssertionError(kind)


def array_problems(name: str, a, ndim: int, required: bool) -> list:
    """Type, dtype, rank and layout problems of one float32 array argument (not its shape)."""
    if a is None:
        return [Bad(name, TypeError, "None")] if required else []
    if not isinstance(a, np.ndarray):
        return [Bad(name, TypeError, "not an array")]
    if a.dtype != f32 or not a.dtype.isnative:
        return [Bad(name, TypeError, f"dtype {a.dtype}")]
    if a.ndim != ndim:
        return [Bad(name, ValueError, "rank")]
    out = []
    if not a.flags.c_contiguous:
        out.append(Bad(name, ValueError, "layout"))
    if not a.flags.aligned or a.ctypes.data % 4:
        out.append(Bad(name, ValueError, "alignment"))
    return out


def shape_of(a, ndim: int):
    if isinstance(a, np.ndarray) and a.ndim == ndim:
        return a.shape
    return None


# ---- LSTM forward / backward --------------------------------------------------------------------

FWD_NAMES = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0"]


def lstm_args(rng, T, B, I, H, bias: bool, state: bool) -> dict:
    def r(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(f32)

    a = dict(x=r(T, B, I), weight_ih=r(4 * H, I, scale=0.5), weight_hh=r(4 * H, H, scale=0.5))
    a["bias_ih"] = r(4 * H, scale=0.5) if bias else None
    a["bias_hh"] = r(4 * H, scale=0.5) if bias else None
    a["h0"] = r(B, H) if state else None
    a["c0"] = r(B, H) if state else None
    return a


def lstm_problems(a: dict, batch_sizes=None) -> list:
    """The oracle: everything wrong with the arguments of an lstm_forward call."""
    ndims = dict(x=3, weight_ih=2, weight_hh=2, bias_ih=1, bias_hh=1, h0=2, c0=2)
    req = {"x", "weight_ih", "weight_hh"}
    bad = []
    for n in FWD_NAMES:
        bad += array_problems(n, a[n], ndims[n], n in req)
    bs = None
    if batch_sizes is not None:  # converted by ops before the core sees any argument
        bs = np.asarray(batch_sizes) if not isinstance(batch_sizes, str) else None
        if bs is not None and bs.size == 0 and bs.dtype.kind == "f":
            bs = bs.astype(np.int64)  # [] is taken as no steps
        if bs is None or bs.dtype.kind not in "iu":
            return bad + [Bad("batch_sizes", TypeError, "dtype")]
    xs, whh = shape_of(a["x"], 3), shape_of(a["weight_hh"], 2)
    if xs is None or whh is None:
        return bad
    T, B, I = xs
    H = whh[1]
    expect = dict(weight_ih=(4 * H, I), weight_hh=(4 * H, H), bias_ih=(4 * H,), bias_hh=(4 * H,))
    expect.update(h0=(B, H), c0=(B, H))
    for n, shp in expect.items():
        s = shape_of(a[n], len(shp))
        if s is not None and s != shp:
            # A mismatch may be reported on this argument or on the one the size comes from.
            bad.append(Bad(n, ValueError, f"shape {s} != {shp}"))
            bad.append(Bad("x" if n in ("weight_ih", "h0", "c0") else "weight_hh", ValueError, ""))
    if bs is not None:
        if bs.shape != (T,):
            bad.append(Bad("batch_sizes", ValueError, "shape"))
        else:
            v = bs.astype(np.int64)
            if (v < 0).any() or (v > B).any() or (np.diff(v) > 0).any():
                bad.append(Bad("batch_sizes", ValueError, "values"))
    return bad


def as64(a):
    return None if a is None else np.asarray(a, f64)


def lengths_of(batch_sizes, B: int):
    """PackedSequence batch_sizes (T,) -> per-row lengths (B,) for the reference."""
    if batch_sizes is None:
        return None
    bs = np.asarray(batch_sizes, np.int64)
    return (bs[:, None] > np.arange(B)[None, :]).sum(axis=0)


def close(got, want, what: str, rtol=1e-4, atol=2e-5):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def same_finiteness(got, want, what: str, structural_zero: bool = False):
    """Non-finite inputs: non-finite exactly where the float64 reference is, close elsewhere.

    ``structural_zero``: the kernel may leave finite what the reference makes NaN by 0 * NaN
    (dweight_hh when h0 is None: the kernels skip the zero initial state, the reference
    multiplies by it; the gradient of a ReLU that is off)."""
    got, want = np.asarray(got, f64), np.asarray(want, f64)
    fin_g, fin_w = np.isfinite(got), np.isfinite(want)
    if structural_zero:
        fin_w = fin_w | (fin_g & np.isnan(want))
    np.testing.assert_array_equal(fin_g, fin_w, err_msg=what + ": finiteness differs")
    both = fin_g & np.isfinite(want)
    close(got[both], want[both], what)


def _small_arrays(arrays) -> list:
    # Huge 0-stride views (zeros, never denormal or non-finite) are left out: not materialised.
    return [a for a in arrays if isinstance(a, np.ndarray) and a.dtype == f32 and a.size <= 1 << 24]


def has_denormal(*arrays) -> bool:
    return any(((a != 0) & (np.abs(a) < np.finfo(f32).tiny)).any() for a in _small_arrays(arrays))


def denormal_and_nonfinite(*arrays) -> bool:
    """Denormals with Inf/NaN: the kernels may treat denormals as zero (DAZ), so 1e-45 * inf
    is NaN there and inf in float64: only shapes and no-crash are checked then."""
    arrs = _small_arrays(arrays)
    return has_denormal(*arrs) and not all(np.isfinite(a).all() for a in arrs)


@st.composite
def sizes(draw, zero=True):
    lo = 0 if zero else 1
    return tuple(draw(st.integers(lo, hi)) for hi in (5, 4, 6, 5))  # T, B, I, H


@st.composite
def forward_case(draw):
    T, B, I, H = draw(sizes())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = lstm_args(rng, T, B, I, H, draw(st.booleans()), draw(st.booleans()))
    # Mutate 0, 1 or 2 arguments.
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(FWD_NAMES))
        kind = draw(st.sampled_from(MUTATIONS))
        if a[name] is None:
            a[name] = lstm_args(rng, T, B, I, H, True, True)[name]
        a[name] = mutate(
            a[name], kind, rng, dtype=draw(st.sampled_from(DTYPES)), axis=draw(st.integers(0, 2))
        )
    bs = None
    if draw(st.integers(0, 3)) == 0:
        kind = draw(st.sampled_from(["sorted", "sorted", "random", "list", "float", "bool", "2d"]))
        if kind == "sorted":
            bs = np.sort(rng.integers(0, B + 1, size=T))[::-1].astype(
                draw(st.sampled_from([np.int64, np.int32, np.uint16]))
            )
        elif kind == "random":
            bs = rng.integers(-2, B + 3, size=draw(st.integers(0, T + 1)))
        elif kind == "list":
            bs = [B] * T
        elif kind == "float":
            bs = np.full(T, B, f64)
        elif kind == "bool":
            bs = np.ones(T, bool)
        else:
            bs = np.full((T, 1), B, np.int64)
    training = draw(st.sampled_from([False, True, True, np.bool_(True), 1, "yes", None]))
    isa = draw(st.sampled_from(ISAS))
    return a, bs, training, isa


def run_forward(a, bs, training):
    return call(ops.lstm_forward, **a, training=training, batch_sizes=bs)


def check_forward_result(a, bs, out):
    y, h_n, c_n, cache = out
    x = a["x"]
    T, B, _ = x.shape
    H = a["weight_hh"].shape[1]
    assert y.shape == (T, B, H) and h_n.shape == (B, H) and c_n.shape == (B, H)
    assert y.dtype == f32 and h_n.dtype == f32 and c_n.dtype == f32
    lengths = lengths_of(bs, B)
    y_r, h_r, c_r, _ = ref.lstm_forward(
        as64(x), *(as64(a[n]) for n in FWD_NAMES[1:]), lengths=lengths
    )
    finite = all(np.isfinite(v).all() for v in a.values() if v is not None)
    if denormal_and_nonfinite(*a.values()):
        return y_r, h_r, c_r
    for got, want, nm in ((y, y_r, "y"), (h_n, h_r, "h_n"), (c_n, c_r, "c_n")):
        if finite:
            close(got, want, nm)
        else:
            same_finiteness(got, want, nm)
    return y_r, h_r, c_r


@fuzz(2500)
@given(forward_case())
def test_fuzz_lstm_forward(case):
    """Forward with generated (often broken) arguments on a random ISA; valid calls vs reference."""
    RAN.add("forward")
    a, bs, training, isa = case
    before = lstm_fast.cpu_info()["isa"]
    _core._set_isa(isa)
    try:
        bad = lstm_problems(a, bs)
        if not isinstance(training, (bool, np.bool_)):
            bad.append(Bad("training", TypeError, "not a bool"))
        out, err = run_forward(a, bs, training)
        if judge(err, bad, "lstm_forward"):
            return
        check_forward_result(a, bs, out)
        assert (out[3] is not None) == bool(training)
    finally:
        _core._set_isa(before)


# -- backward --


@st.composite
def backward_case(draw):
    T, B, I, H = draw(sizes())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bias, state = draw(st.booleans()), draw(st.booleans())
    a = lstm_args(rng, T, B, I, H, bias, state)
    bs = None
    if draw(st.booleans()) and T:
        bs = np.sort(rng.integers(0, B + 1, size=T))[::-1].copy()
    up = {
        "dy": (rng.standard_normal((T, B, H))).astype(f32),
        "dh_n": rng.standard_normal((B, H)).astype(f32),
        "dc_n": rng.standard_normal((B, H)).astype(f32),
    }
    for n in list(up):
        if draw(st.integers(0, 3)) == 0:
            up[n] = None
    for _ in range(draw(st.integers(0, 2))):
        n = draw(st.sampled_from(list(up)))
        if up[n] is None:
            up[n] = np.ones({"dy": (T, B, H)}.get(n, (B, H)), f32)
        up[n] = mutate(
            up[n],
            draw(st.sampled_from(MUTATIONS)),
            rng,
            dtype=draw(st.sampled_from(DTYPES)),
            axis=draw(st.integers(0, 2)),
        )
    cache_kind = draw(
        st.sampled_from(
            ["good"] * 6 + ["none", "object", "int", "tuple", "reference", "other", "inference"]
        )
    )
    return a, bs, up, cache_kind, draw(st.sampled_from(ISAS))


def upstream_problems(up: dict, T: int, B: int, H: int) -> list:
    bad = []
    for n, shp in (("dy", (T, B, H)), ("dh_n", (B, H)), ("dc_n", (B, H))):
        bad += array_problems(n, up[n], len(shp), False)
        s = shape_of(up[n], len(shp))
        if s is not None and s != shp:
            bad.append(Bad(n, ValueError, "shape"))
    return bad


@fuzz(1500)
@given(backward_case())
def test_fuzz_lstm_backward(case):
    """Backward with generated upstream gradients and cache objects; twice; vs the reference."""
    RAN.add("backward")
    a, bs, up, cache_kind, isa = case
    before = lstm_fast.cpu_info()["isa"]
    _core._set_isa(isa)
    try:
        T, B, I = a["x"].shape
        H = a["weight_hh"].shape[1]
        (y, h_n, c_n, cache), err = run_forward(a, bs, True)
        assert err is None, err
        if cache_kind == "good":
            bad = upstream_problems(up, T, B, H)
        else:
            cache = {
                "none": None,
                "object": object(),
                "int": 3,
                "tuple": (y, h_n, c_n),
                "reference": ref.lstm_forward(a["x"], a["weight_ih"], a["weight_hh"])[3],
                # A real cache of another call: the upstream gradients no longer fit.
                "other": ops.lstm_forward(
                    np.zeros((T + 1, B + 1, I), f32),
                    a["weight_ih"],
                    a["weight_hh"],
                    training=True,
                )[3],
                "inference": ops.lstm_forward(a["x"], a["weight_ih"], a["weight_hh"])[3],
            }[cache_kind]
            if cache_kind == "other":
                bad = upstream_problems(up, T + 1, B + 1, H)
            else:
                bad = [Bad("cache", TypeError, cache_kind)]
        g, err = call(ops.lstm_backward, cache, **up)
        if judge(err, bad, "lstm_backward"):
            return
        if cache_kind == "other":
            return
        # Backward twice: the cache may be used again, with bitwise equal results.
        g2, err = call(ops.lstm_backward, cache, **up)
        assert err is None
        for u, v in zip(g, g2):
            assert (u is None and v is None) or np.array_equal(u, v, equal_nan=True)
        assert g.dx.shape == (T, B, I) and g.dh0.shape == (B, H) and g.dc0.shape == (B, H)
        assert g.dweight_ih.shape == (4 * H, I) and g.dweight_hh.shape == (4 * H, H)
        assert (g.dbias_ih is None) == (a["bias_ih"] is None)
        lengths = lengths_of(bs, B)
        *_, cache_r = ref.lstm_forward(
            as64(a["x"]), *(as64(a[n]) for n in FWD_NAMES[1:]), lengths=lengths
        )
        r = ref.lstm_backward(cache_r, *(as64(up[n]) for n in ("dy", "dh_n", "dc_n")))
        finite = all(np.isfinite(v).all() for v in up.values() if v is not None)
        if denormal_and_nonfinite(*a.values(), *up.values()):
            return
        for nm in ("dx", "dh0", "dc0", "dweight_ih", "dweight_hh", "dbias_ih", "dbias_hh"):
            got, want = getattr(g, nm), getattr(r, nm)
            if got is None:
                assert want is None
            elif finite:
                close(got, want, nm, rtol=2e-4, atol=5e-5)
            else:
                zero = nm == "dweight_hh" and a["h0"] is None
                same_finiteness(got, want, nm, structural_zero=zero)
    finally:
        _core._set_isa(before)


@fuzz(300)
@given(
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from(["x", "weight_ih", "weight_hh", "y"]),
    st.sampled_from(["reshape", "reverse_shape"]),
)
def test_fuzz_cache_arrays_changed_in_place(T, B, I, H, which, how):
    """Arrays the cache references, reshaped or re-laid out in place: backward refuses cleanly."""
    RAN.add("cache_changed")
    rng = np.random.default_rng(T * 100 + B * 10 + I)
    a = lstm_args(rng, T, B, I, H, True, True)
    (y, _, _, cache), err = run_forward(a, None, True)
    assert err is None
    target = y if which == "y" else a[which]
    shape = target.shape
    target.shape = (target.size,) if how == "reshape" else shape[::-1]
    _, err = call(ops.lstm_backward, cache, None)
    if target.shape == shape:
        assert err is None, err  # a shape equal to its reverse: nothing changed
        return
    assert isinstance(err, ValueError), err
    assert names_argument(str(err), "cache") and which in str(err)


# ---- GRU and vanilla RNN ------------------------------------------------------------------------

CELL_NAMES = ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0"]
CELL_NDIMS = dict(x=3, weight_ih=2, weight_hh=2, bias_ih=1, bias_hh=1, h0=2)
HAS_CELLS = hasattr(ops, "gru_forward") and hasattr(ops, "rnn_forward")


def cell_problems(a: dict, G: int, batch_sizes=None) -> list:
    """The oracle for gru_forward / rnn_forward (gate width G * H)."""
    bad = []
    for n in CELL_NAMES:
        bad += array_problems(n, a[n], CELL_NDIMS[n], n in ("x", "weight_ih", "weight_hh"))
    bs = None
    if batch_sizes is not None:
        bs = np.asarray(batch_sizes)
        if bs.size == 0 and bs.dtype.kind == "f":
            bs = bs.astype(np.int64)  # [] is taken as no steps
        if bs.dtype.kind not in "iu":
            return bad + [Bad("batch_sizes", TypeError, "dtype")]
    xs, whh = shape_of(a["x"], 3), shape_of(a["weight_hh"], 2)
    if xs is None or whh is None:
        return bad
    T, B, I = xs
    H = whh[1]
    expect = dict(weight_ih=(G * H, I), weight_hh=(G * H, H), bias_ih=(G * H,), bias_hh=(G * H,))
    expect["h0"] = (B, H)
    for n, shp in expect.items():
        s = shape_of(a[n], len(shp))
        if s is not None and s != shp:
            bad.append(Bad(n, ValueError, f"shape {s} != {shp}"))
            bad.append(Bad("x" if n in ("weight_ih", "h0") else "weight_hh", ValueError, ""))
    if bs is not None:
        if bs.shape != (T,):
            bad.append(Bad("batch_sizes", ValueError, "shape"))
        else:
            v = bs.astype(np.int64)
            if (v < 0).any() or (v > B).any() or (np.diff(v) > 0).any():
                bad.append(Bad("batch_sizes", ValueError, "values"))
    return bad


@st.composite
def cell_case(draw):
    cell = draw(st.sampled_from(["gru", "rnn"]))
    G = 3 if cell == "gru" else 1
    T, B, I, H = draw(sizes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def r(*s, k=1.0):
        return (rng.standard_normal(s) * k).astype(f32)

    bias, state = draw(st.booleans()), draw(st.booleans())
    full = dict(x=r(T, B, I), weight_ih=r(G * H, I, k=0.5), weight_hh=r(G * H, H, k=0.5))
    full.update(bias_ih=r(G * H, k=0.5), bias_hh=r(G * H, k=0.5), h0=r(B, H))
    a = dict(full)
    if not bias:
        a["bias_ih"] = a["bias_hh"] = None
    if not state:
        a["h0"] = None
    for _ in range(draw(st.integers(0, 2))):
        n = draw(st.sampled_from(CELL_NAMES))
        a[n] = mutate(
            full[n] if a[n] is None else a[n],
            draw(st.sampled_from(MUTATIONS)),
            rng,
            dtype=draw(st.sampled_from(DTYPES)),
            axis=draw(st.integers(0, 2)),
        )
    bs = None
    if T and draw(st.integers(0, 3)) == 0:
        bs = np.sort(rng.integers(0, B + 1, size=T))[::-1].copy()
        if draw(st.integers(0, 3)) == 0:
            bs = rng.integers(-1, B + 2, size=T)  # often out of range or increasing
    nonlin = draw(st.sampled_from(["tanh", "relu", "tanh", "sigmoid", None, 1]))
    training = draw(st.sampled_from([True, True, False, "no"]))
    up = {"dy": r(T, B, H), "dh_n": r(B, H)}
    for n in list(up):
        k = draw(st.sampled_from(["keep", "keep", "none", "mutate"]))
        if k == "none":
            up[n] = None
        elif k == "mutate":
            up[n] = mutate(
                up[n],
                draw(st.sampled_from(MUTATIONS)),
                rng,
                dtype=draw(st.sampled_from(DTYPES)),
                axis=draw(st.integers(0, 2)),
            )
    wrong_cache = draw(
        st.sampled_from([None, None, None, None, "lstm", "other_cell", "reference", "object"])
    )
    return cell, a, bs, nonlin, training, up, wrong_cache, draw(st.sampled_from(ISAS))


@pytest.mark.skipif(not HAS_CELLS, reason="ops has no gru_forward / rnn_forward")
@fuzz(1500)
@given(cell_case())
def test_fuzz_gru_rnn(case):
    """gru_forward / rnn_forward and their backward, like the LSTM's: errors name the argument,
    valid calls match the reference, backward twice is bitwise equal, foreign caches refused."""
    RAN.add("cells")
    cell, a, bs, nonlin, training, up, wrong_cache, isa = case
    G = 3 if cell == "gru" else 1
    bad = cell_problems(a, G, bs)
    kw = dict(training=training, batch_sizes=bs)
    if cell == "rnn":
        kw["nonlinearity"] = nonlin
        if not isinstance(nonlin, str):
            bad.append(Bad("nonlinearity", TypeError, "type"))
        elif nonlin not in ("tanh", "relu"):
            bad.append(Bad("nonlinearity", ValueError, "value"))
    if not isinstance(training, (bool, np.bool_)):
        bad.append(Bad("training", TypeError, "type"))
    fwd = ops.gru_forward if cell == "gru" else ops.rnn_forward
    bwd = ops.gru_backward if cell == "gru" else ops.rnn_backward
    before = lstm_fast.cpu_info()["isa"]
    _core._set_isa(isa)
    try:
        out, err = call(fwd, *(a[n] for n in CELL_NAMES), **kw)
        if judge(err, bad, f"{cell}_forward"):
            return
        y, h_n, cache = out
        T, B, _ = a["x"].shape
        H = a["weight_hh"].shape[1]
        assert y.shape == (T, B, H) and h_n.shape == (B, H) and y.dtype == f32
        rkw = dict(lengths=lengths_of(bs, B))
        if cell == "rnn":
            rkw["nonlinearity"] = nonlin
        rfwd = ref.gru_forward if cell == "gru" else ref.rnn_forward
        y_r, h_r, cache_r = rfwd(*(as64(a[n]) for n in CELL_NAMES), **rkw)
        finite = all(np.isfinite(v).all() for v in a.values() if v is not None)
        if denormal_and_nonfinite(*a.values(), *up.values()):
            return
        for got, want, nm in ((y, y_r, "y"), (h_n, h_r, "h_n")):
            (close if finite else same_finiteness)(got, want, f"{cell} {nm}")
        if not training:
            assert cache is None
            return
        ubad = []
        for n, shp in (("dy", (T, B, H)), ("dh_n", (B, H))):
            ubad += array_problems(n, up[n], len(shp), False)
            s = shape_of(up[n], len(shp))
            if s is not None and s != shp:
                ubad.append(Bad(n, ValueError, "shape"))
        if wrong_cache is not None:
            x1 = np.zeros((1, 1, 1), f32)
            w = {"gru": np.zeros((1, 1), f32), "rnn": np.zeros((3, 1), f32)}[cell]  # the other
            cache = {
                "lstm": ops.lstm_forward(
                    x1, np.zeros((4, 1), f32), np.zeros((4, 1), f32), training=True
                )[3],
                "other_cell": (ops.rnn_forward if cell == "gru" else ops.gru_forward)(
                    x1, w, w, training=True
                )[2],
                "reference": cache_r,
                "object": object(),
            }[wrong_cache]
            ubad = [Bad("cache", TypeError, wrong_cache)]
        g, err = call(bwd, cache, up["dy"], up["dh_n"])
        if judge(err, ubad, f"{cell}_backward"):
            return
        g2, err = call(bwd, cache, up["dy"], up["dh_n"])
        assert err is None
        for u, v in zip(g, g2):
            assert (u is None and v is None) or np.array_equal(u, v, equal_nan=True)
        if cell == "rnn" and nonlin == "relu" and has_denormal(*a.values()):
            # A pre-activation in float32's denormal range is 0 in the kernels (DAZ/FTZ) and
            # positive in the float64 reference: the ReLU's gradient is 0 on one side, 1 on the
            # other. Forward compared above; the gradients are not comparable at that kink.
            return
        r = (ref.gru_backward if cell == "gru" else ref.rnn_backward)(
            cache_r, as64(up["dy"]), as64(up["dh_n"])
        )
        finite = finite and all(np.isfinite(v).all() for v in up.values() if v is not None)
        if not finite and bs is not None:
            # The reference computes gates on padding rows too (and 0 * NaN there leaks into
            # its gradients); the kernels never touch padding. Compared on finite data only.
            return
        for nm in g._fields:
            got, want = getattr(g, nm), getattr(r, nm)
            if got is None or want is None:
                assert got is None and want is None, nm
            elif finite:
                close(got, want, f"{cell} {nm}", rtol=2e-4, atol=5e-5)
            else:
                # A ReLU that is off passes no gradient (a select, as PyTorch's
                # threshold_backward), where the reference multiplies NaN by 0.
                zero = (nm == "dweight_hh" and a["h0"] is None) or nonlin == "relu"
                same_finiteness(got, want, f"{cell} {nm}", structural_zero=zero)
    finally:
        _core._set_isa(before)


# ---- huge and overflowing sizes -----------------------------------------------------------------


def huge_lstm_case(kind: str):
    """Valid-looking LSTM arguments whose outputs would need more bytes than exist (or overflow
    a 64-bit byte count), built from zero-size inputs so nothing large is allocated."""
    w = dict(weight_ih=np.zeros((4, 0), f32), weight_hh=np.zeros((4, 1), f32))  # H=1, I=0
    if kind == "y_overflows":  # y (T, B, H=8): T*B*4H elements overflow int64 bytes
        return dict(
            x=np.empty((1 << 29, 1 << 29, 0), f32),
            weight_ih=np.zeros((32, 0), f32),
            weight_hh=np.zeros((32, 8), f32),
        )
    if kind == "y_huge":  # y 4 EiB
        return dict(x=np.empty((1 << 30, 1 << 30, 0), f32), **w)
    if kind == "state_huge":  # T = 0, h_n (B, H) 4 EiB
        return dict(x=np.empty((0, 1 << 60, 0), f32), **w)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["y_overflows", "y_huge", "state_huge"])
@pytest.mark.parametrize("training", [False, True])
def test_huge_outputs_fail_cleanly(kind, training):
    """Outputs beyond any memory: an exception (never a crash or a tiny workspace overrun)."""
    a = huge_lstm_case(kind)
    CALLS["n"] += 1
    with pytest.raises((ValueError, TypeError, MemoryError)):
        ops.lstm_forward(**a, training=training)


@pytest.mark.parametrize("kind", ["y_overflows", "y_huge", "state_huge"])
def test_huge_outputs_error_names_argument(kind):
    a = huge_lstm_case(kind)
    CALLS["n"] += 1
    with pytest.raises(ValueError, match=r"^(x|weight_hh|weight_ih): "):
        ops.lstm_forward(**a)


def test_huge_gemm_outputs_fail_cleanly():
    for m, n in ((1 << 31, 1 << 30), (1 << 30, 1 << 30)):
        CALLS["n"] += 1
        with pytest.raises((ValueError, MemoryError)):
            ops.gemm(np.empty((m, 0), f32), np.empty((0, n), f32))


def test_huge_zero_size_inputs_with_empty_outputs():
    """Huge dims with a zero one: inputs and outputs are empty, the call succeeds."""
    x = np.empty((1 << 30, 0, 1 << 30), f32)
    y, h, c, cache = ops.lstm_forward(
        x, np.empty((0, 1 << 30), f32), np.zeros((0, 0), f32), None, None, None, None, training=True
    )
    g = ops.lstm_backward(cache)
    assert (
        y.shape == (1 << 30, 0, 0) and g.dx.shape == x.shape and g.dweight_ih.shape == (0, 1 << 30)
    )
    CALLS["n"] += 2


# ---- gemm ---------------------------------------------------------------------------------------


@st.composite
def gemm_case(draw):
    M, N, K = (draw(st.integers(0, 40)) for _ in range(3))
    ta, tb = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(f32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(f32)
    args = {"a": a, "b": b}
    for _ in range(draw(st.integers(0, 2))):
        n = draw(st.sampled_from(["a", "b"]))
        args[n] = mutate(
            args[n],
            draw(st.sampled_from(MUTATIONS)),
            rng,
            dtype=draw(st.sampled_from(DTYPES)),
            axis=draw(st.integers(0, 1)),
        )
    return args, ta, tb, draw(st.sampled_from(ISAS))


@fuzz(2000)
@given(gemm_case())
def test_fuzz_gemm(case):
    RAN.add("gemm")
    args, ta, tb, isa = case
    a, b = args["a"], args["b"]
    bad = array_problems("a", a, 2, True) + array_problems("b", b, 2, True)
    sa, sb = shape_of(a, 2), shape_of(b, 2)
    if sa and sb:
        K = sa[0] if ta else sa[1]
        Kb = sb[1] if tb else sb[0]
        if K != Kb:
            bad += [Bad("b", ValueError, "K"), Bad("a", ValueError, "K")]
    before = lstm_fast.cpu_info()["isa"]
    _core._set_isa(isa)
    try:
        c, err = call(ops.gemm, a, b, trans_a=ta, trans_b=tb)
    finally:
        _core._set_isa(before)
    if judge(err, bad, "gemm"):
        return
    A = np.asarray(a, f64).T if ta else np.asarray(a, f64)
    Bm = np.asarray(b, f64).T if tb else np.asarray(b, f64)
    want = A @ Bm
    assert c.shape == want.shape and c.dtype == f32
    if denormal_and_nonfinite(a, b):
        return
    if np.isfinite(a).all() and np.isfinite(b).all():
        close(c, want, "c", rtol=1e-4, atol=1e-4)
    else:
        same_finiteness(c, want, "c")


# ---- the LSTM layer -----------------------------------------------------------------------------


def layer_reference(lstm, x, h0=None, c0=None):
    """The layer's maths from the reference: stacked layers, reverse direction via reverse=True."""
    L, D = lstm.num_layers, lstm.num_directions
    params = dict(lstm.named_parameters())
    inp = np.asarray(x, f64)
    hs, cs = [], []
    for k in range(L):
        outs = []
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            p = [params.get(n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            p = [None if q is None else q.data for q in p]
            idx = k * D + d
            y, h, c, _ = ref.lstm_forward(
                inp,
                *p,
                None if h0 is None else h0[idx],
                None if c0 is None else c0[idx],
                reverse=bool(d),
            )
            outs.append(y)
            hs.append(h)
            cs.append(c)
        inp = np.concatenate(outs, axis=2)
    return inp, np.stack(hs) if hs else None, np.stack(cs)


@st.composite
def layer_ctor(draw):
    good = dict(
        input_size=draw(st.integers(1, 4)),
        hidden_size=draw(st.integers(1, 4)),
        num_layers=draw(st.integers(1, 2)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
    )
    bad = None
    if draw(st.integers(0, 2)) == 0:
        name = draw(st.sampled_from(["input_size", "hidden_size", "num_layers", "dropout"]))
        val = draw(st.sampled_from([0, -1, 1.5, "3", None, True, np.nan, 2.0, [2]]))
        good[name] = val
        bad = name
    return good, bad


def ctor_problem(kw, name):
    if name is None:
        return []
    v = kw[name]
    if name == "dropout":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return [Bad(name, TypeError, "type")]
        if not 0 <= v <= 1 or v != v:
            return [Bad(name, ValueError, "range")]
        return []
    if isinstance(v, bool) or not isinstance(v, int):
        return [Bad(name, TypeError, "type")]
    if v < 1:
        return [Bad(name, ValueError, "range")]
    return []


@fuzz(1200)
@given(layer_ctor(), st.data())
def test_fuzz_layer(ctor, data):
    """The layer: constructor arguments, inputs of any dtype/rank/shape, hx, backward (twice)."""
    RAN.add("layer")
    kw, badname = ctor
    bad = ctor_problem(kw, badname)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lstm, err = call(lstm_fast.LSTM, **kw, seed=0)
    if judge(err, bad, "LSTM()"):
        return
    if lstm.dropout:  # random masks: not compared with the reference here
        object.__setattr__(lstm, "dropout", 0.0)
    I, H, L, D = lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.num_directions
    T = data.draw(st.integers(0, 4))
    B = data.draw(st.integers(0, 3))
    unbatched = data.draw(st.integers(0, 4)) == 0
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = (T, I) if unbatched else ((B, T, I) if lstm.batch_first else (T, B, I))
    x = rng.standard_normal(shape)
    x_kind = data.draw(
        st.sampled_from(
            ["f32", "f64", "int", "f16", "bool", "complex", "object", "rank", "I", "list", "nan"]
        )
    )
    bad = []
    if x_kind == "f32":
        x = x.astype(f32)
    elif x_kind == "int":
        x = (x * 3).astype(np.int64)
    elif x_kind == "f16":
        x = x.astype(np.float16)
    elif x_kind in ("bool", "complex", "object"):
        x = x.astype({"bool": bool, "complex": np.complex64, "object": object}[x_kind])
        bad = [Bad("input", TypeError, x_kind)]
    elif x_kind == "rank":
        x = x[None, None] if data.draw(st.booleans()) else x.reshape(-1)
        bad = [Bad("input", ValueError, "rank")]
    elif x_kind == "I":
        x = rng.standard_normal(shape[:-1] + (I + 1,))
        bad = [Bad("input", ValueError, "I")]
    elif x_kind == "list" and x.size:
        x = x.tolist()
    elif x_kind == "nan" and x.size:
        x.flat[0] = np.nan
    hx = None
    hx_kind = data.draw(st.sampled_from(["none", "none", "good", "shape", "notuple", "one"]))
    Bx = 1 if unbatched else B
    st_shape = (L * D, H) if unbatched else (L * D, B, H)
    if hx_kind != "none":
        h0 = rng.standard_normal(st_shape).astype(f32)
        c0 = rng.standard_normal(st_shape).astype(f32)
        if hx_kind == "good":
            hx = (h0, c0)
        elif hx_kind == "shape":
            hx = (h0, c0[..., :0] if H else rng.standard_normal((L * D + 1, H)))
            bad += [Bad("hx", ValueError, "shape")]
        elif hx_kind == "notuple":
            hx = h0
            bad += [Bad("hx", TypeError, "tuple")]
        else:
            hx = (h0,)
            bad += [Bad("hx", TypeError, "tuple")]
    lstm.train(data.draw(st.booleans()))
    out, err = call(lstm, x, hx)
    if judge(err, bad, "LSTM.forward"):  # any of the problems may be reported first
        return
    y, (h_n, c_n) = out
    x64 = np.asarray(x, f64)
    if unbatched:
        x64 = x64[:, None, :]
    elif lstm.batch_first:
        x64 = x64.transpose(1, 0, 2)
    h0 = c0 = None
    if hx is not None:
        h0, c0 = (np.asarray(v, f64) for v in hx)
        if unbatched:
            h0, c0 = h0[:, None, :], c0[:, None, :]
    y_r, h_r, c_r = layer_reference(lstm, x64, h0, c0)
    if unbatched:
        y_r, h_r, c_r = y_r[:, 0], h_r[:, 0], c_r[:, 0]
    elif lstm.batch_first:
        y_r = y_r.transpose(1, 0, 2)
    check = close if np.isfinite(x64).all() else same_finiteness
    check(y, y_r, "y")
    check(h_n, h_r, "h_n")
    check(c_n, c_r, "c_n")
    assert h_n.shape == (L * D,) + ((H,) if unbatched else (Bx, H))
    if not lstm.training:
        # A state error, not an argument error: RuntimeError, as PyTorch's.
        CALLS["n"] += 1
        with pytest.raises(RuntimeError, match="^backward: no saved forward"):
            lstm.backward(np.ones_like(y))
        return
    # backward, with a generated dy, twice: gradients accumulate (the second adds the same).
    dy_kind = data.draw(st.sampled_from(["good", "good", "shape", "dtype", "none_states"]))
    dy = rng.standard_normal(y.shape).astype(f32)
    dbad = []
    if dy_kind == "shape":
        dy = dy[..., :-1] if dy.shape[-1] > 0 else np.zeros(dy.shape[:-1] + (1,), f32)
        dbad = [Bad("dy", ValueError, "shape")]
    elif dy_kind == "dtype":
        dy = dy.astype(np.complex64)
        dbad = [Bad("dy", TypeError, "dtype")]
    for p in lstm.parameters():
        p.grad[...] = 0
    r1, err = call(lstm.backward, dy)
    if judge(err, dbad, "LSTM.backward"):
        return
    g1 = [p.grad.copy() for p in lstm.parameters()]
    r2, err = call(lstm.backward, dy)
    assert err is None
    assert np.array_equal(r1[0], r2[0], equal_nan=True)
    for p, g in zip(lstm.parameters(), g1):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-6, atol=1e-6, equal_nan=True)


# ---- threads, info ------------------------------------------------------------------------------


@fuzz(300)
@given(
    st.one_of(
        st.integers(-(2**40), 8),
        st.floats(allow_nan=True),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
        st.just(np.int64(2)),
        st.just([2]),
    )
)
def test_fuzz_set_num_threads(n):
    RAN.add("threads")
    before = lstm_fast.get_num_threads()
    try:
        bad = []
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            bad = [Bad("n", TypeError, "type")]
        elif not 1 <= n <= _core.max_threads():
            bad = [Bad("n", ValueError, "range")]
        _, err = call(lstm_fast.set_num_threads, n)
        if not judge(err, bad, "set_num_threads"):
            assert lstm_fast.get_num_threads() == n
            assert lstm_fast.cpu_info()["num_threads"] == n
    finally:
        lstm_fast.set_num_threads(before)


CRASH_SNIPPET = """
import numpy as np, lstm_fast
from lstm_fast import ops
f = np.float32
{setup}
"""


def run_isolated(setup: str):
    """Run a snippet in a fresh interpreter (it may crash): (returncode, stderr)."""
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("crashes on purpose: not run under the sanitizers (their report would count)")
    r = subprocess.run(
        [sys.executable, "-c", CRASH_SNIPPET.format(setup=textwrap.dedent(setup))],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    return r.returncode, r.stderr[-2000:]


@pytest.mark.parametrize("n", [2**31 - 1])
def test_set_num_threads_huge_is_refused_or_harmless(n):
    CALLS["n"] += 2
    rc, err = run_isolated(
        f"""
        try:
            lstm_fast.set_num_threads({n})
        except ValueError as e:
            assert str(e).startswith("set_num_threads: n:") or "n:" in str(e), e
            raise SystemExit(0)
        x = np.ones((3, 64, 64), f)
        ops.lstm_forward(x, np.ones((256, 64), f) * 0.1, np.ones((256, 64), f) * 0.1)
        """
    )
    assert rc == 0, err


@pytest.mark.parametrize("values", ["[-5, -5, -5]", "[1, 2, 100000]"])
def test_batch_sizes_changed_after_forward(values):
    CALLS["n"] += 2
    rc, err = run_isolated(
        f"""
        T, B, I, H = 3, 2, 4, 8
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(f)
        wi = rng.standard_normal((4 * H, I)).astype(f)
        wh = rng.standard_normal((4 * H, H)).astype(f)
        bs = np.array([2, 2, 1], np.int64)
        y, h, c, cache = ops.lstm_forward(x, wi, wh, training=True, batch_sizes=bs)
        bs[:] = {values}
        try:
            g = ops.lstm_backward(cache, y)
        except ValueError as e:
            assert "batch_sizes" in str(e), e
            raise SystemExit(0)
        # No error: then it must have used the batch sizes of the forward call.
        ref = ops.lstm_forward(x, wi, wh, training=True, batch_sizes=np.array([2, 2, 1]))[3]
        g2 = ops.lstm_backward(ref, y)
        assert np.array_equal(g.dx, g2.dx)
        """
    )
    assert rc == 0, err


@pytest.mark.parametrize("bs", [[[1], [1, 2]], []], ids=["ragged", "empty_list"])
def test_batch_sizes_lists(bs):
    CALLS["n"] += 1
    T = len(bs)
    x = np.zeros((T, 2, 3), f32)
    try:
        ops.lstm_forward(x, np.zeros((8, 3), f32), np.zeros((8, 2), f32), batch_sizes=bs)
    except (ValueError, TypeError) as e:
        assert T and names_argument(str(e), "batch_sizes"), e


def test_info_functions():
    info = lstm_fast.cpu_info()
    assert info["isa"] in info["available_isas"]
    assert lstm_fast.get_num_threads() >= 1
    CALLS["n"] += 2


# ---- the count ----------------------------------------------------------------------------------


def test_zz_generated_call_count(capsys):
    """Prints the number of generated calls (last test of the module)."""
    with capsys.disabled():
        print(f"\n[fuzz] {CALLS['n']} generated calls into lstm_fast (scale {SCALE:g})")
    full = {"forward", "backward", "gemm", "layer", "threads", "cache_changed"}
    if HAS_CELLS:
        full.add("cells")
    if RAN >= full and SCALE >= 1:
        assert CALLS["n"] >= MIN_CALLS
