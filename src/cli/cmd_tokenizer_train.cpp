// `parscale tokenizer-train`: learns a byte-level BPE tokenizer (Qwen-style pre-tokenizer, NFC,
// special tokens <|endoftext|> <|im_start|> <|im_end|>) from text files and writes tokenizer.json
// plus tokenizer_config.json (eos_token, ChatML chat_template) beside it.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>

#include "cli/registry.h"
#include "core/error.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Opts {
  std::vector<std::string> files;
  size_t vocab_size = 4096;
  std::string out;
  int64_t min_pair_count = 2;
};

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  parscale::check(static_cast<bool>(out), "cannot write " + path.string());
  out << text;
  parscale::check(static_cast<bool>(out), "error writing " + path.string());
}

parscale::cli::RegisterCommand reg(
    "tokenizer-train", "Train a byte-level BPE tokenizer.json from text files", [](CLI::App& app) {
      auto o = std::make_shared<Opts>();
      app.add_option("--files", o->files, "text files or glob patterns (\"**\" spans directories)")
          ->required();
      app.add_option("--vocab-size", o->vocab_size, "total vocabulary size incl. 256 bytes and 3 specials")
          ->required();
      app.add_option("--out", o->out, "output path of tokenizer.json (directory is created)")->required();
      app.add_option("--min-pair-count", o->min_pair_count, "stop when the best pair is rarer (default 2)");
      return [o]() -> int {
        const auto t0 = std::chrono::steady_clock::now();
        const auto files = parscale::expand_file_patterns(o->files);
        std::vector<std::string> texts;
        texts.reserve(files.size());
        for (const auto& f : files) {
          std::ifstream in(f, std::ios::binary);
          parscale::check(static_cast<bool>(in), "cannot open " + f);
          texts.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        }
        parscale::BpeTrainerOptions options;
        options.vocab_size = o->vocab_size;
        options.min_pair_count = o->min_pair_count;
        const auto result = parscale::train_bpe(texts, options);
        const std::filesystem::path out(o->out);
        if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
        write_file(out, result.tokenizer_json);
        write_file(out.parent_path() / "tokenizer_config.json", result.tokenizer_config_json);
        parscale::Tokenizer::from_file(out.string());  // the written file must load
        const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("tokenizer-train: %zu files, %.2f MB, %zu distinct pieces, %zu merges, vocab %zu, %.2f s -> %s\n",
                    files.size(), static_cast<double>(result.bytes_read) / 1e6, result.distinct_pieces,
                    result.merges, result.vocab_size, secs, out.string().c_str());
        if (result.vocab_size < o->vocab_size)
          std::printf("tokenizer-train: note: stopped early (no pair occurs %lld+ times); vocab is %zu, not %zu\n",
                      static_cast<long long>(o->min_pair_count), result.vocab_size, o->vocab_size);
        return 0;
      };
    });

}  // namespace
