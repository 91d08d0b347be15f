// End-to-end checks of the acceptance CLI forms against the golden fixtures.
#include "test_util.h"
#include "kernels/kernels.h"

using namespace parscale;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string bin() { return PARSCALE_BINARY; }
std::string model(const std::string& name) { return (test::fixtures_dir() / "models" / name).string(); }

TEST(Cli, LogitsJsonMatchesGoldenForABatch) {
  const std::string name = "ps3_t5_f16_untied_gqa3";
  json g = test::read_json(test::fixtures_dir() / "models" / name / "golden.json");
  std::string cmd = bin() + " logits --model " + model(name) + " --json";
  for (const auto& s : g["sequences"]) cmd += " --ids " + test::join_ids(s.get<std::vector<int32_t>>());
  std::string out, err;
  ASSERT_EQ(test::run_command(cmd, &out, &err), 0) << err;
  json j = json::parse(out);
  ASSERT_EQ(j["logits"].size(), g["logits"].size());
  for (size_t b = 0; b < g["logits"].size(); ++b) {
    ASSERT_EQ(j["logits"][b].size(), g["logits"][b].size());
    for (size_t t = 0; t < g["logits"][b].size(); ++t)
      for (size_t v = 0; v < g["logits"][b][t].size(); ++v)
        ASSERT_TRUE(test::logit_close(j["logits"][b][t][v].get<float>(), g["logits"][b][t][v].get<double>()))
            << b << "," << t << "," << v;
  }
}

TEST(Cli, GenerateJsonGreedy) {
  const std::string name = "ps4_t7_f32_tied_sharded";
  json g = test::read_json(test::fixtures_dir() / "models" / name / "golden.json");
  std::string out, err;
  const std::string cmd = bin() + " generate --model " + model(name) + " --ids " +
                          test::join_ids(g["greedy"]["prompt"].get<std::vector<int32_t>>()) + " --max-tokens " +
                          std::to_string(g["greedy"]["max_tokens"].get<int>()) + " --temperature 0 --ignore-eos --json";
  ASSERT_EQ(test::run_command(cmd, &out, &err), 0) << err;
  EXPECT_EQ(json::parse(out)["ids"], g["greedy"]["ids"]);
}

TEST(Cli, SamplingIsDeterministicForASeed) {
  const std::string base = bin() + " generate --model " + model("ps2_t1_f32_untied") +
                           " --ids 5,6,7 --max-tokens 12 --ignore-eos --json --temperature 0.9 --top-k 20 --top-p 0.9 --min-p 0.02 --repetition-penalty 1.1";
  std::string a, b, c;
  ASSERT_EQ(test::run_command(base + " --seed 7", &a), 0);
  ASSERT_EQ(test::run_command(base + " --seed 7", &b), 0);
  ASSERT_EQ(test::run_command(base + " --seed 8", &c), 0);
  EXPECT_EQ(a, b);
  EXPECT_EQ(json::parse(a)["ids"].size(), 12u);
  EXPECT_NE(a, c);
}

TEST(Cli, ContextLimitStopsWithAMessage) {
  // max_position_embeddings of this fixture:
  json cfg = test::read_json(test::fixtures_dir() / "models" / "ps2_t1_f32_untied" / "config.json");
  const int limit = cfg["max_position_embeddings"].get<int>();
  std::string out, err;
  ASSERT_EQ(test::run_command(bin() + " generate --model " + model("ps2_t1_f32_untied") + " --ids 1,2,3 --max-tokens " +
                                  std::to_string(limit + 50) + " --temperature 0 --ignore-eos --json",
                              &out, &err),
            0);
  // Prompt + generated tokens fill the context exactly (every token has a position in it, as the
  // serving engine requires of prompt + max_tokens).
  EXPECT_EQ(json::parse(out)["ids"].size(), static_cast<size_t>(limit - 3));
  EXPECT_NE(err.find("context limit"), std::string::npos) << err;
}

TEST(Cli, ErrorsAreOneLineWithNonZeroExit) {
  std::string out, err;
  EXPECT_EQ(test::run_command(bin() + " logits --model /nonexistent --ids 1 --json", &out, &err), 1);
  EXPECT_EQ(err, "parscale: error: /nonexistent: model folder not found\n");
  EXPECT_EQ(test::run_command(bin() + " logits --model " + model("ps2_t1_f32_untied") + " --ids 1,100000 --json", &out, &err), 1);
  EXPECT_NE(err.find("token id 100000 is outside the vocabulary"), std::string::npos) << err;
  EXPECT_EQ(test::run_command(bin() + " logits --model " + model("ps2_t1_f32_untied") + " --ids 1,x --json", &out, &err), 1);
  EXPECT_NE(err.find("\"x\" is not a token id"), std::string::npos) << err;
  EXPECT_EQ(test::run_command(bin() + " generate --model " + model("ps2_t1_f32_untied") + " --ids 1 --top-p 0", &out, &err), 1);
  EXPECT_NE(err.find("--top-p"), std::string::npos) << err;
  EXPECT_NE(test::run_command(bin() + " nosuchcommand", &out, &err), 0);
}

}  // namespace

namespace {

// `bench --json` on random tiny q8 weights in both compute modes: every row timed, the prefill's
// share of the compute peak reported, and the bf16 dot-product peak probed exactly when fast mode
// has those kernels here. (Figures are measured, never asserted: only presence and sign.)
TEST(Cli, BenchJsonReportsPeaksAndPrefillShare) {
  for (const std::string mode : {"exact", "fast"}) {
    std::string cmd = "PARSCALE_COMPUTE=";
    cmd += mode;
    cmd += ' ';
    cmd += bin();
    cmd += " bench --shape tiny --dtype q8 --streams 1,2 --prompt-len 8 --decode-steps 2 --threads 1 --json";
    std::string out, err;
    ASSERT_EQ(test::run_command(cmd, &out, &err), 0) << err;
    const json j = json::parse(out);
    EXPECT_EQ(j["machine"]["compute_mode"], mode);
    EXPECT_GT(j["machine"]["fma_peak_gflops"].get<double>(), 0.0);
    const double bf16_peak = j["machine"]["bf16dot_peak_gflops"].get<double>();
    if (mode == "fast" && parscale::kernels::fast_bf16_supported())
      EXPECT_GT(bf16_peak, 0.0);
    else
      EXPECT_EQ(bf16_peak, 0.0);
    ASSERT_EQ(j["results"].size(), 2u);
    for (const auto& r : j["results"]) {
      EXPECT_GT(r["prefill_tok_s"].get<double>(), 0.0);
      EXPECT_GT(r["prefill_gflops"].get<double>(), 0.0);
      EXPECT_GT(r["prefill_peak_share"].get<double>(), 0.0);
      EXPECT_GT(r["decode_ms_median"].get<double>(), 0.0);
    }
  }
}

}  // namespace
