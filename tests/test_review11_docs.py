"""Review 11: the package as shipped and whether its documentation is true.

Every Python example of the README and every ``>>>`` example of the package's docstrings runs and
prints what it claims; the public classes carry their own docstrings (``help()``); the optional
dependencies (torch, onnxruntime, matplotlib) are optional: without them the package imports and
the features that need them say which extra to install; the documented command-line flags and
environment variables exist and do what the README says.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lstm_fast

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line, source) of every ```python block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


def _run_python(
    code: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=str(ROOT.parent),
    )


# --------------------------------------------------------------------------------------------
# Public classes have their own docstrings


@pytest.mark.parametrize("name", lstm_fast.__all__)
def test_public_names_have_their_own_docstring(name):
    """``help(lstm_fast.LSTM)`` showed the docstring of the base class ``Module`` ("Base class:
    attribute assignment registers parameters..."): the LSTM, GRU and RNN docstrings were string
    expressions in parentheses in the class body, which Python does not take as a docstring."""
    obj = getattr(lstm_fast, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    assert doc and doc.strip(), f"lstm_fast.{name} has no docstring of its own"


@pytest.mark.parametrize(
    "module, name",
    [("lstm_fast", n) for n in lstm_fast.__all__ if n[0].isupper()]
    + [("lstm_fast.torch", n) for n in ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")],
)
def test_public_methods_have_docstrings(module, name):
    """``help(lstm_fast.LSTM)`` listed ``forward``, ``parameters``, ``train``, ``eval``,
    ``zero_grad``, ``modules``, ... (and Parameter's ``zero_grad``, ``shape``, ...) with no text;
    ``help(lstm_fast.torch.LSTM)`` its ``forward``."""
    if module == "lstm_fast.torch":
        pytest.importorskip("torch")
    cls = getattr(importlib.import_module(module), name)
    silent = []
    for attr in dir(cls):
        if attr.startswith("_"):
            continue
        static = inspect.getattr_static(cls, attr)
        if isinstance(static, property) or inspect.isfunction(static):
            defined_in = getattr(getattr(static, "fget", static), "__module__", "") or ""
            if defined_in.startswith("lstm_fast") and not inspect.getdoc(getattr(cls, attr)):
                silent.append(attr)
    assert not silent, f"{name}: {silent}"


@pytest.mark.parametrize(
    "cls, torch_name", [("LSTM", "nn.LSTM"), ("GRU", "nn.GRU"), ("RNN", "nn.RNN")]
)
def test_layer_docstrings_describe_the_layer(cls, torch_name):
    doc = inspect.getdoc(getattr(lstm_fast, cls))
    assert torch_name in doc
    for arg in ("input_size", "hidden_size", "num_layers", "batch_first", "bidirectional"):
        assert arg in doc, (cls, arg)
    assert ">>> " in doc  # a runnable example (run by the doctest below)


# --------------------------------------------------------------------------------------------
# Docstring examples run and print what they claim


def _package_modules() -> list[str]:
    import pkgutil

    names = ["lstm_fast"]
    for info in pkgutil.walk_packages(lstm_fast.__path__, "lstm_fast."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        names.append(info.name)
    return names


# the optional dependency a module's examples import
_NEEDS = {"lstm_fast.torch": "torch", "lstm_fast.interop": "onnx"}


@pytest.mark.parametrize("modname", _package_modules())
def test_docstring_examples_run_and_print_what_they_claim(modname, threads, tmp_path, monkeypatch):
    """Before: ``lstm_fast.interop.onnx_attributes``'s example used names it never defined
    (``onnx``, ``interop``, ``gru``: NameError), ``lstm_fast.optim``'s printed
    ``[0.8999999761581421, ...]`` where it claimed ``[0.9, 0.9, 0.9]``, and the examples of
    ``LSTM``/``GRU``/``RNN`` were not docstrings at all (never found, never run)."""
    if modname in _NEEDS:
        pytest.importorskip(_NEEDS[modname])
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(modname)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    failures = []
    for test in finder.find(module, modname):
        if test.examples:
            out: list[str] = []
            result = runner.run(test, out=out.append, clear_globs=True)
            if result.failed:
                failures.append("".join(out))
    assert not failures, "\n".join(failures)


def test_layer_examples_are_found_by_doctest():
    """The LSTM, GRU and RNN examples count among the package's doctests (they were invisible)."""
    import lstm_fast.rnn as rnn

    found = {t.name.rsplit(".", 1)[-1] for t in doctest.DocTestFinder().find(rnn) if t.examples}
    assert {"LSTM", "GRU", "RNN", "LSTMCell"} <= found


# --------------------------------------------------------------------------------------------
# The README's examples


def test_readme_usage_example_runs_and_gives_the_shapes_it_claims(threads, capsys):
    """The first Python block of the README, as is; its comments' shapes checked here."""
    line, code = _python_blocks(README)[0]
    assert "lstm_fast.LSTM(input_size=64" in code, "the README's usage block moved"
    ns: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), ns)
    out = capsys.readouterr().out
    # y: (16, 50, 128), h_n, c_n: (2, 16, 128)
    assert ns["y"].shape == (50, 16, 128)  # rebound by the functional part: (T, B, H)
    assert ns["lstm"].batch_first and ns["lstm"].num_layers == 2
    assert ns["h_n"].shape == ns["c_n"].shape == (16, 128)
    # print(grads.dweight_hh.shape)  # (512, 128)
    assert "(512, 128)" in out.splitlines()
    for name, p in ns["lstm"].named_parameters():
        assert f"{name} {p.data.shape} {p.grad.shape}" in out
    # print(lstm_fast.cpu_info())  # active ISA, available ISAs, threads
    info = lstm_fast.cpu_info()
    assert info["num_threads"] == 2 and info["isa"] in info["available_isas"]


def test_readme_layer_part_gives_the_shapes_it_claims(capsys):
    """The layer lines of the README's usage block: y (16, 50, 128), h_n and c_n (2, 16, 128)."""
    _, code = _python_blocks(README)[0]
    layer_part = code.split("# A PyTorch state dict")[0]
    ns: dict = {}
    exec(layer_part, ns)
    capsys.readouterr()
    assert ns["y"].shape == (16, 50, 128)
    assert ns["h_n"].shape == ns["c_n"].shape == (2, 16, 128)
    assert ns["dx"].shape == ns["x"].shape


def _command_lines(path: Path = README) -> list[str]:
    """Every ``lstm-fast ...`` / ``python -m lstm_fast ...`` command of a Markdown file's code
    blocks, one argv string each (line continuations joined, comments dropped)."""
    text = path.read_text(encoding="utf-8")
    lines = []
    for m in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        for raw in m.group(1).replace("\\\n", " ").splitlines():
            for part in raw.split("&&"):
                part = part.split(" #")[0].strip()
                cmd = re.search(r"(?:^|\s)(?:lstm-fast|python -m lstm_fast)\s+(.*)", part)
                if cmd:
                    lines.append(cmd.group(1))
    return lines


_readme_command_lines = _command_lines
_DOCS = [README, ROOT / "docs" / "RESULTS.md"]


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, id=f"{p.name}:{c[:60]}") for p in _DOCS for c in _command_lines(p)],
)
def test_documented_command_lines_parse(command):
    import shlex

    from lstm_fast.cli import build_parser

    args = build_parser().parse_args(shlex.split(command))
    assert callable(args._run)


def test_readme_lists_every_command_and_json_flag_is_as_described():
    """The README says ``--json`` prints the final figures as one JSON object on the last line;
    ``bench``'s ``--json`` takes a PATH (raw results to a file), which the README now says."""
    from lstm_fast.cli import COMMANDS, build_parser

    text = README.read_text(encoding="utf-8")
    commands = {c.split()[0] for c in _readme_command_lines()}
    assert commands == set(COMMANDS)
    parser = build_parser()
    with pytest.raises(SystemExit):  # bench's --json needs its PATH
        parser.parse_args(["bench", "--json"])
    assert "bench --json PATH" in text.replace("`", "")
    for cmd in ("train", "sample", "evaluate", "inspect"):
        assert "--json" in {
            a for act in _subparser(parser, cmd)._actions for a in act.option_strings
        }


def _subparser(parser, name):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


# --------------------------------------------------------------------------------------------
# Optional dependencies are optional

_BLOCKER = textwrap.dedent(
    """
    import sys

    BLOCKED = set({blocked!r})

    class _Blocker:
        # a missing distribution, as Python reports it: ModuleNotFoundError with its name
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _Blocker())
    """
)

_OPTIONAL = ["torch", "onnx", "onnxruntime", "matplotlib", "tqdm"]


def _without(blocked, body: str) -> subprocess.CompletedProcess:
    return _run_python(_BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(body))


def test_the_package_imports_and_trains_without_the_optional_dependencies():
    r = _without(
        _OPTIONAL,
        """
        import numpy as np
        import lstm_fast
        from lstm_fast import bench, cli, data, interop, models, nn, ops, optim, reference
        cli.build_parser()
        m = lstm_fast.LSTM(3, 4, num_layers=2, seed=0)
        y, _ = m(np.ones((5, 2, 3), np.float32))
        m.backward(np.ones_like(y))
        optim.Adam(m.parameters(), lr=0.1).step()
        sd = interop.to_onnx(m)
        loaded = [k for k in sys.modules if k.split(".")[0] in BLOCKED]
        print("OK", loaded)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "OK []"


def test_lstm_fast_torch_without_torch_names_the_extra():
    """Before: a bare ``ModuleNotFoundError: No module named 'torch'``."""
    r = _without(
        ["torch"],
        """
        try:
            import lstm_fast.torch
        except ModuleNotFoundError as e:
            print(type(e).__name__, e.name, "|", e)
        """,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith("ModuleNotFoundError torch |"), out
    assert "lstm_fast.torch" in out and "pip install 'lstm_fast[torch]'" in out


def test_interop_to_torch_without_torch_names_the_extra():
    """Before: a bare ``ModuleNotFoundError: No module named 'torch'``."""
    r = _without(
        ["torch"],
        """
        import lstm_fast
        from lstm_fast import interop

        try:
            interop.to_torch(lstm_fast.GRU(3, 4, seed=0))
        except ModuleNotFoundError as e:
            print(type(e).__name__, e.name, "|", e)
        """,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert out.startswith("ModuleNotFoundError torch |"), out
    assert "to_torch" in out and "pip install 'lstm_fast[torch]'" in out


def test_a_broken_torch_install_is_not_reported_as_a_missing_one():
    """Only torch itself missing is turned into the extra's message; an error inside torch (a
    missing dependency of torch) comes through unchanged."""
    r = _run_python(
        textwrap.dedent(
            """
            import sys, types

            class _Broken:
                def find_spec(self, name, path=None, target=None):
                    if name == "torch":
                        raise ModuleNotFoundError("No module named 'torch_dep'", name="torch_dep")
                    return None

            sys.meta_path.insert(0, _Broken())
            try:
                import lstm_fast.torch
            except ModuleNotFoundError as e:
                print(e.name, "|", e)
            """
        )
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "torch_dep | No module named 'torch_dep'"


def test_inspect_without_matplotlib_writes_the_html_and_says_why_no_png(tmp_path):
    """``lstm-fast inspect`` writes FILE.html and a PNG beside it; without matplotlib it died with
    a traceback (``ModuleNotFoundError: No module named 'matplotlib'``) after all the work and
    the HTML were done. Now the HTML is written, the PNG is skipped with a note naming the extra,
    and ``--json`` reports ``"png": null``."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text('def f(x):\n    return "a" + x  # note\n' * 40, encoding="utf-8")
    run, html = tmp_path / "run", tmp_path / "cells.html"
    r = _without(
        ["matplotlib"],
        f"""
        from lstm_fast.cli import main

        common = ["--threads", "1"]
        assert main(["train", {str(corpus)!r}, "--out", {str(run)!r}, "--steps", "2",
                     "--hidden-size", "8", "--embed-size", "4", "--seq-len", "8",
                     "--batch-size", "2", "--quiet"] + common) == 0
        print("RC", main(["inspect", {str(run)!r}, {str(corpus)!r}, "--out", {str(html)!r},
                          "--json"] + common))
        """,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "RC 0", r.stdout + r.stderr
    import json

    figures = json.loads(lines[-2])
    assert figures["html"] == str(html) and figures["png"] is None
    assert html.read_text(encoding="utf-8").startswith("<")
    assert not html.with_suffix(".png").exists()
    assert "inspect: no PNG: matplotlib is not installed" in r.stderr
    assert "lstm_fast[train]" in r.stderr
    assert "Traceback" not in r.stderr
    # train had skipped its loss.png without a word
    assert "train: no loss.png: matplotlib is not installed" in r.stderr
    assert not (run / "loss.png").exists()


# --------------------------------------------------------------------------------------------
# The package's names


def test_lstm_fast_interop_is_reachable_as_the_readme_writes_it():
    """The README introduces ``lstm_fast.interop`` by that name; after ``import lstm_fast`` the
    attribute did not exist (AttributeError) unless something had imported the submodule. It is
    loaded on first use now, and still not at import."""
    r = _run_python(
        textwrap.dedent(
            """
            import sys
            import lstm_fast

            print("before", "lstm_fast.interop" in sys.modules, "interop" in dir(lstm_fast))
            layer = lstm_fast.interop.from_torch(
                lstm_fast.LSTM(3, 4, seed=0).state_dict()
            )
            print("after", type(layer).__name__, "torch" in sys.modules)
            try:
                lstm_fast.no_such_name
            except AttributeError as e:
                print("missing", e)
            """
        )
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "before False True",
        "after LSTM False",
        "missing module 'lstm_fast' has no attribute 'no_such_name'",
    ]


def test_all_names_exist_and_version_matches_the_project_metadata():
    tomllib = pytest.importorskip("tomllib")
    for name in lstm_fast.__all__:
        assert hasattr(lstm_fast, name), name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert lstm_fast.__version__ == project["version"]
    assert project["scripts"]["lstm-fast"] == "lstm_fast.cli:main"
    extras = project["optional-dependencies"]
    # the extras the package's own messages name exist and hold what those messages need
    assert any(r.startswith("torch") for r in extras["torch"])
    assert any(r.startswith("matplotlib") for r in extras["train"])
    assert any(r.startswith("matplotlib") for r in extras["bench"])
    assert any(r.startswith("onnxruntime") for r in extras["bench"])


def test_lstm_fast_torch_doc_quotes_the_dtype_error_it_raises():
    """The module docstring quoted ``ValueError: input must have the type torch.float32, got type
    torch.float64``, a message neither torch 2.13 nor lstm_fast.torch gives."""
    torch = pytest.importorskip("torch")
    lft = pytest.importorskip("lstm_fast.torch")
    quoted = re.search(r"``(RNN input dtype .*?) \.\.\.``", " ".join(lft.__doc__.split()))
    assert quoted, "the docstring quotes the dtype error"
    for module in (lft.LSTM(3, 4), torch.nn.LSTM(3, 4)):
        with pytest.raises(ValueError) as info:
            module(torch.zeros(5, 2, 3, dtype=torch.float64))
        assert str(info.value).startswith(quoted.group(1))


# --------------------------------------------------------------------------------------------
# The command line does what its help says


def test_train_refuses_a_corpus_and_default_corpus_together(tmp_path, capsys):
    """``lstm-fast train novels.txt --default-corpus`` trained on the Python standard library
    and silently ignored novels.txt; it is a usage error now, before anything is written."""
    from lstm_fast.cli import main

    corpus = tmp_path / "novels.txt"
    corpus.write_text("a small text of my own\n" * 20, encoding="utf-8")
    out = tmp_path / "run"
    argv = ["train", str(corpus), "--default-corpus", "--out", str(out), "--steps", "1"]
    argv += ["--max-chars", "2000", "--hidden-size", "4", "--embed-size", "2", "--seq-len", "4"]
    argv += ["--batch-size", "1", "--quiet", "--threads", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CORPUS" in err and "--default-corpus" in err and "not both" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["evaluate", "inspect"])
def test_evaluate_and_inspect_name_their_text_argument(command, tmp_path, capsys):
    """A missing TEXT was reported as ``corpus: expected a text file or a directory`` (the
    loader's word): the argument is TEXT in these commands' usage."""
    from lstm_fast.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabc\n" * 10, encoding="utf-8")
    run = tmp_path / "run"
    argv = ["train", str(corpus), "--out", str(run), "--steps", "1", "--hidden-size", "4"]
    argv += ["--embed-size", "2", "--seq-len", "4", "--batch-size", "1", "--quiet"]
    assert main(argv + ["--threads", "1"]) == 0
    capsys.readouterr()
    missing = tmp_path / "missing.txt"
    argv = [command, str(run), str(missing), "--threads", "1"]
    if command == "inspect":
        argv += ["--out", str(tmp_path / "cells.html")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"{command}: TEXT: expected a text file or a directory, got {str(missing)!r}"


def test_every_command_line_flag_is_explained_in_its_help():
    """The README: ``lstm-fast COMMAND --help`` explains its flags. Twelve flags and positionals
    (train's --embed-size, --hidden-size, --num-layers, --lr, --optimizer, --seed; evaluate's
    --seq-len, --max-chars; classify's --out, DIR, TSV; inspect's --out) had no help at all."""
    import argparse

    from lstm_fast.cli import build_parser

    silent = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif not action.help:
                silent.append(
                    " ".join(
                        path + [action.option_strings[0] if action.option_strings else action.dest]
                    )
                )

    walk(build_parser(), [])
    assert not silent, silent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_set_num_threads_in_a_forked_child_is_documented_as_staying_serial():
    """In a child forked after a multi-threaded call, ``set_num_threads(2)`` leaves one thread
    (GNU OpenMP's team is gone); its docstring said only that it applies to later calls."""
    assert "forked" in lstm_fast.set_num_threads.__doc__
    r = _run_python(
        textwrap.dedent(
            """
            import os
            import numpy as np
            import lstm_fast

            lstm_fast.set_num_threads(2)
            m = lstm_fast.LSTM(16, 16, seed=0)
            x = np.ones((8, 8, 16), np.float32)
            y0, _ = m(x)
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    lstm_fast.set_num_threads(2)
                    y, _ = m(x)
                    info = lstm_fast.cpu_info()
                    ok = info["forked_serial"] and lstm_fast.get_num_threads() == 1
                    code = 0 if ok and np.array_equal(y, y0) else 3
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status))
            """
        ),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "child 0"


def test_an_unbuilt_source_checkout_says_so_on_import(tmp_path):
    """``import lstm_fast`` from a source tree without the compiled core (a fresh clone, the
    repository root on sys.path) failed with Python's "cannot import name '_core' from partially
    initialized module 'lstm_fast' (most likely due to a circular import)"."""
    import shutil

    src = Path(lstm_fast.__file__).parent
    shutil.copytree(src, tmp_path / "lstm_fast", ignore=shutil.ignore_patterns("*.so", "*.pyd"))
    r = subprocess.run(
        [sys.executable, "-c", "import lstm_fast"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(tmp_path)),
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: lstm_fast's compiled core (lstm_fast._core) is not built")
    assert "pip install ." in last and "tools/dev-build.sh" in last
    assert "circular import" not in r.stderr


def test_readme_names_every_extra_the_package_declares():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    text = README.read_text(encoding="utf-8")
    extras = text[text.index("Optional extras:") :].split("\n\n")[0]
    for extra in project["optional-dependencies"]:
        assert f"`{extra}`" in extras, extra
    assert project["dependencies"] == ["numpy>=1.22"]  # "needs only NumPy"


# --------------------------------------------------------------------------------------------
# The environment variables the README documents


def _documented_values(variable: str) -> list[str]:
    m = re.search(rf"`{variable}=([a-z0-9|]+)`", README.read_text(encoding="utf-8"))
    assert m, f"the README documents {variable}"
    return m.group(1).split("|")


_ENV_PROBE = textwrap.dedent(
    """
    import numpy as np
    import lstm_fast

    lstm_fast.set_num_threads(2)
    rng = np.random.default_rng(0)
    m = lstm_fast.LSTM(16, 24, seed=0)
    y, _ = m(rng.standard_normal((6, 9, 16)).astype(np.float32))
    info = lstm_fast.cpu_info()
    print(info["isa"], info["schedule"], y.astype(np.float64).sum().hex())
    """
)


def test_documented_schedules_are_accepted_and_give_the_same_results():
    """``LSTM_FAST_SCHEDULE=auto|units|batch|serial`` forces the recurrence's thread split; the
    README promises bitwise the same results for any schedule."""
    sums = set()
    for value in _documented_values("LSTM_FAST_SCHEDULE"):
        r = _run_python(_ENV_PROBE, env={"LSTM_FAST_SCHEDULE": value}, timeout=60)
        assert r.returncode == 0, (value, r.stderr)
        _, schedule, total = r.stdout.split()
        assert schedule == value
        sums.add(total)
    assert len(sums) == 1
    r = _run_python("import lstm_fast", env={"LSTM_FAST_SCHEDULE": "fastest"}, timeout=60)
    assert r.returncode == 1
    assert (
        "ImportError: LSTM_FAST_SCHEDULE: expected one of" in r.stderr and "'fastest'" in r.stderr
    )


def test_documented_isas_are_accepted_where_the_cpu_has_them():
    available = lstm_fast.cpu_info()["available_isas"]
    values = _documented_values("LSTM_FAST_ISA")
    assert set(values) >= set(available)
    for value in values:
        if value not in available:
            continue
        r = _run_python(_ENV_PROBE, env={"LSTM_FAST_ISA": value}, timeout=60)
        assert r.returncode == 0, (value, r.stderr)
        assert r.stdout.split()[0] == value
