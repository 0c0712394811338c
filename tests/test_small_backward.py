"""The backward's unpacked path for few rows in all (T * B at most 16, an LSTM's batch of one up
to 4 steps, an LSTM with a projection 4 rows: unpacked_backward in csrc/cells/team.h): W_hh's
and W_ih's rows read in place for dh_prev and dx, each thread its own columns; the weight
gradients written row by row (sums over the T * B rows in order, no zeroing pass); for the LSTM
(with and without a projection), GRU and RNN (tanh, relu).

Every case runs on each available ISA against the float64 reference (random upstream gradients,
lengths with NaN in x's and dy's padding) and must be bitwise identical at 1, 2 and 3 threads
and under every forced schedule (the forced ones split the units among the threads even where
the automatic choice runs one thread). The path keeps the packed path's per-element arithmetic,
so the two agree bitwise where their summation orders are the same (test below).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_review24_kernels import C, _ids, problem, restore, run_core, sweep  # noqa: F401

import lstm_fast
from lstm_fast import _core

ISAS = lstm_fast.cpu_info()["available_isas"]
RUNS = [(1, "auto"), (2, "auto"), (2, "units"), (3, "units"), (2, "serial"), (2, "batch")]
HS = [1, 7, 17, 33, 130]
BS = [1, 2, 3]
IS = [1, 5, 17]


def _cases():
    out = []
    for c, cell in enumerate(["lstm", "gru", "tanh", "relu", "proj"]):
        for k, H in enumerate(HS):
            if cell == "proj" and H == 1:
                continue  # (a projection needs 0 < P < H)
            B, I = BS[(k + c) % 3], IS[(k + 2 * c) % 3]
            kw = {"P": max(1, H // 2)} if cell == "proj" else {}
            out.append(C(cell, 1, B, I, H, **kw))
        # more than one step (at most 4 rows in all), lengths, no h0, no bias, partial upstream
        kw = {"P": 5} if cell == "proj" else {}
        out += [
            C(cell, 2, 2, IS[c % 3], 33, lengths="random", **kw),
            C(cell, 4, 1, 17, 7, h0=False, **kw),
            C(cell, 3, 1, 5, 17, lengths="short", upstream="y", **kw),
            C(cell, 1, 3, 1, 130, lengths="zeros", bias=False, **kw),
        ]
        if cell != "proj":
            out.append(C(cell, 2, 2, 5, 1, lengths="ones", upstream="states", h0=False))
    out += [
        C("lstm", 2, 2, 17, 130, lengths="random", unsorted=True),  # rows in the caller's order
        C("lstm", 1, 3, 5, 33, lengths="zeros", unsorted=True),
        C("tanh", 1, 2, 5, 300),  # dh_prev over two depth blocks of the GEMM's (256)
        C("gru", 1, 4, 17, 130, lengths="full"),
        # up to 16 rows in all, and just past the edges (the packed path)
        C("gru", 16, 1, 5, 33, lengths="random"),
        C("gru", 17, 1, 5, 33),
        C("tanh", 8, 2, 17, 17, h0=False),
        C("relu", 3, 5, 1, 7, lengths="short"),
        C("lstm", 2, 8, 5, 130, lengths="random", unsorted=True),
        C("lstm", 4, 1, 17, 33, upstream="y"),
        C("lstm", 5, 1, 17, 33),
        C("lstm", 3, 6, 5, 17),
        C("gru", 2, 8, 17, 65, bias=False, h0=False),
    ]
    return out


CASES = _cases()


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_small_backward_matches_reference_on_every_isa_and_bitwise_across_threads(case):
    sweep(case, runs=RUNS)


def _same_order(case, lens, name):
    """Whether the packed path sums `name` in the unpacked path's order (see the module doc)."""
    rows = case["T"] * case["B"]
    if lens is not None and case["cell"] != "proj":  # (the projection's rows are all T * B)
        rows = int(np.minimum(lens, case["T"]).sum())
    if name == "dx" and case["I"] == 1 and rows <= 2:
        return False  # the GEMM's one- or two-row dot products (a tree over the lanes)
    if case["cell"] == "proj" and case["B"] == 1:
        return name in ("y", "hn", "cn")  # one row: the packed steps split their sums four ways
    if case["cell"] == "lstm" and case["B"] == 1:
        # one row: the packed step splits dh_prev's sum four ways (gemv_panel) or, at T <= 2,
        # sums all 4H rows in one block
        return name not in ("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh") or (
            case["T"] <= 2 and 4 * case["H"] <= 256
        )
    return True


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_small_backward_against_the_packed_path(case):
    """The unpacked path against the packed one it replaces (_set_unpacked_backward(False)):
    bitwise where the summation orders agree, else to float32 rounding."""
    a, lens = problem(case)
    for isa in ISAS:
        _core._set_isa(isa)
        lstm_fast.set_num_threads(2)
        try:
            _core._set_unpacked_backward(False)
            packed = run_core(case, a, lens)
        finally:
            _core._set_unpacked_backward(True)
        got = run_core(case, a, lens)
        for name, want in packed.items():
            if want is None:
                assert got[name] is None
                continue
            if _same_order(case, lens, name):
                assert got[name].tobytes() == want.tobytes(), f"{isa}: {name}"
            else:
                scale = max(1.0, float(np.abs(want).max(initial=0.0)))
                np.testing.assert_allclose(
                    got[name], want, rtol=1e-5, atol=1e-5 * scale, err_msg=f"{isa}: {name}"
                )


def _cell_call(cell, T, B, I, H, seed, lengths=False):
    """A training forward's cache and upstream gradients, and the core's backward function."""
    rng = np.random.default_rng(seed)
    G = {"gru": 3, "tanh": 1, "relu": 1, "lstm": 4}[cell] * H
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    w = [rng.standard_normal(s, dtype=np.float32) * 0.3 for s in ((G, I), (G, H), (G,), (G,))]
    h0 = rng.standard_normal((B, H), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    dhn = rng.standard_normal((B, H), dtype=np.float32)
    bs = None
    if lengths:
        bs = np.array([B] + [max(1, B - 1)] * (T - 1), np.int64)
    if cell == "lstm":
        c0 = rng.standard_normal((B, H), dtype=np.float32)
        cache = _core.lstm_forward(x, *w, h0, c0, training=True, batch_sizes=bs)[3]
        return cache, (dy, dhn, None), _core.lstm_backward
    if cell == "gru":
        cache = _core.gru_forward(x, *w, h0, training=True, batch_sizes=bs)[2]
        return cache, (dy, dhn), _core.gru_backward
    cache = _core.rnn_forward(x, *w, h0, nonlinearity=cell, training=True, batch_sizes=bs)[2]
    return cache, (dy, dhn), _core.rnn_backward


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("cell", ["lstm", "gru", "tanh", "relu"])
@pytest.mark.parametrize("T,B,I,H", [(1, 2, 5, 130), (1, 1, 17, 33), (2, 2, 1, 17), (4, 1, 5, 7)])
def test_small_backward_adds_into_given_gradients(cell, T, B, I, H):
    """Given gradient arrays are added to (+=), fresh ones written: given + fresh result, to
    rounding (bitwise with one step, where each element gets one sum added once)."""
    cache, up, backward = _cell_call(cell, T, B, I, H, seed=T * 100 + B * 10 + I + H)
    for isa in ISAS:
        _core._set_isa(isa)
        lstm_fast.set_num_threads(2)
        fresh = backward(cache, *up)
        rng = np.random.default_rng(3)
        given = [rng.standard_normal(g.shape, dtype=np.float32) for g in fresh[-4:]]
        start = [g.copy() for g in given]
        out = backward(cache, *up, *given)
        for g, s, f, o in zip(given, start, fresh[-4:], out[-4:]):
            assert o is g
            if T == 1:
                assert g.tobytes() == (s + f).tobytes(), isa
            else:
                np.testing.assert_allclose(g, s + f, rtol=1e-6, atol=1e-6, err_msg=isa)


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("cell", ["lstm", "gru", "tanh", "relu"])
@pytest.mark.parametrize("lengths", [False, True])
def test_small_backward_without_dx(cell, lengths):
    """need_dx=False: no dx, every other gradient bitwise the need_dx=True call's."""
    cache, up, backward = _cell_call(cell, 2, 2, 17, 33, seed=11, lengths=lengths)
    for isa in ISAS:
        _core._set_isa(isa)
        for n in (1, 2):
            lstm_fast.set_num_threads(n)
            full = backward(cache, *up)
            part = backward(cache, *up, need_dx=False)
            assert part[0] is None and full[0] is not None
            for a, b in zip(full[1:], part[1:]):
                if a is not None:
                    assert a.tobytes() == b.tobytes(), isa


def test_small_backward_is_on_by_default():
    assert _core._unpacked_backward() is True
