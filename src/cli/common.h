// Options shared by the subcommands that load a model, and small parsing helpers.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/sampling.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace parscale::cli {

struct ModelOptions {
  std::string model_dir;
  std::vector<std::string> adapters;
  std::string dtype = "auto";  // auto (as stored), f32, bf16, f16, q8
  int threads = 0;             // 0 = all cores
  std::string kv_dtype = "f32";  // KV cache: f32, bf16, f16
  std::string compute;           // exact, fast, auto; empty: PARSCALE_COMPUTE or auto
  // The command only runs the model: BF16 matrices are packed for the fast mode and keep no plain
  // copy (LoadOptions::pack_fast, release_packed_sources). False for commands that read the
  // matrices (convert).
  bool run_only = true;
  // Adds --model (required unless `model_required` is false), --adapter, --dtype, --threads,
  // --kv-dtype, --compute.
  void add_to(CLI::App& app, bool model_required = true);
  // Applies --threads and --compute and loads the model; prints unknown-tensor warnings to stderr.
  ModelWeights load() const;
  // --kv-dtype as a DType.
  DType kv() const;
};

// --compute: the kernels' compute mode (kernels::ComputeMode) for the whole process.
void add_compute_option(CLI::App& app, std::string& compute);
void apply_compute_option(const std::string& compute);

// --temperature, --top-k, --top-p, --min-p, --repetition-penalty, --seed (defaults from `p`).
void add_sampling_options(CLI::App& app, SamplingParams& p);

// The model's eos ids plus the tokenizer's end-of-turn ids (e.g. <|im_end|>), without repeats.
std::vector<int64_t> eos_ids_for(const ModelConfig& config, const Tokenizer& tokenizer);

// The tokenizer a command uses: `tokenizer_file` (a tokenizer.json) when given, else
// MODEL_DIR/tokenizer.json; throws naming `command` when neither is given.
Tokenizer load_tokenizer(const std::string& model_dir, const std::string& tokenizer_file, const std::string& command);

// "5,17,3" -> {5, 17, 3}; throws parscale::Error naming the option on bad input.
std::vector<int32_t> parse_id_list(const std::string& text, const std::string& option);

// Appends a float with round-trip precision (%.9g) to a JSON text.
void append_json_float(std::string& out, float v);

}  // namespace parscale::cli
