#include "tokenizer/bpe.h"

#include <bit>
#include <queue>

namespace parscale {

void MergeTable::reserve(size_t merges) {
  size_t capacity = 16;
  while (capacity < merges * 2 + 16) capacity <<= 1;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  shift_ = 64 - std::countr_zero(capacity);
  size_ = 0;
  for (const Slot& s : old) {
    if (s.key != kEmpty) {
      insert(static_cast<int32_t>(s.key >> 32), static_cast<int32_t>(s.key & 0xFFFFFFFFu),
             s.entry.rank, s.entry.merged);
    }
  }
}

bool MergeTable::insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  if ((size_ + 1) * 2 > slots_.size()) reserve(size_ * 2 + 16);
  const uint64_t key = pack(left, right);
  for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == key) {
      s.entry = {rank, merged};
      return false;
    }
    if (s.key == kEmpty) {
      s.key = key;
      s.entry = {rank, merged};
      ++size_;
      return true;
    }
  }
}

void MergeTable::apply(std::vector<int32_t>& symbols) const {
  if (symbols.size() < 2) return;
  if (symbols.size() <= 64) {
    apply_small(symbols);
  } else {
    apply_heap(symbols);
  }
}

// O(n^2) in the worst case but branch-light and allocation-free: the common case (words).
void MergeTable::apply_small(std::vector<int32_t>& symbols) const {
  size_t n = symbols.size();
  Entry pairs[64];  // pairs[i]: merge of (symbols[i], symbols[i+1]), i < n-1
  for (size_t i = 0; i + 1 < n; ++i) pairs[i] = find(symbols[i], symbols[i + 1]);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (pairs[i].rank < pairs[best].rank) best = i;
    }
    if (pairs[best].rank == kNoRank) break;
    symbols[best] = pairs[best].merged;
    for (size_t j = best + 1; j + 1 < n; ++j) symbols[j] = symbols[j + 1];
    for (size_t j = best + 1; j + 2 < n; ++j) pairs[j] = pairs[j + 1];
    --n;
    if (best + 1 < n) pairs[best] = find(symbols[best], symbols[best + 1]);
    if (best > 0) pairs[best - 1] = find(symbols[best - 1], symbols[best]);
  }
  symbols.resize(n);
}

// O(n log n): doubly linked symbols plus a min-heap of candidate merges ordered by (rank, pos);
// stale candidates are recognised and skipped when popped.
void MergeTable::apply_heap(std::vector<int32_t>& symbols) const {
  const size_t n = symbols.size();
  std::vector<int32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = (i + 1 < n) ? static_cast<int32_t>(i + 1) : -1;
  }
  struct Candidate {
    int32_t rank, pos, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    const Entry e = find(symbols[pos], symbols[next[pos]]);
    if (e.rank != kNoRank) heap.push({e.rank, pos, e.merged});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const int32_t right = next[c.pos];
    const Entry e = find(symbols[c.pos], symbols[right]);
    if (e.rank != c.rank || e.merged != c.merged) continue;  // pair changed since pushed
    symbols[c.pos] = c.merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  size_t out = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace parscale
