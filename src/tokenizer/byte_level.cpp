#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace parscale::byte_level {
namespace {

struct Alphabet {
  // The 256 symbols are code points below 512 (printable Latin-1 bytes map to themselves, the
  // others to 256 + i): byte_of[cp] is the byte of symbol cp, or -1.
  static constexpr char32_t kMaxSymbol = 512;
  std::array<std::string, 256> symbols;
  std::array<int16_t, kMaxSymbol> byte_of;
  Alphabet() {
    byte_of.fill(-1);
    char32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : extra++;
      utf8::append_code_point(cp, symbols[static_cast<size_t>(b)]);
      byte_of[cp] = static_cast<int16_t>(b);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

const std::string& symbol(uint8_t b) { return alphabet().symbols[b]; }

std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) out += symbol(c);
  return out;
}

std::string decode_token(std::string_view token) {
  // Every symbol is ASCII or a two-byte UTF-8 sequence (code points below 512), so anything else
  // (longer or malformed sequences, unknown code points) means the token is not byte-level encoded
  // and is returned as it is.
  const Alphabet& a = alphabet();
  std::string out;
  out.reserve(token.size());
  for (size_t i = 0; i < token.size();) {
    const auto c = static_cast<unsigned char>(token[i]);
    char32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0u) == 0xC0u && i + 1 < token.size() && (static_cast<unsigned char>(token[i + 1]) & 0xC0u) == 0x80u) {
      cp = static_cast<char32_t>((c & 0x1Fu) << 6 | (static_cast<unsigned char>(token[i + 1]) & 0x3Fu));
      if (cp < 0x80) return std::string(token);  // overlong: not valid UTF-8
      i += 2;
    } else {
      return std::string(token);
    }
    if (cp >= Alphabet::kMaxSymbol || a.byte_of[cp] < 0) return std::string(token);
    out.push_back(static_cast<char>(a.byte_of[cp]));
  }
  return out;
}

}  // namespace parscale::byte_level
