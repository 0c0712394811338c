"""Interpretable-cell inspector: record every hidden and cell activation of a char-LM over a text,
rank the units by correlation with simple text features, and render the text coloured by one
unit's activation (HTML and PNG)."""

from __future__ import annotations

import html
import re
from typing import Optional

import numpy as np

from .. import ops
from ._args import check_int

__all__ = ["record_activations", "text_features", "rank_cells", "render_html", "render_png"]

_OPEN, _CLOSE = "([{", ")]}"
_KEYWORDS = ("def", "class", "import", "from", "return", "if", "for", "while", "with", "as")


def record_activations(model, vocab, text: str) -> dict:
    """Every hidden and cell activation of a char-LM over a text: ``{"h": (N, L, H), "c": (N,
    L, H)}``, row n the state after reading character n (eval maths, one stream from zeros).

    Args:
        model: a :class:`~lstm_fast.models.CharLM`.
        vocab: its :class:`~lstm_fast.data.Vocab` (encodes ``text``).
        text: the N characters to read.

    Raises ``ValueError`` for a ``vocab`` larger than the model's ``vocab_size``.
    """
    V = model.config["vocab_size"]
    if len(vocab) > V:  # its last ids failed in NumPy's indexing, naming nothing
        raise ValueError(
            f"vocab: expected at most {V} tokens (the model's vocab_size), got {len(vocab)}"
        )
    ids = vocab.encode(text).astype(np.int64)
    x = np.ascontiguousarray(model.embedding.weight.data[ids][:, None, :])  # (N, 1, E)
    hs, cs = [], []
    rnn = model.rnn
    for k in range(model.config["num_layers"]):
        w = [
            getattr(rnn, f"{n}_l{k}", None)
            for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]
        y, _, _, cache = ops.lstm_forward(
            x, *[None if p is None else p.data for p in w], training=True
        )
        hs.append(y[:, 0, :])
        cs.append(np.asarray(cache.cells)[:, 0, :].copy())
        x = y
    return {"h": np.stack(hs, axis=1), "c": np.stack(cs, axis=1)}


def text_features(text: str) -> dict:
    """Per-character features (float arrays of len(text)), each the state *after reading* the
    character: ``in_quote`` (a '...' / "..." string is open: see :func:`_literals`; typographic
    quotes too), split into ``in_short_string`` (one-quote strings) and ``in_triple_quote``
    (triple-quoted strings, mostly docstrings); ``in_comment`` (in a ``#`` comment, up to its
    newline), ``in_bracket`` (inside ( [ {), ``bracket_depth``, ``position_in_line``,
    ``indentation`` (the line's leading spaces), ``after_keyword`` (in the word after a Python
    keyword). Brackets and keywords inside strings and comments do not count (``"("`` opens
    nothing)."""
    n = len(text)
    # (surrogatepass: a lone surrogate, which a training text may hold, raised UnicodeEncodeError)
    arr = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    newline = arr == ord("\n")
    idx = np.arange(n)
    line_start = np.maximum.accumulate(np.where(newline, idx + 1, 0))
    position = (idx - line_start).astype(np.float64)
    indent = np.zeros(n)
    for m in re.finditer(r"(?m)^( *)", text):  # one match per line
        s, e = m.start(), text.find("\n", m.start())
        indent[s : (n if e < 0 else e + 1)] = len(m.group(1))
    in_quote, in_triple, in_comment, literal = _literals(text)
    # bracket depth: opens minus closes outside literals and comments; a stray close at depth 0
    # is ignored (the depth never goes negative, and later opens count again)
    step = np.isin(arr, [ord(c) for c in _OPEN]).astype(np.int64)
    step -= np.isin(arr, [ord(c) for c in _CLOSE])
    step[literal] = 0
    depth = np.zeros(n)
    d, start = 0, 0
    for i in np.flatnonzero(step):
        depth[start:i] = d
        d = max(d + int(step[i]), 0)
        start = i  # character i reads the new depth
    depth[start:] = d
    after_kw = np.zeros(n)
    kw = re.compile(r"\b(?:" + "|".join(_KEYWORDS) + r") +(\w+)")
    for m in kw.finditer(text):
        if not literal[m.start(1)]:
            after_kw[m.start(1) : m.end(1)] = 1.0
    return {
        "in_quote": in_quote,
        "in_short_string": in_quote - in_triple,
        "in_triple_quote": in_triple,
        "in_comment": in_comment,
        "in_bracket": (depth > 0).astype(np.float64),
        "bracket_depth": depth,
        "position_in_line": position,
        "indentation": indent,
        "after_keyword": after_kw,
    }


# One alternative per literal kind, tried left to right from each position: a comment consumes its
# line (so an apostrophe in it opens nothing), a string consumes its escapes (so \" does not
# close it). Triple quotes may run to the end of the text (an excerpt cut inside a docstring).
_LITERAL = re.compile(
    r'"""(?:\\[\s\S]|[^\\])*?(?:"""|\Z)'
    r"|'''(?:\\[\s\S]|[^\\])*?(?:'''|\Z)"
    r'|"(?:\\[\s\S]|[^"\\\n])*"'
    r"|'(?:\\[\s\S]|[^'\\\n])*'"
    r"|“[^”]*”|‘[^’]*’|「[^」]*」"
    r"|#[^\n]*"
)


def _literals(text: str):
    """``(in_quote, in_triple, in_comment, literal)`` for each character of ``text``.

    ``in_quote`` is 1.0 where a string literal is open *after reading* the character: from the
    opening quote up to, not including, the last character of the closing delimiter (so the
    closing quote reads 0, as the state a char-LM has after reading it). Triple quotes,
    backslash escapes (also an escaped newline) and comments are handled; string prefixes
    (r, b, f) are outside. ``in_triple`` is the part of ``in_quote`` in triple-quoted strings
    (docstrings, mostly). ``in_comment`` is 1.0 from a ``#`` (outside strings) to the end of its
    line, the newline excluded. ``literal`` (bool) marks every character of a string (its quotes
    included) or comment."""
    n = len(text)
    in_quote, in_triple, in_comment = np.zeros(n), np.zeros(n), np.zeros(n)
    literal = np.zeros(n, bool)
    for m in _LITERAL.finditer(text):
        lit = m.group(0)
        s, e = m.span()
        literal[s:e] = True
        if lit.startswith("#"):
            in_comment[s:e] = 1.0
            continue
        triple = lit[:3] in ('"""', "'''")
        closed = not triple or (len(lit) >= 6 and lit.endswith(lit[:3]))
        in_quote[s : e - 1 if closed else e] = 1.0
        if triple:
            in_triple[s : e - 1 if closed else e] = 1.0
    return in_quote, in_triple, in_comment, literal


def _corr(acts: np.ndarray, feat: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of acts (N, U) with feat (N,); 0 where constant."""
    if not len(acts):  # no rows: no correlation (the means warned "Mean of empty slice")
        return np.zeros(acts.shape[1])
    a = acts - acts.mean(0)
    f = feat - feat.mean()
    den = np.sqrt((a * a).sum(0) * (f * f).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * f[:, None]).sum(0) / den
    return np.nan_to_num(r)


def rank_cells(acts: dict, feats: dict, top: int = 5) -> dict:
    """``{feature: [{"kind", "layer", "unit", "index", "r"}, ...]}``: for each feature, the
    ``top`` units (default 5, >= 1) whose activations correlate most with it, by |Pearson r|.

    ``acts`` is :func:`record_activations`' dict, ``feats`` ``{name: (N,) array}`` (as
    :func:`text_features` gives). ``index`` numbers units as in ``--cell``: kind c before h,
    layer by layer (L*H each). Raises ``ValueError`` for a ``top`` < 1."""
    check_int("top", top, 1)  # 0 left every list empty, -1 listed all units but one
    out = {}
    N, L, H = acts["c"].shape
    series = np.concatenate(  # (reshape(N, -1) failed for N = 0)
        [acts["c"].reshape(N, L * H), acts["h"].reshape(N, L * H)], axis=1
    ).astype(np.float64)
    for name, f in feats.items():
        r = _corr(series, f)
        best = np.argsort(-np.abs(r))[:top]
        rows = []
        for j in best:
            kind = "c" if j < L * H else "h"
            jj = j % (L * H)
            rows.append(
                {
                    "kind": kind,
                    "layer": int(jj // H),
                    "unit": int(jj % H),
                    "index": int(j),
                    "r": float(r[j]),
                }
            )
        out[name] = rows
    return out


def unit_series(acts: dict, index: int) -> np.ndarray:
    """The activations (N,) of unit ``index`` of ``acts`` (:func:`record_activations`'), in
    :func:`rank_cells`' numbering: c units first, then h, layer by layer. Raises
    ``ValueError`` for an ``index`` outside [0, 2 L H)."""
    L, H = acts["c"].shape[1:]
    # (one past the last unit wrapped around to another, and -1 read the last c unit)
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
        raise ValueError(f"index: expected an int in [0, {2 * L * H}), got {index!r}")
    if not 0 <= index < 2 * L * H:
        raise ValueError(f"index: expected an int in [0, {2 * L * H}), got {index}")
    kind = "c" if index < L * H else "h"
    j = index % (L * H)
    return acts[kind][:, j // H, j % H]


def _check_values(text: str, values) -> np.ndarray:
    """``values`` as a float array (N,) for the N characters of ``text``: zip() cut the longer
    one silently, and an empty text failed in max()."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(text),):
        raise ValueError(
            f"values: expected shape (N={len(text)},), one per character of text, "
            f"got {values.shape}"
        )
    return values


def _colour(v: float) -> str:
    """Blue (-1) to white (0) to red (+1)."""
    v = float(np.clip(v, -1, 1))
    if v >= 0:
        g = int(255 * (1 - v))
        return f"rgb(255,{g},{g})"
    g = int(255 * (1 + v))
    return f"rgb({g},{g},255)"


def render_html(text: str, values: np.ndarray, title: str = "") -> str:
    """An HTML page of ``text`` with each character's background coloured by its entry of
    ``values`` (N,) (divided by their largest magnitude: blue -1, white 0, red +1), under the
    heading ``title`` (default none). Raises ``ValueError`` unless ``values`` has one entry
    per character."""
    values = _check_values(text, values)
    scale = max(float(np.abs(values).max(initial=0.0)), 1e-6)
    spans = []
    for ch, v in zip(text, values / scale):
        c = html.escape(ch) if ch != "\n" else "↵<br>"
        spans.append(f'<span style="background:{_colour(v)}">{c}</span>')
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title></head><body><h3>"
        + html.escape(title)
        + "</h3><pre style='font-family:monospace;line-height:1.4'>"
        + "".join(spans)
        + "</pre></body></html>\n"
    )


def render_png(
    path, text: str, values: np.ndarray, title: str = "", width: int = 80, max_lines: int = 40
) -> Optional[str]:
    """Write a PNG to ``path``: ``text`` as a character grid (``width`` columns, default 80,
    long lines wrapped, at most ``max_lines`` lines, default 40) coloured by ``values`` (N,)
    as :func:`render_html`, titled ``title``; returns the path. Needs matplotlib."""
    values = _check_values(text, values)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = max(float(np.abs(values).max(initial=0.0)), 1e-6)
    rows, cur, vals, vcur = [], [], [], []
    for ch, v in zip(text, values / scale):
        if ch == "\n" or len(cur) >= width:
            rows.append(cur)
            vals.append(vcur)
            cur, vcur = [], []
            if ch == "\n":
                continue
        cur.append(ch)
        vcur.append(v)
    rows.append(cur)
    vals.append(vcur)
    rows, vals = rows[:max_lines], vals[:max_lines]
    grid = np.full((len(rows), width), np.nan)
    for i, vr in enumerate(vals):
        grid[i, : len(vr)] = vr
    fig, ax = plt.subplots(figsize=(width * 0.11 + 0.5, len(rows) * 0.22 + 0.8))
    ax.imshow(grid, cmap="bwr", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    for i, r in enumerate(rows):
        for j, ch in enumerate(r):
            if not ch.isspace():
                ax.text(j, i, ch, ha="center", va="center", fontsize=7, family="monospace")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
