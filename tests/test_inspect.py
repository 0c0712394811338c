"""The inspector's ``in_quote`` feature: the state after reading each character."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_fast.models import inspect as ins


def _marks(text: str) -> str:
    """``in_quote`` as a string of 0/1, one per character, for readable assertions."""
    return "".join(str(int(v)) for v in ins.text_features(text)["in_quote"])


@pytest.mark.parametrize(
    "text, want",
    [
        # the opening quote is inside, the closing one is not (the string is closed after it)
        ('a="xy"+b', "00111000"),
        ("a='xy'", "001110"),
        # an escaped quote does not close the string; an escaped backslash does not escape
        (r'"a\"b"', "111110"),
        (r'"a\\"b', "111100"),
        # empty strings: open only while the first quote is read
        ('""+x', "1000"),
        # prefixes are outside; the quote is where the string opens
        ('f"{x}"', "011110"),
        # triple quotes: inside until the last closing quote, apostrophes and " inside them too
        ('"""it\'s "x" """.', "1" * 14 + "00"),
        ("'''a'b'''", "11111111" + "0"),
        # a comment's apostrophe opens nothing; a # inside a string is no comment
        ("# don't\nx='#'\n", "0" * 8 + "001100"),
        # a backslash-newline continues a single-quoted string
        ('"a\\\nb"', "111110"),
    ],
)
def test_in_quote_marks(text, want):
    assert len(want) == len(text)
    assert _marks(text) == want


def test_in_quote_unterminated_triple_runs_to_the_end():
    """An excerpt cut inside a docstring: the string is still open at the end."""
    text = 'x = 1\n"""Doc that is cut'
    q = ins.text_features(text)["in_quote"]
    start = text.index('"""')
    assert not q[:start].any() and q[start:].all()


def test_in_quote_lines_with_both_kinds():
    text = "d = {'k': \"v\", 'n': 2}  # it's\n"
    q = ins.text_features(text)["in_quote"]
    inside = [i for i in range(len(text)) if q[i]]
    assert "".join(text[i] for i in inside) == "'k\"v'n"
    assert q[text.index("it's") :].sum() == 0


def test_in_quote_correlates_with_a_state_that_opens_and_closes():
    """A unit that flips at every quote character (the ideal quote cell, as a char-LM state
    after reading each character) correlates perfectly with ``in_quote``."""
    text = "f('a', \"bc\", 'd') + g('')\n"
    state, open_ = [], None
    for ch in text:
        if open_ is None and ch in "'\"":
            open_ = ch
        elif ch == open_:
            open_ = None
        state.append(0.0 if open_ is None else 1.0)
    acts = {"c": np.zeros((len(text), 1, 1)), "h": np.array(state)[:, None, None]}
    best = ins.rank_cells(acts, {"in_quote": ins.text_features(text)["in_quote"]}, 1)
    assert best["in_quote"][0]["r"] == pytest.approx(1.0)


def test_brackets_in_strings_and_comments_do_not_count():
    """``if c in '([{':`` must not leave the rest of the file at depth 3."""
    text = "if c in '([{':  # (\n    f(a[1], ')')\nx\n"
    f = ins.text_features(text)
    depth = f["bracket_depth"]
    assert depth[text.index("'([{'") + 4] == 0 and depth[text.index("#") + 2] == 0
    assert depth[text.index("f(")] == 0 and depth[text.index("f(") + 1] == 1  # after "("
    assert depth[text.index("1")] == 2 and depth[text.index("]")] == 1
    assert depth[text.index("')'")] == 1 and depth[text.index("')'") + 3] == 0
    assert depth[text.index("\nx") + 1] == 0
    np.testing.assert_array_equal(f["in_bracket"], depth > 0)


def test_bracket_depth_ignores_a_stray_close():
    text = "a)(b"
    np.testing.assert_array_equal(ins.text_features(text)["bracket_depth"], [0, 0, 1, 1])


def test_in_comment_and_keywords_outside_literals():
    text = "x = 1  # it's from here\n'import os'\nimport sys\n"
    f = ins.text_features(text)
    c = "".join(str(int(v)) for v in f["in_comment"])
    start, end = text.index("#"), text.index("\n")
    assert c == "0" * start + "1" * (end - start) + "0" * (len(text) - end)
    kw = [text[i] for i in np.flatnonzero(f["after_keyword"])]
    assert "".join(kw) == "sys"  # not "here" (comment) nor "os" (string)


def test_in_quote_splits_into_short_and_triple():
    text = 'def f():\n    """Doc "q"."""\n    return "s", \'t\'\n'
    f = ins.text_features(text)
    np.testing.assert_array_equal(f["in_short_string"] + f["in_triple_quote"], f["in_quote"])
    tri = "".join(text[i] for i in np.flatnonzero(f["in_triple_quote"]))
    short = "".join(text[i] for i in np.flatnonzero(f["in_short_string"]))
    assert tri == '"""Doc "q".""' and short == "\"s't"
