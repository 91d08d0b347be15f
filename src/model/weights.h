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
  const float* q_bias = nullptr;  // [QD]
  const float* k_bias = nullptr;  // [KD]
  const float* v_bias = nullptr;  // [KD]
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
  // Convert every matrix to this dtype at load (F32 keeps stored dtype; "as stored" when unset).
  bool convert_matrices = false;
  DType matrix_dtype = DType::BF16;
  // Optional adapter file(s) whose tensors replace/add ParScale parameters (prefixes, aggregate).
  std::vector<std::string> adapter_files;
};

// Memory for weight matrices made at run time (load-time conversion, random weights): anonymous,
// 2 MiB aligned, transparent huge pages requested (fewer TLB misses when streaming the weights),
// contents uninitialised (zero pages until written), returned to the OS when the last owner goes.
std::shared_ptr<uint8_t> allocate_weight_buffer(size_t bytes);

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
