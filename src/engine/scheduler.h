// The serving engine's scheduler: iteration-level continuous batching over the paged KV pool.
// Single-threaded: the engine thread owns it (engine.cpp wraps it with the thread and queues).
//
// Each step(): cancelled sequences leave; waiting requests are admitted FIFO while their pages
// fit (the head of the queue is never overtaken, so nothing starves); every running sequence gets
// pages for its next chunk (evicting prefix-cache pages, then preempting the newest running
// sequences by recompute); one batch is built - decode tokens first, then prefill chunks in
// admission order, at most batch_rows stream rows (P rows per token); the model pass runs; each
// sequence whose chunk completed its tokens samples its next token with its own Sampler.
//
// Pages: a sequence of P streams has P block tables; row s holds ceil(len / page_tokens) pages
// for the len tokens it has computed or is about to compute. Prompt-prefix cache: full pages of
// prompts, and of prompt + generated tokens once a request finishes normally (all P tables of one page index form one entry) are kept per model index, keyed by a
// hash chain of their token ids, verified against the stored tokens and the parent entry.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "engine/step_runner.h"
#include "model/config.h"
#include "model/kv_pool.h"

namespace parscale {

struct SchedulerModel {
  int64_t streams = 1;
  const Adapter* adapter = nullptr;  // null for P = 1
};

class Scheduler {
 public:
  using Clock = std::chrono::steady_clock;

  Scheduler(const ModelConfig& config, std::vector<SchedulerModel> models, KvPool& pool, StepRunner& runner,
            const EngineOptions& options);
  ~Scheduler();  // releases every page it holds (pending requests get no event)

  // Throws EngineError(InvalidRequest) when the request can never run. Reads immutable state
  // only: safe from any thread.
  void validate(const EngineRequest& request) const;
  // Queues a validated request at the back.
  void add(EngineRequest request, std::shared_ptr<RequestHandle> handle, Clock::time_point submitted);

  // One iteration (see above). Does nothing when idle().
  void step();
  bool idle() const { return running_.empty() && waiting_.empty(); }
  // Finishes every running and waiting request with Finished(Cancelled).
  void cancel_all();
  // After a failed step (the model pass threw): finishes every running request with
  // Finished(Error, error); waiting requests (no pages, nothing computed) stay queued.
  void fail_running(const std::string& error);
  // Drops every prefix-cache entry (pages still held by sequences stay).
  void clear_prefix_cache();

  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  // Page references the scheduler holds: block-table entries of all sequences plus P per cache
  // entry. Equals the sum of the pool's refcounts (the accounting invariant).
  int64_t page_references() const;
  int64_t cached_pages() const { return cached_pages_; }
  // Stream rows computed so far (sum of P * n_new over all passes).
  int64_t rows_computed() const { return rows_computed_; }
  // Adds this scheduler's counters to `stats` (running, waiting, pages, steps, per-P, histograms).
  void fill_stats(EngineStats& stats) const;

 private:
  struct Sequence;
  struct CacheEntry {
    int64_t model = 0;
    uint64_t key = 0;
    int64_t parent = -1;           // entry id of the previous page, -1 for page 0
    std::vector<int32_t> tokens;   // the page's page_tokens ids
    std::vector<int32_t> pages;    // one per stream row
    int64_t children = 0;          // entries whose parent is this one
    uint64_t last_use = 0;
  };

  int64_t pages_per_row(int64_t tokens) const { return (tokens + page_tokens_ - 1) / page_tokens_; }
  uint64_t page_key(uint64_t parent_key, const int32_t* tokens) const;
  // Longest chain of cache entries matching seq's tokens (at most max_pages pages).
  std::vector<int64_t> cache_lookup(int64_t model, const std::vector<int32_t>& tokens, int64_t max_pages) const;
  int64_t evictable_pages() const;
  bool evict_one();
  // Registers seq's computed full pages among its first `tokens` tokens in the cache (the prompt
  // while it runs; everything computed when it finishes normally).
  void cache_insert(Sequence& seq, int64_t tokens);
  void remove_entry(int64_t id);
  void touch(int64_t id, CacheEntry& e);  // marks e most recently used

  bool try_admit(Sequence& seq);
  // Gives `seq` pages for `tokens` tokens per row; may evict and preempt (never seq itself unless
  // it is the newest). Returns false when seq itself was preempted.
  bool grow(size_t index, int64_t tokens);
  void preempt(size_t index);
  void release_pages(Sequence& seq);
  void finish(Sequence& seq, FinishReason reason, const std::string& error = "");
  // The next token of seq from its logits row [V] (sampler, log-probabilities) into e; false on
  // a broken row. Touches only seq and scratch: sequences are picked in parallel.
  bool pick(Sequence& seq, const float* logits, std::vector<float>& scratch, EngineEvent& e) const;
  // Pushes the picked token, appends it, checks the stop conditions.
  void emit_token(Sequence& seq, EngineEvent e, bool ok, const float* weights);

  ModelConfig config_;
  std::vector<SchedulerModel> models_;
  KvPool& pool_;
  StepRunner& runner_;
  EngineOptions options_;
  int64_t page_tokens_, vocab_;

  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;  // admission order
  uint64_t admit_counter_ = 0;

  // Prefix cache.
  std::unordered_map<int64_t, CacheEntry> entries_;
  std::unordered_multimap<uint64_t, int64_t> by_key_;  // key (model mixed in) -> entry id
  std::set<std::pair<uint64_t, int64_t>> lru_;         // (last_use, entry id), oldest first
  int64_t next_entry_ = 0, cached_pages_ = 0;
  uint64_t use_clock_ = 0;

  // Reused buffers.
  std::vector<SequenceChunk> chunks_;
  std::vector<Sequence*> chunk_seq_;
  std::vector<std::vector<const std::vector<int32_t>*>> table_ptrs_;
  BatchOutputs out_;
  struct Pick {
    size_t chunk;
    EngineEvent event;
    bool ok;
  };
  std::vector<Pick> picks_;
  std::vector<std::vector<float>> scratch_;  // per pool thread: a logits row the sampler edits

  // Counters.
  int64_t steps_ = 0, preemptions_ = 0, rows_computed_ = 0;
  std::map<int64_t, EngineStats::PerStreams> per_streams_;
  Histogram step_seconds_;
};

// Histogram bounds for latencies in seconds: 1 ms .. 60 s.
std::vector<double> latency_bounds();

}  // namespace parscale
