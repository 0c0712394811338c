"""LSTM forward / training per canonical shape: lstm_fast, the NumPy reference and the peers.

One group per (shape, mode, threads): ``lstm_fast``, ``numpy`` (the reference),
``torch.nn.LSTM``, ``torch.nn.LSTMCell`` (shapes with T = 1) and ``onnxruntime`` (forward only).
A peer that is not installed or does not apply is skipped; one whose output differs from
lstm_fast's fails.

    pytest benchmarks/test_lstm_bench.py --benchmark-only
    LSTM_FAST_BENCH_SHAPES=S2,S3 LSTM_FAST_BENCH_THREADS=2 pytest benchmarks/ --benchmark-only
"""

from __future__ import annotations

import pytest

from lstm_fast import _peers


@pytest.mark.parametrize("impl", _peers.IMPLS)
@pytest.mark.parametrize("mode", _peers.MODES)
def test_lstm(benchmark, run_benchmark, problem_for, shape, mode, threads, impl):
    p = problem_for(shape)
    T, B, I, H = p.shape
    benchmark.group = f"{shape} (T,B,I,H={T},{B},{I},{H}) {mode} {threads} thread(s)"
    benchmark.name = impl
    benchmark.extra_info.update(shape=shape, mode=mode, threads=threads, impl=impl)
    with _peers.thread_limits(threads):
        try:
            fn = _peers.make(impl, p, mode, threads)
        except _peers.Unavailable as e:
            pytest.skip(f"{impl}: {e}")
        except _peers.Mismatch as e:
            pytest.fail(str(e))
        run_benchmark(fn, flops=p.flops(mode))
