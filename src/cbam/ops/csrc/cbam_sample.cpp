// Fused CBAM, one sample at a time: channel pooling, the MLP, channel-wise pooling of x * M_c, the
// k x k conv (+ folded eval-mode BN), the sigmoid and y = x * M_c * M_s (optionally the residual
// block's tail, relu(y + identity)) all run on one sample before the next. A ResNet sample (<= a few
// MB) stays in the last-level cache between the passes, so x comes from DRAM once instead of three
// times (the backward, in sample_backward.cpp, likewise reads g and x from DRAM once). Threads take
// whole samples. Both layouts (NCHW and channels_last) share this orchestration; their passes are in
// layout.h.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <atomic>
#include <memory>
#include <type_traits>
#include <vector>

#include "layout.h"
#include "sample_args.h"
#include "sample_common.h"
#include "entries.h"

namespace cbam_cpu {
namespace {
using namespace sample;

template <typename L, typename T>
struct Forward {
  using A = acc_t<T>;
  int64_t N, C, H, W, HW, hid, k, avg_ch, max_ch;
  const T *x, *id;
  T* y;
  const A *w1, *b1, *w2, *b2, *wc;
  A *mc, *ms, *pa, *pm, *sd, *pre;
  int32_t *ic, *is;
  A cb, sc, sh;
  bool need_idx, apply_gate;

  void pool(int64_t n) {  // pass 1: channel pooling
    L::pool_channels(x + n * C * HW, C, HW, need_idx, pa + n * C, pm + n * C, need_idx ? ic + n * C : nullptr);
  }
  void mlp(int64_t n, std::vector<A>& h) {
    mlp_gate(pa + n * C, pm + n * C, C, hid, w1, b1, w2, b2, h.data(), mc + n * C, pre ? pre + n * hid : nullptr,
             pre ? pre + (N + n) * hid : nullptr);
  }
  void rest(int64_t n, Scratch<A>& w, std::vector<A>& pbuf) {  // pass 2, the conv and the gate, pass 3
    const T* xn = x + n * C * HW;
    const A* g = mc + n * C;
    A *sdn = sd + n * 2 * HW, *u = ms + n * HW;
    L::pool_pixels(xn, C, HW, g, need_idx, sdn + avg_ch * HW, sdn + max_ch * HW, need_idx ? is + n * HW : nullptr,
                   w);
    conv_kxk(sdn, H, W, wc, k, cb, u, pbuf);
    if (!apply_gate) return;  // training-mode BN: the gate needs the batch's statistics first
    sigmoid_affine(u, HW, sc, sh);
    L::apply(xn, C, HW, g, u, id ? id + n * C * HW : nullptr, y + n * C * HW);
  }
};


template <typename L, typename T>
void forward_run(Forward<L, T> f, const at::Tensor& p_avg, const at::Tensor& p_max, const at::Tensor& w1,
                 const at::Tensor& w2, int64_t group) {
  using A = acc_t<T>;
  at::parallel_for(0, f.N, 1, [&](int64_t b, int64_t e) {
    std::vector<A> h(std::max<int64_t>(f.hid, 1)), pbuf;
    Scratch<A> w(f.C);
    for (int64_t n0 = b; n0 < e; n0 += group) {  // group > 1: pool G samples, one batched MLP, then the rest
      const int64_t n1 = std::min(e, n0 + group);
      for (int64_t n = n0; n < n1; ++n) {
        f.pool(n);
        if (group == 1) f.mlp(n, h);
      }
      if (group > 1)
        mlp_gate_group(p_avg.narrow(0, n0, n1 - n0), p_max.narrow(0, n0, n1 - n0), w1, f.b1, w2, f.b2,
                       f.mc + n0 * f.C, f.pre ? f.pre + n0 * f.hid : nullptr,
                       f.pre ? f.pre + (f.N + n0) * f.hid : nullptr);
      for (int64_t n = n0; n < n1; ++n) f.rest(n, w, pbuf);
    }
  });
}

}  // namespace

namespace {

// The forward's small per-sample buffers (accumulation dtype, or int32 for the routes); null where
// unused: idx_c, idx_s and pre without need_idx.
struct FwdBufs {
  void *mc, *ms, *pa, *pm, *sd, *pre;
  int32_t *ic, *is;
};

// Checks the arguments shared by both forward entries; returns the conv weight as a (2, k, k).
at::Tensor check_forward(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                         const at::Tensor& b2, const at::Tensor& wc_in, const at::Tensor& identity, const char* fn) {
  const at::Tensor wc = conv_weight(wc_in);
  check_input(x, fn);
  check_like(identity, x, is_nhwc(x), "identity", fn);
  check_weights(w1, b1, w2, b2, wc, x.size(1), x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat, fn);
  return wc;
}

// Runs the per-sample forward over x into y and the buffers b (p_avg / p_max: b.pa / b.pm as (N, C)
// tensors, read only by the grouped MLP, group > 1).
void launch_forward(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                    const at::Tensor& b2, const at::Tensor& wc, double conv_bias, double scale, double shift,
                    bool max_first, bool need_idx, bool apply_gate, int64_t group, const at::Tensor& identity,
                    const at::Tensor& y, const FwdBufs& b, const at::Tensor& p_avg, const at::Tensor& p_max) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const int64_t hid = w1.size(0), k = wc.size(-1), avg_ch = max_first ? 1 : 0;
  CBAM_DISPATCH_LAYOUT(x, "cbam_samples", forward_run,
      {N, C, H, W, HW, hid, k, avg_ch, 1 - avg_ch, x.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(identity),
       apply_gate ? y.data_ptr<scalar_t>() : nullptr, w1.data_ptr<acc_t<scalar_t>>(), ptr_or_null<acc_t<scalar_t>>(b1),
       w2.data_ptr<acc_t<scalar_t>>(), ptr_or_null<acc_t<scalar_t>>(b2), wc.data_ptr<acc_t<scalar_t>>(),
       static_cast<acc_t<scalar_t>*>(b.mc), static_cast<acc_t<scalar_t>*>(b.ms), static_cast<acc_t<scalar_t>*>(b.pa),
       static_cast<acc_t<scalar_t>*>(b.pm), static_cast<acc_t<scalar_t>*>(b.sd), static_cast<acc_t<scalar_t>*>(b.pre),
       b.ic, b.is, static_cast<acc_t<scalar_t>>(conv_bias), static_cast<acc_t<scalar_t>>(scale),
       static_cast<acc_t<scalar_t>>(shift), need_idx, apply_gate},
      p_avg, p_max, w1, w2, group);
}

}  // namespace

// Returns [y, mc, ms (N, 1, H, W), p_avg, p_max, idx_c, sd, idx_s, pre, 0, 0]. ms = sigmoid(scale * u +
// shift) with u the conv output (bias included); with apply_gate=false (training-mode BN needs the
// batch's statistics first) y is empty and the ms slot holds u. idx_c / idx_s / pre are empty unless
// need_idx; the two zeros are the op's BN-statistics outputs where no BN statistics are formed. With a
// non-empty `identity` (x's shape and layout), y = relu(x * mc * ms + identity): the residual block's tail.
std::vector<at::Tensor> forward_samples(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                        const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& wc_in,
                                        double conv_bias, double scale, double shift, bool max_first,
                                        bool need_idx, bool apply_gate, int64_t group, const at::Tensor& identity,
                                        bool inplace) {
  const at::Tensor wc = check_forward(x, w1, b1, w2, b2, wc_in, identity, "forward_samples");
  TORCH_CHECK(group >= 1, "forward_samples: group must be >= 1");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, hid = w1.size(0);
  auto fo = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  auto io = x.options().dtype(at::kInt);
  auto y = apply_gate ? output_for(x, is_nhwc(x), inplace && !need_idx) : at::empty({0}, x.options());
  auto mc = at::empty({N, C}, fo), ms = at::empty({N, 1, H, W}, fo), sd = at::empty({N, 2, H, W}, fo);
  auto p_avg = at::empty({N, C}, fo), p_max = at::empty({N, C}, fo);
  auto idx_c = need_idx ? at::empty({N, C}, io) : at::empty({0}, io);
  auto idx_s = need_idx ? at::empty({N, HW}, io) : at::empty({0}, io);
  auto pre = need_idx ? at::empty({2, N, hid}, fo) : at::empty({0}, fo);  // MLP pre-activations, for backward
  const FwdBufs b{mc.data_ptr(), ms.data_ptr(), p_avg.data_ptr(), p_max.data_ptr(), sd.data_ptr(),
                  need_idx ? pre.data_ptr() : nullptr, need_idx ? idx_c.data_ptr<int32_t>() : nullptr,
                  need_idx ? idx_s.data_ptr<int32_t>() : nullptr};
  launch_forward(x, w1, b1, w2, b2, wc, conv_bias, scale, shift, max_first, need_idx, apply_gate, group, identity, y,
                 b, p_avg, p_max);
  mark_written(y, x);
  return {y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, pre, at::zeros({1}, fo), at::zeros({1}, fo)};
}

// forward_samples' y alone, for inference with the per-sample MLP (group 1): the gates, descriptors
// and pooled vectors go to a buffer of the calling thread that is kept between calls (up to 4 MiB)
// instead of seven tensors per call; at batch 1 their allocation was a quarter of a call's time.
at::Tensor forward_samples_y(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                             const at::Tensor& b2, const at::Tensor& wc_in, double conv_bias, double scale,
                             double shift, bool max_first, const at::Tensor& identity, bool inplace) {
  const at::Tensor wc = check_forward(x, w1, b1, w2, b2, wc_in, identity, "forward_samples_y");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const size_t elem = x.scalar_type() == at::kDouble ? sizeof(double) : sizeof(float);
  const size_t count = static_cast<size_t>(N * (3 * C + 3 * HW)), bytes = count * elem;
  thread_local std::vector<double> kept;  // double: aligned for either accumulation type
  std::unique_ptr<double[]> fresh;         // past 4 MiB: for this call only (and not zero-filled)
  char* p;
  if (bytes <= (4u << 20)) {
    if (kept.size() * sizeof(double) < bytes) kept.resize((bytes + sizeof(double) - 1) / sizeof(double));
    p = reinterpret_cast<char*>(kept.data());
  } else {
    fresh.reset(new double[(bytes + sizeof(double) - 1) / sizeof(double)]);
    p = reinterpret_cast<char*>(fresh.get());
  }
  auto take = [&](int64_t n) { void* r = p; p += n * elem; return r; };
  FwdBufs b{};
  b.mc = take(N * C), b.pa = take(N * C), b.pm = take(N * C), b.ms = take(N * HW), b.sd = take(2 * N * HW);
  auto y = output_for(x, is_nhwc(x), inplace);
  launch_forward(x, w1, b1, w2, b2, wc, conv_bias, scale, shift, max_first, false, true, 1, identity, y, b,
                 at::Tensor(), at::Tensor());
  mark_written(y, x);
  return y;
}

namespace {

template <typename L, typename T>
void apply_run(const at::Tensor& x, const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& identity,
               at::Tensor& y) {
  using A = acc_t<T>;
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const T *xp = x.data_ptr<T>(), *ip = identity.numel() ? identity.data_ptr<T>() : nullptr;
  const A *mcp = mc.data_ptr<A>(), *msp = ms.data_ptr<A>();
  T* yp = y.data_ptr<T>();
  at::parallel_for(0, N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n)
      L::apply(xp + n * C * HW, C, HW, mcp + n * C, msp + n * HW, ip ? ip + n * C * HW : nullptr, yp + n * C * HW);
  });
}

}  // namespace

// y = x * mc * ms per sample (relu(y + identity) with a non-empty identity), in x's layout.
at::Tensor apply_samples(const at::Tensor& x, const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& identity) {
  const char* fn = "apply_samples";
  check_grads(x, at::Tensor(), x, mc, ms, fn);
  check_like(identity, x, is_nhwc(x), "identity", fn);
  auto y = cached_like(x, is_nhwc(x));
  CBAM_DISPATCH_LAYOUT(x, "cbam_samples", apply_run, x, mc, ms, identity, y);
  return y;
}


}  // namespace cbam_cpu
