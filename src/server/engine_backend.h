// The server's Backend over the real serving engine (kept apart from server.h so the HTTP layer
// and its tests do not need the engine's implementation).
#pragma once
#include "engine/engine.h"
#include "server/server.h"

namespace parscale::server {

class EngineBackend final : public Backend {
 public:
  explicit EngineBackend(Engine& engine) : engine_(engine) {}
  const std::vector<EngineModel>& models() const override { return engine_.models(); }
  std::shared_ptr<RequestHandle> submit(EngineRequest request) override { return engine_.submit(std::move(request)); }
  EngineStats stats() const override { return engine_.stats(); }

 private:
  Engine& engine_;
};

}  // namespace parscale::server
