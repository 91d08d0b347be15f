// Prometheus text exposition (format 0.0.4) of the engine's and the HTTP layer's counters.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include "engine/engine.h"

namespace parscale::server {

struct HttpCounters {
  std::map<int, uint64_t> responses_by_status;  // HTTP status -> responses sent
  uint64_t disconnects = 0;                     // requests cancelled because the client went away
};

// Per-P families carry a label streams="P"; pool and step figures are global.
std::string render_metrics(const EngineStats& stats, const HttpCounters& http);

}  // namespace parscale::server
