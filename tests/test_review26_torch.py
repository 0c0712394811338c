"""Review 26 of lstm_fast.torch: the same program run with torch.nn.X and lstm_fast.torch.X.

- ``test_batch_first_gru_rnn_output_is_no_view_as_torchs``: torch's GRU and RNN hand out a
  batch_first output that is a tensor of its own (strides (H, B*H, 1), no view; the LSTM's is a
  view); ours was a ``transpose`` view, so ``y.detach_()`` raised "Can't detach views in-place".
- ``test_in_place_op_on_a_no_grad_batch_first_output_matches_torch``: an output made under
  ``torch.no_grad()`` then changed in place by an op recording a graph (``y.mul_(w)``, w
  requiring grad) raised "A view was created in no_grad mode and is being modified inplace
  with grad mode enabled" where torch's GRU/RNN compute.
- ``test_a_parametrized_weight_is_computed_as_often_as_torchs`` and
  ``test_spectral_norm_parametrization_keeps_torchs_power_iterations``: a weight torch's
  ``parametrize`` computes was computed 3 times per cell step (torch: once) and 6 times per
  layer forward (torch: 4), each running the parametrization (matrix_exp for ``orthogonal``; a
  power iteration updating ``spectral_norm``'s buffers in training mode, so the model's state
  and outputs drifted from torch's). The forward now reads each weight once, judges a
  parametrized one's dtype by its original, and the layers take ``_flat_weights``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")

OUT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_TOL = dict(rtol=1e-4, atol=1e-4)

BATCH_FIRST = [
    ("GRU", dict()),
    ("GRU", dict(bidirectional=True)),
    ("GRU", dict(num_layers=2, bias=False)),
    ("RNN", dict()),
    ("RNN", dict(nonlinearity="relu", bidirectional=True, num_layers=2)),
]


def _pair(kind, **kw):
    torch.manual_seed(0)
    ref = getattr(nn, kind)(4, 5, batch_first=True, **kw)
    fast = getattr(lft, kind)(4, 5, batch_first=True, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("kind, kw", BATCH_FIRST)
@pytest.mark.parametrize("grad", [True, False])
def test_batch_first_gru_rnn_output_is_no_view_as_torchs(kind, kw, grad):
    ref, fast = _pair(kind, **kw)
    x = torch.randn(3, 6, 4)
    outs = []
    for m in (ref, fast):
        with torch.set_grad_enabled(grad):
            y, h = m(x)
        assert not y._is_view(), type(m)
        assert y.stride() == (y.shape[2], y.shape[0] * y.shape[2], 1)
        if grad:
            w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
            (y * w).sum().backward()
        y.detach_()  # torch's works; a view raised "Can't detach views in-place"
        assert y.grad_fn is None
        outs.append([y, h] + ([p.grad for p in m.parameters()] if grad else []))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, **GRAD_TOL)


@pytest.mark.parametrize("kind, kw", BATCH_FIRST)
def test_in_place_op_on_a_no_grad_batch_first_output_matches_torch(kind, kw):
    ref, fast = _pair(kind, **kw)
    x = torch.randn(3, 6, 4)
    grads = []
    for m in (ref, fast):
        with torch.no_grad():
            y, _ = m(x)
        w = torch.linspace(-1.0, 1.0, y.shape[2]).requires_grad_()
        y.mul_(w)  # records a graph on an output made without one
        (y * y).sum().backward()
        grads.append((y.detach(), w.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], **OUT_TOL)
    torch.testing.assert_close(grads[1][1], grads[0][1], **GRAD_TOL)


class _Counting(nn.Module):
    """A parametrization that counts its computations."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, w):
        self.calls += 1
        return w * 1.0


PARAMETRIZED = [("LSTM", "weight_hh_l0"), ("GRU", "weight_ih_l0"), ("RNN", "bias_hh_l0")]
PARAMETRIZED += [("LSTMCell", "weight_hh"), ("GRUCell", "weight_ih"), ("RNNCell", "bias_ih")]


@pytest.mark.parametrize("kind, name", PARAMETRIZED)
@pytest.mark.parametrize("grad", [True, False])
def test_a_parametrized_weight_is_computed_as_often_as_torchs(kind, name, grad):
    x = torch.randn(3, 4) if "Cell" in kind else torch.randn(6, 3, 4)
    calls = []
    for swap in (False, True):
        m = getattr(nn, kind)(4, 5)
        count = _Counting()
        nn.utils.parametrize.register_parametrization(m, name, count)
        if swap:
            lft.replace_rnns(m)
            assert isinstance(m, getattr(lft, kind))
        with torch.set_grad_enabled(grad):
            m(x)
        calls.append(count.calls)
    assert calls[1] == calls[0], f"computed {calls[1]} times per forward, torch {calls[0]}"


@pytest.mark.parametrize("kind", ["LSTM", "GRUCell"])
def test_spectral_norm_parametrization_keeps_torchs_power_iterations(kind):
    name = "weight_hh" if "Cell" in kind else "weight_hh_l0"
    torch.manual_seed(0)
    ref = nn.utils.parametrizations.spectral_norm(getattr(nn, kind)(4, 5), name=name)
    fast = nn.utils.parametrizations.spectral_norm(getattr(nn, kind)(4, 5), name=name)
    fast.load_state_dict(ref.state_dict())
    lft.replace_rnns(fast)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 4) if "Cell" in kind else torch.randn(6, 3, 4), None]
    xs[1] = torch.randn(xs[0].shape, generator=g)
    h0 = torch.randn(3, 5, generator=g)
    hx = h0 if "Cell" in kind else (h0[None], h0[None])
    outs = []
    for m in (ref, fast):
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        for x in xs:  # two training steps: each forward runs the power iteration
            opt.zero_grad()
            o = m(x, hx)
            o = o[0] if isinstance(o, tuple) else o
            (o * o).sum().backward()
            opt.step()
        outs.append([o.detach(), *m.state_dict().values()])
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, **GRAD_TOL)
