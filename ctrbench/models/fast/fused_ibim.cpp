// MIAN's IBIM attention (eqs. 6-9) over the valid steps packed by row, one kernel per direction:
// each step's score with the weight vector and bias of its recency, tanh, the softmax over the
// row's steps, and the pooled [e_i * sum a; sum a h]. Loaded through ctypes by
// ctrbench/models/fast/fused_ibim.py, compiled on first use by ctrbench/native.py. Tested
// against BehaviorInteraction.packed's torch path (tests/test_fast_fused_ibim.py).
//
// Layout (float32 unless said, row-major, contiguous; I = width):
//   item     [B, I]        the candidate e_i of each row
//   states   [N, I]        h_t at the valid steps; row b's are offsets[b] .. offsets[b + 1] - 1
//   recency  [N] int64     the index of each step's (W_t, b_t), 0 .. L - 1 (null: all 0)
//   weight   [L, 2I]       W_t = [w_item | w_state];  bias [L]
//   out      [B, 2I]       [e_i * sum_t a_t; sum_t a_t h_t] (0 for a row without steps)
//   alpha    [N]           a_t = softmax over the row of s_t = tanh(e_i . w_item + h_t . w_state + b)
//   score    [N]           s_t (kept for the backward)
// The backward sums the weight and bias gradients over the steps in order (deterministic).
// Single-threaded; plain loops over I that -O3 vectorises.

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

inline float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
  for (int k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

}  // namespace

extern "C" {

int ctrbench_ibim_forward(const float* item, const float* states, const int64_t* offsets,
                          const int64_t* recency, int64_t rows, int width, const float* weight,
                          const float* bias, int64_t weights, float* out, float* alpha,
                          float* score) {
  if (rows < 0 || width < 1 || weights < 1) return 1;
  const int64_t wide = 2 * static_cast<int64_t>(width);
  for (int64_t b = 0; b < rows; ++b) {
    const float* e = item + b * width;
    float* r = out + b * wide;
    const int64_t first = offsets[b], last = offsets[b + 1];
    float top = -2.0f;  // scores are tanh values, above -1
    for (int64_t n = first; n < last; ++n) {
      const int64_t t = recency ? recency[n] : 0;
      if (t < 0 || t >= weights) return 2;
      const float* w = weight + t * wide;
      const float s = std::tanh(dot(e, w, width) + bias[t] + dot(states + n * width, w + width,
                                                                  width));
      score[n] = s;
      top = s > top ? s : top;
    }
    float total = 0.0f;
    for (int64_t n = first; n < last; ++n) {
      alpha[n] = std::exp(score[n] - top);
      total += alpha[n];
    }
    const float inverse = last > first ? 1.0f / total : 0.0f;
    float mass = 0.0f;  // sum_t a_t: 1 up to rounding, 0 without steps
    float* pooled = r + width;
    for (int k = 0; k < width; ++k) pooled[k] = 0.0f;
    for (int64_t n = first; n < last; ++n) {
      const float a = alpha[n] * inverse;
      alpha[n] = a;
      mass += a;
      const float* h = states + n * width;
      for (int k = 0; k < width; ++k) pooled[k] += a * h[k];
    }
    for (int k = 0; k < width; ++k) r[k] = e[k] * mass;
  }
  return 0;
}

// grad [B, 2I] -> grad_item [B, I], grad_states [N, I], grad_weight [L, 2I], grad_bias [L]
// (all written); the other arguments as the forward's, with its alpha and score.
int ctrbench_ibim_backward(const float* grad, const float* item, const float* states,
                           const int64_t* offsets, const int64_t* recency, int64_t rows,
                           int width, const float* weight, int64_t weights, const float* alpha,
                           const float* score, float* grad_item, float* grad_states,
                           float* grad_weight, float* grad_bias) {
  if (rows < 0 || width < 1 || weights < 1) return 1;
  const int64_t wide = 2 * static_cast<int64_t>(width);
  std::memset(grad_weight, 0, sizeof(float) * weights * wide);
  std::memset(grad_bias, 0, sizeof(float) * weights);
  for (int64_t b = 0; b < rows; ++b) {
    const float* e = item + b * width;
    const float* g_item = grad + b * wide;  // dR for e_i * sum a
    const float* g_pool = g_item + width;   // dR for sum a h
    float* gi = grad_item + b * width;
    const int64_t first = offsets[b], last = offsets[b + 1];
    const float common = dot(g_item, e, width);  // the part of dL/da_t shared by the steps
    float mass = 0.0f, expected = 0.0f;          // sum a, sum a dL/da
    for (int64_t n = first; n < last; ++n) {
      const float d = common + dot(g_pool, states + n * width, width);
      mass += alpha[n];
      expected += alpha[n] * d;
    }
    for (int k = 0; k < width; ++k) gi[k] = g_item[k] * mass;
    for (int64_t n = first; n < last; ++n) {
      const int64_t t = recency ? recency[n] : 0;
      if (t < 0 || t >= weights) return 2;
      const float* h = states + n * width;
      const float* w = weight + t * wide;
      const float a = alpha[n], s = score[n];
      const float d = common + dot(g_pool, h, width);
      const float dz = a * (d - expected) * (1.0f - s * s);  // through the softmax and tanh
      float* gh = grad_states + n * width;
      float* gw = grad_weight + t * wide;
      for (int k = 0; k < width; ++k) {
        gi[k] += dz * w[k];
        gh[k] = a * g_pool[k] + dz * w[width + k];
        gw[k] += dz * e[k];
        gw[width + k] += dz * h[k];
      }
      grad_bias[t] += dz;
    }
  }
  return 0;
}

}  // extern "C"
