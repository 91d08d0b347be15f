// tokenizer.json handling beyond the Qwen files: added-token flags (lstrip, rstrip, single_word,
// normalized) with HF semantics on a small synthetic byte-level BPE, clear errors for malformed or
// unsupported files, the Jinja subset, and the tokenize/detokenize CLI end to end.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

using namespace parscale;
using json = nlohmann::json;

namespace {

constexpr const char* kQwenPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Byte-level BPE: ids 0..255 are the bytes; merges build "he", "ll", "hell", "hello", "Ġw".
json synthetic_tokenizer() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level::symbol(static_cast<uint8_t>(b))] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\xC4\xA0", "w"}};
  json merge_list = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = next++;
    merge_list.push_back(a + " " + b);
  }
  json j;
  j["version"] = "1.0";
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"}, {"pattern", {{"Regex", kQwenPattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  j["post_processor"] = nullptr;
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", merge_list}};
  auto added = [](int id, const std::string& content, bool special, bool lstrip, bool rstrip, bool single_word, bool normalized) {
    return json{{"id", id}, {"content", content}, {"special", special}, {"lstrip", lstrip}, {"rstrip", rstrip},
                {"single_word", single_word}, {"normalized", normalized}};
  };
  j["added_tokens"] = {added(300, "<L>", true, true, false, false, false),
                       added(301, "<R>", true, false, true, false, false),
                       added(302, "cat", false, false, false, true, false),
                       added(303, "\xC3\xA9", false, false, false, false, true),    // "é", normalized
                       added(304, "\xE2\x98\x83", false, false, false, false, false),  // "☃"
                       added(305, "<|end|>", true, false, false, false, false),
                       added(306, "<|end|>x", true, false, false, false, false)};
  return j;
}

Tokenizer synthetic() { return Tokenizer::from_json_text(synthetic_tokenizer().dump(), ""); }

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(SyntheticTokenizer, BpeMergesByRank) {
  const Tokenizer tok = synthetic();
  EXPECT_EQ(tok.encode("hello"), (std::vector<int32_t>{259}));
  EXPECT_EQ(tok.encode("hello world"), cat({{259}, {260}, bytes_of("orld")}));
  EXPECT_EQ(tok.encode("hell"), (std::vector<int32_t>{258}));
  EXPECT_EQ(tok.encode("lll"), (std::vector<int32_t>{257, 'l'}));  // leftmost pair first
  EXPECT_EQ(tok.decode(tok.encode("hello world")), "hello world");
}

TEST(SyntheticTokenizer, LstripRstripAbsorbWhitespace) {
  const Tokenizer tok = synthetic();
  // <L> takes the spaces on its left, <R> the whitespace on its right.
  EXPECT_EQ(tok.encode("a  <L>b"), (std::vector<int32_t>{'a', 300, 'b'}));
  EXPECT_EQ(tok.encode("a<R> \n b"), (std::vector<int32_t>{'a', 301, 'b'}));
  EXPECT_EQ(tok.encode("<R>  <L>x"), (std::vector<int32_t>{301, 300, 'x'}));
}

TEST(SyntheticTokenizer, SingleWordOnlyMatchesWholeWords) {
  const Tokenizer tok = synthetic();
  EXPECT_EQ(tok.encode("cat"), (std::vector<int32_t>{302}));
  EXPECT_EQ(tok.encode("a cat."), cat({{'a', ' '}, {302}, {'.'}}));
  EXPECT_EQ(tok.encode("concat"), bytes_of("concat"));
  EXPECT_EQ(tok.encode("cats"), bytes_of("cats"));
  EXPECT_EQ(tok.encode("_cat"), bytes_of("_cat"));  // '_' is a word character
}

TEST(SyntheticTokenizer, NormalizedTokensMatchAfterNfc) {
  const Tokenizer tok = synthetic();
  EXPECT_EQ(tok.encode("\xC3\xA9"), (std::vector<int32_t>{303}));
  EXPECT_EQ(tok.encode("e\xCC\x81"), (std::vector<int32_t>{303}));  // e + U+0301 -> é after NFC
}

TEST(SyntheticTokenizer, LeftmostLongestAddedTokenMatch) {
  const Tokenizer tok = synthetic();
  EXPECT_EQ(tok.encode("<|end|>x"), (std::vector<int32_t>{306}));
  EXPECT_EQ(tok.encode("<|end|>y"), (std::vector<int32_t>{305, 'y'}));
  // parse_special=false: special tokens become text; "cat" (non-special) still matches.
  EXPECT_EQ(tok.encode("<|end|> cat", false), cat({bytes_of("<|end|> "), {302}}));
}

TEST(SyntheticTokenizer, DecodeAddedTokensLikeTheByteLevelDecoder) {
  const Tokenizer tok = synthetic();
  // "☃" is not spelled in the byte-level alphabet: its own UTF-8 comes out.
  EXPECT_EQ(tok.decode({304}), "\xE2\x98\x83");
  // "é" is the byte-level symbol of byte 0xE9, so the ByteLevel decoder maps it to that single
  // byte, which is invalid UTF-8 on its own: U+FFFD (what HF's decoder does too).
  EXPECT_EQ(tok.decode({303}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode({300, 'a'}, /*skip_special=*/true), "a");
  EXPECT_EQ(tok.decode({302, 300}, /*skip_special=*/true), "cat");
}

TEST(SyntheticTokenizer, InvalidUtf8InputIsReplacedPerMaximalSubpart) {
  const Tokenizer tok = synthetic();
  // E4 BD is a truncated 3-byte character (one U+FFFD), FF is invalid (one U+FFFD).
  const auto ids = tok.encode(std::string("a\xE4\xBD" "b\xFF", 5));
  EXPECT_EQ(tok.decode(ids), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
}

// ---- malformed / unsupported files -------------------------------------------------------------

std::string error_of(const std::string& text, const std::string& config = "") {
  try {
    Tokenizer::from_json_text(text, config, "t.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TokenizerErrors, InvalidJson) {
  EXPECT_NE(error_of("{\"model\": ").find("t.json: invalid JSON"), std::string::npos) << error_of("{\"model\": ");
  EXPECT_NE(error_of("[1,2]").find("expected a JSON object"), std::string::npos);
}

TEST(TokenizerErrors, UnsupportedComponentsAreNamed) {
  json j = synthetic_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(error_of(j.dump()).find("unsupported normalizer type 'Lowercase'"), std::string::npos) << error_of(j.dump());
  j = synthetic_tokenizer();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "NFKC"}}}}};
  EXPECT_NE(error_of(j.dump()).find("unsupported normalizer type 'NFKC'"), std::string::npos);
  j = synthetic_tokenizer();
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of(j.dump()).find("unsupported model type 'WordPiece'"), std::string::npos);
  j = synthetic_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  EXPECT_NE(error_of(j.dump()).find("Split behavior 'Removed' is unsupported"), std::string::npos);
  j = synthetic_tokenizer();
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_NE(error_of(j.dump()).find("unsupported pre_tokenizer type 'Whitespace'"), std::string::npos);
  j = synthetic_tokenizer();
  j["decoder"] = nullptr;
  EXPECT_NE(error_of(j.dump()).find("unsupported decoder 'null'"), std::string::npos);
  j = synthetic_tokenizer();
  j["post_processor"] = {{"type", "TemplateProcessing"}};
  EXPECT_NE(error_of(j.dump()).find("unsupported post_processor 'TemplateProcessing'"), std::string::npos);
  j = synthetic_tokenizer();
  j["model"]["dropout"] = 0.1;
  EXPECT_NE(error_of(j.dump()).find("dropout is unsupported"), std::string::npos);
  j = synthetic_tokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "[a-z&&[^q]]";
  EXPECT_NE(error_of(j.dump()).find("unsupported"), std::string::npos) << error_of(j.dump());
}

TEST(TokenizerErrors, MissingOrBrokenFields) {
  json j = synthetic_tokenizer();
  j.erase("model");
  EXPECT_NE(error_of(j.dump()).find("missing field 'model'"), std::string::npos);
  j = synthetic_tokenizer();
  j["model"].erase("vocab");
  EXPECT_NE(error_of(j.dump()).find("model.vocab must be an object"), std::string::npos);
  j = synthetic_tokenizer();
  j["model"].erase("merges");
  EXPECT_NE(error_of(j.dump()).find("model.merges must be an array"), std::string::npos);
  j = synthetic_tokenizer();
  j["model"]["merges"].push_back("x zz");
  EXPECT_NE(error_of(j.dump()).find("uses token 'zz' that is not in model.vocab"), std::string::npos) << error_of(j.dump());
  j = synthetic_tokenizer();
  j["model"]["merges"].push_back("abc");
  EXPECT_NE(error_of(j.dump()).find("is not two tokens separated by one space"), std::string::npos);
  j = synthetic_tokenizer();
  j["model"]["merges"].push_back(42);
  EXPECT_NE(error_of(j.dump()).find("model.merges[5] must be"), std::string::npos) << error_of(j.dump());
  j = synthetic_tokenizer();
  j["model"]["vocab"]["q"] = "seven";
  EXPECT_NE(error_of(j.dump()).find("model.vocab['q'] must be a non-negative integer id"), std::string::npos);
  // A huge id would size the dense id table (a string per id): refused before allocating (the
  // fuzzer's id 999999999 asked for 32 GB).
  j = synthetic_tokenizer();
  j["model"]["vocab"]["q"] = 999999999;
  EXPECT_NE(error_of(j.dump()).find("model.vocab has the id 999999999"), std::string::npos) << error_of(j.dump());
  j = synthetic_tokenizer();
  j["added_tokens"].push_back({{"id", 1 << 29}, {"content", "<huge>"}, {"special", true}});
  EXPECT_NE(error_of(j.dump()).find("added token '<huge>' has the id 536870912"), std::string::npos) << error_of(j.dump());
  j = synthetic_tokenizer();
  j.erase("pre_tokenizer");
  EXPECT_NE(error_of(j.dump()).find("missing field 'pre_tokenizer'"), std::string::npos);
  j = synthetic_tokenizer();
  j["added_tokens"].push_back({{"content", "<x>"}});
  EXPECT_NE(error_of(j.dump()).find("needs an integer 'id'"), std::string::npos);
  EXPECT_NE(error_of(synthetic_tokenizer().dump(), "{oops").find("tokenizer_config.json): invalid JSON"), std::string::npos);
  try {
    Tokenizer::from_model_dir("/nonexistent/model");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model has no tokenizer.json"), std::string::npos);
  }
}

TEST(TokenizerErrors, ChatTemplateAbsentOrUnsupported) {
  const Tokenizer tok = synthetic();
  EXPECT_FALSE(tok.has_chat_template());
  EXPECT_THROW(tok.apply_chat_template({{"user", "hi"}}, true), Error);
  json config = {{"chat_template", "{% macro m() %}x{% endmacro %}"}};
  const Tokenizer with = Tokenizer::from_json_text(synthetic_tokenizer().dump(), config.dump());
  try {
    with.apply_chat_template({{"user", "hi"}}, true);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unsupported statement 'macro' at line 1"), std::string::npos) << e.what();
  }
}

// ---- Jinja subset ---------------------------------------------------------------------------------

std::string render(const std::string& tmpl, std::vector<ChatMessage> messages = {{"user", "Hi"}},
                   bool add_generation_prompt = false) {
  ChatTemplateContext ctx;
  ctx.eos_token = "</s>";
  ctx.add_generation_prompt = add_generation_prompt;
  return render_chat_template(tmpl, messages, ctx);
}

TEST(ChatTemplate, ExpressionsAndFilters) {
  EXPECT_EQ(render("{{ messages|length }} {{ messages[0].role }} {{ messages[0]['content'] }}"), "1 user Hi");
  EXPECT_EQ(render("{{ 'a,b,,c'.split(',')[-1] }}|{{ '  x \\n'.strip() }}|{{ '\\n\\nx\\n'.lstrip('\\n') }}"), "c|x|x\n");
  EXPECT_EQ(render("{{ [1,2,3][::-1] }} {{ 'abcdef'[1:4] }} {{ 7 // 2 }} {{ -7 % 3 }} {{ 1 + 2 * 3 }}"), "[3, 2, 1] bcd 3 2 7");
  EXPECT_EQ(render("{{ 'x' if 1 > 2 else 'y' }}{{ 'b' in 'abc' }}{{ 3 not in [1, 2] }}{{ none is none }}"), "yTrueTrueTrue");
  EXPECT_EQ(render("{{ undefined_name is defined }}{{ eos_token }}{{ undefined_name }}|"), "False</s>|");
  EXPECT_EQ(render("{{ {'a': [1, 'x\"y']} | tojson }}"), "{\"a\": [1, \"x\\\"y\"]}");
  EXPECT_EQ(render("{{ 'ab' ~ 1 }}{{ ['a','b']|join('-') }}{{ 'x'|upper }}"), "ab1a-bX");
}

TEST(ChatTemplate, StatementsLoopsAndNamespaces) {
  const std::vector<ChatMessage> msgs = {{"system", "S"}, {"user", "U"}, {"assistant", "A"}};
  EXPECT_EQ(render("{% for m in messages %}{{ loop.index0 }}{{ m.role[0] }}{% if loop.first %}F{% elif loop.last %}L{% endif %}{% endfor %}", msgs),
            "0sF1u2aL");
  // set inside a loop does not leak out; namespace attributes do.
  EXPECT_EQ(render("{% set x = 1 %}{% set ns = namespace(n=0) %}{% for m in messages %}{% set x = 2 %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ x }}{{ ns.n }}", msgs), "13");
  EXPECT_EQ(render("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }},{% endfor %}{% for x in [] %}no{% else %}empty{% endfor %}"), "3,7,empty");
}

TEST(ChatTemplate, WhitespaceControlTrimAndLstripBlocks) {
  // trim_blocks removes the newline after a block tag, lstrip_blocks the indentation before it.
  EXPECT_EQ(render("a\n  {% if true %}\n  b\n  {% endif %}\nc"), "a\n  b\nc");
  EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
  EXPECT_EQ(render("x {#- comment -#} y{# c #}\nz"), "xyz");
  EXPECT_EQ(render("{{ x }}\n{{ y }}"), "\n");  // expression tags keep their newline
}

// Expects render(tmpl) to fail with an Error whose message holds `what` and `at line N`.
void expect_limit(const std::string& tmpl, const std::string& what, int line) {
  try {
    render(tmpl);
    ADD_FAILURE() << "no error for a template exceeding: " << what;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_NE(msg.find("at line " + std::to_string(line) + ","), std::string::npos) << msg;
  }
}

std::string repeat(const std::string& s, int n) {
  std::string out;
  for (int k = 0; k < n; ++k) out += s;
  return out;
}

TEST(ChatTemplate, ResourceLimitsFailWithTheConstructAndLine) {
  // Nesting: deep parentheses / unary chains (parser recursion), long operator chains (the tree
  // the renderer recurses over), deeply nested blocks.
  expect_limit("\n{{ " + repeat("(", 100000) + "1" + repeat(")", 100000) + " }}", "expression nested deeper than", 2);
  expect_limit("{{ " + repeat("-", 100000) + "1 }}", "expression nested deeper than", 1);
  expect_limit("{{ 1" + repeat(" + 1", 100000) + " }}", "expression nested deeper than", 1);
  expect_limit("{{ x" + repeat("|string", 100000) + " }}", "expression nested deeper than", 1);
  expect_limit("\n\n" + repeat("{% if true %}", 100000) + repeat("{% endif %}", 100000), "blocks nested deeper than", 3);
  // Within the limits the same constructs still work.
  EXPECT_EQ(render("{{ " + repeat("(", 20) + "1" + repeat(")", 20) + " }}{{ 1" + repeat(" + 1", 40) + " }}"), "141");
  EXPECT_EQ(render(repeat("{% if true %}", 30) + "x" + repeat("{% endif %}", 30)), "x");
  // Filters on values of the wrong kind or range are errors (fuzzing found a null dict read in
  // 'items' of a list and a float-to-integer cast out of range in 'int').
  expect_limit("{{ messages|items }}", "'items' filter needs a dict", 1);
  expect_limit("\n{{ 99999999999999999999.0|int }}", "'int' filter: value out of range", 2);
  EXPECT_EQ(render("{{ 2.9|int }} {{ -2.9|int }} {{ {'a': 1}|items|list }}"), "2 -2 [['a', 1]]");
  // range() is bounded before anything is allocated (it used to build the whole list).
  expect_limit("\n{% for i in range(9223372036854775807) %}{% endfor %}", "range() of more than", 2);
  expect_limit("{{ range(-9223372036854775807, 9223372036854775807, 3)|length }}", "range() of more than", 1);
  EXPECT_EQ(render("{{ range(0, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ range(3, 1)|length }}"), "[0, 3, 6, 9] [5, 3, 1] 0");
  // Loop iterations, output size, string and list growth, value nesting.
  expect_limit("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loop iterations", 1);
  expect_limit("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output longer than", 1);
  expect_limit("{{ 'ab' * 9223372036854775807 }}", "string longer than", 1);
  expect_limit("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
               "string longer than", 1);
  expect_limit("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
               "list of more than", 1);
  expect_limit("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}{% set ns.l = [ns.l] %}{% endfor %}",
               "value nested deeper than", 1);
  expect_limit("{% set ns = namespace(x=1) %}\n{% set ns.x = ns %}{{ ns }}", "cannot store a namespace inside", 2);
  expect_limit("{% set ns = namespace(x=1) %}{% set ns.x = [ns] %}", "cannot store a namespace inside", 1);
  // Integer arithmetic never overflows silently (signed overflow is undefined behaviour).
  expect_limit("{{ 9223372036854775807 + 1 }}", "integer overflow", 1);
  expect_limit("{{ 4611686018427387904 * 4 }}", "integer overflow", 1);
  expect_limit("{{ 99999999999999999999 }}", "out of range", 1);
}

TEST(ChatTemplate, MalformedLiteralsAreErrorsNotCrashes) {
  // Found by fuzz_chat_template: a \x / \u escape without hex digits threw std::invalid_argument
  // (uncaught: terminate); a float literal out of range threw std::out_of_range.
  expect_limit("\n{{ 'a\\x4g' }}", "bad \\x escape", 2);
  expect_limit("{{ 'a\\u12 z' }}", "bad \\u escape", 1);
  expect_limit("{{ '\\u-123' }}", "bad \\u escape", 1);
  EXPECT_EQ(render("{{ '\\x41\\u00e9' }} {{ 1" + std::string(400, '0') + ".5 }} {{ 0." + std::string(400, '0') + "1 }}"),
            "A\xc3\xa9 inf 0.0");
}

// ---- CLI end to end ------------------------------------------------------------------------------

std::string run(const std::string& command, int* status = nullptr) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int rc = pclose(pipe);
  if (status) *status = WEXITSTATUS(rc);
  return out;
}

const std::string kModel = std::string(PARSCALE_SOURCE_DIR) + "/tests/fixtures/tokenizers/qwen3";

TEST(TokenizerCli, TokenizeJsonPrintsOnlyTheIdArray) {
  int status = -1;
  EXPECT_EQ(run(std::string(PARSCALE_BINARY) + " tokenize --model " + kModel + " --json --text 'Hello world!<|im_end|>'", &status),
            "[9707,1879,0,151645]\n");
  EXPECT_EQ(status, 0);
  EXPECT_EQ(run("printf 'Hello world' | " + std::string(PARSCALE_BINARY) + " tokenize --tokenizer " + kModel + "/tokenizer.json --json"),
            "[9707,1879]\n");
  EXPECT_EQ(run(std::string(PARSCALE_BINARY) + " tokenize --model " + kModel + " --json --no-special --text '<|im_end|>'").find("151645"),
            std::string::npos);
  EXPECT_EQ(run(std::string(PARSCALE_BINARY) + " tokenize --model " + kModel + " --text ''"), "\n");
}

TEST(TokenizerCli, DetokenizeAndErrors) {
  EXPECT_EQ(run(std::string(PARSCALE_BINARY) + " detokenize --model " + kModel + " --ids 9707,1879,0"), "Hello world!");
  EXPECT_EQ(run("echo '[151644, 872]' | " + std::string(PARSCALE_BINARY) + " detokenize --model " + kModel + " --skip-special"), "user");
  int status = 0;
  const std::string err = run(std::string(PARSCALE_BINARY) + " tokenize --model /nonexistent --text x 2>&1", &status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(err.find("parscale: error: model directory /nonexistent has no tokenizer.json"), std::string::npos) << err;
  run(std::string(PARSCALE_BINARY) + " detokenize --model " + kModel + " --ids 1,x 2>&1", &status);
  EXPECT_EQ(status, 1);
}

}  // namespace
