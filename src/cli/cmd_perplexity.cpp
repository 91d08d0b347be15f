// `parscale perplexity --model DIR [--adapter F] (--file TEXT | --tokens FILE.bin) [--json]`:
// mean next-token cross-entropy and perplexity over a file, in windows of --seq-len tokens with
// stride seq_len − 1 (each token after the first predicted once; the last partial window too).
// Runs on the inference engine (weights as stored or --dtype, KV in --kv-dtype), never an fp32 copy.
#include <unistd.h>

#include <algorithm>
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
#include "engine/session.h"

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
    const int64_t V = w.config.vocab_size;
    for (int32_t id : ids)
      if (id < 0 || id >= V) throw Error("perplexity: token id " + std::to_string(id) + " outside the vocabulary of " + std::to_string(V));
    const int64_t L = std::min<int64_t>(o->seq_len, w.config.max_position_embeddings);
    check(L >= 2, "perplexity: --seq-len must be >= 2");
    check(o->batch >= 1, "perplexity: --batch must be >= 1");
    const int64_t n = static_cast<int64_t>(ids.size());
    if (n < 2) throw Error("perplexity: need at least 2 tokens, found " + std::to_string(n));
    // Windows start at multiples of L−1; the last one may be shorter.
    std::vector<int64_t> starts;
    for (int64_t s = 0; s + 1 < n; s += L - 1) starts.push_back(s);
    // Logits of every position, fed in chunks so [batch · chunk, V] stays near 128 MiB.
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(L, (int64_t{32} << 20) / (o->batch * V)));
    SessionOptions so;
    so.kv_dtype = o->model.kv();
    Session session(w, o->batch, L, so);
    std::vector<float> logits;
    std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(o->batch));
    double sum = 0.0;
    int64_t predicted = 0;
    const bool tty = isatty(2);
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < starts.size(); i += static_cast<size_t>(o->batch)) {
      const size_t j = std::min(starts.size(), i + static_cast<size_t>(o->batch));
      for (int64_t b = 0; b < o->batch; ++b) session.reset(b);
      for (int64_t c0 = 0; c0 < L; c0 += chunk) {
        // Window b feeds its tokens [c0, c0 + chunk) and predicts each next token it holds.
        bool any = false;
        for (size_t b = 0; b < static_cast<size_t>(o->batch); ++b) {
          chunks[b].clear();
          if (i + b >= j) continue;
          const int64_t len = std::min(L, n - starts[i + b]);
          for (int64_t t = c0; t < std::min(len, c0 + chunk); ++t) chunks[b].push_back(ids[static_cast<size_t>(starts[i + b] + t)]);
          any = any || !chunks[b].empty();
        }
        if (!any) break;
        session.forward(chunks, Session::Outputs::AllPositions, logits);
        int64_t row = 0;
        for (size_t b = 0; b < chunks.size(); ++b) {
          const int64_t len = i + b < j ? std::min(L, n - starts[i + b]) : 0;
          for (size_t t = 0; t < chunks[b].size(); ++t, ++row) {
            const int64_t pos = c0 + static_cast<int64_t>(t);
            if (pos + 1 >= len) continue;  // the window's last token predicts nothing here
            const float* r = logits.data() + row * V;
            const float mx = *std::max_element(r, r + V);
            double z = 0.0;
            for (int64_t v = 0; v < V; ++v) z += std::exp(static_cast<double>(r[v] - mx));
            const int32_t target = ids[static_cast<size_t>(starts[i + b] + pos + 1)];
            sum += std::log(z) + mx - r[target];
            ++predicted;
          }
        }
      }
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
