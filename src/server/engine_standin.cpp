// Stand-in for the few engine.h definitions the server uses (RequestHandle's event queue,
// Histogram, finish_reason_name) while src/engine/engine.cpp does not exist yet. CMake compiles
// this file only in that case; the engine's own definitions replace it.
#include <algorithm>

#include "engine/engine.h"

namespace parscale {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::ContextLimit: return "context_limit";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Error: return "error";
  }
  return "?";
}

bool RequestHandle::next(EngineEvent& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (finished_taken_) return false;
  if (!cv_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
  out = std::move(events_.front());
  events_.pop_front();
  if (out.kind == EngineEvent::Kind::Finished) finished_taken_ = true;
  return true;
}

void RequestHandle::cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_ = true;
}

bool RequestHandle::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancel_;
}

void RequestHandle::push(EngineEvent e) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

void Histogram::observe(double v) {
  if (counts.size() != bounds.size() + 1) counts.assign(bounds.size() + 1, 0);
  size_t i = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
  ++counts[i];
  sum += v;
  ++count;
}

}  // namespace parscale
