// Chat templates: a small Jinja interpreter for the subset HF chat templates use.
//
// Choice: Debian 12 packages no C++ Jinja library (`apt-cache search jinja` lists only Python,
// Rust and Emacs packages), so this is an honest Jinja-subset interpreter rather than native
// renderers keyed on template text. It renders with HF's environment settings (trim_blocks=True,
// lstrip_blocks=True) and supports:
//   tags        {{ }}  {% %}  {# #}  with '-' whitespace control on either side
//   statements  if/elif/else/endif, for/else/endfor (loop.index0/index/first/last/length/
//               revindex/revindex0, tuple unpacking), set (names and namespace attributes),
//               macro-free, filter-block-free
//   expressions literals (strings with escapes, ints, floats, true/false/none, lists, dicts),
//               names, .attr, [index], [a:b:c] slices, calls, + - * / // % ~, comparisons,
//               in / not in, and/or/not, `x if c else y`, `is [not] defined/undefined/none/
//               string/number/integer/mapping/sequence/iterable/true/false/boolean/odd/even`
//   filters     length count tojson trim upper lower string join first last default list
//               reverse capitalize title items int
//   methods     str: startswith endswith split strip lstrip rstrip upper lower replace title
//               dict: get items keys values
//   globals     namespace(...), raise_exception(msg), range(...); bos_token, eos_token,
//               add_generation_prompt, messages
// Anything outside the subset raises parscale::Error naming the construct and its position.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace parscale {

struct ChatTemplateContext {
  std::string bos_token;
  std::string eos_token;
  bool add_generation_prompt = false;
  std::map<std::string, bool> flags;  // extra boolean variables (e.g. enable_thinking)
};

// Renders `template_text` for `messages` (each a dict {role, content} in the template).
std::string render_chat_template(const std::string& template_text,
                                 const std::vector<ChatMessage>& messages,
                                 const ChatTemplateContext& context);

}  // namespace parscale
