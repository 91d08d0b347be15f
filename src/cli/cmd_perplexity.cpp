// `parscale perplexity --model DIR [--adapter F] (--file TEXT | --tokens FILE.bin) [--json]`:
// mean next-token cross-entropy and perplexity over a file, in windows of --seq-len tokens with
// stride seq_len − 1 (each token after the first predicted once; the last partial window too).
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "train/data.h"
#include "train/train_model.h"

#if __has_include("tokenizer/tokenizer.h")
#include "tokenizer/tokenizer.h"
#define PARSCALE_PPL_HAS_TOKENIZER 1
#endif

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::string file, tokens;
  int64_t seq_len = 512, batch = 4;
  bool json = false;
};

parscale::cli::RegisterCommand reg("perplexity", "loss and perplexity of a model over a text or token file", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  auto* f = app.add_option("--file", o->file, "text file (tokenized with the model's tokenizer)");
  auto* t = app.add_option("--tokens", o->tokens, "pre-tokenized token file (PSTOKEN1)");
  f->excludes(t);
  app.add_option("--seq-len", o->seq_len, "tokens per window")->capture_default_str();
  app.add_option("--batch", o->batch, "windows per forward pass")->capture_default_str();
  app.add_flag("--json", o->json, "print {\"tokens\", \"loss\", \"perplexity\"} as JSON");
  return [o]() -> int {
    using namespace parscale;
    std::vector<int32_t> ids;
    if (!o->tokens.empty()) {
      ids = train::read_token_file(o->tokens).tokens;
    } else if (!o->file.empty()) {
#ifdef PARSCALE_PPL_HAS_TOKENIZER
      auto tok = Tokenizer::from_model_dir(o->model.model_dir);
      std::ifstream in(o->file, std::ios::binary);
      if (!in) throw Error(o->file + ": cannot open");
      std::stringstream ss;
      ss << in.rdbuf();
      for (auto id : tok.encode(ss.str())) ids.push_back(static_cast<int32_t>(id));
#else
      throw Error("--file needs the tokenizer, which this build lacks; use --tokens FILE.bin");
#endif
    } else {
      throw Error("perplexity: give --file TEXT or --tokens FILE.bin");
    }
    ModelWeights w = o->model.load();
    ParameterSet p = parameters_from_weights(w);
    const int64_t V = p.config.vocab_size;
    for (int32_t id : ids)
      if (id >= V) throw Error("perplexity: token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(V));
    const int64_t L = std::min<int64_t>(o->seq_len, p.config.max_position_embeddings);
    check(L >= 2, "perplexity: --seq-len must be >= 2");
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n < 2) throw Error("perplexity: need at least 2 tokens, found " + std::to_string(n));
    train::TrainModel model(p);
    // Windows start at multiples of L−1; the last one may be shorter.
    std::vector<int64_t> starts;
    for (int64_t s = 0; s + 1 < n; s += L - 1) starts.push_back(s);
    double sum = 0.0;
    int64_t predicted = 0;
    const bool tty = isatty(2);
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < starts.size();) {
      // A batch of full windows, or one (shorter) last window.
      const int64_t len = std::min(L, n - starts[i]);
      size_t j = i;
      std::vector<int32_t> batch;
      while (j < starts.size() && static_cast<int64_t>(j - i) < o->batch && std::min(L, n - starts[j]) == len) {
        batch.insert(batch.end(), ids.begin() + starts[j], ids.begin() + starts[j] + len);
        ++j;
      }
      const int64_t B = static_cast<int64_t>(j - i);
      sum += model.forward_backward(batch.data(), B, len, 1.0f, nullptr);
      predicted += B * (len - 1);
      i = j;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (tty)
        std::fprintf(stderr, "\rperplexity: %ld/%ld tokens, loss %.4f, %.0f tok/s\033[K", static_cast<long>(predicted),
                     static_cast<long>(n - 1), sum / predicted, predicted / el);
    }
    if (tty) std::fprintf(stderr, "\n");
    const double loss = sum / static_cast<double>(predicted);
    if (o->json)
      std::printf("{\"tokens\": %ld, \"loss\": %.9g, \"perplexity\": %.9g}\n", static_cast<long>(predicted), loss, std::exp(loss));
    else
      std::printf("tokens %ld  loss %.6f  perplexity %.4f\n", static_cast<long>(predicted), loss, std::exp(loss));
    return 0;
  };
});

}  // namespace
