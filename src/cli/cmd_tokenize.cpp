// `parscale tokenize`: text -> token ids with a model's tokenizer.json; `--bench FILE` measures
// single-threaded encode throughput instead.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace {

struct Opts {
  std::string model, tokenizer, text, bench, out;
  std::vector<std::string> files;
  bool json = false, no_special = false, text_given = false;
  double bench_seconds = 2.0;
};

std::string read_all(std::istream& in) {
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int run_bench(const parscale::Tokenizer& tok, const Opts& o) {
  std::ifstream in(o.bench, std::ios::binary);
  parscale::check(static_cast<bool>(in), "cannot open --bench file " + o.bench);
  const std::string text = read_all(in);
  parscale::check(!text.empty(), "--bench file " + o.bench + " is empty");
  using clock = std::chrono::steady_clock;
  // Cold pass (empty BPE cache), then timed warm passes until bench_seconds elapse.
  auto t0 = clock::now();
  size_t tokens = tok.encode(text, !o.no_special).size();
  const double cold = std::chrono::duration<double>(clock::now() - t0).count();
  size_t passes = 0;
  t0 = clock::now();
  double elapsed = 0;
  do {
    tokens = tok.encode(text, !o.no_special).size();
    ++passes;
    elapsed = std::chrono::duration<double>(clock::now() - t0).count();
  } while (elapsed < o.bench_seconds);
  const double mb = static_cast<double>(text.size()) / 1e6;
  std::printf("file %s: %.3f MB, %zu tokens (%.2f bytes/token)\n", o.bench.c_str(), mb, tokens,
              static_cast<double>(text.size()) / static_cast<double>(tokens));
  std::printf("encode cold: %.2f MB/s\n", mb / cold);
  std::printf("encode warm: %.2f MB/s (%zu passes, single thread)\n",
              mb * static_cast<double>(passes) / elapsed, passes);
  return 0;
}

parscale::cli::RegisterCommand reg(
    "tokenize", "Encode text (from --text or stdin) to token ids", [](CLI::App& app) {
      auto o = std::make_shared<Opts>();
      auto* model = app.add_option("--model", o->model, "model directory containing tokenizer.json");
      auto* file = app.add_option("--tokenizer", o->tokenizer, "path of a tokenizer.json");
      model->excludes(file);
      app.add_option("--text", o->text, "text to encode (default: read stdin)");
      app.add_option("--file", o->files, "text file(s) to encode, concatenated in the order given (instead of --text/stdin)");
      app.add_option("--out", o->out, "write the ids as a token file (PSTOKEN1, docs/TRAINING.md) instead of printing them");
      app.add_flag("--json", o->json, "print one JSON array of ids and nothing else");
      app.add_flag("--no-special", o->no_special,
                   "treat special tokens in the text as plain text (untrusted input)");
      app.add_option("--bench", o->bench, "benchmark: encode this file repeatedly and print MB/s");
      app.add_option("--bench-seconds", o->bench_seconds, "benchmark duration (default 2)");
      return [o, &app]() -> int {
        const auto tok = parscale::cli::load_tokenizer(o->model, o->tokenizer, "tokenize");
        if (!o->bench.empty()) return run_bench(tok, *o);
        const bool has_text = app.count("--text") > 0;
        parscale::check(!(has_text && !o->files.empty()), "tokenize: give --text or --file, not both");
        std::string text;
        if (!o->files.empty()) {
          for (const auto& path : o->files) {
            std::ifstream in(path, std::ios::binary);
            parscale::check(static_cast<bool>(in), "tokenize: cannot open --file " + path);
            text += read_all(in);
          }
        } else {
          text = has_text ? o->text : read_all(std::cin);
        }
        const auto ids = tok.encode(text, !o->no_special);
        if (!o->out.empty()) {
          // Token files hold u32 ids; the header records the tokenizer's vocabulary size.
          std::vector<int32_t> ids32(ids.begin(), ids.end());
          parscale::train::write_token_file(o->out, ids32, tok.vocab_size());
          std::fprintf(stderr, "tokenize: %zu bytes -> %zu tokens (%.2f bytes/token) -> %s\n", text.size(), ids.size(),
                       ids.empty() ? 0.0 : static_cast<double>(text.size()) / static_cast<double>(ids.size()), o->out.c_str());
          return 0;
        }
        std::string out = o->json ? "[" : "";
        for (size_t i = 0; i < ids.size(); ++i) {
          if (i) out += o->json ? "," : " ";
          out += std::to_string(ids[i]);
        }
        out += o->json ? "]\n" : "\n";
        std::fwrite(out.data(), 1, out.size(), stdout);
        return 0;
      };
    });

}  // namespace
