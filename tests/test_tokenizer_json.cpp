// The tokenizer.json reader (tokenizer/tokenizer_json.h): the same tree as nlohmann::json::parse
// for the document outside model.vocab / model.merges, those two as flat tables, clear errors for
// text that is not JSON; and the byte-level decoder's fast path against its definition.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_json.h"

using namespace parscale;
using nlohmann::json;

namespace {

json read(const std::string& text, tokenizer_json::Tables& t) { return tokenizer_json::parse(text, "t.json", t); }

std::string error_of(const std::string& text) {
  tokenizer_json::Tables t;
  try {
    read(text, t);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerJson, SameTreeAsNlohmannOutsideTheTables) {
  const std::string docs[] = {
      R"({"a": 1, "b": [true, false, null, -0, 0.5, -12.5e-3, 1E+2, 18446744073709551615, -9223372036854775808],
          "c": {"d": "x\"y\\z\/\b\f\n\r\t\u00e9\u4e2d\ud83d\ude00", "e": {}, "f": []}, "g": "Ġ中😀", "a": 2})",
      R"([1, [2, [3, [4, {"model": {"vocab": {"x": 1}}}]]]])",  // "model" only at the top level is special
      R"({"model": {"type": "BPE", "vocab": [1, 2], "merges": "ab"}})",  // wrong types stay in the tree
      R"( "just a string" )",
      R"(123456789012345678901234567890)",
  };
  for (const std::string& d : docs) {
    tokenizer_json::Tables t;
    EXPECT_EQ(read(d, t), json::parse(d)) << d;
    EXPECT_FALSE(t.vocab_seen);
    EXPECT_FALSE(t.merges_seen);
  }
}

TEST(TokenizerJson, VocabAndMergesGoToTheTables) {
  const std::string d = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "a\u0062": 2, "Ġ": 3},
      "merges": ["a b", ["a", "b"], ["Ġ", "ab"]], "x": 5}, "added_tokens": []})";
  tokenizer_json::Tables t;
  const json j = read(d, t);
  EXPECT_EQ(j, json::parse(R"({"model": {"type": "BPE", "x": 5}, "added_tokens": []})"));
  ASSERT_TRUE(t.vocab_seen);
  ASSERT_EQ(t.vocab.size(), 4u);
  EXPECT_EQ(t.str(t.vocab[2].first), "ab");
  EXPECT_EQ(t.vocab[2].second, 2);
  EXPECT_EQ(t.str(t.vocab[3].first), "Ġ");
  ASSERT_TRUE(t.merges_seen);
  ASSERT_EQ(t.merges.size(), 3u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(t.str(t.merges[i].first), "a");
    EXPECT_EQ(t.str(t.merges[i].second), "b");
  }
  EXPECT_EQ(t.str(t.merges[2].first), "Ġ");
  EXPECT_EQ(t.str(t.merges[2].second), "ab");
  EXPECT_TRUE(t.vocab_error.empty());
  EXPECT_TRUE(t.merges_error.empty());
}

TEST(TokenizerJson, BadEntriesAreReportedByName) {
  struct Case { std::string doc, vocab_error, merges_error; };
  const Case cases[] = {
      {R"({"model": {"vocab": {"a": 0, "q": -1}, "merges": []}})", "model.vocab['q'] must be a non-negative integer id", ""},
      {R"({"model": {"vocab": {"q": 1.0}, "merges": []}})", "model.vocab['q'] must be a non-negative integer id", ""},
      {R"({"model": {"vocab": {"q": "1"}, "merges": []}})", "model.vocab['q'] must be a non-negative integer id", ""},
      {R"({"model": {"vocab": {"q": 1073741824}, "merges": []}})", "model.vocab['q'] must be a non-negative integer id", ""},
      {R"({"model": {"vocab": {}, "merges": ["a b", "ab"]}})", "", "model.merges[1] = \"ab\" is not two tokens separated by one space"},
      {R"({"model": {"vocab": {}, "merges": ["a b c"]}})", "", "model.merges[0] = \"a b c\" is not two tokens separated by one space"},
      {R"({"model": {"vocab": {}, "merges": [["a"]]}})", "", "model.merges[0] must be \"a b\" or [\"a\", \"b\"], found [\"a\"]"},
      {R"({"model": {"vocab": {}, "merges": ["a b", 7]}})", "", "model.merges[1] must be \"a b\" or [\"a\", \"b\"], found 7"},
  };
  for (const Case& c : cases) {
    tokenizer_json::Tables t;
    read(c.doc, t);
    EXPECT_EQ(t.vocab_error, c.vocab_error) << c.doc;
    EXPECT_EQ(t.merges_error, c.merges_error) << c.doc;
  }
}

TEST(TokenizerJson, InvalidJsonIsAnErrorWithItsPosition) {
  const std::string bad[] = {
      "", "{", "{\"a\": }", "{\"a\": 1,}", "[1, 2", "[01]", "[1.]", "[.5]", "[-]", "[1e]", "[tru]", "[nul]",
      "{\"a\" 1}", "{a: 1}", "[\"\\x\"]", "[\"\\u12\"]", "[\"\\ud800\"]", "[\"\\udc00\"]", "[\"a\nb\"]",
      "[\"\xC0\x80\"]", "[\"\xE0\x80\x80\"]", "[\"\xED\xA0\x80\"]", "[\"\xF5\x80\x80\x80\"]", "[\"\x80\"]", "[\"\xE4\xB8\"]",
      "[1] 2", "{\"model\": {\"vocab\": {\"a\": 01}}}", "{\"model\": {\"vocab\": {\"a\": 1,}}}",
      "{\"model\": {\"merges\": [[\"a\", \"b\"],]}}", "{\"model\": {\"merges\": [[\"a\", \"b\"]}}",
      std::string(600, '[') + std::string(600, ']'),
  };
  for (const std::string& b : bad) {
    const std::string e = error_of(b);
    EXPECT_NE(e.find("t.json: invalid JSON at byte "), std::string::npos) << "'" << b << "' gave '" << e << "'";
  }
  EXPECT_NE(error_of("[1, 2").find("at byte 5"), std::string::npos) << error_of("[1, 2");
  EXPECT_EQ(error_of(std::string(500, '[') + std::string(500, ']')), "");
}

TEST(ByteLevel, DecodeTokenInvertsEncodeAndKeepsOtherTokens) {
  std::mt19937 g(1);
  for (int n = 0; n < 200; ++n) {
    std::string bytes(static_cast<size_t>(g() % 12), '\0');
    for (auto& c : bytes) c = static_cast<char>(g() % 256);
    EXPECT_EQ(byte_level::decode_token(byte_level::encode(bytes)), bytes);
  }
  for (const std::string tok : {"中文", "a中", "\xC0\x80", "\xC4", "a\x01", "<|im_end|>", "ĠĠ\xE2\x80\x9C"})
    EXPECT_EQ(byte_level::decode_token(tok), tok) << tok;
  EXPECT_EQ(byte_level::decode_token("Ġhello"), " hello");
  EXPECT_EQ(byte_level::decode_token("ĊĉĠ"), "\n\t ");
}

}  // namespace
