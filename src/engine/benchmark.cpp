#include "engine/benchmark.h"

#include "core/threads.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "engine/batch_forward.h"
#include "engine/sampling.h"
#include "engine/scheduler.h"
#include "engine/session.h"
#include "engine/step_runner.h"
#include "kernels/kernels.h"

namespace parscale::bench {

namespace {
// Counter-based uniform values in [-1, 1): the same for any thread count, fast, no state.
inline float uniform_pm1(uint64_t seed, uint64_t i) {
  uint64_t z = seed + i * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<float>(static_cast<int64_t>(z >> 40) - (int64_t{1} << 23)) * (1.0f / static_cast<float>(1 << 23));
}

struct RandomFactory {
  DType dtype;  // matrix dtype; DType::I8 = q8 (block 32)
  uint64_t seed;
  std::vector<std::shared_ptr<void>>* owned;
  uint64_t next = 1;
  std::shared_ptr<WeightArena> arena = std::make_shared<WeightArena>();
  RandomFactory(DType d, uint64_t s, std::vector<std::shared_ptr<void>>* o) : dtype(d), seed(s), owned(o) {
    owned->push_back(arena);
  }

  WeightView matrix(int64_t rows, int64_t cols, float stddev) {
    const uint64_t s = seed * 1000003ull + next++;
    const float a = stddev * std::sqrt(3.0f);
    const int64_t n = rows * cols;
    WeightView v{dtype, nullptr, rows, cols};
    uint8_t* buf = arena->allocate(static_cast<size_t>(n) * dtype_size(dtype));
    v.data = buf;
    if (dtype == DType::I8) {
      constexpr int64_t block = 32;
      check(cols % block == 0, "random q8 weights need cols divisible by 32");
      float* scales = reinterpret_cast<float*>(arena->allocate(static_cast<size_t>(rows * (cols / block)) * sizeof(float)));
      int8_t* q = reinterpret_cast<int8_t*>(buf);
      parallel_for(n, grain_for(n), [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) q[i] = static_cast<int8_t>(std::lround(127.0f * uniform_pm1(s, static_cast<uint64_t>(i))));
      });
      for (int64_t i = 0; i < rows * (cols / block); ++i) scales[i] = a / 127.0f;
      v.scales = scales;
      v.block = block;
      return v;
    }
    parallel_for_each((n + 4095) / 4096, grain_for((n + 4095) / 4096), [&](int64_t c) {
      const int64_t c0 = c * 4096;
      float tmp[4096];
      const int64_t m = std::min<int64_t>(4096, n - c0);
      for (int64_t i = 0; i < m; ++i) tmp[i] = a * uniform_pm1(s, static_cast<uint64_t>(c0 + i));
      convert_from_f32(dtype, tmp, buf + c0 * dtype_size(dtype), static_cast<size_t>(m));
    });
    return v;
  }
  const float* vec(int64_t n, float center, float spread) {
    const uint64_t s = seed * 1000003ull + next++;
    auto buf = std::shared_ptr<float[]>(new float[static_cast<size_t>(n)]);
    for (int64_t i = 0; i < n; ++i) buf[static_cast<size_t>(i)] = center + spread * uniform_pm1(s, static_cast<uint64_t>(i));
    owned->push_back(buf);
    return buf.get();
  }
  // Random values for one tensor of the enumeration, by kind.
  void fill(const TensorSpec& spec, const TensorSlot& slot) {
    const int64_t rows = spec.shape[0], cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
    switch (spec.kind) {
      case ParamKind::Embedding:
      case ParamKind::Matrix: *slot.matrix = matrix(rows, cols, 0.02f); break;
      case ParamKind::AggregateMatrix: *slot.matrix = {DType::F32, vec(spec.numel(), 0.0f, 0.02f), rows, cols}; break;
      case ParamKind::Norm: *slot.vector = vec(spec.numel(), 1.0f, 0.1f); break;
      case ParamKind::Bias: *slot.vector = vec(spec.numel(), 0.0f, 0.05f); break;
      case ParamKind::AggregateBias: *slot.vector = vec(spec.numel(), 0.0f, 0.02f); break;
      case ParamKind::Prefix: *slot.vector = vec(spec.numel(), 0.0f, 1.0f); break;
    }
  }
};

int64_t view_bytes(const WeightView& v) {
  int64_t b = v.rows * v.cols * static_cast<int64_t>(dtype_size(v.dtype));
  if (v.dtype == DType::I8) b += v.rows * (v.cols / v.block) * 4;
  return b;
}
int64_t view_params(const WeightView& v) { return v.rows * v.cols; }

int64_t proc_status_kb(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(in, line))
    if (line.rfind(k, 0) == 0) return std::stoll(line.substr(k.size()));
  return -1;
}

}  // namespace

ModelConfig named_shape(const std::string& name) {
  ModelConfig c;
  c.model_type = "qwen2_parscale";
  if (name == "parscale-1.8b") {
    c.vocab_size = 151936;
    c.hidden_size = 1536;
    c.intermediate_size = 8320;
    c.num_hidden_layers = 36;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 2;
    c.head_dim = 96;
    c.tie_word_embeddings = true;
    c.rope_theta = 1000000.0;
  } else if (name == "qwen3-1.7b") {  // Qwen3-1.7B: q_dim 2048 = hidden, per-head q/k norm, no biases
    c.model_type = "qwen3_parscale";
    c.vocab_size = 151936;
    c.hidden_size = 2048;
    c.intermediate_size = 6144;
    c.num_hidden_layers = 28;
    c.num_attention_heads = 16;
    c.num_key_value_heads = 8;
    c.head_dim = 128;
    c.tie_word_embeddings = true;
    c.rope_theta = 1000000.0;
    c.attention_bias = false;
    c.qk_norm = true;
  } else if (name == "tiny") {
    c.vocab_size = 1000;
    c.hidden_size = 64;
    c.intermediate_size = 192;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 16;
    c.tie_word_embeddings = true;
  } else {
    throw Error("--shape: unknown shape \"" + name + "\" (known: parscale-1.8b, qwen3-1.7b, tiny)");
  }
  c.max_position_embeddings = 32768;
  c.parscale_n_tokens = 48;
  return c;
}

// The backbone (shared by every P) and, per P, random prefixes and aggregation on top of it.
ModelWeights random_backbone(const ModelConfig& c, DType dtype, uint64_t seed) {
  ModelWeights w;
  w.config = c;
  w.config.parscale_n = 1;
  w.config.tie_word_embeddings = true;
  auto b = std::make_shared<Backbone>();
  b->config = w.config;
  RandomFactory f{dtype, seed, &b->owned};
  for_each_tensor(w.config, [&](const TensorSpec& spec) { f.fill(spec, tensor_slot(*b, nullptr, spec)); });
  b->lm_head = b->embed_tokens;
  b->tied = true;
  pack_fast_weights(*b, true);  // (bench only runs the model)
  w.backbone = b;
  return w;
}

ModelWeights with_streams(const ModelWeights& backbone, int64_t P, uint64_t seed) {
  ModelWeights w = backbone;  // shares the backbone
  w.config.parscale_n = P;
  w.adapter = nullptr;
  if (P == 1) return w;
  auto a = std::make_shared<Adapter>();
  a->streams = P;
  a->prefix_tokens = w.config.parscale_n_tokens;
  a->smooth = w.config.parscale_attn_smooth;
  a->name = "random";
  Backbone scratch;  // receives nothing: only ParScale tensors are visited
  scratch.config = w.config;
  RandomFactory f{DType::F32, seed * 7919 + static_cast<uint64_t>(P), &a->owned};
  for_each_tensor(w.config, [&](const TensorSpec& spec) {
    if (spec.group == ParamGroup::ParScale) f.fill(spec, tensor_slot(scratch, a.get(), spec));
  });
  w.adapter = a;
  return w;
}

ModelCost model_cost(const ModelWeights& w) {
  ModelCost c;
  for (const auto& L : w.bb().layers)
    for_each_layer_matrix(L, [&](const WeightView& v) {
      c.backbone_bytes += view_bytes(v);
      c.backbone_params += view_params(v);
    });
  c.head_bytes = view_bytes(w.bb().lm_head);
  c.head_params = view_params(w.bb().lm_head);
  if (w.adapter) {
    c.agg_bytes = view_bytes(w.adapter->aggregate0) + view_bytes(w.adapter->aggregate2);
    c.agg_params = view_params(w.adapter->aggregate0) + view_params(w.adapter->aggregate2);
  }
  return c;
}

int64_t peak_rss_bytes() { return proc_status_kb("VmHWM") * 1024; }

void reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
}

double now_seconds() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

RunResult run(const ModelWeights& w, const RunOptions& o) {
  const ModelConfig& c = w.config;
  const int64_t B = o.batch, P = c.streams();
  RunResult res;
  res.prefill_s = INFINITY;
  for (int64_t rep = 0; rep < o.repeat; ++rep) {
    const int64_t max_len = o.prompt_len + o.decode_steps + 1;
    Session session(w, B, max_len);
    // Prompts: random ids, fed in chunks of at most prefill_rows stream rows per pass.
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < o.prompt_len; ++t)
        prompts[static_cast<size_t>(b)].push_back(static_cast<int32_t>(
            (0.5f + 0.5f * uniform_pm1(o.seed + 17, static_cast<uint64_t>(b * o.prompt_len + t))) * static_cast<float>(c.vocab_size - 1)));
    const int64_t chunk = std::max<int64_t>(1, std::min(o.prompt_len, o.prefill_rows / (B * P)));
    std::vector<float> logits;
    const double t0 = now_seconds();
    res.passes = 0;
    for (int64_t t0k = 0; t0k < o.prompt_len; t0k += chunk, ++res.passes) {
      std::vector<std::vector<int32_t>> chunks(static_cast<size_t>(B));
      for (int64_t b = 0; b < B; ++b) {
        const auto& p = prompts[static_cast<size_t>(b)];
        chunks[static_cast<size_t>(b)].assign(p.begin() + t0k, p.begin() + std::min(o.prompt_len, t0k + chunk));
      }
      session.forward(chunks, Session::Outputs::LastPosition, logits);
    }
    res.prefill_s = std::min(res.prefill_s, now_seconds() - t0);

    // Decode: B sequences, one token each per step (the argmax of the previous logits).
    std::vector<std::vector<int32_t>> step(static_cast<size_t>(B), std::vector<int32_t>(1, 0));
    for (int64_t s = 0; s < o.decode_steps; ++s) {
      for (int64_t b = 0; b < B; ++b) {
        const float* r = logits.data() + b * c.vocab_size;
        step[static_cast<size_t>(b)][0] = static_cast<int32_t>(std::max_element(r, r + c.vocab_size) - r);
      }
      const double ts = now_seconds();
      session.forward(step, Session::Outputs::LastPosition, logits);
      res.step_ms.push_back((now_seconds() - ts) * 1e3);
    }
    res.kv_bytes = session.kv_bytes();
  }
  return res;
}

}  // namespace parscale::bench

namespace parscale::bench {

std::vector<MixEntry> parse_mix(const std::string& text) {
  std::vector<MixEntry> out;
  size_t i = 0;
  while (i <= text.size()) {
    const size_t comma = std::min(text.find(',', i), text.size());
    const std::string item = text.substr(i, comma - i);
    const size_t x = item.find('x');
    MixEntry e;
    try {
      if (x == std::string::npos) throw std::invalid_argument("no x");
      size_t used = 0;
      e.streams = std::stoll(item.substr(0, x), &used);
      if (used != x) throw std::invalid_argument("P");
      const std::string n = item.substr(x + 1);
      e.count = std::stoll(n, &used);
      if (used != n.size()) throw std::invalid_argument("count");
    } catch (const std::exception&) {
      throw Error("--mix: entry \"" + item + "\" is not PxCOUNT (e.g. 1x8,4x2,8x1)");
    }
    if (e.streams < 1 || e.streams > 64 || e.count < 1 || e.count > 4096)
      throw Error("--mix: entry \"" + item + "\" out of range (P 1..64, count 1..4096)");
    out.push_back(e);
    i = comma + 1;
  }
  return out;
}

MixResult run_mix(const ModelWeights& backbone, const std::vector<MixEntry>& mix, const MixOptions& o) {
  const ModelConfig& c = backbone.config;
  const int64_t PT = o.page_tokens, V = c.vocab_size;
  // One adapter per distinct P (shared by its sequences), all on the same backbone.
  std::vector<ModelWeights> models;
  struct Seq {
    const Adapter* adapter;
    std::vector<std::vector<int32_t>> tables;
    std::vector<const std::vector<int32_t>*> ptrs;
    int64_t length = 0;
    std::vector<int32_t> chunk;
  };
  std::vector<Seq> seqs;
  for (const MixEntry& e : mix) {
    const Adapter* a = nullptr;
    if (e.streams > 1) {
      bool found = false;
      for (const auto& m : models)
        if (m.adapter && m.adapter->streams == e.streams) a = m.adapter.get(), found = true;
      if (!found) {
        models.push_back(with_streams(backbone, e.streams, o.seed));
        a = models.back().adapter.get();
      }
    }
    for (int64_t k = 0; k < e.count; ++k) seqs.push_back(Seq{a, std::vector<std::vector<int32_t>>(static_cast<size_t>(e.streams)), {}, 0, {}});
  }
  for (auto& s : seqs)
    for (auto& t : s.tables) s.ptrs.push_back(&t);
  MixResult r;
  // Tokens each stream row holds at the end: the prompt, then one per decode step.
  const int64_t total = o.prompt_len + (o.accounting_only ? 0 : o.decode_steps);
  const int64_t pages_per_row = (total + PT - 1) / PT;
  int64_t rows = 0;
  for (const auto& s : seqs) rows += static_cast<int64_t>(s.tables.size());
  r.sequences = static_cast<int64_t>(seqs.size());
  r.stream_rows = rows;
  const int64_t single_pages = pages_per_row;
  KvPool pool(c, o.kv_dtype, PT, rows * pages_per_row + single_pages);
  for (auto& s : seqs)
    for (auto& t : s.tables)
      for (int64_t p = 0; p < pages_per_row; ++p) t.push_back(pool.allocate());
  r.kv_pages = rows * pages_per_row;
  r.kv_bytes = r.kv_pages * KvPool::page_bytes(c, o.kv_dtype, PT);
  r.kv_real_token_bytes = rows * total * KvPool::page_bytes(c, o.kv_dtype, 1);
  if (o.accounting_only) return r;

  BatchForward fwd(backbone.bb(), pool);
  BatchOutputs out;
  std::vector<SequenceChunk> batch;
  auto chunk_of = [](Seq& s) {
    SequenceChunk sc;
    sc.adapter = s.adapter;
    sc.block_tables = s.ptrs.data();
    sc.length = s.length;
    sc.tokens = s.chunk.data();
    sc.n_new = static_cast<int64_t>(s.chunk.size());
    sc.outputs = SequenceChunk::Outputs::Last;
    return sc;
  };
  auto prompt = [&](int64_t k) {
    std::vector<int32_t> p;
    for (int64_t t = 0; t < o.prompt_len; ++t)
      p.push_back(static_cast<int32_t>((0.5f + 0.5f * uniform_pm1(o.seed + 17, static_cast<uint64_t>(k * o.prompt_len + t))) *
                                       static_cast<float>(V - 1)));
    return p;
  };
  // Prefill each sequence alone (not timed).
  for (size_t k = 0; k < seqs.size(); ++k) {
    seqs[k].chunk = prompt(static_cast<int64_t>(k));
    const SequenceChunk sc = chunk_of(seqs[k]);
    fwd.run({&sc, 1}, out);
    seqs[k].length += static_cast<int64_t>(seqs[k].chunk.size());
    seqs[k].chunk = {argmax(out.logits.data(), V)};
  }
  Seq single{nullptr, {std::vector<int32_t>()}, {}, 0, {}};
  single.ptrs.push_back(&single.tables[0]);
  for (int64_t p = 0; p < single_pages; ++p) single.tables[0].push_back(pool.allocate());
  single.chunk = prompt(99991);
  {
    const SequenceChunk sc = chunk_of(single);
    fwd.run({&sc, 1}, out);
    single.length += static_cast<int64_t>(single.chunk.size());
    single.chunk = {argmax(out.logits.data(), V)};
  }
  // Alternate: one step of the whole mix, one step of the single P = 1 sequence.
  for (int64_t step = 0; step < o.decode_steps; ++step) {
    batch.clear();
    for (auto& s : seqs) batch.push_back(chunk_of(s));
    double t0 = now_seconds();
    fwd.run(batch, out);
    r.mixed_ms.push_back((now_seconds() - t0) * 1e3);
    for (size_t k = 0; k < seqs.size(); ++k) {
      seqs[k].length += 1;
      seqs[k].chunk = {argmax(out.logits.data() + static_cast<int64_t>(k) * V, V)};
    }
    const SequenceChunk sc = chunk_of(single);
    t0 = now_seconds();
    fwd.run({&sc, 1}, out);
    r.single_ms.push_back((now_seconds() - t0) * 1e3);
    single.length += 1;
    single.chunk = {argmax(out.logits.data(), V)};
  }
  return r;
}

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = std::ceil(q * static_cast<double>(v.size()));
  const size_t i = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(v.size()))) - 1;
  return v[i];
}

InterferenceResult run_interference(const ModelWeights& w, const InterferenceOptions& o) {
  const ModelConfig& c = w.config;
  const int64_t P = c.streams(), V = c.vocab_size, PT = o.page_tokens;
  check(o.decoders > 0 && o.decoder_prompt > 0 && o.long_prompt > 0 && o.undisturbed_steps > 0,
        "interference benchmark: decoders, prompt lengths and steps must be > 0");
  check(o.long_prompt + 1 <= c.max_position_embeddings,
        "interference benchmark: the long prompt (" + std::to_string(o.long_prompt) + " tokens) exceeds the context of " +
            std::to_string(c.max_position_embeddings));
  // Steps the long prompt needs at most: one token a step at worst.
  const int64_t cap = o.prefill_rows_while_decoding > 0 ? o.prefill_rows_while_decoding : o.batch_rows;
  const int64_t per_step = std::max<int64_t>(1, std::min(cap, o.batch_rows - o.decoders * P) / P);
  const int64_t admit_steps = (o.long_prompt + per_step - 1) / per_step;
  const int64_t decode_tokens = 2 + o.undisturbed_steps + admit_steps + 2;
  check(o.decoder_prompt + decode_tokens <= c.max_position_embeddings,
        "interference benchmark: the decoding sequences outgrow the context");
  const int64_t pages = P * (o.decoders * ((o.decoder_prompt + decode_tokens + PT - 1) / PT) + (o.long_prompt + PT) / PT + 1);
  KvPool pool(c, o.kv_dtype, PT, pages);
  BatchForwardRunner runner(w.bb(), pool);
  EngineOptions eo;
  eo.page_tokens = PT;
  eo.kv_dtype = o.kv_dtype;
  eo.batch_rows = o.batch_rows;
  eo.prefill_rows_while_decoding = o.prefill_rows_while_decoding;
  eo.prefix_cache = false;
  Scheduler sched(c, {{P, w.adapter.get()}}, pool, runner, eo);
  auto prompt = [&](int64_t k, int64_t n) {
    std::vector<int32_t> p;
    for (int64_t t = 0; t < n; ++t)
      p.push_back(static_cast<int32_t>((0.5f + 0.5f * uniform_pm1(o.seed + 29, static_cast<uint64_t>(k * 100003 + t))) *
                                       static_cast<float>(V - 1)));
    return p;
  };
  uint64_t id = 0;
  auto submit = [&](std::vector<int32_t> tokens, int64_t max_tokens) {
    EngineRequest r;
    r.prompt = std::move(tokens);
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.sampling.temperature = 0.0f;
    sched.validate(r);
    auto h = std::make_shared<RequestHandle>(++id);
    sched.add(std::move(r), h, Scheduler::Clock::now());
    return h;
  };
  std::vector<std::shared_ptr<RequestHandle>> decoders;
  for (int64_t k = 0; k < o.decoders; ++k) decoders.push_back(submit(prompt(k, o.decoder_prompt), decode_tokens));
  // Warm up (not timed): the decoders' prompts, until every decoder has its first token.
  EngineEvent ev;
  std::vector<bool> started(decoders.size(), false);
  for (bool all = false; !all;) {
    sched.step();
    all = true;
    for (size_t k = 0; k < decoders.size(); ++k) {
      while (decoders[k]->next(ev, std::chrono::milliseconds(0))) started[k] = true;
      all = all && started[k];
    }
  }
  sched.step();
  InterferenceResult r;
  for (int64_t s = 0; s < o.undisturbed_steps; ++s) {
    const double t0 = now_seconds();
    sched.step();
    r.undisturbed_ms.push_back((now_seconds() - t0) * 1e3);
  }
  auto long_req = submit(prompt(o.decoders, o.long_prompt), 1);
  const double t_submit = now_seconds();
  bool first = false;
  while (!first) {
    check(static_cast<int64_t>(r.admitting_ms.size()) <= admit_steps,
          "interference benchmark: internal error: the long prompt took more steps than planned");
    const double t0 = now_seconds();
    sched.step();
    r.admitting_ms.push_back((now_seconds() - t0) * 1e3);
    while (long_req->next(ev, std::chrono::milliseconds(0)))
      if (ev.kind == EngineEvent::Kind::Token) first = true;
  }
  r.long_prompt_first_token_ms = (now_seconds() - t_submit) * 1e3;
  check(sched.running() == o.decoders, "interference benchmark: internal error: a decoding sequence stopped early");
  sched.cancel_all();
  return r;
}

}  // namespace parscale::bench
