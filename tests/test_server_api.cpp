// The server without a model: request parsing and validation (every error the API promises),
// model ids, stop strings, response / chunk / logprobs formatting, metrics text, and the HTTP
// layer (auth, CORS, 404 / 413 / 429, SSE framing, disconnect -> cancel) driven by a scripted
// engine that emits known tokens.
#include <httplib.h>

#include <atomic>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/error.h"
#include "server/api.h"
#include "server/metrics.h"
#include "server/routes.h"
#include "server/server.h"
#include "test_util.h"

using namespace parscale;
using namespace parscale::server;
using json = nlohmann::json;

namespace {

Tokenizer demo_tokenizer() { return Tokenizer::from_model_dir((test::source_dir() / "models" / "demo").string()); }

std::vector<EngineModel> three_models() {
  std::vector<EngineModel> m(3);
  m[0].streams = 1;
  m[1].streams = 2, m[1].prefix_tokens = 16, m[1].adapter_name = "adapter-p2.safetensors";
  m[2].streams = 4, m[2].prefix_tokens = 16, m[2].adapter_name = "adapter-p4.safetensors";
  return m;
}

struct Ctx {
  Tokenizer tok = demo_tokenizer();
  ModelCatalog catalog{"demo", three_models()};
  ParseContext ctx;
  Ctx() {
    ctx.catalog = &catalog;
    ctx.tokenizer = &tok;
    ctx.vocab_size = 4096;
    ctx.max_context = 1024;
    ctx.eos_ids = {4093, 4095};
  }
};

// Expects parse to throw ApiError with this status and param.
template <class F>
void expect_error(F f, int status, const std::string& param, const std::string& needle = "") {
  try {
    f();
    ADD_FAILURE() << "no error (expected " << status << " on '" << param << "')";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << e.message;
    EXPECT_EQ(e.param, param) << e.message;
    if (!needle.empty()) {
      EXPECT_NE(e.message.find(needle), std::string::npos) << e.message;
    }
    json body = json::parse(error_body(e));
    EXPECT_TRUE(body["error"]["message"].is_string());
    EXPECT_TRUE(body["error"].contains("type") && body["error"].contains("param") && body["error"].contains("code"));
  }
}

}  // namespace

TEST(ServerApi, ModelIds) {
  ModelCatalog c("demo", three_models());
  ASSERT_EQ(c.entries().size(), 3u);
  EXPECT_EQ(c.entries()[0].id, "demo");
  EXPECT_EQ(c.entries()[1].id, "demo:p2");
  EXPECT_EQ(c.entries()[2].id, "demo:p4");
  EXPECT_EQ(c.resolve(std::nullopt, std::nullopt).engine_index, 0);
  EXPECT_EQ(c.resolve("demo:p4", std::nullopt).engine_index, 2);
  EXPECT_EQ(c.resolve("demo:p1", std::nullopt).engine_index, 0);  // the folder's own P, by its P
  EXPECT_EQ(c.resolve("demo", 2).engine_index, 1);                // parscale_streams selects
  EXPECT_EQ(c.resolve(std::nullopt, 4).engine_index, 2);
  EXPECT_EQ(c.resolve("demo:p2", 2).engine_index, 1);
  expect_error([&] { c.resolve("gpt-4", std::nullopt); }, 404, "model", "gpt-4");
  expect_error([&] { c.resolve(std::nullopt, 8); }, 400, "parscale_streams", "available: 1, 2, 4");
  expect_error([&] { c.resolve("demo:p2", 4); }, 400, "parscale_streams");
  json list = c.list_json(123);
  EXPECT_EQ(list["object"], "list");
  EXPECT_EQ(list["data"][2]["id"], "demo:p4");
  EXPECT_EQ(list["data"][2]["parscale"]["streams"], 4);
  auto dup = three_models();
  dup[2].streams = 2;
  EXPECT_THROW(ModelCatalog("demo", dup), Error);
  EXPECT_THROW(ModelCatalog("de:mo", three_models()), Error);
}

TEST(ServerApi, CompletionPromptForms) {
  Ctx c;
  auto r = parse_completion_request(R"({"model":"demo","prompt":"def f(x):"})", c.ctx);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0], c.tok.encode("def f(x):"));
  EXPECT_EQ(r.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_EQ(r.model->id, "demo");
  r = parse_completion_request(R"({"model":"demo:p4","prompt":[5,17,3]})", c.ctx);
  EXPECT_EQ(r.prompts, (std::vector<std::vector<int32_t>>{{5, 17, 3}}));
  EXPECT_EQ(r.prompt_texts[0], c.tok.decode({5, 17, 3}));
  EXPECT_EQ(r.model->streams, 4);
  r = parse_completion_request(R"({"prompt":["a", [7, 8], "b"], "n": 2})", c.ctx);
  ASSERT_EQ(r.prompts.size(), 3u);
  EXPECT_EQ(r.prompts[1], (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(r.n, 2);
  r = parse_completion_request(R"({"prompt":"x","max_tokens":16.0,"parscale_streams":2,"stop":"\n"})", c.ctx);
  EXPECT_EQ(r.model->id, "demo:p2");
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n"});
}

TEST(ServerApi, CompletionSamplingAndEngineRequest) {
  Ctx c;
  auto r = parse_completion_request(
      R"({"prompt":[1,2,3],"max_tokens":5,"temperature":0,"top_p":0.9,"top_k":40,"min_p":0.05,"repetition_penalty":1.1,
          "seed":7,"n":3,"logprobs":2,"echo":true,"ignore_eos":true,"parscale_streams":4,"parscale_stream_weights":true,
          "presence_penalty":0.5,"frequency_penalty":-1.25,"user":"u","stream":true,"stream_options":{"include_usage":true}})",
      c.ctx);
  EXPECT_EQ(r.sampling.temperature, 0.0f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(r.sampling.min_p, 0.05f);
  EXPECT_FLOAT_EQ(r.sampling.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.frequency_penalty, -1.25f);
  EXPECT_TRUE(r.stream && r.include_usage && r.echo && r.ignore_eos && r.stream_weights);
  EngineRequest e0 = r.engine_request(0, 0), e1 = r.engine_request(0, 1), e2 = r.engine_request(0, 2);
  EXPECT_EQ(e0.sampling.seed, 7u);  // choice 0 uses the seed as given
  EXPECT_NE(e1.sampling.seed, 7u);
  EXPECT_NE(e1.sampling.seed, e2.sampling.seed);
  EXPECT_EQ(r.engine_request(0, 1).sampling.seed, e1.sampling.seed);  // reproducible
  EXPECT_EQ(e0.model, 2);
  EXPECT_EQ(e0.max_tokens, 5);
  EXPECT_EQ(e0.top_logprobs, 2);
  EXPECT_TRUE(e0.prompt_logprobs);  // echo + logprobs
  EXPECT_TRUE(e0.stream_weights);
  EXPECT_TRUE(e0.ignore_eos);
  EXPECT_EQ(e0.eos_ids, (std::vector<int64_t>{4093, 4095}));
  // No seed: a random one, different between requests.
  auto a = parse_completion_request(R"({"prompt":"x"})", c.ctx), b = parse_completion_request(R"({"prompt":"x"})", c.ctx);
  EXPECT_NE(a.sampling.seed, b.sampling.seed);
  // max_tokens 0 with echo + logprobs: prompt logprobs only (lm-evaluation-harness).
  auto lm = parse_completion_request(R"({"prompt":[1,2,3],"max_tokens":0,"echo":true,"logprobs":0,"temperature":0})", c.ctx);
  EXPECT_EQ(lm.engine_request(0, 0).max_tokens, 0);
  EXPECT_TRUE(lm.engine_request(0, 0).prompt_logprobs);
  // stream weights only ask the engine when P > 1.
  EXPECT_FALSE(parse_completion_request(R"({"prompt":"x","parscale_stream_weights":true})", c.ctx).engine_request(0, 0).stream_weights);
}

TEST(ServerApi, CompletionErrors) {
  Ctx c;
  auto bad = [&](const std::string& body, int status, const std::string& param, const std::string& needle = "") {
    SCOPED_TRACE(body);
    expect_error([&] { parse_completion_request(body, c.ctx); }, status, param, needle);
  };
  bad("{", 400, "", "invalid JSON");
  bad("", 400, "", "invalid JSON");
  bad("[1,2]", 400, "", "JSON object");
  bad(std::string(100000, '['), 400, "", "deeper than 64");
  bad("{\"prompt\":" + std::string(65, '[') + std::string(65, ']') + "}", 400, "", "deeper than 64");
  bad("{\"prompt\":\"\xff\xfe\"}", 400, "", "invalid JSON");  // invalid UTF-8
  bad(R"({"model":"demo"})", 400, "prompt", "required");
  bad(R"({"prompt":5})", 400, "prompt");
  bad(R"({"prompt":[]})", 400, "prompt", "empty");
  bad(R"({"prompt":""})", 400, "prompt", "no tokens");
  bad(R"({"prompt":[1,"a"]})", 400, "prompt[1]");
  bad(R"({"prompt":[1,4096]})", 400, "prompt[1]", "outside the vocabulary");
  bad(R"({"prompt":[-1]})", 400, "prompt[0]", "outside the vocabulary");
  bad(R"({"prompt":[1.5]})", 400, "prompt[0]");
  bad(R"({"prompt":[[1],[]]})", 400, "prompt[1]", "empty");
  bad(R"({"prompt":[[1],{"a":1}]})", 400, "prompt[1]");
  bad(R"({"prompt":"x","model":"gpt-4"})", 404, "model");
  bad(R"({"prompt":"x","model":7})", 400, "model");
  bad(R"({"prompt":"x","max_tokens":-1})", 400, "max_tokens", ">= 0");
  bad(R"({"prompt":"x","max_tokens":"5"})", 400, "max_tokens", "integer");
  bad(R"({"prompt":"x","max_tokens":1.5})", 400, "max_tokens", "integer");
  bad(R"({"prompt":"x","max_tokens":1e300})", 400, "max_tokens");
  bad(R"({"prompt":"x","max_tokens":99999999999999999999999})", 400, "max_tokens");
  bad(R"({"prompt":"x","max_tokens":2000})", 400, "max_tokens", "context");
  bad(R"({"prompt":"x","temperature":-0.1})", 400, "temperature");
  bad(R"({"prompt":"x","temperature":2.5})", 400, "temperature");
  bad(R"({"prompt":"x","temperature":"hot"})", 400, "temperature");
  bad(R"({"prompt":"x","top_p":0})", 400, "top_p");
  bad(R"({"prompt":"x","top_p":1.01})", 400, "top_p");
  bad(R"({"prompt":"x","top_k":-2})", 400, "top_k");
  bad(R"({"prompt":"x","min_p":1.5})", 400, "min_p");
  bad(R"({"prompt":"x","repetition_penalty":0})", 400, "repetition_penalty");
  bad(R"({"prompt":"x","presence_penalty":3})", 400, "presence_penalty");
  bad(R"({"prompt":"x","frequency_penalty":-2.5})", 400, "frequency_penalty");
  bad(R"({"prompt":"x","n":0})", 400, "n");
  bad(R"({"prompt":"x","n":1000})", 400, "n");
  bad(R"({"prompt":"x","n":true})", 400, "n");
  bad(R"({"prompt":"x","logprobs":21})", 400, "logprobs");
  bad(R"({"prompt":"x","logprobs":-1})", 400, "logprobs");
  bad(R"({"prompt":"x","echo":"yes"})", 400, "echo");
  bad(R"({"prompt":"x","stream":1})", 400, "stream");
  bad(R"({"prompt":"x","stream_options":[]})", 400, "stream_options");
  bad(R"({"prompt":"x","stop":["a","b","c","d","e"]})", 400, "stop", "at most 4");
  bad(R"({"prompt":"x","stop":[1]})", 400, "stop[0]");
  bad(R"({"prompt":"x","stop":{}})", 400, "stop");
  bad(R"({"prompt":"x","seed":"1"})", 400, "seed");
  bad(R"({"prompt":"x","user":1})", 400, "user");
  bad(R"({"prompt":"x","parscale_streams":3})", 400, "parscale_streams");
  bad(R"({"prompt":"x","parscale_streams":"4"})", 400, "parscale_streams");
  bad(R"({"prompt":"x","logit_bias":{"5":10}})", 400, "logit_bias");
  bad(R"({"prompt":"x","best_of":3})", 400, "best_of");
  bad(R"({"prompt":"x","suffix":"y"})", 400, "suffix");
  bad(R"({"prompt":"x","ignore_eos":"no"})", 400, "ignore_eos");
  std::string long_prompt = "{\"prompt\":[";
  for (int i = 0; i < 1025; ++i) long_prompt += (i ? ",1" : "1");
  bad(long_prompt + "]}", 400, "prompt", "context");
}

// max_tokens near INT64_MAX / INT32_MAX with a non-empty prompt: a 400 naming the field (the
// check is max_tokens > context - prompt, never prompt + max_tokens, which would overflow).
TEST(ServerApi, HugeMaxTokensIsA400NotAnOverflow) {
  Ctx c;
  const int64_t i64 = std::numeric_limits<int64_t>::max(), i32 = std::numeric_limits<int32_t>::max();
  for (int64_t mt : {i64, i64 - 1, i64 - 5, i32, i32 + int64_t{1}, int64_t{1} << 62}) {
    const std::string v = std::to_string(mt);
    SCOPED_TRACE(v);
    expect_error([&] { parse_completion_request(R"({"prompt":"hello world","max_tokens":)" + v + "}", c.ctx); }, 400,
                 "max_tokens", "exceeds the model's context");
    expect_error([&] { parse_completion_request(R"({"prompt":[[1,2,3],[4]],"max_tokens":)" + v + "}", c.ctx); }, 400,
                 "max_tokens", "exceeds the model's context");
    expect_error([&] { parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":)" + v + "}", c.ctx); },
                 400, "max_tokens", "exceeds the model's context");
    expect_error([&] {
      parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":)" + v + "}", c.ctx);
    }, 400, "max_completion_tokens", "exceeds the model's context");
  }
  // Past INT64_MAX (unsigned in JSON) and as a float near it.
  expect_error([&] { parse_completion_request(R"({"prompt":"hi","max_tokens":9223372036854775808})", c.ctx); }, 400,
               "max_tokens", "out of range");
  expect_error([&] { parse_completion_request(R"({"prompt":"hi","max_tokens":18446744073709551615})", c.ctx); }, 400,
               "max_tokens", "out of range");
  expect_error([&] { parse_completion_request(R"({"prompt":"hi","max_tokens":9.0e18})", c.ctx); }, 400, "max_tokens",
               "exceeds the model's context");
  // The largest that fits is accepted.
  auto ok = parse_completion_request(R"({"prompt":[1,2,3],"max_tokens":1021})", c.ctx);
  EXPECT_EQ(ok.max_tokens, 1021);
  expect_error([&] { parse_completion_request(R"({"prompt":[1,2,3],"max_tokens":1022})", c.ctx); }, 400, "max_tokens");
}

TEST(ServerApi, ChatParsing) {
  Ctx c;
  auto r = parse_chat_request(
      R"({"model":"demo:p2","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]},
          {"role":"assistant","content":null},{"role":"developer","content":"x"}],"max_completion_tokens":7,"logprobs":true,"top_logprobs":3})",
      c.ctx);
  std::string want = c.tok.apply_chat_template({{"system", "be brief"}, {"user", "hi"}, {"assistant", ""}, {"system", "x"}}, true);
  EXPECT_EQ(r.prompt_texts[0], want);
  EXPECT_EQ(r.prompts[0], c.tok.encode(want));
  EXPECT_EQ(r.max_tokens, 7);
  EXPECT_EQ(r.logprobs, 3);
  EXPECT_TRUE(r.chat);
  // Without max tokens: the rest of the context.
  auto d = parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}]})", c.ctx);
  EXPECT_EQ(d.max_tokens, 1024 - static_cast<int64_t>(d.prompts[0].size()));
  EXPECT_EQ(d.logprobs, -1);
  EXPECT_EQ(parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":3})", c.ctx).max_tokens, 3);
  EXPECT_EQ(parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}],"logprobs":true})", c.ctx).logprobs, 0);

  auto bad = [&](const std::string& body, int status, const std::string& param, const std::string& needle = "") {
    SCOPED_TRACE(body);
    expect_error([&] { parse_chat_request(body, c.ctx); }, status, param, needle);
  };
  bad(R"({"model":"demo"})", 400, "messages", "required");
  bad(R"({"messages":{}})", 400, "messages");
  bad(R"({"messages":[]})", 400, "messages", "empty");
  bad(R"({"messages":["hi"]})", 400, "messages[0]");
  bad(R"({"messages":[{"content":"hi"}]})", 400, "messages[0].role");
  bad(R"({"messages":[{"role":"wizard","content":"hi"}]})", 400, "messages[0].role");
  bad(R"({"messages":[{"role":"user"}]})", 400, "messages[0].content");
  bad(R"({"messages":[{"role":"user","content":5}]})", 400, "messages[0].content");
  bad(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", 400, "messages[0].content[0].type");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":-3})", 400, "max_completion_tokens");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":5000})", 400, "max_tokens", "context");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":5000})", 400, "max_completion_tokens", "context");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"top_logprobs":2})", 400, "top_logprobs", "logprobs");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":25})", 400, "top_logprobs");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"logprobs":1})", 400, "logprobs");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function"}]})", 400, "tools");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}})", 400, "response_format");
  bad(R"({"messages":[{"role":"user","content":"hi"}],"model":"nope"})", 404, "model");
}

TEST(ServerApi, StopMatcherHoldsBackAndCuts) {
  StopMatcher m({"STOP", "\n\n"});
  std::string out;
  out += m.push("abc S");
  EXPECT_EQ(out, "abc ");  // "S" could start "STOP"
  out += m.push("T");
  EXPECT_EQ(out, "abc ");
  out += m.push("x");  // "STx" is no stop: released
  EXPECT_EQ(out, "abc STx");
  out += m.push("yy\n");
  EXPECT_EQ(out, "abc STxyy");
  out += m.push("\nrest");
  EXPECT_EQ(out, "abc STxyy");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");

  StopMatcher a({"ab", "b"});  // the earliest occurrence wins
  EXPECT_EQ(a.push("xab"), "x");
  StopMatcher b({"world"});
  EXPECT_EQ(b.push("hello wor"), "hello ");
  EXPECT_EQ(b.flush(), "wor");  // the end without a stop releases what was held
  StopMatcher none;
  EXPECT_EQ(none.push("anything"), "anything");
  // Stop string spanning many pieces, one byte at a time.
  StopMatcher c({"<end>"});
  std::string got;
  for (char ch : std::string("a<en<end>zz")) got += c.push(std::string(1, ch));
  EXPECT_EQ(got, "a<en");
  EXPECT_TRUE(c.stopped());
}

namespace {

EngineEvent token_event(int32_t id, float lp, std::vector<TokenLogprob> top = {}, std::vector<float> w = {}) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::Token;
  e.token = id;
  e.logprob = lp;
  e.top = std::move(top);
  e.stream_weights = std::move(w);
  return e;
}
EngineEvent finished_event(FinishReason f, int64_t prompt, int64_t gen) {
  EngineEvent e;
  e.kind = EngineEvent::Kind::Finished;
  e.finish = f;
  e.prompt_tokens = prompt;
  e.generated_tokens = gen;
  return e;
}

}  // namespace

TEST(ServerApi, ChoiceTrackerTextStopAndLogprobs) {
  Ctx c;
  std::vector<int32_t> ids = c.tok.encode("hello world. more text");
  ASSERT_GE(ids.size(), 4u);
  auto r = parse_completion_request(R"({"prompt":"x","logprobs":1,"stop":"more"})", c.ctx);
  ChoiceTracker t(r, c.tok, 0);
  std::string streamed;
  for (size_t i = 0; i < ids.size() && !t.done(); ++i) {
    ChoiceDelta d = t.on_event(token_event(ids[i], -0.5f, {{ids[i], -0.5f}}));
    streamed += d.text;
    if (d.finished) {
      EXPECT_EQ(d.finish_reason, "stop");
    }
  }
  EXPECT_TRUE(t.done());
  EXPECT_TRUE(t.stopped_by_string());
  EXPECT_EQ(streamed, "hello world. ");
  EXPECT_EQ(t.text(), streamed);
  ASSERT_FALSE(t.tokens().empty());
  EXPECT_EQ(t.tokens()[0].text_offset, 1);  // after the prompt "x"
  json lp = completion_logprobs_json(t.tokens());
  EXPECT_EQ(lp["tokens"].size(), t.tokens().size());
  EXPECT_FLOAT_EQ(lp["token_logprobs"][0].get<float>(), -0.5f);
  EXPECT_TRUE(lp["top_logprobs"][0].is_object());
  // Events after the stop are ignored.
  EXPECT_TRUE(t.on_event(token_event(ids[0], 0)).text.empty());

  // eos ends with "stop", is neither text nor a reported token; Length -> "length".
  ChoiceTracker e(r, c.tok, 0);
  e.on_event(token_event(ids[0], -1));
  e.on_event(token_event(4095, -0.1f));
  ChoiceDelta fin = e.on_event(finished_event(FinishReason::Stop, 1, 2));
  EXPECT_EQ(fin.finish_reason, "stop");
  EXPECT_EQ(e.text(), c.tok.decode({ids[0]}));
  EXPECT_EQ(e.tokens().size(), 1u);
  EXPECT_EQ(e.completion_tokens(), 2);
  ChoiceTracker l(r, c.tok, 0);
  l.on_event(token_event(ids[0], -1));
  EXPECT_EQ(l.on_event(finished_event(FinishReason::Length, 1, 1)).finish_reason, "length");
  ChoiceTracker cl(r, c.tok, 0);
  EXPECT_EQ(cl.on_event(finished_event(FinishReason::ContextLimit, 1, 0)).finish_reason, "length");
}

// Logprobs describe the returned text only: the tokens whose text starts at or after the stop
// string are not reported (the one that straddles its start is), and no token is reported
// before some of its text is sent. usage counts every generated token.
TEST(ServerApi, StopStringDropsTheLogprobsOfItsTokens) {
  Ctx c;
  const std::string text = "hello world. more text and more";
  const std::vector<int32_t> ids = c.tok.encode(text);
  std::vector<int64_t> start;  // of each token in the completion text (ASCII: pieces are the text)
  int64_t pos = 0;
  for (int32_t id : ids) {
    start.push_back(pos);
    pos += static_cast<int64_t>(c.tok.token_bytes(id).size());
  }
  ASSERT_EQ(pos, static_cast<int64_t>(text.size()));
  const std::string stop = "ore te";
  const int64_t S = static_cast<int64_t>(text.find(stop));
  auto token_at = [&](int64_t byte) {
    size_t i = 0;
    while (i + 1 < ids.size() && start[i + 1] <= byte) ++i;
    return i;
  };
  const size_t straddle = token_at(S), last = token_at(S + static_cast<int64_t>(stop.size()) - 1);
  ASSERT_LT(start[straddle], S) << "the test needs a token that straddles the stop string's start";
  ASSERT_GT(last, straddle) << "the test needs tokens after the straddling one";

  for (const char* body : {R"({"prompt":"x","logprobs":1,"stop":"ore te"})",
                           R"({"messages":[{"role":"user","content":"x"}],"logprobs":true,"stop":"ore te"})"}) {
    SCOPED_TRACE(body);
    const bool chat = body[2] == 'm';
    auto r = chat ? parse_chat_request(body, c.ctx) : parse_completion_request(body, c.ctx);
    const int64_t base = static_cast<int64_t>(r.prompt_texts[0].size());
    ChoiceTracker t(r, c.tok, 0);
    std::string sent;
    std::vector<int32_t> reported;
    size_t fed = 0;
    for (; fed < ids.size() && !t.done(); ++fed) {
      ChoiceDelta d = t.on_event(token_event(ids[fed], -0.25f * static_cast<float>(fed + 1)));
      sent += d.text;
      for (const auto& tok : d.tokens) {
        EXPECT_LT(tok.text_offset - base, static_cast<int64_t>(sent.size())) << "a token reported before its text";
        reported.push_back(tok.id);
      }
    }
    EXPECT_EQ(fed, last + 1);
    EXPECT_EQ(t.finish_reason(), "stop");
    EXPECT_EQ(sent, text.substr(0, S));
    EXPECT_EQ(reported, std::vector<int32_t>(ids.begin(), ids.begin() + straddle + 1));
    ASSERT_EQ(t.tokens().size(), straddle + 1);
    EXPECT_FLOAT_EQ(*t.tokens().back().logprob, -0.25f * static_cast<float>(straddle + 1));
    EXPECT_EQ(t.completion_tokens(), static_cast<int64_t>(last + 1));  // the stop string's tokens count
    if (chat) {
      EXPECT_EQ(chat_logprobs_json(t.tokens())["content"].size(), straddle + 1);
    } else {
      const json lp = completion_logprobs_json(t.tokens());
      EXPECT_EQ(lp["tokens"].size(), straddle + 1);
      EXPECT_EQ(lp["token_logprobs"].size(), straddle + 1);
      EXPECT_EQ(lp["top_logprobs"].size(), straddle + 1);
      EXPECT_EQ(lp["text_offset"].back(), base + start[straddle]);
    }
  }

  // A stop string that never completes: the tokens of held-back text wait for it, and the end
  // reports them all.
  auto r = parse_completion_request(R"({"prompt":"x","logprobs":0,"stop":" more tex!"})", c.ctx);
  ChoiceTracker t(r, c.tok, 0);
  std::string sent;
  size_t reported = 0;
  bool held = false;
  for (size_t i = 0; i < ids.size(); ++i) {
    ChoiceDelta d = t.on_event(token_event(ids[i], -1));
    sent += d.text;
    for (const auto& tok : d.tokens) EXPECT_LT(tok.text_offset - 1, static_cast<int64_t>(sent.size()));
    reported += d.tokens.size();
    if (reported < i + 1) held = true;
  }
  EXPECT_TRUE(held) << "no token was held back with its text";
  ChoiceDelta fin = t.on_event(finished_event(FinishReason::Length, 1, static_cast<int64_t>(ids.size())));
  reported += fin.tokens.size();
  EXPECT_EQ(sent + fin.text, text);
  EXPECT_EQ(reported, ids.size());
  EXPECT_EQ(t.tokens().size(), ids.size());
}

TEST(ServerApi, EchoWithPromptLogprobs) {
  Ctx c;
  auto r = parse_completion_request(R"({"prompt":[10,20,30],"echo":true,"logprobs":1,"max_tokens":0})", c.ctx);
  ChoiceTracker t(r, c.tok, 0);
  EngineEvent pl;
  pl.kind = EngineEvent::Kind::PromptLogprobs;
  pl.prompt.resize(2);
  pl.prompt[0].logprob = -1.0f;
  pl.prompt[0].top = {{11, -0.2f}};
  pl.prompt[1].logprob = -2.0f;
  pl.prompt[1].top = {{31, -0.3f}};
  ChoiceDelta d = t.on_event(pl);
  EXPECT_EQ(d.text, c.tok.decode({10, 20, 30}));
  t.on_event(finished_event(FinishReason::Length, 3, 0));
  json lp = completion_logprobs_json(t.tokens());
  ASSERT_EQ(lp["tokens"].size(), 3u);
  EXPECT_TRUE(lp["token_logprobs"][0].is_null());
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_FLOAT_EQ(lp["token_logprobs"][1].get<float>(), -1.0f);
  EXPECT_FLOAT_EQ(lp["token_logprobs"][2].get<float>(), -2.0f);
  EXPECT_EQ(lp["text_offset"][0], 0);
  EXPECT_EQ(lp["text_offset"][1], static_cast<int64_t>(c.tok.token_bytes(10).size()));
  EXPECT_EQ(lp["top_logprobs"][2][c.tok.token_bytes(31)].get<float>(), -0.3f);
  EXPECT_EQ(t.text(), c.tok.decode({10, 20, 30}));
  std::vector<ChoiceResult> choices{{t.text(), t.tokens(), t.finish_reason()}};
  json resp = completion_response(r, "cmpl-1", 5, choices, Usage{3, 0});
  EXPECT_EQ(resp["object"], "text_completion");
  EXPECT_EQ(resp["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(resp["usage"]["total_tokens"], 3);
}

TEST(ServerApi, ChatFormatting) {
  Ctx c;
  auto r = parse_chat_request(R"({"model":"demo:p4","messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":1,
                                  "parscale_stream_weights":true,"stream":true,"stream_options":{"include_usage":true}})",
                              c.ctx);
  ChoiceTracker t(r, c.tok, 0);
  int32_t id = c.tok.encode("hello")[0];
  ChoiceDelta d = t.on_event(token_event(id, -0.25f, {{id, -0.25f}}, {0.1f, 0.2f, 0.3f, 0.4f}));
  json first = stream_chunk(r, "chatcmpl-1", 9, 0, {}, true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  EXPECT_TRUE(first.contains("usage") && first["usage"].is_null());
  json ch = stream_chunk(r, "chatcmpl-1", 9, 0, d, false);
  EXPECT_FALSE(ch["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(ch["choices"][0]["delta"]["content"], d.text);
  EXPECT_EQ(ch["choices"][0]["logprobs"]["content"][0]["logprob"].get<float>(), -0.25f);
  EXPECT_EQ(ch["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 1u);
  EXPECT_TRUE(ch["choices"][0]["logprobs"]["content"][0]["bytes"].is_array());
  ASSERT_TRUE(ch["choices"][0].contains("parscale"));
  EXPECT_EQ(ch["choices"][0]["parscale"]["stream_weights"][0].size(), 4u);
  EXPECT_EQ(ch["choices"][0]["parscale"]["tokens"][0], c.tok.token_bytes(id));
  // Floats print as their shortest decimal, not as the binary expansion of the float.
  EXPECT_NE(dump_json(ch).find("[0.1,0.2,0.3,0.4]"), std::string::npos) << dump_json(ch);
  EXPECT_NE(dump_json(ch).find("\"logprob\":-0.25"), std::string::npos);
  json u = usage_chunk(r, "chatcmpl-1", 9, Usage{4, 1});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["completion_tokens"], 1);
  std::string sse = sse_event(u);
  EXPECT_EQ(sse.rfind("data: {", 0), 0u);
  EXPECT_EQ(sse.substr(sse.size() - 2), "\n\n");
  json whole = chat_response(r, "chatcmpl-1", 9, {{"hey", t.tokens(), "stop"}}, Usage{4, 1});
  EXPECT_EQ(whole["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(whole["choices"][0]["message"]["content"], "hey");
  // Pieces that split a UTF-8 character still make valid JSON.
  json bad_utf8 = {{"s", std::string("\xe4\xb8")}};
  EXPECT_NO_THROW(json::parse(dump_json(bad_utf8)));
}

TEST(ServerRoutes, RoutingAndApiKey) {
  RouterOptions o;
  o.asset_paths = {"/index.html", "/app.js"};
  auto route = [&](const char* method, const char* path, const std::string* auth = nullptr) {
    return route_request(o, method, path, auth);
  };
  auto fails = [&](const char* method, const std::string& path, const std::string* auth, int status, const std::string& code) {
    SCOPED_TRACE(std::string(method) + " " + path);
    try {
      route_request(o, method, path, auth);
      ADD_FAILURE() << "routed";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status, status) << e.message;
      EXPECT_EQ(e.code, code);
      const json body = json::parse(error_body(e));
      EXPECT_TRUE(body["error"]["message"].is_string());
    }
  };
  EXPECT_EQ(route("GET", "/health").endpoint, Endpoint::Health);
  EXPECT_EQ(route("HEAD", "/health").endpoint, Endpoint::Health);
  EXPECT_EQ(route("GET", "/v1/models").endpoint, Endpoint::ListModels);
  Route m = route("GET", "/v1/models/demo:p2");
  EXPECT_EQ(m.endpoint, Endpoint::GetModel);
  EXPECT_EQ(m.target, "demo:p2");
  EXPECT_EQ(route("GET", "/metrics").endpoint, Endpoint::Metrics);
  EXPECT_EQ(route("GET", "/").target, "/index.html");
  EXPECT_EQ(route("GET", "/app.js").endpoint, Endpoint::Asset);
  EXPECT_EQ(route("POST", "/v1/completions").endpoint, Endpoint::Completions);
  EXPECT_EQ(route("POST", "/v1/chat/completions").endpoint, Endpoint::ChatCompletions);
  EXPECT_EQ(route("OPTIONS", "/anything").endpoint, Endpoint::Preflight);
  fails("GET", "/nope", nullptr, 404, "not_found");
  fails("GET", "/v1/models/", nullptr, 404, "not_found");
  fails("GET", "/style.css", nullptr, 404, "not_found");  // not an asset of these options
  fails("GET", std::string("/v1/completions\0x", 17), nullptr, 404, "not_found");
  fails("POST", "/health", nullptr, 405, "method_not_allowed");
  fails("GET", "/v1/completions", nullptr, 405, "method_not_allowed");
  fails("HEAD", "/v1/chat/completions", nullptr, 405, "method_not_allowed");
  fails("DELETE", "/v1/models", nullptr, 405, "method_not_allowed");
  EXPECT_EQ(allowed_methods(o, "/v1/completions"), "POST");
  EXPECT_EQ(allowed_methods(o, "/metrics"), "GET, HEAD");
  EXPECT_EQ(allowed_methods(o, "/nope"), "");

  o.api_key = "sk-abc";
  for (const char* ok : {"Bearer sk-abc", "bearer sk-abc", "BEARER \t sk-abc ", "  Bearer sk-abc\t"}) {
    const std::string h = ok;
    EXPECT_TRUE(api_key_accepted(o.api_key, &h)) << ok;
    EXPECT_EQ(route("GET", "/v1/models", &h).endpoint, Endpoint::ListModels) << ok;
  }
  for (const std::string& bad : {std::string("Bearer sk-ab"), std::string("Bearer sk-abcd"), std::string("Bearer SK-ABC"),
                                 std::string("Basic sk-abc"), std::string("Bearersk-abc"), std::string("sk-abc"),
                                 std::string("Bearer sk-abc\0", 14), std::string("Bearer sk-\0bc", 13), std::string("Bearer"),
                                 std::string(""), "Bearer " + std::string(100000, 'k'), std::string("Bearer sk abc")}) {
    EXPECT_FALSE(api_key_accepted(o.api_key, &bad)) << bad.size();
    fails("GET", "/v1/models", &bad, 401, "invalid_api_key");
    fails("POST", "/v1/completions", &bad, 401, "invalid_api_key");
    fails("GET", "/nope", &bad, 401, "invalid_api_key");  // the key first: no path is disclosed
  }
  fails("GET", "/metrics", nullptr, 401, "invalid_api_key");
  EXPECT_FALSE(api_key_accepted(o.api_key, nullptr));
  EXPECT_TRUE(api_key_accepted("", nullptr));
  // Open without the key: health, the chat page, preflights; not with another method.
  EXPECT_EQ(route("GET", "/health").endpoint, Endpoint::Health);
  EXPECT_EQ(route("GET", "/").endpoint, Endpoint::Asset);
  EXPECT_EQ(route("OPTIONS", "/v1/completions").endpoint, Endpoint::Preflight);
  fails("POST", "/health", nullptr, 401, "invalid_api_key");

  // Body limit and dispatch of the generation routes.
  Ctx c;
  o.max_body_bytes = 20;
  const std::string chat = R"({"messages":[{"role":"user","content":"x"}]})";
  expect_error([&] { parse_generation(o, Endpoint::ChatCompletions, chat, c.ctx); }, 413, "");
  expect_error([&] { parse_generation(o, Endpoint::Completions, std::string(21, ' ') + "{", c.ctx); }, 413, "");
  expect_error([&] { parse_generation(o, Endpoint::Completions, "{", c.ctx); }, 400, "", "invalid JSON");
  o.max_body_bytes = chat.size();
  EXPECT_TRUE(parse_generation(o, Endpoint::ChatCompletions, chat, c.ctx).chat);
  EXPECT_FALSE(parse_generation(o, Endpoint::Completions, R"({"prompt":"x"})", c.ctx).chat);
  expect_error([&] { parse_generation(o, Endpoint::Health, "{}", c.ctx); }, 404, "");
  // The bodies of cpp-httplib's own failures.
  for (int status : {400, 404, 413, 414}) {
    const ApiError e = http_failure(status, "GET", std::string(5000, 'p'), 1000);
    EXPECT_EQ(e.status, status);
    EXPECT_LT(e.message.size(), 400u);
    EXPECT_TRUE(json::parse(error_body(e))["error"]["message"].is_string());
  }
  EXPECT_NE(http_failure(413, "POST", "/v1/completions", 1000).message.find("1000 bytes"), std::string::npos);
}

TEST(ServerApi, MetricsText) {
  EngineStats s;
  s.running = 1;
  s.kv_pages_used = 3;
  s.kv_pages_total = 100;
  s.step_seconds.bounds = {0.01, 0.1};
  s.step_seconds.observe(0.005);
  s.step_seconds.observe(0.05);
  s.step_seconds.observe(5);
  s.per_streams[1].running = 1;
  s.per_streams[1].generation_tokens_total = 42;
  s.per_streams[4].waiting = 2;
  s.per_streams[4].time_to_first_token.bounds = {0.5};
  s.per_streams[4].time_to_first_token.observe(0.1);
  HttpCounters h;
  h.responses_by_status[200] = 7;
  std::string m = render_metrics(s, h);
  for (const char* want :
       {"parscale_requests_running{streams=\"1\"} 1\n", "parscale_requests_waiting{streams=\"4\"} 2\n",
        "parscale_generation_tokens_total{streams=\"1\"} 42\n", "parscale_kv_pages_used 3\n", "parscale_kv_pages_total 100\n",
        "parscale_step_seconds_bucket{le=\"0.01\"} 1\n", "parscale_step_seconds_bucket{le=\"0.1\"} 2\n",
        "parscale_step_seconds_bucket{le=\"+Inf\"} 3\n", "parscale_step_seconds_count 3\n",
        "parscale_time_to_first_token_seconds_bucket{streams=\"4\",le=\"0.5\"} 1\n", "# TYPE parscale_prompt_tokens_total counter\n",
        "parscale_http_responses_total{code=\"200\"} 7\n"})
  {
    EXPECT_NE(m.find(want), std::string::npos) << want << "\n" << m;
  }
}

// ---------------------------------------------------------------------------------------------
// The HTTP layer with a scripted engine: each request produces the tokens of kScript (cycled)
// on its own thread, one every millisecond, until max_tokens or cancel.
namespace {

const char* kScript = "The quick brown fox jumps over the lazy dog. ";

class ScriptedBackend final : public Backend {
 public:
  explicit ScriptedBackend(const Tokenizer& tok, int64_t max_active = 1000)
      : script_(tok.encode(kScript)), models_(three_models()), max_active_(max_active) {}
  ~ScriptedBackend() override {
    for (auto& t : threads_) t.join();
  }
  const std::vector<EngineModel>& models() const override { return models_; }
  std::shared_ptr<RequestHandle> submit(EngineRequest r) override {
    if (active_ >= max_active_) throw EngineError(EngineError::Kind::QueueFull, "queue full");
    auto h = std::make_shared<RequestHandle>(next_id_++);
    ++active_;
    ++submitted_;
    std::lock_guard<std::mutex> lock(mu_);
    threads_.emplace_back([this, h, r] {
      int64_t n = 0;
      const int64_t P = models_[r.model].streams;
      if (r.prompt_logprobs) {
        EngineEvent pl;
        pl.kind = EngineEvent::Kind::PromptLogprobs;
        pl.prompt.resize(r.prompt.size() - 1, {-1.0f, {}});
        h->push(pl);
      }
      while (n < r.max_tokens && !h->cancelled()) {
        EngineEvent e = token_event(script_[n % script_.size()], -0.5f, {}, r.stream_weights ? std::vector<float>(P, 1.0f / P) : std::vector<float>{});
        h->push(e);
        ++n;
        std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      }
      h->push(finished_event(h->cancelled() ? FinishReason::Cancelled : FinishReason::Length, r.prompt.size(), n));
      if (h->cancelled()) ++cancelled_;
      --active_;
    });
    return h;
  }
  EngineStats stats() const override {
    EngineStats s;
    s.running = active_;
    s.per_streams[1].running = active_;
    return s;
  }
  std::vector<int32_t> script_;
  std::vector<EngineModel> models_;
  int64_t max_active_;
  std::atomic<int> delay_ms{1};
  std::atomic<int64_t> active_{0}, submitted_{0}, cancelled_{0};
  std::atomic<uint64_t> next_id_{1};
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

struct Running {
  Tokenizer tok = demo_tokenizer();
  ScriptedBackend backend;
  std::unique_ptr<Server> server;
  std::thread thread;
  int port = 0;
  explicit Running(ServerOptions o = {}, int64_t max_active = 1000) : backend(tok, max_active) {
    o.model_name = "demo";
    o.port = 0;
    o.vocab_size = 4096;
    o.max_context = 1024;
    o.eos_ids = {4093, 4095};
    server = std::make_unique<Server>(backend, tok, o);
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  ~Running() {
    server->stop();
    thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
};

// The events of an SSE body: the JSON of every "data:" line, "[DONE]" as a string.
std::vector<json> sse_data(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event: " << body.substr(pos);
    if (end == std::string::npos) break;
    std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind(":", 0) == 0) continue;  // comment (keep-alive)
    EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    std::string data = ev.substr(6);
    out.push_back(data == "[DONE]" ? json("[DONE]") : json::parse(data));
  }
  return out;
}

// Sends `request` over a fresh TCP connection, returns the first bytes that come back, closes.
std::string raw_http(int port, const std::string& request) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string got;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
    char buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) got.assign(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return got;
}

template <class F>
bool eventually(F f) {  // polls a condition for up to 30 s (no timing is asserted)
  for (int i = 0; i < 3000; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

TEST(ServerHttp, RoutesAndErrors) {
  Running srv;
  auto c = srv.client();
  auto r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["status"], "ok");
  r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["data"].size(), 3u);
  r = c.Get("/v1/models/demo:p2");
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["id"], "demo:p2");
  r = c.Get("/nope");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "not_found");
  r = c.Post("/v1/completions", "{bad", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "invalid_request_error");
  r = c.Post("/v1/completions", R"({"prompt":"x","model":"gpt-4"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "model_not_found");
  r = c.Get("/");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_NE(r->body.find("<title>parscale chat</title>"), std::string::npos);
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/html; charset=utf-8");
  r = c.Get("/app.js");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("/v1/chat/completions"), std::string::npos);
  r = c.Get("/metrics");
  ASSERT_TRUE(r);
  EXPECT_NE(r->body.find("parscale_kv_pages_used"), std::string::npos);
  EXPECT_NE(r->body.find("parscale_http_responses_total{code=\"404\"}"), std::string::npos);
}

TEST(ServerHttp, CompletionWholeAndStreamed) {
  Running srv;
  auto c = srv.client();
  auto r = c.Post("/v1/completions", R"({"prompt":[1,2],"max_tokens":30,"n":2,"stop":"fox","logprobs":0})", "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  json j = json::parse(r->body);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], "The quick brown ");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 2);
  EXPECT_TRUE(j["choices"][0]["logprobs"]["tokens"].is_array());

  r = c.Post("/v1/chat/completions",
             R"({"model":"demo:p4","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true,
                 "stream_options":{"include_usage":true},"parscale_stream_weights":true})",
             "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/event-stream");
  std::vector<json> ev = sse_data(r->body);
  ASSERT_GE(ev.size(), 4u);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  int weights = 0;
  std::string finish;
  for (size_t i = 0; i + 2 < ev.size(); ++i) {
    const json& ch = ev[i]["choices"][0];
    if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
    if (ch.contains("parscale")) weights += static_cast<int>(ch["parscale"]["stream_weights"].size());
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  const auto& script = srv.backend.script_;
  EXPECT_EQ(text, srv.tok.decode(std::vector<int32_t>(script.begin(), script.begin() + 5)));
  EXPECT_EQ(weights, 5);
  EXPECT_EQ(finish, "length");
  const json& usage = ev[ev.size() - 2];
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 5);
}

TEST(ServerHttp, ApiKeyCorsAndBodyLimit) {
  ServerOptions o;
  o.api_key = "sekret";
  o.cors_origin = "https://example.org";
  o.max_body_bytes = 1000;
  Running srv(o);
  auto c = srv.client();
  auto r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);  // open without the key
  EXPECT_EQ(r->get_header_value("Access-Control-Allow-Origin"), "https://example.org");
  r = c.Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "invalid_api_key");
  httplib::Headers wrong = {{"Authorization", "Bearer nope"}}, right = {{"Authorization", "Bearer sekret"}};
  r = c.Get("/v1/models", wrong);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c.Get("/v1/models", right);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Post("/v1/completions", wrong, R"({"prompt":"x"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c.Get("/v1/models", {{"Authorization", "bearer   sekret"}});  // the scheme in any case
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  r = c.Post("/health", right, "{}", "application/json");  // a wrong method: 405 and Allow
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "GET, HEAD");
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "method_not_allowed");
  r = c.Get("/v1/chat/completions", right);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  r = c.Options("/v1/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 204);
  EXPECT_NE(r->get_header_value("Access-Control-Allow-Headers").find("Authorization"), std::string::npos);
  r = c.Post("/v1/completions", right, "{\"prompt\":\"" + std::string(5000, 'a') + "\"}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "payload_too_large");
  r = c.Post("/v1/completions", right, R"({"prompt":"x","max_tokens":2})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(ServerHttp, QueueFullIs429WithRetryAfter) {
  Running srv({}, /*max_active=*/0);
  auto c = srv.client();
  auto r = c.Post("/v1/completions", R"({"prompt":"x"})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "queue_full");
}

TEST(ServerHttp, DisconnectCancelsTheRequest) {
  Running srv;
  srv.backend.delay_ms = 20;  // 1000 tokens take 20 s: the disconnect comes long before the end
  for (bool stream : {true, false}) {
    SCOPED_TRACE(stream ? "streaming" : "whole");
    const int64_t cancelled_before = srv.backend.cancelled_;
    std::string body = std::string(R"({"prompt":"x","max_tokens":1000,"ignore_eos":true,"stream":)") +
                       (stream ? "true" : "false") + "}";
    // Sends the request, reads the first bytes of the answer (the status line, and for a stream
    // the first events), then closes the connection.
    std::string head = raw_http(srv.port, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                          "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
    EXPECT_TRUE(eventually([&] { return srv.backend.cancelled_ > cancelled_before; }));
  }
  EXPECT_TRUE(eventually([&] { return srv.backend.active_ == 0; }));
  auto c = srv.client();
  auto r = c.Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(ServerHttp, DrainRefusesNewRequestsAndLetsRunningOnesFinish) {
  Running srv;
  srv.backend.delay_ms = 5;
  std::string body;
  std::thread client([&] {
    auto c = srv.client();
    auto r = c.Post("/v1/completions", R"({"prompt":"x","max_tokens":100,"ignore_eos":true,"stream":true})", "application/json");
    if (r) body = r->body;
  });
  ASSERT_TRUE(eventually([&] { return srv.backend.active_ > 0; }));
  srv.server->begin_drain();
  auto c = srv.client();
  auto r = c.Post("/v1/completions", R"({"prompt":"x","max_tokens":1})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "shutting_down");
  EXPECT_TRUE(eventually([&] { return srv.server->wait_idle(std::chrono::milliseconds(10)); }));
  client.join();
  std::vector<json> ev = sse_data(body);
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev.back(), "[DONE]");
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");  // finished, not cut
}
