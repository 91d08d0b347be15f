// The trainer's fp32 products on oneDNN's sgemm (kernels/gemm_f32.h): sgemm_tiled against a
// float64 reference for every transpose and beta, across tile boundaries; results independent of
// the thread count; the hooks (matmul, matmul_add, matmul_multi, matmul_backward_*) under a
// TrainingGemmScope against our own kernels, and inactive without one or on a forced kernel path.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/threads.h"
#include "kernels/backward.h"
#include "kernels/gemm_f32.h"
#include "kernels/kernels.h"

using namespace parscale;
namespace kb = parscale::kernels;

namespace {

std::vector<float> randf(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Largest |a − b| relative to max(1, |b|) over all entries.
double max_rel(const std::vector<float>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(1.0, std::abs(b[i])));
  return worst;
}

struct ThreadsScope {
  int keep = num_threads();
  explicit ThreadsScope(int n) { set_num_threads(n); }
  ~ThreadsScope() { set_num_threads(keep); }
};

}  // namespace

TEST(GemmF32, TiledMatchesReferenceForEveryLayout) {
  if (!kb::onednn_sgemm_available()) GTEST_SKIP() << "built without oneDNN (or PARSCALE_ONEDNN=0)";
  // R and Cn cross the 256-wide tiles; lda/ldb/ldc wider than the rows they hold.
  const int64_t R = 300, Cn = 270, Kr = 37, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      for (float beta : {0.0f, 1.0f}) {
        const int64_t lda = (ta ? R : Kr) + pad, ldb = (tb ? Kr : Cn) + pad, ldc = Cn + pad;
        const auto A = randf(static_cast<size_t>((ta ? Kr : R) * lda), 1), B = randf(static_cast<size_t>((tb ? Cn : Kr) * ldb), 2);
        auto C = randf(static_cast<size_t>(R * ldc), 3);
        std::vector<double> want(C.begin(), C.end());
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < Cn; ++c) {
            double s = 0;
            for (int64_t k = 0; k < Kr; ++k)
              s += static_cast<double>(ta ? A[k * lda + r] : A[r * lda + k]) * (tb ? B[c * ldb + k] : B[k * ldb + c]);
            want[r * ldc + c] = (beta == 0.0f ? 0.0 : want[r * ldc + c]) + s;
          }
        kb::sgemm_tiled(ta, tb, R, Cn, Kr, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
        EXPECT_LT(max_rel(C, want), 1e-5) << "trans_a " << ta << " trans_b " << tb << " beta " << beta;
      }
}

TEST(GemmF32, EmptyReductionWritesBetaTimesC) {
  if (!kb::onednn_sgemm_available()) GTEST_SKIP() << "built without oneDNN";
  std::vector<float> C(6, 5.0f);
  kb::sgemm_tiled(false, false, 2, 3, 0, nullptr, 1, nullptr, 3, 1.0f, C.data(), 3);
  EXPECT_EQ(C, std::vector<float>(6, 5.0f));
  kb::sgemm_tiled(false, false, 2, 3, 0, nullptr, 1, nullptr, 3, 0.0f, C.data(), 3);
  EXPECT_EQ(C, std::vector<float>(6, 0.0f));
}

TEST(GemmF32, ResultDoesNotDependOnThreadCount) {
  if (!kb::onednn_sgemm_available()) GTEST_SKIP() << "built without oneDNN";
  const int64_t R = 600, Cn = 520, Kr = 300;
  const auto A = randf(static_cast<size_t>(Kr * R), 4), B = randf(static_cast<size_t>(Kr * Cn), 5);
  auto run = [&](int threads) {
    ThreadsScope t(threads);
    std::vector<float> C(static_cast<size_t>(R * Cn), 1.0f);
    kb::sgemm_tiled(true, false, R, Cn, Kr, A.data(), R, B.data(), Cn, 1.0f, C.data(), Cn);
    return C;
  };
  const auto one = run(1);
  EXPECT_EQ(one, run(2));
  EXPECT_EQ(one, run(3));
}

TEST(GemmF32, ScopeRoutesTheTrainersProductsAndOnlyThem) {
  if (!kb::onednn_sgemm_available()) GTEST_SKIP() << "built without oneDNN";
  if (kb::active_kernel_path() != kb::best_kernel_path()) GTEST_SKIP() << "kernel path forced: the scope is inert (tested below)";
  const int64_t M = 70, N = 300, K = 260;
  const auto x = randf(static_cast<size_t>(M * K), 6), w = randf(static_cast<size_t>(N * K), 7), bias = randf(N, 8);
  const auto dy = randf(static_cast<size_t>(M * N), 9);
  const WeightView W{DType::F32, w.data(), N, K};
  auto products = [&]() {
    std::vector<std::vector<float>> out;
    std::vector<float> y(static_cast<size_t>(M * N)), y2(y.size());
    kb::matmul(x.data(), M, W, bias.data(), y.data());
    out.push_back(y);
    y.assign(y.size(), 0.5f);
    kb::matmul_add(x.data(), M, W, y.data());
    out.push_back(y);
    const kb::MatmulOut outs[2] = {{&W, bias.data(), y.data()}, {&W, nullptr, y2.data()}};
    kb::matmul_multi(x.data(), M, outs, 2);
    out.push_back(y);
    out.push_back(y2);
    std::vector<float> dx(static_cast<size_t>(M * K), 0.25f), dW(static_cast<size_t>(N * K), 0.25f), db(N, 0.25f);
    kb::matmul_backward_input(dy.data(), M, w.data(), N, K, dx.data(), true);
    kb::matmul_backward_weight(dy.data(), x.data(), M, N, K, dW.data(), db.data());
    out.push_back(dx);
    out.push_back(dW);
    out.push_back(db);
    return out;
  };
  const auto ours = products();
  EXPECT_FALSE(kb::training_gemm_active());
  std::vector<std::vector<float>> onednn;
  {
    const kb::TrainingGemmScope scope;
    EXPECT_TRUE(kb::training_gemm_active());
    onednn = products();
  }
  EXPECT_FALSE(kb::training_gemm_active());
  EXPECT_EQ(products(), ours);  // our kernels again once the scope is gone
  ASSERT_EQ(onednn.size(), ours.size());
  bool any_differs = false;
  for (size_t i = 0; i < ours.size(); ++i) {
    ASSERT_EQ(onednn[i].size(), ours[i].size());
    double worst = 0;
    for (size_t j = 0; j < ours[i].size(); ++j) {
      worst = std::max(worst, std::abs(static_cast<double>(onednn[i][j]) - ours[i][j]) / std::max(1.0, std::abs(static_cast<double>(ours[i][j]))));
      any_differs = any_differs || onednn[i][j] != ours[i][j];
    }
    EXPECT_LT(worst, 2e-5) << "product " << i;
  }
  // The bias gradient keeps its own in-order sums (bitwise); the products' summation order differs.
  EXPECT_EQ(onednn.back(), ours.back());
  EXPECT_TRUE(any_differs) << "the scope did not route any product to oneDNN";
}

TEST(GemmF32, ForcedKernelPathKeepsOurKernels) {
  const kb::KernelPath keep = kb::active_kernel_path();
  const kb::TrainingGemmScope scope;
  if (kb::best_kernel_path() != kb::KernelPath::Scalar) {
    kb::set_kernel_path(kb::KernelPath::Scalar);
    EXPECT_FALSE(kb::training_gemm_active());
  }
  kb::set_kernel_path(keep);
  EXPECT_EQ(kb::training_gemm_active(), kb::onednn_sgemm_available() && keep == kb::best_kernel_path());
}
