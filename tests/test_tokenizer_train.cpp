// BPE trainer: determinism (byte-identical output, independent of thread count), the trained
// tokenizer.json loads and encodes like the independent npm implementation does
// (tests/reference/tokenizer/make_train_fixture.mjs), encodings are valid BPE segmentations, and
// the tokenizer-train CLI works end to end.
#include <gtest/gtest.h>
#include <omp.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

using namespace parscale;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kDir = std::string(PARSCALE_SOURCE_DIR) + "/tests/fixtures/tokenizers/trained";

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

BpeTrainingResult train_fixture_corpus() {
  BpeTrainerOptions options;
  options.vocab_size = 1000;
  return train_bpe({read(kDir + "/corpus.txt")}, options);
}

TEST(BpeTrainer, ReproducesTheCommittedTokenizerByteForByte) {
  const auto result = train_fixture_corpus();
  EXPECT_EQ(result.vocab_size, 1000u);
  EXPECT_EQ(result.merges, 1000u - 256u - 3u);
  EXPECT_TRUE(result.tokenizer_json == read(kDir + "/tokenizer.json"));
  EXPECT_TRUE(result.tokenizer_config_json == read(kDir + "/tokenizer_config.json"));
}

TEST(BpeTrainer, ResultDoesNotDependOnThreadCount) {
  const int saved = omp_get_max_threads();
  std::vector<std::string> texts;
  const std::string corpus = read(kDir + "/corpus.txt");
  for (size_t at = 0; at < corpus.size(); at += 7919) texts.push_back(corpus.substr(at, 7919));
  BpeTrainerOptions options;
  options.vocab_size = 700;
  omp_set_num_threads(1);
  const auto one = train_bpe(texts, options);
  omp_set_num_threads(4);
  const auto four = train_bpe(texts, options);
  omp_set_num_threads(saved);
  EXPECT_TRUE(one.tokenizer_json == four.tokenizer_json);
}

TEST(BpeTrainer, TrainedTokenizerMatchesReferenceImplementation) {
  const Tokenizer tok = Tokenizer::from_model_dir(kDir);
  EXPECT_EQ(tok.vocab_size(), 1000u);
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 997);
  EXPECT_EQ(tok.eos_ids(), (std::vector<int32_t>{997, 999}));
  const json fx = json::parse(read(kDir + "/expected.json"));
  ASSERT_GE(fx["cases"].size(), 50u);
  for (const json& c : fx["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tok.encode(text), c["ids"].get<std::vector<int32_t>>()) << json(text).dump();
    EXPECT_EQ(tok.decode(c["ids"].get<std::vector<int32_t>>()), c["decoded"].get<std::string>());
    EXPECT_EQ(tok.decode(tok.encode(text)), utf8::nfc(text));  // round trip up to NFC
  }
}

TEST(BpeTrainer, EncodingsAreBpeFixpoints) {
  // Encoding a single pre-token piece must leave no adjacent pair that has a merge, and the
  // tokens must spell the piece exactly.
  const Tokenizer tok = Tokenizer::from_model_dir(kDir);
  const json j = json::parse(read(kDir + "/tokenizer.json"));
  std::set<std::pair<std::string, std::string>> merges;
  for (const json& m : j["model"]["merges"]) merges.emplace(m[0].get<std::string>(), m[1].get<std::string>());
  const std::vector<std::string> pieces = {"model", " value", " returns", "_index", " parallel", "Hello", " zzzzzz",
                                           " qxqxqx", "    ", "\n\n", " \"\"\"", "()", " inference", "1", " ValueError"};
  for (const std::string& piece : pieces) {
    const auto ids = tok.encode(piece);
    std::string spelled;
    for (int32_t id : ids) spelled += tok.id_to_token(id);
    EXPECT_EQ(spelled, byte_level::encode(piece)) << piece;
    for (size_t i = 0; i + 1 < ids.size(); ++i)
      EXPECT_FALSE(merges.count({tok.id_to_token(ids[i]), tok.id_to_token(ids[i + 1])}))
          << piece << ": pair " << tok.id_to_token(ids[i]) << " + " << tok.id_to_token(ids[i + 1]) << " was left unmerged";
  }
}

TEST(BpeTrainer, ChatTemplateOfTrainedTokenizer) {
  const Tokenizer tok = Tokenizer::from_model_dir(kDir);
  ASSERT_TRUE(tok.has_chat_template());
  EXPECT_EQ(tok.apply_chat_template({{"system", "S"}, {"user", "Hi"}}, true),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(BpeTrainer, RejectsTooSmallVocabulary) {
  BpeTrainerOptions options;
  options.vocab_size = 258;
  try {
    train_bpe({"abc"}, options);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--vocab-size 258 is below the minimum 259"), std::string::npos) << e.what();
  }
}

TEST(BpeTrainer, FilePatternsExpandRecursively) {
  const fs::path root = fs::temp_directory_path() / ("parscale_glob_" + std::to_string(::getpid()));
  fs::create_directories(root / "a" / "b");
  for (const char* f : {"x.py", "a/y.py", "a/b/z.py", "a/b/w.txt"}) std::ofstream(root / f) << "pass\n";
  const std::string r = root.string();
  EXPECT_EQ(expand_file_patterns({r + "/**/*.py"}),
            (std::vector<std::string>{r + "/a/b/z.py", r + "/a/y.py", r + "/x.py"}));
  EXPECT_EQ(expand_file_patterns({r + "/a/*.py", r + "/x.py"}), (std::vector<std::string>{r + "/a/y.py", r + "/x.py"}));
  EXPECT_THROW(expand_file_patterns({r + "/**/*.rs"}), Error);
  EXPECT_THROW(expand_file_patterns({r + "/missing.py"}), Error);
  fs::remove_all(root);
}

TEST(BpeTrainer, CliTrainsAndWritesBothFiles) {
  const fs::path out = fs::temp_directory_path() / ("parscale_train_" + std::to_string(::getpid()));
  const std::string cmd = std::string(PARSCALE_BINARY) + " tokenizer-train --files '" + kDir +
                          "/*.txt' --vocab-size 400 --out " + (out / "tok" / "tokenizer.json").string() + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const Tokenizer tok = Tokenizer::from_model_dir((out / "tok").string());
  EXPECT_EQ(tok.vocab_size(), 400u);
  EXPECT_TRUE(tok.has_chat_template());
  const std::string text = "def f(x):\n    return x  # ok\n";
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
  fs::remove_all(out);
}

}  // namespace
