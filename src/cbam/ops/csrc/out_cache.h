// The fused op's cache of full-size CPU outputs (out_cache.cpp).
#pragma once
#include <ATen/ATen.h>

namespace cbam_cpu {
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype);
at::Tensor cached_empty_like(const at::Tensor& x);
int64_t empty_cache();
int64_t cached_bytes();
void set_cache_limit(int64_t limit);
int64_t cache_limit();
}  // namespace cbam_cpu
