// A deterministic test double of the model pass (StepRunner) over the real KvPool, for the
// scheduler's tests. It writes each new token's (id, position, stream) code into its stream
// row's page (layer 0 K, slot p % page_tokens of page table[p / page_tokens]) and derives the
// logits of a position from a hash of every code it reads back through the block tables, so a
// wrong, stale or shared-and-overwritten page changes the logits. It checks the StepRunner
// contract and throws std::logic_error on any breach: block tables missing pages, a write
// into a page with more than one holder, a pass over the row budget.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>

#include "engine/step_runner.h"
#include "model/kv_pool.h"
#include "parscale/adapter.h"

namespace parscale::testing {

inline uint64_t fake_mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

class FakeRunner : public StepRunner {
 public:
  FakeRunner(KvPool& pool, int64_t vocab, int64_t max_rows) : pool_(pool), vocab_(vocab), max_rows_(max_rows) {}

  int64_t rows = 0;    // stream rows computed over all passes
  int64_t passes = 0;
  int64_t max_rows_seen = 0;
  int64_t nan_streams = 0;  // sequences of this P get NaN logits (a broken model output)

  void run(std::span<const SequenceChunk> batch, BatchOutputs& out) override {
    const int64_t pt = pool_.page_tokens();
    float* k = static_cast<float*>(pool_.k_layer(0));  // [pages][1][pt][1] in the tests' config
    out.rows = 0;
    out.logits.clear();
    out.row_sequence.clear();
    out.row_position.clear();
    out.stream_weights.clear();
    out.row_weight_offset.clear();
    int64_t pass_rows = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const SequenceChunk& c = batch[i];
      const int64_t P = c.adapter ? c.adapter->streams : 1;
      const int64_t end = c.length + c.n_new;
      for (int64_t s = 0; s < P; ++s) {
        const std::vector<int32_t>& table = *c.block_tables[s];
        if (static_cast<int64_t>(table.size()) < (end + pt - 1) / pt)
          throw std::logic_error("block table of stream " + std::to_string(s) + " holds " +
                                 std::to_string(table.size()) + " pages for " + std::to_string(end) + " tokens");
        for (int64_t j = 0; j < c.n_new; ++j) {
          const int64_t p = c.length + j;
          const int32_t page = table[static_cast<size_t>(p / pt)];
          if (pool_.refcount(page) != 1)
            throw std::logic_error("write into page " + std::to_string(page) + " with refcount " +
                                   std::to_string(pool_.refcount(page)));
          if (c.tokens[j] < 0 || c.tokens[j] >= vocab_) throw std::logic_error("token outside the vocabulary");
          const uint32_t code = static_cast<uint32_t>((c.tokens[j] * 4096 + p) * 8 + s);
          std::memcpy(&k[page * pt + p % pt], &code, 4);
        }
      }
      pass_rows += P * c.n_new;
      if (c.outputs == SequenceChunk::Outputs::None || c.n_new == 0) continue;
      const int64_t first = c.outputs == SequenceChunk::Outputs::All ? c.length : end - 1;
      for (int64_t p = first; p < end; ++p) {
        uint64_t h = fake_mix(static_cast<uint64_t>(P));
        for (int64_t s = 0; s < P; ++s) {
          const std::vector<int32_t>& table = *c.block_tables[s];
          for (int64_t q = 0; q <= p; ++q) {
            uint32_t code;
            std::memcpy(&code, &k[table[static_cast<size_t>(q / pt)] * pt + q % pt], 4);
            h = fake_mix(h ^ code);
          }
        }
        for (int64_t v = 0; v < vocab_; ++v)
          out.logits.push_back(P == nan_streams ? std::numeric_limits<float>::quiet_NaN()
                                                : static_cast<float>(fake_mix(h ^ static_cast<uint64_t>(v)) % 2000) / 200.0f - 5.0f);
        out.row_sequence.push_back(static_cast<int32_t>(i));
        out.row_position.push_back(static_cast<int32_t>(p));
        out.row_weight_offset.push_back(static_cast<int32_t>(out.stream_weights.size()));
        for (int64_t s = 0; s < P; ++s) out.stream_weights.push_back(static_cast<float>(s + 1) / static_cast<float>(P));
        ++out.rows;
      }
    }
    if (pass_rows > max_rows_) throw std::logic_error("pass of " + std::to_string(pass_rows) + " rows");
    rows += pass_rows;
    max_rows_seen = std::max(max_rows_seen, pass_rows);
    ++passes;
  }

 private:
  KvPool& pool_;
  int64_t vocab_, max_rows_;
};

}  // namespace parscale::testing
