// Fused CBAM, one sample at a time: channel pooling, the MLP, channel-wise pooling of x * M_c, the
// k x k conv (+ folded eval-mode BN), the sigmoid and y = x * M_c * M_s (optionally the residual
// block's tail, relu(y + identity)) all run on one sample before the next. A ResNet sample (<= a few
// MB) stays in the last-level cache between the passes, so x comes from DRAM once instead of three
// times; the backward likewise reads g and x from DRAM once. Threads take whole samples. Both
// layouts (NCHW and channels_last) share this orchestration; their passes are in layout.h.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <atomic>
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
struct Backward {
  using A = acc_t<T>;
  int64_t N, C, H, W, HW, hid, k, avg_ch, max_ch;
  const T *g, *o, *x;
  T *dx, *did;
  const A *mc, *ms, *pa, *pm, *w1, *b1, *w2, *wc, *sd, *gms;
  const int32_t *ic, *is;
  A *dmc, *dms, *dwc;
  A sc;

  struct Bufs {
    std::vector<A> du, dsd, t, dz, da, dm, off, acc, pbuf;
    std::vector<double> route;
    Bufs(int64_t C, int64_t HW, int64_t hid)
        : du(HW), dsd(2 * HW), t(2 * std::max<int64_t>(hid, 1)), dz(C), da(C), dm(C), off(C), acc(C), route(C) {}
  };

  // The argmax routes index dx: in range, or the flags are set (checked per sample while the indices
  // are in cache, instead of a separate pass over them).
  std::atomic<bool> *bad_c, *bad_s;
  bool routes_valid(const int32_t* icn, const int32_t* isn) const {
    bool ok_c = true, ok_s = true;
    for (int64_t c = 0; c < C; ++c) ok_c &= icn[c] >= 0 && icn[c] < HW;
    for (int64_t p = 0; p < HW; ++p) ok_s &= isn[p] >= 0 && isn[p] < C;
    if (!ok_c) bad_c->store(true, std::memory_order_relaxed);
    if (!ok_s) bad_s->store(true, std::memory_order_relaxed);
    return ok_c && ok_s;
  }

  // Read g and x: dmc[n] += sum_p g x ms, dms[n] = gms + sum_c g x mc (gms absent: zero).
  void reduce(int64_t n, Scratch<A>& w) {
    const int64_t off = n * C * HW;
    if (gms) std::copy(gms + n * HW, gms + (n + 1) * HW, dms + n * HW);
    else std::fill(dms + n * HW, dms + (n + 1) * HW, A(0));  // ms's own gradient unused: zero
    L::reduce(g + off, o ? o + off : nullptr, x + off, C, HW, mc + n * C, ms + n * HW, dmc + n * C, dms + n * HW, w);
  }

  // From du = d conv-output of sample n: the conv's gradients, the mean/max routes into dmc, the MLP's
  // input gradient and dx (x and g now from cache).
  void finish(int64_t n, const A* du, Bufs& b) {
    const int64_t off = n * C * HW;
    const T* xn = x + off;
    const A* mcn = mc + n * C;
    A* dmcn = dmc + n * C;
    const int32_t *isn = is + n * HW, *icn = ic + n * C;
    if (!routes_valid(icn, isn)) return;  // the caller raises; nothing is written through a bad index
    conv_kxk_adjoint(du, H, W, wc, k, b.dsd.data(), b.pbuf);
    conv_kxk_weight_grad(sd + n * 2 * HW, du, H, W, k, dwc + n * 2 * k * k, b.pbuf);
    A* av = b.dsd.data() + avg_ch * HW;  // becomes a = d s_avg / C
    const A* dmax = b.dsd.data() + max_ch * HW;
    for (int64_t p = 0; p < HW; ++p) av[p] /= static_cast<A>(C);
    L::row_dot(xn, C, HW, av, dmcn, b.acc.data());
    // the spatial max routes, summed in double: with few channels one channel collects up to HW terms
    // one after another (C = 1: all of them), where float's sequential sum drifted to 2e-4 relative
    std::fill(b.route.begin(), b.route.end(), 0.0);
    for (int64_t p = 0; p < HW; ++p)
      b.route[isn[p]] += static_cast<double>(widen<A>(xn[L::at(isn[p], p, C, HW)])) * static_cast<double>(dmax[p]);
    for (int64_t c = 0; c < C; ++c) dmcn[c] += static_cast<A>(b.route[c]);
    mlp_input_grad(dmcn, mcn, pa + n * C, pm + n * C, C, hid, w1, b1, w2, b.t.data(), b.dz.data(), b.da.data(),
                   b.dm.data());
    for (int64_t c = 0; c < C; ++c) b.off[c] = b.da[c] / static_cast<A>(HW);
    T* dn = dx + off;
    L::input_grad(g + off, o ? o + off : nullptr, C, HW, mcn, ms + n * HW, av, b.off.data(), dn,
                  did ? did + off : nullptr);
    if constexpr (std::is_same_v<T, A>) {
      for (int64_t c = 0; c < C; ++c) {  // the max-pool routes
        T& d = dn[L::at(c, icn[c], C, HW)];
        d = d + b.dm[c];
      }
      for (int64_t p = 0; p < HW; ++p) {
        T& d = dn[L::at(isn[p], p, C, HW)];
        d = d + mcn[isn[p]] * dmax[p];
      }
    } else {
      route_narrow(n, av, dmax, b, dn);
    }
  }

  // The max-pool routes for float16 / bfloat16 storage: each routed element of dx is formed again in A
  // (input_grad's value, then the channel route, then the spatial one, as the float path adds them)
  // and rounded once, instead of adding to the already rounded value.
  void route_narrow(int64_t n, const A* av, const A* dmax, const Bufs& b, T* dn) const {
    const int64_t off = n * C * HW;
    const T *gn = g + off, *on = o ? o + off : nullptr;
    const A *mcn = mc + n * C, *msn = ms + n * HW;
    const int32_t *isn = is + n * HW, *icn = ic + n * C;
    auto base = [&](int64_t c, int64_t p) {
      const int64_t i = L::at(c, p, C, HW);
      const A gv = on ? grad_at<true, T, A>(gn, on, i) : grad_at<false, T, A>(gn, on, i);
      return dx_value(gv, mcn[c], msn[p], av[p], b.off[c]);
    };
    for (int64_t p = 0; p < HW; ++p) {  // spatial routes, with the channel route where both land
      const int64_t c = isn[p];
      A v = base(c, p);
      if (icn[c] == p) v += b.dm[c];
      dn[L::at(c, p, C, HW)] = to_storage<T>(v + mcn[c] * dmax[p]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t p = icn[c];
      if (isn[p] != c) dn[L::at(c, p, C, HW)] = to_storage<T>(base(c, p) + b.dm[c]);
    }
  }
};

// Calls RUN<Layout, scalar_t>(...) for x's memory layout and dtype.
#define CBAM_DISPATCH_LAYOUT(x, name, RUN, ...)                                       \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, (x).scalar_type(), name, [&] { \
    if (is_nhwc(x)) RUN<NHWC, scalar_t>(__VA_ARGS__);                                  \
    else RUN<NCHW, scalar_t>(__VA_ARGS__);                                             \
  })

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
  std::vector<double> fresh;
  std::vector<double>& buf = bytes <= (4u << 20) ? kept : fresh;
  if (buf.size() * sizeof(double) < bytes) buf.resize((bytes + sizeof(double) - 1) / sizeof(double));
  char* p = reinterpret_cast<char*>(buf.data());
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

// The backward's tensors; empty ones are optional (out: no tail; du: the per-sample pass A runs).
struct BwdArgs {
  at::Tensor g, out, x, mc, ms, p_avg, p_max, idx_c, idx_s, gms, w1, b1, w2, wc, sd, du;
  at::Tensor dx, did, dmc, dms, dwc;  // outputs
  double scale;
  bool max_first;
  std::atomic<bool> bad_c{false}, bad_s{false};  // an argmax route out of range (nothing written through it)
};

template <typename A>
A* ptr_mut(at::Tensor& t) { return t.numel() ? t.data_ptr<A>() : nullptr; }

template <typename L, typename T>
Backward<L, T> make_backward(BwdArgs& a) {
  using A = acc_t<T>;
  Backward<L, T> b;
  b.N = a.x.size(0), b.C = a.x.size(1), b.H = a.x.size(2), b.W = a.x.size(3), b.HW = b.H * b.W;
  b.hid = a.w1.numel() ? a.w1.size(0) : 0, b.k = a.wc.numel() ? a.wc.size(-1) : 0;
  b.avg_ch = a.max_first ? 1 : 0, b.max_ch = 1 - b.avg_ch;
  b.g = a.g.data_ptr<T>(), b.o = ptr_or_null<T>(a.out), b.x = a.x.data_ptr<T>();
  b.dx = ptr_mut<T>(a.dx), b.did = ptr_mut<T>(a.did);
  b.mc = a.mc.data_ptr<A>(), b.ms = a.ms.data_ptr<A>(), b.pa = ptr_or_null<A>(a.p_avg);
  b.pm = ptr_or_null<A>(a.p_max), b.w1 = ptr_or_null<A>(a.w1), b.b1 = ptr_or_null<A>(a.b1);
  b.w2 = ptr_or_null<A>(a.w2), b.wc = ptr_or_null<A>(a.wc), b.sd = ptr_or_null<A>(a.sd);
  b.gms = ptr_or_null<A>(a.gms);
  b.ic = ptr_or_null<int32_t>(a.idx_c), b.is = ptr_or_null<int32_t>(a.idx_s);
  b.dmc = ptr_mut<A>(a.dmc), b.dms = ptr_mut<A>(a.dms), b.dwc = ptr_mut<A>(a.dwc);
  b.sc = static_cast<A>(a.scale);
  b.bad_c = &a.bad_c, b.bad_s = &a.bad_s;
  return b;
}

// With a.du empty: the whole backward per sample (pass A, du from dms, finish); else only finish.
template <typename L, typename T>
void backward_run(BwdArgs& a) {
  using A = acc_t<T>;
  const auto bw = make_backward<L, T>(a);
  const A* dup = ptr_or_null<A>(a.du);
  at::parallel_for(0, bw.N, 1, [&](int64_t b, int64_t e) {
    auto f = bw;  // per-thread copy of the pointers
    typename Backward<L, T>::Bufs bufs(f.C, f.HW, f.hid);
    Scratch<A> w(f.C);
    for (int64_t n = b; n < e; ++n) {
      if (dup) {
        f.finish(n, dup + n * f.HW, bufs);
        continue;
      }
      f.reduce(n, w);
      const A *dms = f.dms + n * f.HW, *ms = f.ms + n * f.HW;
      for (int64_t p = 0; p < f.HW; ++p) bufs.du[p] = dms[p] * ms[p] * (A(1) - ms[p]) * f.sc;
      f.finish(n, bufs.du.data(), bufs);
    }
  });
}

template <typename L, typename T>
void reduce_run(BwdArgs& a) {
  auto bw = make_backward<L, T>(a);
  at::parallel_for(0, bw.N, 1, [&](int64_t b, int64_t e) {
    auto f = bw;
    Scratch<acc_t<T>> w(f.C);
    for (int64_t n = b; n < e; ++n) f.reduce(n, w);
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

// Pass A of the backward alone (training-mode BN, whose gradient needs every sample's dms first):
// -> [dmc = gmc + sum_p g x ms, dms = gms + sum_c g x mc]; g is masked by out > 0 when out is given.
std::vector<at::Tensor> backward_reduce_samples(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                                const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& gmc,
                                                const at::Tensor& gms) {
  const char* fn = "backward_reduce_samples";
  check_grads(g, out, x, mc, ms, fn);
  if (gmc.numel()) check_small(gmc, {mc.size(0), mc.size(1)}, mc.scalar_type(), "gmc", fn);
  if (gms.numel()) check_small(gms, {ms.size(0), ms.size(1)}, ms.scalar_type(), "gms", fn);
  BwdArgs a{g, out, x, mc, ms};
  a.gms = gms, a.dmc = gmc.numel() ? gmc.clone() : at::zeros_like(mc), a.dms = at::empty_like(ms), a.scale = 1.0;
  a.max_first = false;
  CBAM_DISPATCH_LAYOUT(x, "cbam_samples", reduce_run, a);
  return {a.dmc, a.dms};
}

// The backward per sample, reading g (and out) and x from DRAM once. `scale` is d u / d (pre-sigmoid)
// of a folded eval-mode BN (1 without BN). dmc0: gmc (du empty) or pass A's dmc (du given: training-mode
// BN's du, formed from every sample's dms). Returns [dx, d identity (empty without out), dmc, dms (empty
// when du is given), dwc (1, 2, k, k) summed over the samples]; Python forms the MLP's weight gradients.
// Empty dmc0 / gms: those gradients are zero (the gates' own outputs unused).
std::vector<at::Tensor> backward_samples(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                         const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& p_avg,
                                         const at::Tensor& p_max, const at::Tensor& idx_c, const at::Tensor& idx_s,
                                         const at::Tensor& dmc0, const at::Tensor& gms, const at::Tensor& w1,
                                         const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& wc_in,
                                         const at::Tensor& sd, double scale, bool max_first, const at::Tensor& du) {
  return backward_samples_into(g, out, x, mc, ms, p_avg, p_max, idx_c, idx_s, dmc0, gms, w1, b1, w2, wc_in, sd, scale,
                               max_first, du, false, at::Tensor());
}

// backward_samples; with `over_g` (the tail only) the identity's gradient, relu's masked g, is written
// over g itself: the caller owns g, and each element of g is read before its own masked value
// replaces it (a routed element read again later gets the same masked value). A defined `dx_into`
// (x's storage, which the caller owns) receives dx: a sample's dx is written after its last read of x.
std::vector<at::Tensor> backward_samples_into(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                              const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& p_avg,
                                              const at::Tensor& p_max, const at::Tensor& idx_c,
                                              const at::Tensor& idx_s, const at::Tensor& dmc0, const at::Tensor& gms,
                                              const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                              const at::Tensor& wc_in, const at::Tensor& sd, double scale,
                                              bool max_first, const at::Tensor& du, bool over_g,
                                              const at::Tensor& dx_into) {
  const char* fn = "backward_samples";
  const at::Tensor wc = conv_weight(wc_in);
  check_grads(g, out, x, mc, ms, fn);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const auto acc = mc.scalar_type();
  check_weights(w1, b1, w2, at::Tensor(), wc, C, acc, fn);
  const int64_t k = wc.size(-1);
  check_small(p_avg, {N, C}, acc, "p_avg", fn);
  check_small(p_max, {N, C}, acc, "p_max", fn);
  if (dmc0.numel()) check_small(dmc0, {N, C}, acc, "dmc0", fn);
  check_small(idx_c, {N, C}, at::kInt, "idx_c", fn);
  check_small(idx_s, {N, HW}, at::kInt, "idx_s", fn);
  check_small(sd, {N, 2, H, W}, acc, "sd", fn);
  if (du.numel()) check_small(du, {N, HW}, acc, "du", fn);
  else if (gms.numel()) check_small(gms, {N, HW}, acc, "gms", fn);
  BwdArgs a{g, out, x, mc, ms, p_avg, p_max, idx_c, idx_s, gms, w1, b1, w2, wc, sd, du};
  const bool nhwc = is_nhwc(x);
  a.dx = dx_into.defined() ? dx_into : cached_like(x, nhwc);
  a.did = !out.numel() ? at::empty({0}, x.options()) : (over_g ? g : cached_like(x, nhwc));
  a.dmc = dmc0.numel() ? dmc0.clone() : at::zeros_like(mc);
  a.dms = du.numel() ? at::empty({0}, ms.options()) : at::empty_like(ms);
  a.dwc = at::empty({N, 2, k, k}, mc.options()), a.scale = scale, a.max_first = max_first;
  CBAM_DISPATCH_LAYOUT(x, "cbam_samples", backward_run, a);
  TORCH_CHECK(!a.bad_c, fn, ": idx_c holds indices outside [0, ", HW, ")");
  TORCH_CHECK(!a.bad_s, fn, ": idx_s holds indices outside [0, ", C, ")");
  return {a.dx, a.did, a.dmc, a.dms, sum_samples(a.dwc)};
}

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
        conv_kxk_adjoint(dup + n * HW, H, W, wcp, k, dsdp + n * 2 * HW, pbuf);
        conv_kxk_weight_grad(sdp + n * 2 * HW, dup + n * HW, H, W, k, dwp + n * 2 * k * k, pbuf);
      }
    });
  });
  return {dsd, dwc.sum(0)};
}


}  // namespace cbam_cpu
