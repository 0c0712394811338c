"""Hand-built PackedSequences are checked before torch's unpacking reads them (a negative count
aborted the process there), by the NumPy layers as by the lstm_fast.torch modules; a gradient
array sharing memory with the input is named by its parameter on every backward path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import lstm_fast

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

import lstm_fast.torch as lft  # noqa: E402

LAYERS = ["LSTM", "GRU", "RNN"]


def packed(rows, batch_sizes, sorted_indices=None, unsorted_indices=None, features=3):
    def t(v):
        return None if v is None else torch.tensor(v)

    return PackedSequence(
        torch.randn(rows, features), t(batch_sizes), t(sorted_indices), t(unsorted_indices)
    )


BAD_BATCH_SIZES = [
    ((4, [4, 0]), r"input\.batch_sizes: expected counts >= 1, got \[4, 0\]"),
    ((6, [3, 5]), r"input\.batch_sizes: expected non-increasing counts"),
    ((5, [4, 2]), r"input\.batch_sizes: expected counts summing to at most input\.data's 5 rows"),
]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("args,msg", BAD_BATCH_SIZES)
def test_numpy_layer_refuses_bad_batch_sizes(layer, args, msg):
    m = getattr(lstm_fast, layer)(3, 4, seed=0)
    with pytest.raises(ValueError, match=msg):
        m(packed(*args))


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("args,msg", BAD_BATCH_SIZES)
def test_torch_module_refuses_bad_batch_sizes(layer, args, msg):
    m = getattr(lft, layer)(3, 4)
    with pytest.raises(RuntimeError, match=f"lstm_fast.torch.{layer}: {msg}"):
        m(packed(*args))


@pytest.mark.parametrize("layer", LAYERS)
def test_negative_count_raises_instead_of_aborting(layer):
    """Run in a child process: before the check, torch's unpacking aborted on it."""
    code = (
        "import torch, lstm_fast\n"
        "from torch.nn.utils.rnn import PackedSequence\n"
        f"m = lstm_fast.{layer}(3, 4, seed=0)\n"
        "try:\n"
        "    m(PackedSequence(torch.randn(4, 3), torch.tensor([4, -1]), None, None))\n"
        "except ValueError as e:\n"
        "    print('ValueError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ValueError: input.batch_sizes: expected counts >= 1, got [4, -1]" in out.stdout


BAD_INDICES = [
    (([0, 0, 2], [0, 1, 2]), r"input\.sorted_indices: expected a permutation of the 3 batch"),
    (([2, 1, 0], [0, 0, 0]), r"input\.unsorted_indices: expected a permutation of the 3 batch"),
    (([0, 1], [0, 1]), r"input\.sorted_indices: expected a permutation .* got \[0, 1\]"),
    (([0, 1, 5], [0, 1, 2]), r"input\.sorted_indices: expected a permutation .* got \[0, 1, 5\]"),
    (([1, 2, 0], [1, 2, 0]), r"input\.unsorted_indices: expected the inverse permutation"),
]


@pytest.mark.parametrize("indices,msg", BAD_INDICES)
def test_both_apis_refuse_bad_sorted_indices(indices, msg):
    ps = packed(6, [3, 3], *indices)
    with pytest.raises(ValueError, match=msg):
        lstm_fast.LSTM(3, 4, seed=0)(ps)
    with pytest.raises(RuntimeError, match="lstm_fast.torch.LSTM: " + msg):
        lft.LSTM(3, 4)(ps)


def test_indices_of_the_wrong_type_are_named():
    ps = PackedSequence(
        torch.randn(6, 3), torch.tensor([3, 3]), torch.tensor([2.0, 1.0, 0.0]), torch.arange(3)
    )
    with pytest.raises(ValueError, match=r"input\.sorted_indices: expected a 1-D int64 tensor"):
        lstm_fast.GRU(3, 4, seed=0)(ps)


def test_valid_unsorted_packing_still_matches_padded_lengths():
    from torch.nn.utils.rnn import pad_packed_sequence

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 3)).astype(np.float32)
    lengths = [2, 5, 1, 4]
    m = lstm_fast.GRU(3, 4, seed=0)
    y_ref, h_ref = m(x, lengths=lengths)
    ps = pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths), enforce_sorted=False)
    y, h = m(ps)
    np.testing.assert_array_equal(h, h_ref)
    np.testing.assert_array_equal(pad_packed_sequence(y, total_length=5)[0].numpy(), y_ref)


def test_packed_gradient_with_bad_batch_sizes_is_named():
    m = lstm_fast.LSTM(3, 4, seed=0)
    x = torch.randn(1, 4, 3)
    y, _ = m(pack_padded_sequence(x, torch.tensor([1, 1, 1, 1])))
    dy = PackedSequence(torch.zeros(4, 4), torch.tensor([4, -1]), None, None)
    with pytest.raises(ValueError, match=r"dy\.batch_sizes: expected counts >= 1"):
        m.backward(dy)


@pytest.mark.parametrize("layer,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gradient_sharing_the_input_is_named_by_its_parameter(layer, gates, num_layers):
    m = getattr(lstm_fast, layer)(4, 4, num_layers=num_layers, seed=0)
    x = np.zeros((4 * gates, 1, 4), np.float32)
    m.weight_hh_l0.grad = x.reshape(4 * gates, 4)
    y, _ = m(x)
    with pytest.raises(
        ValueError, match=r"^weight_hh_l0\.grad: expected memory separate from the input"
    ):
        m.backward(np.ones_like(y))
    np.testing.assert_array_equal(x, 0)  # nothing accumulated


@pytest.mark.parametrize("cell,gates", [("LSTMCell", 4), ("GRUCell", 3), ("RNNCell", 1)])
def test_cell_gradient_sharing_an_input_is_named_by_its_parameter(cell, gates):
    m = getattr(lstm_fast, cell)(4, 4, seed=0)
    x = np.zeros((4 * gates, 4), np.float32)
    m.weight_hh.grad = x
    out = m(x)
    h = out[0] if isinstance(out, tuple) else out
    with pytest.raises(ValueError, match=r"^weight_hh\.grad: expected memory separate from the"):
        m.backward(np.ones_like(h))
    m = getattr(lstm_fast, cell)(4, 4, seed=0)
    buf = np.zeros(4 * gates + 8, np.float32)
    h0 = buf[:8].reshape(2, 4)
    m.bias_hh.grad = buf[: 4 * gates]  # its own shape, sharing memory with hx
    out = m(np.ones((2, 4), np.float32), (h0, np.zeros((2, 4), np.float32)) if gates == 4 else h0)
    h = out[0] if isinstance(out, tuple) else out
    with pytest.raises(ValueError, match=r"^bias_hh\.grad: expected memory separate from hx"):
        m.backward(np.ones_like(h))
