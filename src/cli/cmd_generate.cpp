// `parscale generate --model DIR --ids 5,17,3 --max-tokens 20 --temperature 0 --ignore-eos --json`
// prints {"ids": [...]} (generated ids only; with several --ids, a list per sequence).
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "engine/generate.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Opts {
  parscale::cli::ModelOptions model;
  std::vector<std::string> ids;
  std::string prompt;
  std::string tokenizer;
  bool chat = false;
  std::string messages;
  bool parse_special = true;
  parscale::GenerateOptions gen;
  bool json = false;
  bool stats = false;
};

void report_stops(const parscale::GenerateResult& r, const parscale::ModelWeights& w) {
  for (size_t b = 0; b < r.stop.size(); ++b)
    if (r.stop[b] == parscale::StopReason::ContextLimit)
      std::fprintf(stderr, "parscale: sequence %zu stopped at the context limit (max_position_embeddings = %lld)\n", b,
                   static_cast<long long>(w.config.max_position_embeddings));
}

void print_stats(const parscale::GenerateResult& r) {
  std::fprintf(stderr, "prompt %lld tokens in %.3f s; %lld tokens in %.3f s (%.2f ms/step)\n",
               static_cast<long long>(r.prompt_tokens), r.prefill_seconds, static_cast<long long>(r.generated_tokens),
               r.decode_seconds, r.decode_steps ? 1e3 * r.decode_seconds / static_cast<double>(r.decode_steps) : 0.0);
}

// --prompt TEXT: tokenize, generate, stream the text to stdout as tokens arrive.
int run_text(const Opts& o) {
  using namespace parscale;
  Tokenizer tok = cli::load_tokenizer(o.model.model_dir, o.tokenizer, "generate");
  std::string text = o.prompt;
  if (!o.messages.empty()) {
    if (!tok.has_chat_template()) throw Error("--messages: the tokenizer has no chat_template (tokenizer_config.json)");
    std::ifstream in(o.messages);
    if (!in) throw Error(o.messages + ": cannot open");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw Error(o.messages + ": invalid JSON: " + e.what());
    }
    if (!j.is_array()) throw Error(o.messages + ": expected a JSON array of messages");
    std::vector<ChatMessage> msgs;
    for (size_t i = 0; i < j.size(); ++i) {
      if (!j[i].is_object() || !j[i].contains("role") || !j[i]["role"].is_string() || !j[i].contains("content") ||
          !j[i]["content"].is_string())
        throw Error(o.messages + ": message " + std::to_string(i) + " needs string fields \"role\" and \"content\"");
      msgs.push_back({j[i]["role"].get<std::string>(), j[i]["content"].get<std::string>()});
    }
    text = tok.apply_chat_template(msgs, /*add_generation_prompt=*/true);
  } else if (o.chat) {
    if (!tok.has_chat_template()) throw Error("--chat: the tokenizer has no chat_template (tokenizer_config.json)");
    text = tok.apply_chat_template({{"user", o.prompt}}, /*add_generation_prompt=*/true);
  }
  std::vector<int32_t> ids = tok.encode(text, o.parse_special);
  if (ids.empty()) throw Error("--prompt: the prompt encodes to no tokens");
  ModelWeights w = o.model.load();
  if (tok.vocab_size() > static_cast<size_t>(w.config.vocab_size))
    throw Error("tokenizer has " + std::to_string(tok.vocab_size()) + " tokens but the model's vocab_size is " +
                std::to_string(w.config.vocab_size));
  GenerateOptions gen = o.gen;
  gen.kv_dtype = o.model.kv();
  if (gen.eos_ids.empty()) gen.eos_ids = cli::eos_ids_for(w.config, tok);
  StreamDecoder dec(tok, /*skip_special=*/true);
  if (!o.json && o.messages.empty() && !o.chat) {
    std::fwrite(o.prompt.data(), 1, o.prompt.size(), stdout);
    std::fflush(stdout);
  }
  GenerateResult r = generate(w, {ids}, gen, [&](int64_t, int32_t id) {
    if (o.json) return;
    std::string piece = dec.push(id);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  if (o.json) {
    nlohmann::json j;
    j["ids"] = r.ids[0];
    j["text"] = tok.decode(r.ids[0], /*skip_special=*/true);
    j["prompt_ids"] = ids;
    j["stop"] = stop_reason_name(r.stop[0]);
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::string tail = dec.flush();
    std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::fputc('\n', stdout);
  }
  std::fflush(stdout);  // the text ends before the stop / stats lines on stderr
  report_stops(r, w);
  if (o.stats) print_stats(r);
  return 0;
}

parscale::cli::RegisterCommand reg("generate", "generate tokens from token ids (or a text prompt)", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  o->model.add_to(app);
  auto* ids = app.add_option("--ids", o->ids, "comma-separated prompt token ids; repeat for a batch");
  auto* prompt = app.add_option("--prompt", o->prompt, "text prompt (needs the model's tokenizer.json)");
  ids->excludes(prompt);
  app.add_option("--tokenizer", o->tokenizer, "tokenizer.json to use with --prompt (default: the model folder's)");
  app.add_flag("--chat", o->chat, "wrap --prompt as one user turn with the tokenizer's chat template");
  auto* messages = app.add_option("--messages", o->messages,
                                  "JSON file with a conversation [{\"role\": ..., \"content\": ...}, ...], rendered with the chat template");
  messages->excludes(ids);
  messages->excludes(prompt);
  app.add_flag("!--no-special", o->parse_special, "treat special-token text in --prompt as plain text");
  app.add_option("--max-tokens", o->gen.max_tokens, "maximum tokens to generate per sequence")->check(CLI::NonNegativeNumber);
  parscale::cli::add_sampling_options(app, o->gen.sampling);
  app.add_flag("--ignore-eos", o->gen.ignore_eos, "do not stop at end-of-sequence tokens");
  app.add_flag("--json", o->json, "print {\"ids\": [...]} with the generated ids");
  app.add_flag("--stats", o->stats, "print timing statistics to stderr");
  return [o]() -> int {
    using namespace parscale;
    if (o->ids.empty() && o->prompt.empty() && o->messages.empty()) throw Error("generate: give --ids, --prompt or --messages");
    if (!o->prompt.empty() || !o->messages.empty()) return run_text(*o);
    std::vector<std::vector<int32_t>> prompts;
    for (const auto& s : o->ids) prompts.push_back(cli::parse_id_list(s, "--ids"));
    ModelWeights w = o->model.load();
    GenerateOptions gen = o->gen;
    gen.kv_dtype = o->model.kv();
    GenerateResult r = generate(w, prompts, gen);
    report_stops(r, w);
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
    if (o->stats) print_stats(r);
    return 0;
  };
});

}  // namespace
