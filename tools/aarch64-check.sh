#!/usr/bin/env bash
# The C++ core on aarch64 without an aarch64 machine: cross-compile the kernels (the portable
# "generic" set, GCC vector extensions -> NEON, and the scalar set) with the flags CMakeLists.txt
# uses, link tools/portable_check.cpp statically, and run it under qemu-user on 1 and 2 threads.
# Needs Debian's g++-aarch64-linux-gnu and qemu-user (apt-get install -y g++-aarch64-linux-gnu
# qemu-user). `--native` builds and runs the same check for this machine instead (every x86-64
# kernel set). Exit status: the check's (0 when every comparison passed).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-aarch64}
out=build/portable-${mode#--}
mkdir -p "$out"
srcs=(dispatch gemm/gemm cells/lstm cells/lstm_proj cells/gru cells/rnn cells/step cells/packed cells/unpacked
      kernels_scalar kernels_generic cells/pointwise_scalar cells/pointwise_generic)
common=(-std=c++17 -O3 -fopenmp -Wall -Wextra -Wno-unused-parameter -fno-math-errno -Icsrc)
if [ "$mode" = --native ]; then
  CXX=${CXX:-g++}
  common+=(-DLSTM_FAST_X86=1 -Wno-maybe-uninitialized)  # (a false positive in GCC 12's avx512fintrin.h)
  srcs+=(kernels_avx2 kernels_avx512 cells/pointwise_avx2 cells/pointwise_avx512)
  run=()
else
  CXX=${CXX:-aarch64-linux-gnu-g++}
  run=(qemu-aarch64)
fi
objs=()
for s in "${srcs[@]}"; do
  flags=()
  case $s in
    kernels_*|cells/pointwise_*) flags=(-ffp-contract=fast) ;;
  esac
  case $s in
    kernels_avx2|cells/pointwise_avx2) flags+=(-mavx2 -mfma -mf16c) ;;
    kernels_avx512|cells/pointwise_avx512)
      flags+=(-mavx512f -mavx512dq -mavx512vl -mavx512bw -mavx2 -mfma -mprefer-vector-width=512) ;;
  esac
  o="$out/${s//\//_}.o"
  "$CXX" "${common[@]}" "${flags[@]}" -c "csrc/$s.cpp" -o "$o"
  objs+=("$o")
done
static=()
[ "$mode" = --native ] || static=(-static)
# (a static libgomp warns that dlopen would need the build's glibc at run time: not used here)
"$CXX" "${common[@]}" tools/portable_check.cpp "${objs[@]}" "${static[@]}" -o "$out/portable_check" \
  2> >(sed "/Using 'dlopen' in statically linked/d; /: in function /d" >&2)
echo "built $out/portable_check: $(file -b "$out/portable_check" | cut -d, -f1-2)"
OMP_NUM_THREADS=2 "${run[@]}" "$out/portable_check"
