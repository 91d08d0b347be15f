// `parscale serve`'s request parsing without sockets: the input is the raw body of a POST, parsed
// as /v1/completions and as /v1/chat/completions (server/api.h) with the demo model's tokenizer,
// limits and catalog (its own P = 1 plus the P = 2 and P = 4 adapters), as the server has them.
// Each parse yields a request within those limits or throws server::ApiError with a 4xx status and
// a JSON error body; any other exception, crash or sanitizer report is a bug.
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "engine/engine.h"
#include "fuzz_util.h"
#include "server_demo.h"
#include "server/api.h"
#include "tokenizer/tokenizer.h"

namespace {

using parscale::server::ApiError;
using parscale::server::GenerationRequest;
using parscale::server::ParseContext;

// What the server relies on after a successful parse.
void check_request(const GenerationRequest& r, const ParseContext& ctx) {
  if (!r.model || r.prompts.empty() || r.prompts.size() != r.prompt_texts.size()) __builtin_trap();
  if (r.chat && r.prompts.size() != 1) __builtin_trap();
  if (r.n < 1 || r.n > 128 || r.prompts.size() * static_cast<size_t>(r.n) > 1024) __builtin_trap();
  if (r.max_tokens < 0 || r.stop.size() > 4 || r.logprobs < -1 || r.logprobs > 20) __builtin_trap();
  for (const auto& s : r.stop)
    if (s.empty()) __builtin_trap();
  for (size_t p = 0; p < r.prompts.size(); ++p) {
    const auto& ids = r.prompts[p];
    if (ids.empty() || static_cast<int64_t>(ids.size()) + r.max_tokens > ctx.max_context) __builtin_trap();
    for (int32_t id : ids)
      if (id < 0 || id >= ctx.vocab_size) __builtin_trap();
    for (int64_t c : {int64_t{0}, r.n - 1}) {
      const parscale::EngineRequest e = r.engine_request(p, c);
      if (e.prompt != ids || e.model != r.model->engine_index || e.max_tokens != r.max_tokens) __builtin_trap();
    }
  }
}

void check_error(const ApiError& e) {
  if (e.status < 400 || e.status > 499 || e.message.empty()) __builtin_trap();
  const nlohmann::json body = nlohmann::json::parse(parscale::server::error_body(e));  // throws (a bug) if not JSON
  if (!body.at("error").at("message").is_string()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const parscale::fuzz::ServerDemo& d = parscale::fuzz::server_demo();
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (bool chat : {false, true}) {
    try {
      const GenerationRequest r = chat ? parscale::server::parse_chat_request(body, d.ctx)
                                       : parscale::server::parse_completion_request(body, d.ctx);
      check_request(r, d.ctx);
    } catch (const ApiError& e) {
      check_error(e);
    }
  }
  return 0;
}
