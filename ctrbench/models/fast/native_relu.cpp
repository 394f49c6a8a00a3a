// ReLU's backward in place, with the bias gradient of the product before it: for
// h = relu(x W^T + b) and the gradient dh [rows, width] (row-major float32, contiguous),
//   dh[i] = 0 where h[i] <= 0 (torch's threshold_backward at 0: NaN passes), in place;
//   db = sum over rows of the masked dh   [width].
// One pass over dh and h instead of threshold_backward's (which writes a new tensor) and a column
// sum's. Loaded through ctypes by ctrbench/models/fast/native_relu.py, compiled on first use by
// ctrbench/native.py; tested against threshold_backward and sum (tests/test_fast_native_relu.py).
//
// Column sums run in float vectors over blocks of ROWS rows, each block's sums then added into
// doubles, in a fixed order (deterministic, single-threaded), as native_layer_norm.cpp's do.

#include <cstdint>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

constexpr int64_t ROWS = 64;  // rows per float block of the column sums

}  // namespace

extern "C" {

int ctrbench_relu_backward(float* grad, const float* hidden, int64_t rows, int width,
                           float* grad_bias) {
  if (rows < 0 || width < 1) return 1;
  const int vectors = (width + VL - 1) / VL, tail = width - (vectors - 1) * VL;
  std::vector<vf> block(vectors);
  std::vector<double> total(width, 0.0);
  for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
    const int64_t r1 = r0 + ROWS < rows ? r0 + ROWS : rows;
    for (int v = 0; v < vectors; ++v) block[v] = splat(0.0f);
    for (int64_t r = r0; r < r1; ++r) {
      float* g = grad + r * width;
      const float* h = hidden + r * width;
      for (int v = 0; v < vectors; ++v) {
        const int count = v + 1 < vectors ? VL : tail;
        const vf masked = load_part(h + v * VL, count) <= splat(0.0f)
                              ? splat(0.0f) : load_part(g + v * VL, count);
        store_part(g + v * VL, count, masked);
        block[v] += masked;
      }
    }
    for (int v = 0; v < vectors; ++v) {
      const int count = v + 1 < vectors ? VL : tail;
      for (int l = 0; l < count; ++l) total[v * VL + l] += block[v][l];
    }
  }
  for (int c = 0; c < width; ++c) grad_bias[c] = (float)total[c];
  return 0;
}

}  // extern "C"
