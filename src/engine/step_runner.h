// The model pass the scheduler drives, behind an interface so the scheduling policy can be
// tested against a small deterministic double. Production: BatchForwardRunner below.
#pragma once
#include <span>

#include "engine/batch_forward.h"

namespace parscale {

class StepRunner {
 public:
  virtual ~StepRunner() = default;
  // Same contract as BatchForward::run: every stream row's block table holds at least
  // ceil((length + n_new) / page_tokens) pages (the scheduler reserves a prompt's pages at
  // admission, so a prefill chunk may see more); pages receiving new tokens have one holder.
  virtual void run(std::span<const SequenceChunk> batch, BatchOutputs& out) = 0;
};

// The production model pass: one BatchForward over the backbone and the pool.
class BatchForwardRunner : public StepRunner {
 public:
  BatchForwardRunner(const Backbone& backbone, KvPool& pool) : forward_(backbone, pool) {}
  void run(std::span<const SequenceChunk> batch, BatchOutputs& out) override { forward_.run(batch, out); }

 private:
  BatchForward forward_;
};

}  // namespace parscale
