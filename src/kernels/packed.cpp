// Packed BF16 weights on oneDNN's matmul (see packed.h for the invariants).
#include "kernels/packed.h"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/threads.h"
#include "kernels/kernels.h"

#if defined(PARSCALE_HAVE_DNNL)
#include <omp.h>

#include <dnnl.hpp>
#endif

namespace parscale {

#if defined(PARSCALE_HAVE_DNNL)
// One column range of W in oneDNN's blocked layout for the (K x n) bf16 weights of a matmul.
struct PackedSlice {
  int64_t n0 = 0, n = 0;
  dnnl::memory w;
  dnnl_memory_desc_t md{};  // w's layout (blocked), for reading single rows back
};
struct PackedWeight {
  int64_t rows = 0, cols = 0;  // N, K
  std::vector<PackedSlice> slices;
  int64_t bytes = 0;
};
#else
struct PackedWeight {
  int64_t bytes = 0;
};
#endif

namespace kernels {

int64_t packed_bytes(const PackedWeight& p) { return p.bytes; }

#if defined(PARSCALE_HAVE_DNNL)
namespace {

using dnnl::memory;
constexpr int64_t kSliceAlign = 64;  // slice boundaries: a multiple of oneDNN's widest column block

const dnnl::engine& cpu_engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// oneDNN runs on OpenMP; every call here is made from inside one pool block, so the calling
// thread runs it alone (no second team of threads competing with the pool's), then gets its own
// OpenMP setting back.
struct SingleThreadedOpenMP {
  int before = omp_get_max_threads();
  SingleThreadedOpenMP() { omp_set_num_threads(1); }
  ~SingleThreadedOpenMP() { omp_set_num_threads(before); }
};

// The primitive for t[M, n] = x[M, K] · W_slice, x and t dense (oneDNN 2.6 runs its brgemm
// kernels only on dense rows); the scratchpad is ours (one buffer per thread).
dnnl::matmul::primitive_desc make_desc(int64_t M, int64_t n, int64_t K) {
  const memory::desc src({M, K}, memory::data_type::bf16, memory::format_tag::ab);
  const memory::desc wts({K, n}, memory::data_type::bf16, memory::format_tag::any);
  const memory::desc dst({M, n}, memory::data_type::f32, memory::format_tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, wts, dst), attr, cpu_engine());
}

struct Exec {
  dnnl::matmul prim;
  memory src, dst;
  size_t scratch = 0;
};

struct Key {
  int64_t M, n, K;
  bool operator==(const Key& o) const { return M == o.M && n == o.n && K == o.K; }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t v : {k.M, k.n, k.K}) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

// Per thread: primitives by shape, one stream, one scratchpad, one destination buffer.
struct ThreadState {
  dnnl::stream stream{cpu_engine()};
  std::unordered_map<Key, Exec, KeyHash> execs;
  std::vector<uint8_t> scratch;
  memory scratch_mem;
  std::vector<float> out;
};
ThreadState& thread_state() {
  static thread_local ThreadState s;
  return s;
}

// Rows per call: M <= 64 as is; otherwise 256, 192, 128 or 64 rows, then the remainder (< 64).
constexpr int64_t kMaxChunk = 256;
int64_t chunk_rows(int64_t r) { return r <= 64 ? r : r >= kMaxChunk ? kMaxChunk : r / 64 * 64; }

// Whether every chunk size of (n, K) runs on one and the same oneDNN brgemm implementation: a
// row's bits must not depend on which chunk it falls in. Checked once per shape (primitive
// descriptors only; the kernels are made on first use).
bool all_chunks_brgemm(int64_t n, int64_t K) {
  static std::mutex mu;
  static std::unordered_map<Key, bool, KeyHash> seen;
  const std::lock_guard<std::mutex> lock(mu);
  const Key key{0, n, K};
  auto it = seen.find(key);
  if (it != seen.end()) return it->second;
  const std::string impl = make_desc(1, n, K).impl_info_str();
  bool ok = impl.rfind("brg", 0) == 0;
  for (int64_t mc = 2; mc <= kMaxChunk && ok; mc = mc < 64 ? mc + 1 : mc + 64)
    ok = make_desc(mc, n, K).impl_info_str() == impl;
  seen.emplace(key, ok);
  return ok;
}

void run_slice(const uint16_t* xb, int64_t M, const PackedWeight& W, const PackedSlice& s, float* y) {
  const SingleThreadedOpenMP one_thread;
  ThreadState& ts = thread_state();
  const int64_t K = W.cols, ldy = W.rows;
  if (ts.out.size() < static_cast<size_t>(std::min(M, kMaxChunk) * s.n)) ts.out.resize(static_cast<size_t>(std::min(M, kMaxChunk) * s.n));
  for (int64_t m = 0; m < M;) {
    const int64_t mc = chunk_rows(M - m);
    const Key key{mc, s.n, K};
    auto it = ts.execs.find(key);
    if (it == ts.execs.end()) {
      Exec e;
      try {
        const auto pd = make_desc(mc, s.n, K);
        e.prim = dnnl::matmul(pd);
        e.src = memory(pd.src_desc(), cpu_engine(), nullptr);
        e.dst = memory(pd.dst_desc(), cpu_engine(), nullptr);
        e.scratch = pd.scratchpad_desc().get_size();
      } catch (const dnnl::error& err) {
        throw Error("oneDNN matmul " + std::to_string(mc) + " x " + std::to_string(K) + " -> " + std::to_string(s.n) +
                    ": " + err.what());
      }
      it = ts.execs.emplace(key, std::move(e)).first;
    }
    Exec& e = it->second;
    if (ts.scratch.size() < e.scratch || !ts.scratch_mem) {
      ts.scratch.resize(std::max<size_t>(e.scratch, ts.scratch.size()) + 64);
      ts.scratch_mem = memory(memory::desc({static_cast<int64_t>(ts.scratch.size())}, memory::data_type::u8,
                                           memory::format_tag::a),
                              cpu_engine(), ts.scratch.data());
    }
    e.src.set_data_handle(const_cast<uint16_t*>(xb + m * K));
    e.dst.set_data_handle(ts.out.data());
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e.src.get()},
                               {DNNL_ARG_WEIGHTS, s.w.get()},
                               {DNNL_ARG_DST, e.dst.get()},
                               {DNNL_ARG_SCRATCHPAD, ts.scratch_mem.get()}};
    if (dnnl_primitive_execute(e.prim.get(), ts.stream.get(), 4, args) != dnnl_success)
      throw Error("oneDNN matmul failed (" + std::to_string(mc) + " x " + std::to_string(K) + " -> " +
                  std::to_string(s.n) + ")");
    // y += t: one rounding per output, as the rest of the fast mode (y holds the bias or the
    // values the product is added to).
    for (int64_t r = 0; r < mc; ++r) {
      float* yr = y + (m + r) * ldy + s.n0;
      const float* tr = ts.out.data() + r * s.n;
      for (int64_t j = 0; j < s.n; ++j) yr[j] += tr[j];
    }
    m += mc;
  }
}

bool env_allows() {
  const char* e = std::getenv("PARSCALE_ONEDNN");
  return !(e && std::string(e) == "0");
}

}  // namespace

bool packed_bf16_supported() {
  static const bool ok = env_allows() && fast_bf16_supported();
  return ok;
}

std::shared_ptr<PackedWeight> pack_bf16(const WeightView& W, int slices) {
  if (W.dtype != DType::BF16 || W.empty() || W.rows <= 0 || W.cols <= 0 || !packed_bf16_supported()) return nullptr;
  const int64_t N = W.rows, K = W.cols;
  int64_t S = slices > 0 ? slices : num_threads();
  S = std::max<int64_t>(1, std::min<int64_t>(S, (N + kSliceAlign - 1) / kSliceAlign));
  auto p = std::make_shared<PackedWeight>();
  p->rows = N;
  p->cols = K;
  // Slice boundaries first; then each slice is checked and reordered inside one pool block (oneDNN
  // single-threaded there, as in matmul_packed: no OpenMP team is ever started).
  const int64_t per = (N + S - 1) / S, width = (per + kSliceAlign - 1) / kSliceAlign * kSliceAlign;
  for (int64_t n0 = 0; n0 < N; n0 += width) {
    PackedSlice s;
    s.n0 = n0;
    s.n = std::min(N - n0, width);
    p->slices.push_back(std::move(s));
  }
  std::vector<char> ok(p->slices.size(), 0);
  std::vector<int64_t> bytes(p->slices.size(), 0);
  parallel_for(static_cast<int64_t>(p->slices.size()), 1, [&](int64_t b, int64_t e, int) {
    const SingleThreadedOpenMP one_thread;
    for (int64_t i = b; i < e; ++i) {
      PackedSlice& s = p->slices[static_cast<size_t>(i)];
      try {
        if (!all_chunks_brgemm(s.n, K)) continue;  // not oneDNN's brgemm for every M: unpacked
        const auto pd = make_desc(1, s.n, K);
        // W's rows n0 .. n0 + n as oneDNN's (K x n) weights: element (k, j) at W[(n0 + j) * K + k].
        memory plain(memory::desc({K, s.n}, memory::data_type::bf16, memory::dims{1, K}), cpu_engine(),
                     const_cast<uint8_t*>(static_cast<const uint8_t*>(W.data) + s.n0 * K * 2));
        s.w = memory(pd.weights_desc(), cpu_engine());
        s.md = pd.weights_desc().data;
        if (s.md.format_kind != dnnl_blocked) continue;  // rows could not be read back: unpacked
        dnnl::stream stream(cpu_engine());
        dnnl::reorder(plain, s.w).execute(stream, plain, s.w);
        stream.wait();
        bytes[static_cast<size_t>(i)] = static_cast<int64_t>(pd.weights_desc().get_size());
        ok[static_cast<size_t>(i)] = 1;
      } catch (const dnnl::error& e) {
        throw Error("packing a " + std::to_string(N) + " x " + std::to_string(K) + " bf16 matrix for oneDNN failed: " +
                    e.what());
      }
    }
  });
  for (size_t i = 0; i < ok.size(); ++i) {
    if (!ok[i]) return nullptr;
    p->bytes += bytes[i];
  }
  return p;
}

// Element (k, j) of a (K x n) blocked layout, in elements from the start (oneDNN's blocking
// descriptor: the outer block of each dimension at strides[d], then the inner blocks densely, the
// last listed innermost).
int64_t blocked_offset(const dnnl_memory_desc_t& md, int64_t k, int64_t j) {
  const dnnl_blocking_desc_t& b = md.format_desc.blocking;
  const int64_t idx[2] = {k, j};
  int64_t block[2] = {1, 1};
  for (int i = 0; i < b.inner_nblks; ++i) block[b.inner_idxs[i]] *= b.inner_blks[i];
  int64_t off = md.offset0;
  for (int d = 0; d < 2; ++d) off += idx[d] / block[d] * b.strides[d];
  int64_t inner = 0, below[2] = {1, 1};  // (product of the blocks after i, per dimension)
  for (int i = b.inner_nblks - 1; i >= 0; --i) {
    const int d = static_cast<int>(b.inner_idxs[i]);
    below[d] *= b.inner_blks[i];
  }
  for (int i = 0; i < b.inner_nblks; ++i) {
    const int d = static_cast<int>(b.inner_idxs[i]);
    below[d] /= b.inner_blks[i];
    inner = inner * b.inner_blks[i] + idx[d] / below[d] % b.inner_blks[i];
  }
  return off + inner;
}

void packed_row_f32(const PackedWeight& p, int64_t r, float* dst) {
  if (r < 0 || r >= p.rows) throw Error("packed_row_f32: row " + std::to_string(r) + " outside [0, " + std::to_string(p.rows) + ")");
  for (const PackedSlice& s : p.slices) {
    if (r >= s.n0 + s.n) continue;
    const auto* w = static_cast<const uint16_t*>(s.w.get_data_handle());
    for (int64_t k = 0; k < p.cols; ++k) dst[k] = bf16_to_f32(w[blocked_offset(s.md, k, r - s.n0)]);
    return;
  }
}

namespace detail {
void matmul_packed(const uint16_t* xb, int64_t M, const PackedWeight& W, float* y) {
  if (M <= 0) return;
  parallel_for(static_cast<int64_t>(W.slices.size()), 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) run_slice(xb, M, W, W.slices[static_cast<size_t>(i)], y);
  });
}
}  // namespace detail

#else  // built without oneDNN

bool packed_bf16_supported() { return false; }
std::shared_ptr<PackedWeight> pack_bf16(const WeightView&, int) { return nullptr; }
void packed_row_f32(const PackedWeight&, int64_t, float*) { throw Error("packed weights need a build with oneDNN"); }
namespace detail {
void matmul_packed(const uint16_t*, int64_t, const PackedWeight&, float*) {
  throw Error("packed weights need a build with oneDNN");
}
}  // namespace detail

#endif

}  // namespace kernels
}  // namespace parscale
