// AVX-512 register blocks for the channels_last (NHWC) passes of the per-sample kernels, where C is a
// multiple of 16; storage types float, bfloat16 and half are widened to float on load.
//  - transpose_tiles: 16 x 16 tiles transposed in registers, for the per-pixel reductions over short
//    pixel rows (C < 64): a block of pixels becomes C rows of pixels, reduced down the rows with
//    full vectors as NCHW does. An element-wise transpose does one scalar strided store per value
//    (~40 % of a 16-channel 28x28 sample's forward); a tile costs 64 shuffles for 256 values.
//  - pool_channels_16, row_dot_16 and the per-channel half of reduce_16: sums over the pixels with
//    16 channels in registers; the generic loops keep them in memory (a load-add-store chain per pixel);
//  - hsum16 for the per-pixel half of reduce_16: 16 pixels' channel sums in 30 shuffles and 15 adds,
//    instead of a horizontal reduction per pixel.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "pool.h"  // RowRoutes
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace cbam_cpu {
namespace sample {

// Whether the AVX-512 16-channel paths below handle storage T with accumulation A on this build.
template <typename T, typename A>
constexpr bool kNhwc16 =
#if defined(__AVX512F__)
    std::is_same_v<A, float> &&
    (std::is_same_v<T, float> || std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>);
#else
    false;
#endif

// Whether the 16-lane element-wise row passes (apply_rows16, input_grad_rows16) run on this build.
template <typename T, typename A>
constexpr bool kRows16 = kNhwc16<T, A>;

// Whether the single walks over wide pixel rows (pool_channels_rows16, reduce_rows16, row_dot_rows16;
// C >= 64, a multiple of 16) run on this build.
template <typename T, typename A>
constexpr bool kWideRows = kNhwc16<T, A>;

#if !defined(CBAM_VEC_ELEMENTWISE)
// Without F16C there are no element-wise vector passes (elementwise_avx2.h): the generic loops run.
template <typename T, typename A>
constexpr bool kVecElementwise = false;
template <int R, typename T>  // declared for layout.h's discarded branch
void input_grad_rows(const T* g, const T* o, int64_t C, int64_t HW, const float* mc, const float* ms,
                     const float* a, const float* off, T* dx, T* did, const RowRoutes<float>* rt);
#endif

// Channel counts (multiples of 16) up to this take the transposed-tile path (layout.h, short_rows).
constexpr int64_t kTiledMaxChannels = 48;

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {  // bf16 is the top half of a float
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// 16 floats stored as T: bfloat16 rounded to nearest even with NaN kept NaN (pool.h's to_storage),
// half by the conversion's round to nearest even (c10::Half's). With AVX512-BF16 the bfloat16 store is
// the one conversion instruction, which rounds to nearest even as to_storage does but flushes results
// below bfloat16's normal range (|v| < 2^-126) to zero, as oneDNN's bfloat16 convolutions on these CPUs do;
// it replaces eight integer operations per 16 values.
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(c10::BFloat16* p, __m512 v) {
#if defined(__AVX512BF16__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
#else
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
#endif
}
inline void store16(c10::Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// r[i][j] <- r[j][i]: pairs of rows interleaved at 32-, 64-, 128- and 256-bit granularity.
inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
      r[i + 2 * j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[i + 2 * j + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
  }
}
#endif

// t[c * ld + i] = x[i * C + c] for pixels i < n16 (a multiple of 16) and channels c < C (a multiple of
// 16). Only where kNhwc16<T, A>.
template <typename T>
inline void transpose_tiles(const T* x, int64_t C, int64_t n16, float* t, int64_t ld) {
#if defined(__AVX512F__)
  __m512 r[16];
  for (int64_t i0 = 0; i0 < n16; i0 += 16)
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      for (int i = 0; i < 16; ++i) r[i] = load16(x + (i0 + i) * C + c0);
      transpose16(r);
      for (int c = 0; c < 16; ++c) _mm512_storeu_ps(t + (c0 + c) * ld + i0, r[c]);
    }
#else
  (void)x, (void)C, (void)n16, (void)t, (void)ld;
#endif
}

// Per channel: mean, max and first argmax (strict >, as the generic loop) over the HW pixel rows of x.
// Without the argmax, four pixels' accumulators run side by side.
template <typename T>
inline void pool_channels_16(const T* x, int64_t C, int64_t HW, bool need_idx, float* avg, float* mx, int32_t* ic) {
#if defined(__AVX512F__)
  const __m512 n = _mm512_set1_ps(static_cast<float>(HW)), lo = _mm512_set1_ps(-INFINITY);
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const T* col = x + c0;
    if (need_idx) {
      __m512 s = _mm512_setzero_ps(), m = lo;
      __m512i k = _mm512_setzero_si512(), pi = k;
      const __m512i one = _mm512_set1_epi32(1);
      for (int64_t p = 0; p < HW; ++p) {
        const __m512 v = load16(col + p * C);
        s = _mm512_add_ps(s, v);
        const __mmask16 gt = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ);
        m = _mm512_mask_mov_ps(m, gt, v);
        k = _mm512_mask_mov_epi32(k, gt, pi);
        pi = _mm512_add_epi32(pi, one);
      }
      _mm512_storeu_ps(avg + c0, _mm512_div_ps(s, n));
      _mm512_storeu_ps(mx + c0, m);
      _mm512_storeu_si512(ic + c0, k);
      continue;
    }
    __m512 s[4], m[4];
    for (int j = 0; j < 4; ++j) s[j] = _mm512_setzero_ps(), m[j] = lo;
    int64_t p = 0;
    for (; p + 4 <= HW; p += 4)
      for (int j = 0; j < 4; ++j) {
        const __m512 v = load16(col + (p + j) * C);
        s[j] = _mm512_add_ps(s[j], v);
        m[j] = _mm512_max_ps(v, m[j]);  // (v, m): a NaN in v leaves m, as the generic loop does
      }
    for (; p < HW; ++p) {
      const __m512 v = load16(col + p * C);
      s[0] = _mm512_add_ps(s[0], v);
      m[0] = _mm512_max_ps(v, m[0]);
    }
    const __m512 S = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
    _mm512_storeu_ps(avg + c0, _mm512_div_ps(S, n));
    _mm512_storeu_ps(mx + c0, _mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])));
  }
#else
  (void)x, (void)C, (void)HW, (void)need_idx, (void)avg, (void)mx, (void)ic;
#endif
}

#if defined(__AVX512F__)
// Lane i of the result = the sum of r[i]'s 16 lanes. Each level adds pairs of interleaved vectors,
// halving the vectors and doubling the rows each holds: (32-bit, 64-bit, 128-bit, 256-bit) interleaves.
inline __m512 hsum16(const __m512* r) {
  __m512 a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = _mm512_add_ps(_mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {
    const __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  for (int i = 0; i < 2; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

// g * x at element i (16 channels), with g masked to 0 where the block tail's output o is not > 0.
template <bool Tail, typename T>
inline __m512 gx16(const T* g, const T* o, const T* x, int64_t i) {
  __m512 gv = load16(g + i);
  if constexpr (Tail) gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(load16(o + i), _mm512_setzero_ps(), _CMP_GT_OQ), gv);
  return _mm512_mul_ps(gv, load16(x + i));
}
#endif

// dmc[c] += sum_p x[p, c] a[p].
template <typename T>
inline void row_dot_16(const T* x, int64_t C, int64_t HW, const float* a, float* dmc) {
#if defined(__AVX512F__)
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t p = 0;
    for (; p + 4 <= HW; p += 4)
      for (int j = 0; j < 4; ++j)
        s[j] = _mm512_fmadd_ps(load16(x + (p + j) * C + c0), _mm512_set1_ps(a[p + j]), s[j]);
    for (; p < HW; ++p) s[0] = _mm512_fmadd_ps(load16(x + p * C + c0), _mm512_set1_ps(a[p]), s[0]);
    const __m512 S = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
    _mm512_storeu_ps(dmc + c0, _mm512_add_ps(_mm512_loadu_ps(dmc + c0), S));
  }
#else
  (void)x, (void)C, (void)HW, (void)a, (void)dmc;
#endif
}

// dmc[c] += sum_p g x ms[p];  dms[p] += sum_c g x mc[c] (g masked by the tail's output where Tail).
template <bool Tail, typename T>
inline void reduce_16(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const float* mc, const float* ms,
                      float* dmc, float* dms) {
#if defined(__AVX512F__)
  const int64_t H16 = HW / 16 * 16;
  __m512 u[16];
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const __m512 w = _mm512_loadu_ps(mc + c0);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    for (int64_t p0 = 0; p0 < H16; p0 += 16) {
      for (int i = 0; i < 16; i += 2) {
        const __m512 v0 = gx16<Tail>(g, o, x, (p0 + i) * C + c0), v1 = gx16<Tail>(g, o, x, (p0 + i + 1) * C + c0);
        s0 = _mm512_fmadd_ps(v0, _mm512_set1_ps(ms[p0 + i]), s0);
        s1 = _mm512_fmadd_ps(v1, _mm512_set1_ps(ms[p0 + i + 1]), s1);
        u[i] = _mm512_mul_ps(v0, w);
        u[i + 1] = _mm512_mul_ps(v1, w);
      }
      _mm512_storeu_ps(dms + p0, _mm512_add_ps(_mm512_loadu_ps(dms + p0), hsum16(u)));
    }
    for (int64_t p = H16; p < HW; ++p) {
      const __m512 v = gx16<Tail>(g, o, x, p * C + c0);
      s0 = _mm512_fmadd_ps(v, _mm512_set1_ps(ms[p]), s0);
      dms[p] += _mm512_reduce_add_ps(_mm512_mul_ps(v, w));
    }
    _mm512_storeu_ps(dmc + c0, _mm512_add_ps(_mm512_loadu_ps(dmc + c0), _mm512_add_ps(s0, s1)));
  }
#else
  (void)g, (void)o, (void)x, (void)C, (void)HW, (void)mc, (void)ms, (void)dmc, (void)dms;
#endif
}

// reduce_16 one pixel row at a time, for wide rows (C >= 64): reduce_16 walks the sample once per 16
// channels, reading 64 bytes of every pixel row (of C * 4 bytes and more) per walk, where a sample
// of a ResNet-50 stage (1.6 MB and up per tensor) outgrows L2 between walks; here g, o and x are read
// once, in order. The per-channel sums stay in acc (C floats, L1); 16 pixels' dot products with mc
// are reduced together (hsum16).
template <bool Tail, typename T>
inline void reduce_rows16(const T* g, const T* o, const T* x, int64_t C, int64_t HW, const float* mc,
                          const float* ms, float* dmc, float* dms, float* acc) {
#if defined(__AVX512F__)
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
  auto row = [&](int64_t p) {  // acc += g x ms[p] over the row; returns the row's g x mc, 16 lanes
    const __m512 s = _mm512_set1_ps(ms[p]);
    __m512 d0 = _mm512_setzero_ps(), d1 = d0;
    int64_t c0 = 0;
    for (; c0 + 32 <= C; c0 += 32) {
      const __m512 v0 = gx16<Tail>(g, o, x, p * C + c0), v1 = gx16<Tail>(g, o, x, p * C + c0 + 16);
      _mm512_storeu_ps(acc + c0, _mm512_fmadd_ps(v0, s, _mm512_loadu_ps(acc + c0)));
      _mm512_storeu_ps(acc + c0 + 16, _mm512_fmadd_ps(v1, s, _mm512_loadu_ps(acc + c0 + 16)));
      d0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(mc + c0), d0);
      d1 = _mm512_fmadd_ps(v1, _mm512_loadu_ps(mc + c0 + 16), d1);
    }
    if (c0 < C) {
      const __m512 v0 = gx16<Tail>(g, o, x, p * C + c0);
      _mm512_storeu_ps(acc + c0, _mm512_fmadd_ps(v0, s, _mm512_loadu_ps(acc + c0)));
      d0 = _mm512_fmadd_ps(v0, _mm512_loadu_ps(mc + c0), d0);
    }
    return _mm512_add_ps(d0, d1);
  };
  const int64_t H16 = HW / 16 * 16;
  __m512 u[16];
  for (int64_t p0 = 0; p0 < H16; p0 += 16) {
    for (int i = 0; i < 16; ++i) u[i] = row(p0 + i);
    _mm512_storeu_ps(dms + p0, _mm512_add_ps(_mm512_loadu_ps(dms + p0), hsum16(u)));
  }
  for (int64_t p = H16; p < HW; ++p) dms[p] += _mm512_reduce_add_ps(row(p));
  for (int64_t c = 0; c < C; ++c) dmc[c] += acc[c];
#else
  (void)g, (void)o, (void)x, (void)C, (void)HW, (void)mc, (void)ms, (void)dmc, (void)dms, (void)acc;
#endif
}

// row_dot_16 one pixel row at a time, for wide rows (C >= 64), as reduce_rows16: x read once, in
// order; the sums in acc (C floats, L1).
template <typename T>
inline void row_dot_rows16(const T* x, int64_t C, int64_t HW, const float* a, float* dmc, float* acc) {
#if defined(__AVX512F__)
  for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
  for (int64_t p = 0; p < HW; ++p) {
    const __m512 ap = _mm512_set1_ps(a[p]);
    const T* r = x + p * C;
    for (int64_t c0 = 0; c0 < C; c0 += 16)
      _mm512_storeu_ps(acc + c0, _mm512_fmadd_ps(load16(r + c0), ap, _mm512_loadu_ps(acc + c0)));
  }
  for (int64_t c = 0; c < C; ++c) dmc[c] += acc[c];
#else
  (void)x, (void)C, (void)HW, (void)a, (void)dmc, (void)acc;
#endif
}

// pool_channels_16 one pixel row at a time, for wide rows (C >= 64), as reduce_rows16: x read once, in
// order; the running sum, max and first argmax (strict >) are kept in avg, mx and ic themselves (L1).
template <typename T>
inline void pool_channels_rows16(const T* x, int64_t C, int64_t HW, bool need_idx, float* avg, float* mx,
                                 int32_t* ic) {
#if defined(__AVX512F__)
  for (int64_t c = 0; c < C; ++c) avg[c] = 0.0f, mx[c] = -INFINITY;
  if (need_idx) {
    for (int64_t c = 0; c < C; ++c) ic[c] = 0;
    for (int64_t p = 0; p < HW; ++p) {
      const __m512i pi = _mm512_set1_epi32(static_cast<int32_t>(p));
      const T* r = x + p * C;
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const __m512 v = load16(r + c0), m = _mm512_loadu_ps(mx + c0);
        _mm512_storeu_ps(avg + c0, _mm512_add_ps(_mm512_loadu_ps(avg + c0), v));
        const __mmask16 gt = _mm512_cmp_ps_mask(v, m, _CMP_GT_OQ);
        _mm512_storeu_ps(mx + c0, _mm512_mask_mov_ps(m, gt, v));
        _mm512_mask_storeu_epi32(ic + c0, gt, pi);
      }
    }
  } else {
    for (int64_t p = 0; p < HW; ++p) {
      const T* r = x + p * C;
      for (int64_t c0 = 0; c0 < C; c0 += 16) {
        const __m512 v = load16(r + c0);
        _mm512_storeu_ps(avg + c0, _mm512_add_ps(_mm512_loadu_ps(avg + c0), v));
        _mm512_storeu_ps(mx + c0, _mm512_max_ps(v, _mm512_loadu_ps(mx + c0)));  // (v, m): a NaN in v leaves m
      }
    }
  }
  const float n = static_cast<float>(HW);
  for (int64_t c = 0; c < C; ++c) avg[c] /= n;
#else
  (void)x, (void)C, (void)HW, (void)need_idx, (void)avg, (void)mx, (void)ic;
#endif
}

// The element-wise passes over pixel rows of C channels (a multiple of 16), 16 lanes at a time. The
// generic loops run one C-long vector loop per pixel, whose set-up costs as much as a 16-channel row
// (half the 16-channel forward's time went there). The expressions are the generic loops' (layout.h).
// y = x * mc * ms[p], or relu(y + identity) with the block tail (Tail).
template <bool Tail, typename T>
inline void apply_rows16(const T* x, int64_t C, int64_t HW, const float* mc, const float* ms, const T* id, T* y) {
#if defined(__AVX512F__)
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t p = 0; p < HW; ++p) {
    const __m512 s = _mm512_set1_ps(ms[p]);
    const int64_t r = p * C;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      __m512 v = _mm512_mul_ps(_mm512_mul_ps(load16(x + r + c0), _mm512_loadu_ps(mc + c0)), s);
      if constexpr (Tail) v = _mm512_max_ps(zero, _mm512_add_ps(v, load16(id + r + c0)));  // (0, v): NaN stays
      store16(y + r + c0, v);
    }
  }
#else
  (void)x, (void)C, (void)HW, (void)mc, (void)ms, (void)id, (void)y;
#endif
}

// dx = (g mc ms[p] + mc a[p]) + off; did = g where given; g masked by the tail's output o > 0 (Tail).
// Routes (R): 1 adds rt's spatial routes, 2 its channel routes too (masked adds: no branch per chunk).
template <bool Tail, int R, typename T>
inline void input_grad_rows16(const T* g, const T* o, int64_t C, int64_t HW, const float* mc, const float* ms,
                              const float* a, const float* off, T* dx, T* did, const RowRoutes<float>* rt) {
#if defined(__AVX512F__)
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t p = 0; p < HW; ++p) {
    const __m512 s = _mm512_set1_ps(ms[p]), ap = _mm512_set1_ps(a[p]);
    const int64_t r = p * C;
    __m512i lane_sc, pix;
    __m512 sv;
    if constexpr (R > 0) lane_sc = _mm512_sub_epi32(_mm512_set1_epi32(rt->sc[p]), iota), sv = _mm512_set1_ps(rt->sv[p]);
    if constexpr (R > 1) pix = _mm512_set1_epi32(static_cast<int32_t>(p));
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      __m512 gv = load16(g + r + c0);
      if constexpr (Tail)
        gv = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(load16(o + r + c0), _mm512_setzero_ps(), _CMP_GT_OQ), gv);
      const __m512 w = _mm512_loadu_ps(mc + c0);
      __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(gv, w), s), _mm512_mul_ps(w, ap)),
                               _mm512_loadu_ps(off + c0));
      if constexpr (R > 0) {  // lane l holds channel c0 + l: the route's lane where sc[p] - l == c0
        const __mmask16 k = _mm512_cmpeq_epi32_mask(lane_sc, _mm512_set1_epi32(static_cast<int32_t>(c0)));
        v = _mm512_mask_add_ps(v, k, v, sv);
      }
      if constexpr (R > 1) {
        const __mmask16 k = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(rt->cp + c0), pix);
        v = _mm512_mask_add_ps(v, k, v, _mm512_loadu_ps(rt->cv + c0));
      }
      store16(dx + r + c0, v);
      if (did) store16(did + r + c0, gv);
    }
  }
#else
  (void)g, (void)o, (void)C, (void)HW, (void)mc, (void)ms, (void)a, (void)off, (void)dx, (void)did, (void)rt;
#endif
}

}  // namespace sample
}  // namespace cbam_cpu
