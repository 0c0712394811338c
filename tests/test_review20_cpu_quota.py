"""Review 20: the default team respects a container's CPU quota (cgroup v2 cpu.max, v1
cpu.cfs_quota_us / cpu.cfs_period_us), not only the affinity mask.

A container limited to 2 CPUs by a quota may still see 64 CPUs in its affinity mask; a team of
64 threads with a barrier per step then crawls. cpu_info()["cpus"] is now the affinity mask's
count, at most ceil(quota / period) (at least 1), and cpu_info()["cpu_quota"] the quota in CPUs
(None: no limit). Covered: the parser (_core._parse_cpu_quota) on v2 and v1 texts, malformed
and empty ones; cpu_info against this machine's own files (read here, nothing hard-coded); and,
where a private mount namespace can be made (unshare), child processes that see fake cgroup
files: the walk from the process's own cgroup up to the root (the smallest quota wins), the v1
layout, the re-read by set_num_threads, and malformed files (no limit).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import lstm_fast
from lstm_fast import _core


@pytest.mark.parametrize(
    "text,quota",
    [
        ("max 100000", None),
        ("max 100000\n", None),
        ("200000 100000", 2.0),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("100000 100000", 1.0),
        ("  7 2 ", 3.5),
        # cgroup v1: cpu.cfs_quota_us and cpu.cfs_period_us joined by a space
        ("-1\n 100000\n", None),
        ("-1 100000", None),
        ("250000\n 100000\n", 2.5),
        # malformed: no limit
        ("", None),
        ("garbage", None),
        ("max", None),
        ("100000", None),
        ("1 2 3", None),
        ("1.5 1", None),
        ("abc 100000", None),
        ("100000 abc", None),
        ("0 100000", None),
        ("5 0", None),
        ("5 -1", None),
        ("-", None),
        ("99999999999999999999 1", None),
    ],
)
def test_parse_cpu_quota(text, quota):
    assert _core._parse_cpu_quota(text) == quota


def _usable(affinity, quota):
    return affinity if quota is None else min(affinity, max(1, math.ceil(quota)))


def test_usable_cpus_from_a_quota():
    """What the parser's quota gives a team: 1.5 CPUs -> 2, 0.5 -> 1, never above the mask."""
    for text, cpus in (("150000 100000", 2), ("50000 100000", 1), ("200000 100000", 2)):
        assert _usable(64, _core._parse_cpu_quota(text)) == cpus
    assert _usable(1, _core._parse_cpu_quota("400000 100000")) == 1
    assert _usable(8, _core._parse_cpu_quota("max 100000")) == 8


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _own_cgroup(lines, controller):
    for line in lines.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if (controller == "" and hid == "0" and ctrls == "") or (
            controller and controller in ctrls.split(",")
        ):
            return "/" if not path.startswith("/") or "/.." in path else path
    return "/"


def _machine_quota():
    """The quota the process's cgroup files set, read as the core reads them."""
    if not sys.platform.startswith("linux"):
        return None
    self_cg = _read("/proc/self/cgroup")
    quotas = []

    def walk(root, path, quota_at):
        while True:
            q = quota_at(root + ("" if path == "/" else path))
            if q is not None:
                quotas.append(q)
            if path in ("/", ""):
                return
            path = path.rsplit("/", 1)[0] or "/"

    walk(
        "/sys/fs/cgroup",
        _own_cgroup(self_cg, ""),
        lambda d: _core._parse_cpu_quota(_read(d + "/cpu.max")),
    )

    def v1(d):
        quota = _read(d + "/cpu.cfs_quota_us")
        return (
            _core._parse_cpu_quota(quota + " " + _read(d + "/cpu.cfs_period_us")) if quota else None
        )

    walk("/sys/fs/cgroup/cpu", _own_cgroup(self_cg, "cpu"), v1)
    return min(quotas) if quotas else None


def test_cpu_info_reports_this_machines_quota(threads):
    """cpu_info's cpu_quota and cpus agree with this machine's cgroup files and affinity mask
    (whatever they hold: read here, not assumed)."""
    info = lstm_fast.cpu_info()
    assert "cpu_quota" in info
    quota = _machine_quota()
    assert info["cpu_quota"] == quota
    assert info["cpu_quota"] is None or isinstance(info["cpu_quota"], float)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    _core._set_cpu_limit(0)  # the suite lifts the bound (conftest): the CPUs themselves here
    try:
        lstm_fast.set_num_threads(lstm_fast.get_num_threads())  # reads them again
        cpus = lstm_fast.cpu_info()["cpus"]
        if affinity is not None:
            assert cpus == _usable(affinity, quota)
        else:
            assert cpus >= 1
        lstm_fast.set_num_threads(_core.max_threads())
        assert _core._team_threads() == cpus
    finally:
        _core._set_cpu_limit(_core.max_threads())


def test_cpu_info_documents_the_quota():
    assert "cpu_quota" in lstm_fast.cpu_info.__doc__
    assert "quota" in lstm_fast.set_num_threads.__doc__


# ---- fake cgroup files in a private mount namespace -----------------------------------------

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(lstm_fast.__file__)))

_CHILD = """
import os, lstm_fast
from lstm_fast import _core
def show():
    at_import = lstm_fast.cpu_info()["cpu_quota"]  # (or at the last set_num_threads)
    lstm_fast.set_num_threads(64)
    info = lstm_fast.cpu_info()
    team = _core._team_threads()
    print(at_import, info["cpu_quota"], info["cpus"], team, len(os.sched_getaffinity(0)))
show()
"""


def _unshare_works():
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = "mount -t tmpfs none /sys/fs/cgroup"
    for args in (["unshare", "-m"], ["unshare", "-Urm"]):
        try:
            r = subprocess.run(args + ["sh", "-c", probe], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode == 0:
            return args
    return False


_UNSHARE = _unshare_works()
needs_unshare = pytest.mark.skipif(
    not _UNSHARE, reason="no private mount namespace here (unshare -m / -Urm)"
)


def _run_fake(files, cgroup, code=_CHILD):
    """Run code in a child that sees only `files` (path under /sys/fs/cgroup -> text) there and,
    unless None, `cgroup` as its /proc/self/cgroup. Returns the child's stdout lines, split."""
    env = dict(os.environ, PYTHONPATH=_PACKAGE_PARENT)
    env.pop("OMP_NUM_THREADS", None)
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        os.mkdir(tree)
        for path, text in files.items():
            full = os.path.join(tree, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w") as f:
                f.write(text)
        setup = [
            "set -e",
            "mount -t tmpfs none /sys/fs/cgroup",
            f"cp -r {tree!r}/. /sys/fs/cgroup/",
        ]
        if cgroup is not None:
            with open(os.path.join(tmp, "cgroup"), "w") as f:
                f.write(cgroup)
            setup.append(f"mount --bind {os.path.join(tmp, 'cgroup')!r} /proc/$$/cgroup")
        script = os.path.join(tmp, "child.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(code))
        setup.append(f"exec {sys.executable!r} {script!r}")
        r = subprocess.run(
            _UNSHARE + ["sh", "-c", "\n".join(setup)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr
    return [_parse_line(line.split()) for line in r.stdout.strip().splitlines()]


def _parse_line(words):
    """(quota at import, quota, cpus, team of set_num_threads(64), affinity CPUs)."""
    q = [None if w == "None" else float(w) for w in words[:2]]
    return (q[0], q[1], *map(int, words[2:]))


@needs_unshare
@pytest.mark.parametrize(
    "text,quota", [("150000 100000\n", 1.5), ("50000 100000\n", 0.5), ("max 100000\n", None)]
)
def test_v2_root_cpu_max(text, quota):
    """The root's cpu.max (a container's own cgroup at the mount's root)."""
    ((at_import, got, cpus, team, affinity),) = _run_fake({"cpu.max": text}, "0::/\n")
    assert at_import == got == quota
    assert cpus == _usable(affinity, quota)
    assert team == cpus  # set_num_threads(64) runs teams of at most that


@needs_unshare
def test_v2_walks_up_from_the_own_cgroup_smallest_wins():
    """/proc/self/cgroup's "0::/a/b": a/b (max), a (0.5 CPUs), the root (3 CPUs): 0.5 wins."""
    files = {
        "a/b/cpu.max": "max 100000\n",
        "a/cpu.max": "50000 100000\n",
        "cpu.max": "300000 100000",
    }
    ((at_import, quota, cpus, team, _),) = _run_fake(files, "1:cpu:/\n0::/a/b\n")
    assert (at_import, quota, cpus, team) == (0.5, 0.5, 1, 1)
    # another cgroup's limit is not ours
    files = {"a/cpu.max": "50000 100000\n", "c/cpu.max": "max 100000\n"}
    ((_, quota, cpus, _, affinity),) = _run_fake(files, "0::/c\n")
    assert (quota, cpus) == (None, affinity)


@needs_unshare
def test_v1_cfs_quota():
    """cgroup v1: the cpu controller's cpu.cfs_quota_us / cpu.cfs_period_us along its path;
    quota -1 is no limit."""
    files = {
        "cpu/x/cpu.cfs_quota_us": "-1\n",
        "cpu/x/cpu.cfs_period_us": "100000\n",
        "cpu/cpu.cfs_quota_us": "150000\n",
        "cpu/cpu.cfs_period_us": "100000\n",
    }
    ((_, quota, cpus, _, affinity),) = _run_fake(files, "4:memory:/m\n2:cpu,cpuacct:/x\n0::/\n")
    assert (quota, cpus) == (1.5, _usable(affinity, 1.5))
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    ((_, quota, cpus, _, affinity),) = _run_fake(files, "2:cpu,cpuacct:/\n")
    assert (quota, cpus) == (None, affinity)


@needs_unshare
@pytest.mark.parametrize("text", ["garbage\n", "", "1.5 100000", "50000", "50000 0"])
def test_malformed_or_missing_files_set_no_limit(text):
    files = {"cpu.max": text, "cpu/cpu.cfs_quota_us": text}
    ((_, quota, cpus, _, affinity),) = _run_fake(files, "0::/\n")
    assert (quota, cpus) == (None, affinity)
    # no files at all (and the process's own /proc/self/cgroup)
    ((_, quota, cpus, _, affinity),) = _run_fake({}, None)
    assert (quota, cpus) == (None, affinity)


@needs_unshare
def test_set_num_threads_reads_the_quota_again():
    """A quota changed after import is seen by the next set_num_threads."""
    code = _CHILD + textwrap.dedent(
        """
        with open("/sys/fs/cgroup/cpu.max", "w") as f:
            f.write("50000 100000\\n")
        show()
        """
    )
    first, after = _run_fake({"cpu.max": "max 100000\n"}, "0::/\n", code)
    assert first[:3] == (None, None, first[4])
    assert after[:4] == (None, 0.5, 1, 1)  # (cpu_info before set_num_threads: not read yet)
