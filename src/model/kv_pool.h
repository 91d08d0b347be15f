// Paged KV cache. A pool of fixed-size pages, each holding `page_tokens` token slots of K and V
// for every layer and kv head. A stream row's real tokens live in the pages of its block table:
// real token at position p is slot p % page_tokens of page table[p / page_tokens]. Prefix slots
// (ParScale) are not in the pool: attention reads them straight from the adapter's prefix
// tensors, so a sequence costs only its real tokens.
//
// Page storage, per layer l: K [n_pages][n_kv_heads][page_tokens][head_dim] and V likewise, in
// the pool's dtype (F32, BF16 or F16; attention widens to fp32 in registers).
//
// Pages are reference counted: allocate() hands out a page with count 1; retain() adds a holder
// (a second sequence or the prefix cache sharing it); release() drops one and returns the page to
// the free list at 0. A page is written only while it has exactly one holder. Not thread-safe:
// the engine thread owns the pool.
#pragma once
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"

namespace parscale {

class KvPool {
 public:
  KvPool() = default;
  KvPool(KvPool&& o) noexcept { *this = std::move(o); }
  KvPool& operator=(KvPool&& o) noexcept;
  KvPool(const KvPool&) = delete;
  KvPool& operator=(const KvPool&) = delete;
  ~KvPool();
  // n_pages pages of page_tokens slots; throws parscale::Error on a bad dtype or size.
  KvPool(const ModelConfig& config, DType dtype, int64_t page_tokens, int64_t n_pages);
  // Pages that fit in `bytes` (at least 1 when bytes > 0).
  static int64_t pages_for_bytes(const ModelConfig& config, DType dtype, int64_t page_tokens, int64_t bytes);
  // Bytes of one page (all layers, K and V).
  static int64_t page_bytes(const ModelConfig& config, DType dtype, int64_t page_tokens);

  // A free page with refcount 1, or -1 when none is free.
  int32_t allocate();
  void retain(int32_t page);
  void release(int32_t page);
  int32_t refcount(int32_t page) const { return refcount_[static_cast<size_t>(page)]; }

  int64_t pages_total() const { return n_pages_; }
  int64_t pages_free() const { return static_cast<int64_t>(free_.size()); }
  int64_t pages_used() const { return n_pages_ - pages_free(); }
  int64_t page_tokens() const { return page_tokens_; }
  DType dtype() const { return dtype_; }
  int64_t bytes() const { return 2 * n_layers_ * layer_bytes_; }

  // Base of layer l's K (or V) pages: [n_pages][n_kv_heads][page_tokens][head_dim] of dtype().
  void* k_layer(int64_t l) { return base_ + static_cast<size_t>((2 * l) * layer_bytes_); }
  void* v_layer(int64_t l) { return base_ + static_cast<size_t>((2 * l + 1) * layer_bytes_); }
  const void* k_layer(int64_t l) const { return base_ + static_cast<size_t>((2 * l) * layer_bytes_); }
  const void* v_layer(int64_t l) const { return base_ + static_cast<size_t>((2 * l + 1) * layer_bytes_); }

 private:
  DType dtype_ = DType::F32;
  int64_t n_pages_ = 0, page_tokens_ = 0, layer_bytes_ = 0, n_layers_ = 0;
  uint8_t* base_ = nullptr;  // anonymous mapping of bytes(): pages become resident when written
  std::vector<int32_t> refcount_;
  std::vector<int32_t> free_;  // stack of free page ids
};

}  // namespace parscale
