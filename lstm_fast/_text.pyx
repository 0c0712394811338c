# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython: the per-token loops of lstm_fast's data pipeline.

* :func:`count_codepoints` — character counts of a str (vocabulary building);
* :func:`encode_codepoints` — a str to int32 ids through a code-point lookup table;
* :func:`encode_tokens` — a list of str tokens to int32 ids through a dict;
* :func:`featurize` — word and character n-gram features of documents in CSR form
  (Naive Bayes counting);
* :func:`gather_windows` — BPTT windows of B parallel streams.

:mod:`lstm_fast.data` holds the plain-Python equivalents (used when this module is not built, and
by the benchmark that measures what this one gains).
"""

import numpy as np  # Python-level only: memoryviews need no NumPy headers

from libc.stdint cimport int32_t, int64_t
from cpython.unicode cimport PyUnicode_GET_LENGTH, PyUnicode_READ_CHAR


def count_codepoints(str text):
    """``(codepoints int64 (K,), counts int64 (K,))`` of the characters in ``text``, ascending."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i
    counts = np.zeros(0x110000, dtype=np.int64)
    cdef int64_t[::1] c = counts
    for i in range(n):
        c[PyUnicode_READ_CHAR(text, i)] += 1
    cps = np.flatnonzero(counts)
    return cps.astype(np.int64), counts[cps]


def encode_codepoints(str text, int32_t[::1] table, int unk):
    """ids (int32, len(text)): ``table[ord(ch)]`` for each character; ``unk`` past the table or
    where the table holds -1."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(text), i, size = table.shape[0]
    cdef Py_UCS4 cp
    cdef int v
    out = np.empty(n, dtype=np.int32)
    cdef int32_t[::1] o = out
    for i in range(n):
        cp = PyUnicode_READ_CHAR(text, i)
        if <Py_ssize_t>cp < size:
            v = table[cp]
            o[i] = unk if v < 0 else v
        else:
            o[i] = unk
    return out


def encode_tokens(list tokens, dict stoi, int unk):
    """ids (int32, len(tokens)) of ``stoi[token]``, ``unk`` for tokens not in ``stoi``."""
    cdef Py_ssize_t n = len(tokens), i
    out = np.empty(n, dtype=np.int32)
    cdef int32_t[::1] o = out
    cdef object v
    for i in range(n):
        v = stoi.get(tokens[i])
        o[i] = unk if v is None else <int>v
    return out


cdef inline void _add(dict index, bint grow, object feat, list ids):
    v = index.get(feat)
    if v is None:
        if not grow:
            return
        v = len(index)
        index[feat] = v
    ids.append(v)


def featurize(list docs, dict index, bint grow, int char_n, int word_n):
    """Bag-of-features of each document, in CSR form.

    Features: word n-grams for n = 1..word_n (whitespace tokens, joined by a space, prefixed
    ``"w:"``) and character n-grams for n = 1..char_n (prefixed ``"c:"``; spaces count).
    ``index`` maps feature -> id and grows with unseen features when ``grow`` (else they are
    dropped). Returns ``(indptr int64 (D+1,), ids int64 (nnz,))``: document d's feature ids (with
    repeats) are ``ids[indptr[d]:indptr[d + 1]]``.
    """
    cdef Py_ssize_t d, i, n, L, nw
    cdef list ids = []
    indptr = np.empty(len(docs) + 1, dtype=np.int64)
    cdef int64_t[::1] ip = indptr
    ip[0] = 0
    cdef str doc
    cdef list words
    for d in range(len(docs)):
        doc = docs[d]
        words = doc.split()
        nw = len(words)
        for n in range(1, word_n + 1):
            for i in range(nw - n + 1):
                _add(index, grow, "w:" + " ".join(words[i:i + n]), ids)
        L = PyUnicode_GET_LENGTH(doc)
        for n in range(1, char_n + 1):
            for i in range(L - n + 1):
                _add(index, grow, "c:" + doc[i:i + n], ids)
        ip[d + 1] = len(ids)
    return indptr, np.asarray(ids, dtype=np.int64)


def gather_windows(int32_t[:, ::1] streams, start, length):
    """``streams[:, start:start + length].T`` as a C-contiguous (length, B) int64 array.

    ``start`` and ``length`` are ints with ``0 <= start`` and ``start + length <= n`` (n =
    ``streams.shape[1]``); anything else raises (the loop below reads without bounds checks).
    """
    cdef Py_ssize_t B = streams.shape[0], n = streams.shape[1], t, b, s, L
    for name, v in (("start", start), ("length", length)):
        if isinstance(v, bool) or not hasattr(type(v), "__index__"):
            raise TypeError(f"gather_windows: {name}: expected an int, got {type(v).__name__}")
    if not (0 <= start <= n and 0 <= length <= n - start):
        raise ValueError(
            f"gather_windows: start, length: expected 0 <= start and start + length <= n={n} "
            f"(the streams' length), got start={start}, length={length}"
        )
    s, L = start, length
    out = np.empty((L, B), dtype=np.int64)
    cdef int64_t[:, ::1] o = out
    for t in range(L):
        for b in range(B):
            o[t, b] = streams[b, s + t]
    return out
