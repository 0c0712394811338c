"""The C++ LSTM core against the float64 NumPy reference, on every ISA path this CPU has."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, ops, reference

FWD_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)


def make_problem(rng, T, B, I, H, *, bias=True, state=True, scale=None):
    # PyTorch's initialisation range U(-1/sqrt(H), 1/sqrt(H)) unless given.
    scale = 1.0 / np.sqrt(H) if scale is None else scale
    w = {
        "weight_ih": rng.uniform(-scale, scale, (4 * H, I)),
        "weight_hh": rng.uniform(-scale, scale, (4 * H, H)),
        "bias_ih": rng.uniform(-scale, scale, 4 * H) if bias else None,
        "bias_hh": rng.uniform(-scale, scale, 4 * H) if bias else None,
    }
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5 if state else None
    c0 = rng.standard_normal((B, H)) * 0.5 if state else None
    return x, w, h0, c0


def f32(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def run_both(x, w, h0, c0, dy, dhn, dcn):
    """Forward + backward in C++ (float32) and in the reference (float64)."""
    args32 = [f32(a) for a in (x, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"])]
    y, hn, cn, cache = ops.lstm_forward(*args32, f32(h0), f32(c0), training=True)
    g = ops.lstm_backward(cache, f32(dy), f32(dhn), f32(dcn))
    ry, rhn, rcn, rcache = reference.lstm_forward(
        x, w["weight_ih"], w["weight_hh"], w["bias_ih"], w["bias_hh"], h0, c0
    )
    rg = reference.lstm_backward(rcache, dy, dhn, dcn)
    return (y, hn, cn, g), (ry, rhn, rcn, rg)


def assert_matches(ours, ref, bias=True):
    (y, hn, cn, g), (ry, rhn, rcn, rg) = ours, ref
    np.testing.assert_allclose(y, ry, **FWD_TOL, err_msg="y")
    np.testing.assert_allclose(hn, rhn, **FWD_TOL, err_msg="h_n")
    np.testing.assert_allclose(cn, rcn, **FWD_TOL, err_msg="c_n")
    for name in ("dx", "dh0", "dc0", "dweight_ih", "dweight_hh") + (
        ("dbias_ih", "dbias_hh") if bias else ()
    ):
        np.testing.assert_allclose(getattr(g, name), getattr(rg, name), **GRAD_TOL, err_msg=name)
    if not bias:
        assert g.dbias_ih is None and g.dbias_hh is None


# Shapes that hit every SIMD tail: H in 1, 7, 8, 17, 64, 130; B in 1, 3, 16; T in 1, 5, 33;
# I in 1, 5, 64. The full grid for small T, a covering subset for T = 33.
GRID = [
    (T, B, I, H)
    for T, B, I, H in itertools.product([1, 5, 33], [1, 3, 16], [1, 5, 64], [1, 7, 8, 17, 64, 130])
    if T < 33 or (B, I) in [(1, 1), (3, 64), (16, 5)]
]


@pytest.mark.parametrize("T,B,I,H", GRID)
def test_forward_backward_match_reference(isa, T, B, I, H):
    rng = np.random.default_rng(hash((T, B, I, H)) % 2**32)
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    dy = rng.standard_normal((T, B, H))
    dhn = rng.standard_normal((B, H))
    dcn = rng.standard_normal((B, H))
    # Round the inputs to float32 first so both sides see the same numbers.
    x, h0, c0 = (f32(a).astype(np.float64) for a in (x, h0, c0))
    w = {k: f32(v).astype(np.float64) for k, v in w.items()}
    assert_matches(*run_both(x, w, h0, c0, dy, dhn, dcn))


@pytest.mark.parametrize(
    "bias,state,upstream",
    [(False, False, "dy"), (True, False, "dh_n"), (False, True, "dc_n"), (True, True, "none")],
)
def test_optional_arguments(isa, bias, state, upstream):
    rng = np.random.default_rng(7)
    T, B, I, H = 6, 5, 9, 19
    x, w, h0, c0 = make_problem(rng, T, B, I, H, bias=bias, state=state)
    x = f32(x).astype(np.float64)
    w = {k: None if v is None else f32(v).astype(np.float64) for k, v in w.items()}
    h0, c0 = (None if a is None else f32(a).astype(np.float64) for a in (h0, c0))
    dy = rng.standard_normal((T, B, H)) if upstream == "dy" else None
    dhn = rng.standard_normal((B, H)) if upstream == "dh_n" else None
    dcn = rng.standard_normal((B, H)) if upstream == "dc_n" else None
    ours, ref = run_both(x, w, h0, c0, dy, dhn, dcn)
    assert_matches(ours, ref, bias=bias)
    if upstream == "none":
        g = ours[3]
        assert not np.any(g.dx) and not np.any(g.dweight_hh)


# The last unit block of W_hh's packed panels: full, packed densely (its n < W units' four gates
# side by side, when 4n <= 3W), or padded (4n > 3W). Hidden sizes whose last block holds each
# number of units for W = 4, 8 and 16, with 1-5 rows (whole-depth tiles), 7 and 13 rows (depth
# chunks) and a depth of 200+ (chunks at any row count; 530: chunks of 512 and 18 where the
# chunked sweep walks the depth in chunks of 512, AVX-512 on AMD Zen 4).
@pytest.mark.parametrize("H", [1, 3, 4, 5, 9, 12, 13, 15, 16, 20, 28, 29, 31, 100, 205, 211, 530])
@pytest.mark.parametrize("B", [1, 3, 7, 13])
def test_last_unit_block_layouts(isa, H, B):
    rng = np.random.default_rng(1000 * H + B)
    T, I = 3, 5
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    x, h0, c0 = (f32(a).astype(np.float64) for a in (x, h0, c0))
    w = {k: f32(v).astype(np.float64) for k, v in w.items()}
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    ry, rhn, rcn, _ = reference.lstm_forward(x, *w.values(), h0, c0)
    before = lstm_fast.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            lstm_fast.set_num_threads(threads)
            for training in (False, True):
                outs.append(ops.lstm_forward(*args, training=training)[:3])
    finally:
        lstm_fast.set_num_threads(before)
    y, hn, cn = outs[0]
    np.testing.assert_allclose(y, ry, **FWD_TOL)
    np.testing.assert_allclose(hn, rhn, **FWD_TOL)
    np.testing.assert_allclose(cn, rcn, **FWD_TOL)
    for other in outs[1:]:  # bitwise: any thread count, inference or training
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


def test_inference_equals_training_forward(isa, rng):
    x, w, h0, c0 = make_problem(rng, 40, 7, 13, 33)
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    y1, h1, c1, cache1 = ops.lstm_forward(*args)
    y2, h2, c2, cache2 = ops.lstm_forward(*args, training=True)
    assert cache1 is None and cache2 is not None
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)
    np.testing.assert_array_equal(c1, c2)


def test_long_sequence_crosses_projection_chunks(isa, rng):
    # B * 4H * T above the 2^20 floats the hoisted projection computes at once: chunks of
    # 2^18 / (B * 4H) = 7 steps.
    T, B, I, H = 70, 64, 3, 130
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    x, h0, c0 = (f32(a).astype(np.float64) for a in (x, h0, c0))
    w = {k: f32(v).astype(np.float64) for k, v in w.items()}
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    y, hn, cn, _ = ops.lstm_forward(*args)
    ry, rhn, rcn, _ = reference.lstm_forward(x, *w.values(), h0, c0)
    np.testing.assert_allclose(y, ry, **FWD_TOL)
    np.testing.assert_allclose(cn, rcn, **FWD_TOL)


@pytest.mark.parametrize("case", ["one_step_no_state", "all_lengths_zero", "accumulate"])
def test_weight_gradients_written_in_full(isa, case):
    """Weight and bias gradients allocated by lstm_backward are written, not added to zeros:
    every element must be set even where no product reaches it (one step from a zero state:
    dweight_hh = 0; all lengths zero: every gradient 0), though recycled memory holds NaN;
    arrays the caller passes in are still added to."""
    from lstm_fast import _core

    rng = np.random.default_rng(11)
    T, B, I, H = (1, 1, 37, 130) if case == "one_step_no_state" else (3, 2, 5, 7)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, state=case == "accumulate")
    shapes = [(4 * H, I), (4 * H, H), (4 * H,), (4 * H,)]
    for _ in range(3):  # leave NaN-filled blocks of the right sizes for the allocator to reuse
        junk = [np.full(sh, np.nan, np.float32) for sh in shapes]
        del junk
    bs = np.zeros(T, np.int64) if case == "all_lengths_zero" else None
    args = [f32(a) for a in (x, *w.values())] + [None if a is None else f32(a) for a in (h0, c0)]
    y, hn, cn, cache = ops.lstm_forward(*args, training=True, batch_sizes=bs)
    dy = f32(rng.standard_normal(y.shape))
    g = ops.lstm_backward(cache, dy)
    grads = [g.dweight_ih, g.dweight_hh, g.dbias_ih, g.dbias_hh]
    assert all(np.isfinite(a).all() for a in grads)
    if case == "one_step_no_state":
        assert not np.any(g.dweight_hh)
        rg = reference.lstm_backward(
            reference.lstm_forward(*[a.astype(np.float64) for a in args[:5]], None, None)[3],
            dy.astype(np.float64),
        )
        for name in ("dweight_ih", "dbias_ih", "dbias_hh"):
            np.testing.assert_allclose(getattr(g, name), getattr(rg, name), **GRAD_TOL)
    elif case == "all_lengths_zero":
        assert not any(np.any(a) for a in grads)
    else:
        given = [f32(rng.standard_normal(sh)) for sh in shapes]
        out = [a.copy() for a in given]
        _core.lstm_backward(cache, dy, None, None, *out)
        for a, b, c in zip(out, given, grads):
            np.testing.assert_allclose(a, b + c, rtol=1e-6, atol=1e-6)


def test_backward_twice_gives_same_result(rng):
    x, w, h0, c0 = make_problem(rng, 5, 3, 4, 6)
    y, _, _, cache = ops.lstm_forward(*[f32(a) for a in (x, *w.values(), h0, c0)], training=True)
    dy = f32(rng.standard_normal(y.shape))
    g1 = ops.lstm_backward(cache, dy)
    g2 = ops.lstm_backward(cache, dy)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("T,B,I,H", [(0, 3, 4, 5), (4, 0, 4, 5), (3, 2, 0, 5)])
def test_zero_sizes(T, B, I, H):
    rng = np.random.default_rng(0)
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    y, hn, cn, cache = ops.lstm_forward(*args, training=True)
    assert y.shape == (T, B, H) and hn.shape == (B, H)
    ry, rhn, rcn, _ = reference.lstm_forward(*[a.astype(np.float64) for a in args])
    np.testing.assert_allclose(hn, rhn, **FWD_TOL)
    np.testing.assert_allclose(y, ry, **FWD_TOL)
    g = ops.lstm_backward(cache, f32(rng.standard_normal((T, B, H))), f32(np.ones((B, H))))
    assert g.dx.shape == (T, B, I) and g.dweight_ih.shape == (4 * H, I)
    if T == 0:
        np.testing.assert_array_equal(g.dh0, np.ones((B, H), np.float32))


# ---- determinism: bitwise identical for any thread count and schedule --------------------------


@pytest.mark.parametrize(
    "T,B,I,H",
    [
        (9, 16, 33, 64),
        (5, 3, 17, 130),
        (12, 1, 5, 40),
        (4, 40, 8, 7),
        (2, 2, 9, 70),
        (3, 30, 9, 300),  # the step sweep prefetches its next panel chunks (W_hh 1.4 MiB)
    ],
)
def test_bitwise_identical_across_threads_and_schedules(isa, threads, schedule, T, B, I, H):
    rng = np.random.default_rng(3)
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    dy = f32(rng.standard_normal((T, B, H)))
    dhn = f32(rng.standard_normal((B, H)))
    results = []
    for n, sched in [
        (1, "auto"),
        (2, "auto"),
        (2, "units"),
        (2, "batch"),
        (2, "serial"),
        (3, "units"),
    ]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        y, hn, cn, cache = ops.lstm_forward(*args, training=True)
        g = ops.lstm_backward(cache, dy, dhn)
        results.append((n, sched, [y, hn, cn, *g]))
    base = results[0][2]
    for n, sched, arrays in results[1:]:
        for a, b in zip(base, arrays):
            assert a.tobytes() == b.tobytes(), f"threads={n} schedule={sched} differs"


# The batch split without lengths: each thread computes its own rows' input projection inside its
# recurrence's team region, in blocks of steps of at least 64 rows (W_hh up to 4 MiB, two rows or
# more). Inference and training, blocks of one step (more than 64 rows per thread) and of many,
# one projection chunk and several (T * B * 4H above 2^20 floats), with and without bias, row
# counts that leave the threads unequal shares: bitwise the serial results, and the float64
# reference.
@pytest.mark.parametrize(
    "T,B,I,H,bias",
    [
        (7, 8, 5, 16, True),
        (9, 3, 4, 7, True),  # one row for one of the threads on 2 threads
        (7, 40, 5, 16, True),
        (5, 150, 3, 9, False),  # 75 and 50 rows per thread: blocks of one step
        (600, 37, 5, 64, True),
        (300, 26, 19, 33, False),
        (40, 64, 20, 100, True),
        (6, 30, 9, 400, True),  # W_hh of 2.4 MiB (the own-rows split goes up to 4 MiB)
        # W_ih^T of 1.2 MiB, over half of L2: blocks of up to 256 rows beyond a step's
        (24, 30, 300, 256, True),
    ],
)
@pytest.mark.parametrize("training", [False, True])
def test_batch_split_own_projection(isa, schedule, T, B, I, H, bias, training):
    rng = np.random.default_rng(T + B + H)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, bias=bias)
    x, h0, c0 = (f32(a).astype(np.float64) for a in (x, h0, c0))
    w = {k: None if v is None else f32(v).astype(np.float64) for k, v in w.items()}
    args = [None if a is None else f32(a) for a in (x, *w.values(), h0, c0)]
    before = lstm_fast.get_num_threads()
    outs = []
    try:
        for n, sched in [(1, "auto"), (2, "batch"), (3, "batch")]:
            lstm_fast.set_num_threads(n)
            schedule(sched)
            outs.append(ops.lstm_forward(*args, training=training)[:3])
    finally:
        lstm_fast.set_num_threads(before)
    ry, rhn, rcn, _ = reference.lstm_forward(x, *w.values(), h0, c0)
    np.testing.assert_allclose(outs[0][0], ry, **FWD_TOL)
    np.testing.assert_allclose(outs[0][1], rhn, **FWD_TOL)
    np.testing.assert_allclose(outs[0][2], rcn, **FWD_TOL)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("state", [True, False])
@pytest.mark.parametrize(
    "T,B,I,H",
    [
        (7, 5, 3, 17),  # both weight gradients from one product (dZ^T packed once)
        (1, 4, 9, 7),  # one step: with h0 the joint product, without it dW_hh is zero
        (40, 64, 200, 200),  # ten depth blocks of the joint product
        (2, 3, 1100, 1000),  # a depth block wider than half of any L2: one product each
    ],
)
def test_weight_gradient_paths(isa, threads, state, T, B, I, H):
    """dW_ih and dW_hh come from one product sharing dZ^T (gemm_dual) or from one product each
    (wide operands): both against the float64 reference, bitwise the same on 1 and 2 threads,
    and added to arrays the caller passes in."""
    rng = np.random.default_rng(T * B + I + H)
    x, w, h0, c0 = make_problem(rng, T, B, I, H, state=state)
    x = f32(x).astype(np.float64)
    w = {k: f32(v).astype(np.float64) for k, v in w.items()}
    h0, c0 = (None if a is None else f32(a).astype(np.float64) for a in (h0, c0))
    dy = rng.standard_normal((T, B, H))
    (_, _, _, g), (_, _, _, rg) = run_both(x, w, h0, c0, dy, None, None)
    # float32 sums over T * B = 2,560 rows or I + H = 2,100 columns: a looser absolute tolerance
    tol = GRAD_TOL if T * B < 1000 and I + H < 1000 else dict(rtol=1e-4, atol=1e-4)
    for name in ("dx", "dh0", "dc0", "dweight_ih", "dweight_hh", "dbias_ih", "dbias_hh"):
        np.testing.assert_allclose(getattr(g, name), getattr(rg, name), **tol, err_msg=name)
    args = [f32(a) for a in (x, *w.values())] + [f32(h0), f32(c0)]
    grads = []
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        _, _, _, cache = ops.lstm_forward(*args, training=True)
        grads.append(ops.lstm_backward(cache, f32(dy)))
        given = [f32(rng.standard_normal(a.shape)) for a in (w["weight_ih"], w["weight_hh"])]
        out = [a.copy() for a in given]
        _core.lstm_backward(cache, f32(dy), None, None, out[0], out[1])
        for a, b, name in zip(out, given, ("dweight_ih", "dweight_hh")):
            np.testing.assert_allclose(a, b + getattr(grads[-1], name), rtol=1e-5, atol=1e-5)
    for name in ("dweight_ih", "dweight_hh", "dbias_ih", "dx"):
        assert getattr(grads[0], name).tobytes() == getattr(grads[1], name).tobytes(), name


def test_backward_with_lengths_without_padding(isa, threads):
    # batch_sizes that pad nothing run the dense backward in a workspace sized for lengths
    # (a weight-gradient path that assumed otherwise wrote past its end: heap corruption)
    rng = np.random.default_rng(5)
    T, B, I, H = 6, 4, 5, 9
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    dy = f32(rng.standard_normal((T, B, H)))
    _, _, _, dense = ops.lstm_forward(*args, training=True)
    _, _, _, full = ops.lstm_forward(*args, training=True, batch_sizes=np.full(T, B))
    g_dense, g_full = ops.lstm_backward(dense, dy), ops.lstm_backward(full, dy)
    for a, b in zip(g_dense, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- activations ----------------------------------------------------------------------------


def test_activation_accuracy(isa):
    x = np.concatenate(
        [np.linspace(-30, 30, 200001), np.geomspace(1e-8, 1, 10001), -np.geomspace(1e-8, 1, 10001)]
    ).astype(np.float32)
    x64 = x.astype(np.float64)
    sig = _core.sigmoid(x)
    th = _core.tanh(x)
    ref_sig = 1 / (1 + np.exp(-x64))
    ref_th = np.tanh(x64)
    # Documented bound: max abs error 3e-7 and max relative error 5e-7 (float32 ulp is 6e-8).
    assert np.max(np.abs(sig - ref_sig)) < 3e-7
    assert np.max(np.abs(th - ref_th)) < 3e-7
    mask = np.abs(ref_th) > 1e-30
    assert np.max(np.abs(th - ref_th)[mask] / np.abs(ref_th[mask])) < 5e-7


def test_activation_extremes(isa):
    x = np.array([-1e30, -1000, -89, -88, 88, 89, 1000, 1e30, np.inf, -np.inf, 0.0], np.float32)
    with np.errstate(all="raise"):
        sig = _core.sigmoid(x)
        th = _core.tanh(x)
    assert np.all(np.isfinite(sig)) and np.all(np.isfinite(th))
    np.testing.assert_allclose(sig, [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0.5], atol=1e-30)
    np.testing.assert_allclose(th, [-1, -1, -1, -1, 1, 1, 1, 1, 1, -1, 0], atol=0)
    nan = np.array([np.nan], np.float32)
    assert np.isnan(_core.sigmoid(nan)[0]) and np.isnan(_core.tanh(nan)[0])


def test_nan_propagates_without_crash(isa):
    rng = np.random.default_rng(1)
    x, w, h0, c0 = make_problem(rng, 4, 3, 5, 9)
    x[2, 1, 3] = np.nan
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    y, hn, cn, cache = ops.lstm_forward(*args, training=True)
    assert np.all(np.isfinite(y[:2])) and np.all(np.isnan(y[2:, 1]))
    g = ops.lstm_backward(cache, f32(np.ones(y.shape)))
    assert np.isnan(g.dweight_ih).any()


# ---- GEMM -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "M,N,K", [(1, 1, 1), (7, 17, 5), (33, 65, 300), (150, 40, 513), (3, 200, 0)]
)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_gemm_matches_numpy(isa, threads, M, N, K, ta, tb):
    rng = np.random.default_rng(M * 1000 + N)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    outs = []
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        c = ops.gemm(a, b, trans_a=ta, trans_b=tb)
        np.testing.assert_allclose(c, want, rtol=1e-4, atol=1e-4 * max(1, K) ** 0.5)
        outs.append(c)
    assert outs[0].tobytes() == outs[1].tobytes()


# The last column panel of every width 1..NR-1 (AVX-512 computes widths up to 8 with A's rows
# as the vector lanes): each against float64 NumPy, written and accumulated, with a bias, and
# bitwise the same for 1 and 2 threads and (packed path) whichever panel a column falls in.
@pytest.mark.parametrize("N", [1, 2, 3, 5, 8, 9, 12, 16, 31, 33, 36, 40, 41, 65, 100])
@pytest.mark.parametrize("M", [1, 4, 7, 12, 29])
def test_gemm_last_column_panel_widths(isa, N, M):
    rng = np.random.default_rng(10 * N + M)
    K = 300
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = dict(rtol=1e-4, atol=1e-4 * K**0.5)
    before = lstm_fast.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            lstm_fast.set_num_threads(n)
            c = ops.gemm(a, b, bias=bias)
            np.testing.assert_allclose(c, want + bias, **tol)
            acc = c0.copy()
            ops.gemm(a, b, out=acc, accumulate=True)
            np.testing.assert_allclose(acc, c0 + want, **tol)
            outs.append((c.tobytes(), acc.tobytes()))
            if M > 2:  # (one or two rows take dot-product paths with their own order)
                wide = ops.gemm(a, np.concatenate([b, b], axis=1))  # the columns elsewhere
                np.testing.assert_array_equal(wide[:, N:], ops.gemm(a, b))
                np.testing.assert_array_equal(wide[:, :N], wide[:, N:])
    finally:
        lstm_fast.set_num_threads(before)
    assert outs[0] == outs[1]


def _at_offset(a, offset):
    """A copy of ``a`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


# Matrices read as rows (x . W^T with one or two rows of x, the few-step LSTM) may start
# anywhere: NumPy's arrays are 16-byte aligned, and the AVX-512 GEMV reads rows that start off a
# 64-byte boundary as aligned vectors with rotated lanes. The results must not depend on where
# the matrix starts, bitwise (also for a row of x that is all zeros against negative weights,
# where every product is -0).
@pytest.mark.parametrize("K", [1, 7, 15, 16, 17, 32, 48, 100, 256, 300])
def test_row_products_do_not_depend_on_alignment(isa, threads, K):
    rng = np.random.default_rng(K)
    a = rng.standard_normal((2, K)).astype(np.float32)
    a[1] = 0.0
    want = None
    for N in (1, 5, 9, 64):
        b = rng.standard_normal((N, K)).astype(np.float32)
        b[N // 2] = -np.abs(b[N // 2])
        ref = a.astype(np.float64) @ b.astype(np.float64).T
        for n in (1, 2):
            lstm_fast.set_num_threads(n)
            want = ops.gemm(a, b, trans_b=True)
            np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4 * K**0.5)
            for offset in range(0, 64, 4):
                got = ops.gemm(a, _at_offset(b, offset), trans_b=True)
                assert got.tobytes() == want.tobytes(), (N, n, offset)
                acc = np.full_like(want, -0.0)
                ops.gemm(a, _at_offset(b, offset), trans_b=True, out=acc, accumulate=True)
                assert acc.tobytes() == (np.full_like(want, -0.0) + want).tobytes(), (N, offset)


@pytest.mark.parametrize(
    "T,B,I,H", [(1, 1, 256, 256), (1, 3, 16, 32), (2, 1, 7, 17), (1, 4, 48, 16)]
)
def test_few_step_lstm_does_not_depend_on_weight_alignment(isa, threads, T, B, I, H):
    rng = np.random.default_rng(T * B + I + H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    w = [rng.uniform(-0.3, 0.3, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H))]
    b = [rng.uniform(-0.3, 0.3, 4 * H).astype(np.float32) for _ in range(2)]
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    y_ref, hn_ref, cn_ref, _ = reference.lstm_forward(x, *w, *b, h0, c0)
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        base = None
        for offset in (0, 4, 16, 36, 60):
            wo = [_at_offset(m, offset) for m in w]
            xo, ho = _at_offset(x, offset), _at_offset(h0, offset)
            y, h_n, c_n, _ = ops.lstm_forward(xo, *wo, *b, ho, c0)
            _, _, _, cache = ops.lstm_forward(x, *wo, *b, h0, c0, training=True)
            grads = ops.lstm_backward(cache, dy)
            got = [y, h_n, c_n, *(g for g in grads if g is not None)]
            if base is None:
                np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(c_n, cn_ref, rtol=1e-5, atol=1e-5)
                base = got
            for u, v in zip(got, base):
                assert u.tobytes() == v.tobytes(), offset


# The few-step LSTM computes x . W_ih^T and h . W_hh^T as dot products over the weights' rows,
# four batch rows at a time and the rest (B % 4) together: a row's result must not depend on
# which group it fell in (the AVX2 kernel once left one of four sums in a depth tail unfused, so
# a row's output changed with the batch size), nor on the thread count.
@pytest.mark.parametrize("I,H", [(17, 17), (33, 20), (7, 9), (100, 100)])
def test_few_step_rows_do_not_depend_on_the_batch(isa, threads, I, H):
    rng = np.random.default_rng(I + H)
    B = 7
    x = rng.standard_normal((1, B, I)).astype(np.float32)
    w = [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((4 * H, I), (4 * H, H))]
    b = [rng.uniform(-0.5, 0.5, 4 * H).astype(np.float32) for _ in range(2)]
    h0 = rng.standard_normal((B, H)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        y, h_n, c_n, _ = ops.lstm_forward(x, *w, *b, h0, c0)
        for lo, hi in ((0, 1), (1, 3), (3, 6), (6, 7), (2, 7)):
            part = ops.lstm_forward(x[:, lo:hi].copy(), *w, *b, h0[lo:hi].copy(), c0[lo:hi].copy())
            np.testing.assert_array_equal(part[0], y[:, lo:hi])
            np.testing.assert_array_equal(part[2], c_n[lo:hi])


@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (2, 9, 7), (17, 33, 300), (150, 40, 513), (5, 0, 9)])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (True, True)])
def test_gemm_out_accumulate_and_row_sums(isa, threads, M, N, K, ta, tb):
    """out= / accumulate= write or add into a given array; a_row_sums += the row sums of op(a),
    taken while a is packed (every layout, thread split and the unpacked small-M path)."""
    rng = np.random.default_rng(M * 100 + N + K)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    oa = (a.T if ta else a).astype(np.float64)
    want = oa @ (b.T if tb else b).astype(np.float64)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    s0 = rng.standard_normal(M).astype(np.float32)
    outs = []
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        c, s = c0.copy(), s0.copy()
        r = ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c, accumulate=True, a_row_sums=s)
        assert r is c or np.shares_memory(r, c)
        np.testing.assert_allclose(c, c0 + want, rtol=1e-4, atol=1e-4 * max(1, K) ** 0.5)
        np.testing.assert_allclose(s, s0 + oa.sum(1), rtol=1e-5, atol=1e-4 * max(1, K) ** 0.5)
        outs.append((c.tobytes(), s.tobytes()))
        c2 = np.full((M, N), np.nan, np.float32)
        ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c2)  # overwrite, NaN in out never read
        np.testing.assert_allclose(c2, want, rtol=1e-4, atol=1e-4 * max(1, K) ** 0.5)
    assert outs[0] == outs[1]


@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("M,N,K", [(1000, 1100, 1000), (1000, 300, 700)])
def test_gemm_row_chunks_bitwise(threads, tb, M, N, K):
    """Row-split GEMMs: chunks of rows handed out dynamically (B up to 4 MiB packed) or halves
    of the rows (a larger B): with bias, accumulate and row sums, bitwise the same result on 1,
    2 and 3 threads, equal to the float64 product."""
    rng = np.random.default_rng(7)
    # 84 row slivers; packed B 1,120 x 1,000 floats (over 4 MiB) or 320 x 700 (chunks)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    want = a.astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    outs = []
    for n in (1, 2, 3):
        lstm_fast.set_num_threads(n)
        c = ops.gemm(a, b, trans_b=tb, bias=bias)
        d, s = c0.copy(), np.zeros(M, np.float32)
        ops.gemm(a, b, trans_b=tb, out=d, accumulate=True, a_row_sums=s)
        outs.append((c.tobytes(), d.tobytes(), s.tobytes()))
    np.testing.assert_allclose(
        np.frombuffer(outs[0][0], np.float32).reshape(M, N), want + bias, rtol=1e-4, atol=2e-3
    )
    np.testing.assert_allclose(
        np.frombuffer(outs[0][1], np.float32).reshape(M, N), want + c0, rtol=1e-4, atol=2e-3
    )
    np.testing.assert_allclose(
        np.frombuffer(outs[0][2], np.float32), a.sum(1), rtol=1e-4, atol=1e-3
    )
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("N,K", [(1, 1), (17, 7), (129, 300), (300, 513)])
@pytest.mark.parametrize("ta", [False, True])
def test_gemm_one_row_times_matrix_matches_packed(isa, threads, N, K, ta):
    """One or two rows times a row-major B (dx = dz . W_ih at batch 1) run without packing B,
    by depth blocks as the packed GEMM sums them: bitwise the rows of a larger (packed) product,
    with and without bias and accumulate, any thread count; a transposed A is read by stride."""
    rng = np.random.default_rng(N * 7 + K)
    a = rng.standard_normal((K, 5) if ta else (5, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    c0 = rng.standard_normal((5, N)).astype(np.float32)
    full = ops.gemm(a, b, trans_a=ta)
    full_bias = ops.gemm(a, b, trans_a=ta, bias=bias)
    full_acc = c0.copy()
    ops.gemm(a, b, trans_a=ta, out=full_acc, accumulate=True)
    np.testing.assert_allclose(
        full, (a.T if ta else a).astype(np.float64) @ b, rtol=1e-4, atol=1e-4 * K**0.5
    )
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        for m in (1, 2):
            part = np.ascontiguousarray(a[:, :m] if ta else a[:m])
            assert ops.gemm(part, b, trans_a=ta).tobytes() == full[:m].tobytes()
            assert ops.gemm(part, b, trans_a=ta, bias=bias).tobytes() == full_bias[:m].tobytes()
            acc = c0[:m].copy()
            s = np.zeros(m, np.float32)
            ops.gemm(part, b, trans_a=ta, out=acc, accumulate=True, a_row_sums=s)
            assert acc.tobytes() == full_acc[:m].tobytes()
            np.testing.assert_allclose(s, (part.T if ta else part).sum(1), rtol=1e-5, atol=1e-4)


def test_gemm_out_arguments():
    a = np.ones((3, 4), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"out: expected shape \(M=3, N=5\)"):
        ops.gemm(a, b, out=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="accumulate: expected an out array"):
        ops.gemm(a, b, accumulate=True)
    with pytest.raises(ValueError, match="bias: expected None with accumulate"):
        out = np.zeros((3, 5), np.float32)
        ops.gemm(a, b, out=out, accumulate=True, bias=np.ones(5, np.float32))
    with pytest.raises(ValueError, match="a_row_sums: expected shape"):
        ops.gemm(a, b, a_row_sums=np.zeros(4, np.float32))
    big = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="out: expected memory separate from b"):
        ops.gemm(np.ones((4, 4), np.float32), big[:4], out=big[:4])
    s = np.zeros(3, np.float32)
    s.flags.writeable = False
    with pytest.raises(ValueError, match="a_row_sums: expected a writeable array"):
        ops.gemm(a, b, a_row_sums=s)


# ---- variable lengths (batch_sizes, PackedSequence layout) ---------------------------------


def sorted_lengths(rng, T, B):
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0] = T
    if B > 2:
        lengths[-1] = 0
    return np.sort(lengths)[::-1].copy()


@pytest.mark.parametrize("T,B,I,H", [(7, 5, 3, 9), (12, 16, 17, 33), (3, 3, 5, 1), (2, 2, 4, 8)])
def test_batch_sizes_match_reference_lengths(isa, T, B, I, H):
    rng = np.random.default_rng(T * B + H)
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    lengths = sorted_lengths(rng, T, B)
    batch_sizes = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    x, h0, c0 = (f32(a).astype(np.float64) for a in (x, h0, c0))
    w = {k: f32(v).astype(np.float64) for k, v in w.items()}
    xs = f32(x)
    for t in range(T):  # padding must never be read
        xs[t, batch_sizes[t] :] = np.nan
    dy = rng.standard_normal((T, B, H))
    dhn, dcn = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    w32 = [f32(v) for v in w.values()]
    y, hn, cn, cache = ops.lstm_forward(
        xs, *w32, f32(h0), f32(c0), training=True, batch_sizes=batch_sizes
    )
    g = ops.lstm_backward(cache, f32(dy), f32(dhn), f32(dcn))
    ry, rhn, rcn, rc = reference.lstm_forward(x, *w.values(), h0, c0, lengths=lengths)
    rg = reference.lstm_backward(rc, dy, dhn, dcn)
    np.testing.assert_allclose(y, ry, **FWD_TOL)
    np.testing.assert_allclose(hn, rhn, **FWD_TOL)
    np.testing.assert_allclose(cn, rcn, **FWD_TOL)
    for name in ("dh0", "dc0", "dweight_ih", "dweight_hh", "dbias_ih", "dbias_hh"):
        np.testing.assert_allclose(getattr(g, name), getattr(rg, name), **GRAD_TOL, err_msg=name)
    valid = lengths[None, :] > np.arange(T)[:, None]
    np.testing.assert_allclose(g.dx[valid], rg.dx[valid], **GRAD_TOL)
    assert not np.any(g.dx[~valid])
    y2, *_ = ops.lstm_forward(xs, *w32, f32(h0), f32(c0), batch_sizes=batch_sizes)
    np.testing.assert_array_equal(y, y2)


def test_batch_sizes_bitwise_across_threads(threads, schedule):
    rng = np.random.default_rng(5)
    T, B, I, H = 11, 24, 7, 40
    x, w, h0, c0 = make_problem(rng, T, B, I, H)
    lengths = sorted_lengths(rng, T, B)
    bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    args = [f32(a) for a in (x, *w.values(), h0, c0)]
    dy = f32(rng.standard_normal((T, B, H)))
    out = []
    for n, sched in [(1, "auto"), (2, "units"), (2, "batch")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        y, hn, cn, cache = ops.lstm_forward(*args, training=True, batch_sizes=bs)
        out.append([y, hn, cn, *ops.lstm_backward(cache, dy)])
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert a.tobytes() == b.tobytes()


def test_batch_sizes_errors():
    rng = np.random.default_rng(0)
    x, w, h0, c0 = make_problem(rng, 3, 4, 2, 5)
    args = [f32(a) for a in (x, *w.values())]
    with pytest.raises(ValueError, match=r"batch_sizes: expected shape \(T=3,\), got \(2,\)"):
        ops.lstm_forward(*args, batch_sizes=[4, 4])
    with pytest.raises(ValueError, match="batch_sizes: expected non-increasing"):
        ops.lstm_forward(*args, batch_sizes=[2, 3, 1])
    with pytest.raises(ValueError, match=r"batch_sizes: expected values in \[0, B=4\], got 5"):
        ops.lstm_forward(*args, batch_sizes=[5, 3, 1])
    with pytest.raises(TypeError, match="batch_sizes: expected integers"):
        ops.lstm_forward(*args, batch_sizes=[4.0, 3.0, 1.0])
