#include "model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "core/error.h"
#include "kernels/kernels.h"

namespace parscale {

namespace fs = std::filesystem;

WeightArena::~WeightArena() {
  for (const Region& r : regions_) ::munmap(r.base, r.len);
}

uint8_t* WeightArena::allocate(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20, kRegion = size_t{1} << 30, kAlign = 64;
  bytes = (std::max<size_t>(bytes, 1) + kAlign - 1) / kAlign * kAlign;
  if (bytes > left_) {
    // A new region: address space only; pages become resident when written.
    const size_t usable = std::max(kRegion, (bytes + kHuge - 1) / kHuge * kHuge);
    const size_t len = usable + kHuge;  // room to align the start to 2 MiB
    void* base = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) throw Error("cannot reserve " + std::to_string(len) + " bytes of memory for weights");
    regions_.push_back({base, len});
    cur_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(base) + kHuge - 1) / kHuge * kHuge);
    left_ = usable;
#ifdef MADV_HUGEPAGE
    ::madvise(cur_, usable, MADV_HUGEPAGE);
#endif
  }
  uint8_t* p = cur_;
  cur_ += bytes;
  left_ -= bytes;
  return p;
}

void quantize_q8(const float* src, int64_t rows, int64_t cols, int64_t block, int8_t* q, float* scales) {
  check(block > 0 && cols % block == 0, "quantize_q8: block " + std::to_string(block) + " does not divide " + std::to_string(cols) + " columns");
  const int64_t nb = cols / block;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = src + r * cols + b * block;
      float amax = 0.0f;
      for (int64_t k = 0; k < block; ++k) amax = std::max(amax, std::fabs(v[k]));
      const float scale = amax / 127.0f;
      const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
      scales[r * nb + b] = scale;
      for (int64_t k = 0; k < block; ++k)
        q[r * cols + b * block + k] = static_cast<int8_t>(std::lround(std::clamp(v[k] * inv, -127.0f, 127.0f)));
    }
}

WeightView convert_weight(const WeightView& src, DType target, int64_t block, WeightArena& arena) {
  WeightView out{target, nullptr, src.rows, src.cols};
  const int64_t rows = src.rows, cols = src.cols;
  uint8_t* dst = arena.allocate(static_cast<size_t>(rows * cols) * dtype_size(target));
  out.data = dst;
  float* scales = nullptr;
  if (target == DType::I8) {
    check(block > 0 && cols % block == 0, "q8: block " + std::to_string(block) + " does not divide the " + std::to_string(cols) +
                                              " columns of a matrix");
    scales = reinterpret_cast<float*>(arena.allocate(static_cast<size_t>(rows * (cols / block)) * sizeof(float)));
    out.scales = scales;
    out.block = block;
  }
  // Row chunks of ~64K values through an fp32 buffer per thread.
  const int64_t chunk_rows = std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1));
  const int64_t n_chunks = (rows + chunk_rows - 1) / chunk_rows;
#pragma omp parallel
  {
    std::vector<float> tmp(static_cast<size_t>(chunk_rows * cols));
#pragma omp for schedule(static)
    for (int64_t c = 0; c < n_chunks; ++c) {
      const int64_t r0 = c * chunk_rows, nr = std::min(chunk_rows, rows - r0);
      for (int64_t r = 0; r < nr; ++r) kernels::weight_row_f32(src, r0 + r, tmp.data() + r * cols);
      if (target == DType::I8)
        quantize_q8(tmp.data(), nr, cols, block, reinterpret_cast<int8_t*>(dst) + r0 * cols, scales + r0 * (cols / block));
      else
        convert_from_f32(target, tmp.data(), dst + static_cast<size_t>(r0 * cols) * dtype_size(target), static_cast<size_t>(nr * cols));
    }
  }
  return out;
}

namespace {

// Drops the file-backed pages of [p, p + n) from this process's resident set (read-only private
// mappings: the data stays in the page cache and faults back in if read again).
void release_mapped(const void* p, size_t n) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

}  // namespace

namespace {

// Adapter metadata keys (safetensors __metadata__), written by `parscale train`/`init`.
constexpr const char* kAdapterStreams = "parscale_n";
constexpr const char* kAdapterTokens = "parscale_n_tokens";
constexpr const char* kAdapterSmooth = "parscale_attn_smooth";

struct Loader {
  const ModelConfig& config;
  const TensorStore& store;
  const TensorStore* adapter;  // may be null
  const std::string& source;
  const LoadOptions& options;
  ModelWeights& out;
  std::set<std::string> used;
  std::shared_ptr<WeightArena> arena_;

  WeightArena& arena() {
    if (!arena_) {
      arena_ = std::make_shared<WeightArena>();
      out.owned.push_back(arena_);
    }
    return *arena_;
  }

  const TensorInfo& get(const TensorSpec& spec) {
    const TensorInfo* t = nullptr;
    if (adapter && spec.group == ParamGroup::ParScale) t = adapter->find(spec.name);
    if (!t) t = store.find(spec.name);
    if (!t) {
      throw Error(source + ": missing tensor '" + spec.name + "' (expected shape " + shape_to_string(spec.shape) +
                  (spec.group == ParamGroup::ParScale ? "; ParScale parameters come from the checkpoint or an --adapter file)" : ")"));
    }
    if (t->shape != spec.shape)
      throw Error(t->file + ": tensor '" + spec.name + "' has shape " + t->shape_str() + ", expected " +
                  shape_to_string(spec.shape) + " from config.json");
    if (t->dtype == DType::I8) {
      // 8-bit matrices carry a companion scale tensor "<name>.scales" [rows, cols/block] (F32).
      if (spec.kind != ParamKind::Matrix && spec.kind != ParamKind::Embedding)
        throw Error(t->file + ": tensor '" + spec.name + "' is I8, but only matrices may be 8-bit");
    }
    used.insert(spec.name);
    return *t;
  }

  // fp32 pointer for a small tensor: the mapped data if F32, else an owned converted copy.
  const float* vector_f32(const TensorSpec& spec) {
    const TensorInfo& t = get(spec);
    if (t.dtype == DType::I8) throw Error(t.file + ": tensor '" + spec.name + "' must be F32, BF16 or F16, found I8");
    if (t.dtype == DType::F32 && reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0)
      return reinterpret_cast<const float*>(t.data);
    auto buf = std::shared_ptr<float[]>(new float[t.numel()]);
    convert_to_f32(t.dtype, t.data, buf.get(), static_cast<size_t>(t.numel()));
    out.owned.push_back(buf);
    return buf.get();
  }

  WeightView matrix(const TensorSpec& spec, bool allow_convert) {
    const TensorInfo& t = get(spec);
    WeightView w;
    w.rows = spec.shape[0];
    w.cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
    w.dtype = t.dtype;
    w.data = t.data;
    if (t.dtype == DType::I8) {
      const std::string sname = spec.name + ".scales";
      const TensorInfo* s = nullptr;
      if (adapter && spec.group == ParamGroup::ParScale) s = adapter->find(sname);
      if (!s) s = store.find(sname);
      if (!s) throw Error(t.file + ": I8 tensor '" + spec.name + "' has no companion '" + sname + "'");
      if (s->dtype != DType::F32 || s->shape.size() != 2 || s->shape[0] != w.rows || s->shape[1] <= 0 ||
          w.cols % s->shape[1] != 0)
        throw Error(s->file + ": tensor '" + sname + "' must be F32 [" + std::to_string(w.rows) +
                    ", cols/block], found " + dtype_name(s->dtype) + " " + s->shape_str());
      used.insert(sname);
      w.scales = reinterpret_cast<const float*>(s->data);
      w.block = w.cols / s->shape[1];
      return w;
    }
    const bool misaligned = reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) != 0;
    if ((allow_convert && options.convert_matrices && t.dtype != options.matrix_dtype) || misaligned) {
      const DType target = (allow_convert && options.convert_matrices) ? options.matrix_dtype : t.dtype;
      if (misaligned) {  // an aligned copy in the stored dtype first (views need aligned elements)
        uint8_t* copy = arena().allocate(t.nbytes);
        std::memcpy(copy, t.data, t.nbytes);
        w.data = copy;
      }
      if (target != w.dtype) w = convert_weight(w, target, options.q8_block, arena());
      release_mapped(t.data, t.nbytes);
    }
    return w;
  }
};

void apply_adapter_metadata(ModelConfig& c, const TensorStore& adapter, const std::string& file) {
  const auto& md = adapter.metadata();
  auto need = [&](const char* key) -> const std::string& {
    auto it = md.find(key);
    if (it == md.end()) throw Error(file + ": adapter metadata lacks '" + std::string(key) + "' (not a parscale adapter?)");
    return it->second;
  };
  try {
    c.parscale_n = std::stoll(need(kAdapterStreams));
    c.parscale_n_tokens = std::stoll(need(kAdapterTokens));
    c.parscale_attn_smooth = std::stod(need(kAdapterSmooth));
  } catch (const std::invalid_argument&) {
    throw Error(file + ": adapter metadata holds a non-numeric ParScale field");
  }
  c.model_type = c.parscale_model_type();
  c.validate(file);
}

}  // namespace

ModelWeights load_weights(const ModelConfig& config_in, std::shared_ptr<TensorStore> store, const std::string& source,
                          const LoadOptions& options) {
  ModelWeights w;
  w.config = config_in;
  w.store = store;
  std::shared_ptr<TensorStore> adapter;
  if (!options.adapter_files.empty()) {
    adapter = TensorStore::open_files(options.adapter_files);
    apply_adapter_metadata(w.config, *adapter, options.adapter_files.front());
    w.owned.push_back(adapter);
  }
  const ModelConfig& c = w.config;
  const auto specs = model_tensor_specs(c);
  std::map<std::string, const TensorSpec*> by_name;
  for (const auto& s : specs) by_name[s.name] = &s;
  Loader L{c, *store, adapter.get(), source, options, w, {}, nullptr};
  auto spec = [&](const std::string& name) -> const TensorSpec& { return *by_name.at(name); };

  w.embed_tokens = L.matrix(spec("model.embed_tokens.weight"), /*allow_convert=*/true);
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights& lw = w.layers[static_cast<size_t>(l)];
    auto n = [&](const char* suffix) -> const TensorSpec& { return spec(layer_tensor_name(l, suffix)); };
    lw.input_norm = L.vector_f32(n("input_layernorm.weight"));
    lw.post_norm = L.vector_f32(n("post_attention_layernorm.weight"));
    lw.q_proj = L.matrix(n("self_attn.q_proj.weight"), true);
    lw.k_proj = L.matrix(n("self_attn.k_proj.weight"), true);
    lw.v_proj = L.matrix(n("self_attn.v_proj.weight"), true);
    lw.o_proj = L.matrix(n("self_attn.o_proj.weight"), true);
    if (c.attention_bias) {
      lw.q_bias = L.vector_f32(n("self_attn.q_proj.bias"));
      lw.k_bias = L.vector_f32(n("self_attn.k_proj.bias"));
      lw.v_bias = L.vector_f32(n("self_attn.v_proj.bias"));
    }
    if (c.qk_norm) {
      lw.q_norm = L.vector_f32(n("self_attn.q_norm.weight"));
      lw.k_norm = L.vector_f32(n("self_attn.k_norm.weight"));
    }
    lw.gate_proj = L.matrix(n("mlp.gate_proj.weight"), true);
    lw.up_proj = L.matrix(n("mlp.up_proj.weight"), true);
    lw.down_proj = L.matrix(n("mlp.down_proj.weight"), true);
    if (c.parscale_n > 1) {
      lw.prefix_k = L.vector_f32(n("self_attn.prefix_k"));
      lw.prefix_v = L.vector_f32(n("self_attn.prefix_v"));
    }
  }
  w.final_norm = L.vector_f32(spec("model.norm.weight"));
  if (c.parscale_n > 1) {
    const int64_t P = c.parscale_n, H = c.hidden_size;
    w.aggregate0 = {DType::F32, L.vector_f32(spec("model.aggregate_layer.0.weight")), H, P * H};
    w.aggregate0_bias = L.vector_f32(spec("model.aggregate_layer.0.bias"));
    w.aggregate2 = {DType::F32, L.vector_f32(spec("model.aggregate_layer.2.weight")), P, H};
    w.aggregate2_bias = L.vector_f32(spec("model.aggregate_layer.2.bias"));
  }
  // lm_head: stored when untied; absent means tied to embed_tokens (as HF does).
  const TensorInfo* head = store->find("lm_head.weight");
  if (!c.tie_word_embeddings && head) {
    w.lm_head = L.matrix(TensorSpec{"lm_head.weight", {c.vocab_size, c.hidden_size}, ParamGroup::Backbone, ParamKind::Matrix}, true);
  } else {
    w.lm_head = w.embed_tokens;
    w.tied = true;
  }
  for (const auto& [name, info] : store->tensors())
    if (!L.used.count(name)) w.unknown_tensors.push_back(name + " (" + info.file + ")");
  if (adapter)
    for (const auto& [name, info] : adapter->tensors())
      if (!L.used.count(name)) w.unknown_tensors.push_back(name + " (" + info.file + ")");
  return w;
}

ModelWeights load_model(const std::string& dir, const LoadOptions& options) {
  if (!fs::is_directory(dir)) throw Error(dir + ": model folder not found");
  ModelConfig config = ModelConfig::from_model_dir(dir);
  auto store = TensorStore::open_model_dir(dir);
  return load_weights(config, store, dir, options);
}

const std::vector<float>* ParameterSet::find(const std::string& name) const {
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].name == name) return &values[i];
  return nullptr;
}

std::vector<float>* ParameterSet::find(const std::string& name) {
  return const_cast<std::vector<float>*>(static_cast<const ParameterSet*>(this)->find(name));
}

ModelWeights weights_from_parameters(const ParameterSet& p) {
  ModelWeights w;
  w.config = p.config;
  const ModelConfig& c = p.config;
  auto vec = [&](const std::string& name) -> const float* {
    const auto* v = p.find(name);
    if (!v) throw Error("parameter set: missing '" + name + "'");
    return v->data();
  };
  auto mat = [&](const std::string& name, int64_t rows, int64_t cols) {
    return WeightView{DType::F32, vec(name), rows, cols};
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KD = c.kv_dim();
  w.embed_tokens = mat("model.embed_tokens.weight", c.vocab_size, H);
  w.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    auto& lw = w.layers[static_cast<size_t>(l)];
    auto n = [&](const char* s) { return layer_tensor_name(l, s); };
    lw.input_norm = vec(n("input_layernorm.weight"));
    lw.post_norm = vec(n("post_attention_layernorm.weight"));
    lw.q_proj = mat(n("self_attn.q_proj.weight"), QD, H);
    lw.k_proj = mat(n("self_attn.k_proj.weight"), KD, H);
    lw.v_proj = mat(n("self_attn.v_proj.weight"), KD, H);
    lw.o_proj = mat(n("self_attn.o_proj.weight"), H, QD);
    if (c.attention_bias) {
      lw.q_bias = vec(n("self_attn.q_proj.bias"));
      lw.k_bias = vec(n("self_attn.k_proj.bias"));
      lw.v_bias = vec(n("self_attn.v_proj.bias"));
    }
    if (c.qk_norm) {
      lw.q_norm = vec(n("self_attn.q_norm.weight"));
      lw.k_norm = vec(n("self_attn.k_norm.weight"));
    }
    lw.gate_proj = mat(n("mlp.gate_proj.weight"), I, H);
    lw.up_proj = mat(n("mlp.up_proj.weight"), I, H);
    lw.down_proj = mat(n("mlp.down_proj.weight"), H, I);
    if (c.parscale_n > 1) {
      lw.prefix_k = vec(n("self_attn.prefix_k"));
      lw.prefix_v = vec(n("self_attn.prefix_v"));
    }
  }
  w.final_norm = vec("model.norm.weight");
  if (c.parscale_n > 1) {
    const int64_t P = c.parscale_n;
    w.aggregate0 = mat("model.aggregate_layer.0.weight", H, P * H);
    w.aggregate0_bias = vec("model.aggregate_layer.0.bias");
    w.aggregate2 = mat("model.aggregate_layer.2.weight", P, H);
    w.aggregate2_bias = vec("model.aggregate_layer.2.bias");
  }
  if (c.tie_word_embeddings) {
    w.lm_head = w.embed_tokens;
    w.tied = true;
  } else {
    w.lm_head = mat("lm_head.weight", c.vocab_size, H);
  }
  return w;
}

namespace {
void view_to_f32(const WeightView& v, float* dst) {
  const size_t n = static_cast<size_t>(v.rows * v.cols);
  if (v.dtype != DType::I8) {
    convert_to_f32(v.dtype, v.data, dst, n);
    return;
  }
  const auto* q = static_cast<const int8_t*>(v.data);
  for (int64_t r = 0; r < v.rows; ++r)
    for (int64_t k = 0; k < v.cols; ++k)
      dst[r * v.cols + k] = static_cast<float>(q[r * v.cols + k]) * v.scales[r * (v.cols / v.block) + k / v.block];
}
}  // namespace

ParameterSet parameters_from_weights(const ModelWeights& w) {
  ParameterSet p;
  p.config = w.config;
  p.config.tie_word_embeddings = w.tied;
  p.specs = model_tensor_specs(p.config);
  const ModelConfig& c = p.config;
  for (const auto& s : p.specs) {
    std::vector<float> v(static_cast<size_t>(s.numel()));
    auto copy = [&](const float* src) { std::memcpy(v.data(), src, v.size() * sizeof(float)); };
    const std::string& n = s.name;
    if (n == "model.embed_tokens.weight") view_to_f32(w.embed_tokens, v.data());
    else if (n == "lm_head.weight") view_to_f32(w.lm_head, v.data());
    else if (n == "model.norm.weight") copy(w.final_norm);
    else if (n == "model.aggregate_layer.0.weight") copy(w.aggregate0.f32());
    else if (n == "model.aggregate_layer.0.bias") copy(w.aggregate0_bias);
    else if (n == "model.aggregate_layer.2.weight") copy(w.aggregate2.f32());
    else if (n == "model.aggregate_layer.2.bias") copy(w.aggregate2_bias);
    else {
      // model.layers.{l}.<suffix>
      const size_t a = std::strlen("model.layers.");
      const size_t dot = n.find('.', a);
      const int64_t l = std::stoll(n.substr(a, dot - a));
      const std::string suf = n.substr(dot + 1);
      const LayerWeights& lw = w.layers[static_cast<size_t>(l)];
      if (suf == "input_layernorm.weight") copy(lw.input_norm);
      else if (suf == "post_attention_layernorm.weight") copy(lw.post_norm);
      else if (suf == "self_attn.q_proj.weight") view_to_f32(lw.q_proj, v.data());
      else if (suf == "self_attn.k_proj.weight") view_to_f32(lw.k_proj, v.data());
      else if (suf == "self_attn.v_proj.weight") view_to_f32(lw.v_proj, v.data());
      else if (suf == "self_attn.o_proj.weight") view_to_f32(lw.o_proj, v.data());
      else if (suf == "self_attn.q_proj.bias") copy(lw.q_bias);
      else if (suf == "self_attn.k_proj.bias") copy(lw.k_bias);
      else if (suf == "self_attn.v_proj.bias") copy(lw.v_bias);
      else if (suf == "self_attn.q_norm.weight") copy(lw.q_norm);
      else if (suf == "self_attn.k_norm.weight") copy(lw.k_norm);
      else if (suf == "self_attn.prefix_k") copy(lw.prefix_k);
      else if (suf == "self_attn.prefix_v") copy(lw.prefix_v);
      else if (suf == "mlp.gate_proj.weight") view_to_f32(lw.gate_proj, v.data());
      else if (suf == "mlp.up_proj.weight") view_to_f32(lw.up_proj, v.data());
      else if (suf == "mlp.down_proj.weight") view_to_f32(lw.down_proj, v.data());
      else throw Error("parameters_from_weights: unhandled tensor '" + n + "'");
    }
    p.values.push_back(std::move(v));
  }
  (void)c;
  return p;
}

}  // namespace parscale
