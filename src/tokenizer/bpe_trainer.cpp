#include "tokenizer/bpe_trainer.h"

#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace parscale {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr const char* kQwenSplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

uint64_t pack(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// Counts pre-tokenized pieces of one text into `counts`.
void count_pieces(std::string_view raw, const std::vector<std::string>& specials, const SplitRegex& regex,
                  std::unordered_map<std::string, int64_t>& counts) {
  std::string repaired;
  if (!utf8::is_valid(raw)) {
    repaired = utf8::lossy(raw);
    raw = repaired;
  }
  std::vector<std::pair<size_t, size_t>> ranges;
  auto count_segment = [&](std::string_view segment) {
    std::string normalized;
    if (utf8::nfc_spans(segment, normalized)) segment = normalized;
    ranges.clear();
    regex.split_isolated(segment, ranges);
    for (auto [b, e] : ranges) ++counts[std::string(segment.substr(b, e - b))];
  };
  size_t start = 0;
  while (start < raw.size()) {
    size_t best = std::string_view::npos, best_len = 0;
    for (const std::string& s : specials) {  // leftmost-longest special token
      const size_t at = raw.find(s, start);
      if (at < best || (at == best && s.size() > best_len)) best = at, best_len = s.size();
    }
    if (best == std::string_view::npos) break;
    if (best > start) count_segment(raw.substr(start, best - start));
    start = best + best_len;
  }
  if (start < raw.size()) count_segment(raw.substr(start));
}

struct Candidate {
  int64_t count;
  int32_t left, right;
  // priority_queue pops the largest: higher count first, then the smaller pair.
  bool operator<(const Candidate& o) const {
    if (count != o.count) return count < o.count;
    if (left != o.left) return left > o.left;
    return right > o.right;
  }
};

bool segment_match(const std::vector<std::string>& pat, size_t pi, const std::vector<std::string>& path, size_t si) {
  if (pi == pat.size()) return si == path.size();
  if (pat[pi] == "**") {
    for (size_t k = si; k <= path.size(); ++k)
      if (segment_match(pat, pi + 1, path, k)) return true;
    return false;
  }
  if (si == path.size()) return false;
  if (fnmatch(pat[pi].c_str(), path[si].c_str(), FNM_PERIOD) != 0) return false;
  return segment_match(pat, pi + 1, path, si + 1);
}

std::vector<std::string> split_path(const std::string& p) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= p.size()) {
    const size_t slash = p.find('/', start);
    const std::string part = p.substr(start, (slash == std::string::npos ? p.size() : slash) - start);
    if (!part.empty() && part != ".") parts.push_back(part);
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return parts;
}

}  // namespace

const std::string& chatml_template() {
  static const std::string t =
      "{%- for message in messages %}\n"
      "    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
      "{%- endfor %}\n"
      "{%- if add_generation_prompt %}\n"
      "    {{- '<|im_start|>assistant\\n' }}\n"
      "{%- endif %}\n";
  return t;
}

std::vector<std::string> expand_file_patterns(const std::vector<std::string>& patterns) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  for (const std::string& pattern : patterns) {
    if (pattern.find_first_of("*?[") == std::string::npos) {
      check(fs::is_regular_file(pattern), "--files: " + pattern + " is not a readable file");
      files.push_back(pattern);
      continue;
    }
    // Base directory: the segments before the first one with a wildcard.
    const std::vector<std::string> segs = split_path(pattern);
    const bool absolute = !pattern.empty() && pattern[0] == '/';
    std::string base = absolute ? "/" : "";
    size_t first_wild = 0;
    while (first_wild < segs.size() && segs[first_wild].find_first_of("*?[") == std::string::npos) {
      base += segs[first_wild] + "/";
      ++first_wild;
    }
    if (base.empty()) base = "./";
    const std::vector<std::string> rest(segs.begin() + static_cast<ptrdiff_t>(first_wild), segs.end());
    size_t found = 0;
    std::error_code ec;
    if (fs::is_directory(base, ec)) {
      for (auto it = fs::recursive_directory_iterator(base, fs::directory_options::skip_permission_denied, ec);
           it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) break;
        if (!it->is_regular_file(ec)) continue;
        const std::string rel = fs::relative(it->path(), base, ec).generic_string();
        if (segment_match(rest, 0, split_path(rel), 0)) {
          files.push_back(it->path().generic_string());
          ++found;
        }
      }
    }
    check(found > 0, "--files: pattern " + pattern + " matches no file");
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  return files;
}

BpeTrainingResult train_bpe(const std::vector<std::string>& texts, const BpeTrainerOptions& options) {
  const size_t n_special = options.special_tokens.size();
  check(options.vocab_size >= 256 + n_special,
        "tokenizer-train: --vocab-size " + std::to_string(options.vocab_size) + " is below the minimum " +
            std::to_string(256 + n_special) + " (256 byte symbols + " + std::to_string(n_special) + " special tokens)");
  BpeTrainingResult result;
  const SplitRegex regex(kQwenSplitPattern, "tokenizer-train");

  // 1. Piece counts (per-thread maps, merged; sums do not depend on scheduling).
  std::unordered_map<std::string, int64_t> counts;
  const int n_texts = static_cast<int>(texts.size());
#pragma omp parallel
  {
    std::unordered_map<std::string, int64_t> local;
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n_texts; ++i) count_pieces(texts[static_cast<size_t>(i)], options.special_tokens, regex, local);
#pragma omp critical
    for (auto& [piece, c] : local) counts[piece] += c;
  }
  for (const std::string& t : texts) result.bytes_read += t.size();
  result.distinct_pieces = counts.size();

  // 2. Words as byte-symbol id sequences, in a canonical (sorted) order.
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  counts.clear();
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> word_count(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (unsigned char c : sorted[w].first) words[w].push_back(c);
    word_count[w] = sorted[w].second;
  }
  sorted.clear();

  std::vector<std::string> token_bytes(256);
  for (int b = 0; b < 256; ++b) token_bytes[static_cast<size_t>(b)] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, int32_t> id_of_bytes;
  for (int b = 0; b < 256; ++b) id_of_bytes[token_bytes[static_cast<size_t>(b)]] = b;

  // 3. Pair statistics.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words that may contain it
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t p = pack(s[i], s[i + 1]);
      pair_count[p] += word_count[w];
      auto& list = where[p];
      if (list.empty() || list.back() != w) list.push_back(static_cast<uint32_t>(w));
    }
  }
  std::priority_queue<Candidate> heap;
  for (const auto& [p, c] : pair_count)
    heap.push({c, static_cast<int32_t>(p >> 32), static_cast<int32_t>(p & 0xFFFFFFFFu)});

  // 4. Merge loop.
  std::vector<std::pair<int32_t, int32_t>> merges;
  const size_t target_tokens = options.vocab_size - n_special;
  std::vector<uint64_t> increased;
  while (token_bytes.size() < target_tokens && !heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    const uint64_t p = pack(top.left, top.right);
    auto pc = pair_count.find(p);
    const int64_t current = pc == pair_count.end() ? 0 : pc->second;
    if (current != top.count) {  // stale entry: re-queue with the current count
      if (current > 0 && current < top.count) heap.push({current, top.left, top.right});
      continue;
    }
    if (current < options.min_pair_count) break;
    const std::string merged_bytes = token_bytes[static_cast<size_t>(top.left)] + token_bytes[static_cast<size_t>(top.right)];
    int32_t merged;
    auto existing = id_of_bytes.find(merged_bytes);
    if (existing != id_of_bytes.end()) {
      merged = existing->second;
    } else {
      merged = static_cast<int32_t>(token_bytes.size());
      token_bytes.push_back(merged_bytes);
      id_of_bytes.emplace(merged_bytes, merged);
    }
    merges.emplace_back(top.left, top.right);

    std::vector<uint32_t> affected = std::move(where[p]);
    where.erase(p);
    std::sort(affected.begin(), affected.end());
    affected.erase(std::unique(affected.begin(), affected.end()), affected.end());
    increased.clear();
    for (uint32_t w : affected) {
      std::vector<int32_t>& s = words[w];
      const int64_t wc = word_count[w];
      bool has = false;
      for (size_t i = 0; i + 1 < s.size() && !has; ++i) has = s[i] == top.left && s[i + 1] == top.right;
      if (!has) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_count[pack(s[i], s[i + 1])] -= wc;
      std::vector<int32_t> out;
      out.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == top.left && s[i + 1] == top.right) {
          out.push_back(merged);
          i += 2;
        } else {
          out.push_back(s[i++]);
        }
      }
      s.swap(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t q = pack(s[i], s[i + 1]);
        pair_count[q] += wc;
        if (s[i] == merged || s[i + 1] == merged) {
          auto& list = where[q];
          if (list.empty() || list.back() != w) list.push_back(w);
          increased.push_back(q);
        }
      }
    }
    pair_count.erase(p);
    std::sort(increased.begin(), increased.end());
    increased.erase(std::unique(increased.begin(), increased.end()), increased.end());
    for (uint64_t q : increased) {
      const int64_t c = pair_count[q];
      if (c > 0) heap.push({c, static_cast<int32_t>(q >> 32), static_cast<int32_t>(q & 0xFFFFFFFFu)});
    }
  }
  result.merges = merges.size();

  // 5. tokenizer.json
  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < token_bytes.size(); ++id) vocab[byte_level::encode(token_bytes[id])] = id;
  ordered_json merge_list = ordered_json::array();
  for (const auto& [a, b] : merges)
    merge_list.push_back({byte_level::encode(token_bytes[static_cast<size_t>(a)]),
                          byte_level::encode(token_bytes[static_cast<size_t>(b)])});
  ordered_json added = ordered_json::array();
  for (size_t k = 0; k < n_special; ++k) {
    ordered_json t;
    t["id"] = token_bytes.size() + k;
    t["content"] = options.special_tokens[k];
    t["single_word"] = false;
    t["lstrip"] = false;
    t["rstrip"] = false;
    t["normalized"] = false;
    t["special"] = true;
    added.push_back(t);
  }
  result.vocab_size = token_bytes.size() + n_special;
  ordered_json byte_level_step = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  ordered_json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "NFC"}};
  ordered_json split = {{"type", "Split"}, {"pattern", {{"Regex", kQwenSplitPattern}}}, {"behavior", "Isolated"}, {"invert", false}};
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level_step}}};
  j["post_processor"] = byte_level_step;
  j["decoder"] = byte_level_step;
  ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = "";
  model["end_of_word_suffix"] = "";
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  model["vocab"] = vocab;
  model["merges"] = merge_list;
  j["model"] = model;
  result.tokenizer_json = j.dump(2) + "\n";

  // 6. tokenizer_config.json
  ordered_json c;
  c["add_bos_token"] = false;
  c["add_prefix_space"] = false;
  ordered_json decoder_map = ordered_json::object();
  for (const auto& t : added) {
    decoder_map[std::to_string(t["id"].get<size_t>())] = {{"content", t["content"]}, {"lstrip", false}, {"normalized", false},
                                                           {"rstrip", false}, {"single_word", false}, {"special", true}};
  }
  c["added_tokens_decoder"] = decoder_map;
  c["bos_token"] = nullptr;
  c["chat_template"] = chatml_template();
  c["clean_up_tokenization_spaces"] = false;
  c["eos_token"] = options.eos_token;
  c["errors"] = "replace";
  c["model_max_length"] = 32768;
  c["pad_token"] = options.pad_token;
  c["split_special_tokens"] = false;
  c["tokenizer_class"] = "Qwen2Tokenizer";
  c["unk_token"] = nullptr;
  result.tokenizer_config_json = c.dump(2) + "\n";
  return result;
}

}  // namespace parscale
