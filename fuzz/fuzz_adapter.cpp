// Adapter file (ParScale prefixes + aggregation, safetensors with parscale metadata) applied to a
// P = 1 backbone through load_model: a model or parscale::Error.
#include <filesystem>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/weights.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = parscale::fuzz::scratch_dir() / "adapter.safetensors";
  parscale::fuzz::write_file(path, data, size);
  parscale::LoadOptions o;
  o.adapter_files = {path.string()};
  try {
    parscale::ModelWeights w = parscale::load_model(parscale::fuzz::source_dir() + "/tests/fixtures/train/train_p1_tied_f32", o);
    volatile int64_t sink = w.config.parscale_n;
    (void)sink;
  } catch (const parscale::Error&) {
  }
  return 0;
}
