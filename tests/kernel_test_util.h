// Helpers shared by the kernel tests: the kernel paths this CPU runs, seeded normal vectors.
#pragma once
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "test_util.h"

namespace parscale::test {

// Scalar, AVX2, AVX-512: those this binary has and this CPU runs.
inline std::vector<kernels::KernelPath> supported_paths() {
  std::vector<kernels::KernelPath> v;
  for (kernels::KernelPath p : {kernels::KernelPath::Scalar, kernels::KernelPath::AVX2, kernels::KernelPath::AVX512})
    if (kernels::kernel_path_supported(p)) v.push_back(p);
  return v;
}

// n values drawn from N(0, scale²) with a fixed seed.
inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A fixture for tests of the exact kernels: runs in exact mode (the default, auto, would send BF16
// and q8 weights to the fast kernels) and restores the kernel path and compute mode afterwards.
class ExactKernelsTest : public ::testing::Test {
 protected:
  void SetUp() override { saved_path_ = kernels::active_kernel_path(); }
  void TearDown() override { kernels::set_kernel_path(saved_path_); }

 private:
  ExactModeScope exact_;
  kernels::KernelPath saved_path_ = kernels::KernelPath::Scalar;
};

}  // namespace parscale::test
