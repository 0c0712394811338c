"""Checks of the models' settings: each raises ``ValueError`` naming the setting, with the
expected and the given value (the CLI turns a setting's name into its option, ``--hidden-size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np


def is_int(v: Any) -> bool:
    """An int (Python or NumPy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(name: str, v: Any, lo: int, *, optional: bool = False) -> Optional[int]:
    """``v`` as an int >= ``lo`` (None passes when ``optional``)."""
    if v is None and optional:
        return None
    if not is_int(v) or v < lo:
        what = f"None or an int >= {lo}" if optional else f"an int >= {lo}"
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return int(v)


def check_float(
    name: str,
    v: Any,
    lo: float = 0.0,
    hi: Optional[float] = None,
    *,
    hi_open: bool = False,
    finite: bool = True,
) -> float:
    """``v`` as a float in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``; no upper bound when ``hi``
    is None); NaN is refused, and infinity too when ``finite``."""
    real = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )
    ok = real and v >= lo and (hi is None or (v < hi if hi_open else v <= hi))
    if ok and finite and hi is None:
        ok = math.isfinite(v)
    if not ok:
        if hi is None:
            what = f"a {'finite ' if finite else ''}float >= {lo:g}"
        else:
            what = f"a float in [{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    return float(v)


def check_choice(name: str, v: Any, choices: Sequence) -> Any:
    if not isinstance(v, str) or v not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def check_bool(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {v!r}")
    return bool(v)
