// MIAN's Global Interaction Module (GIM) as one kernel per direction: the P part projections,
// their scores, the softmax over parts and the weighted sum, with no op dispatched per part.
// Loaded through ctypes by ctrbench/models/fast/fused_gim.py, compiled on first use by
// ctrbench/native.py. Tested against ctrbench.models.mian.GlobalInteraction's torch path.
//
// Equations, per row (P parts, x_p of width w_p, common width G):
//   P_p = W_p x_p + c_p                      (G)      W_p [G, w_p], c_p [G]  (nn.Linear)
//   s_p = tanh(u_p . P_p + b_p)                       u [P, G], b [P]
//   a = softmax_p(s);  R = sum_p a_p P_p     (G)
// Backward, given dR: da_p = dR . P_p; dz_p = a_p (da_p - sum_q a_q da_q) (1 - s_p^2);
//   dP_p = a_p dR + dz_p u_p; du_p = sum_rows dz_p P_p; db_p = sum_rows dz_p;
//   dc_p = sum_rows dP_p; dW_p = sum_rows dP_p x_p^T; dx_p = W_p^T dP_p.
//
// Layout (float32, row-major, contiguous): x[p] [B, w_p]; weight[p] [G, w_p]; bias[p] [G];
// out [B, G]; alpha, scores (s) [B, P]; projected [B, P, G] (saved for the backward). Gradients
// are written, not accumulated. GCC vector extensions of VL floats (native_vector.h): a G-vector
// is NG = ceil(G / VL) vectors, lanes past G zero. The forward runs ROWS rows per pass over a
// transposed copy of each W_p (lanes = outputs); the backward's dx_p and dW_p run over W_p's
// rows (lanes = inputs), BACK_ROWS rows per pass, so each dW_p row is loaded and stored once per
// pass.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

constexpr int MAX_PARTS = 32;
constexpr int MAX_VECTORS = 8;  // G up to 8 VL floats
constexpr int ROWS = 4;         // forward rows per pass
constexpr int BACK_ROWS = 8;    // backward rows per pass

inline int lanes_in(int k, int n) { return n - k * VL < VL ? n - k * VL : VL; }

bool valid(const int* widths, int parts, int G) {
  if (parts <= 0 || parts > MAX_PARTS || G <= 0 || (G + VL - 1) / VL > MAX_VECTORS) return false;
  for (int p = 0; p < parts; ++p)
    if (widths[p] <= 0) return false;
  return true;
}

// rows b0 .. b0 + R - 1 of the forward (R known at compile time: accumulators in registers)
template <int NG, int R>
void forward_block(const float* const* x, const int* widths, int parts, int G,
                   const float* transposed, const int64_t* first, const vf* c, const vf* u,
                   const float* score_b, int64_t b0, float* out, float* alpha, float* projected,
                   float* scores) {
  const int ng = NG > 0 ? NG : (G + VL - 1) / VL, padded = ng * VL;
  vf acc[R][MAX_VECTORS];
  float s[R][MAX_PARTS];
  for (int p = 0; p < parts; ++p) {
    const int width = widths[p];
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < ng; ++v) acc[r][v] = c[p * ng + v];
    const float* wt = transposed + first[p];
    const float* xs = x[p] + b0 * width;
    for (int k = 0; k < width; ++k) {
      vf w[MAX_VECTORS];
      for (int v = 0; v < ng; ++v) std::memcpy(&w[v], wt + (int64_t)k * padded + v * VL, sizeof(vf));
      for (int r = 0; r < R; ++r) {
        const float xk = xs[r * width + k];
        for (int v = 0; v < ng; ++v) acc[r][v] += xk * w[v];
      }
    }
    for (int r = 0; r < R; ++r) {
      vf dot = splat(0.0f);
      for (int v = 0; v < ng; ++v) {
        dot += acc[r][v] * u[p * ng + v];
        store(projected + ((b0 + r) * parts + p) * G + v * VL, lanes_in(v, G), acc[r][v]);
      }
      s[r][p] = std::tanh(lane_sum(dot) + score_b[p]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const int64_t b = b0 + r;
    float top = s[r][0], total = 0.0f, a[MAX_PARTS];
    for (int p = 1; p < parts; ++p) top = s[r][p] > top ? s[r][p] : top;
    for (int p = 0; p < parts; ++p) total += (a[p] = std::exp(s[r][p] - top));
    vf sum[MAX_VECTORS];
    for (int v = 0; v < ng; ++v) sum[v] = splat(0.0f);
    for (int p = 0; p < parts; ++p) {
      a[p] /= total;
      alpha[b * parts + p] = a[p];
      scores[b * parts + p] = s[r][p];
      const float* row = projected + (b * parts + p) * G;
      for (int v = 0; v < ng; ++v) sum[v] += a[p] * load(row + v * VL, lanes_in(v, G));
    }
    for (int v = 0; v < ng; ++v) store(out + b * G + v * VL, lanes_in(v, G), sum[v]);
  }
}

// NG > 0: G's vector count known at compile time; NG = 0: counted at run time
template <int NG>
void forward_rows(const float* const* x, const float* const* weight, const float* const* bias,
                  const int* widths, int parts, int G, const float* score_w,
                  const float* score_b, int64_t rows, float* out, float* alpha,
                  float* projected, float* scores) {
  const int ng = NG > 0 ? NG : (G + VL - 1) / VL, padded = ng * VL;
  // W_p^T [w_p, padded] per part, lanes past G zero; c_p and u_p as vectors
  std::vector<int64_t> first(parts + 1, 0);
  for (int p = 0; p < parts; ++p) first[p + 1] = first[p] + (int64_t)widths[p] * padded;
  std::vector<float> transposed(first[parts], 0.0f);
  std::vector<vf> c(parts * ng), u(parts * ng);
  for (int p = 0; p < parts; ++p) {
    float* wt = transposed.data() + first[p];
    for (int g = 0; g < G; ++g)
      for (int k = 0; k < widths[p]; ++k) wt[(int64_t)k * padded + g] = weight[p][g * widths[p] + k];
    for (int v = 0; v < ng; ++v) {
      c[p * ng + v] = load(bias[p] + v * VL, lanes_in(v, G));
      u[p * ng + v] = load(score_w + p * G + v * VL, lanes_in(v, G));
    }
  }
  for (int64_t b0 = 0; b0 < rows; b0 += ROWS) {
    if (rows - b0 >= ROWS)
      forward_block<NG, ROWS>(x, widths, parts, G, transposed.data(), first.data(), c.data(),
                              u.data(), score_b, b0, out, alpha, projected, scores);
    else
      for (int64_t b = b0; b < rows; ++b)
        forward_block<NG, 1>(x, widths, parts, G, transposed.data(), first.data(), c.data(),
                             u.data(), score_b, b, out, alpha, projected, scores);
  }
}

// dx_p = W_p^T dP_p and dW_p += dP_p x_p^T for rows b0 .. b0 + R - 1, lanes = inputs k, VL
// at a time; dp: the rows' dP, [R][parts][padded]
template <int R>
void inputs_block(const float* const* x, const float* const* weight, const int* widths,
                  int parts, int G, const float* dp, int padded, int64_t b0,
                  float* const* grad_x, float* const* grad_weight) {
  for (int p = 0; p < parts; ++p) {
    const int width = widths[p];
    for (int k0 = 0; k0 < width; k0 += VL) {
      const int lanes = width - k0 < VL ? width - k0 : VL;
      vf xs[R], dx[R];
      for (int r = 0; r < R; ++r) {
        xs[r] = load(x[p] + (b0 + r) * width + k0, lanes);
        dx[r] = splat(0.0f);
      }
      for (int g = 0; g < G; ++g) {
        const vf w = load(weight[p] + (int64_t)g * width + k0, lanes);
        float* dw_row = grad_weight[p] + (int64_t)g * width + k0;
        vf dw = load(dw_row, lanes);
        for (int r = 0; r < R; ++r) {
          const float grad = dp[((size_t)r * parts + p) * padded + g];
          dx[r] += grad * w;
          dw += grad * xs[r];
        }
        store(dw_row, lanes, dw);
      }
      for (int r = 0; r < R; ++r) store(grad_x[p] + (b0 + r) * width + k0, lanes, dx[r]);
    }
  }
}

template <int NG>
void backward_rows(const float* grad_out, const float* const* x, const float* const* weight,
                   const int* widths, int parts, int G, const float* score_w,
                   const float* projected, const float* alpha, const float* scores,
                   int64_t rows, float* const* grad_x, float* const* grad_weight,
                   float* const* grad_bias, float* grad_score_w, float* grad_score_b) {
  const int ng = NG > 0 ? NG : (G + VL - 1) / VL, padded = ng * VL;
  std::vector<vf> u(parts * ng), du(parts * ng, splat(0.0f)), dc(parts * ng, splat(0.0f));
  std::vector<float> db(parts, 0.0f);
  for (int p = 0; p < parts; ++p)
    for (int v = 0; v < ng; ++v) u[p * ng + v] = load(score_w + p * G + v * VL, lanes_in(v, G));
  for (int p = 0; p < parts; ++p)
    std::memset(grad_weight[p], 0, sizeof(float) * (size_t)G * widths[p]);
  // dP of a pass's rows: [BACK_ROWS][parts][padded], lanes past G zero
  std::vector<float> dp((size_t)BACK_ROWS * parts * padded, 0.0f);
  for (int64_t b0 = 0; b0 < rows; b0 += BACK_ROWS) {
    const int count = rows - b0 < BACK_ROWS ? (int)(rows - b0) : BACK_ROWS;
    for (int r = 0; r < count; ++r) {
      const int64_t b = b0 + r;
      vf d[MAX_VECTORS];
      for (int v = 0; v < ng; ++v) d[v] = load(grad_out + b * G + v * VL, lanes_in(v, G));
      float da[MAX_PARTS], mixed = 0.0f;
      for (int p = 0; p < parts; ++p) {
        const float* row = projected + (b * parts + p) * G;
        vf dot = splat(0.0f);
        for (int v = 0; v < ng; ++v) dot += d[v] * load(row + v * VL, lanes_in(v, G));
        da[p] = lane_sum(dot);
        mixed += alpha[b * parts + p] * da[p];
      }
      for (int p = 0; p < parts; ++p) {
        const float a = alpha[b * parts + p], s = scores[b * parts + p];
        const float dz = a * (da[p] - mixed) * (1.0f - s * s);
        const float* row = projected + (b * parts + p) * G;
        float* out = dp.data() + ((size_t)r * parts + p) * padded;
        db[p] += dz;
        for (int v = 0; v < ng; ++v) {
          vf grad = a * d[v] + dz * u[p * ng + v];
          std::memcpy(out + v * VL, &grad, sizeof(vf));
          du[p * ng + v] += dz * load(row + v * VL, lanes_in(v, G));
          dc[p * ng + v] += grad;
        }
      }
    }
    if (count == BACK_ROWS) {
      inputs_block<BACK_ROWS>(x, weight, widths, parts, G, dp.data(), padded, b0, grad_x,
                              grad_weight);
    } else {
      for (int r = 0; r < count; ++r)
        inputs_block<1>(x, weight, widths, parts, G, dp.data() + (size_t)r * parts * padded,
                        padded, b0 + r, grad_x, grad_weight);
    }
  }
  for (int p = 0; p < parts; ++p) {
    grad_score_b[p] = db[p];
    for (int v = 0; v < ng; ++v) {
      store(grad_score_w + p * G + v * VL, lanes_in(v, G), du[p * ng + v]);
      store(grad_bias[p] + v * VL, lanes_in(v, G), dc[p * ng + v]);
    }
  }
}

}  // namespace

extern "C" {

int ctrbench_gim_max_width() { return MAX_VECTORS * VL; }
int ctrbench_gim_max_parts() { return MAX_PARTS; }

int ctrbench_gim_forward(const float* const* x, const float* const* weight,
                         const float* const* bias, const int* widths, int parts, int G,
                         const float* score_w, const float* score_b, int64_t rows, float* out,
                         float* alpha, float* projected, float* scores) {
  if (rows < 0 || !valid(widths, parts, G)) return 1;
  if ((G + VL - 1) / VL == 4)
    forward_rows<4>(x, weight, bias, widths, parts, G, score_w, score_b, rows, out, alpha,
                    projected, scores);
  else
    forward_rows<0>(x, weight, bias, widths, parts, G, score_w, score_b, rows, out, alpha,
                    projected, scores);
  return 0;
}

int ctrbench_gim_backward(const float* grad_out, const float* const* x,
                          const float* const* weight, const int* widths, int parts, int G,
                          const float* score_w, const float* projected, const float* alpha,
                          const float* scores, int64_t rows, float* const* grad_x,
                          float* const* grad_weight, float* const* grad_bias,
                          float* grad_score_w, float* grad_score_b) {
  if (rows < 0 || !valid(widths, parts, G)) return 1;
  if ((G + VL - 1) / VL == 4)
    backward_rows<4>(grad_out, x, weight, widths, parts, G, score_w, projected, alpha, scores,
                     rows, grad_x, grad_weight, grad_bias, grad_score_w, grad_score_b);
  else
    backward_rows<0>(grad_out, x, weight, widths, parts, G, score_w, projected, alpha, scores,
                     rows, grad_x, grad_weight, grad_bias, grad_score_w, grad_score_b);
  return 0;
}

}  // extern "C"
