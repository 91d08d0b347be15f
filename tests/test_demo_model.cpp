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

// `tokenize --file --out` writes a token file whose tokens are exactly what `perplexity --file`
// tokenizes by itself: the two give the same token count and loss.
TEST(DemoModel, TokenFileEqualsTextPath) {
  test::TempDir tmp;
  const fs::path sample = demo() / "heldout_sample.py.txt", bin_file = tmp.path / "sample.bin";
  std::string out, err;
  ASSERT_EQ(test::run_command(bin() + " tokenize --tokenizer " + (demo() / "tokenizer.json").string() + " --file " +
                                  sample.string() + " --out " + bin_file.string(),
                              &out, &err),
            0)
      << err;
  std::string via_text, via_tokens;
  ASSERT_EQ(test::run_command(bin() + " perplexity --model " + demo().string() + " --file " + sample.string() +
                                  " --seq-len 256 --json",
                              &via_text, &err),
            0)
      << err;
  ASSERT_EQ(test::run_command(bin() + " perplexity --model " + demo().string() + " --tokens " + bin_file.string() +
                                  " --seq-len 256 --json",
                              &via_tokens, &err),
            0)
      << err;
  const json a = json::parse(via_text), b = json::parse(via_tokens);
  EXPECT_EQ(a["tokens"], b["tokens"]);
  EXPECT_DOUBLE_EQ(a["loss"].get<double>(), b["loss"].get<double>());
  // Header: magic, version 1, header size 32, n tokens, vocabulary 4096.
  std::ifstream in(bin_file, std::ios::binary);
  char magic[8];
  uint32_t version = 0, header = 0;
  uint64_t n = 0, vocab = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&version), 4);
  in.read(reinterpret_cast<char*>(&header), 4);
  in.read(reinterpret_cast<char*>(&n), 8);
  in.read(reinterpret_cast<char*>(&vocab), 8);
  EXPECT_EQ(std::string(magic, 8), "PSTOKEN1");
  EXPECT_EQ(version, 1u);
  EXPECT_EQ(header, 32u);
  EXPECT_EQ(vocab, 4096u);
  EXPECT_EQ(fs::file_size(bin_file), 32 + 4 * n);
}

TEST(DemoModel, GeneratesValidText) {
  std::vector<std::vector<int32_t>> ids_of_p;
  for (int p : {1, 4}) {
    std::string out, err;
    ASSERT_EQ(test::run_command(bin() + " generate --model " + demo().string() + adapter_arg(p) +
                                    " --prompt 'def fibonacci(n):\n' --max-tokens 40 --temperature 0 --ignore-eos --json",
                                &out, &err),
              0)
        << "P = " << p << ": " << err;
    const json j = json::parse(out);
    const auto ids = j["ids"].get<std::vector<int32_t>>();
    const std::string text = j["text"].get<std::string>();
    EXPECT_EQ(ids.size(), 40u) << "P = " << p;
    for (int32_t id : ids) EXPECT_TRUE(id >= 0 && id < 4096) << id;
    EXPECT_TRUE(valid_utf8(text)) << text;
    // The text is the detokenization of the ids.
    std::string dec;
    ASSERT_EQ(test::run_command(bin() + " detokenize --model " + demo().string() + " --ids " + [&] {
                std::string a;
                for (size_t i = 0; i < ids.size(); ++i) {
                  if (i) a += ',';
                  a += std::to_string(ids[i]);
                }
                return a;
              }(), &dec, &err), 0) << err;
    EXPECT_EQ(dec, text);
    // A model of Python source continues a `def` line (and its newline) with Python: an indented
    // body, and a docstring, a keyword or `self` in it (a random model of this vocabulary almost
    // never starts with four spaces and emits one of these in 40 tokens).
    bool pythonic = false;
    for (const char* kw : {"\"\"\"", "return", "if ", "self", "def ", "import", "None", "for ", "raise"})
      pythonic = pythonic || text.find(kw) != std::string::npos;
    EXPECT_TRUE(pythonic) << "P = " << p << ": " << text;
    EXPECT_EQ(text.rfind("    ", 0), 0u) << "P = " << p << ": the body is not indented: " << text;
    ids_of_p.push_back(ids);
  }
  // The P = 4 adapter changes the predictions (its streams and aggregation are applied).
  EXPECT_NE(ids_of_p[0], ids_of_p[1]);
}

}  // namespace
