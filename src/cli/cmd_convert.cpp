// `parscale convert --model DIR --out DIR2 --dtype q8|bf16|f16|f32 [--q8-block 32] [--adapter F]`
// Writes DIR2/model.safetensors with every weight matrix (embeddings, projections, untied lm_head)
// in the target dtype; q8 = I8 values with one F32 scale per block of --q8-block values along K,
// stored as the companion tensor "<name>.scales" [rows, cols/block]. Norms, biases, prefixes and
// the aggregation MLP stay F32. config.json, generation_config.json and tokenizer files are copied
// (config.json is rewritten from the merged configuration when adapters were applied).
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "model/tensor_specs.h"
#include "model/weights.h"

namespace {

namespace fs = std::filesystem;
using namespace parscale;

struct Opts {
  std::string model_dir, out_dir, dtype;
  std::vector<std::string> adapters;
  int64_t q8_block = 32;
  int threads = 0;
};

// The weights' tensor named `name` (a spec of the model): a matrix view or an fp32 vector.
struct Source {
  const WeightView* matrix = nullptr;
  const float* vec = nullptr;
};

Source find_source(const ModelWeights& w, const std::string& n) {
  if (n == "model.embed_tokens.weight") return {&w.embed_tokens, nullptr};
  if (n == "lm_head.weight") return {&w.lm_head, nullptr};
  if (n == "model.norm.weight") return {nullptr, w.final_norm};
  if (n == "model.aggregate_layer.0.weight") return {nullptr, w.aggregate0.f32()};
  if (n == "model.aggregate_layer.0.bias") return {nullptr, w.aggregate0_bias};
  if (n == "model.aggregate_layer.2.weight") return {nullptr, w.aggregate2.f32()};
  if (n == "model.aggregate_layer.2.bias") return {nullptr, w.aggregate2_bias};
  const std::string prefix = "model.layers.";
  check(n.rfind(prefix, 0) == 0, "convert: unexpected tensor '" + n + "'");
  const size_t dot = n.find('.', prefix.size());
  const int64_t l = std::stoll(n.substr(prefix.size(), dot - prefix.size()));
  const std::string suf = n.substr(dot + 1);
  const LayerWeights& L = w.layers[static_cast<size_t>(l)];
  if (suf == "input_layernorm.weight") return {nullptr, L.input_norm};
  if (suf == "post_attention_layernorm.weight") return {nullptr, L.post_norm};
  if (suf == "self_attn.q_proj.weight") return {&L.q_proj, nullptr};
  if (suf == "self_attn.k_proj.weight") return {&L.k_proj, nullptr};
  if (suf == "self_attn.v_proj.weight") return {&L.v_proj, nullptr};
  if (suf == "self_attn.o_proj.weight") return {&L.o_proj, nullptr};
  if (suf == "self_attn.q_proj.bias") return {nullptr, L.q_bias};
  if (suf == "self_attn.k_proj.bias") return {nullptr, L.k_bias};
  if (suf == "self_attn.v_proj.bias") return {nullptr, L.v_bias};
  if (suf == "self_attn.q_norm.weight") return {nullptr, L.q_norm};
  if (suf == "self_attn.k_norm.weight") return {nullptr, L.k_norm};
  if (suf == "self_attn.prefix_k") return {nullptr, L.prefix_k};
  if (suf == "self_attn.prefix_v") return {nullptr, L.prefix_v};
  if (suf == "mlp.gate_proj.weight") return {&L.gate_proj, nullptr};
  if (suf == "mlp.up_proj.weight") return {&L.up_proj, nullptr};
  if (suf == "mlp.down_proj.weight") return {&L.down_proj, nullptr};
  throw Error("convert: unexpected tensor '" + n + "'");
}

parscale::cli::RegisterCommand reg("convert", "write a model folder with its weight matrices in another dtype (q8, bf16, f16, f32)", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model_dir, "source model folder")->required();
  app.add_option("--out", o->out_dir, "destination folder (created; must not be the source)")->required();
  app.add_option("--dtype", o->dtype, "matrix dtype: q8 (I8 + per-block F32 scales), bf16, f16, f32")
      ->required()
      ->check(CLI::IsMember({"q8", "bf16", "f16", "f32"}));
  app.add_option("--q8-block", o->q8_block, "q8: values per scale along K (must divide every matrix's columns)")
      ->check(CLI::PositiveNumber);
  app.add_option("--adapter", o->adapters, "ParScale adapter files merged into the written model");
  app.add_option("--threads", o->threads, "worker threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  return [o]() -> int {
    const fs::path src(o->model_dir), dst(o->out_dir);
    if (fs::exists(dst) && fs::equivalent(src, dst)) throw Error("convert: --out must differ from --model");
    cli::ModelOptions mo;
    mo.model_dir = o->model_dir;
    mo.adapters = o->adapters;
    mo.threads = o->threads;
    ModelWeights w = mo.load();
    const DType target = o->dtype == "q8" ? DType::I8 : o->dtype == "bf16" ? DType::BF16 : o->dtype == "f16" ? DType::F16 : DType::F32;

    ModelConfig config = w.config;
    config.tie_word_embeddings = w.tied;
    WeightArena arena;
    std::vector<WeightView> converted;  // keeps views alive for the writer
    std::vector<std::string> scale_names;
    std::vector<TensorToWrite> out;
    const auto specs = model_tensor_specs(config);
    converted.reserve(specs.size());
    scale_names.reserve(specs.size());
    for (const TensorSpec& s : specs) {
      const Source source = find_source(w, s.name);
      const bool quantisable = s.kind == ParamKind::Matrix || s.kind == ParamKind::Embedding;
      if (source.matrix && quantisable) {
        if (target == DType::I8 && source.matrix->cols % o->q8_block != 0)
          throw Error("convert: --q8-block " + std::to_string(o->q8_block) + " does not divide the " +
                      std::to_string(source.matrix->cols) + " columns of '" + s.name + "'");
        converted.push_back(convert_weight(*source.matrix, target, o->q8_block, arena));
        const WeightView& v = converted.back();
        out.push_back({s.name, target, s.shape, v.data});
        if (target == DType::I8) {
          scale_names.push_back(s.name + ".scales");
          out.push_back({scale_names.back(), DType::F32, {v.rows, v.cols / v.block}, v.scales});
        }
      } else {
        const float* data = source.vec ? source.vec : source.matrix->f32();
        check(data != nullptr, "convert: tensor '" + s.name + "' has no data");
        out.push_back({s.name, DType::F32, s.shape, data});
      }
    }
    fs::create_directories(dst);
    write_safetensors((dst / "model.safetensors").string(), out, {{"format", "pt"}, {"parscale_dtype", o->dtype}});
    // Everything else of the folder (generation config, tokenizer files) is copied as is.
    for (const auto& e : fs::directory_iterator(src)) {
      if (!e.is_regular_file()) continue;
      const std::string name = e.path().filename().string();
      const bool weights = e.path().extension() == ".safetensors" || name == "model.safetensors.index.json";
      if (weights || (name == "config.json" && !o->adapters.empty())) continue;
      fs::copy_file(e.path(), dst / name, fs::copy_options::overwrite_existing);
    }
    if (!o->adapters.empty()) write_file_atomic((dst / "config.json").string(), config.to_json().dump(2) + "\n");
    std::printf("wrote %s (%zu tensors, matrices as %s)\n", (dst / "model.safetensors").string().c_str(), out.size(), o->dtype.c_str());
    return 0;
  };
});

}  // namespace
