// Token file (.bin) reader: tokens or parscale::Error.
#include "core/error.h"
#include "fuzz_util.h"
#include "train/data.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = parscale::fuzz::scratch_dir() / "tokens.bin";
  parscale::fuzz::write_file(path, data, size);
  try {
    const parscale::train::TokenFile f = parscale::train::read_token_file(path.string());
    for (int32_t id : f.tokens)
      if (id < 0) __builtin_trap();  // the reader refuses ids >= 2^31
  } catch (const parscale::Error&) {
  }
  return 0;
}
