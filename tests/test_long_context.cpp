// Long-context goldens (tests/fixtures/long_context, written by tests/reference/make_long_fixtures.py):
// sequences of >= 700 tokens (several attention key blocks; P * L rows cross the MLP's 512-row
// chunking), decode after a long prefill, a batch mixing long and short sequences, and the context
// limit reached exactly (max_position_embeddings = 40). Going past the limit is a clear error,
// never a silent truncation.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/session.h"
#include "model/weights.h"
#include "test_util.h"

using namespace parscale;
using parscale::test::logit_close;

namespace {

struct LongGolden {
  std::vector<std::vector<int32_t>> sequences;
  std::vector<std::vector<int64_t>> positions;               // [seq][k]: stored positions
  std::vector<std::vector<std::vector<double>>> logits;     // [seq][k][V]
  int64_t decode_from = 0;
};

class LongContext : public ::testing::TestWithParam<std::string> {
 protected:
  test::ExactModeScope exact;  // the fixtures hold exact-arithmetic references
  void SetUp() override {
    const auto dir = test::fixtures_dir() / "long_context" / GetParam();
    weights = load_model(dir.string());
    auto j = test::read_json(dir / "long_golden.json");
    g.sequences = j["sequences"].get<std::vector<std::vector<int32_t>>>();
    g.positions = j["positions"].get<std::vector<std::vector<int64_t>>>();
    g.logits = j["logits"].get<std::vector<std::vector<std::vector<double>>>>();
    g.decode_from = j["decode_from"].get<int64_t>();
    V = weights.config.vocab_size;
  }

  // Checks the row of `got` (logits [n, V]) holding position `pos` of sequence s, when stored.
  // Returns whether the position is stored.
  bool check_position(const float* row, size_t s, int64_t pos, const std::string& what) {
    const auto& p = g.positions[s];
    const auto it = std::lower_bound(p.begin(), p.end(), pos);
    if (it == p.end() || *it != pos) return false;
    const auto& want = g.logits[s][static_cast<size_t>(it - p.begin())];
    for (int64_t v = 0; v < V; ++v) {
      if (!logit_close(row[v], want[static_cast<size_t>(v)])) {
        ADD_FAILURE() << what << ": seq " << s << " pos " << pos << " vocab " << v << ": got " << row[v] << ", expected "
                      << want[static_cast<size_t>(v)];
        return true;
      }
    }
    return true;
  }

  // Checks rows base[0..n) = positions first_pos.. of sequence s; returns how many were stored.
  int checked_rows(size_t s, int64_t first_pos, int64_t n, const float* base, const std::string& what) {
    int checked = 0;
    for (int64_t t = 0; t < n; ++t) checked += check_position(base + t * V, s, first_pos + t, what);
    return checked;
  }

  ModelWeights weights;
  LongGolden g;
  int64_t V = 0;
};

TEST_P(LongContext, FullPrefillOfEachSequence) {
  for (size_t s = 0; s < g.sequences.size(); ++s) {
    const auto& seq = g.sequences[s];
    const auto n = static_cast<int64_t>(seq.size());
    Session session(weights, 1, n);
    std::vector<float> logits;
    session.forward({seq}, Session::Outputs::AllPositions, logits);
    ASSERT_EQ(logits.size(), static_cast<size_t>(n * V));
    EXPECT_EQ(checked_rows(s, 0, n, logits.data(), "prefill"), static_cast<int>(g.positions[s].size()));
  }
  EXPECT_GE(g.sequences[0].size(), GetParam().rfind("long", 0) == 0 ? 700u : 40u);
}

TEST_P(LongContext, DecodeAfterLongPrefill) {
  const auto& seq = g.sequences[0];
  const auto n = static_cast<int64_t>(seq.size());
  ASSERT_GT(n, g.decode_from);
  Session session(weights, 1, n);
  std::vector<float> logits;
  const std::vector<int32_t> prefill(seq.begin(), seq.begin() + g.decode_from);
  session.forward({prefill}, Session::Outputs::LastPosition, logits);
  EXPECT_TRUE(check_position(logits.data(), 0, g.decode_from - 1, "prefill last"));
  for (int64_t t = g.decode_from; t < n; ++t) {
    session.forward({{seq[static_cast<size_t>(t)]}}, Session::Outputs::LastPosition, logits);
    ASSERT_TRUE(check_position(logits.data(), 0, t, "decode")) << "position " << t << " not stored";
  }
  EXPECT_EQ(session.length(0), n);
}

TEST_P(LongContext, BatchMixingLongAndShortSequences) {
  // All sequences in one pass, then the long ones go on in chunks while the short ones idle.
  int64_t longest = 0;
  for (const auto& s : g.sequences) longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
  const auto B = static_cast<int64_t>(g.sequences.size());
  Session session(weights, B, longest);
  std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(B));
  std::vector<int64_t> fed(static_cast<size_t>(B), 0);
  // Round 1: the first decode_from tokens of the long ones, everything of the short ones.
  for (int64_t b = 0; b < B; ++b) {
    const auto& s = g.sequences[static_cast<size_t>(b)];
    const auto take = std::min<int64_t>(static_cast<int64_t>(s.size()), g.decode_from);
    chunks[static_cast<size_t>(b)].assign(s.begin(), s.begin() + take);
  }
  int checked = 0;
  for (int round = 0; round < 100; ++round) {
    bool any = false;
    for (const auto& c : chunks) any = any || !c.empty();
    if (!any) break;
    std::vector<float> logits;
    session.forward(chunks, Session::Outputs::AllPositions, logits);
    const float* row = logits.data();
    for (int64_t b = 0; b < B; ++b) {
      auto& c = chunks[static_cast<size_t>(b)];
      checked += checked_rows(static_cast<size_t>(b), fed[static_cast<size_t>(b)], static_cast<int64_t>(c.size()), row,
                              "batch round " + std::to_string(round));
      row += static_cast<int64_t>(c.size()) * V;
      fed[static_cast<size_t>(b)] += static_cast<int64_t>(c.size());
      // Next round: 7 more tokens of the sequences not finished yet.
      const auto& s = g.sequences[static_cast<size_t>(b)];
      const int64_t rest = static_cast<int64_t>(s.size()) - fed[static_cast<size_t>(b)];
      const int64_t take = std::min<int64_t>(rest, 7);
      c.assign(s.begin() + fed[static_cast<size_t>(b)], s.begin() + fed[static_cast<size_t>(b)] + take);
    }
    EXPECT_EQ(row, logits.data() + logits.size());
  }
  int stored = 0;
  for (const auto& p : g.positions) stored += static_cast<int>(p.size());
  EXPECT_EQ(checked, stored);
  for (int64_t b = 0; b < B; ++b)
    EXPECT_EQ(session.length(b), static_cast<int64_t>(g.sequences[static_cast<size_t>(b)].size()));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LongContext,
                         ::testing::Values("long_ps2_f32", "long_qwen2_bf16", "ctx_limit_ps3_bf16"),
                         [](const auto& info) { return info.param; });

// ---- the context limit ----------------------------------------------------------------------------

class ContextLimit : public LongContext {};

TEST_P(ContextLimit, ReachedExactlyThenRefused) {
  const int64_t limit = weights.config.max_position_embeddings;
  const auto& seq = g.sequences[0];
  ASSERT_EQ(static_cast<int64_t>(seq.size()), limit);
  // A session longer than the model's context is refused up front.
  try {
    Session too_long(weights, 1, limit + 1);
    ADD_FAILURE() << "a session of " << limit + 1 << " tokens was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_position_embeddings"), std::string::npos) << e.what();
  }
  // Filling the context exactly works (prefill, then decode up to the last position) ...
  Session session(weights, 2, limit);
  std::vector<float> logits;
  const std::vector<int32_t> prefill(seq.begin(), seq.begin() + g.decode_from);
  session.forward({prefill, {g.sequences[2][0]}}, Session::Outputs::LastPosition, logits);
  EXPECT_TRUE(check_position(logits.data(), 0, g.decode_from - 1, "limit prefill"));
  EXPECT_TRUE(check_position(logits.data() + V, 2, 0, "short row"));
  for (int64_t t = g.decode_from; t < limit; ++t) {
    session.forward({{seq[static_cast<size_t>(t)]}, {}}, Session::Outputs::LastPosition, logits);
    ASSERT_TRUE(check_position(logits.data(), 0, t, "limit decode"));
  }
  EXPECT_EQ(session.length(0), limit);
  // ... and one token more is an error naming the sequence and the limit, not a truncation.
  try {
    session.forward({{seq[0]}, {}}, Session::Outputs::LastPosition, logits);
    ADD_FAILURE() << "a token past the context limit was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("sequence 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(limit + 1)), std::string::npos) << msg;
  }
  EXPECT_EQ(session.length(0), limit);  // nothing was appended
  // A prompt longer than the context in one chunk is refused the same way.
  Session fresh(weights, 1, limit);
  std::vector<int32_t> over(seq.begin(), seq.end());
  over.push_back(seq[0]);
  EXPECT_THROW(fresh.forward({over}, Session::Outputs::LastPosition, logits), Error);
  EXPECT_EQ(fresh.length(0), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ContextLimit, ::testing::Values("ctx_limit_ps3_bf16"),
                         [](const auto& info) { return info.param; });

}  // namespace
