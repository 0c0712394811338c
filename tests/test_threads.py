"""Thread safety: the core has no mutable global state, so concurrent calls from Python threads
(the GIL is released around compute) give bitwise the results of a sequential run, on different
and on shared inputs, while other threads change the kernel thread count."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops

N_THREADS = 8
CALLS_PER_THREAD = 25  # forward + backward + gemm each

f32 = np.float32


def problem(seed: int, T=6, B=3, I=7, H=9):
    rng = np.random.default_rng(seed)

    def r(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(f32)

    args = (r(T, B, I), r(4 * H, I, scale=0.4), r(4 * H, H, scale=0.4), r(4 * H), r(4 * H))
    state = (r(B, H), r(B, H))
    up = (r(T, B, H), r(B, H), r(B, H))
    gemm_args = (r(33, 17), r(17, 21))
    return args, state, up, gemm_args


def work(p):
    """One forward (training), one backward and one gemm: every output array, in order."""
    args, (h0, c0), (dy, dhn, dcn), (a, b) = p
    y, h_n, c_n, cache = ops.lstm_forward(*args, h0, c0, training=True)
    g = ops.lstm_backward(cache, dy, dhn, dcn)
    return [y, h_n, c_n, *g, ops.gemm(a, b)]


def run_threads(target, n=N_THREADS):
    errors = []
    barrier = threading.Barrier(n)

    def wrapped(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


def same(got, want):
    assert len(got) == len(want)
    for u, v in zip(got, want):
        assert (u is None and v is None) or np.array_equal(u, v), "results differ from sequential"


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_step_barrier_with_more_threads_than_cores(cell, threads, schedule):
    """The per-step barrier of the units split (a spinning one that yields after a while) with a
    team larger than the machine (several threads per core, so waiters must give way): many
    steps, bitwise the results of one thread, concurrently from two Python threads."""
    rng = np.random.default_rng(5)
    T, B, I, H = 300, 2, 9, 70
    g = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1}[cell]
    x = rng.standard_normal((T, B, I)).astype(f32)
    w = [
        (rng.standard_normal(s) * 0.3).astype(f32)
        for s in ((g * H, I), (g * H, H), (g * H,), (g * H,))
    ]
    dy = rng.standard_normal((T, B, H)).astype(f32)

    def run():
        if cell == "LSTM":
            y, h, c, cache = ops.lstm_forward(x, *w, training=True)
            return [y, h, c, *ops.lstm_backward(cache, dy)]
        fwd, bwd = (
            (ops.gru_forward, ops.gru_backward)
            if cell == "GRU"
            else (ops.rnn_forward, ops.rnn_backward)
        )
        y, h, cache = fwd(x, *w, training=True)
        return [y, h, *bwd(cache, dy)]

    lstm_fast.set_num_threads(1)
    want = run()
    schedule("units")
    lstm_fast.set_num_threads(3 * (os.cpu_count() or 1) + 1)
    out = [None, None]

    def work_i(i):
        out[i] = run()

    run_threads(work_i, n=2)
    for got in out:
        same(got, want)


@pytest.mark.parametrize("shared", [False, True], ids=["different", "shared"])
def test_concurrent_forward_backward_bitwise(shared, threads):
    """8 threads x 25 (forward, backward, gemm) on different / the same inputs vs sequential."""
    lstm_fast.set_num_threads(2)
    problems = [problem(0 if shared else i) for i in range(N_THREADS)]
    expected = [work(p) for p in problems]  # sequential
    results = [[] for _ in range(N_THREADS)]

    def target(i):
        for _ in range(CALLS_PER_THREAD):
            results[i].append(work(problems[i]))

    run_threads(target)
    for i in range(N_THREADS):
        assert len(results[i]) == CALLS_PER_THREAD
        for r in results[i]:
            same(r, expected[i])
    # Shared inputs were only read.
    for i in range(N_THREADS):
        same(work(problems[i]), expected[i])


def test_concurrent_calls_while_thread_count_changes(threads):
    """Workers compute while other threads call set_num_threads: results stay bitwise equal
    (the kernels are deterministic at any thread count) and nothing crashes."""
    lstm_fast.set_num_threads(2)
    problems = [problem(100 + i, T=5, B=4, I=33, H=70) for i in range(4)]
    expected = [work(p) for p in problems]
    stop = threading.Event()
    results = [[] for _ in range(4)]

    def target(i):
        if i < 4:
            for _ in range(10):
                results[i].append(work(problems[i]))
            return
        rng = np.random.default_rng(i)
        while not stop.is_set() and all(len(r) < 10 for r in results[:4]):
            n = int(rng.integers(1, 5))
            lstm_fast.set_num_threads(n)
            assert 1 <= lstm_fast.get_num_threads() <= 4
            lstm_fast.cpu_info()
        stop.set()

    try:
        run_threads(target)
    finally:
        stop.set()
    for i in range(4):
        assert len(results[i]) == 10
        for r in results[i]:
            same(r, expected[i])


def test_set_num_threads_from_many_threads(threads):
    """set_num_threads / get_num_threads from 8 threads at once: always a value someone set."""

    def target(i):
        for k in range(500):
            n = 1 + (i + k) % 4
            lstm_fast.set_num_threads(n)
            assert 1 <= lstm_fast.get_num_threads() <= 4

    run_threads(target)
    lstm_fast.set_num_threads(3)
    assert lstm_fast.get_num_threads() == 3


def test_concurrent_layers(threads):
    """Separate LSTM layers (two layers, bidirectional) trained from 8 threads at once."""
    lstm_fast.set_num_threads(1)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 2, 6)).astype(f32)
    dy = rng.standard_normal((5, 2, 2 * 8)).astype(f32)

    def one():
        lstm = lstm_fast.LSTM(6, 8, num_layers=2, bidirectional=True, seed=3)
        y, (h, c) = lstm(x)
        dx, _ = lstm.backward(dy)
        return [y, h, c, dx] + [p.grad for p in lstm.parameters()]

    expected = one()
    results = [[] for _ in range(N_THREADS)]

    def target(i):
        for _ in range(5):
            results[i].append(one())

    run_threads(target)
    for rs in results:
        for r in rs:
            same(r, expected)


# ---- fork --------------------------------------------------------------------------------------

_FORK_CHILD = r"""
import os, sys
import numpy as np
import lstm_fast
from lstm_fast import ops

used_before_fork = sys.argv[1] == "1"
lstm_fast.set_num_threads(2)
rng = np.random.default_rng(0)
T, B, I, H = 7, 17, 33, 70  # 17 rows, 70 units: both the batch and the units schedule split
x = rng.standard_normal((T, B, I), dtype=np.float32)
w_ih = (rng.standard_normal((4 * H, I)) * 0.2).astype(np.float32)
w_hh = (rng.standard_normal((4 * H, H)) * 0.2).astype(np.float32)
dy = rng.standard_normal((T, B, H), dtype=np.float32)
a = rng.standard_normal((300, 170), dtype=np.float32)
bi = lstm_fast.LSTM(I, H, bidirectional=True, num_layers=2, seed=0)


def work():
    out = []
    for sched in ("units", "batch"):
        lstm_fast.ops._core._set_schedule(sched)
        y, h, c, cache = ops.lstm_forward(x, w_ih, w_hh, training=True)
        out += [y, h, c, *ops.lstm_backward(cache, dy)]
    lstm_fast.ops._core._set_schedule("auto")
    out.append(ops.gemm(a, a, trans_b=True))
    y, _ = bi(x)
    bi.zero_grad()
    dx, (dh0, dc0) = bi.backward(np.ones_like(y))
    return out + [y, dx, dh0, dc0] + [p.grad.copy() for p in bi.parameters()]


if used_before_fork:
    ref = work()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    info = lstm_fast.cpu_info()
    got = work()
    same = (not used_before_fork) or all(np.array_equal(p, q) for p, q in zip(ref, got))
    os.write(w, f"{info['num_threads']} {int(info['forked_serial'])} {int(same)}".encode())
    os._exit(0)
os.close(w)
msg = os.read(r, 100).decode()
_, status = os.waitpid(pid, 0)
print(msg, os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no os.fork on this platform")
@pytest.mark.parametrize("used_before_fork", [True, False])
def test_forked_child_runs_and_does_not_hang(used_before_fork):
    """GNU OpenMP's team does not survive fork: a child forked after the parent ran on two
    threads must run on one (bitwise the parent's results), not wait forever for the parent's
    workers; a child forked before any multi-threaded call keeps its threads."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(lstm_fast.__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD, "1" if used_before_fork else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    threads, serial, same, code = proc.stdout.split()
    assert code == "0"
    assert same == "1"
    if used_before_fork:
        assert (threads, serial) == ("1", "1")
    else:
        assert (threads, serial) == ("2", "0")


@pytest.mark.parametrize("kind", ["GRU", "RNN"])
@pytest.mark.parametrize("H", [239, 240, 300])
@pytest.mark.parametrize("T,B", [(1, 1), (2, 2), (1, 3)])
def test_few_rows_gru_rnn_bitwise_for_any_thread_count(isa, threads, kind, T, B, H):
    """At T * B <= 4 the GRU splits its units in blocks of 8 over the threads, so a thread's
    slice may start inside a 16-wide vector: GCC had fused x_n + r * hn into one FMA in the
    full-vector block only (AVX-512), and units of a tail block differed by one rounding
    between 1 and 2 threads (GRU(1, 240) at T = B = 1)."""
    rng = np.random.default_rng(H + T + B)
    make = lstm_fast.GRU if kind == "GRU" else lstm_fast.RNN
    x = rng.standard_normal((T, B, 16)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    runs = []
    for n in (1, 2, 3):
        lstm_fast.set_num_threads(n)
        m = make(16, H, seed=1)
        y, h_n = m(x, h0)
        dx, dh0 = m.backward(dy)
        runs.append([y, h_n, dx, dh0] + [p.grad for p in m.parameters()])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
