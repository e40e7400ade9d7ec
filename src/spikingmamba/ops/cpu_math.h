// Math shared by the compiled CPU kernels (cpu_scan.cpp, cpu_decode.cpp); header-only.
#pragma once

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

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

}  // namespace spikingmamba
