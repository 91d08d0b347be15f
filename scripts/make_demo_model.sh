#!/usr/bin/env bash
# Usage: scripts/make_demo_model.sh [WORK_DIR]     (default build/demo-work; writes models/demo/)
# Rebuilds the bundled demo model end to end, deterministically (same bytes for the same binary
# and thread count): corpus + tokenizer (scripts/python_corpus.sh), a P = 1 Qwen2 model trained
# from scratch by `parscale train --train all`, P = 2 and P = 4 adapters trained on the frozen
# (BF16) backbone, and held-out loss for P = 1, 2, 4 on the same held-out tokens.
# Environment (defaults are the committed model's): PARSCALE=build/parscale, THREADS=1 (1 is the
# fastest on a loaded 2-core machine), STEPS=2800, ADAPTER_STEPS=400, EXTRA_PACKAGES (the Debian
# packages whose Python files join the training text; see scripts/python_corpus.sh); FROM=adapters
# reuses the corpus and the trained backbone in WORK_DIR and redoes only the adapters and the
# held-out losses.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-build/demo-work}
bin=${PARSCALE:-build/parscale}
threads=${THREADS:-1}
steps=${STEPS:-2800}
adapter_steps=${ADAPTER_STEPS:-400}
export EXTRA_PACKAGES=${EXTRA_PACKAGES-python3-numpy python3-pip python3-setuptools python3-pkg-resources
  python3-mpmath python3-hypothesis python3-psutil python3-click python3-urllib3 python3-pyparsing
  python3-dateutil python3-yaml python3-requests python3-attr}
from=${FROM:-all}
out=models/demo
seq=256 batch=16 adapter_batch=8 prefix=16
mkdir -p "$work" "$out"

if [ "$from" = all ]; then
  echo "== corpus and tokenizer"
  scripts/python_corpus.sh "$work" "$bin"

  echo "== P = 1 model from scratch: $steps steps x $batch x $seq tokens"
  cat > "$work/config.json" <<'JSON'
{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 4096, "hidden_size": 256,
 "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
 "max_position_embeddings": 1024, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true,
 "hidden_act": "silu", "bos_token_id": 4093, "eos_token_id": 4093, "torch_dtype": "bfloat16"}
JSON
  rm -rf "$work/init" "$work/p1"
  "$bin" init --config "$work/config.json" --out "$work/init" --seed 1
  "$bin" train --model "$work/init" --train all --data "$work/train.bin" --out "$work/p1" \
      --steps "$steps" --seq-len $seq --batch $batch --lr 2e-3 --min-lr 2e-4 --warmup 100 \
      --eval-fraction 0.005 --eval-every 400 --eval-sequences 16 --seed 1 --save-dtype bf16 \
      --threads "$threads" --no-progress --json | tee "$work/p1.json"

  echo "== assemble $out"
  cp "$work/p1/config.json" "$work/p1/model.safetensors" "$out/"
  cp "$work/tokenizer/tokenizer.json" "$work/tokenizer/tokenizer_config.json" "$out/"
  # Stop at either end marker: <|endoftext|> (4093, between files) or <|im_end|> (4095, ChatML).
  printf '{\n  "bos_token_id": 4093,\n  "eos_token_id": [4093, 4095],\n  "do_sample": false\n}\n' > "$out/generation_config.json"
fi

# The two adapter runs are independent (one thread each): run side by side. Prefixes use the
# trainer's default for a frozen backbone (reparameterized through a 64-wide MLP, docs/TRAINING.md).
for p in 2 4; do
  echo "== P = $p adapter on the frozen backbone: $adapter_steps steps x $adapter_batch x $seq tokens"
  rm -rf "$work/p$p"
  "$bin" train --model "$out" --streams $p --prefix-tokens $prefix --data "$work/train.bin" --out "$work/p$p" \
      --steps "$adapter_steps" --seq-len $seq --batch $adapter_batch --lr 1e-2 --min-lr 1e-3 --warmup 10 \
      --eval-fraction 0.005 --eval-every 50 --eval-sequences 16 --seed $p \
      --threads "$threads" --no-progress --json > "$work/p$p.json" &
done
wait
for p in 2 4; do cat "$work/p$p.json"; cp "$work/p$p/adapter.safetensors" "$out/adapter-p$p.safetensors"; done

# A small held-out sample for the test (the first ~9 KB of the held-out text, whole lines).
head -c 9000 "$work/heldout.txt" | sed '$d' > "$out/heldout_sample.py.txt"

loss_of() { sed -n 's/.*"loss": *\([0-9.eE+-]*\).*/\1/p'; }
tokens_of() { sed -n 's/.*"tokens": *\([0-9]*\).*/\1/p'; }
declare -A full sample
for p in 1 2 4; do
  adapter=(); [ $p -gt 1 ] && adapter=(--adapter "$out/adapter-p$p.safetensors")
  echo "== held-out loss, P = $p"
  r=$("$bin" perplexity --model "$out" "${adapter[@]}" --tokens "$work/heldout.bin" --seq-len $seq --threads "$threads" --json)
  echo "$r"; full[$p]=$(echo "$r" | loss_of); full_tokens=$(echo "$r" | tokens_of)
  r=$("$bin" perplexity --model "$out" "${adapter[@]}" --file "$out/heldout_sample.py.txt" --seq-len $seq --threads "$threads" --json)
  echo "$r"; sample[$p]=$(echo "$r" | loss_of); sample_tokens=$(echo "$r" | tokens_of)
done
cat > "$out/heldout.json" <<JSON
{
  "seq_len": $seq,
  "heldout": {"file": "python_corpus.sh heldout.bin", "tokens": $full_tokens, "loss": {"1": ${full[1]}, "2": ${full[2]}, "4": ${full[4]}}},
  "sample": {"file": "heldout_sample.py.txt", "tokens": $sample_tokens, "loss": {"1": ${sample[1]}, "2": ${sample[2]}, "4": ${sample[4]}}}
}
JSON
cat "$out/heldout.json"
du -cb "$out"/* | tail -1
