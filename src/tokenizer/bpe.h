// BPE merge table and the merge loop of a byte-level BPE model.
// Semantics are those of HF tokenizers' Word::merge_all without dropout: repeatedly merge the
// adjacent pair with the lowest merge rank, leftmost first, until no adjacent pair has a merge.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace parscale {

class MergeTable {
 public:
  struct Entry {
    int32_t rank;    // position in the merges list (lower merges first)
    int32_t merged;  // id of the token the pair merges into
  };
  static constexpr int32_t kNoRank = INT32_MAX;

  void reserve(size_t merges);
  // A duplicated pair takes the later rank, as HF's merge map (built by collecting into a hash
  // map, where later entries overwrite earlier ones) does. Returns false for a duplicate.
  bool insert(int32_t left, int32_t right, int32_t rank, int32_t merged);
  // {kNoRank, -1} when the pair has no merge.
  Entry find(int32_t left, int32_t right) const {
    if (slots_.empty()) return {kNoRank, -1};
    const uint64_t key = pack(left, right);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return s.entry;
      if (s.key == kEmpty) return {kNoRank, -1};
    }
  }
  size_t size() const { return size_; }

  // Merges `symbols` (token ids, one per initial symbol) in place.
  void apply(std::vector<int32_t>& symbols) const;

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  struct Slot {
    uint64_t key = kEmpty;
    Entry entry{kNoRank, -1};
  };
  static uint64_t pack(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  size_t slot_of(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_) & mask_;
  }
  void apply_small(std::vector<int32_t>& symbols) const;
  void apply_heap(std::vector<int32_t>& symbols) const;

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t size_ = 0;
};

}  // namespace parscale
