// The serving engine end to end with the real model pass (BatchForward): the golden fixtures'
// reference logits through prompt logprobs, golden greedy ids, and on the demo model (backbone +
// P = 2, 4 adapters) a mixed, chunked, preempting, prefix-caching run that must give every request
// the same tokens (and log-probabilities within 1e-5) as running it alone.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/batch_forward.h"
#include "engine/engine.h"
#include "engine/scheduler.h"
#include "engine/step_runner.h"
#include "model/kv_pool.h"
#include "model/weights.h"
#include "test_util.h"

using namespace parscale;

namespace {

struct Result {
  std::vector<EngineEvent> tokens;
  std::vector<EngineEvent::Position> prompt;
  EngineEvent finish;
  bool finished = false;
  std::vector<int32_t> ids() const {
    std::vector<int32_t> v;
    for (const auto& e : tokens) v.push_back(e.token);
    return v;
  }
};

Result wait(RequestHandle& h) {
  Result r;
  EngineEvent e;
  while (h.next(e, std::chrono::milliseconds(120000))) {
    if (e.kind == EngineEvent::Kind::Token) r.tokens.push_back(e);
    if (e.kind == EngineEvent::Kind::PromptLogprobs) r.prompt = e.prompt;
    if (e.kind == EngineEvent::Kind::Finished) {
      r.finished = true;
      r.finish = e;
    }
  }
  EXPECT_TRUE(r.finished);
  return r;
}

// Submits all requests at once, then waits for each.
std::vector<Result> run_together(Engine& engine, const std::vector<EngineRequest>& reqs) {
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (const auto& r : reqs) hs.push_back(engine.submit(r));
  std::vector<Result> out;
  for (auto& h : hs) out.push_back(wait(*h));
  return out;
}

// Each request alone, one after the other, on an engine without prefix cache and with the same
// pages (page_tokens) as the engine it is compared with: the page size sets attention's key
// blocks, so it moves logits by rounding (~1e-6), which the fast mode's bf16 activations can
// turn into bf16 steps; batching and caching must not move them at all.
std::vector<Result> run_alone(const ModelWeights& w, std::vector<std::shared_ptr<const Adapter>> extra,
                              const std::vector<EngineRequest>& reqs, int64_t page_tokens) {
  EngineOptions o;
  o.prefix_cache = false;
  o.page_tokens = page_tokens;
  Engine engine(w.backbone, w.adapter, std::move(extra), o);
  std::vector<Result> out;
  for (const auto& r : reqs) out.push_back(wait(*engine.submit(r)));
  return out;
}

void expect_same(const Result& got, const Result& alone, const std::string& what) {
  ASSERT_EQ(got.ids(), alone.ids()) << what;
  for (size_t t = 0; t < alone.tokens.size(); ++t)
    EXPECT_NEAR(got.tokens[t].logprob, alone.tokens[t].logprob, 1e-5) << what << " token " << t;
  ASSERT_EQ(got.prompt.size(), alone.prompt.size()) << what;
  for (size_t t = 0; t < alone.prompt.size(); ++t)
    EXPECT_NEAR(got.prompt[t].logprob, alone.prompt[t].logprob, 1e-5) << what << " prompt position " << t;
  EXPECT_EQ(got.finish.finish, alone.finish.finish) << what;
}

// log_softmax(row)[id] in double.
double ref_logprob(const std::vector<double>& row, int32_t id) {
  const double mx = *std::max_element(row.begin(), row.end());
  double s = 0.0;
  for (double x : row) s += std::exp(x - mx);
  return row[static_cast<size_t>(id)] - mx - std::log(s);
}

class EngineGolden : public ::testing::TestWithParam<std::string> {
 protected:
  test::ExactModeScope exact;  // the fixtures hold exact-arithmetic references
};

}  // namespace

TEST_P(EngineGolden, MatchesTheReferenceChunkedAndMixed) {
  const std::string dir = (test::fixtures_dir() / "models" / GetParam()).string();
  const ModelWeights w = load_model(dir);
  const auto j = test::read_json(test::fixtures_dir() / "models" / GetParam() / "golden.json");
  const auto sequences = j["sequences"].get<std::vector<std::vector<int32_t>>>();
  const auto logits = j["logits"].get<std::vector<std::vector<std::vector<double>>>>();

  std::vector<EngineRequest> reqs;
  for (const auto& seq : sequences) {
    EngineRequest r;
    r.prompt = seq;
    r.max_tokens = 1;
    r.sampling.temperature = 0.0f;
    r.prompt_logprobs = true;
    r.top_logprobs = 1;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  EngineRequest greedy;
  greedy.prompt = j["greedy"]["prompt"].get<std::vector<int32_t>>();
  greedy.max_tokens = j["greedy"]["max_tokens"].get<int64_t>();
  greedy.sampling.temperature = 0.0f;
  greedy.ignore_eos = true;
  reqs.push_back(greedy);
  reqs.push_back(greedy);  // twice: the second may reuse the first one's prompt pages

  // Small pages and passes: prompts go in chunks beside other sequences' decode tokens.
  EngineOptions o;
  o.page_tokens = 4;
  o.batch_rows = 8;
  Engine engine(w.backbone, w.adapter, {}, o);
  ASSERT_EQ(engine.models().size(), 1u);
  EXPECT_EQ(engine.models()[0].streams, w.config.streams());
  const std::vector<Result> got = run_together(engine, reqs);

  for (size_t i = 0; i < sequences.size(); ++i) {
    const auto& seq = sequences[i];
    const std::string what = GetParam() + " sequence " + std::to_string(i);
    ASSERT_EQ(got[i].prompt.size(), seq.size() - 1) << what;
    for (size_t p = 0; p + 1 < seq.size(); ++p) {
      const double want = ref_logprob(logits[i][p], seq[p + 1]);
      EXPECT_NEAR(got[i].prompt[p].logprob, want, 4e-3 + 2e-3 * std::fabs(want)) << what << " position " << p;
    }
    // The generated token is the reference's argmax at the last position, with its logprob.
    const auto& last = logits[i].back();
    const int32_t want_id = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    ASSERT_EQ(got[i].tokens.size(), 1u) << what;
    EXPECT_EQ(got[i].tokens[0].token, want_id) << what;
    EXPECT_NEAR(got[i].tokens[0].logprob, ref_logprob(last, want_id), 4e-3) << what;
  }
  const auto golden_ids = j["greedy"]["ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(got[sequences.size()].ids(), golden_ids);
  EXPECT_EQ(got[sequences.size() + 1].ids(), golden_ids);

  // Mixed and chunked equals alone.
  const std::vector<Result> alone = run_alone(w, {}, reqs, o.page_tokens);
  for (size_t i = 0; i < reqs.size(); ++i) expect_same(got[i], alone[i], GetParam() + " request " + std::to_string(i));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineGolden, ::testing::ValuesIn(test::model_fixture_names()));

namespace {

struct Demo {
  ModelWeights w;
  std::vector<std::shared_ptr<const Adapter>> extra;
  Demo() {
    const std::string dir = (test::source_dir() / "models" / "demo").string();
    w = load_model(dir);
    extra.push_back(load_adapter({dir + "/adapter-p2.safetensors"}, w.config));
    extra.push_back(load_adapter({dir + "/adapter-p4.safetensors"}, w.config));
  }
};

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int64_t n, int64_t V) {
  std::vector<int32_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(V - 8)));
  return v;
}

// Nine requests over P = 1, 2, 4: greedy and seeded sampling, some sharing a 40-token prefix,
// one asking for prompt logprobs.
std::vector<EngineRequest> demo_mix(int64_t V) {
  std::mt19937_64 rng(7);
  const std::vector<int32_t> shared = random_tokens(rng, 40, V);
  std::vector<EngineRequest> reqs;
  for (int i = 0; i < 9; ++i) {
    EngineRequest r;
    r.model = i % 3;  // P = 1, 2, 4
    if (i % 2 == 0) r.prompt = shared;
    const auto tail = random_tokens(rng, 5 + 9 * i, V);
    r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
    r.max_tokens = 6 + i % 4;
    r.sampling.temperature = i % 3 == 1 ? 0.8f : 0.0f;
    r.sampling.top_p = 0.95f;
    r.sampling.seed = 1000 + static_cast<uint64_t>(i);
    r.top_logprobs = 2;
    r.ignore_eos = true;
    r.prompt_logprobs = i == 4;
    reqs.push_back(r);
  }
  return reqs;
}

}  // namespace

TEST(EngineDemo, PreemptionAndChunkingKeepEveryOutput) {
  const Demo d;
  // Short prompts, long generations: sequences admitted together outgrow a pool of 48 pages of
  // 4 tokens (the largest needs 4 x 10 alone), so the newest are preempted and recomputed; the
  // 70-token prompt goes in chunks of the 32 rows a pass.
  std::mt19937_64 rng(3);
  const int64_t V = d.w.config.vocab_size;
  std::vector<EngineRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    EngineRequest r;
    r.model = i == 3 ? 0 : (i == 1 ? 1 : 2);  // P = 4, 2, 4, 1
    r.prompt = random_tokens(rng, i == 3 ? 70 : 8, V);
    r.max_tokens = i == 3 ? 10 : 30;
    r.sampling.temperature = i % 2 ? 0.9f : 0.0f;
    r.sampling.seed = 50 + static_cast<uint64_t>(i);
    r.top_logprobs = i == 2 ? -1 : 0;  // logprobs compared below (and one request without)
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  EngineOptions o;
  o.page_tokens = 4;
  o.batch_rows = 32;
  KvPool pool(d.w.config, DType::F32, 4, 48);
  BatchForwardRunner runner(*d.w.backbone, pool);
  Scheduler sched(d.w.config, {{1, nullptr}, {2, d.extra[0].get()}, {4, d.extra[1].get()}}, pool, runner, o);
  std::vector<std::shared_ptr<RequestHandle>> hs;
  for (const auto& r : reqs) {
    sched.validate(r);
    hs.push_back(std::make_shared<RequestHandle>(hs.size()));
    sched.add(r, hs.back(), Scheduler::Clock::now());
  }
  for (int step = 0; step < 10000 && !sched.idle(); ++step) sched.step();
  ASSERT_TRUE(sched.idle());
  EngineStats st;
  sched.fill_stats(st);
  EXPECT_GT(st.preemptions, 0);
  const std::vector<Result> alone = run_alone(d.w, d.extra, reqs, o.page_tokens);
  for (size_t i = 0; i < reqs.size(); ++i) expect_same(wait(*hs[i]), alone[i], "request " + std::to_string(i));
  sched.clear_prefix_cache();
  EXPECT_EQ(pool.pages_free(), pool.pages_total());
}

TEST(EngineDemo, MixedModelsMatchEachAlone) {
  const Demo d;
  const std::vector<EngineRequest> reqs = demo_mix(d.w.config.vocab_size);
  // A pool of 40 pages of 16 tokens for requests of up to 4 x 8 pages: requests wait for pages
  // (and may be preempted, depending on when the engine thread sees them); 64 rows a pass:
  // prompts go in chunks beside decoding sequences.
  EngineOptions o;
  o.page_tokens = 16;
  o.batch_rows = 64;
  o.kv_memory_bytes = 40 * KvPool::page_bytes(d.w.config, DType::F32, 16);
  Engine engine(d.w.backbone, d.w.adapter, d.extra, o);
  ASSERT_EQ(engine.models().size(), 3u);
  EXPECT_EQ(engine.models()[1].streams, 2);
  EXPECT_EQ(engine.models()[2].streams, 4);
  const std::vector<Result> got = run_together(engine, reqs);
  const std::vector<Result> alone = run_alone(d.w, d.extra, reqs, o.page_tokens);
  for (size_t i = 0; i < reqs.size(); ++i) {
    expect_same(got[i], alone[i], "request " + std::to_string(i));
    EXPECT_EQ(got[i].tokens.size(), static_cast<size_t>(reqs[i].max_tokens));
    if (!got[i].tokens.empty()) {
      EXPECT_TRUE(got[i].tokens[0].stream_weights.empty());  // not asked for
    }
  }
  engine.shutdown(true);
  const EngineStats st = engine.stats();
  EXPECT_EQ(st.kv_pages_used, st.kv_pages_cached);
  EXPECT_EQ(st.per_streams.at(4).requests_total, 3);
  EXPECT_EQ(st.per_streams.at(2).generation_tokens_total, 7 + 6 + 9);
}

TEST(EngineDemo, PrefixCacheComputesOnlyTheNewTokens) {
  // The case: a second request sharing a 1,000-token prefix computes only its new tokens
  // and gives the same tokens and log-probabilities as without the cache.
  const Demo d;
  const int64_t V = d.w.config.vocab_size;
  std::mt19937_64 rng(11);
  const std::vector<int32_t> shared = random_tokens(rng, 1000, V);
  EngineRequest a, b;
  a.model = b.model = 1;  // P = 2
  a.prompt = shared;
  a.prompt.push_back(5);
  b.prompt = std::vector<int32_t>(shared.begin(), shared.begin() + 992);  // 62 full pages of 16
  const auto tail = random_tokens(rng, 20, V);
  b.prompt.insert(b.prompt.end(), tail.begin(), tail.end());
  a.max_tokens = b.max_tokens = 4;
  a.top_logprobs = b.top_logprobs = 0;  // the chosen tokens' logprobs, compared below
  a.sampling.temperature = 0.0f;
  b.sampling.temperature = 0.7f;
  b.sampling.seed = 3;
  a.ignore_eos = b.ignore_eos = true;
  a.stream_weights = b.stream_weights = true;

  EngineOptions o;
  o.page_tokens = 16;
  Engine engine(d.w.backbone, d.w.adapter, d.extra, o);
  const Result ra = wait(*engine.submit(a));
  const Result rb = wait(*engine.submit(b));
  engine.shutdown(true);  // the engine thread's last stats are published
  EXPECT_EQ(ra.finish.cached_prompt_tokens, 0);
  EXPECT_EQ(rb.finish.cached_prompt_tokens, 992);
  // a: 1001 prompt tokens + 3 decodes; b: its 20 new tokens + 3 decodes; 2 rows a token.
  EXPECT_EQ(engine.stats().rows_computed, 2 * (1001 + 3) + 2 * (20 + 3));
  EXPECT_EQ(engine.stats().per_streams.at(2).cached_prompt_tokens_total, 992);

  const std::vector<Result> alone = run_alone(d.w, d.extra, {b}, o.page_tokens);
  expect_same(rb, alone[0], "second request (prefix from the cache) vs alone without cache");
  for (const auto& t : rb.tokens) {
    ASSERT_EQ(t.stream_weights.size(), 2u);
    EXPECT_NEAR(t.stream_weights[0] + t.stream_weights[1], 1.0f, 1e-5);
  }
}

TEST(EngineDemo, PrefixCacheKeepsTheAnswerForTheNextTurn) {
  // A 2-turn conversation: turn 2's prompt is turn 1's prompt + its answer + new text. The full
  // pages of turn 1's prompt and fed-back answer stay cached when it finishes, so turn 2 computes
  // only from the first page that holds the last answer token on (that token was never fed back).
  const Demo d;
  const int64_t V = d.w.config.vocab_size;
  std::mt19937_64 rng(21);
  EngineRequest a;
  a.model = 2;  // P = 4
  a.prompt = random_tokens(rng, 40, V);
  a.max_tokens = 30;
  a.sampling.temperature = 0.0f;
  a.ignore_eos = true;

  EngineOptions o;
  o.page_tokens = 8;
  Engine engine(d.w.backbone, d.w.adapter, d.extra, o);
  const Result ra = wait(*engine.submit(a));
  ASSERT_EQ(ra.tokens.size(), 30u);
  EXPECT_EQ(ra.finish.finish, FinishReason::Length);

  EngineRequest b = a;
  const std::vector<int32_t> answer = ra.ids();
  b.prompt.insert(b.prompt.end(), answer.begin(), answer.end());
  const auto turn = random_tokens(rng, 10, V);
  b.prompt.insert(b.prompt.end(), turn.begin(), turn.end());  // 80 tokens
  b.max_tokens = 5;
  b.sampling.temperature = 0.8f;
  b.sampling.seed = 9;
  b.top_logprobs = 2;
  const Result rb = wait(*engine.submit(b));
  engine.shutdown(true);
  // Turn 1 computed 40 + 29 tokens: 8 full pages of 8 (64 tokens, prompt and answer) are cached.
  EXPECT_EQ(rb.finish.cached_prompt_tokens, 64);
  // Rows (4 a token): turn 1 its prompt + 29 decodes; turn 2 its 16 uncached tokens + 4 decodes.
  EXPECT_EQ(engine.stats().rows_computed, 4 * (40 + 29) + 4 * (16 + 4));

  const std::vector<Result> alone = run_alone(d.w, d.extra, {b}, o.page_tokens);
  expect_same(rb, alone[0], "second turn (prompt and answer from the cache) vs alone without cache");
}
