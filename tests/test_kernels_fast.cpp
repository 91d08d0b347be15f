// The fast compute mode: BF16 weights through the bf16 dot-product kernels (AVX512-BF16) against
// their scalar reference matmul_bf16_ref (bf16-rounded x, exact products, double sums); q8 weights
// (dequantized to bf16 per tile) against matmul_q8bf16_ref; batch invariance in fast mode; other
// dtypes and q8 blocks not a multiple of 16 unchanged by the mode; mode names and parsing; BF16
// weights packed for oneDNN (kernels/packed.h) against the same reference, row invariance across M
// and its row chunks, independence of the slice count, and a released plain copy.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "kernels/packed.h"
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

// q8: random int8 values in [-127, 127] and positive scales, one per `block` values along K.
struct Q8Weight {
  std::vector<int8_t> q;
  std::vector<float> scales;
  WeightView view;
  Q8Weight(int64_t rows, int64_t cols, int64_t block, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> qd(-127, 127);
    std::uniform_real_distribution<float> sd(1e-3f, 2e-2f);
    q.resize(static_cast<size_t>(rows * cols));
    for (auto& v : q) v = static_cast<int8_t>(qd(rng));
    scales.resize(static_cast<size_t>(rows * (cols / block)));
    for (auto& v : scales) v = sd(rng);
    view = {DType::I8, q.data(), rows, cols, scales.data(), block};
  }
  // The values the fast mode multiplies: bf16(float(q) * scale), as bf16 bits.
  std::vector<uint16_t> dequantized_bf16() const {
    std::vector<uint16_t> b(q.size());
    const int64_t nb = view.cols / view.block;
    for (int64_t r = 0; r < view.rows; ++r)
      for (int64_t k = 0; k < view.cols; ++k)
        b[static_cast<size_t>(r * view.cols + k)] =
            f32_to_bf16(static_cast<float>(q[static_cast<size_t>(r * view.cols + k)]) * scales[static_cast<size_t>(r * nb + k / view.block)]);
    return b;
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

// In fast mode, for y = x · W^T + bias (`want` from the reference, `got` from matmul): matmul_add
// accumulates the same products onto y (bound from `bound`, W's values as the kernels see them),
// and for K >= 96 the result differs from exact mode somewhere (fast is really another arithmetic).
void expect_add_and_not_exact(const std::vector<float>& x, int64_t M, const WeightView& W, const WeightView& bound,
                              const std::vector<float>& bias, std::vector<float> want, const std::vector<float>& got,
                              const std::string& what) {
  std::vector<float> acc(want.size(), 1.5f);
  matmul_add(x.data(), M, W, acc.data());
  for (size_t i = 0; i < want.size(); ++i) want[i] = want[i] - bias[i % static_cast<size_t>(W.rows)] + 1.5f;
  expect_fast_close(acc, want, x, bound, M, what + " (add)");
  set_compute_mode(ComputeMode::Exact);
  std::vector<float> exact(want.size());
  matmul(x.data(), M, W, bias.data(), exact.data());
  set_compute_mode(ComputeMode::Fast);
  if (W.cols >= 96) {
    EXPECT_FALSE(same_bits(exact.data(), got.data(), M * W.rows)) << what;
  }
}

// matmul_multi (a with bias, b) and gate_up_swiglu (g, u), and matmul of a, over the first M of
// kMaxM rows of x [kMaxM, K] for every M in `ms`, each compared bit for bit with the same rows
// computed one at a time; returns those one-row outputs (for the reference checks).
struct RowOutputs {
  std::vector<float> ya, yb, sw;
};
RowOutputs expect_rows_do_not_depend_on_m(const std::vector<float>& x, int64_t K, int64_t kMaxM, const WeightView& a,
                                          const WeightView& b, const WeightView& g, const WeightView& u,
                                          const std::vector<float>& bias, std::initializer_list<int64_t> ms) {
  const int64_t Na = a.rows, Nb = b.rows, I = g.rows;
  RowOutputs one{std::vector<float>(static_cast<size_t>(kMaxM * Na)), std::vector<float>(static_cast<size_t>(kMaxM * Nb)),
                 std::vector<float>(static_cast<size_t>(kMaxM * I))};
  std::vector<float> gs(one.sw.size()), us(one.sw.size());
  for (int64_t r = 0; r < kMaxM; ++r) {
    const MatmulOut outs[2] = {{&a, bias.data(), one.ya.data() + r * Na}, {&b, nullptr, one.yb.data() + r * Nb}};
    matmul_multi(x.data() + r * K, 1, outs, 2);
    gate_up_swiglu(x.data() + r * K, 1, g, u, gs.data(), us.data(), one.sw.data() + r * I);
  }
  for (int64_t M : ms) {
    std::vector<float> ya(static_cast<size_t>(M * Na)), yb(static_cast<size_t>(M * Nb)), sw(static_cast<size_t>(M * I));
    const MatmulOut outs[2] = {{&a, bias.data(), ya.data()}, {&b, nullptr, yb.data()}};
    matmul_multi(x.data(), M, outs, 2);
    EXPECT_TRUE(same_bits(ya.data(), one.ya.data(), M * Na)) << "multi[0] M=" << M;
    EXPECT_TRUE(same_bits(yb.data(), one.yb.data(), M * Nb)) << "multi[1] M=" << M;
    gate_up_swiglu(x.data(), M, g, u, gs.data(), us.data(), sw.data());
    EXPECT_TRUE(same_bits(sw.data(), one.sw.data(), M * I)) << "gate_up_swiglu M=" << M;
    std::vector<float> y(static_cast<size_t>(M * Na));
    matmul(x.data(), M, a, bias.data(), y.data());
    EXPECT_TRUE(same_bits(y.data(), one.ya.data(), M * Na)) << "matmul M=" << M;
  }
  return one;
}

struct Shape {
  int64_t M, N, K;
};

// BF16 W [s.N, s.K] in fast mode on random x [s.M, s.K] and bias: matmul against matmul_bf16_ref,
// then expect_add_and_not_exact.
void expect_bf16_matches_reference(const WeightView& W, const Shape& s, const std::string& label) {
  const auto x = randn(static_cast<size_t>(s.M * s.K), 4u + static_cast<uint32_t>(s.N));
  const auto bias = randn(static_cast<size_t>(s.N), 5u);
  std::vector<float> want(static_cast<size_t>(s.M * s.N)), got(want.size());
  matmul_bf16_ref(x.data(), s.M, W, bias.data(), want.data());
  matmul(x.data(), s.M, W, bias.data(), got.data());
  const std::string what = label + "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
  expect_fast_close(got, want, x, W, s.M, what);
  expect_add_and_not_exact(x, s.M, W, W, bias, want, got, what);
}

TEST(ComputeModeNames, ParseAndNames) {
  EXPECT_EQ(parse_compute_mode("exact"), ComputeMode::Exact);
  EXPECT_EQ(parse_compute_mode("fast"), ComputeMode::Fast);
  EXPECT_EQ(parse_compute_mode("auto"), ComputeMode::Auto);
  EXPECT_STREQ(compute_mode_name(ComputeMode::Auto), "auto");
  EXPECT_STREQ(compute_mode_name(ComputeMode::Fast), "fast");
  EXPECT_STREQ(compute_mode_name(ComputeMode::Exact), "exact");
  EXPECT_THROW(parse_compute_mode("turbo"), Error);
  EXPECT_THROW(parse_compute_mode(nullptr), Error);
}

TEST_F(FastMode, Bf16DotMatmulMatchesItsReference) {
  if (!fast_bf16_supported()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  const Shape shapes[] = {{1, 7, 5}, {1, 33, 100}, {3, 17, 520}, {8, 64, 1536}, {5, 13, 1030}, {37, 45, 96}, {100, 20, 2100}};
  for (const Shape& s : shapes) {
    Bf16Weight w(s.N, s.K, 3u + static_cast<uint32_t>(s.K));
    expect_bf16_matches_reference(w.view, s, "");
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
  const RowOutputs one = expect_rows_do_not_depend_on_m(x, K, kMaxM, a.view, b.view, g.view, u.view, bias, {1, 2, 7, 31, 32, 33, 100});
  const std::vector<float>&ya1 = one.ya, &sw1 = one.sw;
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

TEST_F(FastMode, Q8MatmulMatchesItsReference) {
  if (!fast_bf16_supported()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  struct Shape { int64_t M, N, K, block; };
  // K past one 1024-column chunk, K not a multiple of 32 (48, 1040), M past one 96-row block,
  // blocks of 16, 32 and 64.
  const Shape shapes[] = {{1, 7, 48, 16}, {1, 33, 96, 32}, {3, 17, 1040, 16}, {8, 64, 1536, 32}, {5, 13, 2048, 64},
                          {37, 45, 96, 32}, {100, 20, 2112, 32}, {130, 18, 256, 64}};
  for (const Shape& s : shapes) {
    Q8Weight w(s.N, s.K, s.block, 7u + static_cast<uint32_t>(s.K));
    const auto x = randn(static_cast<size_t>(s.M * s.K), 8u + static_cast<uint32_t>(s.N));
    const auto bias = randn(static_cast<size_t>(s.N), 9u);
    std::vector<float> want(static_cast<size_t>(s.M * s.N)), got(want.size());
    matmul_q8bf16_ref(x.data(), s.M, w.view, bias.data(), want.data());
    matmul(x.data(), s.M, w.view, bias.data(), got.data());
    const std::string what = "M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) +
                             " block=" + std::to_string(s.block);
    // The error bound of the bf16 kernels, on the dequantized weights.
    const auto wb = w.dequantized_bf16();
    const WeightView wbv{DType::BF16, wb.data(), s.N, s.K};
    expect_fast_close(got, want, x, wbv, s.M, what);
    // And the same outputs as the BF16 kernel on those dequantized weights, bit for bit.
    std::vector<float> via_bf16(want.size());
    matmul(x.data(), s.M, wbv, bias.data(), via_bf16.data());
    EXPECT_TRUE(same_bits(via_bf16.data(), got.data(), s.M * s.N)) << what;
    expect_add_and_not_exact(x, s.M, w.view, wbv, bias, want, got, what);
  }
}

TEST_F(FastMode, Q8MultiAndGateUpSwigluRowsDoNotDependOnM) {
  if (!fast_bf16_supported()) GTEST_SKIP() << "no AVX512-BF16 on this CPU";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  // K: an even and an odd number of 32-column blocks (the decode loop takes two blocks per turn);
  // blocks of 32 (the decode kernel's own loop for up to 4 x rows) and 64.
  struct Case { int64_t K, block; };
  for (const Case c : {Case{1088, 32}, Case{1056, 32}, Case{1088, 64}}) {
    const int64_t K = c.K, I = 45, kMaxM = 100;
    const std::string what = "K=" + std::to_string(K) + " block=" + std::to_string(c.block);
    Q8Weight a(50, K, c.block, 51u), g(I, K, c.block, 53u), u(I, K, c.block, 54u);
    Bf16Weight b(9, K, 52u);  // a BF16 output beside q8 ones in one matmul_multi
    const auto x = randn(static_cast<size_t>(kMaxM * K), 55u);
    const auto bias = randn(50, 56u);
    // M = 1-8: the register-dequantizing decode kernels; above: the buffered chunks.
    const RowOutputs one =
        expect_rows_do_not_depend_on_m(x, K, kMaxM, a.view, b.view, g.view, u.view, bias, {1, 2, 3, 4, 5, 7, 8, 9, 32, 33, 97, 100});
    const std::vector<float>&ya1 = one.ya, &sw1 = one.sw;
    std::vector<float> wa(ya1.size()), wg(sw1.size()), wu(sw1.size());
    matmul_q8bf16_ref(x.data(), kMaxM, a.view, bias.data(), wa.data());
    const auto ab = a.dequantized_bf16();
    expect_fast_close(ya1, wa, x, WeightView{DType::BF16, ab.data(), 50, K}, kMaxM, "q8 multi[0] " + what);
    matmul_q8bf16_ref(x.data(), kMaxM, g.view, nullptr, wg.data());
    matmul_q8bf16_ref(x.data(), kMaxM, u.view, nullptr, wu.data());
    for (size_t i = 0; i < sw1.size(); ++i) {
      const double gv = wg[i], want = gv / (1.0 + std::exp(-gv)) * wu[i];
      ASSERT_NEAR(sw1[i], want, 1e-4 * (1.0 + std::fabs(want))) << "q8 gate_up_swiglu " << what << " " << i;
    }
  }
}

TEST_F(FastMode, Q8BlocksNotAMultipleOf16ComputeAsInExactMode) {
  const int64_t M = 12, N = 11, K = 96;
  Q8Weight w(N, K, 8, 61u);
  const auto x = randn(static_cast<size_t>(M * K), 62u);
  for (KernelPath p : {KernelPath::Scalar, KernelPath::AVX2, KernelPath::AVX512}) {
    if (!kernel_path_supported(p)) continue;
    set_kernel_path(p);
    std::vector<float> e(static_cast<size_t>(M * N)), fa(e.size());
    set_compute_mode(ComputeMode::Exact);
    matmul(x.data(), M, w.view, nullptr, e.data());
    set_compute_mode(ComputeMode::Fast);
    matmul(x.data(), M, w.view, nullptr, fa.data());
    EXPECT_TRUE(same_bits(e.data(), fa.data(), M * N)) << kernel_path_name(p);
  }
}

// Auto (the default): q8 on the fast kernels, BF16 (and every other dtype) exact.
TEST_F(FastMode, AutoModeIsFastForBf16AndQ8) {
  const int64_t M = 9, N = 21, K = 640;
  Q8Weight q(N, K, 32, 71u);
  Bf16Weight b(N, K, 72u);
  const auto x = randn(static_cast<size_t>(M * K), 73u);
  for (KernelPath p : {KernelPath::Scalar, KernelPath::AVX2, KernelPath::AVX512}) {
    if (!kernel_path_supported(p)) continue;
    set_kernel_path(p);
    for (const WeightView* w : {&q.view, &b.view}) {
      std::vector<float> e(static_cast<size_t>(M * N)), f(e.size()), a(e.size());
      set_compute_mode(ComputeMode::Exact);
      matmul(x.data(), M, *w, nullptr, e.data());
      set_compute_mode(ComputeMode::Fast);
      matmul(x.data(), M, *w, nullptr, f.data());
      set_compute_mode(ComputeMode::Auto);
      matmul(x.data(), M, *w, nullptr, a.data());
      const bool fast_here = p == KernelPath::AVX512 && fast_bf16_supported();
      const std::string what = std::string(kernel_path_name(p)) + " " + dtype_name(w->dtype);
      EXPECT_EQ(uses_bf16dot(*w), fast_here) << what;
      EXPECT_TRUE(same_bits(a.data(), (fast_here ? f : e).data(), M * N)) << what;
      if (fast_here) {
        EXPECT_FALSE(same_bits(e.data(), f.data(), M * N)) << what;
      }
    }
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

// A BF16 weight with its oneDNN packed copy attached (`slices` column slices; 0: one per thread).
struct PackedBf16 : Bf16Weight {
  std::shared_ptr<PackedWeight> packed;
  PackedBf16(int64_t rows, int64_t cols, uint32_t seed, int slices = 0) : Bf16Weight(rows, cols, seed) {
    packed = pack_bf16(view, slices);
    view.packed = packed.get();
  }
};

TEST_F(FastMode, PackedBf16MatmulMatchesItsReference) {
  if (!packed_bf16_supported()) GTEST_SKIP() << "no oneDNN or no AVX512-BF16 here";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  // K: odd, not a multiple of 32, past oneDNN's K blocks; N: under and past a 64-column slice
  // boundary; M: within one chunk, across the 64-row and 256-row chunks.
  const Shape shapes[] = {{1, 7, 5}, {1, 33, 100}, {3, 130, 520}, {8, 64, 1536}, {65, 45, 1030}, {300, 20, 96}, {70, 200, 2100}};
  for (const Shape& s : shapes) {
    PackedBf16 w(s.N, s.K, 3u + static_cast<uint32_t>(s.K));
    ASSERT_NE(w.packed, nullptr);
    EXPECT_GE(packed_bytes(*w.packed), s.N * s.K * 2);
    expect_bf16_matches_reference(w.view, s, "packed ");
  }
  // Only BF16 is packed.
  const auto f = randn(64, 6u);
  EXPECT_EQ(pack_bf16(WeightView{DType::F32, f.data(), 8, 8}), nullptr);
}

TEST_F(FastMode, PackedRowsDoNotDependOnMOrOnTheSliceCount) {
  if (!packed_bf16_supported()) GTEST_SKIP() << "no oneDNN or no AVX512-BF16 here";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  const int64_t K = 1100, I = 150, kMaxM = 300;
  PackedBf16 a(200, K, 31u), b(9, K, 32u), g(I, K, 33u), u(I, K, 34u);
  const auto x = randn(static_cast<size_t>(kMaxM * K), 35u);
  const auto bias = randn(200, 36u);
  // M = 1 .. 64 run as one chunk; 65, 130, 257, 300 as 64/128/256-row chunks and a remainder.
  const RowOutputs one =
      expect_rows_do_not_depend_on_m(x, K, kMaxM, a.view, b.view, g.view, u.view, bias, {1, 2, 7, 63, 64, 65, 130, 257, 300});
  std::vector<float> wa(one.ya.size());
  matmul_bf16_ref(x.data(), kMaxM, a.view, bias.data(), wa.data());
  expect_fast_close(one.ya, wa, x, a.view, kMaxM, "packed multi[0]");
  // The same matrix cut into 1, 2, 3 or 4 column slices (one per thread by default): same bits.
  const int64_t M = 70;
  for (int slices : {1, 2, 3, 4}) {
    PackedBf16 s(200, K, 31u, slices);
    std::vector<float> y(static_cast<size_t>(M * 200));
    matmul(x.data(), M, s.view, bias.data(), y.data());
    EXPECT_TRUE(same_bits(y.data(), one.ya.data(), M * 200)) << slices << " slices";
  }
}

TEST_F(FastMode, PackedWithoutItsPlainCopyRunsOnlyInFastMode) {
  if (!packed_bf16_supported()) GTEST_SKIP() << "no oneDNN or no AVX512-BF16 here";
  set_kernel_path(KernelPath::AVX512);
  set_compute_mode(ComputeMode::Fast);
  const int64_t M = 5, N = 70, K = 300;
  PackedBf16 w(N, K, 51u);
  const auto x = randn(static_cast<size_t>(M * K), 52u);
  std::vector<float> with_plain(static_cast<size_t>(M * N)), without(with_plain.size());
  matmul(x.data(), M, w.view, nullptr, with_plain.data());
  WeightView released = w.view;
  released.data = nullptr;  // as pack_fast_weights(..., release_sources = true) leaves it
  matmul(x.data(), M, released, nullptr, without.data());
  EXPECT_TRUE(same_bits(with_plain.data(), without.data(), M * N));
  set_compute_mode(ComputeMode::Exact);
  try {
    matmul(x.data(), M, released, nullptr, without.data());
    FAIL() << "exact mode ran a matrix without its plain copy";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("packed for the fast compute mode"), std::string::npos) << e.what();
  }
  EXPECT_THROW(matmul_add(x.data(), M, released, without.data()), Error);
}

TEST_F(FastMode, PackedRowsReadBackAsStored) {
  if (!packed_bf16_supported()) GTEST_SKIP() << "no oneDNN or no AVX512-BF16 here";
  // Rows of every slice, shapes under and past oneDNN's column blocks and K pairs (odd K).
  for (const Shape& s : {Shape{0, 7, 5}, Shape{0, 130, 520}, Shape{0, 200, 1101}, Shape{0, 4096, 256}}) {
    for (int slices : {1, 3}) {
      PackedBf16 w(s.N, s.K, 61u + static_cast<uint32_t>(s.K), slices);
      ASSERT_NE(w.packed, nullptr);
      std::vector<float> got(static_cast<size_t>(s.K)), want(got.size());
      for (int64_t r = 0; r < s.N; r += (s.N > 300 ? 37 : 1)) {
        packed_row_f32(*w.packed, r, got.data());
        for (int64_t k = 0; k < s.K; ++k) want[static_cast<size_t>(k)] = bf16_to_f32(w.bits[static_cast<size_t>(r * s.K + k)]);
        ASSERT_TRUE(same_bits(got.data(), want.data(), s.K)) << "N=" << s.N << " K=" << s.K << " row " << r;
      }
      EXPECT_THROW(packed_row_f32(*w.packed, s.N, got.data()), Error);
    }
  }
}

}  // namespace
