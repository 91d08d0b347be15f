// safetensors header + tensor table: any file either opens with every tensor inside the file, or
// throws parscale::Error.
#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = parscale::fuzz::scratch_dir() / "model.safetensors";
  parscale::fuzz::write_file(path, data, size);
  try {
    parscale::SafetensorsFile f(path.string());
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : f.tensors()) {
      if (t.nbytes) sink = sink ^ t.data[0] ^ t.data[t.nbytes - 1];  // first and last byte are readable
      (void)t.shape_str();
    }
    for (const auto& [k, v] : f.metadata()) sink = sink ^ static_cast<uint8_t>(k.size() + v.size());
  } catch (const parscale::Error&) {
  }
  return 0;
}
