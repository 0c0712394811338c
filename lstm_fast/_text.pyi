"""Type stub of lstm_fast._text, the Cython loops of the data pipeline (lstm_fast/_text.pyx).

lstm_fast.data holds the plain-Python equivalents. tests/test_stubs.py checks this file against
the compiled module.
"""

import numpy as np
from numpy.typing import NDArray

def count_codepoints(text: str) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(code points (K,), counts (K,)) of the characters of text, code points ascending."""

def encode_codepoints(text: str, table: NDArray[np.int32], unk: int) -> NDArray[np.int32]:
    """ids (len(text),): table[ord(ch)] per character; unk past the table or where it holds -1."""

def encode_tokens(tokens: list[str], stoi: dict[str, int], unk: int) -> NDArray[np.int32]:
    """ids (len(tokens),) of stoi[token], unk for tokens not in stoi."""

def featurize(
    docs: list[str], index: dict[str, int], grow: bool, char_n: int, word_n: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(indptr (D+1,), ids (nnz,)): word 1..word_n-grams ("w:") and char 1..char_n-grams ("c:")
    of each document in CSR form; index grows with unseen features when grow."""

def gather_windows(streams: NDArray[np.int32], start: int, length: int) -> NDArray[np.int64]:
    """streams[:, start:start + length].T as a C-contiguous (length, B) array; streams (B, n)."""
