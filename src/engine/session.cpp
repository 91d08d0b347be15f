#include "engine/session.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "kernels/kernels.h"

namespace parscale {

Session::Session(const ModelWeights& w, int64_t batch, int64_t max_len)
    : w_(w), batch_(batch), max_len_(max_len), lengths_(static_cast<size_t>(batch), 0) {
  const ModelConfig& c = w.config;
  check(batch > 0, "session: batch must be > 0");
  check(max_len > 0, "session: max length must be > 0");
  if (max_len > c.max_position_embeddings)
    throw Error("session: " + std::to_string(max_len) + " tokens exceed the context limit max_position_embeddings = " +
                std::to_string(c.max_position_embeddings));
  cache_ = KVCache(c, batch * c.streams(), c.prefix_tokens() + max_len);
  load_stream_prefixes(w, cache_, batch);
  // Reserve for a decode step of the whole batch so the decode loop allocates nothing.
  ws_.reserve(c, batch * c.streams(), cache_.capacity());
}

void Session::reset(int64_t b) {
  check(b >= 0 && b < batch_, "session: sequence index out of range");
  load_stream_prefixes_for(w_, cache_, batch_, b);
  lengths_[static_cast<size_t>(b)] = 0;
}

void Session::forward(const std::vector<std::vector<int32_t>>& chunks, Outputs outputs, std::vector<float>& logits) {
  const ModelConfig& c = w_.config;
  const int64_t P = c.streams(), H = c.hidden_size, V = c.vocab_size, B = batch_;
  // (an if, not check(): building the message string would allocate on every decode step)
  if (static_cast<int64_t>(chunks.size()) != B) throw Error("session: forward needs one chunk per sequence");
  // Tokens of one stream, in order (b, t); the full pass holds P copies, stream-major.
  int64_t M = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = static_cast<int64_t>(chunks[static_cast<size_t>(b)].size());
    if (lengths_[static_cast<size_t>(b)] + L > max_len_)
      throw Error("sequence " + std::to_string(b) + ": " + std::to_string(lengths_[static_cast<size_t>(b)] + L) +
                  " tokens exceed this session's limit of " + std::to_string(max_len_) +
                  (max_len_ == c.max_position_embeddings ? " (max_position_embeddings)" : ""));
    M += L;
  }
  logits.clear();
  if (M == 0) return;
  ids_.resize(static_cast<size_t>(M));
  rows_.resize(static_cast<size_t>(P * M));
  pos_.resize(static_cast<size_t>(P * M));
  out_index_.clear();
  int64_t t0 = 0;
  for (int64_t b = 0; b < B; ++b) {
    const auto& chunk = chunks[static_cast<size_t>(b)];
    const int64_t L = static_cast<int64_t>(chunk.size());
    for (int64_t t = 0; t < L; ++t) {
      ids_[static_cast<size_t>(t0 + t)] = chunk[static_cast<size_t>(t)];
      for (int64_t s = 0; s < P; ++s) {
        rows_[static_cast<size_t>(s * M + t0 + t)] = static_cast<int32_t>(s * B + b);
        pos_[static_cast<size_t>(s * M + t0 + t)] = static_cast<int32_t>(lengths_[static_cast<size_t>(b)] + t);
      }
      if (outputs == Outputs::AllPositions || t == L - 1) out_index_.push_back(static_cast<int32_t>(t0 + t));
    }
    t0 += L;
  }
  // Embeddings, replicated into the P streams.
  x_.resize(static_cast<size_t>(P * M * H));
  embed_tokens(w_, ids_.data(), M, x_.data());
  for (int64_t s = 1; s < P; ++s) std::copy_n(x_.data(), M * H, x_.data() + s * M * H);

  qwen2_layers_forward(w_, cache_, rows_.data(), pos_.data(), P * M, x_.data(), ws_);

  // Final norm per stream, only for the positions that produce logits; then aggregate.
  const int64_t n_out = static_cast<int64_t>(out_index_.size());
  selected_.resize(static_cast<size_t>(P * n_out * H));
  for (int64_t s = 0; s < P; ++s)
    for (int64_t j = 0; j < n_out; ++j)
      std::copy_n(x_.data() + (s * M + out_index_[static_cast<size_t>(j)]) * H, H, selected_.data() + (s * n_out + j) * H);
  kernels::rmsnorm(selected_.data(), w_.final_norm, selected_.data(), P * n_out, H, static_cast<float>(c.rms_norm_eps));
  aggregated_.resize(static_cast<size_t>(n_out * H));
  stream_weights_.resize(static_cast<size_t>(n_out * P));
  aggregate_streams(w_, selected_.data(), n_out, aggregated_.data(), agg_ws_, stream_weights_.data());
  logits.resize(static_cast<size_t>(n_out * V));
  kernels::matmul(aggregated_.data(), n_out, w_.lm_head, nullptr, logits.data());

  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = static_cast<int64_t>(chunks[static_cast<size_t>(b)].size());
    lengths_[static_cast<size_t>(b)] += L;
    for (int64_t s = 0; s < P; ++s) cache_.length[static_cast<size_t>(s * B + b)] += static_cast<int32_t>(L);
  }
}

}  // namespace parscale
