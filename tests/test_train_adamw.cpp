// Ten AdamW steps (clipping, decoupled decay, bias correction) against the float64 reference run
// in tests/fixtures/train/*/train_golden.json: losses, gradient norms and final parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "model/weights.h"
#include "train/optimizer.h"
#include "train/train_model.h"

using namespace parscale;
using json = nlohmann::json;

namespace {

class AdamWGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(AdamWGolden, TenStepsMatchReference) {
  const std::string dir = std::string(PARSCALE_SOURCE_DIR) + "/tests/fixtures/train/" + GetParam();
  std::ifstream in(dir + "/train_golden.json");
  const json golden = json::parse(in);
  const json& a = golden["adamw"];
  ParameterSet p = parameters_from_weights(load_model(dir));
  const auto mode = a["mode"] == "full" ? train::TrainMode::All : train::TrainMode::ParScale;
  const auto mask = train::trainable_mask(p.specs, mode);

  // The decay rule selects exactly the reference's tensors.
  std::set<std::string> decay_ref, decay_ours;
  for (const auto& n : a["decay"]) decay_ref.insert(n.get<std::string>());
  for (size_t i = 0; i < p.specs.size(); ++i)
    if (mask[i] && train::gets_weight_decay(p.specs[i])) decay_ours.insert(p.specs[i].name);
  EXPECT_EQ(decay_ours, decay_ref);

  train::AdamWConfig cfg;
  cfg.beta1 = a["betas"][0];
  cfg.beta2 = a["betas"][1];
  cfg.eps = a["eps"];
  cfg.weight_decay = a["weight_decay"];
  cfg.clip_norm = a["clip_norm"];
  train::AdamW opt(p.specs, mask, cfg);
  auto g = train::Gradients::for_mask(p.specs, mask);
  train::TrainModel model(p);
  std::vector<int32_t> ids;
  for (const auto& seq : golden["batch"]) for (int v : seq) ids.push_back(v);
  const int64_t B = static_cast<int64_t>(golden["batch"].size()), L = static_cast<int64_t>(golden["batch"][0].size());
  const float scale = 1.0f / static_cast<float>(B * (L - 1));
  const int steps = a["steps"];
  for (int k = 0; k < steps; ++k) {
    g.zero();
    const double loss = model.forward_backward(ids.data(), B, L, scale, &g) * scale;
    EXPECT_NEAR(loss, a["losses"][k].get<double>(), 1e-5) << "step " << k + 1;
    const double norm = opt.step(p, g, a["lr"].get<double>());
    EXPECT_NEAR(norm, a["grad_norms"][k].get<double>(), 1e-5 * (1 + a["grad_norms"][k].get<double>())) << "step " << k + 1;
  }
  double worst = 0;
  for (const auto& [name, values] : a["final"].items()) {
    const auto* ours = p.find(name);
    ASSERT_NE(ours, nullptr) << name;
    const auto ref = values.get<std::vector<double>>();
    ASSERT_EQ(ours->size(), ref.size()) << name;
    for (size_t j = 0; j < ref.size(); ++j) worst = std::max(worst, std::abs(ref[j] - (*ours)[j]));
  }
  EXPECT_LT(worst, 1e-4) << "max |final − reference|";
  std::printf("[ %s ] max |final param - reference| after %d steps: %.3g\n", GetParam().c_str(), steps, worst);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, AdamWGolden, ::testing::Values("train_p1_tied_f32", "train_p2_t3_untied_f32"));

TEST(Schedule, WarmupThenCosine) {
  EXPECT_DOUBLE_EQ(train::scheduled_lr(0, 100, 10, 1.0, 0.1), 0.1);
  EXPECT_DOUBLE_EQ(train::scheduled_lr(9, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_DOUBLE_EQ(train::scheduled_lr(10, 100, 10, 1.0, 0.1), 1.0);
  EXPECT_NEAR(train::scheduled_lr(55, 100, 10, 1.0, 0.1), 0.55, 1e-12);
  EXPECT_NEAR(train::scheduled_lr(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
}

}  // namespace
