// Batch invariance of the kernels in exact mode: on every kernel path (scalar, AVX2, AVX-512) and
// weight dtype, row r of a matmul over M rows is bitwise the matmul of row r alone, whatever M is
// (the decode path serves M <= 32, the prefill path M > 32) and whatever the other rows hold.
// The same for matmul_add, matmul_multi, gate_up_swiglu, and attention per token. The serving
// engine batches requests together, so a request's output must not depend on its neighbours.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/kernels.h"
#include "kernel_test_util.h"

using namespace parscale;
using namespace parscale::kernels;

namespace {

using test::randn;
using test::supported_paths;

class BatchInvariance : public test::ExactKernelsTest {};

struct TestWeight {
  std::vector<uint8_t> bytes;
  std::vector<float> scales;
  WeightView view;
  TestWeight(DType dtype, int64_t rows, int64_t cols, uint32_t seed, int64_t block) {
    auto f = randn(static_cast<size_t>(rows * cols), seed, 0.5f);
    if (dtype == DType::I8) {
      std::mt19937 g(seed);
      bytes.resize(f.size());
      for (auto& b : bytes) b = static_cast<uint8_t>(static_cast<int8_t>(static_cast<int>(g() % 255) - 127));
      scales.resize(static_cast<size_t>(rows * (cols / block)));
      for (auto& s : scales) s = 0.001f + static_cast<float>(g() % 1000) * 1e-5f;
      view = {dtype, bytes.data(), rows, cols, scales.data(), block};
    } else {
      bytes.resize(f.size() * dtype_size(dtype));
      convert_from_f32(dtype, f.data(), bytes.data(), f.size());
      view = {dtype, bytes.data(), rows, cols};
    }
  }
};

// Bitwise equality of n floats at a and b (reports the first difference).
::testing::AssertionResult same_bits(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t ua, ub;
    std::memcpy(&ua, a + i, 4);
    std::memcpy(&ub, b + i, 4);
    if (ua != ub)
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs " << b[i] << " (diff " << a[i] - b[i]
                                           << ")";
  }
  return ::testing::AssertionSuccess();
}

const int64_t kMs[] = {1, 2, 7, 31, 32, 33, 100};
constexpr int64_t kMaxM = 100;

struct Shape {
  int64_t N, K, block;  // block: I8 scale block
};
// K past one 512-element chunk of the prefill path, with and without a ragged tail; I8 with a
// block the decode path takes (32) and one it does not (K itself, not a multiple of the lanes).
const Shape kShapes[] = {{37, 1056, 32}, {21, 1060, 1060}, {19, 96, 32}};

std::string name(KernelPath p, DType dt, const Shape& s, int64_t M) {
  return std::string(kernel_path_name(p)) + " " + dtype_name(dt) + " N=" + std::to_string(s.N) + " K=" +
         std::to_string(s.K) + " M=" + std::to_string(M);
}

TEST_F(BatchInvariance, MatmulAndMatmulAddRowsDoNotDependOnM) {
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
      for (const Shape& s : kShapes) {
        TestWeight w(dt, s.N, s.K, 5u + static_cast<uint32_t>(s.K), s.block);
        const auto x = randn(static_cast<size_t>(kMaxM * s.K), 7u);
        const auto bias = randn(static_cast<size_t>(s.N), 8u);
        const auto y0 = randn(static_cast<size_t>(kMaxM * s.N), 9u);
        // Each row alone.
        std::vector<float> one(static_cast<size_t>(kMaxM * s.N)), one_add(y0);
        for (int64_t r = 0; r < kMaxM; ++r) {
          matmul(x.data() + r * s.K, 1, w.view, bias.data(), one.data() + r * s.N);
          matmul_add(x.data() + r * s.K, 1, w.view, one_add.data() + r * s.N);
        }
        for (int64_t M : kMs) {
          std::vector<float> y(static_cast<size_t>(M * s.N));
          matmul(x.data(), M, w.view, bias.data(), y.data());
          ASSERT_TRUE(same_bits(y.data(), one.data(), M * s.N)) << name(p, dt, s, M);
          std::vector<float> ya(y0.begin(), y0.begin() + M * s.N);
          matmul_add(x.data(), M, w.view, ya.data());
          ASSERT_TRUE(same_bits(ya.data(), one_add.data(), M * s.N)) << name(p, dt, s, M) << " (add)";
        }
      }
    }
  }
}

TEST_F(BatchInvariance, MatmulMultiAndGateUpSwigluRowsDoNotDependOnM) {
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::I8}) {
      for (const Shape& s : kShapes) {
        TestWeight a(dt, s.N, s.K, 11u, s.block), b(dt, 9, s.K, 12u, s.block);
        TestWeight g(dt, s.N + 3, s.K, 13u, s.block), u(dt, s.N + 3, s.K, 14u, s.block);
        const int64_t I = s.N + 3;
        const auto x = randn(static_cast<size_t>(kMaxM * s.K), 15u);
        const auto bias = randn(static_cast<size_t>(s.N), 16u);
        std::vector<float> ya1(static_cast<size_t>(kMaxM * s.N)), yb1(static_cast<size_t>(kMaxM * 9));
        std::vector<float> sw1(static_cast<size_t>(kMaxM * I)), gs(static_cast<size_t>(kMaxM * I)), us(gs.size());
        for (int64_t r = 0; r < kMaxM; ++r) {
          const MatmulOut outs[2] = {{&a.view, bias.data(), ya1.data() + r * s.N}, {&b.view, nullptr, yb1.data() + r * 9}};
          matmul_multi(x.data() + r * s.K, 1, outs, 2);
          gate_up_swiglu(x.data() + r * s.K, 1, g.view, u.view, gs.data(), us.data(), sw1.data() + r * I);
        }
        for (int64_t M : kMs) {
          std::vector<float> ya(static_cast<size_t>(M * s.N)), yb(static_cast<size_t>(M * 9)), sw(static_cast<size_t>(M * I));
          const MatmulOut outs[2] = {{&a.view, bias.data(), ya.data()}, {&b.view, nullptr, yb.data()}};
          matmul_multi(x.data(), M, outs, 2);
          ASSERT_TRUE(same_bits(ya.data(), ya1.data(), M * s.N)) << name(p, dt, s, M) << " multi[0]";
          ASSERT_TRUE(same_bits(yb.data(), yb1.data(), M * 9)) << name(p, dt, s, M) << " multi[1]";
          gate_up_swiglu(x.data(), M, g.view, u.view, gs.data(), us.data(), sw.data());
          ASSERT_TRUE(same_bits(sw.data(), sw1.data(), M * I)) << name(p, dt, s, M) << " gate_up_swiglu";
        }
      }
    }
  }
}

TEST_F(BatchInvariance, AttentionPerTokenDoesNotDependOnTheOtherTokens) {
  struct Case { int64_t heads, kv_heads, D, capacity; };
  const Case cases[] = {{4, 2, 8, 9}, {12, 2, 128, 200}, {6, 3, 12, 70}};
  for (KernelPath p : supported_paths()) {
    set_kernel_path(p);
    for (const Case& c : cases) {
      const int64_t rows = 3, N = 33;
      auto k = randn(static_cast<size_t>(rows * c.kv_heads * c.capacity * c.D), 3u);
      auto v = randn(static_cast<size_t>(rows * c.kv_heads * c.capacity * c.D), 4u);
      KVLayer kv{k.data(), v.data(), c.kv_heads, c.capacity, c.D};
      const auto q = randn(static_cast<size_t>(N * c.heads * c.D), 5u, 0.6f);
      std::vector<int32_t> row(N), nvis(N);
      for (int64_t i = 0; i < N; ++i) {
        row[i] = static_cast<int32_t>(i % rows);
        nvis[i] = static_cast<int32_t>(1 + (i * 37) % c.capacity);
      }
      std::vector<float> scratch(static_cast<size_t>(256 * c.capacity));
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
      const int64_t HD = c.heads * c.D;
      std::vector<float> all(static_cast<size_t>(N * HD)), lse_all(static_cast<size_t>(N * c.heads));
      attention(q.data(), N, c.heads, row.data(), nvis.data(), kv, scale, all.data(), scratch.data(), lse_all.data());
      for (int64_t i = 0; i < N; ++i) {
        std::vector<float> one(static_cast<size_t>(HD)), lse1(static_cast<size_t>(c.heads));
        attention(q.data() + i * HD, 1, c.heads, row.data() + i, nvis.data() + i, kv, scale, one.data(), scratch.data(),
                  lse1.data());
        ASSERT_TRUE(same_bits(one.data(), all.data() + i * HD, HD)) << kernel_path_name(p) << " D=" << c.D << " token " << i;
        ASSERT_TRUE(same_bits(lse1.data(), lse_all.data() + i * c.heads, c.heads)) << kernel_path_name(p) << " lse " << i;
      }
    }
  }
}

}  // namespace
