#include "core/threads.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PARSCALE_X86 1
#endif
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace parscale {
namespace {

inline void cpu_relax() {
#ifdef PARSCALE_X86
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// One step of an idle wait that started `i` steps ago: a pause instruction (the next region
// usually comes within microseconds); true once `budget` has passed (checked every 64 steps): time
// to sleep. (Measured: calling sched_yield instead, to hand the core to other runnable threads,
// made the demo model's decode step ~1.5x slower with another process on one core: the yielding
// worker lost its core for a whole time slice and missed the next regions.)
inline bool idle_step(int i, std::chrono::steady_clock::time_point t0, std::chrono::nanoseconds budget) {
  cpu_relax();
  return (i & 63) == 63 && std::chrono::steady_clock::now() - t0 > budget;
}

inline uint32_t fp_state() {
#ifdef PARSCALE_X86
  return _mm_getcsr();
#else
  return 0;
#endif
}

inline void set_fp_state([[maybe_unused]] uint32_t s) {
#ifdef PARSCALE_X86
  if (_mm_getcsr() != s) _mm_setcsr(s);
#endif
}

// Sleeping on a 32-bit word until it no longer holds `expected` (spurious returns allowed), and
// waking every sleeper of a word. (The Linux futex directly: libstdc++ 12's atomic::wait can lose a
// notify_all here.)
void sleep_while_equal(std::atomic<uint32_t>& word, uint32_t expected) {
#ifdef __linux__
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
#else
  if (word.load() == expected) std::this_thread::sleep_for(std::chrono::microseconds(50));
#endif
}

void wake_all(std::atomic<uint32_t>& word) {
#ifdef __linux__
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
#else
  (void)word;
#endif
}

int default_threads() {
  for (const char* var : {"PARSCALE_NUM_THREADS", "OMP_NUM_THREADS"}) {
    if (const char* e = std::getenv(var)) {
      char* end = nullptr;
      const long v = std::strtol(e, &end, 10);
      if (end != e && v > 0 && v <= 4096) return static_cast<int>(v);
    }
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int c = CPU_COUNT(&set);
    if (c > 0) return c;
  }
  const unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

std::chrono::nanoseconds spin_time() {
  long us = 100;
  if (const char* e = std::getenv("PARSCALE_SPIN_US")) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    if (end != e && v >= 0 && v <= 1000000) us = v;
  }
  return std::chrono::microseconds(us);
}

thread_local int tls_thread = 0;         // this thread's index inside the running region
thread_local bool tls_in_region = false;  // inside a block (or a pool worker): nested calls run serially

// The ticket packs what a claim needs into one atomic word, so a claim is one fetch_add and can never
// mix two regions: epoch (20 bits, only its parity picks the job slot) | blocks (22) | next (22).
constexpr int kIdxBits = 22;
constexpr uint64_t kIdxMask = (uint64_t{1} << kIdxBits) - 1;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // + one failed claim per thread stays below 2^22

// Fields written by different threads live on different cache lines (a claim or a finished block
// must not invalidate the line the others poll).
struct alignas(64) Job {
  threads_detail::BlockFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0, grain = 1;
  uint32_t fp = 0;
  alignas(64) std::atomic<uint32_t> done{0};  // blocks finished
  std::atomic<uint32_t> owner_sleeping{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // the first exception a block threw (written by the thread that set `failed`)
};

class Pool {
 public:
  explicit Pool(int threads) : threads_(std::max(1, threads)), spin_(spin_time()) {
    workers_.reserve(static_cast<size_t>(threads_ - 1));
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
  }
  ~Pool() {
    stop_.store(true, std::memory_order_relaxed);
    wake_.fetch_add(1, std::memory_order_seq_cst);
    wake_all(wake_);
    for (auto& w : workers_) w.join();
  }
  int threads() const { return threads_; }

  void run(int64_t n, int64_t grain, threads_detail::BlockFn fn, void* ctx) {
    int64_t blocks = (n + grain - 1) / grain;
    if (blocks > kMaxBlocks) {
      grain = (n + kMaxBlocks - 1) / kMaxBlocks;
      blocks = (n + grain - 1) / grain;
    }
    if (blocks <= 1 || threads_ == 1 || tls_in_region) return serial(n, grain, fn, ctx);
    std::unique_lock lock(busy_, std::try_to_lock);
    if (!lock.owns_lock()) return serial(n, grain, fn, ctx);

    const uint64_t epoch = ++epoch_;
    Job& job = slot_[epoch & 1];
    job.fn = fn;
    job.ctx = ctx;
    job.n = n;
    job.grain = grain;
    job.fp = fp_state();
    job.done.store(0, std::memory_order_relaxed);
    job.owner_sleeping.store(0, std::memory_order_relaxed);
    job.failed.store(false, std::memory_order_relaxed);
    job.error = nullptr;
    ticket_.store(((epoch & 0xFFFFF) << (2 * kIdxBits)) | (static_cast<uint64_t>(blocks) << kIdxBits),
                  std::memory_order_release);
    wake_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) wake_all(wake_);

    tls_in_region = true;
    work(0);
    tls_in_region = false;

    // Wait until every block has finished (a worker may still run the last one).
    const auto total = static_cast<uint32_t>(blocks);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0;; ++i) {
      const uint32_t d = job.done.load(std::memory_order_acquire);
      if (d == total) break;
      if (idle_step(i, t0, spin_)) {
        // Announce the sleep, then re-check (seq_cst on both sides: the last finisher either sees
        // the flag and wakes us, or we see its count and do not sleep).
        job.owner_sleeping.store(1, std::memory_order_seq_cst);
        if (job.done.load(std::memory_order_seq_cst) == d) sleep_while_equal(job.done, d);
      }
    }
    // Every block has run (the others after a failure too): rethrow the first exception here.
    if (job.failed.load(std::memory_order_acquire)) std::rethrow_exception(std::exchange(job.error, nullptr));
  }

 private:
  // Same blocks on the calling thread; like the parallel path, every block runs and the first
  // exception is rethrown at the end.
  static void serial(int64_t n, int64_t grain, threads_detail::BlockFn fn, void* ctx) {
    const bool outer = tls_in_region;
    tls_in_region = true;
    std::exception_ptr error;
    for (int64_t b = 0; b < n; b += grain) {
      try {
        fn(ctx, b, std::min(n, b + grain), tls_thread);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    tls_in_region = outer;
    if (error) std::rethrow_exception(error);
  }

  // Claims and runs blocks of the current region until none is left.
  void work(int thread) {
    for (;;) {
      const uint64_t t = ticket_.fetch_add(1, std::memory_order_acq_rel);
      const uint64_t idx = t & kIdxMask, blocks = (t >> kIdxBits) & kIdxMask;
      if (idx >= blocks) return;
      // A valid claim keeps its region open (the owner waits for this block), so the slot is stable.
      Job& job = slot_[(t >> (2 * kIdxBits)) & 1];
      set_fp_state(job.fp);
      const int64_t b = static_cast<int64_t>(idx) * job.grain;
      const int prev = tls_thread;
      tls_thread = thread;
      try {
        job.fn(job.ctx, b, std::min(job.n, b + job.grain), thread);
      } catch (...) {
        if (!job.failed.exchange(true, std::memory_order_acq_rel)) job.error = std::current_exception();
      }
      tls_thread = prev;
      if (job.done.fetch_add(1, std::memory_order_seq_cst) + 1 == blocks &&
          job.owner_sleeping.load(std::memory_order_seq_cst) != 0)
        wake_all(job.done);
    }
  }

  void worker(int index) {
    tls_thread = index;
    tls_in_region = true;
    uint32_t seen = 0;  // wake_'s initial value: a region or stop published before this thread ran is not missed
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; wake_.load(std::memory_order_acquire) == seen; ++i) {
        if (idle_step(i, t0, spin_)) {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          if (wake_.load(std::memory_order_seq_cst) == seen) sleep_while_equal(wake_, seen);
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        }
      }
      seen = wake_.load(std::memory_order_acquire);
      if (stop_.load(std::memory_order_relaxed)) return;
      work(index);
    }
  }

  const int threads_;
  const std::chrono::nanoseconds spin_;
  std::vector<std::thread> workers_;
  std::mutex busy_;  // one region at a time; others run serially
  uint64_t epoch_ = 0;
  Job slot_[2];
  alignas(64) std::atomic<uint64_t> ticket_{0};  // blocks = 0: nothing to claim
  alignas(64) std::atomic<uint32_t> wake_{0};
  std::atomic<int> sleepers_{0};  // workers in (or about to enter) sleep_while_equal(wake_)
  std::atomic<bool> stop_{false};  // (the class is 64-byte aligned, so its size is padded to whole lines)
};

// The pool lives until the process ends (never destroyed at exit: a thread still inside a region
// while static destructors run must not find it gone; sleeping workers do not hold up exit).
std::mutex pool_mutex;
Pool* pool_instance = nullptr;

Pool& pool() {
  // Fast path without the lock once created; set_num_threads replaces it only between regions.
  static std::once_flag once;
  std::call_once(once, [] {
    std::lock_guard g(pool_mutex);
    if (!pool_instance) pool_instance = new Pool(default_threads());
  });
  return *pool_instance;
}

}  // namespace

int set_num_threads(int n) {
  if (n <= 0) n = default_threads();
  pool();  // the default pool exists first, so call_once never overwrites the one made here
  {
    std::lock_guard g(pool_mutex);
    if (pool_instance->threads() != n) {
      delete pool_instance;
      pool_instance = new Pool(n);
    }
  }
  omp_set_num_threads(n);
  return n;
}

int num_threads() { return pool().threads(); }

int64_t grain_for(int64_t n, int64_t per_thread) {
  const int64_t parts = static_cast<int64_t>(num_threads()) * std::max<int64_t>(1, per_thread);
  return std::max<int64_t>(1, (n + parts - 1) / parts);
}

namespace threads_detail {
void run(int64_t n, int64_t grain, BlockFn fn, void* ctx) { pool().run(n, grain, fn, ctx); }
}  // namespace threads_detail

}  // namespace parscale
