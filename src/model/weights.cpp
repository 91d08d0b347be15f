#include "core/threads.h"
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
#include "kernels/packed.h"

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
  parallel_for_each(rows, grain_if(rows * cols > 65536, rows), [&](int64_t r) {
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
  });
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
  parallel_for(n_chunks, grain_for(n_chunks), [&](int64_t cb, int64_t ce, int) {
    std::vector<float> tmp(static_cast<size_t>(chunk_rows * cols));
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t r0 = c * chunk_rows, nr = std::min(chunk_rows, rows - r0);
      for (int64_t r = 0; r < nr; ++r) kernels::weight_row_f32(src, r0 + r, tmp.data() + r * cols);
      if (target == DType::I8)
        quantize_q8(tmp.data(), nr, cols, block, reinterpret_cast<int8_t*>(dst) + r0 * cols, scales + r0 * (cols / block));
      else
        convert_from_f32(target, tmp.data(), dst + static_cast<size_t>(r0 * cols) * dtype_size(target), static_cast<size_t>(nr * cols));
    }
  });
  return out;
}

namespace {

// Drops the pages of [p, p + n) from this process's resident set. Read-only private file mappings:
// the data stays in the page cache and faults back in if read again. Anonymous memory (an arena):
// the contents are gone, so callers must not read them again (pack_fast_weights nulls the view).
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
  const TensorStore& store;
  const TensorStore* adapter;  // may be null
  const std::string& source;
  const LoadOptions& options;
  std::vector<std::shared_ptr<void>>& owned;
  std::set<std::string> used;
  std::shared_ptr<WeightArena> arena_;

  WeightArena& arena() {
    if (!arena_) {
      arena_ = std::make_shared<WeightArena>();
      owned.push_back(arena_);
    }
    return *arena_;
  }

  const TensorInfo* lookup(const std::string& name, ParamGroup group) const {
    const TensorInfo* t = nullptr;
    if (adapter && group == ParamGroup::ParScale) t = adapter->find(name);
    if (!t) t = store.find(name);
    return t;
  }

  const TensorInfo& get(const TensorSpec& spec) {
    const TensorInfo* t = lookup(spec.name, spec.group);
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
    owned.push_back(buf);
    return buf.get();
  }

  WeightView matrix(const TensorSpec& spec) {
    const bool allow_convert = spec.kind == ParamKind::Matrix || spec.kind == ParamKind::Embedding;
    if (!allow_convert)  // aggregation matrices: small, fp32 always
      return WeightView{DType::F32, vector_f32(spec), spec.shape[0], spec.shape.size() > 1 ? spec.shape[1] : 1};
    const TensorInfo& t = get(spec);
    WeightView w;
    w.rows = spec.shape[0];
    w.cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
    w.dtype = t.dtype;
    w.data = t.data;
    if (t.dtype == DType::I8) {
      const std::string sname = spec.name + ".scales";
      const TensorInfo* s = lookup(sname, spec.group);
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
    if ((options.convert_matrices && t.dtype != options.matrix_dtype) || misaligned) {
      const DType target = options.convert_matrices ? options.matrix_dtype : t.dtype;
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

  // Loads `spec` into its slot.
  void load(const TensorSpec& spec, const TensorSlot& slot) {
    if (slot.matrix) *slot.matrix = matrix(spec);
    else *slot.vector = vector_f32(spec);
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

TensorSlot tensor_slot(Backbone& b, Adapter* a, const TensorSpec& spec) {
  using R = TensorRole;
  if (spec.group == ParamGroup::ParScale && !a) throw Error("tensor '" + spec.name + "' belongs to an adapter, but there is none");
  const int64_t n_layers = b.config.num_hidden_layers;
  if (spec.layer >= 0) {
    if (spec.layer >= n_layers) throw Error("tensor '" + spec.name + "': layer out of range");
    if (b.layers.size() != static_cast<size_t>(n_layers)) b.layers.resize(static_cast<size_t>(n_layers));
    if (a && a->prefix_k.size() != static_cast<size_t>(n_layers)) {
      a->prefix_k.resize(static_cast<size_t>(n_layers), nullptr);
      a->prefix_v.resize(static_cast<size_t>(n_layers), nullptr);
    }
  }
  auto layer = [&]() -> BackboneLayer& { return b.layers[static_cast<size_t>(spec.layer)]; };
  switch (spec.role) {
    case R::Embed: return {&b.embed_tokens, nullptr};
    case R::LmHead: return {&b.lm_head, nullptr};
    case R::FinalNorm: return {nullptr, &b.final_norm};
    case R::InputNorm: return {nullptr, &layer().input_norm};
    case R::PostNorm: return {nullptr, &layer().post_norm};
    case R::QProj: return {&layer().q_proj, nullptr};
    case R::KProj: return {&layer().k_proj, nullptr};
    case R::VProj: return {&layer().v_proj, nullptr};
    case R::OProj: return {&layer().o_proj, nullptr};
    case R::QBias: return {nullptr, &layer().q_bias};
    case R::KBias: return {nullptr, &layer().k_bias};
    case R::VBias: return {nullptr, &layer().v_bias};
    case R::QNorm: return {nullptr, &layer().q_norm};
    case R::KNorm: return {nullptr, &layer().k_norm};
    case R::GateProj: return {&layer().gate_proj, nullptr};
    case R::UpProj: return {&layer().up_proj, nullptr};
    case R::DownProj: return {&layer().down_proj, nullptr};
    case R::PrefixK: return {nullptr, &a->prefix_k[static_cast<size_t>(spec.layer)]};
    case R::PrefixV: return {nullptr, &a->prefix_v[static_cast<size_t>(spec.layer)]};
    case R::Aggregate0W: return {&a->aggregate0, nullptr};
    case R::Aggregate0B: return {nullptr, &a->aggregate0_bias};
    case R::Aggregate2W: return {&a->aggregate2, nullptr};
    case R::Aggregate2B: return {nullptr, &a->aggregate2_bias};
  }
  throw Error("tensor '" + spec.name + "': no slot");
}

namespace {

std::shared_ptr<Adapter> new_adapter(const ModelConfig& c, const std::string& name) {
  auto a = std::make_shared<Adapter>();
  a->name = name;
  a->streams = c.parscale_n;
  a->prefix_tokens = c.parscale_n_tokens;
  a->smooth = c.parscale_attn_smooth;
  return a;
}

void add_unknown(const TensorStore& store, const std::set<std::string>& used, std::vector<std::string>& out) {
  for (const auto& [name, info] : store.tensors())
    if (!used.count(name)) out.push_back(name + " (" + info.file + ")");
}

}  // namespace

ModelWeights load_weights(const ModelConfig& config_in, std::shared_ptr<TensorStore> store, const std::string& source,
                          const LoadOptions& options) {
  ModelWeights w;
  w.config = config_in;
  auto backbone = std::make_shared<Backbone>();
  backbone->store = store;
  std::shared_ptr<TensorStore> adapter_store;
  std::string adapter_name;
  if (!options.adapter_files.empty()) {
    adapter_store = TensorStore::open_files(options.adapter_files);
    apply_adapter_metadata(w.config, *adapter_store, options.adapter_files.front());
    adapter_name = options.adapter_files.front();
  }
  const ModelConfig& c = w.config;
  backbone->config = c;
  std::shared_ptr<Adapter> adapter = c.parscale_n > 1 ? new_adapter(c, adapter_name) : nullptr;
  if (adapter) {  // its tensors may view either file: keep both mapped while it lives
    adapter->owned.push_back(store);
    if (adapter_store) adapter->owned.push_back(adapter_store);
  }
  Loader L{*store, adapter_store.get(), source, options, backbone->owned, {}, nullptr};
  bool tied = c.tie_word_embeddings;
  for_each_tensor(c, [&](const TensorSpec& spec) {
    // lm_head: stored when untied; absent means tied to embed_tokens (as HF does).
    if (spec.role == TensorRole::LmHead && !store->find(spec.name)) {
      tied = true;
      return;
    }
    const TensorSlot slot = tensor_slot(*backbone, adapter.get(), spec);
    if (spec.group == ParamGroup::ParScale) {
      // The adapter's own buffers (converted copies) live with the adapter.
      Loader A{*store, adapter_store.get(), source, options, adapter->owned, {}, nullptr};
      A.load(spec, slot);
      L.used.insert(A.used.begin(), A.used.end());
    } else {
      L.load(spec, slot);
    }
  });
  if (tied) {
    backbone->lm_head = backbone->embed_tokens;
    backbone->tied = true;
  }
  add_unknown(*store, L.used, w.unknown_tensors);
  if (adapter_store) add_unknown(*adapter_store, L.used, w.unknown_tensors);
  if (options.pack_fast) pack_fast_weights(*backbone, options.release_packed_sources);
  w.backbone = backbone;
  w.adapter = adapter;
  return w;
}

std::shared_ptr<const Adapter> load_adapter(const std::vector<std::string>& files, const ModelConfig& backbone_config,
                                            std::vector<std::string>* unknown) {
  check(!files.empty(), "load_adapter: no file");
  auto store = TensorStore::open_files(files);
  ModelConfig c = backbone_config;
  apply_adapter_metadata(c, *store, files.front());
  if (c.parscale_n < 2) throw Error(files.front() + ": an adapter needs parscale_n >= 2, found " + std::to_string(c.parscale_n));
  auto adapter = new_adapter(c, files.front());
  adapter->owned.push_back(store);
  Backbone scratch;  // receives nothing: only ParScale tensors are visited
  scratch.config = c;
  LoadOptions no_convert;
  Loader A{*store, store.get(), files.front(), no_convert, adapter->owned, {}, nullptr};
  for_each_tensor(c, [&](const TensorSpec& spec) {
    if (spec.group != ParamGroup::ParScale) return;
    A.load(spec, tensor_slot(scratch, adapter.get(), spec));
  });
  if (unknown) add_unknown(*store, A.used, *unknown);
  return adapter;
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

int64_t pack_fast_weights(Backbone& b, bool release_sources) {
  int64_t bytes = 0;
  auto pack = [&](WeightView& v) {
    if (v.dtype != DType::BF16 || v.packed || !kernels::uses_bf16dot(v)) return;
    std::shared_ptr<PackedWeight> p = kernels::pack_bf16(v);
    if (!p) return;
    bytes += kernels::packed_bytes(*p);
    v.packed = p.get();
    b.owned.push_back(std::move(p));
    if (release_sources) {
      release_mapped(v.data, static_cast<size_t>(v.rows * v.cols) * dtype_size(v.dtype));
      v.data = nullptr;
    }
  };
  for (auto& L : b.layers) for_each_layer_matrix(L, pack);
  pack(b.lm_head);
  if (b.tied) {  // the embedding is the same matrix: its lookups read the packed rows once released
    b.embed_tokens.packed = b.lm_head.packed;
    b.embed_tokens.data = b.lm_head.data;
  }
  return bytes;
}

int64_t packed_weight_bytes(const Backbone& b) {
  int64_t bytes = 0;
  auto add = [&](const WeightView& v) { bytes += v.packed ? kernels::packed_bytes(*v.packed) : 0; };
  for (const auto& L : b.layers) for_each_layer_matrix(L, add);
  add(b.lm_head);
  return bytes;
}

ModelWeights weights_from_parameters(const ParameterSet& p) {
  ModelWeights w;
  w.config = p.config;
  const ModelConfig& c = p.config;
  auto backbone = std::make_shared<Backbone>();
  backbone->config = c;
  std::shared_ptr<Adapter> adapter = c.parscale_n > 1 ? new_adapter(c, "") : nullptr;
  for (size_t i = 0; i < p.specs.size(); ++i) {
    const TensorSpec& spec = p.specs[i];
    check(p.values[i].size() == static_cast<size_t>(spec.numel()), "parameter set: '" + spec.name + "' has the wrong size");
    const TensorSlot slot = tensor_slot(*backbone, adapter.get(), spec);
    if (slot.matrix)
      *slot.matrix = WeightView{DType::F32, p.values[i].data(), spec.shape[0], spec.shape.size() > 1 ? spec.shape[1] : 1};
    else
      *slot.vector = p.values[i].data();
  }
  if (c.tie_word_embeddings) {
    backbone->lm_head = backbone->embed_tokens;
    backbone->tied = true;
  }
  w.backbone = backbone;
  w.adapter = adapter;
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
  p.config.tie_word_embeddings = w.bb().tied;
  p.specs = model_tensor_specs(p.config);
  // Slots are read only; tensor_slot takes mutable objects to serve loading as well.
  Backbone& b = const_cast<Backbone&>(w.bb());
  Adapter* a = const_cast<Adapter*>(w.adapter.get());
  for (const auto& spec : p.specs) {
    std::vector<float> v(static_cast<size_t>(spec.numel()));
    const TensorSlot slot = tensor_slot(b, a, spec);
    if (slot.matrix) view_to_f32(*slot.matrix, v.data());
    else std::memcpy(v.data(), *slot.vector, v.size() * sizeof(float));
    p.values.push_back(std::move(v));
  }
  return p;
}

}  // namespace parscale
