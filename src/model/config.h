// The one model configuration, read from a Hugging Face config.json and written back by
// export/init. Two families share one decoder implementation, told apart by a small description
// of the attention block (attention_bias, qk_norm):
//   "qwen2" / "qwen2_parscale": q/k/v biases, no q/k norm;
//   "qwen3" / "qwen3_parscale": per-head RMSNorm of q and k (before RoPE), biases only when
//   attention_bias is true, head_dim explicit.
// P = parscale_n = 1 is the plain model of the family.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace parscale {

struct ModelConfig {
  std::string model_type = "qwen2_parscale";
  int64_t vocab_size = 151936;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 22016;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  int64_t head_dim = 128;  // hidden_size / num_attention_heads unless config.json says otherwise
  int64_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  // The attention block: q/k/v projections carry biases; q and k get a per-head RMSNorm
  // (weights [head_dim], eps rms_norm_eps) after the projection and before RoPE.
  bool attention_bias = true;
  bool qk_norm = false;
  // ParScale fields (upstream class defaults when absent).
  int64_t parscale_n = 1;          // P, number of streams
  int64_t parscale_n_tokens = 48;  // T, prefix length per stream and layer (unused when P = 1)
  double parscale_attn_smooth = 0.01;
  // Token ids (-1 / empty when unknown). generation_config.json's eos ids take precedence.
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  int64_t streams() const { return parscale_n; }
  // "qwen2" or "qwen3" (model_type without the "_parscale" suffix).
  std::string family() const;
  // The model_type of this family with ParScale streams: "qwen2_parscale" / "qwen3_parscale".
  std::string parscale_model_type() const { return family() + "_parscale"; }
  bool is_parscale_type() const { return model_type == parscale_model_type(); }
  // Number of prefix slots per stream in the KV cache: T when P > 1, else 0.
  int64_t prefix_tokens() const { return parscale_n > 1 ? parscale_n_tokens : 0; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }

  // Throws parscale::Error naming `source` and the field on any inconsistency.
  void validate(const std::string& source) const;

  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  // Reads DIR/config.json, and DIR/generation_config.json (eos ids) when present.
  static ModelConfig from_model_dir(const std::string& dir);
  // HF-compatible config.json (model_type <family>_parscale when P > 1, or when it was read as such).
  nlohmann::json to_json() const;
};

}  // namespace parscale
