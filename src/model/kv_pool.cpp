#include "model/kv_pool.h"

#include <sys/mman.h>

#include <string>

#include "core/error.h"

namespace parscale {

int64_t KvPool::page_bytes(const ModelConfig& c, DType dtype, int64_t page_tokens) {
  return 2 * c.num_hidden_layers * c.num_key_value_heads * page_tokens * c.head_dim * static_cast<int64_t>(dtype_size(dtype));
}

int64_t KvPool::pages_for_bytes(const ModelConfig& c, DType dtype, int64_t page_tokens, int64_t bytes) {
  if (bytes <= 0) return 0;
  return std::max<int64_t>(1, bytes / page_bytes(c, dtype, page_tokens));
}

KvPool::KvPool(const ModelConfig& c, DType dtype, int64_t page_tokens, int64_t n_pages)
    : dtype_(dtype), n_pages_(n_pages), page_tokens_(page_tokens), n_layers_(c.num_hidden_layers) {
  if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
    throw Error(std::string("KV cache dtype ") + dtype_name(dtype) + " is not supported (F32, BF16 or F16)");
  if (page_tokens <= 0) throw Error("KV page size must be > 0 tokens, found " + std::to_string(page_tokens));
  if (n_pages <= 0 || n_pages > (int64_t{1} << 30))
    throw Error("KV pool: " + std::to_string(n_pages) + " pages is out of range (1 .. 2^30)");
  layer_bytes_ = n_pages * c.num_key_value_heads * page_tokens * c.head_dim * static_cast<int64_t>(dtype_size(dtype));
  const size_t total = static_cast<size_t>(2 * n_layers_ * layer_bytes_);
  if (total > 0) {
    void* p = ::mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw Error("KV pool: cannot reserve " + std::to_string(total) + " bytes");
    base_ = static_cast<uint8_t*>(p);
  }
  refcount_.assign(static_cast<size_t>(n_pages), 0);
  free_.reserve(static_cast<size_t>(n_pages));
  for (int64_t i = n_pages - 1; i >= 0; --i) free_.push_back(static_cast<int32_t>(i));  // page 0 handed out first
}

KvPool& KvPool::operator=(KvPool&& o) noexcept {
  if (this != &o) {
    if (base_) ::munmap(base_, static_cast<size_t>(bytes()));
    dtype_ = o.dtype_;
    n_pages_ = std::exchange(o.n_pages_, 0);
    page_tokens_ = o.page_tokens_;
    layer_bytes_ = std::exchange(o.layer_bytes_, 0);
    n_layers_ = std::exchange(o.n_layers_, 0);
    base_ = std::exchange(o.base_, nullptr);
    refcount_ = std::move(o.refcount_);
    free_ = std::move(o.free_);
  }
  return *this;
}

KvPool::~KvPool() {
  if (base_) ::munmap(base_, static_cast<size_t>(bytes()));
}

int32_t KvPool::allocate() {
  if (free_.empty()) return -1;
  const int32_t p = free_.back();
  free_.pop_back();
  refcount_[static_cast<size_t>(p)] = 1;
  return p;
}

void KvPool::retain(int32_t page) {
  if (page < 0 || page >= n_pages_ || refcount_[static_cast<size_t>(page)] <= 0)
    throw Error("KV pool: retain of page " + std::to_string(page) + " that is not allocated");
  ++refcount_[static_cast<size_t>(page)];
}

void KvPool::release(int32_t page) {
  if (page < 0 || page >= n_pages_ || refcount_[static_cast<size_t>(page)] <= 0)
    throw Error("KV pool: release of page " + std::to_string(page) + " that is not allocated");
  if (--refcount_[static_cast<size_t>(page)] == 0) free_.push_back(page);
}

}  // namespace parscale
