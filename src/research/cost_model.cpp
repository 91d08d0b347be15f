#include "research/cost_model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace parscale::research {

double ModelShape::backbone_params() const {
  const double h = static_cast<double>(hidden), kv = static_cast<double>(kv_dim());
  const double attention = h * h + h          // q_proj with bias
                           + 2 * (h * kv + kv)  // k_proj, v_proj with bias
                           + h * h;             // o_proj, no bias
  const double mlp = 3 * h * static_cast<double>(intermediate);
  const double norms = 2 * h;
  return static_cast<double>(layers) * (attention + mlp + norms) + h;  // + final norm
}

double ModelShape::parscale_params(long streams, long prefix_tokens) const {
  if (streams <= 1) return 0;
  const double p = static_cast<double>(streams), h = static_cast<double>(hidden);
  const double prefix = static_cast<double>(layers) * 2 * p * static_cast<double>(prefix_tokens) *
                        static_cast<double>(kv_dim());
  const double aggregation = (p * h * h + h) + (h * p + p);
  return prefix + aggregation;
}

double ModelShape::scaling_law_params(long streams, long prefix_tokens) const {
  return backbone_params() + parscale_params(streams, prefix_tokens);
}

void ModelShape::validate() const {
  const std::string who = "model shape '" + name + "': ";
  check(hidden > 0, who + "hidden must be > 0, found " + std::to_string(hidden));
  check(intermediate > 0, who + "intermediate must be > 0, found " + std::to_string(intermediate));
  check(layers > 0, who + "layers must be > 0, found " + std::to_string(layers));
  check(heads > 0 && hidden % heads == 0,
        who + "heads must divide hidden (" + std::to_string(hidden) + "), found " +
            std::to_string(heads));
  check(kv_heads > 0 && heads % kv_heads == 0,
        who + "kv_heads must divide heads (" + std::to_string(heads) + "), found " +
            std::to_string(kv_heads));
  check(vocab > 0, who + "vocab must be > 0, found " + std::to_string(vocab));
}

const std::vector<ModelShape>& paper_model_shapes() {
  static const std::vector<ModelShape> shapes = {
      {"0.5B", 896, 4864, 36, 16, 2, 151936},    {"0.7B", 1024, 5504, 36, 16, 2, 151936},
      {"1.1B", 1280, 6912, 36, 16, 2, 151936},   {"1.6B", 1536, 8320, 36, 16, 2, 151936},
      {"2.8B", 2048, 11008, 36, 16, 2, 151936},  {"4.4B", 2560, 13824, 36, 16, 2, 151936},
  };
  return shapes;
}

ModelShape paper_model_shape(const std::string& name) {
  std::string names;
  for (const ModelShape& s : paper_model_shapes()) {
    if (s.name == name) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw Error("unknown model preset '" + name + "' (expected one of: " + names + ")");
}

Precision precision_by_name(const std::string& name) {
  if (name == "bf16" || name == "fp16") return Precision{2, 2, 2, 2};
  if (name == "fp32") return Precision{4, 4, 4, 4};
  if (name == "int8") return Precision{1, 2, 2, 2};
  throw Error("unknown dtype '" + name + "' (expected bf16, fp16, fp32 or int8)");
}

LayerCosts layer_costs(const ModelShape& shape, double sequences, double tokens,
                       const Hardware& hardware, const Precision& precision) {
  const double h = static_cast<double>(shape.hidden), i = static_cast<double>(shape.intermediate);
  const double kv = static_cast<double>(shape.kv_dim()), heads = static_cast<double>(shape.heads);
  const double b = sequences, s = tokens, ab = precision.activation_bytes;
  const double flops = hardware.effective_flops(), bandwidth = hardware.effective_bandwidth();
  LayerCosts c;
  // Weights as llm-analysis counts them: projection matrices only (no biases).
  c.attn_params = 2 * h * h + 2 * h * kv;
  c.mlp_params = 3 * h * i;
  c.norm_params = 2 * h;
  // q and o projections (2 * 2bsh^2), k and v projections (2 * 2bsh*kv), QK^T and AV (4bs^2h).
  c.attn_flops = 4 * b * s * h * h + 4 * b * s * h * kv + 4 * b * s * s * h;
  c.mlp_flops = 6 * b * s * h * i;  // gate, up, down: 3 * 2bshi
  // Inference activation buffers with flash attention: the larger of the QKV input + output
  // (3bsh) and Q,O plus the per-head softmax statistics (2bsh + 4 heads bs).
  c.attn_activation_bytes = std::max(3 * ab * s * b * h, (2 * s * b * h + 4 * heads * s * b) * ab);
  c.mlp_activation_bytes = std::max(1.0, i / h) * ab * s * b * h;  // the wider of input / hidden
  c.norm_activation_bytes = s * b * h * ab;
  c.attn_s = std::max(c.attn_flops / flops,
                      (c.attn_params * precision.weight_bytes + c.attn_activation_bytes) / bandwidth);
  c.mlp_s = std::max(c.mlp_flops / flops,
                     (c.mlp_params * precision.weight_bytes + c.mlp_activation_bytes) / bandwidth);
  // A norm: 5 FLOPs per element, or reading its input at 4 bytes per element (llm-analysis charges
  // fp32 here whatever the activation type), whichever is slower.
  c.norm_s = std::max(5 * s * b * h / flops, s * b * h * 4 / bandwidth);
  c.layer_s = c.attn_s + c.mlp_s + 2 * c.norm_s;
  return c;
}

CostEstimate predict_cost(const ModelShape& shape, const Workload& w, const Hardware& hardware,
                          const Precision& precision) {
  shape.validate();
  hardware.validate();
  check(w.batch >= 1, "cost: batch must be >= 1, found " + std::to_string(w.batch));
  check(w.streams >= 1, "cost: P (streams) must be >= 1, found " + std::to_string(w.streams));
  check(w.prefix_tokens >= 0, "cost: prefix tokens must be >= 0, found " +
                                  std::to_string(w.prefix_tokens));
  check(w.input_tokens >= 1, "cost: input length must be >= 1, found " +
                                 std::to_string(w.input_tokens));
  check(w.output_tokens >= 0, "cost: output length must be >= 0, found " +
                                  std::to_string(w.output_tokens));
  const bool parallel = w.streams > 1;
  const double h = static_cast<double>(shape.hidden), V = static_cast<double>(shape.vocab);
  const double L = static_cast<double>(shape.layers);
  const double B = static_cast<double>(w.batch);
  const double BP = B * static_cast<double>(w.streams);  // streams run as a batch of B*P
  const double prompt = static_cast<double>(w.input_tokens + (parallel ? w.prefix_tokens : 0));
  const double out = static_cast<double>(w.output_tokens);
  const double flops = hardware.effective_flops(), bandwidth = hardware.effective_bandwidth();

  CostEstimate e;
  CostTerms& t = e.terms;
  const LayerCosts prefill = layer_costs(shape, BP, prompt, hardware, precision);
  const LayerCosts decode = layer_costs(shape, BP, 1, hardware, precision);

  // ---- memory ----
  t.weight_bytes = (L * (prefill.attn_params + prefill.mlp_params + prefill.norm_params) + h) *
                       precision.weight_bytes +
                   V * h * precision.embedding_bytes;
  const double aggregation_params = parallel ? (h + 1) * h * static_cast<double>(w.streams) : 0;
  t.aggregation_bytes = aggregation_params * precision.weight_bytes;
  t.kv_cache_bytes = 2 * BP * (prompt + out) * static_cast<double>(shape.kv_dim()) *
                     precision.kv_bytes * L;
  const double layer_peak = std::max({prefill.attn_activation_bytes, prefill.mlp_activation_bytes,
                                      prefill.norm_activation_bytes});
  const double logits = V * B * prompt * precision.activation_bytes;  // per sequence, not stream
  t.activation_bytes = std::max(layer_peak, logits);
  e.memory_bytes = t.weight_bytes + t.aggregation_bytes + t.kv_cache_bytes + t.activation_bytes;

  // ---- latency ----
  const double embedding_read = V * h * precision.embedding_bytes / bandwidth;
  t.prefill_layers_s = L * prefill.layer_s;
  t.prefill_embedding_s = embedding_read;
  t.prefill_lm_head_s = 2 * prompt * BP * V * h / flops;
  t.decode_layers_s = out * L * decode.layer_s;
  t.decode_embedding_s = out * embedding_read;
  t.decode_lm_head_s = out * 2 * BP * V * h / flops;
  t.decode_kv_cache_s = out * 2 * t.kv_cache_bytes / bandwidth;
  if (parallel) {
    // The aggregation MLP costs its share of one layer's MLP, on B sequences of the whole text.
    const double total_tokens = static_cast<double>(w.input_tokens + w.output_tokens);
    const LayerCosts whole = layer_costs(shape, B, total_tokens, hardware, precision);
    t.aggregation_s = aggregation_params / whole.mlp_params * whole.mlp_s;
    // The lm_head runs once per sequence: take back the (P-1)*B extra sequences' logits, counted
    // over input + output tokens as upstream does.
    t.lm_head_correction_s = -2 * total_tokens * (BP - B) * V * h / flops;
  }
  e.latency_s = t.prefill_layers_s + t.prefill_embedding_s + t.prefill_lm_head_s +
                t.decode_layers_s + t.decode_embedding_s + t.decode_lm_head_s +
                t.decode_kv_cache_s + t.aggregation_s + t.lm_head_correction_s;
  e.fits_in_memory = hardware.capacity_bytes <= 0 || e.memory_bytes <= hardware.capacity_bytes;
  return e;
}

namespace {
CostMeasurer& measurer_slot() {
  static CostMeasurer slot;
  return slot;
}
}  // namespace

void register_cost_measurer(CostMeasurer measurer) { measurer_slot() = std::move(measurer); }

const CostMeasurer* cost_measurer() {
  return measurer_slot() ? &measurer_slot() : nullptr;
}

}  // namespace parscale::research
