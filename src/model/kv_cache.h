// KV cache for `rows` cache rows (row = s·B + b for stream s of sequence b; P = 1: row = b).
// Per layer, per row, per kv head: `capacity` slots of head_dim floats. Slots [0, n_prefix[row])
// hold the row's stream prefix (no RoPE, no positions); the real token at position p lives at
// slot n_prefix[row] + p. The Qwen2 block never needs to know which slots are prefix.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"

namespace parscale {

class KVCache {
 public:
  KVCache() = default;
  KVCache(const ModelConfig& config, int64_t rows, int64_t capacity);

  kernels::KVLayer layer(int64_t l);
  int64_t rows() const { return rows_; }
  int64_t capacity() const { return capacity_; }
  int64_t layers() const { return layers_; }
  int64_t bytes() const { return static_cast<int64_t>((k_.size() + v_.size()) * sizeof(float)); }

  // Prefix slot count and real-token count of each row.
  std::vector<int32_t> n_prefix;
  std::vector<int32_t> length;

 private:
  int64_t rows_ = 0, capacity_ = 0, layers_ = 0, kv_heads_ = 0, head_dim_ = 0;
  std::vector<float> k_, v_;
};

}  // namespace parscale
