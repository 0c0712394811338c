"""Review 20: _core.lstm_forward_embedded is bitwise lstm_forward(E[ids], ...) for every shape.

The embedded forward computes table = b_ih + b_hh + E . W_ih^T (V rows) once and gathers its
rows by id; lstm_forward with x = E[ids] projects T * B rows. The two agree bitwise only if
every table row is summed exactly as the plain forward sums a row of x on the path it takes:
the unpacked path of tiny problems (T * B <= 4 or T <= 2: dot products over W_ih's rows,
kernel gemm_nt) or the packed micro-kernel (the shared GEMM, one or two rows included, and the
batch split's own-rows blocks). Before the fix the table of one or two rows came from gemm()'s
dot products and a larger one from the micro-kernel, whatever the path: V <= 2 with the packed
path and V >= 3 with the unpacked path differed in the last bits: 7,270 of the 27,648 cases
below on an AVX-512 machine (generic, avx2, avx512: 1,472-1,496 of 3,072 tiny and 940 of 3,840
packed each; the scalar kernels sum one depth block alike either way).

Covered: V in {1, 2, 3, 7, 17, 33}; tiny (unpacked) and larger (packed) T * B; H in
{1, 7, 17, 64}; I in {1, 5, 32, 33}; biases present or absent; inference and training (the gates
and cells caches too); 1 and 2 threads (and forced schedules on 2); every available ISA. The
backward with an embedded cache: dembedding is the index-add of the plain dx rows to float
rounding (dZ's rows are summed per token before the product with W_ih, a different order), the
weight and bias gradients likewise; the embedded backward itself is bitwise the same at 1 and
2 threads.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _core

VS = (1, 2, 3, 7, 17, 33)
HS = (1, 7, 17, 64)
IS = (1, 5, 32, 33)  # 32: a multiple of 16 (W_ih's rows read at a shift, _at_shift)
TINY = ((1, 1), (2, 2), (4, 1), (2, 9))  # the unpacked path (T * B <= 4 or T <= 2)
LARGER = ((9, 5), (30, 16))  # the packed path (shared GEMM, or the batch split's own rows)


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _at_shift(a, k):
    """A C-contiguous copy of a whose data starts k floats past a 64-byte boundary: with I a
    multiple of 16, AVX-512's dot products then read W_ih's rows as shifted aligned vectors."""
    buf = np.empty(a.size + 16, np.float32)
    start = (k - buf.ctypes.data % 64 // 4) % 16
    out = buf[start : start + a.size].reshape(a.shape)
    out[...] = a
    return out


def _weights(rng, V, I, H, bias):
    E = _f32(rng.standard_normal((V, I)))
    w_ih = _at_shift(rng.standard_normal((4 * H, I)) * 0.4, (V + H) % 16)
    w_hh = _f32(rng.standard_normal((4 * H, H)) * 0.4)
    b_ih = _f32(rng.standard_normal(4 * H)) if bias else None
    b_hh = _f32(rng.standard_normal(4 * H)) if bias else None
    return E, w_ih, w_hh, b_ih, b_hh


def _mismatches(T, B, V, I, H, bias, training, seed):
    """Names of the outputs of lstm_forward_embedded that differ bitwise from lstm_forward's
    on the gathered rows (empty when all agree)."""
    rng = np.random.default_rng(seed)
    E, w_ih, w_hh, b_ih, b_hh = _weights(rng, V, I, H, bias)
    ids = rng.integers(0, V, (T, B)).astype(np.int64)
    ids.flat[0] = V - 1  # the last row of the table is read
    h0 = _f32(rng.standard_normal((B, H)))
    c0 = _f32(rng.standard_normal((B, H)))
    x = np.ascontiguousarray(E[ids])
    want = _core.lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, training)
    got = _core.lstm_forward_embedded(ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0, training)
    bad = [n for n, a, b in zip(("y", "h_n", "c_n"), want, got) if not np.array_equal(a, b)]
    if training:
        for n in ("gates", "cells"):
            if not np.array_equal(getattr(want[3], n), getattr(got[3], n)):
                bad.append(n)
    return bad


def _sweep(shapes, schedules=("auto",)):
    failures = []
    cases = 0
    for (T, B), V, H, I, bias, training, n in itertools.product(
        shapes, VS, HS, IS, (True, False), (False, True), (1, 2)
    ):
        lstm_fast.set_num_threads(n)
        for sched in schedules if n > 1 else ("auto",):
            _core._set_schedule(sched)
            cases += 1
            seed = ((T * 31 + B) * 37 + V) * 41 + H * 43 + I
            bad = _mismatches(T, B, V, I, H, bias, training, seed)
            if bad:
                failures.append(((T, B, V, I, H), bias, training, n, sched, bad))
    return cases, failures


def _report(failures, cases):
    lines = [f"{len(failures)} of {cases} cases differ bitwise, e.g.:"]
    lines += [str(f) for f in failures[:10]]
    return "\n".join(lines)


def test_tiny_shapes_bitwise(isa, threads, schedule):
    """The unpacked path (T * B <= 4 or T <= 2), every V, H, I, bias, mode, 1 and 2 threads."""
    cases, failures = _sweep(TINY)
    assert not failures, _report(failures, cases)


def test_packed_shapes_bitwise(isa, threads, schedule):
    """The packed path (shared GEMM; on 2 threads also each forced schedule, the batch split's
    own-rows projection included), every V, H, I, bias, mode."""
    cases, failures = _sweep(LARGER, ("auto", "units", "batch", "serial"))
    assert not failures, _report(failures, cases)


@pytest.mark.parametrize(
    "T,B,V,I,H",
    [(1, 1, 1, 5, 7), (2, 2, 2, 33, 17), (4, 1, 7, 1, 64), (9, 5, 1, 5, 17), (30, 16, 33, 33, 64)],
)
def test_backward_matches_gathered_input(isa, threads, T, B, V, I, H):
    """What the backward promises: dembedding += the index-add of the plain dx rows, and the
    same weight, bias and state gradients, to float rounding (dZ's rows are summed per token
    first); bitwise the same at 1 and 2 threads."""
    rng = np.random.default_rng(T * 1000 + B * 100 + V)
    E, w_ih, w_hh, b_ih, b_hh = _weights(rng, V, I, H, True)
    ids = rng.integers(0, V, (T, B)).astype(np.int64)
    h0, c0 = (_f32(rng.standard_normal((B, H))) for _ in range(2))
    dy = _f32(rng.standard_normal((T, B, H)))
    dhn, dcn = (_f32(rng.standard_normal((B, H))) for _ in range(2))
    dE0 = _f32(rng.standard_normal((V, I)))
    runs = []
    for n in (1, 2):
        lstm_fast.set_num_threads(n)
        *_, c1 = _core.lstm_forward(
            np.ascontiguousarray(E[ids]), w_ih, w_hh, b_ih, b_hh, h0, c0, True
        )
        *_, c2 = _core.lstm_forward_embedded(ids, E, w_ih, w_hh, b_ih, b_hh, h0, c0, True)
        r1 = _core.lstm_backward(c1, dy, dhn, dcn)
        dE = dE0.copy()
        r2 = _core.lstm_backward(c2, dy, dhn, dcn, dembedding=dE)
        assert np.shares_memory(r2[0], dE)
        want = dE0.astype(np.float64)
        np.add.at(want, ids.reshape(-1), r1[0].reshape(-1, I).astype(np.float64))
        np.testing.assert_allclose(dE, want, rtol=1e-4, atol=1e-5)
        for a, b in zip(r1[1:], r2[1:]):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
        runs.append([dE.tobytes()] + [a.tobytes() for a in r2[1:]])
    assert runs[0] == runs[1]


# ---- the layer: the table only when the vocabulary has at most T * B rows --------------------


@pytest.mark.parametrize("T,B,V", [(1, 1, 40), (2, 3, 7), (3, 4, 12), (5, 4, 12), (1, 1, 1)])
def test_layer_forward_embedded_takes_the_table_only_when_it_is_smaller(T, B, V):
    """A call with fewer tokens than the vocabulary (one token at a time while generating) ran
    the table of all V rows: V times the projection work at T = B = 1. The plain gather runs
    instead; outputs bitwise either way, the gradients to the embedding alike."""
    from lstm_fast import nn

    rng = np.random.default_rng(T * 100 + B * 10 + V)
    layer = lstm_fast.LSTM(6, 5, seed=1)
    emb = nn.Embedding(V, 6)
    ids = rng.integers(0, V, size=(T, B))
    y, (h, c) = layer.forward_embedded(ids, emb)
    fused = layer._saved[1]["embedding"][1]
    assert fused == (V <= T * B)
    plain = lstm_fast.LSTM(6, 5, seed=1)
    y2, (h2, c2) = plain(emb.weight.data[ids])
    for a, b in ((y, y2), (h, h2), (c, c2)):
        assert np.array_equal(a, b)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    emb.weight.grad = None
    assert layer.backward(dy)[0] is None  # the input gradient went to the embedding
    got = emb.weight.grad.copy()
    dx = plain.backward(dy)[0]
    want = np.zeros_like(got)
    np.add.at(want, ids.ravel(), dx.reshape(-1, 6))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(layer.parameters(), plain.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("T,B", [(1, 1), (4, 3)])
@pytest.mark.parametrize("bad", [-1, 12, 2**64 - 1])
def test_layer_forward_embedded_quotes_the_first_bad_id_on_either_path(T, B, bad):
    """Both paths (the table for 12 tokens, the gather for 1) quote the caller's first bad id,
    as given (uint64 above int64's range unwrapped)."""
    from lstm_fast import nn

    layer = lstm_fast.LSTM(4, 5, seed=0)
    emb = nn.Embedding(10, 4)
    dtype = np.uint64 if bad > 2**63 else np.int64
    ids = np.full((T, B), 3, dtype)
    ids.flat[-1] = bad
    with pytest.raises(IndexError, match=rf"^ids: expected values in \[0, V=10\), got {bad}$"):
        layer.forward_embedded(ids, emb)
    assert layer._saved is None
