"""lstm_fast's packed GEMM (:func:`lstm_fast.ops.gemm`) against NumPy's float32 matmul.

Square 1024 and 2048, and the GEMMs an LSTM layer runs at S1, S2 and S6: the hoisted input
projection ``X W_ih^T`` (T·B × I by I × 4H), the backward ``dX = dZ W_ih``, ``dW_ih = dZ^T X``,
and one recurrent step ``h W_hh^T`` (B × H by H × 4H). One group per GEMM and thread count.

    pytest benchmarks/test_gemm_bench.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast import _peers, bench, ops


def _cases():
    """(label, a shape, b shape, trans_a, trans_b): C = op(a) @ op(b)."""
    cases = [(f"square{n}", (n, n), (n, n), False, False) for n in (1024, 2048)]
    for name in ("S1", "S2", "S6"):
        T, B, I, H = bench.SHAPES[name]
        rows, G = T * B, 4 * H
        cases += [
            (f"{name}-xWih^T", (rows, I), (G, I), False, True),  # input projection
            (f"{name}-dZ.Wih", (rows, G), (G, I), False, False),  # dx
            (f"{name}-dZ^T.X", (rows, G), (rows, I), True, False),  # dW_ih
            (f"{name}-step-hWhh^T", (B, H), (G, H), False, True),  # one recurrent step
        ]
    return cases


CASES = _cases()


@pytest.mark.parametrize("impl", ["lstm_fast", "numpy"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gemm(benchmark, run_benchmark, case, threads, impl):
    label, a_shape, b_shape, ta, tb = case
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    M = a_shape[1] if ta else a_shape[0]
    K = a_shape[0] if ta else a_shape[1]
    N = b_shape[0] if tb else b_shape[1]
    benchmark.group = f"gemm {label} (M,N,K={M},{N},{K}) {threads} thread(s)"
    benchmark.name = impl
    benchmark.extra_info.update(M=M, N=N, K=K, trans_a=ta, trans_b=tb, threads=threads)

    opa = a.T if ta else a
    opb = b.T if tb else b
    if impl == "lstm_fast":

        def fn():
            return ops.gemm(a, b, trans_a=ta, trans_b=tb)
    else:
        out = np.empty((M, N), np.float32)

        def fn():
            return np.matmul(opa, opb, out=out)

    with _peers.thread_limits(threads):
        got = fn()
        want = np.matmul(opa.astype(np.float64), opb.astype(np.float64))
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e-5, f"{impl} gemm {label}: relative error {err:.2e}"
        run_benchmark(fn, flops=2.0 * M * N * K)
