"""Checkpoints: atomic writes (a writer killed mid-write leaves the previous file), refusal of
truncated, foreign and pickled files with a clear error, and shape/dtype checks before any model
or optimizer state is restored."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

from lstm_fast import cli, data
from lstm_fast.models import (
    CharLM,
    ClassifierConfig,
    NaiveBayes,
    SequenceClassifier,
    TrainConfig,
    load_charlm,
    train_charlm,
)
from lstm_fast.models import checkpoint as ck
from lstm_fast.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_write_text,
    load_npz,
    restore_module,
    save_npz,
)
from lstm_fast.models.classifier import CHECKPOINT as CLASSIFIER_FILE
from lstm_fast.models.classifier import load_classifier
from lstm_fast.module import Parameter
from lstm_fast.optim import SGD, Adam, RMSprop

TMP_NAME = re.compile(r"^\.ck\.npz\.\d+\.\d+\.[0-9a-f]{8}\.tmp$")


def _arrays(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "param/w": rng.standard_normal((5, 3)).astype(np.float32),
        "b": rng.standard_normal(7),
        "ids": rng.integers(0, 100, (2, 3, 4)),
    }


def _assert_arrays_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _write_raw(path, entries: dict) -> None:
    """A zip of .npy entries written as-is (pickle allowed): the crafted files a loader meets."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in entries.items():
            with zf.open(name + ".npy", "w") as f:
                if isinstance(value, bytes):
                    f.write(value)
                else:
                    np.lib.format.write_array(f, value, allow_pickle=True)


def _meta_bytes(meta) -> np.ndarray:
    text = meta if isinstance(meta, (str, bytes)) else json.dumps(meta)
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return np.frombuffer(raw, dtype=np.uint8)


# -- writing ---------------------------------------------------------------------------------------
def test_round_trip_of_dtypes_layouts_and_names(tmp_path):
    rng = np.random.default_rng(0)
    m = rng.standard_normal((4, 6))
    arrays = {
        "f32": m.astype(np.float32),
        "f64": m,
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u64": np.arange(4, dtype=np.uint64),
        "bool": m > 0,
        "scalar": np.float32(2.5),
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(m),
        "strided": m[::2, ::3],
        "file": np.ones(2),  # names np.savez would take as its own arguments
        "allow_pickle": np.ones(2),
        "param/rnn.weight_ih_l0": np.ones((8, 2), np.float32),
    }
    meta = {"kind": "test", "text": "한국어 “quotes”", "nested": {"a": [1, 2.5, None]}}
    path = tmp_path / "ck.npz"
    save_npz(path, arrays, meta)
    got, got_meta = load_npz(path)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == np.asarray(v).dtype and got[k].shape == np.shape(v), k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert got_meta == dict(meta, format_version=FORMAT_VERSION)
    # plain NumPy reads it too, without pickle
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["f32"], arrays["f32"])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_refused_arguments_leave_no_file(tmp_path):
    path = tmp_path / "ck.npz"
    save_npz(path, _arrays(0), {"kind": "old"})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="obj: object arrays"):
        save_npz(path, {"obj": np.array([{}], dtype=object)}, {})
    with pytest.raises(ValueError, match="__meta__"):
        save_npz(path, {"__meta__": np.zeros(2)}, {})
    with pytest.raises(TypeError):
        save_npz(path, {"a": np.zeros(2)}, {"bad": {1, 2}})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.npz"]


@pytest.mark.parametrize("exc", [OSError, KeyboardInterrupt])
def test_failed_write_removes_its_temporary_file(tmp_path, monkeypatch, exc):
    path = tmp_path / "ck.npz"
    save_npz(path, _arrays(0), {"kind": "old"})
    before = path.read_bytes()
    real = np.lib.format.write_array
    calls = []

    def failing(fp, a, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise exc("disk full")
        return real(fp, a, *args, **kw)

    monkeypatch.setattr(ck._npy, "write_array", failing)
    with pytest.raises(exc, match="disk full"):
        save_npz(path, _arrays(1), {"kind": "new"})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.npz"]


def test_atomic_write_text(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_text(path, "첫째\n")
    atomic_write_text(path, "second “text”\n")
    assert path.read_text(encoding="utf-8") == "second “text”\n"

    def failing_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(ck.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_text(path, "third\n")
    assert path.read_text(encoding="utf-8") == "second “text”\n"
    assert os.listdir(tmp_path) == ["config.json"]


def test_concurrent_writers_never_tear_the_file(tmp_path):
    path = tmp_path / "ck.npz"
    expect = {t: {"a": np.full((64, 64), t, np.float32)} for t in range(4)}
    errors = []

    def writer(t):
        try:
            for _ in range(5):
                save_npz(path, expect[t], {"writer": t})
                load_npz(path)  # whatever is there is complete
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in expect]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    arrays, meta = load_npz(path)
    _assert_arrays_equal(arrays, expect[meta["writer"]])
    assert os.listdir(tmp_path) == ["ck.npz"]


# The child blocks inside the write at the point under test, after telling the parent; the parent
# then kills it with SIGKILL (no cleanup can run). The checkpoint module is loaded from its file,
# so the child imports only NumPy.
CHILD = r"""
import importlib.util, os, sys
import numpy as np

spec = importlib.util.spec_from_file_location("checkpoint", sys.argv[1])
ck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ck)
path, where = sys.argv[2], sys.argv[3]


def block(*args, **kwargs):
    print("writing", flush=True)
    sys.stdin.read()  # the parent never writes: blocks until killed
    os._exit(3)


if where == "entry":  # in the middle of the second array: a half-written temporary file
    real, calls = ck._npy.write_array, []

    def write_array(fp, a, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            fp.write(a.tobytes()[: a.nbytes // 2])
            block()
        return real(fp, a, *args, **kw)

    ck._npy.write_array = write_array
elif where == "fsync":  # the temporary file is complete, not yet renamed
    ck.os.fsync = block
elif where == "dirsync":  # renamed, the directory not yet fsynced
    ck._fsync_dir = block
new = {f"a{k}": np.full((128, 128), k + 1, np.float32) for k in range(3)}
ck.save_npz(path, new, {"kind": "new"})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("where", ["entry", "fsync", "dirsync"])
def test_writer_killed_mid_write_leaves_a_complete_checkpoint(tmp_path, where):
    path = tmp_path / "ck.npz"
    old = _arrays(0)
    save_npz(path, old, {"kind": "old"})
    before = path.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, ck.__file__, str(path), where],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline()
        if line != b"writing\n":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the writer did not reach {where}: {line!r} {err.decode()}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert proc.returncode == -signal.SIGKILL
    arrays, meta = load_npz(path)
    strays = sorted(n for n in os.listdir(tmp_path) if n != "ck.npz")
    assert all(TMP_NAME.match(n) for n in strays), strays
    if where == "dirsync":  # the rename happened: the new checkpoint, complete
        assert meta["kind"] == "new" and not strays
        for k in range(3):
            assert np.all(arrays[f"a{k}"] == k + 1)
    else:  # the previous checkpoint, bit for bit; the torn file is a stray nobody reads
        assert path.read_bytes() == before and meta["kind"] == "old"
        _assert_arrays_equal(arrays, old)
        assert len(strays) == 1
        if where == "entry":
            with pytest.raises(CheckpointError):
                load_npz(tmp_path / strays[0])
    # the next write goes through as usual
    save_npz(path, _arrays(2), {"kind": "next"})
    assert load_npz(path)[1]["kind"] == "next"


# -- loading: truncated, foreign, malformed and pickled files --------------------------------------
@pytest.mark.parametrize("cut", [0, 1, 4, 30, 0.25, 0.5, 0.9, -22, -1])
def test_truncated_file_is_refused(tmp_path, cut):
    path = tmp_path / "ck.npz"
    save_npz(path, _arrays(0), {"kind": "test"})
    raw = path.read_bytes()
    n = int(len(raw) * cut) if isinstance(cut, float) else cut % len(raw) if cut < 0 else cut
    path.write_bytes(raw[:n])
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as e:
        load_npz(path)
    if n == 0:
        assert "empty file (0 bytes)" in str(e.value)


def test_flipped_byte_is_refused(tmp_path):
    path = tmp_path / "ck.npz"
    arrays = {"w": np.zeros(1000, np.float32)}
    save_npz(path, arrays, {})
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x00" * 400) + 200] ^= 0x10  # inside w's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="CRC"):
        load_npz(path)


def _foreign(path, kind):
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "text":
        path.write_text("step,loss\n1,2.5\n", encoding="utf-8")
    elif kind == "npz without __meta__":
        np.savez(path, w=np.ones(3))
    elif kind == "zip of something else":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("README.txt", "hello")
    elif kind == "empty zip":
        zipfile.ZipFile(path, "w").close()
    elif kind == ".npy":
        with open(path, "wb") as f:
            np.save(f, np.ones(3))
    elif kind == "meta not uint8":
        _write_raw(path, {"__meta__": np.zeros(3, np.float32)})
    elif kind == "meta not UTF-8":
        _write_raw(path, {"__meta__": _meta_bytes(b'{"format_version": 1, "k": "\xff\xfe"}')})
    elif kind == "meta not JSON":
        _write_raw(path, {"__meta__": _meta_bytes('{"format_version": 1,')})
    elif kind == "meta not an object":
        _write_raw(path, {"__meta__": _meta_bytes([1, 2])})
    elif kind == "no format_version":
        _write_raw(path, {"__meta__": _meta_bytes({"kind": "charlm"})})
    elif kind == "newer format_version":
        _write_raw(path, {"__meta__": _meta_bytes({"format_version": FORMAT_VERSION + 1})})
    elif kind == "newer format_version, unreadable entries":  # the version is read first
        newer = _meta_bytes({"format_version": FORMAT_VERSION + 1})
        _write_raw(path, {"w": b"\x93NUMPY\x09\x00future", "__meta__": newer})
    elif kind == "older format_version":
        _write_raw(path, {"__meta__": _meta_bytes({"format_version": FORMAT_VERSION - 1})})
    elif kind == "format_version as text":
        _write_raw(path, {"__meta__": _meta_bytes({"format_version": str(FORMAT_VERSION)})})
    elif kind == "header bigger than data":
        import io

        buf = io.BytesIO()
        header = {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}
        np.lib.format.write_array_header_1_0(buf, header)
        entry = buf.getvalue() + b"\x00" * 8
        _write_raw(path, {"__meta__": _meta_bytes({"format_version": 1}), "w": entry})
    else:  # pragma: no cover
        raise AssertionError(kind)


FOREIGN = {
    "random bytes": "not an lstm_fast checkpoint",
    "text": "not an lstm_fast checkpoint",
    "npz without __meta__": "no __meta__ entry",
    "zip of something else": "'README.txt' is not a .npy array",
    "empty zip": "no __meta__ entry",
    ".npy": "a single .npy array",
    "meta not uint8": "expected a 1-D uint8 array",
    "meta not UTF-8": "not valid UTF-8",
    "meta not JSON": "not valid JSON",
    "meta not an object": "expected a JSON object, got list",
    "no format_version": "got None",
    "newer format_version": "written by a newer lstm_fast",
    "newer format_version, unreadable entries": "written by a newer lstm_fast",
    "older format_version": "an older format",
    "format_version as text": "got '1'",
    "header bigger than data": "header says shape",
}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_or_malformed_file_is_refused(tmp_path, kind):
    path = tmp_path / "ck.npz"
    _foreign(path, kind)
    with pytest.raises(CheckpointError) as e:
        load_npz(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and FOREIGN[kind] in msg, msg
    assert isinstance(e.value, ValueError)


class _Payload:
    """Unpickling it creates a file: the side effect a loader must never cause."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["entry", "meta", "structured"])
def test_pickled_objects_are_never_unpickled(tmp_path, where):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control))).close()
    assert control.exists()  # the payload is live
    marker = tmp_path / "marker"
    evil = np.array([_Payload(marker)], dtype=object)
    meta = _meta_bytes({"format_version": FORMAT_VERSION})
    if where == "entry":
        entries = {"__meta__": meta, "param/w": evil}
    elif where == "meta":
        entries = {"__meta__": evil}
    else:
        rec = np.zeros(1, dtype=[("x", np.float32), ("o", object)])
        rec["o"][0] = _Payload(marker)
        entries = {"__meta__": meta, "rec": rec}
    path = tmp_path / "ck.npz"
    _write_raw(path, entries)
    with pytest.raises(CheckpointError, match="Python objects") as e:
        load_npz(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


# -- shapes and dtypes: nothing is restored unless everything fits ---------------------------------
def _params_of(model) -> dict:
    return {f"param/{k}": v for k, v in model.state_dict().items()}


def test_restore_module_checks_every_array_and_changes_nothing(tmp_path):
    small = CharLM(12, 4, 8, 1, seed=0)
    big = CharLM(12, 4, 10, 2, seed=1)
    path = tmp_path / "ck.npz"
    save_npz(path, _params_of(big), {})
    arrays, _ = load_npz(path)
    before = small.state_dict()
    with pytest.raises(CheckpointError) as e:
        restore_module(path, small, arrays)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    assert (
        "param/rnn.weight_ih_l0: expected shape (32, 4) dtype float32, "
        "got shape (40, 4) dtype float32" in msg
    )
    assert "param/rnn.weight_hh_l0: expected shape (32, 8)" in msg
    for k, v in small.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)

    good = _params_of(CharLM(12, 4, 8, 1, seed=5))
    bias = "param/decoder.bias"
    cases = [
        (
            dict(good, **{bias: good[bias].astype(np.float64)}),
            f"{bias}: expected shape (12,) dtype float32, got shape (12,) dtype float64",
        ),
        (
            {k: v for k, v in good.items() if k != bias},
            f"{bias}: missing (expected shape (12,) dtype float32)",
        ),
        (dict(good, **{"param/extra": np.zeros(3, np.float32)}), "param/extra: unexpected entry"),
    ]
    for arrs, expect in cases:
        with pytest.raises(CheckpointError, match=re.escape(expect)):
            restore_module(path, small, arrs)
        for k, v in small.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)
    restore_module(path, small, good)
    for k, v in small.state_dict().items():
        np.testing.assert_array_equal(v, good[f"param/{k}"], err_msg=k)


TEXT = "def f(x):\n    return x + 1  # 한국어\n" * 20
SMALL = dict(
    embed_size=4,
    hidden_size=8,
    num_layers=1,
    seq_len=8,
    batch_size=2,
    steps=2,
    val_every=0,
    checkpoint_every=0,
    val_fraction=0.1,
)


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("charlm") / "run"
    train_charlm(TrainConfig(**SMALL), out, text=TEXT, progress=False, log=lambda m: None)
    return out


@pytest.fixture
def run_copy(charlm_run, tmp_path):
    return shutil.copytree(charlm_run, tmp_path / "run")


def _rewrite(path, arrays=None, meta=None) -> None:
    a, m = load_npz(path)
    save_npz(path, a if arrays is None else arrays, m if meta is None else meta)


def test_load_charlm_rejects_a_checkpoint_of_another_size(run_copy):
    path = run_copy / "checkpoint.npz"
    _, vocab, meta0, arrays = load_charlm(run_copy)
    # metadata describing one size, arrays of another
    _rewrite(path, meta=dict(meta0, model=dict(meta0["model"], hidden_size=12)))
    with pytest.raises(CheckpointError) as e:
        load_charlm(run_copy)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    assert "param/rnn.weight_hh_l0: expected shape (48, 12) dtype float32, got shape (32, 8)" in msg
    # the arrays of a bigger model under the original metadata
    big = CharLM(len(vocab), 4, 16, 1, seed=0)
    _rewrite(path, arrays={**arrays, **_params_of(big)}, meta=meta0)
    with pytest.raises(
        CheckpointError, match=re.escape("expected shape (32, 8) dtype float32, got shape (64, 16)")
    ):
        load_charlm(run_copy)
    # a vocabulary that does not match the model
    bad_vocab = dict(meta0, model=dict(meta0["model"], vocab_size=len(vocab) + 1))
    _rewrite(path, arrays=arrays, meta=bad_vocab)
    with pytest.raises(CheckpointError, match="vocab: expected"):
        load_charlm(run_copy)


def _tamper(path, what):
    arrays, meta = load_npz(path)
    if what == "optimizer state shape":
        arrays["optim/0.exp_avg"] = arrays["optim/0.exp_avg"][:-1]
    elif what == "optimizer state dtype":
        arrays["optim/1.exp_avg_sq"] = arrays["optim/1.exp_avg_sq"].astype(np.float64)
    elif what == "optimizer state missing":
        del arrays["optim/2.exp_avg"]
    elif what == "optimizer state unexpected":
        arrays["optim/0.momentum_buffer"] = arrays["optim/0.exp_avg"]
    elif what == "carried state batch":
        arrays["state/h"] = arrays["state/h"][:, :1]
    elif what == "history dtype":
        arrays["hist/train_bpc"] = arrays["hist/train_bpc"].astype(np.float32)
    elif what == "step":
        meta["step"] = "2"
    elif what == "generator state":
        meta["rng"] = {"rnn": {"bit_generator": "nonsense"}, "drop": meta["rng"]["drop"]}
    elif what == "optimizer metadata":
        del meta["optimizer"]
    elif what == "config":
        meta["config"] = dict(meta["config"], no_such_option=1)
    save_npz(path, arrays, meta)


RESUME = {
    "optimizer state shape": "optim/0.exp_avg: expected shape (20, 4) dtype float32, "
    "got shape (19, 4) dtype float32",
    "optimizer state dtype": "optim/1.exp_avg_sq: expected shape (32, 4) dtype float32, "
    "got shape (32, 4) dtype float64",
    "optimizer state missing": "optim/2.exp_avg: missing",
    "optimizer state unexpected": "optim/0.momentum_buffer: unexpected entry",
    "carried state batch": "state/h: expected shape (1, 2, 8) dtype float32, got shape (1, 1, 8)",
    "history dtype": "hist/train_bpc: expected shape (*,) dtype float64, "
    "got shape (2,) dtype float32",
    "step": "training state: step: expected an int >= 0, got '2'",
    "generator state": "training state: ",
    "optimizer metadata": "training state: missing entry 'optimizer'",
    "config": "no_such_option",
}


@pytest.mark.parametrize("what", list(RESUME))
def test_resume_checks_the_training_state(run_copy, what):
    path = run_copy / "checkpoint.npz"
    _tamper(path, what)
    cfg = TrainConfig(**dict(SMALL, steps=4))
    with pytest.raises(CheckpointError) as e:
        train_charlm(cfg, run_copy, resume=True, text=TEXT, progress=False, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and RESUME[what] in msg, msg


def test_cli_reports_a_broken_checkpoint(run_copy, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    path = run_copy / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:100])
    for cmd in (["evaluate", str(run_copy), str(corpus)], ["sample", str(run_copy)]):
        assert cli.main(cmd) == 1
        err = capsys.readouterr().err
        assert f"{path}: truncated or corrupt .npz archive" in err and "Traceback" not in err


def _classifier_run(tmp_path, hidden_size=6):
    texts = ["좋다 최고", "별로 최악", "great film", "bad film"]
    vocab = data.Vocab.build(texts, level="char", min_freq=1, pad=True)
    model = SequenceClassifier(len(vocab), 2, 4, hidden_size, pad_id=vocab.pad_id, seed=0)
    meta = {
        "kind": "classifier",
        "config": dataclasses.asdict(ClassifierConfig()),
        "model": model.config,
        "vocab": vocab.to_dict(),
        "history": [],
        "best_epoch": 0,
    }
    run = tmp_path / "cls"
    run.mkdir(exist_ok=True)
    save_npz(run / CLASSIFIER_FILE, _params_of(model), meta)
    return run, model, meta


def test_load_classifier_checks_shapes_and_metadata(tmp_path):
    run, model, meta = _classifier_run(tmp_path)
    loaded, _, nb, _ = load_classifier(run)
    assert nb is None
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v, err_msg=k)
    path = run / CLASSIFIER_FILE
    arrays, _ = load_npz(path)
    save_npz(path, arrays, dict(meta, model=dict(meta["model"], hidden_size=9)))
    with pytest.raises(CheckpointError) as e:
        load_classifier(run)
    assert (
        "param/rnn_fwd.weight_hh_l0: expected shape (36, 9) dtype float32, got shape (24, 6)"
        in str(e.value)
    )
    save_npz(path, arrays, {k: v for k, v in meta.items() if k != "model"})
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"{path}: __meta__ of a classifier checkpoint: missing entry 'model'"),
    ):
        load_classifier(run)
    save_npz(path, arrays, dict(meta, kind="charlm"))
    with pytest.raises(CheckpointError, match="expected a classifier checkpoint, got 'charlm'"):
        load_classifier(run)


def test_naive_bayes_file_is_checked(tmp_path):
    nb = NaiveBayes().fit(["good film", "bad film", "great"], [1, 0, 1])
    path = tmp_path / "nb.npz"
    nb.save(path)
    back = NaiveBayes.load(path)
    assert back.predict(["good", "bad"]).tolist() == nb.predict(["good", "bad"]).tolist()
    arrays, meta = load_npz(path)
    F = len(meta["features"])
    save_npz(path, dict(arrays, counts=arrays["counts"][:-1]), meta)
    with pytest.raises(
        CheckpointError,
        match=re.escape(f"counts: expected shape ({F}, *) dtype float64, got shape ({F - 1}, 2)"),
    ):
        NaiveBayes.load(path)
    save_npz(path, dict(arrays, class_count=arrays["class_count"][:1]), meta)
    with pytest.raises(CheckpointError, match=re.escape("class_count: expected shape (2,)")):
        NaiveBayes.load(path)
    save_npz(path, arrays, dict(meta, features="abc"))
    with pytest.raises(CheckpointError, match="features: expected a list of str"):
        NaiveBayes.load(path)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda sd: sd["arrays"].pop("1.exp_avg"), r"missing arrays \['1.exp_avg'\]"),
        (lambda sd: sd["arrays"].update({"0.velocity": np.zeros(3, np.float32)}), "0.velocity"),
        (lambda sd: sd["arrays"].update({"5.exp_avg": np.zeros(3, np.float32)}), "no parameter 5"),
        (lambda sd: sd["arrays"].update({"0.exp_avg": np.zeros(3, np.int32)}), "dtype int32"),
        (lambda sd: sd["arrays"].update({"0.exp_avg": np.zeros(4, np.float32)}), r"shape \(3,\)"),
        (lambda sd: sd["hyper"].update({"params": []}), "hyper: expected the keys"),
        (lambda sd: sd.update({"step": -1}), "step: expected an int >= 0"),
        (lambda sd: sd.update({"type": "SGD"}), "expected a Adam state"),
    ],
)
def test_optimizer_load_state_dict_is_checked_and_all_or_nothing(change, match):
    ps = [Parameter(np.ones(3)), Parameter(np.ones((2, 2)))]
    opt = Adam(ps, lr=0.1)
    for p in ps:
        p.grad[...] = 0.5
    opt.step()
    sd = opt.state_dict()
    assert set(sd["arrays"]) == set(opt.state_spec())
    fresh = Adam([Parameter(np.ones(3)), Parameter(np.ones((2, 2)))], lr=7.0)
    change(sd)
    with pytest.raises((ValueError, TypeError), match=match):
        fresh.load_state_dict(sd)
    assert fresh.lr == 7.0 and fresh.step_count == 0 and fresh.state == [{}, {}]


def test_optimizer_state_spec_follows_hyper_parameters():
    ps = [Parameter(np.ones(3))]
    assert SGD(ps).state_spec(step=1) == {}
    assert list(SGD(ps, momentum=0.9).state_spec(step=1)) == ["0.momentum_buffer"]
    assert list(RMSprop(ps, centered=True, momentum=0.5).state_spec(step=1)) == [
        "0.square_avg",
        "0.grad_avg",
        "0.momentum_buffer",
    ]
    assert Adam(ps).state_spec(step=0) == {}
