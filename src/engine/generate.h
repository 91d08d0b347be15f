// Batched generation over a Session: prefill every prompt in one pass, then one decode step per
// token for all unfinished sequences together (B·P rows per step).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "engine/sampling.h"
#include "model/weights.h"

namespace parscale {

struct GenerateOptions {
  int64_t max_tokens = 64;
  bool ignore_eos = false;
  std::vector<int64_t> eos_ids;  // defaults to the model's eos ids when empty
  SamplingParams sampling;
  DType kv_dtype = DType::F32;   // KV cache dtype of the session
};

enum class StopReason { Eos, MaxTokens, ContextLimit };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<std::vector<int32_t>> ids;  // generated ids per prompt (prompt excluded, eos included)
  std::vector<StopReason> stop;
  double prefill_seconds = 0.0, decode_seconds = 0.0;
  int64_t prompt_tokens = 0, generated_tokens = 0, decode_steps = 0;
};

// on_token(b, id) is called as each token is chosen (streaming).
GenerateResult generate(const ModelWeights& weights, const std::vector<std::vector<int32_t>>& prompts,
                        const GenerateOptions& options,
                        const std::function<void(int64_t, int32_t)>& on_token = nullptr);

class Session;

// Continues sequence b of an existing session: feeds `new_tokens` (non-empty) after what the
// session already holds, then samples up to options.max_tokens tokens. `seen` (the ids the
// repetition penalty looks at) is extended with new_tokens and the generated ids. Used by chat,
// where each turn appends to the cached conversation instead of recomputing it.
struct ContinueResult {
  std::vector<int32_t> ids;
  StopReason stop = StopReason::MaxTokens;
};
ContinueResult generate_continue(Session& session, int64_t b, const std::vector<int32_t>& new_tokens,
                                 const GenerateOptions& options, Sampler& sampler, std::vector<int32_t>& seen,
                                 const std::function<void(int32_t)>& on_token = nullptr);

}  // namespace parscale
