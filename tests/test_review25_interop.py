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
