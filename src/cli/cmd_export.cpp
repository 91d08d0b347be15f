// `parscale export --model DIR [--adapter F] --out DIR2 [--dtype f32|bf16]`: writes a full HF-layout
// checkpoint (upstream tensor names and shapes; config qwen2_parscale — qwen3_parscale on a Qwen3
// backbone — with the parscale fields when P > 1) that upstream's Python code loads (Qwen2).
#include <cstdio>
#include <memory>

#include "cli/registry.h"
#include "core/error.h"
#include "train/model_io.h"

namespace {

struct Opts {
  std::string model, out, dtype = "f32";
  std::vector<std::string> adapters;
};

parscale::cli::RegisterCommand reg("export", "write a backbone (+ adapter) as a full HF-layout checkpoint", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "model folder")->required();
  app.add_option("--adapter", o->adapters, "ParScale adapter applied to the backbone");
  app.add_option("--out", o->out, "output folder")->required();
  app.add_option("--dtype", o->dtype, "tensor dtype: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  return [o]() -> int {
    using namespace parscale;
    ParameterSet p = train::load_parameters(o->model, o->adapters);
    train::save_model_dir(p, o->out, o->dtype == "bf16" ? DType::BF16 : DType::F32, o->model);
    std::fprintf(stderr, "export: %s (P = %ld) -> %s\n", o->model.c_str(), static_cast<long>(p.config.parscale_n), o->out.c_str());
    return 0;
  };
});

parscale::cli::RegisterCommand reg_adapter("adapter", "extract the ParScale parameters of a model as an adapter file", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model, "ParScale model folder (P > 1)")->required();
  app.add_option("--adapter", o->adapters, "adapter applied first");
  app.add_option("--out", o->out, "adapter .safetensors to write")->required();
  return [o]() -> int {
    using namespace parscale;
    ParameterSet p = train::load_parameters(o->model, o->adapters);
    train::save_adapter(p, o->out);
    std::fprintf(stderr, "adapter: P = %ld, T = %ld -> %s\n", static_cast<long>(p.config.parscale_n),
                 static_cast<long>(p.config.parscale_n_tokens), o->out.c_str());
    return 0;
  };
});

}  // namespace
