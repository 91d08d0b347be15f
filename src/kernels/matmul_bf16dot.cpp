// The fast compute mode's matmul for BF16 and q8 weights: activations rounded to bf16 (round to
// nearest even) and AVX512-BF16 dot products (vdpbf16ps: two bf16 products summed into each fp32
// lane). BF16 weights are used as stored; q8 weights (I8 values, one fp32 scale per block of
// W.block values along K, W.block a multiple of 16) become w = bf16(float(q) * scale): for M > 8
// one weight chunk (16 rows x 1024 columns, 32 KB) at a time into a per-thread buffer that feeds
// the same microkernel, for M <= 8 in registers inside a decode microkernel (micro_q8), with the
// same bits. Used for every M (decode and prefill), so the fast mode is
// batch invariant too: each output is one chain per lane over the whole K (lane l sums the pairs
// k = 2l, 2l + 1 + 32i), one horizontal sum, then y += it.
//
// Why q8 is not run on int8 dot products (VNNI vpdpbusd) here: with one scale per 32 weights every
// 64-byte vpdpbusd covers two blocks and must be converted and rescaled before the next (vpdpbusd
// + vcvtdq2ps + a scale product + vfmadd: 4 instructions per 64 products and x row), against 2
// vdpbf16ps for the same 64 products after a dequantization that costs ~8 instructions per 32
// weights once per tile and block of up to 96 x rows. Built and measured (commit 9d2869f, removed
// in the next): x quantized per row in blocks of 32, exact int32 block dots: slower on an AMD
// Zen 5 class CPU for prefill (85 against 124 tok/s), P = 8 decode (126-136 against 96-103 ms)
// and even one-row decode (0.33 against 0.28 ms per 8320 x 1536 matrix from DRAM);
// docs/PERFORMANCE.md, "Round 7".
//
// References: matmul_bf16_ref (bf16-rounded x, exact products, double accumulation); for q8,
// matmul_q8bf16_ref (the same with w = bf16(float(q) * scale)).
#include "core/threads.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"
#include "kernels/packed.h"
#include "kernels/prefetch.h"

namespace parscale::kernels {

void matmul_bf16_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  check(W.dtype == DType::BF16, "matmul_bf16_ref: weights must be BF16");
  const int64_t N = W.rows, K = W.cols;
  const uint16_t* w = static_cast<const uint16_t*>(W.data);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; ++k)
        acc += static_cast<double>(bf16_to_f32(f32_to_bf16(x[m * K + k]))) * bf16_to_f32(w[n * K + k]);
      y[m * N + n] = static_cast<float>(acc);
    }
}

void matmul_q8bf16_ref(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  check(W.dtype == DType::I8 && W.block > 0 && W.cols % W.block == 0, "matmul_q8bf16_ref: weights must be q8 (I8 + block scales)");
  const int64_t N = W.rows, K = W.cols, nb = K / W.block;
  const int8_t* q = static_cast<const int8_t*>(W.data);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias ? bias[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const float w = bf16_to_f32(f32_to_bf16(static_cast<float>(q[n * K + k]) * W.scales[n * nb + k / W.block]));
        acc += static_cast<double>(bf16_to_f32(f32_to_bf16(x[m * K + k]))) * w;
      }
      y[m * N + n] = static_cast<float>(acc);
    }
}

}  // namespace parscale::kernels

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace parscale::kernels::detail {
namespace {

constexpr int64_t kLanes = 16;  // fp32 lanes; 32 bf16 values per vector
constexpr int64_t kStep = 32;
constexpr int MR = 4;             // x rows per microkernel
constexpr int NR = 4;             // weight rows per microkernel (16 accumulators)
constexpr int64_t NB = 4 * NR;    // weight rows per task
constexpr int64_t MB = 96;        // x rows per block (MB x KC bf16 = 192 KB: L2)
constexpr int64_t KC = 1024;      // K per chunk (NB rows x KC bf16 = 32 KB: L1)

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// float(q[0 .. 16)) * scale: the dequantization every q8 path shares (the chunk buffer and the
// decode registers alike, so they produce the same bits).
inline __m512 dequant16(const int8_t* q, __m512 scale) {
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))), scale);
}

// xb[m, 0 .. Kp) = bf16(x[m, 0 .. K)), zero padded to Kp (>= K: a multiple of 32 for our kernels,
// K itself for packed weights).
void to_bf16_rows(const float* x, int64_t M, int64_t K, int64_t Kp, uint16_t* xb) {
  parallel_for(M, grain_if(M * K > (int64_t{1} << 20), M), [&](int64_t mb, int64_t me, int) {
  for (int64_t m = mb; m < me; ++m) {
    const float* s = x + m * K;
    uint16_t* d = xb + m * Kp;
    int64_t k = 0;
    for (; k + kStep <= K; k += kStep) {
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + k + 16), _mm512_loadu_ps(s + k));
      _mm512_storeu_si512(d + k, (__m512i)v);
    }
    for (; k < Kp; k += kStep) {  // the ragged end of K (r < 32 values, then zeros) and the padding
      const int64_t r = std::max<int64_t>(0, K - k), n = std::min<int64_t>(kStep, Kp - k);
      const __mmask16 lo = static_cast<__mmask16>(r >= 16 ? 0xffff : (1u << r) - 1);
      const __mmask16 hi = static_cast<__mmask16>(r <= 16 ? 0 : r >= 32 ? 0xffff : (1u << (r - 16)) - 1);
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, s + k + 16), _mm512_maskz_loadu_ps(lo, s + k));
      const __mmask32 store = n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint64_t{1} << n) - 1);
      _mm512_mask_storeu_epi16(d + k, store, (__m512i)v);
    }
  }
  });
}

// Partial sums of MRr x rows by NR weight rows over k in [k0, k0 + kc) (kc a multiple of 32 except
// at the padded end). acc carries over chunks in accbuf[m * lda + j * 16]; on the last chunk
// y[m * ldy + j] += hsum for j < nr. w[j] points at weight row j (rows past nr repeat a valid row).
// pf: prefetch distance in bf16 elements (0: none); decode streams the weights from DRAM once, so
// each row's line pf elements ahead (the same columns NR rows further down) is requested early.
// wk0: w[j][k - wk0] holds column k (0 for weights as stored; k0 for a dequantized chunk).
template <int MRr>
void micro(const uint16_t* xb, int64_t ldx, const uint16_t* const* w, int64_t wk0, int64_t k0, int64_t kend, int64_t K,
           float* accbuf, int64_t lda, bool first, bool last, float* y, int64_t ldy, int64_t nr, int64_t pf) {
  __m512 acc[MRr][NR];
#pragma GCC unroll 8
  for (int m = 0; m < MRr; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[m][j] = first ? _mm512_setzero_ps() : _mm512_load_ps(accbuf + m * lda + j * kLanes);
  const int64_t kfull = std::min(kend, K / kStep * kStep);
  int64_t k = k0;
  for (; k < kfull; k += kStep) {
    __m512bh xv[MRr];
#pragma GCC unroll 8
    for (int m = 0; m < MRr; ++m) xv[m] = as_bh(_mm512_loadu_si512(xb + m * ldx + k));
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      if (pf) _mm_prefetch(reinterpret_cast<const char*>(w[j] + k + pf), _MM_HINT_T0);
      const __m512bh wv = as_bh(_mm512_loadu_si512(w[j] + (k - wk0)));
#pragma GCC unroll 8
      for (int m = 0; m < MRr; ++m) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv[m], wv);
    }
  }
  if (k < kend) {  // the ragged end of K: weights loaded under a mask (x is zero padded)
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1);
    __m512bh xv[MRr];
#pragma GCC unroll 8
    for (int m = 0; m < MRr; ++m) xv[m] = as_bh(_mm512_loadu_si512(xb + m * ldx + k));
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m512bh wv = as_bh(_mm512_maskz_loadu_epi16(mask, w[j] + (k - wk0)));
#pragma GCC unroll 8
      for (int m = 0; m < MRr; ++m) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv[m], wv);
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

void micro_rows(int mr, const uint16_t* xb, int64_t ldx, const uint16_t* const* w, int64_t wk0, int64_t k0, int64_t kend,
                int64_t K, float* accbuf, int64_t lda, bool first, bool last, float* y, int64_t ldy, int64_t nr, int64_t pf) {
  switch (mr) {
    case 1: micro<1>(xb, ldx, w, wk0, k0, kend, K, accbuf, lda, first, last, y, ldy, nr, pf); break;
    case 2: micro<2>(xb, ldx, w, wk0, k0, kend, K, accbuf, lda, first, last, y, ldy, nr, pf); break;
    case 3: micro<3>(xb, ldx, w, wk0, k0, kend, K, accbuf, lda, first, last, y, ldy, nr, pf); break;
    case 4: micro<4>(xb, ldx, w, wk0, k0, kend, K, accbuf, lda, first, last, y, ldy, nr, pf); break;
    default: break;
  }
}

// dst[r * KC + (k - k0)] = bf16(float(q[n0 + r, k]) * scale) for r < nr, k in [k0, kend) (k0 and
// kend multiples of 32, kend at most k0 + KC); columns at or past K are zero. W: q8 with
// W.block % 16 == 0, so K % 16 == 0 and each group of 16 columns lies in one scale block (the
// block index advances by comparison: no division per group). Each 64-byte line of the same
// columns NB rows further down (the next tile) is prefetched as this one is read: a decode step
// streams the weights from DRAM once, and 1 KB runs per row are too short for the hardware
// prefetcher alone.
void dequant_q8_chunk(const WeightView& W, int64_t n0, int64_t nr, int64_t k0, int64_t kend, uint16_t* dst) {
  const int64_t K = W.cols, block = W.block, nb = K / block;
  const int64_t kvalid = std::min(kend, K);
  const int8_t* q = static_cast<const int8_t*>(W.data);
  const int64_t b0 = k0 / block;
  for (int64_t r = 0; r < nr; ++r) {
    const int8_t* row = q + (n0 + r) * K;
    const int8_t* ahead = q + prefetch_row(n0 + r, NB, W.rows) * K;
    const float* sc = W.scales + (n0 + r) * nb;
    uint16_t* d = dst + r * KC;
    int64_t b = b0, bnext = (b0 + 1) * block;
    __m512 s = _mm512_set1_ps(sc[b]);
    auto group = [&](int64_t k) {  // 16 columns from k (< K) as fp32
      if (k >= bnext) {
        b += 1;
        bnext += block;
        s = _mm512_set1_ps(sc[b]);
      }
      return dequant16(row + k, s);
    };
    int64_t k = k0;
    for (; k + kStep <= kvalid; k += kStep) {
      if ((k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead + k), _MM_HINT_T0);
      const __m512 lo = group(k);
      const __m512 hi = group(k + 16);
      _mm512_storeu_si512(d + (k - k0), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    for (; k < kend; k += kStep) {  // the padded end: 16 or 0 valid columns, then zeros
      const __m512 lo = k < kvalid ? group(k) : _mm512_setzero_ps();
      _mm512_storeu_si512(d + (k - k0), (__m512i)_mm512_cvtne2ps_pbh(_mm512_setzero_ps(), lo));
    }
  }
}

// q8 decode (M <= 2 MR): the dequantization fused into the microkernel, in registers: for each 32
// columns, each of the NR weight rows is dequantized exactly as dequant_q8_chunk does it and used
// by all MRr x rows at once; the whole K in one pass. Same values, same chain per lane, same
// horizontal sum as the chunked path, so the same bits. Each row's line of the same columns NR
// rows further down is prefetched as this one is read, and that row's scales every 512 columns
// (their loads had held ~19 % of a one-row decode profile; BM_MatmulFromDram q8 one row 0.28 ->
// 0.26 ms; prefetching 8 or 16 rows ahead instead of 4 measured slower).
template <int MRr, int NRr>
void micro_q8(const uint16_t* xb, int64_t ldx, const WeightView& W, const int64_t* rows, int64_t Kp, float* y,
              int64_t ldy, int64_t nr) {
  const int64_t K = W.cols, block = W.block, nb = K / block;
  const int8_t* q = static_cast<const int8_t*>(W.data);
  const int8_t* wr[NRr];
  const int8_t* ahead[NRr];
  const float* sc[NRr];
  const float* sc_ahead[NRr];
#pragma GCC unroll 8
  for (int j = 0; j < NRr; ++j) {
    wr[j] = q + rows[j] * K;
    ahead[j] = q + prefetch_row(rows[j], NRr, W.rows) * K;
    sc[j] = W.scales + rows[j] * nb;
    sc_ahead[j] = W.scales + prefetch_row(rows[j], NRr, W.rows) * nb;
  }
  __m512 acc[MRr][NRr];
#pragma GCC unroll 8
  for (int m = 0; m < MRr; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < NRr; ++j) acc[m][j] = _mm512_setzero_ps();
  int64_t b = 0, bnext = block;
  __m512 s[NRr];
#pragma GCC unroll 8
  for (int j = 0; j < NRr; ++j) s[j] = _mm512_set1_ps(sc[j][0]);
  auto rescale = [&](int64_t k) {
    if (k >= bnext) {
      b += 1;
      bnext += block;
#pragma GCC unroll 8
      for (int j = 0; j < NRr; ++j) s[j] = _mm512_set1_ps(sc[j][b]);
    }
  };
  // The look-ahead rows' scales of the next 512 columns from scale block `blk` (one line at blocks
  // of 32).
  auto prefetch_scales = [&](int64_t blk) {
#pragma GCC unroll 8
    for (int j = 0; j < NRr; ++j) _mm_prefetch(reinterpret_cast<const char*>(sc_ahead[j] + blk), _MM_HINT_T0);
  };
  int64_t k = 0;
  if (MRr <= MR && block == kStep) {
    // Blocks of 32 (the default), up to MR x rows: one scale per row and step, read as the
    // multiplication's broadcast operand (no block tracking, no branches); two steps per
    // iteration, so each row's weight line (64 columns) is prefetched once without a test. Same
    // operations per value as below: the same bits. (BM_MatmulFromDram q8 one row 0.26 -> 0.24
    // ms; with 8 x rows this loop measured 1.6x slower than the one below, hence MR.)
    auto step = [&](int64_t kk, bool prefetch) {
      __m512bh xv[MRr];
#pragma GCC unroll 8
      for (int m = 0; m < MRr; ++m) xv[m] = as_bh(_mm512_loadu_si512(xb + m * ldx + kk));
#pragma GCC unroll 8
      for (int j = 0; j < NRr; ++j) {
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(ahead[j] + kk), _MM_HINT_T0);
        const __m512 sj = _mm512_set1_ps(sc[j][kk / kStep]);
        const __m512bh wv = _mm512_cvtne2ps_pbh(dequant16(wr[j] + kk + 16, sj), dequant16(wr[j] + kk, sj));
#pragma GCC unroll 8
        for (int m = 0; m < MRr; ++m) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv[m], wv);
      }
    };
    for (; k + 2 * kStep <= K; k += 2 * kStep) {
      if ((k & 511) == 0) prefetch_scales(k / kStep);
      step(k, true);
      step(k + kStep, false);
    }
    if (k + kStep <= K) {  // (K is a multiple of the block, so nothing is left after this)
      step(k, true);
      k += kStep;
    }
  }
  for (; k + kStep <= K; k += kStep) {
    __m512bh xv[MRr];
#pragma GCC unroll 8
    for (int m = 0; m < MRr; ++m) xv[m] = as_bh(_mm512_loadu_si512(xb + m * ldx + k));
    rescale(k);
    __m512 lo[NRr];
    if ((k & 511) == 0) prefetch_scales(b);
#pragma GCC unroll 8
    for (int j = 0; j < NRr; ++j) {
      if ((k & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(ahead[j] + k), _MM_HINT_T0);
      lo[j] = dequant16(wr[j] + k, s[j]);
    }
    rescale(k + 16);
#pragma GCC unroll 8
    for (int j = 0; j < NRr; ++j) {
      const __m512bh wv = _mm512_cvtne2ps_pbh(dequant16(wr[j] + k + 16, s[j]), lo[j]);
#pragma GCC unroll 8
      for (int m = 0; m < MRr; ++m) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv[m], wv);
    }
  }
  if (k < Kp) {  // K % 32 == 16: the last 16 columns, then 16 zeros (x is zero padded too)
    __m512bh xv[MRr];
#pragma GCC unroll 8
    for (int m = 0; m < MRr; ++m) xv[m] = as_bh(_mm512_loadu_si512(xb + m * ldx + k));
    rescale(k);
#pragma GCC unroll 8
    for (int j = 0; j < NRr; ++j) {
      const __m512bh wv = _mm512_cvtne2ps_pbh(_mm512_setzero_ps(), dequant16(wr[j] + k, s[j]));
#pragma GCC unroll 8
      for (int m = 0; m < MRr; ++m) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], xv[m], wv);
    }
  }
  for (int m = 0; m < MRr; ++m)
    for (int j = 0; j < nr; ++j) y[m * ldy + j] += _mm512_reduce_add_ps(acc[m][j]);
}

// rows: NR weight rows for mr <= MR (16 accumulators), NR / 2 for mr <= 2 * MR (mr x 2).
void micro_q8_rows(int mr, const uint16_t* xb, int64_t ldx, const WeightView& W, const int64_t* rows, int64_t Kp, float* y,
                   int64_t ldy, int64_t nr) {
  switch (mr) {
    case 1: micro_q8<1, NR>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 2: micro_q8<2, NR>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 3: micro_q8<3, NR>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 4: micro_q8<4, NR>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 5: micro_q8<5, NR / 2>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 6: micro_q8<6, NR / 2>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 7: micro_q8<7, NR / 2>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    case 8: micro_q8<8, NR / 2>(xb, ldx, W, rows, Kp, y, ldy, nr); break;
    default: break;
  }
}

// y[M, N] += xb[M, Kp] · W[N, K]^T (xb: bf16 rows zero padded to Kp). Threads take tiles of NB
// weight rows; the tile's K chunk stays in L1 while every block of MB x rows passes over it.
// BF16 decode (M <= kDecodeRows): the whole K in one chunk, weights prefetched NR rows ahead. q8:
// M <= 2 MR through micro_q8 (registers); otherwise chunks of KC, each dequantized into a
// per-thread bf16 buffer before use. (The chunking changes no arithmetic: the partial sums carry
// over, so results are the same.)
constexpr int64_t kDecodeRows = 32;
// Decode hands the tiles out in contiguous runs (about 16 per thread, grain_for(n, 16), as the
// exact kernels do; dynamically, so a thread the OS delays does not hold the others for a fixed
// share), not one at a time: with single tiles the threads alternate 24-48 KB pieces of the
// weights and each core's stream is cut every piece, which halved the rate weights came from DRAM
// (BM_MatmulFromDram, q8 8320 x 1536, one row: 0.62 ms one tile at a time, 0.28-0.30 ms in runs;
// docs/PERFORMANCE.md, "Round 7"). Which thread computes a tile changes no result.
void run(const uint16_t* xb, int64_t M, int64_t Kp, const WeightView& Wt, float* y) {
  if (Wt.packed) return matmul_packed(xb, M, *Wt.packed, y);  // oneDNN (packed.h; Kp == K)
  const int64_t N = Wt.rows, K = Wt.cols;
  const bool q8 = Wt.dtype == DType::I8;
  const bool decode = M <= kDecodeRows && !q8;
  const int64_t kchunk = decode ? Kp : KC, pf = decode ? NR * K : 0;
  const uint16_t* wdata = q8 ? nullptr : static_cast<const uint16_t*>(Wt.data);
  const int64_t n_tiles = (N + NB - 1) / NB;
  constexpr int64_t lda = NB * kLanes;
  if (q8 && M <= 2 * MR) {  // q8 decode: dequantized in registers, no buffer
    const int64_t step = M <= MR ? NR : NR / 2;  // weight rows per microkernel call
    parallel_for(n_tiles, grain_for(n_tiles, 16), [&](int64_t tb, int64_t te, int) {
      for (int64_t t = tb; t < te; ++t) {
        const int64_t n0 = t * NB, nr = std::min(NB, N - n0);
        for (int64_t j = 0; j < nr; j += step) {
          const int64_t nrj = std::min<int64_t>(step, nr - j);
          int64_t rows[NR];
          for (int jj = 0; jj < NR; ++jj) rows[jj] = n0 + j + std::min<int64_t>(jj, nrj - 1);
          micro_q8_rows(static_cast<int>(M), xb, Kp, Wt, rows, Kp, y + n0 + j, N, nrj);
        }
      }
    });
    return;
  }
  parallel_for(n_tiles, M <= kDecodeRows ? grain_for(n_tiles, 16) : 1, [&](int64_t tb, int64_t te, int) {
    alignas(64) float accbuf[MB * NB * kLanes];
    alignas(64) uint16_t wbuf[NB * KC];  // q8 only: the dequantized weight chunk
    for (int64_t t = tb; t < te; ++t) {
      const int64_t n0 = t * NB, nr = std::min(NB, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += MB) {
        const int64_t mb = std::min(MB, M - m0);
        for (int64_t k0 = 0; k0 < Kp; k0 += kchunk) {
          const int64_t kend = std::min(Kp, k0 + kchunk);
          const bool first = k0 == 0, last = kend >= Kp;
          if (q8) dequant_q8_chunk(Wt, n0, nr, k0, kend, wbuf);
          for (int64_t j = 0; j < nr; j += NR) {
            const int64_t nrj = std::min<int64_t>(NR, nr - j);
            const uint16_t* w[NR];
            for (int jj = 0; jj < NR; ++jj) {
              const int64_t r = j + std::min<int64_t>(jj, nrj - 1);
              w[jj] = q8 ? wbuf + r * KC : wdata + (n0 + r) * K;
            }
            for (int64_t m = m0; m < m0 + mb; m += MR) {
              const int mr = static_cast<int>(std::min<int64_t>(MR, m0 + mb - m));
              micro_rows(mr, xb + m * Kp, Kp, w, q8 ? k0 : 0, k0, kend, K, accbuf + (m - m0) * lda + j * kLanes, lda,
                         first, last, y + m * N + n0 + j, N, nrj, pf);
            }
          }
        }
      }
    }
  });
}

// The calling thread's bf16 copy of x (grows to the largest M·Kp seen; never shrinks).
uint16_t* x_scratch(size_t n) {
  static thread_local std::vector<uint16_t> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

int64_t padded_k(int64_t K) { return (K + kStep - 1) / kStep * kStep; }

// The row stride of the bf16 copy of x for W: K for packed weights (oneDNN runs its brgemm kernels
// on dense rows only), K rounded up to 32 (zero padded) for ours.
int64_t x_stride(const WeightView& W) { return W.packed ? W.cols : padded_k(W.cols); }

void init_output(int64_t M, int64_t N, const float* bias, float* y) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) y[m * N + n] = bias ? bias[n] : 0.0f;
}

}  // namespace

bool bf16dot_compiled() { return true; }

// 16 independent vdpbf16ps chains, iters rounds (for probe_bf16dot_gflops: 32 multiply-adds,
// 64 FLOP, per instruction).
float bf16dot_chains(int64_t iters) {
  __m512 a[16];
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(-1e-3f));
  const __m512bh c = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f));
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) a[i] = _mm512_set1_ps(static_cast<float>(i));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = _mm512_dpbf16_ps(a[i], b, c);
  }
  __m512 s = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

void matmul_bf16dot(const float* x, int64_t M, const WeightView& W, const float* bias, float* y, bool accumulate) {
  if (W.rows == 0 || M == 0) return;
  if (!accumulate) init_output(M, W.rows, bias, y);
  const int64_t Kp = x_stride(W);
  uint16_t* xb = x_scratch(static_cast<size_t>(M * Kp));
  to_bf16_rows(x, M, W.cols, Kp, xb);
  run(xb, M, Kp, W, y);
}

void matmul_multi_bf16dot(const float* x, int64_t M, const MatmulOut* outs, int count) {
  if (M == 0 || count == 0) return;
  const int64_t K = outs[0].W->cols, Kp = x_stride(*outs[0].W);
  bool one_stride = true;
  for (int i = 1; i < count; ++i) one_stride = one_stride && x_stride(*outs[i].W) == Kp;
  if (!one_stride) {  // packed and unpacked weights together: x converted for each
    for (int i = 0; i < count; ++i) matmul_bf16dot(x, M, *outs[i].W, outs[i].bias, outs[i].y, false);
    return;
  }
  uint16_t* xb = x_scratch(static_cast<size_t>(M * Kp));
  to_bf16_rows(x, M, K, Kp, xb);
  for (int i = 0; i < count; ++i) {
    init_output(M, outs[i].W->rows, outs[i].bias, outs[i].y);
    run(xb, M, Kp, *outs[i].W, outs[i].y);
  }
}

void gate_up_swiglu_bf16dot(const float* x, int64_t M, const WeightView& Wg, const WeightView& Wu, float* gate, float* up,
                            float* out) {
  if (M == 0) return;
  const int64_t K = Wg.cols, Kp = x_stride(Wg);
  if (x_stride(Wu) != Kp) {
    matmul_bf16dot(x, M, Wg, nullptr, gate, false);
    matmul_bf16dot(x, M, Wu, nullptr, up, false);
  } else {
    uint16_t* xb = x_scratch(static_cast<size_t>(M * Kp));
    to_bf16_rows(x, M, K, Kp, xb);
    init_output(M, Wg.rows, nullptr, gate);
    init_output(M, Wu.rows, nullptr, up);
    run(xb, M, Kp, Wg, gate);
    run(xb, M, Kp, Wu, up);
  }
  swiglu(gate, up, out, M * Wg.rows);
}

}  // namespace parscale::kernels::detail

#pragma GCC pop_options

#else
namespace parscale::kernels::detail {
bool bf16dot_compiled() { return false; }
float bf16dot_chains(int64_t) { throw Error("bf16 dot-product kernels are not built on this platform"); }
void matmul_bf16dot(const float*, int64_t, const WeightView&, const float*, float*, bool) {
  throw Error("bf16 dot-product kernels are not built on this platform");
}
void matmul_multi_bf16dot(const float*, int64_t, const MatmulOut*, int) {
  throw Error("bf16 dot-product kernels are not built on this platform");
}
void gate_up_swiglu_bf16dot(const float*, int64_t, const WeightView&, const WeightView&, float*, float*, float*) {
  throw Error("bf16 dot-product kernels are not built on this platform");
}
}  // namespace parscale::kernels::detail
#endif
