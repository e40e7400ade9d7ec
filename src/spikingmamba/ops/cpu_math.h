// Math shared by the compiled CPU kernels (cpu_scan.cpp, cpu_decode.cpp, cpu_losses.cpp); header-only.
#pragma once

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace spikingmamba {

// Decaying states reach subnormal floats, which are slow on x86: flush them to zero in this thread
// while a kernel runs, and restore the caller's mode afterwards.
#if defined(__SSE__)
struct FlushDenormals {
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {};
#endif

// exp(arg) for float, inlined into SIMD loops (glibc's vector expf is a call with its own range
// checks), arg clamped to [-87, 88] (below: under the smallest normal number, i.e. 0 after
// flushing; above: overflow). arg = (i + f) ln2, |f| <= 1/2; exp(f ln2) by its Taylor series to
// degree 6 (relative error < 1e-6, checked against torch.exp in tests/test_scan.py), then 2^i
// added to the exponent bits.
inline float exp_approx(float arg) {
  arg = arg < -87.f ? -87.f : (arg > 88.f ? 88.f : arg);
  const float i = std::nearbyint(arg * 1.44269504088896341f);
  const float f = arg - i * 0.693145751953125f - i * 1.428606765330187045e-06f;
  const float p = 1.f + f * (1.f + f * (0.5f + f * (1.f / 6 + f * (1.f / 24 + f * (1.f / 120 + f * (1.f / 720))))));
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(i) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// sigmoid(v) = 1 / (1 + exp(-v)) through exp_approx (inlined into SIMD loops).
inline float sigmoid_approx(float v) { return 1.f / (1.f + exp_approx(-v)); }

// softplus(v) = max(v, 0) + log1p(exp(-|v|)), log1p(u) = 2 atanh(u / (2 + u)) by its series
// (u in (0, 1], t <= 1/3: eight terms leave an error under 1e-9); equals torch's threshold-20 form
// to float rounding. Inlined into SIMD loops (no call of a vector log1p and exp).
inline float softplus_approx(float v) {
  const float u = exp_approx(-std::fabs(v));
  const float t = u / (2.f + u), t2 = t * t;
  const float s = 1.f + t2 * (1.f / 3 + t2 * (1.f / 5 + t2 * (1.f / 7 + t2 * (1.f / 9 + t2 * (1.f / 11 +
                  t2 * (1.f / 13 + t2 * (1.f / 15)))))));
  return std::max(v, 0.f) + 2.f * t * s;
}

}  // namespace spikingmamba
