// The paper's inference-cost comparison (Figures 1 and 4 of arXiv 2505.10475): parallel scaling
// (a base model going P = 1 -> 8) against parameter scaling (moving along the P = 1 curve of the
// 1.6B / 2.8B / 4.4B models to the same loss), at equal loss. docs/COST_MODEL.md explains it.
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "research/cost_model.h"
#include "research/hardware.h"

namespace parscale::research {

struct ComparisonSettings {
  std::vector<std::string> models{"1.6B", "2.8B", "4.4B"};  // paper_model_shape names, base first
  std::vector<long> streams{1, 2, 4, 8};
  std::vector<long> batches{1, 2, 4, 8};
  // (input, output) token pairs; every cost is the mean over them (Fig. 1: input + output tokens
  // in {128, 256, 512, 1024}, i.e. equal input and output lengths of 64 ... 512).
  std::vector<std::pair<long, long>> lengths{{64, 64}, {128, 128}, {256, 256}, {512, 512}};
  long prefix_tokens = 48;
  long target_streams = 8;  // the base model's P that parameter scaling has to match
  Hardware hardware;        // upstream: a100-sxm-80gb, efficiencies 0.7 / 0.9
  Precision precision;      // upstream: 16-bit weights, activations and KV cache
};

// Loss of a model shape at P streams (N = its scaling-law parameter count).
using LossLookup = std::function<double(const ModelShape& shape, long streams, double params)>;

struct CostPoint {
  std::string model;
  long streams = 1;
  double params = 0;  // N (scaling-law parameter count)
  double loss = 0;
  double memory_bytes = 0;  // mean over the length pairs (and batches, for the average)
  double latency_s = 0;
};

struct EqualLossComparison {
  double target_loss = 0;          // loss of the base model at target_streams
  double base_memory_bytes = 0, base_latency_s = 0;          // base model, P = 1
  double parallel_memory_bytes = 0, parallel_latency_s = 0;  // base model, P = target
  double parameter_memory_bytes = 0, parameter_latency_s = 0;  // P = 1 curve at target_loss
  bool extrapolated = false;  // target_loss lies outside the P = 1 models' loss range
  double memory_ratio() const {
    return (parameter_memory_bytes - base_memory_bytes) / (parallel_memory_bytes - base_memory_bytes);
  }
  double latency_ratio() const {
    return (parameter_latency_s - base_latency_s) / (parallel_latency_s - base_latency_s);
  }
};

struct BatchResult {
  long batch = 0;  // 0: costs averaged over all batches (Figure 1)
  std::vector<CostPoint> points;  // models x streams, in settings order
  EqualLossComparison comparison;
};

struct PaperComparison {
  ComparisonSettings settings;
  std::vector<BatchResult> per_batch;  // Figure 4 (a)-(h)
  BatchResult batch_averaged;          // Figure 1 (3)
};

PaperComparison run_paper_comparison(const ComparisonSettings& settings, const LossLookup& loss);

// Piecewise-linear value at `x` of the curve through (xs[i], ys[i]); xs must be strictly monotone.
// Outside the range the nearest segment is extended; `extrapolated` says so.
double interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double x,
                   bool* extrapolated = nullptr);

}  // namespace parscale::research
