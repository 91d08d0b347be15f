// tokenizer.json loading: a fuzzed tokenizer either loads (then encodes and decodes a fixed text
// without failing) or throws parscale::Error.
#include <string>

#include "core/error.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const parscale::Tokenizer t = parscale::Tokenizer::from_json_text(text, "");
    for (bool special : {true, false}) {
      const auto ids = t.encode("Hello, world! 123 \xc3\xa9t\xc3\xa9 <|im_end|>\n\tdef f(x):", special);
      (void)t.decode(ids);
      (void)t.decode(ids, true);
    }
  } catch (const parscale::Error&) {
  }
  return 0;
}
