// `parscale train`: fine-tunes the ParScale parameters of a frozen backbone (default when P > 1)
// or trains all parameters (`--train all`), from pre-tokenized token files (or --text with the
// tokenizer). Data-parallel under mpirun. `--bench` measures training tokens/s on random tokens.
// See docs/TRAINING.md.
#include <cstdio>
#include <utility>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>

#include "cli/registry.h"
#include "core/error.h"
#include "core/threads.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/model_io.h"
#include "train/trainer.h"

#if __has_include("tokenizer/tokenizer.h")
#include "tokenizer/tokenizer.h"
#define PARSCALE_TRAIN_HAS_TOKENIZER 1
#endif

namespace {

// The prefix reparameterization's default dimension for frozen-backbone training: better held-out
// loss than direct prefix training on the demo model at the same budget (docs/TRAINING.md).
constexpr int64_t kDefaultPrefixReparam = 64;

struct Opts {
  std::string model, tokenizer, train = "auto", save_dtype = "f32";
  std::vector<std::string> adapters, data, text;
  int64_t streams = 0, prefix_tokens = 48;
  // --prefix-reparam: < 0 = the default (kDefaultPrefixReparam for frozen-backbone ParScale
  // training, else 0), 0 = train the prefixes directly.
  int64_t prefix_reparam = -1;
  double smooth = 0.01;
  double eval_fraction = 0.02;
  int threads = 0;
  int64_t activation_mib = 1024;
  bool bench = false, no_progress = false, json = false;
  parscale::train::TrainerOptions t;
};

std::vector<int32_t> read_text_tokens(const Opts& o) {
  std::vector<int32_t> out;
  if (o.text.empty()) return out;
#ifdef PARSCALE_TRAIN_HAS_TOKENIZER
  auto tok = parscale::Tokenizer::from_model_dir(o.tokenizer.empty() ? o.model : o.tokenizer);
  for (const auto& path : o.text) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw parscale::Error(path + ": cannot open text file");
    std::stringstream ss;
    ss << in.rdbuf();
    for (auto id : tok.encode(ss.str())) out.push_back(static_cast<int32_t>(id));
  }
#else
  throw parscale::Error("--text needs the tokenizer, which this build lacks; pre-tokenize into a token file and pass --data");
#endif
  return out;
}

parscale::cli::RegisterCommand reg("train", "fine-tune ParScale streams on a frozen backbone, or train all parameters", [](CLI::App& app) {
  auto o = std::make_shared<Opts>();
  auto& t = o->t;
  app.add_option("--model", o->model, "model folder to start from (a P = 1 backbone, a ParScale model, or one made by `parscale init`)")->required();
  app.add_option("--adapter", o->adapters, "ParScale adapter to start from (applied to --model)");
  app.add_option("--streams", o->streams, "turn a P = 1 --model into a ParScale-P model first (as `parscale init`)");
  app.add_option("--prefix-tokens", o->prefix_tokens, "prefix tokens per stream and layer with --streams")->capture_default_str();
  app.add_option("--smooth", o->smooth, "parscale_attn_smooth with --streams")->capture_default_str();
  app.add_option("--data", o->data, "pre-tokenized token file(s) (PSTOKEN1 format, docs/TRAINING.md)");
  app.add_option("--text", o->text, "text file(s), tokenized with the model's tokenizer");
  app.add_option("--tokenizer", o->tokenizer, "tokenizer folder for --text (default: --model)");
  app.add_option("--out", t.out_dir, "output folder: log, checkpoint, adapter.safetensors or model files");
  app.add_option("--train", o->train, "what to train: parscale (frozen backbone; default when P > 1) or all")
      ->check(CLI::IsMember({"auto", "parscale", "all"}));
  app.add_option("--steps", t.steps, "optimizer steps (length of the schedule)")->capture_default_str();
  app.add_option("--max-steps", t.stop_after, "stop this run after this many steps (resume later with --resume)");
  app.add_option("--seq-len", t.seq_len, "tokens per training sequence")->capture_default_str();
  app.add_option("--batch", t.batch, "sequences per optimizer step (global over MPI ranks)")->capture_default_str();
  app.add_option("--micro-batch", t.micro_batch, "sequences per forward/backward (default: batch / ranks)");
  app.add_option("--lr", t.lr, "peak learning rate")->capture_default_str();
  app.add_option("--min-lr", t.min_lr, "final learning rate of the cosine decay (default lr / 10)");
  app.add_option("--warmup", t.warmup, "linear warmup steps")->capture_default_str();
  app.add_option("--weight-decay", t.adam.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  app.add_option("--clip", t.adam.clip_norm, "global gradient-norm clip (0: off)")->capture_default_str();
  app.add_option("--beta1", t.adam.beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--beta2", t.adam.beta2, "AdamW beta2")->capture_default_str();
  app.add_option("--adam-eps", t.adam.eps, "AdamW epsilon")->capture_default_str();
  app.add_option("--seed", t.seed, "seed of the data order (and of --streams initialisation)")->capture_default_str();
  app.add_option("--eval-fraction", o->eval_fraction, "share of the sequences held out for evaluation")->capture_default_str();
  app.add_option("--eval-every", t.eval_every, "steps between evaluations (0: at the end only)")->capture_default_str();
  app.add_option("--eval-sequences", t.eval_sequences, "held-out sequences per evaluation")->capture_default_str();
  app.add_option("--checkpoint-every", t.checkpoint_every, "steps between checkpoints (0: at the end only)")->capture_default_str();
  app.add_option("--prefix-reparam", o->prefix_reparam,
                 "train the prefixes through an embedding of this dimension and a per-layer MLP, folded into plain "
                 "prefixes when saved; 0 trains them directly (default: " + std::to_string(kDefaultPrefixReparam) +
                     " with --train parscale, else 0)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--resume", t.resume, "continue from --out/checkpoint.safetensors");
  app.add_option("--save-dtype", o->save_dtype, "dtype of saved model files with --train all: f32 or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_option("--threads", o->threads, "worker threads per process (0 = all cores)");
  app.add_option("--activation-memory", o->activation_mib,
                 "MiB for every layer's forward intermediates; beyond it each layer is recomputed in the backward (same results)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--bench", o->bench, "benchmark: train on random tokens, write nothing, print tokens/s");
  app.add_flag("--no-progress", o->no_progress, "no progress bar on stderr");
  app.add_flag("--json", o->json, "print a JSON summary on stdout at the end");
  return [o]() -> int {
    using namespace parscale;
    using namespace parscale::train;
    set_num_threads(o->threads);
    ProcessGroup group;
    // Any failure on one of several ranks ends the whole job (the others would block in MPI).
    try {
      TrainerOptions t = o->t;
      t.tokenizer_dir = o->tokenizer.empty() ? o->model : o->tokenizer;
      t.progress = !o->no_progress;
      t.save_dtype = o->save_dtype == "bf16" ? DType::BF16 : DType::F32;
      if (o->activation_mib > (int64_t{1} << 40)) throw Error("--activation-memory: " + std::to_string(o->activation_mib) + " MiB is out of range");
      t.activation_memory = o->activation_mib << 20;
      ParameterSet params = load_parameters(o->model, o->adapters);
      if (o->streams > 1) {
        if (params.config.parscale_n > 1) throw Error("--streams: " + o->model + " is already a ParScale model (P = " + std::to_string(params.config.parscale_n) + ")");
        params = parscale_from_backbone(std::move(params), o->streams, o->prefix_tokens, o->smooth, t.seed);
      }
      t.mode = o->train == "all" ? TrainMode::All
               : o->train == "parscale" ? TrainMode::ParScale
               : params.config.parscale_n > 1 ? TrainMode::ParScale : TrainMode::All;
      t.prefix_reparam_dim = o->prefix_reparam >= 0 ? o->prefix_reparam
                             : t.mode == TrainMode::ParScale && params.config.parscale_n > 1 ? kDefaultPrefixReparam
                                                                                             : 0;
      std::vector<int32_t> tokens;
      if (o->bench) {
        const int64_t n = (t.steps * t.batch + 4) * (t.seq_len - 1) + 1;
        std::mt19937_64 rng(t.seed);
        tokens.resize(static_cast<size_t>(n));
        for (auto& id : tokens) id = static_cast<int32_t>(rng() % static_cast<uint64_t>(params.config.vocab_size));
        t.out_dir.clear();
        t.eval_every = 0;
        t.eval_sequences = 0;
      } else {
        if (t.out_dir.empty()) throw Error("train: --out is required (or --bench)");
        for (const auto& path : o->data) {
          TokenFile f = read_token_file(path);
          if (f.vocab_size && static_cast<int64_t>(f.vocab_size) > params.config.vocab_size)
            throw Error(path + ": made for a vocabulary of " + std::to_string(f.vocab_size) + ", the model has " +
                        std::to_string(params.config.vocab_size));
          tokens.insert(tokens.end(), f.tokens.begin(), f.tokens.end());
        }
        auto text = read_text_tokens(*o);
        tokens.insert(tokens.end(), text.begin(), text.end());
        if (tokens.empty()) throw Error("train: no data (give --data FILE.bin or --text FILE)");
        for (int32_t id : tokens)
          if (id >= params.config.vocab_size)
            throw Error("train: token id " + std::to_string(id) + " is outside the model's vocabulary of " + std::to_string(params.config.vocab_size));
      }
      Dataset data(std::move(tokens), t.seq_len, o->bench ? 0.0 : o->eval_fraction, t.seed);
      if (group.root() && t.progress)
        std::fprintf(stderr, "train: P = %ld, mode %s%s, %ld training / %ld held-out sequences of %ld tokens, %d rank(s), %d thread(s) each\n",
                     static_cast<long>(params.config.parscale_n), t.mode == TrainMode::All ? "all" : "parscale (frozen backbone)",
                     t.prefix_reparam_dim > 0 ? (", prefix reparameterization " + std::to_string(t.prefix_reparam_dim)).c_str() : "",
                     static_cast<long>(data.train_windows()), static_cast<long>(data.eval_windows()), static_cast<long>(t.seq_len),
                     group.size(), num_threads());
      TrainResult r = train::train(params, data, t, group);
      if (group.root() && (o->json || o->bench)) {
        std::printf("{\"steps_done\": %ld, \"final_loss\": %.9g, \"eval_loss\": %.9g, \"tokens_per_second\": %.1f, \"ranks\": %d, \"threads\": %d}\n",
                    static_cast<long>(r.steps_done), r.losses.empty() ? -1.0 : r.losses.back(), r.last_eval_loss,
                    r.tokens_per_second, group.size(), num_threads());
      }
      return 0;
    } catch (const std::exception& e) {
      if (group.size() > 1) group.abort_job(e.what());
      throw;
    }
  };
});

}  // namespace
