// The training forward/backward against the float64 PyTorch reference (tests/fixtures/train):
// loss and the gradient of every trainable tensor, in full and frozen-backbone mode; and the
// training forward's logits against a Session's (bitwise: same kernels, same order).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "engine/session.h"
#include "kernels/gemm_f32.h"
#include "kernels/kernels.h"
#include "model/weights.h"
#include "io/safetensors.h"
#include "train/prefix_reparam.h"
#include "train/train_model.h"

using namespace parscale;
using json = nlohmann::json;

namespace {

std::string fixture(const std::string& name) { return std::string(PARSCALE_SOURCE_DIR) + "/tests/fixtures/" + name; }

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

struct GoldenCase {
  std::string name;
};

class TrainGolden : public ::testing::TestWithParam<std::string> {};

// Max |a − g| / (atol + |g|_max) style check: absolute error relative to the tensor's scale.
void expect_grads(const ParameterSet& p, train::Gradients& g, const json& golden, const std::string& what) {
  int checked = 0;
  double worst_rel = 0;
  for (size_t i = 0; i < p.specs.size(); ++i) {
    const std::string& name = p.specs[i].name;
    if (!golden.contains(name)) {
      EXPECT_TRUE(g.values[i].empty()) << what << ": " << name << " has a gradient but is not trainable in the reference";
      continue;
    }
    const auto ref = golden[name].get<std::vector<double>>();
    ASSERT_EQ(g.values[i].size(), ref.size()) << what << ": " << name;
    double max_ref = 0, max_err = 0;
    for (size_t j = 0; j < ref.size(); ++j) {
      max_ref = std::max(max_ref, std::abs(ref[j]));
      max_err = std::max(max_err, std::abs(ref[j] - g.values[i][j]));
    }
    worst_rel = std::max(worst_rel, max_err / std::max(max_ref, 1e-12));
    EXPECT_LE(max_err, 1e-5 + 2e-4 * max_ref) << what << ": " << name << " max abs err " << max_err << " (max |g| " << max_ref << ")";
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(golden.size())) << what;
  std::printf("[ %s ] %d tensors, max |grad err| / max|grad| over tensors: %.3g\n", what.c_str(), checked, worst_rel);
}

TEST_P(TrainGolden, LossAndGradients) {
  const std::string dir = fixture("train/" + GetParam());
  const json golden = read_json(dir + "/train_golden.json");
  ModelWeights w = load_model(dir);
  ParameterSet p = parameters_from_weights(w);
  std::vector<int32_t> ids;
  for (const auto& seq : golden["batch"]) for (int v : seq) ids.push_back(v);
  const int64_t B = static_cast<int64_t>(golden["batch"].size()), L = static_cast<int64_t>(golden["batch"][0].size());
  const float scale = 1.0f / static_cast<float>(B * (L - 1));
  train::TrainModel model(p);
  for (const char* mode : {"full", "frozen_backbone"}) {
    if (!golden.contains(mode)) continue;
    auto mask = train::trainable_mask(p.specs, std::string(mode) == "full" ? train::TrainMode::All : train::TrainMode::ParScale);
    auto g = train::Gradients::for_mask(p.specs, mask);
    const double loss = model.forward_backward(ids.data(), B, L, scale, &g) * scale;
    EXPECT_TRUE(model.kept_all_tapes());
    EXPECT_NEAR(loss, golden["loss"].get<double>(), 2e-6) << mode;
    expect_grads(p, g, golden[mode]["grads"], GetParam() + "/" + mode);
    // Checkpointing (no room for the tapes: the backward recomputes each layer) gives bitwise the
    // same loss and gradients.
    train::TrainModel recompute(p);
    recompute.set_activation_memory(0);
    auto g2 = train::Gradients::for_mask(p.specs, mask);
    EXPECT_EQ(recompute.forward_backward(ids.data(), B, L, scale, &g2) * scale, loss) << mode;
    EXPECT_FALSE(recompute.kept_all_tapes());
    for (size_t i = 0; i < g.values.size(); ++i)
      EXPECT_TRUE(g.values[i] == g2.values[i]) << mode << ": " << p.specs[i].name << " differs with recompute";
  }
  // Loss-only path agrees with the training path.
  EXPECT_NEAR(model.forward_backward(ids.data(), B, L, scale, nullptr) * scale, golden["loss"].get<double>(), 2e-6);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TrainGolden,
                         ::testing::Values("train_p1_tied_f32", "train_p2_t3_untied_f32", "train_p3_t5_smooth0_f32",
                                           "train_p4_t2_tied_bf16", "train_qwen3_p1_untied_f32",
                                           "train_qwen3_p2_t3_tied_f32", "train_qwen3_p4_t2_bias_bf16"));

// The prefix reparameterization (train/prefix_reparam.h): with the fixture's reparameterization
// tensors, the folded prefixes, the loss and the gradients of every reparameterization tensor
// (prefix gradients of the frozen-backbone pass pushed through the MLP) match the reference.
class ReparamGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ReparamGolden, FoldedPrefixesLossAndGradients) {
  const std::string dir = fixture("train/" + GetParam());
  const json golden = read_json(dir + "/train_golden.json");
  ASSERT_TRUE(golden.contains("reparam"));
  const json& rg = golden["reparam"];
  ParameterSet p = parameters_from_weights(load_model(dir));
  train::PrefixReparam rp(p, rg["dim"].get<int64_t>(), 1);
  auto store = TensorStore::open_files({dir + "/reparam.safetensors"});
  ParameterSet& rset = rp.parameters();
  for (size_t i = 0; i < rset.specs.size(); ++i) {
    const TensorInfo* t = store->find(rset.specs[i].name);
    ASSERT_NE(t, nullptr) << rset.specs[i].name;
    ASSERT_EQ(t->shape, rset.specs[i].shape) << rset.specs[i].name;
    ASSERT_EQ(t->dtype, DType::F32);
    std::memcpy(rset.values[i].data(), t->data, rset.values[i].size() * sizeof(float));
  }
  EXPECT_EQ(store->tensors().size(), rset.specs.size());
  rp.materialize(p);
  for (const auto& [name, ref] : rg["prefixes"].items()) {
    const auto* v = p.find(name);
    ASSERT_NE(v, nullptr) << name;
    const auto r = ref.get<std::vector<double>>();
    ASSERT_EQ(v->size(), r.size());
    for (size_t j = 0; j < r.size(); ++j) ASSERT_NEAR((*v)[j], r[j], 1e-5 + 1e-5 * std::abs(r[j])) << name << "[" << j << "]";
  }
  std::vector<int32_t> ids;
  for (const auto& seq : golden["batch"]) for (int v : seq) ids.push_back(v);
  const int64_t B = static_cast<int64_t>(golden["batch"].size()), L = static_cast<int64_t>(golden["batch"][0].size());
  const float scale = 1.0f / static_cast<float>(B * (L - 1));
  train::TrainModel model(p);
  auto g = train::Gradients::for_mask(p.specs, train::trainable_mask(p.specs, train::TrainMode::ParScale));
  const double loss = model.forward_backward(ids.data(), B, L, scale, &g) * scale;
  EXPECT_NEAR(loss, rg["loss"].get<double>(), 2e-6);
  auto rgrad = train::Gradients::for_mask(rset.specs, std::vector<bool>(rset.specs.size(), true));
  rp.backward(g, rgrad);
  expect_grads(rset, rgrad, rg["grads"], GetParam() + "/reparam");
}

TEST(Reparam, StartsAtTheBasePrefixes) {
  // W2 = b2 = 0 at initialisation: materialize() reproduces the prefixes it started from.
  ParameterSet p = parameters_from_weights(load_model(fixture("train/train_p2_t3_untied_f32")));
  const ParameterSet before = p;
  train::PrefixReparam rp(p, 4, 7);
  for (auto& v : p.values) for (float& x : v) x += 1.0f;  // materialize must restore only the prefixes
  rp.materialize(p);
  for (size_t i = 0; i < p.specs.size(); ++i) {
    const bool prefix = p.specs[i].kind == ParamKind::Prefix;
    for (size_t j = 0; j < p.values[i].size(); ++j)
      ASSERT_EQ(p.values[i][j], before.values[i][j] + (prefix ? 0.0f : 1.0f)) << p.specs[i].name;
  }
  EXPECT_THROW(train::PrefixReparam(parameters_from_weights(load_model(fixture("train/train_p1_tied_f32"))), 4, 0), Error);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReparamGolden,
                         ::testing::Values("train_qwen3_p2_t3_tied_f32", "train_qwen3_p4_t2_bias_bf16"));

class TrainForwardEqualsSession : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainForwardEqualsSession, LogitsBitwise) {
  const std::string dir = fixture(GetParam());
  ModelWeights loaded = load_model(dir);
  ParameterSet p = parameters_from_weights(loaded);
  ModelWeights w = weights_from_parameters(p);  // fp32, the same weights both paths use
  const int64_t B = 2, L = 6;
  std::vector<int32_t> ids(B * L);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + 3) % w.config.vocab_size);
  train::TrainModel model(p);
  std::vector<std::vector<int32_t>> chunks = {{ids.begin(), ids.begin() + L}, {ids.begin() + L, ids.end()}};
  // On our own kernels (rows independent of the batch): bit for bit, one decoder-layer function.
  // With oneDNN's sgemm (the trainer's default where built with it; the Session under the same
  // scope) a row's last bits may depend on the rows beside it: equal to rounding.
  for (bool onednn : {false, true}) {
    kernels::set_onednn_sgemm_allowed(onednn);
    std::vector<float> train_logits, session_logits;
    model.forward_logits(ids.data(), B, L, train_logits);
    {
      const kernels::TrainingGemmScope same_products;
      Session session(w, B, L);
      session.forward(chunks, Session::Outputs::AllPositions, session_logits);
    }
    kernels::set_onednn_sgemm_allowed(true);
    ASSERT_EQ(train_logits.size(), session_logits.size());
    const bool bitwise = !kernels::onednn_sgemm_available() || !onednn ||
                         kernels::active_kernel_path() != kernels::best_kernel_path();
    for (size_t i = 0; i < train_logits.size(); ++i) {
      if (bitwise)
        ASSERT_EQ(train_logits[i], session_logits[i]) << "index " << i;
      else
        ASSERT_NEAR(train_logits[i], session_logits[i], 2e-5 * std::max(1.0f, std::abs(session_logits[i]))) << "index " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TrainForwardEqualsSession,
                         ::testing::Values("train/train_p1_tied_f32", "train/train_p2_t3_untied_f32",
                                           "train/train_p4_t2_tied_bf16", "models/ps3_t5_f16_untied_gqa3",
                                           "models/ps4_defaults_bf16_mqa", "models/ps2_smooth0_kvnull_f32",
                                           "models/ps3_t2_bf16_untied_d12", "models/qwen2_untied_bf16_gqa3",
                                           "train/train_qwen3_p2_t3_tied_f32", "models/qwen3_untied_f16_bias_d16",
                                           "models/qwen3ps4_t5_bf16_untied_sharded"));

TEST(TrainModel, CannotBeBuiltFromATemporaryParameterSet) {
  // The model keeps a reference to its parameters: a temporary would dangle right away.
  EXPECT_TRUE((std::is_constructible_v<train::TrainModel, const ParameterSet&>));
  EXPECT_TRUE((std::is_constructible_v<train::TrainModel, ParameterSet&>));
  EXPECT_FALSE((std::is_constructible_v<train::TrainModel, ParameterSet&&>));
  EXPECT_FALSE((std::is_constructible_v<train::TrainModel, ParameterSet>));
  EXPECT_FALSE((std::is_constructible_v<train::TrainModel, const ParameterSet&&>));
}

}  // namespace
