// Prefetch targets that stay inside the weights: forming a pointer past the end of an object is
// undefined behaviour even when only prefetched, so a look-ahead row past the last one is
// replaced by the last row (in bounds; the prefetch is then merely redundant).
#pragma once
#include <algorithm>
#include <cstdint>

namespace parscale {

// Row `ahead` rows after `row` in a matrix of `rows` rows (row < rows), clamped to the last row.
constexpr int64_t prefetch_row(int64_t row, int64_t ahead, int64_t rows) { return std::min(row + ahead, rows - 1); }

}  // namespace parscale
