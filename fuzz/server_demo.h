// The server's view of the demo model (models/demo) for the server harnesses: its tokenizer, its
// catalog (its own P = 1 plus the P = 2 and P = 4 adapters) and the parse limits `parscale serve`
// takes from config.json, built once per process.
#pragma once
#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "fuzz_util.h"
#include "io/safetensors.h"
#include "server/api.h"
#include "tokenizer/tokenizer.h"

namespace parscale::fuzz {

using parscale::server::ParseContext;

struct ServerDemo {
  parscale::Tokenizer tokenizer;
  std::vector<parscale::EngineModel> models;
  parscale::server::ModelCatalog catalog;
  ParseContext ctx;

  static std::vector<parscale::EngineModel> engine_models(const std::string& dir) {
    std::vector<parscale::EngineModel> m = {{1, 0, ""}};  // the folder's own model (P = 1)
    for (const char* f : {"adapter-p2.safetensors", "adapter-p4.safetensors"}) {
      parscale::SafetensorsFile a(dir + "/" + f);
      m.push_back({std::stoll(a.metadata().at("parscale_n")), std::stoll(a.metadata().at("parscale_n_tokens")), f});
    }
    return m;
  }
  explicit ServerDemo(const std::string& dir)
      : tokenizer(parscale::Tokenizer::from_model_dir(dir)), models(engine_models(dir)), catalog("demo", models) {
    // The limits `parscale serve` takes from config.json (read here without parscale_model).
    std::ifstream in(dir + "/config.json");
    const nlohmann::json c = nlohmann::json::parse(in);
    ctx.catalog = &catalog;
    ctx.tokenizer = &tokenizer;
    ctx.vocab_size = c.at("vocab_size").get<int64_t>();
    ctx.max_context = c.at("max_position_embeddings").get<int64_t>();
    ctx.eos_ids = {c.at("eos_token_id").get<int64_t>()};  // as cli::eos_ids_for: the model's + the tokenizer's
    for (int32_t e : tokenizer.eos_ids())
      if (std::find(ctx.eos_ids.begin(), ctx.eos_ids.end(), e) == ctx.eos_ids.end()) ctx.eos_ids.push_back(e);
  }
};

inline const ServerDemo& server_demo() {
  static const ServerDemo d(parscale::fuzz::source_dir() + "/models/demo");
  return d;
}

}  // namespace parscale::fuzz
