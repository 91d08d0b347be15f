// `parscale bench (--model DIR | --shape parscale-1.8b|qwen3-1.7b|tiny) [--dtype bf16] [--streams 1,2,4,8]
//                 [--batch 1,4] [--prompt-len 512] [--decode-steps 16] [--threads N] [--json]`
// Measures, for each (P, B): prefill tokens/s, decode ms per step (min and median over the steps)
// and tokens/s, peak resident memory, the roofline lower bound from this machine's streaming read
// bandwidth and compute peak (probed once at start: the fp32 FMA rate, or the bf16 dot-product
// rate for weights that run on those kernels), and the prefill's share of that peak. Random
// weights of a named shape are generated in memory directly in the target dtype, ParScale
// prefixes and aggregation included.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "core/threads.h"
#include "engine/benchmark.h"
#include "engine/session.h"
#include "kernels/kernels.h"
#include "model/tensor_specs.h"

namespace {

using namespace parscale;
using bench::model_cost;
using bench::named_shape;
using bench::random_backbone;
using bench::with_streams;
using bench::reset_peak_rss;

struct Opts {
  std::string model_dir, shape, dtype = "bf16", streams = "1,2,4,8", batch = "1", kernels = "auto", compute;
  std::vector<std::string> adapters;
  int64_t prompt_len = 512, decode_steps = 16, prefill_rows = 4096, repeat = 1;
  int threads = 0;
  bool json = false;
  uint64_t seed = 1234;
  std::string mix, kv_dtype = "bf16";
  bool kv_accounting_only = false;
  int64_t interference = 0;
  std::string prefill_caps = "8";
};

std::vector<int64_t> parse_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> v;
  for (int32_t x : cli::parse_id_list(text, option)) {
    if (x <= 0) throw Error(option + ": entries must be positive, found " + std::to_string(x));
    v.push_back(x);
  }
  return v;
}

struct Row {
  int64_t P, B;
  double prefill_tok_s, prefill_lb_tok_s;
  double decode_ms_min, decode_ms_median, decode_lb_ms;
  double peak_rss_mb, weights_mb, kv_mb;
  double prefill_gflops = 0, prefill_peak_share = 0;  // model FLOP/s of the prefill; its share of the compute peak in use
};

parscale::cli::RegisterCommand reg("bench", "measure prefill and decode speed, memory and the roofline bound", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model_dir, "model folder (its P is used; --streams is ignored)");
  app.add_option("--adapter", o->adapters, "ParScale adapter files for --model");
  app.add_option("--shape", o->shape, "random weights of a named shape: parscale-1.8b, qwen3-1.7b, tiny");
  app.add_option("--dtype", o->dtype, "matrix dtype: bf16, f16, f32, q8 (random shapes); auto, bf16, f16, f32, q8 (--model: converted at load)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "f16", "q8"}));
  app.add_option("--streams", o->streams, "comma-separated P values (random shapes)");
  app.add_option("--batch", o->batch, "comma-separated batch sizes B");
  app.add_option("--prompt-len", o->prompt_len, "prompt tokens per sequence (prefill)")->check(CLI::PositiveNumber);
  app.add_option("--decode-steps", o->decode_steps, "decode steps timed after the prefill")->check(CLI::PositiveNumber);
  app.add_option("--prefill-rows", o->prefill_rows,
                 "at most this many stream rows (B*P*chunk) per prefill pass; longer prompts go in chunks")
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", o->threads, "worker threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  app.add_option("--repeat", o->repeat,
                 "measure each (P, B) this many times (fresh session each): best prefill, decode min and median over all steps")
      ->check(CLI::PositiveNumber);
  cli::add_compute_option(app, o->compute);
  app.add_option("--kernels", o->kernels, "kernel path: auto, scalar, avx2, avx512")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512"}));
  app.add_option("--seed", o->seed, "seed of the random weights and prompts");
  app.add_flag("--json", o->json, "print one JSON object instead of the table");
  app.add_option("--mix", o->mix,
                 "mixed-P decode: PxCOUNT entries (e.g. 1x8,4x2,8x1) run as one step on one backbone, timed against "
                 "one P = 1 sequence alone");
  app.add_option("--kv-dtype", o->kv_dtype, "--mix, --interference: KV cache dtype")->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_flag("--kv-accounting-only", o->kv_accounting_only, "--mix: print the KV page accounting without running");
  app.add_option("--interference", o->interference,
                 "decode latency under a long prompt: 4 sequences decode (--decode-steps steps timed), then a prompt of "
                 "this many tokens is admitted beside them; prints step p50/p99 before and during")
      ->check(CLI::PositiveNumber);
  app.add_option("--prefill-cap", o->prefill_caps,
                 "--interference: comma-separated caps of prompt rows per step while sequences decode (0 = none)");
  return [o]() -> int {
    if (o->model_dir.empty() == o->shape.empty()) throw Error("bench: give exactly one of --model DIR or --shape NAME");
    const int threads = set_num_threads(o->threads);
    cli::apply_compute_option(o->compute);
    if (o->kernels != "auto") kernels::set_kernel_path(kernels::parse_kernel_path(o->kernels.c_str()));
    const auto batches = parse_list(o->batch, "--batch");
    std::vector<int64_t> streams = parse_list(o->streams, "--streams");

    // Machine probes (before any weights exist, so they measure memory, not caches).
    const double bw_gbs = kernels::probe_read_bandwidth(size_t{1} << 30, 1.0);
    const double fma_gflops = kernels::probe_fma_gflops(1.0);
    const bool fast = kernels::active_compute_mode() != kernels::ComputeMode::Exact;
    const double bf16_gflops = fast ? kernels::probe_bf16dot_gflops(1.0) : 0.0;
    const char* path = kernels::kernel_path_name(kernels::active_kernel_path());
    if (!o->json) {
      std::printf("machine: %d threads, kernels %s, %s mode, read bandwidth %.1f GB/s, fp32 FMA peak %.1f GFLOP/s", threads,
                  path, kernels::compute_mode_name(kernels::active_compute_mode()), bw_gbs, fma_gflops);
      if (bf16_gflops > 0) std::printf(", bf16-dot peak %.1f GFLOP/s", bf16_gflops);
      std::printf("\n");
    }

    ModelWeights backbone;
    std::string source;
    const double t_load = bench::now_seconds();
    if (!o->model_dir.empty()) {
      cli::ModelOptions mo;
      mo.model_dir = o->model_dir;
      mo.adapters = o->adapters;
      mo.dtype = o->dtype;
      mo.threads = o->threads;  // (--compute was applied above, before the probes)
      backbone = mo.load();
      streams = {backbone.config.streams()};
      source = o->model_dir;
    } else {
      const DType dt = o->dtype == "q8" ? DType::I8 : o->dtype == "f16" ? DType::F16 : o->dtype == "f32" ? DType::F32 : DType::BF16;
      backbone = random_backbone(named_shape(o->shape), dt, o->seed);
      source = "random " + o->shape + " " + o->dtype;
    }
    if (!o->json) {
      std::printf("weights: %s, ready in %.1f s", source.c_str(), bench::now_seconds() - t_load);
      if (const int64_t packed = packed_weight_bytes(backbone.bb()))
        std::printf(" (+ %.0f MiB packed for oneDNN)", static_cast<double>(packed) / (1 << 20));
      std::printf("\n");
    }

    if (!o->mix.empty()) {
      if (!o->model_dir.empty() && backbone.adapter) throw Error("bench --mix: give a P = 1 model (adapters are made per P)");
      ModelWeights base = backbone;
      base.adapter = nullptr;
      base.config.parscale_n = 1;
      bench::MixOptions mo;
      mo.prompt_len = o->prompt_len;
      mo.decode_steps = o->decode_steps;
      mo.kv_dtype = o->kv_dtype == "f32" ? DType::F32 : o->kv_dtype == "f16" ? DType::F16 : DType::BF16;
      mo.seed = o->seed;
      mo.accounting_only = o->kv_accounting_only;
      const auto entries = bench::parse_mix(o->mix);
      const bench::MixResult r = bench::run_mix(base, entries, mo);
      std::printf("mix %s: %lld sequences, %lld stream rows per step\n", o->mix.c_str(), static_cast<long long>(r.sequences),
                  static_cast<long long>(r.stream_rows));
      std::printf("KV (%s, pages of 64): %lld pages = %.1f MiB for %lld tokens per stream row; real tokens need %.1f MiB "
                  "(page rounding %+.2f%%); prefix bytes per sequence %lld\n",
                  o->kv_dtype.c_str(), static_cast<long long>(r.kv_pages), static_cast<double>(r.kv_bytes) / (1 << 20),
                  static_cast<long long>(o->prompt_len + (o->kv_accounting_only ? 0 : o->decode_steps)),
                  static_cast<double>(r.kv_real_token_bytes) / (1 << 20),
                  100.0 * (static_cast<double>(r.kv_bytes) / static_cast<double>(r.kv_real_token_bytes) - 1.0),
                  static_cast<long long>(r.kv_prefix_bytes_per_sequence));
      if (o->kv_accounting_only) return 0;
      auto med = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
      };
      const double m = med(r.mixed_ms), s1 = med(r.single_ms);
      std::printf("decode step, median of %lld (alternating): mix %.2f ms, one P = 1 sequence %.2f ms, ratio %.3f\n",
                  static_cast<long long>(o->decode_steps), m, s1, m / s1);
      return 0;
    }

    if (o->interference > 0) {
      std::vector<int64_t> caps;
      for (int32_t x : cli::parse_id_list(o->prefill_caps, "--prefill-cap")) {
        if (x < 0) throw Error("--prefill-cap: entries must be >= 0, found " + std::to_string(x));
        caps.push_back(x);
      }
      const DType kv = o->kv_dtype == "f32" ? DType::F32 : o->kv_dtype == "f16" ? DType::F16 : DType::BF16;
      std::printf("interference: 4 decoding sequences, then a %lld-token prompt; batch_rows 512, %s KV; ms per step\n",
                  static_cast<long long>(o->interference), o->kv_dtype.c_str());
      std::printf("%4s %5s | %9s %9s | %9s %9s %6s | %7s %9s\n", "P", "cap", "undist50", "undist99", "admit50", "admit99",
                  "p99x", "steps", "ttft_ms");
      for (int64_t P : streams) {
        const ModelWeights w = o->model_dir.empty() ? with_streams(backbone, P, o->seed) : backbone;
        for (int64_t cap : caps) {
          bench::InterferenceOptions io;
          io.long_prompt = o->interference;
          io.undisturbed_steps = o->decode_steps;
          io.prefill_rows_while_decoding = cap;
          io.kv_dtype = kv;
          io.seed = o->seed;
          const bench::InterferenceResult r = bench::run_interference(w, io);
          const double u50 = bench::quantile(r.undisturbed_ms, 0.5), u99 = bench::quantile(r.undisturbed_ms, 0.99);
          const double a50 = bench::quantile(r.admitting_ms, 0.5), a99 = bench::quantile(r.admitting_ms, 0.99);
          std::printf("%4lld %5lld | %9.2f %9.2f | %9.2f %9.2f %6.2f | %7zu %9.1f\n", static_cast<long long>(w.config.streams()),
                      static_cast<long long>(cap), u50, u99, a50, a99, a99 / u50, r.admitting_ms.size(),
                      r.long_prompt_first_token_ms);
          std::fflush(stdout);
        }
      }
      return 0;
    }

    std::vector<Row> rows;
    for (int64_t P : streams) {
      const ModelWeights w = o->model_dir.empty() ? with_streams(backbone, P, o->seed) : backbone;
      const ModelConfig& c = w.config;
      const bench::ModelCost cost = model_cost(w);
      // The compute peak of the backbone's matmuls: the bf16 dot-product rate where they run on
      // those kernels (fast mode), else the fp32 FMA rate.
      const bool on_bf16dot = !w.bb().layers.empty() && kernels::uses_bf16dot(w.bb().layers[0].gate_proj);
      const double peak_gflops = on_bf16dot && bf16_gflops > 0 ? bf16_gflops : fma_gflops;
      for (int64_t B : batches) {
        reset_peak_rss();
        double prefill_s = INFINITY;
        int64_t passes = 0, kv_bytes = 0;
        std::vector<double> step_ms;
        {
          bench::RunOptions ro{B, o->prompt_len, o->decode_steps, o->prefill_rows, o->repeat, o->seed};
          bench::RunResult rr = bench::run(w, ro);
          prefill_s = rr.prefill_s;
          passes = rr.passes;
          kv_bytes = rr.kv_bytes;
          step_ms = rr.step_ms;
        }
        std::vector<double> sorted = step_ms;
        std::sort(sorted.begin(), sorted.end());

        // Roofline lower bounds: time >= max(bytes / bandwidth, flops / compute peak).
        const double R = static_cast<double>(B * P), D = static_cast<double>(c.head_dim);
        const double layers = static_cast<double>(c.num_hidden_layers), heads = static_cast<double>(c.num_attention_heads);
        const double kvh = static_cast<double>(c.num_key_value_heads), T = static_cast<double>(c.prefix_tokens());
        const double ctx = T + static_cast<double>(o->prompt_len) + static_cast<double>(o->decode_steps) / 2.0;
        const double dec_bytes = static_cast<double>(cost.backbone_bytes + cost.head_bytes + cost.agg_bytes) +
                                 R * layers * kvh * ctx * D * 4.0 * 2.0;
        const double dec_flops = 2.0 * R * static_cast<double>(cost.backbone_params) +
                                 2.0 * static_cast<double>(B) * static_cast<double>(cost.head_params + cost.agg_params) +
                                 R * layers * heads * ctx * D * 4.0;
        const double dec_lb_s = std::max(dec_bytes / (bw_gbs * 1e9), dec_flops / (peak_gflops * 1e9));
        const double Lp = static_cast<double>(o->prompt_len);
        const double pre_flops = 2.0 * R * Lp * static_cast<double>(cost.backbone_params) +
                                 2.0 * static_cast<double>(B * passes) * static_cast<double>(cost.head_params + cost.agg_params) +
                                 R * layers * heads * (T * Lp + Lp * (Lp + 1) / 2.0) * D * 4.0;
        const double pre_bytes = static_cast<double>(passes) * static_cast<double>(cost.backbone_bytes + cost.head_bytes + cost.agg_bytes);
        const double pre_lb_s = std::max(pre_bytes / (bw_gbs * 1e9), pre_flops / (peak_gflops * 1e9));

        Row row;
        row.P = P;
        row.B = B;
        row.prefill_tok_s = static_cast<double>(B) * Lp / prefill_s;
        row.prefill_lb_tok_s = static_cast<double>(B) * Lp / pre_lb_s;
        row.prefill_gflops = pre_flops / prefill_s / 1e9;
        row.prefill_peak_share = row.prefill_gflops / peak_gflops;
        row.decode_ms_min = sorted.front();
        row.decode_ms_median = sorted[sorted.size() / 2];
        row.decode_lb_ms = dec_lb_s * 1e3;
        row.peak_rss_mb = static_cast<double>(bench::peak_rss_bytes()) / (1 << 20);
        row.weights_mb = static_cast<double>(cost.backbone_bytes + cost.head_bytes + cost.agg_bytes) / (1 << 20);
        row.kv_mb = static_cast<double>(kv_bytes) / (1 << 20);
        rows.push_back(row);
        if (!o->json) {
          if (rows.size() == 1)
            std::printf("%3s %3s | %12s %10s %7s | %11s %11s %10s %9s | %9s %9s %9s %6s\n", "P", "B", "prefill t/s", "bound t/s",
                        "% peak", "decode ms", "median ms", "bound ms", "tok/s", "peak MiB", "wts MiB", "KV MiB", "ratio");
          std::printf("%3lld %3lld | %12.1f %10.1f %6.1f%% | %11.1f %11.1f %10.1f %9.2f | %9.0f %9.0f %9.0f %6.3f\n",
                      static_cast<long long>(P), static_cast<long long>(B), row.prefill_tok_s, row.prefill_lb_tok_s,
                      100.0 * row.prefill_peak_share,
                      row.decode_ms_min, row.decode_ms_median, row.decode_lb_ms, static_cast<double>(B) * 1e3 / row.decode_ms_median,
                      row.peak_rss_mb, row.weights_mb, row.kv_mb, row.peak_rss_mb / (row.weights_mb + row.kv_mb));
          std::fflush(stdout);
        }
      }
    }
    if (o->json) {
      std::ostringstream js;
      js << "{\"machine\": {\"threads\": " << threads << ", \"kernels\": \"" << path << "\", \"read_bandwidth_gbs\": " << bw_gbs
         << ", \"fma_peak_gflops\": " << fma_gflops << ", \"bf16dot_peak_gflops\": " << bf16_gflops << ", \"compute_mode\": \""
         << kernels::compute_mode_name(kernels::active_compute_mode()) << "\"}, \"source\": \"" << source << "\", \"prompt_len\": " << o->prompt_len
         << ", \"decode_steps\": " << o->decode_steps << ", \"results\": [";
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        js << (i ? ", " : "") << "{\"streams\": " << r.P << ", \"batch\": " << r.B << ", \"prefill_tok_s\": " << r.prefill_tok_s
           << ", \"prefill_bound_tok_s\": " << r.prefill_lb_tok_s << ", \"prefill_gflops\": " << r.prefill_gflops
           << ", \"prefill_peak_share\": " << r.prefill_peak_share << ", \"decode_ms_min\": " << r.decode_ms_min
           << ", \"decode_ms_median\": " << r.decode_ms_median << ", \"decode_bound_ms\": " << r.decode_lb_ms
           << ", \"decode_tok_s\": " << static_cast<double>(r.B) * 1e3 / r.decode_ms_median << ", \"peak_rss_mib\": " << r.peak_rss_mb
           << ", \"weights_mib\": " << r.weights_mb << ", \"kv_cache_mib\": " << r.kv_mb << "}";
      }
      js << "]}\n";
      std::fputs(js.str().c_str(), stdout);
    }
    return 0;
  };
});

}  // namespace
