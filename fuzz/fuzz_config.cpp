// config.json: parsed and validated, or parscale::Error; a valid config survives to_json and back.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;  // not JSON: the loader reports that itself (not under test here)
  try {
    const parscale::ModelConfig c = parscale::ModelConfig::from_json(j, "config.json");
    const parscale::ModelConfig d = parscale::ModelConfig::from_json(c.to_json(), "round trip");
    if (d.to_json() != c.to_json()) __builtin_trap();
  } catch (const parscale::Error&) {
  }
  return 0;
}
