// `parscale detokenize`: token ids (from --ids 1,2,3 or stdin, separated by commas, spaces or
// newlines, optionally as a JSON array) -> text on stdout.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>

#include "cli/common.h"
#include "cli/registry.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace {

struct Opts {
  std::string model, tokenizer, ids;
  bool skip_special = false;
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (c == ',' || c == '[' || c == ']' || std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    size_t j = i;
    if (s[j] == '-') ++j;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
    parscale::check(j > i && (s[j - 1] != '-'),
                    "detokenize: expected an integer id at offset " + std::to_string(i) +
                        ", found '" + s.substr(i, 16) + "'");
    const long long v = std::stoll(s.substr(i, j - i));
    parscale::check(v >= 0 && v <= INT32_MAX,
                    "detokenize: id " + s.substr(i, j - i) + " is out of range");
    ids.push_back(static_cast<int32_t>(v));
    i = j;
  }
  return ids;
}

parscale::cli::RegisterCommand reg(
    "detokenize", "Decode token ids (from --ids or stdin) to text", [](CLI::App& app) {
      auto o = std::make_shared<Opts>();
      auto* model = app.add_option("--model", o->model, "model directory containing tokenizer.json");
      auto* file = app.add_option("--tokenizer", o->tokenizer, "path of a tokenizer.json");
      model->excludes(file);
      app.add_option("--ids", o->ids, "comma-separated ids (default: read stdin)");
      app.add_flag("--skip-special", o->skip_special, "leave special tokens out of the text");
      return [o, &app]() -> int {
        const auto tok = parscale::cli::load_tokenizer(o->model, o->tokenizer, "detokenize");
        const std::string input = app.count("--ids") > 0
                                      ? o->ids
                                      : std::string(std::istreambuf_iterator<char>(std::cin),
                                                    std::istreambuf_iterator<char>());
        const std::string text = tok.decode(parse_ids(input), o->skip_special);
        std::fwrite(text.data(), 1, text.size(), stdout);
        return 0;
      };
    });

}  // namespace
