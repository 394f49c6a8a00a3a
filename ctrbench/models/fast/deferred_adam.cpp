// Adam for an embedding table whose rows a step rarely touches, with every row's update applied,
// but late: a row's zero-gradient steps are applied when the row is next read (or at a flush),
// as one pass over the row in registers instead of one pass over the whole table per step.
// Loaded through ctypes by ctrbench/models/fast/deferred_adam.py, compiled on first use by
// ctrbench/native.py.
//
// Per row r, last[r] is the number of steps its values (p, m, v) include. One Adam step s with
// gradient g (torch's Adam, no weight decay):
//   m += (1 - b1) (g - m);  v = b2 v + (1 - b2) g^2;
//   p += -step_size[s] * (m / (sqrt(v) * inv_sqrt_bc2[s] + eps))
// with step_size[s] = lr_s / (1 - b1^s) and inv_sqrt_bc2[s] = 1 / sqrt(1 - b2^s) (the caller's
// tables, indexed by step): torch's single-tensor Adam, operation for operation, but for the
// bias correction of sqrt(v), a multiply instead of torch's divide (one divide less per value
// and step, whose cost bounds this loop; the denominator then differs by an ulp at most).
// With g = 0 it is what a dense Adam does to every untouched row at every step.
//
// Denormals are flushed to zero inside the calls (a moment decays to the denormal range after
// ~800 untouched steps, where x86 arithmetic can run ~100x slower); torch keeps them. An
// untouched row's m is set to zero once its decay flushes (|m| ~1.2e-37), where torch reaches
// zero ~150 steps later: differences below 1e-30 in the weights.

#include <cmath>
#include <cstdint>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

struct Flush {  // flush-to-zero and denormals-are-zero for the scope of one call
#if defined(__SSE__)
  unsigned saved = _mm_getcsr();
  Flush() { _mm_setcsr(saved | 0x8040); }
  ~Flush() { _mm_setcsr(saved); }
#endif
};

struct Table {
  float* p;
  float* m;
  float* v;
  int64_t* last;
  int64_t dim;
  const float* step_size;
  const float* inv_sqrt_bc2;
  float b1, b2, eps;
  float c1, c2;  // 1 - b1 and 1 - b2, rounded from double (in float, 1 - 0.999f is 1.3e-5 off)
};

inline bool all_zero(const float* x, int64_t n) {
  for (int64_t d = 0; d < n; ++d)
    if (x[d] != 0.0f) return false;
  return true;
}

inline bool all_below(const float* x, int64_t n, float bound) {
  for (int64_t d = 0; d < n; ++d)
    if (std::fabs(x[d]) >= bound) return false;
  return true;
}

constexpr float TINY = 1e-30f;  // far below any moment that moves a weight
constexpr int64_t ZERO_CHECK = 64;  // steps between checks whether m has decayed to exact zeros

// zero-gradient steps first .. upto of one row of D values (D = 0: t.dim), kept in local arrays
// across the steps (registers, for a fixed D). Once m is all zeros (it decays by b1 a step and
// denormals are flushed: after ~900 steps), a step leaves p and m as they are (p + -s * 0) and
// only multiplies v by b2, so the rest is that multiply alone (nothing for a row never touched,
// whose m and v are zero).
template <int D>
void catch_up_values(const Table& t, float* p, float* m, float* v, int64_t first, int64_t upto) {
  constexpr int CAP = D > 0 ? D : 1;
  const int64_t dim = D > 0 ? D : t.dim;
  const float c1 = t.c1, b2 = t.b2, eps = t.eps;
  float pr[CAP], mr[CAP], vr[CAP];
  float* P = D > 0 ? pr : p;
  float* M = D > 0 ? mr : m;
  float* V = D > 0 ? vr : v;
  if (D > 0)
    for (int64_t d = 0; d < dim; ++d) P[d] = p[d], M[d] = m[d], V[d] = v[d];
  int64_t s = first;
  while (s <= upto && !all_zero(M, dim)) {
    const int64_t until = s + ZERO_CHECK - 1 < upto ? s + ZERO_CHECK - 1 : upto;
    for (; s <= until; ++s) {
      const float size = t.step_size[s], inverse = t.inv_sqrt_bc2[s];
      for (int64_t d = 0; d < dim; ++d) {
        M[d] = M[d] + c1 * (0.0f - M[d]);
        V[d] *= b2;
        P[d] = P[d] + (-size) * (M[d] / (std::sqrt(V[d]) * inverse + eps));
      }
    }
    // the decay stalls near 1.2e-37 (c1 m flushed): zero, where torch takes ~150 more steps
    // through denormals to reach it (a difference below 1e-30 in p)
    if (all_below(M, dim, TINY))
      for (int64_t d = 0; d < dim; ++d) M[d] = 0.0f;
  }
  if (s <= upto && !all_zero(V, dim)) {
    for (; s <= upto; ++s)
      for (int64_t d = 0; d < dim; ++d) V[d] *= b2;
  }
  if (D > 0)
    for (int64_t d = 0; d < dim; ++d) p[d] = P[d], m[d] = M[d], v[d] = V[d];
}

// zero-gradient steps last[r] + 1 .. upto of row r
inline void catch_up_row(const Table& t, int64_t r, int64_t upto) {
  float* p = t.p + r * t.dim;
  float* m = t.m + r * t.dim;
  float* v = t.v + r * t.dim;
  const int64_t first = t.last[r] + 1;
  switch (t.dim) {  // the usual widths: 16 (an embedding), 17 (one more for LR's weight), 32
    case 16: catch_up_values<16>(t, p, m, v, first, upto); break;
    case 17: catch_up_values<17>(t, p, m, v, first, upto); break;
    case 32: catch_up_values<32>(t, p, m, v, first, upto); break;
    case 33: catch_up_values<33>(t, p, m, v, first, upto); break;
    default: catch_up_values<0>(t, p, m, v, first, upto);
  }
  if (upto > t.last[r]) t.last[r] = upto;
}

// step s of row r with gradient g
inline void step_row(const Table& t, int64_t r, int64_t s, const float* __restrict g) {
  float* __restrict p = t.p + r * t.dim;
  float* __restrict m = t.m + r * t.dim;
  float* __restrict v = t.v + r * t.dim;
  const float size = t.step_size[s], inverse = t.inv_sqrt_bc2[s];
  for (int64_t d = 0; d < t.dim; ++d) {
    m[d] = m[d] + t.c1 * (g[d] - m[d]);
    v[d] = t.b2 * v[d] + t.c2 * (g[d] * g[d]);
    p[d] = p[d] + (-size) * (m[d] / (std::sqrt(v[d]) * inverse + t.eps));
  }
  t.last[r] = s;
}

// f(r) for the rows ids[0..n) (every row 0..rows when n < 0); 2 for a row out of range
template <class F>
int for_rows(const int64_t* ids, int64_t n, int64_t rows, F&& f) {
  const bool all = n < 0;
  for (int64_t i = 0; i < (all ? rows : n); ++i) {
    const int64_t r = all ? i : ids[i];
    if (r < 0 || r >= rows) return 2;
    f(r);
  }
  return 0;
}

}  // namespace

extern "C" {

// Bring rows ids[0..n) (every row 0..rows when n < 0; ids is then ignored) up to step `upto`;
// ids may repeat.
int ctrbench_deferred_catch_up(float* p, float* m, float* v, int64_t* last, int64_t dim,
                               const float* step_size, const float* inv_sqrt_bc2, float b1,
                               float b2, float eps, float c1, float c2, const int64_t* ids,
                               int64_t n, int64_t rows, int64_t upto) {
  if (dim <= 0 || upto < 0) return 1;
  Flush flush;
  const Table t{p, m, v, last, dim, step_size, inv_sqrt_bc2, b1, b2, eps, c1, c2};
  return for_rows(ids, n, rows, [&](int64_t r) {
    if (last[r] < upto) catch_up_row(t, r, upto);
  });
}

// Step s of rows ids[0..n) (every row when n < 0) with their gradients grad[r]: each row first
// catches up to s - 1; a repeated id is stepped once.
int ctrbench_deferred_step(float* p, float* m, float* v, int64_t* last, int64_t dim,
                           const float* step_size, const float* inv_sqrt_bc2, float b1, float b2,
                           float eps, float c1, float c2, const float* grad, const int64_t* ids,
                           int64_t n, int64_t rows, int64_t s) {
  if (dim <= 0 || s < 1) return 1;
  Flush flush;
  const Table t{p, m, v, last, dim, step_size, inv_sqrt_bc2, b1, b2, eps, c1, c2};
  return for_rows(ids, n, rows, [&](int64_t r) {
    if (last[r] >= s) return;
    if (last[r] < s - 1) catch_up_row(t, r, s - 1);
    step_row(t, r, s, grad + r * dim);
  });
}

}  // extern "C"
