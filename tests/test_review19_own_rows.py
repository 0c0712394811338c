"""Review of the LSTM forward's batch split with each thread projecting its own rows (own-rows
path, csrc/cells/lstm.cpp): adversarial shapes for its blocks of steps (64 rows), its 8-step
re-balancing with batch_sizes, sorted_indices, threads without rows, the W_hh bound (H = 512 /
513), the workspace sized per thread count, the layers and torch modules on top. Results must be
bitwise those of one thread and of every schedule, and match the float64 reference."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, ops, reference

FWD_TOL = dict(rtol=1e-5, atol=5e-6)
GRAD_TOL = dict(rtol=1e-4, atol=1e-5)

# (threads, schedule) after the 1-thread baseline; 3 and 4 threads run on this 2-CPU machine
# because conftest lifts the CPU bound.
RUNS = [(2, "auto"), (2, "batch"), (3, "batch"), (4, "batch"), (2, "units")]


def f32(a):
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def weights(rng, I, H, bias=True):
    k = 1.0 / np.sqrt(H)
    w = [rng.uniform(-k, k, (4 * H, I)), rng.uniform(-k, k, (4 * H, H))]
    w += [rng.uniform(-k, k, 4 * H) if bias else None for _ in range(2)]
    return [None if a is None else f32(a).astype(np.float64) for a in w]


def problem(rng, T, B, I, H, bias=True, states=True):
    x = f32(rng.standard_normal((T, B, I))).astype(np.float64)
    w = weights(rng, I, H, bias)
    h0 = f32(rng.standard_normal((B, H)) * 0.5).astype(np.float64) if states else None
    c0 = f32(rng.standard_normal((B, H)) * 0.5).astype(np.float64) if states else None
    return x, w, h0, c0


def packed_args(lengths, T):
    """(batch_sizes, sorted_indices) of lengths in the caller's order."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    bs = (np.asarray(lengths)[order][None, :] > np.arange(T)[:, None]).sum(axis=1)
    return bs.astype(np.int64), order.astype(np.int64)


def run_all(fn, schedule, runs=RUNS):
    """fn() once on one thread, then for every (threads, schedule): all bitwise equal."""
    lstm_fast.set_num_threads(1)
    schedule("auto")
    base = fn()
    for n, sched in runs:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        other = fn()
        assert len(base) == len(other)
        for i, (a, b) in enumerate(zip(base, other)):
            if a is None:
                assert b is None
                continue
            assert a.tobytes() == b.tobytes(), f"threads={n} schedule={sched}: array {i} differs"
    return base


def lstm_case(x, w, h0, c0, lengths, dy, dhn, dcn, sorted_input=False, backward=True):
    """Inference and training forward (bitwise equal), backward; with lengths through
    batch_sizes and sorted_indices (states sorted, as the core takes them)."""
    T, B = x.shape[:2]
    bs = order = None
    xs = f32(x)
    h0s, c0s = h0, c0
    if lengths is not None:
        bs, order = packed_args(lengths, T)
        xs[~(np.arange(T)[:, None] < np.asarray(lengths)[None, :])] = np.nan  # never read
        h0s = None if h0 is None else h0[order]
        c0s = None if c0 is None else c0[order]
        if sorted_input:
            assert np.array_equal(order, np.arange(B))
            order = None
    args = [f32(a) for a in w] + [f32(h0s), f32(c0s)]

    def fn():
        y, hn, cn, _ = ops.lstm_forward(xs, *args, batch_sizes=bs, sorted_indices=order)
        yt, hnt, cnt, cache = ops.lstm_forward(
            xs, *args, training=True, batch_sizes=bs, sorted_indices=order
        )
        for a, b in zip((y, hn, cn), (yt, hnt, cnt)):
            assert a.tobytes() == b.tobytes(), "inference and training forward differ"
        out = [y, hn, cn]
        if backward:
            g = ops.lstm_backward(cache, f32(dy), f32(dhn), f32(dcn))
            out += list(g)  # dx, dh0, dc0, dW_ih, dW_hh, db_ih, db_hh (None without bias)
        return out

    return fn, order


def check_reference(out, x, w, h0, c0, lengths, dy, dhn, dcn, backward=True, grad_tol=GRAD_TOL):
    T, B = x.shape[:2]
    ry, rhn, rcn, cache = reference.lstm_forward(x, *w, h0, c0, lengths=lengths)
    y, hn, cn = out[:3]
    np.testing.assert_allclose(y, ry, **FWD_TOL)
    perm = np.arange(B) if lengths is None else packed_args(lengths, T)[1]
    np.testing.assert_allclose(hn, rhn[perm], **FWD_TOL)  # h_n / c_n in the sorted order
    np.testing.assert_allclose(cn, rcn[perm], **FWD_TOL)
    if lengths is not None:
        assert not np.any(y[~(np.arange(T)[:, None] < np.asarray(lengths)[None, :])])
    if backward:
        dhn_u, dcn_u = dhn.copy(), dcn.copy()
        dhn_u[perm], dcn_u[perm] = dhn, dcn  # the core takes them sorted
        g = reference.lstm_backward(cache, dy, dhn_u, dcn_u)
        dx, dh0, dc0 = out[3:6]
        if lengths is not None:
            assert not np.any(dx[~(np.arange(T)[:, None] < np.asarray(lengths)[None, :])])
        np.testing.assert_allclose(dx, g[0], **GRAD_TOL)
        np.testing.assert_allclose(dh0, g[1][perm], **GRAD_TOL)  # sorted, as h0
        np.testing.assert_allclose(dc0, g[2][perm], **GRAD_TOL)
        for got, want in zip(out[6:], g[3:7]):  # weights and biases
            assert (got is None) == (want is None)
            if got is not None:
                np.testing.assert_allclose(got, want, **grad_tol)


def upstream(rng, T, B, H):
    return [f32(rng.standard_normal(s)).astype(np.float64) for s in ((T, B, H), (B, H), (B, H))]


# Bug 1: the shared path projects a chunk of steps with one GEMM, and gemm() takes dot products
# over the rows of W_ih (gemv, a different summation order) for one or two rows, where the
# own-rows path always uses the packed micro-kernel: a last projection chunk with one or two
# active rows (batch_sizes with a long tail, or B = 2 and a one-step last chunk) differed in the
# last bit between one thread and the batch split.
@pytest.mark.parametrize(
    "T,B,I,H,tail",
    [
        (65, 64, 5, 64, 1),  # chunks of 16 steps: the last one has one active row
        (33, 128, 7, 64, 2),  # chunks of 8 steps: the last one has two active rows
        (513, 2, 3, 256, 0),  # dense, chunks of 128 steps: the last one is a step of 2 rows
    ],
)
def test_small_last_projection_chunk(isa, threads, schedule, T, B, I, H, tail):
    rng = np.random.default_rng(T + B)
    x, w, h0, c0 = problem(rng, T, B, I, H)
    lengths = None
    if tail:
        lengths = np.full(B, T - 1)
        lengths[rng.choice(B, tail, replace=False)] = T
    fn, _ = lstm_case(x, w, h0, c0, lengths, None, None, None, backward=False)
    out = run_all(fn, schedule, [(2, "auto"), (2, "batch"), (3, "batch")])
    if isa == lstm_fast.cpu_info()["available_isas"][-1]:
        check_reference(out, x, w, h0, c0, lengths, None, None, None, backward=False)


# More threads than rows (a thread without rows in some or all steps), the smallest packed path
# (T = 3), states and bias given or not, with and without lengths (zeros included).
@pytest.mark.parametrize("B", [2, 3])
@pytest.mark.parametrize("T", [3, 11])
@pytest.mark.parametrize("mode", ["dense", "lengths", "lengths_sorted"])
@pytest.mark.parametrize("states,bias", [(True, True), (False, False)])
def test_fewer_rows_than_threads(isa, threads, schedule, B, T, mode, states, bias):
    rng = np.random.default_rng(B * 100 + T)
    I, H = 5, 9
    x, w, h0, c0 = problem(rng, T, B, I, H, bias=bias, states=states)
    lengths = None
    if mode != "dense":
        lengths = rng.integers(0, T + 1, B)
        lengths[rng.integers(B)] = T
        if mode == "lengths_sorted":
            lengths = np.sort(lengths)[::-1].copy()
    dy, dhn, dcn = upstream(rng, T, B, H)
    fn, _ = lstm_case(x, w, h0, c0, lengths, dy, dhn, dcn, sorted_input=mode == "lengths_sorted")
    out = run_all(fn, schedule)
    check_reference(out, x, w, h0, c0, lengths, dy, dhn, dcn)


# Rows per thread around the 64-row projection blocks on 2 threads (63, 64, 65, 128, 129), and a
# prime count on 3 threads; blocks of many steps and of one.
@pytest.mark.parametrize("B", [126, 128, 130, 256, 258, 193])
@pytest.mark.parametrize("lengths_mode", [None, "random"])
def test_block_boundaries(threads, schedule, B, lengths_mode):
    rng = np.random.default_rng(B)
    T, I, H = 5, 3, 8
    x, w, h0, c0 = problem(rng, T, B, I, H)
    lengths = None
    if lengths_mode:
        lengths = rng.integers(1, T + 1, B)
        lengths[0] = T
    dy, dhn, dcn = upstream(rng, T, B, H)
    fn, _ = lstm_case(x, w, h0, c0, lengths, dy, dhn, dcn)
    out = run_all(fn, schedule, [(2, "auto"), (2, "batch"), (3, "batch")])
    check_reference(out, x, w, h0, c0, lengths, dy, dhn, dcn)


def _lengths(pattern, T, B, rng):
    if pattern == "equal":  # every row active: batch_sizes without padding (kept with an order)
        return np.full(B, T)
    if pattern == "zeros":
        lengths = rng.integers(0, T + 1, B)
        lengths[: B // 3] = 0
        lengths[B // 2] = T
        return lengths
    if pattern == "one_thread_ends_early":  # the longest half runs on, the rest ends by step 2
        lengths = np.where(np.arange(B) % 2 == 0, T, rng.integers(1, 3, B))
        return lengths
    if pattern == "staircase":  # a row ends at every step: the split changes every segment
        return (np.arange(B) % T) + 1
    if pattern == "one_long":
        lengths = np.ones(B, dtype=np.int64)
        lengths[B - 1] = T
        return lengths
    raise AssertionError(pattern)


# Several 8-step segments (T not a multiple of 8): every pattern of lengths, sorted_indices.
@pytest.mark.parametrize(
    "pattern", ["equal", "zeros", "one_thread_ends_early", "staircase", "one_long"]
)
@pytest.mark.parametrize("T,B,I,H", [(37, 20, 4, 12), (19, 70, 1, 5)])
def test_lengths_patterns_long(isa, threads, schedule, pattern, T, B, I, H):
    rng = np.random.default_rng(T * B)
    x, w, h0, c0 = problem(rng, T, B, I, H)
    lengths = _lengths(pattern, T, B, rng)
    rng.shuffle(lengths)
    dy, dhn, dcn = upstream(rng, T, B, H)
    fn, _ = lstm_case(x, w, h0, c0, lengths, dy, dhn, dcn)
    out = run_all(fn, schedule, [(2, "auto"), (2, "batch"), (3, "batch"), (4, "batch")])
    check_reference(out, x, w, h0, c0, lengths, dy, dhn, dcn)


# Input widths of one and of several depth blocks of the GEMM (700 > 256).
@pytest.mark.parametrize("I", [1, 700])
def test_input_widths(threads, schedule, I):
    rng = np.random.default_rng(I)
    T, B, H = 10, 24, 16
    x, w, h0, c0 = problem(rng, T, B, I, H)
    for lengths in (None, rng.integers(0, T + 1, B)):
        dy, dhn, dcn = upstream(rng, T, B, H)
        fn, _ = lstm_case(x, w, h0, c0, lengths, dy, dhn, dcn)
        out = run_all(fn, schedule, [(2, "auto"), (3, "batch")])
        # dW_ih sums 240 float32 products per element: a looser atol for its small elements
        check_reference(
            out, x, w, h0, c0, lengths, dy, dhn, dcn, grad_tol=dict(rtol=1e-4, atol=5e-5)
        )


# W_hh of exactly 4 MiB (H = 512: the own-rows path) and just above (H = 513: the shared path).
@pytest.mark.parametrize("H", [512, 513])
def test_whh_bound(threads, schedule, H):
    rng = np.random.default_rng(H)
    T, B, I = 3, 16, 6
    x, w, h0, c0 = problem(rng, T, B, I, H)
    for lengths in (None, np.array([3, 1, 2, 3] * 4)):
        fn, _ = lstm_case(x, w, h0, c0, lengths, None, None, None, backward=False)
        out = run_all(fn, schedule, [(2, "auto"), (2, "batch")])
        check_reference(out, x, w, h0, c0, lengths, None, None, None, backward=False)


# The workspace depends on the thread count: calls alternating between 2, 3 and 4 threads with the
# pool kept (a block sized for 2 threads reused by 3) or emptied in between.
def test_workspace_pool_alternating_threads(threads, schedule):
    rng = np.random.default_rng(5)
    T, B, I, H = 20, 40, 30, 64
    x, w, h0, c0 = problem(rng, T, B, I, H)
    lengths = rng.integers(0, T + 1, B)
    lengths[3] = T
    bs, order = packed_args(lengths, T)
    xs = f32(x)
    args = [f32(a) for a in w] + [f32(h0[order]), f32(c0[order])]
    schedule("batch")
    results = []
    for n in (1, 2, 3, 2, 4, 3):
        for empty in (False, True):
            if empty:
                lstm_fast.empty_cache()
                assert lstm_fast.cached_bytes() == 0
            lstm_fast.set_num_threads(n)
            for kw in ({}, dict(batch_sizes=bs, sorted_indices=order)):
                results.append(ops.lstm_forward(xs, *args, **kw)[:3])
    for r in results[2::2]:
        for a, b in zip(results[0], r):
            assert a.tobytes() == b.tobytes()
    for r in results[3::2]:
        for a, b in zip(results[1], r):
            assert a.tobytes() == b.tobytes()


# Concurrent calls from Python threads while the thread count changes under them.
def test_concurrent_calls_changing_threads(threads, schedule):
    rng = np.random.default_rng(6)
    T, B, I, H = 12, 30, 9, 32
    x, w, h0, c0 = problem(rng, T, B, I, H)
    lengths = rng.integers(0, T + 1, B)
    bs, order = packed_args(lengths, T)
    xs = f32(x)
    args = [f32(a) for a in w] + [f32(h0[order]), f32(c0[order])]
    lstm_fast.set_num_threads(1)
    want = [ops.lstm_forward(xs, *args, batch_sizes=bs, sorted_indices=order)[:3]]
    want.append(ops.lstm_forward(xs, *args)[:3])
    errors = []

    def worker(k):
        try:
            for i in range(6):
                lengths_on = (i + k) % 2 == 0
                kw = dict(batch_sizes=bs, sorted_indices=order) if lengths_on else {}
                got = ops.lstm_forward(xs, *args, **kw)[:3]
                for a, b in zip(want[0 if lengths_on else 1], got):
                    if a.tobytes() != b.tobytes():
                        errors.append((k, i))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in workers:
        t.start()
    for n in (2, 3, 4, 2, 3):
        lstm_fast.set_num_threads(n)
    for t in workers:
        t.join()
    assert not errors, errors


# The layers: two bidirectional layers with lengths (the reverse direction's own order), batch
# first; bitwise across thread counts, forward and backward.
@pytest.mark.parametrize("batch_first", [False, True])
def test_layers_bidirectional_lengths(threads, schedule, batch_first):
    rng = np.random.default_rng(8)
    T, B, I, H = 13, 22, 6, 10
    layer = lstm_fast.LSTM(I, H, num_layers=2, bidirectional=True, batch_first=batch_first, seed=3)
    layer.train()
    shape = (B, T, I) if batch_first else (T, B, I)
    x = f32(rng.standard_normal(shape))
    lengths = rng.integers(0, T + 1, B)
    lengths[5] = T
    dy = f32(rng.standard_normal(shape[:2] + (2 * H,)))

    def fn():
        for p in layer.parameters():
            p.grad[...] = 0
        y, (hn, cn) = layer(x, lengths=lengths)
        dx, _ = layer.backward(dy)
        return [y, hn, cn, dx] + [p.grad.copy() for p in layer.parameters()]

    run_all(fn, schedule, [(2, "auto"), (2, "batch"), (3, "batch"), (4, "auto")])


# The torch drop-in with a PackedSequence (enforce_sorted=False: sorted_indices), against
# torch.nn.LSTM with the same weights, on 2 and 3 threads.
def test_torch_packed_sequence(threads, schedule):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    import lstm_fast.torch as lft

    torch.manual_seed(0)
    T, B, I, H = 17, 26, 5, 12
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    fast = lft.LSTM(I, H, num_layers=2, bidirectional=True)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, I)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[7] = T
    dy = torch.randn(T, B, 2 * H)
    outs = []
    for n, sched in [(1, "auto"), (2, "auto"), (3, "batch")]:
        lstm_fast.set_num_threads(n)
        schedule(sched)
        res = []
        for mod in (ref, fast):
            mod.zero_grad()
            xl = x.clone().requires_grad_(True)
            packed = pack_padded_sequence(xl, lengths, enforce_sorted=False)
            y, (hn, cn) = mod(packed)
            yp, _ = pad_packed_sequence(y, total_length=T)
            (yp * dy).sum().backward()
            res.append(
                [yp.detach(), hn.detach(), cn.detach(), xl.grad]
                + [p.grad for p in mod.parameters()]
            )
        for a, b in zip(*res):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
        outs.append([a.numpy().copy() for a in res[1]])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert a.tobytes() == b.tobytes()


# The embedding input keeps the shared path: bitwise that of lstm_forward(E[ids]) at every thread
# count and schedule.
def test_embedding_input(threads, schedule):
    rng = np.random.default_rng(9)
    T, B, V, I, H = 9, 24, 11, 7, 16
    ids = rng.integers(0, V, (T, B)).astype(np.int64)
    E = f32(rng.standard_normal((V, I)))
    w = [f32(a) for a in weights(rng, I, H)]
    h0, c0 = f32(rng.standard_normal((B, H))), f32(rng.standard_normal((B, H)))

    def fn():
        y, hn, cn, _ = _core.lstm_forward_embedded(ids, E, *w, h0, c0, False)
        y2, hn2, cn2, _ = ops.lstm_forward(E[ids], *w, h0, c0)
        for a, b in zip((y, hn, cn), (y2, hn2, cn2)):
            assert a.tobytes() == b.tobytes(), "embedded and gathered input differ"
        return [y, hn, cn]

    run_all(fn, schedule)


# Bug 2: the own-rows buffers took B + nthreads * 64 rows of (4H + I) floats whatever T * B: on
# 16 threads a T = 3, B = 2 call with I = 5000 took a 21 MB workspace for a 120 kB x (83 MB on
# 64 threads). Now a block's rows beyond a step's are at most T * B / nthreads: the workspace
# stays about the size of the call's own arrays (packed W_ih is 640 kB here). The GRU's own-rows
# buffers (3H + I floats a row) had the same bound added.
@pytest.mark.parametrize("forward,gates", [(ops.lstm_forward, 4), (ops.gru_forward, 3)])
def test_workspace_bounded_by_problem(threads, forward, gates):
    rng = np.random.default_rng(10)
    T, B, I, H = 3, 2, 5000, 8
    x = f32(rng.standard_normal((T, B, I)))
    w_ih = f32(rng.standard_normal((gates * H, I)) * 0.01)
    w_hh = f32(rng.standard_normal((gates * H, H)) * 0.1)
    lstm_fast.set_num_threads(1)
    want = forward(x, w_ih, w_hh)[: gates - 1]  # y, h_n (and c_n)
    for n in (2, 16):
        lstm_fast.empty_cache()
        lstm_fast.set_num_threads(n)
        got = forward(x, w_ih, w_hh)[: gates - 1]
        for a, b in zip(want, got):
            assert a.tobytes() == b.tobytes()
        kept = lstm_fast.cached_bytes()
        assert kept <= 2 * (x.nbytes + w_ih.nbytes), f"threads={n}: a workspace of {kept} bytes"


# Many threads for few rows in all (T * B / threads below 64, down to 0): blocks of fewer steps,
# threads without rows, with and without lengths and sorted_indices.
@pytest.mark.parametrize("T,B", [(3, 5), (5, 6), (9, 7), (40, 8)])
def test_many_threads_small_problem(threads, schedule, T, B):
    rng = np.random.default_rng(T * 10 + B)
    I, H = 4, 6
    x, w, h0, c0 = problem(rng, T, B, I, H)
    for lengths in (None, rng.integers(0, T + 1, B)):
        dy, dhn, dcn = upstream(rng, T, B, H)
        fn, _ = lstm_case(x, w, h0, c0, lengths, dy, dhn, dcn)
        out = run_all(fn, schedule, [(3, "batch"), (5, "batch"), (8, "batch"), (4, "auto")])
        check_reference(out, x, w, h0, c0, lengths, dy, dhn, dcn)
