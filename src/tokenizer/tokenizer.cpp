#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/regex.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace parscale {
namespace {

using json = nlohmann::json;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using TokenMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// GPT-2's 2-bit-safe cousin of the byte-level pre-tokenizer pattern (ByteLevel use_regex=true).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// Leftmost-longest exact matcher over the added tokens of one kind (raw or normalized), the
// semantics of HF's aho-corasick with MatchKind::LeftmostLongest.
class AddedTokenMatcher {
 public:
  void add(std::string pattern, size_t token_index) {
    if (pattern.empty()) return;
    const auto first = static_cast<unsigned char>(pattern[0]);
    by_first_[first].push_back(patterns_.size());
    patterns_.push_back({std::move(pattern), token_index});
    for (auto& list : by_first_) {
      std::stable_sort(list.begin(), list.end(), [&](size_t a, size_t b) {
        return patterns_[a].text.size() > patterns_[b].text.size();
      });
    }
  }
  bool empty() const { return patterns_.empty(); }
  // Finds the leftmost-longest match at or after `from`: sets begin/end/token_index.
  bool find(std::string_view s, size_t from, size_t& begin, size_t& end, size_t& token) const {
    for (size_t i = from; i < s.size(); ++i) {
      const auto& list = by_first_[static_cast<unsigned char>(s[i])];
      for (size_t p : list) {
        const std::string& text = patterns_[p].text;
        if (s.compare(i, text.size(), text) == 0) {
          begin = i, end = i + text.size(), token = patterns_[p].token_index;
          return true;
        }
      }
    }
    return false;
  }

 private:
  struct Pattern {
    std::string text;
    size_t token_index;
  };
  std::vector<Pattern> patterns_;
  std::array<std::vector<size_t>, 256> by_first_;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), "cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string type_of(const json& j) {
  if (!j.is_object()) return "";
  auto it = j.find("type");
  return (it != j.end() && it->is_string()) ? it->get<std::string>() : "";
}

bool bool_field(const json& j, const char* key, bool fallback, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  check(it->is_boolean(), where + ": field '" + key + "' must be a boolean, found " +
                              std::string(it->type_name()));
  return it->get<bool>();
}

}  // namespace

struct Tokenizer::Impl {
  std::string origin;
  TokenMap token_to_id;                  // model vocab + added tokens (token string -> id)
  std::vector<std::string> id_to_token;  // "" for ids that are not assigned
  std::vector<std::string> id_bytes;     // what the ByteLevel decoder produces for each id
  std::vector<uint8_t> id_kind;          // 0 unassigned, 1 model token, 2 added, 3 added special
  std::array<int32_t, 256> byte_ids{};   // id of the single-byte symbol, -1 when absent
  int32_t unk_id = -1;
  bool ignore_merges = false;
  MergeTable merges;

  bool nfc = false;
  struct Step {
    bool prefix_space = false;  // ByteLevel add_prefix_space (else: Split by regex)
    std::unique_ptr<SplitRegex> regex;
  };
  std::vector<Step> steps;

  std::vector<AddedToken> added;
  AddedTokenMatcher raw_matcher, normalized_matcher;

  std::string chat_template, bos_token, eos_token;
  std::vector<int32_t> eos;

  // Cache of BPE results for short pieces (keyed by the piece's bytes).
  static constexpr size_t kCacheMaxEntries = 1 << 17;
  static constexpr size_t kCacheMaxPiece = 48;
  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache;

  // Appends HF find_matches() of `sentence` against `matcher`: calls emit(token_index or -1, piece).
  template <class Emit>
  void split_added(std::string_view sentence, const AddedTokenMatcher& matcher, bool parse_special,
                   Emit&& emit) const;
  void pretokenize(std::string_view piece, size_t step, std::vector<int32_t>& ids) const;
  void bpe(std::string_view piece, std::vector<int32_t>& ids) const;
};

template <class Emit>
void Tokenizer::Impl::split_added(std::string_view s, const AddedTokenMatcher& matcher,
                                  bool parse_special, Emit&& emit) const {
  if (matcher.empty()) {
    emit(-1, s);
    return;
  }
  size_t start_offset = 0, search = 0, begin = 0, end = 0, token = 0;
  while (search < s.size() && matcher.find(s, search, begin, end, token)) {
    search = end;  // matches never overlap; stripping does not move the search
    const AddedToken& t = added[token];
    if (t.special && !parse_special) continue;
    if (t.single_word) {
      const bool start_ok = begin == 0 || !utf8::is_word_char(utf8::previous_code_point(s, begin));
      size_t i = end;
      const bool stop_ok = end == s.size() || !utf8::is_word_char(utf8::next_code_point(s, i));
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip) {
      size_t new_begin = begin;
      while (new_begin > 0) {
        size_t cp_start = 0;
        if (!utf8::is_white_space(utf8::previous_code_point(s, new_begin, &cp_start))) break;
        new_begin = cp_start;
      }
      begin = std::max(new_begin, start_offset);
    }
    if (t.rstrip) {
      while (end < s.size()) {
        size_t i = end;
        if (!utf8::is_white_space(utf8::next_code_point(s, i))) break;
        end = i;
      }
    }
    if (begin > start_offset) emit(-1, s.substr(start_offset, begin - start_offset));
    emit(static_cast<int>(token), s.substr(begin, end - begin));
    start_offset = end;
  }
  if (start_offset < s.size()) emit(-1, s.substr(start_offset));
}

void Tokenizer::Impl::pretokenize(std::string_view piece, size_t step,
                                  std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (step == steps.size()) {
    bpe(piece, ids);
    return;
  }
  const Step& st = steps[step];
  if (st.prefix_space) {
    if (piece[0] == ' ') {
      pretokenize(piece, step + 1, ids);
    } else {
      std::string spaced;
      spaced.reserve(piece.size() + 1);
      spaced.push_back(' ');
      spaced.append(piece);
      pretokenize(spaced, step + 1, ids);
    }
    return;
  }
  std::vector<std::pair<size_t, size_t>> ranges;
  ranges.reserve(piece.size() / 4 + 4);
  st.regex->split_isolated(piece, ranges);
  for (auto [b, e] : ranges) pretokenize(piece.substr(b, e - b), step + 1, ids);
}

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.size() == 1) {
    const int32_t id = byte_ids[static_cast<unsigned char>(piece[0])];
    if (id >= 0) ids.push_back(id);
    else if (unk_id >= 0) ids.push_back(unk_id);
    return;
  }
  if (ignore_merges) {
    auto it = token_to_id.find(byte_level::encode(piece));
    if (it != token_to_id.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kCacheMaxPiece;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(piece);
    if (it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(piece.size());
  for (unsigned char c : piece) {
    const int32_t id = byte_ids[c];
    if (id >= 0) symbols.push_back(id);
    else if (unk_id >= 0) symbols.push_back(unk_id);  // HF: unknown symbol -> unk (or dropped)
  }
  merges.apply(symbols);
  ids.insert(ids.end(), symbols.begin(), symbols.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kCacheMaxEntries) cache.clear();
    cache.emplace(std::string(piece), std::move(symbols));
  }
}

namespace {

void parse_normalizer(const json& j, Tokenizer::Impl& t, const std::string& where) {
  if (j.is_null()) return;
  const std::string type = type_of(j);
  if (type == "NFC") {
    t.nfc = true;
  } else if (type == "Sequence") {
    auto it = j.find("normalizers");
    check(it != j.end() && it->is_array(), where + ": normalizer Sequence needs an array 'normalizers'");
    for (const json& n : *it) parse_normalizer(n, t, where);
  } else {
    throw Error(where + ": unsupported normalizer type '" + type +
                "' (supported: NFC, Sequence of NFC, null)");
  }
}

void parse_pre_tokenizer(const json& j, Tokenizer::Impl& t, bool& byte_level,
                         const std::string& where) {
  check(!j.is_null(), where + ": pre_tokenizer is null; only byte-level BPE is supported "
                              "(a ByteLevel pre-tokenizer is required)");
  const std::string type = type_of(j);
  check(!byte_level, where + ": pre-tokenizer '" + type +
                         "' after ByteLevel is unsupported (ByteLevel must come last)");
  if (type == "Sequence") {
    auto it = j.find("pretokenizers");
    check(it != j.end() && it->is_array(),
          where + ": pre_tokenizer Sequence needs an array 'pretokenizers'");
    for (const json& p : *it) parse_pre_tokenizer(p, t, byte_level, where);
  } else if (type == "Split") {
    auto pattern = j.find("pattern");
    check(pattern != j.end() && pattern->is_object(),
          where + ": Split pre-tokenizer needs an object 'pattern' ({\"Regex\": ...} or {\"String\": ...})");
    const std::string behavior = j.value("behavior", std::string());
    check(behavior == "Isolated", where + ": Split behavior '" + behavior +
                                      "' is unsupported (supported: Isolated)");
    check(!bool_field(j, "invert", false, where), where + ": Split with invert=true is unsupported");
    std::string regex;
    if (pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      regex = (*pattern)["Regex"].get<std::string>();
    } else if (pattern->contains("String") && (*pattern)["String"].is_string()) {
      for (char c : (*pattern)["String"].get<std::string>()) {  // literal: escape everything
        if (std::isalnum(static_cast<unsigned char>(c)) || static_cast<unsigned char>(c) >= 0x80)
          regex += c;
        else
          regex += std::string("\\") + c;
      }
    } else {
      throw Error(where + ": Split pattern must have a string 'Regex' or 'String'");
    }
    check(!regex.empty(), where + ": Split pattern is empty");
    Tokenizer::Impl::Step step;
    step.regex = std::make_unique<SplitRegex>(regex, where + ": Split pattern");
    t.steps.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    byte_level = true;
    if (bool_field(j, "add_prefix_space", true, where)) {
      Tokenizer::Impl::Step step;
      step.prefix_space = true;
      t.steps.push_back(std::move(step));
    }
    if (bool_field(j, "use_regex", true, where)) {
      Tokenizer::Impl::Step step;
      step.regex = std::make_unique<SplitRegex>(kGpt2Pattern, where + ": ByteLevel regex");
      t.steps.push_back(std::move(step));
    }
  } else {
    throw Error(where + ": unsupported pre_tokenizer type '" + type +
                "' (supported: Sequence, Split, ByteLevel)");
  }
}

// Largest token id + 1 accepted for n tokens: ids may leave gaps, but not make the dense id table
// (a string per id) arbitrarily larger than the vocabulary.
int64_t sparse_id_limit(int64_t n_tokens) { return 2 * n_tokens + 1024; }

void parse_model(const json& m, const tokenizer_json::Tables& tables, Tokenizer::Impl& t, const std::string& where) {
  check(m.is_object(), where + ": missing object 'model'");
  const std::string type = type_of(m);
  check(type == "BPE" || (type.empty() && m.contains("merges")),
        where + ": unsupported model type '" + type + "' (supported: BPE)");
  check(!m.contains("dropout") || m["dropout"].is_null() ||
            (m["dropout"].is_number() && m["dropout"].get<double>() == 0.0),
        where + ": BPE dropout is unsupported (encoding would not be deterministic)");
  check(!bool_field(m, "byte_fallback", false, where), where + ": BPE byte_fallback is unsupported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = m.find(key);
    check(it == m.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty()),
          where + ": BPE " + key + " is unsupported for byte-level models");
  }
  t.ignore_merges = bool_field(m, "ignore_merges", false, where);

  // vocab and merges come from the reader's tables (tokenizer_json.h); when they are not an object
  // and an array they are still in the tree (and rejected here).
  check(tables.vocab_seen, where + ": model.vocab must be an object {token: id}");
  check(tables.vocab_error.empty(), where + ": " + tables.vocab_error);
  int32_t max_id = -1;
  t.token_to_id.reserve(tables.vocab.size() + 64);
  for (const auto& [span, id] : tables.vocab) {
    t.token_to_id.insert_or_assign(std::string(tables.str(span)), id);  // a repeated token: the last id wins
    max_id = std::max(max_id, id);
  }
  if (t.token_to_id.size() != tables.vocab.size()) {  // (repeated tokens: max over the ids kept)
    max_id = -1;
    for (const auto& kv : t.token_to_id) max_id = std::max(max_id, kv.second);
  }
  // The id table is dense (id -> token), so a few huge ids must not size it: real vocabularies
  // number their tokens 0..n-1.
  const int64_t id_limit = sparse_id_limit(static_cast<int64_t>(tables.vocab.size()));
  check(max_id < id_limit, where + ": model.vocab has the id " + std::to_string(max_id) + " for " +
                               std::to_string(tables.vocab.size()) + " tokens (ids must be below " + std::to_string(id_limit) + ")");
  t.id_to_token.assign(static_cast<size_t>(max_id + 1), std::string());
  t.id_kind.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [token, id] : t.token_to_id) {
    t.id_to_token[static_cast<size_t>(id)] = token;
    t.id_kind[static_cast<size_t>(id)] = 1;
  }

  check(tables.merges_seen, where + ": model.merges must be an array");
  check(tables.merges_error.empty(), where + ": " + tables.merges_error);
  t.merges.reserve(tables.merges.size());
  int32_t rank = 0;
  std::string joined;
  for (const auto& [ls, rs] : tables.merges) {
    const std::string_view left = tables.str(ls), right = tables.str(rs);
    auto find_id = [&](std::string_view token) {
      auto it = t.token_to_id.find(token);
      if (it == t.token_to_id.end())  // (the message is built only on failure: 450k lookups per load)
        throw Error(where + ": model.merges[" + std::to_string(rank) + "] uses token '" + std::string(token) +
                    "' that is not in model.vocab");
      return it->second;
    };
    joined.assign(left);
    joined.append(right);
    const int32_t l = find_id(left), r = find_id(right), merged = find_id(joined);
    t.merges.insert(l, r, rank, merged);
    ++rank;
  }

  auto unk = m.find("unk_token");
  if (unk != m.end() && unk->is_string()) {
    auto it = t.token_to_id.find(unk->get<std::string>());
    check(it != t.token_to_id.end(), where + ": model.unk_token '" + unk->get<std::string>() +
                                         "' is not in model.vocab");
    t.unk_id = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = t.token_to_id.find(byte_level::symbol(static_cast<uint8_t>(b)));
    t.byte_ids[static_cast<size_t>(b)] = it == t.token_to_id.end() ? -1 : it->second;
  }
}

void parse_added_tokens(const json& j, Tokenizer::Impl& t, const std::string& where) {
  if (j.is_null()) return;
  check(j.is_array(), where + ": added_tokens must be an array");
  for (const json& a : j) {
    const std::string w = where + ": added_tokens entry " + a.dump().substr(0, 120);
    check(a.is_object() && a.contains("id") && a["id"].is_number_integer() &&
              a.contains("content") && a["content"].is_string(),
          w + " needs an integer 'id' and a string 'content'");
    AddedToken tok;
    tok.content = a["content"].get<std::string>();
    const int64_t id = a["id"].get<int64_t>();
    check(id >= 0 && id < (int64_t{1} << 30), w + " has an out-of-range id");
    check(!tok.content.empty(), w + " has empty content");
    tok.id = static_cast<int32_t>(id);
    tok.special = bool_field(a, "special", false, w);
    tok.lstrip = bool_field(a, "lstrip", false, w);
    tok.rstrip = bool_field(a, "rstrip", false, w);
    tok.single_word = bool_field(a, "single_word", false, w);
    tok.normalized = bool_field(a, "normalized", !tok.special, w);
    t.added.push_back(std::move(tok));
  }
  const int64_t id_limit = sparse_id_limit(static_cast<int64_t>(t.id_to_token.size() + t.added.size()));
  for (const AddedToken& tok : t.added)
    check(tok.id < id_limit, where + ": added token '" + tok.content.substr(0, 60) + "' has the id " + std::to_string(tok.id) +
                                 " (ids must be below " + std::to_string(id_limit) + " for this vocabulary)");
  for (size_t i = 0; i < t.added.size(); ++i) {
    const AddedToken& tok = t.added[i];
    const auto id = static_cast<size_t>(tok.id);
    if (id >= t.id_to_token.size()) {
      t.id_to_token.resize(id + 1);
      t.id_kind.resize(id + 1, 0);
    }
    t.id_to_token[id] = tok.content;
    t.id_kind[id] = tok.special ? 3 : 2;
    t.token_to_id[tok.content] = tok.id;
    if (tok.normalized && t.nfc) {
      t.normalized_matcher.add(utf8::nfc(tok.content), i);
    } else if (tok.normalized) {
      t.normalized_matcher.add(tok.content, i);
    } else {
      t.raw_matcher.add(tok.content, i);
    }
  }
}

std::string config_token(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return "";
}

}  // namespace

Tokenizer Tokenizer::from_json_text(const std::string& tokenizer_json, const std::string& config_json,
                                    const std::string& origin) {
  auto t = std::make_shared<Impl>();
  t->origin = origin;
  tokenizer_json::Tables tables;
  const json j = tokenizer_json::parse(tokenizer_json, origin, tables);
  check(j.is_object(), origin + ": expected a JSON object at top level, found " +
                           std::string(j.type_name()));
  check(j.contains("model"), origin + ": missing field 'model'");
  parse_model(j["model"], tables, *t, origin);
  parse_normalizer(j.value("normalizer", json()), *t, origin);
  bool byte_level = false;
  check(j.contains("pre_tokenizer"), origin + ": missing field 'pre_tokenizer'");
  parse_pre_tokenizer(j["pre_tokenizer"], *t, byte_level, origin);
  check(byte_level, origin + ": pre_tokenizer has no ByteLevel step; only byte-level BPE is supported");
  const json decoder = j.value("decoder", json());
  check(type_of(decoder) == "ByteLevel",
        origin + ": unsupported decoder '" + (decoder.is_null() ? "null" : type_of(decoder)) +
            "' (supported: ByteLevel)");
  const json post = j.value("post_processor", json());
  check(post.is_null() || type_of(post) == "ByteLevel",
        origin + ": unsupported post_processor '" + type_of(post) +
            "' (supported: ByteLevel, null; others add ids to every encoding)");
  parse_added_tokens(j.value("added_tokens", json()), *t, origin);

  t->id_bytes.resize(t->id_to_token.size());
  for (size_t id = 0; id < t->id_to_token.size(); ++id) {
    if (t->id_kind[id] != 0) t->id_bytes[id] = byte_level::decode_token(t->id_to_token[id]);
  }

  if (!config_json.empty()) {
    json c;
    try {
      c = json::parse(config_json);
    } catch (const json::parse_error& e) {
      throw Error(origin + " (tokenizer_config.json): invalid JSON: " + e.what());
    }
    check(c.is_object(), origin + " (tokenizer_config.json): expected a JSON object");
    t->bos_token = config_token(c, "bos_token");
    t->eos_token = config_token(c, "eos_token");
    auto ct = c.find("chat_template");
    if (ct != c.end() && ct->is_string()) {
      t->chat_template = ct->get<std::string>();
    } else if (ct != c.end() && ct->is_array()) {  // named templates: take "default"
      for (const json& named : *ct) {
        if (named.is_object() && named.value("name", std::string()) == "default" &&
            named.contains("template") && named["template"].is_string())
          t->chat_template = named["template"].get<std::string>();
      }
    }
  }
  std::vector<std::string> eos_names;
  if (!t->eos_token.empty()) eos_names.push_back(t->eos_token);
  eos_names.push_back("<|im_end|>");
  eos_names.push_back("<|endoftext|>");
  for (const std::string& name : eos_names) {
    auto it = t->token_to_id.find(name);
    if (it == t->token_to_id.end()) continue;
    const bool configured = name == t->eos_token;
    if (configured || t->id_kind[static_cast<size_t>(it->second)] == 3) t->eos.push_back(it->second);
  }
  std::sort(t->eos.begin(), t->eos.end());
  t->eos.erase(std::unique(t->eos.begin(), t->eos.end()), t->eos.end());
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json) {
  const std::string text = read_file(tokenizer_json);
  const auto config_path = std::filesystem::path(tokenizer_json).parent_path() / "tokenizer_config.json";
  std::string config;
  if (std::filesystem::exists(config_path)) config = read_file(config_path.string());
  return from_json_text(text, config, tokenizer_json);
}

Tokenizer Tokenizer::from_model_dir(const std::string& dir) {
  const auto path = std::filesystem::path(dir) / "tokenizer.json";
  check(std::filesystem::exists(path), "model directory " + dir + " has no tokenizer.json");
  return from_file(path.string());
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  const Impl& t = *impl_;
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  t.split_added(text, t.raw_matcher, parse_special, [&](int token, std::string_view segment) {
    if (token >= 0) {
      ids.push_back(t.added[static_cast<size_t>(token)].id);
      return;
    }
    std::string normalized;
    if (t.nfc && utf8::nfc_spans(segment, normalized)) segment = normalized;
    t.split_added(segment, t.normalized_matcher, parse_special, [&](int token2, std::string_view piece) {
      if (token2 >= 0) {
        ids.push_back(t.added[static_cast<size_t>(token2)].id);
      } else {
        t.pretokenize(piece, 0, ids);
      }
    });
  });
  return ids;
}

std::string Tokenizer::token_bytes(int32_t id, bool skip_special) const {
  const Impl& t = *impl_;
  if (id < 0 || static_cast<size_t>(id) >= t.id_bytes.size()) return "";
  const uint8_t kind = t.id_kind[static_cast<size_t>(id)];
  if (kind == 0 || (skip_special && kind == 3)) return "";
  return t.id_bytes[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  const Impl& t = *impl_;
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= t.id_bytes.size()) continue;
    const uint8_t kind = t.id_kind[static_cast<size_t>(id)];
    if (kind == 0 || (skip_special && kind == 3)) continue;
    bytes += t.id_bytes[static_cast<size_t>(id)];
  }
  if (utf8::is_valid(bytes)) return bytes;
  return utf8::lossy(bytes);
}

size_t Tokenizer::vocab_size() const { return impl_->id_to_token.size(); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->token_to_id.find(token);
  if (it == impl_->token_to_id.end()) return std::nullopt;
  return it->second;
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= impl_->id_to_token.size()) return "";
  return impl_->id_to_token[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->id_kind.size() &&
         impl_->id_kind[static_cast<size_t>(id)] == 3;
}

std::vector<int32_t> Tokenizer::eos_ids() const { return impl_->eos; }
bool Tokenizer::has_chat_template() const { return !impl_->chat_template.empty(); }
const std::string& Tokenizer::chat_template() const { return impl_->chat_template; }

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt,
                                           const std::map<std::string, bool>& flags) const {
  check(has_chat_template(), impl_->origin + ": tokenizer_config.json has no chat_template");
  ChatTemplateContext context;
  context.bos_token = impl_->bos_token;
  context.eos_token = impl_->eos_token;
  context.add_generation_prompt = add_generation_prompt;
  context.flags = flags;
  return render_chat_template(impl_->chat_template, messages, context);
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id, skip_special_);
  std::string out;
  const size_t keep = utf8::append_lossy_prefix(pending_, out);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  utf8::append_lossy(pending_, out);
  pending_.clear();
  return out;
}

}  // namespace parscale
