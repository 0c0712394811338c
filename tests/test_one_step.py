"""The forward's one-step path (a single step of many rows with large weights, or two steps of
an LSTM or GRU of at most 96 rows, every row active: the products from GEMMs over the threads'
columns, then the gate maths; one_step_weights in csrc/cells/team.h: from 768 KiB of weights
for the LSTM and GRU, from 256 KiB and 128 active rows for the RNN) and the backward's (dh0
from the GEMM), on both sides of their edges, for the LSTM, GRU and RNN: against the float64
reference (forward, training forward and backward with random upstream gradients, lengths with
NaN padding, no h0, no bias), on every ISA, and bitwise across thread counts and schedules.
Also: a layer's one-step call after a sequence (the recurrent path) gives a fresh layer's bits
on any thread count.
"""

import numpy as np
import pytest
from test_review24_kernels import C, _ids, restore, sweep  # noqa: F401 (restore: a fixture)

import lstm_fast

CASES = [
    # LSTM: 16 H (I + H) bytes of weights from 768 KiB; past the unpacked path's rows
    C("lstm", 1, 65, 1, 256),  # 1.00 MiB, I = 1
    C("lstm", 1, 33, 17, 257, lengths="random"),  # a unit tail, active rows < B
    C("lstm", 1, 65, 200, 200, h0=False, upstream="states"),
    C("lstm", 1, 70, 300, 129, lengths="zeros", bias=False),
    C("lstm", 1, 66, 300, 129, lengths="random", unsorted=True),  # an order: recurrent path
    C("lstm", 1, 65, 100, 128, upstream="y"),  # 456 KiB: recurrent path
    # the LSTM's two-step form: every row active, T * B past the unpacked path's 64 rows
    C("lstm", 2, 40, 200, 200),
    C("lstm", 2, 33, 300, 129, h0=False, upstream="states", bias=False),
    C("lstm", 2, 40, 17, 256, lengths="random"),  # lengths: recurrent path
    C("lstm", 2, 33, 17, 300, upstream="y"),  # H past the GEMM's depth block (256)
    C("lstm", 2, 97, 17, 256),  # 97 rows: recurrent path
    C("lstm", 3, 40, 200, 200, upstream="y"),  # three steps: recurrent path
    # GRU: 12 H (I + H) bytes from 768 KiB
    C("gru", 1, 65, 17, 300),
    C("gru", 1, 70, 255, 200, lengths="random", bias=False),
    C("gru", 1, 66, 1, 257, h0=False, upstream="y"),
    C("gru", 1, 65, 64, 128, upstream="states"),  # 288 KiB: recurrent path
    C("gru", 2, 40, 200, 200),  # two steps
    C("gru", 2, 33, 17, 300, h0=False, upstream="y"),
    C("gru", 2, 97, 17, 300),  # 97 rows: recurrent path
    # RNN: 4 H (I + H) bytes from 256 KiB, and at least 128 active rows
    C("tanh", 1, 129, 300, 257),
    C("relu", 1, 128, 17, 300, h0=False, upstream="states"),
    C("tanh", 1, 200, 1, 300, bias=False, lengths="random"),  # active rows drawn at random
    C("relu", 1, 127, 300, 257, upstream="y"),  # 127 rows: recurrent path
]


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_one_step_matches_reference_on_every_isa_and_bitwise_across_runs(case):
    sweep(case)


@pytest.mark.usefixtures("restore")
@pytest.mark.parametrize(
    "cls,kw", [(lstm_fast.LSTM, {}), (lstm_fast.GRU, {}), (lstm_fast.RNN, {"nonlinearity": "relu"})]
)
def test_one_step_call_after_a_sequence_and_across_threads(cls, kw):
    """One layer called with a sequence (recurrent path), then with one step of 160 rows (the
    one-step path), on 1, 2 and 3 threads: the step's outputs and gradients are bitwise those of
    a fresh layer's call on one thread, and close to the float64 reference."""
    from lstm_fast import reference as ref

    I, H, B = 40, 300, 160
    rng = np.random.default_rng(11)
    seq = rng.standard_normal((5, B, I)).astype(np.float32)
    x = rng.standard_normal((1, B, I)).astype(np.float32)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    dy = rng.standard_normal((1, B, H)).astype(np.float32)
    gated = cls is lstm_fast.LSTM
    state = (h0, rng.standard_normal((1, B, H)).astype(np.float32)) if gated else h0

    def run(layer):
        layer.train()
        y, _ = layer(x, state)
        dx = layer.backward(dy)[0]
        return [y.copy(), dx.copy()] + [p.grad.copy() for _, p in layer.named_parameters()]

    lstm_fast.set_num_threads(1)
    want = run(cls(I, H, seed=3, **kw))
    for n in (1, 2, 3):
        lstm_fast.set_num_threads(n)
        layer = cls(I, H, seed=3, **kw)
        layer.train()
        layer(seq)
        layer.backward(np.ones((5, B, H), np.float32))
        layer.zero_grad(set_to_none=True)
        got = run(layer)
        for a, b in zip(got, want):
            assert a.tobytes() == b.tobytes(), f"{n} threads"
    # the forward against the float64 reference
    w = {k: v.astype(np.float64) for k, v in cls(I, H, seed=3, **kw).state_dict().items()}
    args = (w["weight_ih_l0"], w["weight_hh_l0"], w["bias_ih_l0"], w["bias_hh_l0"])
    if cls is lstm_fast.LSTM:
        y_ref = ref.lstm_forward(x.astype(np.float64), *args, h0[0], state[1][0])[0]
    elif cls is lstm_fast.GRU:
        y_ref = ref.gru_forward(x.astype(np.float64), *args, h0[0])[0]
    else:
        y_ref = ref.rnn_forward(x.astype(np.float64), *args, h0[0], nonlinearity="relu")[0]
    np.testing.assert_allclose(want[0], y_ref, rtol=1e-5, atol=1e-5 * max(1, np.abs(y_ref).max()))
