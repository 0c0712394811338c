"""lstm_fast.torch modules inside torch's graph tools: torch.jit.trace and torch.export record
torch's own computation (the module stays lstm_fast's for eager calls), torch.jit.script
compiles a copy of torch's class sharing the parameters (with a warning, as torch's scripting
swaps it into the source model too). The recorded programs must equal the eager results."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
lft = pytest.importorskip("lstm_fast.torch")


class _Head(torch.nn.Module):
    def __init__(self, rnn, out_features):
        super().__init__()
        self.rnn = rnn
        self.lin = torch.nn.Linear(out_features, 3)

    def forward(self, x):
        y = self.rnn(x)
        y = y[0] if isinstance(y, tuple) else y
        return self.lin(y)


CASES = [
    ("LSTM 2 layers", lambda: lft.LSTM(7, 9, num_layers=2), 9, (5, 3, 7)),
    ("LSTM proj", lambda: lft.LSTM(7, 9, proj_size=4, batch_first=True), 4, (3, 5, 7)),
    ("GRU bidirectional", lambda: lft.GRU(7, 9, bidirectional=True), 18, (5, 3, 7)),
    ("RNN relu", lambda: lft.RNN(7, 9, nonlinearity="relu"), 9, (5, 3, 7)),
    ("LSTMCell", lambda: lft.LSTMCell(7, 9), 9, (3, 7)),
    ("GRUCell", lambda: lft.GRUCell(7, 9), 9, (3, 7)),
    ("RNNCell", lambda: lft.RNNCell(7, 9), 9, (3, 7)),
]


def _model(make, width, seed):
    torch.manual_seed(seed)
    return _Head(make(), width)


@pytest.mark.parametrize("name,make,width,shape", CASES, ids=[c[0] for c in CASES])
def test_trace_records_torchs_computation_and_the_module_stays_ours(name, make, width, shape):
    m = _model(make, width, 0)
    kind = type(m.rnn)
    x = torch.randn(*shape)
    ref = m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own tracer warnings
        traced = torch.jit.trace(m, (x,))
    x2 = torch.randn(*shape)
    torch.testing.assert_close(traced(x2), m(x2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traced(x), ref, rtol=1e-5, atol=1e-6)
    assert type(m.rnn) is kind  # eager calls still run lstm_fast


@pytest.mark.parametrize("name,make,width,shape", CASES, ids=[c[0] for c in CASES])
def test_export_runs_and_matches(name, make, width, shape):
    m = _model(make, width, 1)
    kind = type(m.rnn)
    x = torch.randn(*shape)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x), rtol=1e-5, atol=1e-6)
    assert type(m.rnn) is kind


@pytest.mark.parametrize("name,make,width,shape", CASES, ids=[c[0] for c in CASES])
def test_script_compiles_torchs_class_with_the_same_parameters(name, make, width, shape):
    m = _model(make, width, 2)
    x = torch.randn(*shape)
    ref = m(x)
    params = {n: p for n, p in m.named_parameters()}
    with pytest.warns(UserWarning, match=r"torch.jit.script compiles torch.nn\.\w+ in place"):
        sm = torch.jit.script(m)
    torch.testing.assert_close(sm(x), ref, rtol=1e-5, atol=1e-6)
    # the scripted module shares the parameters: an update shows in both
    with torch.no_grad():
        params["rnn.weight_hh" if "Cell" in name else "rnn.weight_hh_l0"].mul_(0.5)
    torch.testing.assert_close(sm(x), m(x), rtol=1e-5, atol=1e-6)
    # torch's scripting swapped the source model's module to torch's class; replace_rnns
    # accelerates it again, with the same results
    assert type(m.rnn).__module__.startswith("torch.nn")
    lft.replace_rnns(m)
    assert type(m.rnn).__module__ == "lstm_fast.torch"
    torch.testing.assert_close(sm(x), m(x), rtol=1e-5, atol=1e-6)


def test_gradients_through_a_traced_model_match_eager():
    m = _model(lambda: lft.LSTM(7, 9, num_layers=2, bidirectional=True), 18, 3)
    x = torch.randn(6, 4, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(m, (x,))
    g = torch.randn(6, 4, 3)
    traced(x).backward(g)
    got = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m(x).backward(g)
    for n, p in m.named_parameters():
        np.testing.assert_allclose(got[n].numpy(), p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=n)


# ---- parametrized modules (torch.nn.utils.parametrize) -----------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell"])
def test_replace_rnns_swaps_parametrized_modules_with_torchs_gradients(kind):
    import copy

    from torch.nn.utils import parametrizations, parametrize

    torch.manual_seed(4)
    cell = kind.endswith("Cell")
    if cell:
        m = getattr(torch.nn, kind)(6, 5)
        names = ["weight_hh"]
        x = torch.randn(4, 6)
    else:
        m = getattr(torch.nn, kind)(6, 5, num_layers=2, bidirectional=True)
        names = ["weight_hh_l0", "weight_ih_l1_reverse"]
        x = torch.randn(7, 4, 6)
    for n in names:
        parametrizations.weight_norm(m, n)
    ref = copy.deepcopy(m)
    lft.replace_rnns(m)
    assert isinstance(m, getattr(lft, kind)) and parametrize.is_parametrized(m)

    def run(mod):
        out = mod(x)
        y = out[0] if isinstance(out, tuple) else out
        y = y[0] if isinstance(y, tuple) else y
        return y

    y, y_ref = run(m), run(ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    for (n, p), (_, q) in zip(m.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=n)
    # back to torch's parametrized class, and removing the parametrizations leaves ours
    lft.restore_rnns(m)
    assert type(m).__bases__[0] is getattr(torch.nn, kind)
    lft.replace_rnns(m)
    for n in names:
        parametrize.remove_parametrizations(m, n)
    assert type(m) is getattr(lft, kind)
    torch.testing.assert_close(run(m), run(ref), rtol=1e-5, atol=1e-6)
