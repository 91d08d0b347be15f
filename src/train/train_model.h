// The training forward and backward pass of a ParScale/Qwen2 model over a batch of B sequences of
// L tokens. The forward runs the inference block's layer function (same kernels, same order as
// model/qwen2.cpp and parscale/parscale.cpp, so the logits equal a Session's bit for bit) and keeps
// each layer's input [P·B·L, H]. When every layer's tape (the intermediates the backward needs)
// fits the activation memory budget, the forward keeps them all and the backward uses them;
// otherwise it keeps one and the backward recomputes one layer at a time (checkpointing: a quarter
// more matmul work). Both give bitwise the same gradients. The backward uses kernels/backward.h.
//
// Token layout: stream-major, token i = s·M + b·L + t (M = B·L) lives in attention row
// r = s·B + b = i / L at position t; the row's slots are [T prefix slots][L real tokens].
// Loss: Σ over the B·(L−1) next-token predictions (position t predicts token t+1) of the
// cross-entropy; gradients are of loss_scale · that sum.
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "model/kv_pool.h"
#include "model/qwen2.h"
#include "model/weights.h"
#include "parscale/parscale.h"

namespace parscale::train {

// What is trained: everything, or only the ParScale parameters (prefixes + aggregation) of a
// frozen backbone.
enum class TrainMode { All, ParScale };

// True for the tensors of `specs` that `mode` trains.
std::vector<bool> trainable_mask(const std::vector<TensorSpec>& specs, TrainMode mode);

// Gradients aligned with ParameterSet::specs; an empty entry means "not trained".
struct Gradients {
  std::vector<std::vector<float>> values;
  static Gradients for_mask(const std::vector<TensorSpec>& specs, const std::vector<bool>& mask);
  void zero();
  float* get(int64_t index) { return index >= 0 && !values[static_cast<size_t>(index)].empty() ? values[static_cast<size_t>(index)].data() : nullptr; }
};

class TrainModel {
 public:
  // `params` must outlive the model (weights are views into it; updates are seen directly).
  explicit TrainModel(const ParameterSet& params);
  // A temporary would dangle as soon as the constructor returns: refused at compile time.
  explicit TrainModel(ParameterSet&&) = delete;
  explicit TrainModel(const ParameterSet&&) = delete;

  // ids [B, L] row-major. Returns the summed cross-entropy of the B·(L−1) predictions. When
  // grads != nullptr, adds loss_scale · ∂loss/∂θ into every trained (non-empty) entry.
  double forward_backward(const int32_t* ids, int64_t B, int64_t L, float loss_scale, Gradients* grads);

  // Logits of every position, [B·L, V] (ordered by sequence then position).
  void forward_logits(const int32_t* ids, int64_t B, int64_t L, std::vector<float>& logits);

  // Runs stream 0 over ids [L] (B = 1) and returns each layer's pre-RoPE K (after k_norm when
  // qk_norm, i.e. exactly what a prefix slot holds) and V as
  // [n_kv_heads, L, head_dim] (what `parscale init` turns into prefixes).
  void capture_kv(const int32_t* ids, int64_t L, std::vector<std::vector<float>>& k, std::vector<std::vector<float>>& v);

  const ModelConfig& config() const { return c_; }

  // Bytes the tapes of all layers may take before the backward recomputes instead (default 1 GiB).
  void set_activation_memory(int64_t bytes) { activation_budget_ = bytes; }
  // Whether the last forward_backward kept every layer's tape (no recompute).
  bool kept_all_tapes() const { return tape_all_; }

 private:
  struct LayerIndex {
    int64_t input_norm, q_w, q_b, k_w, k_b, v_w, v_b, o_w, prefix_k, prefix_v, post_norm, gate, up, down;
    int64_t q_norm, k_norm;  // -1 unless qk_norm (likewise q_b/k_b/v_b without attention_bias)
  };
  // One layer's forward intermediates (LayerTape's buffers), N rows each.
  struct LayerActs {
    std::vector<float> xn1, qpre, kpre, q, k, v, lse, attn, hmid, xn2, gate, up, act;
  };
  void setup(int64_t B, int64_t L, bool backward = false);
  LayerActs& acts(int64_t l) { return acts_[tape_all_ ? static_cast<size_t>(l) : 0]; }
  void layer_forward(int64_t l, const float* x, float* out);
  void layer_backward(int64_t l, const float* x, float* dx, Gradients& g, bool need_dx);
  void gather_kv(int64_t l);
  void run_forward(const int32_t* ids);  // fills xs_ (layer inputs) and hn_ (final-normed streams)
  void aggregate_backward(const float* dagg, float* dhn, Gradients& g);

  const ParameterSet& params_;
  ModelConfig c_;
  ModelWeights w_;
  int64_t P_, T_, H_, QD_, KD_, D_, I_, V_, NH_, KVH_, NL_;
  int64_t embed_idx_, final_norm_idx_, lm_idx_, agg0_w_, agg0_b_, agg2_w_, agg2_b_;
  std::vector<LayerIndex> layer_idx_;

  // Batch geometry of the current call.
  int64_t B_ = 0, L_ = 0, N_ = 0, M_ = 0, R_ = 0, C_ = 0;
  // The rows of the inference block: positions, block tables (pages of pool_, one table per
  // cache row), stream prefixes; fws_ holds their RoPE tables and the block's scratch.
  static constexpr int64_t kPageTokens = 64;
  KvPool pool_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<int32_t> pos_, n_visible_, targets_;
  std::vector<const int32_t*> row_pages_;
  std::vector<RowPrefix> row_prefix_;
  TokenRows rows_;
  ForwardWorkspace fws_;
  AggregateWorkspace agg_ws_;  // the aggregation's intermediates of the last forward
  std::vector<int64_t> row_begin_;
  float scale_ = 1.0f;

  // Layer inputs xs_[l] (l = 0..NL), each [N, H]; final-normed streams hn_ [N, H]; aggregate [M, H].
  std::vector<std::vector<float>> xs_;
  std::vector<float> hn_, agg_;
  // The layers' tapes: one per layer when tape_all_, else one reused (recomputed by the backward).
  // qpre/kpre: q and k before the per-head norm (qk_norm only).
  std::vector<LayerActs> acts_;
  bool tape_all_ = false;
  int64_t activation_budget_ = int64_t{1} << 30;
  // kbuf_/vbuf_: the backward's contiguous cache of one layer [R][KVH][C][D] (gather_kv).
  std::vector<float> kraw_, kbuf_, vbuf_, tmp_, scratch_;
  // Gradient scratch.
  std::vector<float> dxn_, dattn_, dq_, dk_, dv_, dkbuf_, dvbuf_, dact_, rstd_;
  std::vector<double> row_loss_;
  // forward_backward's and aggregate_backward's per-step buffers (grown, never shrunk).
  std::vector<float> head_in_, dhead_in_, logits_, dagg_, dx_, dhn_, agg_dw_, agg_dlog_, agg_da_, agg_dconcat_;
  // Capture of pre-RoPE K/V (capture_kv).
  std::vector<std::vector<float>>* cap_k_ = nullptr;
  std::vector<std::vector<float>>* cap_v_ = nullptr;
};

}  // namespace parscale::train
