"""Text data: vocabularies, corpora, truncated-BPTT batches, labelled TSV files.

* :class:`Vocab` — UTF-8 character (Korean syllables included) or whitespace-word vocabulary with
  an unknown token, saved as JSON with the model.
* :func:`load_corpus` — a text file, a directory of text files, or the built-in default corpus:
  the Python standard library's own source code (:func:`default_corpus`), found on every machine.
* :class:`BPTTBatcher` — ``B`` parallel streams over the ids, windows of ``T`` steps; the caller
  carries the hidden state from one window to the next. :func:`train_val_split` holds out the tail.
* :func:`read_tsv` — ``label<TAB>text`` files (a header line ``label<TAB>text`` is skipped).

The per-token loops (encoding, counting, n-gram features, window gathering) run in the Cython
module ``lstm_fast._text``; the plain-Python equivalents here (``_py_*``) are the fallback and the
benchmark's baseline (``use_cython=False``).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import stat
import sysconfig
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np

from .module import _check_unmasked

try:
    from . import _text
except ImportError:  # pragma: no cover - the package build always compiles it
    _text = None

__all__ = [
    "Vocab",
    "load_corpus",
    "default_corpus",
    "train_val_split",
    "BPTTBatcher",
    "read_tsv",
    "featurize",
    "ids_digest",
]

FORMAT_VERSION = 1
TEXT_EXTENSIONS = (".txt", ".py", ".md", ".rst", ".tsv", ".csv", ".json", ".c", ".h")


def _is_int(v) -> bool:
    """An int (Python or NumPy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_max_chars(max_chars) -> None:
    if max_chars is not None and (not _is_int(max_chars) or max_chars < 0):
        raise (ValueError if _is_int(max_chars) else TypeError)(
            f"max_chars: expected None or an int >= 0, got {max_chars!r}"
        )


def _cython(use_cython: Optional[bool]) -> bool:
    if use_cython is None:
        return _text is not None
    if not isinstance(use_cython, (bool, np.bool_)):  # ("no" was truthy: the Cython loop)
        raise TypeError(f"use_cython: expected None, True or False, got {use_cython!r}")
    if use_cython and _text is None:
        raise RuntimeError("lstm_fast._text (the Cython module) is not built")
    return bool(use_cython)


# -- plain-Python equivalents of lstm_fast._text ------------------------------------------------
def _py_count_codepoints(text: str):
    c = Counter(text)
    cps = np.array(sorted(ord(ch) for ch in c), dtype=np.int64)
    return cps, np.array([c[chr(cp)] for cp in cps], dtype=np.int64)


def _py_encode_chars(text: str, stoi: dict, unk: int) -> np.ndarray:
    get = stoi.get
    return np.array([get(ch, unk) for ch in text], dtype=np.int32)


def _py_encode_tokens(tokens: list, stoi: dict, unk: int) -> np.ndarray:
    get = stoi.get
    return np.array([get(t, unk) for t in tokens], dtype=np.int32)


def _py_featurize(docs: list, index: dict, grow: bool, char_n: int, word_n: int):
    ids: list = []
    indptr = [0]
    for doc in docs:
        feats = []
        words = doc.split()
        for n in range(1, word_n + 1):
            feats += ["w:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
        for n in range(1, char_n + 1):
            feats += ["c:" + doc[i : i + n] for i in range(len(doc) - n + 1)]
        for f in feats:
            v = index.get(f)
            if v is None:
                if not grow:
                    continue
                v = index[f] = len(index)
            ids.append(v)
        indptr.append(len(ids))
    return np.array(indptr, dtype=np.int64), np.array(ids, dtype=np.int64)


def featurize(
    docs: Sequence[str],
    index: dict,
    *,
    grow: bool,
    char_n: int = 2,
    word_n: int = 1,
    use_cython: Optional[bool] = None,
):
    """Bag-of-n-gram feature ids of each document, in CSR form (the Naive Bayes features).

    A document's features are its whitespace-word 1..``word_n``-grams (``"w:the cat"``), then
    its character 1..``char_n``-grams (``"c:ca"``, spaces included), each looked up in
    ``index``; repeated features repeat.

    Args:
        docs: D documents, a sequence of str (a single str is refused).
        index: feature -> id; when ``grow`` (keyword only), unseen features are added with the
            next id (``len(index)``), otherwise they are left out.
        char_n: the longest character n-gram, >= 0 (default 2; 0: none).
        word_n: the longest word n-gram, >= 0 (default 1; 0: none).
        use_cython: run the Cython loop (default None: when it is built; True raises
            ``RuntimeError`` if it is not) or the plain-Python one; the results are the same.

    Returns:
        ``(indptr (D+1,), ids (nnz,))``, int64: document d's feature ids are
        ``ids[indptr[d]:indptr[d + 1]]``.

    Raises ``TypeError`` for a str or a non-str document, ``ValueError`` / ``TypeError`` for a
    negative or non-int ``char_n`` / ``word_n``.

    Example::

        >>> from lstm_fast.data import featurize
        >>> index = {}
        >>> indptr, ids = featurize(["ab a", "b"], index, grow=True, char_n=1, word_n=1)
        >>> indptr.tolist(), ids.tolist()
        ([0, 6, 8], [0, 1, 2, 3, 4, 2, 5, 3])
        >>> list(index)
        ['w:ab', 'w:a', 'c:a', 'c:b', 'c: ', 'w:b']
    """
    if isinstance(docs, str):  # would be featurized as one document per character
        raise TypeError("docs: expected a sequence of str, got a str")
    docs = list(docs)
    for d, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise TypeError(f"docs: expected a sequence of str, got {type(doc).__name__} at {d}")
    # a str subclass as a plain str: the Cython loop takes exact str only (NumPy's str_, the
    # elements of np.array(texts), raised "Expected str, got numpy.str_" there)
    docs = [doc if type(doc) is str else str.__str__(doc) for doc in docs]
    # (grow="no" was truthy: the index grew where the caller meant it not to)
    if not isinstance(grow, (bool, np.bool_)):
        raise TypeError(f"grow: expected True or False, got {grow!r}")
    # (the Cython path truncated char_n=1.5 to 1 where the Python one raised)
    for name, v in (("char_n", char_n), ("word_n", word_n)):
        if not _is_int(v) or v < 0:
            raise (ValueError if _is_int(v) else TypeError)(
                f"{name}: expected an int >= 0, got {v!r}"
            )
    # no n-gram is longer than the longest document (in characters, so in words too): the
    # loops over n ran to char_n / word_n for every document -- NaiveBayes(char_n=10**8) spun
    # for minutes on 100 three-letter texts, and 2**31 was an unnamed OverflowError (Cython)
    longest = max(map(len, docs), default=0)
    char_n, word_n = min(int(char_n), longest), min(int(word_n), longest)
    if _cython(use_cython):
        return _text.featurize(docs, index, grow, char_n, word_n)
    return _py_featurize(docs, index, grow, char_n, word_n)


# -- vocabulary ---------------------------------------------------------------------------------
class Vocab:
    """A token <-> id map with an unknown token at id 0 (and, optionally, a pad token at 1).

    Characters are Unicode code points (Korean syllables are single characters); words are
    whitespace-separated. Any token outside the vocabulary encodes as id 0. Usually made with
    :meth:`build` from a text, saved with the model (:meth:`save`, :meth:`to_dict`).

    Args:
        tokens: the known tokens, ids following the specials in this order (tokens equal to a
            special are skipped).
        level: ``"char"`` (tokens are single characters, the default) or ``"word"``.
        unk: the unknown token's string, id 0 (decoded as it; default None: U+FFFD for
            characters, ``"<unk>"`` for words).
        pad: add ``"<pad>"`` at id 1 (default False), e.g. to pad batches of sequences.

    Attributes:
        itos: the tokens by id (list).  stoi: token -> id (dict).  level, unk, pad: as given.
        unk_id: 0.  pad_id: 1 or None.

    Raises ``ValueError`` for another ``level``, a char token that is not one character, or
    repeated tokens, ``TypeError`` for a token or ``unk`` that is not a str.

    Example::

        >>> from lstm_fast.data import Vocab
        >>> v = Vocab.build("hello 세계", level="char")
        >>> v
        Vocab(level='char', size=8)
        >>> v.itos[:4]  # the unknown token, then by frequency ('l' twice), then code point
        ['\ufffd', 'l', ' ', 'e']
        >>> v.encode("hel세x").tolist()
        [4, 3, 1, 7, 0]
        >>> v.decode(v.encode("hel세x"))
        'hel세\ufffd'
    """

    def __init__(
        self,
        tokens: Iterable[str],
        level: str = "char",
        unk: Optional[str] = None,
        pad: bool = False,
    ):
        if level not in ("char", "word"):
            raise ValueError(f"level: expected 'char' or 'word', got {level!r}")
        # (an int unk or token was kept, and the saved vocabulary then failed to load: from_dict
        # takes str only; an int word token could never be encoded either)
        if unk is not None and not isinstance(unk, str):
            raise TypeError(f"unk: expected None or a str, got {type(unk).__name__}")
        if isinstance(tokens, (bytes, bytearray)) or not isinstance(tokens, Iterable):
            raise TypeError(f"tokens: expected an iterable of str, got {type(tokens).__name__}")
        tokens = list(tokens)
        for k, t in enumerate(tokens):
            if not isinstance(t, str):
                raise TypeError(f"tokens: expected str tokens, got {type(t).__name__} at {k}")
        if not isinstance(pad, (bool, np.bool_)):  # (pad="no" was truthy: a pad token added)
            raise TypeError(f"pad: expected True or False, got {pad!r}")
        self.level = level
        self.unk = unk if unk is not None else ("\ufffd" if level == "char" else "<unk>")
        self.pad = bool(pad)
        specials = [self.unk] + (["<pad>"] if pad else [])
        self.itos = specials + [t for t in tokens if t not in specials]
        if level == "char":
            bad = [t for t in self.itos[len(specials) :] if len(t) != 1]
            if bad:
                raise ValueError(
                    f"tokens: a char vocabulary takes single characters, got {bad[:3]}"
                )
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            seen: set = set()
            twice = next(t for t in self.itos if t in seen or seen.add(t))
            raise ValueError(f"tokens: expected unique tokens, got {twice!r} twice")
        self._table = None

    unk_id = 0

    @property
    def pad_id(self) -> Optional[int]:
        """The pad token's id: 1 when the vocabulary has one (``pad=True``), else None."""
        return 1 if self.pad else None

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab(level={self.level!r}, size={len(self)})"

    @classmethod
    def build(
        cls,
        text,
        level: str = "char",
        min_freq: int = 1,
        max_size: Optional[int] = None,
        pad: bool = False,
        use_cython: Optional[bool] = None,
    ) -> Vocab:
        """A vocabulary of the tokens of ``text``, by descending frequency (ties: by code point
        for characters, alphabetically for words).

        Args:
            text: a str, or a sequence of str documents (only their own characters or words
                count, not the joins between them).
            level: ``"char"`` (default) or ``"word"``.
            min_freq: leave out tokens seen fewer times (default 1: keep all).
            max_size: the largest vocabulary, specials included (default None: no limit); at
                least the number of specials, 1 (or 2 with ``pad``): that many keeps them alone.
            pad: add the ``"<pad>"`` token at id 1 (default False).
            use_cython: count with the Cython loop (default None: when it is built).

        Raises ``TypeError`` for bytes or non-str documents, ``ValueError`` for a negative
        ``min_freq``, a ``max_size`` below the number of special tokens (before the text is
        counted) or another ``level``.
        """
        if isinstance(text, (bytes, bytearray)):  # "\n".join(b"ab") complained about an int
            raise TypeError(
                f"text: expected a str or a sequence of str, got {type(text).__name__} "
                "(decode it first, e.g. text.decode('utf-8'))"
            )
        if not isinstance(text, str):
            if not isinstance(text, Iterable):  # list(None) complained about NoneType
                raise TypeError(
                    f"text: expected a str or a sequence of str, got {type(text).__name__}"
                )
            text = list(text)
            for d, doc in enumerate(text):
                if not isinstance(doc, str):
                    raise TypeError(
                        f"text: expected a str or a sequence of str, got {type(doc).__name__} "
                        f"at {d}"
                    )
        for name, v in (("min_freq", min_freq), ("max_size", max_size)):
            if v is None and name == "max_size":
                continue
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
        # the limit counts the specials: one below them cannot be met (it was ignored, and
        # max_size=0 gave a 1-token vocabulary). Refused before the text is counted.
        specials = ["unknown", "pad"] if pad else ["unknown"]
        if max_size is not None and max_size < len(specials):
            raise ValueError(
                f"max_size: expected an int >= {len(specials)}, the number of special tokens "
                f"({', '.join(specials)}) the vocabulary includes, got {int(max_size)}"
            )
        if level == "char":
            joins = 0
            if not isinstance(text, str):
                joins = max(len(text) - 1, 0)
                text = "\n".join(text)
            text = str.__str__(text)  # a subclass (np.str_) as a plain str, which Cython takes
            if _cython(use_cython):
                cps, counts = _text.count_codepoints(text)
            else:
                cps, counts = _py_count_codepoints(text)
            if joins:  # the joining newlines are in no document: "\n" led every vocabulary
                k = int(np.searchsorted(cps, ord("\n")))
                counts[k] -= joins
                cps, counts = cps[counts > 0], counts[counts > 0]
            order = np.lexsort((cps, -counts))
            toks = [(chr(int(cps[i])), int(counts[i])) for i in order]
        elif level == "word":
            docs = [text] if isinstance(text, str) else list(text)
            c: Counter = Counter()
            for d in docs:
                c.update(d.split())
            toks = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            raise ValueError(f"level: expected 'char' or 'word', got {level!r}")
        toks = [t for t, n in toks if n >= min_freq]
        if max_size is not None:
            toks = toks[: max_size - len(specials)]
        return cls(toks, level=level, pad=pad)

    def _lookup_table(self) -> np.ndarray:
        """The code point -> id table of the Cython encoder, made from :attr:`stoi` (what the
        Python encoder reads) and made again when ``itos`` or ``stoi`` was replaced or changed
        size since: a vocabulary extended after its first ``encode`` (``itos.append``, ``stoi[t]
        = i``) kept encoding the new tokens as unknown on this path only."""
        key = (self.itos, len(self.itos), self.stoi, len(self.stoi))
        old = getattr(self, "_table_key", None)
        if (
            self._table is None
            or old is None
            or old[0] is not key[0]
            or old[2] is not key[2]
            or old[1:4:2] != key[1:4:2]
        ):
            chars = [(t, i) for t, i in self.stoi.items() if isinstance(t, str) and len(t) == 1]
            top = max((ord(t) for t, _ in chars), default=0)
            table = np.full(top + 1, -1, dtype=np.int32)
            for t, i in chars:
                table[ord(t)] = i
            self._table, self._table_key = table, key
        return self._table

    def tokenize(self, text: str) -> list:
        """The tokens of ``text`` at this vocabulary's level: its characters, or its whitespace
        words (``str.split()``)."""
        return list(text) if self.level == "char" else text.split()

    def encode(self, text: str, use_cython: Optional[bool] = None) -> np.ndarray:
        """The ids (N,) int32 of ``text``'s N characters (or whitespace words); tokens not in
        the vocabulary become 0. ``use_cython``: as in :meth:`build`. Raises ``TypeError``
        for a ``text`` that is not a str."""
        if not isinstance(text, str):  # Cython took None as "", Python bytes as unknown ints
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        text = str.__str__(text)  # a subclass (np.str_) as a plain str, which Cython takes
        cy = _cython(use_cython)
        if self.level == "char":
            if cy:
                return _text.encode_codepoints(text, self._lookup_table(), 0)
            return _py_encode_chars(text, self.stoi, 0)
        toks = text.split()
        return (
            _text.encode_tokens(toks, self.stoi, 0) if cy else _py_encode_tokens(toks, self.stoi, 0)
        )

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ``ids`` (any iterable of ints, an array too): characters joined
        as they are, words joined by single spaces. Raises ``TypeError`` for a non-integer id
        and ``IndexError`` for one outside [0, len(vocab))."""
        sep = "" if self.level == "char" else " "
        itos, n = self.itos, len(self.itos)
        out = []
        for i in ids:
            try:
                k = operator.index(i)  # ints only: int(1.7) and int("1") would pass
            except TypeError:
                raise TypeError(f"ids: expected integer token ids, got {i!r}") from None
            if not 0 <= k < n:  # a negative id would index from the end
                raise IndexError(f"ids: expected values in [0, V={n}), got {k}")
            out.append(itos[k])
        return sep.join(out)

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """A JSON-able description: ``{"format_version", "level", "unk", "pad", "itos"}``
        (:meth:`from_dict` turns it back into the same vocabulary)."""
        return {
            "format_version": FORMAT_VERSION,
            "level": self.level,
            "unk": self.unk,
            "pad": self.pad,
            "itos": self.itos,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        """The vocabulary that ``d`` (a dict made by :meth:`to_dict`) describes; content that
        is not such a description raises ``ValueError`` naming the field."""
        if not isinstance(d, dict):
            raise ValueError(f"vocab: expected a dict (Vocab.to_dict()), got {type(d).__name__}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"vocab: expected format_version {FORMAT_VERSION}, got {d.get('format_version')}"
            )
        missing = [k for k in ("level", "unk", "pad", "itos") if k not in d]
        if missing:
            raise ValueError(f"vocab: missing field(s) {missing}")
        level, unk, pad, itos = d["level"], d["unk"], d["pad"], d["itos"]
        if level not in ("char", "word"):
            raise ValueError(f"vocab: level: expected 'char' or 'word', got {level!r}")
        if not isinstance(unk, str):
            raise ValueError(f"vocab: unk: expected a str, got {type(unk).__name__}")
        if not isinstance(pad, bool):
            raise ValueError(f"vocab: pad: expected true or false, got {pad!r}")
        if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
            raise ValueError("vocab: itos: expected a list of str")
        specials = [unk] + (["<pad>"] if pad else [])
        if itos[: len(specials)] != specials:  # else every id would shift silently
            raise ValueError(
                f"vocab: itos: expected to start with the special tokens {specials}, "
                f"got {itos[: len(specials)]}"
            )
        return cls(itos[len(specials) :], level=level, unk=unk, pad=pad)

    def save(self, path) -> None:
        """Write :meth:`to_dict` as a UTF-8 JSON file at ``path`` (through a temporary file
        renamed over it, so a failed write leaves any previous file intact); :meth:`load` reads
        it back."""
        # (serialised first: a token UTF-8 cannot encode failed half-way, leaving the temp file)
        from .models.checkpoint import atomic_write_text, json_text

        # the checkpoints' writer: a temporary file unique per writer, removed on any failure
        # (a `path` that is a directory left "path.tmp<pid>" beside it, and two threads saving
        # to one path shared that name)
        atomic_write_text(path, json_text(self.to_dict()))

    @classmethod
    def load(cls, path) -> Vocab:
        """A vocabulary saved by :meth:`save` at ``path``; a file that is not one raises
        ``ValueError`` naming ``path``.

        Example::

            >>> import os, tempfile
            >>> from lstm_fast.data import Vocab
            >>> path = os.path.join(tempfile.mkdtemp(), "vocab.json")
            >>> Vocab.build("to be or not to be", level="word").save(path)
            >>> Vocab.load(path).itos
            ['<unk>', 'be', 'to', 'not', 'or']
        """
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a vocabulary (JSON) file: {e}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


# -- corpora ------------------------------------------------------------------------------------
def _read(path: Path, max_chars: Optional[int] = None) -> str:
    # utf-8-sig: a byte-order mark is not text (it would become a vocabulary character).
    # Only the characters wanted are read: the whole file was read, then cut (`inspect`'s
    # default --max-chars 20000 of a 3 GB log needed 3 GB, a MemoryError under a limit)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        return f.read(-1 if max_chars is None else max_chars)


def _check_extensions(extensions) -> tuple:
    """``extensions`` as a tuple of lower-case suffixes, each with its leading dot."""
    # a str was searched as one: ".txt" matched ".t", ".tx" and files without a suffix ("")
    if isinstance(extensions, (str, bytes)) or not isinstance(extensions, Iterable):
        raise TypeError(
            f"extensions: expected a sequence of file suffixes such as ('.txt', '.md'), "
            f"got {extensions!r}"
        )
    out = []
    for e in extensions:
        if not isinstance(e, str):
            raise TypeError(f"extensions: expected str suffixes, got {e!r}")
        # ".TXT" matched nothing (a file's suffix is lower-cased), "txt" nothing (no dot)
        out.append(e.lower() if not e or e.startswith(".") else "." + e.lower())
    return tuple(out)


def default_corpus(max_chars: Optional[int] = 2_000_000) -> str:
    """The built-in corpus: the Python standard library's own ``.py`` sources, found on every
    machine.

    The files under ``sysconfig``'s ``stdlib`` directory (sorted paths; no test directories, no
    site-packages), read as UTF-8 (undecodable bytes replaced, a byte-order mark dropped) and
    joined by newlines. The text depends on the Python version.

    Args:
        max_chars: the most characters returned (default 2,000,000; None: all, tens of MB).

    Raises ``FileNotFoundError`` when the directory holds no sources, ``ValueError`` /
    ``TypeError`` for a negative or non-int ``max_chars``.

    Example::

        >>> from lstm_fast.data import default_corpus
        >>> len(default_corpus(max_chars=1000))
        1000
    """
    _check_max_chars(max_chars)
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    files = sorted(
        p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts[:-1])
    )
    if not files:
        raise FileNotFoundError(f"default corpus: no .py files under {root}")
    return _concat(files, max_chars)


def _concat(files: Sequence[Path], max_chars: Optional[int]) -> str:
    parts, total = [], 0
    for p in files:
        t = _read(p, None if max_chars is None else max_chars - total)
        if max_chars is not None and total + len(t) >= max_chars:
            parts.append(t[: max_chars - total])
            break
        parts.append(t)
        total += len(t) + 1  # the joining newline
    return "\n".join(parts)


def load_corpus(
    path=None,
    *,
    default: bool = False,
    max_chars: Optional[int] = None,
    extensions: Sequence[str] = TEXT_EXTENSIONS,
) -> str:
    """The text to train on: a file, every text file under a directory, or the default corpus.

    Args:
        path: a text file, or a directory whose files with one of ``extensions`` are read
            (recursively, sorted by path, joined by newlines), or a pipe (a named FIFO, a
            shell's ``<(command)``, ``/dev/stdin``), read once as it streams; None: the default
            corpus.
        default: (keyword only) read the default corpus (:func:`default_corpus`) whatever
            ``path`` is (default False).
        max_chars: (keyword only) the most characters returned (default None: all; the default
            corpus: 2,000,000).
        extensions: (keyword only) the file suffixes a directory's files are read by, a
            sequence of str (case-insensitive, the leading dot optional; default
            ``TEXT_EXTENSIONS``: .txt, .py, .md, .rst, .tsv, .csv, .json, .c, .h).

    Files are read as UTF-8, undecodable bytes replaced, a byte-order mark dropped; with
    ``max_chars``, no more of them than that is read. Raises ``FileNotFoundError`` for a path
    that is neither a file, a directory nor a pipe, or a directory without text files, ``TypeError``
    for a ``path`` that is not one or ``extensions`` that are not a sequence of str.

    Example::

        >>> import os, tempfile
        >>> from lstm_fast.data import load_corpus
        >>> d = tempfile.mkdtemp()
        >>> for name, text in [("b.txt", "second"), ("a.txt", "first"), ("c.bin", "skipped")]:
        ...     with open(os.path.join(d, name), "w", encoding="utf-8") as f:
        ...         _ = f.write(text)
        >>> load_corpus(d)
        'first\\nsecond'
        >>> load_corpus(os.path.join(d, "b.txt"), max_chars=3)
        'sec'
    """
    return _load_corpus(path, default, max_chars, extensions)


def _load_corpus(path, default, max_chars, extensions, exclude=None) -> str:
    """:func:`load_corpus`; a directory's files under the directory ``exclude`` are left out
    (:func:`~lstm_fast.models.train_charlm`: the run directory's own JSON files)."""
    _check_max_chars(max_chars)  # a negative one sliced characters off the end
    extensions = _check_extensions(extensions)
    if default or path is None:
        return default_corpus(max_chars if max_chars is not None else 2_000_000)
    if not isinstance(path, (str, bytes, os.PathLike)):  # Path(5) raised unnamed
        raise TypeError(f"corpus: expected None or a path, got {type(path).__name__}")
    if isinstance(path, (str, bytes)) and not path:  # Path("") is ".", the working directory
        raise FileNotFoundError(f"corpus: expected a text file or a directory, got {path!r}")
    p = Path(path)
    if p.is_file() or _is_pipe(p):
        # a pipe (``lstm-fast train <(zcat corpus.gz)``, /dev/stdin, a named FIFO) is read once,
        # as it streams: nothing here needs a second pass over the text
        return _read(p, max_chars)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in extensions)
        if exclude is not None and Path(exclude).is_dir():
            skip = Path(exclude).resolve()
            files = [
                f for f in files if not {skip} & {f.parent.resolve(), *f.parent.resolve().parents}
            ]
        if not files:
            raise FileNotFoundError(f"corpus: no text files ({', '.join(extensions)}) under {p}")
        return _concat(files, max_chars)
    if p.exists():  # a socket or a device (/dev/zero would be read forever)
        raise FileNotFoundError(
            f"corpus: expected a text file, a directory or a pipe, got {str(p)!r} (neither)"
        )
    raise FileNotFoundError(f"corpus: expected a text file or a directory, got {str(p)!r}")


def _is_pipe(path) -> bool:
    """Whether ``path`` is a pipe: a named FIFO, or a shell's process substitution
    (``<(command)``, a ``/dev/fd/N``) or ``/dev/stdin`` fed by a pipe. Such a path can be read
    once only: the text streams through it and is gone."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, unreadable, or no path at all ("a\0b")
        return False


def _check_read_once(**paths) -> None:
    """Raise ``ValueError`` when one pipe (:func:`is_pipe`) is given for two of ``paths``
    (``name=path``, None for one not given): its text can be read once, so the second reader
    would get nothing (or wait forever for a writer)."""
    seen: dict = {}
    for name, path in paths.items():
        if path is None or not _is_pipe(path):
            continue
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ValueError(
                f"{name}: the pipe {os.fspath(path)!r} is {seen[key]} too (a pipe can be read "
                "once only); give a regular file, or one pipe each"
            )
        seen[key] = name


def ids_digest(ids: np.ndarray) -> str:
    """A short fingerprint of a token id array: the first 16 hex digits of the SHA-256 of its
    values (a resumed run checks its corpus has the same one).

    Arrays of the same values have the same digest whatever their dtype (``[1, 2]`` as int64,
    uint8 or float32); different values, different digests: ids that are integers within
    int32 are hashed as int32 (the digest checkpoints hold), other integers as int64 (uint64
    beyond it), and any other float values (0.5, NaN, 1e300) as float64 -- never truncated to
    an integer first. Raises ``TypeError`` for an array that is not of numbers (str, complex,
    object).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.data import ids_digest
        >>> d = ids_digest(np.arange(5))
        >>> len(d), d == ids_digest([0, 1, 2, 3, 4]), d == ids_digest(np.arange(6))
        (16, True, False)
    """
    _check_unmasked("ids", ids)
    a = np.asarray(ids)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"ids: expected an array of integer token ids, got dtype {a.dtype}")
    # (each prefix is 6 bytes and each value 8: such a message is never as long as an int32
    # one, a multiple of 4 bytes, so no array of another kind can share its digest)
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            integral = bool(np.all(np.isfinite(a) & (a == np.trunc(a))))
        if not integral or not (a.size == 0 or -(2.0**63) <= a.min() and a.max() < 2.0**63):
            data = b"f8ids:" + np.ascontiguousarray(a, dtype=np.float64).tobytes()
            return hashlib.sha256(data).hexdigest()[:16]
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if -(2**31) <= lo and hi < 2**31:  # the common case, and the digest saved checkpoints hold
        data = np.ascontiguousarray(a, dtype=np.int32).tobytes()
    elif hi < 2**63:
        data = b"i8ids:" + np.ascontiguousarray(a, dtype=np.int64).tobytes()
    else:  # (uint64 values beyond int64; a float array of them is not integral at that size)
        data = b"u8ids:" + np.ascontiguousarray(a, dtype=np.uint64).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def train_val_split(ids: np.ndarray, val_fraction: float = 0.05):
    """``(train, val)``: the last ``val_fraction`` of ``ids`` held out.

    The split is contiguous (not shuffled), so the validation text is text the model never saw
    in any window; both parts are views of ``ids``.

    Args:
        ids: a sequence or array of token ids (N,).
        val_fraction: the held-out share, in [0, 1) (default 0.05); ``round(N *
            val_fraction)`` ids go to ``val``.

    Raises ``TypeError`` for a non-number and ``ValueError`` for a fraction outside [0, 1).

    Example::

        >>> import numpy as np
        >>> from lstm_fast.data import train_val_split
        >>> train, val = train_val_split(np.arange(20), 0.1)
        >>> len(train), val.tolist()
        (18, [18, 19])
    """
    real = isinstance(val_fraction, (int, float, np.integer, np.floating))
    if not real or isinstance(val_fraction, (bool, np.bool_)):
        raise TypeError(
            f"val_fraction: expected a float in [0, 1), got {type(val_fraction).__name__}"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a float in [0, 1), got {val_fraction}")
    if not hasattr(ids, "__len__") or not hasattr(ids, "__getitem__"):  # (len() failed unnamed)
        raise TypeError(f"ids: expected a sequence or array of token ids, got {type(ids).__name__}")
    n_val = int(round(len(ids) * val_fraction))
    cut = len(ids) - n_val
    return ids[:cut], ids[cut:]


class BPTTBatcher:
    """Truncated-BPTT windows over ``B`` parallel streams.

    The ids are cut into ``B`` contiguous streams of ``n = (len(ids) - 1) // B`` steps; window
    ``k`` holds steps ``[k T, (k + 1) T)`` of every stream, so window ``k + 1`` continues where
    window ``k`` stopped and the caller carries the hidden state across them (and resets it at
    the start of each pass, when ``k % num_windows == 0``, as :func:`~lstm_fast.models.train_charlm`
    does). The last ``len(ids) - 1 - n B`` ids are not used.

    Args:
        ids: token ids (N,), integers in [0, 2**31).
        batch_size: B, the number of parallel streams, >= 1.
        seq_len: T, the steps of a window, >= 1.
        drop_last: use only full windows (default True, for training); False keeps a shorter
            last window (evaluation).
        use_cython: gather windows with the Cython loop (default None: when it is built).

    ``window(k)`` -> ``(x (T, B) int64, y (T, B) int64)``, y the next token of x; ``k`` wraps
    around (``k % num_windows``), so a step counter indexes the data deterministically.
    Iterating yields the windows of one pass.

    Attributes:
        B, T: batch_size and seq_len.  n: steps per stream.  num_windows: windows per pass
        (also ``len(batcher)``).  x, y: the streams (B, n), int32.

    Raises ``TypeError`` for ids that are not a 1-D integer array or a non-int size,
    ``ValueError`` for ids out of range, a size < 1, or too few ids for one window.

    Example::

        >>> import numpy as np
        >>> from lstm_fast.data import BPTTBatcher
        >>> b = BPTTBatcher(np.arange(13), batch_size=2, seq_len=3)
        >>> b.n, len(b), b.tokens_per_window
        (6, 2, 6)
        >>> x, y = b.window(0)
        >>> x.shape, x.dtype
        ((3, 2), dtype('int64'))
        >>> print(x.T)  # the 2 streams, steps 0..2
        [[0 1 2]
         [6 7 8]]
        >>> print(y.T)  # the next tokens
        [[1 2 3]
         [7 8 9]]
        >>> print(b.window(1)[0].T)  # each stream continues
        [[ 3  4  5]
         [ 9 10 11]]
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        drop_last: bool = True,
        use_cython: Optional[bool] = None,
    ):
        _check_unmasked("ids", ids)
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.dtype.kind not in "iu" and arr.size):
            raise TypeError(
                f"ids: expected a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}"
            )
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            raise ValueError(
                f"ids: expected token ids in [0, 2**31), got [{arr.min()}, {arr.max()}]"
            )
        ids = arr.astype(np.int32)
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name}: expected an int >= 1, got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v}")
        if not isinstance(drop_last, (bool, np.bool_)):  # "no" was truthy: drop_last=True
            raise TypeError(f"drop_last: expected True or False, got {drop_last!r}")
        self.B, self.T = int(batch_size), int(seq_len)
        n = (len(ids) - 1) // self.B
        if n < 1 or (drop_last and n < self.T):
            raise ValueError(
                f"ids: {len(ids)} tokens are too few for batch_size={self.B}, seq_len={self.T}"
            )
        self.n = n
        self.x = np.ascontiguousarray(ids[: n * self.B].reshape(self.B, n))
        self.y = np.ascontiguousarray(ids[1 : n * self.B + 1].reshape(self.B, n))
        self.num_windows = n // self.T if drop_last else -(-n // self.T)
        self._cy = _cython(use_cython)

    def __len__(self) -> int:
        return self.num_windows

    @property
    def tokens_per_window(self) -> int:
        """``B * T``, the tokens of a full window."""
        return self.B * self.T

    def window(self, k: int):
        """Window ``k % num_windows``: ``(x, y)``, each (T, B) int64 (fewer steps for a short
        last window), ``y`` the token after each of ``x``. Raises ``TypeError`` for a
        non-int ``k``."""
        if not _is_int(k):  # "1" % n was string formatting; 1.5 a float start
            raise TypeError(f"k: expected an int window index, got {type(k).__name__}")
        k = int(k) % self.num_windows
        s = k * self.T
        t = min(self.T, self.n - s)
        if self._cy:
            return _text.gather_windows(self.x, s, t), _text.gather_windows(self.y, s, t)
        # C-contiguous as the Cython loop's (astype of the transposed view kept its F order)
        return (
            np.ascontiguousarray(self.x[:, s : s + t].T, dtype=np.int64),
            np.ascontiguousarray(self.y[:, s : s + t].T, dtype=np.int64),
        )

    def __iter__(self):
        for k in range(self.num_windows):
            yield self.window(k)


def read_tsv(path, max_rows: Optional[int] = None):
    r"""Read a ``label<TAB>text`` file: ``(labels (N,) int64, texts list of N str)``.

    The text is everything after the first tab (more tabs included, and any carriage return
    ``\r`` within it: a line ends at ``\n`` or ``\r\n`` only). A header -- a first
    non-blank line whose label is not an integer -- is skipped, blank lines (empty or only
    whitespace) are ignored, and a UTF-8 byte-order mark too (undecodable bytes are replaced).
    Labels must be integers (``int()``'s syntax: ``+1``, `` 2``) within int64.

    Args:
        path: the file.
        max_rows: read at most this many rows (default None: all).

    Raises ``ValueError`` naming the file and line for a line without a tab or a label that is
    not an integer (after the first line), and for a negative ``max_rows``.

    Example::

        >>> import os, tempfile
        >>> from lstm_fast.data import read_tsv
        >>> path = os.path.join(tempfile.mkdtemp(), "reviews.tsv")
        >>> with open(path, "w", encoding="utf-8") as f:
        ...     _ = f.write("label\ttext\n1\tgreat film\n\n0\tdull\n")
        >>> labels, texts = read_tsv(path)
        >>> labels.tolist(), texts
        ([1, 0], ['great film', 'dull'])
    """
    if max_rows is not None and (
        isinstance(max_rows, (bool, np.bool_))
        or not isinstance(max_rows, (int, np.integer))
        or max_rows < 0
    ):
        raise ValueError(f"max_rows: expected None or an int >= 0, got {max_rows!r}")
    labels, texts = [], []
    first = True
    # utf-8-sig: a BOM (Windows editors, spreadsheets) would make the first label "\ufeff1".
    # newline="\n": a line ends at "\n" only (its "\r\n" too); Python's universal newlines
    # also ended one at a lone "\r", so a text holding one was cut in two rows (the second
    # "no tab", or a row of its own)
    with open(path, encoding="utf-8-sig", errors="replace", newline="\n") as f:
        for lineno, line in enumerate(f, 1):
            if max_rows is not None and len(texts) >= max_rows:  # (max_rows=0: none)
                break
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):  # one "\r\n" line end (a text's own "\r" before it stays)
                line = line[:-1]
            if not line.strip():  # (a line of spaces, an editor's last one, was "no tab")
                continue
            lab, sep, text = line.partition("\t")
            if not sep:
                raise ValueError(f"{path}:{lineno}: expected 'label<TAB>text'")
            try:
                label = int(lab)
            except ValueError:
                if first:  # the header
                    first = False
                    continue
                raise ValueError(f"{path}:{lineno}: label {lab!r} is not an integer") from None
            first = False
            if not -(2**63) <= label < 2**63:  # np.array(labels, int64) overflowed unnamed
                raise ValueError(
                    f"{path}:{lineno}: label {lab!r} is outside the int64 range [-2**63, 2**63)"
                )
            labels.append(label)
            texts.append(text)
    return np.array(labels, dtype=np.int64), texts
