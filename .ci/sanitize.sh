#!/usr/bin/env bash
# CI: build lstm_fast._core with AddressSanitizer + UndefinedBehaviorSanitizer (CMake option
# LSTM_FAST_SANITIZE) into a separate build directory, and run the C++-facing tests against it.
# Fails on any sanitizer report (or any test failure).
#
#   PYTHON=/path/to/venv/bin/python .ci/sanitize.sh            # default PYTHON: python3
#   SANITIZE_TESTS="tests/test_lstm_core.py" .ci/sanitize.sh    # a different test selection
#
# Needs only the system C++ compiler (gcc or clang with libasan) and a Python environment with
# the test extra installed (`pip install .[test]`); cmake, ninja and pybind11 are pip-installed
# into that environment when missing. The build goes to build/sanitize (ignored by git; the
# in-tree lstm_fast/_core*.so is left alone); the sanitized _core and a copy of the lstm_fast
# package go to a temporary directory placed first on PYTHONPATH, and the tests run from there.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PY=${PYTHON:-python3}
PY=$("$PY" -c 'import sys; print(sys.executable)')
tests=${SANITIZE_TESTS:-tests/test_lstm_core.py tests/test_bad_input.py tests/test_layer.py tests/test_gru_rnn.py tests/test_threads.py tests/test_fuzz.py tests/test_one_step.py}
# The fuzz suite at a third of its examples under the sanitizers (the main job runs all of it).
export LSTM_FAST_FUZZ_SCALE=${LSTM_FAST_FUZZ_SCALE:-0.3}

# Build tools, from pip when the environment lacks them (the pyproject build backend pulls
# cmake/ninja into an isolated build environment only, not into the venv).
have() { # have MODULE_OR_TOOL: importable module / runnable tool in the environment or on PATH
  case $1 in
  pybind11) "$PY" -c 'import pybind11' 2>/dev/null ;;
  *) "$(dirname "$PY")/$1" --version >/dev/null 2>&1 || command -v "$1" >/dev/null ;;
  esac
}
if ! have pybind11 || ! have cmake || ! have ninja; then
  echo "sanitize: installing cmake, ninja, pybind11 into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --quiet cmake ninja pybind11
fi
bindir=$(dirname "$PY")
export PATH="$bindir:$PATH" # the venv's cmake / ninja first

cxx=${CXX:-c++}
libasan=$("$cxx" -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
  echo "sanitize: $cxx has no libasan.so (install the compiler's ASan runtime, e.g. libasan8)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build=${SANITIZE_BUILD_DIR:-$root/build/sanitize}
echo "sanitize: building _core with ASan+UBSan in $build"
# Serialised with tools/dev-build.sh's lock: one compile at a time on a shared machine.
if command -v flock >/dev/null; then
  exec 9>/tmp/lstm_fast_build.lock
  flock 9
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSTM_FAST_SANITIZE=ON \
  -DPython_EXECUTABLE="$PY" \
  -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
if ! cmake --build "$build" --target _core >"$work/build.log" 2>&1; then
  cat "$work/build.log" >&2
  echo "sanitize: FAILED: build" >&2
  exit 1
fi
if command -v flock >/dev/null; then flock -u 9; fi

# The package: Python sources from the tree, the sanitized _core, and the other compiled
# modules (_text) from the tree's dev build or the installed package when there is one.
pkg="$work/lstm_fast"
cp -r lstm_fast "$pkg"
find "$pkg" -name __pycache__ -prune -exec rm -rf {} + -o -name '_core*.so' -exec rm -f {} +
if ! ls "$pkg"/_text*.so >/dev/null 2>&1; then # not built in the tree: the installed one
  other=$(cd "$work" && "$PY" -c 'import glob, importlib.util, os
spec = importlib.util.find_spec("lstm_fast")
for d in (spec.submodule_search_locations or []) if spec else []:
    print("\n".join(glob.glob(os.path.join(d, "_text*.so"))))' 2>/dev/null || true)
  for f in $other; do cp -f "$f" "$pkg/"; done
fi
cp -f "$build"/_core*.so "$pkg/"
rm -rf "$work/tests" && cp -r tests "$work/tests"

# libstdc++ is preloaded too: ASan resolves the real __cxa_throw when it starts, and Python
# itself does not link libstdc++ (without it the first C++ exception trips an ASan CHECK).
preload="$libasan"
stdcxx=$(ldd "$pkg"/_core*.so | awk '/libstdc\+\+/ {print $3; exit}')
[ -n "$stdcxx" ] && [ -e "$stdcxx" ] && preload="$preload $stdcxx"

# The bitwise-determinism tests (same bits for any thread count / schedule / row tiling) hold for
# the release build, where they run in the main test job. The instrumented build was seen to give
# last-bit differences between row tilings (AVX-512, a 1-row vs a 3-row tile of the same row;
# the compiler's code for the two tile shapes differs once instrumented), so those tests are left
# out here: this job looks for memory errors and undefined behaviour.
SANITIZE_DESELECT=${SANITIZE_DESELECT:-not bitwise}
log="$work/sanitize.log"
echo "sanitize: running $tests under ASan+UBSan (LD_PRELOAD=$preload)"
set +e
(
  cd "$work"
  export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"
  export LD_PRELOAD="$preload"
  # Python's allocator and interned objects look like leaks: leak checking is off. Reports go
  # to files as well as stderr (pytest captures stderr, and a halted process loses it).
  # allocator_may_return_null: a request beyond any memory is a MemoryError (tested), not a report.
  export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:exitcode=86:log_path=$work/report
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$work/report
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
  "$PY" -c 'import lstm_fast, os; p = lstm_fast._core.__file__
assert p.startswith(os.getcwd()), p; print("sanitize: core", p, lstm_fast.cpu_info())' &&
    "$PY" -m pytest -q -p no:cacheprovider -k "${SANITIZE_DESELECT}" ${SANITIZE_PYTEST_ARGS:-} ${tests}
) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if ls "$work"/report.* >/dev/null 2>&1; then
  cat "$work"/report.* | tee -a "$log"
fi
if grep -qE 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|UndefinedBehaviorSanitizer' "$log"; then
  echo "sanitize: FAILED: sanitizer report above" >&2
  exit 1
fi
if [ "$rc" -ne 0 ]; then
  echo "sanitize: FAILED (exit $rc)" >&2
  exit "$rc"
fi
echo "sanitize: clean (ASan+UBSan, $tests)"
