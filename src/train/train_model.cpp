#include "train/train_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/backward.h"
#include "kernels/gemm_f32.h"
#include "kernels/kernels.h"
#include "model/qwen2.h"
#include "parscale/parscale.h"

namespace parscale::train {

namespace kb = parscale::kernels;

std::vector<bool> trainable_mask(const std::vector<TensorSpec>& specs, TrainMode mode) {
  std::vector<bool> m(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) m[i] = mode == TrainMode::All || specs[i].group == ParamGroup::ParScale;
  return m;
}

Gradients Gradients::for_mask(const std::vector<TensorSpec>& specs, const std::vector<bool>& mask) {
  Gradients g;
  g.values.resize(specs.size());
  for (size_t i = 0; i < specs.size(); ++i)
    if (mask[i]) g.values[i].assign(static_cast<size_t>(specs[i].numel()), 0.0f);
  return g;
}

void Gradients::zero() {
  for (auto& v : values) std::fill(v.begin(), v.end(), 0.0f);
}

namespace {

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

int64_t index_of(const ParameterSet& p, const std::string& name) {
  for (size_t i = 0; i < p.specs.size(); ++i)
    if (p.specs[i].name == name) return static_cast<int64_t>(i);
  return -1;
}

// Rows of logits computed at once in the lm_head: a [rows, V] buffer of about 32 MiB, 128 to 4096
// rows. Fewer chunks mean fewer passes of the lm_head gradient [V, H] through memory (each chunk
// adds into all of it). Depends on V only, so results do not depend on threads or ranks.
int64_t head_chunk_rows(int64_t V) { return std::clamp<int64_t>((int64_t{32} << 20) / (4 * std::max<int64_t>(V, 1)), 128, 4096); }

// kernels::matmul over row chunks that stay in cache: the forward kernel computes every y[m, n]
// independently of the other rows (parallel over W rows), so chunking gives bitwise the same
// result while the x rows of a chunk are reused from cache across all W rows.
// With several chunks, the chunks are spread over the threads in ONE parallel region (the
// kernel's own region then runs on the calling thread alone), which keeps barriers few.
void matmul_rows(const float* x, int64_t M, const WeightView& W, const float* bias, float* y) {
  if (kb::training_gemm_active()) return kb::matmul(x, M, W, bias, y);  // sgemm tiles all rows itself
  const int64_t chunk = std::clamp<int64_t>(32768 / std::max<int64_t>(W.cols, 1), 8, 256);
  const int64_t chunks = (M + chunk - 1) / chunk;
  if (chunks < 2 * num_threads()) {
    for (int64_t m0 = 0; m0 < M; m0 += chunk)
      kb::matmul(x + m0 * W.cols, std::min(chunk, M - m0), W, bias, y + m0 * W.rows);
    return;
  }
  parallel_for_each(chunks, grain_for(chunks), [&](int64_t c) {
    const int64_t m0 = c * chunk;
    kb::matmul(x + m0 * W.cols, std::min(chunk, M - m0), W, bias, y + m0 * W.rows);
  });
}

}  // namespace

TrainModel::TrainModel(const ParameterSet& params) : params_(params), c_(params.config), w_(weights_from_parameters(params)) {
  P_ = c_.streams();
  T_ = c_.prefix_tokens();
  H_ = c_.hidden_size;
  QD_ = c_.q_dim();
  KD_ = c_.kv_dim();
  D_ = c_.head_dim;
  I_ = c_.intermediate_size;
  V_ = c_.vocab_size;
  NH_ = c_.num_attention_heads;
  KVH_ = c_.num_key_value_heads;
  NL_ = c_.num_hidden_layers;
  embed_idx_ = index_of(params, "model.embed_tokens.weight");
  final_norm_idx_ = index_of(params, "model.norm.weight");
  lm_idx_ = c_.tie_word_embeddings ? embed_idx_ : index_of(params, "lm_head.weight");
  agg0_w_ = index_of(params, "model.aggregate_layer.0.weight");
  agg0_b_ = index_of(params, "model.aggregate_layer.0.bias");
  agg2_w_ = index_of(params, "model.aggregate_layer.2.weight");
  agg2_b_ = index_of(params, "model.aggregate_layer.2.bias");
  for (int64_t l = 0; l < NL_; ++l) {
    auto n = [&](const char* s) { return index_of(params, layer_tensor_name(l, s)); };
    layer_idx_.push_back({n("input_layernorm.weight"), n("self_attn.q_proj.weight"), n("self_attn.q_proj.bias"),
                          n("self_attn.k_proj.weight"), n("self_attn.k_proj.bias"), n("self_attn.v_proj.weight"),
                          n("self_attn.v_proj.bias"), n("self_attn.o_proj.weight"), n("self_attn.prefix_k"),
                          n("self_attn.prefix_v"), n("post_attention_layernorm.weight"), n("mlp.gate_proj.weight"),
                          n("mlp.up_proj.weight"), n("mlp.down_proj.weight"), n("self_attn.q_norm.weight"),
                          n("self_attn.k_norm.weight")});
  }
  scale_ = 1.0f / std::sqrt(static_cast<float>(D_));
}

void TrainModel::setup(int64_t B, int64_t L, bool backward) {
  check(B > 0 && L > 0, "train: batch and sequence length must be > 0");
  if (L > c_.max_position_embeddings)
    throw Error("train: sequence length " + std::to_string(L) + " exceeds max_position_embeddings = " +
                std::to_string(c_.max_position_embeddings));
  B_ = B;
  L_ = L;
  M_ = B * L;
  N_ = P_ * M_;
  R_ = P_ * B;
  C_ = T_ + L;
  // The rows as the inference block sees them: token i is in cache row r = i / L (stream r / B)
  // at position i % L; each row's real tokens in its own pages of pool_, its prefix read in
  // place from the adapter.
  for (auto& t : tables_)
    for (int32_t page : t) pool_.release(page);
  const int64_t per_row = (L + kPageTokens - 1) / kPageTokens;
  if (pool_.pages_total() < R_ * per_row) pool_ = KvPool(c_, DType::F32, kPageTokens, R_ * per_row);
  tables_.assign(static_cast<size_t>(R_), {});
  for (auto& t : tables_)
    for (int64_t j = 0; j < per_row; ++j) t.push_back(pool_.allocate());
  pos_.resize(static_cast<size_t>(N_));
  n_visible_.resize(static_cast<size_t>(N_));
  row_pages_.resize(static_cast<size_t>(N_));
  row_prefix_.resize(static_cast<size_t>(N_));
  for (int64_t i = 0; i < N_; ++i) {
    const int64_t r = i / L;
    pos_[static_cast<size_t>(i)] = static_cast<int32_t>(i % L);
    n_visible_[static_cast<size_t>(i)] = static_cast<int32_t>(T_ + i % L + 1);
    row_pages_[static_cast<size_t>(i)] = tables_[static_cast<size_t>(r)].data();
    row_prefix_[static_cast<size_t>(i)] = stream_prefix(w_.adapter.get(), KVH_, D_, r / B);
  }
  rows_ = TokenRows{N_, pos_.data(), row_pages_.data(), row_prefix_.data()};
  decoder_prepare(w_.bb(), rows_, fws_, /*taped=*/true);  // checks positions, RoPE tables for the rows
  row_begin_.resize(static_cast<size_t>(R_ + 1));
  for (int64_t r = 0; r <= R_; ++r) row_begin_[static_cast<size_t>(r)] = r * L;

  xs_.resize(static_cast<size_t>(NL_ + 1));
  for (auto& x : xs_) grow(x, N_ * H_);
  grow(hn_, N_ * H_);
  grow(agg_, M_ * H_);
  const int64_t cache = R_ * KVH_ * C_ * D_;
  for (auto* b : {&tmp_, &dxn_}) grow(*b, N_ * H_);
  for (auto* b : {&dattn_, &dq_}) grow(*b, N_ * QD_);
  for (auto* b : {&dk_, &dv_}) grow(*b, N_ * KD_);
  for (auto* b : {&kbuf_, &vbuf_, &dkbuf_, &dvbuf_}) grow(*b, cache);
  grow(dact_, N_ * I_);
  // Tapes: every layer's when they fit the budget (a backward then needs no recompute).
  const int64_t tape_floats =
      N_ * (3 * H_ + 2 * QD_ + 2 * KD_ + NH_ + 3 * I_ + (c_.qk_norm ? QD_ + KD_ : 0));
  tape_all_ = backward && NL_ * tape_floats * static_cast<int64_t>(sizeof(float)) <= activation_budget_;
  if (acts_.size() < static_cast<size_t>(tape_all_ ? NL_ : 1)) acts_.resize(static_cast<size_t>(tape_all_ ? NL_ : 1));
  for (int64_t l = 0; l < (tape_all_ ? NL_ : 1); ++l) {
    LayerActs& a = acts_[static_cast<size_t>(l)];
    for (auto* b : {&a.xn1, &a.hmid, &a.xn2}) grow(*b, N_ * H_);
    for (auto* b : {&a.q, &a.attn}) grow(*b, N_ * QD_);
    for (auto* b : {&a.k, &a.v}) grow(*b, N_ * KD_);
    if (c_.qk_norm) {
      grow(a.qpre, N_ * QD_);
      grow(a.kpre, N_ * KD_);
    }
    for (auto* b : {&a.gate, &a.up, &a.act}) grow(*b, N_ * I_);
    grow(a.lse, N_ * NH_);
  }
  grow(scratch_, static_cast<int64_t>(num_threads()) * std::max<int64_t>(2 * C_, kb::attention_backward_scratch(C_, D_)));
  grow(rstd_, c_.qk_norm ? N_ * NH_ : N_);
}

// out = the layer applied to x: the inference block's one layer function (model/qwen2.cpp) over
// this batch's rows, recording into the tape what layer_backward needs.
void TrainModel::layer_forward(int64_t l, const float* x, float* out) {
  std::copy_n(x, N_ * H_, out);
  LayerActs& a = acts(l);
  LayerTape tape;
  tape.xn1 = a.xn1.data();
  tape.qpre = c_.qk_norm ? a.qpre.data() : nullptr;
  tape.kpre = c_.qk_norm ? a.kpre.data() : nullptr;
  tape.q = a.q.data();
  tape.k = a.k.data();
  tape.v = a.v.data();
  if (cap_k_) grow(kraw_, N_ * KD_);
  tape.k_unroped = cap_k_ ? kraw_.data() : nullptr;
  tape.lse = a.lse.data();
  tape.attn = a.attn.data();
  tape.hmid = a.hmid.data();
  tape.xn2 = a.xn2.data();
  tape.gate = a.gate.data();
  tape.up = a.up.data();
  tape.act = a.act.data();
  decoder_layer_forward(w_.bb(), l, pool_, rows_, out, fws_, &tape);
  if (cap_k_) {
    // capture_kv: stream 0 only (rows of stream 0 are tokens 0..L-1 when B = 1).
    auto& ck = (*cap_k_)[static_cast<size_t>(l)];
    auto& cv = (*cap_v_)[static_cast<size_t>(l)];
    ck.assign(static_cast<size_t>(KVH_ * L_ * D_), 0.0f);
    cv.assign(ck.size(), 0.0f);
    for (int64_t t = 0; t < L_; ++t)
      for (int64_t h = 0; h < KVH_; ++h)
        for (int64_t d = 0; d < D_; ++d) {
          ck[static_cast<size_t>((h * L_ + t) * D_ + d)] = kraw_[static_cast<size_t>(t * KD_ + h * D_ + d)];
          cv[static_cast<size_t>((h * L_ + t) * D_ + d)] = a.v[static_cast<size_t>(t * KD_ + h * D_ + d)];
        }
  }
}

// The backward's contiguous cache [R][KVH][C][D] of layer l: each row's stream prefix, then its
// real tokens' K (after RoPE) and V from the tape (the values the forward wrote to its pages).
void TrainModel::gather_kv(int64_t l) {
  const LayerActs& a = acts(l);
  kb::KVLayer kv{kbuf_.data(), vbuf_.data(), KVH_, C_, D_};
  for (int64_t r = 0; r < R_; ++r) {
    const int64_t s = r / B_;
    for (int64_t h = 0; h < KVH_; ++h) {
      if (T_ > 0) {
        const int64_t off = ((s * KVH_ + h) * T_) * D_;
        std::copy_n(w_.adapter->prefix_k[static_cast<size_t>(l)] + off, T_ * D_, kv.k_at(r, h, 0));
        std::copy_n(w_.adapter->prefix_v[static_cast<size_t>(l)] + off, T_ * D_, kv.v_at(r, h, 0));
      }
      for (int64_t t = 0; t < L_; ++t) {
        const int64_t i = r * L_ + t;
        std::copy_n(a.k.data() + i * KD_ + h * D_, D_, kv.k_at(r, h, T_ + t));
        std::copy_n(a.v.data() + i * KD_ + h * D_, D_, kv.v_at(r, h, T_ + t));
      }
    }
  }
}

void TrainModel::layer_backward(int64_t l, const float* x, float* dx, Gradients& g, bool need_dx) {
  const BackboneLayer& L = w_.bb().layers[static_cast<size_t>(l)];
  const LayerIndex& ix = layer_idx_[static_cast<size_t>(l)];
  const float eps = static_cast<float>(c_.rms_norm_eps);
  const int64_t N = N_;
  if (!tape_all_) layer_forward(l, x, tmp_.data());  // recompute the tape (output unused)
  LayerActs& a = acts(l);
  // The tape's gate/up become dgate/dup below (each layer's tape is used once).
  float *xn1 = a.xn1.data(), *q = a.q.data(), *qpre = a.qpre.data(), *kpre = a.kpre.data();
  float *lse = a.lse.data(), *attn = a.attn.data(), *hmid = a.hmid.data(), *xn2 = a.xn2.data();
  float *gate = a.gate.data(), *up = a.up.data(), *act = a.act.data();

  // MLP: out = hmid + down(act), act = silu(gate)·up, gate/up = W·xn2, xn2 = rmsnorm(hmid).
  kb::matmul_backward_input(dx, N, L.down_proj.f32(), H_, I_, dact_.data(), false);
  if (float* gd = g.get(ix.down)) kb::matmul_backward_weight(dx, act, N, H_, I_, gd, static_cast<float*>(nullptr));
  kb::swiglu_backward(gate, up, dact_.data(), gate, up, N * I_);  // gate/up := dgate/dup
  kb::matmul_backward_input(gate, N, L.gate_proj.f32(), I_, H_, dxn_.data(), false);
  kb::matmul_backward_input(up, N, L.up_proj.f32(), I_, H_, dxn_.data(), true);
  if (float* gg = g.get(ix.gate)) kb::matmul_backward_weight(gate, xn2, N, I_, H_, gg, static_cast<float*>(nullptr));
  if (float* gu = g.get(ix.up)) kb::matmul_backward_weight(up, xn2, N, I_, H_, gu, static_cast<float*>(nullptr));
  kb::rmsnorm_backward(hmid, L.post_norm, dxn_.data(), dx, g.get(ix.post_norm), N, H_, eps, true, rstd_.data());
  // dx is now ∂/∂hmid.

  // Attention: hmid = x + o_proj(attn).
  kb::matmul_backward_input(dx, N, L.o_proj.f32(), H_, QD_, dattn_.data(), false);
  if (float* go = g.get(ix.o_w)) kb::matmul_backward_weight(dx, attn, N, H_, QD_, go, static_cast<float*>(nullptr));
  const int64_t cache = R_ * KVH_ * C_ * D_;
  gather_kv(l);
  std::fill_n(dkbuf_.data(), cache, 0.0f);
  std::fill_n(dvbuf_.data(), cache, 0.0f);
  kb::attention_backward(q, kbuf_.data(), vbuf_.data(), attn, lse, dattn_.data(), R_,
                         row_begin_.data(), n_visible_.data(), NH_, KVH_, C_, D_, scale_, dq_.data(), dkbuf_.data(),
                         dvbuf_.data(), scratch_.data());
  // Prefix gradients: Σ over the B rows of each stream, in row order.
  float* gpk = g.get(ix.prefix_k);
  float* gpv = g.get(ix.prefix_v);
  if (T_ > 0 && (gpk || gpv)) {
    for (int64_t s = 0; s < P_; ++s)
      for (int64_t b = 0; b < B_; ++b) {
        const int64_t r = s * B_ + b;
        for (int64_t h = 0; h < KVH_; ++h) {
          const float* sk = dkbuf_.data() + ((r * KVH_ + h) * C_) * D_;
          const float* sv = dvbuf_.data() + ((r * KVH_ + h) * C_) * D_;
          const int64_t off = ((s * KVH_ + h) * T_) * D_;
          for (int64_t e = 0; e < T_ * D_; ++e) {
            if (gpk) gpk[off + e] += sk[e];
            if (gpv) gpv[off + e] += sv[e];
          }
        }
      }
  }
  const bool need_qkv_grad = need_dx || g.get(ix.q_w) || g.get(ix.k_w) || g.get(ix.v_w) || g.get(ix.q_b) ||
                             g.get(ix.k_b) || g.get(ix.v_b) || g.get(ix.input_norm) || g.get(ix.q_norm) ||
                             g.get(ix.k_norm);
  if (!need_qkv_grad) return;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t r = i / L_, t = i % L_;
    for (int64_t h = 0; h < KVH_; ++h) {
      std::copy_n(dkbuf_.data() + ((r * KVH_ + h) * C_ + T_ + t) * D_, D_, dk_.data() + i * KD_ + h * D_);
      std::copy_n(dvbuf_.data() + ((r * KVH_ + h) * C_ + T_ + t) * D_, D_, dv_.data() + i * KD_ + h * D_);
    }
  }
  kb::rope_backward(dq_.data(), N, NH_, D_, fws_.cos_t.data(), fws_.sin_t.data());
  kb::rope_backward(dk_.data(), N, KVH_, D_, fws_.cos_t.data(), fws_.sin_t.data());
  if (c_.qk_norm) {  // dq/dk := gradients of the projections' outputs (before the per-head norm)
    kb::rmsnorm_backward(qpre, L.q_norm, dq_.data(), dq_.data(), g.get(ix.q_norm), N * NH_, D_, eps, false, rstd_.data());
    kb::rmsnorm_backward(kpre, L.k_norm, dk_.data(), dk_.data(), g.get(ix.k_norm), N * KVH_, D_, eps, false, rstd_.data());
  }
  if (float* gw = g.get(ix.q_w)) kb::matmul_backward_weight(dq_.data(), xn1, N, QD_, H_, gw, g.get(ix.q_b));
  if (float* gw = g.get(ix.k_w)) kb::matmul_backward_weight(dk_.data(), xn1, N, KD_, H_, gw, g.get(ix.k_b));
  if (float* gw = g.get(ix.v_w)) kb::matmul_backward_weight(dv_.data(), xn1, N, KD_, H_, gw, g.get(ix.v_b));
  if (need_dx || g.get(ix.input_norm)) {
    kb::matmul_backward_input(dq_.data(), N, L.q_proj.f32(), QD_, H_, dxn_.data(), false);
    kb::matmul_backward_input(dk_.data(), N, L.k_proj.f32(), KD_, H_, dxn_.data(), true);
    kb::matmul_backward_input(dv_.data(), N, L.v_proj.f32(), KD_, H_, dxn_.data(), true);
    kb::rmsnorm_backward(x, L.input_norm, dxn_.data(), dx, g.get(ix.input_norm), N, H_, eps, true, rstd_.data());
  }
}

void TrainModel::run_forward(const int32_t* ids) {
  float* x0 = xs_[0].data();
  embed_tokens(w_.bb(), ids, M_, x0);
  for (int64_t s = 1; s < P_; ++s) std::copy_n(x0, M_ * H_, x0 + s * M_ * H_);
  for (int64_t l = 0; l < NL_; ++l) layer_forward(l, xs_[static_cast<size_t>(l)].data(), xs_[static_cast<size_t>(l + 1)].data());
  kb::rmsnorm(xs_[static_cast<size_t>(NL_)].data(), w_.bb().final_norm, hn_.data(), N_, H_, static_cast<float>(c_.rms_norm_eps));
  agg_ws_.record = true;
  aggregate_streams(w_.adapter.get(), H_, hn_.data(), M_, agg_.data(), agg_ws_);
}

void TrainModel::aggregate_backward(const float* dagg, float* dhn, Gradients& g) {
  const int64_t M = M_, P = P_, H = H_;
  if (P == 1) {
    std::copy_n(dagg, M * H, dhn);
    return;
  }
  // The forward's intermediates (aggregate_streams recorded them): interleaved concat [M, P·H],
  // z = first linear layer [M, H], a = silu(z), p = softmax [M, P], w = smoothed p.
  const std::vector<float>& concat = agg_ws_.concat;
  const std::vector<float>& z = agg_ws_.pre_silu;
  const std::vector<float>& a = agg_ws_.hidden;
  const std::vector<float>& p = agg_ws_.probs;
  const std::vector<float>& w = agg_ws_.logits;
  const float eps = static_cast<float>(c_.parscale_attn_smooth);
  std::vector<float>& dw = agg_dw_;
  grow(dw, M * P);
  // out[m] = Σ_s w[m,s]·hn[s][m]
  for (int64_t m = 0; m < M; ++m)
    for (int64_t s = 0; s < P; ++s) {
      const float* h = hn_.data() + (s * M + m) * H;
      const float* d = dagg + m * H;
      float* dh = dhn + (s * M + m) * H;
      const float ws = w[static_cast<size_t>(m * P + s)];
      float acc = 0.0f;
      for (int64_t k = 0; k < H; ++k) {
        acc += d[k] * h[k];
        dh[k] = ws * d[k];
      }
      dw[static_cast<size_t>(m * P + s)] = acc;
    }
  std::vector<float>&dlog = agg_dlog_, &da = agg_da_, &dconcat = agg_dconcat_;
  grow(dlog, M * P);
  grow(da, M * H);
  grow(dconcat, M * P * H);
  kb::smoothed_softmax_backward(p.data(), dw.data(), dlog.data(), M, P, eps);
  if (float* g2 = g.get(agg2_w_)) kb::matmul_backward_weight(dlog.data(), a.data(), M, P, H, g2, g.get(agg2_b_));
  kb::matmul_backward_input(dlog.data(), M, w_.adapter->aggregate2.f32(), P, H, da.data(), false);
  kb::silu_backward(z.data(), da.data(), da.data(), M * H);
  if (float* g0 = g.get(agg0_w_)) kb::matmul_backward_weight(da.data(), concat.data(), M, H, P * H, g0, g.get(agg0_b_));
  kb::matmul_backward_input(da.data(), M, w_.adapter->aggregate0.f32(), H, P * H, dconcat.data(), false);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t s = 0; s < P; ++s)
      for (int64_t k = 0; k < H; ++k) dhn[(s * M + m) * H + k] += dconcat[static_cast<size_t>(m * P * H + k * P + s)];
}

double TrainModel::forward_backward(const int32_t* ids, int64_t B, int64_t L, float loss_scale, Gradients* grads) {
  const kb::TrainingGemmScope sgemm;  // fp32 products on oneDNN's sgemm where built with it
  setup(B, L, /*backward=*/grads != nullptr);
  run_forward(ids);
  // Rows with a target: (b, t < L−1), gathered contiguously.
  const int64_t MT = B * (L - 1);
  // Buffers are members, grown once (no allocation per step once the shapes repeat).
  std::vector<float>& A = head_in_;
  std::vector<float>& dA = dhead_in_;
  std::vector<float>& logits = logits_;
  grow(A, std::max<int64_t>(MT, 1) * H_);
  targets_.resize(static_cast<size_t>(std::max<int64_t>(MT, 1)));
  for (int64_t b = 0, j = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < L; ++t, ++j) {
      std::copy_n(agg_.data() + (b * L + t) * H_, H_, A.data() + j * H_);
      targets_[static_cast<size_t>(j)] = ids[b * L + t + 1];
    }
  float* glm = grads ? grads->get(lm_idx_) : nullptr;
  if (grads) {
    grow(dA, std::max<int64_t>(MT, 1) * H_);
    std::fill_n(dA.begin(), std::max<int64_t>(MT, 1) * H_, 0.0f);
  }
  const int64_t head_chunk = head_chunk_rows(V_);
  grow(logits, head_chunk * V_);
  grow(row_loss_, head_chunk);
  double loss = 0.0;
  for (int64_t r0 = 0; r0 < MT; r0 += head_chunk) {
    const int64_t rc = std::min(head_chunk, MT - r0);
    matmul_rows(A.data() + r0 * H_, rc, w_.bb().lm_head, nullptr, logits.data());
    if (!grads) {
      loss += kb::cross_entropy_loss(logits.data(), targets_.data() + r0, rc, V_, row_loss_.data());
      continue;
    }
    loss += kb::cross_entropy_forward_backward(logits.data(), targets_.data() + r0, rc, V_, loss_scale, row_loss_.data());
    kb::matmul_backward_input(logits.data(), rc, w_.bb().lm_head.f32(), V_, H_, dA.data() + r0 * H_, false);
    if (glm) kb::matmul_backward_weight(logits.data(), A.data() + r0 * H_, rc, V_, H_, glm, static_cast<float*>(nullptr));
  }
  if (!grads) return loss;

  Gradients& g = *grads;
  std::vector<float>& dagg = dagg_;
  grow(dagg, M_ * H_);
  std::fill_n(dagg.begin(), M_ * H_, 0.0f);  // rows without a target keep a zero gradient
  for (int64_t b = 0, j = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < L; ++t, ++j) std::copy_n(dA.data() + j * H_, H_, dagg.data() + (b * L + t) * H_);
  std::vector<float>& dx = dx_;
  std::vector<float>& dhn = dhn_;
  grow(dx, N_ * H_);
  grow(dhn, N_ * H_);
  aggregate_backward(dagg.data(), dhn.data(), g);
  // The final RMSNorm's input is xs_[NL].
  kb::rmsnorm_backward(xs_[static_cast<size_t>(NL_)].data(), w_.bb().final_norm, dhn.data(), dx.data(), g.get(final_norm_idx_), N_,
                       H_, static_cast<float>(c_.rms_norm_eps), false, rstd_.data());
  float* gemb = g.get(embed_idx_);
  for (int64_t l = NL_ - 1; l >= 0; --l)
    layer_backward(l, xs_[static_cast<size_t>(l)].data(), dx.data(), g, l > 0 || gemb != nullptr);
  if (gemb) {
    // Embedding rows: Σ over streams and tokens, in token order (columns in parallel).
    const int64_t col_blocks = (H_ + 15) / 16;
    parallel_for_each(col_blocks, grain_if(M_ * H_ > 65536, col_blocks), [&](int64_t cb) {
      const int64_t k0 = cb * 16, k1 = std::min(H_, k0 + 16);
      for (int64_t i = 0; i < M_; ++i) {
        float* row = gemb + static_cast<int64_t>(ids[i]) * H_;
        for (int64_t s = 0; s < P_; ++s)
          for (int64_t k = k0; k < k1; ++k) row[k] += dx[static_cast<size_t>((s * M_ + i) * H_ + k)];
      }
    });
  }
  return loss;
}

void TrainModel::forward_logits(const int32_t* ids, int64_t B, int64_t L, std::vector<float>& logits) {
  const kb::TrainingGemmScope sgemm;  // the same products as forward_backward's
  setup(B, L);
  run_forward(ids);
  logits.resize(static_cast<size_t>(M_ * V_));
  matmul_rows(agg_.data(), M_, w_.bb().lm_head, nullptr, logits.data());
}

void TrainModel::capture_kv(const int32_t* ids, int64_t L, std::vector<std::vector<float>>& k,
                            std::vector<std::vector<float>>& v) {
  k.assign(static_cast<size_t>(NL_), {});
  v.assign(static_cast<size_t>(NL_), {});
  cap_k_ = &k;
  cap_v_ = &v;
  try {
    setup(1, L);
    float* x0 = xs_[0].data();
    embed_tokens(w_.bb(), ids, L, x0);
    for (int64_t s = 1; s < P_; ++s) std::copy_n(x0, L * H_, x0 + s * L * H_);
    for (int64_t l = 0; l < NL_; ++l) layer_forward(l, xs_[static_cast<size_t>(l)].data(), xs_[static_cast<size_t>(l + 1)].data());
  } catch (...) {
    cap_k_ = cap_v_ = nullptr;
    throw;
  }
  cap_k_ = cap_v_ = nullptr;
}

}  // namespace parscale::train
