"""Find interpretable cells of a trained char-LM: record every hidden (h) and cell (c) activation
over TEXT, rank units by correlation with text features (inside quotes, split into one-quote
strings and triple-quoted ones; inside a comment; inside brackets, bracket depth; position in
line, indentation, after a keyword), and write TEXT coloured by one unit's activation as HTML
(--out) and PNG (same name, .png; needs matplotlib). Without --cell, the unit most correlated
with --feature (default in_quote) is shown."""

from __future__ import annotations

from . import add_common, emit_json, in_option_terms, int_at_least, set_threads


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="char-LM run directory")
    parser.add_argument("text", metavar="TEXT", help="UTF-8 text file to read")
    parser.add_argument(
        "--out", required=True, metavar="FILE.html", help="HTML to write (the PNG goes beside it)"
    )
    parser.add_argument(
        "--cell",
        type=int,
        default=None,
        help="unit index to render (c units 0..L*H-1, then h units)",
    )
    parser.add_argument(
        "--feature", default="in_quote", help="feature whose best unit is rendered without --cell"
    )
    parser.add_argument(
        "--max-chars", type=int_at_least(1), default=20000, help="characters read (>= 1)"
    )
    parser.add_argument(
        "--top", type=int_at_least(1), default=3, help="units listed per feature (>= 1)"
    )
    parser.add_argument(
        "--png-chars", type=int_at_least(1), default=2000, help="characters drawn in the PNG"
    )
    parser.add_argument(
        "--png-start",
        type=int,
        default=0,
        help="offset of the first character drawn in the PNG (the correlations always use "
        "all of TEXT; default %(default)s)",
    )
    add_common(parser)


def _output_problem(path) -> str | None:
    """Why ``path`` cannot be written as a file (None when it can, as far as can be told)."""
    import os
    from pathlib import Path

    if path.is_dir():
        return f"expected a file path, got the directory {str(path)!r}"
    if path.is_symlink() and not path.exists():  # written through: its target's directory
        target = Path(os.path.realpath(path))
        if not target.parent.is_dir():  # (failed after the activations had been recorded)
            return (
                f"{str(path)!r} is a symbolic link to {str(target)!r}, whose directory does "
                "not exist"
            )
    parent = path.parent
    if not parent.is_dir():
        return f"directory {str(parent)!r} does not exist"
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"{str(path)!r} is not writable"
    return None


def run(args) -> int:
    import os
    import sys
    from pathlib import Path

    from ..data import TEXT_EXTENSIONS, _load_corpus
    from ..models import inspect as ins
    from ..models.charlm import load_charlm

    def usage_error(msg: str) -> int:
        print(f"inspect: {msg}", file=sys.stderr)
        return 2

    set_threads(args)
    out = Path(args.out)
    png_out = out.with_suffix(".png")
    if png_out == out:  # the PNG would overwrite the HTML
        return usage_error(f"--out: expected an .html path (the PNG goes beside it), got {out}")
    # everything is checked before the activations are recorded or a file is written
    for opt, path in (("--out", out), ("--out (its .png)", png_out)):
        problem = _output_problem(path)
        if problem:
            return usage_error(f"{opt}: {problem}")
    try:
        model, vocab, _, _ = load_charlm(args.dir)
        # a TEXT directory holding the run: the run's own files (its JSON history and
        # settings) left out, as `train` leaves them out of its corpus
        run_dir = args.dir if os.path.isdir(args.dir) else os.path.dirname(args.dir) or "."
        text = _load_corpus(args.text, False, args.max_chars, TEXT_EXTENSIONS, run_dir)
    except (OSError, ValueError) as e:  # the loader says "corpus": here it is TEXT
        print(f"inspect: {in_option_terms(e, {'corpus': 'TEXT'})}", file=sys.stderr)
        return 1
    if len(text) < 2:  # correlations need two characters (an empty text crashed a reshape)
        print(
            f"inspect: {args.text}: expected at least 2 characters, got {len(text)}",
            file=sys.stderr,
        )
        return 1
    L, H = model.config["num_layers"], model.config["hidden_size"]
    if args.cell is not None and not 0 <= args.cell < 2 * L * H:
        return usage_error(f"--cell: expected 0 <= N < {2 * L * H}, got {args.cell}")
    if not 0 <= args.png_start < len(text):
        return usage_error(
            f"--png-start: expected 0 <= N < {len(text)} (characters read), got {args.png_start}"
        )
    try:  # the PNG needs matplotlib; without it the HTML is still written
        import matplotlib  # noqa: F401
    except ImportError:
        png_out = None
        print(
            "inspect: no PNG: matplotlib is not installed (pip install matplotlib, or the "
            "'train' extra: pip install 'lstm_fast[train]')",
            file=sys.stderr,
        )
    feats = ins.text_features(text)
    if args.feature not in feats:
        return usage_error(f"--feature: expected one of {sorted(feats)}, got {args.feature}")
    acts = ins.record_activations(model, vocab, text)
    ranking = ins.rank_cells(acts, feats, args.top)
    for name, rows in ranking.items():
        best = ", ".join(
            f"{r['kind']}[{r['layer']}][{r['unit']}] (#{r['index']}) r={r['r']:+.3f}" for r in rows
        )
        print(f"{name:>17}: {best}")
    index = args.cell if args.cell is not None else ranking[args.feature][0]["index"]
    values = ins.unit_series(acts, index)
    r = {k: float(ins._corr(values[:, None].astype(float), f)[0]) for k, f in feats.items()}
    kind = "c" if index < L * H else "h"
    title = f"unit #{index} ({kind}, layer {(index % (L * H)) // H}, unit {index % H})"
    try:
        out.write_text(ins.render_html(text, values, title), encoding="utf-8")
        png = None
        if png_out is not None:
            window = slice(args.png_start, args.png_start + args.png_chars)
            png = ins.render_png(png_out, text[window], values[window], title)
    except OSError as e:
        print(f"inspect: --out: {e}", file=sys.stderr)
        return 1
    print(f"unit #{index}: {out}" + (f" and {png}" if png else ""))
    emit_json(
        args,
        {
            "cell": index,
            "correlations": r,
            "html": str(out),
            "png": png,
            "best": {k: v[0] for k, v in ranking.items()},
        },
    )
    return 0
