// Internal: the table of kernel implementations of one path (scalar, AVX2, AVX-512) and the
// active table. Public entry points in kernels.h forward to active().
#pragma once
#include <cstdint>

#include "kernels/kernels.h"

namespace parscale::kernels::detail {

struct KernelTable {
  KernelPath path;
  // y = x·W^T + bias (accumulate = false) or y += x·W^T (accumulate = true; bias ignored).
  void (*matmul)(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate);
  void (*attention_paged)(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv,
                          float scale, float* out, float* lse);
  void (*rmsnorm)(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps);
  void (*swiglu)(const float* gate, const float* up, float* out, int64_t n);
  // Probes: `iters` rounds of 16 independent vector FMA chains (returns a value so nothing is
  // optimised away; flops = iters * 16 * lanes * 2), and the sum of n floats read once.
  float (*fma_chains)(int64_t iters);
  int64_t fma_lanes;
  float (*read_sum)(const float* p, int64_t n);
  void (*matmul_multi)(const float* x, int64_t M, const MatmulOut* outs, int count);
  void (*gate_up_swiglu)(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up,
                         float* out);
  bool (*attention_tiled)(int64_t head_dim);  // attention_paged takes the register-tiled block for this D
};

const KernelTable& scalar_table();
// nullptr when this binary was built without the path (non-x86 compilers).
const KernelTable* avx2_table();
const KernelTable* avx512_table();

const KernelTable& active();

// Scalar implementations (portable C++; the compiler may still auto-vectorise for the baseline ISA).
void matmul_scalar(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate);
void attention_paged_scalar(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv,
                            float scale, float* out, float* lse);
void rmsnorm_scalar(const float* x, const float* w, float* y, int64_t M, int64_t H, float eps);
void swiglu_scalar(const float* gate, const float* up, float* out, int64_t n);
float fma_chains_scalar(int64_t iters);
void matmul_multi_scalar(const float* x, int64_t M, const MatmulOut* outs, int count);
void gate_up_swiglu_scalar(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up,
                           float* out);
float read_sum_scalar(const float* p, int64_t n);

// Fast compute mode, BF16 and q8 weights (matmul_bf16dot.cpp; AVX512-BF16). bf16dot_compiled() is false
// where the compiler cannot build them (the others then throw).
bool bf16dot_compiled();
float bf16dot_chains(int64_t iters);  // the peak probe's inner loop (16 vdpbf16ps chains)
void matmul_bf16dot(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate);
void matmul_multi_bf16dot(const float* x, int64_t M, const MatmulOut* outs, int count);
void gate_up_swiglu_bf16dot(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up,
                            float* out);

}  // namespace parscale::kernels::detail
