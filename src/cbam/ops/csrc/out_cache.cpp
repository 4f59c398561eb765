// A cache of the fused op's full-size outputs (y forward, dx backward) on the CPU.
//
// torch's CPU allocator hands every large tensor back to the OS on free (glibc munmaps blocks past
// its mmap threshold, at most 32 MB), so each new output is freshly mapped memory that the kernel
// zeroes page by page as the op first writes it: for a memory-bound op that costs about as much
// as the op's own writes. Like CUDA's caching allocator, this keeps freed outputs of the fused op
// (exact sizes, >= 256 KiB, up to a byte limit) and hands them to the next call of the same shape,
// already faulted in. When a freed block does not fit under the limit, the least recently freed
// blocks make room for it: a run whose shapes change keeps the sizes it uses now, not the first
// ones. The tensors are ordinary resizable CPU tensors; only their storage's allocator is this one.
#include "out_cache.h"

#include <torch/extension.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <list>
#include <map>
#include <mutex>
#include <utility>
#include <vector>
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
  std::list<Block> lru;                        // cached blocks, most recently freed first
  std::multimap<size_t, std::list<Block>::iterator> by_size;  // equal sizes in the order freed
  size_t cached = 0;
  std::atomic<size_t> limit{size_t(1) << 30};
};

State& state() {
  static State* s = new State();
  return *s;
}

// Drops least recently freed blocks (under s.mu) until at most `target` bytes stay cached; the
// caller frees `out` after unlocking (munmap is slow).
void evict_until(State& s, size_t target, std::vector<Block>& out) {
  while (s.cached > target && !s.lru.empty()) {
    const Block victim = s.lru.back();
    auto range = s.by_size.equal_range(victim.bytes);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second == std::prev(s.lru.end())) {
        s.by_size.erase(it);
        break;
      }
    }
    s.lru.pop_back();
    s.cached -= victim.bytes;
    out.push_back(victim);
  }
}

void free_all(const std::vector<Block>& blocks) {
  for (const Block& b : blocks) std::free(b.ptr);
}

void give_back(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  State& s = state();
  std::vector<Block> victims;
  bool kept = false;
  {
    std::lock_guard<std::mutex> g(s.mu);
    const size_t limit = s.limit;
    if (b->bytes <= limit) {
      evict_until(s, limit - b->bytes, victims);
      s.lru.push_front(*b);
      s.by_size.emplace(b->bytes, s.lru.begin());
      s.cached += b->bytes;
      kept = true;
    }
  }
  free_all(victims);
  if (!kept) std::free(b->ptr);
  delete b;
}

// The most recently freed cached block of exactly n bytes (the likeliest to be in the CPU's
// cache), taken out of the cache; nullptr when there is none.
void* take(size_t n) {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  auto it = s.by_size.upper_bound(n);
  if (it == s.by_size.begin() || std::prev(it)->first != n) return nullptr;
  --it;
  void* p = it->second->ptr;
  s.lru.erase(it->second);
  s.by_size.erase(it);
  s.cached -= n;
  return p;
}

struct CachingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    void* p = take(n);
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
  std::vector<Block> blocks;
  {
    std::lock_guard<std::mutex> g(s.mu);
    evict_until(s, 0, blocks);
  }
  free_all(blocks);
  int64_t freed = 0;
  for (const Block& b : blocks) freed += static_cast<int64_t>(b.bytes);
  return freed;
}

int64_t cached_bytes() {
  State& s = state();
  std::lock_guard<std::mutex> g(s.mu);
  return static_cast<int64_t>(s.cached);
}

// Sets the most bytes kept, evicting the least recently freed blocks past it; 0 disables the cache.
void set_cache_limit(int64_t limit) {
  TORCH_CHECK(limit >= 0, "cbam: the output cache limit must be >= 0 bytes, got ", limit);
  State& s = state();
  std::vector<Block> victims;
  {
    std::lock_guard<std::mutex> g(s.mu);
    s.limit = static_cast<size_t>(limit);
    evict_until(s, static_cast<size_t>(limit), victims);
  }
  free_all(victims);
}

int64_t cache_limit() { return static_cast<int64_t>(state().limit); }

}  // namespace cbam_cpu
