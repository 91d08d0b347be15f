#include "engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/threads.h"

#include "core/error.h"
#include "parscale/adapter.h"

namespace parscale {

struct Scheduler::Sequence {
  EngineRequest req;
  std::shared_ptr<RequestHandle> handle;
  Clock::time_point submitted;
  int64_t streams = 1;
  const Adapter* adapter = nullptr;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  int64_t prompt_len = 0;
  int64_t computed = 0;         // tokens whose K/V are in the pages (the chunk's `length`)
  std::vector<std::vector<int32_t>> tables;  // [P] block tables
  Sampler sampler;
  int64_t generated = 0;
  int64_t cached_prompt_tokens = 0;  // from the first admission
  bool admitted_once = false;
  bool prompt_done = false;          // the prompt has been computed once (prompt logprobs sent)
  std::vector<EngineEvent::Position> prompt_lp;
  int64_t cache_pages = 0;   // leading pages of `tables` that are prefix-cache entries
  int64_t cache_tail = -1;   // entry id of page cache_pages - 1
  uint64_t admitted = 0;     // admission order (renewed on re-admission)
  uint64_t last_served = 0;  // step that last ran a chunk of it
  bool done = false, preempted = false;

  Sequence(EngineRequest r, std::shared_ptr<RequestHandle> h, Clock::time_point t, const SchedulerModel& m)
      : req(std::move(r)), handle(std::move(h)), submitted(t), streams(m.streams), adapter(m.adapter),
        tokens(req.prompt), prompt_len(static_cast<int64_t>(req.prompt.size())),
        tables(static_cast<size_t>(m.streams)), sampler(req.sampling, 0) {}

  int64_t remaining() const { return static_cast<int64_t>(tokens.size()) - computed; }
};

namespace {

uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

// log p(chosen) and the n most likely tokens of a raw logits row (shared with the CLI's
// logprobs: sampling.h's top_logprobs).
float logprob_and_top(const float* logits, int64_t V, int n, int32_t chosen, std::vector<TokenLogprob>* top) {
  float lp = 0.0f;
  std::vector<std::pair<int32_t, float>> pairs;
  top_logprobs(logits, V, n, chosen, &lp, top ? &pairs : nullptr);
  if (top) {
    top->clear();
    for (const auto& [id, l] : pairs) top->push_back({id, l});
  }
  return lp;
}

}  // namespace

Scheduler::Scheduler(const ModelConfig& config, std::vector<SchedulerModel> models, KvPool& pool,
                     StepRunner& runner, const EngineOptions& options)
    : config_(config), models_(std::move(models)), pool_(pool), runner_(runner), options_(options),
      page_tokens_(pool.page_tokens()), vocab_(config.vocab_size) {
  check(!models_.empty(), "engine: no model to serve");
  check(options_.batch_rows > 0, "engine: batch_rows must be > 0, found " + std::to_string(options_.batch_rows));
  check(options_.prefill_rows_while_decoding >= -1,
        "engine: prefill_rows_while_decoding must be >= 0 (or -1: by the arithmetic), found " +
            std::to_string(options_.prefill_rows_while_decoding));
  if (options_.prefill_rows_while_decoding < 0) options_.prefill_rows_while_decoding = kPrefillRowsExact;  // (the Engine resolves -1 by its backbone)
  check(options_.max_running > 0, "engine: max_running must be > 0, found " + std::to_string(options_.max_running));
  step_seconds_.bounds = latency_bounds();
  step_seconds_.counts.assign(step_seconds_.bounds.size() + 1, 0);
}

Scheduler::~Scheduler() {
  for (auto& s : running_) release_pages(*s);
  clear_prefix_cache();
}

void Scheduler::validate(const EngineRequest& r) const {
  auto bad = [](const std::string& m) { throw EngineError(EngineError::Kind::InvalidRequest, m); };
  if (r.model < 0 || r.model >= static_cast<int64_t>(models_.size()))
    bad("model index " + std::to_string(r.model) + " is out of range (the engine serves " +
        std::to_string(models_.size()) + " models)");
  if (r.prompt.empty()) bad("the prompt is empty");
  for (size_t i = 0; i < r.prompt.size(); ++i)
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab_)
      bad("prompt token " + std::to_string(i) + " has id " + std::to_string(r.prompt[i]) +
          ", outside the vocabulary [0, " + std::to_string(vocab_) + ")");
  if (r.max_tokens < 0) bad("max_tokens must be >= 0, found " + std::to_string(r.max_tokens));
  const int64_t n = static_cast<int64_t>(r.prompt.size());
  if (n + r.max_tokens > config_.max_position_embeddings)
    bad("prompt (" + std::to_string(n) + " tokens) + max_tokens (" + std::to_string(r.max_tokens) +
        ") exceeds the context of " + std::to_string(config_.max_position_embeddings) + " tokens");
  try {
    r.sampling.validate();
  } catch (const Error& e) {
    bad(std::string("sampling: ") + e.what());
  }
  if (r.top_logprobs > 20) bad("top_logprobs must be <= 20, found " + std::to_string(r.top_logprobs));
  const int64_t P = models_[static_cast<size_t>(r.model)].streams;
  if (P > options_.batch_rows)
    bad("the model has " + std::to_string(P) + " streams, more than the " + std::to_string(options_.batch_rows) +
        " rows of one pass");
  // The last generated token is never fed back: the cache holds prompt + max_tokens - 1 tokens.
  const int64_t fed = std::max(n, n + r.max_tokens - 1);
  const int64_t pages = P * pages_per_row(fed);
  if (pages > pool_.pages_total())
    bad("the request needs " + std::to_string(pages) + " KV pages (" + std::to_string(fed) + " tokens x " +
        std::to_string(P) + " streams), more than the " + std::to_string(pool_.pages_total()) + " of the pool");
}

void Scheduler::add(EngineRequest request, std::shared_ptr<RequestHandle> handle, Clock::time_point submitted) {
  const SchedulerModel& m = models_[static_cast<size_t>(request.model)];
  auto& ps = per_streams_[m.streams];
  if (ps.time_to_first_token.bounds.empty()) {
    ps.time_to_first_token.bounds = latency_bounds();
    ps.time_to_first_token.counts.assign(ps.time_to_first_token.bounds.size() + 1, 0);
  }
  ++ps.requests_total;
  ps.prompt_tokens_total += static_cast<int64_t>(request.prompt.size());
  waiting_.push_back(std::make_unique<Sequence>(std::move(request), std::move(handle), submitted, m));
}

// ---- prefix cache ----

uint64_t Scheduler::page_key(uint64_t parent_key, const int32_t* tokens) const {
  uint64_t h = mix64(parent_key ^ 0x9e3779b97f4a7c15ull);
  for (int64_t i = 0; i < page_tokens_; ++i) h = mix64(h ^ static_cast<uint32_t>(tokens[i]));
  return h;
}

static uint64_t root_key(int64_t model) { return mix64(0x5ca1ab1eull + static_cast<uint64_t>(model)); }

std::vector<int64_t> Scheduler::cache_lookup(int64_t model, const std::vector<int32_t>& tokens, int64_t max_pages) const {
  std::vector<int64_t> chain;
  uint64_t key = root_key(model);
  int64_t parent = -1;
  for (int64_t i = 0; i < max_pages; ++i) {
    const int32_t* t = tokens.data() + i * page_tokens_;
    key = page_key(key, t);
    int64_t found = -1;
    auto [lo, hi] = by_key_.equal_range(key);
    for (auto it = lo; it != hi; ++it) {
      const CacheEntry& e = entries_.at(it->second);
      if (e.model == model && e.parent == parent && std::equal(e.tokens.begin(), e.tokens.end(), t)) {
        found = it->second;
        break;
      }
    }
    if (found < 0) break;
    chain.push_back(found);
    parent = found;
  }
  return chain;
}

// A cache entry is evictable when only the cache holds its pages. Whoever holds an entry's pages
// also holds its parent's (the chain is a prefix of its block tables), so every evictable entry
// can be reached leaf first.
int64_t Scheduler::evictable_pages() const {
  int64_t n = 0;
  for (const auto& [id, e] : entries_)
    if (pool_.refcount(e.pages[0]) == 1) n += static_cast<int64_t>(e.pages.size());
  return n;
}

bool Scheduler::evict_one() {
  // Oldest first; entries in use or with children are passed over (they are few near the old
  // end: in-use entries were touched when their sequence was admitted).
  for (const auto& [use, id] : lru_) {
    const CacheEntry& e = entries_.at(id);
    if (e.children == 0 && pool_.refcount(e.pages[0]) == 1) {
      remove_entry(id);
      return true;
    }
  }
  return false;
}

void Scheduler::touch(int64_t id, CacheEntry& e) {
  lru_.erase({e.last_use, id});
  e.last_use = ++use_clock_;
  lru_.insert({e.last_use, id});
}

void Scheduler::remove_entry(int64_t id) {
  CacheEntry& e = entries_.at(id);
  for (int32_t p : e.pages) pool_.release(p);
  cached_pages_ -= static_cast<int64_t>(e.pages.size());
  if (e.parent >= 0) --entries_.at(e.parent).children;
  lru_.erase({e.last_use, id});
  auto [lo, hi] = by_key_.equal_range(e.key);
  for (auto it = lo; it != hi; ++it)
    if (it->second == id) {
      by_key_.erase(it);
      break;
    }
  entries_.erase(id);
}

void Scheduler::clear_prefix_cache() {
  // Leaves first: repeatedly drop entries without children.
  while (!entries_.empty()) {
    std::vector<int64_t> leaves;
    for (const auto& [id, e] : entries_)
      if (e.children == 0) leaves.push_back(id);
    for (int64_t id : leaves) remove_entry(id);
  }
}

void Scheduler::cache_insert(Sequence& seq, int64_t tokens) {
  const int64_t full = std::min(seq.computed, tokens) / page_tokens_;
  uint64_t key = seq.cache_tail >= 0 ? entries_.at(seq.cache_tail).key : root_key(seq.req.model);
  while (seq.cache_pages < full) {
    const int64_t i = seq.cache_pages;
    const int32_t* t = seq.tokens.data() + i * page_tokens_;
    key = page_key(key, t);
    int64_t existing = -1;
    auto [lo, hi] = by_key_.equal_range(key);
    for (auto it = lo; it != hi; ++it) {
      const CacheEntry& e = entries_.at(it->second);
      if (e.model == seq.req.model && e.parent == seq.cache_tail && std::equal(e.tokens.begin(), e.tokens.end(), t)) {
        existing = it->second;
        break;
      }
    }
    if (existing >= 0) {
      // The same tokens were cached meanwhile: share those pages (same K/V) and free ours.
      CacheEntry& e = entries_.at(existing);
      for (size_t s = 0; s < seq.tables.size(); ++s) {
        pool_.retain(e.pages[s]);
        pool_.release(seq.tables[s][static_cast<size_t>(i)]);
        seq.tables[s][static_cast<size_t>(i)] = e.pages[s];
      }
      touch(existing, e);
    } else {
      CacheEntry e;
      e.model = seq.req.model;
      e.key = key;
      e.parent = seq.cache_tail;
      e.tokens.assign(t, t + page_tokens_);
      for (auto& table : seq.tables) {
        const int32_t p = table[static_cast<size_t>(i)];
        pool_.retain(p);
        e.pages.push_back(p);
      }
      e.last_use = ++use_clock_;
      if (e.parent >= 0) ++entries_.at(e.parent).children;
      cached_pages_ += static_cast<int64_t>(e.pages.size());
      existing = next_entry_++;
      by_key_.emplace(key, existing);
      lru_.insert({e.last_use, existing});
      entries_.emplace(existing, std::move(e));
    }
    seq.cache_tail = existing;
    ++seq.cache_pages;
  }
}

// ---- pages ----

int64_t Scheduler::page_references() const {
  int64_t n = cached_pages_;
  for (const auto& s : running_)
    for (const auto& t : s->tables) n += static_cast<int64_t>(t.size());
  return n;
}

void Scheduler::release_pages(Sequence& seq) {
  for (auto& t : seq.tables) {
    for (int32_t p : t) pool_.release(p);
    t.clear();
  }
  seq.computed = 0;
  seq.cache_pages = 0;
  seq.cache_tail = -1;
}

bool Scheduler::try_admit(Sequence& seq) {
  const int64_t P = seq.streams;
  const int64_t total = static_cast<int64_t>(seq.tokens.size());
  std::vector<int64_t> chain;
  // Prompt logprobs need the logits of every prompt position: such a prompt is computed in full.
  const bool may_reuse = options_.prefix_cache && !(seq.req.prompt_logprobs && !seq.prompt_done);
  // At least the last token is computed: its logits pick the next token.
  if (may_reuse) chain = cache_lookup(seq.req.model, seq.tokens, (total - 1) / page_tokens_);
  int64_t chain_evictable = 0;
  for (int64_t id : chain)
    if (pool_.refcount(entries_.at(id).pages[0]) == 1) chain_evictable += P;
  const int64_t need = P * (pages_per_row(total) - static_cast<int64_t>(chain.size()));
  if (need > pool_.pages_free() && need > pool_.pages_free() + evictable_pages() - chain_evictable) return false;

  for (int64_t id : chain) {
    CacheEntry& e = entries_.at(id);
    touch(id, e);
    for (size_t s = 0; s < seq.tables.size(); ++s) {
      pool_.retain(e.pages[s]);
      seq.tables[s].push_back(e.pages[s]);
    }
  }
  seq.cache_pages = static_cast<int64_t>(chain.size());
  seq.cache_tail = chain.empty() ? -1 : chain.back();
  seq.computed = seq.cache_pages * page_tokens_;
  while (pool_.pages_free() < need)
    if (!evict_one()) throw Error("engine: internal error: prefix cache eviction fell short");
  for (auto& t : seq.tables)
    while (static_cast<int64_t>(t.size()) < pages_per_row(total)) t.push_back(pool_.allocate());
  if (!seq.admitted_once) {
    seq.admitted_once = true;
    seq.cached_prompt_tokens = seq.computed;
    per_streams_[P].cached_prompt_tokens_total += seq.computed;
  }
  return true;
}

void Scheduler::preempt(size_t index) {
  std::unique_ptr<Sequence> seq = std::move(running_[index]);
  running_.erase(running_.begin() + static_cast<std::ptrdiff_t>(index));
  release_pages(*seq);
  seq->preempted = true;
  ++preemptions_;
  waiting_.push_front(std::move(seq));
}

bool Scheduler::grow(size_t index, int64_t tokens) {
  Sequence* seq = running_[index].get();
  const int64_t per_row = pages_per_row(tokens) - static_cast<int64_t>(seq->tables[0].size());
  if (per_row <= 0) return true;
  const int64_t need = per_row * seq->streams;
  while (pool_.pages_free() < need) {
    if (evict_one()) continue;
    // Preempt the newest running sequence (running_ is in admission order).
    const size_t victim = running_.size() - 1;
    const bool self = running_[victim].get() == seq;
    preempt(victim);
    if (self) return false;
  }
  for (auto& t : seq->tables)
    for (int64_t i = 0; i < per_row; ++i) t.push_back(pool_.allocate());
  return true;
}

// ---- events ----

void Scheduler::finish(Sequence& seq, FinishReason reason, const std::string& error) {
  // A request that ended normally leaves the full pages of everything it computed (prompt and
  // the generated tokens fed back; the last sampled token has no K/V) in the prefix cache, so a
  // follow-up turn (prompt + answer + new text) computes only its new tokens.
  if (options_.prefix_cache && (reason == FinishReason::Stop || reason == FinishReason::Length))
    cache_insert(seq, seq.computed);
  release_pages(seq);
  seq.done = true;
  EngineEvent e;
  e.kind = EngineEvent::Kind::Finished;
  e.finish = reason;
  e.prompt_tokens = seq.prompt_len;
  e.generated_tokens = seq.generated;
  e.cached_prompt_tokens = seq.cached_prompt_tokens;
  e.error = error;
  seq.handle->push(std::move(e));
}

bool Scheduler::pick(Sequence& seq, const float* logits, std::vector<float>& scratch, EngineEvent& e) const {
  scratch.assign(logits, logits + vocab_);
  e.kind = EngineEvent::Kind::Token;
  try {
    // Presence / frequency penalties count the generated tokens only.
    e.token = seq.sampler.sample(scratch.data(), vocab_, seq.tokens, static_cast<size_t>(seq.prompt_len));
    // The log-softmax over the vocabulary only when asked (top_logprobs >= 0): O(V) exps a token.
    if (seq.req.top_logprobs >= 0)
      e.logprob = logprob_and_top(logits, vocab_, seq.req.top_logprobs, e.token, seq.req.top_logprobs > 0 ? &e.top : nullptr);
  } catch (const Error& err) {
    e.error = std::string("the model's logits for the next token are broken: ") + err.what();
    return false;
  }
  return true;
}

void Scheduler::emit_token(Sequence& seq, EngineEvent e, bool ok, const float* weights) {
  if (!ok) {
    // A broken logits row (NaN / +inf) ends this request only.
    finish(seq, FinishReason::Error, e.error);
    return;
  }
  const int32_t id = e.token;
  if (seq.req.stream_weights) e.stream_weights.assign(weights, weights + seq.streams);
  seq.tokens.push_back(id);
  ++seq.generated;
  auto& ps = per_streams_[seq.streams];
  ++ps.generation_tokens_total;
  if (seq.generated == 1)
    ps.time_to_first_token.observe(std::chrono::duration<double>(Clock::now() - seq.submitted).count());
  seq.handle->push(std::move(e));

  const std::vector<int64_t>& eos = seq.req.eos_ids.empty() ? config_.eos_token_ids : seq.req.eos_ids;
  if (!seq.req.ignore_eos && std::find(eos.begin(), eos.end(), id) != eos.end())
    finish(seq, FinishReason::Stop);
  else if (seq.generated >= seq.req.max_tokens)
    finish(seq, FinishReason::Length);
  else if (static_cast<int64_t>(seq.tokens.size()) >= config_.max_position_embeddings)
    finish(seq, FinishReason::ContextLimit);
}

void Scheduler::fail_running(const std::string& error) {
  for (auto& s : running_)
    if (!s->done) finish(*s, FinishReason::Error, error);  // (done: finished before the throw)
  running_.clear();
}

void Scheduler::cancel_all() {
  for (auto& s : running_) finish(*s, FinishReason::Cancelled);
  running_.clear();
  for (auto& s : waiting_) finish(*s, FinishReason::Cancelled);
  waiting_.clear();
}

// ---- the step ----

void Scheduler::step() {
  const auto t0 = Clock::now();
  // 1. Cancelled requests leave, their pages return.
  for (auto& s : running_)
    if (s->handle->cancelled()) finish(*s, FinishReason::Cancelled);
  for (auto& s : waiting_)
    if (s->handle->cancelled()) finish(*s, FinishReason::Cancelled);
  std::erase_if(running_, [](const auto& s) { return s->done; });
  std::erase_if(waiting_, [](const auto& s) { return s->done; });

  // 2. FIFO admission while pages fit; the head is never overtaken.
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
    Sequence& head = *waiting_.front();
    if (!try_admit(head)) break;
    head.admitted = ++admit_counter_;
    head.preempted = false;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  if (running_.empty()) return;

  // 3. Plan: decode tokens first (least recently served first), then prefill chunks in
  // admission order, within the row budget. Growing a sequence may preempt newer ones.
  std::vector<Sequence*> order;
  for (auto& s : running_) order.push_back(s.get());
  std::stable_sort(order.begin(), order.end(), [](const Sequence* a, const Sequence* b) {
    const bool da = a->remaining() == 1, db = b->remaining() == 1;
    if (da != db) return da;
    if (da) return a->last_served < b->last_served || (a->last_served == b->last_served && a->admitted < b->admitted);
    return a->admitted < b->admitted;
  });
  // While any sequence decodes, prompt rows are capped (prefill_rows_while_decoding) so that a
  // long prompt enters in small chunks and the decode step stays short; the first prefill chunk
  // of a step always gets at least one token, so prompts progress whatever the cap.
  std::vector<std::pair<Sequence*, int64_t>> plan;
  int64_t budget = options_.batch_rows;
  const bool decoding = std::any_of(order.begin(), order.end(), [](const Sequence* s) { return s->remaining() == 1; });
  int64_t prefill_budget = decoding && options_.prefill_rows_while_decoding > 0 ? options_.prefill_rows_while_decoding
                                                                                 : options_.batch_rows;
  bool prefill_planned = false;
  for (Sequence* s : order) {
    if (s->preempted) continue;
    const bool prefill = s->remaining() > 1;
    int64_t rows_allowed = budget;
    if (prefill) rows_allowed = std::min(budget, prefill_planned ? prefill_budget : std::max(prefill_budget, s->streams));
    const int64_t n = std::min(s->remaining(), rows_allowed / s->streams);
    if (n <= 0) continue;
    size_t index = 0;
    while (running_[index].get() != s) ++index;
    if (!grow(index, s->computed + n)) continue;
    plan.emplace_back(s, n);
    budget -= n * s->streams;
    if (prefill) {
      prefill_budget -= n * s->streams;
      prefill_planned = true;
    }
  }
  std::erase_if(plan, [](const auto& p) { return p.first->preempted; });

  // 4. Build the batch.
  chunks_.clear();
  chunk_seq_.clear();
  table_ptrs_.resize(plan.size());
  int64_t rows = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& s = *plan[i].first;
    const int64_t n = plan[i].second;
    auto& ptrs = table_ptrs_[i];
    ptrs.clear();
    for (const auto& t : s.tables) ptrs.push_back(&t);
    SequenceChunk c;
    c.adapter = s.adapter;
    c.block_tables = ptrs.data();
    c.length = s.computed;
    c.tokens = s.tokens.data() + s.computed;
    c.n_new = n;
    const bool completes = s.computed + n == static_cast<int64_t>(s.tokens.size());
    const bool want_prompt = s.req.prompt_logprobs && !s.prompt_done && s.computed < s.prompt_len - 1;
    c.outputs = want_prompt ? SequenceChunk::Outputs::All
                            : (completes && s.generated < s.req.max_tokens ? SequenceChunk::Outputs::Last
                                                                            : SequenceChunk::Outputs::None);
    chunks_.push_back(c);
    chunk_seq_.push_back(&s);
    rows += n * s.streams;
  }
  if (chunks_.empty()) return;

  // 5. The model pass.
  runner_.run(std::span<const SequenceChunk>(chunks_), out_);
  rows_computed_ += rows;
  ++steps_;

  // 6. Results, per sequence in batch order: prompt logprobs, then the next token.
  std::vector<int64_t> last_row(chunks_.size(), -1);
  for (int64_t r = 0; r < out_.rows; ++r) {
    const size_t si = static_cast<size_t>(out_.row_sequence[static_cast<size_t>(r)]);
    Sequence& s = *chunk_seq_[si];
    const int64_t pos = out_.row_position[static_cast<size_t>(r)];
    const float* logits = out_.logits.data() + r * vocab_;
    if (pos == static_cast<int64_t>(s.tokens.size()) - 1) last_row[si] = r;
    if (s.req.prompt_logprobs && !s.prompt_done && pos < s.prompt_len - 1 &&
        pos == static_cast<int64_t>(s.prompt_lp.size())) {
      EngineEvent::Position p;
      try {
        p.logprob = logprob_and_top(logits, vocab_, std::max(0, s.req.top_logprobs),
                                    s.tokens[static_cast<size_t>(pos + 1)], &p.top);
      } catch (const Error&) {
        p.logprob = std::numeric_limits<float>::quiet_NaN();  // a broken row; the token step ends it
      }
      s.prompt_lp.push_back(std::move(p));
    }
  }
  picks_.clear();
  for (size_t i = 0; i < chunks_.size(); ++i) {
    Sequence& s = *chunk_seq_[i];
    s.computed += chunks_[i].n_new;
    s.last_served = static_cast<uint64_t>(steps_);
    if (options_.prefix_cache) cache_insert(s, s.prompt_len);
    if (s.computed < static_cast<int64_t>(s.tokens.size())) continue;
    if (!s.prompt_done) {
      s.prompt_done = true;
      if (s.req.prompt_logprobs) {
        EngineEvent e;
        e.kind = EngineEvent::Kind::PromptLogprobs;
        e.prompt = std::move(s.prompt_lp);
        s.prompt_lp.clear();
        s.handle->push(std::move(e));
      }
    }
    if (s.generated >= s.req.max_tokens) {
      finish(s, FinishReason::Length);
      continue;
    }
    if (last_row[i] < 0) throw Error("engine: internal error: the model pass returned no logits for a sequence");
    picks_.push_back({i, EngineEvent{}, false});
  }
  // Next tokens: sampling and log-softmax over V per sequence, independent (each sequence has
  // its own sampler), so in parallel; the events then go out in batch order.
  const int64_t n_picks = static_cast<int64_t>(picks_.size());
  scratch_.resize(static_cast<size_t>(num_threads()));
  parallel_for(n_picks, 1, [&](int64_t kb, int64_t ke, int thread) {
    for (int64_t k = kb; k < ke; ++k) {
      Pick& p = picks_[static_cast<size_t>(k)];
      const int64_t r = last_row[p.chunk];
      p.ok = pick(*chunk_seq_[p.chunk], out_.logits.data() + r * vocab_, scratch_[static_cast<size_t>(thread)], p.event);
    }
  });
  for (Pick& p : picks_) {
    Sequence& s = *chunk_seq_[p.chunk];
    const int64_t r = last_row[p.chunk];
    const float* weights = s.req.stream_weights
                               ? out_.stream_weights.data() + out_.row_weight_offset[static_cast<size_t>(r)]
                               : nullptr;
    emit_token(s, std::move(p.event), p.ok, weights);
  }
  std::erase_if(running_, [](const auto& s) { return s->done; });
  step_seconds_.observe(std::chrono::duration<double>(Clock::now() - t0).count());
}

void Scheduler::fill_stats(EngineStats& st) const {
  st.running += running();
  st.waiting += waiting();
  st.kv_pages_used = pool_.pages_used();
  st.kv_pages_total = pool_.pages_total();
  st.kv_pages_cached = cached_pages_;
  st.page_tokens = page_tokens_;
  st.steps = steps_;
  st.preemptions = preemptions_;
  st.rows_computed = rows_computed_;
  st.per_streams = per_streams_;
  for (const auto& s : running_) ++st.per_streams[s->streams].running;
  for (const auto& s : waiting_) ++st.per_streams[s->streams].waiting;
  st.step_seconds = step_seconds_;
}

}  // namespace parscale
