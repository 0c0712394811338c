"""Bidirectional layers run their two directions concurrently (each on half the thread team):
the results are bitwise those of running them one after the other, for every cell, lengths,
and thread counts; the per-thread thread count does not leak."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, rnn


def run(layer, x, lengths, concurrent, dy):
    before = rnn.BIDIRECTIONAL_CONCURRENT
    rnn.BIDIRECTIONAL_CONCURRENT = concurrent
    try:
        for p in layer.parameters():
            p.grad[...] = 0
        y, hid = layer(x, lengths=lengths)
        dx, dst = layer.backward(dy)
        grads = [p.grad.copy() for p in layer.parameters()]
    finally:
        rnn.BIDIRECTIONAL_CONCURRENT = before
    hid = hid if isinstance(hid, tuple) else (hid,)
    dst = dst if isinstance(dst, tuple) else (dst,)
    return [y, *hid, dx, *dst, *grads]


@pytest.mark.parametrize("cls", [lstm_fast.LSTM, lstm_fast.GRU, lstm_fast.RNN])
@pytest.mark.parametrize("threads_n", [2, 3])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_concurrent_directions_bitwise_equal(cls, threads_n, with_lengths, threads):
    rng = np.random.default_rng(7)
    T, B, I, H = 9, 5, 7, 17
    layer = cls(I, H, num_layers=2, bidirectional=True, seed=1).train()
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B) if with_lengths else None
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    lstm_fast.set_num_threads(threads_n)
    seq = run(layer, x, lengths, False, dy)
    con = run(layer, x, lengths, True, dy)
    for a, b in zip(seq, con):
        assert a.tobytes() == b.tobytes()
    assert _core._get_local_threads() == 0
    assert lstm_fast.get_num_threads() == threads_n


def test_local_threads_are_per_thread(threads):
    lstm_fast.set_num_threads(2)
    seen = {}

    def worker():
        _core._set_local_threads(1)
        seen["worker"] = lstm_fast.get_num_threads()
        _core._set_local_threads(0)
        seen["after"] = lstm_fast.get_num_threads()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": 1, "after": 2}
    assert lstm_fast.get_num_threads() == 2
    with pytest.raises(ValueError, match="^n: expected an int in"):
        _core._set_local_threads(-1)


def test_error_in_a_direction_propagates_and_leaves_no_override(threads):
    lstm_fast.set_num_threads(2)
    layer = lstm_fast.LSTM(3, 4, bidirectional=True, seed=0).train()
    y, _ = layer(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.zeros((2, 1, 7), np.float32))
    assert _core._get_local_threads() == 0


def test_directions_helper_joins_and_propagates(threads):
    lstm_fast.set_num_threads(4)
    before = rnn.BIDIRECTIONAL_CONCURRENT
    rnn.BIDIRECTIONAL_CONCURRENT = True
    try:
        counts = {}

        def ok(d):
            counts[d] = lstm_fast.get_num_threads()
            return d

        assert rnn._directions(ok, 2) == [0, 1]
        assert counts == {0: 2, 1: 2}

        def bad(d):
            if d == 1:
                raise RuntimeError("reverse failed")
            return d

        with pytest.raises(RuntimeError, match="reverse failed"):
            rnn._directions(bad, 2)
        assert _core._get_local_threads() == 0
        assert lstm_fast.get_num_threads() == 4
    finally:
        rnn.BIDIRECTIONAL_CONCURRENT = before


def test_directions_on_a_team_of_two_run_on_its_two_threads(threads):
    """On a team of two, the directions run on the team's own threads (_core._run_pair), each
    on one thread, at once; an error of either is raised once both are done (the forward
    direction's first), and no thread-count override is left behind."""
    lstm_fast.set_num_threads(2)
    before = rnn.BIDIRECTIONAL_CONCURRENT
    rnn.BIDIRECTIONAL_CONCURRENT = True
    try:
        seen = {}
        both = threading.Barrier(2, timeout=20)  # fails unless both run at the same time

        def ok(d):
            seen[d] = (lstm_fast.get_num_threads(), threading.get_native_id())
            both.wait()
            return d * 10

        assert rnn._directions(ok, 2) == [0, 10]
        assert seen[0][0] == seen[1][0] == 1
        assert seen[0][1] != seen[1][1]
        assert seen[0][1] == threading.get_native_id()  # the caller runs the forward one

        done = []

        def reverse_fails(d):
            if d == 1:
                raise RuntimeError("reverse failed")
            done.append(d)
            return d

        with pytest.raises(RuntimeError, match="reverse failed"):
            rnn._directions(reverse_fails, 2)
        assert done == [0]

        def both_fail(d):
            raise ValueError(f"direction {d}")

        with pytest.raises(ValueError, match="direction 0"):
            rnn._directions(both_fail, 2)
        assert _core._get_local_threads() == 0
        assert lstm_fast.get_num_threads() == 2
    finally:
        rnn.BIDIRECTIONAL_CONCURRENT = before


def test_run_pair_nested_runs_both_in_turn(threads):
    """_run_pair inside one of its own calls gets a team of one: both functions still run, in
    order, and their results come back as a pair."""
    lstm_fast.set_num_threads(2)
    order = []

    def inner(tag):
        def f():
            order.append(tag)
            return tag

        return f

    def outer():
        return _core._run_pair(inner("a"), inner("b"))

    res = _core._run_pair(outer, lambda: "c")
    assert res == (("a", "b"), "c")
    assert order == ["a", "b"]
    with pytest.raises(TypeError):
        _core._run_pair(None, lambda: 1)


def test_kernels_inside_a_pair_see_a_team_of_one(threads):
    """A layer's kernels run inside _run_pair on one thread each give the bits of the same
    calls outside it (their team queries and barriers must not see the pair)."""
    lstm_fast.set_num_threads(2)
    rng = np.random.default_rng(3)
    layers = [cls(7, 17, seed=2).train() for cls in (lstm_fast.LSTM, lstm_fast.GRU)]
    x = rng.standard_normal((9, 5, 7)).astype(np.float32)
    dy = rng.standard_normal((9, 5, 17)).astype(np.float32)

    def run_one(layer):
        def f():
            _core._set_local_threads(1)
            try:
                y, _ = layer(x)
                dx, _ = layer.backward(dy)
                return y.copy(), dx.copy()
            finally:
                _core._set_local_threads(0)

        return f

    paired = _core._run_pair(run_one(layers[0]), run_one(layers[1]))
    for layer, (y, dx) in zip(layers, paired):
        y1, dx1 = run_one(layer)()
        assert y.tobytes() == y1.tobytes() and dx.tobytes() == dx1.tobytes()
