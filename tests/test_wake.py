"""Small calls after an idle gap that the team was seen to wake from slowly run on the calling
thread alone (dispatch.h, "Waking the team after an idle gap"): the learning rule, the choice of
one thread, and the same results either way. No timing is asserted: the learning is driven
through _core._note_team_region, the choice through _core._set_slow_wake_gap."""

from __future__ import annotations

import time

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core

MS = 1_000_000


@pytest.fixture
def wake():
    """Two threads, a region run (so an end time is known), and the learned gap restored."""
    before_threads = lstm_fast.get_num_threads()
    before = _core._wake_state()["slow_gap_ns"]
    lstm_fast.set_num_threads(2)
    layer = lstm_fast.LSTM(256, 256, seed=0).eval()
    layer(np.zeros((1, 1, 256), np.float32))  # a one-step call: 2^19 multiply-adds, 2 threads
    yield layer
    _core._set_slow_wake_gap(before or 0)
    lstm_fast.set_num_threads(before_threads)


def test_learns_the_shortest_gap_after_which_a_wake_was_slow(wake):
    _core._set_slow_wake_gap(0)
    assert _core._wake_state()["slow_gap_ns"] is None
    end = _core._wake_state()["last_region_end_ns"]
    assert end > 0
    # a gap below 1 ms (the workers still spin), an unknown arrival or a quick one teach nothing
    _core._note_team_region(end + MS // 2, 5 * MS)
    end = _core._wake_state()["last_region_end_ns"]
    _core._note_team_region(end + 5 * MS, -1)
    end = _core._wake_state()["last_region_end_ns"]
    _core._note_team_region(end + 50 * MS, 10_000)
    assert _core._wake_state()["slow_gap_ns"] is None
    # a worker 2 ms late after a 30 ms gap: gaps of 30 ms wake slowly
    end = _core._wake_state()["last_region_end_ns"]
    _core._note_team_region(end + 30 * MS, 2 * MS)
    assert _core._wake_state()["slow_gap_ns"] == 30 * MS
    # a slow wake after a shorter gap lowers it; one after a longer gap, or a quick wake after
    # any gap, changes nothing (never unlearned)
    end = _core._wake_state()["last_region_end_ns"]
    _core._note_team_region(end + 20 * MS, 3 * MS)
    assert _core._wake_state()["slow_gap_ns"] == 20 * MS
    for gap, late in ((40 * MS, 5 * MS), (10 * MS, 10_000), (60 * MS, 10_000)):
        end = _core._wake_state()["last_region_end_ns"]
        _core._note_team_region(end + gap, late)
        assert _core._wake_state()["slow_gap_ns"] == 20 * MS
    # a region that started before the last one ended (two calls at once): no gap
    end = _core._wake_state()["last_region_end_ns"]
    _core._note_team_region(end - MS, 5 * MS)
    assert _core._wake_state()["slow_gap_ns"] == 20 * MS


def test_small_calls_run_on_one_thread_after_a_slow_gap(wake):
    layer = wake
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    _core._set_slow_wake_gap(0)  # none known: the one-step call wakes the team
    n0 = _core._wake_state()["regions"]
    h_team, c_team = (np.copy(a) for a in layer.step(x, None)[1])
    assert _core._wake_state()["regions"] > n0
    _core._set_slow_wake_gap(1)  # every gap is slow
    assert _core._wake_state()["slow"]
    time.sleep(0.002)  # (more than a millisecond since the last call: not a burst)
    n1 = _core._wake_state()["regions"]
    h_one, c_one = (np.copy(a) for a in layer.step(x, None)[1])
    assert _core._wake_state()["regions"] == n1  # the calling thread alone
    assert h_one.tobytes() == h_team.tobytes() and c_one.tobytes() == c_team.tobytes()
    time.sleep(0.002)
    y_one, _ = layer(x[None])
    assert _core._wake_state()["regions"] == n1
    assert y_one[0].tobytes() == h_team.tobytes()
    # calls following each other within a millisecond are a burst: they wake the team (one
    # that the machine delays by a millisecond runs alone again, so a few are made)
    for _ in range(50):
        layer.step(x, None)
    assert _core._wake_state()["regions"] > n1


def test_large_calls_keep_the_team_after_a_slow_gap(wake):
    _core._set_slow_wake_gap(1)
    x = np.random.default_rng(1).standard_normal((20, 16, 64)).astype(np.float32)
    layer = lstm_fast.LSTM(64, 128, seed=0).eval()
    n = _core._wake_state()["regions"]
    layer(x)  # 20 * 16 * 512 * 192 multiply-adds: above the small calls' bound
    assert _core._wake_state()["regions"] > n
