// PCRE2 (JIT) wrapper for the pre-tokenizer's split patterns, which HF writes in Rust `regex`
// syntax. The translation keeps Rust semantics where PCRE2 differs: `\s` is the Unicode
// White_Space property in Rust (it includes U+0085), so it is rewritten as that explicit class;
// \p{..} classes, (?i:..), lookahead and leftmost-first alternation mean the same in both.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parscale {

class SplitRegex {
 public:
  // `rust_pattern` in Rust regex syntax; throws parscale::Error when it cannot be translated or
  // compiled (the message names `where`).
  SplitRegex(const std::string& rust_pattern, const std::string& where);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // HF Split behaviour "Isolated": appends [begin, end) byte ranges (relative to `text`) that
  // cover `text` exactly: every match is one range and every gap between matches is one range.
  // `text` must be valid UTF-8.
  void split_isolated(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;

  // Translation of a Rust-syntax pattern to PCRE2 syntax (exposed for tests).
  static std::string translate(const std::string& rust_pattern, const std::string& where);

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace parscale
