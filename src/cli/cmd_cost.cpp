// `parscale cost`: the analytic memory / latency model of ParScale inference (research/cost_model.h)
// for one configuration, or the paper's parallel-vs-parameter scaling comparison
// (--paper-comparison, research/paper_comparison.h).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/registry.h"
#include "core/error.h"
#include "research/cost_model.h"
#include "research/paper_comparison.h"
#include "research/plots.h"
#include "research/scaling_fit.h"

namespace {

using namespace parscale;
using namespace parscale::research;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct CostOpts {
  std::string model = "1.6B";
  long hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0;
  long batch = 1, streams = 1, prefix = 48, input = 64, output = 64;
  std::string dtype = "bf16";
  std::string hardware = "a100-sxm-80gb";
  double peak_tflops = 0, bandwidth_gbs = 0, flop_eff = 0, mem_eff = 0, capacity_gib = -1;
  bool json = false, measure = false;
  // paper comparison
  bool paper = false;
  std::string data = "data/scaling/stack_v2_python.csv";
  std::string loss_source = "observed";
  std::vector<long> batches{1, 2, 4, 8};
  std::vector<long> lengths{64, 128, 256, 512};
  std::string plot;
};

Hardware make_hardware(const CostOpts& o) {
  Hardware hw = hardware_by_name(o.hardware);
  if (o.peak_tflops > 0) hw.peak_flops = o.peak_tflops * 1e12;
  if (o.bandwidth_gbs > 0) hw.memory_bandwidth = o.bandwidth_gbs * 1e9;
  if (o.flop_eff > 0) hw.flop_efficiency = o.flop_eff;
  if (o.mem_eff > 0) hw.memory_efficiency = o.mem_eff;
  if (o.capacity_gib >= 0) hw.capacity_bytes = o.capacity_gib * kGiB;
  hw.validate();
  return hw;
}

ModelShape make_shape(const CostOpts& o) {
  ModelShape s = paper_model_shape(o.model);
  bool custom = false;
  auto set = [&](long v, long& field) {
    if (v > 0) {
      field = v;
      custom = true;
    }
  };
  set(o.hidden, s.hidden);
  set(o.intermediate, s.intermediate);
  set(o.layers, s.layers);
  set(o.heads, s.heads);
  set(o.kv_heads, s.kv_heads);
  set(o.vocab, s.vocab);
  if (custom) s.name = o.model + " (modified)";
  s.validate();
  return s;
}

void print_single(const ModelShape& shape, const Workload& w, const Hardware& hw,
                  const CostEstimate& e, const std::optional<CostMeasurement>& measured) {
  const CostTerms& t = e.terms;
  std::printf("model    %s: hidden %ld, intermediate %ld, layers %ld, heads %ld, kv heads %ld, vocab %ld\n",
              shape.name.c_str(), shape.hidden, shape.intermediate, shape.layers, shape.heads,
              shape.kv_heads, shape.vocab);
  std::printf("         N = %.0f non-embedding parameters at P = %ld (backbone %.0f)\n",
              shape.scaling_law_params(w.streams, w.prefix_tokens), w.streams, shape.backbone_params());
  std::printf("workload batch %ld, P %ld, prefix %ld, input %ld, output %ld tokens\n", w.batch,
              w.streams, w.streams > 1 ? w.prefix_tokens : 0, w.input_tokens, w.output_tokens);
  std::printf("hardware %s: %.4g TFLOP/s x %.2f, %.4g GB/s x %.2f, capacity %.1f GiB\n",
              hw.name.c_str(), hw.peak_flops / 1e12, hw.flop_efficiency, hw.memory_bandwidth / 1e9,
              hw.memory_efficiency, hw.capacity_bytes / kGiB);
  if (!hw.note.empty()) std::printf("         (%s)\n", hw.note.c_str());
  std::printf("\nmemory                      GiB\n");
  std::printf("  weights (+embedding)  %9.4f\n  aggregation MLP       %9.4f\n  KV cache              %9.4f\n"
              "  prefill activations   %9.4f\n  total                 %9.4f%s\n",
              t.weight_bytes / kGiB, t.aggregation_bytes / kGiB, t.kv_cache_bytes / kGiB,
              t.activation_bytes / kGiB, e.memory_bytes / kGiB,
              e.fits_in_memory ? "" : "   (exceeds the hardware capacity)");
  std::printf("\nlatency                      ms\n");
  std::printf("  prefill layers        %9.3f\n  prefill embedding     %9.3f\n  prefill lm_head       %9.3f\n"
              "  decode layers         %9.3f\n  decode embedding      %9.3f\n  decode lm_head        %9.3f\n"
              "  decode KV cache       %9.3f\n  aggregation MLP       %9.3f\n  lm_head once/sequence %9.3f\n"
              "  total                 %9.3f\n",
              t.prefill_layers_s * 1e3, t.prefill_embedding_s * 1e3, t.prefill_lm_head_s * 1e3,
              t.decode_layers_s * 1e3, t.decode_embedding_s * 1e3, t.decode_lm_head_s * 1e3,
              t.decode_kv_cache_s * 1e3, t.aggregation_s * 1e3, t.lm_head_correction_s * 1e3,
              e.latency_s * 1e3);
  if (measured) {
    std::printf("\n");
    std::printf("%-12s %14s %14s %14s\n", "", "predicted", "measured", "measured/pred");
    std::printf("%-12s %14.4f %14.4f %14.3f   GiB\n", "memory", e.memory_bytes / kGiB, measured->memory_bytes / kGiB,
                measured->memory_bytes / e.memory_bytes);
    std::printf("%-12s %14.3f %14.3f %14.3f   ms\n", "latency", e.latency_s * 1e3, measured->latency_s * 1e3,
                measured->latency_s / e.latency_s);
    std::printf("(measured by %s)\n", measured->source.c_str());
  }
}

nlohmann::json terms_json(const CostEstimate& e) {
  const CostTerms& t = e.terms;
  return {{"memory_bytes", e.memory_bytes},
          {"latency_s", e.latency_s},
          {"fits_in_memory", e.fits_in_memory},
          {"memory_terms",
           {{"weights", t.weight_bytes}, {"aggregation", t.aggregation_bytes},
            {"kv_cache", t.kv_cache_bytes}, {"activations", t.activation_bytes}}},
          {"latency_terms",
           {{"prefill_layers", t.prefill_layers_s}, {"prefill_embedding", t.prefill_embedding_s},
            {"prefill_lm_head", t.prefill_lm_head_s}, {"decode_layers", t.decode_layers_s},
            {"decode_embedding", t.decode_embedding_s}, {"decode_lm_head", t.decode_lm_head_s},
            {"decode_kv_cache", t.decode_kv_cache_s}, {"aggregation", t.aggregation_s},
            {"lm_head_correction", t.lm_head_correction_s}}}};
}

int run_single(const CostOpts& o) {
  const ModelShape shape = make_shape(o);
  const Hardware hw = make_hardware(o);
  const Workload w{o.batch, o.streams, o.prefix, o.input, o.output};
  const CostEstimate e = predict_cost(shape, w, hw, precision_by_name(o.dtype));
  std::optional<CostMeasurement> measured;
  if (o.measure) {
    const CostMeasurer* measurer = cost_measurer();
    check(measurer != nullptr,
          "cost --measure: no engine benchmark is linked into this build yet; the predicted cost is "
          "available without --measure (see docs/COST_MODEL.md, 'Measured mode')");
    measured = (*measurer)(shape, w);
  }
  if (o.json) {
    nlohmann::json j = terms_json(e);
    j["model"] = {{"name", shape.name}, {"hidden", shape.hidden}, {"intermediate", shape.intermediate},
                  {"layers", shape.layers}, {"heads", shape.heads}, {"kv_heads", shape.kv_heads},
                  {"vocab", shape.vocab}, {"N", shape.scaling_law_params(w.streams, w.prefix_tokens)}};
    j["workload"] = {{"batch", w.batch}, {"P", w.streams}, {"prefix_tokens", w.prefix_tokens},
                     {"input_tokens", w.input_tokens}, {"output_tokens", w.output_tokens}};
    j["hardware"] = {{"name", hw.name}, {"peak_flops", hw.peak_flops},
                     {"memory_bandwidth", hw.memory_bandwidth}, {"flop_efficiency", hw.flop_efficiency},
                     {"memory_efficiency", hw.memory_efficiency}, {"capacity_bytes", hw.capacity_bytes},
                     {"note", hw.note}};
    if (measured)
      j["measured"] = {{"memory_bytes", measured->memory_bytes}, {"latency_s", measured->latency_s},
                       {"memory_ratio", measured->memory_bytes / e.memory_bytes},
                       {"latency_ratio", measured->latency_s / e.latency_s}, {"source", measured->source}};
    std::cout << j.dump(2) << "\n";
  } else {
    print_single(shape, w, hw, e, measured);
  }
  return 0;
}

LossLookup make_loss_lookup(const CostOpts& o, std::string* description) {
  const std::vector<ScalingRow> rows = load_scaling_rows(o.data);
  if (o.loss_source == "fitted") {
    const ScalingLaw law = fit_scaling_law(rows).law;
    char buf[256];
    std::snprintf(buf, sizeof buf, "fitted law from %s (E %.4f, A %.4g, k %.4f, alpha %.4f)",
                  o.data.c_str(), law.E, law.A, law.k, law.alpha);
    *description = buf;
    return [law](const ModelShape&, long p, double n) { return predict_loss(law, n, static_cast<double>(p)); };
  }
  check(o.loss_source == "observed",
        "--loss-source '" + o.loss_source + "': expected observed or fitted");
  *description = "observed final losses from " + o.data;
  const std::string data = o.data;
  return [rows, data](const ModelShape& shape, long p, double n) {
    for (const ScalingRow& r : rows)
      if (r.streams == static_cast<double>(p) && std::abs(r.params - n) < 0.5) return r.loss;
    char buf[160];
    std::snprintf(buf, sizeof buf, "no row with N = %.0f, P = %ld (model %s)", n, p, shape.name.c_str());
    throw Error(data + ": " + buf + "; use --loss-source fitted to take the loss from the fitted law");
  };
}

nlohmann::json batch_json(const BatchResult& br) {
  nlohmann::json j;
  j["batch"] = br.batch == 0 ? nlohmann::json("mean") : nlohmann::json(br.batch);
  j["points"] = nlohmann::json::array();
  for (const CostPoint& p : br.points)
    j["points"].push_back({{"model", p.model}, {"P", p.streams}, {"N", p.params}, {"loss", p.loss},
                           {"memory_bytes", p.memory_bytes}, {"latency_s", p.latency_s}});
  const EqualLossComparison& c = br.comparison;
  j["comparison"] = {{"target_loss", c.target_loss},
                     {"parallel_memory_increase_bytes", c.parallel_memory_bytes - c.base_memory_bytes},
                     {"parallel_latency_increase_s", c.parallel_latency_s - c.base_latency_s},
                     {"parameter_memory_increase_bytes", c.parameter_memory_bytes - c.base_memory_bytes},
                     {"parameter_latency_increase_s", c.parameter_latency_s - c.base_latency_s},
                     {"memory_ratio", c.memory_ratio()},
                     {"latency_ratio", c.latency_ratio()},
                     {"extrapolated", c.extrapolated}};
  return j;
}

void print_batch(const BatchResult& br, const ComparisonSettings& s) {
  if (br.batch == 0) {
    std::printf("\n== costs averaged over batch sizes (paper Figure 1) ==\n");
  } else {
    std::printf("\n== batch size %ld (paper Figure 4) ==\n", br.batch);
  }
  std::printf("  %-6s %3s %14s %8s %12s %11s\n", "model", "P", "N", "loss", "memory GiB", "latency s");
  for (const CostPoint& p : br.points)
    std::printf("  %-6s %3ld %14.0f %8.4f %12.4f %11.4f\n", p.model.c_str(), p.streams, p.params, p.loss,
                p.memory_bytes / kGiB, p.latency_s);
  const EqualLossComparison& c = br.comparison;
  std::printf("  parallel scaling  %s P=1->%ld (loss %.4f): memory +%.4f GiB, latency +%.4f s\n",
              s.models.front().c_str(), s.target_streams, c.target_loss,
              (c.parallel_memory_bytes - c.base_memory_bytes) / kGiB, c.parallel_latency_s - c.base_latency_s);
  std::printf("  parameter scaling P=1 curve to loss %.4f%s: memory +%.4f GiB, latency +%.4f s\n",
              c.target_loss, c.extrapolated ? " (extrapolated)" : "",
              (c.parameter_memory_bytes - c.base_memory_bytes) / kGiB, c.parameter_latency_s - c.base_latency_s);
  std::printf("  => %.2fx less memory increase, %.2fx less latency increase\n", c.memory_ratio(),
              c.latency_ratio());
}

int run_paper(const CostOpts& o) {
  ComparisonSettings s;
  s.hardware = make_hardware(o);
  s.precision = precision_by_name(o.dtype);
  s.prefix_tokens = o.prefix;
  s.batches = o.batches;
  s.lengths.clear();
  for (long n : o.lengths) {
    check(n >= 1, "--lengths: every length must be >= 1, found " + std::to_string(n));
    s.lengths.push_back({n, n});
  }
  for (long b : s.batches) check(b >= 1, "--batches: every batch size must be >= 1, found " + std::to_string(b));
  std::string loss_description;
  const PaperComparison result = run_paper_comparison(s, make_loss_lookup(o, &loss_description));
  if (!o.plot.empty()) svg::write(cost_comparison_figure(result), o.plot);
  if (o.json) {
    nlohmann::json j;
    j["losses"] = loss_description;
    j["hardware"] = {{"name", s.hardware.name}, {"peak_flops", s.hardware.peak_flops},
                     {"memory_bandwidth", s.hardware.memory_bandwidth},
                     {"flop_efficiency", s.hardware.flop_efficiency},
                     {"memory_efficiency", s.hardware.memory_efficiency}};
    j["lengths"] = o.lengths;
    j["per_batch"] = nlohmann::json::array();
    for (const BatchResult& br : result.per_batch) j["per_batch"].push_back(batch_json(br));
    j["batch_averaged"] = batch_json(result.batch_averaged);
    if (!o.plot.empty()) j["plot"] = o.plot;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("Paper comparison: parallel scaling (%s, P = 1 -> %ld) vs parameter scaling (%s", s.models.front().c_str(),
              s.target_streams, s.models.front().c_str());
  for (size_t i = 1; i < s.models.size(); ++i) std::printf(" -> %s", s.models[i].c_str());
  std::printf(" at P = 1) at equal loss\n");
  std::printf("losses:   %s\n", loss_description.c_str());
  std::printf("hardware: %s, %.1f TFLOP/s x %.2f, %.0f GB/s x %.2f\n", s.hardware.name.c_str(),
              s.hardware.peak_flops / 1e12, s.hardware.flop_efficiency, s.hardware.memory_bandwidth / 1e9,
              s.hardware.memory_efficiency);
  std::printf("costs:    mean over input = output length in {");
  for (size_t i = 0; i < o.lengths.size(); ++i) std::printf("%s%ld", i ? ", " : "", o.lengths[i]);
  std::printf("}, prefix %ld tokens when P > 1\n", s.prefix_tokens);
  for (const BatchResult& br : result.per_batch) print_batch(br, s);
  print_batch(result.batch_averaged, s);
  std::printf("\nsummary: batch 1: %.2fx less memory increase, %.2fx less latency increase (paper: 22x, 6x)\n",
              result.per_batch.front().comparison.memory_ratio(), result.per_batch.front().comparison.latency_ratio());
  std::printf("         mean over batch sizes: %.2fx, %.2fx (paper Figure 1: 7x, 1.7x)\n",
              result.batch_averaged.comparison.memory_ratio(), result.batch_averaged.comparison.latency_ratio());
  if (!o.plot.empty()) std::printf("plot written to %s\n", o.plot.c_str());
  return 0;
}

parscale::cli::RegisterCommand reg(
    "cost", "Analytic memory/latency model of ParScale inference; --paper-comparison reproduces the paper's cost figure",
    [](CLI::App& app) {
      auto o = std::make_shared<CostOpts>();
      app.add_option("--model", o->model, "shape preset: 0.5B 0.7B 1.1B 1.6B 2.8B 4.4B (the paper's backbones)");
      app.add_option("--hidden", o->hidden, "override: hidden size");
      app.add_option("--intermediate", o->intermediate, "override: MLP intermediate size");
      app.add_option("--layers", o->layers, "override: number of layers");
      app.add_option("--heads", o->heads, "override: attention heads");
      app.add_option("--kv-heads", o->kv_heads, "override: key/value heads");
      app.add_option("--vocab", o->vocab, "override: vocabulary size");
      app.add_option("--batch", o->batch, "batch size B");
      app.add_option("-P,--streams", o->streams, "parallel streams P");
      app.add_option("--prefix-tokens", o->prefix, "ParScale prefix tokens T per stream (counted when P > 1)");
      app.add_option("--input", o->input, "prompt length");
      app.add_option("--output", o->output, "generated tokens");
      app.add_option("--dtype", o->dtype, "bf16 | fp16 | fp32 | int8 (weights; activations and KV stay 16-bit for int8)");
      app.add_option("--hardware", o->hardware,
                     "a100-sxm-80gb | h100-sxm-80gb | h200-sxm-141gb | rtx-4090 | this-machine (measured)");
      app.add_option("--peak-tflops", o->peak_tflops, "override: peak dense TFLOP/s");
      app.add_option("--bandwidth-gbs", o->bandwidth_gbs, "override: peak memory bandwidth, GB/s");
      app.add_option("--flop-efficiency", o->flop_eff, "override: achieved/peak FLOP/s, (0,1]");
      app.add_option("--memory-efficiency", o->mem_eff, "override: achieved/peak bandwidth, (0,1]");
      app.add_option("--capacity-gib", o->capacity_gib, "override: device memory in GiB (0 = unlimited)");
      app.add_flag("--json", o->json, "print JSON");
      app.add_flag("--measure", o->measure, "also run the configuration on the engine and print the measurement beside the prediction");
      app.add_flag("--paper-comparison", o->paper, "reproduce the paper's equal-loss comparison (Figures 1 and 4)");
      app.add_option("--data", o->data, "loss table for --paper-comparison (CSV/JSON rows N,P,loss)");
      app.add_option("--loss-source", o->loss_source, "observed (table rows, as the paper) | fitted (scaling law)");
      app.add_option("--batches", o->batches, "batch sizes for --paper-comparison")->delimiter(',');
      app.add_option("--lengths", o->lengths, "input = output lengths averaged over, for --paper-comparison")->delimiter(',');
      app.add_option("--plot", o->plot, "with --paper-comparison: write the loss-vs-cost figure as SVG");
      return [o]() -> int {
        if (o->paper) {
          check(!o->measure, "cost: --measure applies to a single configuration, not --paper-comparison");
          return run_paper(*o);
        }
        check(o->plot.empty(), "cost: --plot needs --paper-comparison");
        return run_single(*o);
      };
    });

}  // namespace
