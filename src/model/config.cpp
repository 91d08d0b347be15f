#include "model/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/error.h"

namespace parscale {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(path + ": invalid JSON: " + e.what());
  }
}

// Field present and not null?
bool has(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

int64_t get_int(const json& j, const char* key, int64_t fallback, const std::string& src) {
  if (!has(j, key)) return fallback;
  const json& v = j[key];
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw Error(src + ": field '" + key + "' is out of range, found " + v.dump());
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {  // 64.0 is fine; the range check comes first (a cast out of range is UB)
    const double d = v.get<double>();
    if (!std::isfinite(d) || std::fabs(d) >= 9.0e18)
      throw Error(src + ": field '" + key + "' is out of range, found " + v.dump());
    if (d == std::floor(d)) return static_cast<int64_t>(d);
  }
  throw Error(src + ": field '" + key + "' must be an integer, found " + v.dump());
}

double get_num(const json& j, const char* key, double fallback, const std::string& src) {
  if (!has(j, key)) return fallback;
  const json& v = j[key];
  if (!v.is_number()) throw Error(src + ": field '" + key + "' must be a number, found " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback, const std::string& src) {
  if (!has(j, key)) return fallback;
  const json& v = j[key];
  if (!v.is_boolean()) throw Error(src + ": field '" + key + "' must be true or false, found " + v.dump());
  return v.get<bool>();
}

std::vector<int64_t> get_id_list(const json& j, const char* key, const std::string& src) {
  std::vector<int64_t> out;
  if (!has(j, key)) return out;
  const json& v = j[key];
  if (v.is_number_integer()) {
    out.push_back(v.get<int64_t>());
  } else if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_number_integer()) throw Error(src + ": field '" + key + "' must hold integers, found " + e.dump());
      out.push_back(e.get<int64_t>());
    }
  } else {
    throw Error(src + ": field '" + key + "' must be an integer or a list of integers, found " + v.dump());
  }
  return out;
}

}  // namespace

std::string ModelConfig::family() const {
  const std::string suffix = "_parscale";
  if (model_type.size() > suffix.size() && model_type.compare(model_type.size() - suffix.size(), suffix.size(), suffix) == 0)
    return model_type.substr(0, model_type.size() - suffix.size());
  return model_type;
}

namespace {
constexpr const char* kModelTypes = "\"qwen2\", \"qwen2_parscale\", \"qwen3\" or \"qwen3_parscale\"";
}

ModelConfig ModelConfig::from_json(const json& j, const std::string& src) {
  if (!j.is_object()) throw Error(src + ": config must be a JSON object");
  ModelConfig c;
  if (!has(j, "model_type") || !j["model_type"].is_string())
    throw Error(src + ": missing string field 'model_type' (expected " + kModelTypes + ")");
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type != "qwen2" && c.model_type != "qwen2_parscale" && c.model_type != "qwen3" && c.model_type != "qwen3_parscale")
    throw Error(src + ": unsupported model_type \"" + c.model_type + "\" (expected " + kModelTypes + ")");
  const bool qwen3 = c.family() == "qwen3";
  // Upstream's class defaults apply to absent (or null) fields.
  c.vocab_size = get_int(j, "vocab_size", 151936, src);
  c.hidden_size = get_int(j, "hidden_size", 4096, src);
  c.intermediate_size = get_int(j, "intermediate_size", 22016, src);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", 32, src);
  c.num_attention_heads = get_int(j, "num_attention_heads", 32, src);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", c.num_attention_heads, src);
  check(c.num_attention_heads > 0, src + ": field 'num_attention_heads' must be > 0, found " + std::to_string(c.num_attention_heads));
  // Qwen3's config class has head_dim = 128 by default; Qwen2 derives it.
  c.head_dim = get_int(j, "head_dim", qwen3 ? 128 : c.hidden_size / c.num_attention_heads, src);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", 32768, src);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", 1e-6, src);
  c.rope_theta = get_num(j, "rope_theta", 10000.0, src);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, src);
  // Qwen2's attention always has q/k/v biases (its config has no such field); Qwen3's has them
  // only when attention_bias is true, and always normalises q and k per head.
  c.attention_bias = qwen3 ? get_bool(j, "attention_bias", false, src) : true;
  c.qk_norm = qwen3;
  c.parscale_n = get_int(j, "parscale_n", 1, src);
  c.parscale_n_tokens = get_int(j, "parscale_n_tokens", 48, src);
  c.parscale_attn_smooth = get_num(j, "parscale_attn_smooth", 0.01, src);
  c.bos_token_id = get_int(j, "bos_token_id", -1, src);
  c.eos_token_ids = get_id_list(j, "eos_token_id", src);
  if (has(j, "torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();
  if (has(j, "hidden_act") && j["hidden_act"] != "silu")
    throw Error(src + ": unsupported hidden_act " + j["hidden_act"].dump() + " (" + (qwen3 ? "Qwen3" : "Qwen2") + " uses \"silu\")");
  if (has(j, "rope_scaling")) {
    const json& rs = j["rope_scaling"];
    std::string type = rs.is_object() ? rs.value("rope_type", rs.value("type", std::string("?"))) : "?";
    if (type != "default")
      throw Error(src + ": unsupported rope_scaling " + rs.dump() + " (only null or rope_type \"default\")");
  }
  if (get_bool(j, "use_sliding_window", false, src))
    throw Error(src + ": use_sliding_window=true is not supported (set it to false; only full attention is implemented)");
  c.validate(src);
  return c;
}

void ModelConfig::validate(const std::string& src) const {
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) throw Error(src + ": field '" + name + "' must be > 0, found " + std::to_string(v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_key_value_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  positive(parscale_n, "parscale_n");
  if (family() != "qwen2" && family() != "qwen3")
    throw Error(src + ": unsupported model_type \"" + model_type + "\" (expected " + kModelTypes + ")");
  if (qk_norm != (family() == "qwen3") || (family() == "qwen2" && !attention_bias))
    throw Error(src + ": model_type \"" + model_type + "\" does not match its attention block (attention_bias " +
                (attention_bias ? "true" : "false") + ", qk_norm " + (qk_norm ? "true" : "false") + ")");
  if (head_dim % 2 != 0) throw Error(src + ": head_dim must be even for RoPE, found " + std::to_string(head_dim));
  if (num_attention_heads % num_key_value_heads != 0)
    throw Error(src + ": num_attention_heads (" + std::to_string(num_attention_heads) +
                ") must be a multiple of num_key_value_heads (" + std::to_string(num_key_value_heads) + ")");
  if (parscale_n > 1 && parscale_n_tokens <= 0)
    throw Error(src + ": field 'parscale_n_tokens' must be > 0 when parscale_n > 1, found " + std::to_string(parscale_n_tokens));
  if (parscale_n > 1 && !is_parscale_type())
    throw Error(src + ": parscale_n = " + std::to_string(parscale_n) + " needs model_type \"" + parscale_model_type() +
                "\", found \"" + model_type + "\"");
  if (!(parscale_attn_smooth >= 0.0 && parscale_attn_smooth <= 1.0))
    throw Error(src + ": field 'parscale_attn_smooth' must lie in [0, 1], found " + std::to_string(parscale_attn_smooth));
  if (!(rms_norm_eps > 0.0)) throw Error(src + ": field 'rms_norm_eps' must be > 0");
  if (!(rope_theta > 0.0)) throw Error(src + ": field 'rope_theta' must be > 0");
  for (int64_t e : eos_token_ids)
    if (e < 0 || e >= vocab_size)
      throw Error(src + ": eos_token_id " + std::to_string(e) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
}

ModelConfig ModelConfig::from_model_dir(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  if (!fs::exists(path)) throw Error(dir + ": no config.json (is this a model folder?)");
  ModelConfig c = from_json(read_json_file(path), path);
  const std::string gen = (fs::path(dir) / "generation_config.json").string();
  if (fs::exists(gen)) {
    json g = read_json_file(gen);
    if (!g.is_object()) throw Error(gen + ": must be a JSON object");
    std::vector<int64_t> eos = get_id_list(g, "eos_token_id", gen);
    if (!eos.empty()) c.eos_token_ids = eos;
    c.validate(gen);
  }
  return c;
}

json ModelConfig::to_json() const {
  json j;
  const bool parscale = parscale_n > 1 || is_parscale_type();
  const bool qwen3 = family() == "qwen3";
  const std::string arch = qwen3 ? "Qwen3" : "Qwen2";
  j["architectures"] = {arch + (parscale ? "ParScaleForCausalLM" : "ForCausalLM")};
  j["model_type"] = parscale ? parscale_model_type() : family();
  if (parscale && !qwen3) {
    j["auto_map"] = {{"AutoConfig", "configuration_qwen2_parscale.Qwen2ParScaleConfig"},
                     {"AutoModelForCausalLM", "modeling_qwen2_parscale.Qwen2ParScaleForCausalLM"}};
  }
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  j["num_key_value_heads"] = num_key_value_heads;
  if (qwen3 || head_dim != hidden_size / num_attention_heads) j["head_dim"] = head_dim;
  if (qwen3) j["attention_bias"] = attention_bias;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["use_sliding_window"] = false;
  j["attention_dropout"] = 0.0;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype;
  if (bos_token_id >= 0) j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) j["eos_token_id"] = eos_token_ids[0];
  else if (!eos_token_ids.empty()) j["eos_token_id"] = eos_token_ids;
  if (parscale) {
    j["parscale_n"] = parscale_n;
    j["parscale_n_tokens"] = parscale_n_tokens;
    j["parscale_attn_smooth"] = parscale_attn_smooth;
  }
  return j;
}

}  // namespace parscale
