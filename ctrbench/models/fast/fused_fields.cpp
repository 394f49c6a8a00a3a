// MIAN's field interaction (IUIM / ICIM) as one kernel per direction: the per-field scores, the
// softmax over fields and the weighted sum, with no op dispatched per step. Loaded through
// ctypes by ctrbench/models/fast/fused_fields.py, compiled on first use by ctrbench/native.py.
// Tested against ctrbench.models.mian.FieldInteraction's torch path.
//
// Equations, per row (item x of width I, F fields f_j of width D, weight [F, I + D] = [u_j | v_j]):
//   s_j = tanh(x . u_j + f_j . v_j + c_j);  a = softmax_j(s);  A = sum_j a_j
//   R = [x A ; sum_j a_j f_j]                                   (I + D)
// Backward, given dR = [dx_R ; df_R]: dA_j = dx_R . x + df_R . f_j;
//   dz_j = a_j (dA_j - sum_k a_k dA_k) (1 - s_j^2)
//   dx = dx_R A + sum_j dz_j u_j;  df_j = a_j df_R + dz_j v_j;
//   du_j = sum_rows dz_j x;  dv_j = sum_rows dz_j f_j;  dc_j = sum_rows dz_j
// dA_j - sum_k a_k dA_k is computed as (df_R . f_j - sum_k a_k df_R . f_k) + (dx_R . x)(1 - A):
// the same value, without cancelling the common term dx_R . x in float32.
//
// Layout (float32, row-major, contiguous): item [B, I]; fields [B, F, D]; weight [F, I + D];
// bias [F]; out [B, I + D]; alpha, scores (s, saved for the backward) [B, F]. Gradients are
// written, not accumulated; a null gradient pointer is not computed. Single-threaded: the
// parameter gradients are summed row after row, the same bits at any thread count.
//
// Rows run in blocks of VL: the dot products per row, in VL-float vectors over the widths (a
// width's tail through masked moves, native_vector.h), each summed into its row's lane of a
// per-field vector; tanh, the softmax and dz then run over the block's rows as lanes (vector tanh
// and exp: glibc's scalar tanhf and expf were ~80% of the forward, 134 -> 27 us at B = 1024,
// F = 5); the outputs and gradients again per row over the widths.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

// the partial sums of a . b over n floats, in lanes
inline vf dot_lanes(const float* a, const float* b, int n, vf acc) {
  for (int k0 = 0; k0 < n; k0 += VL) {
    const int c = lanes_from(k0, n);
    acc += load_part(a + k0, c) * load_part(b + k0, c);
  }
  return acc;
}

// tanh as Cephes' tanhf: an odd polynomial below |z| = 0.625, else 1 - 2 / (exp(2|z|) + 1)
// with z's sign (+-1 exactly once exp saturates); within 7.2e-8 of tanh on [-30, 30]
inline vf vtanh(vf z) {
  const vf m = z < 0.0f ? -z : z, q = z * z;
  vf p = splat(-5.70498872745e-3f);
  p = p * q + 2.06390887954e-2f;
  p = p * q - 5.37397155531e-2f;
  p = p * q + 1.33314422036e-1f;
  p = p * q - 3.33332819422e-1f;
  p = p * q * z + z;
  vf t = 1.0f - 2.0f / (vexp(m + m) + 1.0f);
  t = z < 0.0f ? -t : t;
  return m > 0.625f ? t : p;
}

bool valid(int64_t rows, int F, int I, int D) { return rows >= 0 && F >= 1 && I >= 0 && D >= 0; }

}  // namespace

extern "C" {

int ctrbench_fields_forward(const float* item, const float* fields, const float* weight,
                            const float* bias, int64_t rows, int F, int I, int D, float* out,
                            float* alpha, float* scores) {
  if (!valid(rows, F, I, D)) return 1;
  const int W = I + D;
  // a block's scores, then weights, field-major: lane r is row b0 + r
  std::vector<vf> z(F), a(F);
  for (int64_t b0 = 0; b0 < rows; b0 += VL) {
    const int count = rows - b0 < VL ? (int)(rows - b0) : VL;
    for (int j = 0; j < F; ++j) z[j] = splat(0.0f);
    for (int r = 0; r < count; ++r) {
      const float* x = item + (b0 + r) * I;
      const float* f = fields + (b0 + r) * F * D;
      for (int j = 0; j < F; ++j) {
        const float* w = weight + (int64_t)j * W;
        const vf part = dot_lanes(x, w, I, splat(0.0f));
        z[j][r] = lane_sum(dot_lanes(f + (int64_t)j * D, w + I, D, part));
      }
    }
    vf top = splat(-INFINITY), total = splat(0.0f), mass = splat(0.0f);
    for (int j = 0; j < F; ++j) {
      z[j] = vtanh(z[j] + bias[j]);
      top = z[j] > top ? z[j] : top;
    }
    for (int j = 0; j < F; ++j) total += (a[j] = vexp(z[j] - top));
    for (int j = 0; j < F; ++j) mass += (a[j] = a[j] / total);  // sum_j a_j: kept as torch does
    for (int r = 0; r < count; ++r) {
      const int64_t b = b0 + r;
      const float* f = fields + b * F * D;
      for (int j = 0; j < F; ++j) {
        scores[b * F + j] = z[j][r];
        alpha[b * F + j] = a[j][r];
      }
      float* o = out + b * W;
      scaled(o, I, mass[r], item + b * I, 0.0f, nullptr);
      for (int k0 = 0; k0 < D; k0 += VL) {
        const int c = lanes_from(k0, D);
        vf sum = splat(0.0f);
        for (int j = 0; j < F; ++j) sum += a[j][r] * load_part(f + (int64_t)j * D + k0, c);
        store_part(o + I + k0, c, sum);
      }
    }
  }
  return 0;
}

int ctrbench_fields_backward(const float* grad_out, const float* item, const float* fields,
                             const float* weight, const float* alpha, const float* scores,
                             int64_t rows, int F, int I, int D, float* grad_item,
                             float* grad_fields, float* grad_weight, float* grad_bias) {
  if (!valid(rows, F, I, D)) return 1;
  const int W = I + D;
  if (grad_weight != nullptr) std::memset(grad_weight, 0, sizeof(float) * (size_t)F * W);
  if (grad_bias != nullptr) std::memset(grad_bias, 0, sizeof(float) * (size_t)F);
  // a block's df_R . f_j, then dz_j, and its weights, field-major: lane r is row b0 + r
  std::vector<vf> da(F), a(F);
  for (int64_t b0 = 0; b0 < rows; b0 += VL) {
    const int count = rows - b0 < VL ? (int)(rows - b0) : VL;
    vf common = splat(0.0f), mass = splat(0.0f), mixed = splat(0.0f);
    for (int j = 0; j < F; ++j) da[j] = a[j] = splat(0.0f);
    for (int r = 0; r < count; ++r) {
      const int64_t b = b0 + r;
      const float* f = fields + b * F * D;
      const float* dx_r = grad_out + b * W;
      common[r] = lane_sum(dot_lanes(dx_r, item + b * I, I, splat(0.0f)));
      for (int j = 0; j < F; ++j) {
        da[j][r] = lane_sum(dot_lanes(dx_r + I, f + (int64_t)j * D, D, splat(0.0f)));
        a[j][r] = alpha[b * F + j];
      }
    }
    for (int j = 0; j < F; ++j) {
      mass += a[j];
      mixed += a[j] * da[j];
    }
    common *= 1.0f - mass;
    for (int j = 0; j < F; ++j) {
      vf s = splat(0.0f);
      for (int r = 0; r < count; ++r) s[r] = scores[(b0 + r) * F + j];
      da[j] = a[j] * ((da[j] - mixed) + common) * (1.0f - s * s);  // now dz_j
    }
    for (int r = 0; r < count; ++r) {
      const int64_t b = b0 + r;
      const float* x = item + b * I;
      const float* f = fields + b * F * D;
      const float* dx_r = grad_out + b * W;
      if (grad_item != nullptr)
        for (int k0 = 0; k0 < I; k0 += VL) {
          const int c = lanes_from(k0, I);
          vf sum = mass[r] * load_part(dx_r + k0, c);
          for (int j = 0; j < F; ++j) sum += da[j][r] * load_part(weight + (int64_t)j * W + k0, c);
          store_part(grad_item + b * I + k0, c, sum);
        }
      if (grad_fields != nullptr)
        for (int j = 0; j < F; ++j)
          scaled(grad_fields + (b * F + j) * D, D, a[j][r], dx_r + I, da[j][r],
                 weight + (int64_t)j * W + I);
      if (grad_weight != nullptr)
        for (int j = 0; j < F; ++j) {
          add_scaled(grad_weight + (int64_t)j * W, I, da[j][r], x, 0.0f, nullptr);
          add_scaled(grad_weight + (int64_t)j * W + I, D, da[j][r], f + (int64_t)j * D, 0.0f, nullptr);
        }
      if (grad_bias != nullptr)
        for (int j = 0; j < F; ++j) grad_bias[j] += da[j][r];
    }
  }
  return 0;
}

}  // extern "C"
