#include "server/api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "core/error.h"

namespace parscale::server {

using json = nlohmann::json;

namespace {

constexpr int64_t kMaxN = 128;            // choices per prompt
constexpr int64_t kMaxChoices = 1024;     // prompts x n
constexpr int kMaxLogprobs = 20;
constexpr size_t kMaxStops = 4;

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

ApiError wrong_type(const std::string& param, const std::string& expected, const json& v) {
  return invalid(param, "'" + param + "' must be " + expected + ", got " + type_name(v), "invalid_type");
}

const json* field(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// An integer (a float with an exact integral value is accepted, as JSON does not distinguish).
std::optional<int64_t> get_int(const json& obj, const char* name) {
  const json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (v->is_number_unsigned()) {
    uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw invalid(name, std::string("'") + name + "' is out of range: " + v->dump());
    return static_cast<int64_t>(u);
  }
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e18)
      throw invalid(name, std::string("'") + name + "' must be an integer, got " + v->dump(), "invalid_type");
    return static_cast<int64_t>(d);
  }
  throw wrong_type(name, "an integer", *v);
}

std::optional<double> get_number(const json& obj, const char* name) {
  const json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw wrong_type(name, "a number", *v);
  double d = v->get<double>();
  if (!std::isfinite(d)) throw invalid(name, std::string("'") + name + "' must be finite");
  return d;
}

std::optional<bool> get_bool(const json& obj, const char* name) {
  const json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) throw wrong_type(name, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& obj, const char* name) {
  const json* v = field(obj, name);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw wrong_type(name, "a string", *v);
  return v->get<std::string>();
}

// The shortest decimal that reads back as the same float, as a double: JSON shows -0.25 or 0.1
// rather than the float's binary expansion (0.10000000149011612).
double short_float(float v) {
  if (!std::isfinite(v)) return v;
  char buf[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, static_cast<double>(v));
    if (std::strtof(buf, nullptr) == v) break;
  }
  return std::strtod(buf, nullptr);
}

json float_list(const std::vector<float>& v) {
  json a = json::array();
  for (float x : v) a.push_back(short_float(x));
  return a;
}

std::string fmt(double d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", d);
  return buf;
}

void check_range(const char* name, double v, double lo, double hi, bool lo_open = false) {
  if (v < lo || v > hi || (lo_open && v == lo)) {
    throw invalid(name, std::string("'") + name + "' must be in " + (lo_open ? "(" : "[") + fmt(lo) + ", " + fmt(hi) +
                            "], got " + fmt(v));
  }
}

constexpr int kMaxJsonDepth = 64;  // no request needs more; deep nesting only costs memory

json parse_body(std::string_view body) {
  json j;
  try {
    j = json::parse(body.begin(), body.end(), [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxJsonDepth)
        throw ApiError(400, "invalid_request_error", "the JSON body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels", "",
                       "invalid_json");
      return true;
    });
  } catch (const json::exception& e) {
    throw ApiError(400, "invalid_request_error", std::string("invalid JSON body: ") + e.what(), "", "invalid_json");
  }
  if (!j.is_object()) throw ApiError(400, "invalid_request_error", "the request body must be a JSON object, got " + type_name(j), "", "invalid_json");
  return j;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::vector<int32_t> ids_from_json(const json& arr, const std::string& param, int64_t vocab) {
  std::vector<int32_t> ids;
  ids.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& v = arr[i];
    std::string p = param + "[" + std::to_string(i) + "]";
    if (!v.is_number_integer()) throw invalid(p, "'" + p + "' must be a token id (an integer), got " + type_name(v), "invalid_type");
    if (v.is_number_unsigned() ? v.get<uint64_t>() >= static_cast<uint64_t>(vocab) : (v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab))
      throw invalid(p, "token id " + v.dump() + " at '" + p + "' is outside the vocabulary [0, " + std::to_string(vocab) + ")");
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

// The fields completions and chat share. `prompt_max` is the longest prompt (context check).
void parse_common(const json& j, const ParseContext& ctx, GenerationRequest& r, bool chat) {
  if (auto v = get_number(j, "temperature")) {
    check_range("temperature", *v, 0.0, 2.0);
    r.sampling.temperature = static_cast<float>(*v);
  }
  if (auto v = get_number(j, "top_p")) {
    check_range("top_p", *v, 0.0, 1.0, /*lo_open=*/true);
    r.sampling.top_p = static_cast<float>(*v);
  }
  if (auto v = get_int(j, "top_k")) {
    if (*v < -1) throw invalid("top_k", "'top_k' must be >= 0 (or -1 for off), got " + std::to_string(*v));
    r.sampling.top_k = *v < 0 ? 0 : *v;
  }
  if (auto v = get_number(j, "min_p")) {
    check_range("min_p", *v, 0.0, 1.0);
    r.sampling.min_p = static_cast<float>(*v);
  }
  if (auto v = get_number(j, "repetition_penalty")) {
    if (*v <= 0.0) throw invalid("repetition_penalty", "'repetition_penalty' must be > 0, got " + fmt(*v));
    r.sampling.repetition_penalty = static_cast<float>(*v);
  }
  if (auto v = get_number(j, "presence_penalty")) {
    check_range("presence_penalty", *v, -2.0, 2.0);
    r.sampling.presence_penalty = static_cast<float>(*v);
  }
  if (auto v = get_number(j, "frequency_penalty")) {
    check_range("frequency_penalty", *v, -2.0, 2.0);
    r.sampling.frequency_penalty = static_cast<float>(*v);
  }
  if (auto v = get_int(j, "seed")) {
    r.sampling.seed = static_cast<uint64_t>(*v);
  } else {
    std::random_device rd;
    r.sampling.seed = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  if (const json* s = field(j, "stop")) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > kMaxStops) throw invalid("stop", "'stop' has " + std::to_string(s->size()) + " strings; at most 4 are allowed");
      for (size_t i = 0; i < s->size(); ++i) {
        if (!(*s)[i].is_string()) throw wrong_type("stop[" + std::to_string(i) + "]", "a string", (*s)[i]);
        r.stop.push_back((*s)[i].get<std::string>());
      }
    } else {
      throw wrong_type("stop", "a string or an array of strings", *s);
    }
    r.stop.erase(std::remove(r.stop.begin(), r.stop.end(), std::string()), r.stop.end());
  }
  r.stream = get_bool(j, "stream").value_or(false);
  if (const json* so = field(j, "stream_options")) {
    if (!so->is_object()) throw wrong_type("stream_options", "an object", *so);
    if (auto v = get_bool(*so, "include_usage")) r.include_usage = *v;
  }
  if (auto v = get_int(j, "n")) {
    if (*v < 1 || *v > kMaxN) throw invalid("n", "'n' must be in [1, " + std::to_string(kMaxN) + "], got " + std::to_string(*v));
    r.n = *v;
  }
  if (auto v = get_int(j, "best_of")) {
    if (*v != r.n) throw ApiError(400, "invalid_request_error", "'best_of' other than 'n' is not supported", "best_of", "unsupported_value");
  }
  if (const json* lb = field(j, "logit_bias")) {
    if (!lb->is_object()) throw wrong_type("logit_bias", "an object", *lb);
    if (!lb->empty()) throw ApiError(400, "invalid_request_error", "'logit_bias' is not supported", "logit_bias", "unsupported_value");
  }
  get_string(j, "user");  // accepted, unused (type-checked)
  r.ignore_eos = get_bool(j, "ignore_eos").value_or(false);
  r.stream_weights = get_bool(j, "parscale_stream_weights").value_or(false);
  (void)chat;
  (void)ctx;
}

const ModelEntry& resolve_model(const json& j, const ParseContext& ctx) {
  std::optional<std::string> model = get_string(j, "model");
  std::optional<int64_t> streams = get_int(j, "parscale_streams");
  return ctx.catalog->resolve(model, streams);
}

// `max_tokens_param`: the field the request's limit came from (named by the error).
void check_context(GenerationRequest& r, const ParseContext& ctx, bool max_tokens_given, const char* max_tokens_param) {
  size_t longest = 0;
  for (const auto& p : r.prompts) longest = std::max(longest, p.size());
  const int64_t L = static_cast<int64_t>(longest);
  if (L > ctx.max_context)
    throw ApiError(400, "invalid_request_error",
                   "the prompt has " + std::to_string(L) + " tokens; the model's context is " + std::to_string(ctx.max_context),
                   r.chat ? "messages" : "prompt", "context_length_exceeded");
  if (!max_tokens_given && r.chat) r.max_tokens = ctx.max_context - L;
  if (r.max_tokens > ctx.max_context - L)  // not L + max_tokens: max_tokens may be near INT64_MAX
    throw ApiError(400, "invalid_request_error",
                   "the prompt (" + std::to_string(L) + " tokens) plus " + max_tokens_param + " (" + std::to_string(r.max_tokens) +
                       ") exceeds the model's context of " + std::to_string(ctx.max_context) + " tokens",
                   max_tokens_param, "context_length_exceeded");
  if (r.prompts.size() * static_cast<size_t>(r.n) > static_cast<size_t>(kMaxChoices))
    throw invalid("n", "prompts x n = " + std::to_string(r.prompts.size() * r.n) + " choices; at most " + std::to_string(kMaxChoices) + " per request");
}

std::vector<int32_t> encode_prompt(const ParseContext& ctx, const std::string& text, const std::string& param) {
  std::vector<int32_t> ids = ctx.tokenizer->encode(text, /*parse_special=*/true);
  if (ids.empty()) throw invalid(param, "'" + param + "' encodes to no tokens");
  for (int32_t id : ids)
    if (id < 0 || id >= ctx.vocab_size) throw invalid(param, "'" + param + "' encodes to token id " + std::to_string(id) + ", outside the model's vocabulary");
  return ids;
}

}  // namespace

ApiError invalid(const std::string& param, const std::string& message, const std::string& code) {
  return ApiError(400, "invalid_request_error", message, param, code);
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string error_body(const ApiError& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return dump_json(json{{"error", err}});
}

// ---------------------------------------------------------------------------------------------
ModelCatalog::ModelCatalog(std::string name, const std::vector<EngineModel>& models) : name_(std::move(name)) {
  check(!models.empty(), "serve: the engine has no models");
  check(!name_.empty() && name_.find(':') == std::string::npos,
        "serve: model name '" + name_ + "' must be non-empty and without ':'");
  for (size_t i = 0; i < models.size(); ++i) {
    ModelEntry e;
    e.engine_index = static_cast<int64_t>(i);
    e.streams = models[i].streams;
    e.prefix_tokens = models[i].prefix_tokens;
    e.adapter = models[i].adapter_name;
    e.id = i == 0 ? name_ : name_ + ":p" + std::to_string(e.streams);
    for (size_t k = 1; k < i; ++k)
      check(models[k].streams != models[i].streams,
            "serve: adapters '" + models[k].adapter_name + "' and '" + models[i].adapter_name + "' both have P = " +
                std::to_string(models[i].streams) + "; their model ids would collide");
    entries_.push_back(e);
  }
}

const ModelEntry& ModelCatalog::resolve(const std::optional<std::string>& model,
                                        const std::optional<int64_t>& streams) const {
  const ModelEntry* by_id = nullptr;
  if (model) {
    for (const auto& e : entries_)
      if (e.id == *model) by_id = &e;
    if (!by_id && *model == name_ + ":p" + std::to_string(entries_[0].streams)) by_id = &entries_[0];
    if (!by_id) {
      std::string known;
      for (const auto& e : entries_) known += (known.empty() ? "" : ", ") + e.id;
      throw ApiError(404, "invalid_request_error", "the model '" + *model + "' does not exist; this server has: " + known,
                     "model", "model_not_found");
    }
  }
  if (!streams) return by_id ? *by_id : entries_[0];
  if (by_id && *model == name_) by_id = nullptr;  // NAME + parscale_streams: NAME at that P
  if (by_id && by_id->streams != *streams)
    throw invalid("parscale_streams", "'parscale_streams' is " + std::to_string(*streams) + " but the model '" + *model +
                                          "' runs " + std::to_string(by_id->streams) + " streams");
  if (by_id) return *by_id;
  for (const auto& e : entries_)
    if (e.streams == *streams) return e;
  std::string have;
  for (const auto& e : entries_) have += (have.empty() ? "" : ", ") + std::to_string(e.streams);
  throw invalid("parscale_streams", "no model with parscale_streams = " + std::to_string(*streams) + "; available: " + have);
}

json ModelCatalog::list_json(int64_t created) const {
  json data = json::array();
  for (const auto& e : entries_) {
    data.push_back({{"id", e.id},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "parscale"},
                    {"parscale", {{"streams", e.streams}, {"prefix_tokens", e.prefix_tokens}, {"adapter", e.adapter}}}});
  }
  return {{"object", "list"}, {"data", data}};
}

// ---------------------------------------------------------------------------------------------
EngineRequest GenerationRequest::engine_request(size_t prompt, int64_t choice) const {
  EngineRequest e;
  e.model = model->engine_index;
  e.prompt = prompts.at(prompt);
  e.max_tokens = max_tokens;
  e.sampling = sampling;
  if (choice > 0) e.sampling.seed = splitmix64(sampling.seed ^ splitmix64(static_cast<uint64_t>(choice)));
  e.eos_ids = eos_ids;
  e.ignore_eos = ignore_eos;
  e.top_logprobs = logprobs;
  e.prompt_logprobs = echo && logprobs >= 0;
  e.stream_weights = stream_weights && model->streams > 1;
  return e;
}

GenerationRequest parse_completion_request(std::string_view body, const ParseContext& ctx) {
  json j = parse_body(body);
  GenerationRequest r;
  r.chat = false;
  r.model = &resolve_model(j, ctx);
  r.eos_ids = ctx.eos_ids;
  const json* p = field(j, "prompt");
  if (!p) throw invalid("prompt", "'prompt' is required", "missing_required_parameter");
  if (p->is_string()) {
    r.prompts.push_back(encode_prompt(ctx, p->get<std::string>(), "prompt"));
    r.prompt_texts.push_back(p->get<std::string>());
  } else if (p->is_array()) {
    if (p->empty()) throw invalid("prompt", "'prompt' is an empty list");
    if ((*p)[0].is_number()) {  // one prompt of token ids
      r.prompts.push_back(ids_from_json(*p, "prompt", ctx.vocab_size));
    } else {
      if (p->size() > static_cast<size_t>(kMaxChoices))
        throw invalid("prompt", "'prompt' has " + std::to_string(p->size()) + " prompts; at most " + std::to_string(kMaxChoices));
      for (size_t i = 0; i < p->size(); ++i) {
        const json& e = (*p)[i];
        std::string name = "prompt[" + std::to_string(i) + "]";
        if (e.is_string()) {
          r.prompts.push_back(encode_prompt(ctx, e.get<std::string>(), name));
          r.prompt_texts.push_back(e.get<std::string>());
          continue;
        }
        if (!e.is_array()) throw wrong_type(name, "a string or a list of token ids", e);
        if (e.empty()) throw invalid(name, "'" + name + "' is an empty list of token ids");
        r.prompts.push_back(ids_from_json(e, name, ctx.vocab_size));
      }
    }
    r.prompt_texts.resize(r.prompts.size());
    for (size_t i = 0; i < r.prompts.size(); ++i)
      if (r.prompt_texts[i].empty()) r.prompt_texts[i] = ctx.tokenizer->decode(r.prompts[i]);
  } else {
    throw wrong_type("prompt", "a string, a list of token ids or a list of either", *p);
  }
  if (auto s = get_string(j, "suffix"); s && !s->empty())
    throw ApiError(400, "invalid_request_error", "'suffix' is not supported", "suffix", "unsupported_value");
  auto mt = get_int(j, "max_tokens");
  if (mt) {
    if (*mt < 0) throw invalid("max_tokens", "'max_tokens' must be >= 0, got " + std::to_string(*mt));
    r.max_tokens = *mt;
  }
  if (auto lp = get_int(j, "logprobs")) {
    if (*lp < 0 || *lp > kMaxLogprobs) throw invalid("logprobs", "'logprobs' must be in [0, 20], got " + std::to_string(*lp));
    r.logprobs = static_cast<int>(*lp);
  }
  r.echo = get_bool(j, "echo").value_or(false);
  parse_common(j, ctx, r, false);
  check_context(r, ctx, mt.has_value(), "max_tokens");
  return r;
}

GenerationRequest parse_chat_request(std::string_view body, const ParseContext& ctx) {
  json j = parse_body(body);
  GenerationRequest r;
  r.chat = true;
  r.model = &resolve_model(j, ctx);
  r.eos_ids = ctx.eos_ids;
  const json* m = field(j, "messages");
  if (!m) throw invalid("messages", "'messages' is required", "missing_required_parameter");
  if (!m->is_array()) throw wrong_type("messages", "an array of messages", *m);
  if (m->empty()) throw invalid("messages", "'messages' is empty");
  std::vector<ChatMessage> msgs;
  for (size_t i = 0; i < m->size(); ++i) {
    const json& e = (*m)[i];
    std::string name = "messages[" + std::to_string(i) + "]";
    if (!e.is_object()) throw wrong_type(name, "an object", e);
    const json* role = field(e, "role");
    if (!role) throw invalid(name + ".role", "'" + name + ".role' is required", "missing_required_parameter");
    if (!role->is_string()) throw wrong_type(name + ".role", "a string", *role);
    std::string rs = role->get<std::string>();
    if (rs == "developer") rs = "system";
    if (rs != "system" && rs != "user" && rs != "assistant" && rs != "tool")
      throw invalid(name + ".role", "'" + name + ".role' must be system, developer, user, assistant or tool, got '" + rs + "'");
    std::string content;
    const json* c = field(e, "content");
    if (!c) {
      if (rs != "assistant") throw invalid(name + ".content", "'" + name + ".content' is required", "missing_required_parameter");
    } else if (c->is_string()) {
      content = c->get<std::string>();
    } else if (c->is_array()) {
      for (size_t k = 0; k < c->size(); ++k) {
        const json& part = (*c)[k];
        std::string pn = name + ".content[" + std::to_string(k) + "]";
        if (!part.is_object()) throw wrong_type(pn, "an object", part);
        auto type = get_string(part, "type");
        if (type != "text")
          throw ApiError(400, "invalid_request_error", "'" + pn + ".type' must be \"text\" (only text is supported)", pn + ".type", "unsupported_value");
        auto text = get_string(part, "text");
        if (!text) throw invalid(pn + ".text", "'" + pn + ".text' is required", "missing_required_parameter");
        content += *text;
      }
    } else {
      throw wrong_type(name + ".content", "a string or an array of content parts", *c);
    }
    msgs.push_back({rs, content});
  }
  if (const json* t = field(j, "tools"); t && !(t->is_array() && t->empty()))
    throw ApiError(400, "invalid_request_error", "'tools' is not supported", "tools", "unsupported_value");
  if (const json* rf = field(j, "response_format")) {
    if (!rf->is_object()) throw wrong_type("response_format", "an object", *rf);
    if (get_string(*rf, "type").value_or("text") != "text")
      throw ApiError(400, "invalid_request_error", "only response_format {\"type\": \"text\"} is supported", "response_format", "unsupported_value");
  }
  if (!ctx.tokenizer->has_chat_template())
    throw invalid("messages", "the model has no chat template (tokenizer_config.json); use /v1/completions");
  std::string text;
  try {
    text = ctx.tokenizer->apply_chat_template(msgs, /*add_generation_prompt=*/true);
  } catch (const Error& e) {
    throw invalid("messages", std::string("the chat template failed on these messages: ") + e.what());
  }
  r.prompts.push_back(encode_prompt(ctx, text, "messages"));
  r.prompt_texts.push_back(text);
  auto mt = get_int(j, "max_completion_tokens");
  const char* mt_name = "max_completion_tokens";
  if (!mt) {
    mt = get_int(j, "max_tokens");
    mt_name = "max_tokens";
  }
  if (mt) {
    if (*mt < 0) throw invalid(mt_name, std::string("'") + mt_name + "' must be >= 0, got " + std::to_string(*mt));
    r.max_tokens = *mt;
  }
  bool lp = get_bool(j, "logprobs").value_or(false);
  auto top = get_int(j, "top_logprobs");
  if (top) {
    if (*top < 0 || *top > kMaxLogprobs) throw invalid("top_logprobs", "'top_logprobs' must be in [0, 20], got " + std::to_string(*top));
    if (!lp) throw invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  }
  r.logprobs = lp ? static_cast<int>(top.value_or(0)) : -1;
  parse_common(j, ctx, r, true);
  check_context(r, ctx, mt.has_value(), mt_name);
  return r;
}

// ---------------------------------------------------------------------------------------------
StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  held_.append(text);
  size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix of held_ that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stops_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (held_.compare(held_.size() - len, len, s, 0, len) == 0) {
        keep = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out;
  out.swap(held_);
  return stopped_ ? std::string() : out;
}

// ---------------------------------------------------------------------------------------------
ChoiceTracker::ChoiceTracker(const GenerationRequest& req, const Tokenizer& tokenizer, size_t prompt_index)
    : req_(req), tok_(tokenizer), prompt_index_(prompt_index), dec_(tokenizer, /*skip_special=*/true), stop_(req.stop) {
  offset_ = static_cast<int64_t>(req.prompt_texts.at(prompt_index).size());
}

TokenReport ChoiceTracker::report(int32_t id, std::optional<float> logprob, const std::vector<TokenLogprob>& top) {
  TokenReport t;
  t.id = id;
  t.piece = tok_.token_bytes(id);
  t.logprob = logprob;
  for (const auto& a : top) t.top.emplace_back(tok_.token_bytes(a.id), a.logprob);
  return t;
}

std::string ChoiceTracker::release(const std::string& decoded) {
  decoded_ += static_cast<int64_t>(decoded.size());
  std::string out = stop_.push(decoded);
  released_ += static_cast<int64_t>(out.size());
  return out;
}

void ChoiceTracker::take_tokens(ChoiceDelta& d, bool all) {
  while (!pending_.empty() && (all || pending_.front().first < released_)) {
    d.tokens.push_back(std::move(pending_.front().second));
    pending_.pop_front();
  }
  if (stop_.stopped()) pending_.clear();  // they start at or after the stop string: never reported
}

ChoiceDelta ChoiceTracker::on_event(const EngineEvent& e) {
  ChoiceDelta d;
  if (done_) return d;
  const bool want_tokens = req_.logprobs >= 0 || req_.stream_weights;
  if (req_.echo && !echo_sent_) {
    echo_sent_ = true;
    d.text = req_.prompt_texts[prompt_index_];
    if (req_.logprobs >= 0 && e.kind == EngineEvent::Kind::PromptLogprobs) {
      const auto& ids = req_.prompts[prompt_index_];
      int64_t off = 0;
      for (size_t i = 0; i < ids.size(); ++i) {
        TokenReport t = i == 0 ? report(ids[0], std::nullopt, {})
                               : (i - 1 < e.prompt.size() ? report(ids[i], e.prompt[i - 1].logprob, e.prompt[i - 1].top)
                                                          : report(ids[i], std::nullopt, {}));
        t.text_offset = off;
        off += static_cast<int64_t>(t.piece.size());
        d.tokens.push_back(t);
      }
    }
  }
  switch (e.kind) {
    case EngineEvent::Kind::PromptLogprobs:
      break;
    case EngineEvent::Kind::Token: {
      ++completion_tokens_;
      const bool is_eos = !req_.ignore_eos && std::find(req_.eos_ids.begin(), req_.eos_ids.end(), e.token) != req_.eos_ids.end();
      if (is_eos) break;  // the end-of-sequence token is neither text nor a reported token
      if (want_tokens) {
        TokenReport t = report(e.token, e.logprob, e.top);
        t.text_offset = offset_;
        t.stream_weights = e.stream_weights;
        pending_.push_back({decoded_, std::move(t)});
      }
      offset_ += static_cast<int64_t>(tok_.token_bytes(e.token).size());
      d.text += release(dec_.push(e.token));
      if (stop_.stopped()) {
        done_ = true;
        d.finished = true;
        d.finish_reason = "stop";
      }
      take_tokens(d, false);
      break;
    }
    case EngineEvent::Kind::Finished: {
      d.text += release(dec_.flush());
      const std::string rest = stop_.flush();
      released_ += static_cast<int64_t>(rest.size());
      d.text += rest;
      take_tokens(d, !stop_.stopped());
      done_ = true;
      d.finished = true;
      if (stop_.stopped()) {
        d.finish_reason = "stop";
      } else {
        switch (e.finish) {
          case FinishReason::Stop: d.finish_reason = "stop"; break;
          case FinishReason::Length:
          case FinishReason::ContextLimit: d.finish_reason = "length"; break;
          case FinishReason::Cancelled: d.finish_reason = "cancelled"; break;
          case FinishReason::Error: d.finish_reason = "error"; break;
        }
      }
      break;
    }
  }
  text_ += d.text;
  if (req_.logprobs >= 0)
    for (const auto& t : d.tokens) tokens_.push_back(t);
  if (d.finished) finish_reason_ = d.finish_reason;
  return d;
}

// ---------------------------------------------------------------------------------------------
json Usage::json() const {
  return nlohmann::json{{"prompt_tokens", prompt_tokens},
                        {"completion_tokens", completion_tokens},
                        {"total_tokens", prompt_tokens + completion_tokens}};
}

json completion_logprobs_json(const std::vector<TokenReport>& tokens) {
  json toks = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const auto& t : tokens) {
    toks.push_back(t.piece);
    if (t.logprob) {
      lps.push_back(short_float(*t.logprob));
      json top = json::object();
      for (const auto& [piece, lp] : t.top)
        if (!top.contains(piece)) top[piece] = short_float(lp);
      tops.push_back(top);
    } else {
      lps.push_back(nullptr);
      tops.push_back(nullptr);
    }
    offs.push_back(t.text_offset);
  }
  return {{"tokens", toks}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

namespace {
json bytes_json(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(static_cast<int>(c));
  return b;
}
}  // namespace

json chat_logprobs_json(const std::vector<TokenReport>& tokens) {
  json content = json::array();
  for (const auto& t : tokens) {
    json top = json::array();
    for (const auto& [piece, lp] : t.top) top.push_back({{"token", piece}, {"logprob", short_float(lp)}, {"bytes", bytes_json(piece)}});
    content.push_back({{"token", t.piece}, {"logprob", short_float(t.logprob.value_or(0.0f))}, {"bytes", bytes_json(t.piece)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json completion_response(const GenerationRequest& req, const std::string& id, int64_t created,
                         const std::vector<ChoiceResult>& choices, const Usage& usage) {
  json cs = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const auto& c = choices[i];
    cs.push_back({{"index", i},
                  {"text", c.text},
                  {"logprobs", req.logprobs >= 0 ? completion_logprobs_json(c.tokens) : json(nullptr)},
                  {"finish_reason", c.finish_reason}});
  }
  return {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", req.model->id},
          {"choices", cs}, {"usage", usage.json()}};
}

json chat_response(const GenerationRequest& req, const std::string& id, int64_t created,
                   const std::vector<ChoiceResult>& choices, const Usage& usage) {
  json cs = json::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const auto& c = choices[i];
    cs.push_back({{"index", i},
                  {"message", {{"role", "assistant"}, {"content", c.text}}},
                  {"logprobs", req.logprobs >= 0 ? chat_logprobs_json(c.tokens) : json(nullptr)},
                  {"finish_reason", c.finish_reason}});
  }
  return {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", req.model->id},
          {"choices", cs}, {"usage", usage.json()}};
}

json stream_chunk(const GenerationRequest& req, const std::string& id, int64_t created, int64_t index,
                  const ChoiceDelta& delta, bool first) {
  json choice;
  choice["index"] = index;
  if (req.chat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    if (!delta.text.empty() || (first && !delta.finished)) d["content"] = delta.text;
    choice["delta"] = d;
  } else {
    choice["text"] = delta.text;
  }
  if (req.logprobs >= 0 && !delta.tokens.empty()) {
    choice["logprobs"] = req.chat ? chat_logprobs_json(delta.tokens) : completion_logprobs_json(delta.tokens);
  } else {
    choice["logprobs"] = nullptr;
  }
  choice["finish_reason"] = delta.finished ? json(delta.finish_reason) : json(nullptr);
  if (req.stream_weights && req.model->streams > 1) {
    json w = json::array(), pieces = json::array();
    for (const auto& t : delta.tokens)
      if (!t.stream_weights.empty()) {  // generated tokens (echoed prompt tokens have none)
        w.push_back(float_list(t.stream_weights));
        pieces.push_back(t.piece);
      }
    if (!w.empty()) choice["parscale"] = {{"tokens", pieces}, {"stream_weights", w}};
  }
  json chunk = {{"id", id},
                {"object", req.chat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", req.model->id},
                {"choices", json::array({choice})}};
  if (req.include_usage) chunk["usage"] = nullptr;
  return chunk;
}

json usage_chunk(const GenerationRequest& req, const std::string& id, int64_t created, const Usage& usage) {
  return {{"id", id},
          {"object", req.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", req.model->id},
          {"choices", json::array()},
          {"usage", usage.json()}};
}

std::string sse_event(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

}  // namespace parscale::server
