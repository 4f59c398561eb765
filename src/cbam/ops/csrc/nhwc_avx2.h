// AVX2 + FMA + F16C versions of the channels_last register blocks of nhwc_avx512.h, for CPUs without
// AVX-512. The same functions with the same contract (C and the tiled pixel counts multiples of 16),
// done with 8-lane vectors: 8 x 8 tiles for the transposes, two registers per 16 channels elsewhere.
// Storage float, bfloat16 and half is widened to float on load. Selected by nhwc_simd.h.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "pool.h"  // RowRoutes

#include "avx2_common.h"

namespace cbam_cpu {
namespace sample {

using avx2::load8;

template <typename T, typename A>
constexpr bool kNhwc16 = std::is_same_v<A, float> &&
    (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>);

// The 16-lane element-wise row passes of nhwc_avx512.h: declared for layout.h's discarded branches;
// this build takes elementwise_avx2.h's 8-lane ones.
template <typename T, typename A>
constexpr bool kRows16 = false;
template <bool Tail, typename T>
void apply_rows16(const T* x, int64_t C, int64_t HW, const float* mc, const float* ms, const T* id, T* y);
template <bool Tail, int R, typename T>
void input_grad_rows16(const T* g, const T* o, int64_t C, int64_t HW, const float* mc, const float* ms,
                       const float* a, const float* off, T* dx, T* did, const RowRoutes<float>* rt);

// Channel counts (multiples of 16) up to this take the transposed-tile path for the per-pixel
// reductions (layout.h, short_rows): with spatial_block's register accumulators (pool_avx2.h) it beat
// a horizontal reduction per pixel for 64 to 1024 channels on an AVX2 EPYC (in-process A/B,
// grad-mode forward 0.68-0.95x), and tied at 2048.
constexpr int64_t kTiledMaxChannels = 1024;

// r[i][j] <- r[j][i] for an 8 x 8 tile: 32-bit interleaves, 64-bit shuffles, then 128-bit lane swaps.
inline void transpose8(__m256* r) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    s[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    s[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    s[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    s[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(s[j], s[j + 4], 0x31);
  }
}

// t[c * ld + i] = x[i * C + c] for pixels i < n16 and channels c < C (multiples of 16, so of 8).
template <typename T>
inline void transpose_tiles(const T* x, int64_t C, int64_t n16, float* t, int64_t ld) {
  __m256 r[8];
  for (int64_t i0 = 0; i0 < n16; i0 += 8)
    for (int64_t c0 = 0; c0 < C; c0 += 8) {
      for (int i = 0; i < 8; ++i) r[i] = load8(x + (i0 + i) * C + c0);
      transpose8(r);
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(t + (c0 + c) * ld + i0, r[c]);
    }
}

// Per channel: mean, max and first argmax (strict >, as the generic loop) over the HW pixel rows of x.
// Without the argmax, four pixels' accumulators run side by side.
template <typename T>
inline void pool_channels_16(const T* x, int64_t C, int64_t HW, bool need_idx, float* avg, float* mx, int32_t* ic) {
  const __m256 n = _mm256_set1_ps(static_cast<float>(HW)), lo = _mm256_set1_ps(-INFINITY);
  for (int64_t c0 = 0; c0 < C; c0 += 8) {
    const T* col = x + c0;
    if (need_idx) {
      __m256 s = _mm256_setzero_ps(), m = lo;
      __m256i k = _mm256_setzero_si256(), pi = k;
      const __m256i one = _mm256_set1_epi32(1);
      for (int64_t p = 0; p < HW; ++p) {
        const __m256 v = load8(col + p * C);
        s = _mm256_add_ps(s, v);
        const __m256 gt = _mm256_cmp_ps(v, m, _CMP_GT_OQ);
        m = _mm256_blendv_ps(m, v, gt);
        k = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(k), _mm256_castsi256_ps(pi), gt));
        pi = _mm256_add_epi32(pi, one);
      }
      _mm256_storeu_ps(avg + c0, _mm256_div_ps(s, n));
      _mm256_storeu_ps(mx + c0, m);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ic + c0), k);
      continue;
    }
    __m256 s[4], m[4];
    for (int j = 0; j < 4; ++j) s[j] = _mm256_setzero_ps(), m[j] = lo;
    int64_t p = 0;
    for (; p + 4 <= HW; p += 4)
      for (int j = 0; j < 4; ++j) {
        const __m256 v = load8(col + (p + j) * C);
        s[j] = _mm256_add_ps(s[j], v);
        m[j] = _mm256_max_ps(v, m[j]);  // (v, m): a NaN in v leaves m, as the generic loop does
      }
    for (; p < HW; ++p) {
      const __m256 v = load8(col + p * C);
      s[0] = _mm256_add_ps(s[0], v);
      m[0] = _mm256_max_ps(v, m[0]);
    }
    const __m256 S = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
    _mm256_storeu_ps(avg + c0, _mm256_div_ps(S, n));
    _mm256_storeu_ps(mx + c0, _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
  }
}

// Lane i of the result = the sum of r[i]'s 8 lanes (three rounds of pairwise adds, then the halves).
inline __m256 hsum8x8(const __m256* r) {
  const __m256 a0 = _mm256_hadd_ps(r[0], r[1]), a1 = _mm256_hadd_ps(r[2], r[3]);
  const __m256 a2 = _mm256_hadd_ps(r[4], r[5]), a3 = _mm256_hadd_ps(r[6], r[7]);
  const __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

// g * x at element i (8 channels), with g zeroed where the block tail's output o is not > 0.
template <bool Tail, typename T>
inline __m256 gx8(const T* g, const T* o, const T* x, int64_t i) {
  __m256 gv = load8(g + i);
  if constexpr (Tail) gv = _mm256_and_ps(gv, _mm256_cmp_ps(load8(o + i), _mm256_setzero_ps(), _CMP_GT_OQ));
  return _mm256_mul_ps(gv, load8(x + i));
}

// dmc[c] += sum_p x[p, c] a[p].
template <typename T>
inline void row_dot_16(const T* x, int64_t C, int64_t HW, const float* a, float* dmc) {
  for (int64_t c0 = 0; c0 < C; c0 += 8) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t p = 0;
    for (; p + 4 <= HW; p += 4)
      for (int j = 0; j < 4; ++j)
        s[j] = _mm256_fmadd_ps(load8(x + (p + j) * C + c0), _mm256_set1_ps(a[p + j]), s[j]);
    for (; p < HW; ++p) s[0] = _mm256_fmadd_ps(load8(x + p * C + c0), _mm256_set1_ps(a[p]), s[0]);
    const __m256 S = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
    _mm256_storeu_ps(dmc + c0, _mm256_add_ps(_mm256_loadu_ps(dmc + c0), S));
  }
}

// dmc[c] += sum_p g x ms[p];  dms[p] += sum_c g x mc[c] (g masked by the tail's output where Tail).
// Per 8 channels and 8 pixels: the per-channel sums stay in registers, the per-pixel ones come from
// one 8 x 8 horizontal sum.
template <bool Tail, typename T>
inline void reduce_16(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const float* mc, const float* ms,
                      float* dmc, float* dms) {
  const int64_t H8 = HW / 8 * 8;
  __m256 u[8];
  for (int64_t c0 = 0; c0 < C; c0 += 8) {
    const __m256 w = _mm256_loadu_ps(mc + c0);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (int64_t p0 = 0; p0 < H8; p0 += 8) {
      for (int i = 0; i < 8; i += 2) {
        const __m256 v0 = gx8<Tail>(g, o, x, (p0 + i) * C + c0), v1 = gx8<Tail>(g, o, x, (p0 + i + 1) * C + c0);
        s0 = _mm256_fmadd_ps(v0, _mm256_set1_ps(ms[p0 + i]), s0);
        s1 = _mm256_fmadd_ps(v1, _mm256_set1_ps(ms[p0 + i + 1]), s1);
        u[i] = _mm256_mul_ps(v0, w);
        u[i + 1] = _mm256_mul_ps(v1, w);
      }
      _mm256_storeu_ps(dms + p0, _mm256_add_ps(_mm256_loadu_ps(dms + p0), hsum8x8(u)));
    }
    for (int64_t p = H8; p < HW; ++p) {
      const __m256 v = gx8<Tail>(g, o, x, p * C + c0);
      s0 = _mm256_fmadd_ps(v, _mm256_set1_ps(ms[p]), s0);
      dms[p] += avx2::hsum8(_mm256_mul_ps(v, w));
    }
    _mm256_storeu_ps(dmc + c0, _mm256_add_ps(_mm256_loadu_ps(dmc + c0), _mm256_add_ps(s0, s1)));
  }
}

// The single walks over wide pixel rows (C >= 64, a multiple of 16) of nhwc_avx512.h, with two 8-lane
// registers per 16 channels: the per-16-channel walks above read 32 bytes of every pixel row per walk,
// and a ResNet-50 sample (1.6 MB and up per tensor) outgrows L2 between walks; here each tensor is read
// once, in order, with the per-channel sums in a C-float buffer (L1).
template <typename T, typename A>
constexpr bool kWideRows = kNhwc16<T, A>;

// dmc[c] += sum_p g x ms[p];  dms[p] += sum_c g x mc[c], one pixel row at a time; 8 pixels' dot products
// with mc are reduced together (hsum8x8).
template <bool Tail, typename T>
inline void reduce_rows16(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const float* mc,
                          const float* ms, float* dmc, float* dms, float* acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
  auto row = [&](int64_t p) {  // acc += g x ms[p] over the row; returns the row's g x mc, 8 lanes
    const __m256 s = _mm256_set1_ps(ms[p]);
    __m256 d0 = _mm256_setzero_ps(), d1 = d0;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __m256 v0 = gx8<Tail>(g, o, x, p * C + c0), v1 = gx8<Tail>(g, o, x, p * C + c0 + 8);
      _mm256_storeu_ps(acc + c0, _mm256_fmadd_ps(v0, s, _mm256_loadu_ps(acc + c0)));
      _mm256_storeu_ps(acc + c0 + 8, _mm256_fmadd_ps(v1, s, _mm256_loadu_ps(acc + c0 + 8)));
      d0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(mc + c0), d0);
      d1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(mc + c0 + 8), d1);
    }
    return _mm256_add_ps(d0, d1);
  };
  const int64_t H8 = HW / 8 * 8;
  __m256 u[8];
  for (int64_t p0 = 0; p0 < H8; p0 += 8) {
    for (int i = 0; i < 8; ++i) u[i] = row(p0 + i);
    _mm256_storeu_ps(dms + p0, _mm256_add_ps(_mm256_loadu_ps(dms + p0), hsum8x8(u)));
  }
  for (int64_t p = H8; p < HW; ++p) dms[p] += avx2::hsum8(row(p));
  for (int64_t c = 0; c < C; ++c) dmc[c] += acc[c];
}

// dmc[c] += sum_p x[p, c] a[p], one pixel row at a time.
template <typename T>
inline void row_dot_rows16(const T* x, int64_t C, int64_t HW, const float* a, float* dmc, float* acc) {
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
  for (int64_t p = 0; p < HW; ++p) {
    const __m256 ap = _mm256_set1_ps(a[p]);
    const T* r = x + p * C;
    for (int64_t c0 = 0; c0 < C; c0 += 8)
      _mm256_storeu_ps(acc + c0, _mm256_fmadd_ps(load8(r + c0), ap, _mm256_loadu_ps(acc + c0)));
  }
  for (int64_t c = 0; c < C; ++c) dmc[c] += acc[c];
}

// Per channel: mean, max and first argmax (strict >) one pixel row at a time; the running values are
// kept in avg, mx and ic themselves (L1).
template <typename T>
inline void pool_channels_rows16(const T* x, int64_t C, int64_t HW, bool need_idx, float* avg, float* mx,
                                 int32_t* ic) {
  for (int64_t c = 0; c < C; ++c) avg[c] = 0.0f, mx[c] = -INFINITY;
  if (need_idx) {
    for (int64_t c = 0; c < C; ++c) ic[c] = 0;
    for (int64_t p = 0; p < HW; ++p) {
      const __m256 pi = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(p)));
      const T* r = x + p * C;
      for (int64_t c0 = 0; c0 < C; c0 += 8) {
        const __m256 v = load8(r + c0), m = _mm256_loadu_ps(mx + c0);
        _mm256_storeu_ps(avg + c0, _mm256_add_ps(_mm256_loadu_ps(avg + c0), v));
        const __m256 gt = _mm256_cmp_ps(v, m, _CMP_GT_OQ);
        _mm256_storeu_ps(mx + c0, _mm256_blendv_ps(m, v, gt));
        float* k = reinterpret_cast<float*>(ic + c0);  // the routes blended as bit patterns
        _mm256_storeu_ps(k, _mm256_blendv_ps(_mm256_loadu_ps(k), pi, gt));
      }
    }
  } else {
    for (int64_t p = 0; p < HW; ++p) {
      const T* r = x + p * C;
      for (int64_t c0 = 0; c0 < C; c0 += 8) {
        const __m256 v = load8(r + c0);
        _mm256_storeu_ps(avg + c0, _mm256_add_ps(_mm256_loadu_ps(avg + c0), v));
        _mm256_storeu_ps(mx + c0, _mm256_max_ps(v, _mm256_loadu_ps(mx + c0)));  // (v, m): a NaN in v leaves m
      }
    }
  }
  const float n = static_cast<float>(HW);
  for (int64_t c = 0; c < C; ++c) avg[c] /= n;
}

}  // namespace sample
}  // namespace cbam_cpu
