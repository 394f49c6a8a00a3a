// Dropout with a counter-based keep mask: y = x * scale where element e is kept, 0 elsewhere,
// optionally added to a residual (y = base + that). The mask is a function of (seed, e) only, so
// the backward regenerates it instead of storing it. Loaded through ctypes by
// ctrbench/models/fast/dropout.py, compiled on first use by ctrbench/native.py.
//
// Generator: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers: as easy as 1, 2, 3";
// the counter-based generator of torch's CUDA dropout): a 128-bit counter and a 64-bit key (the
// seed) give four 32-bit words. Element e belongs to chunk c = e / 64 of 64 elements; lane
// l = e % 16 of the chunk runs the counter (16 c + l, 0, 0, 0) (its low word and high word hold
// the 64-bit block number), and word j = (e % 64) / 16 of that block decides element e: kept
// where word >= threshold (threshold = p * 2^32, so the keep probability is 1 - p up to 2^-32).
// Every (counter, word) pair serves one element, so the draws of one call are independent.
//
// GCC vector extensions of VL 32-bit lanes (native_vector.h); the 32 x 32 -> 64-bit products of
// a round are done as 64-bit lanes.

#include <cstdint>
#include <cstring>

#include "native_vector.h"

#if defined(__AVX512F__) && CTRBENCH_VL == 16
#include <immintrin.h>
#define CTRBENCH_PMULUDQ 1
#endif

namespace {

using namespace ctrbench_native;

typedef uint32_t vu __attribute__((vector_size(VL * sizeof(uint32_t))));
typedef uint64_t vu64 __attribute__((vector_size(VL * sizeof(uint64_t))));

constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // Philox4x32 multipliers
constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;  // Weyl increments of the key
constexpr int ROUNDS = 10;
constexpr int64_t CHUNK = 4 * VL;  // elements per vector of counters

// one round's 32 x 32 -> 64-bit product of every lane: (high, low) words
inline void multiply(uint32_t m, vu x, vu* high, vu* low) {
#ifdef CTRBENCH_PMULUDQ
  // vpmuludq on the even lanes and on the odd lanes shifted down: 2 products of 8 lanes
  __m512i xs, factor = _mm512_set1_epi32((int)m);
  std::memcpy(&xs, &x, sizeof(xs));
  __m512i even = _mm512_mul_epu32(xs, factor);
  __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(xs, 32), factor);
  __m512i hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  __m512i lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  std::memcpy(high, &hi, sizeof(hi));
  std::memcpy(low, &lo, sizeof(lo));
#else
  vu64 product = __builtin_convertvector(x, vu64) * (uint64_t)m;
  *high = __builtin_convertvector(product >> 32, vu);
  *low = __builtin_convertvector(product, vu);
#endif
}

constexpr int GROUPS = 8;  // independent counter vectors per pass (parallel dependency chains)

// Philox4x32-10 of the counters (c0[g], c1[g], 0, 0), lane by lane, under key (k0, k1):
// words[g][j] is word j of group g
inline void philox(const vu* c0, const vu* c1, uint32_t k0, uint32_t k1, vu (*words)[4]) {
  vu x0[GROUPS], x1[GROUPS], x2[GROUPS], x3[GROUPS];
  for (int g = 0; g < GROUPS; ++g) {
    x0[g] = c0[g];
    x1[g] = c1[g];
    x2[g] = vu{} + 0u;
    x3[g] = vu{} + 0u;
  }
  for (int round = 0; round < ROUNDS; ++round) {
    for (int g = 0; g < GROUPS; ++g) {
      vu hi0, lo0, hi1, lo1;
      multiply(M0, x0[g], &hi0, &lo0);
      multiply(M1, x2[g], &hi1, &lo1);
      x0[g] = hi1 ^ x1[g] ^ k0;
      x2[g] = hi0 ^ x3[g] ^ k1;
      x1[g] = lo1;
      x3[g] = lo0;
    }
    k0 += W0;
    k1 += W1;
  }
  for (int g = 0; g < GROUPS; ++g) {
    words[g][0] = x0[g];
    words[g][1] = x1[g];
    words[g][2] = x2[g];
    words[g][3] = x3[g];
  }
}

// the 16 block numbers of chunk `chunk`, as (low, high) words
inline void counters(int64_t chunk, vu* low, vu* high) {
  uint64_t first = (uint64_t)chunk * VL;
  for (int l = 0; l < VL; ++l) {
    uint64_t block = first + (uint64_t)l;
    (*low)[l] = (uint32_t)block;
    (*high)[l] = (uint32_t)(block >> 32);
  }
}

// y = (base or 0) + where(word >= threshold, x * scale, 0) over `count` <= VL elements
inline void apply(const float* x, const float* base, float* y, int count, vu word,
                  uint32_t threshold, float scale) {
  vf xs = splat(0.0f), bs = splat(0.0f);
  if (count == VL) {
    std::memcpy(&xs, x, sizeof(xs));
    if (base) std::memcpy(&bs, base, sizeof(bs));
  } else {
    for (int l = 0; l < count; ++l) {
      xs[l] = x[l];
      if (base) bs[l] = base[l];
    }
  }
  vi keep = (vi)(word >= threshold);
  vf out = bs + (keep ? xs * splat(scale) : splat(0.0f));
  if (count == VL) {
    std::memcpy(y, &out, sizeof(out));
  } else {
    for (int l = 0; l < count; ++l) y[l] = out[l];
  }
}

}  // namespace

extern "C" {

// y[e] = (base ? base[e] : 0) + (kept(seed, e) ? x[e] * scale : 0) for e < n; y may be x or base
int ctrbench_dropout(const float* x, const float* base, float* y, int64_t n, uint64_t seed,
                     uint32_t threshold, float scale) {
  if (n < 0) return 1;
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int64_t start = 0; start < n; start += GROUPS * CHUNK) {
    vu low[GROUPS], high[GROUPS], words[GROUPS][4];
    for (int g = 0; g < GROUPS; ++g) counters(start / CHUNK + g, &low[g], &high[g]);
    philox(low, high, k0, k1, words);
    for (int g = 0; g < GROUPS; ++g) {
      for (int j = 0; j < 4; ++j) {
        int64_t first = start + g * CHUNK + (int64_t)j * VL;
        if (first >= n) break;
        int count = n - first < VL ? (int)(n - first) : VL;
        apply(x + first, base ? base + first : nullptr, y + first, count, words[g][j],
              threshold, scale);
      }
    }
  }
  return 0;
}

// the four words of Philox4x32-10 for counter ctr[4] under key[2] (a check against published
// known-answer vectors)
int ctrbench_philox_words(const uint32_t* ctr, const uint32_t* key, uint32_t* out) {
  uint32_t x[4] = {ctr[0], ctr[1], ctr[2], ctr[3]}, k0 = key[0], k1 = key[1];
  for (int round = 0; round < ROUNDS; ++round) {
    uint64_t p0 = (uint64_t)M0 * x[0], p1 = (uint64_t)M1 * x[2];
    uint32_t y0 = (uint32_t)(p1 >> 32) ^ x[1] ^ k0, y2 = (uint32_t)(p0 >> 32) ^ x[3] ^ k1;
    x[0] = y0;
    x[1] = (uint32_t)p1;
    x[2] = y2;
    x[3] = (uint32_t)p0;
    k0 += W0;
    k1 += W1;
  }
  std::memcpy(out, x, sizeof(x));
  return 0;
}

}  // extern "C"
