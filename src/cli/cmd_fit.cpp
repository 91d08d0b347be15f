// `parscale fit`: fits the parallel scaling law L(N, P) = E + (A / (N (k ln P + 1)))^alpha to rows
// of (N, P, loss), as the ParScale paper does, and prints constants, R^2, residuals, predictions.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "cli/registry.h"
#include "core/error.h"
#include "research/plots.h"
#include "research/scaling_fit.h"

namespace {

using namespace parscale;
using namespace parscale::research;

struct FitOpts {
  std::string data;
  std::vector<std::string> predict;
  bool json = false;
  std::string plot;
  std::string title;
  double huber_delta = 1e-3;
};

struct Query {
  double params, streams;
};

Query parse_query(const std::string& text) {
  const auto comma = text.find(',');
  check(comma != std::string::npos, "--predict '" + text + "': expected N,P (e.g. 1.6e9,8)");
  Query q{};
  try {
    size_t used = 0;
    const std::string n = text.substr(0, comma), p = text.substr(comma + 1);
    q.params = std::stod(n, &used);
    check(used == n.size(), "");
    q.streams = std::stod(p, &used);
    check(used == p.size(), "");
  } catch (const std::exception&) {
    throw Error("--predict '" + text + "': expected two numbers N,P (e.g. 1.6e9,8)");
  }
  check(q.params > 0, "--predict '" + text + "': N must be > 0");
  check(q.streams >= 1, "--predict '" + text + "': P must be >= 1");
  return q;
}

int run_fit(const FitOpts& o) {
  std::vector<Query> queries;
  for (const std::string& q : o.predict) queries.push_back(parse_query(q));
  const std::vector<ScalingRow> rows = load_scaling_rows(o.data);
  FitOptions options;
  options.huber_delta = o.huber_delta;
  const FitResult fit = fit_scaling_law(rows, options);
  std::set<double> streams;
  for (const ScalingRow& r : rows) streams.insert(r.streams);
  if (!o.plot.empty()) {
    svg::write(scaling_law_figure(fit, o.title.empty() ? "Parallel scaling law fit: " + o.data : o.title),
               o.plot);
  }
  if (o.json) {
    nlohmann::json j;
    j["data"] = o.data;
    j["law"] = {{"E", fit.law.E}, {"A", fit.law.A}, {"k", fit.law.k}, {"alpha", fit.law.alpha}};
    j["r2"] = fit.r2;
    j["r2_log"] = fit.r2_log;
    j["objective"] = fit.objective;
    j["huber_delta"] = o.huber_delta;
    j["starts"] = fit.starts;
    j["starts_converged"] = fit.starts_succeeded;
    j["rows"] = nlohmann::json::array();
    for (const FitRow& r : fit.rows)
      j["rows"].push_back({{"N", r.row.params}, {"P", r.row.streams}, {"loss", r.row.loss},
                           {"predicted", r.predicted}, {"residual", r.residual}});
    j["equivalent_params_multiplier"] = nlohmann::json::object();
    for (double p : streams)
      j["equivalent_params_multiplier"][std::to_string(static_cast<long>(p))] =
          equivalent_params(fit.law, 1.0, p);
    j["predictions"] = nlohmann::json::array();
    for (const Query& q : queries)
      j["predictions"].push_back({{"N", q.params}, {"P", q.streams},
                                  {"loss", predict_loss(fit.law, q.params, q.streams)},
                                  {"equivalent_N", equivalent_params(fit.law, q.params, q.streams)}});
    if (!o.plot.empty()) j["plot"] = o.plot;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("data: %s (%zu rows)\n", o.data.c_str(), rows.size());
  std::printf("law:  L(N, P) = E + (A / (N * (k * ln P + 1)))^alpha\n");
  std::printf("      Huber (delta %g) on ln(loss), L-BFGS with bounds, %d starts (%d converged)\n",
              o.huber_delta, fit.starts, fit.starts_succeeded);
  std::printf("  E     = %.6f\n  A     = %.6e\n  k     = %.6f\n  alpha = %.6f\n", fit.law.E,
              fit.law.A, fit.law.k, fit.law.alpha);
  std::printf("  R^2   = %.6f  (predicted vs observed loss, as upstream; on ln loss: %.6f)\n", fit.r2,
              fit.r2_log);
  std::printf("  objective = %.6e\n\n", fit.objective);
  std::printf("%16s %4s %9s %10s %10s\n", "N", "P", "loss", "predicted", "residual");
  for (const FitRow& r : fit.rows)
    std::printf("%16.0f %4g %9.4f %10.4f %+10.4f\n", r.row.params, r.row.streams, r.row.loss,
                r.predicted, r.residual);
  std::printf("\nequivalent parameters: P streams ~ N * (k ln P + 1)\n");
  for (double p : streams) std::printf("  P = %-3g  x %.4f\n", p, equivalent_params(fit.law, 1.0, p));
  if (!queries.empty()) {
    std::printf("\npredictions:\n");
    for (const Query& q : queries)
      std::printf("  N = %.6g, P = %g: loss %.4f (like a P = 1 model of N = %.6g)\n", q.params,
                  q.streams, predict_loss(fit.law, q.params, q.streams),
                  equivalent_params(fit.law, q.params, q.streams));
  }
  if (!o.plot.empty()) std::printf("\nplot written to %s\n", o.plot.c_str());
  return 0;
}

parscale::cli::RegisterCommand reg(
    "fit", "Fit the parallel scaling law L(N,P) to (N, P, loss) rows (the paper's parametric fit)",
    [](CLI::App& app) {
      auto opts = std::make_shared<FitOpts>();
      app.add_option("--data", opts->data,
                     "CSV (header N,P,loss) or JSON rows [{\"N\":..,\"P\":..,\"loss\":..}]; e.g. "
                     "data/scaling/stack_v2_python.csv")
          ->required();
      app.add_option("--predict", opts->predict, "N,P pairs to predict the loss for (repeatable)");
      app.add_flag("--json", opts->json, "print the result as JSON");
      app.add_option("--plot", opts->plot, "write loss vs N with the fitted curves as SVG");
      app.add_option("--title", opts->title, "title of the plot");
      app.add_option("--huber-delta", opts->huber_delta, "Huber threshold on ln(loss) residuals")
          ->check(CLI::PositiveNumber);
      return [opts]() -> int { return run_fit(*opts); };
    });

}  // namespace
