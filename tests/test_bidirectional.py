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
