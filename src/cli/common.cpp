#include "cli/common.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "core/threads.h"
#include "kernels/kernels.h"

namespace parscale::cli {

void ModelOptions::add_to(CLI::App& app, bool model_required) {
  auto* m = app.add_option("--model", model_dir, "model folder (config.json + safetensors)");
  if (model_required) m->required();
  app.add_option("--adapter", adapters, "ParScale adapter safetensors (prefixes + aggregation) applied to the backbone");
  app.add_option("--dtype", dtype, "matrix dtype in memory: auto (as stored), f32, bf16, f16, q8 (8-bit, per-32 scales)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16", "q8"}));
  app.add_option("--threads", threads, "worker threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--kv-dtype", kv_dtype, "KV cache dtype: f32 (exact), bf16, f16 (half the memory)")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  add_compute_option(app, compute);
}

void add_compute_option(CLI::App& app, std::string& compute) {
  app.add_option("--compute", compute,
                 "matmul arithmetic: exact (fp32 activations), fast (bf16 activations and dot products for bf16/q8 "
                 "weights on CPUs with AVX512-BF16), auto (the default, or PARSCALE_COMPUTE: fast where the CPU has it)")
      ->check(CLI::IsMember({"exact", "fast", "auto"}));
}

void apply_compute_option(const std::string& compute) {
  if (!compute.empty()) kernels::set_compute_mode(kernels::parse_compute_mode(compute.c_str()));
}

DType ModelOptions::kv() const { return kv_dtype == "bf16" ? DType::BF16 : kv_dtype == "f16" ? DType::F16 : DType::F32; }

ModelWeights ModelOptions::load() const {
  set_num_threads(threads);
  apply_compute_option(compute);
  LoadOptions lo;
  lo.adapter_files = adapters;
  lo.pack_fast = run_only;
  lo.release_packed_sources = run_only;
  if (dtype != "auto") {
    lo.convert_matrices = true;
    lo.matrix_dtype = dtype == "f32" ? DType::F32 : dtype == "bf16" ? DType::BF16 : dtype == "q8" ? DType::I8 : DType::F16;
  }
  ModelWeights w = load_model(model_dir, lo);
  for (const auto& name : w.unknown_tensors) std::fprintf(stderr, "parscale: warning: unused tensor %s\n", name.c_str());
  return w;
}

void add_sampling_options(CLI::App& app, SamplingParams& p) {
  auto dflt = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, " (default %g)", v);
    return std::string(buf);
  };
  app.add_option("--temperature", p.temperature, "0 = greedy" + dflt(p.temperature));
  app.add_option("--top-k", p.top_k, "keep the k most likely tokens, 0 = off (default " + std::to_string(p.top_k) + ")");
  app.add_option("--top-p", p.top_p, "nucleus sampling mass, 1 = off" + dflt(p.top_p));
  app.add_option("--min-p", p.min_p, "drop tokens below min-p times the top probability, 0 = off" + dflt(p.min_p));
  app.add_option("--repetition-penalty", p.repetition_penalty, "HF-style repetition penalty, 1 = off" + dflt(p.repetition_penalty));
  app.add_option("--seed", p.seed, "random seed for sampling");
}

Tokenizer load_tokenizer(const std::string& model_dir, const std::string& tokenizer_file, const std::string& command) {
  if (!tokenizer_file.empty()) return Tokenizer::from_file(tokenizer_file);
  check(!model_dir.empty(), command + ": give --model DIR or --tokenizer FILE");
  return Tokenizer::from_model_dir(model_dir);
}

std::vector<int64_t> eos_ids_for(const ModelConfig& config, const Tokenizer& tokenizer) {
  std::vector<int64_t> eos = config.eos_token_ids;
  for (int32_t e : tokenizer.eos_ids())
    if (std::find(eos.begin(), eos.end(), e) == eos.end()) eos.push_back(e);
  return eos;
}

std::vector<int32_t> parse_id_list(const std::string& text, const std::string& option) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i <= text.size()) {
    size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string tok = text.substr(i, j - i);
    while (!tok.empty() && std::isspace(static_cast<unsigned char>(tok.front()))) tok.erase(tok.begin());
    while (!tok.empty() && std::isspace(static_cast<unsigned char>(tok.back()))) tok.pop_back();
    if (tok.empty()) throw Error(option + ": empty entry in id list \"" + text + "\"");
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    if (*end != '\0' || errno != 0 || v < 0 || v > INT32_MAX)
      throw Error(option + ": \"" + tok + "\" is not a token id (non-negative integer)");
    ids.push_back(static_cast<int32_t>(v));
    i = j + 1;
  }
  return ids;
}

void append_json_float(std::string& out, float v) {
  if (!std::isfinite(v)) {
    out += std::isnan(v) ? "NaN" : (v > 0 ? "Infinity" : "-Infinity");
    return;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  out += buf;
}

}  // namespace parscale::cli
