// Portable SIMD kernels: 128-bit GCC vector extensions (SSE2 on x86-64, NEON on aarch64).
#define LF_W 4
#define LF_MR 6
#define LF_NR 8
#define LF_ROWS 3
#define LF_NAME "generic"
#define LF_TABLE kernels_generic
#include "kernels_simd.h"
