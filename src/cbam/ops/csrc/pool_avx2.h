// AVX2 + FMA row reductions for CPUs without AVX-512, for float, bfloat16 and (with F16C) half storage
// widened to float on load, included at the end of pool.h where its AVX-512 specialisations are not
// built. The narrow types share the float code: their generic loops widen value by value (half in
// integer ops, pool.h's widen), which made NCHW float16 the slowest tail on an AVX2 EPYC
// (benchmarks/tail_cost.py: 3.1x the plain tail's inference time where float32 took 1.9x). Four 8-lane
// accumulators (32 lanes) per row: gcc's vectorisation of the generic loops keeps one register per
// reduction, a chain bound by the add's latency (row_sum_max and first_equal were ~1/3 of a
// 16-channel 28x28 NCHW sample's grad-mode forward on an AVX2 EPYC, perf). row_sum_max and row_pool
// form sum and max in the same lanes and order, so avg and max do not depend on need_idx; ties and
// NaN behave as in the AVX-512 versions (strict >, a NaN after row[0] never replaces a max).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "avx2_common.h"

namespace cbam_cpu {
namespace avx2 {

// Rows shorter than this use one accumulator: on 7x7 maps the four registers' combining cost more
// than the chains they shorten.
constexpr int64_t kWide = 64;

// The values at positions [i, n) of a row (0 < n - i < 8) in some lanes, 0 in the others; lane j holds
// position base + j where valid. float by a masked load at i; the 16-bit types, which have no masked
// load, by the row's last 8 values with the lanes already seen masked off (n >= 8: a 7x7 row's last
// value through a buffer made bf16 7x7 maps 1.17x slower than gcc's loop), else through a zeroed buffer.
struct Tail8 {
  __m256 v, valid;
  int64_t base;
};
inline Tail8 tail8(const float* row, int64_t i, int64_t n) {
  const __m256i lane = lanes_below(n - i);
  return {_mm256_maskload_ps(row + i, lane), _mm256_castsi256_ps(lane), i};
}
template <typename T>
inline Tail8 tail8(const T* row, int64_t i, int64_t n) {
  if (n >= 8) {
    const __m256 valid = _mm256_castsi256_ps(_mm256_xor_si256(lanes_below(8 - (n - i)), _mm256_set1_epi32(-1)));
    return {_mm256_and_ps(load8(row + n - 8), valid), valid, n - 8};
  }
  T buf[8] = {};  // all-zero bits: 0.0 in both 16-bit types
  std::memcpy(buf, row + i, static_cast<size_t>(n - i) * sizeof(T));
  return {load8(buf), _mm256_castsi256_ps(lanes_below(n - i)), i};
}

// One row into 4 x 8 lanes (one where n < kWide): s += v, and m / k the lane's first maximum and its
// position (Idx), or m the lane's max. The max starts from row[0] in every lane, as the generic loop's
// does: a row whose first value is NaN has a NaN max. Lane j of accumulator q sees positions q * 8 + j
// (mod 32) in increasing order.
template <bool Idx, typename T>
inline void scan_row(const T* row, int64_t n, __m256* s, __m256* m, __m256i* k) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256 first = _mm256_set1_ps(widen<float>(row[0]));  // position 0 (k = 0) holds it
  for (int q = 0; q < 4; ++q) s[q] = _mm256_setzero_ps(), m[q] = first, k[q] = _mm256_setzero_si256();
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
      step(q, load8(row + i + 8 * q), all, Idx ? iota8(static_cast<int32_t>(i + 8 * q)) : __m256i());
  for (; i + 8 <= n; i += 8) step(0, load8(row + i), all, Idx ? iota8(static_cast<int32_t>(i)) : __m256i());
  if (i < n) {  // a lane's positions still increase: the tail's are past all it has seen
    const Tail8 t = tail8(row, i, n);
    step(0, t.v, t.valid, Idx ? iota8(static_cast<int32_t>(t.base)) : __m256i());
  }
}

inline float sum_of(const __m256* s, int64_t n) {
  return hsum8(n < kWide ? s[0] : _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3])));
}
inline float max_of(const __m256* m, int64_t n) {
  return hmax8(n < kWide ? m[0] : _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
}

// sum_i row[i] a[i], four independent FMA chains.
template <typename T>
inline float dot_row(const T* row, const float* a, int64_t n) {
  __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int q = 0; q < 4; ++q)
      s[q] = _mm256_fmadd_ps(load8(row + i + 8 * q), _mm256_loadu_ps(a + i + 8 * q), s[q]);
  for (; i + 8 <= n; i += 8) s[0] = _mm256_fmadd_ps(load8(row + i), _mm256_loadu_ps(a + i), s[0]);
  if (i < n) {
    const Tail8 t = tail8(row, i, n);
    const __m256 va = t.base == i ? _mm256_maskload_ps(a + i, lanes_below(n - i))
                                  : _mm256_and_ps(_mm256_loadu_ps(a + t.base), t.valid);
    s[1] = _mm256_fmadd_ps(t.v, va, s[1]);
  }
  return sum_of(s, kWide);  // all four registers
}

// spatial_block for 8 * V pixels: the sums, maxima and argmax channels stay in registers over all C
// channels. gcc's vectorisation of the generic loop loads and stores them per four channels, and
// turns the conditional max update into a masked store (vmaskmovps), which AMD cores run slowly.
// The same four-channel compare tree and the same sums as the generic loop, so the results agree.
template <int V, bool Idx, typename T>
inline void spatial_lanes(const T* x0, int64_t C, int64_t HW, const float* mc, float* s, float* m, int32_t* k) {
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
    const T* r = x0 + c * HW;
    const __m256 w0 = _mm256_set1_ps(mc[c]), w1 = _mm256_set1_ps(mc[c + 1]);
    const __m256 w2 = _mm256_set1_ps(mc[c + 2]), w3 = _mm256_set1_ps(mc[c + 3]);
    const __m256i c0 = _mm256_set1_epi32(static_cast<int32_t>(c)), c2 = _mm256_set1_epi32(static_cast<int32_t>(c + 2));
    for (int j = 0; j < V; ++j) {
      const T* q = r + 8 * j;
      const __m256 v0 = _mm256_mul_ps(load8(q), w0), v1 = _mm256_mul_ps(load8(q + HW), w1);
      const __m256 v2 = _mm256_mul_ps(load8(q + 2 * HW), w2);
      const __m256 v3 = _mm256_mul_ps(load8(q + 3 * HW), w3);
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
      const __m256 v = _mm256_mul_ps(load8(x0 + c * HW + 8 * j), w);
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

// The pool.h entry points for storage type T (float accumulation).
template <typename T>
inline void spatial_block(const T* x0, int64_t C, int64_t HW, int64_t len, const float* mc, bool need_idx, float* s,
                          float* m, int32_t* k) {
  auto blocks = [&](auto idx) {  // 16 pixels at a time, then 8; the rest (< 8) in the generic loop
    constexpr bool Idx = decltype(idx)::value;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) spatial_lanes<2, Idx>(x0 + i, C, HW, mc, s + i, m + i, k + i);
    if (i + 8 <= len) spatial_lanes<1, Idx>(x0 + i, C, HW, mc, s + i, m + i, k + i), i += 8;
    return i;
  };
  const int64_t i = need_idx ? blocks(std::true_type{}) : blocks(std::false_type{});
  if (i < len) spatial_block_generic(x0 + i, C, HW, len - i, mc, need_idx, s + i, m + i, k + i);
}

template <typename T>
inline void row_sum_max(const T* row, int64_t n, float* sum, float* mx) {
  __m256 s[4], m[4];
  __m256i k[4];
  scan_row<false>(row, n, s, m, k);
  *sum = sum_of(s, n);
  *mx = max_of(m, n);
}

// The row's first argmax is the lowest position among the lanes that hold the row maximum.
template <typename T>
inline void row_pool(const T* row, int64_t n, bool need_idx, float* avg, float* mx, int32_t* idx) {
  __m256 s[4], m[4];
  __m256i k[4];
  if (need_idx) scan_row<true>(row, n, s, m, k);
  else scan_row<false>(row, n, s, m, k);
  const float M = max_of(m, n);
  *avg = sum_of(s, n) / static_cast<float>(n);
  *mx = M;
  if (!need_idx) return;
  if (!(M > -std::numeric_limits<float>::infinity())) {  // rows of -inf / NaN only: no lane moved
    *idx = first_equal(row, n, M);
    return;
  }
  const __m256 Mv = _mm256_set1_ps(M);
  const __m256i none = _mm256_set1_epi32(std::numeric_limits<int32_t>::max());
  __m256i best = none;
  for (int q = 0; q < (n < kWide ? 1 : 4); ++q) {
    const __m256 eq = _mm256_cmp_ps(m[q], Mv, _CMP_EQ_OQ);
    best = _mm256_min_epi32(best, _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(none),
                                                                       _mm256_castsi256_ps(k[q]), eq)));
  }
  *idx = hmin8_epi32(best);
}

// grad_row (pool.h) for half, whose generic loop gcc leaves scalar (its widening has a branch there):
// half's NCHW backward reduce took 2x bfloat16's time (perf, a 16-channel 28x28 sample). bfloat16
// keeps gcc's vectorisation of the generic loop (this version measured no gain there, kernel_ab), and
// so does float (not tried: its generic loop has no widening to get in the way).
template <bool Tail, typename T>
inline float grad_row(const T* g, const T* o, const T* x, int64_t len, float wc, const float* ms, float* acc) {
  const __m256 w = _mm256_set1_ps(wc), zero = _mm256_setzero_ps();
  __m256 dot = zero;
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 gv = load8(g + i);
    if constexpr (Tail) gv = _mm256_and_ps(_mm256_cmp_ps(load8(o + i), zero, _CMP_GT_OQ), gv);
    const __m256 v = _mm256_mul_ps(gv, load8(x + i));
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(v, w, _mm256_loadu_ps(acc + i)));
    dot = _mm256_fmadd_ps(v, _mm256_loadu_ps(ms + i), dot);
  }
  if (i < len) {  // only the valid lanes of the tail chunk reach acc and the dot
    const Tail8 tg = tail8(g, i, len);
    __m256 gv = tg.v;
    if constexpr (Tail) gv = _mm256_and_ps(_mm256_cmp_ps(tail8(o, i, len).v, zero, _CMP_GT_OQ), gv);
    const __m256 v = _mm256_and_ps(_mm256_mul_ps(gv, tail8(x, i, len).v), tg.valid);
    const __m256i keep = _mm256_castps_si256(tg.valid);
    float* a = acc + tg.base;
    _mm256_maskstore_ps(a, keep, _mm256_fmadd_ps(v, w, _mm256_maskload_ps(a, keep)));
    dot = _mm256_fmadd_ps(v, _mm256_maskload_ps(ms + tg.base, keep), dot);
  }
  return hsum8(dot);
}

}  // namespace avx2

#define CBAM_AVX2_POOL(T)                                                                                        \
  CBAM_ROW_REDUCTIONS(avx2, T)                                                                                   \
  template <>                                                                                                    \
  inline void spatial_block<T, float>(const T* x0, int64_t C, int64_t HW, int64_t len, const float* mc,          \
                                      bool need_idx, float* s, float* m, int32_t* k) {                           \
    avx2::spatial_block(x0, C, HW, len, mc, need_idx, s, m, k);                                                  \
  }

CBAM_AVX2_POOL(float)
CBAM_AVX2_POOL(c10::BFloat16)
#if defined(__F16C__)  // avx2_common.h's half conversions
CBAM_AVX2_POOL(c10::Half)
CBAM_GRAD_ROW(avx2, c10::Half)
#endif
#undef CBAM_AVX2_POOL

}  // namespace cbam_cpu
