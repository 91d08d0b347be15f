// `parscale generate --model DIR --ids 5,17,3 --max-tokens 20 --temperature 0 --ignore-eos --json`
// prints {"ids": [...]} (generated ids only; with several --ids, a list per sequence).
#include <cstdio>
#include <memory>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "engine/generate.h"

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::vector<std::string> ids;
  std::string prompt;
  parscale::GenerateOptions gen;
  bool json = false;
  bool stats = false;
};

parscale::cli::RegisterCommand reg("generate", "generate tokens from token ids (or a text prompt)", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  auto* ids = app.add_option("--ids", o->ids, "comma-separated prompt token ids; repeat for a batch");
  auto* prompt = app.add_option("--prompt", o->prompt, "text prompt (needs the model's tokenizer.json)");
  ids->excludes(prompt);
  app.add_option("--max-tokens", o->gen.max_tokens, "maximum tokens to generate per sequence")->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", o->gen.sampling.temperature, "0 = greedy (default 1)");
  app.add_option("--top-k", o->gen.sampling.top_k, "keep the k most likely tokens (0 = off)");
  app.add_option("--top-p", o->gen.sampling.top_p, "nucleus sampling mass (1 = off)");
  app.add_option("--min-p", o->gen.sampling.min_p, "drop tokens below min-p times the top probability (0 = off)");
  app.add_option("--repetition-penalty", o->gen.sampling.repetition_penalty, "HF-style repetition penalty (1 = off)");
  app.add_option("--seed", o->gen.sampling.seed, "random seed for sampling");
  app.add_flag("--ignore-eos", o->gen.ignore_eos, "do not stop at end-of-sequence tokens");
  app.add_flag("--json", o->json, "print {\"ids\": [...]} with the generated ids");
  app.add_flag("--stats", o->stats, "print timing statistics to stderr");
  return [o]() -> int {
    using namespace parscale;
    if (o->ids.empty() && o->prompt.empty()) throw Error("generate: give --ids or --prompt");
    if (!o->prompt.empty()) throw Error("generate: --prompt needs the tokenizer, which this build does not include yet; use --ids");
    std::vector<std::vector<int32_t>> prompts;
    for (const auto& s : o->ids) prompts.push_back(cli::parse_id_list(s, "--ids"));
    ModelWeights w = o->model.load();
    GenerateResult r = generate(w, prompts, o->gen);
    for (size_t b = 0; b < r.stop.size(); ++b)
      if (r.stop[b] == StopReason::ContextLimit)
        std::fprintf(stderr, "parscale: sequence %zu stopped at the context limit (max_position_embeddings = %lld)\n", b,
                     static_cast<long long>(w.config.max_position_embeddings));
    auto list = [](const std::vector<int32_t>& v) {
      std::string s = "[";
      for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
      return s + "]";
    };
    std::string out;
    if (o->json) {
      out = "{\"ids\": ";
      if (r.ids.size() == 1) {
        out += list(r.ids[0]);
      } else {
        out += "[";
        for (size_t b = 0; b < r.ids.size(); ++b) out += (b ? ", " : "") + list(r.ids[b]);
        out += "]";
      }
      out += "}\n";
    } else {
      for (const auto& ids : r.ids) out += list(ids) + "\n";
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    if (o->stats)
      std::fprintf(stderr, "prompt %lld tokens in %.3f s; %lld tokens in %.3f s (%.2f ms/step)\n",
                   static_cast<long long>(r.prompt_tokens), r.prefill_seconds, static_cast<long long>(r.generated_tokens),
                   r.decode_seconds, r.decode_steps ? 1e3 * r.decode_seconds / static_cast<double>(r.decode_steps) : 0.0);
    return 0;
  };
});

}  // namespace
