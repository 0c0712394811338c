"""Review 20: the LSTM backward computes dx's rows in its step loop (lstm_backward, step_dx)
from the slivers of dZ_t it packs for dh_next, with W_ih packed in full-depth panels, instead
of one GEMM over all of dZ afterwards. It walks the GEMM's depth blocks and panel pairs, so dx
must be bitwise the GEMM's: compared here between schedules that take either way (one thread
with at least 4 rows, threads owning rows, threads splitting columns: always the GEMM), for
every ISA, with sizes that leave SIMD tails in I, H and the row tiles. The float64 reference
checks the result itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core, ops, reference

SHAPES = [
    (7, 4, 1, 7),
    (5, 6, 17, 17),
    (9, 8, 65, 100),
    (4, 9, 33, 64),
    (6, 13, 7, 33),
    (3, 17, 130, 48),
    (2, 12, 64, 20),
    (5, 5, 17, 70),
    (3, 4, 9, 129),
]


def _problem(T, B, I, H, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.3).astype(np.float32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.3).astype(np.float32)
    b = (rng.standard_normal((2, 4 * H)) * 0.3).astype(np.float32)
    h0 = (rng.standard_normal((B, H)) * 0.5).astype(np.float32)
    c0 = (rng.standard_normal((B, H)) * 0.5).astype(np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    dh = rng.standard_normal((B, H), dtype=np.float32)
    dc = rng.standard_normal((B, H), dtype=np.float32)
    return x, w_ih, w_hh, b, h0, c0, dy, dh, dc


def _grads(p, threads, schedule):
    x, w_ih, w_hh, b, h0, c0, dy, dh, dc = p
    lstm_fast.set_num_threads(threads)
    _core._set_schedule(schedule)
    try:
        cache = ops.lstm_forward(x, w_ih, w_hh, b[0], b[1], h0, c0, training=True)[3]
        return ops.lstm_backward(cache, dy, dh, dc)
    finally:
        _core._set_schedule("auto")
        lstm_fast.set_num_threads(2)


@pytest.mark.parametrize("isa", lstm_fast.cpu_info()["available_isas"])
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_step_dx_bitwise_the_gemms(isa, T, B, I, H):
    before = lstm_fast.cpu_info()["isa"]
    _core._set_isa(isa)
    try:
        p = _problem(T, B, I, H, seed=T * 1000 + B * 100 + I + H)
        runs = {
            "serial": _grads(p, 1, "auto"),  # the step loop's dx (B >= 4)
            "batch": _grads(p, 2, "batch"),  # its own rows: the step loop when B / 2 >= 4
            "units": _grads(p, 2, "units"),  # columns of dh split: the GEMM after the loop
            "batch3": _grads(p, 3, "batch"),
        }
    finally:
        _core._set_isa(before)
    want = runs["units"]
    for name, got in runs.items():
        for k, (a, b_) in enumerate(zip(got, want)):
            assert np.array_equal(a, b_), f"{name}: gradient {k} differs from the GEMM path's"


@pytest.mark.parametrize("T,B,I,H", SHAPES[:4])
def test_step_dx_against_float64(T, B, I, H):
    p = _problem(T, B, I, H, seed=7)
    x, w_ih, w_hh, b, h0, c0, dy, dh, dc = p
    got = _grads(p, 1, "auto")
    f64 = [a.astype(np.float64) for a in (x, w_ih, w_hh, b[0], b[1], h0, c0)]
    cache = reference.lstm_forward(*f64)[3]
    ref = reference.lstm_backward(
        cache, dy.astype(np.float64), dh.astype(np.float64), dc.astype(np.float64)
    )
    np.testing.assert_allclose(got[0], ref[0], rtol=2e-4, atol=2e-4)
