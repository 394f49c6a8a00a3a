// LayerNorm over the last dimension, forward and backward: x [rows, width], row-major float32
// (contiguous), with gamma and beta [width]; mean and rstd [rows] as torch's
// native_layer_norm returns them. Loaded through ctypes by
// ctrbench/models/fast/native_layer_norm.py, compiled on first use by ctrbench/native.py; tested
// against torch's layer_norm in float64 (tests/test_fast_native_layer_norm.py).
//
// Forward, per row (up to 4 vectors wide: four rows at a time, held in registers, so that their
// chains of sums, square root and division overlap; wider: one row at a time, held in scratch):
//   m1 = mean(x);  d = x - m1;  c = mean(d);  var = mean(d^2) - c^2   (the corrected two-pass
//   variance: never E[x^2] - mean^2, and c takes back m1's rounding, so values ~1e4 with a
//   noise of ~1 keep their variance and their deviations);
//   rstd = 1 / sqrt(var + eps);  mean = m1 + c;  y = (d - c) rstd gamma + beta
// Backward, from grad, with xhat = (x - mean) rstd and g = grad gamma:
//   grad_x = rstd (g - mean(g) - xhat mean(g xhat));  grad_gamma = sum_rows grad xhat;
//   grad_beta = sum_rows grad
// where xhat is recentred on its row mean (0 but for the rounding of the float mean: at values
// ~1e4 that rounding alone is ~5e-4 of a unit deviation).
//
// Column sums (grad_gamma, grad_beta) run in float vectors over blocks of ROWS rows, each
// block's sums then added into doubles, in a fixed order (deterministic, single-threaded).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

constexpr int64_t ROWS = 64;  // rows per float block of a column sum

// NB > 0 vectors with the count known at compile time (kept in registers once the loops over
// them unroll), else a run-time count
template <int NB>
struct Vectors {
  vf v[NB];
  explicit Vectors(int) {}
  vf& operator[](int b) { return v[b]; }
};

template <>
struct Vectors<0> {
  std::vector<vf> v;
  explicit Vectors(int n) : v(n) {}
  vf& operator[](int b) { return v[b]; }
};

// R rows of NB vectors each (NB > 0: in registers once the loops over them unroll), else of a
// run-time count in scratch
template <int NB, int R>
struct Held {
  vf v[R][NB];
  Held(vf*, int) {}
  vf* operator[](int k) { return v[k]; }
};

template <int R>
struct Held<0, R> {
  vf* v;
  int blocks;
  Held(vf* scratch, int nb) : v(scratch), blocks(nb) {}
  vf* operator[](int k) { return v + k * blocks; }
};

// a row of `width` columns as `blocks` vectors: full ones, then a tail of 1..VL columns
struct Row {
  int width, blocks, tail;
  vi keep;  // the tail's lanes that hold a column
  explicit Row(int w) : width(w), blocks((w + VL - 1) / VL), tail(w - (blocks - 1) * VL) {
    for (int l = 0; l < VL; ++l) keep[l] = l < tail ? -1 : 0;
  }
  int count(int b) const { return b + 1 < blocks ? VL : tail; }
  // v with the lanes past the row's end zeroed (block b)
  vf masked(int b, vf v) const { return b + 1 < blocks ? v : (keep ? v : splat(0.0f)); }
};

// rows i0 .. i0 + R - 1 (R rows at once: their chains of sums, square root and division overlap)
template <int NB, int R>
inline void forward_group(const float* x, const vf* gv, const vf* bv, int64_t i0, const Row& row,
                          float eps, float inv, float* y, float* mean, float* rstd, vf* scratch) {
  const int nb = NB > 0 ? NB : row.blocks;
  Held<NB, R> v(scratch, nb);
  float m1[R], c[R], r[R];
  for (int k = 0; k < R; ++k) {
    const float* xi = x + (i0 + k) * row.width;
    vf s = splat(0.0f);
    for (int b = 0; b < nb; ++b) {
      v[k][b] = load_part(xi + b * VL, row.count(b));  // lanes past the end 0
      s += v[k][b];
    }
    m1[k] = lane_sum(s) * inv;
  }
  for (int k = 0; k < R; ++k) {
    vf sd = splat(0.0f), sdd = splat(0.0f);
    for (int b = 0; b < nb; ++b) {
      const vf d = row.masked(b, v[k][b] - m1[k]);
      v[k][b] = d;
      sd += d;
      sdd += d * d;
    }
    c[k] = lane_sum(sd) * inv;
    const float var = std::max(lane_sum(sdd) * inv - c[k] * c[k], 0.0f);
    r[k] = 1.0f / std::sqrt(var + eps);
  }
  for (int k = 0; k < R; ++k) {
    mean[i0 + k] = m1[k] + c[k];
    rstd[i0 + k] = r[k];
    float* yi = y + (i0 + k) * row.width;
    for (int b = 0; b < nb; ++b)
      store_part(yi + b * VL, row.count(b), (v[k][b] - c[k]) * (r[k] * gv[b]) + bv[b]);
  }
}

template <int NB>
void forward_rows(const float* x, const float* gamma, const float* beta, int64_t rows,
                  const Row& row, float eps, float* y, float* mean, float* rstd) {
  constexpr int R = NB > 0 ? 4 : 1;  // rows at once
  const float inv = 1.0f / (float)row.width;
  std::vector<vf> gv(row.blocks), bv(row.blocks);
  for (int b = 0; b < row.blocks; ++b) {
    gv[b] = load_part(gamma + b * VL, row.count(b));
    bv[b] = load_part(beta + b * VL, row.count(b));
  }
  std::vector<vf> scratch(NB > 0 ? 0 : row.blocks);
  int64_t i = 0;
  for (; i + R <= rows; i += R)
    forward_group<NB, R>(x, gv.data(), bv.data(), i, row, eps, inv, y, mean, rstd,
                         scratch.data());
  for (; i < rows; ++i)
    forward_group<NB, 1>(x, gv.data(), bv.data(), i, row, eps, inv, y, mean, rstd,
                         scratch.data());
}

template <int NB>
void backward_rows(const float* grad, const float* x, const float* mean, const float* rstd,
                   const float* gamma, int64_t rows, const Row& row, float* grad_x,
                   float* grad_gamma, float* grad_beta) {
  const int nb = NB > 0 ? NB : row.blocks;
  const bool affine = grad_gamma != nullptr || grad_beta != nullptr;
  const float inv = 1.0f / (float)row.width;
  Vectors<NB> gv(nb), xh(nb), g(nb), dy(nb), acc_gamma(nb), acc_beta(nb);
  for (int b = 0; b < nb; ++b) gv[b] = load_part(gamma + b * VL, row.count(b));
  std::vector<double> sum_gamma(affine ? row.width : 0), sum_beta(affine ? row.width : 0);
  for (int64_t start = 0; start < rows; start += ROWS) {
    const int64_t stop = std::min(rows, start + ROWS);
    for (int b = 0; b < nb; ++b) acc_gamma[b] = acc_beta[b] = splat(0.0f);
    for (int64_t i = start; i < stop; ++i) {
      const int64_t at = i * row.width;
      const float mu = mean[i], r = rstd[i];
      vf s_xh = splat(0.0f), s_g = splat(0.0f), s_gxh = splat(0.0f);
      for (int b = 0; b < nb; ++b) {
        const int cnt = row.count(b);
        dy[b] = load_part(grad + at + b * VL, cnt);  // lanes past the end 0, so g and g xh too
        xh[b] = (load_part(x + at + b * VL, cnt) - mu) * r;
        g[b] = dy[b] * gv[b];
        s_xh += row.masked(b, xh[b]);
        s_g += g[b];
        s_gxh += g[b] * xh[b];
      }
      const float shift = lane_sum(s_xh) * inv;  // xhat's row mean, 0 but for rounding
      const float m_g = lane_sum(s_g) * inv;
      const float m_gxh = lane_sum(s_gxh) * inv - shift * m_g;  // mean(g (xh - shift))
      float* gxi = grad_x + at;
      for (int b = 0; b < nb; ++b) {
        const vf centred = xh[b] - shift;
        store_part(gxi + b * VL, row.count(b), r * (g[b] - m_g - centred * m_gxh));
        if (affine) {
          acc_gamma[b] += dy[b] * centred;
          acc_beta[b] += dy[b];
        }
      }
    }
    if (affine) {
      for (int b = 0; b < nb; ++b) {
        for (int l = 0; l < row.count(b); ++l) {
          sum_gamma[b * VL + l] += acc_gamma[b][l];
          sum_beta[b * VL + l] += acc_beta[b][l];
        }
      }
    }
  }
  for (int j = 0; affine && j < row.width; ++j) {
    if (grad_gamma != nullptr) grad_gamma[j] = (float)sum_gamma[j];
    if (grad_beta != nullptr) grad_beta[j] = (float)sum_beta[j];
  }
}

}  // namespace

extern "C" {

// y [rows, width], mean [rows], rstd [rows] from x [rows, width], gamma and beta [width].
// Returns 0, or 1 for invalid sizes (rows < 0, width < 1).
int ctrbench_layer_norm_forward(const float* x, const float* gamma, const float* beta,
                                int64_t rows, int width, float eps, float* y, float* mean,
                                float* rstd) {
  if (rows < 0 || width < 1) return 1;
  const Row row(width);
  switch (row.blocks) {
    case 1: forward_rows<1>(x, gamma, beta, rows, row, eps, y, mean, rstd); break;
    case 2: forward_rows<2>(x, gamma, beta, rows, row, eps, y, mean, rstd); break;
    case 3: forward_rows<3>(x, gamma, beta, rows, row, eps, y, mean, rstd); break;
    case 4: forward_rows<4>(x, gamma, beta, rows, row, eps, y, mean, rstd); break;
    default: forward_rows<0>(x, gamma, beta, rows, row, eps, y, mean, rstd);
  }
  return 0;
}

// grad_x [rows, width] from grad [rows, width], the forward's x, mean and rstd, and gamma;
// grad_gamma and grad_beta [width] written (not accumulated; over no rows: 0) unless null.
// Returns 0, or 1 for invalid sizes (rows < 0, width < 1).
int ctrbench_layer_norm_backward(const float* grad, const float* x, const float* mean,
                                 const float* rstd, const float* gamma, int64_t rows, int width,
                                 float* grad_x, float* grad_gamma, float* grad_beta) {
  if (rows < 0 || width < 1) return 1;
  const Row row(width);
  switch (row.blocks) {
    case 1:
      backward_rows<1>(grad, x, mean, rstd, gamma, rows, row, grad_x, grad_gamma, grad_beta);
      break;
    case 2:
      backward_rows<2>(grad, x, mean, rstd, gamma, rows, row, grad_x, grad_gamma, grad_beta);
      break;
    case 3:
      backward_rows<3>(grad, x, mean, rstd, gamma, rows, row, grad_x, grad_gamma, grad_beta);
      break;
    case 4:
      backward_rows<4>(grad, x, mean, rstd, gamma, rows, row, grad_x, grad_gamma, grad_beta);
      break;
    default:
      backward_rows<0>(grad, x, mean, rstd, gamma, rows, row, grad_x, grad_gamma, grad_beta);
  }
  return 0;
}

}  // extern "C"
