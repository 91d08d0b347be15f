// The HTTP layer's decisions without sockets: which endpoint a method + path names, whether the
// API key lets the request through, the body limit and body dispatch of the generation routes,
// and the error bodies of cpp-httplib's own failures. server.cpp asks these functions for every
// request (its pre-routing hook and its one catch-all handler per method), so the unit tests and
// fuzz/fuzz_http.cpp exercise exactly what the server runs.
//
// Every error is an ApiError (api.h) with a 4xx status and an OpenAI-shaped body (error_body).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "server/api.h"

namespace parscale::server {

enum class Endpoint {
  Preflight,        // OPTIONS of any path (CORS preflight): 204
  Health,           // GET /health
  ListModels,       // GET /v1/models
  GetModel,         // GET /v1/models/{id}
  Metrics,          // GET /metrics
  Asset,            // GET a file of the chat page ("/" is "/index.html")
  Completions,      // POST /v1/completions
  ChatCompletions,  // POST /v1/chat/completions
};

struct RouterOptions {
  std::string api_key;                   // "": no authentication
  size_t max_body_bytes = 8u << 20;      // larger bodies: 413
  std::vector<std::string> asset_paths;  // the chat page's files, e.g. "/index.html"
};

struct Route {
  Endpoint endpoint = Endpoint::Health;
  std::string target;  // GetModel: the model id; Asset: the asset's path ("/" -> "/index.html")
};

// Whether `authorization` (the request's first Authorization header; nullptr when absent) carries
// `api_key`: the scheme "Bearer" in any case, one or more spaces / tabs, exactly the key, then
// optional spaces / tabs. Anything else (another scheme, a key differing in any byte or length,
// NUL bytes) is refused. An empty api_key accepts every request. The comparison of the key takes
// the same time wherever the first difference is.
bool api_key_accepted(std::string_view api_key, const std::string* authorization);

// Stage 1, before the body is read. Open without the key: /health (GET, HEAD), the chat page's
// files (GET, HEAD) and OPTIONS of any path. Every other request needs the key (401
// invalid_api_key, "missing" or "incorrect"), then must name an endpoint (404 not_found) with a
// method it answers (405 method_not_allowed). HEAD is answered as GET. Throws ApiError.
Route route_request(const RouterOptions& opt, std::string_view method, std::string_view path,
                    const std::string* authorization);

// The methods `path` answers, for a 405's Allow header: "GET, HEAD", "POST", or "" for an unknown
// path (OPTIONS, answered everywhere, is left out).
std::string allowed_methods(const RouterOptions& opt, std::string_view path);

// Stage 2 of Completions / ChatCompletions, once the body is read: 413 payload_too_large when the
// body is over max_body_bytes (cpp-httplib already refuses those while reading; this guards
// bodies from any other path), else the parsed request (api.h; ApiError 400 / 404).
GenerationRequest parse_generation(const RouterOptions& opt, Endpoint endpoint, std::string_view body,
                                   const ParseContext& ctx);

// The body of GET /v1/models/{id}: its entry of list_json, or ApiError 404 model_not_found.
nlohmann::json model_json(const ModelCatalog& catalog, int64_t created, std::string_view id);

// The error a response gets when cpp-httplib failed it before any handler ran (`status`: 400
// malformed request, 404 no handler, 413 body over the limit while reading, 414 URI too long,
// another 4xx; any other status is a server_error): an ApiError of that status explaining it. The
// path is quoted at most 200 bytes long.
ApiError http_failure(int status, std::string_view method, std::string_view path, size_t max_body_bytes);

}  // namespace parscale::server
