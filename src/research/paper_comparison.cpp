#include "research/paper_comparison.h"

#include <cmath>

#include "core/error.h"

namespace parscale::research {

double interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double x,
                   bool* extrapolated) {
  check(xs.size() == ys.size() && xs.size() >= 2, "interpolate: need >= 2 points");
  const bool increasing = xs.back() > xs.front();
  for (size_t i = 0; i + 1 < xs.size(); ++i)
    check(increasing ? xs[i + 1] > xs[i] : xs[i + 1] < xs[i],
          "interpolate: x values must be strictly monotone");
  size_t seg = xs.size() - 2;
  bool outside = true;
  for (size_t i = 0; i + 1 < xs.size(); ++i) {
    const double lo = std::min(xs[i], xs[i + 1]), hi = std::max(xs[i], xs[i + 1]);
    if (x >= lo && x <= hi) {
      seg = i;
      outside = false;
      break;
    }
  }
  if (outside) {
    const bool before = increasing ? x < xs.front() : x > xs.front();
    seg = before ? 0 : xs.size() - 2;
  }
  if (extrapolated) *extrapolated = outside;
  const double t = (x - xs[seg]) / (xs[seg + 1] - xs[seg]);
  return ys[seg] + t * (ys[seg + 1] - ys[seg]);
}

namespace {

EqualLossComparison compare_at_equal_loss(const ComparisonSettings& s,
                                          const std::vector<CostPoint>& points) {
  auto find = [&](const std::string& model, long streams) -> const CostPoint& {
    for (const CostPoint& p : points)
      if (p.model == model && p.streams == streams) return p;
    throw Error("paper comparison: no cost point for " + model + " at P=" + std::to_string(streams));
  };
  const std::string& base = s.models.front();
  EqualLossComparison c;
  const CostPoint& b1 = find(base, 1);
  const CostPoint& bt = find(base, s.target_streams);
  c.target_loss = bt.loss;
  c.base_memory_bytes = b1.memory_bytes;
  c.base_latency_s = b1.latency_s;
  c.parallel_memory_bytes = bt.memory_bytes;
  c.parallel_latency_s = bt.latency_s;
  // The P = 1 curve: (loss, cost) of each model, losses falling with size; cost at the target
  // loss by linear interpolation between the neighbouring models, as the figure's blue arrows.
  std::vector<double> losses, memory, latency;
  for (const std::string& m : s.models) {
    const CostPoint& p = find(m, 1);
    losses.push_back(p.loss);
    memory.push_back(p.memory_bytes);
    latency.push_back(p.latency_s);
  }
  bool extrapolated_m = false, extrapolated_l = false;
  c.parameter_memory_bytes = interpolate(losses, memory, c.target_loss, &extrapolated_m);
  c.parameter_latency_s = interpolate(losses, latency, c.target_loss, &extrapolated_l);
  c.extrapolated = extrapolated_m || extrapolated_l;
  return c;
}

}  // namespace

PaperComparison run_paper_comparison(const ComparisonSettings& settings, const LossLookup& loss) {
  check(settings.models.size() >= 2, "paper comparison: need at least two model sizes");
  check(!settings.batches.empty() && !settings.lengths.empty(),
        "paper comparison: need at least one batch size and one length pair");
  bool has_one = false, has_target = false;
  for (long p : settings.streams) {
    has_one |= p == 1;
    has_target |= p == settings.target_streams;
  }
  check(has_one && has_target, "paper comparison: the stream list must contain 1 and the target P=" +
                                   std::to_string(settings.target_streams));
  PaperComparison result;
  result.settings = settings;
  const double nb = static_cast<double>(settings.batches.size());
  const double nl = static_cast<double>(settings.lengths.size());
  for (long batch : settings.batches) {
    BatchResult br;
    br.batch = batch;
    for (const std::string& name : settings.models) {
      const ModelShape shape = paper_model_shape(name);
      for (long p : settings.streams) {
        CostPoint cp;
        cp.model = name;
        cp.streams = p;
        cp.params = shape.scaling_law_params(p, settings.prefix_tokens);
        cp.loss = loss(shape, p, cp.params);
        for (const auto& [input, output] : settings.lengths) {
          Workload w{batch, p, settings.prefix_tokens, input, output};
          CostEstimate e = predict_cost(shape, w, settings.hardware, settings.precision);
          cp.memory_bytes += e.memory_bytes / nl;
          cp.latency_s += e.latency_s / nl;
        }
        br.points.push_back(cp);
      }
    }
    br.comparison = compare_at_equal_loss(settings, br.points);
    result.per_batch.push_back(br);
  }
  // Figure 1: every point's cost averaged over the batches too, then compared.
  BatchResult avg;
  avg.batch = 0;
  avg.points = result.per_batch.front().points;
  for (size_t i = 0; i < avg.points.size(); ++i) {
    avg.points[i].memory_bytes = 0;
    avg.points[i].latency_s = 0;
    for (const BatchResult& br : result.per_batch) {
      avg.points[i].memory_bytes += br.points[i].memory_bytes / nb;
      avg.points[i].latency_s += br.points[i].latency_s / nb;
    }
  }
  avg.comparison = compare_at_equal_loss(settings, avg.points);
  result.batch_averaged = avg;
  return result;
}

}  // namespace parscale::research
