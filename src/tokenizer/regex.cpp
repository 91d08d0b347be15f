#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer/regex.h"

#include <pcre2.h>

#include "core/error.h"

namespace parscale {
namespace {

// Unicode White_Space as PCRE2 class items (Rust regex `\s`).
constexpr const char* kWhiteSpaceItems =
    "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

// Per-thread JIT stack and match context: a JIT stack may only be used by one thread at a time.
struct ThreadMatchState {
  pcre2_jit_stack* stack = nullptr;
  pcre2_match_context* context = nullptr;
  ThreadMatchState() {
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, nullptr);
    if (context && stack) pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~ThreadMatchState() {
    if (stack) pcre2_jit_stack_free(stack);
    if (context) pcre2_match_context_free(context);
  }
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256] = {0};
  // Returns the message length, or a negative value (unknown code, or truncated) in which case
  // the buffer may hold nothing usable: fall back to the number.
  const int n = pcre2_get_error_message(code, buffer, sizeof buffer);
  if (n < 0) return "PCRE2 error " + std::to_string(code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n)) + " (PCRE2 error " + std::to_string(code) + ")";
}

}  // namespace

std::string SplitRegex::translate(const std::string& p, const std::string& where) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      check(i + 1 < p.size(), where + ": regex ends with a lone backslash: " + p);
      const char e = p[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceItems) : "[" + std::string(kWhiteSpaceItems) + "]";
      } else if (e == 'S') {
        check(!in_class, where + ": regex uses \\S inside a character class, unsupported: " + p);
        out += "[^" + std::string(kWhiteSpaceItems) + "]";
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (in_class) {
      if (c == '[') {
        // Only POSIX classes like [:alpha:] are the same in both dialects; Rust's nested classes
        // and set operations are not PCRE2 syntax.
        check(i + 1 < p.size() && p[i + 1] == ':',
              where + ": regex uses a nested character class or set operation, unsupported: " + p);
        const size_t close = p.find(":]", i + 2);
        check(close != std::string::npos, where + ": unterminated [: in regex: " + p);
        out.append(p, i, close + 2 - i);
        i = close + 1;
        continue;
      }
      check(!(c == '&' && i + 1 < p.size() && p[i + 1] == '&') &&
                !(c == '-' && i + 1 < p.size() && p[i + 1] == '-') &&
                !(c == '~' && i + 1 < p.size() && p[i + 1] == '~'),
            where + ": regex uses a character-class set operation, unsupported: " + p);
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal in both dialects.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    out += c;
  }
  check(!in_class, where + ": unterminated character class in regex: " + p);
  return out;
}

SplitRegex::SplitRegex(const std::string& rust_pattern, const std::string& where) {
  const std::string pattern = translate(rust_pattern, where);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  check(code != nullptr, where + ": cannot compile regex " + rust_pattern + ": " +
                             pcre2_message(error_code) + " at offset " +
                             std::to_string(error_offset));
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

SplitRegex::~SplitRegex() {
  if (code_) pcre2_code_free(static_cast<pcre2_code*>(code_));
}

void SplitRegex::split_isolated(std::string_view text,
                                std::vector<std::pair<size_t, size_t>>& out) const {
  if (text.empty()) return;
  auto* code = static_cast<pcre2_code*>(code_);
  ThreadMatchState& state = thread_match_state();
  struct MatchData {
    pcre2_match_data* md;
    ~MatchData() { pcre2_match_data_free(md); }
  } data{pcre2_match_data_create(1, nullptr)};
  check(data.md != nullptr, "regex: out of memory creating match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0, last = 0;  // search position; end of the last range emitted
  while (pos < n) {
    int rc = jit_ ? pcre2_jit_match(code, subject, n, pos, 0, data.md, state.context)
                  : pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, data.md, state.context);
    if (jit_ && rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // The JIT could not run this match (e.g. its stack could not be had or grown): the
      // interpreter computes the same match with heap memory.
      rc = pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, data.md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    check(rc >= 0, "regex: match failed: " + pcre2_message(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.md);
    size_t begin = ov[0], end = ov[1];
    if (end == begin) {  // empty match: not a piece; step over one character
      size_t next = begin + 1;
      while (next < n && (static_cast<unsigned char>(text[next]) & 0xC0) == 0x80) ++next;
      pos = next;
      continue;
    }
    if (begin > last) out.emplace_back(last, begin);
    out.emplace_back(begin, end);
    last = pos = end;
  }
  if (last < n) out.emplace_back(last, n);
}

}  // namespace parscale
