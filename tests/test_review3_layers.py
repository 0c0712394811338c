"""Third review, layer API: the calls a PyTorch user makes that earlier tests did not cover."""

import numpy as np
import pytest

import lstm_fast
from lstm_fast import interop

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _grads(module):
    return {n: None if p.grad is None else p.grad.copy() for n, p in module.named_parameters()}


LAYERS = [
    ("LSTM", {}),
    ("GRU", {}),
    ("RNN", {}),
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
]


# ---- gradients that are None or unusable ----------------------------------------------------


@pytest.mark.parametrize("kind, kw", LAYERS)
def test_backward_restores_a_gradient_set_to_none(kind, kw):
    """``p.grad = None`` (torch's zero_grad(set_to_none=True)) made backward skip that
    parameter silently: its gradient stayed None while the others accumulated."""
    layer = getattr(lstm_fast, kind)(3, 4, seed=0, **kw)
    ref = getattr(lstm_fast, kind)(3, 4, seed=0, **kw)
    x = _x(5, 2, 3)
    y = layer(x)[0]
    ref(x)
    dy = _x(*y.shape)
    for p in layer.parameters():
        p.grad = None
    layer.backward(dy)
    ref.backward(dy)
    for (n, p), (_, q) in zip(layer.named_parameters(), ref.named_parameters()):
        assert p.grad is not None, n
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=n)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cell_backward_restores_a_gradient_set_to_none(kind):
    cell = getattr(lstm_fast, kind)(3, 4, seed=0)
    ref = getattr(lstm_fast, kind)(3, 4, seed=0)
    x, dh = _x(2, 3), _x(2, 4)
    cell(x)
    ref(x)
    cell.weight_hh.grad = None
    cell.backward(dh)
    ref.backward(dh)
    np.testing.assert_array_equal(cell.weight_hh.grad, ref.weight_hh.grad)


def _bad_grads():
    ro = np.zeros((16, 3), np.float32)
    ro.flags.writeable = False
    return [
        (np.zeros((16, 3), np.float64), TypeError, r"weight_ih_l0\.grad: expected a float32"),
        (np.zeros((3, 16), np.float32).T, ValueError, r"weight_ih_l0\.grad: .*C-contiguous"),
        (ro, ValueError, r"weight_ih_l0\.grad: .*read-only"),
        (np.zeros((4, 3), np.float32), ValueError, r"weight_ih_l0\.grad: expected shape"),
        ([[0.0] * 3] * 16, TypeError, r"weight_ih_l0\.grad: expected a float32"),
    ]


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bad, error, match", _bad_grads())
def test_backward_checks_every_gradient_before_accumulating(num_layers, bad, error, match):
    """A float64 (read-only, strided, ...) ``.grad`` of layer 0 failed in the core only after
    layer 1's gradients had been accumulated, with a message naming no parameter."""
    layer = lstm_fast.LSTM(3, 4, num_layers=num_layers, seed=0)
    y = layer(_x(5, 2, 3))[0]
    layer.weight_ih_l0.grad = bad
    if num_layers > 1:  # (the one-layer path's core call names the parameter too, review 4)
        layer.weight_hh_l0.grad = None
    before = _grads(layer)
    with pytest.raises(error, match=match):
        layer.backward(_x(*y.shape))
    after = _grads(layer)
    if num_layers > 1:
        assert after["weight_hh_l0"] is None  # not even materialised
    for n, g in before.items():
        if n != "weight_ih_l0" and g is not None:
            np.testing.assert_array_equal(after[n], g, err_msg=n)
    layer.weight_ih_l0.grad = None
    layer.backward(_x(*y.shape))  # the saved forward is still usable


# ---- check_finite with torch tensors ------------------------------------------------------------


def test_check_finite_takes_the_tensors_the_layers_take():
    """check_finite=True crashed on a state or upstream gradient given as a torch tensor that
    requires grad (``Can't call numpy() on Tensor that requires grad``) or is bfloat16, which
    the layers take without check_finite; and it did not see NaN in a PackedSequence dy."""
    x = _x(3, 2, 4)
    plain = lstm_fast.LSTM(4, 5, seed=0)
    checked = lstm_fast.LSTM(4, 5, seed=0, check_finite=True)
    hx = (torch.zeros(1, 2, 5, requires_grad=True), torch.zeros(1, 2, 5, dtype=torch.bfloat16))
    dy = torch.ones(3, 2, 5, requires_grad=True)
    for layer in (plain, checked):
        y, _ = layer(x, hx)
        dx = layer.backward(dy, torch.ones(1, 2, 5, dtype=torch.bfloat16))[0]
    np.testing.assert_array_equal(checked(x, hx)[0], plain(x, hx)[0])
    np.testing.assert_array_equal(checked.backward(dy)[0], plain.backward(dy)[0])
    assert dx.shape == x.shape

    cell = lstm_fast.GRUCell(4, 5, check_finite=True)
    cell(x[0], torch.zeros(2, 5, requires_grad=True))
    with pytest.raises(ValueError, match=r"hx: expected finite"):
        cell(x[0], torch.full((2, 5), float("nan"), requires_grad=True))

    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor([3, 2]))
    y, _ = checked(packed)
    bad = torch.nn.utils.rnn.PackedSequence(
        y.data * float("nan"), y.batch_sizes, y.sorted_indices, y.unsorted_indices
    )
    with pytest.raises(ValueError, match=r"dy: expected finite values, got NaN"):
        checked.backward(bad)


# ---- PackedSequence gradients -------------------------------------------------------------------


def test_packed_dy_must_hold_the_forwards_sequences():
    """A PackedSequence dy of other lengths was padded and used as is: its rows were read as
    other sequences' steps (silently wrong gradients); a packed dy after an unpacked forward
    failed inside NumPy."""
    pack = torch.nn.utils.rnn.pack_padded_sequence
    layer = lstm_fast.GRU(4, 5, seed=0)
    x = torch.from_numpy(_x(3, 2, 4))
    y, _ = layer(pack(x, torch.tensor([2, 3]), enforce_sorted=False))
    ok = layer.backward(y)[0]
    # the same sequences packed anew are fine
    padded = torch.nn.utils.rnn.pad_packed_sequence(y)[0]
    again = pack(padded, torch.tensor([2, 3]), enforce_sorted=False)
    np.testing.assert_array_equal(layer.backward(again)[0], ok)
    for lens in ([3, 2], [2, 2], [1, 3]):
        bad = pack(torch.zeros(3, 2, 5), torch.tensor(lens), enforce_sorted=False)
        with pytest.raises(ValueError, match=r"dy: expected a PackedSequence of the output's"):
            layer.backward(bad)
    np.testing.assert_array_equal(layer.backward(y)[0], ok)  # nothing consumed by the failures
    layer(x.numpy())
    with pytest.raises(TypeError, match=r"dy: got a PackedSequence, but the forward's input"):
        layer.backward(y)


# ---- constructors and interop -------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: lstm_fast.LSTM(3, 4, bidirectional="False"),
        lambda: lstm_fast.GRU(3, 4, bidirectional=1),
        lambda: lstm_fast.LSTMCell(3, 4, bias="False"),
        lambda: lstm_fast.RNNCell(3, 4, bias=None),
    ],
)
def test_bidirectional_and_cell_bias_must_be_bools(make):
    """bidirectional="False" built a two-direction layer and a cell's bias="False" a cell with
    biases (the layers' bias and batch_first were already checked)."""
    with pytest.raises(TypeError, match=r"(bidirectional|bias): expected a bool, got"):
        make()


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_from_torch_takes_subclasses_of_torch_modules(kind):
    """from_torch matched the module's own class name, so a user's ``class Encoder(nn.LSTM)``
    raised TypeError."""
    sub = type("Encoder", (getattr(torch.nn, kind),), {})
    tm = sub(3, 4)
    layer = interop.from_torch(tm)
    assert type(layer).__name__ == kind
    for (n, p), (tn, tp) in zip(layer.named_parameters(), tm.named_parameters()):
        assert n == tn
        np.testing.assert_array_equal(p.data, tp.detach().numpy())
    # a bare state dict builds the same layer (review 5: the README's "modules or state dicts")
    opts = {"nonlinearity": "tanh"} if kind.startswith("RNN") else {}
    again = interop.from_torch(tm.state_dict(), **opts)
    assert type(again).__name__ == kind
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, again.state_dict()[k])


# ---- the output backward reads ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, kw, lengths",
    [
        ("LSTM", {}, None),
        ("LSTM", {}, [5, 3]),
        ("LSTM", dict(num_layers=2, proj_size=2), None),
        ("GRU", {}, None),
        ("RNN", dict(num_layers=2), None),
        ("GRU", dict(batch_first=True, bidirectional=True), [4, 5]),
    ],
)
def test_training_output_cannot_be_edited_under_backward(kind, kw, lengths):
    """The cache of a training forward refers to y's memory (h_{t-1} of every step) and y was
    returned as is: ``y[...] = 0`` or ``y *= mask`` before backward silently changed dW_hh
    and dx. The output is now read-only in training mode (in every layout), writeable in
    eval mode, and the gradients are those of the forward."""
    layer = getattr(lstm_fast, kind)(3, 4, seed=0, **kw)
    shape = (2, 5, 3) if layer.batch_first else (5, 2, 3)
    x = _x(*shape)
    y, _ = layer(x, lengths=lengths)
    dy = _x(*y.shape)
    with pytest.raises(ValueError, match="read-only"):
        y[...] = 3.0
    with pytest.raises(ValueError, match="read-only"):
        np.maximum(y, 0, out=y)
    dx = layer.backward(dy)[0]
    grads = _grads(layer)
    ref = getattr(lstm_fast, kind)(3, 4, seed=0, **kw)
    y2 = ref(x, lengths=lengths)[0].copy()  # a copy is free to edit
    y2[...] = 3.0
    np.testing.assert_array_equal(ref.backward(dy)[0], dx)
    for n, g in _grads(ref).items():
        np.testing.assert_array_equal(g, grads[n], err_msg=n)
    layer.eval()
    y, _ = layer(x, lengths=lengths)
    y[...] = 0.0  # no cache in eval mode: the caller's array


def test_unbatched_and_embedded_training_outputs_are_read_only():
    layer = lstm_fast.LSTM(3, 4, seed=0)
    y, _ = layer(_x(5, 3))
    assert y.shape == (5, 4) and not y.flags.writeable
    from lstm_fast.nn import Embedding

    emb = Embedding(7, 3, seed=0)
    y, _ = layer.forward_embedded(np.array([[1, 2], [3, 4]]), emb)
    assert not y.flags.writeable


# ---- new weights between forward and backward ---------------------------------------------------


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("how", ["load_state_dict", "from_onnx"])
def test_new_weights_drop_the_pending_backward(kind, how):
    """load_state_dict (or a Keras/ONNX import) between forward and backward left the cache in
    place: backward then mixed the old forward's gates with the new weights (which the cache
    reads in place) and returned a gradient of neither. It now raises, as torch does for
    weights copied in place under a pending backward; a failed load keeps the cache."""
    make = getattr(lstm_fast, kind)
    layer, other = make(3, 4, seed=0), make(3, 4, seed=1)
    x = _x(2, 3) if kind.endswith("Cell") else _x(5, 2, 3)
    out = layer(x)
    dy = np.ones_like(out[0] if isinstance(out, tuple) else out)
    bad = {**other.state_dict(), "weight_ih" + ("" if kind.endswith("Cell") else "_l0"): 0}
    with pytest.raises(ValueError):
        layer.load_state_dict(bad)
    layer.backward(dy)  # nothing changed: still usable
    layer(x)
    if how == "load_state_dict":
        layer.load_state_dict(other.state_dict())
    else:
        interop.from_onnx(layer, **interop.to_onnx(other))
    with pytest.raises(RuntimeError, match="no saved forward"):
        layer.backward(dy)


def test_load_state_dict_reports_keys_as_pytorch():
    """strict=False returned None and strict=True raised KeyError; PyTorch returns the missing
    and unexpected keys, and raises RuntimeError."""
    m = lstm_fast.LSTM(3, 4, seed=0)
    sd = m.state_dict()
    assert tuple(m.load_state_dict(sd)) == ([], [])
    partial = {k: v for k, v in sd.items() if k != "bias_hh_l0"}
    partial["extra"] = np.zeros(2, np.float32)
    res = m.load_state_dict(partial, strict=False)
    assert res.missing_keys == ["bias_hh_l0"] and res.unexpected_keys == ["extra"]
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"missing keys \['bias_hh_l0'\], unexpected keys"):
        m.load_state_dict(partial)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_assigning_an_array_to_a_parameter_name_raises():
    """layer.weight_ih_l0 = array silently unregistered the weight (the next forward failed
    with 'got NoneType'); PyTorch raises TypeError at the assignment."""
    m = lstm_fast.LSTM(3, 4, seed=0)
    w = m.weight_ih_l0
    with pytest.raises(TypeError, match=r"cannot assign ndarray as parameter 'weight_ih_l0'"):
        m.weight_ih_l0 = np.zeros((16, 3), np.float32)
    assert m.weight_ih_l0 is w and "weight_ih_l0" in dict(m.named_parameters())
    m.weight_ih_l0 = lstm_fast.module.Parameter(np.ones((16, 3), np.float32))  # a Parameter: fine
    assert np.all(dict(m.named_parameters())["weight_ih_l0"].data == 1)


def test_zero_grad_replaces_a_gradient_of_the_wrong_dtype_or_layout():
    """A float64 (or strided, read-only) .grad of the right shape was zeroed in place and kept,
    so zero_grad() did not clear what backward rejects."""
    m = lstm_fast.LSTM(3, 4, seed=0)
    x = np.ones((2, 1, 3), np.float32)
    for bad in (
        np.ones((16, 3)),
        np.ones((16, 6), np.float32)[:, ::2],
        np.ones((16, 3), np.float32).copy(),
    ):
        if bad.dtype == np.float32 and bad.flags.c_contiguous:
            bad.flags.writeable = False
        m.weight_ih_l0.grad = bad
        m.zero_grad()
        g = m.weight_ih_l0.grad
        assert g.dtype == np.float32 and g.flags.c_contiguous and g.flags.writeable
        assert not g.any()
        y, _ = m(x)
        m.backward(np.ones_like(y))  # accepted now
