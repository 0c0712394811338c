#!/usr/bin/env bash
# Developer build: compile the extension modules into build/dev and copy them next to the Python
# sources, so `PYTHONPATH=. pytest` works without reinstalling. Serialised with a lock so that
# several people (or agents) sharing this tree never run two builds at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
exec 9>/tmp/lstm_fast_build.lock
flock 9
# Configure every time (cheap): a newly added source such as lstm_fast/_text.pyx is picked up.
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPython_EXECUTABLE="$($PY -c 'import sys; print(sys.executable)')" \
  -Dpybind11_DIR="$($PY -c 'import pybind11; print(pybind11.get_cmake_dir())')" "$@" >/dev/null
cmake --build build/dev
for f in build/dev/_core*.so build/dev/_text*.so; do
  # Copy then rename: overwriting a loaded .so in place crashes the processes that use it.
  [ -e "$f" ] && cp -f "$f" "lstm_fast/.$(basename "$f").tmp" &&
    mv -f "lstm_fast/.$(basename "$f").tmp" "lstm_fast/$(basename "$f")"
done
echo "dev build: ok"
