// Backward kernels, one beside each forward kernel of kernels.h. Each is a template instantiated
// for float (training) and double (the gradient tests check the float kernels against the double
// ones and the double ones against central finite differences).
//
// Determinism: every output element is produced by exactly one thread, summing in a fixed order
// that does not depend on the number of threads. So a training step gives bitwise the same
// gradients whatever the thread count is (the resume and MPI tests rely on this).
#pragma once
#include <cstdint>

namespace parscale::kernels {

// ---- matmul y[M,N] = x[M,K]·W[N,K]^T + b ------------------------------------------------------
// dx[M,K] = dy[M,N]·W[N,K]  (accumulate: dx += ..., else dx = ...). Parallel over rows of dx.
template <typename T>
void matmul_backward_input(const T* dy, int64_t M, const T* W, int64_t N, int64_t K, T* dx, bool accumulate);
// dW[N,K] += dy[M,N]^T·x[M,K]; db[N] += Σ_m dy[m,:] when db != nullptr. Parallel over rows of dW;
// each dW row sums over m = 0..M-1 in order.
template <typename T>
void matmul_backward_weight(const T* dy, const T* x, int64_t M, int64_t N, int64_t K, T* dW, T* db);

// ---- RMSNorm y = w ⊙ x·r, r = (mean(x²) + eps)^(-1/2) -----------------------------------------
// dx[M,H] = r·(w⊙dy) − x·r³/H·Σ(w⊙dy⊙x)  (dx may alias dy; accumulate: dx += ...);
// dw[H] += Σ_m dy⊙x·r (when dw != nullptr). rstd: caller scratch of M elements (receives r).
template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, int64_t M, int64_t H, T eps, bool accumulate,
                      T* rstd);

// ---- SwiGLU out = silu(g)·u ---------------------------------------------------------------------
// dgate, dup [n] from dout (dgate/dup may alias gate/up: each element is read before written).
template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n);

// SiLU y = x·σ(x): dx = dy·σ(x)·(1 + x·(1 − σ(x))) (dx may alias dy).
template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n);

// ---- RoPE (rotate-half) ------------------------------------------------------------------------
// Transpose of rope_apply: rotates the gradient d [N, n_heads, D] by the negative angle, in place.
template <typename T>
void rope_backward(T* d, int64_t N, int64_t n_heads, int64_t head_dim, const float* cos_t, const float* sin_t);

// ---- attention with per-row prefix slots and GQA ------------------------------------------------
// Cache layout as KVLayer: K/V [rows][n_kv_heads][capacity][D]. Tokens are grouped by row: the
// tokens of row r are t = row_begin[r] .. row_begin[r+1]-1, and token t sees slots
// [0, n_visible[t]). q, out, dout, dq: [N, n_heads, D]; lse [N, n_heads] from the forward.
// dq is overwritten; dK/dV (cache layout) are accumulated (only visible slots touched).
// One task per (row, kv head): it owns dq of its tokens' heads and dK/dV of its row and head, and
// works on chunks of kAttentionBackwardChunk queries with small matrix products (S = QK^T,
// dP = dO·V^T, dQ = dS·K, dK += dS^T·Q, dV += P^T·dO).
// scratch: num_threads × attention_backward_scratch(capacity, head_dim) elements.
constexpr int64_t kAttentionBackwardChunk = 32;
inline int64_t attention_backward_scratch(int64_t capacity, int64_t head_dim) {
  return 2 * capacity * head_dim + 2 * kAttentionBackwardChunk * capacity;
}
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout,
                        int64_t rows, const int64_t* row_begin, const int32_t* n_visible, int64_t n_heads,
                        int64_t n_kv_heads, int64_t capacity, int64_t head_dim, T scale, T* dq, T* dk, T* dv,
                        T* scratch);
// The log-sum-exp of the forward's scaled scores in the same layout (for the double tests, whose
// forward is not the float kernel): lse[t, h].
template <typename T>
void attention_lse(const T* q, const T* k, int64_t rows, const int64_t* row_begin, const int32_t* n_visible,
                   int64_t n_heads, int64_t n_kv_heads, int64_t capacity, int64_t head_dim, T scale, T* lse);

// ---- softmax + cross-entropy ---------------------------------------------------------------------
// For each row m of logits [M, V] with target[m] >= 0: loss_m = logsumexp(row) − row[target];
// the row is replaced by its gradient scale·(softmax(row) − onehot(target)). Rows with target < 0
// are set to 0. row_loss: caller scratch [M]. Returns Σ_m loss_m (double, summed in row order, so
// independent of the thread count). Parallel over rows.
template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int64_t M, int64_t V, T scale, double* row_loss);
// Loss only (logits untouched).
template <typename T>
double cross_entropy_loss(const T* logits, const int32_t* target, int64_t M, int64_t V, double* row_loss);

// ---- ParScale stream weights w = softmax(a)·(1 − ε) + ε/P ---------------------------------------
// p [M, P] = softmax(a) (before smoothing), dw [M, P] -> da [M, P] = (1−ε)·p⊙(dw − Σ p⊙dw).
template <typename T>
void smoothed_softmax_backward(const T* p, const T* dw, T* da, int64_t M, int64_t P, T eps);

}  // namespace parscale::kernels
