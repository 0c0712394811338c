"""The type stubs of the compiled modules (lstm_fast/_core.pyi, lstm_fast/_text.pyi) against the
modules themselves, so that a binding added, removed or changed without its stub fails here.

The stubs are read next to the imported modules (in a source checkout or in an installed wheel:
a wheel without them fails too) and parsed with ``ast``, never executed. For each module:

* the names the stub defines are the names the module exports (dunders, imported modules and
  the stub's own ``TypeAlias`` names aside), classes as classes and functions as functions;
* each function's parameters agree with the runtime's in order, name, kind (positional or
  keyword-only) and default (present, and equal where both are literals). For pybind11
  functions the runtime signature is the line pybind11 writes at the top of ``__doc__``; its
  types are compared coarsely too (a bool, int, float or str argument, a tuple or array
  result: the stub says the same); for Cython functions it is ``inspect.signature``;
* each class's public attributes are those of ``dir()`` of the runtime class (dunders and
  pybind11's own aside), a ``@property`` in the stub exactly where the runtime has one.

test_checker_reports_* feed the checker broken copies of the stub: it must say what is wrong.
"""

from __future__ import annotations

import ast
import inspect
import re
import types
from pathlib import Path

import pytest

from lstm_fast import _core, _text

# ---- the stub side ----------------------------------------------------------------------------


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _is_type_alias(node: ast.AST) -> bool:
    """``_F32: TypeAlias = ...``: a name of the stub only."""
    ann = node.annotation if isinstance(node, ast.AnnAssign) else None
    return (isinstance(ann, ast.Name) and ann.id == "TypeAlias") or (
        isinstance(ann, ast.Attribute) and ann.attr == "TypeAlias"
    )


class Stub:
    """A parsed .pyi: its functions, classes, other names and type aliases."""

    def __init__(self, source: str, filename: str = "<stub>"):
        # Python 3.9's grammar: requires-python is 3.9 and a checker may parse it as such.
        tree = ast.parse(source, filename, feature_version=(3, 9))
        self.functions: dict[str, ast.FunctionDef] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.variables: set[str] = set()
        self.aliases: dict[str, ast.expr] = {}
        self.duplicates: list[str] = []
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            if isinstance(node, ast.AnnAssign) and _is_type_alias(node):
                self.aliases[node.target.id] = node.value
                continue
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                table = self.functions if isinstance(node, ast.FunctionDef) else self.classes
                if node.name in self.functions or node.name in self.classes:
                    # (@overload would need each variant compared: not supported here yet)
                    self.duplicates.append(node.name)
                table[node.name] = node
                continue
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.variables.add(node.target.id)
                continue
            if isinstance(node, ast.Assign):
                self.variables.update(t.id for t in node.targets if isinstance(t, ast.Name))
                continue
            raise AssertionError(
                f"{filename}:{node.lineno}: a {type(node).__name__} statement at the top level "
                "of a stub: tests/test_stubs.py does not know what names it defines"
            )

    def names(self) -> set[str]:
        return {n for n in (*self.functions, *self.classes, *self.variables) if not _is_dunder(n)}

    def resolve(self, ann: ast.expr | None) -> ast.expr | None:
        """An annotation with the stub's aliases replaced (an alias of an alias too)."""
        seen = 0
        while isinstance(ann, ast.Name) and ann.id in self.aliases and seen < 10:
            ann, seen = self.aliases[ann.id], seen + 1
        return ann


def _load_stub(module: types.ModuleType) -> tuple[Stub, Path]:
    path = Path(module.__file__).parent / (module.__name__.rsplit(".", 1)[1] + ".pyi")
    assert path.is_file(), f"{module.__name__}: no stub at {path}"
    return Stub(path.read_text(encoding="utf-8"), str(path)), path


# ---- the runtime side -------------------------------------------------------------------------


def runtime_names(module: types.ModuleType) -> set[str]:
    """Names a module exports: not dunders, imported modules (np) nor Cython's internals."""
    return {
        n
        for n in dir(module)
        if not _is_dunder(n)
        and not n.startswith("__pyx_")
        and not isinstance(getattr(module, n), types.ModuleType)
    }


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


class Param:
    """One parameter as both sides describe it (type: the coarse kind, None for any)."""

    def __init__(self, name, kind, has_default, default=None, type_=None, literal=True):
        self.name, self.kind, self.has_default = name, kind, has_default
        self.default, self.literal, self.type = default, literal, type_

    def __repr__(self):
        d = f"={self.default!r}" if self.has_default else ""
        return f"{self.kind[:2]}:{self.name}{d}"


POS, KW = "positional", "keyword-only"


def _runtime_kind(text: str | None):
    """The coarse type of a pybind11 annotation: bool, int, float, str, None, tuple, dict,
    (ndarray, dtype) or a class name; None for 'anything' (py::handle, py::object)."""
    if text is None:
        return None
    t = text.strip()
    alternatives = _split_top(t, "|")
    if len(alternatives) > 1:  # pybind11 3: "typing.SupportsInt | typing.SupportsIndex"
        kinds = {_runtime_kind(a) for a in alternatives}
        if "None" in kinds:
            return "optional"
        for k in ("float", "int"):  # SupportsFloat | SupportsIndex: a float
            if k in kinds and kinds <= {"float", "int"}:
                return k
        return None
    if "ndarray" in t or "NDArray" in t:
        m = re.search(r"(float32|float64|int32|int64)", t)
        return ("ndarray", m.group(1) if m else None)
    base = t.split("[", 1)[0].rsplit(".", 1)[-1]
    simple = {
        "bool": "bool",
        "int": "int",
        "SupportsInt": "int",
        "SupportsIndex": "int",
        "float": "float",
        "SupportsFloat": "float",
        "str": "str",
        "None": "None",
        "tuple": "tuple",
        "Tuple": "tuple",
        "dict": "dict",
        "Dict": "dict",
        "list": "list",
        "List": "list",
    }
    if base in simple:
        return simple[base]
    if base in ("handle", "object", "Any"):
        return None
    return base  # a bound class (lstm_fast._core.LSTMCache -> LSTMCache)


def pybind_signature(func) -> tuple[list[Param], object]:
    """Parameters and return kind from the first line of a pybind11 function's __doc__."""
    doc = func.__doc__ or ""
    first = doc.lstrip().split("\n", 1)[0]
    assert not first.startswith("Overloaded"), f"{func.__name__}: overloaded in the module"
    m = re.fullmatch(rf"{re.escape(func.__name__)}\((.*)\) -> (.+)", first.strip())
    assert m, f"{func.__name__}: no pybind11 signature line in __doc__: {first!r}"
    params, kind = [], POS
    for part in _split_top(m.group(1)):
        if part == "*":
            kind = KW
            continue
        if part == "/":  # the parameters so far are positional-only: not used by the core
            raise AssertionError(f"{func.__name__}: positional-only parameters not handled")
        name, _, rest = part.partition(":")
        pieces = _split_top(rest, "=")
        type_text = pieces[0] if pieces else None
        if len(pieces) > 1:
            try:
                params.append(
                    Param(name.strip(), kind, True, ast.literal_eval(pieces[1]), literal=True)
                )
            except (ValueError, SyntaxError):
                params.append(Param(name.strip(), kind, True, pieces[1], literal=False))
        else:
            params.append(Param(name.strip(), kind, False))
        params[-1].type = _runtime_kind(type_text)
    return params, _runtime_kind(m.group(2))


_C_SCALARS = {"bint": "bool", "double": "float", "object": None}
_C_SCALARS.update(dict.fromkeys(("int", "long", "int32_t", "int64_t", "Py_ssize_t"), "int"))
_C_ITEMS = {"int32_t": "int32", "int64_t": "int64", "float": "float32", "double": "float64"}


def _cython_kind(ctype: str):
    """The coarse type of a typed Cython parameter: a memoryview is an array of its item."""
    if "[" in ctype:
        return ("ndarray", _C_ITEMS.get(ctype.split("[", 1)[0].strip()))
    return _C_SCALARS.get(ctype, _runtime_kind(ctype))


def cython_declared_types(module: types.ModuleType) -> dict[str, dict[str, object]]:
    """{function: {parameter: coarse type}} from the `def` lines of the module's .pyx (shipped
    beside it; {} without it): Cython rejects an argument of another type than declared."""
    pyx = Path(module.__file__).parent / (module.__name__.rsplit(".", 1)[1] + ".pyx")
    if not pyx.is_file():
        return {}
    out = {}
    source = pyx.read_text(encoding="utf-8")
    for m in re.finditer(r"^def (\w+)\((.*?)\):", source, re.M | re.S):
        declared = {}
        for part in _split_top(m.group(2)):
            words = part.split("=", 1)[0].strip().rsplit(None, 1)
            declared[words[-1]] = _cython_kind(words[0]) if len(words) == 2 else None
        out[m.group(1)] = declared
    return out


def cython_signature(func, declared: dict[str, object]) -> list[Param]:
    sig = inspect.signature(func)  # Cython 3 (binding=True, its default)
    kinds = {
        inspect.Parameter.POSITIONAL_OR_KEYWORD: POS,
        inspect.Parameter.POSITIONAL_ONLY: POS,
        inspect.Parameter.KEYWORD_ONLY: KW,
    }
    out = []
    for p in sig.parameters.values():
        assert p.kind in kinds, f"{func.__name__}: a *args/**kwargs parameter ({p})"
        has = p.default is not inspect.Parameter.empty
        out.append(Param(p.name, kinds[p.kind], has, p.default if has else None))
        out[-1].type = declared.get(p.name)
    return out


# ---- the stub's parameters ---------------------------------------------------------------------


def _stub_kind(stub: Stub, ann: ast.expr | None):
    """The coarse type of a stub annotation, in _runtime_kind's terms ("optional" for
    Optional[...] and X | None: the runtime takes those as py::handle or py::object)."""
    ann = stub.resolve(ann)
    if ann is None:
        return None
    if isinstance(ann, ast.Constant) and ann.value is None:
        return "None"
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        return "optional"
    if isinstance(ann, (ast.Name, ast.Attribute)):
        name = ann.id if isinstance(ann, ast.Name) else ann.attr
        return _runtime_kind(name) if name != "object" else None
    if isinstance(ann, ast.Subscript):
        head = ann.value.id if isinstance(ann.value, ast.Name) else ann.value.attr
        if head == "Optional":
            return "optional"
        if head == "NDArray":
            dtype = stub.resolve(ann.slice)
            name = dtype.attr if isinstance(dtype, ast.Attribute) else None
            return ("ndarray", name if name in ("float32", "float64", "int32", "int64") else None)
        if head == "Literal":
            values = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
            kinds = {type(v.value).__name__ for v in values if isinstance(v, ast.Constant)}
            return kinds.pop() if len(kinds) == 1 else None
        return _runtime_kind(head)
    return None


def stub_signature(stub: Stub, fn: ast.FunctionDef, method: bool = False):
    a = fn.args
    assert not a.vararg and not a.kwarg, f"{fn.name}: *args/**kwargs in the stub"
    positional = a.posonlyargs + a.args
    if method:
        positional = positional[1:]  # self
    defaults = [None] * (len(a.posonlyargs + a.args) - len(a.defaults)) + list(a.defaults)
    if method:
        defaults = defaults[1:]
    params = []
    for arg, d in zip(positional, defaults):
        params.append(_stub_param(stub, arg, POS, d))
    for arg, d in zip(a.kwonlyargs, a.kw_defaults):
        params.append(_stub_param(stub, arg, KW, d))
    return params, _stub_kind(stub, fn.returns)


def _stub_param(stub, arg, kind, default):
    if default is None:
        return Param(arg.arg, kind, False, type_=_stub_kind(stub, arg.annotation))
    if isinstance(default, ast.Constant) and default.value is Ellipsis:
        value, literal = None, False  # `= ...`: a default, value unstated
    else:
        value, literal = ast.literal_eval(default), True
    return Param(arg.arg, kind, True, value, _stub_kind(stub, arg.annotation), literal)


# ---- the checker ------------------------------------------------------------------------------


def _compare_params(where, stub_params, run_params, problems):
    s_names = [p.name for p in stub_params]
    r_names = [p.name for p in run_params]
    if s_names != r_names:
        problems.append(f"{where}: parameters {s_names} in the stub, {r_names} at run time")
        return
    for s, r in zip(stub_params, run_params):
        if s.has_default and s.literal and s.default is None and s.type not in ("optional", None):
            problems.append(f"{where}: {s.name} defaults to None but is {s.type} in the stub")
        if s.kind != r.kind:
            problems.append(f"{where}: {s.name} is {s.kind} in the stub, {r.kind} at run time")
        if s.has_default != r.has_default:
            problems.append(
                f"{where}: {s.name} has {'a' if s.has_default else 'no'} default in the stub, "
                f"{'one' if r.has_default else 'none'} at run time"
            )
        elif s.has_default and s.literal and r.literal and s.default != r.default:
            problems.append(
                f"{where}: {s.name} defaults to {s.default!r} in the stub, {r.default!r} "
                "at run time"
            )
        if r.type is not None and s.type != r.type:
            problems.append(f"{where}: {s.name} is {s.type} in the stub, {r.type} at run time")


def _compare_returns(where, stub_ret, run_ret, problems):
    if run_ret is None or stub_ret == run_ret:
        return
    if (
        isinstance(run_ret, tuple)
        and isinstance(stub_ret, tuple)
        and None in (run_ret[1], stub_ret[1])
    ):
        return  # an array of unstated dtype on one side
    problems.append(f"{where}: returns {stub_ret} in the stub, {run_ret} at run time")


def check_module(module: types.ModuleType, stub: Stub, kind: str) -> list[str]:
    """Everything in which the stub and the module disagree, as sentences (empty: none)."""
    mod = module.__name__
    problems = [f"{mod}: {n} is defined twice in the stub" for n in stub.duplicates]
    s_names, r_names = stub.names(), runtime_names(module)
    for n in sorted(r_names - s_names):
        problems.append(f"{mod}.{n}: exported by the module, missing from the stub")
    for n in sorted(s_names - r_names):
        problems.append(f"{mod}.{n}: in the stub, not exported by the module")
    for name in sorted(s_names & r_names):
        obj = getattr(module, name)
        if name in stub.classes:
            if not isinstance(obj, type):
                problems.append(f"{mod}.{name}: a class in the stub, {type(obj).__name__} at run")
                continue
            problems += _check_class(mod, obj, stub, stub.classes[name], kind)
        elif name in stub.functions:
            if isinstance(obj, type) or not callable(obj):
                problems.append(f"{mod}.{name}: a function in the stub, {obj!r} at run time")
                continue
            s_params, s_ret = stub_signature(stub, stub.functions[name])
            if kind == "pybind11":
                r_params, r_ret = pybind_signature(obj)
                _compare_returns(f"{mod}.{name}", s_ret, r_ret, problems)
            else:
                r_params = cython_signature(obj, cython_declared_types(module).get(name, {}))
            _compare_params(f"{mod}.{name}", s_params, r_params, problems)
    return problems


def _class_members(cls: type) -> set[str]:
    return {n for n in dir(cls) if not _is_dunder(n) and not n.startswith("_pybind11")}


def _check_class(mod, cls, stub: Stub, node: ast.ClassDef, kind) -> list[str]:
    problems = []
    members: dict[str, ast.AST] = {}
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            members[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members[item.target.id] = item
    s_names = {n for n in members if not _is_dunder(n)}
    r_names = _class_members(cls)
    where = f"{mod}.{cls.__name__}"
    for n in sorted(r_names - s_names):
        problems.append(f"{where}.{n}: on the runtime class, missing from the stub")
    for n in sorted(s_names - r_names):
        problems.append(f"{where}.{n}: in the stub, not on the runtime class")
    for n in sorted(s_names & r_names):
        item, attr = members[n], inspect.getattr_static(cls, n)
        s_prop = isinstance(item, ast.FunctionDef) and any(
            isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list
        )
        r_prop = isinstance(attr, property)
        if s_prop != r_prop:
            problems.append(
                f"{where}.{n}: {'a' if s_prop else 'not a'} property in the stub, "
                f"{'a' if r_prop else 'not a'} property at run time"
            )
        elif s_prop and kind == "pybind11":
            r_ret = _runtime_kind(_getter_return(attr))
            _compare_returns(f"{where}.{n}", _stub_kind(stub, item.returns), r_ret, problems)
        elif isinstance(item, ast.FunctionDef) and kind == "pybind11" and callable(attr):
            s_params, s_ret = stub_signature(stub, item, method=True)
            r_params, r_ret = pybind_signature(attr)
            _compare_params(f"{where}.{n}", s_params, r_params[1:], problems)  # (self)
            _compare_returns(f"{where}.{n}", s_ret, r_ret, problems)
    return problems


def _getter_return(prop: property):
    """The return annotation of a pybind11 read-only property's getter ("(self: X) -> tuple")."""
    m = re.search(r"\) -> (.+)", (prop.fget.__doc__ or "").lstrip().split("\n", 1)[0])
    return m.group(1) if m else None


MODULES = [(_core, "pybind11"), (_text, "cython")]


# ---- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module,kind", MODULES, ids=["_core", "_text"])
def test_stub_matches_module(module, kind):
    stub, path = _load_stub(module)
    problems = check_module(module, stub, kind)
    assert not problems, f"{path} disagrees with the compiled module:\n  " + "\n  ".join(problems)


def test_core_stub_covers_every_binding():
    """The comparison above is not vacuous: the core's functions and caches are all there."""
    stub, _ = _load_stub(_core)
    assert {"LSTMCache", "GRUCache", "RNNCache", "LSTMProjCache"} <= set(stub.classes)
    assert {"lstm_forward", "lstm_backward", "step_into", "_set_isa"} <= set(stub.functions)
    assert len(stub.names()) == len(runtime_names(_core)) >= 37


def test_package_declares_its_types():
    """PEP 561: the py.typed marker sits in the package next to the stubs (a source checkout or
    an installed wheel), so type checkers read lstm_fast's annotations and the compiled modules'
    stubs instead of treating the package as untyped."""
    marker = Path(_core.__file__).parent / "py.typed"
    assert marker.is_file(), f"no PEP 561 marker at {marker}"


def test_pybind_signature_parser():
    params, ret = pybind_signature(_core.lstm_backward)
    assert [p.name for p in params][:4] == ["cache", "dy", "dh_n", "dc_n"]
    assert params[-1].name == "need_dx" and params[-1].kind == KW
    assert params[-1].has_default and params[-1].default is True
    assert [p.has_default for p in params[:4]] == [False] * 4
    assert ret == "tuple"
    params, ret = pybind_signature(_core.adam_step)
    assert (params[-3].name, params[-3].default, params[-3].type) == ("l2", 0.0, "float")
    assert ret == "None"
    params, ret = pybind_signature(_core._choose_schedule)
    assert [p.type for p in params] == ["int"] * 5 and ret == "str"
    # a method's line names self first (what _check_class drops)
    params, ret = pybind_signature(inspect.getattr_static(_core.LSTMCache, "__repr__"))
    assert [p.name for p in params] == ["self"] and ret == "str"
    prop = inspect.getattr_static(_core.LSTMProjCache, "shape")
    assert _runtime_kind(_getter_return(prop)) == "tuple"


# Edits that break the stub, each as (module, text in the stub, its replacement, a phrase the
# checker must report). The real stub passes; each broken copy must not.
BREAKS = {
    "function-deleted": (_core, "def sumsq(", "def _gone(", "sumsq: exported by the module"),
    "function-unknown": (_core, "def max_threads(", "def max_thread(", "max_thread: in the stub"),
    "parameter-renamed": (
        _core,
        "def sigmoid(x: _F32)",
        "def sigmoid(a: _F32)",
        "sigmoid: parameters ['a'] in the stub, ['x'] at run time",
    ),
    "parameter-moved": (
        _core,
        "def index_add_rows(out: _F32, ids: _Ints, src: _F32)",
        "def index_add_rows(ids: _Ints, out: _F32, src: _F32)",
        "index_add_rows: parameters",
    ),
    "keyword-only-lost": (
        _core,
        "    dembedding: Optional[_F32] = None,\n    *,\n",
        "    dembedding: Optional[_F32] = None,\n",
        "lstm_backward: need_dx is positional in the stub, keyword-only at run time",
    ),
    "default-added": (
        _core,
        "    training: bool,\n    batch_sizes: Optional[_I64] = None,\n    sorted_indices",
        "    training: bool = False,\n    batch_sizes: Optional[_I64] = None,\n    sorted_indices",
        "lstm_forward: training has a default in the stub, none at run time",
    ),
    "default-dropped": (
        _core,
        "    trans_a: bool = False,\n    trans_b",
        "    trans_a: bool,\n    trans_b",
        "gemm: trans_a has no default in the stub, one at run time",
    ),
    "default-value": (
        _core,
        "decay: float = 1.0",
        "decay: float = 0.5",
        "adam_step: decay defaults to 0.5 in the stub, 1.0 at run time",
    ),
    "argument-type": (
        _core,
        "def _set_isa(name: str)",
        "def _set_isa(name: int)",
        "_set_isa: name is int in the stub, str at run time",
    ),
    "return-type": (
        _core,
        "def sumsq(x: _F32) -> float:",
        "def sumsq(x: _F32) -> int:",
        "sumsq: returns int in the stub, float at run time",
    ),
    "return-dtype": (
        _core,
        "-> NDArray[np.float64]:",
        "-> _F32:",
        "softmax_xent: returns ('ndarray', 'float32') in the stub, ('ndarray', 'float64')",
    ),
    "none-default-not-optional": (
        _core,
        "    bias: Optional[_F32] = None,\n",
        "    bias: _F32 = None,\n",
        "gemm: bias defaults to None but is",
    ),
    "cache-attribute-missing": (
        _core,
        "    @property\n    def m(self) -> _F32:",
        "    @property\n    def _m(self) -> _F32:",
        "LSTMProjCache.m: on the runtime class, missing from the stub",
    ),
    "cache-property-as-method": (
        _core,
        '    @property\n    def nbytes(self) -> int:\n        """0:',
        '    def nbytes(self) -> int:\n        """0:',
        "RNNCache.nbytes: not a property in the stub, a property at run time",
    ),
    "cache-property-type": (
        _core,
        "def shape(self) -> tuple[int, int, int, int, int]:",
        "def shape(self) -> int:",
        "LSTMProjCache.shape: returns int in the stub, tuple at run time",
    ),
    "class-as-function": (
        _core,
        "class GRUCache:",
        "def GRUCache() -> None: ...\nclass _GRUCache:",
        "GRUCache: a function in the stub",
    ),
    "cython-function-deleted": (
        _text,
        "def featurize(",
        "def featurise(",
        "featurize: exported by the module, missing from the stub",
    ),
    "cython-parameter-renamed": (
        _text,
        "start: int, length: int",
        "start: int, n: int",
        "gather_windows: parameters",
    ),
    "cython-default-added": (
        _text,
        "stoi: dict[str, int], unk: int)",
        "stoi: dict[str, int], unk: int = 0)",
        "encode_tokens: unk has a default in the stub, none at run time",
    ),
    "cython-argument-type": (
        _text,
        "def count_codepoints(text: str)",
        "def count_codepoints(text: bytes)",
        "count_codepoints: text is bytes in the stub, str at run time",
    ),
    "cython-array-dtype": (
        _text,
        "table: NDArray[np.int32]",
        "table: NDArray[np.int64]",
        "encode_codepoints: table is ('ndarray', 'int64') in the stub, ('ndarray', 'int32')",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_checker_reports_a_broken_stub(case):
    module, old, new, expect = BREAKS[case]
    path = _load_stub(module)[1]
    kind = dict(MODULES)[module]
    source = path.read_text(encoding="utf-8")
    assert source.count(old) == 1, f"{case}: {old!r} is not once in {path}: update this case"
    problems = check_module(module, Stub(source.replace(old, new)), kind)
    assert any(expect in p for p in problems), f"{case}: expected {expect!r} among {problems}"
