// Training data: pre-tokenized token files and the deterministic sequence order.
//
// Token file (".bin", written by `parscale tokenize` or write_token_file), little-endian:
//   offset 0  8 bytes  magic "PSTOKEN1"
//          8  u32      version = 1
//         12  u32      header size in bytes = 32
//         16  u64      number of tokens n
//         24  u64      vocabulary size the ids were made for (0 = unknown)
//         32  n × u32  token ids
// Several files (or texts) are concatenated in the order given.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace parscale::train {

struct TokenFile {
  std::vector<int32_t> tokens;
  uint64_t vocab_size = 0;
};

// Throws parscale::Error naming the file on a bad magic, version, size or id >= 2^31.
TokenFile read_token_file(const std::string& path);
void write_token_file(const std::string& path, const std::vector<int32_t>& tokens, uint64_t vocab_size);

// Windows of L tokens with stride L − 1 over the token stream (each token after the first is
// predicted exactly once). The last `eval` windows (at least 1 when eval_fraction > 0 and there
// are 2 or more windows) are held out for evaluation; the rest are the training windows.
// Training order: epoch e visits the training windows in a Fisher–Yates permutation drawn from
// mt19937_64(seed + e·0x9E3779B97F4A7C15); global sequence j of the run is window
// perm_{j / n_train}[j % n_train]. So the data position is fully given by (seed, sequences seen).
class Dataset {
 public:
  Dataset(std::vector<int32_t> tokens, int64_t seq_len, double eval_fraction, uint64_t seed);
  int64_t train_windows() const { return n_train_; }
  int64_t eval_windows() const { return n_eval_; }
  int64_t seq_len() const { return L_; }
  // Copies training sequence j (global index, any epoch) into dst [L].
  void train_sequence(int64_t j, int32_t* dst);
  // Copies held-out window e into dst [L].
  void eval_sequence(int64_t e, int32_t* dst) const;

 private:
  void window(int64_t w, int32_t* dst) const;
  std::vector<int32_t> tokens_;
  int64_t L_, n_train_ = 0, n_eval_ = 0;
  uint64_t seed_;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace parscale::train
