// Token selection from a row of logits: greedy (temperature 0) or sampling with the usual
// processors, applied in this order: repetition penalty (Hugging Face), presence / frequency
// penalties (OpenAI / vLLM), temperature, top-k, top-p, min-p.
//
// Invariants of a logits row the sampler accepts: no NaN and no +inf (either is a broken model
// output and is refused with parscale::Error naming the token id); -inf is allowed (a masked
// token) as long as at least one logit is finite. Probabilities are computed in double as
// exp((logit - max) / temperature), so a temperature close to 0 (any positive float) never
// overflows: it converges to greedy selection (ties go to the lower token id).
#pragma once
#include <cstddef>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace parscale {

struct SamplingParams {
  float temperature = 1.0f;        // 0 = greedy
  int64_t top_k = 0;               // 0 = off
  float top_p = 1.0f;              // 1 = off
  float min_p = 0.0f;              // 0 = off
  float repetition_penalty = 1.0f; // 1 = off (HF: logit/p if > 0 else logit*p, for seen tokens)
  // OpenAI / vLLM: logit[t] -= presence_penalty * (count_t > 0) + frequency_penalty * count_t,
  // count_t = occurrences of t among the GENERATED tokens only. Each in [-2, 2]; 0 = off.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  void validate() const;           // throws parscale::Error naming the bad option
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, uint64_t stream_id);
  // Picks the next token from logits [V] (modified in place by the penalties). `seen` are the
  // prompt + generated ids; seen[generated_from..] are the generated ones (presence / frequency
  // penalties count only those; the default 0 counts all of `seen`). Throws parscale::Error on
  // a row with NaN / +inf or with no finite logit.
  int32_t sample(float* logits, int64_t V, const std::vector<int32_t>& seen, size_t generated_from = 0);

 private:
  // Puts cand_[0, n) in descending order (logit, then lower id first), extending the already
  // ordered prefix cand_[0, sorted_) by selection: never orders more than needed.
  void order_prefix(size_t n);

  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> cand_;  // (logit after penalties, id)
  size_t sorted_ = 0;                             // cand_[0, sorted_) is in final order
  std::vector<uint8_t> seen_mark_;
  std::vector<int32_t> counts_;                   // [V], zero between calls
};

// Index of the largest value (first on ties), as torch.argmax.
int32_t argmax(const float* x, int64_t n);

// Log-softmax of the raw logits [V] (sum in double): *chosen_logprob = log p(chosen), and
// *top = the n most likely (id, log p), descending, ties by lower id (n is clamped to [0, V]).
// Throws parscale::Error on NaN / +inf logits, on no finite logit and on chosen outside [0, V).
void top_logprobs(const float* logits, int64_t V, int n, int32_t chosen, float* chosen_logprob,
                  std::vector<std::pair<int32_t, float>>* top);

}  // namespace parscale
