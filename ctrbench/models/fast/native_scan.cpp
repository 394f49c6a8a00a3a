// The GRU and AUGRU recurrences packed by step, forward and backward, one row at a time:
// the recurrent product, the gates and the state update of a row in registers, no dispatched op
// per step. Loaded through ctypes by ctrbench/models/fast/native_scan.py, compiled on first use
// by ctrbench/native.py. Tested against ctrbench/models/fast/packed_scan.py's torch loop.
//
// Equations (those of gated_scan.py; gate layout [reset | update | candidate], h_{-1} = 0):
//   r = sigmoid(gx_r + W_hr h + b_hr); z = sigmoid(gx_z + W_hz h + b_hz); hn = W_hn h + b_hn
//   n = tanh(gx_n + r hn)
//   GRU:   h' = n + z (h - n)          AUGRU: h' = h + a z (n - h)
//
// Layout (float32, row-major, contiguous), N packed rows: step t's rows are
// offsets[t] .. offsets[t] + sizes[t] - 1 (offsets = cumulative sizes, sizes non-increasing),
// and row j of step t continues row j of step t - 1 (StepPacking's layout).
//   gx [N, 3H], w_hh [3H, H], b_hh [3H], gate [N] (AUGRU's attention; null: the GRU)
//   states [N, H] (h after each step), saved [N, 4H]: r | z | n | hn of each step
//   backward: grad [N, H] (dL/dh of every state; updated in place into the total gradient),
//   d_gx [N, 3H] (= d pre-activations of r | z | n), d_pre [N, 3H] (of W_hh h + b_hh: r | z |
//   hn, for dW_hh = d_pre^T h_prev and db_hh = sum d_pre, left to the caller), d_gate [N].
//
// GCC vector extensions, VL floats per vector: a row's hidden vector is NV = ceil(H / VL)
// vectors (lanes past H are 0 in and never stored). The forward's product h W_hh^T runs over
// k < H adding h[k] times a padded row of W_hh^T (3 NV vectors); the backward's d_pre W_hh runs
// over the 3H outputs adding d_pre[o] times a padded row of W_hh (NV vectors), one accumulator
// set per gate. exp: native_vector.h (clamped both ways, so sigmoid and tanh are finite and
// saturate cleanly at any argument).

#include <cstdint>
#include <cstring>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

// 1 / (1 + e^-x): e^-x is at most ~2.7e38 (clamped), so 0 <= sigmoid <= 1, never NaN
inline vf vsigmoid(vf x) { return splat(1.0f) / (splat(1.0f) + vexp(-x)); }

// 1 - 2 / (1 + e^2x): -1 for large negative x (e^2x = 0), 1 for large positive x
inline vf vtanh(vf x) { return splat(1.0f) - splat(2.0f) / (splat(1.0f) + vexp(x + x)); }


inline int lanes(int hidden, int v) { return hidden - v * VL < VL ? hidden - v * VL : VL; }

// H floats of src (one gate's part of a row) into nv vectors
inline void load_part(vf* out, const float* src, int hidden, int nv) {
  for (int v = 0; v < nv; ++v) out[v] = load(src + v * VL, lanes(hidden, v));
}

inline void store_part(float* dst, const vf* in, int hidden, int nv) {
  for (int v = 0; v < nv; ++v) store(dst + v * VL, lanes(hidden, v), in[v]);
}

// Register arrays of NV vectors when NV > 0 is known at compile time; else nv on the heap.
template <int NV>
struct Slots {
  vf data[NV > 0 ? NV : 1];
  explicit Slots(int) {}
  vf& operator[](int i) { return data[i]; }
};

template <>
struct Slots<0> {
  std::vector<vf> data;
  explicit Slots(int count) : data(count) {}
  vf& operator[](int i) { return data[i]; }
};

// W_hh^T padded: k < H rows of 3 nv vectors (gate g's outputs at vectors g nv ..), and b_hh
void pad_forward(const float* w_hh, const float* b_hh, int hidden, int nv,
                 std::vector<vf>& w_t, std::vector<vf>& bias) {
  const int padded = nv * VL;
  w_t.assign(static_cast<size_t>(hidden) * 3 * nv, splat(0.0f));
  bias.assign(3 * nv, splat(0.0f));
  float* w = reinterpret_cast<float*>(w_t.data());
  float* b = reinterpret_cast<float*>(bias.data());
  for (int g = 0; g < 3; ++g)
    for (int i = 0; i < hidden; ++i) {
      b[g * padded + i] = b_hh[g * hidden + i];
      for (int k = 0; k < hidden; ++k)
        w[static_cast<size_t>(k) * 3 * padded + g * padded + i] = w_hh[(g * hidden + i) * hidden + k];
    }
}

template <int NV>
void forward_steps(const float* gx, const float* w_hh, const float* b_hh, const float* gate,
                   const int64_t* sizes, int64_t steps, int hidden, float* states,
                   float* saved) {
  const int nv = NV > 0 ? NV : (hidden + VL - 1) / VL;
  const int64_t H = hidden;
  std::vector<vf> w_t, bias;
  pad_forward(w_hh, b_hh, hidden, nv, w_t, bias);
  Slots<NV ? 3 * NV : 0> acc(3 * nv), g(3 * nv);
  Slots<NV> h_prev(nv), h(nv);
  int64_t offset = 0, previous = 0;
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t j = 0; j < sizes[t]; ++j) {
      const int64_t row = offset + j;
      for (int i = 0; i < 3 * nv; ++i) acc[i] = bias[i];
      for (int v = 0; v < nv; ++v) h_prev[v] = splat(0.0f);
      if (t > 0) {
        const float* hp = states + (previous + j) * H;
        load_part(&h_prev[0], hp, hidden, nv);
        for (int k = 0; k < hidden; ++k) {
          const vf* w = w_t.data() + static_cast<size_t>(k) * 3 * nv;
          const float s = hp[k];
          for (int i = 0; i < 3 * nv; ++i) acc[i] += s * w[i];
        }
      }
      for (int part = 0; part < 3; ++part)
        load_part(&g[part * nv], gx + row * 3 * H + part * H, hidden, nv);
      const float a = gate ? gate[row] : 0.0f;
      float* out = saved + row * 4 * H;  // r | z | n | hn
      for (int v = 0; v < nv; ++v) {
        const vf r = vsigmoid(g[v] + acc[v]);
        const vf z = vsigmoid(g[nv + v] + acc[nv + v]);
        const vf hn = acc[2 * nv + v];
        const vf n = vtanh(g[2 * nv + v] + r * hn);
        h[v] = gate ? h_prev[v] + (a * z) * (n - h_prev[v]) : n + z * (h_prev[v] - n);
        const int count = lanes(hidden, v);
        store(out + v * VL, count, r);
        store(out + H + v * VL, count, z);
        store(out + 2 * H + v * VL, count, n);
        store(out + 3 * H + v * VL, count, hn);
      }
      store_part(states + row * H, &h[0], hidden, nv);
    }
    previous = offset;
    offset += sizes[t];
  }
}

// W_hh padded: 3H rows of nv vectors
std::vector<vf> pad_backward(const float* w_hh, int hidden, int nv) {
  std::vector<vf> w(static_cast<size_t>(3) * hidden * nv, splat(0.0f));
  for (int o = 0; o < 3 * hidden; ++o)
    std::memcpy(reinterpret_cast<float*>(w.data() + static_cast<size_t>(o) * nv),
                w_hh + o * hidden, hidden * sizeof(float));
  return w;
}

inline float lane_sum(vf x) {
  float total = 0.0f;
  for (int l = 0; l < VL; ++l) total += x[l];
  return total;
}

template <int NV>
void backward_steps(const float* w_hh, const float* gate, const float* states,
                    const float* saved, const int64_t* sizes, int64_t steps, int hidden,
                    float* grad, float* d_gx, float* d_pre, float* d_gate) {
  const int nv = NV > 0 ? NV : (hidden + VL - 1) / VL;
  const int64_t H = hidden;
  const std::vector<vf> w = pad_backward(w_hh, hidden, nv);
  std::vector<int64_t> offsets(steps + 1, 0);
  for (int64_t t = 0; t < steps; ++t) offsets[t + 1] = offsets[t] + sizes[t];
  Slots<NV ? 3 * NV : 0> dp(3 * nv);
  Slots<NV> dh(nv), keep(nv), dr(nv), dz(nv), dn(nv);
  for (int64_t t = steps - 1; t >= 0; --t) {
    for (int64_t j = 0; j < sizes[t]; ++j) {
      const int64_t row = offsets[t] + j;
      const float* in = saved + row * 4 * H;
      const float* hp = t > 0 ? states + (offsets[t - 1] + j) * H : nullptr;
      const float a = gate ? gate[row] : 0.0f;
      vf gate_sum = splat(0.0f);
      for (int v = 0; v < nv; ++v) {
        const int count = lanes(hidden, v);
        const vf r = load(in + v * VL, count), z = load(in + H + v * VL, count);
        const vf n = load(in + 2 * H + v * VL, count), hn = load(in + 3 * H + v * VL, count);
        const vf h = hp ? load(hp + v * VL, count) : splat(0.0f);
        dh[v] = load(grad + row * H + v * VL, count);
        vf to_n, to_z;  // dL/dn and dL/dz
        if (gate) {
          const vf change = n - h;
          to_n = dh[v] * (a * z);
          to_z = dh[v] * a * change;
          keep[v] = splat(1.0f) - a * z;
          gate_sum += dh[v] * z * change;
        } else {
          to_n = dh[v] * (splat(1.0f) - z);
          to_z = dh[v] * (h - n);
          keep[v] = z;
        }
        dn[v] = to_n * (splat(1.0f) - n * n);
        dr[v] = dn[v] * hn * (r * (splat(1.0f) - r));
        dz[v] = to_z * (z * (splat(1.0f) - z));
        dp[v] = dr[v];
        dp[nv + v] = dz[v];
        dp[2 * nv + v] = dn[v] * r;
      }
      float* gx_row = d_gx + row * 3 * H;
      float* pre_row = d_pre + row * 3 * H;
      store_part(gx_row, &dr[0], hidden, nv);
      store_part(gx_row + H, &dz[0], hidden, nv);
      store_part(gx_row + 2 * H, &dn[0], hidden, nv);
      for (int part = 0; part < 3; ++part)
        store_part(pre_row + part * H, &dp[part * nv], hidden, nv);
      if (gate) d_gate[row] = lane_sum(gate_sum);
      if (t == 0) continue;
      // dL/dh_{t-1} += dh keep + d_pre W_hh, one accumulator set per gate
      for (int part = 0; part < 3; ++part) {
        vf* sum = &dp[part * nv];
        for (int v = 0; v < nv; ++v) sum[v] = splat(0.0f);
        for (int i = 0; i < hidden; ++i) {
          const int o = part * hidden + i;
          const vf* w_row = w.data() + static_cast<size_t>(o) * nv;
          const float s = pre_row[o];
          for (int v = 0; v < nv; ++v) sum[v] += s * w_row[v];
        }
      }
      float* previous = grad + (offsets[t - 1] + j) * H;
      for (int v = 0; v < nv; ++v) {
        const int count = lanes(hidden, v);
        const vf total = load(previous + v * VL, count) + dh[v] * keep[v]
                         + (dp[v] + dp[nv + v] + dp[2 * nv + v]);
        store(previous + v * VL, count, total);
      }
    }
  }
}

}  // namespace

extern "C" {

int ctrbench_scan_vector_width() { return VL; }

// Returns 0, or 2 when hidden < 1 or steps < 0.
int ctrbench_scan_forward(const float* gx, const float* w_hh, const float* b_hh,
                          const float* gate, const int64_t* sizes, int64_t steps, int hidden,
                          float* states, float* saved) {
  if (hidden < 1 || steps < 0) return 2;
  switch ((hidden + VL - 1) / VL) {
    case 1: forward_steps<1>(gx, w_hh, b_hh, gate, sizes, steps, hidden, states, saved); break;
    case 2: forward_steps<2>(gx, w_hh, b_hh, gate, sizes, steps, hidden, states, saved); break;
    case 4: forward_steps<4>(gx, w_hh, b_hh, gate, sizes, steps, hidden, states, saved); break;
    default: forward_steps<0>(gx, w_hh, b_hh, gate, sizes, steps, hidden, states, saved);
  }
  return 0;
}

// grad: our own copy of dL/dstates, updated in place. Returns 0, or 2 as above.
int ctrbench_scan_backward(const float* w_hh, const float* gate, const float* states,
                           const float* saved, const int64_t* sizes, int64_t steps, int hidden,
                           float* grad, float* d_gx, float* d_pre, float* d_gate) {
  if (hidden < 1 || steps < 0) return 2;
  switch ((hidden + VL - 1) / VL) {
    case 1:
      backward_steps<1>(w_hh, gate, states, saved, sizes, steps, hidden, grad, d_gx, d_pre,
                        d_gate);
      break;
    case 2:
      backward_steps<2>(w_hh, gate, states, saved, sizes, steps, hidden, grad, d_gx, d_pre,
                        d_gate);
      break;
    case 4:
      backward_steps<4>(w_hh, gate, states, saved, sizes, steps, hidden, grad, d_gx, d_pre,
                        d_gate);
      break;
    default:
      backward_steps<0>(w_hh, gate, states, saved, sizes, steps, hidden, grad, d_gx, d_pre,
                        d_gate);
  }
  return 0;
}

}  // extern "C"
