// GPT-2 byte-level alphabet: every byte 0..255 is shown as one printable code point
// (printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order).
// BPE vocabularies of byte-level models are written in this alphabet.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace parscale::byte_level {

// UTF-8 of the code point that stands for byte b.
const std::string& symbol(uint8_t b);
// Byte-level spelling of raw bytes (concatenation of symbol(b)).
std::string encode(std::string_view bytes);
// The ByteLevel decoder applied to one token: if every code point of `token` is a byte-level
// symbol, the bytes they stand for; otherwise the token's own UTF-8 bytes (what HF does).
std::string decode_token(std::string_view token);

}  // namespace parscale::byte_level
