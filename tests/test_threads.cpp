// The persistent thread pool (core/threads.h): coverage, thread indices, nesting, exceptions,
// concurrent callers, resizing, and the caller's floating-point state in the workers.
#include "core/threads.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

using parscale::num_threads;
using parscale::parallel_for;
using parscale::parallel_for_each;
using parscale::set_num_threads;

namespace {

struct ThreadsRestore {
  int keep = num_threads();
  ~ThreadsRestore() { set_num_threads(keep); }
};

}  // namespace

TEST(ThreadPool, EveryIterationExactlyOnce) {
  ThreadsRestore restore;
  for (int threads : {1, 2, 3, 4}) {
    set_num_threads(threads);
    EXPECT_EQ(num_threads(), threads);
    for (int64_t n : {0, 1, 2, 7, 64, 1000, 100003}) {
      for (int64_t grain : {1, 3, 64, 100000}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        std::atomic<int64_t> blocks{0};
        parallel_for(n, grain, [&](int64_t b, int64_t e, int t) {
          ASSERT_LE(0, b);
          ASSERT_LT(b, e);
          ASSERT_LE(e, n);
          ASSERT_LE(e - b, grain);
          ASSERT_EQ(b % grain, 0);
          ASSERT_GE(t, 0);
          ASSERT_LT(t, threads);
          blocks.fetch_add(1);
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n " << n << " grain " << grain << " i " << i;
        EXPECT_EQ(blocks.load(), (n + grain - 1) / grain);
      }
    }
  }
}

TEST(ThreadPool, NoTwoRunningBlocksShareAThreadIndex) {
  ThreadsRestore restore;
  set_num_threads(4);
  std::vector<std::atomic<int>> busy(4);
  std::atomic<int> clashes{0};
  for (int rep = 0; rep < 50; ++rep) {
    parallel_for(256, 1, [&](int64_t, int64_t, int t) {
      if (busy[static_cast<size_t>(t)].fetch_add(1) != 0) clashes.fetch_add(1);
      volatile double s = 0;
      for (int i = 0; i < 2000; ++i) s = s + std::sqrt(static_cast<double>(i));
      busy[static_cast<size_t>(t)].fetch_sub(1);
    });
  }
  EXPECT_EQ(clashes.load(), 0);
}

TEST(ThreadPool, NestedCallsRunSeriallyWithTheOuterThreadIndex) {
  ThreadsRestore restore;
  set_num_threads(3);
  std::vector<std::atomic<int>> hits(64 * 50);
  std::atomic<int> wrong_index{0};
  parallel_for(64, 1, [&](int64_t b, int64_t e, int outer) {
    for (int64_t i = b; i < e; ++i)
      parallel_for(50, 7, [&](int64_t ib, int64_t ie, int inner) {
        if (inner != outer) wrong_index.fetch_add(1);
        for (int64_t j = ib; j < ie; ++j) hits[static_cast<size_t>(i * 50 + j)].fetch_add(1);
      });
  });
  EXPECT_EQ(wrong_index.load(), 0);
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPool, AnExceptionReachesTheCallerAfterEveryBlockRan) {
  ThreadsRestore restore;
  for (int threads : {1, 2, 4}) {
    set_num_threads(threads);
    std::atomic<int> ran{0};
    EXPECT_THROW(parallel_for(100, 1,
                              [&](int64_t b, int64_t, int) {
                                ran.fetch_add(1);
                                if (b == 37 || b == 80) throw std::runtime_error("block " + std::to_string(b));
                              }),
                 std::runtime_error);
    EXPECT_EQ(ran.load(), 100);
    // The pool is usable afterwards.
    std::atomic<int64_t> sum{0};
    parallel_for_each(1000, 10, [&](int64_t i) { sum.fetch_add(i); });
    EXPECT_EQ(sum.load(), 999 * 1000 / 2);
  }
}

TEST(ThreadPool, ConcurrentCallersBothComplete) {
  ThreadsRestore restore;
  set_num_threads(2);
  auto job = [](int64_t seed, int64_t& out) {
    for (int rep = 0; rep < 200; ++rep) {
      std::vector<int64_t> v(997);
      parallel_for_each(997, 5, [&](int64_t i) { v[static_cast<size_t>(i)] = i * seed; });
      out += std::accumulate(v.begin(), v.end(), int64_t{0});
    }
  };
  int64_t a = 0, b = 0;
  std::thread other([&] { job(3, b); });
  job(5, a);
  other.join();
  EXPECT_EQ(a, 200 * 5 * (996 * 997 / 2));
  EXPECT_EQ(b, 200 * 3 * (996 * 997 / 2));
}

TEST(ThreadPool, ResultsDoNotDependOnTheThreadCount) {
  ThreadsRestore restore;
  auto run = [](int threads) {
    set_num_threads(threads);
    std::vector<float> out(4099);
    parallel_for(4099, 17, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) {
        float s = 0.0f;
        for (int k = 1; k < 200; ++k) s += std::sin(static_cast<float>(i * k)) / static_cast<float>(k);
        out[static_cast<size_t>(i)] = s;
      }
    });
    return out;
  };
  const auto one = run(1);
  EXPECT_EQ(run(2), one);
  EXPECT_EQ(run(4), one);
}

#if defined(__x86_64__)
TEST(ThreadPool, BlocksRunWithTheCallersFloatingPointState) {
  ThreadsRestore restore;
  set_num_threads(3);
  const unsigned keep = _mm_getcsr();
  for (bool ftz : {true, false, true}) {
    _mm_setcsr(ftz ? (keep | 0x8040u) : (keep & ~0x8040u));  // FTZ (bit 15) | DAZ (bit 6)
    std::atomic<int> wrong{0};
    parallel_for(64, 1, [&](int64_t, int64_t, int) {
      const bool on = (_mm_getcsr() & 0x8040u) == 0x8040u, off = (_mm_getcsr() & 0x8040u) == 0;
      if (ftz ? !on : !off) wrong.fetch_add(1);
      volatile double s = 0;
      for (int i = 0; i < 1000; ++i) s = s + i;
    });
    EXPECT_EQ(wrong.load(), 0) << "ftz " << ftz;
  }
  _mm_setcsr(keep);
}
#endif
