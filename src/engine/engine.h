// The serving engine: one immutable Backbone shared by any number of ParScale Adapters (P chosen
// per request), iteration-level continuous batching over a paged KV pool.
//
// Threads: one engine thread owns the kernels (and drives the thread pool, core/threads.h) and runs scheduler steps;
// any other thread may call submit / cancel / stats / shutdown. Each request is followed through
// its RequestHandle, a thread-safe queue of events filled by the engine thread.
//
// Determinism: a request's tokens depend only on the request (its prompt, model, sampling
// parameters and seed), never on which other requests run beside it or on its slot: every
// kernel computes a row the same way whatever the batch holds, and each request has its own RNG
// seeded from the request.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "engine/sampling.h"

namespace parscale {

struct Backbone;
struct Adapter;

// Failures of submit(), with a kind a frontend maps to a status (HTTP 400 / 429 / 503).
class EngineError : public std::runtime_error {
 public:
  enum class Kind {
    InvalidRequest,  // the request itself is wrong (empty prompt, id outside the vocabulary,
                     // prompt + max_tokens beyond the context, needs more KV than the pool has)
    QueueFull,       // max_queue requests already wait; retry later
    ShuttingDown,    // shutdown() was called
  };
  EngineError(Kind kind, const std::string& message) : std::runtime_error(message), kind(kind) {}
  Kind kind;
};

// The default caps of EngineOptions::prefill_rows_while_decoding (stream rows).
constexpr int64_t kPrefillRowsExact = 8;
constexpr int64_t kPrefillRowsFast = 16;

struct EngineOptions {
  // Bytes of KV pages (all layers, K and V). 0: room for 4 sequences of the full context at P = 1.
  int64_t kv_memory_bytes = 0;
  DType kv_dtype = DType::F32;   // F32, BF16 or F16
  int64_t page_tokens = 64;      // token slots per page (one attention key block)
  int64_t batch_rows = 512;      // stream rows (tokens x streams) per forward pass at most
  // Prompt (prefill) rows per pass at most while any sequence is decoding, so a long prompt is
  // admitted in chunks beside the decode tokens instead of stalling them; the first prompt chunk
  // of a pass gets at least one token. 0: no cap (batch_rows). With no sequence decoding, prompts
  // get the whole batch_rows. -1 (the default): by the backbone's arithmetic, measured
  // (docs/SCHEDULER.md): kPrefillRowsFast where its matmuls run on the fast kernels (a prompt row
  // costs ~4 ms on two cores), else kPrefillRowsExact (~11 ms a row on two cores, 35-50 ms on one).
  int64_t prefill_rows_while_decoding = -1;
  int64_t max_running = 64;      // sequences in the running batch at most
  int64_t max_queue = 1024;      // waiting requests at most; submit() refuses beyond
  bool prefix_cache = true;      // reuse full KV pages of earlier prompts with the same tokens
};

// One servable model: the backbone alone (streams = 1) or the backbone with an adapter.
struct EngineModel {
  int64_t streams = 1;           // P
  int64_t prefix_tokens = 0;     // T (0 when P = 1)
  std::string adapter_name;      // file the adapter came from, or "" (folder's own / backbone)
};

enum class FinishReason {
  Stop,          // an eos id was sampled (not with ignore_eos)
  Length,        // max_tokens generated
  ContextLimit,  // the sequence reached max_position_embeddings
  Cancelled,     // cancel() / shutdown without finishing
  Error,         // the model pass failed (threw) or gave a logits row with NaN / +inf;
                 // EngineEvent::error says what happened
};
const char* finish_reason_name(FinishReason r);

struct EngineRequest {
  int64_t model = 0;              // index into Engine::models()
  std::vector<int32_t> prompt;    // non-empty, ids inside the vocabulary
  int64_t max_tokens = 16;        // >= 0; 0 = only the prompt (e.g. prompt logprobs)
  SamplingParams sampling;        // incl. seed: the request's own RNG
  std::vector<int64_t> eos_ids;   // empty: the model's eos ids
  bool ignore_eos = false;
  int top_logprobs = -1;          // < 0: none; 0..20: the chosen token's logprob and this many alternatives
  bool prompt_logprobs = false;   // logprob (+ top_logprobs alternatives) of prompt tokens 1..n-1
  bool stream_weights = false;    // per generated token, the aggregation weights [P]
};

struct TokenLogprob {
  int32_t id = -1;
  float logprob = 0.0f;
};

struct EngineEvent {
  enum class Kind {
    PromptLogprobs,  // once, before the first token, when prompt_logprobs was asked
    Token,           // one generated token
    Finished,        // last event of every request
  };
  Kind kind = Kind::Token;
  // Token: the id, its log-probability under the model's distribution (log-softmax of the raw
  // logits, before sampling processors; only when the request's top_logprobs >= 0, else 0), `top`
  // alternatives (descending), stream weights [P].
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<TokenLogprob> top;
  std::vector<float> stream_weights;
  // PromptLogprobs: entry i is prompt token i+1 given tokens 0..i (chosen = that token).
  struct Position {
    float logprob = 0.0f;
    std::vector<TokenLogprob> top;
  };
  std::vector<Position> prompt;
  // Finished.
  FinishReason finish = FinishReason::Length;
  int64_t prompt_tokens = 0, generated_tokens = 0;
  int64_t cached_prompt_tokens = 0;  // prompt tokens taken from the prefix cache (not computed)
  std::string error;                 // Finished(Error): what went wrong, else ""
};

// The client's end of one request. Thread-safe.
class RequestHandle {
 public:
  uint64_t id() const { return id_; }
  // Waits up to `timeout` for the next event. Returns false on timeout, or once the Finished
  // event has been taken (nothing more will come).
  bool next(EngineEvent& out, std::chrono::milliseconds timeout);
  // Asks the engine to stop the request: its KV pages are released within one step and a
  // Finished(Cancelled) event follows (unless it had already finished).
  void cancel();
  bool cancelled() const;

  // Engine side.
  explicit RequestHandle(uint64_t id) : id_(id) {}
  void push(EngineEvent e);

 private:
  uint64_t id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EngineEvent> events_;
  bool cancel_ = false, finished_taken_ = false;
};

struct Histogram {
  std::vector<double> bounds;     // upper bounds, ascending (Prometheus "le"); +Inf implied
  std::vector<uint64_t> counts;   // per bucket (not cumulative), bounds.size() + 1 entries
  double sum = 0.0;
  uint64_t count = 0;
  void observe(double v);
};

struct EngineStats {
  int64_t running = 0, waiting = 0;
  int64_t kv_pages_used = 0, kv_pages_total = 0, kv_pages_cached = 0, page_tokens = 0;
  int64_t steps = 0, preemptions = 0;
  int64_t rows_computed = 0;  // stream rows of all model passes (sum of P x new tokens): the compute
  struct PerStreams {
    int64_t requests_total = 0, prompt_tokens_total = 0, cached_prompt_tokens_total = 0;
    int64_t generation_tokens_total = 0, running = 0, waiting = 0;
    Histogram time_to_first_token;  // seconds, submit -> first token
  };
  std::map<int64_t, PerStreams> per_streams;  // by P
  Histogram step_seconds;                     // one scheduler step (one forward pass)
};

class Engine {
 public:
  // models() = [backbone at `own` (the folder's own P: its adapter, or null for P = 1),
  //             then one per extra adapter]. Starts the engine thread.
  Engine(std::shared_ptr<const Backbone> backbone, std::shared_ptr<const Adapter> own,
         std::vector<std::shared_ptr<const Adapter>> extra, const EngineOptions& options);
  ~Engine();  // shutdown(false)
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const std::vector<EngineModel>& models() const;
  const Backbone& backbone() const;
  // Validates and queues a request; throws EngineError. Thread-safe.
  std::shared_ptr<RequestHandle> submit(EngineRequest request);
  EngineStats stats() const;
  // Stops accepting requests; finish_running: lets running and waiting requests finish,
  // otherwise cancels them. Returns when the engine thread has stopped. Idempotent.
  void shutdown(bool finish_running);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace parscale
