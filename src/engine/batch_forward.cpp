#include "engine/batch_forward.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "kernels/kernels.h"

namespace parscale {

BatchForward::BatchForward(const Backbone& backbone, KvPool& pool) : backbone_(backbone), pool_(pool) {}

namespace {
int64_t streams_of(const SequenceChunk& s) { return s.adapter ? s.adapter->streams : 1; }
}  // namespace

void BatchForward::run(std::span<const SequenceChunk> batch, BatchOutputs& out) {
  const ModelConfig& c = backbone_.config;
  const int64_t H = c.hidden_size, V = c.vocab_size, KVH = c.num_key_value_heads, D = c.head_dim;
  const int64_t PT = pool_.page_tokens();
  const int64_t n_seq = static_cast<int64_t>(batch.size());

  // Stream rows: sequence i occupies rows [row0_i, row0_i + P_i * n_i), row (s, t) = row0_i + s * n_i + t.
  int64_t R = 0, M = 0;
  seq_row0_.resize(static_cast<size_t>(n_seq));
  for (int64_t i = 0; i < n_seq; ++i) {
    const SequenceChunk& sc = batch[static_cast<size_t>(i)];
    if (sc.n_new < 0 || sc.length < 0) throw Error("forward: negative chunk length or sequence length");
    if (sc.adapter && (static_cast<int64_t>(sc.adapter->prefix_k.size()) != c.num_hidden_layers))
      throw Error("forward: adapter '" + sc.adapter->name + "' does not match the backbone's layers");
    if (sc.length + sc.n_new > c.max_position_embeddings)
      throw Error("forward: sequence of " + std::to_string(sc.length + sc.n_new) + " tokens exceeds the context of " +
                  std::to_string(c.max_position_embeddings) + " tokens (max_position_embeddings)");
    const int64_t need_pages = (sc.length + sc.n_new + PT - 1) / PT;
    for (int64_t s = 0; s < streams_of(sc); ++s) {
      const std::vector<int32_t>* t = sc.block_tables ? sc.block_tables[s] : nullptr;
      if (!t || static_cast<int64_t>(t->size()) < need_pages)
        throw Error("forward: stream " + std::to_string(s) + " of sequence " + std::to_string(i) + " has " +
                    std::to_string(t ? t->size() : 0) + " KV pages, needs " + std::to_string(need_pages));
    }
    seq_row0_[static_cast<size_t>(i)] = R;
    R += streams_of(sc) * sc.n_new;
    M += sc.n_new;
  }
  last_rows_ = R;
  out.rows = 0;
  out.logits.clear();
  out.row_sequence.clear();
  out.row_position.clear();
  out.stream_weights.clear();
  out.row_weight_offset.clear();
  if (R == 0) return;

  // Token ids (each token once), then the rows' positions, block tables and prefixes.
  ids_.resize(static_cast<size_t>(M));
  pos_.resize(static_cast<size_t>(R));
  row_pages_.resize(static_cast<size_t>(R));
  row_prefix_.resize(static_cast<size_t>(R));
  int64_t m0 = 0;
  for (int64_t i = 0; i < n_seq; ++i) {
    const SequenceChunk& sc = batch[static_cast<size_t>(i)];
    std::copy_n(sc.tokens, sc.n_new, ids_.data() + m0);
    for (int64_t s = 0; s < streams_of(sc); ++s) {
      const RowPrefix prefix = stream_prefix(sc.adapter, KVH, D, s);
      for (int64_t t = 0; t < sc.n_new; ++t) {
        const size_t r = static_cast<size_t>(seq_row0_[static_cast<size_t>(i)] + s * sc.n_new + t);
        pos_[r] = static_cast<int32_t>(sc.length + t);
        row_pages_[r] = sc.block_tables[s]->data();
        row_prefix_[r] = prefix;
      }
    }
    m0 += sc.n_new;
  }

  // Embeddings, replicated into each sequence's P streams.
  embedded_.resize(static_cast<size_t>(M * H));
  embed_tokens(backbone_, ids_.data(), M, embedded_.data());
  x_.resize(static_cast<size_t>(R * H));
  m0 = 0;
  for (int64_t i = 0; i < n_seq; ++i) {
    const SequenceChunk& sc = batch[static_cast<size_t>(i)];
    for (int64_t s = 0; s < streams_of(sc); ++s)
      std::copy_n(embedded_.data() + m0 * H, sc.n_new * H, x_.data() + (seq_row0_[static_cast<size_t>(i)] + s * sc.n_new) * H);
    m0 += sc.n_new;
  }

  // Every backbone matmul once over all rows of all sequences.
  const TokenRows rows{R, pos_.data(), row_pages_.data(), row_prefix_.data()};
  decoder_forward(backbone_, pool_, rows, x_.data(), ws_);

  // Output rows in (sequence, position) order.
  for (int64_t i = 0; i < n_seq; ++i) {
    const SequenceChunk& sc = batch[static_cast<size_t>(i)];
    if (sc.n_new == 0 || sc.outputs == SequenceChunk::Outputs::None) continue;
    const int64_t t0 = sc.outputs == SequenceChunk::Outputs::All ? 0 : sc.n_new - 1;
    for (int64_t t = t0; t < sc.n_new; ++t) {
      out.row_sequence.push_back(static_cast<int32_t>(i));
      out.row_position.push_back(static_cast<int32_t>(sc.length + t));
    }
  }
  const int64_t n_out = static_cast<int64_t>(out.row_sequence.size());
  out.rows = n_out;
  if (n_out == 0) return;
  out.row_weight_offset.resize(static_cast<size_t>(n_out));
  aggregated_.resize(static_cast<size_t>(n_out * H));

  // Per adapter group (sequences sharing an adapter, in order): gather the output positions of
  // every stream [P][Mg][H], final norm, aggregation; results go to their global output rows.
  groups_.clear();
  for (const SequenceChunk& sc : batch)
    if (std::find(groups_.begin(), groups_.end(), sc.adapter) == groups_.end()) groups_.push_back(sc.adapter);
  int64_t weight_total = 0;
  for (const Adapter* a : groups_) {
    const int64_t P = a ? a->streams : 1;
    group_out_.clear();
    for (int64_t r = 0; r < n_out; ++r)
      if (batch[static_cast<size_t>(out.row_sequence[static_cast<size_t>(r)])].adapter == a) group_out_.push_back(static_cast<int32_t>(r));
    const int64_t Mg = static_cast<int64_t>(group_out_.size());
    if (Mg == 0) continue;
    selected_.resize(static_cast<size_t>(P * Mg * H));
    for (int64_t s = 0; s < P; ++s)
      for (int64_t j = 0; j < Mg; ++j) {
        const int32_t r = group_out_[static_cast<size_t>(j)];
        const int32_t i = out.row_sequence[static_cast<size_t>(r)];
        const SequenceChunk& sc = batch[static_cast<size_t>(i)];
        const int64_t t = out.row_position[static_cast<size_t>(r)] - sc.length;
        const int64_t src_row = seq_row0_[static_cast<size_t>(i)] + s * sc.n_new + t;
        std::copy_n(x_.data() + src_row * H, H, selected_.data() + (s * Mg + j) * H);
      }
    kernels::rmsnorm(selected_.data(), backbone_.final_norm, selected_.data(), P * Mg, H, static_cast<float>(c.rms_norm_eps));
    weights_.resize(static_cast<size_t>(Mg * P));
    // Aggregated rows of the group land contiguously in `embedded_` (free now), then scatter.
    embedded_.resize(static_cast<size_t>(std::max(M, Mg) * H));
    aggregate_streams(a, H, selected_.data(), Mg, embedded_.data(), agg_ws_, weights_.data());
    for (int64_t j = 0; j < Mg; ++j) {
      const int32_t r = group_out_[static_cast<size_t>(j)];
      std::copy_n(embedded_.data() + j * H, H, aggregated_.data() + static_cast<int64_t>(r) * H);
      out.row_weight_offset[static_cast<size_t>(r)] = static_cast<int32_t>(weight_total + j * P);
    }
    out.stream_weights.insert(out.stream_weights.end(), weights_.begin(), weights_.begin() + Mg * P);
    weight_total += Mg * P;
  }
  // One lm_head over every output position.
  out.logits.resize(static_cast<size_t>(n_out * V));
  kernels::matmul(aggregated_.data(), n_out, backbone_.lm_head, nullptr, out.logits.data());
}

}  // namespace parscale
