"""Checkpoints: one ``.npz`` of arrays whose ``__meta__`` entry is a UTF-8 JSON document.

No pickle anywhere: files are read with ``np.load(allow_pickle=False)``, and the metadata carries a
``format_version`` checked on load. Writes are atomic (a temporary file in the same directory,
flushed and fsynced, then ``os.replace``), so an interrupted run never leaves a torn checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

FORMAT_VERSION = 1
__all__ = ["save_npz", "load_npz", "atomic_write_text", "FORMAT_VERSION"]


def save_npz(path, arrays: Mapping[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and ``meta`` (JSON-able; ``format_version`` added) atomically."""
    meta = dict(meta, format_version=FORMAT_VERSION)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in payload.items():
        if v.dtype == object:
            raise TypeError(f"save_npz: {k}: object arrays are not stored (no pickle)")
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_npz(path):
    """``(arrays dict, meta dict)``; raises ValueError on a missing or newer format version."""
    with np.load(os.fspath(path), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if "__meta__" not in arrays:
        raise ValueError(f"{path}: not an lstm_fast checkpoint (no __meta__ entry)")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: expected checkpoint format_version {FORMAT_VERSION}, "
            f"got {meta.get('format_version')}"
        )
    return arrays, meta


def atomic_write_text(path, text: str) -> None:
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
