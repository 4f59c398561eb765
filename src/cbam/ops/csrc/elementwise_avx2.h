// The element-wise passes of the per-sample kernels in 8-lane vectors: y = x * mc * ms (apply, with the
// optional block tail) and the input gradient, in both layouts. AVX2 + FMA + F16C builds without
// AVX-512 take them for float, bfloat16 and half; AVX-512 builds for half, whose generic loops store
// through c10's one-value F16C conversion and ran 3-5x slower than these on a Zen 5 EPYC, and for
// bfloat16 where AVX512-BF16 has a conversion instruction (float, and bfloat16 without it, vectorise
// 16 lanes wide there). Storage is converted 8 values at a time (avx2_common.h). Each function
// computes the generic loop's expression (layout.h).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "avx2_common.h"
#include "pool.h"

namespace cbam_cpu {
namespace sample {

using avx2::load8;
using avx2::store8;

// Storage types with float accumulation that these functions take on this build.
template <typename T, typename A>
constexpr bool kVecElementwise = std::is_same_v<A, float> &&
#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512VL__)
    (std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>);
#elif defined(__AVX512F__)
    std::is_same_v<T, c10::Half>;
#else
    (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>);
#endif

// ---- channels_last: a pixel's row of C channels (C a multiple of 8) ----

// y = x * mc * ms per pixel row of C channels (a multiple of 8), or relu(y + identity) with the block
// tail: gcc's loop for this is 4 lanes wide on Zen and re-broadcasts per pixel.
template <bool Tail, typename T>
inline void apply_rows_t(const T* x, int64_t C, int64_t HW, const float* mc, const float* ms, const T* id, T* y) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t p = 0; p < HW; ++p) {
    const __m256 s = _mm256_set1_ps(ms[p]);
    const int64_t r = p * C;
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      __m256 v = _mm256_mul_ps(_mm256_mul_ps(load8(x + r + c0), _mm256_loadu_ps(mc + c0)), s);
      if constexpr (Tail) v = _mm256_max_ps(zero, _mm256_add_ps(v, load8(id + r + c0)));  // (0, v): NaN stays
      store8(y + r + c0, v);
    }
  }
}

template <typename T>
inline void apply_rows(const T* x, int64_t C, int64_t HW, const float* mc, const float* ms, const T* id, T* y) {
  if (id) apply_rows_t<true>(x, C, HW, mc, ms, id, y);
  else apply_rows_t<false>(x, C, HW, mc, ms, id, y);
}

// dx = g mc ms[p] + mc a[p] + off per pixel row (C a multiple of 8); did = g, where given. g is masked
// by the block tail's output o > 0 (Tail). Routes (R): 1 adds rt's spatial routes, 2 its channel routes
// too (blends, as the generic loop selects).
template <bool Tail, int R, typename T>
inline void input_grad_rows_t(const T* g, const T* o, int64_t C, int64_t HW, const float* mc, const float* ms,
                              const float* a, const float* off, T* dx, T* did, const RowRoutes<float>* rt) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t p = 0; p < HW; ++p) {
    const __m256 s = _mm256_set1_ps(ms[p]), ap = _mm256_set1_ps(a[p]);
    const int64_t r = p * C;
    __m256i lane_sc, pix;
    __m256 sv;
    if constexpr (R > 0) lane_sc = _mm256_sub_epi32(_mm256_set1_epi32(rt->sc[p]), iota), sv = _mm256_set1_ps(rt->sv[p]);
    if constexpr (R > 1) pix = _mm256_set1_epi32(static_cast<int32_t>(p));
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      __m256 gv = load8(g + r + c0);
      if constexpr (Tail) gv = _mm256_and_ps(gv, _mm256_cmp_ps(load8(o + r + c0), _mm256_setzero_ps(), _CMP_GT_OQ));
      const __m256 w = _mm256_loadu_ps(mc + c0);
      // (g w s + w a) + off, the generic loop's order of operations
      __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(gv, w), s), _mm256_mul_ps(w, ap)),
                               _mm256_loadu_ps(off + c0));
      if constexpr (R > 0) {
        const __m256i k = _mm256_cmpeq_epi32(lane_sc, _mm256_set1_epi32(static_cast<int32_t>(c0)));
        v = _mm256_blendv_ps(v, _mm256_add_ps(v, sv), _mm256_castsi256_ps(k));
      }
      if constexpr (R > 1) {
        const __m256i k = _mm256_cmpeq_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rt->cp + c0)), pix);
        v = _mm256_blendv_ps(v, _mm256_add_ps(v, _mm256_loadu_ps(rt->cv + c0)), _mm256_castsi256_ps(k));
      }
      store8(dx + r + c0, v);
      if (did) store8(did + r + c0, gv);
    }
  }
}

template <int R, typename T>
inline void input_grad_rows(const T* g, const T* o, int64_t C, int64_t HW, const float* mc, const float* ms,
                            const float* a, const float* off, T* dx, T* did, const RowRoutes<float>* rt) {
  if (o) input_grad_rows_t<true, R>(g, o, C, HW, mc, ms, a, off, dx, did, rt);
  else input_grad_rows_t<false, R>(g, o, C, HW, mc, ms, a, off, dx, did, rt);
}

// ---- NCHW: a channel's plane of HW pixels (8 at a time, then the scalar tail) ----

// y = x * w * ms (relu(y + id) with the block tail) over one channel's plane.
template <bool Tail, typename T>
inline void apply_plane_t(const T* x, int64_t HW, float w, const float* ms, const T* id, T* y) {
  const __m256 wv = _mm256_set1_ps(w), zero = _mm256_setzero_ps();
  const int64_t H8 = HW / 8 * 8;
  for (int64_t p = 0; p < H8; p += 8) {
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(load8(x + p), wv), _mm256_loadu_ps(ms + p));
    if constexpr (Tail) v = _mm256_max_ps(zero, _mm256_add_ps(v, load8(id + p)));
    store8(y + p, v);
  }
  for (int64_t p = H8; p < HW; ++p) {
    const float v = static_cast<float>(x[p]) * w * ms[p];
    y[p] = to_storage<T>(Tail ? std::max(v + static_cast<float>(id[p]), 0.0f) : v);
  }
}

template <typename T>
inline void apply_plane(const T* x, int64_t HW, float w, const float* ms, const T* id, T* y) {
  if (id) apply_plane_t<true>(x, HW, w, ms, id, y);
  else apply_plane_t<false>(x, HW, w, ms, id, y);
}

// dx = g w ms + w a + b over one channel's plane; did = g where given (g masked by o > 0 with Tail).
template <bool Tail, typename T>
inline void input_grad_plane_t(const T* g, const T* o, int64_t HW, float w, const float* ms, const float* a,
                               float b, T* dx, T* did) {
  const __m256 wv = _mm256_set1_ps(w), bv = _mm256_set1_ps(b);
  const int64_t H8 = HW / 8 * 8;
  for (int64_t p = 0; p < H8; p += 8) {
    __m256 gv = load8(g + p);
    if constexpr (Tail) gv = _mm256_and_ps(gv, _mm256_cmp_ps(load8(o + p), _mm256_setzero_ps(), _CMP_GT_OQ));
    const __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(gv, wv), _mm256_loadu_ps(ms + p)),
                                                 _mm256_mul_ps(wv, _mm256_loadu_ps(a + p))), bv);
    store8(dx + p, v);
    if (did) store8(did + p, gv);
  }
  for (int64_t p = H8; p < HW; ++p) {
    const float gv = Tail && !(static_cast<float>(o[p]) > 0.0f) ? 0.0f : static_cast<float>(g[p]);
    dx[p] = to_storage<T>(gv * w * ms[p] + w * a[p] + b);
    if (did) did[p] = to_storage<T>(gv);
  }
}

template <typename T>
inline void input_grad_plane(const T* g, const T* o, int64_t HW, float w, const float* ms, const float* a, float b,
                             T* dx, T* did) {
  if (o) input_grad_plane_t<true>(g, o, HW, w, ms, a, b, dx, did);
  else input_grad_plane_t<false>(g, o, HW, w, ms, a, b, dx, did);
}

}  // namespace sample
}  // namespace cbam_cpu
