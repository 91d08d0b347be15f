// model.safetensors.index.json (the sharded index) over two valid shards: TensorStore opens the
// folder with every tensor mapped exactly once, or throws parscale::Error.
#include <filesystem>

#include "core/error.h"
#include "fuzz_util.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path dir = parscale::fuzz::scratch_dir() / "sharded";
  static const bool ready = [&] {
    fs::create_directories(dir);
    const std::string from = parscale::fuzz::source_dir() + "/tests/fixtures/models/qwen2_tied_f32_sharded/";
    for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
      fs::copy_file(from + f, dir / f, fs::copy_options::overwrite_existing);
    return true;
  }();
  (void)ready;
  parscale::fuzz::write_file(dir / "model.safetensors.index.json", data, size);
  try {
    auto store = parscale::TensorStore::open_model_dir(dir.string());
    volatile size_t sink = store->tensors().size();
    (void)sink;
  } catch (const parscale::Error&) {
  }
  return 0;
}
