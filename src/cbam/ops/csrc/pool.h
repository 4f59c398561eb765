// Inner loops shared by the pass kernels (cbam_cpu.cpp) and the per-sample forward and backward
// (cbam_sample.cpp, sample_backward.cpp): one definition of each reduction, so both paths agree bit
// for bit.
#pragma once
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cstring>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace cbam_cpu {

template <typename T> using acc_t = at::opmath_type<T>;

// A value in the storage type T. For bfloat16 the rounding (to nearest even, NaN kept NaN) is written
// with integer ops and a select, so loops that store bf16 vectorise; c10's conversion branches per value.
template <typename T, typename A>
inline T to_storage(A v) { return static_cast<T>(v); }

template <>
inline c10::BFloat16 to_storage<c10::BFloat16, float>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7FC0u : rounded), c10::BFloat16::from_bits());
}

// A stored value widened to the accumulation type A. float16 goes through c10's portable routine
// (integer ops, a multiply and a select, exact for every value): c10's own conversion is F16C's scalar
// instruction where the build has F16C, which keeps gcc from vectorising the loop around it.
template <typename A, typename T>
inline A widen(T v) { return static_cast<A>(v); }

template <>
inline float widen<float, c10::Half>(c10::Half h) {
  const uint32_t w = static_cast<uint32_t>(h.x) << 16, sign = w & 0x80000000u, two_w = w + w;
  float normal, subnormal;
  const uint32_t nb = (two_w >> 4) + (0xE0u << 23), sb = (two_w >> 17) | (126u << 23);
  std::memcpy(&normal, &nb, sizeof(nb));
  std::memcpy(&subnormal, &sb, sizeof(sb));
  normal *= 0x1.0p-112f;  // rebias the exponent; an all-ones exponent stays inf / NaN
  subnormal -= 0.5f;      // 0.5 + m * 2^-24 - 0.5, exact
  uint32_t n, d;
  std::memcpy(&n, &normal, sizeof(n));
  std::memcpy(&d, &subnormal, sizeof(d));
  const uint32_t bits = sign | (two_w < (1u << 27) ? d : n);
  float r;
  std::memcpy(&r, &bits, sizeof(r));
  return r;
}

// The input gradient at one element, before the max-pool routes add to it: g mc ms + mc a + off (one
// definition for the generic loops of both layouts, the batch-wide pass and the routed elements).
template <typename A>
inline A dx_value(A g, A w, A s, A a, A off) { return g * w * s + w * a + off; }

// The max-pool routes of dx that the channels_last input gradient adds in its row pass, so the routed
// elements are rounded to a narrow storage type once, with the rest of their row (a scalar pass over
// them afterwards cost as much as the vector pass for 16 channels at 28 x 28). Pixel p's spatial route
// adds sv[p] at channel sc[p]; where cp is given, channel c's route adds cv[c] at pixel cp[c] (after
// the spatial one).
template <typename A>
struct RowRoutes {
  const int32_t* sc;
  const A* sv;
  const int32_t* cp;  // null: the channel routes are added after the pass
  const A* cv;
};

constexpr int64_t kBlock = 512;  // pixels per block in channel-axis reductions: accumulators stay in L1

// First i with row[i] == m. Chunks of 64 are scanned with a vectorised min-reduction of the
// matching positions, returning at the first chunk that has one: the max is found by a plain max
// reduction (as fast as a sum) and its first position by this scan, instead of a compare-and-blend
// per element; short rows (7x7, 14x14) are one or a few chunks with no scalar tail.
template <typename T, typename A>
inline int32_t first_equal(const T* row, int64_t n, A m) {
  constexpr int64_t L = 64;
  for (int64_t i0 = 0; i0 < n; i0 += L) {
    const int32_t len = static_cast<int32_t>(std::min(L, n - i0));
    const T* r = row + i0;
    int32_t pos = len;
    _Pragma("omp simd reduction(min:pos)")
    for (int32_t l = 0; l < len; ++l) pos = std::min(pos, widen<A>(r[l]) == m ? l : len);
    if (pos < len) return static_cast<int32_t>(i0 + pos);
  }
  return 0;  // only for NaN rows, where nothing equals the max
}

// Sum and max of one row of n values.
template <typename T, typename A>
inline void row_sum_max(const T* row, int64_t n, A* sum, A* mx) {
  const A first = widen<A>(row[0]);
  A s = 0, m = first;
  _Pragma("omp simd reduction(+:s) reduction(max:m)")
  for (int64_t i = 0; i < n; ++i) {
    const A v = widen<A>(row[i]);
    s += v;
    m = v > m ? v : m;
  }
  *sum = s;
  // a row that starts with NaN has a NaN max, as in the vector builds: the vectorised reduction starts
  // its lanes from the identity and combines them with compares, which drop that NaN
  *mx = first != first ? first : m;
}

// Mean, max and (if need_idx) first argmax of one row of n values.
template <typename T, typename A>
inline void row_pool(const T* row, int64_t n, bool need_idx, A* avg, A* mx, int32_t* idx) {
  A s, m;
  row_sum_max(row, n, &s, &m);
  *avg = s / static_cast<A>(n);
  *mx = m;
  if (need_idx) *idx = first_equal(row, n, m);
}

// row_pool of the row x[i] * scale[i] (the per-pixel pooling over channels of x * M_c in channels_last),
// with t (n values) as scratch for the product.
template <typename T, typename A>
inline void row_pool_scaled(const T* row, const A* scale, int64_t n, bool need_idx, A* avg, A* mx, int32_t* idx,
                            A* t) {
  _Pragma("omp simd")
  for (int64_t i = 0; i < n; ++i) t[i] = widen<A>(row[i]) * scale[i];
  row_pool(t, n, need_idx, avg, mx, idx);
}

// sum_i row[i] a[i] over one row of n values.
template <typename T, typename A>
inline A dot_row(const T* row, const A* a, int64_t n) {
  A s = 0;
  _Pragma("omp simd reduction(+:s)")
  for (int64_t i = 0; i < n; ++i) s += widen<A>(row[i]) * a[i];
  return s;
}

// One channel row of the NCHW backward's first pass over len pixels: with v = g x (g zeroed where the
// block tail's output o <= 0, when o is given), acc[i] += v[i] wc; returns sum_i v[i] ms[i]. Tail is
// a compile-time flag: gcc does not vectorise a reduction loop with a conditional load.
template <bool Tail, typename T, typename A>
inline A grad_row_t(const T* g, const T* o, const T* x, int64_t len, A wc, const A* ms, A* acc) {
  A dot = 0;
  _Pragma("omp simd reduction(+:dot)")
  for (int64_t i = 0; i < len; ++i) {
    A gv = widen<A>(g[i]);
    if constexpr (Tail) gv = widen<A>(o[i]) > A(0) ? gv : A(0);
    const A v = gv * widen<A>(x[i]);
    acc[i] += v * wc;
    dot += v * ms[i];
  }
  return dot;
}

template <typename T, typename A>
inline A grad_row(const T* g, const T* o, const T* x, int64_t len, A wc, const A* ms, A* acc) {
  return o ? grad_row_t<true>(g, o, x, len, wc, ms, acc) : grad_row_t<false>(g, o, x, len, wc, ms, acc);
}

// Over the C channels of x * mc for `len` pixels starting at x0 (= &x[n, 0, p0]; rows HW apart):
// sum into s, max into m and (if need_idx) the first argmax channel into k. Four channels per
// step: s, m and k are loaded and stored once per four rows of x, not once per row (the loop was
// bound by those L1 stores). Ties keep the lower channel (strict >), as torch.max does.
template <typename T, typename A>
inline void spatial_block_generic(const T* x0, int64_t C, int64_t HW, int64_t len, const A* mc, bool need_idx, A* s, A* m,
                          int32_t* k) {
  for (int64_t i = 0; i < len; ++i) { s[i] = 0; m[i] = -std::numeric_limits<A>::infinity(); k[i] = 0; }
  int64_t c = 0;
  for (; c + 4 <= C; c += 4) {
    const T *r0 = x0 + c * HW, *r1 = r0 + HW, *r2 = r1 + HW, *r3 = r2 + HW;
    const A w0 = mc[c], w1 = mc[c + 1], w2 = mc[c + 2], w3 = mc[c + 3];
    if (need_idx) {
      const int32_t ci = static_cast<int32_t>(c);
      _Pragma("omp simd")
      for (int64_t i = 0; i < len; ++i) {
        const A v0 = widen<A>(r0[i]) * w0, v1 = widen<A>(r1[i]) * w1;
        const A v2 = widen<A>(r2[i]) * w2, v3 = widen<A>(r3[i]) * w3;
        s[i] += (v0 + v1) + (v2 + v3);
        const bool g01 = v1 > v0, g23 = v3 > v2;
        const A a = g01 ? v1 : v0, b = g23 ? v3 : v2;
        const int32_t ka = g01 ? ci + 1 : ci, kb = g23 ? ci + 3 : ci + 2;
        const bool gab = b > a;
        const A v = gab ? b : a;
        const int32_t kv = gab ? kb : ka;
        const bool gt = v > m[i];
        m[i] = gt ? v : m[i];
        k[i] = gt ? kv : k[i];
      }
    } else {
      _Pragma("omp simd")
      for (int64_t i = 0; i < len; ++i) {
        const A v0 = widen<A>(r0[i]) * w0, v1 = widen<A>(r1[i]) * w1;
        const A v2 = widen<A>(r2[i]) * w2, v3 = widen<A>(r3[i]) * w3;
        s[i] += (v0 + v1) + (v2 + v3);
        const A a = v1 > v0 ? v1 : v0, b = v3 > v2 ? v3 : v2, v = b > a ? b : a;
        m[i] = v > m[i] ? v : m[i];
      }
    }
  }
  for (; c < C; ++c) {
    const T* row = x0 + c * HW;
    const A w = mc[c];
    const int32_t ci = static_cast<int32_t>(c);
    _Pragma("omp simd")
    for (int64_t i = 0; i < len; ++i) {
      const A v = widen<A>(row[i]) * w;
      s[i] += v;
      const bool gt = v > m[i];
      m[i] = gt ? v : m[i];
      k[i] = gt ? ci : k[i];
    }
  }
}

template <typename T, typename A>
inline void spatial_block(const T* x0, int64_t C, int64_t HW, int64_t len, const A* mc, bool need_idx, A* s, A* m,
                          int32_t* k) {
  spatial_block_generic(x0, C, HW, len, mc, need_idx, s, m, k);
}

}  // namespace cbam_cpu

// Specialisations of the row reductions above for storage type T (float accumulation) that forward to
// an ISA namespace's versions: NS::row_sum_max, NS::row_pool and NS::dot_row, or NS::grad_row<Tail>.
#define CBAM_ROW_REDUCTIONS(NS, T)                                                                              \
  template <>                                                                                                  \
  inline void row_sum_max<T, float>(const T* row, int64_t n, float* sum, float* mx) {                          \
    NS::row_sum_max(row, n, sum, mx);                                                                          \
  }                                                                                                            \
  template <>                                                                                                  \
  inline void row_pool<T, float>(const T* row, int64_t n, bool need_idx, float* avg, float* mx, int32_t* idx) { \
    NS::row_pool(row, n, need_idx, avg, mx, idx);                                                              \
  }                                                                                                            \
  template <>                                                                                                  \
  inline float dot_row<T, float>(const T* row, const float* a, int64_t n) { return NS::dot_row(row, a, n); }
#define CBAM_GRAD_ROW(NS, T)                                                                                    \
  template <>                                                                                                  \
  inline float grad_row<T, float>(const T* g, const T* o, const T* x, int64_t len, float wc, const float* ms,   \
                                  float* acc) {                                                                \
    return o ? NS::grad_row<true>(g, o, x, len, wc, ms, acc) : NS::grad_row<false>(g, o, x, len, wc, ms, acc);  \
  }

// Where the build has AVX2 but not AVX-512, specialisations of the templates above (declared
// before any instantiation: the .cpp files that use them include this header first).
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include "pool_avx2.h"
#endif
// With AVX-512 (F, BW, VL), specialisations for float, bfloat16 and half storage.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "pool_avx512.h"
#endif
#undef CBAM_ROW_REDUCTIONS
#undef CBAM_GRAD_ROW
