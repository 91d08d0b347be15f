#include "tokenizer/byte_level.h"

#include <array>
#include <unordered_map>

#include "tokenizer/utf8.h"

namespace parscale::byte_level {
namespace {

struct Alphabet {
  std::array<std::string, 256> symbols;
  std::unordered_map<char32_t, uint8_t> byte_of;
  Alphabet() {
    char32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : extra++;
      utf8::append_code_point(cp, symbols[static_cast<size_t>(b)]);
      byte_of[cp] = static_cast<uint8_t>(b);
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
  const Alphabet& a = alphabet();
  std::string out;
  if (!utf8::is_valid(token)) return std::string(token);
  for (size_t i = 0; i < token.size();) {
    auto it = a.byte_of.find(utf8::next_code_point(token, i));
    if (it == a.byte_of.end()) return std::string(token);
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

}  // namespace parscale::byte_level
