// Scaling-law fit: recovery of known constants from synthetic data, and of the paper's published
// constants from the paper's loss tables.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "research/scaling_data.h"
#include "research/scaling_fit.h"

using namespace parscale::research;

namespace {

std::vector<ScalingRow> synthetic_rows(const ScalingLaw& law, double noise, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> gauss(0.0, noise);
  std::vector<ScalingRow> rows;
  for (double p : {1.0, 2.0, 4.0, 8.0})
    for (double n : {3e8, 6e8, 1.2e9, 2.4e9, 4.8e9, 9.6e9}) {
      ScalingRow r;
      r.params = n;
      r.streams = p;
      r.loss = predict_loss(law, n, p) * (noise > 0 ? std::exp(gauss(rng)) : 1.0);
      r.origin = "synthetic";
      rows.push_back(r);
    }
  return rows;
}

void expect_within(double got, double want, double rel, const char* name) {
  EXPECT_NEAR(got, want, std::abs(want) * rel) << name << ": got " << got << ", want " << want;
}

}  // namespace

TEST(ScalingLaw, FormulaAndInverses) {
  const ScalingLaw law{0.7, 1e7, 0.4, 0.2};
  // Hand value: 0.7 + (1e7 / (1e9 * (0.4 ln 4 + 1)))^0.2
  const double expected = 0.7 + std::pow(1e7 / (1e9 * (0.4 * std::log(4.0) + 1)), 0.2);
  EXPECT_DOUBLE_EQ(predict_loss(law, 1e9, 4), expected);
  EXPECT_DOUBLE_EQ(equivalent_params(law, 1e9, 1), 1e9);
  EXPECT_NEAR(equivalent_params(law, 1e9, 8), 1e9 * (1 + 0.4 * std::log(8.0)), 1e-3);
  // P streams predict the same loss as a P = 1 model of the equivalent size.
  EXPECT_NEAR(predict_loss(law, 1e9, 8), predict_loss(law, equivalent_params(law, 1e9, 8), 1), 1e-12);
  EXPECT_NEAR(params_for_loss(law, predict_loss(law, 2.5e9, 1)), 2.5e9, 1e-3 * 2.5e9);
  EXPECT_THROW(params_for_loss(law, 0.6), parscale::Error);
}

TEST(ScalingLaw, RSquaredHandValue) {
  // observed mean 2; SS_tot = 2; SS_res = 0.01 + 0 + 0.04 = 0.05 -> 1 - 0.025 = 0.975
  EXPECT_NEAR(r_squared({1, 2, 3}, {1.1, 2, 2.8}), 0.975, 1e-12);
  EXPECT_THROW(r_squared({1, 1}, {1, 1}), parscale::Error);
}

TEST(ScalingFit, RecoversConstantsFromNoiseFreeData) {
  const ScalingLaw truth{0.85, 3.0e7, 0.45, 0.22};
  const FitResult fit = fit_scaling_law(synthetic_rows(truth, 0, 1));
  expect_within(fit.law.E, truth.E, 1e-4, "E");
  expect_within(fit.law.A, truth.A, 1e-3, "A");
  expect_within(fit.law.k, truth.k, 1e-4, "k");
  expect_within(fit.law.alpha, truth.alpha, 1e-4, "alpha");
  EXPECT_GT(fit.r2, 0.999999);
  EXPECT_LT(fit.objective, 1e-12);
  EXPECT_EQ(fit.starts, 300);
}

TEST(ScalingFit, RecoversConstantsFromNoisyData) {
  const ScalingLaw truth{1.2, 2.0e8, 0.3, 0.2};
  const FitResult fit = fit_scaling_law(synthetic_rows(truth, 5e-4, 7));  // 0.05% noise on loss
  expect_within(fit.law.E, truth.E, 0.03, "E");
  expect_within(fit.law.k, truth.k, 0.05, "k");
  expect_within(fit.law.alpha, truth.alpha, 0.10, "alpha");
  // A and alpha trade off; the predicted losses must stay within the noise.
  for (const FitRow& r : fit.rows) EXPECT_NEAR(r.predicted, predict_loss(truth, r.row.params, r.row.streams), 3e-3);
  EXPECT_GT(fit.r2, 0.99);
}

TEST(ScalingFit, PaperStackV2PythonConstantsWithin2Percent) {
  const auto rows = load_scaling_rows(std::string(PARSCALE_SOURCE_DIR) + "/data/scaling/stack_v2_python.csv");
  ASSERT_EQ(rows.size(), 24u);
  const FitResult fit = fit_scaling_law(rows);
  expect_within(fit.law.E, 0.6912, 0.02, "E");
  expect_within(fit.law.A, 1.131e7, 0.02, "A");
  expect_within(fit.law.k, 0.3935, 0.02, "k");
  expect_within(fit.law.alpha, 0.1894, 0.02, "alpha");
  expect_within(fit.r2, 0.9978, 0.02, "R2");
  EXPECT_NEAR(fit.r2, 0.9978, 5e-4);  // R^2 on raw loss, as upstream's r2_score
}

TEST(ScalingFit, PaperPileConstantsWithin2Percent) {
  const auto rows = load_scaling_rows(std::string(PARSCALE_SOURCE_DIR) + "/data/scaling/pile.csv");
  ASSERT_EQ(rows.size(), 24u);
  const FitResult fit = fit_scaling_law(rows);
  expect_within(fit.law.E, 1.2888, 0.02, "E");
  expect_within(fit.law.A, 1.974e8, 0.02, "A");
  expect_within(fit.law.k, 0.3345, 0.02, "k");
  expect_within(fit.law.alpha, 0.1963, 0.02, "alpha");
  EXPECT_NEAR(fit.r2, 0.9987, 5e-4);
}

TEST(ScalingFit, TooFewRowsIsAnError) {
  std::vector<ScalingRow> rows(3, ScalingRow{1e9, 1, 2.0, "x"});
  EXPECT_THROW(fit_scaling_law(rows), parscale::Error);
}
