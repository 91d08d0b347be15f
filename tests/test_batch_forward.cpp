// The mixed-P batch forward: sequences with different adapters (P = 1, 2, 3, 4) and different
// chunk lengths in one pass give the same logits as each sequence alone and the same greedy
// tokens; prefixes cost no KV bytes; BF16/F16 KV against the golden fixtures.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "core/error.h"
#include "engine/batch_forward.h"
#include "engine/benchmark.h"
#include "engine/sampling.h"
#include "engine/session.h"
#include "model/weights.h"
#include "test_util.h"

using namespace parscale;

namespace {

std::string demo_dir() { return (test::source_dir() / "models" / "demo").string(); }

// One sequence's pages in a pool, grown as it gets longer.
struct Seq {
  const Adapter* adapter = nullptr;
  std::vector<std::vector<int32_t>> tables;
  std::vector<const std::vector<int32_t>*> ptrs;
  int64_t length = 0;
  std::vector<int32_t> chunk;
  void init(const Adapter* a) {
    adapter = a;
    tables.assign(static_cast<size_t>(a ? a->streams : 1), {});
    ptrs.clear();
    for (auto& t : tables) ptrs.push_back(&t);
  }
  void reserve(KvPool& pool, int64_t total) {
    for (auto& t : tables)
      while (static_cast<int64_t>(t.size()) * pool.page_tokens() < total) {
        const int32_t p = pool.allocate();
        ASSERT_GE(p, 0);
        t.push_back(p);
      }
  }
  SequenceChunk as_chunk(SequenceChunk::Outputs o) const {
    SequenceChunk c;
    c.adapter = adapter;
    c.block_tables = ptrs.data();
    c.length = length;
    c.tokens = chunk.data();
    c.n_new = static_cast<int64_t>(chunk.size());
    c.outputs = o;
    return c;
  }
};

struct Models {
  ModelWeights base;  // demo model (P = 1)
  std::shared_ptr<const Adapter> p2, p4;
  ModelWeights p3;  // a random P = 3 adapter on the same backbone
  std::vector<const Adapter*> adapters() const { return {nullptr, p2.get(), p3.adapter.get(), p4.get()}; }
};

Models load_models() {
  Models m;
  m.base = load_model(demo_dir());
  m.p2 = load_adapter({demo_dir() + "/adapter-p2.safetensors"}, m.base.config);
  m.p4 = load_adapter({demo_dir() + "/adapter-p4.safetensors"}, m.base.config);
  ModelConfig c = m.base.config;
  ModelWeights with_t = m.base;
  with_t.config.parscale_n_tokens = 5;
  m.p3 = bench::with_streams(with_t, 3, 77);
  return m;
}

std::vector<int32_t> ids(int64_t n, int64_t seed, int64_t V) {
  std::vector<int32_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<int32_t>((seed * 7919 + i * 104729 + i * i * 31) % V));
  return v;
}

}  // namespace

TEST(BatchForward, MixedStreamsEqualEachSequenceAlone) {
  const Models m = load_models();
  const ModelConfig& c = m.base.config;
  const int64_t V = c.vocab_size;
  const auto adapters = m.adapters();
  const std::vector<int64_t> lengths{5, 70, 17, 1};
  // Alone: each sequence in its own pass.
  std::vector<std::vector<float>> alone(adapters.size());
  for (size_t i = 0; i < adapters.size(); ++i) {
    KvPool pool(c, DType::F32, 16, 64);
    BatchForward fwd(m.base.bb(), pool);
    Seq s;
    s.init(adapters[i]);
    s.chunk = ids(lengths[i], static_cast<int64_t>(i), V);
    s.reserve(pool, lengths[i]);
    const SequenceChunk sc = s.as_chunk(SequenceChunk::Outputs::All);
    BatchOutputs out;
    fwd.run({&sc, 1}, out);
    ASSERT_EQ(out.rows, lengths[i]);
    alone[i] = out.logits;
  }
  // Together, in one pass (different order of adapters than above, pages interleaved).
  KvPool pool(c, DType::F32, 16, 256);
  BatchForward fwd(m.base.bb(), pool);
  std::vector<Seq> seqs(adapters.size());
  std::vector<SequenceChunk> batch;
  for (size_t i = 0; i < adapters.size(); ++i) {
    seqs[i].init(adapters[i]);
    seqs[i].chunk = ids(lengths[i], static_cast<int64_t>(i), V);
  }
  for (size_t i = adapters.size(); i-- > 0;) seqs[i].reserve(pool, lengths[i]);
  for (auto& s : seqs) batch.push_back(s.as_chunk(SequenceChunk::Outputs::All));
  BatchOutputs out;
  fwd.run(batch, out);
  int64_t rows = 0;
  for (int64_t L : lengths) rows += L;
  ASSERT_EQ(out.rows, rows);
  EXPECT_EQ(fwd.last_rows(), 5 * 1 + 70 * 2 + 17 * 3 + 1 * 4);
  int64_t r0 = 0;
  double max_err = 0.0;
  for (size_t i = 0; i < adapters.size(); ++i) {
    for (int64_t t = 0; t < lengths[i]; ++t) {
      EXPECT_EQ(out.row_sequence[static_cast<size_t>(r0 + t)], static_cast<int32_t>(i));
      EXPECT_EQ(out.row_position[static_cast<size_t>(r0 + t)], t);
      for (int64_t v = 0; v < V; ++v)
        max_err = std::max(max_err, std::fabs(static_cast<double>(out.logits[static_cast<size_t>((r0 + t) * V + v)]) -
                                              alone[i][static_cast<size_t>(t * V + v)]));
      EXPECT_EQ(argmax(out.logits.data() + (r0 + t) * V, V), argmax(alone[i].data() + t * V, V));
    }
    // Stream weights: P per row, summing to 1.
    const int64_t P = adapters[i] ? adapters[i]->streams : 1;
    const float* w = out.stream_weights.data() + out.row_weight_offset[static_cast<size_t>(r0)];
    float sum = 0.0f;
    for (int64_t s = 0; s < P; ++s) sum += w[s];
    EXPECT_NEAR(sum, 1.0f, 1e-5);
    r0 += lengths[i];
  }
  std::printf("mixed P = 1,2,3,4 batch vs alone: max |dlogit| %.3g\n", max_err);
  EXPECT_LE(max_err, 1e-5);
}

TEST(BatchForward, MixedGreedyDecodeEqualsAlone) {
  const Models m = load_models();
  const ModelConfig& c = m.base.config;
  const int64_t V = c.vocab_size, steps = 12;
  const auto adapters = m.adapters();
  const std::vector<int64_t> lengths{9, 3, 40, 21};
  auto decode = [&](const std::vector<size_t>& which) {
    KvPool pool(c, DType::F32, 8, 512);
    BatchForward fwd(m.base.bb(), pool);
    std::vector<Seq> seqs(which.size());
    std::vector<std::vector<int32_t>> gen(which.size());
    for (size_t k = 0; k < which.size(); ++k) {
      seqs[k].init(adapters[which[k]]);
      seqs[k].chunk = ids(lengths[which[k]], static_cast<int64_t>(which[k]) + 3, V);
    }
    BatchOutputs out;
    std::vector<SequenceChunk> batch;
    for (int64_t step = 0; step < steps; ++step) {
      batch.clear();
      for (auto& s : seqs) {
        s.reserve(pool, s.length + static_cast<int64_t>(s.chunk.size()));
        batch.push_back(s.as_chunk(SequenceChunk::Outputs::Last));
      }
      fwd.run(batch, out);
      for (size_t k = 0; k < seqs.size(); ++k) {
        const int32_t id = argmax(out.logits.data() + static_cast<int64_t>(k) * V, V);
        gen[k].push_back(id);
        seqs[k].length += static_cast<int64_t>(seqs[k].chunk.size());
        seqs[k].chunk = {id};
      }
    }
    return gen;
  };
  const auto together = decode({0, 1, 2, 3});
  for (size_t i = 0; i < adapters.size(); ++i) EXPECT_EQ(decode({i})[0], together[i]) << "sequence " << i;
}

TEST(BatchForward, PrefixesCostNoKvBytes) {
  const Models m = load_models();
  ModelWeights p4 = m.base;
  p4.adapter = m.p4;
  p4.config.parscale_n = 4;
  p4.config.parscale_n_tokens = m.p4->prefix_tokens;
  ASSERT_GT(m.p4->prefix_tokens, 0);
  Session one(m.base, 2, 100), four(p4, 2, 100);
  // Exactly P times the pages of P = 1: the T prefix slots per stream are never stored per sequence.
  EXPECT_EQ(four.kv_bytes(), 4 * one.kv_bytes());
  EXPECT_EQ(one.kv_bytes(), 2 * ((100 + 63) / 64) * KvPool::page_bytes(m.base.config, DType::F32, 64));
  SessionOptions half;
  half.kv_dtype = DType::BF16;
  Session bf(p4, 2, 100, half);
  EXPECT_EQ(2 * bf.kv_bytes(), four.kv_bytes());
}

TEST(BatchForward, RejectsMissingPagesAndContextOverflow) {
  const Models m = load_models();
  KvPool pool(m.base.config, DType::F32, 4, 8);
  BatchForward fwd(m.base.bb(), pool);
  Seq s;
  s.init(m.p2.get());
  s.chunk = {1, 2, 3, 4, 5};
  s.reserve(pool, 4);  // one page short for 5 tokens
  const SequenceChunk sc = s.as_chunk(SequenceChunk::Outputs::Last);
  BatchOutputs out;
  EXPECT_THROW(fwd.run({&sc, 1}, out), Error);
  Seq big;
  big.init(nullptr);
  big.length = m.base.config.max_position_embeddings;
  big.chunk = {1};
  const SequenceChunk bc = big.as_chunk(SequenceChunk::Outputs::Last);
  EXPECT_THROW(fwd.run({&bc, 1}, out), Error);
}

// BF16 / F16 KV on every golden fixture: logit error against the reference and greedy equality.
TEST(BatchForward, HalfPrecisionKvOnGoldenFixtures) {
  const test::ExactModeScope exact;  // the KV dtype's error alone, against exact references
  for (DType dt : {DType::BF16, DType::F16}) {
    double worst = 0.0;
    int greedy_equal = 0, fixtures = 0;
    for (const auto& name : test::model_fixture_names()) {
      const auto dir = test::fixtures_dir() / "models" / name;
      const ModelWeights w = load_model(dir.string());
      auto j = test::read_json(dir / "golden.json");
      const auto seqs = j["sequences"].get<std::vector<std::vector<int32_t>>>();
      const auto logits = j["logits"].get<std::vector<std::vector<std::vector<double>>>>();
      const int64_t V = w.config.vocab_size;
      SessionOptions o;
      o.kv_dtype = dt;
      o.page_tokens = 4;
      for (size_t i = 0; i < seqs.size(); ++i) {
        Session s(w, 1, static_cast<int64_t>(seqs[i].size()), o);
        std::vector<float> got;
        s.forward({seqs[i]}, Session::Outputs::AllPositions, got);
        for (size_t t = 0; t < logits[i].size(); ++t)
          for (int64_t v = 0; v < V; ++v)
            worst = std::max(worst, std::fabs(got[t * V + v] - logits[i][t][static_cast<size_t>(v)]));
      }
      // Greedy generation with half-precision KV equals the reference's greedy ids.
      const auto prompt = j["greedy"]["prompt"].get<std::vector<int32_t>>();
      const auto want = j["greedy"]["ids"].get<std::vector<int32_t>>();
      const int64_t n = j["greedy"]["max_tokens"].get<int64_t>();
      Session s(w, 1, static_cast<int64_t>(prompt.size()) + n, o);
      std::vector<float> lg;
      std::vector<int32_t> got;
      std::vector<std::vector<int32_t>> chunk{prompt};
      for (int64_t k = 0; k < n; ++k) {
        s.forward(chunk, Session::Outputs::LastPosition, lg);
        got.push_back(argmax(lg.data(), V));
        chunk = {{got.back()}};
      }
      ++fixtures;
      if (got == want) ++greedy_equal;
      EXPECT_EQ(got, want) << name << " with " << dtype_name(dt) << " KV";
    }
    std::printf("%s KV: max |dlogit| vs reference %.4g over all fixtures; greedy equal on %d/%d\n", dtype_name(dt), worst,
                greedy_equal, fixtures);
    EXPECT_LT(worst, dt == DType::BF16 ? 0.1 : 0.01);  // measured 0.061 (BF16), 0.0067 (F16)
  }
}

TEST(BenchMix, ParsesAndRunsOnATinyShape) {
  const auto mix = bench::parse_mix("1x3,4x2,8x1");
  ASSERT_EQ(mix.size(), 3u);
  EXPECT_EQ(mix[1].streams, 4);
  EXPECT_EQ(mix[1].count, 2);
  for (const char* bad : {"", "1x", "x2", "1x2,", "0x1", "2x0", "1y2", "1x2x3"}) EXPECT_THROW(bench::parse_mix(bad), Error) << bad;
  ModelConfig c = bench::named_shape("tiny");
  const ModelWeights w = bench::random_backbone(c, DType::BF16, 3);
  bench::MixOptions o;
  o.prompt_len = 70;
  o.decode_steps = 3;
  const auto r = bench::run_mix(w, mix, o);
  EXPECT_EQ(r.sequences, 6);
  EXPECT_EQ(r.stream_rows, 3 + 8 + 8);
  EXPECT_EQ(r.mixed_ms.size(), 3u);
  EXPECT_EQ(r.single_ms.size(), 3u);
  // 73 tokens per stream row in pages of 64: two pages each.
  EXPECT_EQ(r.kv_pages, 19 * 2);
  EXPECT_EQ(r.kv_real_token_bytes, 19 * 73 * KvPool::page_bytes(c, DType::BF16, 1));
  EXPECT_EQ(r.kv_prefix_bytes_per_sequence, 0);
}
