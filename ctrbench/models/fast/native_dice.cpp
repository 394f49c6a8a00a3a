// Dice (DIN's activation) on x [n, h], row-major float32, forward and backward in two passes each
// over [n, h] (the torch-op version makes about a dozen). Loaded through ctypes by
// ctrbench/models/fast/dice.py, compiled on first use by ctrbench/native.py.
//
// Per column j, with mean and the biased variance var over the n rows (the batch's, or given):
//   rstd = 1 / sqrt(var + eps);  z = (x - mean) rstd;  p = sigmoid(z);
//   g = alpha + (1 - alpha) p;   y = x g
// Backward, from dy:
//   dalpha = sum_n dy x (1 - p);  dz = dy x p (1 - p) (1 - alpha);
//   dx = dy g + rstd (dz - mean_n(dz) - z mean_n(dz z))   (the two means with batch statistics)
// The backward recomputes z and p from x instead of the forward keeping them.
//
// Column sums run in float vectors over blocks of ROWS rows, each block's sums then added into
// doubles, so a sum's rounding does not grow with n.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

constexpr int64_t ROWS = 64;  // rows per float block of a column sum

struct Columns {  // the column blocks of one row of width h: full vectors, then a tail
  int64_t h, blocks;
  explicit Columns(int64_t width) : h(width), blocks((width + VL - 1) / VL) {}
  int count(int64_t b) const { return (int)std::min<int64_t>(VL, h - b * VL); }
};

// per-column values of `src` [h] as vectors (the tail's unused lanes 0)
std::vector<vf> as_vectors(const Columns& cols, const float* src) {
  std::vector<vf> out(cols.blocks);
  for (int64_t b = 0; b < cols.blocks; ++b) out[b] = load_part(src + b * VL, cols.count(b));
  return out;
}

// sums[k * h + j] = the sum over rows i of element(i, b, count, parts)[k] at column j: per column
// block, four independent float chains over each block of ROWS rows, then added into doubles
template <int K, class Element>
void column_sums(int64_t n, const Columns& cols, double* sums, Element element) {
  std::fill(sums, sums + K * cols.h, 0.0);
  for (int64_t start = 0; start < n; start += ROWS) {
    const int64_t stop = std::min(n, start + ROWS);
    for (int64_t b = 0; b < cols.blocks; ++b) {
      const int c = cols.count(b);
      vf acc[4][K], parts[K];
      for (int u = 0; u < 4; ++u)
        for (int k = 0; k < K; ++k) acc[u][k] = splat(0.0f);
      int64_t i = start;
      for (; i + 4 <= stop; i += 4) {
        for (int u = 0; u < 4; ++u) {
          element(i + u, b, c, parts);
          for (int k = 0; k < K; ++k) acc[u][k] += parts[k];
        }
      }
      for (; i < stop; ++i) {
        element(i, b, c, parts);
        for (int k = 0; k < K; ++k) acc[0][k] += parts[k];
      }
      for (int k = 0; k < K; ++k) {
        const vf total = (acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]);
        for (int l = 0; l < c; ++l) sums[k * cols.h + b * VL + l] += total[l];
      }
    }
  }
}

// 1 / d: AVX-512's 14-bit estimate and one Newton step (within ~2 ulp), else a divide
inline vf reciprocal(vf d) {
#if CTRBENCH_MASKED
  const vf r = (vf)_mm512_rcp14_ps((__m512)d);
  return r * (splat(2.0f) - d * r);
#else
  return splat(1.0f) / d;
#endif
}

inline vf sigmoid(vf z) { return reciprocal(splat(1.0f) + vexp(-z)); }

}  // namespace

extern "C" {

// y = Dice(x). batch_stats != 0: mean[h] and var[h] are written with the batch's mean and biased
// variance (n >= 1); else they are read. rstd[h] is written.
int ctrbench_dice_forward(const float* x, const float* alpha, float* mean, float* var,
                          float* rstd, float* y, int64_t n, int64_t h, float eps,
                          int batch_stats) {
  if (n < 0 || h <= 0 || (batch_stats && n == 0)) return 1;
  const Columns cols(h);
  if (batch_stats) {
    std::vector<double> sums(h);
    column_sums<1>(n, cols, sums.data(), [&](int64_t i, int64_t b, int c, vf* out) {
      out[0] = load_part(x + i * h + b * VL, c);
    });
    for (int64_t j = 0; j < h; ++j) mean[j] = (float)(sums[j] / (double)n);
    const std::vector<vf> mu = as_vectors(cols, mean);
    column_sums<1>(n, cols, sums.data(), [&](int64_t i, int64_t b, int c, vf* out) {
      const vf d = load_part(x + i * h + b * VL, c) - mu[b];
      out[0] = d * d;
    });
    for (int64_t j = 0; j < h; ++j) var[j] = (float)(sums[j] / (double)n);
  }
  for (int64_t j = 0; j < h; ++j) rstd[j] = 1.0f / std::sqrt(var[j] + eps);
  const std::vector<vf> mu = as_vectors(cols, mean), rs = as_vectors(cols, rstd),
                        a = as_vectors(cols, alpha);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < cols.blocks; ++b) {
      const int c = cols.count(b);
      const vf xv = load_part(x + i * h + b * VL, c);
      const vf p = sigmoid((xv - mu[b]) * rs[b]);
      store_part(y + i * h + b * VL, c, xv * (a[b] + (splat(1.0f) - a[b]) * p));
    }
  }
  return 0;
}

// dx[n, h] and dalpha[h] from dy[n, h], with the forward's mean and rstd; batch_stats as there.
// work[n, h]: scratch (dz, for the second pass with batch statistics).
int ctrbench_dice_backward(const float* dy, const float* x, const float* alpha, const float* mean,
                           const float* rstd, float* dx, float* dalpha, float* work, int64_t n,
                           int64_t h, int batch_stats) {
  if (n < 0 || h <= 0) return 1;
  const Columns cols(h);
  const std::vector<vf> mu = as_vectors(cols, mean), rs = as_vectors(cols, rstd),
                        a = as_vectors(cols, alpha);
  // pass 1: dx = dy g (+ rstd dz without batch statistics), dz into work; the column sums of
  // (dy x (1 - p), dz, dz z)
  std::vector<double> sums(3 * h);
  column_sums<3>(n, cols, sums.data(), [&](int64_t i, int64_t b, int c, vf* out) {
    const int64_t at = i * h + b * VL;
    const vf xv = load_part(x + at, c), dyv = load_part(dy + at, c);
    const vf z = (xv - mu[b]) * rs[b], p = sigmoid(z), q = splat(1.0f) - p;
    const vf dyx = dyv * xv, dz = dyx * p * q * (splat(1.0f) - a[b]);
    const vf gated = dyv * (a[b] + (splat(1.0f) - a[b]) * p);
    if (batch_stats) {
      store_part(dx + at, c, gated);
      store_part(work + at, c, dz);
    } else {
      store_part(dx + at, c, gated + rs[b] * dz);
    }
    out[0] = dyx * q;
    out[1] = dz;
    out[2] = dz * z;
  });
  for (int64_t j = 0; j < h; ++j) dalpha[j] = (float)sums[j];
  if (!batch_stats || n == 0) return 0;
  std::vector<float> mean_dz(h), mean_dzz(h);
  for (int64_t j = 0; j < h; ++j) {
    mean_dz[j] = (float)(sums[h + j] / (double)n);
    mean_dzz[j] = (float)(sums[2 * h + j] / (double)n);
  }
  const std::vector<vf> m1 = as_vectors(cols, mean_dz.data()),
                        m2 = as_vectors(cols, mean_dzz.data());
  // pass 2: the batch statistics' terms
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t b = 0; b < cols.blocks; ++b) {
      const int c = cols.count(b);
      const int64_t at = i * h + b * VL;
      const vf z = (load_part(x + at, c) - mu[b]) * rs[b];
      store_part(dx + at, c, load_part(dx + at, c) + rs[b] * (load_part(work + at, c) - m1[b] - z * m2[b]));
    }
  }
  return 0;
}

}  // extern "C"
