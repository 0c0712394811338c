"""Checkpoints: one ``.npz`` of arrays whose ``__meta__`` entry is a UTF-8 JSON document.

Format: a zip archive (stored, not compressed, as ``np.savez`` writes it) of ``.npy`` entries, one
per array, plus ``__meta__.npy``, a 1-D uint8 array holding a UTF-8 JSON object with a
``format_version`` (:data:`FORMAT_VERSION`) and whatever the writer describes the arrays with.

Writing is atomic and durable: the archive goes to a temporary file in the same directory, unique
per writer (process id, thread id and random bits), which is flushed, fsynced and renamed over
the target with ``os.replace``; the directory is then fsynced, so the rename itself survives a
power cut. A writer killed at any point leaves the previous checkpoint intact (and, at worst, a
stray ``.<name>.<pid>.<thread>.<random>.tmp`` beside it, which nothing reads); a writer that fails
with an exception removes its temporary file.

Loading never executes code from the file: there is no pickle anywhere. Every entry's ``.npy``
header is parsed and checked (no object dtypes, a data size that matches the entry) before any
array is read, CRCs are verified, and anything that is not a well-formed checkpoint of the
expected version -- an empty or truncated file, a foreign file, a bare ``.npy``, metadata that is
not a UTF-8 JSON object -- raises :class:`CheckpointError` (a ``ValueError``) naming the path and
what is wrong. :func:`check_arrays` and :func:`restore_module` then check that the arrays fit what
loads them (names, shapes, dtypes) before anything is changed.

Example::

    >>> import os, tempfile
    >>> import numpy as np
    >>> from lstm_fast.models.checkpoint import (
    ...     FORMAT_VERSION, CheckpointError, check_arrays, load_npz, save_npz)
    >>> path = os.path.join(tempfile.mkdtemp(), "ck.npz")
    >>> save_npz(path, {"w": np.ones((2, 3), np.float32)}, {"kind": "demo"})
    >>> arrays, meta = load_npz(path)
    >>> arrays["w"].shape, meta["kind"], meta["format_version"] == FORMAT_VERSION
    ((2, 3), 'demo', True)
    >>> try:
    ...     check_arrays(path, arrays, {"w": ((2, 4), np.float32)})
    ... except CheckpointError as e:
    ...     print(str(e).split(": ", 1)[1])
    w: expected shape (2, 4) dtype float32, got shape (2, 3) dtype float32
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import stat
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import numpy as np
from numpy.lib import format as _npy

FORMAT_VERSION = 1
META = "__meta__"
__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "save_npz",
    "load_npz",
    "check_arrays",
    "restore_module",
    "interpreting",
    "atomic_write_text",
    "atomic_write_bytes",
    "json_text",
    "check_run_dir",
]

# what a malformed archive or .npy entry can raise while it is parsed; all become CheckpointError
_PARSE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    NotImplementedError,
)


class CheckpointError(ValueError):
    """A file that is not a readable lstm_fast checkpoint, or whose content does not fit what
    loads it. The message starts with the path."""


# -- writing --------------------------------------------------------------------------------------
def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX); a no-op where directories cannot be
    opened or fsynced (Windows, some network file systems)."""
    if os.name != "posix":  # pragma: no cover
        return
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. a directory we may write but not read
        return
    try:
        os.fsync(fd)
    except OSError as e:  # pragma: no cover
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _temp_name(path: str) -> str:
    head, tail = os.path.split(path)
    token = f"{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}"
    return os.path.join(head, f".{tail}.{token}.tmp")


def _atomic_write(path, write: Callable[[Any], None]) -> None:
    """Call ``write(file)`` on a fresh temporary file beside ``path``, make it durable, then
    rename it over ``path`` and fsync the directory. On any exception (KeyboardInterrupt
    included) the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    tmp = _temp_name(path)
    # O_EXCL: never write into another writer's file; 0o666 & ~umask, as open() would give
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or os.curdir)


def json_text(obj, **kwargs) -> str:
    """``json.dumps(obj, ensure_ascii=False)`` -- readable non-ASCII text -- unless ``obj`` holds a
    string that UTF-8 cannot encode (a lone surrogate, as ``os.fsdecode`` or the
    ``surrogateescape`` error handler make): then with ``\\uXXXX`` escapes, which ``json.loads``
    turns back into the same string. Either way the result encodes as UTF-8."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, **kwargs)
    return text


def check_run_dir(path, what: str = "out_dir") -> None:
    """Raise before any work unless ``path`` is a directory or ``os.makedirs`` can make it: an
    existing file, or a file where an ancestor directory should be (``/dev/null/run``), raises
    ``NotADirectoryError`` (so does a symbolic link to a missing target there), and an
    existing ancestor this process may not write into ``PermissionError``; both messages start
    with ``what`` and name the path. An empty path raises ``ValueError`` (``--out "$UNSET"``
    wrote the run into the working directory)."""
    path = os.fspath(path)
    if isinstance(path, (str, bytes)) and not path:
        raise ValueError(f"{what}: expected a run directory path, got an empty one ({path!r})")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what}: expected a run directory, got the file {path!r}")
    head = os.path.abspath(path)
    # the nearest existing ancestor holds the new directories; lexists: a dangling symbolic
    # link passed as missing, and mkdir then raised FileExistsError (the classifier's after
    # every epoch had been trained)
    while not os.path.lexists(head):
        parent = os.path.dirname(head)
        if parent == head:  # pragma: no cover - the root always exists
            break
        head = parent
    if not os.path.isdir(head):
        kind = "a file"
        if os.path.islink(head) and not os.path.exists(head):
            kind = f"a symbolic link to the missing {os.readlink(head)!r}"
        raise NotADirectoryError(
            f"{what}: cannot create the run directory {path!r}: {head!r} is {kind}"
        )
    if not os.access(head, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{what}: cannot create or write the run directory {path!r}: {head!r} is not writable"
        )


def atomic_write_bytes(path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_npz(path, arrays: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write ``arrays`` and ``meta`` atomically to ``path``.

    Args:
        arrays: ``{name: array}``; names are non-empty strings other than ``"__meta__"``.
            Arrays of Python objects are refused (they would need pickle).
        meta: a JSON-able mapping; ``format_version`` is set to :data:`FORMAT_VERSION`.

    Everything is checked and serialised before the temporary file is created, so a refused
    argument leaves no file behind.
    """
    payload = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name or name == META:
            raise ValueError(
                f"save_npz: array names: expected a non-empty str, not {META!r}; got {name!r}"
            )
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"save_npz: {name}: object arrays are not stored (no pickle)")
        payload[name] = a
    if not isinstance(meta, Mapping):
        raise TypeError(f"save_npz: meta: expected a mapping, got {type(meta).__name__}")
    # (a lone surrogate in a vocabulary or path is escaped, not a UnicodeEncodeError at the end
    # of a training run)
    text = json_text(dict(meta, format_version=FORMAT_VERSION))
    payload[META] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def write(f) -> None:
        # what np.savez does, with allow_pickle=False and no keyword clashes (``file=``, ...)
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, a in payload.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as entry:
                    _npy.write_array(entry, a, allow_pickle=False)

    _atomic_write(path, write)


# -- reading --------------------------------------------------------------------------------------
def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` entry; its header is checked before any data is read or allocated."""
    if info.flag_bits & 0x1:
        raise ValueError("is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"uses unsupported zip compression method {info.compress_type}")
    with zf.open(info) as f:
        version = _npy.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = _npy.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = _npy.read_array_header_2_0(f)
        else:  # pragma: no cover - read_magic accepts only known versions today
            raise ValueError(f"unknown .npy format version {version}")
        if dtype.hasobject:
            raise ValueError(
                f"holds Python objects (dtype {dtype}); a checkpoint never contains pickled data, "
                "so this file is refused unread"
            )
        header_len = f.tell()
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size - header_len != nbytes:
            raise ValueError(
                f"header says shape {shape} {dtype} ({nbytes} bytes), "
                f"the entry holds {info.file_size - header_len} bytes"
            )
    with zf.open(info) as f:
        a = _npy.read_array(f, allow_pickle=False)
        if f.read(1):  # reading to the end also verifies the CRC-32
            raise ValueError("has bytes after the array data")
    return a


def _parse_meta(shown: str, raw: np.ndarray) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(
            f"{shown}: {META}: expected a 1-D uint8 array of UTF-8 JSON, "
            f"got shape {raw.shape} dtype {raw.dtype}"
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(
            f"{shown}: {META}: not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from e
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{shown}: {META}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{shown}: {META}: expected a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    is_int = isinstance(version, int) and not isinstance(version, bool)
    if not is_int or version != FORMAT_VERSION:
        if is_int and version > FORMAT_VERSION:
            why = "written by a newer lstm_fast; upgrade to read it"
        elif is_int:
            why = "an older format this version no longer reads"
        else:
            why = "not an lstm_fast checkpoint"
        raise CheckpointError(
            f"{shown}: expected checkpoint format_version {FORMAT_VERSION}, got {version!r} ({why})"
        )
    return meta


def load_npz(path) -> tuple[dict, dict]:
    """Read the checkpoint at ``path`` written by :func:`save_npz`: ``(arrays, meta)``.

    ``arrays`` is ``{name: ndarray}`` in the order written; ``meta`` the JSON object, with its
    ``format_version``. A missing file raises ``FileNotFoundError``; anything else that is not a
    well-formed checkpoint of this format version (a directory, a FIFO too) raises
    :class:`CheckpointError`. The entry names are checked first, then ``__meta__`` and its
    version, then the arrays.
    """
    shown = os.fspath(path)
    # a FIFO (or a device) is no checkpoint: open() blocked until a writer came, forever
    if not stat.S_ISREG(os.stat(shown).st_mode):  # (a missing path: FileNotFoundError)
        kind = "a directory" if os.path.isdir(shown) else "not a regular file"
        raise CheckpointError(f"{shown}: {kind}, not an lstm_fast checkpoint (a .npz file)")
    with open(shown, "rb") as f:
        head = f.read(8)
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        if size == 0:
            raise CheckpointError(f"{shown}: empty file (0 bytes), not an lstm_fast checkpoint")
        if head.startswith(b"\x93NUMPY"):
            raise CheckpointError(
                f"{shown}: a single .npy array, not an lstm_fast checkpoint (.npz with {META})"
            )
        if not head.startswith(b"PK"):
            raise CheckpointError(
                f"{shown}: not an lstm_fast checkpoint (expected a .npz zip archive, "
                f"the file starts with {head!r})"
            )
        try:
            zf = zipfile.ZipFile(f)
        except _PARSE_ERRORS as e:
            raise CheckpointError(
                f"{shown}: truncated or corrupt .npz archive ({size} bytes): {e}"
            ) from e
        with zf:
            entries: dict = {}
            for info in zf.infolist():
                name = info.filename
                if not name.endswith(".npy") or info.is_dir():
                    raise CheckpointError(
                        f"{shown}: not an lstm_fast checkpoint (entry {name!r} is not a .npy array)"
                    )
                if name[:-4] in entries:
                    raise CheckpointError(f"{shown}: corrupt .npz archive (entry {name!r} twice)")
                entries[name[:-4]] = info
            if META not in entries:
                raise CheckpointError(f"{shown}: not an lstm_fast checkpoint (no {META} entry)")

            def read(key: str) -> np.ndarray:
                try:
                    return _read_entry(zf, entries[key])
                except _PARSE_ERRORS as e:
                    raise CheckpointError(f"{shown}: entry {key!r}: {e}") from e

            meta = _parse_meta(shown, read(META))
            arrays = {key: read(key) for key in entries if key != META}
    return arrays, meta


# -- checking what was read against what loads it -----------------------------------------------
def _describe(shape, dtype) -> str:
    """``shape (2, *) dtype float32`` (``*``: any size)."""
    dims = ["*" if d is None else str(d) for d in shape]
    text = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return f"shape {text} dtype {np.dtype(dtype)}"


def check_arrays(
    path,
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple],
    *,
    prefix: str = "",
    strict: bool = True,
) -> None:
    """Raise :class:`CheckpointError` unless ``arrays`` fits ``expected``.

    Args:
        path: named in the error.
        arrays: ``{name: array}`` as :func:`load_npz` returns it.
        expected: ``{name: (shape, dtype)}``, names relative to ``prefix``; a ``None`` in a shape
            accepts any size along that axis.
        prefix: only ``arrays`` entries whose names start with it are considered.
        strict: entries under ``prefix`` that ``expected`` does not name are errors too.

    Every problem is listed (missing entries, shape or dtype mismatches with the expected and
    given values, unexpected entries), in the caller's names (``param/rnn.weight_ih_l0``).
    """
    problems = []
    for name, (shape, dtype) in expected.items():
        key = prefix + name
        if key not in arrays:
            problems.append(f"{key}: missing (expected {_describe(shape, dtype)})")
            continue
        a = arrays[key]
        shape_ok = len(a.shape) == len(shape) and all(
            d is None or d == g for d, g in zip(shape, a.shape)
        )
        if not shape_ok or a.dtype != np.dtype(dtype):
            problems.append(
                f"{key}: expected {_describe(shape, dtype)}, got {_describe(a.shape, a.dtype)}"
            )
    if strict:
        wanted = {prefix + n for n in expected}
        problems += [
            f"{k}: unexpected entry" for k in arrays if k.startswith(prefix) and k not in wanted
        ]
    if problems:
        more = f"; and {len(problems) - 6} more" if len(problems) > 6 else ""
        raise CheckpointError(f"{os.fspath(path)}: " + "; ".join(problems[:6]) + more)


def restore_module(path, module, arrays: Mapping[str, np.ndarray], prefix: str = "param/") -> None:
    """Load ``arrays[prefix + name]`` into every parameter of ``module`` (``state_dict`` names;
    ``prefix`` default ``"param/"``); ``path`` (the file they were read from) is named in the
    errors.

    All of them are checked first (present, same shape, same dtype, no unexpected
    ``prefix`` entries): on a mismatch :class:`CheckpointError` names each offending array with
    the expected and given values, and ``module`` is left unchanged.
    """
    named = module.named_parameters(remove_duplicate=False)  # every state_dict name
    expected = {n: (p.data.shape, p.data.dtype) for n, p in named}
    check_arrays(path, arrays, expected, prefix=prefix)
    module.load_state_dict({n: arrays[prefix + n] for n in expected})


@contextlib.contextmanager
def interpreting(path, what: str) -> Iterator[None]:
    """Turn a ``KeyError``, ``TypeError`` or ``ValueError`` raised while reading the content of a
    loaded checkpoint (its metadata fields, say) into a :class:`CheckpointError` naming ``path``
    and ``what`` was being read."""
    try:
        yield
    except CheckpointError:
        raise
    except KeyError as e:
        raise CheckpointError(f"{os.fspath(path)}: {what}: missing entry {e.args[0]!r}") from e
    except (TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{os.fspath(path)}: {what}: {e}") from e
