// GRU / RNN pointwise kernels, avx2 (W = 8 floats per vector; flags per source file in CMakeLists.txt).
#define LF_W 8
#define LF_NAME "avx2"
#define LF_TABLE cell_kernels_avx2
#include "cells/pointwise_simd.h"
