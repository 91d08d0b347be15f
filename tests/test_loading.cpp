// Bad input gives one clear error naming file / tensor / field, expected and found; never a crash.
#include <cstring>
#include <fstream>
#include <limits>

#include "core/error.h"
#include "engine/session.h"
#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/weights.h"
#include "test_util.h"

using namespace parscale;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void write_bytes(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}

// Copies a fixture model into a temp dir.
fs::path copy_fixture(const test::TempDir& tmp, const std::string& name) {
  const fs::path dst = tmp.path / name;
  fs::copy(test::fixtures_dir() / "models" / name, dst, fs::copy_options::recursive);
  return dst;
}

// Rewrites the JSON header of a safetensors file (data section unchanged).
void edit_header(const fs::path& file, const std::function<void(json&)>& edit) {
  std::string bytes = read_bytes(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  json h = json::parse(bytes.substr(8, n));
  edit(h);
  std::string hs = h.dump();
  while (hs.size() % 8) hs.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((hs.size() >> (8 * i)) & 0xff);
  write_bytes(file, out + hs + bytes.substr(8 + n));
}

// Expects load_model(dir) to throw an Error whose message contains every needle.
void expect_load_error(const fs::path& dir, const std::vector<std::string>& needles) {
  try {
    load_model(dir.string());
    ADD_FAILURE() << "expected an error loading " << dir;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

const char* kModel = "ps2_t1_f32_untied";  // single-file F32 model

TEST(Loading, TruncatedFile) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  auto f = dir / "model.safetensors";
  std::string b = read_bytes(f);
  write_bytes(f, b.substr(0, b.size() - 100));
  expect_load_error(dir, {"model.safetensors", "outside the data section", "truncated"});
}

TEST(Loading, FileShorterThanHeaderLength) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  auto f = dir / "model.safetensors";
  write_bytes(f, read_bytes(f).substr(0, 40));
  expect_load_error(dir, {"model.safetensors", "header length", "past the end"});
  write_bytes(f, "abc");
  expect_load_error(dir, {"model.safetensors", "truncated"});
}

TEST(Loading, HeaderOffsetsOutsideFile) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  edit_header(dir / "model.safetensors", [](json& h) {
    auto& off = h["model.norm.weight"]["data_offsets"];
    off[0] = off[0].get<uint64_t>() + (uint64_t{1} << 40);
    off[1] = off[1].get<uint64_t>() + (uint64_t{1} << 40);
  });
  expect_load_error(dir, {"model.safetensors", "model.norm.weight", "outside the data section"});
}

TEST(Loading, OverlappingRanges) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  edit_header(dir / "model.safetensors", [](json& h) {
    // Point the final norm at the bytes of the first layer's input norm (same size).
    h["model.norm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  expect_load_error(dir, {"model.safetensors", "overlapping", "model.norm.weight", "model.layers.0.input_layernorm.weight"});
}

TEST(Loading, SizeMismatchBetweenShapeAndRange) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  edit_header(dir / "model.safetensors", [](json& h) { h["model.norm.weight"]["shape"] = {7}; });
  expect_load_error(dir, {"model.norm.weight", "needs 28"});
}

TEST(Loading, MissingTensor) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  edit_header(dir / "model.safetensors", [](json& h) { h.erase("model.layers.1.self_attn.prefix_v"); });
  expect_load_error(dir, {dir.string(), "missing tensor", "model.layers.1.self_attn.prefix_v", "[2, 2, 1, 8]"});
}

TEST(Loading, WrongShape) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  // Same byte count, different shape: caught against the config.
  edit_header(dir / "model.safetensors", [](json& h) {
    auto s = h["model.layers.0.mlp.up_proj.weight"]["shape"];
    h["model.layers.0.mlp.up_proj.weight"]["shape"] = {s[1], s[0]};
  });
  expect_load_error(dir, {"model.safetensors", "model.layers.0.mlp.up_proj.weight", "has shape", "expected"});
}

TEST(Loading, UnsupportedDtype) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  edit_header(dir / "model.safetensors", [](json& h) {
    // F64 of half the element count covers the same bytes.
    h["model.norm.weight"]["dtype"] = "F64";
    h["model.norm.weight"]["shape"] = {16};
  });
  expect_load_error(dir, {"model.safetensors", "model.norm.weight", "unsupported dtype F64"});
}

TEST(Loading, InvalidHeaderJson) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  auto f = dir / "model.safetensors";
  std::string b = read_bytes(f);
  b[9] = '#';
  write_bytes(f, b);
  expect_load_error(dir, {"model.safetensors", "not valid JSON"});
}

TEST(Loading, InvalidConfigJson) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  write_bytes(dir / "config.json", "{\"model_type\": \"qwen2_parscale\", \"hidden_size\": 32,");
  expect_load_error(dir, {"config.json", "invalid JSON"});
}

TEST(Loading, BadConfigFields) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  const json good = test::read_json(dir / "config.json");
  auto with = [&](const std::function<void(json&)>& f) {
    json j = good;
    f(j);
    write_bytes(dir / "config.json", j.dump());
  };
  with([](json& j) { j["model_type"] = "llama"; });
  expect_load_error(dir, {"config.json", "unsupported model_type \"llama\""});
  with([](json& j) { j["hidden_size"] = "32"; });
  expect_load_error(dir, {"config.json", "'hidden_size'", "integer"});
  // Out-of-range numbers are errors, never a float-to-integer cast out of range (UB; found by
  // fuzzing); integral floats are accepted.
  with([](json& j) { j["max_position_embeddings"] = 1.2844e86; });
  expect_load_error(dir, {"config.json", "'max_position_embeddings'", "out of range"});
  with([](json& j) { j["max_position_embeddings"] = std::numeric_limits<uint64_t>::max(); });
  expect_load_error(dir, {"config.json", "'max_position_embeddings'", "out of range"});
  with([](json& j) { j["hidden_size"] = 32.5; });
  expect_load_error(dir, {"config.json", "'hidden_size'", "integer"});
  with([](json& j) { j["num_attention_heads"] = 3; });
  expect_load_error(dir, {"config.json", "num_key_value_heads"});
  with([](json& j) { j["parscale_n"] = 0; });
  expect_load_error(dir, {"config.json", "'parscale_n'", "> 0"});
  with([](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
  expect_load_error(dir, {"config.json", "rope_scaling"});
  with([](json& j) { j.erase("model_type"); });
  expect_load_error(dir, {"config.json", "model_type"});
  with([](json& j) { j["parscale_n"] = 3; });  // tensors are for P = 2
  expect_load_error(dir, {"prefix_k", "has shape [2, 2, 1, 8]", "expected [3, 2, 1, 8]"});
}

TEST(Loading, BadQwen3Configs) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, "qwen3ps2_t3_bf16_tied_d16");
  const json good = test::read_json(dir / "config.json");
  auto with = [&](const std::function<void(json&)>& f) {
    json j = good;
    f(j);
    write_bytes(dir / "config.json", j.dump());
  };
  with([](json& j) { j["use_sliding_window"] = true; });
  expect_load_error(dir, {"config.json", "use_sliding_window", "not supported"});
  with([](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; });
  expect_load_error(dir, {"config.json", "unsupported rope_scaling"});
  with([](json& j) { j["attention_bias"] = "no"; });
  expect_load_error(dir, {"config.json", "'attention_bias'", "true or false"});
  with([](json& j) { j["head_dim"] = 15; });
  expect_load_error(dir, {"config.json", "head_dim must be even"});
  // head_dim absent: Qwen3's default is 128 (not hidden / heads), so the tensors no longer fit.
  with([](json& j) { j.erase("head_dim"); });
  expect_load_error(dir, {"q_proj.weight", "expected [512, 32]"});
  // attention_bias true needs the bias tensors; the ParScale type needs parscale_n > 1 tensors.
  with([](json& j) { j["attention_bias"] = true; });
  expect_load_error(dir, {"missing tensor 'model.layers.0.self_attn.q_proj.bias'"});
  with([](json& j) { j["model_type"] = "qwen3"; });  // P > 1 fields on a plain qwen3 type
  expect_load_error(dir, {"config.json", "needs model_type \"qwen3_parscale\""});
  with([](json& j) { j["model_type"] = "qwen2_parscale"; });  // Qwen2 block: biases expected, no q/k norm
  expect_load_error(dir, {"missing tensor", "q_proj.bias"});
  // A Qwen3 checkpoint without its q/k norm weights.
  with([](json&) {});
  edit_header(dir / "model.safetensors", [](json& h) { h.erase("model.layers.1.self_attn.k_norm.weight"); });
  expect_load_error(dir, {"missing tensor 'model.layers.1.self_attn.k_norm.weight'", "expected shape [16]"});
}

TEST(Loading, ShardIndexErrors) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, "ps4_t7_f32_tied_sharded");
  json idx = test::read_json(dir / "model.safetensors.index.json");
  // A tensor mapped to the wrong shard.
  json bad = idx;
  std::string name = bad["weight_map"].begin().key();
  std::string file = bad["weight_map"][name];
  bad["weight_map"][name] = file == "model-00001-of-00002.safetensors" ? "model-00002-of-00002.safetensors"
                                                                       : "model-00001-of-00002.safetensors";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_load_error(dir, {name, "index"});
  // A shard that does not exist.
  bad = idx;
  bad["weight_map"][name] = "model-00009-of-00009.safetensors";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_load_error(dir, {"model-00009-of-00009.safetensors", "does not exist"});
  // A path escaping the folder.
  bad["weight_map"][name] = "../x.safetensors";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_load_error(dir, {"invalid shard file"});
  // Names the filesystem refuses (too long; a NUL byte) are errors, not escaping exceptions.
  bad["weight_map"][name] = std::string(300, 'x');
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_load_error(dir, {"invalid shard file"});
  bad["weight_map"][name] = std::string("model-00001-of-00002.safetensors") + '\0' + "x";
  write_bytes(dir / "model.safetensors.index.json", bad.dump());
  expect_load_error(dir, {"invalid shard file"});
}

TEST(Loading, NoWeights) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  fs::remove(dir / "model.safetensors");
  expect_load_error(dir, {"no model.safetensors"});
  expect_load_error(tmp.path / "nonexistent", {"model folder not found"});
}

TEST(Loading, UnknownTensorsAreReported) {
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, kModel);
  edit_header(dir / "model.safetensors", [](json& h) {
    // An extra zero-size tensor.
    h["model.layers.0.self_attn.rotary_emb.inv_freq"] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {0, 0}}};
  });
  ModelWeights w = load_model(dir.string());
  ASSERT_EQ(w.unknown_tensors.size(), 1u);
  EXPECT_NE(w.unknown_tensors[0].find("rotary_emb.inv_freq"), std::string::npos);
}

TEST(Loading, WriteSafetensorsRoundTripAndAtomic) {
  test::TempDir tmp;
  const auto path = (tmp.path / "t.safetensors").string();
  std::vector<float> a{1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> b{f32_to_bf16(1.5f), f32_to_bf16(-2.0f)};
  write_safetensors(path, {{"a", DType::F32, {2, 3}, a.data()}, {"b", DType::BF16, {2}, b.data()}});
  SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors().at("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(reinterpret_cast<const float*>(f.tensors().at("a").data)[5], 6.0f);
  EXPECT_EQ(bf16_to_f32(reinterpret_cast<const uint16_t*>(f.tensors().at("b").data)[1]), -2.0f);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  // No temporary file is left behind, and a duplicate name fails without touching the target.
  for (const auto& e : fs::directory_iterator(tmp.path)) EXPECT_EQ(e.path().filename(), "t.safetensors");
  EXPECT_THROW(write_safetensors(path, {{"a", DType::F32, {1}, a.data()}, {"a", DType::F32, {1}, a.data()}}), Error);
  EXPECT_EQ(SafetensorsFile(path).tensors().size(), 2u);
}

TEST(Loading, NullFieldsTakeUpstreamDefaults) {
  json j = {{"model_type", "qwen2_parscale"}, {"hidden_size", 32}, {"num_attention_heads", 4},
            {"num_key_value_heads", nullptr}, {"rope_scaling", nullptr}, {"parscale_n", 2},
            {"parscale_n_tokens", nullptr}, {"eos_token_id", nullptr}, {"vocab_size", 10},
            {"intermediate_size", 8}, {"num_hidden_layers", 1}};
  ModelConfig c = ModelConfig::from_json(j, "cfg");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.parscale_n_tokens, 48);
  EXPECT_DOUBLE_EQ(c.parscale_attn_smooth, 0.01);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.head_dim, 8);
  // to_json -> from_json round trip keeps every field.
  ModelConfig d = ModelConfig::from_json(c.to_json(), "roundtrip");
  EXPECT_EQ(d.to_json(), c.to_json());
}

}  // namespace

namespace {

TEST(Loading, RandomCorruptionNeverCrashes) {
  // Flip bytes of the header, or cut the file at random places: every outcome is either a clean
  // load or a parscale::Error (ASan/UBSan builds check there is no memory error on the way).
  test::TempDir tmp;
  auto dir = copy_fixture(tmp, "ps2_t3_bf16_tied_1layer");
  const auto file = dir / "model.safetensors";
  const std::string original = read_bytes(file);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(original[static_cast<size_t>(i)]);
  std::mt19937_64 rng(12345);
  int errors = 0, loads = 0, truncated_loads = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = original;
    const bool truncated = trial % 3 == 0;
    if (truncated) {
      bytes.resize(rng() % bytes.size());
    } else {
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        const size_t at = rng() % (8 + header_len);
        bytes[at] = static_cast<char>(rng() & 0xff);
      }
    }
    write_bytes(file, bytes);
    try {
      ModelWeights w = load_model(dir.string());
      ++loads;
      truncated_loads += truncated;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 150);  // most corruptions are caught
  // A file cut anywhere lacks bytes the header promises: it never loads. (This replaces
  // `errors + loads == 300`, which every run satisfied by construction.)
  EXPECT_EQ(truncated_loads, 0) << loads << " loads";
}

// The fast mode's packed copies (kernels/packed.h) of the demo model's BF16 matrices: made at
// load, with the plain pages released only when asked, not made when packing is off; the released
// model computes the same logits and refuses exact mode with an error.
TEST(Loading, FastModePacksBf16MatricesAndReleasesThePlainCopyOnlyWhenAsked) {
  if (!kernels::packed_bf16_supported()) GTEST_SKIP() << "no oneDNN or no AVX512-BF16 here";
  const test::ExactModeScope restore;  // (restores the mode afterwards)
  kernels::set_compute_mode(kernels::ComputeMode::Fast);
  const std::string dir = (test::source_dir() / "models" / "demo").string();
  LoadOptions keep, release, off;
  release.release_packed_sources = true;
  off.pack_fast = false;
  const ModelWeights a = load_model(dir, keep), b = load_model(dir, release), c = load_model(dir, off);
  EXPECT_GT(packed_weight_bytes(a.bb()), 0);
  EXPECT_EQ(packed_weight_bytes(c.bb()), 0);
  for (size_t l = 0; l < a.bb().layers.size(); ++l) {
    EXPECT_NE(a.bb().layers[l].down_proj.packed, nullptr);
    EXPECT_NE(a.bb().layers[l].down_proj.data, nullptr);
    EXPECT_NE(b.bb().layers[l].down_proj.packed, nullptr);
    EXPECT_EQ(b.bb().layers[l].down_proj.data, nullptr);
    EXPECT_EQ(c.bb().layers[l].down_proj.packed, nullptr);
  }
  // The demo's lm_head is its embedding (tied): one packed copy serves both; lookups read it.
  ASSERT_TRUE(b.bb().tied);
  EXPECT_NE(b.bb().lm_head.packed, nullptr);
  EXPECT_EQ(b.bb().embed_tokens.packed, b.bb().lm_head.packed);
  EXPECT_EQ(b.bb().embed_tokens.data, nullptr);
  const std::vector<int32_t> ids = {5, 17, 300, 42, 9, 1000, 7};
  auto logits = [&](const ModelWeights& w) {
    Session s(w, 1, static_cast<int64_t>(ids.size()));
    std::vector<float> out;
    s.forward({ids}, Session::Outputs::AllPositions, out);
    return out;
  };
  const std::vector<float> la = logits(a), lb = logits(b);
  ASSERT_EQ(la.size(), lb.size());
  EXPECT_EQ(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)), 0);
  kernels::set_compute_mode(kernels::ComputeMode::Exact);
  EXPECT_THROW(logits(b), Error);
  EXPECT_EQ(logits(a).size(), la.size());  // the kept plain copy still runs exactly
}

}  // namespace
