// DIEN's attention over the extractor states and its auxiliary loss, over the valid steps packed
// by step (ctrbench.models.fast.packed_scan.StepPacking), one kernel per direction each. Loaded
// through ctypes by ctrbench/models/fast/fused_dien.py, compiled on first use by
// ctrbench/native.py. Tested against DIEN's torch path (tests/test_fast_fused_dien.py).
//
// Layout (float32 unless said, row-major, contiguous; I = width, N packed steps, B rows):
//   states [N, I]     h_t at the valid steps;  row_of [N] int64: the row b of each
//   query  [B, I]     W e_i of each row
//   alpha  [N]        a_n = softmax over row_of[n]'s steps of s_n = h_n . query[row_of[n]]
// Attention backward, from grad_a [N]: S_b = sum_{n of b} a_n g_n; ds_n = a_n (g_n - S_b);
//   d states_n = ds_n query_b;  d query_b = sum_{n of b} ds_n states_n (in the order of n).
//
//   behaviours, negatives [N, I]   e_t and e^-_t at the valid steps
//   previous [N] int64             the packed step before each (read from `later` on: the
//                                  pairs are n = later .. N - 1, P = N - later of them)
//   loss = (sum_n softplus(-<h_prev(n), e_n>) + softplus(<h_prev(n), e^-_n>)) / max(1, P),
//   summed in double (BCE with logits: label 1 of x costs softplus(-x), label 0 softplus(x)).
//   z [2P] (saved): the forward writes z = (-x_p, y_p) pair by pair and overwrites them with
//   dloss_sum/dx_p = -sigmoid(-x_p), dloss_sum/dy_p = sigmoid(y_p) for the backward.
//
// Single-threaded; every sum in a fixed order (deterministic). Dot products and row updates in
// VL-float vectors (native_vector.h); exp as vexp over contiguous buffers.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

typedef double vd __attribute__((vector_size(VL * sizeof(double))));

inline float dot(const float* a, const float* b, int n) {
  vf acc = splat(0.0f);
  for (int k0 = 0; k0 < n; k0 += VL) {
    const int c = lanes_from(k0, n);
    acc += load_part(a + k0, c) * load_part(b + k0, c);
  }
  return lane_sum(acc);
}

}  // namespace

extern "C" {

int ctrbench_dien_attention_forward(const float* states, const float* query,
                                    const int64_t* row_of, int64_t steps, int64_t rows,
                                    int width, float* alpha) {
  if (steps < 0 || rows < 0 || width < 1) return 1;
  std::vector<float> top(rows, -INFINITY), total(rows, 0.0f);
  for (int64_t n = 0; n < steps; ++n) {
    const int64_t b = row_of[n];
    if (b < 0 || b >= rows) return 2;
    const float s = dot(states + n * width, query + b * width, width);
    alpha[n] = s;
    top[b] = s > top[b] ? s : top[b];
  }
  int64_t n = 0;
  for (; n + VL <= steps; n += VL) {  // exp(s - top) in vectors, then the row sums in order
    vf shift;
    for (int l = 0; l < VL; ++l) shift[l] = top[row_of[n + l]];
    const vf e = vexp(load(alpha + n, VL) - shift);
    store(alpha + n, VL, e);
    for (int l = 0; l < VL; ++l) total[row_of[n + l]] += e[l];
  }
  if (n < steps) {
    const int c = static_cast<int>(steps - n);
    vf shift = splat(0.0f);
    for (int l = 0; l < c; ++l) shift[l] = top[row_of[n + l]];
    const vf e = vexp(load(alpha + n, c) - shift);
    store(alpha + n, c, e);
    for (int l = 0; l < c; ++l) total[row_of[n + l]] += e[l];
  }
  for (int64_t b = 0; b < rows; ++b) total[b] = total[b] > 0.0f ? 1.0f / total[b] : 0.0f;
  for (int64_t m = 0; m < steps; ++m) alpha[m] *= total[row_of[m]];
  return 0;
}

// grad [N] -> grad_states [N, I], grad_query [B, I] (both written); alpha: the forward's.
int ctrbench_dien_attention_backward(const float* grad, const float* states, const float* query,
                                     const int64_t* row_of, int64_t steps, int64_t rows,
                                     int width, const float* alpha, float* grad_states,
                                     float* grad_query) {
  if (steps < 0 || rows < 0 || width < 1) return 1;
  std::vector<float> expected(rows, 0.0f);  // S_b
  for (int64_t n = 0; n < steps; ++n) {
    const int64_t b = row_of[n];
    if (b < 0 || b >= rows) return 2;
    expected[b] += alpha[n] * grad[n];
  }
  std::memset(grad_query, 0, sizeof(float) * rows * width);
  for (int64_t n = 0; n < steps; ++n) {
    const int64_t b = row_of[n];
    const float ds = alpha[n] * (grad[n] - expected[b]);
    scaled(grad_states + n * width, width, ds, query + b * width, 0.0f, nullptr);
    add_scaled(grad_query + b * width, width, ds, states + n * width, 0.0f, nullptr);
  }
  return 0;
}

// -> loss [1] (float), z [2P] (saved for the backward: see the header)
int ctrbench_dien_aux_forward(const float* states, const float* behaviours,
                              const float* negatives, const int64_t* previous, int64_t steps,
                              int64_t later, int width, float* loss, float* z) {
  if (steps < 0 || later < 0 || later > steps || width < 1) return 1;
  const int64_t pairs = steps - later, count = 2 * pairs;
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t n = later + p, m = previous[n];
    if (m < 0 || m >= steps) return 2;
    const float* h = states + m * width;
    z[2 * p] = -dot(h, behaviours + n * width, width);
    z[2 * p + 1] = dot(h, negatives + n * width, width);
  }
  // softplus(z) = max(z, 0) + log1p(exp(-|z|)): the logs as the log of products of up to 64
  // factors (1 + u) in (1, 2] per lane (in double: no overflow, ~1e-16 each)
  vf sign;  // -1 on the positive pairs' lanes (even), +1 on the negatives' (odd)
  for (int l = 0; l < VL; ++l) sign[l] = (l % 2) ? 1.0f : -1.0f;
  vd relu = vd{} + 0.0, logs = vd{} + 0.0, product = vd{} + 1.0;
  int factors = 0;
  int64_t k = 0;
  for (; k + VL <= count; k += VL) {
    const vf v = load(z + k, VL);
    const vf u = vexp(v < 0.0f ? v : -v);  // exp(-|z|)
    const vf inv = 1.0f / (1.0f + u);
    store(z + k, VL, sign * (v < 0.0f ? u * inv : inv));  // sign * sigmoid(z)
    relu += __builtin_convertvector(v < 0.0f ? splat(0.0f) : v, vd);
    product *= 1.0 + __builtin_convertvector(u, vd);
    if (++factors == 64) {
      for (int l = 0; l < VL; ++l) logs[l] += std::log(product[l]);
      product = vd{} + 1.0;
      factors = 0;
    }
  }
  double sum = 0.0;
  for (int l = 0; l < VL; ++l) sum += relu[l] + (logs[l] + std::log(product[l]));
  for (; k < count; ++k) {  // the tail, in double
    const double v = z[k], u = std::exp(-std::fabs(v));
    sum += (v > 0.0 ? v : 0.0) + std::log1p(u);
    const double sigmoid = v < 0.0 ? u / (1.0 + u) : 1.0 / (1.0 + u);
    z[k] = static_cast<float>(k % 2 ? sigmoid : -sigmoid);
  }
  loss[0] = static_cast<float>(sum / static_cast<double>(pairs > 1 ? pairs : 1));
  return 0;
}

// grad [1] (the loss's) -> grad_states, grad_behaviours, grad_negatives [N, I] (all written; the
// rows before `later` of the last two are 0); z: the forward's.
int ctrbench_dien_aux_backward(const float* grad, const float* states, const float* behaviours,
                               const float* negatives, const int64_t* previous, int64_t steps,
                               int64_t later, int width, const float* z, float* grad_states,
                               float* grad_behaviours, float* grad_negatives) {
  if (steps < 0 || later < 0 || later > steps || width < 1) return 1;
  const int64_t pairs = steps - later;
  const float scale = grad[0] / static_cast<float>(pairs > 1 ? pairs : 1);
  std::memset(grad_states, 0, sizeof(float) * steps * width);
  std::memset(grad_behaviours, 0, sizeof(float) * later * width);
  std::memset(grad_negatives, 0, sizeof(float) * later * width);
  for (int64_t p = 0; p < pairs; ++p) {
    const int64_t n = later + p, m = previous[n];
    if (m < 0 || m >= steps) return 2;
    const float dx = scale * z[2 * p], dy = scale * z[2 * p + 1];
    const float* h = states + m * width;
    const float* e = behaviours + n * width;
    const float* e_neg = negatives + n * width;
    scaled(grad_behaviours + n * width, width, dx, h, 0.0f, nullptr);
    scaled(grad_negatives + n * width, width, dy, h, 0.0f, nullptr);
    add_scaled(grad_states + m * width, width, dx, e, dy, e_neg);
  }
  return 0;
}

}  // extern "C"
