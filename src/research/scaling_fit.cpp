#include "research/scaling_fit.h"

#include <cmath>
#include <limits>
#include <nlopt.hpp>

#include "core/error.h"

namespace parscale::research {
namespace {

// The optimiser works in upstream's parameterisation x = [E, a, alpha, k] with A = a * 1e9, so the
// starting grid and the lower bounds mean the same as in parametric_fit.py.
constexpr double kAScale = 1e9;

struct Problem {
  const std::vector<ScalingRow>* rows;
  double delta;
};

// Summed Huber loss of r_i = ln(y_i) - ln(pred_i) and its gradient in x.
double objective(unsigned n, const double* x, double* grad, void* data) {
  const Problem& problem = *static_cast<const Problem*>(data);
  const double E = x[0], a = x[1], alpha = x[2], k = x[3];
  double g[4] = {0, 0, 0, 0};
  double total = 0;
  for (const ScalingRow& row : *problem.rows) {
    const double logp = std::log(row.streams);
    const double scale = k * logp + 1;
    const double u = a * kAScale / (row.params * scale);
    const double u_alpha = std::pow(u, alpha);
    const double pred = E + u_alpha;
    if (!(pred > 0) || !std::isfinite(pred)) return std::numeric_limits<double>::infinity();
    const double r = std::log(row.loss) - std::log(pred);
    const double d = problem.delta;
    double dloss_dr;
    if (std::abs(r) <= d) {
      total += 0.5 * r * r;
      dloss_dr = r;
    } else {
      total += d * (std::abs(r) - 0.5 * d);
      dloss_dr = r > 0 ? d : -d;
    }
    // d r / d pred = -1 / pred
    const double c = -dloss_dr / pred;
    g[0] += c;                                   // d pred / dE
    g[1] += c * alpha * u_alpha / a;             // d pred / da
    g[2] += c * u_alpha * std::log(u);           // d pred / dalpha
    g[3] += c * (-alpha * u_alpha * logp / scale);  // d pred / dk
  }
  if (grad) {
    for (unsigned i = 0; i < n; ++i) grad[i] = g[i];
  }
  return total;
}

}  // namespace

double predict_loss(const ScalingLaw& law, double params, double streams) {
  check(params > 0 && streams >= 1, "predict_loss: need N > 0 and P >= 1");
  return law.E + std::pow(law.A / (params * (law.k * std::log(streams) + 1)), law.alpha);
}

double equivalent_params(const ScalingLaw& law, double params, double streams) {
  return params * (law.k * std::log(streams) + 1);
}

double params_for_loss(const ScalingLaw& law, double loss) {
  check(loss > law.E, "params_for_loss: loss " + std::to_string(loss) +
                          " is not above the irreducible loss E = " + std::to_string(law.E));
  return law.A / std::pow(loss - law.E, 1.0 / law.alpha);
}

double r_squared(const std::vector<double>& observed, const std::vector<double>& predicted) {
  check(observed.size() == predicted.size() && observed.size() >= 2,
        "r_squared: need two equally long series of at least 2 values");
  double mean = 0;
  for (double y : observed) mean += y;
  mean /= static_cast<double>(observed.size());
  double ss_res = 0, ss_tot = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    ss_res += (observed[i] - predicted[i]) * (observed[i] - predicted[i]);
    ss_tot += (observed[i] - mean) * (observed[i] - mean);
  }
  check(ss_tot > 0, "r_squared: observed values are all equal");
  return 1 - ss_res / ss_tot;
}

FitResult fit_scaling_law(const std::vector<ScalingRow>& rows, const FitOptions& options) {
  check(rows.size() >= 4, "fit: need at least 4 rows to fit 4 parameters (E, A, k, alpha), got " +
                              std::to_string(rows.size()));
  Problem problem{&rows, options.huber_delta};
  FitResult result;
  double best = std::numeric_limits<double>::infinity();
  std::vector<double> best_x;
  const double lb = options.lower_bound;
  for (double log_E : options.log_E_starts)
    for (double log_A : options.log_A_starts)
      for (double alpha : options.alpha_starts)
        for (double k : options.k_starts) {
          ++result.starts;
          std::vector<double> x{std::exp(log_E), std::exp(log_A), alpha, k};
          for (double& v : x) v = std::max(v, lb);  // a start on the bound (alpha = 0) is clipped
          nlopt::opt opt(nlopt::LD_LBFGS, 4);
          opt.set_lower_bounds(std::vector<double>(4, lb));
          opt.set_min_objective(objective, &problem);
          opt.set_ftol_rel(1e-15);
          opt.set_xtol_rel(1e-12);
          opt.set_maxeval(options.max_evaluations);
          double value = std::numeric_limits<double>::infinity();
          try {
            opt.optimize(x, value);
          } catch (const nlopt::roundoff_limited&) {
            // The optimum is as good as floating point allows; x and value hold it.
            value = objective(4, x.data(), nullptr, &problem);
          } catch (const std::exception&) {
            continue;  // diverged from this start (e.g. overflow); other starts decide
          }
          if (!std::isfinite(value)) continue;
          ++result.starts_succeeded;
          if (value < best) {
            best = value;
            best_x = x;
          }
        }
  check(!best_x.empty(), "fit: no starting point converged to a finite objective");
  result.objective = best;
  result.law = ScalingLaw{best_x[0], best_x[1] * kAScale, best_x[3], best_x[2]};
  std::vector<double> observed, predicted, log_observed, log_predicted;
  for (const ScalingRow& row : rows) {
    FitRow fr;
    fr.row = row;
    fr.predicted = predict_loss(result.law, row.params, row.streams);
    fr.residual = fr.predicted - row.loss;
    result.rows.push_back(fr);
    observed.push_back(row.loss);
    predicted.push_back(fr.predicted);
    log_observed.push_back(std::log(row.loss));
    log_predicted.push_back(std::log(fr.predicted));
  }
  result.r2 = r_squared(observed, predicted);
  result.r2_log = r_squared(log_observed, log_predicted);
  return result;
}

}  // namespace parscale::research
