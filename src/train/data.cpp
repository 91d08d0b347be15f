#include "train/data.h"

#include <cstring>
#include <fstream>
#include <random>

#include "core/error.h"
#include "io/safetensors.h"

namespace parscale::train {

namespace {
constexpr char kMagic[8] = {'P', 'S', 'T', 'O', 'K', 'E', 'N', '1'};
constexpr uint32_t kVersion = 1, kHeader = 32;

template <typename T>
T load_le(const unsigned char* p) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}
template <typename T>
void store_le(std::string& s, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
}  // namespace

TokenFile read_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open token file");
  unsigned char h[kHeader];
  in.read(reinterpret_cast<char*>(h), kHeader);
  if (in.gcount() != static_cast<std::streamsize>(kHeader) || std::memcmp(h, kMagic, 8) != 0)
    throw Error(path + ": not a parscale token file (expected magic \"PSTOKEN1\")");
  const uint32_t version = load_le<uint32_t>(h + 8), header = load_le<uint32_t>(h + 12);
  if (version != kVersion || header != kHeader)
    throw Error(path + ": token file version " + std::to_string(version) + " / header " + std::to_string(header) +
                ", expected version 1 / header 32");
  const uint64_t n = load_le<uint64_t>(h + 16);
  TokenFile f;
  f.vocab_size = load_le<uint64_t>(h + 24);
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  // Compared without forming 4·n (a huge n would wrap around and match a small file).
  if (size < kHeader || (size - kHeader) % 4 != 0 || (size - kHeader) / 4 != n)
    throw Error(path + ": token file holds " + std::to_string(size) + " bytes, expected 32 + 4 × " + std::to_string(n));
  in.seekg(kHeader);
  std::vector<unsigned char> raw(static_cast<size_t>(4 * n));
  in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  f.tokens.resize(static_cast<size_t>(n));
  for (uint64_t i = 0; i < n; ++i) {
    const uint32_t id = load_le<uint32_t>(raw.data() + 4 * i);
    if (id > 0x7fffffffu || (f.vocab_size && id >= f.vocab_size))
      throw Error(path + ": token " + std::to_string(i) + " has id " + std::to_string(id) + " outside the vocabulary of " +
                  std::to_string(f.vocab_size));
    f.tokens[static_cast<size_t>(i)] = static_cast<int32_t>(id);
  }
  return f;
}

void write_token_file(const std::string& path, const std::vector<int32_t>& tokens, uint64_t vocab_size) {
  std::string s(kMagic, 8);
  store_le<uint32_t>(s, kVersion);
  store_le<uint32_t>(s, kHeader);
  store_le<uint64_t>(s, tokens.size());
  store_le<uint64_t>(s, vocab_size);
  s.reserve(s.size() + 4 * tokens.size());
  for (int32_t t : tokens) {
    check(t >= 0, path + ": negative token id");
    store_le<uint32_t>(s, static_cast<uint32_t>(t));
  }
  write_file_atomic(path, s);
}

Dataset::Dataset(std::vector<int32_t> tokens, int64_t seq_len, double eval_fraction, uint64_t seed)
    : tokens_(std::move(tokens)), L_(seq_len), seed_(seed) {
  check(seq_len >= 2, "data: --seq-len must be at least 2");
  const int64_t n = static_cast<int64_t>(tokens_.size());
  const int64_t windows = n >= L_ ? (n - 1) / (L_ - 1) : 0;
  if (windows < 1)
    throw Error("data: " + std::to_string(n) + " tokens do not fill one sequence of --seq-len " + std::to_string(L_));
  n_eval_ = eval_fraction > 0 && windows >= 2 ? std::max<int64_t>(1, static_cast<int64_t>(eval_fraction * windows)) : 0;
  n_train_ = windows - n_eval_;
}

void Dataset::window(int64_t w, int32_t* dst) const {
  std::memcpy(dst, tokens_.data() + w * (L_ - 1), static_cast<size_t>(L_) * sizeof(int32_t));
}

void Dataset::train_sequence(int64_t j, int32_t* dst) {
  const int64_t epoch = j / n_train_;
  if (epoch != perm_epoch_) {
    perm_.resize(static_cast<size_t>(n_train_));
    for (int64_t i = 0; i < n_train_; ++i) perm_[static_cast<size_t>(i)] = i;
    std::mt19937_64 rng(seed_ + static_cast<uint64_t>(epoch) * 0x9E3779B97F4A7C15ull);
    for (int64_t i = n_train_ - 1; i > 0; --i) {
      const int64_t k = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
      std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(k)]);
    }
    perm_epoch_ = epoch;
  }
  window(perm_[static_cast<size_t>(j % n_train_)], dst);
}

void Dataset::eval_sequence(int64_t e, int32_t* dst) const { window(n_train_ + e, dst); }

}  // namespace parscale::train
