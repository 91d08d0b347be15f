// Cost model: each term against hand-computed values for a tiny shape, parameter counts against
// the paper's table, the README's example against an independent transcription of upstream's
// method, and the paper's comparison ratios.
#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "research/cost_model.h"
#include "research/hardware.h"
#include "research/hardware_probe.h"
#include "research/paper_comparison.h"
#include "research/scaling_data.h"
#include "research/scaling_fit.h"

using namespace parscale::research;

namespace {

// h 8, i 16, 2 layers, 2 heads (head_dim 4), 1 KV head (kv_dim 4), vocab 10.
ModelShape tiny() { return ModelShape{"tiny", 8, 16, 2, 2, 1, 10}; }

// 1000 FLOP/s and 100 B/s, no efficiency loss: every term is easy to compute by hand.
Hardware slow() {
  Hardware h;
  h.name = "hand";
  h.peak_flops = 1000;
  h.memory_bandwidth = 100;
  return h;
}

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

}  // namespace

TEST(CostModel, TinyShapeParameterCounts) {
  // per layer: q 64+8, k,v 2*(32+4), o 64, MLP 3*8*16, norms 16 -> 608; x2 + final norm 8
  EXPECT_EQ(tiny().backbone_params(), 1224);
  // prefix 2 layers * 2 (K,V) * P 2 * T 3 * kv_dim 4 = 96; aggregation (2*64+8) + (8*2+2) = 154
  EXPECT_EQ(tiny().parscale_params(2, 3), 250);
  EXPECT_EQ(tiny().parscale_params(1, 3), 0);
}

TEST(CostModel, TinyShapeEveryTermByHand) {
  const Workload w{1, 2, 3, 5, 2};  // B 1, P 2, T 3, prompt 5, output 2
  const CostEstimate e = predict_cost(tiny(), w, slow());
  const CostTerms& t = e.terms;
  // weights: (2 * (192 + 384 + 16) + 8) * 2 bytes + embedding 10 * 8 * 2 bytes
  EXPECT_DOUBLE_EQ(t.weight_bytes, 2544);
  EXPECT_DOUBLE_EQ(t.aggregation_bytes, 288);  // (8+1)*8*2 params * 2 bytes
  // KV: 2 (K,V) * B*P 2 * (5 + 3 + 2) tokens * kv_dim 4 * 2 bytes * 2 layers
  EXPECT_DOUBLE_EQ(t.kv_cache_bytes, 640);
  // activations, B*P 2 x 8 tokens: attn max(3*2*8*2*8, (2*8*2*8 + 4*2*8*2)*2) = 768 > mlp 512
  EXPECT_DOUBLE_EQ(t.activation_bytes, 768);
  EXPECT_DOUBLE_EQ(e.memory_bytes, 4240);
  // prefill layer: attn max(10240/1000, (384+768)/100) = 11.52; mlp max(12.288, 12.8) = 12.8;
  // norm max(0.64, 5.12) = 5.12 -> 34.56 per layer
  EXPECT_NEAR(t.prefill_layers_s, 69.12, 1e-9);
  EXPECT_NEAR(t.prefill_embedding_s, 1.6, 1e-12);   // 160 bytes / 100
  EXPECT_NEAR(t.prefill_lm_head_s, 2.56, 1e-12);    // 2*8*2*10*8 / 1000
  // decode layer: attn max(0.832, 4.8), mlp max(1.536, 8.32), norm max(0.08, 0.64) -> 14.4
  EXPECT_NEAR(t.decode_layers_s, 57.6, 1e-9);       // 2 steps * 2 layers * 14.4
  EXPECT_NEAR(t.decode_embedding_s, 3.2, 1e-12);
  EXPECT_NEAR(t.decode_lm_head_s, 0.64, 1e-12);     // 2 * 2*2*10*8 / 1000
  EXPECT_NEAR(t.decode_kv_cache_s, 25.6, 1e-12);    // 2 steps * 2 * 640 / 100
  // aggregation: 144 / 384 of the MLP on 1 x 7 tokens: max(5.376, (768 + 224)/100) = 9.92
  EXPECT_NEAR(t.aggregation_s, 3.72, 1e-12);
  EXPECT_NEAR(t.lm_head_correction_s, -1.12, 1e-12);  // -2*7*(2-1)*10*8 / 1000
  EXPECT_NEAR(e.latency_s, 162.92, 1e-9);
}

TEST(CostModel, SingleStreamHasNoParScaleTerms) {
  const CostEstimate e = predict_cost(tiny(), Workload{1, 1, 3, 5, 2}, slow());
  EXPECT_EQ(e.terms.aggregation_bytes, 0);
  EXPECT_EQ(e.terms.aggregation_s, 0);
  EXPECT_EQ(e.terms.lm_head_correction_s, 0);
  // KV: 1 sequence x (5 + 2) tokens (no prefix) x 4 x 2 bytes x 2 (K,V) x 2 layers
  EXPECT_DOUBLE_EQ(e.terms.kv_cache_bytes, 224);
}

TEST(CostModel, PaperShapesMatchTheTableParameterCounts) {
  const auto rows = load_scaling_rows(std::string(PARSCALE_SOURCE_DIR) + "/data/scaling/stack_v2_python.csv");
  int matched = 0;
  for (const ScalingRow& r : rows)
    for (const ModelShape& s : paper_model_shapes())
      if (s.scaling_law_params(static_cast<long>(r.streams), 48) == r.params) ++matched;
  EXPECT_EQ(matched, 24);  // every (N, P) in the paper's table is one shape at one P
}

TEST(CostModel, ReadmeExampleMatchesUpstreamMethod) {
  // README: cost_analysis.py --hidden_size 2560 --intermediate_size 13824 --P 2 --batch_size 2
  // (input = output = 64). Expected values from an independent transcription of cost_analysis.py +
  // llm-analysis into a few lines of Python (not this code).
  const CostEstimate e =
      predict_cost(paper_model_shape("4.4B"), Workload{2, 2, 48, 64, 64}, hardware_by_name("a100-sxm-80gb"));
  EXPECT_NEAR(e.memory_bytes / kGiB, 8.950774, 1e-5);
  EXPECT_NEAR(e.latency_s, 0.3535038, 1e-6);
  EXPECT_TRUE(e.fits_in_memory);
}

TEST(CostModel, InvalidInputsAreNamed) {
  ModelShape bad = tiny();
  bad.kv_heads = 3;
  try {
    predict_cost(bad, Workload{}, slow());
    FAIL() << "expected an error";
  } catch (const parscale::Error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_heads must divide heads"), std::string::npos) << e.what();
  }
  EXPECT_THROW(predict_cost(tiny(), Workload{1, 0, 48, 64, 64}, slow()), parscale::Error);
  EXPECT_THROW(hardware_by_name("abacus"), parscale::Error);
  EXPECT_THROW(paper_model_shape("9B"), parscale::Error);
  EXPECT_THROW(precision_by_name("fp4"), parscale::Error);
}

TEST(PaperComparison, InterpolationAndExtrapolation) {
  bool outside = true;
  EXPECT_DOUBLE_EQ(interpolate({3, 2, 1}, {10, 20, 40}, 1.5, &outside), 30);
  EXPECT_FALSE(outside);
  EXPECT_DOUBLE_EQ(interpolate({3, 2, 1}, {10, 20, 40}, 0.5, &outside), 50);
  EXPECT_TRUE(outside);
  EXPECT_THROW(interpolate({1, 1}, {0, 1}, 1), parscale::Error);
}

TEST(PaperComparison, ReproducesThePapersRatios) {
  const auto rows = load_scaling_rows(std::string(PARSCALE_SOURCE_DIR) + "/data/scaling/stack_v2_python.csv");
  ComparisonSettings s;
  s.hardware = hardware_by_name("a100-sxm-80gb");
  const PaperComparison r = run_paper_comparison(s, [&](const ModelShape&, long p, double n) {
    for (const ScalingRow& row : rows)
      if (row.streams == p && row.params == n) return row.loss;
    throw parscale::Error("no row");
  });
  ASSERT_EQ(r.per_batch.size(), 4u);
  const EqualLossComparison& b1 = r.per_batch[0].comparison;
  EXPECT_DOUBLE_EQ(b1.target_loss, 1.0383);
  EXPECT_FALSE(b1.extrapolated);
  EXPECT_NEAR(b1.memory_ratio(), 22.0, 22.0 * 0.15);  // paper: 22x less memory increase
  EXPECT_NEAR(b1.latency_ratio(), 6.0, 6.0 * 0.15);   // paper: 6x less latency increase
  const EqualLossComparison& avg = r.batch_averaged.comparison;
  EXPECT_NEAR(avg.memory_ratio(), 7.0, 7.0 * 0.15);   // paper Figure 1: 7x
  EXPECT_NEAR(avg.latency_ratio(), 1.7, 1.7 * 0.15);  // paper Figure 1: 1.7x
  // The 1.6B P = 1 point at batch 1 is the figure's leftmost point (about 3.4 GB, 0.48 s).
  EXPECT_NEAR(r.per_batch[0].points[0].memory_bytes / kGiB, 3.442, 0.01);
  EXPECT_NEAR(r.per_batch[0].points[0].latency_s, 0.4825, 0.005);
}

TEST(HardwareProbe, MeasuresPositiveRates) {
  const BandwidthProbe bw = measure_memory_bandwidth(1 << 20, 2);
  EXPECT_GT(bw.bytes_per_second, 1e8);  // any machine streams more than 100 MB/s
  EXPECT_EQ(bw.bytes_moved, 12.0 * (1 << 20));
  const FlopProbe fl = measure_fp32_fma_flops(20000, 1);
  EXPECT_GT(fl.flops_per_second, 1e8);
  EXPECT_GE(fl.threads, 1);
}
