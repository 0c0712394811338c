// GRU / RNN pointwise kernels, avx512 (W = 16 floats per vector; flags per source file in CMakeLists.txt).
#define LF_W 16
#define LF_NAME "avx512"
#define LF_TABLE cell_kernels_avx512
#include "cells/pointwise_simd.h"
