#include "engine/engine_impl.h"

#include <string>

#include "core/error.h"

namespace parscale {

namespace {

int64_t pool_pages(const ModelConfig& config, const EngineOptions& o) {
  check(o.page_tokens > 0, "engine: page_tokens must be > 0, found " + std::to_string(o.page_tokens));
  check(o.max_queue >= 0, "engine: max_queue must be >= 0, found " + std::to_string(o.max_queue));
  if (o.kv_memory_bytes == 0)
    return 4 * ((config.max_position_embeddings + o.page_tokens - 1) / o.page_tokens);
  check(o.kv_memory_bytes > 0, "engine: KV memory must be > 0 bytes, found " + std::to_string(o.kv_memory_bytes));
  return KvPool::pages_for_bytes(config, o.kv_dtype, o.page_tokens, o.kv_memory_bytes);
}

}  // namespace

Engine::Impl::Impl(const ModelConfig& config, std::vector<EngineModel> models_in, std::vector<const Adapter*> adapters,
                   const RunnerFactory& make_runner, const EngineOptions& options)
    : models(std::move(models_in)), options_(options),
      pool_(config, options.kv_dtype, options.page_tokens, pool_pages(config, options)) {
  check(models.size() == adapters.size(), "engine: one adapter slot per model expected");
  std::vector<SchedulerModel> sm;
  for (size_t i = 0; i < models.size(); ++i) sm.push_back({models[i].streams, adapters[i]});
  runner_ = make_runner(pool_);
  scheduler_ = std::make_unique<Scheduler>(config, std::move(sm), pool_, *runner_, options_);
  snapshot_.kv_pages_total = pool_.pages_total();
  snapshot_.page_tokens = pool_.page_tokens();
  thread_ = std::thread([this] { loop(); });
}

Engine::Impl::~Impl() { shutdown(false); }

std::shared_ptr<RequestHandle> Engine::Impl::submit(EngineRequest request) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!accepting_) throw EngineError(EngineError::Kind::ShuttingDown, "the engine is shutting down");
  }
  scheduler_->validate(request);  // immutable state only
  std::shared_ptr<RequestHandle> handle;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!accepting_) throw EngineError(EngineError::Kind::ShuttingDown, "the engine is shutting down");
    const int64_t waiting = static_cast<int64_t>(inbox_.size()) + scheduler_waiting_;
    if (waiting >= options_.max_queue)
      throw EngineError(EngineError::Kind::QueueFull,
                        "the queue is full (" + std::to_string(waiting) + " requests waiting)");
    handle = std::make_shared<RequestHandle>(next_id_++);
    inbox_.push_back({std::move(request), handle, Scheduler::Clock::now()});
  }
  cv_.notify_all();
  return handle;
}

EngineStats Engine::Impl::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  EngineStats s = snapshot_;
  s.waiting += static_cast<int64_t>(inbox_.size());
  return s;
}

void Engine::Impl::shutdown(bool finish_running) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    accepting_ = false;
    if (!finish_running) cancel_all_ = true;
    stop_ = true;
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> join(join_mu_);
  if (thread_.joinable()) thread_.join();
}

void Engine::Impl::loop() {
  for (;;) {
    std::deque<Pending> incoming;
    bool cancel = false, stop = false;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return !inbox_.empty() || stop_ || cancel_all_ || !scheduler_->idle(); });
      incoming.swap(inbox_);
      cancel = cancel_all_;
      cancel_all_ = false;
      stop = stop_;
    }
    for (auto& p : incoming) scheduler_->add(std::move(p.request), std::move(p.handle), p.submitted);
    if (cancel) scheduler_->cancel_all();
    try {
      scheduler_->step();
    } catch (const std::exception& e) {
      // A failed model pass leaves the running sequences in an unknown state: end them
      // (Finished(Error)) rather than serve wrong tokens; queued requests stay, and the engine
      // keeps serving.
      scheduler_->fail_running(std::string("the model pass failed: ") + e.what());
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      EngineStats s;
      scheduler_->fill_stats(s);
      snapshot_ = std::move(s);
      scheduler_waiting_ = scheduler_->waiting();
      if (stop && scheduler_->idle() && inbox_.empty()) return;
    }
  }
}

}  // namespace parscale
