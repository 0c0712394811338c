"""The `lstm-fast` subcommands, one module each: ``add_arguments(parser)``, ``run(args) -> int``."""

from __future__ import annotations

import json
import sys


def emit_json(args, figures: dict) -> None:
    """With ``--json``, print the final figures as one JSON object on the last line of stdout."""
    if getattr(args, "json", False):
        sys.stdout.flush()
        print(json.dumps(figures, ensure_ascii=False), flush=True)


def set_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n:
        import lstm_fast

        lstm_fast.set_num_threads(n)


def add_common(parser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the final figures as one JSON object on the last line",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="kernel threads (default: OMP_NUM_THREADS or all cores)",
    )
