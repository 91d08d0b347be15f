#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"
#include "engine/session.h"

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
  const int64_t B = static_cast<int64_t>(prompts.size()), V = c.vocab_size;
  check(B > 0, "generate: no prompt");
  check(opt.max_tokens >= 0, "generate: --max-tokens must be >= 0");
  opt.sampling.validate();
  int64_t longest = 0;
  for (size_t b = 0; b < prompts.size(); ++b) {
    if (prompts[b].empty()) throw Error("generate: prompt " + std::to_string(b) + " is empty");
    if (static_cast<int64_t>(prompts[b].size()) >= c.max_position_embeddings)
      throw Error("generate: prompt " + std::to_string(b) + " has " + std::to_string(prompts[b].size()) +
                  " tokens, the context limit (max_position_embeddings) is " + std::to_string(c.max_position_embeddings));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(prompts[b].size()));
  }
  const int64_t max_len = std::min<int64_t>(c.max_position_embeddings, longest + opt.max_tokens);
  const std::vector<int64_t>& eos = opt.eos_ids.empty() ? c.eos_token_ids : opt.eos_ids;

  GenerateResult res;
  res.ids.resize(static_cast<size_t>(B));
  res.stop.assign(static_cast<size_t>(B), StopReason::MaxTokens);
  std::vector<std::vector<int32_t>> seen(prompts.begin(), prompts.end());
  std::vector<Sampler> samplers;
  for (int64_t b = 0; b < B; ++b) samplers.emplace_back(opt.sampling, static_cast<uint64_t>(b));
  std::vector<bool> done(static_cast<size_t>(B), opt.max_tokens == 0);
  for (const auto& p : prompts) res.prompt_tokens += static_cast<int64_t>(p.size());
  if (opt.max_tokens == 0) return res;

  SessionOptions so;
  so.kv_dtype = opt.kv_dtype;
  Session session(w, B, max_len, so);
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> chunks(prompts.begin(), prompts.end());
  auto t0 = clock::now();
  session.forward(chunks, Session::Outputs::LastPosition, logits);
  res.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  auto t1 = clock::now();
  while (true) {
    // logits rows are the sequences that had a non-empty chunk, in order.
    int64_t row = 0;
    bool any_active = false;
    for (int64_t b = 0; b < B; ++b) {
      auto& chunk = chunks[static_cast<size_t>(b)];
      if (chunk.empty()) continue;
      float* lrow = logits.data() + row * V;
      ++row;
      chunk.clear();
      const int32_t id = samplers[static_cast<size_t>(b)].sample(lrow, V, seen[static_cast<size_t>(b)]);
      res.ids[static_cast<size_t>(b)].push_back(id);
      seen[static_cast<size_t>(b)].push_back(id);
      ++res.generated_tokens;
      if (on_token) on_token(b, id);
      const bool is_eos = !opt.ignore_eos && std::find(eos.begin(), eos.end(), id) != eos.end();
      if (is_eos) {
        res.stop[static_cast<size_t>(b)] = StopReason::Eos;
      } else if (static_cast<int64_t>(res.ids[static_cast<size_t>(b)].size()) >= opt.max_tokens) {
        res.stop[static_cast<size_t>(b)] = StopReason::MaxTokens;
      } else if (session.length(b) >= c.max_position_embeddings) {
        res.stop[static_cast<size_t>(b)] = StopReason::ContextLimit;
      } else {
        chunk.push_back(id);
        any_active = true;
      }
    }
    if (!any_active) break;
    session.forward(chunks, Session::Outputs::LastPosition, logits);
    ++res.decode_steps;
  }
  res.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return res;
}

ContinueResult generate_continue(Session& session, int64_t b, const std::vector<int32_t>& new_tokens,
                                 const GenerateOptions& opt, Sampler& sampler, std::vector<int32_t>& seen,
                                 const std::function<void(int32_t)>& on_token) {
  const ModelConfig& c = session.weights().config;
  const int64_t V = c.vocab_size, B = session.batch();
  check(!new_tokens.empty(), "generate: nothing to feed");
  check(b >= 0 && b < B, "generate: sequence index out of range");
  const std::vector<int64_t>& eos = opt.eos_ids.empty() ? c.eos_token_ids : opt.eos_ids;
  ContinueResult res;
  if (session.length(b) + static_cast<int64_t>(new_tokens.size()) > session.max_len())
    throw Error("the conversation (" + std::to_string(session.length(b) + static_cast<int64_t>(new_tokens.size())) +
                " tokens) exceeds the context of " + std::to_string(session.max_len()) + " tokens");
  std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(B));
  chunks[static_cast<size_t>(b)] = new_tokens;
  seen.insert(seen.end(), new_tokens.begin(), new_tokens.end());
  std::vector<float> logits;
  session.forward(chunks, Session::Outputs::LastPosition, logits);
  while (static_cast<int64_t>(res.ids.size()) < opt.max_tokens) {
    const int32_t id = sampler.sample(logits.data(), V, seen);
    res.ids.push_back(id);
    seen.push_back(id);
    if (on_token) on_token(id);
    if (!opt.ignore_eos && std::find(eos.begin(), eos.end(), id) != eos.end()) {
      res.stop = StopReason::Eos;
      return res;
    }
    if (static_cast<int64_t>(res.ids.size()) >= opt.max_tokens) break;
    if (session.length(b) >= session.max_len()) {
      res.stop = StopReason::ContextLimit;
      return res;
    }
    chunks[static_cast<size_t>(b)] = {id};
    session.forward(chunks, Session::Outputs::LastPosition, logits);
  }
  res.stop = StopReason::MaxTokens;
  return res;
}

}  // namespace parscale
