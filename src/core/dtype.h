// Storage dtypes of weights and their conversions to fp32 (compute is fp32 throughout).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace parscale {

enum class DType : uint8_t { F32, BF16, F16, I8 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I8: return 1;
  }
  return 0;
}

// safetensors spelling ("F32", "BF16", "F16", "I8").
const char* dtype_name(DType t);
// Parses a safetensors dtype string; returns false for anything unsupported.
bool parse_dtype(std::string_view name, DType* out);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even, NaN kept quiet (same as torch's float -> bfloat16).
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

// IEEE half -> float, exact for all inputs (subnormals, inf, nan).
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
      mant &= 0x3ffu;
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// float -> IEEE half, round-to-nearest-even, overflow to inf.
uint16_t f32_to_f16(float f);

// Converts n stored values to fp32.
void convert_to_f32(DType t, const void* src, float* dst, size_t n);
// Converts n fp32 values to storage dtype t (F32, BF16 or F16).
void convert_from_f32(DType t, const float* src, void* dst, size_t n);

}  // namespace parscale
