// The fast compute mode: BF16 weights through the bf16 dot-product kernels (AVX512-BF16) against
// their scalar reference matmul_bf16_ref (bf16-rounded x, exact products, double sums); batch
// invariance in fast mode; other dtypes unchanged by the mode; mode names and parsing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "kernel_test_util.h"

using namespace parscale;
using namespace parscale::kernels;

namespace {

using test::randn;
using test::supported_paths;

class FastMode : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = active_kernel_path();
    saved_mode_ = active_compute_mode();
  }
  void TearDown() override {
    set_kernel_path(saved_);
    set_compute_mode(saved_mode_);
  }
  KernelPath saved_ = KernelPath::Scalar;
  ComputeMode saved_mode_ = ComputeMode::Exact;
};

struct Bf16Weight {
  std::vector<uint16_t> bits;
  WeightView view;
  Bf16Weight(int64_t rows, int64_t cols, uint32_t seed) {
    const auto f = randn(static_cast<size_t>(rows * cols), seed, 0.5f);
    bits.resize(f.size());
    for (size_t i = 0; i < f.size(); ++i) bits[i] = f32_to_bf16(f[i]);
    view = {DType::BF16, bits.data(), rows, cols};
  }
};

// |got - want| <= 1e-5 · Σ_k |bf16(x_k) · w_k| + 1e-6 per output: fp32 accumulation of exact
// products (chains of K/32 adds per lane). A missing bf16 rounding of x, a dropped or doubled
// term, or a wrong pairing is far outside this.
void expect_fast_close(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& x,
                       const WeightView& W, int64_t M, const std::string& what) {
  const int64_t N = W.rows, K = W.cols;
  const auto* w = static_cast<const uint16_t*>(W.data);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k)
        s += std::fabs(static_cast<double>(bf16_to_f32(f32_to_bf16(x[m * K + k]))) * bf16_to_f32(w[n * K + k]));
      const size_t i = static_cast<size_t>(m * N + n);
      ASSERT_NEAR(got[i], want[i], 1e-5 * s + 1e-6) << what << " m=" << m << " n=" << n;
    }
}

bool same_bits(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, static_cast<size_t>(n) * 4) == 0; }

TEST(ComputeModeNames, ParseAndNames) {
  EXPECT_EQ(parse_compute_mode("exact"), ComputeMode::Exact);
  EXPECT_EQ(parse_compute_mode("fast"), ComputeMode::Fast);
  EXPECT_STREQ(compute_mode_name(ComputeMode::Fast), "fast");
  EXPECT_STREQ(compute_mode_name(ComputeMode::Exact), "exact");
  EXPECT_THROW(parse_compute_mode("turbo"), Error);
  EXPECT_THROW(parse_compute_mode(nullptr), Error);
}

TEST_F(FastMode, Bf16DotMatmulMatchesItsReference) {
  if (!fast_bf16_supported()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  struct Shape { int64_t M, N, K; };
  const Shape shapes[] = {{1, 7, 5}, {1, 33, 100}, {3, 17, 520}, {8, 64, 1536}, {5, 13, 1030}, {37, 45, 96}, {100, 20, 2100}};
  for (const Shape& s : shapes) {
    Bf16Weight w(s.N, s.K, 3u + static_cast<uint32_t>(s.K));
    const auto x = randn(static_cast<size_t>(s.M * s.K), 4u + static_cast<uint32_t>(s.N));
    const auto bias = randn(static_cast<size_t>(s.N), 5u);
    std::vector<float> want(static_cast<size_t>(s.M * s.N)), got(want.size());
    matmul_bf16_ref(x.data(), s.M, w.view, bias.data(), want.data());
    matmul(x.data(), s.M, w.view, bias.data(), got.data());
    const std::string what = "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
    expect_fast_close(got, want, x, w.view, s.M, what);
    std::vector<float> acc(want.size(), 1.5f);
    matmul_add(x.data(), s.M, w.view, acc.data());
    for (size_t i = 0; i < want.size(); ++i) want[i] = want[i] - bias[i % static_cast<size_t>(s.N)] + 1.5f;
    expect_fast_close(acc, want, x, w.view, s.M, what + " (add)");
    // The fast mode really is another arithmetic: it differs from exact mode somewhere.
    set_compute_mode(ComputeMode::Exact);
    std::vector<float> exact(want.size());
    matmul(x.data(), s.M, w.view, bias.data(), exact.data());
    set_compute_mode(ComputeMode::Fast);
    if (s.K >= 96) {
      EXPECT_FALSE(same_bits(exact.data(), got.data(), s.M * s.N)) << what;
    }
  }
}

TEST_F(FastMode, MultiAndGateUpSwigluMatchReferencesAndRowsDoNotDependOnM) {
  if (!fast_bf16_supported()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  const int64_t K = 1100, I = 45, kMaxM = 100;
  Bf16Weight a(50, K, 31u), b(9, K, 32u), g(I, K, 33u), u(I, K, 34u);
  const auto x = randn(static_cast<size_t>(kMaxM * K), 35u);
  const auto bias = randn(50, 36u);
  std::vector<float> ya1(static_cast<size_t>(kMaxM * 50)), yb1(static_cast<size_t>(kMaxM * 9)), sw1(static_cast<size_t>(kMaxM * I));
  std::vector<float> gs(sw1.size()), us(sw1.size());
  for (int64_t r = 0; r < kMaxM; ++r) {
    const MatmulOut outs[2] = {{&a.view, bias.data(), ya1.data() + r * 50}, {&b.view, nullptr, yb1.data() + r * 9}};
    matmul_multi(x.data() + r * K, 1, outs, 2);
    gate_up_swiglu(x.data() + r * K, 1, g.view, u.view, gs.data(), us.data(), sw1.data() + r * I);
  }
  for (int64_t M : {1, 2, 7, 31, 32, 33, 100}) {
    std::vector<float> ya(static_cast<size_t>(M * 50)), yb(static_cast<size_t>(M * 9)), sw(static_cast<size_t>(M * I));
    const MatmulOut outs[2] = {{&a.view, bias.data(), ya.data()}, {&b.view, nullptr, yb.data()}};
    matmul_multi(x.data(), M, outs, 2);
    ASSERT_TRUE(same_bits(ya.data(), ya1.data(), M * 50)) << "multi[0] M=" << M;
    ASSERT_TRUE(same_bits(yb.data(), yb1.data(), M * 9)) << "multi[1] M=" << M;
    gate_up_swiglu(x.data(), M, g.view, u.view, gs.data(), us.data(), sw.data());
    ASSERT_TRUE(same_bits(sw.data(), sw1.data(), M * I)) << "gate_up_swiglu M=" << M;
    std::vector<float> y(static_cast<size_t>(M * 50));
    matmul(x.data(), M, a.view, bias.data(), y.data());
    ASSERT_TRUE(same_bits(y.data(), ya1.data(), M * 50)) << "matmul M=" << M;
  }
  // Against the references.
  std::vector<float> wa(ya1.size()), wg(sw1.size()), wu(sw1.size());
  matmul_bf16_ref(x.data(), kMaxM, a.view, bias.data(), wa.data());
  expect_fast_close(ya1, wa, x, a.view, kMaxM, "multi[0]");
  matmul_bf16_ref(x.data(), kMaxM, g.view, nullptr, wg.data());
  matmul_bf16_ref(x.data(), kMaxM, u.view, nullptr, wu.data());
  for (size_t i = 0; i < sw1.size(); ++i) {
    const double gv = wg[i], want = gv / (1.0 + std::exp(-gv)) * wu[i];
    ASSERT_NEAR(sw1[i], want, 1e-4 * (1.0 + std::fabs(want))) << "gate_up_swiglu " << i;
  }
}

TEST_F(FastMode, OtherDtypesAndPathsComputeAsInExactMode) {
  const int64_t M = 40, N = 19, K = 600;
  const auto x = randn(static_cast<size_t>(M * K), 41u);
  const auto f = randn(static_cast<size_t>(N * K), 42u, 0.5f);
  std::vector<uint16_t> h(f.size());
  convert_from_f32(DType::F16, f.data(), h.data(), f.size());
  const WeightView w32{DType::F32, f.data(), N, K}, w16{DType::F16, h.data(), N, K};
  for (KernelPath p : {KernelPath::Scalar, KernelPath::AVX2, KernelPath::AVX512}) {
    if (!kernel_path_supported(p)) continue;
    set_kernel_path(p);
    for (const WeightView* w : {&w32, &w16}) {
      std::vector<float> e(static_cast<size_t>(M * N)), fa(e.size());
      set_compute_mode(ComputeMode::Exact);
      matmul(x.data(), M, *w, nullptr, e.data());
      set_compute_mode(ComputeMode::Fast);
      matmul(x.data(), M, *w, nullptr, fa.data());
      EXPECT_TRUE(same_bits(e.data(), fa.data(), M * N)) << kernel_path_name(p) << " " << dtype_name(w->dtype);
    }
  }
}

}  // namespace
