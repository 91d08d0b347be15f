// The trainer's fp32 matrix products on oneDNN's sgemm (Debian libdnnl-dev), where built with it.
//
// Our own fp32 kernels (matmul.cpp's SIMD paths, backward.cpp's register tiles) reach 50-60 % of
// the FMA peak on the training shapes; oneDNN's sgemm 83-96 % (docs/TRAINING.md). Inference keeps
// our kernels (their rows are batch invariant, tested); training holds a TrainingGemmScope, and
// while one is alive (and the kernel path is the CPU's best, not forced lower) the fp32 products
// (kernels::matmul / matmul_add / matmul_multi on F32 weights, matmul_backward_input /
// matmul_backward_weight on float) go to sgemm_tiled.
//
// Invariants of sgemm_tiled: the output is cut into tiles whose sizes depend on the shape alone,
// and each tile is one single-threaded sgemm call run inside one pool block, so the result does
// not depend on the thread count (tested); oneDNN's OpenMP team is never started.
#pragma once

#include <cstdint>

namespace parscale::kernels {

// Built with oneDNN, not switched off with PARSCALE_ONEDNN=0 nor set_onednn_sgemm_allowed(false).
bool onednn_sgemm_available();
// Process-wide switch (default allowed): with false the trainer runs on our own kernels, whose rows
// do not depend on how many rows a call has (oneDNN's can differ in the last bits), so that its
// forward equals the inference Session's bit for bit (tests/test_train_golden.cpp).
void set_onednn_sgemm_allowed(bool allowed);

// While at least one scope is alive in the process (and onednn_sgemm_available()), the fp32
// products listed above run on sgemm_tiled. Process-wide, so that a pool block run by any thread
// takes the same decision as its caller; a process that trains and serves F32 weights at the same
// time would serve on sgemm too (correct, not bit-equal to our kernels).
class TrainingGemmScope {
 public:
  TrainingGemmScope();
  ~TrainingGemmScope();
  TrainingGemmScope(const TrainingGemmScope&) = delete;
  TrainingGemmScope& operator=(const TrainingGemmScope&) = delete;
};
bool training_gemm_active();

// Row-major C[R, Cn] = beta·C + op(A)·op(B): op(A) is [R, Kr] (A stored [R][lda], or [Kr][lda]
// when trans_a), op(B) is [Kr, Cn] (B stored [Kr][ldb], or [Cn][ldb] when trans_b). beta is 0 or
// 1; with beta 0, C is only written. Requires onednn_sgemm_available(). Kr = 0 leaves beta·C.
void sgemm_tiled(bool trans_a, bool trans_b, int64_t R, int64_t Cn, int64_t Kr, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace parscale::kernels
