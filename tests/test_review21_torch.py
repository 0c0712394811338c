"""Review 21: the PyTorch drop-in (lstm_fast.torch) against torch's own modules."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")


# -- parameters the user replaced or removed ---------------------------------------------------


@pytest.mark.parametrize(
    "kind,kw,name,shape,expected",
    [
        ("LSTM", {}, "weight_hh_l0", (16, 5), r"\(4\*hidden_size, hidden_size\) = \(16, 4\)"),
        ("LSTM", {}, "weight_hh_l0", (12, 4), r"\(4\*hidden_size, hidden_size\) = \(16, 4\)"),
        ("LSTM", {}, "weight_ih_l0", (16, 6), r"\(4\*hidden_size, input_size\) = \(16, 5\)"),
        ("LSTM", {}, "bias_hh_l0", (16, 1), r"\(4\*hidden_size,\) = \(16,\)"),
        (
            "LSTM",
            dict(num_layers=2, bidirectional=True, proj_size=2),
            "weight_ih_l1_reverse",
            (16, 5),
            r"\(4\*hidden_size, 2\*proj_size\) = \(16, 4\)",
        ),
        ("LSTM", dict(proj_size=2), "weight_hr_l0", (2, 5), r"\(proj_size, hidden_size\)"),
        ("GRU", {}, "weight_hh_l0", (12, 3), r"\(3\*hidden_size, hidden_size\) = \(12, 4\)"),
        ("RNN", dict(num_layers=2), "weight_ih_l1", (4, 5), r"\(hidden_size, hidden_size\)"),
        ("LSTMCell", {}, "weight_hh", (16, 5), r"\(4\*hidden_size, hidden_size\) = \(16, 4\)"),
        ("GRUCell", {}, "weight_ih", (12, 6), r"\(3\*hidden_size, input_size\) = \(12, 5\)"),
        ("RNNCell", {}, "bias_hh", (4, 1), r"\(hidden_size,\) = \(4,\)"),
    ],
)
def test_a_replaced_parameter_of_another_shape_is_named_with_the_modules_shape(
    kind, kw, name, shape, expected
):
    """A parameter replaced by one of the wrong shape raised the kernels' ValueError, naming
    ``weight_hh`` (no layer, no direction) and a shape derived from the wrong tensor itself
    ("expected (4H=20, H=5), got (16, 5)" for a module of hidden_size 4). It names the
    parameter and the shape the module's sizes give, before any work."""
    m = getattr(lft, kind)(5, 4, **kw)
    setattr(m, name, nn.Parameter(torch.randn(shape)))
    x = torch.randn(3, 5) if "Cell" in kind else torch.randn(2, 3, 5)
    with pytest.raises(RuntimeError, match=rf"{kind}: {name}: expected shape {expected}.*got"):
        m(x)


@pytest.mark.parametrize(
    "kind,name",
    [
        ("LSTM", "bias_ih_l0"),
        ("GRU", "weight_hh_l0"),
        ("RNN", "bias_hh_l0"),
        ("LSTMCell", "weight_hh"),
        ("GRUCell", "weight_ih"),
    ],
)
def test_a_parameter_set_to_none_raises_a_type_error_naming_it(kind, name):
    """``module.bias_ih_l0 = None``: torch raises TypeError; ours raised AttributeError
    ("'NoneType' object has no attribute 'device'"), and the cells spoke of numpy arrays."""
    t, f = getattr(nn, kind)(5, 4), getattr(lft, kind)(5, 4)
    x = torch.randn(3, 5) if "Cell" in kind else torch.randn(2, 3, 5)
    for m in (t, f):
        setattr(m, name, None)
    with pytest.raises(TypeError):
        t(x)
    with pytest.raises(TypeError, match=rf"{kind}: {name}: expected a tensor of shape .* got None"):
        f(x)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("name", ["bias_ih", "bias_hh"])
def test_a_cell_bias_set_to_none_still_matches_torch(kind, name):
    """torch's cells take either bias alone (the check above must not refuse it)."""
    t = getattr(nn, kind)(5, 4)
    f = getattr(lft, kind)(5, 4)
    f.load_state_dict(t.state_dict())
    for m in (t, f):
        setattr(m, name, None)
    x = torch.randn(3, 5)
    a, b = t(x), f(x)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


# -- malformed PackedSequence ------------------------------------------------------------------

_BAD_PACKS = {
    "zero count": ("torch.randn(6, 5)", "[3, 0, 3]", r"expected counts >= 1, got \[3, 0, 3\]"),
    "negative count": ("torch.randn(6, 5)", "[3, -1, 4]", r"expected counts >= 1"),
    "increasing": ("torch.randn(6, 5)", "[1, 2, 3]", r"expected non-increasing counts"),
    "too few rows": ("torch.randn(5, 5)", "[3, 2, 1]", r"summing to at most input.data's 5 rows"),
    "empty": ("torch.randn(0, 5)", "torch.tensor([], dtype=torch.long)", "at least one step"),
    "int32": ("torch.randn(6, 5)", "torch.tensor([3, 2, 1], dtype=torch.int32)", "int64"),
}


def test_a_malformed_packed_sequence_raises_instead_of_crashing():
    """A PackedSequence built by hand with a zero or negative batch size crashed the process
    (``malloc(): invalid next size``, ``free(): invalid pointer``: torch's pad_packed_sequence,
    which unpacked the input, trusts batch_sizes and corrupts the heap) where torch's module
    raises. Every case raises naming input.batch_sizes; run in one subprocess, since without
    the check the interpreter dies."""
    import subprocess
    import sys

    cases = [
        (kind, data, bs if bs.startswith("torch") else f"torch.tensor({bs})", match)
        for kind in ("LSTM", "GRU")
        for data, bs, match in _BAD_PACKS.values()
    ]
    code = f"""
import re, torch, lstm_fast.torch as lft
from torch.nn.utils.rnn import PackedSequence
for kind, data, bs, match in {cases!r}:
    m = getattr(lft, kind)(5, 4, bidirectional=True)
    for si in (None, torch.tensor([2, 0, 1])):
        p = PackedSequence(eval(data), eval(bs), si)
        try:
            m(p)
        except RuntimeError as e:
            assert re.search(match, str(e)), (kind, bs, str(e))
            assert kind + ": input.batch_sizes" in str(e), (kind, bs, str(e))
        else:
            raise SystemExit(f"no error: {{kind}} {{bs}}")
print("raised")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "raised", (r.returncode, r.stderr[-2000:])


def test_a_packed_sequence_with_extra_rows_still_runs_as_torch():
    """torch's module accepts data with more rows than sum(batch_sizes) (ignoring the rest):
    the check must not refuse it."""
    from torch.nn.utils.rnn import PackedSequence

    t = nn.LSTM(5, 4)
    f = lft.LSTM(5, 4)
    f.load_state_dict(t.state_dict())
    p = PackedSequence(torch.randn(7, 5), torch.tensor([3, 2, 1]))
    (ot, (ht, ct)), (of, (hf, cf)) = t(p), f(p)
    for a, b in ((ot.data, of.data), (ht, hf), (ct, cf)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_a_deleted_parameter_is_never_replaced_by_the_last_weights_seen():
    """torch's _flat_weights keeps the last tensor of a parameter deleted from _parameters
    (its _weights_have_changed ignores a missing one): the kernels must read the parameters
    themselves, so the call raises instead of running with the deleted weights."""
    m = lft.LSTM(4, 3)
    m(torch.randn(2, 1, 4))
    del m._parameters["weight_hh_l0"]
    with pytest.raises((AttributeError, TypeError), match="weight_hh_l0"):
        m(torch.randn(2, 1, 4))
