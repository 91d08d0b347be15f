// The engine's client-side types: RequestHandle (event queue), Histogram, finish reasons.
#include <algorithm>

#include "engine/engine.h"
#include "engine/scheduler.h"

namespace parscale {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::ContextLimit: return "context_limit";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "unknown";
}

bool RequestHandle::next(EngineEvent& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  if (finished_taken_) return false;
  if (events_.empty() && timeout.count() <= 0) return false;  // poll: no timed wait
  if (!cv_.wait_for(lk, timeout, [&] { return !events_.empty(); })) return false;
  out = std::move(events_.front());
  events_.pop_front();
  if (out.kind == EngineEvent::Kind::Finished) finished_taken_ = true;
  return true;
}

void RequestHandle::cancel() {
  std::lock_guard<std::mutex> lk(mu_);
  cancel_ = true;
}

bool RequestHandle::cancelled() const {
  std::lock_guard<std::mutex> lk(mu_);
  return cancel_;
}

void RequestHandle::push(EngineEvent e) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Histogram::observe(double v) {
  if (counts.size() != bounds.size() + 1) counts.assign(bounds.size() + 1, 0);
  const size_t bucket = static_cast<size_t>(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin());
  ++counts[bucket];
  sum += v;
  ++count;
}

std::vector<double> latency_bounds() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0};
}

}  // namespace parscale
