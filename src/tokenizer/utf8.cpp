#include "tokenizer/utf8.h"

#include <utf8proc.h>

#include <cstdlib>

#include "core/error.h"

namespace parscale::utf8 {

int sequence_length(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  int need;               // continuation bytes required
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the first continuation byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    need = 2;
  } else if (b0 == 0xED) {
    need = 2, hi = 0x9F;  // excludes surrogates
  } else if (b0 == 0xF0) {
    need = 3, lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    need = 3;
  } else if (b0 == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    return -1;  // 80..C1, F5..FF never start a character
  }
  for (int k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;  // valid so far, truncated
    const auto b = static_cast<unsigned char>(s[i + k]);
    const unsigned char l = (k == 1) ? lo : 0x80, h = (k == 1) ? hi : 0xBF;
    if (b < l || b > h) return -k;
  }
  return need + 1;
}

bool is_valid(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const int len = sequence_length(s, i);
    if (len <= 0) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

size_t append_lossy_prefix(std::string_view s, std::string& out) {
  size_t i = 0, run = 0;  // [run, i) is valid text not yet appended
  const size_t n = s.size();
  while (i < n) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const int len = sequence_length(s, i);
    if (len > 0) {
      i += static_cast<size_t>(len);
      continue;
    }
    out.append(s.substr(run, i - run));
    if (len == 0) return n - i;  // truncated tail stays pending
    out.append(kReplacement);
    i += static_cast<size_t>(-len);
    run = i;
  }
  out.append(s.substr(run, i - run));
  return 0;
}

void append_lossy(std::string_view s, std::string& out) {
  if (append_lossy_prefix(s, out) > 0) out.append(kReplacement);
}

char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int len = b0 >= 0xF0 ? 4 : b0 >= 0xE0 ? 3 : 2;
  char32_t cp = b0 & (0x7F >> len);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += static_cast<size_t>(len);
  return cp;
}

char32_t previous_code_point(std::string_view s, size_t end, size_t* start) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  if (start) *start = b;
  size_t i = b;
  return next_code_point(s, i);
}

void append_code_point(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_white_space(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_word_char(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
           cp == '_';
  }
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// NFC of valid UTF-8 `s` (utf8proc, explicit length so NUL bytes are ordinary characters).
std::string nfc(std::string_view s) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                   static_cast<utf8proc_ssize_t>(s.size()), &out,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) throw Error(std::string("NFC normalization failed: ") + utf8proc_errmsg(n));
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// NFC of valid UTF-8 `s` into `out`; returns false (and leaves `out` alone) when `s` is already
// NFC by a cheap sufficient test. Only spans that contain a code point >= U+0300 (lead bytes
// >= 0xCC; below U+0300 there are no combining marks and no composing starters) are normalized,
// each widened to the ASCII characters around it: an ASCII character has combining class 0 and
// never composes with what precedes it, so NFC(a + b) = NFC(a) + NFC(b) at such a boundary.
bool nfc_spans(std::string_view s, std::string& out) {
  size_t i = 0;
  while (i < s.size() && static_cast<unsigned char>(s[i]) < 0xCC) ++i;
  if (i == s.size()) return false;
  out.clear();
  out.reserve(s.size() + 16);
  size_t copied = 0;  // s[0, copied) is already in out
  while (i < s.size()) {
    size_t begin = i;  // back to the preceding ASCII character (a possible composition base)
    while (begin > copied && static_cast<unsigned char>(s[begin - 1]) >= 0x80) --begin;
    if (begin > copied) --begin;
    size_t end = i;
    while (end < s.size() && static_cast<unsigned char>(s[end]) >= 0x80) ++end;
    out.append(s.substr(copied, begin - copied));
    out += nfc(s.substr(begin, end - begin));
    copied = end;
    i = end;
    while (i < s.size() && static_cast<unsigned char>(s[i]) < 0xCC) ++i;
  }
  out.append(s.substr(copied));
  return true;
}

}  // namespace parscale::utf8
