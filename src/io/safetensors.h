// safetensors reading (memory-mapped, fully validated) and atomic writing.
//
// File format: u64 little-endian header length N, N bytes of JSON header
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}}
// then the data section; offsets are relative to the first byte after the header.
// Validation on open: header inside the file and valid JSON; every entry has a supported dtype,
// non-negative shape, end - begin == numel * dtype size, [begin, end) inside the data section;
// no two tensors overlap. Any failure throws parscale::Error naming the file and tensor.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace parscale {

// Read-only memory map of a whole file (RAII).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One tensor inside a mapped file. `data` stays valid while the owning store lives.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // path of the file holding it (for messages)

  int64_t numel() const;
  std::string shape_str() const;
};

std::string shape_to_string(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return file_->path(); }

 private:
  std::shared_ptr<MappedFile> file_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model folder: `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` (each shard must hold exactly the tensors the index maps to it).
class TensorStore {
 public:
  static std::shared_ptr<TensorStore> open_model_dir(const std::string& dir);
  static std::shared_ptr<TensorStore> open_files(const std::vector<std::string>& files);

  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  // Metadata of the first file (e.g. {"format": "pt"}).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void add_file(const std::string& path);
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: `data` holds numel * dtype_size bytes, row-major, little-endian.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a safetensors file atomically: to `path.tmp.<pid>`, fsync, then rename over `path`.
// Tensors are written in the order given (names must be unique).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes a text file atomically (temporary file + fsync + rename).
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace parscale
