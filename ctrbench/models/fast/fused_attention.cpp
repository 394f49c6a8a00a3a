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
// GCC vector extensions, VL floats per vector. Two layouts of the lanes, the same arithmetic:
// - head lanes (forward_lanes, backward_lanes; the (head_dim, heads) pairs CTRBENCH_HEAD_LANES
//   lists, MIAN's 8 x 4 among them): a lane is a (step, head) pair, VL / heads steps per vector;
// - per head (forward_rows, backward_rows; every other pair): a lane is a step, VL steps per
//   vector, one head at a time.
// The forward runs a vector of queries at a time (a loop over the row's keys). The per-head
// backward makes two such passes: dQ by queries, then dK, dV a vector of keys at a time (a loop
// over the row's queries), recomputing the probabilities. The head-lane backward makes one pass
// by queries: each probability once, each key's dK, dV accumulated in the lanes of the query
// block and summed over its steps at the end (1.2-1.3x faster than two passes here). No [T, T]
// buffer is written. Lanes past a row's length compute finite values that are never stored.
// exp: native_vector.h.

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

// the most steps of any row
inline int64_t longest_row(const int64_t* offsets, int64_t rows) {
  int64_t longest = 0;
  for (int64_t r = 0; r < rows; ++r)
    longest = offsets[r + 1] - offsets[r] > longest ? offsets[r + 1] - offsets[r] : longest;
  return longest;
}

// One vector of queries q[0 .. d-1] (scaled) against a row's `length` keys, both layouts:
// key(j, e) and value(j, e) give element e of the j-th key and value (a vector, or a float every
// lane shares). scores: room for `length` vectors. Returns the largest score; acc[e] gets
// sum_j p_j value(j, e) and total sum_j p_j, with p_j = exp(s_j - top).
template <class Key, class Value>
inline vf softmax_pool(const vf* q, int d, int length, Key key, Value value, vf* scores,
                       vf* acc, vf& total) {
  vf top = splat(-3.0e38f);
  for (int j = 0; j < length; ++j) {
    vf s = splat(0.0f);
    for (int e = 0; e < d; ++e) s += q[e] * key(j, e);
    scores[j] = s;
    top = s > top ? s : top;
  }
  total = splat(0.0f);
  for (int e = 0; e < d; ++e) acc[e] = splat(0.0f);
  for (int j = 0; j < length; ++j) {
    vf p = vexp(scores[j] - top);
    total += p;
    for (int e = 0; e < d; ++e) acc[e] += p * value(j, e);
  }
  return top;
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
  const int64_t longest = longest_row(offsets, rows);
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
        vf total;
        const vf top = softmax_pool(
            qt, d, length, [&](int j, int e) { return keys[j * stride + e]; },
            [&](int j, int e) { return values[j * stride + e]; }, scores.data(), acc, total);
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


// ---- Head lanes: lanes = (step, head), lane l = p * H + h, P = VL / H steps per vector.
// Lanes = queries (above) leave most lanes idle on short rows: a row of 5 steps fills 5 of 16
// lanes per head, and one of 17 needs two vectors per head. With the heads in the lanes a row
// of L steps takes ceil(L / P) vectors for all heads at once (MIAN: 8 heads of width 4, P = 2).
// Each step's q, k, v (W = D * H floats) is spread once per row into D vectors whose lane
// p * H + h holds x[h * D + e] (the same for every p); a block of P steps takes each step's
// lanes from its own spread vectors. Every lane computes what the per-head kernel computes for
// its (query, head) in the same order, so the values are the same (stats: the same layout).

inline vi lane_index() {
  vi v;
  for (int l = 0; l < VL; ++l) v[l] = l;
  return v;
}

// The spread vectors of one step's W = D * H floats x: out[e], lane p * H + h = x[h * D + e].
template <int D, int H>
inline void spread(const float* x, vf* out) {
  constexpr int W = D * H;
  static_assert(W <= VL || W == 2 * VL, "one step is at most two vectors");
  vf low = load(x, W < VL ? W : VL), high = low;
  if constexpr (W == 2 * VL) std::memcpy(&high, x + VL, sizeof(vf));
  const vi head = lane_index() % H;
  for (int e = 0; e < D; ++e) out[e] = __builtin_shuffle(low, high, head * D + e);
}

// A block of P steps: lane p * H + h from the p-th step's spread vector; `spread` points to the
// block's first step, `per_step` vectors per step, element `e`.
template <int H>
inline vf block_lanes(const vf* spread, int per_step, int e) {
  constexpr int P = VL / H;
  const vi step = lane_index() / H;
  vf v = spread[e];
  for (int p = 1; p < P; ++p) v = step == p ? spread[p * per_step + e] : v;
  return v;
}

// Lanes h (< H) of the sum over the P steps of v's lanes p * H + h (the other lanes: partial
// sums, never stored)
template <int H>
inline vf fold_steps(vf v) {
  for (int width = VL / 2; width >= H; width /= 2) {
    vi shifted = (lane_index() + width) % VL;
    v += __builtin_shuffle(v, shifted);
  }
  return v;
}

// Lane p * H + h of v[e] for the steps of a block: dst + p * row_stride + h * D + e, for the
// first `count` steps.
template <int D, int H>
inline void store_block(float* dst, int64_t row_stride, int count, const vf* v) {
  for (int p = 0; p < count; ++p)
    for (int h = 0; h < H; ++h)
      for (int e = 0; e < D; ++e) dst[p * row_stride + h * D + e] = v[e][p * H + h];
}

template <int D, int H>
constexpr bool head_lanes_fit() {
  return VL % H == 0 && (D * H <= VL || D * H == 2 * VL);
}

template <int D, int H>
void forward_lanes(const float* qkv, const int64_t* offsets, int64_t rows, float scale,
                   float* out, float* stats) {
  constexpr int W = D * H, P = VL / H;
  constexpr int64_t stride = 3 * W;
  const int64_t longest = longest_row(offsets, rows);
  const int64_t padded = (longest + P - 1) / P * P;
  std::vector<vf> qs(padded * D), ks(padded * D), vs(padded * D), scores(longest);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = offsets[r];
    const int length = static_cast<int>(offsets[r + 1] - start);
    const int blocks = (length + P - 1) / P;
    for (int i = 0; i < length; ++i) {
      const float* x = qkv + (start + i) * stride;
      spread<D, H>(x, &qs[i * D]);
      for (int e = 0; e < D; ++e) qs[i * D + e] *= scale;
      spread<D, H>(x + W, &ks[i * D]);
      spread<D, H>(x + 2 * W, &vs[i * D]);
    }
    for (int i = length; i < blocks * P; ++i)
      for (int e = 0; e < D; ++e) qs[i * D + e] = splat(0.0f);
    for (int b = 0; b < blocks; ++b) {
      vf q[D], acc[D];
      for (int e = 0; e < D; ++e) q[e] = block_lanes<H>(&qs[b * P * D], D, e);
      vf total;
      const vf top = softmax_pool(
          q, D, length, [&](int j, int e) { return ks[j * D + e]; },
          [&](int j, int e) { return vs[j * D + e]; }, scores.data(), acc, total);
      const vf inverse = splat(1.0f) / total;
      for (int e = 0; e < D; ++e) acc[e] *= inverse;
      const int count = length - b * P < P ? length - b * P : P;
      const int64_t first = start + b * P;
      store_block<D, H>(out + first * W, W, count, acc);
      const vf stat[2] = {top, inverse};
      store_block<2, H>(stats + first * 2 * H, 2 * H, count, stat);  // [step][H][top, inverse]
    }
  }
}


template <int D, int H>
void backward_lanes(const float* qkv, const float* out, const float* stats, const float* grad,
                    const int64_t* offsets, int64_t rows, float scale, float* grad_qkv) {
  constexpr int W = D * H, P = VL / H;
  constexpr int64_t stride = 3 * W;
  const int64_t longest = longest_row(offsets, rows);
  const int64_t padded = (longest + P - 1) / P * P;
  // per step: q * scale, q, k, v, dC (D vectors each); top, inverse, delta = dC . C (one each)
  std::vector<vf> qs(padded * D), qu(padded * D), ks(padded * D), vs(padded * D),
      gs(padded * D), tops(padded), inverses(padded), deltas(padded), dks(longest * D),
      dvs(longest * D);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t start = offsets[r];
    const int length = static_cast<int>(offsets[r + 1] - start);
    const int blocks = (length + P - 1) / P;
    for (int i = 0; i < length; ++i) {
      const float* x = qkv + (start + i) * stride;
      spread<D, H>(x, &qu[i * D]);
      for (int e = 0; e < D; ++e) qs[i * D + e] = qu[i * D + e] * scale;
      spread<D, H>(x + W, &ks[i * D]);
      spread<D, H>(x + 2 * W, &vs[i * D]);
      spread<D, H>(grad + (start + i) * W, &gs[i * D]);
      vf outs[D], stat[2];
      spread<D, H>(out + (start + i) * W, outs);
      vf delta = splat(0.0f);
      for (int e = 0; e < D; ++e) delta += gs[i * D + e] * outs[e];
      deltas[i] = delta;
      spread<2, H>(stats + (start + i) * 2 * H, stat);
      tops[i] = stat[0];
      inverses[i] = stat[1];
    }
    for (int i = length; i < blocks * P; ++i) {
      for (int e = 0; e < D; ++e)
        qs[i * D + e] = qu[i * D + e] = ks[i * D + e] = vs[i * D + e] = gs[i * D + e] =
            splat(0.0f);
      tops[i] = inverses[i] = deltas[i] = splat(0.0f);
    }
    float* grad_rows = grad_qkv + start * stride;
    // one pass over (query block, key): dQ in the block's lanes; each key's dK, dV in lanes
    // (query, head) of the block, summed over the block's queries at the end
    for (int j = 0; j < length * D; ++j) dks[j] = dvs[j] = splat(0.0f);
    for (int b = 0; b < blocks; ++b) {
      vf a[D], q[D], g[D], c[D];
      for (int e = 0; e < D; ++e) {
        a[e] = block_lanes<H>(&qs[b * P * D], D, e);
        q[e] = block_lanes<H>(&qu[b * P * D], D, e);
        g[e] = block_lanes<H>(&gs[b * P * D], D, e);
        c[e] = splat(0.0f);
      }
      const vf top = block_lanes<H>(&tops[b * P], 1, 0);
      const vf inverse = block_lanes<H>(&inverses[b * P], 1, 0);
      const vf delta = block_lanes<H>(&deltas[b * P], 1, 0);
      for (int j = 0; j < length; ++j) {
        vf s = splat(0.0f), dp = splat(0.0f);
        for (int e = 0; e < D; ++e) {
          s += a[e] * ks[j * D + e];
          dp += g[e] * vs[j * D + e];
        }
        const vf p = vexp(s - top) * inverse;
        const vf ds = p * (dp - delta);
        for (int e = 0; e < D; ++e) {
          c[e] += ds * ks[j * D + e];
          dks[j * D + e] += ds * q[e];
          dvs[j * D + e] += p * g[e];
        }
      }
      for (int e = 0; e < D; ++e) c[e] *= scale;
      const int count = length - b * P < P ? length - b * P : P;
      store_block<D, H>(grad_rows + b * P * stride, stride, count, c);
    }
    for (int j = 0; j < length; ++j) {
      vf dk[D], dv[D];
      for (int e = 0; e < D; ++e) {
        dk[e] = fold_steps<H>(dks[j * D + e]) * scale;
        dv[e] = fold_steps<H>(dvs[j * D + e]);
      }
      store_block<D, H>(grad_rows + j * stride + W, stride, 1, dk);
      store_block<D, H>(grad_rows + j * stride + 2 * W, stride, 1, dv);
    }
  }
}


// The head-lane kernels for the (head_dim, heads) pairs they are built for (MIAN's 8 heads of
// width 4 among them); false: the caller runs the per-head kernels.
#define CTRBENCH_HEAD_LANES(X) X(2, 8) X(4, 8) X(8, 4) X(4, 4) X(8, 2) X(16, 2)

bool forward_by_heads(const float* qkv, const int64_t* offsets, int64_t rows, int heads,
                      int head_dim, float scale, float* out, float* stats) {
#define CTRBENCH_CASE(D, H)                                           \
  if constexpr (head_lanes_fit<D, H>()) {                             \
    if (head_dim == D && heads == H) {                                \
      forward_lanes<D, H>(qkv, offsets, rows, scale, out, stats);     \
      return true;                                                    \
    }                                                                 \
  }
  CTRBENCH_HEAD_LANES(CTRBENCH_CASE)
#undef CTRBENCH_CASE
  return false;
}

bool backward_by_heads(const float* qkv, const float* out, const float* stats,
                       const float* grad, const int64_t* offsets, int64_t rows, int heads,
                       int head_dim, float scale, float* grad_qkv) {
#define CTRBENCH_CASE(D, H)                                                           \
  if constexpr (head_lanes_fit<D, H>()) {                                             \
    if (head_dim == D && heads == H) {                                                \
      backward_lanes<D, H>(qkv, out, stats, grad, offsets, rows, scale, grad_qkv);    \
      return true;                                                                    \
    }                                                                                 \
  }
  CTRBENCH_HEAD_LANES(CTRBENCH_CASE)
#undef CTRBENCH_CASE
  return false;
}

}  // namespace

extern "C" {

int ctrbench_attention_vector_width() { return VL; }
int ctrbench_attention_max_head_dim() { return MAX_HEAD_DIM; }

// Returns 0, or 2 when head_dim > ctrbench_attention_max_head_dim(). head_lanes = 0: the
// per-head kernels whatever the pair (for comparisons); the backward must be given the same.
int ctrbench_attention_forward(const float* qkv, const int64_t* offsets, int64_t rows, int heads,
                               int head_dim, float scale, float* out, float* stats,
                               int head_lanes) {
  if (head_dim < 1 || head_dim > MAX_HEAD_DIM) return 2;
  if (head_lanes && forward_by_heads(qkv, offsets, rows, heads, head_dim, scale, out, stats))
    return 0;
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
                                int heads, int head_dim, float scale, float* grad_qkv,
                                int head_lanes) {
  if (head_dim < 1 || head_dim > MAX_HEAD_DIM) return 2;
  if (head_lanes &&
      backward_by_heads(qkv, out, stats, grad, offsets, rows, heads, head_dim, scale, grad_qkv))
    return 0;
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
