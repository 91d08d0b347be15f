#include "train/trainer.h"

#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#include <pmmintrin.h>
#endif

#include <chrono>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "train/model_io.h"
#include "train/prefix_reparam.h"

namespace parscale::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string checkpoint_path(const std::string& out_dir) { return (fs::path(out_dir) / "checkpoint.safetensors").string(); }

namespace {

constexpr const char* kCheckpointFormat = "parscale-train-checkpoint-1";

std::string fmt(double v) {
  char b[40];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

std::string duration(double s) {
  char b[32];
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) std::snprintf(b, sizeof b, "%ldh%02ldm", static_cast<long>(t / 3600), static_cast<long>(t / 60 % 60));
  else std::snprintf(b, sizeof b, "%ldm%02lds", static_cast<long>(t / 60), static_cast<long>(t % 60));
  return b;
}

// Metadata that must agree between a checkpoint and the run resuming it.
std::map<std::string, std::string> run_identity(const TrainerOptions& o, const ParameterSet& p) {
  return {{"seq_len", std::to_string(o.seq_len)},
          {"batch", std::to_string(o.batch)},
          {"seed", std::to_string(o.seed)},
          {"steps", std::to_string(o.steps)},
          {"mode", o.mode == TrainMode::All ? "all" : "parscale"},
          {"parscale_n", std::to_string(p.config.parscale_n)},
          {"prefix_reparam", std::to_string(o.prefix_reparam_dim)}};
}

// What a checkpoint holds: the trained tensors of one or two parameter sets (the model's, and the
// prefix reparameterization's when used) with their AdamW moments.
struct Trained {
  ParameterSet* params;
  std::vector<bool> mask;
  AdamW* opt;
};

void save_checkpoint(const std::string& path, const std::vector<Trained>& sets, int64_t step, const TrainerOptions& o) {
  std::vector<TensorToWrite> t;
  for (const Trained& set : sets) {
    const ParameterSet& p = *set.params;
    for (size_t i = 0; i < p.specs.size(); ++i) {
      if (!set.mask[i]) continue;
      t.push_back({"param/" + p.specs[i].name, DType::F32, p.specs[i].shape, p.values[i].data()});
      t.push_back({"adam_m/" + p.specs[i].name, DType::F32, p.specs[i].shape, set.opt->m[i].data()});
      t.push_back({"adam_v/" + p.specs[i].name, DType::F32, p.specs[i].shape, set.opt->v[i].data()});
    }
  }
  auto md = run_identity(o, *sets.front().params);
  md["format"] = kCheckpointFormat;
  md["step"] = std::to_string(step);
  md["sequences_seen"] = std::to_string(step * o.batch);
  write_safetensors(path, t, md);
}

int64_t load_checkpoint(const std::string& path, const std::vector<Trained>& sets, const TrainerOptions& o) {
  if (!fs::exists(path)) throw Error(path + ": no checkpoint to resume from");
  auto store = TensorStore::open_files({path});
  const auto& md = store->metadata();
  auto get = [&](const std::string& k) -> std::string {
    auto it = md.find(k);
    if (it == md.end() && k == "prefix_reparam") return "0";  // checkpoints from before the option
    if (it == md.end()) throw Error(path + ": checkpoint metadata lacks '" + k + "'");
    return it->second;
  };
  if (get("format") != kCheckpointFormat) throw Error(path + ": not a parscale training checkpoint");
  for (const auto& [k, v] : run_identity(o, *sets.front().params))
    if (get(k) != v) throw Error(path + ": checkpoint was made with " + k + " = " + get(k) + ", this run has " + v);
  for (const Trained& set : sets) {
    ParameterSet& p = *set.params;
    AdamW& opt = *set.opt;
    for (size_t i = 0; i < p.specs.size(); ++i) {
      if (!set.mask[i]) continue;
      auto load = [&](const std::string& prefix, std::vector<float>& dst) {
        const TensorInfo* t = store->find(prefix + p.specs[i].name);
        if (!t || t->dtype != DType::F32 || t->shape != p.specs[i].shape)
          throw Error(path + ": checkpoint lacks F32 tensor '" + prefix + p.specs[i].name + "' of shape " +
                      shape_to_string(p.specs[i].shape));
        std::memcpy(dst.data(), t->data, dst.size() * sizeof(float));
      };
      load("param/", p.values[i]);
      load("adam_m/", opt.m[i]);
      load("adam_v/", opt.v[i]);
    }
  }
  const int64_t step = std::stoll(get("step"));
  for (const Trained& set : sets) set.opt->set_steps_done(step);
  return step;
}

void save_result(const ParameterSet& p, const TrainerOptions& o) {
  if (o.mode == TrainMode::ParScale) save_adapter(p, (fs::path(o.out_dir) / "adapter.safetensors").string());
  else save_model_dir(p, o.out_dir, o.save_dtype, o.tokenizer_dir);
}

// Keeps the log lines of steps <= `step` (a resumed run rewrites what came after its checkpoint).
void truncate_log(const std::string& path, int64_t step) {
  std::ifstream in(path);
  std::string kept, line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.contains("step") && j["step"].get<int64_t>() <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

class Progress {
 public:
  Progress(bool on, int64_t first, int64_t last) : on_(on), first_(first), last_(last), tty_(isatty(2)), t0_(Clock::now()) {}
  void update(int64_t step, double loss, double tok_s, double eval) {
    if (!on_) return;
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0_).count();
    const double per = elapsed / static_cast<double>(step - first_);
    const int width = 24;
    const int filled = static_cast<int>(width * static_cast<double>(step) / static_cast<double>(last_));
    std::string bar(static_cast<size_t>(filled), '=');
    bar.resize(width, ' ');
    char line[256];
    std::snprintf(line, sizeof line, "step %ld/%ld [%s] loss %.4f%s | %.0f tok/s | ETA %s", static_cast<long>(step),
                  static_cast<long>(last_), bar.c_str(), loss,
                  eval >= 0 ? (" eval " + std::to_string(eval).substr(0, 6)).c_str() : "", tok_s,
                  duration(per * static_cast<double>(last_ - step)).c_str());
    if (tty_) {
      std::fprintf(stderr, "\r%s\033[K", line);
      if (step == last_) std::fprintf(stderr, "\n");
    } else {
      const int64_t every = std::max<int64_t>(1, (last_ - first_) / 20);
      if ((step - first_) % every == 0 || step == last_) std::fprintf(stderr, "%s\n", line);
    }
  }
  void message(const std::string& m) {
    if (!on_) return;
    std::fprintf(stderr, "%s%s\n", tty_ ? "\r\033[K" : "", m.c_str());
  }

 private:
  bool on_;
  int64_t first_, last_;
  bool tty_;
  Clock::time_point t0_;
};

double evaluate(TrainModel& model, const Dataset& data, int64_t sequences, int64_t micro) {
  const int64_t n = std::min(sequences, data.eval_windows());
  if (n == 0) return -1.0;
  const int64_t L = data.seq_len();
  std::vector<int32_t> ids(static_cast<size_t>(micro * L));
  double sum = 0.0;
  for (int64_t e0 = 0; e0 < n; e0 += micro) {
    const int64_t b = std::min(micro, n - e0);
    for (int64_t j = 0; j < b; ++j) data.eval_sequence(e0 + j, ids.data() + j * L);
    sum += model.forward_backward(ids.data(), b, L, 1.0f, nullptr);
  }
  return sum / static_cast<double>(n * (L - 1));
}

}  // namespace

void flush_denormals_to_zero() {
#if defined(__x86_64__) || defined(__i386__)
  // The calling thread only: the thread pool runs every block with its caller's MXCSR.
  _MM_SET_FLUSH_ZERO_MODE(_MM_FLUSH_ZERO_ON);
  _MM_SET_DENORMALS_ZERO_MODE(_MM_DENORMALS_ZERO_ON);
#endif
}

namespace {
TrainResult train_on_this_rank(ParameterSet& params, Dataset& data, const TrainerOptions& o, const ProcessGroup& group);
}  // namespace

TrainResult train(ParameterSet& params, Dataset& data, const TrainerOptions& o, const ProcessGroup& group) {
  // A failure on one rank (e.g. rank 0's checkpoint write) must end every rank: the others would
  // wait forever in the next all-reduce.
  if (group.size() == 1) return train_on_this_rank(params, data, o, group);
  try {
    return train_on_this_rank(params, data, o, group);
  } catch (const std::exception& e) {
    group.abort_job(e.what());
  }
}

namespace {
TrainResult train_on_this_rank(ParameterSet& params, Dataset& data, const TrainerOptions& o, const ProcessGroup& group) {
  flush_denormals_to_zero();
  const int W = group.size();
  const int64_t L = o.seq_len;
  check(L == data.seq_len(), "train: dataset and options disagree on seq_len");
  check(o.batch > 0, "train: --batch must be > 0");
  const int64_t micro = o.micro_batch > 0 ? o.micro_batch : std::max<int64_t>(1, o.batch / W);
  if (o.batch % micro != 0)
    throw Error("train: --batch " + std::to_string(o.batch) + " is not a multiple of --micro-batch " + std::to_string(micro));
  const int64_t n_micro = o.batch / micro;
  if (n_micro % W != 0)
    throw Error("train: " + std::to_string(n_micro) + " micro-batches per step cannot be split evenly over " +
                std::to_string(W) + " ranks (choose --batch = k · ranks · --micro-batch)");
  const double min_lr = o.min_lr >= 0 ? o.min_lr : o.lr / 10.0;
  const bool write = !o.out_dir.empty() && group.root();

  // mask: the tensors whose gradients are computed; opt_mask: those AdamW updates directly (with
  // the reparameterization the prefixes get gradients but are set by materialize()).
  const auto mask = trainable_mask(params.specs, o.mode);
  bool any = false;
  for (bool b : mask) any = any || b;
  if (!any) throw Error("train: nothing to train (a P = 1 model has no ParScale parameters; use --train all)");
  std::unique_ptr<PrefixReparam> reparam;
  std::vector<bool> opt_mask = mask;
  if (o.prefix_reparam_dim > 0) {
    if (params.config.parscale_n < 2) throw Error("train: the prefix reparameterization needs a ParScale model (P > 1)");
    reparam = std::make_unique<PrefixReparam>(params, o.prefix_reparam_dim, o.seed);
    for (size_t i = 0; i < params.specs.size(); ++i)
      if (params.specs[i].kind == ParamKind::Prefix) opt_mask[i] = false;
  }
  AdamW opt(params.specs, opt_mask, o.adam);
  std::unique_ptr<AdamW> reparam_opt;
  Gradients reparam_grad;
  std::vector<Trained> trained{{&params, opt_mask, &opt}};
  if (reparam) {
    const std::vector<bool> all(reparam->parameters().specs.size(), true);
    reparam_opt = std::make_unique<AdamW>(reparam->parameters().specs, all, o.adam);
    reparam_grad = Gradients::for_mask(reparam->parameters().specs, all);
    trained.push_back({&reparam->parameters(), all, reparam_opt.get()});
  }
  TrainModel model(params);
  model.set_activation_memory(o.activation_memory);
  Gradients grad = Gradients::for_mask(params.specs, mask);
  Gradients micro_grad;
  if (n_micro / W > 1) micro_grad = Gradients::for_mask(params.specs, mask);

  int64_t start = 0;
  const std::string log_path = o.out_dir.empty() ? "" : (fs::path(o.out_dir) / "train_log.jsonl").string();
  if (o.resume) {
    start = load_checkpoint(checkpoint_path(o.out_dir), trained, o);
    if (write && fs::exists(log_path)) truncate_log(log_path, start);
  } else if (write) {
    fs::create_directories(o.out_dir);
    write_file_atomic(log_path, "");
  }
  if (reparam) reparam->materialize(params);  // prefixes = base + MLP(E) (exactly base at step 0)
  const int64_t end = o.stop_after > 0 ? std::min(o.steps, o.stop_after) : o.steps;
  std::ofstream log;
  if (write) log.open(log_path, std::ios::app);

  TrainResult result;
  result.steps_done = start;
  Progress progress(o.progress && group.root(), start, end);
  if (start >= end) return result;
  const float scale = 1.0f / static_cast<float>(o.batch * (L - 1));
  std::vector<int32_t> ids(static_cast<size_t>(micro * L));
  const auto t0 = Clock::now();
  double eval = -1.0;
  for (int64_t k = start; k < end; ++k) {
    const double lr = scheduled_lr(k, o.steps, o.warmup, o.lr, min_lr);
    grad.zero();
    double loss_sum = 0.0;
    bool first = true;
    for (int64_t j = group.rank(); j < n_micro; j += W) {
      for (int64_t s = 0; s < micro; ++s) data.train_sequence(k * o.batch + j * micro + s, ids.data() + s * L);
      if (first) {
        loss_sum += model.forward_backward(ids.data(), micro, L, scale, &grad);
        first = false;
      } else {
        micro_grad.zero();
        loss_sum += model.forward_backward(ids.data(), micro, L, scale, &micro_grad);
        for (size_t i = 0; i < grad.values.size(); ++i) {
          float* a = grad.values[i].data();
          const float* b = micro_grad.values[i].data();
          for (size_t e = 0; e < grad.values[i].size(); ++e) a[e] += b[e];
        }
      }
    }
    for (auto& g : grad.values) group.allreduce_sum(g.data(), static_cast<int64_t>(g.size()));
    group.allreduce_sum(&loss_sum, 1);
    const double loss = loss_sum * static_cast<double>(scale);
    if (!std::isfinite(loss)) throw Error("train: loss became " + fmt(loss) + " at step " + std::to_string(k + 1));
    double gnorm;
    if (reparam) {
      // Prefix gradients -> reparameterization gradients; clip over everything AdamW updates.
      reparam_grad.zero();
      reparam->backward(grad, reparam_grad);
      double ss = std::pow(gradient_norm(reparam_grad), 2);
      for (size_t i = 0; i < grad.values.size(); ++i)
        if (opt_mask[i])
          for (float x : grad.values[i]) ss += static_cast<double>(x) * x;
      gnorm = std::sqrt(ss);
      opt.step(params, grad, lr, gnorm);
      reparam_opt->step(reparam->parameters(), reparam_grad, lr, gnorm);
      reparam->materialize(params);
    } else {
      gnorm = opt.step(params, grad, lr);
    }
    result.losses.push_back(loss);
    result.steps_done = k + 1;
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    result.tokens_per_second = static_cast<double>((k + 1 - start) * o.batch * L) / elapsed;
    if (write)
      log << "{\"step\": " << k + 1 << ", \"loss\": " << fmt(loss) << ", \"lr\": " << fmt(lr)
          << ", \"grad_norm\": " << fmt(gnorm) << "}\n";
    const bool last = k + 1 == end;
    if ((o.eval_every > 0 && (k + 1) % o.eval_every == 0) || (last && k + 1 == o.steps)) {
      if (group.root()) {
        eval = evaluate(model, data, o.eval_sequences, micro);
        result.last_eval_loss = eval;
        if (write && eval >= 0) log << "{\"step\": " << k + 1 << ", \"eval_loss\": " << fmt(eval) << "}\n";
      }
    }
    if (write) log.flush();
    progress.update(k + 1, loss, result.tokens_per_second, eval);
    if (write && ((o.checkpoint_every > 0 && (k + 1) % o.checkpoint_every == 0) || last)) {
      save_checkpoint(checkpoint_path(o.out_dir), trained, k + 1, o);
      save_result(params, o);
    }
  }
  group.barrier();
  return result;
}

}  // namespace

}  // namespace parscale::train
