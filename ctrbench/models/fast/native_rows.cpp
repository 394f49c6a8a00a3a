// Row updates of a dense embedding gradient [rows, dim] (float32, row-major) from a step's
// lookups: the lookups' gradients added at their rows, the touched-row L2, and zeroing the rows
// written before. Loaded through ctypes by ctrbench/models/fast/embedding_bank.py, compiled on
// first use by ctrbench/native.py.
//
// torch's index_add_ / index_fill_ cost 12-35 ns a row at these sizes (DIN: ~9k rows of 16 a
// step); a plain loop over the rows does the same additions in the same order.

#include <cstdint>

#include "native_vector.h"

namespace {

using namespace ctrbench_native;

constexpr int64_t AHEAD = 8;  // rows prefetched ahead of the one being updated

inline bool in_range(const int64_t* ids, int64_t n, int64_t rows) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= rows) return false;
  return true;
}

// dst[0..dim) += src[0..dim). Rows narrower than a vector (LR's dim 1) take the scalar loop:
// a partial vector there is built and split through the stack lane by lane, and the repeated
// ids make each row's next load wait on that store (238 -> ~8 us for LR's 9k ids of dim 1).
inline void add_row(float* dst, const float* src, int64_t dim) {
  if (dim < VL) {
    for (int64_t j = 0; j < dim; ++j) dst[j] += src[j];
    return;
  }
  for (int64_t j = 0; j < dim; j += VL) {
    const int c = (int)(dim - j < VL ? dim - j : VL);
    store(dst + j, c, load(dst + j, c) + load(src + j, c));
  }
}

}  // namespace

extern "C" {

// target[ids[i]] += values[i] for i in order (repeats summed in order); with two_l2 != 0, the
// touched-row L2 too: each distinct row r of ids (in order of its last occurrence) gets
// target[r] += (weight[r] * scale[r]) * two_l2 (scale null: weight[r] * two_l2) after its
// gradients and is written to distinct[(*count)++]; then target's row `padding` is zeroed.
// scratch: one int64 slot per row, contents ignored. Returns 2 for an id out of [0, rows).
int ctrbench_add_lookup_grads(float* target, const float* weight, const int64_t* ids,
                              const float* values, int64_t n, int64_t dim, int64_t rows,
                              float two_l2, const float* scale, int64_t* scratch,
                              int64_t* distinct, int64_t* count, int64_t padding) {
  if (n < 0 || dim <= 0 || padding < 0 || padding >= rows) return 1;
  if (!in_range(ids, n, rows)) return 2;
  const bool l2 = two_l2 != 0.0f;
  if (l2) {
    for (int64_t i = 0; i < n; ++i) {  // the last occurrence of each row wins
      if (i + AHEAD < n) __builtin_prefetch(scratch + ids[i + AHEAD], 1);
      scratch[ids[i]] = i;
    }
  }
  // a row's L2 term is added at its last occurrence, after all its lookups' gradients: the
  // order of a pass of the gradients followed by a pass of the L2 terms
  *count = 0;
  const bool prefetch = dim >= VL;
  for (int64_t i = 0; i < n; ++i) {
    if (prefetch && i + AHEAD < n) {
      const int64_t ahead = ids[i + AHEAD];
      __builtin_prefetch(target + ahead * dim, 1);
      if (l2) {
        __builtin_prefetch(weight + ahead * dim);
        __builtin_prefetch(scratch + ahead);
      }
    }
    const int64_t r = ids[i];
    float* dst = target + r * dim;
    add_row(dst, values + i * dim, dim);
    if (l2 && scratch[r] == i) {
      distinct[(*count)++] = r;
      const float* w = weight + r * dim;
      const float s = scale ? scale[r] : 1.0f;
      for (int64_t j = 0; j < dim; ++j) dst[j] += scale ? (w[j] * s) * two_l2 : w[j] * two_l2;
    }
  }
  for (int64_t j = 0; j < dim; ++j) target[padding * dim + j] = 0.0f;
  return 0;
}

// target[ids[i]] = 0 for every i.
int ctrbench_zero_rows(float* target, const int64_t* ids, int64_t n, int64_t dim, int64_t rows) {
  if (n < 0 || dim <= 0) return 1;
  if (!in_range(ids, n, rows)) return 2;
  if (dim < VL) {  // narrow rows: plain stores (see add_row)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < dim; ++j) target[ids[i] * dim + j] = 0.0f;
    return 0;
  }
  for (int64_t i = 0; i < n; ++i) {
    float* dst = target + ids[i] * dim;
    for (int64_t j = 0; j < dim; j += VL) {
      const int c = (int)(dim - j < VL ? dim - j : VL);
      store(dst + j, c, splat(0.0f));
    }
  }
  return 0;
}

}  // extern "C"
