// The per-sample entry points' argument checks and small tensor helpers (cbam_sample.cpp,
// sample_backward.cpp): layouts, shapes and dtypes checked up front, so a wrong call fails with a
// message that names the argument rather than deep inside a kernel.
#pragma once
#include <torch/extension.h>
#include <ATen/Dispatch.h>
#include <algorithm>
#include <initializer_list>

#include "out_cache.h"

namespace cbam_cpu {
namespace {

bool is_nhwc(const at::Tensor& x) { return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast); }

// An uninitialised tensor shaped and laid out like x, from the output cache.
at::Tensor cached_like(const at::Tensor& x, bool nhwc) {
  if (!nhwc) return cached_empty_like(x);
  return cached_empty({x.size(0), x.size(2), x.size(3), x.size(1)}, x.scalar_type()).permute({0, 3, 1, 2});
}

// The forward's output: x itself where the caller allows it (`inplace`, only where no gradient needs x)
// and torch would allow an in-place op on x (an inference tensor only inside inference mode), else a
// fresh tensor. The passes that write y are element-wise, so y may alias x (and the identity).
at::Tensor output_for(const at::Tensor& x, bool nhwc, bool inplace) {
  if (inplace && (!x.is_inference() || c10::InferenceMode::is_enabled())) return x;
  return cached_like(x, nhwc);
}

// After the pass wrote y: an in-place write bumps x's version as torch's in-place ops do, so a graph
// that saved x fails at backward instead of using the overwritten values.
void mark_written(const at::Tensor& y, const at::Tensor& x) {
  if (y.is_same(x)) x.unsafeGetTensorImpl()->bump_version();
}

void check_input(const at::Tensor& x, const char* fn) {
  TORCH_CHECK(x.dim() == 4 && (x.is_contiguous() || x.is_contiguous(at::MemoryFormat::ChannelsLast)), fn,
              ": a contiguous NCHW or channels_last (N, C, H, W) tensor expected, got sizes ", x.sizes(),
              " and strides ", x.strides());
}

// An optional (empty) or full-size tensor laid out exactly as x.
void check_like(const at::Tensor& t, const at::Tensor& x, bool nhwc, const char* what, const char* fn) {
  if (t.numel() == 0) return;
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() && t.device() == x.device() &&
                  (nhwc ? t.is_contiguous(at::MemoryFormat::ChannelsLast) : t.is_contiguous()),
              fn, ": ", what, " must have x's shape ", x.sizes(), ", dtype, device and memory layout");
}

void check_small(const at::Tensor& t, std::initializer_list<int64_t> sizes, at::ScalarType acc, const char* what,
                 const char* fn) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(sizes) && t.scalar_type() == acc && t.is_contiguous(), fn, ": ", what,
              " must be a contiguous ", at::IntArrayRef(sizes), " tensor of ", acc, ", got ", t.sizes(), " of ",
              t.scalar_type());
}

// w1 (hid, C), b1 (hid) or empty, w2 (C, hid), b2 (C) or empty, wc (2, k, k) with odd k.
void check_weights(const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                   const at::Tensor& wc, int64_t C, at::ScalarType acc, const char* fn) {
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C && w1.size(0) >= 1, fn, ": w1 must be (hid, ", C, "), got ",
              w1.sizes());
  const int64_t hid = w1.size(0), k = wc.size(-1);
  check_small(w1, {hid, C}, acc, "w1", fn);
  check_small(w2, {C, hid}, acc, "w2", fn);
  if (b1.numel()) check_small(b1, {hid}, acc, "b1", fn);
  if (b2.numel()) check_small(b2, {C}, acc, "b2", fn);
  TORCH_CHECK(k % 2 == 1, fn, ": the spatial kernel size must be odd, got ", k);
  check_small(wc, {2, k, k}, acc, "wc", fn);
}

// The conv weight as a contiguous (2, k, k): the module's (1, 2, k, k) is taken as it is (a view here
// costs less than one from Python per call), in any layout: model.to(memory_format=channels_last)
// makes it channels_last, and the copy here costs less than one from Python.
at::Tensor conv_weight(const at::Tensor& wc) {
  const at::Tensor w = wc.dim() == 4 && wc.size(0) == 1 ? wc[0] : wc;
  return w.is_contiguous() ? w : w.contiguous();
}

template <typename A>
const A* ptr_or_null(const at::Tensor& t) { return t.numel() ? t.data_ptr<A>() : nullptr; }

// (N, ...) -> (1, ...): a serial sum, for the per-sample conv weight gradients (N x 2 x k x k floats),
// where at::sum's parallel dispatch costs more than the additions.
at::Tensor sum_samples(const at::Tensor& t) {
  auto sizes = t.sizes().vec();
  sizes[0] = 1;
  auto r = at::zeros(sizes, t.options());
  const int64_t N = t.size(0), m = t.numel() / std::max<int64_t>(N, 1);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "sum_samples", [&] {
    const scalar_t* p = t.data_ptr<scalar_t>();
    scalar_t* q = r.data_ptr<scalar_t>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = 0; i < m; ++i) q[i] += p[n * m + i];
  });
  return r;
}

void check_grads(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x, const at::Tensor& mc,
                 const at::Tensor& ms, const char* fn) {
  check_input(x, fn);
  const bool nhwc = is_nhwc(x);
  TORCH_CHECK(g.sizes() == x.sizes(), fn, ": the gradient must have x's shape ", x.sizes(), ", got ", g.sizes());
  check_like(g, x, nhwc, "the gradient", fn);
  check_like(out, x, nhwc, "out", fn);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_small(mc, {N, C}, acc, "mc", fn);
  check_small(ms, {N, HW}, acc, "ms", fn);
}

}  // namespace
}  // namespace cbam_cpu
