// End-to-end training through the CLI: resume after a stop and after SIGKILL gives the identical
// loss curve; 2 MPI ranks give the same losses and adapter as 1 process with the same global batch;
// init / adapter / export / perplexity round trips.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "engine/session.h"
#include "io/safetensors.h"
#include "kernels/kernels.h"
#include "model/weights.h"
#include "train/data.h"
#include "train/model_io.h"
#include "train/train_model.h"

using namespace parscale;
namespace fs = std::filesystem;

namespace {

const std::string kBin = PARSCALE_BINARY;
const std::string kFixtures = std::string(PARSCALE_SOURCE_DIR) + "/tests/fixtures/";

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("parscale_train_test_" + std::to_string(getpid()) + "_" + std::to_string(counter()++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs a shell command, returns its exit code; stdout into *out when given.
int run(const std::string& cmd, std::string* out = nullptr) {
  FILE* f = popen((cmd + (out ? " 2>/dev/null" : " >/dev/null 2>&1")).c_str(), "r");
  if (!f) return -1;
  char buf[4096];
  std::string s;
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const int rc = pclose(f);
  if (out) *out = s;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string make_tokens(const TempDir& d, int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  // A learnable stream: mostly (prev + 1) mod vocab, sometimes random.
  int32_t prev = 0;
  for (auto& x : t) {
    x = rng() % 4 == 0 ? static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)) : static_cast<int32_t>((prev + 1) % vocab);
    prev = x;
  }
  const std::string path = d / "data.bin";
  train::write_token_file(path, t, static_cast<uint64_t>(vocab));
  return path;
}

std::vector<std::string> step_lines(const std::string& log) {
  std::vector<std::string> v;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) v.push_back(line);
  return v;
}

const std::string kP2 = kFixtures + "train/train_p2_t3_untied_f32";

std::string train_cmd(const std::string& model, const std::string& data, const std::string& out, const std::string& extra) {
  return kBin + " train --model " + model + " --data " + data + " --out " + out +
         " --steps 8 --seq-len 8 --batch 4 --micro-batch 2 --lr 0.01 --warmup 2 --eval-every 4 --eval-sequences 4 "
         "--no-progress --threads 1 " + extra;
}

TEST(TrainCli, ResumeAfterStopGivesIdenticalLossCurve) {
  TempDir d;
  const std::string data = make_tokens(d, 600, 64, 1);
  ASSERT_EQ(run(train_cmd(kP2, data, d / "full", "")), 0);
  ASSERT_EQ(run(train_cmd(kP2, data, d / "split", "--checkpoint-every 3 --max-steps 5")), 0);
  EXPECT_EQ(step_lines(slurp(d / "split/train_log.jsonl")).size(), 6u);  // 5 steps + eval at 4
  ASSERT_EQ(run(train_cmd(kP2, data, d / "split", "--checkpoint-every 3 --resume")), 0);
  const std::string a = slurp(d / "full/train_log.jsonl"), b = slurp(d / "split/train_log.jsonl");
  EXPECT_EQ(step_lines(a).size(), 10u);  // 8 steps + 2 evals
  EXPECT_EQ(a, b);
  EXPECT_EQ(slurp(d / "full/adapter.safetensors"), slurp(d / "split/adapter.safetensors"));
  // The losses went down (the data is learnable).
  auto first = nlohmann::json::parse(step_lines(a).front()), last = nlohmann::json::parse(step_lines(a)[8]);
  EXPECT_LT(last["loss"].get<double>(), first["loss"].get<double>());
}

TEST(TrainCli, ResumeAfterKillGivesIdenticalLossCurve) {
  TempDir d;
  const std::string data = make_tokens(d, 600, 64, 2);
  const std::string common = " --steps 400 --seq-len 8 --batch 4 --lr 0.003 --checkpoint-every 7 --no-progress --threads 1";
  const std::string base = kBin + " train --model " + kFixtures + "train/train_p1_tied_f32 --data " + data + common;
  ASSERT_EQ(run(base + " --out " + (d / "full")), 0);
  // Start, kill -9 once a few steps are logged, resume.
  const pid_t pid = fork();
  if (pid == 0) {
    // exec: the shell becomes the trainer, so `pid` is the trainer's own process id.
    execl("/bin/sh", "sh", "-c", ("exec " + base + " --out " + (d / "killed") + " >/dev/null 2>&1").c_str(), nullptr);
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (step_lines(slurp(d / "killed/train_log.jsonl")).size() >= 12) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  const size_t logged = step_lines(slurp(d / "killed/train_log.jsonl")).size();
  EXPECT_TRUE(WIFSIGNALED(status)) << "the run finished before it could be killed";
  EXPECT_LT(logged, 400u);
  ASSERT_TRUE(fs::exists(d / "killed/checkpoint.safetensors"));
  ASSERT_EQ(run(base + " --out " + (d / "killed") + " --resume"), 0);
  EXPECT_EQ(slurp(d / "full/train_log.jsonl"), slurp(d / "killed/train_log.jsonl")) << "killed after " << logged << " log lines";
  EXPECT_EQ(slurp(d / "full/model.safetensors"), slurp(d / "killed/model.safetensors"));
}

#ifdef PARSCALE_MPIEXEC
TEST(TrainCli, TwoMpiRanksEqualOneProcess) {
  TempDir d;
  const std::string data = make_tokens(d, 600, 64, 3);
  ASSERT_EQ(run(train_cmd(kP2, data, d / "single", "")), 0);
  const std::string mpi = std::string(PARSCALE_MPIEXEC) +
                          " --allow-run-as-root --oversubscribe -np 2 --mca btl self,vader "
                          "--mca btl_vader_single_copy_mechanism none --mca plm_rsh_agent false ";
  std::string out;
  // OpenMPI's dlopen'ed components keep allocations LeakSanitizer reports from unloaded modules
  // (no symbols, so no suppression can name them): leak checking is off for the MPI run alone.
  const int rc = run("OMPI_MCA_rmaps_base_oversubscribe=1 ASAN_OPTIONS=detect_leaks=0 " + mpi +
                         train_cmd(kP2, data, d / "mpi", "--json"),
                     &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"ranks\": 2"), std::string::npos) << out;
  EXPECT_EQ(slurp(d / "single/train_log.jsonl"), slurp(d / "mpi/train_log.jsonl"));
  EXPECT_EQ(slurp(d / "single/adapter.safetensors"), slurp(d / "mpi/adapter.safetensors"));
}

TEST(TrainCli, FailureOnOneMpiRankAbortsTheJob) {
  // Rank 0's checkpoint write fails (its path is a non-empty directory) after step 1, while rank 1
  // goes on into step 2's all-reduce: the job must end with the error instead of hanging there.
  // (`timeout` only bounds a regression's hang; exit status 124 means the ranks stayed blocked.)
  TempDir d;
  const std::string data = make_tokens(d, 600, 64, 4);
  fs::create_directories(d / "fail/checkpoint.safetensors/occupied");
  const std::string mpi = std::string(PARSCALE_MPIEXEC) +
                          " --allow-run-as-root --oversubscribe -np 2 --mca btl self,vader "
                          "--mca btl_vader_single_copy_mechanism none --mca plm_rsh_agent false ";
  std::string out;
  const int rc = run("( OMPI_MCA_rmaps_base_oversubscribe=1 ASAN_OPTIONS=detect_leaks=0 timeout -k 10 120 " + mpi +
                         train_cmd(kP2, data, d / "fail", "--checkpoint-every 1") + " 2>&1 )",
                     &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "ranks left blocked: " << out;
  EXPECT_NE(out.find("error on rank 0 of 2"), std::string::npos) << out;
  EXPECT_NE(out.find("checkpoint.safetensors"), std::string::npos) << out;
}
#endif

std::vector<float> session_logits(const ModelWeights& w, const std::vector<int32_t>& ids) {
  Session s(w, 1, static_cast<int64_t>(ids.size()));
  std::vector<float> logits;
  s.forward({ids}, Session::Outputs::AllPositions, logits);
  return logits;
}

TEST(TrainCli, InitFromBackboneHasUniformStreamsAndBackbonePrefixes) {
  TempDir d;
  const std::string backbone = kFixtures + "train/train_p1_tied_f32";
  ASSERT_EQ(run(kBin + " init --model " + backbone + " --streams 3 --prefix-tokens 2 --seed 7 --out " + (d / "p3") +
                " --adapter-out " + (d / "p3.safetensors")), 0);
  ModelWeights w = load_model(d / "p3");
  ASSERT_EQ(w.config.parscale_n, 3);
  ASSERT_EQ(w.config.parscale_n_tokens, 2);
  // Step 0: every stream weight is 1/P and nothing is NaN.
  Session s(w, 1, 6);
  std::vector<float> logits;
  s.forward({{5, 9, 3, 17, 2, 40}}, Session::Outputs::AllPositions, logits);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  for (float sw : s.stream_weights()) EXPECT_NEAR(sw, 1.0f / 3.0f, 1e-6);
  // Layer-0 prefix slots are the backbone's pre-RoPE K/V of some vocabulary token (checked with the
  // scalar reference kernels), and the streams differ.
  ModelWeights bb = load_model(backbone);
  const ModelConfig& c = bb.config;
  const int64_t H = c.hidden_size, KD = c.kv_dim(), D = c.head_dim, KVH = c.num_key_value_heads, T = 2;
  std::vector<std::vector<float>> kref(static_cast<size_t>(c.vocab_size)), vref(static_cast<size_t>(c.vocab_size));
  for (int64_t id = 0; id < c.vocab_size; ++id) {
    std::vector<float> x(H), xn(H);
    kernels::weight_row_f32(bb.bb().embed_tokens, id, x.data());
    kernels::rmsnorm_ref(x.data(), bb.bb().layers[0].input_norm, xn.data(), 1, H, static_cast<float>(c.rms_norm_eps));
    kref[id].resize(KD);
    vref[id].resize(KD);
    kernels::matmul_ref(xn.data(), 1, bb.bb().layers[0].k_proj, bb.bb().layers[0].k_bias, kref[id].data());
    kernels::matmul_ref(xn.data(), 1, bb.bb().layers[0].v_proj, bb.bb().layers[0].v_bias, vref[id].data());
  }
  const float* pk = w.adapter->prefix_k[0];
  const float* pv = w.adapter->prefix_v[0];
  for (int64_t st = 0; st < 3; ++st)
    for (int64_t t = 0; t < T; ++t) {
      bool found = false;
      for (int64_t id = 0; id < c.vocab_size && !found; ++id) {
        bool same = true;
        for (int64_t h = 0; h < KVH && same; ++h)
          for (int64_t e = 0; e < D && same; ++e) {
            const int64_t off = ((st * KVH + h) * T + t) * D + e;
            same = std::abs(pk[off] - kref[id][h * D + e]) < 1e-5f && std::abs(pv[off] - vref[id][h * D + e]) < 1e-5f;
          }
        found = same;
      }
      EXPECT_TRUE(found) << "stream " << st << " slot " << t << " is not a backbone K/V of any token";
    }
  bool differ = false;
  for (int64_t e = 0; e < KVH * T * D; ++e) differ = differ || pk[e] != pk[KVH * T * D + e];
  EXPECT_TRUE(differ);
  // The adapter on the backbone is the same model as the full folder.
  LoadOptions lo;
  lo.adapter_files = {d / "p3.safetensors"};
  ModelWeights wa = load_model(backbone, lo);
  EXPECT_EQ(session_logits(w, {4, 8, 15, 16, 23}), session_logits(wa, {4, 8, 15, 16, 23}));
}

TEST(TrainCli, InitFromConfigFollowsTheDocumentedDistribution) {
  TempDir d;
  {
    std::ofstream cfg(d / "config.json");
    cfg << R"({"model_type": "qwen2_parscale", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "max_position_embeddings": 256, "tie_word_embeddings": false, "parscale_n": 2,
               "parscale_n_tokens": 4, "parscale_attn_smooth": 0.01})";
  }
  ASSERT_EQ(run(kBin + " init --config " + (d / "config.json") + " --seed 3 --out " + (d / "m")), 0);
  ParameterSet p = train::load_parameters(d / "m");
  for (size_t i = 0; i < p.specs.size(); ++i) {
    const auto& s = p.specs[i];
    const auto& v = p.values[i];
    double sum = 0, sq = 0;
    for (float x : v) {
      ASSERT_TRUE(std::isfinite(x)) << s.name;
      sum += x;
      sq += static_cast<double>(x) * x;
    }
    const double mean = sum / v.size(), sd = std::sqrt(sq / v.size() - mean * mean);
    if (s.kind == ParamKind::Matrix || s.kind == ParamKind::Embedding) {
      EXPECT_NEAR(sd, 0.02, 0.003) << s.name;
      EXPECT_NEAR(mean, 0.0, 0.003) << s.name;
    } else if (s.kind == ParamKind::Norm) {
      EXPECT_EQ(sd, 0.0) << s.name;
      EXPECT_EQ(mean, 1.0) << s.name;
    } else if (s.kind == ParamKind::Bias || s.kind == ParamKind::AggregateBias || s.name == "model.aggregate_layer.2.weight") {
      EXPECT_EQ(sq, 0.0) << s.name;
    } else if (s.kind == ParamKind::Prefix) {
      EXPECT_GT(sd, 0.0) << s.name;
    }
  }
  // Same seed, same model; another seed, another model.
  ASSERT_EQ(run(kBin + " init --config " + (d / "config.json") + " --seed 3 --out " + (d / "m2")), 0);
  ASSERT_EQ(run(kBin + " init --config " + (d / "config.json") + " --seed 4 --out " + (d / "m3")), 0);
  EXPECT_EQ(slurp(d / "m/model.safetensors"), slurp(d / "m2/model.safetensors"));
  EXPECT_NE(slurp(d / "m/model.safetensors"), slurp(d / "m3/model.safetensors"));
}

TEST(TrainCli, AdapterTrainingExportAndPerplexity) {
  TempDir d;
  const std::string backbone = kFixtures + "train/train_p1_tied_f32";
  const std::string data = make_tokens(d, 400, 64, 4);
  // Frozen-backbone P = 2 training straight from the P = 1 backbone.
  ASSERT_EQ(run(kBin + " train --model " + backbone + " --streams 2 --prefix-tokens 3 --data " + data + " --out " +
                (d / "run") + " --steps 4 --seq-len 8 --batch 2 --no-progress --threads 1"), 0);
  const std::string adapter = d / "run/adapter.safetensors";
  ASSERT_TRUE(fs::exists(adapter));
  EXPECT_FALSE(fs::exists(d / "run/model.safetensors"));  // the backbone was not saved again
  // Backbone unchanged, so backbone + adapter == exported full model (F32), bitwise.
  ASSERT_EQ(run(kBin + " export --model " + backbone + " --adapter " + adapter + " --out " + (d / "exp")), 0);
  auto cfg = nlohmann::json::parse(slurp(d / "exp/config.json"));
  EXPECT_EQ(cfg["model_type"], "qwen2_parscale");
  EXPECT_EQ(cfg["parscale_n"], 2);
  EXPECT_EQ(cfg["parscale_n_tokens"], 3);
  LoadOptions lo;
  lo.adapter_files = {adapter};
  ModelWeights wa = load_model(backbone, lo);
  ModelWeights we = load_model(d / "exp");
  EXPECT_TRUE(we.unknown_tensors.empty());
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  EXPECT_EQ(session_logits(wa, ids), session_logits(we, ids));
  // BF16 export loads and stays close.
  ASSERT_EQ(run(kBin + " export --model " + backbone + " --adapter " + adapter + " --dtype bf16 --out " + (d / "bf")), 0);
  ModelWeights wb = load_model(d / "bf");
  auto la = session_logits(wa, ids), lb = session_logits(wb, ids);
  for (size_t i = 0; i < la.size(); ++i) EXPECT_NEAR(la[i], lb[i], 0.05);
  // logits CLI with --adapter works on the backbone.
  std::string out;
  ASSERT_EQ(run(kBin + " logits --model " + backbone + " --adapter " + adapter + " --ids 3,1,4 --json", &out), 0);
  EXPECT_NE(out.find("\"logits\""), std::string::npos);
  // Perplexity CLI equals the mean cross-entropy computed here.
  ASSERT_EQ(run(kBin + " perplexity --model " + backbone + " --adapter " + adapter + " --tokens " + data +
                " --seq-len 16 --batch 3 --json", &out), 0);
  auto j = nlohmann::json::parse(out);
  ParameterSet p = parameters_from_weights(wa);
  train::TrainModel m(p);
  auto toks = train::read_token_file(data).tokens;
  double sum = 0;
  int64_t n = 0;
  for (size_t s = 0; s + 1 < toks.size(); s += 15) {
    const int64_t len = std::min<int64_t>(16, static_cast<int64_t>(toks.size() - s));
    sum += m.forward_backward(toks.data() + s, 1, len, 1.0f, nullptr);
    n += len - 1;
  }
  EXPECT_EQ(j["tokens"].get<int64_t>(), static_cast<int64_t>(toks.size()) - 1);
  EXPECT_EQ(n, static_cast<int64_t>(toks.size()) - 1);
  EXPECT_NEAR(j["loss"].get<double>(), sum / n, 1e-6);
  EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(sum / n), 1e-5);
}

TEST(TrainCli, Qwen3PrefixReparamResumesAndFoldsIntoThePrefixes) {
  // A Qwen3 backbone, P = 2 streams trained through the prefix reparameterization: the run resumes
  // bitwise (the reparameterization tensors and moments are in the checkpoint), the adapter holds
  // plain prefixes that differ from the initial ones, and backbone + adapter == export.
  TempDir d;
  const std::string backbone = kFixtures + "train/train_qwen3_p1_untied_f32";
  const std::string data = make_tokens(d, 600, 64, 5);
  const std::string base = " --streams 2 --prefix-tokens 3 --prefix-reparam 4 --seed 3";
  ASSERT_EQ(run(train_cmd(backbone, data, d / "full", base)), 0);
  ASSERT_EQ(run(train_cmd(backbone, data, d / "split", base + " --max-steps 5")), 0);
  ASSERT_EQ(run(train_cmd(backbone, data, d / "split", base + " --resume")), 0);
  EXPECT_EQ(slurp(d / "full/train_log.jsonl"), slurp(d / "split/train_log.jsonl"));
  EXPECT_EQ(slurp(d / "full/adapter.safetensors"), slurp(d / "split/adapter.safetensors"));
  auto ckpt = TensorStore::open_files({d / "full/checkpoint.safetensors"});
  EXPECT_NE(ckpt->find("adam_v/reparam.layers.1.mlp.2.weight"), nullptr);
  EXPECT_EQ(ckpt->find("param/model.layers.0.self_attn.prefix_k"), nullptr);  // set by the MLP, not trained directly
  EXPECT_EQ(ckpt->metadata().at("prefix_reparam"), "4");
  // Resuming with another dimension (0: direct prefix training) is refused (the run identity differs).
  EXPECT_NE(run("(" + train_cmd(backbone, data, d / "split", " --streams 2 --prefix-tokens 3 --prefix-reparam 0 --seed 3 --resume") + " 2>" +
                (d / "err.txt") + ")"), 0);
  EXPECT_NE(slurp(d / "err.txt").find("prefix_reparam = 4, this run has 0"), std::string::npos) << slurp(d / "err.txt");
  // The adapter's prefixes moved away from the initial ones (init's, same seed).
  ASSERT_EQ(run(kBin + " init --model " + backbone + " --streams 2 --prefix-tokens 3 --seed 3 --adapter-out " + (d / "init.safetensors")), 0);
  auto init = TensorStore::open_files({d / "init.safetensors"});
  auto trained = TensorStore::open_files({d / "full/adapter.safetensors"});
  const TensorInfo* a = init->find("model.layers.1.self_attn.prefix_v");
  const TensorInfo* b = trained->find("model.layers.1.self_attn.prefix_v");
  ASSERT_TRUE(a && b);
  ASSERT_EQ(a->nbytes, b->nbytes);
  EXPECT_NE(std::memcmp(a->data, b->data, a->nbytes), 0);
  ASSERT_EQ(run(kBin + " export --model " + backbone + " --adapter " + (d / "full/adapter.safetensors") + " --out " + (d / "exp")), 0);
  EXPECT_EQ(nlohmann::json::parse(slurp(d / "exp/config.json"))["model_type"], "qwen3_parscale");
  LoadOptions lo;
  lo.adapter_files = {d / "full/adapter.safetensors"};
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6};
  EXPECT_EQ(session_logits(load_model(backbone, lo), ids), session_logits(load_model(d / "exp"), ids));
}

TEST(TrainCli, ClearErrors) {
  TempDir d;
  std::string out;
  EXPECT_NE(run(kBin + " train --model " + kFixtures + "train/train_p1_tied_f32 --train parscale --data /nonexistent.bin --out " + (d / "x") + " 2>&1", &out), 0);
  {
    std::ofstream bad(d / "bad.bin");
    bad << "not a token file at all, really not";
  }
  FILE* f = popen((kBin + " train --model " + kFixtures + "train/train_p1_tied_f32 --data " + (d / "bad.bin") + " --out " + (d / "x") + " 2>&1").c_str(), "r");
  char buf[512] = {};
  fread(buf, 1, sizeof buf - 1, f);
  pclose(f);
  EXPECT_NE(std::string(buf).find("PSTOKEN1"), std::string::npos) << buf;
}

TEST(TokenFile, CountThatWrapsAroundIsRefused) {
  // Found by fuzz_token_file: n = 2^63 + 6 made 32 + 4·n wrap to 56, the size of the file, so the
  // size check passed and resizing to n tokens threw std::length_error (uncaught). Now an Error.
  TempDir d;
  std::string bytes = "PSTOKEN1";
  auto put = [&](uint64_t v, int n) {
    for (int i = 0; i < n; ++i) bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  put(1, 4), put(32, 4), put((uint64_t{1} << 63) + 6, 8), put(0, 8);
  for (int i = 0; i < 6; ++i) put(static_cast<uint64_t>(i), 4);
  const std::string path = d / "wrap.bin";
  std::ofstream(path, std::ios::binary) << bytes;
  try {
    train::read_token_file(path);
    ADD_FAILURE() << "accepted a token count of 2^63 + 6 in a 56-byte file";
  } catch (const parscale::Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected 32 + 4"), std::string::npos) << e.what();
  }
}

}  // namespace
