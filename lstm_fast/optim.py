"""Optimizers over :class:`~lstm_fast.module.Parameter` lists, with PyTorch's update rules.

``SGD`` (momentum, dampening, Nesterov, weight decay), ``Adam`` / ``AdamW`` (AMSGrad),
``Adagrad`` (min-char-rnn's), ``RMSprop`` (momentum, centered), each with PyTorch's
``maximize``; :func:`clip_grad_norm`; learning-rate
schedules (:class:`StepLR`, :class:`CosineLR` with linear warm-up) that are pure functions of the
step, so a resumed run gets the same rates.

Each optimizer's :meth:`Optimizer.state_dict` is ``{"type", "hyper", "step", "arrays"}``: JSON-able
scalars and a flat ``{name: array}`` dict (``"3.exp_avg"`` = parameter 3's first moment), so a
checkpoint can store it without pickle and resume bitwise exactly. Updates are in place, in float32,
vectorised per parameter.

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
from typing import Any, Optional

import numpy as np

from . import _core
from ._interrupt import deferred_interrupt
from .module import Parameter, _as_dtype
from .rnn import _check_int

__all__ = [
    "Optimizer",
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


def _params(params: Any) -> list:
    """``params`` (an iterable of :class:`Parameter`, or one) as a list, checked: an error
    naming ``params`` for anything else (None, an array, a module)."""
    if isinstance(params, Parameter):
        return [params]
    try:
        out = list(params)
    except TypeError:  # not iterable at all: None, a number, a Module
        raise TypeError(
            f"params: expected an iterable of Parameter objects (e.g. model.parameters()), got "
            f"{type(params).__name__}"
        ) from None
    for p in out:
        if not isinstance(p, Parameter):
            raise TypeError(f"params: expected Parameter objects, got {type(p).__name__}")
    return out


def _check_grads(what: str, params: list, kinds: str = "fiu", writeable: bool = False) -> None:
    """Raise naming the first parameter whose ``.grad`` is not an array of its shape (None, a
    scalar, a stale shape) with a real dtype (``kinds``: NumPy dtype kinds; complex, str and
    object gradients would raise in the middle of an update, or be truncated) -- and, with
    ``writeable``, one the caller may write into -- before anything is changed."""
    for i, p in enumerate(params):
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
        if writeable and not g.flags.writeable:
            raise ValueError(
                f"{what}: parameter {i}: grad: expected a writeable array, got a read-only one"
            )


def _check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    """A real number >= minimum (NaN refused) as a float, else an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a float >= {minimum:g}, got {type(value).__name__}")
    if not value >= minimum:
        raise ValueError(f"{name}: expected a float >= {minimum:g}, got {value}")
    return float(value)


class Optimizer:
    """Base class of the optimizers: a list of parameters, hyper-parameters as attributes,
    per-parameter state arrays.

    As ``torch.optim.Optimizer`` without parameter groups: one set of hyper-parameters for all
    parameters, read from and writable as attributes (``opt.lr = 0.01``, what the schedules
    do). Subclasses implement the update; :meth:`step` checks every gradient, then updates every
    parameter in place and bumps its version (so a backward of a forward run before the step
    refuses to mix old activations with the new weights).

    Args:
        params: an iterable of :class:`~lstm_fast.module.Parameter` (``model.parameters()``),
            not empty; a parameter listed twice is updated twice (with a ``UserWarning``).
        **hyper: the hyper-parameters, checked (a negative ``lr``, NaN, a non-bool switch raise
            at construction, naming the argument).

    Attributes:
        params: the list of parameters.  step_count: the number of steps taken.
        state: one ``{slot: float32 array}`` dict per parameter (``"exp_avg"``, ...).
        initial_lr: the base rate the first schedule attached recorded (None before).

    Raises ``TypeError`` for ``params`` that are not Parameters (or a single Parameter),
    ``ValueError`` for an empty list or a hyper-parameter out of range.

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
    """

    _hyper: tuple = ("lr",)
    _slots: tuple = ()
    # hyper-parameters added after state dicts were first written: a state without them loads
    # with these values (what the optimizer did before they existed)
    _hyper_defaults: dict = {"maximize": False, "amsgrad": False}

    def __init__(self, params: Iterable[Parameter], **hyper: Any):
        if isinstance(params, Parameter):
            raise TypeError("params: expected an iterable of Parameter objects, got a Parameter")
        self.params = _params(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        if len({id(p) for p in self.params}) != len(self.params):
            warnings.warn(  # as PyTorch: each occurrence is stepped, so the parameter twice
                "params: a parameter appears more than once; each occurrence is updated "
                "(pass each once, e.g. list(dict.fromkeys(params)))",
                UserWarning,
                stacklevel=3,
            )
        self._check_hyper(hyper)
        for k, v in hyper.items():
            setattr(self, k, v)
        self.step_count = 0
        self.state: list[dict] = [{} for _ in self.params]
        # the learning rate a schedule scales (PyTorch's "initial_lr"): set by the first
        # schedule attached, saved in state_dict, so a schedule built after load_state_dict
        # scales the run's base rate and not the decayed rate the state was saved with
        self.initial_lr: Optional[float] = None

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

    def _buf(self, i: int, name: str, init: float = 0.0) -> np.ndarray:
        st = self.state[i]
        if name not in st:
            st[name] = np.full_like(self.params[i].data, init)
        return st[name]

    def step(self, *, zero_grad: bool = False) -> None:
        """One update of every parameter from its ``.grad``.

        ``zero_grad=True`` also sets every gradient to zero afterwards, as :meth:`zero_grad`
        would before the next backward; optimizers with a fused kernel (Adam, AdamW) do it in
        the same pass over memory as the update, so a training loop saves a pass of its own.

        Every gradient's shape and (real) dtype, and that the arrays to write are writeable, is
        checked first: a bad one raises before any parameter or state changes.
        """
        # (an unsigned gradient is negated by maximize: it would wrap around silently)
        _check_grads("step", self.params, "fi" if getattr(self, "maximize", False) else "fiu")
        for i, p in enumerate(self.params):
            if not p.data.flags.writeable or (zero_grad and not p.grad.flags.writeable):
                what = "data" if not p.data.flags.writeable else "grad (zero_grad=True)"
                raise ValueError(f"step: parameter {i}: {what}: expected a writeable array")
        with deferred_interrupt():  # Ctrl-C: after the whole step, not between two parameters
            self.step_count += 1
            for i, p in enumerate(self.params):
                if not self._update(i, p, zero_grad) and zero_grad:
                    p.grad[...] = 0
                p._version = getattr(p, "_version", 0) + 1  # a saved forward's backward refuses p

    def _update(self, i: int, p: Parameter, zero_grad: bool = False) -> bool:
        """Update p; return True when it also zeroed p.grad (asked by zero_grad)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _grad(self, p: Parameter, weight_decay: float) -> np.ndarray:
        """The gradient the update uses: negated with ``maximize`` (PyTorch's order: before
        the L2 term), plus ``weight_decay * p``."""
        g = p.grad
        if g.dtype.kind in "iu" or g.dtype.itemsize < 4:
            # in float32: squared in its own dtype, an int8 gradient of 100 wrapped around and a
            # float16 one of 300 overflowed to inf (Adam, RMSprop and Adagrad's g * g)
            g = g.astype(_f32)
        g = -g if getattr(self, "maximize", False) else g
        if weight_decay:
            return g + _f32(weight_decay) * p.data
        return g

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state: ``{"type", "hyper", "step", "arrays"}`` (and ``"initial_lr"``
        once a schedule set one).

        ``type`` is the class name, ``hyper`` the hyper-parameters by name, ``step`` the number
        of steps taken and ``arrays`` a flat ``{"<parameter index>.<slot>": array}`` dict of
        copies (``"3.exp_avg"``): JSON-able scalars and arrays a checkpoint stores without
        pickle. As torch's, it is keyed by the parameters' positions in ``params``, not names.
        """
        arrays = {}
        for i, st in enumerate(self.state):
            for k, v in st.items():
                arrays[f"{i}.{k}"] = v.copy()
        sd = {
            "type": type(self).__name__,
            "hyper": {k: getattr(self, k) for k in self._hyper},
            "step": self.step_count,
            "arrays": arrays,
        }
        if self.initial_lr is not None:
            sd["initial_lr"] = self.initial_lr
        return sd

    def _state_slots(self, hyper: Mapping) -> tuple:
        """The state arrays every parameter holds after a step under ``hyper``."""
        return self._slots

    def state_spec(self, hyper: Optional[Mapping] = None, step: Optional[int] = None) -> dict:
        """``{name: (shape, dtype)}`` of the ``arrays`` a :meth:`state_dict` holds after ``step``
        steps with hyper-parameters ``hyper`` (default: this optimizer's own): one float32 array
        per parameter and state slot (``"3.exp_avg"``), none before the first step."""
        hyper = {k: getattr(self, k) for k in self._hyper} if hyper is None else dict(hyper)
        step = self.step_count if step is None else step
        if not step:
            return {}
        return {
            f"{i}.{slot}": (p.data.shape, np.dtype(np.float32))
            for i, p in enumerate(self.params)
            for slot in self._state_slots(hyper)
        }

    def load_state_dict(self, sd: Mapping) -> None:
        """Restore ``sd``, a :meth:`state_dict` of the same optimizer type over parameters of
        the same shapes (hyper-parameters, step count and state arrays).

        Everything is checked first -- the optimizer type, the hyper-parameter names and
        values, the step, every array's name, shape and (real floating) dtype, no array missing
        -- so a failed load (``ValueError`` / ``TypeError`` naming the entry) leaves the
        optimizer as it was."""
        if not isinstance(sd, Mapping) or sd.get("type") != type(self).__name__:
            got = sd.get("type") if isinstance(sd, Mapping) else type(sd).__name__
            raise ValueError(f"load_state_dict: expected a {type(self).__name__} state, got {got}")
        hyper, step, arrays = sd.get("hyper"), sd.get("step"), sd.get("arrays")
        if isinstance(hyper, Mapping):
            added = {k: v for k, v in self._hyper_defaults.items() if k in self._hyper}
            hyper = {**added, **hyper}
        if not isinstance(hyper, Mapping) or set(hyper) != set(self._hyper):
            got = sorted(hyper) if isinstance(hyper, Mapping) else type(hyper).__name__
            raise ValueError(
                f"load_state_dict: hyper: expected the keys {sorted(self._hyper)}, got {got}"
            )
        # hyper-parameters and step first: state_spec (which arrays must be there) reads them
        try:
            self._check_hyper(hyper)
        except (TypeError, ValueError) as e:
            raise type(e)(f"load_state_dict: hyper: {e}") from None
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
        initial_lr = sd.get("initial_lr")
        if initial_lr is not None:
            initial_lr = _check_number("load_state_dict: initial_lr", initial_lr)
        if not isinstance(arrays, Mapping):
            raise ValueError(
                f"load_state_dict: arrays: expected a mapping, got {type(arrays).__name__}"
            )
        state: list[dict] = [{} for _ in self.params]
        for key, arr in arrays.items():
            i_str, _, name = str(key).partition(".")
            if not i_str.isdigit() or not name or (self._slots and name not in self._slots):
                raise ValueError(
                    f"load_state_dict: {key}: expected '<parameter index>.<slot>' with a slot in "
                    f"{list(self._slots)}"
                )
            i = int(i_str)
            if not 0 <= i < len(self.params):
                raise ValueError(f"load_state_dict: {key}: no parameter {i}")
            try:
                arr = np.asarray(arr)
            except (ValueError, TypeError) as e:  # ragged nesting and the like
                raise TypeError(f"load_state_dict: {key}: expected a float32 array ({e})") from None
            if arr.shape != self.params[i].data.shape:
                raise ValueError(
                    f"load_state_dict: {key}: expected shape {self.params[i].data.shape}, "
                    f"got {arr.shape}"
                )
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(
                    f"load_state_dict: {key}: expected a float32 array, got dtype {arr.dtype}"
                )
            # (1e300 in a float64 array would become inf)
            state[i][name] = np.array(_as_dtype(f"load_state_dict: {key}", arr), copy=True)
        missing = [k for k in self.state_spec(hyper, step) if k not in arrays]
        if missing:
            raise ValueError(f"load_state_dict: missing arrays {missing[:6]} (step {step})")
        for k, v in hyper.items():
            setattr(self, k, v)
        self.step_count = int(step)
        self.state = state
        self.initial_lr = initial_lr


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
        g = self._grad(p, self.weight_decay)
        if self.momentum:
            st = self.state[i]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = np.array(g, dtype=np.float32, copy=True)
            else:
                b = st["momentum_buffer"]
                b *= _f32(self.momentum)
                b += _f32(1.0 - self.dampening) * g
            b = st["momentum_buffer"]
            g = g + _f32(self.momentum) * b if self.nesterov else b
        p.data -= _f32(self.lr) * g


class Adam(Optimizer):
    r"""Adam, with PyTorch's ``optim.Adam`` update rule (L2 ``weight_decay`` added to the
    gradient).

    .. math::
        g = \nabla + \lambda p, \quad m = \beta_1 m + (1 - \beta_1) g, \quad
        v = \beta_2 v + (1 - \beta_2) g^2, \quad
        p \leftarrow p - \frac{\gamma}{1 - \beta_1^t} \cdot
        \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}

    The common case (float32 parameters, no ``amsgrad``, no ``maximize``) runs as one fused C++
    pass per parameter with the same float32 arithmetic.

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
        if not isinstance(betas, str):
            try:  # a list, array or generator as a tuple
                betas = tuple(betas)
            except TypeError:  # 0.9, None: not a pair; the check names betas
                pass
        super().__init__(
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
        b1, b2 = self.betas
        if _fast(p) and not self.amsgrad and not self.maximize:
            # one fused pass in C++ (the same float32 arithmetic as below, in a single sweep)
            t = self.step_count
            wd = float(self.weight_decay)
            g = p.grad if p.grad.flags.aligned else p.grad.copy()
            _core.adam_step(
                p.data,
                g,
                self._buf(i, "exp_avg"),
                self._buf(i, "exp_avg_sq"),
                float(b1),
                float(b2),
                float(_f32(self.lr / (1.0 - b1**t))),
                float(_f32(math.sqrt(1.0 - b2**t))),
                float(self.eps),
                l2=0.0 if self._decoupled else wd,
                decay=float(_f32(1.0 - self.lr * wd)) if self._decoupled and wd else 1.0,
                zero_grad=zero_grad and p.grad.flags.writeable,
            )
            if g is not p.grad and zero_grad and p.grad.flags.writeable:
                p.grad[...] = 0.0  # the kernel zeroed the copy
            return zero_grad and p.grad.flags.writeable
        if self._decoupled:
            if self.weight_decay:
                p.data *= _f32(1.0 - self.lr * self.weight_decay)
            g = self._grad(p, 0.0)
        else:
            g = self._grad(p, self.weight_decay)
        m = self._buf(i, "exp_avg")
        v = self._buf(i, "exp_avg_sq")
        m *= _f32(b1)
        m += _f32(1.0 - b1) * g
        v *= _f32(b2)
        v += _f32(1.0 - b2) * (g * g)
        t = self.step_count
        bc1 = 1.0 - b1**t
        bc2 = 1.0 - b2**t
        if self.amsgrad:
            vmax = self._buf(i, "max_exp_avg_sq")
            np.maximum(vmax, v, out=vmax)
            v = vmax
        denom = np.sqrt(v) / _f32(math.sqrt(bc2))
        denom += _f32(self.eps)
        p.data -= _f32(self.lr / bc1) * (m / denom)


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

    State per parameter: ``sum`` (s).

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
        g = self._grad(p, self.weight_decay)
        s = self._buf(i, "sum", self.initial_accumulator_value)
        s += g * g
        clr = self.lr / (1.0 + (self.step_count - 1) * self.lr_decay)
        std = np.sqrt(s)
        std += _f32(self.eps)
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
    with momentum.

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
        g = self._grad(p, self.weight_decay)
        a = _f32(self.alpha)
        sq = self._buf(i, "square_avg")
        sq *= a
        sq += _f32(1.0 - self.alpha) * (g * g)
        if self.centered:
            ga = self._buf(i, "grad_avg")
            ga *= a
            ga += _f32(1.0 - self.alpha) * g
            avg = np.sqrt(sq - ga * ga)
        else:
            avg = np.sqrt(sq)
        avg += _f32(self.eps)
        if self.momentum > 0:
            buf = self._buf(i, "momentum_buffer")
            buf *= _f32(self.momentum)
            buf += g / avg
            p.data -= _f32(self.lr) * buf
        else:
            p.data -= _f32(self.lr) * (g / avg)


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
    _check_grads("clip_grad_norm", params, kinds="f", writeable=True)
    if norm_type == 2.0:
        total = math.sqrt(sum(_sumsq(p.grad) for p in params))
    elif norm_type == math.inf:
        # (np.max over the per-parameter maxima: a NaN anywhere makes the norm NaN, where
        # Python's max would depend on the order of the parameters)
        maxima = [float(np.abs(p.grad).max()) for p in params if p.grad.size]
        total = float(np.max(maxima)) if maxima else 0.0
    else:  # in float64, as the L2 sums
        total = sum(
            float(np.sum(np.abs(p.grad, dtype=np.float64) ** norm_type)) for p in params
        ) ** (1.0 / norm_type)
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
    """Sets ``optimizer.lr = base_lr * factor(step)``; call :meth:`step` once per optimizer step.

    ``base_lr`` defaults to the optimizer's ``initial_lr`` -- the rate the first schedule
    attached to it found (saved in its :meth:`~Optimizer.state_dict`) -- else its ``lr``; so a
    schedule built on an optimizer restored from a state dict goes on from the same rates.
    """

    def __init__(self, optimizer: Optimizer, base_lr: Optional[float] = None):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if base_lr is not None:
            self.base_lr = _check_number("base_lr", base_lr)
        elif optimizer.initial_lr is not None:
            self.base_lr = optimizer.initial_lr
        else:
            self.base_lr = optimizer.lr
        if optimizer.initial_lr is None:
            optimizer.initial_lr = self.base_lr
        self.set(optimizer.step_count)

    def factor(self, step: int) -> float:  # pragma: no cover - abstract
        """The multiplier of ``base_lr`` after ``step`` optimizer steps (subclasses define it)."""
        raise NotImplementedError

    def set(self, step: int) -> float:
        """Set ``optimizer.lr = base_lr * factor(step)`` for a given ``step``; returns the rate."""
        self.optimizer.lr = self.base_lr * self.factor(step)
        return self.optimizer.lr

    def step(self) -> float:
        """Set the rate for the optimizer's current ``step_count`` (call it after each
        ``optimizer.step()``); returns the rate. Calling it more often changes nothing: the
        rate is a function of the optimizer's step, not of how many times this ran."""
        return self.set(self.optimizer.step_count)


class StepLR(_Schedule):
    """Step decay: ``lr = base_lr * gamma ** (step // step_size)``, ``step`` the optimizer's
    ``step_count``.

    PyTorch's ``optim.lr_scheduler.StepLR`` counts its own ``step()`` calls (often one per
    epoch); this one reads the optimizer's step count, so ``step_size`` is in optimizer steps and
    a resumed run gets the same rates. Called once after every optimizer step, the two agree.
    The rate for the current step is set at construction.

    Args:
        optimizer: the :class:`Optimizer` whose ``lr`` is set.
        step_size: the number of steps between decays, >= 1.
        gamma: the decay factor, >= 0 (default 0.1).
        base_lr: the undecayed rate (default None: the optimizer's ``initial_lr`` if a schedule
            recorded one -- it is saved in its state dict --, else its current ``lr``).

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
        optimizer: the :class:`Optimizer` whose ``lr`` is set.
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
        params: the parameters to update.
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
