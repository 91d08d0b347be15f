#include "research/plots.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace parscale::research {
namespace {

std::string stream_color(double p) {
  if (p <= 1) return "#1f77b4";
  if (p <= 2) return "#7fb8e0";
  if (p <= 4) return "#f08a5d";
  if (p <= 8) return "#d62728";
  return "#7b2d8e";
}

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace

svg::Figure scaling_law_figure(const FitResult& fit, const std::string& title) {
  std::map<double, std::vector<const FitRow*>> by_p;
  double nmin = 1e300, nmax = 0;
  for (const FitRow& r : fit.rows) {
    by_p[r.row.streams].push_back(&r);
    nmin = std::min(nmin, r.row.params);
    nmax = std::max(nmax, r.row.params);
  }
  svg::Panel panel;
  panel.title = "L = " + fmt("%.4f", fit.law.E) + " + (" + fmt("%.4g", fit.law.A) + " / (N (" +
                fmt("%.4f", fit.law.k) + " ln P + 1)))^" + fmt("%.4f", fit.law.alpha) +
                ",   R^2 = " + fmt("%.4f", fit.r2);
  panel.x_label = "Parameters N (non-embedding, ParScale included; log scale)";
  panel.y_label = "Final loss";
  panel.log_x = true;
  panel.x_as_count = true;
  for (const auto& [p, rows] : by_p) {
    svg::Series curve;
    curve.color = stream_color(p);
    curve.marker = svg::Marker::none;
    curve.line_width = 1.6;
    const double lo = nmin / 1.15, hi = nmax * 1.15;
    for (int i = 0; i <= 60; ++i) {
      const double n = lo * std::pow(hi / lo, i / 60.0);
      curve.x.push_back(n);
      curve.y.push_back(predict_loss(fit.law, n, p));
    }
    svg::Series points;
    points.label = "P = " + fmt("%g", p);
    points.color = stream_color(p);
    points.line = false;
    points.marker = p <= 1 ? svg::Marker::circle : svg::Marker::star;
    for (const FitRow* r : rows) {
      points.x.push_back(r->row.params);
      points.y.push_back(r->row.loss);
    }
    panel.series.push_back(curve);
    panel.series.push_back(points);
  }
  svg::Figure figure;
  figure.title = title;
  figure.columns = 1;
  figure.panel_width = 760;
  figure.panel_height = 480;
  figure.panels.push_back(panel);
  return figure;
}

svg::Figure cost_comparison_figure(const PaperComparison& comparison) {
  std::vector<const BatchResult*> results;
  for (const BatchResult& br : comparison.per_batch) results.push_back(&br);
  results.push_back(&comparison.batch_averaged);
  const auto& s = comparison.settings;
  svg::Figure figure;
  figure.title = "Loss vs inference cost: parallel scaling (gray, P = 1 to " +
                 std::to_string(s.target_streams) + ") vs parameter scaling (blue), " +
                 s.hardware.name;
  figure.columns = static_cast<int>(results.size());
  figure.panel_width = 330;
  figure.panel_height = 300;
  std::vector<svg::Panel> memory_row, latency_row;
  for (int metric = 0; metric < 2; ++metric) {
    for (const BatchResult* br : results) {
      svg::Panel panel;
      panel.title = br->batch == 0 ? "mean over batch sizes" : "batch size = " + std::to_string(br->batch);
      panel.x_label = metric == 0 ? "Memory (GiB)" : "Latency (s)";
      panel.y_label = "Loss";
      panel.legend = br == results.front();
      auto value = [&](const CostPoint& p) {
        return metric == 0 ? p.memory_bytes / (1024.0 * 1024.0 * 1024.0) : p.latency_s;
      };
      // Parameter scaling: the P = 1 points of the models, joined.
      svg::Series params;
      params.color = "#1f77b4";
      params.line_width = 2.6;
      params.marker = svg::Marker::none;
      for (const CostPoint& p : br->points)
        if (p.streams == 1) {
          params.x.push_back(value(p));
          params.y.push_back(p.loss);
        }
      panel.series.push_back(params);
      // Parallel scaling: each model's path over P.
      for (const std::string& m : s.models) {
        svg::Series path;
        path.color = "#8c8c8c";
        path.marker = svg::Marker::none;
        path.line_width = 1.4;
        for (const CostPoint& p : br->points)
          if (p.model == m) {
            path.x.push_back(value(p));
            path.y.push_back(p.loss);
          }
        panel.series.push_back(path);
      }
      for (long P : s.streams) {
        svg::Series marks;
        marks.label = "P = " + std::to_string(P);
        marks.color = stream_color(static_cast<double>(P));
        marks.line = false;
        marks.marker = P == 1 ? svg::Marker::circle : svg::Marker::star;
        marks.marker_size = P == 1 ? 5 : 4;
        for (const CostPoint& p : br->points)
          if (p.streams == P) {
            marks.x.push_back(value(p));
            marks.y.push_back(p.loss);
          }
        panel.series.push_back(marks);
      }
      const EqualLossComparison& c = br->comparison;
      const double base = metric == 0 ? c.base_memory_bytes / (1024.0 * 1024.0 * 1024.0) : c.base_latency_s;
      const double param = metric == 0 ? c.parameter_memory_bytes / (1024.0 * 1024.0 * 1024.0)
                                       : c.parameter_latency_s;
      const double ratio = metric == 0 ? c.memory_ratio() : c.latency_ratio();
      svg::Arrow arrow;
      arrow.x0 = base;
      arrow.x1 = param;
      arrow.y0 = arrow.y1 = c.target_loss;
      arrow.text = fmt("%.1fx less ", ratio) + (metric == 0 ? "memory" : "latency") + " incr.";
      panel.arrows.push_back(arrow);
      (metric == 0 ? memory_row : latency_row).push_back(panel);
    }
  }
  for (auto& p : memory_row) figure.panels.push_back(p);
  for (auto& p : latency_row) figure.panels.push_back(p);
  return figure;
}

}  // namespace parscale::research
