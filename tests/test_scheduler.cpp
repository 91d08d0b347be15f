// The scheduler's policy against a deterministic double of the model pass (scheduler_fake.h):
// page accounting, preemption, fairness, determinism, the prompt-prefix cache, events, errors,
// and the engine thread around it.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "engine/engine_impl.h"
#include "engine/scheduler.h"
#include "scheduler_fake.h"

using namespace parscale;
using parscale::testing::FakeRunner;

namespace {

constexpr int64_t kVocab = 64;

ModelConfig fake_config() {
  ModelConfig c;
  c.vocab_size = kVocab;
  c.hidden_size = 4;
  c.num_attention_heads = 1;
  c.num_key_value_heads = 1;
  c.head_dim = 1;
  c.num_hidden_layers = 1;
  c.max_position_embeddings = 256;
  c.eos_token_ids = {};
  return c;
}

Adapter make_adapter(int64_t P) {
  Adapter a;
  a.streams = P;
  a.prefix_tokens = 1;
  return a;
}

// Models: 0 = P 1, 1 = P 2, 2 = P 3.
struct Harness {
  ModelConfig config = fake_config();
  Adapter a2 = make_adapter(2), a3 = make_adapter(3);
  EngineOptions options;
  KvPool pool;
  std::unique_ptr<FakeRunner> runner;
  std::unique_ptr<Scheduler> sched;
  uint64_t next_id = 1;

  Harness(int64_t pages, int64_t page_tokens, int64_t batch_rows, bool prefix_cache = true, int64_t max_running = 64)
      : pool(config, DType::F32, page_tokens, pages) {
    options.page_tokens = page_tokens;
    options.batch_rows = batch_rows;
    options.prefix_cache = prefix_cache;
    options.max_running = max_running;
    runner = std::make_unique<FakeRunner>(pool, kVocab, batch_rows);
    sched = std::make_unique<Scheduler>(config, std::vector<SchedulerModel>{{1, nullptr}, {2, &a2}, {3, &a3}}, pool,
                                        *runner, options);
  }

  std::shared_ptr<RequestHandle> submit(const EngineRequest& r) {
    sched->validate(r);
    auto h = std::make_shared<RequestHandle>(next_id++);
    sched->add(r, h, Scheduler::Clock::now());
    return h;
  }

  int64_t refcount_sum() const {
    int64_t n = 0;
    for (int32_t p = 0; p < pool.pages_total(); ++p) n += pool.refcount(p);
    return n;
  }

  // Steps until idle; fails the test past max_steps (a starving or stuck request).
  void run(int64_t max_steps = 100000) {
    for (int64_t i = 0; i < max_steps && !sched->idle(); ++i) {
      sched->step();
      ASSERT_EQ(refcount_sum(), sched->page_references());
    }
    ASSERT_TRUE(sched->idle()) << "requests still pending after " << max_steps << " steps";
  }
};

struct Result {
  std::vector<EngineEvent> tokens;
  std::vector<EngineEvent> prompt;  // PromptLogprobs events
  bool finished = false;
  EngineEvent finish;
  std::vector<int32_t> ids() const {
    std::vector<int32_t> v;
    for (const auto& e : tokens) v.push_back(e.token);
    return v;
  }
};

// Takes the events pending on `h` into `r`.
void drain(RequestHandle& h, Result& r) {
  EngineEvent e;
  while (h.next(e, std::chrono::milliseconds(0))) {
    ASSERT_FALSE(r.finished) << "event after Finished";
    if (e.kind == EngineEvent::Kind::Token) r.tokens.push_back(e);
    if (e.kind == EngineEvent::Kind::PromptLogprobs) {
      ASSERT_TRUE(r.tokens.empty()) << "prompt logprobs after a token";
      r.prompt.push_back(e);
    }
    if (e.kind == EngineEvent::Kind::Finished) {
      r.finished = true;
      r.finish = e;
    }
  }
}

// The request run alone on a roomy pool without a prefix cache.
Result solo(const EngineRequest& r) {
  Harness h(256, 4, 64, /*prefix_cache=*/false);
  auto handle = h.submit(r);
  h.run();
  Result out;
  drain(*handle, out);
  return out;
}

EngineRequest request(int64_t model, std::vector<int32_t> prompt, int64_t max_tokens, float temperature = 0.0f,
                      uint64_t seed = 0) {
  EngineRequest r;
  r.model = model;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  return r;
}

std::vector<int32_t> iota_tokens(int64_t n, int32_t start) {
  std::vector<int32_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(static_cast<int32_t>((start + 7 * i) % kVocab));
  return v;
}

}  // namespace

TEST(Scheduler, GeneratesMaxTokensWithLogprobs) {
  Harness h(64, 4, 32);
  EngineRequest r = request(1, iota_tokens(10, 3), 5);
  r.top_logprobs = 3;
  r.stream_weights = true;
  auto handle = h.submit(r);
  h.run();
  Result res;
  drain(*handle, res);
  ASSERT_TRUE(res.finished);
  EXPECT_EQ(res.finish.finish, FinishReason::Length);
  EXPECT_EQ(res.finish.prompt_tokens, 10);
  EXPECT_EQ(res.finish.generated_tokens, 5);
  ASSERT_EQ(res.tokens.size(), 5u);
  for (const auto& t : res.tokens) {
    ASSERT_EQ(t.top.size(), 3u);
    // Greedy: the chosen token is the most likely one.
    EXPECT_EQ(t.top[0].id, t.token);
    EXPECT_FLOAT_EQ(t.top[0].logprob, t.logprob);
    EXPECT_LE(t.logprob, 0.0f);
    EXPECT_GE(t.top[0].logprob, t.top[1].logprob);
    EXPECT_GE(t.top[1].logprob, t.top[2].logprob);
    EXPECT_EQ(t.stream_weights, (std::vector<float>{0.5f, 1.0f}));
  }
  EXPECT_EQ(h.pool.pages_used(), h.sched->cached_pages());
  h.sched->clear_prefix_cache();
  EXPECT_EQ(h.pool.pages_free(), h.pool.pages_total());
}

TEST(Scheduler, LogprobsOnlyWhenAsked) {
  // top_logprobs < 0: no log-softmax over the vocabulary (logprob stays 0, no alternatives); the
  // tokens are the same as with the logprobs asked for.
  Harness h(64, 4, 32);
  EngineRequest asked = request(1, iota_tokens(10, 3), 5, 0.7f, 9);
  asked.top_logprobs = 0;
  EngineRequest plain = asked;
  plain.top_logprobs = -1;
  auto a = h.submit(asked);
  auto b = h.submit(plain);
  h.run();
  Result ra, rb;
  drain(*a, ra);
  drain(*b, rb);
  ASSERT_EQ(ra.ids(), rb.ids());
  ASSERT_EQ(ra.tokens.size(), 5u);
  for (size_t i = 0; i < ra.tokens.size(); ++i) {
    EXPECT_LT(ra.tokens[i].logprob, 0.0f);
    EXPECT_TRUE(ra.tokens[i].top.empty());
    EXPECT_EQ(rb.tokens[i].logprob, 0.0f);
    EXPECT_TRUE(rb.tokens[i].top.empty());
  }
}

TEST(Scheduler, StopsAtEosUnlessIgnored) {
  const EngineRequest base = request(0, iota_tokens(6, 1), 8);
  const Result free_run = solo(base);
  ASSERT_EQ(free_run.tokens.size(), 8u);
  EngineRequest r = base;
  r.eos_ids = {free_run.tokens[2].token};
  // The first occurrence of that id ends the request (it may occur before index 2).
  size_t first = 0;
  while (free_run.tokens[first].token != free_run.tokens[2].token) ++first;
  Result stopped = solo(r);
  EXPECT_EQ(stopped.finish.finish, FinishReason::Stop);
  EXPECT_EQ(stopped.tokens.size(), first + 1);
  r.ignore_eos = true;
  Result ignored = solo(r);
  EXPECT_EQ(ignored.finish.finish, FinishReason::Length);
  EXPECT_EQ(ignored.ids(), free_run.ids());
}

TEST(Scheduler, PromptLogprobsMatchTheGeneratedTokensLogprob) {
  // Greedy token t after prompt X has logprob l; then X + [t] with prompt_logprobs reports l
  // for its last prompt token.
  const std::vector<int32_t> x = iota_tokens(9, 5);
  EngineRequest g = request(2, x, 1);
  g.top_logprobs = 0;
  const Result gen = solo(g);
  ASSERT_EQ(gen.tokens.size(), 1u);
  std::vector<int32_t> x2 = x;
  x2.push_back(gen.tokens[0].token);
  EngineRequest r = request(2, x2, 0);
  r.prompt_logprobs = true;
  r.top_logprobs = 2;
  const Result pl = solo(r);
  EXPECT_TRUE(pl.tokens.empty());
  EXPECT_EQ(pl.finish.finish, FinishReason::Length);
  ASSERT_EQ(pl.prompt.size(), 1u);
  ASSERT_EQ(pl.prompt[0].prompt.size(), x2.size() - 1);
  EXPECT_FLOAT_EQ(pl.prompt[0].prompt.back().logprob, gen.tokens[0].logprob);
  EXPECT_EQ(pl.prompt[0].prompt.back().top[0].id, gen.tokens[0].token);
  for (const auto& p : pl.prompt[0].prompt) {
    EXPECT_LE(p.logprob, 0.0f);
    ASSERT_EQ(p.top.size(), 2u);
    EXPECT_LE(p.logprob, p.top[0].logprob);
  }
  // Chunked (batch of 8 rows at P = 3: 2 tokens a pass) gives the same prompt logprobs.
  Harness small(64, 4, 8);
  auto handle = small.submit(r);
  small.run();
  Result chunked;
  drain(*handle, chunked);
  ASSERT_EQ(chunked.prompt.size(), 1u);
  ASSERT_EQ(chunked.prompt[0].prompt.size(), pl.prompt[0].prompt.size());
  for (size_t i = 0; i < pl.prompt[0].prompt.size(); ++i)
    EXPECT_EQ(chunked.prompt[0].prompt[i].logprob, pl.prompt[0].prompt[i].logprob);
}

TEST(Scheduler, LongPromptIsChunkedWhileOthersDecode) {
  Harness h(128, 4, 8);  // 8 rows a pass
  auto a = h.submit(request(0, iota_tokens(3, 1), 40));
  auto b = h.submit(request(1, iota_tokens(3, 2), 40));
  for (int i = 0; i < 3; ++i) h.sched->step();  // both decoding
  Result ra, rb;
  drain(*a, ra);
  drain(*b, rb);
  const size_t a0 = ra.tokens.size(), b0 = rb.tokens.size();
  ASSERT_GT(a0, 0u);
  auto c = h.submit(request(0, iota_tokens(100, 3), 2));  // 100-token prompt, 5 rows a pass left
  for (int i = 0; i < 10; ++i) {
    h.sched->step();
    drain(*a, ra);
    drain(*b, rb);
    // Every step, each running sequence decodes one token while the prompt prefills.
    EXPECT_EQ(ra.tokens.size(), a0 + i + 1);
    EXPECT_EQ(rb.tokens.size(), b0 + i + 1);
  }
  EXPECT_LE(h.runner->max_rows_seen, 8);
  h.run();
  Result rc;
  drain(*c, rc);
  EXPECT_EQ(rc.ids(), solo(request(0, iota_tokens(100, 3), 2)).ids());
  EXPECT_EQ(ra.finished || (drain(*a, ra), ra.finished), true);
}

// A Harness whose scheduler caps prompt rows at `cap` while sequences decode.
void cap_prefill(Harness& h, int64_t cap) {
  h.sched.reset();
  h.options.prefill_rows_while_decoding = cap;
  h.sched = std::make_unique<Scheduler>(h.config, std::vector<SchedulerModel>{{1, nullptr}, {2, &h.a2}, {3, &h.a3}},
                                        h.pool, *h.runner, h.options);
}

TEST(Scheduler, PromptRowsAreCappedWhileOthersDecode) {
  for (const int64_t cap : {9, 1}) {
    SCOPED_TRACE("cap " + std::to_string(cap));
    Harness h(512, 4, 64);  // 64 rows a pass
    cap_prefill(h, cap);
    std::vector<std::shared_ptr<RequestHandle>> decoders;
    std::vector<Result> rd(4);
    for (int i = 0; i < 4; ++i) {
      EngineRequest r = request(0, iota_tokens(3, i + 1), 120);  // decoding beyond the prompt
      r.ignore_eos = true;
      decoders.push_back(h.submit(r));
    }
    for (int i = 0; i < 2; ++i) h.sched->step();  // all four decoding
    h.runner->max_rows_seen = 0;
    const EngineRequest long_prompt = request(2, iota_tokens(100, 3), 2);  // P = 3
    auto c = h.submit(long_prompt);
    Result rc;
    // At least one token (3 rows) a pass, else floor(cap / 3) tokens.
    const int64_t per_pass = std::max<int64_t>(1, cap / 3);
    const int64_t passes = (100 + per_pass - 1) / per_pass;
    for (int64_t i = 0; i < passes; ++i) {
      ASSERT_TRUE(rc.tokens.empty()) << "pass " << i;
      for (size_t k = 0; k < decoders.size(); ++k) drain(*decoders[k], rd[k]);
      const size_t before = rd[0].tokens.size();
      h.sched->step();
      drain(*c, rc);
      for (size_t k = 0; k < decoders.size(); ++k) {
        drain(*decoders[k], rd[k]);
        EXPECT_EQ(rd[k].tokens.size(), before + 1) << "decoder " << k << " pass " << i;  // never stalled
      }
    }
    ASSERT_EQ(rc.tokens.size(), 1u);  // the prompt completed in exactly `passes` passes
    EXPECT_EQ(h.runner->max_rows_seen, 4 + 3 * per_pass);
    h.run();
    drain(*c, rc);
    EXPECT_EQ(rc.ids(), solo(long_prompt).ids());
  }
  // With nothing decoding, a prompt gets the whole batch_rows.
  Harness h(256, 4, 64);
  cap_prefill(h, 9);
  auto c = h.submit(request(2, iota_tokens(100, 3), 2));
  h.sched->step();
  EXPECT_EQ(h.runner->max_rows_seen, 63);  // 21 tokens x 3 streams
}

TEST(Scheduler, CancelReleasesPagesWithinOneStep) {
  Harness h(64, 4, 32, /*prefix_cache=*/false);
  auto a = h.submit(request(1, iota_tokens(10, 1), 50));
  auto b = h.submit(request(0, iota_tokens(10, 2), 50));
  h.sched->step();
  h.sched->step();
  const int64_t used = h.pool.pages_used();
  a->cancel();
  h.sched->step();
  Result ra;
  drain(*a, ra);
  ASSERT_TRUE(ra.finished);
  EXPECT_EQ(ra.finish.finish, FinishReason::Cancelled);
  EXPECT_EQ(h.pool.pages_used(), used - 2 * 3);  // 10 + 2 tokens in 3 pages per stream, 2 streams
  EXPECT_EQ(h.sched->running(), 1);
  // A request cancelled while waiting also finishes.
  auto c = h.submit(request(0, iota_tokens(10, 2), 5));
  c->cancel();
  h.run();
  Result rc;
  drain(*c, rc);
  EXPECT_EQ(rc.finish.finish, FinishReason::Cancelled);
  EXPECT_TRUE(rc.tokens.empty());
  EXPECT_EQ(h.pool.pages_free(), h.pool.pages_total());
}

TEST(Scheduler, BrokenLogitsEndOnlyTheirRequest) {
  Harness h(64, 4, 32);
  h.runner->nan_streams = 3;
  auto bad = h.submit(request(2, iota_tokens(6, 1), 5));
  auto good = h.submit(request(0, iota_tokens(6, 1), 5));
  h.run();
  Result rb, rg;
  drain(*bad, rb);
  drain(*good, rg);
  EXPECT_EQ(rb.finish.finish, FinishReason::Error);
  EXPECT_NE(rb.finish.error.find("NaN"), std::string::npos) << rb.finish.error;
  EXPECT_TRUE(rb.tokens.empty());
  EXPECT_TRUE(rg.finish.error.empty());
  EXPECT_EQ(rg.finish.finish, FinishReason::Length);
  EXPECT_EQ(rg.tokens.size(), 5u);
  h.sched->clear_prefix_cache();
  EXPECT_EQ(h.pool.pages_free(), h.pool.pages_total());
}

TEST(Scheduler, PreemptionByRecomputeKeepsTheOutput) {
  // 12 pages of 4 tokens; three P = 2 requests of 8 + 12 tokens (5 pages per stream row at the
  // end): they cannot all grow at once.
  Harness h(12, 4, 64);
  std::vector<EngineRequest> reqs;
  for (int i = 0; i < 3; ++i) reqs.push_back(request(1, iota_tokens(8, 10 * i + 1), 12, i == 1 ? 0.9f : 0.0f, 77 + i));
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (const auto& r : reqs) handles.push_back(h.submit(r));
  h.run();
  EngineStats st;
  h.sched->fill_stats(st);
  EXPECT_GT(st.preemptions, 0);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Result r;
    drain(*handles[i], r);
    ASSERT_TRUE(r.finished);
    EXPECT_EQ(r.finish.finish, FinishReason::Length);
    EXPECT_EQ(r.ids(), solo(reqs[i]).ids()) << "request " << i;
  }
  h.sched->clear_prefix_cache();
  EXPECT_EQ(h.pool.pages_free(), h.pool.pages_total());
}

TEST(Scheduler, PrefixCacheComputesOnlyTheNewTokens) {
  Harness h(200, 8, 512);
  const std::vector<int32_t> shared = iota_tokens(96, 4);  // 12 full pages
  std::vector<int32_t> pa = shared, pb = shared;
  for (int i = 0; i < 4; ++i) pa.push_back(1 + i);
  for (int i = 0; i < 10; ++i) pb.push_back(30 + i);
  auto a = h.submit(request(1, pa, 3));
  h.run();
  const int64_t rows0 = h.runner->rows;
  EXPECT_EQ(rows0, 2 * (100 + 2));
  EXPECT_EQ(h.sched->cached_pages(), 2 * 12);

  EngineRequest rb = request(1, pb, 3, 0.7f, 5);
  rb.top_logprobs = 0;  // the chosen tokens' logprobs, compared below
  auto b = h.submit(rb);
  h.run();
  EXPECT_EQ(h.runner->rows - rows0, 2 * (10 + 2));  // only the 10 new prompt tokens + 2 decodes
  Result res_b;
  drain(*b, res_b);
  EXPECT_EQ(res_b.finish.cached_prompt_tokens, 96);
  const Result alone = solo(rb);
  ASSERT_EQ(res_b.ids(), alone.ids());
  for (size_t i = 0; i < alone.tokens.size(); ++i) EXPECT_EQ(res_b.tokens[i].logprob, alone.tokens[i].logprob);

  // A prompt of exactly the cached pages recomputes its last page (the last token's logits).
  const int64_t rows1 = h.runner->rows;
  auto c = h.submit(request(1, shared, 1));
  h.run();
  Result res_c;
  drain(*c, res_c);
  EXPECT_EQ(res_c.finish.cached_prompt_tokens, 88);
  EXPECT_EQ(h.runner->rows - rows1, 2 * 8);
  EXPECT_EQ(res_c.ids(), solo(request(1, shared, 1)).ids());
  // Another model (other P) does not share the pages.
  auto d = h.submit(request(2, pb, 1));
  h.run();
  Result res_d;
  drain(*d, res_d);
  EXPECT_EQ(res_d.finish.cached_prompt_tokens, 0);

  EXPECT_EQ(h.refcount_sum(), h.sched->page_references());
  h.sched->clear_prefix_cache();
  EXPECT_EQ(h.pool.pages_free(), h.pool.pages_total());
}

TEST(Scheduler, PrefixCacheServesWhileTheFirstSequenceRuns) {
  Harness h(200, 8, 512);
  std::vector<int32_t> pa = iota_tokens(64, 9), pb = pa;
  pa.push_back(1);
  pb.push_back(2);
  auto a = h.submit(request(0, pa, 30));
  h.sched->step();  // A's prompt is computed; it now decodes
  auto b = h.submit(request(0, pb, 4));
  h.run();
  Result ra, rb;
  drain(*a, ra);
  drain(*b, rb);
  EXPECT_EQ(rb.finish.cached_prompt_tokens, 64);
  EXPECT_EQ(rb.ids(), solo(request(0, pb, 4)).ids());
  EXPECT_EQ(ra.ids(), solo(request(0, pa, 30)).ids());
}

TEST(Scheduler, EvictsTheCacheWhenPagesAreNeeded) {
  Harness h(16, 4, 64);
  auto a = h.submit(request(0, iota_tokens(40, 1), 2));  // 10 full prompt pages end up cached
  h.run();
  EXPECT_EQ(h.sched->cached_pages(), 10);
  auto b = h.submit(request(0, iota_tokens(40, 2), 20));  // 15 pages: evicts
  h.run();
  Result rb;
  drain(*b, rb);
  EXPECT_EQ(rb.finish.finish, FinishReason::Length);
  EXPECT_EQ(h.refcount_sum(), h.sched->page_references());
  EXPECT_LE(h.sched->cached_pages(), 16);
}

TEST(Scheduler, HeadOfTheQueueDoesNotStarve) {
  // A request needing most of the pool waits behind running ones while small requests keep
  // arriving; FIFO admission lets it in once the earlier ones finish.
  Harness h(24, 4, 64, /*prefix_cache=*/false);
  std::vector<std::shared_ptr<RequestHandle>> small;
  for (int i = 0; i < 4; ++i) small.push_back(h.submit(request(0, iota_tokens(8, i), 6)));
  auto big = h.submit(request(1, iota_tokens(30, 5), 10));  // 2 x 10 pages
  Result rbig;
  int64_t steps = 0;
  while (!rbig.finished) {
    ASSERT_LT(steps, 1000) << "the big request starves";
    if (steps % 2 == 0) small.push_back(h.submit(request(0, iota_tokens(8, static_cast<int32_t>(steps)), 6)));
    h.sched->step();
    ++steps;
    drain(*big, rbig);
  }
  EXPECT_EQ(rbig.finish.finish, FinishReason::Length);
  h.run();
}

TEST(Scheduler, RandomTracesKeepPagesAndOutputs) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    Harness h(40, 4, 24, /*prefix_cache=*/true, /*max_running=*/6);
    const std::vector<std::vector<int32_t>> prefixes = {iota_tokens(12, 1), iota_tokens(8, 2), iota_tokens(16, 3)};
    std::vector<EngineRequest> reqs;
    std::vector<std::shared_ptr<RequestHandle>> handles;
    std::vector<Result> results;
    auto submit_random = [&] {
      EngineRequest r;
      r.model = static_cast<int64_t>(rng() % 3);
      if (rng() % 2) r.prompt = prefixes[rng() % prefixes.size()];
      const int64_t tail = 1 + static_cast<int64_t>(rng() % 10);
      for (int64_t i = 0; i < tail; ++i) r.prompt.push_back(static_cast<int32_t>(rng() % kVocab));
      r.max_tokens = static_cast<int64_t>(rng() % 10);
      r.sampling.temperature = rng() % 2 ? 0.0f : 0.8f;
      r.sampling.top_k = static_cast<int64_t>(rng() % 3) * 5;
      r.sampling.seed = rng();
      r.prompt_logprobs = rng() % 5 == 0;
      r.top_logprobs = rng() % 4 == 0 ? -1 : 0;  // mostly with the chosen tokens' logprobs, compared below
      reqs.push_back(r);
      handles.push_back(h.submit(r));
      results.emplace_back();
    };
    for (int64_t step = 0; step < 250; ++step) {
      const int arrivals = static_cast<int>(rng() % 3);
      if (step < 200)
        for (int i = 0; i < arrivals; ++i) submit_random();
      if (!handles.empty() && rng() % 8 == 0) handles[rng() % handles.size()]->cancel();
      h.sched->step();
      ASSERT_EQ(h.refcount_sum(), h.sched->page_references());
      for (size_t i = 0; i < handles.size(); ++i) drain(*handles[i], results[i]);
    }
    h.run();
    EngineStats st;
    h.sched->fill_stats(st);
    EXPECT_GT(st.preemptions, 0);  // the trace does exercise preemption
    int64_t cached = 0, compared = 0;
    for (size_t i = 0; i < handles.size(); ++i) {
      drain(*handles[i], results[i]);
      ASSERT_TRUE(results[i].finished) << "request " << i;
      cached += results[i].finish.cached_prompt_tokens;
      if (results[i].finish.finish == FinishReason::Cancelled) continue;
      EXPECT_EQ(results[i].finish.finish, FinishReason::Length);
      const Result alone = solo(reqs[i]);
      ASSERT_EQ(results[i].ids(), alone.ids()) << "request " << i;
      for (size_t t = 0; t < alone.tokens.size(); ++t)
        EXPECT_EQ(results[i].tokens[t].logprob, alone.tokens[t].logprob);
      if (reqs[i].prompt_logprobs) {
        ASSERT_EQ(results[i].prompt.size(), 1u);
        ASSERT_EQ(results[i].prompt[0].prompt.size(), alone.prompt[0].prompt.size());
        for (size_t t = 0; t < alone.prompt[0].prompt.size(); ++t)
          EXPECT_EQ(results[i].prompt[0].prompt[t].logprob, alone.prompt[0].prompt[t].logprob);
      }
      ++compared;
    }
    EXPECT_GT(cached, 0);  // and the prefix cache
    EXPECT_GT(compared, 50);
    h.sched->clear_prefix_cache();
    EXPECT_EQ(h.pool.pages_free(), h.pool.pages_total());
    EXPECT_EQ(h.refcount_sum(), 0);
  }
}

// ---- the engine thread (Engine::Impl) ----

namespace {

// Blocks every pass until released (to hold the engine thread in a known place).
class GateRunner : public StepRunner {
 public:
  GateRunner(KvPool& pool, int64_t max_rows) : fake_(pool, kVocab, max_rows) {}
  void run(std::span<const SequenceChunk> batch, BatchOutputs& out) override {
    {
      std::unique_lock<std::mutex> lk(mu_);
      entered_ = true;
      cv_.notify_all();
      cv_.wait(lk, [&] { return open_; });
    }
    fake_.run(batch, out);
  }
  void wait_entered() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return entered_; });
  }
  void open() {
    std::lock_guard<std::mutex> lk(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  FakeRunner fake_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false, open_ = false;
};

std::unique_ptr<Engine::Impl> make_engine(EngineOptions o, Adapter* a2, GateRunner** gate = nullptr) {
  std::vector<EngineModel> models{{1, 0, ""}, {2, 1, "p2"}};
  std::vector<const Adapter*> adapters{nullptr, a2};
  return std::make_unique<Engine::Impl>(
      fake_config(), models, adapters,
      [&](KvPool& pool) -> std::unique_ptr<StepRunner> {
        if (gate) {
          auto g = std::make_unique<GateRunner>(pool, o.batch_rows);
          *gate = g.get();
          return g;
        }
        return std::make_unique<FakeRunner>(pool, kVocab, o.batch_rows);
      },
      o);
}

Result wait_finished(RequestHandle& h) {
  Result r;
  EngineEvent e;
  while (h.next(e, std::chrono::milliseconds(60000))) {
    if (e.kind == EngineEvent::Kind::Token) r.tokens.push_back(e);
    if (e.kind == EngineEvent::Kind::Finished) {
      r.finished = true;
      r.finish = e;
    }
  }
  return r;
}

EngineError::Kind submit_error(Engine::Impl& e, const EngineRequest& r) {
  try {
    e.submit(r);
  } catch (const EngineError& err) {
    return err.kind;
  }
  ADD_FAILURE() << "submit accepted the request";
  return EngineError::Kind::InvalidRequest;
}

}  // namespace

TEST(Engine, RejectsInvalidRequests) {
  Adapter a2 = make_adapter(2);
  EngineOptions o;
  o.page_tokens = 4;
  o.kv_memory_bytes = 2 * 4 * 4 * 20;  // 20 pages of 4 tokens (1 layer, 1 kv head, dim 1, f32)
  auto e = make_engine(o, &a2);
  EXPECT_EQ(e->stats().kv_pages_total, 20);
  using K = EngineError::Kind;
  EXPECT_EQ(submit_error(*e, request(0, {}, 4)), K::InvalidRequest);                  // empty prompt
  EXPECT_EQ(submit_error(*e, request(0, {1, kVocab}, 4)), K::InvalidRequest);         // id >= V
  EXPECT_EQ(submit_error(*e, request(0, {1, -1}, 4)), K::InvalidRequest);             // id < 0
  EXPECT_EQ(submit_error(*e, request(2, {1}, 4)), K::InvalidRequest);                 // model index
  EXPECT_EQ(submit_error(*e, request(-1, {1}, 4)), K::InvalidRequest);
  EXPECT_EQ(submit_error(*e, request(0, iota_tokens(250, 1), 7)), K::InvalidRequest); // > context 256
  EXPECT_EQ(submit_error(*e, request(0, {1}, -1)), K::InvalidRequest);
  EXPECT_EQ(submit_error(*e, request(1, iota_tokens(40, 1), 2)), K::InvalidRequest);  // 2 x 11 pages > 20
  EngineRequest bad = request(0, {1}, 4);
  bad.sampling.top_p = 0.0f;
  EXPECT_EQ(submit_error(*e, bad), K::InvalidRequest);
  bad = request(0, {1}, 4);
  bad.sampling.temperature = -1.0f;
  EXPECT_EQ(submit_error(*e, bad), K::InvalidRequest);
  bad = request(0, {1}, 4);
  bad.top_logprobs = 21;
  EXPECT_EQ(submit_error(*e, bad), K::InvalidRequest);
  // The messages name the problem.
  try {
    e->submit(request(0, {1, 99}, 4));
  } catch (const EngineError& err) {
    EXPECT_NE(std::string(err.what()).find("99"), std::string::npos) << err.what();
  }
  // Nothing was queued or allocated for the refused requests; a good one still runs.
  EngineStats st = e->stats();
  EXPECT_EQ(st.waiting, 0);
  EXPECT_EQ(st.kv_pages_used, 0);
  auto ok = e->submit(request(1, iota_tokens(36, 1), 4));  // 2 x 10 pages: the whole pool
  EXPECT_EQ(wait_finished(*ok).finish.finish, FinishReason::Length);
  e->shutdown(true);
  EXPECT_EQ(submit_error(*e, request(0, {1}, 4)), K::ShuttingDown);
  e->shutdown(false);  // idempotent
}

TEST(Engine, QueueFullBeyondMaxQueue) {
  Adapter a2 = make_adapter(2);
  EngineOptions o;
  o.page_tokens = 4;
  o.max_queue = 2;
  GateRunner* gate = nullptr;
  auto e = make_engine(o, &a2, &gate);
  auto a = e->submit(request(0, {1, 2, 3}, 2));
  gate->wait_entered();  // the engine thread is inside the pass of `a`; a is running
  auto b = e->submit(request(0, {1, 2}, 2));
  auto c = e->submit(request(0, {1, 2}, 2));
  EXPECT_EQ(submit_error(*e, request(0, {1}, 2)), EngineError::Kind::QueueFull);
  gate->open();
  for (auto* h : {a.get(), b.get(), c.get()}) EXPECT_EQ(wait_finished(*h).finish.finish, FinishReason::Length);
}

TEST(Engine, ConcurrentClientsGetTheirOwnOutputs) {
  Adapter a2 = make_adapter(2);
  EngineOptions o;
  o.page_tokens = 4;
  o.batch_rows = 16;
  o.kv_memory_bytes = 2 * 4 * 4 * 48;  // 48 pages: preemption happens
  auto e = make_engine(o, &a2);
  std::atomic<int> mismatches{0}, unfinished{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t)
    clients.emplace_back([&, t] {
      for (int i = 0; i < 6; ++i) {
        EngineRequest r = request(i % 2, iota_tokens(5 + 3 * i, t * 10 + i), 8, t % 2 ? 0.0f : 1.0f, t * 100 + i);
        auto h = e->submit(r);
        const bool cancel = (t + i) % 5 == 0;
        if (cancel) h->cancel();
        Result got = wait_finished(*h);
        if (!got.finished) ++unfinished;
        if (cancel) continue;
        if (got.ids() != solo(r).ids()) ++mismatches;
      }
    });
  for (auto& c : clients) c.join();
  EXPECT_EQ(unfinished.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  e->shutdown(true);  // the engine thread has published its last step's stats
  EngineStats st = e->stats();
  EXPECT_EQ(st.per_streams[1].requests_total + st.per_streams[2].requests_total, 24);
  EXPECT_GT(st.steps, 0);
  EXPECT_EQ(st.step_seconds.count, static_cast<uint64_t>(st.steps));
  EXPECT_GT(st.per_streams[1].time_to_first_token.count, 0u);
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.kv_pages_used, st.kv_pages_cached);
}

TEST(Engine, ShutdownCancelsOrFinishes) {
  Adapter a2 = make_adapter(2);
  EngineOptions o;
  o.page_tokens = 4;
  {
    auto e = make_engine(o, &a2);
    std::vector<std::shared_ptr<RequestHandle>> hs;
    for (int i = 0; i < 5; ++i) hs.push_back(e->submit(request(1, iota_tokens(10, i), 40)));
    e->shutdown(true);
    for (auto& h : hs) EXPECT_EQ(wait_finished(*h).finish.finish, FinishReason::Length);
  }
  {
    GateRunner* gate = nullptr;
    auto e = make_engine(o, &a2, &gate);
    auto a = e->submit(request(1, iota_tokens(10, 1), 40));
    gate->wait_entered();
    auto b = e->submit(request(0, iota_tokens(10, 2), 40));
    std::thread closer([&] { e->shutdown(false); });
    // Open the pass only once shutdown has taken effect (submit refuses).
    for (;;) {
      try {
        e->submit(request(0, {1}, 1));
      } catch (const EngineError& err) {
        if (err.kind == EngineError::Kind::ShuttingDown) break;
      }
      std::this_thread::yield();
    }
    gate->open();
    closer.join();
    EXPECT_EQ(wait_finished(*a).finish.finish, FinishReason::Cancelled);
    EXPECT_EQ(wait_finished(*b).finish.finish, FinishReason::Cancelled);
  }
}

TEST(Engine, FailedModelPassEndsRunningRequestsWithError) {
  // The first pass throws: the request in it finishes with Error and the exception's message;
  // the engine keeps serving, a later request finishes normally.
  struct ThrowOnce : StepRunner {
    FakeRunner fake;
    bool thrown = false;
    ThrowOnce(KvPool& pool, int64_t rows) : fake(pool, kVocab, rows) {}
    void run(std::span<const SequenceChunk> batch, BatchOutputs& out) override {
      if (!thrown) {
        thrown = true;
        throw std::runtime_error("out of scratch memory");
      }
      fake.run(batch, out);
    }
  };
  EngineOptions o;
  o.page_tokens = 4;
  Adapter a2 = make_adapter(2);
  Engine::Impl e(fake_config(), {{1, 0, ""}, {2, 1, "p2"}}, {nullptr, &a2},
                 [&](KvPool& pool) -> std::unique_ptr<StepRunner> { return std::make_unique<ThrowOnce>(pool, o.batch_rows); },
                 o);
  const Result failed = wait_finished(*e.submit(request(1, iota_tokens(10, 1), 5)));
  EXPECT_EQ(failed.finish.finish, FinishReason::Error);
  EXPECT_NE(failed.finish.error.find("out of scratch memory"), std::string::npos) << failed.finish.error;
  EXPECT_TRUE(failed.tokens.empty());
  const Result ok = wait_finished(*e.submit(request(1, iota_tokens(10, 1), 5)));
  EXPECT_EQ(ok.finish.finish, FinishReason::Length);
  EXPECT_EQ(ok.tokens.size(), 5u);
  e.shutdown(true);
  EXPECT_EQ(e.stats().kv_pages_used, e.stats().kv_pages_cached);
}
