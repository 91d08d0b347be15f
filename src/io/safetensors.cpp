#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace parscale {

namespace fs = std::filesystem;
using json = nlohmann::json;

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw Error(path + ": cannot mmap: " + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string TensorInfo::shape_str() const { return shape_to_string(shape); }

namespace {

// Reads a non-negative integer that fits in int64 / size_t from a JSON value.
uint64_t json_uint(const json& v, const std::string& where) {
  if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0))
    throw Error(where + ": expected a non-negative integer, found " + v.dump());
  return v.get<uint64_t>();
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_shared<MappedFile>(path)) {
  const size_t size = file_->size();
  const uint8_t* base = file_->data();
  if (size < 8) throw Error(path + ": truncated safetensors file (" + std::to_string(size) + " bytes, need at least 8 for the header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > size - 8)
    throw Error(path + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(size) + " bytes)");
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + header_len));
  } catch (const json::exception& e) {
    throw Error(path + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) throw Error(path + ": safetensors header is not a JSON object");
  const size_t data_start = 8 + header_len;
  const size_t data_size = size - data_start;
  struct Range { size_t begin, end; std::string name; };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it.value().is_object()) throw Error(path + ": __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) throw Error(path + ": __metadata__." + m.key() + " is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    const json& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw Error(where + ": entry must have dtype, shape and data_offsets");
    if (!e["dtype"].is_string()) throw Error(where + ": dtype is not a string");
    TensorInfo info;
    info.name = name;
    info.file = path;
    const std::string dtype = e["dtype"].get<std::string>();
    if (!parse_dtype(dtype, &info.dtype))
      throw Error(where + ": unsupported dtype " + dtype + " (supported: F32, BF16, F16, I8)");
    if (!e["shape"].is_array()) throw Error(where + ": shape is not an array");
    uint64_t numel = 1;
    for (const json& d : e["shape"]) {
      uint64_t dim = json_uint(d, where + ": shape");
      if (dim > (uint64_t{1} << 40)) throw Error(where + ": dimension " + std::to_string(dim) + " is implausibly large");
      info.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;
      if (numel > (uint64_t{1} << 48)) throw Error(where + ": element count overflows");
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2) throw Error(where + ": data_offsets must be [begin, end]");
    uint64_t begin = json_uint(off[0], where + ": data_offsets[0]");
    uint64_t end = json_uint(off[1], where + ": data_offsets[1]");
    if (end < begin) throw Error(where + ": data_offsets end " + std::to_string(end) + " < begin " + std::to_string(begin));
    if (end > data_size)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  ") lie outside the data section of " + std::to_string(data_size) + " bytes (file truncated?)");
    const uint64_t expected = numel * dtype_size(info.dtype);
    if (end - begin != expected)
      throw Error(where + ": byte range holds " + std::to_string(end - begin) + " bytes, but " + dtype + " " +
                  info.shape_str() + " needs " + std::to_string(expected));
    info.data = base + data_start + begin;
    info.nbytes = static_cast<size_t>(end - begin);
    ranges.push_back({static_cast<size_t>(begin), static_cast<size_t>(end), name});
    tensors_.emplace(name, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end && ranges[i].end > ranges[i].begin)
      throw Error(path + ": tensors '" + ranges[i - 1].name + "' and '" + ranges[i].name + "' have overlapping byte ranges [" +
                  std::to_string(ranges[i - 1].begin) + ", " + std::to_string(ranges[i - 1].end) + ") and [" +
                  std::to_string(ranges[i].begin) + ", " + std::to_string(ranges[i].end) + ")");
  }
}

std::shared_ptr<TensorStore> TensorStore::open_files(const std::vector<std::string>& files) {
  auto store = std::make_shared<TensorStore>();
  for (const auto& f : files) store->add_file(f);
  return store;
}

void TensorStore::add_file(const std::string& path) {
  auto file = std::make_unique<SafetensorsFile>(path);
  for (const auto& [name, info] : file->tensors()) {
    auto [it, inserted] = tensors_.emplace(name, info);
    if (!inserted) throw Error(path + ": tensor '" + name + "' is also in " + it->second.file);
  }
  if (files_.empty()) metadata_ = file->metadata();
  files_.push_back(std::move(file));
}

std::shared_ptr<TensorStore> TensorStore::open_model_dir(const std::string& dir) {
  const fs::path single = fs::path(dir) / "model.safetensors";
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(single)) return open_files({single.string()});
  if (!fs::exists(index))
    throw Error(dir + ": no model.safetensors and no model.safetensors.index.json");
  json j;
  {
    std::ifstream in(index);
    if (!in) throw Error(index.string() + ": cannot open");
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      throw Error(index.string() + ": invalid JSON: " + e.what());
    }
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw Error(index.string() + ": missing object field 'weight_map'");
  std::map<std::string, std::set<std::string>> expected_by_file;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) throw Error(index.string() + ": weight_map['" + it.key() + "'] is not a string");
    const std::string shard = it.value().get<std::string>();
    if (shard.find('/') != std::string::npos || shard.find('\0') != std::string::npos || shard == ".." || shard == "." ||
        shard.empty() || shard.size() > 255)
      throw Error(index.string() + ": weight_map['" + it.key().substr(0, 200) + "'] names an invalid shard file '" +
                  shard.substr(0, 200) + "'");
    expected_by_file[shard].insert(it.key());
  }
  for (const auto& [shard, names] : expected_by_file) {
    std::error_code ec;  // (the throwing overload would escape as a std::filesystem_error, e.g. for a too-long name)
    if (!fs::is_regular_file(fs::path(dir) / shard, ec))
      throw Error(index.string() + ": names shard '" + shard.substr(0, 200) + "' (for '" + names.begin()->substr(0, 200) +
                  "'), which " + (ec && ec != std::errc::no_such_file_or_directory ? "cannot be opened: " + ec.message() : "does not exist"));
  }
  auto store = std::make_shared<TensorStore>();
  for (const auto& [shard, names] : expected_by_file) {
    const std::string path = (fs::path(dir) / shard).string();
    store->add_file(path);
    const auto& got = store->files_.back()->tensors();
    for (const auto& n : names)
      if (!got.count(n)) throw Error(path + ": tensor '" + n + "' listed in model.safetensors.index.json is not in this shard");
    for (const auto& [n, _] : got)
      if (!names.count(n)) throw Error(path + ": tensor '" + n + "' is in this shard but model.safetensors.index.json maps it elsewhere");
  }
  return store;
}

const TensorInfo* TensorStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

namespace {

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw Error(path + ": write failed: " + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Writes via callback into a temporary file next to `path`, fsyncs, renames over `path`.
template <typename Fn>
void atomic_write(const std::string& path, Fn&& body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(tmp + ": cannot create: " + std::strerror(errno));
  try {
    body(fd, tmp);
    if (::fsync(fd) != 0) throw Error(tmp + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp.c_str());
    throw Error(path + ": rename failed: " + std::strerror(e));
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    if (!seen.insert(t.name).second) throw Error(path + ": duplicate tensor name '" + t.name + "' to write");
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    uint64_t nbytes = numel * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  atomic_write(path, [&](int fd, const std::string& tmp) {
    uint8_t len[8];
    uint64_t n = h.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    write_all(fd, len, 8, tmp);
    write_all(fd, h.data(), h.size(), tmp);
    for (const auto& t : tensors) {
      uint64_t numel = 1;
      for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
      write_all(fd, t.data, numel * dtype_size(t.dtype), tmp);
    }
  });
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  atomic_write(path, [&](int fd, const std::string& tmp) { write_all(fd, contents.data(), contents.size(), tmp); });
}

}  // namespace parscale
