#include "model/kv_cache.h"

namespace parscale {

KVCache::KVCache(const ModelConfig& c, int64_t rows, int64_t capacity)
    : n_prefix(static_cast<size_t>(rows), 0),
      length(static_cast<size_t>(rows), 0),
      rows_(rows),
      capacity_(capacity),
      layers_(c.num_hidden_layers),
      kv_heads_(c.num_key_value_heads),
      head_dim_(c.head_dim) {
  const size_t n = static_cast<size_t>(layers_ * rows_ * kv_heads_ * capacity_ * head_dim_);
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
}

kernels::KVLayer KVCache::layer(int64_t l) {
  const int64_t per_layer = rows_ * kv_heads_ * capacity_ * head_dim_;
  return {k_.data() + l * per_layer, v_.data() + l * per_layer, kv_heads_, capacity_, head_dim_};
}

}  // namespace parscale
