// AVX-512 (F + BW + VL) versions of pool.h's reductions for float, bfloat16 and half storage, widened
// to float on load, included at the end of pool.h. Every loop runs 16-lane chunks and one masked tail
// chunk: gcc's vectorisation of the generic loops leaves a scalar tail and spills its reductions, which
// on the short rows of late ResNet stages cost as much as the row (float 7x7: 0.66 -> 0.15 ms for 16
// samples x 2048 rows; bfloat16 49-value rows were half of a 64-channel sample's forward, perf), and
// turns the conditional updates of spatial_block into masked stores per four channels.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <limits>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace cbam_cpu {
namespace avx512 {

// The first r lanes (all 16 for r >= 16).
inline __mmask16 lanes(int64_t r) { return r >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << r) - 1); }

// 16 values (the lanes of k; the others 0) widened to float.
inline __m512 load_row(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
inline __m512 load_row(const c10::BFloat16* p, __mmask16 k) {  // bf16 is the top half of a float
  const __m256i h = _mm256_maskz_loadu_epi16(k, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load_row(const c10::Half* p, __mmask16 k) {  // exact, as widen<float, Half>
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}

// The max starts from row[0] in every lane, as the generic loop's does: a row whose first value is NaN
// has a NaN max, and a row of one NaN too.
template <typename T>
inline void row_sum_max(const T* row, int64_t n, float* sum, float* mx) {
  __m512 s = _mm512_setzero_ps(), m = _mm512_set1_ps(widen<float>(row[0]));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {  // whole chunks: plain loads (masks cost ~10 % on long rows)
    const __m512 v = load_row(row + i, 0xFFFF);
    s = _mm512_add_ps(s, v);
    m = _mm512_max_ps(v, m);  // (v, m): a NaN in v leaves m, as the generic loop does
  }
  if (i < n) {
    const __mmask16 k = lanes(n - i);
    const __m512 v = load_row(row + i, k);
    s = _mm512_add_ps(s, v);
    m = _mm512_mask_max_ps(m, k, v, m);
  }
  *sum = _mm512_reduce_add_ps(s);
  *mx = _mm512_reduce_max_ps(m);
}

// With the argmax: each lane keeps the position of its first maximum (strict >, blended in registers),
// and the row's first argmax is the lowest such position among the lanes that hold the row maximum. Sum
// and max are formed exactly as row_sum_max forms them (same lanes, same order), so avg and max do not
// depend on need_idx. Replaces first_equal's second scan (pool.h), whose per-row reduction epilogue was ~40% of
// the 7x7 grad-mode forward (perf).
template <typename T>
inline void row_pool(const T* row, int64_t n, bool need_idx, float* avg, float* mx, int32_t* idx) {
  if (!need_idx) {
    float s, m;
    row_sum_max(row, n, &s, &m);
    *avg = s / static_cast<float>(n);
    *mx = m;
    return;
  }
  __m512 s = _mm512_setzero_ps(), m = _mm512_set1_ps(widen<float>(row[0]));  // k = 0: position 0 holds it
  __m512i k = _mm512_setzero_si512();
  __m512i pos = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i step = _mm512_set1_epi32(16);
  auto chunk = [&](__m512 v, __mmask16 valid) {
    s = _mm512_add_ps(s, v);
    const __mmask16 gt = _mm512_mask_cmp_ps_mask(valid, v, m, _CMP_GT_OQ);  // false for NaN, like max(v, m)
    m = _mm512_mask_mov_ps(m, gt, v);
    k = _mm512_mask_mov_epi32(k, gt, pos);
    pos = _mm512_add_epi32(pos, step);
  };
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) chunk(load_row(row + i, 0xFFFF), 0xFFFF);
  if (i < n) chunk(load_row(row + i, lanes(n - i)), lanes(n - i));
  const float M = _mm512_reduce_max_ps(m);
  *avg = _mm512_reduce_add_ps(s) / static_cast<float>(n);
  *mx = M;
  if (M != M) {  // a NaN first value: no lane moved, and position 0 holds the max (as first_equal finds)
    *idx = 0;
    return;
  }
  *idx = _mm512_mask_reduce_min_epi32(_mm512_cmp_ps_mask(m, _mm512_set1_ps(M), _CMP_EQ_OQ), k);
}

// row_pool of row[i] * scale[i] without writing the product out, for the channels_last per-pixel pooling
// over C >= 64 channels. Two sets of accumulators take alternate 16-lane chunks: with one, each chunk's
// compare and masked moves waited on the previous chunk's (about 5 cycles per 16 values on 1024-channel
// rows, perf). Sum and max do not depend on need_idx; the argmax is the lowest position holding the
// maximum among both sets' lanes, i.e. the row's first maximum.
template <typename T>
inline void row_pool_scaled(const T* row, const float* scale, int64_t n, bool need_idx, float* avg, float* mx,
                            int32_t* idx) {
  const __m512 first = _mm512_set1_ps(widen<float>(row[0]) * scale[0]);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, m0 = first, m1 = first;
  __m512i k0 = _mm512_setzero_si512(), k1 = k0;  // position 0 holds the start value
  __m512i pos = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i step = _mm512_set1_epi32(16);
  auto chunk = [&](int64_t i, __mmask16 valid, __m512& s, __m512& m, __m512i& k) {
    const __m512 v = _mm512_mul_ps(load_row(row + i, valid), _mm512_maskz_loadu_ps(valid, scale + i));
    s = _mm512_add_ps(s, v);
    const __mmask16 gt = _mm512_mask_cmp_ps_mask(valid, v, m, _CMP_GT_OQ);  // false for NaN, like max(v, m)
    m = _mm512_mask_mov_ps(m, gt, v);
    if (need_idx) k = _mm512_mask_mov_epi32(k, gt, pos);
    pos = _mm512_add_epi32(pos, step);
  };
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    chunk(i, 0xFFFF, s0, m0, k0);
    chunk(i + 16, 0xFFFF, s1, m1, k1);
  }
  if (i + 16 <= n) chunk(i, 0xFFFF, s0, m0, k0), i += 16;
  if (i < n) chunk(i, lanes(n - i), s1, m1, k1);
  const __m512 m = _mm512_max_ps(m0, m1);
  const float M = _mm512_reduce_max_ps(m);
  *avg = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / static_cast<float>(n);
  *mx = M;
  if (!need_idx) return;
  if (M != M) {  // a NaN first value: no lane moved, and position 0 holds the max (as first_equal finds)
    *idx = 0;
    return;
  }
  const __m512 Mv = _mm512_set1_ps(M);
  const __m512i big = _mm512_set1_epi32(std::numeric_limits<int32_t>::max());
  const __m512i c0 = _mm512_mask_mov_epi32(big, _mm512_cmp_ps_mask(m0, Mv, _CMP_EQ_OQ), k0);
  const __m512i c1 = _mm512_mask_mov_epi32(big, _mm512_cmp_ps_mask(m1, Mv, _CMP_EQ_OQ), k1);
  *idx = _mm512_reduce_min_epi32(_mm512_min_epi32(c0, c1));
}

// sum_i row[i] a[i]; two accumulators on long rows.
template <typename T>
inline float dot_row(const T* row, const float* a, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(load_row(row + i, 0xFFFF), _mm512_loadu_ps(a + i), s0);
    s1 = _mm512_fmadd_ps(load_row(row + i + 16, 0xFFFF), _mm512_loadu_ps(a + i + 16), s1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = lanes(n - i);
    s0 = _mm512_fmadd_ps(load_row(row + i, k), _mm512_maskz_loadu_ps(k, a + i), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

// spatial_block for 16 * V pixels (the last register's lanes limited by `tail`): the sums, maxima and
// argmax channels stay in registers over all C channels. The same four-channel compare tree and sums as
// spatial_block_generic, so the results agree with it.
template <int V, bool Idx, typename T>
inline void spatial_lanes(const T* x0, int64_t C, int64_t HW, const float* mc, float* s, float* m, int32_t* k,
                          __mmask16 tail) {
  __m512 S[V], M[V];
  __m512i K[V];
  __mmask16 L[V];
  for (int j = 0; j < V; ++j)
    S[j] = _mm512_setzero_ps(), M[j] = _mm512_set1_ps(-std::numeric_limits<float>::infinity()),
    K[j] = _mm512_setzero_si512(), L[j] = j == V - 1 ? tail : __mmask16(0xFFFF);
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    const T* r = x0 + c * HW;
    const __m512 w0 = _mm512_set1_ps(mc[c]), w1 = _mm512_set1_ps(mc[c + 1]);
    const __m512 w2 = _mm512_set1_ps(mc[c + 2]), w3 = _mm512_set1_ps(mc[c + 3]);
    const __m512i c0 = _mm512_set1_epi32(static_cast<int32_t>(c)), c1 = _mm512_set1_epi32(static_cast<int32_t>(c + 1));
    const __m512i c2 = _mm512_set1_epi32(static_cast<int32_t>(c + 2)), c3 = _mm512_set1_epi32(static_cast<int32_t>(c + 3));
    for (int j = 0; j < V; ++j) {
      const T* q = r + 16 * j;
      const __m512 v0 = _mm512_mul_ps(load_row(q, L[j]), w0), v1 = _mm512_mul_ps(load_row(q + HW, L[j]), w1);
      const __m512 v2 = _mm512_mul_ps(load_row(q + 2 * HW, L[j]), w2);
      const __m512 v3 = _mm512_mul_ps(load_row(q + 3 * HW, L[j]), w3);
      S[j] = _mm512_add_ps(S[j], _mm512_add_ps(_mm512_add_ps(v0, v1), _mm512_add_ps(v2, v3)));
      if constexpr (!Idx) {  // max_ps(a, b) is a > b ? a : b, the generic loop's select
        M[j] = _mm512_max_ps(_mm512_max_ps(_mm512_max_ps(v3, v2), _mm512_max_ps(v1, v0)), M[j]);
        continue;
      }
      const __mmask16 g01 = _mm512_cmp_ps_mask(v1, v0, _CMP_GT_OQ), g23 = _mm512_cmp_ps_mask(v3, v2, _CMP_GT_OQ);
      const __m512 a = _mm512_mask_mov_ps(v0, g01, v1), b = _mm512_mask_mov_ps(v2, g23, v3);
      const __mmask16 gab = _mm512_cmp_ps_mask(b, a, _CMP_GT_OQ);
      const __m512 v = _mm512_mask_mov_ps(a, gab, b);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, M[j], _CMP_GT_OQ);  // false for NaN: the max stays
      M[j] = _mm512_mask_mov_ps(M[j], gt, v);
      const __m512i ka = _mm512_mask_mov_epi32(c0, g01, c1), kb = _mm512_mask_mov_epi32(c2, g23, c3);
      K[j] = _mm512_mask_mov_epi32(K[j], gt, _mm512_mask_mov_epi32(ka, gab, kb));
    }
  }
  for (; c < C; ++c) {
    const __m512 w = _mm512_set1_ps(mc[c]);
    const __m512i ci = _mm512_set1_epi32(static_cast<int32_t>(c));
    for (int j = 0; j < V; ++j) {
      const __m512 v = _mm512_mul_ps(load_row(x0 + c * HW + 16 * j, L[j]), w);
      S[j] = _mm512_add_ps(S[j], v);
      const __mmask16 gt = _mm512_cmp_ps_mask(v, M[j], _CMP_GT_OQ);
      M[j] = _mm512_mask_mov_ps(M[j], gt, v);
      K[j] = _mm512_mask_mov_epi32(K[j], gt, ci);
    }
  }
  for (int j = 0; j < V; ++j) {
    _mm512_mask_storeu_ps(s + 16 * j, L[j], S[j]);
    _mm512_mask_storeu_ps(m + 16 * j, L[j], M[j]);
    _mm512_mask_storeu_epi32(k + 16 * j, L[j], K[j]);
  }
}

template <bool Idx, typename T>
inline void spatial_block(const T* x0, int64_t C, int64_t HW, int64_t len, const float* mc, float* s, float* m,
                          int32_t* k) {
  int64_t i = 0;
  for (; i + 32 <= len; i += 32) spatial_lanes<2, Idx>(x0 + i, C, HW, mc, s + i, m + i, k + i, 0xFFFF);
  for (; i < len; i += 16) spatial_lanes<1, Idx>(x0 + i, C, HW, mc, s + i, m + i, k + i, lanes(len - i));
}

}  // namespace avx512

namespace avx512 {
// grad_row (pool.h) with 16-lane chunks and a masked tail: gcc leaves the generic loop scalar for half
// storage (its widening has a branch there).
template <bool Tail, typename T>
inline float grad_row(const T* g, const T* o, const T* x, int64_t len, float wc, const float* ms, float* acc) {
  const __m512 w = _mm512_set1_ps(wc), zero = _mm512_setzero_ps();
  __m512 dot = _mm512_setzero_ps();
  auto chunk = [&](int64_t i, __mmask16 k) {
    __m512 gv = load_row(g + i, k);
    if constexpr (Tail) gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(load_row(o + i, k), zero, _CMP_GT_OQ), gv);
    const __m512 v = _mm512_mul_ps(gv, load_row(x + i, k));
    _mm512_mask_storeu_ps(acc + i, k, _mm512_fmadd_ps(v, w, _mm512_maskz_loadu_ps(k, acc + i)));
    dot = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(k, ms + i), dot);
  };
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) chunk(i, 0xFFFF);
  if (i < len) chunk(i, lanes(len - i));
  return _mm512_reduce_add_ps(dot);
}
}  // namespace avx512

#define CBAM_AVX512_POOL(T)                                                                                    \
  CBAM_ROW_REDUCTIONS(avx512, T)                                                                               \
  CBAM_GRAD_ROW(avx512, T)                                                                                     \
  template <>                                                                                                  \
  inline void row_pool_scaled<T, float>(const T* row, const float* scale, int64_t n, bool need_idx, float* avg, \
                                        float* mx, int32_t* idx, float*) {                                     \
    avx512::row_pool_scaled(row, scale, n, need_idx, avg, mx, idx);                                            \
  }
#define CBAM_AVX512_SPATIAL(T)                                                                                 \
  template <>                                                                                                  \
  inline void spatial_block<T, float>(const T* x0, int64_t C, int64_t HW, int64_t len, const float* mc,        \
                                      bool need_idx, float* s, float* m, int32_t* k) {                         \
    if (need_idx) avx512::spatial_block<true>(x0, C, HW, len, mc, s, m, k);                                    \
    else avx512::spatial_block<false>(x0, C, HW, len, mc, s, m, k);                                            \
  }
CBAM_AVX512_POOL(float)
CBAM_AVX512_POOL(c10::BFloat16)
CBAM_AVX512_POOL(c10::Half)
CBAM_AVX512_SPATIAL(float)
CBAM_AVX512_SPATIAL(c10::BFloat16)
CBAM_AVX512_SPATIAL(c10::Half)
#undef CBAM_AVX512_POOL
#undef CBAM_AVX512_SPATIAL

}  // namespace cbam_cpu
