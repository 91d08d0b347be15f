// The OpenAI-compatible HTTP API without sockets: request parsing and validation (JSON ->
// typed GenerationRequest, or an ApiError with the HTTP status and an OpenAI-shaped body),
// model ids, stop-string matching on streamed text, and response / chunk formatting.
//
// Every function here is pure (no I/O, no engine): the HTTP layer (server.h) feeds engine
// events into a ChoiceTracker per choice and asks this file for the JSON it sends.
#pragma once
#include <cstdint>
#include <deque>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace parscale::server {

// A request the server refuses. `status` is the HTTP status (400, 401, 404, 413, 429, 503);
// the body is {"error": {"message", "type", "param", "code"}} (param / code null when empty).
struct ApiError : std::exception {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the offending field, e.g. "max_tokens" or "messages[2].content"
  std::string code;   // e.g. "invalid_value", "invalid_type", "model_not_found"
  ApiError(int status, std::string type, std::string message, std::string param = "", std::string code = "")
      : status(status), type(std::move(type)), message(std::move(message)), param(std::move(param)),
        code(std::move(code)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

// 400 invalid_request_error naming `param`.
ApiError invalid(const std::string& param, const std::string& message, const std::string& code = "invalid_value");
std::string error_body(const ApiError& e);

// JSON text of `j` with invalid UTF-8 replaced by U+FFFD (token pieces may split a character).
std::string dump_json(const nlohmann::json& j);

// ---------------------------------------------------------------------------------------------
// Model ids. Engine model 0 (the folder's own P) is NAME; every other engine model of P streams
// is NAME:pP. NAME:pP also names model 0 when P is its own P (not listed, accepted).
struct ModelEntry {
  std::string id;
  int64_t engine_index = 0;
  int64_t streams = 1;
  int64_t prefix_tokens = 0;
  std::string adapter;  // file name of the adapter, "" for the folder's own
};

class ModelCatalog {
 public:
  // Throws parscale::Error when two engine models have the same P (their ids would collide).
  ModelCatalog(std::string name, const std::vector<EngineModel>& models);
  const std::string& name() const { return name_; }
  const std::vector<ModelEntry>& entries() const { return entries_; }
  // `model`: the request's "model" (nullopt: absent -> NAME); `streams`: "parscale_streams"
  // (nullopt: absent). NAME + streams selects NAME at that P. Throws ApiError 404 for an unknown
  // id, 400 for a P no model has or one
  // that contradicts the id.
  const ModelEntry& resolve(const std::optional<std::string>& model, const std::optional<int64_t>& streams) const;
  // The /v1/models body.
  nlohmann::json list_json(int64_t created) const;

 private:
  std::string name_;
  std::vector<ModelEntry> entries_;
};

// ---------------------------------------------------------------------------------------------
// Parsed requests.
struct ParseContext {
  const ModelCatalog* catalog = nullptr;
  const Tokenizer* tokenizer = nullptr;
  int64_t vocab_size = 0;   // ids must be < this
  int64_t max_context = 0;  // prompt + max_tokens must be <= this (max_position_embeddings)
  std::vector<int64_t> eos_ids;  // model eos + tokenizer end-of-turn ids
};

struct GenerationRequest {
  bool chat = false;
  const ModelEntry* model = nullptr;
  // One entry per prompt (chat: exactly one). prompt_texts[i] is the prompt as text (echo,
  // text offsets): the given string, or the decoded ids.
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::string> prompt_texts;
  int64_t max_tokens = 16;
  SamplingParams sampling;       // seed: the request's, or a random one when absent
  std::vector<std::string> stop; // non-empty strings, at most 4
  bool stream = false;
  bool include_usage = false;    // stream_options.include_usage
  int64_t n = 1;
  // Completions: "logprobs" (alternatives per token, -1 = none). Chat: "top_logprobs" when
  // "logprobs" is true (0 when top_logprobs is absent), else -1.
  int logprobs = -1;
  bool echo = false;             // completions only
  bool ignore_eos = false;
  bool stream_weights = false;   // extension "parscale_stream_weights"
  std::vector<int64_t> eos_ids;

  // The engine request of choice `choice` (0..n-1) of prompt `prompt`. Its seed is the request
  // seed for choice 0 and a SplitMix64 mix of (seed, choice) for the others, so choice i of a
  // request is reproducible and n = 1 uses the seed as given.
  EngineRequest engine_request(size_t prompt, int64_t choice) const;
};

// Parse and validate a POST /v1/completions or /v1/chat/completions body (the raw bytes).
// Throws ApiError (400 / 404) naming the field.
GenerationRequest parse_completion_request(std::string_view body, const ParseContext& ctx);
GenerationRequest parse_chat_request(std::string_view body, const ParseContext& ctx);

// ---------------------------------------------------------------------------------------------
// Stop strings on streamed text: push() returns the text that can be sent now. Text that could
// be the beginning of a stop string is held back until it is decided; once a stop string appears,
// stopped() is true and the returned text ends right before it (the stop string is never sent).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops = {});
  std::string push(std::string_view text);
  std::string flush();  // the held-back text (call when the request ends without a stop)
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// One generated (or echoed prompt) token as the API reports it.
struct TokenReport {
  int32_t id = -1;
  std::string piece;                 // the token's bytes (may be part of a UTF-8 character)
  std::optional<float> logprob;      // none for the first prompt token
  std::vector<std::pair<std::string, float>> top;  // alternatives (piece, logprob), descending
  int64_t text_offset = 0;           // byte offset of the piece in prompt text (echo) + completion
  std::vector<float> stream_weights; // [P], when asked
};

// What one engine event adds to a choice's output.
struct ChoiceDelta {
  std::string text;                  // text safe to send (stop strings held back / removed)
  std::vector<TokenReport> tokens;   // tokens the event brought (for logprobs / stream weights)
  bool finished = false;
  std::string finish_reason;         // "stop" | "length" when finished
};

// Follows one choice: decodes tokens incrementally, applies stop strings, collects logprobs.
// After a stop string, the caller cancels the engine request; later events are ignored.
//
// Reported tokens (logprobs, stream weights) describe the returned text only: a generated token
// is reported once some text at or after its start has been released (so never ahead of text
// the stop matcher holds back), and when a stop string ends the choice, the tokens whose text
// starts at or after the stop string's first byte are never reported. A token that straddles
// the stop string (its text starts before it) is reported, whole. A token's start is the length
// of the decoded completion text before it (a token with no text of its own, e.g. the first bytes
// of a UTF-8 character, starts where the next text does). completion_tokens() still counts every
// generated token, those that completed the stop string and the eos token included: they were
// generated (and computed).
class ChoiceTracker {
 public:
  ChoiceTracker(const GenerationRequest& req, const Tokenizer& tokenizer, size_t prompt_index);
  ChoiceDelta on_event(const EngineEvent& e);
  bool done() const { return done_; }
  bool stopped_by_string() const { return stop_.stopped(); }
  // Totals so far.
  const std::string& text() const { return text_; }
  const std::vector<TokenReport>& tokens() const { return tokens_; }  // echoed prompt + generated
  const std::string& finish_reason() const { return finish_reason_; }
  int64_t completion_tokens() const { return completion_tokens_; }

 private:
  TokenReport report(int32_t id, std::optional<float> logprob, const std::vector<TokenLogprob>& top);
  // Passes decoded text through the stop matcher; returns what may be sent.
  std::string release(const std::string& decoded);
  // Moves the pending tokens that start before the released text's end (all: every one) to d.
  void take_tokens(ChoiceDelta& d, bool all);
  const GenerationRequest& req_;
  const Tokenizer& tok_;
  size_t prompt_index_;
  StreamDecoder dec_;
  StopMatcher stop_;
  std::string text_;  // everything sent so far (echoed prompt text included)
  std::vector<TokenReport> tokens_;
  int64_t offset_ = 0;  // running byte offset for text_offset
  int64_t decoded_ = 0;   // bytes of completion text the decoder produced so far
  int64_t released_ = 0;  // bytes of it the stop matcher released (sent)
  std::deque<std::pair<int64_t, TokenReport>> pending_;  // (start in decoded text, token) not yet reported
  int64_t completion_tokens_ = 0;
  bool done_ = false;
  bool echo_sent_ = false;
  std::string finish_reason_;
};

// ---------------------------------------------------------------------------------------------
// Response formatting. `id` e.g. "cmpl-...", `created` Unix seconds.
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
  nlohmann::json json() const;
};

// The "logprobs" value of a completions choice ({tokens, token_logprobs, top_logprobs,
// text_offset}) or of a chat choice ({content: [{token, logprob, bytes, top_logprobs}]}).
nlohmann::json completion_logprobs_json(const std::vector<TokenReport>& tokens);
nlohmann::json chat_logprobs_json(const std::vector<TokenReport>& tokens);

struct ChoiceResult {
  std::string text;
  std::vector<TokenReport> tokens;
  std::string finish_reason;
};
// Whole (non-streaming) responses.
nlohmann::json completion_response(const GenerationRequest& req, const std::string& id, int64_t created,
                                   const std::vector<ChoiceResult>& choices, const Usage& usage);
nlohmann::json chat_response(const GenerationRequest& req, const std::string& id, int64_t created,
                             const std::vector<ChoiceResult>& choices, const Usage& usage);

// One SSE chunk of choice `index`. first: the chat chunk carries {"role": "assistant"}.
// finish_reason: "" while running. Stream weights go into "parscale": {"stream_weights":
// [[w_0..w_P-1] per token]} when the request asked for them and the delta has tokens.
nlohmann::json stream_chunk(const GenerationRequest& req, const std::string& id, int64_t created, int64_t index,
                            const ChoiceDelta& delta, bool first);
// The final usage chunk (stream_options.include_usage): choices [] and usage.
nlohmann::json usage_chunk(const GenerationRequest& req, const std::string& id, int64_t created, const Usage& usage);
// "data: <json>\n\n"
std::string sse_event(const nlohmann::json& j);

}  // namespace parscale::server
