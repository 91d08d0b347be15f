// Helpers shared by the tests: fixture paths, JSON loading, logit comparison, temp dirs.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace parscale::test {

// Exact compute mode for the lifetime of the object, then the mode before it. Golden comparisons
// hold one (declared before the weights are loaded, so nothing is packed for the fast mode): the
// default, auto, runs BF16 and q8 weights on bf16 dot products where the CPU has them.
struct ExactModeScope {
  kernels::ComputeMode saved = kernels::active_compute_mode();
  ExactModeScope() { kernels::set_compute_mode(kernels::ComputeMode::Exact); }
  ~ExactModeScope() { kernels::set_compute_mode(saved); }
  ExactModeScope(const ExactModeScope&) = delete;
  ExactModeScope& operator=(const ExactModeScope&) = delete;
};

inline std::filesystem::path source_dir() { return PARSCALE_SOURCE_DIR; }
inline std::filesystem::path fixtures_dir() { return source_dir() / "tests" / "fixtures"; }

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  EXPECT_TRUE(in.good()) << "cannot open " << p;
  return nlohmann::json::parse(in);
}

inline std::vector<std::string> model_fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(fixtures_dir() / "models"))
    if (std::filesystem::exists(e.path() / "golden.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// The tolerance: |got - expected| <= 2e-3 + 1e-3·|expected|.
inline bool logit_close(float got, double expected) {
  return std::fabs(static_cast<double>(got) - expected) <= 2e-3 + 1e-3 * std::fabs(expected);
}

// A fresh empty directory under the system temp dir, removed at destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("parscale_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// {5, 17, 3} -> "5,17,3" (the CLI's --ids form).
inline std::string join_ids(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// Runs a shell command, returns exit status; stdout/stderr captured into the strings.
inline int run_command(const std::string& cmd, std::string* out, std::string* err = nullptr) {
  TempDir tmp;
  const auto o = tmp.path / "out", e = tmp.path / "err";
  const std::string full = cmd + " >" + o.string() + " 2>" + e.string();
  int rc = std::system(full.c_str());
  auto slurp = [](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  if (out) *out = slurp(o);
  if (err) *err = slurp(e);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace parscale::test
