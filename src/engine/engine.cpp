// Engine: the public face of Engine::Impl (engine_impl.cpp) with the production model pass,
// BatchForward over the shared backbone.
#include "engine/engine.h"

#include <string>

#include "core/error.h"
#include "engine/batch_forward.h"
#include "engine/engine_impl.h"
#include "engine/step_runner.h"
#include "kernels/kernels.h"
#include "model/backbone.h"
#include "parscale/adapter.h"

namespace parscale {

namespace {

EngineModel describe(const Adapter* a) {
  EngineModel m;
  if (a != nullptr) {
    m.streams = a->streams;
    m.prefix_tokens = a->prefix_tokens;
    m.adapter_name = a->name;
  }
  return m;
}

}  // namespace

Engine::Engine(std::shared_ptr<const Backbone> backbone, std::shared_ptr<const Adapter> own,
               std::vector<std::shared_ptr<const Adapter>> extra, const EngineOptions& options) {
  check(backbone != nullptr, "engine: no backbone");
  std::vector<std::shared_ptr<const Adapter>> adapters{own};
  adapters.insert(adapters.end(), extra.begin(), extra.end());
  std::vector<EngineModel> models;
  std::vector<const Adapter*> raw;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const Adapter* a = adapters[i].get();
    check(i == 0 || a != nullptr, "engine: extra adapter " + std::to_string(i - 1) + " is null");
    if (a != nullptr)
      check(a->streams >= 2 && static_cast<int64_t>(a->prefix_k.size()) == backbone->config.num_hidden_layers,
            "engine: adapter '" + a->name + "' does not fit the backbone (" + std::to_string(a->prefix_k.size()) +
                " prefix layers for " + std::to_string(backbone->config.num_hidden_layers) + " layers)");
    models.push_back(describe(a));
    raw.push_back(a);
  }
  const Backbone& b = *backbone;
  EngineOptions o = options;
  if (o.prefill_rows_while_decoding < 0)
    o.prefill_rows_while_decoding =
        !b.layers.empty() && kernels::uses_bf16dot(b.layers[0].gate_proj) ? kPrefillRowsFast : kPrefillRowsExact;
  impl_ = std::make_unique<Impl>(
      b.config, std::move(models), std::move(raw),
      [&b](KvPool& pool) { return std::make_unique<BatchForwardRunner>(b, pool); }, o);
  impl_->backbone = std::move(backbone);
  impl_->keep_alive = std::move(adapters);
}

Engine::~Engine() {
  if (impl_) impl_->shutdown(false);
}

const std::vector<EngineModel>& Engine::models() const { return impl_->models; }
const Backbone& Engine::backbone() const { return *impl_->backbone; }
std::shared_ptr<RequestHandle> Engine::submit(EngineRequest request) { return impl_->submit(std::move(request)); }
EngineStats Engine::stats() const { return impl_->stats(); }
void Engine::shutdown(bool finish_running) { impl_->shutdown(finish_running); }

}  // namespace parscale
