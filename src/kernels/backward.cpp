// Backward kernels (see backward.h). Matmul gradients use register tiles of kRows output rows by
// kTile columns, summing over the reduction index in order, so every output element has exactly one
// owner and a fixed summation order.
#include "kernels/backward.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

namespace parscale::kernels {

namespace {

constexpr int64_t kRows = 4;   // output rows per register tile
constexpr int64_t kTile = 64;  // output columns per register tile

// out[r][0..kc) (+)= Σ_{j<J} coef[j*cj + r*cr] · vec[j*lv + 0..kc) for r < nr, written to
// dst + r*ld. The common shape of dX = dY·W (j = n) and dW = dYᵀ·X (j = m).
template <typename T>
inline void tile_accumulate(const T* coef, int64_t cj, int64_t cr, const T* vec, int64_t lv, int64_t J, int64_t nr,
                            int64_t kc, T* dst, int64_t ld, bool accumulate) {
  alignas(64) T acc[kRows][kTile];
  if (nr == kRows && kc == kTile) {
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t k = 0; k < kTile; ++k) acc[r][k] = T(0);
    for (int64_t j = 0; j < J; ++j) {
      const T* v = vec + j * lv;
      const T a0 = coef[j * cj], a1 = coef[j * cj + cr], a2 = coef[j * cj + 2 * cr], a3 = coef[j * cj + 3 * cr];
#pragma omp simd
      for (int64_t k = 0; k < kTile; ++k) {
        acc[0][k] += a0 * v[k];
        acc[1][k] += a1 * v[k];
        acc[2][k] += a2 * v[k];
        acc[3][k] += a3 * v[k];
      }
    }
  } else {
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t k = 0; k < kc; ++k) acc[r][k] = T(0);
    for (int64_t j = 0; j < J; ++j) {
      const T* v = vec + j * lv;
      for (int64_t r = 0; r < nr; ++r) {
        const T a = coef[j * cj + r * cr];
#pragma omp simd
        for (int64_t k = 0; k < kc; ++k) acc[r][k] += a * v[k];
      }
    }
  }
  for (int64_t r = 0; r < nr; ++r) {
    T* d = dst + r * ld;
    if (accumulate) {
      for (int64_t k = 0; k < kc; ++k) d[k] += acc[r][k];
    } else {
      for (int64_t k = 0; k < kc; ++k) d[k] = acc[r][k];
    }
  }
}

// dst[r, 0..K) (+)= Σ_{j<J} coef[j*cj + r*cr] · vec[j*lv + 0..K) for r < R (serial; tiles of kRows × kTile).
template <typename T>
void gemm_accumulate(const T* coef, int64_t cj, int64_t cr, const T* vec, int64_t lv, int64_t J, int64_t R, int64_t K, T* dst,
                     int64_t ld, bool accumulate) {
  for (int64_t r0 = 0; r0 < R; r0 += kRows)
    for (int64_t k0 = 0; k0 < K; k0 += kTile)
      tile_accumulate(coef + r0 * cr, cj, cr, vec + k0, lv, J, std::min(kRows, R - r0), std::min(kTile, K - k0),
                      dst + r0 * ld + k0, ld, accumulate);
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

}  // namespace

template <typename T>
void matmul_backward_input(const T* dy, int64_t M, const T* W, int64_t N, int64_t K, T* dx, bool accumulate) {
  const int64_t row_blocks = (M + kRows - 1) / kRows, col_tiles = (K + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) collapse(2) if (M * N * K > 32768)
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t m0 = rb * kRows, k0 = ct * kTile;
      // coef(j = n, r) = dy[(m0 + r)·N + n]; vec(j = n) = W[n, k0..]
      tile_accumulate(dy + m0 * N, 1, N, W + k0, K, N, std::min(kRows, M - m0), std::min(kTile, K - k0),
                      dx + m0 * K + k0, K, accumulate);
    }
  }
}

template <typename T>
void matmul_backward_weight(const T* dy, const T* x, int64_t M, int64_t N, int64_t K, T* dW, T* db) {
  const int64_t row_blocks = (N + kRows - 1) / kRows, col_tiles = (K + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) collapse(2) if (M * N * K > 32768)
  for (int64_t rb = 0; rb < row_blocks; ++rb) {
    for (int64_t ct = 0; ct < col_tiles; ++ct) {
      const int64_t n0 = rb * kRows, k0 = ct * kTile;
      // coef(j = m, r) = dy[m·N + n0 + r]; vec(j = m) = x[m, k0..]
      tile_accumulate(dy + n0, N, 1, x + k0, K, M, std::min(kRows, N - n0), std::min(kTile, K - k0),
                      dW + n0 * K + k0, K, true);
    }
  }
  if (db) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
    for (int64_t n = 0; n < N; ++n) {
      T s = T(0);
      for (int64_t m = 0; m < M; ++m) s += dy[m * N + n];
      db[n] += s;
    }
  }
}

template <typename T>
void rmsnorm_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, int64_t M, int64_t H, T eps, bool accumulate,
                      T* rstd) {
#pragma omp parallel for schedule(static) if (M * H > 16384)
  for (int64_t m = 0; m < M; ++m) {
    const T* xm = x + m * H;
    T ss = T(0);
    for (int64_t i = 0; i < H; ++i) ss += xm[i] * xm[i];
    rstd[m] = T(1) / std::sqrt(ss / static_cast<T>(H) + eps);
  }
  if (dw) {
    // Columns in chunks; each chunk sums the rows in order.
    constexpr int64_t kChunk = 64;
    const int64_t chunks = (H + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (M * H > 16384)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk, i1 = std::min(H, i0 + kChunk);
      T acc[kChunk] = {};
      for (int64_t m = 0; m < M; ++m) {
        const T r = rstd[m];
        for (int64_t i = i0; i < i1; ++i) acc[i - i0] += dy[m * H + i] * (x[m * H + i] * r);
      }
      for (int64_t i = i0; i < i1; ++i) dw[i] += acc[i - i0];
    }
  }
#pragma omp parallel for schedule(static) if (M * H > 16384)
  for (int64_t m = 0; m < M; ++m) {
    const T* xm = x + m * H;
    const T* dym = dy + m * H;
    T* dxm = dx + m * H;
    const T r = rstd[m];
    T dot = T(0);
    for (int64_t i = 0; i < H; ++i) dot += w[i] * dym[i] * xm[i];
    const T c = dot * r * r * r / static_cast<T>(H);
    if (accumulate) {
      for (int64_t i = 0; i < H; ++i) dxm[i] += r * w[i] * dym[i] - xm[i] * c;
    } else {
      for (int64_t i = 0; i < H; ++i) dxm[i] = r * w[i] * dym[i] - xm[i] * c;
    }
  }
}

template <typename T>
void swiglu_backward(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i], u = up[i], d = dout[i];
    const T sg = sigmoid(g);
    const T silu = g * sg;
    dup[i] = d * silu;
    dgate[i] = d * u * sg * (T(1) + g * (T(1) - sg));
  }
}

template <typename T>
void silu_backward(const T* x, const T* dy, T* dx, int64_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T sg = sigmoid(x[i]);
    dx[i] = dy[i] * sg * (T(1) + x[i] * (T(1) - sg));
  }
}

template <typename T>
void rope_backward(T* d, int64_t N, int64_t n_heads, int64_t head_dim, const float* cos_t, const float* sin_t) {
  const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (N * n_heads * head_dim > 65536)
  for (int64_t t = 0; t < N; ++t) {
    const float* c = cos_t + t * half;
    const float* s = sin_t + t * half;
    for (int64_t h = 0; h < n_heads; ++h) {
      T* v = d + (t * n_heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        // forward: y1 = x1·c − x2·s, y2 = x2·c + x1·s  =>  dx1 = dy1·c + dy2·s, dx2 = dy2·c − dy1·s
        const T g1 = v[i], g2 = v[i + half];
        v[i] = g1 * static_cast<T>(c[i]) + g2 * static_cast<T>(s[i]);
        v[i + half] = g2 * static_cast<T>(c[i]) - g1 * static_cast<T>(s[i]);
      }
    }
  }
}

template <typename T>
void attention_lse(const T* q, const T* k, int64_t rows, const int64_t* row_begin, const int32_t* n_visible,
                   int64_t n_heads, int64_t n_kv_heads, int64_t capacity, int64_t D, T scale, T* lse) {
  const int64_t group = n_heads / n_kv_heads;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = row_begin[r]; t < row_begin[r + 1]; ++t)
      for (int64_t h = 0; h < n_heads; ++h) {
        const T* qh = q + (t * n_heads + h) * D;
        const T* kb = k + ((r * n_kv_heads + h / group) * capacity) * D;
        T mx = -INFINITY;
        for (int64_t j = 0; j < n_visible[t]; ++j) {
          T s = 0;
          for (int64_t d = 0; d < D; ++d) s += qh[d] * kb[j * D + d];
          mx = std::max(mx, s * scale);
        }
        T sum = 0;
        for (int64_t j = 0; j < n_visible[t]; ++j) {
          T s = 0;
          for (int64_t d = 0; d < D; ++d) s += qh[d] * kb[j * D + d];
          sum += std::exp(s * scale - mx);
        }
        lse[t * n_heads + h] = mx + std::log(sum);
      }
}

template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* out, const T* lse, const T* dout, int64_t rows,
                        const int64_t* row_begin, const int32_t* n_visible, int64_t n_heads, int64_t n_kv_heads,
                        int64_t capacity, int64_t head_dim, T scale, T* dq, T* dk, T* dv, T* scratch) {
  const int64_t D = head_dim, C = capacity, QC = kAttentionBackwardChunk;
  const int64_t group = n_heads / n_kv_heads, ldq = n_heads * D;
  int64_t max_tokens = 1;
  for (int64_t r = 0; r < rows; ++r) max_tokens = std::max(max_tokens, row_begin[r + 1] - row_begin[r]);
  const int64_t work = row_begin[rows] * n_heads * C * D;
#pragma omp parallel for schedule(dynamic, 1) collapse(2) if (work > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t kvh = 0; kvh < n_kv_heads; ++kvh) {
      // Per-thread scratch: K^T, V^T [D, C]; P and dS [QC, C].
      T* kt = scratch + static_cast<int64_t>(omp_get_thread_num()) * attention_backward_scratch(C, D);
      T* vt = kt + D * C;
      T* pbuf = vt + D * C;
      T* dsbuf = pbuf + QC * C;
      const int64_t base = ((r * n_kv_heads + kvh) * C) * D;
      const T* kb = k + base;
      const T* vb = v + base;
      T* dkb = dk + base;
      T* dvb = dv + base;
      const int64_t t_begin = row_begin[r], t_end = row_begin[r + 1];
      int64_t row_visible = 0;
      for (int64_t t = t_begin; t < t_end; ++t) row_visible = std::max<int64_t>(row_visible, n_visible[t]);
      for (int64_t j = 0; j < row_visible; ++j)
        for (int64_t d = 0; d < D; ++d) {
          kt[d * C + j] = kb[j * D + d];
          vt[d * C + j] = vb[j * D + d];
        }
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int64_t t0 = t_begin; t0 < t_end; t0 += QC) {
          const int64_t nq = std::min(QC, t_end - t0);
          int64_t nv = 0;  // columns any query of the chunk sees
          for (int64_t i = 0; i < nq; ++i) nv = std::max<int64_t>(nv, n_visible[t0 + i]);
          const T* qc = q + (t0 * n_heads + h) * D;
          const T* doc = dout + (t0 * n_heads + h) * D;
          // S = Q·K^T and dP = dO·V^T for the chunk: [nq, nv].
          gemm_accumulate(qc, 1, ldq, kt, C, D, nq, nv, pbuf, C, false);
          gemm_accumulate(doc, 1, ldq, vt, C, D, nq, nv, dsbuf, C, false);
          for (int64_t i = 0; i < nq; ++i) {
            const int64_t t = t0 + i, n = n_visible[t];
            const T l = lse[t * n_heads + h];
            T delta = T(0);  // Σ_j p_j·dP_j = dO·O
            for (int64_t d = 0; d < D; ++d) delta += dout[(t * n_heads + h) * D + d] * out[(t * n_heads + h) * D + d];
            T* pr = pbuf + i * C;
            T* dsr = dsbuf + i * C;
            for (int64_t j = 0; j < n; ++j) {
              const T pj = std::exp(pr[j] * scale - l);
              pr[j] = pj;
              dsr[j] = pj * (dsr[j] - delta) * scale;
            }
            for (int64_t j = n; j < nv; ++j) pr[j] = dsr[j] = T(0);
          }
          // dQ = dS·K [nq, D]; dK += dS^T·Q; dV += P^T·dO  ([nv, D]).
          gemm_accumulate(dsbuf, 1, C, kb, D, nv, nq, D, dq + (t0 * n_heads + h) * D, ldq, false);
          gemm_accumulate(dsbuf, C, 1, qc, ldq, nq, nv, D, dkb, D, true);
          gemm_accumulate(pbuf, C, 1, doc, ldq, nq, nv, D, dvb, D, true);
        }
      }
    }
  }
}

template <typename T>
double cross_entropy_forward_backward(T* logits, const int32_t* target, int64_t M, int64_t V, T scale,
                                      double* row_loss) {
#pragma omp parallel for schedule(static) if (M * V > 32768)
  for (int64_t m = 0; m < M; ++m) {
    T* x = logits + m * V;
    if (target[m] < 0) {
      std::fill_n(x, V, T(0));
      row_loss[m] = 0.0;
      continue;
    }
    T mx = x[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, x[i]);
    const T shifted_target = x[target[m]] - mx;
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) {
      x[i] = std::exp(x[i] - mx);
      sum += static_cast<double>(x[i]);
    }
    row_loss[m] = std::log(sum) - static_cast<double>(shifted_target);  // logsumexp − logit[target]
    const T inv = static_cast<T>(1.0 / sum);
    for (int64_t i = 0; i < V; ++i) x[i] = x[i] * inv * scale;
    x[target[m]] -= scale;
  }
  double total = 0.0;
  for (int64_t m = 0; m < M; ++m) total += row_loss[m];
  return total;
}

template <typename T>
double cross_entropy_loss(const T* logits, const int32_t* target, int64_t M, int64_t V, double* row_loss) {
#pragma omp parallel for schedule(static) if (M * V > 32768)
  for (int64_t m = 0; m < M; ++m) {
    const T* x = logits + m * V;
    if (target[m] < 0) {
      row_loss[m] = 0.0;
      continue;
    }
    T mx = x[0];
    for (int64_t i = 1; i < V; ++i) mx = std::max(mx, x[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(x[i] - mx));
    row_loss[m] = std::log(sum) - static_cast<double>(x[target[m]] - mx);
  }
  double total = 0.0;
  for (int64_t m = 0; m < M; ++m) total += row_loss[m];
  return total;
}

template <typename T>
void smoothed_softmax_backward(const T* p, const T* dw, T* da, int64_t M, int64_t P, T eps) {
  for (int64_t m = 0; m < M; ++m) {
    T dot = T(0);
    for (int64_t s = 0; s < P; ++s) dot += p[m * P + s] * dw[m * P + s];
    for (int64_t s = 0; s < P; ++s) da[m * P + s] = (T(1) - eps) * p[m * P + s] * (dw[m * P + s] - dot);
  }
}

#define PARSCALE_INSTANTIATE(T)                                                                                       \
  template void matmul_backward_input<T>(const T*, int64_t, const T*, int64_t, int64_t, T*, bool);                    \
  template void matmul_backward_weight<T>(const T*, const T*, int64_t, int64_t, int64_t, T*, T*);                     \
  template void rmsnorm_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, T, bool, T*);             \
  template void swiglu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t);                                    \
  template void silu_backward<T>(const T*, const T*, T*, int64_t);                                                    \
  template void rope_backward<T>(T*, int64_t, int64_t, int64_t, const float*, const float*);                          \
  template void attention_lse<T>(const T*, const T*, int64_t, const int64_t*, const int32_t*, int64_t, int64_t,      \
                                 int64_t, int64_t, T, T*);                                                            \
  template void attention_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, int64_t,            \
                                      const int64_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, T, T*, T*,  \
                                      T*, T*);                                                                        \
  template double cross_entropy_forward_backward<T>(T*, const int32_t*, int64_t, int64_t, T, double*);               \
  template double cross_entropy_loss<T>(const T*, const int32_t*, int64_t, int64_t, double*);                         \
  template void smoothed_softmax_backward<T>(const T*, const T*, T*, int64_t, int64_t, T);

PARSCALE_INSTANTIATE(float)
PARSCALE_INSTANTIATE(double)

}  // namespace parscale::kernels
