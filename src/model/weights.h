// Model weights as views into their storage: the memory-mapped safetensors file (big matrices,
// used in their stored dtype, never copied) or buffers owned by ModelWeights (fp32 copies of
// the small vectors, converted matrices for --dtype, parameters being trained).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/weight_view.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/tensor_specs.h"

namespace parscale {

struct LayerWeights {
  const float* input_norm = nullptr;  // [H]
  const float* post_norm = nullptr;   // [H]
  WeightView q_proj, k_proj, v_proj, o_proj;  // [QD,H], [KD,H], [KD,H], [H,QD]
  const float* q_bias = nullptr;  // [QD], null unless config.attention_bias
  const float* k_bias = nullptr;  // [KD], null unless config.attention_bias
  const float* v_bias = nullptr;  // [KD], null unless config.attention_bias
  const float* q_norm = nullptr;  // [D] per-head RMSNorm of q, null unless config.qk_norm
  const float* k_norm = nullptr;  // [D] per-head RMSNorm of k, null unless config.qk_norm
  WeightView gate_proj, up_proj, down_proj;  // [I,H], [I,H], [H,I]
  const float* prefix_k = nullptr;  // [P, KVH, T, D] fp32, P > 1 only
  const float* prefix_v = nullptr;  // [P, KVH, T, D]
};

struct ModelWeights {
  ModelConfig config;
  WeightView embed_tokens;  // [V, H]
  WeightView lm_head;       // [V, H] (same storage as embed_tokens when tied)
  const float* final_norm = nullptr;  // [H]
  WeightView aggregate0;    // [H, P*H] fp32, input feature index h*P + s
  const float* aggregate0_bias = nullptr;  // [H]
  WeightView aggregate2;    // [P, H] fp32
  const float* aggregate2_bias = nullptr;  // [P]
  std::vector<LayerWeights> layers;
  bool tied = false;

  // Names found in the files that the config does not imply (reported, then ignored).
  std::vector<std::string> unknown_tensors;

  // Keeps the mapped files and owned buffers alive.
  std::shared_ptr<TensorStore> store;
  std::vector<std::shared_ptr<void>> owned;
};

struct LoadOptions {
  // Convert every matrix to this dtype at load ("as stored" when unset). DType::I8 quantises to
  // 8 bits with per-block scales (q8_block values along K). Converted sources are released from
  // the resident set (MADV_DONTNEED on their mapped pages) as each matrix is done.
  bool convert_matrices = false;
  DType matrix_dtype = DType::BF16;
  int64_t q8_block = 32;
  // Optional adapter file(s) whose tensors replace/add ParScale parameters (prefixes, aggregate).
  std::vector<std::string> adapter_files;
};

// Memory for weight matrices made at run time (load-time conversion, quantisation, random weights):
// anonymous mappings reserved in large 2 MiB-aligned regions with transparent huge pages requested
// (fewer TLB misses when streaming), carved into 64-byte aligned pieces, so many matrices cost
// their bytes and not a huge page of slack each. Only touched pages are resident. Freed with the
// arena (hold it through a shared_ptr in ModelWeights::owned).
class WeightArena {
 public:
  WeightArena() = default;
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;
  ~WeightArena();
  // Uninitialised (zero until written) bytes, 64-byte aligned, valid while the arena lives.
  uint8_t* allocate(size_t bytes);

 private:
  struct Region { void* base; size_t len; };
  std::vector<Region> regions_;
  uint8_t* cur_ = nullptr;
  size_t left_ = 0;
};

// Quantises rows of fp32 values to I8 with one fp32 scale per `block` consecutive values of a row
// (symmetric: scale = max|v| / 127, q = round(v / scale)); cols % block == 0.
// q [rows, cols], scales [rows, cols / block].
void quantize_q8(const float* src, int64_t rows, int64_t cols, int64_t block, int8_t* q, float* scales);

// A matrix view converted to `target` (F32, BF16, F16, or I8 with `block`) in memory from `arena`,
// converted in row chunks (no full-size temporary).
WeightView convert_weight(const WeightView& src, DType target, int64_t block, WeightArena& arena);

// Loads DIR (config.json, weights, generation_config.json) and checks every tensor the
// config implies: present, shape, dtype. Throws parscale::Error with one clear line otherwise.
ModelWeights load_model(const std::string& dir, const LoadOptions& options = {});

// Builds weights from an already-open store and config (validation as above). `source` names it.
ModelWeights load_weights(const ModelConfig& config, std::shared_ptr<TensorStore> store,
                          const std::string& source, const LoadOptions& options = {});

// Owned fp32 parameters laid out by model_tensor_specs(config), for training and for models
// made in memory (init, random shapes). Views point into `values`.
struct ParameterSet {
  ModelConfig config;
  std::vector<TensorSpec> specs;
  std::vector<std::vector<float>> values;  // values[i].size() == specs[i].numel()
  const std::vector<float>* find(const std::string& name) const;
  std::vector<float>* find(const std::string& name);
};

// Weights viewing a ParameterSet (no copies; the set must outlive the returned weights).
ModelWeights weights_from_parameters(const ParameterSet& params);

// Copies every tensor of `weights` (converted to fp32) into a new ParameterSet.
ParameterSet parameters_from_weights(const ModelWeights& weights);

}  // namespace parscale
