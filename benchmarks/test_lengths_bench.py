"""Variable lengths at S1: an LSTM batch with lengths vs the same batch without, vs torch.

S1 (T=100, B=32, I=256, H=256), lengths drawn uniformly from [T/4, T] (seeded, any order),
2 threads for both libraries. Three implementations per mode (forward; training = forward +
backward) share one ``benchmark.group``:

* ``lstm_fast-lengths``: ``lstm_fast.LSTM(x, lengths=...)`` (rows sorted, batch_sizes, packed)
* ``lstm_fast-full``: the same batch without lengths (every row runs all T steps)
* ``torch-packed``: ``torch.nn.LSTM`` on ``pack_padded_sequence(x, lengths)``

The targets: lengths / full <= 0.7 (about the fraction of real steps, 0.625 on average) and
torch-packed / lengths >= 5. At the end of the module the ratios of the medians measured in this
run are printed.

    PYTHONPATH=. python -m pytest benchmarks/test_lengths_bench.py --benchmark-only

Run as a script for ratios from interleaved batches (more robust on a shared, loaded machine):

    PYTHONPATH=. python benchmarks/test_lengths_bench.py [seconds per implementation and mode]
"""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest

import lstm_fast
from lstm_fast import _peers
from lstm_fast.bench import CallFailed, time_interleaved

T, B, I, H = 100, 32, 256, 256
THREADS = 2
IMPLS = ("lstm_fast-lengths", "lstm_fast-full", "torch-packed")
MODES = ("forward", "training")


def make_inputs():
    """x (T, B, I), lengths (B,) uniform in [T/4, T], upstream gradient dy (T, B, H)."""
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    lengths = np.random.default_rng(1).integers(T // 4, T + 1, B)
    dy = np.random.default_rng(2).standard_normal((T, B, H)).astype(np.float32) * 0.1
    return x, lengths, dy


def make_call(impl: str, mode: str, x, lengths, dy):
    """One call of ``impl`` in ``mode``: a forward, or a forward and a backward."""
    training = mode == "training"
    if impl == "torch-packed":
        import torch

        torch.manual_seed(0)
        m = torch.nn.LSTM(I, H)
        # In training the input needs its gradient, as lstm_fast's backward returns dx.
        xt = torch.from_numpy(x).requires_grad_(training)
        lt = torch.from_numpy(lengths)
        pack = torch.nn.utils.rnn.pack_padded_sequence
        # The upstream gradient of the packed output: dy's real rows, in the packed order.
        dyt = pack(torch.from_numpy(dy), lt, enforce_sorted=False).data

        def call():
            pk = pack(xt, lt, enforce_sorted=False)
            if training:
                xt.grad = None
                y, _ = m(pk)
                y.data.backward(dyt)
            else:
                with torch.no_grad():
                    m(pk)

        return call
    m = lstm_fast.LSTM(I, H, seed=0)
    m.train(training)
    use = lengths if impl == "lstm_fast-lengths" else None

    def call():
        m(x, lengths=use)
        if training:
            m.backward(dy)

    return call


# ---- pytest-benchmark ---------------------------------------------------------------------------

_medians: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module", autouse=True)
def two_threads(request):
    before = lstm_fast.get_num_threads()
    lstm_fast.set_num_threads(THREADS)
    with contextlib.suppress(_peers.Unavailable):
        _peers.import_peer("torch").set_num_threads(THREADS)
    yield
    lstm_fast.set_num_threads(before)
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if reporter is not None and _medians:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line("")
            for line in ratio_lines(_medians):
                reporter.write_line(line)


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("impl", IMPLS)
def test_lstm_lengths_s1(benchmark, inputs, impl, mode):
    if impl == "torch-packed":
        _peers.importorskip("torch")
    benchmark.group = f"LSTM S1 lengths U[T/4, T] {mode}, {THREADS} threads"
    call = make_call(impl, mode, *inputs)
    call()  # warm-up (first-call allocations, page faults)
    benchmark.pedantic(call, rounds=7, iterations=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None):
        _medians[(impl, mode)] = stats.stats.median


def ratio_lines(times: dict[tuple[str, str], float]) -> list[str]:
    """lengths / full and torch-packed / lengths per mode, from times measured in one run."""
    lines = []
    for mode in MODES:
        ln, full = times.get(("lstm_fast-lengths", mode)), times.get(("lstm_fast-full", mode))
        tp = times.get(("torch-packed", mode))
        if ln is None:
            continue
        text = f"S1 lengths {mode:8s}: lengths {ln * 1e3:7.2f} ms"
        if full is not None:
            text += f" | full {full * 1e3:7.2f} ms, lengths/full {ln / full:.3f} (target <= 0.7)"
        if tp is not None:
            text += f" | torch-packed {tp * 1e3:7.2f} ms, torch/lengths {tp / ln:.2f} (target >= 5)"
        lines.append(text)
    return lines


# ---- script: interleaved rounds -----------------------------------------------------------------


def main(budget: float = 2.0) -> None:
    """Each mode's three implementations timed in interleaved batches
    (:func:`lstm_fast.bench.time_interleaved`: the starting implementation rotates and the other
    runtimes' worker threads go idle before the next one runs; a fixed order of single calls put
    every lengths call right after a torch call, whose spinning OpenMP team slowed it: forward
    lengths / full 0.746-0.757 there against 0.700-0.704 interleaved, same build and hour)."""
    lstm_fast.set_num_threads(THREADS)
    impls = list(IMPLS)
    try:
        _peers.import_peer("torch").set_num_threads(THREADS)
    except _peers.Unavailable as e:
        print(f"torch-packed skipped: torch {e}")
        impls.remove("torch-packed")
    allocator = _peers.steady_allocator()  # the same malloc state for every implementation
    data = make_inputs()
    print(
        f"S1 (T={T}, B={B}, I={I}, H={H}), {THREADS} threads, interleaved batches, "
        f"allocator: {allocator}"
    )
    medians: dict[tuple[str, str], float] = {}
    mins: dict[tuple[str, str], float] = {}
    for mode in MODES:
        fns = {i: make_call(i, mode, *data) for i in impls}
        timed = time_interleaved(
            fns, budget=budget, min_repeats={k: 5 for k in fns}, warmup={k: 2 for k in fns}
        )
        for impl, t in timed.items():
            if isinstance(t, CallFailed):
                raise SystemExit(f"{impl} {mode} failed: {t}")
            medians[(impl, mode)], mins[(impl, mode)] = t.median_s, t.min_s
    for name, times in (("median", medians), ("min", mins)):
        print(f"-- {name}")
        for line in ratio_lines(times):
            print(line)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.0)
