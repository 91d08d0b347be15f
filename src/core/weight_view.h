// A read-only view of a row-major weight matrix in its storage dtype.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace parscale {

// A kernel-private copy of a weight matrix in a layout a faster kernel reads (kernels/packed.h);
// owned by whoever owns the weights.
struct PackedWeight;

// Matrix [rows, cols] (vectors: rows = 1), row-major, contiguous, in storage dtype `dtype`.
// For DType::I8, value(r, k) = data[r*cols + k] * scales[r*(cols/block) + k/block].
struct WeightView {
  DType dtype = DType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* scales = nullptr;
  int64_t block = 0;
  // Optional: the same matrix packed for the fast compute mode (null: none). `data` stays valid
  // and is what every other mode reads.
  const PackedWeight* packed = nullptr;
  const float* f32() const { return static_cast<const float*>(data); }
  bool empty() const { return data == nullptr; }
};

}  // namespace parscale
