"""Generate text from a trained char-LM: temperature (0: greedy), top-k filtering and a priming
string."""

from __future__ import annotations

from . import add_common, emit_json, non_negative_int, number, set_threads


def add_arguments(parser) -> None:
    parser.add_argument("dir", metavar="DIR", help="run directory (or checkpoint .npz)")
    parser.add_argument(
        "--length", type=non_negative_int, default=500, help="characters to generate"
    )
    parser.add_argument(
        "--temperature",
        type=number,
        default=0.8,
        help="softmax temperature; 0 picks the most likely character",
    )
    parser.add_argument(
        "--top-k",
        type=non_negative_int,
        default=0,
        help="sample among the k most likely characters (0: all)",
    )
    parser.add_argument("--prime", default="\n", help="text fed to the model first")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the draws (default %(default)s)"
    )
    add_common(parser)


def run(args) -> int:
    import sys
    import time

    from ..models.charlm import load_charlm, sample_text

    try:  # bytes that are not UTF-8 arrive as lone surrogates (the console then failed on them)
        args.prime.encode("utf-8")
    except UnicodeEncodeError as e:
        print(
            f"sample: --prime: expected UTF-8 text, got a byte that is not UTF-8 at character "
            f"{e.start} ({args.prime[e.start : e.end]!r})",
            file=sys.stderr,
        )
        return 2
    set_threads(args)
    try:
        model, vocab, _, _ = load_charlm(args.dir)
    except (OSError, ValueError) as e:
        print(f"sample: {e}", file=sys.stderr)
        return 1
    t = time.perf_counter()
    text = sample_text(
        model, vocab, args.length, args.temperature, args.top_k, args.prime, args.seed
    )
    dt = time.perf_counter() - t
    if args.json:
        emit_json(
            args,
            {
                "text": args.prime + text,
                "chars": len(text),
                "chars_per_s": len(text) / dt if dt else None,
            },
        )
    else:
        print(args.prime + text)
    return 0
