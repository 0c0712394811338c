"""Review 25, weight interop and the layers' state: a deleted or misshaped parameter in the
layer converted, state dict entries that alias the layer's own parameters, ONNX initializers
stored as external data, bfloat16 or integers, and a Keras GRU(reset_after=False)'s bias."""

from __future__ import annotations

import numpy as np
import pytest

import lstm_fast
from lstm_fast import interop
from lstm_fast.module import Parameter


def _state(layer):
    return {k: v.copy() for k, v in layer.state_dict().items()}


def _assert_bitwise(layer, state):
    now = layer.state_dict()
    assert list(now) == list(state)
    for k, v in now.items():
        assert v.dtype == state[k].dtype and v.shape == state[k].shape, k
        assert v.tobytes() == state[k].tobytes(), k


# ---- the layer converted: every parameter there, float32 of its shape ------------------------

_CALLS = {
    "to_keras": lambda layer, src: interop.to_keras(layer),
    "to_onnx": lambda layer, src: interop.to_onnx(layer),
    "onnx_attributes": lambda layer, src: interop.onnx_attributes(layer),
    "to_torch": lambda layer, src: interop.to_torch(layer),
    "from_keras": lambda layer, src: interop.from_keras(layer, interop.to_keras(src)),
    "from_onnx": lambda layer, src: interop.from_onnx(layer, **interop.to_onnx(src)),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
@pytest.mark.parametrize("kind,name", [("GRU", "bias_ih_l0"), ("LSTMCell", "bias_hh")])
def test_a_deleted_parameter_is_named(call, kind, name):
    """Before: with ``del gru.bias_ih_l0``, to_keras exported ``[kernel, recurrent_kernel]``
    (the weights of a layer without bias, bias_hh dropped silently), to_onnx failed with
    "'NoneType' object has no attribute 'shape'", from_keras/from_onnx with KeyError, to_torch
    with torch's missing key. Now each names the parameter and its shape, as the forward does."""
    torch = pytest.importorskip("torch") if call == "to_torch" else None
    del torch
    layer, src = getattr(lstm_fast, kind)(3, 4, seed=0), getattr(lstm_fast, kind)(3, 4, seed=1)
    delattr(layer, name)
    before = _state(layer)
    with pytest.raises(AttributeError, match=rf"{name}: missing .* shape \(\d+,\)"):
        _CALLS[call](layer, src)
    _assert_bitwise(layer, before)


@pytest.mark.parametrize("call", sorted(set(_CALLS) - {"onnx_attributes"}))
@pytest.mark.parametrize("how", ["shape", "dtype"])
def test_a_misshaped_or_float64_parameter_is_named(call, how):
    """Before: a weight_hh_l0 assigned another shape was exported as malformed initializers
    (to_onnx's R (1, 16, 5) for H = 4) and Keras arrays, from_keras refused the right
    recurrent_kernel as misshaped ("expected (5, 16), got (4, 16)"), from_onnx loaded into it;
    a float64 parameter was exported as float64 arrays and a float64 torch module's weights.
    Now the parameter is named with the expected and given shape and dtype, before any work."""
    if call == "to_torch":
        pytest.importorskip("torch")
    layer, src = lstm_fast.LSTM(3, 4, seed=0), lstm_fast.LSTM(3, 4, seed=1)
    if how == "shape":
        layer.weight_hh_l0 = Parameter(np.zeros((16, 5)))
        got = r"float32 \(16, 5\)"
    else:
        layer.weight_hh_l0 = Parameter(layer.weight_hh_l0.data, dtype=np.float64)
        got = r"float64 \(16, 4\)"
    before = _state(layer)
    with pytest.raises(
        ValueError,
        match=rf"{call}: weight_hh_l0: expected the layer's float32 parameter of shape "
        rf"\(16, 4\), got {got}",
    ):
        _CALLS[call](layer, src)
    _assert_bitwise(layer, before)


@pytest.mark.parametrize("call", ["to_keras", "to_onnx", "onnx_attributes", "to_torch"])
def test_a_torch_module_given_for_a_layer_is_named_as_one(call):
    """Before: ``interop.to_onnx(torch.nn.LSTM(3, 4))`` raised "expected an lstm_fast LSTM,
    GRU or RNN layer, got LSTM"; now the class is named with its module, and what to do."""
    torch = pytest.importorskip("torch")
    import lstm_fast.torch as lft

    for module, name in (
        (torch.nn.LSTM(3, 4), "torch.nn.modules.rnn.LSTM"),
        (lft.GRU(3, 4), "lstm_fast.torch.GRU"),
    ):
        with pytest.raises(TypeError, match=rf"got {name} \(a torch module: from_torch\(module\)"):
            _CALLS[call](module, None)


def test_from_torch_leaves_a_spectral_norm_parametrization_as_it_was():
    """Before: from_torch read a training module's parametrized weights in training mode, so
    reading ``parametrizations.spectral_norm``'s weight ran a power iteration: the module's
    ``_u``/``_v`` buffers changed (converting a module changed it). Now parametrizations are
    read in eval mode (as the hook-based spectral_norm already was), their training flags
    restored: the module's state dict is bitwise as before, the weights its eval-mode ones."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import parametrizations

    def make():
        torch.manual_seed(0)
        m = torch.nn.LSTM(3, 4)
        parametrizations.spectral_norm(m, "weight_hh_l0")
        parametrizations.weight_norm(m, "weight_ih_l0")
        for _ in range(2):  # training forwards: the power iteration's vectors move
            m(torch.randn(2, 1, 3))
        return m

    module, twin = make(), make().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    layer = interop.from_torch(module)
    after = module.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert all(m.training for m in module.modules())
    with torch.no_grad():
        for k, v in layer.state_dict().items():
            np.testing.assert_array_equal(v, getattr(twin, k).numpy(), err_msg=k)


@pytest.mark.filterwarnings("ignore:.*weight_norm.* is deprecated:FutureWarning")
@pytest.mark.parametrize("how", ["parametrize", "parametrize-l1", "weight_norm", "prune"])
def test_from_torch_state_dict_of_computed_weights_says_so(how):
    """Before: the state dict of a module with parametrized, weight_norm'ed or pruned weights
    (``parametrizations.weight_ih_l0.original0``, ``weight_hh_l0_g``/``_v``,
    ``weight_ih_l0_orig``) was refused as a key missing, and no more; now the error names the
    key that holds a computed weight's source, and from_torch(module) as the way."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import parametrizations, prune

    m = torch.nn.GRU(3, 4, num_layers=2)
    if how.startswith("parametrize"):
        parametrizations.weight_norm(m, "weight_ih_l1" if how.endswith("l1") else "weight_ih_l0")
    elif how == "weight_norm":
        torch.nn.utils.weight_norm(m, "weight_hh_l0")
    else:
        prune.l1_unstructured(m, "weight_ih_l0", 0.3)
    with pytest.raises(
        (ValueError, RuntimeError), match=r"the state dict of a module whose weights are computed"
    ):
        interop.from_torch(m.state_dict())
    interop.from_torch(m)  # the module itself: its weights as computed


# ---- load_state_dict: entries that are the layer's own parameters ----------------------------


@pytest.mark.parametrize("as_tensor", [False, True])
def test_load_state_dict_of_the_layers_own_arrays_swapped(as_tensor):
    """Before: the entries were written in turn from the arrays given, so swapping a
    bidirectional layer's directions with views of its own parameters (``{"weight_ih_l0":
    gru.weight_ih_l0_reverse.data, "weight_ih_l0_reverse": gru.weight_ih_l0.data, ...}``) wrote
    the reverse weights into both directions. Now such an entry is copied before any write."""
    if as_tensor:
        torch = pytest.importorskip("torch")
    layer = lstm_fast.GRU(3, 4, seed=0, bidirectional=True)
    before = _state(layer)

    def other(k):
        return k[: -len("_reverse")] if k.endswith("_reverse") else k + "_reverse"

    own = {k: layer._parameters[other(k)].data for k in before}
    if as_tensor:
        own = {k: torch.from_numpy(v) for k, v in own.items()}
    layer.load_state_dict(own)
    _assert_bitwise(layer, {k: before[other(k)] for k in before})


# ---- ONNX initializers: external data, element types -----------------------------------------


def _save_with_external_data(path, init):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    protos = [numpy_helper.from_array(v, n) for n, v in init.items()]
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=protos))
    path.mkdir()
    onnx.save_model(
        model,
        str(path / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return str(path / "m.onnx")


def test_from_onnx_refuses_external_data_not_loaded(tmp_path, monkeypatch):
    """Before: an initializer whose data is external and not loaded (``onnx.load(path,
    load_external_data=False)``) was read from a file of that name in the working directory:
    another model's weights.bin there loaded its weights, silently. Now it raises, naming the
    initializer and the file, and the layer is unchanged; loaded, it imports bitwise."""
    onnx = pytest.importorskip("onnx")
    src, other = (lstm_fast.LSTM(3, 4, bidirectional=True, seed=s) for s in (0, 1))
    path = _save_with_external_data(tmp_path / "a", interop.to_onnx(src))
    _save_with_external_data(tmp_path / "b", interop.to_onnx(other))
    monkeypatch.chdir(tmp_path / "b")  # another model's weights.bin in the working directory
    protos = {t.name: t for t in onnx.load(path, load_external_data=False).graph.initializer}
    dst = lstm_fast.LSTM(3, 4, bidirectional=True, seed=2)
    before = _state(dst)
    with pytest.raises(
        ValueError, match=r"W: expected an initializer with its data, .*external data in "
    ):
        interop.from_onnx(dst, **protos)
    _assert_bitwise(dst, before)
    interop.from_onnx(dst, **{t.name: t for t in onnx.load(path).graph.initializer})
    _assert_bitwise(dst, _state(src))


def test_from_onnx_initializer_element_types():
    """Before: a bfloat16 initializer raised "expected a real numeric array, got dtype
    bfloat16" (its values fit float32 exactly, as a bfloat16 torch tensor's, which loads), an
    int8 one (a quantized model's weight, meaningless without its scale) loaded its integers as
    the weights, and raw_data of another size than the dims failed naming no initializer."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    src, dst = lstm_fast.GRU(3, 4, seed=0), lstm_fast.GRU(3, 4, seed=1)
    init = interop.to_onnx(src)
    # bfloat16: the values stored (float32 rounded to bfloat16's 8 bits) loaded exactly
    w16 = helper.make_tensor("W", TensorProto.BFLOAT16, init["W"].shape, init["W"].ravel())
    interop.from_onnx(dst, w16, init["R"], init["B"])
    stored = np.asarray(w16.int32_data, np.uint32).astype(np.uint32) << 16
    stored = stored.view(np.float32).reshape(init["W"].shape)
    assert 0 < np.abs(stored - init["W"]).max() < 1e-2  # (rounded: not the float32 values)
    np.testing.assert_array_equal(interop.to_onnx(dst)["W"], stored)
    before = _state(dst)
    w8 = numpy_helper.from_array(np.round(init["W"] * 100).astype(np.int8), "W")
    with pytest.raises(TypeError, match=r"W: expected a float initializer .*got INT8 \(a quant"):
        interop.from_onnx(dst, w8, init["R"], init["B"])
    short = numpy_helper.from_array(init["R"], "R")
    short.raw_data = short.raw_data[:-4]
    with pytest.raises(ValueError, match=r"R: expected an initializer of shape \(1, 12, 4\)"):
        interop.from_onnx(dst, init["W"], short, init["B"])
    _assert_bitwise(dst, before)


# ---- Keras ----------------------------------------------------------------------------------


def test_from_keras_names_a_gru_reset_after_false_bias():
    """Before: a Keras GRU(reset_after=False)'s bias (3H,) was refused as a shape only; now
    the message says whose bias it is and why the layer cannot compute that GRU."""
    gru = lstm_fast.GRU(3, 4, seed=0)
    kernel, recurrent, bias = interop.to_keras(gru)
    before = _state(gru)
    with pytest.raises(ValueError, match=r"bias: .*got \(12,\): a GRU\(reset_after=False\)'s"):
        interop.from_keras(gru, [kernel, recurrent, bias[0]])
    _assert_bitwise(gru, before)
