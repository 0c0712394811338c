"""Review 16: check_finite with lengths, forward_embedded's uint64 ids, the benchmark suite.

Each test failed before the fix it comes with.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import lstm_fast
import lstm_fast.ops as ops
from lstm_fast import nn

KINDS = ["LSTM", "GRU", "RNN"]
T, B, I, H = 5, 4, 3, 6


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _nan_padded(lens, batch_first=False):
    """x (T, B, I) ((B, T, I) batch_first) with NaN at every step past its sequence's length."""
    x = _x(T, B, I)
    x[np.arange(T)[:, None] >= np.asarray(lens)[None, :]] = np.nan
    return np.ascontiguousarray(x.transpose(1, 0, 2)) if batch_first else x


# ---- check_finite with lengths looks at the real steps only -------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "config",
    [{}, {"batch_first": True}, {"bidirectional": True}, {"num_layers": 2}, {"proj_size": 2}],
)
def test_layer_check_finite_ignores_the_padding(kind, config):
    """NaN padding (never read) raised with check_finite=True and lengths=; the results are
    those of the same layer without check_finite, and a NaN at a real step still raises,
    naming the caller's index."""
    if "proj_size" in config and kind != "LSTM":
        pytest.skip("proj_size is the LSTM's")
    lens = np.array([5, 2, 0, 3])
    bf = config.get("batch_first", False)
    x = _nan_padded(lens, bf)
    checked = getattr(lstm_fast, kind)(I, H, seed=0, check_finite=True, **config)
    plain = getattr(lstm_fast, kind)(I, H, seed=0, **config)
    y, _ = checked(x, lengths=lens)
    np.testing.assert_array_equal(y, plain(x, lengths=lens)[0])
    assert np.isfinite(y).all()
    # a real step: sequence 3's step 1 (its length is 3), feature 2
    at = (3, 1, 2) if bf else (1, 3, 2)
    x[at] = np.inf
    with pytest.raises(
        ValueError, match="^" + re.escape(f"input: expected finite values, got Inf at index {at}")
    ):
        checked(x, lengths=lens)
    x[at] = 0.0
    # with an earlier NaN in the padding, the first real one is still the one named
    at = (0, 4, 0) if bf else (4, 0, 0)
    x[at] = np.nan
    with pytest.raises(
        ValueError, match="^" + re.escape(f"input: expected finite values, got NaN at index {at}")
    ):
        checked(x, lengths=lens)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_backward_check_finite_ignores_dy_padding(kind, batch_first):
    """The backward does not read dy past each sequence's length either, but check_finite
    raised for NaN there."""
    lens = np.array([5, 2, 0, 3])
    x = _nan_padded(lens, batch_first)
    layer = getattr(lstm_fast, kind)(I, H, seed=0, check_finite=True, batch_first=batch_first)
    y, _ = layer(x, lengths=lens)
    dy = _x(*y.shape, seed=1)
    padding = np.arange(T)[:, None] >= lens[None, :]  # (T, B)
    dy[padding.T if batch_first else padding] = np.nan
    dx = layer.backward(dy)[0]
    assert np.isfinite(dx).all()
    at = (1, 1, 0)  # sequence 1's step 1 (its length is 2): real in either layout
    dy[at] = np.nan
    with pytest.raises(
        ValueError, match="^" + re.escape(f"dy: expected finite values, got NaN at index {at}")
    ):
        layer.backward(dy)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_input_check_finite_names_the_index_in_its_data(kind):
    """A PackedSequence input was checked as the padded (T, B, I) array: the index named was
    not one of the caller's (the caller's input is input.data)."""
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_x(T, B, I))
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.tensor([5, 2, 1, 3]), enforce_sorted=False
    )
    packed.data[6, 1] = float("nan")
    layer = getattr(lstm_fast, kind)(I, H, seed=0, check_finite=True)
    with pytest.raises(
        ValueError, match=r"^input: expected finite values, got NaN at index \(6, 1\)"
    ):
        layer(packed)


def _weights(G, seed=2):
    rng = np.random.default_rng(seed)
    w_ih = (rng.standard_normal((G * H, I)) * 0.3).astype(np.float32)
    w_hh = (rng.standard_normal((G * H, H)) * 0.3).astype(np.float32)
    return w_ih, w_hh


FORWARDS = [(ops.lstm_forward, 4), (ops.gru_forward, 3), (ops.rnn_forward, 1)]


@pytest.mark.parametrize("fwd,G", FORWARDS)
def test_ops_check_finite_ignores_the_padding(fwd, G):
    """ops.*_forward(..., batch_sizes=, check_finite=True) raised for NaN in rows past
    batch_sizes[t], which the kernels never read."""
    bs = np.array([4, 3, 3, 1, 0])
    x = _x(T, B, I)
    x[np.arange(B)[None, :] >= bs[:, None]] = np.nan
    w = _weights(G)
    y = fwd(x, *w, batch_sizes=bs, check_finite=True)[0]
    np.testing.assert_array_equal(y, fwd(x, *w, batch_sizes=bs)[0])
    x[3, 0, 1] = -np.inf
    with pytest.raises(
        ValueError, match=r"^x: expected finite values, got Inf at index \(3, 0, 1\)"
    ):
        fwd(x, *w, batch_sizes=bs, check_finite=True)
    # without batch_sizes every element is real
    with pytest.raises(
        ValueError, match=r"^x: expected finite values, got NaN at index \(1, 3, 0\)"
    ):
        fwd(x, *w, check_finite=True)


def test_ops_lstm_check_finite_with_sorted_indices():
    """With sorted_indices, x is in the caller's order: its real rows are sorted_indices[r]
    for the sorted rows r < batch_sizes[t]."""
    bs = np.array([4, 3, 2, 2, 1])
    order = np.array([2, 0, 3, 1])  # sorted row r is x's row order[r]
    real = np.zeros((T, B), bool)
    real[:, order] = np.arange(B)[None, :] < bs[:, None]
    x = _x(T, B, I)
    x[~real] = np.nan
    w = _weights(4)
    y = ops.lstm_forward(x, *w, batch_sizes=bs, sorted_indices=order, check_finite=True)[0]
    np.testing.assert_array_equal(
        y, ops.lstm_forward(x, *w, batch_sizes=bs, sorted_indices=order)[0]
    )
    x[4, 2, 2] = np.nan  # row 2 is sorted row 0, length 5: real
    with pytest.raises(
        ValueError, match=r"^x: expected finite values, got NaN at index \(4, 2, 2\)"
    ):
        ops.lstm_forward(x, *w, batch_sizes=bs, sorted_indices=order, check_finite=True)
    # batch_sizes the core refuses (increasing): x is scanned whole, as without batch_sizes, or
    # the core names the argument; never a silent pass
    with pytest.raises(ValueError, match=r"^(x|batch_sizes):"):
        ops.lstm_forward(x, *w, batch_sizes=[1, 2, 3, 4, 4], check_finite=True)


# ---- forward_embedded with uint64 ids above the int64 range -------------------------------------


@pytest.mark.parametrize("big", [2**63 + 5, 2**64 - 1])
def test_forward_embedded_quotes_the_callers_uint64_id(big):
    """uint64 ids above int64's range were converted with wraparound and the IndexError quoted
    the wrapped negative value (2**64 - 1 as -1)."""
    layer = lstm_fast.LSTM(4, 5, seed=0)
    emb = nn.Embedding(10, 4)
    ids = np.array([[1, 3], [big, 2]], np.uint64)
    with pytest.raises(IndexError, match=rf"^ids: expected values in \[0, V=10\), got {big}$"):
        layer.forward_embedded(ids, emb)
    ids[0, 1] = 12  # the first bad id in C order is the one quoted, as the core does
    with pytest.raises(IndexError, match=r"got 12$"):
        layer.forward_embedded(ids, emb)
    ok = np.array([[1, 3], [9, 2]], np.uint64)
    y, _ = layer.forward_embedded(ok, emb)
    np.testing.assert_array_equal(y, layer.forward_embedded(ok.astype(np.int64), emb)[0])


# ---- the benchmark tools' arguments and plot --------------------------------------------------


def _family_ratios():
    """benchmarks/family_ratios.py of this checkout, imported as a module."""
    import importlib.util
    import os

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(here, "benchmarks", "family_ratios.py")
    if not os.path.exists(script):
        pytest.skip("benchmarks/ not in this checkout")
    spec = importlib.util.spec_from_file_location("_family_ratios_under_test", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--threads", "0"], "--threads: expected an integer in [1, "),
        (["--budget", "nan"], "--budget: expected a finite number of seconds >= 0, got 'nan'"),
        (["--budget", "-1"], "--budget: expected a finite number of seconds >= 0, got '-1'"),
        (["--budget", "inf"], "--budget: expected a finite number of seconds >= 0, got 'inf'"),
    ],
)
def test_family_ratios_refuses_bad_budget_and_threads(argv, message, capsys):
    """family_ratios.py took any float as --budget (NaN: never reached, 10,000 calls of every
    implementation; negative: silently the minimum) and --threads 0 failed with a traceback
    from set_num_threads after the imports; now argparse refuses them before any work."""
    mod = _family_ratios()

    def started(*args, **kwargs):  # (before the fix: the run went on, NaN for ever)
        raise AssertionError("the benchmark started")

    mod.run_group = started
    with pytest.raises(SystemExit) as exc:
        mod.main([*argv, "--no-torch"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_refuses_an_infinite_budget():
    """lstm-fast bench --budget inf passed the check (only NaN and <= 0 were refused) and then
    ran every cell to its maximum repeat count."""
    import argparse

    from lstm_fast import bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    for value in ("inf", "nan", "0"):
        err = bench._check_args(p.parse_args(["--budget", value]))
        assert err is not None and err.startswith("--budget: expected a positive, finite number")
    assert bench._check_args(p.parse_args(["--budget", "0.01"])) is None


def test_bench_plot_states_its_flop_model(tmp_path, monkeypatch):
    """The plot's axis pointed to "the FLOP model of DESIGN.md", a file this project does not
    have; it now states the model itself (as the table's footnote does)."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from lstm_fast import bench

    labels = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, *args, **kwargs):
        labels.extend(ax.get_ylabel() for ax in fig.axes)
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    report = {
        "results": [
            {
                "shape": "S6",
                "mode": "forward",
                "threads": 1,
                "impls": {"lstm_fast": {"status": "ok", "gflops": 50.0}},
            }
        ],
        "settings": {"impls": ["lstm_fast"]},
        "peak": [{"threads": 1, "gflops": 100.0}],
        "machine": {"cpu_model": "test"},
        "date": "2026-12-04T00:00:00+00:00",
    }
    bench.write_plot(str(tmp_path / "p.png"), report)
    assert (tmp_path / "p.png").stat().st_size > 0
    assert labels == ["GFLOP/s (forward 2·T·B·(I+H)·4H FLOP, training 3x)"]
