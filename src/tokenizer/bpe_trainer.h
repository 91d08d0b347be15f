// Byte-level BPE trainer producing an HF tokenizer.json that Tokenizer (and HF) load:
// NFC normalizer, Qwen-style Split regex + ByteLevel pre-tokenizer, ByteLevel decoder, BPE model
// with merges as ["a","b"] pairs, and special added tokens after the learned vocabulary.
//
// Vocabulary layout (ids): 0..255 the byte symbols in byte order, then one id per merge in merge
// order (a merge whose result already exists reuses that id and adds none), then the special
// tokens. vocab_size counts all of them.
//
// Training: text is split around the special tokens, NFC-normalized and pre-tokenized exactly as
// encoding does; distinct pieces are counted; then the most frequent adjacent symbol pair is merged
// repeatedly. Ties go to the pair with the smaller (left id, right id), so the result depends only
// on the input bytes (file order is sorted), not on hash-map iteration or thread scheduling.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace parscale {

struct BpeTrainerOptions {
  size_t vocab_size = 4096;
  std::vector<std::string> special_tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
  std::string eos_token = "<|im_end|>";
  std::string pad_token = "<|endoftext|>";
  int64_t min_pair_count = 2;  // stop merging when the best pair occurs fewer times
};

struct BpeTrainingResult {
  std::string tokenizer_json;         // contents of tokenizer.json
  std::string tokenizer_config_json;  // contents of tokenizer_config.json (eos, chat_template)
  size_t merges = 0;
  size_t vocab_size = 0;
  size_t distinct_pieces = 0;
  uint64_t bytes_read = 0;
};

// Trains on the concatenation of `texts` (each text is split independently; special tokens in
// the text are kept out of the statistics).
BpeTrainingResult train_bpe(const std::vector<std::string>& texts, const BpeTrainerOptions& options);

// Expands arguments that are file paths or glob patterns (*, ?, [..] per path segment, and "**"
// for any number of directories) into a sorted, de-duplicated list of regular files. A pattern
// that matches nothing is an error naming it.
std::vector<std::string> expand_file_patterns(const std::vector<std::string>& patterns);

// The ChatML chat template written into trained tokenizer_config.json files.
const std::string& chatml_template();

}  // namespace parscale
