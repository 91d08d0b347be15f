// The parallel scaling law of ParScale (arXiv 2505.10475, eq. 5):
//   L(N, P) = E + ( A / (N * (k * ln P + 1)) )^alpha
// fitted as upstream's parametric_fit.py does: Huber loss (delta 1e-3) between ln(observed loss)
// and ln(predicted loss), bound-constrained L-BFGS (NLopt) from a grid of 300 starting points,
// best objective kept. Natural logarithm throughout.
#pragma once
#include <string>
#include <vector>

#include "research/scaling_data.h"

namespace parscale::research {

struct ScalingLaw {
  double E = 0;      // irreducible loss (nats)
  double A = 0;      // parameter scale (absolute parameter count)
  double k = 0;      // streams: P behaves like N * (k ln P + 1) parameters
  double alpha = 0;  // power-law exponent
};

// L(N, P). Requires N > 0, P >= 1.
double predict_loss(const ScalingLaw& law, double params, double streams);
// The P = 1 parameter count with the same predicted loss as (N, P): N * (k ln P + 1).
double equivalent_params(const ScalingLaw& law, double params, double streams);
// Inverse of the P = 1 curve: the N with L(N, 1) = loss. Requires loss > E.
double params_for_loss(const ScalingLaw& law, double loss);

struct FitOptions {
  double huber_delta = 1e-3;
  // Starting grid (upstream's): E0 = exp(e), A0 = exp(a) * 1e9, alpha0, k0 over the products of:
  std::vector<double> log_E_starts{-1.0, -0.5, 0.0};
  std::vector<double> log_A_starts{-4, -2, 0, 2, 4};  // ln(A / 1e9)
  std::vector<double> alpha_starts{0, 0.5, 1, 1.5, 2};
  std::vector<double> k_starts{0.2, 0.4, 0.6, 0.8};
  double lower_bound = 1e-8;  // every parameter (A in units of 1e9) is bounded below by this
  int max_evaluations = 20000;  // per start
};

struct FitRow {
  ScalingRow row;
  double predicted = 0;  // L(N, P) with the fitted law
  double residual = 0;   // predicted - observed (as upstream's "Error" column)
};

struct FitResult {
  ScalingLaw law;
  double objective = 0;  // summed Huber loss on log-loss at the optimum
  // Coefficient of determination of predicted vs observed loss (raw loss, as upstream's
  // sklearn r2_score on the loss columns); r2_log is the same on ln(loss), for reference.
  double r2 = 0;
  double r2_log = 0;
  int starts = 0;            // starting points tried
  int starts_succeeded = 0;  // of which the optimiser returned a finite optimum
  std::vector<FitRow> rows;
};

// Throws parscale::Error if fewer than 4 rows are given or no start converges.
FitResult fit_scaling_law(const std::vector<ScalingRow>& rows, const FitOptions& options = {});

// 1 - SS_res / SS_tot of `predicted` against `observed` (same length, >= 2 values).
double r_squared(const std::vector<double>& observed, const std::vector<double>& predicted);

}  // namespace parscale::research
