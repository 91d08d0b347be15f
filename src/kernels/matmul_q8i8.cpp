// The fast compute mode's matmul for q8 weights: int8 activations and AVX512-VNNI dot products.
//
// Arithmetic (what matmul_q8i8_ref computes in double, and every M computes here with the same
// bits, so the mode stays batch invariant):
// - x is quantized per row in blocks of 32 values (quantize_rows_q8_ref): amax = max |x|,
//   d = amax / 127, q = nearest-even(x · (127 / amax)) in [-127, 127] (0 and d = 0 when amax = 0).
// - The weights are q8 as stored (int8 in [-127, 127], one fp32 scale per W.block values along K,
//   W.block a multiple of 32), so each 32-column block has one x scale and one weight scale.
// - Per 64 columns, lane l (of 16) holds the exact int32 dot of columns 4l .. 4l + 3 (lanes 0-7 the
//   first 32-column block, 8-15 the second): vpdpbusd takes an unsigned byte operand, so the
//   weights go in as w + 128 (w ^ 0x80) and the sum starts from -128 · Σ x of the lane, computed
//   once per x vector (vpdpbusd of 0x80 bytes, negated); the integers are exact.
// - acc_l = fma(float(dot_l), d_x · d_w, acc_l) per lane, one chain per lane over the whole K;
//   then y += the horizontal sum of the 16 lanes.
// Instructions per 64 weights and x row: vpdpbusd, vcvtdq2ps, vmulps, vfmadd; against 18-20 for
// the bf16 path's dequantize-then-vdpbf16ps at decode, where the weights stream from DRAM once and
// the instruction count, not the bandwidth, set the speed (docs/PERFORMANCE.md, "Round 7").
#include "core/threads.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/prefetch.h"

namespace parscale::kernels {

void quantize_rows_q8_ref(const float* x, int64_t M, int64_t K, int8_t* q, float* scales) {
  check(K % kActBlock == 0, "quantize_rows_q8_ref: K must be a multiple of 32");
  const int64_t nb = K / kActBlock;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const float* s = x + m * K + b * kActBlock;
      float amax = 0.0f;
      for (int64_t i = 0; i < kActBlock; ++i) amax = std::max(amax, std::fabs(s[i]));
      const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
      scales[m * nb + b] = amax / 127.0f;
      for (int64_t i = 0; i < kActBlock; ++i)
        q[m * K + b * kActBlock + i] = static_cast<int8_t>(std::clamp(std::nearbyint(s[i] * id), -127.0f, 127.0f));
    }
}

void matmul_q8i8_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  check(W.dtype == DType::I8 && W.block > 0 && W.block % kActBlock == 0 && W.cols % W.block == 0,
        "matmul_q8i8_ref: weights must be q8 with blocks a multiple of 32");
  const int64_t N = W.rows, K = W.cols, nb = K / kActBlock, nbw = K / W.block;
  std::vector<int8_t> xq(static_cast<size_t>(M * K));
  std::vector<float> xs(static_cast<size_t>(M * nb));
  quantize_rows_q8_ref(x, M, K, xq.data(), xs.data());
  const int8_t* w = static_cast<const int8_t*>(W.data);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        int64_t dot = 0;
        for (int64_t i = b * kActBlock; i < (b + 1) * kActBlock; ++i) dot += int64_t{xq[m * K + i]} * w[n * K + i];
        acc += static_cast<double>(dot) * xs[m * nb + b] * W.scales[n * nbw + b * kActBlock / W.block];
      }
      y[m * N + n] = static_cast<float>(acc);
    }
}

}  // namespace parscale::kernels

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace parscale::kernels::detail {
namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kStep = 64;     // columns per vpdpbusd (two 32-column scale blocks)
constexpr int MR = 4;             // x rows per microkernel
constexpr int NR = 4;             // weight rows per microkernel (16 accumulators)
constexpr int64_t NB = 4 * NR;    // weight rows per task
constexpr int64_t MB = 96;        // x rows per block (MB x KC int8 = 96 KB: L2)
constexpr int64_t KC = 1024;      // K per chunk (NB rows x KC int8 = 16 KB: L1)
constexpr int64_t kDecodeRows = 32;  // up to this many x rows, the whole K in one chunk

// The padded row stride of the quantized x: K rounded up to 64 (zeros and zero scales past K).
int64_t padded_k(int64_t K) { return (K + kStep - 1) / kStep * kStep; }

// q[m, 0 .. Kp) and s[m, 0 .. Kp / 32) from x[m, 0 .. K), K a multiple of 32: as
// quantize_rows_q8_ref (the same float operations: |x| max, 127 / amax, x · that rounded to
// nearest even by vcvtps2dq under the default rounding mode).
void quantize_rows(const float* x, int64_t M, int64_t K, int64_t Kp, int8_t* q, float* s) {
  parallel_for(M, grain_if(M * K > (int64_t{1} << 20), M), [&](int64_t mb, int64_t me, int) {
    for (int64_t m = mb; m < me; ++m) {
      const float* src = x + m * K;
      int8_t* dq = q + m * Kp;
      float* ds = s + m * (Kp / kActBlock);
      int64_t k = 0;
      for (; k < K; k += kActBlock) {
        const __m512 lo = _mm512_loadu_ps(src + k), hi = _mm512_loadu_ps(src + k + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        const __m512 id = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        ds[k / kActBlock] = amax / 127.0f;
        const __m128i qlo = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, id)));
        const __m128i qhi = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, id)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dq + k), qlo);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dq + k + 16), qhi);
      }
      for (; k < Kp; k += kActBlock) {
        std::memset(dq + k, 0, kActBlock);
        ds[k / kActBlock] = 0.0f;
      }
    }
  });
}

// Lanes 0-7 = p[0], lanes 8-15 = p[1].
inline __m512 pair_scales(const float* p) {
  const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)))));
}
inline __m512 two_scales(float a, float b) { return _mm512_mask_mov_ps(_mm512_set1_ps(a), 0xff00, _mm512_set1_ps(b)); }

// Where the quantized x lives: row m's int8 values at q + m * ldq, its 32-block scales at
// s + m * lds.
struct QX {
  const int8_t* q;
  const float* s;
  int64_t ldq, lds;
};

// Partial sums of MRr x rows by NR weight rows over columns [k0, kend) (multiples of 64 except the
// padded end). acc carries over chunks in accbuf[m * lda + j * 16]; on the last chunk y[m * ldy +
// j] += hsum for j < nr. w[j] / ws[j]: weight row j's values and scales (rows past nr repeat a
// valid row). ahead[j] (null: no prefetch): the row whose same columns are requested while row j
// is read (decode streams the weights from DRAM once).
template <int MRr>
void micro(const QX& x, const int8_t* const* w, const float* const* ws, int64_t block, const int8_t* const* ahead, int64_t k0,
           int64_t kend, int64_t K, float* accbuf, int64_t lda, bool first, bool last, float* y, int64_t ldy, int64_t nr) {
  __m512 acc[MRr][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MRr; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[m][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(accbuf + m * lda + j * kLanes);
  const __m512i c80 = _mm512_set1_epi8(static_cast<char>(0x80));
  const bool pairs = block == kActBlock;
  int64_t b = k0 / block, bnext = (b + 1) * block;  // the weight scale block of column k
  for (int64_t k = k0; k < kend; k += kStep) {
    const bool whole = k + kStep <= K;  // else K % 64 == 32 and these are its last 32 columns
    // Per x row: the -128 · Σx start of each lane, and the two 32-block scales.
    __m512i nc[MRr];
    __m512 sx[MRr];
#pragma GCC unroll 8
    for (int m = 0; m < MRr; ++m) {
      const __m512i xv = _mm512_loadu_si512(x.q + m * x.ldq + k);
      nc[m] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), c80, xv));
      sx[m] = pair_scales(x.s + m * x.lds + k / kActBlock);  // (x's scales are padded to Kp / 32)
    }
    while (k >= bnext) {
      b += 1;
      bnext += block;
    }
    const int64_t bhi = (whole && k + kActBlock >= bnext) ? b + 1 : b;
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      if (ahead) _mm_prefetch(reinterpret_cast<const char*>(ahead[j] + k), _MM_HINT_T0);
      const __m512i wv = whole ? _mm512_loadu_si512(w[j] + k) : _mm512_maskz_loadu_epi8(0xffffffffull, w[j] + k);
      const __m512i wu = _mm512_xor_si512(wv, c80);
      const __m512 sw = (pairs && whole) ? pair_scales(ws[j] + b) : two_scales(ws[j][b], ws[j][bhi]);
#pragma GCC unroll 8
      for (int m = 0; m < MRr; ++m) {
        const __m512i xv = _mm512_loadu_si512(x.q + m * x.ldq + k);
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc[m], wu, xv));
        acc[m][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(sx[m], sw), acc[m][j]);
      }
    }
  }
  if (!last) {
#pragma GCC unroll 8
    for (int m = 0; m < MRr; ++m)
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) _mm512_store_ps(accbuf + m * lda + j * kLanes, acc[m][j]);
    return;
  }
  for (int m = 0; m < MRr; ++m)
    for (int j = 0; j < nr; ++j) y[m * ldy + j] += _mm512_reduce_add_ps(acc[m][j]);
}

void micro_rows(int mr, const QX& x, const int8_t* const* w, const float* const* ws, int64_t block, const int8_t* const* ahead,
                int64_t k0, int64_t kend, int64_t K, float* accbuf, int64_t lda, bool first, bool last, float* y, int64_t ldy,
                int64_t nr) {
  switch (mr) {
    case 1: micro<1>(x, w, ws, block, ahead, k0, kend, K, accbuf, lda, first, last, y, ldy, nr); break;
    case 2: micro<2>(x, w, ws, block, ahead, k0, kend, K, accbuf, lda, first, last, y, ldy, nr); break;
    case 3: micro<3>(x, w, ws, block, ahead, k0, kend, K, accbuf, lda, first, last, y, ldy, nr); break;
    case 4: micro<4>(x, w, ws, block, ahead, k0, kend, K, accbuf, lda, first, last, y, ldy, nr); break;
    default: break;
  }
}

// y[M, N] += x[M, K] · W^T with x quantized (QX, rows padded to Kp). Threads take tiles of NB weight
// rows. Decode (M <= kDecodeRows): the whole K in one chunk, each weight row's line NR rows
// further down prefetched as it is read. Otherwise chunks of KC columns: the tile's chunk stays
// in L1 while every block of MB x rows passes over it, the partial sums carried in a per-thread
// buffer (the chunking changes no arithmetic: same chain per lane, so the same bits as decode).
void run(const QX& x, int64_t M, int64_t Kp, const WeightView& W, float* y) {
  const int64_t N = W.rows, K = W.cols, nbw = K / W.block;
  const bool decode = M <= kDecodeRows;
  const int64_t kchunk = decode ? Kp : KC, mblock = decode ? M : MB;
  const int8_t* q = static_cast<const int8_t*>(W.data);
  const int64_t n_tiles = (N + NB - 1) / NB;
  constexpr int64_t lda = NB * kLanes;
  parallel_for(n_tiles, 1, [&](int64_t tb, int64_t te, int) {
    alignas(64) float accbuf[MB * NB * kLanes];
    for (int64_t t = tb; t < te; ++t) {
      const int64_t n0 = t * NB, nr = std::min(NB, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += mblock) {
        const int64_t mb = std::min(mblock, M - m0);
        for (int64_t k0 = 0; k0 < Kp; k0 += kchunk) {
          const int64_t kend = std::min(Kp, k0 + kchunk);
          const bool first = k0 == 0, last = kend >= Kp;
          for (int64_t j = 0; j < nr; j += NR) {
            const int64_t nrj = std::min<int64_t>(NR, nr - j);
            const int8_t* w[NR];
            const float* ws[NR];
            const int8_t* ahead[NR];
            for (int jj = 0; jj < NR; ++jj) {
              const int64_t r = n0 + j + std::min<int64_t>(jj, nrj - 1);
              w[jj] = q + r * K;
              ws[jj] = W.scales + r * nbw;
              ahead[jj] = q + prefetch_row(r, NR, N) * K;
            }
            for (int64_t m = m0; m < m0 + mb; m += MR) {
              const int mr = static_cast<int>(std::min<int64_t>(MR, m0 + mb - m));
              const QX xm{x.q + m * x.ldq, x.s + m * x.lds, x.ldq, x.lds};
              // Prefetch on the first pass of x rows over the weights only (later passes hit L1/L2).
              micro_rows(mr, xm, w, ws, W.block, decode && m == m0 ? ahead : nullptr, k0, kend, K,
                         accbuf + (m - m0) * lda + j * kLanes, lda, first, last, y + m * N + n0 + j, N, nrj);
            }
          }
        }
      }
    }
  });
}

// The calling thread's quantized copy of x (grows to the largest call seen; never shrinks).
QX quantized_scratch(const float* x, int64_t M, int64_t K) {
  static thread_local std::vector<int8_t> qbuf;
  static thread_local std::vector<float> sbuf;
  const int64_t Kp = padded_k(K);
  if (qbuf.size() < static_cast<size_t>(M * Kp)) qbuf.resize(static_cast<size_t>(M * Kp));
  if (sbuf.size() < static_cast<size_t>(M * (Kp / kActBlock))) sbuf.resize(static_cast<size_t>(M * (Kp / kActBlock)));
  quantize_rows(x, M, K, Kp, qbuf.data(), sbuf.data());
  return QX{qbuf.data(), sbuf.data(), Kp, Kp / kActBlock};
}

void init_output(int64_t M, int64_t N, const float* bias, float* y) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) y[m * N + n] = bias ? bias[n] : 0.0f;
}

}  // namespace

bool q8i8_compiled() { return true; }

// 16 independent vpdpbusd chains, iters rounds (for probe_int8dot_gops: 64 multiply-adds, 128
// integer operations, per instruction).
float int8dot_chains(int64_t iters) {
  __m512i a[16];
  const __m512i b = _mm512_set1_epi8(3), c = _mm512_set1_epi8(-2);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_epi32(i);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbusd_epi32(a[i], b, c);
  }
  __m512i s = _mm512_setzero_si512();
  for (int i = 0; i < 16; ++i) s = _mm512_add_epi32(s, a[i]);
  return static_cast<float>(_mm512_reduce_add_epi32(s));
}

void matmul_q8i8(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate) {
  if (W.rows == 0 || M == 0) return;
  if (!accumulate) init_output(M, W.rows, bias, y);
  const QX qx = quantized_scratch(x, M, W.cols);
  run(qx, M, qx.ldq, W, y);
}

void matmul_multi_q8i8(const float* x, int64_t M, const MatmulOut* outs, int count) {
  if (M == 0 || count == 0) return;
  const QX qx = quantized_scratch(x, M, outs[0].W->cols);
  for (int i = 0; i < count; ++i) {
    init_output(M, outs[i].W->rows, outs[i].bias, outs[i].y);
    run(qx, M, qx.ldq, *outs[i].W, outs[i].y);
  }
}

void gate_up_swiglu_q8i8(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up,
                         float* out) {
  if (M == 0) return;
  const QX qx = quantized_scratch(x, M, Wg.cols);
  init_output(M, Wg.rows, nullptr, gate);
  init_output(M, Wu.rows, nullptr, up);
  run(qx, M, qx.ldq, Wg, gate);
  run(qx, M, qx.ldq, Wu, up);
  swiglu(gate, up, out, M * Wg.rows);
}

}  // namespace parscale::kernels::detail

#pragma GCC pop_options

#else
namespace parscale::kernels::detail {
bool q8i8_compiled() { return false; }
float int8dot_chains(int64_t) { throw Error("int8 dot-product kernels are not built on this platform"); }
void matmul_q8i8(const float*, int64_t, const WeightView&, const float*, float*, bool) {
  throw Error("int8 dot-product kernels are not built on this platform");
}
void matmul_multi_q8i8(const float*, int64_t, const MatmulOut*, int) {
  throw Error("int8 dot-product kernels are not built on this platform");
}
void gate_up_swiglu_q8i8(const float*, int64_t, const WeightView&, const WeightView&, float*, float*, float*) {
  throw Error("int8 dot-product kernels are not built on this platform");
}
}  // namespace parscale::kernels::detail
#endif
