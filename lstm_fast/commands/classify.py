"""Sequence classification of `label<TAB>text` files: `classify train TSV --out DIR` trains the
BiLSTM classifier and the Naive Bayes baseline on the same split; `classify eval DIR TSV` reports
both accuracies."""

from __future__ import annotations

import argparse

from . import add_common, emit_json, in_option_terms, int_at_least, option_names, set_threads


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = None
    if v is None or not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def add_arguments(parser) -> None:
    from ..models.classifier import ClassifierConfig

    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    t = sub.add_parser("train", help="train the BiLSTM classifier and the Naive Bayes baseline")
    t.add_argument("tsv", metavar="TSV", help="training data, label<TAB>text per line")
    t.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    t.add_argument(
        "--val",
        metavar="TSV",
        default=None,
        help="validation data (default: a held-out --val-fraction of TSV)",
    )
    d = ClassifierConfig()
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=d.val_fraction,
        help="without --val, the share of TSV held out for validation (a seeded shuffle); 0 "
        "trains on every row for exactly --epochs epochs, keeps the last weights and reports "
        "no validation accuracy (default %(default)s)",
    )
    t.add_argument(
        "--ensemble",
        type=int_at_least(1),
        default=d.ensemble,
        metavar="K",
        help="train K classifiers (seeds SEED, SEED+1000, ...) on the same split and average "
        "their probabilities; saved together, `classify eval` uses all K (default %(default)s)",
    )
    t.add_argument("--embed-size", type=int, default=d.embed_size, help="(default %(default)s)")
    t.add_argument(
        "--hidden-size", type=int, default=d.hidden_size, help="per direction (default %(default)s)"
    )
    t.add_argument(
        "--pool",
        default=d.pool,
        choices=["mean", "max", "meanmax", "last"],
        help="pooling over the BiLSTM outputs (default %(default)s)",
    )
    t.add_argument(
        "--dropout", type=float, default=d.dropout, help="on pooled features (default %(default)s)"
    )
    t.add_argument(
        "--embed-dropout",
        type=float,
        default=d.embed_dropout,
        help="on the embeddings (default %(default)s)",
    )
    t.add_argument(
        "--level",
        default=d.level,
        choices=["char", "word"],
        help="tokens: characters (Korean syllables) or words; --level word takes no --bigrams "
        "or --words (default %(default)s)",
    )
    t.add_argument(
        "--bigrams",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a character-bigram embedding to each character's (default: on with "
        "--level char; --level word has no bigrams, and --bigrams with it is an error)",
    )
    t.add_argument(
        "--bigram-dropout",
        type=float,
        default=d.bigram_dropout,
        help="in training, replace this fraction of bigrams by the unknown bigram "
        "(default %(default)s)",
    )
    t.add_argument(
        "--words",
        action=argparse.BooleanOptionalAction,
        default=d.words,
        help="also add the embedding of the whitespace word each character is in "
        "(with --bigrams; default %(default)s)",
    )
    t.add_argument(
        "--min-freq",
        type=int,
        default=d.min_freq,
        help="tokens seen fewer times in training become unknown (default %(default)s)",
    )
    t.add_argument(
        "--bigram-min-freq",
        type=int,
        default=d.bigram_min_freq,
        help="the same for bigrams (default %(default)s)",
    )
    t.add_argument(
        "--max-len", type=int, default=d.max_len, help="tokens kept per text (default %(default)s)"
    )
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="(default %(default)s)")
    t.add_argument(
        "--epochs", type=int, default=d.epochs, help="at most this many (default %(default)s)"
    )
    t.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="stop after this many epochs without a better validation accuracy; the best "
        "epoch's weights are kept (0: never stop early; default %(default)s)",
    )
    t.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="Adam learning rate, cosine-decayed over --epochs (default %(default)s)",
    )
    t.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help="(default %(default)s)"
    )
    t.add_argument(
        "--ema",
        type=float,
        default=d.ema,
        help="decay of an exponential moving average of the weights, which is what is "
        "validated and saved (0: none; default %(default)s)",
    )
    t.add_argument(
        "--clip",
        type=float,
        default=d.clip,
        help="gradient-norm clip (0: none; default %(default)s)",
    )
    t.add_argument(
        "--lm-steps",
        type=int,
        default=d.lm_steps,
        help="steps of forward + backward character-LM pretraining of the embedding and BiLSTM "
        "on the training texts before fine-tuning (0: none; default %(default)s)",
    )
    t.add_argument(
        "--lm-corpus",
        metavar="TEXT",
        default=d.lm_corpus,
        help="unlabelled text (a file or a directory; one text per line) added to the "
        "training texts for --lm-steps pretraining (default: none)",
    )
    t.add_argument(
        "--lm-max-epochs",
        type=int_at_least(1),
        default=d.lm_max_epochs,
        help="pretraining stops after this many passes over its text even before --lm-steps "
        "(default %(default)s)",
    )
    t.add_argument("--seed", type=int, default=d.seed, help="(default %(default)s)")
    t.add_argument("--max-rows", type=int, default=None, help="read at most N training rows")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(t)
    e = sub.add_parser("eval", help="accuracy of a trained classifier and its baseline")
    e.add_argument(
        "dir", metavar="DIR", help="run directory of `classify train` (or its classifier.npz)"
    )
    e.add_argument("tsv", metavar="TSV", help="test data, label<TAB>text per line")
    add_common(e)


def run(args) -> int:
    import sys

    from ..models.classifier import ClassifierConfig, evaluate_classifier, train_classifier

    set_threads(args)
    names = option_names(args, out_dir="--out", train_tsv="TSV", val_tsv="--val")
    if args.action == "train":
        if not args.out:  # --out "$UNSET": the run went into the working directory
            print(
                "classify: --out: expected a run directory path, got an empty one ('')",
                file=sys.stderr,
            )
            return 2
        try:  # every setting is checked here, before anything is read or written
            cfg = ClassifierConfig(
                embed_size=args.embed_size,
                hidden_size=args.hidden_size,
                pool=args.pool,
                dropout=args.dropout,
                embed_dropout=args.embed_dropout,
                level=args.level,
                bigrams=args.bigrams,
                bigram_dropout=args.bigram_dropout,
                words=args.words,
                ema=args.ema,
                min_freq=args.min_freq,
                bigram_min_freq=args.bigram_min_freq,
                max_len=args.max_len,
                batch_size=args.batch_size,
                epochs=args.epochs,
                patience=args.patience,
                lr=args.lr,
                weight_decay=args.weight_decay,
                clip=args.clip,
                lm_steps=args.lm_steps,
                lm_corpus=args.lm_corpus,
                lm_max_epochs=args.lm_max_epochs,
                ensemble=args.ensemble,
                val_fraction=args.val_fraction,
                seed=args.seed,
                max_rows=args.max_rows,
            )
        except ValueError as e:
            print(f"classify: {in_option_terms(e, names)}", file=sys.stderr)
            return 2
    try:
        if args.action == "train":
            res = train_classifier(
                args.tsv,
                args.out,
                cfg,
                val_tsv=args.val,
                progress=not args.quiet,
                log=lambda m: print(m, file=sys.stderr),
            )
        else:
            res = evaluate_classifier(args.dir, args.tsv)
    except (OSError, ValueError) as e:  # OSError: --out is a file, an unreadable TSV, ...
        print(f"classify: {in_option_terms(e, names)}", file=sys.stderr)
        return 1
    if res["accuracy"] is None:  # --val-fraction 0: nothing held out
        print("accuracy: no validation data (BiLSTM and Naive Bayes trained on every row)")
    else:
        nb = res["nb_accuracy"]  # None: the run directory has no Naive Bayes file
        nb = "n/a" if nb is None else f"{nb:.4f}"
        print(f"accuracy {res['accuracy']:.4f} (BiLSTM), {nb} (Naive Bayes)")
    emit_json(args, res)
    return 0
