// Backward of CBAM's channel MLP (z = W2 relu(W1 p + b1) + b2 for p in {p_avg, p_max}, mc = sigmoid(sum z))
// in one OpenMP parallel region. The same five matmuls as _small.mlp_backward, but each thread
// computes a slice of every product with single-threaded BLAS, separated by barriers: as separate
// torch calls every matmul (and every small elementwise op) woke the thread pool again, and on a
// 2-vCPU VM each wake-up cost ~0.1 ms (32x2048, hid 128: 1.9 ms with 2 threads vs 1.9 ms with one).
// Slices run along output columns, so each weight is packed by BLAS once in total, not once per thread.
#include <torch/extension.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>
#include <algorithm>
#include <exception>
#include <mutex>
#include <tuple>
#include <vector>

#include "out_cache.h"

namespace cbam_cpu {
namespace {

// Columns [b, e) of `cols` split evenly over nt threads.
inline std::pair<int64_t, int64_t> share(int64_t cols, int tid, int nt) {
  return {cols * tid / nt, cols * (tid + 1) / nt};
}

// The same gradients with plain loops on one thread, for small MLPs (N * C * hid <= kSmallMacs): there
// the parallel region's start-up, five BLAS calls and their buffers cost ~10x the arithmetic.
constexpr int64_t kSmallMacs = 1 << 15;

template <typename A>
void mlp_backward_loops(int64_t N, int64_t C, int64_t hid, const A* dmc, const A* mc, const A* pa, const A* pm,
                        const A* w1, const A* b1, const A* w2, const A* pre, A* dpa, A* dpm, A* dw1, A* dw2, A* db1,
                        A* db2) {
  std::vector<A> a(2 * N * hid), dz(N * C), hs(N * hid), da(2 * N * hid);
  const A* p[2] = {pa, pm};
  A* dp[2] = {dpa, dpm};
  for (int64_t b = 0; b < 2; ++b)  // the hidden pre-activations, unless the forward kept them
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < hid; ++j) {
        A s = b1 ? b1[j] : A(0);
        if (pre) {
          s = pre[(b * N + n) * hid + j];
        } else {
          for (int64_t c = 0; c < C; ++c) s += w1[j * C + c] * p[b][n * C + c];
        }
        a[(b * N + n) * hid + j] = s;
      }
  for (int64_t i = 0; i < N * C; ++i) dz[i] = dmc[i] * mc[i] * (A(1) - mc[i]);
  for (int64_t i = 0; i < N * hid; ++i) hs[i] = std::max(a[i], A(0)) + std::max(a[N * hid + i], A(0));
  // Every loop below runs over C innermost (w2 and dw2 as (hid, C) copies): hidden widths here are 1 to
  // a few dozen, and loops over them did not vectorise (128x64, hid 4: 65 us a call, perf).
  std::vector<A> w2t(hid * C), dw2t(hid * C, A(0));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < hid; ++j) w2t[j * C + c] = w2[c * hid + j];
  std::fill(db2, db2 + C, A(0));
  for (int64_t n = 0; n < N; ++n) {
    const A* z = dz.data() + n * C;
    _Pragma("omp simd")
    for (int64_t c = 0; c < C; ++c) db2[c] += 2 * z[c];  // the bias is added once per branch
    for (int64_t j = 0; j < hid; ++j) {
      const A* w = w2t.data() + j * C;
      A* o = dw2t.data() + j * C;
      const A h = hs[n * hid + j];
      A g = 0;  // (dz w2)[n, j], into both branches through relu'
      _Pragma("omp simd reduction(+:g)")
      for (int64_t c = 0; c < C; ++c) {
        o[c] += z[c] * h;
        g += z[c] * w[c];
      }
      da[n * hid + j] = a[n * hid + j] > 0 ? g : A(0);
      da[(N + n) * hid + j] = a[(N + n) * hid + j] > 0 ? g : A(0);
    }
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < hid; ++j) dw2[c * hid + j] = dw2t[j * C + c];
  std::fill(dw1, dw1 + hid * C, A(0));
  if (db1) std::fill(db1, db1 + hid, A(0));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t n = 0; n < N; ++n) {
      A* out = dp[b] ? dp[b] + n * C : nullptr;  // null: the input gradient is not wanted
      const A* in = p[b] + n * C;
      if (out) std::fill(out, out + C, A(0));
      for (int64_t j = 0; j < hid; ++j) {
        const A g = da[(b * N + n) * hid + j];
        if (db1) db1[j] += g;
        A* wr = dw1 + j * C;
        const A* w = w1 + j * C;
        _Pragma("omp simd")
        for (int64_t c = 0; c < C; ++c) wr[c] += g * in[c];
        if (!out) continue;
        _Pragma("omp simd")
        for (int64_t c = 0; c < C; ++c) out[c] += g * w[c];
      }
    }
}

}  // namespace

// `pre`: the forward's MLP pre-activations (2, N, hid) or empty (then recomputed). `input_grad=false`
// (the per-sample backward, which formed them per sample already) leaves d p_avg and d p_max empty and
// skips their product.
// -> [d p_avg, d p_max, d w1, d w2, d b1 (empty without b1), d b2 (the bias is added once per branch)]
std::vector<at::Tensor> mlp_backward(const at::Tensor& dmc, const at::Tensor& mc, const at::Tensor& p_avg,
                                     const at::Tensor& p_max, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& pre, bool input_grad) {
  const int64_t N = p_avg.size(0), C = p_avg.size(1), hid = w1.size(0);
  for (const auto* t : {&dmc, &mc, &p_max})
    TORCH_CHECK(t->sizes() == p_avg.sizes(), "mlp_backward: dmc, mc, p_avg, p_max must all be (N, C)");
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == C && w2.dim() == 2 && w2.size(0) == C && w2.size(1) == hid &&
                  (b1.numel() == 0 || b1.numel() == hid),
              "mlp_backward: w1 (hid, C), w2 (C, hid), b1 (hid) or empty expected");
  const auto dt = p_avg.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "mlp_backward: float32 or float64 expected");
  for (const auto* t : {&dmc, &mc, &p_max, &w1, &w2, &b1})
    TORCH_CHECK(t->scalar_type() == dt && t->is_contiguous(), "mlp_backward: contiguous tensors of one dtype expected");

  if (N * C * hid <= kSmallMacs && (pre.numel() == 0 || (pre.numel() == 2 * N * hid && pre.is_contiguous()))) {
    auto o = p_avg.options();
    const int64_t rows = input_grad ? N : 0;
    auto dpa = at::empty({rows, C}, o), dpm = at::empty({rows, C}, o), dw1 = at::empty({hid, C}, o);
    auto dw2 = at::empty({C, hid}, o), db2 = at::empty({C}, o);
    auto db1 = b1.numel() ? at::empty({hid}, o) : at::empty({0}, o);
    AT_DISPATCH_FLOATING_TYPES(dt, "mlp_backward", [&] {
      auto ptr = [](const at::Tensor& t) { return t.numel() ? t.data_ptr<scalar_t>() : nullptr; };
      mlp_backward_loops<scalar_t>(N, C, hid, ptr(dmc), ptr(mc), ptr(p_avg), ptr(p_max), ptr(w1), ptr(b1), ptr(w2),
                                   ptr(pre), ptr(dpa), ptr(dpm), ptr(dw1), ptr(dw2), ptr(db1), ptr(db2));
    });
    return {dpa, dpm, dw1, dw2, db1, db2};
  }

  at::NoGradGuard no_grad;  // saved outputs unpacked in backward carry grad_fn; nothing here is differentiated
  const at::ThreadLocalState tls;  // grad mode and dispatch state for the OpenMP threads, as at::parallel_for does
  // MB-sized buffers (dw1, dw2 are 1 MiB each at C = 2048) from the output cache: from torch's
  // allocator they were fresh mappings every call (~700 page faults per call at 32x2048, ~1 ms)
  auto buf = [dt](std::initializer_list<int64_t> sizes) { return cached_empty(sizes, dt); };
  auto p = buf({2 * N, C});                                  // (2N, C) = [p_avg; p_max]
  p.narrow(0, 0, N).copy_(p_avg);
  p.narrow(0, N, N).copy_(p_max);
  auto a = buf({2 * N, hid}), dz = buf({N, C}), hsum = buf({N, hid}), dzw = buf({N, hid});
  auto da = buf({2 * N, hid}), dw1 = buf({hid, C}), dw2 = buf({C, hid}), db2 = buf({C});
  auto dp = input_grad ? buf({2 * N, C}) : at::empty({0, C}, dt);
  const bool has_b1 = b1.numel() > 0;
  // the forward's pre-activations (2, N, hid), when it kept them: one of the five matmuls fewer
  const bool have_pre = pre.numel() > 0;
  if (have_pre) {
    TORCH_CHECK(pre.numel() == 2 * N * hid && pre.scalar_type() == dt && pre.is_contiguous(),
                "mlp_backward: pre must be the forward's (2, N, hid) pre-activations or empty");
    a = pre.view({2 * N, hid});
  }

  std::exception_ptr error;
  std::mutex error_lock;
  auto guard = [&](auto&& fn) {  // an exception must not skip a barrier the other threads wait at
    try {
      fn();
    } catch (...) {
      std::lock_guard<std::mutex> l(error_lock);
      if (!error) error = std::current_exception();
    }
  };
  const int threads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(std::max(hid, int64_t(1)))));
#pragma omp parallel num_threads(threads)
  {
    at::ThreadLocalStateGuard tls_guard(tls);
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t h0, h1, c0, c1;  // plain variables: C++17 lambdas cannot capture structured bindings
    std::tie(h0, h1) = share(hid, tid, nt);
    std::tie(c0, c1) = share(C, tid, nt);
    guard([&] {  // a = p w1^T + b1 (columns h0:h1); dz = dmc * mc * (1 - mc) (columns c0:c1)
      if (h1 > h0 && !have_pre) {
        auto out = a.narrow(1, h0, h1 - h0);
        at::mm_out(out, p, w1.narrow(0, h0, h1 - h0).t());
        if (has_b1) out.add_(b1.narrow(0, h0, h1 - h0));
      }
      if (c1 > c0) {
        const auto m = mc.narrow(1, c0, c1 - c0);
        dz.narrow(1, c0, c1 - c0).copy_(dmc.narrow(1, c0, c1 - c0) * m * (1 - m));
      }
    });
#pragma omp barrier
    guard([&] {  // hsum = relu(a_avg) + relu(a_max); dzw = dz w2 (columns h0:h1)
      if (h1 > h0) {
        const auto ah = a.narrow(1, h0, h1 - h0);
        hsum.narrow(1, h0, h1 - h0).copy_(ah.narrow(0, 0, N).clamp_min(0) + ah.narrow(0, N, N).clamp_min(0));
        auto out = dzw.narrow(1, h0, h1 - h0);
        at::mm_out(out, dz, w2.narrow(1, h0, h1 - h0));
        // da = dzw (both branches) * relu'(a)
        auto dah = da.narrow(1, h0, h1 - h0);
        dah.narrow(0, 0, N).copy_(out * ah.narrow(0, 0, N).gt(0));
        dah.narrow(0, N, N).copy_(out * ah.narrow(0, N, N).gt(0));
      }
    });
#pragma omp barrier
    guard([&] {  // rows c0:c1 of dw2 = dz^T hsum, db2; columns c0:c1 of dw1 = da^T p and dp = da w1
      if (c1 > c0) {
        const auto dzc = dz.narrow(1, c0, c1 - c0);
        auto o2 = dw2.narrow(0, c0, c1 - c0);
        at::mm_out(o2, dzc.t(), hsum);
        db2.narrow(0, c0, c1 - c0).copy_(dzc.sum(0) * 2);
        auto o1 = dw1.narrow(1, c0, c1 - c0);
        at::mm_out(o1, da.t(), p.narrow(1, c0, c1 - c0));
        if (input_grad) {
          auto op = dp.narrow(1, c0, c1 - c0);
          at::mm_out(op, da, w1.narrow(1, c0, c1 - c0));
        }
      }
    });
  }
  if (error) std::rethrow_exception(error);
  auto db1 = has_b1 ? da.sum(0) : at::empty({0}, p.options());
  if (!input_grad) return {dp, dp, dw1, dw2, db1, db2};
  return {dp.narrow(0, 0, N), dp.narrow(0, N, N), dw1, dw2, db1, db2};
}

}  // namespace cbam_cpu
