// Helpers shared by the AVX2 kernels (pool_avx2.h, conv_avx2.h, nhwc_avx2.h, elementwise_avx2.h).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

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

// 8 values of storage type T widened to float.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {  // bf16 is the top half of a float
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// 8 floats stored as T: bfloat16 rounded to nearest even (NaN kept NaN) as pool.h's to_storage, half
// by F16C's round to nearest even, as c10::Half's conversion.
inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8(c10::BFloat16* p, __m256 v) {
#if defined(__AVX512BF16__) && defined(__AVX512VL__)  // the conversion instruction (nhwc_avx512.h's store16)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), (__m128i)_mm256_cvtneps_pbh(v));
  return;
#endif
  const __m256i u = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  // 32-bit lanes -> 16-bit: packus within 128-bit halves, then the halves' low quadwords side by side
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

#if defined(__F16C__)  // the half overloads need F16C, which the other AVX2 kernels do not ask for
inline __m256 load8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
#endif

}  // namespace avx2
}  // namespace cbam_cpu
