// Thread control: one persistent pool of worker threads that every kernel and training op shares.
//
// parallel_for(n, grain, f) splits [0, n) into blocks of `grain` iterations (the last may be
// shorter) and calls f(begin, end, thread) once per block, on the pool's workers and on the calling
// thread, which takes part. Blocks are claimed dynamically, so a thread the OS delays does not hold
// the others back for a fixed share. `thread` is in [0, num_threads()) and no two blocks running at
// the same time share it (index per-thread scratch with it). Results never depend on which thread
// runs a block, so they do not depend on the number of threads as long as every output is computed
// inside one iteration.
//
// Idle workers (and a caller waiting for the last block) spin for PARSCALE_SPIN_US microseconds
// (default 100, `pause` instructions), then sleep on a futex. On an idle machine the next region
// starts without a wake-up (the regions of a decode step are microseconds apart); on a shared
// machine a waiting thread holds its core for at most that long, not for OpenMP's default of
// hundreds of thousands of spins at every barrier.
// The workers run every block with the calling thread's floating-point control state (MXCSR on x86:
// flush-to-zero / denormals-are-zero set by the caller apply to the whole region).
//
// An exception thrown by a block reaches the caller of parallel_for (the first one, after every
// block has run). A parallel_for called from inside a block, or while another thread's parallel_for holds the pool,
// runs serially on the calling thread (same blocks, same results). set_num_threads must not race
// with a running parallel_for.
#pragma once

#include <cstdint>
#include <type_traits>

namespace parscale {

// Sets the number of threads (n <= 0: the default: PARSCALE_NUM_THREADS, else OMP_NUM_THREADS,
// else the CPUs this process may run on). Returns the number in use. Also sizes OpenMP (the BPE trainer uses it).
int set_num_threads(int n);
int num_threads();

namespace threads_detail {
using BlockFn = void (*)(void* ctx, int64_t begin, int64_t end, int thread);
void run(int64_t n, int64_t grain, BlockFn fn, void* ctx);
}  // namespace threads_detail

// f(int64_t begin, int64_t end, int thread) over blocks of [0, n); see the header comment.
template <class F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  using Fn = std::remove_reference_t<F>;
  threads_detail::run(
      n, grain < 1 ? 1 : grain,
      [](void* ctx, int64_t b, int64_t e, int t) { (*static_cast<Fn*>(ctx))(b, e, t); },
      const_cast<void*>(static_cast<const void*>(&f)));
}

// f(int64_t i) for every i in [0, n), in blocks of `grain` as parallel_for.
template <class F>
void parallel_for_each(int64_t n, int64_t grain, F&& f) {
  parallel_for(n, grain, [&f](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

// The grain that gives every thread about `per_thread` blocks of [0, n) (at least one iteration).
int64_t grain_for(int64_t n, int64_t per_thread = 4);
// grain_for(n) when the loop is worth threads, else n (one block: it runs on the caller alone).
inline int64_t grain_if(bool worth_threads, int64_t n) { return worth_threads ? grain_for(n) : n; }

}  // namespace parscale
