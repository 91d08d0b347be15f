#include "model/kv_pool.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <string>

#include "core/error.h"

namespace parscale {

namespace {

void check_shape(const ModelConfig& config, DType dtype, int64_t page_tokens) {
  check(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
        std::string("KV pool: dtype must be F32, BF16 or F16, found ") + dtype_name(dtype));
  check(page_tokens > 0, "KV pool: page_tokens must be > 0, found " + std::to_string(page_tokens));
  check(config.num_hidden_layers > 0 && config.num_key_value_heads > 0 && config.head_dim > 0,
        "KV pool: the model needs layers, kv heads and head_dim > 0");
}

}  // namespace

void KvPool::Unmap::operator()(uint8_t* p) const {
  if (p != nullptr) munmap(p, bytes);
}

int64_t KvPool::page_bytes(const ModelConfig& config, DType dtype, int64_t page_tokens) {
  check_shape(config, dtype, page_tokens);
  return 2 * config.num_hidden_layers * config.num_key_value_heads * page_tokens * config.head_dim *
         static_cast<int64_t>(dtype_size(dtype));
}

int64_t KvPool::pages_for_bytes(const ModelConfig& config, DType dtype, int64_t page_tokens, int64_t bytes) {
  check(bytes >= 0, "KV pool: memory budget must be >= 0 bytes, found " + std::to_string(bytes));
  if (bytes == 0) return 0;
  const int64_t pb = page_bytes(config, dtype, page_tokens);
  return std::max<int64_t>(1, bytes / pb);
}

KvPool::KvPool(const ModelConfig& config, DType dtype, int64_t page_tokens, int64_t n_pages)
    : dtype_(dtype), n_pages_(n_pages), page_tokens_(page_tokens) {
  check_shape(config, dtype, page_tokens);
  check(n_pages > 0 && n_pages <= std::numeric_limits<int32_t>::max(),
        "KV pool: page count must lie in [1, 2^31), found " + std::to_string(n_pages));
  const int64_t page_layer = config.num_key_value_heads * page_tokens * config.head_dim *
                             static_cast<int64_t>(dtype_size(dtype));
  check(page_layer <= std::numeric_limits<int64_t>::max() / n_pages / (2 * config.num_hidden_layers),
        "KV pool: " + std::to_string(n_pages) + " pages overflow the address space");
  layer_bytes_ = page_layer * n_pages;
  bytes_ = 2 * config.num_hidden_layers * layer_bytes_;
  void* p = mmap(nullptr, static_cast<size_t>(bytes_), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw Error("KV pool: cannot reserve " + std::to_string(bytes_) + " bytes for " + std::to_string(n_pages) +
                " pages: " + std::strerror(errno));
  storage_ = std::unique_ptr<uint8_t, Unmap>(static_cast<uint8_t*>(p), Unmap{static_cast<size_t>(bytes_)});
  refcount_.assign(static_cast<size_t>(n_pages), 0);
  free_.resize(static_cast<size_t>(n_pages));
  // A stack: page 0 is handed out first.
  for (int64_t i = 0; i < n_pages; ++i) free_[static_cast<size_t>(i)] = static_cast<int32_t>(n_pages - 1 - i);
}

int32_t KvPool::allocate() {
  if (free_.empty()) return -1;
  const int32_t page = free_.back();
  free_.pop_back();
  refcount_[static_cast<size_t>(page)] = 1;
  return page;
}

void KvPool::retain(int32_t page) {
  check(page >= 0 && page < n_pages_ && refcount_[static_cast<size_t>(page)] > 0,
        "KV pool: retain of page " + std::to_string(page) + " which is not allocated");
  ++refcount_[static_cast<size_t>(page)];
}

void KvPool::release(int32_t page) {
  check(page >= 0 && page < n_pages_ && refcount_[static_cast<size_t>(page)] > 0,
        "KV pool: release of page " + std::to_string(page) + " which is not allocated");
  if (--refcount_[static_cast<size_t>(page)] == 0) free_.push_back(page);
}

}  // namespace parscale
