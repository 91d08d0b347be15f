#include "engine/generate.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "model/kv_pool.h"

namespace parscale {

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::Eos: return "eos";
    case StopReason::MaxTokens: return "max_tokens";
    case StopReason::ContextLimit: return "context_limit";
  }
  return "?";
}

GenerateResult generate(const ModelWeights& w, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& opt, const std::function<void(int64_t, int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  const ModelConfig& c = w.config;
  const int64_t B = static_cast<int64_t>(prompts.size());
  check(B > 0, "generate: no prompt");
  check(opt.max_tokens >= 0, "generate: the number of tokens to generate must be >= 0");
  opt.sampling.validate();
  int64_t longest = 0;
  for (size_t b = 0; b < prompts.size(); ++b) {
    if (prompts[b].empty()) throw Error("generate: prompt " + std::to_string(b) + " is empty");
    if (static_cast<int64_t>(prompts[b].size()) >= c.max_position_embeddings)
      throw Error("generate: prompt " + std::to_string(b) + " has " + std::to_string(prompts[b].size()) +
                  " tokens, the context limit (max_position_embeddings) is " + std::to_string(c.max_position_embeddings));
    for (int32_t id : prompts[b])
      if (id < 0 || id >= c.vocab_size)
        throw Error("token id " + std::to_string(id) + " is outside the vocabulary [0, " + std::to_string(c.vocab_size) + ")");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[b].size()));
  }
  GenerateResult res;
  res.ids.resize(static_cast<size_t>(B));
  res.stop.assign(static_cast<size_t>(B), StopReason::MaxTokens);
  for (const auto& p : prompts) res.prompt_tokens += static_cast<int64_t>(p.size());
  if (opt.max_tokens == 0) return res;

  // The serving engine, sized for these prompts: every sequence runs at once (pages for its whole
  // context), so the output is what `parscale serve` gives the same requests.
  EngineOptions eo;
  eo.kv_dtype = opt.kv_dtype;
  const int64_t max_len = std::min<int64_t>(c.max_position_embeddings, longest + opt.max_tokens);
  const int64_t pages_per_seq = c.streams() * ((max_len + eo.page_tokens - 1) / eo.page_tokens);
  eo.kv_memory_bytes = B * pages_per_seq * KvPool::page_bytes(c, eo.kv_dtype, eo.page_tokens);
  eo.max_running = B;
  eo.max_queue = B;
  eo.batch_rows = std::max<int64_t>(eo.batch_rows, B * c.streams());
  eo.prefix_cache = false;
  Engine engine(w.backbone, w.adapter, {}, eo);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  const auto t0 = clock::now();
  for (int64_t b = 0; b < B; ++b) {
    EngineRequest r;
    r.prompt = prompts[static_cast<size_t>(b)];
    // The context limit ends a sequence (reported), it does not refuse the request.
    r.max_tokens = std::min<int64_t>(opt.max_tokens, c.max_position_embeddings - static_cast<int64_t>(r.prompt.size()));
    r.sampling = opt.sampling;
    r.eos_ids = opt.eos_ids;
    r.ignore_eos = opt.ignore_eos;
    handles.push_back(engine.submit(std::move(r)));
  }
  // Events of every request, in order per request; tokens are streamed as they come.
  std::vector<bool> done(static_cast<size_t>(B), false), first(static_cast<size_t>(B), false);
  int64_t n_done = 0, n_first = 0;
  clock::time_point t_first = t0;
  EngineEvent ev;
  while (n_done < B) {
    bool any = false;
    for (int64_t b = 0; b < B; ++b) {
      if (done[static_cast<size_t>(b)]) continue;
      while (handles[static_cast<size_t>(b)]->next(ev, std::chrono::milliseconds(0))) {
        any = true;
        if (ev.kind == EngineEvent::Kind::Token) {
          res.ids[static_cast<size_t>(b)].push_back(ev.token);
          ++res.generated_tokens;
          if (!first[static_cast<size_t>(b)]) {
            first[static_cast<size_t>(b)] = true;
            if (++n_first == B) t_first = clock::now();
          }
          if (on_token) on_token(b, ev.token);
        } else if (ev.kind == EngineEvent::Kind::Finished) {
          done[static_cast<size_t>(b)] = true;
          ++n_done;
          switch (ev.finish) {
            case FinishReason::Stop: res.stop[static_cast<size_t>(b)] = StopReason::Eos; break;
            case FinishReason::Length:
              res.stop[static_cast<size_t>(b)] =
                  static_cast<int64_t>(res.ids[static_cast<size_t>(b)].size()) < opt.max_tokens ? StopReason::ContextLimit
                                                                                               : StopReason::MaxTokens;
              break;
            case FinishReason::ContextLimit: res.stop[static_cast<size_t>(b)] = StopReason::ContextLimit; break;
            case FinishReason::Cancelled: throw Error("generate: the engine stopped sequence " + std::to_string(b));
            case FinishReason::Error: throw Error("generate: sequence " + std::to_string(b) + ": " + ev.error);
          }
          break;
        }
      }
    }
    if (!any) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  const auto t_end = clock::now();
  if (n_first < B) t_first = t_end;
  res.prefill_seconds = std::chrono::duration<double>(t_first - t0).count();
  res.decode_seconds = std::chrono::duration<double>(t_end - t_first).count();
  int64_t most = 0;
  for (const auto& ids : res.ids) most = std::max<int64_t>(most, static_cast<int64_t>(ids.size()));
  res.decode_steps = std::max<int64_t>(0, most - 1);
  return res;
}

}  // namespace parscale
