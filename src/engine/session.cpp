#include "engine/session.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace parscale {

namespace {
KvPool session_pool(const ModelConfig& c, int64_t batch, int64_t max_len, const SessionOptions& o) {
  check(batch > 0, "session: batch must be > 0");
  check(max_len > 0, "session: max length must be > 0");
  check(o.page_tokens > 0, "session: page size must be > 0");
  if (max_len > c.max_position_embeddings)
    throw Error("session: " + std::to_string(max_len) + " tokens exceed the context limit max_position_embeddings = " +
                std::to_string(c.max_position_embeddings));
  const int64_t pages = batch * c.streams() * ((max_len + o.page_tokens - 1) / o.page_tokens);
  return KvPool(c, o.kv_dtype, o.page_tokens, pages);
}
}  // namespace

Session::Session(const ModelWeights& w, int64_t batch, int64_t max_len, const SessionOptions& options)
    : w_(w),
      batch_(batch),
      max_len_(max_len),
      pool_(session_pool(w.config, batch, max_len, options)),
      lengths_(static_cast<size_t>(batch), 0),
      forward_(*w_.backbone, pool_) {
  const int64_t P = w_.config.streams();
  const int64_t per_row = (max_len + options.page_tokens - 1) / options.page_tokens;
  tables_.resize(static_cast<size_t>(batch * P));
  for (auto& t : tables_)
    for (int64_t i = 0; i < per_row; ++i) t.push_back(pool_.allocate());
  table_ptrs_.resize(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < P; ++s) table_ptrs_[static_cast<size_t>(b)].push_back(&tables_[static_cast<size_t>(b * P + s)]);
  chunks_.resize(static_cast<size_t>(batch));
}

void Session::reset(int64_t b) {
  check(b >= 0 && b < batch_, "session: sequence index out of range");
  lengths_[static_cast<size_t>(b)] = 0;
}

void Session::forward(const std::vector<std::vector<int32_t>>& chunks, Outputs outputs, std::vector<float>& logits) {
  const ModelConfig& c = w_.config;
  const int64_t B = batch_;
  // (an if, not check(): building the message string would allocate on every decode step)
  if (static_cast<int64_t>(chunks.size()) != B) throw Error("session: forward needs one chunk per sequence");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = static_cast<int64_t>(chunks[static_cast<size_t>(b)].size());
    if (lengths_[static_cast<size_t>(b)] + L > max_len_)
      throw Error("sequence " + std::to_string(b) + ": " + std::to_string(lengths_[static_cast<size_t>(b)] + L) +
                  " tokens exceed this session's limit of " + std::to_string(max_len_) +
                  (max_len_ == c.max_position_embeddings ? " (max_position_embeddings)" : ""));
    SequenceChunk& sc = chunks_[static_cast<size_t>(b)];
    sc.adapter = w_.adapter.get();
    sc.block_tables = table_ptrs_[static_cast<size_t>(b)].data();
    sc.length = lengths_[static_cast<size_t>(b)];
    sc.tokens = chunks[static_cast<size_t>(b)].data();
    sc.n_new = L;
    sc.outputs = outputs == Outputs::AllPositions ? SequenceChunk::Outputs::All : SequenceChunk::Outputs::Last;
  }
  forward_.run(chunks_, out_);
  logits.swap(out_.logits);
  stream_weights_.swap(out_.stream_weights);
  for (int64_t b = 0; b < B; ++b) lengths_[static_cast<size_t>(b)] += static_cast<int64_t>(chunks[static_cast<size_t>(b)].size());
}

}  // namespace parscale
