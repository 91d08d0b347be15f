// UTF-8 helpers shared by the tokenizer: validation with U+FFFD replacement (maximal ill-formed
// subpart rule: Unicode ch.3 "U+FFFD substitution of maximal subparts", as used by WHATWG
// TextDecoder, Python errors="replace" and Rust String::from_utf8_lossy), code point access and
// the few Unicode predicates the added-token matcher needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace parscale::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i]:
//   > 0 : a complete valid character of that many bytes;
//   = 0 : a valid but truncated prefix reaching the end of s (more bytes could complete it);
//   < 0 : ill-formed; -n means the maximal ill-formed subpart is n bytes (replace by one U+FFFD).
int sequence_length(std::string_view s, size_t i);

bool is_valid(std::string_view s);

// Appends s to out with every maximal ill-formed subpart (and a truncated tail) replaced by U+FFFD.
void append_lossy(std::string_view s, std::string& out);
inline std::string lossy(std::string_view s) {
  std::string out;
  append_lossy(s, out);
  return out;
}

// Streaming form: appends the lossy decoding of the complete part of s and returns how many bytes
// at the end were left unconsumed (a valid but truncated character prefix, 0..3 bytes).
size_t append_lossy_prefix(std::string_view s, std::string& out);

// Decodes the code point at s[i] (s must be valid UTF-8); advances i.
char32_t next_code_point(std::string_view s, size_t& i);
// Code point ending just before position `end` (s valid, end > 0).
char32_t previous_code_point(std::string_view s, size_t end, size_t* start = nullptr);
void append_code_point(char32_t cp, std::string& out);

// Unicode White_Space property (what Rust's char::is_whitespace and regex \s use).
bool is_white_space(char32_t cp);
// Word character of HF's single_word check (regex \w): letters, numbers, marks, connector
// punctuation such as '_' (general categories L*, N*, M*, Pc).
bool is_word_char(char32_t cp);

// NFC (utf8proc) of valid UTF-8; NUL bytes are ordinary characters.
std::string nfc(std::string_view s);
// NFC of `s` into `out`, touching only spans that can change; returns false (out untouched) when
// `s` is NFC by that cheap sufficient test.
bool nfc_spans(std::string_view s, std::string& out);

}  // namespace parscale::utf8
