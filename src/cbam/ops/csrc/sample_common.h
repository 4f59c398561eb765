// Per-sample building blocks shared by the NCHW and NHWC per-sample kernels (cbam_sample.cpp): the
// channel MLP (per sample, or batched over a group of samples), the k x k conv on the (2, H, W)
// descriptor map with its two gradients, and the MLP's input gradient. All work in the
// accumulation type A on small buffers; the layouts differ only in the passes over x (layout.h).
#pragma once
#include <ATen/ATen.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace cbam_cpu {
namespace sample {

template <typename A>
inline A sigmoid(A z) { return A(1) / (A(1) + std::exp(-z)); }

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

constexpr int64_t kLanes = 16;  // outputs per register block of the k x k conv

// Copies the (ch, H, W) map `in` into buf as (ch, H + 2p, Wp) with zero borders (p = k / 2; Wp leaves
// room for a full 16-lane block past the last column), so the k x k taps need no bounds checks.
template <typename A>
inline void pad_map(const A* in, int64_t ch, int64_t H, int64_t W, int64_t k, std::vector<A>& buf, int64_t& Hp,
                    int64_t& Wp) {
  const int64_t pad = k / 2;
  Hp = H + 2 * pad;
  Wp = (W + kLanes - 1) / kLanes * kLanes + 2 * pad;
  buf.assign(ch * Hp * Wp, A(0));
  for (int64_t ci = 0; ci < ch; ++ci)
    for (int64_t y = 0; y < H; ++y)
      std::copy(in + (ci * H + y) * W, in + (ci * H + y + 1) * W, buf.data() + (ci * Hp + y + pad) * Wp + pad);
}

// out[y, x] = bias + sum_{c, dy, dx} P[c, y + dy, x + dx] w[c, dy, dx] over a padded (ch, Hp, Wp) map P:
// each block of 16 outputs accumulates all ch k^2 taps in registers (one store per output).
template <typename A>
inline void correlate(const A* P, int64_t ch, int64_t Hp, int64_t Wp, const A* w, int64_t k, int64_t H, int64_t W,
                      A bias, A* out) {
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x0 = 0; x0 < W; x0 += kLanes) {
      A acc[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = bias;
      for (int64_t ci = 0; ci < ch; ++ci)
        for (int64_t dy = 0; dy < k; ++dy) {
          const A* src = P + (ci * Hp + y + dy) * Wp + x0;
          const A* wr = w + (ci * k + dy) * k;
          for (int64_t dx = 0; dx < k; ++dx) {
            const A wv = wr[dx];
            _Pragma("omp simd")
            for (int64_t l = 0; l < kLanes; ++l) acc[l] += wv * src[dx + l];
          }
        }
      const int64_t n = std::min(kLanes, W - x0);
      for (int64_t l = 0; l < n; ++l) out[y * W + x0 + l] = acc[l];
    }
}

// out = bias + cross-correlation of the (2, H, W) map `in` with the (2, k, k) kernel, zero padding k/2.
template <typename A>
inline void conv_kxk(const A* in, int64_t H, int64_t W, const A* wc, int64_t k, A bias, A* out, std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(in, 2, H, W, k, buf, Hp, Wp);
  correlate(buf.data(), 2, Hp, Wp, wc, k, H, W, bias, out);
}

// The kernel's gradient of conv_kxk for one sample: dw[ci, dy, dx] = sum_{y,x} du[y, x] in[ci, y+dy-p, x+dx-p].
// Each tap accumulates 16-lane partial sums in registers over all rows (one horizontal sum per tap, not
// one per row); du is padded with zeros to whole 16-lane blocks.
template <typename A>
inline void conv_kxk_weight_grad(const A* in, const A* du, int64_t H, int64_t W, int64_t k, A* dw,
                                 std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(in, 2, H, W, k, buf, Hp, Wp);
  const int64_t Wb = (W + kLanes - 1) / kLanes * kLanes;
  std::vector<A> d(H * Wb, A(0));
  for (int64_t y = 0; y < H; ++y) std::copy(du + y * W, du + (y + 1) * W, d.data() + y * Wb);
  for (int64_t ci = 0; ci < 2; ++ci)
    for (int64_t dy = 0; dy < k; ++dy)
      for (int64_t dx = 0; dx < k; ++dx) {
        A a[kLanes] = {};
        for (int64_t y = 0; y < H; ++y) {
          const A *src = buf.data() + (ci * Hp + y + dy) * Wp + dx, *dv = d.data() + y * Wb;
          for (int64_t x0 = 0; x0 < Wb; x0 += kLanes) {
            _Pragma("omp simd")
            for (int64_t l = 0; l < kLanes; ++l) a[l] += dv[x0 + l] * src[x0 + l];
          }
        }
        A s = 0;
        for (int64_t l = 0; l < kLanes; ++l) s += a[l];
        dw[(ci * k + dy) * k + dx] = s;
      }
}

// The adjoint of conv_kxk: din[ci] = the correlation of the padded dout with ci's kernel flipped in both axes.
template <typename A>
inline void conv_kxk_adjoint(const A* dout, int64_t H, int64_t W, const A* wc, int64_t k, A* din,
                             std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(dout, 1, H, W, k, buf, Hp, Wp);
  std::vector<A> flipped(k * k);
  for (int64_t ci = 0; ci < 2; ++ci) {
    for (int64_t i = 0; i < k * k; ++i) flipped[i] = wc[ci * k * k + k * k - 1 - i];
    correlate(buf.data(), 1, Hp, Wp, flipped.data(), k, H, W, A(0), din + ci * H * W);
  }
}

// d p_avg and d p_max from d mc through the MLP (the weight gradients are batched in Python).
template <typename A>
inline void mlp_input_grad(const A* dmc, const A* mc, const A* avg, const A* mx, int64_t C, int64_t hid, const A* w1,
                    const A* b1, const A* w2, A* t, A* dz, A* d_avg, A* d_max) {
  for (int64_t c = 0; c < C; ++c) dz[c] = dmc[c] * mc[c] * (A(1) - mc[c]);
  for (int64_t j = 0; j < 2 * hid; ++j) t[j] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const A* wr = w2 + c * hid;
    for (int64_t j = 0; j < hid; ++j) t[j] += wr[j] * dz[c];
  }
  for (int64_t j = 0; j < hid; ++j) {  // the ReLU masks of the two branches
    const A* wr = w1 + j * C;
    A sa = 0, sm = 0;
    _Pragma("omp simd reduction(+:sa, sm)")
    for (int64_t c = 0; c < C; ++c) { sa += wr[c] * avg[c]; sm += wr[c] * mx[c]; }
    const A b = b1 ? b1[j] : A(0);
    t[hid + j] = sm + b > 0 ? t[j] : A(0);
    t[j] = sa + b > 0 ? t[j] : A(0);
  }
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
