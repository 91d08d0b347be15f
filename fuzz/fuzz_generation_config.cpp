// generation_config.json next to a valid config.json: read through ModelConfig::from_model_dir.
#include <filesystem>

#include "core/error.h"
#include "fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path dir = parscale::fuzz::scratch_dir() / "genconfig";
  static const bool ready = [&] {
    fs::create_directories(dir);
    fs::copy_file(parscale::fuzz::source_dir() + "/tests/fixtures/models/ps2_t1_f32_untied/config.json", dir / "config.json",
                  fs::copy_options::overwrite_existing);
    return true;
  }();
  (void)ready;
  parscale::fuzz::write_file(dir / "generation_config.json", data, size);
  try {
    (void)parscale::ModelConfig::from_model_dir(dir.string());
  } catch (const parscale::Error&) {
  }
  return 0;
}
