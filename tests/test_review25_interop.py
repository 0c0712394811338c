"""Review 25, weight interop and the layers' state: a deleted or misshaped parameter in the
layer converted, state dict entries that alias the layer's own parameters, ONNX initializers
stored as external data, bfloat16 or integers, and a Keras GRU(reset_after=False)'s bias."""

from __future__ import annotations

import pytest

import lstm_fast


def _state(layer):
    return {k: v.copy() for k, v in layer.state_dict().items()}


def _assert_bitwise(layer, state):
    now = layer.state_dict()
    assert list(now) == list(state)
    for k, v in now.items():
        assert v.dtype == state[k].dtype and v.shape == state[k].shape, k
        assert v.tobytes() == state[k].tobytes(), k


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
