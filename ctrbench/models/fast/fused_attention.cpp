// Multi-head self-attention of each history's valid steps over themselves, fused per (row, head):
// no [heads, T, T] score, probability or gradient tensor is ever written to memory.
// Loaded through ctypes by ctrbench/models/fast/fused_attention.py, compiled on first use by
// ctrbench/native.py. Tested against
// ctrbench.models.sequence.MaskedSelfAttention.mix over the padded batch.
//
// Layout (float32, row-major, contiguous):
//   qkv    [N, 3D]   the packed valid steps; row r's steps are offsets[r] .. offsets[r + 1] - 1,
//                    the last dim is [q | k | v], each `heads` blocks of `head_dim`
//   out    [N, D]    softmax(scale q k^T) v, per head
//   stats  [N, h, 2] per query and head: the largest score m and 1 / sum_j exp(s_j - m)
//   grad   [N, D], grad_qkv [N, 3D]
// Empty rows (offsets[r] == offsets[r + 1]) have no query and no key.
//
// GCC vector extensions, VL floats per vector. The forward and the backward's dQ run VL queries
// at a time (lanes = queries, a loop over the row's keys); the backward's dK, dV run VL keys at a
// time (lanes = keys, a loop over the row's queries), recomputing the probabilities, so no
// horizontal reduction and no [T, T] buffer is needed. Lanes past a row's length compute
// finite values that are never stored. exp: native_vector.h.

#include <cstdint>
#include <vector>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

// lanes l < count of `column` (stride `stride`) from rows first .. first + count - 1 of src;
// the other lanes 0
inline vf gather(const float* src, int64_t first, int count, int64_t stride) {
  vf v = splat(0.0f);
  for (int l = 0; l < count; ++l) v[l] = src[(first + l) * stride];
  return v;
}

inline void scatter(float* dst, int64_t first, int count, int64_t stride, vf v) {
  for (int l = 0; l < count; ++l) dst[(first + l) * stride] = v[l];
}

constexpr int MAX_HEAD_DIM = 64;

// D > 0: the head width known at compile time (the per-width arrays live in registers);
// D = 0: head_dim at run time, at most MAX_HEAD_DIM
template <int D>
void forward_rows(const float* qkv, const int64_t* offsets, int64_t rows, int heads,
                  int head_dim, float scale, float* out, float* stats) {
  const int d = D > 0 ? D : head_dim, width = heads * d;
  const int64_t stride = 3 * static_cast<int64_t>(width);
  vf qt[D > 0 ? D : MAX_HEAD_DIM], acc[D > 0 ? D : MAX_HEAD_DIM];
  int64_t longest = 0;
  for (int64_t r = 0; r < rows; ++r)
    longest = offsets[r + 1] - offsets[r] > longest ? offsets[r + 1] - offsets[r] : longest;
  std::vector<vf> scores(longest);  // one query block's scores, key by key
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = offsets[r];
    const int length = static_cast<int>(offsets[r + 1] - start);
    for (int h = 0; h < heads; ++h) {
      const float* keys = qkv + start * stride + width + h * d;     // row j: keys + j * stride
      const float* values = keys + width;
      for (int i0 = 0; i0 < length; i0 += VL) {
        const int count = length - i0 < VL ? length - i0 : VL;
        for (int e = 0; e < d; ++e)
          qt[e] = gather(qkv + h * d + e, start + i0, count, stride) * scale;
        vf top = splat(-3.0e38f);
        for (int j = 0; j < length; ++j) {
          vf s = splat(0.0f);
          for (int e = 0; e < d; ++e) s += qt[e] * keys[j * stride + e];
          scores[j] = s;
          top = s > top ? s : top;
        }
        vf total = splat(0.0f);
        for (int e = 0; e < d; ++e) acc[e] = splat(0.0f);
        for (int j = 0; j < length; ++j) {
          vf p = vexp(scores[j] - top);
          total += p;
          for (int e = 0; e < d; ++e) acc[e] += p * values[j * stride + e];
        }
        vf inverse = splat(1.0f) / total;
        for (int e = 0; e < d; ++e)
          scatter(out + h * d + e, start + i0, count, width, acc[e] * inverse);
        scatter(stats + 2 * h, start + i0, count, 2 * heads, top);
        scatter(stats + 2 * h + 1, start + i0, count, 2 * heads, inverse);
      }
    }
  }
}

template <int D>
void backward_rows(const float* qkv, const float* out, const float* stats, const float* grad,
                   const int64_t* offsets, int64_t rows, int heads, int head_dim, float scale,
                   float* grad_qkv) {
  const int d = D > 0 ? D : head_dim, width = heads * d;
  const int64_t stride = 3 * static_cast<int64_t>(width);
  constexpr int slots = D > 0 ? D : MAX_HEAD_DIM;
  vf a[slots], b[slots], c[slots], e_acc[slots];
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = offsets[r];
    const int length = static_cast<int>(offsets[r + 1] - start);
    for (int h = 0; h < heads; ++h) {
      const float* queries = qkv + start * stride + h * d;  // row i: queries + i * stride
      const float* keys = queries + width;
      const float* values = keys + width;
      const float* grads = grad + start * width + h * d;    // row i: grads + i * width
      const float* outs = out + start * width + h * d;
      const float* stat = stats + start * 2 * heads + 2 * h;  // row i: stat + 2 i heads
      // dQ: lanes = queries; a = q * scale, b = dC, c = dQ
      for (int i0 = 0; i0 < length; i0 += VL) {
        const int count = length - i0 < VL ? length - i0 : VL;
        vf delta = splat(0.0f);  // rowsum(P * dP) = dC . C
        for (int e = 0; e < d; ++e) {
          a[e] = gather(queries + e, i0, count, stride) * scale;
          b[e] = gather(grads + e, i0, count, width);
          delta += b[e] * gather(outs + e, i0, count, width);
          c[e] = splat(0.0f);
        }
        const vf top = gather(stat, i0, count, 2 * heads);
        const vf inverse = gather(stat + 1, i0, count, 2 * heads);
        for (int j = 0; j < length; ++j) {
          vf s = splat(0.0f), dp = splat(0.0f);
          for (int e = 0; e < d; ++e) {
            s += a[e] * keys[j * stride + e];
            dp += b[e] * values[j * stride + e];
          }
          vf ds = vexp(s - top) * inverse * (dp - delta);
          for (int e = 0; e < d; ++e) c[e] += ds * keys[j * stride + e];
        }
        for (int e = 0; e < d; ++e)
          scatter(grad_qkv + start * stride + h * d + e, i0, count, stride, c[e] * scale);
      }
      // dK, dV: lanes = keys; a = k, b = v, c = dK, e_acc = dV
      for (int j0 = 0; j0 < length; j0 += VL) {
        const int count = length - j0 < VL ? length - j0 : VL;
        for (int e = 0; e < d; ++e) {
          a[e] = gather(keys + e, j0, count, stride);
          b[e] = gather(values + e, j0, count, stride);
          c[e] = splat(0.0f);
          e_acc[e] = splat(0.0f);
        }
        for (int i = 0; i < length; ++i) {
          const float* q = queries + i * stride;
          const float* dc = grads + i * width;
          const float* o = outs + i * width;
          float delta = 0.0f;
          for (int e = 0; e < d; ++e) delta += dc[e] * o[e];
          vf s = splat(0.0f), dp = splat(0.0f);
          for (int e = 0; e < d; ++e) {
            s += a[e] * (q[e] * scale);
            dp += b[e] * dc[e];
          }
          vf p = vexp(s - stat[2 * heads * i]) * stat[2 * heads * i + 1];
          vf ds = p * (dp - delta);
          for (int e = 0; e < d; ++e) {
            c[e] += ds * q[e];
            e_acc[e] += p * dc[e];
          }
        }
        for (int e = 0; e < d; ++e) {
          scatter(grad_qkv + start * stride + width + h * d + e, j0, count, stride,
                  c[e] * scale);
          scatter(grad_qkv + start * stride + 2 * width + h * d + e, j0, count, stride,
                  e_acc[e]);
        }
      }
    }
  }
}

}  // namespace

extern "C" {

int ctrbench_attention_vector_width() { return VL; }
int ctrbench_attention_max_head_dim() { return MAX_HEAD_DIM; }

// Returns 0, or 2 when head_dim > ctrbench_attention_max_head_dim().
int ctrbench_attention_forward(const float* qkv, const int64_t* offsets, int64_t rows, int heads,
                               int head_dim, float scale, float* out, float* stats) {
  if (head_dim < 1 || head_dim > MAX_HEAD_DIM) return 2;
  switch (head_dim) {
    case 4: forward_rows<4>(qkv, offsets, rows, heads, 4, scale, out, stats); break;
    case 8: forward_rows<8>(qkv, offsets, rows, heads, 8, scale, out, stats); break;
    case 16: forward_rows<16>(qkv, offsets, rows, heads, 16, scale, out, stats); break;
    default: forward_rows<0>(qkv, offsets, rows, heads, head_dim, scale, out, stats);
  }
  return 0;
}

// Writes every valid step's q, k and v slots of grad_qkv. Returns 0, or 2 as above.
int ctrbench_attention_backward(const float* qkv, const float* out, const float* stats,
                                const float* grad, const int64_t* offsets, int64_t rows,
                                int heads, int head_dim, float scale, float* grad_qkv) {
  if (head_dim < 1 || head_dim > MAX_HEAD_DIM) return 2;
  switch (head_dim) {
    case 4:
      backward_rows<4>(qkv, out, stats, grad, offsets, rows, heads, 4, scale, grad_qkv);
      break;
    case 8:
      backward_rows<8>(qkv, out, stats, grad, offsets, rows, heads, 8, scale, grad_qkv);
      break;
    case 16:
      backward_rows<16>(qkv, out, stats, grad, offsets, rows, heads, 16, scale, grad_qkv);
      break;
    default:
      backward_rows<0>(qkv, out, stats, grad, offsets, rows, heads, head_dim, scale, grad_qkv);
  }
  return 0;
}

}  // extern "C"
