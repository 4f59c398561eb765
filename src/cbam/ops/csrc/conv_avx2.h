// AVX2 + FMA float versions of the spatial gate's small dense parts (conv_small.h), for CPUs without
// AVX-512 (AMD Zen 1-3, Intel client cores). Same register blocking as the AVX-512 ones with 8-lane
// vectors: a 16-wide output block is two ymm registers, so kRows rows keep 8 independent accumulators
// (the generic loop's one dependency chain per block was ~1/3 of a 16-channel 28x28 sample's forward
// on an AVX2 EPYC, measured with perf). Included at the end of conv_small.h where __AVX512F__ is absent.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "avx2_common.h"

namespace cbam_cpu {
namespace sample {

// exp(x) as exp512 computes it (Cephes' expf polynomial on x = n ln2 + r) and with its clamp; 2^n, which
// AVX2 has no vscalefps for, is applied as 2^(n/2) * 2^(n - n/2), two factors with normal exponents, so
// e^x overflows to inf and underflows through the subnormals to 0 as expf does. NaN passes through.
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-104.0f), _mm256_min_ps(_mm256_set1_ps(89.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), bias = _mm256_set1_epi32(127);
  const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, n1), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}

template <>
inline void sigmoid_affine<float>(float* u, int64_t n, float sc, float sh) {
  const __m256 a = _mm256_set1_ps(-sc), b = _mm256_set1_ps(-sh), one = _mm256_set1_ps(1.0f);
  int64_t p = 0;
  for (; p + 8 <= n; p += 8) {
    const __m256 z = _mm256_fmadd_ps(a, _mm256_loadu_ps(u + p), b);  // -(sc u + sh)
    _mm256_storeu_ps(u + p, _mm256_div_ps(one, _mm256_add_ps(one, exp256(z))));
  }
  for (; p < n; ++p) u[p] = sigmoid(sc * u[p] + sh);
}

// kRows x 16 outputs per register block (kRows x Halves ymm accumulators): input row y0 + j of channel ci
// feeds output row y0 + r through the kernel row dy = j - r, so each load serves up to kRows rows. A block
// with at most 8 valid columns (7x7 maps) computes one half only.
template <int Halves, int K = 0>  // K > 0: the kernel size fixed at compile time (the dx loop unrolled)
inline void correlate_block(const float* P, int64_t ch, int64_t Hp, int64_t Wp, const float* w, int64_t k_,
                            int64_t y0, int64_t rows, int64_t x0, int64_t n, int64_t W, float bias, float* out) {
  const int64_t k = K > 0 ? K : k_;
  static_assert(kRows == 4 && kLanes == 16, "the register block below names four rows of two halves");
  __m256 a0 = _mm256_set1_ps(bias), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
  for (int64_t ci = 0; ci < ch; ++ci) {
    const float* wc = w + ci * k * k;
    for (int64_t j = 0; j < kRows + k - 1; ++j) {
      const float* src = P + (ci * Hp + y0 + j) * Wp + x0;
      const float* w0 = j < k ? wc + j * k : nullptr;
      const float* w1 = j >= 1 && j - 1 < k ? wc + (j - 1) * k : nullptr;
      const float* w2 = j >= 2 && j - 2 < k ? wc + (j - 2) * k : nullptr;
      const float* w3 = j >= 3 && j - 3 < k ? wc + (j - 3) * k : nullptr;
      for (int64_t dx = 0; dx < k; ++dx) {
        const __m256 lo = _mm256_loadu_ps(src + dx), hi = Halves == 2 ? _mm256_loadu_ps(src + dx + 8) : lo;
#define CBAM_ROW(r)                                                \
  if (w##r) {                                                      \
    const __m256 wv = _mm256_broadcast_ss(w##r + dx);              \
    a##r = _mm256_fmadd_ps(wv, lo, a##r);                          \
    if constexpr (Halves == 2) b##r = _mm256_fmadd_ps(wv, hi, b##r); \
  }
        CBAM_ROW(0) CBAM_ROW(1) CBAM_ROW(2) CBAM_ROW(3)
#undef CBAM_ROW
      }
    }
  }
  const __m256i mlo = avx2::lanes_below(n), mhi = avx2::lanes_below(n - 8);
  float* o = out + y0 * W + x0;
  const __m256 lo[4] = {a0, a1, a2, a3}, hi[4] = {b0, b1, b2, b3};
  for (int64_t r = 0; r < rows; ++r) {
    _mm256_maskstore_ps(o + r * W, mlo, lo[r]);
    if (Halves == 2) _mm256_maskstore_ps(o + r * W + 8, mhi, hi[r]);
  }
}

template <>
inline void correlate<float>(const float* P, int64_t ch, int64_t Hp, int64_t Wp, const float* w, int64_t k,
                             int64_t H, int64_t W, float bias, float* out) {
  for (int64_t y0 = 0; y0 < H; y0 += kRows) {
    const int64_t rows = std::min(kRows, H - y0);
    for (int64_t x0 = 0; x0 < W; x0 += kLanes) {
      const int64_t n = std::min(kLanes, W - x0);
      if (k == 7 && n > 8) correlate_block<2, 7>(P, ch, Hp, Wp, w, k, y0, rows, x0, n, W, bias, out);
      else if (k == 7) correlate_block<1, 7>(P, ch, Hp, Wp, w, k, y0, rows, x0, n, W, bias, out);
      else if (n > 8) correlate_block<2>(P, ch, Hp, Wp, w, k, y0, rows, x0, n, W, bias, out);
      else correlate_block<1>(P, ch, Hp, Wp, w, k, y0, rows, x0, n, W, bias, out);
    }
  }
}

struct Ymm {
  using reg = __m256;
  static constexpr int64_t width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(reg v) { return avx2::hsum8(v); }
};

template <>
inline void weight_grad<float>(const float* P, int64_t Hp, int64_t Wp, const float* d, int64_t H, int64_t Wb,
                               int64_t k, float* dw) {
  weight_grad_simd<Ymm>(P, Hp, Wp, d, H, Wb, k, dw);
}

}  // namespace sample
}  // namespace cbam_cpu
