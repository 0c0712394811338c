"""Every bad-input class of the bindings raises a clear ValueError/TypeError naming the argument,
before any work, and never crashes the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import ops

T, B, I, H = 5, 3, 10, 4


def good():
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return dict(
        x=f(T, B, I),
        weight_ih=f(4 * H, I),
        weight_hh=f(4 * H, H),
        bias_ih=f(4 * H),
        bias_hh=f(4 * H),
        h0=f(B, H),
        c0=f(B, H),
    )


def call(**over):
    a = good()
    a.update(over)
    return ops.lstm_forward(**a)


def test_good_call_works():
    y, h, c, cache = call()
    assert y.shape == (T, B, H)


def test_shape_message_names_argument_and_legend():
    x = np.zeros((5, 3, 11), np.float32)
    with pytest.raises(
        ValueError, match=r"weight_ih: expected shape \(4H=16, I=11\), got \(16, 10\)"
    ):
        call(x=x)
    with pytest.raises(ValueError, match=r"h0: expected shape \(B=3, H=4\), got \(3, 5\)"):
        call(h0=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"bias_hh: expected shape \(4H=16,\), got \(15,\)"):
        call(bias_hh=np.zeros(15, np.float32))
    with pytest.raises(ValueError, match=r"weight_hh: expected shape \(4H=16, H=4\)"):
        call(weight_hh=np.zeros((15, 4), np.float32))


@pytest.mark.parametrize("name", ["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "c0"])
@pytest.mark.parametrize(
    "dtype", [np.float64, np.int32, np.bool_, np.complex64, np.float16, object]
)
def test_wrong_dtype(name, dtype):
    a = good()[name]
    with pytest.raises(TypeError, match=rf"^{name}: expected dtype float32, got"):
        call(**{name: a.astype(dtype)})


@pytest.mark.parametrize("name", ["x", "weight_ih", "weight_hh", "bias_ih", "h0", "c0"])
def test_wrong_rank(name):
    a = good()[name]
    with pytest.raises(ValueError, match=rf"^{name}: expected {a.ndim} dimensions"):
        call(**{name: a[None]})


@pytest.mark.parametrize("name", ["x", "weight_ih", "weight_hh", "h0"])
def test_not_an_array(name):
    with pytest.raises(TypeError, match=rf"^{name}: expected a numpy.ndarray"):
        call(**{name: good()[name].tolist()})


@pytest.mark.parametrize("name", ["x", "weight_ih", "weight_hh", "h0", "c0"])
def test_non_contiguous(name):
    a = good()[name]
    view = np.repeat(a, 2, axis=-1)[..., ::2]
    assert not view.flags.c_contiguous
    with pytest.raises(ValueError, match=rf"^{name}: expected a C-contiguous array"):
        call(**{name: view})
    with pytest.raises(ValueError, match=rf"^{name}: expected a C-contiguous array"):
        call(**{name: a[::-1]})


def test_read_only_inputs_are_fine():
    a = good()
    for v in a.values():
        v.flags.writeable = False
    y, *_ = ops.lstm_forward(**a)
    assert np.isfinite(y).all()


def test_misaligned():
    buf = np.zeros(T * B * I * 4 + 1, np.uint8)[1:].view(np.float32).reshape(T, B, I)
    with pytest.raises(ValueError, match=r"^x: expected float32-aligned data"):
        call(x=buf)


def test_backward_arguments():
    y, h, c, cache = call(training=True)
    with pytest.raises(TypeError, match=r"^cache: expected the LSTMCache"):
        ops.lstm_backward(object(), y)
    with pytest.raises(TypeError, match=r"^cache: expected the LSTMCache"):
        ops.lstm_backward(None, y)
    with pytest.raises(ValueError, match=r"^dy: expected shape \(T=5, B=3, H=4\), got \(5, 3, 5\)"):
        ops.lstm_backward(cache, np.zeros((5, 3, 5), np.float32))
    with pytest.raises(TypeError, match=r"^dh_n: expected dtype float32"):
        ops.lstm_backward(cache, y, np.zeros((B, H)))
    with pytest.raises(ValueError, match=r"^dc_n: expected shape \(B=3, H=4\)"):
        ops.lstm_backward(cache, y, None, np.zeros((B, H + 1), np.float32))
    # The cache is still good after the failed calls.
    g = ops.lstm_backward(cache, y)
    assert g.dx.shape == (T, B, I)


def test_training_flag_type():
    with pytest.raises(TypeError, match="training"):
        call(training="yes")


def test_threads_arguments(threads):
    with pytest.raises(ValueError, match=r"n: expected an int in \[1, \d+\], got 0"):
        lstm_fast.set_num_threads(0)
    with pytest.raises(ValueError, match=r"n: expected an int in \[1, \d+\], got 100000"):
        lstm_fast.set_num_threads(100_000)
    with pytest.raises(TypeError, match="n: expected an int"):
        lstm_fast.set_num_threads(1.5)
    lstm_fast.set_num_threads(1)
    assert lstm_fast.get_num_threads() == 1


def test_gemm_arguments():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"^b: expected shape \(K=4, N=5\)|^b: expected shape"):
        ops.gemm(a, np.zeros((5, 5), np.float32))
    with pytest.raises(TypeError, match=r"^a: expected dtype float32"):
        ops.gemm(a.astype(np.float64), np.zeros((4, 5), np.float32))


def test_unknown_isa_is_a_clear_error():
    from lstm_fast import _core

    with pytest.raises(ValueError, match=r"unknown ISA 'sse9'; available: scalar"):
        _core._set_isa("sse9")
    missing = {"avx2", "avx512"} - set(lstm_fast.cpu_info()["available_isas"])
    for name in missing:
        with pytest.raises(ValueError, match="does not support"):
            _core._set_isa(name)


def test_forcing_unsupported_isa_at_import_fails_cleanly(tmp_path):
    import subprocess
    import sys

    missing = {"avx512", "avx2"} - set(lstm_fast.cpu_info()["available_isas"])
    env_isa = sorted(missing)[0] if missing else "bogus"
    import os

    env = dict(os.environ, LSTM_FAST_ISA=env_isa)
    r = subprocess.run(
        [sys.executable, "-c", "import lstm_fast"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # import the installed package, not a source checkout
    )
    assert r.returncode == 1, r.stderr
    assert "LSTM_FAST_ISA" in r.stderr and "Error" in r.stderr
