// Per-sample building blocks shared by the NCHW and NHWC per-sample kernels (cbam_sample.cpp): the
// channel MLP (per sample, or batched over a group of samples) and its input gradient; the k x k
// conv on the (2, H, W) descriptor map and the gate's sigmoid are in conv_small.h. All work in the
// accumulation type A on small buffers; the layouts differ only in the passes over x (layout.h).
#pragma once
#include <ATen/ATen.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "conv_small.h"

namespace cbam_cpu {
namespace sample {

// mc = sigmoid(W2 relu(W1 avg + b1) + W2 relu(W1 mx + b1) + 2 b2); w1 (hid, C), w2 (C, hid).
template <typename A>
inline void mlp_gate(const A* avg, const A* mx, int64_t C, int64_t hid, const A* w1, const A* b1, const A* w2,
              const A* b2, A* h, A* mc, A* pre_avg, A* pre_max) {
  for (int64_t j = 0; j < hid; ++j) {
    const A* wr = w1 + j * C;
    A sa = 0, sm = 0;
    _Pragma("omp simd reduction(+:sa, sm)")
    for (int64_t c = 0; c < C; ++c) { sa += wr[c] * avg[c]; sm += wr[c] * mx[c]; }
    const A b = b1 ? b1[j] : A(0);
    if (pre_avg) { pre_avg[j] = sa + b; pre_max[j] = sm + b; }  // kept for backward (its relu masks)
    h[j] = std::max(sa + b, A(0)) + std::max(sm + b, A(0));
  }
  for (int64_t c = 0; c < C; ++c) {
    const A* wr = w2 + c * hid;
    A z = b2 ? 2 * b2[c] : A(0);
    for (int64_t j = 0; j < hid; ++j) z += wr[j] * h[j];
    mc[c] = sigmoid(z);
  }
}

// mlp_gate for float through an ISA's four-row dot product dot4(rows, v, v2, n, out, out2) (mlp_avx2.h,
// mlp_avx512.h): each load of avg / mx / h serves four weight rows, and the 8 partial sums are
// independent FMA chains. Hidden widths below min_hid (about a vector) take plain dot products in the
// second layer instead of dot4's horizontal sums; the gate's sigmoid is the vector sigmoid_affine.
template <typename Dot4>
inline void mlp_gate_rows4(Dot4 dot4, int64_t min_hid, const float* avg, const float* mx, int64_t C, int64_t hid,
                           const float* w1, const float* b1, const float* w2, const float* b2, float* h, float* mc,
                           float* pre_avg, float* pre_max) {
  const float* rows[4];
  float sa[4], sm[4];
  for (int64_t j = 0; j < hid; j += 4) {
    const int64_t nr = std::min<int64_t>(4, hid - j);
    for (int64_t r = 0; r < 4; ++r) rows[r] = w1 + (j + std::min(r, nr - 1)) * C;
    dot4(rows, avg, mx, C, sa, sm);
    for (int64_t r = 0; r < nr; ++r) {
      const float b = b1 ? b1[j + r] : 0.0f;
      if (pre_avg) { pre_avg[j + r] = sa[r] + b; pre_max[j + r] = sm[r] + b; }  // kept for backward
      h[j + r] = std::max(sa[r] + b, 0.0f) + std::max(sm[r] + b, 0.0f);
    }
  }
  for (int64_t c = 0; c < C; c += 4) {  // the pre-activations into mc, then one sigmoid over them
    const int64_t nr = std::min<int64_t>(4, C - c);
    if (hid >= min_hid) {
      for (int64_t r = 0; r < 4; ++r) rows[r] = w2 + (c + std::min(r, nr - 1)) * hid;
      dot4(rows, h, nullptr, hid, sa, nullptr);
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

// mlp_gate for G samples at once: pa, pm, mc are (G, C) row blocks. Per sample the MLP is three
// mat-vecs that stream every weight from cache (at C = 2048 the 2 MB of weights come from L3 for
// each sample: ~44 us); as a (G, C) x (C, hid) matmul each weight serves G samples (~21 us per
// sample at G = 16). fused.py asks for it only where the weights are large and G is >= 8: below
// that BLAS is slower than the mat-vecs.
template <typename A>
inline void mlp_gate_group(const at::Tensor& pa, const at::Tensor& pm, const at::Tensor& w1, const A* b1,
                    const at::Tensor& w2, const A* b2, A* mc, A* pre_avg, A* pre_max) {
  const int64_t G = pa.size(0), C = pa.size(1), hid = w1.size(0);
  auto w1t = w1.t();
  auto ha = at::mm(pa, w1t), hm = at::mm(pm, w1t);
  A *hap = ha.data_ptr<A>(), *hmp = hm.data_ptr<A>();
  for (int64_t i = 0; i < G; ++i)
    for (int64_t j = 0; j < hid; ++j) {
      const A b = b1 ? b1[j] : A(0);
      if (pre_avg) { pre_avg[i * hid + j] = hap[i * hid + j] + b; pre_max[i * hid + j] = hmp[i * hid + j] + b; }
      hap[i * hid + j] = std::max(hap[i * hid + j] + b, A(0)) + std::max(hmp[i * hid + j] + b, A(0));
    }
  auto z = at::mm(ha, w2.t());
  const A* zp = z.data_ptr<A>();
  for (int64_t i = 0; i < G; ++i)
    for (int64_t c = 0; c < C; ++c) mc[i * C + c] = sigmoid(zp[i * C + c] + (b2 ? 2 * b2[c] : A(0)));
}

// The hidden ReLUs' masks applied to t[0, hid) (d h, shared by both branches): t[j] for the avg branch and
// t[hid + j] for the max branch, 0 where the branch's pre-activation is <= 0. The masks come from the
// forward's pre-activations where given (pre_avg / pre_max: the values the weight gradients use too, so a
// pre-activation within rounding of 0 gets one mask for all gradients), else they are formed again from w1.
template <typename A>
inline void mlp_relu_masks(A* t, const A* avg, const A* mx, int64_t C, int64_t hid, const A* w1, const A* b1,
                           const A* pre_avg, const A* pre_max) {
  for (int64_t j = 0; j < hid; ++j) {
    A za, zm;
    if (pre_avg) {
      za = pre_avg[j], zm = pre_max[j];
    } else {
      const A* wr = w1 + j * C;
      A sa = 0, sm = 0;
      _Pragma("omp simd reduction(+:sa, sm)")
      for (int64_t c = 0; c < C; ++c) { sa += wr[c] * avg[c]; sm += wr[c] * mx[c]; }
      const A b = b1 ? b1[j] : A(0);
      za = sa + b, zm = sm + b;
    }
    t[hid + j] = zm > 0 ? t[j] : A(0);
    t[j] = za > 0 ? t[j] : A(0);
  }
}

// d p_avg and d p_max from d mc through the MLP (the weight gradients are batched in Python); t holds
// 2 hid values of scratch, dz C.
template <typename A>
inline void mlp_input_grad(const A* dmc, const A* mc, const A* avg, const A* mx, int64_t C, int64_t hid, const A* w1,
                    const A* b1, const A* w2, A* t, A* dz, A* d_avg, A* d_max, const A* pre_avg = nullptr,
                    const A* pre_max = nullptr) {
  for (int64_t c = 0; c < C; ++c) dz[c] = dmc[c] * mc[c] * (A(1) - mc[c]);
  for (int64_t j = 0; j < 2 * hid; ++j) t[j] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A* wr = w2 + c * hid;
    for (int64_t j = 0; j < hid; ++j) t[j] += wr[j] * dz[c];
  }
  mlp_relu_masks(t, avg, mx, C, hid, w1, b1, pre_avg, pre_max);
  for (int64_t c = 0; c < C; ++c) { d_avg[c] = 0; d_max[c] = 0; }
  for (int64_t j = 0; j < hid; ++j) {
    const A* wr = w1 + j * C;
    const A ta = t[j], tm = t[hid + j];
    _Pragma("omp simd")
    for (int64_t c = 0; c < C; ++c) { d_avg[c] += wr[c] * ta; d_max[c] += wr[c] * tm; }
  }
}

}  // namespace sample
}  // namespace cbam_cpu

// Float specialisations of the templates above for AVX2 builds without AVX-512 and for AVX-512 builds
// (declared before any instantiation: the .cpp files that use them include this header first).
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include "mlp_avx2.h"
#endif
#if defined(__AVX512F__)
#include "mlp_avx512.h"
#endif
