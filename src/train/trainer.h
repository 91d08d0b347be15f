// The training loop: data order, gradient accumulation over micro-batches and MPI ranks, AdamW with
// schedule and clipping, periodic evaluation, atomic checkpoints and bitwise-exact resume.
//
// Step k (0-based) uses the global training sequences [k·batch, (k+1)·batch) of the Dataset order.
// They form batch/micro_batch micro-batches; rank r of W processes micro-batches r, r+W, ...
// Each rank's first micro-batch accumulates into the zeroed step gradient, later ones into a
// zeroed scratch gradient that is then added, and the ranks' sums are added by MPI_Allreduce. So
// one process with 2 micro-batches and 2 ranks with 1 each compute bitwise the same gradient.
// Gradients are of the mean cross-entropy over all batch·(seq_len−1) predictions of the step.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/weights.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/optimizer.h"
#include "train/train_model.h"

namespace parscale::train {

struct TrainerOptions {
  std::string out_dir;  // empty: write nothing (benchmark)
  std::string tokenizer_dir;  // tokenizer files copied next to saved model files (may be empty)
  TrainMode mode = TrainMode::ParScale;
  int64_t steps = 100;       // total optimizer steps of the schedule
  int64_t stop_after = 0;    // stop this run once this many steps are done (0: run to `steps`)
  int64_t seq_len = 128;
  int64_t batch = 8;         // sequences per optimizer step (global, over all ranks)
  int64_t micro_batch = 0;   // sequences per forward/backward (0: batch / ranks)
  int64_t warmup = 0;
  double lr = 1e-3, min_lr = -1.0;  // min_lr < 0: lr / 10
  AdamWConfig adam;
  uint64_t seed = 0;
  int64_t eval_every = 0;      // steps between evaluations (0: only at the end)
  int64_t eval_sequences = 16; // held-out windows per evaluation
  int64_t checkpoint_every = 0;  // steps between checkpoints (0: only at the end)
  // > 0: train the prefixes through a PrefixReparam of this dimension (prefix_reparam.h); the
  // saved adapter / model holds the folded plain prefixes.
  int64_t prefix_reparam_dim = 0;
  bool resume = false;
  bool progress = true;
  DType save_dtype = DType::F32;
  // Bytes every layer's forward intermediates may take; beyond it the backward recomputes each
  // layer (train_model.h). Same results either way.
  int64_t activation_memory = int64_t{1} << 30;
};

struct TrainResult {
  std::vector<double> losses;  // training loss of each step run in this process
  int64_t steps_done = 0;      // optimizer steps completed (including resumed ones)
  double last_eval_loss = -1.0;
  double tokens_per_second = 0.0;
};

// Trains `params` in place. Writes into out_dir: train_log.jsonl (one JSON object per step and per
// evaluation), checkpoint.safetensors (trained tensors, AdamW moments, step; atomically), and the
// result: adapter.safetensors (mode ParScale) or an HF model folder (mode All). With the prefix
// reparameterization, the checkpoint also holds its tensors and moments, and `params` ends with
// the folded prefixes.
TrainResult train(ParameterSet& params, Dataset& data, const TrainerOptions& options, const ProcessGroup& group);

// Sets flush-to-zero and denormals-are-zero on the calling thread (x86; the thread pool runs
// every block with its caller's MXCSR): denormal operands slow the FMA units ~100x, and tiny
// gradients/moments produce them. train() calls it.
void flush_denormals_to_zero();

// Checkpoint file inside an output folder.
std::string checkpoint_path(const std::string& out_dir);

}  // namespace parscale::train
