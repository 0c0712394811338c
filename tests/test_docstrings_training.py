"""The training layer documents itself: ``help()`` on every public name of ``lstm_fast.module``,
``lstm_fast.nn``, ``lstm_fast.optim``, ``lstm_fast.data`` and ``lstm_fast.models`` (with its
public submodules) shows a docstring of its own, and every ``>>>`` example there prints exactly
what it claims.

``tests/test_review11_docs.py`` covers the names of ``lstm_fast.__all__`` (the recurrent layers)
and runs every module's examples leniently (``ELLIPSIS``, in the module's namespace). This file
covers the training modules, name by name, with stricter rules:

**Which names.** A module's public names are those that do not start with ``_`` and are a class
or function either defined in that module (``obj.__module__``) or listed in its ``__all__`` (a
re-export, such as ``lstm_fast.models.CharLM``, is checked where it is exported too). Imports of
other libraries (``np``, ``Path``, ``Optional``) and constants (``CHECKPOINT``) are not.

**Which members.** A public class's public members are the names of ``dir(cls)`` that do not
start with ``_`` and that attribute lookup resolves (``inspect.getattr_static``) to a function,
classmethod, staticmethod or property written in lstm_fast. Members of Python's own types that a
class inherits (``object``, ``tuple``'s ``count``, ``Exception``'s ``with_traceback``) and data
attributes (dataclass fields, ``Vocab.unk_id``) are outside the rule.

**What counts as its own docstring.** For a class, ``cls.__dict__["__doc__"]``: not the base
class's, and not the ``Name(field, ...)`` signature that ``dataclasses`` and ``NamedTuple`` put
there when the author wrote none. For a member, the ``__doc__`` of the very function (or
property) that lookup finds -- never ``inspect.getdoc``, which since Python 3.5 falls back to the
docstring of the method an override replaces (``help(Linear.forward)`` would show
``Module.forward``'s "subclasses implement it"). So a method inherited *unchanged* is the base
class's own function object and its base docstring is genuinely its own (``Linear.train`` is
``Module.train``; ``StepLR.step`` is the private base's ``_Schedule.step``, which must therefore
be documented); an *override* must carry a docstring saying what it does.

**Not thin.** Every argument of a public function, method or constructor (dataclass fields
included) is named in the docstring that documents it (for a class: its own docstring or its
``__init__``'s), and every name a module exports in ``__all__`` has a runnable example.

**Examples.** Every ``>>>`` example of these modules runs in an empty namespace (it imports what
it uses, so it runs as copied out of ``help()``), in a temporary directory, with
``NORMALIZE_WHITESPACE`` only: the output must match exactly, no ``...`` elisions.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import pkgutil
import re
import tempfile

import pytest

import lstm_fast.models

_SUBMODULES = [
    info.name
    for info in pkgutil.iter_modules(lstm_fast.models.__path__, "lstm_fast.models.")
    if not info.name.rsplit(".", 1)[-1].startswith("_")
]
MODULES = [
    "lstm_fast.module",
    "lstm_fast.nn",
    "lstm_fast.optim",
    "lstm_fast.data",
    "lstm_fast.models",
    *_SUBMODULES,
]
# the modules whose every ``__all__`` name shows a ``>>>`` example (their public API)
EXAMPLE_MODULES = ["lstm_fast.module", "lstm_fast.nn", "lstm_fast.optim", "lstm_fast.data"]
EXAMPLE_MODULES += ["lstm_fast.models"]


def _public_objects(modname: str) -> list[tuple[str, object]]:
    """``(qualified name, object)`` of a module's public classes and functions (see above)."""
    module = importlib.import_module(modname)
    exported = set(getattr(module, "__all__", ()))
    out = []
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) == modname or name in exported:
            out.append((f"{modname}.{name}", obj))
    return out


OBJECTS = [item for m in MODULES for item in _public_objects(m)]
# each class once, under the module that defines it (a re-export is the same class), and only
# the classes defined in these modules: the recurrent layers nn re-exports (lstm_fast.rnn) are
# test_review11_docs.py's
CLASSES = [
    (n, o)
    for n, o in OBJECTS
    if inspect.isclass(o) and n == f"{o.__module__}.{o.__qualname__}" and o.__module__ in MODULES
]


def _members(cls: type) -> list[tuple[str, object, object]]:
    """``(name, what lookup finds, its function)`` of a class's public lstm_fast members."""
    out = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(cls, name)
        func = static
        if isinstance(static, (classmethod, staticmethod)):
            func = static.__func__
        elif isinstance(static, property):
            func = static.fget
        if not inspect.isfunction(func):
            continue  # a data attribute, or a method of a built-in type
        if not (getattr(func, "__module__", "") or "").startswith("lstm_fast"):
            continue
        out.append((name, static, func))
    return out


def _own_doc(obj) -> str:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        if doc.startswith(f"{obj.__name__}("):  # the signature dataclasses / NamedTuple write
            return ""
        return doc.strip()
    if isinstance(obj, property):
        return (obj.__doc__ or "").strip()
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    return (obj.__doc__ or "").strip()


# --------------------------------------------------------------------------------------------
# (a) every public name and member has a docstring of its own


def test_the_scope_is_what_the_rule_says():
    """The collection itself: the modules and the names the review named are all in scope."""
    names = {n for n, _ in OBJECTS}
    for expected in (
        "lstm_fast.nn.Linear",
        "lstm_fast.nn.CrossEntropyLoss",
        "lstm_fast.optim.StepLR",
        "lstm_fast.optim.clip_grad_norm",
        "lstm_fast.data.BPTTBatcher",
        "lstm_fast.models.CharLM",
        "lstm_fast.models.charlm.Sampler",
        "lstm_fast.models.classifier.pretrain_lm",
        "lstm_fast.models.checkpoint.save_npz",
        "lstm_fast.models.naive_bayes.NaiveBayes",
        "lstm_fast.models.inspect.rank_cells",
        "lstm_fast.module.Module",
    ):
        assert expected in names, expected
    assert "lstm_fast.nn.np" not in names and "lstm_fast.nn.Module" not in names
    members = {n for n, _, _ in _members(__import__("lstm_fast.optim").optim.StepLR)}
    assert {"factor", "set", "step"} <= members
    dataclass_members = {n for n, _, _ in _members(lstm_fast.models.TrainConfig)}
    assert dataclass_members == {"validate"}  # fields are data, not members


@pytest.mark.parametrize("qualname, obj", OBJECTS, ids=[n for n, _ in OBJECTS])
def test_public_name_has_its_own_docstring(qualname, obj):
    assert _own_doc(obj), f"{qualname} has no docstring of its own"


_MEMBER_CASES = [
    pytest.param(cls, name, id=f"{qualname}.{name}")
    for qualname, cls in CLASSES
    for name, _, _ in _members(cls)
]


@pytest.mark.parametrize("cls, name", _MEMBER_CASES)
def test_public_member_has_its_own_docstring(cls, name):
    static = inspect.getattr_static(cls, name)
    owner = next(k for k in cls.__mro__ if name in k.__dict__)
    assert _own_doc(static), (
        f"{cls.__module__}.{cls.__qualname__}.{name} (defined in {owner.__qualname__}) has no "
        "docstring of its own"
    )


# --------------------------------------------------------------------------------------------
# Not thin: the arguments are explained, the API has examples


def _arguments(func) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # pragma: no cover - a builtin
        return []
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p for p, v in sig.parameters.items() if p not in ("self", "cls") and v.kind not in skip]


def _argument_cases():
    cases = []
    for qualname, obj in OBJECTS:
        if inspect.isclass(obj) and (qualname, obj) not in CLASSES:
            continue  # a re-export: checked where it is defined
        if inspect.isfunction(obj) and qualname != f"{obj.__module__}.{obj.__qualname__}":
            continue
        if inspect.isclass(obj):
            init = obj.__dict__.get("__init__")
            if dataclasses.is_dataclass(obj):
                args = [f.name for f in dataclasses.fields(obj)]
            elif inspect.isfunction(init) and init.__module__.startswith("lstm_fast"):
                args = _arguments(init)
            else:
                args = []
            doc = _own_doc(obj) + "\n" + ((init.__doc__ or "") if inspect.isfunction(init) else "")
            cases.append(pytest.param(doc, args, id=qualname))
            for name, static, func in _members(obj):
                if name in obj.__dict__:  # an inherited member is checked where it is defined
                    cases.append(
                        pytest.param(_own_doc(static), _arguments(func), id=f"{qualname}.{name}")
                    )
        else:
            cases.append(pytest.param(_own_doc(obj), _arguments(obj), id=qualname))
    return cases


@pytest.mark.parametrize("doc, args", _argument_cases())
def test_every_argument_is_explained(doc, args):
    missing = [a for a in args if not re.search(rf"(?<![\w.]){re.escape(a)}(?!\w)", doc)]
    assert not missing, f"arguments not named in the docstring: {missing}"


_EXAMPLE_CASES = [
    pytest.param(obj, id=f"{m}.{name}")
    for m in EXAMPLE_MODULES
    for name in importlib.import_module(m).__all__
    for obj in [getattr(importlib.import_module(m), name)]
    if (inspect.isclass(obj) or inspect.isfunction(obj))
    and obj.__module__ != "lstm_fast.rnn"  # (the recurrent layers: test_review11_docs.py)
]


@pytest.mark.parametrize("obj", _EXAMPLE_CASES)
def test_exported_name_has_an_example(obj):
    assert ">>> " in _own_doc(obj)


# --------------------------------------------------------------------------------------------
# (b) the examples run and print exactly what they claim


def _doctests() -> list:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for modname in MODULES:
        module = importlib.import_module(modname)
        # an empty namespace: each example imports what it uses (runnable out of help())
        for t in finder.find(module, modname, globs={}):
            if t.examples:
                tests.append(t)
    return tests


DOCTESTS = _doctests()


def test_the_examples_are_found():
    found = {t.name for t in DOCTESTS}
    assert "lstm_fast.nn.Linear" in found and "lstm_fast.optim" in found


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_example_prints_exactly_what_it_claims(test, threads, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the examples' mkdtemp() files
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.attempted and not result.failed, "".join(out)
