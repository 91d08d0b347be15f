// Weight formats end to end: `parscale convert` to q8 (I8 + per-block scales), bf16 and f16, then the
// converted folder loaded like any checkpoint. Compared with the PyTorch golden logits (float64
// reference of the stored weights): maximum logit error, argmax agreement and the mean next-token
// NLL of the golden sequences (perplexity = exp(NLL)). Prints the figures (docs/PERFORMANCE.md
// quotes them). Also: the decode loop allocates nothing.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>

#include "engine/sampling.h"
#include "engine/session.h"
#include "kernels/kernels.h"
#include "model/weights.h"
#include "test_util.h"

using namespace parscale;

// Allocation counter for the decode-loop check (this test binary only; malloc-backed, so GCC's
// new/delete pairing warning does not apply).
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
static std::atomic<int64_t> g_allocations{0};
void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace {

struct Eval {
  double max_err = 0.0, nll = 0.0, nll_ref = 0.0, argmax_agree = 0.0;
};

// Logits of every golden sequence under `w` against the golden logits.
Eval evaluate(const ModelWeights& w, const nlohmann::json& golden) {
  const auto seqs = golden["sequences"].get<std::vector<std::vector<int32_t>>>();
  const auto ref = golden["logits"].get<std::vector<std::vector<std::vector<double>>>>();
  const int64_t V = w.config.vocab_size;
  Eval e;
  int64_t n_nll = 0, n_rows = 0, agree = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Session s(w, 1, static_cast<int64_t>(seqs[i].size()));
    std::vector<float> logits;
    s.forward({seqs[i]}, Session::Outputs::AllPositions, logits);
    for (size_t t = 0; t < seqs[i].size(); ++t) {
      const float* row = logits.data() + t * V;
      const auto& r = ref[i][t];
      for (int64_t v = 0; v < V; ++v) e.max_err = std::max(e.max_err, std::fabs(row[v] - r[static_cast<size_t>(v)]));
      agree += argmax(row, V) == std::max_element(r.begin(), r.end()) - r.begin();
      ++n_rows;
      if (t + 1 < seqs[i].size()) {
        const int32_t next = seqs[i][t + 1];
        double mx = -INFINITY, mr = -INFINITY;
        for (int64_t v = 0; v < V; ++v) {
          mx = std::max(mx, static_cast<double>(row[v]));
          mr = std::max(mr, r[static_cast<size_t>(v)]);
        }
        double sum = 0.0, sum_r = 0.0;
        for (int64_t v = 0; v < V; ++v) {
          sum += std::exp(row[v] - mx);
          sum_r += std::exp(r[static_cast<size_t>(v)] - mr);
        }
        e.nll += -(row[next] - mx - std::log(sum));
        e.nll_ref += -(r[static_cast<size_t>(next)] - mr - std::log(sum_r));
        ++n_nll;
      }
    }
  }
  e.nll /= static_cast<double>(n_nll);
  e.nll_ref /= static_cast<double>(n_nll);
  e.argmax_agree = static_cast<double>(agree) / static_cast<double>(n_rows);
  return e;
}

int64_t q8_block_for(const ModelConfig& c) {
  for (int64_t b : {32, 16, 8})
    if (c.hidden_size % b == 0 && c.intermediate_size % b == 0 && c.q_dim() % b == 0) return b;
  return 0;
}

class ConvertedFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ConvertedFixture, Q8AndHalfFormatsStayCloseToTheReference) {
  const auto dir = test::fixtures_dir() / "models" / GetParam();
  const auto golden = test::read_json(dir / "golden.json");
  const ModelWeights stored = load_model(dir.string());
  const int64_t block = q8_block_for(stored.config);
  ASSERT_GT(block, 0);
  const Eval base = evaluate(stored, golden);
  for (const std::string dtype : {"bf16", "f16", "q8"}) {
    test::TempDir out;
    std::string so, se;
    const std::string cmd = std::string(PARSCALE_BINARY) + " convert --model " + dir.string() + " --out " + out.path.string() +
                            " --dtype " + dtype + " --q8-block " + std::to_string(block);
    ASSERT_EQ(test::run_command(cmd, &so, &se), 0) << se;
    const ModelWeights w = load_model(out.path.string());
    EXPECT_TRUE(w.unknown_tensors.empty());
    const DType want = dtype == "q8" ? DType::I8 : dtype == "bf16" ? DType::BF16 : DType::F16;
    EXPECT_EQ(w.bb().layers[0].gate_proj.dtype, want);
    if (dtype == "q8") {
      EXPECT_EQ(w.bb().layers[0].gate_proj.block, block);
    }
    const Eval e = evaluate(w, golden);
    std::printf("%-28s %-4s block %2lld: max|dlogit| %.5f (stored %.5f)  argmax agree %.3f  NLL %.5f vs ref %.5f (%+.3f%%)\n",
                GetParam().c_str(), dtype.c_str(), static_cast<long long>(block), e.max_err, base.max_err, e.argmax_agree, e.nll,
                e.nll_ref, 100.0 * (e.nll - e.nll_ref) / e.nll_ref);
    // Rounding weights to 8 (q8) or 16 bits moves logits by a small fraction of their spread; the
    // perplexity of the reference's own sequences stays within a few per cent.
    EXPECT_LT(std::fabs(e.nll - e.nll_ref), 0.05 * e.nll_ref) << dtype;
    EXPECT_GE(e.argmax_agree, 0.8) << dtype;
    if (dtype == "q8") {
      EXPECT_GT(e.max_err, 0.0);  // it really is a different model
    }
  }
}

TEST_P(ConvertedFixture, LoadTimeConversionEqualsTheConvertedFolder) {
  // --dtype at load (chunked conversion from the mapped file) and `parscale convert` run the same
  // conversion, so both give bit-identical logits.
  const auto dir = test::fixtures_dir() / "models" / GetParam();
  const auto seq = test::read_json(dir / "golden.json")["sequences"][0].get<std::vector<int32_t>>();
  const int64_t block = q8_block_for(load_model(dir.string()).config);
  for (const auto& [name, dt] : {std::pair<std::string, DType>{"bf16", DType::BF16}, {"q8", DType::I8}}) {
    test::TempDir out;
    std::string so, se;
    ASSERT_EQ(test::run_command(std::string(PARSCALE_BINARY) + " convert --model " + dir.string() + " --out " +
                                    out.path.string() + " --dtype " + name + " --q8-block " + std::to_string(block),
                                &so, &se),
              0)
        << se;
    LoadOptions lo;
    lo.convert_matrices = true;
    lo.matrix_dtype = dt;
    lo.q8_block = block;
    const ModelWeights at_load = load_model(dir.string(), lo);
    const ModelWeights folder = load_model(out.path.string());
    EXPECT_EQ(at_load.bb().layers[0].down_proj.dtype, dt);
    std::vector<float> a, b;
    Session sa(at_load, 1, static_cast<int64_t>(seq.size())), sb(folder, 1, static_cast<int64_t>(seq.size()));
    sa.forward({seq}, Session::Outputs::AllPositions, a);
    sb.forward({seq}, Session::Outputs::AllPositions, b);
    EXPECT_EQ(a, b) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ConvertedFixture,
                         ::testing::Values("ps2_t4_f16_tied_h64", "qwen2_untied_bf16_gqa3", "ps3_t5_f16_untied_gqa3",
                                           "ps4_t7_f32_tied_sharded", "qwen3_untied_f16_bias_d16",
                                           "qwen3ps2_t3_bf16_tied_d16"),
                         [](const auto& info) { return info.param; });

TEST(DecodeLoop, AllocatesNothingAfterTheFirstStep) {
  const ModelWeights w = load_model((test::fixtures_dir() / "models" / "ps4_t7_f32_tied_sharded").string());
  Session s(w, 2, 32);
  std::vector<float> logits;
  s.forward({{3, 4, 5}, {6, 7}}, Session::Outputs::LastPosition, logits);
  std::vector<std::vector<int32_t>> step{{1}, {2}};
  s.forward(step, Session::Outputs::LastPosition, logits);  // first decode step may size buffers
  const int64_t before = g_allocations.load();
  for (int i = 0; i < 10; ++i) {
    step[0][0] = static_cast<int32_t>(argmax(logits.data(), w.config.vocab_size));
    step[1][0] = static_cast<int32_t>(argmax(logits.data() + w.config.vocab_size, w.config.vocab_size));
    s.forward(step, Session::Outputs::LastPosition, logits);
  }
  EXPECT_EQ(g_allocations.load() - before, 0);
}

}  // namespace
