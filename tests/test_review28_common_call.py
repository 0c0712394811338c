"""Review 28 of 7ee9733 (the cells' common eager call ``_FastCellMixin._common_call``,
``_array`` through ``numpy(force=True)``, the layers' parameter look-ups in ``_parameters``),
differential against the code before it (d6eba6e): same calls, outputs, requires_grad flags,
gradients, exception types and messages. Two calls behaved differently; each test below failed
before its fix, or pins what the old code did and the new must keep.

* ``_array`` took NumPy's view of a non-contiguous tensor and copied that: ``numpy()`` marks the
  storage it views non-resizable, so the caller's own tensor -- a batch_first layer's input,
  an expanded (learned) initial state, the base of a transposed input, a non-contiguous
  upstream gradient -- could no longer grow with ``resize_()`` after a forward or backward
  (``Trying to resize storage that is not resizable``). Before, the copy was torch's
  (``contiguous()``) and only the copy was marked.
* ``_common_call`` read a deleted bias (``del cell.bias_ih``) as no bias: the cell ran where
  torch's cell and the general path raise ``AttributeError``, and a bias put back as a buffer
  or a plain tensor attribute was silently left out of the sum (outputs other than torch's).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
lft = pytest.importorskip("lstm_fast.torch")

CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"})]
LAYERS = ["LSTM", "GRU", "RNN"]


def _pair(name, kw, I=5, H=7, seed=0):
    """torch's cell and ours with the same parameters."""
    torch.manual_seed(seed)
    ref = getattr(nn, name)(I, H, **kw)
    fast = getattr(lft, name)(I, H, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _hx(name, h, c=None):
    return (h, h if c is None else c) if name == "LSTMCell" else h


def _tuple(out):
    return out if isinstance(out, tuple) else (out,)


# ------------------------------------------------------ 1. non-contiguous tensors stay resizable
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name,kw", CELLS)
def test_cell_transposed_input_leaves_its_base_resizable(name, kw, grad):
    """``cell(base.t())``: the kernels read a copy of the input; ``base`` grows afterwards as
    before (the common path, grad mode on and off)."""
    _, fast = _pair(name, kw)
    base = torch.randn(5, 3, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = _tuple(fast(base.t()))
        want = _tuple(fast(base.detach().t().contiguous()))
    for a, b in zip(out, want):
        assert torch.equal(a.detach(), b.detach())
    if grad:
        sum(o.sum() for o in out).backward()
    base.detach().resize_(50, 30)  # raised: Trying to resize storage that is not resizable


@pytest.mark.parametrize("name,kw", CELLS)
def test_cell_expanded_state_leaves_its_base_resizable(name, kw):
    """A learned initial state broadcast over the batch (``h0.expand(B, H)``, stride 0): read as
    a copy, its own storage untouched, forward and backward."""
    _, fast = _pair(name, kw)
    h0 = torch.randn(7, requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    out = _tuple(fast(x, _hx(name, h0.expand(3, 7))))
    sum((o * torch.randn(o.shape)).sum() for o in out).backward()
    assert h0.grad is not None and h0.grad.shape == (7,)
    h0.detach().resize_(1000)


@pytest.mark.parametrize("name,kw", CELLS[:2])
def test_non_contiguous_upstream_gradient_stays_resizable(name, kw):
    """A gradient handed to backward as a transposed view (``backward(g.t())``): its storage
    stays the caller's to resize."""
    _, fast = _pair(name, kw)
    x = torch.randn(3, 5, requires_grad=True)
    h = _tuple(fast(x))[0]
    g = torch.randn(7, 3)
    h.backward(g.t())
    assert x.grad is not None
    g.resize_(100, 100)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("cls", LAYERS)
def test_batch_first_layer_input_stays_resizable(cls, grad):
    """A batch_first layer reads its (B, T, I) input through a transposed view: the input the
    caller passed (e.g. a reused buffer grown for longer batches) stays resizable, and the
    layer still gives torch's output."""
    torch.manual_seed(0)
    ref = getattr(nn, cls)(5, 6, batch_first=True)
    fast = getattr(lft, cls)(5, 6, batch_first=True)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        y, _ = fast(x)
        want, _ = ref(x)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    if grad:
        y.sum().backward()
        assert x.grad is not None
    x.detach().resize_(3, 40, 5)


# -------------------------------------------------------------- 2. a deleted or replaced bias
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("param", ["weight_ih", "weight_hh", "bias_ih", "bias_hh"])
@pytest.mark.parametrize("name,kw", CELLS)
def test_deleted_parameter_raises_as_torchs_cell(name, kw, param, grad):
    """``del cell.<param>``: torch's cell raises AttributeError naming it at the next forward,
    and so does ours (a deleted bias ran as ``bias=False`` on the common path)."""
    ref, fast = _pair(name, kw)
    x = torch.randn(3, 5)
    for m in (ref, fast):
        delattr(m, param)
    with torch.set_grad_enabled(grad):
        with pytest.raises(AttributeError) as want:
            ref(x)
        with pytest.raises(AttributeError) as got:
            fast(x)
    assert str(got.value) == str(want.value)
    assert param in str(got.value)


@pytest.mark.parametrize("how", ["buffer", "attribute"])
@pytest.mark.parametrize("name,kw", CELLS)
def test_bias_put_back_as_a_tensor_is_read(name, kw, how):
    """A bias deleted and put back as a buffer or a plain tensor attribute is what torch's cell
    reads (``self.bias_hh``), and ours: it was left out of the sum on the common path, with no
    error (outputs other than torch's)."""
    ref, fast = _pair(name, kw)
    bias = torch.randn(ref.bias_hh.shape)
    for m in (ref, fast):
        del m.bias_hh
        if how == "buffer":
            m.register_buffer("bias_hh", bias.clone())
        else:
            m.bias_hh = bias.clone()
    x = torch.randn(3, 5, requires_grad=True)
    h = torch.randn(3, 7)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            got, want = _tuple(fast(x, _hx(name, h))), _tuple(ref(x, _hx(name, h)))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            assert a.requires_grad == b.requires_grad == grad


@pytest.mark.parametrize("cls", LAYERS)
def test_layer_bias_put_back_as_a_buffer_is_read(cls):
    """The layers' look-up in ``_parameters`` (``_check_supported``) falls back to the
    attribute: a bias replaced by a buffer is read, as torch's layer reads it."""
    torch.manual_seed(0)
    ref = getattr(nn, cls)(5, 6, num_layers=2)
    fast = getattr(lft, cls)(5, 6, num_layers=2)
    fast.load_state_dict(ref.state_dict())
    bias = torch.randn(ref.bias_hh_l1.shape)
    for m in (ref, fast):
        del m.bias_hh_l1
        m.register_buffer("bias_hh_l1", bias.clone())
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
