// Recursive-descent JSON reader (see tokenizer_json.h). Strings are scanned a run of plain bytes at
// a time; the vocab and merges tables append to one string pool, so a 150k-entry vocabulary costs
// no allocation per entry.
#include "tokenizer/tokenizer_json.h"

#include <array>
#include <charconv>
#include <cstring>

#include "core/error.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace parscale::tokenizer_json {

namespace {

using json = nlohmann::json;

constexpr int kMaxDepth = 512;

// Bytes a string copies as they are: printable ASCII other than '"' and '\\'.
constexpr std::array<bool, 256> plain_bytes() {
  std::array<bool, 256> t{};
  for (int c = 0x20; c < 0x80; ++c) t[static_cast<size_t>(c)] = c != '"' && c != '\\';
  return t;
}
constexpr std::array<bool, 256> kPlain = plain_bytes();

class Reader {
 public:
  Reader(std::string_view text, const std::string& origin, Tables& tables)
      : p_(text.data()), begin_(text.data()), end_(text.data() + text.size()), origin_(origin), t_(tables) {}

  json document() {
    ws();
    json v = value(0, Where::Top);
    ws();
    if (p_ != end_) fail("unexpected text after the top-level value");
    return v;
  }

 private:
  enum class Where { Top, Other, TopObject, Model };

  [[noreturn]] void fail(const std::string& why) const {
    throw Error(origin_ + ": invalid JSON at byte " + std::to_string(p_ - begin_) + ": " + why);
  }
  void ws() {
    // A pretty-printed tokenizer.json is half indentation: runs of spaces are skipped 16 bytes at
    // a time where SSE2 is there.
    for (;;) {
#if defined(__SSE2__)
      if (end_ - p_ >= 16) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p_));
        const unsigned other = static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(' ')))) ^ 0xFFFFu;
        if (other == 0) {
          p_ += 16;
          continue;
        }
        p_ += __builtin_ctz(other);
      }
#endif
      if (p_ == end_ || (*p_ != ' ' && *p_ != '\n' && *p_ != '\r' && *p_ != '\t')) return;
      ++p_;
    }
  }
  void expect(char c) {
    ws();
    if (p_ == end_ || *p_ != c) fail(std::string("expected '") + c + "'");
    ++p_;
  }
  char peek() {
    ws();
    if (p_ == end_) fail("unexpected end of input");
    return *p_;
  }

  // Appends the string at p_ (opening quote included) to out, unescaped and UTF-8 checked. Runs of
  // plain bytes and valid UTF-8 sequences are appended in one piece.
  void string_into(std::string& out) {
    if (p_ == end_ || *p_ != '"') fail("expected a string");
    ++p_;
    const char* run = p_;
    for (;;) {
      while (p_ != end_ && kPlain[static_cast<unsigned char>(*p_)]) ++p_;
      if (p_ == end_) fail("unterminated string");
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        out.append(run, static_cast<size_t>(p_ - run));
        ++p_;
        return;
      }
      if (c == '\\') {
        out.append(run, static_cast<size_t>(p_ - run));
        escape(out);
        run = p_;
        continue;
      }
      if (c < 0x20) fail("control character in a string");
      utf8_sequence();
    }
  }
  // Steps over one multi-byte UTF-8 sequence at p_ (fails unless it is a valid, shortest one).
  void utf8_sequence() {
    const auto c = static_cast<unsigned char>(*p_);
    int n;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) n = 1, cp = c & 0x1Fu;
    else if (c >= 0xE0 && c <= 0xEF) n = 2, cp = c & 0x0Fu;
    else if (c >= 0xF0 && c <= 0xF4) n = 3, cp = c & 0x07u;
    else fail("invalid UTF-8 in a string");
    if (end_ - p_ <= n) fail("invalid UTF-8 in a string");
    for (int i = 1; i <= n; ++i) {
      const auto d = static_cast<unsigned char>(p_[i]);
      if ((d & 0xC0u) != 0x80u) fail("invalid UTF-8 in a string");
      cp = cp << 6 | (d & 0x3Fu);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      fail("invalid UTF-8 in a string");
    p_ += n + 1;
  }
  uint32_t hex4() {
    if (end_ - p_ < 4) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = p_[i];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else fail("invalid \\u escape");
    }
    p_ += 4;
    return v;
  }
  void escape(std::string& out) {
    ++p_;  // the backslash
    if (p_ == end_) fail("unterminated string");
    const char c = *p_++;
    switch (c) {
      case '"': out += '"'; return;
      case '\\': out += '\\'; return;
      case '/': out += '/'; return;
      case 'b': out += '\b'; return;
      case 'f': out += '\f'; return;
      case 'n': out += '\n'; return;
      case 'r': out += '\r'; return;
      case 't': out += '\t'; return;
      case 'u': break;
      default: --p_; fail("invalid escape in a string");
    }
    uint32_t cp = hex4();
    if (cp >= 0xDC00 && cp <= 0xDFFF) fail("unpaired low surrogate in a \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("unpaired high surrogate in a \\u escape");
      p_ += 2;
      const uint32_t lo = hex4();
      if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired high surrogate in a \\u escape");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  json number() {
    const char* s = p_;
    bool is_float = false;
    if (p_ != end_ && *p_ == '-') ++p_;
    if (p_ == end_ || *p_ < '0' || *p_ > '9') fail("invalid number");
    if (*p_ == '0') ++p_;
    else
      while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    if (p_ != end_ && *p_ == '.') {
      is_float = true;
      ++p_;
      if (p_ == end_ || *p_ < '0' || *p_ > '9') fail("invalid number");
      while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      is_float = true;
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ == end_ || *p_ < '0' || *p_ > '9') fail("invalid number");
      while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (!is_float) {
      if (*s == '-') {
        int64_t v;
        if (std::from_chars(s, p_, v).ec == std::errc()) return json(v);
      } else {
        uint64_t v;
        if (std::from_chars(s, p_, v).ec == std::errc()) return json(v);
      }
    }
    double d;  // (integers out of the 64-bit range become floats, as in nlohmann::json)
    if (std::from_chars(s, p_, d).ec != std::errc()) fail("number out of range");
    return json(d);
  }

  void literal(const char* word) {
    const size_t n = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < n || std::memcmp(p_, word, n) != 0) fail("invalid literal");
    p_ += n;
  }

  json value(int depth, Where where) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
    switch (peek()) {
      case '{': return object(depth, where == Where::Top ? Where::TopObject : where);
      case '[': return array(depth);
      case '"': {
        std::string s;
        string_into(s);
        return json(std::move(s));
      }
      case 't': literal("true"); return json(true);
      case 'f': literal("false"); return json(false);
      case 'n': literal("null"); return json(nullptr);
      default: return number();
    }
  }

  // where: TopObject (the document; its "model" is read as Model), Model (its "vocab" and
  // "merges" go to the tables), Other.
  json object(int depth, Where where) {
    ++p_;  // '{'
    json obj = json::object();
    if (peek() == '}') {
      ++p_;
      return obj;
    }
    std::string key;
    for (;;) {
      ws();
      key.clear();
      string_into(key);
      expect(':');
      const char next = peek();
      if (where == Where::Model && key == "vocab" && next == '{') {
        vocab(depth + 1);
        obj.erase("vocab");
      } else if (where == Where::Model && key == "merges" && next == '[') {
        merges(depth + 1);
        obj.erase("merges");
      } else {
        obj[key] = value(depth + 1, where == Where::TopObject && key == "model" ? Where::Model : Where::Other);
      }
      const char c = peek();
      ++p_;
      if (c == '}') return obj;
      if (c != ',') {
        --p_;
        fail("expected ',' or '}'");
      }
    }
  }

  json array(int depth) {
    ++p_;  // '['
    json arr = json::array();
    if (peek() == ']') {
      ++p_;
      return arr;
    }
    for (;;) {
      arr.push_back(value(depth + 1, Where::Other));
      const char c = peek();
      ++p_;
      if (c == ']') return arr;
      if (c != ',') {
        --p_;
        fail("expected ',' or ']'");
      }
    }
  }

  Tables::Span pooled_string() {
    const size_t off = t_.pool.size();
    string_into(t_.pool);
    if (t_.pool.size() > UINT32_MAX) fail("token strings longer than 4 GB in all");
    return {static_cast<uint32_t>(off), static_cast<uint32_t>(t_.pool.size() - off)};
  }

  // model.vocab: {"token": id, ...}
  void vocab(int depth) {
    ++p_;  // '{'
    t_.vocab_seen = true;
    t_.vocab.clear();
    t_.vocab_error.clear();
    if (peek() == '}') {
      ++p_;
      return;
    }
    for (;;) {
      ws();
      const Tables::Span key = pooled_string();
      expect(':');
      const char next = peek();
      bool ok = false;
      int64_t id = -1;
      if (next >= '0' && next <= '9') {  // the common case: a plain non-negative integer
        const char* s = p_;
        while (p_ != end_ && *p_ >= '0' && *p_ <= '9') ++p_;
        if (p_ != end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) {  // a float: re-read as a number
          p_ = s;
          number();
        } else if ((*s != '0' || p_ - s == 1) && p_ - s <= 10) {
          std::from_chars(s, p_, id);
          ok = id < (int64_t{1} << 30);
        } else if (*s == '0') {
          fail("invalid number");  // a leading zero
        }
      } else if (next == '-') {
        number();
      } else {
        value(depth + 1, Where::Other);
      }
      if (ok) {
        t_.vocab.emplace_back(key, static_cast<int32_t>(id));
      } else if (t_.vocab_error.empty()) {
        t_.vocab_error = "model.vocab['" + std::string(t_.str(key)) + "'] must be a non-negative integer id";
      }
      const char c = peek();
      ++p_;
      if (c == '}') return;
      if (c != ',') {
        --p_;
        fail("expected ',' or '}'");
      }
    }
  }

  // Reads ["left", "right"] at p_ into the pool and the merges; false (nothing consumed) for any
  // other value, which the caller then reads as a JSON value.
  bool pair() {
    const char* start = p_;
    const size_t pool_size = t_.pool.size();
    ++p_;  // '['
    ws();
    if (p_ == end_ || *p_ != '"') return undo(start, pool_size);
    const Tables::Span l = pooled_string();
    ws();
    if (p_ == end_ || *p_ != ',') return undo(start, pool_size);
    ++p_;
    ws();
    if (p_ == end_ || *p_ != '"') return undo(start, pool_size);
    const Tables::Span r = pooled_string();
    ws();
    if (p_ == end_ || *p_ != ']') return undo(start, pool_size);
    ++p_;
    t_.merges.push_back({l, r});
    return true;
  }
  bool undo(const char* start, size_t pool_size) {
    p_ = start;
    t_.pool.resize(pool_size);
    return false;
  }

  // model.merges: ["left right", ...] or [["left", "right"], ...]
  void merges(int depth) {
    ++p_;  // '['
    t_.merges_seen = true;
    t_.merges.clear();
    t_.merges_error.clear();
    if (peek() == ']') {
      ++p_;
      return;
    }
    for (size_t i = 0;; ++i) {
      const char next = peek();
      if (next == '"') {
        const Tables::Span s = pooled_string();
        const std::string_view line = t_.str(s);
        const size_t space = line.find(' ');
        if (space != std::string_view::npos && line.find(' ', space + 1) == std::string_view::npos) {
          t_.merges.push_back({{s.off, static_cast<uint32_t>(space)},
                               {static_cast<uint32_t>(s.off + space + 1), static_cast<uint32_t>(s.len - space - 1)}});
        } else if (t_.merges_error.empty()) {
          t_.merges_error = "model.merges[" + std::to_string(i) + "] = \"" + std::string(line) +
                            "\" is not two tokens separated by one space";
        }
      } else if (next == '[' && pair()) {
        // ["left", "right"] read straight into the pool
      } else {
        const json v = value(depth + 1, Where::Other);
        if (v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string()) {
          const auto& l = v[0].get_ref<const std::string&>();
          const auto& r = v[1].get_ref<const std::string&>();
          const size_t off = t_.pool.size();
          t_.pool += l;
          t_.pool += r;
          t_.merges.push_back({{static_cast<uint32_t>(off), static_cast<uint32_t>(l.size())},
                               {static_cast<uint32_t>(off + l.size()), static_cast<uint32_t>(r.size())}});
        } else if (t_.merges_error.empty()) {
          t_.merges_error = "model.merges[" + std::to_string(i) + "] must be \"a b\" or [\"a\", \"b\"], found " + v.dump();
        }
      }
      const char c = peek();
      ++p_;
      if (c == ']') return;
      if (c != ',') {
        --p_;
        fail("expected ',' or ']'");
      }
    }
  }

  const char* p_;
  const char* begin_;
  const char* end_;
  const std::string& origin_;
  Tables& t_;
};

}  // namespace

json parse(std::string_view text, const std::string& origin, Tables& tables) {
  tables = Tables{};
  tables.pool.reserve(text.size() / 2);
  return Reader(text, origin, tables).document();
}

}  // namespace parscale::tokenizer_json
