"""The forward's unpacked path (weights read in place, nothing packed) at the edges of where it is
chosen (unpacked_forward in csrc/cells/team.h: at most 4 rows; at most two steps of at most 64
rows, for the LSTM and GRU past 16 rows only with I + H >= 8 rows; from H = 256 a batch of one
for up to 16 steps or of up to four for 8), for the LSTM, GRU and RNN, on both sides of each
edge: against the float64 reference (forward, training forward and backward with random
upstream gradients, lengths with NaN padding), on every ISA, and bitwise across thread counts
and schedules (test_review24_kernels's sweep). Also: a call's results do not depend on which
side of an edge another call of the same layer took (a layer called with one step then a batch,
no state kept between them).
"""

import numpy as np
import pytest
from test_review24_kernels import C, _ids, restore, sweep  # noqa: F401 (restore: a fixture)

import lstm_fast

EDGE_CASES = [
    # two steps of at most 64 rows in all (unpacked) and one row past it (packed); for a gated
    # cell past 16 rows only with I + H >= 8 rows
    C("gru", 1, 64, 480, 33, lengths="random"),
    C("gru", 1, 65, 480, 33),
    C("tanh", 2, 32, 31, 65, lengths="zeros"),
    C("relu", 2, 33, 31, 65, upstream="y"),
    C("lstm", 2, 32, 450, 62, lengths="random", unsorted=True),
    C("lstm", 1, 65, 7, 17, h0=False),
    # gated, 16 rows (unpacked) and 17 (packed: I + H short of 8 rows), and I + H at 8 rows
    # (unpacked) and one short of it (packed)
    C("gru", 1, 16, 17, 33, lengths="random"),
    C("gru", 1, 17, 17, 33),
    C("lstm", 2, 8, 7, 17, lengths="random", unsorted=True),
    C("lstm", 2, 9, 7, 17, h0=False),
    C("gru", 1, 32, 128, 128, upstream="states"),
    C("gru", 1, 32, 127, 128, lengths="short"),
    C("lstm", 1, 64, 256, 256, lengths="random"),
    C("lstm", 1, 64, 255, 256),
    # from H = 256: batch 1 up to 16 steps, batches up to 4 up to 8 steps
    C("gru", 16, 1, 17, 257, upstream="states"),
    C("gru", 17, 1, 17, 257),
    C("gru", 8, 4, 1, 256, lengths="random"),
    C("gru", 9, 4, 1, 256, lengths="short", bias=False),
    C("relu", 16, 1, 300, 263),
    C("tanh", 8, 3, 2, 256, lengths="zeros", h0=False),
    C("tanh", 8, 5, 2, 256),
    C("lstm", 16, 1, 9, 257, upstream="y"),
    C("lstm", 8, 4, 9, 256, lengths="random", unsorted=True),
    C("lstm", 9, 2, 9, 256, lengths="short"),
    # H = 255: the long-batch rules do not apply
    C("gru", 5, 1, 3, 255),
    C("lstm", 5, 2, 3, 255, lengths="random"),
]


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("case", EDGE_CASES, ids=_ids(EDGE_CASES))
def test_unpacked_edges_match_reference_on_every_isa_and_bitwise_across_runs(case):
    sweep(case, runs=[(1, "auto"), (2, "auto"), (2, "batch"), (2, "units")])


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("cls", [lstm_fast.LSTM, lstm_fast.GRU, lstm_fast.RNN])
def test_layer_calls_on_both_sides_of_an_edge_are_independent(cls):
    """The same layer, called with shapes taking the unpacked path and the packed one in turn,
    gives each call the bits of a fresh layer's call of that shape."""
    rng = np.random.default_rng(5)
    H = 256
    layer = cls(3, H, seed=1)
    shapes = [(1, 65), (1, 64), (17, 1), (16, 1), (9, 4), (8, 4), (2, 33), (2, 32)]
    xs = [rng.standard_normal((T, B, 3)).astype(np.float32) for T, B in shapes]
    first = [layer(x)[0].copy() for x in xs]
    for x, y in zip(reversed(xs), reversed(first)):
        fresh = cls(3, H, seed=1)
        assert fresh(x)[0].tobytes() == y.tobytes()
        assert layer(x)[0].tobytes() == y.tobytes()


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize(
    "cell,I,H,team",
    [
        # weights under 256 KiB: one thread; from 256 KiB the team (enough multiply-adds)
        ("gru", 100, 100, False),
        ("rnn", 100, 100, False),
        ("gru", 128, 128, True),
        ("rnn", 256, 256, True),
    ],
)
def test_gru_rnn_unpacked_forward_threads(cell, I, H, team):
    """The GRU's and RNN's unpacked forward (T = 1, B = 16) opens a team only for weights of
    256 KiB or more (unpacked_forward_threads), a forced "units" schedule always splits it, and
    the bits are the same whichever ran."""
    from lstm_fast import _core, ops

    if _core._team_threads() < 2:
        lstm_fast.set_num_threads(2)
    if _core._team_threads() < 2:
        pytest.skip("one CPU: no team")
    _core._set_slow_wake_gap(0)  # (no slow wake known: the size alone decides)
    rng = np.random.default_rng(3)
    G = 3 * H if cell == "gru" else H
    w = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in ((G, I), (G, H), (G,), (G,))]
    x = rng.standard_normal((1, 16, I)).astype(np.float32)
    h0 = rng.standard_normal((16, H)).astype(np.float32)

    def run():
        n0 = _core._wake_state()["regions"]
        f = ops.gru_forward if cell == "gru" else ops.rnn_forward
        y, h = f(x, *w, h0)[:2]
        return y, h, _core._wake_state()["regions"] > n0

    results = []
    for sched in ("auto", "units", "serial"):
        _core._set_schedule(sched)
        results.append(run())
    (y0, h0_, opened), (y1, h1, split), (y2, h2, alone) = results
    assert opened == team and split and not alone
    assert y0.tobytes() == y1.tobytes() == y2.tobytes()
    assert h0_.tobytes() == h1.tobytes() == h2.tobytes()
