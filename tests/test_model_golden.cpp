// The engine against the PyTorch reference's golden logits (tests/fixtures/models/*/golden.json):
// every position of full forwards, a batch of different lengths, prefill + token-by-token
// decode, chunked prefill, greedy generation, and P = 1 as plain Qwen2.
#include <algorithm>

#include "engine/generate.h"
#include "engine/sampling.h"
#include "engine/session.h"
#include "model/weights.h"
#include "test_util.h"

using namespace parscale;
using parscale::test::logit_close;

namespace {

struct Golden {
  std::vector<std::vector<int32_t>> sequences;
  std::vector<std::vector<std::vector<double>>> logits;  // [seq][pos][V]
  std::vector<int32_t> greedy_prompt, greedy_ids;
  int64_t greedy_max_tokens = 0;
};

Golden read_golden(const std::string& name) {
  auto j = test::read_json(test::fixtures_dir() / "models" / name / "golden.json");
  Golden g;
  g.sequences = j["sequences"].get<std::vector<std::vector<int32_t>>>();
  g.logits = j["logits"].get<std::vector<std::vector<std::vector<double>>>>();
  g.greedy_prompt = j["greedy"]["prompt"].get<std::vector<int32_t>>();
  g.greedy_ids = j["greedy"]["ids"].get<std::vector<int32_t>>();
  g.greedy_max_tokens = j["greedy"]["max_tokens"].get<int64_t>();
  return g;
}

// Compares logits rows [n, V] against expected rows; checks tolerance and exact argmax.
double compare_rows(const std::vector<float>& got, const std::vector<std::vector<double>>& expected, int64_t V,
                    const std::string& what) {
  EXPECT_EQ(got.size(), expected.size() * static_cast<size_t>(V)) << what;
  double max_err = 0.0;
  for (size_t r = 0; r < expected.size() && (r + 1) * V <= got.size(); ++r) {
    for (int64_t v = 0; v < V; ++v) {
      const float g = got[r * V + v];
      const double e = expected[r][static_cast<size_t>(v)];
      max_err = std::max(max_err, std::fabs(g - e));
      if (!logit_close(g, e)) {
        ADD_FAILURE() << what << ": row " << r << " vocab " << v << ": got " << g << ", expected " << e;
        return max_err;
      }
    }
    const auto& row = expected[r];
    const int64_t want = std::max_element(row.begin(), row.end()) - row.begin();
    EXPECT_EQ(argmax(got.data() + r * V, V), want) << what << ": argmax of row " << r;
  }
  return max_err;
}

class GoldenModel : public ::testing::TestWithParam<std::string> {
 protected:
  test::ExactModeScope exact;  // the fixtures hold exact-arithmetic references
  void SetUp() override {
    dir = (test::fixtures_dir() / "models" / GetParam()).string();
    weights = load_model(dir);
    golden = read_golden(GetParam());
    V = weights.config.vocab_size;
  }
  std::string dir;
  ModelWeights weights;
  Golden golden;
  int64_t V = 0;
};

TEST_P(GoldenModel, LoadsWithoutUnknownTensors) { EXPECT_TRUE(weights.unknown_tensors.empty()); }

TEST_P(GoldenModel, FullForwardEveryPosition) {
  double worst = 0;
  for (size_t i = 0; i < golden.sequences.size(); ++i) {
    Session s(weights, 1, static_cast<int64_t>(golden.sequences[i].size()));
    std::vector<float> logits;
    s.forward({golden.sequences[i]}, Session::Outputs::AllPositions, logits);
    worst = std::max(worst, compare_rows(logits, golden.logits[i], V, GetParam() + " seq " + std::to_string(i)));
  }
  RecordProperty("max_abs_error", std::to_string(worst));
}

TEST_P(GoldenModel, BatchOfDifferentLengths) {
  int64_t longest = 0;
  std::vector<std::vector<double>> expected;
  for (size_t i = 0; i < golden.sequences.size(); ++i) {
    longest = std::max<int64_t>(longest, static_cast<int64_t>(golden.sequences[i].size()));
    expected.insert(expected.end(), golden.logits[i].begin(), golden.logits[i].end());
  }
  Session s(weights, static_cast<int64_t>(golden.sequences.size()), longest);
  std::vector<float> logits;
  s.forward(golden.sequences, Session::Outputs::AllPositions, logits);
  compare_rows(logits, expected, V, GetParam() + " batch");
}

TEST_P(GoldenModel, PrefillThenDecodeEqualsFullForward) {
  for (size_t i = 0; i < golden.sequences.size(); ++i) {
    const auto& seq = golden.sequences[i];
    Session s(weights, 1, static_cast<int64_t>(seq.size()));
    std::vector<float> logits;
    // Prefill the first token, then one token at a time.
    for (size_t t = 0; t < seq.size(); ++t) {
      s.forward({{seq[t]}}, Session::Outputs::LastPosition, logits);
      compare_rows(logits, {golden.logits[i][t]}, V, GetParam() + " decode seq " + std::to_string(i) + " pos " + std::to_string(t));
    }
  }
}

TEST_P(GoldenModel, ChunkedPrefillInBatch) {
  // All sequences together, each fed in chunks of a different size; sequences that run out feed
  // empty chunks while the others go on.
  const size_t B = golden.sequences.size();
  int64_t longest = 0;
  for (const auto& s : golden.sequences) longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
  Session s(weights, static_cast<int64_t>(B), longest);
  std::vector<size_t> fed(B, 0);
  std::vector<float> logits;
  for (int round = 0; round < 64; ++round) {
    std::vector<std::vector<int32_t>> chunks(B);
    std::vector<std::vector<double>> expected;
    bool any = false;
    for (size_t b = 0; b < B; ++b) {
      const size_t n = std::min(golden.sequences[b].size() - fed[b], b % 3 + 2);
      for (size_t t = 0; t < n; ++t) {
        chunks[b].push_back(golden.sequences[b][fed[b] + t]);
        expected.push_back(golden.logits[b][fed[b] + t]);
      }
      fed[b] += n;
      any = any || n > 0;
    }
    if (!any) break;
    s.forward(chunks, Session::Outputs::AllPositions, logits);
    compare_rows(logits, expected, V, GetParam() + " chunk round " + std::to_string(round));
  }
  for (size_t b = 0; b < B; ++b) EXPECT_EQ(s.length(static_cast<int64_t>(b)), static_cast<int64_t>(golden.sequences[b].size()));
}

TEST_P(GoldenModel, GreedyGeneration) {
  GenerateOptions opt;
  opt.max_tokens = golden.greedy_max_tokens;
  opt.sampling.temperature = 0.0f;
  opt.ignore_eos = true;
  GenerateResult r = generate(weights, {golden.greedy_prompt}, opt);
  EXPECT_EQ(r.ids[0], golden.greedy_ids);
  // The fixture's continuation holds no eos id, so stopping at eos must not change it.
  opt.ignore_eos = false;
  r = generate(weights, {golden.greedy_prompt}, opt);
  EXPECT_EQ(r.ids[0], golden.greedy_ids);
  // Batched generation of the same prompt twice and of a different one gives the same ids.
  r = generate(weights, {golden.greedy_prompt, golden.sequences[0], golden.greedy_prompt}, opt);
  EXPECT_EQ(r.ids[0], golden.greedy_ids);
  EXPECT_EQ(r.ids[2], golden.greedy_ids);
}

TEST_P(GoldenModel, ParameterSetRoundTripGivesSameLogits) {
  // Weights copied to owned fp32 parameters (the training representation) compute the same logits.
  ParameterSet p = parameters_from_weights(weights);
  ModelWeights w2 = weights_from_parameters(p);
  Session s(w2, 1, static_cast<int64_t>(golden.sequences.back().size()));
  std::vector<float> logits;
  s.forward({golden.sequences.back()}, Session::Outputs::AllPositions, logits);
  compare_rows(logits, golden.logits.back(), V, GetParam() + " parameter set");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenModel, ::testing::ValuesIn(test::model_fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(GoldenModels, CoverTheIssueMatrix) {
  // Guard against the fixture set silently shrinking: P = 1, 2, 3, 4 and all three dtypes.
  std::set<int64_t> streams;
  std::set<std::string> dtypes;
  for (const auto& name : test::model_fixture_names()) {
    ModelWeights w = load_model((test::fixtures_dir() / "models" / name).string());
    streams.insert(w.config.streams());
    dtypes.insert(dtype_name(w.bb().embed_tokens.dtype));
  }
  EXPECT_EQ(streams, (std::set<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(dtypes, (std::set<std::string>{"F32", "BF16", "F16"}));
}

}  // namespace
