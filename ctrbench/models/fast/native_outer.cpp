// The backward of row-wise outer products z[n, i, h] = base[n, i] * hidden[n, h] (xDeepFM's CIN
// layers after the first): from the gradient g [rows, m, width] (row-major float32, contiguous),
//   grad_base[n, i]   = sum_h g[n, i, h] * hidden[n, h]   [rows, m]
//   grad_hidden[n, h] = sum_i g[n, i, h] * base[n, i]     [rows, width]
// in ONE pass over g, a row at a time. g comes straight from oneDNN's matmul, whose stores leave
// it outside the cache; torch's two batched products read it twice with a strided pattern
// (~2.3 ms for 13.6 MB at batch 128 against ~0.6 ms here). hidden's rows may be strided (a view
// of the first half of the previous layer's output). Loaded through ctypes by
// ctrbench/models/fast/native_outer.py, compiled on first use by ctrbench/native.py; tested
// against the broadcast product's autograd (tests/test_fast_native_outer.py).
//
// Single-threaded and deterministic: each dot product adds vector lanes then lane_sum; each
// grad_hidden element adds the m products in order of i.

#include <cstdint>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

}  // namespace

extern "C" {

int ctrbench_outer_backward(const float* grad, const float* base, const float* hidden,
                            int64_t hidden_stride, int64_t rows, int m, int width,
                            float* grad_base, float* grad_hidden) {
  if (rows < 0 || m < 1 || width < 1 || hidden_stride < width) return 1;
  const int vectors = (width + VL - 1) / VL;
  std::vector<vf> h(vectors), acc(vectors);
  for (int64_t n = 0; n < rows; ++n) {
    const float* hn = hidden + n * hidden_stride;
    const float* bn = base + n * m;
    const float* gn = grad + n * m * (int64_t)width;
    for (int v = 0; v < vectors; ++v) {
      h[v] = load_part(hn + v * VL, lanes_from(v * VL, width));
      acc[v] = splat(0.0f);
    }
    for (int i = 0; i < m; ++i) {
      const float* gi = gn + (int64_t)i * width;
      const vf b = splat(bn[i]);
      vf dot = splat(0.0f);
      for (int v = 0; v < vectors; ++v) {
        const vf x = load_part(gi + v * VL, lanes_from(v * VL, width));
        dot += x * h[v];
        acc[v] += x * b;
      }
      grad_base[n * m + i] = lane_sum(dot);
    }
    float* out = grad_hidden + n * width;
    for (int v = 0; v < vectors; ++v) store_part(out + v * VL, lanes_from(v * VL, width), acc[v]);
  }
  return 0;
}

}  // extern "C"
