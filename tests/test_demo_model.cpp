// The bundled demo model (models/demo, made by scripts/make_demo_model.sh): the BF16 backbone,
// its tokenizer and the P = 2 / P = 4 adapters load; the held-out loss of P = 1, 2, 4 on the
// committed held-out sample (models/demo/heldout_sample.py.txt) is finite, far below a uniform
// guess, and within 0.05 of the value the script recorded in models/demo/heldout.json; and text
// generation from a prompt gives valid UTF-8 Python-looking text.
#include "test_util.h"

#include <cstdint>

using namespace parscale;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string bin() { return PARSCALE_BINARY; }
fs::path demo() { return test::source_dir() / "models" / "demo"; }

std::string adapter_arg(int p) {
  return p == 1 ? std::string() : " --adapter " + (demo() / ("adapter-p" + std::to_string(p) + ".safetensors")).string();
}

// True iff s is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = 0;
    uint32_t cp = 0;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
    else return false;
    if (i + static_cast<size_t>(n) >= s.size()) return false;  // truncated sequence
    for (int k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<size_t>(n) + 1;
  }
  return true;
}

TEST(DemoModel, FilesAndShape) {
  for (const char* f : {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                        "tokenizer_config.json", "adapter-p2.safetensors", "adapter-p4.safetensors",
                        "heldout_sample.py.txt", "heldout.json", "README.md"})
    EXPECT_TRUE(fs::exists(demo() / f)) << f;
  const json cfg = test::read_json(demo() / "config.json");
  EXPECT_EQ(cfg["vocab_size"].get<int>(), 4096);
  EXPECT_EQ(cfg["hidden_size"].get<int>(), 256);
  EXPECT_TRUE(cfg["tie_word_embeddings"].get<bool>());
  // The budget: the whole folder at most 20 MB.
  uintmax_t total = 0;
  for (const auto& e : fs::directory_iterator(demo())) total += fs::file_size(e.path());
  EXPECT_LE(total, 20u * 1000u * 1000u);
}

TEST(DemoModel, HeldOutLossMatchesRecordedAndFallsBelowUniform) {
  const json rec = test::read_json(demo() / "heldout.json");
  const fs::path sample = demo() / "heldout_sample.py.txt";
  const int seq = rec["seq_len"].get<int>();
  for (int p : {1, 2, 4}) {
    std::string out, err;
    ASSERT_EQ(test::run_command(bin() + " perplexity --model " + demo().string() + adapter_arg(p) + " --file " +
                                    sample.string() + " --seq-len " + std::to_string(seq) + " --json",
                                &out, &err),
              0)
        << "P = " << p << ": " << err;
    const json j = json::parse(out);
    const double loss = j["loss"].get<double>();
    ASSERT_TRUE(std::isfinite(loss)) << "P = " << p;
    EXPECT_EQ(j["tokens"].get<int64_t>(), rec["sample"]["tokens"].get<int64_t>()) << "P = " << p;
    EXPECT_NEAR(loss, rec["sample"]["loss"][std::to_string(p)].get<double>(), 0.05) << "P = " << p;
    // A trained model: far below the uniform guess ln(4096) = 8.32 nats/token.
    EXPECT_LT(loss, 0.6 * std::log(4096.0)) << "P = " << p;
  }
}

TEST(DemoModel, GeneratesValidText) {
  for (int p : {1, 4}) {
    std::string out, err;
    ASSERT_EQ(test::run_command(bin() + " generate --model " + demo().string() + adapter_arg(p) +
                                    " --prompt 'def fibonacci(n):' --max-tokens 40 --temperature 0 --ignore-eos --json",
                                &out, &err),
              0)
        << "P = " << p << ": " << err;
    const json j = json::parse(out);
    const auto ids = j["ids"].get<std::vector<int32_t>>();
    const std::string text = j["text"].get<std::string>();
    EXPECT_EQ(ids.size(), 40u) << "P = " << p;
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 4096) << id;
    EXPECT_TRUE(valid_utf8(text)) << text;
    // A model of Python source continues a `def` line with an indented body.
    EXPECT_NE(text.find("\n    "), std::string::npos) << "P = " << p << ": " << text;
  }
}

}  // namespace
