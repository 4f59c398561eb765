// AVX-512 float version of the per-sample channel MLP (sample_common.h's mlp_gate), the counterpart of
// mlp_avx2.h. Four weight rows at a time: each load of avg / mx / h serves four rows, and the 8 partial
// sums are independent FMA chains. The generic loop's one chain per dot product was latency-bound
// (8x2048x7x7 bf16 channels_last inference: a quarter of the forward pass, perf), and its scalar expf
// took 6 % of that call; here the gate's sigmoid is conv_small.h's vector one.
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

}  // namespace avx512_mlp

template <>
inline void mlp_gate<float>(const float* avg, const float* mx, int64_t C, int64_t hid, const float* w1, const float* b1,
                            const float* w2, const float* b2, float* h, float* mc, float* pre_avg, float* pre_max) {
  const float* rows[4];
  float sa[4], sm[4];
  for (int64_t j = 0; j < hid; j += 4) {
    const int64_t nr = std::min<int64_t>(4, hid - j);
    for (int64_t r = 0; r < 4; ++r) rows[r] = w1 + (j + std::min(r, nr - 1)) * C;
    avx512_mlp::dot4(rows, avg, mx, C, sa, sm);
    for (int64_t r = 0; r < nr; ++r) {
      const float b = b1 ? b1[j + r] : 0.0f;
      if (pre_avg) { pre_avg[j + r] = sa[r] + b; pre_max[j + r] = sm[r] + b; }  // kept for backward
      h[j + r] = std::max(sa[r] + b, 0.0f) + std::max(sm[r] + b, 0.0f);
    }
  }
  // the pre-activations into mc, then one vector sigmoid over them; hidden widths below a vector take
  // plain dot products instead of dot4's horizontal sums
  for (int64_t c = 0; c < C; c += 4) {
    const int64_t nr = std::min<int64_t>(4, C - c);
    if (hid >= 16) {
      for (int64_t r = 0; r < 4; ++r) rows[r] = w2 + (c + std::min(r, nr - 1)) * hid;
      avx512_mlp::dot4(rows, h, nullptr, hid, sa, nullptr);
    } else {
      for (int64_t r = 0; r < nr; ++r) {
        const float* wr = w2 + (c + r) * hid;
        sa[r] = 0.0f;
        for (int64_t j = 0; j < hid; ++j) sa[r] += wr[j] * h[j];
      }
    }
    for (int64_t r = 0; r < nr; ++r) mc[c + r] = sa[r] + (b2 ? 2 * b2[c + r] : 0.0f);
  }
  sigmoid_affine<float>(mc, C, 1.0f, 0.0f);
}

}  // namespace sample
}  // namespace cbam_cpu
