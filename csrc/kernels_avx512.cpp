// AVX-512F kernels (compiled with -mavx512f for this file only; selected at runtime).
#define LF_W 16
#define LF_MR 12
#define LF_NR 32
#define LF_ROWS 6
#define LF_NAME "avx512"
#define LF_TABLE kernels_avx512
#include "kernels_simd.h"
