// `parscale init`: make a ParScale-P model from a P = 1 backbone (prefixes from the backbone's own
// K/V, uniform stream weights at step 0), or a fresh random model of any shape from a config.json.
// Initialisation rules: docs/TRAINING.md.
#include <cstdio>
#include <utility>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/registry.h"
#include "core/error.h"
#include "core/threads.h"
#include "model/config.h"
#include "train/model_io.h"

namespace {

struct Opts {
  std::string model, config, out, adapter_out, dtype = "f32";
  int64_t streams = 0, prefix_tokens = 48;
  double smooth = 0.01;
  uint64_t seed = 0;
  int threads = 0;
};

parscale::cli::RegisterCommand reg("init", "make a ParScale model from a P = 1 backbone, or a fresh random model from a config", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto* model = app.add_option("--model", o->model, "P = 1 backbone folder (Qwen2/Qwen2.5 or ours)");
  auto* config = app.add_option("--config", o->config, "config.json of a fresh random model (any shape, parscale_n included)");
  model->excludes(config);
  app.add_option("--streams", o->streams, "P, number of streams (with --model)");
  app.add_option("--prefix-tokens", o->prefix_tokens, "T, prefix tokens per stream and layer")->capture_default_str();
  app.add_option("--smooth", o->smooth, "parscale_attn_smooth")->capture_default_str();
  app.add_option("--seed", o->seed, "seed of the random draws")->capture_default_str();
  app.add_option("--out", o->out, "output model folder (config.json, generation_config.json, model.safetensors)");
  app.add_option("--adapter-out", o->adapter_out, "also (or only) write the ParScale parameters as an adapter file");
  app.add_option("--dtype", o->dtype, "dtype of model.safetensors: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--threads", o->threads, "worker threads (0 = all cores)");
  return [o]() -> int {
    using namespace parscale;
    set_num_threads(o->threads);
    if (o->out.empty() && o->adapter_out.empty()) throw Error("init: give --out DIR and/or --adapter-out FILE");
    ParameterSet p;
    if (!o->config.empty()) {
      std::ifstream in(o->config);
      if (!in) throw Error(o->config + ": cannot open");
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        throw Error(o->config + ": invalid JSON: " + e.what());
      }
      ModelConfig c = ModelConfig::from_json(j, o->config);
      if (o->streams > 1) {
        c.model_type = c.parscale_model_type();
        c.parscale_n = o->streams;
        c.parscale_n_tokens = o->prefix_tokens;
        c.parscale_attn_smooth = o->smooth;
      }
      p = train::random_parameters(c, o->seed);
    } else if (!o->model.empty()) {
      if (o->streams < 2) throw Error("init: --streams P (P >= 2) is required with --model");
      ParameterSet backbone = train::load_parameters(o->model);
      if (backbone.config.parscale_n > 1)
        std::fprintf(stderr, "parscale: warning: %s is a P = %ld model; its ParScale parameters are replaced\n",
                     o->model.c_str(), static_cast<long>(backbone.config.parscale_n));
      p = train::parscale_from_backbone(std::move(backbone), o->streams, o->prefix_tokens, o->smooth, o->seed);
    } else {
      throw Error("init: give --model BACKBONE --streams P, or --config config.json");
    }
    if (!o->out.empty()) train::save_model_dir(p, o->out, o->dtype == "bf16" ? DType::BF16 : DType::F32, o->model);
    if (!o->adapter_out.empty()) train::save_adapter(p, o->adapter_out);
    int64_t n = 0;
    for (const auto& v : p.values) n += static_cast<int64_t>(v.size());
    std::fprintf(stderr, "init: P = %ld, %ld layers, hidden %ld, %.2fM parameters%s%s\n", static_cast<long>(p.config.parscale_n),
                 static_cast<long>(p.config.num_hidden_layers), static_cast<long>(p.config.hidden_size), n / 1e6,
                 o->out.empty() ? "" : (" -> " + o->out).c_str(), o->adapter_out.empty() ? "" : (" + adapter " + o->adapter_out).c_str());
    return 0;
  };
});

}  // namespace
