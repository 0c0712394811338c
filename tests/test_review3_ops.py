"""Third review of the functional API (lstm_fast.ops) and the bindings' argument checks: each test
here failed before its fix."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, nn, ops

f32 = np.float32


def _r(rng, *shape, k=0.5):
    return (rng.standard_normal(shape) * k).astype(f32)


# ---- embedding input: the cache keeps its own ids ------------------------------------------------


def test_core_embedded_cache_keeps_its_own_ids():
    """lstm_forward_embedded kept a reference to an int64 C-contiguous ids array, not a copy:
    refilling the caller's buffer after forward sent the embedding gradient to the new ids'
    rows (and an id out of [0, V) written there made backward scatter outside dembedding)."""
    rng = np.random.default_rng(0)
    T, B, V, I, H = 4, 3, 9, 5, 6
    ids = rng.integers(0, V, (T, B)).astype(np.int64)
    E, w_ih, w_hh = _r(rng, V, I), _r(rng, 4 * H, I), _r(rng, 4 * H, H)
    dy = _r(rng, T, B, H)
    *_, cache = _core.lstm_forward_embedded(ids, E, w_ih, w_hh, None, None, None, None, True)
    want = _core.lstm_backward(cache, dy, None, None)[0].copy()
    ids[...] = (ids + 1) % V  # the caller reuses its buffer for the next batch
    got = _core.lstm_backward(cache, dy, None, None)[0]
    np.testing.assert_array_equal(got, want)


def test_layer_forward_embedded_keeps_its_own_ids():
    """The same through the public layer: LSTM.forward_embedded passes an int64 C-contiguous ids
    array to the core as it is."""
    V, E_dim, H, T, B = 11, 4, 6, 5, 3
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, (T, B)).astype(np.int64)
    dy = _r(rng, T, B, H)
    grads = []
    for refill in (False, True):
        emb = nn.Embedding(V, E_dim, seed=1)
        rnn = lstm_fast.LSTM(E_dim, H, seed=2)
        buf = ids.copy()
        rnn.forward_embedded(buf, emb)
        if refill:
            buf[...] = 0
        rnn.backward(dy)
        grads.append(emb.weight.grad.copy())
    np.testing.assert_array_equal(grads[1], grads[0])


# ---- gemm ----------------------------------------------------------------------------------------


def test_gemm_refuses_row_sums_overlapping_the_bias():
    """a_row_sums (written) sharing memory with the bias (read for every row) was accepted
    without out=: a wrong product (errors ~3 at 4 x 4) and wrong sums."""
    rng = np.random.default_rng(2)
    a, b = _r(rng, 4, 3), _r(rng, 3, 4)
    v = _r(rng, 4)
    before = v.copy()
    with pytest.raises(ValueError, match="a_row_sums: expected memory separate from bias"):
        ops.gemm(a, b, bias=v, a_row_sums=v)
    np.testing.assert_array_equal(v, before)
    with pytest.raises(ValueError, match="a_row_sums: expected memory separate from bias"):
        ops.gemm(a, b, bias=v, a_row_sums=v[::-1][::-1])  # another view of the same memory
    s = np.zeros(4, f32)
    c = ops.gemm(a, b, bias=v, a_row_sums=s)  # separate arrays: fine
    np.testing.assert_allclose(c, a @ b + v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s, a.sum(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"trans_a": "no"},  # truthy: was taken as trans_a=True
        {"trans_b": 1},
        {"trans_b": None},
        {"accumulate": "False"},
        {"trans_a": np.array([True, False])},  # was NumPy's "truth value is ambiguous"
    ],
)
def test_gemm_switches_must_be_bools(kw):
    rng = np.random.default_rng(3)
    a, b = _r(rng, 3, 3), _r(rng, 3, 3)
    out = np.zeros((3, 3), f32)
    name = next(iter(kw))
    with pytest.raises(TypeError, match=rf"^{name}: expected a bool, got "):
        ops.gemm(a, b, out=out, **kw)
    assert not out.any()
    ops.gemm(a, b, trans_a=np.bool_(True), trans_b=False, out=out, accumulate=np.False_)
    np.testing.assert_allclose(out, a.T @ b, rtol=1e-5, atol=1e-6)


# ---- backward: gradient outputs separate from what backward reads --------------------------------


def _training_forward(kind, rng, bias=True):
    """(cache, dy, dh_n, (x, weight_ih, weight_hh, y)) of a small training forward."""
    T, B, I, H, P = 3, 4, 4, 5, 3
    G = {"lstm": 4, "proj": 4, "gru": 3, "rnn": 1}[kind]
    Hin = P if kind == "proj" else H
    x, w_ih, w_hh = _r(rng, T, B, I), _r(rng, G * H, I), _r(rng, G * H, Hin)
    b = (_r(rng, G * H), _r(rng, G * H)) if bias else (None, None)
    h0 = _r(rng, B, Hin)
    if kind == "lstm":
        y, *_, cache = ops.lstm_forward(x, w_ih, w_hh, *b, h0, _r(rng, B, H), training=True)
    elif kind == "proj":
        c0, w_hr = _r(rng, B, H), _r(rng, P, H)
        y, *_, cache = ops.lstm_forward(x, w_ih, w_hh, *b, h0, c0, training=True, weight_hr=w_hr)
    elif kind == "gru":
        y, *_, cache = ops.gru_forward(x, w_ih, w_hh, *b, h0, training=True)
    else:
        y, *_, cache = ops.rnn_forward(x, w_ih, w_hh, *b, h0, training=True)
    return cache, _r(rng, T, B, Hin), _r(rng, B, Hin), (x, w_ih, w_hh, y)


def _core_backward(kind, cache, dy, dh_n, **grads):
    if kind == "lstm":
        return _core.lstm_backward(cache, dy, dh_n, None, **grads)
    if kind == "proj":
        return _core.lstm_proj_backward(cache, dy, dh_n, None, **grads)
    fn = _core.gru_backward if kind == "gru" else _core.rnn_backward
    return fn(cache, dy, dh_n, **grads)


KINDS = ["lstm", "proj", "gru", "rnn"]


@pytest.mark.parametrize("kind", KINDS)
def test_backward_refuses_one_array_for_both_bias_gradients(kind):
    """dbias_ih and dbias_hh given as one array were both accumulated into it: twice the
    gradient, silently (a user who ties the two biases' .grad)."""
    rng = np.random.default_rng(4)
    cache, dy, dh_n, _ = _training_forward(kind, rng)
    d = np.zeros(cache.shape[3] * {"lstm": 4, "proj": 4, "gru": 3, "rnn": 1}[kind], f32)
    with pytest.raises(ValueError, match="dbias_hh: expected memory separate from dbias_ih"):
        _core_backward(kind, cache, dy, dh_n, dbias_ih=d, dbias_hh=d)
    assert not d.any()  # nothing written before the error


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["weight_hh", "dy", "y", "gates"])
def test_backward_refuses_gradient_outputs_overlapping_its_inputs(kind, what):
    """A weight or bias gradient accumulated into memory that backward reads at the same time
    (the cache's weight, the upstream gradient, the forward's y or saved gates the cache
    holds): wrong gradients, no error."""
    if what == "gates" and kind in ("gru", "rnn"):
        pytest.skip("only the LSTM caches show their gates")
    rng = np.random.default_rng(5)
    cache, dy, dh_n, (_, _, w_hh, y) = _training_forward(kind, rng)
    name = "dweight_hh"
    if what == "weight_hh":
        dw = w_hh
    elif what == "dy":  # dy and the gradient: views of one buffer
        buf = np.zeros(dy.size + w_hh.size, f32)
        dy = buf[: dy.size].reshape(dy.shape)
        dy[...] = _r(rng, *dy.shape)
        dw = buf[-w_hh.size - 2 : -2].reshape(w_hh.shape)
    elif what == "y":  # a bias gradient (smaller than y)
        name, dw = "dbias_hh", y.reshape(-1)[-w_hh.shape[0] :]
    else:
        dw = cache.gates.reshape(-1)[-w_hh.size :].reshape(w_hh.shape)
    before = dw.copy()
    with pytest.raises(ValueError, match=f"{name}: expected memory separate from "):
        _core_backward(kind, cache, dy, dh_n, **{name: dw})
    np.testing.assert_array_equal(dw, before)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_accepts_separate_gradient_outputs(kind):
    """Separate caller arrays (views of one flat buffer, side by side) accumulate as before."""
    rng = np.random.default_rng(6)
    cache, dy, dh_n, (_, w_ih, w_hh, _) = _training_forward(kind, rng)
    flat = np.zeros(w_ih.size + w_hh.size, f32)
    d_ih = flat[: w_ih.size].reshape(w_ih.shape)
    d_hh = flat[w_ih.size :].reshape(w_hh.shape)
    out = _core_backward(kind, cache, dy, dh_n, dweight_ih=d_ih, dweight_hh=d_hh)
    fresh = _core_backward(kind, cache, dy, dh_n)
    names = {"lstm": (3, 4), "proj": (3, 4), "gru": (2, 3), "rnn": (2, 3)}[kind]
    np.testing.assert_allclose(d_ih, fresh[names[0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(d_hh, fresh[names[1]], rtol=1e-6, atol=1e-7)
    assert np.shares_memory(out[names[0]], flat)


def test_embedded_backward_refuses_dembedding_overlapping_the_embedding():
    rng = np.random.default_rng(7)
    T, B, V, I, H = 3, 2, 6, 4, 5
    ids = rng.integers(0, V, (T, B))
    E, w_ih, w_hh = _r(rng, V, I), _r(rng, 4 * H, I), _r(rng, 4 * H, H)
    *_, cache = _core.lstm_forward_embedded(ids, E, w_ih, w_hh, None, None, None, None, True)
    before = E.copy()
    with pytest.raises(ValueError, match="dembedding: expected memory separate from cache's"):
        _core.lstm_backward(cache, _r(rng, T, B, H), None, None, dembedding=E)
    np.testing.assert_array_equal(E, before)


# ---- backward: every array the cache reads is checked for a resize -------------------------------

_RESIZE = """
import numpy as np
from lstm_fast import ops
rng = np.random.default_rng(0)
f32 = np.float32
def r(*s):
    return (rng.standard_normal(s) * 0.5).astype(f32)
T, B, I, H, P = 3, 4, 5, 6, 2

def forward(kind):
    G = {"lstm": 4, "proj": 4, "gru": 3, "rnn": 1}[kind]
    Hin = P if kind == "proj" else H
    h0, c0 = r(B, Hin), r(B, H)
    x, w_ih, w_hh = r(T, B, I), r(G * H, I), r(G * H, Hin)
    if kind == "lstm":
        out = ops.lstm_forward(x, w_ih, w_hh, None, None, h0, c0, training=True)
        back = lambda c: ops.lstm_backward(c, r(T, B, H))
    elif kind == "proj":
        out = ops.lstm_forward(x, w_ih, w_hh, None, None, h0, c0, training=True,
                               weight_hr=r(P, H))
        back = lambda c: ops.lstm_backward(c, r(T, B, P))
    elif kind == "gru":
        out = ops.gru_forward(x, w_ih, w_hh, None, None, h0, training=True)
        back = lambda c: ops.gru_backward(c, r(T, B, H))
    else:
        out = ops.rnn_forward(x, w_ih, w_hh, None, None, h0, training=True)
        back = lambda c: ops.rnn_backward(c, r(T, B, H))
    return out[-1], back, {"h0": h0, "c0": c0}

for kind, which in CASES:
    cache, back, states = forward(kind)
    a = states[which] if which in states else getattr(cache, which)
    a.resize((1,), refcheck=False)  # frees the memory the cache would read
    del a
    try:
        back(cache)
        print(kind, which, "ran")
    except ValueError as e:
        print(kind, which, "ValueError", e)
"""


def test_backward_refuses_saved_arrays_resized_since_forward():
    """h0, c0 and the cache's own gates / cells / m (reachable as cache.gates etc.), resized in
    place after forward (ndarray.resize(refcheck=False) frees the memory): backward read the
    freed blocks (x, the weights and y were checked, these were not). In a subprocess: reading
    freed memory may crash."""
    cases = [("lstm", "h0"), ("lstm", "c0"), ("lstm", "gates"), ("lstm", "cells")]
    cases += [("proj", "h0"), ("proj", "c0"), ("proj", "gates"), ("proj", "m")]
    cases += [("gru", "h0"), ("rnn", "h0")]
    code = f"CASES = {cases!r}\n" + textwrap.dedent(_RESIZE)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(cases), proc.stdout + proc.stderr
    for (kind, which), line in zip(cases, lines):
        assert line.startswith(f"{kind} {which} ValueError cache: {which} was reshaped"), line


# ---- the streaming step's workspace size ---------------------------------------------------------


@pytest.mark.parametrize(
    "B, I, H, error",
    [
        (-5, 3, 4, r"^B: expected a size >= 0, got -5"),
        (2, -1, 4, r"^I: expected a size >= 0, got -1"),
        (2, 3, -4, r"^H: expected a size >= 0, got -4"),
        (1 << 40, 3, 1 << 40, r"^B: these sizes need workspace"),  # wrapped around to 64
    ],
)
def test_step_workspace_size_checks_its_sizes(B, I, H, error):
    """A negative size gave a negative workspace size, a huge one a wrapped-around small one."""
    with pytest.raises(ValueError, match=error):
        _core.step_workspace_size("LSTM", B, I, H)
    assert _core.step_workspace_size("LSTM", 0, 0, 0) >= 0
    assert _core.step_workspace_size("GRU", 3, 2, 5) >= 2 * 3 * 15
