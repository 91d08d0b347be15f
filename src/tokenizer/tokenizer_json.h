// A JSON reader for tokenizer.json that is fast on its bulk: model.vocab and model.merges (about
// 300k entries in a Qwen tokenizer) go straight into flat tables instead of a JSON tree; the rest
// of the document (small) becomes an nlohmann::json as json::parse would make it (RFC 8259,
// duplicate keys: the last one wins, strings validated as UTF-8).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parscale::tokenizer_json {

struct Tables {
  struct Span {
    uint32_t off = 0, len = 0;  // bytes of pool
  };
  std::string pool;  // unescaped token strings back to back

  // model.vocab when it is a JSON object (then it is absent from the returned tree): its entries in
  // file order. vocab_error: the first entry whose value is not an integer id in [0, 2^30), as the
  // message "model.vocab['<token>'] must be a non-negative integer id" (empty when none).
  bool vocab_seen = false;
  std::vector<std::pair<Span, int32_t>> vocab;
  std::string vocab_error;

  // model.merges when it is a JSON array (then absent from the tree): (left, right) per entry, from
  // "left right" strings or ["left", "right"] pairs. merges_error: the first malformed entry, as
  // "model.merges[<i>] ..." (empty when none).
  bool merges_seen = false;
  std::vector<std::pair<Span, Span>> merges;
  std::string merges_error;

  std::string_view str(Span s) const { return {pool.data() + s.off, s.len}; }
};

// Parses a whole tokenizer.json. Throws parscale::Error "<origin>: invalid JSON at byte <n>: <why>"
// for text that is not JSON (or nests deeper than 512 levels).
nlohmann::json parse(std::string_view text, const std::string& origin, Tables& tables);

}  // namespace parscale::tokenizer_json
