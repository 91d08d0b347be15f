// Shared by the libFuzzer harnesses (fuzz_*.cpp). Each harness defines LLVMFuzzerTestOneInput and
// accepts any input: a parscale::Error is the expected outcome for bad input; any other exception,
// crash, leak or sanitizer report is a bug.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace parscale::fuzz {

inline std::string source_dir() { return PARSCALE_SOURCE_DIR; }

// A scratch directory of this process (loaders take paths); removed at exit.
inline const std::filesystem::path& scratch_dir() {
  struct Dir {
    std::filesystem::path path;
    Dir() {
      path = std::filesystem::temp_directory_path() / ("parscale_fuzz_" + std::to_string(::getpid()));
      std::filesystem::create_directories(path);
    }
    ~Dir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static Dir dir;
  return dir.path;
}

inline void write_file(const std::filesystem::path& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

}  // namespace parscale::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
