// Vector math shared by the native kernels of this folder (fused_attention.cpp, fused_gim.cpp,
// fused_fields.cpp, fused_dien.cpp, native_dropout.cpp, native_scan.cpp, native_dice.cpp,
// native_rows.cpp, native_layer_norm.cpp, native_relu.cpp, native_outer.cpp):
// GCC vector extensions of VL floats, compiled for the building machine (-march=native, see
// ctrbench/native.py). exp is a Cephes-style polynomial after a reduction by ln 2 (within ~2 ulp
// of expf; clamped both ways: exactly 0 below -87.3, where expf is denormal, and finite above).

#pragma once

#include <cstdint>
#include <cstring>

#ifndef CTRBENCH_VL
#define CTRBENCH_VL 16
#endif

// load_part / store_part: AVX-512 masked moves where the build has them
#if defined(__AVX512F__) && CTRBENCH_VL == 16
#include <immintrin.h>
#define CTRBENCH_MASKED 1
#else
#define CTRBENCH_MASKED 0
#endif

namespace ctrbench_native {

constexpr int VL = CTRBENCH_VL;
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

inline vf splat(float x) { return vf{} + x; }

inline vf vexp(vf x) {
  const vf lo = splat(-87.33654f), hi = splat(88.37626f);
  vi under = x < lo;
  x = under ? lo : x;
  x = x > hi ? hi : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  vf t = x * splat(1.44269504088896341f) + magic;
  vf n = t - magic;
  vf r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  vi bits = ((vi)t - (vi)magic + 127) << 23;  // 2^n
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return under ? splat(0.0f) : p * scale;
}

// `count` (<= VL) floats of src into a vector, the other lanes 0
inline vf load(const float* src, int count) {
  vf v = splat(0.0f);
  if (count == VL) {
    std::memcpy(&v, src, sizeof(v));
  } else {
    for (int l = 0; l < count; ++l) v[l] = src[l];
  }
  return v;
}

// the first `count` (<= VL) lanes of v into dst
inline void store(float* dst, int count, vf v) {
  if (count == VL) {
    std::memcpy(dst, &v, sizeof(v));
  } else {
    for (int l = 0; l < count; ++l) dst[l] = v[l];
  }
}

// load and store as one AVX-512 masked move each where the build has them (else the same as
// load and store): the same values, but the code around them compiles differently, which moved
// the rounding of fused_gim's backward by ~1e-7 when load and store themselves were changed; so
// a kernel opts in (native_dice.cpp: H = 40 is 2.5 vectors, 350 -> 155 us per Dice call)
inline vf load_part(const float* src, int count) {
#if CTRBENCH_MASKED
  if (count < VL) return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1u), src);
#endif
  return load(src, count);
}

inline void store_part(float* dst, int count, vf v) {
#if CTRBENCH_MASKED
  if (count < VL) {
    _mm512_mask_storeu_ps(dst, (__mmask16)((1u << count) - 1u), (__m512)v);
    return;
  }
#endif
  store(dst, count, v);
}

// the lanes of the (partial) vector that starts at float k0 of n: min(n - k0, VL)
inline int lanes_from(int k0, int n) { return n - k0 < VL ? n - k0 : VL; }

// dst[0:n] = s * a (+ t * b where b is not null), a vector at a time (partial moves at the end)
inline void scaled(float* dst, int n, float s, const float* a, float t, const float* b) {
  for (int k0 = 0; k0 < n; k0 += VL) {
    const int c = lanes_from(k0, n);
    vf out = s * load_part(a + k0, c);
    if (b != nullptr) out += t * load_part(b + k0, c);
    store_part(dst + k0, c, out);
  }
}

// dst[0:n] += s * a (+ t * b where b is not null)
inline void add_scaled(float* dst, int n, float s, const float* a, float t, const float* b) {
  for (int k0 = 0; k0 < n; k0 += VL) {
    const int c = lanes_from(k0, n);
    vf out = load_part(dst + k0, c) + s * load_part(a + k0, c);
    if (b != nullptr) out += t * load_part(b + k0, c);
    store_part(dst + k0, c, out);
  }
}

// the sum of v's lanes, halving in registers (16 lanes; any other VL through memory)
inline float lane_sum(vf v) {
#if CTRBENCH_VL == 16 && (defined(__clang__) || __GNUC__ >= 12)
  typedef float v8 __attribute__((vector_size(8 * sizeof(float))));
  typedef float v4 __attribute__((vector_size(4 * sizeof(float))));
  v8 eight = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
             __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 four = __builtin_shufflevector(eight, eight, 0, 1, 2, 3) +
            __builtin_shufflevector(eight, eight, 4, 5, 6, 7);
  return (four[0] + four[2]) + (four[1] + four[3]);
#else
  float half[VL];
  std::memcpy(half, &v, sizeof(v));
  for (int width = VL / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) half[l] += half[l + width];
  return half[0];
#endif
}

}  // namespace ctrbench_native
