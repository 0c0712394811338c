"""`python -m lstm_fast ...` is the `lstm-fast` command."""

from lstm_fast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
