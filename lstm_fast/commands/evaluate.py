"""Bits per character of a trained char-LM checkpoint on a text file (characters the vocabulary
lacks count as the unknown token)."""

from __future__ import annotations

from . import add_common, emit_json, in_option_terms, int_at_least, set_threads


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="run directory (or checkpoint .npz)")
    parser.add_argument("text", metavar="TEXT", help="UTF-8 text file (or a directory of them)")
    parser.add_argument(
        "--batch-size",
        type=int_at_least(1),
        default=32,
        help="parallel streams (default %(default)s)",
    )
    parser.add_argument(
        "--seq-len",
        type=int_at_least(1),
        default=100,
        help="characters per window (default %(default)s)",
    )
    parser.add_argument(
        "--max-chars",
        type=int_at_least(0),
        default=None,
        help="read at most this many characters (default: all)",
    )
    add_common(parser)


def run(args) -> int:
    import os
    import sys
    import time

    from ..data import TEXT_EXTENSIONS, _load_corpus
    from ..models.charlm import evaluate_bpc, load_charlm

    set_threads(args)
    try:
        model, vocab, _, _ = load_charlm(args.dir)
        # a TEXT directory holding the run: the run's own files (its JSON history and
        # settings) left out, as `train` leaves them out of its corpus
        run_dir = args.dir if os.path.isdir(args.dir) else os.path.dirname(args.dir) or "."
        text = _load_corpus(args.text, False, args.max_chars, TEXT_EXTENSIONS, run_dir)
    except (OSError, ValueError) as e:  # the loader says "corpus": here it is TEXT
        print(f"evaluate: {in_option_terms(e, {'corpus': 'TEXT'})}", file=sys.stderr)
        return 1
    ids = vocab.encode(text)
    if len(ids) < 2:  # bits per character need one character predicted from another
        print(
            f"evaluate: {args.text}: expected at least 2 characters, got {len(ids)}",
            file=sys.stderr,
        )
        return 1
    t = time.perf_counter()
    bpc = evaluate_bpc(model, ids, args.batch_size, args.seq_len)
    dt = time.perf_counter() - t
    unk = float((ids == 0).mean())
    print(
        f"{bpc:.4f} bits/char on {len(ids):,} characters ({unk:.2%} unknown), "
        f"{len(ids) / dt:,.0f} chars/s"
    )
    emit_json(
        args, {"bpc": bpc, "chars": len(ids), "unknown_fraction": unk, "chars_per_s": len(ids) / dt}
    )
    return 0
