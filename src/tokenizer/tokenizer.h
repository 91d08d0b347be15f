// Byte-level BPE tokenizer that reads Hugging Face `tokenizer.json` (+ `tokenizer_config.json`)
// and reproduces the ids of the HF `tokenizers` library for the models ParScale ships (Qwen2.5,
// Qwen3) and for tokenizers written by `parscale tokenizer-train`.
//
// Supported tokenizer.json subset (anything else is rejected with a parscale::Error naming it):
//   normalizer    : null | NFC | Sequence[NFC...]
//   pre_tokenizer : Sequence[Split(Regex|String, Isolated, invert=false), ByteLevel(use_regex=false)]
//                   | ByteLevel(use_regex=true|false) | Split alone
//   model         : BPE (merges as "a b" strings or ["a","b"] pairs; no dropout, no byte_fallback,
//                   no continuing_subword_prefix / end_of_word_suffix)
//   decoder       : ByteLevel | null
//   post_processor: ignored for the ids of `encode` (ByteLevel post-processing only moves offsets);
//                   a TemplateProcessing post-processor is rejected because it would add ids.
//   added_tokens  : matched before pre-tokenization, leftmost-longest, with lstrip / rstrip /
//                   single_word / normalized as HF defines them.
//
// Input text is bytes. Invalid UTF-8 is replaced by U+FFFD per maximal ill-formed subpart (the
// WHATWG / Unicode-recommended rule, same as Python's errors="replace" and JS TextDecoder), which
// is what an HF pipeline sees after decoding the bytes to a string.
//
// Tokenizer holds its state in a shared_ptr: copies are cheap and share the (thread-safe) cache.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace parscale {

struct ChatMessage {
  std::string role;     // "system" | "user" | "assistant" (templates may accept others)
  std::string content;
};

class Tokenizer {
 public:
  // Loads tokenizer.json; reads tokenizer_config.json from the same directory when it exists.
  static Tokenizer from_file(const std::string& tokenizer_json);
  // Loads DIR/tokenizer.json (+ DIR/tokenizer_config.json when present).
  static Tokenizer from_model_dir(const std::string& dir);
  // Builds from in-memory JSON texts (config_json may be empty). `origin` names the source in errors.
  static Tokenizer from_json_text(const std::string& tokenizer_json, const std::string& config_json,
                                  const std::string& origin = "tokenizer.json");

  // Text (bytes, UTF-8 expected) -> ids. parse_special=false treats special added tokens as plain
  // text (HF's split_special_tokens=true): use it for untrusted input.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  // Ids -> text. Unknown ids are skipped (as HF does); invalid UTF-8 becomes U+FFFD.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const;
  // Raw bytes of one token as the decoder produces them (may be a partial UTF-8 character);
  // empty for unknown ids, and for special tokens when skip_special.
  std::string token_bytes(int32_t id, bool skip_special = false) const;

  size_t vocab_size() const;  // max id + 1 over model vocab and added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;  // "" for unknown ids
  bool is_special(int32_t id) const;

  // Ids of tokenizer_config's eos_token plus <|im_end|> / <|endoftext|> when they are special
  // added tokens (the ids a chat model ends a turn with). Sorted, unique.
  std::vector<int32_t> eos_ids() const;
  bool has_chat_template() const;
  const std::string& chat_template() const;
  // Renders the conversation with tokenizer_config's chat_template (see chat_template.h).
  // `flags` become boolean template variables, e.g. {{"enable_thinking", false}} for Qwen3.
  std::string apply_chat_template(const std::vector<ChatMessage>& messages,
                                  bool add_generation_prompt,
                                  const std::map<std::string, bool>& flags = {}) const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Incremental detokenizer for streaming: push() returns the text that became final with this
// token. Bytes of an unfinished multi-byte UTF-8 character are held back until it completes;
// invalid sequences come out as U+FFFD exactly where a full decode() would put them, so the
// concatenation of all push() results and flush() equals decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false);
  std::string push(int32_t id);
  std::string flush();  // emits U+FFFD for a trailing incomplete character; resets

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete (so far valid) UTF-8 character, < 4 bytes
};

}  // namespace parscale
