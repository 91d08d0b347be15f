#!/usr/bin/env bash
# Usage: scripts/toy_scaling.sh [WORK_DIR]    (default build/toy-scaling)
# Toy-scale reproduction of the parallel scaling law: three small Qwen2 shapes x P = 1, 2, 4,
# each trained from scratch with all parameters (`parscale init --config` with parscale_n = P,
# then `parscale train --train all`, as the paper trains its scaling-law runs), on the same tokens
# in the same order with identical step counts, on the demo corpus and tokenizer
# (scripts/python_corpus.sh). Held-out loss of each on the same held-out tokens, then
# `parscale fit`. Writes data/scaling/toy_python.csv and docs/figures/toy_fit.svg.
# Environment: PARSCALE=build/parscale, THREADS=1, STEPS=320, BATCH=4 (sequences of 256 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-build/toy-scaling}
bin=${PARSCALE:-build/parscale}
threads=${THREADS:-1}
steps=${STEPS:-320}
batch=${BATCH:-4}
seq=256 prefix=16 vocab=4096 heads=4 kv_heads=2
csv=data/scaling/toy_python.csv
mkdir -p "$work"
[ -f "$work/corpus/train.bin" ] || scripts/python_corpus.sh "$work/corpus" "$bin"
# Held-out tokens: the first ~200 KB of the held-out files (whole lines), tokenized.
head -c 200000 "$work/corpus/heldout.txt" | sed '$d' > "$work/heldout_small.txt"
"$bin" tokenize --tokenizer "$work/corpus/tokenizer/tokenizer.json" --file "$work/heldout_small.txt" --out "$work/heldout_small.bin"

# Non-embedding parameters (the paper's N, ParScale parameters included): per layer q/k/v with
# biases, o, gate/up/down, two RMSNorms; the final norm; for P > 1 every layer's prefix K and V
# [P, kv_heads, T, head_dim] and the aggregation MLP Linear(P*H -> H) + bias, Linear(H -> P) + bias.
# (Tied embeddings: the vocab x H embedding is the only parameter not counted.)
non_embedding() {  # H I layers P
  local h=$1 i=$2 l=$3 p=$4 kvd=$(( $1 / heads * kv_heads ))
  local layer=$(( h*h + h + 2*(h*kvd + kvd) + h*h + 3*h*i + 2*h ))
  local n=$(( l*layer + h ))
  [ "$p" -gt 1 ] && n=$(( n + l*2*p*kvd*prefix + p*h*h + h + h*p + p ))
  echo $n
}

echo "# Toy-scale ParScale runs (scripts/toy_scaling.sh): Python stdlib corpus, $steps steps x $batch x $seq tokens each," > "$csv.tmp"
echo "# N = non-embedding parameters incl. ParScale ones, loss = held-out cross-entropy (nats/token)" >> "$csv.tmp"
echo "N,P,loss,hidden,intermediate,layers,train_tokens,seconds" >> "$csv.tmp"
for shape in "64 176 3" "128 352 3" "192 512 3"; do
  set -- $shape; h=$1 i=$2 l=$3
  for p in 1 2 4; do
    name=h${h}_l${l}_p$p
    type=qwen2; [ $p -gt 1 ] && type=qwen2_parscale
    cat > "$work/$name.json" <<JSON
{"model_type": "$type", "vocab_size": $vocab, "hidden_size": $h, "intermediate_size": $i, "num_hidden_layers": $l,
 "num_attention_heads": $heads, "num_key_value_heads": $kv_heads, "max_position_embeddings": 1024, "rms_norm_eps": 1e-6,
 "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": 4093, "eos_token_id": 4093,
 "parscale_n": $p, "parscale_n_tokens": $prefix, "parscale_attn_smooth": 0.01}
JSON
    rm -rf "$work/$name.init" "$work/$name"
    "$bin" init --config "$work/$name.json" --out "$work/$name.init" --seed 1
    start=$(date +%s)
    "$bin" train --model "$work/$name.init" --train all --data "$work/corpus/train.bin" --out "$work/$name" \
        --steps "$steps" --seq-len $seq --batch $batch --lr 3e-3 --min-lr 3e-4 --warmup 20 --seed 1 \
        --eval-fraction 0.005 --eval-sequences 8 --threads "$threads" --no-progress --json > "$work/$name.train.json"
    secs=$(( $(date +%s) - start ))
    loss=$("$bin" perplexity --model "$work/$name" --tokens "$work/heldout_small.bin" --seq-len $seq --threads "$threads" --json \
           | sed -n 's/.*"loss": *\([0-9.eE+-]*\).*/\1/p')
    n=$(non_embedding $h $i $l $p)
    echo "$name: N = $n, held-out loss $loss, ${secs} s"
    echo "$n,$p,$loss,$h,$i,$l,$(( steps*batch*(seq-1) )),$secs" >> "$csv.tmp"
  done
done
mv "$csv.tmp" "$csv"
cat "$csv"
"$bin" fit --data "$csv" --plot docs/figures/toy_fit.svg | tee "$work/fit.txt"
