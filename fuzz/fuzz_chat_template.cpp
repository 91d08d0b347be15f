// Chat-template parsing + rendering: the input is the template; rendered for a fixed conversation
// with and without the generation prompt. Output or parscale::Error, within the resource limits.
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz_util.h"
#include "tokenizer/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string tmpl(reinterpret_cast<const char*>(data), size);
  static const std::vector<parscale::ChatMessage> messages = {
      {"system", "You are helpful."}, {"user", "Hi {{ there }} \xc3\xa9"}, {"assistant", "Hello!"}, {"user", "2 + 2?"}};
  for (bool gen : {false, true}) {
    parscale::ChatTemplateContext ctx;
    ctx.bos_token = "<s>";
    ctx.eos_token = "</s>";
    ctx.add_generation_prompt = gen;
    ctx.flags["enable_thinking"] = gen;
    try {
      (void)parscale::render_chat_template(tmpl, messages, ctx);
    } catch (const parscale::Error&) {
    }
  }
  return 0;
}
