"""Training step of a PyTorch model with torch's own LSTM vs after lstm_fast.torch.replace_rnns.

The model of issue 6's acceptance: embedding -> 2-layer bidirectional LSTM -> linear head, one
step = forward, cross-entropy, backward and an SGD update, 2 threads (torch and lstm_fast). Both
implementations share one ``benchmark.group``, so pytest-benchmark prints them side by side;
outputs of the two models are checked against each other before timing.

    pytest benchmarks/test_torch_bench.py --benchmark-only
    LSTM_FAST_TORCH_BENCH=100,32,64,256 pytest benchmarks/test_torch_bench.py --benchmark-only

``LSTM_FAST_TORCH_BENCH`` = T,B,E,H (steps, batch, embedding size, hidden size; default
100,32,64,128, a char-LM-sized problem); vocabulary 65.

Cells: ``torch.nn.LSTMCell`` vs ``lstm_fast.torch.LSTMCell`` unrolled in a Python loop over T
steps (each step's (h, c) fed to the next, every h stacked), forward under ``torch.no_grad()``
and training (forward, a loss over all outputs with a fixed random upstream gradient, backward
through time, an SGD update), 2 threads::

    pytest benchmarks/test_torch_bench.py --benchmark-only -k cell
    LSTM_FAST_TORCH_CELL_BENCH=100,32,256,256 pytest benchmarks/test_torch_bench.py -k cell ...

``LSTM_FAST_TORCH_CELL_BENCH`` = T,B,I,H (default 100,32,256,256).
"""

from __future__ import annotations

import copy
import os

import pytest

from lstm_fast import _peers

torch = _peers.importorskip("torch")
import lstm_fast  # noqa: E402
import lstm_fast.torch as lft  # noqa: E402

VOCAB = 65
THREADS = 2
T, B, E, H = (int(v) for v in os.environ.get("LSTM_FAST_TORCH_BENCH", "100,32,64,128").split(","))


class CharModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, E)
        self.rnn = torch.nn.LSTM(E, H, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(2 * H, VOCAB)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ref = CharModel()
    fast = lft.replace_rnns(copy.deepcopy(ref))
    tokens = torch.randint(0, VOCAB, (B, T + 1))
    with torch.no_grad():
        torch.testing.assert_close(fast(tokens[:, :-1]), ref(tokens[:, :-1]), rtol=1e-4, atol=1e-5)
    return {"torch.nn.LSTM": ref, "lstm_fast.torch": fast}, tokens


@pytest.fixture
def two_threads():
    before = torch.get_num_threads(), lstm_fast.get_num_threads()
    torch.set_num_threads(THREADS)
    lstm_fast.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before[0])
    lstm_fast.set_num_threads(before[1])


@pytest.mark.parametrize("impl", ["torch.nn.LSTM", "lstm_fast.torch"])
def test_training_step(benchmark, models, two_threads, impl):
    by_name, tokens = models
    model = copy.deepcopy(by_name[impl])  # both start from the same weights
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = tokens[:, :-1], tokens[:, 1:].reshape(-1)
    flops = 2 * 3 * 2 * T * B * 4 * H * ((E + H) + (2 * H + H))  # LSTM fwd+bwd, 2 dirs

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y)
        loss.backward()
        opt.step()

    benchmark.group = f"torch model training step (T,B,E,H={T},{B},{E},{H}) {THREADS} threads"
    benchmark.name = impl
    benchmark.extra_info.update(impl=impl, threads=THREADS, lstm_flops=flops)
    step()  # warm-up
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)


# -- cells -----------------------------------------------------------------------------------------
CELL_T, CELL_B, CELL_I, CELL_H = (
    int(v) for v in os.environ.get("LSTM_FAST_TORCH_CELL_BENCH", "100,32,256,256").split(",")
)
CELL_IMPLS = ["torch.nn.LSTMCell", "lstm_fast.torch.LSTMCell"]


def unroll(cell, xs):
    """xs (T, B, I) -> every step's h stacked, (T, B, H): the cell in a Python loop."""
    h = c = torch.zeros(xs.shape[1], cell.hidden_size)
    outs = []
    for x_t in xs:
        h, c = cell(x_t, (h, c))
        outs.append(h)
    return torch.stack(outs)


@pytest.fixture(scope="module")
def cells():
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(CELL_I, CELL_H)
    fast = lft.replace_rnns(copy.deepcopy(ref))
    xs = torch.randn(CELL_T, CELL_B, CELL_I)
    with torch.no_grad():
        torch.testing.assert_close(unroll(fast, xs), unroll(ref, xs), rtol=1e-4, atol=1e-5)
    return dict(zip(CELL_IMPLS, (ref, fast))), xs


@pytest.mark.parametrize("mode", ["forward", "training"])
@pytest.mark.parametrize("impl", CELL_IMPLS)
def test_cell_unrolled(benchmark, cells, two_threads, impl, mode):
    by_name, xs = cells
    cell = copy.deepcopy(by_name[impl])
    opt = torch.optim.SGD(cell.parameters(), lr=0.01)
    dy = torch.randn(CELL_T, CELL_B, CELL_H)

    def forward():
        with torch.no_grad():
            unroll(cell, xs)

    def training():
        opt.zero_grad()
        (unroll(cell, xs) * dy).sum().backward()
        opt.step()

    step = forward if mode == "forward" else training
    shape = f"T,B,I,H={CELL_T},{CELL_B},{CELL_I},{CELL_H}"
    benchmark.group = f"torch LSTMCell unrolled, {mode} ({shape}) {THREADS} threads"
    benchmark.name = impl
    benchmark.extra_info.update(impl=impl, mode=mode, threads=THREADS)
    step()  # warm-up
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=1)
