// Helpers shared by the AVX2 kernels (pool_avx2.h, conv_avx2.h, nhwc_avx2.h).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace cbam_cpu {
namespace avx2 {

inline __m256i iota8(int32_t base) {
  return _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// All-ones in lanes l < r.
inline __m256i lanes_below(int64_t r) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(r)), iota8(0)); }

inline float hsum8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_add_ss(a, _mm_movehdup_ps(a)));
}
inline float hmax8(__m256 v) {
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  return _mm_cvtss_f32(_mm_max_ss(a, _mm_movehdup_ps(a)));
}
inline int32_t hmin8_epi32(__m256i v) {
  __m128i a = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  a = _mm_min_epi32(a, _mm_shuffle_epi32(a, 0x4E));
  a = _mm_min_epi32(a, _mm_shuffle_epi32(a, 0xB1));
  return _mm_cvtsi128_si32(a);
}

}  // namespace avx2
}  // namespace cbam_cpu
