"""The C++ GRU and RNN cores against the float64 NumPy reference, on every ISA path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops, reference

# atol 5e-6: float32 rounding of the I-term sums accumulates over 33 steps of a tanh RNN.
FWD_TOL = dict(rtol=1e-5, atol=5e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
CELLS = ["gru", "tanh", "relu"]


def f32(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def r32(a):
    """Rounded to float32, held in float64: both sides see the same numbers."""
    return None if a is None else f32(a).astype(np.float64)


def make_problem(rng, cell, T, B, I, H, *, bias=True, state=True):
    G = 3 if cell == "gru" else 1
    k = 1.0 / np.sqrt(H)
    w = [rng.uniform(-k, k, (G * H, I)), rng.uniform(-k, k, (G * H, H))]
    w += [rng.uniform(-k, k, G * H) if bias else None for _ in range(2)]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5 if state else None
    return r32(x), [r32(a) for a in w], r32(h0)


def sorted_lengths(rng, T, B):
    lengths = np.sort(rng.integers(0, T + 1, B))[::-1].copy()
    batch_sizes = (np.arange(T)[:, None] < lengths[None, :]).sum(axis=1)
    return lengths, batch_sizes


def run(cell, x, w, h0, dy, dhn, batch_sizes=None):
    args = [f32(a) for a in (x, *w, h0)]
    if cell == "gru":
        y, hn, cache = ops.gru_forward(*args, training=True, batch_sizes=batch_sizes)
        return y, hn, ops.gru_backward(cache, f32(dy), f32(dhn))
    y, hn, cache = ops.rnn_forward(*args, nonlinearity=cell, training=True, batch_sizes=batch_sizes)
    return y, hn, ops.rnn_backward(cache, f32(dy), f32(dhn))


def run_ref(cell, x, w, h0, dy, dhn, lengths=None):
    if cell == "gru":
        y, hn, cache = reference.gru_forward(x, *w, h0, lengths=lengths)
        return y, hn, reference.gru_backward(cache, dy, dhn)
    y, hn, cache = reference.rnn_forward(x, *w, h0, nonlinearity=cell, lengths=lengths)
    return y, hn, reference.rnn_backward(cache, dy, dhn)


def assert_matches(ours, ref):
    (y, hn, g), (ry, rhn, rg) = ours, ref
    np.testing.assert_allclose(y, ry, **FWD_TOL, err_msg="y")
    np.testing.assert_allclose(hn, rhn, **FWD_TOL, err_msg="h_n")
    for name in g._fields:
        a, b = getattr(g, name), getattr(rg, name)
        if b is None:
            assert a is None, name
        else:
            np.testing.assert_allclose(a, b, **GRAD_TOL, err_msg=name)


GRID = [
    (T, B, I, H)
    for T, B, I, H in itertools.product([1, 5, 33], [1, 3, 16], [1, 5, 64], [1, 7, 8, 17, 64, 130])
    if (T < 33 and (B, I) in [(1, 5), (3, 1), (3, 64), (16, 5)]) or (B, I) == (3, 64)
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", GRID)
def test_matches_reference(isa, cell, T, B, I, H):
    rng = np.random.default_rng(hash((cell, T, B, I, H)) % 2**32)
    x, w, h0 = make_problem(rng, cell, T, B, I, H)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    assert_matches(run(cell, x, w, h0, dy, dhn), run_ref(cell, x, w, h0, dy, dhn))


# H = 330: the step products' panels (3 x 1.4 MiB for the GRU) take over a quarter of L2, so
# they prefetch their next chunks (micro_prefetching) on 1 and 2 threads, either split.
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("n,sched", [(1, "auto"), (2, "units"), (2, "batch")])
def test_prefetching_step_products_match_reference(isa, threads, schedule, cell, n, sched):
    T, B, I, H = 3, 30, 9, 330
    rng = np.random.default_rng(hash((cell, T, B, I, H)) % 2**32)
    x, w, h0 = make_problem(rng, cell, T, B, I, H)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    lstm_fast.set_num_threads(n)
    schedule(sched)
    assert_matches(run(cell, x, w, h0, dy, dhn), run_ref(cell, x, w, h0, dy, dhn))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "T,B,I,H", [(6, 5, 9, 19), (12, 16, 5, 33), (3, 4, 2, 1), (20, 2, 7, 130), (3, 30, 9, 330)]
)
def test_lengths_match_reference(isa, cell, T, B, I, H):
    rng = np.random.default_rng(hash((cell, T, B, H, 1)) % 2**32)
    x, w, h0 = make_problem(rng, cell, T, B, I, H)
    lengths, bs = sorted_lengths(rng, T, B)
    x32 = f32(x)
    x32[np.arange(T)[:, None] >= lengths[None, :]] = np.nan  # padding is never read
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    ours = run(cell, x32, w, h0, dy, dhn, batch_sizes=bs)
    ref = run_ref(cell, x, w, h0, dy, dhn, lengths=lengths)
    assert_matches(ours, ref)
    pad = np.arange(T)[:, None] >= lengths[None, :]
    assert not np.any(ours[0][pad]), "outputs past a sequence's length are zero"


@pytest.mark.parametrize("cell", ["tanh", "gru"])
@pytest.mark.parametrize("I,H", [(40, 48), (600, 520)])
@pytest.mark.parametrize("lengths", [False, True])
@pytest.mark.parametrize("state", [False, True])
def test_weight_gradients_both_sides_of_the_dual_product(cell, I, H, lengths, state):
    # The RNN takes dW_ih and dW_hh from one product over dz when its blocks fit in a quarter of
    # L2 (I, H = 40, 48), else from two (600, 520): both ways, with and without lengths and h0.
    T, B = 4, 3
    rng = np.random.default_rng(I + H + 2 * lengths + state)
    x, w, h0 = make_problem(rng, cell, T, B, I, H, state=state)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    if lengths:
        lens, bs = np.array([4, 2, 1]), np.array([3, 2, 1, 1], np.int64)
        x32 = f32(x)
        x32[np.arange(T)[:, None] >= lens[None, :]] = np.nan  # padding is never read
        ours = run(cell, x32, w, h0, dy, dhn, batch_sizes=bs)
        ref = run_ref(cell, x, w, h0, dy, dhn, lengths=lens)
    else:
        ours = run(cell, x, w, h0, dy, dhn)
        ref = run_ref(cell, x, w, h0, dy, dhn)
    assert_matches(ours, ref)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias,state,upstream", [(False, False, "dy"), (True, True, "dh_n")])
def test_optional_arguments(isa, cell, bias, state, upstream):
    rng = np.random.default_rng(3)
    T, B, I, H = 6, 5, 9, 19
    x, w, h0 = make_problem(rng, cell, T, B, I, H, bias=bias, state=state)
    dy = rng.standard_normal((T, B, H)) if upstream == "dy" else None
    dhn = rng.standard_normal((B, H)) if upstream == "dh_n" else None
    assert_matches(run(cell, x, w, h0, dy, dhn), run_ref(cell, x, w, h0, dy, dhn))


@pytest.mark.parametrize("cell", CELLS)
def test_inference_equals_training(isa, cell, rng):
    x, w, h0 = make_problem(rng, cell, 40, 7, 13, 33)
    args = [f32(a) for a in (x, *w, h0)]
    if cell == "gru":
        y1, h1, c1 = ops.gru_forward(*args)
        y2, h2, c2 = ops.gru_forward(*args, training=True)
    else:
        y1, h1, c1 = ops.rnn_forward(*args, nonlinearity=cell)
        y2, h2, c2 = ops.rnn_forward(*args, nonlinearity=cell, training=True)
    assert c1 is None and c2 is not None
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "T,B,I,H", [(9, 13, 21, 70), (4, 40, 8, 33), (2, 1, 4, 200), (3, 30, 9, 330)]
)
def test_bitwise_identical_across_threads_and_schedules(isa, cell, T, B, I, H, threads, schedule):
    rng = np.random.default_rng(5)
    x, w, h0 = make_problem(rng, cell, T, B, I, H)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    lengths, bs = sorted_lengths(rng, T, B)
    results = []
    for n, sched in [(1, "auto"), (2, "units"), (2, "batch"), (2, "auto"), (3, "units")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        for b in (None, bs):
            y, hn, g = run(cell, x, w, h0, dy, dhn, batch_sizes=b)
            results.append((b is None, [y, hn, *[a for a in g if a is not None]]))
    base = {k: v for k, v in results[:2]}
    for key, arrays in results:
        for a, b in zip(arrays, base[key]):
            np.testing.assert_array_equal(a, b)


def test_nan_propagates_relu(rng):
    x, w, h0 = make_problem(rng, "relu", 3, 2, 4, 9)
    x = f32(x)
    x[0, 0, 0] = np.nan
    y, hn, _ = ops.rnn_forward(x, *[f32(a) for a in w], f32(h0), nonlinearity="relu")
    assert np.isnan(y[0, 0]).any()


@pytest.mark.parametrize(
    "call,msg",
    [
        (
            lambda x, w: ops.gru_forward(x[:, :, :-1].copy(), *w),
            r"weight_ih: expected shape \(3H=24, I=4\)",
        ),
        (lambda x, w: ops.gru_forward(x.astype(np.float64), *w), "x: expected dtype float32"),
        (
            lambda x, w: ops.gru_forward(x, *w, h0=np.zeros((2, 8), np.float32)),
            r"h0: expected shape \(B=3, H=8\), got \(2, 8\)",
        ),
        (lambda x, w: ops.gru_forward(x, w[0], w[1][:, :-1]), "weight_hh"),
        (lambda x, w: ops.gru_forward(x, *w, batch_sizes=[2, 3, 1, 1, 0]), "non-increasing"),
        (lambda x, w: ops.gru_forward(x, *w, batch_sizes=[4, 3, 1, 1, 0]), r"values in \[0, B=3\]"),
        (lambda x, w: ops.gru_backward("nope"), "GRUCache"),
        (
            lambda x, w: ops.rnn_forward(x, w[0][:8], w[1][:8, :], nonlinearity="gelu"),
            "nonlinearity",
        ),
        (lambda x, w: ops.rnn_forward(x, *w), r"weight_hh: expected shape \(H=8, H=8\)"),
    ],
)
def test_bad_input(call, msg):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 5)).astype(np.float32)
    w = [rng.standard_normal(s).astype(np.float32) for s in [(24, 5), (24, 8), (24,), (24,)]]
    with pytest.raises((ValueError, TypeError), match=msg):
        call(x, w)


def test_gru_matches_torch(rng):
    torch = pytest.importorskip("torch")
    T, B, I, H = 7, 4, 6, 11
    m = torch.nn.GRU(I, H)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    w = [
        getattr(m, n).detach().numpy()
        for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    ]
    y, hn, cache = ops.gru_forward(x, *w, h0[0], training=True)
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    yt, hnt = m(xt, ht)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (yt * torch.tensor(dy)).sum().backward()
    g = ops.gru_backward(cache, dy)
    np.testing.assert_allclose(g.dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.dweight_hh, m.weight_hh_l0.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.dbias_hh, m.bias_hh_l0.grad.numpy(), rtol=1e-4, atol=1e-5)


# The GRU's batch split: each thread projects its own rows (x . W_ih^T + b_ih) inside its
# recurrence's team region, in blocks of steps of at least 64 rows (256 where W_ih^T takes over
# half of L2; W_hh up to 4 MiB), with and without lengths, on 2-4 threads: bitwise the serial
# results (inference, training, gradients), and the float64 reference. Blocks of one step
# (150 rows) and of many; a thread with one row; bias and h0 absent; SIMD tails.
@pytest.mark.parametrize(
    "T,B,I,H,bias,state",
    [
        (30, 32, 17, 33, True, True),
        (9, 3, 4, 7, True, False),
        (12, 150, 5, 9, False, True),
        (20, 16, 65, 100, True, True),
        (5, 26, 9, 400, True, True),  # W_hh of 1.9 MiB
        (24, 30, 400, 256, True, True),  # W_ih^T of 1.2 MiB: blocks of up to 256 rows
    ],
)
@pytest.mark.parametrize("lengths", [False, True])
def test_gru_batch_split_own_projection(isa, threads, schedule, T, B, I, H, bias, state, lengths):
    rng = np.random.default_rng(T * B + H)
    x, w, h0 = make_problem(rng, "gru", T, B, I, H, bias=bias, state=state)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    lens, bs = sorted_lengths(rng, T, B) if lengths else (None, None)
    if lengths:
        lens[0] = T
        bs = (np.arange(T)[:, None] < lens[None, :]).sum(axis=1)
    results = []
    for n, sched in [(1, "auto"), (2, "batch"), (2, "auto"), (3, "batch"), (4, "batch")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        args = [f32(a) for a in (x, *w, h0)]
        yi, hi = ops.gru_forward(*args, batch_sizes=bs)[:2]
        y, hn, g = run("gru", x, w, h0, dy, dhn, batch_sizes=bs)
        results.append([yi, hi, y, hn, *[a for a in g if a is not None]])
    ry, rhn, _ = run_ref("gru", x, w, h0, dy, dhn, lengths=lens)
    np.testing.assert_allclose(results[0][0], ry, rtol=1e-5, atol=5e-6)
    np.testing.assert_allclose(results[0][1], rhn, rtol=1e-5, atol=5e-6)
    for n, other in zip((2, 2, 3, 4), results[1:]):
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert a.tobytes() == b.tobytes(), f"threads={n}, array {i}"
    assert results[0][0].tobytes() == results[0][2].tobytes()  # inference == training


@pytest.mark.parametrize("lengths", [[2, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]])
def test_gru_one_or_two_active_rows_bitwise(isa, threads, schedule, lengths):
    # One or two active rows in all (T * B above the unpacked path's 4): the shared projection
    # computes them as dot products, so the batch split must not project them itself.
    T, B, I, H = 4, len(lengths), 6, 7
    rng = np.random.default_rng(B)
    x, w, h0 = make_problem(rng, "gru", T, B, I, H)
    bs = (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).sum(axis=1)
    results = []
    for n, sched in [(1, "auto"), (2, "batch"), (3, "batch")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        args = [f32(a) for a in (x, *w, h0)]
        y, hn = ops.gru_forward(*args, batch_sizes=bs)[:2]
        results.append([y, hn])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
