"""The train / evaluate / sample / inspect / classify subcommands end to end (tiny runs)."""

from __future__ import annotations

import json

import pytest

from lstm_fast import cli


def _last_json(capsys):
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "sample", "classify", "inspect"):
        assert name in out


def test_train_evaluate_sample_inspect(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(('def f(x):\n    return "a(b)" + x\n' * 80), encoding="utf-8")
    run = str(tmp_path / "run")
    args = [
        "train",
        str(corpus),
        "--out",
        run,
        "--hidden-size",
        "12",
        "--embed-size",
        "6",
        "--num-layers",
        "1",
        "--seq-len",
        "10",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--val-every",
        "3",
        "--checkpoint-every",
        "3",
        "--quiet",
        "--json",
    ]
    assert cli.main(args) == 0
    res = _last_json(capsys)
    assert res["step"] == 6 and res["val_bpc"] > 0 and res["chars_per_s"] > 0
    assert cli.main(args[:-4] + ["--steps", "8", "--resume", "--quiet", "--json"]) == 0
    assert _last_json(capsys)["step"] == 8
    assert cli.main(["evaluate", run, str(corpus), "--json"]) == 0
    assert _last_json(capsys)["bpc"] > 0
    assert (
        cli.main(["sample", run, "--length", "20", "--prime", "def", "--top-k", "3", "--json"]) == 0
    )
    s = _last_json(capsys)
    assert s["chars"] == 20 and s["text"].startswith("def")
    html = tmp_path / "i.html"
    assert cli.main(["inspect", run, str(corpus), "--out", str(html), "--json"]) == 0
    r = _last_json(capsys)
    assert html.exists() and (tmp_path / "i.png").exists() and "in_quote" in r["correlations"]
    args = ["inspect", run, str(corpus), "--out", str(html), "--png-start", "100"]
    assert cli.main(args + ["--png-chars", "50", "--json"]) == 0
    assert _last_json(capsys)["correlations"] == r["correlations"]  # the PNG window only
    assert cli.main(args[:-1] + [str(len(corpus.read_text()))]) == 2
    assert "--png-start: expected 0 <= N < 2560" in capsys.readouterr().err
    assert cli.main(["train", "--out", run]) == 2
    assert cli.main(["evaluate", str(tmp_path / "nothing"), str(corpus)]) == 1


def _reviews_tsv(tmp_path, n: int):
    """n labelled reviews, two classes with distinct words, as a TSV with a header."""
    lines = ["label\ttext"] + [
        f"{i % 2}\t{'좋다 최고' if i % 2 else '별로 최악'} {i}" for i in range(n)
    ]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tsv


def test_classify_train_eval(tmp_path, capsys):
    tsv = _reviews_tsv(tmp_path, 60)
    run = str(tmp_path / "cls")
    assert (
        cli.main(
            [
                "classify",
                "train",
                str(tsv),
                "--out",
                run,
                "--epochs",
                "2",
                "--hidden-size",
                "6",
                "--embed-size",
                "4",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    assert _last_json(capsys)["nb_accuracy"] == 1.0
    assert cli.main(["classify", "eval", run, str(tsv), "--json"]) == 0
    r = _last_json(capsys)
    assert r["examples"] == 60 and 0 <= r["accuracy"] <= 1


def test_classify_ensemble_and_val_fraction_options(tmp_path, capsys):
    tsv = _reviews_tsv(tmp_path, 40)
    run = str(tmp_path / "cls")
    small = ["--epochs", "1", "--hidden-size", "4", "--embed-size", "4", "--quiet", "--json"]
    args = ["classify", "train", str(tsv), "--out", run, "--ensemble", "2"]
    assert cli.main(args + small) == 0
    r = _last_json(capsys)
    assert r["ensemble"] == 2 and len(r["member_accuracies"]) == 2
    assert cli.main(["classify", "eval", run, str(tsv), "--json"]) == 0
    assert _last_json(capsys)["ensemble"] == 2
    args = ["classify", "train", str(tsv), "--out", run, "--val-fraction", "0"]
    assert cli.main(args + small) == 0
    r = _last_json(capsys)
    assert r["accuracy"] is None and r["train_examples"] == 40
    for opt, bad, want in [
        ("--ensemble", "0", "argument --ensemble: expected an int >= 1, got '0'"),
        ("--ensemble", "two", "argument --ensemble: expected an int >= 1, got 'two'"),
        ("--val-fraction", "1", "argument --val-fraction: expected a number in [0, 1), got '1'"),
        ("--lm-max-epochs", "0", "argument --lm-max-epochs: expected an int >= 1, got '0'"),
    ]:
        with pytest.raises(SystemExit):
            cli.main(["classify", "train", str(tsv), "--out", run, opt, bad])
        assert want in capsys.readouterr().err
