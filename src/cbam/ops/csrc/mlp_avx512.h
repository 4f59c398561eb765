// AVX-512 float versions of the per-sample channel MLP and its input gradient (sample_common.h's mlp_gate
// and mlp_input_grad), the counterpart of mlp_avx2.h. Forward: four weight rows at a time, so each load of
// avg / mx / h serves four rows and the 8 partial sums are independent FMA chains (the generic loop's one
// chain per dot product was latency-bound: a quarter of the 8x2048x7x7 bf16 channels_last inference,
// perf), and the gate's sigmoid is conv_small.h's vector one, not glibc's scalar expf (6 % of that call).
// Backward: both products with their sums in registers; the generic loops loaded and stored the partial
// sums for every weight row.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "conv_small.h"

namespace cbam_cpu {
namespace sample {
namespace avx512_mlp {

// out[r] = sum_c rows[r][c] v[c] (and out2[r] with v2 when given) for the 4 rows; rows may repeat.
inline void dot4(const float* const* rows, const float* v, const float* v2, int64_t n, float* out, float* out2) {
  __m512 s[4], t[4];
  for (int r = 0; r < 4; ++r) s[r] = _mm512_setzero_ps(), t[r] = _mm512_setzero_ps();
  auto chunk = [&](int64_t c, __mmask16 k) {
    const __m512 a = _mm512_maskz_loadu_ps(k, v + c), b = v2 ? _mm512_maskz_loadu_ps(k, v2 + c) : a;
    for (int r = 0; r < 4; ++r) {
      const __m512 w = _mm512_maskz_loadu_ps(k, rows[r] + c);
      s[r] = _mm512_fmadd_ps(w, a, s[r]);
      if (v2) t[r] = _mm512_fmadd_ps(w, b, t[r]);
    }
  };
  int64_t c = 0;
  for (; c + 16 <= n; c += 16) chunk(c, 0xFFFF);
  if (c < n) chunk(c, static_cast<__mmask16>((1u << (n - c)) - 1));
  for (int r = 0; r < 4; ++r) {
    out[r] = _mm512_reduce_add_ps(s[r]);
    if (v2) out2[r] = _mm512_reduce_add_ps(t[r]);
  }
}

inline __mmask16 lanes(int64_t r) { return r >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << r) - 1); }

// t[0, hid) = sum_c w2[c, :] dz[c] for hid <= 16 V, in registers: P sets of V accumulators take
// alternate rows of w2, so narrow hidden widths still have P independent FMA chains.
template <int V, int P>
inline void w2t_dz(const float* w2, const float* dz, int64_t C, int64_t hid, float* t) {
  __m512 acc[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_ps();
  const __mmask16 last = lanes(hid - 16 * (V - 1));
  auto row = [&](int64_t c, __m512* a) {
    const __m512 d = _mm512_set1_ps(dz[c]);
    const float* r = w2 + c * hid;
    for (int v = 0; v < V - 1; ++v) a[v] = _mm512_fmadd_ps(_mm512_loadu_ps(r + 16 * v), d, a[v]);
    a[V - 1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(last, r + 16 * (V - 1)), d, a[V - 1]);
  };
  int64_t c = 0;
  for (; c + P <= C; c += P)
    for (int p = 0; p < P; ++p) row(c + p, acc[p]);
  for (; c < C; ++c) row(c, acc[0]);
  for (int v = 0; v < V; ++v) {
    __m512 s = acc[0][v];
    for (int p = 1; p < P; ++p) s = _mm512_add_ps(s, acc[p][v]);
    _mm512_mask_storeu_ps(t + 16 * v, v == V - 1 ? last : __mmask16(0xFFFF), s);
  }
}

// d_avg[c0, c0 + 16 V) and d_max over the same channels = sum_j w1[j, c] (ta[j], tm[j]): 2 V accumulators
// over the hid rows, each output written once (the generic loop loaded and stored d_avg and d_max per row).
template <int V>
inline void w1t_block(const float* w1, int64_t C, int64_t hid, const float* ta, const float* tm, int64_t c0,
                      __mmask16 last, float* d_avg, float* d_max) {
  __m512 a[V], m[V];
  for (int v = 0; v < V; ++v) a[v] = _mm512_setzero_ps(), m[v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < hid; ++j) {
    const float* r = w1 + j * C + c0;
    const __m512 x = _mm512_set1_ps(ta[j]), y = _mm512_set1_ps(tm[j]);
    for (int v = 0; v < V; ++v) {
      const __m512 w = _mm512_maskz_loadu_ps(v == V - 1 ? last : __mmask16(0xFFFF), r + 16 * v);
      a[v] = _mm512_fmadd_ps(w, x, a[v]);
      m[v] = _mm512_fmadd_ps(w, y, m[v]);
    }
  }
  for (int v = 0; v < V; ++v) {
    const __mmask16 k = v == V - 1 ? last : __mmask16(0xFFFF);
    _mm512_mask_storeu_ps(d_avg + c0 + 16 * v, k, a[v]);
    _mm512_mask_storeu_ps(d_max + c0 + 16 * v, k, m[v]);
  }
}

}  // namespace avx512_mlp

template <>
inline void mlp_gate<float>(const float* avg, const float* mx, int64_t C, int64_t hid, const float* w1, const float* b1,
                            const float* w2, const float* b2, float* h, float* mc, float* pre_avg, float* pre_max) {
  mlp_gate_rows4([](auto... a) { avx512_mlp::dot4(a...); }, 16, avg, mx, C, hid, w1, b1, w2, b2, h, mc, pre_avg, pre_max);
}

// mlp_input_grad (sample_common.h) with W2^T dz and W1^T t in registers, for hidden widths up to 128
// (wider ones take the generic loops).
template <>
inline void mlp_input_grad<float>(const float* dmc, const float* mc, const float* avg, const float* mx, int64_t C,
                                  int64_t hid, const float* w1, const float* b1, const float* w2, float* t, float* dz,
                                  float* d_avg, float* d_max, const float* pre_avg, const float* pre_max) {
  using namespace avx512_mlp;
  const int64_t V = (hid + 15) / 16;
  if (V < 1 || V > 8) {
    for (int64_t c = 0; c < C; ++c) dz[c] = dmc[c] * mc[c] * (1.0f - mc[c]);
    for (int64_t j = 0; j < 2 * hid; ++j) t[j] = 0;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < hid; ++j) t[j] += w2[c * hid + j] * dz[c];
  } else {
    for (int64_t c = 0; c < C; ++c) dz[c] = dmc[c] * mc[c] * (1.0f - mc[c]);
    switch (V) {
      case 1: w2t_dz<1, 4>(w2, dz, C, hid, t); break;
      case 2: w2t_dz<2, 4>(w2, dz, C, hid, t); break;
      case 3: w2t_dz<3, 2>(w2, dz, C, hid, t); break;
      case 4: w2t_dz<4, 2>(w2, dz, C, hid, t); break;
      case 5: w2t_dz<5, 2>(w2, dz, C, hid, t); break;
      case 6: w2t_dz<6, 2>(w2, dz, C, hid, t); break;
      case 7: w2t_dz<7, 2>(w2, dz, C, hid, t); break;
      default: w2t_dz<8, 2>(w2, dz, C, hid, t); break;
    }
  }
  mlp_relu_masks(t, avg, mx, C, hid, w1, b1, pre_avg, pre_max);
  const float *ta = t, *tm = t + hid;
  int64_t c0 = 0;
  for (; c0 + 64 <= C; c0 += 64) w1t_block<4>(w1, C, hid, ta, tm, c0, 0xFFFF, d_avg, d_max);
  const int64_t rem = C - c0;
  const __mmask16 last = lanes(rem - 16 * ((rem - 1) / 16));
  switch ((rem + 15) / 16) {
    case 0: break;
    case 1: w1t_block<1>(w1, C, hid, ta, tm, c0, last, d_avg, d_max); break;
    case 2: w1t_block<2>(w1, C, hid, ta, tm, c0, last, d_avg, d_max); break;
    case 3: w1t_block<3>(w1, C, hid, ta, tm, c0, last, d_avg, d_max); break;
    default: w1t_block<4>(w1, C, hid, ta, tm, c0, last, d_avg, d_max); break;
  }
}

}  // namespace sample
}  // namespace cbam_cpu
