// `parscale chat --model DIR`: interactive multi-turn chat with the tokenizer's chat template.
// Reads one user message per line from stdin (`/reset` clears the history, `/exit` or EOF quits),
// streams the assistant's reply to stdout. Runs on the serving Engine: each turn submits the whole
// conversation (chat template rendered) as one request, so a reply equals `generate --messages` of
// the same conversation; the engine's prefix cache keeps the pages of the earlier turns (prompt and
// reply), so a turn computes only its new tokens.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/generate.h"
#include "model/kv_pool.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::string tokenizer;
  std::string system;
  bool enable_thinking = true;  // the chat template's enable_thinking (Qwen3); true = HF's default
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
  app.add_option("--enable-thinking", o->enable_thinking,
                 "the chat template's enable_thinking variable (Qwen3: false skips the <think> block)")
      ->capture_default_str();
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
    const std::vector<int64_t> eos_ids = cli::eos_ids_for(w.config, tok);
    const int64_t context = std::min<int64_t>(o->context, w.config.max_position_embeddings);
    // One request at a time; the pool holds one conversation of `context` tokens. What the
    // previous turn computed (prompt and reply) stays in the prefix cache, so each turn computes
    // only the tokens after it; the cache is evicted page by page when the pool runs short.
    EngineOptions eo;
    eo.kv_dtype = o->model.kv();
    eo.max_running = 1;
    eo.max_queue = 1;
    eo.batch_rows = std::max<int64_t>(eo.batch_rows, w.config.streams());
    eo.kv_memory_bytes = w.config.streams() * ((context + eo.page_tokens - 1) / eo.page_tokens) *
                         KvPool::page_bytes(w.config, eo.kv_dtype, eo.page_tokens);
    Engine engine(w.backbone, w.adapter, {}, eo);
    std::vector<ChatMessage> history;
    if (!o->system.empty()) history.push_back({"system", o->system});
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
      // The whole conversation, rendered, is the turn's prompt (as `generate --messages` sees it).
      EngineRequest req;
      req.prompt = tok.encode(tok.apply_chat_template(history, true, {{"enable_thinking", o->enable_thinking}}),
                              /*parse_special=*/true);
      const int64_t n = static_cast<int64_t>(req.prompt.size());
      if (n + 1 > context) {
        std::fprintf(stderr, "parscale: the conversation (%lld tokens) no longer fits the context of %lld tokens; use /reset or --context\n",
                     static_cast<long long>(n), static_cast<long long>(context));
        history.pop_back();
        continue;
      }
      req.max_tokens = std::min<int64_t>(o->gen.max_tokens, context - n);
      req.sampling = o->gen.sampling;
      req.eos_ids = eos_ids;
      std::shared_ptr<RequestHandle> handle = engine.submit(std::move(req));
      StreamDecoder dec(tok, /*skip_special=*/true);
      std::vector<int32_t> reply;
      FinishReason finish = FinishReason::Length;
      std::string error;
      EngineEvent ev;
      while (handle->next(ev, std::chrono::hours(24))) {
        if (ev.kind == EngineEvent::Kind::Token) {
          reply.push_back(ev.token);
          std::string piece = dec.push(ev.token);
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        } else if (ev.kind == EngineEvent::Kind::Finished) {
          finish = ev.finish;
          error = ev.error;
        }
      }
      std::string tail = dec.flush();
      std::fwrite(tail.data(), 1, tail.size(), stdout);
      std::fputc('\n', stdout);
      std::fflush(stdout);
      if (finish == FinishReason::Cancelled) throw Error("chat: the engine stopped the reply");
      if (finish == FinishReason::Error) throw Error("chat: " + error);
      if (finish == FinishReason::Stop && !reply.empty()) reply.pop_back();
      history.push_back({"assistant", tok.decode(reply, /*skip_special=*/true)});
      if (finish == FinishReason::ContextLimit ||
          (finish == FinishReason::Length && static_cast<int64_t>(reply.size()) < o->gen.max_tokens))
        std::fprintf(stderr, "parscale: reply stopped at the context limit (%lld tokens)\n", static_cast<long long>(context));
    }
    return 0;
  };
});

}  // namespace
