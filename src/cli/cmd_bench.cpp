// `parscale bench (--model DIR | --shape parscale-1.8b|tiny) [--dtype bf16] [--streams 1,2,4,8]
//                 [--batch 1,4] [--prompt-len 512] [--decode-steps 16] [--threads N] [--json]`
// Measures, for each (P, B): prefill tokens/s, decode ms per step (min and median over the steps)
// and tokens/s, peak resident memory, and the roofline lower bound from this machine's streaming
// read bandwidth and FMA rate (both probed once at start). Random weights of a named shape are
// generated in memory directly in the target dtype, ParScale prefixes and aggregation included.
#include <omp.h>

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
#include "engine/session.h"
#include "kernels/kernels.h"
#include "model/tensor_specs.h"

namespace {

using namespace parscale;

struct Opts {
  std::string model_dir, shape, dtype = "bf16", streams = "1,2,4,8", batch = "1", kernels = "auto";
  std::vector<std::string> adapters;
  int64_t prompt_len = 512, decode_steps = 16, prefill_rows = 4096, repeat = 1;
  int threads = 0;
  bool json = false;
  uint64_t seed = 1234;
};

std::vector<int64_t> parse_list(const std::string& text, const std::string& option) {
  std::vector<int64_t> v;
  for (int32_t x : cli::parse_id_list(text, option)) {
    if (x <= 0) throw Error(option + ": entries must be positive, found " + std::to_string(x));
    v.push_back(x);
  }
  return v;
}

ModelConfig named_shape(const std::string& name) {
  ModelConfig c;
  c.model_type = "qwen2_parscale";
  if (name == "parscale-1.8b") {
    c.vocab_size = 151936;
    c.hidden_size = 1536;
    c.intermediate_size = 8320;
    c.num_hidden_layers = 36;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 2;
    c.head_dim = 96;
    c.tie_word_embeddings = true;
    c.rope_theta = 1000000.0;
  } else if (name == "tiny") {
    c.vocab_size = 1000;
    c.hidden_size = 64;
    c.intermediate_size = 192;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.tie_word_embeddings = true;
  } else {
    throw Error("--shape: unknown shape \"" + name + "\" (known: parscale-1.8b, tiny)");
  }
  c.max_position_embeddings = 32768;
  c.parscale_n_tokens = 48;
  return c;
}

// Counter-based uniform values in [-1, 1): the same for any thread count, fast, no state.
inline float uniform_pm1(uint64_t seed, uint64_t i) {
  uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(static_cast<int64_t>(z >> 40) - (int64_t{1} << 23)) * (1.0f / static_cast<float>(1 << 23));
}

struct RandomFactory {
  DType dtype;  // matrix dtype; DType::I8 = q8 (block 32)
  uint64_t seed;
  ModelWeights* w;
  uint64_t next = 1;
  std::shared_ptr<WeightArena> arena = std::make_shared<WeightArena>();
  RandomFactory(DType d, uint64_t s, ModelWeights* mw) : dtype(d), seed(s), w(mw) { w->owned.push_back(arena); }

  WeightView matrix(int64_t rows, int64_t cols, float stddev) {
    const uint64_t s = seed * 1000003ull + next++;
    const float a = stddev * std::sqrt(3.0f);
    const int64_t n = rows * cols;
    WeightView v{dtype, nullptr, rows, cols};
    uint8_t* buf = arena->allocate(static_cast<size_t>(n) * dtype_size(dtype));
    v.data = buf;
    if (dtype == DType::I8) {
      constexpr int64_t block = 32;
      check(cols % block == 0, "random q8 weights need cols divisible by 32");
      float* scales = reinterpret_cast<float*>(arena->allocate(static_cast<size_t>(rows * (cols / block)) * sizeof(float)));
      int8_t* q = reinterpret_cast<int8_t*>(buf);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(std::lround(127.0f * uniform_pm1(s, static_cast<uint64_t>(i))));
      for (int64_t i = 0; i < rows * (cols / block); ++i) scales[i] = a / 127.0f;
      v.scales = scales;
      v.block = block;
      return v;
    }
#pragma omp parallel for schedule(static)
    for (int64_t c0 = 0; c0 < n; c0 += 4096) {
      float tmp[4096];
      const int64_t m = std::min<int64_t>(4096, n - c0);
      for (int64_t i = 0; i < m; ++i) tmp[i] = a * uniform_pm1(s, static_cast<uint64_t>(c0 + i));
      convert_from_f32(dtype, tmp, buf + c0 * dtype_size(dtype), static_cast<size_t>(m));
    }
    return v;
  }
  const float* vec(int64_t n, float center, float spread) {
    const uint64_t s = seed * 1000003ull + next++;
    auto buf = std::shared_ptr<float[]>(new float[static_cast<size_t>(n)]);
    for (int64_t i = 0; i < n; ++i) buf[static_cast<size_t>(i)] = center + spread * uniform_pm1(s, static_cast<uint64_t>(i));
    w->owned.push_back(buf);
    return buf.get();
  }
};

// The backbone (shared by every P) and, per P, random prefixes and aggregation on top of it.
ModelWeights random_backbone(const ModelConfig& c, DType dtype, uint64_t seed) {
  ModelWeights w;
  w.config = c;
  w.config.parscale_n = 1;
  RandomFactory f{dtype, seed, &w};
  const int64_t H = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KD = c.kv_dim();
  w.embed_tokens = f.matrix(c.vocab_size, H, 0.02f);
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (auto& L : w.layers) {
    L.input_norm = f.vec(H, 1.0f, 0.1f);
    L.post_norm = f.vec(H, 1.0f, 0.1f);
    L.q_proj = f.matrix(QD, H, 0.02f);
    L.k_proj = f.matrix(KD, H, 0.02f);
    L.v_proj = f.matrix(KD, H, 0.02f);
    L.o_proj = f.matrix(H, QD, 0.02f);
    L.q_bias = f.vec(QD, 0.0f, 0.05f);
    L.k_bias = f.vec(KD, 0.0f, 0.05f);
    L.v_bias = f.vec(KD, 0.0f, 0.05f);
    L.gate_proj = f.matrix(I, H, 0.02f);
    L.up_proj = f.matrix(I, H, 0.02f);
    L.down_proj = f.matrix(H, I, 0.02f);
  }
  w.final_norm = f.vec(H, 1.0f, 0.1f);
  w.lm_head = w.embed_tokens;
  w.tied = true;
  return w;
}

ModelWeights with_streams(const ModelWeights& backbone, int64_t P, uint64_t seed) {
  ModelWeights w = backbone;  // views + shared ownership of the backbone buffers
  w.config.parscale_n = P;
  if (P == 1) return w;
  const ModelConfig& c = w.config;
  RandomFactory f{DType::F32, seed * 7919 + static_cast<uint64_t>(P), &w};
  const int64_t H = c.hidden_size, prefix = P * c.num_key_value_heads * c.parscale_n_tokens * c.head_dim;
  for (auto& L : w.layers) {
    L.prefix_k = f.vec(prefix, 0.0f, 1.0f);
    L.prefix_v = f.vec(prefix, 0.0f, 1.0f);
  }
  w.aggregate0 = {DType::F32, f.vec(H * P * H, 0.0f, 0.02f), H, P * H};
  w.aggregate0_bias = f.vec(H, 0.0f, 0.02f);
  w.aggregate2 = {DType::F32, f.vec(P * H, 0.0f, 0.02f), P, H};
  w.aggregate2_bias = f.vec(P, 0.0f, 0.02f);
  return w;
}

int64_t view_bytes(const WeightView& v) {
  int64_t b = v.rows * v.cols * static_cast<int64_t>(dtype_size(v.dtype));
  if (v.dtype == DType::I8) b += v.rows * (v.cols / v.block) * 4;
  return b;
}
int64_t view_params(const WeightView& v) { return v.rows * v.cols; }

// Bytes and multiply-adds of the matrices that every token row passes through.
struct ModelCost {
  int64_t backbone_bytes = 0, backbone_params = 0;  // decoder layers (per stream row)
  int64_t head_bytes = 0, head_params = 0;          // lm_head (per output row, after aggregation)
  int64_t agg_bytes = 0, agg_params = 0;            // aggregation MLP (per output row)
};

ModelCost model_cost(const ModelWeights& w) {
  ModelCost c;
  for (const auto& L : w.layers)
    for (const WeightView* v : {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj}) {
      c.backbone_bytes += view_bytes(*v);
      c.backbone_params += view_params(*v);
    }
  c.head_bytes = view_bytes(w.lm_head);
  c.head_params = view_params(w.lm_head);
  if (w.config.streams() > 1) {
    c.agg_bytes = view_bytes(w.aggregate0) + view_bytes(w.aggregate2);
    c.agg_params = view_params(w.aggregate0) + view_params(w.aggregate2);
  }
  return c;
}

// Peak resident set (VmHWM) and current (VmRSS) in bytes; reset_peak() restarts VmHWM.
int64_t proc_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(in, line))
    if (line.rfind(k, 0) == 0) return std::stoll(line.substr(k.size()));
  return -1;
}
void reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct Row {
  int64_t P, B;
  double prefill_tok_s, prefill_lb_tok_s;
  double decode_ms_min, decode_ms_median, decode_lb_ms;
  double peak_rss_mb, weights_mb, kv_mb;
};

parscale::cli::RegisterCommand reg("bench", "measure prefill and decode speed, memory and the roofline bound", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  app.add_option("--model", o->model_dir, "model folder (its P is used; --streams is ignored)");
  app.add_option("--adapter", o->adapters, "ParScale adapter files for --model");
  app.add_option("--shape", o->shape, "random weights of a named shape: parscale-1.8b, tiny");
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
  app.add_option("--kernels", o->kernels, "kernel path: auto, scalar, avx2, avx512")
      ->check(CLI::IsMember({"auto", "scalar", "avx2", "avx512"}));
  app.add_option("--seed", o->seed, "seed of the random weights and prompts");
  app.add_flag("--json", o->json, "print one JSON object instead of the table");
  return [o]() -> int {
    if (o->model_dir.empty() == o->shape.empty()) throw Error("bench: give exactly one of --model DIR or --shape NAME");
    const int threads = set_num_threads(o->threads);
    if (o->kernels != "auto") kernels::set_kernel_path(kernels::parse_kernel_path(o->kernels.c_str()));
    const auto batches = parse_list(o->batch, "--batch");
    std::vector<int64_t> streams = parse_list(o->streams, "--streams");

    // Machine probes (before any weights exist, so they measure memory, not caches).
    const double bw_gbs = kernels::probe_read_bandwidth(size_t{1} << 30, 1.0);
    const double fma_gflops = kernels::probe_fma_gflops(1.0);
    const char* path = kernels::kernel_path_name(kernels::active_kernel_path());
    if (!o->json)
      std::printf("machine: %d threads, kernels %s, read bandwidth %.1f GB/s, fp32 FMA peak %.1f GFLOP/s\n", threads, path,
                  bw_gbs, fma_gflops);

    ModelWeights backbone;
    std::string source;
    const double t_load = now_s();
    if (!o->model_dir.empty()) {
      cli::ModelOptions mo;
      mo.model_dir = o->model_dir;
      mo.adapters = o->adapters;
      mo.dtype = o->dtype;
      mo.threads = o->threads;
      backbone = mo.load();
      streams = {backbone.config.streams()};
      source = o->model_dir;
    } else {
      const DType dt = o->dtype == "q8" ? DType::I8 : o->dtype == "f16" ? DType::F16 : o->dtype == "f32" ? DType::F32 : DType::BF16;
      backbone = random_backbone(named_shape(o->shape), dt, o->seed);
      source = "random " + o->shape + " " + o->dtype;
    }
    if (!o->json) std::printf("weights: %s, ready in %.1f s\n", source.c_str(), now_s() - t_load);

    std::vector<Row> rows;
    for (int64_t P : streams) {
      const ModelWeights w = o->model_dir.empty() ? with_streams(backbone, P, o->seed) : backbone;
      const ModelConfig& c = w.config;
      const ModelCost cost = model_cost(w);
      for (int64_t B : batches) {
        reset_peak_rss();
        double prefill_s = INFINITY;
        int64_t passes = 0, kv_bytes = 0;
        std::vector<double> step_ms;
        for (int64_t rep = 0; rep < o->repeat; ++rep) {
          const int64_t max_len = o->prompt_len + o->decode_steps + 1;
          Session session(w, B, max_len);
          // Prompts: random ids, fed in chunks of at most prefill_rows stream rows per pass.
          std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
          for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < o->prompt_len; ++t)
              prompts[static_cast<size_t>(b)].push_back(static_cast<int32_t>(
                  (0.5f + 0.5f * uniform_pm1(o->seed + 17, static_cast<uint64_t>(b * o->prompt_len + t))) * static_cast<float>(c.vocab_size - 1)));
          const int64_t chunk = std::max<int64_t>(1, std::min(o->prompt_len, o->prefill_rows / (B * P)));
          std::vector<float> logits;
          const double t0 = now_s();
          passes = 0;
          for (int64_t t0k = 0; t0k < o->prompt_len; t0k += chunk, ++passes) {
            std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(B));
            for (int64_t b = 0; b < B; ++b) {
              const auto& p = prompts[static_cast<size_t>(b)];
              chunks[static_cast<size_t>(b)].assign(p.begin() + t0k, p.begin() + std::min(o->prompt_len, t0k + chunk));
            }
            session.forward(chunks, Session::Outputs::LastPosition, logits);
          }
          prefill_s = std::min(prefill_s, now_s() - t0);

          // Decode: B sequences, one token each per step (the argmax of the previous logits).
          std::vector<std::vector<int32_t>> step(static_cast<size_t>(B), std::vector<int32_t>(1, 0));
          for (int64_t s = 0; s < o->decode_steps; ++s) {
            for (int64_t b = 0; b < B; ++b) {
              const float* r = logits.data() + b * c.vocab_size;
              step[static_cast<size_t>(b)][0] = static_cast<int32_t>(std::max_element(r, r + c.vocab_size) - r);
            }
            const double ts = now_s();
            session.forward(step, Session::Outputs::LastPosition, logits);
            step_ms.push_back((now_s() - ts) * 1e3);
          }
          kv_bytes = session.cache().bytes();
        }
        std::vector<double> sorted = step_ms;
        std::sort(sorted.begin(), sorted.end());

        // Roofline lower bounds: time >= max(bytes / bandwidth, flops / FMA peak).
        const double R = static_cast<double>(B * P), D = static_cast<double>(c.head_dim);
        const double layers = static_cast<double>(c.num_hidden_layers), heads = static_cast<double>(c.num_attention_heads);
        const double kvh = static_cast<double>(c.num_key_value_heads), T = static_cast<double>(c.prefix_tokens());
        const double ctx = T + static_cast<double>(o->prompt_len) + static_cast<double>(o->decode_steps) / 2.0;
        const double dec_bytes = static_cast<double>(cost.backbone_bytes + cost.head_bytes + cost.agg_bytes) +
                                 R * layers * kvh * ctx * D * 4.0 * 2.0;
        const double dec_flops = 2.0 * R * static_cast<double>(cost.backbone_params) +
                                 2.0 * static_cast<double>(B) * static_cast<double>(cost.head_params + cost.agg_params) +
                                 R * layers * heads * ctx * D * 4.0;
        const double dec_lb_s = std::max(dec_bytes / (bw_gbs * 1e9), dec_flops / (fma_gflops * 1e9));
        const double Lp = static_cast<double>(o->prompt_len);
        const double pre_flops = 2.0 * R * Lp * static_cast<double>(cost.backbone_params) +
                                 2.0 * static_cast<double>(B * passes) * static_cast<double>(cost.head_params + cost.agg_params) +
                                 R * layers * heads * (T * Lp + Lp * (Lp + 1) / 2.0) * D * 4.0;
        const double pre_bytes = static_cast<double>(passes) * static_cast<double>(cost.backbone_bytes + cost.head_bytes + cost.agg_bytes);
        const double pre_lb_s = std::max(pre_bytes / (bw_gbs * 1e9), pre_flops / (fma_gflops * 1e9));

        Row row;
        row.P = P;
        row.B = B;
        row.prefill_tok_s = static_cast<double>(B) * Lp / prefill_s;
        row.prefill_lb_tok_s = static_cast<double>(B) * Lp / pre_lb_s;
        row.decode_ms_min = sorted.front();
        row.decode_ms_median = sorted[sorted.size() / 2];
        row.decode_lb_ms = dec_lb_s * 1e3;
        row.peak_rss_mb = static_cast<double>(proc_status_kb("VmHWM")) / 1024.0;
        row.weights_mb = static_cast<double>(cost.backbone_bytes + cost.head_bytes + cost.agg_bytes) / (1 << 20);
        row.kv_mb = static_cast<double>(kv_bytes) / (1 << 20);
        rows.push_back(row);
        if (!o->json) {
          if (rows.size() == 1)
            std::printf("%3s %3s | %12s %10s | %11s %11s %10s %9s | %9s %9s %9s %6s\n", "P", "B", "prefill t/s", "bound t/s",
                        "decode ms", "median ms", "bound ms", "tok/s", "peak MiB", "wts MiB", "KV MiB", "ratio");
          std::printf("%3lld %3lld | %12.1f %10.1f | %11.1f %11.1f %10.1f %9.2f | %9.0f %9.0f %9.0f %6.3f\n",
                      static_cast<long long>(P), static_cast<long long>(B), row.prefill_tok_s, row.prefill_lb_tok_s,
                      row.decode_ms_min, row.decode_ms_median, row.decode_lb_ms, static_cast<double>(B) * 1e3 / row.decode_ms_median,
                      row.peak_rss_mb, row.weights_mb, row.kv_mb, row.peak_rss_mb / (row.weights_mb + row.kv_mb));
          std::fflush(stdout);
        }
      }
    }
    if (o->json) {
      std::ostringstream js;
      js << "{\"machine\": {\"threads\": " << threads << ", \"kernels\": \"" << path << "\", \"read_bandwidth_gbs\": " << bw_gbs
         << ", \"fma_peak_gflops\": " << fma_gflops << "}, \"source\": \"" << source << "\", \"prompt_len\": " << o->prompt_len
         << ", \"decode_steps\": " << o->decode_steps << ", \"results\": [";
      for (size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        js << (i ? ", " : "") << "{\"streams\": " << r.P << ", \"batch\": " << r.B << ", \"prefill_tok_s\": " << r.prefill_tok_s
           << ", \"prefill_bound_tok_s\": " << r.prefill_lb_tok_s << ", \"decode_ms_min\": " << r.decode_ms_min
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
