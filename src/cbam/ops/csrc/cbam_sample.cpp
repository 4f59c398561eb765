// Fused CBAM forward, one sample at a time: channel pooling, the MLP, channel-wise pooling
// of x * M_c, the k x k conv (+ folded eval-mode BN), the sigmoid and y = x * M_c * M_s all
// run on one sample before the next. A ResNet sample (<= a few MB) stays in the last-level
// cache between the three passes, so x comes from DRAM once instead of three times.
// Threads take whole samples; fused.py uses this only when there are enough samples.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <vector>

#include "out_cache.h"
#include "pool.h"

namespace cbam_cpu {
namespace {

template <typename A>
inline A sigmoid(A z) { return A(1) / (A(1) + std::exp(-z)); }

// mc = sigmoid(W2 relu(W1 avg + b1) + W2 relu(W1 mx + b1) + 2 b2); w1 (hid, C), w2 (C, hid).
template <typename A>
void mlp_gate(const A* avg, const A* mx, int64_t C, int64_t hid, const A* w1, const A* b1, const A* w2,
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
void mlp_gate_group(const at::Tensor& pa, const at::Tensor& pm, const at::Tensor& w1, const A* b1,
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

// Copies the (2, H, W) map `in` into buf as (2, H + 2p, Wp) with zero borders (p = k / 2; Wp leaves
// room for a full 16-lane block past the last column), so the k x k taps need no bounds checks.
template <typename A>
void pad_map(const A* in, int64_t H, int64_t W, int64_t k, std::vector<A>& buf, int64_t& Hp, int64_t& Wp) {
  const int64_t pad = k / 2;
  Hp = H + 2 * pad;
  Wp = (W + kLanes - 1) / kLanes * kLanes + 2 * pad;
  buf.assign(2 * Hp * Wp, A(0));
  for (int64_t ci = 0; ci < 2; ++ci)
    for (int64_t y = 0; y < H; ++y)
      std::copy(in + (ci * H + y) * W, in + (ci * H + y + 1) * W, buf.data() + (ci * Hp + y + pad) * Wp + pad);
}

// out = bias + cross-correlation of the (2, H, W) map `in` with the (2, k, k) kernel, zero padding k/2:
// each block of 16 outputs accumulates all 2 k^2 taps in registers (one store per output).
template <typename A>
void conv_kxk(const A* in, int64_t H, int64_t W, const A* wc, int64_t k, A bias, A* out, std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(in, H, W, k, buf, Hp, Wp);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x0 = 0; x0 < W; x0 += kLanes) {
      A acc[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = bias;
      for (int64_t ci = 0; ci < 2; ++ci)
        for (int64_t dy = 0; dy < k; ++dy) {
          const A* src = buf.data() + (ci * Hp + y + dy) * Wp + x0;
          const A* wr = wc + (ci * k + dy) * k;
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

// The kernel's gradient of conv_kxk for one sample: dw[ci, dy, dx] = sum_{y,x} du[y, x] in[ci, y+dy-p, x+dx-p].
// (torch's conv2d weight gradient took 2-6 ms at (32, 2, 56, 56); this is part of the per-sample pass.)
template <typename A>
void conv_kxk_weight_grad(const A* in, const A* du, int64_t H, int64_t W, int64_t k, A* dw, std::vector<A>& buf) {
  int64_t Hp, Wp;
  pad_map(in, H, W, k, buf, Hp, Wp);
  for (int64_t ci = 0; ci < 2; ++ci)
    for (int64_t dy = 0; dy < k; ++dy)
      for (int64_t dx = 0; dx < k; ++dx) {
        A acc = 0;
        for (int64_t y = 0; y < H; ++y) {
          const A *src = buf.data() + (ci * Hp + y + dy) * Wp + dx, *d = du + y * W;
          _Pragma("omp simd reduction(+:acc)")
          for (int64_t x = 0; x < W; ++x) acc += d[x] * src[x];
        }
        dw[(ci * k + dy) * k + dx] = acc;
      }
}

// The adjoint of conv_kxk: din[ci] += correlation's transpose of dout with the same kernel.
template <typename A>
void conv_kxk_adjoint(const A* dout, int64_t H, int64_t W, const A* wc, int64_t k, A* din) {
  const int64_t pad = k / 2;
  for (int64_t i = 0; i < 2 * H * W; ++i) din[i] = 0;
  for (int64_t y = 0; y < H; ++y) {
    const A* orow = dout + y * W;
    for (int64_t ci = 0; ci < 2; ++ci)
      for (int64_t dy = 0; dy < k; ++dy) {
        const int64_t iy = y + dy - pad;
        if (iy < 0 || iy >= H) continue;
        A* irow = din + (ci * H + iy) * W;
        for (int64_t dx = 0; dx < k; ++dx) {
          const A wv = wc[(ci * k + dy) * k + dx];
          const int64_t lo = std::max<int64_t>(0, pad - dx), hi = std::min<int64_t>(W, W + pad - dx);
          A* dst = irow + dx - pad;
          _Pragma("omp simd")
          for (int64_t x = lo; x < hi; ++x) dst[x] += wv * orow[x];
        }
      }
  }
}

// d p_avg and d p_max from d mc through the MLP (the weight gradients are batched in Python).
template <typename A>
void mlp_input_grad(const A* dmc, const A* mc, const A* avg, const A* mx, int64_t C, int64_t hid, const A* w1,
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

}  // namespace

// Returns [y, mc, ms, p_avg, p_max, idx_c, sd, idx_s]. ms = sigmoid(scale * u + shift) with u the conv
// output (bias included); with apply_gate=false (training-mode BN needs the batch's statistics first)
// y is empty and the ms slot holds u. idx_c / idx_s are empty unless need_idx.
std::vector<at::Tensor> forward_samples(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                        const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& wc,
                                        double conv_bias, double scale, double shift, bool max_first,
                                        bool need_idx, bool apply_gate, int64_t group) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "forward_samples: contiguous NCHW input expected");
  TORCH_CHECK(group >= 1, "forward_samples: group must be >= 1");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t hid = w1.size(0), k = wc.size(-1);
  auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto fo = x.options().dtype(acc);
  TORCH_CHECK(w1.scalar_type() == acc && w2.scalar_type() == acc && wc.scalar_type() == acc,
              "forward_samples: weights must be in the accumulation dtype");
  auto y = apply_gate ? cached_empty_like(x) : at::empty({0}, x.options());
  auto mc = at::empty({N, C}, fo), ms = at::empty({N, HW}, fo);
  auto p_avg = at::empty({N, C}, fo), p_max = at::empty({N, C}, fo), sd = at::empty({N, 2, H, W}, fo);
  auto io = x.options().dtype(at::kInt);
  auto idx_c = need_idx ? at::empty({N, C}, io) : at::empty({0}, io);
  auto idx_s = need_idx ? at::empty({N, HW}, io) : at::empty({0}, io);
  auto pre = need_idx ? at::empty({2, N, hid}, fo) : at::empty({0}, fo);  // MLP pre-activations, for backward
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "forward_samples", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = apply_gate ? y.data_ptr<scalar_t>() : nullptr;
    const A *w1p = w1.data_ptr<A>(), *w2p = w2.data_ptr<A>(), *wcp = wc.data_ptr<A>();
    const A* b1p = b1.numel() ? b1.data_ptr<A>() : nullptr;
    const A* b2p = b2.numel() ? b2.data_ptr<A>() : nullptr;
    A *mcp = mc.data_ptr<A>(), *msp = ms.data_ptr<A>(), *pap = p_avg.data_ptr<A>(), *pmp = p_max.data_ptr<A>();
    A* sdp = sd.data_ptr<A>();
    int32_t* icp = need_idx ? idx_c.data_ptr<int32_t>() : nullptr;
    int32_t* isp = need_idx ? idx_s.data_ptr<int32_t>() : nullptr;
    A* prp = need_idx ? pre.data_ptr<A>() : nullptr;  // (2, N, hid): the avg branch, then the max branch
    const A sc = static_cast<A>(scale), sh = static_cast<A>(shift), cb = static_cast<A>(conv_bias);
    const int64_t avg_ch = max_first ? 1 : 0, max_ch = 1 - avg_ch;
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      std::vector<A> h(std::max<int64_t>(hid, 1)), s(kBlock), m(kBlock), pbuf;
      std::vector<int32_t> kk(kBlock);
      for (int64_t n0 = b; n0 < e; n0 += group) {  // group > 1: pool G samples, one batched MLP, then the rest
        const int64_t n1 = std::min(e, n0 + group);
        for (int64_t n = n0; n < n1; ++n) {
          const scalar_t* xn = xp + n * C * HW;
          A *pa = pap + n * C, *pm = pmp + n * C;
          int32_t* ic = need_idx ? icp + n * C : nullptr;
          for (int64_t c = 0; c < C; ++c)                                 // pass 1: channel pooling
            row_pool(xn + c * HW, HW, need_idx, pa + c, pm + c, need_idx ? ic + c : nullptr);
          if (group == 1)
            mlp_gate(pa, pm, C, hid, w1p, b1p, w2p, b2p, h.data(), mcp + n * C, prp ? prp + n * hid : nullptr,
                     prp ? prp + (N + n) * hid : nullptr);
        }
        if (group > 1)
          mlp_gate_group(p_avg.narrow(0, n0, n1 - n0), p_max.narrow(0, n0, n1 - n0), w1, b1p, w2, b2p,
                         mcp + n0 * C, prp ? prp + n0 * hid : nullptr, prp ? prp + (N + n0) * hid : nullptr);
        for (int64_t n = n0; n < n1; ++n) {
          const scalar_t* xn = xp + n * C * HW;
          const A* g = mcp + n * C;
          A* sdn = sdp + n * 2 * HW;
          for (int64_t p0 = 0; p0 < HW; p0 += kBlock) {                    // pass 2: pooling of x * mc
            const int64_t len = std::min(kBlock, HW - p0);
            spatial_block(xn + p0, C, HW, len, g, need_idx, s.data(), m.data(), kk.data());
            for (int64_t i = 0; i < len; ++i) {
              sdn[avg_ch * HW + p0 + i] = s[i] / static_cast<A>(C);
              sdn[max_ch * HW + p0 + i] = m[i];
            }
            if (need_idx) std::copy(kk.begin(), kk.begin() + len, isp + n * HW + p0);
          }
          A* u = msp + n * HW;
          conv_kxk(sdn, H, W, wcp, k, cb, u, pbuf);
          if (!apply_gate) continue;
          for (int64_t i = 0; i < HW; ++i) u[i] = sigmoid(sc * u[i] + sh);
          apply_sample(xn, C, HW, g, u, yp + n * C * HW);                  // pass 3: y = x * mc * ms
        }
      }
    });
  });
  return {y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, pre};
}

}  // namespace cbam_cpu

namespace cbam_cpu {

// The k x k conv's gradients for a batch, per sample on threads: d sd (N, 2, H, W) and d wc (2, k, k)
// from du (N, H, W) = d conv-output. torch's mkldnn conv and its weight gradient cost ~0.5 ms of
// fixed overhead on (32, 2, 7, 7) maps, more than the arithmetic.
std::vector<at::Tensor> conv_backward(const at::Tensor& du, const at::Tensor& sd, const at::Tensor& wc) {
  TORCH_CHECK(sd.dim() == 4 && sd.size(1) == 2 && sd.is_contiguous() && du.is_contiguous() && wc.is_contiguous() &&
              du.numel() == sd.size(0) * sd.size(2) * sd.size(3) && du.scalar_type() == sd.scalar_type() &&
              wc.scalar_type() == sd.scalar_type(),
              "conv_backward: contiguous du (N, H, W), sd (N, 2, H, W), wc (2, k, k) of one dtype expected");
  const int64_t N = sd.size(0), H = sd.size(2), W = sd.size(3), HW = H * W, k = wc.size(-1);
  auto dsd = at::empty_like(sd), dwc = at::empty({N, 2, k, k}, sd.options());
  AT_DISPATCH_FLOATING_TYPES(sd.scalar_type(), "conv_backward", [&] {
    const scalar_t *dup = du.data_ptr<scalar_t>(), *sdp = sd.data_ptr<scalar_t>(), *wcp = wc.data_ptr<scalar_t>();
    scalar_t *dsdp = dsd.data_ptr<scalar_t>(), *dwp = dwc.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      std::vector<scalar_t> pbuf;
      for (int64_t n = b; n < e; ++n) {
        conv_kxk_adjoint(dup + n * HW, H, W, wcp, k, dsdp + n * 2 * HW);
        conv_kxk_weight_grad(sdp + n * 2 * HW, dup + n * HW, H, W, k, dwp + n * 2 * k * k, pbuf);
      }
    });
  });
  return {dsd, dwc.sum(0)};
}

// Backward per sample (no training-mode BN): one DRAM read of g and x, then row_dot and the input
// gradient from cache. `scale` is d u / d (pre-sigmoid) of the folded eval-mode BN (1 without BN).
// Returns [dx, dmc, dms, dwc]: the full gradients of the two gates, from which Python forms the
// (batched, small) MLP weight gradients, and the conv kernel's gradient per sample (N, 2, k, k).
std::vector<at::Tensor> backward_samples(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mc,
                                         const at::Tensor& ms, const at::Tensor& p_avg, const at::Tensor& p_max,
                                         const at::Tensor& idx_c, const at::Tensor& idx_s, const at::Tensor& gmc,
                                         const at::Tensor& gms, const at::Tensor& w1, const at::Tensor& b1,
                                         const at::Tensor& w2, const at::Tensor& wc, const at::Tensor& sd,
                                         double scale, bool max_first) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && g.is_contiguous(), "backward_samples: contiguous NCHW expected");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t hid = w1.size(0), k = wc.size(-1);
  auto dx = cached_empty_like(x);
  auto dmc = at::empty_like(mc), dms = at::empty_like(ms), dwc = at::empty({N, 2, k, k}, mc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "backward_samples", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t *xp = x.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    const A *mcp = mc.data_ptr<A>(), *msp = ms.data_ptr<A>(), *pap = p_avg.data_ptr<A>(), *pmp = p_max.data_ptr<A>();
    const A *gmcp = gmc.data_ptr<A>(), *gmsp = gms.data_ptr<A>();
    const A *w1p = w1.data_ptr<A>(), *w2p = w2.data_ptr<A>(), *wcp = wc.data_ptr<A>();
    const A* b1p = b1.numel() ? b1.data_ptr<A>() : nullptr;
    const int32_t *icp = idx_c.data_ptr<int32_t>(), *isp = idx_s.data_ptr<int32_t>();
    A *dmcp = dmc.data_ptr<A>(), *dmsp = dms.data_ptr<A>(), *dwcp = dwc.data_ptr<A>();
    const A* sdp = sd.data_ptr<A>();
    const A sc = static_cast<A>(scale);
    const int64_t avg_ch = max_first ? 1 : 0, max_ch = 1 - avg_ch;
    at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
      std::vector<A> acc(kBlock), du(HW), dsd(2 * HW), t(2 * std::max<int64_t>(hid, 1)), dz(C), da(C), dm(C), pbuf;
      for (int64_t n = b; n < e; ++n) {
        const scalar_t *xn = xp + n * C * HW, *gn = gp + n * C * HW;
        scalar_t* dn = dp + n * C * HW;
        const A *mcn = mcp + n * C, *msn = msp + n * HW;
        A *dmcn = dmcp + n * C, *dmsn = dmsp + n * HW;
        const int32_t *ic = icp + n * C, *is = isp + n * HW;
        for (int64_t c = 0; c < C; ++c) dmcn[c] = gmcp[n * C + c];
        for (int64_t p0 = 0; p0 < HW; p0 += kBlock) {           // read g and x: d mc and d ms together
          const int64_t len = std::min(kBlock, HW - p0);
          for (int64_t i = 0; i < len; ++i) acc[i] = 0;
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t *xr = xn + c * HW + p0, *gr = gn + c * HW + p0;
            const A w = mcn[c];
            const A* s = msn + p0;
            A dot = 0;
            _Pragma("omp simd reduction(+:dot)")
            for (int64_t i = 0; i < len; ++i) {
              const A v = static_cast<A>(gr[i]) * static_cast<A>(xr[i]);
              acc[i] += v * w;
              dot += v * s[i];
            }
            dmcn[c] += dot;
          }
          for (int64_t i = 0; i < len; ++i) dmsn[p0 + i] = acc[i] + gmsp[n * HW + p0 + i];
        }
        for (int64_t p = 0; p < HW; ++p) du[p] = dmsn[p] * msn[p] * (A(1) - msn[p]) * sc;
        conv_kxk_adjoint(du.data(), H, W, wcp, k, dsd.data());
        conv_kxk_weight_grad(sdp + n * 2 * HW, du.data(), H, W, k, dwcp + n * 2 * k * k, pbuf);
        A* av = dsd.data() + avg_ch * HW;                        // becomes a = d s_avg / C
        const A* dmax = dsd.data() + max_ch * HW;
        for (int64_t p = 0; p < HW; ++p) av[p] /= static_cast<A>(C);
        for (int64_t c = 0; c < C; ++c) {                         // x from cache: the mean route into d mc
          const scalar_t* xr = xn + c * HW;
          A s = 0;
          _Pragma("omp simd reduction(+:s)")
          for (int64_t p = 0; p < HW; ++p) s += static_cast<A>(xr[p]) * av[p];
          dmcn[c] += s;
        }
        for (int64_t p = 0; p < HW; ++p) dmcn[is[p]] += static_cast<A>(xn[is[p] * HW + p]) * dmax[p];
        mlp_input_grad(dmcn, mcn, pap + n * C, pmp + n * C, C, hid, w1p, b1p, w2p, t.data(), dz.data(), da.data(),
                       dm.data());
        for (int64_t c = 0; c < C; ++c) {                         // g from cache: write dx
          const A w = mcn[c], off = da[c] / static_cast<A>(HW);
          const scalar_t* gr = gn + c * HW;
          scalar_t* dr = dn + c * HW;
          _Pragma("omp simd")
          for (int64_t p = 0; p < HW; ++p)
            dr[p] = static_cast<scalar_t>(static_cast<A>(gr[p]) * w * msn[p] + w * av[p] + off);
          dr[ic[c]] = static_cast<scalar_t>(static_cast<A>(dr[ic[c]]) + dm[c]);
        }
        for (int64_t p = 0; p < HW; ++p) {                        // the spatial max route
          scalar_t* d = dn + is[p] * HW + p;
          *d = static_cast<scalar_t>(static_cast<A>(*d) + mcn[is[p]] * dmax[p]);
        }
      }
    });
  });
  return {dx, dmc, dms, dwc};
}

}  // namespace cbam_cpu
