// `parscale chat --model DIR`: interactive multi-turn chat with the tokenizer's chat template.
// Reads one user message per line from stdin (`/reset` clears the history, `/exit` or EOF quits),
// streams the assistant's reply to stdout. The KV cache is kept across turns: each turn renders
// the whole conversation, and only the tokens after the part already in the cache are computed.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "engine/generate.h"
#include "engine/session.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::string tokenizer;
  std::string system;
  int64_t context = 4096;
  parscale::GenerateOptions gen;
  bool quiet = false;
};

parscale::cli::RegisterCommand reg("chat", "interactive multi-turn chat (one user message per line on stdin)", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->gen.max_tokens = 512;
  o->gen.sampling.temperature = 0.7f;
  o->gen.sampling.top_p = 0.8f;
  o->gen.sampling.top_k = 20;
  o->model.add_to(app);
  app.add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model folder's)");
  app.add_option("--system", o->system, "system message (default: the template's own rule)");
  app.add_option("--context", o->context, "tokens of conversation kept in the KV cache (capped by max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-tokens", o->gen.max_tokens, "maximum tokens per reply")->check(CLI::PositiveNumber);
  parscale::cli::add_sampling_options(app, o->gen.sampling);
  app.add_flag("--quiet", o->quiet, "no prompts or banners (for scripts)");
  return [o]() -> int {
    using namespace parscale;
    Tokenizer tok = cli::load_tokenizer(o->model.model_dir, o->tokenizer, "chat");
    if (!tok.has_chat_template()) throw Error("chat: the tokenizer has no chat_template (tokenizer_config.json)");
    ModelWeights w = o->model.load();
    o->gen.sampling.validate();
    GenerateOptions gen = o->gen;
    gen.eos_ids = cli::eos_ids_for(w.config, tok);
    const int64_t context = std::min<int64_t>(o->context, w.config.max_position_embeddings);
    SessionOptions so;
    so.kv_dtype = o->model.kv();
    Session session(w, 1, context, so);
    Sampler sampler(gen.sampling, 0);
    std::vector<ChatMessage> history;
    if (!o->system.empty()) history.push_back({"system", o->system});
    std::vector<int32_t> cached;  // tokens whose K/V are in the session
    std::vector<int32_t> seen;
    if (!o->quiet)
      std::fprintf(stderr, "parscale chat: P = %lld streams, context %lld tokens. /reset clears, /exit quits.\n",
                   static_cast<long long>(w.config.streams()), static_cast<long long>(context));
    std::string line;
    while (true) {
      if (!o->quiet) std::fprintf(stderr, "> ");
      if (!std::getline(std::cin, line) || line == "/exit") break;
      if (line == "/reset") {
        history.clear();
        if (!o->system.empty()) history.push_back({"system", o->system});
        continue;
      }
      if (line.empty()) continue;
      history.push_back({"user", line});
      std::vector<int32_t> ids = tok.encode(tok.apply_chat_template(history, true), /*parse_special=*/true);
      // Reuse the cached prefix when the rendering extends it; else start over.
      size_t common = 0;
      while (common < cached.size() && common < ids.size() && cached[common] == ids[common]) ++common;
      if (common < cached.size() || common == ids.size()) {
        session.reset(0);
        cached.clear();
        seen.clear();
        common = 0;
      }
      std::vector<int32_t> fresh(ids.begin() + static_cast<std::ptrdiff_t>(common), ids.end());
      if (static_cast<int64_t>(ids.size()) + 1 > context) {
        std::fprintf(stderr, "parscale: the conversation (%zu tokens) no longer fits the context of %lld tokens; use /reset or --context\n",
                     ids.size(), static_cast<long long>(context));
        history.pop_back();
        continue;
      }
      GenerateOptions turn = gen;
      turn.max_tokens = std::min<int64_t>(gen.max_tokens, context - static_cast<int64_t>(ids.size()));
      StreamDecoder dec(tok, /*skip_special=*/true);
      ContinueResult r = generate_continue(session, 0, fresh, turn, sampler, seen, [&](int32_t id) {
        std::string piece = dec.push(id);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      });
      std::string tail = dec.flush();
      std::fwrite(tail.data(), 1, tail.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
      cached = ids;
      cached.insert(cached.end(), r.ids.begin(), r.ids.end() - 1);  // the last id was not fed
      std::vector<int32_t> reply = r.ids;
      if (r.stop == StopReason::Eos && !reply.empty()) reply.pop_back();
      history.push_back({"assistant", tok.decode(reply, /*skip_special=*/true)});
      if (r.stop == StopReason::ContextLimit)
        std::fprintf(stderr, "parscale: reply stopped at the context limit (%lld tokens)\n", static_cast<long long>(context));
    }
    return 0;
  };
});

}  // namespace
