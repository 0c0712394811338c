"""Edge cases found in review: inputs, shapes and calls the other test files do not cover."""

from __future__ import annotations

import pytest

# ---- lstm_fast.torch --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "LSTMCell", "bidirectional"])
def test_torch_double_backward_is_a_clear_error(kind):
    """The kernels' backward is not itself differentiable: a second-order gradient must raise,
    not silently drop the recurrent layer's terms (loss = rnn(x) + x**3 gave a wrong result)."""
    torch = pytest.importorskip("torch")
    lft = pytest.importorskip("lstm_fast.torch")
    torch.manual_seed(0)
    if kind == "LSTMCell":
        m, x = lft.LSTMCell(3, 4), torch.randn(2, 3, requires_grad=True)
    elif kind == "bidirectional":
        m, x = lft.LSTM(3, 4, bidirectional=True), torch.randn(5, 2, 3, requires_grad=True)
    else:
        m, x = getattr(lft, kind)(3, 4), torch.randn(5, 2, 3, requires_grad=True)

    def first_order():
        out = m(x)
        y = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(y.pow(2).sum() + x.pow(3).sum(), x, create_graph=True)[0]

    g = first_order()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.pow(2).sum(), x)
    with pytest.raises(RuntimeError, match="double backward"):
        first_order().pow(2).sum().backward()
    # create_graph=True alone (no second order) still gives the right first-order gradient
    out = m(x)
    y = out[0] if isinstance(out, tuple) else out
    (plain,) = torch.autograd.grad(y.pow(2).sum() + x.pow(3).sum(), x)
    torch.testing.assert_close(g.detach(), plain)
