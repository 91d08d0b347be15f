// Compute kernels: free functions on raw views, fp32 activations, allocate nothing (except the
// fast compute mode's bf16 copy of x: one buffer per calling thread that grows to the largest call).
// Threading is internal (the thread pool of core/threads.h). Each kernel has a plain scalar reference (`*_ref`) that the
// tests compare it with; training adds each backward beside its forward (kernels/backward.h).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "core/weight_view.h"

namespace parscale::kernels {

// ---- kernel paths (run-time dispatch) ----------------------------------------------------------
// Every public kernel below runs on the active path. The default is the best path the CPU
// supports; the environment variable PARSCALE_KERNELS=scalar|avx2|avx512|auto (read once, at the
// first kernel call) or set_kernel_path() forces one. Scalar is portable C++ (no intrinsics).
enum class KernelPath { Scalar, AVX2, AVX512 };
const char* kernel_path_name(KernelPath p);
// Parses "scalar", "avx2", "avx512" (throws parscale::Error otherwise).
KernelPath parse_kernel_path(const char* name);
// Whether this binary has the path and this CPU runs it (AVX2: avx2+fma+f16c; AVX512: avx512f+bw+vl).
bool kernel_path_supported(KernelPath p);
KernelPath best_kernel_path();
KernelPath active_kernel_path();
// Throws parscale::Error when the path is not supported here.
void set_kernel_path(KernelPath p);

// ---- compute modes ----------------------------------------------------------------------------
// Exact: fp32 activations and fp32 FMAs on every path (what the golden tests check).
// Fast: for BF16 weights on the AVX-512 path of a CPU with AVX512-BF16, matmul, matmul_add,
// matmul_multi and gate_up_swiglu round the activations to bf16 (nearest even) and use bf16 dot
// products with fp32 accumulation (reference: matmul_bf16_ref); q8 weights whose scale block is a
// multiple of 16 values take the same kernels with each weight dequantized to
// bf16(float(q) * scale) (reference: matmul_q8bf16_ref); everything else, and every other path or
// dtype, computes as in exact mode.
// Auto (the default): the choice per dtype, today the same as fast: BF16 and q8 weights run fast
// where the CPU has AVX512-BF16, F32 and F16 exactly. (Fast moves the demo model's perplexity by
// 0.02 % or less and, with BF16 weights packed for oneDNN, runs BF16 prefill ~2.4x faster than
// exact: docs/PERFORMANCE.md, "Round 4".) Golden tests pin exact mode.
// All modes are batch invariant: an output row does not depend on the number of rows M or on the
// other rows. The environment variable PARSCALE_COMPUTE=exact|fast|auto (read once, at the first
// kernel call) or set_compute_mode() picks it.
enum class ComputeMode { Exact, Fast, Auto };
const char* compute_mode_name(ComputeMode m);
// Parses "exact", "fast", "auto" (throws parscale::Error otherwise).
ComputeMode parse_compute_mode(const char* name);
ComputeMode active_compute_mode();
void set_compute_mode(ComputeMode m);
// Whether this binary and CPU have the bf16 dot-product kernels the fast mode uses.
bool fast_bf16_supported();
// Whether matmuls with W run on those kernels now (fast mode: BF16 or q8 W; auto: q8 W; AVX-512
// path only).
bool uses_bf16dot(const WeightView& W);

// ---- machine probes (for roofline figures; run on the active path, all pool threads) ---------
// Sustained fp32 FMA rate in GFLOP/s (independent register-resident FMA chains, about `seconds`).
double probe_fma_gflops(double seconds);
// Sustained AVX512-BF16 dot-product rate in GFLOP/s (vdpbf16ps: 32 multiply-adds, 64 FLOP, per
// instruction; independent chains, all pool threads, about `seconds`); 0 where
// fast_bf16_supported() is false. The compute peak of fast mode's matmuls.
double probe_bf16dot_gflops(double seconds);
// Streaming-read bandwidth in GB/s over a freshly allocated buffer of `bytes` (freed on return).
double probe_read_bandwidth(size_t bytes, double seconds);

// ---- matmul ----------------------------------------------------------------------------------
// y[M, N] = x[M, K] · W[N, K]^T (+ bias[N] when bias != nullptr), W in its storage dtype.
// x rows are contiguous with stride K; y rows with stride N. W is read once per call.
void matmul(const float* x, int64_t M, const WeightView& W, const float* bias, float* y);
void matmul_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y);
// The fast mode's arithmetic for BF16 W: bf16(x) · W^T (+ bias) with exact products summed in
// double, where bf16() rounds to nearest even.
void matmul_bf16_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y);
// The fast mode's arithmetic for q8 W: as matmul_bf16_ref with w = bf16(float(q) * scale).
void matmul_q8bf16_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y);
// y[M, N] += x[M, K] · W[N, K]^T (the residual add fused into the matmul).
void matmul_add(const float* x, int64_t M, const WeightView& W, float* y);

// Several matmuls of the same x in one pass (one parallel region; e.g. q, k, v):
// outs[i].y [M, W_i.rows] = x · W_i^T + outs[i].bias (bias may be null). At most 8 outputs.
struct MatmulOut {
  const WeightView* W = nullptr;
  const float* bias = nullptr;
  float* y = nullptr;
};
void matmul_multi(const float* x, int64_t M, const MatmulOut* outs, int count);

// The MLP's first half: out[M, I] = silu(x · Wg^T) * (x · Wu^T). gate and up [M, I] are scratch
// (paths may skip them: the decode path fuses SwiGLU into the tiles); out may alias gate.
void gate_up_swiglu(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up, float* out);

// Row r of W converted to fp32 (dst has W.cols floats). Used for embedding lookups.
void weight_row_f32(const WeightView& W, int64_t r, float* dst);

// ---- normalisation / activations ---------------------------------------------------------------
// y[m, :] = x[m, :] * rsqrt(mean(x[m, :]^2) + eps) * w  (x, y: [M, H]; y may alias x)
void rmsnorm(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps);
void rmsnorm_ref(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps);

// out[i] = silu(gate[i]) * up[i] for i < n  (out may alias gate or up)
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// In-place softmax of each row of x [M, N].
void softmax_rows(float* x, int64_t M, int64_t N);

// ---- rotary position embedding (HF "default" rope, rotate-half convention) -------------------
// inv_freq[i] = 1 / theta^(2i/D), i < D/2, computed in fp32 as HF does.
void rope_inv_freq(double theta, int64_t head_dim, float* inv_freq);
// cos/sin tables [N, D/2] for the positions of N tokens: angle = float(pos) * inv_freq[i].
void rope_tables(const int32_t* positions, int64_t N, const float* inv_freq, int64_t head_dim, float* cos_t, float* sin_t);
// x [N, n_heads, D]: x[:i] , x[i+D/2] rotated by the token's angle i (in place).
void rope_apply(float* x, int64_t N, int64_t n_heads, int64_t head_dim, const float* cos_t, const float* sin_t);

// ---- attention over a KV cache with per-stream prefixes ------------------------------------------
// The cache of one layer: K and V for `rows` cache rows, layout [row][kv_head][slot][D].
struct KVLayer {
  float* k = nullptr;
  float* v = nullptr;
  int64_t n_kv_heads = 0;
  int64_t capacity = 0;  // slots per (row, kv_head)
  int64_t head_dim = 0;
  float* k_at(int64_t row, int64_t h, int64_t slot) const { return k + ((row * n_kv_heads + h) * capacity + slot) * head_dim; }
  float* v_at(int64_t row, int64_t h, int64_t slot) const { return v + ((row * n_kv_heads + h) * capacity + slot) * head_dim; }
};

// For token i: cache row `row[i]`; it attends to slots [0, n_visible[i]) of that row (its stream's
// prefix slots then the causal real tokens, all already written to the cache).
// q [N, n_heads, D] -> out [N, n_heads, D]. GQA: query head h reads kv head h / (n_heads / n_kv_heads).
// scratch: at least num_threads * max(n_visible) floats (the SIMD paths use blocks over keys with
// an online softmax and need none). lse (optional, [N, n_heads]) receives the
// log-sum-exp of the scaled scores (for the backward pass). (The contiguous cache of training;
// it runs the paged kernel below with one page per row.)
void attention(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
               const KVLayer& kv, float scale, float* out, float* scratch, float* lse = nullptr);
void attention_ref(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
                   const KVLayer& kv, float scale, float* out);

// ---- attention over a paged KV cache ----------------------------------------------------------
// One layer of a paged pool: K and V [n_pages][n_kv_heads][page_tokens][head_dim] in `dtype`
// (F32, BF16 or F16).
struct PagedKV {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::F32;
  int64_t n_kv_heads = 0;
  int64_t page_tokens = 0;
  int64_t head_dim = 0;
  size_t slot_offset(int64_t page, int64_t h, int64_t slot) const {
    return static_cast<size_t>(((page * n_kv_heads + h) * page_tokens + slot) * head_dim);
  }
};

// What token i sees: first `n_prefix` fp32 prefix slots (kv head h's slots at
// prefix_k + h * prefix_head_stride, [n_prefix][D] contiguous; none when n_prefix = 0), then
// `n_real` real-token slots: real slot j is slot j % page_tokens of page pages[j / page_tokens].
struct KvView {
  const float* prefix_k = nullptr;
  const float* prefix_v = nullptr;
  int64_t prefix_head_stride = 0;
  int32_t n_prefix = 0;
  int32_t n_real = 0;
  const int32_t* pages = nullptr;
};

// q [N, n_heads, D] -> out [N, n_heads, D]; token i attends to every slot of views[i]. Each
// token's result depends only on its own q and view (never on the other tokens of the call).
// lse (optional, [N, n_heads]): log-sum-exp of the scaled scores.
void attention_paged(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv, float scale,
                     float* out, float* lse = nullptr);
void attention_paged_ref(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv, float scale,
                         float* out);
// The SIMD paths run head dims of whole vectors (64, 96, 128, ...) through a register-tiled block
// that prefetches the next block's K/V rows, others through a generic block. Both do the same
// arithmetic in the same order (the same bits); false sends every head dim through the generic
// one (tests and benchmarks compare them). Process-wide; default true.
void set_attention_tiling(bool enabled);
bool attention_tiling();
// Whether attention_paged on the active path runs head dim D through the tiled block now.
bool attention_tiled(int64_t head_dim);

// Writes one token's K and V heads (k, v: [n_kv_heads * D] fp32) into real slot `slot` of a
// paged layer (converted to the pool's dtype).
void kv_write(const PagedKV& kv, const int32_t* pages, int64_t slot, const float* k, const float* v);

}  // namespace parscale::kernels
