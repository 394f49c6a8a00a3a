// Vector math shared by the native kernels of this folder (fused_attention.cpp, native_scan.cpp):
// GCC vector extensions of VL floats, compiled for the building machine (-march=native, see
// ctrbench/native.py). exp is a Cephes-style polynomial after a reduction by ln 2 (within ~2 ulp
// of expf; clamped both ways: exactly 0 below -87.3, where expf is denormal, and finite above).

#pragma once

#include <cstdint>
#include <cstring>

#ifndef CTRBENCH_VL
#define CTRBENCH_VL 16
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

}  // namespace ctrbench_native
