// `parscale serve`'s HTTP layer: the OpenAI-compatible routes (api.h) over cpp-httplib, the
// metrics page, the embedded chat page, API key, CORS and body-size limits, and client
// disconnects turned into engine cancellations.
//
// Threads: cpp-httplib runs each connection on a worker of its pool (`http_threads`); a
// generation request keeps its worker while it streams, waiting on the engine's events.
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

namespace parscale::server {

// What the server needs from the engine (an interface so tests can drive the HTTP layer with a
// scripted engine). EngineBackend (engine_backend.h) adapts parscale::Engine.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const std::vector<EngineModel>& models() const = 0;
  virtual std::shared_ptr<RequestHandle> submit(EngineRequest request) = 0;  // throws EngineError
  virtual EngineStats stats() const = 0;
};

struct ServerOptions {
  std::string model_name;        // NAME of the model ids (api.h ModelCatalog)
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (bind() returns it)
  std::string api_key;           // "": no authentication
  std::string cors_origin;       // "": no CORS headers
  size_t max_body_bytes = 8u << 20;  // larger request bodies get 413
  int http_threads = 64;         // concurrent connections served (each stream holds one)
  int64_t vocab_size = 0;        // token ids must be below
  int64_t max_context = 0;       // max_position_embeddings
  std::vector<int64_t> eos_ids;  // model eos + tokenizer end-of-turn ids
};

class Server {
 public:
  // Throws parscale::Error for inconsistent options (e.g. two adapters of the same P).
  Server(Backend& backend, Tokenizer tokenizer, ServerOptions options);
  ~Server();
  // Binds the listening socket; returns the port. Throws parscale::Error when it cannot bind.
  // Sets SIGPIPE to ignored (a peer that closes mid-write must not end the process).
  int bind();
  // Serves until stop(); returns once every connection's handler has returned (streams end
  // when their engine requests finish or are cancelled).
  void run();
  // Graceful shutdown, step 1: new generation requests get 503 (shutting_down); running ones go
  // on. Thread-safe.
  void begin_drain();
  // Waits up to `timeout` until no generation response is being written; true when none is.
  bool wait_idle(std::chrono::milliseconds timeout);
  // Closes the listening socket and ends every connection: responses still being written are cut
  // (cpp-httplib stops content providers once the server stops), so drain first. Thread-safe,
  // idempotent.
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace parscale::server
