// Batched generation on the serving Engine: every prompt is one request, all run together (the
// same scheduler, sampler seeding and stop rules as `parscale serve`).
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

}  // namespace parscale
