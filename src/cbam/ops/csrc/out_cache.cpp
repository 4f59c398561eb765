// A cache of the fused op's full-size outputs (y forward, dx backward) on the CPU.
//
// torch's CPU allocator hands every large tensor back to the OS on free (glibc munmaps blocks past
// its mmap threshold, at most 32 MB), so each new output is freshly mapped memory that the kernel
// zeroes page by page as the op first writes it: filling a fresh 103 MB tensor took 6.4 ms here,
// against 3.4 ms into touched memory, and a fresh 12.8 MB output cost ~1.2 ms of a 1.5 ms forward.
// Like CUDA's caching allocator, this keeps freed outputs of the fused op (exact sizes, >= 1 MiB,
// up to a byte limit) and hands them to the next call of the same shape, already faulted in. The
// tensors are ordinary resizable CPU tensors; only their storage's allocator is this one.
#include "out_cache.h"

#include <torch/extension.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sys/mman.h>

namespace cbam_cpu {
namespace {

constexpr size_t kMinBytes = 256 << 10;   // smaller: torch's allocator (glibc keeps those in its heap)
constexpr size_t kHugeAlign = 2 << 20;    // 2 MiB alignment + MADV_HUGEPAGE, as THP_MEM_ALLOC_ENABLE does

struct Block {
  void* ptr;
  size_t bytes;
};

// Never destroyed: tensors may die after static destructors have run at interpreter exit.
struct State {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // bytes -> block
  size_t cached = 0;
  std::atomic<size_t> limit{size_t(1) << 30};
};

State& state() {
  static State* s = new State();
  return *s;
}

void give_back(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  State& s = state();
  {
    std::lock_guard<std::mutex> g(s.mu);
    if (s.cached + b->bytes <= s.limit) {
      s.free_blocks.emplace(b->bytes, b->ptr);
      s.cached += b->bytes;
      delete b;
      return;
    }
  }
  std::free(b->ptr);
  delete b;
}

struct CachingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    {
      State& s = state();
      std::lock_guard<std::mutex> g(s.mu);
      auto it = s.free_blocks.find(n);
      if (it != s.free_blocks.end()) {
        p = it->second;
        s.free_blocks.erase(it);
        s.cached -= n;
      }
    }
    if (p == nullptr) {
      const size_t align = n >= kHugeAlign ? kHugeAlign : 64;
      if (posix_memalign(&p, align, n) != 0) TORCH_CHECK(false, "cbam: out of memory allocating ", n, " bytes");
      if (align == kHugeAlign) madvise(p, n, MADV_HUGEPAGE);  // advisory: ignored where THP is off
    }
    return {p, new Block{p, n}, &give_back, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CachingAllocator& allocator() {
  static CachingAllocator* a = new CachingAllocator();
  return *a;
}

}  // namespace

// A contiguous CPU tensor, from the cache when it is large enough to matter. Also used for the
// backward's MB-sized temporaries and weight gradients, which glibc would map and fault in afresh.
at::Tensor cached_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * c10::elementSize(dtype);
  if (bytes < kMinBytes || state().limit == 0) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  return at::detail::empty_generic(sizes, &allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   at::MemoryFormat::Contiguous);
}

// A contiguous tensor shaped and typed like x, from the cache when it is large enough to matter.
at::Tensor cached_empty_like(const at::Tensor& x) {
  if (x.device().type() != c10::DeviceType::CPU) return at::empty_like(x, at::MemoryFormat::Contiguous);
  return cached_empty(x.sizes(), x.scalar_type());
}

// Frees the cached blocks; returns how many bytes were released.
int64_t empty_cache() {
  State& s = state();
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> g(s.mu);
    blocks.swap(s.free_blocks);
    s.cached = 0;
  }
  int64_t freed = 0;
  for (auto& kv : blocks) {
    std::free(kv.second);
    freed += static_cast<int64_t>(kv.first);
  }
  return freed;
}

int64_t cached_bytes() {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  return static_cast<int64_t>(s.cached);
}

// Sets the most bytes kept; 0 disables the cache (and frees what it holds).
void set_cache_limit(int64_t limit) {
  TORCH_CHECK(limit >= 0, "cbam: the output cache limit must be >= 0 bytes, got ", limit);
  {
    State& s = state();
    std::lock_guard<std::mutex> g(s.mu);
    s.limit = static_cast<size_t>(limit);
  }
  if (limit == 0 || cached_bytes() > limit) empty_cache();
}

int64_t cache_limit() { return static_cast<int64_t>(state().limit); }

}  // namespace cbam_cpu
