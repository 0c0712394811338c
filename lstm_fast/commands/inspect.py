"""Find interpretable cells of a trained char-LM: record every hidden (h) and cell (c) activation
over TEXT, rank units by correlation with text features (inside quotes, split into one-quote
strings and triple-quoted ones; inside a comment; inside brackets, bracket depth; position in
line, indentation, after a keyword), and write TEXT coloured by one unit's
activation as HTML (--out) and PNG (same name, .png). Without --cell, the unit most correlated
with --feature (default in_quote) is shown."""

from __future__ import annotations

from . import add_common, emit_json, set_threads


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="char-LM run directory")
    parser.add_argument("text", metavar="TEXT", help="UTF-8 text file to read")
    parser.add_argument("--out", required=True, metavar="FILE.html")
    parser.add_argument(
        "--cell",
        type=int,
        default=None,
        help="unit index to render (c units 0..L*H-1, then h units)",
    )
    parser.add_argument(
        "--feature", default="in_quote", help="feature whose best unit is rendered without --cell"
    )
    parser.add_argument("--max-chars", type=int, default=20000, help="characters read")
    parser.add_argument("--top", type=int, default=3, help="units listed per feature")
    parser.add_argument("--png-chars", type=int, default=2000, help="characters drawn in the PNG")
    parser.add_argument(
        "--png-start",
        type=int,
        default=0,
        help="offset of the first character drawn in the PNG (the correlations always use "
        "all of TEXT; default %(default)s)",
    )
    add_common(parser)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..data import load_corpus
    from ..models import inspect as ins
    from ..models.charlm import load_charlm

    set_threads(args)
    try:
        model, vocab, _, _ = load_charlm(args.dir)
        text = load_corpus(args.text, max_chars=args.max_chars)
    except (FileNotFoundError, ValueError) as e:
        print(f"inspect: {e}", file=sys.stderr)
        return 1
    acts = ins.record_activations(model, vocab, text)
    feats = ins.text_features(text)
    if args.feature not in feats:
        print(
            f"inspect: --feature: expected one of {sorted(feats)}, got {args.feature}",
            file=sys.stderr,
        )
        return 2
    ranking = ins.rank_cells(acts, feats, args.top)
    for name, rows in ranking.items():
        best = ", ".join(
            f"{r['kind']}[{r['layer']}][{r['unit']}] (#{r['index']}) r={r['r']:+.3f}" for r in rows
        )
        print(f"{name:>17}: {best}")
    index = args.cell if args.cell is not None else ranking[args.feature][0]["index"]
    L, H = acts["c"].shape[1:]
    if not 0 <= index < 2 * L * H:
        print(f"inspect: --cell: expected 0 <= N < {2 * L * H}, got {index}", file=sys.stderr)
        return 2
    if not 0 <= args.png_start < len(text):
        print(
            f"inspect: --png-start: expected 0 <= N < {len(text)} (characters read), "
            f"got {args.png_start}",
            file=sys.stderr,
        )
        return 2
    values = ins.unit_series(acts, index)
    r = {k: float(ins._corr(values[:, None].astype(float), f)[0]) for k, f in feats.items()}
    kind = "c" if index < L * H else "h"
    title = f"unit #{index} ({kind}, layer {(index % (L * H)) // H}, unit {index % H})"
    out = Path(args.out)
    out.write_text(ins.render_html(text, values, title), encoding="utf-8")
    window = slice(args.png_start, args.png_start + args.png_chars)
    png = ins.render_png(out.with_suffix(".png"), text[window], values[window], title)
    print(f"unit #{index}: {out} and {png}")
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
