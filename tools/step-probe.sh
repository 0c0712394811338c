#!/usr/bin/env bash
# Build tools/step_probe.cpp against csrc/ (all kernel sets, each with its own flags, as
# CMakeLists.txt does) into build/probe, then run it with the given arguments:
#   tools/step-probe.sh B H K threads [steps] [--same-xp]
#   LSTM_FAST_ISA=avx2 tools/step-probe.sh 32 256 0 1     # the epilogue alone, AVX2 kernels
# PROBE=gemm_micro_probe runs tools/gemm_micro_probe.cpp instead (the GEMM micro-kernel alone):
#   PROBE=gemm_micro_probe tools/step-probe.sh KC panels slivers threads
# PROBE=gemm_probe runs tools/gemm_probe.cpp (the packed GEMM of gemm.cpp, C = A . W^T):
#   PROBE=gemm_probe tools/step-probe.sh M K N threads [reps]
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/probe
mkdir -p "$out"
CXX=${CXX:-g++}
common=(-O3 -std=c++17 -fno-math-errno -fopenmp -Icsrc)
if [ "$(uname -m)" = x86_64 ]; then
  common+=(-DLSTM_FAST_X86)
  srcs=(kernels_scalar kernels_generic kernels_avx2 kernels_avx512 dispatch gemm/gemm)
else
  srcs=(kernels_scalar kernels_generic dispatch gemm/gemm)
fi
objs=()
for s in "${srcs[@]}"; do
  flags=()
  case $s in
    kernels_avx2) flags=(-mavx2 -mfma -mf16c) ;;
    kernels_avx512) flags=(-mavx512f -mavx512dq -mavx512vl -mavx512bw -mavx2 -mfma
                           -mprefer-vector-width=512) ;;
  esac
  if [ ! -e "$out/${s//\//_}.o" ] || [ "csrc/$s.cpp" -nt "$out/${s//\//_}.o" ] || [ csrc/kernels_simd.h -nt "$out/${s//\//_}.o" ] || [ csrc/simd_math.h -nt "$out/${s//\//_}.o" ]; then
    "$CXX" "${common[@]}" "${flags[@]}" -c "csrc/$s.cpp" -o "$out/${s//\//_}.o"
  fi
  objs+=("$out/${s//\//_}.o")
done
probe=${PROBE:-step_probe}
"$CXX" "${common[@]}" "tools/$probe.cpp" "${objs[@]}" -o "$out/$probe"
exec "$out/$probe" "$@"
