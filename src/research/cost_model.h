// Analytic (roofline) memory / latency model of ParScale inference, following the method of the
// ParScale paper's cost_analysis.py, which builds on the llm-analysis package (cli99/llm-analysis):
// the P streams run as one batch of B*P sequences that carry T extra prefix tokens, the
// aggregation MLP is added, and the embedding lookup and the lm_head are counted once per
// sequence rather than once per stream. docs/COST_MODEL.md derives every term.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "research/hardware.h"

namespace parscale::research {

// A Qwen2-style decoder backbone (the ParScale models are Qwen2 with P streams).
struct ModelShape {
  std::string name;
  long hidden = 0;        // h
  long intermediate = 0;  // i (SwiGLU: gate, up, down projections)
  long layers = 0;        // L
  long heads = 0;         // query heads (h divisible by heads)
  long kv_heads = 0;      // key/value heads (heads divisible by kv_heads)
  long vocab = 0;         // V (the embedding is tied with the lm_head, counted once)

  long head_dim() const { return hidden / heads; }
  long kv_dim() const { return kv_heads * head_dim(); }
  // Non-embedding parameters of the backbone as the paper counts them (q/k/v biases, both RMSNorms
  // per layer and the final norm included).
  double backbone_params() const;
  // ParScale parameters for P streams with T prefix tokens: per layer P*T key and value vectors of
  // width kv_dim, and the aggregation MLP Linear(P*h -> h) + Linear(h -> P), biases included.
  // Zero for P = 1.
  double parscale_params(long streams, long prefix_tokens) const;
  // N of the scaling law: backbone_params() + parscale_params(P, T).
  double scaling_law_params(long streams, long prefix_tokens) const;
  // Throws parscale::Error naming the offending field when the shape is inconsistent.
  void validate() const;
};

// The paper's backbones: 36 layers, 16 heads, 2 KV heads, vocabulary 151936, and
// (hidden, intermediate) = (896, 4864) "0.5B" ... (2560, 13824) "4.4B" (README: the 4.4B model has
// hidden 2560, intermediate 13824; the others are the unique shapes whose parameter count matches
// the N column of parametric_fit.py).
const std::vector<ModelShape>& paper_model_shapes();
// One of paper_model_shapes() by name ("0.5B", "0.7B", "1.1B", "1.6B", "2.8B", "4.4B").
ModelShape paper_model_shape(const std::string& name);

struct Precision {
  double weight_bytes = 2;      // per backbone / aggregation parameter
  double embedding_bytes = 2;   // per embedding parameter
  double activation_bytes = 2;  // per activation element
  double kv_bytes = 2;          // per KV-cache element
};
// "bf16" / "fp16" (2 bytes everywhere), "fp32" (4), "int8" (1-byte weights, 2-byte activations).
Precision precision_by_name(const std::string& name);

struct Workload {
  long batch = 1;           // B: independent sequences
  long streams = 1;         // P: parallel streams per sequence
  long prefix_tokens = 48;  // T: ParScale prefix length (only counted when P > 1)
  long input_tokens = 64;   // prompt length
  long output_tokens = 64;  // generated tokens
};

// Every term of the estimate, in bytes and seconds (see docs/COST_MODEL.md).
struct CostTerms {
  // memory
  double weight_bytes = 0;       // backbone layers + final norm + embedding (once)
  double aggregation_bytes = 0;  // (h+1)*h*P aggregation parameters, as upstream counts them
  double kv_cache_bytes = 0;     // B*P sequences x (prompt + T + output) tokens x L layers x K,V
  double activation_bytes = 0;   // peak prefill activation buffer
  // latency
  double prefill_layers_s = 0;     // L layers on B*P sequences of prompt + T tokens
  double prefill_embedding_s = 0;  // reading the embedding table once
  double prefill_lm_head_s = 0;    // logits of B*P sequences x (prompt + T) tokens
  double decode_layers_s = 0;      // output_tokens steps of L layers on B*P one-token sequences
  double decode_embedding_s = 0;   // reading the embedding table once per step
  double decode_lm_head_s = 0;     // logits of B*P sequences, per step
  double decode_kv_cache_s = 0;    // loading + storing the whole KV cache, per step
  double aggregation_s = 0;        // aggregation MLP, scaled from the MLP latency
  double lm_head_correction_s = 0; // <= 0: the lm_head runs on B, not B*P, sequences
};

struct CostEstimate {
  double memory_bytes = 0;
  double latency_s = 0;
  CostTerms terms;
  bool fits_in_memory = true;  // memory_bytes <= hardware capacity
};

// The prediction for one configuration. Throws parscale::Error on invalid input.
CostEstimate predict_cost(const ModelShape& shape, const Workload& workload,
                          const Hardware& hardware, const Precision& precision = {});

// ---- per-layer building blocks (exposed for tests and for docs/COST_MODEL.md) ----
struct LayerCosts {
  double attn_params = 0, mlp_params = 0, norm_params = 0;  // weights per layer (no biases)
  double attn_flops = 0, mlp_flops = 0;                     // forward FLOPs
  double attn_activation_bytes = 0, mlp_activation_bytes = 0, norm_activation_bytes = 0;
  double attn_s = 0, mlp_s = 0, norm_s = 0;  // roofline latency (max of compute and memory)
  double layer_s = 0;                        // attn + mlp + 2 * norm
};
// Costs of one layer on `sequences` sequences of `tokens` tokens each.
LayerCosts layer_costs(const ModelShape& shape, double sequences, double tokens,
                       const Hardware& hardware, const Precision& precision);

// ---- measured mode: the extension point for the engine's benchmark ----
// A measurement of the same configuration, printed beside the prediction.
struct CostMeasurement {
  double memory_bytes = 0;  // peak resident bytes of the run
  double latency_s = 0;     // wall time of prefill + all decode steps
  std::string source;       // what measured it (e.g. "engine bench, 5 runs, median")
};
// Runs the configuration on real hardware. The engine registers one when its benchmark API
// exists; until then none is registered and `parscale cost --measure` says so.
using CostMeasurer = std::function<CostMeasurement(const ModelShape&, const Workload&)>;
void register_cost_measurer(CostMeasurer measurer);
// The registered measurer, or nullptr.
const CostMeasurer* cost_measurer();

}  // namespace parscale::research
