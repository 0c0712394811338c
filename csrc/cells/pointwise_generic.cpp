// GRU / RNN pointwise kernels, generic (W = 4 floats per vector; flags per source file in CMakeLists.txt).
#define LF_W 4
#define LF_NAME "generic"
#define LF_TABLE cell_kernels_generic
#include "cells/pointwise_simd.h"
