"""lstm_fast.torch modules whose parameters the kernels cannot take (float64, bfloat16, another
device) compute with torch's own implementation, as the module they replaced would: same
outputs and gradients as torch's class with the same parameters, and the kernels again once the
model is float32 on the CPU."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lft = pytest.importorskip("lstm_fast.torch")

LAYERS = [
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=2)),
    ("RNN", dict(nonlinearity="relu", bidirectional=True)),
]
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]


def _counting(monkeypatch):
    """Counts the calls that reach the kernels (the autograd Functions of the directions)."""
    calls = []
    for fn in (lft._Direction, lft._BothDirections):

        def apply(*args, _real=fn.apply):
            calls.append(1)
            return _real(*args)

        monkeypatch.setattr(fn, "apply", apply)
    return calls


def _inputs(dtype, batch_first, T=5, B=3, I=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=g, dtype=dtype)
    return x.requires_grad_()


@pytest.mark.parametrize("name, kw", LAYERS)
def test_float64_layer_matches_torch_and_skips_kernels(monkeypatch, name, kw):
    torch.manual_seed(0)
    fast = getattr(lft, name)(4, 6, **kw).double()
    ref = getattr(torch.nn, name)(4, 6, **kw).double()
    ref.load_state_dict(fast.state_dict())
    calls = _counting(monkeypatch)
    x1, x2 = _inputs(torch.float64, fast.batch_first), _inputs(torch.float64, fast.batch_first)
    y1, h1 = fast(x1)
    y2, h2 = ref(x2)
    assert y1.dtype == torch.float64
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
    for (n, p), (_, q) in zip(fast.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=n)
    assert not calls  # torch computed it
    # float32 again: the kernels compute, within float32 rounding of the float64 results
    fast.float()
    y3, _ = fast(x1.detach().float())
    assert calls
    torch.testing.assert_close(y3.double(), y2.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CELLS)
def test_float64_cell_matches_torch(monkeypatch, name):
    torch.manual_seed(0)
    fast = getattr(lft, name)(4, 6).double()
    ref = getattr(torch.nn, name)(4, 6).double()
    ref.load_state_dict(fast.state_dict())
    calls = _counting(monkeypatch)
    x = torch.randn(3, 4, dtype=torch.float64)
    out1, out2 = fast(x), ref(x)
    for a, b in zip(
        out1 if isinstance(out1, tuple) else (out1,), out2 if isinstance(out2, tuple) else (out2,)
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not calls
    fast.float()
    fast(x.float())
    assert calls


def test_replaced_model_converted_afterwards_keeps_working():
    """replace_rnns, then model.double() (gradcheck-style use): runs as the torch model did."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LSTM(3, 5, batch_first=True))
    ref = copy.deepcopy(model).double()
    lft.replace_rnns(model)
    model.double()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(model(x)[0], ref(x)[0], rtol=0, atol=0)
    assert isinstance(model[0], lft.LSTM)


def test_gradcheck_through_a_float64_module():
    torch.manual_seed(0)
    lstm = lft.LSTM(2, 3).double()
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lstm(t)[0], (x,))


def test_meta_device_parameters_run_torch_shape_inference():
    """Parameters on another device (meta here; CUDA alike): torch's implementation, which
    gives meta outputs of the right shapes instead of an error."""
    lstm = lft.LSTM(3, 5, num_layers=2, device="meta")
    y, (h, c) = lstm(torch.empty(4, 2, 3, device="meta"))
    assert y.device.type == "meta" and y.shape == (4, 2, 5) and h.shape == (2, 2, 5)
    cell = lft.GRUCell(3, 5, device="meta")
    assert cell(torch.empty(2, 3, device="meta")).shape == (2, 5)


def test_bfloat16_parameters_match_torch():
    torch.manual_seed(0)
    fast = lft.GRU(4, 6).to(torch.bfloat16)
    ref = torch.nn.GRU(4, 6).to(torch.bfloat16)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(5, 2, 4).to(torch.bfloat16)
    try:
        want = ref(x)[0]
    except RuntimeError as e:  # a torch build without bfloat16 GRU on the CPU
        pytest.skip(f"torch cannot run it either: {e}")
    torch.testing.assert_close(fast(x)[0], want, rtol=0, atol=0)


def test_float32_model_still_rejects_float64_input():
    """The dtype rule between input and parameters stays torch's (no silent conversion)."""
    with pytest.raises((ValueError, TypeError), match="float64|Double"):
        lft.LSTM(3, 4)(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"input: expected dtype torch.float32.*float64"):
        lft.LSTMCell(3, 4)(torch.randn(2, 3, dtype=torch.float64))


def test_mixed_dtype_parameters_behave_as_torch():
    """One float64 parameter in a float32 module: torch's implementation decides (it raises a
    dtype error of its own, or computes) - never the float32 kernels on a converted copy."""
    torch.manual_seed(0)
    fast = lft.RNN(3, 4)
    ref = torch.nn.RNN(3, 4)
    ref.load_state_dict(fast.state_dict())
    for m in (fast, ref):
        m.bias_hh_l0.data = m.bias_hh_l0.data.double()
    x = torch.randn(5, 2, 3)
    outcome = []
    for m in (ref, fast):
        try:
            outcome.append(("ok", m(x)[0].detach().numpy()))
        except Exception as e:  # noqa: BLE001 - the comparison is the point
            outcome.append(("error", type(e)))
    assert outcome[0][0] == outcome[1][0]
    if outcome[0][0] == "ok":
        np.testing.assert_array_equal(outcome[0][1], outcome[1][1])
    else:
        assert outcome[0][1] is outcome[1][1]
