"""Ctrl-C held back across an update of several arrays that must change together."""

from __future__ import annotations

import threading

try:  # the C module behind `signal`, whose wrappers convert to and from enums (~2 us a call)
    import _signal as _sig
except ImportError:  # pragma: no cover - other Pythons
    import signal as _sig

_SIGINT = int(_sig.SIGINT)
_main_thread = threading.main_thread


class deferred_interrupt:
    """``with deferred_interrupt():`` runs the block with SIGINT's ``KeyboardInterrupt`` held
    back, and raises it when the block ends.

    An optimizer step updates its parameters (and their moments) one after another in Python:
    an interrupt between two of them left some updated and others not, and ``step_count``
    already counted the step, so a checkpoint saved by the handler (or a notebook's next cell)
    held a state no training run passes through. Only in the main thread with Python's default
    SIGINT handler installed (a program's own handler is left alone); about 1 us."""

    __slots__ = ("_caught", "_armed")

    def __enter__(self) -> None:
        self._caught = False
        self._armed = (
            threading.current_thread() is _main_thread()
            and _sig.getsignal(_SIGINT) is _sig.default_int_handler
        )
        if self._armed:
            try:
                _sig.signal(_SIGINT, self._note)
            except ValueError:  # (a sub-interpreter: signals are the main interpreter's)
                self._armed = False

    def _note(self, signum, frame) -> None:
        self._caught = True

    def __exit__(self, *exc) -> None:
        if self._armed:
            _sig.signal(_SIGINT, _sig.default_int_handler)
            if self._caught:
                raise KeyboardInterrupt
