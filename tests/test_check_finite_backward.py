"""ops.*_backward(check_finite=True) after a forward with batch_sizes: dy is checked only at the
steps the kernels read (its padding is never read, as x's padding is not in the forward), in
the caller's batch order with sorted_indices; the caches report their batch_sizes and
sorted_indices as copies."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import ops

T, B, I, H, P = 6, 4, 3, 5, 2
LENGTHS = np.array([6, 2, 4, 1])  # the caller's rows
ORDER = np.argsort(-LENGTHS, kind="stable")  # sorted row r is the caller's row ORDER[r]
BATCH_SIZES = (np.sort(LENGTHS)[::-1][None, :] > np.arange(T)[:, None]).sum(1).astype(np.int64)


def _weights(rng, gates, proj=False):
    w = [
        rng.uniform(-0.3, 0.3, (gates * H, I)).astype(np.float32),
        rng.uniform(-0.3, 0.3, (gates * H, P if proj else H)).astype(np.float32),
        rng.uniform(-0.3, 0.3, gates * H).astype(np.float32),
        rng.uniform(-0.3, 0.3, gates * H).astype(np.float32),
    ]
    return w


def _forward(kind, x, sorted_rows):
    """A training forward with batch_sizes; x's rows in the caller's order with
    ``sorted_rows`` (LSTM only), else already sorted by length. Returns (cache, backward,
    output width)."""
    rng = np.random.default_rng(1)
    kw = dict(training=True, batch_sizes=BATCH_SIZES)
    if kind == "lstm":
        if sorted_rows:
            kw["sorted_indices"] = ORDER
        *_, cache = ops.lstm_forward(x, *_weights(rng, 4), **kw)
        return cache, ops.lstm_backward, H
    if kind == "lstm_proj":
        w_hr = rng.uniform(-0.3, 0.3, (P, H)).astype(np.float32)
        *_, cache = ops.lstm_forward(x, *_weights(rng, 4, proj=True), weight_hr=w_hr, **kw)
        return cache, ops.lstm_backward, P
    fwd, bwd = (
        (ops.gru_forward, ops.gru_backward)
        if kind == "gru"
        else (ops.rnn_forward, ops.rnn_backward)
    )
    *_, cache = fwd(x, *_weights(rng, 3 if kind == "gru" else 1), **kw)
    return cache, bwd, H


def _real(sorted_rows):
    """(T, B) steps the kernels read, in x's row order."""
    lengths = LENGTHS if sorted_rows else np.sort(LENGTHS)[::-1]
    return np.arange(T)[:, None] < lengths[None, :]


CASES = [("lstm", False), ("lstm", True), ("lstm_proj", False), ("gru", False), ("rnn", False)]


@pytest.mark.parametrize("kind,sorted_rows", CASES)
def test_backward_check_finite_ignores_dy_padding(kind, sorted_rows):
    rng = np.random.default_rng(0)
    real = _real(sorted_rows)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    x[~real] = np.nan  # never read
    cache, backward, F = _forward(kind, x, sorted_rows)
    dy = rng.standard_normal((T, B, F)).astype(np.float32)
    dy[~real] = 0.0
    clean = backward(cache, dy)
    padded = dy.copy()
    padded[~real] = np.nan  # before: "dy: expected finite values, got NaN at index ..."
    checked = backward(cache, padded, check_finite=True)
    for a, b in zip(clean, checked):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind,sorted_rows", CASES)
def test_backward_check_finite_names_a_real_step(kind, sorted_rows):
    rng = np.random.default_rng(0)
    real = _real(sorted_rows)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    cache, backward, F = _forward(kind, x, sorted_rows)
    dy = rng.standard_normal((T, B, F)).astype(np.float32)
    dy[~real] = np.inf  # padding: ignored
    t, b = 3, int(np.flatnonzero(real[3])[-1])  # the last real row of step 3, x's order
    dy[t, b, 1] = np.nan
    with pytest.raises(
        ValueError, match=rf"^dy: expected finite values, got NaN at index \({t}, {b}, 1\)"
    ):
        backward(cache, dy, check_finite=True)
    dy[t, b, 1] = 0.0
    backward(cache, dy, check_finite=True)  # nothing left where the kernels read


@pytest.mark.parametrize("kind,sorted_rows", CASES)
def test_caches_report_batch_sizes_as_copies(kind, sorted_rows):
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    cache, backward, F = _forward(kind, x, sorted_rows)
    dy = np.ones((T, B, F), np.float32)
    before = backward(cache, dy)
    bs = cache.batch_sizes
    np.testing.assert_array_equal(bs, BATCH_SIZES)
    assert bs.dtype == np.int64
    bs[:] = 0  # the cache's own copy does not change
    np.testing.assert_array_equal(cache.batch_sizes, BATCH_SIZES)
    if kind == "lstm":
        order = cache.sorted_indices
        if sorted_rows:
            np.testing.assert_array_equal(order, ORDER)
            order[:] = 0
            np.testing.assert_array_equal(cache.sorted_indices, ORDER)
        else:
            assert order is None
    for a, b in zip(before, backward(cache, dy)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def test_caches_without_batch_sizes_report_none():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    *_, c1 = ops.lstm_forward(x, *_weights(rng, 4), training=True)
    *_, c2 = ops.gru_forward(x, *_weights(rng, 3), training=True)
    *_, c3 = ops.rnn_forward(x, *_weights(rng, 1), training=True)
    assert c1.batch_sizes is None and c1.sorted_indices is None
    assert c2.batch_sizes is None and c3.batch_sizes is None
    dy = np.ones((T, B, H), np.float32)
    dy[0, 0, 0] = np.nan  # without lengths every step is read
    for cache, backward in (
        (c1, ops.lstm_backward),
        (c2, ops.gru_backward),
        (c3, ops.rnn_backward),
    ):
        with pytest.raises(
            ValueError, match=r"^dy: expected finite values, got NaN at index \(0, 0, 0\)"
        ):
            backward(cache, dy, check_finite=True)


def test_check_finite_with_no_cache_leaves_the_error_to_the_core():
    dy = np.full((T, B, H), np.nan, np.float32)
    with pytest.raises(TypeError, match="cache"):
        ops.gru_backward(object(), dy, check_finite=False)
    with pytest.raises((TypeError, ValueError)):
        ops.gru_backward(object(), dy, check_finite=True)
