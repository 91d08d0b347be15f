// Attention of N query tokens over their KV: a fp32 prefix (ParScale stream prefix, read in place
// from the adapter) followed by real-token slots in pages of a paged pool (F32/BF16/F16).
// The contiguous per-row cache of training is the special case of one page per row.
#include "core/threads.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/dispatch.h"

namespace parscale::kernels {

namespace {

// Key/value slot j of token view `v`, kv head h, as an fp32 row (converted into `buf` when the
// pool is not F32).
const float* slot_row(const KvView& view, const PagedKV& kv, bool is_k, int64_t h, int64_t j, float* buf) {
  const int64_t D = kv.head_dim;
  if (j < view.n_prefix) return (is_k ? view.prefix_k : view.prefix_v) + h * view.prefix_head_stride + j * D;
  const int64_t r = j - view.n_prefix;
  const size_t off = kv.slot_offset(view.pages[r / kv.page_tokens], h, r % kv.page_tokens);
  const void* base = is_k ? kv.k : kv.v;
  switch (kv.dtype) {
    case DType::F32: return static_cast<const float*>(base) + off;
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t d = 0; d < D; ++d) buf[d] = bf16_to_f32(s[d]);
      return buf;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(base) + off;
      for (int64_t d = 0; d < D; ++d) buf[d] = f16_to_f32(s[d]);
      return buf;
    }
    default: return nullptr;  // rejected by the callers
  }
}

constexpr int64_t kMaxHeadDim = 1024;

void check_paged(const PagedKV& kv, int64_t n_heads) {
  if (kv.dtype != DType::F32 && kv.dtype != DType::BF16 && kv.dtype != DType::F16)
    throw Error(std::string("attention: KV dtype ") + dtype_name(kv.dtype) + " is not supported (F32, BF16, F16)");
  if (kv.head_dim > kMaxHeadDim) throw Error("attention: head_dim " + std::to_string(kv.head_dim) + " exceeds 1024");
  if (kv.n_kv_heads <= 0 || n_heads % kv.n_kv_heads != 0) throw Error("attention: heads not divisible by kv heads");
}

}  // namespace

// Portable path: one (token, head) per task, keys one at a time with an online softmax.
void detail::attention_paged_scalar(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv,
                                    float scale, float* out, float* lse) {
  const int64_t D = kv.head_dim;
  const int64_t group = n_heads / kv.n_kv_heads;
  parallel_for(N * n_heads, 1, [&](int64_t tb, int64_t te, int) {
    for (int64_t task = tb; task < te; ++task) {
      const int64_t i = task / n_heads, h = task % n_heads;
      float kbuf[kMaxHeadDim], vbuf[kMaxHeadDim], o[kMaxHeadDim];
      const KvView& view = views[i];
      const float* qh = q + (i * n_heads + h) * D;
      const int64_t kvh = h / group;
      const int64_t n = static_cast<int64_t>(view.n_prefix) + view.n_real;
      float mx = -INFINITY, l = 0.0f;
      for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = slot_row(view, kv, true, kvh, j, kbuf);
        float s = 0.0f;
        for (int64_t d = 0; d < D; ++d) s += qh[d] * kj[d];
        s *= scale;
        if (s > mx) {
          const float corr = std::exp(mx - s);  // 0 on the first key
          for (int64_t d = 0; d < D; ++d) o[d] *= corr;
          l *= corr;
          mx = s;
        }
        const float p = std::exp(s - mx);
        l += p;
        const float* vj = slot_row(view, kv, false, kvh, j, vbuf);
        for (int64_t d = 0; d < D; ++d) o[d] += p * vj[d];
      }
      float* dst = out + (i * n_heads + h) * D;
      const float inv = n > 0 ? 1.0f / l : 0.0f;
      for (int64_t d = 0; d < D; ++d) dst[d] = o[d] * inv;
      if (lse) lse[i * n_heads + h] = mx + std::log(l);
    }
  });
}

void attention_paged(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv, float scale,
                     float* out, float* lse) {
  if (N == 0) return;
  check_paged(kv, n_heads);
  detail::active().attention_paged(q, N, n_heads, views, kv, scale, out, lse);
}

void attention_paged_ref(const float* q, int64_t N, int64_t n_heads, const KvView* views, const PagedKV& kv, float scale,
                         float* out) {
  check_paged(kv, n_heads);
  const int64_t D = kv.head_dim;
  const int64_t group = n_heads / kv.n_kv_heads;
  std::vector<float> kbuf(static_cast<size_t>(D)), vbuf(static_cast<size_t>(D));
  for (int64_t i = 0; i < N; ++i) {
    const KvView& view = views[i];
    const int64_t n = static_cast<int64_t>(view.n_prefix) + view.n_real;
    for (int64_t h = 0; h < n_heads; ++h) {
      std::vector<double> s(static_cast<size_t>(n));
      double mx = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = slot_row(view, kv, true, h / group, j, kbuf.data());
        double acc = 0.0;
        for (int64_t d = 0; d < D; ++d) acc += static_cast<double>(q[(i * n_heads + h) * D + d]) * kj[d];
        s[static_cast<size_t>(j)] = acc * scale;
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      double sum = 0.0;
      for (auto& v : s) sum += (v = std::exp(v - mx));
      std::vector<double> acc(static_cast<size_t>(D), 0.0);
      for (int64_t j = 0; j < n; ++j) {
        const float* vj = slot_row(view, kv, false, h / group, j, vbuf.data());
        for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += s[static_cast<size_t>(j)] / sum * vj[d];
      }
      for (int64_t d = 0; d < D; ++d) out[(i * n_heads + h) * D + d] = static_cast<float>(acc[static_cast<size_t>(d)]);
    }
  }
}

void kv_write(const PagedKV& kv, const int32_t* pages, int64_t slot, const float* k, const float* v) {
  const int64_t D = kv.head_dim;
  const int64_t page = pages[slot / kv.page_tokens], s = slot % kv.page_tokens;
  for (int64_t h = 0; h < kv.n_kv_heads; ++h) {
    const size_t off = kv.slot_offset(page, h, s);
    const float* kh = k + h * D;
    const float* vh = v + h * D;
    switch (kv.dtype) {
      case DType::F32:
        std::copy_n(kh, D, static_cast<float*>(kv.k) + off);
        std::copy_n(vh, D, static_cast<float*>(kv.v) + off);
        break;
      case DType::BF16:
        for (int64_t d = 0; d < D; ++d) {
          static_cast<uint16_t*>(kv.k)[off + d] = f32_to_bf16(kh[d]);
          static_cast<uint16_t*>(kv.v)[off + d] = f32_to_bf16(vh[d]);
        }
        break;
      case DType::F16:
        for (int64_t d = 0; d < D; ++d) {
          static_cast<uint16_t*>(kv.k)[off + d] = f32_to_f16(kh[d]);
          static_cast<uint16_t*>(kv.v)[off + d] = f32_to_f16(vh[d]);
        }
        break;
      default: throw Error(std::string("kv_write: KV dtype ") + dtype_name(kv.dtype) + " is not supported");
    }
  }
}

namespace {

// The contiguous cache [row][kv_head][slot][D] as a paged layer with one page of `capacity`
// slots per row; tokens go through the paged kernel in chunks of views built on the stack.
template <class Fn>
void over_contiguous(const int32_t* row, const int32_t* n_visible, int64_t N, const KVLayer& kv, Fn&& fn) {
  const PagedKV paged{kv.k, kv.v, DType::F32, kv.n_kv_heads, kv.capacity, kv.head_dim};
  constexpr int64_t kChunk = 256;
  KvView views[kChunk];
  for (int64_t i0 = 0; i0 < N; i0 += kChunk) {
    const int64_t n = std::min(kChunk, N - i0);
    for (int64_t i = 0; i < n; ++i) {
      views[i] = KvView{};
      views[i].n_real = n_visible[i0 + i];
      views[i].pages = row + i0 + i;
    }
    fn(i0, n, views, paged);
  }
}

}  // namespace

void attention(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
               const KVLayer& kv, float scale, float* out, float* scratch, float* lse) {
  (void)scratch;
  over_contiguous(row, n_visible, N, kv, [&](int64_t i0, int64_t n, const KvView* views, const PagedKV& paged) {
    attention_paged(q + i0 * n_heads * kv.head_dim, n, n_heads, views, paged, scale, out + i0 * n_heads * kv.head_dim,
                    lse ? lse + i0 * n_heads : nullptr);
  });
}

void attention_ref(const float* q, int64_t N, int64_t n_heads, const int32_t* row, const int32_t* n_visible,
                   const KVLayer& kv, float scale, float* out) {
  over_contiguous(row, n_visible, N, kv, [&](int64_t i0, int64_t n, const KvView* views, const PagedKV& paged) {
    attention_paged_ref(q + i0 * n_heads * kv.head_dim, n, n_heads, views, paged, scale, out + i0 * n_heads * kv.head_dim);
  });
}

}  // namespace parscale::kernels
