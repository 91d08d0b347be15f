// Token selection from a row of logits: greedy (temperature 0) or sampling with the usual
// processors, applied in Hugging Face's order: repetition penalty, temperature, top-k, top-p, min-p.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace parscale {

struct SamplingParams {
  float temperature = 1.0f;        // 0 = greedy
  int64_t top_k = 0;               // 0 = off
  float top_p = 1.0f;              // 1 = off
  float min_p = 0.0f;              // 0 = off
  float repetition_penalty = 1.0f; // 1 = off (HF: logit/p if > 0 else logit*p, for seen tokens)
  uint64_t seed = 0;
  void validate() const;           // throws parscale::Error naming the bad option
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, uint64_t stream_id);
  // Picks the next token from logits [V] (modified in place); `seen` are prompt + generated ids.
  int32_t sample(float* logits, int64_t V, const std::vector<int32_t>& seen);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;
  std::vector<double> prob_;
  std::vector<uint8_t> seen_mark_;
};

// Index of the largest value (first on ties), as torch.argmax.
int32_t argmax(const float* x, int64_t n);

}  // namespace parscale
