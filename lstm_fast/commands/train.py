"""Train a character-level LSTM language model on a text file, a directory of text files, or the
built-in default corpus (the Python standard library's own source code).

Writes DIR/checkpoint.npz (weights, optimizer state, data position; atomic), DIR/config.json,
DIR/vocab.json and DIR/loss.png (with matplotlib). Ctrl-C writes a checkpoint; `--resume`
continues exactly where the run stopped (the checkpoint's configuration wins; only --steps may be
raised; CORPUS is read where it is given, and must hold the text the run was trained on).
"""

from __future__ import annotations

from . import add_common, emit_json, in_option_terms, int_at_least, option_names, set_threads


def add_arguments(parser) -> None:
    parser.add_argument(
        "corpus",
        nargs="?",
        metavar="CORPUS",
        help="a UTF-8 text file, a directory of them, or a pipe (<(zcat corpus.gz), read once)",
    )
    parser.add_argument(
        "--default-corpus",
        action="store_true",
        help="train on the Python standard library's source code",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory")
    parser.add_argument(
        "--max-chars",
        type=int_at_least(1),
        default=None,
        help="use at most this many characters of the corpus (default corpus: 2,000,000)",
    )
    parser.add_argument(
        "--embed-size", type=int, default=64, help="character embedding size (default %(default)s)"
    )
    parser.add_argument(
        "--hidden-size", type=int, default=256, help="LSTM hidden size H (default %(default)s)"
    )
    parser.add_argument(
        "--num-layers", type=int, default=2, help="stacked LSTM layers (default %(default)s)"
    )
    parser.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout between LSTM layers and before the decoder (default %(default)s)",
    )
    parser.add_argument(
        "--seq-len", type=int, default=100, help="truncated-BPTT window T (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="parallel streams B (default %(default)s)"
    )
    parser.add_argument(
        "--steps", type=int, default=1000, help="total optimizer steps (default %(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "adamw", "sgd", "adagrad", "rmsprop"],
        help="(default %(default)s)",
    )
    parser.add_argument(
        "--clip", type=float, default=5.0, help="gradient-norm clip (0: off; default %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights and the dropout masks (default %(default)s)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="tail of the corpus held out for validation (default %(default)s)",
    )
    parser.add_argument(
        "--val-every", type=int, default=200, help="validate every N steps (default %(default)s)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=200,
        help="write a checkpoint every N steps (and at the end; default %(default)s)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from DIR/checkpoint.npz if present"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(parser)


def run(args) -> int:
    import sys

    from ..models.charlm import TrainConfig, train_charlm

    if args.corpus is None and not args.default_corpus:
        print("train: give CORPUS (a file or directory) or --default-corpus", file=sys.stderr)
        return 2
    if args.corpus is not None and args.default_corpus:  # one of them would be ignored
        print(
            f"train: give CORPUS ({args.corpus!r}) or --default-corpus, not both", file=sys.stderr
        )
        return 2
    if not args.out:  # --out "$UNSET": the run went into the working directory
        print("train: --out: expected a run directory path, got an empty one ('')", file=sys.stderr)
        return 2
    set_threads(args)
    # ("corpus: ..." errors are about the default corpus when it was asked for)
    corpus = "--default-corpus" if args.default_corpus else "CORPUS"
    names = option_names(args, corpus=corpus, out_dir="--out")
    try:  # every setting is checked here, before anything is read or written
        cfg = TrainConfig(
            corpus=None if args.default_corpus else args.corpus,
            max_chars=args.max_chars,
            embed_size=args.embed_size,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            dropout=args.dropout,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            steps=args.steps,
            lr=args.lr,
            optimizer=args.optimizer,
            clip=args.clip,
            seed=args.seed,
            val_fraction=args.val_fraction,
            val_every=args.val_every,
            checkpoint_every=args.checkpoint_every,
        )
    except ValueError as e:
        print(f"train: {in_option_terms(e, names)}", file=sys.stderr)
        return 2
    try:
        res = train_charlm(
            cfg,
            args.out,
            resume=args.resume,
            progress=not args.quiet,
            log=lambda m: print(m, file=sys.stderr),
        )
    # (a KeyboardInterrupt goes to cli.main: "lstm-fast train: interrupted", exit 130; caught
    # here, a Ctrl-C before the first step -- reading the corpus -- exited 130 saying nothing)
    except (OSError, ValueError) as e:  # OSError: --out is a file, an unreadable corpus, ...
        print(f"train: {in_option_terms(e, names)}", file=sys.stderr)
        return 1
    if res.get("loss_png") is None:  # the plot is skipped only when matplotlib is missing
        print(
            "train: no loss.png: matplotlib is not installed (pip install matplotlib, or the "
            "'train' extra: pip install 'lstm_fast[train]')",
            file=sys.stderr,
        )

    def fmt(v, spec):  # None when nothing was measured (no step run: --steps reached)
        return "n/a" if v is None else format(v, spec)

    print(
        f"step {res['step']}: train {fmt(res['train_bpc'], '.4f')} bits/char, "
        f"validation {fmt(res['val_bpc'], '.4f')} bits/char, "
        f"{fmt(res['chars_per_s'], ',.0f')} chars/s; checkpoint {res['checkpoint']}"
    )
    emit_json(
        args,
        {
            k: res[k]
            for k in ("step", "train_bpc", "val_bpc", "chars_per_s", "train_seconds", "parameters")
        },
    )
    return 0
