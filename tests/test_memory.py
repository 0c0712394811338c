"""Bounded memory: >= 10,000 forward/backward calls and the resident set stops growing; caches
(and the workspaces and saved gates they own) are freed with them. Bounds, never timings."""

from __future__ import annotations

import gc
import os
import sys

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops

f32 = np.float32
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1 << 20

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)"
)


def rss() -> int:
    """Resident set size in bytes (second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def small_problem(seed=0, T=4, B=3, I=5, H=8):
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(f32)  # noqa: E731
    return (r(T, B, I), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H), r(B, H), r(B, H)), r(T, B, H)


def test_rss_bounded_over_10000_forward_backward(capsys):
    """10,000 (forward training + backward) calls plus 10,000 inference calls and gemms."""
    args, dy = small_problem()
    n, warm = 10_000, 1_000
    for _ in range(warm):
        _, _, _, cache = ops.lstm_forward(*args, training=True)
        ops.lstm_backward(cache, dy)
    gc.collect()
    before = rss()
    marks = []
    for i in range(n):
        y, h, c, cache = ops.lstm_forward(*args, training=True)
        g = ops.lstm_backward(cache, dy)
        ops.lstm_forward(*args)
        ops.gemm(args[1], args[0][0], trans_b=True)
        if i % 2_000 == 1_999:
            marks.append(rss())
    del y, h, c, cache, g
    gc.collect()
    after = rss()
    with capsys.disabled():
        print(
            f"\n[memory] {n} forward+backward (+{n} inference, +{n} gemm) calls: RSS "
            f"{before / MB:.1f} MB -> {after / MB:.1f} MB; checkpoints "
            + ", ".join(f"{m / MB:.1f}" for m in marks)
        )
    # A leak of even one 32-float buffer per call would be 10,000 * 128 B = 1.2 MB per kind; a
    # leaked cache (gates + cells) >= 10,000 * 768 B. Allow allocator noise only.
    assert after - before < 4 * MB, (before, after, marks)
    assert marks[-1] - marks[1] < 2 * MB, marks  # stopped growing


def test_big_caches_and_workspaces_freed(capsys):
    """Training forwards whose caches and workspaces are megabytes each: memory returns."""
    T, B, I, H = 40, 16, 64, 128  # gates (T, B, 4H) = 1.3 MB, workspace of the same order
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(f32)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.1).astype(f32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.1).astype(f32)
    dy = rng.standard_normal((T, B, H)).astype(f32)
    for _ in range(5):
        _, _, _, cache = ops.lstm_forward(x, w_ih, w_hh, training=True)
        ops.lstm_backward(cache, dy)
    del cache
    gc.collect()
    before = rss()
    for _ in range(200):
        _, _, _, cache = ops.lstm_forward(x, w_ih, w_hh, training=True)
        nbytes = cache.nbytes
        ops.lstm_backward(cache, dy)
        del cache
    gc.collect()
    after = rss()
    with capsys.disabled():
        print(
            f"\n[memory] 200 x (cache {nbytes / MB:.1f} MB + workspaces): RSS "
            f"{before / MB:.1f} MB -> {after / MB:.1f} MB"
        )
    assert after - before < 3 * nbytes + 4 * MB


def test_reuse_pool_bounded_and_emptied():
    """Large result arrays and workspaces go back to lstm_fast's pool when freed: the pool stays
    within its caps (8 blocks, 1 GiB), later calls reuse it, and empty_cache() empties it."""
    T, B, I, H = 30, 8, 64, 96  # gates (T, B, 4H) = 369 KB: above the 256 KiB pool minimum
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, B, I)).astype(f32)
    w_ih = (rng.standard_normal((4 * H, I)) * 0.1).astype(f32)
    w_hh = (rng.standard_normal((4 * H, H)) * 0.1).astype(f32)
    dy = rng.standard_normal((T, B, H)).astype(f32)
    lstm_fast.empty_cache()
    assert lstm_fast.cached_bytes() == 0
    y, _, _, cache = ops.lstm_forward(x, w_ih, w_hh, training=True)
    g = ops.lstm_backward(cache, dy)
    want = (y.copy(), g.dx.copy(), g.dweight_hh.copy())
    del y, cache, g
    gc.collect()
    kept = lstm_fast.cached_bytes()
    assert kept >= T * B * 4 * H * 4  # at least the gates cache came back
    assert kept <= 1 << 30
    # Reused blocks hold stale values: results must not depend on that.
    for _ in range(3):
        y, _, _, cache = ops.lstm_forward(x, w_ih, w_hh, training=True)
        g = ops.lstm_backward(cache, dy)
        for a, b in zip((y, g.dx, g.dweight_hh), want):
            np.testing.assert_array_equal(a, b)
        del y, cache, g
    gc.collect()
    assert lstm_fast.cached_bytes() <= max(kept, 1 << 30)
    lstm_fast.empty_cache()
    assert lstm_fast.cached_bytes() == 0


def test_cache_releases_its_references():
    """The cache holds references to x, the weights and y (no copies); deleting it drops them."""
    args, dy = small_problem()
    x, w_ih, w_hh = args[:3]
    counts = [sys.getrefcount(a) for a in (x, w_ih, w_hh)]
    y, _, _, cache = ops.lstm_forward(*args, training=True)
    y_count = sys.getrefcount(y)
    assert all(sys.getrefcount(a) > n for a, n in zip((x, w_ih, w_hh), counts))
    ops.lstm_backward(cache, dy)
    del cache
    gc.collect()
    assert [sys.getrefcount(a) for a in (x, w_ih, w_hh)] == counts
    assert sys.getrefcount(y) == y_count - 1


def test_layer_rss_bounded(capsys):
    """The LSTM layer (2 layers, bidirectional): 2,000 training steps, bounded memory."""
    lstm = lstm_fast.LSTM(5, 8, num_layers=2, bidirectional=True, seed=0)
    x = np.random.default_rng(2).standard_normal((4, 3, 5)).astype(f32)
    for _ in range(200):
        y, _ = lstm(x)
        lstm.backward(y)
    gc.collect()
    before = rss()
    for _ in range(2_000):
        y, _ = lstm(x)
        lstm.backward(y)
    gc.collect()
    after = rss()
    with capsys.disabled():
        print(f"\n[memory] layer 2,000 steps: RSS {before / MB:.1f} MB -> {after / MB:.1f} MB")
    assert after - before < 4 * MB
