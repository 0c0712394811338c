"""The `lstm-fast` command: one entry point with subcommands.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand name -> (module, one-line help)
COMMANDS = {
    "bench": ("lstm_fast.bench", "time lstm_fast against the NumPy reference and its peers"),
    "train": ("lstm_fast.commands.train", "train a character-level LSTM language model"),
    "evaluate": ("lstm_fast.commands.evaluate", "bits per character of a char-LM on a text"),
    "sample": ("lstm_fast.commands.sample", "generate text from a trained char-LM"),
    "classify": ("lstm_fast.commands.classify", "BiLSTM text classifier vs Naive Bayes"),
    "inspect": ("lstm_fast.commands.inspect", "find interpretable cells of a char-LM"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-fast",
        description="Fast LSTM/GRU/RNN on the CPU: benchmarks, training and tools.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (modname, help_text) in COMMANDS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # (a closed pipe raises here, not in the interpreter's exit)
        return rc
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's 128 + SIGINT, no traceback
        print(f"lstm-fast {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lstm-fast sample DIR | head`: the reader left, no traceback
        # (stdout's unflushed rest would raise again at exit: it goes to /dev/null)
        _discard_stdout()
        return 1
    except OSError as e:  # the results could not be written (`> /dev/full`: a traceback)
        what = ""
        try:
            sys.stdout.flush()
        except OSError:  # stdout itself failed: its unflushed rest would raise again at exit
            _discard_stdout()
            what = "writing the output: "
        print(f"lstm-fast {args.command}: {what}{e}", file=sys.stderr)
        return 1


def _discard_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    raise SystemExit(main())
