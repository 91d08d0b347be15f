// Making, loading and saving trainable models: random initialisation, turning a P = 1 backbone
// into a ParScale-P model, HF-layout checkpoints and ParScale adapters (docs/TRAINING.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/weights.h"

namespace parscale::train {

// Standard normal stream, identical on every platform (mt19937_64 + Box–Muller).
class NormalRng {
 public:
  explicit NormalRng(uint64_t seed) : state_(seed) {}
  double next();
  uint64_t next_u64();

 private:
  uint64_t state_;
  uint64_t counter_ = 0;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// A fresh model of shape `c`: embedding and matrices normal(0, 0.02) (HF's _init_weights),
// RMSNorm weights 1, biases 0. For P > 1 the ParScale parameters then follow
// init_parscale_parameters on this random backbone.
ParameterSet random_parameters(const ModelConfig& c, uint64_t seed);

// A ParScale-P model (T prefix tokens, smoothing `smooth`) on the backbone tensors of `backbone`
// (its own ParScale tensors, if any, are dropped). Initialisation:
//  - prefix_k/prefix_v of stream s in layer l: the backbone's own pre-RoPE K and V of layer l for T
//    token ids drawn uniformly from the vocabulary by a generator seeded with (seed, s);
//  - aggregate_layer.0: weight normal(0, 0.02), bias 0; aggregate_layer.2: weight 0, bias 0
//    => stream weights exactly 1/P at step 0: the model is the mean of P backbone streams that
//    differ only by their prefixes.
// The backbone's tensors are moved into the result (pass std::move(set) to avoid a copy).
ParameterSet parscale_from_backbone(ParameterSet backbone, int64_t P, int64_t T, double smooth, uint64_t seed);

// Loads DIR (+ adapter files) into fp32 parameters.
ParameterSet load_parameters(const std::string& dir, const std::vector<std::string>& adapters = {});

// Writes an HF-layout folder: config.json, generation_config.json, model.safetensors (tensors in
// model_tensor_specs order, dtype F32 or BF16), each file atomically. Creates `dir`. When
// `source_dir` is given, its tokenizer files (tokenizer.json, tokenizer_config.json) are copied
// along, so the new folder is a complete model.
void save_model_dir(const ParameterSet& p, const std::string& dir, DType dtype = DType::F32,
                    const std::string& source_dir = "");

// Copies tokenizer.json / tokenizer_config.json from `from` to `to` (atomically; those present).
void copy_tokenizer_files(const std::string& from, const std::string& to);

// Writes the ParScale tensors (prefixes, aggregate_layer) as an F32 safetensors adapter with
// __metadata__ parscale_n, parscale_n_tokens, parscale_attn_smooth (strings) and format "pt".
void save_adapter(const ParameterSet& p, const std::string& file);

// Index of tensor `name` in p.specs, or -1.
int64_t find_tensor(const ParameterSet& p, const std::string& name);

}  // namespace parscale::train
