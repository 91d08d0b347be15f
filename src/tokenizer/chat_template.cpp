#include "tokenizer/chat_template.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <functional>
#include <map>
#include <memory>
#include <system_error>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace parscale {
namespace {

// ---------------------------------------------------------------------------------------------
// Values (Python semantics as Jinja sees them)

// Resource limits: a template downloaded with a model must not exhaust the stack, memory or
// time. Exceeding one fails with parscale::Error naming the construct and its line.
constexpr int kMaxNesting = 64;                  // nested blocks; expression tree depth
constexpr int kMaxValueDepth = 64;               // lists / dicts nested inside each other
constexpr int64_t kMaxItems = 100000;            // items of one list (range(), +)
constexpr int64_t kMaxIterations = 1000000;      // loop iterations in one rendering
constexpr size_t kMaxStringBytes = 16u << 20;    // bytes of the output and of any one string

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;  // insertion-ordered

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict };
  Kind kind = Kind::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // shared: namespace() objects are mutated through it
  int depth = 0;                // 0 for scalars; 1 + the deepest element for a list / dict
  bool holds_namespace = false; // a namespace() object or a container holding one

  static Value none() { Value v; v.kind = Kind::None; return v; }
  static Value boolean(bool x) { Value v; v.kind = Kind::Bool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = Kind::Int; v.i = x; return v; }
  static Value real(double x) { Value v; v.kind = Kind::Float; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.kind = Kind::String; v.s = std::move(x); return v; }
  static Value of_list(List l) {
    Value v; v.kind = Kind::List;
    for (const Value& x : l) v.depth = std::max(v.depth, x.depth), v.holds_namespace |= x.holds_namespace;
    ++v.depth;
    v.list = std::make_shared<List>(std::move(l)); return v;
  }
  static Value of_dict(Dict d) {
    Value v; v.kind = Kind::Dict;
    for (const auto& [k, x] : d) v.depth = std::max(v.depth, x.depth), v.holds_namespace |= x.holds_namespace;
    ++v.depth;
    v.dict = std::make_shared<Dict>(std::move(d)); return v;
  }
  bool is(Kind k) const { return kind == k; }
  bool defined() const { return kind != Kind::Undefined; }
  bool numeric() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  double as_double() const { return kind == Kind::Float ? f : kind == Kind::Bool ? b : static_cast<double>(i); }
  const Value* get(const std::string& key) const {
    if (kind != Kind::Dict) return nullptr;
    for (const auto& [k, v] : *dict) if (k == key) return &v;
    return nullptr;
  }
};

const char* kind_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "undefined";
    case Value::Kind::None: return "none";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "string";
    case Value::Kind::List: return "list";
    case Value::Kind::Dict: return "dict";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: case Value::Kind::None: return false;
    case Value::Kind::Bool: return v.b;
    case Value::Kind::Int: return v.i != 0;
    case Value::Kind::Float: return v.f != 0;
    case Value::Kind::String: return !v.s.empty();
    case Value::Kind::List: return !v.list->empty();
    case Value::Kind::Dict: return !v.dict->empty();
  }
  return false;
}

std::string format_float(double d) {  // Python repr of floats for the common cases
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e16) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.1f", d);
    return buf;
  }
  char buf[64];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  return buf;
}

std::string repr(const Value& v);

std::string to_output(const Value& v) {  // what {{ v }} prints (Python str())
  switch (v.kind) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::None: return "None";
    case Value::Kind::Bool: return v.b ? "True" : "False";
    case Value::Kind::Int: return std::to_string(v.i);
    case Value::Kind::Float: return format_float(v.f);
    case Value::Kind::String: return v.s;
    default: return repr(v);
  }
}

std::string quote_python(const std::string& s) {
  const bool use_double = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = use_double ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == q) out += std::string("\\") + q;
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else out += c;
  }
  return out + q;
}

std::string repr(const Value& v) {
  if (v.is(Value::Kind::String)) return quote_python(v.s);
  if (v.is(Value::Kind::List)) {
    std::string out = "[";
    for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + repr((*v.list)[k]);
    return out + "]";
  }
  if (v.is(Value::Kind::Dict)) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, x] : *v.dict) {
      out += (first ? "" : ", ") + quote_python(k) + ": " + repr(x);
      first = false;
    }
    return out + "}";
  }
  return to_output(v);
}

void json_string(const std::string& s, std::string& out) {  // ensure_ascii=False
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

// Python json.dumps(v, ensure_ascii=False) with default separators (', ', ': ').
void to_json(const Value& v, std::string& out) {
  switch (v.kind) {
    case Value::Kind::Undefined: case Value::Kind::None: out += "null"; break;
    case Value::Kind::Bool: out += v.b ? "true" : "false"; break;
    case Value::Kind::Int: out += std::to_string(v.i); break;
    case Value::Kind::Float: out += format_float(v.f); break;
    case Value::Kind::String: json_string(v.s, out); break;
    case Value::Kind::List:
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        to_json((*v.list)[k], out);
      }
      out += ']';
      break;
    case Value::Kind::Dict: {
      out += '{';
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        if (!first) out += ", ";
        first = false;
        json_string(k, out);
        out += ": ";
        to_json(x, out);
      }
      out += '}';
      break;
    }
  }
}

bool equal(const Value& a, const Value& b) {
  if (a.numeric() && b.numeric()) return a.as_double() == b.as_double();
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::Undefined: case Value::Kind::None: return true;
    case Value::Kind::String: return a.s == b.s;
    case Value::Kind::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::Kind::Dict:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, x] : *a.dict) {
        const Value* y = b.get(k);
        if (!y || !equal(x, *y)) return false;
      }
      return true;
    default: return false;
  }
}

// ---------------------------------------------------------------------------------------------
// Expression lexer / parser

struct Tok {
  enum Kind { Name, String, Int, Float, Op, End } kind = End;
  std::string text;
  size_t pos = 0;  // offset in the template
};

class Failure {
 public:
  explicit Failure(const std::string& source) : source_(source) {}
  [[noreturn]] void operator()(size_t pos, const std::string& what) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < pos && k < source_.size(); ++k) {
      if (source_[k] == '\n') ++line, col = 1;
      else ++col;
    }
    throw Error("chat template: " + what + " at line " + std::to_string(line) + ", column " +
                std::to_string(col));
  }

 private:
  const std::string& source_;
};

std::vector<Tok> lex_expression(const std::string& src, size_t begin, size_t end, const Failure& fail) {
  std::vector<Tok> toks;
  size_t i = begin;
  auto is_name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  while (i < end) {
    const char c = src[i];
    if (std::isspace(static_cast<unsigned char>(c))) { ++i; continue; }
    Tok t;
    t.pos = i;
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < end && is_name_char(src[j])) ++j;
      t.kind = Tok::Name, t.text = src.substr(i, j - i);
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < end && (std::isdigit(static_cast<unsigned char>(src[j])) || src[j] == '_')) ++j;
      t.kind = Tok::Int;
      if (j + 1 < end && src[j] == '.' && std::isdigit(static_cast<unsigned char>(src[j + 1]))) {
        ++j;
        while (j < end && std::isdigit(static_cast<unsigned char>(src[j]))) ++j;
        t.kind = Tok::Float;
      }
      for (size_t k = i; k < j; ++k) if (src[k] != '_') t.text += src[k];
      i = j;
    } else if (c == '\'' || c == '"') {
      size_t j = i + 1;
      std::string s;
      while (j < end && src[j] != c) {
        if (src[j] == '\\' && j + 1 < end) {
          const char e = src[++j];
          switch (e) {
            case 'n': s += '\n'; break;
            case 't': s += '\t'; break;
            case 'r': s += '\r'; break;
            case '0': s += '\0'; break;
            case '\\': s += '\\'; break;
            case '\'': s += '\''; break;
            case '"': s += '"'; break;
            case 'u': case 'x': {
              const size_t digits = e == 'u' ? 4 : 2;
              if (j + digits >= end) fail(j, "truncated escape in string literal");
              char32_t cp = 0;
              for (size_t k = j + 1; k <= j + digits; ++k) {
                const char h = src[k];
                const int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) fail(j - 1, std::string("bad \\") + e + " escape in string literal (expected " + std::to_string(digits) + " hex digits)");
                cp = cp * 16 + static_cast<char32_t>(v);
              }
              utf8::append_code_point(cp, s);
              j += digits;
              break;
            }
            default: s += '\\'; s += e;  // Python keeps unknown escapes verbatim
          }
          ++j;
        } else {
          s += src[j++];
        }
      }
      if (j >= end) fail(i, "unterminated string literal");
      t.kind = Tok::String, t.text = std::move(s);
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      t.kind = Tok::Op;
      for (const char* op : two) {
        if (src.compare(i, 2, op) == 0 && i + 2 <= end) { t.text = op; break; }
      }
      if (t.text.empty()) {
        if (std::string("+-*/%~()[]{},.:|=<>!").find(c) == std::string::npos)
          fail(i, std::string("unexpected character '") + c + "' in expression");
        t.text = std::string(1, c);
      }
      i += t.text.size();
    }
    toks.push_back(std::move(t));
  }
  Tok e;
  e.kind = Tok::End, e.pos = end;
  toks.push_back(e);
  return toks;
}

struct Expr {
  enum Kind { Literal, Name, Attr, Index, Slice, Call, Filter, Test, Not, Neg, Binary, And, Or,
              Cond, ListLit, DictLit } kind;
  size_t pos = 0;
  int depth = 1;  // of this tree (a leaf is 1); at most kMaxNesting
  Value literal;
  std::string name;  // Name, Attr, Filter, Test, Binary operator, Call method name
  std::vector<std::unique_ptr<Expr>> args;  // operands / call args / list items / dict k,v pairs
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  bool negated = false;  // Test: `is not`; Binary "in": `not in`
};
using ExprPtr = std::unique_ptr<Expr>;

ExprPtr make(Expr::Kind kind, size_t pos) {
  auto e = std::make_unique<Expr>();
  e->kind = kind, e->pos = pos;
  return e;
}

class ExprParser {
 public:
  ExprParser(std::vector<Tok> toks, const Failure& fail) : toks_(std::move(toks)), fail_(fail) {}
  ExprParser(ExprParser&&) = default;

  const Tok& peek(size_t ahead = 0) const { return toks_[std::min(at_ + ahead, toks_.size() - 1)]; }
  bool at_end() const { return peek().kind == Tok::End; }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).kind == Tok::Op && peek(ahead).text == op;
  }
  bool is_name(const char* n, size_t ahead = 0) const {
    return peek(ahead).kind == Tok::Name && peek(ahead).text == n;
  }
  Tok next() { return toks_[at_ < toks_.size() - 1 ? at_++ : at_]; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail_(peek().pos, std::string("expected '") + op + "', found '" + peek().text + "'");
    ++at_;
  }
  std::string expect_name() {
    if (peek().kind != Tok::Name) fail_(peek().pos, "expected a name, found '" + peek().text + "'");
    return next().text;
  }
  void expect_end() {
    if (!at_end()) fail_(peek().pos, "unexpected '" + peek().text + "'");
  }
  [[noreturn]] void fail(const std::string& what) const { fail_(peek().pos, what); }

  ExprPtr expression() {  // conditional expression
    Nest nest(*this);
    ExprPtr value = or_expr();
    if (is_name("if")) {
      const size_t pos = next().pos;
      auto cond = make(Expr::Cond, pos);
      ExprPtr test = or_expr();
      ExprPtr otherwise;
      if (is_name("else")) {
        next();
        otherwise = expression();
      } else {
        otherwise = make(Expr::Literal, pos);  // undefined
      }
      adopt(*cond, std::move(test));
      adopt(*cond, std::move(value));
      adopt(*cond, std::move(otherwise));
      return cond;
    }
    return value;
  }

 private:
  // Bounds the parser's recursion (parentheses, unary operators, nested literals).
  struct Nest {
    ExprParser& p;
    explicit Nest(ExprParser& parser) : p(parser) {
      if (++p.nest_ > 3 * kMaxNesting) p.fail("expression nested deeper than " + std::to_string(kMaxNesting) + " levels");
    }
    ~Nest() { --p.nest_; }
  };
  // adopt(*parent, child), keeping parent->depth = 1 + the deepest child within the limit
  // (left-associative chains such as 1+1+1+... grow the tree without recursing in the parser).
  void adopt(Expr& parent, ExprPtr child) {
    parent.depth = std::max(parent.depth, child->depth + 1);
    if (parent.depth > kMaxNesting)
      fail_(parent.pos, "expression nested deeper than " + std::to_string(kMaxNesting) + " levels");
    parent.args.push_back(std::move(child));
  }
  int nest_ = 0;

  ExprPtr or_expr() {
    ExprPtr left = and_expr();
    while (is_name("or")) {
      auto e = make(Expr::Or, next().pos);
      adopt(*e, std::move(left));
      adopt(*e, and_expr());
      left = std::move(e);
    }
    return left;
  }
  ExprPtr and_expr() {
    ExprPtr left = not_expr();
    while (is_name("and")) {
      auto e = make(Expr::And, next().pos);
      adopt(*e, std::move(left));
      adopt(*e, not_expr());
      left = std::move(e);
    }
    return left;
  }
  ExprPtr not_expr() {
    Nest nest(*this);
    if (is_name("not")) {
      auto e = make(Expr::Not, next().pos);
      adopt(*e, not_expr());
      return e;
    }
    return comparison();
  }
  ExprPtr comparison() {
    ExprPtr left = concat();
    for (;;) {
      const Tok& t = peek();
      std::string op;
      bool negated = false;
      if (t.kind == Tok::Op && (t.text == "==" || t.text == "!=" || t.text == "<" ||
                                t.text == ">" || t.text == "<=" || t.text == ">=")) {
        op = t.text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && is_name("in", 1)) {
        op = "in", negated = true;
        next(), next();
      } else if (is_name("is")) {
        auto e = make(Expr::Test, next().pos);
        if (is_name("not")) { next(); e->negated = true; }
        e->name = expect_name();
        adopt(*e, std::move(left));
        // Tests with an argument: `is divisibleby(3)`, `is sameas x`, `is eq 1` (only literal forms).
        if (is_op("(")) {
          next();
          if (!is_op(")")) adopt(*e, expression());
          expect_op(")");
        }
        left = std::move(e);
        continue;
      } else {
        return left;
      }
      auto e = make(Expr::Binary, t.pos);
      e->name = op, e->negated = negated;
      adopt(*e, std::move(left));
      adopt(*e, concat());
      left = std::move(e);
    }
  }
  ExprPtr concat() {
    ExprPtr left = additive();
    while (is_op("~")) {
      auto e = make(Expr::Binary, next().pos);
      e->name = "~";
      adopt(*e, std::move(left));
      adopt(*e, additive());
      left = std::move(e);
    }
    return left;
  }
  ExprPtr additive() {
    ExprPtr left = multiplicative();
    while (is_op("+") || is_op("-")) {
      const Tok t = next();
      auto e = make(Expr::Binary, t.pos);
      e->name = t.text;
      adopt(*e, std::move(left));
      adopt(*e, multiplicative());
      left = std::move(e);
    }
    return left;
  }
  ExprPtr multiplicative() {
    ExprPtr left = unary();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Tok t = next();
      auto e = make(Expr::Binary, t.pos);
      e->name = t.text;
      adopt(*e, std::move(left));
      adopt(*e, unary());
      left = std::move(e);
    }
    return left;
  }
  ExprPtr unary() {
    Nest nest(*this);
    if (is_op("-")) {
      auto e = make(Expr::Neg, next().pos);
      adopt(*e, unary());
      return e;
    }
    if (is_op("+")) {
      next();
      return unary();
    }
    return postfix();
  }
  void call_arguments(Expr& e) {  // after '('
    while (!is_op(")")) {
      if (peek().kind == Tok::Name && is_op("=", 1)) {
        std::string key = next().text;
        next();
        ExprPtr value = expression();
        e.depth = std::max(e.depth, value->depth + 1);
        e.kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        adopt(e, expression());
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }
  ExprPtr postfix() {
    ExprPtr e = primary();
    for (;;) {
      if (is_op(".")) {
        const size_t pos = next().pos;
        auto a = make(Expr::Attr, pos);
        a->name = expect_name();
        adopt(*a, std::move(e));
        e = std::move(a);
      } else if (is_op("[")) {
        const size_t pos = next().pos;
        ExprPtr parts[3];
        bool slice = false;
        int part = 0;
        while (!is_op("]")) {
          if (is_op(":")) {
            slice = true;
            if (++part > 2) fail("too many ':' in slice");
            next();
            continue;
          }
          if (parts[part]) fail("expected ']' or ':'");
          parts[part] = expression();
        }
        expect_op("]");
        if (!slice) {
          if (!parts[0]) fail("empty subscript");
          auto x = make(Expr::Index, pos);
          adopt(*x, std::move(e));
          adopt(*x, std::move(parts[0]));
          e = std::move(x);
        } else {
          auto x = make(Expr::Slice, pos);
          adopt(*x, std::move(e));
          for (auto& p : parts) adopt(*x, p ? std::move(p) : make(Expr::Literal, pos));
          e = std::move(x);
        }
      } else if (is_op("(")) {
        auto c = make(Expr::Call, next().pos);
        adopt(*c, std::move(e));
        call_arguments(*c);
        e = std::move(c);
      } else if (is_op("|")) {
        auto f = make(Expr::Filter, next().pos);
        f->name = expect_name();
        adopt(*f, std::move(e));
        if (is_op("(")) {
          next();
          call_arguments(*f);
        }
        e = std::move(f);
      } else {
        return e;
      }
    }
  }
  ExprPtr primary() {
    const Tok t = next();
    switch (t.kind) {
      case Tok::String: {
        auto e = make(Expr::Literal, t.pos);
        e->literal = Value::str(t.text);
        while (peek().kind == Tok::String) e->literal.s += next().text;  // implicit concatenation
        return e;
      }
      case Tok::Int: {
        auto e = make(Expr::Literal, t.pos);
        int64_t value = 0;
        const auto r = std::from_chars(t.text.data(), t.text.data() + t.text.size(), value);
        if (r.ec != std::errc() || r.ptr != t.text.data() + t.text.size()) fail_(t.pos, "integer literal " + t.text + " out of range");
        e->literal = Value::integer(value);
        return e;
      }
      case Tok::Float: {
        auto e = make(Expr::Literal, t.pos);
        e->literal = Value::real(std::strtod(t.text.c_str(), nullptr));  // out of range: inf / 0, as Python
        return e;
      }
      case Tok::Name: {
        auto e = make(Expr::Literal, t.pos);
        if (t.text == "true" || t.text == "True") { e->literal = Value::boolean(true); return e; }
        if (t.text == "false" || t.text == "False") { e->literal = Value::boolean(false); return e; }
        if (t.text == "none" || t.text == "None") { e->literal = Value::none(); return e; }
        e->kind = Expr::Name;
        e->name = t.text;
        return e;
      }
      case Tok::Op:
        if (t.text == "(") {
          ExprPtr inner = expression();
          if (is_op(",")) {  // tuple -> list
            auto l = make(Expr::ListLit, t.pos);
            adopt(*l, std::move(inner));
            while (is_op(",")) {
              next();
              if (is_op(")")) break;
              adopt(*l, expression());
            }
            inner = std::move(l);
          }
          expect_op(")");
          return inner;
        }
        if (t.text == "[") {
          auto l = make(Expr::ListLit, t.pos);
          while (!is_op("]")) {
            adopt(*l, expression());
            if (!is_op(",")) break;
            next();
          }
          expect_op("]");
          return l;
        }
        if (t.text == "{") {
          auto d = make(Expr::DictLit, t.pos);
          while (!is_op("}")) {
            adopt(*d, expression());
            expect_op(":");
            adopt(*d, expression());
            if (!is_op(",")) break;
            next();
          }
          expect_op("}");
          return d;
        }
        fail_(t.pos, "unexpected '" + t.text + "' in expression");
      case Tok::End:
        fail_(t.pos, "unexpected end of expression");
    }
    fail_(t.pos, "unexpected token");
  }

  std::vector<Tok> toks_;
  size_t at_ = 0;
  const Failure& fail_;
};

// ---------------------------------------------------------------------------------------------
// Template structure

struct Node {
  enum Kind { Text, Output, If, For, Set } kind;
  size_t pos = 0;
  std::string text;                                            // Text
  std::vector<ExprPtr> exprs;                                  // Output: [e]; If: conditions; For: [iter]; Set: [value]
  std::vector<std::vector<std::unique_ptr<Node>>> bodies;      // If: one per condition (+ else); For: body (+ else)
  std::vector<std::string> names;                              // For: loop variables; Set: target (name[, attr])
};
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Chunk {
  enum Kind { Text, Expr, Stmt } kind;
  size_t begin, end;  // content range in the source (inside the delimiters for tags; text: where it starts)
  std::string text;   // Text chunks after whitespace control
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Splits the source into text and tags, applying '-' whitespace control and HF's
// trim_blocks / lstrip_blocks settings.
std::vector<Chunk> split_chunks(const std::string& src, const Failure& fail) {
  std::vector<Chunk> chunks;
  size_t i = 0;
  bool strip_next = false, trim_newline = false;
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' &&
           src[open + 1] != '%' && src[open + 1] != '#')
      open = src.find('{', open + 1);
    if (open != std::string::npos && open + 1 >= src.size()) open = std::string::npos;
    std::string text = src.substr(i, (open == std::string::npos ? src.size() : open) - i);
    if (trim_newline) {
      if (text.rfind("\r\n", 0) == 0) text.erase(0, 2);
      else if (!text.empty() && text[0] == '\n') text.erase(0, 1);
    }
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_space(text[k])) ++k;
      text.erase(0, k);
    }
    strip_next = trim_newline = false;
    if (open == std::string::npos) {
      if (!text.empty()) chunks.push_back({Chunk::Text, i, i, std::move(text)});
      break;
    }
    const char kind = src[open + 1];
    const bool minus_open = open + 2 < src.size() && src[open + 2] == '-';
    const bool plus_open = open + 2 < src.size() && src[open + 2] == '+';
    if (minus_open) {
      while (!text.empty() && is_space(text.back())) text.pop_back();
    } else if (kind != '{' && !plus_open) {
      // lstrip_blocks: spaces/tabs between the start of the line and a block/comment tag go.
      size_t k = open;
      while (k > i && (src[k - 1] == ' ' || src[k - 1] == '\t')) --k;
      if (k == 0 || src[k - 1] == '\n') {
        while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.pop_back();
      }
    }
    if (!text.empty()) chunks.push_back({Chunk::Text, i, i, std::move(text)});
    const size_t content = open + 2 + ((minus_open || plus_open) ? 1 : 0);
    const char* close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t end = content;
    char quote = 0;
    for (; end + 1 < src.size(); ++end) {  // find the closing delimiter outside string literals
      if (kind != '#') {
        if (quote) {
          if (src[end] == '\\') { ++end; continue; }
          if (src[end] == quote) quote = 0;
          continue;
        }
        if (src[end] == '\'' || src[end] == '"') { quote = src[end]; continue; }
      }
      if (src[end] == close[0] && src[end + 1] == close[1]) break;
    }
    if (end + 1 >= src.size()) fail(open, std::string("unclosed '{") + kind + "' tag");
    size_t content_end = end;
    const bool minus_close = content_end > content && src[content_end - 1] == '-';
    if (minus_close) --content_end;
    if (kind == '{') chunks.push_back({Chunk::Expr, content, content_end, {}});
    if (kind == '%') chunks.push_back({Chunk::Stmt, content, content_end, {}});
    strip_next = minus_close;
    trim_newline = !minus_close && kind != '{';  // trim_blocks
    i = end + 2;
  }
  return chunks;
}

class TemplateParser {
 public:
  TemplateParser(const std::string& src, const Failure& fail)
      : src_(src), fail_(fail), chunks_(split_chunks(src, fail)) {}

  Body parse() {
    std::string terminator;
    Body body = block({}, terminator);
    return body;
  }

 private:
  ExprParser stmt_parser(const Chunk& c) {
    return ExprParser(lex_expression(src_, c.begin, c.end, fail_), fail_);
  }

  // Parses nodes until a statement whose keyword is in `stops` (returned in `terminator`, with
  // its parser positioned after the keyword in `stop_parser_`).
  Body block(const std::vector<std::string>& stops, std::string& terminator) {
    struct Nest {
      int& n;
      ~Nest() { --n; }
    } nest{++nesting_};
    if (nesting_ > kMaxNesting) {
      const Chunk& opener = chunks_[at_ - 1];
      fail_(opener.begin, "blocks nested deeper than " + std::to_string(kMaxNesting) + " levels");
    }
    Body body;
    while (at_ < chunks_.size()) {
      const Chunk& c = chunks_[at_++];
      if (c.kind == Chunk::Text) {
        auto n = std::make_unique<Node>();
        n->kind = Node::Text, n->text = c.text, n->pos = c.begin;
        body.push_back(std::move(n));
        continue;
      }
      if (c.kind == Chunk::Expr) {
        ExprParser p = stmt_parser(c);
        auto n = std::make_unique<Node>();
        n->kind = Node::Output, n->pos = c.begin;
        n->exprs.push_back(p.expression());
        p.expect_end();
        body.push_back(std::move(n));
        continue;
      }
      auto p = std::make_unique<ExprParser>(stmt_parser(c));
      if (p->at_end()) fail_(c.begin, "empty statement tag");
      const std::string keyword = p->expect_name();
      if (std::find(stops.begin(), stops.end(), keyword) != stops.end()) {
        terminator = keyword;
        stop_parser_ = std::move(p);
        return body;
      }
      if (keyword == "if") {
        auto n = std::make_unique<Node>();
        n->kind = Node::If, n->pos = c.begin;
        n->exprs.push_back(p->expression());
        p->expect_end();
        for (;;) {
          std::string term;
          n->bodies.push_back(block({"elif", "else", "endif"}, term));
          if (term.empty()) fail_(c.begin, "'if' without 'endif'");
          if (term == "endif") { stop_parser_->expect_end(); break; }
          if (term == "elif") {
            n->exprs.push_back(stop_parser_->expression());
            stop_parser_->expect_end();
            continue;
          }
          stop_parser_->expect_end();  // else
          n->bodies.push_back(block({"endif"}, term));
          if (term.empty()) fail_(c.begin, "'if' without 'endif'");
          stop_parser_->expect_end();
          break;
        }
        body.push_back(std::move(n));
      } else if (keyword == "for") {
        auto n = std::make_unique<Node>();
        n->kind = Node::For, n->pos = c.begin;
        n->names.push_back(p->expect_name());
        while (p->is_op(",")) {
          p->next();
          n->names.push_back(p->expect_name());
        }
        if (!p->is_name("in")) p->fail("expected 'in' in for loop");
        p->next();
        n->exprs.push_back(p->expression());
        if (p->is_name("recursive")) p->fail("recursive loops are unsupported");
        p->expect_end();
        std::string term;
        n->bodies.push_back(block({"else", "endfor"}, term));
        if (term.empty()) fail_(c.begin, "'for' without 'endfor'");
        stop_parser_->expect_end();
        if (term == "else") {
          n->bodies.push_back(block({"endfor"}, term));
          if (term.empty()) fail_(c.begin, "'for' without 'endfor'");
          stop_parser_->expect_end();
        }
        body.push_back(std::move(n));
      } else if (keyword == "set") {
        auto n = std::make_unique<Node>();
        n->kind = Node::Set, n->pos = c.begin;
        n->names.push_back(p->expect_name());
        if (p->is_op(".")) {
          p->next();
          n->names.push_back(p->expect_name());
        }
        if (!p->is_op("=")) p->fail("block 'set' (without '=') is unsupported");
        p->next();
        n->exprs.push_back(p->expression());
        p->expect_end();
        body.push_back(std::move(n));
      } else {
        fail_(c.begin, "unsupported statement '" + keyword + "'");
      }
    }
    terminator.clear();
    if (!stops.empty()) fail_(src_.size(), "missing '{% " + stops.back() + " %}'");
    return body;
  }

  const std::string& src_;
  const Failure& fail_;
  std::vector<Chunk> chunks_;
  size_t at_ = 0;
  int nesting_ = 0;
  std::unique_ptr<ExprParser> stop_parser_;
};

// ---------------------------------------------------------------------------------------------
// Evaluation

std::vector<char32_t> code_points(const std::string& s) {
  std::vector<char32_t> out;
  const std::string valid = utf8::lossy(s);
  for (size_t i = 0; i < valid.size();) out.push_back(utf8::next_code_point(valid, i));
  return out;
}

std::string from_code_points(const std::vector<char32_t>& cps, size_t b, size_t e) {
  std::string out;
  for (size_t k = b; k < e; ++k) utf8::append_code_point(cps[k], out);
  return out;
}

// Python str.strip / lstrip / rstrip; chars == nullptr strips whitespace.
std::string strip(const std::string& s, const std::string* chars, bool left, bool right) {
  const std::vector<char32_t> cps = code_points(s);
  std::vector<char32_t> set;
  if (chars) set = code_points(*chars);
  auto strippable = [&](char32_t c) {
    return chars ? std::find(set.begin(), set.end(), c) != set.end()
                 : (utf8::is_white_space(c) || (c >= 0x1C && c <= 0x1F));
  };
  size_t b = 0, e = cps.size();
  if (left) while (b < e && strippable(cps[b])) ++b;
  if (right) while (e > b && strippable(cps[e - 1])) --e;
  return from_code_points(cps, b, e);
}

class Renderer {
 public:
  Renderer(const Failure& fail) : fail_(fail) { scopes_.emplace_back(); }

  void set_global(const std::string& name, Value v) { scopes_.front()[name] = std::move(v); }

  void render(const Body& body, std::string& out) {
    for (const NodePtr& n : body) render(*n, out);
  }

 private:
  void append(std::string& out, const std::string& text, size_t pos) {
    if (out.size() + text.size() > kMaxStringBytes)
      fail_(pos, "output longer than " + std::to_string(kMaxStringBytes) + " bytes");
    out += text;
  }

 private:
  void render(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Text: append(out, n.text, n.pos); return;
      case Node::Output: append(out, to_output(eval(*n.exprs[0])), n.pos); return;
      case Node::If:
        for (size_t k = 0; k < n.exprs.size(); ++k) {
          if (truthy(eval(*n.exprs[k]))) { render(n.bodies[k], out); return; }
        }
        if (n.bodies.size() > n.exprs.size()) render(n.bodies.back(), out);
        return;
      case Node::Set: {
        Value v = eval(*n.exprs[0]);
        if (n.names.size() == 1) {
          scopes_.back()[n.names[0]] = std::move(v);
          return;
        }
        Value target = lookup(n.names[0]);
        if (!target.is(Value::Kind::Dict)) fail_(n.pos, "cannot set attribute on " + std::string(kind_name(target)) + " '" + n.names[0] + "'");
        // Namespaces are the only mutable values: one never holds another (so no cycles, and
        // the nesting recorded in Value::depth stays within twice the limit).
        if (v.holds_namespace) fail_(n.pos, "cannot store a namespace inside namespace '" + n.names[0] + "'");
        for (auto& [k, x] : *target.dict) {
          if (k == n.names[1]) { x = std::move(v); return; }
        }
        target.dict->emplace_back(n.names[1], std::move(v));
        return;
      }
      case Node::For: {
        const Value seq = eval(*n.exprs[0]);
        List items;
        if (seq.is(Value::Kind::List)) items = *seq.list;
        else if (seq.is(Value::Kind::Dict)) for (const auto& [k, v] : *seq.dict) items.push_back(Value::str(k));
        else if (seq.is(Value::Kind::String)) for (char32_t c : code_points(seq.s)) { std::string s; utf8::append_code_point(c, s); items.push_back(Value::str(s)); }
        else if (seq.defined() && !seq.is(Value::Kind::None)) fail_(n.pos, std::string("cannot iterate over ") + kind_name(seq));
        else if (seq.is(Value::Kind::None)) fail_(n.pos, "cannot iterate over none");
        if (items.empty()) {
          if (n.bodies.size() > 1) render(n.bodies[1], out);
          return;
        }
        scopes_.emplace_back();
        const auto length = static_cast<int64_t>(items.size());
        for (int64_t k = 0; k < length; ++k) {
          if (++iterations_ > kMaxIterations)
            fail_(n.pos, "more than " + std::to_string(kMaxIterations) + " loop iterations");
          auto& scope = scopes_.back();
          scope.clear();
          const Value& item = items[static_cast<size_t>(k)];
          if (n.names.size() == 1) {
            scope[n.names[0]] = item;
          } else {
            if (!item.is(Value::Kind::List) || item.list->size() != n.names.size())
              fail_(n.pos, "cannot unpack loop item into " + std::to_string(n.names.size()) + " names");
            for (size_t m = 0; m < n.names.size(); ++m) scope[n.names[m]] = (*item.list)[m];
          }
          scope["loop"] = Value::of_dict({{"index0", Value::integer(k)},
                                          {"index", Value::integer(k + 1)},
                                          {"revindex", Value::integer(length - k)},
                                          {"revindex0", Value::integer(length - k - 1)},
                                          {"first", Value::boolean(k == 0)},
                                          {"last", Value::boolean(k == length - 1)},
                                          {"length", Value::integer(length)}});
          render(n.bodies[0], out);
        }
        scopes_.pop_back();
        return;
      }
    }
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    return Value();
  }

  Value attribute(const Value& v, const std::string& name, size_t pos) {
    if (v.is(Value::Kind::Dict)) {
      const Value* x = v.get(name);
      return x ? *x : Value();
    }
    if (!v.defined()) fail_(pos, "'" + name + "' of an undefined value");
    return Value();  // attributes of other types are undefined (methods are handled by calls)
  }

  Value index(const Value& v, const Value& key, size_t pos) {
    if (v.is(Value::Kind::List) || v.is(Value::Kind::String)) {
      if (!key.is(Value::Kind::Int)) fail_(pos, "index must be an integer");
      if (v.is(Value::Kind::String)) {
        const auto cps = code_points(v.s);
        int64_t k = key.i < 0 ? key.i + static_cast<int64_t>(cps.size()) : key.i;
        if (k < 0 || k >= static_cast<int64_t>(cps.size())) return Value();
        return Value::str(from_code_points(cps, static_cast<size_t>(k), static_cast<size_t>(k) + 1));
      }
      int64_t k = key.i < 0 ? key.i + static_cast<int64_t>(v.list->size()) : key.i;
      if (k < 0 || k >= static_cast<int64_t>(v.list->size())) return Value();
      return (*v.list)[static_cast<size_t>(k)];
    }
    if (v.is(Value::Kind::Dict)) {
      if (!key.is(Value::Kind::String)) return Value();
      return attribute(v, key.s, pos);
    }
    if (!v.defined()) fail_(pos, "subscript of an undefined value");
    fail_(pos, std::string("cannot subscript ") + kind_name(v));
  }

  Value slice(const Value& v, const Value& start, const Value& stop, const Value& step, size_t pos) {
    auto as_opt = [&](const Value& x, const char* what) -> std::optional<int64_t> {
      if (!x.defined() || x.is(Value::Kind::None)) return std::nullopt;
      if (!x.is(Value::Kind::Int)) fail_(pos, std::string("slice ") + what + " must be an integer");
      return x.i;
    };
    const int64_t st = as_opt(step, "step").value_or(1);
    if (st == 0) fail_(pos, "slice step cannot be zero");
    std::vector<char32_t> cps;
    int64_t n;
    if (v.is(Value::Kind::String)) cps = code_points(v.s), n = static_cast<int64_t>(cps.size());
    else if (v.is(Value::Kind::List)) n = static_cast<int64_t>(v.list->size());
    else fail_(pos, std::string("cannot slice ") + kind_name(v));
    auto clamp = [&](std::optional<int64_t> x, int64_t dflt) {  // Python slice index rules
      if (!x) return dflt;
      int64_t k = *x < 0 ? *x + n : *x;
      if (st > 0) return std::clamp<int64_t>(k, 0, n);
      return std::clamp<int64_t>(k, -1, n - 1);
    };
    const int64_t b = clamp(as_opt(start, "start"), st > 0 ? 0 : n - 1);
    const int64_t e = clamp(as_opt(stop, "stop"), st > 0 ? n : -1);
    List items;
    std::string s;
    for (int64_t k = b; st > 0 ? k < e : k > e; k += st) {
      if (v.is(Value::Kind::String)) utf8::append_code_point(cps[static_cast<size_t>(k)], s);
      else items.push_back((*v.list)[static_cast<size_t>(k)]);
    }
    return v.is(Value::Kind::String) ? Value::str(s) : Value::of_list(std::move(items));
  }

  Value binary(const std::string& op, const Value& a, const Value& b, size_t pos) {
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "~") return Value::str(to_output(a) + to_output(b));
    if (op == "in") {
      if (b.is(Value::Kind::String)) {
        if (!a.is(Value::Kind::String)) fail_(pos, "'in <string>' needs a string on the left");
        return Value::boolean(b.s.find(a.s) != std::string::npos);
      }
      if (b.is(Value::Kind::List)) {
        for (const Value& x : *b.list) if (equal(a, x)) return Value::boolean(true);
        return Value::boolean(false);
      }
      if (b.is(Value::Kind::Dict)) return Value::boolean(a.is(Value::Kind::String) && b.get(a.s));
      fail_(pos, std::string("'in' needs a string, list or dict on the right, found ") + kind_name(b));
    }
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (a.numeric() && b.numeric()) cmp = a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double() ? 1 : 0;
      else if (a.is(Value::Kind::String) && b.is(Value::Kind::String)) cmp = a.s.compare(b.s);
      else fail_(pos, std::string("cannot compare ") + kind_name(a) + " with " + kind_name(b));
      if (op == "<") return Value::boolean(cmp < 0);
      if (op == ">") return Value::boolean(cmp > 0);
      if (op == "<=") return Value::boolean(cmp <= 0);
      return Value::boolean(cmp >= 0);
    }
    if (op == "+") {
      if (a.is(Value::Kind::String) && b.is(Value::Kind::String)) return Value::str(a.s + b.s);
      if (a.is(Value::Kind::List) && b.is(Value::Kind::List)) {
        if (static_cast<int64_t>(a.list->size() + b.list->size()) > kMaxItems)
          fail_(pos, "list of more than " + std::to_string(kMaxItems) + " items");
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::of_list(std::move(l));
      }
    }
    if (a.numeric() && b.numeric()) {
      const bool ints = !a.is(Value::Kind::Float) && !b.is(Value::Kind::Float);
      const int64_t x = a.is(Value::Kind::Bool) ? a.b : a.i, y = b.is(Value::Kind::Bool) ? b.b : b.i;
      if (ints && (op == "+" || op == "-" || op == "*")) {
        int64_t r = 0;
        const bool overflow = op == "+" ? __builtin_add_overflow(x, y, &r)
                              : op == "-" ? __builtin_sub_overflow(x, y, &r)
                                          : __builtin_mul_overflow(x, y, &r);
        if (overflow) fail_(pos, "integer overflow in '" + op + "'");
        return Value::integer(r);
      }
      if (op == "+") return Value::real(a.as_double() + b.as_double());
      if (op == "-") return Value::real(a.as_double() - b.as_double());
      if (op == "*") return Value::real(a.as_double() * b.as_double());
      if (op == "/") {
        if (b.as_double() == 0) fail_(pos, "division by zero");
        return Value::real(a.as_double() / b.as_double());
      }
      if (op == "//" || op == "%") {
        if (b.as_double() == 0) fail_(pos, "division by zero");
        if (ints) {
          if (x == std::numeric_limits<int64_t>::min() && y == -1) fail_(pos, "integer overflow in '" + op + "'");
          int64_t q = x / y, r = x % y;
          if (r != 0 && ((r < 0) != (y < 0))) --q, r += y;  // Python floor semantics
          return Value::integer(op == "//" ? q : r);
        }
        const double q = std::floor(a.as_double() / b.as_double());
        return Value::real(op == "//" ? q : a.as_double() - q * b.as_double());
      }
    }
    if (op == "*" && a.is(Value::Kind::String) && b.is(Value::Kind::Int)) {
      if (b.i > 0 && a.s.size() > 0 && static_cast<uint64_t>(b.i) > kMaxStringBytes / a.s.size())
        fail_(pos, "string longer than " + std::to_string(kMaxStringBytes) + " bytes");
      std::string s;
      for (int64_t k = 0; k < b.i; ++k) s += a.s;
      return Value::str(s);
    }
    fail_(pos, "unsupported operands for '" + op + "': " + kind_name(a) + " and " + kind_name(b));
  }

  bool test(const std::string& name, const Value& v, const std::vector<Value>& args, size_t pos) {
    if (name == "defined") return v.defined();
    if (name == "undefined") return !v.defined();
    if (name == "none") return v.is(Value::Kind::None);
    if (name == "string") return v.is(Value::Kind::String);
    if (name == "number") return v.is(Value::Kind::Int) || v.is(Value::Kind::Float);
    if (name == "integer") return v.is(Value::Kind::Int);
    if (name == "float") return v.is(Value::Kind::Float);
    if (name == "boolean") return v.is(Value::Kind::Bool);
    if (name == "true") return v.is(Value::Kind::Bool) && v.b;
    if (name == "false") return v.is(Value::Kind::Bool) && !v.b;
    if (name == "mapping") return v.is(Value::Kind::Dict);
    if (name == "sequence" || name == "iterable")
      return v.is(Value::Kind::List) || v.is(Value::Kind::String) || v.is(Value::Kind::Dict);
    if (name == "odd" || name == "even") {
      if (!v.is(Value::Kind::Int)) fail_(pos, "'" + name + "' test needs an integer");
      return (v.i % 2 != 0) == (name == "odd");
    }
    if (name == "eq" || name == "equalto" || name == "sameas") {
      if (args.size() != 1) fail_(pos, "'" + name + "' test needs one argument");
      return equal(v, args[0]);
    }
    fail_(pos, "unsupported test '" + name + "'");
  }

  Value length(const Value& v, size_t pos) {
    if (v.is(Value::Kind::String)) return Value::integer(static_cast<int64_t>(code_points(v.s).size()));
    if (v.is(Value::Kind::List)) return Value::integer(static_cast<int64_t>(v.list->size()));
    if (v.is(Value::Kind::Dict)) return Value::integer(static_cast<int64_t>(v.dict->size()));
    if (!v.defined()) return Value::integer(0);
    fail_(pos, std::string("length of ") + kind_name(v));
  }

  Value filter(const std::string& name, const Value& v, const std::vector<Value>& args,
               const std::map<std::string, Value>& kwargs, size_t pos) {
    auto arg = [&](size_t k, const char* key) -> const Value* {
      if (k < args.size()) return &args[k];
      auto it = kwargs.find(key);
      return it == kwargs.end() ? nullptr : &it->second;
    };
    if (name == "length" || name == "count") return length(v, pos);
    if (name == "tojson") {
      if (arg(0, "indent")) fail_(pos, "tojson with indent is unsupported");
      std::string out;
      to_json(v, out);
      return Value::str(out);
    }
    if (name == "string") return Value::str(to_output(v));
    if (name == "trim") {
      if (!v.is(Value::Kind::String)) fail_(pos, "'trim' filter needs a string");
      return Value::str(strip(v.s, nullptr, true, true));
    }
    if (name == "upper" || name == "lower" || name == "capitalize" || name == "title")
      return string_method(name, v, {}, pos);
    if (name == "default" || name == "d") {
      const Value* d = arg(0, "default_value");
      const Value* boolean = arg(1, "boolean");
      const bool use_default = !v.defined() || (boolean && truthy(*boolean) && !truthy(v));
      return use_default ? (d ? *d : Value::str("")) : v;
    }
    if (name == "join") {
      const Value* sep = arg(0, "d");
      if (!v.is(Value::Kind::List)) fail_(pos, "'join' filter needs a list");
      std::string out;
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k && sep) out += to_output(*sep);
        out += to_output((*v.list)[k]);
        if (out.size() > kMaxStringBytes) fail_(pos, "string longer than " + std::to_string(kMaxStringBytes) + " bytes");
      }
      return Value::str(out);
    }
    if (name == "first" || name == "last") {
      if (v.is(Value::Kind::List)) {
        if (v.list->empty()) return Value();
        return name == "first" ? v.list->front() : v.list->back();
      }
      if (v.is(Value::Kind::String)) {
        const auto cps = code_points(v.s);
        if (cps.empty()) return Value();
        return name == "first" ? Value::str(from_code_points(cps, 0, 1))
                               : Value::str(from_code_points(cps, cps.size() - 1, cps.size()));
      }
      fail_(pos, "'" + name + "' filter needs a list or string");
    }
    if (name == "list") {
      if (v.is(Value::Kind::List)) return v;
      if (v.is(Value::Kind::Dict)) {
        List l;
        for (const auto& [k, x] : *v.dict) l.push_back(Value::str(k));
        return Value::of_list(std::move(l));
      }
      if (v.is(Value::Kind::String)) {
        List l;
        for (char32_t c : code_points(v.s)) { std::string s; utf8::append_code_point(c, s); l.push_back(Value::str(s)); }
        return Value::of_list(std::move(l));
      }
      fail_(pos, "'list' filter needs a list, dict or string");
    }
    if (name == "reverse") return slice(v, Value(), Value(), Value::integer(-1), pos);
    if (name == "items") {
      if (!v.is(Value::Kind::Dict)) fail_(pos, "'items' filter needs a dict");
      return dict_method("items", v, {}, pos);
    }
    if (name == "int") {
      if (v.is(Value::Kind::Int)) return v;
      if (v.is(Value::Kind::Float)) {  // truncation toward zero, as Python's int(); out of range is an error
        if (!std::isfinite(v.f) || std::fabs(v.f) >= 9.0e18) fail_(pos, "'int' filter: value out of range");
        return Value::integer(static_cast<int64_t>(v.f));
      }
      if (v.is(Value::Kind::Bool)) return Value::integer(v.b);
      if (v.is(Value::Kind::String)) {
        try { return Value::integer(std::stoll(v.s)); } catch (...) { return Value::integer(0); }
      }
      return Value::integer(0);
    }
    fail_(pos, "unsupported filter '" + name + "'");
  }

  Value string_method(const std::string& name, const Value& v, const std::vector<Value>& args, size_t pos) {
    const std::string& s = v.s;
    auto str_arg = [&](size_t k) -> const std::string* {
      if (k >= args.size() || args[k].is(Value::Kind::None)) return nullptr;
      if (!args[k].is(Value::Kind::String)) fail_(pos, "'" + name + "' needs a string argument");
      return &args[k].s;
    };
    if (name == "startswith" || name == "endswith") {
      const std::string* x = str_arg(0);
      if (!x) fail_(pos, "'" + name + "' needs an argument");
      if (name == "startswith") return Value::boolean(s.compare(0, x->size(), *x) == 0);
      return Value::boolean(s.size() >= x->size() && s.compare(s.size() - x->size(), x->size(), *x) == 0);
    }
    if (name == "strip") return Value::str(strip(s, str_arg(0), true, true));
    if (name == "lstrip") return Value::str(strip(s, str_arg(0), true, false));
    if (name == "rstrip") return Value::str(strip(s, str_arg(0), false, true));
    if (name == "split") {
      const std::string* sep = str_arg(0);
      int64_t maxsplit = args.size() > 1 && args[1].is(Value::Kind::Int) ? args[1].i : -1;
      List parts;
      if (sep) {
        if (sep->empty()) fail_(pos, "split with an empty separator");
        size_t from = 0;
        for (;;) {
          const size_t at = maxsplit == 0 ? std::string::npos : s.find(*sep, from);
          if (at == std::string::npos) break;
          parts.push_back(Value::str(s.substr(from, at - from)));
          from = at + sep->size();
          if (maxsplit > 0) --maxsplit;
        }
        parts.push_back(Value::str(s.substr(from)));
      } else {
        const auto cps = code_points(s);
        size_t k = 0;
        while (k < cps.size()) {
          while (k < cps.size() && utf8::is_white_space(cps[k])) ++k;
          if (k == cps.size()) break;
          size_t e = k;
          if (maxsplit == 0) e = cps.size();
          else while (e < cps.size() && !utf8::is_white_space(cps[e])) ++e;
          if (maxsplit == 0) {
            size_t t = e;
            while (t > k && utf8::is_white_space(cps[t - 1])) --t;
            parts.push_back(Value::str(from_code_points(cps, k, t)));
            break;
          }
          parts.push_back(Value::str(from_code_points(cps, k, e)));
          if (maxsplit > 0) --maxsplit;
          k = e;
        }
      }
      return Value::of_list(std::move(parts));
    }
    if (name == "upper" || name == "lower") {  // ASCII case mapping; others unchanged
      std::string out = s;
      for (char& c : out) c = static_cast<char>(name == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return Value::str(out);
    }
    if (name == "capitalize" || name == "title") {
      std::string out = s;
      bool start = true;
      for (char& c : out) {
        const auto u = static_cast<unsigned char>(c);
        if (std::isalpha(u)) {
          c = static_cast<char>(start ? std::toupper(u) : std::tolower(u));
          start = false;
        } else if (name == "title") {
          start = true;
        }
      }
      return Value::str(out);
    }
    if (name == "replace") {
      const std::string* from = str_arg(0);
      const std::string* to = str_arg(1);
      if (!from || !to) fail_(pos, "'replace' needs two string arguments");
      if (from->empty()) fail_(pos, "'replace' with an empty pattern is unsupported");
      std::string out;
      size_t at = 0;
      for (size_t f; (f = s.find(*from, at)) != std::string::npos; at = f + from->size()) {
        out += s.substr(at, f - at) + *to;
        if (out.size() > kMaxStringBytes) fail_(pos, "string longer than " + std::to_string(kMaxStringBytes) + " bytes");
      }
      return Value::str(out + s.substr(at));
    }
    fail_(pos, "unsupported string method '" + name + "'");
  }

  Value dict_method(const std::string& name, const Value& v, const std::vector<Value>& args, size_t pos) {
    if (name == "items" || name == "keys" || name == "values") {
      List l;
      for (const auto& [k, x] : *v.dict) {
        if (name == "items") l.push_back(Value::of_list({Value::str(k), x}));
        else l.push_back(name == "keys" ? Value::str(k) : x);
      }
      return Value::of_list(std::move(l));
    }
    if (name == "get") {
      if (args.empty() || !args[0].is(Value::Kind::String)) fail_(pos, "'get' needs a string key");
      const Value* x = v.get(args[0].s);
      return x ? *x : (args.size() > 1 ? args[1] : Value::none());
    }
    fail_(pos, "unsupported dict method '" + name + "'");
  }

  Value call(const Expr& e) {
    const Expr& callee = *e.args[0];
    std::vector<Value> args;
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
    if (callee.kind == Expr::Attr) {
      const Value self = eval(*callee.args[0]);
      if (self.is(Value::Kind::String)) return string_method(callee.name, self, args, e.pos);
      if (self.is(Value::Kind::Dict) && !self.get(callee.name)) return dict_method(callee.name, self, args, e.pos);
      fail_(e.pos, "unsupported method '" + callee.name + "' on " + kind_name(self));
    }
    if (callee.kind == Expr::Name) {
      if (callee.name == "namespace") {
        Dict d;
        for (const auto& [k, x] : e.kwargs) d.emplace_back(k, eval(*x));
        Value ns = Value::of_dict(std::move(d));
        ns.holds_namespace = true;
        return ns;
      }
      if (callee.name == "raise_exception") {
        throw Error("chat template raised: " + (args.empty() ? std::string() : to_output(args[0])));
      }
      if (callee.name == "range") {
        int64_t start = 0, stop = 0, step = 1;
        for (const Value& a : args) if (!a.is(Value::Kind::Int)) fail_(e.pos, "range() needs integers");
        if (args.size() == 1) stop = args[0].i;
        else if (args.size() >= 2) start = args[0].i, stop = args[1].i;
        if (args.size() == 3) step = args[2].i;
        if (args.empty() || args.size() > 3 || step == 0) fail_(e.pos, "bad range() arguments");
        // Item count computed without overflow; refused above the limit before allocating.
        const __int128 span = step > 0 ? static_cast<__int128>(stop) - start : static_cast<__int128>(start) - stop;
        const __int128 mag = step > 0 ? static_cast<__int128>(step) : -static_cast<__int128>(step);
        const __int128 count = span <= 0 ? 0 : (span + mag - 1) / mag;
        if (count > kMaxItems)
          fail_(e.pos, "range() of more than " + std::to_string(kMaxItems) + " items");
        List l;
        l.reserve(static_cast<size_t>(count));
        for (int64_t k = 0; k < static_cast<int64_t>(count); ++k) l.push_back(Value::integer(start + k * step));
        return Value::of_list(std::move(l));
      }
      fail_(e.pos, "unsupported function '" + callee.name + "'");
    }
    fail_(e.pos, "unsupported call");
  }

  // Every value an expression yields stays within the nesting and string-size limits.
  Value eval(const Expr& e) {
    Value v = eval_unchecked(e);
    if (v.depth > kMaxValueDepth)
      fail_(e.pos, "value nested deeper than " + std::to_string(kMaxValueDepth) + " levels");
    if (v.is(Value::Kind::String) && v.s.size() > kMaxStringBytes)
      fail_(e.pos, "string longer than " + std::to_string(kMaxStringBytes) + " bytes");
    return v;
  }

  Value eval_unchecked(const Expr& e) {
    switch (e.kind) {
      case Expr::Literal: return e.literal;
      case Expr::Name: return lookup(e.name);
      case Expr::Attr: return attribute(eval(*e.args[0]), e.name, e.pos);
      case Expr::Index: return index(eval(*e.args[0]), eval(*e.args[1]), e.pos);
      case Expr::Slice:
        return slice(eval(*e.args[0]), eval(*e.args[1]), eval(*e.args[2]), eval(*e.args[3]), e.pos);
      case Expr::Call: return call(e);
      case Expr::Filter: {
        std::vector<Value> args;
        std::map<std::string, Value> kwargs;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        for (const auto& [k, x] : e.kwargs) kwargs[k] = eval(*x);
        return filter(e.name, eval(*e.args[0]), args, kwargs, e.pos);
      }
      case Expr::Test: {
        std::vector<Value> args;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        return Value::boolean(test(e.name, eval(*e.args[0]), args, e.pos) != e.negated);
      }
      case Expr::Not: return Value::boolean(!truthy(eval(*e.args[0])));
      case Expr::Neg: {
        const Value v = eval(*e.args[0]);
        if (v.is(Value::Kind::Int)) {
          if (v.i == std::numeric_limits<int64_t>::min()) fail_(e.pos, "integer overflow in '-'");
          return Value::integer(-v.i);
        }
        if (v.is(Value::Kind::Float)) return Value::real(-v.f);
        fail_(e.pos, std::string("cannot negate ") + kind_name(v));
      }
      case Expr::Binary: {
        Value r = binary(e.name, eval(*e.args[0]), eval(*e.args[1]), e.pos);
        if (e.negated) r.b = !r.b;
        return r;
      }
      case Expr::And: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? eval(*e.args[1]) : a;
      }
      case Expr::Or: {
        Value a = eval(*e.args[0]);
        return truthy(a) ? a : eval(*e.args[1]);
      }
      case Expr::Cond: return truthy(eval(*e.args[0])) ? eval(*e.args[1]) : eval(*e.args[2]);
      case Expr::ListLit: {
        List l;
        for (const auto& x : e.args) l.push_back(eval(*x));
        return Value::of_list(std::move(l));
      }
      case Expr::DictLit: {
        Dict d;
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          const Value key = eval(*e.args[k]);
          if (!key.is(Value::Kind::String)) fail_(e.args[k]->pos, "dict keys must be strings");
          d.emplace_back(key.s, eval(*e.args[k + 1]));
        }
        return Value::of_dict(std::move(d));
      }
    }
    fail_(e.pos, "unsupported expression");
  }

  const Failure& fail_;
  std::vector<std::unordered_map<std::string, Value>> scopes_;
  int64_t iterations_ = 0;
};

}  // namespace

std::string render_chat_template(const std::string& template_text,
                                 const std::vector<ChatMessage>& messages,
                                 const ChatTemplateContext& context) {
  const Failure fail(template_text);
  TemplateParser parser(template_text, fail);
  const Body body = parser.parse();
  Renderer renderer(fail);
  List list;
  for (const ChatMessage& m : messages)
    list.push_back(Value::of_dict({{"role", Value::str(m.role)}, {"content", Value::str(m.content)}}));
  renderer.set_global("messages", Value::of_list(std::move(list)));
  for (const auto& [name, value] : context.flags) renderer.set_global(name, Value::boolean(value));
  renderer.set_global("add_generation_prompt", Value::boolean(context.add_generation_prompt));
  renderer.set_global("bos_token", Value::str(context.bos_token));
  renderer.set_global("eos_token", Value::str(context.eos_token));
  std::string out;
  renderer.render(body, out);
  return out;
}

}  // namespace parscale
