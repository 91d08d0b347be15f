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
#include "model/backbone.h"
#include "model/config.h"
#include "parscale/adapter.h"
#include "model/tensor_specs.h"

namespace parscale {

// A model as loaded from a folder: the shared backbone and the adapter it runs with (the
// folder's own ParScale parameters, or those of --adapter files; null when P = 1). `config` is
// the backbone's config with the adapter's P, T and epsilon.
struct ModelWeights {
  ModelConfig config;
  std::shared_ptr<const Backbone> backbone;
  std::shared_ptr<const Adapter> adapter;
  // Names found in the files that the config does not imply (reported, then ignored).
  std::vector<std::string> unknown_tensors;
  const Backbone& bb() const { return *backbone; }
};

// Where one tensor of the enumeration lives: a matrix view (embedding, projections, lm_head,
// aggregation matrices) or an fp32 vector (norms, biases, prefixes). Exactly one is set.
struct TensorSlot {
  WeightView* matrix = nullptr;
  const float** vector = nullptr;
};
// The field of `backbone` / `adapter` that holds `spec` (adapter may be null for backbone
// tensors; throws for a ParScale tensor without an adapter). Sizes the per-layer vectors.
TensorSlot tensor_slot(Backbone& backbone, Adapter* adapter, const TensorSpec& spec);

struct LoadOptions {
  // Convert every matrix to this dtype at load ("as stored" when unset). DType::I8 quantises to
  // 8 bits with per-block scales (q8_block values along K). Converted sources are released from
  // the resident set (MADV_DONTNEED on their mapped pages) as each matrix is done.
  bool convert_matrices = false;
  DType matrix_dtype = DType::BF16;
  int64_t q8_block = 32;
  // Optional adapter file(s) whose tensors replace/add ParScale parameters (prefixes, aggregate).
  std::vector<std::string> adapter_files;
  // Pack the BF16 matrices for the fast mode when it applies (pack_fast_weights). Loaders that
  // only read the matrices (convert, training) turn it off: it would cost time and memory.
  bool pack_fast = true;
  // For processes that only run the model: matrices packed for the fast mode drop their plain
  // copy, so the weights are resident once. Leave false to read the plain matrices later.
  bool release_packed_sources = false;
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

// For the fast compute mode: every BF16 matrix of the decoder layers and the lm_head whose
// matmuls run on the fast kernels now gets a packed copy for oneDNN (kernels/packed.h), kept in
// b.owned (a tied embedding shares the lm_head's: its lookups read packed rows once the plain copy
// is gone). With release_sources, each packed matrix's plain pages leave the resident set
// (MADV_DONTNEED) and its view's `data` becomes null: only the fast mode can run it from then on
// (the other kernels throw parscale::Error on it). Does nothing where packing is unsupported or
// not in use. Returns the bytes packed.
int64_t pack_fast_weights(Backbone& b, bool release_sources);
// Bytes of the packed copies pack_fast_weights made for b.
int64_t packed_weight_bytes(const Backbone& b);

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

// A ParScale adapter from safetensors file(s) (tensors + metadata parscale_n, parscale_n_tokens,
// parscale_attn_smooth) for a backbone of `backbone_config`; checks every tensor's shape.
// `unknown` (optional) receives tensors the adapter files hold beyond those it needs.
std::shared_ptr<const Adapter> load_adapter(const std::vector<std::string>& files, const ModelConfig& backbone_config,
                                            std::vector<std::string>* unknown = nullptr);

// Copies every tensor of `weights` (converted to fp32) into a new ParameterSet.
ParameterSet parameters_from_weights(const ModelWeights& weights);

}  // namespace parscale
