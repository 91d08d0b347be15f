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
    mo.run_only = false;  // the matrices are read and written out
    ModelWeights w = mo.load();
    const DType target = o->dtype == "q8" ? DType::I8 : o->dtype == "bf16" ? DType::BF16 : o->dtype == "f16" ? DType::F16 : DType::F32;

    ModelConfig config = w.config;
    config.tie_word_embeddings = w.bb().tied;
    // Slots are only read here (tensor_slot serves loading too, hence non-const).
    Backbone& backbone = const_cast<Backbone&>(w.bb());
    Adapter* adapter = const_cast<Adapter*>(w.adapter.get());
    WeightArena arena;
    std::vector<WeightView> converted;  // keeps views alive for the writer
    std::vector<std::string> scale_names;
    std::vector<TensorToWrite> out;
    const auto specs = model_tensor_specs(config);
    converted.reserve(specs.size());
    scale_names.reserve(specs.size());
    for (const TensorSpec& s : specs) {
      const TensorSlot source = tensor_slot(backbone, adapter, s);
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
        const float* data = source.vector ? *source.vector : source.matrix->f32();
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
