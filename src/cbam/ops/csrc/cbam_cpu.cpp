// Memory-pass kernels of fused CBAM for contiguous NCHW tensors on the CPU.
//
// The small parts (MLP, 7x7 conv, BN, sigmoid) run as ordinary torch ops on
// (N, C) and (N, H*W) tensors; these kernels are the passes over the full
// feature map, each reading x (and the incoming gradient) once:
//   forward : channel_pool (read x), spatial_pool (read x), apply (read x [and the identity], write y)
//   backward: bwd_reduce (read g, x), row_dot (read x), input_grad (read g, write dx)
// Accumulation is in float (double for double inputs). Work is split with
// at::parallel_for over rows or over (sample, block of pixels). The per-sample forward
// that keeps a sample in cache across the three passes is in cbam_sample.cpp.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "layout.h"
#include "out_cache.h"
#include "pool.h"
#include "sample_args.h"
#include "entries.h"


namespace {
using namespace cbam_cpu;

// Per (n, c) row over H*W: mean, max and first argmax.
std::vector<at::Tensor> channel_pool(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "channel_pool: contiguous NCHW input expected");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto avg = at::empty({N, C}, x.options().dtype(acc_type));
  auto mx = at::empty({N, C}, x.options().dtype(acc_type));
  auto idx = at::empty({N, C}, x.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "channel_pool", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    A* ap = avg.data_ptr<A>();
    A* mp = mx.data_ptr<A>();
    int32_t* ip = idx.data_ptr<int32_t>();
    at::parallel_for(0, N * C, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) row_pool(xp + r * HW, HW, true, ap + r, mp + r, ip + r);
    });
  });
  return {avg, mx, idx};
}

// Per (n, pixel) over channels of x * mc: mean, max and (if need_idx) first argmax.
std::vector<at::Tensor> spatial_pool(const at::Tensor& x, const at::Tensor& mc, bool need_idx) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "spatial_pool: contiguous NCHW input expected");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t nb = (HW + kBlock - 1) / kBlock;
  auto avg = at::empty({N, HW}, mc.options());
  auto mx = at::empty({N, HW}, mc.options());
  auto idx = at::empty({N, HW}, mc.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spatial_pool", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const A* cp = mc.data_ptr<A>();
    A* ap = avg.data_ptr<A>();
    A* mp = mx.data_ptr<A>();
    int32_t* ip = idx.data_ptr<int32_t>();
    at::parallel_for(0, N * nb, 1, [&](int64_t b, int64_t e) {
      A s[kBlock];
      int32_t k[kBlock];
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / nb, p0 = (t % nb) * kBlock, len = std::min(kBlock, HW - p0);
        spatial_block(xp + n * C * HW + p0, C, HW, len, cp + n * C, need_idx, s, mp + n * HW + p0, k);
        for (int64_t i = 0; i < len; ++i) ap[n * HW + p0 + i] = s[i] / static_cast<A>(C);
        if (need_idx) std::copy(k, k + len, ip + n * HW + p0);
      }
    });
  });
  if (!need_idx) idx.zero_();
  return {avg, mx, idx};
}

// y = x * mc[n, c] * ms[n, p], or with the block tail relu(y + identity) in the same pass (each element
// rounded once to x's dtype, and y never written and read back).
at::Tensor apply(const at::Tensor& x, const at::Tensor& mc, const at::Tensor& ms,
                 const c10::optional<at::Tensor>& identity, bool inplace) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "apply: contiguous NCHW input expected");
  const bool tail = identity.has_value() && identity->defined();
  TORCH_CHECK(!tail || (identity->sizes() == x.sizes() && identity->scalar_type() == x.scalar_type() &&
                        identity->is_contiguous()),
              "apply: identity must be a contiguous NCHW tensor of x's shape ", x.sizes(), " and dtype");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto y = output_for(x, false, inplace);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "apply", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ip = tail ? identity->data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    const A* cp = mc.data_ptr<A>();
    const A* sp = ms.data_ptr<A>();
    at::parallel_for(0, N * C, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)  // row r: one channel plane, as the per-sample pass takes it
        sample::NCHW::apply(xp + r * HW, 1, HW, cp + r, sp + (r / C) * HW, ip ? ip + r * HW : nullptr, yp + r * HW);
    });
  });
  mark_written(y, x);
  return y;
}

// One read of g and x: r_c[n, c] = sum_p g*x*ms[n, p]  and  r_s[n, p] = sum_c g*x*mc[n, c].
std::vector<at::Tensor> bwd_reduce(const at::Tensor& g, const at::Tensor& x, const at::Tensor& mc,
                                   const at::Tensor& ms) {
  TORCH_CHECK(x.is_contiguous() && g.is_contiguous(), "bwd_reduce: contiguous NCHW tensors expected");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const int64_t nb = (HW + kBlock - 1) / kBlock;
  auto part = at::zeros({N, nb, C}, mc.options());  // per-block partial sums of r_c, reduced below
  auto r_s = at::empty({N, HW}, mc.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bwd_reduce", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const A* cp = mc.data_ptr<A>();
    const A* sp = ms.data_ptr<A>();
    A* pp = part.data_ptr<A>();
    A* rp = r_s.data_ptr<A>();
    at::parallel_for(0, N * nb, 1, [&](int64_t b, int64_t e) {
      A acc[kBlock];
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / nb, blk = t % nb, p0 = blk * kBlock, len = std::min(kBlock, HW - p0);
        const A* s = sp + n * HW + p0;
        for (int64_t i = 0; i < len; ++i) acc[i] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* xr = xp + (n * C + c) * HW + p0;
          const scalar_t* gr = gp + (n * C + c) * HW + p0;
          pp[(n * nb + blk) * C + c] =
              grad_row(gr, static_cast<const scalar_t*>(nullptr), xr, len, cp[n * C + c], s, acc);
        }
        for (int64_t i = 0; i < len; ++i) rp[n * HW + p0 + i] = acc[i];
      }
    });
  });
  return {part.sum(1), r_s};
}

// g where out > 0, else 0 (relu's backward through the block tail; a NaN output passes no gradient,
// as the per-sample kernels' mask): torch.where took 1.4-1.7 ms on 8x2048x7x7 with 2 threads, this
// one pass ~0.05 ms. 16-bit floats are compared on their bits: v > 0 iff 0 < bits <= +inf's bits (so a
// positive subnormal output passes its gradient even with flush-denormal set, where a float compare
// would see 0).
at::Tensor relu_grad(const at::Tensor& g, const at::Tensor& out) {
  TORCH_CHECK(g.sizes() == out.sizes() && g.scalar_type() == out.scalar_type() && g.strides() == out.strides() &&
              g.is_non_overlapping_and_dense(), "relu_grad: g and out of one shape, dtype and dense layout expected");
  auto r = at::empty_like(g);
  const int64_t n = g.numel();
  auto run = [&](auto* gp, auto* op, auto* rp, auto positive) {
    at::parallel_for(0, n, 1 << 14, [&](int64_t b, int64_t e) {
      _Pragma("omp simd")
      for (int64_t i = b; i < e; ++i) {
        const auto v = gp[i];  // loaded unconditionally: a select, not a branch per element
        rp[i] = positive(op[i]) ? v : decltype(v)(0);
      }
    });
  };
  auto bits16 = [&](uint16_t inf) {
    run(static_cast<const uint16_t*>(g.data_ptr()), static_cast<const uint16_t*>(out.data_ptr()),
        static_cast<uint16_t*>(r.data_ptr()), [inf](uint16_t v) { return v > 0 && v <= inf; });
  };
  if (g.scalar_type() == at::kBFloat16) bits16(0x7F80);
  else if (g.scalar_type() == at::kHalf) bits16(0x7C00);
  else
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "relu_grad", [&] {
      run(g.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), r.data_ptr<scalar_t>(),
          [](scalar_t v) { return v > scalar_t(0); });
    });
  return r;
}

// out[n, c] = sum_p x[n, c, p] * a[n, p]
at::Tensor row_dot(const at::Tensor& x, const at::Tensor& a) {
  TORCH_CHECK(x.is_contiguous(), "row_dot: contiguous NCHW input expected");
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto out = at::empty({N, C}, a.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "row_dot", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const A* ap = a.data_ptr<A>();
    A* op = out.data_ptr<A>();
    at::parallel_for(0, N * C, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = xp + r * HW;
        const A* ar = ap + (r / C) * HW;
        A s = 0;
        _Pragma("omp simd reduction(+:s)")
        for (int64_t i = 0; i < HW; ++i) s += widen<A>(xr[i]) * ar[i];
        op[r] = s;
      }
    });
  });
  return out;
}

// dx = g*mc*ms + mc*a[n, p] + b[n, c]; then dx[n, idx_s, p] += mc[n, idx_s]*vs[n, p]
// and dx[n, c, idx_c] += vc[n, c] (the max-pool routes; each target element is distinct).
at::Tensor input_grad(const at::Tensor& g, const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& a,
                      const at::Tensor& bc, const at::Tensor& idx_s, const at::Tensor& vs,
                      const at::Tensor& idx_c, const at::Tensor& vc) {
  TORCH_CHECK(g.is_contiguous(), "input_grad: contiguous NCHW gradient expected");
  const int64_t N = g.size(0), C = g.size(1), HW = g.size(2) * g.size(3);
  auto dx = cached_empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "input_grad", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* dp = dx.data_ptr<scalar_t>();
    const A *cp = mc.data_ptr<A>(), *sp = ms.data_ptr<A>(), *ap = a.data_ptr<A>(), *bp = bc.data_ptr<A>();
    const A *vsp = vs.data_ptr<A>(), *vcp = vc.data_ptr<A>();
    const int32_t *isp = idx_s.data_ptr<int32_t>(), *icp = idx_c.data_ptr<int32_t>();
    constexpr bool narrow = !std::is_same_v<scalar_t, A>;
    // dx at pixel i of row r (sample n) before the routes, in A; the float types reuse the stored value
    auto routed_base = [&](int64_t i, int64_t r, int64_t n) -> A {
      if constexpr (!narrow) return dp[r * HW + i];
      return dx_value(widen<A>(gp[r * HW + i]), cp[r], sp[n * HW + i], ap[n * HW + i], bp[r]);
    };
    at::parallel_for(0, N * C, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / C;
        const A w = cp[r], off = bp[r];
        const A *s = sp + n * HW, *av = ap + n * HW;
        const scalar_t* gr = gp + r * HW;
        scalar_t* dr = dp + r * HW;
        _Pragma("omp simd")
        for (int64_t i = 0; i < HW; ++i)
          dr[i] = static_cast<scalar_t>(dx_value(widen<A>(gr[i]), w, s[i], av[i], off));
        const int64_t k = icp[r];
        dr[k] = static_cast<scalar_t>(routed_base(k, r, n) + vcp[r]);
      }
    });
    at::parallel_for(0, N * HW, 1024, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / HW, p = t % HW, c = isp[t], r = n * C + c;
        scalar_t* d = dp + r * HW + p;
        // float16 / bfloat16: formed again in A (with the channel route where it lands here too) and
        // rounded once, instead of adding to the rounded value
        const A v = narrow ? routed_base(p, r, n) + (icp[r] == p ? vcp[r] : A(0)) : static_cast<A>(*d);
        *d = static_cast<scalar_t>(v + cp[r] * vsp[t]);
      }
    });
  });
  return dx;
}

// The vector family this build's kernels use, as the csrc/*_avx512.h and *_avx2.h headers select it.
std::string vector_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  return "avx2";
#else
  return "generic";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("channel_pool", &channel_pool);
  m.def("spatial_pool", &spatial_pool, py::arg("x"), py::arg("mc"), py::arg("need_idx") = true);
  m.def("forward_samples", &cbam_cpu::forward_samples, py::arg("x"), py::arg("w1"), py::arg("b1"), py::arg("w2"),
        py::arg("b2"), py::arg("wc"), py::arg("conv_bias"), py::arg("scale"), py::arg("shift"), py::arg("max_first"),
        py::arg("need_idx"), py::arg("apply_gate"), py::arg("group"), py::arg("identity"), py::arg("inplace") = false);
  m.def("backward_samples", &cbam_cpu::backward_samples);
  m.def("backward_reduce_samples", &cbam_cpu::backward_reduce_samples);
  m.def("apply_samples", &cbam_cpu::apply_samples);
  m.def("conv_backward", &cbam_cpu::conv_backward);
  m.def("train_forward", &cbam_cpu::train_forward);
  m.def("infer_forward", &cbam_cpu::infer_forward);
  m.def("gradients_taken_over", &cbam_cpu::gradients_taken_over);
  m.def("mlp_backward", &cbam_cpu::mlp_backward, py::arg("dmc"), py::arg("mc"), py::arg("p_avg"), py::arg("p_max"),
        py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("pre"), py::arg("input_grad") = true);
  m.def("apply", &apply, py::arg("x"), py::arg("mc"), py::arg("ms"), py::arg("identity") = py::none(),
        py::arg("inplace") = false);
  m.def("bwd_reduce", &bwd_reduce);
  m.def("row_dot", &row_dot);
  m.def("relu_grad", &relu_grad);
  m.def("input_grad", &input_grad);
  m.def("empty_cache", &cbam_cpu::empty_cache);
  m.def("cached_bytes", &cbam_cpu::cached_bytes);
  m.def("set_cache_limit", &cbam_cpu::set_cache_limit);
  m.def("cache_limit", &cbam_cpu::cache_limit);
  m.def("vector_isa", &vector_isa);
}
