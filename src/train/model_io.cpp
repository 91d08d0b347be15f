#include "train/model_io.h"

#include <cmath>
#include <utility>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"
#include "train/train_model.h"

namespace parscale::train {

namespace fs = std::filesystem;

namespace {

// splitmix64: decorrelates (seed, stream) pairs into generator seeds.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

void fill_normal(std::vector<float>& v, double std, uint64_t seed) {
  NormalRng rng(seed);
  for (float& x : v) x = static_cast<float>(std * rng.next());
}

}  // namespace

uint64_t NormalRng::next_u64() { return mix(state_ + 0x632BE59BD9B4E019ull * ++counter_); }

double NormalRng::next() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  // Two uniforms in (0, 1] from 53-bit integers.
  const double u1 = (static_cast<double>(next_u64() >> 11) + 1.0) * 0x1.0p-53;
  const double u2 = static_cast<double>(next_u64() >> 11) * 0x1.0p-53;
  const double r = std::sqrt(-2.0 * std::log(u1));
  spare_ = r * std::sin(2.0 * M_PI * u2);
  has_spare_ = true;
  return r * std::cos(2.0 * M_PI * u2);
}

int64_t find_tensor(const ParameterSet& p, const std::string& name) {
  for (size_t i = 0; i < p.specs.size(); ++i)
    if (p.specs[i].name == name) return static_cast<int64_t>(i);
  return -1;
}

ParameterSet random_parameters(const ModelConfig& config, uint64_t seed) {
  ModelConfig c = config;
  c.validate("init config");
  ModelConfig base = c;
  base.parscale_n = 1;
  ParameterSet p;
  p.config = base;
  p.specs = model_tensor_specs(base);
  for (const auto& s : p.specs) {
    std::vector<float> v(static_cast<size_t>(s.numel()), 0.0f);
    switch (s.kind) {
      case ParamKind::Embedding:
      case ParamKind::Matrix: fill_normal(v, 0.02, mix(seed ^ fnv1a(s.name))); break;
      case ParamKind::Norm: std::fill(v.begin(), v.end(), 1.0f); break;
      default: break;  // biases 0
    }
    p.values.push_back(std::move(v));
  }
  if (c.parscale_n > 1) return parscale_from_backbone(std::move(p), c.parscale_n, c.parscale_n_tokens, c.parscale_attn_smooth, seed);
  p.config.model_type = c.model_type;
  return p;
}

ParameterSet parscale_from_backbone(ParameterSet backbone, int64_t P, int64_t T, double smooth, uint64_t seed) {
  check(P >= 2, "init: --streams must be at least 2 for a ParScale model");
  check(T >= 1, "init: --prefix-tokens must be at least 1");
  // The backbone as a P = 1 parameter set. Its tensors are moved, never copied: on a 1.8B model
  // each fp32 copy is 7 GB (the backbone ends up in the result the same way).
  ParameterSet base;
  base.config = backbone.config;
  base.config.parscale_n = 1;
  base.specs = model_tensor_specs(base.config);
  for (const auto& s : base.specs) {
    auto* v = backbone.find(s.name);
    if (!v) throw Error("init: backbone lacks tensor '" + s.name + "'");
    base.values.push_back(std::move(*v));
  }
  ParameterSet out;
  out.config = base.config;
  out.config.model_type = out.config.parscale_model_type();
  out.config.parscale_n = P;
  out.config.parscale_n_tokens = T;
  out.config.parscale_attn_smooth = smooth;
  out.config.validate("init");
  out.specs = model_tensor_specs(out.config);
  out.values.resize(out.specs.size());
  for (size_t i = 0; i < out.specs.size(); ++i)
    if (out.specs[i].group != ParamGroup::Backbone) out.values[i].assign(static_cast<size_t>(out.specs[i].numel()), 0.0f);
  // Prefixes: the backbone's pre-RoPE K/V of T random tokens, one draw per stream.
  const ModelConfig& c = out.config;
  const int64_t KVH = c.num_key_value_heads, D = c.head_dim;
  {
    TrainModel model(base);  // views of base's tensors: gone before they move on
    for (int64_t s = 0; s < P; ++s) {
      NormalRng rng(mix(seed * 0x100000001B3ull + static_cast<uint64_t>(s) + 1));
      std::vector<int32_t> ids(static_cast<size_t>(T));
      for (auto& id : ids) id = static_cast<int32_t>(rng.next_u64() % static_cast<uint64_t>(c.vocab_size));
      std::vector<std::vector<float>> k, v;
      model.capture_kv(ids.data(), T, k, v);  // per layer [KVH, T, D]
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        auto& pk = out.values[static_cast<size_t>(find_tensor(out, layer_tensor_name(l, "self_attn.prefix_k")))];
        auto& pv = out.values[static_cast<size_t>(find_tensor(out, layer_tensor_name(l, "self_attn.prefix_v")))];
        std::copy(k[static_cast<size_t>(l)].begin(), k[static_cast<size_t>(l)].end(), pk.begin() + s * KVH * T * D);
        std::copy(v[static_cast<size_t>(l)].begin(), v[static_cast<size_t>(l)].end(), pv.begin() + s * KVH * T * D);
      }
    }
  }
  for (size_t i = 0; i < out.specs.size(); ++i)
    if (out.specs[i].group == ParamGroup::Backbone) out.values[i] = std::move(*base.find(out.specs[i].name));
  auto& a0 = out.values[static_cast<size_t>(find_tensor(out, "model.aggregate_layer.0.weight"))];
  fill_normal(a0, 0.02, mix(seed ^ fnv1a("model.aggregate_layer.0.weight")));
  return out;
}

ParameterSet load_parameters(const std::string& dir, const std::vector<std::string>& adapters) {
  LoadOptions lo;
  lo.adapter_files = adapters;
  lo.pack_fast = false;  // read into fp32 parameters, never run
  ModelWeights w = load_model(dir, lo);
  return parameters_from_weights(w);
}

void copy_tokenizer_files(const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::error_code ec;
  if (fs::equivalent(from, to, ec)) return;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(from) / name;
    if (!fs::exists(src)) continue;
    std::ifstream in(src, std::ios::binary);
    if (!in) throw Error(src.string() + ": cannot open");
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_file_atomic((fs::path(to) / name).string(), bytes);
  }
}

void save_model_dir(const ParameterSet& p, const std::string& dir, DType dtype, const std::string& source_dir) {
  check(dtype == DType::F32 || dtype == DType::BF16, "export: dtype must be F32 or BF16");
  fs::create_directories(dir);
  ModelConfig c = p.config;
  c.torch_dtype = dtype == DType::F32 ? "float32" : "bfloat16";
  write_file_atomic((fs::path(dir) / "config.json").string(), c.to_json().dump(2) + "\n");
  nlohmann::json gen;
  if (c.bos_token_id >= 0) gen["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() == 1) gen["eos_token_id"] = c.eos_token_ids[0];
  else if (!c.eos_token_ids.empty()) gen["eos_token_id"] = c.eos_token_ids;
  gen["do_sample"] = false;
  write_file_atomic((fs::path(dir) / "generation_config.json").string(), gen.dump(2) + "\n");
  copy_tokenizer_files(source_dir, dir);
  std::vector<std::vector<uint16_t>> converted;
  std::vector<TensorToWrite> tensors;
  converted.reserve(p.specs.size());
  for (size_t i = 0; i < p.specs.size(); ++i) {
    TensorToWrite t{p.specs[i].name, dtype, p.specs[i].shape, p.values[i].data()};
    if (dtype == DType::BF16) {
      converted.emplace_back(p.values[i].size());
      convert_from_f32(DType::BF16, p.values[i].data(), converted.back().data(), p.values[i].size());
      t.data = converted.back().data();
    }
    tensors.push_back(t);
  }
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors);
}

void save_adapter(const ParameterSet& p, const std::string& file) {
  const ModelConfig& c = p.config;
  check(c.parscale_n > 1, "adapter: the model has P = 1, so it has no ParScale parameters to save");
  std::vector<TensorToWrite> tensors;
  for (size_t i = 0; i < p.specs.size(); ++i)
    if (p.specs[i].group == ParamGroup::ParScale)
      tensors.push_back({p.specs[i].name, DType::F32, p.specs[i].shape, p.values[i].data()});
  char smooth[32];
  std::snprintf(smooth, sizeof smooth, "%.17g", c.parscale_attn_smooth);
  const fs::path parent = fs::path(file).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  write_safetensors(file, tensors,
                    {{"format", "pt"},
                     {"parscale_n", std::to_string(c.parscale_n)},
                     {"parscale_n_tokens", std::to_string(c.parscale_n_tokens)},
                     {"parscale_attn_smooth", smooth}});
}

}  // namespace parscale::train
