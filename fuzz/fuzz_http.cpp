// `parscale serve`'s HTTP decisions without sockets (server/routes.h, what server.cpp runs for
// every request): method + path routing, the API key, the body limit and the body dispatch to the
// completions / chat parsers, with the demo model's catalog and limits.
//
// Input: "METHOD\nPATH\n" then header lines "Name: value\n" up to an empty line, then the body
// (missing parts are empty). Each input is served twice: without an API key and with one.
// Invariants (a trap when broken): every refusal is a 4xx (never a 5xx) whose body is
// OpenAI-shaped JSON ({"error": {"message", "type", "param", "code"}}); with a key, nothing but
// the open routes (GET / HEAD /health and the chat page's files, OPTIONS preflights) gets through
// without "Bearer <key>" (scheme in any case, spaces / tabs around the key), and a 401 only ever
// answers a request without it; an accepted route matches its method and path; a generation
// body over the limit is a 413; a parsed request is within the model's limits.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "server/api.h"
#include "server/routes.h"
#include "server_demo.h"

namespace {

using parscale::server::ApiError;
using parscale::server::Endpoint;
using parscale::server::Route;
using parscale::server::RouterOptions;

constexpr const char* kKey = "sk-fuzz_Key.0123";
constexpr size_t kMaxBody = 4096;

struct Input {
  std::string method, path, body;
  std::vector<std::pair<std::string, std::string>> headers;
  const std::string* authorization = nullptr;  // the first Authorization header (any case)
};

std::string_view take_line(std::string_view& s) {
  const size_t nl = s.find('\n');
  const std::string_view line = s.substr(0, nl);
  s.remove_prefix(nl == std::string_view::npos ? s.size() : nl + 1);
  return line;
}

bool same_ci(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

Input decode(std::string_view s) {
  Input in;
  in.method = take_line(s);
  in.path = take_line(s);
  while (!s.empty()) {
    const std::string_view line = take_line(s);
    if (line.empty()) break;
    const size_t colon = line.find(':');
    std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);  // as cpp-httplib
    in.headers.emplace_back(std::string(line.substr(0, colon)), std::string(value));
  }
  in.body = s;
  for (const auto& [name, value] : in.headers)
    if (same_ci(name, "Authorization")) {
      in.authorization = &value;
      break;
    }
  return in;
}

// The key check written again, plainly: "bearer" in any case, blanks, the key, blanks.
bool carries_key(const std::string* auth, const std::string& key) {
  if (!auth) return false;
  std::string h = *auth;
  auto blank = [](char c) { return c == ' ' || c == '\t'; };
  while (!h.empty() && blank(h.back())) h.pop_back();
  size_t i = 0;
  while (i < h.size() && blank(h[i])) ++i;
  if (h.size() < i + 7 || !same_ci(h.substr(i, 6), "bearer") || !blank(h[i + 6])) return false;
  i += 6;
  while (i < h.size() && blank(h[i])) ++i;
  return h.substr(i) == key;
}

void check_error(const ApiError& e) {
  if (e.status < 400 || e.status > 499 || e.message.empty()) __builtin_trap();
  const nlohmann::json body = nlohmann::json::parse(parscale::server::error_body(e));  // throws (a bug) if not JSON
  if (!body.is_object() || body.size() != 1) __builtin_trap();
  const nlohmann::json& err = body.at("error");
  if (!err.at("message").is_string() || !err.at("type").is_string()) __builtin_trap();
  for (const char* k : {"param", "code"})
    if (!err.at(k).is_null() && !err.at(k).is_string()) __builtin_trap();
}

bool is_get(const std::string& m) { return m == "GET" || m == "HEAD"; }

// The endpoint answers this method and path.
bool route_matches(const Route& r, const Input& in, const RouterOptions& opt) {
  switch (r.endpoint) {
    case Endpoint::Preflight: return in.method == "OPTIONS";
    case Endpoint::Health: return is_get(in.method) && in.path == "/health";
    case Endpoint::ListModels: return is_get(in.method) && in.path == "/v1/models";
    case Endpoint::GetModel: return is_get(in.method) && "/v1/models/" + r.target == in.path && !r.target.empty();
    case Endpoint::Metrics: return is_get(in.method) && in.path == "/metrics";
    case Endpoint::Asset:
      return is_get(in.method) && (in.path == r.target || (in.path == "/" && r.target == "/index.html")) &&
             std::find(opt.asset_paths.begin(), opt.asset_paths.end(), r.target) != opt.asset_paths.end();
    case Endpoint::Completions: return in.method == "POST" && in.path == "/v1/completions";
    case Endpoint::ChatCompletions: return in.method == "POST" && in.path == "/v1/chat/completions";
  }
  return false;
}

void serve(const Input& in, const RouterOptions& opt) {
  const parscale::fuzz::ServerDemo& d = parscale::fuzz::server_demo();
  const bool keyed = !opt.api_key.empty();
  try {
    const Route r = parscale::server::route_request(opt, in.method, in.path, in.authorization);
    if (!route_matches(r, in, opt)) __builtin_trap();
    const bool open = r.endpoint == Endpoint::Preflight || r.endpoint == Endpoint::Health || r.endpoint == Endpoint::Asset;
    if (keyed && !open && !carries_key(in.authorization, opt.api_key)) __builtin_trap();
    if (r.endpoint == Endpoint::Completions || r.endpoint == Endpoint::ChatCompletions) {
      const parscale::server::GenerationRequest g = parscale::server::parse_generation(opt, r.endpoint, in.body, d.ctx);
      if (in.body.size() > opt.max_body_bytes || !g.model || g.prompts.empty()) __builtin_trap();
      if (g.chat != (r.endpoint == Endpoint::ChatCompletions)) __builtin_trap();
      for (const auto& p : g.prompts)
        if (p.empty() || static_cast<int64_t>(p.size()) + g.max_tokens > d.ctx.max_context) __builtin_trap();
    } else if (r.endpoint == Endpoint::GetModel) {
      if (parscale::server::model_json(d.catalog, 0, r.target).at("id") != r.target) __builtin_trap();
    }
  } catch (const ApiError& e) {
    check_error(e);
    if (e.status == 401 && (!keyed || carries_key(in.authorization, opt.api_key))) __builtin_trap();
    if (e.status == 405 && parscale::server::allowed_methods(opt, in.path).empty()) __builtin_trap();
    if (e.status == 413 && in.body.size() <= opt.max_body_bytes) __builtin_trap();
  }
}

RouterOptions options(std::string key) {
  RouterOptions o;
  o.api_key = std::move(key);
  o.max_body_bytes = kMaxBody;
  // The chat page's files, as embed_web.cmake embeds them (every file of src/server/web/).
  for (const auto& e : std::filesystem::directory_iterator(parscale::fuzz::source_dir() + "/src/server/web"))
    o.asset_paths.push_back("/" + e.path().filename().string());
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const RouterOptions open_server = options(""), keyed_server = options(kKey);
  const Input in = decode(std::string_view(reinterpret_cast<const char*>(data), size));
  serve(in, open_server);
  serve(in, keyed_server);
  // The bodies cpp-httplib's own failures get.
  for (int status : {400, 404, 413, 414}) {
    const ApiError e = parscale::server::http_failure(status, in.method, in.path, kMaxBody);
    if (e.status != status) __builtin_trap();
    check_error(e);
  }
  return 0;
}
