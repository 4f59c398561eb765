// The per-sample backward of the fused CBAM op (cbam_sample.cpp has the forward): per sample, one read
// of g (and the block tail's output) and x from DRAM, the channel and spatial sums in cache, then the
// conv's and the MLP's input gradients and dx (x and g again from cache). Training-mode BatchNorm
// couples the samples through its statistics: its pass A runs over every sample first. Threads take
// whole samples; both layouts share this orchestration (their passes are in layout.h).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <atomic>
#include <cstring>
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
struct Backward {
  using A = acc_t<T>;
  int64_t N, C, H, W, HW, hid, k, avg_ch, max_ch;
  const T *g, *o, *x;
  T *dx, *did;
  const A *mc, *ms, *pa, *pm, *w1, *b1, *w2, *wc, *sd, *gms, *pre;  // pre: (2, N, hid) or null
  const int32_t *ic, *is;
  A *dmc, *dms, *dwc;
  A sc;

  struct Bufs {
    std::vector<A> du, dsd, t, dz, da, dm, off, acc, pbuf, sv;
    std::vector<double> route;
    Bufs(int64_t C, int64_t HW, int64_t hid)
        : du(HW), dsd(2 * HW), t(2 * std::max<int64_t>(hid, 1)), dz(C), da(C), dm(C), off(C), acc(C), sv(HW), route(C) {}
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
                   b.dm.data(), pre ? pre + n * hid : nullptr, pre ? pre + (N + n) * hid : nullptr);
    for (int64_t c = 0; c < C; ++c) b.off[c] = b.da[c] / static_cast<A>(HW);
    T* dn = dx + off;
    if constexpr (L::kRowRoutes) {
      input_grad_routed(n, av, dmax, b, dn);
    } else {
      L::input_grad(g + off, o ? o + off : nullptr, C, HW, mcn, ms + n * HW, av, b.off.data(), dn,
                    did ? did + off : nullptr);
      routes_after(n, av, dmax, b, dn);
    }
  }

  // NCHW: the max-pool routes added to dx after input_grad's pass.
  void routes_after(int64_t n, const A* av, const A* dmax, const Bufs& b, T* dn) const {
    const A* mcn = mc + n * C;
    const int32_t *isn = is + n * HW, *icn = ic + n * C;
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

  // Pixels per sample below which channels_last's row pass adds the channel routes too: a masked add
  // per 16 channels of every row, against a scalar pass over the C routed elements afterwards (about 40
  // instructions each where a narrow dx is formed again and rounded, 10 for float).
  static constexpr int64_t kChannelRoutesInRows = std::is_same_v<T, A> ? 48 : 160;

  // channels_last: input_grad adds the spatial routes in its row pass (and the channel routes, for
  // small maps); the channel routes of larger maps follow, each routed element formed again where dx
  // is narrow, spatial route included, so it is rounded once.
  void input_grad_routed(int64_t n, const A* av, const A* dmax, Bufs& b, T* dn) const {
    const int64_t off = n * C * HW;
    const A* mcn = mc + n * C;
    const int32_t *isn = is + n * HW, *icn = ic + n * C;
    for (int64_t p = 0; p < HW; ++p) b.sv[p] = mcn[isn[p]] * dmax[p];
    const bool in_rows = HW < kChannelRoutesInRows;
    const RowRoutes<A> rt{isn, b.sv.data(), in_rows ? icn : nullptr, b.dm.data()};
    L::input_grad(g + off, o ? o + off : nullptr, C, HW, mcn, ms + n * HW, av, b.off.data(), dn,
                  did ? did + off : nullptr, rt);
    if (in_rows) return;
    if constexpr (std::is_same_v<T, A>) {
      for (int64_t c = 0; c < C; ++c) {
        T& d = dn[L::at(c, icn[c], C, HW)];
        d = d + b.dm[c];
      }
    } else {
      const T *gn = g + off, *on = o ? o + off : nullptr;
      const A* msn = ms + n * HW;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t p = icn[c], i = L::at(c, p, C, HW);
        A v = dx_value(tail_grad_nobranch(gn, on, i), mcn[c], msn[p], av[p], b.off[c]);
        if (isn[p] == c) v += b.sv[p];
        dn[i] = to_storage<T>(v + b.dm[c]);
      }
    }
  }

  // grad_at for one scalar element (o may be null), the tail's mask as a bit mask: gcc compiled the
  // select to a branch, taken at random (half of a block's outputs are 0), which cost route_narrow half
  // its time.
  static A tail_grad_nobranch(const T* gn, const T* on, int64_t i) {
    static_assert(sizeof(A) == sizeof(uint32_t), "narrow storage accumulates in float");
    const A v = widen<A>(gn[i]);
    if (!on) return v;
    uint32_t u;
    std::memcpy(&u, &v, sizeof(u));
    u &= 0u - static_cast<uint32_t>(widen<A>(on[i]) > A(0));
    A r;
    std::memcpy(&r, &u, sizeof(r));
    return r;
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
      return dx_value(tail_grad_nobranch(gn, on, i), mcn[c], msn[p], av[p], b.off[c]);
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

// The backward's tensors; empty ones are optional (out: no tail; du: the per-sample pass A runs).
struct BwdArgs {
  at::Tensor g, out, x, mc, ms, p_avg, p_max, idx_c, idx_s, gms, w1, b1, w2, wc, sd, du, pre;
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
  b.gms = ptr_or_null<A>(a.gms), b.pre = ptr_or_null<A>(a.pre);
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
// Empty dmc0 / gms: those gradients are zero (the gates' own outputs unused). `pre`: the forward's
// (2, N, hid) MLP pre-activations, whose signs are the hidden ReLUs' masks (empty: formed again).
std::vector<at::Tensor> backward_samples(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                         const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& p_avg,
                                         const at::Tensor& p_max, const at::Tensor& idx_c, const at::Tensor& idx_s,
                                         const at::Tensor& dmc0, const at::Tensor& gms, const at::Tensor& w1,
                                         const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& wc_in,
                                         const at::Tensor& sd, double scale, bool max_first, const at::Tensor& du,
                                         const at::Tensor& pre) {
  return backward_samples_into(g, out, x, mc, ms, p_avg, p_max, idx_c, idx_s, dmc0, gms, w1, b1, w2, wc_in, sd, scale,
                               max_first, du, false, at::Tensor(), pre);
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
                                              const at::Tensor& dx_into, const at::Tensor& pre) {
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
  if (pre.numel()) check_small(pre, {2, N, w1.size(0)}, acc, "pre", fn);
  BwdArgs a{g, out, x, mc, ms, p_avg, p_max, idx_c, idx_s, gms, w1, b1, w2, wc, sd, du, pre};
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
