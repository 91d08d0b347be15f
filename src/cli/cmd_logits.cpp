// `parscale logits --model DIR --ids 5,17,3 [--ids 9,2 ...] --json`
// Runs all sequences together as one batch (one prefill pass) and prints, for each sequence and
// each of its positions, the full vocabulary row of logits: {"logits": [[[...V], ...], ...]}.
#include <cstdio>
#include <memory>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "engine/session.h"

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::vector<std::string> ids;
  bool json = false;
};

parscale::cli::RegisterCommand reg("logits", "print the logits of every position of one or more token sequences", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  app.add_option("--ids", o->ids, "comma-separated token ids; repeat for a batch")->required();
  app.add_flag("--json", o->json, "print one JSON object {\"logits\": [...]} (the only output format)");
  return [o]() -> int {
    using namespace parscale;
    std::vector<std::vector<int32_t>> seqs;
    for (const auto& s : o->ids) seqs.push_back(cli::parse_id_list(s, "--ids"));
    ModelWeights w = o->model.load();
    int64_t longest = 0;
    for (const auto& s : seqs) longest = std::max<int64_t>(longest, static_cast<int64_t>(s.size()));
    SessionOptions so;
    so.kv_dtype = o->model.kv();
    Session session(w, static_cast<int64_t>(seqs.size()), longest, so);
    std::vector<float> logits;
    session.forward(seqs, Session::Outputs::AllPositions, logits);
    const int64_t V = w.config.vocab_size;
    std::string out = "{\"logits\": [";
    int64_t row = 0;
    for (size_t b = 0; b < seqs.size(); ++b) {
      out += b ? ", [" : "[";
      for (size_t t = 0; t < seqs[b].size(); ++t, ++row) {
        out += t ? ", [" : "[";
        for (int64_t v = 0; v < V; ++v) {
          if (v) out += ", ";
          cli::append_json_float(out, logits[static_cast<size_t>(row * V + v)]);
        }
        out += "]";
      }
      out += "]";
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
    out += "]}\n";
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
  };
});

}  // namespace
