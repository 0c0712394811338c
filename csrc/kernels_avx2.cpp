// AVX2 + FMA kernels (compiled with -mavx2 -mfma for this file only; selected at runtime).
#define LF_W 8
#define LF_MR 6
#define LF_NR 16
#define LF_ROWS 3
#define LF_NAME "avx2"
#define LF_TABLE kernels_avx2
#include "kernels_simd.h"
