// The paged KV pool: sizes, the free list, reference counts, and lazily committed storage.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "core/error.h"
#include "model/kv_pool.h"

using namespace parscale;

namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.num_hidden_layers = 3;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  return c;
}

// Resident set size of this process in bytes (Linux).
int64_t resident_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * 4096;
}

}  // namespace

TEST(KvPool, SizesFollowTheShape) {
  const ModelConfig c = small_config();
  // 2 (K, V) * 3 layers * 2 heads * 16 slots * 8 dims * 4 bytes.
  EXPECT_EQ(KvPool::page_bytes(c, DType::F32, 16), 2 * 3 * 2 * 16 * 8 * 4);
  EXPECT_EQ(KvPool::page_bytes(c, DType::BF16, 16), 2 * 3 * 2 * 16 * 8 * 2);
  EXPECT_EQ(KvPool::pages_for_bytes(c, DType::F32, 16, 10 * 6144 + 100), 10);
  EXPECT_EQ(KvPool::pages_for_bytes(c, DType::F32, 16, 1), 1);
  EXPECT_EQ(KvPool::pages_for_bytes(c, DType::F32, 16, 0), 0);
  KvPool pool(c, DType::F16, 16, 5);
  EXPECT_EQ(pool.bytes(), 5 * KvPool::page_bytes(c, DType::F16, 16));
  EXPECT_EQ(pool.pages_total(), 5);
  EXPECT_EQ(pool.pages_free(), 5);
  EXPECT_EQ(pool.page_tokens(), 16);
  EXPECT_EQ(pool.dtype(), DType::F16);
  // Layers are laid out back to back: K0 V0 K1 V1 ...
  const int64_t layer = 5 * 2 * 16 * 8 * 2;
  EXPECT_EQ(static_cast<uint8_t*>(pool.v_layer(0)) - static_cast<uint8_t*>(pool.k_layer(0)), layer);
  EXPECT_EQ(static_cast<uint8_t*>(pool.k_layer(2)) - static_cast<uint8_t*>(pool.k_layer(0)), 4 * layer);
}

TEST(KvPool, RejectsBadShapes) {
  const ModelConfig c = small_config();
  EXPECT_THROW(KvPool(c, DType::I8, 16, 4), Error);
  EXPECT_THROW(KvPool(c, DType::F32, 0, 4), Error);
  EXPECT_THROW(KvPool(c, DType::F32, 16, 0), Error);
}

TEST(KvPool, AllocateRetainRelease) {
  KvPool pool(small_config(), DType::F32, 16, 4);
  std::set<int32_t> got;
  for (int i = 0; i < 4; ++i) {
    const int32_t p = pool.allocate();
    ASSERT_GE(p, 0);
    EXPECT_EQ(pool.refcount(p), 1);
    got.insert(p);
  }
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_EQ(pool.pages_used(), 4);
  pool.retain(2);
  EXPECT_EQ(pool.refcount(2), 2);
  pool.release(2);
  EXPECT_EQ(pool.pages_free(), 0);  // still one holder
  pool.release(2);
  EXPECT_EQ(pool.refcount(2), 0);
  EXPECT_EQ(pool.pages_free(), 1);
  EXPECT_EQ(pool.allocate(), 2);  // the freed page comes back
  for (int32_t p : got) pool.release(p);
  EXPECT_EQ(pool.pages_free(), 4);
  // Double release and retain of a free page are errors, not corruption.
  EXPECT_THROW(pool.release(1), Error);
  EXPECT_THROW(pool.retain(1), Error);
  EXPECT_THROW(pool.release(7), Error);
  EXPECT_EQ(pool.pages_free(), 4);
}

TEST(KvPool, StorageIsWritableEverywhere) {
  const ModelConfig c = small_config();
  KvPool pool(c, DType::F32, 16, 3);
  const int64_t per_layer = 3 * 2 * 16 * 8;  // floats
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    float* k = static_cast<float*>(pool.k_layer(l));
    float* v = static_cast<float*>(pool.v_layer(l));
    k[0] = 1.0f + l;
    k[per_layer - 1] = 2.0f + l;
    v[0] = 3.0f + l;
    v[per_layer - 1] = 4.0f + l;
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    EXPECT_EQ(static_cast<const float*>(pool.k_layer(l))[0], 1.0f + l);
    EXPECT_EQ(static_cast<const float*>(pool.k_layer(l))[per_layer - 1], 2.0f + l);
    EXPECT_EQ(static_cast<const float*>(pool.v_layer(l))[0], 3.0f + l);
    EXPECT_EQ(static_cast<const float*>(pool.v_layer(l))[per_layer - 1], 4.0f + l);
  }
}

TEST(KvPool, LargePoolIsNotTouchedUpFront) {
  // 1 GiB of pages: reserving it must not make it resident.
  const ModelConfig c = small_config();
  const int64_t pb = KvPool::page_bytes(c, DType::F32, 16);
  const int64_t before = resident_bytes();
  KvPool pool(c, DType::F32, 16, (int64_t{1} << 30) / pb);
  EXPECT_GE(pool.bytes(), (int64_t{1} << 30) - pb);
  const int64_t after = resident_bytes();
  EXPECT_LT(after - before, int64_t{64} << 20);
  static_cast<float*>(pool.k_layer(0))[0] = 1.0f;  // writable
}
