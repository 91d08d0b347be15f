#include "server/routes.h"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace parscale::server {

namespace {

constexpr std::string_view kModelsPrefix = "/v1/models/";
constexpr size_t kQuotedPathMax = 200;

bool is_space(char c) { return c == ' ' || c == '\t'; }

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool is_get(std::string_view method) { return method == "GET" || method == "HEAD"; }

// The path for an error message: at most kQuotedPathMax bytes (error_body replaces invalid UTF-8).
std::string quoted(std::string_view path) {
  if (path.size() <= kQuotedPathMax) return std::string(path);
  return std::string(path.substr(0, kQuotedPathMax)) + "...";
}

// The endpoint `path` names whatever the method, with its method ("GET" or "POST"); false when
// the path names none.
bool endpoint_of(const RouterOptions& opt, std::string_view path, Route& route, std::string_view& method) {
  method = "GET";
  route.target.clear();
  if (path == "/health") {
    route.endpoint = Endpoint::Health;
  } else if (path == "/v1/models") {
    route.endpoint = Endpoint::ListModels;
  } else if (path.size() > kModelsPrefix.size() && path.substr(0, kModelsPrefix.size()) == kModelsPrefix) {
    route.endpoint = Endpoint::GetModel;
    route.target = std::string(path.substr(kModelsPrefix.size()));
  } else if (path == "/metrics") {
    route.endpoint = Endpoint::Metrics;
  } else if (path == "/v1/completions") {
    route.endpoint = Endpoint::Completions;
    method = "POST";
  } else if (path == "/v1/chat/completions") {
    route.endpoint = Endpoint::ChatCompletions;
    method = "POST";
  } else {
    const std::string_view file = path == "/" ? std::string_view("/index.html") : path;
    if (std::find(opt.asset_paths.begin(), opt.asset_paths.end(), file) == opt.asset_paths.end()) return false;
    route.endpoint = Endpoint::Asset;
    route.target = std::string(file);
  }
  return true;
}

}  // namespace

bool api_key_accepted(std::string_view api_key, const std::string* authorization) {
  if (api_key.empty()) return true;
  if (!authorization) return false;
  std::string_view h = *authorization;
  while (!h.empty() && is_space(h.front())) h.remove_prefix(1);
  while (!h.empty() && is_space(h.back())) h.remove_suffix(1);
  constexpr std::string_view scheme = "bearer";
  if (h.size() <= scheme.size() || !is_space(h[scheme.size()])) return false;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (lower(h[i]) != scheme[i]) return false;
  h.remove_prefix(scheme.size());
  while (!h.empty() && is_space(h.front())) h.remove_prefix(1);
  if (h.size() != api_key.size()) return false;
  unsigned char diff = 0;  // every byte is compared: the time does not tell where they differ
  for (size_t i = 0; i < h.size(); ++i) diff |= static_cast<unsigned char>(h[i] ^ api_key[i]);
  return diff == 0;
}

Route route_request(const RouterOptions& opt, std::string_view method, std::string_view path,
                    const std::string* authorization) {
  Route route;
  if (method == "OPTIONS") {
    route.endpoint = Endpoint::Preflight;
    return route;
  }
  std::string_view wants;
  const bool known = endpoint_of(opt, path, route, wants);
  const bool open = known && is_get(method) && (route.endpoint == Endpoint::Health || route.endpoint == Endpoint::Asset);
  if (!open && !api_key_accepted(opt.api_key, authorization))
    throw ApiError(401, "invalid_request_error",
                   authorization ? "incorrect API key" : "missing API key (Authorization: Bearer KEY)", "",
                   "invalid_api_key");
  if (!known)
    throw ApiError(404, "invalid_request_error", "unknown path: " + quoted(method) + " " + quoted(path), "", "not_found");
  const bool method_ok = wants == "GET" ? is_get(method) : method == wants;
  if (!method_ok)
    throw ApiError(405, "invalid_request_error",
                   quoted(path) + " answers " + allowed_methods(opt, path) + ", not " + quoted(method), "",
                   "method_not_allowed");
  return route;
}

std::string allowed_methods(const RouterOptions& opt, std::string_view path) {
  Route route;
  std::string_view method;
  if (!endpoint_of(opt, path, route, method)) return "";
  return method == "GET" ? "GET, HEAD" : "POST";
}

GenerationRequest parse_generation(const RouterOptions& opt, Endpoint endpoint, std::string_view body,
                                   const ParseContext& ctx) {
  if (body.size() > opt.max_body_bytes)
    throw ApiError(413, "invalid_request_error",
                   "the request body (" + std::to_string(body.size()) + " bytes) is larger than the server's limit (" +
                       std::to_string(opt.max_body_bytes) + " bytes)",
                   "", "payload_too_large");
  if (endpoint == Endpoint::ChatCompletions) return parse_chat_request(body, ctx);
  if (endpoint == Endpoint::Completions) return parse_completion_request(body, ctx);
  throw ApiError(404, "invalid_request_error", "this endpoint takes no request body", "", "not_found");
}

nlohmann::json model_json(const ModelCatalog& catalog, int64_t created, std::string_view id) {
  nlohmann::json list = catalog.list_json(created);
  for (const auto& m : list["data"])
    if (m["id"].get<std::string>() == id) return m;
  throw ApiError(404, "invalid_request_error", "the model '" + quoted(id) + "' does not exist", "model",
                 "model_not_found");
}

ApiError http_failure(int status, std::string_view method, std::string_view path, size_t max_body_bytes) {
  std::string msg, code;
  if (status == 404) {
    msg = "unknown path: " + quoted(method) + " " + quoted(path);
    code = "not_found";
  } else if (status == 413) {
    msg = "the request body is larger than the server's limit (" + std::to_string(max_body_bytes) +
          " bytes; 8192 for Content-Type application/x-www-form-urlencoded, e.g. curl -d without "
          "-H 'Content-Type: application/json')";
    code = "payload_too_large";
  } else if (status == 414) {
    msg = "the request's URI is too long";
    code = "uri_too_long";
  } else if (status >= 400 && status <= 499) {
    msg = "bad request (" + std::to_string(status) + ")";
  } else {
    msg = "the request failed (" + std::to_string(status) + ")";
    return ApiError(status, "server_error", msg);
  }
  return ApiError(status, "invalid_request_error", msg, "", code);
}

}  // namespace parscale::server
