// Text frontends end to end: `generate --prompt` (tokenize, generate, stream text) and `chat`
// (template, multi-turn history, KV-cache reuse), on a small random model that uses the
// tokenizer trained by `parscale tokenizer-train` (tests/fixtures/tokenizers/trained).
#include "test_util.h"

using namespace parscale;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string bin() { return PARSCALE_BINARY; }

// A random P = 2 model with the trained tokenizer's 1000-token vocabulary.
class TextModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tmp = new test::TempDir();
    model = (tmp->path / "model").string();
    const fs::path cfg = tmp->path / "config.json";
    std::ofstream(cfg) << json{{"model_type", "qwen2_parscale"}, {"vocab_size", 1000}, {"hidden_size", 32},
                               {"intermediate_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                               {"num_key_value_heads", 2}, {"max_position_embeddings", 256},
                               {"tie_word_embeddings", true}, {"parscale_n", 2}, {"parscale_n_tokens", 3},
                               {"eos_token_id", 999}}
                                  .dump();
    std::string out, err;
    ASSERT_EQ(test::run_command(bin() + " init --config " + cfg.string() + " --out " + model + " --seed 3", &out, &err), 0) << err;
    const fs::path tok = test::fixtures_dir() / "tokenizers" / "trained";
    fs::copy_file(tok / "tokenizer.json", fs::path(model) / "tokenizer.json");
    fs::copy_file(tok / "tokenizer_config.json", fs::path(model) / "tokenizer_config.json");
  }
  static void TearDownTestSuite() { delete tmp; }
  static test::TempDir* tmp;
  static std::string model;
};
test::TempDir* TextModel::tmp = nullptr;
std::string TextModel::model;

std::vector<int32_t> tokenize(const std::string& model, const std::string& text) {
  std::string out, err;
  EXPECT_EQ(test::run_command(bin() + " tokenize --model " + model + " --json --text '" + text + "'", &out, &err), 0) << err;
  return json::parse(out).get<std::vector<int32_t>>();
}


TEST_F(TextModel, PromptEqualsIdsPath) {
  const std::string prompt = "def parse(self, text):";
  std::string out, err;
  ASSERT_EQ(test::run_command(bin() + " generate --model " + model + " --prompt '" + prompt +
                                  "' --max-tokens 12 --temperature 0 --ignore-eos --json",
                              &out, &err),
            0)
      << err;
  json j = json::parse(out);
  const auto prompt_ids = tokenize(model, prompt);
  EXPECT_EQ(j["prompt_ids"].get<std::vector<int32_t>>(), prompt_ids);
  std::string out2;
  ASSERT_EQ(test::run_command(bin() + " generate --model " + model + " --ids " + test::join_ids(prompt_ids) +
                                  " --max-tokens 12 --temperature 0 --ignore-eos --json",
                              &out2),
            0);
  EXPECT_EQ(j["ids"], json::parse(out2)["ids"]);
  // Streaming text output is the prompt followed by the decoded ids.
  std::string text, dec;
  ASSERT_EQ(test::run_command(bin() + " generate --model " + model + " --prompt '" + prompt +
                                  "' --max-tokens 12 --temperature 0 --ignore-eos",
                              &text),
            0);
  ASSERT_EQ(test::run_command(bin() + " detokenize --model " + model + " --skip-special --ids " +
                                  test::join_ids(j["ids"].get<std::vector<int32_t>>()),
                              &dec),
            0);
  EXPECT_EQ(text, prompt + j["text"].get<std::string>() + "\n");
  EXPECT_EQ(j["text"].get<std::string>(), dec);
}

// Reply of `generate --messages` for a conversation (the chat template applied); greedy unless
// `sampling` gives other options.
std::string reply_for(const std::string& model, const json& messages,
                      const std::string& sampling = " --temperature 0 --max-tokens 8") {
  test::TempDir tmp;
  const auto f = tmp.path / "messages.json";
  std::ofstream(f) << messages.dump();
  std::string out, err;
  EXPECT_EQ(test::run_command(bin() + " generate --model " + model + " --messages " + f.string() + sampling +
                                  " --json",
                              &out, &err),
            0)
      << err;
  return json::parse(out)["text"].get<std::string>();
}

TEST_F(TextModel, ChatKeepsHistoryAndMatchesOneShotGeneration) {
  // Greedy chat, two turns on one cached session. Each reply must equal a fresh one-shot
  // generation from the whole conversation rendered with the template.
  std::string out, err;
  ASSERT_EQ(test::run_command("printf 'hello\\nwhat is x\\n' | " + bin() + " chat --model " + model +
                                  " --temperature 0 --max-tokens 8 --quiet",
                              &out, &err),
            0)
      << err;
  const std::string r1 = reply_for(model, json::array({{{"role", "user"}, {"content", "hello"}}}));
  std::string one;
  ASSERT_EQ(test::run_command(bin() + " generate --model " + model + " --chat --prompt hello --temperature 0 --max-tokens 8 --json", &one), 0);
  EXPECT_EQ(json::parse(one)["text"].get<std::string>(), r1);
  const std::string r2 = reply_for(model, json::array({{{"role", "user"}, {"content", "hello"}},
                                                       {{"role", "assistant"}, {"content", r1}},
                                                       {{"role", "user"}, {"content", "what is x"}}}));
  EXPECT_EQ(out, r1 + "\n" + r2 + "\n");
}

TEST_F(TextModel, SampledChatTurnsMatchOneShotGenerationWithTheSameSeed) {
  // Each turn is one engine request seeded from --seed, so a sampled reply (with a repetition
  // penalty) equals `generate --messages` of the conversation so far with the same options.
  const std::string sampling = " --temperature 1.2 --top-k 0 --top-p 1 --repetition-penalty 1.3 --seed 7 --max-tokens 10";
  std::string out, err;
  ASSERT_EQ(test::run_command("printf 'hello\\nwhat is x\\nand y\\n' | " + bin() + " chat --model " + model + sampling +
                                  " --quiet",
                              &out, &err),
            0)
      << err;
  json conv = json::array({{{"role", "user"}, {"content", "hello"}}});
  const std::string r1 = reply_for(model, conv, sampling);
  conv.push_back({{"role", "assistant"}, {"content", r1}});
  conv.push_back({{"role", "user"}, {"content", "what is x"}});
  const std::string r2 = reply_for(model, conv, sampling);
  conv.push_back({{"role", "assistant"}, {"content", r2}});
  conv.push_back({{"role", "user"}, {"content", "and y"}});
  const std::string r3 = reply_for(model, conv, sampling);
  EXPECT_EQ(out, r1 + "\n" + r2 + "\n" + r3 + "\n");
}

TEST_F(TextModel, ChatResetStartsOver) {
  std::string b;
  ASSERT_EQ(test::run_command("printf 'abc\\n/reset\\nhello\\n' | " + bin() + " chat --model " + model +
                                  " --temperature 0 --max-tokens 8 --quiet",
                              &b),
            0);
  // After /reset, "hello" is answered exactly as in a fresh conversation.
  const std::string abc = reply_for(model, json::array({{{"role", "user"}, {"content", "abc"}}}));
  const std::string hello = reply_for(model, json::array({{{"role", "user"}, {"content", "hello"}}}));
  EXPECT_EQ(b, abc + "\n" + hello + "\n");
}

TEST(Qwen3Chat, EnableThinkingReachesTheTemplate) {
  // A tiny random Qwen3 model with the Qwen3 tokenizer: --enable-thinking false appends the empty
  // think block to the generation prompt; true (the default) renders as HF's default.
  test::TempDir tmp;
  const std::string model = (tmp.path / "model").string();
  const fs::path cfg = tmp.path / "config.json";
  std::ofstream(cfg) << json{{"model_type", "qwen3"}, {"vocab_size", 151936}, {"hidden_size", 16},
                             {"intermediate_size", 32}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                             {"num_key_value_heads", 1}, {"head_dim", 8}, {"max_position_embeddings", 128},
                             {"tie_word_embeddings", true}}
                                .dump();
  std::string out, err;
  ASSERT_EQ(test::run_command(bin() + " init --config " + cfg.string() + " --out " + model + " --seed 1", &out, &err), 0) << err;
  const fs::path tok = test::fixtures_dir() / "tokenizers" / "qwen3";
  fs::copy_file(tok / "tokenizer.json", fs::path(model) / "tokenizer.json");
  fs::copy_file(tok / "tokenizer_config.json", fs::path(model) / "tokenizer_config.json");
  auto prompt_ids = [&](const std::string& extra) {
    std::string o, e;
    EXPECT_EQ(test::run_command(bin() + " generate --model " + model + " --chat --prompt hi --max-tokens 1 --temperature 0 --json" + extra, &o, &e), 0) << e;
    return json::parse(o)["prompt_ids"].get<std::vector<int32_t>>();
  };
  const auto thinking = prompt_ids(""), on = prompt_ids(" --enable-thinking true"), off = prompt_ids(" --enable-thinking false");
  EXPECT_EQ(thinking, on);
  auto expected = on;
  // "<think>\n\n</think>\n\n" in the Qwen3 tokenizer, as HF renders it (tokenizers/qwen3/chat.json).
  for (int32_t id : {151667, 271, 151668, 271}) expected.push_back(id);
  EXPECT_EQ(off, expected);
}

TEST_F(TextModel, VocabularyMismatchIsAnError) {
  std::string out, err;
  EXPECT_EQ(test::run_command(bin() + " generate --model " + (test::fixtures_dir() / "models" / "ps2_t1_f32_untied").string() +
                                  " --tokenizer " + (fs::path(model) / "tokenizer.json").string() + " --prompt hi",
                              &out, &err),
            1);
  EXPECT_NE(err.find("vocab_size"), std::string::npos) << err;
}

}  // namespace

namespace {

TEST_F(TextModel, TrainOnTextThenPerplexityOnText) {
  // `train --text` tokenizes with the model's tokenizer; the loss must fall on the training text,
  // and `perplexity --file` must agree with exp(loss).
  const std::string corpus = (test::fixtures_dir() / "tokenizers" / "trained" / "corpus.txt").string();
  const std::string out_dir = (tmp->path / "trained").string();
  std::string out, err;
  ASSERT_EQ(test::run_command(bin() + " train --model " + model + " --text " + corpus +
                                  " --train all --steps 30 --seq-len 32 --batch 4 --lr 3e-3 --eval-fraction 0 --no-progress --json --out " +
                                  out_dir,
                              &out, &err),
            0)
      << err;
  json summary = json::parse(out.substr(out.rfind("{\"")));
  EXPECT_EQ(summary["steps_done"].get<int>(), 30);
  std::string before, after;
  ASSERT_EQ(test::run_command(bin() + " perplexity --model " + model + " --file " + corpus + " --seq-len 32 --json", &before, &err), 0) << err;
  ASSERT_EQ(test::run_command(bin() + " perplexity --model " + out_dir + " --file " + corpus + " --seq-len 32 --json", &after, &err), 0) << err;
  json b = json::parse(before), a = json::parse(after);
  EXPECT_LT(a["loss"].get<double>(), b["loss"].get<double>() - 0.5);
  EXPECT_NEAR(a["perplexity"].get<double>(), std::exp(a["loss"].get<double>()), 1e-6 * a["perplexity"].get<double>());
  EXPECT_EQ(a["tokens"], b["tokens"]);
}

}  // namespace
