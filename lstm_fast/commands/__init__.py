"""The `lstm-fast` subcommands, one module each: ``add_arguments(parser)``, ``run(args) -> int``."""

from __future__ import annotations

import json
import math
import sys


def _json_safe(v):
    """``v`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def emit_json(args, figures: dict) -> None:
    """With ``--json``, print the final figures as one JSON object on the last line of stdout
    (a NaN or infinite figure, a diverged run's, as null)."""
    if getattr(args, "json", False):
        sys.stdout.flush()
        # (json.dumps wrote NaN and Infinity, which are not JSON: jq and strict parsers failed)
        print(json.dumps(_json_safe(figures), ensure_ascii=False, allow_nan=False), flush=True)


def set_threads(args) -> None:
    n = getattr(args, "threads", None)
    if n is not None:
        import lstm_fast

        try:
            lstm_fast.set_num_threads(n)
        except (TypeError, ValueError) as e:  # a usage error, as argparse reports them
            # "set_num_threads: n: expected ..." names the function's argument: name the option
            detail = str(e).split("n: ", 1)[-1] if str(e).startswith("set_num_threads") else e
            print(f"lstm-fast: error: --threads: {detail}", file=sys.stderr)
            raise SystemExit(2) from None


def option_names(args, **overrides) -> dict:
    """``{setting: option}`` for the options of ``args`` (``hidden_size`` -> ``--hidden-size``),
    with ``overrides`` (``out_dir="--out"``, a positional's metavar)."""
    names = {k: "--" + k.replace("_", "-") for k in vars(args) if not k.startswith("_")}
    names.update(overrides)
    return names


def in_option_terms(error: BaseException, names: dict) -> str:
    """An error message that starts with a setting's name (``hidden_size: expected ...``, as the
    models' configs raise them) with the option's name instead (``--hidden-size: ...``)."""
    import re

    msg = str(error)
    name, sep, rest = msg.partition(": ")
    if not (sep and name in names):
        return msg
    # other settings the message names (``lm_corpus: expected lm_steps > 0``) as options too:
    # names with an underscore (prose never holds one as a word) standing alone, not part of a
    # path or a quoted value (``got '/tmp/out_dir'``)
    for other, option in names.items():
        if "_" in other:
            pat = rf"(?<![\w/.'\"\\-]){re.escape(other)}(?=[\s=<>!,;)]|$)"
            rest = re.sub(pat, option, rest)
    return f"{names[name]}: {rest}"


def int_at_least(lo: int):
    """argparse type: an int >= lo."""
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"expected an int >= {lo}, got {text!r}")
        return v

    return parse


non_negative_int = int_at_least(0)


def number(text: str) -> float:
    """argparse type: a float that is not NaN."""
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    return v


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
