#include "server/server.h"

#include <httplib.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/routes.h"
#include "server/web_assets.h"

namespace parscale::server {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// A client that is silent this long gets a keep-alive write (an SSE comment, or a space before
// a JSON body): a write to a closed connection fails, which is how a disconnect is noticed.
constexpr auto kHeartbeat = std::chrono::milliseconds(1000);

// cpp-httplib (Debian's build) listens with a backlog of 5: a burst of connections overflows the
// accept queue, and under load clients then see stalls or resets. listen() may be called again on
// a listening socket to change its backlog; the socket is found among this process's descriptors
// by its listening state and local port. Returns false when none was found.
bool widen_listen_backlog(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return false;
  bool done = false;
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    int p = -1;
    if (addr.ss_family == AF_INET) p = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6) p = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (p == port && listen(static_cast<int>(fd), SOMAXCONN) == 0) done = true;
  }
  closedir(dir);
  return done;
}

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx%08llx", prefix, static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffull));
  return buf;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

// The choices of one request, fed by their engine handles.
struct Job {
  std::shared_ptr<const GenerationRequest> req;
  std::vector<std::shared_ptr<RequestHandle>> handles;      // choice i = prompt (i / n), sample (i % n)
  std::vector<std::unique_ptr<ChoiceTracker>> trackers;
  std::string id;
  int64_t created = 0;
  int64_t prompt_tokens = 0;
  bool started = false, ended = false;
  Clock::time_point last_write = Clock::now();

  bool all_done() const {
    for (const auto& t : trackers)
      if (!t->done()) return false;
    return true;
  }
  void cancel_all() {
    for (const auto& h : handles) h->cancel();
  }
  Usage usage() const {
    Usage u;
    u.prompt_tokens = prompt_tokens;
    for (const auto& t : trackers) u.completion_tokens += t->completion_tokens();
    return u;
  }
  // Takes the events that are ready (waiting up to `wait` when there are none) and returns what
  // they add, per choice. A choice that met a stop string has its engine request cancelled.
  std::vector<std::pair<size_t, ChoiceDelta>> poll(std::chrono::milliseconds wait) {
    std::vector<std::pair<size_t, ChoiceDelta>> out;
    auto take = [&](size_t i, const EngineEvent& ev) {
      ChoiceDelta d = trackers[i]->on_event(ev);
      if (trackers[i]->done() && trackers[i]->stopped_by_string()) handles[i]->cancel();
      if (!d.text.empty() || !d.tokens.empty() || d.finished) out.emplace_back(i, std::move(d));
    };
    EngineEvent ev;
    for (size_t i = 0; i < trackers.size(); ++i)
      while (!trackers[i]->done() && handles[i]->next(ev, std::chrono::milliseconds(0))) take(i, ev);
    if (!out.empty()) return out;
    size_t open = 0, first = trackers.size();
    for (size_t i = 0; i < trackers.size(); ++i)
      if (!trackers[i]->done()) {
        ++open;
        if (first == trackers.size()) first = i;
      }
    if (open == 0) return out;
    // One choice: block on it; several: a short wait on one, then everyone is polled again.
    auto w = open == 1 ? wait : std::min(wait, std::chrono::milliseconds(5));
    if (handles[first]->next(ev, w)) take(first, ev);
    return out;
  }
};

}  // namespace

struct Server::Impl {
  Backend& backend;
  Tokenizer tokenizer;
  ServerOptions opt;
  ModelCatalog catalog;
  ParseContext ctx;
  RouterOptions router;
  httplib::Server http;
  int64_t created = static_cast<int64_t>(std::time(nullptr));
  std::mutex counters_mu;
  HttpCounters counters;
  std::atomic<bool> bound{false};
  // Generation responses being written (jobs between submit and their provider's release).
  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  int64_t active_jobs = 0;
  std::atomic<bool> draining{false};

  Impl(Backend& b, Tokenizer t, ServerOptions o)
      : backend(b), tokenizer(std::move(t)), opt(std::move(o)), catalog(opt.model_name, backend.models()) {
    check(opt.vocab_size > 0 && opt.max_context > 0, "serve: vocab_size and max_context must be positive");
    ctx.catalog = &catalog;
    ctx.tokenizer = &tokenizer;
    ctx.vocab_size = opt.vocab_size;
    ctx.max_context = opt.max_context;
    ctx.eos_ids = opt.eos_ids;
    for (char c : opt.api_key)
      check(c > ' ' && c < 0x7f, "serve: the API key must be printable ASCII without spaces");
    router.api_key = opt.api_key;
    router.max_body_bytes = opt.max_body_bytes;
    for (const auto& a : web_assets()) router.asset_paths.emplace_back(a.path);
    setup();
  }

  void count_disconnect() {
    std::lock_guard<std::mutex> lock(counters_mu);
    ++counters.disconnects;
  }

  // Stage 1 of routes.h for this request (throws ApiError 401 / 404 / 405).
  Route route(const httplib::Request& req) const {
    const auto auth = req.headers.find("Authorization");  // the first one (headers are case-insensitive)
    return route_request(router, req.method, req.path, auth == req.headers.end() ? nullptr : &auth->second);
  }

  void reject(const httplib::Request& req, httplib::Response& res, const ApiError& e) const {
    if (e.status == 405) res.set_header("Allow", allowed_methods(router, req.path));
    send_error(res, e);
  }

  void setup() {
    http.new_task_queue = [n = opt.http_threads] { return new httplib::ThreadPool(static_cast<size_t>(n)); };
    http.set_payload_max_length(opt.max_body_bytes);
    http.set_read_timeout(30, 0);
    http.set_write_timeout(30, 0);
    http.set_keep_alive_timeout(2);
    if (!opt.cors_origin.empty()) {
      http.set_default_headers({{"Access-Control-Allow-Origin", opt.cors_origin},
                                {"Access-Control-Allow-Headers", "Authorization, Content-Type"},
                                {"Access-Control-Allow-Methods", "GET, POST, OPTIONS"},
                                {"Access-Control-Max-Age", "600"}});
    }
    // The API key, the path and the method are decided before the body is read (routes.h), so
    // a refused request's body is never read.
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      try {
        route(req);
        return httplib::Server::HandlerResponse::Unhandled;
      } catch (const ApiError& e) {
        reject(req, res, e);
        return httplib::Server::HandlerResponse::Handled;
      }
    });
    http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
      // Only fills responses that have no body yet (cpp-httplib's own failures: 413 from the
      // body limit, malformed HTTP); the handlers' own errors already carry one.
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      res.set_content(error_body(http_failure(res.status, req.method, req.path, opt.max_body_bytes)), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        msg += std::string(": ") + e.what();
      } catch (...) {
      }
      send_error(res, ApiError(500, "server_error", msg));
    });
    http.set_logger([this](const httplib::Request&, const httplib::Response& res) {
      std::lock_guard<std::mutex> lock(counters_mu);
      ++counters.responses_by_status[res.status];
    });

    // One handler per method for every path: the routing is routes.h's (already checked by the
    // pre-routing hook; a path with a newline would not match cpp-httplib's ".*").
    const auto dispatch = [this](const httplib::Request& req, httplib::Response& res) { serve(req, res); };
    const char* const any_path = R"([\s\S]*)";
    http.Get(any_path, dispatch);  // and HEAD
    http.Post(any_path, dispatch);
    http.Options(any_path, dispatch);
  }

  void serve(const httplib::Request& req, httplib::Response& res) {
    Route r;
    try {
      r = route(req);
    } catch (const ApiError& e) {
      return reject(req, res, e);
    }
    switch (r.endpoint) {
      case Endpoint::Preflight:
        res.status = 204;
        return;
      case Endpoint::Health:
        return res.set_content(R"({"status":"ok"})", "application/json");
      case Endpoint::ListModels:
        return res.set_content(dump_json(catalog.list_json(created)), "application/json");
      case Endpoint::GetModel:
        try {
          return res.set_content(dump_json(model_json(catalog, created, r.target)), "application/json");
        } catch (const ApiError& e) {
          return send_error(res, e);
        }
      case Endpoint::Metrics: {
        HttpCounters c;
        {
          std::lock_guard<std::mutex> lock(counters_mu);
          c = counters;
        }
        return res.set_content(render_metrics(backend.stats(), c), "text/plain; version=0.0.4; charset=utf-8");
      }
      case Endpoint::Asset:
        for (const auto& a : web_assets())
          if (r.target == a.path) {
            res.set_content(std::string(a.data, a.size), a.content_type);
            res.set_header("Cache-Control", "no-cache");
            return;
          }
        return send_error(res, http_failure(404, req.method, req.path, opt.max_body_bytes));
      case Endpoint::Completions:
      case Endpoint::ChatCompletions:
        return generate(req, res, r.endpoint);
    }
  }

  void job_ended() {
    std::lock_guard<std::mutex> lock(jobs_mu);
    --active_jobs;
    jobs_cv.notify_all();
  }

  void generate(const httplib::Request& hreq, httplib::Response& res, Endpoint endpoint) {
    const bool chat = endpoint == Endpoint::ChatCompletions;
    {
      std::lock_guard<std::mutex> lock(jobs_mu);
      if (draining) return send_error(res, ApiError(503, "server_error", "the server is shutting down", "", "shutting_down"));
      ++active_jobs;  // from here until the response is released (or this function fails)
    }
    struct Active {
      Impl* impl;
      bool handed_over = false;
      ~Active() {
        if (!handed_over) impl->job_ended();
      }
    } active{this};
    auto job = std::make_shared<Job>();
    try {
      auto r = std::make_shared<GenerationRequest>(parse_generation(router, endpoint, hreq.body, ctx));
      job->req = r;
      for (size_t p = 0; p < r->prompts.size(); ++p) {
        job->prompt_tokens += static_cast<int64_t>(r->prompts[p].size());
        for (int64_t c = 0; c < r->n; ++c) {
          job->handles.push_back(backend.submit(r->engine_request(p, c)));
          job->trackers.push_back(std::make_unique<ChoiceTracker>(*r, tokenizer, p));
        }
      }
    } catch (const ApiError& e) {
      job->cancel_all();
      return send_error(res, e);
    } catch (const EngineError& e) {
      job->cancel_all();
      switch (e.kind) {
        case EngineError::Kind::InvalidRequest:
          return send_error(res, ApiError(400, "invalid_request_error", e.what(), "", "invalid_value"));
        case EngineError::Kind::QueueFull:
          res.set_header("Retry-After", "1");
          return send_error(res, ApiError(429, "rate_limit_error", std::string("the server is busy: ") + e.what(), "", "queue_full"));
        case EngineError::Kind::ShuttingDown:
          return send_error(res, ApiError(503, "server_error", "the server is shutting down", "", "shutting_down"));
      }
    }
    job->id = random_id(chat ? "chatcmpl-" : "cmpl-");
    job->created = static_cast<int64_t>(std::time(nullptr));
    // Both kinds of response are written by a chunked content provider, so that a client that
    // goes away is noticed (a failed write) and its engine requests are cancelled.
    active.handed_over = true;  // the releaser ends it
    auto releaser = [this, job](bool success) {
      if (!job->ended || !success) {
        if (!job->all_done()) count_disconnect();
        job->cancel_all();
      }
      job_ended();
    };
    if (job->req->stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream", [job](size_t, httplib::DataSink& sink) { return stream_step(*job, sink); }, releaser);
    } else {
      res.set_chunked_content_provider(
          "application/json", [job](size_t, httplib::DataSink& sink) { return whole_step(*job, sink); }, releaser);
    }
  }

  static bool write(Job& job, httplib::DataSink& sink, const std::string& s) {
    job.last_write = Clock::now();
    return sink.write(s.data(), s.size());
  }

  static bool heartbeat_due(const Job& job) { return Clock::now() - job.last_write >= kHeartbeat; }

  // One call of the streaming provider: sends what is ready, or a heartbeat, or the end.
  static bool stream_step(Job& job, httplib::DataSink& sink) {
    const GenerationRequest& req = *job.req;
    std::string out;
    if (!job.started) {
      job.started = true;
      if (req.chat) {  // the role comes first, before any token
        for (size_t i = 0; i < job.trackers.size(); ++i) out += sse_event(stream_chunk(req, job.id, job.created, i, {}, true));
      }
    }
    for (auto& [i, d] : job.poll(std::chrono::milliseconds(250)))
      out += sse_event(stream_chunk(req, job.id, job.created, static_cast<int64_t>(i), d, false));
    if (job.all_done()) {
      if (req.include_usage) out += sse_event(usage_chunk(req, job.id, job.created, job.usage()));
      out += "data: [DONE]\n\n";
      job.ended = true;
      if (!write(job, sink, out)) return false;
      sink.done();
      return true;
    }
    if (out.empty()) {
      if (!heartbeat_due(job)) return true;
      out = ": keep-alive\n\n";
    }
    return write(job, sink, out);
  }

  // One call of the non-streaming provider: waits for the choices, then sends the whole body.
  static bool whole_step(Job& job, httplib::DataSink& sink) {
    job.poll(std::chrono::milliseconds(250));
    if (!job.all_done()) {
      if (heartbeat_due(job)) return write(job, sink, " ");  // JSON allows leading whitespace
      return true;
    }
    std::vector<ChoiceResult> choices;
    for (const auto& t : job.trackers) choices.push_back({t->text(), t->tokens(), t->finish_reason()});
    const GenerationRequest& req = *job.req;
    json body = req.chat ? chat_response(req, job.id, job.created, choices, job.usage())
                         : completion_response(req, job.id, job.created, choices, job.usage());
    job.ended = true;
    if (!write(job, sink, dump_json(body) + "\n")) return false;
    sink.done();
    return true;
  }
};

Server::Server(Backend& backend, Tokenizer tokenizer, ServerOptions options)
    : impl_(std::make_unique<Impl>(backend, std::move(tokenizer), std::move(options))) {}

Server::~Server() { stop(); }

int Server::bind() {
  std::signal(SIGPIPE, SIG_IGN);
  int port = impl_->opt.port;
  bool ok;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(impl_->opt.host);
    ok = port > 0;
  } else {
    ok = impl_->http.bind_to_port(impl_->opt.host, port);
  }
  check(ok, "serve: cannot listen on " + impl_->opt.host + ":" + std::to_string(impl_->opt.port) +
                " (address in use, or not an address of this machine)");
  widen_listen_backlog(port);
  impl_->bound = true;
  return port;
}

void Server::run() {
  check(impl_->bound, "serve: run() before bind()");
  impl_->http.listen_after_bind();
}

void Server::begin_drain() {
  std::lock_guard<std::mutex> lock(impl_->jobs_mu);
  impl_->draining = true;
}

bool Server::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(impl_->jobs_mu);
  return impl_->jobs_cv.wait_for(lock, timeout, [&] { return impl_->active_jobs == 0; });
}

void Server::stop() {
  if (impl_) impl_->http.stop();
}

}  // namespace parscale::server
