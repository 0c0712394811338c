"""Weight interop: PyTorch modules and state dicts, Keras layer weights, ONNX initializers.

Every conversion is a lossless reordering of the same float32 numbers:

* PyTorch (``torch.nn.LSTM/GRU/RNN`` and the cells): identical names and layouts —
  :func:`from_torch` builds the matching lstm_fast layer, :func:`to_torch` the matching torch one.
* Keras: ``kernel`` (I, G), ``recurrent_kernel`` (H, G), LSTM gate order i, f, c, o and one bias
  (G,) (= b_ih + b_hh; imported as b_ih with b_hh = 0); GRU with ``reset_after=True``: gate order
  z, r, h and bias (2, G) = [input bias, recurrent bias]; SimpleRNN: one bias (H,).
* ONNX (``LSTM``/``GRU``/``RNN`` operators): ``W`` (D, G, I), ``R`` (D, G, H), ``B`` (D, 2G);
  LSTM gate order i, o, f, c; GRU z, r, h with ``linear_before_reset=1`` (PyTorch's GRU).

Shapes use the legend: ``I`` input, ``H`` hidden, ``G`` gate width (4H, 3H, H), D directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import rnn as _rnn
from .module import _as_dtype, _check_dense_tensor, _from_torch, check_writeable

__all__ = [
    "from_keras",
    "from_onnx",
    "from_torch",
    "onnx_attributes",
    "to_keras",
    "to_onnx",
    "to_torch",
]

_LAYERS = {"LSTM": _rnn.LSTM, "GRU": _rnn.GRU, "RNN": _rnn.RNN}
_CELLS = {"LSTMCell": _rnn.LSTMCell, "GRUCell": _rnn.GRUCell, "RNNCell": _rnn.RNNCell}


def _tensor(name: str, a: Any) -> Any:
    """A torch tensor as NumPy, float64 kept as float64 (so :func:`_as_dtype` can refuse a value
    beyond float32's range instead of loading inf); half precision widened exactly."""
    if not hasattr(a, "detach"):
        return a
    _check_dense_tensor(name, a)
    return _from_torch(a, name)


def _is_tensor_proto(a: Any) -> bool:
    """An ``onnx.TensorProto`` (an ONNX model's initializer), without importing onnx."""
    return type(a).__name__ == "TensorProto" and hasattr(a, "dims") and hasattr(a, "data_type")


def _shape(a: Any) -> tuple | None:
    """The shape of an array, tensor or TensorProto without converting it (None for lists and
    the like)."""
    if _is_tensor_proto(a):
        return tuple(a.dims)
    shape = getattr(a, "shape", None)
    return None if shape is None or isinstance(a, (str, bytes)) else tuple(shape)


def _np(name: str, a: Any, shape: tuple, legend: str) -> np.ndarray:
    """An imported weight as float32 of ``shape`` (``legend`` its letters), checked: real
    numbers that fit float32 (as ``load_state_dict``'s), so a string, complex or 1e300 entry
    raises naming the array. The shape is checked first, before anything is converted (a large
    wrong array raises naming it, not MemoryError)."""
    given = _shape(a)
    if given is not None and given != tuple(shape):
        raise ValueError(f"{name}: expected shape {legend} = {tuple(shape)}, got {given}")
    if _is_tensor_proto(a):
        a = _onnx_array(name, a)
    arr = np.ascontiguousarray(_as_dtype(name, _tensor(name, a)))
    _expect(name, arr, shape, legend)
    return arr


# The element types of an ONNX LSTM/GRU/RNN's W, R, B (tensor(float16/float/double)) and
# bfloat16 (whose values float32 holds exactly too).
_ONNX_FLOATS = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16")


def _onnx_array(name: str, t: Any) -> np.ndarray:
    """An ONNX initializer (``TensorProto``) as a NumPy array, checked first: a float element
    type (an int8 initializer is a quantized weight, its values no weights' without the
    scale: it loaded as those integers) and data in the proto (external data not loaded was
    read from a file of that name in the working directory, if any)."""
    from onnx import TensorProto, numpy_helper

    dtypes = TensorProto.DataType
    dtype = dtypes.Name(t.data_type) if t.data_type in dtypes.values() else str(t.data_type)
    if dtype not in _ONNX_FLOATS:
        hint = " (a quantized weight? dequantize it first)" if "INT" in dtype else ""
        raise TypeError(f"{name}: expected a float initializer {_ONNX_FLOATS}, got {dtype}{hint}")
    if t.data_location == TensorProto.EXTERNAL:
        where = {e.key: e.value for e in t.external_data}.get("location", "?")
        raise ValueError(
            f"{name}: expected an initializer with its data, got a reference to external data "
            f"in {where!r} (load it: onnx.load(path), or onnx.external_data_helper."
            "load_external_data_for_model(model, base_dir))"
        )
    try:
        a = numpy_helper.to_array(t)
    except ValueError as e:  # raw_data of another size than the dims say, and the like
        shape = tuple(t.dims)
        raise ValueError(f"{name}: expected an initializer of shape {shape} ({e})") from None
    return a.astype(np.float32) if dtype == "BFLOAT16" else a  # (exact; NumPy has no bfloat16)


def _is_torch(obj: Any) -> bool:
    """A ``torch.nn.Module`` (without importing torch)."""
    return any(
        c.__name__ == "Module" and c.__module__ == "torch.nn.modules.module"
        for c in type(obj).__mro__
    )


def _kind(layer, what: str) -> str:
    """The layer's kind, after checking (for ``what``, the caller) that every parameter it
    computes with is there, float32 of its shape: a deleted bias was exported as none (a
    layer without bias) and a misshaped weight as malformed initializers, or an import
    failed with a KeyError, or checked the given arrays against the misshaped weight."""
    if isinstance(layer, (_rnn.LSTM, _rnn.LSTMCell)):
        kind = "LSTM"
    elif isinstance(layer, (_rnn.GRU, _rnn.GRUCell)):
        kind = "GRU"
    elif isinstance(layer, (_rnn.RNN, _rnn.RNNCell)):
        kind = "RNN"
    else:  # the class's module too: "got LSTM" said nothing for a torch (or lstm_fast.torch) one
        cls = type(layer)
        hint = " (a torch module: from_torch(module) makes its lstm_fast layer)"
        hint = hint if _is_torch(layer) else ""
        raise TypeError(
            f"layer: expected an lstm_fast LSTM, GRU or RNN layer (or cell), got "
            f"{cls.__module__}.{cls.__qualname__}{hint}"
        )
    _rnn._check_complete(layer)  # (AttributeError naming a deleted parameter and its shape)
    names, shapes, _ = getattr(layer, "_needed", None) or ((), (), None)  # (older pickles)
    for name, shape in zip(names, shapes):
        a = layer._parameters[name].data
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
            got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(
                f"{what}: {name}: expected the layer's float32 parameter of shape {shape}, "
                f"got {got}"
            )
    return kind


# ---- PyTorch -------------------------------------------------------------------------------------


_KEYS = (
    "state_dict: expected the keys of a torch LSTM/GRU/RNN (weight_ih_l0, weight_hh_l0, ...) or "
    "cell (weight_ih, weight_hh, ...), got"
)
# Wrappers that add a prefix to every key of the module they hold, and change nothing else:
# DataParallel / DistributedDataParallel (``module.``), torch.compile (``_orig_mod.``).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _without_wrapper_prefixes(sd: Mapping) -> Mapping:
    """``sd`` with the wrapper prefixes every key shares taken off (as torch's
    ``consume_prefix_in_state_dict_if_present``); any other prefix stays (and is named by the
    error that follows)."""
    while sd and all(isinstance(k, str) for k in sd):
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


_COMPUTED_KEY = re.compile(r"(weight|bias)_(ih|hh|hr)(_l\d+(_reverse)?)?_(g|v|u|orig|mask)")


def _computed_hint(sd: Mapping) -> str:
    """For an error about a state dict's keys: a hint when a key is a computed weight's
    source (``parametrizations.*``, hook-based weight_norm's ``_g``/``_v``, spectral_norm's
    and prune's ``_orig``), whose weight the state dict does not hold."""
    for k in sd:
        if isinstance(k, str) and (k.startswith("parametrizations.") or _COMPUTED_KEY.fullmatch(k)):
            return (
                f" ({k!r}: the state dict of a module whose weights are computed, by a "
                "parametrization, weight_norm, spectral_norm or prune: from_torch(module) "
                "reads them as computed)"
            )
    return ""


def _keys_error(sd: Mapping) -> ValueError:
    """The error for a mapping without a torch layer's first weights, naming the key at fault:
    one under a sub-module's prefix (a model's state dict), else the first few keys."""
    for k in sd:
        for tail in ("weight_ih_l0", "weight_hh_l0", "weight_ih", "weight_hh"):
            if isinstance(k, str) and k.endswith("." + tail):
                prefix = k[: -len(tail)]
                return ValueError(
                    f"{_KEYS} {k!r} (a model's state dict? pass the entries under {prefix!r}, "
                    f"without it: {{k[{len(prefix)}:]: v for k, v in sd.items() if "
                    f"k.startswith({prefix!r})}})"
                )
    if any(isinstance(k, str) and k.startswith("_all_weight_values.") for k in sd):
        return ValueError(
            f"{_KEYS} {list(sd)[:8]} (a quantized LSTM/GRU's, whose weights are packed: "
            "convert the float module's state dict, before quantizing it)"
        )
    return ValueError(f"{_KEYS} {list(sd)[:8]}{_computed_hint(sd)}")


_LAYER_KEY = re.compile(
    r"(?P<what>weight|bias)_(?P<part>ih|hh|hr)_l(?P<layer>\d+)(?P<reverse>_reverse)?"
)


def _torch_keys(cell: bool, fixed: dict, proj: bool):
    """The parameter names of a torch layer (or cell) of these settings, in torch's order
    (a generator: a stray ``weight_ih_l99999999`` must not make a list of them all)."""
    if cell:
        yield from ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if fixed["bias"] else [])
        return
    for k in range(fixed["num_layers"]):
        for sfx in ("", "_reverse")[: 2 if fixed["bidirectional"] else 1]:
            yield from (f"weight_ih_l{k}{sfx}", f"weight_hh_l{k}{sfx}")
            if fixed["bias"]:
                yield from (f"bias_ih_l{k}{sfx}", f"bias_hh_l{k}{sfx}")
            if proj:
                yield f"weight_hr_l{k}{sfx}"


def _is_torch_key(key: Any, cell: bool, fixed: dict, proj: bool) -> bool:
    """``key`` is one of :func:`_torch_keys`'s (without listing them)."""
    if cell:
        return key in ("weight_ih", "weight_hh") or (
            fixed["bias"] and key in ("bias_ih", "bias_hh")
        )
    m = _LAYER_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None or int(m["layer"]) >= fixed["num_layers"] or str(int(m["layer"])) != m["layer"]:
        return False
    if m["reverse"] and not fixed["bidirectional"]:
        return False
    if m["part"] == "hr":
        return proj and m["what"] == "weight"
    return m["what"] == "weight" or fixed["bias"]


def _few(keys: list, total: int) -> str:
    """``keys`` (the first few of ``total``) as a list, counted when cut."""
    return repr(keys) if len(keys) == total else f"{repr(keys)[:-1]}, ...] ({total} in all)"


def _same(given: Any, fixed: Any) -> bool:
    """An option's value is the state dict's (a bool for a bool, an int for an int)."""
    if isinstance(given, (bool, np.bool_)) != isinstance(fixed, bool):
        return False
    if not isinstance(given, (bool, np.bool_, int, np.integer)):  # 2.0, "2", an array, ...
        return False
    return bool(given == fixed)


def _layer_from_state_dict(sd: Mapping, seed: int | None, options: dict):
    """The lstm_fast layer (or cell) a torch state dict describes: cell or layer, num_layers,
    bidirectional, bias and proj_size from its keys; I, H, P and the kind from the shapes
    (G = 4H LSTM, 3H GRU, H RNN). ``options`` (batch_first, dropout, nonlinearity) as given;
    an option the state dict fixes (num_layers, hidden_size, ...) must agree with it.

    The keys are checked before the layer is built, every entry's shape before any is
    converted (a large unexpected or misshaped tensor raises naming it, without being
    copied)."""

    def shape(key):
        v = sd[key]
        return tuple(v.shape) if hasattr(v, "shape") else np.shape(v)

    options = dict(options)
    layer_keys = "weight_ih_l0" in sd or "weight_hh_l0" in sd
    cell = not layer_keys and ("weight_ih" in sd or "weight_hh" in sd)
    if not (layer_keys or cell):
        raise _keys_error(sd)
    sfx = "" if cell else "_l0"
    for have, need in (("weight_ih", "weight_hh"), ("weight_hh", "weight_ih")):
        if need + sfx not in sd:
            raise ValueError(
                f"state_dict: expected a key {need + sfx!r} beside {have + sfx!r}, got "
                f"{list(sd)[:8]}{_computed_hint(sd)}"
            )
    w_ih, w_hh = shape("weight_ih" + sfx), shape("weight_hh" + sfx)
    proj = not cell and "weight_hr_l0" in sd  # (another weight_hr_l* alone: named missing)
    if len(w_ih) != 2 or len(w_hh) != 2 or (proj and len(shape("weight_hr_l0")) != 2):
        raise ValueError(
            f"state_dict: weight_ih{sfx}, weight_hh{sfx}: expected 2-d arrays (G, I), (G, H), "
            f"got {w_ih}, {w_hh}"
        )
    (G, I), H = w_ih, (shape("weight_hr_l0")[1] if proj else w_hh[1])
    kinds = {4: "LSTM", 3: "GRU", 1: "RNN"}
    kind = kinds.get(G // H) if H and G % H == 0 else None
    if kind is None or (proj and kind != "LSTM"):
        raise ValueError(
            f"state_dict: weight_ih{sfx}: expected G = 4H (LSTM), 3H (GRU) or H (RNN) rows "
            f"for H = {H}{' (weight_hr_l0, LSTM)' if proj else ''}, got {G}"
        )
    # The layout is what any key shows (a layer index, a _reverse, a bias): a key that is
    # absent is then named missing, rather than the layer read smaller and the rest unexpected.
    found = [m for k in sd if isinstance(k, str) and (m := _LAYER_KEY.fullmatch(k))]
    fixed = {"input_size": I, "hidden_size": H}
    if cell:
        fixed["bias"] = "bias_ih" in sd or "bias_hh" in sd
    else:
        fixed["bias"] = any(m["what"] == "bias" for m in found)
        fixed["num_layers"] = 1 + max(int(m["layer"]) for m in found)
        fixed["bidirectional"] = any(m["reverse"] for m in found)
        if kind == "LSTM":
            fixed["proj_size"] = shape("weight_hr_l0")[0] if proj else 0
    unexpected = [k for k in sd if not _is_torch_key(k, cell, fixed, proj)]
    n_keys = 2 + 2 * fixed["bias"] + proj
    if not cell:
        n_keys *= fixed["num_layers"] * (1 + fixed["bidirectional"])
    n_missing = n_keys - (len(sd) - len(unexpected))
    if n_missing or unexpected:  # (load_state_dict's message, before anything is built)
        missing = []
        for k in _torch_keys(cell, fixed, proj):
            if len(missing) == min(n_missing, 8):
                break
            if k not in sd:
                missing.append(k)
        raise RuntimeError(
            f"load_state_dict for {kind}{'Cell' if cell else ''}: missing keys "
            f"{_few(missing, n_missing)}, unexpected keys {_few(unexpected[:8], len(unexpected))}"
            f"{_computed_hint(unexpected)}"
        )
    for name, value in fixed.items():
        if name in options:
            given = options.pop(name)
            if not _same(given, value):
                raise ValueError(f"{name}: expected {value!r} (the state dict's), got {given!r}")
    if kind != "RNN" and "nonlinearity" in options:
        raise TypeError(f"nonlinearity: applies to an RNN state dict, not to this {kind} one")
    if kind == "RNN" and "nonlinearity" not in options:  # tanh or relu: the weights cannot tell
        raise TypeError(
            "nonlinearity: expected 'tanh' or 'relu' for an RNN state dict (it does not hold "
            "the nonlinearity), got none: from_torch(state_dict, nonlinearity=...)"
        )
    if cell:
        bad = set(options) - {"nonlinearity"}
        if bad:
            raise TypeError(f"{sorted(bad)}: not options of a cell ({kind}Cell)")
        layer = _CELLS[kind + "Cell"](I, H, bias=fixed["bias"], seed=seed, **options)
    else:
        size = {"input_size", "hidden_size"}
        kw = {k: v for k, v in fixed.items() if k not in size}
        layer = _LAYERS[kind](I, H, seed=seed, **kw, **options)
    # the shapes, before any entry is converted (load_state_dict's message)
    for k, p in layer.named_parameters():
        given = _shape(sd[k])
        if given is not None and given != p.data.shape:
            raise ValueError(f"load_state_dict: {k}: expected shape {p.data.shape}, got {given}")
    return layer


def _unwrap(module: Any) -> Any:
    """The module a DataParallel / DistributedDataParallel (``.module``) or a torch.compile'd
    module (``._orig_mod``) holds, however deep; any other object as it is."""
    for _ in range(16):
        names = {c.__name__ for c in type(module).__mro__}
        if names & {"DataParallel", "DistributedDataParallel"} and hasattr(module, "module"):
            module = module.module
        elif "OptimizedModule" in names and hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            break
    return module


_MISSING = object()


def _torch_kind(module: Any) -> str:
    """The torch class a module is: its class's or a base's name (a user subclass of nn.LSTM,
    or lstm_fast.torch's, included), a TorchScript module's ``original_name``; else its own
    class name (refused by the caller). A quantized LSTM (its class also named LSTM, its
    weights packed) raises naming it."""
    for c in type(module).__mro__:
        if c.__name__ in _LAYERS or c.__name__ in _CELLS:
            if ".quantiz" in c.__module__:
                raise ValueError(
                    f"module: expected a float torch {c.__name__}, got {c.__module__}."
                    f"{c.__name__} (quantized or quantizable, its weights held otherwise); "
                    "convert the float module, before quantizing it"
                )
            return c.__name__
    original = getattr(module, "original_name", None)  # torch.jit.script / trace
    if type(module).__module__.startswith("torch.jit") and original in {**_LAYERS, **_CELLS}:
        return original
    return type(module).__name__


def _hook_weights(module: Any) -> dict:
    """``{name: tensor}`` of the weights a forward pre-hook of ``torch.nn.utils``' (hook-based)
    ``weight_norm``, ``spectral_norm`` or ``prune`` computes: the module's attribute holds the
    value of the last forward (stale after an optimizer step), the next forward recomputes it.
    Computed as that forward would (spectral_norm without a power iteration, as in eval mode)."""
    hooks = getattr(module, "_forward_pre_hooks", None)
    if not hooks:
        return {}
    try:
        import torch
        from torch.nn.utils.prune import BasePruningMethod
        from torch.nn.utils.spectral_norm import SpectralNorm
        from torch.nn.utils.weight_norm import WeightNorm
    except ImportError:  # pragma: no cover - a torch without these utilities
        return {}
    out = {}
    with torch.no_grad():
        for hook in hooks.values():
            if isinstance(hook, WeightNorm):
                out[hook.name] = hook.compute_weight(module)
            elif isinstance(hook, SpectralNorm):
                out[hook.name] = hook.compute_weight(module, do_power_iteration=False)
            elif isinstance(hook, BasePruningMethod):
                out[hook._tensor_name] = hook.apply_mask(module)
    return out


def from_torch(module: Any, *, seed: int | None = None, **options: Any):
    """The lstm_fast layer (or cell) equivalent to a torch ``nn.LSTM/GRU/RNN`` (or cell), with
    its weights copied. ``dropout`` and ``training`` mode carry over. A module wrapped in
    ``DataParallel``/``DistributedDataParallel`` or ``torch.compile`` is read through the
    wrapper, a ``torch.jit.script``'ed one by its ``original_name``; a quantized one (its
    weights packed) raises.

    ``module`` may also be a torch state dict (of an ``nn.LSTM/GRU/RNN`` or cell, tensors or
    arrays; the ``module.`` and ``_orig_mod.`` prefixes those wrappers give every key are taken
    off): the layer's kind, sizes, ``num_layers``, ``bidirectional``, ``bias`` and
    ``proj_size`` are read from its keys and shapes; what a state dict does not hold comes from
    ``options`` (``batch_first``, ``dropout``; an RNN's ``nonlinearity`` is required, the
    weights cannot tell tanh from relu). An option the state dict fixes may be given if it
    agrees (``num_layers=2`` for two layers' keys), else it raises naming both values. Missing
    or unexpected keys raise, naming them, before the layer is built (the layout is what any
    key shows: without ``weight_ih_l1`` among a second layer's keys, ``weight_ih_l1`` is
    missing), misshaped entries before any is converted.

    A module's effective weights are read by name (``module.weight_ih_l0``, ...), so extra
    state of a subclass is ignored and parametrized weights (``parametrizations.weight_norm``)
    come as computed, in eval mode (``spectral_norm`` without a power iteration: the module is
    left as it was); the hook-based ``weight_norm``, ``spectral_norm`` and ``prune`` of
    ``torch.nn.utils`` are computed as the module's next forward would (the attribute they set
    is stale after an optimizer step). Weights must fit float32 (a float64 1e300 raises;
    float16/bfloat16 are widened exactly).
    """
    if isinstance(module, Mapping):
        sd = _without_wrapper_prefixes(module)
        layer = _layer_from_state_dict(sd, seed, options)
        layer.load_state_dict({k: _tensor(f"load_state_dict: {k}", v) for k, v in sd.items()})
        return layer
    if options:
        raise TypeError(
            f"{sorted(options)}: options for a state dict only; a module brings its own"
        )
    module = _unwrap(module)
    name = _torch_kind(module)

    def setting(attr):
        value = getattr(module, attr, _MISSING)
        if value is _MISSING:
            raise ValueError(
                f"module: expected the setting {attr!r} of a torch {name}, found none on "
                f"{type(module).__name__} (from_torch(module.state_dict(), ...) reads the weights)"
            )
        return value

    if name in _LAYERS:
        kw = dict(
            num_layers=setting("num_layers"),
            bias=setting("bias"),
            batch_first=setting("batch_first"),
            dropout=float(setting("dropout")),
            bidirectional=setting("bidirectional"),
            seed=seed,
        )
        if name == "LSTM":
            kw["proj_size"] = setting("proj_size")
        elif name == "RNN":
            kw["nonlinearity"] = setting("nonlinearity")
        layer = _LAYERS[name](setting("input_size"), setting("hidden_size"), **kw)
    elif name in _CELLS:
        kw = dict(bias=setting("bias"), seed=seed)
        if name == "RNNCell":
            kw["nonlinearity"] = setting("nonlinearity")
        layer = _CELLS[name](setting("input_size"), setting("hidden_size"), **kw)
    else:
        raise TypeError(f"module: expected a torch LSTM, GRU, RNN or cell, got {name}")
    hooked = _hook_weights(module)
    # parametrizations (torch.nn.utils.parametrize) read in eval mode, as the hook-based ones:
    # in training mode reading spectral_norm's weight ran a power iteration, changing the
    # module's _u/_v buffers (reading the weights changed the module read)
    plist = getattr(module, "parametrizations", None)
    frozen = [m for m in plist.modules() if m.training] if hasattr(plist, "modules") else []
    sd = {}
    try:
        for m in frozen:
            m.training = False
        for key in layer.state_dict():
            value = hooked[key] if key in hooked else getattr(module, key, None)
            if value is None:
                raise ValueError(f"module: expected a weight {key} (as {name}'s), found none")
            sd[key] = _tensor(f"load_state_dict: {key}", getattr(value, "data", value))
    finally:
        for m in frozen:
            m.training = True
    layer.load_state_dict(sd)
    layer.train(module.training)
    return layer


def to_torch(layer: Any):
    """The torch module equivalent to an lstm_fast layer or cell, with its weights copied: float32
    on the CPU (whatever torch's default dtype and device), in the layer's training mode."""
    try:
        import torch
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise ModuleNotFoundError(
            "to_torch needs PyTorch, which is not installed: "
            "pip install 'lstm_fast[torch]' (or torch itself)",
            name="torch",
        ) from e

    kind = _kind(layer, "to_torch")
    # float32 on the CPU, as the layer, whatever torch.set_default_dtype / _device say
    # (float64 would not take float32 input; on "meta" the weights would be dropped)
    where = dict(dtype=torch.float32, device="cpu")
    if isinstance(layer, (_rnn.LSTMCell, _rnn.GRUCell, _rnn.RNNCell)):
        kw = dict(bias=layer.bias, **where)
        if kind == "RNN":
            kw["nonlinearity"] = layer.nonlinearity
        mod = getattr(torch.nn, kind + "Cell")(layer.input_size, layer.hidden_size, **kw)
    else:
        kw = dict(
            num_layers=layer.num_layers,
            bias=layer.bias,
            batch_first=layer.batch_first,
            dropout=layer.dropout,
            bidirectional=layer.bidirectional,
            **where,
        )
        if kind == "LSTM":
            kw["proj_size"] = layer.proj_size
        if kind == "RNN":
            kw["nonlinearity"] = layer.nonlinearity
        mod = getattr(torch.nn, kind)(layer.input_size, layer.hidden_size, **kw)
    mod.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in layer.state_dict().items()})
    mod.train(layer.training)
    return mod


# ---- gate reordering -----------------------------------------------------------------------------

# Our (PyTorch's) gate blocks listed in the other system's order.
_KERAS_ORDER = {"LSTM": [0, 1, 2, 3], "GRU": [1, 0, 2], "RNN": [0]}  # i,f,c,o / z,r,h
_ONNX_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}  # i,o,f,c / z,r,h


def _reorder(a: np.ndarray, order: list, axis: int = 0) -> np.ndarray:
    blocks = np.split(a, len(order), axis=axis)
    return np.concatenate([blocks[q] for q in order], axis=axis)


def _unorder(a: np.ndarray, order: list, axis: int = 0) -> np.ndarray:
    inv = list(np.argsort(order))
    return _reorder(a, inv, axis)


def _suffix(k: int, d: int) -> str:
    return f"_l{k}" + ("_reverse" if d else "")


def _is_cell(layer) -> bool:
    return isinstance(layer, (_rnn.LSTMCell, _rnn.GRUCell, _rnn.RNNCell))


def _check_index(layer, k: Any, d: Any) -> tuple:
    """Layer ``k`` and direction ``d`` as ints, checked against the layer (a cell has one)."""
    L = 1 if _is_cell(layer) else layer.num_layers
    D = 1 if _is_cell(layer) else layer.num_directions
    for name, v, n in (("k", k, L), ("direction", d, D)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n:
            raise ValueError(f"{name}: expected an int in [0, {n}) for this layer, got {v!r}")
    return int(k), int(d)


def _pname(layer, name: str, k: int, d: int) -> str:
    return name if _is_cell(layer) else name + _suffix(k, d)


def _get(layer, name, k, d):
    p = layer._parameters.get(_pname(layer, name, k, d))
    return None if p is None else p.data


def _no_projection(layer, why: str) -> None:
    """Refuse an LSTM with a projection (Keras's and ONNX's LSTM have none), ``why`` first."""
    P = getattr(layer, "proj_size", 0)
    if P:
        raise ValueError(f"{why}: proj_size: expected 0, got {P}")


def _expect(name: str, a: np.ndarray, shape: tuple, legend: str) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {legend} = {tuple(shape)}, got {a.shape}")


def _load(layer, staged: dict, what: str) -> None:
    """Write ``{parameter name: array}`` (every array already checked): all or nothing."""
    check_writeable(what, {name: layer._parameters[name] for name in staged})
    for name, value in staged.items():
        p = layer._parameters[name]
        p.data[...] = value
        p._version = getattr(p, "_version", 0) + 1  # a saved forward's backward refuses p now
    layer._on_load()


# ---- Keras ---------------------------------------------------------------------------------------


def to_keras(layer, k: int = 0, direction: int = 0) -> list:
    """Keras weights ``[kernel, recurrent_kernel, bias]`` of layer ``k``, one direction (Keras
    ``LSTM``, ``GRU(reset_after=True)``, ``SimpleRNN``, with ``activation="relu"`` for a ReLU
    RNN; ``layer.set_weights(...)`` takes them; a ``Bidirectional`` layer's are direction 0's
    then direction 1's).
    Without bias (``bias=False``): ``[kernel, recurrent_kernel]`` (Keras ``use_bias=False``)."""
    kind = _kind(layer, "to_keras")
    order = _KERAS_ORDER[kind]
    _no_projection(layer, "to_keras: Keras has no LSTM projection")
    k, direction = _check_index(layer, k, direction)
    w_ih, w_hh = _get(layer, "weight_ih", k, direction), _get(layer, "weight_hh", k, direction)
    out = [_reorder(w_ih, order).T.copy(), _reorder(w_hh, order).T.copy()]
    b_ih, b_hh = _get(layer, "bias_ih", k, direction), _get(layer, "bias_hh", k, direction)
    if b_ih is not None:
        if kind == "GRU":
            out.append(np.stack([_reorder(b_ih, order), _reorder(b_hh, order)]))
        else:
            # where b_hh is 0 (as from_keras leaves it) b_ih itself: bitwise, -0.0 included
            out.append(_reorder(np.where(b_hh == 0, b_ih, b_ih + b_hh), order))
    return out


def from_keras(layer, weights: list, k: int = 0, direction: int = 0) -> None:
    """Load Keras weights ``[kernel, recurrent_kernel(, bias)]`` into layer ``k``, one direction.
    An LSTM/RNN bias goes to ``bias_ih`` (``bias_hh`` = 0); a GRU bias must be (2, 3H).
    Without a bias (Keras ``use_bias=False``) the layer's biases are set to zero; a bias for a
    layer made with ``bias=False`` raises. Every array is checked before any parameter changes.

    A GRU's weights must come from ``reset_after=True`` (Keras 2.3+'s default; PyTorch's GRU):
    a ``reset_after=False`` bias (3H,) raises, but without a bias such a GRU's weights have the
    same shapes, so check the Keras layer's config. A ``go_backwards=True`` layer's weights
    (a ``Bidirectional`` layer's backward one: ``direction=1``) compute the forward layer on
    the reversed input; ``return_state`` does not change the weights.
    """
    kind = _kind(layer, "from_keras")
    order = _KERAS_ORDER[kind]
    _no_projection(layer, "from_keras: Keras has no LSTM projection")
    k, direction = _check_index(layer, k, direction)
    if not isinstance(weights, (list, tuple)) or len(weights) not in (2, 3):
        n = len(weights) if isinstance(weights, (list, tuple)) else None
        got = f"{n} arrays" if n is not None else type(weights).__name__
        if n in (4, 6):  # a Keras Bidirectional layer's get_weights(): forward, then backward
            got += (
                f" (a Bidirectional layer's? load weights[:{n // 2}] with direction=0 and "
                f"weights[{n // 2}:] with direction=1)"
            )
        raise ValueError(
            f"weights: expected [kernel, recurrent_kernel] or [kernel, recurrent_kernel, bias], "
            f"got {got}"
        )
    w_ih, w_hh = _get(layer, "weight_ih", k, direction), _get(layer, "weight_hh", k, direction)
    (G, I), Hh = w_ih.shape, w_hh.shape[1]
    kernel = _np("kernel", weights[0], (I, G), "(I, G)")
    recurrent = _np("recurrent_kernel", weights[1], (Hh, G), "(H, G)")
    staged = {
        _pname(layer, "weight_ih", k, direction): _unorder(kernel.T, order),
        _pname(layer, "weight_hh", k, direction): _unorder(recurrent.T, order),
    }
    names = [_pname(layer, n, k, direction) for n in ("bias_ih", "bias_hh")]
    if len(weights) > 2:
        if not layer.bias:
            raise ValueError("bias: given, but the layer was made with bias=False")
        if kind == "GRU":
            if _shape(weights[2]) == (G,):
                raise ValueError(
                    f"bias: expected shape (2, 3H) = {(2, G)} (Keras GRU reset_after=True), got "
                    f"{(G,)}: a GRU(reset_after=False)'s, which applies the reset gate before "
                    "the recurrent product: PyTorch's GRU (this layer) cannot compute it"
                )
            bias = _np("bias", weights[2], (2, G), "(2, 3H) (GRU reset_after=True)")
            staged[names[0]] = _unorder(bias[0], order)
            staged[names[1]] = _unorder(bias[1], order)
        else:
            bias = _np("bias", weights[2], (G,), "(G,)")
            staged[names[0]] = _unorder(bias, order)
            staged[names[1]] = np.zeros_like(bias)
    elif layer.bias:  # Keras use_bias=False: no bias at all
        staged[names[0]] = staged[names[1]] = np.zeros(G, np.float32)
    _load(layer, staged, "from_keras")


# ---- ONNX ----------------------------------------------------------------------------------------


_ONNX_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
_ONNX_ATTRIBUTES = {"activation_alpha", "activation_beta", "activations", "clip", "direction"}
_ONNX_ATTRIBUTES |= {"hidden_size", "layout"}
_ONNX_OWN = {"LSTM": {"input_forget"}, "GRU": {"linear_before_reset"}, "RNN": set()}


def _onnx_activations(layer, kind: str) -> list:
    if kind == "RNN":
        return ["Relu" if layer.nonlinearity == "relu" else "Tanh"]
    return _ONNX_ACTIVATIONS[kind]


def onnx_attributes(layer) -> dict:
    """The attributes of the ONNX ``LSTM``/``GRU``/``RNN`` node that computes this layer (one
    layer ``k`` of it, with :func:`to_onnx`'s initializers): ``hidden_size``, ``direction``,
    GRU ``linear_before_reset=1``, a ReLU RNN's ``activations``. The node is time-major (ONNX
    ``layout=0``, the only one ONNX Runtime runs): X is (T, B, I) even for a batch_first layer.

    Example::

        >>> import onnx, lstm_fast
        >>> from lstm_fast import interop
        >>> gru = lstm_fast.GRU(10, 20, seed=0)
        >>> interop.onnx_attributes(gru)
        {'hidden_size': 20, 'direction': 'forward', 'linear_before_reset': 1}
        >>> node = onnx.helper.make_node("GRU", ["x", "W", "R", "B"], ["y"],
        ...                              **interop.onnx_attributes(gru))
    """
    kind = _kind(layer, "onnx_attributes")
    _no_projection(layer, "onnx_attributes: the ONNX LSTM operator has no projection")
    D = 1 if _is_cell(layer) else layer.num_directions
    out = {
        "hidden_size": int(layer.hidden_size),
        "direction": "bidirectional" if D == 2 else "forward",
    }
    if kind == "GRU":
        out["linear_before_reset"] = 1
    if kind == "RNN" and layer.nonlinearity == "relu":
        out["activations"] = ["Relu"] * D
    return out


def _check_onnx_node(layer, kind: str, node: Any) -> None:
    """Refuse an ONNX node (``NodeProto`` or ``{attribute: value}``) whose attributes the layer
    cannot compute, naming the attribute, the expected and the given value."""
    if isinstance(node, Mapping):
        attrs = dict(node)
    elif hasattr(node, "attribute") and hasattr(node, "op_type"):  # onnx.NodeProto
        from onnx import helper

        if node.op_type != kind or node.domain not in ("", "ai.onnx"):
            got = (
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            )
            raise ValueError(f"node: op_type: expected {kind!r}, got {got!r}")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if kind == "LSTM" and len(node.input) > 7 and node.input[7]:
            raise ValueError(
                f"node: P (input 7, peepholes): expected none (the layer has no peepholes), "
                f"got {node.input[7]!r}"
            )
    else:
        raise TypeError(
            f"node: expected an onnx NodeProto or a mapping of its attributes, got "
            f"{type(node).__name__}"
        )

    def text(v):
        return v.decode() if isinstance(v, bytes) else v

    def integer(name, default, expected):
        v = attrs.get(name, default)
        if isinstance(v, (bool, np.bool_)):
            v = int(v)
        if not isinstance(v, (int, np.integer)):
            raise ValueError(f"node: {name}: expected {expected}, got {v!r}")
        return int(v)

    unknown = sorted(set(attrs) - _ONNX_ATTRIBUTES - _ONNX_OWN[kind])
    if unknown:
        raise ValueError(f"node: unknown ONNX {kind} attribute {unknown[0]!r}")
    H, D = int(layer.hidden_size), 1 if _is_cell(layer) else layer.num_directions
    want_h = f"{H} (the layer's)"
    if "hidden_size" in attrs and integer("hidden_size", H, want_h) != H:
        raise ValueError(f"node: hidden_size: expected {want_h}, got {attrs['hidden_size']!r}")
    want = "bidirectional" if D == 2 else "forward"
    got = text(attrs.get("direction", "forward"))
    if got != want:
        raise ValueError(f"node: direction: expected {want!r} (the layer's), got {got!r}")
    if "clip" in attrs:
        raise ValueError(
            f"node: clip: expected none (the layer does not clip), got {attrs['clip']!r}"
        )
    if kind == "LSTM":
        input_forget = integer("input_forget", 0, "0 (separate input and forget gates)")
        if input_forget != 0:
            raise ValueError(
                f"node: input_forget: expected 0 (separate input and forget gates), got "
                f"{input_forget}"
            )
    if kind == "GRU":
        lbr = integer("linear_before_reset", 0, "1 (PyTorch's GRU)")
        if lbr != 1:
            got = "0 (the ONNX default)" if attrs.get("linear_before_reset") is None else lbr
            raise ValueError(f"node: linear_before_reset: expected 1 (PyTorch's GRU), got {got}")
    if not _is_cell(layer):
        bf = bool(getattr(layer, "batch_first", False))
        layout = integer("layout", 0, f"0 (the layer's batch_first={bf})")
        if layout not in (0, int(bf)):  # time-major always works; batch-major if batch_first
            raise ValueError(
                f"node: layout: expected 0 (the layer's batch_first={bf}), got {layout}"
            )
    one = _onnx_activations(layer, kind)
    if "activations" not in attrs:
        # ONNX's defaults are Sigmoid/Tanh(/Tanh) and, for the RNN operator, Tanh: a ReLU
        # layer cannot compute a node that leaves them out
        if kind == "RNN" and layer.nonlinearity == "relu":
            raise ValueError(
                f"node: activations: expected {one * D}, got none (the ONNX default: Tanh)"
            )
        return
    given = attrs["activations"]
    if isinstance(given, (str, bytes)) or not isinstance(given, (list, tuple)):
        raise ValueError(
            f"node: activations: expected a list of names such as {one * D}, got {given!r}"
        )
    given = [text(v) for v in given]
    want = one * D
    if given == want:
        return
    # ONNX's names are case-sensitive ("Sigmoid", "Tanh", "Relu": ONNX Runtime's RNN refuses
    # "relu"), and a bidirectional node lists the activations of both directions, forward's
    # then reverse's (ONNX Runtime refuses one list for both)
    why = ""
    if len(given) == len(want) and [str(v).lower() for v in given] == [v.lower() for v in want]:
        why = " (ONNX's activation names are case-sensitive)"
    elif D == 2 and given == one:
        why = (
            f" (a bidirectional node lists {len(want)} activations: the forward direction's, "
            "then the reverse one's)"
        )
    raise ValueError(f"node: activations: expected {want}, got {given}{why}")


def to_onnx(layer, k: int = 0) -> dict:
    """ONNX initializers ``{"W", "R", "B"}`` of layer ``k`` (both directions when
    bidirectional), for the ONNX ``LSTM``/``GRU``/``RNN`` operator (GRU: linear_before_reset=1).
    Without bias (``bias=False``) there is no ``"B"`` (ONNX's default: zero)."""
    kind = _kind(layer, "to_onnx")
    _no_projection(layer, "to_onnx: the ONNX LSTM operator has no projection")
    k, _ = _check_index(layer, k, 0)
    order = _ONNX_ORDER[kind]
    D = 1 if _is_cell(layer) else layer.num_directions
    W = np.stack([_reorder(_get(layer, "weight_ih", k, d), order) for d in range(D)])
    R = np.stack([_reorder(_get(layer, "weight_hh", k, d), order) for d in range(D)])
    out = {"W": W, "R": R}
    if layer.bias:
        out["B"] = np.stack(
            [
                np.concatenate(
                    [_reorder(_get(layer, n, k, d), order) for n in ("bias_ih", "bias_hh")]
                )
                for d in range(D)
            ]
        )
    return out


def from_onnx(layer, W: Any, R: Any, B: Any = None, k: int = 0, *, node: Any = None) -> None:
    """Load ONNX initializers W (D, G, I), R (D, G, H), B (D, 2G) into layer ``k``: arrays,
    tensors or the model's ``onnx.TensorProto`` initializers themselves.

    ``B`` omitted: zero biases (the ONNX operator's default); a ``B`` for a layer made with
    ``bias=False`` raises. Every array is checked before any parameter changes.

    ``node`` (the ``onnx.NodeProto`` the initializers feed, or a mapping of its attributes) is
    checked first: attributes the layer cannot compute raise, naming the attribute, the
    expected and the given value (``clip``, ``input_forget=1``, other ``activations``, none
    for a ReLU RNN (ONNX's default is Tanh), GRU ``linear_before_reset`` other than 1, LSTM
    peepholes ``P``, a ``hidden_size``, ``direction`` or ``layout`` other than the layer's).
    ``activations`` are checked as the ONNX operators define them: names are case-sensitive
    (``"Sigmoid"``, ``"Tanh"``, ``"Relu"``; ``"relu"`` raises), and a bidirectional node lists
    both directions' (the forward's, then the reverse one's: ``["Relu", "Relu"]`` for a
    bidirectional ReLU RNN, 6 names for an LSTM). Without ``node`` nothing is checked beyond the
    shapes: the initializers alone cannot tell."""
    kind = _kind(layer, "from_onnx")
    if node is not None:
        _check_onnx_node(layer, kind, node)
    order = _ONNX_ORDER[kind]
    _no_projection(layer, "from_onnx: the ONNX LSTM operator has no projection")
    k, _ = _check_index(layer, k, 0)
    D = 1 if _is_cell(layer) else layer.num_directions
    (G, I), Hh = _get(layer, "weight_ih", k, 0).shape, _get(layer, "weight_hh", k, 0).shape[1]
    W, R = _np("W", W, (D, G, I), "(D, G, I)"), _np("R", R, (D, G, Hh), "(D, G, H)")
    if B is not None:
        if not layer.bias:
            raise ValueError("B: given, but the layer was made with bias=False")
        B = _np("B", B, (D, 2 * G), "(D, 2G)")
    staged = {}
    for d in range(D):
        staged[_pname(layer, "weight_ih", k, d)] = _unorder(W[d], order)
        staged[_pname(layer, "weight_hh", k, d)] = _unorder(R[d], order)
        if layer.bias:
            b = np.zeros(2 * G, np.float32) if B is None else B[d]
            staged[_pname(layer, "bias_ih", k, d)] = _unorder(b[:G], order)
            staged[_pname(layer, "bias_hh", k, d)] = _unorder(b[G:], order)
    _load(layer, staged, "from_onnx")
