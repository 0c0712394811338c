"""Optimizers over :class:`~lstm_fast.module.Parameter` lists, with PyTorch's update rules.

``SGD`` (momentum, dampening, Nesterov, weight decay), ``Adam`` / ``AdamW`` (AMSGrad),
``Adagrad`` (min-char-rnn's), ``RMSprop`` (momentum, centered), each with PyTorch's
``maximize``; :func:`clip_grad_norm`; learning-rate
schedules (:class:`StepLR`, :class:`CosineLR` with linear warm-up) that are pure functions of the
step, so a resumed run gets the same rates.

As ``torch.optim``, the parameters may be split into parameter groups with hyper-parameters of
their own (``[{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]``,
:meth:`Optimizer.add_param_group`); the schedules scale each group's own base rate.

Each optimizer's :meth:`Optimizer.state_dict` is ``{"type", "hyper", "step", "arrays"}`` (with
several parameter groups ``"param_groups"`` and ``"group_steps"`` in place of ``"hyper"``):
JSON-able scalars and a flat ``{name: array}`` dict (``"3.exp_avg"`` = parameter 3's first
moment), so a checkpoint can store it without pickle and resume bitwise exactly. Updates are in
place, in float32, vectorised per parameter.

Example::

    >>> import numpy as np
    >>> from lstm_fast.module import Parameter
    >>> from lstm_fast.optim import Adam
    >>> p = Parameter(np.ones(3))
    >>> opt = Adam([p], lr=0.1)
    >>> p.grad[...] = 1.0
    >>> opt.step()
    >>> print(np.round(p.data, 4))
    [0.9 0.9 0.9]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import _core
from ._interrupt import deferred_interrupt
from .module import Parameter, _as_dtype, _check_unmasked, _from_torch
from .rnn import _check_int

__all__ = [
    "Optimizer",
    "GroupsDifferError",
    "SGD",
    "Adam",
    "AdamW",
    "Adagrad",
    "RMSprop",
    "clip_grad_norm",
    "StepLR",
    "CosineLR",
    "make_optimizer",
]

_f32 = np.float32
# Optimizer attributes that are not hyper-parameters (__setattr__ sets them the quick way)
_PLAIN_ATTRS = frozenset(["step_count", "state", "param_groups", "defaults", "_owner", "_current"])
# The largest step count a state may hold: beta ** step must stay a float (10**400 overflows it)
_MAX_STEP = 2**63 - 1


def _fast(p: Parameter) -> bool:
    """True when the C++ update kernels can run on ``p`` in place (float32, C-contiguous; the
    data aligned: a float32 view at an odd byte offset takes the NumPy path, as the kernels
    refuse misaligned data; a misaligned gradient goes to them as an aligned copy)."""
    d, g = p.data, p.grad
    return (
        d.dtype == _f32
        and g.dtype == _f32
        and d.flags.c_contiguous
        and g.flags.c_contiguous
        and d.flags.aligned
        and d.flags.writeable
        and d.shape == g.shape
    )


def _fast_state(a: Any) -> bool:
    """A state array the fused kernels can update in place (or None: not made yet)."""
    return a is None or (
        a.dtype == _f32 and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable
    )


def _listed(params: Any, expected: str) -> list:
    """``list(params)``, or TypeError "params: expected <expected>, got <type>" for something
    that is not iterable at all (None, a number, a Module)."""
    try:
        return list(params)
    except TypeError:
        raise TypeError(f"params: expected {expected}, got {type(params).__name__}") from None


def _params(params: Any) -> list:
    """``params`` (an iterable of :class:`Parameter`, or one) as a list, checked: an error
    naming ``params`` for anything else (None, an array, a module)."""
    if isinstance(params, Parameter):
        return [params]
    out = _listed(params, "an iterable of Parameter objects (e.g. model.parameters())")
    for p in out:
        if not isinstance(p, Parameter):
            raise TypeError(f"params: expected Parameter objects, got {type(p).__name__}")
    return out


def _split_groups(params: Any) -> list:
    """The groups of an optimizer's ``params``: its dicts, or one ``{"params": [...]}`` group
    for an iterable of parameters (checked as :func:`_params` does)."""
    if isinstance(params, Mapping):
        raise TypeError(
            "params: expected an iterable of Parameters or of dicts (parameter groups), got a "
            "dict: pass a list of groups, [{'params': ...}]"
        )
    items = _listed(
        params,
        "an iterable of Parameter objects (e.g. model.parameters()) or of parameter groups (dicts)",
    )
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    dicts = [isinstance(x, Mapping) for x in items]
    if all(dicts):
        return items
    if any(dicts):
        j, k = dicts.index(True), dicts.index(False)
        raise TypeError(
            f"params: expected Parameters or dicts (parameter groups), not both: got a dict at "
            f"position {j} and a {type(items[k]).__name__} at position {k}"
        )
    return [{"params": _params(items)}]


def _check_grads(
    what: str, params: list, kinds: str = "fiu", writeable: bool = False, start: int = 0
) -> None:
    """Raise naming the first parameter whose ``.grad`` is not an array of its shape (None, a
    scalar, a stale shape) with a real dtype (``kinds``: NumPy dtype kinds; complex, str and
    object gradients would raise in the middle of an update, or be truncated) -- and, with
    ``writeable``, one the caller may write into -- before anything is changed. Parameters
    are numbered from ``start``."""
    for i, p in enumerate(params, start):
        if not isinstance(p.data, np.ndarray):  # (``p.data = [...]``: AttributeError on .shape)
            raise TypeError(
                f"{what}: parameter {i}: data: expected a NumPy array, got {type(p.data).__name__}"
            )
        g = p.grad
        if not isinstance(g, np.ndarray) or g.shape != p.data.shape:
            got = g.shape if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(
                f"{what}: parameter {i}: grad: expected an array of shape {p.data.shape} (the "
                f"parameter's), got {got}"
            )
        if g.dtype.kind not in kinds:
            raise TypeError(
                f"{what}: parameter {i}: grad: expected a real floating-point array, got dtype "
                f"{g.dtype}"
            )
        _check_unmasked(f"{what}: parameter {i}: grad", g)
        if writeable and not g.flags.writeable:
            raise ValueError(
                f"{what}: parameter {i}: grad: expected a writeable array, got a read-only one"
            )


def _check_float_data(what: str, p: Parameter) -> None:
    """Raise TypeError (starting with ``what``) unless ``p.data`` is a real floating-point
    array: an optimizer cannot update integers in place (PyTorch refuses them too)."""
    if p.data.dtype.kind != "f":
        raise TypeError(
            f"{what}: data: expected a floating-point array to update, got dtype {p.data.dtype}"
        )


def _check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    """A real number >= minimum (NaN refused) as a float, else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float >= {minimum:g}, got {type(value).__name__}")
    if not value >= minimum:
        raise ValueError(f"{name}: expected a float >= {minimum:g}, got {value}")
    try:
        return float(value)
    except OverflowError:  # (lr=10**400 escaped as "int too large to convert to float")
        raise ValueError(
            f"{name}: expected a float >= {minimum:g}, got an int of {len(str(value))} digits "
            "(beyond a float's range)"
        ) from None


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars (also inside a tuple, as ``betas``) as Python ones: a
    state dict must stay JSON-able, and ``lr=np.float32(0.1)`` made ``json.dumps`` of it fail."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


class GroupsDifferError(ValueError, AttributeError):
    """Reading a hyper-parameter as an optimizer attribute (``opt.lr``) when its parameter
    groups hold different values: a ``ValueError`` naming them, and an ``AttributeError``, so
    ``hasattr(opt, "lr")`` is False and ``getattr(opt, "lr", None)`` gives None rather than
    raising.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import SGD, GroupsDifferError
        >>> a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
        >>> opt = SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
        >>> try:
        ...     opt.lr
        ... except GroupsDifferError as e:
        ...     print(isinstance(e, ValueError), isinstance(e, AttributeError))
        True True
        >>> getattr(opt, "lr", None), [g["lr"] for g in opt.param_groups]
        (None, [0.1, 0.5])
    """


class Optimizer:
    """Base class of the optimizers, as ``torch.optim.Optimizer``: parameter groups, each with
    its own hyper-parameters, and per-parameter state arrays.

    ``params`` is either an iterable of parameters -- one group, with the constructor's
    hyper-parameters -- or an iterable of dicts, one per parameter group: ``{"params": ...,
    "lr": 0.01, ...}`` with any of the optimizer's hyper-parameters; a group takes the
    constructor's value (:attr:`defaults`) for the ones it does not give. Each parameter is
    updated with its group's hyper-parameters, and :meth:`add_param_group` adds a group during
    training (a layer unfrozen for fine-tuning).

    The hyper-parameters are also attributes (``opt.lr``, what :class:`StepLR` and
    :class:`CosineLR` read): setting one (``opt.lr = 0.01``) sets it in every group; reading
    one gives the groups' common value, and raises ``ValueError`` pointing to
    :attr:`param_groups` when the groups hold different values. Subclasses implement the
    update; :meth:`step` checks every group and gradient, then updates every parameter in place
    and bumps its version (so a backward of a forward run before the step refuses to mix old
    activations with the new weights).

    Args:
        params: an iterable of :class:`~lstm_fast.module.Parameter` (``model.parameters()``),
            not empty; or an iterable of dicts defining parameter groups, each with a
            ``"params"`` entry (a parameter or an iterable of them, not empty) and
            hyper-parameters of the optimizer (or ``"initial_lr"``, the base rate a schedule
            scales); any other key raises. A parameter listed twice in a group is kept once
            (at its first place, with a ``UserWarning``): one state, one update per step; one
            in two groups raises.
        **defaults: the hyper-parameters, checked (a negative ``lr``, NaN, a non-bool switch
            raise at construction, naming the argument); a group's own values are checked the
            same way, the error naming the group (``param group 1: lr: ...``).

    Attributes:
        param_groups: one dict per group, ``{"params": [Parameter, ...], <every
            hyper-parameter>: value}`` (and ``"initial_lr"`` once a schedule is attached);
            change a value in place (``opt.param_groups[1]["lr"] = 0.1``) and the next step
            uses it.
        defaults: the constructor's hyper-parameters, the values a group without its own takes.
        params: the parameters of every group, in group order (the positions the state and
            :meth:`state_dict` use).
        state: one ``{slot: array}`` dict per parameter of :attr:`params` (``"exp_avg"``,
            ...), each array of the parameter's dtype (float32 unless it is another).
        step_count: the number of steps taken. Bias corrections (Adam) and ``lr_decay``
            (Adagrad) use the steps each group has taken, fewer for a group added later (as
            PyTorch's per-parameter step).
        initial_lr: the base rate the first schedule attached recorded (None before); each
            group's ``"initial_lr"``.

    Raises ``TypeError`` for ``params`` that are not Parameters or dicts (or a single
    Parameter), ``ValueError`` for an empty list or group, an unknown group key, a
    hyper-parameter out of range, or a parameter in two groups.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import SGD
        >>> p = Parameter(np.ones(2))
        >>> opt = SGD([p], lr=0.1, momentum=0.9)
        >>> p.grad[...] = 1.0
        >>> opt.step(zero_grad=True)
        >>> sd = opt.state_dict()
        >>> sd["type"], sd["step"], sorted(sd["arrays"]), p.grad.tolist()
        ('SGD', 1, ['0.momentum_buffer'], [0.0, 0.0])
        >>> opt.state_spec()
        {'0.momentum_buffer': ((2,), dtype('float32'))}
        >>> resumed = SGD([Parameter(np.ones(2))], lr=0.1, momentum=0.9)
        >>> resumed.load_state_dict(sd)
        >>> resumed.step_count, resumed.state[0]["momentum_buffer"].tolist()
        (1, [1.0, 1.0])

    Parameter groups: no weight decay on the bias, a larger rate for the head::

        >>> from lstm_fast.optim import AdamW
        >>> weight, bias, head = (Parameter(np.ones(2)) for _ in range(3))
        >>> opt = AdamW([{"params": [weight]}, {"params": bias, "weight_decay": 0.0}],
        ...             lr=0.1, weight_decay=0.5)
        >>> opt.add_param_group({"params": [head], "lr": 1.0})
        >>> [(g["lr"], g["weight_decay"]) for g in opt.param_groups]
        [(0.1, 0.5), (0.1, 0.0), (1.0, 0.5)]
        >>> opt.step()  # zero gradients: only the decay, 1 - lr * weight_decay
        >>> print(np.round(weight.data, 4), bias.data, head.data)
        [0.95 0.95] [1. 1.] [0.5 0.5]
        >>> opt.weight_decay
        Traceback (most recent call last):
          ...
        lstm_fast.optim.GroupsDifferError: weight_decay: the 3 parameter groups hold different
        values (0.5, 0.0, 0.5); read or set each group's in
        optimizer.param_groups[i]['weight_decay']
        >>> hasattr(opt, "weight_decay")  # (a ValueError, and an AttributeError)
        False
        >>> opt.lr = 0.01  # every group's
        >>> opt.lr, opt.param_groups[2]["lr"]
        (0.01, 0.01)
    """

    _hyper: tuple = ("lr",)
    _slots: tuple = ()
    # hyper-parameters added after state dicts were first written: a state without them loads
    # with these values (what the optimizer did before they existed)
    _hyper_defaults: dict = {"maximize": False, "amsgrad": False}

    def __init__(self, params: Iterable[Any], **defaults: Any):
        if isinstance(params, Parameter):
            raise TypeError("params: expected an iterable of Parameter objects, got a Parameter")
        defaults = self._normalize(defaults)
        self._check_hyper(defaults)
        self.defaults = defaults
        self.param_groups: list[dict] = []
        self.state: list[dict] = []
        self.step_count = 0
        # the step_count at which each group was added: its own step count is step_count - that
        self._group_starts: list[int] = []
        for group in _split_groups(params):
            self._add_group(group, stacklevel=5)  # (the warning points at the caller's line)

    # -- parameter groups -----------------------------------------------------------------------
    def add_param_group(self, param_group: Mapping) -> None:
        """Add a parameter group, as ``torch.optim.Optimizer.add_param_group``: a layer to train
        from now on (unfrozen for fine-tuning), with hyper-parameters of its own.

        Args:
            param_group: a dict with ``"params"`` (a :class:`~lstm_fast.module.Parameter` or an
                iterable of them, not empty, none already in a group) and any of the
                optimizer's hyper-parameters (or ``"initial_lr"``); the missing ones are taken
                from :attr:`defaults`.

        The group's parameters start with empty state and their own step count (Adam's bias
        correction starts at their first step). Everything is checked first: an error (naming
        the group by the index it would have, and the key) leaves the optimizer unchanged.

        Example::

            >>> import numpy as np
            >>> from lstm_fast.module import Parameter
            >>> from lstm_fast.optim import SGD
            >>> opt = SGD([Parameter(np.ones(2))], lr=0.1)
            >>> opt.add_param_group({"params": Parameter(np.ones(3)), "lr": 0.01})
            >>> [(len(g["params"]), g["lr"]) for g in opt.param_groups]
            [(1, 0.1), (1, 0.01)]
            >>> opt.add_param_group({"params": [], "lr": 0.01})
            Traceback (most recent call last):
              ...
            ValueError: param group 2: params: expected at least one Parameter, got none
        """
        self._add_group(param_group, stacklevel=4)

    def _add_group(self, param_group: Any, stacklevel: int) -> None:
        group = self._new_group(param_group, len(self.param_groups), stacklevel)
        self.param_groups.append(group)
        self.state.extend({} for _ in group["params"])
        self._group_starts.append(self.step_count)

    def _new_group(self, param_group: Any, index: int, stacklevel: int) -> dict:
        """``param_group`` checked and completed with :attr:`defaults` (nothing is changed);
        errors name the group by ``index``."""
        where = f"param group {index}"
        if not isinstance(param_group, Mapping):
            raise TypeError(
                f"{where}: expected a dict with a 'params' entry, got {type(param_group).__name__}"
            )
        if "params" not in param_group:
            raise ValueError(
                f"{where}: params: expected a 'params' entry (the group's parameters), got the "
                f"keys {sorted(map(str, param_group))}"
            )
        allowed = ("params", *self._hyper, "initial_lr")
        for k in param_group:
            if k not in allowed:
                raise ValueError(
                    f"{where}: {k}: expected a key among {list(allowed)} ({type(self).__name__}'s "
                    "hyper-parameters), got an unknown one"
                )
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):  # (as PyTorch: refused)
            raise TypeError(
                f"{where}: params: expected an ordered collection of Parameters (a list), got a "
                f"{type(params).__name__}: its order, and so the positions of the state dict, "
                "would change from run to run"
            )
        elif isinstance(params, (str, bytes, Mapping, np.ndarray)):
            raise TypeError(
                f"{where}: params: expected a Parameter or an iterable of Parameters, got "
                f"{type(params).__name__}"
            )
        else:
            try:
                params = list(params)
            except TypeError:
                raise TypeError(
                    f"{where}: params: expected a Parameter or an iterable of Parameters, got "
                    f"{type(params).__name__}"
                ) from None
        for j, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{where}: params: expected Parameter objects, got {type(p).__name__} at "
                    f"position {j}"
                )
        if not params:
            raise ValueError(f"{where}: params: expected at least one Parameter, got none")
        for j, p in enumerate(params):
            if not isinstance(p.data, np.ndarray):
                raise TypeError(
                    f"{where}: params: parameter at position {j}: data: expected a NumPy array, "
                    f"got {type(p.data).__name__}"
                )
            _check_float_data(f"{where}: params: parameter at position {j}", p)
        owner = {id(p): gi for gi, g in enumerate(self.param_groups) for p in g["params"]}
        for j, p in enumerate(params):
            if id(p) in owner:
                raise ValueError(
                    f"{where}: params: the parameter at position {j} (shape {p.data.shape}) is "
                    f"already in param group {owner[id(p)]} (some parameters appear in more "
                    "than one parameter group)"
                )
        if len({id(p) for p in params}) != len(params):
            # One state per parameter and one update per step: each occurrence had a state of
            # its own (two Adam moments for one weight, two entries in the state dict) and was
            # stepped with it. PyTorch warns too (and will refuse such a group); the first
            # occurrence is kept, in its place.
            dropped = len(params) - len({id(p) for p in params})
            first: dict = {}
            for p in params:
                first.setdefault(id(p), p)
            params = list(first.values())
            warnings.warn(
                f"params: a parameter appears more than once ({dropped} repeat"
                f"{'s' if dropped > 1 else ''} dropped): it is kept once, with one state, and "
                "updated once per step",
                UserWarning,
                stacklevel=stacklevel,
            )
        hyper = self._normalize({k: v for k, v in param_group.items() if k in self._hyper})
        group = {"params": params, **self.defaults, **hyper}
        try:
            self._check_hyper(group)  # (the group's values with the defaults: nesterov's rule)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None
        if param_group.get("initial_lr") is not None:
            group["initial_lr"] = _check_number(f"{where}: initial_lr", param_group["initial_lr"])
        return group

    @property
    def params(self) -> list:
        """The parameters of every group, in group order: a new list (add parameters with
        :meth:`add_param_group`). ``state[i]`` and the state dict's ``"<i>.<slot>"`` arrays
        belong to ``params[i]``."""
        return [p for g in self.param_groups for p in g["params"]]

    def _attr_names(self) -> tuple:
        return (*type(self)._hyper, "initial_lr")

    def __getattr__(self, name: str) -> Any:
        # (only called when the normal lookup fails: the hyper-parameters live in the groups)
        groups = self.__dict__.get("param_groups")
        if groups is None or name not in self._attr_names():
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        values = [g.get(name) for g in groups]
        if all(v == values[0] for v in values[1:]):
            return values[0]
        shown = ", ".join(map(repr, values))
        raise GroupsDifferError(
            f"{name}: the {len(values)} parameter groups hold different values ({shown}); read "
            f"or set each group's in optimizer.param_groups[i][{name!r}]"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            name in _PLAIN_ATTRS
            or "param_groups" not in self.__dict__
            or name not in self._attr_names()
        ):
            object.__setattr__(self, name, value)
            return
        # a hyper-parameter: every group's, checked first (nothing is set when one refuses)
        if name == "initial_lr":
            if value is not None:
                value = _check_number("initial_lr", value)
        else:
            value = self._normalize({name: value})[name]
            self._check_hyper({name: value})
            for i, g in enumerate(self.param_groups):
                try:
                    self._check_hyper({**g, name: value})
                except (TypeError, ValueError) as e:
                    raise type(e)(f"param group {i}: {e}") from None
        for g in self.param_groups:
            if value is None:
                g.pop(name, None)
            else:
                g[name] = value

    def __delattr__(self, name: str) -> None:
        if name in self._attr_names():
            raise AttributeError(f"{name}: a hyper-parameter cannot be deleted")
        object.__delattr__(self, name)

    @staticmethod
    def _normalize(hyper: Mapping) -> dict:
        """``hyper`` with ``betas`` as a tuple (a list, array or generator; a non-iterable is
        left for the check, which names it)."""
        hyper = dict(hyper)
        b = hyper.get("betas")
        if b is not None and not isinstance(b, (str, tuple)):
            try:
                hyper["betas"] = tuple(b)
            except TypeError:
                pass
        # NumPy scalars as Python ones (np.float32 lr, an array of betas): JSON-able state dicts
        return {k: _plain(v) for k, v in hyper.items()}

    def _group_steps(self) -> list:
        """The number of steps each group has taken."""
        return [max(self.step_count - s, 0) for s in self._group_starts]

    def _layout(self, what: str) -> tuple:
        """``(params, owner)``: every parameter and the index of its group, checked against
        the state (a group's ``"params"`` list changed in place would misalign it)."""
        params, owner = [], []
        for gi, g in enumerate(self.param_groups):
            params.extend(g["params"])
            owner.extend([gi] * len(g["params"]))
        if len(params) != len(self.state) or len(self._group_starts) != len(self.param_groups):
            raise RuntimeError(
                f"{what}: param_groups: expected {len(self.state)} parameters in "
                f"{len(self._group_starts)} groups (the optimizer's state), got {len(params)} in "
                f"{len(self.param_groups)}: add parameters with add_param_group, not by changing "
                "the lists"
            )
        return params, owner

    # Hyper-parameters that must be real numbers >= 0 (PyTorch's checks).
    _NON_NEGATIVE = (
        "lr",
        "eps",
        "weight_decay",
        "momentum",
        "alpha",
        "lr_decay",
        "initial_accumulator_value",
        "dampening",
    )
    # Hyper-parameters that are switches: "no" or 0 must not pass for a setting.
    _BOOLS = ("nesterov", "centered", "maximize", "amsgrad")

    @classmethod
    def _check_hyper(cls, hyper: Mapping) -> None:
        """Raise ValueError naming the first hyper-parameter out of its range (NaN included), so
        a bad value fails at construction (or load) instead of in the middle of a step."""
        for k in cls._NON_NEGATIVE:
            if k in hyper:
                _check_number(k, hyper[k])
        if "betas" in hyper:
            b = hyper["betas"]
            if not isinstance(b, (tuple, list)):  # 0.9 or None: not a pair at all
                raise TypeError(f"betas: expected two floats in [0, 1), got {b!r}")
            ok = len(b) == 2
            ok = ok and all(
                not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating))
                for x in b
            )
            if not ok or not all(0.0 <= x < 1.0 for x in b):
                raise ValueError(f"betas: expected two floats in [0, 1), got {b!r}")
        for k in cls._BOOLS:
            if k in hyper and not isinstance(hyper[k], (bool, np.bool_)):
                raise TypeError(f"{k}: expected a bool, got {type(hyper[k]).__name__}")
        if hyper.get("nesterov") and (hyper.get("momentum", 0) <= 0 or hyper.get("dampening")):
            raise ValueError("nesterov: requires momentum > 0 and dampening = 0")

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every parameter's ``grad`` in place (:meth:`Parameter.zero_grad
        <lstm_fast.module.Parameter.zero_grad>`; a None ``grad`` becomes a zero array), as
        ``torch.optim.Optimizer.zero_grad(set_to_none=False)``.

        Args:
            set_to_none: set every ``grad`` to None instead (PyTorch's default there): the next
                backward makes fresh gradients, and :meth:`step` refuses, naming it, a parameter
                that got none (PyTorch's step would skip it) (default False).
        """
        for p in self.params:
            p.zero_grad(set_to_none=set_to_none)

    def _buf(self, i: int, p: Parameter, name: str, init: float = 0.0) -> np.ndarray:
        st = self.state[i]
        if name not in st:
            st[name] = np.full_like(p.data, init)
        return st[name]

    def _group(self, i: int) -> tuple:
        """``(hyper-parameters, steps taken)`` of parameter ``i``'s group, during a step."""
        return self._current[self._owner[i]]

    def step(self, *, zero_grad: bool = False) -> None:
        """One update of every parameter from its ``.grad``, with its group's hyper-parameters.

        ``zero_grad=True`` also sets every gradient to zero afterwards, as :meth:`zero_grad`
        would before the next backward; optimizers with a fused kernel (Adam, AdamW) do it in
        the same pass over memory as the update, so a training loop saves a pass of its own.

        Every group's hyper-parameters (they may have been changed in place), every gradient's
        shape and (real) dtype, and that the arrays to write are writeable, are checked first:
        a bad one raises before any parameter or state changes.
        """
        params, owner = self._layout("step")
        for gi, g in enumerate(self.param_groups):
            missing = [k for k in self._hyper if k not in g]
            if missing:
                raise ValueError(f"step: param group {gi}: missing the hyper-parameters {missing}")
            try:
                self._check_hyper(g)
            except (TypeError, ValueError) as e:
                raise type(e)(f"step: param group {gi}: {e}") from None
        start = 0
        for g in self.param_groups:
            # (an unsigned gradient is negated by maximize: it would wrap around silently)
            kinds = "fi" if g.get("maximize", False) else "fiu"
            _check_grads("step", g["params"], kinds, start=start)
            start += len(g["params"])
        for i, p in enumerate(params):
            if not p.data.flags.writeable or (zero_grad and not p.grad.flags.writeable):
                what = "data" if not p.data.flags.writeable else "grad (zero_grad=True)"
                raise ValueError(f"step: parameter {i}: {what}: expected a writeable array")
            # (an integer parameter, or state arrays of a parameter whose data was replaced by
            # one of another shape, raised in the middle of the update: the parameters before it
            # updated, step_count bumped)
            _check_float_data(f"step: parameter {i}", p)
            # (a masked array's masked entries kept their values in the NumPy update, and the
            # fused kernel refused it mid-step, naming "param", after earlier parameters moved)
            _check_unmasked(f"step: parameter {i}: data", p.data)
            for slot, arr in self.state[i].items():
                # (a state array set by hand -- read-only, integer, a list, masked -- raised in
                # the middle of the update, "output array is read-only", after the parameters
                # before it had moved)
                what = f"step: parameter {i}: state {slot}"
                if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
                    got = (
                        f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
                    )
                    raise TypeError(f"{what}: expected a floating-point array, got {got}")
                if arr.shape != p.data.shape:
                    raise ValueError(
                        f"{what}: expected shape {p.data.shape} (the "
                        f"parameter's), got {arr.shape} (its data was replaced by an array of "
                        "another shape: give the optimizer new parameters, or reset its state)"
                    )
                if not arr.flags.writeable:
                    raise ValueError(f"{what}: expected a writeable array, got a read-only one")
                _check_unmasked(what, arr)
        with deferred_interrupt():  # Ctrl-C: after the whole step, not between two parameters
            self.step_count += 1
            self._owner = owner
            self._current = [
                (g, max(self.step_count - s, 1))
                for g, s in zip(self.param_groups, self._group_starts)
            ]
            # two parameters sharing one gradient array: it is zeroed after every update, not
            # in the first one's pass -- the second stepped with a zero gradient, unlike step()
            # followed by zero_grad()
            grads = {id(p.grad) for p in params}
            fused = zero_grad and len(grads) == len(params)
            for i, p in enumerate(params):
                if not self._update(i, p, fused) and fused:
                    p.grad[...] = 0
                p._version = getattr(p, "_version", 0) + 1  # a saved forward's backward refuses p
            if zero_grad and not fused:
                for p in params:
                    p.grad[...] = 0

    def _update(self, i: int, p: Parameter, zero_grad: bool = False) -> bool:
        """Update p (``params[i]``, with ``self._group(i)``'s hyper-parameters); return True
        when it also zeroed p.grad (asked by zero_grad)."""
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def _grad(p: Parameter, weight_decay: float, maximize: bool = False) -> np.ndarray:
        """The gradient the update uses: negated with ``maximize`` (PyTorch's order: before
        the L2 term), plus ``weight_decay * p``."""
        g = p.grad
        if g.dtype.kind in "iu" or g.dtype.itemsize < 4:
            # in float32: squared in its own dtype, an int8 gradient of 100 wrapped around and a
            # float16 one of 300 overflowed to inf (Adam, RMSprop and Adagrad's g * g)
            g = g.astype(_f32)
        g = -g if maximize else g
        if weight_decay:
            return g + _f32(weight_decay) * p.data
        return g

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state: ``{"type", "hyper", "step", "arrays"}`` (and ``"initial_lr"``
        once a schedule set one) with one parameter group; with several, ``{"type",
        "param_groups", "step", "group_steps", "arrays"}``.

        ``type`` is the class name, ``step`` the number of steps taken and ``arrays`` a flat
        ``{"<parameter index>.<slot>": array}`` dict of copies (``"3.exp_avg"``): JSON-able
        scalars and arrays a checkpoint stores without pickle. As torch's, it is keyed by the
        parameters' positions in :attr:`params`, not names. One group's hyper-parameters are
        ``hyper`` (by name), the format written before parameter groups existed, which every
        version loads. Several groups are ``param_groups``, one dict per group as
        :attr:`param_groups` with ``"params"`` the list of its parameters' positions (as
        torch's), and ``group_steps`` the steps each group has taken.

        Example::

            >>> import numpy as np
            >>> from lstm_fast.module import Parameter
            >>> from lstm_fast.optim import SGD
            >>> opt = SGD([{"params": [Parameter(np.ones(2))]},
            ...            {"params": [Parameter(np.ones(1))], "lr": 0.5}], lr=0.1)
            >>> opt.state_dict()["param_groups"]  # doctest: +NORMALIZE_WHITESPACE
            [{'params': [0], 'lr': 0.1, 'momentum': 0.0, 'dampening': 0.0, 'weight_decay': 0.0,
              'nesterov': False, 'maximize': False},
             {'params': [1], 'lr': 0.5, 'momentum': 0.0, 'dampening': 0.0, 'weight_decay': 0.0,
              'nesterov': False, 'maximize': False}]
        """
        arrays = {}
        for i, st in enumerate(self.state):
            for k, v in st.items():
                arrays[f"{i}.{k}"] = v.copy()
        if len(self.param_groups) == 1:
            g = self.param_groups[0]
            sd = {
                "type": type(self).__name__,
                "hyper": {k: _plain(g[k]) for k in self._hyper},
                "step": self.step_count,
                "arrays": arrays,
            }
            if g.get("initial_lr") is not None:
                sd["initial_lr"] = _plain(g["initial_lr"])
            return sd
        groups, start = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            entry = {
                "params": list(range(start, start + n)),
                **{k: _plain(g[k]) for k in self._hyper},  # (a value set in place may be NumPy's)
            }
            if g.get("initial_lr") is not None:
                entry["initial_lr"] = _plain(g["initial_lr"])
            groups.append(entry)
            start += n
        return {
            "type": type(self).__name__,
            "param_groups": groups,
            "step": self.step_count,
            "group_steps": self._group_steps(),
            "arrays": arrays,
        }

    def _state_slots(self, hyper: Mapping) -> tuple:
        """The state arrays every parameter holds after a step under ``hyper``."""
        return self._slots

    def state_spec(self, hyper: Any = None, step: Any = None) -> dict:
        """``{name: (shape, dtype)}`` of the ``arrays`` a :meth:`state_dict` holds: one array
        per parameter and state slot (``"3.exp_avg"``), of the parameter's dtype (float32 but
        for a parameter of another), none for a group before its first step.

        Args:
            hyper: the hyper-parameters: a mapping for every group, or a list with one mapping
                per group (a state dict's ``param_groups``) (default None: each group's own).
            step: the steps taken: an int for every group, or a list with one per group (a
                state dict's ``group_steps``) (default None: each group's own).
        """
        n = len(self.param_groups)
        if hyper is None:
            hypers = self.param_groups
        elif isinstance(hyper, Mapping):
            hypers = [hyper] * n
        else:
            hypers = list(hyper)
        if step is None:
            steps = self._group_steps()
        elif isinstance(step, (int, np.integer)):
            steps = [step] * n
        else:
            steps = list(step)
        if len(hypers) != n or len(steps) != n:
            raise ValueError(
                f"state_spec: expected one hyper-parameter mapping and step per parameter group "
                f"({n}), got {len(hypers)} and {len(steps)}"
            )
        out, i = {}, 0
        for g, h, s in zip(self.param_groups, hypers, steps):
            for p in g["params"]:
                if s:
                    for slot in self._state_slots(h):
                        out[f"{i}.{slot}"] = (p.data.shape, p.data.dtype)
                i += 1
        return out

    def _loaded_hyper(self, what: str, hyper: Any, keys: str = "keys") -> dict:
        """A saved group's hyper-parameters, checked (the ones added since filled in)."""
        if isinstance(hyper, Mapping):
            added = {k: v for k, v in self._hyper_defaults.items() if k in self._hyper}
            hyper = self._normalize({**added, **hyper})
        if not isinstance(hyper, Mapping) or set(hyper) != set(self._hyper):
            got = sorted(map(str, hyper)) if isinstance(hyper, Mapping) else type(hyper).__name__
            raise ValueError(f"{what}: expected the {keys} {sorted(self._hyper)}, got {got}")
        try:
            self._check_hyper(hyper)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{what}: {e}") from None
        return hyper

    def _loaded_groups(self, groups: Any) -> list:
        """The hyper-parameters (with ``"initial_lr"``) of a state dict's ``param_groups``,
        checked against this optimizer's groups."""
        n = len(self.param_groups)
        if not isinstance(groups, (list, tuple)):
            raise TypeError(
                f"load_state_dict: param_groups: expected a list of {n} dicts, got "
                f"{type(groups).__name__}"
            )
        if len(groups) != n:
            raise ValueError(
                f"load_state_dict: param_groups: expected {n} parameter groups (this "
                f"optimizer's), got {len(groups)}"
            )
        out, start = [], 0
        for gi, (entry, own) in enumerate(zip(groups, self.param_groups)):
            what = f"load_state_dict: param_groups[{gi}]"
            if not isinstance(entry, Mapping):
                raise TypeError(f"{what}: expected a dict, got {type(entry).__name__}")
            k = len(own["params"])
            want = list(range(start, start + k))
            idx = entry.get("params")
            if not isinstance(idx, (list, tuple)) or len(idx) != k:
                got = f"{len(idx)}" if isinstance(idx, (list, tuple)) else type(idx).__name__
                raise ValueError(
                    f"{what}: params: expected {k} parameter positions (this optimizer's group "
                    f"{gi} has {k} parameters), got {got}"
                )
            if list(idx) != want:
                raise ValueError(f"{what}: params: expected the positions {want}, got {list(idx)}")
            hyper = {h: v for h, v in entry.items() if h not in ("params", "initial_lr")}
            hyper = self._loaded_hyper(what, hyper, "hyper-parameters")
            if entry.get("initial_lr") is not None:
                hyper["initial_lr"] = _check_number(f"{what}: initial_lr", entry["initial_lr"])
            out.append(hyper)
            start += k
        return out

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore ``sd``, a :meth:`state_dict` of the same optimizer type over parameters of
        the same shapes and groups (hyper-parameters, step counts and state arrays).

        A one-group state (``"hyper"``, as every version wrote before parameter groups) loads
        into an optimizer of one group; a ``"param_groups"`` state into one with as many groups
        of as many parameters. Everything is checked first -- the optimizer type, the group
        structure, the hyper-parameter names and values, the steps, every array's name, shape
        and (real floating) dtype, no array missing -- so a failed load (``ValueError`` /
        ``TypeError`` naming the entry) leaves the optimizer as it was."""
        if not isinstance(sd, Mapping) or sd.get("type") != type(self).__name__:
            got = sd.get("type") if isinstance(sd, Mapping) else type(sd).__name__
            raise ValueError(f"load_state_dict: expected a {type(self).__name__} state, got {got}")
        n = len(self.param_groups)
        if "param_groups" in sd:
            if "hyper" in sd or "initial_lr" in sd:
                extra = "hyper" if "hyper" in sd else "initial_lr"
                raise ValueError(
                    f"load_state_dict: expected 'param_groups' (each group's hyper-parameters "
                    f"and initial_lr) or 'hyper' (one group's), got both: {extra}"
                )
            groups = self._loaded_groups(sd["param_groups"])
        else:
            if n != 1:
                raise ValueError(
                    f"load_state_dict: expected a state of {n} parameter groups "
                    "('param_groups'), got a one-group state ('hyper')"
                )
            groups = [self._loaded_hyper("load_state_dict: hyper", sd.get("hyper"))]
        # hyper-parameters and step first: state_spec (which arrays must be there) reads them
        step = sd.get("step")
        if (
            not isinstance(step, (int, np.integer))
            or isinstance(step, bool)
            or not 0 <= step <= _MAX_STEP
        ):
            got = repr(step)
            got = got if len(got) <= 24 else f"{got[:12]}... ({len(got)} digits)"
            raise ValueError(
                f"load_state_dict: step: expected an int >= 0 (below 2**63), got {got}"
            )
        step = int(step)
        if "param_groups" in sd:
            group_steps = sd.get("group_steps", [step] * n)
            ok = isinstance(group_steps, (list, tuple)) and len(group_steps) == n
            ok = ok and all(
                isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s <= step
                for s in group_steps
            )
            if not ok:
                raise ValueError(
                    f"load_state_dict: group_steps: expected {n} ints in [0, step={step}] (the "
                    f"steps each group has taken), got {group_steps!r}"
                )
            group_steps = [int(s) for s in group_steps]
        else:
            group_steps = [step]
            initial_lr = sd.get("initial_lr")
            if initial_lr is not None:
                groups[0]["initial_lr"] = _check_number("load_state_dict: initial_lr", initial_lr)
        arrays = sd.get("arrays")
        if not isinstance(arrays, Mapping):
            raise ValueError(
                f"load_state_dict: arrays: expected a mapping, got {type(arrays).__name__}"
            )
        params = self.params
        state: list[dict] = [{} for _ in params]
        for key, arr in arrays.items():
            i_str, _, name = str(key).partition(".")
            if not i_str.isdigit() or not name or (self._slots and name not in self._slots):
                raise ValueError(
                    f"load_state_dict: {key}: expected '<parameter index>.<slot>' with a slot in "
                    f"{list(self._slots)}"
                )
            i = int(i_str)
            if not 0 <= i < len(params):
                raise ValueError(f"load_state_dict: {key}: no parameter {i}")
            dtype = params[i].data.dtype  # (the state's: float32, or a float64 parameter's)
            if hasattr(arr, "detach") and hasattr(arr, "numpy"):  # a torch tensor
                arr = _from_torch(arr, f"load_state_dict: {key}")
            _check_unmasked(f"load_state_dict: {key}", arr)
            try:
                arr = np.asarray(arr)
            except (ValueError, TypeError) as e:  # ragged nesting and the like
                raise TypeError(f"load_state_dict: {key}: expected a {dtype} array ({e})") from None
            if arr.shape != params[i].data.shape:
                raise ValueError(
                    f"load_state_dict: {key}: expected shape {params[i].data.shape}, "
                    f"got {arr.shape}"
                )
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(
                    f"load_state_dict: {key}: expected a {dtype} array, got dtype {arr.dtype}"
                )
            # (1e300 in a float64 array would become inf.) In the parameter's dtype, as a step
            # makes it: a float64 parameter's state was cut to float32, so a resumed run was no
            # longer bitwise the uninterrupted one
            state[i][name] = np.array(_as_dtype(f"load_state_dict: {key}", arr, dtype), copy=True)
        missing = [k for k in self.state_spec(groups, group_steps) if k not in arrays]
        if missing:
            raise ValueError(f"load_state_dict: missing arrays {missing[:6]} (step {step})")
        # everything checked: replace
        for g, new in zip(self.param_groups, groups):
            g.pop("initial_lr", None)
            g.update(new)
        self.step_count = step
        self._group_starts = [step - s for s in group_steps]
        self.state = state


class SGD(Optimizer):
    r"""Stochastic gradient descent, with PyTorch's ``optim.SGD`` update rule.

    .. math::
        g = \nabla + \lambda p, \qquad
        b = \mu b + (1 - \tau) g \ (b = g \text{ on the first step}), \qquad
        p \leftarrow p - \gamma \cdot \begin{cases} g + \mu b & \text{Nesterov} \\
        b & \mu > 0 \\ g & \mu = 0 \end{cases}

    Args:
        params: the parameters to update (see :class:`Optimizer`).
        lr: the learning rate :math:`\gamma` (default 1e-3, as PyTorch's).
        momentum: :math:`\mu` (default 0: no momentum buffer).
        dampening: :math:`\tau` (default 0).
        weight_decay: :math:`\lambda`, L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum (default False; needs ``momentum > 0`` and
            ``dampening = 0``).
        maximize: (keyword only) ascend instead: the gradient is negated first (default
            False).

    State per parameter: ``momentum_buffer`` when ``momentum > 0``.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import SGD
        >>> p = Parameter(np.ones(2))
        >>> opt = SGD([p], lr=0.1, momentum=0.9)
        >>> for _ in range(2):
        ...     p.grad[...] = 1.0
        ...     opt.step()
        >>> print(np.round(p.data, 4))  # 1 - 0.1 * 1, then - 0.1 * (0.9 + 1)
        [0.71 0.71]
    """

    _hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
    _slots = ("momentum_buffer",)

    def __init__(
        self,
        params,
        lr=1e-3,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        *,
        maximize=False,
    ):
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
        )

    def _state_slots(self, hyper):
        return self._slots if hyper.get("momentum") else ()

    def _update(self, i, p, zero_grad=False):
        h, _ = self._group(i)
        g = self._grad(p, h["weight_decay"], h["maximize"])
        if h["momentum"]:
            st = self.state[i]
            if "momentum_buffer" not in st:
                # (the parameter's dtype, as every other state array and torch's buffer)
                st["momentum_buffer"] = np.array(g, dtype=p.data.dtype, copy=True)
            else:
                b = st["momentum_buffer"]
                b *= _f32(h["momentum"])
                b += _f32(1.0 - h["dampening"]) * g
            b = st["momentum_buffer"]
            g = g + _f32(h["momentum"]) * b if h["nesterov"] else b
        p.data -= _f32(h["lr"]) * g


class Adam(Optimizer):
    r"""Adam, with PyTorch's ``optim.Adam`` update rule (L2 ``weight_decay`` added to the
    gradient).

    .. math::
        g = \nabla + \lambda p, \quad m = \beta_1 m + (1 - \beta_1) g, \quad
        v = \beta_2 v + (1 - \beta_2) g^2, \quad
        p \leftarrow p - \frac{\gamma}{1 - \beta_1^t} \cdot
        \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}

    The common case (float32 parameters and state, no ``amsgrad``, no ``maximize``) runs as one
    fused C++ pass per parameter with the same float32 arithmetic.

    Args:
        params: the parameters to update (see :class:`Optimizer`).
        lr: :math:`\gamma` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1) (default (0.9, 0.999)).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: :math:`\lambda`, L2 penalty added to the gradient (default 0; for the
            decoupled kind use :class:`AdamW`).
        amsgrad: divide by the running maximum of :math:`v` (state ``max_exp_avg_sq``)
            (default False).
        maximize: (keyword only) ascend instead: the gradient is negated first (default False).

    State per parameter: ``exp_avg`` (m), ``exp_avg_sq`` (v), and ``max_exp_avg_sq`` with
    ``amsgrad``.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import Adam
        >>> p = Parameter(np.ones(2))
        >>> opt = Adam([p], lr=0.1)
        >>> p.grad[...] = [1.0, -2.0]
        >>> opt.step()
        >>> print(np.round(p.data, 4))  # the first step moves each weight by lr
        [0.9 1.1]
        >>> sorted(opt.state_dict()["arrays"])
        ['0.exp_avg', '0.exp_avg_sq']
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
    _slots = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        amsgrad=False,
        *,
        maximize=False,
    ):
        super().__init__(  # (betas: a list, array or generator as a tuple)
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )

    def _state_slots(self, hyper):
        return self._slots if hyper.get("amsgrad") else self._slots[:2]

    def _update(self, i, p, zero_grad=False):
        h, t = self._group(i)
        b1, b2 = h["betas"]
        st = self.state[i]
        if (
            _fast(p)
            and not h["amsgrad"]
            and not h["maximize"]
            # (state arrays set by hand in another layout or dtype take the NumPy path)
            and all(_fast_state(st.get(k)) for k in ("exp_avg", "exp_avg_sq"))
        ):
            # one fused pass in C++ (the same float32 arithmetic as below, in a single sweep)
            wd = float(h["weight_decay"])
            g = p.grad if p.grad.flags.aligned else p.grad.copy()
            _core.adam_step(
                p.data,
                g,
                self._buf(i, p, "exp_avg"),
                self._buf(i, p, "exp_avg_sq"),
                float(b1),
                float(b2),
                float(_f32(h["lr"] / (1.0 - b1**t))),
                float(_f32(math.sqrt(1.0 - b2**t))),
                float(h["eps"]),
                l2=0.0 if self._decoupled else wd,
                decay=float(_f32(1.0 - h["lr"] * wd)) if self._decoupled and wd else 1.0,
                zero_grad=zero_grad and p.grad.flags.writeable,
            )
            if g is not p.grad and zero_grad and p.grad.flags.writeable:
                p.grad[...] = 0.0  # the kernel zeroed the copy
            return zero_grad and p.grad.flags.writeable
        if self._decoupled:
            if h["weight_decay"]:
                p.data *= _f32(1.0 - h["lr"] * h["weight_decay"])
            g = self._grad(p, 0.0, h["maximize"])
        else:
            g = self._grad(p, h["weight_decay"], h["maximize"])
        m = self._buf(i, p, "exp_avg")
        v = self._buf(i, p, "exp_avg_sq")
        m *= _f32(b1)
        m += _f32(1.0 - b1) * g
        v *= _f32(b2)
        v += _f32(1.0 - b2) * (g * g)
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        if h["amsgrad"]:
            vmax = self._buf(i, p, "max_exp_avg_sq")
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / _f32(math.sqrt(bc2))
        denom += _f32(h["eps"])
        p.data -= _f32(h["lr"] / bc1) * (m / denom)


class AdamW(Adam):
    r"""Adam with decoupled weight decay, PyTorch's ``optim.AdamW``.

    Each step first shrinks the weights, :math:`p \leftarrow p (1 - \gamma \lambda)`, then
    applies :class:`Adam`'s update with the plain gradient (no L2 term in it).

    Args:
        params: the parameters to update (see :class:`Optimizer`).
        lr: :math:`\gamma` (default 1e-3).
        betas: :math:`(\beta_1, \beta_2)` (default (0.9, 0.999)).
        eps: (default 1e-8).
        weight_decay: :math:`\lambda` (default 1e-2, as PyTorch's).
        amsgrad: as :class:`Adam`'s (default False).
        maximize: (keyword only) ascend instead (default False).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import AdamW
        >>> p = Parameter(np.ones(2))
        >>> opt = AdamW([p], lr=0.1, weight_decay=0.5)
        >>> opt.step()  # a zero gradient: only the decay, 1 - 0.1 * 0.5
        >>> print(np.round(p.data, 4))
        [0.95 0.95]
    """

    _decoupled = True

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        *,
        maximize=False,
    ):
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
        )


class Adagrad(Optimizer):
    r"""Adagrad, with PyTorch's ``optim.Adagrad`` update rule (min-char-rnn's optimizer).

    .. math::
        g = \nabla + \lambda p, \qquad s \mathrel{+}= g^2, \qquad
        p \leftarrow p - \frac{\gamma}{1 + (t - 1)\,\eta} \cdot \frac{g}{\sqrt{s} + \epsilon}

    Args:
        params: the parameters to update (see :class:`Optimizer`).
        lr: :math:`\gamma` (default 1e-2).
        lr_decay: :math:`\eta` (default 0).
        weight_decay: :math:`\lambda`, L2 penalty added to the gradient (default 0).
        initial_accumulator_value: the starting value of :math:`s` (default 0).
        eps: :math:`\epsilon` (default 1e-10).
        maximize: (keyword only) ascend instead (default False).

    State per parameter: ``sum`` (s), starting at its group's ``initial_accumulator_value``
    (PyTorch's starts every parameter's at the constructor's, whatever its group says).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import Adagrad
        >>> p = Parameter(np.ones(1))
        >>> opt = Adagrad([p], lr=0.1)
        >>> for _ in range(2):
        ...     p.grad[...] = 1.0
        ...     opt.step()
        >>> print(np.round(p.data, 4))  # 1 - 0.1 / sqrt(1) - 0.1 / sqrt(2)
        [0.8293]
    """

    _hyper = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize")
    _slots = ("sum",)

    def __init__(
        self,
        params,
        lr=1e-2,
        lr_decay=0.0,
        weight_decay=0.0,
        initial_accumulator_value=0.0,
        eps=1e-10,
        *,
        maximize=False,
    ):
        super().__init__(
            params,
            lr=lr,
            lr_decay=lr_decay,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            maximize=maximize,
        )

    def _update(self, i, p, zero_grad=False):
        h, t = self._group(i)
        g = self._grad(p, h["weight_decay"], h["maximize"])
        s = self._buf(i, p, "sum", h["initial_accumulator_value"])
        s += g * g
        clr = h["lr"] / (1.0 + (t - 1) * h["lr_decay"])
        std = np.sqrt(s)
        std += _f32(h["eps"])
        p.data -= _f32(clr) * (g / std)


class RMSprop(Optimizer):
    r"""RMSprop, with PyTorch's ``optim.RMSprop`` update rule (``momentum`` and ``centered``
    included).

    .. math::
        g = \nabla + \lambda p, \quad v = \alpha v + (1 - \alpha) g^2, \quad
        d = \sqrt{v - \bar g^2} + \epsilon \ (\text{centered; else } \sqrt{v} + \epsilon),
        \quad p \leftarrow p - \gamma\, g / d

    with momentum :math:`\mu > 0`, :math:`b = \mu b + g / d` and
    :math:`p \leftarrow p - \gamma b`; centered keeps :math:`\bar g = \alpha \bar g +
    (1 - \alpha) g`.

    Args:
        params: the parameters to update (see :class:`Optimizer`).
        lr: :math:`\gamma` (default 1e-2).
        alpha: :math:`\alpha`, the smoothing constant (default 0.99).
        eps: :math:`\epsilon` (default 1e-8).
        weight_decay: :math:`\lambda`, L2 penalty added to the gradient (default 0).
        momentum: :math:`\mu` (default 0).
        centered: normalise by the variance estimate instead of the second moment (default
            False).
        maximize: (keyword only) ascend instead (default False).

    State per parameter: ``square_avg`` (v), ``grad_avg`` when centered, ``momentum_buffer``
    with momentum. The averages are updated in float64 and rounded once into the state, so they
    stay finite wherever the state's dtype can hold them (|g| up to ~1e20 in float32; beyond,
    v is inf and the step 0, as Adam's), and the centered variance is never NaN (it is 0 where
    rounding would take it below).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import RMSprop
        >>> p = Parameter(np.ones(1))
        >>> opt = RMSprop([p], lr=0.01)
        >>> p.grad[...] = 1.0
        >>> opt.step()  # v = 0.01, so the step is 0.01 * 1 / 0.1
        >>> print(np.round(p.data, 4))
        [0.9]
    """

    _hyper = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize")
    _slots = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(
        self,
        params,
        lr=1e-2,
        alpha=0.99,
        eps=1e-8,
        weight_decay=0.0,
        momentum=0.0,
        centered=False,
        *,
        maximize=False,
    ):
        super().__init__(
            params,
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            maximize=maximize,
        )

    def _state_slots(self, hyper):
        centered, momentum = hyper.get("centered"), hyper.get("momentum") or 0
        return (
            ("square_avg",) + ("grad_avg",) * bool(centered) + ("momentum_buffer",) * (momentum > 0)
        )

    def _update(self, i, p, zero_grad=False):
        h, _ = self._group(i)
        g = self._grad(p, h["weight_decay"], h["maximize"])
        alpha = h["alpha"]
        sq = self._buf(i, p, "square_avg")
        # The averages in float64 (as clip_grad_norm's sums), each rounded once into its state:
        # (1 - alpha) * g * g in float32 overflowed to inf for |g| > 1.8e19, where the average
        # itself (1e38 at |g| = 1e20) is a float32. The square is taken of sqrt(1 - alpha) * g,
        # so a float64 parameter's overflows only where the average is beyond float64 too.
        # An average beyond the state's range is stored as inf (its step is then 0), as Adam's.
        g64 = g.astype(np.float64)
        sq64 = sq.astype(np.float64)
        sq64 *= alpha
        with np.errstate(over="ignore"):
            sq64 += np.square(math.sqrt(1.0 - alpha) * g64)
            sq[...] = sq64
        if h["centered"]:
            ga = self._buf(i, p, "grad_avg")
            ga64 = ga.astype(np.float64)
            ga64 *= alpha
            ga64 += (1.0 - alpha) * g64
            ga[...] = ga64
            # The variance v - gbar^2 from the stored averages as (s - |gbar|)(s + |gbar|),
            # s = sqrt(v), in float64: v - gbar * gbar was inf - inf = NaN once both squares
            # overflowed (gradients near 1e38), and rounding could leave it just below 0 (the
            # square root of it NaN too) where it is 0.
            s = np.sqrt(sq, dtype=np.float64)
            m = np.abs(ga, dtype=np.float64)
            var = s - m
            var *= s + m
            np.maximum(var, 0.0, out=var)
            avg = np.sqrt(var, out=var)
        else:
            avg = np.sqrt(sq)
        avg += _f32(h["eps"])
        if h["momentum"] > 0:
            buf = self._buf(i, p, "momentum_buffer")
            buf *= _f32(h["momentum"])
            buf += g / avg
            p.data -= _f32(h["lr"]) * buf
        else:
            p.data -= _f32(h["lr"]) * (g / avg)


def _sumsq(g: np.ndarray) -> float:
    """The sum of squares of a gradient, in float64. float32 ones in lstm_fast's own kernel
    (np.dot would wake NumPy's BLAS thread pool, which then spins next to the recurrent kernels'
    OpenMP team), others squared in float64: np.dot of a float16 gradient summed in float16,
    so 100 values of 300 (a norm of 3000) overflowed to inf and clipping zeroed them all."""
    if g.dtype == _f32:
        g = np.ascontiguousarray(g)
        return _core.sumsq(g if g.flags.aligned else g.copy())
    return float(np.square(g, dtype=np.float64).sum())


def clip_grad_norm(
    params: Iterable[Parameter],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    *,
    eps: float = 1e-6,
) -> float:
    r"""Scale all gradients together so their global ``norm_type``-norm is at most ``max_norm``.

    .. math::
        n = \Big(\sum_{p} \sum_i |\nabla p_i|^{q}\Big)^{1/q}, \qquad
        \nabla p \leftarrow \nabla p \cdot \frac{\text{max\_norm}}{n + \epsilon}
        \quad \text{when that factor is} < 1

    PyTorch's ``torch.nn.utils.clip_grad_norm_`` (same positional order, same ``eps``), on
    NumPy gradients, in place; it returns a Python float.

    Args:
        params: an iterable of :class:`~lstm_fast.module.Parameter`, or one parameter.
        max_norm: the largest norm allowed, >= 0.
        norm_type: :math:`q`, any float > 0, or ``inf`` (also the string ``"inf"``) for the
            largest absolute value (default 2.0).
        error_if_nonfinite: raise ``RuntimeError``, before any gradient changes, when the norm
            is NaN or infinite (default False: every gradient is then multiplied by the NaN or 0
            coefficient, as PyTorch's are).
        eps: (keyword only) :math:`\epsilon`, added to the norm (default 1e-6, as PyTorch's).

    Returns:
        The norm :math:`n` of all gradients before clipping (float64 sums).

    Every gradient must be a writeable floating-point array of its parameter's shape, checked
    before any is scaled (``ValueError`` / ``TypeError`` naming the parameter); a negative
    ``max_norm`` or ``eps`` and a ``norm_type`` <= 0 raise too.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import clip_grad_norm
        >>> p = Parameter(np.zeros(2))
        >>> p.grad[...] = [3.0, 4.0]
        >>> clip_grad_norm([p], max_norm=1.0)
        5.0
        >>> print(np.round(p.grad, 4))
        [0.6 0.8]
    """
    params = _params(params)  # one Parameter too (as PyTorch's)
    max_norm = _check_number("max_norm", max_norm)  # a negative one would flip the gradients
    # (eps was the third positional parameter: torch's clip_grad_norm_(params, 1.0, 1.0), an L1
    # norm, clipped the L2 norm with eps = 1, silently)
    if isinstance(norm_type, str) and norm_type.lower() == "inf":  # torch takes 'inf' too
        norm_type = math.inf
    real = isinstance(norm_type, (int, float, np.integer, np.floating)) and not isinstance(
        norm_type, (bool, np.bool_)
    )
    if not real or not norm_type > 0:
        raise ValueError(f"norm_type: expected a float > 0 or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    eps = _check_number("eps", eps)  # so would a negative eps, when norm + eps < 0
    if not math.isfinite(eps):
        raise ValueError(f"eps: expected a finite float >= 0, got {eps}")
    if not isinstance(error_if_nonfinite, (bool, np.bool_)):  # ("False" would be truthy)
        raise TypeError(
            f"error_if_nonfinite: expected a bool, got {type(error_if_nonfinite).__name__}"
        )
    _check_grads("clip_grad_norm", params, kinds="f", writeable=True)
    if norm_type == 2.0:
        total = math.sqrt(sum(_sumsq(p.grad) for p in params))
    elif norm_type == math.inf:
        # (np.max over the per-parameter maxima: a NaN anywhere makes the norm NaN, where
        # Python's max would depend on the order of the parameters)
        maxima = [float(np.abs(p.grad).max()) for p in params if p.grad.size]
        total = float(np.max(maxima)) if maxima else 0.0
    else:  # in float64, as the L2 sums, each |g| divided by the largest first: |g| ** q
        # overflowed (q = 1e10: an inf norm for gradients of 4, so every gradient was zeroed)
        # and the final ** (1 / q) raised OverflowError (q = 1e-300)
        maxima = [float(np.abs(p.grad).max()) for p in params if p.grad.size]
        top = float(np.max(maxima)) if maxima else 0.0
        total = top  # (0, inf or NaN: the norm itself)
        if 0.0 < top < math.inf:
            s = sum(
                float(np.sum((np.abs(p.grad, dtype=np.float64) / top) ** norm_type)) for p in params
            )
            try:
                total = top * s ** (1.0 / norm_type)
            except OverflowError:
                total = math.inf
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"clip_grad_norm: the total norm of order {norm_type} of the gradients is {total}, "
            "so they cannot be clipped (error_if_nonfinite=True; no gradient was changed)"
        )
    denom = total + eps
    coef = max_norm / denom if denom else math.inf  # (eps = 0 and all gradients zero)
    if coef < 1.0 or math.isnan(coef):  # NaN: every gradient becomes NaN, as PyTorch's
        # (Inf * 0 = NaN, as in PyTorch: no warning; Ctrl-C: after all gradients are scaled)
        with np.errstate(invalid="ignore"), deferred_interrupt():
            for p in params:
                p.grad *= _f32(coef)
    return total


class _Schedule:
    """Sets each parameter group's ``lr = base * factor(step)``, ``step`` the optimizer's
    ``step_count``; call :meth:`step` once per optimizer step.

    A group's base rate (PyTorch's per-group ``initial_lr``) is ``base_lr`` when given, else the
    group's ``"initial_lr"`` -- recorded by the first schedule attached, and saved in the
    optimizer's :meth:`~Optimizer.state_dict` -- else its ``lr``; a group without an
    ``"initial_lr"`` gets its base rate recorded as one. So a schedule built on an optimizer
    restored from a state dict goes on from the same rates, and each group is scaled from its
    own rate. A group added after the schedule (:meth:`~Optimizer.add_param_group`) is scaled
    from its ``"initial_lr"`` if it has one, else the ``lr`` it was added with; a group whose
    ``"initial_lr"`` was replaced since (the optimizer's
    :meth:`~Optimizer.load_state_dict` of a checkpoint, after the schedule was built, as
    PyTorch's resume goes) is scaled from that one from the next :meth:`step` on.

    Attributes:
        optimizer: the :class:`Optimizer`.  base_lrs: the base rate of each group.
    """

    def __init__(self, optimizer: Optimizer, base_lr: Any = None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        groups = optimizer.param_groups
        if base_lr is None:
            base_lrs = [g["lr"] if g.get("initial_lr") is None else g["initial_lr"] for g in groups]
        elif isinstance(base_lr, (list, tuple)):
            if len(base_lr) != len(groups):
                raise ValueError(
                    f"base_lr: expected a float or {len(groups)} floats (one per parameter "
                    f"group), got {len(base_lr)}"
                )
            base_lrs = [_check_number(f"base_lr[{j}]", b) for j, b in enumerate(base_lr)]
        else:
            base_lrs = [_check_number("base_lr", base_lr)] * len(groups)
        self.optimizer = optimizer
        self.base_lrs = base_lrs
        for g, b in zip(groups, base_lrs):
            if g.get("initial_lr") is None:
                g["initial_lr"] = b
        # each group's initial_lr as this schedule last saw it: one replaced since (by the
        # optimizer's load_state_dict of a checkpoint) is the base rate from then on
        self._seen_initial = [g["initial_lr"] for g in groups]
        self._last_lr: list = []
        self.set(optimizer.step_count)

    @property
    def base_lr(self) -> float:
        """The base rate, when every group has the same (``ValueError`` otherwise: read
        ``base_lrs``); setting it sets every group's."""
        if any(b != self.base_lrs[0] for b in self.base_lrs):
            raise ValueError(
                f"base_lr: the parameter groups have different base rates {self.base_lrs}; read "
                "base_lrs"
            )
        return self.base_lrs[0]

    @base_lr.setter
    def base_lr(self, value: float) -> None:
        self.base_lrs = [_check_number("base_lr", value)] * len(self.base_lrs)

    def factor(self, step: int) -> float:  # pragma: no cover - abstract
        """The multiplier of the base rates after ``step`` optimizer steps (subclasses define
        it)."""
        raise NotImplementedError

    def set(self, step: int) -> Any:
        """Set every group's ``lr = base * factor(step)`` for a given ``step``; returns the rate
        (a float with one parameter group, a list of one rate per group with several)."""
        f = self.factor(step)
        rates = []
        if "_seen_initial" not in self.__dict__:  # (a schedule pickled before it was kept)
            groups = self.optimizer.param_groups[: len(self.base_lrs)]
            self._seen_initial = [g.get("initial_lr") for g in groups]
        seen = self._seen_initial
        for j, g in enumerate(self.optimizer.param_groups):
            if j >= len(self.base_lrs):  # a group added since
                if g.get("initial_lr") is None:
                    g["initial_lr"] = g["lr"]
                self.base_lrs.append(g["initial_lr"])
                seen.append(g["initial_lr"])
            init = g.get("initial_lr")
            if init is None:  # (a state saved without a schedule was loaded): keep the rate
                g["initial_lr"] = seen[j] = self.base_lrs[j]
            elif init != seen[j]:
                # the optimizer loaded a checkpoint after this schedule was built (PyTorch's
                # order of resuming): its base rate was ignored, so the run went on from the
                # rates of the new optimizer's lr instead of the checkpoint's
                self.base_lrs[j] = seen[j] = init
            g["lr"] = self.base_lrs[j] * f
            rates.append(g["lr"])
        self._last_lr = rates
        return rates[0] if len(rates) == 1 else rates

    def step(self) -> Any:
        """Set the rates for the optimizer's current ``step_count`` (call it after each
        ``optimizer.step()``); returns them as :meth:`set` does. Calling it more often changes
        nothing: the rate is a function of the optimizer's step, not of how many times this
        ran."""
        return self.set(self.optimizer.step_count)

    def get_last_lr(self) -> list:
        """The rates the schedule set last, one per parameter group (as PyTorch's)."""
        return list(self._last_lr)


class StepLR(_Schedule):
    """Step decay: ``lr = base_lr * gamma ** (step // step_size)``, ``step`` the optimizer's
    ``step_count``.

    PyTorch's ``optim.lr_scheduler.StepLR`` counts its own ``step()`` calls (often one per
    epoch); this one reads the optimizer's step count, so ``step_size`` is in optimizer steps and
    a resumed run gets the same rates. Called once after every optimizer step, the two agree.
    The rate for the current step is set at construction.

    Args:
        optimizer: the :class:`Optimizer` whose groups' ``lr`` are set.
        step_size: the number of steps between decays, >= 1.
        gamma: the decay factor, >= 0 (default 0.1).
        base_lr: the undecayed rate, a float for every group or a list with one per group
            (default None: each group's ``initial_lr`` if a schedule recorded one -- it is saved
            in the state dict --, else its current ``lr``).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import SGD, StepLR
        >>> opt = SGD([Parameter(np.zeros(1))], lr=1.0)
        >>> sched = StepLR(opt, step_size=2, gamma=0.5)
        >>> rates = []
        >>> for _ in range(5):
        ...     rates.append(opt.lr)
        ...     opt.step()
        ...     _ = sched.step()
        >>> rates
        [1.0, 1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, base_lr=None):
        self.step_size = _check_int("step_size", step_size, 1)
        self.gamma = _check_number("gamma", gamma)
        super().__init__(optimizer, base_lr)

    def factor(self, step):
        """``gamma ** (step // step_size)``."""
        return self.gamma ** (step // self.step_size)


class CosineLR(_Schedule):
    r"""Linear warm-up for ``warmup`` steps, then cosine decay to ``min_factor * base_lr`` at
    ``total_steps`` (constant after).

    .. math::
        f(s) = \begin{cases} (s + 1) / W & s < W \\
        m + (1 - m) \tfrac12 \big(1 + \cos(\pi \min(1, \tfrac{s - W}{\max(S - W, 1)}))\big)
        & s \ge W \end{cases}

    ``lr = base_lr * f(step)``, ``step`` the optimizer's ``step_count`` (W ``warmup``,
    S ``total_steps``, m ``min_factor``). After the warm-up it is PyTorch's
    ``CosineAnnealingLR`` with ``T_max = S - W`` and ``eta_min = m * base_lr``, except after
    S steps: the rate stays at the minimum (torch's cosine goes back up).

    Args:
        optimizer: the :class:`Optimizer` whose groups' ``lr`` are set.
        total_steps: S, the step at which the decay ends, >= 0.
        warmup: W, the warm-up steps, >= 0 (default 0: none).
        min_factor: m, the final rate as a fraction of ``base_lr``, >= 0 (default 0).
        base_lr: the peak rate (default None: as :class:`StepLR`'s).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import SGD, CosineLR
        >>> opt = SGD([Parameter(np.zeros(1))], lr=1.0)
        >>> sched = CosineLR(opt, total_steps=6, warmup=2)
        >>> rates = []
        >>> for _ in range(8):
        ...     rates.append(round(opt.lr, 3))
        ...     opt.step()
        ...     _ = sched.step()
        >>> rates
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    """

    def __init__(
        self, optimizer, total_steps: int, warmup: int = 0, min_factor: float = 0.0, base_lr=None
    ):
        self.total_steps = _check_int("total_steps", total_steps, 0)
        self.warmup = _check_int("warmup", warmup, 0)
        self.min_factor = _check_number("min_factor", min_factor)  # < 0: a negative lr
        super().__init__(optimizer, base_lr)

    def factor(self, step):
        """The multiplier f(step) of the formula above."""
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total_steps - self.warmup, 1)
        t = min(max(step - self.warmup, 0) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


_OPTIMIZERS = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
}


def make_optimizer(name: str, params, **kwargs) -> Optimizer:
    """Build an optimizer by name (the CLI's ``--optimizer``).

    Args:
        name: ``"sgd"``, ``"adam"``, ``"adamw"``, ``"adagrad"`` or ``"rmsprop"`` (any case).
        params: the parameters to update, or parameter groups (dicts; see :class:`Optimizer`).
        **kwargs: the optimizer's hyper-parameters (``lr=...``).

    Raises ``ValueError`` listing the names for any other ``name``.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.module import Parameter
        >>> from lstm_fast.optim import make_optimizer
        >>> opt = make_optimizer("AdamW", [Parameter(np.zeros(3))], lr=0.01)
        >>> type(opt).__name__, opt.lr, opt.weight_decay
        ('AdamW', 0.01, 0.01)
    """
    try:
        cls = _OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):  # an unknown name, or not a str at all
        raise ValueError(
            f"optimizer: expected one of {sorted(_OPTIMIZERS)}, got {name!r}"
        ) from None
    return cls(params, **kwargs)
