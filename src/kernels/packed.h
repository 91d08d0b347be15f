// Packed BF16 weights for the fast compute mode: oneDNN's bf16 matmul (brgemm kernels with
// vdpbf16ps, Debian libdnnl 2.6) on a copy of W in oneDNN's blocked layout.
//
// Why: measured on the 1.8B shape (docs/PERFORMANCE.md, "Round 4"), oneDNN's brgemm runs these
// matmuls at ~95 % of the vdpbf16ps peak for prompt-sized M against ~60 % for our own
// K-vectorised kernel, and the blocked layout streams better from DRAM at decode (M = 1-8).
//
// Invariants kept from the rest of the fast mode:
// - Batch invariance: an output row never depends on M or on the other rows. oneDNN's brgemm
//   matmul computes every row with the same K order whatever M is (checked bit for bit by the
//   tests), and rows are run in chunks of fixed sizes (M <= 64 as is, else 256 / 192 / 128 / 64
//   rows and a remainder), so at most 67 primitives per (slice shape) are ever created.
// - Thread-count independence: W is cut into column slices (one per pool thread at pack time,
//   boundaries on 64 columns); each slice runs single-threaded inside one pool block, and a column's
//   result does not depend on the slice it is in (tests).
// - No allocation per call once a shape has been seen: each pool thread caches its primitives,
//   memory objects, stream and scratchpad.
// Arithmetic: y[m, n] += sum_k bf16(x[m, k]) * w[n, k] with exact products and fp32 accumulation in
// oneDNN's order (reference: matmul_bf16_ref, within the fast mode's tolerance).
#pragma once
#include <cstdint>
#include <memory>

#include "core/weight_view.h"

namespace parscale::kernels {

// Whether this build has oneDNN, this CPU has AVX512-BF16 (oneDNN's brgemm bf16 kernels) and the
// environment does not turn it off (PARSCALE_ONEDNN=0, read once).
bool packed_bf16_supported();

// W (BF16, [N, K]) copied into oneDNN's layout, cut into `slices` column ranges (0: one per pool
// thread). Null where packed_bf16_supported() is false or W is not BF16. The result does not refer
// to W's storage; set W.packed to it (and keep it alive as long as W) to route W's fast-mode
// matmuls through it. Throws parscale::Error if oneDNN rejects the shape.
std::shared_ptr<PackedWeight> pack_bf16(const WeightView& W, int slices = 0);

// Bytes held by a packed copy.
int64_t packed_bytes(const PackedWeight& p);

// dst[0, K) = row r of W as fp32, read from the packed copy (the same values as from W's plain
// storage): embedding lookups of a tied lm_head whose plain copy was released. Throws
// parscale::Error for r outside [0, N).
void packed_row_f32(const PackedWeight& p, int64_t r, float* dst);

namespace detail {
// y[M, N] += xb[M, K] · W^T with xb dense bf16 rows (stride K: oneDNN 2.6 runs its brgemm kernels
// on dense rows only): the fast mode's matmul for a packed W (y already holds the bias or the
// values to add to).
void matmul_packed(const uint16_t* xb, int64_t M, const PackedWeight& W, float* y);
}  // namespace detail

}  // namespace parscale::kernels
