"""Sequence classification of `label<TAB>text` files: `classify train TSV --out DIR` trains the
BiLSTM classifier and the Naive Bayes baseline on the same split; `classify eval DIR TSV` reports
both accuracies."""

from __future__ import annotations

from . import add_common, emit_json, set_threads


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    t = sub.add_parser("train", help="train the BiLSTM classifier and the Naive Bayes baseline")
    t.add_argument("tsv", metavar="TSV", help="training data, label<TAB>text per line")
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument(
        "--val",
        metavar="TSV",
        default=None,
        help="validation data (default: a held-out 10%% of TSV)",
    )
    t.add_argument("--embed-size", type=int, default=64)
    t.add_argument("--hidden-size", type=int, default=128, help="per direction")
    t.add_argument("--pool", default="max", choices=["mean", "max", "last"])
    t.add_argument("--dropout", type=float, default=0.2)
    t.add_argument("--level", default="char", choices=["char", "word"])
    t.add_argument("--max-len", type=int, default=150, help="tokens kept per text")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-rows", type=int, default=None, help="read at most N training rows")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_common(t)
    e = sub.add_parser("eval", help="accuracy of a trained classifier and its baseline")
    e.add_argument("dir", metavar="DIR")
    e.add_argument("tsv", metavar="TSV")
    add_common(e)


def run(args) -> int:
    import sys

    from ..models.classifier import ClassifierConfig, evaluate_classifier, train_classifier

    set_threads(args)
    try:
        if args.action == "train":
            cfg = ClassifierConfig(
                embed_size=args.embed_size,
                hidden_size=args.hidden_size,
                pool=args.pool,
                dropout=args.dropout,
                level=args.level,
                max_len=args.max_len,
                batch_size=args.batch_size,
                epochs=args.epochs,
                lr=args.lr,
                seed=args.seed,
                max_rows=args.max_rows,
            )
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
    except (FileNotFoundError, ValueError) as e:
        print(f"classify: {e}", file=sys.stderr)
        return 1
    print(f"accuracy {res['accuracy']:.4f} (BiLSTM), {res['nb_accuracy']:.4f} (Naive Bayes)")
    emit_json(args, res)
    return 0
