// The eager entry points of the common configuration (no BatchNorm in the spatial gate, per-sample
// kernels), called by fused.py's run_eager: inference in one call that returns only y, and training
// through a C++ autograd node whose forward and backward call the per-sample kernels with no Python in
// between. Inside a network every Python step of a layer's call meets caches that the layers before
// it have flushed (about 1 us per function call, 1-2 us per tensor attribute), and the Python around
// the kernels cost about a third of a small layer's kernels. The math is that of the registered op's
// eager path (_forward.py, fused.py: _EagerFusedY), which the tests hold it equal to.
#include <torch/extension.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/version.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <atomic>
#include <cmath>
#include <vector>

#include "entries.h"

namespace cbam_cpu {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A weight as the kernels read it: contiguous, in the accumulation dtype; absent -> empty.
at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc, const at::TensorOptions& o) {
  if (!t.defined()) return at::empty({0}, o);
  return t.scalar_type() == acc && t.is_contiguous() ? t : t.to(acc).contiguous();
}

std::atomic<int64_t> taken_over{0};  // buffers a backward wrote over: its gradient, x (for tests)

// t's memory is its own and torch's: no view or other tensor shares the storage, t spans all of it,
// and torch allocated it (a resizable storage: not memory of numpy, a memmap, DLPack or from_blob,
// which others own)
bool whole(const at::Tensor& t) {
  const auto& st = t.storage();
  return st.use_count() == 1 && st.resizable() && st.allocator() != nullptr && !t.is_inference() &&
         t.storage_offset() == 0 && t.numel() * t.element_size() == static_cast<int64_t>(st.nbytes());
}

// Whether nothing but this node refers to t, which it holds `own` references to: the Python object of a
// tensor that has one holds one more reference while nothing in Python refers to that object
// (PyObjectSlot::has_unique_reference), and counts as the node's.
bool only_ours(const at::Tensor& t, size_t own) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
  const auto* slot = t.unsafeGetTensorImpl()->pyobj_slot();
  const bool py = slot->load_pyobj() != nullptr;
  if (py && !slot->has_unique_reference()) return false;
#else  // the Python object's reference cannot be told apart here: only tensors without one qualify
  const bool py = false;
#endif
  return t.use_count() == own + (py ? 1 : 0) && whole(t);
}

// A one-element CPU tensor's value (a spatial-gate bias or BatchNorm statistic), read directly: the
// dispatcher's item() costs more than the read.
double value(const at::Tensor& t) {
  TORCH_CHECK(t.numel() == 1 && t.is_cpu(), "cbam: a one-element CPU tensor expected, got ", t.sizes());
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "value",
                                  [&] { v = static_cast<double>(*t.data_ptr<scalar_t>()); });
  return v;
}

using Opt = c10::optional<at::Tensor>;
at::Tensor opt(const Opt& t) { return t.has_value() ? *t : at::Tensor(); }

// The arguments forward_samples takes, as both entries prepare them: weights in the accumulation
// dtype (absent biases empty), the conv weight in any layout (the kernels copy it), the conv bias as a
// number, an absent identity empty.
struct KernelArgs {
  at::Tensor w1, b1, w2, b2, wc, ident;
  double cb;
  KernelArgs(const at::Tensor& x, const at::Tensor& w1_, const at::Tensor& b1_, const at::Tensor& w2_,
             const at::Tensor& b2_, const at::Tensor& wc_, const at::Tensor& bc, const at::Tensor& identity) {
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const auto o = x.options().dtype(acc);
    w1 = as_acc(w1_, acc, o), b1 = as_acc(b1_, acc, o), w2 = as_acc(w2_, acc, o), b2 = as_acc(b2_, acc, o);
    wc = wc_.scalar_type() == acc ? wc_ : wc_.to(acc);
    ident = identity.defined() ? identity : at::empty({0}, x.options());
    cb = bc.defined() ? value(bc) : 0.0;
  }
};

// What the backward needs to know of the forward's arguments, in one saved integer (a map entry each
// was a string lookup per flag and call).
enum Flag : int64_t { kMaxFirst = 1, kB1 = 2, kB2 = 4, kBc = 8, kTail = 16 };

struct TrainNode : public torch::autograd::Function<TrainNode> {
  // -> y = cbam(x) (relu(cbam(x) + identity) with an identity); absent biases / identity undefined
  // (optional tensors: an undefined tensor cannot be a node's input)
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w1, const Opt& b1_,
                            const at::Tensor& w2, const Opt& b2_, const at::Tensor& wc, const Opt& bc_,
                            const Opt& identity_, bool max_first) {
    const at::Tensor b1 = opt(b1_), b2 = opt(b2_), bc = opt(bc_), identity = opt(identity_);
    const KernelArgs a(x, w1, b1, w2, b2, wc, bc, identity);
    auto r = forward_samples(x, a.w1, a.b1, a.w2, a.b2, a.wc, a.cb, 1.0, 0.0, max_first, true, true, 1, a.ident,
                             false);
    // r: y, mc, ms, p_avg, p_max, idx_c, sd, idx_s, pre; the block output masks the tail's gradient
    const at::Tensor out = identity.defined() ? r[0] : at::Tensor();
    // a weight converted to the accumulation dtype is saved as well, so that changing it in place before
    // the backward fails at unpacking, as for any op that saves its weights
    auto orig = [](const at::Tensor& c, const at::Tensor& w) { return c.is_same(w) ? at::Tensor() : w; };
    ctx->save_for_backward({x, out, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], a.w1, a.b1, a.w2, a.wc,
                            orig(a.w1, w1), b1.defined() ? orig(a.b1, b1) : at::Tensor(), orig(a.w2, w2),
                            orig(a.wc, wc)});
    ctx->saved_data["flags"] = (max_first ? kMaxFirst : 0) | (b1.defined() ? kB1 : 0) | (b2.defined() ? kB2 : 0) |
                               (bc.defined() ? kBc : 0) | (identity.defined() ? kTail : 0);
    return r[0];
  }

  // `grads` by reference: the node's own list (CppNode::apply passes it as an lvalue), so a gradient
  // that nothing else refers to can be taken over
  static variable_list backward(AutogradContext* ctx, variable_list& grads) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "the fused CBAM op has no double backward (backward with create_graph=True); use "
                "impl=\"reference\" (modules) or cbam.functional for higher-order gradients");
    // a backward called inside autocast: the float32 math of the forward
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &mc = s[2], &ms = s[3], &p_avg = s[4], &p_max = s[5], &idx_c = s[6], &sd = s[7];
    const at::Tensor &idx_s = s[8], &pre = s[9], &w1a = s[10], &b1a = s[11], &w2a = s[12], &wca = s[13];
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool tail = flags & kTail;
    const int64_t N = x.size(0), HW = x.size(2) * x.size(3);
    const auto fmt = x.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
    at::Tensor g = std::move(grads[0]);
    g = !g.defined() ? at::zeros_like(x) : (g.is_contiguous(fmt) ? g : g.contiguous(fmt));
    // the tail's identity gradient (relu's masked g) over g where this node holds the only reference to
    // g and its memory (no view, hook or other node sees it), as AccumulateGrad takes over a gradient:
    // written where g was just read, it costs no fresh output to bring into cache
    const bool over_g = tail && only_ours(g, 1);
    if (over_g) taken_over.fetch_add(1, std::memory_order_relaxed);
    // dx over x where the graph is freed after this backward and nothing but this node refers to x or
    // its memory: the node's own references are those it holds to mc, which its forward made and saved
    const bool dx_over_x = ctx->needs_input_grad(0) && !torch::autograd::get_current_graph_task_keep_graph() &&
                           only_ours(x, static_cast<size_t>(mc.use_count()));
    at::Tensor dx_into;
    if (dx_over_x) {
      dx_into = x.detach();  // the same memory, without x's autograd history
      x.unsafeGetTensorImpl()->bump_version();  // a later unpack of x fails instead of reading dx
      taken_over.fetch_add(1, std::memory_order_relaxed);
    }
    const at::Tensor none = at::empty({0}, mc.options());
    auto r = backward_samples_into(g, tail ? s[1] : at::empty({0}, x.options()), x, mc, ms.view({N, HW}), p_avg,
                                   p_max, idx_c, idx_s, none, none, w1a, b1a, w2a, wca, sd, 1.0,
                                   flags & kMaxFirst, none, over_g, dx_into, pre);
    // r: dx, d identity, dmc, dms, dwc (1, 2, k, k)
    // the weights' gradients only: the per-sample pass formed the MLP's input gradient already
    auto m = mlp_backward(r[2], mc, p_avg, p_max, w1a, b1a, w2a, pre, false);  // -, -, dw1, dw2, db1, db2
    at::Tensor dbc;
    if (flags & kBc) dbc = (r[3] * ms.view({N, HW}) * (1 - ms.view({N, HW}))).sum().reshape({1});
    // gradients in the accumulation dtype: the engine casts each to its input's dtype
    return {r[0], m[2], (flags & kB1) ? m[4] : at::Tensor(), m[3], (flags & kB2) ? m[5] : at::Tensor(),
            r[4], dbc,  tail ? r[1] : at::Tensor(), at::Tensor()};
  }
};

}  // namespace

// The module's inference call (no gradient recorded) for a configuration without spatial BatchNorm
// whose kernels run per sample: y, or the block tail relu(y + identity), written over x with
// `inplace` (sample_args.h: output_for); `group` as _forward.py's mlp_group.
at::Tensor infer_forward(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& wc,
                         const c10::optional<at::Tensor>& bc, const c10::optional<at::Tensor>& identity,
                         bool max_first, bool inplace, int64_t group, const c10::optional<at::Tensor>& bn_w,
                         const c10::optional<at::Tensor>& bn_b, const c10::optional<at::Tensor>& bn_mean,
                         const c10::optional<at::Tensor>& bn_var, double eps) {
  const KernelArgs a(x, w1, opt(b1), w2, opt(b2), wc, opt(bc), opt(identity));
  // the grouped MLP (group > 1) is an at::mm: under autocast it would run in bfloat16 / float16
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  double scale = 1.0, shift = 0.0;
  if (bn_w.has_value()) {  // eval-mode BN, folded into the gate's affine in double (as _forward.py does)
    TORCH_CHECK(bn_b.has_value() && bn_mean.has_value() && bn_var.has_value(),
                "infer_forward: BatchNorm needs weight, bias, running mean and running variance");
    scale = value(*bn_w) / std::sqrt(value(*bn_var) + eps);
    shift = value(*bn_b) - value(*bn_mean) * scale;
  }
  if (group == 1)
    return forward_samples_y(x, a.w1, a.b1, a.w2, a.b2, a.wc, a.cb, scale, shift, max_first, a.ident, inplace);
  return forward_samples(x, a.w1, a.b1, a.w2, a.b2, a.wc, a.cb, scale, shift, max_first, false, true, group, a.ident,
                         inplace)[0];
}

// The module's training call for a configuration without spatial BatchNorm whose kernels run per
// sample (fused.py decides): y, or the block tail relu(y + identity), with a C++ autograd node.
at::Tensor train_forward(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& wc,
                         const c10::optional<at::Tensor>& bc, const c10::optional<at::Tensor>& identity,
                         bool max_first) {
  return TrainNode::apply(x, w1, b1, w2, b2, wc, bc, identity, max_first);
}

// How many buffers training backward calls have written over (the incoming gradient, x).
int64_t gradients_taken_over() { return taken_over.load(); }

}  // namespace cbam_cpu
