"""Variable lengths through the packed paths of the cores (LSTM, GRU, RNN).

With batch_sizes the cores keep the input projection, the training gates cache and dZ packed
(only the active rows, step after step), project and differentiate with one GEMM over all
active rows, and re-balance batch-split recurrences every few steps. These tests cover the
batch_sizes shapes those paths depend on: runs of equal counts, all rows active (the dense
path), every step padded, strictly decreasing, zeros at the end, batch 1, the tiny
T * B <= 4 path, projection chunks, SIMD tails (sizes 1, 7, 17); against the float64 reference,
with NaN in x's padding, on every ISA, and bitwise across thread counts and schedules.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops, reference

FWD_TOL = dict(rtol=1e-5, atol=5e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)
CELLS = ["lstm", "gru", "tanh", "relu"]

# (name, batch_sizes); B = batch_sizes[0] unless the name says otherwise.
PATTERNS = [
    ("runs", [9, 9, 9, 6, 6, 6, 6, 2, 2, 1]),
    ("all_active", [5, 5, 5, 5]),
    ("all_padded", [3, 3, 3, 3, 3]),  # B = 5: the same two rows padded at every step
    ("decreasing", [7, 6, 5, 4, 3, 2, 1]),
    ("zeros_at_end", [4, 3, 3, 1, 0, 0]),
    ("batch_1", [1, 1, 1, 1, 1, 0, 0]),
    ("tiny", [2, 1]),  # T * B <= 4: the unpacked path
    ("tiny_b1", [1, 1, 0, 0]),
]
PATTERN_B = {"all_padded": 5}


def f32(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def r32(a):
    return None if a is None else f32(a).astype(np.float64)


def lengths_of(bs, B):
    bs = np.asarray(bs)
    return (bs[:, None] > np.arange(B)[None, :]).sum(axis=0)


def make_problem(rng, cell, T, B, I, H):
    G = {"lstm": 4, "gru": 3}.get(cell, 1)
    k = 1.0 / np.sqrt(H)
    w = [rng.uniform(-k, k, (G * H, I)), rng.uniform(-k, k, (G * H, H))]
    w += [rng.uniform(-k, k, G * H) for _ in range(2)]
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5
    c0 = rng.standard_normal((B, H)) * 0.5 if cell == "lstm" else None
    return r32(x), [r32(a) for a in w], r32(h0), r32(c0)


def run(cell, x, w, h0, c0, dy, dhn, bs):
    """(outputs, grads) of the core, one training forward and one backward."""
    args = [f32(a) for a in (x, *w, h0)]
    if cell == "lstm":
        y, hn, cn, cache = ops.lstm_forward(*args, f32(c0), training=True, batch_sizes=bs)
        return [y, hn, cn], ops.lstm_backward(cache, f32(dy), f32(dhn))
    if cell == "gru":
        y, hn, cache = ops.gru_forward(*args, training=True, batch_sizes=bs)
        return [y, hn], ops.gru_backward(cache, f32(dy), f32(dhn))
    y, hn, cache = ops.rnn_forward(*args, nonlinearity=cell, training=True, batch_sizes=bs)
    return [y, hn], ops.rnn_backward(cache, f32(dy), f32(dhn))


def run_ref(cell, x, w, h0, c0, dy, dhn, lengths):
    if cell == "lstm":
        y, hn, cn, cache = reference.lstm_forward(x, *w, h0, c0, lengths=lengths)
        return [y, hn, cn], reference.lstm_backward(cache, dy, dhn)
    if cell == "gru":
        y, hn, cache = reference.gru_forward(x, *w, h0, lengths=lengths)
        return [y, hn], reference.gru_backward(cache, dy, dhn)
    y, hn, cache = reference.rnn_forward(x, *w, h0, nonlinearity=cell, lengths=lengths)
    return [y, hn], reference.rnn_backward(cache, dy, dhn)


def inference(cell, x, w, h0, c0, bs):
    args = [f32(a) for a in (x, *w, h0)]
    if cell == "lstm":
        return ops.lstm_forward(*args, f32(c0), batch_sizes=bs)[0]
    if cell == "gru":
        return ops.gru_forward(*args, batch_sizes=bs)[0]
    return ops.rnn_forward(*args, nonlinearity=cell, batch_sizes=bs)[0]


def check_against_reference(cell, bs, B, I, H, seed):
    T = len(bs)
    rng = np.random.default_rng(seed)
    x, w, h0, c0 = make_problem(rng, cell, T, B, I, H)
    lengths = lengths_of(bs, B)
    valid = np.arange(T)[:, None] < lengths[None, :]
    xs = f32(x)
    xs[~valid] = np.nan  # the padding of x is never read
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    bs64 = np.asarray(bs, dtype=np.int64)
    (outs, g) = run(cell, xs, w, h0, c0, dy, dhn, bs64)
    (routs, rg) = run_ref(cell, x, w, h0, c0, dy, dhn, lengths)
    for name, a, b in zip(["y", "h_n", "c_n"], outs, routs):
        np.testing.assert_allclose(a, b, **FWD_TOL, err_msg=name)
    assert not np.any(outs[0][~valid]), "outputs past a sequence's length are zero"
    for name in g._fields:
        a, b = getattr(g, name), getattr(rg, name, None)
        if b is None:
            continue
        # float32 sums over up to T * B rows: absolute tolerance relative to the gradient's scale
        tol = dict(rtol=GRAD_TOL["rtol"], atol=GRAD_TOL["atol"] * max(1.0, np.abs(b).max()))
        if name == "dx":
            np.testing.assert_allclose(a[valid], b[valid], **tol, err_msg=name)
            assert not np.any(a[~valid]), "dx of padding rows is zero"
        else:
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
    np.testing.assert_array_equal(inference(cell, xs, w, h0, c0, bs64), outs[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("name,bs", PATTERNS, ids=[p[0] for p in PATTERNS])
@pytest.mark.parametrize("I,H", [(7, 17), (1, 1)])
def test_patterns_match_reference(isa, cell, name, bs, I, H):
    B = PATTERN_B.get(name, bs[0])
    check_against_reference(cell, bs, B, I, H, seed=len(bs) * 100 + B + I + H)


@pytest.mark.parametrize("cell", CELLS)
def test_projection_chunks_with_lengths(cell):
    # LSTM inference projects sequences over 2**20 floats of pre-activations in chunks of
    # 2**19 / (B * 4H) steps (4 here): the packed offsets
    # cross chunk boundaries, rows running out mid-chunk.
    B, H, T = 64, 512, 40
    rng = np.random.default_rng(7)
    lengths = np.sort(rng.integers(1, T + 1, B))[::-1]
    lengths[0] = T
    bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    check_against_reference(cell, bs, B, 3, H, seed=8)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("T,B,I,H", [(30, 40, 5, 17), (19, 13, 7, 70), (12, 3, 1, 7)])
def test_bitwise_across_threads_and_schedules(cell, T, B, I, H, threads, schedule):
    # Long enough for the batch split to re-balance its rows several times.
    rng = np.random.default_rng(T + B + H)
    x, w, h0, c0 = make_problem(rng, cell, T, B, I, H)
    lengths = np.sort(rng.integers(0, T + 1, B))[::-1]
    lengths[0] = T
    bs = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    out = []
    for n, sched in [
        (1, "auto"),
        (2, "batch"),
        (2, "units"),
        (2, "auto"),
        (3, "batch"),
        (3, "units"),
    ]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        outs, g = run(cell, x, w, h0, c0, dy, dhn, bs)
        out.append([*outs, *[a for a in g if a is not None]])
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert a.tobytes() == b.tobytes()


def test_gates_cache_is_packed():
    # The LSTM training cache keeps the gates of the active rows only, step after step (rows are
    # independent: each equals the same row's gates in a run without lengths).
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 4, 3, 6
    x, w, h0, c0 = make_problem(rng, "lstm", T, B, I, H)
    bs = np.array([4, 3, 3, 1, 0])
    args = [f32(a) for a in (x, *w, h0, c0)]
    *_, packed = ops.lstm_forward(*args, training=True, batch_sizes=bs)
    *_, dense = ops.lstm_forward(*args, training=True)
    rows = packed.gates.reshape(T * B, 4 * H)
    off = 0
    for t in range(T):
        np.testing.assert_array_equal(rows[off : off + bs[t]], dense.gates[t, : bs[t]])
        off += bs[t]


@pytest.mark.parametrize("T,B,F,N", [(1, 1, 1, 1), (3, 7, 17, 7), (5, 4, 300, 9), (2, 5, 3, 0)])
def test_take_rows_is_np_take(T, B, F, N, threads):
    # The batch reordering of variable-length layers: out[t, j] = a[t, index[j]], any index
    # (repeats, any order, N != B), on 1 and 2 threads (large enough to be split).
    from lstm_fast import ops

    rng = np.random.default_rng(T * 100 + B + F)
    a = rng.standard_normal((T, B, F)).astype(np.float32)
    index = rng.integers(0, B, N)
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        got = ops._core.take_rows(a, index)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, np.take(a, index, axis=1))
    big = rng.standard_normal((40, 33, 100)).astype(np.float32)
    order = rng.permutation(33)
    np.testing.assert_array_equal(ops._core.take_rows(big, order), big[:, order])


def test_take_rows_bad_input():
    from lstm_fast import ops

    a = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(IndexError, match=r"index: expected values in \[0, B=3\), got 3"):
        ops._core.take_rows(a, np.array([0, 3]))
    with pytest.raises(IndexError, match="got -1"):
        ops._core.take_rows(a, np.array([-1]))
    with pytest.raises(ValueError, match="index: expected a 1-D"):
        ops._core.take_rows(a, np.zeros((1, 2), np.int64))
    with pytest.raises(ValueError, match="a:"):
        ops._core.take_rows(np.zeros((3, 4), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="C-contiguous"):
        ops._core.take_rows(np.zeros((3, 4, 2), np.float32).transpose(1, 0, 2), np.array([0]))


# ---- sorted_indices: x (and dx) in the caller's batch order ----------------------------------


def sorted_problem(seed, T, B, I, H, pattern="random"):
    """An LSTM problem with lengths in the caller's (unsorted) order, its sort and batch_sizes."""
    rng = np.random.default_rng(seed)
    x, w, h0, c0 = make_problem(rng, "lstm", T, B, I, H)
    if pattern == "equal":
        lengths = np.full(B, T)  # no padding: the permutation alone
    else:
        lengths = rng.integers(0, T + 1, B)
        lengths[rng.integers(B)] = T
    order = np.argsort(-lengths, kind="stable")
    if pattern == "equal":
        order = rng.permutation(B)
    bs = (lengths[order][None, :] > np.arange(T)[:, None]).sum(axis=1)
    dy, dhn, dcn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H)), None
    return x, w, h0, c0, lengths, order, bs, dy, dhn, dcn


@pytest.mark.parametrize(
    "T,B,I,H,pattern",
    [
        (9, 7, 17, 7, "random"),
        (13, 17, 7, 33, "random"),
        (6, 5, 3, 16, "equal"),
        (2, 3, 4, 5, "random"),  # T <= 2: the unpacked path (x gathered, y scattered)
        (1, 4, 1, 1, "random"),
        (30, 40, 5, 17, "random"),  # batch split, re-balanced
        (30, 40, 5, 70, "random"),  # ... then the units split once few rows are left
    ],
)
def test_sorted_indices_equals_sorting_around(isa, T, B, I, H, pattern):
    # x, y, dy, dx in the caller's order (the core's gathers and scatters) are bitwise a sort
    # of x and dy before a sorted call and an un-sort of y and dx after it.
    x, w, h0, c0, lengths, order, bs, dy, dhn, _ = sorted_problem(T + B, T, B, I, H, pattern)
    inv = np.argsort(order)
    xs = f32(x)
    pad = np.arange(T)[:, None] >= lengths[None, :]
    xs[pad] = np.nan  # the padding of x (in the caller's order) is never read
    args = [f32(a) for a in w]
    h0s, c0s = f32(h0[order]), f32(c0[order])  # states in the sorted order
    y1, hn1, cn1, cache1 = ops.lstm_forward(
        xs, *args, h0s, c0s, training=True, batch_sizes=bs, sorted_indices=order
    )
    y2, hn2, cn2, cache2 = ops.lstm_forward(
        f32(xs[:, order]), *args, h0s, c0s, training=True, batch_sizes=bs
    )
    assert y1.tobytes() == f32(y2[:, inv]).tobytes()
    assert not np.any(y1[pad]), "outputs past a sequence's length are zero"
    assert hn1.tobytes() == hn2.tobytes() and cn1.tobytes() == cn2.tobytes()
    y3, hn3, _, _ = ops.lstm_forward(xs, *args, h0s, c0s, batch_sizes=bs, sorted_indices=order)
    assert y3.tobytes() == y1.tobytes() and hn3.tobytes() == hn1.tobytes()
    g1 = ops.lstm_backward(cache1, f32(dy), f32(dhn))
    g2 = ops.lstm_backward(cache2, f32(dy[:, order]), f32(dhn))
    assert g1.dx.tobytes() == f32(g2.dx[:, inv]).tobytes()  # dx in x's (caller's) order
    assert not np.any(g1.dx[pad]), "dx of padding rows is zero"
    for name in g1._fields[1:]:
        a, b = getattr(g1, name), getattr(g2, name)
        assert (a is None and b is None) or a.tobytes() == b.tobytes(), name


def test_sorted_indices_bitwise_across_threads(threads, schedule):
    T, B, I, H = 21, 23, 9, 40
    x, w, h0, c0, lengths, order, bs, dy, dhn, _ = sorted_problem(5, T, B, I, H)
    out = []
    for n, sched in [(1, "auto"), (2, "batch"), (2, "units"), (3, "auto")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        args = [f32(a) for a in (x, *w, h0, c0)]
        y, hn, cn, cache = ops.lstm_forward(
            *args, training=True, batch_sizes=bs, sorted_indices=order
        )
        g = ops.lstm_backward(cache, f32(dy), f32(dhn))
        out.append([y, hn, cn, *[a for a in g if a is not None]])
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert a.tobytes() == b.tobytes()


def test_sorted_indices_bad_input():
    T, B, I, H = 4, 3, 2, 5
    x, w, h0, c0, lengths, order, bs, *_ = sorted_problem(1, T, B, I, H)
    args = [f32(a) for a in (x, *w)]
    with pytest.raises(ValueError, match="sorted_indices: given without batch_sizes"):
        ops.lstm_forward(*args, sorted_indices=order)
    with pytest.raises(ValueError, match=r"sorted_indices: expected shape \(B=3,\), got \(2,\)"):
        ops.lstm_forward(*args, batch_sizes=bs, sorted_indices=[0, 1])
    with pytest.raises(ValueError, match=r"sorted_indices: expected a permutation .* 1 twice"):
        ops.lstm_forward(*args, batch_sizes=bs, sorted_indices=[1, 1, 0])
    with pytest.raises(ValueError, match=r"sorted_indices: expected values in \[0, B=3\), got 3"):
        ops.lstm_forward(*args, batch_sizes=bs, sorted_indices=[0, 3, 1])
    with pytest.raises(TypeError, match="sorted_indices: expected integers, got dtype float64"):
        ops.lstm_forward(*args, batch_sizes=bs, sorted_indices=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="sorted_indices: not supported with weight_hr"):
        ops.lstm_forward(
            f32(x),
            f32(w[0]),
            f32(w[1][:, :2]),
            batch_sizes=bs,
            sorted_indices=order,
            weight_hr=f32(np.ones((2, H))),
        )


# The LSTM batch split with batch_sizes: each thread projects its own active rows, in blocks of
# steps of at least 64 rows within each re-balanced segment (gathered from x through
# sorted_indices when given), and keeps the batch split to the last step. Few rows per thread
# and many; blocks of one step (120 rows) and of many; zero lengths; SIMD tails. Against the
# float64 reference with NaN in x's padding, bitwise the serial results in inference and
# training (the backward too), y's padding zero.
@pytest.mark.parametrize(
    "T,B,I,H,low",
    [
        (30, 24, 7, 17, 1),
        (20, 5, 3, 17, 0),
        (15, 9, 7, 33, 1),
        (30, 36, 5, 33, 0),
        (23, 37, 17, 16, 5),
        (12, 120, 3, 7, 1),
        (50, 48, 1, 1, 0),
        (9, 26, 30, 100, 0),
    ],
)
@pytest.mark.parametrize("sorted_input", [True, False])
def test_lstm_batch_split_own_projection(isa, threads, schedule, T, B, I, H, low, sorted_input):
    rng = np.random.default_rng(T * B + I + H + low)
    x, w, h0, c0 = make_problem(rng, "lstm", T, B, I, H)
    lengths = rng.integers(low, T + 1, B)
    lengths[rng.integers(B)] = T
    order = np.argsort(-lengths, kind="stable")
    if sorted_input:  # the caller's rows already sorted: no order
        x, h0, c0, lengths = x[:, order], h0[order], c0[order], lengths[order]
        order = np.arange(B)
    valid = np.arange(T)[:, None] < lengths[None, :]
    xs = f32(x)
    xs[~valid] = np.nan  # the padding of x is never read
    bs = (lengths[order][None, :] > np.arange(T)[:, None]).sum(axis=1).astype(np.int64)
    sidx = None if sorted_input else order.astype(np.int64)
    dy, dhn, dcn = (rng.standard_normal(s) for s in ((T, B, H), (B, H), (B, H)))
    # states in the sorted order, as the core takes them
    args = [f32(a) for a in w] + [f32(h0[order]), f32(c0[order])]
    results = []
    for n, sched in [(1, "auto"), (2, "auto"), (2, "batch"), (3, "batch")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        y, hn, cn = ops.lstm_forward(xs, *args, batch_sizes=bs, sorted_indices=sidx)[:3]
        yt, hnt, cnt, cache = ops.lstm_forward(
            xs, *args, training=True, batch_sizes=bs, sorted_indices=sidx
        )
        g = ops.lstm_backward(cache, f32(dy), f32(dhn), f32(dcn))
        results.append([y, hn, cn, yt, hnt, cnt, *[a for a in g if a is not None]])
    y, hn, cn = results[0][:3]
    ry, rhn, rcn, _ = reference.lstm_forward(x, *w, h0, c0, lengths=lengths)
    np.testing.assert_allclose(y, ry, **FWD_TOL)
    assert not np.any(y[~valid]), "outputs past a sequence's length are zero"
    # h_n / c_n come back in the sorted order
    np.testing.assert_allclose(hn, rhn[order], **FWD_TOL)
    np.testing.assert_allclose(cn, rcn[order], **FWD_TOL)
    for n, other in zip((2, 2, 3), results[1:]):
        for i, (a, b) in enumerate(zip(results[0], other)):
            assert a.tobytes() == b.tobytes(), f"threads={n}, array {i}"
    for a, b in zip(results[0][:3], results[0][3:6]):  # inference == training forward
        assert a.tobytes() == b.tobytes()
