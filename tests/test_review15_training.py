"""Edge cases found in the fifteenth review, training layer: a vocabulary size limit smaller than
the special tokens it includes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lstm_fast import data


# -- data -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize(
    ("max_size", "pad", "want"),
    [
        (0, False, ">= 1, the number of special tokens (unknown) the vocabulary includes, got 0"),
        (
            0,
            True,
            ">= 2, the number of special tokens (unknown, pad) the vocabulary includes, got 0",
        ),
        (
            np.int64(1),
            True,
            ">= 2, the number of special tokens (unknown, pad) the vocabulary includes, got 1",
        ),
    ],
    ids=["0", "0-pad", "1-pad"],
)
def test_vocab_max_size_below_the_special_tokens_is_refused(level, max_size, pad, want):
    """``max_size`` is documented as the largest vocabulary, specials included, but a limit
    below the specials' count was ignored: ``max_size=0`` gave 1 token, ``max_size=1,
    pad=True`` gave 2. Now a ValueError names the limit, the specials and the value given; a
    limit equal to their count still gives the specials alone."""
    text = "to be or not to be"
    with pytest.raises(
        ValueError, match="^" + re.escape(f"max_size: expected an int {want}") + "$"
    ):
        data.Vocab.build(text, level=level, max_size=max_size, pad=pad)
    v = data.Vocab.build(text, level=level, max_size=1 + pad, pad=pad)
    assert v.itos[1:] == ["<pad>"][:pad]
    assert v.encode("to be").tolist() == [0] * len(v.tokenize("to be"))


@pytest.mark.parametrize("use_cython", [None, False])
def test_vocab_max_size_is_checked_before_the_text_is_counted(monkeypatch, use_cython):
    """The refusal comes before any counting (a large corpus is not read through first)."""

    def counted(*args, **kwargs):
        raise AssertionError("the text was counted")

    monkeypatch.setattr(data, "_py_count_codepoints", counted)
    if data._text is not None:
        monkeypatch.setattr(data._text, "count_codepoints", counted)
    with pytest.raises(ValueError, match=r"^max_size: expected an int >= 2, "):
        data.Vocab.build("abc" * 1000, max_size=1, pad=True, use_cython=use_cython)
