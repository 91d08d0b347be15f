// Links the engine's benchmark into `parscale cost --measure`: the configuration the cost model
// predicts is run for real on this machine, with random BF16 weights of the same shape (16-bit
// weights, as the model assumes), and its peak memory and wall time are reported beside the
// prediction. Registered at start-up, so the research library stays independent of the engine.
#include <unistd.h>

#include <numeric>
#include <string>

#include "core/error.h"
#include "core/threads.h"
#include "engine/benchmark.h"
#include "kernels/dispatch.h"
#include "research/cost_model.h"

namespace {

using namespace parscale;

research::CostMeasurement measure_on_engine(const research::ModelShape& s, const research::Workload& w) {
  ModelConfig c;
  c.model_type = "qwen2_parscale";
  c.vocab_size = s.vocab;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = s.head_dim();
  c.tie_word_embeddings = true;
  c.rope_theta = 1e6;
  c.parscale_n_tokens = w.prefix_tokens;
  c.max_position_embeddings = std::max<int64_t>(32768, w.input_tokens + w.output_tokens + 1);
  c.validate("cost --measure");
  // Refuse shapes that cannot fit: weights (2 bytes per parameter) + KV cache (fp32) vs RAM.
  const double params = static_cast<double>(s.vocab * s.hidden) + s.backbone_params();
  const double kv = 2.0 * 4.0 * static_cast<double>(w.batch * w.streams * s.layers * s.kv_dim()) *
                    static_cast<double>((w.streams > 1 ? w.prefix_tokens : 0) + w.input_tokens + w.output_tokens);
  const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (2.0 * params + kv > 0.8 * ram)
    throw Error("cost --measure: this configuration needs about " + std::to_string((2.0 * params + kv) / (1 << 30)) +
                " GiB, more than 80% of this machine's " + std::to_string(ram / (1 << 30)) + " GiB");
  bench::reset_peak_rss();
  const ModelWeights backbone = bench::random_backbone(c, DType::BF16, 1234);
  const ModelWeights weights = bench::with_streams(backbone, w.streams, 1234);
  bench::RunOptions ro;
  ro.batch = w.batch;
  ro.prompt_len = w.input_tokens;
  ro.decode_steps = w.output_tokens;
  const bench::RunResult r = bench::run(weights, ro);
  research::CostMeasurement m;
  m.memory_bytes = static_cast<double>(bench::peak_rss_bytes());
  m.latency_s = r.prefill_s + std::accumulate(r.step_ms.begin(), r.step_ms.end(), 0.0) / 1e3;
  m.source = "the engine on this machine (random BF16 weights, fp32 KV cache, " + std::to_string(num_threads()) +
             " threads, kernels " + kernels::kernel_path_name(kernels::active_kernel_path()) + "; peak RSS, prefill + decode wall time)";
  return m;
}

struct Registrar {
  Registrar() { research::register_cost_measurer(measure_on_engine); }
} registrar;

}  // namespace
