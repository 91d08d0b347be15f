// Engine::Impl: the engine thread around the Scheduler, the thread-safe inbox and the stats
// snapshot. Private to src/engine (and the tests, which drive it with a test double of the
// model pass through `RunnerFactory`).
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/scheduler.h"
#include "engine/step_runner.h"
#include "model/config.h"
#include "model/kv_pool.h"

namespace parscale {

struct Engine::Impl {
  using RunnerFactory = std::function<std::unique_ptr<StepRunner>(KvPool&)>;

  // models[i] is served with adapters[i] (null for P = 1). Sizes the pool from options
  // (kv_memory_bytes == 0: 4 sequences of the full context at P = 1), creates the runner over
  // it and starts the engine thread. Throws parscale::Error on bad options.
  Impl(const ModelConfig& config, std::vector<EngineModel> models, std::vector<const Adapter*> adapters,
       const RunnerFactory& make_runner, const EngineOptions& options);
  ~Impl();  // shutdown(false)

  std::shared_ptr<RequestHandle> submit(EngineRequest request);
  EngineStats stats() const;
  void shutdown(bool finish_running);

  std::vector<EngineModel> models;
  std::shared_ptr<const Backbone> backbone;                // set by Engine (null in tests)
  std::vector<std::shared_ptr<const Adapter>> keep_alive;  // the adapters behind `models`

 private:
  struct Pending {
    EngineRequest request;
    std::shared_ptr<RequestHandle> handle;
    Scheduler::Clock::time_point submitted;
  };
  void loop();

  EngineOptions options_;
  KvPool pool_;
  std::unique_ptr<StepRunner> runner_;
  std::unique_ptr<Scheduler> scheduler_;  // engine thread only (validate() from any thread)

  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::deque<Pending> inbox_;
  bool accepting_ = true, stop_ = false, cancel_all_ = false;
  int64_t scheduler_waiting_ = 0;  // as of the last step
  uint64_t next_id_ = 1;
  EngineStats snapshot_;

  std::mutex join_mu_;
  std::thread thread_;
};

}  // namespace parscale
