"""Parameters and modules: the small base every layer of lstm_fast builds on.

A :class:`Parameter` holds a float32 NumPy array in ``.data`` and its gradient in ``.grad``
(same shape, accumulated by ``backward`` calls, zeroed by :meth:`Module.zero_grad`).
A :class:`Module` registers the parameters and sub-modules assigned to it as attributes, so that
``named_parameters()`` and ``state_dict()`` produce PyTorch's dotted names (``rnn.weight_ih_l0``)
and a PyTorch state dict loads as is.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Optional

import numpy as np

# Held while a backward replaces a None .grad with zeros (rnn.py / nn.py _ready_grads): two
# threads must not each make their own array for one parameter.
FRESH_GRAD_LOCK = threading.Lock()

__all__ = ["Parameter", "Module"]  # (saved_versions, check_versions: for the layers)


def _from_torch(t: Any, what: str = "tensor") -> np.ndarray:
    """A torch tensor as a NumPy array, without importing torch. float16 / bfloat16 tensors
    come as float32 (NumPy has no bfloat16; both widen exactly); float64 stays float64, so
    that a checked cast (:func:`_as_dtype`) refuses values beyond float32's range instead of
    turning them into inf. A tensor without data to read (meta device, sparse, quantized)
    raises ValueError naming ``what``; one with a negative or conjugate bit (``x.conj().imag``
    of a complex x is a float tensor with the negative bit) is read as its values, where
    ``.numpy()`` raised torch's "Can't call numpy() on Tensor that has negative bit set"."""
    _check_dense_tensor(what, t)
    t = t.detach().cpu()
    if t.is_floating_point() and str(t.dtype) not in ("torch.float32", "torch.float64"):
        t = t.float()
    t = t.resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except RuntimeError as e:  # a tensor subclass without data of its own (a wrapper)
        raise TypeError(
            f"{what}: expected a plain torch.Tensor, got a {type(t).__name__} whose values "
            f"cannot be read ({e})"
        ) from None


def _check_dense_tensor(what: str, t: Any) -> None:
    """Raise ValueError naming ``what`` for a torch tensor :func:`_from_torch` cannot read: on
    the meta device (no data), sparse or quantized (``.numpy()`` would fail naming nothing;
    torch's own load_state_dict refuses these too)."""
    if t.device.type == "meta":
        raise ValueError(f"{what}: expected a tensor with data, got one on the meta device")
    if type(t).__name__ == "MaskedTensor":  # torch.masked's: its data holds the masked values
        raise ValueError(
            f"{what}: expected a tensor without a mask, got a torch.masked.MaskedTensor "
            "(lstm_fast reads values, not masks: fill the masked values explicitly, e.g. "
            "t.to_tensor(0.0))"
        )
    if str(getattr(t, "layout", "torch.strided")) != "torch.strided" or t.is_quantized:
        got, fix = (
            ("a quantized tensor", ".dequantize()")
            if t.is_quantized
            else (f"layout {t.layout}", "torch.nested.to_padded_tensor(t, 0.0)")
            if getattr(t, "is_nested", False)
            else (f"layout {t.layout}", ".to_dense()")
        )
        raise ValueError(f"{what}: expected a dense tensor, got {got} ({fix} it first)")


def _check_unmasked(what: str, value: Any) -> None:
    """Raise ValueError naming ``what`` for a ``numpy.ma.MaskedArray`` with masked elements:
    ``np.asarray`` (and every kernel) reads the values under the mask as data, so they went
    into the results silently. A masked array without masked elements is its data."""
    if isinstance(value, np.ma.MaskedArray):
        n = int(np.ma.count_masked(value))
        if n:
            raise ValueError(
                f"{what}: expected an array without masked values, got a numpy.ma.MaskedArray "
                f"with {n} masked (lstm_fast reads values, not masks: fill them explicitly, "
                "e.g. a.filled(0.0))"
            )


def _as_dtype(what: str, value: Any, dtype: Any = np.float32, shape: Any = None) -> np.ndarray:
    """``value`` (NumPy, torch tensor, nested lists) as a ``dtype`` array, checked first: a real
    numeric array (of ``shape`` when given) whose finite values stay finite (1e300 does not fit
    float32). Errors start with ``what``: ``"load_state_dict: weight_ih_l0: expected ..."``."""
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed
        _check_dense_tensor(what, value)
        # the shape first: widening a half-precision tensor copies it (a large wrong-shaped
        # one, e.g. an expanded view, failed in torch's allocator naming nothing)
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise ValueError(f"{what}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
        value = _from_torch(value, what)
    _check_unmasked(what, value)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:  # ragged nesting and the like
        raise TypeError(f"{what}: expected a real numeric array ({e})") from None
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{what}: expected shape {tuple(shape)}, got {arr.shape}")
    # (timedelta64 is a signedinteger to NumPy: durations loaded as their counts of units)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr) or arr.dtype.kind == "m":
        raise TypeError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(dtype, copy=False)
    if cast is not arr and cast.dtype.kind == "f":
        # finite values that do not fit (1e300 -> inf in float32) are refused
        with np.errstate(invalid="ignore"):
            overflow = ~np.isfinite(cast) & np.isfinite(arr)
        if overflow.any():
            bad = arr[overflow].flat[0]
            raise ValueError(
                f"{what}: expected values within {np.dtype(dtype).name}'s range, got {bad!r}"
            )
    return cast


class IncompatibleKeys(NamedTuple):
    """What :meth:`Module.load_state_dict` did not match (PyTorch's field names)."""

    missing_keys: list
    unexpected_keys: list


class Parameter:
    """A trainable array: ``data`` and its gradient ``grad`` (PyTorch's ``nn.Parameter``, on
    NumPy arrays).

    Layers accumulate (``+=``) into ``grad`` in their ``backward``; optimizers update ``data`` in
    place from it. ``np.asarray(p)`` is ``p.data`` (no copy); ``shape``, ``dtype``, ``ndim``,
    ``size`` and ``len()`` are the data's.

    Args:
        data: the initial values, real numbers (NumPy, a torch tensor, nested lists; always
            copied), checked as :meth:`Module.load_state_dict` checks them for a floating
            ``dtype``: ``TypeError`` naming ``data`` for complex, str or object values,
            ``ValueError`` for finite values beyond the dtype's range.
        dtype: the data's dtype (default float32, what every kernel takes).

    Attributes:
        data: C-contiguous array of ``dtype``.  grad: zeros of the same shape and dtype at
            first (None is accepted later, as PyTorch's ``set_to_none``: the next backward or
            ``zero_grad`` starts again from zeros).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> p = Parameter(np.zeros((2, 3)))
        >>> p
        Parameter(shape=(2, 3), dtype=float32)
        >>> p.data.shape, p.grad.dtype
        ((2, 3), dtype('float32'))
        >>> np.asarray(p) is p.data
        True
    """

    __slots__ = ("data", "grad", "_version")

    def __init__(self, data: Any, dtype: Any = np.float32):
        _check_unmasked("data", data)  # (np.array below drops a mask: any dtype)
        if dtype is not None and np.dtype(dtype).kind == "f":
            # checked as load_state_dict checks values: None became a NaN, a complex value lost
            # its imaginary part (a warning only), 1e300 became inf, and a torch tensor that
            # requires grad raised torch's "Can't call numpy()"
            data = _as_dtype("data", data, dtype)
        # (np.ascontiguousarray made a 0-d value 1-d: Parameter(3.0) had shape (1,), so a torch
        # state dict holding a 0-d parameter no longer loaded into it)
        self.data = np.array(data, dtype=dtype, copy=True, order="C")
        self.grad = np.zeros_like(self.data)
        # Counts the in-place updates by lstm_fast.optim (PyTorch's version counter): a training
        # forward remembers it and its backward refuses weights updated since (the cache reads
        # them in place). Writes through ``.data`` are not counted, as in PyTorch.
        self._version = 0

    @property
    def shape(self) -> tuple:
        """``data.shape``."""
        return self.data.shape

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero ``grad`` in place (a fresh zero array if it is None or no longer fits ``data``).

        Args:
            set_to_none: set ``grad`` to None instead, as PyTorch's ``set_to_none=True``: the
                next backward makes a fresh gradient (default False).
        """
        if not isinstance(set_to_none, (bool, np.bool_)):
            raise TypeError(f"set_to_none: expected a bool, got {type(set_to_none).__name__}")
        if set_to_none:
            self.grad = None
            return
        g = self.grad
        if (
            isinstance(g, np.ndarray)
            and g.shape == self.data.shape
            and g.dtype == self.data.dtype
            and g.flags.c_contiguous
            and g.flags.writeable
        ):
            g[...] = 0
        else:  # None (PyTorch's habit), a stale shape, dtype or layout: a fresh gradient
            self.grad = np.zeros_like(self.data)

    @property
    def dtype(self) -> np.dtype:
        """``data.dtype``."""
        return self.data.dtype

    @property
    def ndim(self) -> int:
        """``data.ndim``."""
        return self.data.ndim

    @property
    def size(self) -> int:
        """``data.size``."""
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        """``np.asarray(p)`` is ``p.data`` itself (no copy), as for a NumPy array; another
        dtype or ``copy=True`` gives a copy."""
        a = self.data
        if dtype is not None and np.dtype(dtype) != a.dtype:
            if copy is False:
                raise ValueError(
                    f"Parameter: a {np.dtype(dtype)} array needs a copy of the {a.dtype} data, "
                    "but copy=False was given"
                )
            return a.astype(dtype)
        return a.copy() if copy else a

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def make_rng(seed: Any, what: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)`` for a module's ``seed`` argument: None (fresh entropy), an
    int >= 0, or NumPy's own Generator / BitGenerator / SeedSequence; anything else raises
    ``TypeError`` (``ValueError`` for a negative int) naming the argument as ``what`` (default
    ``"seed"``; NumPy's own message names none)."""
    if seed is None or isinstance(
        seed, (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)
    ):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{what}: expected None or an int >= 0, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{what}: expected None or an int >= 0, got {seed}")
    return np.random.default_rng(int(seed))


def check_writeable(what: str, params: dict) -> None:
    """Before an all-or-nothing write into ``params`` (``{name: Parameter}``): a parameter whose
    ``data`` is read-only (or not a NumPy array) raises ValueError naming it after ``what`` (the
    caller, ``"load_state_dict"``), and nothing is written."""
    for name, p in params.items():
        d = p.data
        if not isinstance(d, np.ndarray) or not d.flags.writeable:
            got = "read-only" if isinstance(d, np.ndarray) else type(d).__name__
            raise ValueError(
                f"{what}: {name}: expected a writeable array as the parameter's data, got {got} "
                "(nothing was loaded)"
            )


def saved_versions(module: Any) -> tuple:
    """``(name, parameter, version)`` of every parameter a module holds directly: what a
    training forward records for :func:`check_versions`."""
    return tuple(
        (n, p, getattr(p, "_version", 0)) for n, p in module._parameters.items() if p is not None
    )


def check_versions(what: str, saved: tuple) -> None:
    """Raise ``RuntimeError`` (its message starting with ``what``, the caller) if a parameter
    of ``saved`` (what :func:`saved_versions` recorded) was updated in place since: an
    optimizer ``step()`` between a forward and its backward, whose saved forward would mix the
    old activations with the new weights."""
    for name, p, v in saved:
        now = getattr(p, "_version", 0)
        if now != v:
            raise RuntimeError(
                f"{what}: {name} was updated in place (an optimizer step, load_state_dict) "
                f"after the forward this backward differentiates (version {now}, the forward "
                f"saw {v}); run the forward again"
            )


class Module:
    """Base class of every layer and model: attribute assignment registers parameters and
    sub-modules, as in PyTorch's ``nn.Module``.

    A :class:`Parameter` or ``Module`` assigned as an attribute is registered under that name,
    so :meth:`named_parameters` and :meth:`state_dict` give PyTorch's dotted names
    (``rnn.weight_ih_l0``) and a PyTorch state dict of the same model loads with
    :meth:`load_state_dict`. Subclasses implement ``forward`` (run by calling the module) and,
    for training, ``backward(dy)``, which accumulates into the parameters' ``grad`` (there is no
    autograd). Replacing a registered parameter with anything but a Parameter raises
    ``TypeError``; replacing it with another Parameter drops what the module saved from the old
    one (as :meth:`load_state_dict` does: a ``backward`` then raises until the next forward).

    Attributes:
        training: True (the default) in training mode, False after :meth:`eval`.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Module, Parameter
        >>> from lstm_fast.nn import Linear
        >>> class Scale(Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = Parameter(np.full(2, 3.0))
        ...         self.head = Linear(2, 1, seed=0)
        ...     def forward(self, x):
        ...         return self.head(x * self.w.data)
        >>> m = Scale()
        >>> [(name, p.shape) for name, p in m.named_parameters()]
        [('w', (2,)), ('head.weight', (1, 2)), ('head.bias', (1,))]
        >>> m(np.ones((4, 2), np.float32)).shape, m.num_parameters()
        ((4, 1), 5)
        >>> m.eval().training, m.head.training
        (False, False)
    """

    training: bool
    # The attributes in which a subclass keeps what its last training forward saved for
    # ``backward``, each with its value when there is none: copies and pickles leave that out
    # (see __getstate__).
    _saved_forward: Mapping = {}

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("Module.__init__() must be called before assigning attributes")
        mods = self.__dict__["_modules"]
        # A registered parameter or submodule is replaced by its own kind only (PyTorch raises
        # too): a plain array assigned to weight_ih_l0 would silently unregister the weight.
        if name in params and not isinstance(value, Parameter):
            raise TypeError(
                f"cannot assign {type(value).__name__} as parameter {name!r} (a Parameter "
                "expected; to change the values, write into .data or use load_state_dict)"
            )
        if name in mods and not isinstance(value, Module):
            raise TypeError(
                f"cannot assign {type(value).__name__} as submodule {name!r} (a Module expected)"
            )
        # another Parameter in place of a registered one: new weights, as for load_state_dict
        replaced = name in params and params[name] is not value
        params.pop(name, None)
        mods.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            mods[name] = value
        object.__setattr__(self, name, value)
        if replaced:  # the saved forward read the old one: its backward must not run
            self._on_load()

    def __getstate__(self) -> dict:
        """What ``copy.deepcopy``, ``copy.copy`` and pickle take: the attributes, without the
        saved forward (the attributes of :attr:`_saved_forward` at their empty values), as
        torch's copies leave the autograd graph out. A copy's ``backward`` needs a forward of
        its own: a model copied after a training forward kept its head's saved input but not
        its recurrent layer's cache, so the copy's backward accumulated into the head's
        gradients and then raised."""
        state = dict(self.__dict__)
        for name, empty in self._saved_forward.items():
            if name in state:
                state[name] = empty
        return state

    def __copy__(self) -> Module:
        """``copy.copy(module)``: a module sharing this one's Parameters and sub-modules (their
        values and ``.grad``) with registries of its own. A parameter or sub-module assigned to
        one afterwards is the other's no more: the shared ``_parameters`` dict of a plain
        shallow copy put a Parameter assigned to the copy into the original's forward and
        ``state_dict`` too, while the original's attribute still gave the old one. What
        :meth:`__getstate__` leaves out (the saved forward, a layer's ``step`` buffers) is left
        out here too: the copy keeps a forward of its own."""
        cls = type(self)
        new = cls.__new__(cls)
        state = self.__getstate__()
        if isinstance(state, dict):  # (a subclass's own format goes to its __setstate__ as is)
            state = dict(state)
            for key in ("_parameters", "_modules"):
                if key in state:
                    state[key] = OrderedDict(state[key])
        setstate = getattr(new, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            new.__dict__.update(state)
        return new

    def __delattr__(self, name: str) -> None:
        removed = self._parameters.pop(name, None) is not None
        self._modules.pop(name, None)
        object.__delattr__(self, name)
        if removed:  # as new weights: caches and buffers made from the old set are dropped
            self._on_load()

    # -- traversal ------------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, module)`` of the direct sub-modules, in registration order."""
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        """The direct sub-modules, in registration order."""
        for _, m in self.named_children():
            yield m

    def named_modules(
        self, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """``(dotted name, module)`` of this module (name ``prefix``) and all below it. A module
        held in several places (a shared encoder) is yielded once, under its first name, unless
        ``remove_duplicate=False`` (as PyTorch's; it was yielded once per place, so
        ``modules()`` listed it twice)."""
        yield from self._named_modules(prefix, set() if remove_duplicate else None)

    def _named_modules(self, prefix: str, memo: Optional[set]) -> Iterator[tuple[str, Module]]:
        if memo is not None:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            yield from m._named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        """This module and every module below it, each once."""
        for _, m in self.named_modules():
            yield m

    def _named_parameters_all(self, prefix: str, recurse: bool):
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        if recurse:
            for mname, m in self._modules.items():
                yield from m._named_parameters_all(f"{prefix}.{mname}" if prefix else mname, True)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(name, Parameter)`` in registration order, PyTorch's dotted names, each
        prefixed with ``prefix`` and a dot (default ``""``: none); with ``recurse`` (the
        default) the sub-modules' too. A parameter shared by several modules (tied weights) is
        yielded once, under its first name, unless ``remove_duplicate=False`` (as PyTorch's):
        an optimizer given ``parameters()`` updates it once."""
        seen: set = set()
        for name, p in self._named_parameters_all(prefix, recurse):
            if remove_duplicate:
                if id(p) in seen:
                    continue
                seen.add(id(p))
            yield name, p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """The parameters (of the sub-modules too with ``recurse``), as :meth:`named_parameters`."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Copies of every parameter's data, keyed by dotted name (a shared parameter under
        each of its names, as PyTorch's)."""
        return OrderedDict(
            (n, p.data.copy()) for n, p in self.named_parameters(remove_duplicate=False)
        )

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Load the arrays of ``state_dict`` (NumPy, torch tensors, lists: anything
        ``np.asarray`` takes) into the parameters of the same dotted names.

        Every entry is checked (shape, finite conversion to float32) before any parameter is
        changed, so a failed load leaves the module as it was. With ``strict`` (the default)
        missing or unexpected keys raise ``RuntimeError`` listing them; without, the entries
        present are loaded and, as PyTorch's, the result names the rest:
        ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):  # a list of pairs, None, ...
            raise TypeError(
                f"load_state_dict: state_dict: expected a mapping of names to arrays, got "
                f"{type(state_dict).__name__}"
            )
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(
                f"load_state_dict: strict: expected a bool, got {type(strict).__name__}"
            )
        own = dict(self.named_parameters(remove_duplicate=False))
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"load_state_dict for {type(self).__name__}: missing keys {missing}, unexpected "
                f"keys {unexpected}"
            )
        staged = {}
        for name, p in own.items():
            if name not in state_dict:
                continue
            arr = _as_dtype(
                f"load_state_dict: {name}", state_dict[name], p.data.dtype, p.data.shape
            )
            # an entry that is (a view of) a parameter's own memory is copied first: written
            # in turn, {"a": b.data, "b": a.data} loaded a's new values into b as well
            if any(np.may_share_memory(arr, q.data) for q in own.values()):
                arr = arr.copy()
            staged[name] = arr
        check_writeable("load_state_dict", {n: own[n] for n in staged})
        for name, arr in staged.items():
            p = own[name]
            p.data[...] = arr
            p._version = getattr(p, "_version", 0) + 1  # (an in-place update, as an optimizer's)
        self._on_load()
        return IncompatibleKeys(missing, unexpected)

    def _on_load(self) -> None:
        """Hook for layers that cache anything derived from their weights."""
        for m in self._modules.values():
            m._on_load()

    # -- modes and gradients ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=False``: inference) on this module and all below; returns
        ``self``. Training-mode forwards keep what ``backward`` needs; dropout is active."""
        if not isinstance(mode, (bool, np.bool_)):  # "False" would be truthy (PyTorch raises too)
            raise TypeError(f"train: mode: expected a bool, got {type(mode).__name__}")
        object.__setattr__(self, "training", bool(mode))
        # each child's own train(), as PyTorch: setting every module's flag directly skipped a
        # child that overrides train() (one keeping a frozen part in eval mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self) -> Module:
        """``train(False)``: inference mode (no cache for ``backward``, no dropout); returns
        ``self``."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every parameter's ``grad`` in place (see :meth:`Parameter.zero_grad`).

        Args:
            set_to_none: set every ``grad`` to None instead, as PyTorch's ``set_to_none=True``:
                the next backward makes fresh gradients (default False).
        """
        if not isinstance(set_to_none, (bool, np.bool_)):
            raise TypeError(f"set_to_none: expected a bool, got {type(set_to_none).__name__}")
        for p in self.parameters():
            p.zero_grad(set_to_none=set_to_none)

    def num_parameters(self) -> int:
        """The number of trainable values (elements of all parameters)."""
        return int(sum(p.data.size for p in self.parameters()))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        """The computation, run by calling the module; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def extra_repr(self) -> str:
        """The constructor arguments shown inside the module's ``repr``."""
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return ("\n".join(lines) + "\n)") if len(lines) > 1 else lines[0] + ")"
