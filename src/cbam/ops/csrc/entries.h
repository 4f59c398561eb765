// The extension's entry points, defined across cbam_sample.cpp and sample_backward.cpp (per-sample
// passes), eager.cpp (the eager entries and the training node) and mlp_cpu.cpp, bound to Python in
// cbam_cpu.cpp.
#pragma once
#include <torch/extension.h>

#include <vector>

namespace cbam_cpu {
std::vector<at::Tensor> forward_samples(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1,
                                        const at::Tensor& w2, const at::Tensor& b2, const at::Tensor& wc,
                                        double conv_bias, double scale, double shift, bool max_first,
                                        bool need_idx, bool apply_gate, int64_t group, const at::Tensor& identity,
                                        bool inplace);
at::Tensor forward_samples_y(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                             const at::Tensor& b2, const at::Tensor& wc, double conv_bias, double scale,
                             double shift, bool max_first, const at::Tensor& identity, bool inplace);
at::Tensor apply_samples(const at::Tensor& x, const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& identity);
std::vector<at::Tensor> backward_reduce_samples(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                                const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& gmc,
                                                const at::Tensor& gms);
std::vector<at::Tensor> backward_samples(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                         const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& p_avg,
                                         const at::Tensor& p_max, const at::Tensor& idx_c, const at::Tensor& idx_s,
                                         const at::Tensor& dmc0, const at::Tensor& gms, const at::Tensor& w1,
                                         const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& wc,
                                         const at::Tensor& sd, double scale, bool max_first, const at::Tensor& du,
                                         const at::Tensor& pre);
std::vector<at::Tensor> backward_samples_into(const at::Tensor& g, const at::Tensor& out, const at::Tensor& x,
                                              const at::Tensor& mc, const at::Tensor& ms, const at::Tensor& p_avg,
                                              const at::Tensor& p_max, const at::Tensor& idx_c,
                                              const at::Tensor& idx_s, const at::Tensor& dmc0, const at::Tensor& gms,
                                              const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
                                              const at::Tensor& wc, const at::Tensor& sd, double scale,
                                              bool max_first, const at::Tensor& du, bool over_g,
                                              const at::Tensor& dx_into, const at::Tensor& pre);
std::vector<at::Tensor> conv_backward(const at::Tensor& du, const at::Tensor& sd, const at::Tensor& wc);
int64_t gradients_taken_over();
at::Tensor infer_forward(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& wc,
                         const c10::optional<at::Tensor>& bc, const c10::optional<at::Tensor>& identity,
                         bool max_first, bool inplace, int64_t group, const c10::optional<at::Tensor>& bn_w,
                         const c10::optional<at::Tensor>& bn_b, const c10::optional<at::Tensor>& bn_mean,
                         const c10::optional<at::Tensor>& bn_var, double eps);
at::Tensor train_forward(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& wc,
                         const c10::optional<at::Tensor>& bc, const c10::optional<at::Tensor>& identity,
                         bool max_first);
std::vector<at::Tensor> mlp_backward(const at::Tensor& dmc, const at::Tensor& mc, const at::Tensor& p_avg,
                                     const at::Tensor& p_max, const at::Tensor& w1, const at::Tensor& b1,
                                     const at::Tensor& w2, const at::Tensor& pre, bool input_grad = true);
}  // namespace cbam_cpu
