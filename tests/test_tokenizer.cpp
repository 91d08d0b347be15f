// Tokenizer conformance: ids, decode, streaming decode and chat templates against fixtures made by
// an independent implementation (npm @huggingface/transformers, see
// tests/reference/tokenizer/make_fixtures.mjs), for the Qwen3 and Qwen2.5 tokenizers.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"

using namespace parscale;
using json = nlohmann::json;

namespace {

std::string fixture_dir(const std::string& model) {
  return std::string(PARSCALE_SOURCE_DIR) + "/tests/fixtures/tokenizers/" + model;
}

json load_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

const Tokenizer& tokenizer(const std::string& model) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(model);
  if (it == cache.end()) it = cache.emplace(model, Tokenizer::from_model_dir(fixture_dir(model))).first;
  return it->second;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string stream_decode(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  StreamDecoder stream(tok, skip_special);
  std::string out;
  for (int32_t id : ids) out += stream.push(id);
  return out + stream.flush();
}

class Conformance : public ::testing::TestWithParam<std::string> {};

TEST_P(Conformance, EncodeDecodeMatchReference) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json fx = load_json(fixture_dir(GetParam()) + "/expected.json");
  ASSERT_GE(fx["cases"].size(), 2000u);
  int failures = 0;
  for (const json& c : fx["cases"]) {
    const std::string name = c["name"];
    const std::string text = c.contains("text") ? c["text"].get<std::string>() : from_hex(c["bytes_hex"]);
    const auto expected = c["ids"].get<std::vector<int32_t>>();
    const auto ids = tok.encode(text);
    if (ids != expected && ++failures <= 10) {
      ADD_FAILURE() << name << ": ids differ (got " << json(ids).dump().substr(0, 300) << ", expected "
                    << json(expected).dump().substr(0, 300) << ")";
    }
    const auto expected_plain = c.contains("ids_no_special") ? c["ids_no_special"].get<std::vector<int32_t>>() : expected;
    if (tok.encode(text, /*parse_special=*/false) != expected_plain && ++failures <= 10)
      ADD_FAILURE() << name << ": ids with parse_special=false differ";
    const std::string decoded = c["decoded"];
    if (tok.decode(expected) != decoded && ++failures <= 10)
      ADD_FAILURE() << name << ": decode differs: " << json(tok.decode(expected)).dump().substr(0, 300);
    const std::string decoded_skip = c.contains("decoded_skip_special") ? c["decoded_skip_special"].get<std::string>() : decoded;
    if (tok.decode(expected, true) != decoded_skip && ++failures <= 10)
      ADD_FAILURE() << name << ": decode(skip_special) differs";
    if (stream_decode(tok, expected, false) != decoded && ++failures <= 10)
      ADD_FAILURE() << name << ": streaming decode differs from decode";
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(Conformance, DecodeInvalidUtf8MatchesReference) {
  const Tokenizer& tok = tokenizer(GetParam());
  const json fx = load_json(fixture_dir(GetParam()) + "/expected.json");
  ASSERT_GE(fx["decode_cases"].size(), 100u);
  for (const json& c : fx["decode_cases"]) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(ids), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(tok.decode(ids, true), c["text_skip_special"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(stream_decode(tok, ids, false), c["text"].get<std::string>()) << c["ids"].dump();
    EXPECT_EQ(stream_decode(tok, ids, true), c["text_skip_special"].get<std::string>()) << c["ids"].dump();
  }
}

TEST_P(Conformance, ChatTemplateMatchesReference) {
  const Tokenizer& tok = tokenizer(GetParam());
  ASSERT_TRUE(tok.has_chat_template());
  const json fx = load_json(fixture_dir(GetParam()) + "/chat.json");
  ASSERT_GE(fx["conversations"].size(), 100u);
  for (const json& c : fx["conversations"]) {
    std::vector<ChatMessage> messages;
    for (const json& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    std::map<std::string, bool> flags;
    if (c.contains("flags")) flags = c["flags"].get<std::map<std::string, bool>>();
    const std::string rendered = tok.apply_chat_template(messages, c["add_generation_prompt"], flags);
    EXPECT_EQ(rendered, c["rendered"].get<std::string>()) << c["messages"].dump();
    EXPECT_EQ(tok.encode(rendered), c["ids"].get<std::vector<int32_t>>()) << c["messages"].dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Qwen, Conformance, ::testing::Values("qwen3", "qwen2.5"),
                         [](const auto& info) { return info.param == "qwen3" ? "Qwen3" : "Qwen2_5"; });

TEST(Tokenizer, VocabularyAndSpecialTokens) {
  const Tokenizer& tok = tokenizer("qwen3");
  EXPECT_EQ(tok.vocab_size(), 151669u);
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(tok.token_to_id("Hello"), 9707);
  EXPECT_EQ(tok.id_to_token(9707), "Hello");
  EXPECT_EQ(tok.id_to_token(220), "\xC4\xA0");  // "Ġ": the byte-level spelling of a space
  EXPECT_FALSE(tok.token_to_id("no such token").has_value());
  EXPECT_EQ(tok.id_to_token(-1), "");
  EXPECT_EQ(tok.id_to_token(1 << 29), "");
  EXPECT_TRUE(tok.is_special(151645));
  EXPECT_FALSE(tok.is_special(151667));  // <think> is a non-special added token
  // eos_token of tokenizer_config is <|im_end|>; <|endoftext|> is also a special end token.
  EXPECT_EQ(tok.eos_ids(), (std::vector<int32_t>{151643, 151645}));
  // Unknown ids are skipped in decode, as HF does.
  EXPECT_EQ(tok.decode({9707, 999999, -5, 1879}), "Hello world");
}

TEST(Tokenizer, BothMergeFormatsGiveTheSameModel) {
  // Qwen3 stores merges as ["a","b"] pairs, Qwen2.5 as "a b" strings; the vocabularies agree.
  const Tokenizer& a = tokenizer("qwen3");
  const Tokenizer& b = tokenizer("qwen2.5");
  const std::string text = "The quick brown fox jumps over the lazy dog. 12345 你好 🙂";
  EXPECT_EQ(a.encode(text), b.encode(text));
}

TEST(Tokenizer, StreamingHoldsBackIncompleteCharacters) {
  const Tokenizer& tok = tokenizer("qwen3");
  // "🙂" is 4 bytes; byte-level tokens for F0 9F 99 82 one at a time.
  std::vector<int32_t> byte_ids;
  for (unsigned char c : std::string("\xF0\x9F\x99\x82")) {
    auto id = tok.token_to_id(byte_level::symbol(c));
    ASSERT_TRUE(id.has_value());
    byte_ids.push_back(*id);
  }
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.push(byte_ids[0]), "");
  EXPECT_EQ(stream.push(byte_ids[1]), "");
  EXPECT_EQ(stream.push(byte_ids[2]), "");
  EXPECT_EQ(stream.push(byte_ids[3]), "\xF0\x9F\x99\x82");
  EXPECT_EQ(stream.flush(), "");
  // A truncated character followed by ASCII: U+FFFD appears when the ASCII arrives.
  EXPECT_EQ(stream.push(byte_ids[0]), "");
  EXPECT_EQ(stream.push(*tok.token_to_id("a")), "\xEF\xBF\xBD" "a");
  // A truncated character at the end comes out as U+FFFD on flush.
  EXPECT_EQ(stream.push(byte_ids[0]), "");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, ParseSpecialFalseTreatsSpecialTokensAsText) {
  const Tokenizer& tok = tokenizer("qwen3");
  const std::string text = "<|im_start|>user";
  EXPECT_EQ(tok.encode(text), (std::vector<int32_t>{151644, 872}));
  const auto plain = tok.encode(text, false);
  EXPECT_GT(plain.size(), 2u);
  for (int32_t id : plain) EXPECT_FALSE(tok.is_special(id));
  EXPECT_EQ(tok.decode(plain), text);
  // Non-special added tokens (<think>) are still matched.
  EXPECT_EQ(tok.encode("<think>", false), (std::vector<int32_t>{151667}));
}

TEST(Tokenizer, RustRegexSemanticsWhereJavaScriptDiffers) {
  // HF's Rust regex \s is Unicode White_Space, so U+0085 (NEL) is whitespace. In "x NEL NEL y"
  // the pieces are "x", NEL (\s+(?!\S) backs off one), NEL "y" ([^\r\n\p{L}\p{N}]?\p{L}+).
  const Tokenizer& tok = tokenizer("qwen3");
  const std::string nel = "\xC2\x85";
  const auto ids = tok.encode("x" + nel + nel + "y");
  std::vector<int32_t> expected = tok.encode("x");
  const auto nel_ids = tok.encode(nel);
  expected.insert(expected.end(), nel_ids.begin(), nel_ids.end());
  const auto nel_y = tok.encode(nel + "y");
  expected.insert(expected.end(), nel_y.begin(), nel_y.end());
  EXPECT_EQ(ids, expected);
  // (?i:'s) also matches the long s U+017F under Unicode case folding: "'ſ" is one piece,
  // so the letters after it start a new piece ("'ſx" -> "'ſ", "x").
  const std::string long_s = "\xC5\xBF";
  auto with_long_s = tok.encode("'" + long_s + "x");
  auto piece1 = tok.encode("'" + long_s);
  piece1.push_back(*tok.token_to_id("x"));
  EXPECT_EQ(with_long_s, piece1);
}

}  // namespace
