// Every kernel path this CPU supports (scalar, AVX2, AVX-512) against the scalar references
// (double-precision accumulation): matmul for every weight dtype and shapes with ragged edges,
// attention with GQA and long contexts (several key blocks), RMSNorm and SwiGLU.
#include <gtest/gtest.h>
#include "core/threads.h"

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/kernels.h"
#include "kernel_test_util.h"
#include "kernels/prefetch.h"

using namespace parscale;
using namespace parscale::kernels;

namespace {

using test::randn;
using test::supported_paths;

// Restores the active path after each test.
class KernelPaths : public test::ExactKernelsTest {};

// A weight matrix in `dtype` (I8: per-block symmetric quantisation with fp32 scales).
struct TestWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  WeightView view;
  TestWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, int64_t block = 32) {
    auto f = randn(static_cast<size_t>(rows * cols), seed, 0.5f);
    if (dtype == DType::I8) {
      bytes.resize(f.size());
      scales.resize(static_cast<size_t>(rows * (cols / block)));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < cols / block; ++b) {
          float amax = 0.0f;
          for (int64_t k = 0; k < block; ++k) amax = std::max(amax, std::fabs(f[r * cols + b * block + k]));
          const float s = amax > 0 ? amax / 127.0f : 1.0f;
          scales[r * (cols / block) + b] = s;
          for (int64_t k = 0; k < block; ++k)
            bytes[r * cols + b * block + k] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(f[r * cols + b * block + k] / s)));
        }
      view = {dtype, bytes.data(), rows, cols, scales.data(), block};
    } else {
      bytes.resize(f.size() * dtype_size(dtype));
      convert_from_f32(dtype, f.data(), bytes.data(), f.size());
      view = {dtype, bytes.data(), rows, cols};
    }
  }
};

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, static_cast<double>(std::fabs(w)));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rtol * (scale + 1.0)) << what << " at " << i;
}

TEST_F(KernelPaths, MatmulMatchesReferenceForEveryDtypeAndShape) {
  struct Shape { int64_t M, N, K; };
  const Shape shapes[] = {{1, 7, 5}, {1, 33, 100}, {3, 17, 520}, {8, 64, 1536}, {5, 13, 1030}, {37, 45, 96}, {200, 20, 64}};
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
      for (const Shape& s : shapes) {
        const int64_t block = s.K % 32 == 0 ? 32 : s.K;  // I8 blocks must divide K
        TestWeight w(dt, s.N, s.K, 7u + static_cast<uint32_t>(s.N), block);
        const auto x = randn(static_cast<size_t>(s.M * s.K), 11u + static_cast<uint32_t>(s.K));
        const auto bias = randn(static_cast<size_t>(s.N), 13u);
        std::vector<float> want(static_cast<size_t>(s.M * s.N)), got(want.size());
        matmul_ref(x.data(), s.M, w.view, bias.data(), want.data());
        matmul(x.data(), s.M, w.view, bias.data(), got.data());
        const std::string what = std::string(kernel_path_name(p)) + " " + dtype_name(dt) + " M=" + std::to_string(s.M) +
                                 " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
        expect_close(got, want, 2e-5, what);
        // matmul_add accumulates onto y (bias not applied).
        std::vector<float> acc(want.size(), 1.5f);
        matmul_add(x.data(), s.M, w.view, acc.data());
        for (size_t i = 0; i < want.size(); ++i) want[i] = want[i] - bias[i % s.N] + 1.5f;
        expect_close(acc, want, 2e-5, what + " (add)");
      }
    }
  }
}

TEST_F(KernelPaths, MatmulMultiAndFusedSwigluMatchSeparateReferences) {
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    for (DType dt : {DType::BF16, DType::I8, DType::F32}) {
      for (int64_t M : {1, 3, 8, 16, 40}) {
        const int64_t K = 96, I = 37;
        TestWeight a(dt, 50, K, 31u), b(dt, 9, K, 32u), g(dt, I, K, 33u), u(dt, I, K, 34u);
        const auto x = randn(static_cast<size_t>(M * K), 35u);
        const auto bias = randn(50, 36u);
        std::vector<float> ya(static_cast<size_t>(M * 50)), yb(static_cast<size_t>(M * 9)), wa(ya.size()), wb(yb.size());
        const MatmulOut outs[2] = {{&a.view, bias.data(), ya.data()}, {&b.view, nullptr, yb.data()}};
        matmul_multi(x.data(), M, outs, 2);
        matmul_ref(x.data(), M, a.view, bias.data(), wa.data());
        matmul_ref(x.data(), M, b.view, nullptr, wb.data());
        const std::string what = std::string(kernel_path_name(p)) + " " + dtype_name(dt) + " M=" + std::to_string(M);
        expect_close(ya, wa, 2e-5, what + " multi[0]");
        expect_close(yb, wb, 2e-5, what + " multi[1]");
        std::vector<float> gr(static_cast<size_t>(M * I)), ur(gr.size()), want(gr.size());
        matmul_ref(x.data(), M, g.view, nullptr, gr.data());
        matmul_ref(x.data(), M, u.view, nullptr, ur.data());
        for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<float>(gr[i] / (1.0 + std::exp(-static_cast<double>(gr[i]))) * ur[i]);
        std::vector<float> gs(gr.size()), us(gr.size());
        gate_up_swiglu(x.data(), M, g.view, u.view, gs.data(), us.data(), gs.data());
        expect_close(gs, want, 2e-5, what + " gate_up_swiglu");
      }
    }
  }
}

TEST_F(KernelPaths, AttentionMatchesReferenceWithGqaAndLongContext) {
  struct Case { int64_t heads, kv_heads, D, capacity; };
  const Case cases[] = {{4, 2, 8, 9}, {16, 2, 96, 300}, {6, 3, 12, 70}, {3, 1, 20, 130}};
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    for (const Case& c : cases) {
      const int64_t rows = 2, N = 5;
      auto k = randn(static_cast<size_t>(rows * c.kv_heads * c.capacity * c.D), 3u);
      auto v = randn(static_cast<size_t>(rows * c.kv_heads * c.capacity * c.D), 4u);
      KVLayer kv{k.data(), v.data(), c.kv_heads, c.capacity, c.D};
      const auto q = randn(static_cast<size_t>(N * c.heads * c.D), 5u, 0.6f);
      const std::vector<int32_t> row{0, 1, 1, 0, 1};
      const std::vector<int32_t> nvis{1, static_cast<int32_t>(c.capacity), static_cast<int32_t>(c.capacity / 2) + 1, 65 % static_cast<int32_t>(c.capacity) + 1, 2};
      std::vector<float> want(q.size()), got(q.size()), lse(static_cast<size_t>(N * c.heads), 0.0f);
      // The contract: num_threads * max(n_visible) floats (the machine may have more than 64 threads).
      std::vector<float> scratch(static_cast<size_t>(parscale::num_threads()) * static_cast<size_t>(c.capacity));
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
      attention_ref(q.data(), N, c.heads, row.data(), nvis.data(), kv, scale, want.data());
      attention(q.data(), N, c.heads, row.data(), nvis.data(), kv, scale, got.data(), scratch.data(), lse.data());
      expect_close(got, want, 1e-5, std::string(kernel_path_name(p)) + " D=" + std::to_string(c.D));
      // lse of token 0 (one visible slot): exactly its scaled score.
      for (int64_t h = 0; h < c.heads; ++h) {
        double s = 0;
        for (int64_t d = 0; d < c.D; ++d) s += static_cast<double>(q[h * c.D + d]) * kv.k_at(0, h / (c.heads / c.kv_heads), 0)[d];
        EXPECT_NEAR(lse[h], s * scale, 1e-4);
      }
    }
  }
}

TEST_F(KernelPaths, RmsnormAndSwigluMatchFormulas) {
  const int64_t M = 3, H = 1541;
  const auto x = randn(static_cast<size_t>(M * H), 21u, 3.0f);
  const auto w = randn(static_cast<size_t>(H), 22u);
  std::vector<float> want(x.size());
  rmsnorm_ref(x.data(), w.data(), want.data(), M, H, 1e-6f);
  auto g = randn(1000, 23u, 6.0f);
  g[0] = -100.0f;
  g[1] = 90.0f;
  const auto u = randn(1000, 24u);
  std::vector<float> sw_want(1000);
  for (size_t i = 0; i < g.size(); ++i) sw_want[i] = static_cast<float>(g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i]);
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    std::vector<float> got(x.size());
    rmsnorm(x.data(), w.data(), got.data(), M, H, 1e-6f);
    expect_close(got, want, 1e-6, std::string("rmsnorm ") + kernel_path_name(p));
    std::vector<float> sw(1000);
    swiglu(g.data(), u.data(), sw.data(), 1000);
    for (size_t i = 0; i < sw.size(); ++i)
      ASSERT_NEAR(sw[i], sw_want[i], 1e-6 * (1.0 + std::fabs(sw_want[i]))) << kernel_path_name(p) << " swiglu " << i;
  }
}

TEST(KernelPrefetch, LookAheadRowStaysInsideTheWeights) {
  // The decode matmul prefetches the rows one tile (NR rows) ahead; for the last tiles that used to
  // form a pointer past the end of the weights (undefined behaviour). Every look-ahead row a
  // decode tile can ask for, for every matrix height and tile width, is a row of the matrix.
  for (int64_t rows = 1; rows <= 40; ++rows)
    for (int64_t tile = 1; tile <= 8; ++tile)
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t p = prefetch_row(r, tile, rows);
        EXPECT_GE(p, 0);
        EXPECT_LT(p, rows) << "row " << r << " of " << rows << ", tile " << tile;
        EXPECT_EQ(p, r + tile < rows ? r + tile : rows - 1);
      }
}

TEST(KernelDispatch, NamesParseAndUnknownPathIsAnError) {
  for (KernelPath p : {KernelPath::Scalar, KernelPath::AVX2, KernelPath::AVX512})
    EXPECT_EQ(parse_kernel_path(kernel_path_name(p)), p);
  EXPECT_THROW(parse_kernel_path("sse9"), std::exception);
  EXPECT_TRUE(kernel_path_supported(KernelPath::Scalar));
  EXPECT_TRUE(kernel_path_supported(best_kernel_path()));
}

}  // namespace
