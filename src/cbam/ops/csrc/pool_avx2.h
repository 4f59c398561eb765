// AVX2 + FMA float row reductions for CPUs without AVX-512, included at the end of pool.h where its
// AVX-512 specialisations are not built. Four 8-lane accumulators (32 lanes) per row: gcc's vectorisation of the generic
// loops keeps one register per reduction, a chain bound by the add's latency (row_sum_max and
// first_equal were ~1/3 of a 16-channel 28x28 NCHW sample's grad-mode forward on an AVX2 EPYC, perf).
// row_sum_max and row_pool form sum and max in the same lanes and order, so avg and max do not depend
// on need_idx; ties and NaN behave as in the AVX-512 versions (strict >, a NaN never replaces a max).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "avx2_common.h"

namespace cbam_cpu {
namespace avx2 {

// Rows shorter than this use one accumulator: on 7x7 maps the four registers' combining cost more
// than the chains they shorten.
constexpr int64_t kWide = 64;

// One row into 4 x 8 lanes (one where n < kWide): s += v, and m / k the lane's first maximum and its
// position (Idx), or m the lane's max. Lane j of accumulator q sees positions q * 8 + j (mod 32) in increasing order.
template <bool Idx>
inline void scan_row(const float* row, int64_t n, __m256* s, __m256* m, __m256i* k) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int q = 0; q < 4; ++q) s[q] = _mm256_setzero_ps(), m[q] = ninf, k[q] = _mm256_setzero_si256();
  auto step = [&](int q, __m256 v, __m256 valid, __m256i pos) {
    s[q] = _mm256_add_ps(s[q], v);
    if constexpr (Idx) {
      const __m256 gt = _mm256_and_ps(_mm256_cmp_ps(v, m[q], _CMP_GT_OQ), valid);  // false for NaN
      m[q] = _mm256_blendv_ps(m[q], v, gt);
      k[q] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(k[q]), _mm256_castsi256_ps(pos), gt));
    } else {
      m[q] = _mm256_max_ps(_mm256_blendv_ps(ninf, v, valid), m[q]);  // (v, m): a NaN in v leaves m
    }
  };
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int64_t i = 0;
  for (; n >= kWide && i + 32 <= n; i += 32)
    for (int q = 0; q < 4; ++q)
      step(q, _mm256_loadu_ps(row + i + 8 * q), all, Idx ? iota8(static_cast<int32_t>(i + 8 * q)) : __m256i());
  for (; i + 8 <= n; i += 8) step(0, _mm256_loadu_ps(row + i), all, Idx ? iota8(static_cast<int32_t>(i)) : __m256i());
  if (i < n) {
    const __m256i lane = lanes_below(n - i);
    step(0, _mm256_maskload_ps(row + i, lane), _mm256_castsi256_ps(lane), Idx ? iota8(static_cast<int32_t>(i)) : __m256i());
  }
}

inline float sum_of(const __m256* s, int64_t n) {
  return hsum8(n < kWide ? s[0] : _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
}
inline float max_of(const __m256* m, int64_t n) {
  return hmax8(n < kWide ? m[0] : _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
}

// sum_i row[i] a[i], four independent FMA chains.
inline float dot_row(const float* row, const float* a, int64_t n) {
  __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int q = 0; q < 4; ++q)
      s[q] = _mm256_fmadd_ps(_mm256_loadu_ps(row + i + 8 * q), _mm256_loadu_ps(a + i + 8 * q), s[q]);
  for (; i + 8 <= n; i += 8) s[0] = _mm256_fmadd_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(a + i), s[0]);
  if (i < n) {
    const __m256i lane = lanes_below(n - i);
    s[1] = _mm256_fmadd_ps(_mm256_maskload_ps(row + i, lane), _mm256_maskload_ps(a + i, lane), s[1]);
  }
  return sum_of(s, kWide);  // all four registers
}

// spatial_block for 8 * V pixels: the sums, maxima and argmax channels stay in registers over all C
// channels. gcc's vectorisation of the generic loop loads and stores them per four channels, and
// turns the conditional max update into a masked store (vmaskmovps), which AMD cores run slowly.
// The same four-channel compare tree and the same sums as the generic loop, so the results agree.
template <int V, bool Idx>
inline void spatial_lanes(const float* x0, int64_t C, int64_t HW, const float* mc, float* s, float* m, int32_t* k) {
  __m256 S[V], M[V];
  __m256i K[V];
  for (int j = 0; j < V; ++j)
    S[j] = _mm256_setzero_ps(), M[j] = _mm256_set1_ps(-std::numeric_limits<float>::infinity()),
    K[j] = _mm256_setzero_si256();
  auto pick = [](__m256 a, __m256 b, __m256 gt) { return _mm256_blendv_ps(a, b, gt); };
  auto pick_i = [](__m256i a, __m256i b, __m256 gt) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), gt));
  };
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    const float* r = x0 + c * HW;
    const __m256 w0 = _mm256_set1_ps(mc[c]), w1 = _mm256_set1_ps(mc[c + 1]);
    const __m256 w2 = _mm256_set1_ps(mc[c + 2]), w3 = _mm256_set1_ps(mc[c + 3]);
    const __m256i c0 = _mm256_set1_epi32(static_cast<int32_t>(c)), c2 = _mm256_set1_epi32(static_cast<int32_t>(c + 2));
    for (int j = 0; j < V; ++j) {
      const float* q = r + 8 * j;
      const __m256 v0 = _mm256_mul_ps(_mm256_loadu_ps(q), w0), v1 = _mm256_mul_ps(_mm256_loadu_ps(q + HW), w1);
      const __m256 v2 = _mm256_mul_ps(_mm256_loadu_ps(q + 2 * HW), w2);
      const __m256 v3 = _mm256_mul_ps(_mm256_loadu_ps(q + 3 * HW), w3);
      S[j] = _mm256_add_ps(S[j], _mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
      if constexpr (!Idx) {  // max_ps(a, b) is a > b ? a : b, the generic loop's select
        M[j] = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(v3, v2), _mm256_max_ps(v1, v0)), M[j]);
        continue;
      }
      const __m256 g01 = _mm256_cmp_ps(v1, v0, _CMP_GT_OQ), g23 = _mm256_cmp_ps(v3, v2, _CMP_GT_OQ);
      const __m256 a = pick(v0, v1, g01), b = pick(v2, v3, g23);
      const __m256 gab = _mm256_cmp_ps(b, a, _CMP_GT_OQ);
      const __m256 v = pick(a, b, gab);
      const __m256 gt = _mm256_cmp_ps(v, M[j], _CMP_GT_OQ);  // false for NaN: the max stays
      M[j] = pick(M[j], v, gt);
      // a true compare is -1 as an integer: c + 1 where v1 won, c + 3 where v3 won
      const __m256i ka = _mm256_sub_epi32(c0, _mm256_castps_si256(g01));
      const __m256i kb = _mm256_sub_epi32(c2, _mm256_castps_si256(g23));
      K[j] = pick_i(K[j], pick_i(ka, kb, gab), gt);
    }
  }
  for (; c < C; ++c) {
    const __m256 w = _mm256_set1_ps(mc[c]);
    const __m256i ci = _mm256_set1_epi32(static_cast<int32_t>(c));
    for (int j = 0; j < V; ++j) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x0 + c * HW + 8 * j), w);
      S[j] = _mm256_add_ps(S[j], v);
      const __m256 gt = _mm256_cmp_ps(v, M[j], _CMP_GT_OQ);
      M[j] = pick(M[j], v, gt);
      K[j] = pick_i(K[j], ci, gt);
    }
  }
  for (int j = 0; j < V; ++j) {
    _mm256_storeu_ps(s + 8 * j, S[j]);
    _mm256_storeu_ps(m + 8 * j, M[j]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(k + 8 * j), K[j]);
  }
}

}  // namespace avx2

template <>
inline void spatial_block<float, float>(const float* x0, int64_t C, int64_t HW, int64_t len, const float* mc,
                                        bool need_idx, float* s, float* m, int32_t* k) {
  auto blocks = [&](auto idx) {  // 16 pixels at a time, then 8; the rest (< 8) in the generic loop
    constexpr bool Idx = decltype(idx)::value;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) avx2::spatial_lanes<2, Idx>(x0 + i, C, HW, mc, s + i, m + i, k + i);
    if (i + 8 <= len) avx2::spatial_lanes<1, Idx>(x0 + i, C, HW, mc, s + i, m + i, k + i), i += 8;
    return i;
  };
  const int64_t i = need_idx ? blocks(std::true_type{}) : blocks(std::false_type{});
  if (i < len) spatial_block_generic(x0 + i, C, HW, len - i, mc, need_idx, s + i, m + i, k + i);
}

template <>
inline void row_sum_max<float, float>(const float* row, int64_t n, float* sum, float* mx) {
  __m256 s[4], m[4];
  __m256i k[4];
  avx2::scan_row<false>(row, n, s, m, k);
  *sum = avx2::sum_of(s, n);
  *mx = avx2::max_of(m, n);
}

// The row's first argmax is the lowest position among the lanes that hold the row maximum.
template <>
inline void row_pool<float, float>(const float* row, int64_t n, bool need_idx, float* avg, float* mx, int32_t* idx) {
  __m256 s[4], m[4];
  __m256i k[4];
  if (need_idx) avx2::scan_row<true>(row, n, s, m, k);
  else avx2::scan_row<false>(row, n, s, m, k);
  const float M = avx2::max_of(m, n);
  *avg = avx2::sum_of(s, n) / static_cast<float>(n);
  *mx = M;
  if (!need_idx) return;
  if (!(M > -std::numeric_limits<float>::infinity())) {  // rows of -inf / NaN only: no lane moved
    *idx = first_equal(row, n, M);
    return;
  }
  const __m256 Mv = _mm256_set1_ps(M);
  const __m256i none = _mm256_set1_epi32(std::numeric_limits<int32_t>::max());
  __m256i best = none;
  for (int q = 0; q < (n < avx2::kWide ? 1 : 4); ++q) {
    const __m256 eq = _mm256_cmp_ps(m[q], Mv, _CMP_EQ_OQ);
    best = _mm256_min_epi32(best, _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(none),
                                                                       _mm256_castsi256_ps(k[q]), eq)));
  }
  *idx = avx2::hmin8_epi32(best);
}

template <>
inline float dot_row<float, float>(const float* row, const float* a, int64_t n) { return avx2::dot_row(row, a, n); }

}  // namespace cbam_cpu
