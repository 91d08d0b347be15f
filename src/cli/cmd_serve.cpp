// `parscale serve --model DIR [--adapter F ...] [--alias NAME] [--host H] [--port N] [--api-key K]
//                 [--threads N] [--kv-memory GiB] [--kv-dtype f32|bf16|f16] [--max-queue N]
//                 [--cors-origin O]`
// An OpenAI-compatible HTTP server (src/server) over the serving engine: model NAME at the
// folder's own P, plus NAME:pP per adapter. SIGTERM / SIGINT: refuse new requests (503), let
// running ones finish, close the listening socket, exit 0; a second signal cancels what runs.
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <thread>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "engine/engine.h"
#include "server/engine_backend.h"
#include "server/server.h"

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::string alias;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  double kv_memory_gib = 0.0;
  int64_t max_queue = 1024;
  int64_t prefill_rows_while_decoding = -1;
  std::string cors_origin;
  size_t max_body_mib = 8;
};

int run(const Opts& o) {
  using namespace parscale;
  // Signals go to the waiter thread below only: block them before any other thread exists
  // (the engine's, the kernel pool's, the HTTP pool's inherit the mask).
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Tokenizer tok = cli::load_tokenizer(o.model.model_dir, "", "serve");
  cli::ModelOptions own = o.model;
  own.adapters.clear();  // each --adapter is a model of its own, not a part of the folder's
  ModelWeights w = own.load();
  const ModelConfig& config = w.backbone->config;
  if (tok.vocab_size() > static_cast<size_t>(config.vocab_size))
    throw Error("tokenizer has " + std::to_string(tok.vocab_size()) + " tokens but the model's vocab_size is " +
                std::to_string(config.vocab_size));
  std::vector<std::shared_ptr<const Adapter>> extra;
  for (const auto& f : o.model.adapters) {
    std::vector<std::string> unknown;
    extra.push_back(load_adapter({f}, config, &unknown));
    for (const auto& name : unknown) std::fprintf(stderr, "parscale: warning: %s: unused tensor %s\n", f.c_str(), name.c_str());
  }
  EngineOptions eo;
  eo.kv_memory_bytes = static_cast<int64_t>(o.kv_memory_gib * 1024.0 * 1024.0 * 1024.0);
  eo.kv_dtype = o.model.kv();
  eo.max_queue = o.max_queue;
  eo.prefill_rows_while_decoding = o.prefill_rows_while_decoding;
  Engine engine(w.backbone, w.adapter, extra, eo);

  server::ServerOptions so;
  std::string dir = o.model.model_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  so.model_name = o.alias.empty() ? std::filesystem::path(dir).filename().string() : o.alias;
  so.host = o.host;
  so.port = o.port;
  so.api_key = o.api_key;
  so.cors_origin = o.cors_origin;
  so.max_body_bytes = o.max_body_mib << 20;
  so.vocab_size = config.vocab_size;
  so.max_context = config.max_position_embeddings;
  so.eos_ids = cli::eos_ids_for(config, tok);
  server::EngineBackend backend(engine);
  server::Server srv(backend, tok, so);
  const int port = srv.bind();

  // The waiter: first signal -> refuse new requests, let running ones finish, then stop; a second
  // signal meanwhile cancels the running ones.
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::fprintf(stderr, "parscale: signal %d: refusing new requests, finishing running ones (again to cancel them)\n", sig);
    srv.begin_drain();
    std::thread second([&] {
      int s2 = 0;
      sigwait(&signals, &s2);
      if (done) return;
      std::fprintf(stderr, "parscale: signal %d: cancelling running requests\n", s2);
      engine.shutdown(/*finish_running=*/false);
    });
    while (!srv.wait_idle(std::chrono::milliseconds(100))) {
    }
    done = true;
    srv.stop();
    pthread_kill(second.native_handle(), SIGTERM);  // wakes its sigwait (it sees done)
    second.join();
  });
  std::fprintf(stderr, "parscale: serving");
  for (const auto& m : engine.models()) std::fprintf(stderr, " P=%lld", static_cast<long long>(m.streams));
  std::fprintf(stderr, " as '%s' on http://%s:%d (chat page at /)\n", so.model_name.c_str(), so.host.c_str(), port);
  std::fflush(stderr);
  srv.run();  // returns after stop() (only the waiter calls it) once every connection has ended
  waiter.join();
  engine.shutdown(/*finish_running=*/false);
  std::fprintf(stderr, "parscale: server stopped\n");
  return 0;
}

parscale::cli::RegisterCommand reg("serve", "OpenAI-compatible HTTP server with a chat page (P per request)", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  app.get_option("--adapter")->description("ParScale adapter file; each one adds the model id NAME:pP (repeatable)");
  app.add_option("--alias", o->alias, "model name NAME in the API (default: the model folder's name)");
  app.add_option("--host", o->host, "address to listen on (default 127.0.0.1)");
  app.add_option("--port", o->port, "TCP port (default 8080; 0 = any free port)")->check(CLI::Range(0, 65535));
  app.add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' (not for /health and the chat page's files)");
  app.add_option("--kv-memory", o->kv_memory_gib, "GiB of KV cache pages (default: 4 sequences of the full context at P = 1)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-queue", o->max_queue, "waiting requests at most; more get 429 (default 1024)")->check(CLI::PositiveNumber);
  app.add_option("--prefill-rows-while-decoding", o->prefill_rows_while_decoding,
                 "prompt rows per step at most while requests decode (0 = no cap; default: 16 in fast mode, 8 in "
                 "exact: docs/SCHEDULER.md)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--cors-origin", o->cors_origin, "send Access-Control-Allow-Origin: O (e.g. '*')");
  app.add_option("--max-body-mib", o->max_body_mib, "largest request body in MiB; larger get 413 (default 8)")->check(CLI::PositiveNumber);
  return [o]() -> int { return run(*o); };
});

}  // namespace
