// Paged attention (fp32 prefix read in place + real tokens through a block table, KV in F32 /
// BF16 / F16) on every kernel path this CPU has, against the double-precision reference; a
// token's result must not depend on the other tokens of the call; kv_write round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/kernels.h"
#include "kernel_test_util.h"

using namespace parscale;
using namespace parscale::kernels;

namespace {

struct Case {
  int64_t heads, kv_heads, D, page_tokens, prefix;
  std::vector<int32_t> n_real;  // per token
};

struct Fixture {
  std::vector<uint8_t> k, v;
  std::vector<float> prefix_k, prefix_v, q;
  std::vector<std::vector<int32_t>> tables;
  std::vector<KvView> views;
  PagedKV kv;
};

Fixture make(const Case& c, DType dtype, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Fixture s;
  const int64_t N = static_cast<int64_t>(c.n_real.size());
  int64_t pages_needed = 0;
  for (int32_t n : c.n_real) pages_needed += (n + c.page_tokens - 1) / c.page_tokens;
  const int64_t n_pages = pages_needed + 3;
  const size_t elems = static_cast<size_t>(n_pages * c.kv_heads * c.page_tokens * c.D);
  s.k.resize(elems * dtype_size(dtype));
  s.v.resize(elems * dtype_size(dtype));
  s.kv = PagedKV{s.k.data(), s.v.data(), dtype, c.kv_heads, c.page_tokens, c.D};
  // Pages handed out in a shuffled order, so block tables are not contiguous.
  std::vector<int32_t> order(static_cast<size_t>(n_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  size_t next = 0;
  s.prefix_k.resize(static_cast<size_t>(N * c.kv_heads * c.prefix * c.D));
  s.prefix_v.resize(s.prefix_k.size());
  for (auto& x : s.prefix_k) x = nd(rng);
  for (auto& x : s.prefix_v) x = nd(rng);
  s.q.resize(static_cast<size_t>(N * c.heads * c.D));
  for (auto& x : s.q) x = nd(rng);
  s.tables.resize(static_cast<size_t>(N));
  std::vector<float> kt(static_cast<size_t>(c.kv_heads * c.D)), vt(kt.size());
  for (int64_t i = 0; i < N; ++i) {
    auto& t = s.tables[static_cast<size_t>(i)];
    for (int64_t p = 0; p < (c.n_real[i] + c.page_tokens - 1) / c.page_tokens; ++p) t.push_back(order[next++]);
    for (int64_t j = 0; j < c.n_real[i]; ++j) {
      for (auto& x : kt) x = nd(rng);
      for (auto& x : vt) x = nd(rng);
      kv_write(s.kv, t.data(), j, kt.data(), vt.data());
    }
  }
  for (int64_t i = 0; i < N; ++i) {
    KvView view;
    view.n_prefix = static_cast<int32_t>(c.prefix);
    view.prefix_k = c.prefix ? s.prefix_k.data() + i * c.kv_heads * c.prefix * c.D : nullptr;
    view.prefix_v = c.prefix ? s.prefix_v.data() + i * c.kv_heads * c.prefix * c.D : nullptr;
    view.prefix_head_stride = c.prefix * c.D;
    view.n_real = c.n_real[i];
    view.pages = s.tables[static_cast<size_t>(i)].data();
    s.views.push_back(view);
  }
  return s;
}

struct PathGuard {
  KernelPath saved = active_kernel_path();
  ~PathGuard() { set_kernel_path(saved); }
};

const std::vector<Case> kCases = {
    {4, 2, 16, 4, 3, {1, 5, 9, 16}},         // GQA 2, pages of 4, prefix 3
    {6, 3, 12, 64, 0, {1, 64, 65, 130}},     // no prefix, block-sized pages, D not a vector multiple
    {8, 1, 32, 16, 48, {7, 33, 200}},        // MQA, prefix 48 (several blocks), long context
    {2, 2, 8, 5, 1, {1, 2, 11}},             // odd page size
    // Head dims of whole vectors take the register-tiled blocks: 4-head score tiles with head
    // tails, values in passes of several heads, blocks whose key count is not a multiple of 4,
    // the next block prefetched across pages.
    {16, 2, 96, 64, 48, {1, 63, 130, 257}},  // the 1.8B shape: G = 8, D = 96
    {12, 2, 96, 64, 5, {3, 66}},             // G = 6: one 4-head tile + 2 tail heads
    {12, 2, 128, 32, 0, {1, 33, 97}},        // G = 6, D = 128 (3-head value passes on AVX-512)
    {20, 4, 64, 16, 7, {5, 40}},             // G = 5, D = 64
    {8, 2, 48, 16, 5, {3, 70}},              // D = 48: whole vectors on AVX2 only
    {4, 1, 256, 32, 0, {1, 37}},             // D = 256: 16 vectors on AVX-512
    {4, 2, 192, 64, 3, {2, 65}},             // D = 192: 12 vectors on AVX-512
};

}  // namespace

TEST(AttentionPaged, MatchesReferenceOnEveryPathAndKvDtype) {
  PathGuard guard;
  for (KernelPath path : test::supported_paths()) {
    set_kernel_path(path);
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      for (size_t ci = 0; ci < kCases.size(); ++ci) {
        const Case& c = kCases[ci];
        Fixture s = make(c, dt, 11 + ci);
        const int64_t N = static_cast<int64_t>(c.n_real.size());
        std::vector<float> want(s.q.size()), got(s.q.size()), lse(static_cast<size_t>(N * c.heads));
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.D));
        attention_paged_ref(s.q.data(), N, c.heads, s.views.data(), s.kv, scale, want.data());
        attention_paged(s.q.data(), N, c.heads, s.views.data(), s.kv, scale, got.data(), lse.data());
        double max_err = 0.0;
        for (size_t i = 0; i < got.size(); ++i) max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
        EXPECT_LT(max_err, 2e-5) << kernel_path_name(path) << " " << dtype_name(dt) << " case " << ci;
        for (float x : lse) EXPECT_TRUE(std::isfinite(x));
      }
    }
  }
}

TEST(AttentionPaged, TiledBlockEqualsGenericBlockBitForBit) {
  PathGuard guard;
  struct TilingGuard {
    ~TilingGuard() { set_attention_tiling(true); }
  } tiling_guard;
  for (KernelPath path : test::supported_paths()) {
    if (path == KernelPath::Scalar) continue;
    set_kernel_path(path);
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      for (size_t ci = 0; ci < kCases.size(); ++ci) {
        const Case& c = kCases[ci];
        Fixture s = make(c, dt, 31 + ci);
        const int64_t N = static_cast<int64_t>(c.n_real.size());
        std::vector<float> tiled(s.q.size()), generic(s.q.size());
        std::vector<float> lse_t(static_cast<size_t>(N * c.heads)), lse_g(lse_t.size());
        set_attention_tiling(true);
        // The real head dims (and D = 256 on AVX-512) do take the tiled block; an odd one does not.
        if (c.D == 64 || c.D == 96 || c.D == 128 || (c.D == 256 && path == KernelPath::AVX512))
          EXPECT_TRUE(attention_tiled(c.D)) << kernel_path_name(path) << " D " << c.D;
        if (c.D == 12) EXPECT_FALSE(attention_tiled(c.D));
        attention_paged(s.q.data(), N, c.heads, s.views.data(), s.kv, 0.3f, tiled.data(), lse_t.data());
        set_attention_tiling(false);
        EXPECT_FALSE(attention_tiled(c.D));
        attention_paged(s.q.data(), N, c.heads, s.views.data(), s.kv, 0.3f, generic.data(), lse_g.data());
        for (size_t i = 0; i < tiled.size(); ++i)
          ASSERT_EQ(tiled[i], generic[i]) << kernel_path_name(path) << " " << dtype_name(dt) << " case " << ci << " element " << i;
        for (size_t i = 0; i < lse_t.size(); ++i) ASSERT_EQ(lse_t[i], lse_g[i]);
      }
    }
  }
}

TEST(AttentionPaged, TokenResultIndependentOfOtherTokens) {
  PathGuard guard;
  for (KernelPath path : test::supported_paths()) {
    set_kernel_path(path);
    const Case& c = kCases[2];
    Fixture s = make(c, DType::BF16, 5);
    const int64_t N = static_cast<int64_t>(c.n_real.size()), QD = c.heads * c.D;
    std::vector<float> all(s.q.size());
    attention_paged(s.q.data(), N, c.heads, s.views.data(), s.kv, 0.2f, all.data());
    for (int64_t i = 0; i < N; ++i) {
      std::vector<float> one(static_cast<size_t>(QD));
      attention_paged(s.q.data() + i * QD, 1, c.heads, &s.views[static_cast<size_t>(i)], s.kv, 0.2f, one.data());
      for (int64_t e = 0; e < QD; ++e) ASSERT_EQ(one[static_cast<size_t>(e)], all[static_cast<size_t>(i * QD + e)]) << kernel_path_name(path);
    }
  }
}

TEST(AttentionPaged, KvWriteStoresInPoolDtype) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    std::vector<uint8_t> k(2 * 2 * 4 * 8 * dtype_size(dt)), v(k.size());
    PagedKV kv{k.data(), v.data(), dt, 2, 4, 8};
    const std::vector<int32_t> table{1, 0};
    std::vector<float> kt(16), vt(16), back(8);
    for (int i = 0; i < 16; ++i) {
      kt[i] = 0.37f * static_cast<float>(i) - 2.0f;
      vt[i] = -0.11f * static_cast<float>(i);
    }
    kv_write(kv, table.data(), 5, kt.data(), vt.data());  // slot 5 = slot 1 of page table[1] = page 0
    const size_t off = kv.slot_offset(0, 1, 1);
    for (int d = 0; d < 8; ++d) {
      float got = 0.0f;
      if (dt == DType::F32) got = reinterpret_cast<float*>(k.data())[off + d];
      if (dt == DType::BF16) got = bf16_to_f32(reinterpret_cast<uint16_t*>(k.data())[off + d]);
      if (dt == DType::F16) got = f16_to_f32(reinterpret_cast<uint16_t*>(k.data())[off + d]);
      EXPECT_NEAR(got, kt[8 + d], std::fabs(kt[8 + d]) * 8e-3 + 1e-6) << dtype_name(dt);
    }
  }
}
